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
from lorascope.k8s import render
from lorascope.k8s.launcher import Launcher, cluster_status
from lorascope.phases import PHASE_ORDER
from lorascope.runner import default_run_id
from lorascope.study import load_study
from tests.k8s.api_objects import condition, deserialize, pod


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

    # ---- BatchV1Api
    def read_namespaced_job(self, name, namespace):
        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        return self._job_object(name)

    def create_namespaced_job(self, namespace, body):
        assert body["metadata"]["namespace"] == namespace
        name = body["metadata"]["name"]
        assert name not in self.jobs, "AlreadyExists"
        self._uid += 1
        phase = body["metadata"]["labels"]["lorascope.dev/phase"]
        self.jobs[name] = {
            "body": copy.deepcopy(body),
            "polls": 0,
            "uid": f"uid-{self._uid}",
            "outcome": self.outcomes.get(phase, "ok"),
        }  # decided when submitted
        self.events.append(("create", name))

    def delete_namespaced_job(self, name, namespace, propagation_policy=None):
        assert propagation_policy == "Background"  # the pods go too
        self.jobs.pop(name)
        self.events.append(("delete", name))

    def list_namespaced_job(self, namespace, label_selector=""):
        return SimpleNamespace(items=[self._job_object(n) for n in self.jobs])

    # ---- CoreV1Api
    def read_namespace(self, name):
        if name not in self.namespaces:
            raise ApiException(status=404)

    def create_namespace(self, body):
        assert body["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        self.namespaces.add(body["metadata"]["name"])

    def read_namespaced_secret(self, name, namespace):
        if name not in self.secrets:
            raise ApiException(status=404)

    def read_namespaced_config_map(self, name, namespace):
        if name not in self.configmaps:
            raise ApiException(status=404)

    def create_namespaced_config_map(self, namespace, body):
        self.configmaps[body["metadata"]["name"]] = body

    def replace_namespaced_config_map(self, name, namespace, body):
        self.configmaps[name] = body

    def list_namespaced_pod(self, namespace, label_selector=""):
        uid = label_selector.split("=", 1)[1]
        name = next(n for n, j in self.jobs.items() if j["uid"] == uid)
        return SimpleNamespace(items=self._pods(name))

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
        if j["polls"] <= 1:
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
    assert cluster.configmaps["lorascope-study"]["metadata"]["annotations"]["lorascope.dev/study-hash"] == study.hash

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


def test_a_missing_secret_is_a_config_error_before_anything_is_submitted(smoke):
    cluster = FakeCluster({}, secrets=("lorascope-s3",))
    la, _ = launcher(cluster, smoke)
    with pytest.raises(ConfigError, match="lorascope-postgres is missing.*make kind-up"):
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
    assert "lorascope-study" not in cluster.configmaps  # not replaced under the running Job


def test_until_and_phase_selection_in_the_cli():
    from lorascope.k8s.cli import _phases

    assert _phases(None, "train") == ["stage", "sanity", "hpo", "train"]
    assert _phases("report,drift", None) == ["drift", "report"]
    with pytest.raises(ConfigError, match="unknown phase"):
        _phases("trian", None)
