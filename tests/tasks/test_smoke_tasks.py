"""jobs/smoke-tasks.yaml end to end with the local runner (stage, train, extract, drift, report) into a temporary
store: one bundled fixture of each task type (stsb: classification with a regression head; squad-v2: extractive QA;
e2e: generation) on builtin:tiny-llama, full fine-tuning vs LoRA. Each type's cells commit its own metrics; the drift
phase gates each task on its own per-example bootstrap (a correlation against 0, per-question F1 against "no answer"
everywhere, corpus BLEU over MRs against the better trivial output), its full sample the reported number; drift,
forgetting and weight rows exist for every task; the report shows each type's metrics in its units. About a minute
on 2 cores."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from lorascope.log import Logger
from lorascope.phases import PhaseContext
from lorascope.runner import default_run_id
from lorascope.store import Store
from lorascope.study import load_study
from tests.fixtures.runs import run_study_in_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "jobs" / "smoke-tasks.yaml"
METRICS = {"stsb": {"pearson", "spearman"}, "squad-v2": {"f1", "exact", "HasAns_f1", "NoAns_f1", "threshold"},
           "e2e": {"bleu", "nist", "rouge_l"}}  # fmt: skip
TYPES = {"stsb": ("classification", "pearson", "Pearson correlation points"), "squad-v2": ("extractive_qa", "f1", "F1 points"),
         "e2e": ("generation", "bleu", "BLEU points")}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke-tasks")
    store = str(run_study_in_process(STUDY, tmp, "stage,train,extract,drift,report", "--jobs", "1"))
    study = load_study(STUDY)
    ctx = PhaseContext(study, Store.open(store), default_run_id(study), tmp / "read", {"LORASCOPE_TORCH_THREADS": "1"},
                       Logger())  # fmt: skip
    return study, ctx


def test_the_study_has_one_task_of_each_type():
    study = load_study(STUDY)
    assert {t.name: t.spec.task_type.name for t in study.tasks} == {t: v[0] for t, v in TYPES.items()}
    assert [c.name for c in study.cells()] == [f"{t}-{m}-s42" for t in TYPES for m in ("full", "lora")]


def test_every_cell_commits_its_types_metrics(run):
    study, ctx = run
    for cell in study.cells():
        m = json.loads((ctx.local(ctx.require("cells", cell.name)) / "metrics.json").read_text())["validation"]
        assert METRICS[cell.task] <= set(m), cell.name
        assert m["n"] == (12 if cell.task == "e2e" else 80)


def test_drift_gates_each_task_on_its_own_bootstrap(run):
    study, ctx = run
    summary = json.loads((ctx.local(ctx.require("drift")) / "summary.json").read_text())
    qa_rows = [json.loads(x) for x in (ctx.local(ctx.require("cells", "squad-v2-full-s42")) / "predictions.jsonl")
               .read_text().splitlines()]  # fmt: skip
    baselines = {"stsb": 0.0, "squad-v2": sum(1 for r in qa_rows if not r["gold"]) / len(qa_rows)}
    for task, (_, metric, _) in TYPES.items():
        result = summary["results"][task]
        assert result["metric_name"] == metric
        if task in baselines:
            assert result["majority_baseline"] == pytest.approx(baselines[task], abs=1e-12)
        assert 0.0 <= result["majority_baseline"] < 1.0
        for method in ("full", "lora"):
            reported = json.loads((ctx.local(ctx.require("cells", f"{task}-{method}-s42")) / "metrics.json").read_text())
            gate = result["methods"][method]["learning"]["42"]
            assert gate["predictions"] is True, (task, method)
            assert gate["value"] == pytest.approx(reported["validation"][metric], abs=1e-9), (task, method)
            assert result["methods"][method]["drift"]["mean"]["debiased"]["mean"] > 0, (task, method)
        assert summary["forgetting"][task]["full"]["cell_loss"]["42"] > 0
    rows = list(csv.DictReader(io.StringIO((ctx.local(ctx.require("drift")) / "weights.csv").read_text())))
    for task in TYPES:
        lora = {r["name"] for r in rows if r["task"] == task and r["method"] == "lora"}
        assert lora == {f"model.layers.{i}.self_attn.{m}.weight" for i in (0, 1) for m in ("q_proj", "v_proj")}, task


def test_the_report_shows_each_types_metrics_and_drift(run):
    _, ctx = run
    text = (ctx.local(ctx.require("report")) / "ANALYSIS_REPORT.md").read_text()
    for task, (ttype, metric, units) in TYPES.items():
        for method in ("full", "lora"):
            assert f"| {task} | {ttype} | {metric} ({units}) |" in text
            assert f"| {task} | {method} | {12 if task == 'e2e' else 40} | {metric} ({units}) |" in text
        assert f"| {task} | lora | mean | debiased |" in text  # the drift comparison
    for k in ("spearman", "HasAns_f1", "NoAns_f1", "exact", "nist", "rouge_l"):
        assert f"; {k} " in text
