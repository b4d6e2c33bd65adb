"""Small pieces every rendered object shares: metadata and the Pod Security Standard `restricted` contexts."""

from __future__ import annotations

from typing import Any


def pod_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security(uid: int) -> dict[str, Any]:
    """`restricted`, and a read-only root filesystem: whatever a container writes goes to a volume its pod declares
    (phase pods: render.WRITABLE_MOUNTS; PostgreSQL: its data, /var/run/postgresql and /tmp; MinIO: /data, /tmp)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def meta(name: str, namespace: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    out: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if annotations:
        out["annotations"] = annotations
    return out
