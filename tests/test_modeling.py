"""modeling: the tiny model, pooling at the last attended token, LoRA setup and parameter counts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from lorascope import data, methods
from lorascope.errors import ConfigError
from lorascope.methods.full import FullMethod
from lorascope.methods.lora import LoraMethod, lora_parameter_count
from lorascope.models import artifacts, builtin, hub, loading, pooling

PAIRS = [
    {"sentence1": "the bank in oslo approved the plan on monday .", "sentence2": "the plan was backed by the bank in oslo on monday .", "label": 1, "idx": 0},
    {"sentence1": "the court in rome delayed the deal .", "sentence2": "on friday , the court postponed it .", "label": 1, "idx": 1},
    {"sentence1": "alice , who lives in paris , works as a baker and has a dog .", "sentence2": "alice owns a dog .", "label": 0, "idx": 2},
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return builtin.build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return loading.load_tokenizer(tiny_dir)


def classifier(tiny_dir, seed: int = 0):
    torch.manual_seed(seed)
    return loading.load_classifier(tiny_dir, num_labels=2, dtype=torch.float32, device="cpu").eval()


def randomize_lora_b(model) -> None:
    """LoRA starts with B = 0 (the adapter is a no-op); give B values so the adapter changes the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def manual_logits(model, batch, positions) -> torch.Tensor:
    """score(hidden state after the final norm) at the given positions, computed without the classifier's forward."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return base.score(hidden[torch.arange(len(positions)), torch.tensor(positions)])


# ------------------------------------------------------------------------------------------------ tiny model
def test_build_tiny_llama_is_deterministic_and_loadable(tiny_dir, tmp_path):
    again = builtin.build_tiny_llama(tmp_path / "again")
    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(tiny_dir)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (64, 2, 2, 1)
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    # the global RNG is left as it was
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    builtin.build_tiny_llama(tmp_path / "third")
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_pad_is_eos_right_padding_and_no_added_specials(tiny_dir, tokenizer):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert len(tokenizer) == cfg["vocab_size"]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == cfg["eos_token_id"] == 2
    assert tokenizer.bos_token_id == cfg["bos_token_id"] == 1
    assert tokenizer.padding_side == "right"
    ids = tokenizer("the film is dull .")["input_ids"]
    assert tokenizer.bos_token_id not in ids and tokenizer.eos_token_id not in ids  # encode adds BOS itself
    assert tokenizer.unk_token_id not in ids


def test_load_classifier_sets_pad_id_and_keeps_architecture_name(tiny_dir, tmp_path):
    model = classifier(tiny_dir)
    assert model.config.pad_token_id == 2
    assert isinstance(model, pooling.LastAttendedPooling)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]


def test_load_classifier_missing_folder_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        loading.load_classifier(tmp_path / "nope", 2, torch.float32, "cpu")


# ------------------------------------------------------------------------------------------------ pooling
def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert pooling.last_token_index(mask).tolist() == [2, 4, 4, 0]


def test_pair_pools_at_end_of_s2_not_at_separator(tiny_dir, tokenizer):
    model = classifier(tiny_dir)
    feats = data.encode(tokenizer, "mrpc", PAIRS, max_length=384)
    batch = data.collate(feats, tokenizer.pad_token_id)
    index = pooling.last_token_index(batch["attention_mask"])
    for row, f in enumerate(feats):
        ids = f["input_ids"]
        separator = ids.index(tokenizer.eos_token_id)
        s2 = tokenizer(PAIRS[row]["sentence2"], add_special_tokens=False)["input_ids"]
        assert int(index[row]) == len(ids) - 1 == separator + len(s2)  # the last token of s2
        assert ids[int(index[row])] == s2[-1] and int(index[row]) != separator
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, manual_logits(model, batch, index.tolist()), atol=1e-6, rtol=0)
    # and not the separator's state: those logits differ
    separators = [f["input_ids"].index(tokenizer.eos_token_id) for f in feats]
    assert not torch.allclose(logits, manual_logits(model, batch, separators), atol=1e-4)


def test_sequence_ending_in_eos_pools_at_the_eos_unlike_stock_transformers(tiny_dir, tokenizer):
    """Why the forward is replaced: transformers 5.23 pools at the rightmost token whose id is not the pad id.
    A pair with an empty s2 ends in the separator EOS (= pad id), so the stock classifier reads the end of s1;
    the last attended token is the EOS, which is also what vLLM's classify pooling reads."""
    from transformers.models.llama.modeling_llama import LlamaForSequenceClassification

    model = classifier(tiny_dir)
    feats = data.encode(tokenizer, "mrpc", [{**PAIRS[0], "sentence2": ""}, PAIRS[1]], max_length=384)
    batch = data.collate(feats, tokenizer.pad_token_id)
    n0 = len(feats[0]["input_ids"])
    assert feats[0]["input_ids"][-1] == tokenizer.eos_token_id
    with torch.no_grad():
        ours = model(**batch).logits
        stock = LlamaForSequenceClassification.forward(model, **batch).logits
    last = [n0 - 1, len(feats[1]["input_ids"]) - 1]
    torch.testing.assert_close(ours, manual_logits(model, batch, last), atol=1e-6, rtol=0)
    torch.testing.assert_close(stock, manual_logits(model, batch, [n0 - 2, last[1]]), atol=1e-6, rtol=0)
    assert not torch.allclose(ours[0], stock[0], atol=1e-4)


@pytest.mark.parametrize("method", ["full", "lora", "merged"])
def test_pooled_logits_equal_padded_to_longest_or_to_384(tiny_dir, tokenizer, method):
    model = classifier(tiny_dir)
    if method != "full":
        model = methods.apply_method(model, LoraMethod(r=8, target_modules=["q_proj", "v_proj"], dropout=0.0), {})
        randomize_lora_b(model)
        if method == "merged":
            model = model.merge_and_unload()
            assert isinstance(model, pooling.LastAttendedPooling)
    model.eval()
    rows = data.read_jsonl(data.FIXTURES / "rte" / "validation.jsonl")[:6]
    feats = data.encode(tokenizer, "rte", rows, max_length=384)
    dynamic = data.collate(feats, tokenizer.pad_token_id)
    fixed = data.collate(feats, tokenizer.pad_token_id, pad_to=384)
    assert dynamic["input_ids"].shape[1] < 60 and fixed["input_ids"].shape[1] == 384
    with torch.no_grad():
        a = model(**dynamic).logits
        b = model(**fixed).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    positions = pooling.last_token_index(dynamic["attention_mask"]).tolist()
    torch.testing.assert_close(a, manual_logits(model, dynamic, positions), atol=1e-5, rtol=0)


def test_masked_mean_excludes_bos_and_padding():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = pooling.masked_mean(hidden, mask)
    torch.testing.assert_close(out[0], hidden[0, 1:3].mean(0))
    torch.testing.assert_close(out[1], hidden[1, 1:5].mean(0))
    with_bos = pooling.masked_mean(hidden, mask, exclude_bos=False)
    torch.testing.assert_close(with_bos[0], hidden[0, 0:3].mean(0))
    assert out.dtype == torch.float32


def test_masked_mean_of_model_states_does_not_depend_on_pad_length(tiny_dir, tokenizer):
    model = classifier(tiny_dir)
    feats = data.encode(tokenizer, "mrpc", PAIRS, max_length=384)
    means = []
    for pad_to in (None, 384):
        batch = data.collate(feats, tokenizer.pad_token_id, pad_to=pad_to)
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1  # embeddings + one per layer
        means.append([pooling.masked_mean(h, batch["attention_mask"]) for h in out.hidden_states])
    for short, long in zip(*means, strict=True):
        torch.testing.assert_close(short, long, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ methods
def test_full_method_trains_everything(tiny_dir):
    model = methods.apply_method(classifier(tiny_dir), FullMethod(), {})
    trainable, total = artifacts.trainable_parameters(model)
    assert trainable == total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("targets", "r"), [(["q_proj", "v_proj"], 8), (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 4)]
)
def test_lora_trainable_parameters_match_the_formula(tiny_dir, targets, r):
    base = classifier(tiny_dir)
    base_total = sum(p.numel() for p in base.parameters())
    model = methods.apply_method(base, LoraMethod(r=r, target_modules=targets), {"lora_alpha": 32.0, "lora_dropout": 0.1})
    trainable, total = artifacts.trainable_parameters(model)
    cfg = model.config
    expected = lora_parameter_count(cfg, targets, r, num_labels=2)
    # by hand for the tiny model (hidden 64, 4 heads x 16, 2 kv heads x 16, intermediate 128, 2 layers):
    by_hand = {"q_proj": r * (64 + 64), "k_proj": r * (64 + 32), "v_proj": r * (64 + 32), "o_proj": r * (64 + 64),
               "gate_proj": r * (64 + 128), "up_proj": r * (64 + 128), "down_proj": r * (128 + 64)}  # fmt: skip
    assert expected == 2 * sum(by_hand[t] for t in targets) + 64 * 2
    assert trainable == expected
    assert total == base_total + expected  # adapters + the trainable copy of the score head
    lora_cfg = model.peft_config["default"]
    assert (lora_cfg.lora_alpha, lora_cfg.lora_dropout, lora_cfg.r) == (32.0, 0.1, r)
    assert "score" in lora_cfg.modules_to_save


def test_tinyllama_lora_count_is_about_1_13m():
    """TinyLlama-1.1B (hidden 2048, 22 layers, 32 heads, 4 kv heads -> v_proj 2048 -> 256), r=8 on q and v, plus
    the 2-label head: 22 * (8 * (2048 + 2048) + 8 * (2048 + 256)) + 2048 * 2 = 1,130,496. Checked against PEFT
    on a meta-device model of that shape (no weights allocated)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig(**builtin.TINYLLAMA_1B_ARCH, num_labels=2, pad_token_id=2)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (2048, 22, 32, 4)
    assert lora_parameter_count(cfg, ["q_proj", "v_proj"], 8, 2) == 1_130_496
    with torch.device("meta"):
        model = LlamaForSequenceClassification(cfg)
        peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, target_modules=["q_proj", "v_proj"]))
    assert artifacts.trainable_parameters(peft_model)[0] == 1_130_496


def test_lora_adapter_saves_the_head_and_reloads_to_the_same_logits(tiny_dir, tokenizer, tmp_path):
    from peft import PeftModel

    model = methods.apply_method(classifier(tiny_dir, seed=3), LoraMethod(dropout=0.0), {})
    randomize_lora_b(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name and "score" in name:
                p.add_(0.25)  # the trained head differs from the base's fresh one
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors").keys()
    assert any("score" in k for k in keys) and any("lora_A" in k for k in keys)
    batch = data.collate(data.encode(tokenizer, "mrpc", PAIRS, 384), tokenizer.pad_token_id)
    reloaded = PeftModel.from_pretrained(classifier(tiny_dir, seed=99), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)


def test_pick_device():
    assert loading.pick_device({"LORASCOPE_DEVICE": "cpu"}) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert loading.pick_device({}).type == expected
    with pytest.raises(ConfigError, match="LORASCOPE_DEVICE"):
        loading.pick_device({"LORASCOPE_DEVICE": "tpu-ish"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            loading.pick_device({"LORASCOPE_DEVICE": "cuda"})


def test_model_source_checks_names_without_loading(tiny_dir, tmp_path):
    assert hub.model_source("builtin:tiny-llama") == "builtin"
    assert hub.model_source(str(tiny_dir)) == "local"
    assert hub.model_source("TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T") == "hub"
    with pytest.raises(ConfigError, match="unknown builtin"):
        hub.model_source("builtin:giant")
    with pytest.raises(ConfigError, match="does not exist"):
        hub.model_source(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(ConfigError, match="no config.json"):
        hub.model_source(str(tmp_path))


def test_load_cell_model_for_lora_and_full_cells(tmp_path, tokenizer):
    """load_cell_model reads what the train phase commits: adapter/ (lora, head included) or model/ (full)."""
    from lorascope.log import Logger
    from lorascope.phases import PhaseContext, stage
    from lorascope.store import Store
    from lorascope.study import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "jobs" / "smoke.yaml")
    ctx = PhaseContext(study, Store.open(str(tmp_path / "store")), "r1", tmp_path / "work", {}, Logger())
    stage.run(ctx, 0)
    base_dir = ctx.stage_dir() / "model"
    batch = data.collate(data.encode(tokenizer, "mrpc", PAIRS, 384), tokenizer.pad_token_id)

    lora = methods.apply_method(classifier(base_dir, seed=4), LoraMethod(dropout=0.0), {})
    randomize_lora_b(lora)
    lora.eval()
    lora.save_pretrained(tmp_path / "lora-out" / "adapter")
    full = classifier(base_dir, seed=5)
    with torch.no_grad():
        full.model.layers[0].mlp.up_proj.weight.mul_(1.5)  # "trained" weights differ from the base
    full.save_pretrained(tmp_path / "full-out" / "model")
    for cell, out in (("mrpc-lora-s42", "lora-out"), ("mrpc-full-s42", "full-out")):
        with ctx.writer("cells", cell, phase="train") as w:
            w.add_dir(tmp_path / out)

    for cell, reference in (("mrpc-lora-s42", lora), ("mrpc-full-s42", full)):
        model, tok = artifacts.load_cell_model(ctx.cell_dir(cell), ctx.stage_dir() / "model", 2, "cpu", torch.float32)
        assert not model.training and tok.pad_token_id == 2
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="cells/rte-lora-s42 is not committed"):
        artifacts.load_cell_model(ctx.cell_dir("rte-lora-s42"), ctx.stage_dir() / "model", 2, "cpu", torch.float32)


# ------------------------------------------------------------------------------------------------ load report
def test_expected_load_report_is_silenced_and_a_real_mismatch_is_not(tiny_dir, tmp_path):
    """Loading the causal-LM checkpoint as a classifier always reports lm_head UNEXPECTED and score MISSING: not
    printed. A checkpoint with another unexpected tensor still gets transformers' full report."""
    import logging

    from safetensors.torch import load_file, save_file

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    hf = logging.getLogger("transformers")  # transformers' own handler may write to a stream pytest replaced
    hf.addHandler(handler)
    try:
        loading.load_classifier(tiny_dir, 2, torch.float32, "cpu")
        assert not any("LOAD REPORT" in m for m in seen)
        odd = tmp_path / "odd"
        shutil.copytree(tiny_dir, odd)
        weights = load_file(str(odd / "model.safetensors"))
        weights["model.bogus_extra.weight"] = torch.zeros(3)
        save_file(weights, str(odd / "model.safetensors"), metadata={"format": "pt"})
        loading.load_classifier(odd, 2, torch.float32, "cpu")
    finally:
        hf.removeHandler(handler)
    reports = [m for m in seen if "LOAD REPORT" in m]
    assert len(reports) == 1 and "model.bogus_extra.weight" in reports[0] and "lm_head.weight" in reports[0]
