"""Pull throughput against a real S3 server (SeaweedFS on 127.0.0.1): 200 x 1 MB objects, concurrent vs one at a
time, in the same run. Prints both and the ratio, first on bare loopback, then through a proxy that adds a fixed
delay to every request (loopback has no network latency; a real S3 endpoint answers a GET in tens of ms, and that
wait is what concurrent transfers hide). See tests/latency_proxy.py.

    .venv/bin/python bench/store_throughput.py [--objects 200] [--size-mb 1] [--workers 16] [--repeats 3]
                                               [--latency-ms 0,20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lorascope.store import Store, pull  # noqa: E402
from tests.latency_proxy import LatencyProxy  # noqa: E402
from tests.s3server import S3Server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--size-mb", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency-ms", default="0,20",
                    help="comma-separated one-way request delays to add through a proxy; 0 = bare loopback")
    args = ap.parse_args()
    delays = [float(x) for x in args.latency_ms.split(",") if x.strip()]

    size = int(args.size_mb * 1024 * 1024)
    total_mb = args.objects * size / 1e6
    print(f"objects={args.objects} size={args.size_mb} MB total={total_mb:.0f} MB workers={args.workers} "
          f"repeats={args.repeats} (median shown); cpus={os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(Path(tmp) / "weed")
        server.start()
        try:
            os.environ.update(server.env())
            url = f"s3://{server.new_bucket()}/bench"
            store = Store.open(url, code_version="bench", workers=args.workers)
            with store.writer("runs/bench/reps/many", phase="bench", study_hash="bench") as w:
                for i in range(args.objects):
                    w.add_bytes(f"obj-{i:04d}.bin", os.urandom(size))
            for delay in delays:
                proxy = LatencyProxy("127.0.0.1", server.port, delay).start() if delay > 0 else None
                try:
                    os.environ["AWS_ENDPOINT_URL_S3"] = proxy.endpoint if proxy else server.endpoint
                    reader = Store.open(url, code_version="bench", workers=args.workers)
                    results: dict[int, list[float]] = {1: [], args.workers: []}
                    for r in range(args.repeats):
                        for workers in (1, args.workers):  # alternate, so drift in the machine hits both alike
                            dest = Path(tmp) / f"pull-{delay}-{workers}-{r}"
                            rep = pull(reader, "runs/bench/", dest, workers=workers)
                            assert rep.ok and rep.files == args.objects, rep
                            results[workers].append(rep.seconds)
                            shutil.rmtree(dest)
                finally:
                    if proxy:
                        proxy.stop()
                seq = statistics.median(results[1])
                conc = statistics.median(results[args.workers])
                label = f"added request delay {delay:g} ms" if delay > 0 else "bare loopback"
                print(f"-- {label}")
                print(f"   one at a time : {seq:7.2f} s  {total_mb / seq:7.1f} MB/s   "
                      f"runs={[round(x, 2) for x in results[1]]}")
                print(f"   {args.workers:>2} concurrent : {conc:7.2f} s  {total_mb / conc:7.1f} MB/s   "
                      f"runs={[round(x, 2) for x in results[args.workers]]}")
                print(f"   ratio (one at a time / concurrent) = {seq / conc:.2f}x")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
