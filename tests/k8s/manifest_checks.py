"""Checks on rendered objects that several tests share: Pod Security Standard `restricted`, resources, pinning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
# Kubernetes objects under manifests/ (kustomization files and the kind cluster config are not API objects)
NOT_API_OBJECTS = {"kustomization.yaml", "kind-cluster.yaml"}
CUSTOM_RESOURCE_DIRS = {"jobset"}  # JobSet objects: checked against the vendored CRD schema (test_k8s_jobset.py)
CUSTOM_RESOURCE_FILES = {"kueue.yaml"}  # Kueue's example queue: checked against Kueue's CRD schemas (test_k8s_kueue.py)

# PSS restricted (https://kubernetes.io/docs/concepts/security/pod-security-standards/), volume types allowed
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def load_objects(path: Path) -> list[dict]:
    return [o for o in yaml.safe_load_all(path.read_text()) if o]


def manifest_files(custom_resources: bool = False) -> list[Path]:
    """The committed API objects: built-in kinds, or (custom_resources=True) the JobSet files."""
    return sorted(
        p
        for p in MANIFESTS.rglob("*.yaml")
        if p.name not in NOT_API_OBJECTS
        and (p.parent.name in CUSTOM_RESOURCE_DIRS or p.name in CUSTOM_RESOURCE_FILES) == custom_resources
    )


def pod_templates(obj: dict) -> Iterator[dict]:
    if obj["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        yield obj["spec"]["template"]["spec"]
    elif obj["kind"] == "Pod":
        yield obj["spec"]
    elif obj["kind"] == "JobSet":
        for rj in obj["spec"]["replicatedJobs"]:
            yield rj["template"]["spec"]["template"]["spec"]


def restricted_violations(pod: dict) -> list[str]:
    """Pod Security Standard `restricted` (baseline included), as the admission controller checks it."""
    bad = []
    psc = pod.get("securityContext", {})
    for k in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(k):
            bad.append(k)
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            bad.append(f"volume {v['name']}: {kinds}")
    if psc.get("runAsUser") == 0:
        bad.append("pod runAsUser 0")
    pod_seccomp = psc.get("seccompProfile", {}).get("type")
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})
        name = c["name"]
        if sc.get("privileged"):
            bad.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            bad.append(f"{name}: adds capabilities {caps['add']}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            bad.append(f"{name}: runAsNonRoot must be true")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if not isinstance(uid, int) or uid == 0:
            bad.append(f"{name}: runAsUser must be a numeric non-zero uid (got {uid!r})")
        seccomp = sc.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost (got {seccomp!r})")
        for port in c.get("ports", []):
            if port.get("hostPort"):
                bad.append(f"{name}: hostPort")
    return bad


def resource_violations(pod: dict) -> list[str]:
    bad = []
    for c in pod.get("containers", []):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in res.get(kind, {}):
                    bad.append(f"{c['name']}: no {kind}.{r}")
    return bad


def image_pinned(image: str) -> bool:
    """A digest, or an explicit tag that is not `latest` (the tag is after the last ':' of the last path part)."""
    name, _, digest = image.partition("@")
    if digest:
        return digest.startswith("sha256:") and len(digest) == 71
    last = name.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    return tag not in ("", "latest")
