"""The generation bench's protocol, the same for both backends: `run_bench(backend, inputs, settings, work, log)`.

1. Adapters: the trained ones, then seeded synthetic ones of the same shape up to the most any mode needs
   (`adapters.complete`); the first adapter merged into the base for `merged` (PEFT `merge_and_unload`).
2. Offline (`offline`): for each mode, request order (`single`; multi-k: `rr` and `random`) and batch size, the same
   prompts in every mode (`workload`): `warmup_batches` untimed batches, then ceil(requests / batch size) batches, each
   between two synchronized clock reads (`serving.timing.time_batches`), `repeats` times. Models are shared where the
   backend allows: one adapter model / LoRA engine serves `separate` and every `multi-k`, `merged` and `full` a plain
   one each. hf runs repeat-major (each model reloaded per repeat, so a slow stretch of the machine spreads over all
   modes); vllm starts each engine once and runs its repeats back to back (as the classification bench).
3. Online (`online`, vllm only): one server per served model (the LoRA server, merged, full), each started, warmed up
   (every adapter answers a few requests), measured at every (adapters, popularity, rate) and repeat, and stopped.
4. Correctness (`correctness`): greedy tokens of every request of the last repeat against HF transformers + PEFT with
   the request alone (batch size 1) on a model holding only its adapter (or the merged / full model). For hf this
   checks batching and mixed-adapter batches; for vllm it is vLLM against HF, per mode kind.
5. `summary.json` (`summarize`) and the raw rows (`offline_rows`, `online_rows`).
"""

from __future__ import annotations

import math
import platform as pyplatform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorascope.serving import timing
from lorascope.serving.generation import (
    GenerationInputs,
    GenerationSettings,
    adapter_count,
    adapters,
    summary,
    workload,
)

PROTOCOL_TEXT = {
    "decoding": "greedy; exactly output_tokens new tokens per request (vLLM ignore_eos, HF min_new_tokens = max_new_tokens)",
    "prompts": "token ids cut or continued to exactly prompt_tokens (serving.generation.workload.fixed_length)",
    "hf_timing": "a generate streamer's clock: TTFT = first token on the host - call start, TPOT = (last - first token) "
                 "/ (n - 1), E2E = call end - call start; shared by the rows of a batch",
    "vllm_offline_timing": "RequestOutput.metrics (disable_log_stats=False): TTFT = first_token_latency, TPOT = "
                           "(last_token_ts - first_token_ts) / (n - 1), E2E = TTFT + last_token_ts - first_token_ts",
    "throughput": "output tokens of the timed batches / their wall time (time.perf_counter_ns around each batch call)",
    "online": "vllm.benchmarks.serve.benchmark against vLLM's OpenAI-compatible server on 127.0.0.1 (completions, "
              "streamed), Poisson arrivals, TPOT = (E2E - TTFT) / (output tokens - 1)",
}  # fmt: skip


@dataclass
class GenRun:
    """One offline (regime, mode, order, batch size): raw timings per repeat and batch, the last repeat's tokens."""

    mode: str
    order: str
    batch_size: int
    adapters: list[str]
    batches: list[list[Any]]
    warmup: list[list[Any]]
    regime: str = "eager"
    synthetic: frozenset[str] = frozenset()
    repeats: list[list[dict]] = field(default_factory=list)
    tokens: list[list[list[int]]] = field(default_factory=list)
    peak: list[dict] = field(default_factory=list)


def kind_of(mode: str) -> str:
    """The model a mode runs on: "full", "merged", or "adapters" (separate and every multi-k share one)."""
    return mode if mode in ("full", "merged") else "adapters"


def orders(mode: str) -> list[str]:
    return ["rr", "random"] if mode.startswith("multi-") else ["single"]


def adapters_of(mode: str, names: list[str]) -> list[str]:
    return names[: adapter_count(mode)] if mode.startswith("multi-") else names[:1]


def run_repeat(server: Any, run: GenRun, clock: Callable[[], int] = time.perf_counter_ns) -> None:
    for b in run.warmup:
        server.generate(b)
    server.reset_peak()
    timed = timing.time_batches(run.batches, server.generate, server.sync, clock)
    run.peak.append(server.peak_memory())
    run.repeats.append([{"seconds": t.seconds, **{k: t.result[k] for k in ("ttft", "tpot", "e2e", "output_tokens")}}
                        for t in timed])  # fmt: skip
    run.tokens = [t.result["tokens"] for t in timed]


@dataclass(kw_only=True)
class Bench:
    """Everything one backend's generation bench holds while it runs (see the module doc)."""

    backend: str
    inputs: GenerationInputs
    settings: GenerationSettings
    work: Path
    log: Callable[..., None]
    device: Any = None  # torch device (hf and the HF reference)
    names: list[str] = field(default_factory=list)
    adapter_dirs: dict[str, Path] = field(default_factory=dict)
    synthetic: frozenset[str] = frozenset()
    prompts: list[tuple[int, ...]] = field(default_factory=list)
    merged_dir: Path | None = None
    merge_seconds: float | None = None
    platform: str = "torch"
    loads: dict[str, dict] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        import torch

        s = self.settings
        needed = s.adapters_needed(online=self.backend == "vllm")
        self.adapter_dirs, self.synthetic = adapters.complete(self.inputs.adapters, max(needed, 1),
                                                              self.work / "synthetic", s.seed)  # fmt: skip
        self.names = list(self.adapter_dirs)
        self.prompts = workload.fixed_length(self.inputs.prompts, s.prompt_tokens)
        wants_merged = "merged" in s.modes or (self.backend == "vllm" and s.online is not None and "merged" in s.online.modes)
        if wants_merged:
            from lorascope.serving.generation import hf

            self.merged_dir = self.work / "merged"
            shutil.rmtree(self.merged_dir, ignore_errors=True)
            self.merge_seconds = hf.merge(self.inputs.base_dir, self.adapter_dirs[self.names[0]], self.merged_dir,
                                          getattr(torch, s.dtype))  # fmt: skip
        if self.backend == "vllm":
            from lorascope.serving import vllm_backend

            self.platform = vllm_backend.platform_kind()
        if self.synthetic:
            self.log("synthetic adapters", names=",".join(sorted(self.synthetic)), shaped_like=self.names[0])

    def model_dir(self, kind: str) -> Path:
        if kind == "full":
            if self.inputs.full_dir is None:
                raise ValueError("mode 'full' needs a full fine-tuned model folder (GenerationInputs.full_dir)")
            return self.inputs.full_dir
        if kind == "merged":
            assert self.merged_dir is not None
            return self.merged_dir
        return self.inputs.base_dir

    # ---------------------------------------------------------------------------------------------- offline
    def open(self, kind: str, regime: str, adapter_names: list[str], max_loras: int):
        import torch

        s = self.settings
        chosen = {n: self.adapter_dirs[n] for n in adapter_names}
        if self.backend == "hf":
            from lorascope.serving.generation import hf

            if kind == "adapters":
                return hf.open_adapters(self.inputs.base_dir, chosen, getattr(torch, s.dtype), self.device, s.output_tokens)
            return hf.open_plain(kind, self.model_dir(kind), getattr(torch, s.dtype), self.device, s.output_tokens)
        from lorascope.serving.generation import vllm_offline

        return vllm_offline.open_engine(kind, self.model_dir(kind), self.inputs.base_dir, chosen if kind == "adapters" else {},
                                        dtype=s.dtype, kv_bytes=s.kv_cache_memory_bytes,
                                        max_model_len=s.prompt_tokens + s.output_tokens, seed=s.seed, max_loras=max_loras,
                                        max_num_seqs=max(max(s.batch_sizes), 1), output_tokens=s.output_tokens,
                                        regime=regime, threads=s.threads)  # fmt: skip

    def possible(self, kind: str, regime: str) -> bool:
        if self.backend == "hf":
            return regime == "eager"
        from lorascope.serving import vllm_backend

        return vllm_backend.regime_possible(regime, 1 if kind == "adapters" else 0, self.platform)

    def offline(self) -> list[GenRun]:
        s = self.settings
        regimes = ["eager"] if self.backend == "hf" else list(s.regimes)
        pools = workload.pools(self.prompts, self.names, s.seed)
        runs: dict[tuple, GenRun] = {}
        for regime in regimes:
            for mode in s.modes:
                if not self.possible(kind_of(mode), regime):
                    self.skipped.append(f"{mode} [{regime}]")
                    continue
                names = adapters_of(mode, self.names)
                for order in orders(mode):
                    for bs in s.batch_sizes:
                        warm, timed = workload.batches(pools, names, order, s.seed, bs, s.warmup_batches, s.requests)
                        runs[(regime, mode, order, bs)] = GenRun(mode, order, bs, names, timed, warm, regime, self.synthetic)
        if self.skipped:
            self.log("regime not possible here, skipped", configs=",".join(self.skipped), platform=self.platform)
        groups: dict[tuple[str, str], list[str]] = {}
        for regime, mode, _order, _bs in runs:
            modes = groups.setdefault((regime, kind_of(mode)), [])
            if mode not in modes:
                modes.append(mode)
        max_k = max([adapter_count(m) for m in s.modes if kind_of(m) == "adapters"], default=1)
        if self.backend == "hf":
            plan = [(g, [r]) for r in range(s.repeats) for g in groups]
        else:
            plan = [(g, list(range(s.repeats))) for g in groups]
        for (regime, kind), repeats in plan:
            server = self.open(kind, regime, self.names[:max_k] if kind == "adapters" else [], max_k)
            key = kind if regime == regimes[0] else f"{kind} [{regime}]"
            rec = self.loads.setdefault(key, {"kind": kind, "regime": regime, "modes": groups[(regime, kind)],
                                              "load_seconds_per_repeat": []})  # fmt: skip
            rec["load_seconds_per_repeat"].append(server.load_seconds)
            if "weights_bytes" not in rec:
                rec.update(server.memory())
            self.log("loaded", backend=self.backend, model=kind, regime=regime, seconds=round(server.load_seconds, 2))
            try:
                for r in repeats:
                    for mode in groups[(regime, kind)]:
                        server.use(mode)
                        for order in orders(mode):
                            for bs in s.batch_sizes:
                                run = runs[(regime, mode, order, bs)]
                                run_repeat(server, run)
                                debug(self.log, "timed", mode=mode, order=order, batch_size=bs, repeat=r, regime=regime)
            finally:
                server.close()
        for rec in self.loads.values():
            rec["load_seconds"] = sum(rec["load_seconds_per_repeat"]) / len(rec["load_seconds_per_repeat"])
            if rec["kind"] == "merged":
                rec["merge_seconds"] = self.merge_seconds
        return list(runs.values())

    # ---------------------------------------------------------------------------------------------- online
    def online(self) -> tuple[list[dict], dict[str, dict], list[dict]]:
        """(points, servers, raw per-request rows) of the online mode (vllm only)."""
        from lorascope.serving.generation import online, vllm_offline

        s, o = self.settings, self.settings.online
        assert o is not None
        cpu = self.platform == "cpu"
        tokenizer = online.load_tokenizer(self.inputs.base_dir)
        n_req = o.requests
        prompts = [self.prompts[i % len(self.prompts)] for i in range(n_req)]
        points: list[dict] = []
        servers: dict[str, dict] = {}
        rows: list[dict] = []
        k_max = max(o.adapter_counts)
        for mode in o.modes:
            lora = {n: self.adapter_dirs[n] for n in self.names[:k_max]} if mode == "separate" else {}
            served = "base" if mode == "separate" else mode
            kw = vllm_offline.engine_kwargs(self.model_dir(kind_of(mode)), self.inputs.base_dir, s.dtype,
                                            s.kv_cache_memory_bytes, s.prompt_tokens + s.output_tokens, s.seed,
                                            adapters=k_max if lora else 0,
                                            lora_rank=max((vllm_offline.adapter_rank(p) for p in lora.values()), default=8),
                                            regime="eager" if cpu else s.regimes[0])  # fmt: skip
            port = online.free_port()
            args = online.server_args(kw, served, lora, "127.0.0.1", port, cpu)
            server = online.ApiServer(args, [served, *lora], self.work / f"server-{mode}.log",
                                      online.server_env(s.threads, cpu), port=port)  # fmt: skip
            results: dict[tuple, list[dict]] = {}
            try:
                startup = server.start(o.ready_timeout_s)
                self.log("server ready", mode=mode, adapters=len(lora), seconds=round(startup, 1), port=port)
                servers[mode] = {"startup_seconds": startup, "adapters": list(lora), "served_model_name": served, "pid": server.proc.pid,
                                 "args": args, "regime": "eager" if kw.get("enforce_eager") else "compiled",
                                 "rss_after_start_bytes": group_rss_bytes(server)}  # fmt: skip
                warm_names = list(lora) or [served]
                warm = [warm_names[i % len(warm_names)] for i in range(max(2 * len(warm_names), o.warmup_requests))]
                online.run_point(server, tokenizer, [prompts[i % len(prompts)] for i in range(len(warm))], warm,
                                 s.output_tokens, math.inf, s.seed)  # untimed: every adapter loaded once
                settings = [(k, pop) for k in o.adapter_counts for pop in (o.popularity if k > 1 else ["single"])] if lora else [(0, "single")]
                for r in range(o.repeats):
                    for k, pop in settings:
                        names = self.names[:k] if lora else [served]
                        models = workload.assign(names, n_req, "uniform" if pop == "single" else pop, s.seed + r,
                                                 o.zipf_exponent)  # fmt: skip
                        for rate in o.request_rates:
                            res = online.run_point(server, tokenizer, prompts, models, s.output_tokens, rate,
                                                   seed=s.seed * 1000 + r * 97 + int(rate * 10), max_concurrency=o.max_concurrency,
                                                   warmups=o.warmup_requests)  # fmt: skip
                            results.setdefault((k, pop, rate), []).append(res)
                            rows += online_rows(mode, k, pop, rate, r, res, self.synthetic)
                            debug(self.log, "online", mode=mode, adapters=k, popularity=pop, rate=rate, repeat=r,
                                  tokens_per_s=round(float(res["output_throughput"]), 1))
                servers[mode]["rss_after_points_bytes"] = group_rss_bytes(server)
            finally:
                server.stop()
            servers[mode]["stopped"] = not server.alive()
            for (k, pop, rate), res in results.items():
                names = self.names[:k] if lora else [served]
                shares = workload.popularity(len(names), "uniform" if pop == "single" else pop, o.zipf_exponent)
                points.append(summary.online_point(mode, names, pop, rate, res, sorted(self.synthetic), shares, s.confidence))
        return points, servers, rows

    # ---------------------------------------------------------------------------------------------- correctness
    def correctness(self, runs: list[GenRun]) -> dict:
        """Greedy tokens of the last repeat of every configuration against HF with the request alone (see the module
        doc): per mode kind (separate, multi, merged, full) and in all."""
        import torch

        from lorascope.serving.generation import hf

        s = self.settings
        need: dict[str, dict[tuple, Any]] = {"adapters": {}, "merged": {}, "full": {}}
        for run in runs:
            kind = kind_of(run.mode)
            for batch in run.batches:
                for q in batch:
                    need[kind][(q.task if kind == "adapters" else kind, q.idx)] = q
        reference: dict[tuple, list[int]] = {}
        dtype = getattr(torch, s.dtype)
        for kind, wanted in need.items():
            if not wanted:
                continue
            if kind == "adapters":
                names = sorted({k[0] for k in wanted}, key=self.names.index)
                model = hf.open_adapters(self.inputs.base_dir, {n: self.adapter_dirs[n] for n in names}, dtype, self.device,
                                         s.output_tokens)  # fmt: skip
            else:
                model = hf.open_plain(kind, self.model_dir(kind), dtype, self.device, s.output_tokens)
            for key, q in wanted.items():
                if kind == "adapters":
                    model.model.set_adapter(key[0])
                reference[key] = model.generate([q])["tokens"][0]
            model.close()
        groups = {"separate": lambda m: m == "separate", "multi": lambda m: m.startswith("multi-"),
                  "merged": lambda m: m == "merged", "full": lambda m: m == "full"}  # fmt: skip

        def served(select) -> list[tuple[tuple, list[int]]]:
            out = []
            for run in runs:
                if select(run.mode):
                    kind = kind_of(run.mode)
                    for batch, toks in zip(run.batches, run.tokens, strict=True):
                        out += [((q.task if kind == "adapters" else kind, q.idx), t) for q, t in zip(batch, toks, strict=True)]
            return out

        by = {name: summary.token_agreement(sel, reference) for name, select in groups.items() if (sel := served(select))}
        merged_vs_separate = None
        if need["merged"] and need["adapters"]:
            pairs = [(("merged", idx), reference[(self.names[0], idx)]) for (a, idx) in need["adapters"] if a == self.names[0]
                     and ("merged", idx) in reference]  # fmt: skip
            merged_vs_separate = summary.token_agreement(pairs, reference) if pairs else None
        what = ("vLLM against HF transformers + PEFT" if self.backend == "vllm" else
                "HF batched (mixed adapters per batch for multi-k) against HF")
        return {"check": what, "reference": "HF transformers + PEFT, greedy, each request alone (batch size 1) on a model "
                "holding only its adapter (or the merged / full model), same dtype and device",
                "by_mode": by, "ok": bool(by) and all(v["ok"] for v in by.values()),
                "requests": sum(v["requests"] for v in by.values()),
                "mismatches": sum(v["mismatches"] for v in by.values()),
                "merged_vs_separate_hf": merged_vs_separate}  # fmt: skip


def debug(log: Callable[..., None], event: str, **fields: Any) -> None:
    """A debug line through the phase's logger (a plain callable gets nothing)."""
    fn = getattr(log, "debug", None)
    if fn is not None:
        fn(event, **fields)


def group_rss_bytes(server: Any) -> int | None:
    """Resident memory of every process in the server's process group (Linux /proc), None where unreadable."""
    import resource

    if server.proc is None:
        return None
    total = 0
    try:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == server.proc.pid:  # pgrp
                total += int((stat.parent / "statm").read_text().split()[1]) * resource.getpagesize()
    except OSError:
        return None
    return total or None


def online_rows(mode: str, k: int, popularity: str, rate: float, repeat: int, res: dict, synthetic: frozenset[str]) -> list[dict]:
    out = []
    for i, (model, ttft, lat, n, err) in enumerate(zip(res["models"], res["ttfts"], res["latencies"], res["output_lens"], res["errors"], strict=True)):
        out.append({"mode": mode, "adapters": k, "popularity": popularity, "request_rate": rate, "repeat": repeat, "request": i,
                    "model": model, "synthetic": model in synthetic, "ttft_ms": 1e3 * ttft, "e2el_ms": 1e3 * lat,
                    "tpot_ms": 1e3 * (lat - ttft) / (n - 1) if n and n > 1 else None, "output_tokens": n,
                    "start_time": res["start_times"][i], "error": err or None})  # fmt: skip
    return out


def offline_rows(backend: str, runs: list[GenRun]) -> list[dict]:
    rows = []
    for run in runs:
        for r, rep in enumerate(run.repeats):
            last = r == len(run.repeats) - 1
            for b, (batch, timed) in enumerate(zip(run.batches, rep, strict=True)):
                for pos, q in enumerate(batch):
                    row = {"backend": backend, "regime": run.regime, "mode": run.mode, "order": run.order, "batch_size": run.batch_size,
                           "repeat": r, "batch": b, "pos": pos, "adapter": q.task if run.mode not in ("full", "merged") else None,
                           "synthetic": q.task in run.synthetic and run.mode not in ("full", "merged"), "prompt": q.idx,
                           "prompt_tokens": q.tokens, "output_tokens": timed["output_tokens"][pos], "batch_ms": 1e3 * timed["seconds"],
                           "ttft_ms": 1e3 * timed["ttft"][pos], "tpot_ms": 1e3 * timed["tpot"][pos], "e2e_ms": 1e3 * timed["e2e"][pos]}  # fmt: skip
                    if last:
                        row["tokens"] = run.tokens[b][pos]
                    rows.append(row)
    return rows


def run_bench(backend: str, inputs: GenerationInputs, settings: GenerationSettings, work: Path, log: Callable[..., None],
              *, device: Any = None, study: dict | None = None, versions: dict | None = None) -> dict:
    """THE generation bench of one backend ("hf" or "vllm"): offline, online (vllm, when `settings.online`), correctness;
    returns {"summary": summary.json, "offline_rows": [...], "online_rows": [...], "server_logs": {mode: path}}.
    `work`: a scratch folder (synthetic adapters, the merged checkpoint, server logs). `study`: name and hash to stamp."""
    import torch

    t0 = time.perf_counter()
    if backend not in ("hf", "vllm"):
        raise ValueError(f"generation bench backend {backend!r}: expected hf or vllm")
    device = device if device is not None else torch.device("cpu")
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(backend=backend, inputs=inputs, settings=settings, work=work, log=log, device=device)
    bench.prepare()
    runs = bench.offline()
    points: list[dict] = []
    servers: dict[str, dict] = {}
    online_raw: list[dict] = []
    if backend == "vllm" and settings.online is not None and settings.online.modes:
        points, servers, online_raw = bench.online()
    correctness = bench.correctness(runs)
    offline = [summary.offline_config(r, settings.confidence) for r in runs]
    s = settings
    out = {
        "bench": "generation",
        "backend": backend,
        "study": (study or {}).get("name"),
        "study_hash": (study or {}).get("hash"),
        "device": "cuda" if device.type == "cuda" or bench.platform == "cuda" else "cpu",
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else pyplatform.processor() or pyplatform.machine(),
        "platform": bench.platform,
        "dtype": s.dtype,
        "torch_threads": torch.get_num_threads(),
        "versions": versions or {},
        "regimes": ["eager"] if backend == "hf" else list(s.regimes),
        "regimes_skipped": bench.skipped,
        "gpu_memory": "measured (torch.cuda.max_memory_allocated)" if device.type == "cuda" else
                      "n/a on CPU: see weights_bytes, rss_bytes and kv_cache_memory_bytes",
        "adapters": {n: {"synthetic": n in bench.synthetic} for n in bench.names},
        "protocol": {"modes": list(s.modes), "batch_sizes": list(s.batch_sizes), "prompt_tokens": s.prompt_tokens,
                     "output_tokens": s.output_tokens, "requests": s.requests, "warmup_batches": s.warmup_batches,
                     "repeats": s.repeats, "seed": s.seed, "confidence": s.confidence, "served_adapter": bench.names[0],
                     "online": None if s.online is None or backend != "vllm" else {
                         "modes": list(s.online.modes), "request_rates": list(s.online.request_rates),
                         "adapter_counts": list(s.online.adapter_counts), "popularity": list(s.online.popularity),
                         "zipf_exponent": s.online.zipf_exponent, "requests": s.online.requests, "repeats": s.online.repeats,
                         "max_concurrency": s.online.max_concurrency, "warmup_requests": s.online.warmup_requests},
                     **PROTOCOL_TEXT},  # fmt: skip
        "models": bench.loads,
        "offline": offline,
        "ratios": {"separate_vs_merged": summary.ratios(offline, "separate"), "full_vs_merged": summary.ratios(offline, "full"),
                   **{f"{m}_vs_merged": summary.ratios(offline, m) for m in s.modes if m.startswith("multi-")}},  # fmt: skip
        "online": points,
        "curves": summary.curves(points),
        "servers": servers,
        "h2": summary.h2(offline, points, s.h2_max_overhead_pct, backend),
        "correctness": correctness,
        "seconds": time.perf_counter() - t0,
    }
    return {"summary": summary.finite(out), "offline_rows": offline_rows(backend, runs), "online_rows": online_raw,
            "server_logs": {m: work / f"server-{m}.log" for m in servers}}


def stage_prompts(stage_dir: Path, task: str, tokenizer_dir: Path, column: str = "meaning_representation") -> list[list[int]]:
    """Prompts from a staged generation task's validation split: each distinct `column` value (E2E's meaning
    representation) tokenized by the base tokenizer (BOS first). The generation task type decides its prompt format
    when it lands (its `extraction_features`: the prompt without its target); until then this reads the E2E column."""
    from lorascope import data
    from lorascope.models import loading

    tok = loading.load_tokenizer(tokenizer_dir)
    texts = list(dict.fromkeys(str(r[column]) for r in data.read_split(stage_dir, task, "validation")))
    return [list(tok(t)["input_ids"]) for t in texts]


def bundle_files(result: dict, work: Path) -> dict[str, Path]:
    """The bundle's files, written under `work`: summary.json, summary.md, requests.jsonl (offline, one row per request
    and repeat; the last repeat's rows carry the tokens), online.jsonl (one row per online request), the figure
    generation_serving.png and each server's log."""
    import json

    from lorascope.reporting import generation_bench as report

    work.mkdir(parents=True, exist_ok=True)
    summary_ = result["summary"]
    out = {"summary.json": work / "summary.json", "summary.md": work / "summary.md", "requests.jsonl": work / "requests.jsonl",
           "online.jsonl": work / "online.jsonl"}  # fmt: skip
    out["summary.json"].write_text(json.dumps(summary_, indent=1, sort_keys=True))
    out["summary.md"].write_text(report.summary_markdown(summary_))
    for name, rows in (("requests.jsonl", result["offline_rows"]), ("online.jsonl", result["online_rows"])):
        with open(out[name], "w") as f:
            for row in rows:
                f.write(json.dumps(summary.finite(row)) + "\n")
    out["generation_serving.png"] = report.figure({summary_["backend"]: summary_}, work / "generation_serving.png")
    for mode, log_path in result["server_logs"].items():
        if Path(log_path).is_file():
            out[f"server-{mode}.log"] = Path(log_path)
    return out
