"""What the rendered objects decide for a real cluster (issue 25): the Kueue example admits every phase Job, partial
admission keeps the deadline sound, the NetworkPolicies let only the HPO workers reach PostgreSQL, SIGTERM gets its
grace, one image tag rule for files, launcher and make, and the Autopilot refusal (Standard only) still holds."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from lorascope import __version__
from lorascope.k8s import kueue, manifests, overlays, render
from lorascope.phases import PHASE_ORDER, get_phase
from lorascope.study import load_study
from lorascope.termination import STOP_BUDGET_ENV
from tests.fixtures.manifests import MANIFESTS, REPO, load_objects, manifest_files, pod_templates, strict

KUEUE = json.loads((Path(__file__).parent / "data" / "kueue-v0.19.2-openapi.json").read_text())
STUDY = REPO / "jobs" / "study.yaml"
GKE = dict(overlay="gke", registry="europe-west4-docker.pkg.dev/p/lorascope", image_tag="0.1.0-gabc")


@pytest.fixture(scope="module")
def study():
    return load_study(STUDY)


# ------------------------------------------------------------------------------------------------ Kueue (items 4, 5)
def test_the_kueue_example_validates_and_covers_every_resource_a_phase_pod_requests(study):
    [*flavors, cq, lq] = load_objects(MANIFESTS / "examples" / "kueue.yaml")
    for obj in (*flavors, cq, lq):
        schema = KUEUE["kinds"][obj["kind"]]["openAPIV3Schema"]
        assert [e.message for e in jsonschema.Draft7Validator(strict(schema)).iter_errors(obj)] == [], obj["kind"]
    [group] = cq["spec"]["resourceGroups"]
    requested = {r for path in manifest_files() if path.parent == MANIFESTS and path.name.endswith("-job.yaml")
                 for o in load_objects(path) for pod in pod_templates(o) for c in pod["containers"]
                 for r in c["resources"]["requests"]}  # fmt: skip
    assert requested == set(group["coveredResources"]) == {"cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"}
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"] and lq["metadata"]["namespace"] == "lorascope"


def _fits(pod: dict, flavor: dict) -> bool:
    """Kueue's flavor match for our pods: the flavor's node labels agree with the pod's nodeSelector, and the pod
    tolerates the flavor's taints."""
    sel = pod.get("nodeSelector", {})
    if any(sel.get(k, v) != v for k, v in flavor["spec"].get("nodeLabels", {}).items()):
        return False
    tol = pod.get("tolerations", [])
    return all(any(t["key"] == taint["key"] and (t["operator"] == "Exists" or t.get("value") == taint["value"])
                   for t in tol) for taint in flavor["spec"].get("nodeTaints", []))  # fmt: skip


@pytest.mark.parametrize("spot", [False, True])
def test_every_phase_job_at_full_parallelism_fits_its_flavor_and_cpu_phases_never_land_on_l4_nodes(study, spot):
    jobs = render.phase_jobs(study, render.RenderOptions(**GKE, spot=spot, queue="lorascope"))
    files = manifests.render_files(study, STUDY.read_text(), render.RenderOptions(**GKE, spot=spot, queue="lorascope"))
    import yaml

    [l4, cpu, cq, _lq] = [o for o in yaml.safe_load_all(files["examples/kueue.yaml"]) if o]
    quota = {f["name"]: {r["name"]: kueue.quantity(r["nominalQuota"]) for r in f["resources"]}
             for f in cq["spec"]["resourceGroups"][0]["flavors"]}  # fmt: skip
    assert [f["name"] for f in cq["spec"]["resourceGroups"][0]["flavors"]] == [kueue.GPU_FLAVOR, kueue.CPU_FLAVOR]
    for phase, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        # Kueue tries the flavors in order: the first that fits the pod's selector and tolerations gets it
        flavor = l4 if _fits(pod, l4) else cpu
        assert (flavor is l4) == get_phase(phase).gpu, phase
        demand = kueue.job_demand(job)
        assert all(demand[r] <= quota[flavor["metadata"]["name"]][r] for r in kueue.COVERED), (phase, demand)
    assert quota["l4"]["nvidia.com/gpu"] == 6 and quota["cpu"]["nvidia.com/gpu"] == 0


def test_partial_admission_leaves_every_admitted_parallelism_time_for_every_index(study):
    """Kueue may admit a GPU Job with any parallelism from job-min-parallelism up; its activeDeadlineSeconds is sized
    for the minimum, so the grid admitted with 2 L4s (9 waves) still has time (before: 13 h for 3 waves at 6)."""
    queued = render.phase_jobs(study, render.RenderOptions(**GKE, queue="lorascope"))
    for phase, job in queued.items():
        spec, ann = job["spec"], job["metadata"]["annotations"]
        low = int(ann.get(render.KUEUE_MIN_PARALLELISM, spec["parallelism"]))
        for admitted in range(low, spec["parallelism"] + 1):
            need = render.INDEX_HOURS[phase] * math.ceil(spec["completions"] / admitted) * 3600
            assert spec["activeDeadlineSeconds"] >= need, (phase, admitted)
    assert queued["train"]["spec"]["activeDeadlineSeconds"] == (4 * 18 + 1) * 3600  # at 1 pod: 18 waves
    plain = render.phase_jobs(study, render.RenderOptions(**GKE))
    assert plain["train"]["spec"]["activeDeadlineSeconds"] == (4 * 3 + 1) * 3600  # not queued: 3 waves of 6


# ------------------------------------------------------------------------------------------------ network (item 12)
def _reaches(policies: list[dict], src: dict[str, str], dst: dict[str, str], port: int) -> bool:
    """NetworkPolicy ingress semantics for pods of one namespace: a pod selected by no Ingress policy takes all
    traffic; a selected pod takes what some selecting policy's rule allows (podSelector matchLabels, ports)."""
    def matches(selector: dict, labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

    selecting = [p for p in policies if "Ingress" in p["spec"]["policyTypes"] and matches(p["spec"]["podSelector"], dst)]
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("ingress", []):
            if any(matches(peer["podSelector"], src) for peer in rule.get("from", [])) and any(
                pr["port"] == port for pr in rule.get("ports", [])
            ):
                return True
    return False


@pytest.mark.parametrize("folder", ["", "kind"])
def test_only_hpo_pods_reach_postgresql_and_every_other_ingress_is_denied(folder):
    base = MANIFESTS / folder if folder else MANIFESTS
    policies = load_objects(base / "infra" / "network-policy.yaml")
    pods = {}
    for path in sorted(base.glob("*-job.yaml")):
        [job] = load_objects(path)
        pods[job["metadata"]["labels"]["lorascope.dev/phase"]] = job["spec"]["template"]["metadata"]["labels"]
    [pg] = [o for o in load_objects(base / "infra" / "postgres.yaml") if o["kind"] == "Deployment"]
    postgres = pg["spec"]["template"]["metadata"]["labels"]
    for phase, labels in pods.items():
        assert _reaches(policies, labels, postgres, 5432) == (phase == "hpo"), phase
        assert not _reaches(policies, pods["hpo"], labels, 8000), phase  # phase pods take no ingress at all
    assert not _reaches(policies, pods["hpo"], postgres, 5433)
    if folder == "kind":
        [minio] = [o for o in load_objects(base / "infra" / "minio.yaml") if o["kind"] == "Deployment"]
        store = minio["spec"]["template"]["metadata"]["labels"]
        assert all(_reaches(policies, labels, store, 9000) for labels in pods.values())
        assert not _reaches(policies, {"app": "someone-else"}, store, 9000)
    [pdb] = [o for o in load_objects(base / "infra" / "postgres.yaml") if o["kind"] == "PodDisruptionBudget"]
    assert pdb["spec"] == {"maxUnavailable": 0, "selector": pg["spec"]["selector"]}


def test_the_role_reads_only_the_two_secrets_by_name():
    [role] = load_objects(MANIFESTS / "infra" / "launcher-role.yaml")
    secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                        "resourceNames": ["lorascope-s3", "lorascope-postgres"]}]  # fmt: skip
    assert {"events"} <= {res for r in role["rules"] for res in r["resources"]}
    assert any(r["apiGroups"] == ["kueue.x-k8s.io"] and "get" in r["verbs"] for r in role["rules"])


# ------------------------------------------------------------------------------------------------ SIGTERM (item 10)
def test_every_phase_pod_has_its_grace_and_a_stop_budget_inside_it(study):
    for path in sorted(MANIFESTS.rglob("*-job.yaml")):
        [job] = load_objects(path)
        pod = job["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        budget = float(env[STOP_BUDGET_ENV])
        # the kubelet's SIGKILL comes after the grace; GKE gives non-system pods 15 s at a spot node's shutdown
        assert budget + 5 <= pod["terminationGracePeriodSeconds"] and budget < 15, path
    spot = render.phase_jobs(study, render.RenderOptions(**GKE, spot=True))
    assert {p: j["spec"]["backoffLimitPerIndex"] for p, j in spot.items()} == {
        p: (6 if get_phase(p).gpu else 2) for p in PHASE_ORDER}  # fmt: skip


# ------------------------------------------------------------------------------------------------ tags (item 9)
def test_one_image_tag_rule_for_the_committed_files_the_launcher_and_make():
    from lorascope.k8s.cli import _render_options
    from lorascope.runner import code_version

    kind, base = overlays.get_overlay("kind"), overlays.get_overlay("base")
    # the committed files: the rule applied to the package version (they are not rendered per commit)
    [grid] = load_objects(MANIFESTS / "kind" / "grid-job.yaml")
    assert grid["spec"]["template"]["spec"]["containers"][0]["image"] == f"localhost/lorascope/train:{kind.image_tag(__version__)}"
    assert kind.image_tag(__version__) == f"{__version__}-cpu" and base.image_tag(__version__) == __version__
    # the launcher: the same rule on this checkout's code version
    import argparse

    args = argparse.Namespace(overlay="kind", namespace="lorascope", run_id=None, parallelism=None, spot=False,
                              queue=None, registry=None, image_tag=None, store_url=None)  # fmt: skip
    launcher_tag = _render_options(args, env={}).image_tag
    assert launcher_tag == kind.image_tag(code_version({}))
    # make: what `make images IMAGE_VARIANT=cpu` builds and `make kind-load` loads and `make kind-render` writes
    make = shutil.which("make")
    r = subprocess.run([make, "-n", "kind-load", "kind-render", "images", "IMAGE_VARIANT=cpu", "ENGINE=podman",
                        f"IMG_PY={sys.executable}", f"K8S_PY={sys.executable}"], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "pkg")})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"localhost/lorascope/train:{launcher_tag}" in r.stdout  # kind load
    assert f"--image-tag {launcher_tag} --out build/kind" in r.stdout  # kind-render
    assert f"-t localhost/lorascope/$p:{launcher_tag} ." in r.stdout  # the images


# ------------------------------------------------------------------------------------------------ Autopilot (item 11)
AUTOPILOT_MAX_EPHEMERAL_GIB = 10  # GKE Autopilot's maximum ephemeral-storage request per pod (docs/cluster.md)


def test_standard_only_holds_every_gke_shaped_pod_asks_for_more_disk_than_autopilot_allows():
    """docs/cluster.md says 'Standard only' because Autopilot rejects pods that request more ephemeral storage than
    its maximum; if the phases ever fit, this fails and the docs (and an Autopilot profile) should change."""
    for path in sorted(MANIFESTS.glob("*-job.yaml")):
        [job] = load_objects(path)
        req = job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["ephemeral-storage"]
        assert kueue.quantity(req) > AUTOPILOT_MAX_EPHEMERAL_GIB * 2**30, path
    text = (REPO / "docs" / "cluster.md").read_text()
    assert "Standard only" in text and "Autopilot" in text


# ------------------------------------------------------------------------------------------------ docs (items 8, 13)
def test_the_docs_name_the_current_run_ids_and_the_readme_path_works_on_a_fresh_cluster():
    import re

    from lorascope.runner import default_run_id

    current = {name: default_run_id(load_study(REPO / "jobs" / f"{name}.yaml")).split("-")[1]
               for name in ("study", "smoke")}  # fmt: skip
    for doc in (REPO / "README.md", REPO / "docs" / "cluster.md"):
        text = doc.read_text()
        for study, h in re.findall(r"\b(reference|smoke)-([0-9a-f]{8})\b", text):
            assert h == current["study" if study == "reference" else "smoke"], f"{doc.name}: stale run id {study}-{h}"
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("**Cloud cluster (GKE"):]
    steps = [block.index(s) for s in ("make gke-render", "namespace.yaml", "create secret generic lorascope-s3",
                                      "kubectl apply -k build/gke", "lorascope cluster run --study")]  # fmt: skip
    assert steps == sorted(steps)  # namespace -> Secrets -> infra and study -> the phases in order
    assert "kubectl apply -f build/gke/grid-job.yaml      #" not in readme  # the old first step that could not work
    # and `kubectl apply -k` of what the README applies holds no phase Job (the kustomization lists none)
    kust = load_objects(MANIFESTS / "kustomization.yaml")[0]["resources"]
    assert not [f for f in kust if f.endswith("-job.yaml")] and "infra/network-policy.yaml" in kust
