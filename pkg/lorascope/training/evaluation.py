"""Evaluation (`evaluate`, `evaluate_features`): the same function for both methods, for every dev evaluation during
training, for the HPO objective and for the reported numbers. Accuracy, binary F1 (positive class 1), mean
cross-entropy and per-example predictions; batches sorted by length and right-padded (with causal attention and
classification at the last attended token, an example's logits do not depend on its batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lorascope import data
from lorascope.study import TaskConfig


def classification_metrics(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Accuracy and binary F1 with class 1 positive: F1 = 2TP / (2TP + FP + FN), 0 when there is no positive at
    all (no positive label and none predicted)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in shape")
    tp = int(((p == 1) & (y == 1)).sum())
    fp = int(((p == 1) & (y != 1)).sum())
    fn = int(((p != 1) & (y == 1)).sum())
    denom = 2 * tp + fp + fn
    return {
        "accuracy": float((p == y).mean()) if y.size else 0.0,
        "f1": 2 * tp / denom if denom else 0.0,
    }


@dataclass
class EvalResult:
    accuracy: float
    f1: float
    loss: float
    n: int
    predictions: list[dict[str, Any]] = field(repr=False)  # {"idx", "label", "pred", "logits"} in input order

    def metrics(self) -> dict[str, float | int]:
        return {"accuracy": self.accuracy, "f1": self.f1, "loss": self.loss, "n": self.n}

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


@torch.no_grad()
def evaluate_features(
    model: torch.nn.Module, features: list[dict], batch_size: int, pad_id: int, bf16: bool = False
) -> EvalResult:
    """Evaluate encoded examples (`data.encode` output). Batches are formed in length order and right-padded to
    their longest member; results are returned in input order. Loss = mean cross-entropy (float32 logits)."""
    if not features:
        raise ValueError("evaluate: no examples")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(features)), key=lambda i: (len(features[i]["input_ids"]), i))
    logits_by_pos: list[torch.Tensor | None] = [None] * len(features)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = data.collate([features[i] for i in rows], pad_id)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            logits = out["logits"].float().cpu()
            for j, i in enumerate(rows):
                logits_by_pos[i] = logits[j]
    finally:
        model.train(was_training)
    logits_all = torch.stack(logits_by_pos)  # type: ignore[arg-type]
    labels = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
    loss = float(F.cross_entropy(logits_all.double(), labels, reduction="mean"))
    preds = logits_all.argmax(-1)
    m = classification_metrics(labels.numpy(), preds.numpy())
    predictions = [
        {
            "idx": int(f["idx"]),
            "label": int(f["labels"]),
            "pred": int(preds[i]),
            "logits": [float(x) for x in logits_all[i]],
        }
        for i, f in enumerate(features)
    ]
    return EvalResult(accuracy=m["accuracy"], f1=m["f1"], loss=loss, n=len(features), predictions=predictions)


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: list[dict],
    task: TaskConfig | str,
    batch_size: int,
    *,
    max_length: int | None = None,
    bf16: bool = False,
) -> EvalResult:
    """Evaluate raw GLUE examples (`data.read_split` rows): tokenized exactly as in training (`data.encode`, the
    task's max_length), then `evaluate_features`. The one evaluation for both methods, HPO and the report."""
    name = task.name if isinstance(task, TaskConfig) else task
    if max_length is None:
        max_length = task.max_length if isinstance(task, TaskConfig) else 384
    features = data.encode(tokenizer, name, examples, max_length)
    return evaluate_features(model, features, batch_size, pad_id=int(tokenizer.pad_token_id), bf16=bf16)
