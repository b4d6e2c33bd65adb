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
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.cli import REPO, assert_one_line, cli_env, error_lines, files_under, lorascope

__all__ = ["REPO", "assert_one_line", "cli_env", "error_lines", "files_under", "lorascope"]

IS_ROOT = os.geteuid() == 0


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
