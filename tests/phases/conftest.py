"""Fixtures for phase tests: small studies derived from jobs/smoke.yaml, a committed stage bundle, a way to run a
phase in-process or as the `lorascope` command a pod runs, and a real PostgreSQL server.

`pg_server` (session): Debian's PostgreSQL (`apt-get install postgresql`: initdb and postgres under
/usr/lib/postgresql/<v>/bin) initialised into a fresh folder and started on 127.0.0.1 with a free port, as the
`postgres` user when the tests run as root (PostgreSQL refuses root). `pg_url` (function): a new database on it,
as a SQLAlchemy URL `postgresql+psycopg2://lorascope@127.0.0.1:<port>/<db>`.
"""

from __future__ import annotations

import copy
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorascope import cli
from lorascope.log import Logger
from lorascope.phases import PhaseContext
from lorascope.runner import default_run_id, freeze_study, run_phase_index
from lorascope.store import Store
from lorascope.study import Study, load_study

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "jobs" / "smoke.yaml"
THREADS = {"LORASCOPE_TORCH_THREADS": "1"}  # tiny models train several times faster on one thread


# ------------------------------------------------------------------------------------------------ studies
def _merge(base: dict, update: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


TINY = {
    "name": "tiny",
    "tasks": [{"name": "mrpc", "metric": "f1", "max_length": 64, "train_samples": 96}],
    "seeds": [42, 7],
    "hpo": {"enabled": False, "trials": 3, "workers": 1},
    "training": {"evals_per_epoch": 2},
    # the main venv's tests serve hf only; the vllm index runs in .venv-vllm (tests/vllm)
    "bench": {"backends": ["hf"]},
}


def write_study(folder: Path, **update: Any) -> Path:
    """A study file: jobs/smoke.yaml with TINY and then `update` merged in (mappings merge, other values replace;
    training.defaults and hpo.spaces keep only the study's methods)."""
    raw = _merge(_merge(yaml.safe_load(SMOKE.read_text()), TINY), update)
    methods = {m["name"] for m in raw["methods"]}
    for section, key in (("training", "defaults"), ("hpo", "spaces")):  # per-method maps follow the methods
        raw[section][key] = {m: v for m, v in raw[section].get(key, {}).items() if m in methods}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"study-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_study(path)  # validate now, so a broken test study fails here
    return path


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class Run:
    """A run of a study in a store, with its stage bundle committed."""

    study_path: Path
    store_url: str
    work_dir: Path
    env: dict[str, str]

    @property
    def study(self) -> Study:
        return load_study(self.study_path)

    @property
    def run_id(self) -> str:
        return default_run_id(self.study)

    @property
    def store(self) -> Store:
        return Store.open(self.store_url, code_version="test")

    def ctx(self, **env: str) -> PhaseContext:
        study = self.study
        store = self.store
        freeze_study(store, self.run_id, study)
        return PhaseContext(study, store, self.run_id, self.work_dir, {**THREADS, **env}, Logger(run=self.run_id))

    def key(self, *parts: str) -> str:
        return "/".join(["runs", self.run_id, *parts])

    def args(self, phase: str, index: int | None = None) -> list[str]:
        out = [phase, "--study", str(self.study_path), "--store", self.store_url, "--work-dir", str(self.work_dir)]
        return out + (["--index", str(index)] if index is not None else [])

    def phase(self, phase: str, index: int, **env: str) -> PhaseContext:
        """Run one index of a phase in this process, as the runner does; returns the context used."""
        ctx = self.ctx(**env)
        run_phase_index(ctx, phase, index)
        return ctx

    def command(self, phase: str, index: int | None = None) -> list[str]:
        return [sys.executable, "-m", "lorascope.cli", *self.args(phase, index)]

    def proc_env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **THREADS, **self.env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", **extra}  # fmt: skip

    def spawn(self, phase: str, index: int | None = None, log: Path | None = None, **env: str) -> subprocess.Popen:
        """`lorascope <phase> --index i` as a separate process (what a pod runs); stderr+stdout to `log`."""
        out = open(log, "wb") if log else subprocess.DEVNULL
        return subprocess.Popen(self.command(phase, index), env=self.proc_env(**env), stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, start_new_session=True)  # fmt: skip

    def run_cli(
        self, phase: str, index: int | None = None, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(phase, index), env=self.proc_env(**env), capture_output=True, text=True,
                              cwd=REPO, timeout=timeout)  # fmt: skip


def stage_run(study_path: Path, store_url: str, work_dir: Path, env: Mapping[str, str] | None = None) -> Run:
    """Commit the stage bundle (the real stage phase, in this process) and return the run."""
    run = Run(study_path, store_url, work_dir, dict(env or {}))
    assert cli.main(run.args("stage")) == 0
    assert run.store.committed(run.key("stage"))
    return run


@pytest.fixture
def make_run(tmp_path):
    """make_run(store_url=None, **study_update) -> a Run of a tiny study with the stage committed (file store in
    tmp_path unless a store URL is given; S3 tests pass `s3_url` and their AWS env is already set)."""

    def make(store_url: str | None = None, env: Mapping[str, str] | None = None, **update: Any) -> Run:
        folder = tmp_path / uuid.uuid4().hex[:6]
        study_path = write_study(folder, **update)
        return stage_run(study_path, store_url or str(folder / "store"), folder / "work", env)

    return make


# ------------------------------------------------------------------------------------------------ PostgreSQL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(cand) / "initdb").exists() and (Path(cand) / "postgres").exists():
            return Path(cand)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("postgres") else None


class PostgresServer:
    USER = "lorascope"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="lorascope-pg-"))  # not pytest's tmp: the postgres user must reach it
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: drop to the `postgres` user (Debian creates it)
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pw = pwd.getpwnam("nobody")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self) -> None:
        data = self.root / "data"
        init = subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-U", self.USER, "-A", "trust", "-E", "UTF8",
                               "--no-instructions"], capture_output=True, text=True, **self.run_as)  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr[-2000:]}")
        self.log = open(self.root / "postgres.log", "wb")
        cmd = [str(self.bindir / "postgres"), "-D", str(data), "-k", str(self.root), "-p", str(self.port), "-h", "127.0.0.1",
               "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, **self.run_as
        )
        import psycopg2

        deadline = time.time() + 60
        while True:
            try:
                psycopg2.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname="postgres").close()
                return
            except psycopg2.OperationalError as exc:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"PostgreSQL did not start ({exc}); log: {(self.root / 'postgres.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def new_database(self) -> str:
        import psycopg2

        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.USER, dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute(f"CREATE DATABASE {name}")
        conn.close()
        return f"postgresql+psycopg2://{self.USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


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
