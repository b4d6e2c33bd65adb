"""Render a study into Kubernetes objects: plain dicts, one function per object. This module is the one source of the
manifests (docs/cluster.md, "One source"): `lorascope render` writes its output as YAML (k8s/manifests.py),
`lorascope cluster run` submits the same objects through the API, and nothing restates them (no hand-written
kustomize patches).

`lorascope render --study S --overlay O --out DIR` (manifests.render_files) writes:

  namespace.yaml          the namespace, Pod Security Standard `restricted` enforced
  study-configmap.yaml    the study file as an immutable ConfigMap named after the run, mounted read-only at
                          /etc/lorascope/study.yaml in every phase pod of that run
  <phase>-job.yaml        one Indexed Job per phase (the train phase's Job is `grid-job.yaml`), completions from the
                          phase's `size(study)`
  jobset/jobset.yaml      the whole pipeline as one JobSet (replicated jobs chained with dependsOn Complete); not
                          with --queue (k8s/kueue.py says why)
  infra/postgres.yaml     PostgreSQL for the shared Optuna studies (when the study runs HPO), with its disruption budget
  infra/minio.yaml        kind only: MinIO as the S3 store, and a Job that makes the bucket
  infra/launcher-role.yaml  the namespaced Role `lorascope cluster run` needs
  infra/network-policy.yaml default-deny ingress; PostgreSQL from the HPO pods only (kind: MinIO from lorascope's pods)
  examples/               the Secrets the Jobs read, with placeholders only; (GPU overlays) a Kueue queue that admits
                          the Jobs. Never applied from DIR
  kustomization.yaml      the files `kubectl apply -k DIR` applies: the namespace, the study and infra/, not the
                          phase Jobs (each needs the previous phase's bundles: the launcher, or one by one)

Overlays (one row each in k8s/overlays.py): `base` (the committed manifests/: GKE-shaped, L4, images under `registry.invalid`, which never
resolves, so nothing in the repository points at a registry someone else could own), `gke` (your registry and tag,
both required: exit 2 without them; optional spot L4 nodes and a Kueue queue), `kind` (no GPU, laptop-sized
resources, the locally built CPU images under localhost/lorascope (tag <code tag>-cpu), imagePullPolicy Never, MinIO).

Every pod: restartPolicy Never, non-root, Pod Security Standard `restricted`, a read-only root filesystem with
/dev/shm, the HF cache, the work dir, /tmp and HOME on emptyDirs sized within the node's allocatable, credentials only from Secrets via envFrom, memory limit = request.
Every Job: Indexed, backoffLimitPerIndex, maxFailedIndexes, a podFailurePolicy that fails an index at once on the
config-error exit code (2) and ignores disruptions, activeDeadlineSeconds from the phase's waves, and
ttlSecondsAfterFinished. Fields used are GA in Kubernetes 1.33.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, replace
from typing import Any

from lorascope import __version__
from lorascope.cuda import REQUIRE_CUDA_ENV  # set in GPU pods: no usable CUDA there is a config error (exit 2)
from lorascope.errors import EXIT_CONFIG, ConfigError
from lorascope.k8s import infra
from lorascope.k8s.infra import POSTGRES_SECRET, S3_SECRET
from lorascope.k8s.overlays import OVERLAY_TABLE, Overlay, Profile, get_overlay
from lorascope.k8s.podspec import container_security, meta, pod_security
from lorascope.phases import PHASE_ORDER, get_phase
from lorascope.study import Study
from lorascope.termination import STOP_BUDGET_ENV

# ---------------------------------------------------------------------------------------------------- constants
DEFAULT_NAMESPACE = "lorascope"
DEFAULT_STORE_URL = "s3://lorascope/store"

STUDY_CONFIGMAP_PREFIX = "lorascope-study"
STUDY_DIR = "/etc/lorascope"
STUDY_PATH = f"{STUDY_DIR}/study.yaml"
CONTAINER = "lorascope"
WORK_DIR = "/work"
HF_HOME = "/cache/hf"
APP_UID = 10001  # the `lorascope` user baked into every image (images/base/Dockerfile)
HOME_DIR = "/home/lorascope"  # its home (images/base/Dockerfile: HOME)
TMP_DIR = "/tmp"
# The root filesystem is read-only in every pod (readOnlyRootFilesystem): every path a phase writes outside the store
# is an emptyDir. name -> mount path; the sizes are in PROFILES. What writes where (docs/cluster.md, "Read-only root"):
#   work      LORASCOPE_WORK_DIR, and under it the image's XDG_CACHE_HOME=/work/.cache (vLLM's compile cache, torch
#             kernels and hub) and MPLCONFIGDIR=/work/.cache/matplotlib
#   hf-cache  HF_HOME: hub downloads, datasets
#   tmp       Python's tempfile, torch inductor's cache (/tmp/torchinductor_<user>), vLLM's RPC sockets
#   home      HOME: what still writes under ~ (Triton's ~/.triton cache, vLLM's ~/.config/vllm usage stats, the
#             NVIDIA driver's ~/.nv compute cache)
#   dshm      /dev/shm (memory): torch's shared-memory tensors
WRITABLE_MOUNTS = {"dshm": "/dev/shm", "hf-cache": HF_HOME, "work": WORK_DIR, "tmp": TMP_DIR, "home": HOME_DIR}

JOB_FILES = {p: ("grid-job.yaml" if p == "train" else f"{p}-job.yaml") for p in PHASE_ORDER}

# The L4 and its driver: `gke-gpu-driver-version: latest` makes node auto-provisioning (and Autopilot) install the
# newest driver of the node's COS version instead of the default (R535 on COS for GKE 1.31-1.33, too old for torch
# 2.13's CUDA 13, which needs R580); a pool created with --accelerator ...,gpu-driver-version=latest carries the same
# node label. docs/cluster.md, "CUDA driver".
GPU_DRIVER_LABEL = "cloud.google.com/gke-gpu-driver-version"
L4_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-l4", GPU_DRIVER_LABEL: "latest"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SPOT_SELECTOR = {"cloud.google.com/gke-spot": "true"}
SPOT_TOLERATION = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_MIN_PARALLELISM = "kueue.x-k8s.io/job-min-parallelism"  # partial admission: start with fewer pods
KUEUE_MIN_PARALLELISM_VALUE = 1  # the fewest pods Kueue may admit a GPU Job with (its deadline is sized for it)

# Resources (the sizes are the overlay's profile: overlays.PROFILES). memory limit = request (a pod can never use
# memory the node did not set aside for it, so node-memory pressure never picks it for eviction; past its limit it is
# OOM-killed: exit 137, a counted retry) and cpu limit = request: QoS Guaranteed, evicted last. ephemeral-storage
# request = limit = the disk emptyDirs' sizeLimits + LOGS_GIB (the root filesystem is read-only: the image's writable
# layer takes nothing), and within the node's allocatable (docs/cluster.md, "Evictions").
LOGS_GIB = 2  # the container's logs (the kubelet counts them against ephemeral-storage); the root FS takes no writes

# Upper bound of one index's wall time on its node (L4 for GPU phases), in hours. A Job's activeDeadlineSeconds is
# this times its waves (ceil(completions / parallelism)) plus one hour for scheduling and image pulls: a Job whose pods
# never start (an L4 stockout, a wrong image) fails with DeadlineExceeded instead of waiting for days.
INDEX_HOURS = {"stage": 2, "sanity": 1, "hpo": 8, "train": 4, "extract": 1, "drift": 2, "bench": 3, "report": 1}

BACKOFF_LIMIT_PER_INDEX = 2  # retries of an index after exit 1 (OOM, store hiccup); preemptions are not counted
# --spot: a reclaimed node whose pods do not get the DisruptionTarget condition (GKE's graceful node shutdown is best
# effort; a pod killed before the kubelet marks it, or a local-storage eviction) counts against the index's retries;
# on spot nodes that happens often enough to spend 2 retries in a day, so an index gets more. The Job's deadline still
# bounds a loop.
BACKOFF_LIMIT_PER_INDEX_SPOT = 6
# SIGTERM: the kubelet's grace before SIGKILL, and the part of it lorascope gives itself to sync a last checkpoint and
# exit (lorascope.termination). GKE gives non-system pods 15 s, best effort, when a spot or preemptible node shuts down
# (graceful node shutdown: 30 s, the second half for system pods), so the budget stays under that; a drain or an
# eviction through the API gets the whole grace.
TERMINATION_GRACE_SECONDS = 30
STOP_BUDGET_SECONDS = 12
TTL_SECONDS = 7 * 24 * 3600  # finished Jobs stay a week for `lorascope cluster status` and `kubectl logs`

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# an image repository (distribution spec): lowercase path components, an optional host[:port] first
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REGISTRY = re.compile(
    rf"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class RenderOptions:
    """Everything the manifests depend on besides the study. `None` means: the overlay's default."""

    overlay: str = "base"
    namespace: str = DEFAULT_NAMESPACE
    run_id: str | None = None  # default: <study>-<hash8>, the local runner's default
    store_url: str = DEFAULT_STORE_URL
    registry: str | None = None  # gke: required; base: registry.invalid; kind: localhost/lorascope
    image_tag: str | None = None  # gke: required; base and kind: the package version
    parallelism: int | None = None  # GPU Jobs' parallelism (capped at completions); default per overlay
    spot: bool = False  # gke: GPU Jobs on spot L4 nodes
    queue: str | None = None  # gke: Kueue LocalQueue name

    def resolved(self, study: Study) -> RenderOptions:
        from lorascope.runner import default_run_id

        overlay = get_overlay(self.overlay)
        if (self.spot or self.queue) and not overlay.cloud_options:
            cloud = " and ".join(o.name for o in OVERLAY_TABLE.values() if o.cloud_options)
            raise ConfigError(f"render: spot and queue are options of the {cloud} overlay only")
        if not _DNS_LABEL.match(self.namespace) or len(self.namespace) > 63:
            raise ConfigError(f"render: namespace {self.namespace!r} is not a valid Kubernetes name (RFC 1123 label)")
        if not self.store_url.startswith("s3://"):
            raise ConfigError(f"render: store {self.store_url!r}: pods need an s3://bucket/prefix store")
        run_id = self.run_id or default_run_id(study)
        if len(run_id) > 63 or not _LABEL_VALUE.match(run_id):
            raise ConfigError(f"render: run id {run_id!r} must be a valid label value (<= 63 chars, [A-Za-z0-9-_.])")
        registry = (self.registry or overlay.default_registry()).rstrip("/")
        if not _REGISTRY.match(registry):
            raise ConfigError(
                f"render: registry {registry!r} is not a valid image repository (lowercase path components, "
                "e.g. europe-west4-docker.pkg.dev/my-project/lorascope); the kubelet would report InvalidImageName"
            )
        if overlay.image_tag_required and not self.image_tag:
            raise ConfigError(
                f"render: the {overlay.name} overlay needs --image-tag (the code version the images were built from)"
            )
        tag = self.image_tag or overlay.image_tag(__version__)
        if tag == "latest" or not _TAG.match(tag):
            raise ConfigError(f"render: image tag {tag!r} must be pinned: [A-Za-z0-9_][A-Za-z0-9_.-]*, not 'latest'")
        parallelism = self.parallelism if self.parallelism is not None else overlay.parallelism
        if parallelism < 1:
            raise ConfigError(f"render: parallelism must be >= 1 (got {parallelism})")
        if self.queue is not None and not _DNS_LABEL.match(self.queue):
            raise ConfigError(f"render: queue {self.queue!r} is not a valid LocalQueue name")
        return replace(self, run_id=run_id, parallelism=parallelism, registry=registry, image_tag=tag)

    @property
    def target(self) -> Overlay:
        """The overlay's row (overlays.OVERLAY_TABLE)."""
        return get_overlay(self.overlay)

    def image(self, phase: str) -> str:
        return f"{self.registry}/{phase}:{self.image_tag}"


def dns_name(text: str, max_len: int = 63) -> str:
    """A DNS-1123 label from a run id: lowercased, other characters to '-'; when that changed or cut the text, a
    hash of the original is appended, so two run ids never map to one name."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "run"
    if slug == text and len(slug) <= max_len:
        return slug
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{slug[: max_len - 9].rstrip('-')}-{digest}"


def study_configmap_name(run_id: str) -> str:
    return f"{STUDY_CONFIGMAP_PREFIX}-{dns_name(run_id, 63 - len(STUDY_CONFIGMAP_PREFIX) - 1)}"


_PARAMS = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)\s*([bBmM])(?![a-zA-Z])")


def model_cache_gib(study: Study) -> int:
    """The stage pod's HF cache: the hub download of the model in fp32 (4 bytes a parameter: hub checkpoints such as
    TinyLlama's intermediate ones are stored in fp32 whatever dtype the study trains in) plus half for the datasets
    and the download's temporary files. The parameter count comes from the model name (`1.1B`, `350M`); an unknown
    size gets 20 GiB."""
    name = study.model.name
    if name.startswith("builtin:"):
        return 1
    m = _PARAMS.search(name.rsplit("/", 1)[-1])
    if not m:
        return 20
    params = float(m.group(1)) * (1e9 if m.group(2) in "bB" else 1e6)
    return max(2, math.ceil(params * 4 * 1.5 / 2**30))


def job_deadline_seconds(phase: str, completions: int, parallelism: int) -> int:
    """Hours per index x waves + 1 h. `parallelism` is the lowest the Job may run with: under Kueue's partial admission
    (KUEUE_MIN_PARALLELISM) that is the minimum Kueue may admit, not the parallelism asked for, so a Job admitted with
    fewer pods still has the time to run every index."""
    waves = math.ceil(completions / max(1, parallelism))
    return (INDEX_HOURS[phase] * waves + 1) * 3600


def resources(profile: Profile, hf_cache_gib: int, phase: str = "") -> tuple[dict, dict[str, str]]:
    """(container resources, emptyDir sizeLimits) for a profile."""
    vols = profile.volumes
    disk = f"{hf_cache_gib + vols['work'] + vols['tmp'] + vols['home'] + LOGS_GIB}Gi"
    req = {"cpu": profile.cpu, "memory": profile.memory_for(phase), "ephemeral-storage": disk}
    if profile.gpu:
        req["nvidia.com/gpu"] = profile.gpu
    lim = dict(req)
    if profile.cpu_limit:
        lim["cpu"] = profile.cpu_limit
    sizes = {"dshm": str(vols["dshm"]), "hf-cache": f"{hf_cache_gib}Gi"}
    sizes.update({name: f"{vols[name]}Gi" for name in ("work", "tmp", "home")})
    return {"requests": req, "limits": lim}, sizes


# ---------------------------------------------------------------------------------------------------- pieces
def object_labels(component: str, part: str, instance: str = "lorascope", version: str = __version__) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "lorascope",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "lorascope",
        "app.kubernetes.io/version": version,
        "app.kubernetes.io/managed-by": "lorascope",
        "lorascope.dev/part": part,  # infra | study | phase: `kubectl apply -k DIR -l lorascope.dev/part=infra`
    }


# ---------------------------------------------------------------------------------------------------- objects
def namespace(opts: RenderOptions) -> dict:
    labels = object_labels("namespace", "infra", version=opts.image_tag)
    labels.update(
        {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "v1.33",
            "pod-security.kubernetes.io/audit": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
        }
    )
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": opts.namespace, "labels": labels}}


def study_configmap(study: Study, study_text: str, opts: RenderOptions) -> dict:
    """One immutable ConfigMap per run: a second run never changes what the first run's pods read."""
    labels = object_labels("study", "study", opts.run_id, opts.image_tag)
    labels.update({"lorascope.dev/run-id": opts.run_id, "lorascope.dev/study-hash": study.hash})
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(
            study_configmap_name(opts.run_id), opts.namespace, labels, {"lorascope.dev/study": study.name}
        ),
        "immutable": True,
        "data": {"study.yaml": study_text},
    }


def phase_job(study: Study, phase: str, opts: RenderOptions, completions: int) -> dict:
    """The Indexed Job of one phase. Pods run `lorascope <phase> --study ... --store ... --run-id ...`; the index
    comes from JOB_COMPLETION_INDEX, which the CLI reads."""
    gpu = get_phase(phase).gpu  # which phases ask for a GPU (an L4): lorascope.phases, the one source
    overlay = opts.target
    gpu_node = gpu and overlay.gpu_nodes  # an L4 node: GPU request, nodeSelector, toleration, CUDA required
    profile = overlay.profile(gpu)
    parallelism = min(opts.parallelism, completions) if gpu else 1
    labels = object_labels(phase, "phase", opts.run_id, opts.image_tag)
    labels.update(
        {
            "lorascope.dev/phase": phase,
            "lorascope.dev/run-id": opts.run_id,
            "lorascope.dev/study-hash": study.hash,
            "lorascope.dev/gpu": "true" if gpu else "false",
        }
    )
    job_labels = dict(labels)
    job_annotations = {
        "lorascope.dev/study": study.name,
        "lorascope.dev/description": get_phase(phase).describe(study, completions),
    }
    min_parallelism = parallelism
    if opts.queue:
        job_labels[KUEUE_LABEL] = opts.queue
        if parallelism > 1:  # Kueue may admit the Job with fewer pods when the quota has fewer L4s free
            min_parallelism = KUEUE_MIN_PARALLELISM_VALUE
            job_annotations[KUEUE_MIN_PARALLELISM] = str(min_parallelism)

    env: list[dict[str, Any]] = [
        {"name": "LORASCOPE_RUN_ID", "value": opts.run_id},
        {"name": "LORASCOPE_STORE", "value": opts.store_url},
        {"name": "LORASCOPE_WORK_DIR", "value": WORK_DIR},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "HOME", "value": HOME_DIR},  # the image's, restated: the home emptyDir is mounted there
        # SIGTERM: seconds to sync a last checkpoint and exit, within terminationGracePeriodSeconds
        {"name": STOP_BUDGET_ENV, "value": str(STOP_BUDGET_SECONDS)},
        # S3 servers other than AWS (MinIO, GCS interop, SeaweedFS) reject boto3's default CRC checksums
        {"name": "AWS_REQUEST_CHECKSUM_CALCULATION", "value": "when_required"},
        {"name": "AWS_RESPONSE_CHECKSUM_VALIDATION", "value": "when_required"},
        # threads = the CPU request (rounded up), so torch does not start one thread per node core
        {"name": "OMP_NUM_THREADS", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1"}}},
        {
            "name": "LORASCOPE_TORCH_THREADS",
            "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1"}},
        },
    ]
    if gpu_node:  # a GPU pod without a usable CUDA exits 2 at once, naming the driver it needs
        env.append({"name": REQUIRE_CUDA_ENV, "value": "1"})
    env_from = [{"secretRef": {"name": S3_SECRET}}]
    if phase == "hpo":
        env_from.append({"secretRef": {"name": POSTGRES_SECRET}})  # LORASCOPE_OPTUNA_STORAGE

    sized = phase == "stage" and overlay.stage_cache_from_model
    hf_cache = model_cache_gib(study) if sized else int(profile.volumes["hf-cache"])
    res, sizes = resources(profile, hf_cache, phase)
    container = {
        "name": CONTAINER,
        "image": opts.image(phase),
        "imagePullPolicy": overlay.pull_policy,
        # the image's ENTRYPOINT is ["lorascope", "<phase>"]
        "args": ["--study", STUDY_PATH, "--store", "$(LORASCOPE_STORE)", "--run-id", "$(LORASCOPE_RUN_ID)"],
        "env": env,
        "envFrom": env_from,
        "resources": res,
        "securityContext": container_security(APP_UID),
        "volumeMounts": [
            {"name": "study", "mountPath": STUDY_DIR, "readOnly": True},
            *({"name": name, "mountPath": path} for name, path in WRITABLE_MOUNTS.items()),
        ],
        # a failed pod's last log lines land in its status: `lorascope cluster run` shows them
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "automountServiceAccountToken": False,
        "securityContext": pod_security(APP_UID),
        "containers": [container],
        "volumes": [
            {
                "name": "study",
                "configMap": {
                    "name": study_configmap_name(opts.run_id),
                    "items": [{"key": "study.yaml", "path": "study.yaml"}],
                },
            },
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": sizes["dshm"]}},
            *({"name": name, "emptyDir": {"sizeLimit": sizes[name]}} for name in WRITABLE_MOUNTS if name != "dshm"),
        ],
    }
    if gpu_node:
        pod_spec["nodeSelector"] = dict(L4_SELECTOR)
        pod_spec["tolerations"] = [dict(GPU_TOLERATION)]
        if opts.spot:
            pod_spec["nodeSelector"].update(SPOT_SELECTOR)
            pod_spec["tolerations"].append(dict(SPOT_TOLERATION))

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(job_name(phase), opts.namespace, job_labels, job_annotations),
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": parallelism,
            "backoffLimitPerIndex": BACKOFF_LIMIT_PER_INDEX_SPOT if opts.spot and gpu_node else BACKOFF_LIMIT_PER_INDEX,
            # more than a third of the indexes failed: something systematic is wrong, stop spending GPU hours
            "maxFailedIndexes": completions // 3,
            # pods that never start (no L4 free, a wrong image) or an eviction loop end here, not in days
            "activeDeadlineSeconds": job_deadline_seconds(phase, completions, min_parallelism),
            "podFailurePolicy": {
                "rules": [
                    # exit 2 = bad config or a missing prerequisite (no usable CUDA): retrying cannot help
                    {
                        "action": "FailIndex",
                        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_CONFIG]},
                    },
                    # preempted (spot), evicted, node drained: not the pod's fault; the replacement resumes
                    # from the last checkpoint in the store (bounded by activeDeadlineSeconds)
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "podReplacementPolicy": "Failed",  # the only value allowed with a podFailurePolicy: one pod per index
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "template": {
                "metadata": {
                    "labels": labels,
                    # the cluster autoscaler must not evict a running phase pod to consolidate nodes
                    "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
                },
                "spec": pod_spec,
            },
        },
    }


def job_name(phase: str) -> str:
    return f"lorascope-{phase}"


# ---------------------------------------------------------------------------------------------------- everything
def needs_postgres(study: Study) -> bool:
    return get_phase("hpo").size(study) > 0


def render_objects(study: Study, study_text: str, opts: RenderOptions, include_infra: bool = True) -> list[dict]:
    """Every object of a run for an overlay: namespace, PostgreSQL (HPO only), the study ConfigMap, the phase Jobs
    (in phase order), and MinIO for kind. The launcher submits these; `lorascope render` writes them."""
    opts = opts.resolved(study)
    out: list[dict] = []
    if include_infra:
        out.append(namespace(opts))
        out += infra_objects(study, opts)
    out.append(study_configmap(study, study_text, opts))
    for phase in PHASE_ORDER:
        n = get_phase(phase).size(study)
        if n > 0:
            out.append(phase_job(study, phase, opts, n))
    return out


def infra_objects(study: Study, opts: RenderOptions) -> list[dict]:
    """PostgreSQL (HPO only), MinIO (an overlay whose store is in the cluster), the launcher's Role and the
    NetworkPolicies: what `kubectl apply -k DIR` applies besides the namespace and the study."""
    out: list[dict] = []
    if needs_postgres(study):
        out += infra.postgres(opts)
    if opts.target.store_in_cluster:
        out += infra.minio(opts)
    out.append(infra.launcher_role(opts))
    out += infra.network_policies(opts, postgres_too=needs_postgres(study), minio_too=opts.target.store_in_cluster)
    return out


def phase_jobs(study: Study, opts: RenderOptions) -> dict[str, dict]:
    """phase -> its Job (phases with no index, e.g. hpo when disabled, have none)."""
    return {
        o["metadata"]["labels"]["lorascope.dev/phase"]: o
        for o in render_objects(study, "", opts, include_infra=False)
        if o["kind"] == "Job"
    }
