"""The cost of verifying every read: the drift phase on kept inputs with the verification cache cold (every reps file
hashed against its commit) and warm (a stat per file), alternating, wall and CPU seconds, plus the verification alone.

    .venv/bin/python bench/drift_phase.py --keep                  # reference-size inputs (~6 GB), prints --reuse DIR
    .venv/bin/python bench/verify_cost.py DIR --modes cold,warm,cold,warm
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

try:
    import lorascope  # noqa: F401
except ImportError:  # a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pkg"))

from lorascope.log import Logger
from lorascope.phases import PhaseContext
from lorascope.runner import find_runs, load_frozen_study, run_phase_index
from lorascope.store import Store


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="a folder kept by `bench/drift_phase.py --keep`")
    ap.add_argument("--modes", default="cold,warm")
    args = ap.parse_args(argv)
    root = Path(args.dir)
    store = Store.open(str(root / "store"), code_version="bench")
    run_id = find_runs(store)[0]
    study = load_frozen_study(store, run_id)
    work = root / "work"
    verified = work / "cache" / "verified"
    ctx = PhaseContext(study, store, run_id, work, {}, Logger(run=run_id))

    bundles = [b for b in store.bundles(f"runs/{run_id}/") if "/reps/" in b.key]
    shutil.rmtree(verified, ignore_errors=True)
    t, c = time.perf_counter(), cpu_seconds()
    for b in bundles:
        b.local_dir(work / "cache")
    gb = sum(e.size for b in bundles for e in b.files.values()) / 1e9
    print(f"verification alone: {len(bundles)} reps bundles, {gb:.2f} GB: {time.perf_counter() - t:.1f} s wall, "
          f"{cpu_seconds() - c:.1f} s CPU", flush=True)  # fmt: skip
    for mode in args.modes.split(","):
        store.delete_tree(ctx.key("drift"))
        if mode == "cold":
            shutil.rmtree(verified, ignore_errors=True)
        t, c = time.perf_counter(), cpu_seconds()
        run_phase_index(ctx, "drift", 0)
        print(f"{mode}: drift phase {time.perf_counter() - t:.1f} s wall, {cpu_seconds() - c:.1f} s CPU", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
