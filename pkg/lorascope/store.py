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
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lorascope.errors import ConfigError, IntegrityError, StoreError

COMMIT_NAME = "_COMMIT.json"
ATTEMPTS_DIR = "_attempts"
COMMIT_FORMAT = 1
DEFAULT_WORKERS = 16
_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class NotFound(StoreError):
    """The object does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


# ------------------------------------------------------------------------------------------------ backends
class Backend(ABC):
    """Flat key/value objects. Keys use '/' and are relative to the store root."""

    url: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_file(self, key: str, path: Path, size: int | None = None) -> None:
        """Download to `path`. `size`, when the caller knows it, lets a backend pick a cheaper path."""

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (recursive), sorted by key."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int: ...

    def exists(self, key: str) -> bool:
        try:
            self.get_bytes(key)
        except NotFound:
            return False
        return True

    @abstractmethod
    def check(self) -> None:
        """Fail fast with one clear StoreError if the store cannot be used."""

    def local_path(self, key: str) -> Path | None:
        """A path on this machine holding the object, where the backend has one (file stores)."""
        return None


class FileBackend(Backend):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if p != self.root and self.root not in p.parents:
            raise StoreError(f"key {key!r} escapes the store root {self.root}")
        return p

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store {self.url}: cannot create the folder: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"store {self.url}: folder is not writable")

    def _atomic_write(self, dest: Path, writer) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-" + dest.name)
        try:
            with os.fdopen(fd, "wb") as f:
                writer(f)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(self._path(key), lambda f: f.write(data))

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as src:
            self._atomic_write(self._path(key), lambda f: shutil.copyfileobj(src, f, _CHUNK))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{self.url}/{key} not found") from None

    def get_file(self, key: str, path: Path, size: int | None = None) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"{self.url}/{key} not found")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        # a prefix may end inside a name ("runs/a" matches "runs/abc/x"): walk the parent and filter
        walk_from = base if base.is_dir() else base.parent
        if not walk_from.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(walk_from):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(ObjectInfo(key, full.stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def delete_prefix(self, prefix: str) -> int:
        objs = self.list(prefix)
        for o in objs:
            self._path(o.key).unlink(missing_ok=True)
        return len(objs)

    def local_path(self, key: str) -> Path | None:
        p = self._path(key)
        return p if p.exists() else None


class S3Backend(Backend):
    """S3 through boto3. Endpoint, keys and region come from the standard AWS_* variables (boto3 reads them);
    path-style addressing and `when_required` checksums so MinIO, SeaweedFS and AWS all work. Transient errors
    (5xx, throttling, dropped connections) are retried by botocore's standard mode with bounded exponential
    backoff (`max_attempts`); anything else becomes one StoreError line."""

    def __init__(self, bucket: str, prefix: str = "", max_attempts: int = 5, workers: int = DEFAULT_WORKERS) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        config = Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max(32, workers * 2),
            connect_timeout=5,
            read_timeout=60,
        )
        session = boto3.session.Session()
        self.endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS default"
        self.client = session.client("s3", config=config)
        self.transfer = TransferConfig(
            multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024, max_concurrency=8
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: Exception, what: str) -> StoreError:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"{self.url} (endpoint {self.endpoint})"
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(f"{where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(exc, EndpointConnectionError) or type(exc).__name__ in ("ConnectTimeoutError", "ConnectionClosedError"):
            return StoreError(f"{where}: cannot reach the S3 endpoint ({exc})")
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "404", "NotFound") and what != "bucket":
                return NotFound(f"{self.url}/{what} not found")
            if code in ("NoSuchBucket",) or (what == "bucket" and status == 404):
                return StoreError(f"{where}: bucket {self.bucket!r} does not exist")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "Forbidden") or status == 403:
                return StoreError(
                    f"{where}: S3 refused the credentials ({code or status}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )
            return StoreError(f"{where}: {what}: S3 error {code or status}: {exc}")
        return StoreError(f"{where}: {what}: {type(exc).__name__}: {exc}")

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:  # botocore raises many types; translate all of them to one line
            raise self._error(exc, what) from None

    def check(self) -> None:
        self._call("bucket", self.client.head_bucket, Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        self._call(key, self.client.upload_file, str(path), self.bucket, self._key(key), Config=self.transfer)

    def get_bytes(self, key: str) -> bytes:
        resp = self._call(key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return self._call(key, resp["Body"].read)

    def get_file(self, key: str, path: Path, size: int | None = None) -> None:
        """Objects known to be small stream through one GET (a TransferManager per call costs more than the
        transfer); large or unknown ones go through the transfer manager (ranged, concurrent parts)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".tmp-" + path.name)
        try:
            if size is not None and size < self.transfer.multipart_threshold:
                resp = self._call(key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))

                def stream() -> None:
                    with open(tmp, "wb") as f:
                        for chunk in resp["Body"].iter_chunks(_CHUNK):
                            f.write(chunk)

                self._call(key, stream)
            else:
                self._call(key, self.client.download_file, self.bucket, self._key(key), str(tmp), Config=self.transfer)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        try:
            self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[ObjectInfo]:
        out = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")

        def pages():
            yield from paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix))

        for page in self._call(prefix or "(root)", list, pages()):
            for obj in page.get("Contents", []):
                out.append(ObjectInfo(obj["Key"][strip:], int(obj["Size"])))
        return sorted(out, key=lambda o: o.key)

    def delete_prefix(self, prefix: str) -> int:
        objs = self.list(prefix)
        for i in range(0, len(objs), 1000):
            batch = [{"Key": self._key(o.key)} for o in objs[i : i + 1000]]
            self._call(prefix, self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch})
        return len(objs)


def open_backend(url: str, workers: int = DEFAULT_WORKERS) -> Backend:
    """`/path`, `./rel`, `file:///path` or `s3://bucket/prefix`."""
    if not url:
        raise ConfigError("--store is empty: give a folder, file:///path or s3://bucket/prefix")
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else url
        if parsed.scheme == "file" and parsed.netloc:
            raise ConfigError(f"--store {url!r}: file URLs need three slashes (file:///abs/path)")
        return FileBackend(path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"--store {url!r}: s3 URLs are s3://bucket/prefix")
        return S3Backend(parsed.netloc, parsed.path, workers=workers)
    raise ConfigError(f"--store {url!r}: unknown scheme {parsed.scheme!r} (use a path, file:// or s3://)")


# ------------------------------------------------------------------------------------------------ bundles
@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass
class Bundle:
    """A committed bundle. `files` maps a relative path to its recorded size and sha256."""

    store: Store
    key: str
    commit: dict[str, Any]

    @property
    def attempt(self) -> str:
        return self.commit["attempt"]

    @property
    def files(self) -> dict[str, FileEntry]:
        return {f["path"]: FileEntry(f["path"], f["size"], f["sha256"]) for f in self.commit["files"]}

    @property
    def meta(self) -> dict[str, Any]:
        return self.commit.get("meta", {})

    def object_key(self, rel: str) -> str:
        return f"{self.key}/{ATTEMPTS_DIR}/{self.attempt}/{rel}"

    def _entry(self, rel: str) -> FileEntry:
        try:
            return self.files[rel]
        except KeyError:
            raise NotFound(f"bundle {self.key} has no file {rel!r} (has {sorted(self.files)})") from None

    def read_bytes(self, rel: str, verify: bool = True) -> bytes:
        entry = self._entry(rel)
        data = self.store.backend.get_bytes(self.object_key(rel))
        if verify and hashlib.sha256(data).hexdigest() != entry.sha256:
            raise IntegrityError(f"{self.key}/{rel}: sha256 does not match its commit")
        return data

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def download(self, dest: Path, verify: bool = True, workers: int = DEFAULT_WORKERS) -> list[str]:
        """Download every file to dest/<rel>; returns the list of corrupt files (empty when all verify)."""
        corrupt: list[str] = []

        def one(entry: FileEntry) -> str | None:
            target = dest / entry.path
            self.store.backend.get_file(self.object_key(entry.path), target, size=entry.size)
            if verify and (target.stat().st_size != entry.size or sha256_file(target) != entry.sha256):
                return entry.path
            return None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            corrupt = [r for r in pool.map(one, self.files.values()) if r]
        return sorted(corrupt)

    def local_dir(self, cache_root: Path) -> Path:
        """A local folder with the bundle's files: the attempt folder itself on a file store, a verified
        download (cached per attempt) otherwise. Raises IntegrityError on a checksum mismatch."""
        local = self.store.backend.local_path(f"{self.key}/{ATTEMPTS_DIR}/{self.attempt}")
        if local is not None:
            return local
        dest = cache_root / self.key / self.attempt
        done = dest / ".complete"
        if not done.exists():
            corrupt = self.download(dest, verify=True, workers=self.store.workers)
            if corrupt:
                raise IntegrityError(f"bundle {self.key}: checksum mismatch in {corrupt}")
            done.write_text(self.attempt)
        return dest


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


class Store:
    """Bundles over a backend. `code_version` is stamped into every commit."""

    def __init__(self, backend: Backend, code_version: str = "unknown", workers: int = DEFAULT_WORKERS) -> None:
        self.backend = backend
        self.code_version = code_version
        self.workers = workers

    @classmethod
    def open(cls, url: str, code_version: str = "unknown", workers: int = DEFAULT_WORKERS, check: bool = True) -> Store:
        backend = open_backend(url, workers=workers)
        if check:
            backend.check()
        return cls(backend, code_version, workers)

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
        keys = [
            o.key[: -len(COMMIT_NAME) - 1]
            for o in self.backend.list(prefix)
            if o.key.endswith("/" + COMMIT_NAME) and f"/{ATTEMPTS_DIR}/" not in o.key
        ]
        out = []
        for k in keys:
            b = self.bundle(k)
            if b is not None:
                out.append(b)
        return out

    def in_progress(self, key: str) -> bool:
        """Uploads exist under `key` but no commit: a writer is running or was killed."""
        return bool(self.backend.list(f"{key.rstrip('/')}/{ATTEMPTS_DIR}/")) and not self.committed(key)


# ------------------------------------------------------------------------------------------------ pull
@dataclass
class PullReport:
    dest: Path
    bundles: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    corrupt: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    missing_bundles: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing_files


def pull(store: Store, prefix: str, dest: Path, expected: Iterable[str] = (), workers: int = DEFAULT_WORKERS) -> PullReport:
    """Download every committed bundle under `prefix` into `dest` with the same keys (so `dest` is itself a
    file store), verifying every checksum. Plain objects directly under `prefix` (study.yaml) come too.
    `expected` lists bundle keys the caller expects; those without a commit are reported missing."""
    t0 = time.perf_counter()
    dest = Path(dest)
    report = PullReport(dest=dest)
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
        try:
            store.backend.get_file(key, target, size=entry.size if entry else None)
        except NotFound:
            return ("missing", key, 0)
        size = target.stat().st_size
        if entry is not None and (size != entry.size or sha256_file(target) != entry.sha256):
            target.unlink()
            return ("corrupt", key, size)
        return ("ok", key, size)

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
    for b in bundles:
        if not any(k.startswith(b.key + "/") for k in bad):
            target = dest / b.key / COMMIT_NAME
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(b.commit, indent=2))
    report.corrupt.sort()
    report.missing_files.sort()
    report.seconds = time.perf_counter() - t0
    return report


