"""The store and its commit protocol, on the file backend and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest

from lorascope import cli, environment
from lorascope.environment import PIP_FREEZE_FILE
from lorascope.errors import ConfigError, IntegrityError, StoreError
from lorascope.store import ATTEMPTS_DIR, COMMIT_NAME, NotFound, Store, open_backend, pull


def _write_bundle(store: Store, key: str, files: dict[str, bytes], meta=None):
    with store.writer(key, phase="test", study_hash="h1", meta=meta) as w:
        for rel, data in files.items():
            w.add_bytes(rel, data)
    return w.committed


def test_bundle_roundtrip_records_sizes_and_sha256(store: Store, tmp_path: Path):
    local = tmp_path / "model.bin"
    local.write_bytes(os.urandom(300_000))
    with store.writer("runs/r/cells/c1", phase="train", study_hash="abc", meta={"step": 3}) as w:
        w.add_file("model/weights.bin", local)
        w.add_json("metrics.json", {"f1": 0.5})
    b = store.bundle("runs/r/cells/c1")
    assert b is not None and b.attempt == w.attempt
    assert b.commit["phase"] == "train" and b.commit["study_hash"] == "abc" and b.commit["code_version"] == "test"
    assert b.meta == {"step": 3}
    assert set(b.files) == {"model/weights.bin", "metrics.json"}
    assert b.files["model/weights.bin"].size == 300_000
    assert b.files["model/weights.bin"].sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
    assert b.read_json("metrics.json") == {"f1": 0.5}
    local_dir = b.local_dir(tmp_path / "cache")
    assert (local_dir / "model/weights.bin").read_bytes() == local.read_bytes()
    assert [x.key for x in store.bundles("runs/r/")] == ["runs/r/cells/c1"]


class FailingBackend:
    """Wraps a backend; the n-th upload raises, as a killed pod or a dropped connection would."""

    def __init__(self, inner, fail_on: int):
        self.inner, self.fail_on, self.calls = inner, fail_on, 0
        self.lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put_bytes(self, key, data):
        with self.lock:
            self.calls += 1
            n = self.calls
        if n == self.fail_on:
            raise StoreError("injected failure")
        return self.inner.put_bytes(key, data)


def test_failure_between_uploads_leaves_nothing_visible_and_rerun_commits_whole(store: Store):
    key = "runs/r/cells/c2"
    files = {f"part-{i}.txt": f"first-{i}".encode() for i in range(5)}
    broken = Store(FailingBackend(store.backend, fail_on=3), "test", workers=1)
    with pytest.raises(StoreError, match="injected"):
        _write_bundle(broken, key, files)
    assert store.bundle(key) is None
    assert store.bundles("runs/r/") == []
    assert store.in_progress(key)  # uploads exist, no commit

    files2 = {f"part-{i}.txt": f"second-{i}".encode() for i in range(5)}
    _write_bundle(store, key, files2)
    b = store.bundle(key)
    assert {rel: b.read_bytes(rel) for rel in b.files} == files2
    assert not store.in_progress(key)


def test_exception_inside_writer_commits_nothing(store: Store):
    with pytest.raises(RuntimeError):
        with store.writer("runs/r/x", phase="t", study_hash="h") as w:
            w.add_bytes("a.txt", b"a")
            raise RuntimeError("trainer crashed")
    assert store.bundle("runs/r/x") is None


def test_two_concurrent_writers_end_in_one_consistent_commit(store: Store):
    key = "runs/r/cells/race"
    barrier = threading.Barrier(2)

    def writer(tag: str):
        w = store.writer(key, phase="train", study_hash="h")
        for i in range(8):
            w.add_bytes(f"f{i}.txt", f"{tag}-{i}".encode() * 100)
        barrier.wait()
        w.commit()

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b = store.bundle(key)
    contents = {rel: b.read_bytes(rel) for rel in b.files}  # verifies every sha256
    tags = {data.split(b"-")[0] for data in contents.values()}
    assert len(contents) == 8 and len(tags) == 1, "a commit mixed files of two attempts"
    attempts = {o.key.split("/")[5] for o in store.list_objects(f"{key}/{ATTEMPTS_DIR}/")}
    assert b.attempt in attempts and len(attempts) == 2


def _flip_byte(store: Store, key: str) -> None:
    data = bytearray(store.get_object(key))
    data[len(data) // 2] ^= 0xFF
    store.put_object(key, bytes(data))


def test_pull_finds_a_flipped_byte_and_cli_exits_nonzero(store: Store, store_url: str, tmp_path: Path, capsys):
    store.put_object("runs/r1/study.yaml", b"# not used by pull\n")
    _write_bundle(store, "runs/r1/cells/a", {"w.bin": os.urandom(10_000), "m.json": b"{}"})
    _write_bundle(store, "runs/r1/cells/b", {"w.bin": os.urandom(10_000)})
    good = pull(store, "runs/r1/", tmp_path / "ok", expected=["runs/r1/cells/a", "runs/r1/cells/b", "runs/r1/cells/c"])
    assert good.ok and good.files == 4 and good.missing_bundles == ["runs/r1/cells/c"]
    pulled = Store.open(str(tmp_path / "ok"))
    assert pulled.bundle("runs/r1/cells/a").read_bytes("m.json") == b"{}"

    b = store.bundle("runs/r1/cells/a")
    _flip_byte(store, b.object_key("w.bin"))
    bad = pull(store, "runs/r1/", tmp_path / "bad")
    assert bad.corrupt == [b.object_key("w.bin")] and not bad.ok
    pulled_bad = Store.open(str(tmp_path / "bad"))
    assert pulled_bad.bundle("runs/r1/cells/a") is None, "a corrupt bundle must not look committed after pull"
    assert pulled_bad.bundle("runs/r1/cells/b") is not None
    with pytest.raises(IntegrityError):
        store.bundle("runs/r1/cells/a").read_bytes("w.bin")


def test_cli_pull_and_status(store: Store, store_url: str, tmp_path: Path, smoke_study_path: Path, capsys, fake_phases):
    from lorascope.runner import freeze_study
    from lorascope.study import load_study

    study = load_study(smoke_study_path)
    freeze_study(store, "run1", study)
    _write_bundle(store, "runs/run1/cells/mrpc-full-s42", {"metrics.json": b"{}"})
    assert cli.main(["status", "run1", "--store", store_url]) == 0
    out = capsys.readouterr().out
    assert "committed    cells/mrpc-full-s42" in out
    assert cli.main(["pull", "run1", "--store", store_url, "--to", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "pulled 1 committed bundles" in out and "missing (not committed): runs/run1/cells/rte-lora-s2024" in out
    assert (tmp_path / "p/runs/run1/study.yaml").exists()
    b = store.bundle("runs/run1/cells/mrpc-full-s42")
    _flip_byte(store, b.object_key("metrics.json"))
    assert cli.main(["pull", "run1", "--store", store_url, "--to", str(tmp_path / "p2")]) == 1
    assert "CORRUPT" in capsys.readouterr().out


def test_commit_is_the_last_object_written(store: Store):
    order: list[str] = []
    inner = store.backend

    class Recorder:
        def __getattr__(self, name):
            return getattr(inner, name)

        def put_bytes(self, key, data):
            inner.put_bytes(key, data)
            order.append(key)

    s = Store(Recorder(), "test", workers=4)
    _write_bundle(s, "runs/r/z", {f"{i}.txt": b"x" * 1000 for i in range(10)})
    assert order[-1] == f"runs/r/z/{COMMIT_NAME}" and len(order) == 11


def test_invalid_file_names_are_refused(store: Store):
    w = store.writer("runs/r/y", phase="t", study_hash="h")
    for bad in ("../escape", COMMIT_NAME, f"{ATTEMPTS_DIR}/x", ""):
        with pytest.raises(StoreError):
            w.add_bytes(bad, b"x")
    w.abort()


@pytest.mark.s3
def test_multipart_object_round_trips(s3_url: str, tmp_path: Path):
    store = Store.open(s3_url, code_version="test")
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(65):
            f.write(os.urandom(1024 * 1024))
    with store.writer("runs/r/checkpoints/c/checkpoint-10", phase="train", study_hash="h") as w:
        w.add_file("model.safetensors", big)
    head = store.backend.client.head_object(Bucket=store.backend.bucket, Key=store.backend._key(
        store.bundle("runs/r/checkpoints/c/checkpoint-10").object_key("model.safetensors")))
    assert "-" in head["ETag"], "expected a multipart upload (ETag of the form <md5>-<parts>)"
    out = store.bundle("runs/r/checkpoints/c/checkpoint-10").local_dir(tmp_path / "cache")
    assert hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------ S3 errors
@pytest.mark.s3
def test_wrong_keys_give_one_clear_line_and_exit_1(s3_url: str, monkeypatch, capsys, smoke_study_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    t0 = time.perf_counter()
    rc = cli.main(["status", "anyrun", "--store", s3_url])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "refused the credentials" in err and "AWS_SECRET_ACCESS_KEY" in err and "wrong-secret" not in err
    assert time.perf_counter() - t0 < 30


@pytest.mark.s3
def test_missing_bucket_is_named(s3_server, s3_env, capsys):
    rc = cli.main(["status", "anyrun", "--store", "s3://no-such-bucket-lorascope/x"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "bucket 'no-such-bucket-lorascope' does not exist" in err and len(err.splitlines()) == 1


def test_unreachable_endpoint_fails_fast_with_one_line(monkeypatch, capsys, tmp_path):
    from tests.s3server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("LORASCOPE_S3_RETRY_SECONDS", "3")  # the default (60 s) outlasts a server restart
    t0 = time.perf_counter()
    rc = cli.main(["status", "anyrun", "--store", "s3://b/p"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "cannot reach the S3 endpoint" in err and len(err.splitlines()) == 1
    assert "gave up after 3 s of retries; LORASCOPE_S3_RETRY_SECONDS" in err
    assert 3 <= time.perf_counter() - t0 < 30  # bounded retries, not a hang


def test_store_urls_are_parsed_strictly():
    from lorascope.errors import ConfigError

    assert open_backend("file:///tmp/x").url == "file:///tmp/x"
    assert open_backend("relative/dir").url.startswith("file:///")
    for bad in ("", "ftp://x/y", "s3://", "file://host/x"):
        with pytest.raises(ConfigError):
            open_backend(bad)


def test_bundles_ignore_folders_without_commit(store: Store):
    store.put_object("runs/r/cells/half/_attempts/a1/w.bin", b"x")
    _write_bundle(store, "runs/r/cells/whole", {"w.bin": b"y"})
    assert [b.key for b in store.bundles("runs/r/")] == ["runs/r/cells/whole"]
    rec = json.loads(store.get_object(f"runs/r/cells/whole/{COMMIT_NAME}"))
    assert rec["files"][0]["path"] == "w.bin"


def test_plain_objects_go_through_the_store(store: Store):
    """What is not a bundle (a run's frozen study.yaml) is written, read and listed through the store's own methods."""
    store.put_object("runs/r/study.yaml", b"name: s\n")
    assert store.get_object("runs/r/study.yaml") == b"name: s\n"
    with pytest.raises(NotFound):
        store.get_object("runs/r/absent.yaml")
    _write_bundle(store, "runs/r/cells/c", {"w.bin": b"x"})
    assert [o.key for o in store.list_objects("runs/r/study")] == ["runs/r/study.yaml"]
    assert {o.key.rsplit("/", 1)[1] for o in store.list_objects("runs/r/cells/c/")} >= {COMMIT_NAME, "w.bin"}
    path = store.local_path("runs/r/study.yaml")
    assert path is None if store.url.startswith("s3://") else path.read_bytes() == b"name: s\n"


def test_delete_tree_removes_a_folder_of_bundles_commits_first(store: Store):
    """delete_tree deletes every object under the folder, each bundle's commit before its files (a reader never sees a
    commit whose files are gone), and nothing outside it: not a sibling whose name starts the same."""
    for key in ("runs/r/checkpoints/c/checkpoint-1", "runs/r/checkpoints/c/checkpoint-2", "runs/r/checkpoints/cc/checkpoint-1"):
        _write_bundle(store, key, {"w.bin": b"x"})
    store.put_object("runs/r/checkpoints/c/checkpoint-3/_attempts/a/w.bin", b"an upload in progress")
    inside = len(store.list_objects("runs/r/checkpoints/c/"))
    order: list[str] = []
    inner = store.backend

    class Recorder:
        def __getattr__(self, name):
            return getattr(inner, name)

        def delete_prefix(self, prefix):
            order.append(prefix)
            return inner.delete_prefix(prefix)

    assert Store(Recorder(), "test").delete_tree("runs/r/checkpoints/c") == inside
    assert order == [f"runs/r/checkpoints/c/checkpoint-1/{COMMIT_NAME}", f"runs/r/checkpoints/c/checkpoint-2/{COMMIT_NAME}",
                     "runs/r/checkpoints/c/"]  # fmt: skip
    assert store.list_objects("runs/r/checkpoints/c/") == []
    assert [b.key for b in store.bundles("runs/r/")] == ["runs/r/checkpoints/cc/checkpoint-1"]


def test_retry_budget_is_spent_to_the_deadline_then_one_line(monkeypatch):
    """The retries around a call last the whole budget (the last wait is cut to the deadline and one more attempt is
    made there), so "gave up after N s" is true; before, a backoff step that would overshoot ended the retries early
    (a 3 s budget gave up at 2.5 s and the fail-fast test flaked)."""
    from botocore.exceptions import EndpointConnectionError

    from lorascope.store import S3Backend

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    backend = S3Backend("b", "p", retry_seconds=2.5, endpoint="http://127.0.0.1:9")
    calls: list[float] = []

    def down():
        calls.append(time.monotonic())
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

    t0 = time.monotonic()
    with pytest.raises(StoreError, match="gave up after 2.5 s of retries"):
        backend._call("k", down)
    assert 2.5 <= time.monotonic() - t0 < 4
    assert len(calls) == 3 and calls[-1] - t0 >= 2.5  # at 0, 1 and 2.5 s (the 2 s wait cut to 1.5 s)


# ------------------------------------------------------------------------------------------------ environment
def test_every_commit_records_python_and_package_versions_without_a_freeze(store: Store):
    b = _write_bundle(store, "runs/r/cells/env", {"w.bin": b"x"})
    record = json.loads(store.get_object(f"runs/r/cells/env/{COMMIT_NAME}"))
    env = record["environment"]
    assert env == b.commit["environment"]
    assert env["python"] == platform.python_version() and env["pip_freeze"] is None
    for name in ("lorascope", "numpy", "torch", "transformers", "peft", "datasets"):  # all in the test venv
        assert env["packages"][name] == metadata.version(name), name
    assert "vllm" not in env["packages"]  # not installed in the main venv: left out, not "not installed"
    assert set(b.files) == {"w.bin"}  # no freeze, no extra file


def test_the_images_pip_freeze_travels_with_every_bundle_and_is_verified(tmp_path: Path, store_url: str):
    freeze = tmp_path / "pip-freeze.txt"
    freeze.write_text("lorascope @ file:///src\nnumpy==2.3.5\ntorch==2.13.0\n")
    store = Store.open(store_url, code_version="test", pip_freeze=freeze)
    # a bundle that already holds a file of that name (a downloaded folder re-added) commits this process's copy
    b = _write_bundle(store, "runs/r/cells/frozen", {"w.bin": b"y", PIP_FREEZE_FILE: b"stale freeze of another image"})
    rec = b.commit["environment"]["pip_freeze"]
    assert rec == {"file": PIP_FREEZE_FILE, "sha256": hashlib.sha256(freeze.read_bytes()).hexdigest(),
                   "source": str(freeze)}  # fmt: skip
    assert set(b.files) == {"w.bin", PIP_FREEZE_FILE}
    assert b.read_bytes(PIP_FREEZE_FILE) == freeze.read_bytes()  # read verifies the sha256 in the file list
    report = pull(store, "runs/r", tmp_path / "pulled")
    assert report.ok and (tmp_path / "pulled" / b.key / ATTEMPTS_DIR / b.attempt / PIP_FREEZE_FILE).read_bytes() == (
        freeze.read_bytes())  # fmt: skip


def test_pip_freeze_path_from_the_environment(tmp_path: Path, monkeypatch):
    freeze = tmp_path / "f.txt"
    freeze.write_text("x==1\n")
    assert environment.pip_freeze_path({"LORASCOPE_PIP_FREEZE": str(freeze)}) == freeze
    with pytest.raises(ConfigError, match=r"LORASCOPE_PIP_FREEZE='/nope/f.txt': no such file"):
        environment.pip_freeze_path({"LORASCOPE_PIP_FREEZE": "/nope/f.txt"})
    monkeypatch.setattr(environment, "PIP_FREEZE_PATH", tmp_path / "absent.txt")
    assert environment.pip_freeze_path({}) is None  # outside an image: no freeze, the versions still recorded
    monkeypatch.setattr(environment, "PIP_FREEZE_PATH", freeze)
    assert environment.pip_freeze_path({}) == freeze  # inside an image: the file the Dockerfile wrote
