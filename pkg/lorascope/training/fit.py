"""Fit: build the HF Trainer from a `Plan`, train (resuming from a checkpoint folder), return `FitResult`.

How a model trains (`fit`), whatever the method (full or LoRA) and whoever calls it (sanity, hpo, train):
  * HF `Trainer` (`TaskTrainer`; the loss, the collate and the evaluation are the task type's, `lorascope.tasks`): bf16 autocast with fp32 master weights on CUDA, fp32 on CPU
    (`training.precision`); activation (gradient) checkpointing as a study option; AdamW (`adamw_torch_fused` on
    CUDA, `adamw_torch` on CPU, `adamw_8bit` when bitsandbytes is installed); cosine schedule with a linear
    warmup over `warmup_ratio` of the steps; weight decay; gradient clipping at `training.max_grad_norm` (0.3).
  * Effective batch = micro-batch x gradient accumulation (`hparams.batch_layout`). The loss is the task type's mean
    over the whole effective batch (classification: cross-entropy, or squared error for regression; summed per
    micro-batch, divided by the items in the accumulated batch), so a short last micro-batch is weighted correctly.
  * Dynamic padding (each batch right-padded to its longest member) with length-grouped batches
    (`SeededLengthGroupedSampler`: HF's grouping, but its permutation comes from (data seed, epoch) only, not from
    the global RNG, so a run resumed in any epoch replays the same batches).
  * `training.evals_per_epoch` dev evaluations per epoch; each one writes a checkpoint; early stopping
    (`training.early_stopping_patience`) and the final model are chosen on dev loss (`load_best_model_at_end`).
  * Deterministic on CPU for a seed: the caller seeds before building the model (`transformers.set_seed`), the
    Trainer runs with `full_determinism` on CPU (deterministic torch algorithms), and the data order depends only
    on the seed. On CUDA, determinism is not forced (it costs speed); results match to float tolerance.
  * `training.report_to` goes to the Trainer as is (TensorBoard, MLflow, W&B, ...); lorascope's own record of the
    run is the log history `fit` returns (`FitResult.log_history`, kept as history.json by the train phase).
"""

from __future__ import annotations

import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Sampler
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from lorascope import termination
from lorascope.errors import ConfigError, LorascopeError
from lorascope.log import Logger
from lorascope.tasks import Task
from lorascope.tasks.classification import plain_task
from lorascope.training.checkpoints import checkpoint_state, load_checkpoint_weights, training_finished
from lorascope.training.evaluation import evaluate_features, task_of
from lorascope.training.hparams import Plan, optimizer_name, schedule, stable_seed, use_bf16
from lorascope.training.sigterm import SigtermCheckpoint

if TYPE_CHECKING:
    from lorascope.study import TrainingConfig


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
    accumulated gradient is that of the mean loss over the effective batch (the classification type's loss)."""
    return plain_task().task_type.loss(plain_task(), outputs, labels, num_items_in_batch)


class TaskTrainer(Trainer):
    """`Trainer` with the task type's loss and collate, the seeded length-grouped sampler, and evaluation through the
    task type's `evaluate` (so dev metrics during training, early stopping and the best model use the same code as the
    final report)."""

    def __init__(self, *args: Any, pad_id: int, task: Task, tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, compute_loss_func=partial(task.task_type.loss, task), **kwargs)
        self.pad_id = pad_id
        self.task = task
        self.eval_tokenizer = tokenizer
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
        result = evaluate_features(self.model, list(features), self.args.per_device_eval_batch_size, self.pad_id,
                                   bf16=self.args.bf16, task=self.task, tokenizer=self.eval_tokenizer,
                                   during_training=True)  # fmt: skip
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in result.metrics().items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - t0, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


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
        report_to=list(training.report_to),  # the study's trackers ("none" by default)
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
            self.log.debug("eval", step=state.global_step, **{k: v for k, v in logs.items() if k.startswith("eval_")
                                                              and not k.endswith(("_runtime", "_n"))})  # fmt: skip
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
    task: Task | None = None,
    tokenizer: Any = None,
) -> FitResult:
    """Train `model` (already on `device`, fp32 weights; seed before building it) on encoded examples. With
    `plan.evaluate`, evaluates on `dev_features` `evals_per_epoch` times per epoch, early-stops on dev loss and ends
    with the best checkpoint's weights loaded. `resume_from`: a checkpoint folder written by an earlier run. `task`: the
    resolved task (its type's loss, collate and evaluation); None = a plain classification task of the model's label
    count. `tokenizer`: for a type whose evaluation decodes text (generation)."""
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
    if (stop := termination.current()) is not None:  # SIGTERM: last checkpoint, then stop (after the phase's callbacks)
        all_callbacks.append(SigtermCheckpoint(stop, log))
    task = task_of(task, model)
    trainer = TaskTrainer(
        model=model,
        args=args,
        data_collator=lambda batch: task.task_type.collate(task, batch, pad_id),
        train_dataset=train_features,
        eval_dataset=dev_features if plan.evaluate else None,
        callbacks=all_callbacks,
        pad_id=pad_id,
        task=task,
        tokenizer=tokenizer,
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


ClassifierTrainer = TaskTrainer  # the name before task types: classification is one of them
