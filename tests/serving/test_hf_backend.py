"""serving.hf_backend on the tiny Llama with adapters made by our modeling code: mixed multi-adapter batches answer
every request with its own adapter, merging preserves the logits, the saved checkpoints are what loaders expect."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lorascope import data
from lorascope.models import builtin, loading
from lorascope.serving import PROB_TOLERANCE, hf_backend, protocol, workload
from lorascope.study import LoraMethod
from tests.fixtures.tiny_model import GLUE_FIXTURES, make_adapter

TASKS = ["mrpc", "sst2", "rte"]
CPU = torch.device("cpu")
TOL = PROB_TOLERANCE["float32"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-backend")
    base = builtin.build_tiny_llama(root / "base")
    adapters = {t: make_adapter(base, root / f"adapter-{t}", LoraMethod(), seed=10 + i) for i, t in enumerate(TASKS)}
    tok = loading.load_tokenizer(base)
    pools = {t: workload.make_pool(t, data.encode(tok, t, data.read_jsonl(GLUE_FIXTURES / t / "validation.jsonl")[:40], 384), 42)
             for t in TASKS}  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"root": root, "base": base, "adapters": adapters, "pools": pools}
    torch.set_num_threads(threads)


def _single_reference(tiny, requests) -> dict[tuple[str, int], np.ndarray]:
    out = {}
    for task in TASKS:
        server = hf_backend.open_adapters("separate", tiny["base"], {task: tiny["adapters"][task]}, 2, torch.float32, CPU)
        for q in requests:
            if q.task == task:
                out[(q.task, q.idx)] = server.serve([q])[0].astype(np.float64)
        server.close()
    return out


def test_adapters_differ_so_the_checks_mean_something(tiny):
    q = tiny["pools"]["mrpc"][0]
    logits = [hf_backend.open_adapters("separate", tiny["base"], {t: tiny["adapters"][t]}, 2, torch.float32, CPU).serve([q])[0]
              for t in TASKS]  # fmt: skip
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.abs(logits[i] - logits[j]).max() > 1e-2


@pytest.mark.parametrize("order", ["rr", "random"])
def test_multi_adapter_mixed_batches_equal_single_adapter_predictions(tiny, order):
    server = hf_backend.open_adapters("multi-3", tiny["base"], tiny["adapters"], 2, torch.float32, CPU)
    assert server.mixed and server.tasks == TASKS
    _, timed = workload.batches(tiny["pools"], TASKS, order, seed=42, batch_size=8, warmup_batches=0, requests=48)
    assert any(len({q.task for q in b}) == 3 for b in timed)  # batches really mix adapters
    run = protocol.ConfigRun("multi-3", order, 8, TASKS, timed, logits=[server.serve(b) for b in timed])
    ref = _single_reference(tiny, [q for b in timed for q in b])
    result = protocol.compare([run], ref, TOL)
    assert result["requests"] == 48
    assert result["argmax_mismatches"] == 0 and result["argmax_ties_within_tolerance"] == 0
    assert result["max_prob_diff"] < TOL and result["ok"]


def test_switch_sets_the_active_adapter(tiny):
    server = hf_backend.open_adapters("multi-2", tiny["base"], {t: tiny["adapters"][t] for t in TASKS[:2]}, 2, torch.float32, CPU)
    server.switch("sst2")
    assert server.model.active_adapter == "sst2"
    q = tiny["pools"]["mrpc"][1]
    single = hf_backend.open_adapters("separate", tiny["base"], {"sst2": tiny["adapters"]["sst2"]}, 2, torch.float32, CPU)
    server.mixed = False  # serve with the active adapter, as a one-adapter-batch server would
    assert np.allclose(server.serve([q]), single.serve([q]), atol=1e-6)


def test_merged_checkpoint_is_a_plain_model_with_the_same_logits(tiny):
    out = tiny["root"] / "merged"
    seconds = hf_backend.merge_adapter(tiny["base"], tiny["adapters"]["mrpc"], out, 2, torch.float32, tokenizer_dir=tiny["base"])
    assert seconds > 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "score.weight" in keys and not any("lora" in k or "modules_to_save" in k for k in keys)
    assert (out / "tokenizer.json").is_file()
    merged = hf_backend.open_plain("merged", out, 2, torch.float32, CPU)
    assert not merged.mixed and merged.tasks == []
    separate = hf_backend.open_adapters("separate", tiny["base"], {"mrpc": tiny["adapters"]["mrpc"]}, 2, torch.float32, CPU)
    _, timed = workload.batches(tiny["pools"], ["mrpc"], "single", seed=1, batch_size=4, warmup_batches=0, requests=40)
    diffs = [np.abs(protocol.softmax(merged.serve(b)) - protocol.softmax(separate.serve(b))).max() for b in timed]
    assert max(diffs) < TOL
    # the merge changed the base: the merged model is not the base model
    base = hf_backend.open_adapters("separate", tiny["base"], {"rte": tiny["adapters"]["rte"]}, 2, torch.float32, CPU)
    assert np.abs(merged.serve(timed[0]) - base.serve(timed[0])).max() > 1e-2


def test_seqcls_base_has_a_score_head_and_no_lm_head(tiny):
    out = hf_backend.save_seqcls_base(tiny["base"], tiny["root"] / "seqcls", 2, torch.float32, seed=0)
    with safe_open(str(Path(out) / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert tuple(f.get_tensor("score.weight").shape) == (2, 64)
    assert "lm_head.weight" not in keys
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]


def test_memory_report_on_cpu(tiny):
    server = hf_backend.open_adapters("multi-3", tiny["base"], tiny["adapters"], 2, torch.float32, CPU)
    mem = server.memory()
    base_params = sum(p.numel() for p in loading.load_classifier(tiny["base"], 2, torch.float32, "cpu").parameters())
    assert mem["weights_bytes"] > 4 * base_params  # base + 3 adapters + 3 head copies, float32
    assert mem["gpu_allocated_after_load_bytes"] is None and mem["rss_after_load_bytes"] > 0
    assert server.peak_memory()["gpu_peak_allocated_bytes"] is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_gpu_bfloat16_multi_adapter_and_memory(tiny):
    cuda = torch.device("cuda")
    tol = PROB_TOLERANCE["bfloat16"]
    server = hf_backend.open_adapters("multi-3", tiny["base"], tiny["adapters"], 2, torch.bfloat16, cuda)
    assert server.memory()["gpu_allocated_after_load_bytes"] > 0
    _, timed = workload.batches(tiny["pools"], TASKS, "random", seed=42, batch_size=8, warmup_batches=0, requests=32)
    server.reset_peak()
    run = protocol.ConfigRun("multi-3", "random", 8, TASKS, timed, logits=[server.serve(b) for b in timed])
    assert server.peak_memory()["gpu_peak_allocated_bytes"] >= server.memory()["gpu_allocated_after_load_bytes"]
    ref = {}
    for task in TASKS:
        single = hf_backend.open_adapters("separate", tiny["base"], {task: tiny["adapters"][task]}, 2, torch.bfloat16, cuda)
        ref.update({(q.task, q.idx): single.serve([q])[0].astype(np.float64) for b in timed for q in b if q.task == task})
    result = protocol.compare([run], ref, tol)
    assert result["argmax_mismatches"] == 0 and result["max_prob_diff"] <= tol
