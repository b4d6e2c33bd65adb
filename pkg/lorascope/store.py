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
import re
import shutil
import socket
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lorascope.environment import PIP_FREEZE_FILE, Environment
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
    def check(self, write: bool = True) -> None:
        """Fail fast with one clear StoreError if the store cannot be used (for writing, unless `write` is false)."""

    def local_path(self, key: str) -> Path | None:
        """A path on this machine holding the object, where the backend has one (file stores)."""
        return None


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is process-wide and racy)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class FileBackend(Backend):
    """A folder. Files are written to a temporary name and renamed into place (atomic), with the mode an ordinary
    file gets under the umask (0644 / 0664 on shared volumes), not mkstemp's 0600. An OS error (disk full, read-only
    file system, permission) becomes one StoreError naming the store and the key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"
        self.file_mode = 0o666 & ~_umask()
        self.writable = True

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if p != self.root and self.root not in p.parents:
            raise StoreError(f"key {key!r} escapes the store root {self.root}")
        return p

    def check(self, write: bool = True) -> None:
        """`write`: create the folder if needed and require it writable. Read-only use (status, pull from it, a
        phase that only skips) needs an existing readable folder; a read-only one is fine, and any write into it
        then fails with one line."""
        if not write:
            if not self.root.is_dir():
                raise StoreError(f"store {self.url}: folder does not exist")
            if not os.access(self.root, os.R_OK | os.X_OK):
                raise StoreError(f"store {self.url}: folder is not readable")
            self.writable = os.access(self.root, os.W_OK)
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store {self.url}: cannot create the folder: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"store {self.url}: folder is not writable")

    def _os_error(self, exc: OSError, key: str, what: str = "write") -> StoreError:
        return StoreError(f"store {self.url}: cannot {what} {key}: {exc.strerror or exc}")

    def _atomic_write(self, key: str, writer) -> None:
        dest = self._path(key)
        tmp = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-" + dest.name)
            with os.fdopen(fd, "wb") as f:
                writer(f)
                os.fchmod(f.fileno(), self.file_mode)
            os.replace(tmp, dest)
        except OSError as exc:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            raise self._os_error(exc, key) from None
        except BaseException:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as src:
            self._atomic_write(key, lambda f: shutil.copyfileobj(src, f, _CHUNK))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{self.url}/{key} not found") from None
        except OSError as exc:
            raise self._os_error(exc, key, "read") from None

    def get_file(self, key: str, path: Path, size: int | None = None) -> None:
        """Copy to a temporary name next to `path`, then rename: `path` is never left half written."""
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"{self.url}/{key} not found")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".tmp-" + path.name)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

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
        """Delete the objects, then the folders they leave empty (up to, not including, the store root)."""
        objs = self.list(prefix)
        parents: set[Path] = set()
        try:
            for o in objs:
                p = self._path(o.key)
                p.unlink(missing_ok=True)
                parents.add(p.parent)
        except OSError as exc:
            raise self._os_error(exc, prefix, "delete") from None
        for d in sorted(parents, key=lambda q: len(q.parts), reverse=True):
            while d != self.root and self.root in d.parents:
                try:
                    d.rmdir()  # only succeeds when empty
                except OSError:
                    break
                d = d.parent
        return len(objs)

    def local_path(self, key: str) -> Path | None:
        p = self._path(key)
        return p if p.exists() else None


class S3Backend(Backend):
    """S3 through boto3. Endpoint, keys and region come from the standard AWS_* variables (boto3 reads them);
    path-style addressing and `when_required` checksums so MinIO, SeaweedFS and AWS all work. Transient errors
    (5xx, throttling, dropped connections, an endpoint that refuses connections while it restarts) are retried by
    botocore's standard mode and then, around each whole call, until `retry_seconds` have passed (default
    DEFAULT_S3_RETRY_SECONDS, `LORASCOPE_S3_RETRY_SECONDS`): longer than an S3 server restart. Anything else, or a
    transient error that outlasts the budget, becomes one StoreError line."""

    def __init__(self, bucket: str, prefix: str = "", max_attempts: int = 3, workers: int = DEFAULT_WORKERS,
                 retry_seconds: float = 0.0, endpoint: str | None = None) -> None:  # fmt: skip
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
        self.endpoint = endpoint or "AWS default"
        self.retry_seconds = float(retry_seconds)
        self.client = session.client("s3", config=config, **({"endpoint_url": endpoint} if endpoint else {}))
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

    @staticmethod
    def _transient(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(exc.response.get("Error", {}).get("Code", ""))
            return status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable")
        names = {t.__name__ for t in type(exc).__mro__}
        return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                             "ResponseStreamingError", "IncompleteReadError", "ConnectionError"})  # fmt: skip

    def _call(self, what: str, fn, *args, **kwargs):
        """fn(*args) with transient errors retried (backoff 1, 2, 4 s, capped at 5 s, the last wait cut to the
        deadline) until `retry_seconds` have passed, so the last attempt is made at the deadline, not a backoff step
        before it; the error after that names the budget and the setting."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 1.0
        while True:
            try:
                return fn(*args, **kwargs)
            except StoreError:
                raise
            except Exception as exc:  # botocore raises many types; translate all of them to one line
                remaining = deadline - time.monotonic()
                if self._transient(exc) and remaining > 0:
                    time.sleep(min(delay, remaining))
                    delay = min(delay * 2, 5.0)
                    continue
                err = self._error(exc, what)
                if self._transient(exc):
                    err = StoreError(f"{err} (gave up after {self.retry_seconds:g} s of retries; "
                                     "LORASCOPE_S3_RETRY_SECONDS sets how long)")  # fmt: skip
                raise err from None

    def check(self, write: bool = True) -> None:
        self._call("bucket", self.client.head_bucket, Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        self._call(key, self.client.upload_file, str(path), self.bucket, self._key(key), Config=self.transfer)

    def get_bytes(self, key: str) -> bytes:
        return self._call(key, lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())

    def get_file(self, key: str, path: Path, size: int | None = None) -> None:
        """Objects known to be small stream through one GET (a TransferManager per call costs more than the
        transfer); large or unknown ones go through the transfer manager (ranged, concurrent parts)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".tmp-" + path.name)
        try:
            if size is not None and size < self.transfer.multipart_threshold:

                def stream() -> None:
                    resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
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


DEFAULT_S3_RETRY_SECONDS = 60.0


def s3_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """What S3Backend takes from the environment (the CLI reads it once): the endpoint (AWS_ENDPOINT_URL_S3, else
    AWS_ENDPOINT_URL), which must be a URL with a scheme, and LORASCOPE_S3_RETRY_SECONDS."""
    out: dict[str, Any] = {"retry_seconds": DEFAULT_S3_RETRY_SECONDS, "endpoint": None}
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = (env.get(var) or "").strip()
        if value:
            if not re.match(r"^https?://[^/\s]+", value):
                raise ConfigError(f"{var}={value!r} is not a URL: it needs the scheme, e.g. http://{value}")
            out["endpoint"] = value
            break
    raw = env.get("LORASCOPE_S3_RETRY_SECONDS")
    if raw:
        try:
            out["retry_seconds"] = float(raw)
            assert out["retry_seconds"] >= 0
        except (ValueError, AssertionError):
            raise ConfigError(f"LORASCOPE_S3_RETRY_SECONDS={raw!r} must be a number of seconds >= 0") from None
    return out


def open_backend(url: str, workers: int = DEFAULT_WORKERS, env: Mapping[str, str] | None = None) -> Backend:
    """`/path`, `./rel`, `file:///path` or `s3://bucket/prefix`. `env`: where S3 settings come from (default:
    os.environ, for library callers; the CLI passes the environment it read once)."""
    if not url:
        raise ConfigError("--store is empty: give a folder, file:///path or s3://bucket/prefix")
    if re.match(r"^(s3|file|gs|https?)//", url, re.IGNORECASE):  # "s3//bucket": a URL missing its colon
        raise ConfigError(f"--store {url!r} looks like a mistyped URL (write s3://bucket/prefix or file:///abs/path)")
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else url
        if parsed.scheme == "file" and parsed.netloc:
            raise ConfigError(f"--store {url!r}: file URLs need three slashes (file:///abs/path)")
        return FileBackend(path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"--store {url!r}: s3 URLs are s3://bucket/prefix")
        return S3Backend(parsed.netloc, parsed.path, workers=workers, **s3_settings(os.environ if env is None else env))
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

    def verify_folder(self, folder: Path, cache_root: Path | None) -> list[str]:
        """Check that `folder` holds exactly what the commit lists (size and sha256 of every file); returns the files
        that differ or are missing. Each file is hashed once per attempt: the fact is cached under
        `cache_root/verified/` keyed by the file's (size, mtime_ns, inode, ctime_ns), so a file rewritten or changed
        in place (any write moves mtime/ctime) is hashed again, and an untouched one costs one stat."""
        stamp_file = cache_root / "verified" / self.key / f"{self.attempt}.json" if cache_root is not None else None
        known: dict[str, list] = {}
        if stamp_file is not None:
            try:
                known = json.loads(stamp_file.read_text())
            except (OSError, ValueError):
                known = {}
        bad: list[str] = []
        todo: list[tuple[FileEntry, Path, list]] = []
        for entry in self.files.values():
            target = folder / entry.path
            try:
                st = target.stat()
            except OSError:
                bad.append(entry.path)
                continue
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, entry.sha256]
            if st.st_size != entry.size:
                bad.append(entry.path)
            elif known.get(entry.path) != stamp:
                todo.append((entry, target, stamp))

        def check(job: tuple[FileEntry, Path, list]) -> tuple[str, bool, list | None]:
            entry, target, stamp = job
            ok = sha256_file(target) == entry.sha256
            st = target.stat()
            unchanged = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, entry.sha256] == stamp
            return entry.path, ok, stamp if ok and unchanged else None  # changed while hashing: do not cache

        if todo:
            with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:
                for rel, ok, stamp in pool.map(check, todo):
                    if not ok:
                        bad.append(rel)
                    elif stamp is not None:
                        known[rel] = stamp
            if stamp_file is not None and not bad:
                self._write_stamps(stamp_file, known)
        return sorted(bad)

    @staticmethod
    def _write_stamps(stamp_file: Path, known: dict[str, list]) -> None:
        try:
            stamp_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = stamp_file.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{stamp_file.name}")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, stamp_file)
        except OSError:
            pass  # a cache that cannot be written only costs a re-hash next time

    def _record_verified(self, folder: Path, cache_root: Path) -> None:
        """Stamps for files just verified by a download, without hashing them again."""
        known = {}
        for entry in self.files.values():
            st = (folder / entry.path).stat()
            known[entry.path] = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, entry.sha256]
        self._write_stamps(cache_root / "verified" / self.key / f"{self.attempt}.json", known)

    def local_dir(self, cache_root: Path) -> Path:
        """A local folder with the bundle's files, verified against the commit: the attempt folder itself on a
        file store, a verified download (cached per attempt) otherwise. Raises IntegrityError naming the files
        whose size or sha256 differs from the commit, so a damaged file never reaches a computation."""
        local = self.store.backend.local_path(f"{self.key}/{ATTEMPTS_DIR}/{self.attempt}")
        if local is not None:
            bad = self.verify_folder(local, cache_root)
            if bad:
                raise IntegrityError(f"bundle {self.key} in {self.store.url}: {len(bad)} file(s) differ from the "
                                     f"commit (size or sha256, or missing): {bad[:5]}")  # fmt: skip
            return local
        if isinstance(self.store.backend, FileBackend):
            raise IntegrityError(f"bundle {self.key} in {self.store.url}: the attempt folder {self.attempt} of its "
                                 "commit is missing")  # fmt: skip
        dest = cache_root / self.key / self.attempt
        done = dest / ".complete"
        if done.exists() and not self.verify_folder(dest, cache_root):
            return dest
        done.unlink(missing_ok=True)
        corrupt = self.download(dest, verify=True, workers=self.store.workers)
        if corrupt:
            raise IntegrityError(f"bundle {self.key} in {self.store.url}: checksum mismatch in {corrupt}")
        self._record_verified(dest, cache_root)
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
                local.backend.put_bytes(f"{b.key}/{COMMIT_NAME}", json.dumps(b.commit, indent=2).encode())
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
