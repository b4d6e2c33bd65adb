"""Generation with transformers + PEFT (`model.generate`), in this process.

* Loading: `AutoModelForCausalLM.from_pretrained` (full, merged, base); adapters with `PeftModel.from_pretrained` +
  `load_adapter(..., adapter_name=name)`, all adapters of the bench on one model. `separate` serves the first adapter
  as the active one; `multi-k` passes `adapter_names` (one per row): PEFT runs the base weight once on the batch and
  adds each adapter's update on its own rows (`LoraLayer._mixed_batch_forward`), the same contract as vLLM's per-prompt
  LoRARequest.
* Decoding: greedy (`do_sample=False`), exactly `output_tokens` new tokens (`min_new_tokens = max_new_tokens`: EOS
  cannot end a request early). Prompts of one batch have one length, so there is no padding.
* Timing (`TokenClock`, a transformers streamer): `generate` hands the streamer the prompt, then each decoding
  step's tokens on the host (a device sync). The clock reads `time.perf_counter` at each: TTFT = first token on the
  host - call start (prefill + first sampling step), TPOT = (last token - first token) / (output tokens - 1), E2E =
  call end - call start. All rows of a batch share them: they are decoded in lockstep.
* Merging: `merge` = PEFT `merge_and_unload()` in float32 on CPU, saved in the serving dtype with the tokenizer.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from lorascope.serving.hf_backend import HFDevice, parameter_bytes, process_rss_bytes, timed_load
from lorascope.serving.workload import Request

BACKEND = "hf"


class TokenClock:
    """A `generate` streamer that keeps the time of each put: the first is the prompt, each later one a decoded step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:  # noqa: ARG002 - the tokens are returned by generate; only the time matters
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    @property
    def steps(self) -> list[float]:
        return self.times[1:]


def load_causal_lm(model_dir: Path, dtype: torch.dtype, device: torch.device | str):
    """A causal LM folder as a plain model (no head change), eval mode, on `device`."""
    from transformers import AutoModelForCausalLM

    from lorascope.models.loading import expected_load_report_silenced

    with expected_load_report_silenced():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    return model.to(device).eval()


def _eos_pad(model) -> tuple[int, int]:
    eos = model.config.eos_token_id
    eos = int(eos[0] if isinstance(eos, list | tuple) else eos)
    pad = model.config.pad_token_id
    return eos, int(eos if pad is None else pad)


class HFGenerator(HFDevice):
    """One loaded model; `use(mode)` picks how its next batches are served (separate or multi-k on an adapter model)."""

    backend = BACKEND
    regime = "eager"

    def __init__(self, kind: str, model, device: torch.device, adapters: Sequence[str], load_seconds: float,
                 output_tokens: int) -> None:
        from transformers import GenerationConfig

        self.kind = kind  # "full", "merged" or "adapters"
        self.mode = kind if kind != "adapters" else "separate"
        self.model = model
        self.device = device
        self.tasks = list(adapters)
        self.load_seconds = load_seconds
        self.output_tokens = int(output_tokens)
        eos, pad = _eos_pad(model)
        self.config = GenerationConfig(max_new_tokens=self.output_tokens, min_new_tokens=self.output_tokens,
                                       do_sample=False, eos_token_id=eos, pad_token_id=pad)  # fmt: skip
        self.sync()
        self._memory = {
            "weights_bytes": parameter_bytes(model),
            "weights_bytes_what": "parameters + buffers of the loaded model (base and every adapter's LoRA matrices)",
            "gpu_allocated_after_load_bytes": int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None,
            "rss_after_load_bytes": process_rss_bytes(),
        }

    def use(self, mode: str) -> None:
        if self.kind != "adapters" and mode != self.kind:
            raise ValueError(f"a {self.kind} model cannot serve mode {mode!r}")
        self.mode = mode
        if self.kind == "adapters":
            self.model.set_adapter(self.tasks[0])

    def generate(self, batch: list[Request]) -> dict:
        """Greedy `output_tokens` new tokens for every request of the batch (one prompt length): tokens, TTFT, TPOT
        and E2E seconds per request."""
        ids = torch.tensor([list(q.input_ids) for q in batch], dtype=torch.long, device=self.device)
        kwargs = {"adapter_names": [q.task for q in batch]} if self.mode.startswith("multi-") else {}
        clock = TokenClock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=self.config,
                                      streamer=clock, **kwargs)  # fmt: skip
        t1 = time.perf_counter()
        new = out[:, ids.shape[1] :].cpu().tolist()
        steps = clock.steps
        n = len(steps)
        ttft = steps[0] - t0
        tpot = (steps[-1] - steps[0]) / (n - 1) if n > 1 else 0.0
        rows = len(batch)
        return {"tokens": new, "ttft": [ttft] * rows, "tpot": [tpot] * rows, "e2e": [t1 - t0] * rows,
                "output_tokens": [len(t) for t in new]}  # fmt: skip


def open_plain(kind: str, model_dir: Path, dtype: torch.dtype, device: torch.device, output_tokens: int) -> HFGenerator:
    """`full` or `merged`: a plain causal LM."""
    model, seconds = timed_load(lambda: load_causal_lm(model_dir, dtype, device))
    return HFGenerator(kind, model, device, [], seconds, output_tokens)


def _peft(base_dir: Path, adapters: Mapping[str, Path], dtype: torch.dtype, device: torch.device):
    from peft import PeftModel

    names = list(adapters)
    model = PeftModel.from_pretrained(load_causal_lm(base_dir, dtype, device), str(adapters[names[0]]),
                                      adapter_name=names[0], is_trainable=False)  # fmt: skip
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name, is_trainable=False)
    model.set_adapter(names[0])
    return model.to(device).eval()


def open_adapters(base_dir: Path, adapters: Mapping[str, Path], dtype: torch.dtype, device: torch.device,
                  output_tokens: int) -> HFGenerator:
    """Base + every adapter (`separate` serves the first, `multi-k` mixes the first k)."""
    model, seconds = timed_load(lambda: _peft(base_dir, adapters, dtype, device))
    return HFGenerator("adapters", model, device, list(adapters), seconds, output_tokens)


def merge(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: torch.dtype) -> float:
    """PEFT `merge_and_unload()` of a causal-LM adapter into the base (float32 on CPU), saved in `dtype` with the base's
    tokenizer as a plain checkpoint. Returns seconds taken."""
    from peft import PeftModel

    from lorascope.models.loading import load_tokenizer

    t0 = time.perf_counter()
    merged = PeftModel.from_pretrained(load_causal_lm(base_dir, torch.float32, "cpu"), str(adapter_dir)).merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.to(dtype).save_pretrained(str(out_dir), safe_serialization=True)
    load_tokenizer(base_dir).save_pretrained(str(out_dir))
    del merged
    gc.collect()
    return time.perf_counter() - t0
