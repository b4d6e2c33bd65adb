"""bench: what serving LoRA adapters costs, against merged adapters and full fine-tuned models (hypothesis H2).

One index per backend of `study.bench.backends` (index i -> backend i), bundle `bench/<backend>/`.

Recipe
  1. check the plan (`serving.plan.BenchPlan`: modes, adapters, batch sizes; and the backend installed) - one
     ConfigError line, exit 2, nothing loaded;
  2. load the inputs: the staged base model, the cells of seed `bench.seed` (a full cell and the LoRA cells of the
     served tasks), and each task's validation split tokenized exactly as training did;
  3. build what the modes serve (`serving.servers.Build`): the LoRA cell merged into the base (`merged`), and for
     vLLM the base saved as a sequence-classification checkpoint;
  4. for each mode, load it (timed), then at every batch size and stream order run the protocol (warm-up, repeats of
     timed batches, harness overhead; `serving.protocol`); hf runs the repeats repeat-major, reloading each mode per
     repeat, vllm runs one engine per mode (`schedule`);
  5. correctness (`serving.servers.check_correctness`): every multi-adapter request against the same request served
     alone by a single-adapter model, and merged against separate;
  6. commit raw timings (`requests.jsonl`, `batches.jsonl`, `switches.jsonl`), `summary.json` (`serving.bench_summary`)
     and `summary.md` (`reporting.bench_markdown`).

Modes (see `lorascope.serving`): `full` serves the served task's full cell; `merged` and `separate` its LoRA cell;
`multi-k` the LoRA cells of the study's first k tasks, requests interleaved round-robin (`rr`) and at random
(`random`, seeded). The served task is the study's first task.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.errors import ConfigError
from lorascope.methods import kind_of
from lorascope.phases import PhaseContext
from lorascope.serving.plan import BenchPlan
from lorascope.study import Study
from lorascope.threads import configure_threads, kept_threads


def check_backend(backend: str) -> None:
    """ConfigError (exit 2) when the backend cannot run in this environment."""
    if backend == "vllm":
        from lorascope.serving import vllm_backend as mod
    else:
        from lorascope.serving import hf_backend as mod
    reason = mod.available()
    if reason:
        raise ConfigError(f"bench backend {backend!r}: {reason}")


def vllm_python(env: Mapping[str, str]) -> str | None:
    """The interpreter of the vLLM environment: `LORASCOPE_VLLM_PYTHON`, else `.venv-vllm/bin/python` of this checkout
    (where `make install-vllm` puts it) or of the working directory; None when there is none."""
    if env.get("LORASCOPE_VLLM_PYTHON"):
        return env["LORASCOPE_VLLM_PYTHON"]
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        py = root / ".venv-vllm" / "bin" / "python"
        if py.is_file() and os.access(py, os.X_OK):
            return str(py)
    return None


def interpreter(study: Study, index: int, env: Mapping[str, str]) -> str | None:
    """The vllm index runs in the vLLM environment when vllm is not importable here (the main venv pins
    transformers 5.23, vLLM 0.32 needs < 5.20; see docs/bench.md). None: this process (and, without a vLLM
    environment, the phase's own check then says what to install, exit 2)."""
    if study.bench.backends[index] != "vllm" or importlib.util.find_spec("vllm") is not None:
        return None
    return vllm_python(env)


# ------------------------------------------------------------------------------------------------ the phase
def bench_kind(study: Study) -> str:
    """Which bench serves the study: its served task's (the first task's) type's `bench`, "classification" (the
    forward-pass bench) or "generation" (serving.generation); ConfigError naming the task when its type has none."""
    task = study.tasks[0]
    kind = task.task_type.bench
    if kind is None:
        raise ConfigError(f"field tasks.0 ({task.name}): the bench serves the study's first task, and its type "
                          f"({task.task_type.name}) has no serving bench; list a classification or generation task "
                          "first, or leave the bench phase out")  # fmt: skip
    return kind


def generation_on_classification(study: Study) -> bool:
    """Whether a classification study's bench also runs the generation bench on its cells served as causal LMs
    (`bench.generation.enabled: true`; bundle `bench/<backend>-generation`)."""
    return bench_kind(study) == "classification" and study.bench.generation.enabled is True


def run(ctx: PhaseContext, index: int) -> None:
    backend = ctx.study.bench.backends[index]
    log = ctx.log.bind(backend=backend)
    if bench_kind(ctx.study) == "generation":
        return measure_generation(ctx, backend, log)
    plan = BenchPlan(ctx.study, backend)
    check_backend(backend)
    ctx.require("stage", why="run the stage phase first")
    cells = {c: ctx.require("cells", c, why="the bench serves this cell; run the train phase for it first") for c in plan.cells}
    if generation_on_classification(ctx.study):  # first: the runner skips an index once bench/<backend> is committed
        measure_generation(ctx, backend, log, from_classification=True)

    with kept_threads():  # the local runner may run later phases in this process
        measure(ctx, plan, cells, log)


def measure(ctx: PhaseContext, plan: BenchPlan, cells: dict, log: Any) -> None:
    """Steps 2-6 of the recipe for one backend (the plan checked, the input bundles committed)."""
    import torch

    from lorascope import data
    from lorascope.models import loading
    from lorascope.serving import bench_summary, protocol, servers, workload

    t_start = time.perf_counter()
    backend = plan.backend
    device = loading.pick_device(ctx.env)
    # LORASCOPE_TORCH_THREADS when set; otherwise one intra-op thread on CPU. The smoke model is far too small to gain
    # from intra-op parallelism, and on a shared machine spinning OpenMP threads turn a 2 ms batch into a 50 ms one at
    # random, which would time the neighbours instead of the model.
    configure_threads(ctx.env, default=1 if device.type == "cpu" else None)
    dtype_name = resolve_dtype(ctx.study, device)
    dtype = getattr(torch, dtype_name)
    stage_dir = ctx.stage_dir()
    base_dir = stage_dir / "model"
    tokenizer = loading.load_tokenizer(base_dir)
    specs = {t: ctx.study.task(t).spec for t in dict.fromkeys([plan.served_task, *plan.adapter_tasks])}
    pools = {t: workload.make_pool(t, s.task_type.encode(s, tokenizer, data.read_split(stage_dir, t, "validation"), s.max_length),
                                   plan.seed) for t, s in specs.items()}  # fmt: skip
    settings = protocol.Settings(tuple(plan.batch_sizes), ctx.study.bench.warmup_batches, ctx.study.bench.requests,
                                 ctx.study.bench.repeats, plan.seed)
    cell_dirs = {c: ctx.local(b) for c, b in cells.items()}
    num_labels = specs[plan.served_task].num_labels
    work = ctx.scratch("bench", backend)
    log("plan", device=str(device), dtype=dtype_name, modes=",".join(plan.modes),
        batch_sizes=",".join(map(str, plan.batch_sizes)), cells=",".join(plan.cells))

    build = servers.Build(plan=plan, base_dir=base_dir, cell_dirs=cell_dirs, work=work, num_labels=num_labels, dtype=dtype,
                          dtype_name=dtype_name, device=device, kv_cache_bytes=ctx.study.bench.kv_cache_memory_bytes,
                          log=log)  # fmt: skip
    possible = build.possible()
    skipped = [f"{m} [{r}]" for r in plan.regimes for m in plan.modes if not possible(m, r)]
    if skipped:
        log("regime not possible here, skipped", configs=",".join(skipped), platform=build.platform)
    runs = {(regime, mode, order, bs): protocol.new_config(mode, order, bs, plan.tasks_of(mode), pools, settings, regime)
            for regime in plan.regimes for mode in plan.modes if possible(mode, regime)
            for order in plan.orders(mode) for bs in plan.batch_sizes}  # fmt: skip
    modes: dict[str, dict] = {plan.mode_key(m, r): {"mode": m, "regime": r, "cells": plan.cells_of(m), "load_seconds_per_repeat": []}
                              for r in plan.regimes for m in plan.modes if possible(m, r)}  # fmt: skip
    switches: dict[str, dict] = {}
    for regime, mode, repeats in [(r, m, reps) for r in plan.regimes for m, reps in schedule(backend, plan.modes, settings.repeats)
                                  if possible(m, r)]:  # fmt: skip
        server = build.open(mode, regime)
        info = modes[plan.mode_key(mode, regime)]
        info["load_seconds_per_repeat"].append(server.load_seconds)
        if "weights_bytes" not in info:
            info.update(server.memory())
        log.debug("loaded", regime=regime, mode=mode, repeats=",".join(map(str, repeats)), seconds=round(server.load_seconds, 3))
        if backend == "vllm" and server.tasks:
            info.setdefault("adapter_first_use", []).append(server.first_use(pools))
        for r in repeats:
            for order in plan.orders(mode):
                if backend == "hf" and mode.startswith("multi-"):
                    sw = switches.setdefault(f"{mode}/{order}", {"seconds": []})
                    sw["seconds"] += protocol.run_switches(server, plan.tasks_of(mode), order, settings)
                for bs in plan.batch_sizes:
                    protocol.run_repeat(server, runs[(regime, mode, order, bs)], log, harness=r == settings.repeats - 1)
        server.close()
    for info in modes.values():
        info["load_seconds"] = sum(info["load_seconds_per_repeat"]) / len(info["load_seconds_per_repeat"])
        if info["mode"] == "merged":
            info["merge_seconds"] = build.merge_seconds
    runs = list(runs.values())

    correctness = servers.check_correctness(build, runs, pools, dtype_name, cell_dirs)
    summary = bench_summary.summarize(ctx.study, plan, runs, settings=settings, modes=modes, switches=switches,
                                      correctness=correctness, machine=machine(device, backend), dtype_name=dtype_name,
                                      seconds=time.perf_counter() - t_start, platform_name=build.platform,
                                      skipped=skipped)  # fmt: skip
    _commit(ctx, backend, runs, switches, summary)
    log("committed", seconds=round(time.perf_counter() - t_start, 1), h2=summary["h2"]["verdict"].replace(" ", "_"),
        multi_ok=(correctness["multi_vs_single"] or {}).get("ok"), merged_ok=(correctness["merged_vs_separate"] or {}).get("ok"),
        vs_hf_ok=(correctness.get("vllm_vs_hf") or {}).get("ok"))


def measure_generation(ctx: PhaseContext, backend: str, log: Any, from_classification: bool = False) -> None:
    """The generation bench (`serving.generation.bench.run_bench`) of one backend on the cells of seed `bench.seed`:
    the first task's LoRA adapter is the served one, the other tasks' adapters join the multi-adapter modes, the first
    task's full cell is `full`; prompts from the first task's staged validation split. Bundle `bench/<backend>/`.
    `from_classification`: the cells are classifiers, served as causal LMs (`adapters.causal_adapter`, `causal_model`:
    heads dropped), prompts are the served task's encoded validation texts; bundle `bench/<backend>-generation/`."""
    from lorascope.models import loading
    from lorascope.serving.generation import GenerationInputs, adapter_count, settings_from
    from lorascope.serving.generation import adapters as gen_adapters
    from lorascope.serving.generation import bench as generation

    check_backend(backend)
    study, seed = ctx.study, ctx.study.bench.seed
    g = study.bench.generation
    modes = [*g.modes, *(g.online.modes if g.online.enabled and backend == "vllm" else [])]
    lora, full = study.bench_method(), next((m for m in study.methods if kind_of(m).is_reference), None)
    if any(adapter_count(m) for m in modes) and lora is None:
        raise ConfigError("bench.generation.modes: every mode but full serves LoRA adapters; the study has no vLLM-servable "
                          "LoRA method")  # fmt: skip
    if "full" in modes and full is None:
        raise ConfigError("bench.generation.modes: mode 'full' needs a full fine-tuning method (kind: full) in methods")
    tasks = [t.name for t in study.tasks]
    stage_dir = ctx.stage_dir()
    adapters = {t: ctx.cell_dir(f"{t}-{lora.name}-s{seed}") / "adapter" for t in tasks} if lora else {}
    full_dir = ctx.cell_dir(f"{tasks[0]}-{full.name}-s{seed}") / "model" if full and "full" in modes else None
    base_dir = stage_dir / "model"
    work = ctx.scratch("bench", backend, "generation")
    cells_as = None
    if from_classification:
        archs = json.loads((base_dir / "config.json").read_text()).get("architectures") or []
        if not any(a.endswith("ForCausalLM") for a in archs):
            raise ConfigError(f"bench.generation.enabled: serving the cells as causal LMs needs a decoder base model staged "
                              f"as a causal LM; {study.model.name} is {', '.join(archs) or 'of unknown architecture'}")  # fmt: skip
        t0 = time.perf_counter()
        adapters = {t: gen_adapters.causal_adapter(d, work / "causal" / t) for t, d in adapters.items()}
        full_dir = gen_adapters.causal_model(full_dir, base_dir, work / "causal" / "full") if full_dir else None
        cells_as = {"what": gen_adapters.CELLS_AS_CAUSAL_LM, "seconds": time.perf_counter() - t0,
                    "cells": [f"{t}-{lora.name}-s{seed}" for t in tasks] + ([f"{tasks[0]}-{full.name}-s{seed}"] if full_dir else [])}  # fmt: skip
    with kept_threads():
        device = loading.pick_device(ctx.env)
        configure_threads(ctx.env, default=1 if device.type == "cpu" else None)
        import torch

        settings = settings_from(study.bench, study.hypotheses.h2_max_overhead_pct, resolve_dtype(study, device), torch.get_num_threads())
        prompts = classification_prompts(stage_dir, tasks[0], base_dir, study) if from_classification else \
            generation.stage_prompts(stage_dir, tasks[0], base_dir)  # fmt: skip
        inputs = GenerationInputs(base_dir, adapters, full_dir, prompts)
        log("plan", bench="generation", device=str(device), modes=",".join(settings.modes), cells=",".join(map(str, adapters)))
        result = generation.run_bench(backend, inputs, settings, work, log, device=device,
                                      study={"name": study.name, "hash": study.hash}, versions=machine(device, backend)["versions"])  # fmt: skip
    if cells_as is not None:
        result["summary"]["cells_as_causal_lm"] = cells_as
    key = (f"{backend}-generation",) if from_classification else (backend,)
    files = generation.bundle_files(result, ctx.scratch("bench", *key, "out"))
    summary = result["summary"]
    meta = {"backend": backend, "bench": "generation", "h2": summary["h2"]["verdict"], "device": summary["device"], "dtype": summary["dtype"]}
    with ctx.writer("bench", *key, phase="bench", meta=meta) as w:
        for name, path in files.items():
            w.add_file(name, path)
    log("committed", bench="generation", seconds=round(summary["seconds"], 1), h2=summary["h2"]["verdict"].replace(" ", "_"),
        tokens_identical=summary["correctness"]["ok"])


def classification_prompts(stage_dir: Path, task: str, base_dir: Path, study: Study) -> list[list[int]]:
    """The generation bench's prompts on a classification study: the served task's staged validation texts, encoded
    as its classifier reads them (`data.encode`), distinct, in split order."""
    from lorascope import data
    from lorascope.models import loading

    tok = loading.load_tokenizer(base_dir)
    rows = data.encode(tok, task, data.read_split(stage_dir, task, "validation"), study.task(task).max_length)
    return [list(x) for x in dict.fromkeys(tuple(r["input_ids"]) for r in rows)]


def schedule(backend: str, modes: list[str], repeats: int) -> list[tuple[str, list[int]]]:
    """(mode, repeats to run on one load). hf: repeat-major, the mode reloaded for every repeat (repeat 1 of every
    mode, then repeat 2, ...), so a slow stretch of a shared machine spreads over all modes and load time gets a
    sample per repeat. vllm: one engine per mode running all its repeats (an engine start costs a minute of
    compilation and CUDA-graph capture, and vLLM does not promise to free everything when an engine is dropped)."""
    if backend == "hf":
        return [(mode, [r]) for r in range(repeats) for mode in modes]
    return [(mode, list(range(repeats))) for mode in modes]


def resolve_dtype(study: Study, device: Any) -> str:
    """`bench.dtype`, where `auto` is the model's dtype on a GPU and float32 on CPU (half-precision matmuls on a
    CPU are emulated and would time the emulation)."""
    if study.bench.dtype != "auto":
        return study.bench.dtype
    return study.model.dtype if device.type == "cuda" else "float32"


# ------------------------------------------------------------------------------------------------ the commit
def machine(device: Any, backend: str) -> dict[str, Any]:
    """The facts of this process that the summary records: device, its name, torch threads, package versions."""
    import torch

    if backend == "vllm":
        from lorascope.serving.vllm_backend import versions
    else:
        from lorascope.serving.hf_backend import versions
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": str(device), "device_name": name, "torch_threads": torch.get_num_threads(), "versions": versions()}


def _commit(ctx: PhaseContext, backend: str, runs: list, switches: dict, summary: dict) -> None:
    from lorascope.reporting import bench_markdown
    from lorascope.serving import protocol

    work = ctx.scratch("bench", backend, "out")
    with open(work / "requests.jsonl", "w") as f:
        for r in runs:
            for row in protocol.request_rows(backend, r):
                f.write(json.dumps(row) + "\n")
    with open(work / "batches.jsonl", "w") as f:
        for r in runs:
            for row in protocol.batch_rows(backend, r):
                f.write(json.dumps(row) + "\n")
    with open(work / "switches.jsonl", "w") as f:
        for key, sw in switches.items():
            mode, order = key.split("/")
            for i, s in enumerate(sw["seconds"]):
                f.write(json.dumps({"backend": backend, "mode": mode, "order": order, "switch": i, "seconds": s}) + "\n")
    meta = {"backend": backend, "h2": summary["h2"]["verdict"], "device": summary["device"], "dtype": summary["dtype"]}
    with ctx.writer("bench", backend, phase="bench", meta=meta) as w:
        for name in ("requests.jsonl", "batches.jsonl", "switches.jsonl"):
            w.add_file(name, work / name)
        w.add_json("summary.json", summary)
        w.add_bytes("summary.md", bench_markdown.summary_markdown(summary).encode())
