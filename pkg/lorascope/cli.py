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

from lorascope.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, LorascopeError
from lorascope.log import Logger
from lorascope.phases import PHASE_ORDER, PhaseContext, available_phases, get_phase
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
    return {k: v for k, v in env.items() if k.startswith("LORASCOPE_") or k == "JOB_COMPLETION_INDEX"}


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


def _open_store(url: str | None, env: Mapping[str, str], workers: int = DEFAULT_WORKERS) -> Store:
    from lorascope.runner import code_version

    url = url or env.get("LORASCOPE_STORE")
    if not url:
        raise UsageError("no store: pass --store (a folder, file:///path or s3://bucket/prefix) or set LORASCOPE_STORE")
    return Store.open(url, code_version=code_version(env), workers=workers)


def _study_and_run(args: argparse.Namespace, store: Store, env: Mapping[str, str]) -> tuple[Study, str]:
    """The study from --study (frozen into the run on first use) or, without it, the run's frozen study."""
    from lorascope.runner import default_run_id, find_runs, freeze_study, load_frozen_study

    run_id = getattr(args, "run_id", None) or env.get("LORASCOPE_RUN_ID")
    if args.study:
        study = load_study(args.study)
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
def cmd_validate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    study = load_study(args.study_file)
    cells = study.cells()
    print(f"{args.study_file}: ok  study={study.name} hash={study.hash} cells={len(cells)} "
          f"tasks={[t.name for t in study.tasks]} methods={[m.name for m in study.methods]} seeds={study.seeds}")
    return EXIT_OK


def cmd_grid(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    path = args.study_file or args.study
    if not path:
        raise UsageError("grid: give the study file (lorascope grid jobs/study.yaml)")
    study = load_study(path)
    print(f"{'index':>5}  {'task':<6} {'method':<8} {'seed':>5}  cell")
    for c in study.cells():
        print(f"{c.index:>5}  {c.task:<6} {c.method:<8} {c.seed:>5}  {c.name}")
    print(f"# {len(study.cells())} cells, order: task-major, then method, then seed (JOB_COMPLETION_INDEX = index)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.runner import LocalRun, resolve_phases

    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1 (got {args.jobs})")
    study = load_study(args.study)  # validate before touching anything
    phases = resolve_phases(args.phases)
    store = _open_store(args.store or env.get("LORASCOPE_STORE") or "store", env)
    study, run_id = _study_and_run(args, store, env)
    ctx = PhaseContext(study, store, run_id, _work_dir(args, env), _env_settings(env), Logger(run=run_id))
    t0 = time.perf_counter()
    ctx.log("run start", study=study.name, store=store.url, phases=",".join(phases))
    LocalRun(ctx, Path(args.study), store.url, jobs=args.jobs).run(phases)
    ctx.log("run done", seconds=round(time.perf_counter() - t0, 1), store=store.url)
    print(f"run {run_id} done: results in {store.url}/runs/{run_id}/")
    return EXIT_OK


def cmd_phase(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.runner import run_phase_index

    phase = get_phase(args.phase)
    if getattr(args, "source", None):  # `lorascope report DIR`: a folder made by `lorascope pull`
        args.store = args.store or args.source
    store = _open_store(args.store, env)
    study, run_id = _study_and_run(args, store, env)
    ctx = PhaseContext(study, store, run_id, _work_dir(args, env), _env_settings(env), Logger(run=run_id))
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


def cmd_pull(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.runner import expected_bundles, load_frozen_study

    store = _open_store(args.store, env, workers=args.workers)
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
    if not report.ok:
        print(f"error: {len(report.corrupt)} corrupt and {len(report.missing_files)} missing files; "
              "their bundles were not marked committed in the pulled folder", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_status(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.runner import load_frozen_study, status_rows

    store = _open_store(args.store, env)
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
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    v = sub.add_parser("validate", help="validate a study file (exit 2 naming the bad field)")
    v.add_argument("study_file")
    v.set_defaults(func=cmd_validate)

    g = sub.add_parser("grid", help="print the task x method x seed grid with its Job indexes")
    g.add_argument("study_file", nargs="?")
    g.add_argument("--study")
    g.set_defaults(func=cmd_grid)

    def common(sp: argparse.ArgumentParser, study_required: bool = False) -> None:
        sp.add_argument("--study", required=study_required, help="study YAML (default for phases: the run's frozen study)")
        sp.add_argument("--store", help="folder, file:///path or s3://bucket/prefix (env LORASCOPE_STORE)")
        sp.add_argument("--run-id", help="run id (env LORASCOPE_RUN_ID; default <study>-<hash8>)")
        sp.add_argument("--work-dir", help="local scratch and cache (env LORASCOPE_WORK_DIR)")

    r = sub.add_parser("run", help="run phases in order locally through the same functions the Jobs call")
    common(r, study_required=True)
    r.add_argument("--phases", help=f"comma list from {','.join(PHASE_ORDER)} (default: all implemented)")
    r.add_argument("--jobs", type=int, default=1, help="indexes of a phase run in parallel processes")
    r.set_defaults(func=cmd_run)

    for name in PHASE_ORDER:
        sp = sub.add_parser(name, help=f"run the {name} phase for one index (Kubernetes entrypoint)", epilog=version)
        common(sp)
        sp.add_argument("--index", type=int, help="index (env JOB_COMPLETION_INDEX; default: every index in turn)")
        if name == "report":
            sp.add_argument("source", nargs="?", help="a folder made by `lorascope pull` (used as --store)")
        sp.set_defaults(func=cmd_phase, phase=name)

    pl = sub.add_parser("pull", help="download a run's committed bundles and verify every checksum")
    pl.add_argument("run")
    pl.add_argument("--store")
    pl.add_argument("--to", required=True)
    pl.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    pl.set_defaults(func=cmd_pull)

    st = sub.add_parser("status", help="per phase and cell: committed, in progress, missing")
    st.add_argument("run")
    st.add_argument("--store")
    st.set_defaults(func=cmd_status)

    if importlib.util.find_spec("lorascope.k8s.cli") is not None:
        from lorascope.k8s import cli as k8s_cli

        k8s_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    try:
        args = build_parser(env).parse_args(argv)
        return args.func(args, env)
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
    except Exception:
        traceback.print_exc()
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
