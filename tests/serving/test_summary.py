"""serving.summary: a backend's summary.json from the protocol's runs, without torch: the machine facts come in from
the phase, overheads only within a regime, H2 by the one rule, switch latencies from their raw seconds."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from lorascope.analysis import verdicts
from lorascope.serving import protocol
from lorascope.serving import summary as bench_summary
from tests.serving.test_protocol import SETTINGS, ScriptedServer, _run

MACHINE = {"device": "cpu", "device_name": "x86_64", "torch_threads": 1, "versions": {"torch": "2.13.0+cpu"}}


def _plan() -> SimpleNamespace:
    modes = ["full", "merged", "separate", "multi-2"]
    return SimpleNamespace(backend="hf", regimes=["eager"], modes=modes, batch_sizes=[1, 4], served_task="mrpc",
                           tasks=["mrpc", "sst2"], adapter_tasks=["mrpc", "sst2"], seed=42,
                           orders=lambda m: ["rr", "random"] if m.startswith("multi-") else ["single"])  # fmt: skip


def _runs(pools) -> list[protocol.ConfigRun]:
    ms = {"full": 2.0, "merged": 2.0, "separate": 3.0, "multi-2": 3.3}
    plan = _plan()
    return [_run(ScriptedServer(m, ms[m]), pools, m, o, ["mrpc", "sst2"] if m == "multi-2" else ["mrpc"], bs, SETTINGS)
            for m in plan.modes for o in plan.orders(m) for bs in plan.batch_sizes]  # fmt: skip


def test_summarize(pools):
    study = SimpleNamespace(name="smoke", hash="abc", hypotheses=SimpleNamespace(h2_max_overhead_pct=30.0))
    runs = _runs(pools)
    switches = {"multi-2/rr": {"seconds": [0.001, 0.003]}}
    s = bench_summary.summarize(study, _plan(), runs, {"merged": {}}, switches, {"ok": True}, SETTINGS, MACHINE,
                                "float32", 12.5, platform_name="torch", skipped=[])  # fmt: skip
    assert (s["device"], s["device_name"], s["torch_threads"], s["versions"]) == ("cpu", "x86_64", 1, {"torch": "2.13.0+cpu"})
    assert s["gpu_memory"].startswith("n/a on CPU") and s["seconds"] == 12.5 and s["correctness"] == {"ok": True}
    assert s["configs"] == [protocol.config_summary(r, 0.95) for r in runs]
    assert s["h2"] == verdicts.h2_summary(s["configs"], 30.0)
    assert s["h2"]["by"]["eager batch 4"]["pct"] == pytest.approx(50.0)  # separate 3 ms vs merged 2 ms per request
    assert set(s["overhead"]) == {"separate_vs_merged", "full_vs_merged", "multi-2/rr_vs_separate", "multi-2/rr_vs_merged",
                                  "multi-2/random_vs_separate", "multi-2/random_vs_merged"}  # fmt: skip
    assert s["overhead"]["multi-2/rr_vs_separate"]["1"]["pct"] == pytest.approx(10.0)
    assert s["overhead_by_regime"] == {"eager": s["overhead"]} and s["regime_primary"] == "eager"
    assert s["switch"]["multi-2/rr"]["latency_ms"]["mean"] == pytest.approx(2.0)
    assert s["protocol"]["orders"]["multi-2"] == ["rr", "random"] and s["protocol"]["requests"] == SETTINGS.requests
    gpu = bench_summary.summarize(study, _plan(), runs, {}, {}, {}, SETTINGS, {**MACHINE, "device": "cuda:0"}, "bfloat16", 1.0)
    assert gpu["gpu_memory"].startswith("measured")


def test_the_summary_and_its_markdown_import_no_torch():
    code = ("import sys, lorascope.serving.summary, lorascope.reporting.bench_markdown, lorascope.hub; "
            "assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
