"""The deployment benchmark (the real `bench` phase, hf backend) on a TinyLlama-shaped model built from its config.

    python bench/serving_shape.py --device cuda                     # on a GPU node: TinyLlama-1.1B's shape, bf16
    .venv/bin/python bench/serving_shape.py --device cpu --layers 1 --requests 16 --repeats 2 --batch-sizes 1,4
                                                                    # a CPU check of the code path

Random weights time like trained ones, so this needs no hub access and no training run: it builds
LlamaForCausalLM(TinyLlama-1.1B config) with seeded random weights, stages it with the packaged GLUE-format
validation fixtures (the real `stage` phase, into a file store), commits the four cells the reference bench serves
(mrpc-full-s42 and {mrpc,sst2,rte}-lora-s42: a noised copy of the base and three PEFT adapters with random
lora_B and score head, made by our modeling code), then runs `lorascope bench --index 0` with the reference study's
bench section (modes full, merged, separate, multi-2, multi-3; batch sizes 1-16; 10 warm-up batches; 200 timed
requests; 3 repeats) and prints the phase's summary.md: latency mean/p50/p95/p99, throughput, peak GPU memory,
load time, switch cost, the correctness checks, and separate-vs-merged overhead per batch size with its CI.

What is not TinyLlama here: the tokenizer is the smoke model's word-level one and the requests are the packaged
fixtures (12-34 tokens; real MRPC pairs average about 58 TinyLlama tokens). At batch 1-16 on a GPU, latency at these
lengths is dominated by per-layer launch and PEFT overhead rather than by sequence length, which is what the
separate-vs-merged comparison is about; the bench Job on a real run measures real lengths.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_base(dest: Path, layers: int | None, dtype: str, width: int | None = None) -> Path:
    """A TinyLlama-shaped LlamaForCausalLM with seeded random weights, saved as a normal HF folder with the smoke
    tokenizer (its ids are all < 32000, so they are valid inputs). `width`: a narrower hidden size (a CPU check of
    the code path), with TinyLlama's head size (64), its 8 query heads per key-value head and its MLP ratio (2.75)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorascope.models import builtin

    cfg = dict(builtin.TINYLLAMA_1B_ARCH, num_hidden_layers=layers or builtin.TINYLLAMA_1B_ARCH["num_hidden_layers"])
    if width:
        if width % 512:
            raise SystemExit(f"--width must be a multiple of 512 (8 heads of 64 per key-value head), got {width}")
        cfg.update(hidden_size=width, intermediate_size=width * 11 // 4, num_attention_heads=width // 64,
                   num_key_value_heads=width // 512)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(getattr(torch, dtype))
    model.save_pretrained(str(dest), safe_serialization=True)
    for f in builtin.TINY_LLAMA_ASSETS.iterdir():
        if f.name != "config.json":
            shutil.copy(f, dest / f.name)
    return dest


def write_study(folder: Path, model_dir: Path, dtype: str, args: argparse.Namespace) -> Path:
    """jobs/smoke.yaml (offline data) with the TinyLlama-shaped model and jobs/study.yaml's bench section."""
    smoke = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    reference = yaml.safe_load((REPO / "jobs" / "study.yaml").read_text())
    bench = dict(reference["bench"], backends=["hf"], dtype=dtype)
    if args.requests:
        bench["requests"] = args.requests
    if args.repeats:
        bench["repeats"] = args.repeats
    if args.batch_sizes:
        bench["batch_sizes"] = [int(x) for x in args.batch_sizes.split(",")]
    if args.warmup_batches is not None:
        bench["warmup_batches"] = args.warmup_batches
    study = dict(smoke, name="tinyllama-shape-bench",
                 description="bench/serving_shape.py: TinyLlama-1.1B shape, random weights, packaged fixtures",
                 model={"name": str(model_dir), "revision": "local", "dtype": dtype},
                 seeds=[bench["seed"]], bench=bench)  # fmt: skip
    study["hpo"] = dict(smoke["hpo"], enabled=False)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--layers", type=int, default=None, help="fewer decoder layers than TinyLlama's 22 (a CPU check)")
    ap.add_argument("--width", type=int, default=None,
                    help="a narrower hidden size than TinyLlama's 2048, multiple of 512 (a CPU check of the code path)")
    ap.add_argument("--dtype", default=None, help="serving dtype (default: bfloat16 on cuda, float32 on cpu)")
    ap.add_argument("--requests", type=int, default=None, help="timed requests per configuration (reference: 200)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (reference: 3)")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated (reference: 1,2,4,8,16)")
    ap.add_argument("--warmup-batches", type=int, default=None, help="reference: 10")
    ap.add_argument("--dir", default=None, help="keep the store and study here (default: a temporary folder)")
    args = ap.parse_args(argv)

    import torch

    from lorascope import cli
    from lorascope.log import Logger
    from lorascope.phases import PhaseContext
    from lorascope.runner import default_run_id, freeze_study
    from lorascope.serving.plan import BenchPlan
    from lorascope.store import Store
    from lorascope.study import load_study
    from tests.fixtures.tiny_model import commit_cells

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    os.environ["LORASCOPE_DEVICE"] = device
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[k] = "1"

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir) if args.dir else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        model_dir = build_base(folder / "tinyllama-shape", args.layers, dtype, args.width)
        study_path = write_study(folder, model_dir, dtype, args)
        store_url, work = str(folder / "store"), folder / "work"
        common = ["--study", str(study_path), "--store", store_url, "--work-dir", str(work)]
        if cli.main(["stage", *common]) != 0:
            return 1
        study = load_study(study_path)
        run_id = default_run_id(study)
        store = Store.open(store_url, code_version="bench")
        freeze_study(store, run_id, study)
        ctx = PhaseContext(study, store, run_id, work, dict(os.environ), Logger(run=run_id))
        plan = BenchPlan(study, "hf")
        commit_cells(ctx, folder / "cells", ctx.local(ctx.bundle("stage")) / "model", plan.cells)
        rc = cli.main(["bench", *common, "--index", "0"])
        if rc != 0:
            return rc
        print(store.bundle(f"runs/{run_id}/bench/hf").read_bytes("summary.md").decode())
        if args.dir:
            print(f"kept: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
