"""Model families: roles resolve to the exact modules of each architecture (lorascope.models.families)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    LlamaConfig,
    Phi3Config,
    Qwen2Config,
    RobertaConfig,
)

from lorascope.errors import ConfigError
from lorascope.models import families

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)


def _model(config):
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="module")
def llama():
    return _model(LlamaConfig(**SMALL, num_key_value_heads=1, num_labels=2))


@pytest.fixture(scope="module")
def roberta():
    return _model(RobertaConfig(**SMALL, max_position_embeddings=40, num_labels=2))


def test_llama_roles_and_literals_name_the_same_modules(llama):
    by_role = families.resolve_targets(llama, ["q", "v"])
    assert by_role == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                       "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert families.resolve_targets(llama, ["q_proj", "v_proj"]) == by_role
    assert len(families.resolve_targets(llama, ["attention"])) == 8
    assert len(families.resolve_targets(llama, ["all-linear"])) == 14  # 7 linears x 2 blocks; the score head is not in a block
    assert families.target_roles(llama, by_role) == ["self_attn.q_proj", "self_attn.v_proj"]


def test_roberta_keeps_its_two_output_dense_modules_apart(roberta):
    down = families.resolve_targets(roberta, ["down"])
    o = families.resolve_targets(roberta, ["o"])
    assert down == ["roberta.encoder.layer.0.output.dense", "roberta.encoder.layer.1.output.dense"]
    assert o == ["roberta.encoder.layer.0.attention.output.dense", "roberta.encoder.layer.1.attention.output.dense"]
    assert families.family_of(roberta).encoder
    with pytest.raises(ConfigError, match="role 'gate' does not exist in roberta"):
        families.resolve_targets(roberta, ["gate"])


def test_fused_projections_and_biases():
    phi3 = _model(Phi3Config(**SMALL, num_key_value_heads=1, pad_token_id=0, num_labels=2))
    assert families.resolve_targets(phi3, ["q", "v"]) == ["model.layers.0.self_attn.qkv_proj",
                                                          "model.layers.1.self_attn.qkv_proj"]
    qwen = _model(Qwen2Config(**SMALL, num_key_value_heads=1, num_labels=2))
    groups = families.parameter_groups(qwen)
    assert sorted(n.rsplit(".", 2)[-2] for n in groups["bias"] if ".0." in n) == ["k_proj", "q_proj", "v_proj"]
    llama_groups = families.parameter_groups(_model(LlamaConfig(**SMALL, num_key_value_heads=1, num_labels=2)))
    assert llama_groups["bias"] == []  # Llama has no bias terms: BitFit has nothing to train there
    assert len(llama_groups["norm"]) == 5  # 2 per block + the final norm
    assert llama_groups["head"] == ["score.weight"]


def test_unknown_targets_and_architectures_are_named(llama):
    with pytest.raises(ConfigError, match=r"methods.0.target_modules: 'qproj' matches no module"):
        families.resolve_targets(llama, ["qproj"], "methods.0.target_modules")
    with pytest.raises(ConfigError, match="'gpt_neox' is not a supported architecture"):
        families.family_for("gpt_neox")  # GPT-2 is supported since issue 23 (generation); GPT-NeoX is not
