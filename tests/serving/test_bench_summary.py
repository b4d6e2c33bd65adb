"""serving.bench_summary: a backend's summary.json from the protocol's runs, without torch: the machine facts come in from
the phase, overheads only within a regime, H2 by the one rule, switch latencies from their raw seconds."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from lorascope.analysis import verdicts
from lorascope.log import Logger
from lorascope.serving import bench_summary, protocol
from tests.fixtures.scripted import SETTINGS, ScriptedServer, run_config

MACHINE = {"device": "cpu", "device_name": "x86_64", "torch_threads": 1, "versions": {"torch": "2.13.0+cpu"}}


def _plan() -> SimpleNamespace:
    modes = ["full", "merged", "separate", "multi-2"]
    return SimpleNamespace(backend="hf", regimes=["eager"], modes=modes, batch_sizes=[1, 4], served_task="mrpc",
                           tasks=["mrpc", "sst2"], adapter_tasks=["mrpc", "sst2"], seed=42,
                           orders=lambda m: ["rr", "random"] if m.startswith("multi-") else ["single"])  # fmt: skip


def _runs(pools) -> list[protocol.ConfigRun]:
    ms = {"full": 2.0, "merged": 2.0, "separate": 3.0, "multi-2": 3.3}
    plan = _plan()
    return [run_config(ScriptedServer(m, ms[m]), pools, m, o, ["mrpc", "sst2"] if m == "multi-2" else ["mrpc"], bs, SETTINGS)
            for m in plan.modes for o in plan.orders(m) for bs in plan.batch_sizes]  # fmt: skip


def test_summarize(pools):
    study = SimpleNamespace(name="smoke", hash="abc", hypotheses=SimpleNamespace(h2_max_overhead_pct=30.0))
    runs = _runs(pools)
    switches = {"multi-2/rr": {"seconds": [0.001, 0.003]}}
    s = bench_summary.summarize(study, _plan(), runs, settings=SETTINGS, modes={"merged": {}}, switches=switches,
                                correctness={"ok": True}, machine=MACHINE, dtype_name="float32", seconds=12.5,
                                platform_name="torch", skipped=[])  # fmt: skip
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
    gpu = bench_summary.summarize(study, _plan(), runs, settings=SETTINGS, modes={}, switches={}, correctness={},
                                  machine={**MACHINE, "device": "cuda:0"}, dtype_name="bfloat16", seconds=1.0)  # fmt: skip
    assert gpu["gpu_memory"].startswith("measured")


def test_the_summary_and_its_markdown_import_no_torch():
    code = ("import sys, lorascope.serving.bench_summary, lorascope.reporting.bench_markdown, lorascope.models.hub; "
            "assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def _cpu_vllm_summary(pools, correctness: dict | None = None) -> tuple[dict, list]:
    """vLLM on CPU: full and merged timed compiled (1.5 ms per request) and eager (2.0 ms), separate eager only (3 ms)."""
    study = SimpleNamespace(name="smoke", hash="abc", hypotheses=SimpleNamespace(h2_max_overhead_pct=30.0))
    plan = SimpleNamespace(**{**vars(_plan()), "backend": "vllm", "regimes": ["compiled", "eager"],
                              "modes": ["full", "merged", "separate"]})  # fmt: skip
    ms = {("compiled", "full"): 1.5, ("compiled", "merged"): 1.5, ("eager", "full"): 2.0, ("eager", "merged"): 2.0,
          ("eager", "separate"): 3.0}  # fmt: skip
    runs = []
    for (regime, mode), v in ms.items():
        for bs in plan.batch_sizes:
            run = protocol.new_config(mode, "single", bs, ["mrpc"], pools, SETTINGS, regime=regime)
            server = ScriptedServer(mode, v)
            for r in range(SETTINGS.repeats):
                protocol.run_repeat(server, run, Logger(), harness=r == SETTINGS.repeats - 1, clock=server.clock)
            runs.append(run)
    modes = {("full" if r == "compiled" else f"full [{r}]"): {"mode": "full", "regime": r, "cells": ["mrpc-full-s42"],
                                                             "load_seconds": 30.0 if r == "compiled" else 1.5,
                                                             "weights_bytes": 1,
                                                             "compilation": "DYNAMO_TRACE_ONCE/inductor" if r == "compiled" else "NONE"}
             for r in ("compiled", "eager")}  # fmt: skip
    s = bench_summary.summarize(study, plan, runs, settings=SETTINGS, modes=modes, switches={}, correctness=correctness or {},
                                machine=MACHINE, dtype_name="float32", seconds=1.0, platform_name="cpu",
                                skipped=["separate [compiled]"])  # fmt: skip
    return s, runs


def test_compiled_is_compared_with_eager_per_mode_and_never_enters_h2(pools):
    """`regime_vs_eager` holds the same mode across regimes (compiled 1.5 ms vs eager 2.0 ms per request: -25 %);
    overheads and H2 stay within one regime, and the primary regime is the one where separate and merged were both
    timed."""
    s, _ = _cpu_vllm_summary(pools)
    assert set(s["regime_vs_eager"]) == {"full compiled_vs_eager", "merged compiled_vs_eager"}
    for key in s["regime_vs_eager"]:
        assert set(s["regime_vs_eager"][key]) == {"1", "4"}
        assert s["regime_vs_eager"][key]["4"]["pct"] == pytest.approx(-25.0)
    assert s["regime_primary"] == "eager" and s["overhead"]["separate_vs_merged"]["1"]["pct"] == pytest.approx(50.0)
    assert s["overhead_by_regime"]["compiled"]["separate_vs_merged"] == {}
    assert s["overhead_by_regime"]["compiled"]["full_vs_merged"]["1"]["pct"] == pytest.approx(0.0)
    assert set(s["h2"]["by"]) == {"eager batch 1", "eager batch 4"} and s["regimes_skipped"] == ["separate [compiled]"]
    study = SimpleNamespace(name="smoke", hash="abc", hypotheses=SimpleNamespace(h2_max_overhead_pct=30.0))
    one = bench_summary.summarize(study, _plan(), _runs(pools), settings=SETTINGS, modes={}, switches={}, correctness={},
                                  machine=MACHINE, dtype_name="float32", seconds=1.0)  # fmt: skip
    assert one["regime_vs_eager"] == {}  # one regime: nothing to compare across


def test_markdown_names_the_regime_of_every_row(pools):
    """summary.md: the load table says which regime each engine ran in (the compiled `full` engine is keyed `full`),
    the compiled-vs-eager table has its ratios, and the correctness tables show the regime check and vLLM-vs-HF per
    regime."""
    from lorascope.reporting import bench_markdown

    _, runs = _cpu_vllm_summary(pools)
    agree = protocol.regimes_agree(runs, 1e-4)
    vh = {"reference": "HF", "tolerance": 1e-4, "ok": True, "max_prob_diff": 1e-7, "argmax_agreement": 1.0,
          "merged": {"requests": 8, "argmax_mismatches": 0, "max_prob_diff": 2e-7, "max_logit_diff": 1e-6, "ok": True},
          "by_regime": {"compiled": {"merged": {"requests": 4, "argmax_mismatches": 0, "max_prob_diff": 3e-7,
                                                "max_logit_diff": 1e-6, "ok": True}}}}  # fmt: skip
    correctness = {"dtype": "float32", "tolerance_prob": 1e-4, "reference": "alone", "regime_vs_eager": agree,
                   "vllm_vs_hf": vh}  # fmt: skip
    s, _ = _cpu_vllm_summary(pools, correctness)
    md = bench_markdown.summary_markdown(s)
    assert "| compiled (DYNAMO_TRACE_ONCE/inductor) | full | mrpc-full-s42 | 30.000 |" in md and "| eager | full | mrpc-full-s42 | 1.500 |" in md
    assert "| merged | compiled vs eager | -25.0% [" in md and "| full | compiled vs eager | -25.0% [" in md
    assert f"| regime_vs_eager | {agree['requests']} | 0 | 0 | 0.00e+00 |" in md
    assert "| merged [compiled] | 4 | 0 | 3.00e-07 |" in md
    assert "Not possible on this platform, so not timed: separate [compiled]." in md


def test_report_bench_section_names_regimes_and_shows_compiled_vs_eager(pools):
    """The report's bench lines (analysis.summary.bench_section -> reporting.markdown.bench_tables): the regimes, the
    configurations not possible on the platform, compiled/eager per mode, regime rows in the latency table."""
    from lorascope.analysis.summary import bench_section
    from lorascope.reporting.markdown import bench_tables

    s, _ = _cpu_vllm_summary(pools)
    lines = bench_tables({"bench": bench_section({"vllm": {"summary": s, "bundle": "bench/vllm", "attempt": "a"}})})
    text = "\n".join(lines)
    assert "execution regimes compiled, eager; not possible on this platform: separate [compiled]" in text
    assert "  - `vllm` merged, compiled vs eager (latency; negative = faster): batch 1 -25.0% [" in text
    assert "batch 4 -25.0%" in text and "`vllm` full, compiled vs eager" in text
    assert any(ln.startswith("| compiled | merged | single | 4 |") for ln in lines)
    assert not any(ln.startswith("| compiled | separate |") for ln in lines)
