"""Reading a committed bundle: its commit record (`_COMMIT.json`: the attempt, every file with its size and sha256),
its files (verified against the commit), and a local folder of them (`local_dir`: the attempt folder itself on a file
store, a verified download cached per attempt otherwise; the verification is cached per file, so an untouched file
costs one stat).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.errors import IntegrityError
from lorascope.store.backends import CHUNK, DEFAULT_WORKERS, FileBackend, NotFound

if TYPE_CHECKING:
    from lorascope.store import Store

COMMIT_NAME = "_COMMIT.json"
ATTEMPTS_DIR = "_attempts"
COMMIT_FORMAT = 1


def is_commit(key: str) -> bool:
    """Whether an object key is a bundle's commit record (`<bundle>/_COMMIT.json`, not a file inside an attempt)."""
    return key.endswith("/" + COMMIT_NAME) and f"/{ATTEMPTS_DIR}/" not in key


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


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
