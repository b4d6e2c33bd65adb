"""What a phase Job is doing, from the Job and its pods as the API server returns them (the `kubernetes` client's
V1Job / V1Pod). Pure functions, no API calls: the launcher fetches, these decide.

Job status fields used (batch/v1, Indexed Jobs with backoffLimitPerIndex):
  status.completedIndexes / status.failedIndexes   "1,3-5,7" text; an index is in at most one of them
  status.conditions                                 Complete / SuccessCriteriaMet (done), Failed / FailureTarget
                                                    (done, failed; reason FailedIndexes, MaxFailedIndexesExceeded,
                                                    PodFailurePolicy, ...), Suspended (Kueue has not admitted it)
Pod fields used:
  label batch.kubernetes.io/job-completion-index    the index
  status.phase, container state `terminated`        exit code, reason, message (FallbackToLogsOnError: log tail)
  container state `waiting`                         why a Pending pod's container does not start: ErrImagePull,
                                                    ImagePullBackOff, InvalidImageName, ErrImageNeverPull,
                                                    CreateContainerConfigError (a missing Secret or key), ...
  condition PodScheduled=False, reason Unschedulable  no node fits (an L4 stockout, a quota, a taint): the message
                                                    is the scheduler's "0/5 nodes are available: ..."
  condition DisruptionTarget=True                   preempted / evicted / node shut down: not the pod's fault; the
                                                    Jobs' podFailurePolicy ignores it and a replacement pod runs
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lorascope.errors import EXIT_CONFIG

INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
RUN_LABEL = "lorascope.dev/run-id"
HASH_LABEL = "lorascope.dev/study-hash"
PHASE_LABEL = "lorascope.dev/phase"
CONTAINER = "lorascope"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------------------------ index sets
def parse_indexes(text: str | None) -> set[int]:
    """'1,3-5,7' -> {1, 3, 4, 5, 7} (the format of status.completedIndexes and status.failedIndexes)."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.update(range(int(lo), int(hi) + 1))
        else:
            out.add(int(part))
    return out


def format_indexes(indexes: Iterable[int]) -> str:
    """{1, 3, 4, 5, 7} -> '1,3-5,7' (the API's own format: runs of three or more become a range)."""
    xs = sorted(set(indexes))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{xs[i]}-{xs[j]}")
        else:
            parts.extend(str(x) for x in xs[i : j + 1])
        i = j + 1
    return ",".join(parts)


# ------------------------------------------------------------------------------------------------ pods
def pod_index(pod: Any) -> int | None:
    meta = pod.metadata
    raw = (meta.labels or {}).get(INDEX_LABEL) or (meta.annotations or {}).get(INDEX_LABEL)
    return int(raw) if raw is not None else None


def pod_disrupted(pod: Any) -> bool:
    """True when the pod has the DisruptionTarget condition: preempted, evicted, or its node shut down (spot)."""
    return any(c.type == "DisruptionTarget" and c.status == "True" for c in (pod.status.conditions or []))


def pod_terminated(pod: Any) -> Any | None:
    """The lorascope container's `terminated` state (V1ContainerStateTerminated), if it has ended."""
    for cs in pod.status.container_statuses or []:
        if cs.name == CONTAINER and cs.state is not None and cs.state.terminated is not None:
            return cs.state.terminated
    return None


# A container waiting for one of these reasons will not start by itself: the image reference is wrong, the image is
# not on a kind node (pull policy Never), the registry refuses us, or a Secret / ConfigMap key it needs is missing.
# InvalidImageName and ErrImageNeverPull never change; the others get a grace period (a registry hiccup recovers).
FATAL_NOW = frozenset({"InvalidImageName", "ErrImageNeverPull"})
FATAL_AFTER_GRACE = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError", "CreateContainerError"}
)


def fatal_waiting(reason: str) -> bool:
    return reason in FATAL_NOW or reason in FATAL_AFTER_GRACE or reason.startswith(("Err", "Invalid"))


def pod_waiting(pod: Any) -> tuple[str, str] | None:
    """(reason, message) of a pod that has not started: a waiting container (init containers first), else the
    scheduler's Unschedulable condition. None for a pod that runs or ended."""
    st = pod.status
    for cs in [*(st.init_container_statuses or []), *(st.container_statuses or [])]:
        w = cs.state.waiting if cs.state is not None else None
        if w is not None and w.reason and w.reason not in ("ContainerCreating", "PodInitializing"):
            return w.reason, w.message or ""
    if st.phase == "Pending":
        for c in st.conditions or []:
            if c.type == "PodScheduled" and c.status == "False":
                return c.reason or "Unschedulable", c.message or ""
    return None


def pod_active(pod: Any) -> bool:
    return pod.status.phase in ("Pending", "Running") and pod.metadata.deletion_timestamp is None


def pod_failed(pod: Any) -> bool:
    """Failed for a reason of its own (not a disruption)."""
    return pod.status.phase == "Failed" and not pod_disrupted(pod)


def _created(pod: Any) -> datetime:
    return pod.metadata.creation_timestamp or _EPOCH


# ------------------------------------------------------------------------------------------------ jobs
def _condition(job: Any, kind: str) -> Any | None:
    for c in (job.status.conditions if job.status else None) or []:
        if c.type == kind and c.status == "True":
            return c
    return None


def job_state(job: Any) -> str:
    """succeeded | failed | suspended | running.

    Kubernetes >= 1.31 first sets SuccessCriteriaMet / FailureTarget (the outcome is decided, pods may still be
    terminating) and then Complete / Failed; either one decides the state."""
    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return "succeeded"
    if _condition(job, "Failed") or _condition(job, "FailureTarget"):
        return "failed"
    if job.spec.suspend or _condition(job, "Suspended"):
        return "suspended"
    return "running"


def failure_reason(job: Any) -> str:
    """'FailedIndexes: Job has failed indexes' for a failed Job, '' otherwise."""
    c = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if c is None:
        return ""
    return f"{c.reason or 'Failed'}: {c.message or ''}".strip().rstrip(":")


@dataclass(frozen=True)
class IndexRow:
    index: int
    unit: str
    state: str  # succeeded | failed | active | waiting
    tries: int  # pods created for this index
    preempted: int  # pods ended by a disruption (ignored by the podFailurePolicy)
    failures: int  # pods that failed on their own (exit code != 0)
    pod: str | None  # the newest pod
    exit_code: int | None  # the newest ended pod's exit code
    waiting: str = ""  # why the newest pod has not started: "ErrImagePull", "Unschedulable", ...
    waiting_message: str = ""


@dataclass(frozen=True)
class JobView:
    phase: str
    name: str
    run_id: str
    state: str
    completions: int
    rows: list[IndexRow] = field(default_factory=list)
    reason: str = ""

    def count(self, state: str) -> int:
        return sum(1 for r in self.rows if r.state == state)

    def indexes(self, state: str) -> str:
        return format_indexes(r.index for r in self.rows if r.state == state)

    @property
    def preempted(self) -> int:
        return sum(r.preempted for r in self.rows)

    def waiting_rows(self) -> list[IndexRow]:
        return [r for r in self.rows if r.waiting]


def summarize(job: Any, pods: Iterable[Any], unit: Callable[[int], str] | None = None) -> JobView:
    """One row per index: succeeded and failed from the Job's status (the controller's word), active from the pods,
    tries / preemptions / exit code from the pods' history."""
    labels = job.metadata.labels or {}
    n = job.spec.completions or 0
    done = parse_indexes(job.status.completed_indexes if job.status else None)
    failed = parse_indexes(job.status.failed_indexes if job.status else None)
    by_index: dict[int, list[Any]] = {}
    for p in pods:
        i = pod_index(p)
        if i is not None:
            by_index.setdefault(i, []).append(p)
    rows = []
    for i in range(n):
        ps = sorted(by_index.get(i, []), key=lambda p: (_created(p), p.metadata.name))
        if i in done:
            state = "succeeded"
        elif i in failed:
            state = "failed"
        elif any(pod_active(p) for p in ps):
            state = "active"
        else:
            state = "waiting"
        ended = [p for p in ps if pod_terminated(p) is not None]
        newest_ended = ended[-1] if ended else None
        waiting = pod_waiting(ps[-1]) if ps and state == "active" else None
        rows.append(
            IndexRow(
                index=i,
                unit=unit(i) if unit else "",
                state=state,
                tries=len(ps),
                preempted=sum(1 for p in ps if pod_disrupted(p)),
                failures=sum(1 for p in ps if pod_failed(p)),
                pod=ps[-1].metadata.name if ps else None,
                exit_code=pod_terminated(newest_ended).exit_code if newest_ended is not None else None,
                waiting=waiting[0] if waiting else "",
                waiting_message=waiting[1] if waiting else "",
            )
        )
    return JobView(
        phase=labels.get(PHASE_LABEL, job.metadata.name),
        name=job.metadata.name,
        run_id=labels.get(RUN_LABEL, ""),
        state=job_state(job),
        completions=n,
        rows=rows,
        reason=failure_reason(job),
    )


@dataclass(frozen=True)
class FailedPod:
    index: int
    pod: str
    exit_code: int | None
    reason: str
    message: str  # the termination message: with FallbackToLogsOnError, the log tail of a crashed container

    @property
    def config_error(self) -> bool:
        return self.exit_code == EXIT_CONFIG


def failed_pods(job: Any, pods: Iterable[Any]) -> list[FailedPod]:
    """The pods to show when a phase failed: per failed index, its newest pod that failed on its own. Pods ended by
    a disruption are never blamed. When the Job failed without failed indexes (e.g. a deadline), the newest failed
    pod of every index that did not succeed."""
    failed = parse_indexes(job.status.failed_indexes if job.status else None)
    done = parse_indexes(job.status.completed_indexes if job.status else None)
    by_index: dict[int, list[Any]] = {}
    for p in pods:
        i = pod_index(p)
        if i is not None and pod_failed(p):
            by_index.setdefault(i, []).append(p)
    wanted = sorted(failed) if failed else sorted(i for i in by_index if i not in done)
    out = []
    for i in wanted:
        ps = sorted(by_index.get(i, []), key=lambda p: (_created(p), p.metadata.name))
        if not ps:
            continue
        p = ps[-1]
        t = pod_terminated(p)
        out.append(
            FailedPod(
                index=i,
                pod=p.metadata.name,
                exit_code=t.exit_code if t is not None else None,
                reason=(t.reason if t is not None and t.reason else p.status.reason) or "",
                message=(t.message if t is not None and t.message else p.status.message) or "",
            )
        )
    return out


# ------------------------------------------------------------------------------------------------ decisions
@dataclass(frozen=True)
class Decision:
    action: str  # create | skip | wait | patch | recreate | conflict
    why: str


def job_image(job: Any) -> str:
    for c in job.spec.template.spec.containers or []:
        if c.name == CONTAINER:
            return c.image
    return ""


def decide(
    job: Any | None, run_id: str, study_hash: str, want_image: str | None = None, want_parallelism: int | None = None
) -> Decision:
    """What `lorascope cluster run` does with a phase, given the Job of that name now in the namespace (or None).

    * no Job                              -> create
    * this run's Job, succeeded           -> skip (run again = continue where it stopped)
    * this run's Job, running / queued    -> wait on it (the launcher was interrupted, the Job was not)
    * this run's Job, failed              -> recreate: the new Job reruns every index, and each index whose bundle
                                             is committed skips at once, so only the failed ones do work
    * another run's Job, finished         -> recreate for this run
    * another run's Job, running / queued -> conflict: refuse (exit 2) rather than kill someone's run
    * this run's Job, running, but another image than asked (a new --image-tag) -> conflict: say so (a running
      Job's pod template cannot change); with only another --parallelism -> patch (parallelism is mutable)
    """
    if job is None:
        return Decision("create", "no Job yet")
    labels = job.metadata.labels or {}
    same_run = labels.get(RUN_LABEL) == run_id and labels.get(HASH_LABEL) == study_hash
    state = job_state(job)
    if job.metadata.deletion_timestamp is not None:
        return Decision("recreate", "the old Job is being deleted")
    if not same_run:
        other = f"run {labels.get(RUN_LABEL, '?')} (study hash {labels.get(HASH_LABEL, '?')})"
        if state in ("running", "suspended"):
            return Decision(
                "conflict",
                f"Job {job.metadata.name} of {other} is still {state}; wait for it or "
                f"delete it (kubectl delete job {job.metadata.name}), or use another namespace",
            )
        return Decision("recreate", f"replacing the finished Job of {other}")
    if state == "succeeded":
        return Decision("skip", "succeeded earlier")
    if state == "failed":
        return Decision("recreate", f"failed earlier ({failure_reason(job)}); committed indexes will skip")
    if want_image and job_image(job) and job_image(job) != want_image:
        return Decision(
            "conflict",
            f"Job {job.metadata.name} is {state} with image {job_image(job)}, not {want_image} as asked: a running "
            f"Job's pods cannot change image; wait for it, or delete it (kubectl delete job {job.metadata.name}) "
            "and run again (committed indexes skip)",
        )
    if want_parallelism is not None and job.spec.parallelism != want_parallelism:
        return Decision("patch", f"already {state}; parallelism {job.spec.parallelism} -> {want_parallelism}")
    return Decision("wait", f"already {state}")


# ------------------------------------------------------------------------------------------------ text
def headline(view: JobView) -> str:
    parts = [
        f"{view.count('succeeded')} succeeded",
        f"{view.count('failed')} failed",
        f"{view.count('active')} active",
        f"{view.count('waiting')} waiting",
    ]
    if view.preempted:
        parts.append(f"{view.preempted} preempted")
    not_started: dict[str, int] = {}
    for r in view.waiting_rows():
        not_started[r.waiting] = not_started.get(r.waiting, 0) + 1
    parts += [f"{n} {reason}" for reason, n in sorted(not_started.items())]
    extra = f"  ({view.reason})" if view.reason else ""
    return (
        f"[{view.phase}] {view.name}  run={view.run_id}  {view.state}: {plural(view.completions, 'index')}: "
        + ", ".join(parts)
        + extra
    )


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("x") else f"{n} {word}s"


def table(view: JobView) -> list[str]:
    """The live table: one line per index."""
    width = max([len(r.unit) for r in view.rows] + [4])
    lines = [headline(view), f"  {'index':>5}  {'unit':<{width}}  {'state':<9}  tries  preempted  exit  pod"]
    for r in view.rows:
        code = "" if r.exit_code is None else str(r.exit_code)
        line = (
            f"  {r.index:>5}  {r.unit:<{width}}  {r.state:<9}  {r.tries:>5}  {r.preempted:>9}  {code:>4}  {r.pod or ''}"
        )
        if r.waiting:
            line += f"  {r.waiting}"
        lines.append(line)
    # one line per distinct reason a pod has not started, with the kubelet's / scheduler's own words
    seen: set[tuple[str, str]] = set()
    for r in view.waiting_rows():
        key = (r.waiting, r.waiting_message)
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"  not started: {r.waiting}: {_short(r.waiting_message)}".rstrip(": "))
    return lines


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ------------------------------------------------------------------------------------------------ why nothing runs
# The Job's and its pods' status say a pod is Pending; the reason it stays so is often only in Events and, under
# Kueue, in the Job's Workload. Pure decisions on what the API returns (CoreV1Event objects, Workload JSON dicts):
#   Job event FailedCreate (job-controller)        the API server refused the pod: PodSecurity, an admission webhook
#                                                  (GKE Autopilot's Warden), a ResourceQuota
#   pod event NotTriggerScaleUp (cluster-autoscaler)  no node group can take the pod (selector, taint, max size, backoff)
#   pod event FailedScaleUp (cluster-autoscaler)   "Node scale up in zones ... associated with this pod failed: GCE
#                                                  quota exceeded | GCE out of resources. Pod is at risk ..."
#   pod event FailedMount (kubelet)                a volume (the study ConfigMap, a Secret) cannot be mounted
#   Workload condition QuotaReserved=False         Kueue's reason: "insufficient unused quota ..." (waits), "resource X
#                                                  unavailable in ClusterQueue", "... > maximum capacity", "LocalQueue
#                                                  ... is terminating or missing" (never admits)
STOP = "stop"  # exit 2 now: cannot heal by itself
STOP_LATER = "stop-later"  # exit 2 once it lasted `grace_s`
WARN = "warn"  # shown, waited on (the Job's activeDeadlineSeconds bounds it)
QUOTA_GRACE_S = 600.0  # a GCE quota does not grow by itself; the autoscaler's first retries get 10 minutes
MOUNT_GRACE_S = 180.0
AUTOPILOT_HINT = (
    "GKE Autopilot refuses these pods: lorascope needs a GKE Standard cluster (docs/cluster.md, 'Standard only': "
    "Autopilot caps a pod's ephemeral storage below what the phases need)"
)


@dataclass(frozen=True)
class Finding:
    action: str  # STOP | STOP_LATER | WARN
    reason: str  # the API's reason (FailedCreate, FailedScaleUp, ...) or Kueue's (Pending, Inadmissible)
    message: str  # the API's own words
    where: str  # "Job lorascope-train", "pod lorascope-train-3-x7k2p", "Workload job-lorascope-train-1a2b3"
    hint: str = ""
    grace_s: float = 0.0

    def line(self) -> str:
        text = f"{self.reason} ({self.where}): {_short(self.message, 400)}"
        return text + (f"\n    -> {self.hint}" if self.hint else "")


def pods_missing(job: Any) -> int:
    """Pods the Job should have now but has not: min(parallelism, indexes left) - active. > 0 while pod creation
    fails (a suspended Job wants none)."""
    if job_state(job) != "running":
        return 0
    st = job.status
    left = (job.spec.completions or 0) - len(parse_indexes(st.completed_indexes if st else None)) - len(
        parse_indexes(st.failed_indexes if st else None)
    )
    return max(0, min(job.spec.parallelism or 0, left) - ((st.active or 0) if st else 0))


def _event_finding(ev: Any) -> Finding | None:
    reason, msg = ev.reason or "", " ".join((ev.message or "").split())
    obj = ev.involved_object
    where = f"{(obj.kind or '').lower() or 'object'} {obj.name}" if obj is not None else "?"
    if obj is not None and obj.kind == "Job":
        where = f"Job {obj.name}"
    if reason == "FailedCreate":
        if "violates PodSecurity" in msg:
            return Finding(STOP, reason, msg, where, "the namespace's Pod Security admission refuses the pod spec")
        if "GKE Warden" in msg or "autogke" in msg:
            return Finding(STOP, reason, msg, where, AUTOPILOT_HINT)
        if "admission webhook" in msg and "denied the request" in msg:
            return Finding(STOP, reason, msg, where, "an admission webhook refuses the pod spec")
        if "exceeded quota" in msg:
            return Finding(WARN, reason, msg, where, "a ResourceQuota of the namespace is full: waiting for pods to end")
        return Finding(WARN, reason, msg, where)
    if reason == "FailedScaleUp":
        if "quota exceeded" in msg.lower():
            return Finding(STOP_LATER, reason, msg, where, "the project's GPU quota is used up: raise NVIDIA_L4_GPUS in "
                           "the region and GPUS_ALL_REGIONS (docs/cluster.md, 'Prerequisites')", QUOTA_GRACE_S)  # fmt: skip
        return Finding(WARN, reason, msg, where, "no L4 free in the zone now; the autoscaler keeps trying")
    if reason == "NotTriggerScaleUp":
        return Finding(WARN, reason, msg, where, "no node pool can take the pod now (its node selector, taints, "
                       "max size, or a back-off after a failed scale-up)")  # fmt: skip
    if reason == "FailedMount":
        return Finding(STOP_LATER, reason, msg, where, "a volume the pod needs is missing (the study ConfigMap, a "
                       "Secret)", MOUNT_GRACE_S)  # fmt: skip
    return None


def workload_finding(wl: dict) -> Finding | None:
    """Why Kueue has not admitted a Workload (its QuotaReserved condition), or None when it has."""
    conds = (wl.get("status") or {}).get("conditions") or []
    if any(c.get("type") == "Admitted" and c.get("status") == "True" for c in conds):
        return None
    c = next((c for c in conds if c.get("type") == "QuotaReserved" and c.get("status") == "False"), None)
    if c is None:
        return None
    reason, msg = c.get("reason", ""), " ".join((c.get("message") or "").split())
    where = f"Workload {wl['metadata']['name']}"
    never = ("unavailable in ClusterQueue" in msg or "> maximum capacity" in msg or "is terminating or missing" in msg
             or reason in ("Inadmissible", "Misconfigured", "ExceedsMaxQuota", "NoMatchingFlavor"))  # fmt: skip
    if never:
        return Finding(STOP, f"Kueue {reason}", msg, where, "the queue can never admit this Job: its ClusterQueue must "
                       "cover cpu, memory, ephemeral-storage and nvidia.com/gpu with room for one Job "
                       "(manifests/examples/kueue.yaml), and the LocalQueue must exist")  # fmt: skip
    return Finding(WARN, f"Kueue {reason}", msg, where, "queued: Kueue admits the Job when the quota frees up")


def diagnose(job: Any, pods: Iterable[Any], events: Iterable[Any], workloads: Iterable[dict] = ()) -> list[Finding]:
    """What keeps a Job's pods from running, from its Events (the Job's: only while pods are missing; a pod's: only
    while it is Pending, so an old event of a pod that started later is not blamed) and its Workloads."""
    pending = {p.metadata.uid for p in pods if p.status.phase == "Pending"}
    missing = pods_missing(job)
    out: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for ev in sorted(events, key=lambda e: e.last_timestamp or e.event_time or _EPOCH, reverse=True):
        obj = ev.involved_object
        if obj is None:
            continue
        if obj.kind == "Job" and not missing:
            continue
        if obj.kind == "Pod" and obj.uid not in pending:
            continue
        f = _event_finding(ev)
        if f is not None and (f.reason, f.message) not in seen:  # the newest of each distinct message
            seen.add((f.reason, f.message))
            out.append(f)
    if job_state(job) == "suspended":
        out += [f for wl in workloads if (f := workload_finding(wl)) is not None]
    return out
