"""The generation bench on the hf backend (real transformers + PEFT generate on the tiny Llama, no mocks), committed
by the bench phase's generation entry (`phases.bench.measure_generation`), and H2 for generation read back from the
committed bundle: recomputed from the raw rows by hand it equals what the summary says, by THE rule
(`analysis.verdicts.h2`). The vLLM side: tests/vllm/test_generation_vllm.py."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest

from lorascope.analysis import verdicts
from lorascope.models import builtin
from lorascope.phases import bench as bench_phase
from lorascope.reporting import generation_bench as report
from lorascope.serving.generation import summary
from tests.phases.conftest import stage_run, write_study  # noqa: F401 (stage_run: the study's run folder helpers)
from tests.serving.generation_fixtures import E2E_FIXTURES, make_causal_adapter, make_full_causal

GENERATION = {"modes": ["full", "merged", "separate", "multi-2", "multi-3"], "batch_sizes": [1, 4], "prompt_tokens": 12,
              "output_tokens": 6, "requests": 8, "warmup_batches": 1, "repeats": 2}  # fmt: skip
FILES = {"summary.json", "summary.md", "requests.jsonl", "online.jsonl", "generation_serving.png"}


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """Stage (tiny Llama as a causal LM, the E2E-format fixture as the served task's validation split), two LoRA cells
    with CAUSAL_LM adapters and a full cell, then the generation bench of the hf backend, committed."""
    from tests.phases.conftest import Run

    folder = tmp_path_factory.mktemp("generation-bench")
    tasks = [{"name": t, "max_length": 64} for t in ("mrpc", "sst2")]
    path = write_study(folder, tasks=tasks, seeds=[42], bench={"backends": ["hf"], "generation": GENERATION})
    run = Run(path, str(folder / "store"), folder / "work", {"LORASCOPE_TORCH_THREADS": "1"})
    ctx = run.ctx()
    base = builtin.build_tiny_llama(folder / "base")
    with ctx.writer("stage", phase="stage", meta={"fixture": "tests/serving/test_generation_bench.py"}) as w:
        w.add_dir(base, prefix="model")
        w.add_file("data/mrpc/validation.jsonl", E2E_FIXTURES / "validation.jsonl")
    for i, task in enumerate(("mrpc", "sst2")):
        adapter = make_causal_adapter(base, folder / f"adapter-{task}", seed=20 + i)
        with ctx.writer("cells", f"{task}-lora-s42", phase="train") as w:
            w.add_dir(adapter, prefix="adapter")
    full = make_full_causal(base, folder / "full", seed=5)
    with ctx.writer("cells", "mrpc-full-s42", phase="train") as w:
        w.add_dir(full, prefix="model")
    assert bench_phase.bench_kind(run.study) == "classification"  # no study has generation tasks until lorascope.tasks lands
    bench_phase.measure_generation(ctx, "hf", ctx.log.bind(backend="hf"))
    bundle = run.store.bundle(run.key("bench", "hf"))
    rows = [json.loads(x) for x in bundle.read_bytes("requests.jsonl").decode().splitlines()]
    return bundle, bundle.read_json("summary.json"), rows


def test_bundle_has_every_mode_order_and_batch_size(committed):
    bundle, s, rows = committed
    assert FILES <= set(bundle.files) and s["bench"] == "generation" and s["backend"] == "hf"
    got = {(c["mode"], c["order"], c["batch_size"]) for c in s["offline"]}
    want = {(m, "single", b) for m in ("full", "merged", "separate") for b in (1, 4)}
    want |= {(m, o, b) for m in ("multi-2", "multi-3") for o in ("rr", "random") for b in (1, 4)}
    assert got == want
    for c in s["offline"]:
        assert c["timed_requests"] == 8 and c["repeats"] == 2
        assert 0 < c["ttft_ms"]["mean"] < c["e2e_ms"]["mean"] and c["tpot_ms"]["mean"] > 0
        assert c["ttft_ms"]["p50"] <= c["ttft_ms"]["p95"] <= c["ttft_ms"]["p99"]
        assert c["output_tokens_per_s"]["mean"] > 0 and c["rss_bytes"] > 0 and c["gpu_peak_allocated_bytes"] is None
    assert all(r["output_tokens"] == 6 and r["prompt_tokens"] == 12 for r in rows)  # EOS ignored, fixed lengths
    assert {len(r["tokens"]) for r in rows if "tokens" in r} == {6}
    assert set(s["models"]) == {"full", "merged", "adapters"} and s["models"]["merged"]["merge_seconds"] > 0
    assert s["online"] == [] and s["curves"] == {}  # online is vLLM's server


def test_synthetic_adapter_is_labelled_everywhere(committed):
    bundle, s, rows = committed
    assert s["adapters"] == {"mrpc": {"synthetic": False}, "sst2": {"synthetic": False}, "synthetic-1": {"synthetic": True}}
    multi3 = [c for c in s["offline"] if c["mode"] == "multi-3"]
    assert multi3 and all(c["synthetic_adapters"] == ["synthetic-1"] for c in multi3)
    assert all(r["synthetic"] == (r["adapter"] == "synthetic-1") for r in rows)
    assert any(r["synthetic"] for r in rows)
    md = bundle.read_bytes("summary.md").decode()
    assert "multi-3 (round-robin; 1 synthetic)" in md and "Synthetic adapters" in md and "synthetic-1" in md


def test_batched_and_mixed_batches_give_the_single_request_tokens(committed):
    _bundle, s, rows = committed
    c = s["correctness"]
    assert c["ok"] and set(c["by_mode"]) == {"separate", "multi", "merged", "full"}
    assert c["by_mode"]["multi"]["requests"] == 64 and c["mismatches"] == 0  # 2 modes x 2 orders x 2 batch sizes x 8
    # the adapters differ: the same prompt gets other tokens from another adapter (so mixed batches test something)
    last = [r for r in rows if "tokens" in r and r["mode"].startswith("multi")]
    by_prompt = defaultdict(dict)
    for r in last:
        by_prompt[r["prompt"]][r["adapter"]] = tuple(r["tokens"])
    assert any(len(set(v.values())) > 1 for v in by_prompt.values() if len(v) > 1)


def test_h2_from_the_committed_bundle_follows_the_rule(committed):
    _bundle, s, rows = committed
    limit = s["h2"]["limit_pct"]
    assert summary.h2(s["offline"], s["online"], limit, "hf") == s["h2"]  # re-derived from the bundle alone
    # by hand, from the raw rows: per repeat, mean TPOT and output tokens/s of separate and merged at each batch size
    per = defaultdict(lambda: defaultdict(list))
    batches = defaultdict(dict)
    for r in rows:
        if r["mode"] in ("separate", "merged"):
            per[(r["mode"], r["batch_size"], r["repeat"])]["tpot"].append(r["tpot_ms"])
            per[(r["mode"], r["batch_size"], r["repeat"])]["tokens"].append(r["output_tokens"])
            batches[(r["mode"], r["batch_size"], r["repeat"])][r["batch"]] = r["batch_ms"]
    for b in (1, 4):
        tpot = {m: [float(np.mean(per[(m, b, rep)]["tpot"])) for rep in (0, 1)] for m in ("separate", "merged")}
        ms_tok = {m: [sum(batches[(m, b, rep)].values()) / sum(per[(m, b, rep)]["tokens"]) for rep in (0, 1)]
                  for m in ("separate", "merged")}  # fmt: skip
        for metric, values in (("tpot", tpot), ("tokens_per_s", ms_tok)):
            part = s["h2"]["by"][f"hf offline {metric} eager batch {b}"]
            logs = [math.log(a / c) for a, c in zip(values["separate"], values["merged"], strict=True)]
            assert part["pct"] == pytest.approx(100 * math.expm1(np.mean(logs)), rel=1e-6)
            rule = verdicts.h2(values["separate"], values["merged"], limit)
            assert part["verdict"] == rule["verdict"] and part["n"] == 2 and (part["metric"], part["batch_size"]) == (metric, b)
            assert part["lo"] == pytest.approx(rule["lo"], rel=1e-6) and part["hi"] == pytest.approx(rule["hi"], rel=1e-6)
    assert s["h2"]["verdict"] == verdicts.combine(s["h2"]["by"])


def test_h2_rule_on_known_numbers():
    """Hand-made per-repeat numbers: 10% slower in every repeat is supported at a 30% limit, 2x slower is not, and
    the online parts pair the one-adapter LoRA server with merged at each rate."""

    def config(mode: str, tpot: list[float], tps: list[float]) -> dict:
        return {"mode": mode, "regime": "eager", "batch_size": 1, "order": "single", "mean_tpot_ms_per_repeat": tpot,
                "ms_per_output_token_per_repeat": [1e3 / x for x in tps], "output_tokens_per_s_per_repeat": tps}  # fmt: skip

    def point(mode: str, k: int, tpot: list[float], tps: list[float]) -> dict:
        return {"mode": mode, "adapters": k, "request_rate": 4.0, "failed": 0,
                "vllm_per_repeat": {"mean_tpot_ms": tpot, "output_throughput": tps}}  # fmt: skip

    merged = config("merged", [10.0, 10.2, 9.9], [100.0, 98.0, 101.0])
    close = config("separate", [11.0, 11.1, 10.95], [91.0, 89.5, 92.0])
    far = config("separate", [20.0, 21.0, 19.0], [50.0, 48.0, 52.0])
    ok = summary.h2([merged, close], [], 30.0, "x")
    assert ok["verdict"] == "supported" and set(ok["by"]) == {"x offline tpot eager batch 1", "x offline tokens_per_s eager batch 1"}
    assert summary.h2([merged, far], [], 30.0, "x")["verdict"] == "not supported"
    online = summary.h2([], [point("merged", 0, [5.0, 5.1], [200.0, 199.0]), point("separate", 2, [50.0, 50.0], [10.0, 10.0]),
                             point("separate", 1, [5.2, 5.4], [198.0, 196.0])], 30.0, "vllm")  # fmt: skip
    assert set(online["by"]) == {"vllm online tpot rate 4", "vllm online tokens_per_s rate 4"}  # the 2-adapter point is no part
    assert online["by"]["vllm online tpot rate 4"]["pct"] == pytest.approx(100 * (math.sqrt(5.2 / 5.0 * 5.4 / 5.1) - 1))
    assert summary.h2([], [], 30.0, "x")["verdict"] == verdicts.NOT_MEASURED


def test_report_renders_the_committed_summary(committed, tmp_path):
    _bundle, s, _rows = committed
    md = report.summary_markdown(s)
    for heading in ("## Offline", "## Ratios against merged", "## H2 for generation", "## Online", "## Correctness"):
        assert heading in md
    assert "| separate vs merged |" in md and "hf offline tpot eager batch 4" in md
    png = report.figure({"hf": s}, tmp_path / "g.png")
    assert png.stat().st_size > 10_000


def test_online_point_and_curves_from_vllm_results():
    """online_point reads vLLM's serving-benchmark result dicts: means over repeats, pooled per-request TPOT by vLLM's
    formula, realised adapter shares; curves order the points by rate."""
    def result(tps: float, models: list[str]) -> dict:
        n = len(models)
        base = {"duration": 2.0, "completed": n, "failed": 0, "request_throughput": n / 2, "output_throughput": tps,
                "total_token_throughput": tps * 2, "max_concurrent_requests": 2,
                "ttfts": [0.01] * n, "latencies": [0.05] * n, "output_lens": [5] * n, "errors": [""] * n, "models": models}  # fmt: skip
        for m in ("ttft", "tpot", "itl", "e2el"):
            for st in ("mean", "median", "p50", "p95", "p99"):
                base[f"{st}_{m}_ms"] = 10.0 if m == "tpot" else 1.0
        return base

    p = summary.online_point("separate", ["a", "b"], "zipf", 8.0, [result(100.0, ["a", "a", "b"]), result(110.0, ["a", "b", "a"])],
                             ["b"], [2 / 3, 1 / 3], 0.95)  # fmt: skip
    assert p["vllm"]["output_throughput"] == pytest.approx(105.0) and p["synthetic_adapters"] == ["b"]
    assert p["realised_shares"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3)}
    assert p["pooled_ms"]["tpot"]["mean"] == pytest.approx(10.0)  # (50 - 10) / (5 - 1) ms
    slow = summary.online_point("separate", ["a", "b"], "zipf", 2.0, [result(30.0, ["a", "b", "a"])], ["b"], [2 / 3, 1 / 3], 0.95)
    c = summary.curves([p, slow])
    assert list(c) == ["separate x2 zipf (1 synthetic)"] and [q["request_rate"] for q in c["separate x2 zipf (1 synthetic)"]] == [2.0, 8.0]
