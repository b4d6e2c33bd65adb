"""jobs/smoke-roberta.yaml end to end with the local runner (`lorascope run`): the tiny RoBERTa encoder through stage,
sanity, train, extract, drift, bench (hf) and report, with the values checked: metrics per cell, first-token reps,
drift rows on both poolings, encoder weight rows, the report written. About a minute on 2 cores."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lorascope.study import load_study
from tests.fixtures.runs import machine_paths_in

pytestmark = pytest.mark.slow  # about a minute: runs in `make test` (test-main), not in test-fast

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "jobs" / "smoke-roberta.yaml"


def _attempt(run: Path, rel: str) -> Path:
    """The committed attempt folder of a bundle (its _COMMIT.json names it)."""
    commit = json.loads((run / rel / "_COMMIT.json").read_text())
    return run / rel / "_attempts" / commit["attempt"]


@pytest.fixture(scope="module")
def run(smoke_runs):
    """`lorascope -q run --study jobs/smoke-roberta.yaml --phases stage,...,report` (offline, one torch thread) into a
    fresh store, made once per session (in the background while other tests run: tests/fixtures/smoke_runs.py)."""
    made = smoke_runs.get("smoke-roberta")
    study = load_study(STUDY)
    runs = list((made.store / "runs").iterdir())
    assert len(runs) == 1
    return study, runs[0]


def test_stage_records_the_encoder_family(run):
    study, path = run
    commit = json.loads((path / "stage" / "_COMMIT.json").read_text())
    meta = json.dumps(commit)
    assert '"family": "roberta"' in meta and '"encoder": true' in meta


def test_sanity_overfits_every_task_and_method(run):
    study, path = run
    for task, method in study.task_methods():
        result = json.loads((_attempt(path, f"sanity/{task}-{method}") / "sanity.json").read_text())
        assert result["overfit"]["final_loss"] < study.sanity.target_loss
        assert result["overfit"]["train_examples_accuracy"] == 1.0


def test_every_cell_trained_and_evaluated(run):
    study, path = run
    assert len(study.cells()) == 8
    metrics = {c.name: json.loads((_attempt(path, f"cells/{c.name}") / "metrics.json").read_text()) for c in study.cells()}
    for name, m in metrics.items():
        v = m["validation"]
        assert v["n"] == 100 and 0 <= v["accuracy"] <= 1 and 0 <= v["f1"] <= 1, name
        assert m["global_step"] > 0
    full, lora = metrics["sst2-full-s42"], metrics["sst2-lora-s42"]
    assert lora["trainable_params"] < full["trainable_params"] / 10  # LoRA on query/value + the head
    assert full["trainable_params"] == full["total_params"]
    # full fine-tuning learns the synthetic sst2 (majority baseline 0.60 on these 100 examples)
    assert min(metrics[f"sst2-full-s{s}"]["validation"]["accuracy"] for s in study.seeds) >= 0.8
    assert (_attempt(path, "cells/sst2-lora-s42") / "adapter" / "adapter_config.json").is_file()


def test_reps_hold_the_first_token_pooling(run):
    from safetensors.numpy import load_file

    study, path = run
    base = _attempt(path, "reps/base/sst2")
    t = load_file(str(base / "reps.safetensors"))
    assert set(t) == {"mean", "first", "idx"}  # an encoder stores no `last`
    assert t["first"].shape == t["mean"].shape == (3, 100, 64)
    layers = json.loads((base / "layers.json").read_text())
    assert layers["labels"] == ["embeddings", "layer_1", "layer_2"] and layers["family"] == "roberta"
    assert np.ptp(t["first"][0], axis=0).max() < 1e-5  # <s> embedding: the same for every input
    assert np.ptp(t["first"][2], axis=0).max() > 1e-2  # after the blocks it depends on the input
    # the same token ids for the base and every fine-tuned model (the base tokenizer, the same template)
    tokens = {json.loads((path / "reps" / m / t / "_COMMIT.json").read_text())["meta"]["tokens"]
              for t in ("sst2",) for m in ["base", *(c.name for c in study.cells() if c.task == t)]}  # fmt: skip
    assert len(tokens) == 1
    cell = load_file(str(_attempt(path, "reps/sst2-full-s42/sst2") / "reps.safetensors"))
    assert np.array_equal(cell["idx"], t["idx"]) and np.abs(cell["first"][2] - t["first"][2]).max() > 1e-2


def test_drift_rows_and_summary(run):
    study, path = run
    drift = _attempt(path, "drift")
    rows = list(csv.DictReader((drift / "layer_rows.csv").open()))
    keys = {(r["task"], r["pooling"], r["method"]) for r in rows}
    assert keys == {(t, p, m) for t in ("sst2", "mrpc") for p in ("mean", "first") for m in ("full", "lora")}
    assert len(rows) == 2 * 2 * 2 * 2 * 3  # tasks x poolings x methods x seeds x entries
    summary = json.loads((drift / "summary.json").read_text())
    res = summary["results"]["sst2"]
    assert res["layers_in_mean"] == {"mean": ["layer_1", "layer_2"], "first": ["layer_1", "layer_2"]}
    assert "constant" in res["layers_excluded"]["first"]["embeddings"]
    full = res["methods"]["full"]["drift"]["first"]["debiased"]["mean"]
    lora = res["methods"]["lora"]["drift"]["first"]["debiased"]["mean"]
    assert 0 < lora < full  # on sst2, where full fine-tuning learned, LoRA moved the <s> state less
    weights = list(csv.DictReader((drift / "weights.csv").open()))
    assert {r["module"] for r in weights if r["method"] == "lora"} == {"attention.self.query", "attention.self.value"}
    assert {r["module"] for r in weights if r["method"] == "full"} >= {"attention.self.query", "intermediate.dense", "output.dense"}


def test_bench_and_report(run):
    study, path = run
    bench = json.loads((_attempt(path, "bench/hf") / "summary.json").read_text())
    assert bench["backend"] == "hf" and set(bench["modes"]) == {"full", "merged", "separate"}
    assert bench["modes"]["full"]["cells"] == ["sst2-full-s42"]
    assert bench["correctness"]["merged_vs_separate"]["ok"] is True  # the merged LoRA encoder = the unmerged one
    report = _attempt(path, "report") / "ANALYSIS_REPORT.md"
    text = report.read_text()
    assert "smoke-roberta" in text and "first pooling" in text
    assert "THESE NUMBERS MEAN NOTHING ABOUT ANY REAL MODEL" in text and "`builtin:tiny-roberta`" in text
    assert list((report.parent / "figures").glob("*.png"))


def test_no_machine_path_in_any_committed_file(run):
    """Every file of every bundle (and the frozen study): neither the store's nor the work dir's absolute path (before:
    each adapter's README.md named the staged model's absolute path)."""
    _study, path = run
    root = path.parents[2]
    assert machine_paths_in(path, root / "store", root / "work") == []
    readmes = sorted(path.glob("cells/*-lora-*/_attempts/*/adapter/README.md"))
    assert len(readmes) == 4 and all("base_model: builtin:tiny-roberta\n" in r.read_text() for r in readmes)
