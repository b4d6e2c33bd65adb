"""A study with an extractive QA task through the local runner (`lorascope run`): stage, sanity, train, extract, drift
and report on the tiny Llama and the bundled SQuAD-v2-format fixture, with the values checked: the sanity baseline is
"no answer" everywhere, each cell's reported validation numbers are the official scoring of its predictions at the
no-answer threshold chosen on dev, extraction pools one vector per question, the drift phase's learning gate is the
per-question F1 bootstrap (its full sample the reported F1, its baseline "no answer" everywhere), weight rows under
the base's names, and the report shows the QA metrics and drift. About a minute on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lorascope.metrics import squad_v2
from tests.fixtures.runs import run_study_in_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _attempt(run: Path, rel: str) -> Path:
    commit = json.loads((run / rel / "_COMMIT.json").read_text())
    return run / rel / "_attempts" / commit["attempt"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa-study")
    study = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    study.update(name="qa-smoke", seeds=[42])
    study["tasks"] = [{"name": "squad-v2", "type": "extractive_qa", "max_length": 64, "train_samples": 120,
                       "eval_samples": 80, "options": {"stride": 16, "max_question_tokens": 16}}]  # fmt: skip
    study["hpo"]["enabled"] = False
    study["sanity"]["max_steps"] = 40
    study["sanity"]["target_loss"] = 5.0
    study["extraction"]["examples"] = 40
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    run_study_in_process(path, root, "stage,sanity,train,extract,drift,report")
    (runs,) = list((root / "store" / "runs").iterdir())
    return runs


def test_sanity_baseline_is_no_answer_everywhere(run):
    validation = [json.loads(x) for x in (_attempt(run, "stage") / "data" / "squad-v2" / "validation.jsonl").read_text().splitlines()]
    sanity = json.loads((_attempt(run, "sanity/squad-v2-full") / "sanity.json").read_text())
    unanswerable = sum(1 for r in validation if not r["answers"]["text"])
    assert sanity["baselines"]["unanswerable"] == unanswerable and sanity["baselines"]["n"] == len(validation) == 80
    assert sanity["baselines"]["no_answer"]["f1"] == pytest.approx(unanswerable / 80)
    assert sanity["baselines"]["no_answer"]["NoAns_f1"] == 1.0 and sanity["baselines"]["no_answer"]["HasAns_f1"] == 0.0


@pytest.mark.parametrize("cell", ["squad-v2-full-s42", "squad-v2-lora-s42"])
def test_cells_report_the_official_scores_at_the_dev_threshold(run, cell):
    folder = _attempt(run, f"cells/{cell}")
    metrics = json.loads((folder / "metrics.json").read_text())
    preds = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
    v = metrics["validation"]
    assert v["n"] == len(preds) == 80 and {"threshold", "dev_best_f1", "best_f1", "HasAns_f1", "NoAns_f1"} <= set(v)
    assert all(p["pred"] == ("" if p["no_answer_prob"] > v["threshold"] else p["text"]) for p in preds)
    gold = {p["id"]: p["gold"] for p in preds}
    official = squad_v2.evaluate(gold, {p["id"]: p["text"] for p in preds}, {p["id"]: p["no_answer_prob"] for p in preds},
                                 threshold=v["threshold"])  # fmt: skip
    for k in ("f1", "exact", "HasAns_f1", "NoAns_f1", "best_f1"):
        assert v[k] == pytest.approx(official[k] / 100)
    assert metrics["dev"]["threshold"] == 0.5  # dev itself: the model's own decision


def test_extraction_pools_one_vector_per_question(run):
    """The base model and both cells pool the same 40 questions (one vector each, of the first window), every one a
    staged validation question."""
    import numpy as np

    from lorascope import tensorio

    validation = [json.loads(x) for x in (_attempt(run, "stage") / "data" / "squad-v2" / "validation.jsonl").read_text().splitlines()]
    idx = {}
    for model in ("base", "squad-v2-full-s42", "squad-v2-lora-s42"):
        reps = tensorio.RepsFile(_attempt(run, f"reps/{model}/squad-v2"))
        idx[model] = reps.idx
        assert reps.layer("mean", 0).shape[0] == 40 and len(set(reps.idx.tolist())) == 40
    assert np.array_equal(idx["base"], idx["squad-v2-full-s42"]) and np.array_equal(idx["base"], idx["squad-v2-lora-s42"])
    assert set(idx["base"].tolist()) <= {r["idx"] for r in validation}


def _summary(run: Path) -> dict:
    return json.loads((_attempt(run, "drift") / "summary.json").read_text())


def test_drift_gates_on_the_per_question_f1_against_no_answer_everywhere(run):
    sanity = json.loads((_attempt(run, "sanity/squad-v2-full") / "sanity.json").read_text())
    result = _summary(run)["results"]["squad-v2"]
    assert result["metric_name"] == "f1"
    no_answer = sanity["baselines"]["no_answer"]["f1"]
    assert result["majority_baseline"] == pytest.approx(no_answer, abs=1e-12)
    for method in ("full", "lora"):
        reported = json.loads((_attempt(run, f"cells/squad-v2-{method}-s42") / "metrics.json").read_text())["validation"]
        gate = result["methods"][method]["learning"]["42"]
        assert gate["predictions"] is True and gate["value"] == pytest.approx(reported["f1"], abs=1e-9)
        assert gate["baseline"] == pytest.approx(no_answer, abs=1e-12)
        other = result["methods"][method]["other_metrics"]
        for k in ("exact", "HasAns_f1", "NoAns_f1"):
            assert other[k]["mean"] == pytest.approx(reported[k], abs=1e-12)
        assert result["methods"][method]["drift"]["mean"]["debiased"]["mean"] > 0  # a trained cell moved from the base
    h1a = _summary(run)["hypotheses"]["H1a"]["by"]["squad-v2"]
    assert h1a["margin_pp"] == 3.0 and h1a["example_se_pp"] is not None


def test_weight_rows_are_under_the_base_names(run):
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO((_attempt(run, "drift") / "weights.csv").read_text())))
    lora = {(r["name"], r["source"]) for r in rows if r["method"] == "lora"}
    assert lora == {(f"model.layers.{i}.self_attn.{m}.weight", "lora_factors") for i in (0, 1) for m in ("q_proj", "v_proj")}
    full = {r["name"] for r in rows if r["method"] == "full"}
    assert "model.layers.0.mlp.down_proj.weight" in full and all(n.startswith("model.layers.") for n in full)


def test_the_report_shows_the_qa_metrics_and_drift(run):
    text = (_attempt(run, "report") / "ANALYSIS_REPORT.md").read_text()
    assert "| squad-v2 | full | 40 | f1 (F1 points) |" in text and "| squad-v2 | lora | 40 | f1 (F1 points) |" in text
    assert '"no answer" everywhere (scores the unanswerable share of the split)' in text
    for k in ("exact", "HasAns_f1", "NoAns_f1", "HasAns_exact", "NoAns_exact"):
        assert f"; {k} " in text
    assert "| squad-v2 | lora | mean | debiased |" in text  # the drift comparison
