"""The pipeline as one JobSet: the rendered objects validate against the JobSet CRD's own schema (v0.12.0, vendored
in tests/k8s/data with its source; tests/fixtures/manifests.py), meet the JobSet webhook's rules, chain the phases with dependsOn Complete, and
`lorascope status RUN --cluster` / `cluster run --detach` work against API-shaped JobSets."""

from __future__ import annotations

import copy
import io

import pytest

from lorascope.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError
from lorascope.k8s import jobset, render
from lorascope.k8s.launcher import Launcher, pipeline_status
from lorascope.phases import PHASE_ORDER, get_phase
from lorascope.study import load_study
from tests.fixtures.k8s_clients import FakeCustom
from tests.fixtures.k8s_objects import allowed, child_job, condition
from tests.fixtures.k8s_objects import jobset as api_jobset
from tests.fixtures.manifests import DNS_1035, MANIFESTS, REPO, load_objects, manifest_files
from tests.fixtures.manifests import JOBSET_CRD as CRD
from tests.fixtures.manifests import jobset_errors as errors
from tests.fixtures.manifests import jobset_webhook_errors as webhook_errors


def test_the_vendored_schema_is_jobset_v0_12_0_and_has_depends_on_complete():
    assert CRD["tag"] == "v0.12.0" and CRD["source"].endswith(
        "/v0.12.0/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml"
    )
    assert (CRD["group"], CRD["version"], CRD["kind"]) == (jobset.GROUP, jobset.VERSION, "JobSet")
    rj = CRD["openAPIV3Schema"]["properties"]["spec"]["properties"]["replicatedJobs"]["items"]
    dep = rj["properties"]["dependsOn"]
    assert dep["type"] == "array" and dep["items"]["required"] == ["name", "status"]
    assert dep["items"]["properties"]["status"]["enum"] == ["Ready", "Complete"]
    assert dep["x-kubernetes-list-map-keys"] == ["name"]
    status = CRD["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(status["replicatedJobsStatus"]["items"]["properties"]) >= {"name", "ready", "succeeded", "failed",
                                                                          "active", "suspended"}  # fmt: skip


@pytest.mark.parametrize(
    "opts",
    [
        dict(overlay="base"),
        dict(overlay="kind"),
        dict(overlay="gke", registry="europe-west4-docker.pkg.dev/p/lorascope", image_tag="0.1.0-gabc", spot=True),
    ],
)
def test_rendered_jobsets_validate_against_the_crd_schema_and_the_webhook_rules(opts):
    path = REPO / "jobs" / ("smoke.yaml" if opts["overlay"] == "kind" else "study.yaml")
    study = load_study(path)
    js = jobset.pipeline_jobset(study, render.RenderOptions(**opts))
    assert errors(js) == [] and webhook_errors(js) == []
    rjs = js["spec"]["replicatedJobs"]
    assert [rj["name"] for rj in rjs] == [p for p in PHASE_ORDER if get_phase(p).size(study) > 0]
    assert "dependsOn" not in rjs[0]
    for prev, rj in zip(rjs, rjs[1:], strict=False):
        assert rj["dependsOn"] == [{"name": prev["name"], "status": "Complete"}] and rj["replicas"] == 1
    # each phase's Job is the one the launcher submits, less its TTL (the JobSet's own TTL applies)
    jobs = render.phase_jobs(study, render.RenderOptions(**opts))
    for rj in rjs:
        want = {k: v for k, v in jobs[rj["name"]]["spec"].items() if k != "ttlSecondsAfterFinished"}
        assert rj["template"]["spec"] == want
    assert js["spec"]["failurePolicy"] == {"maxRestarts": 0} and js["spec"]["ttlSecondsAfterFinished"] > 0
    assert "kueue.x-k8s.io/queue-name" not in js["metadata"]["labels"]


def test_a_queued_jobset_is_refused_with_what_its_one_workload_would_reserve():
    """Kueue admits a JobSet as one Workload, one PodSet per replicated job (count = replicas x min(parallelism,
    completions), kueue pkg/controller/jobs/jobset/jobset_controller.go): for the reference study every phase's
    pods at once, though dependsOn runs one phase at a time. Refused (exit 2) with the numbers; not rendered."""
    study = load_study(REPO / "jobs" / "study.yaml")
    opts = render.RenderOptions(overlay="gke", registry="europe-west4-docker.pkg.dev/p/lorascope", image_tag="t1",
                                queue="lorascope")  # fmt: skip
    with pytest.raises(ConfigError) as exc:
        jobset.pipeline_jobset(study, opts)
    msg = str(exc.value)
    # sanity 6 + hpo 6 + train 6 + extract 6 + bench 2 L4s; 24 GiB each and 12 GiB for each of the 3 CPU phases
    assert "(26 nvidia.com/gpu, 660Gi memory for this study" in msg and "never use more than 6 GPUs" in msg
    assert "Run without --detach" in msg
    from lorascope.k8s import manifests

    files = manifests.render_files(study, (REPO / "jobs" / "study.yaml").read_text(), opts)
    assert "jobset/jobset.yaml" not in files and "examples/kueue.yaml" in files


def test_committed_jobsets_are_the_rendered_ones_and_valid():
    files = [p for p in manifest_files(custom_resources=True) if p.parent.name == "jobset"]
    assert [p.relative_to(MANIFESTS).as_posix() for p in files] == ["jobset/jobset.yaml", "kind/jobset/jobset.yaml"]
    for p in files:
        [js] = load_objects(p)
        assert js["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and errors(js) == [] and webhook_errors(js) == []


def test_the_schema_and_the_rules_catch_what_the_api_server_would_refuse():
    study = load_study(REPO / "jobs" / "study.yaml")
    good = jobset.pipeline_jobset(study, render.RenderOptions())
    bad = copy.deepcopy(good)
    bad["spec"]["replicatedJobs"][1]["dependsOn"][0]["status"] = "Succeeded"  # not Ready|Complete
    bad["spec"]["replicatedJobs"][2]["replicass"] = 1  # unknown field
    bad["spec"]["replicatedJobs"][3]["template"]["spec"]["backoffLimitPerIndexx"] = 1  # deep in the Job template
    errs = errors(bad)
    assert len(errs) == 3, errs
    assert any("'Succeeded' is not one of ['Ready', 'Complete']" in e for e in errs)
    assert any("replicass" in e for e in errs) and any("backoffLimitPerIndexx" in e for e in errs)
    long = copy.deepcopy(good)
    long["metadata"]["name"] = "lorascope-" + "x" * 40
    long["spec"]["replicatedJobs"][0]["dependsOn"] = [{"name": "report", "status": "Complete"}]
    assert len(webhook_errors(long)) >= 3
    # and the name the renderer picks stays short for any run id
    assert len(jobset.jobset_name("r" * 63)) <= jobset.MAX_NAME and DNS_1035.match(jobset.jobset_name("9Run_X"))


# ------------------------------------------------------------------------------------------------ reading it back
def test_describe_a_running_pipeline_phase_by_phase():
    name = "lorascope-reference-67b50130"
    js = api_jobset(
        name,
        statuses={"stage": {"succeeded": 1}, "sanity": {"succeeded": 1}, "hpo": {"active": 1, "ready": 0}},
    )
    kids = [
        child_job(name, "stage", completions=1, completed="0", conditions=[condition("Complete")]),
        child_job(name, "sanity", completions=6, completed="0-5", conditions=[condition("Complete")]),
        child_job(name, "hpo", completions=18, completed="0-7", active=6),
    ]
    view = jobset.describe(js, kids)
    assert view.state == "running" and view.run_id == "reference-67b50130"
    assert [(r.phase, r.state) for r in view.rows] == [
        ("stage", "succeeded"), ("sanity", "succeeded"), ("hpo", "active"), ("train", "blocked"),
        ("extract", "blocked"), ("drift", "blocked"), ("bench", "blocked"), ("report", "blocked"),
    ]  # fmt: skip
    hpo = view.rows[2]
    assert hpo.job == f"{name}-hpo-0" and hpo.detail == "8/18 indexes succeeded, 0 failed, 6 pods active"
    assert view.rows[3].detail == "waits for hpo to be Complete"


def test_describe_a_failed_and_a_finished_pipeline():
    name = "lorascope-reference-67b50130"
    failed = api_jobset(
        name,
        statuses={"stage": {"succeeded": 1}, "sanity": {"failed": 1}},
        conditions=[condition("Failed", "FailedJobs", "jobset failed due to one or more job failures")],
    )
    view = jobset.describe(
        failed, [child_job(name, "sanity", completions=6, failed="3", conditions=[condition("Failed")])]
    )
    assert view.state == "failed" and view.reason == "FailedJobs: jobset failed due to one or more job failures"
    assert view.rows[1].state == "failed" and "1 failed" in view.rows[1].detail
    done = api_jobset(
        name,
        statuses={p: {"succeeded": 1} for p in PHASE_ORDER},
        conditions=[condition("Completed", "AllJobsCompleted", "jobset completed successfully")],
    )
    view = jobset.describe(done)
    assert view.state == "succeeded" and view.reason == "" and {r.state for r in view.rows} == {"succeeded"}
    text = "\n".join(jobset.lines(view))
    assert text.startswith(f"JobSet {name}  run=reference-67b50130  succeeded")


def _launcher(api, smoke_study_path):
    study = load_study(smoke_study_path)
    out = io.StringIO()
    la = Launcher(api, api, study, smoke_study_path.read_text(), render.RenderOptions(overlay="kind"), out=out,
                  custom=api, sleep=lambda s: None)  # fmt: skip
    return la, out


def test_detach_submits_one_jobset_and_status_reads_it_back(smoke_study_path):
    api = FakeCustom()
    la, out = _launcher(api, smoke_study_path)
    assert la.submit_jobset() == EXIT_OK
    name = jobset.jobset_name(la.run_id)
    assert api.events == [("create", name)]
    assert "stage -> sanity -> hpo -> train -> extract -> drift -> bench -> report" in out.getvalue()
    assert render.study_configmap_name(la.run_id) in api.configmaps
    # submitting again while it runs: nothing new
    la, out = _launcher(api, smoke_study_path)
    assert la.submit_jobset() == EXIT_OK and api.events == [("create", name)]
    assert "is already running: nothing submitted" in out.getvalue()
    # `lorascope status RUN --cluster`
    text = io.StringIO()
    assert pipeline_status(la.run_id, custom=api, batch=api, core=api, out=text) == EXIT_OK
    assert text.getvalue().startswith(f"JobSet {name}  run={la.run_id}  running")
    # it failed: status says so (exit 1); a new submit replaces it (committed indexes skip)
    api.objects[name]["status"] = {"conditions": [condition("Failed", "FailedJobs", "a job failed")]}
    assert pipeline_status(la.run_id, custom=api, batch=api, core=api, out=io.StringIO()) == EXIT_FAILURE
    la, out = _launcher(api, smoke_study_path)
    assert la.submit_jobset() == EXIT_OK
    assert api.events == [("create", name), ("delete", name), ("create", name)]
    from lorascope.k8s import infra

    assert [c for c in api.calls if not allowed(infra.launcher_rules(), c)] == []  # the shipped Role covers --detach


def test_detach_without_the_jobset_crd_and_status_of_an_unknown_run_are_config_errors(smoke_study_path):
    la, _ = _launcher(FakeCustom(crd_installed=False), smoke_study_path)
    with pytest.raises(ConfigError, match=r"no JobSet API \(jobset.x-k8s.io/v1alpha2\): install JobSet >= v0.12.0"):
        la.submit_jobset()
    api = FakeCustom(crd_installed=False)
    with pytest.raises(ConfigError, match="run nope: no JobSet lorascope/lorascope-nope .* and no phase Jobs"):
        pipeline_status("nope", custom=api, batch=api, core=api, out=io.StringIO())
    from lorascope.cli import main

    assert EXIT_CONFIG == 2 and main(["status", "x", "--cluster", "--context", "does-not-exist"]) == 2


def test_status_cluster_of_a_launcher_run_shows_its_phase_jobs(smoke_study_path):
    """No JobSet (the run went through the launcher, or the cluster has no JobSet API): the run's phase Jobs."""
    from tests.fixtures.k8s_objects import RUN, job

    api = FakeCustom(crd_installed=False)
    api.children = [
        job("train", completed="0-9", active=6),
        job("stage", completions=1, completed="0", conditions=[condition("Complete")]),
    ]
    api.list_namespaced_pod = lambda namespace, label_selector="", _request_timeout=None: type("L", (), {"items": []})()
    out = io.StringIO()
    assert pipeline_status(RUN, custom=api, batch=api, core=api, out=out) == EXIT_OK
    lines = out.getvalue().splitlines()
    assert lines[0] == f"run {RUN}: phase Jobs submitted by `lorascope cluster run` (no JobSet)"
    assert lines[1].startswith("[stage] lorascope-stage") and "succeeded" in lines[1]
    assert lines[2].startswith("[train] lorascope-train") and "10 succeeded" in lines[2]
