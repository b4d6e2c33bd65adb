"""Model families for real: the tiny RoBERTa (encoder) and the tiny Qwen2 (a decoder with q/k/v biases) build from
shipped configs, load by family (tokenizer pad, classification position), encode pairs with the encoder's own
template, train with full fine-tuning and LoRA on roles resolved through lorascope.families, save, reload and
evaluate with the shared evaluation; the encoder classifies from the first token."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import set_seed

from lorascope import data, preflight, training
from lorascope.errors import ConfigError
from lorascope.log import Logger
from lorascope.models import builtin, families, hub, loading, pooling
from lorascope.phases import extract
from lorascope.study import load_study
from tests.fixtures.scripts import load_script

REPO = Path(__file__).resolve().parents[1]
SMOKE_ROBERTA = REPO / "jobs" / "smoke-roberta.yaml"
PAPER = REPO / "jobs" / "lora-paper-roberta.yaml"
ROBERTA_ASSETS = builtin.ASSETS / "tiny-roberta"
PAIR = {"sentence1": "the court in geneva delayed the deal on saturday .", "sentence2": "after months of talks , the court postponed it .",
        "label": 1, "idx": 7}  # fmt: skip


def _sha(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("families")
    return {name: builtin.build_tiny(f"builtin:{name}", root / name) for name in ("tiny-roberta", "tiny-qwen2", "tiny-phi3")}


@pytest.fixture(scope="module")
def smoke_roberta():
    return load_study(SMOKE_ROBERTA)


# ------------------------------------------------------------------------------------------------ the tokenizer
def test_shipped_roberta_tokenizer_has_robertas_specials_and_pair_template():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ROBERTA_ASSETS))
    assert [tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    assert len(tok) == json.loads((ROBERTA_ASSETS / "config.json").read_text())["vocab_size"] == 1024
    a = tok(PAIR["sentence1"], add_special_tokens=False)["input_ids"]
    b = tok(PAIR["sentence2"], add_special_tokens=False)["input_ids"]
    assert tok(PAIR["sentence1"], PAIR["sentence2"])["input_ids"] == [0, *a, 2, 2, *b, 2]  # <s> A </s></s> B </s>
    assert tok(PAIR["sentence1"])["input_ids"] == [0, *a, 2]
    assert tok.decode(a) == PAIR["sentence1"]  # byte-level BPE round-trips the text
    assert "geneva" in tok.convert_ids_to_tokens(a)[3].lstrip("Ġ")  # a fixture word is one token, not bytes


def test_shipped_roberta_tokenizer_is_the_scripts_output():
    mod = load_script("tools/make_tiny_roberta_tokenizer.py")
    assert (ROBERTA_ASSETS / "tokenizer.json").read_text() == mod.build()


# ------------------------------------------------------------------------------------------------ builtins
def test_tiny_builtins_are_deterministic_and_of_their_family(built, tmp_path):
    for name, folder in built.items():
        again = builtin.build_tiny(f"builtin:{name}", tmp_path / name)
        assert _sha(again) == _sha(folder)
        assert hub.model_source(f"builtin:{name}") == "builtin"
    assert loading.model_family(built["tiny-roberta"]).name == "roberta" and loading.model_family(built["tiny-roberta"]).encoder
    assert loading.model_family(built["tiny-qwen2"]).name == "llama" and not loading.model_family(built["tiny-qwen2"]).encoder
    fps = {n: builtin.builtin_fingerprint(n) for n in builtin.TINY_BUILTINS}
    assert loading.model_family(built["tiny-phi3"]).name == "phi3"
    assert len(set(fps.values())) == len(builtin.TINY_BUILTINS) == 5 and fps["builtin:tiny-llama"] == builtin.tiny_llama_fingerprint()
    cfg = json.loads((built["tiny-roberta"] / "config.json").read_text())
    assert cfg["architectures"] == ["RobertaForMaskedLM"]  # the hub roberta-base's checkpoint shape
    with pytest.raises(ConfigError, match="unknown builtin"):
        hub.model_source("builtin:tiny-gpt3")


def test_fetch_model_stages_a_builtin_roberta(tmp_path):
    info = hub.fetch_model("builtin:tiny-roberta", "builtin", tmp_path / "m")
    assert info["builtin_fingerprint"] == builtin.builtin_fingerprint("builtin:tiny-roberta")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}


# ------------------------------------------------------------------------------------------------ loading by family
def test_tokenizers_by_family(built):
    enc = loading.load_tokenizer(built["tiny-roberta"])
    assert enc.pad_token == "<pad>" and enc.pad_token_id == 1 and enc.padding_side == "right"
    dec = loading.load_tokenizer(built["tiny-qwen2"])
    assert dec.pad_token_id == dec.eos_token_id == 2 and dec.padding_side == "right"


def test_unsupported_architecture_is_a_config_error_naming_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "n_positions": 1024}))  # gpt2: supported (issue 23)
    for call in (loading.load_tokenizer, lambda d: loading.load_classifier(d, 2, torch.float32, "cpu")):
        with pytest.raises(ConfigError, match=r"model_type 'gpt_neox' is not a supported architecture.*'roberta'"):
            call(tmp_path)


def test_classifiers_by_family(built):
    torch.manual_seed(0)
    enc = loading.load_classifier(built["tiny-roberta"], 2, torch.float32, "cpu")
    assert type(enc).__name__ == "RobertaForSequenceClassification"
    assert not isinstance(enc, pooling.LastAttendedPooling) and enc.accepts_loss_kwargs is False
    dec = loading.load_classifier(built["tiny-qwen2"], 2, torch.float32, "cpu")
    assert isinstance(dec, pooling.LastAttendedPooling) and type(dec).__name__ == "Qwen2ForSequenceClassification"
    assert dec.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2: biases on q, k, v


def _encoder_pair(built):
    tok = loading.load_tokenizer(built["tiny-roberta"])
    torch.manual_seed(0)
    model = loading.load_classifier(built["tiny-roberta"], 2, torch.float32, "cpu").eval()
    return tok, model


def test_encoder_logits_do_not_depend_on_padding(built):
    tok, model = _encoder_pair(built)
    rows = [PAIR, {**PAIR, "sentence2": "no .", "idx": 8}]
    feats = data.encode(tok, "mrpc", rows, 64)
    with torch.no_grad():
        batched = model(**{k: v for k, v in data.collate(feats, tok.pad_token_id).items() if k != "labels"}).logits
        padded = model(**{k: v for k, v in data.collate(feats, tok.pad_token_id, pad_to=64).items() if k != "labels"}).logits
        alone = torch.cat([model(**{k: v for k, v in data.collate([f], tok.pad_token_id).items() if k != "labels"}).logits
                           for f in feats])  # fmt: skip
    assert len(feats[0]["input_ids"]) != len(feats[1]["input_ids"])  # the short one is padded in the batch
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_encoder_prediction_reads_the_first_token_state(built):
    """Perturb the encoder's output at the later positions: the logits stay; perturb position 0: they move."""
    tok, model = _encoder_pair(built)
    batch = {k: v for k, v in data.collate(data.encode(tok, "mrpc", [PAIR], 64), tok.pad_token_id).items() if k != "labels"}
    where: list[slice] = []

    def hook(module, args, output):
        if where:
            output.last_hidden_state[:, where[0]] += 5.0
        return output

    handle = model.roberta.register_forward_hook(hook)
    try:
        with torch.no_grad():
            ref = model(**batch).logits
            where[:] = [slice(1, None)]
            later = model(**batch).logits
            where[:] = [slice(0, 1)]
            first = model(**batch).logits
    finally:
        handle.remove()
    torch.testing.assert_close(later, ref, atol=0, rtol=0)
    assert (first - ref).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ encoder data
def test_encoder_pairs_use_the_template_and_keep_both_segments(built):
    tok = loading.load_tokenizer(built["tiny-roberta"])
    full = data.encode(tok, "mrpc", [PAIR], 384)[0]["input_ids"]
    a = tok(PAIR["sentence1"], add_special_tokens=False)["input_ids"]
    b = tok(PAIR["sentence2"], add_special_tokens=False)["input_ids"]
    assert full == [0, *a, 2, 2, *b, 2]
    short = data.encode(tok, "mrpc", [PAIR], 12)[0]
    ids = short["input_ids"]
    assert len(ids) == 12 and ids[0] == 0 and ids[-1] == 2 and short["attention_mask"] == [1] * 12
    sep = ids.index(2)
    assert ids[sep : sep + 2] == [2, 2] and sep - 1 >= 1 and len(ids) - sep - 3 >= 1  # both segments kept
    la, lb = data.truncate_pair(len(a), len(b), 12 - 4)
    assert ids == [0, *a[:la], 2, 2, *b[:lb], 2]  # longest-first, the decoders' rule
    single = data.encode(tok, "sst2", [{"sentence": PAIR["sentence1"], "label": 0, "idx": 1}], 5)[0]["input_ids"]
    assert single == [0, *a[:3], 2]
    with pytest.raises(ConfigError, match="too short"):
        data.encode(tok, "mrpc", [PAIR], 5)


def test_decoder_of_another_family_keeps_the_decoder_format(built):
    tok = loading.load_tokenizer(built["tiny-qwen2"])
    ids = data.encode(tok, "mrpc", [PAIR], 384)[0]["input_ids"]
    a = tok(PAIR["sentence1"], add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1 + len(a)] == tok.eos_token_id and ids[-1] != tok.eos_token_id


# ------------------------------------------------------------------------------------------------ train, save, reload
@pytest.mark.parametrize("name", ["tiny-roberta", "tiny-qwen2", "tiny-phi3"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_train_save_reload_evaluate(built, smoke_roberta, name, method, tmp_path):
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    model_dir = built[name]
    tok = loading.load_tokenizer(model_dir)
    splits, _ = data.prepare_task(smoke_roberta, "sst2")
    train = data.encode(tok, "sst2", splits["train"][:64], 64)
    val = data.encode(tok, "sst2", splits["validation"][:48], 64)
    set_seed(0)
    model = loading.load_classifier(model_dir, 2, torch.float32, "cpu")
    if method == "lora":
        targets = families.resolve_targets(model, ["q", "v"], "methods.1.target_modules")
        fam = families.family_of(model)
        assert families.target_roles(model, targets) == sorted({fam.roles["q"], fam.roles["v"]})
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=targets))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    plan = training.Plan(learning_rate=3e-3, effective_batch=16, epochs=1, seed=0, max_steps=4, evaluate=False, logging_steps=1)
    result = training.fit(model, train, None, training=smoke_roberta.training, plan=plan, pad_id=int(tok.pad_token_id),
                          output_dir=tmp_path / "out", device=torch.device("cpu"), log=Logger())  # fmt: skip
    assert result.global_step == 4
    trained = result.model
    if method == "lora":  # the adapter learned (B starts at zero) and the head is saved with it
        moved = [n for n, p in trained.named_parameters() if "lora_B" in n and not torch.equal(p, before[n])]
        assert moved
    ours = training.evaluate_features(trained, val, 16, int(tok.pad_token_id))
    trained.save_pretrained(str(tmp_path / "saved"))
    if method == "lora":
        base = loading.load_classifier(model_dir, 2, torch.float32, "cpu")
        reloaded = PeftModel.from_pretrained(base, str(tmp_path / "saved"))
    else:
        reloaded = loading.load_classifier(tmp_path / "saved", 2, torch.float32, "cpu")
    reloaded.eval()
    again = training.evaluate_features(reloaded, val, 16, int(tok.pad_token_id))
    assert again.n == ours.n == 48
    assert again.accuracy == ours.accuracy and again.loss == pytest.approx(ours.loss, abs=1e-5)
    assert [p["pred"] for p in again.predictions] == [p["pred"] for p in ours.predictions]


def test_roles_resolve_to_each_familys_modules(built):
    enc = loading.load_classifier(built["tiny-roberta"], 2, torch.float32, "cpu")
    assert families.resolve_targets(enc, ["q", "v"]) == [
        f"roberta.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]  # fmt: skip
    dec = loading.load_classifier(built["tiny-qwen2"], 2, torch.float32, "cpu")
    assert families.resolve_targets(dec, ["q", "v"]) == [
        f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")]  # fmt: skip
    phi = loading.load_classifier(built["tiny-phi3"], 2, torch.float32, "cpu")
    assert isinstance(phi, pooling.LastAttendedPooling)
    assert families.resolve_targets(phi, ["q", "v"]) == [f"model.layers.{i}.self_attn.qkv_proj" for i in (0, 1)]  # fused


# ------------------------------------------------------------------------------------------------ extraction
def test_encoder_extraction_pools_first_and_mean(built):
    tok, model = _encoder_pair(built)
    rows = [PAIR, {**PAIR, "sentence1": "a quiet film .", "idx": 9}, {**PAIR, "sentence2": "the talks ended .", "idx": 10}]
    feats = data.encode(tok, "mrpc", rows, 64)
    first, mean = extract.pooled_states(model, feats, 2, tok.pad_token_id, "cpu", poolings=("first", "mean"))
    assert first.shape == mean.shape == (3, 3, 64)  # embeddings + 2 blocks, 3 examples, hidden 64
    assert extract.layer_labels(first.shape[0], encoder=True) == ["embeddings", "layer_1", "layer_2"]
    for i, f in enumerate(feats):
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([f["input_ids"]]), output_hidden_states=True).hidden_states
        for layer in range(3):
            torch.testing.assert_close(first[layer, i], hs[layer][0, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(mean[layer, i], hs[layer][0, 1:].mean(0), atol=1e-5, rtol=0)  # <s> left out
    # <s> at position 0 is the same embedding for every input: a constant representation at the embedding entry
    torch.testing.assert_close(first[0, 0], first[0, 1], atol=1e-6, rtol=0)
    assert (first[2, 0] - first[2, 1]).abs().max() > 1e-4  # ... but not after attention
    padded = extract.pooled_states(model, feats, 3, tok.pad_token_id, "cpu", pad_to=64, poolings=("first", "mean"))
    torch.testing.assert_close(padded[0], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1], mean, atol=1e-5, rtol=0)


def test_stored_poolings_by_family(smoke_roberta):
    assert extract.stored_poolings(smoke_roberta, encoder=True) == ["mean", "first"]
    assert extract.stored_poolings(smoke_roberta, encoder=False) == ["mean", "last", "first"]


# ------------------------------------------------------------------------------------------------ preflight
def test_preflight_pooling_and_bench_by_family(smoke_roberta):
    assert preflight.check_study(smoke_roberta, env={}) == []
    enc, dec = families.family_for("roberta"), families.family_for("qwen2")
    with pytest.raises(ConfigError, match=r"field extraction.pooling: 'first' is for encoders.*BOS"):
        preflight.check_family(smoke_roberta, dec)
    vllm = smoke_roberta.model_copy(update={"bench": smoke_roberta.bench.model_copy(update={"backends": ["hf", "vllm"]})})
    with pytest.raises(ConfigError, match=r"field bench.backends: the vllm bench serves decoders only"):
        preflight.check_family(vllm, enc)
    last = smoke_roberta.model_copy(update={"extraction": smoke_roberta.extraction.model_copy(update={"pooling": ["last"]})})
    preflight.check_family(last, enc)  # allowed: an encoder's final </s> state depends on the input
    qwen = smoke_roberta.model_copy(update={"model": smoke_roberta.model.model_copy(update={"name": "builtin:tiny-qwen2"})})
    with pytest.raises(ConfigError, match=r"extraction.pooling: 'first' is for encoders"):
        preflight.check_study(qwen, env={})


def test_preflight_refuses_an_unsupported_local_model(tmp_path, smoke_roberta):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    study = smoke_roberta.model_copy(update={"model": smoke_roberta.model.model_copy(update={"name": str(tmp_path)})})
    with pytest.raises(ConfigError, match=r"field model.name: .*'gpt_neox' is not a supported architecture"):
        preflight.check_study(study, env={})


def test_bert_style_segment_embeddings_are_refused(tmp_path, smoke_roberta):
    cfg = {**json.loads((ROBERTA_ASSETS / "config.json").read_text()), "model_type": "bert", "type_vocab_size": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    study = smoke_roberta.model_copy(update={"model": smoke_roberta.model.model_copy(update={"name": str(tmp_path)})})
    with pytest.raises(ConfigError, match=r"field model.name: .*type_vocab_size 2 needs token_type_ids"):
        preflight.check_study(study, env={})
    with pytest.raises(ConfigError, match=r"type_vocab_size 2 needs token_type_ids"):
        loading.load_classifier(tmp_path, 2, torch.float32, "cpu")


def test_preflight_roberta_positions_hold_512_tokens(tmp_path, smoke_roberta):
    cfg = json.loads((ROBERTA_ASSETS / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = smoke_roberta.model.model_copy(update={"name": str(tmp_path)})
    ok = smoke_roberta.model_copy(update={"model": model, "tasks": [t.model_copy(update={"max_length": 512}) for t in smoke_roberta.tasks]})
    preflight.check_study(ok, env={})
    long = ok.model_copy(update={"tasks": [t.model_copy(update={"max_length": 513}) for t in ok.tasks]})
    with pytest.raises(ConfigError, match=r"field tasks.0.max_length: 513 exceeds the model's max_position_embeddings 512"):
        preflight.check_study(long, env={})


# ------------------------------------------------------------------------------------------------ the paper study
def test_lora_paper_roberta_validates_and_lists_the_eight_glue_tasks_48_cells():
    study = load_study(PAPER)
    assert preflight.check_study(study, env={"HF_HUB_OFFLINE": "1"}) == [
        "model checks skipped (model 'FacebookAI/roberta-base'@main is not in the local HF cache and HF_HUB_OFFLINE "
        "is set); the stage phase makes them after fetching the model"]  # fmt: skip
    names = [c.name for c in study.cells()]
    assert len(names) == 48  # the paper's eight GLUE tasks (issue 23), 2 methods, 3 seeds
    assert names[:6] == [f"mrpc-{m}-s{s}" for m in ("full", "lora") for s in (0, 1, 2)]
    assert names[-1] == "stsb-lora-s2"
    assert {n.split("-")[0] for n in names} == {"mrpc", "sst2", "rte", "mnli", "cola", "qnli", "qqp", "stsb"}
    lora = study.method("lora")
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (8, 8, 0.0, ["query", "value"])
    want = {"mrpc": (4e-4, 16, 30), "sst2": (5e-4, 16, 60), "rte": (5e-4, 32, 80), "mnli": (5e-4, 16, 30),
            "cola": (4e-4, 32, 80), "qnli": (4e-4, 32, 25), "qqp": (5e-4, 16, 25), "stsb": (4e-4, 16, 40)}  # Table 9
    metric = {"cola": "matthews_correlation", "stsb": "pearson"}  # the others: accuracy, as the paper prints them
    for task, (lr, batch, epochs) in want.items():
        p = training.resolve_params(study, "lora", task=task)
        assert (p["learning_rate"], p["effective_batch"], p["epochs"], p["warmup_ratio"]) == (lr, batch, epochs, 0.06)
        assert study.task(task).max_length == 512 and study.task(task).selection_metric == metric.get(task, "accuracy")
        assert study.report.reference.metric_of(task) == metric.get(task, "accuracy")
    assert study.task("stsb").spec.num_labels == 1 and study.task("mnli").spec.extra_validation_splits == (
        "validation_mismatched",)
    full = training.resolve_params(study, "full", task="rte")
    assert (full["learning_rate"], full["effective_batch"], full["epochs"]) == (2e-5, 16, 10)
    assert study.training.lr_scheduler == "linear" and study.extraction.pooling == ["mean", "first"]
    assert study.bench.backends == ["hf"]


def test_task_defaults_are_validated_like_training_defaults():
    import yaml

    from lorascope.study import parse_study

    base = yaml.safe_load(SMOKE_ROBERTA.read_text())

    def with_tasks(**over):
        d = json.loads(json.dumps(base))
        d["tasks"][0].update(over)
        return yaml.safe_dump(d)

    with pytest.raises(ConfigError, match=r"tasks.0.defaults: unknown method\(s\) \['dora'\]"):
        parse_study(with_tasks(defaults={"dora": {"epochs": 1}}))
    with pytest.raises(ConfigError, match=r"tasks.0.defaults.lora.warmup_ratio: warmup_ratio=1.5 must be in \[0, 1\)"):
        parse_study(with_tasks(defaults={"lora": {"warmup_ratio": 1.5}}))
    with pytest.raises(ConfigError, match=r"tasks.0.defaults.lora: unknown parameter\(s\) \['lr'\]"):
        parse_study(with_tasks(defaults={"lora": {"lr": 1.0}}))
    # a required parameter may come from the task alone, but then every task must give it
    d = json.loads(json.dumps(base))
    d["training"]["defaults"]["lora"].pop("epochs")
    d["tasks"][0]["defaults"] = {"lora": {"epochs": 3}}
    with pytest.raises(ConfigError, match=r"method 'lora': no value for \['epochs'\] \(task mrpc\)"):
        parse_study(yaml.safe_dump(d))
    d["tasks"][1]["defaults"] = {"lora": {"epochs": 5}}
    study = parse_study(yaml.safe_dump(d))
    assert [training.resolve_params(study, "lora", task=t)["epochs"] for t in ("sst2", "mrpc")] == [3, 5]
    assert training.resolve_params(study, "lora", {"epochs": 7}, task="sst2")["epochs"] == 7  # HPO's pick wins


def test_cli_validates_and_lists_the_paper_grid_offline(capsys, monkeypatch):
    from lorascope import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["validate", str(PAPER)]) == 0
    out = capsys.readouterr()
    assert "cells=48" in out.out and "model checks skipped" in out.out + out.err
    assert cli.main(["grid", str(PAPER)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["0", "mrpc", "full", "0", "mrpc-full-s0"]
    assert lines[18].split() == ["17", "rte", "lora", "2", "rte-lora-s2"]
    assert lines[48].split() == ["47", "stsb", "lora", "2", "stsb-lora-s2"] and "48 cells" in lines[49]
