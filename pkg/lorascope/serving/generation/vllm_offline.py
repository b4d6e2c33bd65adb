"""Offline generation with vLLM 0.32 (`LLM.generate`), in this process, on the classification bench's engine wrapper
(`serving.vllm_backend.VllmServer`: threads, memory, regime checks, teardown), with the generate runner:

    LLM(model, runner="generate", enable_lora=True, max_loras=<adapters>, max_lora_rank=8, disable_log_stats=False,
        kv_cache_memory_bytes=<study>, enable_prefix_caching=False, ...)
    llm.generate([TokensPrompt(prompt_token_ids=ids), ...],
                 SamplingParams(temperature=0, max_tokens=<output_tokens>, ignore_eos=True),
                 lora_request=[LoRARequest(name, id, path), ...])

* One LoRA engine serves `separate` and every `multi-k` (max_loras = the most adapters a mode mixes, all resident:
  no adapter is swapped out during a run); `merged` and `full` get a plain engine each.
* Timing per request comes from the engine itself: with `disable_log_stats=False`, vLLM 0.32 fills
  `RequestOutput.metrics` (`vllm.v1.metrics.stats.RequestStateStats`). TTFT = `first_token_latency` (frontend wall
  clock from the request's arrival in `generate` to the iteration that produced its first token); TPOT =
  (`last_token_ts` - `first_token_ts`) / (`num_generation_tokens` - 1) (engine-core timestamps of the first and the
  last token: the same definition as vLLM's serving benchmark, without network); E2E = TTFT + (`last_token_ts` -
  `first_token_ts`). The bench's own clock times the whole `generate` call (the batch), from which output tokens/s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.serving import vllm_backend
from lorascope.serving.workload import Request


def engine_kwargs(model_dir: str | Path, tokenizer_dir: str | Path, dtype: str, kv_cache_memory_bytes: int,
                  max_model_len: int, seed: int, adapters: int = 0, lora_rank: int = 8, max_num_seqs: int | None = None,
                  regime: str = "eager") -> dict[str, Any]:
    """`vllm_backend.engine_kwargs` for the generate runner, with per-request stats on (`RequestOutput.metrics`)."""
    kw = vllm_backend.engine_kwargs(model_dir, tokenizer_dir, dtype, kv_cache_memory_bytes, max_model_len, seed,
                                    adapters=adapters, lora_rank=lora_rank, max_num_seqs=max_num_seqs, regime=regime)  # fmt: skip
    kw.pop("convert")
    kw["runner"] = "generate"
    kw["disable_log_stats"] = False  # RequestOutput.metrics is None without it
    return kw


def adapter_rank(adapter_dir: Path) -> int:
    import json

    return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["r"])


class VllmGenerator(vllm_backend.VllmServer):
    """An in-process generate engine; `use(mode)` picks how its next batches are served (`separate` / `multi-k` on the
    LoRA engine)."""

    def __init__(self, kind: str, kwargs: Mapping[str, Any], adapters: Mapping[str, Path], weights: int, output_tokens: int,
                 threads: int | None = None) -> None:
        from vllm import SamplingParams

        super().__init__(kind if kind != "adapters" else "separate", kwargs, adapters, weights, threads=threads)
        self.kind = kind
        self.output_tokens = int(output_tokens)
        self.sampling = SamplingParams(temperature=0.0, max_tokens=self.output_tokens, ignore_eos=True)
        self._memory.update({"max_loras": int(self.kwargs.get("max_loras", 0)),
                             "max_num_batched_tokens": int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens),
                             "max_num_seqs": int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)})  # fmt: skip

    def use(self, mode: str) -> None:
        if self.kind != "adapters" and mode != self.kind:
            raise ValueError(f"a {self.kind} engine cannot serve mode {mode!r}")
        self.mode = mode

    def generate(self, batch: list[Request]) -> dict:
        from vllm import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(q.input_ids)) for q in batch]
        outs = self.llm.generate(prompts, self.sampling, use_tqdm=False, lora_request=self._lora_for(batch))
        res: dict[str, list] = {"tokens": [], "ttft": [], "tpot": [], "e2e": [], "output_tokens": []}
        for o in outs:
            m = o.metrics
            if m is None:
                raise RuntimeError("vLLM returned no RequestOutput.metrics: the engine needs disable_log_stats=False")
            decode = m.last_token_ts - m.first_token_ts
            n = int(m.num_generation_tokens)
            res["tokens"].append(list(o.outputs[0].token_ids))
            res["ttft"].append(float(m.first_token_latency))
            res["tpot"].append(decode / (n - 1) if n > 1 else 0.0)
            res["e2e"].append(float(m.first_token_latency) + decode)
            res["output_tokens"].append(len(o.outputs[0].token_ids))
        return res


def open_engine(kind: str, model_dir: Path, tokenizer_dir: Path, adapters: Mapping[str, Path], *, dtype: str, kv_bytes: int,
                max_model_len: int, seed: int, max_loras: int, max_num_seqs: int, output_tokens: int, regime: str,
                threads: int | None) -> VllmGenerator:  # fmt: skip
    """`full`/`merged` (a plain engine on `model_dir`) or `adapters` (the base with `max_loras` LoRA slots)."""
    rank = max((adapter_rank(p) for p in adapters.values()), default=8)
    kw = engine_kwargs(model_dir, tokenizer_dir, dtype, kv_bytes, max_model_len, seed, adapters=max_loras if adapters else 0,
                       lora_rank=rank, max_num_seqs=max_num_seqs, regime=regime)  # fmt: skip
    weights = vllm_backend.weights_bytes(model_dir, dtype) + sum(vllm_backend.weights_bytes(p, dtype) for p in adapters.values())
    return VllmGenerator(kind, kw, adapters, weights, output_tokens, threads=threads)
