"""The bench phase's vllm index on vLLM's real engine (marker `vllm`, runs in .venv-vllm): `lorascope bench --index 1`
commits a bundle whose correctness flags hold, vLLM against HF included, with CPU memory reported as CPU memory (no
GPU figures), every mode timed in one execution regime, and torch's thread control given back afterwards."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from lorascope import cli  # noqa: E402
from lorascope.serving import vllm_backend  # noqa: E402
from lorascope.serving.plan import BenchPlan  # noqa: E402
from tests.fixtures.runs import stage_run  # noqa: E402
from tests.fixtures.studies import write_study  # noqa: E402
from tests.fixtures.tiny_model import commit_cells  # noqa: E402

TASKS = ("mrpc", "sst2", "rte")
KV = 32 * 2**20
PROB_TOL = 1e-5


def test_bench_phase_vllm_index_commits_with_correctness(tmp_path):
    bench = {"backends": ["hf", "vllm"], "batch_sizes": [1, 4], "requests": 8, "repeats": 2, "warmup_batches": 2,
             "kv_cache_memory_bytes": KV}  # fmt: skip
    tasks = [{"name": t, "max_length": 64, "train_samples": 32, "eval_samples": 40} for t in TASKS]
    run = stage_run(write_study(tmp_path, tasks=tasks, seeds=[42], bench=bench), str(tmp_path / "store"),
                    tmp_path / "work", env={"LORASCOPE_TORCH_THREADS": "1"})  # fmt: skip
    ctx = run.ctx()
    plan = BenchPlan(run.study, "vllm")
    commit_cells(ctx, tmp_path / "cells", ctx.local(ctx.bundle("stage")) / "model", plan.cells)
    assert cli.main(run.args("bench", 1)) == 0
    s = run.store.bundle(run.key("bench", "vllm")).read_json("summary.json")
    assert s["backend"] == "vllm" and s["platform"] == vllm_backend.platform_kind()
    assert s["regimes"] == ["eager"] and {c["regime"] for c in s["configs"]} == {"eager"}
    assert {c["mode"] for c in s["configs"]} == set(plan.modes)
    c = s["correctness"]
    for name in ("multi_vs_single", "merged_vs_separate", "separate_batched_vs_single"):
        assert c[name]["ok"], (name, c[name])
    vh = c["vllm_vs_hf"]
    assert vh["ok"] and vh["argmax_agreement"] == 1.0 and vh["max_prob_diff"] < PROB_TOL
    for name in ("separate", "multi", "merged", "full"):
        assert vh[name]["requests"] > 0 and vh[name]["argmax_mismatches"] == 0, name
    assert set(s["overhead"]["separate_vs_merged"]) == {"1", "4"}
    assert s["h2"]["verdict"] in ("supported", "not supported", "inconclusive")
    assert set(s["h2"]["by"]) == {"eager batch 1", "eager batch 4"}
    if s["platform"] == "cpu":
        assert all(m.get("gpu_allocated_after_load_bytes") is None for m in s["modes"].values())
        assert all(m["rss_after_load_bytes"] > 0 and m["kv_cache_memory_bytes"] == KV for m in s["modes"].values())
    assert torch.set_num_threads.__module__ == "torch"  # vLLM's stub is gone once the engines are closed
    torch.set_num_threads(2)
    assert torch.get_num_threads() == 2
    md = run.store.bundle(run.key("bench", "vllm")).read_bytes("summary.md").decode()
    assert "vLLM against HF" in md and "| eager | separate |" in md
