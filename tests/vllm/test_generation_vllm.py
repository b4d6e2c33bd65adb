"""The generation bench on vLLM's real engine and server (marker `vllm`; runs in .venv-vllm). No mocks.

  * offline: `run_bench("vllm")` on the tiny Llama (CAUSAL_LM adapters with seeded random lora_B, a noised full
    model): greedy tokens of every request of separate, a mixed multi-adapter batch (round-robin and random), merged
    and full equal HF transformers + PEFT's, each request alone, token for token; vLLM's per-request metrics give
    TTFT, TPOT and E2E; CPU memory is reported as CPU memory;
  * online: vLLM's OpenAI-compatible server on 127.0.0.1 (a free port) with two adapters, driven by vLLM's serving
    benchmark at two request rates and two adapter counts (uniform and Zipf): every metric is there, the adapter mix
    is the requested one, and the server's process group is gone afterwards;
  * the real SmolLM2-135M with a small adapter: separate and mixed batches equal HF token for token.
"""

from __future__ import annotations

import os
import socket
from collections import defaultdict

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from lorascope.models import builtin  # noqa: E402
from lorascope.serving.generation import GenerationInputs, GenerationSettings, OnlineSettings, workload  # noqa: E402
from lorascope.serving.generation import bench as generation  # noqa: E402
from tests.serving.generation_fixtures import e2e_prompts, make_causal_adapter, make_full_causal  # noqa: E402

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
KV = 32 * 2**20


def _log(event: str, **fields) -> None:
    print(event, fields)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("generation-vllm")
    base = builtin.build_tiny_llama(tmp / "base")
    adapters = {n: make_causal_adapter(base, tmp / f"adapter-{n}", seed=30 + i) for i, n in enumerate(("e2e", "e2e-b"))}
    full = make_full_causal(base, tmp / "full", seed=9)
    return GenerationInputs(base, adapters, full, e2e_prompts(base, 12)), tmp


@pytest.fixture(scope="module")
def offline(inputs):
    inp, tmp = inputs
    settings = GenerationSettings(modes=("full", "merged", "separate", "multi-2"), batch_sizes=(1, 4), prompt_tokens=12,
                                  output_tokens=8, requests=4, warmup_batches=1, repeats=2, kv_cache_memory_bytes=KV,
                                  threads=1, online=None)  # fmt: skip
    real = torch.set_num_threads
    result = generation.run_bench("vllm", inp, settings, tmp / "work-offline", _log)
    assert torch.set_num_threads is real  # vLLM's CPU worker stubs it; the last engine closed put it back
    return result


def test_greedy_tokens_equal_hf_for_every_mode(offline):
    c = offline["summary"]["correctness"]
    assert c["check"] == "vLLM against HF transformers + PEFT"
    assert set(c["by_mode"]) == {"separate", "multi", "merged", "full"}
    for name, check in c["by_mode"].items():
        assert check["requests"] > 0 and check["identical"] == check["requests"], name
    assert c["by_mode"]["multi"]["requests"] == 16 and c["ok"]  # rr and random, batch sizes 1 and 4, 4 requests each
    # the two adapters answer the same prompt differently, so the mixed batches test something
    tokens = defaultdict(dict)
    for r in offline["offline_rows"]:
        if "tokens" in r and r["mode"] == "multi-2":
            tokens[r["prompt"]][r["adapter"]] = tuple(r["tokens"])
    assert any(len(set(v.values())) == 2 for v in tokens.values())


def test_engine_metrics_and_cpu_memory(offline):
    s = offline["summary"]
    assert s["backend"] == "vllm" and s["platform"] == ("cuda" if torch.cuda.is_available() else "cpu")
    for c in s["offline"]:
        assert 0 < c["ttft_ms"]["mean"] < c["e2e_ms"]["mean"] and c["tpot_ms"]["mean"] > 0, c["mode"]
        assert c["output_tokens_per_s"]["mean"] > 0 and c["rss_bytes"] > 0
        if s["platform"] == "cpu":
            assert c["gpu_peak_allocated_bytes"] is None
    assert all(r["output_tokens"] == 8 for r in offline["offline_rows"])  # EOS ignored
    lora = s["models"]["adapters"]
    assert lora["kv_cache_memory_bytes"] == KV and lora["max_loras"] == 2 and lora["modes"] == ["separate", "multi-2"]
    assert {k: v["load_seconds"] > 0 for k, v in s["models"].items()} == {"full": True, "merged": True, "adapters": True}
    assert set(s["ratios"]["separate_vs_merged"]) == {"eager batch 1", "eager batch 4"}
    assert {p["metric"] for p in s["h2"]["by"].values()} == {"tpot", "tokens_per_s"}


def _pgid_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_online_server_returns_every_metric_and_is_stopped(inputs):
    inp, tmp = inputs
    online = OnlineSettings(modes=("separate",), request_rates=(4.0, 32.0), adapter_counts=(1, 2),
                            popularity=("uniform", "zipf"), requests=8, repeats=1, warmup_requests=1)  # fmt: skip
    settings = GenerationSettings(modes=("separate",), batch_sizes=(1,), prompt_tokens=12, output_tokens=6,
                                  kv_cache_memory_bytes=KV, threads=1, online=online)  # fmt: skip
    b = generation.Bench(backend="vllm", inputs=inp, settings=settings, work=tmp / "work-online", log=_log)
    b.prepare()
    points, servers, rows = b.online()
    srv = servers["separate"]
    assert srv["startup_seconds"] > 0 and srv["stopped"] and not _pgid_alive(srv["pid"])
    port = int(srv["args"][srv["args"].index("--port") + 1])
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more
    got = {(p["adapters"], p["popularity"], p["request_rate"]) for p in points}
    assert got == {(k, pop, r) for k, pop in ((1, "single"), (2, "uniform"), (2, "zipf")) for r in (4.0, 32.0)}
    for p in points:
        assert p["failed"] == 0 and p["vllm"]["completed"] == 8
        for metric in ("ttft", "tpot", "itl", "e2el"):
            for stat in ("mean", "median", "p50", "p95", "p99"):
                assert p["vllm"][f"{stat}_{metric}_ms"] > 0, (metric, stat)
        assert p["vllm"]["output_throughput"] > 0 and p["vllm"]["request_throughput"] > 0
        for name, share in p["requested_shares"].items():
            assert abs(p["realised_shares"][name] - share) < 1 / 8 + 1e-9
    zipf = [p for p in points if p["popularity"] == "zipf"][0]
    assert zipf["requested_shares"] == {"e2e": pytest.approx(2 / 3), "e2e-b": pytest.approx(1 / 3)}
    # each request reached the adapter it named: vLLM's server answers per-request `model` fields
    assert {r["model"] for r in rows if r["adapters"] == 2} == {"e2e", "e2e-b"} and all(r["error"] is None for r in rows)
    assert workload.frequencies([r["model"] for r in rows if r["popularity"] == "zipf" and r["request_rate"] == 4.0],
                                ["e2e", "e2e-b"]) == {"e2e": 5 / 8, "e2e-b": 3 / 8}  # quotas of 8: 5.33 -> 5, 2.67 -> 3


@pytest.mark.timeout(1500)  # 406 s on 2 cores with a load average of 11-13 (135M parameters, LoRA eager on CPU)
def test_smollm2_separate_and_mixed_batches_equal_hf(tmp_path):
    from tests.real_model.staging import smollm2_model_dir

    base = smollm2_model_dir()
    adapters = {n: make_causal_adapter(base, tmp_path / n, seed=40 + i, scale=0.01) for i, n in enumerate(("a", "b"))}
    inp = GenerationInputs(base, adapters, None, e2e_prompts(base, 6))
    settings = GenerationSettings(modes=("separate", "multi-2"), batch_sizes=(3,), prompt_tokens=16, output_tokens=8,
                                  requests=6, warmup_batches=0, repeats=1, kv_cache_memory_bytes=64 * 2**20, threads=1,
                                  online=None)  # fmt: skip
    s = generation.run_bench("vllm", inp, settings, tmp_path / "work", _log)["summary"]
    c = s["correctness"]
    assert set(c["by_mode"]) == {"separate", "multi"}
    assert c["ok"], c["by_mode"]
