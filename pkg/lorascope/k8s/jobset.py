"""The whole pipeline as one JobSet (jobset.x-k8s.io/v1alpha2, JobSet >= v0.12.0): one replicated job per phase, each
with one replica (the phase's Indexed Job, exactly as `render.phase_job` builds it), chained with `dependsOn:
[{name: <previous phase>, status: Complete}]`. The JobSet controller creates a phase's Job only after the previous
phase's Job completed, so the cluster runs the pipeline by itself and no laptop has to wait
(`lorascope cluster run --detach`). `lorascope status RUN --cluster` reads it back (`describe`).

JobSet API facts this relies on (v0.12.0, api/jobset/v1alpha2/jobset_types.go and pkg/webhooks/jobset_webhook.go):
  * dependsOn: list of {name, status: Ready|Complete}; one item; not on the first replicated job; mutually exclusive
    with startupPolicy InOrder
  * child Job name = <jobset>-<replicatedJob>-<jobIndex>; the webhook refuses a JobSet whose longest pod name
    (<jobset>-<rj>-<jobIndex>-<podIndex>-xxxxx) would exceed 63 characters: `jobset_name` keeps it short
  * child Jobs carry the labels jobset.sigs.k8s.io/jobset-name and jobset.sigs.k8s.io/replicatedjob-name
  * status.conditions: Completed | Failed | Suspended (| StartupPolicyInProgress ...); status.replicatedJobsStatus:
    per replicated job {name, ready, succeeded, failed, active, suspended}
  * failurePolicy.maxRestarts 0: a failed child Job fails the JobSet (each Job already retries per index)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorascope.k8s import kueue, render
from lorascope.phases import PHASE_ORDER, get_phase
from lorascope.study import Study

GROUP = "jobset.x-k8s.io"
VERSION = "v1alpha2"
PLURAL = "jobsets"
API_VERSION = f"{GROUP}/{VERSION}"
MIN_JOBSET_RELEASE = "v0.12.0"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
NAME_PREFIX = "lorascope-"
MAX_NAME = 36  # + "-extract-0-20-abcde" (the longest pod name of the reference study) stays under 63


def jobset_name(run_id: str) -> str:
    """A DNS-1035 label (starts with a letter) from the run id, short enough for the webhook's pod-name check."""
    return NAME_PREFIX + render.dns_name(run_id, MAX_NAME - len(NAME_PREFIX))


def pipeline_jobset(study: Study, opts: render.RenderOptions) -> dict:
    opts = opts.resolved(study)
    if opts.queue:  # Kueue would reserve every phase at once (k8s/kueue.py): refused, not rendered
        jobs = [render.phase_job(study, p, opts, n) for p in PHASE_ORDER if (n := get_phase(p).size(study)) > 0]
        raise kueue.refuse_jobset_queue(jobs, opts.queue)
    replicated: list[dict[str, Any]] = []
    for phase in PHASE_ORDER:
        n = get_phase(phase).size(study)
        if n == 0:
            continue
        job = render.phase_job(study, phase, opts, n)
        spec = {k: v for k, v in job["spec"].items() if k != "ttlSecondsAfterFinished"}  # the JobSet's TTL rules
        labels = job["metadata"]["labels"]
        annotations = job["metadata"]["annotations"]
        rj: dict[str, Any] = {
            "name": phase,
            "replicas": 1,
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec},
        }
        if replicated:
            rj["dependsOn"] = [{"name": replicated[-1]["name"], "status": "Complete"}]
        replicated.append(rj)
    labels = render.object_labels("pipeline", "pipeline", opts.run_id, opts.image_tag)
    labels.update({"lorascope.dev/run-id": opts.run_id, "lorascope.dev/study-hash": study.hash})
    return {
        "apiVersion": API_VERSION,
        "kind": "JobSet",
        "metadata": {
            "name": jobset_name(opts.run_id),
            "namespace": opts.namespace,
            "labels": labels,
            "annotations": {"lorascope.dev/study": study.name},
        },
        "spec": {
            "replicatedJobs": replicated,
            "successPolicy": {"operator": "All"},
            "failurePolicy": {"maxRestarts": 0},
            "network": {"enableDNSHostnames": False},  # the phases do not talk to each other: no headless Service
            "ttlSecondsAfterFinished": render.TTL_SECONDS,
        },
    }


# ------------------------------------------------------------------------------------------------ reading it back
@dataclass(frozen=True)
class PhaseRow:
    phase: str
    state: str  # succeeded | failed | active | suspended | blocked (waits on dependsOn) | created
    job: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class PipelineView:
    name: str
    run_id: str
    state: str  # succeeded | failed | suspended | running
    reason: str = ""
    rows: list[PhaseRow] = field(default_factory=list)


def _true(conds: list[dict], kind: str) -> dict | None:
    return next((c for c in conds if c.get("type") == kind and c.get("status") == "True"), None)


def describe(js: dict, child_jobs: list[Any] = ()) -> PipelineView:
    """A JobSet as the API returns it (JSON dict from CustomObjectsApi) and its child Jobs (V1Job) -> per phase:
    done / failed / running / waiting on the previous phase."""
    from lorascope.k8s.status import job_state

    meta, spec, st = js["metadata"], js.get("spec", {}), js.get("status") or {}
    conds = st.get("conditions") or []
    if c := _true(conds, "Completed"):
        state = "succeeded"
    elif c := _true(conds, "Failed"):
        state = "failed"
    elif c := _true(conds, "Suspended"):
        state = "suspended"
    else:
        state = "running"
    reason = f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ") if c and state != "succeeded" else ""
    by_rj = {s["name"]: s for s in st.get("replicatedJobsStatus") or []}
    jobs = {(j.metadata.labels or {}).get(REPLICATED_JOB_LABEL): j for j in child_jobs}
    rows = []
    for rj in spec.get("replicatedJobs", []):
        name = rj["name"]
        s = by_rj.get(name, {})
        job = jobs.get(name)
        if s.get("succeeded", 0) >= rj.get("replicas", 1):
            row_state = "succeeded"
        elif s.get("failed", 0):
            row_state = "failed"
        elif s.get("suspended", 0):
            row_state = "suspended"
        elif s.get("active", 0) or s.get("ready", 0):
            row_state = "active"
        elif job is not None:
            row_state = {"succeeded": "succeeded", "failed": "failed", "suspended": "suspended"}.get(
                job_state(job), "created"
            )
        else:
            row_state = "blocked" if rj.get("dependsOn") else "created"
        detail = ""
        if job is not None and job.status is not None:
            n = job.spec.completions or 0
            from lorascope.k8s.status import parse_indexes

            done = len(parse_indexes(job.status.completed_indexes))
            failed = len(parse_indexes(job.status.failed_indexes))
            detail = f"{done}/{n} indexes succeeded, {failed} failed, {job.status.active or 0} pods active"
        elif row_state == "blocked":
            dep = rj["dependsOn"][0]
            detail = f"waits for {dep['name']} to be {dep['status']}"
        rows.append(PhaseRow(name, row_state, job.metadata.name if job is not None else None, detail))
    return PipelineView(
        name=meta["name"],
        run_id=(meta.get("labels") or {}).get("lorascope.dev/run-id", ""),
        state=state,
        reason=reason,
        rows=rows,
    )


def lines(view: PipelineView) -> list[str]:
    out = [f"JobSet {view.name}  run={view.run_id}  {view.state}" + (f"  ({view.reason})" if view.reason else "")]
    for r in view.rows:
        out.append(f"  {r.phase:<8} {r.state:<10} {r.job or '-':<40} {r.detail}".rstrip())
    return out
