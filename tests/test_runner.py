"""The local runner, run freezing and the status table, on fake phases (the real ones have their own tests)."""

from __future__ import annotations

import time

import pytest

from lorascope import cli
from lorascope.errors import ConfigError
from lorascope.runner import default_run_id, freeze_study, load_frozen_study, resolve_phases, status_rows
from lorascope.store import Store
from lorascope.study import load_study


def test_run_executes_phases_in_order_and_skips_committed_cells(fake_phases, tmp_path, smoke_study_path, capsys):
    store = str(tmp_path / "store")
    args = ["run", "--study", str(smoke_study_path), "--store", store, "--phases", "drift,train", "--work-dir", str(tmp_path / "w")]
    assert cli.main(args) == 0
    assert [c[0] for c in fake_phases] == ["train"] * 18 + ["drift"]  # pipeline order, not the order asked
    study = load_study(smoke_study_path)
    s = Store.open(store)
    assert s.bundle(f"runs/{default_run_id(study)}/drift").read_json("n.json") == {"cells": 18}

    fake_phases.clear()
    t0 = time.perf_counter()
    assert cli.main(args) == 0
    assert [c[0] for c in fake_phases] == ["drift"]  # committed cells skipped
    assert time.perf_counter() - t0 < 5
    assert "already committed, skipping" in capsys.readouterr().err


def test_unknown_or_unimplemented_phase_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="unknown phase 'bogus'"):
        resolve_phases("stage,bogus")
    import lorascope.phases as phases

    monkeypatch.setattr(phases, "PHASE_ORDER", [*phases.PHASE_ORDER, "future"])
    with pytest.raises(ConfigError, match="phase 'future' is not implemented"):
        phases.get_phase("future")


def test_a_changed_study_cannot_reuse_a_run(tmp_path, smoke_study_path):
    store = Store.open(str(tmp_path / "s"))
    study = load_study(smoke_study_path)
    freeze_study(store, "r1", study)
    freeze_study(store, "r1", study)  # same study: fine
    assert load_frozen_study(store, "r1").hash == study.hash
    changed = study.model_copy(update={"seeds": [1, 2]})
    with pytest.raises(ConfigError, match="was created from study 'smoke' with hash"):
        freeze_study(store, "r1", changed)


def test_phase_index_comes_from_job_completion_index(fake_phases, tmp_path, smoke_study_path, monkeypatch):
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "7")
    store = str(tmp_path / "s")
    rc = cli.main(["train", "--study", str(smoke_study_path), "--store", store, "--run-id", "r", "--work-dir", str(tmp_path)])
    assert rc == 0 and fake_phases == [("train", 7)]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "99")
    assert cli.main(["train", "--study", str(smoke_study_path), "--store", store, "--run-id", "r"]) == 2


def test_status_distinguishes_committed_in_progress_missing(fake_phases, tmp_path, smoke_study_path):
    store = Store.open(str(tmp_path / "s"))
    study = load_study(smoke_study_path)
    freeze_study(store, "r", study)
    with store.writer("runs/r/cells/mrpc-full-s42", phase="train", study_hash=study.hash) as w:
        w.add_bytes("m.json", b"{}")
    store.backend.put_bytes("runs/r/cells/mrpc-full-s1337/_attempts/x/m.json", b"{}")  # a writer died mid-way
    with store.writer("runs/r/checkpoints/sst2-lora-s42/checkpoint-4", phase="train", study_hash=study.hash) as w:
        w.add_bytes("trainer_state.json", b"{}")
    rows = {bundle: state for _, bundle, state in status_rows(store, "r", study)}
    assert rows["cells/mrpc-full-s42"] == "committed"
    assert rows["cells/mrpc-full-s1337"] == "in progress"
    assert rows["cells/sst2-lora-s42"] == "in progress"  # a checkpoint is in the store
    assert rows["cells/rte-lora-s2024"] == "missing"
    assert rows["drift"] == "missing"


def test_parallel_jobs_run_each_index_in_its_own_process(tmp_path, smoke_study_path):
    """--jobs N spawns `python -m lorascope.cli <phase> --index i`: a usage error in every child is exit 2."""
    rc = cli.main(["run", "--study", str(smoke_study_path), "--store", str(tmp_path / "s"), "--jobs", "0"])
    assert rc == 2


def test_an_unwritable_work_dir_is_a_config_error_naming_it(fake_phases, tmp_path, smoke_study_path, capsys):
    """A pod whose work volume is not writable exits 2 (the Job fails the index) with the path, not a raw
    PermissionError and exit 1 (which the Job retries)."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    work = blocker / "work"  # mkdir fails even for root
    rc = cli.main(["train", "--study", str(smoke_study_path), "--store", str(tmp_path / "s"), "--run-id", "r",
                   "--work-dir", str(work), "--index", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and f"work dir {work}" in err and "not writable" in err
    assert fake_phases == []
