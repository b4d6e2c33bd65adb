"""The objects lorascope needs next to its phase Jobs: PostgreSQL (the HPO workers' shared Optuna storage), MinIO (the
S3 store for kind), the launcher's Role, the namespace's NetworkPolicies, and examples with placeholders (Secrets, a
Kueue queue). Each carries its own app labels and version
(`app.kubernetes.io/name: postgres`, `app.kubernetes.io/version: 17.6`), `part-of: lorascope`, and
`lorascope.dev/part: infra` so `kubectl apply -k DIR -l lorascope.dev/part=infra` selects them."""

from __future__ import annotations

from typing import Any

from lorascope.k8s.podspec import container_security, pod_security
from lorascope.k8s.podspec import meta as _meta

S3_SECRET = "lorascope-s3"  # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION
POSTGRES_SECRET = "lorascope-postgres"  # POSTGRES_USER/_PASSWORD/_DB and LORASCOPE_OPTUNA_STORAGE
POSTGRES_NAME = "lorascope-postgres"

# Pinned third-party images (no `latest` anywhere). Docker Hub's minio/minio was removed in 2026: use quay.io.
POSTGRES_VERSION = "17.6"
POSTGRES_IMAGE = f"postgres:{POSTGRES_VERSION}-bookworm"
MINIO_VERSION = "RELEASE.2025-09-07T16-13-09Z"
MINIO_IMAGE = f"quay.io/minio/minio:{MINIO_VERSION}"
MINIO_BUCKET = "lorascope"
POSTGRES_UID = 999  # the `postgres` user of the official image
MINIO_UID = 1000
PLACEHOLDER = "REPLACE_ME"


def app_labels(name: str, version: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/version": version,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "lorascope",
        "app.kubernetes.io/managed-by": "lorascope",
        "lorascope.dev/part": "infra",
    }


def postgres(opts: Any) -> list[dict]:
    """PostgreSQL for the shared Optuna studies. Data on a PVC (the cluster's default StorageClass), so a restarted
    pod keeps the trials; `kubectl delete pvc lorascope-postgres` forgets them."""
    labels = app_labels("postgres", POSTGRES_VERSION, "optuna-db")
    selector = {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/component": "optuna-db"}
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
    # One pod on a ReadWriteOnce volume: a voluntary disruption (a node upgrade's drain, the autoscaler removing the
    # node) stops every HPO worker's Optuna storage at once. The budget makes a drain wait (GKE respects a PDB for up to
    # an hour in an upgrade, then drains anyway); for longer HPO runs docs/cluster.md adds a maintenance exclusion.
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(POSTGRES_NAME, opts.namespace, labels),
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": selector}},
    }
    return [service, pvc, deployment, pdb]


def minio(opts: Any) -> list[dict]:
    """MinIO for kind: the S3 store inside the cluster. Root credentials are the lorascope-s3 Secret's keys (made
    with random values by `make kind-up`). The bucket Job is idempotent (`mc mb --ignore-existing`)."""
    labels = app_labels("minio", MINIO_VERSION, "store")
    selector = {"app.kubernetes.io/name": "minio", "app.kubernetes.io/component": "store"}
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


def secret_examples(opts: Any) -> list[dict]:
    """The Secrets the Jobs read, with placeholders: copy, fill in, apply (docs/cluster.md). Never real keys."""
    labels = app_labels("lorascope", opts.image_tag, "credentials")
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


# ------------------------------------------------------------------------------------------------ RBAC
LAUNCHER_ROLE = "lorascope-launcher"


def launcher_rules() -> list[dict]:
    """Every API call `lorascope cluster run|status` and `lorascope status --cluster` make, and nothing else, all
    namespaced (tests/k8s: the fake API server refuses a call these rules do not allow)."""
    return [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "create", "delete", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create"]},
        # only whether the two Secrets exist: never any other Secret of the namespace
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": [S3_SECRET, POSTGRES_SECRET]},
        # why a pod does not start: FailedCreate, FailedMount, the autoscaler's NotTriggerScaleUp / FailedScaleUp
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
        {"apiGroups": ["jobset.x-k8s.io"], "resources": ["jobsets"], "verbs": ["get", "create", "delete"]},
        # why Kueue has not admitted a Job (the Workload's QuotaReserved condition), found by the Job's uid label
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"], "verbs": ["get", "list"]},
    ]


def launcher_role(opts: Any) -> dict:
    """The namespaced Role the launcher needs; bind it to whoever runs it (docs/cluster.md, "RBAC")."""
    labels = app_labels("lorascope", opts.image_tag, "launcher-rbac")
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(LAUNCHER_ROLE, opts.namespace, labels),
        "rules": launcher_rules(),
    }


# ------------------------------------------------------------------------------------------------ network
PHASE_LABEL = "lorascope.dev/phase"


def network_policies(opts: Any, postgres_too: bool, minio_too: bool) -> list[dict]:
    """Default-deny ingress for every pod of the namespace; then PostgreSQL only from the HPO workers, and (kind)
    MinIO only from lorascope's pods. Egress stays open: the phases reach the S3 store and the hub. Traffic from the
    node itself (the kubelet's probes, kubectl port-forward) is always allowed by NetworkPolicy; the policies take
    effect only where the cluster's network plugin enforces them (GKE: Dataplane V2 or --enable-network-policy)."""
    labels = app_labels("lorascope", opts.image_tag, "network-policy")
    out = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta("lorascope-default-deny-ingress", opts.namespace, labels),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }
    ]
    if postgres_too:
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": _meta("lorascope-postgres-from-hpo", opts.namespace, labels),
                "spec": {
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgres",
                                                    "app.kubernetes.io/component": "optuna-db"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {PHASE_LABEL: "hpo"}}}],
                                 "ports": [{"protocol": "TCP", "port": 5432}]}],
                },
            }
        )  # fmt: skip
    if minio_too:
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": _meta("lorascope-minio-from-lorascope", opts.namespace, labels),
                "spec": {
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "minio",
                                                    "app.kubernetes.io/component": "store"}},
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "lorascope"}}}],
                                 "ports": [{"protocol": "TCP", "port": 9000}]}],
                },
            }
        )  # fmt: skip
    return out
