"""The report's figures (matplotlib, Agg backend, PNG). Each function takes the report's numbers (the drift bundle's
summary.json, plus the bench section) and writes one file; none computes a new statistic. `draw_*` build the figure
without writing it (the tests read styles, axes and legend boxes from it). Measure display names come from the measure
registry (`analysis.similarity.MEASURES`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lorascope.analysis import similarity  # noqa: E402
from lorascope.reporting.bench_markdown import device_words, stack_name  # noqa: E402

DPI = 120
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
# Series styles: 10 colours (tab10) and 9 markers. 9 and 10 share no factor, so (colour, marker) of series i repeats
# only after 90 series; the first 9 series differ in both.
SERIES_COLORS = list(plt.get_cmap("tab10").colors)
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h"]
TICK_FONT = 8  # the smallest font on any figure
MAX_LAYER_TICKS = 12  # layer axes label at most this many layers (every k-th), so labels never overlap


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _method_colors(summary: dict) -> dict[str, str]:
    methods = list(dict.fromkeys(m for t in summary["tasks"] for m in summary["results"][t]["methods"]))
    if len(methods) <= len(COLORS):
        return {m: COLORS[i] for i, m in enumerate(methods)}
    return {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(methods)}  # a sweep: 20 distinct colours


def series_style(i: int) -> tuple[tuple[float, ...], str]:
    """(colour, marker) of the i-th series of a figure: distinct for every i < 90 (see SERIES_COLORS)."""
    return SERIES_COLORS[i % len(SERIES_COLORS)], MARKERS[i % len(MARKERS)]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def layer_drift(summary: dict, pooling: str, path: Path) -> Path:
    return _save(draw_layer_drift(summary, pooling), path)


def draw_layer_drift(summary: dict, pooling: str):
    """Per task (columns) and measure (rows): drift vs layer, mean over seeds, band min..max over seeds, and the seed
    noise floor (dashed) of each method. Every panel shares one y axis (the same quantity, 1 - CKA) and the x axis
    (layers), so panels compare at a glance; layer labels only on the bottom row, one legend for the figure."""
    tasks = summary["tasks"]
    labels = summary["labels"]
    colors = _method_colors(summary)
    measures = summary["settings"]["measures"][::-1]  # debiased (primary) on top
    fig, axes = plt.subplots(len(measures), len(tasks), figsize=(4.2 * len(tasks), 3.0 * len(measures) + 0.8),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")  # fmt: skip
    x = list(range(len(labels)))
    step = -(-len(labels) // MAX_LAYER_TICKS)
    ticks = x[::step]
    ticks = ticks if ticks[-1] == x[-1] else [*ticks[:-1], x[-1]] if x[-1] - ticks[-1] < step else [*ticks, x[-1]]
    for col, task in enumerate(tasks):
        for row, measure in enumerate(measures):
            ax = axes[row][col]
            for method, entry in summary["results"][task]["methods"].items():
                stats = entry["layers"][pooling][measure]
                color = colors[method]
                ax.plot(x, [_nan(v) for v in stats["mean"]], color=color, marker="o", ms=3, label=f"{method} (mean of seeds)")
                ax.fill_between(x, [_nan(v) for v in stats["min"]], [_nan(v) for v in stats["max"]], color=color, alpha=0.2,
                                lw=0, label=f"{method} min..max over seeds")  # fmt: skip
                ax.plot(x, [_nan(v) for v in stats["noise_floor"]], color=color, ls="--", lw=1,
                        label=f"{method} seed-to-seed drift")  # fmt: skip
            ax.set_title(f"{task}: {similarity.MEASURES.get(measure).label} drift ({pooling} pooling)", fontsize=9)
            ax.set_xticks(ticks)
            ax.set_xticklabels([_short(labels[i]) for i in ticks], fontsize=TICK_FONT)
            ax.tick_params(axis="y", labelsize=TICK_FONT)
            if col == 0:
                ax.set_ylabel("drift = 1 - CKA", fontsize=9)
            if row == len(measures) - 1:
                ax.set_xlabel("layer (emb: embedding output, norm: after the final norm)", fontsize=TICK_FONT)
            ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 3), fontsize=TICK_FONT)
    fig.suptitle("Layer-wise drift from the base model (mean of seeds, band: min..max over seeds)", fontsize=10)
    return fig


def _short(label: str) -> str:
    return {"embeddings": "emb", "final_norm": "norm"}.get(label, label.replace("layer_", ""))


def metric_vs_drift(summary: dict, path: Path) -> Path:
    """One point per cell: mean drift over layers (primary measure and pooling) against the task metric."""
    settings = summary["settings"]
    pooling, measure = settings["primary_pooling"], similarity.measure_of_column(settings["primary_measure"])
    colors = _method_colors(summary)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for task_index, task in enumerate(summary["tasks"]):
        result = summary["results"][task]
        for method, entry in result["methods"].items():
            seeds = list(entry["metric"]["values"])
            xs = [_nan(entry["drift"][pooling][measure.name]["values"][seed]) for seed in seeds]
            ys = [_nan(entry["metric"]["values"][seed]) for seed in seeds]
            ax.scatter(xs, ys, color=colors[method], marker=MARKERS[task_index % len(MARKERS)],
                       label=f"{task} {method} ({result['metric_name']})")  # fmt: skip
    ax.set_xlabel(f"mean {measure.label} drift over layers ({pooling} pooling)")
    ax.set_ylabel("validation metric (task's metric)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Task metric vs representation drift (one point per cell)", fontsize=10)
    return _save(fig, path)


def drift_reduction(summary: dict, path: Path) -> Path:
    """Drift reduction % per task with its subsampling CI over examples and the H1b threshold."""
    settings = summary["settings"]
    measure = similarity.measure_of_column(settings["primary_measure"]).name
    compared = settings.get("compared_methods", settings.get("lora_methods", []))
    names, values, below, above = [], [], [], []
    for task in summary["tasks"]:
        for method, comparison in summary["results"][task]["comparisons"].items():
            reduction = _nan(comparison[settings["primary_pooling"]][measure]["reduction_pct"])
            ci = comparison.get("reduction_ci") or {}
            names.append(task if len(compared) == 1 else f"{task}/{method}")
            values.append(reduction)
            below.append(max(0.0, reduction - _nan(ci.get("lo"))) if ci else 0.0)  # the interval need not be centred
            above.append(max(0.0, _nan(ci.get("hi")) - reduction) if ci else 0.0)
    fig, ax = plt.subplots(figsize=(1.6 * max(3, len(names)) + 1, 4))
    ax.bar(names, values, color=COLORS[0], yerr=[below, above], capsize=6)
    threshold = settings["h1b_min_reduction_pct"]
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"H1b threshold {threshold:g}%")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("drift reduction % = 100 (FT - method) / FT")
    ax.set_title(f"Drift reduction vs full FT ({settings['primary_measure']}, {settings['primary_pooling']} pooling), "
                 f"{settings['ci_level_pct']:g}% CI over examples", fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def weight_spectra(summary: dict, path: Path) -> Path:
    return _save(draw_weight_spectra(summary), path)


def draw_weight_spectra(summary: dict):
    """Mean (SD over modules and seeds) of the update's stable rank, effective rank, r90 and intruder count. The
    legend sits below the panels, outside every axes, so it never covers a bar."""
    keys = [("stable_rank", "stable rank"), ("effective_rank", "effective rank"), ("r90", "r90"), ("n_intruders", "intruders (k=10)")]
    colors = _method_colors(summary)
    tasks = [t for t in summary["tasks"] if t in summary["weights"]]
    methods = list(dict.fromkeys(m for t in tasks for m in summary["weights"][t]))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.8), squeeze=False, layout="constrained")
    width = 0.8 / max(1, len(methods))
    for panel, (key, title) in enumerate(keys):
        ax = axes[0][panel]
        for method_index, method in enumerate(methods):
            xs = [task_index + (method_index - (len(methods) - 1) / 2) * width for task_index in range(len(tasks))]
            ys = [_nan(summary["weights"][t].get(method, {}).get(key, {}).get("mean")) for t in tasks]
            sds = [_nan(summary["weights"][t].get(method, {}).get(key, {}).get("sd")) for t in tasks]
            lower = [0.0 if sd != sd else min(sd, y) for sd, y in zip(sds, ys, strict=True)]  # SD bars stop at 0
            upper = [0.0 if sd != sd else sd for sd in sds]
            ax.bar(xs, ys, width=width, yerr=[lower, upper], color=colors.get(method, "grey"), label=method, capsize=3)
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels(tasks)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=len(names), fontsize=TICK_FONT)
    title = "Weight update spectra per module (mean, SD over modules and seeds)"
    if "weights_union" in summary:  # format 4: `weights` holds every method over the same modules
        title += "\nlike for like: every method over the modules every method with weight rows changes"
    elif any(m.endswith("(other linears)") for m in methods):
        title += "\nplain method names: the LoRA target modules; \"(other linears)\": every other decoder linear"
    fig.suptitle(title, fontsize=10)
    return fig


def pareto(numbers: dict, path: Path) -> Path:
    return _save(draw_pareto(numbers), path)


def draw_pareto(numbers: dict):
    """Per task (columns): task metric (mean over seeds, error bars = the seed range) against the primary drift
    (row 1) and, when the summary has forgetting, against forgetting (row 2); one marker per method, each labelled
    with its name; the methods of one sweep joined in size order; the Pareto front (higher metric, lower x) as a
    dashed staircase with its members ringed; a method whose cells did not learn hollow (never on the front); a learned
    method tied with a front member (seed ranges overlap) with a dotted ring; published reference numbers of the same
    metric as dotted horizontal lines. Everything drawn is a value of numbers["pareto"] (analysis.pareto.pareto_section)
    or numbers["published"]."""
    section = numbers["pareto"]
    rows = [("drift", section["drift"])] + ([("forgetting", section["forgetting"])] if section.get("forgetting") else [])
    tasks = numbers["tasks"]
    methods = list(dict.fromkeys(m for t in tasks for m in numbers["results"][t]["methods"]))
    style = {m: series_style(i) for i, m in enumerate(methods)}
    if len(methods) > len(SERIES_COLORS):  # a sweep: 20 colours, so no two methods share colour and marker soon
        style = {m: (plt.get_cmap("tab20")(i % 20), MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}
    published = (numbers.get("published") or {}).get("tasks") or {}
    fig, axes = plt.subplots(len(rows), len(tasks), figsize=(4.6 * len(tasks) + 2.2, 3.8 * len(rows) + 0.4),
                             squeeze=False, layout="constrained")  # fmt: skip
    handles: dict[str, Any] = {}
    for row, (axis, by_task) in enumerate(rows):
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            part = by_task.get(task)
            if not part:
                ax.set_axis_off()
                ax.set_title(f"{task}: no {axis} values", fontsize=9)
                continue
            points = {m: point for m, point in part["points"].items() if point["n"]}
            for sweep in section.get("sweeps") or []:
                line = [m for m in sweep["methods"] if m in points]
                if len(line) > 1:
                    handle = ax.plot([points[m]["x"] for m in line], [points[m]["metric"] for m in line], color="grey",
                                     lw=1, alpha=0.7, zorder=1, label=sweep["label"])[0]  # fmt: skip
                    handles.setdefault(sweep["label"], handle)
            not_learned = set(part.get("not_learned") or [])
            for m, point in points.items():
                color, marker = style[m]
                handle = ax.errorbar([point["x"]], [point["metric"]],
                                     xerr=[[point["x"] - point["x_min"]], [point["x_max"] - point["x"]]],
                                     yerr=[[point["metric"] - point["metric_min"]], [point["metric_max"] - point["metric"]]],
                                     color=color, marker=marker, ms=6, capsize=2, lw=0.8, ls="none", zorder=3,
                                     mfc="none" if m in not_learned else color, label=m)  # fmt: skip
                handles.setdefault(m, handle)
                ax.annotate(m, (point["x"], point["metric"]), textcoords="offset points", xytext=(4, 4), fontsize=6)
            if not_learned:
                handle = ax.scatter([points[m]["x"] for m in not_learned if m in points],
                                    [points[m]["metric"] for m in not_learned if m in points], s=60, marker="x", c="grey",
                                    lw=1, zorder=4, label="did not learn (hollow; never on the front)")  # fmt: skip
                handles.setdefault("did not learn (hollow; never on the front)", handle)
            tied = [m for m in part.get("tied") or {} if m in points]
            if tied:
                handle = ax.scatter([points[m]["x"] for m in tied], [points[m]["metric"] for m in tied], s=140,
                                    facecolors="none", edgecolors="k", linestyles=":", lw=1, zorder=4,
                                    label="tied with a front member (seed ranges overlap)")  # fmt: skip
                handles.setdefault("tied with a front member (seed ranges overlap)", handle)
            front = [m for m in part["front"] if m in points]
            if front:
                front_x, front_y = [points[m]["x"] for m in front], [points[m]["metric"] for m in front]
                handle = ax.step(front_x, front_y, where="post", color="k", ls="--", lw=1, zorder=2, label="Pareto front")[0]
                ax.scatter(front_x, front_y, s=140, facecolors="none", edgecolors="k", lw=1, zorder=4)
                handles.setdefault("Pareto front", handle)
            for ref_method, ref in ((published.get(task) or {}).get("methods") or {}).items():
                if ref.get("same_metric"):
                    handle = ax.axhline(ref["value"], color=style.get(ref_method, ("k", "o"))[0], ls=":", lw=1.2,
                                        label=f"published {ref_method}")  # fmt: skip
                    handles.setdefault(f"published {ref_method}", handle)
            ax.set_title(f"{task}: {part['metric_name']} vs {axis}", fontsize=9)
            ax.set_xlabel(section["x"][axis], fontsize=TICK_FONT)
            if col == 0:
                ax.set_ylabel("validation metric (task's metric)", fontsize=9)
            ax.tick_params(labelsize=TICK_FONT)
            ax.grid(alpha=0.3)
    order = [m for m in methods if m in handles] + [k for k in handles if k not in methods]  # methods first
    fig.legend([handles[k] for k in order], order, loc="outside right center", fontsize=TICK_FONT,
               ncol=1 if len(order) <= 18 else 2)  # fmt: skip
    rule = ("; front over the methods whose cells learned, ties: seed ranges overlapping a front member's"
            if section.get("rule") else "")  # fmt: skip
    fig.suptitle("Task metric vs drift" + (" and forgetting" if len(rows) > 1 else "") + " per method\n(mean of seeds, "
                 f"bars: seed range; dashed: Pareto front, higher metric and lower x{rule})", fontsize=10)  # fmt: skip
    return fig


ORDER_NAMES = {"rr": "round-robin", "random": "random"}


def _series_name(config: dict, several_regimes: bool) -> str:
    order = ORDER_NAMES.get(config["order"], config["order"])
    name = config["mode"] if config["order"] == "single" else f"{config['mode']} ({order})"
    return f"{name} [{config['regime']}]" if several_regimes and config.get("regime") else name


def backend_title(bench: dict, backend: str) -> str:
    """What a latency panel measured, in words: the serving stack and its build, then the device, dtype and
    execution regimes, e.g. "vLLM, CPU build" / "on CPU (x86_64), float32, eager execution"."""
    regimes = ", ".join(bench.get("regimes") or ["eager"])
    return f"{stack_name(backend, bench.get('platform'))}\non {device_words(bench)}, {bench.get('dtype')}, {regimes} execution"


def latency(bench: dict, path: Path) -> Path:
    return _save(draw_latency(bench), path)


def draw_latency(bench: dict):
    """Mean batch latency vs batch size per serving mode (and request order, and execution regime where a backend ran
    several), one panel per backend on a shared y axis, with the CI over repeats. Every series has its own
    colour-marker pair (`series_style`), the same in every panel; one legend, right of the panels."""
    backends = list(bench)
    fig, axes = plt.subplots(1, len(backends), figsize=(5.0 * len(backends) + 1.8, 4.2), squeeze=False, sharey=True,
                             layout="constrained")  # fmt: skip
    def several_regimes(backend: str) -> bool:
        return len(bench[backend].get("regimes") or ["eager"]) > 1

    names: list[str] = []
    for backend in backends:
        for config in bench[backend]["configs"]:
            name = _series_name(config, several_regimes(backend))
            if name not in names:
                names.append(name)
    handles: dict[str, Any] = {}
    for panel, backend in enumerate(backends):
        ax = axes[0][panel]
        series: dict[str, list[dict]] = {}
        for config in bench[backend]["configs"]:
            series.setdefault(_series_name(config, several_regimes(backend)), []).append(config)
        for name, configs in series.items():
            color, marker = series_style(names.index(name))
            configs = sorted(configs, key=lambda config: config["batch_size"])
            xs = [config["batch_size"] for config in configs]
            ys = [_nan(config["mean_batch_ms"]) for config in configs]
            below = [max(0.0, y - _nan(config["low"])) if config["low"] is not None else 0.0
                     for y, config in zip(ys, configs, strict=True)]  # fmt: skip
            above = [max(0.0, _nan(config["high"]) - y) if config["high"] is not None else 0.0
                     for y, config in zip(ys, configs, strict=True)]  # fmt: skip
            handles[name] = ax.errorbar(xs, ys, yerr=[below, above], marker=marker, color=color, label=name, capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # the intervals are on the log scale (verdicts.positive_interval): symmetric here
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        sizes = sorted({config["batch_size"] for config in bench[backend]["configs"]})
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size (requests)", fontsize=9)
        ax.tick_params(labelsize=TICK_FONT)
        if panel == 0:
            ax.set_ylabel("mean batch latency (ms, log scale)", fontsize=9)
        ax.set_title(backend_title(bench[backend], backend), fontsize=9)
        ax.grid(alpha=0.3)
    fig.legend([handles[n] for n in names if n in handles], [n for n in names if n in handles], loc="outside right upper",
               fontsize=TICK_FONT, title="serving mode (request order)", title_fontsize=TICK_FONT)  # fmt: skip
    pct = {f"{bench[backend].get('confidence_pct', 95):g}%" for backend in backends}
    fig.suptitle(f"Batch latency by serving mode (mean of repeats, {'/'.join(sorted(pct))} CI over repeats)", fontsize=10)
    return fig
