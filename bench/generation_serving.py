"""The generation serving bench (serving.generation) on both backends, on the same inputs, ratios printed.

    .venv/bin/python bench/generation_serving.py                           # tiny Llama, hf + vllm, offline + online
    .venv/bin/python bench/generation_serving.py --model smollm2 --output-tokens 32 --rates 1,2,4,8 --adapter-counts 1,2,4
    .venv/bin/python bench/generation_serving.py --no-online --batch-sizes 1,2,4,8,16 --repeats 3

Builds the inputs once (the tiny Llama from `builtin:tiny-llama`, or SmolLM2-135M converted by `make
install-real-model`; two CAUSAL_LM LoRA adapters with seeded random lora_B, a full model = the base with seeded noise,
prompts = the E2E-format fixture's meaning representations), then runs `serving.generation.bench.run_bench` for each
backend in its own interpreter (`hf`: this one; `vllm`: the vLLM environment, `.venv-vllm`, as `lorascope run` does).
Both backends answer the same prompts. Every ratio compares modes of ONE backend measured in the same run (separate /
merged, full / merged, multi-k / merged: TPOT and output tokens/s, geometric means over paired repeats); the backends
are set side by side, never divided by each other. Prints engine and server start-up times, the online
throughput-latency curves (vLLM) and the greedy-token correctness. Summaries and figures go to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "pkg"))


def build_inputs(folder: Path, model: str, adapters: int) -> dict:
    """Base model, adapters, full model and prompts under `folder` (inputs.json names them)."""
    from lorascope.models import builtin
    from tests.serving.generation_fixtures import e2e_prompts, make_causal_adapter, make_full_causal

    if model == "tiny":
        base = builtin.build_tiny_llama(folder / "base")
        scale, noise = 0.3, 0.02
    else:
        from tests.real_model.staging import smollm2_model_dir

        base = smollm2_model_dir()
        scale, noise = 0.01, 0.001  # keep the pretrained model's outputs sensible: small updates
    names = ["e2e", *[f"e2e-{i}" for i in range(2, adapters + 1)]]
    ads = {n: str(make_causal_adapter(base, folder / f"adapter-{n}", seed=100 + i, scale=scale)) for i, n in enumerate(names)}
    full = make_full_causal(base, folder / "full", seed=7, noise=noise)
    spec = {"base": str(base), "adapters": ads, "full": str(full), "prompts": e2e_prompts(base, 50)}
    (folder / "inputs.json").write_text(json.dumps(spec))
    return spec


def settings_from_args(args: argparse.Namespace):
    from lorascope.serving.generation import GenerationSettings, OnlineSettings

    online = None if args.no_online else OnlineSettings(
        modes=tuple(args.online_modes.split(",")), request_rates=tuple(float(x) for x in args.rates.split(",")),
        adapter_counts=tuple(int(x) for x in args.adapter_counts.split(",")), popularity=("uniform", "zipf"),
        zipf_exponent=args.zipf_exponent, requests=args.online_requests, repeats=args.online_repeats, warmup_requests=2)  # fmt: skip
    return GenerationSettings(modes=tuple(args.modes.split(",")), batch_sizes=tuple(int(x) for x in args.batch_sizes.split(",")),
                              prompt_tokens=args.prompt_tokens, output_tokens=args.output_tokens, requests=args.requests,
                              warmup_batches=args.warmup_batches, repeats=args.repeats, seed=42, dtype="float32",
                              kv_cache_memory_bytes=args.kv_mib * 2**20, threads=args.threads, online=online)  # fmt: skip


def worker(args: argparse.Namespace) -> int:
    """One backend in this interpreter: run_bench on the inputs in --inputs, summary + figure into --out."""
    import torch

    from lorascope.serving.generation import GenerationInputs
    from lorascope.serving.generation import bench as generation

    torch.set_num_threads(args.threads)
    spec = json.loads((Path(args.inputs) / "inputs.json").read_text())
    inputs = GenerationInputs(Path(spec["base"]), {k: Path(v) for k, v in spec["adapters"].items()}, Path(spec["full"]), spec["prompts"])

    def log(event: str, **fields) -> None:
        print(f"  {args.worker}: {event} " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)

    if args.worker == "vllm":
        from lorascope.serving import vllm_backend as versions_of
    else:
        from lorascope.serving import hf_backend as versions_of
    result = generation.run_bench(args.worker, inputs, settings_from_args(args), Path(args.out) / f"work-{args.worker}", log,
                                  study={"name": "generation-serving-bench", "hash": None}, versions=versions_of.versions())  # fmt: skip
    files = generation.bundle_files(result, Path(args.out) / args.worker)
    print(f"  {args.worker}: wrote {', '.join(sorted(files))} to {Path(args.out) / args.worker}", flush=True)
    return 0


def vllm_interpreter() -> str:
    from lorascope.phases.bench import vllm_python

    return vllm_python(os.environ) or sys.executable


def show(summary: dict) -> None:
    b = summary["backend"]
    print(f"\n== {b}: {summary.get('platform')} {summary['device']} {summary['dtype']}, threads {summary['torch_threads']}, "
          f"{summary['seconds']:.1f} s")  # fmt: skip
    for name, by in summary["ratios"].items():
        if by:
            cells = "  ".join(f"b{v['batch_size']}: TPOT x{v['tpot_ratio']:.2f} tok/s x{v['tokens_per_s_ratio']:.2f}" for v in by.values())
            print(f"  {name:22s} {cells}")
    for key, m in summary["models"].items():
        print(f"  load {key:10s} {m['load_seconds']:.2f} s" + (f" (+ merge {m['merge_seconds']:.2f} s)" if m.get("merge_seconds") else ""))
    for mode, srv in summary.get("servers", {}).items():
        print(f"  server {mode:9s} start-up {srv['startup_seconds']:.1f} s, stopped {srv['stopped']}")
    for name, curve in summary.get("curves", {}).items():
        pts = "  ".join(f"{p['request_rate']:g}/s: {p['output_tokens_per_s']:.0f} tok/s p95 TPOT {p['p95_tpot_ms']:.1f} "
                        f"TTFT {p['p95_ttft_ms']:.0f}" for p in curve)  # fmt: skip
        print(f"  curve {name:26s} {pts}")
    c = summary["correctness"]
    print(f"  correctness ({c['check']}): ok={c['ok']} " + ", ".join(f"{k} {v['identical']}/{v['requests']}" for k, v in c["by_mode"].items()))
    print(f"  H2 (generation): {summary['h2']['verdict']} (largest overhead {summary['h2']['max_overhead_pct']:.1f}%)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--modes", default="full,merged,separate,multi-2,multi-4")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--warmup-batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--adapters", type=int, default=2, help="trained-like adapters to build (more are synthetic)")
    ap.add_argument("--no-online", action="store_true")
    ap.add_argument("--online-modes", default="separate,merged,full")
    ap.add_argument("--rates", default="2,8,32")
    ap.add_argument("--adapter-counts", default="1,2,4")
    ap.add_argument("--zipf-exponent", type=float, default=1.0)
    ap.add_argument("--online-requests", type=int, default=64)
    ap.add_argument("--online-repeats", type=int, default=2)
    ap.add_argument("--kv-mib", type=int, default=256)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("LORASCOPE_TORCH_THREADS") or 1))
    ap.add_argument("--out", default=None, help="folder for summaries and figures (default: a temporary folder)")
    ap.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    out = Path(args.out or tempfile.mkdtemp(prefix="generation-serving-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build_inputs(out / "inputs", args.model, args.adapters)
    print(f"inputs built in {time.perf_counter() - t0:.1f} s ({args.model}); results in {out}", flush=True)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--out")]
    passthrough = [a for i, a in enumerate(passthrough) if not (i > 0 and passthrough[i - 1] == "--out")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "pkg"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    for backend in args.backends.split(","):
        python = vllm_interpreter() if backend == "vllm" else sys.executable
        t = time.perf_counter()
        rc = subprocess.call([python, __file__, *passthrough, "--worker", backend, "--inputs", str(out / "inputs"), "--out", str(out)],
                             env=env)  # fmt: skip
        print(f"{backend}: exit {rc} after {time.perf_counter() - t:.1f} s", flush=True)
        if rc:
            return rc
    for backend in args.backends.split(","):
        show(json.loads((out / backend / "summary.json").read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
