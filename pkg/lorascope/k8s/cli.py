"""`lorascope render` and `lorascope cluster run|status`, registered into the main parser by lorascope.cli."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from lorascope.errors import EXIT_OK
from lorascope.k8s.overlays import LAUNCHABLE, OVERLAYS
from lorascope.phases import PHASE_ORDER, get_phase, select_phases
from lorascope.study import load_study


def _render_options(args: argparse.Namespace, env: Mapping[str, str] | None = None):
    """RenderOptions from the command line. The launcher (env given) tags images with the code version when no
    --image-tag is given; `lorascope render` leaves the tag to the overlay (gke: required)."""
    from lorascope.k8s.render import RenderOptions

    kw = {
        "overlay": args.overlay,
        "namespace": args.namespace,
        "run_id": args.run_id,
        "parallelism": args.parallelism,
        "spot": args.spot,
        "queue": args.queue,
        "registry": args.registry,
        "image_tag": args.image_tag,
    }
    if args.store_url:
        kw["store_url"] = args.store_url
    if env is not None and not args.image_tag:
        from lorascope.k8s.overlays import get_overlay
        from lorascope.runner import code_version

        # the one tag rule (overlays.Overlay.image_tag): the code version's tag and the overlay's image variant (kind:
        # the CPU-torch images, <tag>-cpu, as make images IMAGE_VARIANT=cpu and make kind-load name them)
        kw["image_tag"] = get_overlay(args.overlay).image_tag(code_version(env))
    return RenderOptions(**kw)


def cmd_render(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.k8s import manifests

    study = load_study(args.study)
    text = Path(args.study).read_text()
    files = manifests.render_files(study, text, _render_options(args))
    for p in manifests.write_files(files, Path(args.out)):
        print(p)
    sizes = {p: get_phase(p).size(study) for p in PHASE_ORDER}
    print(f"# study {study.name} (hash {study.hash}): " + ", ".join(f"{p}={n}" for p, n in sizes.items()))
    return EXIT_OK


def cmd_cluster_run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.k8s.launcher import Launcher

    study = load_study(args.study)
    opts = _render_options(args, env).resolved(study)  # bad options (gke without --registry) exit 2 before any API call
    if args.detach:
        from lorascope.k8s import jobset

        jobset.pipeline_jobset(study, opts)  # --detach --queue is refused here, before any API call (k8s/kueue.py)
    launcher = Launcher.connect(
        study,
        Path(args.study).read_text(),
        opts,
        context=args.context,
        store_url=args.check_store,
        env=env,
        poll_seconds=args.poll_seconds,
    )
    if args.detach:
        return launcher.submit_jobset()
    return launcher.run(phases=select_phases(args.phases, args.until), timeout_s=args.timeout)


def cmd_cluster_status(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from lorascope.k8s.launcher import cluster_status

    return cluster_status(namespace=args.namespace, context=args.context, run_id=args.run_id)


def _render_args(sp: argparse.ArgumentParser, overlay_choices: tuple[str, ...], default_overlay: str | None) -> None:
    sp.add_argument("--study", required=True, help="study YAML (jobs/study.yaml; the kind overlay: jobs/smoke.yaml)")
    sp.add_argument("--overlay", choices=overlay_choices, default=default_overlay, required=default_overlay is None)
    sp.add_argument("--namespace", default="lorascope")
    sp.add_argument("--run-id", help="default: <study>-<hash8>, as `lorascope run` would name it")
    sp.add_argument("--parallelism", type=int, help="pods at once per GPU phase (default: 6; kind: 2)")
    sp.add_argument("--store-url", help="s3://bucket/prefix the pods use (default: s3://lorascope/store)")
    sp.add_argument(
        "--registry",
        help="image repository prefix: <registry>/<phase>:<tag> (gke: required, e.g. "
        "europe-west4-docker.pkg.dev/PROJECT/lorascope; kind: localhost/lorascope)",
    )
    sp.add_argument(
        "--image-tag",
        help="image tag (render --overlay gke: required; cluster run: the code version, 0.1.0+gSHA -> 0.1.0-gSHA)",
    )
    sp.add_argument("--spot", action="store_true", help="gke: GPU Jobs on spot L4 nodes")
    sp.add_argument("--queue", help="gke: Kueue LocalQueue to submit the phase Jobs to (not with --detach: a JobSet "
                    "would reserve every phase at once)")


def register(subparsers) -> None:
    r = subparsers.add_parser("render", help="write the Kubernetes manifests for a study (manifests/)")
    _render_args(r, OVERLAYS, "base")
    r.add_argument("--out", required=True, help="folder: manifests/ (base), manifests/kind (kind), yours (gke)")
    r.set_defaults(func=cmd_render)

    c = subparsers.add_parser("cluster", help="run the study as Kubernetes Jobs and watch them")
    # the main parser's class (lorascope.cli.Parser: usage errors raise ConfigError, exit 2), without importing
    # lorascope.cli, which imports this module
    csub = c.add_subparsers(dest="cluster_command", required=True, parser_class=type(c))
    cr = csub.add_parser("run", help="apply the phase Jobs in order, wait on each; run again to continue")
    _render_args(cr, LAUNCHABLE, None)
    cr.add_argument("--phases", help=f"comma list from {','.join(PHASE_ORDER)} (default: all)")
    cr.add_argument("--until", help="stop after this phase (e.g. train)")
    cr.add_argument("--context", help="kubeconfig context (default: the current one)")
    cr.add_argument(
        "--check-store",
        help="also skip phases whose bundles are committed in this store URL "
        "(reachable from here, e.g. through a port-forward)",
    )
    cr.add_argument("--timeout", type=float, default=7 * 24 * 3600, help="seconds to wait per phase")
    cr.add_argument("--poll-seconds", type=float, default=10.0)
    cr.add_argument(
        "--detach",
        action="store_true",
        help="submit the whole pipeline as one JobSet (needs JobSet >= v0.12.0 on the cluster) and return; "
        "`lorascope status RUN --cluster` shows it",
    )
    cr.set_defaults(func=cmd_cluster_run)

    cs = csub.add_parser("status", help="the lorascope Jobs in a namespace and their indexes")
    cs.add_argument("--namespace", default="lorascope")
    cs.add_argument("--run-id", help="only this run's Jobs")
    cs.add_argument("--context")
    cs.set_defaults(func=cmd_cluster_status)
