"""The commit protocol (docs/storage.md). A writer uploads a bundle's files under `<key>/_attempts/<attempt-id>/...`
and then, last, writes `<key>/_COMMIT.json`, which names the attempt and lists every file with its size and sha256.
Writing the commit is the only step that makes a result exist, so a writer killed between two uploads leaves nothing
visible, and two writers of one bundle each write their own attempt: whichever commit lands last wins, and it names
only its own files.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.environment import PIP_FREEZE_FILE
from lorascope.errors import StoreError
from lorascope.store.bundle import ATTEMPTS_DIR, COMMIT_FORMAT, COMMIT_NAME, Bundle, FileEntry, sha256_file

if TYPE_CHECKING:
    from lorascope.store import Store


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class BundleWriter:
    """Upload files under a fresh attempt, then commit. Use as a context manager; an exception inside the
    block commits nothing.

        with store.writer("runs/r1/cells/mrpc-lora-s42", phase="train", study_hash=h) as w:
            w.add_dir(out_dir)
            w.add_json("metrics.json", metrics)
    """

    def __init__(self, store: Store, key: str, phase: str, study_hash: str, meta: dict[str, Any] | None = None) -> None:
        self.store = store
        self.key = key.rstrip("/")
        self.phase = phase
        self.study_hash = study_hash
        self.meta = dict(meta or {})
        self.attempt = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{socket.gethostname()[:24]}-{uuid.uuid4().hex[:8]}"
        self.started_at = _now()
        self.entries: dict[str, FileEntry] = {}
        self._pool = ThreadPoolExecutor(max_workers=store.workers)
        self._futures: list = []
        self.committed: Bundle | None = None

    def _check_rel(self, rel: str) -> str:
        rel = rel.strip("/")
        if not rel or rel == COMMIT_NAME or ".." in rel.split("/") or rel.startswith(ATTEMPTS_DIR):
            raise StoreError(f"bundle {self.key}: invalid file name {rel!r}")
        return rel

    def _object_key(self, rel: str) -> str:
        return f"{self.key}/{ATTEMPTS_DIR}/{self.attempt}/{rel}"

    def add_file(self, rel: str, path: Path) -> None:
        rel = self._check_rel(rel)
        path = Path(path)
        self.entries[rel] = FileEntry(rel, path.stat().st_size, sha256_file(path))
        self._futures.append(self._pool.submit(self.store.backend.put_file, self._object_key(rel), path))

    def add_bytes(self, rel: str, data: bytes) -> None:
        rel = self._check_rel(rel)
        self.entries[rel] = FileEntry(rel, len(data), hashlib.sha256(data).hexdigest())
        self._futures.append(self._pool.submit(self.store.backend.put_bytes, self._object_key(rel), data))

    def add_json(self, rel: str, obj: Any) -> None:
        self.add_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def add_dir(self, folder: Path, prefix: str = "") -> None:
        folder = Path(folder)
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                self.add_file(f"{prefix.strip('/')}/{rel}" if prefix else rel, p)

    def _wait_uploads(self) -> None:
        try:
            for f in self._futures:
                f.result()
        finally:
            self._pool.shutdown(wait=True)

    def commit(self) -> Bundle:
        """Wait for every upload, then write _COMMIT.json last."""
        self._wait_uploads()
        if not self.entries:
            raise StoreError(f"bundle {self.key}: refusing to commit an empty bundle")
        environment = self.store.environment
        if environment.pip_freeze is not None:  # after the other uploads: this copy is the one the commit names
            self.store.backend.put_bytes(self._object_key(PIP_FREEZE_FILE), environment.pip_freeze)
            self.entries[PIP_FREEZE_FILE] = FileEntry(
                PIP_FREEZE_FILE, len(environment.pip_freeze), hashlib.sha256(environment.pip_freeze).hexdigest()
            )
        record = {
            "format": COMMIT_FORMAT,
            "bundle": self.key,
            "phase": self.phase,
            "attempt": self.attempt,
            "study_hash": self.study_hash,
            "code_version": self.store.code_version,
            "host": socket.gethostname(),
            "started_at": self.started_at,
            "committed_at": _now(),
            "environment": environment.record(),  # python, package versions, the image's pip freeze
            "files": [vars(e) for e in sorted(self.entries.values(), key=lambda e: e.path)],
            "meta": self.meta,
        }
        self.store.backend.put_bytes(f"{self.key}/{COMMIT_NAME}", json.dumps(record, indent=2).encode())
        self.committed = Bundle(self.store, self.key, record)
        return self.committed

    def abort(self) -> None:
        for f in self._futures:
            f.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
