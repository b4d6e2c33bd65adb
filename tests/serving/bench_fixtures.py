"""Inputs for bench tests without running the train phase: a committed stage bundle (the tiny Llama and the
packaged GLUE validation fixtures) and committed cells whose adapters / full models are made with our own
modeling code (`models.loading.load_classifier` + `methods.apply_method`, PEFT `save_pretrained`), with seeded random
weights so every adapter computes something different from the base and from the others."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lorascope import data, methods
from lorascope.models import builtin, loading
from lorascope.phases import PhaseContext
from lorascope.study import FullMethod, LoraMethod, Study

GLUE_FIXTURES = Path(data.__file__).resolve().parent / "assets" / "glue"


def make_adapter(base_dir: Path, dest: Path, method: LoraMethod, seed: int, num_labels: int = 2) -> Path:
    """A LoRA adapter as our train phase saves it (adapter_config.json + adapter_model.safetensors incl. the score
    head), with lora_B and the score head drawn from a seeded normal (PEFT initialises B to zero)."""
    torch.manual_seed(seed)
    model = methods.apply_method(loading.load_classifier(base_dir, num_labels, torch.float32, "cpu"), method)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or ("score" in name and "modules_to_save" in name):
                p.normal_(0.0, 0.3)
    model.save_pretrained(str(dest))
    return dest


def make_full_model(base_dir: Path, dest: Path, seed: int, num_labels: int = 2) -> Path:
    """A full fine-tuned classifier checkpoint (config.json + model.safetensors): the base with seeded noise."""
    torch.manual_seed(seed)
    model = loading.load_classifier(base_dir, num_labels, torch.float32, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest


def commit_stage(ctx: PhaseContext, tmp: Path) -> Path:
    """stage/ with model/ (the tiny Llama) and data/<task>/validation.jsonl (the packaged fixtures)."""
    model_dir = builtin.build_tiny_llama(tmp / "stage-model")
    with ctx.writer("stage", phase="stage", meta={"fixture": "tests/serving/bench_fixtures.py"}) as w:
        w.add_dir(model_dir, prefix="model")
        for task in ctx.study.tasks:
            w.add_file(f"data/{task.name}/validation.jsonl", GLUE_FIXTURES / task.name / "validation.jsonl")
    return model_dir


def commit_cells(ctx: PhaseContext, tmp: Path, base_dir: Path, cells: list[str], predictions: bool = False) -> None:
    study: Study = ctx.study
    for n, cell in enumerate(cells):
        task, method_name, _seed = cell.split("-")
        method = study.method(method_name)
        out = tmp / "cells" / cell
        if isinstance(method, FullMethod):
            make_full_model(base_dir, out / "model", seed=1000 + n)
            sub = "model"
        else:
            make_adapter(base_dir, out / "adapter", method, seed=1000 + n)
            sub = "adapter"
        with ctx.writer("cells", cell, phase="train") as w:
            w.add_dir(out / sub, prefix=sub)
            w.add_json("metrics.json", {"cell": cell, "task": task, "method": method_name})
            if predictions:
                w.add_bytes("predictions.jsonl", _predictions(ctx, base_dir, cell, out).encode())


def _predictions(ctx: PhaseContext, base_dir: Path, cell: str, out: Path) -> str:
    """predictions.jsonl as the train phase writes it, computed one example at a time."""
    from peft import PeftModel

    task = cell.split("-")[0]
    tok = loading.load_tokenizer(base_dir)
    if (out / "adapter").is_dir():
        model = PeftModel.from_pretrained(loading.load_classifier(base_dir, 2, torch.float32, "cpu"), str(out / "adapter"))
    else:
        model = loading.load_classifier(out / "model", 2, torch.float32, "cpu")
    model.eval()
    rows = data.read_jsonl(GLUE_FIXTURES / task / "validation.jsonl")
    lines = []
    with torch.inference_mode():
        for f in data.encode(tok, task, rows, ctx.study.task(task).max_length):
            logits = model(input_ids=torch.tensor([f["input_ids"]]), attention_mask=torch.tensor([f["attention_mask"]])).logits[0]
            lines.append(json.dumps({"idx": f["idx"], "label": f["labels"], "pred": int(logits.argmax()),
                                     "logits": [float(x) for x in logits]}))
    return "\n".join(lines) + "\n"
