"""`lorascope pull`: committed bundles from a store into a local folder (itself a file store), every checksum
verified, safe over an earlier pull."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lorascope.errors import StoreError
from lorascope.store.backends import DEFAULT_WORKERS, FileBackend, NotFound
from lorascope.store.bundle import ATTEMPTS_DIR, COMMIT_NAME, Bundle, FileEntry, sha256_file

if TYPE_CHECKING:
    from lorascope.store import Store


@dataclass
class PullReport:
    dest: Path
    bundles: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    missing_bundles: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # bundles with bad downloads whose earlier pulled copy is whole
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing_files


def pull(store: Store, prefix: str, dest: Path, expected: Iterable[str] = (), workers: int = DEFAULT_WORKERS) -> PullReport:
    """Download every committed bundle under `prefix` into `dest` with the same keys (so `dest` is itself a
    file store), verifying every checksum. Plain objects directly under `prefix` (study.yaml) come too.
    `expected` lists bundle keys the caller expects; those without a commit are reported missing.

    Safe over an earlier pull: each file lands under a temporary name and replaces the old copy only once its sha256
    matches, so a corrupt download never destroys a good earlier copy. A bundle whose files did not all arrive gets
    no commit in `dest`; an earlier commit there stays only if it names the same attempt and its files still
    verify, otherwise it is removed, so `dest` never shows a bundle it cannot serve. When `dest` cannot be written
    (read-only, full) the pull stops with one StoreError and removes what it created."""
    from lorascope.store import Store  # the package's own class (lorascope.store imports this module)

    t0 = time.perf_counter()
    dest = Path(dest)
    report = PullReport(dest=dest)
    created: list[Path] = []  # files this pull created (not replaced): removed again if the pull fails
    made_dest = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        probe = dest / f".tmp-probe-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"pull: cannot write into {dest}: {exc.strerror or exc}") from None
    bundles = store.bundles(prefix)
    report.bundles = [b.key for b in bundles]
    have = set(report.bundles)
    report.missing_bundles = sorted(k for k in expected if k.rstrip("/") not in have)

    jobs: list[tuple[Bundle | None, str, FileEntry | None]] = []
    for b in bundles:
        for entry in b.files.values():
            jobs.append((b, b.object_key(entry.path), entry))
    for o in store.backend.list(prefix.rstrip("/") + "/"):
        rel = o.key[len(prefix.rstrip("/")) + 1 :]
        if "/" not in rel and not rel.startswith("."):
            jobs.append((None, o.key, None))

    def one(job: tuple[Bundle | None, str, FileEntry | None]) -> tuple[str, str, int]:
        _bundle, key, entry = job
        target = dest / key
        tmp = target.with_name(f".tmp-pull-{uuid.uuid4().hex[:8]}-{target.name}")
        existed = target.exists()
        try:
            store.backend.get_file(key, tmp, size=entry.size if entry else None)
        except NotFound:
            return ("missing", key, 0)
        try:
            size = tmp.stat().st_size
            if entry is not None and (size != entry.size or sha256_file(tmp) != entry.sha256):
                return ("corrupt", key, size)
            os.replace(tmp, target)
            if not existed:
                created.append(target)
            return ("ok", key, size)
        finally:
            tmp.unlink(missing_ok=True)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for status, key, size in pool.map(one, jobs):
                if status == "ok":
                    report.files += 1
                    report.bytes += size
                elif status == "corrupt":
                    report.corrupt.append(key)
                else:
                    report.missing_files.append(key)
        # commits last, and only for bundles whose files all arrived intact, so `dest` never shows a bad bundle
        bad = set(report.corrupt) | set(report.missing_files)
        local = Store(FileBackend(dest), store.code_version, workers)
        for b in bundles:
            target = dest / b.key / COMMIT_NAME
            if not any(k.startswith(b.key + "/") for k in bad):
                existed = target.exists()
                local.put_object(f"{b.key}/{COMMIT_NAME}", json.dumps(b.commit, indent=2).encode())
                if not existed:
                    created.append(target)
                continue
            old = local.bundle(b.key) if target.exists() else None
            if old is not None and old.attempt == b.attempt and not old.verify_folder(dest / b.key / ATTEMPTS_DIR / b.attempt, None):
                report.kept.append(b.key)  # the earlier pull's copy is whole: keep serving it
            else:
                target.unlink(missing_ok=True)
    except OSError as exc:
        _remove_created(created, dest, made_dest)
        raise StoreError(f"pull: cannot write into {dest}: {exc.strerror or exc} "
                         "(the files this pull had written were removed)") from None  # fmt: skip
    except StoreError as exc:
        _remove_created(created, dest, made_dest)
        raise StoreError(f"{exc} (pull stopped; the files it had written were removed)") from None
    report.corrupt.sort()
    report.missing_files.sort()
    report.seconds = time.perf_counter() - t0
    return report


def _remove_created(created: list[Path], dest: Path, made_dest: bool) -> None:
    """Remove files a failed pull created, their temporary siblings, and the folders left empty."""
    for p in created:
        p.unlink(missing_ok=True)
    for dirpath, _dirs, files in os.walk(dest, topdown=False):
        for name in files:
            if name.startswith(".tmp-"):
                (Path(dirpath) / name).unlink(missing_ok=True)
        d = Path(dirpath)
        if d != dest or made_dest:
            try:
                d.rmdir()
            except OSError:
                pass
