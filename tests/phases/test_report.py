"""The report phase on crafted drift runs (tests/fixtures/crafted_runs.py): every number the report prints is a value of
its numbers (the drift summary), figures exist, the smoke banner shows, H2 is re-read from a bench bundle committed
after drift, and `lorascope report DIR` works on a folder made by `pull`, copying to LORASCOPE_REPORT_DIR."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from lorascope import cli
from lorascope.phases import report as report_phase
from lorascope.reporting import markdown
from lorascope.runner import run_phase_index
from lorascope.store import Store, pull
from tests.fixtures.crafted_runs import commit_bench, craft_run, run_drift
from tests.fixtures.report_numbers import NUMBER, unmatched_numbers

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report") / uuid.uuid4().hex[:6]
    ctx = craft_run(folder, lora="mixed", full="noise")
    drift_summary = run_drift(ctx)
    run_phase_index(ctx, "report", 0)
    b = ctx.require("report")
    return ctx, drift_summary, b.read_bytes(report_phase.REPORT_FILE).decode(), b.read_json("summary.json"), b


def test_every_number_in_the_report_comes_from_the_summary(reported):
    _ctx, drift_summary, md, numbers, _ = reported
    assert unmatched_numbers(md, numbers) == []
    assert len(NUMBER.findall(md.split("## Provenance")[0])) > 100  # the check did look at numbers
    # the report's numbers are the drift bundle's summary (no bench here), plus the report's own provenance, the
    # Pareto section and the published reference numbers (none in this study) it derives
    assert {k: v for k, v in numbers.items() if k not in ("report", "pareto", "published")} == drift_summary
    assert numbers["published"] is None and set(numbers["pareto"]["drift"]) == {"mrpc", "rte"}


def test_the_check_catches_a_number_not_in_the_summary(reported):
    _ctx, _s, md, numbers, _ = reported
    s = numbers["settings"]
    comp = numbers["results"]["mrpc"]["comparisons"]["lora"][s["primary_pooling"]]["debiased"]
    printed = f"| {markdown.fixed(comp['ft_mean'])} | {markdown.fixed(comp['method_mean'])} | {markdown.fixed(comp['reduction_pct'], 1)} |"
    assert printed in md
    assert unmatched_numbers(md.replace(printed, "| 0.123456 | 9.87 | 55.5 |"), numbers) == ["0.123456", "9.87", "55.5"]


def test_hypothesis_table_and_key_cells(reported):
    _ctx, _s, md, numbers, _ = reported
    for key in ("H1a", "H1b", "H2"):
        h = numbers["hypotheses"][key]
        scope = "overall" if key == "H2" else "reference pair full vs lora"  # H1: the reference pair's verdict
        assert f"| {h['hypothesis']} | {scope} | **{h['verdict']}** |" in md
        for scope, part in h["by"].items():
            assert f"| | {scope} | {part['verdict']} | {part['evidence']} |" in md
    assert numbers["hypotheses"]["H2"]["verdict"] == "not measured"
    ci = numbers["results"]["rte"]["comparisons"]["lora"]["reduction_ci"]
    assert f"[{markdown.fixed(ci['lo'], 1)}, {markdown.fixed(ci['hi'], 1)}]" in md
    assert "cannot give p below 0.250 two-sided" in md  # the sign-flip floor with 3 seeds, stated
    assert "THESE NUMBERS MEAN NOTHING ABOUT TINYLLAMA" in md  # builtin:tiny-llama


def test_figures(reported):
    _ctx, _s, md, numbers, bundle = reported
    pngs = sorted(p for p in bundle.files if p.endswith(".png"))
    assert pngs == ["figures/drift_reduction.png", "figures/layer_drift_last.png", "figures/layer_drift_mean.png",
                    "figures/metric_vs_drift.png", "figures/pareto.png", "figures/weights.png"]  # fmt: skip
    for p in pngs:
        data = bundle.read_bytes(p)
        assert data.startswith(PNG) and len(data) > 10_000
        assert f"]({p})" in md


def test_a_run_without_history_says_the_curves_are_missing(reported):
    """Cells committed before history.json existed (the crafted cells have none): no curve figure, and the report
    says why instead of failing."""
    _ctx, _s, md, numbers, bundle = reported
    tc = numbers["report"]["training_curves"]
    assert tc["cells"] == 12 and tc["cells_with_history"] == 0 and len(tc["missing"]) == 12
    assert "**Training curves missing**: none of the 12 cells has a history.json" in md
    assert not [p for p in bundle.files if "training_curves" in p]


def _history(cell, steps: int, resumed: int | None = None) -> dict:
    """A plausible history.json: loss falling from ln 2 with seed-dependent speed, dev metric rising."""
    rng = np.random.default_rng(cell.seed)
    speed = 20 + cell.seed % 17 + (15 if cell.method == "full" else 0)
    train = [{"step": s, "epoch": s / 40, "loss": 0.69 * np.exp(-s / speed) + 0.05 * rng.random() + 0.1,
              "learning_rate": 1e-3 * (1 - s / steps), "grad_norm": 1.0 + rng.random()} for s in range(8, steps + 1, 8)]
    evals = [{"step": s, "epoch": s / 40, "loss": 0.69 * np.exp(-s / (1.5 * speed)) + 0.2 + 0.03 * rng.random(),
              "accuracy": 0.5 + 0.3 * (1 - np.exp(-s / speed)), "f1": 0.6 + 0.25 * (1 - np.exp(-s / speed)) + 0.02 * rng.random(),
              "n": 60} for s in range(8, steps + 1, 8)]  # fmt: skip
    best = min(evals, key=lambda r: r["loss"])["step"]
    return {"format": 1, "cell": cell.name, "task": cell.task, "method": cell.method, "seed": cell.seed,
            "selection_metric": "f1" if cell.task == "mrpc" else "accuracy", "steps_per_epoch": 40, "max_steps": steps,
            "eval_steps": 8, "logging_steps": 8, "global_step": steps, "best_step": best, "resumed_from_step": resumed,
            "train": train, "eval": evals}  # fmt: skip


def test_training_curves_from_the_cells_history(tmp_path):
    """Cells with history.json (one left without, one resumed): one figure per task, the text says which cells."""
    ctx = craft_run(tmp_path)
    run_drift(ctx)
    cells = ctx.study.cells()
    for i, cell in enumerate(cells):
        if i == 1:
            continue  # an old bundle, committed without history.json
        old = ctx.bundle("cells", cell.name)
        folder = ctx.local(old)
        with ctx.writer("cells", cell.name, phase="train") as w:  # the same files, plus the history
            w.add_dir(folder)
            w.add_json("history.json", _history(cell, 120 if cell.method == "full" else 80, resumed=48 if i == 2 else None))
    run_phase_index(ctx, "report", 0)
    b = ctx.require("report")
    numbers, md = b.read_json("summary.json"), b.read_bytes(report_phase.REPORT_FILE).decode()
    tc = numbers["report"]["training_curves"]
    assert (tc["cells"], tc["cells_with_history"]) == (12, 11)
    assert tc["missing"] == {cells[1].name: "no history.json (committed before lorascope kept training curves)"}
    assert "from the history.json of 11 of 12 cells" in md and f"No curves for: `{cells[1].name}` (no history.json" in md
    for task in ("mrpc", "rte"):
        rel = f"figures/training_curves_{task}.png"
        data = b.read_bytes(rel)
        assert data.startswith(PNG) and len(data) > 30_000 and f"]({rel})" in md
    assert unmatched_numbers(md, numbers) == []
    (tmp_path / "curves_mrpc.png").write_bytes(b.read_bytes("figures/training_curves_mrpc.png"))  # to look at


def test_banner_only_for_the_builtin_model(reported):
    _ctx, _s, _md, numbers, _ = reported
    real = json.loads(json.dumps(numbers))
    real["provenance"].update(builtin_model=False, synthetic_data=False, model="TinyLlama/TinyLlama-1.1B")
    assert markdown.banner(real) == []
    assert "MEAN NOTHING" in "".join(markdown.banner(numbers))


def test_bench_committed_after_drift_is_used_for_h2(tmp_path):
    ctx = craft_run(tmp_path)
    run_drift(ctx)
    commit_bench(ctx, {"1": [40.0, 45.0, 50.0], "8": [5.0, 6.0, 7.0]})  # batch 1 is > 30% over merged
    run_phase_index(ctx, "report", 0)
    b = ctx.require("report")
    numbers, md = b.read_json("summary.json"), b.read_bytes(report_phase.REPORT_FILE).decode()
    h2 = numbers["hypotheses"]["H2"]
    assert h2["verdict"] == "not supported" and h2["by"]["hf batch 1"]["verdict"] == "not supported"
    assert "committed after the drift phase ran" in numbers["report"]["h2_source"]
    assert "figures/latency.png" in b.files and "| eager | merged | single | 8 | 5.000 [5.000, 5.000] | 100.0 |" in md
    # the report says what the bench phase's own summary says, part by part
    bench = ctx.require("bench", "hf").read_json("summary.json")["h2"]
    assert {k.removeprefix("hf "): v["verdict"] for k, v in h2["by"].items()} == {k: v["verdict"] for k, v in bench["by"].items()}
    assert f"| | hf batch 1 | not supported | {h2['by']['hf batch 1']['evidence']} |" in md
    assert unmatched_numbers(md, numbers) == []


def test_report_on_a_pulled_folder_with_a_local_copy(tmp_path, monkeypatch, capfd):
    ctx = craft_run(tmp_path / "src")
    run_drift(ctx)
    dest = tmp_path / "pulled"
    got = pull(ctx.store, f"runs/{ctx.run_id}/", dest)
    assert got.ok and f"runs/{ctx.run_id}/drift" in got.bundles
    copy = tmp_path / "my-report"
    monkeypatch.setenv("LORASCOPE_REPORT_DIR", str(copy))
    assert cli.main(["report", str(dest), "--work-dir", str(tmp_path / "work")]) == 0
    line = [ln for ln in capfd.readouterr().err.splitlines() if 'msg="report written"' in ln]
    assert len(line) == 1 and f" path={copy.resolve() / 'ANALYSIS_REPORT.md'} " in line[0]
    assert (copy / "ANALYSIS_REPORT.md").read_text().startswith("# Analysis report: study `crafted`")
    assert (copy / "figures" / "layer_drift_mean.png").read_bytes().startswith(PNG)
    pulled = Store.open(str(dest), code_version="test")
    assert pulled.committed(f"runs/{ctx.run_id}/report")  # committed into the pulled folder, not the source store
    assert not ctx.committed("report")
    # again: already committed, skipped, and the path is still logged (and the copy refreshed)
    (copy / "ANALYSIS_REPORT.md").unlink()
    assert cli.main(["report", str(dest), "--work-dir", str(tmp_path / "work")]) == 0
    err = capfd.readouterr().err
    assert "already committed, skipping" in err
    assert f"path={copy.resolve() / 'ANALYSIS_REPORT.md'} msg=\"report written\"" in err
    assert (copy / "ANALYSIS_REPORT.md").is_file()


@pytest.mark.s3
def test_drift_and_report_on_s3(tmp_path, s3_url, capfd):
    """The same phases on an S3 store (SeaweedFS): reps and weights come through verified downloads."""
    ctx = craft_run(tmp_path, lora="mixed", full="moved", store_url=s3_url)  # full drift well above its noise floor
    summary = run_drift(ctx)
    assert summary["hypotheses"]["H1b"]["verdict"] == "supported", summary["hypotheses"]["H1b"]["by"]
    run_phase_index(ctx, "report", 0)
    b = ctx.require("report")
    assert b.read_bytes("figures/layer_drift_mean.png").startswith(PNG)
    assert f"path={s3_url}/runs/{ctx.run_id}/report/_attempts/{b.attempt}/ANALYSIS_REPORT.md" in capfd.readouterr().err


@pytest.fixture(scope="module")
def several(tmp_path_factory):
    """Four methods (two LoRA ranks of one sweep, another target set) and published reference numbers."""
    folder = tmp_path_factory.mktemp("report") / uuid.uuid4().hex[:6]
    methods = [{"name": "full", "kind": "full"},
               {"name": "lora", "kind": "lora", "r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
               {"name": "lora-r4", "kind": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
               {"name": "lora-q", "kind": "lora", "r": 2, "alpha": 4, "target_modules": ["q_proj"]}]  # fmt: skip
    defaults = {m["name"]: {"learning_rate": 1e-3, "effective_batch": 8, "epochs": 1} for m in methods}
    reference = {"source": "Hu et al. 2021 (LoRA), Table 2, RoBERTa-base", "metric": "accuracy",
                 "values": {"mrpc": {"full": 90.2, "lora": 89.7}, "rte": {"full": 78.7, "lora": 86.6}}}  # fmt: skip
    metrics = {"full": [0.81, 0.80, 0.81], "lora": [0.80, 0.81, 0.80], "lora-r4": [0.80, 0.80, 0.81], "lora-q": [0.60, 0.61, 0.60]}
    ctx = craft_run(folder, lora="mixed", full="moved", metrics=metrics, methods=methods,
                    training={"defaults": defaults}, report={"reference": reference})  # fmt: skip
    drift_summary = run_drift(ctx)
    run_phase_index(ctx, "report", 0)
    b = ctx.require("report")
    return drift_summary, b.read_bytes(report_phase.REPORT_FILE).decode(), b.read_json("summary.json"), b


def test_a_report_over_several_methods(several):
    drift_summary, md, numbers, bundle = several
    assert unmatched_numbers(md, numbers) == []  # the pair, cost, Pareto and published tables too
    assert "figures/pareto.png" in bundle.files and "](figures/pareto.png)" in md
    assert numbers["settings"]["compared_methods"] == ["lora", "lora-r4", "lora-q"]
    for m in ("lora", "lora-r4", "lora-q"):
        p = numbers["pairs"][m]
        assert f"| {m} | lora | all tasks | | **{p['H1a']}** | | **{p['H1b']}** |" in md
        assert f"| | pair {m} | **{numbers['hypotheses']['H1a']['by_method'][m]['verdict']}** |" in md
    assert numbers["pairs"]["lora-q"]["H1a"] == "not supported"  # 20 pp below full: the same H1a rule fails it
    assert numbers["pairs"]["lora"]["H1a"] == "supported"
    assert numbers["pareto"]["sweeps"] == [{"label": "lora r sweep (target_modules=q_proj+v_proj)", "knob": "r",
                                            "methods": ["lora", "lora-r4"]}]  # fmt: skip
    # costs: LoRA r=2 on 2 blocks: 256 trainable of 20000
    c = numbers["costs"]["methods"]["lora"]["all"]
    assert c["trainable_params"]["mean"] == 256 and c["trainable_pct"]["mean"] == pytest.approx(1.28)
    assert "| lora | lora | 6 | 256 | 1.280 |" in md
    # published: MRPC accuracy (not our F1) compared with our MRPC accuracy
    pub = numbers["published"]["tasks"]["mrpc"]["methods"]["full"]
    ours = numbers["results"]["mrpc"]["methods"]["full"]["accuracy"]["mean"]
    assert pub["ours_pct"] == pytest.approx(100 * ours) and not pub["same_metric"]
    assert f"| mrpc | full | accuracy | f1 | 90.2 | {markdown.fixed(100 * ours, 1)} ±" in md


def test_a_format_2_summary_still_renders(reported):
    """A drift bundle written before methods other than LoRA were compared (lora_* keys, no pairs, costs, Pareto):
    the report reads it."""
    import copy

    _ctx, _s, _md, numbers, _ = reported
    old = copy.deepcopy(numbers)
    for key in ("pairs", "costs", "pareto", "published", "frozen_by_construction"):
        old.pop(key)
    for key in ("reference_method", "compared_methods", "method_kinds", "no_reference"):
        old["settings"].pop(key)
    for task in old["tasks"]:
        for comp in old["results"][task]["comparisons"].values():
            for by in (comp[p] for p in old["settings"]["poolings"]):
                for c in by.values():
                    c["lora_mean"] = c.pop("method_mean")
            for v in comp["layers"].values():
                for k in ("mean", "floor"):
                    v[f"lora_{k}"] = v.pop(f"method_{k}")
                v.pop("frozen_by_construction")
    md = markdown.render(old, [])
    comp = old["results"]["mrpc"]["comparisons"]["lora"][old["settings"]["primary_pooling"]]["debiased"]
    assert f"| {markdown.fixed(comp['ft_mean'])} | {markdown.fixed(comp['lora_mean'])} | {markdown.fixed(comp['reduction_pct'], 1)} |" in md
    layer = old["results"]["rte"]["comparisons"]["lora"]["layers"]["layer_1"]
    assert f"| {markdown.fixed(layer['lora_mean'])} | {markdown.fixed(layer['lora_floor'])} |" in md
    assert "No table per pair: the drift summary predates it" in md and "No cost fields" in md
    assert "No Pareto section" in md


def test_a_format_3_summary_still_renders(reported):
    """A drift bundle of format 3 (docs/real-mini, every run before issue 26): the noise-floor gate's `within_floor`,
    no pair-specific means, no counts, weights with a full method's "(other linears)" row. The report reads it in
    its own terms (the old overall line, the (≤ floor) mark) instead of failing or inventing numbers."""
    import copy

    _ctx, _s, _md, numbers, _ = reported
    old = copy.deepcopy(numbers)
    old["format"] = 3
    for key in ("min_seeds_for_verdict", "exploratory", "reference_pair"):
        old["settings"].pop(key)
    for key in ("weights_union", "weights_modules", "fixed_by_construction"):
        old.pop(key)
    for h in ("H1a", "H1b"):
        old["hypotheses"][h].pop("counts")
        old["hypotheses"][h].pop("reference_pair")
    for task in old["tasks"]:
        for entry in old["results"][task]["methods"].values():
            for key in ("moved", "drift_whole_model", "layers_whole_model"):
                entry.pop(key)
            entry["within_floor"] = {p: {"debiased": True, "linear": False} for p in old["settings"]["poolings"]}
        for comp in old["results"][task]["comparisons"].values():
            for key in ("layers_in_mean", "layers_excluded", "reference_moved", "method_moved", "whole_model"):
                comp.pop(key, None)
            for layer in comp["layers"].values():
                layer.pop("not_compared_why")
                layer.pop("ft_moved")
        old["weights"][task]["full (other linears)"] = old["weights"][task]["full"]
    md = markdown.render(old, [])
    h1b = old["hypotheses"]["H1b"]
    assert f"| {h1b['hypothesis']} | overall | **{h1b['verdict']}** |" in md
    assert "Pairs per verdict" not in md and "| seed noise floor (debiased) |" in md and " (≤ floor) |" in md
    assert "Full fine-tuning cells: the LoRA target modules" in md and "| mrpc | full (other linears) |" in md
    assert "Whole-model means" not in md and "seed-to-seed drift (debiased, consistency)" not in md
    assert unmatched_numbers(md, old) == []


def test_the_overall_line_is_a_table_of_counts(several):
    """Several pairs: the headline of H1a / H1b is the reference pair's verdict, and a table counts the pairs per
    verdict (before: "not supported" for the whole family because lora-q, one pair of three, is)."""
    _drift, md, numbers, _ = several
    h1a = numbers["hypotheses"]["H1a"]
    assert h1a["reference_pair"] == {"reference": "full", "method": "lora", "verdict": "supported"}
    assert h1a["counts"]["not supported"] == 1 and h1a["counts"]["supported"] >= 1
    assert f"| {h1a['hypothesis']} | reference pair full vs lora | **supported** |" in md
    counts = " | ".join(str(h1a["counts"][c]) for c in h1a["counts"])
    assert f"| H1a | full vs lora | **supported** | {counts} |" in md
