"""Is CUDA usable in this process? A GPU phase on a node whose driver is too old for the image's torch must fail at
once with exit 2 (the Job's podFailurePolicy fails the index, no retry) and say which driver it needs, instead of
exit 1 (retried, and the same node fails the same way) or, worse, silently training on the CPU for days.

torch 2.13.0 from PyPI (manylinux_2_28_x86_64) is the CUDA 13.0 build: its metadata requires
`cuda-toolkit[...]==13.0.3` and `nvidia-cudnn-cu13==9.20.0.48` (pip install --dry-run --report, docs/cluster.md).
CUDA 13.0 needs an NVIDIA driver of the R580 branch or newer (CUDA 13.0 release notes: >= 580.65.06 on Linux).
The check runs only where the pod asks for it (LORASCOPE_REQUIRE_CUDA=1, set by the rendered GPU Jobs), so the same
phases still run on CPU locally and on kind.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from typing import Any

from lorascope.errors import ConfigError

REQUIRE_CUDA_ENV = "LORASCOPE_REQUIRE_CUDA"
IMAGE_CUDA = "13.0"  # what the GPU images' torch (2.13.0 from PyPI) is built for, when this torch says nothing
# CUDA major.minor of the torch build -> the minimum Linux driver branch (NVIDIA's CUDA toolkit release notes)
MIN_DRIVER = {"13.0": "580.65.06", "12.9": "575.51.03", "12.8": "570.26", "12.6": "560.28.03", "12.4": "550.54.14"}
GKE_HINT = (
    "on GKE create the L4 node pool with --accelerator type=nvidia-l4,count=1,gpu-driver-version=latest on a GKE "
    "version whose 'latest' driver is R580 or newer (docs/cluster.md, 'CUDA driver')"
)


def required_driver(cuda_version: str | None) -> str:
    if not cuda_version:
        return "an NVIDIA driver"
    mm = ".".join(cuda_version.split(".")[:2])
    return (
        f"NVIDIA driver >= {MIN_DRIVER[mm]} (R{MIN_DRIVER[mm].split('.')[0]})"
        if mm in MIN_DRIVER
        else (f"an NVIDIA driver that supports CUDA {mm}")
    )


def cuda_problem(torch: Any) -> str | None:
    """None when CUDA works, else why not (the build, the driver's own complaint, or no device)."""
    built = torch.version.cuda
    if built is None:
        return f"this torch ({torch.__version__}) is a CPU build: the image has no CUDA runtime"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ok = bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0
        except Exception as exc:  # a broken driver install can raise instead of returning False
            return f"CUDA {built} failed to initialise: {exc}"
    if ok:
        return None
    said = " ".join(str(w.message) for w in caught)
    said = re.sub(r"\s+", " ", said).strip()
    return f"torch {torch.__version__} (CUDA {built}) finds no usable GPU" + (f": {said}" if said else "")


def require_cuda(env: Mapping[str, str], phase: str, torch: Any = None) -> None:
    """Raise ConfigError (exit 2) when the pod asked for CUDA (LORASCOPE_REQUIRE_CUDA=1) and has none."""
    if env.get(REQUIRE_CUDA_ENV) != "1":
        return
    if torch is None:
        import torch  # noqa: PLC0415 (only GPU phases get here)
    problem = cuda_problem(torch)
    if problem is None:
        return
    raise ConfigError(
        f"phase {phase} needs a GPU ({REQUIRE_CUDA_ENV}=1) but {problem}. The GPU images' torch needs "
        f"{required_driver(torch.version.cuda or IMAGE_CUDA)} on the node and the GPU requested (nvidia.com/gpu: 1); {GKE_HINT}"
    )
