"""Seeded synthetic LoRA adapters: to serve N adapters when the study trained fewer, the bench adds adapters of the
same shape as a trained one (same adapter_config.json: rank, alpha, target modules; same tensor names, shapes and
dtypes), each tensor drawn from a normal with the template tensor's own standard deviation and a seeded generator.
They time exactly like trained adapters (the kernels see the same shapes) but say nothing about quality; every row,
table and figure that uses one says `synthetic`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

SYNTHETIC_PREFIX = "synthetic-"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def make_synthetic(template: Path, dest: Path, seed: int) -> Path:
    """A synthetic adapter in `dest` shaped like the adapter in `template` (see the module doc)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(Path(template) / WEIGHTS))
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for name in sorted(tensors):
        t = tensors[name].to(torch.float32)
        std = float(t.std()) if t.numel() > 1 else 0.0
        std = std if std > 0 else 0.02  # a zero tensor (untrained lora_B): still a non-zero, distinct update
        out[name] = (torch.randn(t.shape, generator=gen) * std).to(tensors[name].dtype).contiguous()
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    config = json.loads((Path(template) / CONFIG).read_text())
    (dest / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(out, str(dest / WEIGHTS), metadata={"format": "pt", "lorascope": f"synthetic adapter, seed {seed}, shaped like {Path(template).name}"})
    return dest


def complete(adapters: Mapping[str, Path], needed: int, work: Path, seed: int) -> tuple[dict[str, Path], frozenset[str]]:
    """`adapters` extended to `needed` entries with synthetic ones (`synthetic-1`, `synthetic-2`, ... shaped like the
    first adapter, seeds (seed, i)); returns (all adapters in order, the synthetic names)."""
    out = dict(adapters)
    if not out:
        raise ValueError("no trained adapter to shape synthetic adapters after")
    template = next(iter(out.values()))
    synthetic = []
    i = 0
    while len(out) < needed:
        i += 1
        name = f"{SYNTHETIC_PREFIX}{i}"
        if name in out:
            continue
        out[name] = make_synthetic(template, Path(work) / name, seed=seed * 1000 + i)
        synthetic.append(name)
    return out, frozenset(synthetic)
