"""The shared training/evaluation core: metrics, batch layout, seeds, the sampler, evaluation and the loss under
gradient accumulation, on the real tiny model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import TrainerCallback, set_seed

from lorascope import data, training
from lorascope.errors import ConfigError
from lorascope.log import Logger
from lorascope.models import builtin, loading
from lorascope.study import REPORT_TO_INTEGRATIONS, load_study, parse_study

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "smoke.yaml"


@pytest.fixture(scope="module")
def smoke():
    return load_study(REPO / "jobs" / "smoke.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smoke):
    """The smoke model and a few hundred encoded MRPC fixture examples."""
    torch.set_num_threads(1)
    model_dir = builtin.build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")
    tok = loading.load_tokenizer(model_dir)
    splits, _ = data.prepare_task(smoke, "mrpc")
    return model_dir, tok, splits


def test_classification_metrics_by_hand():
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    preds = [1, 0, 1, 1, 0, 0, 1, 0]  # TP=3 FN=1 FP=1 TN=3
    m = training.classification_metrics(labels, preds)
    assert m["accuracy"] == 6 / 8
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert training.classification_metrics([0, 0], [0, 0]) == {"accuracy": 1.0, "f1": 0.0}  # no positives at all
    assert training.classification_metrics([1, 1], [0, 0])["f1"] == 0.0


@pytest.mark.parametrize("effective,micro,expected", [(8, 8, (8, 1)), (16, 8, (8, 2)), (32, 8, (8, 4)), (10, 8, (5, 2)),
                                                      (4, 8, (4, 1)), (12, 8, (6, 2)), (7, 4, (1, 7))])  # fmt: skip
def test_batch_layout_multiplies_to_the_effective_batch(effective, micro, expected):
    per_device, accum = training.batch_layout(effective, micro)
    assert (per_device, accum) == expected
    assert per_device * accum == effective and per_device <= micro


def test_stable_seed_is_sha256_of_the_parts_not_python_hash():
    expected = int(hashlib.sha256(b"hpo\x1f0\x1fmrpc").hexdigest()[:8], 16) & 0x7FFFFFFF
    assert training.stable_seed("hpo", 0, "mrpc") == expected
    assert training.stable_seed("hpo", 0, "mrpc") != training.stable_seed("hpo", 0, "rte")


def test_resolve_params_fills_defaults_and_rejects_gaps(smoke):
    full = training.resolve_params(smoke, "full")
    assert full == {"learning_rate": 1e-3, "warmup_ratio": 0.1, "weight_decay": 0.01, "effective_batch": 8, "epochs": 2}
    lora = training.resolve_params(smoke, "lora", {"learning_rate": 2e-3, "lora_alpha": 32})
    assert lora["learning_rate"] == 2e-3 and lora["lora_alpha"] == 32.0 and lora["lora_dropout"] == 0.05
    no_defaults = smoke.model_copy(update={"training": smoke.training.model_copy(update={"defaults": {}})})
    with pytest.raises(
        ConfigError, match=r"method 'full': no value for \['learning_rate', 'effective_batch', 'epochs'\]"
    ):
        training.resolve_params(no_defaults, "full")
    with pytest.raises(ConfigError, match="warmup_ratio=1.5 must be in"):
        training.resolve_params(smoke, "full", {"warmup_ratio": 1.5})


def test_adamw_8bit_without_bitsandbytes_is_a_config_error(smoke, monkeypatch):
    cfg = smoke.training.model_copy(update={"optimizer": "adamw_8bit"})
    monkeypatch.setattr(training.hparams.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="adamw_8bit.*bitsandbytes is not installed"):
        training.optimizer_name(cfg, torch.device("cpu"))
    fused = smoke.training.model_copy(update={"optimizer": "adamw_torch_fused"})
    assert training.optimizer_name(fused, torch.device("cpu")) == "adamw_torch"
    assert training.optimizer_name(fused, torch.device("cuda")) == "adamw_torch_fused"


def test_length_grouped_order_depends_only_on_seed_and_epoch():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(5, 300, size=200)]
    a = training.SeededLengthGroupedSampler(lengths, batch_size=8, seed=42)
    b = training.SeededLengthGroupedSampler(lengths, batch_size=8, seed=42)
    torch.manual_seed(123)  # the global RNG plays no part
    first = list(a)
    torch.manual_seed(999)
    assert list(b) == first
    assert sorted(first) == list(range(200))
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)

    # grouping: padding waste of length-grouped batches is far below that of the plain permutation
    def waste(order):
        return sum(max(lengths[i] for i in order[k:k + 8]) * len(order[k:k + 8]) - sum(lengths[i] for i in order[k:k + 8])
                   for k in range(0, len(order), 8))  # fmt: skip

    assert waste(first) < 0.25 * waste(list(torch.randperm(200, generator=torch.Generator().manual_seed(0)).tolist()))


def test_evaluate_does_not_depend_on_batching(tiny, smoke):
    model_dir, tok, splits = tiny
    set_seed(0)
    model = loading.load_classifier(model_dir, 2, torch.float32, "cpu")
    rows = splits["validation"][:37]
    one = training.evaluate(model, tok, rows, smoke.task("mrpc"), batch_size=1)
    many = training.evaluate(model, tok, rows, smoke.task("mrpc"), batch_size=16)
    assert [p["idx"] for p in one.predictions] == [r["idx"] for r in rows]  # input order
    np.testing.assert_allclose(
        [p["logits"] for p in one.predictions], [p["logits"] for p in many.predictions], atol=1e-5
    )
    assert one.loss == pytest.approx(many.loss, abs=1e-6)
    expected = training.classification_metrics([r["label"] for r in rows], [p["pred"] for p in many.predictions])
    assert (many.accuracy, many.f1) == (expected["accuracy"], expected["f1"])
    logits = torch.tensor([p["logits"] for p in many.predictions], dtype=torch.float64)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([r["label"] for r in rows]))
    assert many.loss == pytest.approx(float(ce), rel=1e-9)


class GradientsAtFirstStep(TrainerCallback):
    """The (clipped) gradients the optimizer is about to apply at the first step."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _one_step(tiny, smoke, micro_batch, tmp_path):
    model_dir, tok, splits = tiny
    features = data.encode(tok, "mrpc", splits["train"][:16], 64)
    set_seed(0)
    model = loading.load_classifier(model_dir, 2, torch.float32, "cpu")
    cfg = smoke.training.model_copy(update={"micro_batch": micro_batch})
    plan = training.Plan(learning_rate=1e-2, effective_batch=16, epochs=1, seed=3, lr_scheduler="constant",
                         max_steps=1, evaluate=False)  # fmt: skip
    grads = GradientsAtFirstStep()
    result = training.fit(model, features, None, training=cfg, plan=plan, pad_id=tok.pad_token_id, callbacks=[grads],
                          output_dir=tmp_path / f"m{micro_batch}", device=torch.device("cpu"), log=Logger())  # fmt: skip
    assert result.schedule["micro_batch"] * result.schedule["grad_accum"] == 16
    return grads.grads, result


def test_gradient_accumulation_equals_one_big_batch(tiny, smoke, tmp_path):
    """16 examples as 1x16, 2x8 and 8x2 micro-batches: the same loss, the same gradient norm before clipping and the
    same gradients at the first step, so the loss is the mean over the effective batch (a wrong scale would show in
    the norm; AdamW's first step and clipping would hide it in the weights)."""
    ref, r16 = _one_step(tiny, smoke, 16, tmp_path)
    first = next(e for e in r16.log_history if "grad_norm" in e)
    assert len(ref) == len(list(r16.model.parameters()))
    for micro in (8, 2):
        got, r = _one_step(tiny, smoke, micro, tmp_path)
        assert r.schedule["grad_accum"] == 16 // micro and r.tokens == r16.tokens
        logged = next(e for e in r.log_history if "grad_norm" in e)
        assert logged["loss"] == pytest.approx(first["loss"], rel=1e-5)
        assert logged["grad_norm"] == pytest.approx(first["grad_norm"], rel=1e-4)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], atol=1e-7, rtol=1e-4)


def test_schedule_counts_steps_like_the_trainer(smoke):
    plan = training.Plan(learning_rate=1e-3, effective_batch=16, epochs=3, seed=0)
    s = training.schedule(smoke.training, plan, n_train=100)  # micro 8 -> 13 micro-batches -> 7 steps per epoch
    assert s == {"micro_batch": 8, "grad_accum": 2, "steps_per_epoch": 7, "max_steps": 21, "capped": 0,
                 "eval_steps": 3}  # fmt: skip
    capped = training.schedule(smoke.training.model_copy(update={"max_steps": 5}), plan, n_train=100)
    assert capped["max_steps"] == 5 and capped["capped"] == 1


def test_early_stopping_on_dev_loss_and_best_model_at_the_end(tiny, smoke, tmp_path):
    """Learning rate 0: the dev loss never improves after the first evaluation, so training stops after
    `early_stopping_patience` more evaluations instead of running its 6 epochs, and the best step is the first
    evaluation."""
    model_dir, tok, splits = tiny
    train = data.encode(tok, "mrpc", splits["train"][:64], 64)
    dev = data.encode(tok, "mrpc", splits["dev"][:32], 64)
    set_seed(0)
    model = loading.load_classifier(model_dir, 2, torch.float32, "cpu")
    cfg = smoke.training.model_copy(update={"early_stopping_patience": 2, "evals_per_epoch": 2})
    plan = training.Plan(learning_rate=0.0, effective_batch=8, epochs=6, seed=0, lr_scheduler="constant")
    result = training.fit(model, train, dev, training=cfg, plan=plan, pad_id=tok.pad_token_id, output_dir=tmp_path,
                          device=torch.device("cpu"), log=Logger())  # fmt: skip
    s = result.schedule
    assert (s["steps_per_epoch"], s["eval_steps"], s["max_steps"]) == (8, 4, 48)
    evals = [e["step"] for e in result.log_history if "eval_loss" in e]
    assert evals == [4, 8, 12]  # first evaluation sets the best, two more without improvement stop training
    assert result.global_step == 12 and result.best_step == 4


def test_report_to_reaches_the_training_arguments_and_stays_out_of_the_hash(smoke, tmp_path):
    """`training.report_to` (a string is one integration) is what the Trainer gets; the default reports nowhere; the
    study hash (the run id) does not change with it."""
    raw = yaml.safe_load(SMOKE.read_text())
    raw["training"]["report_to"] = "tensorboard"
    study = parse_study(yaml.safe_dump(raw), "with-tensorboard.yaml")
    assert study.training.report_to == ["tensorboard"] and smoke.training.report_to == ["none"]
    assert study.hash == smoke.hash
    plan = training.Plan(learning_rate=1e-3, effective_batch=8, epochs=1)

    def report_to(cfg):
        return training.training_arguments(cfg, plan, tmp_path, torch.device("cpu"), n_train=16).report_to

    assert report_to(study.training) == ["tensorboard"]
    raw["training"]["report_to"] = ["mlflow", "wandb"]
    assert report_to(parse_study(yaml.safe_dump(raw), "two.yaml").training) == ["mlflow", "wandb"]
    assert report_to(smoke.training) == []  # "none": the Trainer's empty list
    with pytest.raises(ConfigError, match=r"bad.yaml: field training.report_to: unknown integration\(s\) \['tensorf"):
        raw["training"]["report_to"] = ["tensorflow"]
        parse_study(yaml.safe_dump(raw), "bad.yaml")


def test_report_to_names_are_the_installed_transformers_integrations():
    """The study validates report_to without importing transformers; its list must be the Trainer's."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    assert REPORT_TO_INTEGRATIONS == set(INTEGRATION_TO_CALLBACK)
