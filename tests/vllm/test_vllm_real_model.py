"""vLLM's engine serving the real pretrained SmolLM2-135M (builtin:smollm2-135m, converted by `make install-real-model`)
with a LoRA adapter, against HF transformers + PEFT in the same process (marker `vllm`; runs in .venv-vllm).

The smoke model has 2 layers of width 64; SmolLM2 has 30 layers, GQA (9 query / 3 KV heads, head_dim 64), tied
embeddings and real activation scales (massive first-token activations), so this is where vLLM's CPU attention, its
punica LoRA kernels and our score-head-in-the-adapter contract meet real numerics."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402

from lorascope import data  # noqa: E402
from lorascope.models import loading  # noqa: E402
from lorascope.serving import hf_backend, protocol, vllm_backend  # noqa: E402
from lorascope.serving.workload import Request  # noqa: E402
from lorascope.study import LoraMethod  # noqa: E402
from tests.fixtures.smollm2 import smollm2_model_dir  # noqa: E402
from tests.fixtures.tiny_model import GLUE_FIXTURES, make_adapter  # noqa: E402

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
PROB_TOL = 1e-4  # float32 through 30 layers: summation order differs between vLLM's and torch's kernels


def test_vllm_serves_smollm2_with_an_adapter_like_hf(tmp_path):
    base = smollm2_model_dir()
    tok = loading.load_tokenizer(base)
    rows = [json.loads(x) for x in (GLUE_FIXTURES / "mrpc" / "validation.jsonl").read_text().splitlines()[:12]]
    reqs = [Request(task="mrpc", idx=i, input_ids=tuple(int(t) for t in e["input_ids"]), label=int(e["labels"]))
            for i, e in enumerate(data.encode(tok, "mrpc", rows, 128))]  # fmt: skip
    assert all(q.input_ids[0] == tok.bos_token_id for q in reqs)
    seqcls = hf_backend.save_seqcls_base(base, tmp_path / "seqcls", 2, torch.float32, seed=0)
    adapter = make_adapter(base, tmp_path / "adapter", LoraMethod(), seed=3)

    kw = vllm_backend.engine_kwargs(seqcls, base, "float32", 64 * 2**20, 128, 0, adapters=1)
    server = vllm_backend.VllmServer("separate", kw, {"mrpc": adapter}, vllm_backend.weights_bytes(seqcls, "float32"),
                                     threads=2)  # fmt: skip
    try:
        ours = server.serve(reqs)
    finally:
        server.close()
    hf = hf_backend.open_adapters("separate", base, {"mrpc": adapter}, 2, torch.float32, torch.device("cpu"))
    ref = np.asarray([hf.serve([q])[0] for q in reqs])
    hf.close()
    p, r = protocol.softmax(ours), protocol.softmax(ref)
    assert (p.argmax(-1) == r.argmax(-1)).all()
    assert float(np.abs(p - r).max()) < PROB_TOL
    # the adapter matters: the same requests without it answer otherwise
    plain = hf_backend.open_plain("merged", seqcls, 2, torch.float32, torch.device("cpu"))
    without = np.asarray([plain.serve([q])[0] for q in reqs])
    plain.close()
    assert float(np.abs(protocol.softmax(without) - r).max()) > 1e-3
