"""jobs/smoke-generation.yaml end to end with the local runner (stage, train, extract, drift, report) into a temporary
store: builtin:tiny-gpt2 on the bundled E2E fixtures, full fine-tuning vs LoRA on c_attn. Every cell commits the E2E
metrics over the reported split's MRs; a reloaded cell reproduces its committed outputs and BLEU (train, save,
reload, evaluate with the same code); extraction holds one prompt per MR, the same ids for the base and every cell;
drift has weight rows in nn.Linear orientation and forgetting; the report names the task. About 1-2 min on 2 cores."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lorascope import cli, data, tensorio, training
from lorascope.log import Logger
from lorascope.models import artifacts
from lorascope.phases import PhaseContext
from lorascope.runner import default_run_id
from lorascope.store import Store
from lorascope.study import load_study

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "jobs" / "smoke-generation.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke-generation")
    store = str(tmp / "store")
    rc = cli.main(["run", "--study", str(STUDY), "--store", store, "--work-dir", str(tmp / "work"), "--jobs", "1",
                   "--phases", "stage,train,extract,drift,report"])  # fmt: skip
    assert rc == 0
    study = load_study(STUDY)
    ctx = PhaseContext(study, Store.open(store), default_run_id(study), tmp / "read", {"LORASCOPE_TORCH_THREADS": "1"},
                       Logger())  # fmt: skip
    return study, ctx


def validation_mrs(ctx) -> list[str]:
    rows = data.read_split(ctx.stage_dir(), "e2e", "validation")
    return list(dict.fromkeys(r["meaning_representation"] for r in rows))


def test_every_cell_commits_the_e2e_metrics_over_the_mrs(run):
    study, ctx = run
    mrs = validation_mrs(ctx)
    assert len(mrs) == 12  # eval_samples counts MRs, each with all its references
    for cell in study.cells():
        folder = ctx.local(ctx.require("cells", cell.name))
        m = json.loads((folder / "metrics.json").read_text())
        assert set(m["validation"]) == {"bleu", "nist", "rouge_l", "loss", "n"} and m["validation"]["n"] == 12
        assert 0.0 <= m["validation"]["bleu"] <= 1.0 and np.isfinite(m["validation"]["loss"])
        preds = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
        assert [p["prompt"] for p in preds] == mrs and all(len(p["references"]) >= 1 for p in preds)
        if cell.method == "lora":
            config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
            assert config["fan_in_fan_out"] is True and config["task_type"] == "CAUSAL_LM"
            assert config["target_modules"] == ["c_attn"]  # q, v: GPT-2's fused c_attn, as the LoRA paper adapts it


def test_a_reloaded_cell_reproduces_its_outputs_and_bleu(run):
    study, ctx = run
    spec = study.task("e2e").spec
    rows = data.read_split(ctx.stage_dir(), "e2e", "validation")
    load = lambda folder, dtype, dev: spec.task_type.load_model(spec, folder, dtype, dev)  # noqa: E731
    for cell in study.cells():
        folder = ctx.local(ctx.require("cells", cell.name))
        committed = [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]
        metrics = json.loads((folder / "metrics.json").read_text())["validation"]
        model, tok = artifacts.load_cell_model(ctx.cell_dir(cell.name), ctx.stage_dir() / "model", 0, "cpu",
                                               torch.float32, load=load)  # fmt: skip
        got = training.evaluate(model, tok, rows, study.task("e2e"), batch_size=16)
        assert [p["pred"] for p in got.predictions] == [p["pred"] for p in committed], cell.name
        assert got.bleu == pytest.approx(metrics["bleu"], abs=1e-12)
        assert got.loss == pytest.approx(metrics["loss"], rel=1e-5)


def test_extraction_pools_one_prompt_per_mr_identically_for_base_and_cells(run):
    study, ctx = run
    reps = {m: tensorio.RepsFile(ctx.local(ctx.require("reps", m, "e2e"))) for m in ["base", *(c.name for c in study.cells())]}
    first = reps["base"]
    assert len(first.idx) == 12 and first.shape[1] == 12  # (hidden-state entries, MRs, width)
    for name, r in reps.items():
        assert np.array_equal(r.idx, first.idx), name
    # the embedding output (entry 0) of the full cell moved with its trained embeddings; the LoRA cell's did not
    lora = next(c.name for c in study.cells() if c.method == "lora")
    np.testing.assert_array_equal(reps[lora].layer("mean", 0), first.layer("mean", 0))


def test_drift_has_weight_rows_and_forgetting_for_generation_cells(run):
    study, ctx = run
    drift = ctx.local(ctx.require("drift"))
    rows = list(csv.DictReader(io.StringIO((drift / "weights.csv").read_text())))
    lora = [r for r in rows if r["method"] == "lora"]
    assert {(r["module"], r["rows"], r["cols"], r["source"]) for r in lora} == {("attn.c_attn", "192", "64", "lora_factors")}
    full = {(r["module"], r["rows"], r["cols"]) for r in rows if r["method"] == "full"}
    assert ("attn.c_attn", "192", "64") in full and ("mlp.c_proj", "64", "256") in full  # out x in, as nn.Linear
    summary = json.loads((drift / "summary.json").read_text())
    result = summary["results"]["e2e"]
    assert result["metric_name"] == "bleu"
    # the learning gate: corpus BLEU bootstrapped over MRs against the better trivial output (copy / constant)
    sanity_like = [json.loads(x) for x in (ctx.local(ctx.require("cells", "e2e-full-s42")) / "predictions.jsonl")
                   .read_text().splitlines()]  # fmt: skip
    trivial = {k: np.array([p["trivial_stats"][k] for p in sanity_like]).sum(axis=0) for k in ("copy_values", "constant")}
    from lorascope.analysis import text_bootstrap

    best = max(float(text_bootstrap.bleu_from_statistics(v)[0]) for v in trivial.values())
    assert result["majority_baseline"] == pytest.approx(best, abs=1e-12) and 0 < best < 1
    for method in ("full", "lora"):
        gate = result["methods"][method]["learning"]["42"]
        assert gate["predictions"] is True and gate["baseline"] == pytest.approx(best, abs=1e-12)
        assert gate["value"] == pytest.approx(json.loads((ctx.local(ctx.require("cells", f"e2e-{method}-s42")) /
                                                          "metrics.json").read_text())["validation"]["bleu"], abs=1e-9)  # fmt: skip
    assert summary["forgetting"] is not None
    for cell in study.cells():
        f = json.loads((ctx.local(ctx.require("reps", cell.name, "e2e")) / "forgetting.json").read_text())
        assert f["loss_nats_per_token"] is not None and f["tokens"] > 0, f
    text = (ctx.local(ctx.require("report")) / "ANALYSIS_REPORT.md").read_text()
    assert "| e2e | full |" in text and "| e2e | lora |" in text
