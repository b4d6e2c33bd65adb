"""Fault drills: the real CLI (`python -m lorascope.cli`, a separate process, as a pod runs it) against a file store
and SeaweedFS, with faults injected from outside: a flipped byte, a full disk (a small tmpfs), a read-only folder (a
tmpfs remounted read-only), SIGKILL, an S3 server restart. Each drill asserts the outcome a person needs: exit code,
one clear line, nothing half-written left behind.

Disk and read-only drills mount a tmpfs, which needs root; without root the read-only drills fall back to
`chmod a-w` (equivalent for a non-root user) and the disk-full drills are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import lorascope

REPO = Path(__file__).resolve().parents[2]
PKG = Path(lorascope.__file__).resolve().parents[1]  # the child processes run the same package as the tests
IS_ROOT = os.geteuid() == 0


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORASCOPE_")}
    env.update({"PYTHONPATH": str(PKG), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", "LORASCOPE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"})  # fmt: skip
    env.update(extra)
    return env


def lorascope(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in its own process."""
    return subprocess.run([sys.executable, "-m", "lorascope.cli", *args], env=env or cli_env(), capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that report an error (`error: ...`)."""
    return [x for x in stderr.splitlines() if x.startswith("error:")]


def assert_one_line(proc: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    """The failure is one `error:` line, the last thing written, with no traceback (library progress bars and
    lorascope's own log lines may come before it)."""
    lines = error_lines(proc.stderr)
    assert proc.returncode == rc, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT:
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True
    )
    return r.returncode == 0


@pytest.fixture
def small_disk(tmp_path) -> Iterator[callable]:
    """small_disk(size) -> a folder on a fresh tmpfs of that size (skips the test when it cannot be mounted)."""
    mounted: list[Path] = []

    def make(size: str = "1m") -> Path:
        p = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        if not _mount_tmpfs(p, size):
            pytest.skip("a small tmpfs needs root (mount -t tmpfs)")
        mounted.append(p)
        return p

    yield make
    for p in mounted:
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


@pytest.fixture
def read_only(tmp_path) -> Iterator[callable]:
    """read_only(src) -> a read-only copy of folder `src`: a tmpfs remounted read-only (root), else chmod a-w."""
    mounted: list[Path] = []
    chmodded: list[Path] = []

    def make(src: Path) -> Path:
        p = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
        if _mount_tmpfs(p, "256m"):
            shutil.copytree(src, p, dirs_exist_ok=True)
            subprocess.run(["mount", "-o", "remount,ro", str(p)], check=True)
            mounted.append(p)
        else:
            shutil.copytree(src, p)
            for d, _dirs, files in os.walk(p):
                for f in files:
                    os.chmod(Path(d) / f, 0o444)
                os.chmod(d, 0o555)
            chmodded.append(p)
        return p

    yield make
    for p in mounted:
        subprocess.run(["umount", "-l", str(p)], capture_output=True)
    for p in chmodded:
        for d, _dirs, _files in os.walk(p):
            os.chmod(d, 0o755)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
