"""serving.protocol: repeats, warm-up, raw rows and summaries, overheads, the H2 verdict and the correctness checks,
driven by a scripted server whose every batch takes a known time (tests/fixtures/scripted.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lorascope.analysis import verdicts
from lorascope.serving import protocol, workload
from tests.fixtures.scripted import SETTINGS, ScriptedServer, run_config


def test_repeats_warmup_and_summary_values(pools):
    server = ScriptedServer("merged", ms_per_request=2.0)
    run = run_config(server, pools, "merged", "single", ["mrpc"], 4, SETTINGS)
    # per repeat: 3 warm-up batches (untimed) + ceil(10/4) = 3 timed batches of 4
    assert server.served == [4] * 6 * 3
    assert server.resets == 3 and len(run.peak) == 3
    assert run.seconds == [[pytest.approx(8e-3)] * 3] * 3
    assert len(run.harness_seconds) == 3 and all(s == 0 for s in run.harness_seconds)
    s = protocol.config_summary(run, 0.95)
    assert s["timed_requests"] == 12 and s["repeats"] == 3
    assert s["latency_batch_ms"]["mean"] == pytest.approx(8.0) and s["latency_batch_ms"]["p99"] == pytest.approx(8.0)
    assert s["latency_request_ms"]["mean"] == pytest.approx(2.0)
    assert s["throughput_rps"]["mean"] == pytest.approx(500.0)  # 4 requests per 8 ms
    tokens = sum(q.tokens for b in run.batches for q in b)
    assert s["throughput_tokens_per_s"]["mean"] == pytest.approx(tokens / 0.024)
    assert s["mean_batch_ms_ci"]["low"] == pytest.approx(8.0) and s["harness_overhead_pct_of_mean"] == 0
    assert s["gpu_peak_allocated_bytes"] is None and s["rss_bytes"] == 123


def test_summary_intervals_are_the_log_scale_ones_computed_once(pools):
    """Every interval over repeats in a config summary is `verdicts.positive_interval` (log scale, never below 0):
    the summary is the only place that computes them, nobody overwrites them later."""
    server = ScriptedServer("separate", ms_per_request=2.0)
    run = run_config(server, pools, "separate", "single", ["mrpc"], 4, SETTINGS)
    run.seconds = [[0.001, 0.001, 0.001], [0.004, 0.005, 0.006], [0.060, 0.001, 0.002]]  # a wide spread over repeats
    s = protocol.config_summary(run, 0.95)
    ms = [1e3 * float(np.mean(r)) for r in run.seconds]
    assert s["mean_batch_ms_per_repeat"] == pytest.approx(ms)
    assert s["mean_batch_ms_ci"] == verdicts.positive_interval(ms, 0.95)
    assert s["throughput_rps"] == verdicts.positive_interval([12 / sum(r) for r in run.seconds], 0.95)
    tokens = sum(q.tokens for b in run.batches for q in b)
    assert s["throughput_tokens_per_s"] == verdicts.positive_interval([tokens / sum(r) for r in run.seconds], 0.95)
    for key in ("mean_batch_ms_ci", "throughput_rps", "throughput_tokens_per_s"):
        assert s[key]["scale"] == "log" and 0 < s[key]["low"] < s[key]["geo_mean"] < s[key]["high"]
    # a linear t-interval of these means would reach below zero: mean - t * sd / sqrt(3)
    from scipy import stats

    assert np.mean(ms) - stats.t.ppf(0.975, 2) * np.std(ms, ddof=1) / np.sqrt(3) < 0


def test_raw_rows_carry_every_timed_request(pools):
    server = ScriptedServer("multi-3", ms_per_request=1.0)
    run = run_config(server, pools, "multi-3", "rr", ["mrpc", "sst2", "rte"], 4, SETTINGS)
    reqs = protocol.request_rows("hf", run)
    assert len(reqs) == 12 * 3
    last = [r for r in reqs if r["repeat"] == 2]
    assert all(r["adapter"] == r["task"] and r["batch_ms"] == pytest.approx(4.0) and r["request_ms"] == pytest.approx(1.0)
               for r in reqs)  # fmt: skip
    assert all(r["logits"] == [float(r["idx"]), -float(r["idx"])] and r["pred"] == 0 for r in last)
    assert [r["task"] for r in last[:6]] == ["mrpc", "sst2", "rte"] * 2
    batches = protocol.batch_rows("hf", run)
    timed = [b for b in batches if b["kind"] == "timed"]
    assert len(timed) == 9 and sum(b["requests"] for b in timed) == 36
    assert timed[0]["adapters"] == ["mrpc", "rte", "sst2"]
    assert len([b for b in batches if b["kind"] == "harness"]) == 3


def test_overheads_and_h2_from_config_summaries(pools):
    """The bench's summaries feed the one H2 rule (analysis.verdicts): overheads per batch size within a regime."""
    from lorascope.analysis import verdicts

    configs = []
    for mode, ms in (("merged", 2.0), ("separate", 2.5), ("full", 2.0)):
        for bs in (1, 4):
            server = ScriptedServer(mode, ms * (1.5 if (mode == "separate" and bs == 4) else 1.0))
            configs.append(protocol.config_summary(run_config(server, pools, mode, "single", ["mrpc"], bs, SETTINGS), 0.95))
    assert {c["regime"] for c in configs} == {"eager"}
    sep = verdicts.overheads(configs, lambda c: c["mode"] == "separate", lambda c: c["mode"] == "merged")
    assert sep["1"]["pct"] == pytest.approx(25.0) and sep["4"]["pct"] == pytest.approx(87.5)
    full = verdicts.overheads(configs, lambda c: c["mode"] == "full", lambda c: c["mode"] == "merged")
    assert full["1"]["pct"] == pytest.approx(0.0)
    h2 = verdicts.h2_summary(configs, 30.0)
    assert set(h2["by"]) == {"eager batch 1", "eager batch 4"} and h2["max_overhead_pct"] == pytest.approx(87.5)
    # scripted latencies repeat exactly: zero variance carries no evidence either way
    assert all(p["verdict"] == "inconclusive" for p in h2["by"].values()) and h2["verdict"] == "inconclusive"


def test_switches_change_the_adapter_every_call():
    server = ScriptedServer("multi-3", 1.0)
    for order in ("rr", "random"):
        server.switched.clear()
        secs = protocol.run_switches(server, ["mrpc", "sst2", "rte"], order, SETTINGS, clock=server.clock)
        assert len(secs) == SETTINGS.requests
        seq = server.switched[:-1]
        assert len(seq) == SETTINGS.warmup_batches + SETTINGS.requests
        assert all(a != b for a, b in zip(seq, seq[1:], strict=False))
        assert server.switched[-1] == "mrpc"  # the first task is active again afterwards


def test_compare_counts_mismatches_and_ties():
    reqs = [workload.Request("mrpc", i, (1, 2), 0) for i in range(3)]
    ref = {("mrpc", 0): np.array([2.0, 0.0]), ("mrpc", 1): np.array([0.0, 2.0]), ("mrpc", 2): np.array([1.0, 1.0 - 1e-6])}
    same = protocol.ConfigRun("multi-2", "rr", 3, ["mrpc"], [reqs], logits=[np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0 - 1e-6]])])
    ok = protocol.compare([same], ref, 1e-4)
    assert ok["ok"] and ok["requests"] == 3 and ok["max_prob_diff"] == pytest.approx(0.0)
    flipped = protocol.ConfigRun("multi-2", "rr", 3, ["mrpc"], [reqs], logits=[np.array([[0.0, 2.0], [0.0, 2.0], [1.0 - 1e-6, 1.0]])])
    bad = protocol.compare([flipped], ref, 1e-4)
    assert bad["argmax_mismatches"] == 1 and bad["argmax_ties_within_tolerance"] == 1 and not bad["ok"]
    assert bad["max_logit_diff"] == pytest.approx(2.0) and bad["worst"]["idx"] == 0


class ShiftedServer(ScriptedServer):
    """Answers like ScriptedServer, with `shift` added to one request's first logit (a compiled kernel gone wrong)."""

    def __init__(self, mode: str, ms: float, shift: float, idx: int) -> None:
        super().__init__(mode, ms)
        self.shift, self.idx = shift, idx

    def serve(self, batch):
        out = super().serve(batch)
        for i, q in enumerate(batch):
            if q.idx == self.idx:
                out[i, 0] += self.shift
        return out


def test_regimes_agree_compares_each_mode_with_itself_eager(pools):
    eager = [run_config(ScriptedServer(m, 2.0), pools, m, "single", ["mrpc"], bs, SETTINGS, regime="eager")
             for m in ("merged", "separate") for bs in (1, 4)]  # fmt: skip
    assert protocol.regimes_agree(eager, 1e-4) is None  # one regime: nothing to compare
    same = [run_config(ScriptedServer("merged", 1.0), pools, "merged", "single", ["mrpc"], bs, SETTINGS, regime="compiled")
            for bs in (1, 4)]  # fmt: skip
    r = protocol.regimes_agree(eager + same, 1e-4)
    assert r["ok"] and set(r["modes"]) == {"merged"} and r["max_prob_diff"] == 0.0
    assert r["requests"] == sum(len(b) for run in same for b in run.batches)
    idx = same[0].batches[0][0].idx  # one request of the compiled runs answered differently
    off = [run_config(ShiftedServer("merged", 1.0, shift=-2 * idx - 5.0, idx=idx), pools, "merged", "single", ["mrpc"], bs,
                      SETTINGS, regime="compiled")
           for bs in (1, 4)]  # fmt: skip
    bad = protocol.regimes_agree(eager + off, 1e-4)
    assert not bad["ok"] and bad["argmax_mismatches"] >= 1 and bad["modes"]["merged"]["worst"]["idx"] == idx
    assert bad["modes"]["merged"]["worst"]["regime"] == "compiled"
