"""Where a result was computed: hardware and package versions, recorded in the meta of the extract and drift commits
and printed in the report's provenance section. Reads /proc and importlib.metadata only (imports no torch)."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope import environment

PACKAGES = ("lorascope", "numpy", "scipy", "safetensors", "matplotlib", "torch", "transformers", "peft")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor() or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask: what a container's cpuset allows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def hardware(**extra: Any) -> dict[str, Any]:
    """{cpu_model, cpu_cores_usable, cpu_cores_machine, memory_bytes, platform, python, host} plus `extra` (the
    extract phase adds device and gpu_name)."""
    return {
        "cpu_model": cpu_model(),
        "cpu_cores_usable": usable_cores(),
        "cpu_cores_machine": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "host": platform.node(),
        **extra,
    }


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions (from package metadata: nothing is imported); 'not installed' where absent. (Every commit
    also records its environment: lorascope.environment.)"""
    return environment.package_versions(names, missing="not installed")


def analysis_provenance(run_id: str, study: Any, code_version: str, stage_meta: Mapping[str, Any],
                        reps_commits: list[Mapping[str, Any]]) -> dict:  # fmt: skip
    """The drift summary's provenance: run, study, model and data identity, the extract bundles' code versions,
    devices, hardware and package versions, and the drift phase's own hardware and versions. `stage_meta`: the stage
    bundle's commit meta; `reps_commits`: the commit records of the reps bundles the drift read; `code_version`: the
    drift phase's own (what its store stamps)."""
    metas = [c.get("meta", {}) for c in reps_commits]
    hw = [m.get("hardware") or {} for m in metas]
    return {
        "run_id": run_id, "study": study.name, "study_hash": study.hash, "model": study.model.name,
        "model_revision": study.model.revision, "model_commit": (stage_meta.get("model") or {}).get("commit_sha"),
        "dataset_fingerprint": stage_meta.get("dataset_fingerprint"), "code_version": code_version,
        # a random tiny builtin (tiny-llama, tiny-qwen2, tiny-phi3, tiny-roberta: models.builtin.TINY_BUILTINS), not
        # smollm2-135m
        "builtin_model": study.model.name.startswith("builtin:tiny-"),
        "model_variant": (stage_meta.get("model") or {}).get("variant"),  # e.g. a quantised model's provenance
        "synthetic_data": study.data.source == "local" and study.data.path == "builtin",
        "extract": {
            "bundles": len(metas),
            "code_versions": sorted({c.get("code_version", "?") for c in reps_commits}),
            "devices": sorted({str(m.get("device")) for m in metas}),
            "gpu_names": sorted({h.get("gpu_name") for h in hw if h.get("gpu_name")}),
            "cpu_models": sorted({str(h.get("cpu_model")) for h in hw if h.get("cpu_model")}),
            "cpu_cores_usable": sorted({int(h["cpu_cores_usable"]) for h in hw if h.get("cpu_cores_usable")}),
            "forward_seconds_total": float(sum(m.get("forward_seconds") or 0.0 for m in metas)),
            "versions": metas[0].get("versions") if metas else {},
        },
        "drift": {"hardware": hardware(), "versions": package_versions()},
    }  # fmt: skip
