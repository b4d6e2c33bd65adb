"""The training history of one run (a cell bundle's history.json), from the HF Trainer's log history.

The Trainer appends one entry per logging step (`loss`, `learning_rate`, `grad_norm`, `epoch`, `step`), one per dev
evaluation (`eval_loss`, `eval_accuracy`, `eval_f1`, `eval_n`, ...) and a closing summary (`train_runtime`, ...). It
saves that list in every checkpoint's trainer_state.json and loads it back on a resume, so the list `fit` returns
after a resume holds the steps of every earlier process too; the train phase deletes the checkpoints once the cell
is committed, so history.json is where the curves survive. docs/storage.md describes the schema (format 1):

    {"format": 1, "cell", "task", "method", "seed", "selection_metric",
     "steps_per_epoch", "max_steps", "eval_steps", "logging_steps", "global_step", "best_step", "resumed_from_step",
     "train": [{"step", "epoch", "loss", "learning_rate", "grad_norm"}, ...],     # by step
     "eval":  [{"step", "epoch", "loss", "accuracy", "f1", "n"}, ...]}             # dev split, by step

Pure Python (no torch): the train phase writes it, the report (CPU image, no torch) reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

HISTORY_FILE = "history.json"
HISTORY_FORMAT = 1
TRAIN_KEYS = {"loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm"}
EVAL_KEYS = {"eval_loss": "loss", "eval_accuracy": "accuracy", "eval_f1": "f1", "eval_n": "n"}


def _number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None  # JSON has no NaN/inf: null


def split_log_history(log_history: Iterable[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows), each sorted by step, one row per step (a step logged twice, e.g. by a process that
    crashed after logging it and the one that resumed before it, keeps the later entry)."""
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    for entry in log_history:
        if "step" not in entry:
            continue
        step = int(entry["step"])
        base = {"step": step, "epoch": _number(entry.get("epoch"))}
        if "eval_loss" in entry:
            row = {**base, **{out: _number(entry.get(key)) for key, out in EVAL_KEYS.items()}}
            row["n"] = int(row["n"]) if row["n"] is not None else None  # the Trainer logs every metric as a float
            evals[step] = row
        elif "loss" in entry:
            train[step] = {**base, **{out: _number(entry.get(key)) for key, out in TRAIN_KEYS.items()}}
    return [train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)]


def build_history(
    log_history: Iterable[Mapping[str, Any]],
    *,
    schedule: Mapping[str, int],
    logging_steps: int,
    global_step: int,
    best_step: int | None,
    resumed_from_step: int | None,
    **identity: Any,
) -> dict[str, Any]:
    """history.json of one run; `identity`: cell, task, method, seed, selection_metric (whatever names the run)."""
    train, evals = split_log_history(log_history)
    return {
        "format": HISTORY_FORMAT,
        **identity,
        "steps_per_epoch": schedule["steps_per_epoch"],
        "max_steps": schedule["max_steps"],
        "eval_steps": schedule["eval_steps"],
        "logging_steps": logging_steps,
        "global_step": global_step,
        "best_step": best_step,
        "resumed_from_step": resumed_from_step,
        "train": train,
        "eval": evals,
    }


def check_history(history: Mapping[str, Any], source: str = "history.json") -> None:
    """Raise ValueError naming the first thing a reader cannot use (the report draws from these fields)."""
    if history.get("format") != HISTORY_FORMAT:
        raise ValueError(f"{source}: format {history.get('format')!r}, expected {HISTORY_FORMAT}")
    for part, keys in (("train", TRAIN_KEYS.values()), ("eval", EVAL_KEYS.values())):
        rows = history.get(part)
        if not isinstance(rows, list):
            raise ValueError(f"{source}: {part!r} is not a list")
        for i, row in enumerate(rows):
            missing = [k for k in ("step", "epoch", *keys) if k not in row]
            if missing:
                raise ValueError(f"{source}: {part}[{i}] lacks {missing}")
