"""Training and evaluation: one code path for both methods, used by the sanity, hpo and train phases.

How a model trains (`fit`), whatever the method (full or LoRA) and whoever calls it:
  * HF `Trainer` (`ClassifierTrainer`): bf16 autocast with fp32 master weights on CUDA, fp32 on CPU
    (`training.precision`); activation (gradient) checkpointing as a study option; AdamW (`adamw_torch_fused` on
    CUDA, `adamw_torch` on CPU, `adamw_8bit` when bitsandbytes is installed); cosine schedule with a linear
    warmup over `warmup_ratio` of the steps; weight decay; gradient clipping at `training.max_grad_norm` (0.3).
  * Effective batch = micro-batch x gradient accumulation. The micro-batch is a memory knob
    (`training.micro_batch`), the effective batch a hyperparameter: the micro-batch used is the largest divisor of
    the effective batch that is <= `training.micro_batch`, so the product is always exact. The loss is the mean
    cross-entropy over the whole effective batch (summed per micro-batch, divided by the examples in the
    accumulated batch), so a short last micro-batch is weighted correctly.
  * Dynamic padding (each batch right-padded to its longest member) with length-grouped batches
    (`SeededLengthGroupedSampler`: HF's grouping, but its permutation comes from (data seed, epoch) only, not from
    the global RNG, so a run resumed in any epoch replays the same batches).
  * `training.evals_per_epoch` dev evaluations per epoch; each one writes a checkpoint; early stopping
    (`training.early_stopping_patience`) and the final model are chosen on dev loss (`load_best_model_at_end`).
  * Deterministic on CPU for a seed: the caller seeds before building the model (`transformers.set_seed`), the
    Trainer runs with `full_determinism` on CPU (deterministic torch algorithms), and the data order depends only
    on the seed. On CUDA, determinism is not forced (it costs speed); results match to float tolerance.

How a model is evaluated (`evaluate`, `evaluate_features`): the same function for both methods, for every dev
evaluation during training, for the HPO objective and for the reported numbers. Accuracy, binary F1 (positive class
1), mean cross-entropy and per-example predictions; batches sorted by length and right-padded (with causal attention
and classification at the last attended token, an example's logits do not depend on its batch).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import resource
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from lorascope import data
from lorascope.errors import ConfigError, IntegrityError, LorascopeError
from lorascope.log import Logger
from lorascope.study import GLUE_TASKS, HPO_PARAMS, REQUIRED_PARAMS, TaskConfig, param_problem

if TYPE_CHECKING:
    from lorascope.phases import PhaseContext
    from lorascope.study import Study, TrainingConfig

CHECKPOINT_PREFIX = "checkpoint"


# ------------------------------------------------------------------------------------------------ seeds, params
def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from the sha256 of the parts (stable across processes and machines, unlike Python's hash())."""
    text = "\x1f".join(str(p) for p in parts)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def resolve_params(study: Study, method_name: str, chosen: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The hyperparameters of one run: `chosen` (HPO's pick) over `training.defaults[method]`, LoRA alpha/dropout
    falling back to the method's own config. Raises ConfigError naming what is missing or out of range."""
    method = study.method(method_name)
    merged = {**study.training.defaults.get(method_name, {}), **dict(chosen or {})}
    unknown = sorted(set(merged) - HPO_PARAMS)
    if unknown:
        raise ConfigError(f"method {method_name!r}: unknown hyperparameter(s) {unknown}; known: {sorted(HPO_PARAMS)}")
    missing = [k for k in REQUIRED_PARAMS if k not in merged]
    if missing:
        raise ConfigError(
            f"method {method_name!r}: no value for {missing}: give them in training.defaults.{method_name} "
            f"(used when hpo.enabled is false, and for parameters hpo.spaces.{method_name} does not search)"
        )
    params: dict[str, Any] = {
        "learning_rate": float(merged["learning_rate"]),
        "warmup_ratio": float(merged.get("warmup_ratio", 0.0)),
        "weight_decay": float(merged.get("weight_decay", 0.0)),
        "effective_batch": int(merged["effective_batch"]),
        "epochs": int(merged["epochs"]) if float(merged["epochs"]).is_integer() else float(merged["epochs"]),
    }
    if method.kind == "lora":
        params["lora_alpha"] = float(merged.get("lora_alpha", method.alpha))
        params["lora_dropout"] = float(merged.get("lora_dropout", method.dropout))
    for name, value in params.items():  # the same rules the study validator applies (study.PARAM_RULES)
        if problem := param_problem(name, value):
            raise ConfigError(f"method {method_name!r}: {problem}")
    return params


def batch_layout(effective_batch: int, micro_batch: int) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) with product exactly `effective_batch`: the largest divisor of
    the effective batch that fits the micro-batch limit."""
    per_device = max(d for d in range(1, min(effective_batch, micro_batch) + 1) if effective_batch % d == 0)
    return per_device, effective_batch // per_device


def use_bf16(training: TrainingConfig, device: torch.device) -> bool:
    """bf16 autocast (fp32 master weights) on CUDA for `precision: auto`; `bf16` forces it, `fp32` turns it off."""
    if training.precision == "bf16":
        return True
    if training.precision == "fp32":
        return False
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def optimizer_name(training: TrainingConfig, device: torch.device) -> str:
    """The HF `optim` for the study's optimizer on this device. ConfigError if `adamw_8bit` lacks bitsandbytes."""
    name = training.optimizer
    if name == "adamw_8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "training.optimizer is 'adamw_8bit' but bitsandbytes is not installed "
                "(pip install bitsandbytes, or use adamw_torch_fused / adamw_torch)"
            )
        return "adamw_bnb_8bit"
    if name == "adamw_torch_fused" and device.type != "cuda":
        return "adamw_torch"  # the fused kernel is the CUDA path; plain AdamW computes the same update on CPU
    return name


def check_training(study: Study, device: torch.device) -> None:
    """Cheap checks of the training section for this device, before any model loads."""
    optimizer_name(study.training, device)


def configure_torch(env: Mapping[str, str]) -> None:
    """Thread count from LORASCOPE_TORCH_THREADS (the local runner sets it when it runs indexes in parallel)."""
    raw = env.get("LORASCOPE_TORCH_THREADS")
    if raw:
        try:
            torch.set_num_threads(max(1, int(raw)))
        except ValueError:
            raise ConfigError(f"LORASCOPE_TORCH_THREADS={raw!r} is not an integer") from None


# ------------------------------------------------------------------------------------------------ metrics, eval
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
    """Evaluate raw GLUE examples (`data.load_split` rows): tokenized exactly as in training (`data.encode`, the
    task's max_length), then `evaluate_features`. The one evaluation for both methods, HPO and the report."""
    name = task.name if isinstance(task, TaskConfig) else task
    if max_length is None:
        max_length = task.max_length if isinstance(task, TaskConfig) else 384
    features = data.encode(tokenizer, name, examples, max_length)
    return evaluate_features(model, features, batch_size, pad_id=int(tokenizer.pad_token_id), bf16=bf16)


# ------------------------------------------------------------------------------------------------ trainer
class SeededLengthGroupedSampler(Sampler):
    """HF's length grouping (random permutation, mega-batches sorted by length, longest batch first) with the
    permutation drawn from a generator seeded by (seed, epoch). The Trainer calls `set_epoch` at every epoch,
    also after skipping the batches a resumed run already trained on."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        g = torch.Generator()
        g.manual_seed(stable_seed("length-grouped", self.seed, self.epoch))
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=g))


def classification_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Cross-entropy summed over the micro-batch and divided by the examples in the whole accumulated batch, so the
    accumulated gradient is that of the mean loss over the effective batch."""
    logits = outputs["logits"].float()
    loss = F.cross_entropy(logits, labels.to(logits.device), reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
    return loss / count


class ClassifierTrainer(Trainer):
    """`Trainer` with the shared loss, the seeded length-grouped sampler, and evaluation through
    `evaluate_features` (so dev metrics during training, early stopping and the best model use the same code as the
    final report)."""

    def __init__(self, *args: Any, pad_id: int, **kwargs: Any) -> None:
        super().__init__(*args, compute_loss_func=classification_loss, **kwargs)
        self.pad_id = pad_id
        self.model_accepts_loss_kwargs = False  # the loss above handles accumulation; forward gets no loss kwargs

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length":
            lengths = [len(f["input_ids"]) for f in dataset]
            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return SeededLengthGroupedSampler(
                lengths, batch, seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed
            )
        return super()._get_train_sampler(train_dataset)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        features = eval_dataset if eval_dataset is not None else self.eval_dataset
        t0 = time.perf_counter()
        result = evaluate_features(
            self.model, list(features), self.args.per_device_eval_batch_size, self.pad_id, bf16=self.args.bf16
        )
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in result.metrics().items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - t0, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


@dataclass(frozen=True)
class Plan:
    """One training run beyond the model and the data."""

    learning_rate: float
    effective_batch: int
    epochs: float = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    lr_scheduler: str | None = None  # None: training.lr_scheduler
    max_steps: int | None = None  # cap on optimizer steps; None: training.max_steps
    evaluate: bool = True  # dev evaluations + checkpoints + early stopping + best model at the end
    resumable: bool = True  # checkpoints hold optimizer, scheduler and RNG state; False: weights only (HPO trials)
    logging_steps: int | None = None  # None: every evaluation

    @classmethod
    def from_params(cls, params: Mapping[str, Any], seed: int, **kwargs: Any) -> Plan:
        return cls(
            learning_rate=params["learning_rate"],
            effective_batch=params["effective_batch"],
            epochs=params["epochs"],
            warmup_ratio=params.get("warmup_ratio", 0.0),
            weight_decay=params.get("weight_decay", 0.0),
            seed=seed,
            **kwargs,
        )


def schedule(training: TrainingConfig, plan: Plan, n_train: int) -> dict[str, int]:
    """Micro-batch, accumulation, optimizer steps per epoch, total steps and the evaluation interval, computed the
    way the Trainer counts them (ceil(ceil(n / micro) / accumulation) steps per epoch)."""
    per_device, accum = batch_layout(plan.effective_batch, training.micro_batch)
    micro_batches = math.ceil(n_train / per_device)
    steps_per_epoch = max(1, math.ceil(micro_batches / accum))
    total = math.ceil(plan.epochs * steps_per_epoch)
    cap = plan.max_steps or training.max_steps  # a plan's own cap (sanity) replaces the study's
    capped = min(total, cap) if cap else total
    return {
        "micro_batch": per_device,
        "grad_accum": accum,
        "steps_per_epoch": steps_per_epoch,
        "max_steps": capped,
        "capped": int(capped < total),
        "eval_steps": max(1, steps_per_epoch // training.evals_per_epoch),
    }


def training_arguments(
    training: TrainingConfig, plan: Plan, output_dir: Path, device: torch.device, n_train: int
) -> TrainingArguments:
    s = schedule(training, plan, n_train)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=s["micro_batch"],
        per_device_eval_batch_size=training.eval_batch,
        gradient_accumulation_steps=s["grad_accum"],
        learning_rate=plan.learning_rate,
        weight_decay=plan.weight_decay,
        warmup_steps=float(plan.warmup_ratio),  # a float in [0, 1) is a ratio of the total steps (transformers 5)
        lr_scheduler_type=plan.lr_scheduler or training.lr_scheduler,
        max_grad_norm=training.max_grad_norm,
        num_train_epochs=float(plan.epochs),
        max_steps=s["max_steps"] if s["capped"] else -1,
        optim=optimizer_name(training, device),
        bf16=use_bf16(training, device),
        use_cpu=device.type == "cpu",
        seed=plan.seed,
        data_seed=plan.seed,
        full_determinism=device.type == "cpu",
        activation_checkpointing=training.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if training.group_by_length else "random",
        logging_strategy="steps",
        logging_steps=plan.logging_steps or s["eval_steps"],
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=device.type == "cuda",
        remove_unused_columns=False,
        restore_callback_states_from_checkpoint=True,  # early-stopping patience counter survives a resume
    )
    if plan.evaluate:
        kwargs.update(
            eval_strategy="steps",
            eval_steps=s["eval_steps"],
            save_strategy="steps",
            save_steps=s["eval_steps"],
            save_total_limit=2,  # the best checkpoint is always kept on top
            save_only_model=not plan.resumable,
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
        )
    else:
        kwargs.update(eval_strategy="no", save_strategy="no")
    return TrainingArguments(**kwargs)


class StepTimer(TrainerCallback):
    """Time spent in optimizer steps (forward, backward, update), without evaluations and checkpoint writes."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self._t0: float | None = None

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._t0 is not None:
            self._sync()
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None


class LogLines(TrainerCallback):
    """Trainer logs as grep-able lines: `step=40 loss=0.52 lr=0.0004` and `step=40 eval_loss=0.61 eval_f1=0.7`."""

    def __init__(self, log: Logger) -> None:
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "eval_loss" in logs:
            self.log.debug("eval", step=state.global_step, eval_loss=logs["eval_loss"], eval_accuracy=logs.get("eval_accuracy"),
                     eval_f1=logs.get("eval_f1"))  # fmt: skip
        elif "loss" in logs:
            self.log.debug("train", step=state.global_step, epoch=round(state.epoch or 0.0, 3), loss=logs["loss"],
                     lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"))  # fmt: skip


@dataclass
class FitResult:
    model: torch.nn.Module  # with the best checkpoint's weights when the plan evaluates
    global_step: int
    best_step: int | None
    resumed_from_step: int | None
    train_seconds: float  # wall clock of trainer.train(): steps, evaluations, checkpoint writes and uploads
    step_seconds: float  # optimizer steps only
    tokens: int  # non-pad training tokens processed in this call
    schedule: dict[str, int]
    log_history: list[dict[str, Any]]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.step_seconds if self.step_seconds > 0 else 0.0


def checkpoint_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "trainer_state.json").read_text())


def training_finished(state: Mapping[str, Any]) -> bool:
    """Whether a checkpoint was written when training stopped (early stopping or the last step): resuming from it
    must not train any further (the Trainer would reset its stop flag and run on)."""
    control = state.get("stateful_callbacks", {}).get("TrainerControl", {}).get("args", {})
    return bool(control.get("should_training_stop")) or state["global_step"] >= state.get("max_steps", math.inf)


def load_checkpoint_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a Trainer checkpoint's weights into `model`: a PEFT adapter (LoRA, with the score head) or the whole
    model (full fine-tuning), as the Trainer itself loads its best checkpoint."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        missing: list[str] = []
    else:
        result = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        unexpected, missing = list(result.unexpected_keys), list(result.missing_keys)
    if unexpected or missing:
        raise IntegrityError(
            f"checkpoint {folder}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def fit(
    model: torch.nn.Module,
    train_features: list[dict],
    dev_features: list[dict] | None,
    *,
    training: TrainingConfig,
    plan: Plan,
    pad_id: int,
    output_dir: Path,
    device: torch.device,
    log: Logger,
    callbacks: Sequence[TrainerCallback] = (),
    resume_from: Path | None = None,
) -> FitResult:
    """Train `model` (already on `device`, fp32 weights; seed before building it) on encoded examples. With
    `plan.evaluate`, evaluates on `dev_features` `evals_per_epoch` times per epoch, early-stops on dev loss and ends
    with the best checkpoint's weights loaded. `resume_from`: a checkpoint folder written by an earlier run."""
    if not train_features:
        raise ConfigError("no training examples")
    if plan.evaluate and not dev_features:
        raise ConfigError("no dev examples to evaluate on")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    args = training_arguments(training, plan, output_dir, device, len(train_features))
    timer = StepTimer(device)
    all_callbacks: list[TrainerCallback] = [timer, LogLines(log), *callbacks]
    if plan.evaluate:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience))
    trainer = ClassifierTrainer(
        model=model,
        args=args,
        data_collator=partial(data.collate, pad_id=pad_id),
        train_dataset=train_features,
        eval_dataset=dev_features if plan.evaluate else None,
        callbacks=all_callbacks,
        pad_id=pad_id,
    )
    trainer.remove_callback(PrinterCallback)  # LogLines writes the log lines
    s = schedule(training, plan, len(train_features))
    log.debug("fit start", examples=len(train_features), micro_batch=s["micro_batch"], grad_accum=s["grad_accum"],
        steps_per_epoch=s["steps_per_epoch"], max_steps=s["max_steps"], eval_steps=s["eval_steps"] if plan.evaluate else None,
        lr=plan.learning_rate, bf16=args.bf16, optim=getattr(args.optim, "value", args.optim))  # fmt: skip
    resumed = int(resume_from.name.rsplit("-", 1)[1]) if resume_from else None
    if resume_from is not None and training_finished(state := checkpoint_state(resume_from)):
        best = state.get("best_model_checkpoint") or str(resume_from)
        load_checkpoint_weights(trainer.model, Path(best))
        log("training had finished at this checkpoint: loaded the best one, nothing to train", step=state["global_step"],
            best_step=state.get("best_global_step"))  # fmt: skip
        return FitResult(model=trainer.model, global_step=state["global_step"], best_step=state.get("best_global_step"),
                         resumed_from_step=resumed, train_seconds=0.0, step_seconds=0.0, tokens=0, schedule=s,
                         log_history=state.get("log_history", []))  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except LorascopeError:
        raise
    except Exception as exc:
        if _disk_full(exc, output_dir):
            said = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
            raise LorascopeError(f"training: cannot write a checkpoint under {output_dir}: no space left on device "
                                 f"({shutil.disk_usage(output_dir).free // 2**20} MiB free; the work dir, "
                                 f"--work-dir / LORASCOPE_WORK_DIR, needs room for two checkpoints) [{said}]") from None  # fmt: skip
        raise
    seconds = time.perf_counter() - t0
    tokens = int(trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0))
    return FitResult(
        model=trainer.model,
        global_step=trainer.state.global_step,
        best_step=trainer.state.best_global_step,
        resumed_from_step=resumed,
        train_seconds=seconds,
        step_seconds=timer.seconds,
        tokens=tokens,
        schedule=s,
        log_history=trainer.state.log_history,
    )


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failure while training was a full disk: ENOSPC anywhere in the chain, the message torch or safetensors
    write for it, or a folder with almost no space left."""
    import errno

    seen: BaseException | None = exc
    for _ in range(20):  # the chain, bounded
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        text = str(seen)
        if "No space left" in text or "StorageFull" in text or "os error 28" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < 16 * 2**20  # torch.save reports a full disk as "unexpected pos"
    except OSError:
        return False


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA `max_memory_allocated` since `fit` reset it, or the process's peak RSS on
    CPU (Linux ru_maxrss, whole process lifetime)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_peak_rss"


def num_labels(task: str) -> int:
    return int(GLUE_TASKS[task]["num_labels"])


# ------------------------------------------------------------------------------------------------ checkpoints in the store
def checkpoint_step(name: str) -> int | None:
    prefix = CHECKPOINT_PREFIX + "-"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return None


class StoreCheckpoints(TrainerCallback):
    """After every Trainer save, upload the checkpoint folder as the bundle `checkpoints/<cell>/checkpoint-<step>`
    (a committed bundle, so a half-uploaded checkpoint is invisible), then delete older checkpoint bundles: the
    last `keep` and the best one (needed by `load_best_model_at_end` after a resume) stay."""

    def __init__(self, ctx: PhaseContext, cell: str, keep: int = 2) -> None:
        self.ctx = ctx
        self.cell = cell
        self.keep = keep
        self.seconds = 0.0

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}-{step}"
        t0 = time.perf_counter()
        meta = {"step": step, "best_step": state.best_global_step, "epoch": state.epoch}
        with self.ctx.writer("checkpoints", self.cell, folder.name, phase="train", meta=meta) as w:
            w.add_dir(folder)
        removed = prune_checkpoints(self.ctx, self.cell, keep=self.keep, best_step=state.best_global_step)
        self.seconds += time.perf_counter() - t0
        self.ctx.log.debug("checkpoint synced", step=step, best_step=state.best_global_step, removed=",".join(map(str, removed)) or None,
                     seconds=round(time.perf_counter() - t0, 2))  # fmt: skip


def committed_checkpoints(ctx: PhaseContext, cell: str) -> dict[int, Any]:
    """step -> committed checkpoint bundle of a cell."""
    out = {}
    for b in ctx.store.bundles(ctx.key("checkpoints", cell) + "/"):
        step = checkpoint_step(b.key.rsplit("/", 1)[1])
        if step is not None:
            out[step] = b
    return dict(sorted(out.items()))


def prune_checkpoints(ctx: PhaseContext, cell: str, keep: int, best_step: int | None) -> list[int]:
    """Delete checkpoint folders older than the newest `keep` committed ones, except the best. The commit goes
    first, so a reader never sees a commit whose files are gone."""
    base = ctx.key("checkpoints", cell)
    steps = sorted(
        {
            s
            for o in ctx.store.backend.list(base + "/")
            if (s := checkpoint_step(o.key[len(base) + 1 :].split("/", 1)[0])) is not None
        }
    )
    committed = list(committed_checkpoints(ctx, cell))
    kept = set(committed[-keep:]) | ({best_step} if best_step is not None else set())
    if not committed:
        return []
    newest_kept = max(committed[-keep:])
    removed = []
    for s in steps:
        if s in kept or s > newest_kept:  # a newer folder may be an upload in progress
            continue
        key = f"{base}/{CHECKPOINT_PREFIX}-{s}"
        ctx.store.backend.delete_prefix(f"{key}/_COMMIT.json")
        ctx.store.backend.delete_prefix(f"{key}/")
        removed.append(s)
    return removed


def restore_checkpoint(ctx: PhaseContext, cell: str, output_dir: Path) -> Path | None:
    """Download the latest intact committed checkpoint of `cell` (and the best one it refers to) into a fresh
    `output_dir`; returns the folder to resume from, or None when the store has no usable checkpoint. A checkpoint
    whose files fail their checksum (or whose trainer_state.json is unreadable) is skipped with a log line and the
    next older one is tried, so one damaged upload costs one checkpoint interval, not the cell."""
    bundles = committed_checkpoints(ctx, cell)
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)

    def fetch(bundle: Any, dest: Path) -> None:
        corrupt = bundle.download(dest, verify=True, workers=ctx.store.workers)
        if corrupt:
            raise IntegrityError(f"checkpoint {bundle.key}: checksum mismatch in {corrupt}")

    for step in sorted(bundles, reverse=True):
        dest = output_dir / f"{CHECKPOINT_PREFIX}-{step}"
        try:
            fetch(bundles[step], dest)
            state_file = dest / "trainer_state.json"
            state = json.loads(state_file.read_text())
        except (IntegrityError, OSError, ValueError) as exc:
            ctx.log.warning("checkpoint unusable, trying the previous one", step=step, error=str(exc)[:200])
            shutil.rmtree(dest, ignore_errors=True)
            continue
        best = state.get("best_global_step")
        best_dir = output_dir / f"{CHECKPOINT_PREFIX}-{best}" if best else None
        if best and best != step:
            try:
                if best not in bundles:
                    raise IntegrityError("not in the store")
                fetch(bundles[best], best_dir)
            except IntegrityError as exc:
                ctx.log.warning("best checkpoint unusable; the last one will be kept", best_step=best, error=str(exc)[:200])
                shutil.rmtree(best_dir, ignore_errors=True)
                best_dir = None
        # the recorded path is the old machine's; point it at the local copy (the Trainer ignores a missing path)
        state["best_model_checkpoint"] = str(best_dir) if best_dir else None
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        return dest
    return None
