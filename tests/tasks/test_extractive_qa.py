"""The extractive QA task type (SQuAD v2): windows with a stride and their character offsets (a hand-checked case),
the backbone-loading trap, and a decoder and an encoder trained, saved, reloaded and evaluated with the same code on
the bundled SQuAD-v2-format fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, LlamaForQuestionAnswering, set_seed

from lorascope import tasks, training
from lorascope.errors import ConfigError
from lorascope.log import Logger
from lorascope.metrics import squad_v2
from lorascope.models import builtin, loading
from lorascope.study import load_study
from lorascope.tasks import extractive_qa as qa

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "pkg" / "lorascope" / "assets" / "squad_v2"


def qa_task(max_length: int, **options):
    """squad_v2 as a study entry naming `max_length` and `options` resolves it."""

    class Entry:
        name, type, metric, source, columns, labels = "squad-v2", "extractive_qa", None, None, None, None

    entry = Entry()
    entry.max_length, entry.options = max_length, options
    return tasks.resolve(entry, "tasks.0")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qa")
    return {name: builtin.build_tiny(f"builtin:tiny-{name}", root / name) for name in ("llama", "roberta")}


@pytest.fixture(scope="module")
def rows():
    spec = tasks.known_task("squad-v2")
    read = lambda split: [json.loads(x) for x in (FIXTURE / f"{split}.jsonl").read_text().splitlines()]  # noqa: E731
    return {s: spec.task_type.check_rows(spec, read(s), f"squad-v2/{s}.jsonl") for s in ("train", "validation")}


def test_squad_v2_resolves_as_extractive_qa():
    spec = tasks.known_task("squad-v2")
    t = spec.task_type
    assert (spec.type, t.peft_task_type, t.encoders, t.bench, t.vllm_servable) == ("extractive_qa", "QUESTION_ANS", True, None, False)
    assert spec.primary_metric == "f1" and spec.metrics[:2] == ("f1", "exact")
    assert t.units("f1") == "F1 points" and t.head_size(spec) == 2
    assert t.local_files(spec, None) == {s: FIXTURE / f"{s}.jsonl" for s in ("train", "validation")}


def test_options_are_checked_at_the_door():
    class Entry:
        name, type, max_length, metric, source, columns, labels = "squad-v2", "extractive_qa", 64, None, None, None, None
        options = {"stride": 60}

    with pytest.raises(ConfigError, match="options: max_question_tokens 64 \\+ stride 60"):
        tasks.resolve(Entry(), "tasks.1")
    Entry.options = {"strid": 8}
    with pytest.raises(ConfigError, match="tasks.1.options"):
        tasks.resolve(Entry(), "tasks.1")


def test_rows_are_checked_at_the_door():
    spec = tasks.known_task("squad-v2")
    good = {"id": "a", "question": "who", "context": "Ann lives here", "answers": {"text": ["Ann"], "answer_start": [0]}}
    assert spec.task_type.check_rows(spec, [good], "f")[0]["idx"] == 0
    bad = {**good, "answers": {"text": ["Ann"], "answer_start": [1]}}
    with pytest.raises(ConfigError, match="f: row 0: answer 'Ann' is not the context's text at offset 1"):
        spec.task_type.check_rows(spec, [bad], "f")
    with pytest.raises(ConfigError, match="f: no rows"):
        spec.task_type.check_rows(spec, [], "f")
    with pytest.raises(ConfigError, match="id 'a' appears twice"):
        spec.task_type.check_rows(spec, [good, good], "f")


# ------------------------------------------------------------------------------------------------ windows, by hand
CONTEXT = "In Milan, Victor works as a farmer and owns a goat."


def test_windows_with_a_stride_by_hand(models):
    """The tiny Llama's word-level tokenizer: the context is 13 tokens (in milan , victor works as a farmer and owns a
    goat .), the question 4 (who owns a goat). max_length 13 leaves 13 - 4 - 3 = 6 context tokens per window; stride 2
    starts the windows at context tokens 0, 4 and 8. "a goat" is characters 44..50: only the third window holds it, at
    positions 6 + 2 = 8 and 9 (BOS, 4 question tokens, EOS come first); the others point at their no-answer token, the
    closing EOS, the last position."""
    tok = loading.load_tokenizer(models["llama"])
    assert CONTEXT[44:50] == "a goat"
    ws = qa.windows(tok, "who owns a goat", CONTEXT, max_length=13, stride=2, max_question_tokens=64)
    words = [[CONTEXT[o[0] : o[1]].lower() for o in w.offsets if o is not None] for w in ws]
    assert words == [["in", "milan", ",", "victor", "works", "as"], ["works", "as", "a", "farmer", "and", "owns"],
                     ["and", "owns", "a", "goat", "."]]  # fmt: skip
    assert [len(w.input_ids) for w in ws] == [13, 13, 12] and [w.null_pos for w in ws] == [12, 12, 11]
    assert all(w.input_ids[0] == tok.bos_token_id and w.input_ids[5] == w.input_ids[-1] == tok.eos_token_id for w in ws)
    assert ws[2].pool_mask == [0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0]
    assert [qa.answer_tokens(w.offsets, 44, 50) for w in ws] == [None, None, (8, 9)]
    spec = qa_task(13, stride=2, max_question_tokens=4)
    row = {"id": "q", "question": "who owns a goat", "context": CONTEXT, "idx": 7,
           "answers": {"text": ["a goat"], "answer_start": [44]}}  # fmt: skip
    feats = spec.task_type.encode(spec, tok, [row], 13)
    assert [f["labels"] for f in feats] == [[12, 12], [12, 12], [8, 9]] and {f["idx"] for f in feats} == {7}


class SpanScorer(torch.nn.Module):
    """A stand-in QA model: start logit 3 on token `a`, end logit 2 on `goat` and 1 on `farmer`, 0 elsewhere; the
    no-answer position of every window gets `null` on both."""

    def __init__(self, tok, null: float) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.a, self.goat, self.farmer = (tok.convert_tokens_to_ids(t) for t in ("a", "goat", "farmer"))
        self.null = null

    def forward(self, input_ids, attention_mask):
        start = 3.0 * (input_ids == self.a).float()
        end = 2.0 * (input_ids == self.goat).float() + 1.0 * (input_ids == self.farmer).float()
        last = attention_mask.sum(1) - 1
        rows = torch.arange(input_ids.shape[0])
        start[rows, last] = end[rows, last] = self.null
        return {"start_logits": start, "end_logits": end}


def test_best_span_over_windows_maps_back_to_characters(models):
    """Window 2 offers "a farmer" (3 + 1), window 3 "a goat" (3 + 2): the best over windows is "a goat", the context's
    characters 44..50. Its no-answer probability is sigmoid(null - 5) with null = 2 * null logit: 0.5 at null logit 2.5;
    at null logit 3 the model abstains (prob > 0.5) and scores the answerable question 0."""
    tok = loading.load_tokenizer(models["llama"])
    spec = qa_task(13, stride=2, max_question_tokens=4, max_answer_tokens=3)
    row = {"id": "q", "question": "who owns a goat", "context": CONTEXT, "idx": 0,
           "answers": {"text": ["a goat"], "answer_start": [44]}}  # fmt: skip
    feats = spec.task_type.encode(spec, tok, [row], 13)
    r = spec.task_type.evaluate(spec, SpanScorer(tok, 1.0), feats, batch_size=2, pad_id=tok.pad_token_id)
    (p,) = r.predictions
    assert (p["text"], p["pred"]) == ("a goat", "a goat")
    assert p["no_answer_prob"] == pytest.approx(1 / (1 + math.exp(3)))  # sigmoid(2 - 5)
    assert (r.f1, r.exact, r.HasAns_f1) == (1.0, 1.0, 1.0)
    half = spec.task_type.evaluate(spec, SpanScorer(tok, 2.5), feats, batch_size=2, pad_id=tok.pad_token_id)
    assert half.predictions[0]["no_answer_prob"] == pytest.approx(0.5) and half.f1 == 1.0
    abstains = spec.task_type.evaluate(spec, SpanScorer(tok, 3.0), feats, batch_size=2, pad_id=tok.pad_token_id)
    assert abstains.predictions[0]["pred"] == "" and abstains.f1 == 0.0


@pytest.mark.parametrize("family", ["llama", "roberta"])
def test_every_fixture_answer_maps_back_to_its_text(models, rows, family):
    """Every window of every fixture question (max_length 48, stride 8: most contexts take two or three windows)
    whose labels point at a span gives back exactly the gold answer's characters; questions whose answer some
    window holds: all answerable ones."""
    tok = loading.load_tokenizer(models[family])
    spec = qa_task(48, stride=8, max_question_tokens=16)
    feats = spec.task_type.encode(spec, tok, rows["validation"], 48)
    by_id = {r["id"]: r for r in rows["validation"]}
    assert len(feats) > 1.5 * len(rows["validation"])
    found = set()
    for f in feats:
        assert len(f["input_ids"]) <= 48 and len(f["offsets"]) == len(f["input_ids"]) == len(f["pool_mask"])
        s, e = f["labels"]
        if s != f["null_pos"]:
            answer = by_id[f["id"]]["answers"]["text"][0]
            assert f["context"][f["offsets"][s][0] : f["offsets"][e][1]] == answer
            found.add(f["id"])
        else:
            assert e == f["null_pos"]
    assert found == {r["id"] for r in rows["validation"] if r["answers"]["text"]}


# ------------------------------------------------------------------------------------------------ the trap
def _hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", ["llama", "roberta"])
def test_the_qa_model_keeps_the_pretrained_backbone(models, family):
    """The QA model's backbone computes the base checkpoint's hidden states, at every layer. For the Llama it is
    also checked that the trap is real: `LlamaForQuestionAnswering.from_pretrained` on the causal-LM checkpoint
    does not (its backbone is random)."""
    model_dir = models[family]
    ids = torch.tensor([[0, 5, 17, 42, 99, 7, 2]])
    base = (AutoModelForCausalLM if family == "llama" else AutoModelForMaskedLM).from_pretrained(str(model_dir)).eval()
    want = _hidden(base, ids)
    set_seed(0)
    model = qa.load_qa_model(model_dir, torch.float32, "cpu").eval()
    got = _hidden(getattr(model, model.base_model_prefix), ids)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    if family == "llama":
        assert model.base_model_prefix == "transformer"
        naive = LlamaForQuestionAnswering.from_pretrained(str(model_dir)).eval()
        assert not torch.allclose(_hidden(naive.transformer, ids)[-1], want[-1], atol=1e-3)


# ------------------------------------------------------------------------------------------------ train, save, reload, evaluate
@pytest.mark.parametrize("family", ["llama", "roberta"])
def test_train_save_reload_evaluate(models, rows, family, tmp_path):
    """The same code for a decoder and an encoder: 4 epochs of full fine-tuning on 160 fixture questions (windows of
    64 tokens, stride 16), the training loss falls; the model is saved, reloaded through the type's `load_model` (the
    saved QA model, every weight) and evaluates exactly as before saving; the reported numbers use the no-answer
    threshold chosen on dev (`reported_eval`), and every number is the official SQuAD v2 scoring of the
    predictions."""
    study = load_study(REPO / "jobs" / "smoke.yaml")
    model_dir = models[family]
    tok = loading.load_tokenizer(model_dir)
    spec = qa_task(64, stride=16, max_question_tokens=16)
    t = spec.task_type
    train = t.encode(spec, tok, rows["train"][:160], 64)
    dev = t.encode(spec, tok, rows["train"][400:480], 64)
    val = t.encode(spec, tok, rows["validation"][:80], 64)
    assert len(train) > 160  # long contexts take two windows
    set_seed(0)
    model = t.load_model(spec, model_dir, torch.float32, "cpu")
    cfg = study.training.model_copy(update={"micro_batch": 16})
    plan = training.Plan(learning_rate=2e-3, effective_batch=16, epochs=4, seed=0, lr_scheduler="constant", evaluate=False)
    result = training.fit(model, train, None, training=cfg, plan=plan, pad_id=tok.pad_token_id, output_dir=tmp_path / "run",
                          device=torch.device("cpu"), log=Logger(), task=spec, tokenizer=tok)  # fmt: skip
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    before = t.evaluate(spec, result.model, val, batch_size=16, pad_id=tok.pad_token_id)
    result.model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"][0].endswith("ForQuestionAnswering")
    reloaded = t.load_model(spec, tmp_path / "saved", torch.float32, "cpu")
    after = t.evaluate(spec, reloaded, val, batch_size=16, pad_id=tok.pad_token_id)
    assert after.predictions == before.predictions and after.values == before.values
    assert after.loss == pytest.approx(before.loss, rel=1e-9) and after.n == 80
    gold = {p["id"]: p["gold"] for p in after.predictions}
    official = squad_v2.evaluate(gold, {p["id"]: p["pred"] for p in after.predictions})
    assert after.f1 == pytest.approx(official["f1"] / 100) and after.exact == pytest.approx(official["exact"] / 100)
    assert after.NoAns_f1 == pytest.approx(official["NoAns_f1"] / 100)
    dev_eval = t.evaluate(spec, reloaded, dev, batch_size=16, pad_id=tok.pad_token_id)
    reported = t.reported_eval(spec, dev_eval, after)
    thr = reported.threshold
    chosen = squad_v2.find_best_threshold({p["id"]: p["text"] for p in dev_eval.predictions},
                                          squad_v2.raw_scores({p["id"]: p["gold"] for p in dev_eval.predictions},
                                                              {p["id"]: p["text"] for p in dev_eval.predictions})[1],
                                          {p["id"]: p["no_answer_prob"] for p in dev_eval.predictions},
                                          {p["id"]: bool(p["gold"]) for p in dev_eval.predictions})  # fmt: skip
    assert (reported.dev_best_f1, thr) == (pytest.approx(chosen[0] / 100), chosen[1])
    at_thr = squad_v2.evaluate(gold, {p["id"]: p["pred"] for p in reported.predictions})
    assert reported.f1 == pytest.approx(at_thr["f1"] / 100) and reported.primary_value == reported.f1
    print(f"\n{family}: losses {losses[0]:.3f} -> {losses[-1]:.3f}; validation (own decision) {after.metrics()}; "
          f"dev threshold {thr:.4f}: f1 {reported.f1:.4f} HasAns {reported.HasAns_f1:.4f} NoAns {reported.NoAns_f1:.4f}")


@pytest.mark.parametrize("family", ["llama", "roberta"])
def test_a_lora_cell_saves_and_reloads_its_span_head(models, rows, family, tmp_path):
    """LoRA through PEFT's QUESTION_ANS task type, the cell path of the train and extract phases: `apply_method`
    trains the adapter and the span head (`qa_outputs` in modules_to_save), `save_cell_artifact` writes `adapter/`,
    `load_cell_model` with the type's `load_model` rebuilds it on the base and evaluates exactly as the trained model.
    The head moved from its initialisation (it trained) and the reloaded cell has the trained head, not a fresh one."""
    from lorascope import methods
    from lorascope.models import artifacts

    study = load_study(REPO / "jobs" / "smoke.yaml")
    lora = next(m for m in study.methods if m.kind == "lora")
    if family == "roberta":
        lora = lora.model_copy(update={"target_modules": ["q", "v"]})
    model_dir = models[family]
    tok = loading.load_tokenizer(model_dir)
    spec = qa_task(64, stride=16, max_question_tokens=16)
    t = spec.task_type
    train = t.encode(spec, tok, rows["train"][:64], 64)
    val = t.encode(spec, tok, rows["validation"][:40], 64)
    set_seed(0)
    model = t.load_model(spec, model_dir, torch.float32, "cpu")
    head0 = model.qa_outputs.weight.detach().clone()
    model = methods.apply_method(model, lora, {}, task_type=t.peft_task_type)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("qa_outputs" in n for n in trainable) and any("lora_A" in n for n in trainable)
    plan = training.Plan(learning_rate=5e-3, effective_batch=16, epochs=1, seed=0, lr_scheduler="constant", evaluate=False)
    result = training.fit(model, train, None, training=study.training, plan=plan, pad_id=tok.pad_token_id,
                          output_dir=tmp_path / "run", device=torch.device("cpu"), log=Logger(), task=spec)  # fmt: skip
    before = t.evaluate(spec, result.model, val, batch_size=16, pad_id=tok.pad_token_id)
    folder = methods.save_cell_artifact(result.model, lora, tmp_path / "cell")
    assert folder.name == "adapter" and (folder / "adapter_config.json").is_file()
    assert json.loads((folder / "adapter_config.json").read_text())["task_type"] == "QUESTION_ANS"
    set_seed(123)  # a different fresh head: the adapter's must replace it
    cell, _ = artifacts.load_cell_model(tmp_path / "cell", model_dir, 0, "cpu", torch.float32,
                                        load=lambda d, dt, dev: t.load_model(spec, d, dt, dev))  # fmt: skip
    after = t.evaluate(spec, cell, val, batch_size=16, pad_id=tok.pad_token_id)
    assert after.predictions == before.predictions and after.values == before.values
    trained_head = dict(result.model.named_parameters())
    head = next(v for k, v in trained_head.items() if "qa_outputs" in k and "weight" in k and "modules_to_save" in k)
    assert not torch.equal(head.detach(), head0)


@pytest.mark.parametrize("family", ["llama", "roberta"])
def test_head_only_methods_train_the_span_head(models, family):
    """Methods that train only some parameters plus the head (BitFit's norm-only, top-k layers) find `qa_outputs` as
    the head (families' `head`), so the span head trains under every method."""
    from lorascope import methods
    from lorascope.models import families

    study = load_study(REPO / "jobs" / "smoke-methods.yaml")
    spec = qa_task(384)
    set_seed(0)
    model = spec.task_type.load_model(spec, models[family], torch.float32, "cpu")
    assert families.parameter_groups(model)["head"] == ["qa_outputs.weight", "qa_outputs.bias"]
    for name in ("norm-only", "top1"):
        m = methods.apply_method(spec.task_type.load_model(spec, models[family], torch.float32, "cpu"),
                                 study.method(name), {}, task_type=spec.task_type.peft_task_type)  # fmt: skip
        trainable = {n for n, p in m.named_parameters() if p.requires_grad}
        assert {"qa_outputs.weight", "qa_outputs.bias"} <= trainable, name
    del model


def test_the_training_loss_is_the_mean_over_windows_that_evaluate_reports(models, rows, tmp_path):
    """One step at learning rate 0 over 16 windows as 4 micro-batches of 4 (gradient accumulation): the Trainer's
    logged loss (the type's `loss`: padding masked, divided by the windows of the accumulated batch) equals
    `evaluate`'s mean over the same windows of (CE(start) + CE(end)) / 2. Unmasked padding (3.98 here) or a count of
    label entries instead of windows would log another number."""
    study = load_study(REPO / "jobs" / "smoke.yaml")
    tok = loading.load_tokenizer(models["llama"])
    spec = qa_task(64, stride=16, max_question_tokens=16)
    feats = spec.task_type.encode(spec, tok, rows["train"][:12], 64)[:16]
    assert len(feats) == 16
    set_seed(0)
    model = spec.task_type.load_model(spec, models["llama"], torch.float32, "cpu")
    want = spec.task_type.evaluate(spec, model, feats, batch_size=16, pad_id=tok.pad_token_id).loss
    plan = training.Plan(learning_rate=0.0, effective_batch=16, epochs=1, seed=0, lr_scheduler="constant", max_steps=1,
                         evaluate=False)  # fmt: skip
    cfg = study.training.model_copy(update={"micro_batch": 4})
    result = training.fit(model, feats, None, training=cfg, plan=plan, pad_id=tok.pad_token_id, output_dir=tmp_path,
                          device=torch.device("cpu"), log=Logger(), task=spec)  # fmt: skip
    assert result.schedule["grad_accum"] == 4
    logged = next(e["loss"] for e in result.log_history if "loss" in e)
    assert logged == pytest.approx(want, rel=1e-4)


def test_the_proposal_study_file():
    """jobs/proposal.yaml: MRPC and SQuAD v2 on TinyLlama, LoRA r=8 vs full, 1000 validation examples for drift; its
    bench plans build for both backends (they serve MRPC: span heads have no bench)."""
    from lorascope.serving.plan import BenchPlan

    study = load_study(REPO / "jobs" / "proposal.yaml")
    assert study.model.name.startswith("TinyLlama/") and study.extraction.examples == 1000
    assert [(t.name, t.spec.type, t.selection_metric) for t in study.tasks] == [
        ("mrpc", "classification", "f1"), ("squad-v2", "extractive_qa", "f1")]  # fmt: skip
    lora = study.method("lora")
    assert (lora.kind, lora.r) == ("lora", 8) and study.method("full").kind == "full"
    assert study.task("squad-v2").spec.options.stride == 128
    assert {b: BenchPlan(study, b).served_task for b in study.bench.backends} == {"hf": "mrpc", "vllm": "mrpc"}


def test_the_per_question_bootstrap_reproduces_the_reported_f1(tmp_path):
    """Per-question scores at a threshold (what the train phase writes in predictions.jsonl), read back by
    `tensorio.read_predictions` and bootstrapped by the drift analysis: the full sample is the official F1/exact at
    that threshold, the baseline the official score of "no answer" everywhere (the unanswerable share), and
    `drift_stats.learning` accepts metrics.json's number."""
    import numpy as np

    from lorascope import tensorio
    from lorascope.analysis import drift_stats, score_bootstrap

    # id: (gold answers, predicted text, no-answer probability); by hand at threshold 0.4: q1 exact (1, 1);
    # q2 "Paris France" vs "Paris": P 1/2, R 1 -> F1 2/3, exact 0; q3 abstains (0.9 > 0.4) on an unanswerable: 1;
    # q4 answers an unanswerable: 0; q5 abstains on an answerable: 0; q6 "the cat" vs ["a cat", "dog"]: normalised
    # "cat" == "cat": exact 1. F1 = (1 + 2/3 + 1 + 0 + 0 + 1) / 6, exact = 3 / 6; "no answer": 2 / 6.
    cases = {"q1": (["Denver Broncos"], "Denver Broncos", 0.1), "q2": (["Paris"], "Paris France", 0.2),
             "q3": ([], "something", 0.9), "q4": ([], "a guess", 0.3), "q5": (["42"], "42", 0.8),
             "q6": (["a cat", "dog"], "the cat", 0.0)}  # fmt: skip
    preds = [{"idx": i, "id": q, "label": g, "gold": g, "text": t, "no_answer_prob": p} for i, (q, (g, t, p)) in enumerate(cases.items())]
    scored = qa.with_question_scores(preds, threshold=0.4)
    official = qa.score_predictions(preds, threshold=0.4)
    assert official["f1"] == pytest.approx((1 + 2 / 3 + 1 + 0 + 0 + 1) / 6, abs=1e-12) and official["exact"] == pytest.approx(0.5)
    assert [p["scores"]["f1"] for p in scored] == pytest.approx([1, 2 / 3, 1, 0, 0, 1], abs=1e-12)
    assert [p["trivial_scores"]["no_answer"]["f1"] for p in scored] == [0, 0, 1, 1, 0, 0]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in reversed(scored)))
    got = tensorio.read_predictions(tmp_path)
    assert got["idx"].tolist() == list(range(6)) and set(got["scores"]) == {"exact", "f1"}
    boot = score_bootstrap.mean_bootstrap({"a": got["scores"]["f1"]}, {k: v["f1"] for k, v in got["trivial"].items()}, n_boot=300)
    assert boot["full"]["a"] == pytest.approx(official["f1"], abs=1e-12) and boot["baseline"] == pytest.approx(2 / 6, abs=1e-12)
    assert boot["boot"]["a"].shape == (300,) and np.all((boot["boot"]["a"] >= 0) & (boot["boot"]["a"] <= 1))

    class Cell:
        name = "a"

    metrics = {"a": {"validation": {"f1": official["f1"], "exact": official["exact"]}}}
    for metric, want in (("f1", official["f1"]), ("exact", 0.5)):
        gates, baseline, b = drift_stats.learning(metric, [Cell()], metrics, {"a": got}, seed=0)
        assert gates["a"]["value"] == pytest.approx(want, abs=1e-12) and baseline == pytest.approx(2 / 6, abs=1e-12)
        assert gates["a"]["predictions"] is True
    metrics["a"]["validation"]["f1"] += 0.01  # metrics.json that the predictions do not reproduce: refused
    with pytest.raises(ValueError, match="metrics.json says"):
        drift_stats.learning("f1", [Cell()], metrics, {"a": got}, seed=0)
