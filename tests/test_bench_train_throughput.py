"""bench/train_throughput.py: its FLOP count for MFU matches TinyLlama's parameter count, the GPU peak lookup picks
the right part, and the CPU run prints a ratio from real training steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.scripts import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tt():
    mod = load_script("bench/train_throughput.py")
    return mod


def test_flops_per_token_counts_tinyllama_non_embedding_parameters(tt, tmp_path):
    shape = tt.Shape("tinyllama", tmp_path, None)
    # per layer: q, o 2048^2; k, v 2048 x 256 (4 of 32 heads); gate, up, down 2048 x 5632
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 5632
    assert per_layer * 22 == 968_884_224  # + 2 x 65.5M embeddings/lm_head = TinyLlama's 1.1B
    n = 22 * per_layer + 2 * 2048
    attention = 12 * 22 * 58.0 * 2048
    assert shape.flops_per_token("full", 58.0) == 6 * n + attention
    assert shape.flops_per_token("lora", 58.0) == 4 * n + attention


def test_peak_lookup(tt):
    assert tt.peak_tflops("NVIDIA L4") == 121.0
    assert tt.peak_tflops("NVIDIA L40S") == 362.0
    assert tt.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert tt.peak_tflops("Some Future GPU") is None


def test_cpu_run_prints_a_measured_ratio(tt, capsys):
    assert tt.main(["--examples", "24", "--micro-batch", "4", "--warmup-steps", "1", "--repeats", "1", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["device"] == "cpu" and summary["model"] == "builtin:tiny-llama"
    assert summary["pad_fraction"]["fixed"] > 0.8 > summary["pad_fraction"]["dynamic"]
    tps = summary["tokens_per_second"]
    assert tps["dynamic"] > 0 and tps["fixed"] > 0
    assert summary["ratio_dynamic_over_fixed"] == round(tps["dynamic"] / tps["fixed"], 2)


def test_layers_only_for_tinyllama(tt, tmp_path):
    with pytest.raises(SystemExit, match="--layers"):
        tt.Shape("smoke", tmp_path, 2)
