"""The generation task type (E2E) on the tiny GPT-2: the prompt carries no loss (checked by value), references are
grouped per MR as the official script groups them (in evaluation, in the dev carve-out and in caps), greedy decoding
is the argmax loop, LoRA on GPT-2's Conv1D projections uses fan_in_fan_out (merging gives the same outputs), the weight
readers see Conv1D weights in nn.Linear's orientation, and GPT-2 is refused for classification at the door."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lorascope import data, preflight, tensorio
from lorascope.analysis import weights
from lorascope.errors import ConfigError
from lorascope.methods import apply_method
from lorascope.metrics import nlg
from lorascope.models import builtin, families
from lorascope.study import load_study
from lorascope.tasks import generation

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "jobs" / "smoke-generation.yaml"


@pytest.fixture(scope="module")
def study():
    return load_study(STUDY)


@pytest.fixture(scope="module")
def task(study):
    return study.task("e2e").spec


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return builtin.build_tiny("builtin:tiny-gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def tokenizer(gpt2_dir):
    from lorascope.models.loading import load_tokenizer

    tok = load_tokenizer(gpt2_dir)  # as the phases load it: pad = eos
    assert tok.pad_token_id == tok.eos_token_id == tok.bos_token_id == 1023
    return tok


def load(task, gpt2_dir):
    torch.manual_seed(0)
    return task.task_type.load_model(task, gpt2_dir, torch.float32, "cpu")


ROWS = [{"meaning_representation": "name[Tara], city[Porto]", "human_reference": "Tara lives in Porto.", "idx": 0},
        {"meaning_representation": "name[Ugo], pet[cat]", "human_reference": "Ugo has a cat.", "idx": 1},
        {"meaning_representation": "name[Tara], city[Porto]", "human_reference": "In Porto lives Tara, who is nice.",
         "idx": 2}]  # fmt: skip


def test_the_task_resolves_with_the_e2e_metrics_and_bleu_points(task):
    assert (task.type, task.primary_metric, task.metrics) == ("generation", "bleu", ("bleu", "nist", "rouge_l"))
    ttype = task.task_type
    assert (ttype.peft_task_type, ttype.encoders, ttype.bench) == ("CAUSAL_LM", False, "generation")
    assert ttype.gate(task).units == "BLEU points"  # H1a's margin is in BLEU points
    assert task.options.decoding == "greedy" and task.options.java_metrics is False


def test_encode_masks_every_prompt_position(task, tokenizer):
    f = task.task_type.encode(task, tokenizer, ROWS[:1], 96)[0]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    p = tokenizer("name[Tara], city[Porto]", add_special_tokens=False)["input_ids"]
    r = tokenizer("Tara lives in Porto.", add_special_tokens=False)["input_ids"]
    assert f["input_ids"] == [bos, *p, eos, *r, eos]
    assert f["labels"] == [-100] * (len(p) + 2) + [*r, eos]
    assert f["prompt_length"] == len(p) + 2
    ext = task.task_type.extraction_features(task, tokenizer, ROWS, 96)
    assert [e["idx"] for e in ext] == [0, 1]  # one per MR: its first row
    assert ext[0]["input_ids"] == [bos, *p, eos] and ext[0]["attention_mask"] == [1] * (len(p) + 2)


def test_loss_is_the_mean_cross_entropy_of_the_target_tokens_only(task, tokenizer, gpt2_dir):
    ttype = task.task_type
    model = load(task, gpt2_dir)
    feats = ttype.encode(task, tokenizer, ROWS, 96)
    batch = ttype.collate(task, feats, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected, count = 0.0, 0
    for i, f in enumerate(feats):
        logp = torch.log_softmax(logits[i].double(), dim=-1)
        for t in range(f["prompt_length"] - 1, len(f["input_ids"]) - 1):  # predicts input_ids[t + 1], a target token
            expected -= float(logp[t, f["input_ids"][t + 1]])
            count += 1
    assert count == sum(len(f["input_ids"]) - f["prompt_length"] for f in feats)
    got = float(ttype.loss(task, {"logits": logits}, batch["labels"]))
    assert got == pytest.approx(expected / count, rel=1e-5)
    # the logits at positions that predict a prompt token change nothing; one that predicts a target token does
    moved = logits.clone()
    moved[0, : feats[0]["prompt_length"] - 1] += torch.randn_like(moved[0, : feats[0]["prompt_length"] - 1]) * 5
    assert float(ttype.loss(task, {"logits": moved}, batch["labels"])) == pytest.approx(got, rel=1e-6)
    moved[0, feats[0]["prompt_length"] - 1] += torch.randn(logits.shape[-1]) * 5
    assert float(ttype.loss(task, {"logits": moved}, batch["labels"])) != pytest.approx(got, rel=1e-4)
    # the evaluation loss is the same number (no label smoothing), batch by batch in length order
    assert generation.target_loss(ttype, task, model, feats, 2, tokenizer.pad_token_id, False) == pytest.approx(
        expected / count, rel=1e-5)
    smoothed = generation.replace(task, options=task.options.model_copy(update={"label_smoothing": 0.1}))
    assert float(ttype.loss(smoothed, {"logits": logits}, batch["labels"])) > got  # smoothing in training only


def test_references_are_grouped_per_meaning_representation(task, tokenizer):
    feats = task.task_type.encode(task, tokenizer, ROWS, 96)
    groups = generation.group_features(feats)
    assert [(g["idx"], g["prompt"], g["references"]) for g in groups] == [
        (0, "name[Tara], city[Porto]", ["Tara lives in Porto.", "In Porto lives Tara, who is nice."]),
        (1, "name[Ugo], pet[cat]", ["Ugo has a cat."])]  # fmt: skip
    # the same grouping as metrics.nlg (the official script's read_and_group_tsv)
    assert list(nlg.group_references([r["meaning_representation"] for r in ROWS],
                                     [r["human_reference"] for r in ROWS]).values()) == [g["references"] for g in groups]  # fmt: skip


def test_dev_and_caps_keep_every_mr_with_all_its_references(task):
    rows = task.task_type.check_rows(task, [json.loads(x) for x in
                                            (generation.E2E_FIXTURES / "train.jsonl").read_text().splitlines()], "train")  # fmt: skip
    key = data.example_key(task)
    mrs = {r["meaning_representation"] for r in rows}
    train, dev = data.split_dev(rows, 0.1, 2000, 0, key)
    train_mrs, dev_mrs = {r["meaning_representation"] for r in train}, {r["meaning_representation"] for r in dev}
    assert not train_mrs & dev_mrs and train_mrs | dev_mrs == mrs
    assert len(dev_mrs) == data.dev_size(len(mrs), 0.1, 2000)  # sizes count MRs
    assert len(train) + len(dev) == len(rows)
    capped = data.subsample(train, 5, 0, key)
    kept = {r["meaning_representation"] for r in capped}
    assert len(kept) == 5 and len(capped) == sum(r["meaning_representation"] in kept for r in train)
    # classification keeps one row per example (no key): unchanged behaviour
    assert data.example_key(load_study(REPO / "jobs" / "smoke.yaml").task("mrpc").spec) is None


def test_greedy_decoding_is_the_argmax_loop_and_beam_search_runs(task, tokenizer, gpt2_dir):
    model = load(task, gpt2_dir)
    feats = task.task_type.extraction_features(task, tokenizer, ROWS, 96)
    prompts = [f["input_ids"] for f in feats]
    opts = task.options.model_copy(update={"max_new_tokens": 6})
    got = generation.decode(model, tokenizer, prompts, opts, batch_size=4)
    eos = tokenizer.eos_token_id
    for p, text in zip(prompts, got, strict=True):
        ids = list(p)
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
                if nxt == eos:
                    break
                new.append(nxt)
                ids.append(nxt)
        assert text == tokenizer.decode(new, skip_special_tokens=True).strip()
    beam = generation.decode(model, tokenizer, prompts, opts.model_copy(update={"decoding": "beam", "num_beams": 3}), 6)
    assert len(beam) == 2 and all(isinstance(b, str) for b in beam)


def test_lora_on_gpt2_wraps_the_conv1d_projections_with_fan_in_fan_out(study, task, gpt2_dir, tokenizer):
    from transformers.pytorch_utils import Conv1D

    model = load(task, gpt2_dir)
    assert families.resolve_targets(model, ["q", "v"]) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert families.resolve_targets(model, ["o"]) == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    assert families.fan_in_fan_out(model, ["transformer.h.0.attn.c_attn"]) is True
    peft_model = apply_method(model, study.method("lora"), task_type="CAUSAL_LM")
    assert peft_model.peft_config["default"].fan_in_fan_out is True
    layer = peft_model.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(layer.base_layer, Conv1D) and tuple(layer.lora_A["default"].weight.shape) == (4, 64)
    assert tuple(layer.lora_B["default"].weight.shape) == (192, 4)  # B A is out x in, nn.Linear's orientation
    torch.manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    ids = torch.tensor([task.task_type.extraction_features(task, tokenizer, ROWS, 96)[0]["input_ids"]])
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        base = peft_model.get_base_model()
        merged = peft_model.merge_and_unload()(input_ids=ids).logits
    assert not torch.allclose(adapted, load(task, gpt2_dir)(input_ids=ids).logits, atol=1e-3)  # the adapter acts
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)  # the merge (transposed by fan_in_fan_out) agrees
    assert base is not None


def test_weight_readers_see_conv1d_weights_in_linear_orientation(task, gpt2_dir):
    folder = tensorio.TensorFolder(Path(gpt2_dir), "model")
    model = load(task, gpt2_dir)
    name = "transformer.h.0.attn.c_attn.weight"
    assert folder.shape(name) == (192, 64)
    assert (folder.get(name) == model.transformer.h[0].attn.c_attn.weight.detach().double().numpy().T).all()
    assert folder.shape("transformer.wte.weight") == (1024, 64)  # an embedding: as stored
    assert weights.module_parts("transformer.h.1.mlp.c_proj.weight") == (1, "mlp.c_proj")
    assert weights.module_parts("transformer.h.1.attn.c_proj.weight") == (1, "attn.c_proj")


def test_gpt2_is_refused_for_classification_and_encoders_for_generation(study):
    smoke = load_study(REPO / "jobs" / "smoke.yaml")
    with pytest.raises(ConfigError, match=r"tasks.0.type: gpt2 cannot run a classification task \(mrpc\)"):
        preflight.check_family(smoke, families.family_for("gpt2"))
    preflight.check_family(study, families.family_for("gpt2"))  # generation on GPT-2: fine
    roberta = families.family_for("roberta")
    with pytest.raises(ConfigError, match=r"tasks.0.type: a generation task \(e2e\) runs on decoders only"):
        preflight.check_family(study.model_copy(update={"bench": study.bench.model_copy(update={"backends": ["hf"]})}),
                               roberta)  # fmt: skip


def test_the_lora_paper_e2e_study_carries_the_papers_settings():
    s = load_study(REPO / "jobs" / "lora-paper-e2e.yaml")
    spec = s.task("e2e").spec
    o = spec.options
    assert (o.decoding, o.num_beams, o.length_penalty, o.no_repeat_ngram_size, o.max_new_tokens) == ("beam", 10, 0.9, 4, 64)
    assert (o.label_smoothing, o.reported_split, spec.validation_splits) == (0.1, "test", ("test",))
    assert spec.metrics == generation.METRICS and spec.primary_metric == "bleu"
    lora = s.method("lora")
    assert (lora.r, lora.alpha, lora.dropout, list(lora.target_modules)) == (4, 32, 0.1, ["q", "v"])
    d = s.training.defaults["lora"]
    assert (d["learning_rate"], d["effective_batch"], d["epochs"]) == (2e-4, 8, 5)
    ref = s.report.reference
    assert ref.metric == "bleu" and ref.values == {"e2e": {"full": 68.2, "lora": 70.4}}


def test_bleu_from_summed_mr_statistics_is_the_corpus_bleu_and_bootstraps_over_mrs():
    from lorascope.analysis import text_bootstrap

    rows = [json.loads(x) for x in (generation.E2E_FIXTURES / "validation.jsonl").read_text().splitlines()]
    grouped = nlg.group_references([r["meaning_representation"] for r in rows], [r["human_reference"] for r in rows])
    refs = list(grouped.values())
    cases = {"copy": [generation.copy_values(m) for m in grouped],
             "first_ref": [r[0] for r in refs],
             "short": ["a parrot" if i % 2 else "lives" for i in range(len(refs))],  # no 4-gram matches: smoothing
             "mixed": [r[-1] if i % 3 else "nothing here" for i, r in enumerate(refs)]}  # fmt: skip
    for name, hyps in cases.items():
        stats = np.array(nlg.bleu_statistics(hyps, refs))
        assert stats.shape == (len(refs), 10)
        got = float(text_bootstrap.bleu_from_statistics(stats.sum(axis=0))[0])
        assert got == pytest.approx(nlg.bleu(hyps, refs) / 100.0, abs=1e-12), name
    boot = text_bootstrap.bleu_bootstrap({"a": np.array(nlg.bleu_statistics(cases["first_ref"], refs)),
                                          "b": np.array(nlg.bleu_statistics(cases["mixed"], refs))},
                                         {"copy": np.array(nlg.bleu_statistics(cases["copy"], refs)),
                                          "short": np.array(nlg.bleu_statistics(cases["short"], refs))}, n_boot=200)  # fmt: skip
    assert boot["full"]["a"] == pytest.approx(nlg.bleu(cases["first_ref"], refs) / 100.0, abs=1e-12)
    assert boot["baseline"] == pytest.approx(max(nlg.bleu(cases["copy"], refs), nlg.bleu(cases["short"], refs)) / 100.0,
                                             abs=1e-12)  # fmt: skip
    assert boot["boot"]["a"].shape == (200,) and boot["boot_baseline"].shape == (200,)
    assert np.all(boot["boot"]["a"] > boot["boot_baseline"])  # a reference always beats the trivial outputs


def test_loading_gpt2_as_a_classifier_is_refused(gpt2_dir):
    from lorascope.models import loading

    with pytest.raises(ConfigError, match="GPT-2 runs generation tasks only"):
        loading.load_classifier(gpt2_dir, 2, torch.float32, "cpu")
