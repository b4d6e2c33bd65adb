"""The real-model suite: SmolLM2-135M staged once per session (the wheel converted into a session folder, unless
LORASCOPE_MODEL_CACHE points at a converted one); one full-FT and one LoRA model trained a few AdamW steps at the
study's learning rates and committed as cells; their states extracted by the extract phase.

CPU cost is dominated by full fine-tuning steps of a 135M model (~4 s each on 2 threads) and by writing its 538 MB
checkpoint, so the cells are trained here in a plain loop (no Trainer checkpoints); the train phase itself runs once,
for a LoRA cell, whose checkpoints are small."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.smollm2 import N_EXTRACT, STEPS, RealRun, stage_smollm2

# a one-task slice of jobs/real-mini.yaml (same model, hyperparameters and data), two seeds so the train phase can
# run a cell (mrpc-lora-s7) next to the two trained here (mrpc-full-s42, mrpc-lora-s42)
SMALL = {
    "tasks": [{"name": "mrpc", "metric": "f1", "max_length": 128, "train_samples": 64, "eval_samples": N_EXTRACT}],
    "seeds": [42, 7],
    "training": {"max_steps": 3, "evals_per_epoch": 1, "micro_batch": 16},
    "extraction": {"examples": N_EXTRACT, "batch_size": 16},
    # the extract phase measures forgetting on every unit: 32 held-out texts (1981 SmolLM2 tokens), ~8 s a unit on 2 cores
    "forgetting": {"max_texts": 32, "max_length": 128},
}
TRAINED = ["mrpc-full-s42", "mrpc-lora-s42"]


@dataclass
class Trained:
    run: RealRun
    losses: dict[str, list[float]]  # method -> training losses on the fixed batch: before each step, then after the last


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> RealRun:
    root = tmp_path_factory.mktemp("real-model")
    cache = os.environ.get("LORASCOPE_MODEL_CACHE")
    return stage_smollm2(root, model_cache=Path(cache) if cache else None, **SMALL)


def _train_steps(run: RealRun, method_name: str, out: Path) -> list[float]:
    """STEPS AdamW steps (the study's learning rate and grad clipping) on the first 16 training examples as one
    batch; the trained model (full) or adapter (lora) saved to `out`."""
    import torch

    from lorascope import data, methods
    from lorascope.models import loading

    study = run.study
    lr = float(study.training.defaults[method_name]["learning_rate"])
    tok = loading.load_tokenizer(run.model_dir)
    rows = data.read_jsonl(run.model_dir.parent / "data" / "mrpc" / "train.jsonl")[:16]
    batch = data.collate(data.encode(tok, "mrpc", rows, 128), tok.pad_token_id)
    labels = torch.tensor([int(r["label"]) for r in rows])
    torch.manual_seed(0)
    model = methods.apply_method(loading.load_classifier(run.model_dir, 2, torch.float32, "cpu"), study.method(method_name))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(STEPS):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, study.training.max_grad_norm)
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.item())
    model.save_pretrained(str(out))
    return losses


@pytest.fixture(scope="session")
def real_trained(real_run, tmp_path_factory) -> Trained:
    """mrpc-full-s42 and mrpc-lora-s42 trained STEPS steps here and committed as cells (the folders the train phase
    writes: model/ or adapter/), then extract for base and both cells."""
    from lorascope.phases import extract

    tmp = tmp_path_factory.mktemp("cells")
    ctx = real_run.ctx()
    losses = {}
    for cell in TRAINED:
        method = cell.split("-")[1]
        sub = "adapter" if method == "lora" else "model"
        losses[method] = _train_steps(real_run, method, tmp / cell / sub)
        with ctx.writer("cells", cell, phase="train") as w:
            w.add_dir(tmp / cell / sub, prefix=sub)
            w.add_json("metrics.json", {"cell": cell, "task": "mrpc", "method": method, "losses": losses[method]})
    units = extract.units(real_run.study)
    for i, (model, _task) in enumerate(units):
        if model in ("base", *TRAINED):
            real_run.phase("extract", i)
    return Trained(real_run, losses)
