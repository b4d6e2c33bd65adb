"""jobs/smoke-glue.yaml end to end with the local runner (`lorascope run`): STS-B (regression head) and MNLI (matched
and mismatched validation) on the tiny Llama and the bundled fixtures through stage, sanity, train, extract, drift,
bench (hf) and report, with the values checked: each task's own metrics per cell, real-valued predictions for the
regression task, the learning gate against each task's trivial predictor, H1a in each task's units, the report's task
metrics table. About three minutes on 2 busy cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorascope.metrics import glue
from lorascope.study import load_study
from tests.fixtures.runs import run_study_in_process

pytestmark = pytest.mark.slow  # a few minutes: runs in `make test` (test-main), not in test-fast

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "jobs" / "smoke-glue.yaml"


def _attempt(run: Path, rel: str) -> Path:
    commit = json.loads((run / rel / "_COMMIT.json").read_text())
    return run / rel / "_attempts" / commit["attempt"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke-glue")
    run_study_in_process(STUDY, root, "stage,sanity,train,extract,drift,bench,report")
    (path,) = list((root / "store" / "runs").iterdir())
    return load_study(STUDY), path


def test_stage_holds_both_mnli_validation_splits(run):
    _, path = run
    stage = _attempt(path, "stage")
    assert {p.name for p in (stage / "data" / "mnli").iterdir()} == {"train.jsonl", "dev.jsonl", "validation.jsonl",
                                                                     "validation_mismatched.jsonl"}  # fmt: skip
    assert {p.name for p in (stage / "data" / "stsb").iterdir()} == {"train.jsonl", "dev.jsonl", "validation.jsonl"}


def test_every_cell_reports_its_tasks_metrics(run):
    study, path = run
    assert len(study.cells()) == 8
    for cell in study.cells():
        folder = _attempt(path, f"cells/{cell.name}")
        m = json.loads((folder / "metrics.json").read_text())
        preds = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == m["validation"]["n"] == 200
        labels, values = [p["label"] for p in preds], [p["pred"] for p in preds]
        if cell.task == "stsb":  # one output, squared error; Pearson and Spearman, no accuracy
            assert set(m["validation"]) == {"pearson", "spearman", "loss", "n"} and m["selection_metric"] == "pearson"
            assert all(isinstance(v, float) for v in values)
            assert m["validation"]["pearson"] == pytest.approx(glue.pearson(labels, values), abs=1e-9)
            mse = sum((p - y) ** 2 for p, y in zip(values, labels, strict=True)) / len(preds)
            assert m["validation"]["loss"] == pytest.approx(mse, rel=1e-5)
        else:  # three classes, reported on matched, mismatched evaluated beside it
            assert set(m["validation"]) == {"accuracy", "loss", "n"}
            assert set(m["validation_mismatched"]) == {"accuracy", "loss", "n"} and m["validation_mismatched"]["n"] == 200
            assert set(values) <= {0, 1, 2}
            assert m["validation"]["accuracy"] == pytest.approx(sum(p == y for p, y in zip(values, labels, strict=True)) / 200)


def test_the_gate_and_h1a_are_in_each_tasks_units(run):
    _, path = run
    s = json.loads((_attempt(path, "drift") / "summary.json").read_text())
    facts = s["settings"]["tasks"]
    assert (facts["stsb"]["metric"], facts["stsb"]["unit"], facts["stsb"]["trivial_value"]) == ("pearson", "points", 0.0)
    assert (facts["mnli"]["metric"], facts["mnli"]["unit"], facts["mnli"]["trivial_value"]) == ("accuracy", "pp", None)
    stsb, mnli = s["results"]["stsb"], s["results"]["mnli"]
    assert stsb["majority_baseline"] == 0.0  # a constant prediction's correlation
    labels = [json.loads(x)["label"] for x in (_attempt(path, "stage") / "data/mnli/validation.jsonl").read_text().splitlines()]
    assert mnli["majority_baseline"] == pytest.approx(max(labels.count(k) for k in (0, 1, 2)) / len(labels))
    for res in (stsb, mnli):  # the gate: every cell learned (the fixtures are learnable), scored on its own metric
        for entry in res["methods"].values():
            assert entry["learned"] is True, entry["learning"]
    assert "accuracy" not in stsb["methods"]["full"] and set(stsb["methods"]["full"]["other_metrics"]) == {"spearman"}
    mis = mnli["methods"]["lora"]["other_splits"]["validation_mismatched"]["accuracy"]
    assert set(mis["values"]) == {"42", "1337"}
    h1a = s["hypotheses"]["H1a"]
    assert "stsb Pearson correlation points, mnli accuracy points" in h1a["hypothesis"]
    evidence = json.dumps(h1a["by"])
    assert "gap full-lora" in evidence and " points, 95% interval" in evidence and " pp, 95% interval" in evidence


def test_the_report_shows_each_tasks_metrics(run):
    _, path = run
    report = (_attempt(path, "report") / "ANALYSIS_REPORT.md").read_text()
    assert "## Task metrics" in report
    rows = [x for x in report.splitlines() if x.startswith("| stsb | classification | pearson (Pearson correlation points)")]
    assert len(rows) == 2 and all("spearman" in x for x in rows)
    assert sum(x.startswith("| mnli | classification | accuracy") and "mismatched accuracy" in x
               for x in report.splitlines()) == 2  # fmt: skip
