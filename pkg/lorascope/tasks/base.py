"""What a task type is: one protocol (`TaskType`), one registry (`TASK_TYPES`), and a study task resolved (`Task`).

A study's task has a type (`classification`, `extractive_qa`, `generation`); the type is one module of this package
that defines a `TaskType` subclass and registers it with `@register`. Everything the rest of the package asks about a
task is a field or a method of its type, and every caller gets the type from the registry (`task.task_type`, i.e.
`TASK_TYPES.get(task.type)`), never by comparing a name. Adding a type is adding one module here (plus its tests):
`lorascope.tasks` imports every module of the package, so nothing else is edited.

THE CONTRACT a type implements (every method takes the resolved `Task` first; classification.py is the reference
implementation, read it next to this list):

  the study      `name`, `title`; `resolve(config, where)`: the study's `TaskConfig` -> `Task` (the type's own facts:
                 a built-in table such as GLUE's, or the user's `source`/`columns`/`labels`); raise ConfigError naming
                 `where` (`tasks.<i>`) and the field for anything that does not fit the type (unknown metric, a column
                 mapping missing a role the type needs, labels on a type without labels). `known_tasks()`: the task
                 names the type knows without a `source` (classification: the GLUE tasks). `options`: a pydantic
                 class (`lorascope.schema.Strict`) for the type's own knobs in `tasks[].options` (QA's stride,
                 generation's decoding), or None; `resolve` validates them into `Task.options`.
  its columns    `roles`: the column roles of the staged rows (`Task.columns` maps each to the staged column name);
                 `required_roles`: those a column mapping must give. `check_rows(task, rows, where)`: the rows of one
                 source split at the door -> clean rows as they are staged (JSON-safe dicts, one int `idx` each, unique);
                 ConfigError naming `where` (the file or hub split) and the row for a missing column, an empty split, a
                 label outside the declared set. `source_splits(task)`: the splits a source must provide, "train" first,
                 then `task.validation_splits` (the first is the reported split, staged as `validation`).
  its examples   `example_key(task, row)`: the rows that make one example (generation: every (MR, reference) row of one
                 MR), None when each row is one. The stage phase carves dev from train and applies `train_samples` and
                 `eval_samples`, and the extract phase draws `extraction.examples`, by example (`data.split_dev`,
                 `data.subsample`), so an MR's references never straddle two splits and a cap keeps whole examples.
  its sources    for a task the type knows by name, read from the study's `data` section: `local_files(task, root)`,
                 {split: path} of its files under `data.path` (`root`), or of the fixtures the package ships when
                 `root` is None (`data.path: builtin`); `hub_source(task, data)`, (dataset, config, revision,
                 {our split: the dataset's split}) for `data.source: hub`. A task of the user's own names its source
                 (`tasks[].source`: local JSONL/CSV files per split, or a hub dataset at a pinned revision) and a
                 column mapping onto the type's roles; reading it is `lorascope.data`'s, the check `check_rows`.
  model input    `encode(task, tokenizer, rows, max_length)` -> features, one dict per row (or per window: a QA type may
                 yield several per example; each carries the example's `idx`): `idx`, `input_ids`, `attention_mask`,
                 the targets it trains on (under `labels`: whatever `loss` reads), optionally `pool_mask` (1 at the
                 positions extraction pools, default the attention mask: classification pools the input, QA question
                 and context, generation the prompt) and anything `evaluate` needs (references, offsets). Decoders
                 build pairs from ids, `BOS s1 EOS s2` (`lorascope.data.encode_decoder_texts`), encoders use the
                 tokenizer's own template (`lorascope.data.is_encoder_tokenizer`). The ids depend on the tokenizer and
                 the text only: base and fine-tuned models see the same tokens.
                 `extraction_features(task, tokenizer, rows, max_length)`: what the extract phase pools (default:
                 `encode`; generation: the prompt without its target). `collate(task, features, pad_id, pad_to)`:
                 right-padded tensors, the model's input keys plus `labels` (and `pool_mask` when features have it).
  the model      `peft_task_type` (PEFT's TaskType member: SEQ_CLS, QUESTION_ANS, CAUSAL_LM; `methods.apply_method`
                 passes it to the method kind), `encoders` (whether encoder models are supported), `load_model(task,
                 model_dir, dtype, device)` (the head and model class: classification = AutoModelForSequenceClassification
                 through `models.loading` with last-attended pooling), `meta_model(task, config)` (the same class on the
                 meta device, for preflight's method checks), `head_size(task)` (outputs of the head: labels, 1 for
                 regression, 2 for a span head, the vocabulary for a causal LM: None).
  training       `loss(task, outputs, labels, num_items_in_batch)`: summed over the micro-batch and divided by the items
                 of the whole accumulated batch (the Trainer in `training.fit` asks the type).
  evaluation     `evaluate(task, model, features, batch_size=, pad_id=, bf16=, tokenizer=)` -> `EvalResult`: the task's
                 official metrics (fractions in [0, 1] or correlations; a "point" is 0.01 of one), the primary metric,
                 the mean loss and per-example predictions (`{"idx", "label", "pred", ...}`; the learning gate and the
                 H1a example bootstrap read `label` and `pred`). One function for HPO's objective, the reported
                 numbers and every method. `evaluate_during_training` (same arguments): the dev evaluations the Trainer
                 runs while training (early stopping and the best checkpoint on the loss, HPO's pruner on the primary
                 metric); by default `evaluate`, a type whose full evaluation is costly (generation: decoding and the
                 E2E metric set) returns the loss and a bounded estimate of the primary metric.
                 `reported_eval(task, dev, split)`: the reported numbers of a split given the dev evaluation (default:
                 the split's own; extractive QA: the no-answer threshold chosen on dev, applied to the split).
  learning gate  `trivial_baselines(task, train_rows, eval_rows, seed)`: what trivial predictors score on the
                 reported split (sanity.json); `gate(task)`: `GateFacts`, the facts the drift analysis needs in plain
                 values (what a trivial predictor scores, the units of the primary metric and of H1a's margin): the
                 drift phase hands them down, analysis/ imports no task code.
  bench, serving `bench`: which bench applies ("classification": the forward-pass bench; "generation": the generation
                 bench; None: none, the bench phase refuses the study's served task); `vllm_servable`.

Imports no torch at module level: a type imports torch and transformers inside the methods that touch a model, so the
study, the drift and the report phases (slim image) can ask a type about its metrics and units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lorascope.errors import ConfigError
from lorascope.registry import Registry


@dataclass(frozen=True)
class Task:
    """One study task, resolved by its type from the study's `TaskConfig`: every fact the phases need.

    name: the study's task name (cells, store keys). type: the task type's registry name.
    columns: {role: staged column name} of the staged rows, in input order (classification GLUE mrpc:
        {"text": "sentence1", "text_pair": "sentence2", "label": "label"}).
    label_names: class names by id (classification); () for regression and for types without labels.
    num_labels: the head's classes (1: regression; 0 for types without a class head).
    validation_splits: the source's validation split names, the first the reported one (mnli: matched, mismatched);
        staged as `validation` (the first) and under their own names (the others).
    metrics: what the task reports; primary_metric: the HPO objective, the model selection, the learning gate's
        and H1a's unit. paper_metric: the metric a published reference prints for it (None: the primary).
    max_length: token budget of one input. source: the user's data source (a `TaskSource`), None for a task the
        type knows (read from the study's `data` section). options: the type's own knobs (`TaskType.options`).
    label_range: a regression target's range (GLUE STS-B: 0 to 5), None when any finite value goes.
    source_columns: {role: column of the source's rows}, a user's column mapping; None: the source has the staged
        names (a task the type knows).
    """

    name: str
    type: str
    columns: Mapping[str, str]
    label_names: tuple[str, ...]
    num_labels: int
    validation_splits: tuple[str, ...]
    metrics: tuple[str, ...]
    primary_metric: str
    max_length: int = 384
    paper_metric: str | None = None
    source: Any = None
    options: Any = None
    label_range: tuple[float, float] | None = None
    source_columns: Mapping[str, str] | None = None  # {role: the source's column} of a user's task; None: `columns`

    @property
    def task_type(self) -> TaskType:
        return TASK_TYPES.get(self.type)

    @property
    def text_columns(self) -> tuple[str, ...]:
        """The staged columns of the model's input, in input order (every role but the targets and `idx`)."""
        return tuple(c for role, c in self.columns.items() if role in self.task_type.input_roles)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def extra_validation_splits(self) -> tuple[str, ...]:
        """The validation splits beyond the reported one (mnli: validation_mismatched), staged under their names."""
        return self.validation_splits[1:]


@dataclass
class EvalResult:
    """One evaluation: `values` (the task's metrics by name: fractions in [0, 1], correlations in [-1, 1]), the
    primary metric's name, the mean loss, the number of examples and per-example predictions in input order.
    `metrics()` is what metrics.json keeps ({metric..., "loss", "n"}); `metric(name)` one number; a metric is also
    an attribute (`result.accuracy`)."""

    values: dict[str, float]
    loss: float
    n: int
    primary: str
    predictions: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def metrics(self) -> dict[str, float | int]:
        return {**self.values, "loss": self.loss, "n": self.n}

    def metric(self, name: str) -> float:
        if name == "loss":
            return float(self.loss)
        if name not in self.values:
            raise KeyError(f"metric {name!r} not evaluated; evaluated: {sorted(self.values)}")
        return float(self.values[name])

    @property
    def primary_value(self) -> float:
        return self.metric(self.primary)

    def __getattr__(self, name: str) -> float:
        values = self.__dict__.get("values") or {}
        if name in values:
            return float(values[name])
        raise AttributeError(name)


@dataclass(frozen=True)
class GateFacts:
    """What the learning gate and the verdicts need of a task, as plain values (the drift phase writes them into
    the summary's settings; analysis/ reads them from there).

    metric: the primary metric. units: its name as a unit of difference ("accuracy points", "Pearson points"): H1a's
        margin and gaps are in it (a point is 0.01 of the metric); unit: its short form in numbers ("pp" for a share
        such as accuracy or F1, "points" for a correlation). trivial: what a trivial predictor is, in
        words. trivial_value: its score when it does not depend on the data (a correlation: 0.0); None = the best
        constant class predictor on the evaluated examples (accuracy: the majority class share; F1: always the
        positive class), computed from the labels. best: the metric's perfect score (the gate's headroom is
        best - trivial). label_kind: "class" (integer labels and predictions) or "real" (regression).
    """

    metric: str
    units: str
    trivial: str
    trivial_value: float | None
    best: float = 1.0
    label_kind: str = "class"
    unit: str = "pp"

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "units": self.units, "unit": self.unit, "trivial": self.trivial,
                "trivial_value": self.trivial_value, "best": self.best, "label_kind": self.label_kind}  # fmt: skip


class TaskType:
    """One task type. Subclasses set the class attributes and implement the methods (the module docstring is the
    contract; `classification.ClassificationType` the reference)."""

    name: ClassVar[str]  # the `type:` value in a study
    title: ClassVar[str]  # words for people
    roles: ClassVar[tuple[str, ...]]  # column roles of a staged row, in input order, targets last
    required_roles: ClassVar[tuple[str, ...]]  # what a user's column mapping must give
    input_roles: ClassVar[tuple[str, ...]]  # the roles the model reads (the rest are targets)
    peft_task_type: ClassVar[str]  # PEFT's TaskType member name: SEQ_CLS, QUESTION_ANS, CAUSAL_LM
    encoders: ClassVar[bool] = False  # whether encoder models (RoBERTa) are supported
    bench: ClassVar[str | None] = None  # which bench applies: "classification", "generation", or None
    vllm_servable: ClassVar[bool] = False  # whether the vLLM backend can serve the type's cells
    options: ClassVar[type | None] = None  # pydantic class of `tasks[].options`, None: the type takes none
    metric_units: ClassVar[Mapping[str, str]] = {}  # metric -> its points' name ("accuracy" -> "accuracy points")

    # ---- the study
    def known_tasks(self) -> tuple[str, ...]:
        """Task names this type knows without a `source` (classification: the GLUE tasks)."""
        return ()

    def resolve(self, config: Any, where: str) -> Task:
        raise NotImplementedError

    def metric_names(self, task: Task) -> tuple[str, ...]:
        """Every metric `evaluate` returns for the task (what `tasks[].metric` may name)."""
        return task.metrics

    def units(self, metric: str) -> str:
        """A metric's points ("accuracy points"): the unit H1a's margin and the report's gaps are in."""
        return self.metric_units.get(metric, f"{metric} points")

    # ---- the data
    def source_splits(self, task: Task) -> tuple[str, ...]:
        return ("train", *task.validation_splits)

    def own_columns(self, config: Any, at: str, kind: str, maps: str) -> dict[str, str]:
        """A user's column mapping (`config.columns`: {role: source column}), checked against the type's roles:
        ConfigError naming `<at>columns` for a role the type lacks or a required role left unmapped. `kind` and
        `maps` only word the messages ("a generation task", "prompt and reference onto your columns, optionally idx")."""
        columns = dict(getattr(config, "columns", None) or {})
        unknown = sorted(set(columns) - set(self.roles))
        if unknown:
            raise ConfigError(f"{at}columns: {unknown} are not columns of {kind}; its columns are "
                              f"{list(self.roles)} ({', '.join(self.required_roles)} required)")  # fmt: skip
        missing = [r for r in self.required_roles if r not in columns]
        if missing:
            raise ConfigError(f"{at}columns: no source column for {missing} ({kind} maps {maps})")
        return columns

    def check_rows(self, task: Task, rows: Sequence[Mapping[str, Any]], where: str) -> list[dict]:
        raise NotImplementedError

    def example_key(self, task: Task, row: Mapping[str, Any]) -> Any:
        """What makes a staged row part of one example (rows with equal keys stay together when splits are carved and
        capped), or None: every row is an example of its own (classification)."""
        return None

    def local_files(self, task: Task, root: Path | None) -> dict[str, Path]:
        """{source split: file} of a task the type knows: `<root>/<task>/<split>.jsonl` under the study's `data.path`;
        `root` None (`data.path: builtin`): the packaged fixtures, which a type without any refuses."""
        if root is None:
            raise ConfigError(f"data.path: builtin: the package ships no fixtures for task {task.name!r} ({self.name})")
        return {split: Path(root) / task.name / f"{split}.jsonl" for split in self.source_splits(task)}

    def hub_source(self, task: Task, data: Any) -> tuple[str, str | None, str, dict[str, str]]:
        """(dataset, config name, revision, {our split: the dataset's split}) of a task the type knows, for
        `data.source: hub`: by default the study's `data.hub_dataset` with the task's name as config."""
        return data.hub_dataset, task.name, data.revision, {}

    # ---- model input
    def encode(self, task: Task, tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int) -> list[dict]:
        raise NotImplementedError

    def extraction_features(self, task: Task, tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int) -> list[dict]:
        """What the extract phase pools: by default the training encoding (`pool_mask` or the attention mask)."""
        return self.encode(task, tokenizer, rows, max_length)

    def collate(self, task: Task, features: list[dict], pad_id: int, pad_to: int | None = None) -> dict[str, Any]:
        raise NotImplementedError

    # ---- the model
    def head_size(self, task: Task) -> int | None:
        return None

    def load_model(self, task: Task, model_dir: str | Path, dtype: Any, device: Any) -> Any:
        raise NotImplementedError

    def meta_model(self, task: Task, config: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    # ---- training and evaluation
    def loss(self, task: Task, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        raise NotImplementedError

    def evaluate(self, task: Task, model: Any, features: list[dict], *, batch_size: int, pad_id: int,
                 bf16: bool = False, tokenizer: Any = None) -> EvalResult:  # fmt: skip
        raise NotImplementedError

    def reported_eval(self, task: Task, dev: EvalResult, split: EvalResult) -> EvalResult:
        """The reported numbers of an evaluated split given the dev split's evaluation of the same model: by default
        the split's own; extractive QA applies the no-answer threshold chosen on dev (the train phase calls this)."""
        return split

    def evaluate_during_training(self, task: Task, model: Any, features: list[dict], *, batch_size: int, pad_id: int,
                                 bf16: bool = False, tokenizer: Any = None) -> EvalResult:  # fmt: skip
        """A dev evaluation while training (the Trainer's, every `evals_per_epoch`): `evaluate` unless the type
        bounds its cost (it must still return the loss and the primary metric: early stopping and HPO's pruner)."""
        return self.evaluate(task, model, features, batch_size=batch_size, pad_id=pad_id, bf16=bf16, tokenizer=tokenizer)

    # ---- the learning gate
    def trivial_baselines(self, task: Task, train_rows: Sequence[Mapping[str, Any]],
                          eval_rows: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:  # fmt: skip
        raise NotImplementedError

    def gate(self, task: Task) -> GateFacts:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task type {self.name}>"


TASK_TYPES: Registry[TaskType] = Registry("task type")


def register(cls: type[TaskType]) -> type[TaskType]:
    """Class decorator: register one instance of a TaskType under its `name`."""
    TASK_TYPES.add(cls.name, cls())
    return cls


def type_knowing(name: str) -> TaskType | None:
    """The type that knows task `name` without a source (GLUE's names: classification), or None."""
    for _, t in TASK_TYPES.items():
        if name in t.known_tasks():
            return t
    return None


def known_task_names() -> list[str]:
    return [n for _, t in TASK_TYPES.items() for n in t.known_tasks()]


def type_of(config: Any, where: str = "") -> TaskType:
    """The type of a study's task entry: its `type`, else the type that knows its name, else ConfigError."""
    declared = getattr(config, "type", None)
    if declared is not None:
        return TASK_TYPES.get(declared, f"{where}.type" if where else "type")
    found = type_knowing(config.name)
    if found is None:
        raise ConfigError(f"{where + '.' if where else ''}name: {config.name!r} is not a task lorascope knows "
                          f"({', '.join(known_task_names())}); a task of your own names its `source` and `type`")  # fmt: skip
    return found


def resolve(config: Any, where: str = "") -> Task:
    """The study's task entry resolved by its type."""
    return type_of(config, where).resolve(config, where)


def batched_forward(model: Any, features: list[dict], batch_size: int, bf16: bool, collate: Any, take: Any) -> list[Any]:
    """One eval forward pass over `features` for every task type: batches in length order (right-padded by
    `collate`), under no_grad and bf16 autocast when asked, the model in eval mode for the duration; `take(outputs,
    j, feature)` picks row j's result (on the host). Results in input order."""
    import torch

    if not features:
        raise ValueError("evaluate: no examples")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(features)), key=lambda i: (len(features[i]["input_ids"]), i))
    out: list[Any] = [None] * len(features)
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                batch = collate([features[i] for i in rows])
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                    outputs = model(input_ids=batch["input_ids"].to(device),
                                    attention_mask=batch["attention_mask"].to(device))  # fmt: skip
                for j, i in enumerate(rows):
                    out[i] = take(outputs, j, features[i])
    finally:
        model.train(was_training)
    return out
