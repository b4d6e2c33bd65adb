"""drift: how far each fine-tuned model's representations and weights moved from the base, and what 3 seeds can say.

Size 1, CPU only, imports no torch: files are read by `lorascope.tensorio` (safetensors.numpy), the math is
`lorascope.analysis` (numpy/scipy, float64); docs/analysis.md explains every measure and every verdict rule.

Recipe
  1. require every `reps/<model>/<task>/` bundle, every cell and the stage model (ConfigError naming the missing
     bundles otherwise); every model on a task must hold the same examples (LorascopeError otherwise);
  2. representations, one task, pooling and layer at a time (`analysis.representations`): each cell vs the base
     (linear and debiased CKA, drift = 1 - CKA, cosines) -> `layer_rows.csv`; each seed pair of a method (the seed
     noise floor) -> `noise_floor.csv`; the debiased CKA on example subsets (`similarity.SubsetDebiasedCKA`) for
     the CI over examples;
  3. weights, one module at a time (`analysis.updates.update_rows`): the update of every adapted module, read as
     each method's kind says (`lorascope.methods`: full: W_ft - W0; LoRA: scale B A with PEFT's rank/alpha patterns;
     DoRA and IA3: the layer's effective weight from PEFT's formulas, `analysis.lora`; top_layers: W_ft - W0 of its
     blocks' linears) -> `weights.csv`; a kind that moves no weight matrix (BitFit, prefix tuning) has no rows, the
     reason in summary.json's settings.weights_skipped;
  4. statistics and verdicts (`analysis.summary`, assembling `analysis.drift_stats` and `analysis.hypotheses`; rules
     in `analysis.verdicts`): seed summaries, learning gates, whether the reference moved (the seed-to-seed drift
     beside it as consistency), H1a, H1b (per task, pair and layer), and H2 when a bench bundle is already committed
     -> `summary.json`; forgetting (decoders: each reps bundle's forgetting.json against the base's,
     `analysis.forgetting`) -> `summary.json` "forgetting" and `forgetting.csv`;
  5. commit `drift/`.

H2 needs the bench phase, which runs after drift in the pipeline: without a committed `bench/<backend>/` it is
"not measured" here, and the report phase re-evaluates it with the same `hypotheses.h2_hypothesis` (and this phase's
`committed_bench`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from lorascope import tensorio
from lorascope.errors import ConfigError, LorascopeError
from lorascope.phases import PhaseContext

RESAMPLES = 200  # example subsets for the CI of the drift reduction over examples
INTRUDER_K, INTRUDER_EPS = 10, 0.5  # PEFT's intruder utility defaults (Shuttleworth et al. 2024)
# Full cells: the linears LoRA did not adapt are analysed too when their total size over all full cells is at most
# this many elements (the smoke model: yes; TinyLlama: 8.6e8 per cell, hours of SVDs on 2 cores: no).
EXTRA_LINEARS_MAX_ELEMENTS = 50_000_000


def run(ctx: PhaseContext, index: int) -> None:
    from lorascope.analysis import forgetting, hypotheses, representations, similarity, study_layout, summary, updates
    from lorascope.log import progress
    from lorascope.phases import extract_units as units
    from lorascope.phases.extract import LAYERS_FILE, REPS_FILE
    from lorascope.reporting import provenance

    study, log = ctx.study, ctx.log

    # 1. inputs: everything must be committed before any work starts
    missing = [f"reps/{m}/{t}" for m, t in units(study) if not ctx.committed("reps", m, t)]
    missing += [f"cells/{c.name}" for c in study.cells() if not ctx.committed("cells", c.name)]
    if missing:
        raise ConfigError(f"drift needs {len(missing)} more committed bundle(s): {', '.join(missing[:8])}"
                          f"{' ...' if len(missing) > 8 else ''} (run the train and extract phases first)")  # fmt: skip
    stage = ctx.require("stage", why="the base weights come from the stage bundle")
    t0 = time.perf_counter()
    reps_bundles = {(m, t): ctx.require("reps", m, t) for m, t in units(study)}
    cell_dirs = {c.name: ctx.local(ctx.require("cells", c.name)) for c in study.cells()}
    metrics = {name: json.loads((d / "metrics.json").read_text()) for name, d in cell_dirs.items()}
    predictions = {name: tensorio.read_predictions(d) for name, d in cell_dirs.items()}

    # 2. representations, task by task
    rows, noise, subset, resamplers, n_examples, labels = [], [], {}, {}, {}, []
    t_reps = time.perf_counter()
    for task in [t.name for t in study.tasks]:
        cells = study_layout.task_cells(study, task)
        reps = {name: tensorio.RepsFile(ctx.local(reps_bundles[(name, task)]), REPS_FILE, LAYERS_FILE)
                for name in ["base", *(c.name for c in cells)]}  # fmt: skip
        check_reps(task, reps)
        labels, n = reps["base"].labels, len(reps["base"].idx)
        n_examples[task] = n
        if n // 2 >= 4:
            resamplers[task] = similarity.SubsetDebiasedCKA(n, n // 2, RESAMPLES, study.extraction.seed)
        r, nf, subset[task] = representations.representation_drift(
            task, cells, reps, study.extraction.pooling, study_layout.primary_pooling(study), resamplers.get(task), log)
        rows += r
        noise += nf
    t_reps = time.perf_counter() - t_reps
    log("representations done", rows=len(rows), seconds=round(t_reps, 2))

    # 3. weights
    t_w = time.perf_counter()
    base = tensorio.TensorFolder(ctx.local(stage) / "model", "model")
    cells = {c.name: c for c in study.cells()}
    cell_updates, skipped, sources = weight_updates(study, cells, cell_dirs, base)
    cells = {n: c for n, c in cells.items() if n in cell_updates}
    wrows, with_extra = updates.update_rows(
        base, cells, cell_updates, full_cell_targets(study, cell_updates), INTRUDER_K, INTRUDER_EPS, EXTRA_LINEARS_MAX_ELEMENTS,
        progress=lambda it, n: progress(it, n, "weight modules", log, every=max(1, n // 4)))
    t_w = time.perf_counter() - t_w
    log("weights done", modules=len(wrows), seconds=round(t_w, 2))

    # 4. statistics, gates and verdicts
    t_s = time.perf_counter()
    try:
        out = summary.build_summary(study, rows, noise, subset, resamplers, metrics, predictions, wrows, n_examples, labels,
                                    encoder=summary.encoder_of(ctx.local(stage) / "model" / "config.json"),
                                    task_facts=task_facts(study))  # fmt: skip
        funits = {u: json.loads(p.read_text()) if (p := ctx.local(b) / "forgetting.json").is_file() else None
                  for u, b in reps_bundles.items()}  # fmt: skip
        out["forgetting"], frows = forgetting.summarize(study, funits, out)
    except ValueError as e:
        raise LorascopeError(f"drift: {e}") from None
    bench = committed_bench(ctx)
    out["hypotheses"]["H2"] = hypotheses.h2_hypothesis(study, bench)
    out["bench"] = summary.bench_section(bench)
    out["settings"].update(weights_full_extra_linears=with_extra, intruder_k=INTRUDER_K, intruder_eps=INTRUDER_EPS,
                           weights_source=sources, weights_skipped=skipped, weights_notes=dense_update_notes(study, sources),
                           weights_extra_linears_max_elements=EXTRA_LINEARS_MAX_ELEMENTS)
    out["provenance"] = provenance.analysis_provenance(ctx.run_id, study, ctx.store.code_version, stage.meta,
                                                       [b.commit for b in reps_bundles.values()])  # fmt: skip
    t_s = time.perf_counter() - t_s
    out["timings"] = {"representations_seconds": t_reps, "weights_seconds": t_w, "statistics_seconds": t_s,
                      "total_seconds": time.perf_counter() - t0}  # fmt: skip
    out = summary.json_safe(out)

    # 5. commit
    verdicts = {k: v["verdict"] for k, v in out["hypotheses"].items()}
    meta = {"seconds": round(time.perf_counter() - t0, 3), "rows": len(rows), "verdicts": verdicts,
            "hardware": out["provenance"]["drift"]["hardware"], "versions": out["provenance"]["drift"]["versions"]}  # fmt: skip
    with ctx.writer("drift", phase="drift", meta=meta) as w:
        w.add_bytes("layer_rows.csv", tensorio.csv_bytes(rows, representations.layer_columns()))
        w.add_bytes("noise_floor.csv", tensorio.csv_bytes(noise, representations.noise_columns()))
        w.add_bytes("weights.csv", tensorio.csv_bytes(wrows, updates.WEIGHT_COLUMNS))
        if frows:
            w.add_bytes("forgetting.csv", tensorio.csv_bytes(frows, forgetting.CSV_COLUMNS))
        w.add_bytes("summary.json", (json.dumps(out, indent=1, allow_nan=False) + "\n").encode())
    log("committed", bundle="drift", seconds=round(time.perf_counter() - t0, 2),
        **{k: v.replace(" ", "_") for k, v in verdicts.items()})  # fmt: skip


def task_facts(study) -> dict[str, dict[str, Any]]:
    """{task: what the analysis needs of its type, as plain values}: the gate facts (`TaskType.gate`: the primary
    metric, its units, what a trivial predictor scores), the metrics it reports and its validation splits. The task
    types import no torch at module level; analysis/ gets only these values."""
    out = {}
    for t in study.tasks:
        spec = t.spec
        out[t.name] = {"type": spec.type, **spec.task_type.gate(spec).as_dict(), "metrics": list(spec.metrics),
                       "validation_splits": list(spec.validation_splits)}  # fmt: skip
    return out


def committed_bench(ctx: PhaseContext) -> dict[str, dict]:
    """{backend: {"summary", "bundle", "attempt", "committed_at"}} of the study's committed bench bundles (the report
    phase reads them the same way)."""
    out = {}
    for backend in ctx.study.bench.backends:
        b = ctx.bundle("bench", backend)
        if b is not None and "summary.json" in b.files:
            out[backend] = {"summary": b.read_json("summary.json"), "bundle": f"bench/{backend}", "attempt": b.attempt,
                            "committed_at": b.commit.get("committed_at")}  # fmt: skip
    return out


def weight_updates(study, cells: dict, cell_dirs: dict, base) -> tuple[dict[str, tuple[str, Any]], dict, dict]:
    """({cell: (form, update)} for `updates.update_rows`, {method: why it has no weight rows}, {method: how its
    update is read}), each from the method's kind (`MethodKind.weight_update`, `weights_skipped`, `weight_source`).
    Never a guess: a method whose update cannot be computed exactly is skipped with its reason."""
    from lorascope.analysis import updates as analysis_updates
    from lorascope.methods import kind_of

    updates: dict[str, tuple[str, Any]] = {}
    skipped: dict[str, str] = {}
    sources: dict[str, str] = {}
    for name, c in cells.items():
        m = study.method(c.method)
        kind = kind_of(m)
        reason = kind.weights_skipped(m)
        if reason is not None:
            skipped[m.name] = reason
            continue
        try:
            # a head class may keep the backbone under another path than the base checkpoint (Llama's QA class)
            form, u = kind.weight_update(m, cell_dirs[name], analysis_updates.BackboneAliased(base))
            updates[name] = analysis_updates.in_base_names(form, u, base.names())
        except ValueError as e:
            raise ConfigError(f"cells/{name}: {e}") from None
        sources[m.name] = kind.weight_source(m)
    return updates, skipped, sources


def dense_update_notes(study, methods_with_rows) -> dict[str, str]:
    """{method: why its rank measures read differently} for the methods with weight rows whose update is a dense
    rescaling of W0, not an added low-rank matrix (the kind's `dense_update_note`: IA3, DoRA's magnitude)."""
    from lorascope.methods import kind_of

    notes = {m.name: kind_of(m).dense_update_note(m) for m in study.methods if m.name in methods_with_rows}
    return {name: note for name, note in notes.items() if note}


def full_cell_targets(study, updates: dict) -> set[str]:
    """The linears a full cell is compared on: the short names (`q_proj`) the study's LoRA cells adapted, read from
    their adapters (the study may name them by role: `q`), else `study_layout.lora_targets`."""
    from lorascope.analysis import study_layout, weights

    found = {weights.module_parts(n)[1] for form, u in updates.values() if form == "lora" for n in u}
    return found or set(study_layout.lora_targets(study))


def check_reps(task: str, reps: dict[str, tensorio.RepsFile]) -> None:
    """Every model on a task must hold the same examples in the same order, and the same layers."""
    base = reps["base"]
    for name, r in reps.items():
        if not np.array_equal(r.idx, base.idx):
            raise LorascopeError(f"task {task}: example ids of reps/{name}/{task} differ from reps/base/{task}; every "
                                 "model must be extracted on the same examples (re-run extract for it)")  # fmt: skip
        if r.labels != base.labels or r.shape != base.shape:
            raise LorascopeError(f"task {task}: reps/{name}/{task} has layers {r.labels} / shape {r.shape}, the base "
                                 f"{base.labels} / {base.shape}")  # fmt: skip
