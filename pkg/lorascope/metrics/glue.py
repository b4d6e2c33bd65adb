"""GLUE metrics and the GLUE task table.

Metrics as GLUE's own scorer computes them (Wang et al. 2019, "GLUE: A Multi-Task Benchmark and Analysis Platform
for Natural Language Understanding", ICLR; the Hugging Face `evaluate` "glue" metric, which calls scikit-learn and
scipy): accuracy; binary F1 with class 1 positive (mrpc, qqp); Matthews correlation (cola); Pearson and Spearman
correlation (stsb). Each is a few lines of numpy/scipy here, float64, tested by hand in tests/metrics/test_glue.py.

`GLUE_TASKS` is the table the task registry reads: text columns, labels, validation splits, the metrics GLUE reports
for the task, our primary metric (HPO objective and the unit of verdict margins) and the metric the LoRA paper's
GLUE table prints (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Table 2: "the overall
(matched and mismatched) accuracy for MNLI, Matthew's correlation for CoLA, Pearson correlation for STS-B, and
accuracy for other tasks"). Column names, label order and split names are those of the `glue` dataset on the
Hugging Face hub (nyu-mll/glue), which the bundled fixtures (assets/glue/) copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lorascope.registry import Registry

__all__ = [
    "GLUE_METRICS",
    "GLUE_TASKS",
    "GlueTask",
    "accuracy",
    "binary_f1",
    "glue_task",
    "matthews_correlation",
    "pearson",
    "spearman",
    "task_metrics",
]


def _pair(labels, predictions, dtype) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(labels, dtype=dtype), np.asarray(predictions, dtype=dtype)
    if y.ndim != 1 or y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} must be 1-D and of the same length")
    if y.size == 0:
        raise ValueError("no examples to score")
    return y, p


def accuracy(labels, predictions) -> float:
    """Share of examples whose predicted class equals the label: mean(y == p)."""
    y, p = _pair(labels, predictions, np.int64)
    return float((y == p).mean())


def binary_f1(labels, predictions) -> float:
    """F1 of class 1 (GLUE's MRPC and QQP: "equivalent" / "duplicate" positive): 2 TP / (2 TP + FP + FN); 0.0 when
    there is no positive at all (no positive label and none predicted), as scikit-learn's zero_division=0 and our
    training evaluation (training/evaluation.py) do."""
    y, p = _pair(labels, predictions, np.int64)
    tp = int(((p == 1) & (y == 1)).sum())
    fp = int(((p == 1) & (y != 1)).sum())
    fn = int(((p != 1) & (y == 1)).sum())
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def matthews_correlation(labels, predictions) -> float:
    """Matthews correlation coefficient (Matthews 1975; the K-class form of Gorodkin 2004, as scikit-learn's
    `matthews_corrcoef`), from the confusion matrix C (rows: label, columns: prediction), s = sum C, c = trace C,
    t_k = row sums, p_k = column sums:

        MCC = (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))

    For two classes this is (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN)). 0.0 when the denominator
    is 0 (all labels, or all predictions, of one class), as scikit-learn."""
    y, p = _pair(labels, predictions, np.int64)
    classes = np.union1d(y, p)
    confusion = np.zeros((classes.size, classes.size), dtype=np.float64)
    np.add.at(confusion, (np.searchsorted(classes, y), np.searchsorted(classes, p)), 1.0)
    t, pk, s, c = confusion.sum(axis=1), confusion.sum(axis=0), confusion.sum(), np.trace(confusion)
    denominator = np.sqrt((s * s - pk @ pk) * (s * s - t @ t))
    return float((c * s - pk @ t) / denominator) if denominator > 0 else 0.0


def pearson(labels, predictions) -> float:
    """Pearson correlation r = cov(y, p) / (sd(y) sd(p)) (scipy.stats.pearsonr); nan if either side is constant."""
    y, p = _pair(labels, predictions, np.float64)
    if y.size < 2 or np.ptp(y) == 0 or np.ptp(p) == 0:
        return float("nan")
    from scipy import stats  # here: the study imports this table, and scipy.stats costs a second at import

    return float(stats.pearsonr(y, p).statistic)


def spearman(labels, predictions) -> float:
    """Spearman rank correlation: Pearson r of the ranks, ties given their average rank (scipy.stats.spearmanr);
    nan if either side is constant."""
    y, p = _pair(labels, predictions, np.float64)
    if y.size < 2 or np.ptp(y) == 0 or np.ptp(p) == 0:
        return float("nan")
    from scipy import stats

    return float(stats.spearmanr(y, p).statistic)


GLUE_METRICS: Mapping[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1": binary_f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
}


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task as the pipeline needs it.

    columns: the text columns, in input order (one: a single sentence; two: a pair).
    label_names: class names by label id; () for a regression task (stsb).
    num_labels: classes, or 1 for regression (the regression head's single output).
    validation_splits: the splits we report on, the first one primary (mnli: matched, then mismatched).
    metrics: what GLUE reports for the task (evaluate's glue metric); primary_metric: the first number of GLUE's
        leaderboard column, our HPO objective and the unit of verdict margins (mrpc, qqp: F1; stsb: Pearson).
    paper_metric: the metric the LoRA paper's GLUE table prints (mnli: accuracy over matched and mismatched).
    label_range: regression targets' range (stsb: 0 to 5), else None.
    """

    name: str
    columns: tuple[str, ...]
    label_names: tuple[str, ...]
    num_labels: int
    validation_splits: tuple[str, ...]
    metrics: tuple[str, ...]
    primary_metric: str
    paper_metric: str
    label_range: tuple[float, float] | None = None

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def is_pair(self) -> bool:
        return len(self.columns) == 2


GLUE_TASKS: Registry[GlueTask] = Registry("GLUE task")
_VAL = ("validation",)
for _task in (
    GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), 2, _VAL,
             ("matthews_correlation",), "matthews_correlation", "matthews_correlation"),
    GlueTask("sst2", ("sentence",), ("negative", "positive"), 2, _VAL, ("accuracy",), "accuracy", "accuracy"),
    GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), 2, _VAL,
             ("accuracy", "f1"), "f1", "accuracy"),
    GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), 2, _VAL,
             ("accuracy", "f1"), "f1", "accuracy"),
    GlueTask("stsb", ("sentence1", "sentence2"), (), 1, _VAL, ("pearson", "spearman"), "pearson", "pearson",
             label_range=(0.0, 5.0)),
    GlueTask("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), 3,
             ("validation_matched", "validation_mismatched"), ("accuracy",), "accuracy", "accuracy"),
    GlueTask("qnli", ("question", "sentence"), ("entailment", "not_entailment"), 2, _VAL, ("accuracy",),
             "accuracy", "accuracy"),
    GlueTask("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), 2, _VAL, ("accuracy",),
             "accuracy", "accuracy"),
    GlueTask("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), 2, _VAL, ("accuracy",),
             "accuracy", "accuracy"),
):  # fmt: skip
    GLUE_TASKS.add(_task.name, _task)


def glue_task(name: str, field: str = "") -> GlueTask:
    """The table entry, or a ConfigError naming `field` and listing the known tasks."""
    return GLUE_TASKS.get(name, field)


def task_metrics(task: str | GlueTask, labels: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Every metric GLUE reports for `task`, by name (classification: class ids; stsb: real-valued scores)."""
    spec = task if isinstance(task, GlueTask) else glue_task(task)
    return {name: GLUE_METRICS[name](labels, predictions) for name in spec.metrics}
