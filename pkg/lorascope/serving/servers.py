"""What the bench serves, built from the committed cells: a server for each (mode, regime) of one backend (`Build`),
the single-adapter reference every served request is checked against, and the correctness checks themselves
(`check_correctness`: multi-adapter, merged and batched requests against the reference; vLLM against HF). The
bench phase (phases/bench.py) runs the protocol on these servers; this module holds no timing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorascope.serving import PROB_TOLERANCE, protocol
from lorascope.serving.plan import BenchPlan


@dataclass(kw_only=True)
class Build:
    """Opens a server for each mode of one backend, and the single-adapter reference for correctness.

    What it builds once per bench run and reuses: the served task's LoRA cell merged into the base (`merged_dir`) and,
    for vLLM, the base saved as a sequence-classification checkpoint (`seqcls_base`), both under `work`."""

    plan: BenchPlan
    base_dir: Path  # the staged base model
    cell_dirs: dict[str, Path]  # cell name -> its local bundle folder
    work: Path  # scratch folder for the merged and seqcls checkpoints
    num_labels: int
    dtype: Any  # torch dtype of the served weights
    dtype_name: str
    device: Any  # torch device (hf backend)
    kv_cache_bytes: int  # vLLM's KV cache size
    log: Any
    merge_seconds: float | None = field(default=None, init=False)
    platform: str = field(default="", init=False)  # "torch" (hf), or vLLM's platform kind
    _seqcls_base: Path | None = field(default=None, init=False, repr=False)
    _merged: Path | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.platform = "torch" if self.plan.backend == "hf" else _vllm_platform()

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

        served = model_dir if model_dir is not None else self.seqcls_base()
        kw = vllm_backend.engine_kwargs(served, self.base_dir, self.dtype_name, self.kv_cache_bytes, self.plan.max_length,
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


def check_correctness(build: Build, runs: list, pools: dict, dtype_name: str, cell_dirs: dict[str, Path]) -> dict:
    """Every served request against the same request served alone by a single-adapter model (`Build.reference`):
    multi-adapter mixed batches, the merged model, and batching itself; plus agreement with the train phase's own
    validation predictions of each cell (informational)."""
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
        # a mode timed in two regimes (vLLM compiled and eager) answers every request the same in both
        "regime_vs_eager": protocol.regimes_agree(runs, tol),
        "vs_train_predictions": protocol.versus_training(runs, _train_predictions(cell_dirs),
                                                         lambda run, task: _cell_for(build.plan, run.mode, task)),
    }
    if build.plan.backend == "vllm":
        out["vllm_vs_hf"] = vllm_vs_hf(build, runs, tol)
    return out


def vllm_vs_hf(build: Build, runs: list, tol: float) -> dict:
    """Every request vLLM served, against the same request through HF transformers + PEFT in this process (each
    alone, batch size 1): adapter modes against base + that task's adapter, `merged` against the merged checkpoint,
    `full` against the full cell. One comparison per mode kind (all regimes), `by_regime` the same per execution
    regime where several were timed, and `ok` for all of them."""
    groups = {"separate": lambda m: m == "separate", "multi": lambda m: m.startswith("multi-"),
              "merged": lambda m: m == "merged", "full": lambda m: m == "full"}  # fmt: skip
    refs = build.hf_reference(runs)
    ref_of = {"separate": refs["adapters"], "multi": refs["adapters"], "merged": refs["merged"], "full": refs["full"]}

    def by_kind(chosen: list) -> dict[str, Any]:
        return {name: protocol.compare(sel, ref_of[name], tol) if (sel := [r for r in chosen if select(r.mode)]) else None
                for name, select in groups.items()}  # fmt: skip

    out: dict[str, Any] = {"reference": "HF transformers + PEFT, each request alone, same dtype and device", "tolerance": tol,
                           **by_kind(runs)}  # fmt: skip
    regimes = list(dict.fromkeys(r.regime for r in runs))
    if len(regimes) > 1:
        out["by_regime"] = {rg: {k: v for k, v in by_kind([r for r in runs if r.regime == rg]).items() if v} for rg in regimes}
    done = [v for k, v in out.items() if k in groups and v]
    out["ok"] = bool(done) and all(v["ok"] for v in done)
    out["max_prob_diff"] = max((v["max_prob_diff"] for v in done), default=None)
    out["argmax_agreement"] = (1.0 - sum(v["argmax_mismatches"] for v in done) / sum(v["requests"] for v in done)) if done else None
    return out
