"""The store: where every phase reads its inputs and commits its bundle.

One URL chooses the backend:
  * a bare path or `file:///path`  -> FileBackend (the local default)
  * `s3://bucket/prefix`           -> S3Backend through boto3, configured only by the standard AWS_* variables
                                       (AWS_ENDPOINT_URL_S3 for MinIO/SeaweedFS), path-style addressing.

Bundles (docs/storage.md has the full protocol):
  A bundle is a folder `<key>/`. A writer uploads its files under `<key>/_attempts/<attempt-id>/...` and then,
  last, writes `<key>/_COMMIT.json`, which names the attempt and lists every file with its size and sha256.
  Writing the commit is the only step that makes a result exist. Readers look at `_COMMIT.json` first and read
  only the files of the attempt it names, so
    * a writer killed between two uploads leaves nothing visible (no commit),
    * two writers of one bundle (two pods for one index) each write their own attempt; whichever commit lands
      last wins, and it names only its own files, so no commit ever mixes files of two attempts.

The package: `backends` (file and S3, the S3 retries), `bundle` (a committed bundle: read, verify, the local cache),
`writer` (the commit protocol), `pull`; and here the `Store`, bundles over a backend, which is all a caller uses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.environment import Environment
from lorascope.errors import IntegrityError
from lorascope.store.backends import (
    DEFAULT_S3_RETRY_SECONDS,
    DEFAULT_WORKERS,
    Backend,
    FileBackend,
    NotFound,
    ObjectInfo,
    S3Backend,
    open_backend,
    s3_settings,
)
from lorascope.store.bundle import ATTEMPTS_DIR, COMMIT_FORMAT, COMMIT_NAME, Bundle, FileEntry, is_commit, sha256_file
from lorascope.store.pull import PullReport, pull
from lorascope.store.writer import BundleWriter


class Store:
    """Bundles over a backend. `code_version` and the environment (python, package versions, the image's pip freeze
    read from `pip_freeze`: lorascope.environment) are stamped into every commit."""

    def __init__(self, backend: Backend, code_version: str = "unknown", workers: int = DEFAULT_WORKERS,
                 pip_freeze: Path | None = None) -> None:  # fmt: skip
        self.backend = backend
        self.code_version = code_version
        self.workers = workers
        self.pip_freeze = pip_freeze
        self._environment: Environment | None = None

    @property
    def environment(self) -> Environment:
        """Read once per store, at the first commit (package metadata only: no imports)."""
        if self._environment is None:
            self._environment = Environment.current(self.pip_freeze)
        return self._environment

    @classmethod
    def open(cls, url: str, code_version: str = "unknown", workers: int = DEFAULT_WORKERS, check: bool = True,
             write: bool = True, env: Mapping[str, str] | None = None, pip_freeze: Path | None = None) -> Store:  # fmt: skip
        """`write=False` for read-only use: a file store must then exist (it is not created) and may be read-only."""
        backend = open_backend(url, workers=workers, env=env)
        if check:
            backend.check(write=write)
        return cls(backend, code_version, workers, pip_freeze=pip_freeze)

    @property
    def writable(self) -> bool:
        return getattr(self.backend, "writable", True)

    @property
    def url(self) -> str:
        return self.backend.url

    def writer(self, key: str, phase: str, study_hash: str, meta: dict[str, Any] | None = None) -> BundleWriter:
        return BundleWriter(self, key, phase, study_hash, meta)

    def bundle(self, key: str) -> Bundle | None:
        """The committed bundle at `key`, or None when there is no commit."""
        key = key.rstrip("/")
        try:
            raw = self.backend.get_bytes(f"{key}/{COMMIT_NAME}")
        except NotFound:
            return None
        try:
            record = json.loads(raw)
            assert record["format"] == COMMIT_FORMAT and isinstance(record["files"], list)
        except Exception:
            raise IntegrityError(f"{key}/{COMMIT_NAME} is not a valid commit record") from None
        return Bundle(self, key, record)

    def committed(self, key: str) -> bool:
        return self.backend.exists(f"{key.rstrip('/')}/{COMMIT_NAME}")

    def bundles(self, prefix: str) -> list[Bundle]:
        """Every committed bundle under `prefix`."""
        keys = [o.key[: -len(COMMIT_NAME) - 1] for o in self.backend.list(prefix) if is_commit(o.key)]
        out = []
        for k in keys:
            b = self.bundle(k)
            if b is not None:
                out.append(b)
        return out

    def in_progress(self, key: str) -> bool:
        """Uploads exist under `key` but no commit: a writer is running or was killed."""
        return bool(self.backend.list(f"{key.rstrip('/')}/{ATTEMPTS_DIR}/")) and not self.committed(key)

    # ---------------------------------------------------------------------------------------- objects and folders
    def put_object(self, key: str, data: bytes) -> None:
        """Write one plain object outside any bundle (a run's frozen study.yaml). Bundles are written by `writer`."""
        self.backend.put_bytes(key, data)

    def get_object(self, key: str) -> bytes:
        """The bytes of one object; NotFound when it does not exist."""
        return self.backend.get_bytes(key)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (recursive, attempt files of bundles included), sorted by key."""
        return self.backend.list(prefix)

    def local_path(self, key: str) -> Path | None:
        """A path on this machine holding the object, where the store has one (a file store); None on S3."""
        return self.backend.local_path(key)

    def delete_tree(self, prefix: str) -> int:
        """Delete every object under the folder `prefix` (a bundle, or a folder of bundles): the commits first, so a
        reader never sees a commit whose files are gone. Returns how many objects were deleted."""
        folder = prefix.rstrip("/") + "/"
        commits = [o.key for o in self.backend.list(folder) if is_commit(o.key)]
        for key in commits:
            self.backend.delete_prefix(key)
        return len(commits) + self.backend.delete_prefix(folder)


__all__ = [
    "ATTEMPTS_DIR", "COMMIT_FORMAT", "COMMIT_NAME", "DEFAULT_S3_RETRY_SECONDS", "DEFAULT_WORKERS", "Backend", "Bundle",
    "BundleWriter", "FileBackend", "FileEntry", "NotFound", "ObjectInfo", "PullReport", "S3Backend", "Store",
    "open_backend", "pull", "s3_settings", "sha256_file",
]  # fmt: skip
