"""history.json from the Trainer's log history: rows by kind and step, one per step, NaN as null, the schema check."""

from __future__ import annotations

import json

import pytest

from lorascope.history import build_history, check_history, split_log_history

LOG = [  # as transformers 5 writes state.log_history, a resumed run's second copy of step 4 included
    {"loss": 0.70, "grad_norm": 1.5, "learning_rate": 1e-3, "epoch": 0.5, "step": 4},
    {"eval_loss": 0.66, "eval_accuracy": 0.6, "eval_f1": 0.7, "eval_n": 60.0, "eval_runtime": 0.1, "epoch": 0.5, "step": 4},
    {"loss": 0.71, "grad_norm": 1.4, "learning_rate": 1e-3, "epoch": 0.5, "step": 4},
    {"loss": 0.52, "grad_norm": float("nan"), "learning_rate": 5e-4, "epoch": 1.0, "step": 8},
    {"eval_loss": 0.61, "eval_accuracy": 0.7, "eval_f1": 0.75, "eval_n": 60.0, "epoch": 1.0, "step": 8},
    {"train_runtime": 3.2, "train_loss": 0.6, "epoch": 1.0, "step": 8},  # the closing summary: no row
]  # fmt: skip


def test_rows_by_step_with_the_later_copy_of_a_step_and_nan_as_null():
    train, evals = split_log_history(LOG)
    assert train == [{"step": 4, "epoch": 0.5, "loss": 0.71, "learning_rate": 1e-3, "grad_norm": 1.4},
                     {"step": 8, "epoch": 1.0, "loss": 0.52, "learning_rate": 5e-4, "grad_norm": None}]  # fmt: skip
    assert evals == [{"step": 4, "epoch": 0.5, "loss": 0.66, "accuracy": 0.6, "f1": 0.7, "n": 60},
                     {"step": 8, "epoch": 1.0, "loss": 0.61, "accuracy": 0.7, "f1": 0.75, "n": 60}]  # fmt: skip
    assert isinstance(evals[0]["n"], int)


def test_history_is_valid_json_and_passes_its_own_check():
    schedule = {"steps_per_epoch": 8, "max_steps": 8, "eval_steps": 4, "micro_batch": 8, "grad_accum": 1, "capped": 0}
    h = build_history(LOG, schedule=schedule, logging_steps=4, global_step=8, best_step=8, resumed_from_step=4,
                      cell="mrpc-lora-s42", task="mrpc", method="lora", seed=42, selection_metric="f1")  # fmt: skip
    text = json.dumps(h, allow_nan=False)  # no NaN reaches the file
    check_history(json.loads(text))
    assert (h["format"], h["cell"], h["resumed_from_step"], len(h["train"]), len(h["eval"])) == (1, "mrpc-lora-s42", 4, 2, 2)
    with pytest.raises(ValueError, match=r"h.json: eval\[0\] lacks \['f1'\]"):
        check_history({**h, "eval": [{k: v for k, v in h["eval"][0].items() if k != "f1"}]}, "h.json")
    with pytest.raises(ValueError, match="format 2, expected 1"):
        check_history({**h, "format": 2})
