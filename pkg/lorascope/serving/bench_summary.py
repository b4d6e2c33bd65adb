"""The bench's summary.json: one backend's raw timings turned into what the report reads. Pure Python + numpy/scipy
(no torch import): the phase passes the machine facts (device, its name, threads, package versions) in.

  per configuration   `protocol.config_summary`: latency percentiles, throughput, and intervals over repeats
  overheads           `regime_overheads`: separate / full / multi-k against merged (and multi-k against separate),
                      per batch size, only between modes of one execution regime (`verdicts.overheads`)
  across regimes      `versus_eager`: each mode timed in another regime (vLLM `compiled`) against the same mode eager,
                      per batch size: what compilation buys, the one comparison that crosses regimes (same mode,
                      same requests)
  H2                  `verdicts.h2_summary` over every (regime, batch size): the one rule drift and report also use
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lorascope.analysis import verdicts
from lorascope.serving import protocol, timing
from lorascope.serving.plan import BenchPlan

if TYPE_CHECKING:
    from lorascope.study import Study

PROTOCOL_TEXT = {
    "clock": "time.perf_counter_ns between synchronized reads (cuda synchronize on GPU)",
    "timed_region": "pad token ids, copy to device, forward, logits back to host",
    "multi_adapter_batching": "mixed batches: one adapter per row (PEFT adapter_names / vLLM per-prompt LoRARequest)",
}


def regime_overheads(configs: Sequence[dict], modes: Sequence[str], orders: Mapping[str, Sequence[str]],
                     regime: str) -> dict[str, Any]:  # fmt: skip
    """Overheads between modes timed in one execution regime (never across regimes), by `verdicts.overheads`.
    `orders`: the request orders of each mode (multi-k: rr and random)."""

    def is_(mode: str, order: str | None = None):
        return lambda c: c["regime"] == regime and c["mode"] == mode and (order is None or c["order"] == order)

    overhead: dict[str, Any] = {"separate_vs_merged": verdicts.overheads(configs, is_("separate"), is_("merged")),
                                "full_vs_merged": verdicts.overheads(configs, is_("full"), is_("merged"))}  # fmt: skip
    for mode in modes:
        if mode.startswith("multi-"):
            for order in orders[mode]:
                overhead[f"{mode}/{order}_vs_separate"] = verdicts.overheads(configs, is_(mode, order), is_("separate"))
                overhead[f"{mode}/{order}_vs_merged"] = verdicts.overheads(configs, is_(mode, order), is_("merged"))
    return overhead


def versus_eager(configs: Sequence[dict], regimes: Sequence[str], modes: Sequence[str],
                 orders: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """`verdicts.overheads` of each mode (and request order) timed in a regime other than eager against the same mode
    and order timed eager, per batch size; keys "<mode>[/<order>] <regime>_vs_eager". A negative pct: that regime is
    faster. Only modes timed in both regimes appear (on vLLM's CPU platform: full and merged)."""
    if "eager" not in regimes:
        return {}

    def is_(regime: str, mode: str, order: str):
        return lambda c: c["regime"] == regime and c["mode"] == mode and c["order"] == order

    out: dict[str, Any] = {}
    for regime in regimes:
        if regime == "eager":
            continue
        for mode in modes:
            for order in orders[mode]:
                by = verdicts.overheads(configs, is_(regime, mode, order), is_("eager", mode, order))
                if by:
                    out[f"{mode if order == 'single' else f'{mode}/{order}'} {regime}_vs_eager"] = by
    return out


def summarize(study: Study, plan: BenchPlan, runs: Sequence[protocol.ConfigRun], *, settings: protocol.Settings,
              modes: dict, switches: dict, correctness: dict, machine: Mapping[str, Any], dtype_name: str, seconds: float,
              platform_name: str = "torch", skipped: Sequence[str] | None = None) -> dict:  # fmt: skip
    """summary.json of one backend from its timed `runs`. `modes`: per mode key its load times and memory; `switches`:
    the raw adapter-switch seconds per "multi-k/order"; `correctness`: `servers.check_correctness`; `machine`: device
    (str), device_name, torch_threads, versions (the phase reads them from torch and the backend); `seconds`: the
    bench's wall time; `platform_name`: "torch" or vLLM's platform; `skipped`: the "mode [regime]" configurations not
    possible on this platform."""
    conf = settings.confidence
    configs = [protocol.config_summary(r, conf) for r in runs]
    switch = {k: {"latency_ms": timing.latency_stats(v["seconds"]), "what": "PEFT set_adapter to another task's adapter"}
              for k, v in switches.items()}  # fmt: skip
    orders = {m: plan.orders(m) for m in plan.modes}
    by_regime = {r: regime_overheads(configs, plan.modes, orders, r) for r in plan.regimes}
    # `overhead`: the first listed regime in which separate and merged were both timed (all regimes: overhead_by_regime)
    primary = next((r for r in plan.regimes if by_regime[r]["separate_vs_merged"]), plan.regimes[0])
    on_gpu = str(machine["device"]).startswith("cuda")
    return {
        "backend": plan.backend,
        "study": study.name,
        "study_hash": study.hash,
        "device": str(machine["device"]),
        "device_name": machine["device_name"],
        "torch_threads": machine["torch_threads"],
        "dtype": dtype_name,
        "platform": platform_name,
        "regimes": plan.regimes,
        "regime_primary": primary,
        "regimes_skipped": list(skipped or []),
        "versions": dict(machine["versions"]),
        "gpu_memory": "measured (torch.cuda.max_memory_allocated)" if on_gpu else "n/a on CPU: see weights_bytes and rss_bytes",
        "protocol": {
            "served_task": plan.served_task, "tasks": plan.tasks, "adapter_tasks": plan.adapter_tasks, "seed": plan.seed,
            "modes": plan.modes, "batch_sizes": plan.batch_sizes, "warmup_batches": settings.warmup_batches,
            "requests": settings.requests, "repeats": settings.repeats, "confidence": conf, "orders": orders,
            **PROTOCOL_TEXT,
        },  # fmt: skip
        "modes": modes,
        "configs": configs,
        "switch": switch,
        "overhead": by_regime[primary],
        "overhead_by_regime": by_regime,
        # the same mode in two regimes (compiled against eager): not a deployment comparison, what the regime costs
        "regime_vs_eager": versus_eager(configs, plan.regimes, plan.modes, orders),
        # the rule drift and report use: every (regime, batch size) of this backend is a part of H2
        "h2": verdicts.h2_summary(configs, study.hypotheses.h2_max_overhead_pct),
        "correctness": correctness,
        "seconds": seconds,
    }
