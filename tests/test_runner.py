"""The local runner, run freezing and the status table, on fake phases (the real ones have their own tests)."""

from __future__ import annotations

import dataclasses
import gc
import sys
import time
import weakref

import pytest

from lorascope import cli
from lorascope.errors import ConfigError
from lorascope.heap import settle_heap
from lorascope.phases import PHASE_ORDER, get_phase, select_phases
from lorascope.runner import (
    default_run_id,
    freeze_study,
    load_frozen_study,
    run_phase_index,
    status_rows,
)
from lorascope.store import Store
from lorascope.study import load_study
from tests.fixtures.studies import REPO


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
    assert fake_phases == []  # every index committed: the runner skips it, the phase body is never called
    assert time.perf_counter() - t0 < 5
    assert "already committed, skipping" in capsys.readouterr().err


def test_unknown_or_unimplemented_phase_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="unknown phase 'bogus'"):
        select_phases("stage,bogus")
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


def test_an_index_starts_on_a_collected_and_frozen_heap(fake_phases, tmp_path, smoke_study_path, monkeypatch):
    """runner.settle_heap: the garbage left before an index (a reference cycle here, as a finished training leaves)
    is collected first, then the rest is frozen, so the collections inside the index no longer walk the imports."""
    import lorascope.runner as runner

    class Node:
        pass

    cycle = Node()
    cycle.me = cycle
    gone = weakref.ref(cycle)
    del cycle
    seen = []
    fake = runner.get_phase  # fake_phases' registry
    probe = lambda ctx, i: seen.append((gone() is None, gc.get_freeze_count()))  # noqa: E731
    monkeypatch.setattr(runner, "get_phase", lambda name: dataclasses.replace(fake(name), run_fn=probe))
    gc.unfreeze()  # this session froze its imports after collection: start from an unfrozen heap
    try:
        rc = cli.main(["train", "--study", str(smoke_study_path), "--store", str(tmp_path / "s"), "--run-id", "r",
                       "--index", "0", "--work-dir", str(tmp_path)])  # fmt: skip
        assert rc == 0 and len(seen) == 1
        collected, frozen = seen[0]
        assert collected and frozen > 10_000  # the cycle was collected before the phase ran; torch & co are frozen
    finally:
        settle_heap()  # frozen again, as the session left it, without freezing this test's garbage


def test_status_distinguishes_committed_in_progress_missing(fake_phases, tmp_path, smoke_study_path):
    store = Store.open(str(tmp_path / "s"))
    study = load_study(smoke_study_path)
    freeze_study(store, "r", study)
    with store.writer("runs/r/cells/mrpc-full-s42", phase="train", study_hash=study.hash) as w:
        w.add_bytes("m.json", b"{}")
    store.put_object("runs/r/cells/mrpc-full-s1337/_attempts/x/m.json", b"{}")  # a writer died mid-way
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


# ------------------------------------------------------------------------------------------------ the committed skip
STUDY = REPO / "jobs" / "study.yaml"  # 3 HPO workers per task x method, 2 bench backends: indexes sharing a bundle


def _ctx(tmp_path, study, **env):
    from lorascope.log import Logger
    from lorascope.phases import PhaseContext

    store = Store.open(str(tmp_path / "store"), code_version="test")
    return PhaseContext(study, store, "r", tmp_path / "work", env, Logger(run="r"))


def _commit(ctx, rel, files=None):
    with ctx.writer(rel, phase=rel.split("/")[0]) as w:
        for name, text in (files or {"x.json": "{}"}).items():
            w.add_bytes(name, text.encode())


def _record_runs(monkeypatch, name):
    """Replace the phase module's body with a recorder: what the runner calls, and nothing else."""
    import importlib

    calls = []
    monkeypatch.setattr(importlib.import_module(f"lorascope.phases.{name}"), "run", lambda ctx, i: calls.append(i))
    return calls


@pytest.mark.parametrize("name", PHASE_ORDER)
def test_a_committed_index_is_skipped_by_the_runner_and_an_uncommitted_one_runs(name, tmp_path, monkeypatch, capsys):
    """For every phase: index i whose bundle (Phase.bundle) is committed is skipped without the phase body; the
    indexes whose bundle is not committed run it. Several indexes that share a bundle (HPO workers) skip together."""
    study = load_study(STUDY)
    phase = get_phase(name)
    ctx = _ctx(tmp_path, study)
    calls = _record_runs(monkeypatch, name)
    first = phase.bundle(study, 0)
    same = [i for i in range(phase.size(study)) if phase.bundle(study, i) == first]
    rest = [i for i in range(phase.size(study)) if i not in same][:2]
    for i in same + rest:
        run_phase_index(ctx, name, i)
    assert calls == same + rest  # nothing committed yet: every index runs the body
    calls.clear()
    _commit(ctx, first)
    module = f"lorascope.phases.{name}"
    saved = sys.modules.pop(module)
    try:
        for i in same:
            run_phase_index(ctx, name, i)
        # a skip loads no phase code (report: its delivery hook, which needs its module)
        assert (module in sys.modules) == (name == "report")
    finally:
        sys.modules[module] = saved
    for i in rest:
        run_phase_index(ctx, name, i)
    assert calls == rest  # the committed bundle's indexes skipped, the others ran
    err = capsys.readouterr().err
    assert err.count("already committed, skipping") == len(same) and f"bundle={first}" in err
    if name == "hpo":
        assert same == [0, 1, 2] and rest == [3, 4]  # 3 workers share hpo/mrpc-full
    if name == "bench":
        assert same == [0] and rest == [1]  # bench/hf committed, bench/vllm still runs


def test_a_committed_report_is_still_delivered(tmp_path, monkeypatch, capsys):
    """report's skip is not silent: the committed ANALYSIS_REPORT.md is copied to LORASCOPE_REPORT_DIR."""
    study = load_study(STUDY)
    dest = tmp_path / "delivered"
    ctx = _ctx(tmp_path, study, LORASCOPE_REPORT_DIR=str(dest))
    calls = _record_runs(monkeypatch, "report")
    _commit(ctx, "report", {"ANALYSIS_REPORT.md": "# the committed report\n"})
    run_phase_index(ctx, "report", 0)
    assert calls == [] and (dest / "ANALYSIS_REPORT.md").read_text() == "# the committed report\n"
    assert "already committed, skipping" in capsys.readouterr().err


def test_a_committed_index_for_another_interpreter_is_not_spawned(tmp_path, monkeypatch):
    """`lorascope run`: bench's vllm index runs in the vLLM interpreter unless its bundle is committed; then no
    process is started at all."""
    import lorascope.phases.bench as bench
    from lorascope.runner import LocalRun

    study = load_study(STUDY)
    ctx = _ctx(tmp_path, study)
    calls = _record_runs(monkeypatch, "bench")
    monkeypatch.setattr(bench, "interpreter", lambda s, i, env: "/nonexistent/python" if i == 1 else None)
    monkeypatch.setattr(LocalRun, "_subprocess", lambda *a, **k: pytest.fail("spawned an index that is committed"))
    _commit(ctx, "bench/vllm")
    LocalRun(ctx, STUDY, ctx.store.url).run(["bench"])
    assert calls == [0]


def test_a_read_only_store_refuses_only_an_index_that_must_write(tmp_path, monkeypatch):
    from lorascope.errors import StoreError

    study = load_study(STUDY)
    ctx = _ctx(tmp_path, study)
    calls = _record_runs(monkeypatch, "bench")
    _commit(ctx, "bench/hf")
    ctx_ro = _ctx(tmp_path, study)
    ctx_ro.store = Store.open(str(tmp_path / "store"), code_version="test", write=False)
    ctx_ro.store.backend.writable = False  # as a folder this user may not write (root may write anywhere)
    run_phase_index(ctx_ro, "bench", 0)  # committed: skipped, fine on a read-only store
    with pytest.raises(StoreError, match="read-only, and phase bench index 1 still has to commit bench/vllm"):
        run_phase_index(ctx_ro, "bench", 1)
    assert calls == []


def test_parallel_run_starts_no_process_for_committed_indexes(fake_phases, tmp_path, smoke_study_path, monkeypatch):
    """`lorascope run --jobs N` again: every index is committed, each is skipped in the parent, none is spawned."""
    from lorascope.runner import LocalRun

    args = ["run", "--study", str(smoke_study_path), "--store", str(tmp_path / "s"), "--phases", "train",
            "--work-dir", str(tmp_path / "w")]  # fmt: skip
    assert cli.main(args) == 0 and len(fake_phases) == 18
    fake_phases.clear()
    monkeypatch.setattr(LocalRun, "_subprocess", lambda *a, **k: pytest.fail("spawned a committed index"))
    monkeypatch.setattr(LocalRun, "_workers", lambda *a, **k: pytest.fail("started workers for committed indexes"))
    assert cli.main([*args, "--jobs", "2"]) == 0
    assert fake_phases == []


def test_a_timed_phase_runs_its_indexes_one_at_a_time_whatever_jobs(fake_phases, tmp_path, smoke_study_path, monkeypatch):
    """The bench phase times serving: `lorascope run --jobs 2` must not run its indexes beside each other (or beside
    anything), so a `timed` phase's indexes run in this process, one after another."""
    import dataclasses

    import lorascope.runner as runner
    from lorascope.phases import PHASE_ORDER
    from lorascope.phases import get_phase as real_get_phase
    from lorascope.runner import LocalRun

    assert [p for p in PHASE_ORDER if real_get_phase(p).timed] == ["bench"]
    timed = dataclasses.replace(runner.get_phase("train"), timed=True)
    monkeypatch.setattr(runner, "get_phase", lambda name: timed)
    monkeypatch.setattr(LocalRun, "_workers", lambda *a, **k: pytest.fail("a timed phase's indexes went to workers"))
    args = ["run", "--study", str(smoke_study_path), "--store", str(tmp_path / "s"), "--phases", "train",
            "--work-dir", str(tmp_path / "w"), "--jobs", "2"]  # fmt: skip
    assert cli.main(args) == 0 and len(fake_phases) == 18
