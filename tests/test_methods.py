"""Every method kind on the tiny Llama and on the tiny RoBERTa (an encoder: first-token head, bias terms, its own
module names; targets by role): set up by `methods.apply_method`, trained a few steps by `training.fit`, saved as
the train phase saves it (`adapter/` or `model/`), reloaded through `models.artifacts.load_cell_model` and evaluated with the
shared `training.evaluate`: the reloaded model gives the trained model's logits. Plus what trains under each method,
prefix tuning's classification position, PiSSA/OLoRA conversion onto the untouched base, and the config errors."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from pydantic import Field
from transformers import set_seed

from lorascope import data, methods, training
from lorascope.errors import ConfigError
from lorascope.log import Logger
from lorascope.methods import METHOD_KINDS, FixedByConstruction, MethodConfig, MethodKind, register
from lorascope.methods.base import frozen_except
from lorascope.methods.bitfit import BitFitMethod
from lorascope.methods.bottleneck import BottleneckMethod
from lorascope.methods.full import FullMethod
from lorascope.methods.ia3 import Ia3Method, ia3_targets
from lorascope.methods.lora import LoraMethod, lora_parameter_count
from lorascope.methods.prefix import PrefixMethod
from lorascope.methods.top_layers import TopLayersMethod
from lorascope.models import artifacts, families, loading
from lorascope.phases import PhaseContext, stage
from lorascope.store import Store
from lorascope.study import load_study

REPO = Path(__file__).resolve().parents[1]

METHODS = {
    "full": FullMethod(),
    "lora": LoraMethod(r=4, dropout=0.0, target_modules=["q", "v"]),
    "dora": LoraMethod(name="dora", r=4, dropout=0.0, use_dora=True),
    "rslora": LoraMethod(name="rslora", r=4, dropout=0.0, use_rslora=True, target_modules="all-linear"),
    "pissa": LoraMethod(name="pissa", r=4, dropout=0.0, init="pissa"),
    "olora": LoraMethod(name="olora", r=4, dropout=0.0, init="olora", target_modules=["attention"]),
    "ia3": Ia3Method(),
    "prefix": PrefixMethod(num_virtual_tokens=3),
    "top-layers": TopLayersMethod(k=1),
    "bitfit": BitFitMethod(train=["norm"]),
}


def _staged(tmp, study_file):
    """(context, staged base model folder, its tokenizer, the mrpc splits, tmp) for a study's base model."""
    torch.set_num_threads(1)
    study = load_study(REPO / "jobs" / study_file)
    ctx = PhaseContext(study, Store.open(str(tmp / "store")), "r1", tmp / "work", {}, Logger())
    stage.run(ctx, 0)
    base_dir = ctx.stage_dir() / "model"
    tok = loading.load_tokenizer(base_dir)
    splits, _ = data.prepare_task(study, "mrpc")
    return ctx, base_dir, tok, splits, tmp


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return _staged(tmp_path_factory.mktemp("methods"), "smoke.yaml")


def _classifier(base_dir, seed=0):
    set_seed(seed)
    return loading.load_classifier(base_dir, 2, torch.float32, "cpu")


# the same kinds on the tiny RoBERTa (an encoder: its own first-token head `classifier`, bias terms, its module names),
# targets by role so one line means the same modules on both families
ROBERTA_METHODS = {
    **{k: v for k, v in METHODS.items() if k in ("full", "lora", "rslora", "olora", "ia3", "prefix", "top-layers")},
    "dora": LoraMethod(name="dora", r=4, dropout=0.0, use_dora=True, target_modules=["q", "v"]),
    "pissa": LoraMethod(name="pissa", r=4, dropout=0.0, init="pissa", target_modules=["q", "v"]),
    "bitfit": BitFitMethod(train=["bias"]),  # RoBERTa has bias terms: BitFit proper
    "bitfit-norm": BitFitMethod(name="bitfit-norm", train=["bias", "norm"]),
}


@pytest.fixture(scope="module")
def roberta_env(tmp_path_factory):
    return _staged(tmp_path_factory.mktemp("methods-roberta"), "smoke-roberta.yaml")


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_trains_saves_reloads_and_evaluates_the_same(env, name):
    _train_save_reload_evaluate(env, name, METHODS[name])


@pytest.mark.parametrize("name", list(ROBERTA_METHODS))
def test_each_method_trains_saves_reloads_and_evaluates_the_same_on_roberta(roberta_env, name):
    _train_save_reload_evaluate(roberta_env, name, ROBERTA_METHODS[name])


def _train_save_reload_evaluate(env, name, method):
    ctx, base_dir, tok, splits, tmp = env
    model = methods.apply_method(_classifier(base_dir), method, {})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = tmp / f"cell-{name}"
    initial = methods.save_initial_adapter(model, method, out / "initial_adapter")
    assert (initial is not None) == (name in ("pissa", "olora"))
    features = data.encode(tok, "mrpc", splits["train"][:32], 64)
    plan = training.Plan(learning_rate=2e-2, effective_batch=8, epochs=1, seed=0, max_steps=3, evaluate=False,
                         lr_scheduler="constant")  # fmt: skip
    result = training.fit(model, features, None, training=ctx.study.training, plan=plan, pad_id=tok.pad_token_id,
                          output_dir=tmp / f"fit-{name}", device=torch.device("cpu"), log=Logger())  # fmt: skip
    trained = result.model
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "training changed nothing"
    assert all(p.requires_grad for n, p in trained.named_parameters() if n in changed)  # frozen stayed frozen
    folder = methods.save_cell_artifact(trained, method, out, initial)
    assert folder.name == ("adapter" if method.adapter else "model")
    assert artifacts.folder_bytes(folder) > 0
    with ctx.writer("cells", f"mrpc-{name}-s42", phase="train") as w:
        w.add_dir(folder, prefix=folder.name)
    rows = splits["validation"][:24]
    ref = training.evaluate(trained, tok, rows, "mrpc", batch_size=8)
    reloaded, _ = artifacts.load_cell_model(ctx.cell_dir(f"mrpc-{name}-s42"), ctx.stage_dir() / "model", 2, "cpu", torch.float32)
    got = training.evaluate(reloaded, tok, rows, "mrpc", batch_size=8)
    atol = 1e-4 if name in ("pissa", "olora") else 1e-5  # the converted delta is A B - A0 B0 in float32
    np.testing.assert_allclose([p["logits"] for p in got.predictions], [p["logits"] for p in ref.predictions], atol=atol)
    assert got.accuracy == ref.accuracy and got.loss == pytest.approx(ref.loss, abs=1e-4)


def test_what_trains_under_each_method(env):
    _, base_dir, _, _, _ = env
    base = _classifier(base_dir)
    groups = families.parameter_groups(base)
    n = families.num_blocks(base)
    params = dict(base.named_parameters())
    head = sum(params[p].numel() for p in groups["head"])
    assert head == base.config.hidden_size * 2
    counts = {k: artifacts.trainable_parameters(methods.apply_method(_classifier(base_dir), m, {}))[0]
              for k, m in METHODS.items()}  # fmt: skip
    assert counts["full"] == sum(p.numel() for p in params.values())
    norm = sum(params[p].numel() for p in groups["norm"])
    assert counts["bitfit"] == norm + head
    last = sum(params[p].numel() for p in groups[f"block:{n - 1}"])
    assert counts["top-layers"] == last + params["model.norm.weight"].numel() + head  # last block, final norm, head
    cfg = base.config
    assert counts["lora"] == lora_parameter_count(cfg, ["q_proj", "v_proj"], 4, 2)
    # DoRA adds one magnitude per output feature of each adapted module
    kv = cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    assert counts["dora"] == counts["lora"] + n * (cfg.hidden_size + kv)
    # IA3: one vector per module: k, v scale their outputs, down (feed-forward) its input
    assert counts["ia3"] == n * (kv + kv + cfg.intermediate_size) + head
    # prefix: a key and a value vector per virtual token and layer
    assert counts["prefix"] == 3 * n * 2 * kv + head  # PEFT sizes a virtual key/value by the KV heads (GQA)


def test_prefix_tuning_classifies_at_the_last_real_token(env):
    """PEFT prepends num_virtual_tokens ones to the attention mask; pooling reads the sequence's own columns, so a
    padded row gives the logits it gives alone (unpadded, no mask to shift)."""
    _, base_dir, tok, _, _ = env
    model = methods.apply_method(_classifier(base_dir), PrefixMethod(num_virtual_tokens=4), {})
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 1.0)  # a prefix that matters
    model.eval()
    texts = ["a short one", "a much longer sentence with many more words in it than the other"]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        padded = model(**batch).logits
        for i, t in enumerate(texts):
            alone = model(**tok([t], return_tensors="pt")).logits
            torch.testing.assert_close(padded[i : i + 1], alone, atol=1e-5, rtol=0)
        no_prefix = model.get_base_model()(**batch).logits
    assert not torch.allclose(padded, no_prefix, atol=1e-3)  # the prefix is used


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_converted_pissa_adapter_applies_to_the_untouched_base(env, init):
    """PiSSA/OLoRA rewrite W0 as a residual. The converted adapter (PEFT's conversion: rank 2r) on the original base
    reproduces the trained model's logits, its config no longer asks PEFT to decompose W0 on load, and its factors
    give the true update: W0 + scale B' A' = the trained model's effective weight. The plain save's B A is not the
    update (it is relative to the residual), which is why drift reads only converted adapters."""
    _, base_dir, tok, splits, tmp = env
    import json

    from peft import PeftModel
    from safetensors.torch import load_file

    method = LoraMethod(name=init, r=4, dropout=0.0, init=init)
    model = methods.apply_method(_classifier(base_dir), method, {})
    initial = methods.save_initial_adapter(model, method, tmp / f"conv-{init}" / "initial_adapter")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.05)  # "training"
    model.eval()
    batch = data.collate(data.encode(tok, "mrpc", splits["validation"][:6], 64), tok.pad_token_id)
    with torch.no_grad():
        trained = model(**batch).logits
    folder = methods.save_cell_artifact(model, method, tmp / f"conv-{init}", initial)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True  # [A | A0], [B | -B0]; no decomposition on load
    with torch.no_grad():
        converted = PeftModel.from_pretrained(_classifier(base_dir, seed=9), str(folder)).eval()(**batch).logits
    torch.testing.assert_close(converted, trained, atol=1e-4, rtol=0)
    # the factors: the update of one module, against the merged trained weight
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    W0 = dict(_classifier(base_dir).named_parameters())["model.layers.0.self_attn.q_proj.weight"].detach()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        W_eff = layer.base_layer.weight + layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    f = load_file(str(folder / "adapter_model.safetensors"))
    scale = config["lora_alpha"] / config["r"]
    torch.testing.assert_close(W0 + scale * f[key + ".lora_B.weight"] @ f[key + ".lora_A.weight"], W_eff, atol=1e-5, rtol=0)
    model.save_pretrained(str(tmp / f"conv-{init}" / "plain"))
    p = load_file(str(tmp / f"conv-{init}" / "plain" / "adapter_model.safetensors"))
    plain_delta = (method.alpha / method.r) * p[key + ".lora_B.weight"] @ p[key + ".lora_A.weight"]
    assert not torch.allclose(W0 + plain_delta, W_eff, atol=1e-3)


def test_bad_method_configs_name_the_field(env):
    _, base_dir, _, _, _ = env
    cases = [
        (BitFitMethod(), "methods.3.train: 'bias', but this llama model .* no bias terms .*train: \\[norm\\]"),
        (TopLayersMethod(k=99), "methods.3.k: k=99 but the model has 2 blocks"),
        (LoraMethod(target_modules=["query"]), "methods.3.target_modules: 'query' matches no module"),
        (Ia3Method(target_modules=["k", "v"], feedforward_modules=["down"]), "methods.3.feedforward_modules: .* not among"),
        (LoraMethod(target_modules=["gatee"]), "methods.3.target_modules: 'gatee'"),
    ]
    for method, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            methods.apply_method(_classifier(base_dir), method, {}, field_path="methods.3")


def test_ia3_feedforward_defaults_to_the_down_targets(env):
    _, base_dir, _, _, _ = env
    model = _classifier(base_dir)
    assert ia3_targets(model, Ia3Method(target_modules=["q", "v"]), "m")[1] == []
    targets, ff = ia3_targets(model, Ia3Method(target_modules=["v", "mlp"]), "m")
    assert ff == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"] and set(ff) < set(targets)
    peft = methods.apply_method(_classifier(base_dir), Ia3Method(), {})
    assert set(peft.peft_config["default"].feedforward_modules) == {"down_proj"}


def test_dora_with_a_converted_init_is_refused():
    with pytest.raises(ValueError, match="init: 'pissa' with use_dora"):
        LoraMethod(use_dora=True, init="pissa")


def test_adapter_and_servable_flags():
    assert [m.adapter for m in METHODS.values()] == [False, True, True, True, True, True, True, True, False, False]
    assert [k for k, m in METHODS.items() if m.vllm_servable] == ["lora"]


@pytest.mark.parametrize("name", ["dora", "ia3", "rslora"])
def test_drift_reads_the_update_peft_applies(env, name, tmp_path):
    """analysis.lora's numpy formulas (DoRA's W', IA3's scaled W0, rsLoRA's scale) give the weight PEFT merges into the
    base (`merge_and_unload`), for every adapted module, from the saved adapter folder drift reads."""
    _, base_dir, _, _, _ = env
    from lorascope import tensorio
    from lorascope.phases.drift import weight_updates

    method = METHODS[name]
    model = methods.apply_method(_classifier(base_dir), method, {})
    with torch.no_grad():
        for n, p in model.named_parameters():
            if any(t in n for t in ("lora_", "ia3_l")):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(tmp_path / "adapter"))
    merged = {n: p.detach().numpy() for n, p in model.merge_and_unload().named_parameters()}
    base = tensorio.TensorFolder(base_dir, "model")

    class Study:  # what weight_updates asks of the study
        def method(self, _):
            return method

    class Cell:
        method = name

    updates, skipped, sources = weight_updates(Study(), {"c": Cell()}, {"c": tmp_path}, base)
    kind, u = updates["c"]
    assert not skipped and sources[method.name].startswith(("dora_weight", "ia3_weight", "lora_factors"))
    names = sorted(u)
    assert names and all(n in merged for n in names)
    for n in names:
        W_ft = base.get(n) + u[n][2] * u[n][0] @ u[n][1] if kind == "lora" else u.get(n)
        np.testing.assert_allclose(W_ft, merged[n], atol=1e-5)
    if kind == "lora":
        assert u[names[0]][2] == pytest.approx(method.alpha / np.sqrt(method.r))  # rsLoRA's scale


def test_drift_skips_bitfit_and_prefix_with_a_reason_and_reads_top_layers_blocks(env, tmp_path):
    _, base_dir, _, _, _ = env
    from lorascope import tensorio
    from lorascope.phases.drift import weight_updates

    base = tensorio.TensorFolder(base_dir, "model")
    top = methods.apply_method(_classifier(base_dir), METHODS["top-layers"], {})
    with torch.no_grad():
        top.model.layers[1].mlp.up_proj.weight.mul_(1.1)
    top.save_pretrained(str(tmp_path / "top" / "model"))
    ms = {"top": METHODS["top-layers"], "bit": METHODS["bitfit"], "pre": METHODS["prefix"]}

    class Study:
        def method(self, n):
            return ms[n]

    cells = {n: type("C", (), {"method": n})() for n in ms}
    updates, skipped, _ = weight_updates(Study(), cells, {"top": tmp_path / "top", "bit": None, "pre": None}, base)
    assert set(updates) == {"top"} and set(skipped) == {"bitfit", "prefix"}
    kind, u = updates["top"]
    assert kind == "dense" and all(n.startswith("model.layers.1.") for n in u) and len(list(u)) == 7
    np.testing.assert_allclose(u.get("model.layers.1.mlp.up_proj.weight"),
                               1.1 * base.get("model.layers.1.mlp.up_proj.weight"), rtol=1e-6)



# ------------------------------------------------------------------------------------------------ the registry
class ProbeMethod(MethodConfig):
    """A throwaway kind for the registry test: a linear probe (only the classifier head trains)."""

    name: str = "probe"
    kind: Literal["probe"] = "probe"
    min_blocks: int = 1


class ProbeKind(MethodKind):
    name = "probe"
    title = "linear probe"
    config = ProbeMethod
    artifact = "model"
    checks_model = True

    def check(self, model, config, field_path):
        if families.num_blocks(model) < config.min_blocks:
            raise ConfigError(f"{field_path}.min_blocks: the model has {families.num_blocks(model)} blocks")

    def apply(self, model, config, overrides, field_path):
        frozen_except(model, set(families.parameter_groups(model)["head"]))
        return model

    def fixed_by_construction(self, config, n_blocks, encoder):
        return FixedByConstruction(embedding_output=True, frozen_blocks=tuple(range(n_blocks)), why_frozen="probe")

    def weights_skipped(self, config):
        return "a linear probe trains only the classifier head"


@pytest.fixture
def probe_kind():
    """ProbeKind registered for one test: what a new module in lorascope/methods/ does on import."""
    register(ProbeKind)
    yield METHOD_KINDS.get("probe")
    del METHOD_KINDS._entries["probe"]  # a test's kind must not outlive it


def test_a_new_kind_is_one_registration_and_every_consumer_asks_the_registry(env, probe_kind, tmp_path):
    """A kind defined only here (no other file knows "probe") validates in a study (the union built from the
    registry; a module in lorascope/methods/ is in it at import, here a Study subclass rebuilds it), gets its
    hyperparameters and its preflight check, trains on the tiny Llama, saves and reloads as its `artifact`, and the
    drift phase and the summary read what it leaves fixed and why it has no weight rows, all from the kind."""
    import yaml

    from lorascope import preflight
    from lorascope.analysis import layers_in_mean
    from lorascope.phases.drift import weight_updates
    from lorascope.study import Study

    with_probe = methods.method_union()

    class ProbeStudy(Study):
        methods: list[with_probe] = Field(min_length=1)  # type: ignore[valid-type]

    ctx, base_dir, tok, splits, tmp = env
    raw = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    raw["methods"].append({"name": "probe", "kind": "probe"})  # after full and lora
    raw["hpo"]["enabled"] = False
    raw["training"]["defaults"]["probe"] = {"learning_rate": 0.05, "effective_batch": 8, "epochs": 1}
    raw["sanity"]["learning_rate"]["probe"] = 0.05
    study = ProbeStudy.model_validate(raw)
    probe = study.method("probe")
    assert isinstance(probe, ProbeMethod) and not probe.adapter and not probe.vllm_servable
    assert [c.name for c in study.cells()][6:9] == ["mrpc-probe-s42", "mrpc-probe-s1337", "mrpc-probe-s2024"]
    assert len(study.hash) == 16 and ProbeStudy.model_validate(yaml.safe_load(study.to_yaml())).hash == study.hash
    with pytest.raises(ValueError, match=r"\['lora_alpha'\] apply to LoRA only, and method 'probe' is of kind 'probe'"):
        ProbeStudy.model_validate({**raw, "training": {**raw["training"], "defaults": {
            **raw["training"]["defaults"], "probe": {**raw["training"]["defaults"]["probe"], "lora_alpha": 8}}}})
    assert training.resolve_params(study, "probe") == {"learning_rate": 0.05, "warmup_ratio": 0.0, "weight_decay": 0.0,
                                                       "effective_batch": 8, "epochs": 1}  # fmt: skip
    meta = preflight.meta_classifier(__import__("json").loads((base_dir / "config.json").read_text()))
    preflight.check_methods(study, meta)
    far = ProbeStudy.model_validate({**raw, "methods": [*raw["methods"][:2], {"kind": "probe", "min_blocks": 9}]})
    with pytest.raises(ConfigError, match=r"field methods.2.min_blocks: the model has 2 blocks"):
        preflight.check_methods(far, meta)

    model = methods.apply_method(_classifier(base_dir), probe, {})
    head = set(families.parameter_groups(model)["head"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = training.Plan(learning_rate=5e-2, effective_batch=8, epochs=1, seed=0, max_steps=3, evaluate=False,
                         lr_scheduler="constant")  # fmt: skip
    features = data.encode(tok, "mrpc", splits["train"][:32], 64)
    trained = training.fit(model, features, None, training=study.training, plan=plan, pad_id=tok.pad_token_id,
                           output_dir=tmp_path / "fit", device=torch.device("cpu"), log=Logger()).model  # fmt: skip
    assert {n for n, p in trained.named_parameters() if not torch.equal(p.detach(), before[n])} == head
    folder = methods.save_cell_artifact(trained, probe, tmp_path / "cell")
    assert folder.name == "model"
    with ctx.writer("cells", "mrpc-probe-s42", phase="train") as w:
        w.add_dir(folder, prefix=folder.name)
    rows = splits["validation"][:16]
    reloaded, _ = artifacts.load_cell_model(ctx.cell_dir("mrpc-probe-s42"), ctx.stage_dir() / "model", 2, "cpu",
                                           torch.float32)
    ref, got = (training.evaluate(m, tok, rows, "mrpc", batch_size=8) for m in (trained, reloaded))
    np.testing.assert_allclose([p["logits"] for p in got.predictions], [p["logits"] for p in ref.predictions], atol=1e-5)

    cells = {c.name: c for c in study.cells() if c.method == "probe"}
    updates, skipped, _ = weight_updates(study, cells, dict.fromkeys(cells), None)
    assert updates == {} and skipped == {"probe": "a linear probe trains only the classifier head"}
    labels = ["embeddings", "layer_1", "final_norm"]
    assert layers_in_mean.unchangeable_entries(study, labels, encoder=False)[0].startswith(
        "lora (lora on q_proj, v_proj); probe (probe) cannot change the embedding output")
    assert layers_in_mean.frozen_entries(study, labels) == {"probe": {1: "probe", 2: "probe"}}


def test_every_registered_kind_declares_a_consistent_protocol():
    """Each kind's config says its kind, its size knob and its hyperparameters' defaults are fields of the config,
    and the study's union and the sweeps know exactly the registered kinds."""
    from lorascope.study import Method

    union = typing.get_args(typing.get_args(Method)[0])
    assert [c.model_fields["kind"].default for c in union] == list(METHOD_KINDS)
    for name, kind in METHOD_KINDS.items():
        fields = kind.config.model_fields
        assert fields["kind"].default == name and kind.artifact in ("adapter", "model")
        assert kind.size_knob is None or kind.size_knob in fields, name
        assert all(f in fields for f in kind.size_companions) and all(h.field in fields for h in kind.hyperparameters.values())
    assert set(METHOD_KINDS) >= {"full", "lora", "ia3", "top_layers", "bitfit", "prefix"}


def test_no_consumer_compares_a_method_kind_by_name():
    """The rule of the registry: outside lorascope/methods/, no module asks "which kind is this?" by comparing a
    method's kind with a name (it asks the kind, `methods.kind_of(m)`)."""
    import re

    names = "|".join(METHOD_KINDS.names())  # a pruner's or a store's `kind` is not a method kind
    pattern = re.compile(rf"""\.kind\s*(==|!=)\s*["']({names})["']|\.kind\s+(not\s+)?in\s*[(\[{{][^)\]}}]*["']({names})["']"""
                         r"""|isinstance\([^)]*Method\b""")
    root = REPO / "pkg" / "lorascope"
    consumers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py") if p.relative_to(root).parts[0] != "methods")
    found = [f"{f}:{i}" for f in consumers for i, line in enumerate((root / f).read_text().splitlines(), 1)
             if pattern.search(line)]  # fmt: skip
    assert found == []


# ------------------------------------------------------------------------------------------------ bottleneck adapters
BOTTLENECK = {
    "houlsby": BottleneckMethod(name="houlsby", placement="houlsby", reduction_factor=8),
    "lin": BottleneckMethod(name="lin", placement="lin", hidden_size=4, non_linearity="gelu"),
}


@pytest.mark.parametrize("name", list(BOTTLENECK))
def test_bottleneck_trains_saves_reloads_and_evaluates_the_same(env, name):
    _train_save_reload_evaluate(env, f"bottleneck-{name}", BOTTLENECK[name])


@pytest.mark.parametrize("name", list(BOTTLENECK))
def test_bottleneck_trains_saves_reloads_and_evaluates_the_same_on_roberta(roberta_env, name):
    _train_save_reload_evaluate(roberta_env, f"bottleneck-{name}", BOTTLENECK[name])


@pytest.mark.parametrize("study_env", ["env", "roberta_env"])
def test_bottleneck_starts_as_the_base_and_trains_only_its_adapters_and_the_head(study_env, request):
    """up = 0 at the start: the adapted model's logits are the base's; Houlsby puts an adapter after the attention
    output and after the MLP of every block, Lin one after the MLP with a LayerNorm; only they and the head train."""
    _, base_dir, tok, splits, _ = request.getfixturevalue(study_env)
    base = _classifier(base_dir).eval()
    cfg = base.config
    d, n = cfg.hidden_size, cfg.num_hidden_layers
    batch = data.collate(data.encode(tok, "mrpc", splits["validation"][:6], 64), tok.pad_token_id)
    with torch.no_grad():
        reference = base(**batch).logits
    head = sum(p.numel() for name, p in base.named_parameters() if name in families.parameter_groups(base)["head"])
    for method, adapters, width, norm in ((BOTTLENECK["houlsby"], 2, d // 8, 0), (BOTTLENECK["lin"], 1, 4, 2 * d)):
        model = methods.apply_method(_classifier(base_dir), method, {}).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).logits, reference, atol=0, rtol=0)
        wrapped = {name.split(".bottleneck.")[0] for name, _ in model.named_parameters() if ".bottleneck." in name}
        roles = families.family_of(base).roles
        paths = {"houlsby": [roles["o"], roles["down"]], "lin": [roles["down"]]}[method.placement]
        assert len(wrapped) == n * adapters and families.target_roles(model, wrapped) == sorted(paths)
        per_adapter = d * width + width + width * d + d + norm  # down, up (weights and biases), Lin's LayerNorm
        assert artifacts.trainable_parameters(model)[0] == n * adapters * per_adapter + head


def test_bottleneck_is_marked_non_mergeable_and_not_servable():
    """No weight rows (the reason says why), not vLLM-servable, the embedding output fixed by construction; the
    width given one way only."""
    method = BOTTLENECK["houlsby"]
    kind = methods.kind_of(method)
    assert method.adapter and not method.vllm_servable
    assert "does not merge into W0" in kind.weights_skipped(method) and kind.weight_source(method) is None
    assert kind.fixed_by_construction(method, 2, False) == FixedByConstruction(embedding_output=True)
    assert BottleneckMethod().width(64) == 4 and BottleneckMethod(hidden_size=7).width(64) == 7
    with pytest.raises(ValueError, match="reduction_factor or as hidden_size, not both"):
        BottleneckMethod(reduction_factor=4, hidden_size=8)


def test_bottleneck_config_errors_name_the_field(env):
    _, base_dir, _, _, _ = env
    with pytest.raises(ConfigError, match=r"methods.2.reduction_factor: 128 leaves no adapter width .* hidden size 64"):
        methods.apply_method(_classifier(base_dir), BottleneckMethod(reduction_factor=128), {}, field_path="methods.2")
