"""The generation bench's summary.md and figure (serving.generation's summary.json of one backend, or several for the
report): offline latency and throughput by mode and batch size, the separate/merged ratios, H2 for generation, the
online throughput-latency curves, start-up times, memory and greedy-token correctness. Computes no new statistic.
Synthetic adapters are named so wherever they appear."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.reporting.bench_markdown import device_words, stack_name

ORDER_NAMES = {"rr": "round-robin", "random": "random", "single": ""}


def _n(x: Any, decimals: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{decimals}f}" if isinstance(x, float) else str(x)


def _mib(x: Any) -> str:
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def _ci(ci: Mapping | None, decimals: int = 2) -> str:
    if not ci:
        return "n/a"
    lo, hi = ci.get("low"), ci.get("high")
    return f"{_n(ci['mean'], decimals)} [{_n(lo, decimals)}, {_n(hi, decimals)}]"


def mode_label(config: Mapping) -> str:
    """"separate", "multi-4 (round-robin; 2 synthetic)"."""
    bits = [ORDER_NAMES.get(config["order"], config["order"])]
    syn = len(config.get("synthetic_adapters") or [])
    if syn:
        bits.append(f"{syn} synthetic")
    bits = [b for b in bits if b]
    return config["mode"] + (f" ({'; '.join(bits)})" if bits else "")


def offline_table(summary: Mapping) -> list[str]:
    lines = ["| regime | mode | batch | TTFT ms mean / p95 | TPOT ms mean [CI] | TPOT p50 / p95 / p99 | E2E ms mean / p95 / p99 | "
             "output tokens/s [CI] | RSS MiB | GPU peak MiB |", "|---|---|---:|---|---|---|---|---|---:|---:|"]  # fmt: skip
    for c in summary.get("offline") or []:
        t, p, e = c["ttft_ms"], c["tpot_ms"], c["e2e_ms"]
        lines.append(f"| {c['regime']} | {mode_label(c)} | {c['batch_size']} | {_n(t['mean'])} / {_n(t['p95'])} | "
                     f"{_ci(c['mean_tpot_ms_ci'], 3)} | {_n(p['p50'], 3)} / {_n(p['p95'], 3)} / {_n(p['p99'], 3)} | "
                     f"{_n(e['mean'], 1)} / {_n(e['p95'], 1)} / {_n(e['p99'], 1)} | {_ci(c['output_tokens_per_s'], 1)} | "
                     f"{_mib(c.get('rss_bytes'))} | {_mib(c.get('gpu_peak_allocated_bytes'))} |")  # fmt: skip
    return lines


def ratio_table(summary: Mapping) -> list[str]:
    """candidate / merged per batch size: TPOT ratio and output tokens/s ratio (geometric means over repeats)."""
    ratios = summary.get("ratios") or {}
    keys = list(dict.fromkeys(k for by in ratios.values() for k in by))
    if not keys:
        return []
    lines = ["| comparison | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, by in ratios.items():
        if by:
            cells = [f"TPOT x{by[k]['tpot_ratio']:.2f}, tok/s x{by[k]['tokens_per_s_ratio']:.2f}" if k in by else "" for k in keys]
            lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return lines


def h2_lines(summary: Mapping) -> list[str]:
    h2 = summary.get("h2") or {}
    lines = [f"H2 for generation (separate <= {h2.get('limit_pct', 30):g}% over merged in TPOT and in output tokens/s, every "
             f"batch size and request rate): **{h2.get('verdict', 'not measured')}** (largest overhead "
             f"{_n(h2.get('max_overhead_pct'), 1)}%). Rule: {h2.get('rule', '')}.", "",
             "| part | overhead [95% interval] | per repeat | verdict |", "|---|---|---|---|"]  # fmt: skip
    for key, part in (h2.get("by") or {}).items():
        reps = ", ".join(f"{x:+.1f}" for x in part.get("per_repeat_pct") or [])
        lines.append(f"| {key} | {part['pct']:+.1f}% [{_n(part.get('lo'), 1)}, {_n(part.get('hi'), 1)}] | {reps} | {part['verdict']} |")
    return lines


def online_lines(summary: Mapping) -> list[str]:
    points = summary.get("online") or []
    if not points:
        return ["No online measurement (hf backend, or the online mode is off)."]
    lines = ["| server | startup s | adapters | regime | RSS after start MiB | stopped |", "|---|---:|---|---|---:|---|"]
    for mode, srv in (summary.get("servers") or {}).items():
        syn = [a for a in srv.get("adapters") or [] if (summary.get("adapters") or {}).get(a, {}).get("synthetic")]
        ad = f"{len(srv.get('adapters') or [])}" + (f" ({len(syn)} synthetic)" if syn else "")
        lines.append(f"| {mode} | {_n(srv.get('startup_seconds'), 1)} | {ad} | {srv.get('regime')} | "
                     f"{_mib(srv.get('rss_after_start_bytes'))} | {srv.get('stopped')} |")  # fmt: skip
    lines += ["", "| series | rate req/s | output tokens/s | p95 TPOT ms | p95 TTFT ms | mean TPOT ms | p95 E2E ms |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, curve in (summary.get("curves") or {}).items():
        for p in curve:
            lines.append(f"| {name} | {p['request_rate']:g} | {_n(p['output_tokens_per_s'], 1)} | {_n(p['p95_tpot_ms'])} | "
                         f"{_n(p['p95_ttft_ms'], 1)} | {_n(p['mean_tpot_ms'])} | {_n(p['p95_e2el_ms'], 1)} |")  # fmt: skip
    mixes = [p for p in points if p["mode"] == "separate" and p["adapters"] > 1]
    if mixes:
        lines += ["", "Adapter mix (requested share -> realised share, mean over repeats):"]
        seen = set()
        for p in mixes:
            key = (p["adapters"], p["popularity"])
            if key in seen:
                continue
            seen.add(key)
            shares = ", ".join(f"{a}{' (synthetic)' if a in (p.get('synthetic_adapters') or []) else ''} "
                               f"{p['requested_shares'][a]:.3f} -> {p['realised_shares'][a]:.3f}" for a in p["adapter_names"])  # fmt: skip
            lines.append(f"- {p['adapters']} adapters, {p['popularity']}: {shares}")
    return lines


def models_lines(summary: Mapping) -> list[str]:
    lines = ["| model | regime | serves | load s | weights MiB | RSS after load MiB | GPU after load MiB | KV cache MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for key, m in (summary.get("models") or {}).items():
        merge = f" (+ merge {m['merge_seconds']:.2f} s)" if m.get("merge_seconds") is not None else ""
        lines.append(f"| {key} | {m.get('regime')} | {', '.join(m.get('modes') or [])} | {_n(m.get('load_seconds'))}{merge} | "
                     f"{_mib(m.get('weights_bytes'))} | {_mib(m.get('rss_after_load_bytes'))} | "
                     f"{_mib(m.get('gpu_allocated_after_load_bytes'))} | {_mib(m.get('kv_cache_memory_bytes'))} |")  # fmt: skip
    return lines


def correctness_lines(summary: Mapping) -> list[str]:
    c = summary.get("correctness") or {}
    lines = [f"{c.get('check', 'correctness')}: **{'ok' if c.get('ok') else 'NOT ok'}**. Reference: {c.get('reference', '')}.", "",
             "| modes | requests | identical | mismatches | first divergence (token) | ok |", "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    rows = list((c.get("by_mode") or {}).items())
    if c.get("merged_vs_separate_hf"):
        rows.append(("merged vs separate (HF, informational)", c["merged_vs_separate_hf"]))
    for name, r in rows:
        lines.append(f"| {name} | {r['requests']} | {r['identical']} | {r['mismatches']} | {_n(r.get('first_divergence_min'))} | {r['ok']} |")
    return lines


def summary_markdown(summary: Mapping) -> str:
    """summary.md of one backend's generation bench."""
    p = summary["protocol"]
    synthetic = [a for a, v in (summary.get("adapters") or {}).items() if v.get("synthetic")]
    lines = [f"# Generation bench: {stack_name(summary['backend'], summary.get('platform'))} on {device_words(summary)}, {summary['dtype']}", "",
             f"Study `{summary.get('study')}` ({summary.get('study_hash')}); served adapter `{p['served_adapter']}`; prompts of "
             f"{p['prompt_tokens']} tokens, {p['output_tokens']} output tokens (greedy, EOS ignored); {p['requests']} timed "
             f"requests per configuration and repeat, {p['warmup_batches']} warm-up batches, {p['repeats']} repeats, "
             f"{int(100 * p['confidence'])}% intervals over repeats on the log scale. GPU memory: {summary['gpu_memory']}. "
             f"Total {summary['seconds']:.1f} s.", ""]  # fmt: skip
    if synthetic:
        lines += [f"Synthetic adapters (seeded, shaped like `{p['served_adapter']}`; they time like trained ones and say "
                  f"nothing about quality): {', '.join(synthetic)}.", ""]
    if summary.get("regimes_skipped"):
        lines += [f"Not possible on this platform, so not timed: {', '.join(summary['regimes_skipped'])}.", ""]
    lines += ["## Offline (batches): latency and throughput", "", f"TTFT: {p['hf_timing'] if summary['backend'] == 'hf' else p['vllm_offline_timing']}.", ""]
    lines += offline_table(summary)
    lines += ["", "## Ratios against merged (geometric mean over repeats)", ""] + ratio_table(summary)
    lines += ["", "## H2 for generation", ""] + h2_lines(summary)
    lines += ["", "## Online: throughput against latency", ""] + online_lines(summary)
    lines += ["", "## Models: load time and memory", ""] + models_lines(summary)
    lines += ["", "## Correctness (greedy tokens)", ""] + correctness_lines(summary)
    return "\n".join(lines) + "\n"


def figure(summaries: Mapping[str, Mapping], path: Path) -> Path:
    """generation_serving.png: TPOT by batch size (offline, one panel per backend) and the online throughput-latency
    curves (output tokens/s against p95 TPOT and p95 TTFT, one line per server mode and adapter count)."""
    from lorascope.reporting.figures import TICK_FONT, _save, plt, series_style

    offline = [(b, s) for b, s in summaries.items() if s.get("offline")]
    online = [(b, s) for b, s in summaries.items() if s.get("curves")]
    panels = len(offline) + 2 * len(online)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(4.6 * max(panels, 1) + 2.0, 4.0), squeeze=False, layout="constrained")
    names: list[str] = []
    handles: dict[str, Any] = {}

    def style(name: str):
        if name not in names:
            names.append(name)
        return series_style(names.index(name))

    i = 0
    for backend, s in offline:
        ax = axes[0][i]
        i += 1
        series: dict[str, list[Mapping]] = {}
        for c in s["offline"]:
            series.setdefault(f"{mode_label(c)}" + (f" [{c['regime']}]" if len(s.get("regimes") or []) > 1 else ""), []).append(c)
        for name, configs in series.items():
            color, marker = style(name)
            configs = sorted(configs, key=lambda c: c["batch_size"])
            handles[name] = ax.plot([c["batch_size"] for c in configs], [c["tpot_ms"]["mean"] for c in configs], marker=marker,
                                    color=color, label=name)[0]  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sizes = sorted({c["batch_size"] for c in s["offline"]})
        ax.set_xticks(sizes, [str(x) for x in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size", fontsize=9)
        ax.set_ylabel("mean TPOT (ms, log)", fontsize=9)
        ax.set_title(f"offline: {stack_name(backend, s.get('platform'))}\n{device_words(s)}, {s.get('dtype')}", fontsize=9)
        ax.tick_params(labelsize=TICK_FONT)
        ax.grid(alpha=0.3)
    for backend, s in online:
        for metric, label in (("p95_tpot_ms", "p95 TPOT (ms)"), ("p95_ttft_ms", "p95 TTFT (ms)")):
            ax = axes[0][i]
            i += 1
            for name, curve in s["curves"].items():
                color, marker = style(f"online {name}")
                pts = [p for p in curve if p["output_tokens_per_s"] is not None and p[metric] is not None]
                handles[f"online {name}"] = ax.plot([p["output_tokens_per_s"] for p in pts], [p[metric] for p in pts],
                                                    marker=marker, color=color, linestyle="--", label=f"online {name}")[0]  # fmt: skip
            ax.set_yscale("log")
            ax.set_xlabel("output tokens/s (one point per request rate)", fontsize=9)
            ax.set_ylabel(f"{label}, log", fontsize=9)
            ax.set_title(f"online: {stack_name(backend, s.get('platform'))}, Poisson arrivals", fontsize=9)
            ax.tick_params(labelsize=TICK_FONT)
            ax.grid(alpha=0.3)
    fig.legend([handles[n] for n in names if n in handles], [n for n in names if n in handles], loc="outside right upper",
               fontsize=TICK_FONT, title="mode (order; synthetic adapters)", title_fontsize=TICK_FONT)  # fmt: skip
    fig.suptitle("Generation serving: TPOT by batch size, and throughput against latency", fontsize=10)
    return _save(fig, path)


def curve_shape(curve: list[Mapping]) -> str:
    """In words, how a throughput-latency curve behaves as the request rate rises: tokens/s first -> last rate, p95
    TPOT first -> last; "saturates" when the last rate adds under 10% tokens/s over the one before it."""
    pts = [p for p in curve if p.get("output_tokens_per_s") is not None and p.get("p95_tpot_ms") is not None]
    if len(pts) < 2:
        return "one rate only" if pts else "no point"
    a, b = pts[0], pts[-1]
    prev = pts[-2]["output_tokens_per_s"]
    flat = prev > 0 and b["output_tokens_per_s"] < 1.1 * prev
    return (f"rate {a['request_rate']:g} -> {b['request_rate']:g} req/s: {a['output_tokens_per_s']:.0f} -> "
            f"{b['output_tokens_per_s']:.0f} tokens/s ({'saturating' if flat else 'still rising'}), p95 TPOT "
            f"{a['p95_tpot_ms']:.2f} -> {b['p95_tpot_ms']:.2f} ms")


def closing_note(summaries: Mapping[str, Mapping]) -> list[str]:
    """The section's closing note: separate/merged TPOT and tokens/s ratios per batch size, the curves' shape, and the
    engine and server start-up times, per backend."""
    lines = []
    for backend, s in summaries.items():
        stack = stack_name(backend, s.get("platform"))
        by = (s.get("ratios") or {}).get("separate_vs_merged") or {}
        ratio = "; ".join(f"batch {v['batch_size']}: TPOT x{v['tpot_ratio']:.2f}, tokens/s x{v['tokens_per_s_ratio']:.2f}"
                          for v in sorted(by.values(), key=lambda v: v["batch_size"])) or "not measured"  # fmt: skip
        lines.append(f"- {stack} on {device_words(s)}, separate / merged: {ratio}.")
        loads = ", ".join(f"{k} {m['load_seconds']:.1f} s" for k, m in (s.get("models") or {}).items() if m.get("load_seconds") is not None)
        if loads:
            lines.append(f"  - {'engine' if backend == 'vllm' else 'model'} start-up (load): {loads}.")
        servers = ", ".join(f"{k} {v['startup_seconds']:.1f} s" for k, v in (s.get("servers") or {}).items() if v.get("startup_seconds"))
        if servers:
            lines.append(f"  - OpenAI-compatible server start-up (until it answers): {servers}.")
        for name, curve in (s.get("curves") or {}).items():
            lines.append(f"  - online {name}: {curve_shape(curve)}.")
        if backend == "vllm" and not s.get("online"):
            lines.append("  - online (server, throughput-latency curves): not run in this study (bench.generation.online.enabled: "
                         "false); tests/vllm/test_generation_vllm.py and bench/generation_serving.py run it.")  # fmt: skip
    return lines


def report_lines(summaries: Mapping[str, Mapping]) -> list[str]:
    """The report's "Generation serving" section from the committed generation bench summaries {backend: summary}."""
    if not summaries:
        return ["No generation bench bundle committed (generation tasks, or `bench.generation.enabled: true`)."]
    lines: list[str] = []
    first = next(iter(summaries.values()))
    p = first["protocol"]
    lines += [f"Greedy generation, prompts of {p['prompt_tokens']} tokens, {p['output_tokens']} output tokens (EOS ignored), "
              f"{p['requests']} timed requests per configuration and repeat, {p['repeats']} repeats; served adapter "
              f"`{p['served_adapter']}`. Per backend: bundle `bench/<backend>-generation` (or `bench/<backend>` for a "
              "generation study), summary.md there has every table.", ""]  # fmt: skip
    cells_as = first.get("cells_as_causal_lm")
    if cells_as:
        lines += [f"What is served: {cells_as['what']} (cells {', '.join(cells_as['cells'])}).", ""]
    for backend, s in summaries.items():
        lines += [f"### {stack_name(backend, s.get('platform'))} on {device_words(s)}, {s['dtype']}", ""]
        lines += offline_table(s) + ["", "Against merged:", ""] + ratio_table(s) + [""] + h2_lines(s) + [""]
        if s.get("online"):
            lines += ["Online (vLLM's serving benchmark, Poisson arrivals):", ""] + online_lines(s) + [""]
        lines += models_lines(s) + [""] + correctness_lines(s) + [""]
    lines += ["### Closing note", ""] + closing_note(summaries)
    return lines
