"""A regime label must be true (marker `vllm`, fast: one eager engine start). vLLM's CPU platform turns compilation off
for any engine with LoRA enabled; asking such an engine for the compiled regime must stop with an error naming the
mode, not time an eager engine under the `compiled` label. On CUDA the same engine compiles."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from lorascope.models import builtin  # noqa: E402
from lorascope.serving import hf_backend, vllm_backend  # noqa: E402
from lorascope.study import LoraMethod  # noqa: E402
from tests.fixtures.tiny_model import make_adapter  # noqa: E402

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def test_a_compiled_lora_engine_that_vllm_runs_eagerly_is_refused(tmp_path):
    base = builtin.build_tiny_llama(tmp_path / "base")
    adapters = {"mrpc": make_adapter(base, tmp_path / "adapter", LoraMethod(), seed=3)}
    seqcls = hf_backend.save_seqcls_base(base, tmp_path / "seqcls", 2, torch.float32, seed=0)
    kw = vllm_backend.engine_kwargs(seqcls, base, "float32", 32 * 2**20, 128, 0, adapters=1, regime="compiled")
    assert kw["enforce_eager"] is False and kw["enable_lora"] is True
    if vllm_backend.platform_kind() != "cpu":
        pytest.skip("only vLLM's CPU platform forces LoRA engines to eager")
    assert not vllm_backend.regime_possible("compiled", 1, "cpu")  # what the bench plans with agrees
    alive = vllm_backend.VllmServer._alive
    with pytest.raises(RuntimeError, match=r"ran the separate engine eagerly although the compiled regime was asked"):
        vllm_backend.VllmServer("separate", kw, adapters, 1, threads=1)
    assert vllm_backend.VllmServer._alive == alive  # the refused engine was closed
    assert torch.set_num_threads.__module__ == "torch"  # and thread control given back
