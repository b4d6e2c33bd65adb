"""Runs: freezing the study into the store, running phases locally, and the status table.

A run lives under `runs/<run_id>/` in the store. Its first object is `study.yaml`, the validated study frozen with
its hash. Every later call for that run (a local phase, a pod of an Indexed Job) must bring a study with the same
hash, or it is refused with exit 2: one run never mixes results of two configurations.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from lorascope.errors import EXIT_CONFIG, ConfigError, LorascopeError, StoreError
from lorascope.heap import settle_heap
from lorascope.log import Logger, route_transformers_logs
from lorascope.phases import Phase, PhaseContext, available_phases, get_phase
from lorascope.store import Store
from lorascope.study import Study, parse_study
from lorascope.threads import THREADS_ENV, child_env, threads_per_job

FROZEN_STUDY = "study.yaml"


def default_run_id(study: Study) -> str:
    """Same study, same run: re-running resumes and skips what is committed."""
    return f"{study.name}-{study.hash[:8]}"


def check_run_id(run_id: str) -> str:
    """A run id names one folder under runs/ of the store: not empty, not `.` or `..`, no `/` or `\\`, printable,
    at most limits.FILE_NAME_MAX bytes. Anything else (`../../etc`) is a ConfigError (exit 2), before the store is
    touched."""
    from lorascope.limits import FILE_NAME_MAX

    if (not run_id or run_id in (".", "..") or any(c in run_id for c in "/\\") or not run_id.isprintable()
            or len(run_id.encode()) > FILE_NAME_MAX):  # fmt: skip
        raise ConfigError(f"run id {run_id!r} is not one folder name under runs/ (no '/', not '.' or '..', printable, "
                          f"at most {FILE_NAME_MAX} bytes)")  # fmt: skip
    return run_id


def freeze_study(store: Store, run_id: str, study: Study) -> None:
    """Write runs/<run>/study.yaml once; refuse a study whose hash differs from the frozen one."""
    key = f"runs/{run_id}/{FROZEN_STUDY}"
    frozen = load_frozen_study(store, run_id)
    if frozen is None:
        text = f"# lorascope study frozen at run creation\n# study_hash: {study.hash}\n" + study.to_yaml()
        store.put_object(key, text.encode())
    elif frozen.hash != study.hash:
        raise ConfigError(
            f"run {run_id!r} was created from study {frozen.name!r} with hash {frozen.hash}; this study "
            f"({study.name!r}) has hash {study.hash}. Use another --run-id for a changed study."
        )


def load_frozen_study(store: Store, run_id: str) -> Study | None:
    from lorascope.store import NotFound

    try:
        text = store.get_object(f"runs/{run_id}/{FROZEN_STUDY}").decode()
    except NotFound:
        return None
    # written by lorascope from a checked study: no size bound (sweeps written out may exceed the file's), the
    # nesting and alias bounds still hold
    return parse_study(text, source=f"{store.url}/runs/{run_id}/{FROZEN_STUDY}", max_bytes=None)


def find_runs(store: Store) -> list[str]:
    return sorted({o.key.split("/")[1] for o in store.list_objects("runs/") if o.key.endswith("/" + FROZEN_STUDY) and o.key.count("/") == 2})


MISSING_CODE_VERSIONS = ("", "unset", "unknown")  # placeholders a build may leave behind: never stamped into a commit


def code_version(env: Mapping[str, str]) -> str:
    """LORASCOPE_CODE_VERSION (baked into images) or the git commit of this checkout, else the package version.
    An empty or placeholder value ("unset") counts as missing."""
    from lorascope import __version__

    baked = env.get("LORASCOPE_CODE_VERSION", "").strip()
    if baked not in MISSING_CODE_VERSIONS:
        return baked
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if sha.returncode == 0:
            dirty = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            return f"{__version__}+g{sha.stdout.strip()}{'.dirty' if dirty.stdout.strip() else ''}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return __version__


def image_tag(version: str) -> str:
    """The image tag for a code version: `0.1.0+g1a2b3c4d5e6f` -> `0.1.0-g1a2b3c4d5e6f` (a tag allows only
    [A-Za-z0-9_.-], at most 128 characters). One tag per commit, so a grid never mixes code versions across nodes."""
    import re

    if version.strip() in MISSING_CODE_VERSIONS:
        raise ConfigError(f"image tag: code version {version!r} is a placeholder, not a version; build from a git "
                          "checkout (LORASCOPE_CODE_VERSION) or pass --image-tag")
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", version.replace("+", "-").replace(".dirty", "-dirty"))
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise ConfigError(f"image tag: cannot make a tag from code version {version!r}; pass --image-tag")
    return tag


def run_phase_index(ctx: PhaseContext, phase_name: str, index: int) -> None:
    """One index of one phase: `lorascope run` and `lorascope <phase> --index i` (a pod) both come here. An index
    whose bundle (Phase.bundle) is committed is skipped before the phase's module is imported: the commit protocol's
    idempotence lives here once, not in every phase."""
    phase = get_phase(phase_name)
    ix = phase.index(ctx.study, index)  # ConfigError naming the range
    log = ctx.log.bind(phase=phase_name, unit=ix.unit, index=index)
    if skip_committed(ctx, phase, index, log):
        return
    if not ctx.store.writable:  # a read-only store serves a phase that only skips; refuse one that must write, now
        raise StoreError(f"store {ctx.store.url} is read-only, and phase {phase_name} index {index} still has to "
                         f"commit {ix.bundle}: give a writable store")  # fmt: skip
    route_transformers_logs()  # transformers' warnings as logfmt lines too (a no-op where it is not installed)
    settle_heap()  # the last index's garbage collected, the imports frozen (lorascope.heap)
    t0 = time.perf_counter()
    log("start")
    try:
        phase.run(PhaseContext(ctx.study, ctx.store, ctx.run_id, ctx.work_dir, ctx.env, log), index)
    except BaseException as exc:
        log.error("failed", seconds=round(time.perf_counter() - t0, 2), error=type(exc).__name__)
        raise
    log("done", seconds=round(time.perf_counter() - t0, 2))


def skip_committed(ctx: PhaseContext, phase: Phase, index: int, log=None) -> bool:
    """True (and says so) when index's bundle is committed; the phase's `when_committed` still runs (report: deliver
    the committed report)."""
    rel = phase.bundle(ctx.study, index)
    bundle = ctx.bundle(rel)
    if bundle is None:
        return False
    log = log or ctx.log.bind(phase=phase.name, unit=phase.unit(ctx.study, index), index=index)
    log("already committed, skipping", bundle=rel)
    phase.when_committed(PhaseContext(ctx.study, ctx.store, ctx.run_id, ctx.work_dir, ctx.env, log), index, bundle)
    return True


def _worker_start(env: dict[str, str]) -> None:
    """A `--jobs N` worker process, before its first index: the variables a phase child gets (threads, code version,
    the parent's pid, so that it dies with the parent), set before anything imports torch."""
    os.environ.update(env)


def _worker_index(index_main: Callable[[list[str]], int], argv: list[str]) -> int:
    """One index in a `--jobs N` worker: the phase command a pod runs (`lorascope <phase> --index i ...`), called in
    this process; its exit code."""
    try:
        return index_main(argv)
    except SystemExit as exc:  # argparse
        return exc.code if isinstance(exc.code, int) else 1


@dataclass
class LocalRun:
    """`lorascope run`: phases in order; each index through the same function a Job pod calls.

    `jobs` > 1: the indexes of a phase run in `jobs` worker processes, each index the phase command a pod runs
    (`index_main`, the CLI's entry point, with `<phase> --index i ...`), called in the worker. A worker imports torch
    and the rest once and runs index after index, as `--jobs 1` does in this process: on the 2-core demo a process
    per index spent 6-8 s importing for a 2-3 s training cell. The workers live for the whole run (one start for all
    phases) and die with this process, even by kill -9."""

    ctx: PhaseContext
    study_path: Path
    store_url: str
    jobs: int = 1
    index_main: Callable[[list[str]], int] | None = None
    _pool: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)

    def run(self, phases: list[str]) -> None:
        if self.jobs > 1 and self.index_main is None:
            raise ValueError("LocalRun: jobs > 1 needs index_main (the CLI's entry point) for its worker processes")
        try:
            for name in phases:
                self._run_phase(name)
        except BaseException:
            self._stop_workers()  # SIGTERM: each stops as a pod does (checkpoint, exit 143), not after its index
            raise
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def _run_phase(self, name: str) -> None:
        phase = get_phase(name)
        n = phase.size(self.ctx.study)
        self.ctx.log("phase start", phase=name, indexes=n, jobs=self.jobs)
        t0 = time.perf_counter()
        # committed indexes are skipped here, in this process: no child process is started for them
        done = [i for i in range(n) if skip_committed(self.ctx, phase, i)]
        todo = [i for i in range(n) if i not in done]
        elsewhere = {i: py for i in todo if (py := phase.interpreter(self.ctx.study, i, self.ctx.env))}
        here = [i for i in todo if i not in elsewhere]
        if self.jobs <= 1 or len(here) <= 1 or phase.timed:  # a timed phase's indexes run alone
            for i in here:
                run_phase_index(self.ctx, name, i)
        else:
            self._run_parallel(name, here)
        for i, python in elsewhere.items():  # e.g. the bench phase's vllm index, in the vLLM environment
            self.ctx.log("index in another interpreter", phase=name, index=i, python=python)
            self._check([(i, self._subprocess(name, i, python, self._threads(1)))], name)
        self.ctx.log("phase done", phase=name, seconds=round(time.perf_counter() - t0, 1))

    def _threads(self, jobs: int) -> int:
        return threads_per_job(self.ctx.env, jobs)

    def _child_env(self, threads: int) -> dict[str, str]:
        """What a phase child gets on top of this process's environment."""
        env = dict(child_env(threads))
        env["LORASCOPE_CODE_VERSION"] = self.ctx.store.code_version
        for k, v in self.ctx.env.items():
            if k.startswith("LORASCOPE_") and k != THREADS_ENV:
                env[k] = v
        env["LORASCOPE_PARENT_PID"] = str(os.getpid())  # the children stop when this process dies, even by kill -9
        return env

    def _argv(self, name: str, i: int) -> list[str]:
        return [name, "--study", str(self.study_path), "--store", self.store_url, "--run-id", self.ctx.run_id,
                "--index", str(i), "--work-dir", str(self.ctx.work_dir)]  # fmt: skip

    def _subprocess(self, name: str, i: int, python: str, threads: int) -> int:
        """`<python> -m lorascope.cli <phase> --index i`, as a pod would run it; its exit code."""
        env = {**os.environ, **self._child_env(threads)}
        return subprocess.run([python, "-m", "lorascope.cli", *self._argv(name, i)], env=env).returncode

    def _workers(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            # spawn, not fork: a fresh interpreter (this process may hold torch's threads and open stores)
            self._pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_start, initargs=(self._child_env(self._threads(self.jobs)),))  # fmt: skip
        return self._pool

    def _run_parallel(self, name: str, indexes: list[int]) -> None:
        """Each index as the phase command a pod runs, in the run's worker processes, lowest index first."""
        pool = self._workers()
        futures = [(i, pool.submit(_worker_index, self.index_main, self._argv(name, i))) for i in indexes]
        results = []
        for i, fut in futures:
            try:
                results.append((i, fut.result()))
            except BrokenProcessPool:  # a worker killed (OOM, a signal): its index and those after it failed
                results.append((i, 1))
        self._check(results, name)

    def _stop_workers(self) -> None:
        """SIGTERM to every worker process still running (their indexes checkpoint and exit 143, as pods do)."""
        import signal

        procs = getattr(self._pool, "_processes", None) or {}
        for proc in list(procs.values()):
            if proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    @staticmethod
    def _check(results: list[tuple[int, int]], name: str) -> None:
        failed = [(i, rc) for i, rc in results if rc != 0]
        if failed:
            codes = {rc for _, rc in failed}
            msg = f"phase {name}: indexes {[i for i, _ in failed]} failed (exit codes {sorted(codes)})"
            raise ConfigError(msg) if codes == {EXIT_CONFIG} else LorascopeError(msg)


# ------------------------------------------------------------------------------------------------ status
def status_rows(store: Store, run_id: str, study: Study) -> list[tuple[str, str, str]]:
    """(phase, bundle, state) for every bundle the study expects: committed | in progress | missing."""
    rows = []
    ctx = PhaseContext(study, store, run_id, Path("."), {}, Logger())
    committed = {b.key for b in store.bundles(f"runs/{run_id}/")}
    for name in available_phases():
        phase = get_phase(name)
        for rel in phase.bundles(study):
            key = ctx.key(rel)
            if key in committed:
                state = "committed"
            elif store.in_progress(key) or _has_checkpoint(store, ctx, rel):
                state = "in progress"
            else:
                state = "missing"
            rows.append((name, rel, state))
    return rows


def _has_checkpoint(store: Store, ctx: PhaseContext, rel: str) -> bool:
    if not rel.startswith("cells/"):
        return False
    cell = rel.split("/", 1)[1]
    return bool(store.bundles(ctx.key("checkpoints", cell) + "/"))


def expected_bundles(study: Study, run_id: str) -> list[str]:
    out = []
    for name in available_phases():
        out += [f"runs/{run_id}/{rel}" for rel in get_phase(name).bundles(study)]
    return out
