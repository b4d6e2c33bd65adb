"""Evaluation (`evaluate`, `evaluate_features`): the same function for every method, for every dev evaluation during
training, for the HPO objective and for the reported numbers. What is computed is the task type's (`TaskType.evaluate`:
classification reports accuracy, binary F1 (positive class 1), GLUE's own metrics, or Pearson and Spearman for
regression; the mean loss; per-example predictions); batches sorted by length and right-padded (with causal attention
and classification at the last attended token, an example's logits do not depend on its batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lorascope import data
from lorascope.metrics import glue
from lorascope.tasks import EvalResult, Task
from lorascope.tasks.classification import plain_task


def classification_metrics(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Accuracy and binary F1 with class 1 positive (`metrics.glue`): F1 = 2TP / (2TP + FP + FN), 0 when there is no
    positive at all (no positive label and none predicted). 0.0 accuracy for no examples."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in shape")
    if not y.size:
        return {"accuracy": 0.0, "f1": 0.0}
    return {"accuracy": glue.accuracy(y, p), "f1": glue.binary_f1(y, p)}


def task_of(task: Any, model: torch.nn.Module | None = None) -> Task:
    """The resolved task of `task`: a `Task` as it is, a study's TaskConfig resolved, a name the package knows (GLUE's),
    or None: a plain classification task of the model's label count."""
    if isinstance(task, Task):
        return task
    if task is None:
        labels = int(getattr(getattr(model, "config", None), "num_labels", 2) or 2)
        return plain_task(labels)
    if isinstance(task, str):
        return data.glue_task(task)
    return task.spec


@torch.no_grad()
def evaluate_features(model: torch.nn.Module, features: list[dict], batch_size: int, pad_id: int, bf16: bool = False,
                      task: Any = None, tokenizer: Any = None, during_training: bool = False) -> EvalResult:  # fmt: skip
    """Evaluate encoded examples (the task type's `encode` output) by the task type's `evaluate`. `task`: a `Task`,
    a TaskConfig, a known task's name, or None (a plain classification task of the model's label count).
    `during_training`: a dev evaluation of the Trainer's (the type's `evaluate_during_training`, which may bound its
    cost: generation decodes a few dev prompts greedily instead of all of them with the study's decoding)."""
    spec = task_of(task, model)
    run = spec.task_type.evaluate_during_training if during_training else spec.task_type.evaluate
    return run(spec, model, features, batch_size=batch_size, pad_id=pad_id, bf16=bf16, tokenizer=tokenizer)


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: list[dict],
    task: Any,
    batch_size: int,
    *,
    max_length: int | None = None,
    bf16: bool = False,
) -> EvalResult:
    """Evaluate staged rows (`data.read_split`): tokenized exactly as in training (the task type's `encode`, the
    task's max_length), then `evaluate_features`. The one evaluation for every method, HPO and the report."""
    spec = task_of(task, model)
    if max_length is None:
        max_length = spec.max_length
    features = spec.task_type.encode(spec, tokenizer, examples, max_length)
    return evaluate_features(model, features, batch_size, pad_id=int(tokenizer.pad_token_id), bf16=bf16, task=spec,
                             tokenizer=tokenizer)  # fmt: skip


__all__ = ["EvalResult", "classification_metrics", "evaluate", "evaluate_features", "task_of"]
