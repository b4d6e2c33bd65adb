"""Fixtures for phase tests: small studies derived from jobs/smoke.yaml with the stage committed (`make_run`) and a
real PostgreSQL server (`pg_server`, session; `pg_url`, a new database on it). What they build lives in tests/fixtures
(studies, runs, postgres); the names re-exported here keep older imports of this module working."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from tests.fixtures.postgres import PostgresServer, postgres_bindir
from tests.fixtures.runs import Run, stage_run
from tests.fixtures.studies import REPO, SMOKE, THREADS, TINY, write_study

__all__ = ["REPO", "SMOKE", "THREADS", "TINY", "PostgresServer", "Run", "postgres_bindir", "stage_run", "write_study"]


@pytest.fixture
def make_run(tmp_path):
    """make_run(store_url=None, **study_update) -> a Run of a tiny study with the stage committed (file store in
    tmp_path unless a store URL is given; S3 tests pass `s3_url` and their AWS env is already set)."""

    def make(store_url: str | None = None, env: Mapping[str, str] | None = None, **update: Any) -> Run:
        folder = tmp_path / uuid.uuid4().hex[:6]
        study_path = write_study(folder, **update)
        return stage_run(study_path, store_url or str(folder / "store"), folder / "work", env)

    return make


@pytest.fixture(scope="session")
def pg_server():
    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found (initdb, postgres): apt-get install -y postgresql")
    server = PostgresServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.new_database()
