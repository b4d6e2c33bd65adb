"""hpo: exactly N complete trials across worker processes (journal file and PostgreSQL), the over-count guard under a
thread race, the pruner firing inside real training, the sampler's pinned arguments and seeds, bad input."""

from __future__ import annotations

import csv
import io
import random
import threading
import time
from importlib import metadata

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from lorascope.log import Logger
from lorascope.phases import get_phase, hpo

HPO = {
    "enabled": True,
    "trials": 5,
    "workers": 2,
    "pruner": {"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    "spaces": {
        "lora": {
            "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "lora_alpha": {"type": "float", "low": 8, "high": 32},
            "effective_batch": {"type": "categorical", "choices": [8, 16]},
            "epochs": {"type": "int", "low": 1, "high": 1},
        }
    },
}
LORA_ONLY = {"methods": [{"name": "lora", "kind": "lora", "r": 4}], "hpo": HPO, "seeds": [42]}


def _check_committed(run, study: optuna.Study, target: int) -> dict:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == target
    bundle = run.store.bundle(run.key("hpo", "mrpc-lora"))
    assert bundle is not None, "no worker committed the hpo bundle"
    assert bundle.commit["environment"]["packages"]["optuna"] == metadata.version("optuna")  # what ran the search
    rows = list(csv.DictReader(io.StringIO(bundle.read_bytes("trials.csv").decode())))
    assert sum(r["state"] == "COMPLETE" for r in rows) == target
    assert {r["number"] for r in rows} == {str(t.number) for t in study.trials}
    best = bundle.read_json("best_params.json")
    assert best["value"] == max(t.value for t in complete)
    assert best["metric"] == "f1" and best["split"] == "dev" and best["counts"]["COMPLETE"] == target
    assert set(best["params"]) == {
        "learning_rate",
        "lora_alpha",
        "effective_batch",
        "epochs",
        "warmup_ratio",
        "weight_decay",
        "lora_dropout",
    }
    return {r["worker"] for r in rows if r["state"] == "COMPLETE"}


def _two_workers(run, tmp_path, **env: str) -> None:
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [run.spawn("hpo", i, log=logs[i], **env) for i in range(2)]
    for p, log in zip(procs, logs, strict=True):
        assert p.wait(timeout=300) == 0, log.read_text()[-3000:]


def _committed_study_name(run) -> str:
    return run.store.bundle(run.key("hpo", "mrpc-lora")).read_json("best_params.json")["study_name"]


def test_study_name_is_bound_to_the_code_version():
    a = hpo.study_name("smoke-1234", "mrpc", "lora", "0.1.0+gabc")
    assert a == hpo.study_name("smoke-1234", "mrpc", "lora", "0.1.0+gabc") and a.startswith("lorascope-smoke-1234-mrpc-lora-c")
    assert a != hpo.study_name("smoke-1234", "mrpc", "lora", "0.1.0+gdef")  # other code: another study, no stale trials


def test_two_worker_processes_share_a_journal_file(make_run, tmp_path):
    run = make_run(
        **LORA_ONLY, tasks=[{"name": "mrpc", "max_length": 64, "train_samples": 96, "hpo_train_samples": 48}]
    )
    assert get_phase("hpo").size(run.study) == 2 and get_phase("hpo").bundles(run.study) == ["hpo/mrpc-lora"]
    _two_workers(run, tmp_path)
    journal = run.work_dir / run.run_id / "hpo" / "mrpc-lora.journal"
    study = optuna.load_study(study_name=_committed_study_name(run),
                              storage=JournalStorage(JournalFileBackend(str(journal))))  # fmt: skip
    workers = _check_committed(run, study, target=5)
    assert workers == {"0", "1"}  # both processes trained trials


@pytest.mark.postgres
def test_two_worker_processes_share_a_postgres_study(make_run, tmp_path, pg_url):
    run = make_run(
        **LORA_ONLY, tasks=[{"name": "mrpc", "max_length": 64, "train_samples": 96, "hpo_train_samples": 48}]
    )
    _two_workers(run, tmp_path, LORASCOPE_OPTUNA_STORAGE=pg_url)
    study = optuna.load_study(study_name=_committed_study_name(run), storage=pg_url)
    assert _check_committed(run, study, target=5) == {"0", "1"}
    assert not list((run.work_dir / run.run_id).glob("hpo/*.journal"))  # the database, not a file, held the study
    assert (
        run.store.bundle(run.key("hpo", "mrpc-lora")).read_json("best_params.json")["storage"] == "postgresql+psycopg2"
    )


@pytest.mark.parametrize("rep", range(3))
def test_racing_workers_never_exceed_the_target(tmp_path, rep):
    """Six threads, each with its own storage object on one journal file (as separate processes would have), random
    durations and a third of the trials pruned: exactly `target` COMPLETE trials, whatever the interleaving."""
    journal = str(tmp_path / "race.journal")
    target = 7
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done: list[bool] = []

    def worker(w: int) -> None:
        study = optuna.create_study(study_name="race", storage=JournalStorage(JournalFileBackend(journal)),
                                    sampler=optuna.samplers.RandomSampler(seed=w), direction="maximize", load_if_exists=True)  # fmt: skip
        rng = random.Random(100 * rep + w)

        def objective(trial, log):
            x = trial.suggest_float("x", 0, 1)
            time.sleep(rng.uniform(0, 0.03))
            if rng.random() < 1 / 3:
                raise optuna.TrialPruned()
            return x

        done.append(hpo.run_worker(study, target, w, objective, Logger()))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    study = optuna.load_study(study_name="race", storage=JournalStorage(JournalFileBackend(journal)))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == target
    assert TrialState.RUNNING not in states
    assert any(done)  # at least one worker saw the study complete (and would commit)
    surplus = [t for t in study.trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL and not t.intermediate_values for t in surplus)


def test_a_restarted_worker_frees_its_stale_running_trial(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "j.journal")))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    stale = study.ask()
    stale.set_user_attr("worker", 1)  # worker 1 was killed while running it
    other = study.ask()
    other.set_user_attr("worker", 0)
    hpo.fail_own_stale_trials(study, 1, Logger())
    assert study.trials[stale.number].state == TrialState.FAIL
    assert study.trials[other.number].state == TrialState.RUNNING  # another worker's trial is left alone


def test_the_pruner_stops_a_bad_trial_inside_training(make_run):
    """A finished trial that reached F1 1.0 at every evaluation sets the median; a real trial of the tiny model
    falls below it at its first dev evaluation and the Trainer callback prunes it there."""
    pruner = {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0}
    run = make_run(**{**LORA_ONLY, "hpo": {**HPO, "pruner": pruner}},
                   tasks=[{"name": "mrpc", "max_length": 64, "train_samples": 96, "hpo_train_samples": 64}])  # fmt: skip
    ctx = run.ctx()
    study, kind = hpo.open_study(ctx, "mrpc", "lora", 0)
    assert kind == "journal"
    space = {"learning_rate": FloatDistribution(1e-3, 1e-2, log=True)}
    study.add_trial(create_trial(value=1.0, params={"learning_rate": 5e-3}, distributions=space,
                                 intermediate_values={k: 1.0 for k in range(1, 10)}))  # fmt: skip
    objective = hpo.Objective(ctx, "mrpc", "lora")
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="at evaluation 1"):
        objective(trial, Logger())
    study.tell(trial, state=TrialState.PRUNED)
    pruned = study.trials[trial.number]
    assert pruned.state == TrialState.PRUNED and list(pruned.intermediate_values) == [1]
    assert pruned.intermediate_values[1] < 1.0
    assert not list((run.work_dir / run.run_id / "hpo").glob("mrpc-lora-trial-*"))  # trial scratch removed


def test_sampler_arguments_are_pinned_and_seeds_stable(make_run):
    run = make_run(**LORA_ONLY)
    study = run.study
    s0 = hpo.make_sampler(study, "mrpc", "lora", 0)
    assert (s0._n_startup_trials, s0._n_ei_candidates, s0._multivariate, s0._constant_liar) == (1, 24, True, True)
    seeds = {hpo.sampler_seed(study, "mrpc", "lora", w) for w in range(2)}
    assert len(seeds) == 2  # workers draw different start-up points
    assert hpo.sampler_seed(study, "mrpc", "lora", 0) == hpo.sampler_seed(run.study, "mrpc", "lora", 0)
    assert hpo.startup_trials(15) == 5 and hpo.startup_trials(60) == 10 and hpo.startup_trials(2) == 1
    assert hpo.slot(study, 1) == ("mrpc", "lora", 1)


def test_disabled_hpo_has_no_indexes(make_run):
    run = make_run()  # TINY: hpo.enabled false
    assert get_phase("hpo").size(run.study) == 0 and get_phase("hpo").bundles(run.study) == []


def test_bad_index_is_a_config_error_before_any_model_loads(make_run):
    run = make_run(**LORA_ONLY)
    done = run.run_cli("hpo", 9)
    assert done.returncode == 2
    assert "index 9 is outside 0..1" in done.stderr


def test_committed_study_is_skipped(make_run):
    run = make_run(**LORA_ONLY)
    ctx = run.ctx()
    with ctx.writer("hpo", "mrpc-lora", phase="hpo") as w:
        w.add_json("best_params.json", {"params": {}})
    before = ctx.bundle("hpo", "mrpc-lora").commit
    run.phase("hpo", 1)
    assert ctx.bundle("hpo", "mrpc-lora").commit == before
    assert not (run.work_dir / run.run_id / "hpo").exists()  # no study was opened


def test_a_code_change_opens_a_new_study_and_says_so(make_run):
    """A journal left by other code (same run, task and method) holds trials; the current code opens its own study,
    starts with no trials, and the log names the older study, its code version and its trial count."""
    run = make_run(**LORA_ONLY)
    ctx = run.ctx()
    storage, kind = hpo.open_storage(ctx, "mrpc", "lora")
    assert kind == "journal"
    old_name = hpo.study_name(ctx.run_id, "mrpc", "lora", "0.0.1+gold")
    old = optuna.create_study(study_name=old_name, storage=storage, direction="maximize")
    old.set_user_attr("code_version", "0.0.1+gold")
    space = {"learning_rate": FloatDistribution(1e-3, 1e-2, log=True)}
    for v in (0.5, 0.9):
        old.add_trial(create_trial(value=v, params={"learning_rate": 5e-3}, distributions=space))
    optuna.create_study(study_name=hpo.study_name(ctx.run_id, "sst2", "lora", "0.0.1+gold"), storage=storage)  # another task
    lines: list[tuple[str, dict]] = []
    study, _ = hpo.open_study(ctx, "mrpc", "lora", 0, log=lambda msg, **kv: lines.append((msg, kv)))
    assert ctx.store.code_version != "0.0.1+gold"
    assert study.study_name == hpo.study_name(ctx.run_id, "mrpc", "lora", ctx.store.code_version) != old_name
    assert study.trials == [] and study.user_attrs["code_version"] == ctx.store.code_version  # no stale trial reused
    assert [(m.split(":")[0], kv["level"], kv["older_studies"], kv["old_study"], kv["old_code_version"], kv["old_trials"])
            for m, kv in lines] == [("an older study of other code is in the storage", "warning", 1, old_name, "0.0.1+gold", 2)]  # fmt: skip
    # the same code again reopens its own study (the older one is still there, still named)
    lines.clear()
    again, _ = hpo.open_study(ctx, "mrpc", "lora", 0, log=lambda msg, **kv: lines.append((msg, kv)))
    assert again.study_name == study.study_name and [kv["old_study"] for _, kv in lines] == [old_name]
