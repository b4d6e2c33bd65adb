"""SIGTERM (eviction, spot preemption, drain) during training: the process writes and syncs a last checkpoint of the
step it is in, exits 143 within its budget, and the rerun resumes there and commits exactly the cell an uninterrupted
run commits (lorascope.termination, training/sigterm.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from lorascope.termination import EXIT_TERMINATED, Terminated, Termination, installed
from tests.fixtures.runs import stage_run
from tests.fixtures.studies import write_study

# the resume study of test_train.py: 320 MRPC examples, 40 steps an epoch, a checkpoint every 8 steps, 2 epochs (80)
SIGTERM_STUDY = {
    "tasks": [{"name": "mrpc", "max_length": 64, "train_samples": 320}],
    "training": {"evals_per_epoch": 5, "early_stopping_patience": 20},
}
CELL, INDEX = "mrpc-lora-s42", 2
BUDGET = 20


def _checkpoint_steps(run) -> list[int]:
    """The steps of the cell's committed checkpoint bundles (`checkpoints/<cell>/checkpoint-<step>`), read through the
    store alone."""
    return sorted(int(b.key.rsplit("-", 1)[1]) for b in run.store.bundles(run.key("checkpoints", CELL) + "/"))


def _cell_bytes(run) -> dict[str, bytes]:
    bundle = run.store.bundle(run.key("cells", CELL))
    return {name: bundle.read_bytes(name) for name in ("adapter/adapter_model.safetensors", "predictions.jsonl")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The cell trained in one go, by the same command a pod runs (a separate process, same threads)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    run = stage_run(write_study(folder, **SIGTERM_STUDY), str(folder / "store"), folder / "work")
    done = run.run_cli("train", INDEX)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_sigterm_mid_epoch_syncs_a_checkpoint_exits_143_and_the_rerun_equals_an_uninterrupted_run(
    tmp_path, uninterrupted
):
    folder = tmp_path / "interrupted"
    run = stage_run(write_study(folder, **SIGTERM_STUDY), str(folder / "store"), folder / "work")
    log = tmp_path / "sigterm.log"
    proc = run.spawn("train", INDEX, log=log, LORASCOPE_STOP_SECONDS=str(BUDGET), LORASCOPE_LOG_LEVEL="debug")
    deadline = time.time() + 240
    while not _checkpoint_steps(run):  # the first periodic checkpoint: step 8 of 40, epoch 1
        assert proc.poll() is None, f"train exited before its first checkpoint:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "no checkpoint reached the store"
        time.sleep(0.05)
    first = max(_checkpoint_steps(run))  # SIGTERM now: the loop is in the steps after it
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)  # what tini forwards in a pod
    code = proc.wait(timeout=BUDGET + 30)
    took = time.monotonic() - t0
    text = log.read_text()
    assert code == EXIT_TERMINATED, text[-3000:]
    assert took < BUDGET, f"{took:.1f} s: past the stop budget"  # the watchdog was not needed either
    m = re.search(r"stopped: SIGTERM: checkpoint of step (\d+) written and synced", text)
    assert m, text[-3000:]
    stopped_at = int(m.group(1))
    print(f"SIGTERM after checkpoint {first}: stopped at step {stopped_at} in {took:.2f} s")
    assert "SIGTERM: writing a last checkpoint, then stopping" in text or "is being written, then stopping" in text
    steps = _checkpoint_steps(run)
    assert steps[-1] == stopped_at > first and stopped_at < 80, steps  # a checkpoint of the step SIGTERM came in
    assert not run.store.committed(run.key("cells", CELL))  # nothing half-done: the cell is not committed

    done = run.run_cli("train", INDEX)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resume from step={stopped_at}" in done.stderr
    metrics = run.store.bundle(run.key("cells", CELL)).read_json("metrics.json")
    assert metrics["resumed_from_step"] == stopped_at
    # the committed adapter and predictions are byte for byte those of the uninterrupted run
    assert _cell_bytes(run) == _cell_bytes(uninterrupted)


# ---------------------------------------------------------------------------------------------- the handler itself
def test_outside_a_training_loop_sigterm_unwinds_at_once_and_the_watchdog_bounds_the_rest():
    exits: list[int] = []
    stop = Termination(budget_seconds=0.2, exit=exits.append)
    with installed(stop):
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, in the main thread
        assert stop.requested and stop.remaining() <= 0.2
        time.sleep(0.5)
    assert exits == [EXIT_TERMINATED]  # the watchdog fired after the budget (it would os._exit in a process)


def test_inside_a_deferred_loop_sigterm_only_marks_the_request_and_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    exits: list[int] = []
    stop = Termination(budget_seconds=2, exit=exits.append)
    with installed(stop):
        assert signal.getsignal(signal.SIGTERM) != before
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stop.requested and 1.5 < stop.remaining() <= 2  # no exception: the loop decides at a step end
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing: the first one's deadline holds
    assert signal.getsignal(signal.SIGTERM) == before
    # the watchdog still bounds a deferred stop; it ends inside this test (with a 60 s budget it printed its "exiting
    # now" line into whatever test of this worker ran a minute later, and failed one that reads stderr)
    deadline = time.monotonic() + 30
    while not exits and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exits == [EXIT_TERMINATED]


def test_a_checkpoint_that_cannot_make_the_deadline_is_not_started():
    """Full fine-tuning of a 1.1B model writes ~13 GB: with 12 s left the callback stops without a checkpoint."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from lorascope.training.sigterm import SigtermCheckpoint

    stop = Termination(budget_seconds=12, exit=lambda code: None)
    said = []
    cb = SigtermCheckpoint(stop, lambda msg, **kw: said.append(msg))
    args = SimpleNamespace(save_strategy="steps", save_only_model=False)
    state = SimpleNamespace(global_step=17)
    big = SimpleNamespace(parameters=lambda: [SimpleNamespace(numel=lambda: 1_100_000_000, requires_grad=True)])
    cb.on_train_begin(args, state, TrainerControl(), model=big)
    assert cb.active and stop.deferring == 1 and cb.expected_save_seconds() > 200
    stop.requested_at = stop.clock()
    with pytest.raises(Terminated, match="stopping without one"):
        cb.on_step_end(args, state, TrainerControl())
    assert stop.deferring == 0
    # a LoRA-sized state fits: the step asks the Trainer for a checkpoint instead
    cb = SigtermCheckpoint(stop, lambda msg, **kw: said.append(msg))
    small = SimpleNamespace(parameters=lambda: [SimpleNamespace(numel=lambda: 600_000, requires_grad=True)])
    stop.requested_at = None
    cb.on_train_begin(args, state, TrainerControl(), model=small)
    stop.requested_at = stop.clock()
    control = TrainerControl()
    cb.on_step_end(args, state, control)
    assert control.should_save and said[-1] == "SIGTERM: writing a last checkpoint, then stopping"
    with pytest.raises(Terminated, match="checkpoint of step 17 written and synced"):
        cb.on_save(args, state, control)
    assert stop.deferring == 0


def test_the_phase_command_exits_143_on_sigterm_outside_training(tmp_path):
    """A command that is not training (here: one that sleeps, standing in for a download) exits 143 at once."""
    study = write_study(tmp_path / "idle", **SIGTERM_STUDY)
    code = (
        "import sys, time, lorascope.cli as c\n"
        "c.cmd_grid = lambda args, env: time.sleep(60) or 0\n"  # the parser binds the module's cmd_grid
        "sys.exit(c.main(['grid', sys.argv[1]]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(study)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LORASCOPE_STOP_SECONDS": "5"})  # fmt: skip
    time.sleep(3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=20)
    assert rc == EXIT_TERMINATED and time.monotonic() - t0 < 5, proc.stderr.read()
    assert "stopped: SIGTERM" in proc.stderr.read()
