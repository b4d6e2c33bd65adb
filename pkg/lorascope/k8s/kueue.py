"""Kueue (kueue.x-k8s.io/v1beta2, Kueue >= v0.15; checked against v0.19.2's CRDs): an example queue that admits the phase
Jobs lorascope renders, and what Kueue cannot do with the pipeline JobSet.

The example (`examples/kueue.yaml`): two ResourceFlavors, `l4` (the L4 nodes: their accelerator label and GKE's
`nvidia.com/gpu=present:NoSchedule` taint, so only pods that tolerate it, the GPU phases, are assigned to it) and
`cpu` (the default pool); a ClusterQueue that covers every resource the pods request, `cpu`, `memory`,
`ephemeral-storage` and `nvidia.com/gpu` (Kueue cannot admit a pod set that requests a resource its ClusterQueue
does not cover: "resource ephemeral-storage unavailable in ClusterQueue", pkg/scheduler/flavorassigner), with quotas
sized to the largest phase Job of each flavor at full parallelism; and a LocalQueue in the namespace. The launcher
submits one phase at a time, so that is all the pipeline ever holds.

Why not the JobSet (`cluster run --detach --queue` is refused): Kueue admits a JobSet as one Workload with one PodSet
per replicated job (pkg/controller/jobs/jobset/jobset_controller.go: PodSets, count = replicas x min(parallelism,
completions), no minimum count, so no partial admission), i.e. every phase's pods at once although dependsOn runs
them one after another; a queue sized to the pool never admits it. Queueing the child Jobs one by one instead does
not work either: the JobSet controller (v0.12.0, pkg/controllers/jobset_controller.go: resumeJobsIfNecessary)
unsuspends every child Job of a running JobSet, undoing Kueue's suspension.
"""

from __future__ import annotations

import re
from typing import Any

from lorascope.errors import ConfigError
from lorascope.k8s.infra import app_labels
from lorascope.k8s.podspec import meta

API_VERSION = "kueue.x-k8s.io/v1beta2"
QUEUE_NAME = "lorascope"
GPU_FLAVOR = "l4"
CPU_FLAVOR = "cpu"
COVERED = ("cpu", "memory", "ephemeral-storage", "nvidia.com/gpu")
GKE_GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}  # GKE adds it to GPU nodes
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # on a Job's Workload (pkg/controller/constants: JobUIDLabel)
WORKLOAD_PLURAL = "workloads"

_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|m)?$")
_UNIT = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text: str) -> float:
    """A Kubernetes quantity of the forms render writes ('6', '500m', '24Gi') as a number."""
    m = _QUANTITY.match(str(text))
    if not m:
        raise ValueError(f"unsupported quantity {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _format(resource: str, value: float) -> str:
    if resource in ("memory", "ephemeral-storage"):
        return f"{int(-(-value // 2**30))}Gi"
    return str(int(-(-value // 1)))


def job_demand(job: dict) -> dict[str, float]:
    """What a Job holds when admitted at full parallelism: parallelism x its pod's requests."""
    pod = job["spec"]["template"]["spec"]
    n = job["spec"]["parallelism"]
    out = dict.fromkeys(COVERED, 0.0)
    for c in pod["containers"]:
        for resource, value in c["resources"].get("requests", {}).items():
            out[resource] = out.get(resource, 0.0) + n * quantity(value)
    return out


def is_gpu_job(job: dict) -> bool:
    return job_demand(job)["nvidia.com/gpu"] > 0


def flavor_quotas(jobs: list[dict]) -> dict[str, dict[str, float]]:
    """flavor -> resource -> the largest demand of one Job of that flavor (the launcher runs one phase at a time)."""
    quotas = {GPU_FLAVOR: dict.fromkeys(COVERED, 0.0), CPU_FLAVOR: dict.fromkeys(COVERED, 0.0)}
    for job in jobs:
        flavor = GPU_FLAVOR if is_gpu_job(job) else CPU_FLAVOR
        for resource, value in job_demand(job).items():
            quotas[flavor][resource] = max(quotas[flavor][resource], value)
    return quotas


def queue_example(jobs: list[dict], opts: Any) -> list[dict]:
    """ResourceFlavors, a ClusterQueue and a LocalQueue that admit `jobs` (the phase Jobs, rendered for `opts`)."""
    labels = app_labels("lorascope", opts.image_tag, "queue")
    quotas = flavor_quotas(jobs)
    l4_labels = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    flavors = [
        {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": GPU_FLAVOR, "labels": labels},
         "spec": {"nodeLabels": l4_labels, "nodeTaints": [dict(GKE_GPU_TAINT)]}},
        {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": CPU_FLAVOR, "labels": labels},
         "spec": {}},
    ]  # fmt: skip
    cluster_queue = {
        "apiVersion": API_VERSION,
        "kind": "ClusterQueue",
        "metadata": {"name": QUEUE_NAME, "labels": labels},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": opts.namespace}},
            "queueingStrategy": "BestEffortFIFO",
            "resourceGroups": [
                {
                    "coveredResources": list(COVERED),
                    "flavors": [
                        {"name": flavor, "resources": [{"name": r, "nominalQuota": _format(r, quotas[flavor][r])}
                                                       for r in COVERED]}
                        for flavor in (GPU_FLAVOR, CPU_FLAVOR)
                    ],
                }
            ],
        },
    }  # fmt: skip
    local_queue = {
        "apiVersion": API_VERSION,
        "kind": "LocalQueue",
        "metadata": meta(QUEUE_NAME, opts.namespace, labels),
        "spec": {"clusterQueue": QUEUE_NAME},
    }
    return [*flavors, cluster_queue, local_queue]


def refuse_jobset_queue(jobs: list[dict], queue: str) -> ConfigError:
    """`cluster run --detach --queue`: the error, with what the JobSet's one Workload would reserve for this study."""
    total = dict.fromkeys(COVERED, 0.0)
    for job in jobs:
        for resource, value in job_demand(job).items():
            total[resource] += value
    at_once = max((job_demand(j)["nvidia.com/gpu"] for j in jobs), default=0)
    return ConfigError(
        f"--detach with --queue {queue}: Kueue admits a JobSet as one Workload that reserves every phase's pods at once "
        f"({_format('nvidia.com/gpu', total['nvidia.com/gpu'])} nvidia.com/gpu, {_format('memory', total['memory'])} "
        f"memory for this study, though the phases run one after another and never use more than {at_once:g} GPUs), "
        "so a queue sized to the pool never admits it and the JobSet stays suspended; and the JobSet controller "
        "unsuspends its child Jobs, so they cannot be queued one by one either. Run without --detach: the launcher "
        "submits each phase Job to the queue when the previous one is done (docs/cluster.md, 'Kueue')"
    )
