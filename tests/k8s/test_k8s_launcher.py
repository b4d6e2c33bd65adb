"""`lorascope cluster run` against an in-memory API that answers like the real one (V1Job / V1Pod objects, 404
ApiExceptions): phases in order, a live table, a stop at the first failed phase with the failing pod's log lines,
and a second run that continues where the first stopped."""

from __future__ import annotations

import copy
import io
from types import SimpleNamespace

import pytest
from kubernetes.client.exceptions import ApiException

from lorascope.errors import EXIT_CONFIG, EXIT_OK, ConfigError
from lorascope.k8s import infra, render
from lorascope.k8s.launcher import Launcher, cluster_status
from lorascope.phases import PHASE_ORDER
from lorascope.runner import default_run_id
from lorascope.study import load_study
from tests.k8s.api_objects import allowed, api_call, condition, deserialize, pod


class FakeCluster:
    """Jobs and pods of one namespace. A created Job runs for one poll, then ends as `outcomes[phase]` says:
    "ok", or ("fail", index, exit_code, log_text)."""

    def __init__(self, outcomes: dict, secrets=("lorascope-s3", "lorascope-postgres")) -> None:
        self.outcomes = outcomes
        self.secrets = set(secrets)
        self.jobs: dict[str, dict] = {}  # name -> {"body", "polls", "uid"}
        self.events: list[tuple[str, str]] = []
        self.configmaps: dict[str, dict] = {}
        self.namespaces: set[str] = set()
        self.logs: dict[str, str] = {}
        self._uid = 0
        self.calls: list[tuple[str, str, str, str | None]] = []  # every API call (api_call): held against the Role

    @api_call("", "events", "list")
    def list_namespaced_event(self, namespace, field_selector=""):
        return SimpleNamespace(items=[])  # nothing went wrong in this cluster

    # ---- BatchV1Api
    @api_call("batch", "jobs", "get", 0)
    def read_namespaced_job(self, name, namespace):
        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        return self._job_object(name)

    @api_call("batch", "jobs", "create")
    def create_namespaced_job(self, namespace, body):
        assert body["metadata"]["namespace"] == namespace
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self._uid += 1
        phase = body["metadata"]["labels"]["lorascope.dev/phase"]
        self.jobs[name] = {
            "body": copy.deepcopy(body),
            "polls": 0,
            "uid": f"uid-{self._uid}",
            "outcome": self.outcomes.get(phase, "ok"),
        }  # decided when submitted
        self.events.append(("create", name))

    @api_call("batch", "jobs", "delete", 0)
    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        assert propagation_policy == "Background"  # the pods go too
        self.jobs.pop(name)
        self.events.append(("delete", name))

    @api_call("batch", "jobs", "patch", 0)
    def patch_namespaced_job(self, name, namespace, body):
        assert set(body) == {"spec"} and set(body["spec"]) == {"parallelism"}  # the only field changed in place
        self.jobs[name]["body"]["spec"]["parallelism"] = body["spec"]["parallelism"]
        self.events.append(("patch", name))

    @api_call("batch", "jobs", "list")
    def list_namespaced_job(self, namespace, label_selector=""):
        return SimpleNamespace(items=[self._job_object(n) for n in self.jobs])

    # ---- CoreV1Api (namespaced calls only: the fake has no read_namespace, so a cluster-scoped read would fail)
    @api_call("", "secrets", "get", 0)
    def read_namespaced_secret(self, name, namespace):
        if name not in self.secrets:
            raise ApiException(status=404)

    @api_call("", "configmaps", "get", 0)
    def read_namespaced_config_map(self, name, namespace):
        if name not in self.configmaps:
            raise ApiException(status=404)
        return deserialize(self.configmaps[name], "V1ConfigMap")

    @api_call("", "configmaps", "create")
    def create_namespaced_config_map(self, namespace, body):
        assert body["immutable"] is True  # replace/patch would be refused by the API server: the launcher never tries
        if body["metadata"]["name"] in self.configmaps:
            raise ApiException(status=409, reason="AlreadyExists")
        self.configmaps[body["metadata"]["name"]] = copy.deepcopy(body)

    @api_call("", "pods", "list")
    def list_namespaced_pod(self, namespace, label_selector=""):
        uid = label_selector.split("=", 1)[1]
        name = next(n for n, j in self.jobs.items() if j["uid"] == uid)
        return SimpleNamespace(items=self._pods(name))

    @api_call("", "pods/log", "get", 0)
    def read_namespaced_pod_log(self, name, namespace, container=None, tail_lines=None):
        assert container == "lorascope"
        return "\n".join(self.logs.get(name, "").splitlines()[-tail_lines:])

    # ---- the fake controller
    def _outcome(self, name):
        return self.jobs[name]["outcome"]

    def _pods(self, name):
        j = self.jobs[name]
        n = j["body"]["spec"]["completions"]
        out = []
        for i in range(n):
            pname = f"{name}-{i}-{j['uid']}"
            outcome = self._outcome(name)
            if outcome != "ok" and outcome[0] == "pending":  # ("pending", index, reason, message): never starts
                if outcome[1] == i:
                    out.append(pod(i, pname, phase="Pending", waiting=(outcome[2], outcome[3])))
                else:
                    out.append(pod(i, pname, phase="Running"))
                continue
            if j["polls"] <= 1:
                out.append(pod(i, pname, phase="Running"))
                continue
            outcome = self._outcome(name)
            if outcome != "ok" and outcome[1] == i:
                self.logs[pname] = outcome[3]
                out.append(pod(i, pname, phase="Failed", exit_code=outcome[2], message=outcome[3][-200:]))
            else:
                out.append(pod(i, pname, phase="Succeeded", exit_code=0))
        for p in out:
            p.metadata.labels["batch.kubernetes.io/controller-uid"] = j["uid"]
        return out

    def _job_object(self, name):
        j = self.jobs[name]
        j["polls"] += 1
        body = copy.deepcopy(j["body"])
        body["metadata"]["uid"] = j["uid"]
        n = body["spec"]["completions"]
        outcome = self._outcome(name)
        if j["polls"] <= 1 or (outcome != "ok" and outcome[0] == "pending"):
            body["status"] = {"active": min(n, body["spec"]["parallelism"])}
        elif outcome == "ok":
            body["status"] = {
                "completedIndexes": f"0-{n - 1}" if n > 2 else ",".join(map(str, range(n))),
                "succeeded": n,
                "conditions": [condition("Complete", "CompletionsReached")],
            }
        else:
            rest = [i for i in range(n) if i != outcome[1]]
            from lorascope.k8s.status import format_indexes

            body["status"] = {
                "completedIndexes": format_indexes(rest),
                "failedIndexes": str(outcome[1]),
                "conditions": [
                    condition("FailureTarget", "FailedIndexes", "Job has failed indexes"),
                    condition("Failed", "FailedIndexes", "Job has failed indexes"),
                ],
            }
        return deserialize(body, "V1Job")


@pytest.fixture
def smoke(smoke_study_path):
    return load_study(smoke_study_path), smoke_study_path.read_text()


def launcher(cluster, smoke, **kw):
    study, text = smoke
    out = io.StringIO()
    ticks = iter(range(10**6))
    la = Launcher(
        cluster,
        cluster,
        study,
        text,
        render.RenderOptions(overlay="kind", **kw),
        out=out,
        poll_seconds=1,
        sleep=lambda s: None,
        clock=lambda: float(next(ticks)),
    )
    return la, out


def test_stops_at_the_first_failed_phase_with_the_pods_log_then_continues_on_the_next_run(smoke):
    study, _ = smoke
    run_id = default_run_id(study)
    log = "\n".join(f"ts=10:00:{i:02d} phase=train msg=step{i}" for i in range(60))
    log += "\nerror: run smoke: bundle hpo/mrpc-full is not committed (run the hpo phase first)"
    cluster = FakeCluster({"train": ("fail", 4, 2, log)})

    la, out = launcher(cluster, smoke)
    assert la.run() == EXIT_CONFIG  # every failing pod exited 2
    text = out.getvalue()
    assert cluster.events == [
        ("create", "lorascope-stage"),
        ("create", "lorascope-sanity"),
        ("create", "lorascope-hpo"),
        ("create", "lorascope-train"),
    ]
    assert "[train] FAILED: FailedIndexes: Job has failed indexes; failed indexes: 4" in text
    assert "--- index 4  pod lorascope-train-4-uid-4  exit 2  config error" in text
    assert "bundle hpo/mrpc-full is not committed" in text  # the last log lines
    assert "step59" in text and "step10" not in text  # only the tail (40 lines)
    assert "stopped at phase train" in text
    # the final table of the train phase: 17 succeeded, index 4 failed
    assert f"[train] lorascope-train  run={run_id}  failed: 18 indexes: 17 succeeded, 1 failed" in text
    # the kind overlay's Jobs, as submitted
    train = cluster.jobs["lorascope-train"]["body"]
    pod_spec = train["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod_spec and "tolerations" not in pod_spec
    assert pod_spec["containers"][0]["imagePullPolicy"] == "Never"
    assert train["spec"]["completions"] == 18 and train["spec"]["parallelism"] == 2
    cm = cluster.configmaps[render.study_configmap_name(run_id)]
    assert cm["metadata"]["labels"]["lorascope.dev/study-hash"] == study.hash and cm["immutable"] is True
    assert pod_spec["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"] == f"lorascope-study-{run_id}"

    # the user fixes the cause and runs the same command again
    cluster.outcomes = {}
    cluster.events.clear()
    la, out = launcher(cluster, smoke)
    assert la.run() == EXIT_OK
    text = out.getvalue()
    assert cluster.events == [
        ("delete", "lorascope-train"),
        ("create", "lorascope-train"),
        ("create", "lorascope-extract"),
        ("create", "lorascope-drift"),
        ("create", "lorascope-bench"),
        ("create", "lorascope-report"),
    ]
    for phase in ("stage", "sanity", "hpo"):
        assert f"[{phase}] Job lorascope-{phase} succeeded earlier: skipping" in text
    assert f"run {run_id} done" in text and f"lorascope pull {run_id}" in text

    # and `lorascope cluster status` lists them in phase order
    out = io.StringIO()
    assert cluster_status("lorascope", batch=cluster, core=cluster, out=out) == EXIT_OK
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("[")]
    assert [ln.split("]")[0][1:] for ln in lines] == PHASE_ORDER
    assert "succeeded: 21 indexes: 21 succeeded" in out.getvalue()  # extract: 3 tasks + 18 cells
    # every call of both runs and the status is one the shipped Role allows (infra/launcher-role.yaml), each with a
    # request timeout (api_call); the Secrets are read by name only
    rules = infra.launcher_rules()
    assert [c for c in cluster.calls if not allowed(rules, c)] == []
    assert {c[3] for c in cluster.calls if c[1] == "secrets"} == {"lorascope-s3", "lorascope-postgres"}


def test_a_missing_secret_is_a_config_error_before_anything_is_submitted(smoke):
    cluster = FakeCluster({}, secrets=("lorascope-s3",))
    la, _ = launcher(cluster, smoke)
    with pytest.raises(
        ConfigError, match="lorascope-postgres is missing.*or namespace lorascope does not exist.*make kind-up"
    ):
        la.run()
    assert cluster.events == []


def test_another_runs_active_job_is_never_killed(smoke):
    cluster = FakeCluster({})
    la, _ = launcher(cluster, smoke, run_id="someone-else")
    la.batch.create_namespaced_job("lorascope", la.jobs["stage"])  # submitted, first poll: running
    la2, _ = launcher(cluster, smoke)
    with pytest.raises(ConfigError, match="someone-else.*still running"):
        la2.run()
    assert cluster.events == [("create", "lorascope-stage")]
    assert cluster.configmaps == {}  # nothing created for a run that cannot start


def test_until_and_phase_selection_in_the_cli():
    from lorascope.phases import select_phases as _phases

    assert _phases(None, "train") == ["stage", "sanity", "hpo", "train"]
    assert _phases("report,drift", None) == ["drift", "report"]
    with pytest.raises(ConfigError, match="unknown phase"):
        _phases("trian", None)


# ------------------------------------------------------------------------------------------------ readiness
def test_a_pod_that_cannot_pull_its_image_stops_the_launcher_with_the_kubelets_message(smoke):
    msg = 'Failed to pull image "localhost/lorascope/stage:0.1.0-cpu": not found'
    cluster = FakeCluster({"stage": ("pending", 0, "ErrImageNeverPull", msg)})
    la, out = launcher(cluster, smoke)
    assert la.run() == EXIT_CONFIG
    text = out.getvalue()
    assert f"[stage] index 0 (pod lorascope-stage-0-uid-1) cannot start: ErrImageNeverPull: {msg}" in text
    assert "kubectl -n lorascope delete job lorascope-stage" in text
    assert cluster.events == [("create", "lorascope-stage")]  # nothing after it


def test_err_image_pull_gets_a_grace_period_then_stops(smoke):
    cluster = FakeCluster({"stage": ("pending", 0, "ErrImagePull", "503 Service Unavailable")})
    la, out = launcher(cluster, smoke)
    now = [0.0]
    la.clock = lambda: now[0]
    la.sleep = lambda s: now.__setitem__(0, now[0] + 30)  # 30 s a poll
    assert la.run() == EXIT_CONFIG
    # waited out the grace (180 s = 6 polls) before stopping, and not much longer
    assert 180 <= now[0] <= 210 and 7 <= cluster.jobs["lorascope-stage"]["polls"] <= 9
    assert "cannot start: ErrImagePull: 503 Service Unavailable" in out.getvalue()


def test_an_unschedulable_pod_is_shown_and_waited_on_not_stopped(smoke):
    cluster = FakeCluster({"stage": ("pending", 0, "Unschedulable", "0/3 nodes are available: 3 Insufficient cpu.")})
    la, out = launcher(cluster, smoke)
    assert la.run_phase("stage", timeout_s=50) == 1  # gave up waiting at the timeout, the Job goes on
    text = out.getvalue()
    assert "Unschedulable" in text and "giving up waiting" in text


def test_two_launchers_a_409_on_create_means_wait_on_the_other_ones_job(smoke):
    cluster = FakeCluster({})
    la, out = launcher(cluster, smoke)
    real_read = cluster.read_namespaced_job
    calls = {"n": 0}

    def racing_read(name, namespace, **kw):  # our read says "no Job", then the other launcher creates it
        calls["n"] += 1
        if calls["n"] == 1:
            la2, _ = launcher(cluster, smoke)
            la2.batch.create_namespaced_job(namespace, la2.jobs["stage"])
            raise ApiException(status=404)
        return real_read(name, namespace, **kw)

    cluster.read_namespaced_job = racing_read
    assert la.run_phase("stage", timeout_s=100) == EXIT_OK
    assert "was just created by another launcher: waiting on it" in out.getvalue()
    assert cluster.events == [("create", "lorascope-stage")]


def test_a_rerun_with_another_parallelism_patches_and_another_image_tag_is_refused(smoke):
    cluster = FakeCluster({})
    la, _ = launcher(cluster, smoke)
    la.batch.create_namespaced_job("lorascope", la.jobs["train"])  # running (first poll)
    la2, out = launcher(cluster, smoke, parallelism=1)
    cluster.jobs["lorascope-train"]["polls"] = 0
    assert la2.run_phase("train", timeout_s=100) == EXIT_OK
    assert ("patch", "lorascope-train") in cluster.events
    assert "parallelism 2 -> 1: patched" in out.getvalue()
    # a new image tag while it runs: said, refused (exit 2), nothing deleted
    cluster.jobs["lorascope-train"]["polls"] = 0
    la3, _ = launcher(cluster, smoke, image_tag="0.1.0-gdeadbeef-cpu")
    with pytest.raises(ConfigError, match=r"localhost/lorascope/train:0.1.0-cpu, not .*train:0.1.0-gdeadbeef-cpu"):
        la3.run_phase("train", timeout_s=100)
    assert ("delete", "lorascope-train") not in cluster.events


def test_one_immutable_configmap_per_run_and_a_changed_study_under_the_same_run_id_is_refused(smoke):
    study, text = smoke
    cluster = FakeCluster({})
    la, _ = launcher(cluster, smoke, run_id="run-a")
    la._apply_study([])
    la_b, _ = launcher(cluster, smoke, run_id="run-b")
    la_b._apply_study([])
    assert sorted(cluster.configmaps) == ["lorascope-study-run-a", "lorascope-study-run-b"]
    la._apply_study([])  # the same study again: fine (409 then equal data)
    la_changed = Launcher(cluster, cluster, study, text + "\n# edited\n", render.RenderOptions(overlay="kind",
                          run_id="run-a"), out=io.StringIO())  # fmt: skip
    with pytest.raises(ConfigError, match="lorascope-study-run-a of run run-a holds another study text"):
        la_changed._apply_study([])
    assert cluster.configmaps["lorascope-study-run-a"]["data"]["study.yaml"] == text


# ------------------------------------------------------------------------------------------------ API failures
class Flaky:
    """An API method that fails with `errors` (in order), then answers; records each call's timeout."""

    def __init__(self, errors: list[BaseException], answer=None) -> None:
        self.errors, self.answer, self.timeouts = list(errors), answer, []

    def read_namespaced_job(self, name, namespace, _request_timeout=None):
        self.timeouts.append(_request_timeout)
        if self.errors:
            raise self.errors.pop(0)
        return self.answer


def _retry(waits: list[float]):
    from lorascope.k8s.launcher import Retry

    now = [0.0]

    def sleep(s):
        waits.append(s)
        now[0] += s

    return Retry(sleep=sleep, clock=lambda: now[0], say=lambda text: None)


def test_5xx_429_and_a_connection_reset_are_retried_with_backoff_and_every_call_has_a_timeout():
    import urllib3

    from lorascope.k8s.launcher import REQUEST_TIMEOUT, RetryingApi

    too_many = ApiException(status=429, reason="Too Many Requests")
    too_many.headers = {"Retry-After": "7"}
    reset = urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
    api = Flaky([ApiException(status=503, reason="Service Unavailable"), ApiException(status=500), too_many, reset,
                 ApiException(status=504)], answer="job")  # fmt: skip
    waits: list[float] = []
    assert RetryingApi(api, _retry(waits)).read_namespaced_job("lorascope-train", "lorascope") == "job"
    assert waits == [1, 2, 7, 8, 16]  # exponential, and the server's Retry-After when it gives one
    assert api.timeouts == [REQUEST_TIMEOUT] * 6 and REQUEST_TIMEOUT == (10.0, 60.0)


def test_answers_are_not_retried_and_a_long_outage_ends_with_a_clear_error():
    from lorascope.errors import LorascopeError
    from lorascope.k8s.launcher import RETRY_BUDGET_S, RetryingApi

    for status in (403, 404, 409, 422):
        waits: list[float] = []
        with pytest.raises(ApiException):
            RetryingApi(Flaky([ApiException(status=status)]), _retry(waits)).read_namespaced_job("x", "lorascope")
        assert waits == []
    waits = []
    down = Flaky([ApiException(status=503, reason="Service Unavailable")] * 1000)
    with pytest.raises(LorascopeError, match=r"read_namespaced_job: still failing after \d+ s: HTTP 503 Service Unavailable"):
        RetryingApi(down, _retry(waits)).read_namespaced_job("x", "lorascope")
    assert RETRY_BUDGET_S - 60 <= sum(waits) <= RETRY_BUDGET_S and max(waits) == 60


def test_a_control_plane_upgrade_during_a_wait_does_not_end_it(smoke):
    """Two minutes of 503 from the API server in the middle of a phase: the launcher waits them out and goes on."""
    cluster = FakeCluster({})
    la, out = launcher(cluster, smoke)
    real = cluster.list_namespaced_pod
    failures = {"left": 8}

    def upgrading(namespace, label_selector="", _request_timeout=None):
        if failures["left"]:
            failures["left"] -= 1
            raise ApiException(status=503, reason="Service Unavailable")
        return real(namespace, label_selector=label_selector, _request_timeout=_request_timeout)

    cluster.list_namespaced_pod = upgrading
    assert la.run_phase("stage", timeout_s=3600) == EXIT_OK
    assert out.getvalue().count("Kubernetes API list_namespaced_pod: HTTP 503 Service Unavailable; retrying in") == 8
