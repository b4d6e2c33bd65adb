"""S3 drills against a SeaweedFS of their own (it is stopped and restarted here): an outage shorter than the retry
budget is ridden out, a longer one ends in one line that names the budget and its setting."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from lorascope.runner import freeze_study
from lorascope.store import Store
from lorascope.study import load_study
from tests.fixtures.cli import REPO, assert_one_line, cli_env
from tests.s3server import S3Server

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("seaweedfs-drill"))
    server.start()
    yield server
    server.stop(crash=True)


@pytest.fixture
def s3_run(own_server, monkeypatch):
    for k, v in own_server.env().items():
        monkeypatch.setenv(k, v)
    url = f"s3://{own_server.new_bucket()}/drill"
    store = Store.open(url, code_version="test")
    freeze_study(store, "r1", load_study(REPO / "jobs" / "smoke.yaml"))
    return url, cli_env(**own_server.env())


def test_status_rides_out_an_s3_server_restart(own_server, s3_run):
    """Before: botocore's 5 attempts (~10-25 s) ended before a restart (~20 s) finished: exit 1."""
    url, env = s3_run
    own_server.stop(crash=True)
    restarted = threading.Timer(16.0, own_server.start)  # with its start-up: ~20 s, like a real restart
    restarted.start()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lorascope.cli", "status", "r1", "--store", url], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    restarted.join()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "run r1  study=smoke" in proc.stdout and time.perf_counter() - t0 >= 16


def test_an_outage_longer_than_the_budget_is_one_line_naming_it(own_server, s3_run):
    url, env = s3_run
    own_server.stop(crash=True)
    try:
        proc = subprocess.run([sys.executable, "-m", "lorascope.cli", "status", "r1", "--store", url],
                              env={**env, "LORASCOPE_S3_RETRY_SECONDS": "2"}, cwd=REPO, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    finally:
        own_server.start()
    assert_one_line(
        proc, 1, "cannot reach the S3 endpoint", "gave up after 2 s of retries", "LORASCOPE_S3_RETRY_SECONDS"
    )
