"""Render a study into Kubernetes manifests: plain dicts, one function per object, written as YAML by `write`.

What is rendered (`lorascope render --study jobs/study.yaml --out manifests/` writes these files):

  namespace.yaml          the namespace, Pod Security Standard `restricted` enforced
  study-configmap.yaml    the study file, mounted read-only at /etc/lorascope/study.yaml in every phase pod
  <phase>-job.yaml        one Indexed Job per phase (the train phase's Job is `grid-job.yaml`), completions from the
                          phase's `size(study)`
  postgres.yaml           PostgreSQL that the HPO workers of one task x method share an Optuna study in
  minio.yaml              S3 for kind (MinIO, pinned; upstream is in maintenance mode), bucket made by a Job
  secret-example.yaml     the two Secrets the Jobs read, with placeholders only (never applied by kustomize)
  base/                   the same objects in one file + kustomization.yaml: the base the overlays build on

Overlays change a few things, and the same changes are made here in Python so that the launcher (`lorascope cluster
run`) needs no kubectl; a test checks that `kubectl kustomize manifests/overlays/<x>` equals `render_objects(...,
overlay=x)` object by object:
  kind  no GPU requests, node selectors or tolerations; small CPU/memory; imagePullPolicy Never; the smoke study;
        MinIO.
  gke   images from a registry (Artifact Registry); optional spot L4 nodes (`spot=True`) and Kueue queue (`queue=`).

Every pod: restartPolicy Never, non-root, Pod Security Standard `restricted` (runAsNonRoot, numeric user, no privilege
escalation, all capabilities dropped, seccomp RuntimeDefault), /dev/shm and the HF cache and work dir on emptyDirs,
credentials only from Secrets via envFrom. Every Job: Indexed, backoffLimitPerIndex, maxFailedIndexes, a
podFailurePolicy that fails an index at once on the config-error exit code (2) and ignores disruptions (spot
preemption, eviction), ttlSecondsAfterFinished. Fields used are GA in Kubernetes 1.33 (backoffLimitPerIndex GA in
1.33, podFailurePolicy GA in 1.31).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from lorascope import __version__
from lorascope.errors import EXIT_CONFIG, ConfigError
from lorascope.phases import PHASE_ORDER
from lorascope.study import Study

# ---------------------------------------------------------------------------------------------------- constants
OVERLAYS = ("base", "kind", "gke")
DEFAULT_NAMESPACE = "lorascope"
DEFAULT_STORE_URL = "s3://lorascope/store"
DEFAULT_REGISTRY = "lorascope"  # image = <registry>/<phase>:<tag>; kind loads images under this name
GKE_REGISTRY = "us-central1-docker.pkg.dev/PROJECT_ID/lorascope"  # the gke overlay's placeholder (docs/cluster.md)
DEFAULT_PARALLELISM = {"base": 6, "kind": 2, "gke": 6}

STUDY_CONFIGMAP = "lorascope-study"
STUDY_DIR = "/etc/lorascope"
STUDY_PATH = f"{STUDY_DIR}/study.yaml"
S3_SECRET = "lorascope-s3"  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION
POSTGRES_SECRET = "lorascope-postgres"  # POSTGRES_USER/_PASSWORD/_DB and LORASCOPE_OPTUNA_STORAGE
POSTGRES_NAME = "lorascope-postgres"
CONTAINER = "lorascope"
WORK_DIR = "/work"
HF_HOME = "/cache/hf"

# Pinned third-party images (no `latest` anywhere). Docker Hub's minio/minio was removed in 2026: use quay.io.
POSTGRES_IMAGE = "postgres:17.6-bookworm"
MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
MINIO_BUCKET = "lorascope"

APP_UID = 10001  # the `lorascope` user baked into every image (images/base/Dockerfile)
POSTGRES_UID = 999  # the `postgres` user of the official image
MINIO_UID = 1000

# Which phases ask for a GPU (an L4). stage downloads (CPU, network); drift and report are numpy/matplotlib.
GPU_PHASES = frozenset({"sanity", "hpo", "train", "extract", "bench"})
JOB_FILES = {p: ("grid-job.yaml" if p == "train" else f"{p}-job.yaml") for p in PHASE_ORDER}

L4_SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SPOT_SELECTOR = {"cloud.google.com/gke-spot": "true"}
SPOT_TOLERATION = {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"

# g2-standard-8 = 8 vCPU, 32 GB, one L4 (24 GB). Allocatable is ~7.9 CPU / ~29 GiB: request 6 CPU / 24 GiB.
# A full fine-tuning checkpoint of a 1.1B model with AdamW state is ~13 GB: give the work dir room for two
# (boot disk of the L4 pool: 200 GB, docs/cluster.md).
RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "gpu": {
        "requests": {"cpu": "6", "memory": "24Gi", "ephemeral-storage": "50Gi", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "8", "memory": "28Gi", "ephemeral-storage": "120Gi", "nvidia.com/gpu": "1"},
    },
    "cpu": {
        "requests": {"cpu": "2", "memory": "12Gi", "ephemeral-storage": "20Gi"},
        "limits": {"cpu": "4", "memory": "16Gi", "ephemeral-storage": "40Gi"},
    },
    # kind: a laptop. The smoke study's model is tiny.
    "kind": {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "6Gi"},
    },
}
VOLUME_LIMITS = {  # emptyDir sizeLimit per volume
    "gpu": {"dshm": "8Gi", "hf-cache": "20Gi", "work": "100Gi"},
    "cpu": {"dshm": "1Gi", "hf-cache": "5Gi", "work": "30Gi"},
}

BACKOFF_LIMIT_PER_INDEX = 2  # retries of an index after exit 1 (OOM, store hiccup); preemptions are not counted
TTL_SECONDS = 7 * 24 * 3600  # finished Jobs stay a week for `lorascope cluster status` and `kubectl logs`

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class RenderOptions:
    """Everything the manifests depend on besides the study. `None` means: the overlay's default."""

    overlay: str = "base"
    namespace: str = DEFAULT_NAMESPACE
    run_id: str | None = None  # default: <study>-<hash8>, the local runner's default
    store_url: str = DEFAULT_STORE_URL
    registry: str | None = None  # default: `lorascope` (base, kind) or the gke placeholder
    image_tag: str = __version__
    parallelism: int | None = None  # GPU Jobs' parallelism (capped at completions); default per overlay
    spot: bool = False  # gke: GPU Jobs on spot L4 nodes
    queue: str | None = None  # gke: Kueue LocalQueue name

    def resolved(self, study: Study) -> RenderOptions:
        from lorascope.runner import default_run_id

        if self.overlay not in OVERLAYS:
            raise ConfigError(f"render: overlay {self.overlay!r} is not one of {', '.join(OVERLAYS)}")
        if (self.spot or self.queue) and self.overlay != "gke":
            raise ConfigError("render: spot and queue are options of the gke overlay only")
        if not _DNS_LABEL.match(self.namespace) or len(self.namespace) > 63:
            raise ConfigError(f"render: namespace {self.namespace!r} is not a valid Kubernetes name (RFC 1123 label)")
        if not self.store_url.startswith("s3://"):
            raise ConfigError(f"render: store {self.store_url!r}: pods need an s3://bucket/prefix store")
        run_id = self.run_id or default_run_id(study)
        if len(run_id) > 63 or not _LABEL_VALUE.match(run_id):
            raise ConfigError(f"render: run id {run_id!r} must be a valid label value (<= 63 chars, [A-Za-z0-9-_.])")
        if self.image_tag in ("", "latest"):
            raise ConfigError("render: image tag must be pinned (not empty, not 'latest')")
        parallelism = self.parallelism if self.parallelism is not None else DEFAULT_PARALLELISM[self.overlay]
        if parallelism < 1:
            raise ConfigError(f"render: parallelism must be >= 1 (got {parallelism})")
        registry = self.registry or (GKE_REGISTRY if self.overlay == "gke" else DEFAULT_REGISTRY)
        return replace(self, run_id=run_id, parallelism=parallelism, registry=registry.rstrip("/"))

    def image(self, phase: str) -> str:
        return f"{self.registry}/{phase}:{self.image_tag}"


# ---------------------------------------------------------------------------------------------------- sizes
def fallback_size(study: Study, phase: str) -> int:
    """The number of indexes of a phase, from the study alone (the same rules the phase modules implement)."""
    n_tm = len(study.tasks) * len(study.methods)
    rules = {
        "stage": 1,
        "sanity": n_tm,
        "hpo": n_tm * study.hpo.workers if study.hpo.enabled else 0,
        "train": len(study.cells()),
        "extract": len(study.tasks) + len(study.cells()),  # the base model per task, then every cell
        "drift": 1,
        "bench": len(study.bench.backends),
        "report": 1,
    }
    return rules[phase]


def phase_size(study: Study, phase: str) -> int:
    """`get_phase(phase).size(study)` when the phase module imports here; else `fallback_size`.

    Rendering must work on a machine without torch (a laptop with `pip install lorascope[k8s]`), where a phase
    module that imports torch at the top cannot load; tests/k8s checks the two agree wherever both exist."""
    from lorascope.phases import get_phase

    try:
        phase_obj = get_phase(phase)
    except (ConfigError, ImportError):
        return fallback_size(study, phase)
    return int(phase_obj.size(study))


def phase_sizes(study: Study) -> dict[str, int]:
    return {p: phase_size(study, p) for p in PHASE_ORDER}


# ---------------------------------------------------------------------------------------------------- pieces
def _labels(component: str, part: str, instance: str = "lorascope", version: str = __version__) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "lorascope",
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "lorascope",
        "app.kubernetes.io/version": version,
        "app.kubernetes.io/managed-by": "lorascope",
        "lorascope.dev/part": part,  # infra | study | phase: `kubectl apply -k ... -l lorascope.dev/part=infra`
    }


def pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(uid: int) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _meta(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return meta


# ---------------------------------------------------------------------------------------------------- objects
def namespace(opts: RenderOptions) -> dict:
    labels = _labels("namespace", "infra", version=opts.image_tag)
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
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(
            STUDY_CONFIGMAP,
            opts.namespace,
            _labels("study", "study", opts.run_id, opts.image_tag),
            {"lorascope.dev/study": study.name, "lorascope.dev/study-hash": study.hash},
        ),
        "data": {"study.yaml": study_text},
    }


def phase_job(study: Study, phase: str, opts: RenderOptions, completions: int) -> dict:
    """The Indexed Job of one phase. Pods run `lorascope <phase> --study ... --store ... --run-id ...`; the index
    comes from JOB_COMPLETION_INDEX, which the CLI reads."""
    gpu = phase in GPU_PHASES
    kind = opts.overlay == "kind"
    profile = "gpu" if gpu else "cpu"
    parallelism = min(opts.parallelism, completions) if gpu else 1
    labels = _labels(phase, "phase", opts.run_id, opts.image_tag)
    labels.update(
        {
            "lorascope.dev/phase": phase,
            "lorascope.dev/run-id": opts.run_id,
            "lorascope.dev/study-hash": study.hash,
            "lorascope.dev/gpu": "true" if gpu else "false",
        }
    )
    job_labels = dict(labels)
    if opts.queue:
        job_labels[KUEUE_LABEL] = opts.queue

    env: list[dict[str, Any]] = [
        # the run id first: kustomize's strategic merge puts a patched list item first (overlays/kind patches it)
        {"name": "LORASCOPE_RUN_ID", "value": opts.run_id},
        {"name": "LORASCOPE_STORE", "value": opts.store_url},
        {"name": "LORASCOPE_WORK_DIR", "value": WORK_DIR},
        {"name": "HF_HOME", "value": HF_HOME},
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
    env_from = [{"secretRef": {"name": S3_SECRET}}]
    if phase == "hpo":
        env_from.append({"secretRef": {"name": POSTGRES_SECRET}})  # LORASCOPE_OPTUNA_STORAGE

    vol = VOLUME_LIMITS[profile]
    container = {
        "name": CONTAINER,
        "image": opts.image(phase),
        "imagePullPolicy": "Never" if kind else "IfNotPresent",
        # the image's ENTRYPOINT is ["lorascope", "<phase>"]
        "args": ["--study", STUDY_PATH, "--store", "$(LORASCOPE_STORE)", "--run-id", "$(LORASCOPE_RUN_ID)"],
        "env": env,
        "envFrom": env_from,
        "resources": copy.deepcopy(RESOURCES["kind" if kind else profile]),
        "securityContext": container_security(APP_UID),
        "volumeMounts": [
            {"name": "study", "mountPath": STUDY_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "hf-cache", "mountPath": HF_HOME},
            {"name": "work", "mountPath": WORK_DIR},
        ],
        # a failed pod's last log lines land in its status: `lorascope cluster run` shows them
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": pod_security(APP_UID),
        "containers": [container],
        "volumes": [
            {
                "name": "study",
                "configMap": {"name": STUDY_CONFIGMAP, "items": [{"key": "study.yaml", "path": "study.yaml"}]},
            },
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": vol["dshm"]}},
            {"name": "hf-cache", "emptyDir": {"sizeLimit": vol["hf-cache"]}},
            {"name": "work", "emptyDir": {"sizeLimit": vol["work"]}},
        ],
    }
    if gpu and not kind:
        pod_spec["nodeSelector"] = dict(L4_SELECTOR)
        pod_spec["tolerations"] = [dict(GPU_TOLERATION)]
        if opts.spot:
            pod_spec["nodeSelector"].update(SPOT_SELECTOR)
            pod_spec["tolerations"].append(dict(SPOT_TOLERATION))

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(
            job_name(phase),
            opts.namespace,
            job_labels,
            {"lorascope.dev/study": study.name, "lorascope.dev/description": _describe(phase, study, completions)},
        ),
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": parallelism,
            "backoffLimitPerIndex": BACKOFF_LIMIT_PER_INDEX,
            # more than a third of the indexes failed: something systematic is wrong, stop spending GPU hours
            "maxFailedIndexes": completions // 3,
            "podFailurePolicy": {
                "rules": [
                    # exit 2 = bad config or a missing prerequisite: retrying cannot help, fail the index now
                    {
                        "action": "FailIndex",
                        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_CONFIG]},
                    },
                    # preempted (spot), evicted, node drained: not the pod's fault; the replacement resumes
                    # from the last checkpoint in the store
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


def _describe(phase: str, study: Study, n: int) -> str:
    units = {
        "stage": "download model and data into the store",
        "sanity": "one index per task x method: overfit a few examples",
        "hpo": f"one index per task x method x worker ({study.hpo.workers} workers share an Optuna study)",
        "train": "one index per grid cell (task-major, then method, then seed)",
        "extract": "one index per task (base model) then one per cell",
        "drift": "CKA drift from the extracted representations",
        "bench": "one index per serving backend",
        "report": "tables, figures and tests",
    }
    return f"{phase}: {n} index(es); {units[phase]}"


def postgres(opts: RenderOptions) -> list[dict]:
    """PostgreSQL for the shared Optuna studies. Data on a PVC (the cluster's default StorageClass), so a restarted
    pod keeps the trials; `kubectl delete pvc lorascope-postgres` forgets them."""
    labels = _labels("optuna-db", "infra", version=opts.image_tag)
    selector = {"app.kubernetes.io/name": "lorascope", "app.kubernetes.io/component": "optuna-db"}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(POSTGRES_NAME, opts.namespace, labels),
        "spec": {"selector": selector, "ports": [{"name": "postgres", "port": 5432, "targetPort": 5432}]},
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(POSTGRES_NAME, opts.namespace, labels),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(POSTGRES_NAME, opts.namespace, labels),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one pod on a ReadWriteOnce volume
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(POSTGRES_UID),
                    "containers": [
                        {
                            "name": "postgres",
                            "image": POSTGRES_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "envFrom": [{"secretRef": {"name": POSTGRES_SECRET}}],
                            "env": [{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
                            "ports": [{"name": "postgres", "containerPort": 5432}],
                            "readinessProbe": {
                                "exec": {"command": ["sh", "-c", 'pg_isready -U "$POSTGRES_USER" -d "$POSTGRES_DB"']},
                                "periodSeconds": 5,
                            },
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "512Mi"},
                                "limits": {"cpu": "1", "memory": "1Gi"},
                            },
                            "securityContext": container_security(POSTGRES_UID),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                                {"name": "run", "mountPath": "/var/run/postgresql"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": POSTGRES_NAME}},
                        {"name": "run", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    return [service, pvc, deployment]


def minio(opts: RenderOptions) -> list[dict]:
    """MinIO for kind: the S3 store inside the cluster. Root credentials are the lorascope-s3 Secret's keys (made
    with random values by `make kind-up`). The bucket Job is idempotent (`mc mb --ignore-existing`)."""
    labels = _labels("minio", "infra", version=opts.image_tag)
    selector = {"app.kubernetes.io/name": "lorascope", "app.kubernetes.io/component": "minio"}
    creds = [
        {"name": "MINIO_ROOT_USER", "valueFrom": {"secretKeyRef": {"name": S3_SECRET, "key": "AWS_ACCESS_KEY_ID"}}},
        {
            "name": "MINIO_ROOT_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": S3_SECRET, "key": "AWS_SECRET_ACCESS_KEY"}},
        },
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta("minio", opts.namespace, labels),
        "spec": {"selector": selector, "ports": [{"name": "s3", "port": 9000, "targetPort": 9000}]},
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta("minio", opts.namespace, labels),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "20Gi"}}},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("minio", opts.namespace, labels),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(MINIO_UID),
                    "containers": [
                        {
                            "name": "minio",
                            "image": MINIO_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["server", "/data"],
                            "env": [*creds, {"name": "HOME", "value": "/tmp"}],
                            "ports": [{"name": "s3", "containerPort": 9000}],
                            "readinessProbe": {
                                "httpGet": {"path": "/minio/health/ready", "port": 9000},
                                "periodSeconds": 5,
                            },
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "512Mi"},
                                "limits": {"cpu": "2", "memory": "2Gi"},
                            },
                            "securityContext": container_security(MINIO_UID),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/data"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": "minio"}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    bucket_script = (
        'until mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"; do sleep 2; done\n'
        f"mc mb --ignore-existing local/{MINIO_BUCKET}\n"
    )
    bucket_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta("minio-bucket", opts.namespace, labels),
        "spec": {
            "backoffLimit": 6,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(MINIO_UID),
                    "containers": [
                        {
                            "name": "mc",
                            "image": MINIO_IMAGE,  # the server image ships the `mc` client
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/bin/sh", "-c", bucket_script],
                            "env": [*creds, {"name": "HOME", "value": "/tmp"}],
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                            },
                            "securityContext": container_security(MINIO_UID),
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }
    return [service, pvc, deployment, bucket_job]


PLACEHOLDER = "REPLACE_ME"


def secret_examples(opts: RenderOptions) -> list[dict]:
    """The Secrets the Jobs read, with placeholders: copy, fill in, apply (docs/cluster.md). Never real keys."""
    labels = _labels("credentials", "infra", version=opts.image_tag)
    s3 = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(S3_SECRET, opts.namespace, labels),
        "type": "Opaque",
        "stringData": {
            "AWS_ACCESS_KEY_ID": PLACEHOLDER,
            "AWS_SECRET_ACCESS_KEY": PLACEHOLDER,
            # GCS through its S3 interface with HMAC keys; MinIO in kind: http://minio.lorascope.svc:9000
            "AWS_ENDPOINT_URL_S3": "https://storage.googleapis.com",
            "AWS_DEFAULT_REGION": "auto",
        },
    }
    pg = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(POSTGRES_SECRET, opts.namespace, labels),
        "type": "Opaque",
        "stringData": {
            "POSTGRES_USER": "optuna",
            "POSTGRES_PASSWORD": PLACEHOLDER,
            "POSTGRES_DB": "optuna",
            "LORASCOPE_OPTUNA_STORAGE": f"postgresql+psycopg2://optuna:{PLACEHOLDER}@{POSTGRES_NAME}:5432/optuna",
        },
    }
    return [s3, pg]


# ---------------------------------------------------------------------------------------------------- overlays
def render_objects(study: Study, study_text: str, opts: RenderOptions, include_infra: bool = True) -> list[dict]:
    """What `kubectl kustomize manifests/overlays/<overlay>` yields, built in Python: namespace, PostgreSQL, the
    study ConfigMap, the phase Jobs (in phase order), and MinIO for kind."""
    opts = opts.resolved(study)
    out: list[dict] = []
    if include_infra:
        out.append(namespace(opts))
        out += postgres(opts)
    out.append(study_configmap(study, study_text, opts))
    for phase in PHASE_ORDER:
        n = phase_size(study, phase)
        if n > 0:
            out.append(phase_job(study, phase, opts, n))
    if include_infra and opts.overlay == "kind":
        out += minio(opts)
    return out


def phase_jobs(study: Study, opts: RenderOptions) -> dict[str, dict]:
    """phase -> its Job (phases with no index, e.g. hpo when disabled, have none)."""
    return {
        o["metadata"]["labels"]["lorascope.dev/phase"]: o
        for o in render_objects(study, "", opts, include_infra=False)
        if o["kind"] == "Job"
    }


# ---------------------------------------------------------------------------------------------------- files
class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors for shared dicts
        return True


def _str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objs: Iterable[dict], header: str = "") -> str:
    docs = [yaml.dump(o, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120) for o in objs]
    return header + "---\n".join(docs)


def _header(study: Study, what: str) -> str:
    return (
        f"# Generated by `lorascope render` from study {study.name!r} (hash {study.hash}): {what}.\n"
        "# Do not edit by hand: change the study or pkg/lorascope/k8s/render.py and run `make k8s-render`.\n"
    )


def base_files(study: Study, study_text: str, opts: RenderOptions) -> dict[str, str]:
    """file name -> text, for `manifests/`."""
    opts = opts.resolved(study)
    if opts.overlay != "base":
        raise ConfigError("base_files renders the base; use overlay_files for an overlay")
    files: dict[str, str] = {}
    files["namespace.yaml"] = to_yaml([namespace(opts)], _header(study, "the namespace (PSS restricted)"))
    files["study-configmap.yaml"] = to_yaml(
        [study_configmap(study, study_text, opts)], _header(study, f"the study, mounted at {STUDY_PATH}")
    )
    files["postgres.yaml"] = to_yaml(postgres(opts), _header(study, "PostgreSQL for the shared Optuna studies"))
    files["minio.yaml"] = to_yaml(
        minio(opts), _header(study, "MinIO for kind (maintenance-mode upstream; pinned image) and its bucket")
    )
    files["secret-example.yaml"] = to_yaml(
        secret_examples(opts), _header(study, "EXAMPLE Secrets with placeholders; fill in and apply by hand")
    )
    job_files = []
    for phase in PHASE_ORDER:
        n = phase_size(study, phase)
        if n == 0:
            continue
        name = JOB_FILES[phase]
        job_files.append(name)
        files[name] = to_yaml([phase_job(study, phase, opts, n)], _header(study, _describe(phase, study, n)))
    # kustomize refuses an overlay below its base's folder and any file outside a kustomization's folder, so the
    # base that overlays/kind and overlays/gke build on is base/: the same objects in one file.
    base_objs = [namespace(opts), *postgres(opts), study_configmap(study, study_text, opts)]
    base_objs += [phase_job(study, p, opts, n) for p in PHASE_ORDER if (n := phase_size(study, p)) > 0]
    files["base/resources.yaml"] = to_yaml(
        base_objs,
        _header(
            study,
            f"namespace.yaml, postgres.yaml, study-configmap.yaml and {', '.join(job_files)} "
            "in one file: the kustomize base",
        ),
    )
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["resources.yaml"],
    }
    files["base/kustomization.yaml"] = to_yaml(
        [kustomization], _header(study, "the base (GKE, L4); overlays/kind and overlays/gke build on it")
    )
    return files


def overlay_files(study: Study, study_text: str, opts: RenderOptions, base_study: Study) -> dict[str, str]:
    """The generated part of an overlay folder (kind): patches that swap the base study for this one (the study
    ConfigMap, each Job's run id, completions and parallelism), and a copy of minio.yaml (kustomize loads no file
    outside an overlay's folder). The overlay's kustomization.yaml is written by hand."""
    opts = opts.resolved(study)
    base_opts = RenderOptions().resolved(base_study)
    cm = study_configmap(study, study_text, opts)
    cm_patch = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": STUDY_CONFIGMAP,
            "namespace": opts.namespace,
            "labels": {"app.kubernetes.io/instance": opts.run_id},
            "annotations": cm["metadata"]["annotations"],
        },
        "data": cm["data"],
    }
    patches = []
    for phase in PHASE_ORDER:
        n_base, n = phase_size(base_study, phase), phase_size(study, phase)
        if n_base == 0 and n == 0:
            continue
        meta = {"name": job_name(phase), "namespace": opts.namespace}
        if n == 0:
            patches.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "$patch": "delete"})
            continue
        if n_base == 0:
            raise ConfigError(f"render: phase {phase} has no Job in the base study; an overlay cannot add one")
        job = phase_job(study, phase, opts, n)
        run_labels = {
            k: job["metadata"]["labels"][k]
            for k in ("app.kubernetes.io/instance", "lorascope.dev/run-id", "lorascope.dev/study-hash")
        }
        spec = {k: job["spec"][k] for k in ("completions", "parallelism", "maxFailedIndexes")}
        base_job = phase_job(base_study, phase, base_opts, n_base)
        spec = {k: v for k, v in spec.items() if base_job["spec"][k] != v}
        spec["template"] = {
            "metadata": {"labels": run_labels},
            "spec": {"containers": [{"name": CONTAINER, "env": [{"name": "LORASCOPE_RUN_ID", "value": opts.run_id}]}]},
        }
        patches.append(
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {**meta, "labels": run_labels, "annotations": job["metadata"]["annotations"]},
                "spec": spec,
            }
        )
    what = f"patches that make the {opts.overlay} overlay run this study"
    return {
        "study-configmap-patch.yaml": to_yaml([cm_patch], _header(study, what)),
        "study-patch.yaml": to_yaml(patches, _header(study, what)),
        "minio.yaml": to_yaml(minio(opts), _header(study, "a copy of manifests/minio.yaml for the kind overlay")),
    }


def write_files(files: dict[str, str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        p = out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.exists() or p.read_text() != text:
            p.write_text(text)
        written.append(p)
    return written
