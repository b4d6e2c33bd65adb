"""bench: what serving LoRA adapters costs, against merged adapters and full fine-tuned models (hypothesis H2).

One index per backend of `study.bench.backends` (index i -> backend i), bundle `bench/<backend>/`.

Recipe
  1. check the plan (modes, adapters, batch sizes, backend installed) - one ConfigError line, exit 2, nothing loaded;
  2. load the inputs: the staged base model, the cells of seed `bench.seed` (a full cell and the LoRA cells of the
     served tasks), and each task's validation split tokenized exactly as training did;
  3. build what the modes serve: the LoRA cell merged into the base (`merged`), and for vLLM the base saved as a
     sequence-classification checkpoint;
  4. for each mode, load it (timed), then at every batch size and stream order run the protocol (warm-up, repeats of
     timed batches, harness overhead; `serving.protocol`); hf runs the repeats repeat-major, reloading each mode per
     repeat, vllm runs one engine per mode (`schedule`);
  5. correctness: every multi-adapter request against the same request served alone by a single-adapter model, and
     merged against separate;
  6. commit raw timings (`requests.jsonl`, `batches.jsonl`, `switches.jsonl`), `summary.json` and `summary.md`.

Modes (see `lorascope.serving`): `full` serves the served task's full cell; `merged` and `separate` its LoRA cell;
`multi-k` the LoRA cells of the study's first k tasks, requests interleaved round-robin (`rr`) and at random
(`random`, seeded). The served task is the study's first task.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.errors import ConfigError
from lorascope.phases import Phase, PhaseContext
from lorascope.serving import MODES, PROB_TOLERANCE, multi_count
from lorascope.study import GLUE_TASKS, FullMethod, LoraMethod, Study

BACKENDS = ("hf", "vllm")


# ------------------------------------------------------------------------------------------------ plan (no loading)
class BenchPlan:
    """What one backend's bench serves, derived from the study alone. Building it is the bad-input check."""

    def __init__(self, study: Study, backend: str) -> None:
        b = study.bench
        if backend not in BACKENDS:
            raise ConfigError(f"bench.backends: unknown backend {backend!r}; backends are {list(BACKENDS)}")
        bad = [s for s in b.batch_sizes if s < 1]
        if bad:
            raise ConfigError(f"bench.batch_sizes: every batch size must be >= 1 (got {bad})")
        unknown = [m for m in b.modes if m not in MODES]
        if unknown:
            raise ConfigError(f"bench.modes: unknown mode(s) {unknown}; modes are {list(MODES)}")
        if b.seed not in study.seeds:
            raise ConfigError(f"bench.seed: {b.seed} is not one of the study's seeds {study.seeds}; the bench serves "
                              "the cells trained with that seed")
        self.backend = backend
        # hf serves PyTorch eager; vllm the study's regimes (the first one decides its H2)
        self.regimes = ["eager"] if backend == "hf" else list(b.vllm_regimes)
        self.modes = list(b.modes)
        self.batch_sizes = list(b.batch_sizes)
        self.seed = b.seed
        self.tasks = [t.name for t in study.tasks]
        self.served_task = self.tasks[0]
        lora = [m for m in study.methods if isinstance(m, LoraMethod)]
        full = [m for m in study.methods if isinstance(m, FullMethod)]
        self.lora: LoraMethod | None = lora[0] if lora else None
        self.full: FullMethod | None = full[0] if full else None
        for mode in self.modes:
            k = multi_count(mode)
            if mode == "full" and self.full is None:
                raise ConfigError("bench.modes: mode 'full' needs a full fine-tuning method (kind: full) in methods; "
                                  f"the study has {[m.name for m in study.methods]}")
            if mode != "full" and self.lora is None:
                raise ConfigError(f"bench.modes: mode {mode!r} needs LoRA adapters but the study has no LoRA method "
                                  f"(kind: lora) in methods {[m.name for m in study.methods]}")
            if mode.startswith("multi-") and k > len(self.tasks):
                raise ConfigError(f"bench.modes: mode {mode!r} serves {k} task adapters at once but the study has "
                                  f"{len(self.tasks)} task(s) {self.tasks}; drop the mode or add tasks")
        labels = {GLUE_TASKS[t]["num_labels"] for t in self.adapter_tasks}
        if len(labels) > 1:
            raise ConfigError(f"bench: multi-adapter modes need tasks with one label count, got {sorted(labels)}")
        if backend == "vllm" and self.lora is not None:
            from lorascope.serving.vllm_backend import MAX_LORA_RANKS

            if self.lora.r > MAX_LORA_RANKS[-1]:
                raise ConfigError(f"methods.{self.lora.name}.r: {self.lora.r} exceeds vLLM's largest LoRA rank")
        self.max_length = max(study.task(t).max_length for t in self.tasks)

    @property
    def adapter_tasks(self) -> list[str]:
        """Tasks whose LoRA cells some mode serves (the first k tasks for the largest multi-k)."""
        k = max([multi_count(m) for m in self.modes if m != "full"], default=0)
        return self.tasks[:k]

    def tasks_of(self, mode: str) -> list[str]:
        return self.tasks[: multi_count(mode)] if mode.startswith("multi-") else [self.served_task]

    def mode_key(self, mode: str, regime: str) -> str:
        """The key of a mode's load/memory record: the mode itself in the first regime, `mode [regime]` in others."""
        return mode if regime == self.regimes[0] else f"{mode} [{regime}]"

    def orders(self, mode: str) -> list[str]:
        return ["rr", "random"] if mode.startswith("multi-") else ["single"]

    def cell(self, task: str, kind: str) -> str:
        method = self.full if kind == "full" else self.lora
        assert method is not None
        return f"{task}-{method.name}-s{self.seed}"

    def cells_of(self, mode: str) -> list[str]:
        if mode == "full":
            return [self.cell(self.served_task, "full")]
        return [self.cell(t, "lora") for t in self.tasks_of(mode)]

    @property
    def cells(self) -> list[str]:
        out: list[str] = []
        for mode in self.modes:
            out += [c for c in self.cells_of(mode) if c not in out]
        return out


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
def run(ctx: PhaseContext, index: int) -> None:
    backend = ctx.study.bench.backends[index]
    log = ctx.log.bind(backend=backend)
    if ctx.committed("bench", backend):
        log("already committed, skipping")
        return
    plan = BenchPlan(ctx.study, backend)
    check_backend(backend)
    ctx.require("stage", why="run the stage phase first")
    cells = {c: ctx.require("cells", c, why="the bench serves this cell; run the train phase for it first") for c in plan.cells}

    import torch

    threads = torch.get_num_threads()
    try:
        measure(ctx, plan, cells, log)
    finally:
        torch.set_num_threads(threads)  # the local runner may run later phases in this process


def measure(ctx: PhaseContext, plan: BenchPlan, cells: dict, log: Any) -> None:
    """Steps 2-6 of the recipe for one backend (the plan checked, the input bundles committed)."""
    import torch

    from lorascope import data, modeling
    from lorascope.serving import protocol, workload

    t_start = time.perf_counter()
    backend = plan.backend
    device = modeling.pick_device(ctx.env)
    configure_threads(ctx.env, device)
    dtype_name = resolve_dtype(ctx.study, device)
    dtype = getattr(torch, dtype_name)
    base_dir = modeling.base_model_dir(ctx)
    tokenizer = modeling.load_tokenizer(base_dir)
    pools = {
        t: workload.make_pool(t, data.encode(tokenizer, t, data.load_split(ctx, t, "validation"), ctx.study.task(t).max_length), plan.seed)
        for t in dict.fromkeys([plan.served_task, *plan.adapter_tasks])
    }
    settings = protocol.Settings(tuple(plan.batch_sizes), ctx.study.bench.warmup_batches, ctx.study.bench.requests,
                                 ctx.study.bench.repeats, plan.seed)
    cell_dirs = {c: ctx.local(b) for c, b in cells.items()}
    num_labels = GLUE_TASKS[plan.served_task]["num_labels"]
    work = ctx.scratch("bench", backend)
    log("plan", device=str(device), dtype=dtype_name, modes=",".join(plan.modes),
        batch_sizes=",".join(map(str, plan.batch_sizes)), cells=",".join(plan.cells))

    build = Build(plan, base_dir, cell_dirs, work, num_labels, dtype, dtype_name, device, ctx, log)
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

    correctness = check_correctness(build, runs, pools, dtype_name, cell_dirs)
    summary = summarize(ctx.study, plan, runs, modes, switches, correctness, settings, device, dtype_name,
                        time.perf_counter() - t_start, platform_name=build.platform, skipped=skipped)
    _commit(ctx, backend, runs, switches, summary)
    log("committed", seconds=round(time.perf_counter() - t_start, 1), h2=summary["h2"]["verdict"].replace(" ", "_"),
        multi_ok=(correctness["multi_vs_single"] or {}).get("ok"), merged_ok=(correctness["merged_vs_separate"] or {}).get("ok"),
        vs_hf_ok=(correctness.get("vllm_vs_hf") or {}).get("ok"))


def check_correctness(build: Build, runs: list, pools: dict, dtype_name: str, cell_dirs: dict[str, Path]) -> dict:
    """Every served request against the same request served alone by a single-adapter model (`Build.reference`):
    multi-adapter mixed batches, the merged model, and batching itself; plus agreement with the train phase's own
    validation predictions of each cell (informational)."""
    from lorascope.serving import protocol

    reference = build.reference(runs, pools) if any(r.mode != "full" for r in runs) else {}
    tol = PROB_TOLERANCE[dtype_name]

    def check(select) -> dict | None:
        chosen = [r for r in runs if select(r.mode)]
        return protocol.compare(chosen, reference, tol) if chosen else None

    out = {
        "dtype": dtype_name,
        "tolerance_prob": tol,
        "reference": "each request served alone (batch size 1) by a model holding only its task's adapter",
        "multi_vs_single": check(lambda m: m.startswith("multi-")),
        "merged_vs_separate": check(lambda m: m == "merged"),
        "separate_batched_vs_single": check(lambda m: m == "separate"),
        "vs_train_predictions": protocol.versus_training(runs, _train_predictions(cell_dirs),
                                                         lambda run, task: _cell_for(build.plan, run.mode, task)),
    }
    if build.plan.backend == "vllm":
        out["vllm_vs_hf"] = vllm_vs_hf(build, runs, tol)
    return out


def vllm_vs_hf(build: Build, runs: list, tol: float) -> dict:
    """Every request vLLM served, against the same request through HF transformers + PEFT in this process (each
    alone, batch size 1): adapter modes against base + that task's adapter, `merged` against the merged checkpoint,
    `full` against the full cell. One comparison per mode kind (all regimes), and `ok` for all of them."""
    from lorascope.serving import protocol

    groups = {"separate": lambda m: m == "separate", "multi": lambda m: m.startswith("multi-"),
              "merged": lambda m: m == "merged", "full": lambda m: m == "full"}  # fmt: skip
    refs = build.hf_reference(runs)
    out: dict[str, Any] = {"reference": "HF transformers + PEFT, each request alone, same dtype and device", "tolerance": tol}
    for name, select in groups.items():
        chosen = [r for r in runs if select(r.mode)]
        out[name] = protocol.compare(chosen, refs["full" if name == "full" else "merged" if name == "merged" else "adapters"],
                                     tol) if chosen else None  # fmt: skip
    done = [v for k, v in out.items() if k in groups and v]
    out["ok"] = bool(done) and all(v["ok"] for v in done)
    out["max_prob_diff"] = max((v["max_prob_diff"] for v in done), default=None)
    out["argmax_agreement"] = (1.0 - sum(v["argmax_mismatches"] for v in done) / sum(v["requests"] for v in done)) if done else None
    return out


def schedule(backend: str, modes: list[str], repeats: int) -> list[tuple[str, list[int]]]:
    """(mode, repeats to run on one load). hf: repeat-major, the mode reloaded for every repeat (repeat 1 of every
    mode, then repeat 2, ...), so a slow stretch of a shared machine spreads over all modes and load time gets a
    sample per repeat. vllm: one engine per mode running all its repeats (an engine start costs a minute of
    compilation and CUDA-graph capture, and vLLM does not promise to free everything when an engine is dropped)."""
    if backend == "hf":
        return [(mode, [r]) for r in range(repeats) for mode in modes]
    return [(mode, list(range(repeats))) for mode in modes]


def configure_threads(env: dict, device: Any) -> None:
    """`LORASCOPE_TORCH_THREADS` when set; otherwise one intra-op thread on CPU. The smoke model is far too small to
    gain from intra-op parallelism, and on a shared machine spinning OpenMP threads turn a 2 ms batch into a 50 ms
    one at random, which would time the neighbours instead of the model."""
    import torch

    from lorascope import training

    if env.get("LORASCOPE_TORCH_THREADS"):
        training.configure_torch(env)
    elif device.type == "cpu":
        torch.set_num_threads(1)


def resolve_dtype(study: Study, device: Any) -> str:
    """`bench.dtype`, where `auto` is the model's dtype on a GPU and float32 on CPU (half-precision matmuls on a
    CPU are emulated and would time the emulation)."""
    if study.bench.dtype != "auto":
        return study.bench.dtype
    return study.model.dtype if device.type == "cuda" else "float32"


class Build:
    """Opens a server for each mode of one backend, and the single-adapter reference for correctness."""

    def __init__(self, plan: BenchPlan, base_dir: Path, cell_dirs: dict[str, Path], work: Path, num_labels: int,
                 dtype: Any, dtype_name: str, device: Any, ctx: PhaseContext, log: Any) -> None:
        self.plan, self.base_dir, self.cell_dirs, self.work = plan, base_dir, cell_dirs, work
        self.num_labels, self.dtype, self.dtype_name, self.device = num_labels, dtype, dtype_name, device
        self.ctx, self.log = ctx, log
        self.merge_seconds: float | None = None
        self._seqcls_base: Path | None = None
        self._merged: Path | None = None
        self.platform = "torch" if plan.backend == "hf" else _vllm_platform()

    def possible(self):
        """(mode, regime) -> whether this backend can run the mode in that regime here (vLLM's CPU platform runs
        LoRA engines eagerly only)."""
        if self.plan.backend == "hf":
            return lambda mode, regime: regime == "eager"
        from lorascope.serving import vllm_backend

        return lambda mode, regime: vllm_backend.regime_possible(regime, 0 if mode in ("full", "merged") else 1, self.platform)

    def adapter(self, task: str) -> Path:
        return self.cell_dirs[self.plan.cell(task, "lora")] / "adapter"

    def merged_dir(self) -> Path:
        """The served task's LoRA cell merged into the base (built once per bench run)."""
        from lorascope.serving import hf_backend

        if self._merged is not None:
            return self._merged
        out = self.work / f"merged-{self.plan.cell(self.plan.served_task, 'lora')}"
        shutil.rmtree(out, ignore_errors=True)
        self.merge_seconds = hf_backend.merge_adapter(self.base_dir, self.adapter(self.plan.served_task), out,
                                                      self.num_labels, self.dtype, tokenizer_dir=self.base_dir, seed=self.plan.seed)
        self.log("merged", cell=self.plan.cell(self.plan.served_task, "lora"), seconds=round(self.merge_seconds, 3))
        self._merged = out
        return out

    def seqcls_base(self) -> Path:
        from lorascope.serving import hf_backend

        if self._seqcls_base is None:
            out = self.work / "base-seqcls"
            shutil.rmtree(out, ignore_errors=True)
            self._seqcls_base = hf_backend.save_seqcls_base(self.base_dir, out, self.num_labels, self.dtype, self.plan.seed)
        return self._seqcls_base

    def open(self, mode: str, regime: str = "eager"):
        adapters = {t: self.adapter(t) for t in self.plan.tasks_of(mode)} if mode != "full" else {}
        if mode == "full":
            model_dir = self.cell_dirs[self.plan.cell(self.plan.served_task, "full")] / "model"
        elif mode == "merged":
            model_dir = self.merged_dir()
        else:
            model_dir = None
        if self.plan.backend == "hf":
            from lorascope.serving import hf_backend

            if model_dir is not None:
                return hf_backend.open_plain(mode, model_dir, self.num_labels, self.dtype, self.device)
            return hf_backend.open_adapters(mode, self.base_dir, adapters, self.num_labels, self.dtype, self.device, self.plan.seed)
        return self._vllm(mode, model_dir, adapters if model_dir is None else {}, regime=regime)

    def _vllm(self, mode: str, model_dir: Path | None, adapters: dict[str, Path], slots: int | None = None,
              regime: str = "eager"):
        import torch

        from lorascope.serving import vllm_backend

        b = self.ctx.study.bench
        served = model_dir if model_dir is not None else self.seqcls_base()
        kw = vllm_backend.engine_kwargs(served, self.base_dir, self.dtype_name, b.kv_cache_memory_bytes, self.plan.max_length,
                                        self.plan.seed, adapters=slots if slots is not None else len(adapters),
                                        lora_rank=self.plan.lora.r if self.plan.lora else 8, regime=regime)  # fmt: skip
        weights = vllm_backend.weights_bytes(served, self.dtype_name)
        weights += sum(vllm_backend.weights_bytes(p, self.dtype_name) for p in adapters.values())
        return vllm_backend.VllmServer(mode, kw, adapters, weights, threads=torch.get_num_threads())

    def hf_reference(self, runs: list) -> dict[str, dict[tuple[str, int], Any]]:
        """HF logits of every request the runs served, each alone: {"adapters": base + its task's adapter,
        "merged": the merged checkpoint, "full": the full cell} (only the kinds some run needs)."""
        import numpy as np

        from lorascope.serving import hf_backend

        need: dict[str, dict[str, dict[int, Any]]] = {"adapters": {}, "merged": {}, "full": {}}
        for r in runs:
            kind = r.mode if r.mode in ("full", "merged") else "adapters"
            for batch in r.batches:
                for q in batch:
                    need[kind].setdefault(q.task, {})[q.idx] = q
        out: dict[str, dict[tuple[str, int], Any]] = {k: {} for k in need}
        for kind, by_task in need.items():
            for task, reqs in by_task.items():
                if kind == "adapters":
                    server = hf_backend.open_adapters("separate", self.base_dir, {task: self.adapter(task)}, self.num_labels,
                                                      self.dtype, self.device, self.plan.seed)  # fmt: skip
                else:
                    model_dir = self.merged_dir() if kind == "merged" else self.cell_dirs[self.plan.cell(task, "full")] / "model"
                    server = hf_backend.open_plain(kind, model_dir, self.num_labels, self.dtype, self.device)
                for idx, q in reqs.items():
                    out[kind][(task, idx)] = np.asarray(server.serve([q])[0], dtype=np.float64)
                server.close()
        self.log("hf reference", requests=sum(len(v) for v in out.values()))
        return out

    def reference(self, runs: list, pools: dict) -> dict[tuple[str, int], Any]:
        """Logits of every (task, idx) the adapter modes served, each request alone (batch size 1) through a model
        holding only its own task's adapter: a fresh base + adapter per task (hf), or an engine with one LoRA slot
        (vllm)."""
        import numpy as np

        wanted: dict[str, dict[int, Any]] = {}
        for r in runs:
            if r.mode == "full":
                continue
            for batch in r.batches:
                for q in batch:
                    wanted.setdefault(q.task, {})[q.idx] = q
        out: dict[tuple[str, int], Any] = {}
        if self.plan.backend == "hf":
            from lorascope.serving import hf_backend

            for task, reqs in wanted.items():
                server = hf_backend.open_adapters("separate", self.base_dir, {task: self.adapter(task)}, self.num_labels,
                                                  self.dtype, self.device, self.plan.seed)
                for idx, q in reqs.items():
                    out[(task, idx)] = np.asarray(server.serve([q])[0], dtype=np.float64)
                server.close()
        else:
            adapters = {t: self.adapter(t) for t in wanted}
            server = self._vllm("multi-reference", None, adapters, slots=1)  # per-request LoRA, one slot
            for _task, reqs in wanted.items():
                for idx, q in reqs.items():
                    out[(q.task, idx)] = np.asarray(server.serve([q])[0], dtype=np.float64)
            server.close()
        self.log("reference", requests=len(out))
        return out


def _vllm_platform() -> str:
    from lorascope.serving import vllm_backend

    return vllm_backend.platform_kind()


def _cell_for(plan: BenchPlan, mode: str, task: str) -> str | None:
    if mode == "full":
        return plan.cell(task, "full") if plan.full else None
    return plan.cell(task, "lora") if plan.lora else None


def _train_predictions(cell_dirs: dict[str, Path]) -> dict[str, dict[int, dict]]:
    out: dict[str, dict[int, dict]] = {}
    for cell, d in cell_dirs.items():
        p = d / "predictions.jsonl"
        if p.is_file():
            out[cell] = {int(row["idx"]): row for row in map(json.loads, p.read_text().splitlines()) if row}
    return out


# ------------------------------------------------------------------------------------------------ summary
def regime_overheads(configs: list[dict], plan: BenchPlan, regime: str) -> dict[str, Any]:
    """Overheads between modes timed in one execution regime (never across regimes), by `verdicts.overheads`."""
    from lorascope.analysis import verdicts

    def is_(mode: str, order: str | None = None):
        return lambda c: c["regime"] == regime and c["mode"] == mode and (order is None or c["order"] == order)

    overhead: dict[str, Any] = {"separate_vs_merged": verdicts.overheads(configs, is_("separate"), is_("merged")),
                                "full_vs_merged": verdicts.overheads(configs, is_("full"), is_("merged"))}
    for mode in plan.modes:
        if mode.startswith("multi-"):
            for order in plan.orders(mode):
                overhead[f"{mode}/{order}_vs_separate"] = verdicts.overheads(configs, is_(mode, order), is_("separate"))
                overhead[f"{mode}/{order}_vs_merged"] = verdicts.overheads(configs, is_(mode, order), is_("merged"))
    return overhead


def summarize(study: Study, plan: BenchPlan, runs: list, modes: dict, switches: dict, correctness: dict,
              settings: Any, device: Any, dtype_name: str, seconds: float, platform_name: str = "torch",
              skipped: list[str] | None = None) -> dict:
    from lorascope.analysis import verdicts
    from lorascope.serving import hf_backend, protocol, timing

    conf = settings.confidence
    configs = [protocol.config_summary(r, conf) for r in runs]
    for c in configs:  # intervals of positive quantities on the log scale (analysis.verdicts), never below 0
        c["mean_batch_ms_ci"] = verdicts.positive_interval(c["mean_batch_ms_per_repeat"], conf)
        c["throughput_rps"] = verdicts.positive_interval([c["timed_requests"] / (b * c["timed_batches"] / 1e3)
                                                          for b in c["mean_batch_ms_per_repeat"]], conf)  # fmt: skip
    for sw in switches.values():
        sw["latency_ms"] = timing.latency_stats(sw["seconds"])
    by_regime = {r: regime_overheads(configs, plan, r) for r in plan.regimes}
    # `overhead`: the first listed regime in which separate and merged were both timed (all regimes: overhead_by_regime)
    primary = next((r for r in plan.regimes if by_regime[r]["separate_vs_merged"]), plan.regimes[0])
    overhead = by_regime[primary]
    import torch

    if plan.backend == "vllm":
        from lorascope.serving import vllm_backend

        versions = vllm_backend.versions()
    else:
        versions = hf_backend.versions()
    return {
        "backend": plan.backend,
        "study": study.name,
        "study_hash": study.hash,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "platform": platform_name,
        "regimes": plan.regimes,
        "regime_primary": primary,
        "regimes_skipped": skipped or [],
        "versions": versions,
        "gpu_memory": "measured (torch.cuda.max_memory_allocated)" if device.type == "cuda" else "n/a on CPU: see weights_bytes and rss_bytes",
        "protocol": {
            "served_task": plan.served_task, "tasks": plan.tasks, "adapter_tasks": plan.adapter_tasks, "seed": plan.seed,
            "modes": plan.modes, "batch_sizes": plan.batch_sizes, "warmup_batches": settings.warmup_batches,
            "requests": settings.requests, "repeats": settings.repeats, "confidence": conf,
            "orders": {m: plan.orders(m) for m in plan.modes},
            "clock": "time.perf_counter_ns between synchronized reads (cuda synchronize on GPU)",
            "timed_region": "pad token ids, copy to device, forward, logits back to host",
            "multi_adapter_batching": "mixed batches: one adapter per row (PEFT adapter_names / vLLM per-prompt LoRARequest)",
        },  # fmt: skip
        "modes": modes,
        "configs": configs,
        "switch": {k: {"latency_ms": v["latency_ms"], "what": "PEFT set_adapter to another task's adapter"}
                   for k, v in switches.items()},  # fmt: skip
        "overhead": overhead,
        "overhead_by_regime": by_regime,
        # the rule drift and report use: every (regime, batch size) of this backend is a part of H2
        "h2": verdicts.h2_summary(configs, study.hypotheses.h2_max_overhead_pct),
        "correctness": correctness,
        "seconds": seconds,
    }


def summary_markdown(s: dict) -> str:
    def f(x: Any, nd: int = 3) -> str:
        return "n/a" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)

    def mb(x: Any) -> str:
        return "n/a" if x is None else f"{x / 2**20:.1f}"

    lines = [f"# bench: backend `{s['backend']}` on {s['device']} ({s['device_name']}), {s['dtype']}", "",
             f"Study `{s['study']}` ({s['study_hash']}); served task `{s['protocol']['served_task']}`, cells of seed "
             f"{s['protocol']['seed']}; {s['protocol']['requests']} timed requests per configuration and repeat, "
             f"{s['protocol']['warmup_batches']} warm-up batches, {s['protocol']['repeats']} repeats, "
             f"{int(100 * s['protocol']['confidence'])}% t-intervals over repeat means. GPU memory: {s['gpu_memory']}. "
             f"Platform `{s.get('platform', 'n/a')}`; execution regimes {', '.join(s.get('regimes', ['eager']))} (every "
             f"overhead compares modes of one regime; H2 takes every regime in which separate and merged were both timed). "
             f"Total {s['seconds']:.1f} s.", ""]
    if s.get("regimes_skipped"):
        lines += [f"Not possible on this platform, so not timed: {', '.join(s['regimes_skipped'])}.", ""]
    lines += ["## Latency and throughput", "",
              "| regime | mode | order | batch | batch ms mean [CI] | p50 | p95 | p99 | ms/request | req/s [CI] | tokens/s | harness ms (% of mean) | GPU peak MiB |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---|---:|"]  # fmt: skip
    for c in s["configs"]:
        lb, ci, rps = c["latency_batch_ms"], c["mean_batch_ms_ci"], c["throughput_rps"]
        lines.append(
            f"| {c.get('regime', 'eager')} | {c['mode']} | {c['order']} | {c['batch_size']} | {f(lb['mean'])} [{f(ci['low'])}, {f(ci['high'])}] | "
            f"{f(lb['p50'])} | {f(lb['p95'])} | {f(lb['p99'])} | {f(c['latency_request_ms']['mean'])} | "
            f"{f(rps['mean'], 1)} [{f(rps['low'], 1)}, {f(rps['high'], 1)}] | {f(c['throughput_tokens_per_s']['mean'], 0)} | "
            f"{f(c['harness_overhead_ms']['mean'], 4)} ({f(c['harness_overhead_pct_of_mean'], 2)}%) | {mb(c['gpu_peak_allocated_bytes'])} |")
    lines += ["", "## Overhead against merged (H2: separate vs merged), within one regime", "",
              "| regime | comparison | " + " | ".join(f"batch {b}" for b in s["protocol"]["batch_sizes"]) + " |",
              "|---|---|" + "---|" * len(s["protocol"]["batch_sizes"])]
    for regime, overhead in (s.get("overhead_by_regime") or {"eager": s["overhead"]}).items():
        for name, by_bs in overhead.items():
            if not by_bs:
                continue
            cells = []
            for b in s["protocol"]["batch_sizes"]:
                o = by_bs.get(str(b))
                cells.append("" if o is None else f"{o['pct']:+.1f}% [{f(o['lo'], 1)}, {f(o['hi'], 1)}]")
            lines.append(f"| {regime} | {name} | " + " | ".join(cells) + " |")
    h2 = s["h2"]
    lines += ["", "Overheads: geometric mean over repeats of separate/merged (paired by repeat) - 1, [95% interval: "
              "one-sided 97.5% t bounds on the log scale].", "",
              f"H2 (separate <= {h2['limit_pct']:g}% over merged at every batch size, in every regime timed): "
              f"**{h2['verdict']}** (largest overhead {f(h2['max_overhead_pct'], 1)}%). Rule: {h2['rule']}.", ""]
    lines += [f"- {k}: {v['verdict']}: {v['evidence']}" for k, v in h2["by"].items()]
    lines += ["", "## Load time and memory", "",
              "| mode | cells | load s (mean of repeats) | weights MiB | GPU after load MiB | RSS after load MiB | KV cache MiB |",
              "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for mode, m in s["modes"].items():
        extra = f" (+ merge {m['merge_seconds']:.2f} s)" if m.get("merge_seconds") is not None else ""
        lines.append(f"| {mode} | {', '.join(m['cells'])} | {m['load_seconds']:.3f}{extra} | {mb(m['weights_bytes'])} | "
                     f"{mb(m.get('gpu_allocated_after_load_bytes'))} | {mb(m.get('rss_after_load_bytes'))} | "
                     f"{mb(m.get('kv_cache_memory_bytes'))} |")
    if s["switch"]:
        lines += ["", "## Adapter switching (on its own)", "", "| multi mode / order | switches | mean ms | p50 | p95 | p99 |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, v in s["switch"].items():
            st = v["latency_ms"]
            lines.append(f"| {k} | {st['n']} | {f(st['mean'], 4)} | {f(st['p50'], 4)} | {f(st['p95'], 4)} | {f(st['p99'], 4)} |")
    for mode, m in s["modes"].items():
        if m.get("adapter_first_use"):
            reps = m["adapter_first_use"]
            lines += ["", f"Adapter first use ({mode}, mean of {len(reps)} loads): " + "; ".join(
                f"{t}: cold {sum(r[t]['cold_ms'] for r in reps) / len(reps):.2f} ms, "
                f"warm {sum(r[t]['warm_ms'] for r in reps) / len(reps):.2f} ms" for t in reps[0])]
    c = s["correctness"]
    lines += ["", f"## Correctness ({c['dtype']}, probability tolerance {c['tolerance_prob']})", "",
              f"Reference: {c['reference']}.", "",
              "| check | requests | argmax mismatches | ties within tol. | max prob diff | max logit diff | ok |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for name in ("multi_vs_single", "merged_vs_separate", "separate_batched_vs_single"):
        r = c.get(name)
        if r:
            lines.append(f"| {name} | {r['requests']} | {r['argmax_mismatches']} | {r['argmax_ties_within_tolerance']} | "
                         f"{r['max_prob_diff']:.2e} | {r['max_logit_diff']:.2e} | {r['ok']} |")
    vh = c.get("vllm_vs_hf")
    if vh:
        lines += ["", f"vLLM against HF ({vh['reference']}): **{'ok' if vh['ok'] else 'NOT ok'}**", "",
                  "| modes | requests | argmax mismatches | max prob diff | max logit diff | ok |", "|---|---:|---:|---:|---:|---|"]
        for name in ("separate", "multi", "merged", "full"):
            r = vh.get(name)
            if r:
                lines.append(f"| {name} | {r['requests']} | {r['argmax_mismatches']} | {r['max_prob_diff']:.2e} | "
                             f"{r['max_logit_diff']:.2e} | {r['ok']} |")
    vt = c.get("vs_train_predictions") or {}
    if vt.get("requests"):
        lines += ["", f"Against the train phase's predictions.jsonl: {vt['requests']} requests, argmax agreement "
                  f"{vt['argmax_agreement']:.4f}, max prob diff {vt['max_prob_diff']:.2e}."]
    return "\n".join(lines) + "\n"


def _commit(ctx: PhaseContext, backend: str, runs: list, switches: dict, summary: dict) -> None:
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
        w.add_bytes("summary.md", summary_markdown(summary).encode())


PHASE = Phase(
    name="bench",
    size=lambda study: len(study.bench.backends),
    bundles=lambda study: [f"bench/{b}" for b in study.bench.backends],
    run=run,
    unit=lambda study, i: study.bench.backends[i],
    gpu=True,
    description="serving latency, throughput and memory: full vs merged vs separate vs multi-adapter (H2)",
    interpreter=interpreter,
)
