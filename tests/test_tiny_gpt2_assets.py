"""The tiny GPT-2's shipped config and tokenizer (assets/tiny-gpt2): load offline, GPT-2's shapes and Conv1D
projections, PEFT's LoRA on them, and the tokenizer is exactly its script's output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.fixtures.scripts import load_script

REPO = Path(__file__).resolve().parents[1]
GPT2_ASSETS = REPO / "pkg" / "lorascope" / "assets" / "tiny-gpt2"


@pytest.fixture(scope="module")
def model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config.from_pretrained(GPT2_ASSETS))


def test_tiny_gpt2_builds_with_conv1d_projections(model):
    from transformers.pytorch_utils import Conv1D

    block = model.transformer.h[0]
    assert len(model.transformer.h) == 2 and model.config.n_embd == 64 and model.config.vocab_size == 1024
    for module, shape in ((block.attn.c_attn, (64, 192)), (block.attn.c_proj, (64, 64)), (block.mlp.c_fc, (64, 256)),
                          (block.mlp.c_proj, (256, 64))):  # fmt: skip
        assert isinstance(module, Conv1D) and tuple(module.weight.shape) == shape  # (in, out): nn.Linear transposed
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied, as GPT-2
    assert sum(p.numel() for p in model.parameters()) == 198_400


def test_tiny_gpt2_tokenizer_loads_offline_and_round_trips(model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(GPT2_ASSETS)
    assert tok.eos_token == tok.bos_token == "<|endoftext|>" and tok.eos_token_id == 1023 == len(tok) - 1
    assert tok.pad_token is None  # as GPT-2; decoders get pad = eos in lorascope
    mr = json.loads((REPO / "pkg/lorascope/assets/e2e/validation.jsonl").read_text().splitlines()[0])
    text = f"{mr['meaning_representation']} {mr['human_reference']}"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and 1023 not in ids  # byte-level: no unknown token, nothing added
    assert len(ids) < 0.5 * len(text)  # fixture words are mostly whole tokens
    out = model(torch.tensor([ids]), labels=torch.tensor([ids]))
    assert out.logits.shape == (1, len(ids), 1024) and torch.isfinite(out.loss)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_peft_lora_wraps_conv1d_with_fan_in_fan_out(model):
    import copy

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=32, target_modules=["c_attn"], fan_in_fan_out=True)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    layer = peft_model.base_model.model.transformer.h[0].attn.c_attn
    assert layer.fan_in_fan_out
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == 2 * 4 * (64 + 192)  # one rank-4 pair on the fused q, k, v map per block


def test_shipped_gpt2_tokenizer_is_the_scripts_output():
    module = load_script("tools/make_tiny_gpt2_tokenizer.py")
    assert (GPT2_ASSETS / "tokenizer.json").read_text() == module.build()
