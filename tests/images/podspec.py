"""Run one pod of a rendered Job as a local container: the pod template lorascope renders, translated field by field
into `podman run` (or `docker run`) arguments, the way the kubelet would start it.

What is translated (and how it maps):
  image, imagePullPolicy Never        the image, `--pull=never`
  command / args                      `--entrypoint` / arguments, with Kubernetes' `$(VAR)` expansion from the env
  env (value, resourceFieldRef        `--env`; requests.cpu with divisor 1 rounds up like the kubelet; envFrom first,
       requests.cpu, secretKeyRef),   then env overriding it, as in Kubernetes
       envFrom secretRef
  JOB_COMPLETION_INDEX                set from the index, as the Job controller does for Indexed Jobs
  volumes: configMap (items)          a host folder with the ConfigMap's keys as files, mounted read-only
           emptyDir medium Memory     a tmpfs with the sizeLimit (mode 1777, like the kubelet's)
           emptyDir (disk)            a fresh host folder per pod, group fsGroup with setgid and group rwx (the
                                      kubelet's fsGroup ownership); sizeLimit checked after the pod ran (the kubelet
                                      evicts a pod over it)
  volumeMounts readOnly               `:ro`
  securityContext runAsUser/Group,    `--user uid:gid`, `--group-add fsGroup`, `--read-only` (podman: without its
                                      own tmpfs on /tmp, /var/tmp, /run, which a pod does not get), `--cap-drop`,
    fsGroup, readOnlyRootFilesystem,  `--security-opt no-new-privileges`; runAsNonRoot is checked (uid != 0)
    capabilities, allowPrivilegeEscalation
  resources.limits cpu / memory       `--cpus` / `--memory`
  terminationGracePeriodSeconds       `--stop-timeout` (SIGTERM, then SIGKILL that many seconds later, as the kubelet)
Anything else in the pod spec or the container is refused with the field's name, so a manifest change that this
translation would silently ignore fails the test instead.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# pod-spec and container fields that are translated, or that do not change what the process sees on one machine
POD_FIELDS = {"restartPolicy", "automountServiceAccountToken", "securityContext", "containers", "volumes",
              "nodeSelector", "tolerations", "terminationGracePeriodSeconds"}  # fmt: skip
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "resources",
                    "securityContext", "volumeMounts", "terminationMessagePolicy", "workingDir"}  # fmt: skip
# the name make images gives the images (Makefile.images IMAGE_REPO): localhost/ works with podman and docker alike
IMAGE_REPO = os.environ.get("LORASCOPE_IMAGE_REPO", "localhost/lorascope")
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


class Untranslatable(ValueError):
    pass


def quantity_bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|k)?", str(q))
    if not m:
        raise Untranslatable(f"quantity {q!r}")
    return int(float(m.group(1)) * _UNITS.get(m.group(2) or "", 1))


def quantity_cpu(q: str) -> float:
    s = str(q)
    return int(s[:-1]) / 1000 if s.endswith("m") else float(s)


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$(VAR)` escapes, undefined stay as written."""

    def sub(m: re.Match) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, value)


@dataclass
class Cluster:
    """What the pod reads from the API server: Secrets and ConfigMaps by name."""

    secrets: dict[str, dict[str, str]]
    configmaps: dict[str, dict[str, str]]


@dataclass
class Pod:
    name: str
    argv: list[str]
    disk_volumes: dict[str, tuple[Path, int | None]] = field(default_factory=dict)  # name -> (host dir, sizeLimit)

    def oversized(self) -> list[str]:
        """The kubelet evicts a pod whose emptyDir grows over its sizeLimit: the volumes that did."""
        out = []
        for name, (path, limit) in self.disk_volumes.items():
            used = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
            if limit is not None and used > limit:
                out.append(f"{name}: {used} bytes > sizeLimit {limit}")
        return out


def _check_fields(obj: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Untranslatable(f"{where}: fields {extra} are not translated into a local container run")


def _env(container: dict, cluster: Cluster, index: int, is_indexed: bool) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        _check_fields(src, {"secretRef", "configMapRef", "prefix"}, "envFrom")
        ref = src.get("secretRef") or src.get("configMapRef")
        store = cluster.secrets if "secretRef" in src else cluster.configmaps
        if ref["name"] not in store:  # the kubelet: CreateContainerConfigError
            raise Untranslatable(f"envFrom: {ref['name']!r} does not exist")
        env.update({src.get("prefix", "") + k: v for k, v in store[ref["name"]].items()})
    cpu_request = quantity_cpu(container.get("resources", {}).get("requests", {}).get("cpu", "0"))
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        vf = item["valueFrom"]
        if "resourceFieldRef" in vf:
            ref = vf["resourceFieldRef"]
            if ref["resource"] != "requests.cpu" or str(ref.get("divisor", "1")) != "1":
                raise Untranslatable(f"env {name}: resourceFieldRef {ref}")
            env[name] = str(max(1, math.ceil(cpu_request)))  # the kubelet rounds up to the divisor
        elif "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            env[name] = cluster.secrets[ref["name"]][ref["key"]]
        else:
            raise Untranslatable(f"env {name}: valueFrom {sorted(vf)}")
    if is_indexed:
        env["JOB_COMPLETION_INDEX"] = str(index)
    return env


def pod_argv(job: dict, index: int, cluster: Cluster, scratch: Path, engine: str = "podman") -> Pod:
    """The container run for index `index` of `job` (a batch/v1 Job as rendered). `scratch` holds the pod's volumes."""
    spec = job["spec"]["template"]["spec"]
    _check_fields(spec, POD_FIELDS, "pod spec")
    if spec.get("restartPolicy") != "Never":
        raise Untranslatable(f"restartPolicy {spec.get('restartPolicy')!r}: phase pods run once")
    [container] = spec["containers"]
    _check_fields(container, CONTAINER_FIELDS, f"container {container['name']}")
    indexed = job["spec"].get("completionMode") == "Indexed"
    name = f"{job['metadata']['name']}-{index}"
    pod_sc = spec.get("securityContext", {})
    sc = {**pod_sc, **container.get("securityContext", {})}  # the container's settings win, as in Kubernetes
    uid, gid, fs_group = sc.get("runAsUser"), sc.get("runAsGroup", 0), pod_sc.get("fsGroup")
    if sc.get("runAsNonRoot") and (uid is None or uid == 0):
        raise Untranslatable("runAsNonRoot without a non-zero runAsUser: the kubelet would refuse to start it")

    argv = [engine, "run", "--rm", "--name", name, "--network=host", "--hostname", name]
    if container.get("imagePullPolicy") == "Never":
        argv.append("--pull=never")
    if uid is not None:
        argv += ["--user", f"{uid}:{gid}"]
    if fs_group is not None:
        argv += ["--group-add", str(fs_group)]
    if sc.get("readOnlyRootFilesystem"):
        argv.append("--read-only")
        if engine == "podman":  # podman's --read-only adds tmpfs on /tmp, /var/tmp, /run; the kubelet adds none
            argv.append("--read-only-tmpfs=false")
    if sc.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    for cap in sc.get("capabilities", {}).get("drop", []):
        argv += ["--cap-drop", cap]
    for cap in sc.get("capabilities", {}).get("add", []):
        argv += ["--cap-add", cap]
    seccomp = sc.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp != "RuntimeDefault":  # the engine's default profile is the runtime default
        raise Untranslatable(f"seccompProfile {seccomp}")
    limits = container.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        argv += ["--cpus", str(quantity_cpu(limits["cpu"]))]
    if "memory" in limits:
        argv += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "workingDir" in container:
        argv += ["--workdir", container["workingDir"]]
    if "terminationGracePeriodSeconds" in spec:
        argv += ["--stop-timeout", str(int(spec["terminationGracePeriodSeconds"]))]

    env = _env(container, cluster, index, indexed)
    for k, v in env.items():
        argv += ["--env", f"{k}={v}"]

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    pod = Pod(name=name, argv=argv)
    pod_dir = scratch / name
    if pod_dir.exists():
        shutil.rmtree(pod_dir)
    for mount in container.get("volumeMounts", []):
        _check_fields(mount, {"name", "mountPath", "readOnly"}, f"volumeMount {mount['name']}")
        vol = volumes[mount["name"]]
        ro = ",ro" if mount.get("readOnly") else ""
        if "configMap" in vol:
            data = cluster.configmaps[vol["configMap"]["name"]]
            items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            host = pod_dir / mount["name"]
            host.mkdir(parents=True)
            for it in items:
                (host / it["path"]).write_text(data[it["key"]])
                (host / it["path"]).chmod(0o644)
            host.chmod(0o755)
            argv += ["--volume", f"{host}:{mount['mountPath']}:ro"]  # the kubelet mounts ConfigMaps read-only
        elif "emptyDir" in vol:
            ed = vol["emptyDir"]
            limit = quantity_bytes(ed["sizeLimit"]) if "sizeLimit" in ed else None
            if ed.get("medium") == "Memory":
                size = f",size={limit}" if limit else ""
                argv += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777,nosuid,nodev{size}"]
            else:
                host = pod_dir / mount["name"]
                host.mkdir(parents=True)
                # the kubelet's fsGroup semantics: group-owned by fsGroup, setgid, group read/write/execute
                os.chown(host, 0, fs_group if fs_group is not None else 0)
                host.chmod(0o2777 if fs_group is None else 0o2775)
                argv += ["--volume", f"{host}:{mount['mountPath']}:rw{ro}"]
                pod.disk_volumes[mount["name"]] = (host, limit)
        else:
            raise Untranslatable(f"volume {mount['name']}: only configMap and emptyDir are translated")

    argv.append(container["image"])
    if "command" in container:
        argv[-1:-1] = ["--entrypoint", json_list([expand(c, env) for c in container["command"]])]
    argv += [expand(a, env) for a in container.get("args", [])]
    return pod


def json_list(items: list[str]) -> str:
    import json

    return json.dumps(items)


def run_pod(pod: Pod, timeout: float, log_path: Path) -> subprocess.CompletedProcess:
    with open(log_path, "wb") as log:
        r = subprocess.run(pod.argv, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    return r


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def pods_at_once(job: dict, cores: int | None = None, memory: int | None = None) -> int:
    """How many pods of `job` run at the same time here: the Job's `parallelism`, as the Job controller starts them,
    but no more than this machine's cores and memory hold at the pod's requests (the scheduler's fit on one node).
    LORASCOPE_IMAGES_PARALLELISM, when set, caps it further (1: one pod at a time, as before)."""
    spec = job["spec"]
    [container] = spec["template"]["spec"]["containers"]
    requests = container.get("resources", {}).get("requests", {})
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    memory = memory if memory is not None else _memory_bytes()
    n = min(int(spec.get("parallelism", 1)), int(spec.get("completions", 1)))
    cpu = quantity_cpu(requests.get("cpu", "0"))
    if cpu > 0:
        n = min(n, int(cores // cpu))
    if "memory" in requests:
        n = min(n, memory // quantity_bytes(requests["memory"]))
    cap = os.environ.get("LORASCOPE_IMAGES_PARALLELISM")
    if cap:
        n = min(n, int(cap))
    return max(1, int(n))
