"""Separate vs merged vs full, for both serving backends, in one run on the same inputs (`make bench-serving`).

    .venv/bin/python bench/serving_backends.py                          # the smoke model, both backends, CPU
    .venv/bin/python bench/serving_backends.py --requests 64 --repeats 3 --batch-sizes 1,4,16

Stages the smoke model with the packaged GLUE-format validation fixtures (the real `stage` phase, file store),
commits the cells the bench serves (mrpc-full-s42 and {mrpc,sst2,rte}-lora-s42, made by our modeling code with
seeded random updates), then runs the real bench phase for `hf` (this interpreter) and `vllm` (the vLLM environment,
`.venv-vllm`, the same way `lorascope run` does). Both backends answer identical request batches (same pools, same
seed). Every separate/merged and full/merged ratio compares modes of ONE backend in ONE execution regime (eager by
default: vLLM's CPU platform runs LoRA engines eagerly only, HF is PyTorch eager); the backends are never divided by
each other's modes, only set side by side. With `--vllm-regimes compiled,eager` vLLM also times full and merged
compiled (inductor; on CPU the LoRA modes are skipped and named) and the same mode compiled / eager is printed. Prints, per backend and batch size: separate/merged and full/merged latency ratios
with the 95% interval over repeats, vLLM's engine start-up per mode, and the vLLM-vs-HF correctness.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_study(folder: Path, args: argparse.Namespace) -> Path:
    smoke = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    bench = dict(smoke["bench"], backends=args.backends.split(","), modes=args.modes.split(","),
                 vllm_regimes=args.vllm_regimes.split(","), requests=args.requests, repeats=args.repeats,
                 batch_sizes=[int(x) for x in args.batch_sizes.split(",")])  # fmt: skip
    study = dict(smoke, name="serving-backends-bench", description="bench/serving_backends.py: smoke model, hf and vllm",
                 seeds=[bench["seed"]], bench=bench)  # fmt: skip
    study["hpo"] = dict(smoke["hpo"], enabled=False)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def ratio(o: dict | None) -> str:
    if not o:
        return "n/a"
    lo, hi = o.get("lo"), o.get("hi")
    ci = f" [{1 + lo / 100:.3f}, {1 + hi / 100:.3f}]" if lo is not None and hi is not None else ""
    return f"{1 + o['pct'] / 100:.3f}x{ci}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64, help="timed requests per configuration and repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1,2,4,8,16")
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("--modes", default="full,merged,separate", help="bench.modes (multi-2, multi-3 as well)")
    ap.add_argument("--vllm-regimes", default="eager", help="bench.vllm_regimes: eager, compiled or compiled,eager")
    ap.add_argument("--dir", default=None, help="keep the store here (default: a temporary folder)")
    args = ap.parse_args(argv)

    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[k] = "1"
    os.environ.setdefault("LORASCOPE_TORCH_THREADS", "1")

    from lorascope import cli
    from lorascope.log import Logger
    from lorascope.phases import PhaseContext
    from lorascope.runner import LocalRun, default_run_id, freeze_study
    from lorascope.serving.plan import BenchPlan
    from lorascope.store import Store
    from lorascope.study import load_study
    from tests.fixtures.tiny_model import commit_cells

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir) if args.dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        study_path = write_study(folder, args)
        store_url, work = str(folder / "store"), folder / "work"
        if cli.main(["stage", "--study", str(study_path), "--store", store_url, "--work-dir", str(work)]) != 0:
            return 1
        study = load_study(study_path)
        run_id = default_run_id(study)
        store = Store.open(store_url, code_version="bench")
        freeze_study(store, run_id, study)
        ctx = PhaseContext(study, store, run_id, work, {k: v for k, v in os.environ.items() if k.startswith("LORASCOPE_")},
                           Logger(run=run_id))  # fmt: skip
        commit_cells(ctx, folder / "cells", ctx.local(ctx.bundle("stage")) / "model", BenchPlan(study, "hf").cells)
        t0 = time.perf_counter()
        LocalRun(ctx, study_path, store_url).run(["bench"])
        wall = time.perf_counter() - t0
        summaries = {b: store.bundle(f"runs/{run_id}/bench/{b}").read_json("summary.json") for b in study.bench.backends}

    print(f"\n# separate / merged and full / merged mean batch latency (95% CI over {args.repeats} repeats), "
          f"{args.requests} requests per configuration; bench phase wall {wall:.1f} s for both backends\n")
    print("| backend | regime | batch | separate / merged | full / merged | merged ms | separate ms |")
    print("|---|---|---:|---|---|---:|---:|")
    for backend, s in summaries.items():
        regime = s["regime_primary"]
        ms = {(c["mode"], c["batch_size"]): c["latency_batch_ms"]["mean"] for c in s["configs"] if c["regime"] == regime}
        for bs in s["protocol"]["batch_sizes"]:
            o = s["overhead"]
            print(f"| {backend} | {regime} | {bs} | {ratio(o['separate_vs_merged'].get(str(bs)))} | "
                  f"{ratio(o['full_vs_merged'].get(str(bs)))} | {ms[('merged', bs)]:.3f} | {ms[('separate', bs)]:.3f} |")
    across = {b: s["regime_vs_eager"] for b, s in summaries.items() if s.get("regime_vs_eager")}
    if across:
        print("\n# the same mode compiled / eager, mean batch latency (95% CI over repeats): what compilation buys\n")
        print("| backend | mode | batch | compiled / eager | compiled ms | eager ms |")
        print("|---|---|---:|---|---:|---:|")
        for backend, by in across.items():
            s = summaries[backend]
            ms = {(c["regime"], c["mode"], c["batch_size"]): c["latency_batch_ms"]["mean"] for c in s["configs"]
                  if c["order"] == "single"}  # fmt: skip
            for key, by_bs in by.items():
                mode, name = key.rsplit(" ", 1)
                regime = name.removesuffix("_vs_eager")
                for bs in s["protocol"]["batch_sizes"]:
                    if str(bs) in by_bs and (regime, mode, bs) in ms:
                        print(f"| {backend} | {mode} | {bs} | {ratio(by_bs[str(bs)])} | {ms[(regime, mode, bs)]:.3f} | "
                              f"{ms[('eager', mode, bs)]:.3f} |")
        for backend, s in summaries.items():
            ra = s["correctness"].get("regime_vs_eager")
            if ra:
                print(f"{backend}: {', '.join(ra['modes'])} compiled vs eager outputs: ok={ra['ok']}, {ra['requests']} "
                      f"requests, argmax mismatches {ra['argmax_mismatches']}, max prob diff {ra['max_prob_diff']:.2e}")
    for backend, s in summaries.items():
        if s.get("regimes_skipped"):
            print(f"{backend}: not possible on this platform, not timed: {', '.join(s['regimes_skipped'])}")
        loads = ", ".join(f"{m.get('mode', k)} [{m.get('regime', 'eager')}] {m['load_seconds']:.2f} s" for k, m in s["modes"].items())
        print(f"\n{backend}: load/engine start-up per mode: {loads}; H2 ({s['h2']['limit_pct']:g}%): "
              f"{s['h2']['verdict']} (largest overhead {s['h2']['max_overhead_pct']:.1f}%)")
        vh = s["correctness"].get("vllm_vs_hf")
        if vh:
            print(f"{backend}: vLLM vs HF: ok={vh['ok']}, argmax agreement {vh['argmax_agreement']:.4f}, "
                  f"max prob diff {vh['max_prob_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
