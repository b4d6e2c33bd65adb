"""Training drills: a corrupt latest checkpoint, kill -9 of `lorascope run --jobs 2`, a full disk under the
checkpoint write (the work dir) and under the checkpoint upload (the store)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorascope.log import Logger
from lorascope.phases import PhaseContext
from lorascope.runner import default_run_id, freeze_study
from lorascope.store import Store
from lorascope.study import load_study
from tests.fixtures.cli import REPO, assert_one_line, cli_env
from tests.fixtures.runs import stage_run
from tests.fixtures.studies import write_study

SMOKE = REPO / "jobs" / "smoke.yaml"


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    """Before: the restore raised IntegrityError on every retry; the intact older checkpoint was never tried."""
    from lorascope.phases import train

    study = load_study(SMOKE)
    store = Store.open(str(tmp_path / "store"), code_version="test")
    run_id = default_run_id(study)
    freeze_study(store, run_id, study)
    ctx = PhaseContext(study, store, run_id, tmp_path / "work", {}, Logger(run=run_id))
    for step in (10, 20):
        with ctx.writer("checkpoints", "mrpc-full-s42", f"checkpoint-{step}", phase="train") as w:
            w.add_json("trainer_state.json", {"global_step": step, "best_global_step": 10})
            w.add_bytes("model.safetensors", bytes([step]) * 1000)
    latest = store.bundle(ctx.key("checkpoints", "mrpc-full-s42", "checkpoint-20"))
    (Path(store.local_path(latest.object_key("model.safetensors")))).write_bytes(b"\0" * 1000)  # damaged

    out = tmp_path / "out"
    resume = train.checkpoint_store(ctx, "mrpc-full-s42").restore(out)
    assert resume == out / "checkpoint-10"
    assert (resume / "model.safetensors").read_bytes() == bytes([10]) * 1000
    assert json.loads((resume / "trainer_state.json").read_text())["global_step"] == 10
    assert not (out / "checkpoint-20").exists()


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            # a `--jobs N` worker: a spawned interpreter (multiprocessing.spawn), not its resource tracker
            if int(fields[1]) == pid and b"spawn_main" in cmd and b"resource_tracker" not in cmd:
                out.append(int(p.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_run_jobs_2_leaves_no_children_training(tmp_path):
    """Before: the two `lorascope train --index i` children trained on and committed their cells. Now the run's two
    worker processes (each runs indexes one after another) stop with it."""
    study = write_study(tmp_path, seeds=[42])  # 2 cells: mrpc-full-s42, mrpc-lora-s42
    store, work = tmp_path / "store", tmp_path / "work"
    parent = subprocess.Popen([sys.executable, "-m", "lorascope.cli", "run", "--study", str(study), "--store", str(store),
                               "--work-dir", str(work), "--phases", "stage,train", "--jobs", "2"],
                              env=cli_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    kids: list[int] = []
    try:
        deadline = time.time() + 120
        while len(kids) < 2:
            assert parent.poll() is None and time.time() < deadline, "the run ended before both children started"
            kids = _children(parent.pid)
            time.sleep(0.1)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 15
        while any(_alive(k) for k in kids) and time.time() < deadline:
            time.sleep(0.2)
        assert not [k for k in kids if _alive(k)], "children outlived their parent"
        run_id = default_run_id(load_study(study))
        assert not Store.open(str(store), code_version="t").bundles(f"runs/{run_id}/cells/")
    finally:
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)


def _tiny_run(tmp_path: Path):
    study = write_study(tmp_path / "study", hpo={"enabled": False})
    return stage_run(study, str(tmp_path / "store"), tmp_path / "stage-work")


def test_full_work_dir_during_a_checkpoint_write_is_one_line(tmp_path, small_disk):
    """Before: 60 lines of traceback from torch/safetensors, naming neither the folder nor the cause."""
    run = _tiny_run(tmp_path)
    disk = small_disk("600k")
    proc = subprocess.run([sys.executable, "-m", "lorascope.cli", "train", "--store", run.store_url, "--run-id",
                           run.run_id, "--index", "0", "--work-dir", str(disk)], env=cli_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    line = assert_one_line(proc, 1, "no space left on device", str(disk))
    assert "checkpoint" in line
    assert not run.store.committed(run.key("cells", "mrpc-full-s42"))


def test_full_store_during_a_checkpoint_upload_is_one_line(tmp_path, small_disk):
    """The store's disk fills while a checkpoint uploads: one line naming the store and the key."""
    run = _tiny_run(tmp_path)
    used = sum(p.stat().st_size for p in Path(run.store_url).rglob("*") if p.is_file())
    disk = small_disk(f"{(used + 900_000) // 1024}k")
    shutil.copytree(run.store_url, disk, dirs_exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "lorascope.cli", "train", "--store", str(disk), "--run-id",
                           run.run_id, "--index", "0", "--work-dir", str(tmp_path / "work")], env=cli_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert_one_line(
        proc, 1, f"store file://{disk}", "/checkpoints/mrpc-full-s42/checkpoint-", "No space left on device"
    )
    assert not Store.open(str(disk), code_version="t").committed(run.key("cells", "mrpc-full-s42"))


def test_run_jobs_2_commits_what_jobs_1_commits_from_two_worker_processes(tmp_path):
    """`lorascope run --jobs 2`: the indexes run in two worker processes, each importing once and running index after
    index (a process per index spent 6-8 s importing for a 2-3 s cell); the committed cells are byte for byte those of
    `--jobs 1` (each index is the same phase command, in another process)."""
    study = write_study(tmp_path, seeds=[42])  # 2 cells (full, lora): one per worker
    runs = {}
    for jobs in (1, 2):
        store, work = tmp_path / f"store-{jobs}", tmp_path / f"work-{jobs}"
        r = subprocess.run([sys.executable, "-m", "lorascope.cli", "run", "--study", str(study), "--store", str(store),
                            "--work-dir", str(work), "--phases", "stage,train", "--jobs", str(jobs)],
                           env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        runs[jobs] = (Store.open(str(store), code_version="t"), r.stderr)
    run_id = default_run_id(load_study(study))
    cells = [c.name for c in load_study(study).cells()]
    assert len(cells) == 2
    for cell in cells:
        one, two = (runs[j][0].bundle(f"runs/{run_id}/cells/{cell}") for j in (1, 2))
        assert one is not None and two is not None, cell
        for name in ("adapter/adapter_model.safetensors", "predictions.jsonl") if "lora" in cell else ("predictions.jsonl",):
            assert one.read_bytes(name) == two.read_bytes(name), (cell, name)
    log = runs[2][1]  # every train index started once, in the workers
    starts = [line for line in log.splitlines() if "phase=train" in line and line.endswith("msg=start")]
    assert len(starts) == 2, log[-3000:]
    assert "jobs=2" in log
