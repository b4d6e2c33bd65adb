"""The launcher's decisions on Jobs and Pods in the API's own shapes: succeeded, failed with FailIndex, preempted
and replaced."""

from __future__ import annotations

import pytest

from lorascope.k8s.status import (
    decide,
    failed_pods,
    format_indexes,
    headline,
    job_state,
    parse_indexes,
    pod_disrupted,
    summarize,
    table,
)
from tests.fixtures.k8s_objects import HASH, RUN, condition, job, pod


@pytest.mark.parametrize(
    "text,expected",
    [
        ("", set()),
        (None, set()),
        ("0", {0}),
        ("1,3-5,7", {1, 3, 4, 5, 7}),
        ("0-17", set(range(18))),
        ("0-3,5-17", set(range(18)) - {4}),
    ],
)
def test_index_text_round_trips_in_the_api_format(text, expected):
    assert parse_indexes(text) == expected
    # the API compresses runs of three or more; two in a row stay as a list
    assert format_indexes(expected) == (text or "")
    assert format_indexes({1, 2}) == "1,2"


def test_fixtures_are_the_clients_own_model_classes():
    from kubernetes.client import V1Job, V1JobStatus, V1Pod, V1PodCondition

    j, p = job(completed="0"), pod(0, "p", disrupted="TerminationByKubelet")
    assert isinstance(j, V1Job) and isinstance(j.status, V1JobStatus) and j.status.completed_indexes == "0"
    assert isinstance(p, V1Pod) and all(isinstance(c, V1PodCondition) for c in p.status.conditions)
    assert p.status.container_statuses[0].state.running is not None


def test_succeeded_job_is_skipped_on_the_next_run():
    j = job(
        completed="0-17",
        conditions=[condition("SuccessCriteriaMet", "CompletionsReached"), condition("Complete", "CompletionsReached")],
    )
    pods = [pod(i, f"lorascope-train-{i}-x", phase="Succeeded", exit_code=0) for i in range(18)]
    view = summarize(j, pods, unit=lambda i: f"cell{i}")
    assert job_state(j) == "succeeded"
    assert [r.state for r in view.rows] == ["succeeded"] * 18
    assert (view.count("succeeded"), view.count("failed"), view.count("active")) == (18, 0, 0)
    assert view.rows[5].unit == "cell5" and view.rows[5].exit_code == 0 and view.rows[5].tries == 1
    assert failed_pods(j, pods) == []
    d = decide(j, RUN, HASH)
    assert d.action == "skip"


def test_success_criteria_met_already_counts_as_done():
    # Kubernetes >= 1.31 sets SuccessCriteriaMet first, Complete once the last pods are gone
    j = job(completed="0-17", conditions=[condition("SuccessCriteriaMet", "CompletionsReached")])
    assert job_state(j) == "succeeded"


def test_running_job_shows_succeeded_active_and_waiting_indexes():
    j = job(completed="0-5", active=6)
    pods = [pod(i, f"p{i}", phase="Succeeded", exit_code=0) for i in range(6)]
    pods += [pod(i, f"p{i}", phase="Running") for i in range(6, 12)]
    view = summarize(j, pods)
    assert job_state(j) == "running"
    assert (
        view.indexes("succeeded") == "0-5" and view.indexes("active") == "6-11" and view.indexes("waiting") == "12-17"
    )
    assert decide(j, RUN, HASH).action == "wait"
    assert headline(view).endswith("6 succeeded, 0 failed, 6 active, 6 waiting")
    assert len(table(view)) == 2 + 18


def test_failed_with_fail_index_blames_the_config_error_pod():
    # index 4 exited 2 (config error): podFailurePolicy FailIndex marks it failed at once, without retries;
    # the others completed; the Job ends Failed with reason FailedIndexes
    j = job(
        completed="0-3,5-17",
        failed="4",
        conditions=[
            condition("FailureTarget", "FailedIndexes", "Job has failed indexes"),
            condition("Failed", "FailedIndexes", "Job has failed indexes"),
        ],
    )
    pods = [pod(i, f"lorascope-train-{i}-a", phase="Succeeded", exit_code=0) for i in range(18) if i != 4]
    pods.append(
        pod(
            4,
            "lorascope-train-4-a",
            phase="Failed",
            exit_code=2,
            message="error: jobs/study.yaml: field training.micro_batch: Input should be greater than 0",
        )
    )
    view = summarize(j, pods)
    assert job_state(j) == "failed"
    assert view.indexes("failed") == "4" and view.count("succeeded") == 17
    assert view.reason == "FailedIndexes: Job has failed indexes"
    assert view.rows[4].exit_code == 2 and view.rows[4].failures == 1 and view.rows[4].preempted == 0
    [fp] = failed_pods(j, pods)
    assert (fp.index, fp.pod, fp.exit_code, fp.config_error) == (4, "lorascope-train-4-a", 2, True)
    assert "training.micro_batch" in fp.message
    d = decide(j, RUN, HASH)
    assert d.action == "recreate" and "FailedIndexes" in d.why


def test_failed_after_retries_blames_the_newest_attempt():
    # exit 1 (a crash) is retried backoffLimitPerIndex=2 times: three pods, the index fails after the third
    j = job(completions=3, completed="0,2", failed="1", conditions=[condition("Failed", "FailedIndexes")])
    pods = [pod(0, "a0", phase="Succeeded", exit_code=0), pod(2, "a2", phase="Succeeded", exit_code=0)]
    pods += [
        pod(
            1,
            f"b{k}",
            phase="Failed",
            exit_code=1,
            reason="Error",
            created=f"2026-11-20T10:0{k}:00Z",
            message=f"attempt {k}: CUDA out of memory",
        )
        for k in range(3)
    ]
    view = summarize(j, pods)
    assert view.rows[1].tries == 3 and view.rows[1].failures == 3
    [fp] = failed_pods(j, pods)
    assert fp.pod == "b2" and fp.exit_code == 1 and not fp.config_error and "attempt 2" in fp.message


def test_preempted_pod_is_not_a_failure_and_its_index_succeeds_after_replacement():
    # index 7's first pod ran on a spot node that was reclaimed: the kubelet added DisruptionTarget and killed it
    # (exit 143); the podFailurePolicy ignores it, the replacement resumes from the checkpoint and succeeds
    preempted = pod(
        7,
        "lorascope-train-7-a",
        phase="Failed",
        exit_code=143,
        reason="Error",
        disrupted="TerminationByKubelet",
        created="2026-11-20T10:00:02Z",
    )
    replacement_running = pod(7, "lorascope-train-7-b", phase="Running", created="2026-11-20T10:20:00Z")
    assert pod_disrupted(preempted) and not pod_disrupted(replacement_running)

    # mid-run: the index is active again, one preemption, no failure
    j = job(completed="0-6", active=1)
    view = summarize(
        j, [pod(i, f"p{i}", phase="Succeeded", exit_code=0) for i in range(7)] + [preempted, replacement_running]
    )
    row = view.rows[7]
    assert (row.state, row.tries, row.preempted, row.failures, row.pod) == ("active", 2, 1, 0, "lorascope-train-7-b")
    assert view.preempted == 1 and "1 preempted" in headline(view)
    assert decide(j, RUN, HASH).action == "wait"

    # later: the replacement succeeded, the Job completes; nothing is blamed
    replacement_done = pod(7, "lorascope-train-7-b", phase="Succeeded", exit_code=0, created="2026-11-20T10:20:00Z")
    j = job(completed="0-17", conditions=[condition("Complete", "CompletionsReached")])
    pods = [pod(i, f"p{i}", phase="Succeeded", exit_code=0) for i in range(18) if i != 7]
    pods += [preempted, replacement_done]
    view = summarize(j, pods)
    assert view.rows[7].state == "succeeded" and view.rows[7].exit_code == 0 and view.rows[7].preempted == 1
    assert failed_pods(j, pods) == []
    assert decide(j, RUN, HASH).action == "skip"


def test_failed_job_never_blames_a_preempted_pod():
    j = job(completions=2, completed="0", failed="1", conditions=[condition("Failed", "FailedIndexes")])
    pods = [
        pod(0, "a", phase="Succeeded", exit_code=0),
        pod(1, "b1", phase="Failed", exit_code=1, created="2026-11-20T10:00:00Z", message="real crash"),
        pod(1, "b2", phase="Failed", exit_code=143, disrupted="PreemptionByScheduler", created="2026-11-20T10:05:00Z"),
    ]
    [fp] = failed_pods(j, pods)
    assert fp.pod == "b1" and fp.message == "real crash"


def test_decisions_for_other_runs_queued_and_deleted_jobs():
    other = job(run_id="reference-00000000", study_hash="0000000000000000", active=3)
    d = decide(other, RUN, HASH)
    assert d.action == "conflict" and "reference-00000000" in d.why and "kubectl delete job" in d.why
    finished_other = job(
        run_id="smoke-091037c0", completed="0-17", conditions=[condition("Complete", "CompletionsReached")]
    )
    assert decide(finished_other, RUN, HASH).action == "recreate"
    # same run id but a different study hash (someone re-used --run-id after editing the study): not the same run
    assert decide(job(study_hash="ffffffffffffffff", active=1), RUN, HASH).action == "conflict"
    queued = job(suspend=True, conditions=[condition("Suspended", "JobSuspended")])
    assert job_state(queued) == "suspended" and decide(queued, RUN, HASH).action == "wait"
    assert decide(job(deleting=True, active=1), RUN, HASH).action == "recreate"
    assert decide(None, RUN, HASH).action == "create"


# ------------------------------------------------------------------------------------------------ pods that never start
def test_waiting_reasons_and_scheduling_failures_show_in_the_table():
    from lorascope.k8s.status import fatal_waiting, pod_waiting

    stockout = (
        "0/4 nodes are available: 1 Insufficient nvidia.com/gpu, 3 node(s) didn't match Pod's node affinity/selector."
    )
    pods = [
        pod(0, "train-0-a", phase="Running"),
        pod(
            1,
            "train-1-a",
            phase="Pending",
            waiting=("ErrImagePull", 'failed to pull "registry.invalid/x": no such host'),
        ),
        pod(2, "train-2-a", phase="Pending", unschedulable=stockout),
        pod(3, "train-3-a", phase="Pending", waiting=("ContainerCreating", "")),  # normal start-up: not a reason
    ]
    assert pod_waiting(pods[0]) is None and pod_waiting(pods[3]) is None
    assert pod_waiting(pods[1])[0] == "ErrImagePull"
    assert pod_waiting(pods[2]) == ("Unschedulable", stockout)
    view = summarize(job(completions=4, active=4), pods)
    assert [r.waiting for r in view.rows] == ["", "ErrImagePull", "Unschedulable", ""]
    assert [r.state for r in view.rows] == ["active"] * 4  # Pending counts as active for the Job controller too
    lines = table(view)
    assert "1 ErrImagePull, 1 Unschedulable" in lines[0]
    assert lines[3].endswith("train-1-a  ErrImagePull")
    assert "  not started: Unschedulable: 0/4 nodes are available: 1 Insufficient nvidia.com/gpu" in "\n".join(lines)
    # Err*/Invalid* and the config errors will not heal by themselves; Unschedulable may (the autoscaler adds a node)
    assert all(map(fatal_waiting, ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                                    "CreateContainerConfigError"]))  # fmt: skip
    assert not fatal_waiting("Unschedulable") and not fatal_waiting("ContainerCreating")


def test_a_changed_image_or_parallelism_on_a_running_job_is_said_not_silently_waited_on():
    running = job(active=6)
    same = decide(running, RUN, HASH, want_image="lorascope/train:0.1.0", want_parallelism=6)
    assert same.action == "wait"
    d = decide(running, RUN, HASH, want_image="lorascope/train:0.1.0", want_parallelism=3)
    assert d.action == "patch" and "parallelism 6 -> 3" in d.why
    d = decide(running, RUN, HASH, want_image="lorascope/train:0.1.0-gabc", want_parallelism=6)
    assert d.action == "conflict" and "image lorascope/train:0.1.0, not lorascope/train:0.1.0-gabc" in d.why
    # a finished Job is not affected: succeeded skips, failed is recreated with the new settings
    done = job(completed="0-17", conditions=[condition("Complete")])
    assert decide(done, RUN, HASH, want_image="other:1", want_parallelism=1).action == "skip"
