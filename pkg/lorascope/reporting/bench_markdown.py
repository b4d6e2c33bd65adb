"""The bench bundle's summary.md (one backend's summary.json as tables), and the words for a backend and its device
that this file, the report's tables and its latency figure share (never "hf on x86_64")."""

from __future__ import annotations

from typing import Any

BACKEND_NAMES = {"hf": "Hugging Face transformers + PEFT", "vllm": "vLLM"}
PLATFORM_NAMES = {"torch": "on PyTorch", "cpu": "CPU build", "cuda": "CUDA build"}


def stack_name(backend: str, platform: str | None) -> str:
    """The serving stack in words: "Hugging Face transformers + PEFT on PyTorch", "vLLM, CPU build"."""
    name = BACKEND_NAMES.get(backend, backend)
    if not platform:
        return name
    build = PLATFORM_NAMES.get(platform, f"platform {platform}")
    return f"{name} {build}" if build.startswith("on ") else f"{name}, {build}"


def device_words(b: dict) -> str:
    """The device in words from a bench summary's `device` and `device_name`: "CPU (x86_64)", "GPU NVIDIA L4 (cuda:0)"."""
    device = str(b.get("device") or "unknown device")
    name = b.get("device_name")
    if device == "cpu":
        return f"CPU ({name})" if name else "CPU"
    if device.startswith("cuda"):
        return f"GPU {name} ({device})" if name else f"GPU ({device})"
    return device


def _number(x: Any, decimals: int = 3) -> str:
    """A float with fixed decimals, anything else as is; n/a for None."""
    return "n/a" if x is None else f"{x:.{decimals}f}" if isinstance(x, float) else str(x)


def _mib(n_bytes: Any) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / 2**20:.1f}"


def _overhead_cell(overhead: dict | None) -> str:
    """An overhead of one batch size: +x.x% [lo, hi], or empty where not measured."""
    if overhead is None:
        return ""
    return f"{overhead['pct']:+.1f}% [{_number(overhead['lo'], 1)}, {_number(overhead['hi'], 1)}]"


def summary_markdown(summary: dict) -> str:
    """summary.md: one backend's summary.json (serving.bench_summary) as tables."""
    lines = [f"# bench: {stack_name(summary['backend'], summary.get('platform'))} on {device_words(summary)}, {summary['dtype']}", "",
             f"Study `{summary['study']}` ({summary['study_hash']}); served task `{summary['protocol']['served_task']}`, cells of seed "
             f"{summary['protocol']['seed']}; {summary['protocol']['requests']} timed requests per configuration and repeat, "
             f"{summary['protocol']['warmup_batches']} warm-up batches, {summary['protocol']['repeats']} repeats, "
             f"{int(100 * summary['protocol']['confidence'])}% t-intervals over repeat means on the log scale (never below 0). GPU memory: {summary['gpu_memory']}. "
             f"Platform `{summary.get('platform', 'n/a')}`; execution regimes {', '.join(summary.get('regimes', ['eager']))} (every "
             f"overhead compares modes of one regime; H2 takes every regime in which separate and merged were both timed). "
             f"Total {summary['seconds']:.1f} s.", ""]
    if summary.get("regimes_skipped"):
        lines += [f"Not possible on this platform, so not timed: {', '.join(summary['regimes_skipped'])}.", ""]
    lines += ["## Latency and throughput", "",
              "| regime | mode | order | batch | batch ms mean [CI] | p50 | p95 | p99 | ms/request | req/s [CI] | tokens/s | harness ms (% of mean) | GPU peak MiB |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---|---:|"]  # fmt: skip
    for config in summary["configs"]:
        batch_ms, ci, rps = config["latency_batch_ms"], config["mean_batch_ms_ci"], config["throughput_rps"]
        lines.append(
            f"| {config.get('regime', 'eager')} | {config['mode']} | {config['order']} | {config['batch_size']} | "
            f"{_number(batch_ms['mean'])} [{_number(ci['low'])}, {_number(ci['high'])}] | {_number(batch_ms['p50'])} | "
            f"{_number(batch_ms['p95'])} | {_number(batch_ms['p99'])} | {_number(config['latency_request_ms']['mean'])} | "
            f"{_number(rps['mean'], 1)} [{_number(rps['low'], 1)}, {_number(rps['high'], 1)}] | "
            f"{_number(config['throughput_tokens_per_s']['mean'], 0)} | {_number(config['harness_overhead_ms']['mean'], 4)} "
            f"({_number(config['harness_overhead_pct_of_mean'], 2)}%) | {_mib(config['gpu_peak_allocated_bytes'])} |")
    lines += ["", "## Overhead against merged (H2: separate vs merged), within one regime", "",
              "| regime | comparison | " + " | ".join(f"batch {b}" for b in summary["protocol"]["batch_sizes"]) + " |",
              "|---|---|" + "---|" * len(summary["protocol"]["batch_sizes"])]
    for regime, overhead in (summary.get("overhead_by_regime") or {"eager": summary["overhead"]}).items():
        for name, by_batch_size in overhead.items():
            if not by_batch_size:
                continue
            cells = []
            for size in summary["protocol"]["batch_sizes"]:
                cells.append(_overhead_cell(by_batch_size.get(str(size))))
            lines.append(f"| {regime} | {name} | " + " | ".join(cells) + " |")
    if summary.get("regime_vs_eager"):
        lines += ["", "## The same mode in another regime against eager (what the regime costs; not part of H2)", "",
                  "| mode | comparison | " + " | ".join(f"batch {b}" for b in summary["protocol"]["batch_sizes"]) + " |",
                  "|---|---|" + "---|" * len(summary["protocol"]["batch_sizes"])]
        for key, by_batch_size in summary["regime_vs_eager"].items():
            mode, name = key.rsplit(" ", 1)
            cells = [_overhead_cell(by_batch_size.get(str(size))) for size in summary["protocol"]["batch_sizes"]]
            lines.append(f"| {mode} | {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
        lines += ["", "Negative: the other regime is faster than eager (geometric mean over repeats of the latency ratio "
                  "- 1, paired by repeat index; the regimes ran one after the other, not interleaved)."]
    h2 = summary["h2"]
    lines += ["", "Overheads: geometric mean over repeats of separate/merged (paired by repeat) - 1, [95% interval: "
              "one-sided 97.5% t bounds on the log scale].", "",
              f"H2 (separate <= {h2['limit_pct']:g}% over merged at every batch size, in every regime timed): "
              f"**{h2['verdict']}** (largest overhead {_number(h2['max_overhead_pct'], 1)}%). Rule: {h2['rule']}.", ""]
    lines += [f"- {k}: {v['verdict']}: {v['evidence']}" for k, v in h2["by"].items()]
    lines += ["", "## Load time and memory", "",
              "| regime | mode | cells | load s (mean of repeats) | weights MiB | GPU after load MiB | RSS after load MiB | KV cache MiB |",
              "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for mode, loaded in summary["modes"].items():
        extra = f" (+ merge {loaded['merge_seconds']:.2f} s)" if loaded.get("merge_seconds") is not None else ""
        compilation = loaded.get("compilation")
        regime = loaded.get("regime", "eager") + (f" ({compilation})" if compilation not in (None, "NONE") else "")
        lines.append(f"| {regime} | {loaded.get('mode', mode)} | {', '.join(loaded['cells'])} | "
                     f"{loaded['load_seconds']:.3f}{extra} | {_mib(loaded['weights_bytes'])} | "
                     f"{_mib(loaded.get('gpu_allocated_after_load_bytes'))} | {_mib(loaded.get('rss_after_load_bytes'))} | "
                     f"{_mib(loaded.get('kv_cache_memory_bytes'))} |")  # fmt: skip
    if summary["switch"]:
        lines += ["", "## Adapter switching (on its own)", "", "| multi mode / order | switches | mean ms | p50 | p95 | p99 |",
                  "|---|---:|---:|---:|---:|---:|"]
        for key, switch in summary["switch"].items():
            ms = switch["latency_ms"]
            lines.append(f"| {key} | {ms['n']} | {_number(ms['mean'], 4)} | {_number(ms['p50'], 4)} | {_number(ms['p95'], 4)} | "
                         f"{_number(ms['p99'], 4)} |")  # fmt: skip
    for mode, loaded in summary["modes"].items():
        if loaded.get("adapter_first_use"):
            loads = loaded["adapter_first_use"]
            lines += ["", f"Adapter first use ({mode}, mean of {len(loads)} loads): " + "; ".join(
                f"{task}: cold {sum(load[task]['cold_ms'] for load in loads) / len(loads):.2f} ms, "
                f"warm {sum(load[task]['warm_ms'] for load in loads) / len(loads):.2f} ms" for task in loads[0])]
    correctness = summary["correctness"]
    lines += ["", f"## Correctness ({correctness['dtype']}, probability tolerance {correctness['tolerance_prob']})", "",
              f"Reference: {correctness['reference']}.", "",
              "| check | requests | argmax mismatches | ties within tol. | max prob diff | max logit diff | ok |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for name in ("multi_vs_single", "merged_vs_separate", "separate_batched_vs_single", "regime_vs_eager"):
        check = correctness.get(name)
        if check:
            lines.append(f"| {name} | {check['requests']} | {check['argmax_mismatches']} | "
                         f"{check['argmax_ties_within_tolerance']} | {check['max_prob_diff']:.2e} | "
                         f"{check['max_logit_diff']:.2e} | {check['ok']} |")  # fmt: skip
    vs_hf = correctness.get("vllm_vs_hf")
    if vs_hf:
        lines += ["", f"vLLM against HF ({vs_hf['reference']}): **{'ok' if vs_hf['ok'] else 'NOT ok'}**", "",
                  "| modes | requests | argmax mismatches | max prob diff | max logit diff | ok |", "|---|---:|---:|---:|---:|---|"]
        rows = [(name, vs_hf.get(name)) for name in ("separate", "multi", "merged", "full")]
        for regime, by in (vs_hf.get("by_regime") or {}).items():  # several regimes: each one on its own as well
            rows += [(f"{name} [{regime}]", check) for name, check in by.items()]
        for name, check in rows:
            if check:
                lines.append(f"| {name} | {check['requests']} | {check['argmax_mismatches']} | {check['max_prob_diff']:.2e} | "
                             f"{check['max_logit_diff']:.2e} | {check['ok']} |")  # fmt: skip
    vs_train = correctness.get("vs_train_predictions") or {}
    if vs_train.get("requests"):
        lines += ["", f"Against the train phase's predictions.jsonl: {vs_train['requests']} requests, argmax agreement "
                  f"{vs_train['argmax_agreement']:.4f}, max prob diff {vs_train['max_prob_diff']:.2e}."]
    return "\n".join(lines) + "\n"
