"""train: cell bundles, determinism, skipping committed cells, resuming from store checkpoints (SIGKILL on S3 and a
crash in a later epoch), checkpoint pruning, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from importlib import metadata

import pytest
import torch
from safetensors import safe_open

from lorascope import training
from lorascope.history import check_history
from lorascope.models import artifacts
from lorascope.phases import get_phase, train
from tests.fixtures.runs import stage_run
from tests.fixtures.studies import write_study

PHASE = get_phase("train")

REQUIRED_METRICS = {"validation", "dev", "train_seconds", "tokens_per_second", "peak_memory_bytes", "trainable_params",
                    "total_params", "params", "best_step", "cell", "task", "method", "seed"}  # fmt: skip
# more examples and evaluations than TINY, so a checkpoint lands in the store long before the cell commits
# (patience 20: no early stop, so the second epoch is reached)
RESUME_STUDY = {
    "tasks": [{"name": "mrpc", "max_length": 64, "train_samples": 320}],
    "training": {"evals_per_epoch": 5, "early_stopping_patience": 20},
}


def _metrics(run, cell: str) -> dict:
    return run.store.bundle(run.key("cells", cell)).read_json("metrics.json")


def _predictions(run, cell: str) -> list[dict]:
    raw = run.store.bundle(run.key("cells", cell)).read_bytes("predictions.jsonl").decode()
    return [json.loads(x) for x in raw.splitlines()]


def _history(run, cell: str) -> dict:
    return run.store.bundle(run.key("cells", cell)).read_json("history.json")


def _same_history(a: dict, b: dict, atol: float = 0.0) -> None:
    """Every logged step and evaluation of `b` is in `a` with the same numbers (a resumed run's history is complete)."""
    for part in ("train", "eval"):
        assert [r["step"] for r in a[part]] == [r["step"] for r in b[part]], part
        for got, want in zip(a[part], b[part], strict=True):
            assert set(got) == set(want)
            for k, v in want.items():
                assert got[k] == pytest.approx(v, abs=atol, rel=1e-6), (part, got["step"], k)
    assert (a["global_step"], a["best_step"]) == (b["global_step"], b["best_step"])


def _same_results(a: dict, b: dict, atol: float = 0.0) -> None:
    for split in ("validation", "dev"):
        assert a[split]["n"] == b[split]["n"]
        for k in ("accuracy", "f1", "loss"):
            assert a[split][k] == pytest.approx(b[split][k], abs=atol), (split, k)
    assert a["best_step"] == b["best_step"] and a["params"] == b["params"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A TINY run (HPO off) with mrpc-full-s42 (index 0) and mrpc-lora-s42 (index 2) trained in this process."""
    folder = tmp_path_factory.mktemp("trained")
    run = stage_run(write_study(folder), str(folder / "store"), folder / "work")
    assert [c.name for c in run.study.cells()] == ["mrpc-full-s42", "mrpc-full-s7", "mrpc-lora-s42", "mrpc-lora-s7"]
    run.phase("train", 0)
    run.phase("train", 2)
    return run


def test_cell_bundles_hold_model_metrics_and_predictions(trained):
    run = trained
    ctx = run.ctx()
    full = ctx.bundle("cells", "mrpc-full-s42")
    lora = ctx.bundle("cells", "mrpc-lora-s42")
    assert {"model/config.json", "model/model.safetensors", "metrics.json", "predictions.jsonl"} <= set(full.files)
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(lora.files)
    assert not any(f.startswith("model/") for f in lora.files)
    for bundle in (full, lora):  # the environment that trained the cell
        packages = bundle.commit["environment"]["packages"]
        assert packages["torch"] == metadata.version("torch") and packages["peft"] == metadata.version("peft")
    with safe_open(str(ctx.local(lora) / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("score" in k for k in keys) and any("lora_A" in k for k in keys)  # the head travels with the adapter
    adapter_config = json.loads(lora.read_bytes("adapter/adapter_config.json"))
    assert adapter_config["base_model_name_or_path"] == "builtin:tiny-llama"  # the study's model, not a local path
    # committed cells leave no local scratch behind (checkpoints, the saved copy): only the verified store copy counts
    train_scratch = run.work_dir / run.run_id / "train"
    assert not [p.name for p in train_scratch.glob("mrpc-*")] if train_scratch.exists() else True

    for cell, kind in (("mrpc-full-s42", "full"), ("mrpc-lora-s42", "lora")):
        m = _metrics(run, cell)
        assert REQUIRED_METRICS <= set(m)
        assert (m["cell"], m["task"], m["method"], m["seed"]) == (cell, "mrpc", kind, 42)
        assert m["params_source"] == "training.defaults"  # hpo.enabled is false in this study
        assert {
            k: v for k, v in m["params"].items() if k not in ("micro_batch", "grad_accum")
        } == training.resolve_params(run.study, kind)
        assert m["validation"]["n"] == 200 and m["dev"]["n"] == 60
        assert m["tokens_per_second"] > 0 and m["train_tokens"] > 0 and m["peak_memory_bytes"] > 0
        assert m["peak_memory_kind"] == "process_peak_rss"
        assert 1 <= m["best_step"] <= m["global_step"]
        if kind == "lora":
            assert m["trainable_params"] < m["total_params"] / 10
        else:
            assert m["trainable_params"] == m["total_params"]
        h = _history(run, cell)
        check_history(h)
        assert (h["cell"], h["method"], h["seed"], h["selection_metric"]) == (cell, kind, 42, "f1")
        assert (h["global_step"], h["best_step"], h["max_steps"]) == (m["global_step"], m["best_step"], m["max_steps"])
        every = h["logging_steps"]
        assert every == h["eval_steps"] >= 1
        # one train row per logging step up to the last step, one eval row per evaluation (and the final step)
        assert [r["step"] for r in h["train"]][: m["global_step"] // every] == [
            every * (i + 1) for i in range(m["global_step"] // every)
        ]
        assert {r["step"] for r in h["eval"]} <= {r["step"] for r in h["train"]} | {m["global_step"]}
        assert h["eval"][-1]["step"] == m["global_step"] and len(h["eval"]) >= 2
        for r in h["train"]:
            assert r["loss"] > 0 and r["grad_norm"] > 0 and r["learning_rate"] >= 0 and 0 < r["epoch"] <= 2
        for r in h["eval"]:
            assert r["n"] == 60 and isinstance(r["n"], int) and 0 <= r["accuracy"] <= 1 and 0 <= r["f1"] <= 1 and r["loss"] > 0
        # the best step is the evaluation with the lowest dev loss (early stopping and the best model select on it)
        assert min(h["eval"], key=lambda r: (r["loss"], r["step"]))["step"] == m["best_step"]
        best = next(r for r in h["eval"] if r["step"] == m["best_step"])
        assert best["loss"] == pytest.approx(m["dev"]["loss"], abs=1e-5)  # the committed model is the best one
        preds = _predictions(run, cell)
        assert len(preds) == 200 and set(preds[0]) == {"idx", "label", "pred", "logits"}
        # the saved model, loaded the way later phases load it, reproduces the reported numbers
        model, tok = artifacts.load_cell_model(ctx.cell_dir(cell), ctx.stage_dir() / "model", 2, torch.device("cpu"), torch.float32)
        rows = [
            json.loads(x)
            for x in (ctx.local(ctx.bundle("stage")) / "data" / "mrpc" / "validation.jsonl").read_text().splitlines()
        ]
        again = training.evaluate(model, tok, rows, run.study.task("mrpc"), 32)
        assert again.accuracy == m["validation"]["accuracy"] and again.f1 == m["validation"]["f1"]
        assert again.loss == pytest.approx(m["validation"]["loss"], abs=1e-5)
    assert not run.store.bundles(run.key("checkpoints") + "/")  # checkpoints of committed cells are gone


def test_same_seed_same_cpu_gives_equal_metrics(trained, tmp_path):
    again = stage_run(write_study(tmp_path), str(tmp_path / "store"), tmp_path / "work")
    assert again.run_id == trained.run_id  # same study, fresh store and work dir
    again.phase("train", 2)
    _same_results(_metrics(again, "mrpc-lora-s42"), _metrics(trained, "mrpc-lora-s42"))
    assert _predictions(again, "mrpc-lora-s42") == _predictions(trained, "mrpc-lora-s42")


def test_a_committed_cell_is_skipped_in_under_five_seconds(trained):
    before = trained.store.bundle(trained.key("cells", "mrpc-full-s42")).commit
    t0 = time.perf_counter()
    done = trained.run_cli("train", 0)
    seconds = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    assert "already committed, skipping" in done.stderr and " msg=start" not in done.stderr  # the runner logs start only for an index it runs
    assert seconds < 5
    assert trained.store.bundle(trained.key("cells", "mrpc-full-s42")).commit == before


@pytest.fixture(scope="module")
def resume_reference_run(tmp_path_factory):
    """mrpc-lora-s42 of RESUME_STUDY trained without interruption (file store, this process)."""
    folder = tmp_path_factory.mktemp("reference")
    run = stage_run(write_study(folder, **RESUME_STUDY), str(folder / "store"), folder / "work")
    run.phase("train", 2)
    return run


@pytest.fixture(scope="module")
def resume_reference(resume_reference_run):
    return _metrics(resume_reference_run, "mrpc-lora-s42")


class Preempted(Exception):
    pass


def _preempt_in_second_epoch(run, monkeypatch, index: int) -> None:
    """Run train index `index` and crash it right after a checkpoint of its second epoch reached the store."""
    sync = training.StoreCheckpoints.on_save

    def on_save_then_crash(self, args, state, control, **kwargs):
        sync(self, args, state, control, **kwargs)
        if state.epoch > 1:
            raise Preempted(f"preempted after step {state.global_step}")

    monkeypatch.setattr(training.StoreCheckpoints, "on_save", on_save_then_crash)
    with pytest.raises(Preempted):
        run.phase("train", index)
    monkeypatch.setattr(training.StoreCheckpoints, "on_save", sync)


def test_resume_from_a_later_epoch_equals_an_uninterrupted_run(make_run, monkeypatch, resume_reference,
                                                               resume_reference_run):  # fmt: skip
    """Crash right after a checkpoint of the second epoch reached the store; the next run resumes from it (same
    batches, RNG, optimizer, early-stopping state, best checkpoint) and ends with the uninterrupted run's numbers."""
    run = make_run(**RESUME_STUDY)
    _preempt_in_second_epoch(run, monkeypatch, 2)
    steps = sorted(train.checkpoint_store(run.ctx(), "mrpc-lora-s42").committed())
    assert steps and steps[-1] > 40  # 40 steps per epoch: the crash came in the second epoch
    assert not run.store.committed(run.key("cells", "mrpc-lora-s42"))
    run.phase("train", 2)
    got = _metrics(run, "mrpc-lora-s42")
    assert got["resumed_from_step"] == steps[-1]
    _same_results(got, resume_reference, atol=1e-6)
    # the history spans both processes: the steps before the crash (from the checkpoint) and after the resume
    history = _history(run, "mrpc-lora-s42")
    assert history["resumed_from_step"] == steps[-1]
    assert history["train"][0]["step"] < steps[-1] < history["train"][-1]["step"]
    _same_history(history, _history(resume_reference_run, "mrpc-lora-s42"), atol=1e-6)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(make_run, monkeypatch, resume_reference):
    """The newest checkpoint in the store is damaged after its commit: the rerun resumes from the intact one before
    it and still ends with the uninterrupted run's numbers (before: every retry failed the checksum)."""
    run = make_run(**RESUME_STUDY)
    _preempt_in_second_epoch(run, monkeypatch, 2)
    ctx = run.ctx()
    checkpoints = train.checkpoint_store(ctx, "mrpc-lora-s42").committed()
    steps = sorted(checkpoints)
    assert len(steps) >= 2
    latest = checkpoints[steps[-1]]
    damaged = run.store.local_path(latest.object_key("adapter_model.safetensors"))
    with open(damaged, "r+b") as f:
        f.seek(-50, os.SEEK_END)
        f.write(b"\0" * 8)
    run.phase("train", 2)
    got = _metrics(run, "mrpc-lora-s42")
    assert got["resumed_from_step"] == steps[-2]
    _same_results(got, resume_reference, atol=1e-6)


def test_a_cell_committed_by_another_writer_meanwhile_is_not_trained_again(make_run, monkeypatch):
    """Two pods for one index: the second finds the cell committed after it loaded data and model (the first
    committed while it prepared), and skips instead of training it again."""
    run = make_run()
    restore = training.CheckpointStore.restore

    def other_writer_commits_first(checkpoints, output_dir):
        with run.ctx().writer("cells", "mrpc-full-s42", phase="train") as w:
            w.add_json("metrics.json", {"by": "the other writer"})
        return restore(checkpoints, output_dir)

    monkeypatch.setattr(training.CheckpointStore, "restore", other_writer_commits_first)
    monkeypatch.setattr(training, "fit", lambda *a, **k: pytest.fail("trained a cell that was already committed"))
    run.phase("train", 0)
    assert _metrics(run, "mrpc-full-s42") == {"by": "the other writer"}


def test_interrupted_after_training_ended_trains_no_further(make_run, monkeypatch, trained):
    """Killed between the last checkpoint and the cell commit (while evaluating): the rerun sees that training had
    stopped at that checkpoint, loads the best one without training a step, and reports the same numbers."""
    run = make_run()

    def preempted(*args, **kwargs):
        raise Preempted("preempted while evaluating")

    evaluate = training.evaluate
    monkeypatch.setattr(training, "evaluate", preempted)
    with pytest.raises(Preempted):
        run.phase("train", 2)
    monkeypatch.setattr(training, "evaluate", evaluate)
    fit = training.ClassifierTrainer.train
    monkeypatch.setattr(training.ClassifierTrainer, "train", lambda *a, **k: pytest.fail("trained again"))
    run.phase("train", 2)
    monkeypatch.setattr(training.ClassifierTrainer, "train", fit)
    got, want = _metrics(run, "mrpc-lora-s42"), _metrics(trained, "mrpc-lora-s42")
    assert got["resumed_from_step"] == want["global_step"] and got["train_tokens"] == 0
    _same_results(got, want, atol=1e-6)
    _same_history(_history(run, "mrpc-lora-s42"), _history(trained, "mrpc-lora-s42"), atol=1e-6)


@pytest.mark.s3
def test_sigkill_after_first_checkpoint_then_resume_on_s3(make_run, s3_url, tmp_path, resume_reference):
    run = make_run(store_url=s3_url, **RESUME_STUDY)
    cell = "mrpc-lora-s42"
    log = tmp_path / "killed.log"
    proc = run.spawn("train", 2, log=log)
    store = run.store
    deadline = time.time() + 240
    while not store.bundles(run.key("checkpoints", cell) + "/"):
        assert proc.poll() is None, f"train exited before a checkpoint was seen:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, "no checkpoint reached the store"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not store.committed(run.key("cells", cell)), "the cell committed before the kill: the test proved nothing"
    first = sorted(train.checkpoint_store(run.ctx(), cell).committed())
    assert first and first[0] > 0

    done = run.run_cli("train", 2)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = re.search(r"resume from step=(\d+)", done.stderr)
    assert resumed and int(resumed.group(1)) >= first[-1] > 0
    got = _metrics(run, cell)
    assert got["resumed_from_step"] == int(resumed.group(1))
    _same_results(got, resume_reference, atol=1e-6)
    assert not store.bundles(run.key("checkpoints", cell) + "/")


def test_checkpoints_in_the_store_keep_the_last_two_and_the_best(make_run):
    run = make_run()
    ctx = run.ctx()
    for step in (5, 10, 15, 20):
        with ctx.writer("checkpoints", "c", f"checkpoint-{step}", phase="train") as w:
            w.add_bytes("trainer_state.json", b"{}")
    ctx.store.put_object(
        ctx.key("checkpoints", "c", "checkpoint-3", "_attempts", "x", "f"), b"old, never committed"
    )
    ctx.store.put_object(
        ctx.key("checkpoints", "c", "checkpoint-25", "_attempts", "x", "f"), b"upload in progress"
    )
    removed = train.checkpoint_store(ctx, "c").prune(keep=2, best_step=5)
    assert sorted(removed) == [3, 10]
    assert sorted(train.checkpoint_store(ctx, "c").committed()) == [5, 15, 20]
    assert ctx.store.list_objects(ctx.key("checkpoints", "c", "checkpoint-25") + "/")  # left alone


def test_bad_input_is_one_line_and_exit_2_before_a_model_loads(make_run):
    run = make_run(hpo={"enabled": True})
    done = run.run_cli("train", 0)
    assert done.returncode == 2
    assert "HPO required but no best params committed for mrpc-full" in done.stderr
    assert not (run.work_dir / run.run_id / "train").exists()
    done = run.run_cli("train", 99)
    assert done.returncode == 2 and "index 99 is outside" in done.stderr
    assert PHASE.size(run.study) == 4


def test_the_report_draws_the_trained_cells_history(trained, tmp_path):
    """The history.json the train phase wrote is what the report's curves read: a figure for the task, with the two
    trained cells (seed 42 of each method) and the other two seeds listed as missing (not trained here)."""
    from lorascope.phases import report
    from lorascope.reporting import curves

    ctx = trained.ctx()
    found, missing = report.cell_histories(ctx)
    assert sorted(found) == ["mrpc-full-s42", "mrpc-lora-s42"]
    assert missing == {"mrpc-full-s7": "cell not committed", "mrpc-lora-s7": "cell not committed"}
    figs = curves.figures(trained.study, found, tmp_path)
    assert [rel for _caption, rel in figs] == ["figures/training_curves_mrpc.png"]
    assert (tmp_path / figs[0][1]).read_bytes().startswith(b"\x89PNG") and (tmp_path / figs[0][1]).stat().st_size > 20_000


IA3_STUDY = {
    "tasks": [{"name": "mrpc", "max_length": 64, "train_samples": 160}],
    "methods": [{"name": "ia3", "kind": "ia3"}],
    "training": {"evals_per_epoch": 4, "early_stopping_patience": 20,
                 "defaults": {"ia3": {"learning_rate": 2.0e-2, "warmup_ratio": 0.1, "effective_batch": 8, "epochs": 2}}},
    "sanity": {"learning_rate": {"ia3": 3.0e-2}},
}  # fmt: skip


def test_an_ia3_cell_resumes_from_its_store_checkpoint_to_the_uninterrupted_result(make_run, monkeypatch):
    """A non-LoRA PEFT method: the IA3 vectors and the head come back from the checkpoint (load_checkpoint_weights
    through PEFT's set_peft_model_state_dict), and the resumed cell equals the uninterrupted one."""
    reference = make_run(**IA3_STUDY)
    reference.phase("train", 0)
    want = _metrics(reference, "mrpc-ia3-s42")
    assert want["method_kind"] == "ia3" and want["artifact_bytes"] > 0
    assert want["trainable_bytes"] == 4 * want["trainable_params"]  # float32
    run = make_run(**IA3_STUDY)
    _preempt_in_second_epoch(run, monkeypatch, 0)
    steps = sorted(train.checkpoint_store(run.ctx(), "mrpc-ia3-s42").committed())
    assert steps and steps[-1] > 20  # 20 steps per epoch: the crash came in the second epoch
    run.phase("train", 0)
    got = _metrics(run, "mrpc-ia3-s42")
    assert got["resumed_from_step"] == steps[-1]
    _same_results(got, want, atol=1e-6)
    files = run.store.bundle(run.key("cells", "mrpc-ia3-s42")).files
    assert "adapter/adapter_config.json" in files and not any(f.startswith("model/") for f in files)


def test_the_same_cell_trained_twice_gives_byte_identical_adapter_folders(tmp_path):
    """Two processes with different hash seeds, two stores and work dirs, the same study: the same adapter bytes.
    Before: adapter_config.json listed target_modules in set order (a new order in every process) and README.md
    named each store's absolute stage folder as `base_model:`."""
    study = write_study(tmp_path / "study", methods=[{"name": "lora", "kind": "lora", "r": 2, "alpha": 4, "dropout": 0.0,
                                                       "target_modules": "all-linear"}], seeds=[42])  # fmt: skip
    folders = []
    for i in (1, 2):
        run = stage_run(study, str(tmp_path / f"store-{i}"), tmp_path / f"work-{i}")
        done = run.run_cli("train", 0, PYTHONHASHSEED=str(i))
        assert done.returncode == 0, done.stderr[-2000:]
        ctx = run.ctx()
        folders.append(ctx.local(ctx.require("cells", "mrpc-lora-s42")) / "adapter")
    files = [{p.relative_to(f).as_posix(): p.read_bytes() for p in f.rglob("*") if p.is_file()} for f in folders]
    assert sorted(files[0]) == sorted(files[1]) and "README.md" in files[0]
    assert [name for name in files[0] if files[0][name] != files[1][name]] == []
    config = json.loads(files[0]["adapter_config.json"])
    assert config["target_modules"] == sorted(config["target_modules"]) and len(config["target_modules"]) == 7
    assert b"base_model: builtin:tiny-llama\n" in files[0]["README.md"]
