"""LoRA rank and scale per module follow PEFT's own rule (`peft.utils.other.get_pattern_key`: the first pattern, in
order, that matches the module name or a dotted suffix of it, as a regex), not `endswith` with the last match
winning; checked against PEFT's function and against a PEFT model built with rank and alpha patterns."""

from __future__ import annotations

import numpy as np
import pytest
from peft.utils.other import get_pattern_key

from lorascope import tensorio
from lorascope.analysis import lora

KEYS = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.10.self_attn.q_proj", "model.layers.1.mlp.xq_proj"]  # fmt: skip
PATTERNS = [
    ["q_proj", "layers.0.self_attn.q_proj"],  # the first match wins: "q_proj" for layer 0 too
    ["layers.0.self_attn.q_proj", "q_proj"],
    ["proj"],  # not a dotted suffix: matches nothing (endswith would match everything)
    [r"layers\.1\d*\.self_attn\.q_proj"],  # a regex
    ["layers.1.self_attn.q_proj"],  # does not match layers.10 (endswith would not either) nor ...
    ["q_proj"],  # ... xq_proj, which endswith("q_proj") would match
]  # fmt: skip


@pytest.mark.parametrize("patterns", PATTERNS, ids=[",".join(p) for p in PATTERNS])
@pytest.mark.parametrize("key", KEYS)
def test_pattern_key_is_peft_get_pattern_key(patterns, key):
    want = get_pattern_key(patterns, key)
    got = lora.pattern_key(patterns, key)
    assert (got if got is not None else key) == want


def test_first_match_wins_and_dotted_suffixes_only():
    config = {"r": 8, "lora_alpha": 16, "rank_pattern": {"q_proj": 2, "layers.0.self_attn.q_proj": 6},
              "alpha_pattern": {"proj": 99, "v_proj": 4}}  # fmt: skip
    assert lora.lora_scale(config, "model.layers.0.self_attn.q_proj") == (2, 8.0)  # endswith + last wins: (6, 16/6)
    assert lora.lora_scale(config, "model.layers.0.self_attn.v_proj") == (8, 0.5)  # "proj" is no dotted suffix
    assert lora.lora_scale(config, "model.layers.0.mlp.xq_proj") == (8, 2.0)
    assert lora.lora_scale({**config, "use_rslora": True}, "model.layers.1.self_attn.q_proj") == (2, 16 / np.sqrt(2))


def test_adapter_deltas_equal_peft_merge_with_rank_and_alpha_patterns(tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from lorascope.models import builtin, loading

    base_dir = builtin.build_tiny_llama(tmp_path / "base")
    model = loading.load_classifier(base_dir, 2, torch.float32, "cpu")
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS",
                        rank_pattern={"layers.0.self_attn.q_proj": 6, "q_proj": 2},
                        alpha_pattern={"proj": 99.0, r"layers\.1\.self_attn\.v_proj": 3.0})  # fmt: skip
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    deltas = lora.adapter_deltas(*tensorio.read_adapter(tmp_path / "adapter"))
    ranks = {k: A.shape[0] for k, (_, A, _) in deltas.items()}
    # the first matching pattern: 6 for block 0 (endswith with the last match winning would say 2), 2 for block 1
    assert ranks["model.layers.0.self_attn.q_proj.weight"] == 6 and ranks["model.layers.1.self_attn.q_proj.weight"] == 2
    assert deltas["model.layers.0.self_attn.q_proj.weight"][2] == 8 / 6
    assert deltas["model.layers.1.self_attn.v_proj.weight"][2] == 3.0 / 4
    merged = PeftModel.from_pretrained(loading.load_classifier(base_dir, 2, torch.float32, "cpu"),
                                       str(tmp_path / "adapter")).merge_and_unload()  # fmt: skip
    base = tensorio.TensorFolder(base_dir, "model")
    for name, (B, A, scale) in deltas.items():
        want = merged.state_dict()[name].double().numpy() - base.get(name)
        assert np.abs(want).max() > 1e-4
        assert scale * B @ A == pytest.approx(want, abs=1e-6), name


def test_a_rank_that_disagrees_with_the_factors_is_an_error():
    """PEFT writes adapter_config.json with sort_keys=True, so the file's (sorted) pattern order is the one that
    decides on reading; an adapter whose overlapping patterns were created in another order has factors of another
    rank, and that is an error here (PEFT itself could not reload it), not a silently wrong scale."""
    B, A = np.zeros((5, 3)), np.zeros((3, 4))
    with pytest.raises(ValueError, match="rank 8"):
        lora.adapter_deltas({"r": 8, "lora_alpha": 16}, {"model.layers.0.self_attn.q_proj": (B, A)})
