"""The report's figures, by what a reader sees: every latency series its own (colour, marker), panel titles that name
the serving stack and the device in words, layer-drift panels on one shared y axis with readable layer labels, and
legends that cover no data (their boxes, in display coordinates, against the bars and axes)."""

from __future__ import annotations

import matplotlib.colors as mcolors
import pytest

from lorascope.reporting import figures

TASKS = ["mrpc", "sst2", "rte"]
LABELS = ["embeddings", *[f"layer_{i}" for i in range(1, 23)], "final_norm"]  # a 22-layer model


def _bench() -> dict:
    """Two backends, each with the smoke study's 7 series (5 modes, multi-k in two request orders) at 5 batch sizes."""
    series = [("full", "single"), ("merged", "single"), ("separate", "single"), ("multi-2", "rr"), ("multi-2", "random"),
              ("multi-3", "rr"), ("multi-3", "random")]  # fmt: skip
    configs = [{"mode": m, "order": o, "regime": "eager", "batch_size": b, "mean_batch_ms": 1.0 + i + b,
                "low": 0.5 + i + b, "high": 2.0 + i + b}
               for i, (m, o) in enumerate(series) for b in (1, 2, 4, 8, 16)]  # fmt: skip
    common = {"device": "cpu", "device_name": "x86_64", "dtype": "float32", "regimes": ["eager"], "confidence_pct": 95.0,
              "configs": configs}  # fmt: skip
    return {"hf": {**common, "platform": "torch"}, "vllm": {**common, "platform": "cpu"}}


def _summary(scale: dict[str, float]) -> dict:
    """A drift summary with the fields the figures read; task t's drift is `scale[t]` times a ramp over layers."""
    n = len(LABELS)

    def stats(k: float) -> dict:
        mean = [k * (i + 1) / n for i in range(n)]
        return {"mean": mean, "min": [0.9 * v for v in mean], "max": [1.1 * v for v in mean], "noise_floor": [0.5 * v for v in mean]}

    methods = {"full": 1.0, "lora": 0.4}
    results = {t: {"metric_name": "accuracy", "methods": {m: {"layers": {"mean": {"linear": stats(scale[t] * f), "debiased": stats(scale[t] * f)}}}
                                                          for m, f in methods.items()}} for t in TASKS}  # fmt: skip
    weights = {t: {m: {k: {"mean": 10.0 * f, "sd": 2.0} for k in ("stable_rank", "effective_rank", "r90", "n_intruders")}
                   for m, f in {"full (other linears)": 1.0, "full": 0.9, "lora": 0.95}.items()} for t in TASKS}  # fmt: skip
    return {"tasks": TASKS, "labels": LABELS, "settings": {"measures": ["linear", "debiased"]}, "results": results,
            "weights": weights}  # fmt: skip


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _styles(ax) -> list[tuple[str, str]]:
    """(colour, marker) of each error-bar series of a panel (its data line, not the caps)."""
    return [(mcolors.to_hex(c.lines[0].get_color()), c.lines[0].get_marker()) for c in ax.containers]


def test_every_latency_series_has_its_own_colour_and_marker():
    fig = figures.draw_latency(_bench())
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names == ["full", "merged", "separate", "multi-2 (round-robin)", "multi-2 (random)", "multi-3 (round-robin)",
                     "multi-3 (random)"]  # fmt: skip
    for ax in fig.axes:
        assert len(_styles(ax)) == 7 and len(set(_styles(ax))) == 7  # "full" and "multi-3 random" used to share a pair
        assert len({c for c, _ in _styles(ax)}) == 7 and len({m for _, m in _styles(ax)}) == 7  # each differs in both
    assert _styles(fig.axes[0]) == _styles(fig.axes[1])  # a series keeps its style in every panel


def test_series_styles_stay_distinct_well_past_ten_series():
    styles = [(figures.series_style(i)[0], figures.series_style(i)[1]) for i in range(90)]
    assert len(set(styles)) == 90
    assert len({figures.series_style(i)[1] for i in range(9)}) == 9 and len({figures.series_style(i)[0] for i in range(10)}) == 10


def test_latency_titles_spell_out_backend_and_platform():
    fig = figures.draw_latency(_bench())
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Hugging Face transformers + PEFT on PyTorch\non CPU (x86_64), float32, eager execution",
                      "vLLM, CPU build\non CPU (x86_64), float32, eager execution"]  # fmt: skip
    gpu = {"device": "cuda:0", "device_name": "NVIDIA L4", "dtype": "bfloat16", "platform": "cuda", "regimes": ["eager", "compiled"]}
    assert figures.backend_title(gpu, "vllm") == "vLLM, CUDA build\non GPU NVIDIA L4 (cuda:0), bfloat16, eager, compiled execution"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "4", "8", "16"]
    # latency intervals are on the log scale (never below 0): so is the axis, labelled in plain milliseconds
    assert all(ax.get_yscale() == "log" for ax in fig.axes) and "log scale" in fig.axes[0].get_ylabel()


def test_latency_legend_is_outside_every_panel():
    fig = figures.draw_latency(_bench())
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(r)
    assert not any(_overlaps(legend, ax.get_window_extent(r)) for ax in fig.axes)


def test_layer_drift_panels_share_y_and_label_layers_readably():
    fig = figures.draw_layer_drift(_summary({"mrpc": 0.9, "sst2": 0.5, "rte": 0.05}), "mean")
    axes = fig.axes
    assert len(axes) == 6
    assert len({ax.get_ylim() for ax in axes}) == 1  # rte's small drift is drawn on the same scale as mrpc's
    assert axes[0].get_ylim()[1] >= 0.9
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    for ax in axes[3:]:  # the bottom row carries the layer labels
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        assert 2 <= len(labels) <= figures.MAX_LAYER_TICKS + 1
        assert labels[0].get_text() == "emb" and labels[-1].get_text() == "norm"
        assert min(t.get_fontsize() for t in labels) >= figures.TICK_FONT >= 8
        boxes = [t.get_window_extent(r) for t in labels]
        assert not any(_overlaps(a, b) for a, b in zip(boxes, boxes[1:], strict=False))  # readable: no label on another
    for ax in axes[:3]:
        assert not any(t.get_visible() and t.get_text() for t in ax.get_xticklabels())


def test_weights_legend_covers_no_bar():
    fig = figures.draw_weight_spectra(_summary(dict.fromkeys(TASKS, 1.0)))
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    assert not any(ax.get_legend() for ax in fig.axes)  # no legend inside a panel
    legend = fig.legends[0].get_window_extent(r)
    bars = [p.get_window_extent(r) for ax in fig.axes for p in ax.patches]
    assert len(bars) == 4 * 3 * 3
    assert not any(_overlaps(legend, b) for b in bars)
    assert not any(_overlaps(legend, ax.get_window_extent(r)) for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["full (other linears)", "full", "lora"]


@pytest.mark.parametrize("draw", ["latency", "weights", "drift"])
def test_figures_write_png(tmp_path, draw):
    path = tmp_path / f"{draw}.png"
    if draw == "latency":
        figures.latency(_bench(), path)
    elif draw == "weights":
        figures.weight_spectra(_summary(dict.fromkeys(TASKS, 1.0)), path)
    else:
        figures.layer_drift(_summary(dict.fromkeys(TASKS, 1.0)), "mean", path)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and path.stat().st_size > 10_000
