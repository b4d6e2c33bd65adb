"""The `vllm` backend: vLLM 0.32's pooling runner, in this process.

    LLM(model, runner="pooling", convert="classify", enable_lora=True, max_loras=<adapters>, max_lora_rank=8,
        kv_cache_memory_bytes=<study>, ...)
    llm.classify([TokensPrompt(prompt_token_ids=ids), ...], lora_request=[LoRARequest(task, id, path), ...],
                 pooling_params=PoolingParams(use_activation=False))

* Models. `full` serves a full fine-tuned cell's model/ and `merged` the merged checkpoint, both without LoRA.
  `separate` and `multi-k` serve the base saved as a sequence-classification checkpoint with a `score` head
  (`hf_backend.save_seqcls_base`), so vLLM loads every weight strictly; each adapter carries its own score head
  (PEFT `modules_to_save`, which vLLM 0.32 loads as the adapter's classification head).
* Inputs are token ids (`TokensPrompt`), the exact ids training used (`BOS s1 EOS s2`); vLLM pools the last token of
  each prompt, which is the last attended token the HF classifier reads.
* Per-request adapters. `lora_request` is a list, one LoRARequest per prompt; vLLM batches prompts of different
  adapters together (punica kernels), the same contract as the hf backend's `adapter_names`.
* Memory is bounded by a fixed `kv_cache_memory_bytes`, so GPU figures compare across modes. The engine runs in this
  process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so `torch.cuda.max_memory_allocated` sees its allocations.
  Prefix caching is off: the benchmark repeats identical requests and must not time cache hits.
* Switching: all adapters of a mode stay resident (`max_loras` = adapters), so there is no per-batch switch; what an
  adapter costs on first use (loading it from disk into a GPU slot) is measured on its own (`first_use`).

`engine_kwargs` and `weights_bytes` import nothing from vLLM, so the study -> engine mapping is testable anywhere.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lorascope.serving.workload import Request

BACKEND = "vllm"
VLLM_VERSION = "0.32.0"
# vLLM's LoRAConfig.max_lora_rank accepts only these values (vllm/config/lora.py MaxLoRARanks)
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def available() -> str | None:
    """None when the backend can run here, else the reason it cannot (checked before anything loads)."""
    if importlib.util.find_spec("vllm") is None:
        return (f"the vllm backend needs vllm=={VLLM_VERSION}, which is not installed in this environment "
                "(pip install -r requirements-vllm.txt in its own virtualenv, or use the bench image)")
    import torch

    if not torch.cuda.is_available():
        return "the vllm backend needs a CUDA GPU and none is visible (vLLM's engine does not run on this machine's CPU)"
    return None


def lora_rank_slot(r: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds rank r (8 for the study's rank-8 adapters)."""
    for slot in MAX_LORA_RANKS:
        if slot >= r:
            return slot
    raise ValueError(f"LoRA rank {r} exceeds vLLM's largest max_lora_rank {MAX_LORA_RANKS[-1]}")


def engine_kwargs(model_dir: str | Path, tokenizer_dir: str | Path, dtype: str, kv_cache_memory_bytes: int,
                  max_model_len: int, seed: int, adapters: int = 0, lora_rank: int = 8,
                  max_num_seqs: int | None = None) -> dict[str, Any]:
    """Arguments for `vllm.LLM(**kw)` and `vllm.EngineArgs(**kw)` for one mode: `adapters` LoRA slots (0 = no LoRA)."""
    kw: dict[str, Any] = {
        "model": str(model_dir),
        "tokenizer": str(tokenizer_dir),
        "runner": "pooling",
        "convert": "classify",
        "dtype": dtype,
        "kv_cache_memory_bytes": int(kv_cache_memory_bytes),
        "max_model_len": int(max_model_len),
        "seed": int(seed),
        "enable_prefix_caching": False,
    }
    if max_num_seqs is not None:
        kw["max_num_seqs"] = int(max_num_seqs)
    if adapters:
        kw.update({"enable_lora": True, "max_loras": int(adapters), "max_lora_rank": lora_rank_slot(lora_rank)})
    return kw


def weights_bytes(model_dir: Path, dtype: str) -> int:
    """Bytes the checkpoint's tensors take in `dtype` (from the safetensors headers; nothing is loaded)."""
    from lorascope import tensorio

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        for k, v in tensorio.header(f).items():
            if k == "__metadata__":
                continue
            numel = int(np.prod(v["shape"])) if v["shape"] else 1
            total += numel * DTYPE_BYTES[dtype]
    return total


class VllmServer:
    backend = BACKEND

    def __init__(self, mode: str, kwargs: Mapping[str, Any], adapters: Mapping[str, Path], weights: int) -> None:
        import torch

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: its memory is measurable
        from vllm import LLM, PoolingParams
        from vllm.lora.request import LoRARequest

        self.mode = mode
        self.tasks = list(adapters)
        self.kwargs = dict(kwargs)
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        self.llm = LLM(**self.kwargs)
        torch.cuda.synchronize()
        self.load_seconds = time.perf_counter() - t0
        self.lora = {t: LoRARequest(lora_name=t, lora_int_id=i + 1, lora_path=str(p)) for i, (t, p) in enumerate(adapters.items())}
        self.params = PoolingParams(use_activation=False)  # raw logits, like the hf backend
        self._memory = {
            "weights_bytes": weights,
            "weights_bytes_what": "checkpoint tensors (+ adapters) in the serving dtype, from safetensors headers",
            "gpu_allocated_after_load_bytes": int(torch.cuda.memory_allocated()),
            "gpu_peak_during_load_bytes": int(torch.cuda.max_memory_allocated()),
            "kv_cache_memory_bytes": int(self.kwargs["kv_cache_memory_bytes"]),
        }

    def _lora_for(self, batch: list[Request]):
        if not self.lora:
            return None
        if self.mode.startswith("multi-"):
            return [self.lora[q.task] for q in batch]
        return self.lora[self.tasks[0]]

    def serve(self, batch: list[Request]) -> np.ndarray:
        from vllm import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(q.input_ids)) for q in batch]
        outs = self.llm.classify(prompts, pooling_params=self.params, use_tqdm=False, lora_request=self._lora_for(batch))
        return np.asarray([o.outputs.probs for o in outs], dtype=np.float32)

    def first_use(self, pools: Mapping[str, list[Request]]) -> dict[str, dict[str, float]]:
        """Per adapter: latency of its first request (the adapter is loaded from disk into a GPU slot) and of the same
        request again (resident). Run before any warm-up so the first call is cold."""
        from vllm import TokensPrompt

        out = {}
        for task in self.tasks:
            q = pools[task][0]
            times = []
            for _ in range(2):
                self.sync()
                t0 = time.perf_counter()
                self.llm.classify([TokensPrompt(prompt_token_ids=list(q.input_ids))], pooling_params=self.params, use_tqdm=False,
                                  lora_request=self.lora[task])
                self.sync()
                times.append(time.perf_counter() - t0)
            out[task] = {"cold_ms": 1e3 * times[0], "warm_ms": 1e3 * times[1], "load_ms": 1e3 * (times[0] - times[1])}
        return out

    def switch(self, task: str) -> None:
        raise NotImplementedError("vLLM keeps every adapter resident; see first_use")

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize()

    def memory(self) -> dict:
        return dict(self._memory)

    def reset_peak(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> dict:
        import torch

        from lorascope.serving.hf_backend import process_rss_bytes

        return {"gpu_peak_allocated_bytes": int(torch.cuda.max_memory_allocated()), "rss_bytes": process_rss_bytes()}

    def close(self) -> None:
        import torch

        del self.llm
        gc.collect()
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
        except Exception:  # best effort: a failed cleanup must not lose the measurements taken
            pass
        torch.cuda.empty_cache()


def versions() -> dict[str, str]:
    import torch
    import vllm

    return {"torch": torch.__version__, "vllm": vllm.__version__}
