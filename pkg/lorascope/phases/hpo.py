"""hpo: per task x method, Optuna TPE over the study's search space, shared by several workers.

Indexes: task x method x `hpo.workers` (task-major, then method, then worker). The workers of one task x method
share one Optuna study (named `lorascope-<run>-<task>-<method>-c<sha256(code version)[:8]>`: other code never reuses
its trials, and the log names any older study of other code the storage holds) through a storage:
  * `LORASCOPE_OPTUNA_STORAGE` (the CLI reads it; PostgreSQL on a cluster: `postgresql+psycopg2://...`), else
    `hpo.storage` from the study, else a journal file `<work-dir>/<run>/hpo/<task>-<method>.journal` (the local
    default; processes on one machine share it through its file lock). A value without `://`, or `journal://PATH`,
    is a journal file.

Sampler: `TPESampler(seed, n_startup_trials, n_ei_candidates=24, multivariate=True, constant_liar=True)`, every
argument explicit because Optuna 5 changed the defaults (`multivariate=None` now means True for one objective,
`constant_liar` is now True by default). The seed is sha256(study.seed, hpo.sampler_seed, task, method, worker):
stable across machines (never Python's hash()), and different per worker so that two workers do not draw the same
random start-up points; `constant_liar` keeps parallel workers from proposing near-identical points while others
run. `n_startup_trials` = min(10, max(1, trials // 3)) random trials before TPE models the space (Optuna's default
of 10 would leave 5 of the reference study's 15 trials to TPE).

Objective (`objective_value`): train on the staged train split capped by `hpo_train_samples` (a seeded subset),
with the trial's params, seed = study.seed, early stopping on dev loss; the value is the task's selection metric
(the task's primary metric: F1 for MRPC and QQP, Matthews for CoLA, Pearson for STS-B, accuracy otherwise) of the best checkpoint on the dev split, from the shared `training.evaluate`.
The pruner (`hpo.pruner`, MedianPruner) sees `trial.report(dev metric, step=k)` after the k-th dev evaluation
(evaluations, not optimizer steps, so trials with different batch sizes compare at the same fraction of an epoch)
and a pruned trial stops at once.

Exactly `hpo.trials` COMPLETE trials, over all workers (`run_worker`):
  * before asking for a trial, a worker counts COMPLETE and RUNNING trials; it stops when COMPLETE >= trials, and
    it also stops (without committing) when COMPLETE + RUNNING >= trials: the running trials of other workers may
    finish the study, and whoever runs the last one commits (a pruned trial hands its slot back to its own worker,
    which keeps going);
  * right after `ask()`, a worker counts again: if COMPLETE + RUNNING trials with a smaller number than its own reach
    `trials`, its trial is surplus: it is told FAIL (user attr `surplus`) before any training and the worker stops
    as above. Trial numbers are assigned in creation order by the storage, so of two workers that asked at the same
    time the one with the higher number yields: COMPLETE can never exceed `trials`. The price is a few FAIL rows in
    trials.csv (marked surplus), never an extra COMPLETE trial;
  * a restarted worker (a retried pod) marks its own RUNNING trials (user attr `worker`) FAIL, so a killed worker
    does not hold a slot forever. A worker whose retries are exhausted leaves its trial RUNNING: the study then
    stays short of `trials`, nothing is committed and the Job reports the failed index.
The worker that observes COMPLETE >= trials commits `hpo/<task>-<method>/` (`best_params.json`, `trials.csv`);
two workers committing is harmless (each commit names only its own attempt; the content is the same).

`hpo.enabled: false`: the phase has no indexes and commits nothing; train uses `training.defaults`.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from typing import TYPE_CHECKING, Any

from lorascope.errors import LorascopeError
from lorascope.heap import settle_heap
from lorascope.phases import PhaseContext, get_phase, hpo_slots
from lorascope.threads import configure_threads

if TYPE_CHECKING:
    import optuna

    from lorascope.study import Study


# ------------------------------------------------------------------------------------------------ indexes
def slot(study: Study, index: int) -> tuple[str, str, int]:
    """index -> (task, method, worker) (the order is the phase's, lorascope.phases.hpo_slots)."""
    get_phase("hpo").index(study, index)  # ConfigError naming the range
    return hpo_slots(study)[index]


def study_name(run_id: str, task: str, method: str, code_version: str) -> str:
    """The Optuna study of one task x method in one run AND one code version: trials made by other code (a journal
    or database left from before an upgrade) are never silently reused, since they live in another study. The
    version itself is kept as the study's user attribute `code_version`."""
    import hashlib

    return study_prefix(run_id, task, method) + hashlib.sha256(code_version.encode()).hexdigest()[:8]


def study_prefix(run_id: str, task: str, method: str) -> str:
    """The study name up to the code version's hash: the studies of one task x method under every code version."""
    return f"lorascope-{run_id}-{task}-{method}-c"


def sampler_seed(study: Study, task: str, method: str, worker: int) -> int:
    from lorascope.training import stable_seed

    return stable_seed("hpo-sampler", study.seed, study.hpo.sampler_seed, task, method, worker)


def startup_trials(trials: int) -> int:
    return min(10, max(1, trials // 3))


# ------------------------------------------------------------------------------------------------ optuna pieces
def storage_url(ctx: PhaseContext) -> str | None:
    return ctx.env.get("LORASCOPE_OPTUNA_STORAGE") or ctx.study.hpo.storage


def open_storage(ctx: PhaseContext, task: str, method: str) -> tuple[Any, str]:
    """(Optuna storage, kind) for a task x method: an RDB URL, or a journal file (see the module docstring)."""
    from optuna.storages import RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    url = storage_url(ctx)
    if url and "://" in url and not url.startswith(("journal://", "file://")):
        last: Exception | None = None
        for attempt in range(5):  # workers starting together race to create the tables
            try:
                return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}), url.split("://", 1)[0]
            except Exception as exc:  # sqlalchemy errors of many kinds; the last one is reported
                last = exc
                time.sleep(0.5 * (attempt + 1))
        raise LorascopeError(
            f"Optuna storage {url.split('://', 1)[0]}://... cannot be used: {type(last).__name__}: {last}"
        )
    if url:
        path = url.split("://", 1)[1] if "://" in url else url
        from pathlib import Path

        journal = Path(path).expanduser()
        journal.parent.mkdir(parents=True, exist_ok=True)
    else:
        journal = ctx.scratch("hpo") / f"{task}-{method}.journal"
    return JournalStorage(JournalFileBackend(str(journal))), "journal"


def make_sampler(study: Study, task: str, method: str, worker: int) -> optuna.samplers.TPESampler:
    from optuna.samplers import TPESampler

    return TPESampler(
        seed=sampler_seed(study, task, method, worker),
        n_startup_trials=startup_trials(study.hpo.trials),
        n_ei_candidates=24,
        multivariate=True,
        constant_liar=True,
    )


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    from optuna.pruners import MedianPruner, NopPruner

    cfg = study.hpo.pruner
    if cfg.kind == "none":
        return NopPruner()
    return MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps, interval_steps=1)


def open_study(ctx: PhaseContext, task: str, method: str, worker: int, log=None) -> tuple[optuna.Study, str]:
    """(the Optuna study of this task x method and code version, storage kind). With `log`, says which studies of
    the same run, task and method made by other code the storage also holds: their trials are not reused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()  # its warnings as lorascope's logfmt lines (logger=optuna...)
    optuna.logging.enable_propagation()
    storage, kind = open_storage(ctx, task, method)
    name = study_name(ctx.run_id, task, method, ctx.store.code_version)
    if log is not None and (older := other_code_studies(storage, ctx.run_id, task, method, name)):
        # one line however many: old_study/old_code_version name the newest (studies list in creation order), old_trials counts all
        log("an older study of other code is in the storage: its trials are not reused, this code starts afresh",
            level="warning", older_studies=len(older), old_study=older[-1]["study"],
            old_code_version=older[-1]["code_version"], old_trials=sum(o["trials"] for o in older), study=name)  # fmt: skip
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=make_sampler(ctx.study, task, method, worker),
        pruner=make_pruner(ctx.study),
        direction="maximize",
        load_if_exists=True,
    )
    study.set_user_attr("code_version", ctx.store.code_version)
    return study, kind


def other_code_studies(storage: Any, run_id: str, task: str, method: str, current: str) -> list[dict[str, Any]]:
    """Studies in `storage` of this run, task and method made by another code version than `current`'s: name, the
    code version they recorded, and their trial count."""
    import optuna

    prefix = study_prefix(run_id, task, method)
    return [{"study": s.study_name, "code_version": s.user_attrs.get("code_version", "unknown"), "trials": s.n_trials}
            for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
            if s.study_name.startswith(prefix) and s.study_name != current]  # fmt: skip


def suggest(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    """Draw every parameter of the study's search space (`hpo.spaces` under the method's name, else its kind: `Study.space_for`)."""
    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "float":
            out[name] = trial.suggest_float(name, float(p.low), float(p.high), log=p.log)
        elif p.type == "int":
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            out[name] = trial.suggest_categorical(name, list(p.choices))
    return out


def report_to_optuna(trial: optuna.Trial, metric: str, log):
    """A TrainerCallback: after the k-th dev evaluation, `trial.report(metric, k)`; raise TrialPruned when the
    pruner says so (the exception leaves `trainer.train()` at once)."""
    import optuna
    from transformers import TrainerCallback

    class ReportToOptuna(TrainerCallback):
        def __init__(self) -> None:
            self.evaluations = 0

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.evaluations += 1
            value = float(metrics[f"eval_{metric}"])
            trial.report(value, self.evaluations)
            if trial.should_prune():
                log(
                    "trial pruned", trial=trial.number, evaluation=self.evaluations, step=state.global_step, value=value
                )
                raise optuna.TrialPruned(f"{metric}={value:.4f} at evaluation {self.evaluations}")

    return ReportToOptuna()


# ------------------------------------------------------------------------------------------------ the objective
class Objective:
    """Train and score one trial; the model and the data are prepared once per worker."""

    def __init__(self, ctx: PhaseContext, task: str, method: str) -> None:
        from lorascope import data, training
        from lorascope.models import loading

        study = ctx.study
        self.ctx, self.study = ctx, study
        self.task = study.task(task)
        self.spec = self.task.spec  # the task resolved by its type (lorascope.tasks)
        self.method = study.method(method)
        self.device = loading.pick_device(ctx.env)
        stage_dir = ctx.stage_dir()
        self.model_dir = stage_dir / "model"
        self.tokenizer = loading.load_tokenizer(self.model_dir)
        self.pad_id = int(self.tokenizer.pad_token_id)
        train_rows = data.subsample(
            data.read_split(stage_dir, task, "train"), self.task.hpo_train_samples, study.data.split_seed
        )
        ttype = self.spec.task_type
        self.train_features = ttype.encode(self.spec, self.tokenizer, train_rows, self.spec.max_length)
        self.dev_features = ttype.encode(self.spec, self.tokenizer, data.read_split(stage_dir, task, "dev"), self.spec.max_length)
        self.bf16 = training.use_bf16(study.training, self.device)

    def __call__(self, trial: optuna.Trial, log) -> float:
        import torch
        from transformers import set_seed

        from lorascope import methods, training

        chosen = suggest(trial, self.study.space_for(self.method))
        params = training.resolve_params(self.study, self.method.name, chosen, task=self.task.name)
        trial.set_user_attr("params", params)
        log.debug("trial start", trial=trial.number, **params)
        set_seed(self.study.seed)
        ttype = self.spec.task_type
        model = ttype.load_model(self.spec, self.model_dir, torch.float32, self.device)
        model = methods.apply_method(model, self.method, params, task_type=ttype.peft_task_type)
        output_dir = self.ctx.scratch("hpo", f"{self.task.name}-{self.method.name}-trial-{trial.number}")
        metric = self.task.selection_metric
        result = None
        try:
            result = training.fit(
                model, self.train_features, self.dev_features, training=self.study.training,
                plan=training.Plan.from_params(params, seed=self.study.seed, resumable=False), pad_id=self.pad_id,
                output_dir=output_dir, device=self.device, log=log.bind(trial=trial.number),
                callbacks=[report_to_optuna(trial, metric, log)], task=self.spec, tokenizer=self.tokenizer,
            )  # fmt: skip
            score = training.evaluate_features(result.model, self.dev_features, self.study.training.eval_batch,
                                               self.pad_id, bf16=self.bf16, task=self.spec, tokenizer=self.tokenizer)  # fmt: skip
            best_step = result.best_step
        finally:
            shutil.rmtree(output_dir, ignore_errors=True)
            del model, result
            settle_heap()  # the next trial builds a fresh model: free this one's memory first (lorascope.heap)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        trial.set_user_attr("best_step", best_step)
        trial.set_user_attr("dev", score.metrics())
        return score.metric(metric)


# ------------------------------------------------------------------------------------------------ the worker loop
def fail_own_stale_trials(study: optuna.Study, worker: int, log) -> None:
    """A restarted worker's RUNNING trials are leftovers of its killed predecessor."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == worker:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            log.warning("stale trial of this worker marked FAIL", trial=t.number)


def run_worker(study: optuna.Study, target: int, worker: int, objective, log) -> bool:
    """Run trials until the study has `target` COMPLETE trials (True) or the running trials of other workers may
    complete it (False). See the module docstring for why COMPLETE never exceeds `target`."""
    import optuna
    from optuna.trial import TrialState

    fail_own_stale_trials(study, worker, log)
    while True:
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if complete >= target:
            return True
        if complete + running >= target:
            log("leaving the last trials to other workers", complete=complete, running=running, target=target)
            return False
        trial = study.ask()
        trial.set_user_attr("worker", worker)
        trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        ahead = sum(t.state == TrialState.RUNNING and t.number < trial.number for t in trials)
        if complete + ahead >= target:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            log("surplus trial dropped before training", trial=trial.number, complete=complete, running_ahead=ahead)
            continue
        t0 = time.perf_counter()
        try:
            value = objective(trial, log)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        study.tell(trial, value)
        log("trial complete", trial=trial.number, value=value, seconds=round(time.perf_counter() - t0, 2))


def trials_table(study: optuna.Study) -> str:
    """trials.csv: number, state, value, duration_seconds, worker, surplus, evaluations, params (JSON)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", "duration_seconds", "worker", "surplus", "evaluations", "params"])
    for t in study.get_trials(deepcopy=False):
        duration = t.duration.total_seconds() if t.duration is not None else ""
        w.writerow([t.number, t.state.name, "" if t.value is None else repr(float(t.value)), duration,
                    t.user_attrs.get("worker", ""), int(bool(t.user_attrs.get("surplus"))), len(t.intermediate_values),
                    json.dumps(t.user_attrs.get("params", t.params), sort_keys=True)])  # fmt: skip
    return buf.getvalue()


def best_params(ctx: PhaseContext, study: optuna.Study, task: str, method: str, storage_kind: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    best = study.best_trial
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    return {
        "task": task,
        "method": method,
        "metric": ctx.study.task(task).selection_metric,
        "split": "dev",
        "value": best.value,
        "trial": best.number,
        "params": best.user_attrs.get("params", best.params),
        "searched": best.params,
        "trials": ctx.study.hpo.trials,
        "counts": {k: v for k, v in counts.items() if v},
        "sampler": {"name": "TPESampler", "n_startup_trials": startup_trials(ctx.study.hpo.trials), "multivariate": True,
                    "constant_liar": True, "n_ei_candidates": 24,
                    "seeds": {w: sampler_seed(ctx.study, task, method, w) for w in range(ctx.study.hpo.workers)}},
        "pruner": ctx.study.hpo.pruner.model_dump(),
        "storage": storage_kind,  # the kind only: a URL may hold a password
        "study_name": study.study_name,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ the phase
def run(ctx: PhaseContext, index: int) -> None:
    cfg = ctx.study
    if not cfg.hpo.enabled:
        ctx.log("hpo.enabled is false: nothing to do (train uses training.defaults)")
        return
    task, method, worker = slot(cfg, index)
    name = f"{task}-{method}"
    log = ctx.log.bind(unit=name, worker=worker)
    ctx.require("stage", why="run the stage phase first: it fetches the model and the data")
    from lorascope import training
    from lorascope.models import loading

    space = cfg.space_for(cfg.method(method))
    training.resolve_params(
        cfg, method, {k: (p.low if p.type != "categorical" else p.choices[0]) for k, p in space.items()}, task=task
    )
    device = loading.pick_device(ctx.env)
    training.check_training(cfg, device)
    configure_threads(ctx.env)

    study, kind = open_study(ctx, task, method, worker, log)
    if kind == "journal" and cfg.hpo.workers > 1:
        log("note: workers share a journal file only on one machine or a shared volume; "
            "pods need LORASCOPE_OPTUNA_STORAGE (PostgreSQL)")  # fmt: skip
    log("study open", study=study.study_name, code_version=ctx.store.code_version, storage=kind, target=cfg.hpo.trials,
        sampler_seed=sampler_seed(cfg, task, method, worker))  # fmt: skip
    objective = Objective(ctx, task, method)
    if not run_worker(study, cfg.hpo.trials, worker, objective, log):
        return
    best = best_params(ctx, study, task, method, kind)
    with ctx.writer("hpo", name, phase="hpo", meta={"best_value": best["value"], "best_trial": best["trial"]}) as w:
        w.add_json("best_params.json", best)
        w.add_bytes("trials.csv", trials_table(study).encode())
    log(
        "committed",
        bundle=f"hpo/{name}",
        best_trial=best["trial"],
        best_value=best["value"],
        counts=json.dumps(best["counts"]),
    )
