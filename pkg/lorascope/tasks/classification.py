"""Sentence and sentence-pair classification, and regression (GLUE's STS-B): the reference task type.

Tasks it knows without a source: every GLUE task of `metrics.glue.GLUE_TASKS` (columns, labels, validation splits,
metrics and the primary metric from that one table). A task of the user's own names `source`, `columns` (roles
`text`, optionally `text_pair`, `label`, optionally `idx`) and `labels` (the classes in id order, or `regression`).

  rows      staged as {text columns..., "label", "idx"}: GLUE's column names for a GLUE task, the role names for a
            user's task; labels int in [0, num_labels) (classes) or a finite float (regression; GLUE's STS-B also
            within its 0..5 range); `idx` an int, unique (a user's rows without an `idx` column get the row number)
  input     decoders: `BOS s` or `BOS s1 EOS s2` from ids, truncated longest-first (`data.encode_texts`); encoders:
            the tokenizer's own single/pair template. Extraction pools the whole input (BOS / `<s>` left out)
  head      `AutoModelForSequenceClassification` through `models.loading.load_classifier` (decoders classify at the
            last attended token), num_labels outputs, 1 for regression; PEFT task type SEQ_CLS; encoders supported
  loss      cross-entropy (classes) or squared error (regression), summed over the micro-batch and divided by the
            examples of the accumulated batch
  metrics   classes: accuracy; binary F1 (class 1 positive) for two classes; GLUE's own (CoLA: Matthews
            correlation); regression: Pearson and Spearman correlation (metrics.glue). The loss: mean cross-entropy
            or mean squared error
  gate      accuracy and F1: the best constant class predictor on the evaluated labels (majority class, or always
            the positive class for F1); Matthews, Pearson, Spearman: 0 (a constant prediction has no correlation;
            Pearson of a constant is undefined and taken as 0). The margin is a tenth of the headroom (best - trivial)
  bench     the forward-pass bench ("classification"); vLLM serves decoders' LoRA cells (classify pooling)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lorascope.errors import ConfigError
from lorascope.metrics import glue
from lorascope.tasks.base import EvalResult, GateFacts, Task, TaskType, register

CLASS_METRICS = ("accuracy", "f1", "matthews_correlation")  # what a classification task may report
REGRESSION_METRICS = ("pearson", "spearman")
REGRESSION = "regression"  # `labels: regression`: a real-valued target, one output
TRIVIAL = {
    "accuracy": ("the majority class of the evaluated labels", None),
    "f1": ("the best constant class (always the positive class)", None),
    "matthews_correlation": ("a constant prediction: Matthews correlation 0", 0.0),
    "pearson": ("a constant prediction: correlation 0 (Pearson of a constant is undefined, taken as 0)", 0.0),
    "spearman": ("a constant prediction: correlation 0 (Spearman of a constant is undefined, taken as 0)", 0.0),
}


def glue_columns(spec: glue.GlueTask) -> dict[str, str]:
    roles = ("text", "text_pair")[: len(spec.columns)]
    return {**dict(zip(roles, spec.columns, strict=True)), "label": "label", "idx": "idx"}


def reported_metrics(num_labels: int, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """What a task with `num_labels` classes reports: accuracy, binary F1 when there are two classes, and `extra`
    (GLUE's own metrics for the task); regression (1): Pearson and Spearman."""
    if num_labels == 1:
        return REGRESSION_METRICS
    base = ("accuracy", "f1") if num_labels == 2 else ("accuracy",)
    return (*base, *[m for m in extra if m not in base])


@register
class ClassificationType(TaskType):
    name = "classification"
    title = "classification"
    roles = ("text", "text_pair", "label", "idx")
    required_roles = ("text", "label")
    input_roles = ("text", "text_pair")
    peft_task_type = "SEQ_CLS"
    encoders = True
    bench = "classification"
    vllm_servable = True
    metric_units = {
        "accuracy": "accuracy points", "f1": "F1 points", "matthews_correlation": "Matthews correlation points",
        "pearson": "Pearson correlation points", "spearman": "Spearman correlation points",
    }  # fmt: skip

    # ---- the study
    def known_tasks(self) -> tuple[str, ...]:
        return glue.GLUE_TASKS.names()

    def resolve(self, config: Any, where: str) -> Task:
        at = f"{where}." if where else ""
        source = getattr(config, "source", None)
        options = getattr(config, "options", None) or {}
        if options:
            raise ConfigError(f"{at}options: the classification type takes no options (got {sorted(options)})")
        if source is None:
            if config.name not in glue.GLUE_TASKS:
                raise ConfigError(f"{at}name: {config.name!r} is not a GLUE task ({', '.join(glue.GLUE_TASKS.names())}); "
                                  "a task of your own names its `source` (files or a hub dataset)")  # fmt: skip
            spec = glue.glue_task(config.name, f"{at}name")
            for field in ("columns", "labels"):
                if getattr(config, field, None) is not None:
                    raise ConfigError(f"{at}{field}: GLUE task {config.name!r} has its own {field}; a column mapping "
                                      "and labels go with a `source` of your own")  # fmt: skip
            metrics = reported_metrics(spec.num_labels, spec.metrics)
            task = Task(name=config.name, type=self.name, columns=glue_columns(spec), label_names=spec.label_names,
                        num_labels=spec.num_labels, validation_splits=spec.validation_splits, metrics=metrics,
                        primary_metric=spec.primary_metric, max_length=config.max_length,
                        paper_metric=spec.paper_metric, label_range=spec.label_range)  # fmt: skip
        else:
            task = self._resolve_own(config, at)
        metric = getattr(config, "metric", None)
        if metric is not None:
            if metric not in task.metrics:
                raise ConfigError(f"{at}metric: {metric!r} is not a metric of task {config.name!r}; it reports "
                                  f"{', '.join(task.metrics)}")  # fmt: skip
            task = _replace(task, primary_metric=metric)
        return task

    def _resolve_own(self, config: Any, at: str) -> Task:
        """A user's task: the column mapping fits the type, the label set is declared."""
        columns = self.own_columns(config, at, "a classification task",
                                   f"{list(self.required_roles)} onto your columns, optionally text_pair and idx")  # fmt: skip
        labels = getattr(config, "labels", None)
        if labels is None:
            raise ConfigError(f"{at}labels: a classification task of your own declares its label set: the class names "
                              f"or ids in id order, or `{REGRESSION}` for a real-valued target")  # fmt: skip
        if labels == REGRESSION:
            names: tuple[str, ...] = ()
            num_labels = 1
        else:
            names = tuple(str(x) for x in labels)
            if len(names) < 2:
                raise ConfigError(f"{at}labels: {labels!r}: at least two classes")
            if len(set(names)) != len(names):
                raise ConfigError(f"{at}labels: {labels!r} names a class twice")
            ids = [x for x in labels if isinstance(x, int)]
            if ids and ids != list(range(len(labels))):
                raise ConfigError(f"{at}labels: {labels!r}: ids are 0..{len(labels) - 1} in order (or give names)")
            num_labels = len(names)
        staged = {role: role for role in self.roles if role in columns or role in ("label", "idx")}
        metrics = reported_metrics(num_labels)
        return Task(name=config.name, type=self.name, columns=staged, label_names=names, num_labels=num_labels,
                    validation_splits=("validation",), metrics=metrics, primary_metric=metrics[0],
                    max_length=config.max_length, source=config.source, source_columns=columns)  # fmt: skip

    # ---- the data
    def check_rows(self, task: Task, rows: Sequence[Mapping[str, Any]], where: str) -> list[dict]:
        """Clean rows as staged: the text columns (str), `label` (int class id, or float for regression), `idx`
        (int, unique; a user's rows without an `idx` column get their row number). ConfigError naming `where` and
        the row for a missing column, a label outside the declared set, a repeated idx, an empty split."""
        if not rows:
            raise ConfigError(f"{where}: no rows (an empty split)")
        mapping = _source_columns(task)
        text = [r for r in self.input_roles if r in task.columns]
        wanted = [mapping[r] for r in (*text, "label")] + ([mapping["idx"]] if "idx" in mapping else [])
        lookup = _label_lookup(task) if task.source is not None and not task.is_regression else None
        out, seen = [], set()
        for n, r in enumerate(rows):
            missing = [c for c in wanted if c not in r]
            if missing:
                raise ConfigError(f"{where}: row {n} lacks {missing} (columns of task {task.name}: {wanted})")
            label = _label(task, r[mapping["label"]], lookup, f"{where}: row {n}")
            idx = _int(r[mapping["idx"]], f"{where}: row {n} idx") if "idx" in mapping else n
            if idx in seen:
                raise ConfigError(f"{where}: idx {idx} appears twice")
            seen.add(idx)
            out.append({**{task.columns[role]: _text(r[mapping[role]]) for role in text}, "label": label, "idx": idx})
        return out

    def local_files(self, task: Task, root: Path | None) -> dict[str, Path]:
        """GLUE-format jsonl `<root>/<task>/<split>.jsonl`; `root` None: the packaged synthetic GLUE fixtures."""
        from lorascope import data

        return super().local_files(task, data.FIXTURES if root is None else root)

    # ---- model input
    def encode(self, task: Task, tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int) -> list[dict]:
        """{"idx", "input_ids", "attention_mask", "labels"} per row (see `data.encode_texts` for the ids)."""
        from lorascope import data

        cols = task.text_columns
        ids = data.encode_texts(tokenizer, [[str(r[c]) for r in rows] for c in cols], max_length, task.name)
        cast = float if task.is_regression else int
        return [{"idx": int(r["idx"]), "input_ids": x, "attention_mask": [1] * len(x), "labels": cast(r["label"])}
                for r, x in zip(rows, ids, strict=True)]  # fmt: skip

    def collate(self, task: Task, features: list[dict], pad_id: int, pad_to: int | None = None) -> dict[str, Any]:
        from lorascope import data

        return data.collate(features, pad_id, pad_to, label_dtype="float" if task.is_regression else "long")

    # ---- the model
    def head_size(self, task: Task) -> int:
        return task.num_labels

    def load_model(self, task: Task, model_dir: str | Path, dtype: Any, device: Any) -> Any:
        from lorascope.models import loading

        return loading.load_classifier(model_dir, task.num_labels, dtype, device)

    def meta_model(self, task: Task, config: Mapping[str, Any]) -> Any:
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(cfg)

    # ---- training and evaluation
    def loss(self, task: Task, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        """Cross-entropy (classes) or squared error (regression) summed over the micro-batch, divided by the examples
        in the whole accumulated batch: the accumulated gradient is that of the mean loss over the effective batch."""
        import torch.nn.functional as F

        logits = outputs["logits"].float()
        if task.is_regression:
            loss = F.mse_loss(logits.view(-1), labels.to(logits.device).float().view(-1), reduction="sum")
        else:
            loss = F.cross_entropy(logits, labels.to(logits.device), reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return loss / count

    def evaluate(self, task: Task, model: Any, features: list[dict], *, batch_size: int, pad_id: int,
                 bf16: bool = False, tokenizer: Any = None) -> EvalResult:  # fmt: skip
        """Batches in length order, right-padded to their longest member (with causal attention and the last
        attended token, an example's logits do not depend on its batch); results in input order. Loss: mean
        cross-entropy (float64 of float32 logits), or mean squared error for regression."""
        import torch
        import torch.nn.functional as F

        logits_all = forward_logits(model, features, batch_size, pad_id, bf16, lambda b: self.collate(task, b, pad_id))
        if task.is_regression:
            labels = torch.tensor([float(f["labels"]) for f in features], dtype=torch.float64)
            preds = logits_all[:, 0].double()
            loss = float(F.mse_loss(preds, labels, reduction="mean"))
            values = score(task, labels.numpy(), preds.numpy())
            predictions = [{"idx": int(f["idx"]), "label": float(f["labels"]), "pred": float(preds[i])}
                           for i, f in enumerate(features)]  # fmt: skip
        else:
            labels = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
            loss = float(F.cross_entropy(logits_all.double(), labels, reduction="mean"))
            preds = logits_all.argmax(-1)
            values = score(task, labels.numpy(), preds.numpy())
            predictions = [{"idx": int(f["idx"]), "label": int(f["labels"]), "pred": int(preds[i]),
                            "logits": [float(x) for x in logits_all[i]]} for i, f in enumerate(features)]  # fmt: skip
        return EvalResult(values=values, loss=loss, n=len(features), primary=task.primary_metric, predictions=predictions)

    # ---- the learning gate
    def trivial_baselines(self, task: Task, train_rows: Sequence[Mapping[str, Any]],
                          eval_rows: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:  # fmt: skip
        if task.is_regression:
            return regression_baselines(task, [float(r["label"]) for r in train_rows], [float(r["label"]) for r in eval_rows])
        return class_baselines(task, [int(r["label"]) for r in train_rows], [int(r["label"]) for r in eval_rows], seed)

    def gate(self, task: Task) -> GateFacts:
        trivial, value = TRIVIAL[task.primary_metric]
        return GateFacts(metric=task.primary_metric, units=self.units(task.primary_metric), trivial=trivial,
                         trivial_value=value, best=1.0, label_kind="real" if task.is_regression else "class",
                         unit="pp" if task.primary_metric in ("accuracy", "f1") else "points")  # fmt: skip


# ------------------------------------------------------------------------------------------------ helpers
def _replace(task: Task, **changes: Any) -> Task:
    from dataclasses import replace

    return replace(task, **changes)


def _source_columns(task: Task) -> dict[str, str]:
    """{role: column in the source rows}: a user's mapping, or the staged names (GLUE's source columns are its own)."""
    return dict(task.source_columns if task.source_columns is not None else task.columns)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not an integer")
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not an integer") from None
    if not as_float.is_integer():
        raise ConfigError(f"{where}: {value!r} is not an integer")
    return int(as_float)


def _label_lookup(task: Task) -> dict[str, int]:
    return {name: i for i, name in enumerate(task.label_names)}


def _label(task: Task, value: Any, lookup: Mapping[str, int] | None, where: str) -> int | float:
    """A row's label as staged: a class id in [0, num_labels) or, for regression, a finite float (GLUE STS-B: in
    its 0..5 range; GLUE's unlabelled test rows have -1)."""
    if task.is_regression:
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: label {value!r} is not a number (a regression target)") from None
        if isinstance(value, bool) or not math.isfinite(x):
            raise ConfigError(f"{where}: label {value!r} is not a finite number (a regression target)")
        lo, hi = task.label_range or (-math.inf, math.inf)
        if not lo <= x <= hi:
            raise ConfigError(f"{where}: label {x} is outside {task.name}'s range [{lo:g}, {hi:g}] (unlabelled test rows "
                              "are not usable)")  # fmt: skip
        return x
    if lookup is not None:  # a user's declared label set: names (or ids) in id order
        key = value if isinstance(value, str) else str(_int(value, f"{where} label"))
        if key.strip() not in lookup:
            raise ConfigError(f"{where}: label {value!r} is outside the declared labels {list(task.label_names)}")
        return lookup[key.strip()]
    label = _int(value, f"{where} label")
    if not 0 <= label < task.num_labels:
        raise ConfigError(f"{where}: label {label} is outside 0..{task.num_labels - 1} of {task.name} (unlabelled test "
                          "rows are not usable)")  # fmt: skip
    return label


def score(task: Task, labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """Every metric the task reports (`task.metrics`), by `metrics.glue`'s functions, in the task's order."""
    return {name: float(glue.GLUE_METRICS[name](labels, preds)) for name in task.metrics}


def forward_logits(model: Any, features: list[dict], batch_size: int, pad_id: int, bf16: bool, collate) -> Any:
    """float32 logits [n, outputs] of `model` on `features`, in input order (`base.batched_forward`)."""
    import torch

    from lorascope.tasks.base import batched_forward

    take = lambda outputs, j, feature: outputs["logits"][j].float().cpu()  # noqa: E731
    return torch.stack(batched_forward(model, features, batch_size, bf16, collate, take))


def class_baselines(task: Task, train_labels: list[int], eval_labels: list[int], seed: int) -> dict[str, Any]:
    """Majority-class and uniform-random baselines on `eval_labels`: the majority class of the training labels, and
    uniform random guessing, both as exact expectations and as one seeded draw. For random guessing with K classes the
    expected accuracy is 1/K exactly; the expected F1 (class 1 positive) is the exact expectation over the binomial
    counts TP ~ Bin(n1, 1/K), FP ~ Bin(n0, 1/K): E[2TP / (TP + FP + n1)]; Matthews of a constant prediction is 0."""
    from scipy.stats import binom

    num_labels = task.num_labels
    y = np.asarray(eval_labels, dtype=np.int64)
    majority = int(np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_labels).argmax())
    n1 = int((y == 1).sum())
    n0 = int(y.size - n1)
    p = 1.0 / num_labels
    tp = np.arange(n1 + 1)
    fp = np.arange(n0 + 1)
    joint = np.outer(binom.pmf(tp, n1, p), binom.pmf(fp, n0, p))
    denom = tp[:, None] + fp[None, :] + n1
    f1 = np.divide(2.0 * tp[:, None], denom, out=np.zeros(joint.shape), where=denom > 0)
    draw = np.random.default_rng(seed).integers(0, num_labels, size=y.size)
    expected = {"accuracy": p, "f1": float((joint * f1).sum()), "matthews_correlation": 0.0}
    return {
        "n": int(y.size),
        "positives": n1,
        "majority": {"class": majority, **score(task, y, np.full_like(y, majority))},
        "uniform_random": {
            "expected": {m: expected[m] for m in task.metrics},
            "draw": {"seed": seed, **score(task, y, draw)},
        },
    }


def regression_baselines(task: Task, train_labels: list[float], eval_labels: list[float]) -> dict[str, Any]:
    """The constant predictor: the training labels' mean, on the evaluated labels. Its mean squared error, and its
    correlations (undefined for a constant; 0 by the gate's convention)."""
    y = np.asarray(eval_labels, dtype=np.float64)
    mean = float(np.mean(train_labels))
    return {"n": int(y.size), "train_mean": mean,
            "constant": {"prediction": mean, "mse": float(np.mean((y - mean) ** 2)), **dict.fromkeys(task.metrics, 0.0)},
            "label_mean": float(y.mean()), "label_sd": float(y.std(ddof=1)) if y.size > 1 else None}  # fmt: skip


def plain_task(num_labels: int = 2, name: str = "classification") -> Task:
    """A classification task of `num_labels` classes (1: regression) outside any study: what `training.fit` and
    `training.evaluate_features` assume when no task is given."""
    metrics = reported_metrics(num_labels)
    return Task(name=name, type=ClassificationType.name, columns={"text": "text", "label": "label", "idx": "idx"},
                label_names=tuple(str(i) for i in range(num_labels)) if num_labels > 1 else (),
                num_labels=num_labels, validation_splits=("validation",), metrics=metrics, primary_metric=metrics[0])  # fmt: skip
