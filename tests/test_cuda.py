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
