"""Store drills: corruption caught on every read, safe re-pull, full and read-only folders, mistyped store settings,
read-only stores for read-only commands, file modes, empty folders."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lorascope.errors import IntegrityError
from lorascope.log import Logger
from lorascope.phases import PhaseContext
from lorascope.runner import default_run_id, freeze_study
from lorascope.store import Store
from lorascope.store import bundle as bundle_mod
from lorascope.study import load_study
from tests.fixtures.cli import REPO, assert_one_line, cli_env, files_under, lorascope
from tests.fixtures.scripts import load_script

SMOKE = REPO / "jobs" / "smoke.yaml"


def _flip(path: Path, offset: int = -100) -> None:
    """Flip one byte in place: same size, same inode (what a bad disk or a stray write does)."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def _attempt_file(store: Store, key: str, rel: str) -> Path:
    b = store.bundle(key)
    return Path(store.local_path(b.object_key(rel)))


# ------------------------------------------------------------------------------------------------ 1. verified reads
@pytest.fixture(scope="module")
def drift_inputs(tmp_path_factory):
    """A run with the drift phase's inputs (stage, cells, reps) at a tiny shape, through bench/drift_phase.py."""
    bench = load_script("bench/drift_phase.py")
    from lorascope.study import parse_study

    root = tmp_path_factory.mktemp("drift-inputs")
    study = parse_study(bench.study_for(["mean"], 24))
    store = Store.open(str(root / "store"), code_version="test")
    run_id = default_run_id(study)
    freeze_study(store, run_id, study)
    ctx = PhaseContext(study, store, run_id, root / "work", {}, Logger(run=run_id))
    bench.commit_inputs(ctx, root / "scratch", layers=3, n=24, d=8)
    return root, run_id


def test_flipped_byte_in_committed_reps_stops_drift_with_one_line(drift_inputs, tmp_path):
    """Before: drift exited 0 and committed CKA computed from the damaged file."""
    import shutil

    root, run_id = drift_inputs
    store_dir = tmp_path / "store"
    shutil.copytree(root / "store", store_dir)
    store = Store.open(str(store_dir), code_version="test")
    key = f"runs/{run_id}/reps/mrpc-lora-s42/mrpc"
    _flip(_attempt_file(store, key, "reps.safetensors"))
    proc = lorascope("drift", "--store", str(store_dir), "--run-id", run_id, "--work-dir", str(tmp_path / "work"))
    assert_one_line(proc, 1, key, "differ from the commit", "reps.safetensors")
    assert not store.committed(f"runs/{run_id}/drift")


def test_verification_is_cached_per_attempt_and_a_changed_file_is_caught(tmp_path, monkeypatch):
    store = Store.open(str(tmp_path / "store"), code_version="test")
    with store.writer("runs/r/reps/x", phase="extract", study_hash="h") as w:
        w.add_bytes("big.bin", os.urandom(1 << 20))
        w.add_bytes("small.json", b"{}")
    b = store.bundle("runs/r/reps/x")
    hashed: list[str] = []
    real = bundle_mod.sha256_file
    monkeypatch.setattr(bundle_mod, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    cache = tmp_path / "cache"

    folder = b.local_dir(cache)
    assert sorted(hashed) == ["big.bin", "small.json"]  # first read: every file hashed
    hashed.clear()
    assert b.local_dir(cache) == folder and hashed == []  # verified once per attempt: a stat, no hashing
    other_process = Store.open(str(tmp_path / "store"), code_version="test").bundle("runs/r/reps/x")
    assert other_process.local_dir(cache) == folder and hashed == []  # the fact is kept in the work dir's cache

    _flip(folder / "big.bin", 12345)  # same size, same inode, changed in place
    with pytest.raises(IntegrityError, match=r"runs/r/reps/x.*differ from the commit.*big\.bin"):
        b.local_dir(cache)
    _flip(folder / "big.bin", 12345)  # the bytes are right again: verified afresh, accepted
    hashed.clear()
    assert b.local_dir(cache) == folder and hashed == ["big.bin"]
    (folder / "small.json").unlink()
    with pytest.raises(IntegrityError, match="small.json"):
        b.local_dir(cache)


@pytest.mark.s3
def test_s3_download_cache_is_verified_again_when_changed(s3_url, tmp_path):
    store = Store.open(s3_url, code_version="test")
    with store.writer("runs/r/cells/c", phase="train", study_hash="h") as w:
        w.add_bytes("w.bin", b"x" * 5000)
    b = store.bundle("runs/r/cells/c")
    folder = b.local_dir(tmp_path / "cache")
    _flip(folder / "w.bin", 10)  # the local download cache is damaged after the fact
    again = b.local_dir(tmp_path / "cache")  # caught by its stamp, downloaded afresh
    assert (again / "w.bin").read_bytes() == b"x" * 5000


# ------------------------------------------------------------------------------------------------ 2. re-pull
def _run_with_cell(store_url: str) -> tuple[Store, str, str]:
    store = Store.open(store_url, code_version="test")
    study = load_study(SMOKE)
    run_id = "r1"
    freeze_study(store, run_id, study)
    key = f"runs/{run_id}/cells/mrpc-full-s42"
    with store.writer(key, phase="train", study_hash=study.hash) as w:
        w.add_bytes("model/w.bin", bytes(range(256)) * 40)
        w.add_json("metrics.json", {"f1": 0.8})
    return store, run_id, key


def test_pull_over_an_earlier_good_pull_keeps_the_good_copy(store_url, tmp_path, request):
    """Before: the second pull deleted the good file and left its _COMMIT.json: status said committed, reading
    raised NotFound."""
    env = cli_env(**(request.getfixturevalue("s3_env") if store_url.startswith("s3://") else {}))
    store, run_id, key = _run_with_cell(store_url)
    dest = tmp_path / "pulled"
    first = lorascope("pull", run_id, "--store", store_url, "--to", str(dest), env=env)
    assert first.returncode == 0, first.stderr
    good = (dest / store.bundle(key).object_key("model/w.bin")).read_bytes()

    obj = store.bundle(key).object_key("model/w.bin")  # the store's copy goes bad after the first pull
    data = bytearray(store.get_object(obj))
    data[7] ^= 0xFF
    store.put_object(obj, bytes(data))
    second = lorascope("pull", run_id, "--store", store_url, "--to", str(dest), env=env)
    assert second.returncode == 1
    assert f"CORRUPT (sha256 or size differs from its commit): {obj}" in second.stdout
    assert f"kept the earlier pulled copy of {key}" in second.stdout
    pulled = Store.open(str(dest), code_version="test").bundle(key)
    assert pulled is not None and pulled.read_bytes("model/w.bin") == good
    status = lorascope("status", run_id, "--store", str(dest), env=env)
    assert status.returncode == 0 and "committed    cells/mrpc-full-s42" in status.stdout
    assert not [p for p in dest.rglob(".tmp-*")]


def test_pull_of_a_new_bad_attempt_removes_the_stale_local_commit(tmp_path):
    store, run_id, key = _run_with_cell(str(tmp_path / "store"))
    dest = tmp_path / "pulled"
    assert lorascope("pull", run_id, "--store", str(tmp_path / "store"), "--to", str(dest)).returncode == 0
    with store.writer(key, phase="train", study_hash="h") as w:  # a newer attempt, then damaged in the store
        w.add_bytes("model/w.bin", b"new" * 100)
    _flip(_attempt_file(store, key, "model/w.bin"), 5)
    assert lorascope("pull", run_id, "--store", str(tmp_path / "store"), "--to", str(dest)).returncode == 1
    assert Store.open(str(dest), code_version="t").bundle(key) is None  # never shows a bundle it cannot serve


# ------------------------------------------------------------------------------------------------ 5. full / read-only
def test_pull_into_a_read_only_folder_is_one_line_and_writes_nothing(tmp_path, read_only):
    _store, run_id, _key = _run_with_cell(str(tmp_path / "store"))
    empty = tmp_path / "empty"
    empty.mkdir()
    dest = read_only(empty)
    proc = lorascope("pull", run_id, "--store", str(tmp_path / "store"), "--to", str(dest / "pulled"))
    assert_one_line(proc, 1, "cannot write into", str(dest / "pulled"))
    assert files_under(dest) == []


def test_pull_into_a_full_disk_is_one_line_and_leaves_no_partial_files(tmp_path, small_disk):
    store = Store.open(str(tmp_path / "store"), code_version="test")
    freeze_study(store, "r1", load_study(SMOKE))
    for i in range(4):
        with store.writer(f"runs/r1/cells/c{i}", phase="train", study_hash="h") as w:
            w.add_bytes("w.bin", os.urandom(400_000))
    disk = small_disk("1m")
    proc = lorascope("pull", "r1", "--store", str(tmp_path / "store"), "--to", str(disk / "pulled"), "--workers", "2")
    assert_one_line(proc, 1, "No space left on device", "removed")
    assert files_under(disk) == []


def test_endpoint_without_scheme_is_a_config_error(tmp_path):
    env = cli_env(AWS_ENDPOINT_URL_S3="127.0.0.1:8333", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    proc = lorascope("status", "r1", "--store", "s3://bucket/prefix", env=env)
    assert_one_line(proc, 2, "AWS_ENDPOINT_URL_S3='127.0.0.1:8333'", "http://127.0.0.1:8333")


def test_mistyped_s3_url_and_missing_report_folder_create_nothing(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "lorascope.cli", "status", "r1", "--store", "s3//bucket/x"],
                          env=cli_env(), cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert_one_line(proc, 2, "s3//bucket/x", "s3://bucket/prefix")
    missing = tmp_path / "no-such-pull"
    proc = lorascope("report", str(missing), "--work-dir", str(tmp_path / "work"))
    assert_one_line(proc, 2, str(missing), "does not exist")
    assert not missing.exists() and not (tmp_path / "s3").exists()


# ------------------------------------------------------------------------------------------------ 6. read-only stores
def test_read_only_store_serves_read_only_commands(tmp_path, read_only):
    """Before: every command refused a read-only store ('folder is not writable')."""
    study = load_study(SMOKE)
    src = Store.open(str(tmp_path / "src"), code_version="test")
    freeze_study(src, "r1", study)
    for rel in ("cells/mrpc-full-s42", "report"):
        with src.writer(f"runs/r1/{rel}", phase=rel.split("/")[0], study_hash=study.hash) as w:
            w.add_bytes("ANALYSIS_REPORT.md" if rel == "report" else "metrics.json", b"# report\n")
    ro = read_only(tmp_path / "src")
    work = str(tmp_path / "work")

    status = lorascope("status", "r1", "--store", str(ro))
    assert status.returncode == 0 and "committed    cells/mrpc-full-s42" in status.stdout, status.stderr
    pulled = lorascope("pull", "r1", "--store", str(ro), "--to", str(tmp_path / "pulled"))
    assert pulled.returncode == 0 and (tmp_path / "pulled/runs/r1/report/_COMMIT.json").is_file(), pulled.stderr
    report = lorascope("report", str(ro), "--work-dir", work)
    assert report.returncode == 0 and "already committed, skipping" in report.stderr, report.stderr
    skip = lorascope("train", "--store", str(ro), "--run-id", "r1", "--index", "0", "--work-dir", work)
    assert skip.returncode == 0 and "already committed, skipping" in skip.stderr, skip.stderr
    write = lorascope("train", "--store", str(ro), "--run-id", "r1", "--index", "1", "--work-dir", work)
    assert_one_line(write, 1, "read-only", "cells/mrpc-full-s1337")


# ------------------------------------------------------------------------------------------------ 8. smaller
def test_file_store_files_follow_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        store = Store.open(str(tmp_path / "s"), code_version="test")
        with store.writer("runs/r/x", phase="p", study_hash="h") as w:
            w.add_bytes("a.bin", b"1")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "s").rglob("*") if p.is_file()}
    finally:
        os.umask(old)
    assert modes == {"a.bin": 0o644, "_COMMIT.json": 0o644}


def test_deleted_checkpoints_leave_no_empty_folders(tmp_path):
    store = Store.open(str(tmp_path / "s"), code_version="test")
    for step in (10, 20):
        with store.writer(f"runs/r/checkpoints/c/checkpoint-{step}", phase="train", study_hash="h") as w:
            w.add_bytes("sub/dir/w.bin", b"1")
    store.delete_tree("runs/r/checkpoints/c/checkpoint-10")
    assert [p.name for p in (tmp_path / "s/runs/r/checkpoints/c").iterdir()] == ["checkpoint-20"]
    store.delete_tree("runs/r/checkpoints/c")
    assert not (tmp_path / "s/runs/r/checkpoints").exists() and (tmp_path / "s").is_dir()
