"""The generation serving bench (issue 24): output tokens per second, time to first token (TTFT), time per output
token (TPOT) and end-to-end latency of a causal LM served as full fine-tuned, merged, separate adapter and many
adapters, offline (batches of 1-16) and online (vLLM's OpenAI-compatible server under Poisson load), in vLLM and HF.

It knows nothing of how the cells were trained: it takes a base model folder, LoRA adapter folders (PEFT, task type
CAUSAL_LM), a full fine-tuned model folder, prompts as token ids, and `GenerationSettings` (`run_bench`).

  mode        what is loaded                                        a request is answered by
  ----------  ----------------------------------------------------  --------------------------------------------
  full        the full fine-tuned model                             the plain model
  merged      the first adapter merged into the base (PEFT           the plain model
              merge_and_unload, saved, reloaded as a plain model)
  separate    base + adapters                                       the first adapter, on every request
  multi-k     base + k adapters (synthetic ones beyond the trained)  each request by its own adapter, k adapters
                                                                    mixed in one batch (round-robin or random)

Modules: `workload` (prompts, batches, online adapter mixes), `adapters` (seeded synthetic adapters), `hf` (transformers
+ PEFT generate), `vllm_offline` (`LLM.generate`), `online` (the server and vLLM's serving benchmark), `summary`
(statistics, H2, correctness; no torch), `bench` (the protocol: `run_bench`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

MODE_PATTERN = re.compile(r"^(full|merged|separate|multi-([2-9]|[1-9]\d+))$")
ONLINE_MODES = ("separate", "merged", "full")  # `separate` online: one LoRA server, 1..N adapters per point


def adapter_count(mode: str) -> int:
    """Adapters a mode serves at once: multi-k -> k, separate/merged -> 1, full -> 0."""
    if not MODE_PATTERN.match(mode):
        raise ValueError(f"generation bench mode {mode!r}: expected full, merged, separate or multi-<k> (k >= 2)")
    if mode.startswith("multi-"):
        return int(mode.split("-", 1)[1])
    return 0 if mode == "full" else 1


@dataclass(frozen=True)
class OnlineSettings:
    """The online mode: one vLLM OpenAI-compatible server per served model, driven by vLLM's serving benchmark."""

    modes: tuple[str, ...] = ONLINE_MODES
    request_rates: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)  # requests per second, Poisson arrivals
    adapter_counts: tuple[int, ...] = (1, 2, 4, 8)  # LoRA server: requests spread over the first k adapters
    popularity: tuple[str, ...] = ("uniform", "zipf")
    zipf_exponent: float = 1.0
    requests: int = 64  # per point (mode, adapters, popularity, rate) and repeat
    repeats: int = 3
    warmup_requests: int = 2
    max_concurrency: int | None = None
    ready_timeout_s: float = 600.0


@dataclass(frozen=True)
class GenerationSettings:
    modes: tuple[str, ...] = ("full", "merged", "separate", "multi-2", "multi-4")
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    prompt_tokens: int = 64
    output_tokens: int = 64
    requests: int = 32  # timed requests per configuration and repeat
    warmup_batches: int = 2
    repeats: int = 3
    seed: int = 42
    dtype: str = "float32"
    kv_cache_memory_bytes: int = 2 * 1024**3
    regimes: tuple[str, ...] = ("eager",)  # vLLM execution regimes (hf: eager)
    h2_max_overhead_pct: float = 30.0
    confidence: float = 0.95
    threads: int | None = None  # torch threads of the engine (CPU); None: the process's current count
    online: OnlineSettings | None = field(default_factory=OnlineSettings)

    def __post_init__(self) -> None:
        for mode in self.modes:
            adapter_count(mode)
        if self.output_tokens < 2:
            raise ValueError(f"output_tokens must be >= 2: TPOT is (E2E - TTFT) / (output tokens - 1) (got {self.output_tokens})")
        if min(self.batch_sizes, default=0) < 1:
            raise ValueError(f"batch sizes must be >= 1 (got {list(self.batch_sizes)})")

    def adapters_needed(self, online: bool = True) -> int:
        """Adapters the offline modes and (with `online`) the online LoRA server need (synthetic ones fill up beyond
        the trained)."""
        counts = [adapter_count(m) for m in self.modes]
        if online and self.online is not None and "separate" in self.online.modes:
            counts += list(self.online.adapter_counts)
        return max(counts, default=0)


@dataclass(frozen=True)
class GenerationInputs:
    """What the bench serves. `adapters`: name -> PEFT adapter folder, in order; the first is the served adapter
    (separate, merged). `full_dir`: the full fine-tuned model (mode `full`). `prompts`: token ids (any lengths; the
    bench makes them `prompt_tokens` long)."""

    base_dir: Path
    adapters: dict[str, Path]
    full_dir: Path | None
    prompts: list[list[int]]
    synthetic: frozenset[str] = frozenset()  # names of synthetic adapters among `adapters`

    @property
    def served(self) -> str:
        return next(iter(self.adapters))


def settings_from(bench: object, h2_max_overhead_pct: float, dtype: str, threads: int | None = None) -> GenerationSettings:
    """GenerationSettings from a study's `bench` section (`study.BenchConfig`: its `generation` knobs and the bench's
    seed, KV-cache size and vLLM regimes) and the resolved dtype."""
    g = bench.generation  # type: ignore[attr-defined]
    o = g.online
    online = None if not o.enabled else OnlineSettings(
        modes=tuple(o.modes), request_rates=tuple(float(r) for r in o.request_rates), adapter_counts=tuple(o.adapter_counts),
        popularity=tuple(o.popularity), zipf_exponent=float(o.zipf_exponent), requests=o.requests, repeats=o.repeats,
        warmup_requests=o.warmup_requests, max_concurrency=o.max_concurrency)  # fmt: skip
    return GenerationSettings(modes=tuple(g.modes), batch_sizes=tuple(g.batch_sizes), prompt_tokens=g.prompt_tokens,
                              output_tokens=g.output_tokens, requests=g.requests, warmup_batches=g.warmup_batches,
                              repeats=g.repeats, seed=bench.seed, dtype=dtype,  # type: ignore[attr-defined]
                              kv_cache_memory_bytes=bench.kv_cache_memory_bytes,  # type: ignore[attr-defined]
                              regimes=tuple(bench.vllm_regimes), h2_max_overhead_pct=h2_max_overhead_pct,  # type: ignore[attr-defined]
                              threads=threads, online=online)  # fmt: skip
