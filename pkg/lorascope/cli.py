"""`lorascope`: the command line. It reads the environment once here and passes values down.

Exit codes: 0 done; 2 bad config or usage (a Kubernetes Job fails that index at once); 1 any other failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Mapping
from pathlib import Path

from lorascope import termination
from lorascope.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, LorascopeError
from lorascope.log import ENV_LEVEL, LEVELS, Logger, configure_logging, level_from
from lorascope.phases import PHASE_ORDER, PHASES, PhaseContext, available_phases, get_phase, select_phases
from lorascope.store import DEFAULT_WORKERS, Store, pull
from lorascope.study import Study, load_study


class UsageError(ConfigError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but usage errors raise (exit 2 through main) instead of calling sys.exit deep inside."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _env_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The settings lorascope itself reads: LORASCOPE_* and the Job index. AWS_* are read by boto3."""
    return {k: v for k, v in env.items()
            if (k.startswith("LORASCOPE_") and k != "LORASCOPE_PARENT_PID") or k == "JOB_COMPLETION_INDEX"}  # fmt: skip


def _work_dir(args: argparse.Namespace, env: Mapping[str, str]) -> Path:
    raw = args.work_dir or env.get("LORASCOPE_WORK_DIR") or str(Path.home() / ".cache" / "lorascope" / "work")
    p = Path(raw).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        # a pod whose work-dir volume is not writable for its user: a config error (exit 2, the Job fails the index
        # at once), not a crash that is retried
        raise ConfigError(
            f"work dir {p} (--work-dir / LORASCOPE_WORK_DIR) is not writable by uid {os.getuid()}: {exc.strerror}; "
            "mount a writable volume there (the manifests use an emptyDir with fsGroup)"
        ) from None
    return p


def _open_store(url: str | None, env: Mapping[str, str], workers: int = DEFAULT_WORKERS, write: bool = True) -> Store:
    """`write=False` for commands that only read (status, pull from it, a phase that may only skip): the store must
    exist, is never created, and may be read-only."""
    from lorascope.environment import pip_freeze_path
    from lorascope.runner import code_version

    url = url or env.get("LORASCOPE_STORE")
    if not url:
        raise UsageError("no store: pass --store (a folder, file:///path or s3://bucket/prefix) or set LORASCOPE_STORE")
    return Store.open(url, code_version=code_version(env), workers=workers, write=write, env=env,
                      pip_freeze=pip_freeze_path(env))  # fmt: skip


def _run_id_arg(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """--run-id / LORASCOPE_RUN_ID, checked to be one folder name under runs/ (exit 2 otherwise)."""
    from lorascope.runner import check_run_id

    run_id = getattr(args, "run_id", None) or env.get("LORASCOPE_RUN_ID")
    return check_run_id(run_id) if run_id else None


def _study_and_run(args: argparse.Namespace, store: Store, env: Mapping[str, str],
                   study: Study | None = None) -> tuple[Study, str]:  # fmt: skip
    """The study from --study (frozen into the run on first use; `study`: already loaded from it) or, without it,
    the run's frozen study."""
    from lorascope.runner import default_run_id, find_runs, freeze_study, load_frozen_study

    run_id = _run_id_arg(args, env)
    if args.study:
        study = study or load_study(args.study)
        run_id = run_id or default_run_id(study)
        freeze_study(store, run_id, study)
        return study, run_id
    if not run_id:
        runs = find_runs(store)
        if len(runs) != 1:
            raise UsageError(f"pass --study or --run-id: store {store.url} holds runs {runs or 'none'}")
        run_id = runs[0]
    frozen = load_frozen_study(store, run_id)
    if frozen is None:
        raise UsageError(f"run {run_id!r} has no frozen study in {store.url}; pass --study")
    return frozen, run_id


# ------------------------------------------------------------------------------------------------ commands
def checked_study(path: str, env: Mapping[str, str], model: bool = True) -> tuple[Study, list[str]]:
    """The study file read within bounds, validated, and checked against the files and the model it names (the
    checks `validate` and `run` make, before anything is created; `model=False`: all but the model checks, which
    import torch): (study, notes on what was not checked)."""
    from lorascope.preflight import check_study

    study = load_study(path)
    return study, check_study(study, source=path, env=env, model=model)


def _listed(values: list) -> str:
    """A list for a one-line summary: in full up to 20 entries, else its start and its length."""
    return f"{values}" if len(values) <= 20 else f"{values[:10]}... ({len(values):,})"


def cmd_validate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    study, notes = checked_study(args.study_file, env)
    print(f"{args.study_file}: ok  study={study.name} hash={study.hash} cells={len(study.cells())} "
          f"tasks={_listed([t.name for t in study.tasks])} methods={_listed([m.name for m in study.methods])} "
          f"seeds={_listed(study.seeds)}")  # fmt: skip
    for note in notes:
        print(f"note: {note}")
    from lorascope.analysis.verdicts import seeds_warning

    few = seeds_warning(len(study.seeds))
    if few:
        print(f"warning: {few}")
    return EXIT_OK


def cmd_grid(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    path = args.study_file or args.study
    if not path:
        raise UsageError("grid: give the study file (lorascope grid jobs/study.yaml)")
    study, notes = checked_study(path, env, model=False)  # validate's checks but the model's: grid imports no torch
    w = max([8, *(len(m.name) for m in study.methods)])  # a sweep's names are longer than 'full' and 'lora'
    cells = study.cells()
    print(f"{'index':>5}  {'task':<6} {'method':<{w}} {'seed':>5}  cell")
    for c in cells:
        print(f"{c.index:>5}  {c.task:<6} {c.method:<{w}} {c.seed:>5}  {c.name}")
    print(f"# {len(cells)} cells, order: task-major, then method, then seed (JOB_COMPLETION_INDEX = index)")
    for note in notes:
        print(f"# note: {note}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.runner import LocalRun

    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1 (got {args.jobs})")
    study, notes = checked_study(args.study, env)  # every check, before anything is created
    phases = select_phases(args.phases)
    _run_id_arg(args, env)
    for note in notes:
        Logger().info(note, check="preflight")
    work_dir = _work_dir(args, env)  # a work dir that cannot be written is reported before the store is created
    store = _open_store(args.store or env.get("LORASCOPE_STORE") or "store", env)
    study, run_id = _study_and_run(args, store, env, study)
    ctx = PhaseContext(study, store, run_id, work_dir, _env_settings(env), Logger(run=run_id))
    t0 = time.perf_counter()
    ctx.log("run start", study=study.name, store=store.url, phases=",".join(phases))
    LocalRun(ctx, Path(args.study), store.url, jobs=args.jobs, index_main=main).run(phases)
    ctx.log("run done", seconds=round(time.perf_counter() - t0, 1), store=store.url)
    print(f"run {run_id} done: results in {store.url}/runs/{run_id}/")
    return EXIT_OK


def cmd_phase(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.runner import run_phase_index

    phase = get_phase(args.phase)
    if phase.gpu:  # a GPU pod without a usable CUDA: exit 2 now, naming the driver (not 1, retried on the same node)
        from lorascope.cuda import require_cuda

        require_cuda(env, args.phase)
    if getattr(args, "source", None):  # `lorascope report DIR`: a folder made by `lorascope pull`
        if "://" not in args.source and not Path(args.source).is_dir():
            raise UsageError(f"report: folder {args.source!r} does not exist (give a folder made by `lorascope pull`)")
        args.store = args.store or args.source
    study = load_study(args.study) if args.study else None  # before the store or the work dir: a bad study creates nothing
    if study is not None and args.phase == "stage":  # the first pod of a cluster run: the checks `run` makes up front
        from lorascope.preflight import check_study

        for note in check_study(study, env=env):
            Logger().info(note, check="preflight")
    _run_id_arg(args, env)
    work_dir = _work_dir(args, env)
    # opened for reading: a read-only store works for a phase whose bundles are all committed (it only skips);
    # run_phase_index refuses, before any work, a phase that would have to write into it
    store = _open_store(args.store, env, write=False if getattr(args, "source", None) else _open_for_writing(args.store, env))
    study, run_id = _study_and_run(args, store, env, study)
    if args.phase == "stage" and not args.study:  # the run's frozen study: checked here, once it is read
        from lorascope.preflight import check_study

        for note in check_study(study, env=env):
            Logger().info(note, check="preflight")
    ctx = PhaseContext(study, store, run_id, work_dir, _env_settings(env), Logger(run=run_id))
    raw_index = args.index if args.index is not None else env.get("JOB_COMPLETION_INDEX")
    if raw_index is None:
        indexes = list(range(phase.size(study)))
    else:
        try:
            indexes = [int(raw_index)]
        except ValueError:
            raise UsageError(f"--index / JOB_COMPLETION_INDEX must be an integer (got {raw_index!r})") from None
    for i in indexes:
        run_phase_index(ctx, args.phase, i)
    return EXIT_OK


def _open_for_writing(url: str | None, env: Mapping[str, str]) -> bool:
    """True (open for writing, creating the folder) unless the store is an existing folder: then it is opened as it
    is, read-only allowed, so a phase that only skips works on a read-only store."""
    url = url or env.get("LORASCOPE_STORE") or ""
    if url.startswith("s3://"):
        return True
    path = url[len("file://") :] if url.startswith("file://") else url
    return not (path and Path(path).expanduser().is_dir())


def cmd_pull(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.runner import check_run_id, expected_bundles, load_frozen_study

    check_run_id(args.run)
    store = _open_store(args.store, env, workers=args.workers, write=False)
    study = load_frozen_study(store, args.run)
    if study is None:
        raise UsageError(f"run {args.run!r} not found in {store.url} (no runs/{args.run}/study.yaml)")
    dest = Path(args.to)
    report = pull(store, f"runs/{args.run}/", dest, expected=expected_bundles(study, args.run), workers=args.workers)
    print(f"pulled {len(report.bundles)} committed bundles, {report.files} files, {report.bytes / 1e6:.1f} MB "
          f"into {dest} in {report.seconds:.1f}s (every sha256 verified)")
    for k in report.missing_bundles:
        print(f"missing (not committed): {k}")
    for k in report.missing_files:
        print(f"MISSING FILE (listed in a commit, not in the store): {k}")
    for k in report.corrupt:
        print(f"CORRUPT (sha256 or size differs from its commit): {k}")
    for k in report.kept:
        print(f"kept the earlier pulled copy of {k} (its files still verify)")
    if not report.ok:
        print(f"error: {len(report.corrupt)} corrupt and {len(report.missing_files)} missing files; "
              "their bundles were not marked committed in the pulled folder", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_status(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.runner import check_run_id, load_frozen_study, status_rows

    check_run_id(args.run)
    if args.cluster:
        from lorascope.k8s.launcher import pipeline_status

        return pipeline_status(args.run, namespace=args.namespace, context=args.context)
    store = _open_store(args.store, env, write=False)
    study = load_frozen_study(store, args.run)
    if study is None:
        raise UsageError(f"run {args.run!r} not found in {store.url} (no runs/{args.run}/study.yaml)")
    rows = status_rows(store, args.run, study)
    print(f"run {args.run}  study={study.name} hash={study.hash}  store={store.url}")
    current = None
    for phase, bundle, state in rows:
        if phase != current:
            done = sum(1 for p, _, s in rows if p == phase and s == "committed")
            total = sum(1 for p, _, _ in rows if p == phase)
            print(f"\n[{phase}] {done}/{total} committed")
            current = phase
        print(f"  {state:<12} {bundle}")
    missing = [p for p in PHASE_ORDER if p not in available_phases()]
    if missing:
        print(f"\nphases not implemented in this version: {', '.join(missing)}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ parser
def version_line(env: Mapping[str, str]) -> str:
    """`lorascope --version`: the package version and the code version (the one stamped into every commit; in an
    image, the LORASCOPE_CODE_VERSION its build was given)."""
    from lorascope import __version__
    from lorascope.runner import code_version

    return f"lorascope {__version__} (code {code_version(env)})"


def build_parser(env: Mapping[str, str] | None = None) -> Parser:
    version = version_line(env or {})
    p = Parser(
        prog="lorascope", description="LoRA vs full fine-tuning: representation drift and serving cost.", epilog=version
    )
    p.add_argument("--version", action="version", version=version)
    add_log_flags(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    v = sub.add_parser("validate", help="validate a study file (exit 2 naming the bad field)")
    v.add_argument("study_file", help="the study YAML to check (e.g. jobs/smoke.yaml)")
    v.set_defaults(func=cmd_validate)

    g = sub.add_parser("grid", help="print the task x method x seed grid with its Job indexes")
    g.add_argument("study_file", nargs="?", help="the study YAML whose grid to print")
    g.add_argument("--study", help="the study YAML (same as the positional argument)")
    g.set_defaults(func=cmd_grid)

    def common(sp: argparse.ArgumentParser, study_required: bool = False) -> None:
        sp.add_argument("--study", required=study_required, help="study YAML (default for phases: the run's frozen study)")
        sp.add_argument("--store", help="folder, file:///path or s3://bucket/prefix (env LORASCOPE_STORE)")
        sp.add_argument("--run-id", help="run id (env LORASCOPE_RUN_ID; default <study>-<hash8>)")
        sp.add_argument("--work-dir", help="local scratch and cache (env LORASCOPE_WORK_DIR)")

    r = sub.add_parser("run", help="run phases in order locally through the same functions the Jobs call")
    common(r, study_required=True)
    r.add_argument("--phases", help=f"comma list from {','.join(PHASE_ORDER)} (default: all implemented)")
    r.add_argument("--jobs", type=int, default=1,
                   help="indexes of a phase run in this many worker processes (each imports once, runs index after index)")
    r.set_defaults(func=cmd_run)

    for name, phase in PHASES.items():  # each subcommand's help is its Phase's description, reads, writes, needs
        sp = sub.add_parser(name, help=phase.description, description=phase.help_text(), epilog=version,
                            formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        common(sp)
        sp.add_argument("--index", type=int, help="index (env JOB_COMPLETION_INDEX; default: every index in turn)")
        if name == "report":
            sp.add_argument("source", nargs="?", help="a folder made by `lorascope pull` (used as --store)")
        sp.set_defaults(func=cmd_phase, phase=name)

    pl = sub.add_parser("pull", help="download a run's committed bundles and verify every checksum")
    pl.add_argument("run", help="run id (runs/<run> in the store; `lorascope status` and `lorascope run` print it)")
    pl.add_argument("--store", help="folder, file:///path or s3://bucket/prefix to pull from (env LORASCOPE_STORE)")
    pl.add_argument("--to", required=True, help="local folder to write the bundles into (`lorascope report DIR` reads it)")
    pl.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                    help=f"parallel downloads (default {DEFAULT_WORKERS})")
    pl.set_defaults(func=cmd_pull)

    st = sub.add_parser("status", help="per phase and cell: committed, in progress, missing")
    st.add_argument("run", help="run id (runs/<run> in the store)")
    st.add_argument("--store", help="folder, file:///path or s3://bucket/prefix (env LORASCOPE_STORE)")
    st.add_argument("--cluster", action="store_true", help="the run's JobSet and its phase Jobs on the cluster")
    st.add_argument("--namespace", default="lorascope", help="with --cluster")
    st.add_argument("--context", help="with --cluster: kubeconfig context")
    st.set_defaults(func=cmd_status)

    if importlib.util.find_spec("lorascope.k8s.cli") is not None:
        from lorascope.k8s import cli as k8s_cli

        k8s_cli.register(sub)
    for sp in sub.choices.values():  # `lorascope run -v` works as `lorascope -v run` does
        add_log_flags(sp, top=False)
    return p


def add_log_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """-v/-q/--log-level on the top-level parser (defaults) and on every subcommand; a subcommand's copies default to
    SUPPRESS, so they set the value only when given after the subcommand."""
    dflt = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("-v", "--verbose", action="count", **({"default": 0} if top else dflt),
                   help="log debug lines too (per-step training, per-configuration timings)")
    p.add_argument("-q", "--quiet", action="count", **({"default": 0} if top else dflt),
                   help="log warnings and errors only (-qq: errors only)")
    p.add_argument("--log-level", choices=list(LEVELS), type=str.lower, **dflt,
                   help=f"log level (env {ENV_LEVEL}; default info); wins over -v and -q")


def die_with_parent(env: Mapping[str, str]) -> None:
    """A child of `lorascope run --jobs N` (LORASCOPE_PARENT_PID set) must not outlive it: on Linux the kernel sends
    SIGTERM when the parent dies (PR_SET_PDEATHSIG), elsewhere a thread polls the parent pid. Even `kill -9` of the
    parent then stops the children before they train on or commit."""
    raw = env.get("LORASCOPE_PARENT_PID")
    if not raw or not raw.isdigit():
        return
    parent = int(raw)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0:  # PR_SET_PDEATHSIG = 1
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(EXIT_FAILURE)
                return
        except (OSError, AttributeError):
            pass
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(EXIT_FAILURE)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    die_with_parent(env)
    try:
        args = build_parser(env).parse_args(argv)
        try:
            level = level_from(args.verbose, args.quiet, args.log_level, env)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.verbose or args.quiet or args.log_level:  # children (--jobs N, the bench's vLLM index) log alike
            env[ENV_LEVEL] = os.environ[ENV_LEVEL] = level
        configure_logging(level, environ=os.environ)
        # SIGTERM (eviction, preemption, drain): last checkpoint if it fits, exit 143 within LORASCOPE_STOP_SECONDS
        with termination.installed(termination.Termination(termination.budget_from(env))):
            return args.func(args, env)
    except termination.Terminated as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return termination.EXIT_TERMINATED
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LorascopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, read-only file system, permissions: one line naming the file
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}:{where} ({type(exc).__name__})", file=sys.stderr)
        return EXIT_FAILURE
    except Exception:
        traceback.print_exc()
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
