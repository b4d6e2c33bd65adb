"""Pull throughput against a real S3 server (SeaweedFS on 127.0.0.1): 200 x 1 MB objects, concurrent vs one at a
time, in the same run. Prints both and the ratio.

    .venv/bin/python bench/store_throughput.py [--objects 200] [--size-mb 1] [--workers 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lorascope.store import Store, pull  # noqa: E402
from tests.s3server import S3Server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--size-mb", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp) / "weed")
        server.start()
        try:
            os.environ.update(server.env())
            url = f"s3://{server.new_bucket()}/bench"
            store = Store.open(url, code_version="bench", workers=args.workers)
            size = int(args.size_mb * 1024 * 1024)
            with store.writer("runs/bench/reps/many", phase="bench", study_hash="bench") as w:
                for i in range(args.objects):
                    w.add_bytes(f"obj-{i:04d}.bin", os.urandom(size))
            total_mb = args.objects * size / 1e6
            results: dict[int, list[float]] = {1: [], args.workers: []}
            for r in range(args.repeats):
                for workers in (1, args.workers):  # alternate, so drift in the machine hits both alike
                    rep = pull(store, "runs/bench/", Path(tmp) / f"pull-{workers}-{r}", workers=workers)
                    assert rep.ok and rep.files == args.objects, rep
                    results[workers].append(rep.seconds)
        finally:
            server.stop()

    seq = statistics.median(results[1])
    conc = statistics.median(results[args.workers])
    print(f"objects={args.objects} size={args.size_mb} MB total={total_mb:.0f} MB repeats={args.repeats} (median shown)")
    print(f"one at a time : {seq:7.2f} s  {total_mb / seq:7.1f} MB/s   runs={[round(x, 2) for x in results[1]]}")
    print(f"{args.workers:>2} concurrent : {conc:7.2f} s  {total_mb / conc:7.1f} MB/s   runs={[round(x, 2) for x in results[args.workers]]}")
    print(f"ratio (one at a time / concurrent) = {seq / conc:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
