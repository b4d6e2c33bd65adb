"""Job and Pod objects in the API server's own wire format (camelCase JSON), turned into the `kubernetes` client's
V1Job / V1Pod by the client's deserializer -- the objects `read_namespaced_job` and `list_namespaced_pod` return."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from kubernetes.client import ApiClient

_CLIENT = ApiClient()
UID = "3f1c1f9e-1111-4222-8333-944455556666"
RUN = "reference-67b50130"
HASH = "67b5013089268245"


def deserialize(data: dict, klass: str) -> Any:
    return _CLIENT.deserialize(SimpleNamespace(data=json.dumps(data)), klass)


def job(
    phase: str = "train",
    completions: int = 18,
    completed: str = "",
    failed: str = "",
    conditions: list[dict] | None = None,
    active: int = 0,
    run_id: str = RUN,
    study_hash: str = HASH,
    suspend: bool = False,
    deleting: bool = False,
) -> Any:
    meta: dict[str, Any] = {
        "name": f"lorascope-{phase}",
        "namespace": "lorascope",
        "uid": UID,
        "creationTimestamp": "2026-11-20T10:00:00Z",
        "labels": {
            "lorascope.dev/phase": phase,
            "lorascope.dev/run-id": run_id,
            "lorascope.dev/study-hash": study_hash,
            "app.kubernetes.io/part-of": "lorascope",
        },
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-20T12:00:00Z"
    status: dict[str, Any] = {
        "startTime": "2026-11-20T10:00:01Z",
        "active": active,
        "ready": active,
        "terminating": 0,
        "uncountedTerminatedPods": {},
    }
    if completed:
        status["completedIndexes"] = completed
    if failed:
        status["failedIndexes"] = failed
    if conditions:
        status["conditions"] = conditions
    return deserialize(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta,
            "spec": {
                "completionMode": "Indexed",
                "completions": completions,
                "parallelism": 6,
                "suspend": suspend,
                "backoffLimitPerIndex": 2,
                "maxFailedIndexes": completions // 3,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "lorascope", "image": "lorascope/train:0.1.0"}],
                    }
                },
            },
            "status": status,
        },
        "V1Job",
    )


def condition(kind: str, reason: str = "", message: str = "", status: str = "True") -> dict:
    c = {
        "type": kind,
        "status": status,
        "lastProbeTime": "2026-11-20T11:00:00Z",
        "lastTransitionTime": "2026-11-20T11:00:00Z",
    }
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def pod(
    index: int,
    name: str,
    phase: str = "Running",
    exit_code: int | None = None,
    reason: str = "",
    message: str = "",
    disrupted: str | None = None,
    created: str = "2026-11-20T10:00:02Z",
    deleting: bool = False,
    waiting: tuple[str, str] | None = None,
    unschedulable: str | None = None,
) -> Any:
    """A pod of the Job. `disrupted` = the DisruptionTarget condition's reason (e.g. TerminationByKubelet on a spot
    node shutdown, PreemptionByScheduler), which the Job's podFailurePolicy ignores. `waiting` = (reason, message)
    of a container that has not started (ErrImagePull, ...); `unschedulable` = the scheduler's message of a pod no
    node fits (PodScheduled False, reason Unschedulable; such a pod has no container statuses yet)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "lorascope",
        "uid": f"{name}-uid",
        "creationTimestamp": created,
        "labels": {
            "batch.kubernetes.io/job-completion-index": str(index),
            "batch.kubernetes.io/controller-uid": UID,
            "batch.kubernetes.io/job-name": "lorascope-train",
            "job-name": "lorascope-train",
        },
        "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": "lorascope-train",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-20T11:00:00Z"
    conds = [condition("PodScheduled"), condition("Initialized")]
    if unschedulable is not None:
        conds = [condition("PodScheduled", reason="Unschedulable", message=unschedulable, status="False")]
    if disrupted:
        conds.append(
            condition(
                "DisruptionTarget",
                reason=disrupted,
                message="Pod was terminated in response to imminent node shutdown.",
            )
        )
    if waiting is not None:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    elif exit_code is None:
        state = {"running": {"startedAt": "2026-11-20T10:00:10Z"}}
    else:
        term = {
            "exitCode": exit_code,
            "startedAt": "2026-11-20T10:00:10Z",
            "finishedAt": "2026-11-20T10:30:00Z",
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        }
        if message:
            term["message"] = message
        state = {"terminated": term}
    return deserialize(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {"restartPolicy": "Never", "containers": [{"name": "lorascope", "image": "lorascope/train:0.1.0"}]},
            "status": {
                "phase": phase,
                "conditions": conds,
                **(
                    {}
                    if unschedulable is not None
                    else {
                        "containerStatuses": [
                            {
                                "name": "lorascope",
                                "image": "lorascope/train:0.1.0",
                                "imageID": "",
                                "ready": exit_code is None and waiting is None,
                                "restartCount": 0,
                                "state": state,
                            }
                        ]
                    }
                ),
            },
        },
        "V1Pod",
    )


def jobset(
    name: str = "lorascope-reference-67b50130",
    phases: tuple[str, ...] = ("stage", "sanity", "hpo", "train", "extract", "drift", "bench", "report"),
    statuses: dict[str, dict] | None = None,
    conditions: list[dict] | None = None,
) -> dict:
    """A JobSet as CustomObjectsApi returns it: plain JSON (no client model), with status.replicatedJobsStatus
    (v0.12.0: name, ready, succeeded, failed, active, suspended per replicated job) and status.conditions."""
    rjs = []
    for i, p in enumerate(phases):
        rj = {"name": p, "replicas": 1, "groupName": "default", "template": {"spec": {"completionMode": "Indexed"}}}
        if i:
            rj["dependsOn"] = [{"name": phases[i - 1], "status": "Complete"}]
        rjs.append(rj)
    st = [
        {"name": p, "ready": 0, "succeeded": 0, "failed": 0, "active": 0, "suspended": 0, **(statuses or {}).get(p, {})}
        for p in phases
    ]
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {
            "name": name,
            "namespace": "lorascope",
            "uid": "9a9a9a9a-1111-4222-8333-944455556666",
            "creationTimestamp": "2026-11-20T10:00:00Z",
            "labels": {"lorascope.dev/run-id": RUN, "lorascope.dev/study-hash": HASH},
        },
        "spec": {"replicatedJobs": rjs, "successPolicy": {"operator": "All"}, "failurePolicy": {"maxRestarts": 0}},
        "status": {"replicatedJobsStatus": st, "conditions": conditions or [], "restarts": 0},
    }


def child_job(jobset_name: str, phase: str, **kw: Any) -> Any:
    """A child Job of a JobSet (name <jobset>-<replicatedJob>-0, the JobSet labels)."""
    j = job(phase, **kw)
    j.metadata.name = f"{jobset_name}-{phase}-0"
    j.metadata.labels.update(
        {"jobset.sigs.k8s.io/jobset-name": jobset_name, "jobset.sigs.k8s.io/replicatedjob-name": phase}
    )
    return j


# ------------------------------------------------------------------------------------------------ fake API servers
def api_call(group: str, resource: str, verb: str, name_arg: int | None = None):
    """Mark a fake API method: it refuses a call without the client's `_request_timeout` (the launcher never waits on
    a socket for ever) and records (group, resource, verb, object name) in `self.calls`, so a test can hold the calls
    the launcher made against the Role it ships (infra.launcher_rules)."""

    def wrap(fn):
        def call(self, *args, _request_timeout=None, **kw):
            assert _request_timeout is not None, f"{fn.__name__} called without a request timeout"
            name = kw.get("name") if name_arg is None else (args[name_arg] if len(args) > name_arg else kw.get("name"))
            self.calls.append((group, resource, verb, name))
            return fn(self, *args, **kw)

        call.__name__ = fn.__name__
        return call

    return wrap


def allowed(rules: list[dict], call: tuple[str, str, str, str | None]) -> bool:
    """Whether RBAC rules allow a call, as the authorizer decides for namespaced requests."""
    group, resource, verb, name = call
    for r in rules:
        if group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]:
            if not r.get("resourceNames") or name in r["resourceNames"]:
                return True
    return False


def event(kind: str, name: str, uid: str, reason: str, message: str, component: str, etype: str = "Warning",
          count: int = 1, last: str = "2026-11-20T10:05:00Z") -> Any:  # fmt: skip
    """A core/v1 Event as `list_namespaced_event` returns it."""
    return deserialize(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.18a1b2c3d4e5f607", "namespace": "lorascope"},
            "involvedObject": {"apiVersion": "batch/v1" if kind == "Job" else "v1", "kind": kind, "name": name,
                               "namespace": "lorascope", "uid": uid},
            "reason": reason,
            "message": message,
            "source": {"component": component},
            "firstTimestamp": "2026-11-20T10:00:05Z",
            "lastTimestamp": last,
            "count": count,
            "type": etype,
            "reportingComponent": component,
            "reportingInstance": "",
        },
        "CoreV1Event",
    )  # fmt: skip
