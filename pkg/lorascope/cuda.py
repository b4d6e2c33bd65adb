"""Is CUDA usable in this process? A GPU phase on a node whose driver is too old for the image's torch must fail at
once with exit 2 (the Job's podFailurePolicy fails the index, no retry) and say which driver it needs, instead of
exit 1 (retried, and the same node fails the same way) or, worse, silently training on the CPU for days.

torch 2.13.0 from PyPI (manylinux_2_28_x86_64) is the CUDA 13.0 build: its metadata requires
`cuda-toolkit[...]==13.0.3` and `nvidia-cudnn-cu13==9.20.0.48` (pip install --dry-run --report, docs/cluster.md).
CUDA 13.0 needs an NVIDIA driver of the R580 branch or newer (CUDA 13.0 release notes: >= 580.65.06 on Linux).
The check runs only where the pod asks for it (LORASCOPE_REQUIRE_CUDA=1, set by the rendered GPU Jobs), so the same
phases still run on CPU locally and on kind.

When torch finds no GPU, the message says which of the causes it is, from torch's own warning and a probe of the
driver library with ctypes (`probe_driver`), because each has another fix:
  * libcuda.so.1 cannot be loaded, but GKE mounted it under /usr/local/nvidia/lib64: the library path is missing
    (GKE's device plugin mounts the driver there and sets no environment: container-engine-accelerators
    pkg/gpu/nvidia/beta_plugin.go, `Allocate` returns Devices and Mounts; the GPU images set LD_LIBRARY_PATH);
  * libcuda.so.1 is nowhere: the pod got no GPU, or the node has no driver;
  * the driver loads but is older than the torch build's CUDA (cuDriverGetVersion, e.g. 12080 = CUDA 12.8, against
    13.0): the node needs a newer driver;
  * the driver is new enough but sees no device (cuInit returns CUDA_ERROR_NO_DEVICE).
torch itself cannot tell the first two from each other: with no driver library, c10's device_count() returns 0
without a warning (c10/cuda/CUDAFunctions.cpp: cudaErrorInsufficientDriver with driver version 0), the same as a
driver without devices.
"""

from __future__ import annotations

import ctypes
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lorascope.errors import ConfigError

REQUIRE_CUDA_ENV = "LORASCOPE_REQUIRE_CUDA"
IMAGE_CUDA = "13.0"  # what the GPU images' torch (2.13.0 from PyPI) is built for, when this torch says nothing
# CUDA major.minor of the torch build -> the minimum Linux driver branch (NVIDIA's CUDA toolkit release notes)
MIN_DRIVER = {"13.0": "580.65.06", "12.9": "575.51.03", "12.8": "570.26", "12.6": "560.28.03", "12.4": "550.54.14"}
LIBCUDA = "libcuda.so.1"
GKE_DRIVER_DIRS = ("/usr/local/nvidia/lib64", "/usr/local/nvidia/lib")  # where GKE's device plugin mounts the driver
CUDA_ERROR_NO_DEVICE = 100  # cuInit's result on a machine whose driver sees no GPU (cuda.h, CUresult)
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


@dataclass(frozen=True)
class DriverProbe:
    """What the dynamic loader and the CUDA driver API say in this process, independent of torch."""

    loaded: bool  # libcuda.so.1 could be loaded
    load_error: str = ""  # the loader's message when not (dlopen: "...: cannot open shared object file: ...")
    driver_cuda: int | None = None  # cuDriverGetVersion: the newest CUDA the driver supports, 12080 = 12.8
    init_result: int | None = None  # cuInit(0): 0 = success, 100 = CUDA_ERROR_NO_DEVICE, ...
    mounted: tuple[str, ...] = ()  # libcuda.so.1 files found in GKE's driver mount (GKE_DRIVER_DIRS)
    ld_library_path: str = ""


def probe_driver(
    env: Mapping[str, str],
    load: Callable[[str], Any] = ctypes.CDLL,
    exists: Callable[[str], bool] = os.path.exists,
) -> DriverProbe:
    """Load libcuda.so.1 the way torch's CUDA runtime does (the dynamic loader: LD_LIBRARY_PATH, ld.so.cache, the
    default paths), then ask the driver its CUDA version and whether it sees a device."""
    mounted = tuple(path for d in GKE_DRIVER_DIRS if exists(path := f"{d}/{LIBCUDA}"))
    ld_path = env.get("LD_LIBRARY_PATH", "")
    try:
        lib = load(LIBCUDA)
    except OSError as exc:
        return DriverProbe(False, str(exc), mounted=mounted, ld_library_path=ld_path)
    version = ctypes.c_int(0)
    got = lib.cuDriverGetVersion(ctypes.byref(version))
    init = lib.cuInit(0)
    return DriverProbe(True, "", version.value if got == 0 else None, int(init), mounted, ld_path)


def cuda_number(version: str) -> int:
    """'13.0' -> 13000, the encoding of cuDriverGetVersion (1000 * major + 10 * minor)."""
    major, minor = (version.split(".") + ["0"])[:2]
    return 1000 * int(major) + 10 * int(minor)


def cuda_version_text(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def diagnose(torch_said: str, built: str, probe: DriverProbe | None) -> tuple[str, bool]:
    """(the cause in one sentence, whether it is the driver's version). torch's own words first: a warning that names
    the driver as too old is the driver, whatever else; then the probe."""
    needed = required_driver(built)
    m = re.search(r"driver on your system is too old \(found version (\d+)\)", torch_said)
    if m:
        return (f"the node's NVIDIA driver is too old: it supports CUDA {cuda_version_text(int(m.group(1)))} "
                f"(driver API version {m.group(1)}), this torch is built for CUDA {built} and needs {needed}", True)  # fmt: skip
    if probe is None:
        return "", True
    if not probe.loaded:
        if probe.mounted:
            return (f"{LIBCUDA}, the NVIDIA driver's library, is not found by the loader ({probe.load_error}), though "
                    f"GKE mounted it at {probe.mounted[0]}: that folder is not on LD_LIBRARY_PATH "
                    f"({probe.ld_library_path or 'unset'}). GKE's device plugin mounts the driver at /usr/local/nvidia "
                    "and sets no environment; the GPU images of this repository set LD_LIBRARY_PATH="
                    "/usr/local/nvidia/lib64:/usr/local/nvidia/lib (images/base/Dockerfile): rebuild them, or set it "
                    "in the pod. This is not a driver version problem", False)  # fmt: skip
        return (f"no NVIDIA driver library in this container: {LIBCUDA} is not found ({probe.load_error}) and nothing "
                f"is mounted at {' or '.join(GKE_DRIVER_DIRS)}: the pod got no GPU (it must request nvidia.com/gpu: 1) "
                "or the node has no NVIDIA driver installed (GKE: an L4 pool created with "
                "--accelerator ...,gpu-driver-version=latest)", False)  # fmt: skip
    if probe.driver_cuda is not None and probe.driver_cuda < cuda_number(built):
        return (f"the node's NVIDIA driver is too old: it supports CUDA {cuda_version_text(probe.driver_cuda)} "
                f"(cuDriverGetVersion {probe.driver_cuda}), this torch is built for CUDA {built} and needs {needed}",
                True)  # fmt: skip
    if probe.init_result == CUDA_ERROR_NO_DEVICE:
        supports = f" (it supports CUDA {cuda_version_text(probe.driver_cuda)})" if probe.driver_cuda else ""
        return (f"the NVIDIA driver loads{supports} but sees no GPU (cuInit: CUDA_ERROR_NO_DEVICE): the container got "
                "no GPU device; it must request nvidia.com/gpu: 1", False)  # fmt: skip
    if probe.init_result not in (None, 0):
        return f"the NVIDIA driver loads but cuInit fails with CUresult {probe.init_result}", True
    return "", True


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


def require_cuda(env: Mapping[str, str], phase: str, torch: Any = None, probe: DriverProbe | None = None) -> None:
    """Raise ConfigError (exit 2) when the pod asked for CUDA (LORASCOPE_REQUIRE_CUDA=1) and has none, saying why:
    no driver library (and whether GKE mounted one off the library path), a driver too old, or no device."""
    if env.get(REQUIRE_CUDA_ENV) != "1":
        return
    if torch is None:
        import torch  # noqa: PLC0415 (only GPU phases get here)
    problem = cuda_problem(torch)
    if problem is None:
        return
    built = torch.version.cuda or IMAGE_CUDA
    if probe is None and torch.version.cuda is not None:
        probe = probe_driver(env)
    cause, driver_version = diagnose(problem, built, probe if torch.version.cuda is not None else None)
    head = f"phase {phase} needs a GPU ({REQUIRE_CUDA_ENV}=1) but {problem}."
    if cause and not driver_version:
        raise ConfigError(f"{head} Cause: {cause}.")
    cause = f" Cause: {cause}." if cause else ""
    raise ConfigError(
        f"{head}{cause} The GPU images' torch needs {required_driver(built)} on the node and the GPU requested "
        f"(nvidia.com/gpu: 1); {GKE_HINT}"
    )
