"""jobs/smoke-methods.yaml end to end with the local runner (stage, sanity, train, extract, drift, bench hf, report) into
a temporary store: every method's cells commit the right artifact with the trainable parameters the method means,
the shared evaluation's metrics, a reload that reproduces the committed predictions, drift rows (or the named reason
for none) and the report. About 100 s on 2 cores."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lorascope import tensorio, training
from lorascope.log import Logger
from lorascope.models import artifacts
from lorascope.phases import PhaseContext
from lorascope.runner import default_run_id
from lorascope.store import Store
from lorascope.study import load_study
from tests.fixtures.runs import machine_paths_in

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "jobs" / "smoke-methods.yaml"


def expected_trainable(method, cfg) -> int:
    """Trainable parameters of each method on a Llama, from its config (hidden h, intermediate i, n blocks, KV width)."""
    h, i, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    shapes = {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, i), "up": (h, i), "down": (i, h)}
    head = h * 2
    block = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h  # 4 attention + 3 MLP projections, 2 RMSNorms
    if method.kind == "full":
        return cfg["vocab_size"] * h + n * block + h + head
    if method.kind == "lora":
        roles = list(shapes) if method.target_modules == ["all-linear"] else method.target_modules
        count = n * sum(method.r * sum(shapes[r]) for r in roles)
        if method.use_dora:
            count += n * sum(shapes[r][1] for r in roles)  # one magnitude per output feature
        return count + head
    if method.kind == "ia3":
        return n * (kv + kv + i) + head  # k and v outputs, down's input
    if method.kind == "top_layers":
        return method.k * block + h + head  # the last k blocks, the final norm, the head
    if method.kind == "bitfit":
        return (2 * n + 1) * h + head  # train [norm]: every RMSNorm gain
    if method.kind == "prefix":
        return method.num_virtual_tokens * n * 2 * kv + head
    if method.kind == "bottleneck":  # per adapter: down and up with biases (+ Lin's LayerNorm); Houlsby 2 a block
        width = method.hidden_size or h // (method.reduction_factor or 16)
        per_adapter = 2 * h * width + width + h + (2 * h if method.placement == "lin" else 0)
        return n * (2 if method.placement == "houlsby" else 1) * per_adapter + head
    raise AssertionError(method.kind)


@pytest.fixture(scope="module")
def run(smoke_runs):
    """`lorascope run --study jobs/smoke-methods.yaml --jobs 1` into a fresh store, made once per session (in the
    background while other tests run: tests/fixtures/smoke_runs.py)."""
    made = smoke_runs.get("smoke-methods")
    study = load_study(STUDY)
    ctx = PhaseContext(study, Store.open(str(made.store)), default_run_id(study), made.root / "read",
                       {"LORASCOPE_TORCH_THREADS": "1"}, Logger())  # fmt: skip
    return study, ctx


def test_every_cell_commits_its_methods_artifact_and_parameters(run):
    study, ctx = run
    cfg = json.loads((ctx.stage_dir() / "model" / "config.json").read_text())
    for cell in study.cells():
        method = study.method(cell.method)
        bundle = ctx.require("cells", cell.name)
        files = bundle.files
        artifact = "adapter" if method.adapter else "model"
        assert any(f.startswith(artifact + "/") for f in files), (cell.name, artifact)
        assert not any(f.startswith("model/" if method.adapter else "adapter/") for f in files), cell.name
        m = json.loads((ctx.local(bundle) / "metrics.json").read_text())
        assert m["method_kind"] == method.kind
        assert m["trainable_params"] == expected_trainable(method, cfg), cell.name
        assert m["trainable_bytes"] == 4 * m["trainable_params"]  # float32
        assert m["artifact_bytes"] == sum(p.stat().st_size for p in (ctx.local(bundle) / artifact).rglob("*") if p.is_file())
        assert set(m["validation"]) >= {"accuracy", "f1", "loss", "n"} and m["validation"]["n"] == 128
        if method.kind == "lora" and method.init == "pissa":
            config = json.loads((ctx.local(bundle) / "adapter" / "adapter_config.json").read_text())
            assert config["r"] == 2 * method.r and config["init_lora_weights"] is True  # converted


def test_a_reloaded_cell_reproduces_its_committed_predictions(run):
    study, ctx = run
    from lorascope import data

    rows = data.read_split(ctx.stage_dir(), "sst2", "validation")
    for method in study.methods:
        name = f"sst2-{method.name}-s42"
        committed = [json.loads(line) for line in (ctx.local(ctx.require("cells", name)) / "predictions.jsonl").read_text().splitlines()]
        model, tok = artifacts.load_cell_model(ctx.cell_dir(name), ctx.stage_dir() / "model", 2, "cpu", torch.float32)
        got = training.evaluate(model, tok, rows, study.task("sst2"), batch_size=64)
        by_idx = {p["idx"]: p for p in committed}
        np.testing.assert_allclose([p["logits"] for p in got.predictions],
                                   [by_idx[p["idx"]]["logits"] for p in got.predictions], atol=1e-4, err_msg=name)  # fmt: skip


def test_drift_has_every_method_and_says_why_some_have_no_weight_rows(run):
    study, ctx = run
    drift = ctx.local(ctx.require("drift"))
    summary = json.loads((drift / "summary.json").read_text())
    methods = summary["results"]["sst2"]["methods"]
    assert list(methods) == [m.name for m in study.methods]
    assert set(summary["settings"]["weights_skipped"]) == {"norm-only", "prefix", "adapter-h", "adapter-l"}
    rows = list(csv.DictReader(io.StringIO((drift / "weights.csv").read_text())))
    sources = {r["method"]: r["source"] for r in rows}
    assert sources["dora"] == "dora_weight" and sources["ia3"] == "ia3_weight" and sources["top1"] == "top_layers_delta"
    assert sources["pissa"] == "lora_factors" and sources["full"] == "full_delta"
    assert {r["block"] for r in rows if r["method"] == "top1"} == {"1"}  # only the trained block
    assert not {"norm-only", "prefix", "adapter-h", "adapter-l"} & set(sources)
    assert "does not merge into W0" in summary["settings"]["weights_skipped"]["adapter-h"]
    assert ctx.committed("report")


def test_report_shows_the_pareto_front_costs_and_forgetting_of_every_method(run):
    study, ctx = run
    report = ctx.local(ctx.require("report"))
    assert (report / "figures" / "pareto.png").stat().st_size > 10_000
    text = (report / "ANALYSIS_REPORT.md").read_text()
    assert "figures/pareto.png" in text
    summary = json.loads((ctx.local(ctx.require("drift")) / "summary.json").read_text())
    names = [m.name for m in study.methods]
    # the front: no member is dominated by another method's (metric, drift) means
    means = {m: (e["metric"]["mean"], e["drift"]["mean"]["debiased"]["mean"]) for m, e in summary["results"]["sst2"]["methods"].items()}
    section = text.split("## Accuracy vs drift: Pareto front", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| drift | sst2 |"))
    front = [n.strip() for n in row.split("|")[3].split(",")]
    assert front and set(front) <= set(names)
    for m in front:
        assert not any(o != m and means[o][0] >= means[m][0] and means[o][1] <= means[m][1]
                       and means[o] != means[m] for o in names), m  # fmt: skip
    assert max(names, key=lambda m: means[m][0]) in front  # the most accurate method is always on it
    # costs: one row per method, trainable params from the cells' metrics
    costs = text.split("## Cost per method", 1)[1].split("\n## ", 1)[0]
    for m in names:
        metrics = json.loads((ctx.local(ctx.require("cells", f"sst2-{m}-s42")) / "metrics.json").read_text())
        assert any(line.startswith(f"| {m} |") and f"| {metrics['trainable_params']} |" in line for line in costs.splitlines()), m
    # forgetting: measured for every decoder method but prefix tuning (noted with its reason), 0 = the base itself
    forgetting = summary["forgetting"]
    assert set(forgetting["sst2"]) == set(names) - {"prefix"}
    assert all(c.startswith("sst2-prefix-") for c in forgetting["not_measured"])
    assert {round(v["base_loss"], 6) for v in forgetting["sst2"].values()} == {round(forgetting["sst2"]["full"]["base_loss"], 6)}


def test_no_machine_path_in_any_committed_file_and_the_same_bytes_every_time(run):
    """Every file of every bundle (and the frozen study) holds neither the store's nor the work dir's absolute path,
    every adapter lists its modules sorted and every reps file its metadata. Before: each adapter's README.md named
    the stage folder's absolute path (`base_model:`), adapter_config.json listed target_modules in set order and
    reps.safetensors' header its metadata in hash-map order, so the same study gave different bytes."""
    study, ctx = run
    store = Path(ctx.store.url.removeprefix("file://"))
    run_dir = store / "runs" / ctx.run_id
    assert machine_paths_in(run_dir, store, store.parent / "work") == []
    adapters = sorted(run_dir.glob("cells/*/_attempts/*/adapter"))
    assert len(adapters) == 2 * sum(m.adapter for m in study.methods)
    for folder in adapters:
        if (folder / "bottleneck_config.json").is_file():  # a kind with its own artifact format, no PEFT README
            config = json.loads((folder / "bottleneck_config.json").read_text())
            assert config["targets"] and len(set(config["targets"])) == len(config["targets"]), folder
            continue
        config = json.loads((folder / "adapter_config.json").read_text())
        for key in ("target_modules", "feedforward_modules", "modules_to_save"):
            if isinstance(config.get(key), list):
                assert config[key] == sorted(config[key]), (folder, key)
        assert "base_model: builtin:tiny-llama\n" in (folder / "README.md").read_text()
    reps = sorted(run_dir.glob("reps/*/*/_attempts/*/reps.safetensors"))
    assert len(reps) == len(study.cells()) + len(study.tasks)
    for path in reps:
        metadata = tensorio.header(path)["__metadata__"]
        assert list(metadata) == ["model", "task"], path


def test_the_report_compares_method_kinds_like_for_like(run):
    """Issue 26 on the methods smoke run. Before: top1's H1b was "supported" (per-seed reductions 70.7, 66.2%) with
    half its layer mean the frozen layer_1 (drift exactly 0); the full weight row averaged seven module types
    against LoRA's two; two seeds gave verdicts; the overall line said "not supported" for the family of methods;
    prefix (a cell that did not learn) could sit on the front."""
    study, ctx = run
    summary = json.loads((ctx.local(ctx.require("drift")) / "summary.json").read_text())
    res = summary["results"]["sst2"]
    top = res["comparisons"]["top1"]
    assert top["layers_in_mean"]["mean"] == ["final_norm"]  # layer_1 is frozen by construction, embeddings too
    assert set(top["layers_excluded"]["mean"]) == {"embeddings", "layer_1"}
    assert top["layers"]["layer_1"]["verdict"] == "not compared" and top["layers"]["layer_1"]["method_mean"] == 0.0
    assert res["comparisons"]["lora"]["layers_in_mean"]["mean"] == ["layer_1", "final_norm"]
    h1b = summary["hypotheses"]["H1b"]
    assert h1b["by"]["sst2/top1"]["verdict"] != "supported"
    # the top1 pair's values are final_norm's drift alone: no zeros from the frozen block
    rows = list(csv.DictReader(io.StringIO((ctx.local(ctx.require("drift")) / "layer_rows.csv").read_text())))
    final = {r["seed"]: float(r["drift_debiased"]) for r in rows
             if (r["method"], r["layer"], r["pooling"]) == ("top1", "final_norm", "mean")}  # fmt: skip
    assert top["mean"]["debiased"]["method_values"] == {s: v for s, v in final.items()}
    # two seeds: exploratory, never supported / not supported; the overall line is the reference pair and counts
    assert all(v["verdict"].startswith("exploratory") or v["verdict"] == "not assessable" for v in h1b["by"].values())
    assert h1b["reference_pair"]["method"] == "lora" and sum(h1b["counts"].values()) == len(study.methods) - 1
    # weight rows: the same modules for every method in the main table
    assert len({tuple(e["module_types"]) for e in summary["weights"]["sst2"].values()}) == 1
    assert summary["weights_union"]["sst2"]["full"]["module_types"] != summary["weights_union"]["sst2"]["lora"]["module_types"]
    assert set(summary["settings"]["weights_notes"]) == {"ia3", "dora"}
    # the front: only methods whose cells learned
    report = json.loads((ctx.local(ctx.require("report")) / "summary.json").read_text())
    learned = {m for m, e in res["methods"].items() if e["learned"]}
    for axis in ("drift", "forgetting"):
        part = report["pareto"][axis]["sst2"]
        assert set(part["front"]) <= learned and set(part["not_learned"]) == set(part["points"]) - learned - {
            m for m, p in part["points"].items() if not p["n"]}
    text = (ctx.local(ctx.require("report")) / "ANALYSIS_REPORT.md").read_text()
    assert "| H1b | full vs lora | **exploratory: 2 seeds** |" in text and "**Like for like**" in text
