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


# ---------------------------------------------------------------------------------- classification cells as causal LMs
# A classification study has no generation task, yet its cells hold what the generation bench needs to time: LoRA
# updates of the backbone (the base is staged as a causal LM) and a fine-tuned backbone. Served as a causal LM (the
# classification head dropped, the base's lm_head kept), they have the trained shapes and weights, so they time like a
# generation task's cells; their text means nothing, and every summary that uses them says so (`CELLS_AS_CAUSAL_LM`).
CELLS_AS_CAUSAL_LM = ("classification cells served as causal LMs: LoRA updates of the backbone with the classification "
                      "head dropped, on the base's lm_head; timings are the trained shapes', the generated text means nothing")  # fmt: skip


def causal_adapter(classifier_adapter: Path, dest: Path) -> Path:
    """A CAUSAL_LM copy of a PEFT LoRA adapter trained for classification: its lora_A / lora_B tensors unchanged, the
    saved head (`modules_to_save`: score, classifier) dropped, task_type CAUSAL_LM."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(Path(classifier_adapter) / WEIGHTS))
    kept = {k: v.contiguous() for k, v in sorted(tensors.items()) if ".lora_" in k}
    if not kept:
        raise ValueError(f"{classifier_adapter}: no lora_A/lora_B tensors (not a LoRA adapter)")
    config = json.loads((Path(classifier_adapter) / CONFIG).read_text())
    config.update(task_type="CAUSAL_LM", modules_to_save=None)
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(kept, str(dest / WEIGHTS), metadata={"format": "pt", "lorascope": f"causal-LM copy of {Path(classifier_adapter).name}"})
    return dest


def causal_model(classifier_dir: Path, base_dir: Path, dest: Path) -> Path:
    """A causal LM from a full fine-tuned sequence classifier: the base causal LM's files (config, tokenizer, lm_head)
    with every backbone tensor (`model.*`) taken from the classifier; the classification head is dropped."""
    from safetensors.torch import load_file, save_file

    base = load_file(str(Path(base_dir) / "model.safetensors"))
    tuned = load_file(str(Path(classifier_dir) / "model.safetensors"))
    missing = sorted(k for k in base if k.startswith("model.") and k not in tuned)
    if missing:
        raise ValueError(f"{classifier_dir}: backbone tensors missing against the base causal LM: {missing[:3]}")
    out = {k: (tuned[k] if k.startswith("model.") else v).contiguous() for k, v in sorted(base.items())}
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for f in Path(base_dir).iterdir():
        if f.is_file() and f.name != "model.safetensors" and not f.name.endswith(".safetensors"):
            shutil.copy2(f, dest / f.name)
    save_file(out, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest
