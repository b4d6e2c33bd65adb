"""reporting.bench_markdown: the words for a serving stack and its device, shared by summary.md, the report's bench
section and the latency figure."""

from __future__ import annotations

from lorascope.reporting import bench_markdown as bm


def test_stack_names_spell_out_backend_and_build():
    assert bm.stack_name("hf", "torch") == "Hugging Face transformers + PEFT on PyTorch"
    assert bm.stack_name("vllm", "cpu") == "vLLM, CPU build"
    assert bm.stack_name("vllm", "cuda") == "vLLM, CUDA build"
    assert bm.stack_name("vllm", "tpu") == "vLLM, platform tpu"  # an unknown platform is named, not dropped
    assert bm.stack_name("hf", None) == "Hugging Face transformers + PEFT"


def test_device_words():
    assert bm.device_words({"device": "cpu", "device_name": "x86_64"}) == "CPU (x86_64)"
    assert bm.device_words({"device": "cuda:0", "device_name": "NVIDIA L4"}) == "GPU NVIDIA L4 (cuda:0)"
    assert bm.device_words({"device": "cuda", "device_name": None}) == "GPU (cuda)"
    assert bm.device_words({}) == "unknown device"
