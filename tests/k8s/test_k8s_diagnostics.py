"""What keeps a phase Job's pods from running, read from recorded API objects (tests/k8s/data/diagnostics.json: core/v1
Events and Kueue v1beta2 Workloads as the API server returns them), and what the launcher does about it: stop at once
(PodSecurity, Autopilot's Warden, a ClusterQueue that does not cover a resource, a missing LocalQueue), stop after a
grace (no GCE quota for L4s, a volume that cannot be mounted), or say why and wait (a stockout, no node group, a full
ResourceQuota, Kueue waiting for quota)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from lorascope.errors import EXIT_CONFIG, EXIT_OK
from lorascope.k8s import infra, kueue, render
from lorascope.k8s.launcher import Launcher
from lorascope.k8s.status import STOP, STOP_LATER, WARN, diagnose
from lorascope.study import load_study
from tests.fixtures.k8s_objects import UID, allowed, api_call, condition, deserialize, job, pod
from tests.fixtures.manifests import kubernetes_validate as validate
from tests.fixtures.manifests import strict

DATA = Path(__file__).parent / "data"
CASES = {k: v for k, v in json.loads((DATA / "diagnostics.json").read_text()).items() if not k.startswith("_")}
KUEUE = json.loads((DATA / "kueue-v0.19.2-openapi.json").read_text())
POD = "lorascope-train-3-q9d4m"
ACTION = {"stop": STOP, "stop-later": STOP_LATER, "warn": WARN}


def job_and_pods(shape: str):
    if shape == "none-started":
        return job(active=0), []
    if shape == "one-unschedulable":
        return job(active=1), [pod(3, POD, phase="Pending", unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")]
    if shape == "one-creating":
        return job(active=1), [pod(3, POD, phase="Pending", waiting=("ContainerCreating", ""))]
    if shape == "one-running":
        return job(active=6, completed="0-2"), [pod(3, POD, phase="Running")]
    if shape == "suspended":
        return job(suspend=True, conditions=[condition("Suspended", "JobSuspended", "Job suspended")]), []
    raise AssertionError(shape)


def events_of(case: dict) -> list:
    return [deserialize(e, "CoreV1Event") for e in case["events"]]


# ------------------------------------------------------------------------------------------------ the recordings
def test_the_recorded_objects_have_the_apis_own_shape(tmp_path):
    """Events pass `kubernetes-validate --strict` as core/v1 Events; Workloads validate against Kueue v0.19.2's v1beta2
    Workload CRD schema (unknown fields refused) and carry the label the launcher finds them by."""
    events = [e for c in CASES.values() for e in c["events"]]
    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump_all(events))
    r = validate([path])
    assert r.returncode == 0 and r.stdout.count("passed") == len(events) == 10, r.stdout
    schema = jsonschema.Draft7Validator(strict(KUEUE["kinds"]["Workload"]["openAPIV3Schema"]))
    workloads = [w for c in CASES.values() for w in c.get("workloads", [])]
    assert len(workloads) == 4
    for wl in workloads:
        assert [e.message for e in schema.iter_errors(wl)] == []
        assert wl["metadata"]["labels"][kueue.JOB_UID_LABEL] == UID
    bad = dict(workloads[0], spec={**workloads[0]["spec"], "queueNamee": "x"})
    assert list(schema.iter_errors(bad))  # the schema does refuse what the API server would


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_recorded_case_is_decided(name):
    case = CASES[name]
    j, pods = job_and_pods(case["job"])
    found = diagnose(j, pods, events_of(case), case.get("workloads", []))
    if case["expect"] == "none":
        assert found == []
        return
    assert [f.action for f in found] == [ACTION[case["expect"]]], [f.line() for f in found]
    f = found[0]
    recorded = case["workloads"][0]["status"]["conditions"][0]["message"] if case.get("workloads") else case["events"][-1]["message"]
    assert f.message == " ".join(recorded.split())  # the API's own words, whitespace folded
    if name == "autopilot":
        assert "lorascope needs a GKE Standard cluster" in f.hint
    if name == "no-l4-quota":
        assert f.grace_s == 600 and "NVIDIA_L4_GPUS" in f.hint and f.where == f"pod {POD}"
    if name == "kueue-uncovered":
        assert "cover cpu, memory, ephemeral-storage and nvidia.com/gpu" in f.hint


def test_a_job_whose_pods_all_run_is_not_blamed_for_its_old_failed_create():
    j, pods = job(active=6, completed="0-5"), [pod(i, f"p{i}") for i in range(6, 12)]
    assert diagnose(j, pods, events_of(CASES["podsecurity"])) == []


# ------------------------------------------------------------------------------------------------ the launcher
class StuckCluster:
    """One Job that does not get running: its pods, Events and Workloads as recorded; every call needs a timeout."""

    def __init__(self, case: dict, kueue_installed: bool = True) -> None:
        self.job, self.pods = job_and_pods(case["job"])
        self.events = case["events"]
        self.workloads = case.get("workloads", [])
        self.kueue_installed = kueue_installed
        self.calls: list = []

    @api_call("batch", "jobs", "get", 0)
    def read_namespaced_job(self, name, namespace):
        return self.job

    @api_call("", "pods", "list")
    def list_namespaced_pod(self, namespace, label_selector=""):
        return SimpleNamespace(items=self.pods)

    @api_call("", "events", "list")
    def list_namespaced_event(self, namespace, field_selector=""):
        uid = field_selector.split("involvedObject.uid=", 1)[1]
        return SimpleNamespace(items=[deserialize(e, "CoreV1Event") for e in self.events if e["involvedObject"]["uid"] == uid])

    @api_call("kueue.x-k8s.io", "workloads", "list")
    def list_namespaced_custom_object(self, group, version, namespace, plural, label_selector=""):
        assert (group, version, plural) == ("kueue.x-k8s.io", "v1beta2", "workloads")
        if not self.kueue_installed:
            raise ApiException(status=404)
        return {"items": [w for w in self.workloads if label_selector == f"kueue.x-k8s.io/job-uid={w['metadata']['labels']['kueue.x-k8s.io/job-uid']}"]}


def _launcher(cluster, smoke_study_path, **opts):
    study = load_study(smoke_study_path)
    now = [0.0]
    la = Launcher(cluster, cluster, study, smoke_study_path.read_text(), render.RenderOptions(overlay="kind", **opts),
                  out=io.StringIO(), poll_seconds=30, sleep=lambda s: now.__setitem__(0, now[0] + s),
                  clock=lambda: now[0], custom=cluster)  # fmt: skip
    return la, now


def test_the_launcher_stops_at_once_on_a_pod_security_refusal_with_the_servers_words(smoke_study_path):
    cluster = StuckCluster(CASES["podsecurity"])
    la, now = _launcher(cluster, smoke_study_path)
    assert la.wait("train", timeout_s=7 * 24 * 3600) == EXIT_CONFIG
    text = la.out.getvalue()
    assert now[0] == 0  # the first poll: it cannot heal
    assert "[train] cannot run: FailedCreate (Job lorascope-train): Error creating: pods" in text
    assert 'violates PodSecurity "restricted:v1.33"' in text and "kubectl -n lorascope delete job lorascope-train" in text


def test_no_l4_quota_is_said_at_once_and_stops_the_wait_after_ten_minutes_not_at_the_13_h_deadline(smoke_study_path):
    cluster = StuckCluster(CASES["no-l4-quota"])
    la, now = _launcher(cluster, smoke_study_path)
    assert la.wait("train", timeout_s=7 * 24 * 3600) == EXIT_CONFIG
    text = la.out.getvalue()
    assert text.count("[train] waiting: FailedScaleUp") == 1  # said once, then waited on
    assert 600 <= now[0] <= 630 and "cannot run for 600 s: FailedScaleUp" in text and "GCE quota exceeded" in text


def test_a_stockout_and_kueue_waiting_for_quota_are_shown_and_waited_on(smoke_study_path):
    said = {
        "stockout": "[train] waiting: FailedScaleUp (pod lorascope-train-3-q9d4m): Node scale up in zones us-central1-a "
        "associated with this pod failed: GCE out of resources.",
        "kueue-waiting": "[train] waiting: Kueue Pending (Workload job-lorascope-train-3f1c1): couldn't assign flavors to "
        "pod set main: insufficient unused quota for nvidia.com/gpu in flavor l4, 4 more needed",
        "resourcequota": "[train] waiting: FailedCreate (Job lorascope-train): Error creating: pods",
        "no-node-group": "[train] waiting: NotTriggerScaleUp (pod lorascope-train-3-q9d4m): pod didn't trigger scale-up",
    }
    for name, words in said.items():
        la, now = _launcher(StuckCluster(CASES[name]), smoke_study_path)
        assert la.wait("train", timeout_s=3600) == 1  # gave up waiting at the timeout; the Job goes on
        text = la.out.getvalue()
        assert "giving up waiting" in text and text.count(words) == 1, (name, text)


def test_a_queue_that_can_never_admit_the_job_stops_the_launcher(smoke_study_path):
    for name, words in (("kueue-uncovered", "resource ephemeral-storage unavailable in ClusterQueue"),
                        ("kueue-no-localqueue", "LocalQueue lorascope is terminating or missing")):  # fmt: skip
        la, now = _launcher(StuckCluster(CASES[name]), smoke_study_path)
        assert la.wait("train", timeout_s=3600) == EXIT_CONFIG and now[0] == 0
        assert words in la.out.getvalue()
    # without Kueue installed, a suspended Job is just waited on (no Workload API: 404)
    la, _ = _launcher(StuckCluster(CASES["kueue-waiting"], kueue_installed=False), smoke_study_path)
    assert la.wait("train", timeout_s=100) == 1


def test_every_call_the_diagnostics_make_is_allowed_by_the_shipped_role(smoke_study_path):
    rules = infra.launcher_rules()
    for name in CASES:
        cluster = StuckCluster(CASES[name])
        la, _ = _launcher(cluster, smoke_study_path)
        la.wait("train", timeout_s=100)
        assert cluster.calls and all(allowed(rules, c) for c in cluster.calls), [c for c in cluster.calls if not allowed(rules, c)]
        kinds = {(g, r, v) for g, r, v, _ in cluster.calls}
        assert ("", "events", "list") in kinds or name == "stale-mount", name
    # and the rules would refuse what they must: another Secret, a JobSet patch, a cluster-scoped read
    assert not allowed(rules, ("", "secrets", "get", "someone-elses-token"))
    assert allowed(rules, ("", "secrets", "get", "lorascope-s3"))
    assert not allowed(rules, ("", "secrets", "list", None)) and not allowed(rules, ("", "namespaces", "get", "lorascope"))


def test_the_launcher_returns_ok_once_the_job_completes_after_a_warning(smoke_study_path):
    cluster = StuckCluster(CASES["stockout"])
    la, now = _launcher(cluster, smoke_study_path)
    original = cluster.read_namespaced_job

    def later(self_name, namespace, **kw):
        if now[0] >= 120:  # the autoscaler found an L4 in another zone; the Job ran and completed
            cluster.job = job(completions=18, completed="0-17", conditions=[condition("Complete")])
            cluster.pods = []
        return original(self_name, namespace, **kw)

    cluster.read_namespaced_job = later
    assert la.wait("train", timeout_s=3600) == EXIT_OK
    assert "[train] waiting: FailedScaleUp (pod lorascope-train-3-q9d4m)" in la.out.getvalue()
