"""`lorascope render`: the committed manifests are the rendered ones, and every Job is what the cluster needs."""

from __future__ import annotations

import re

import pytest

from lorascope.cli import main
from lorascope.errors import ConfigError
from lorascope.k8s import manifests, render
from lorascope.phases import PHASE_ORDER, get_phase
from lorascope.study import load_study
from tests.fixtures.manifests import (
    MANIFESTS,
    REPO,
    image_pinned,
    load_objects,
    manifest_files,
    pod_templates,
    resource_violations,
    restricted_violations,
)

STUDY = REPO / "jobs" / "study.yaml"
SMOKE = REPO / "jobs" / "smoke.yaml"


@pytest.fixture(scope="module")
def study():
    return load_study(STUDY)


@pytest.fixture(scope="module")
def jobs(study):
    return {p: load_objects(MANIFESTS / render.JOB_FILES[p])[0] for p in PHASE_ORDER}


KIND = MANIFESTS / "kind"


def test_committed_manifests_are_the_render_output_of_jobs_study_yaml(study):
    """One source: every committed file under manifests/ (except the kind cluster config) is render output, and
    nothing is committed that the render does not write (no hand-kept overlay to drift)."""
    for folder, path, overlay in ((MANIFESTS, STUDY, "base"), (KIND, SMOKE, "kind")):
        files = manifests.render_files(load_study(path), path.read_text(), render.RenderOptions(overlay=overlay))
        stale = [name for name, text in files.items() if (folder / name).read_text() != text]
        assert not stale, f"{folder} differs from `lorascope render --overlay {overlay}`: {stale}; run make k8s-render"
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*.yaml") if KIND not in (p, *p.parents)}
        if folder == KIND:
            on_disk = {str(p.relative_to(KIND)) for p in KIND.rglob("*.yaml")} - {"kind-cluster.yaml"}
        assert on_disk == set(files), on_disk ^ set(files)


def test_render_command_writes_the_same_files_and_gke_fails_closed(tmp_path, capsys):
    assert main(["render", "--study", str(STUDY), "--out", str(tmp_path)]) == 0
    for name in ("grid-job.yaml", "hpo-job.yaml", "study-configmap.yaml", "jobset/jobset.yaml", "kustomization.yaml"):
        assert (tmp_path / name).read_text() == (MANIFESTS / name).read_text()
    assert "train=18" in capsys.readouterr().out
    # a bad option is a config error (exit 2) naming it
    assert main(["render", "--study", str(STUDY), "--out", str(tmp_path), "--run-id", "Bad Run!"]) == 2
    assert "run id 'Bad Run!'" in capsys.readouterr().err
    # gke: no registry, an upper-case placeholder, or no tag is a usage error before anything is written
    gke = ["render", "--study", str(STUDY), "--overlay", "gke", "--out", str(tmp_path / "gke")]
    assert main(gke + ["--image-tag", "0.1.0-gabc"]) == 2
    assert "the gke overlay needs --registry" in capsys.readouterr().err
    assert main(gke + ["--registry", "us-central1-docker.pkg.dev/PROJECT_ID/lorascope", "--image-tag", "t1"]) == 2
    assert "InvalidImageName" in capsys.readouterr().err
    assert main(gke + ["--registry", "europe-west4-docker.pkg.dev/my-proj/lorascope"]) == 2
    assert "needs --image-tag" in capsys.readouterr().err
    assert not (tmp_path / "gke").exists()
    # the launcher refuses the same before it talks to any cluster; its default tag is the code version
    assert main(["cluster", "run", "--study", str(STUDY), "--overlay", "gke", "--context", "none"]) == 2
    assert "the gke overlay needs --registry" in capsys.readouterr().err
    reg = "europe-west4-docker.pkg.dev/my-proj/lorascope"
    assert main(gke + ["--registry", reg, "--image-tag", "0.1.0-g1a2b3c4d5e6f", "--spot", "--queue", "gpu"]) == 0
    [grid] = load_objects(tmp_path / "gke" / "grid-job.yaml")
    assert grid["spec"]["template"]["spec"]["containers"][0]["image"] == f"{reg}/train:0.1.0-g1a2b3c4d5e6f"
    assert grid["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    # Kueue partial admission: the grid may start with fewer pods than its parallelism when fewer L4s are free
    assert grid["metadata"]["annotations"]["kueue.x-k8s.io/job-min-parallelism"] == "1"
    # Kueue's webhook accepts it only within [0, parallelism - 1]: absent on the one-pod Jobs
    assert int(grid["metadata"]["annotations"]["kueue.x-k8s.io/job-min-parallelism"]) < grid["spec"]["parallelism"]
    [report] = load_objects(tmp_path / "gke" / "report-job.yaml")
    assert (
        report["spec"]["parallelism"] == 1
        and "kueue.x-k8s.io/job-min-parallelism" not in report["metadata"]["annotations"]
    )
    assert grid["spec"]["template"]["spec"]["nodeSelector"]["cloud.google.com/gke-spot"] == "true"


def test_no_lorascope_image_points_at_a_registry_we_do_not_own():
    """base: registry.invalid (RFC 2606: never resolves); kind: localhost (images loaded into the node). Every
    reference is lowercase and pinned, so the kubelet never reports InvalidImageName."""
    ref = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+:[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    seen = 0
    for path in manifest_files():
        for obj in load_objects(path):
            for pod in pod_templates(obj):
                for c in pod["containers"]:
                    if c["name"] != "lorascope":
                        continue
                    seen += 1
                    image = c["image"]
                    assert ref.match(image), image
                    kind = KIND in path.parents
                    assert image.startswith("localhost/lorascope/" if kind else "registry.invalid/lorascope/"), path
                    assert c["imagePullPolicy"] == ("Never" if kind else "IfNotPresent")
    assert seen == 2 * 8  # the phase Jobs of manifests/ and manifests/kind
    # the launcher tags with the code version ('+' is not allowed in a tag); "unset" is missing, never a tag
    from lorascope.runner import image_tag

    assert image_tag("0.1.0+g1a2b3c4d5e6f") == "0.1.0-g1a2b3c4d5e6f"
    assert image_tag("0.1.0+g1a2b3c4d5e6f.dirty") == "0.1.0-g1a2b3c4d5e6f-dirty"
    for bad in ("", "unset"):
        with pytest.raises(ConfigError, match="--image-tag"):
            image_tag(bad)


def test_grid_job_fans_out_the_18_cells_and_is_ready_to_apply(study, jobs):
    [grid] = load_objects(MANIFESTS / "grid-job.yaml")
    assert grid["kind"] == "Job" and grid["metadata"]["name"] == "lorascope-train"
    assert grid["metadata"]["namespace"] == "lorascope"
    assert grid["spec"]["completions"] == len(study.cells()) == 18
    assert grid["spec"]["completionMode"] == "Indexed"
    assert grid["spec"]["parallelism"] == 6
    env = {e["name"]: e.get("value") for e in grid["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LORASCOPE_RUN_ID"] == f"reference-{study.hash[:8]}" and env["LORASCOPE_STORE"].startswith("s3://")
    assert env["LORASCOPE_REQUIRE_CUDA"] == "1"  # no usable CUDA in this pod: exit 2, naming the driver
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == env["AWS_RESPONSE_CHECKSUM_VALIDATION"] == "when_required"
    # parallelism is a render option, capped at the completions
    for asked, got in ((3, 3), (100, 18)):
        job = render.phase_jobs(study, render.RenderOptions(parallelism=asked))["train"]
        assert job["spec"]["parallelism"] == got and job["spec"]["completions"] == 18


def test_completions_follow_the_phase_sizes(study, jobs):
    smoke = load_study(SMOKE)
    expected = {"stage": 1, "sanity": 6, "hpo": 18, "train": 18, "extract": 21, "drift": 1, "bench": 2, "report": 1}
    assert {p: get_phase(p).size(study) for p in PHASE_ORDER} == expected
    assert {p: j["spec"]["completions"] for p, j in jobs.items()} == expected
    # the smoke study: 1 HPO worker, 2 bench backends (hf, vllm)
    assert get_phase("hpo").size(smoke) == 6 and get_phase("bench").size(smoke) == 2


def test_job_descriptions_and_gpu_labels_come_from_phase(jobs, study):
    """render restates no phase fact: each Job's description and GPU label are its Phase's."""
    for phase, job in jobs.items():
        p = get_phase(phase)
        meta = job["metadata"]
        assert meta["annotations"]["lorascope.dev/description"] == p.describe(study)
        assert meta["labels"]["lorascope.dev/gpu"] == ("true" if p.gpu else "false")
    assert jobs["hpo"]["metadata"]["annotations"]["lorascope.dev/description"] == (
        "hpo: 18 index(es); one index per task x method x worker (3 workers share an Optuna study)"
    )


def test_every_job_retries_per_index_fails_fast_on_config_errors_and_ignores_preemption(jobs):
    for phase, job in jobs.items():
        spec = job["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["backoffLimitPerIndex"] == 2
        assert 0 <= spec["maxFailedIndexes"] <= spec["completions"]
        assert spec["ttlSecondsAfterFinished"] > 0
        assert spec["podReplacementPolicy"] == "Failed"
        rules = spec["podFailurePolicy"]["rules"]
        assert {
            "action": "FailIndex",
            "onExitCodes": {"containerName": "lorascope", "operator": "In", "values": [2]},
        } in rules
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
        tpl = spec["template"]
        assert tpl["spec"]["restartPolicy"] == "Never"
        for labels in (job["metadata"]["labels"], tpl["metadata"]["labels"]):
            assert labels["app.kubernetes.io/name"] == "lorascope"
            assert labels["app.kubernetes.io/component"] == phase
            assert labels["app.kubernetes.io/part-of"] == "lorascope"
            assert labels["app.kubernetes.io/instance"] == labels["lorascope.dev/run-id"]
        [c] = tpl["spec"]["containers"]
        assert c["args"][:2] == ["--study", "/etc/lorascope/study.yaml"]
        assert c["image"] == f"registry.invalid/lorascope/{phase}:{render.__version__}"


def test_gpu_jobs_ask_for_one_l4_and_fit_a_g2_standard_8(jobs):
    for phase, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        res = pod["containers"][0]["resources"]
        if phase in ("sanity", "hpo", "train", "extract", "bench"):
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "1"
            # the L4, and the newest driver of the node's COS (torch 2.13's CUDA 13 needs R580; the default is R535)
            assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4",
                                           "cloud.google.com/gke-gpu-driver-version": "latest"}  # fmt: skip
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            # g2-standard-8: 8 vCPU, 32 GB; allocatable ~7.9 CPU / ~28 GiB
            assert float(res["requests"]["cpu"]) <= 7.5 and res["requests"]["memory"] == "24Gi"
        else:
            assert "nvidia.com/gpu" not in res["requests"] and "nodeSelector" not in pod and "tolerations" not in pod
    assert sorted(p for p, j in jobs.items() if j["metadata"]["labels"]["lorascope.dev/gpu"] == "true") == sorted(
        p for p in PHASE_ORDER if get_phase(p).gpu
    )


def test_pods_mount_shm_caches_study_and_take_credentials_only_from_secrets(jobs):
    for phase, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        c = pod["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        assert "emptyDir" in vols[mounts[env["HF_HOME"]["value"]]]
        assert "emptyDir" in vols[mounts[env["LORASCOPE_WORK_DIR"]["value"]]]
        assert (
            vols[mounts["/etc/lorascope"]]["configMap"]["name"]
            == f"lorascope-study-{job['metadata']['labels']['lorascope.dev/run-id']}"
        )
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "LORASCOPE_OPTUNA_STORAGE"} & set(env)
        secrets = [s["secretRef"]["name"] for s in c["envFrom"]]
        assert secrets == (["lorascope-s3", "lorascope-postgres"] if phase == "hpo" else ["lorascope-s3"])


def test_every_pod_template_meets_restricted_and_has_requests_and_limits():
    seen = 0
    for path in manifest_files() + manifest_files(custom_resources=True):
        for obj in load_objects(path):
            for pod in pod_templates(obj):
                seen += 1
                where = f"{path.relative_to(REPO)} {obj['kind']}/{obj['metadata']['name']}"
                assert restricted_violations(pod) == [], where
                assert resource_violations(pod) == [], where
                for c in pod["containers"]:
                    assert image_pinned(c["image"]), f"{where}: image {c['image']} is not pinned"
    # the phase Jobs of manifests/ and kind/, the same in both JobSets, PostgreSQL twice, MinIO and its bucket Job
    assert seen == 2 * 8 + 2 * 8 + 2 + 2


def dockerfile_env(path) -> dict[str, str]:
    """The ENV instructions of a Dockerfile (`ENV K=V \\` continued over lines), name -> value."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            out.update(kv.split("=", 1) for kv in line[4:].split() if "=" in kv)
    return out


def test_every_container_has_a_read_only_root_and_every_path_a_phase_writes_is_a_writable_emptydir():
    """readOnlyRootFilesystem everywhere; in the phase pods every directory the images point a writer at (their ENV's
    absolute paths: HOME, HF_HOME, the work dir, MPLCONFIGDIR, XDG_CACHE_HOME) and /tmp lie on a writable emptyDir."""
    image_env = {}
    for dockerfile in sorted((REPO / "images").glob("*/Dockerfile")):
        image_env.update(dockerfile_env(dockerfile))
    # read, never written: the stage image's model wheel is baked in (lorascope downloads only into an empty folder)
    # and the driver paths GKE mounts read-only (LD_LIBRARY_PATH, PATH: /usr/local/nvidia)
    read_only = {"LORASCOPE_WHEEL_DIR", "LD_LIBRARY_PATH", "PATH"}
    paths = {k: v for k, v in image_env.items() if v.startswith("/") and k not in read_only}
    assert {"HOME", "HF_HOME", "LORASCOPE_WORK_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME"} <= set(paths), image_env
    seen = 0
    for path in manifest_files() + manifest_files(custom_resources=True):
        for obj in load_objects(path):
            for pod in pod_templates(obj):
                vols = {v["name"]: v for v in pod.get("volumes", [])}
                for c in pod["containers"]:
                    where = f"{path.relative_to(REPO)} {obj['metadata']['name']}/{c['name']}"
                    assert c["securityContext"].get("readOnlyRootFilesystem") is True, where
                    seen += 1
                    if c["name"] != render.CONTAINER:
                        continue
                    writable = [m["mountPath"] for m in c["volumeMounts"]
                                if not m.get("readOnly") and "emptyDir" in vols[m["name"]]]  # fmt: skip
                    assert sorted(writable) == sorted(render.WRITABLE_MOUNTS.values()), where
                    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
                    wanted = {**paths, **{k: v for k, v in env.items() if k in paths}, "TMPDIR": "/tmp"}
                    for name, target in wanted.items():
                        assert any(target == m or target.startswith(m.rstrip("/") + "/") for m in writable), (
                            f"{where}: {name}={target} is on the read-only root filesystem"
                        )
    assert seen == 2 * 8 + 2 * 8 + 2 + 2


def test_the_restricted_checker_catches_what_admission_would_refuse(jobs):
    import copy

    pod = copy.deepcopy(jobs["train"]["spec"]["template"]["spec"])
    assert restricted_violations(pod) == []
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["containers"][0]["securityContext"]["runAsUser"] = 0
    pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    del pod["securityContext"]["seccompProfile"], pod["containers"][0]["securityContext"]["seccompProfile"]
    bad = restricted_violations(pod)
    assert len(bad) == 4, bad
    assert (
        not image_pinned("postgres:latest") and not image_pinned("postgres") and image_pinned("postgres:17.6-bookworm")
    )
    assert image_pinned("us-central1-docker.pkg.dev/p/lorascope/train:0.1.0") and image_pinned("localhost:5000/x:1")


def test_namespace_enforces_restricted_and_infra_is_pinned_with_its_own_labels():
    [ns] = load_objects(MANIFESTS / "namespace.yaml")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pg = {o["kind"]: o for o in load_objects(MANIFESTS / "infra" / "postgres.yaml")}
    assert pg["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:17.6-bookworm"
    assert pg["Deployment"]["spec"]["strategy"]["type"] == "Recreate"
    assert pg["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "5Gi"
    for o in pg.values():  # PostgreSQL's own name and version, not lorascope's
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "postgres" and labels["app.kubernetes.io/version"] == "17.6"
        assert labels["app.kubernetes.io/part-of"] == "lorascope" and labels["lorascope.dev/part"] == "infra"
    assert pg["Deployment"]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "postgres"
    minio = {(o["kind"], o["metadata"]["name"]): o for o in load_objects(KIND / "infra" / "minio.yaml")}
    for o in minio.values():
        assert o["metadata"]["labels"]["app.kubernetes.io/name"] == "minio"
        assert o["metadata"]["labels"]["app.kubernetes.io/version"] == "RELEASE.2025-09-07T16-13-09Z"
    image = minio[("Deployment", "minio")]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("quay.io/minio/minio:RELEASE.")
    script = minio[("Job", "minio-bucket")]["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "mc mb --ignore-existing local/lorascope" in script  # idempotent


@pytest.mark.parametrize(
    "opts,match",
    [
        (dict(run_id="x" * 64), "run id"),
        (dict(namespace="Lorascope"), "namespace"),
        (dict(store_url="/tmp/store"), "s3://"),
        (dict(image_tag="latest"), "pinned"),
        (dict(parallelism=0), "parallelism"),
        (dict(spot=True), "gke overlay only"),
        (dict(overlay="eks"), "overlay"),
        (dict(overlay="gke", image_tag="t"), "needs --registry"),
        (dict(overlay="gke", registry="eu.gcr.io/p/l"), "needs --image-tag"),
        (dict(registry="us-docker.pkg.dev/PROJECT_ID/x"), "InvalidImageName"),
        (dict(image_tag="0.1.0+g12"), "pinned"),
    ],
)
def test_bad_render_options_are_config_errors(study, opts, match):
    with pytest.raises(ConfigError, match=match):
        render.RenderOptions(**opts).resolved(study)


# ------------------------------------------------------------------------------------------------ readiness
def _gib(q: str) -> float:
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1.0}
    return float(q[:-2]) * units[q[-2:]]


# g2-standard-8 with the documented 200 GB boot disk, e2-standard-8 with GKE's default 100 GB (docs/cluster.md,
# "Evictions"): what the kubelet leaves for pods, with a margin for GKE's own DaemonSets
ALLOCATABLE = {"gpu": {"memory": 27.0, "disk": 100.0}, "cpu": {"memory": 27.0, "disk": 44.0}}


def test_phase_pods_cannot_be_picked_by_node_pressure_eviction_and_fit_the_node(jobs):
    """memory limit = request (and cpu): QoS Guaranteed; ephemeral request = limit, covering every disk emptyDir's
    sizeLimit plus the logs (the root filesystem is read-only), and within the node's allocatable (the kubelet never has to evict to get space
    back, and a full emptyDir is the pod's own limit, not a node-pressure eviction)."""
    for phase, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        res = pod["containers"][0]["resources"]
        assert res["limits"] == res["requests"], phase  # cpu, memory, ephemeral-storage, GPU
        vols = {v["name"]: v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v}
        disk = sum(_gib(v["sizeLimit"]) for v in vols.values() if v.get("medium") != "Memory")
        shm = _gib(vols["dshm"]["sizeLimit"])
        eph = _gib(res["requests"]["ephemeral-storage"])
        assert disk + 2 <= eph, phase  # room for the logs
        node = ALLOCATABLE["gpu" if get_phase(phase).gpu else "cpu"]
        assert eph <= node["disk"] and _gib(res["requests"]["memory"]) <= node["memory"], phase
        assert shm <= _gib(res["limits"]["memory"]) / 4, phase  # /dev/shm counts against the memory limit


def test_every_job_has_a_deadline_from_its_waves(study, jobs):
    """Pending pods count as active; without a deadline an L4 stockout leaves a Job (and the launcher) waiting for
    days. activeDeadlineSeconds = hours per index x waves + 1 h."""
    expected_hours = {"stage": 3, "sanity": 2, "hpo": 8 * 3 + 1, "train": 4 * 3 + 1, "extract": 1 * 4 + 1,
                      "drift": 3, "bench": 3 + 1, "report": 2}  # fmt: skip
    assert {p: j["spec"]["activeDeadlineSeconds"] // 3600 for p, j in jobs.items()} == expected_hours
    one_at_a_time = render.phase_jobs(study, render.RenderOptions(parallelism=1))["train"]
    assert one_at_a_time["spec"]["activeDeadlineSeconds"] == (4 * 18 + 1) * 3600


def test_stage_hf_cache_is_sized_from_the_model(study, jobs):
    """TinyLlama-1.1B's hub checkpoint is fp32: 1.1e9 x 4 bytes = 4.4 GB (4.1 GiB), more than the old 5 GiB cache
    held once the datasets and the download's temporary files came along."""
    vols = {v["name"]: v for v in jobs["stage"]["spec"]["template"]["spec"]["volumes"]}
    assert vols["hf-cache"]["emptyDir"]["sizeLimit"] == "7Gi" == f"{render.model_cache_gib(study)}Gi"
    assert 1.1e9 * 4 * 1.5 / 2**30 <= 7
    other = {v["name"]: v for v in jobs["train"]["spec"]["template"]["spec"]["volumes"]}
    assert other["hf-cache"]["emptyDir"]["sizeLimit"] == "5Gi"  # later phases read the model from the store

    def sized(name: str) -> int:
        return render.model_cache_gib(study.model_copy(update={"model": study.model.model_copy(update={"name": name})}))

    assert sized("meta-llama/Llama-3.1-8B") == 45 and sized("EleutherAI/pythia-410m") == 3
    assert sized("builtin:tiny-llama") == 1 and sized("org/some-model") == 20  # unknown size: the safe default


def test_a_run_id_becomes_a_distinct_dns_name():
    assert render.study_configmap_name("reference-67b50130") == "lorascope-study-reference-67b50130"
    a, b = render.study_configmap_name("Run_A"), render.study_configmap_name("run-a")
    assert (
        a != b and re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", a) and len(render.study_configmap_name("x" * 63)) <= 63
    )
