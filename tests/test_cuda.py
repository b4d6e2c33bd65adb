"""A GPU phase that finds no usable CUDA exits 2 at once, naming the driver its torch needs (not 1, retried)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from lorascope.cuda import cuda_problem, require_cuda, required_driver
from lorascope.errors import ConfigError


def fake_torch(cuda: str | None = "13.0", available: bool = False, warn: str = "", count: int = 1):
    def is_available():
        if warn:
            warnings.warn(warn, UserWarning, stacklevel=1)
        return available

    return SimpleNamespace(
        __version__="2.13.0",
        version=SimpleNamespace(cuda=cuda),
        cuda=SimpleNamespace(is_available=is_available, device_count=lambda: count),
    )


OLD_DRIVER = (
    "CUDA initialization: The NVIDIA driver on your system is too old (found version 12080). Please update your "
    "GPU driver by downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx"
)


def test_an_old_driver_is_a_config_error_that_names_the_r580_requirement():
    env = {"LORASCOPE_REQUIRE_CUDA": "1"}
    with pytest.raises(ConfigError) as exc:
        require_cuda(env, "train", torch=fake_torch(warn=OLD_DRIVER))
    msg = str(exc.value)
    assert exc.value.exit_code == 2
    assert "phase train needs a GPU" in msg and "torch 2.13.0 (CUDA 13.0) finds no usable GPU" in msg
    assert "driver on your system is too old (found version 12080)" in msg  # the driver's own words
    assert "NVIDIA driver >= 580.65.06 (R580)" in msg and "gpu-driver-version=latest" in msg


def test_a_cpu_build_or_no_device_is_named_too_and_a_working_gpu_passes():
    assert "is a CPU build" in cuda_problem(fake_torch(cuda=None))
    assert cuda_problem(fake_torch(available=True, count=0)).endswith("finds no usable GPU")
    assert cuda_problem(fake_torch(available=True)) is None
    require_cuda({"LORASCOPE_REQUIRE_CUDA": "1"}, "train", torch=fake_torch(available=True))  # no raise
    # without the pod's request (local runs, kind) nothing is checked: the phases run on CPU
    require_cuda({}, "train", torch=fake_torch(cuda=None))
    assert required_driver("13.0.3") == "NVIDIA driver >= 580.65.06 (R580)"
    assert required_driver("12.8") == "NVIDIA driver >= 570.26 (R570)"


def test_the_phase_command_exits_2_before_any_work(tmp_path, monkeypatch, capsys, smoke_study_path):
    import lorascope.cuda as cuda_mod
    from lorascope.cli import main

    monkeypatch.setattr(cuda_mod, "cuda_problem", lambda torch: "torch 2.13.0 (CUDA 13.0) finds no usable GPU")
    monkeypatch.setenv("LORASCOPE_REQUIRE_CUDA", "1")
    store = tmp_path / "store"
    code = main(["train", "--study", str(smoke_study_path), "--store", str(store), "--index", "0"])
    assert code == 2
    assert "NVIDIA driver >= 580.65.06" in capsys.readouterr().err
    assert not store.exists()  # nothing written: the check runs before the store is opened


# ---------------------------------------------------------------------------------------------- which cause
# What the loader says when libcuda.so.1 is not on its path (glibc's dlerror, as ctypes.CDLL raises it), and what c10
# does then: device_count() returns 0 without a warning (c10/cuda/CUDAFunctions.cpp, driver version 0).
NO_LIBCUDA = "libcuda.so.1: cannot open shared object file: No such file or directory"
GKE_MOUNT = "/usr/local/nvidia/lib64/libcuda.so.1"


def no_library(name):
    raise OSError(NO_LIBCUDA)


class FakeLibcuda:
    """The two driver API calls the probe makes, answering as a driver of `version` (cuDriverGetVersion's encoding)
    whose cuInit returns `init`."""

    def __init__(self, version: int, init: int = 0) -> None:
        self.version, self.init = version, init

    def cuDriverGetVersion(self, out):  # noqa: N802 (the C name)
        out._obj.value = self.version
        return 0

    def cuInit(self, flags):  # noqa: N802
        return self.init


def _message(probe) -> str:
    with pytest.raises(ConfigError) as exc:
        require_cuda({"LORASCOPE_REQUIRE_CUDA": "1"}, "train", torch=fake_torch(), probe=probe)
    assert exc.value.exit_code == 2
    return str(exc.value)


def test_a_driver_mounted_by_gke_but_off_the_library_path_is_not_blamed_on_the_driver_version():
    from lorascope.cuda import probe_driver

    probe = probe_driver({"LD_LIBRARY_PATH": "/opt/other"}, load=no_library, exists=lambda p: p == GKE_MOUNT)
    assert (probe.loaded, probe.mounted, probe.load_error) == (False, (GKE_MOUNT,), NO_LIBCUDA)
    msg = _message(probe)
    assert "finds no usable GPU" in msg and "not found by the loader" in msg and GKE_MOUNT in msg
    assert "not on LD_LIBRARY_PATH (/opt/other)" in msg and "not a driver version problem" in msg
    assert "580.65.06" not in msg and "too old" not in msg


def test_no_driver_library_at_all_means_no_gpu_in_the_pod_or_no_driver_on_the_node():
    from lorascope.cuda import probe_driver

    msg = _message(probe_driver({}, load=no_library, exists=lambda p: False))
    assert "no NVIDIA driver library in this container" in msg and NO_LIBCUDA in msg
    assert "the pod got no GPU (it must request nvidia.com/gpu: 1)" in msg and "gpu-driver-version=latest" in msg
    assert "580.65.06" not in msg


def test_a_driver_older_than_the_torch_build_is_named_with_its_cuda_version():
    from lorascope.cuda import probe_driver

    probe = probe_driver({}, load=lambda name: FakeLibcuda(12080), exists=lambda p: p == GKE_MOUNT)
    assert (probe.loaded, probe.driver_cuda, probe.init_result) == (True, 12080, 0)
    msg = _message(probe)
    assert "driver is too old: it supports CUDA 12.8 (cuDriverGetVersion 12080)" in msg
    assert "built for CUDA 13.0 and needs NVIDIA driver >= 580.65.06 (R580)" in msg and "gpu-driver-version=latest" in msg


def test_a_new_enough_driver_without_a_device_says_so():
    from lorascope.cuda import probe_driver

    msg = _message(probe_driver({}, load=lambda name: FakeLibcuda(13010, init=100), exists=lambda p: True))
    assert "driver loads (it supports CUDA 13.1) but sees no GPU (cuInit: CUDA_ERROR_NO_DEVICE)" in msg
    assert "580.65.06" not in msg


def test_the_real_probe_reports_what_the_loader_and_driver_say():
    """Unfaked: without a driver (CI) ctypes' own loader error; with one, its CUDA version."""
    import os

    from lorascope.cuda import probe_driver

    probe = probe_driver(os.environ)
    if probe.loaded:
        assert probe.driver_cuda is not None and probe.driver_cuda >= 10000
    else:
        assert "libcuda.so.1" in probe.load_error and probe.driver_cuda is None
