"""tools/gpu-check.sh, the check prepared for the day a GPU machine is lent, runs here on its CPU path so it cannot
rot: every step (the smoke study end to end, training throughput, extraction throughput, serving) runs shrunk on the
CPU through the same script, and the JSON it writes has every figure the GPU run will record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_gpu_check_runs_its_cpu_path_and_records_every_figure(tmp_path):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_LIMIT": "1400", "LORASCOPE_TORCH_THREADS": "1"}
    r = subprocess.run(["bash", str(REPO / "tools" / "gpu-check.sh"), "--cpu-smoke", str(out)], env=env,
                       capture_output=True, text=True, timeout=1450)  # fmt: skip
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["failed"] == []
    env_ = report["environment"]
    assert env_["torch"] and env_["cuda_available"] is False and "libcuda" in env_
    smoke = report["smoke"]
    assert smoke["exit"] == 0 and smoke["report"] is True and "lorascope.cli run --study" in smoke["command"]
    assert sorted(smoke["cells"]) == ["mrpc-full-s42", "mrpc-lora-s42"]
    for cell in smoke["cells"].values():
        assert cell["bf16"] is False and cell["peak_memory_kind"] == "process_peak_rss" and cell["tokens_per_second"] > 0
    assert smoke["extract_examples_per_second"] and all(v > 0 for v in smoke["extract_examples_per_second"].values())
    assert smoke["bench_hf"]  # the bench phase's summary
    for method in ("full", "lora"):
        t = report["training"][method]
        assert t["exit"] == 0 and t["summary"]["tokens_per_second"]["dynamic"] > 0, t
    assert report["extraction"]["examples_per_second"] > 0 and report["extraction"]["dtype"] == "float32"
    assert report["serving"]["exit"] == 0 and report["serving"]["summary"], report["serving"]
    log = (out / "gpu-check.log").read_text()
    assert log.startswith("== gpu-check ") and "gpu-check: serving done" in log


def test_the_check_knows_what_lorascope_needs_besides_torch():
    sys.path.insert(0, str(REPO / "tools"))
    import gpu_check

    assert gpu_check.missing_modules() == []  # this venv has everything
    pins = gpu_check.closure(list(gpu_check.NEEDED_MODULES.values()))
    assert {"transformers", "peft", "optuna", "pydantic", "boto3"} <= set(pins)
    assert not [k for k in pins if k.startswith(("torch", "nvidia-", "triton", "cuda-"))]  # torch is the machine's
