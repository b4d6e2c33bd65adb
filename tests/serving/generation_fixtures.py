"""Inputs for the generation bench tests without the generation task's training: a base causal LM folder (the tiny
Llama, LlamaForCausalLM), PEFT LoRA adapters with task type CAUSAL_LM whose lora_B is drawn from a seeded normal (PEFT
initialises B to zero, which would make every adapter equal the base), a full fine-tuned model (the base with seeded
noise), and prompts from the packaged E2E-format fixture (its meaning representations, tokenized)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorascope import data
from lorascope.models import loading
from lorascope.study import LoraMethod

E2E_FIXTURES = Path(data.__file__).resolve().parent / "assets" / "e2e"


def make_causal_adapter(base_dir: Path, dest: Path, seed: int, method: LoraMethod | None = None, scale: float = 0.3) -> Path:
    """A CAUSAL_LM LoRA adapter on the method's targets (default LoRA: r 8, alpha 16, q_proj and v_proj)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    method = method or LoraMethod()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=method.r, lora_alpha=method.alpha, lora_dropout=0.0,
                        target_modules=list(method.target_modules))  # fmt: skip
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, scale)
    model.save_pretrained(str(dest))
    return dest


def make_full_causal(base_dir: Path, dest: Path, seed: int, noise: float = 0.02) -> Path:
    """A full fine-tuned causal LM checkpoint: the base with seeded noise, and the base's tokenizer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    model.save_pretrained(str(dest), safe_serialization=True)
    loading.load_tokenizer(base_dir).save_pretrained(str(dest))
    return dest


def e2e_prompts(base_dir: Path, n: int, split: str = "validation") -> list[list[int]]:
    """Token ids of the first n distinct meaning representations of the E2E-format fixture (BOS first)."""
    tok = loading.load_tokenizer(base_dir)
    rows = [json.loads(x) for x in (E2E_FIXTURES / f"{split}.jsonl").read_text().splitlines() if x.strip()]
    mrs = list(dict.fromkeys(r["meaning_representation"] for r in rows))[:n]
    return [list(tok(mr)["input_ids"]) for mr in mrs]
