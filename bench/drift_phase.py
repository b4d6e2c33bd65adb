"""The drift PHASE at the reference study's size, end to end through the store: read reps bundles, CKA/cosines with
cached Grams, seed noise floor, the example-subset CI, statistics, CSVs and summary.json.

Synthetic inputs written to a fresh file store under --dir (default /tmp): the reference study's grid (3 tasks x
{full, lora} x 3 seeds = 18 cells) with reps bundles of 23 hidden-state entries x 750 examples x 2048 features, float32,
for the base on each task and every cell (21 bundles, mean and last pooling: 282 MB each). Each cell's states are the
base's plus a task-specific low-rank shift (larger for full than for LoRA, growing with depth) plus noise, on a large
common mean. The weights are a tiny crafted model (the weight-space part is timed apart, see --weights-estimate), so
the timing is the representation analysis the phase adds on top of bench/drift_grid.py's math.

    .venv/bin/python bench/drift_phase.py                     # reference size, both poolings (~6 GB of reps on disk)
    .venv/bin/python bench/drift_phase.py --poolings mean     # one pooling: 21 x 23 representations
    .venv/bin/python bench/drift_phase.py --quick             # 4 layers, n=120, d=256: seconds
    .venv/bin/python bench/drift_phase.py --weights-estimate  # also time one module per kind at TinyLlama's shapes
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import save_file

try:
    import lorascope  # noqa: F401
except ImportError:  # a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pkg"))

from lorascope.log import Logger
from lorascope.phases import PhaseContext
from lorascope.phases.extract import LAYERS_FILE, REPS_FILE, layer_labels
from lorascope.runner import default_run_id, freeze_study, run_phase_index
from lorascope.store import Store
from lorascope.study import parse_study

REPO = Path(__file__).resolve().parents[1]
AMPLITUDE = {"full": 0.5, "lora": 0.15}
HIDDEN = 16


def study_for(poolings: list[str], n: int) -> str:
    raw = yaml.safe_load((REPO / "jobs" / "study.yaml").read_text())
    raw["name"] = "drift-bench"
    raw["extraction"]["pooling"] = poolings
    raw["extraction"]["examples"] = n
    return yaml.safe_dump(raw, sort_keys=False)


def commit_inputs(ctx: PhaseContext, scratch: Path, layers: int, n: int, d: int) -> float:
    """Stage (tiny weights), cells (tiny weights + metrics) and reps bundles; returns the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    shapes = {"q_proj": (HIDDEN, HIDDEN), "v_proj": (4, HIDDEN)}
    base_w = {f"model.layers.{b}.self_attn.{m}.weight": rng.standard_normal(s).astype(np.float32) * 0.2
              for b in range(2) for m, s in shapes.items()}  # fmt: skip
    (scratch / "stage/model").mkdir(parents=True)
    save_file(base_w, str(scratch / "stage/model/model.safetensors"))
    with ctx.writer("stage", phase="stage", meta={"bench": "bench/drift_phase.py"}) as w:
        w.add_dir(scratch / "stage")
    idx = np.arange(n, dtype=np.int64)
    labels = layer_labels(layers)
    poolings = list(ctx.study.extraction.pooling)

    def commit_reps(model: str, task: str, reps: dict[str, np.ndarray]) -> None:
        folder = scratch / "reps" / model / task
        folder.mkdir(parents=True)
        save_file({**reps, "idx": idx}, str(folder / REPS_FILE))
        (folder / LAYERS_FILE).write_text(json.dumps({"labels": labels, "idx": idx.tolist()}))
        with ctx.writer("reps", model, task, phase="extract", meta={"device": "synthetic", "hardware": {}}) as w:
            w.add_file(REPS_FILE, folder / REPS_FILE)
            w.add_file(LAYERS_FILE, folder / LAYERS_FILE)
        shutil.rmtree(folder)

    for task in [t.name for t in ctx.study.tasks]:
        Z = rng.standard_normal((n, 32), dtype=np.float32)
        base = {}
        for p in poolings:
            A = rng.standard_normal((layers, 32, d), dtype=np.float32) * np.float32(2.0 / np.sqrt(32))
            mu = rng.standard_normal(d, dtype=np.float32) * np.float32(2.0)
            base[p] = np.stack([Z @ A[li] + rng.standard_normal((n, d), dtype=np.float32) + mu for li in range(layers)])
        commit_reps("base", task, base)
        direction = rng.standard_normal((32, d), dtype=np.float32) * np.float32(1.5 / np.sqrt(32))
        shift = Z @ direction
        for cell in [c for c in ctx.study.cells() if c.task == task]:
            depth = ((np.arange(layers, dtype=np.float32) + 1) / layers)[:, None, None]
            amp = np.float32(AMPLITUDE[cell.method]) * depth
            commit_reps(cell.name, task, {p: base[p] + amp * (shift + np.float32(0.5) * rng.standard_normal((layers, n, d), dtype=np.float32))
                                          for p in poolings})  # fmt: skip
            folder = scratch / "cells" / cell.name
            if cell.method == "full":
                (folder / "model").mkdir(parents=True)
                save_file({k: v + 0.01 * rng.standard_normal(v.shape).astype(np.float32) for k, v in base_w.items()},
                          str(folder / "model/model.safetensors"))  # fmt: skip
            else:
                (folder / "adapter").mkdir(parents=True)
                t = {}
                for key, (rows, cols) in {f"model.layers.{b}.self_attn.{m}": s for b in range(2) for m, s in shapes.items()}.items():
                    t[f"base_model.model.{key}.lora_A.weight"] = rng.standard_normal((8, cols)).astype(np.float32) * 0.1
                    t[f"base_model.model.{key}.lora_B.weight"] = rng.standard_normal((rows, 8)).astype(np.float32) * 0.1
                save_file(t, str(folder / "adapter/adapter_model.safetensors"))
                (folder / "adapter/adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
            metric = 0.8 + 0.01 * rng.standard_normal()
            with ctx.writer("cells", cell.name, phase="train") as w:
                w.add_dir(folder)
                w.add_json("metrics.json", {"validation": {"accuracy": metric, "f1": metric}})
        del base
    return time.perf_counter() - t0


def weights_estimate() -> None:
    """One module of each kind at TinyLlama's shapes through the phase's weight code, and the implied total."""
    from lorascope.analysis import weights as wt
    from lorascope.analysis.lora import lora_module_summary
    from lorascope.phases.drift import INTRUDER_EPS, INTRUDER_K

    rng = np.random.default_rng(0)
    per = {}
    for name, shape in (("q_proj", (2048, 2048)), ("v_proj", (256, 2048))):
        W0 = rng.standard_normal(shape) * 0.02
        t = time.perf_counter()
        basis = wt.left_singular_basis(W0)
        t_basis = time.perf_counter() - t
        t = time.perf_counter()
        wt.module_summary(name, W0, W0 + 1e-3 * rng.standard_normal(shape), INTRUDER_K, INTRUDER_EPS, base_basis=basis)
        t_full = time.perf_counter() - t
        t = time.perf_counter()
        lora_module_summary(name, W0, rng.standard_normal((shape[0], 8)), rng.standard_normal((8, shape[1])) * 1e-3, 2.0,
                            INTRUDER_K, INTRUDER_EPS, basis)  # fmt: skip
        t_lora = time.perf_counter() - t
        per[name] = (t_basis, t_full, t_lora)
        print(f"  {name} {shape}: base SVD {t_basis:.2f} s, full-FT module {t_full:.2f} s, LoRA module {t_lora:.2f} s")
    blocks, cells = 22, 9
    total = sum(blocks * (b + cells * f + cells * lo) for b, f, lo in per.values())
    print(f"  implied weight-space time for TinyLlama (22 blocks x q,v; 9 full + 9 LoRA cells): {total:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=23)
    ap.add_argument("--n", type=int, default=750)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--poolings", default="mean,last")
    ap.add_argument("--quick", action="store_true", help="4 layers, n=120, d=256")
    ap.add_argument("--dir", default=None, help="parent folder for the temporary store (default: the system tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the store")
    ap.add_argument("--weights-estimate", action="store_true")
    ap.add_argument("--reuse", default=None, help="a folder kept by an earlier --keep run: time the phase again on its inputs")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.n, args.d = 4, 120, 256
    poolings = [p.strip() for p in args.poolings.split(",") if p.strip()]
    study = parse_study(study_for(poolings, args.n))
    root = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="lorascope-drift-bench-", dir=args.dir))
    try:
        store = Store.open(str(root / "store"), code_version="bench")
        run_id = default_run_id(study)
        freeze_study(store, run_id, study)
        ctx = PhaseContext(study, store, run_id, root / "work", {}, Logger(run=run_id))
        n_reps = len(study.tasks) * (1 + len(study.methods) * len(study.seeds))
        print(f"inputs: {n_reps} reps bundles x {args.layers} layers x n={args.n} x d={args.d} float32, poolings {poolings} "
              f"({n_reps * len(poolings)} x {args.layers} = {n_reps * len(poolings) * args.layers} representations)", flush=True)  # fmt: skip
        if args.reuse:
            store.delete_tree(ctx.key("drift"))
        else:
            t_in = commit_inputs(ctx, root / "scratch", args.layers, args.n, args.d)
            print(f"writing the inputs (not timed below): {t_in:.1f} s", flush=True)
        t0 = time.perf_counter()
        run_phase_index(ctx, "drift", 0)
        wall = time.perf_counter() - t0
        s = ctx.require("drift").read_json("summary.json")
        t = s["timings"]
        print(f"drift phase: {wall:.1f} s wall = representations {t['representations_seconds']:.1f} s + weights "
              f"{t['weights_seconds']:.1f} s + statistics {t['statistics_seconds']:.1f} s + commit/other")  # fmt: skip
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        if not args.quick:
            print(f"goal representations <= 60 s: {'met' if t['representations_seconds'] <= 60 else 'MISSED'}")
        red = {task: s["results"][task]["comparisons"]["lora"][s["settings"]["primary_pooling"]]["debiased"]["reduction_pct"]
               for task in s["tasks"]}  # fmt: skip
        print("reduction % (synthetic): " + ", ".join(f"{k} {v:.1f}" for k, v in red.items()))
        if args.weights_estimate:
            weights_estimate()
    finally:
        if args.keep or args.reuse:
            print(f"inputs kept: --reuse {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
