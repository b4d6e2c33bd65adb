"""The `hf` backend: transformers + PEFT, in this process.

Every model is loaded through `models.loading.load_classifier` (pad id set, classification at the last attended token),
so serving reads the same position training did.

Multi-adapter batches. PEFT 0.21 serves a batch whose rows use different adapters with `adapter_names=[...]`
(one name per row) on `PeftModel.forward`: each LoRA linear runs the base weight once on the whole batch and adds
each adapter's low-rank update on the rows that named it (`LoraLayer._mixed_batch_forward`), and the per-task score
head (`modules_to_save`) is applied per sub-batch (`AuxiliaryTrainingWrapper._mixed_batch_forward`). So requests keep
their arrival order (round-robin or random), every row is answered by its own adapter, and no request waits for a
batch of its own task. This is the same contract as vLLM's multi-LoRA batching, which keeps the two backends
comparable. The alternative, one-adapter batches with `set_adapter` between them, is not used for serving; its
per-switch cost (`set_adapter`) is measured on its own by the protocol (`switch`).
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from lorascope import data
from lorascope.models import loading
from lorascope.serving.workload import Request

BACKEND = "hf"


def process_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc/self/statm), 0 where unavailable."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * resource.getpagesize()


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (for a PEFT model: base weights, LoRA matrices and head copies)."""
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


class HFDevice:
    """Device and memory of a served PyTorch model (`self.model` on `self.device`, its load-time `self._memory`): what
    the classification server and the generation server both answer."""

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def memory(self) -> dict:
        return dict(self._memory)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> dict:
        if self.device.type == "cuda":
            return {"gpu_peak_allocated_bytes": int(torch.cuda.max_memory_allocated(self.device)),
                    "rss_bytes": process_rss_bytes()}
        return {"gpu_peak_allocated_bytes": None, "rss_bytes": process_rss_bytes()}

    def close(self) -> None:
        del self.model
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class HFServer(HFDevice):
    backend = BACKEND

    def __init__(self, mode: str, model: torch.nn.Module, device: torch.device, pad_id: int, tasks: list[str],
                 mixed: bool, load_seconds: float) -> None:
        self.mode = mode
        self.model = model.eval()
        self.device = device
        self.pad_id = pad_id
        self.tasks = tasks
        self.mixed = mixed  # pass adapter_names per row (multi modes)
        self.load_seconds = load_seconds
        self.sync()
        self._memory = {
            "weights_bytes": parameter_bytes(model),
            "weights_bytes_what": "parameters + buffers of the loaded model (base, LoRA matrices, head copies)",
            "gpu_allocated_after_load_bytes": int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None,
            "rss_after_load_bytes": process_rss_bytes(),
        }

    # ---- serving
    def serve(self, batch: list[Request]) -> np.ndarray:
        features = [{"input_ids": list(r.input_ids), "attention_mask": [1] * r.tokens} for r in batch]
        inputs = data.collate(features, self.pad_id)
        kwargs = {"adapter_names": [r.task for r in batch]} if self.mixed else {}
        with torch.inference_mode():
            out = self.model(
                input_ids=inputs["input_ids"].to(self.device, non_blocking=True),
                attention_mask=inputs["attention_mask"].to(self.device, non_blocking=True),
                **kwargs,
            )
        return out.logits.float().cpu().numpy()

    def switch(self, task: str) -> None:
        """Make `task` the active adapter (PEFT set_adapter): what a server with one-adapter batches pays per switch."""
        self.model.set_adapter(task)


# ------------------------------------------------------------------------------------------------ loading
def timed_load(fn):
    """(fn(), its seconds), a CUDA model synchronised before the clock stops."""
    t0 = time.perf_counter()
    model = fn()
    if isinstance(model, torch.nn.Module) and next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    return model, time.perf_counter() - t0


def open_plain(mode: str, model_dir: Path, num_labels: int, dtype: torch.dtype, device: torch.device) -> HFServer:
    """`full` (a full fine-tuned cell's model/) or `merged` (a merged checkpoint): a plain classifier, no PEFT."""
    model, seconds = timed_load(lambda: loading.load_classifier(model_dir, num_labels, dtype, device))
    return HFServer(mode, model, device, model.config.pad_token_id, [], mixed=False, load_seconds=seconds)


def _peft_model(base_dir: Path, adapters: Mapping[str, Path], num_labels: int, dtype: torch.dtype,
                device: torch.device, seed: int):
    from peft import PeftModel

    torch.manual_seed(seed)  # the base's own score head is drawn at load (each adapter brings its own)
    base = loading.load_classifier(base_dir, num_labels, dtype, device)
    tasks = list(adapters)
    model = PeftModel.from_pretrained(base, str(adapters[tasks[0]]), adapter_name=tasks[0], is_trainable=False)
    for task in tasks[1:]:
        model.load_adapter(str(adapters[task]), adapter_name=task, is_trainable=False)
    model.set_adapter(tasks[0])
    return model.to(device).eval()


def open_adapters(mode: str, base_dir: Path, adapters: Mapping[str, Path], num_labels: int, dtype: torch.dtype,
                  device: torch.device, seed: int = 0) -> HFServer:
    """`separate` (one adapter, served as the active adapter) or `multi-k` (k adapters loaded with
    `load_adapter(..., adapter_name=task)`, every batch served with `adapter_names` per row)."""
    model, seconds = timed_load(lambda: _peft_model(base_dir, adapters, num_labels, dtype, device, seed))
    return HFServer(mode, model, device, model.config.pad_token_id, list(adapters), mixed=mode.startswith("multi-"),
                    load_seconds=seconds)


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, num_labels: int, dtype: torch.dtype,
                  tokenizer_dir: Path | None = None, seed: int = 0) -> float:
    """Merge a LoRA adapter into the base with PEFT's `merge_and_unload()` and save the result as a full
    sequence-classification checkpoint (the adapter's trained score head included). Returns seconds taken.
    Merging runs on CPU in float32 and the result is saved in `dtype`, so rounding happens once."""
    from peft import PeftModel

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    base = loading.load_classifier(base_dir, num_labels, torch.float32, "cpu")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged = merged.to(dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    if tokenizer_dir is not None:
        loading.load_tokenizer(tokenizer_dir).save_pretrained(str(out_dir))
    del merged, base
    gc.collect()
    return time.perf_counter() - t0


def save_seqcls_base(base_dir: Path, out_dir: Path, num_labels: int, dtype: torch.dtype, seed: int) -> Path:
    """The base model saved as a sequence-classification checkpoint with a `score` head (seeded init), so a
    strict loader (vLLM) finds every weight; each adapter replaces the head with its own (`modules_to_save`)."""
    torch.manual_seed(seed)
    model = loading.load_classifier(base_dir, num_labels, dtype, "cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    loading.load_tokenizer(base_dir).save_pretrained(str(out_dir))
    del model
    gc.collect()
    return out_dir


def available() -> str | None:
    """None when the backend can run here, else the reason it cannot."""
    import importlib.util

    missing = [m for m in ("transformers", "peft") if importlib.util.find_spec(m) is None]
    return f"python packages {missing} are not installed (pip install 'lorascope[ml]')" if missing else None


def versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
