"""`lorascope cluster run` against an in-memory API that answers like the real one (V1Job / V1Pod objects, 404
ApiExceptions): phases in order, a live table, a stop at the first failed phase with the failing pod's log lines,
and a second run that continues where the first stopped."""

from __future__ import annotations

import io

import pytest
from kubernetes.client.exceptions import ApiException

from lorascope.errors import EXIT_CONFIG, EXIT_OK, ConfigError
from lorascope.k8s import infra, render
from lorascope.k8s.launcher import Launcher, cluster_status
from lorascope.phases import PHASE_ORDER
from lorascope.runner import default_run_id
from lorascope.study import load_study
from tests.fixtures.k8s_clients import FakeCluster
from tests.fixtures.k8s_objects import allowed


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
