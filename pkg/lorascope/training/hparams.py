"""Hyperparameter resolution: what one training run is, before any model or Trainer exists.

  * `resolve_params`: HPO's pick over `training.defaults[method name, else kind]` (a kind's own hyperparameters, LoRA's
    alpha/dropout, falling back to the method's own config), validated by the study's PARAM_RULES.
  * `Plan` (one run beyond the model and the data) and `schedule` (micro-batch, accumulation, steps per epoch,
    total steps and the evaluation interval, counted the way the Trainer counts them).
  * Effective batch = micro-batch x gradient accumulation. The micro-batch is a memory knob
    (`training.micro_batch`), the effective batch a hyperparameter: the micro-batch used is the largest divisor of
    the effective batch that is <= `training.micro_batch` (`batch_layout`), so the product is always exact.
  * Device-dependent choices: bf16 autocast (`use_bf16`) and the optimizer's HF name (`optimizer_name`).
Imports no torch at module level (the functions that need it import it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lorascope.errors import ConfigError
from lorascope.methods import kind_of, kind_only_problem
from lorascope.study import HPO_PARAMS, REQUIRED_PARAMS, param_problem

if TYPE_CHECKING:
    import torch

    from lorascope.study import Study, TrainingConfig


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from the sha256 of the parts (stable across processes and machines, unlike Python's hash())."""
    text = "\x1f".join(str(p) for p in parts)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def resolve_params(
    study: Study, method_name: str, chosen: Mapping[str, Any] | None = None, task: str | None = None
) -> dict[str, Any]:
    """The hyperparameters of one run: `chosen` (HPO's pick) over the task's own `tasks[].defaults[method]` (when
    `task` is given) over `training.defaults[method]`, a kind's own hyperparameters (LoRA alpha/dropout) falling back
    to the method's own config.
    Raises ConfigError naming what is missing or out of range."""
    method = study.method(method_name)
    key = study.defaults_key(method) or method_name
    task_defaults = study.task(task).defaults if task is not None else {}
    per_task = dict(task_defaults.get(method.name, task_defaults.get(method.kind, {})))  # name, then kind
    merged = {**study.defaults_for(method), **per_task, **dict(chosen or {})}
    unknown = sorted(set(merged) - HPO_PARAMS)
    if unknown:
        raise ConfigError(f"method {method_name!r}: unknown hyperparameter(s) {unknown}; known: {sorted(HPO_PARAMS)}")
    missing = [k for k in REQUIRED_PARAMS if k not in merged]
    if missing:
        raise ConfigError(
            f"method {method_name!r}: no value for {missing}: give them in training.defaults.{key} "
            f"(the method's name or kind {method.kind!r}; used when hpo.enabled is false, and for parameters "
            "hpo.spaces does not search)"
        )
    params: dict[str, Any] = {
        "learning_rate": float(merged["learning_rate"]),
        "warmup_ratio": float(merged.get("warmup_ratio", 0.0)),
        "weight_decay": float(merged.get("weight_decay", 0.0)),
        "effective_batch": int(merged["effective_batch"]),
        "epochs": int(merged["epochs"]) if float(merged["epochs"]).is_integer() else float(merged["epochs"]),
    }
    kind = kind_of(method)
    if problem := kind_only_problem(kind, merged):
        raise ConfigError(f"method {method_name!r}: {problem} (this method's kind is {method.kind!r})")
    params.update(kind.hyperparameter_values(method, merged))  # LoRA: lora_alpha, lora_dropout
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
    if device.type != "cuda":
        return False
    import torch

    return torch.cuda.is_bf16_supported()


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
