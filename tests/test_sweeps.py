"""Study-level method config: sweeps expand to stable names in the documented order (and the grid, the index mapping
and the rendered Job completions follow), per-method settings fall back from a method's name to its kind, and bad
method configs are errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorascope import cli
from lorascope.errors import ConfigError
from lorascope.study import load_study, parse_study

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())

SWEEP = {"kind": "lora", "name": "lora-r{r}-{target_modules}", "r": [1, 2, 4, 8, 16, 32, 64],
         "target_modules": {"qv": ["q", "v"], "qkvo": ["q", "k", "v", "o"], "all": "all-linear"}, "alpha": 16}  # fmt: skip


def study(methods, **top) -> dict:
    raw = {**SMOKE, "methods": methods, "hpo": {"enabled": False}}
    kinds = {(m.get("sweep") or m)["kind"] for m in methods}
    defaults = {k: v for k, v in SMOKE["training"]["defaults"].items() if k in kinds}
    raw["training"] = {**SMOKE["training"], "defaults": defaults}
    for k, v in top.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return raw


def parse(raw: dict):
    return parse_study(yaml.safe_dump(raw, sort_keys=False))


def test_a_rank_by_targets_sweep_expands_in_order_with_stable_names():
    s = parse(study([{"name": "full", "kind": "full"}, {"sweep": SWEEP}]))
    names = [m.name for m in s.methods]
    expected = ["full"] + [f"lora-r{r}-{t}" for r in (1, 2, 4, 8, 16, 32, 64) for t in ("qv", "qkvo", "all")]
    assert names == expected  # first axis outermost, values in the order written
    m = s.method("lora-r16-qkvo")
    assert (m.kind, m.r, m.alpha, m.target_modules) == ("lora", 16, 16, ["q", "k", "v", "o"])
    assert s.method("lora-r1-all").target_modules == ["all-linear"]
    cells = s.cells()
    assert len(cells) == 3 * 22 * 3
    # task-major, then method, then seed: mrpc's lora-r2-qv is method index 4, seed 1337 the 2nd seed
    c = cells[4 * 3 + 1]
    assert (c.task, c.method, c.seed, c.name) == ("mrpc", "lora-r2-qv", 1337, "mrpc-lora-r2-qv-s1337")
    assert cells[22 * 3].name == "sst2-full-s42"
    # the frozen study holds the plain entries: it re-parses to the same study and hash
    assert parse_study(s.to_yaml()).hash == s.hash


def test_a_sweep_fixes_list_fields_and_labels_list_values_by_their_entries():
    s = parse(study([{"sweep": {"kind": "lora", "name": "l-{dropout}-{use_dora}", "dropout": [0.0, 0.05],
                                "use_dora": [False, True], "target_modules": ["q", "v"]}}]))  # fmt: skip
    assert [m.name for m in s.methods] == ["l-0-false", "l-0-true", "l-0p05-false", "l-0p05-true"]
    assert all(m.target_modules == ["q", "v"] for m in s.methods)  # a plain list on a list field is fixed
    s = parse(study([{"sweep": {"kind": "lora", "name": "t-{target_modules}", "target_modules": [["q", "v"], ["o"]]}}]))
    assert [m.name for m in s.methods] == ["t-qv", "t-o"]


@pytest.mark.parametrize("sweep,message", [
    ({**SWEEP, "name": "lora-r{r}"}, r"methods.1.sweep.name: the template 'lora-r\{r\}' does not name the axis\(es\) \['target_modules'\]"),
    ({**SWEEP, "r": [0, 2]}, r"methods.1.sweep.r: entry 'lora-r0-qv': Input should be greater than or equal to 1"),
    ({**SWEEP, "rank": [2]}, r"methods.1.sweep: unknown field\(s\) \['rank'\] for kind 'lora'"),
    ({**SWEEP, "kind": "loraa"}, r"methods.1.sweep.kind: expected one of"),
    ({"kind": "lora", "name": "x", "r": 4}, r"methods.1.sweep: no axis"),
    ({**SWEEP, "r": []}, r"methods.1.sweep.r: an axis with no values"),
])  # fmt: skip
def test_bad_sweeps_name_the_field(sweep, message):
    with pytest.raises(ConfigError, match=message):
        parse(study([{"name": "full", "kind": "full"}, {"sweep": sweep}]))


def test_duplicate_names_after_expansion_are_an_error_naming_them():
    with pytest.raises(ConfigError, match=r"methods: duplicate entries \['lora-r2-qv'\]"):
        parse(study([{"name": "lora-r2-qv", "kind": "lora"}, {"sweep": SWEEP}]))


def test_defaults_spaces_and_sanity_fall_back_from_name_to_kind():
    from lorascope.training import resolve_params

    raw = study([{"name": "full", "kind": "full"}, {"sweep": SWEEP}, {"name": "special", "kind": "lora", "r": 2}])
    raw["training"]["defaults"]["special"] = {"learning_rate": 0.5, "effective_batch": 4, "epochs": 1}
    s = parse(raw)
    assert resolve_params(s, "lora-r8-qv")["learning_rate"] == SMOKE["training"]["defaults"]["lora"]["learning_rate"]
    assert resolve_params(s, "special")["learning_rate"] == 0.5  # the name wins over the kind
    assert s.sanity_key(s.method("lora-r64-all")) == "lora"
    raw = study([{"name": "full", "kind": "full"}, {"sweep": SWEEP}], hpo={"enabled": True, "spaces": SMOKE["hpo"]["spaces"]})
    s = parse(raw)
    assert s.space_for(s.method("lora-r4-qkvo")) == s.hpo.spaces["lora"]


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["training"]["defaults"].update(lorra={"learning_rate": 1}),
     r"training.defaults: unknown method\(s\) \['lorra'\]; keys are a method's name or kind: the study's methods are \['full', 'ia3'\], their kinds \['full', 'ia3'\]"),
    (lambda r: r["training"]["defaults"].update(ia3={"learning_rate": 1e-2, "effective_batch": 8, "epochs": 1, "lora_alpha": 8}),
     r"training.defaults.ia3: \['lora_alpha'\] apply to LoRA only, and method 'ia3' is of kind 'ia3'"),
    (lambda r: r["sanity"].update(learning_rate={"full": 1e-3}),
     r"sanity.learning_rate: no entry for method 'ia3' \(nor its kind 'ia3'\)"),
    (lambda r: r["training"]["defaults"].pop("ia3"),
     r"method 'ia3': no value for \['learning_rate', 'effective_batch', 'epochs'\] \(task mrpc\): give them in training.defaults.ia3 \(or .ia3\)"),
])  # fmt: skip
def test_per_method_settings_errors_name_name_and_kind(mutate, message):
    raw = study([{"name": "full", "kind": "full"}, {"name": "ia3", "kind": "ia3"}])
    raw["training"]["defaults"]["ia3"] = SMOKE["training"]["defaults"]["lora"]
    raw["sanity"] = {**raw["sanity"], "learning_rate": {"full": 1e-3, "ia3": 1e-2}}
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        parse(raw)


@pytest.mark.parametrize("entry,message", [
    ({"kind": "lora", "init": "loftq"}, r"methods.0.lora.init: Input should be 'default', 'gaussian', 'pissa' or 'olora'"),
    ({"kind": "top_layers", "k": 0}, r"methods.0.top_layers.k: Input should be greater than or equal to 1"),
    ({"kind": "bitfit", "train": ["weights"]}, r"methods.0.bitfit.train.0: Input should be 'bias' or 'norm'"),
    ({"kind": "prefix", "num_virtual_tokens": 0}, r"methods.0.prefix.num_virtual_tokens"),
    ({"kind": "ia3", "target_modules": []}, r"methods.0.ia3.target_modules: List should have at least 1 item"),
    ({"kind": "adapterz"}, r"methods.0: Input tag 'adapterz' found using 'kind' does not match any of the expected tags"),
])  # fmt: skip
def test_bad_method_fields_are_named(entry, message):
    raw = study([entry])
    raw["training"]["defaults"] = {entry["kind"]: SMOKE["training"]["defaults"]["full"]}
    raw["sanity"] = {**raw["sanity"], "learning_rate": {entry["kind"]: 1e-3}}
    with pytest.raises(ConfigError, match=message):
        parse(raw)


def test_bench_method_defaults_to_the_first_servable_and_refuses_others():
    methods = [{"name": "full", "kind": "full"}, {"name": "dora", "kind": "lora", "use_dora": True},
               {"name": "plain", "kind": "lora"}, {"name": "other", "kind": "lora", "r": 4}]  # fmt: skip
    s = parse(study(methods))
    assert s.bench_method().name == "plain"
    assert parse(study(methods, bench={"method": "other"})).bench_method().name == "other"
    with pytest.raises(ConfigError, match=r"field bench.method: 'dora' \(kind lora\) is not a vLLM-servable method"):
        parse(study(methods, bench={"method": "dora"}))
    with pytest.raises(ConfigError, match=r"field bench.method: 'nope' is not one of the study's methods"):
        parse(study(methods, bench={"method": "nope"}))


def test_existing_studies_keep_their_hash_when_new_fields_hold_defaults():
    s = load_study(REPO / "jobs" / "smoke.yaml")
    raw = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    raw["methods"][1].update(use_dora=False, use_rslora=False, init="default")
    assert parse(raw).hash == s.hash
    raw["methods"][1]["use_rslora"] = True
    assert parse(raw).hash != s.hash


def test_grid_and_render_follow_a_sweep_study(tmp_path, capsys):
    path = REPO / "jobs" / "smoke-methods.yaml"
    s = load_study(path)
    assert cli.main(["grid", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"# {len(s.cells())} cells" in out and "sst2-lora-r4-qv-s1337" in out
    assert cli.main(["render", "--study", str(path), "--overlay", "kind", "--out", str(tmp_path)]) == 0
    grid = yaml.safe_load((tmp_path / "grid-job.yaml").read_text())
    assert grid["spec"]["completions"] == len(s.cells())


def test_the_bench_plan_serves_bench_method_or_the_first_servable_lora():
    from lorascope.serving.plan import BenchPlan

    methods = [{"name": "full", "kind": "full"}, {"name": "dora", "kind": "lora", "use_dora": True},
               {"name": "plain", "kind": "lora"}, {"name": "other", "kind": "lora", "r": 4}]  # fmt: skip
    plan = BenchPlan(parse(study(methods, bench={"modes": ["full", "merged", "separate"]})), "hf")
    assert plan.lora.name == "plain" and plan.cells == ["mrpc-full-s42", "mrpc-plain-s42"]
    plan = BenchPlan(parse(study(methods, bench={"modes": ["merged"], "method": "other"})), "hf")
    assert plan.cells == ["mrpc-other-s42"]
    only_dora = [{"name": "full", "kind": "full"}, {"name": "dora", "kind": "lora", "use_dora": True}]
    with pytest.raises(ConfigError, match=r"bench.modes: mode 'merged' needs LoRA adapters but the study has no vLLM-servable"):
        BenchPlan(parse(study(only_dora, bench={"modes": ["full", "merged"]})), "hf")
