"""sanity: overfitting a handful of examples, failing loudly when it cannot, and the baselines' values."""

from __future__ import annotations

import itertools
from importlib import metadata

import numpy as np
import pytest

from lorascope.errors import LorascopeError
from lorascope.phases import get_phase
from lorascope.phases.sanity import baseline_metrics
from lorascope.training import classification_metrics

PHASE = get_phase("sanity")


def test_overfits_and_commits_baselines(make_run):
    run = make_run()
    assert PHASE.size(run.study) == 2 and PHASE.bundles(run.study) == ["sanity/mrpc-full", "sanity/mrpc-lora"]
    ctx = run.phase("sanity", 1)  # mrpc-lora
    report = ctx.bundle("sanity", "mrpc-lora").read_json("sanity.json")
    packages = ctx.bundle("sanity", "mrpc-lora").commit["environment"]["packages"]
    assert (packages["torch"], packages["peft"]) == (metadata.version("torch"), metadata.version("peft"))
    over = report["overfit"]
    assert over["final_loss"] < run.study.sanity.target_loss == over["target_loss"]
    assert 1 <= over["steps"] <= run.study.sanity.max_steps and len(over["losses"]) == over["steps"]
    assert over["train_examples_accuracy"] == 1.0  # the shared evaluate reads what training learned
    base = report["baselines"]
    staged = ctx.local(ctx.bundle("stage")) / "data" / "mrpc"
    import json

    val = [json.loads(x)["label"] for x in (staged / "validation.jsonl").read_text().splitlines()]
    train = [json.loads(x)["label"] for x in (staged / "train.jsonl").read_text().splitlines()]
    majority = int(np.bincount(train).argmax())
    assert base["majority"]["class"] == majority
    assert base["majority"]["accuracy"] == pytest.approx(np.mean(np.array(val) == majority))
    assert base["n"] == len(val) and base["positives"] == sum(val)
    assert base["uniform_random"]["expected"]["accuracy"] == 0.5

    before = ctx.bundle("sanity", "mrpc-lora").commit
    ctx = run.phase("sanity", 1)  # committed: skipped, the commit untouched
    assert ctx.bundle("sanity", "mrpc-lora").commit == before


def test_expected_random_f1_is_exact():
    """The binomial double sum equals brute force over every prediction vector (p = 1/2, small n)."""
    labels = [1, 1, 1, 0, 0, 1, 0]
    got = baseline_metrics([0, 1, 1], labels, 2, seed=0)["uniform_random"]["expected"]["f1"]
    f1s = [classification_metrics(labels, preds)["f1"] for preds in itertools.product([0, 1], repeat=len(labels))]
    assert got == pytest.approx(np.mean(f1s), abs=1e-12)
    draw = baseline_metrics([0, 1, 1], labels, 2, seed=5)["uniform_random"]["draw"]
    assert draw == baseline_metrics([0, 1, 1], labels, 2, seed=5)["uniform_random"]["draw"]  # seeded
    assert baseline_metrics([0, 0, 1], labels, 2, seed=0)["majority"] == {"class": 0, "accuracy": 3 / 7, "f1": 0.0}


def test_fails_loudly_when_the_target_is_not_reached(make_run):
    run = make_run(sanity={"target_loss": 1e-9, "max_steps": 3})
    with pytest.raises(LorascopeError, match=r"sanity mrpc-full: training loss \d\.\d{4} after 3 steps did not reach "
                                             r"sanity.target_loss 1e-09"):  # fmt: skip
        run.phase("sanity", 0)
    assert run.store.bundle(run.key("sanity", "mrpc-full")) is None
