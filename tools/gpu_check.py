"""The GPU check: everything of lorascope that only runs on CUDA, in one short run, and the GPU figures of
docs/performance.md. tools/gpu-check.sh runs it (installs what is missing from a wheels folder, caps the time, keeps
a log); `--cpu-smoke` runs the same steps shrunk on the CPU, so the script is tested where there is no GPU.

    python tools/gpu_check.py --out DIR              # on a GPU machine (tools/gpu-check.sh does this)
    python tools/gpu_check.py --out DIR --cpu-smoke  # the same steps, tiny, on CPU (tests/test_gpu_check.py)

Steps, each timed, each with the command that reproduces it, all in DIR/gpu-check.json:
  1. environment: torch and its CUDA build, the device, the driver (cuDriverGetVersion through lorascope.cuda);
  2. smoke: jobs/smoke.yaml end to end (`lorascope run`) with `training.precision: auto` (bf16 autocast over fp32
     master weights on CUDA) and the hf bench backend (vLLM is not assumed installed), LORASCOPE_REQUIRE_CUDA=1:
     stage, sanity, hpo, train, extract, drift, bench (timed between cuda synchronizes), report. Checked: every
     trained cell says bf16 and its peak memory is CUDA's; extraction's examples/s; the bench's latency rows;
  3. training throughput at TinyLlama-1.1B's shape (random weights from its config, no hub): full fine-tuning and
     LoRA, tokens/s with dynamic padding and padded to 384, MFU, peak memory (bench/train_throughput.py);
  4. extraction throughput at TinyLlama's shape: examples/s of a forward with all hidden states, masked mean pooling
     and the copy to the host, float32 as the extract phase runs, batch 32, MRPC-like lengths; peak memory;
  5. serving at TinyLlama's shape: the real bench phase's hf backend, full / merged / separate / multi-adapter,
     batch 1-16, latency and peak memory (bench/serving_shape.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "smoke.yaml"


def run(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        r = subprocess.run(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    return r.returncode, round(time.perf_counter() - t0, 1)


def last_json_line(log: Path) -> dict:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON summary in {log}")


# ------------------------------------------------------------------------------------------------ 1 environment
def environment() -> dict[str, Any]:
    import torch

    from lorascope.cuda import probe_driver

    out: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "host": platform.node(),
    }  # fmt: skip
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(device=torch.cuda.get_device_name(0), memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())  # fmt: skip
    probe = probe_driver(os.environ)
    out["driver_cuda"] = probe.driver_cuda
    out["libcuda"] = "loaded" if probe.loaded else probe.load_error
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi"] = f"not available: {exc}"
    return out


# ------------------------------------------------------------------------------------------------ 2 smoke study
def smoke_study(folder: Path, cpu: bool) -> Path:
    """jobs/smoke.yaml with precision auto (bf16 on CUDA) and the hf bench only; on CPU shrunk to a minute."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["name"] = "gpu-check"
    raw["training"]["precision"] = "auto"
    raw["bench"].update(backends=["hf"], dtype="auto")
    raw["bench"].pop("vllm_regimes", None)
    raw["bench"].pop("kv_cache_memory_bytes", None)
    if cpu:
        raw["tasks"] = [dict(raw["tasks"][0], max_length=64, train_samples=32)]
        raw["seeds"] = [42]
        raw["hpo"]["enabled"] = False
        raw["extraction"].update(examples=16)
        raw["bench"].update(batch_sizes=[1, 2], requests=8, repeats=1, warmup_batches=1, modes=["full", "merged", "separate"])
    path = folder / "gpu-check-study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def smoke(out: Path, cpu: bool, log: Path, timeout: float) -> dict[str, Any]:
    from lorascope.runner import default_run_id
    from lorascope.store import Store
    from lorascope.study import load_study

    study_path = smoke_study(out, cpu)
    study = load_study(study_path)
    store_dir = out / "store"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO / "pkg") + os.pathsep + os.environ.get("PYTHONPATH", "")}  # fmt: skip
    if not cpu:
        env.update(LORASCOPE_DEVICE="cuda", LORASCOPE_REQUIRE_CUDA="1")
    else:
        env.update(LORASCOPE_DEVICE="cpu")
    cmd = [sys.executable, "-m", "lorascope.cli", "run", "--study", str(study_path), "--store", str(store_dir),
           "--jobs", "1", "--work-dir", str(out / "work")]  # fmt: skip
    code, seconds = run(cmd, env, log, timeout)
    result: dict[str, Any] = {"command": " ".join(cmd), "exit": code, "seconds": seconds}
    if code != 0:
        return result
    store = Store.open(str(store_dir), write=False)
    run_key = f"runs/{default_run_id(study)}"
    cells = {}
    for c in study.cells():
        m = store.bundle(f"{run_key}/cells/{c.name}").read_json("metrics.json")
        cells[c.name] = {k: m.get(k) for k in ("bf16", "tokens_per_second", "peak_memory_bytes", "peak_memory_kind",
                                               "train_seconds", "best_step")}  # fmt: skip
        cells[c.name]["validation_accuracy"] = m["validation"]["accuracy"]
    reps = {}
    for b in store.bundles(f"{run_key}/reps/"):
        reps[b.key.split("/reps/", 1)[1]] = b.meta.get("examples_per_second")
    bench = store.bundle(f"{run_key}/bench/hf").read_json("summary.json")
    result.update(cells=cells, extract_examples_per_second=reps, bench_hf=bench,
                  report=store.bundle(f"{run_key}/report") is not None)  # fmt: skip
    return result


# ------------------------------------------------------------------------------------------------ 3 training
def training(out: Path, cpu: bool, log: Path, timeout: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for method in ("full", "lora"):
        cmd = [sys.executable, "bench/train_throughput.py", "--method", method]
        # CPU: the same code path on the smoke model (TinyLlama's 32000 x 2048 embedding alone is minutes of AdamW)
        cmd += (["--shape", "smoke", "--device", "cpu", "--examples", "16", "--micro-batch", "4", "--warmup-steps", "1",
                 "--repeats", "1"] if cpu else
                ["--shape", "tinyllama", "--device", "cuda", "--examples", "256", "--repeats", "1"])  # fmt: skip
        step_log = out / f"train-{method}.log"
        env = {**os.environ, "PYTHONPATH": str(REPO / "pkg") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        code, seconds = run(cmd, env, step_log, timeout)
        with open(log, "ab") as f:
            f.write(step_log.read_bytes())
        res[method] = {"command": " ".join(cmd), "exit": code, "seconds": seconds}
        if code == 0:
            res[method]["summary"] = last_json_line(step_log)
    return res


# ------------------------------------------------------------------------------------------------ 4 extraction
def mrpc_like_batches(n: int, batch: int, vocab: int, seed: int = 0) -> list[list[list[int]]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        l1, l2 = (min(90, max(6, round(rng.gauss(28, 9)))) for _ in range(2))
        rows.append([1, *rng.choices(range(3, vocab), k=l1), 2, *rng.choices(range(3, vocab), k=l2)])
    return [rows[i : i + batch] for i in range(0, n, batch)]


def extraction(cpu: bool, examples: int, batch: int = 32) -> dict[str, Any]:
    """Forward with every hidden state, masked mean pooling per layer, float32 to the host: what the extract phase
    does per batch, at TinyLlama's shape with random weights (float32, as the phase extracts)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from lorascope.models.builtin import TINYLLAMA_1B_ARCH  # the one TinyLlama-1.1B shape

    device = torch.device("cpu" if cpu else "cuda")
    cfg = dict(TINYLLAMA_1B_ARCH, num_labels=2, pad_token_id=2)
    if cpu:  # the code path only: one small layer and vocabulary
        cfg.update(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=1000)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(**cfg)).to(device).eval()
    batches = mrpc_like_batches(examples, batch, cfg["vocab_size"])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def one(rows: list[list[int]]) -> None:
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [2] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        with torch.inference_mode():
            hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            m = mask.unsqueeze(-1).float()
            pooled = torch.stack([(h.float() * m).sum(1) / m.sum(1) for h in hs], 1)
            pooled.cpu()

    one(batches[0])  # warm-up (kernels, allocator)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for rows in batches:
        sync()
        t0 = time.perf_counter()
        one(rows)
        sync()
        times.append(time.perf_counter() - t0)
    out = {"examples": examples, "batch": batch, "layers": cfg["num_hidden_layers"], "dtype": "float32",
           "examples_per_second": round(examples / sum(times), 1),
           "batch_seconds_median": round(statistics.median(times), 4)}  # fmt: skip
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


# ------------------------------------------------------------------------------------------------ 5 serving
def serving(out: Path, cpu: bool, log: Path, timeout: float) -> dict[str, Any]:
    folder = out / "serving"
    cmd = [sys.executable, "bench/serving_shape.py", "--dir", str(folder)]
    # the CPU path checks the code path: one layer, 512 wide (TinyLlama's 2048-wide embedding and head alone are 0.5 GB
    # of float32 that the stage, the cells and every mode write and load: 27 s of the test's 64 s on 2 cores)
    cmd += (["--device", "cpu", "--layers", "1", "--width", "512", "--requests", "4", "--repeats", "1",
             "--batch-sizes", "1", "--warmup-batches", "1"] if cpu else
            ["--device", "cuda", "--requests", "64", "--repeats", "2", "--batch-sizes", "1,2,4,8,16",
             "--warmup-batches", "5"])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "pkg") + os.pathsep + str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code, seconds = run(cmd, env, log, timeout)
    res: dict[str, Any] = {"command": " ".join(cmd), "exit": code, "seconds": seconds}
    if code == 0:
        summaries = sorted((folder / "store").rglob("bench/hf/_attempts/*/summary.json"))
        res["summary"] = json.loads(summaries[-1].read_text()) if summaries else None
    return res


# ------------------------------------------------------------------------------------------------ the wheels
# What lorascope's phases import besides torch (pyproject: dependencies + the ml extra); a machine "with PyTorch
# preinstalled" may lack any of them, and has no network: tools/gpu-check.sh installs the missing ones from a folder of
# wheels made here with `--pack DIR` (the exact versions of this machine's venv, torch and the CUDA wheels left out).
NEEDED_MODULES = {"numpy": "numpy", "scipy": "scipy", "pydantic": "pydantic", "yaml": "PyYAML", "boto3": "boto3",
                  "safetensors": "safetensors", "matplotlib": "matplotlib", "transformers": "transformers",
                  "peft": "peft", "accelerate": "accelerate", "optuna": "optuna", "sqlalchemy": "SQLAlchemy"}  # fmt: skip
NOT_PACKED = ("torch", "triton", "nvidia-", "cuda-", "setuptools", "pip")


def missing_modules() -> list[str]:
    import importlib.util

    return [dist for mod, dist in NEEDED_MODULES.items() if importlib.util.find_spec(mod) is None]


def closure(names: list[str]) -> dict[str, str]:
    """Distribution -> installed version, for `names` and everything they require here (markers evaluated), without
    torch and the CUDA wheels."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen or key.startswith(NOT_PACKED):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[key] = dist.version
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dict(sorted(seen.items()))


def pack(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Download the wheels of closure(NEEDED) at this venv's versions into `folder` (pip, binary only), less `skip`
    (what the target machine is known to have, e.g. numpy and scipy in a PyTorch image)."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = {k: v for k, v in closure(list(NEEDED_MODULES.values())).items() if k not in {s.lower() for s in skip}}
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
           *(f"{k}=={v}" for k, v in pins.items())]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    sizes = {p.name: p.stat().st_size for p in sorted(folder.glob("*.whl"))}
    return {"wheels": len(sizes), "bytes": sum(sizes.values()), "pins": pins}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu-check.json, the logs and the stores")
    ap.add_argument("--cpu-smoke", action="store_true", help="every step, shrunk, on the CPU (the tests run this)")
    ap.add_argument("--step-timeout", type=float, default=300.0, help="seconds per step")
    ap.add_argument("--pack", action="store_true", help="only: download the wheels of what lorascope needs besides "
                    "torch into --out (run where the project's venv is), for a machine without network")
    ap.add_argument("--skip", default="", help="with --pack: comma-separated distributions the target already has")
    ap.add_argument("--missing", action="store_true", help="only: print the distributions this Python lacks")
    args = ap.parse_args(argv)
    if args.missing:
        print(" ".join(missing_modules()))
        return 0
    if args.pack:
        got = pack(Path(args.out), tuple(x for x in args.skip.split(",") if x))
        print(f"gpu-check: {got['wheels']} wheels, {got['bytes'] / 2**20:.1f} MiB in {args.out}")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "steps.log"
    cpu = args.cpu_smoke
    t0 = time.perf_counter()
    import torch

    if not cpu and not torch.cuda.is_available():
        print("gpu-check: torch sees no CUDA device (use --cpu-smoke to check the script on a CPU)", file=sys.stderr)
        from lorascope.cuda import require_cuda

        require_cuda({"LORASCOPE_REQUIRE_CUDA": "1"}, "gpu-check")  # raises ConfigError naming the cause
    report: dict[str, Any] = {"mode": "cpu-smoke" if cpu else "cuda", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    steps = {
        "environment": lambda: environment(),
        "smoke": lambda: smoke(out, cpu, log, args.step_timeout),
        "training": lambda: training(out, cpu, log, args.step_timeout),
        "extraction": lambda: extraction(cpu, examples=32 if cpu else 1024),
        "serving": lambda: serving(out, cpu, log, args.step_timeout),
    }
    failed = []
    for name, step in steps.items():
        s0 = time.perf_counter()
        print(f"gpu-check: {name} ...", flush=True)
        try:
            report[name] = step()
        except Exception as exc:  # one step's failure is recorded; the others still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        took = round(time.perf_counter() - s0, 1)
        if isinstance(report[name], dict) and (report[name].get("error") or report[name].get("exit") not in (None, 0)
                                               or any(isinstance(v, dict) and v.get("exit") not in (None, 0)
                                                      for v in report[name].values())):  # fmt: skip
            failed.append(name)
        print(f"gpu-check: {name} done in {took} s{' (FAILED)' if name in failed else ''}", flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["failed"] = failed
    (out / "gpu-check.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    print(f"gpu-check: {out / 'gpu-check.json'} ({report['seconds']} s){'; failed: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "pkg"))
    sys.exit(main())
