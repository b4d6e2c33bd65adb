"""A trained cell's artifact loaded back for evaluation (`adapter/` or `model/` in the cell bundle's folder, as the
train phase saves it), and the counts the train phase records (trainable parameters and bytes, bytes on disk).
Saving a cell is a method's job (lorascope.methods)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lorascope.errors import ConfigError
from lorascope.models.loading import load_classifier, load_tokenizer


def load_cell_model(cell_dir: str | Path, base_dir: str | Path, num_labels: int, device: torch.device | str,
                    dtype: torch.dtype, load: Callable[[Path, torch.dtype, Any], Any] | None = None):  # fmt: skip
    """A trained cell, ready for eval, from the cell bundle's folder: the base model in `base_dir` with the cell's
    adapter (`adapter/`: PEFT methods) or the cell's own model (`model/`: full, top_layers, bitfit), and the base
    model's tokenizer. Classification where `load_classifier` puts it for the family (decoders: the last attended
    token; encoders: the first token, by their own head). `load(folder, dtype, device)`: how a model folder is loaded
    (the task type's `load_model`: its head and model class); None: `load_classifier` with `num_labels`."""
    if load is None:
        load = lambda folder, dt, dev: load_classifier(folder, num_labels, dt, dev)  # noqa: E731
    cell_dir, base_dir = Path(cell_dir), Path(base_dir)
    from lorascope import methods

    tokenizer = load_tokenizer(base_dir)
    own = methods.own_artifact(cell_dir)  # a method kind with its own artifact format (bottleneck adapters)
    if own is not None:
        model = own.load(cell_dir, load_classifier(base_dir, num_labels, dtype, device))
    elif (cell_dir / "adapter" / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load(base_dir, dtype, device)
        model = PeftModel.from_pretrained(base, str(cell_dir / "adapter"))
    elif (cell_dir / "model" / "config.json").is_file():
        model = load(cell_dir / "model", dtype, device)
    else:
        raise ConfigError(f"cell folder {cell_dir} holds neither adapter/adapter_config.json nor model/config.json")
    model.to(device)
    model.eval()
    return model, tokenizer


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts. For a PEFT model the total includes the adapter and the head copy."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def trainable_bytes(model) -> int:
    """Bytes of the trainable parameters in their dtype (what an optimizer state scales with)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def folder_bytes(folder: str | Path) -> int:
    """Bytes on disk of every file under `folder`."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
