"""Store backends: flat key/value objects under one root, chosen by one URL (`open_backend`).

  * a bare path or `file:///path`  -> FileBackend (the local default): atomic writes (temporary name, rename)
  * `s3://bucket/prefix`           -> S3Backend through boto3, configured only by the standard AWS_* variables
                                       (AWS_ENDPOINT_URL_S3 for MinIO/SeaweedFS), path-style addressing; transient
                                       errors retried until LORASCOPE_S3_RETRY_SECONDS have passed.

A backend knows nothing of bundles: the commit protocol is lorascope.store.writer's, reading bundles
lorascope.store.bundle's.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lorascope.errors import ConfigError, StoreError

DEFAULT_WORKERS = 16
CHUNK = 1024 * 1024


class NotFound(StoreError):
    """The object does not exist."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


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
            self._atomic_write(key, lambda f: shutil.copyfileobj(src, f, CHUNK))

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
                        for chunk in resp["Body"].iter_chunks(CHUNK):
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
