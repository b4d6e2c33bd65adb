"""vLLM's compiled regime on this machine (markers `vllm` and `slow`: a compiled engine's first start compiles the
model with inductor, ~40 s cold on the 2-core development machine, a few seconds once vLLM's compile cache under
VLLM_CACHE_ROOT holds it). No mocks: the merged checkpoint served by a compiled engine and by an eager engine, one
batch of 8 requests, both against HF transformers + PEFT.

On vLLM's CPU platform `compiled` is one Dynamo trace compiled by inductor (`DYNAMO_TRACE_ONCE/inductor`); with LoRA
enabled the platform forces eager, so only plain engines (merged, full) run compiled there (vllm_backend module doc).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from lorascope.models import builtin  # noqa: E402
from lorascope.serving import hf_backend, protocol, vllm_backend  # noqa: E402
from lorascope.serving.workload import Request  # noqa: E402
from lorascope.study import LoraMethod  # noqa: E402
from tests.fixtures.tiny_model import make_adapter  # noqa: E402

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
KV = 32 * 2**20
PROB_TOL = 1e-5


def _requests(n: int) -> list[Request]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        s1, s2 = rng.integers(5, 380, size=int(rng.integers(3, 20))), rng.integers(5, 380, size=int(rng.integers(3, 20)))
        out.append(Request(task="mrpc", idx=i, input_ids=(1, *map(int, s1), 2, *map(int, s2)), label=0))
    return out


def _serve(merged, base, regime: str, reqs: list[Request]) -> tuple[np.ndarray, str, float]:
    kw = vllm_backend.engine_kwargs(merged, base, "float32", KV, 384, 0, regime=regime)
    server = vllm_backend.VllmServer("merged", kw, {}, vllm_backend.weights_bytes(merged, "float32"), threads=1)
    try:
        assert server.regime == regime and server.memory()["compilation"] == server.compilation
        return server.serve(reqs), server.compilation, server.load_seconds
    finally:
        server.close()


def test_merged_compiled_answers_like_eager_and_hf(tmp_path):
    base = builtin.build_tiny_llama(tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter", LoraMethod(), seed=10)
    merged = tmp_path / "merged"
    hf_backend.merge_adapter(base, adapter, merged, 2, torch.float32, tokenizer_dir=base)
    reqs = _requests(8)  # one batch of 8

    compiled, how, t_c = _serve(merged, base, "compiled", reqs)
    eager, eager_how, t_e = _serve(merged, base, "eager", reqs)
    print(f"engine start: compiled {t_c:.1f} s, eager {t_e:.1f} s")
    assert eager_how == "NONE"
    assert how != "NONE" and how.endswith("/inductor"), how  # really compiled, by inductor
    if vllm_backend.platform_kind() == "cpu":
        assert how == "DYNAMO_TRACE_ONCE/inductor"

    hf = hf_backend.open_plain("merged", merged, 2, torch.float32, torch.device("cpu"))
    try:
        ref = np.asarray([hf.serve([q])[0] for q in reqs])
    finally:
        hf.close()
    p_c, p_e, p_hf = (protocol.softmax(x) for x in (compiled, eager, ref))
    assert (p_c.argmax(-1) == p_e.argmax(-1)).all() and (p_c.argmax(-1) == p_hf.argmax(-1)).all()
    assert float(np.abs(p_c - p_e).max()) < PROB_TOL
    assert float(np.abs(p_c - p_hf).max()) < PROB_TOL
    assert float(np.abs(compiled - ref).max()) < 1e-4  # logits too, not only probabilities
    assert float(np.abs(p_hf - 0.5).max()) > 1e-3  # the requests discriminate: not every answer is a coin flip


def test_bench_phase_times_merged_compiled_and_eager(tmp_path):
    """`bench.vllm_regimes: [compiled, eager]` through `lorascope bench`: merged runs in both regimes, separate in
    eager only and named as skipped on CPU; the compiled engine is recorded as compiled; compiled answers equal the
    eager ones and HF's; the summary has the compiled/eager ratio and H2 comes from the regime with separate."""
    from lorascope import cli
    from lorascope.serving.plan import BenchPlan
    from tests.fixtures.runs import stage_run
    from tests.fixtures.studies import write_study
    from tests.fixtures.tiny_model import commit_cells

    bench = {"backends": ["vllm"], "modes": ["merged", "separate"], "vllm_regimes": ["compiled", "eager"],
             "batch_sizes": [4], "requests": 8, "repeats": 2, "warmup_batches": 2, "kv_cache_memory_bytes": KV}  # fmt: skip
    tasks = [{"name": "mrpc", "max_length": 64, "train_samples": 32, "eval_samples": 40}]
    run = stage_run(write_study(tmp_path, tasks=tasks, seeds=[42], bench=bench), str(tmp_path / "store"),
                    tmp_path / "work", env={"LORASCOPE_TORCH_THREADS": "1"})  # fmt: skip
    ctx = run.ctx()
    commit_cells(ctx, tmp_path / "cells", ctx.local(ctx.bundle("stage")) / "model", BenchPlan(run.study, "vllm").cells)
    assert cli.main(run.args("bench", 0)) == 0
    bundle = run.store.bundle(run.key("bench", "vllm"))
    s = bundle.read_json("summary.json")
    timed = {(c["regime"], c["mode"]) for c in s["configs"]}
    cpu = s["platform"] == "cpu"
    assert {("compiled", "merged"), ("eager", "merged"), ("eager", "separate")} <= timed
    assert (("compiled", "separate") in timed) is not cpu
    assert s["regimes_skipped"] == (["separate [compiled]"] if cpu else [])
    compiled = [m for m in s["modes"].values() if m["regime"] == "compiled"]
    assert compiled and all(m["compilation"] != "NONE" for m in compiled)
    assert all(m["compilation"] == "NONE" for m in s["modes"].values() if m["regime"] == "eager")
    ratio = s["regime_vs_eager"]["merged compiled_vs_eager"]["4"]
    assert ratio["n"] == 2 and ratio["pct"] > -100.0
    c = s["correctness"]
    assert c["regime_vs_eager"]["ok"] and set(c["regime_vs_eager"]["modes"]) >= {"merged"}
    assert c["regime_vs_eager"]["max_prob_diff"] < PROB_TOL
    by = c["vllm_vs_hf"]["by_regime"]
    assert by["compiled"]["merged"]["ok"] and by["compiled"]["merged"]["max_prob_diff"] < PROB_TOL
    assert by["compiled"]["merged"]["requests"] == 8
    if cpu:
        assert s["regime_primary"] == "eager" and set(s["h2"]["by"]) == {"eager batch 4"}
    md = bundle.read_bytes("summary.md").decode()
    assert "| merged | compiled vs eager |" in md and "| regime_vs_eager |" in md
