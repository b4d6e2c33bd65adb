"""report: ANALYSIS_REPORT.md and PNG figures from the drift bundle (and the bench bundles, and the cells' training
histories for the training curves), CPU only, no torch.

Bundle `report/`: `ANALYSIS_REPORT.md`, `figures/*.png`, and `summary.json`: the exact numbers the report prints
(the drift bundle's summary.json, with H2 and the latency section re-read from the bench bundle when one was
committed after the drift phase ran: bench runs after drift in the pipeline). Every number in the report is a
rounded value of that file (tests/phases/test_report.py parses the report to check it).

`lorascope report DIR` runs this phase on a folder made by `lorascope pull` (DIR is used as a file store). With
LORASCOPE_REPORT_DIR set, the report and its figures are also copied to that plain folder. The final location is
always logged: `report written path=...`.
"""

from __future__ import annotations

import copy
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from lorascope.history import HISTORY_FILE, check_history
from lorascope.phases import PhaseContext

REPORT_FILE = "ANALYSIS_REPORT.md"


def report_numbers(ctx: PhaseContext, drift_summary: dict[str, Any]) -> dict[str, Any]:
    """The drift summary, with H2 and the bench section re-evaluated (`analysis.hypotheses.h2_hypothesis`, the function
    the drift phase used) when the committed bench bundles differ from what the drift phase saw, and the report's
    own provenance; plus the Pareto section (`analysis.pareto`, over drift and, when the drift summary has it,
    forgetting) and the study's published reference numbers next to ours (`summary.published_section`)."""
    from lorascope.analysis import hypotheses, summary
    from lorascope.phases.drift import committed_bench
    from lorascope.reporting import provenance

    numbers = copy.deepcopy(drift_summary)
    bench = committed_bench(ctx)
    seen = (numbers["hypotheses"].get("H2") or {}).get("source")
    describe = lambda src: ", ".join(f"{v['bundle']} attempt {v['attempt']}" for v in src.values())  # noqa: E731
    h2_source = f"drift phase ({describe(seen)})" if seen else "drift phase (no bench bundle then)"
    current = hypotheses.h2_hypothesis(ctx.study, bench)
    if bench and current.get("source") != seen:
        numbers["hypotheses"]["H2"] = summary.json_safe(current)
        numbers["bench"] = summary.json_safe(summary.bench_section(bench))
        h2_source = f"report phase: {describe(current['source'])}, committed after the drift phase ran"
    from lorascope.analysis import pareto

    generation = committed_generation_bench(ctx)
    if generation:
        numbers["generation_bench"] = summary.json_safe(generation)
    numbers["pareto"] = summary.json_safe(pareto.pareto_section(numbers, list(ctx.study.methods)))
    numbers["published"] = summary.json_safe(summary.published_section(ctx.study, numbers))
    numbers["report"] = {
        "code_version": ctx.store.code_version,
        "versions": provenance.package_versions(("lorascope", "numpy", "scipy", "matplotlib")),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "h2_source": h2_source,
    }
    return numbers


def committed_generation_bench(ctx: PhaseContext) -> dict[str, dict]:
    """{backend: summary.json} of the committed generation bench bundles (`bench/<backend>-generation`)."""
    out = {}
    for backend in ctx.study.bench.backends:
        b = ctx.bundle("bench", f"{backend}-generation")
        if b is not None and "summary.json" in b.files:
            out[backend] = b.read_json("summary.json")
    return out


def cell_histories(ctx: PhaseContext) -> tuple[dict[str, dict], dict[str, str]]:
    """(cell name -> history, cell name -> why it has none) for every cell of the study, in grid order: the cell
    bundles' history.json (`lorascope.history`), which `reporting.curves` draws."""
    found: dict[str, dict] = {}
    missing: dict[str, str] = {}
    for cell in ctx.study.cells():
        bundle = ctx.bundle("cells", cell.name)
        if bundle is None:
            missing[cell.name] = "cell not committed"
        elif HISTORY_FILE not in bundle.files:
            missing[cell.name] = "no history.json (committed before lorascope kept training curves)"
        else:
            try:
                history = bundle.read_json(HISTORY_FILE)
                check_history(history, f"cells/{cell.name}/{HISTORY_FILE}")
            except ValueError as exc:
                missing[cell.name] = f"unreadable history.json: {exc}"
                continue
            found[cell.name] = history
    return found, missing


def make_figures(numbers: dict[str, Any], folder: Path) -> list[tuple[str, str]]:
    """Write the PNGs under folder/figures; returns (caption, relative path) in report order."""
    from lorascope.reporting import figures
    from lorascope.reporting.markdown import FIGURES

    out: list[tuple[str, str]] = []
    for pooling in numbers["settings"]["poolings"]:
        rel = f"figures/layer_drift_{pooling}.png"
        figures.layer_drift(numbers, pooling, folder / rel)
        out.append((f"{FIGURES['layer_drift']}, {pooling} pooling", rel))
    figures.metric_vs_drift(numbers, folder / "figures/metric_vs_drift.png")
    out.append((FIGURES["metric_vs_drift"], "figures/metric_vs_drift.png"))
    if numbers.get("pareto"):
        figures.pareto(numbers, folder / "figures/pareto.png")
        out.append((FIGURES["pareto"], "figures/pareto.png"))
    if any(numbers["results"][t]["comparisons"] for t in numbers["tasks"]):
        figures.drift_reduction(numbers, folder / "figures/drift_reduction.png")
        out.append((FIGURES["drift_reduction"], "figures/drift_reduction.png"))
    if any(numbers["weights"].values()):  # format 4: empty where the methods share no module
        figures.weight_spectra(numbers, folder / "figures/weights.png")
        out.append((FIGURES["weights"], "figures/weights.png"))
    if numbers.get("bench"):
        figures.latency(numbers["bench"], folder / "figures/latency.png")
        out.append((FIGURES["latency"], "figures/latency.png"))
    if numbers.get("generation_bench"):
        from lorascope.reporting import generation_bench

        generation_bench.figure(numbers["generation_bench"], folder / "figures/generation_serving.png")
        out.append((FIGURES["generation"], "figures/generation_serving.png"))
    return out


def run(ctx: PhaseContext, index: int) -> None:
    log = ctx.log
    drift_bundle = ctx.require("drift", why="run the drift phase first")
    t0 = time.perf_counter()

    import json

    from lorascope.reporting import curves, markdown

    numbers = report_numbers(ctx, drift_bundle.read_json("summary.json"))
    histories, no_history = cell_histories(ctx)  # the cells' history.json: training curves
    numbers["report"]["training_curves"] = curves.availability(ctx.study, histories, no_history)
    out = ctx.scratch("report")
    shutil.rmtree(out)
    out.mkdir(parents=True)
    figs = make_figures(numbers, out) + curves.figures(ctx.study, histories, out)
    (out / REPORT_FILE).write_text(markdown.render(numbers, figs))
    (out / "summary.json").write_text(json.dumps(numbers, indent=1, allow_nan=False) + "\n")
    verdicts = {k: v["verdict"] for k, v in numbers["hypotheses"].items()}
    with ctx.writer("report", phase="report", meta={"verdicts": verdicts, "figures": len(figs)}) as w:
        w.add_dir(out)
    assert w.committed is not None
    log("report written", path=_deliver(ctx, w.committed, out), figures=len(figs),
        seconds=round(time.perf_counter() - t0, 2), **{k: v.replace(" ", "_") for k, v in verdicts.items()})  # fmt: skip


def when_committed(ctx: PhaseContext, index: int, bundle: Any) -> None:
    """The report is committed: the runner skipped the phase; deliver the committed report (LORASCOPE_REPORT_DIR)."""
    ctx.log("report written", path=_deliver(ctx, bundle, ctx.local(bundle)))


def _deliver(ctx: PhaseContext, bundle: Any, folder: Path) -> str:
    """Copy the report and its figures from `folder` to LORASCOPE_REPORT_DIR when set; return where the report is:
    that copy, else the committed file (a local path on a file store, its URL on S3)."""
    local_dir = ctx.env.get("LORASCOPE_REPORT_DIR")
    if local_dir:
        dest = Path(local_dir).expanduser()
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / REPORT_FILE, dest / REPORT_FILE)
        if (folder / "figures").is_dir():
            shutil.copytree(folder / "figures", dest / "figures", dirs_exist_ok=True)
        return str((dest / REPORT_FILE).resolve())
    key = bundle.object_key(REPORT_FILE)
    local = ctx.store.local_path(key)
    return str(local) if local is not None else f"{ctx.store.url}/{key}"
