"""Forgetting on the real pretrained model (builtin:smollm2-135m): the extract phase's forgetting.json of the base and
of the two cells the real-model suite trains (tests/real_model/conftest.py: 4 AdamW steps each on 16 MRPC examples)."""

from __future__ import annotations

import json

import pytest

from lorascope import heldout_loss

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(1500)]


def _forgetting(run, model: str) -> dict:
    ctx = run.ctx()
    return json.loads((ctx.local(ctx.require("reps", model, "mrpc")) / heldout_loss.FILE).read_text())


def test_base_loss_is_a_pretrained_lms_and_full_fine_tuning_raises_it(real_trained):
    """The base's loss on the held-out prose is that of a pretrained LM (measured 3.64 nats/token, perplexity 38, on
    32 texts = 1981 tokens; a uniform guess over the 49152 tokens would be ln 49152 = 10.8). Four full fine-tuning
    steps at the study's learning rate raise it: the base is a pretrained LM, (near) a minimum of the loss on general
    text; classification steps move every weight in directions another objective chose. Measured here: full
    +0.0052 nats/token (4 steps at lr 5e-5), LoRA +0.0125 (4 steps at lr 2e-3 on q, v)."""
    run = real_trained.run
    base = _forgetting(run, "base")
    assert base["texts"] == 32 and base["tokens"] == 1981 and base["head"].endswith("model.embed_tokens.weight")
    assert 3.0 < base["loss_nats_per_token"] < 4.5
    full = _forgetting(run, "mrpc-full-s42")
    lora = _forgetting(run, "mrpc-lora-s42")
    assert full["tokens"] == lora["tokens"] == base["tokens"] and full["texts_sha256"] == base["texts_sha256"]
    delta_full = full["loss_nats_per_token"] - base["loss_nats_per_token"]
    delta_lora = lora["loss_nats_per_token"] - base["loss_nats_per_token"]
    print(f"smollm2 forgetting: base {base['loss_nats_per_token']:.4f}, full +{delta_full:.4f}, lora {delta_lora:+.4f} nats/token")
    assert 0.001 < delta_full < 0.5
    assert delta_lora != 0.0 and abs(delta_lora) < 0.5  # the adapter moved the backbone (LoRA on q, v)
