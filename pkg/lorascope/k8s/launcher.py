"""`lorascope cluster run`: the phase Jobs in order through the `kubernetes` client, waiting on each.

    lorascope cluster run --study jobs/smoke.yaml --overlay kind
    lorascope cluster run --study jobs/study.yaml --overlay gke --registry europe-west4-docker.pkg.dev/P/lorascope --spot

For each phase: look at the Job of that name (status.decide), create / skip / wait / patch / recreate it, then poll
the Job and its pods and show a table of indexes (succeeded, failed, active, preemptions, why a pod has not started)
until the Job succeeds or fails. A pod whose container cannot start (InvalidImageName, ErrImageNeverPull at once;
ErrImagePull, ImagePullBackOff, CreateContainerConfigError after a grace period) stops the launcher with exit 2 and
the kubelet's message. At the first failed phase it prints the failing pods' last log lines and stops; run the same
command again to continue: succeeded phases are skipped, a failed phase's Job is recreated (its committed indexes
skip at once).

`--detach` submits the whole pipeline as one JobSet instead (jobset.py) and returns; the cluster runs it.

The objects are the ones `render.render_objects` builds, the same that `lorascope render` writes to manifests/.
The launcher reads and writes only namespaced objects (Jobs, Pods and their logs, ConfigMaps, the Secrets' existence,
JobSets), so a namespace-scoped Role is enough (docs/cluster.md, "RBAC"); the namespace and its Secrets (and, for
kind, MinIO; for HPO, PostgreSQL) must exist: `make deploy-kind` or docs/cluster.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from lorascope.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, LorascopeError
from lorascope.k8s import jobset, kueue, render
from lorascope.k8s.status import (
    CONTAINER,
    FATAL_NOW,
    STOP,
    STOP_LATER,
    FailedPod,
    Finding,
    JobView,
    decide,
    diagnose,
    failed_pods,
    fatal_waiting,
    headline,
    job_state,
    plural,
    summarize,
    table,
)
from lorascope.phases import PHASE_ORDER, get_phase
from lorascope.study import Study

LOG_TAIL_LINES = 40
START_GRACE_S = 180.0  # how long ErrImagePull / CreateContainerConfigError may last before the launcher stops
EVENT_PODS = 10  # pending pods whose Events one poll reads (the table shows the rest's waiting reason)

# ------------------------------------------------------------------------------------------------ API calls
# Every call gets a request timeout (the client's default is none: a half-open connection would hang the launcher for
# good), and a transient failure is retried with exponential backoff instead of ending a wait of days: 429 (honouring
# Retry-After), 500/502/503/504 (a control-plane upgrade: a zonal GKE cluster's API server is unreachable for
# minutes), and connection errors (urllib3's, e.g. a reset). Anything else (403, 404, 409, 422) is an answer.
REQUEST_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds, the client's `_request_timeout`
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
RETRY_BUDGET_S = 1800.0  # give up after 30 minutes of one call failing


def transient(exc: BaseException) -> bool:
    status = getattr(exc, "status", None)
    if status:
        return status in RETRY_STATUSES
    try:
        import urllib3
    except ImportError:  # pragma: no cover (the kubernetes client depends on urllib3)
        return isinstance(exc, (ConnectionError, TimeoutError))
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        return float(headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None


@dataclass
class Retry:
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    say: Callable[[str], None] = lambda text: None
    budget_s: float = RETRY_BUDGET_S
    timeout: tuple[float, float] = REQUEST_TIMEOUT

    def call(self, fn: Callable[..., Any], *args: Any, label: str = "", **kw: Any) -> Any:
        kw.setdefault("_request_timeout", self.timeout)
        label = label or getattr(fn, "__name__", "call")
        start, delay = self.clock(), RETRY_FIRST_S
        while True:
            try:
                return fn(*args, **kw)
            except Exception as exc:
                if not transient(exc):
                    raise
                wait = retry_after(exc) or delay
                if self.clock() - start + wait > self.budget_s:
                    raise LorascopeError(f"Kubernetes API {label}: still failing after "
                                         f"{self.clock() - start:.0f} s: {_api_error(exc)}") from exc  # fmt: skip
                self.say(f"Kubernetes API {label}: {_api_error(exc)}; retrying in {wait:.0f} s")
                self.sleep(wait)
                delay = min(delay * 2, RETRY_MAX_S)


def _api_error(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    return f"HTTP {status} {reason or ''}".strip() if status else f"{type(exc).__name__}: {exc}"


class RetryingApi:
    """A `kubernetes` client API object (BatchV1Api, CoreV1Api, CustomObjectsApi) whose calls go through `Retry`."""

    def __init__(self, api: Any, retry: Retry) -> None:
        self._api, self._retry = api, retry

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._api, name)
        if not callable(target):
            return target

        def call(*args: Any, **kw: Any) -> Any:
            return self._retry.call(target, *args, label=name, **kw)

        call.__name__ = name
        return call


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 404


def _conflict(exc: Exception) -> bool:
    return getattr(exc, "status", None) == 409


def unit_namer(study: Study, phase: str) -> Callable[[int], str]:
    """Index -> its unit (lorascope.phases: the same names the pods log); "" past the study's indexes."""
    units = [ix.unit for ix in get_phase(phase).indexes(study)]
    return lambda i: units[i] if 0 <= i < len(units) else ""


def phase_committed(store: Any, run_id: str, phase: str, study: Study) -> bool:
    """Every bundle the phase makes is committed in the store."""
    keys = get_phase(phase).bundles(study)
    return bool(keys) and all(store.committed(f"runs/{run_id}/{k}") for k in keys)


def load_kube_config(context: str | None) -> None:
    """The kubeconfig (KUBECONFIG or ~/.kube/config, optionally a named context), else the in-cluster config."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_kube_config(context=context)
    except (ConfigException, FileNotFoundError, TypeError) as exc:
        try:
            config.load_incluster_config()
        except ConfigException:
            raise ConfigError(
                f"no Kubernetes cluster: {exc} (no usable kubeconfig and not in a pod); "
                "`make kind-up` makes a kind cluster"
            ) from None


class Display:
    """A table redrawn in place on a terminal; in a pod or a log file, a line only when something changed."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.drawn = 0
        self.last_headline = ""

    def show(self, lines: list[str]) -> None:
        if self.tty:
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self.drawn = len(lines)
        elif lines and lines[0] != self.last_headline:
            self.out.write(lines[0] + "\n")
            self.last_headline = lines[0]
        self.out.flush()

    def final(self, lines: list[str]) -> None:
        if self.tty:
            self.show(lines)
        else:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        self.drawn = 0
        self.last_headline = ""


class Launcher:
    def __init__(
        self,
        batch: Any,
        core: Any,
        study: Study,
        study_text: str,
        opts: render.RenderOptions,
        store: Any = None,
        out: TextIO | None = None,
        poll_seconds: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        custom: Any = None,
    ) -> None:
        self.retry = Retry(sleep=sleep, clock=clock, say=self.say)
        self.batch, self.core = RetryingApi(batch, self.retry), RetryingApi(core, self.retry)
        self.custom = RetryingApi(custom, self.retry) if custom is not None else None
        self.study, self.study_text = study, study_text
        self.opts = opts.resolved(study)
        self.ns = self.opts.namespace
        self.run_id: str = self.opts.run_id  # type: ignore[assignment]
        self.store = store
        self.out = out or sys.stdout
        self.poll_seconds = poll_seconds
        self.sleep, self.clock = sleep, clock
        self.objects = render.render_objects(study, study_text, self.opts, include_infra=True)
        self.jobs = {
            o["metadata"]["labels"]["lorascope.dev/phase"]: o
            for o in self.objects
            if o["kind"] == "Job" and o["metadata"]["labels"].get("lorascope.dev/part") == "phase"
        }

    @classmethod
    def connect(
        cls,
        study: Study,
        study_text: str,
        opts: render.RenderOptions,
        context: str | None = None,
        store_url: str | None = None,
        env: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> Launcher:
        from kubernetes import client

        load_kube_config(context)
        store = None
        if store_url:
            from lorascope.runner import code_version
            from lorascope.store import Store

            store = Store.open(store_url, code_version=code_version(env or {}))
        return cls(
            client.BatchV1Api(),
            client.CoreV1Api(),
            study,
            study_text,
            opts,
            store=store,
            custom=client.CustomObjectsApi(),
            **kw,
        )

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # -------------------------------------------------------------------------------------------- setup
    def _require_secret(self, name: str, why: str) -> None:
        """The Secret exists (a namespaced read: no cluster-scoped permission needed, the namespace is not read)."""
        try:
            self.core.read_namespaced_secret(name, self.ns)
        except Exception as exc:
            if not _not_found(exc):
                raise
            hint = self.opts.target.setup_hint
            raise ConfigError(
                f"Secret {self.ns}/{name} is missing ({why}), or namespace {self.ns} does not exist; create them "
                f"first ({hint}); manifests/examples/secret-example.yaml shows its keys"
            ) from None

    def _check_prerequisites(self, phases: list[str]) -> None:
        self._require_secret(render.S3_SECRET, "S3 keys for the store")
        if "hpo" in phases and "hpo" in self.jobs:
            self._require_secret(render.POSTGRES_SECRET, "the HPO workers' Optuna storage")

    def _apply_study(self, phases: list[str]) -> None:
        """Create this run's immutable study ConfigMap (its name carries the run id), or check the existing one holds
        the same study. Other runs' ConfigMaps are never touched, so their pods keep reading their own study."""
        for phase in phases:
            job = self._read_job(phase)
            if job is not None:
                d = decide(job, self.run_id, self.study.hash)
                if d.action == "conflict":
                    raise ConfigError(f"phase {phase}: {d.why}")
        cm = next(o for o in self.objects if o["kind"] == "ConfigMap")
        name = cm["metadata"]["name"]
        try:
            self.core.create_namespaced_config_map(self.ns, body=cm)
            self.say(f"created ConfigMap {name} (the study of run {self.run_id}, immutable)")
            return
        except Exception as exc:
            if not _conflict(exc):
                raise
        have = self.core.read_namespaced_config_map(name, self.ns)
        if (have.data or {}) != cm["data"]:
            raise ConfigError(
                f"ConfigMap {self.ns}/{name} of run {self.run_id} holds another study text than {self.study.name} "
                f"(hash {self.study.hash}); it is immutable: use another --run-id, or delete it once no pod of that "
                "run is left"
            )

    def _read_job(self, phase: str) -> Any | None:
        try:
            return self.batch.read_namespaced_job(render.job_name(phase), self.ns)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    def _pods(self, job: Any) -> list[Any]:
        selector = f"batch.kubernetes.io/controller-uid={job.metadata.uid}"
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def _delete_job(self, phase: str, timeout_s: float = 300) -> None:
        name = render.job_name(phase)
        try:
            self.batch.delete_namespaced_job(name, self.ns, propagation_policy="Background")
        except Exception as exc:
            if not _not_found(exc):
                raise
        deadline = self.clock() + timeout_s
        while self._read_job(phase) is not None:
            if self.clock() > deadline:
                raise LorascopeError(f"Job {self.ns}/{name} was not deleted within {timeout_s:.0f}s")
            self.sleep(min(2.0, self.poll_seconds))

    # -------------------------------------------------------------------------------------------- run
    def run(self, phases: list[str] | None = None, timeout_s: float = 7 * 24 * 3600) -> int:
        phases = [p for p in (phases or PHASE_ORDER) if p in PHASE_ORDER]
        self.say(
            f"run {self.run_id}: study {self.study.name} (hash {self.study.hash}), overlay {self.opts.overlay}, "
            f"namespace {self.ns}, store {self.opts.store_url}"
        )
        self._check_prerequisites(phases)
        self._apply_study(phases)
        for phase in phases:
            if phase not in self.jobs:
                self.say(f"[{phase}] no indexes for this study: nothing to run")
                continue
            if self.store is not None and phase_committed(self.store, self.run_id, phase, self.study):
                self.say(f"[{phase}] every bundle is committed in {self.store.url}: skipping")
                continue
            code = self.run_phase(phase, timeout_s)
            if code != EXIT_OK:
                self.say(
                    f"\nstopped at phase {phase}. Fix the cause, then run the same command again: succeeded "
                    "phases are skipped and committed indexes are not redone."
                )
                return code
        self.say(
            f"\nrun {self.run_id} done. Results: {self.opts.store_url}/runs/{self.run_id}/  "
            f"(lorascope pull {self.run_id} --store {self.opts.store_url} --to pulled/)"
        )
        return EXIT_OK

    # -------------------------------------------------------------------------------------------- detached
    def submit_jobset(self) -> int:
        """`cluster run --detach`: the whole pipeline as one JobSet; the JobSet controller starts each phase's Job when
        the previous one completed. Submitting again: a running or finished JobSet of this run is left alone (said),
        a failed one is replaced (committed indexes skip), another run's running JobSet is refused."""
        if self.custom is None:
            raise ConfigError("--detach needs the CustomObjectsApi (kubernetes client)")
        body = jobset.pipeline_jobset(self.study, self.opts)  # --queue: refused (k8s/kueue.py), before any API call
        name = body["metadata"]["name"]
        self.say(
            f"run {self.run_id}: study {self.study.name} (hash {self.study.hash}) as JobSet {self.ns}/{name}, "
            f"overlay {self.opts.overlay}, store {self.opts.store_url}"
        )
        self._check_prerequisites(list(PHASE_ORDER))
        self._apply_study([])
        have = self._read_jobset(name)
        if have is not None:
            view = jobset.describe(have)
            if view.state == "failed":
                self.say(f"JobSet {name} failed earlier ({view.reason}): replacing it; committed indexes skip")
                self.custom.delete_namespaced_custom_object(
                    jobset.GROUP, jobset.VERSION, self.ns, jobset.PLURAL, name, propagation_policy="Foreground"
                )
                deadline = self.clock() + 300
                while self._read_jobset(name) is not None:
                    if self.clock() > deadline:
                        raise LorascopeError(f"JobSet {self.ns}/{name} was not deleted within 300s")
                    self.sleep(min(2.0, self.poll_seconds))
            else:
                self.say(f"JobSet {name} is already {view.state}: nothing submitted")
                self.say(f"watch it: lorascope status {self.run_id} --cluster --namespace {self.ns}")
                return EXIT_OK
        try:
            self.custom.create_namespaced_custom_object(jobset.GROUP, jobset.VERSION, self.ns, jobset.PLURAL, body)
        except Exception as exc:
            if _not_found(exc):
                raise ConfigError(
                    f"the cluster has no JobSet API ({jobset.API_VERSION}): install JobSet >= "
                    f"{jobset.MIN_JOBSET_RELEASE} (docs/cluster.md, 'Detached'), or run without --detach"
                ) from None
            if _conflict(exc):
                self.say(f"JobSet {name} was just created by another launcher")
                return EXIT_OK
            raise
        phases = [rj["name"] for rj in body["spec"]["replicatedJobs"]]
        self.say(f"submitted JobSet {name}: {' -> '.join(phases)} (each starts when the previous one is Complete)")
        self.say(f"watch it: lorascope status {self.run_id} --cluster --namespace {self.ns}")
        return EXIT_OK

    def _read_jobset(self, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(jobset.GROUP, jobset.VERSION, self.ns, jobset.PLURAL, name)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise

    def run_phase(self, phase: str, timeout_s: float) -> int:
        job = self._read_job(phase)
        want = self.jobs[phase]
        d = decide(
            job,
            self.run_id,
            self.study.hash,
            want_image=want["spec"]["template"]["spec"]["containers"][0]["image"],
            # under Kueue, partial admission may lower a Job's parallelism: Kueue owns it, never patch it back
            want_parallelism=None if self.opts.queue else want["spec"]["parallelism"],
        )
        if d.action == "conflict":
            raise ConfigError(f"phase {phase}: {d.why}")
        if d.action == "skip":
            self.say(f"[{phase}] Job {render.job_name(phase)} {d.why}: skipping")
            return EXIT_OK
        if d.action == "recreate":
            self.say(f"[{phase}] {d.why}: recreating Job {render.job_name(phase)}")
            self._delete_job(phase)
        if d.action in ("create", "recreate"):
            try:
                self.batch.create_namespaced_job(self.ns, body=want)
            except Exception as exc:
                if not _conflict(exc):
                    raise
                # 409 AlreadyExists: another launcher created it between our read and our create
                return self._created_elsewhere(phase, timeout_s)
            spec = want["spec"]
            self.say(
                f"[{phase}] created Job {render.job_name(phase)}: {plural(spec['completions'], 'index')}, "
                f"parallelism {spec['parallelism']}, deadline {spec['activeDeadlineSeconds'] // 3600} h"
            )
        elif d.action == "patch":
            self.batch.patch_namespaced_job(
                render.job_name(phase), self.ns, body={"spec": {"parallelism": want["spec"]["parallelism"]}}
            )
            self.say(f"[{phase}] Job {render.job_name(phase)} {d.why}: patched, waiting on it")
        else:
            self.say(f"[{phase}] Job {render.job_name(phase)} {d.why}: waiting on it")
        return self.wait(phase, timeout_s)

    def _created_elsewhere(self, phase: str, timeout_s: float) -> int:
        job = self._read_job(phase)
        d = decide(job, self.run_id, self.study.hash)
        if d.action == "conflict":
            raise ConfigError(f"phase {phase}: {d.why}")
        self.say(f"[{phase}] Job {render.job_name(phase)} was just created by another launcher: waiting on it")
        return self.wait(phase, timeout_s)

    def wait(self, phase: str, timeout_s: float) -> int:
        display = Display(self.out)
        unit = unit_namer(self.study, phase)
        deadline = self.clock() + timeout_s
        first_seen: dict[tuple[str, str], float] = {}  # (pod, waiting reason) -> when this launcher first saw it
        said: set[tuple[str, str, str]] = set()  # findings already printed
        while True:
            job = self._read_job(phase)
            if job is None:
                raise LorascopeError(f"Job {self.ns}/{render.job_name(phase)} disappeared while waiting on it")
            pods = self._pods(job)
            view = summarize(job, pods, unit)
            state = job_state(job)
            if state in ("succeeded", "failed"):
                display.final(table(view))
                break
            display.show(table(view))
            stuck = self._stuck(view, first_seen)
            if stuck is not None:
                display.final(table(view))
                return self.report_not_started(view, stuck)
            blocking = self._findings(job, pods, view, first_seen, said)
            if blocking is not None:
                display.final(table(view))
                return self.report_blocked(view, blocking)
            if self.clock() > deadline:
                self.say(f"[{phase}] still {state} after {timeout_s:.0f}s: giving up waiting (the Job goes on)")
                return EXIT_FAILURE
            self.sleep(self.poll_seconds)
        if state == "succeeded":
            return EXIT_OK
        return self.report_failure(view, failed_pods(job, pods))

    def _stuck(self, view: JobView, first_seen: dict[tuple[str, str], float]) -> Any | None:
        """The first index whose pod cannot start by itself (status.FATAL_NOW at once, the rest after the grace)."""
        now = self.clock()
        for r in view.waiting_rows():
            if not fatal_waiting(r.waiting):
                continue  # Unschedulable and the like: shown, bounded by the Job's activeDeadlineSeconds
            since = first_seen.setdefault((r.pod or "", r.waiting), now)
            if r.waiting in FATAL_NOW or now - since >= START_GRACE_S:
                return r
        return None

    # -------------------------------------------------------------------------------------- events, Workloads
    def _events(self, job: Any, pods: list[Any]) -> list[Any]:
        """Events of the Job and of (up to EVENT_PODS of) its Pending pods."""
        uids = [job.metadata.uid] + [p.metadata.uid for p in pods if p.status.phase == "Pending"][:EVENT_PODS]
        out: list[Any] = []
        for uid in uids:
            out += self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.uid={uid}").items or []
        return out

    def _workloads(self, job: Any) -> list[dict]:
        """The Job's Kueue Workloads (label kueue.x-k8s.io/job-uid); none where Kueue is not installed."""
        if self.custom is None:
            return []
        try:
            got = self.custom.list_namespaced_custom_object(
                "kueue.x-k8s.io", "v1beta2", self.ns, kueue.WORKLOAD_PLURAL,
                label_selector=f"{kueue.JOB_UID_LABEL}={job.metadata.uid}",
            )  # fmt: skip
        except Exception as exc:
            if _not_found(exc):
                return []
            raise
        return list(got.get("items") or [])

    def _findings(
        self, job: Any, pods: list[Any], view: JobView, first_seen: dict, said: set[tuple[str, str, str]]
    ) -> Finding | None:
        """Say each new reason the Job's pods do not run (once); the first one that cannot heal, or that lasted past
        its grace, stops the launcher."""
        state = job_state(job)
        if state != "suspended" and not view.waiting_rows() and not [p for p in pods if p.status.phase == "Pending"]:
            from lorascope.k8s.status import pods_missing

            if not pods_missing(job):
                return None  # everything that should run runs: no API calls for Events
        workloads = self._workloads(job) if state == "suspended" or self.opts.queue else []
        now = self.clock()
        for f in diagnose(job, pods, self._events(job, pods), workloads):
            key = (f.reason, f.where, f.message)
            if key not in said:
                said.add(key)
                self.say(f"[{view.phase}] {'stopping' if f.action == STOP else 'waiting'}: {f.line()}")
            since = first_seen.setdefault((f.where, f.reason), now)
            if f.action == STOP or (f.action == STOP_LATER and now - since >= f.grace_s):
                return f
        return None

    def report_blocked(self, view: JobView, f: Finding) -> int:
        name = render.job_name(view.phase)
        lasted = f" for {f.grace_s:.0f} s" if f.action == STOP_LATER else ""
        self.say(
            f"\n[{view.phase}] cannot run{lasted}: {f.line()}\n"
            f"The Job is left as it is. Fix the cause, then `kubectl -n {self.ns} delete job {name}` and run the same "
            "command again (committed indexes skip)."
        )
        return EXIT_CONFIG

    def report_not_started(self, view: JobView, row: Any) -> int:
        name = render.job_name(view.phase)
        self.say(
            f"\n[{view.phase}] index {row.index} (pod {row.pod}) cannot start: {row.waiting}: "
            f"{row.waiting_message or '(no message)'}\n"
            f"The Job is left as it is. Fix the cause (image reference and tag, registry access, the Secret or "
            f"ConfigMap it names), then `kubectl -n {self.ns} delete job {name}` and run the same command again."
        )
        return EXIT_CONFIG

    def report_failure(self, view: JobView, pods: list[FailedPod]) -> int:
        self.say(
            f"\n[{view.phase}] FAILED: {view.reason or 'the Job failed'}; failed indexes: "
            f"{view.indexes('failed') or 'none'}"
        )
        for fp in pods:
            what = "config error: fix the study or a missing prerequisite" if fp.config_error else (fp.reason or "")
            self.say(f"\n--- index {fp.index}  pod {fp.pod}  exit {fp.exit_code}  {what}")
            self.say(self.log_tail(fp))
        if not pods:
            self.say("(no failed pod left to show: `kubectl describe job` tells more)")
        return EXIT_CONFIG if pods and all(fp.config_error for fp in pods) else EXIT_FAILURE

    def log_tail(self, fp: FailedPod) -> str:
        try:
            text = self.core.read_namespaced_pod_log(fp.pod, self.ns, container=CONTAINER, tail_lines=LOG_TAIL_LINES)
        except Exception:  # the pod may be gone (ttl) or its node deleted: fall back to its termination message
            text = ""
        text = text or fp.message or "(no log left)"
        return "\n".join("    " + line for line in text.rstrip("\n").splitlines()[-LOG_TAIL_LINES:])


def cluster_status(
    namespace: str = "lorascope",
    context: str | None = None,
    run_id: str | None = None,
    batch: Any = None,
    core: Any = None,
    out: TextIO | None = None,
) -> int:
    """`lorascope cluster status`: every lorascope phase Job in the namespace, in phase order, with its indexes."""
    out = out or sys.stdout
    if batch is None or core is None:
        from kubernetes import client

        load_kube_config(context)
        batch, core = client.BatchV1Api(), client.CoreV1Api()
    retry = Retry(say=lambda text: out.write(text + "\n"))
    batch, core = RetryingApi(batch, retry), RetryingApi(core, retry)
    selector = "app.kubernetes.io/part-of=lorascope,lorascope.dev/part=phase"
    if run_id:
        selector += f",lorascope.dev/run-id={run_id}"
    jobs = list(batch.list_namespaced_job(namespace, label_selector=selector).items)
    if not jobs:
        out.write(f"no lorascope Jobs in namespace {namespace}" + (f" for run {run_id}" if run_id else "") + "\n")
        return EXIT_OK
    order = {p: i for i, p in enumerate(PHASE_ORDER)}
    jobs.sort(key=lambda j: order.get((j.metadata.labels or {}).get("lorascope.dev/phase", ""), 99))
    for job in jobs:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/controller-uid={job.metadata.uid}"
        ).items
        view = summarize(job, pods)
        out.write(headline(view) + "\n")
        for state in ("succeeded", "failed", "active"):
            if view.count(state):
                out.write(f"    {state:<9} {view.indexes(state)}\n")
    return EXIT_OK


def pipeline_status(
    run_id: str,
    namespace: str = "lorascope",
    context: str | None = None,
    custom: Any = None,
    batch: Any = None,
    core: Any = None,
    out: TextIO | None = None,
) -> int:
    """`lorascope status RUN --cluster`: the run's JobSet (cluster run --detach) and its phase Jobs, phase by phase;
    without a JobSet, the phase Jobs the launcher submitted for the run. Exit 0 when it succeeded or is running, 1
    when it failed, 2 when the cluster has nothing of the run."""
    out = out or sys.stdout
    if custom is None or batch is None or core is None:
        from kubernetes import client

        load_kube_config(context)
        custom, batch, core = client.CustomObjectsApi(), client.BatchV1Api(), client.CoreV1Api()
    retry = Retry(say=lambda text: out.write(text + "\n"))
    custom, batch, core = RetryingApi(custom, retry), RetryingApi(batch, retry), RetryingApi(core, retry)
    name = jobset.jobset_name(run_id)
    try:
        js = custom.get_namespaced_custom_object(jobset.GROUP, jobset.VERSION, namespace, jobset.PLURAL, name)
    except Exception as exc:
        if not _not_found(exc):  # 404: no such JobSet, or no JobSet API at all
            raise
        js = None
    if js is not None:
        children = batch.list_namespaced_job(namespace, label_selector=f"{jobset.JOBSET_NAME_LABEL}={name}").items
        view = jobset.describe(js, list(children))
        out.write("\n".join(jobset.lines(view)) + "\n")
        return EXIT_FAILURE if view.state == "failed" else EXIT_OK
    selector = f"app.kubernetes.io/part-of=lorascope,lorascope.dev/part=phase,lorascope.dev/run-id={run_id}"
    jobs = [j for j in batch.list_namespaced_job(namespace, label_selector=selector).items
            if jobset.JOBSET_NAME_LABEL not in (j.metadata.labels or {})]  # fmt: skip
    if not jobs:
        raise ConfigError(
            f"run {run_id}: no JobSet {namespace}/{name} (cluster run --detach) and no phase Jobs of the run in "
            f"namespace {namespace}"
        )
    out.write(f"run {run_id}: phase Jobs submitted by `lorascope cluster run` (no JobSet)\n")
    order = {p: i for i, p in enumerate(PHASE_ORDER)}
    jobs.sort(key=lambda j: order.get((j.metadata.labels or {}).get("lorascope.dev/phase", ""), 99))
    failed = False
    for job in jobs:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/controller-uid={job.metadata.uid}"
        ).items
        view = summarize(job, pods)
        failed |= view.state == "failed"
        out.write(headline(view) + "\n")
    return EXIT_FAILURE if failed else EXIT_OK
