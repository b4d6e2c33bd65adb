"""Verdicts per method pair on synthetic drift rows (no store, no torch): the reference (first full method) against
every other method of any kind under the one H1a / H1b rule, the embedding output left out of the means when a
compared method cannot change it, top-k's frozen blocks kept in the means but marked, and no reference -> no
verdicts. The study is duck-typed (summary.py reads kind, name and a few fields)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace as NS

import numpy as np
import pytest

from lorascope.analysis import layers_in_mean, study_layout
from lorascope.analysis import summary as sm
from lorascope.analysis import verdicts as vd

SEEDS = (42, 1337, 2024)
N = 200  # validation examples
LABELS = ["embeddings", "layer_1", "layer_2", "final_norm"]  # 3 blocks


def method(name, kind, **fields):
    return NS(name=name, kind=kind, **fields)


FULL = method("full", "full")
LORA = method("lora", "lora", r=8, alpha=16, target_modules=["q_proj", "v_proj"])
IA3 = method("ia3", "ia3", target_modules=["k", "v", "down"], feedforward_modules=["down"])
TOP = method("top1", "top_layers", k=1)
BITFIT = method("bitfit", "bitfit", train=["bias"])


def study(methods, tasks=("rte",), hypotheses=None, seeds=SEEDS):
    task_objs = [NS(name=t, selection_metric="accuracy") for t in tasks]
    cells = [NS(index=i, task=t, method=m.name, seed=s, name=f"{t}-{m.name}-s{s}")
             for i, (t, m, s) in enumerate((t, m, s) for t in tasks for m in methods for s in seeds)]  # fmt: skip
    return NS(tasks=task_objs, methods=list(methods), seeds=list(seeds), cells=lambda: cells,
              task=lambda n: next(t for t in task_objs if t.name == n), method=lambda n: next(m for m in methods if m.name == n),
              extraction=NS(pooling=["mean"]), hypotheses=hypotheses or NS(h1a_max_gap_pp=3.0, h1b_min_reduction_pct=20.0,
                                                                             h2_max_overhead_pct=30.0))  # fmt: skip


# per method: (accuracy per seed, drift of a changed entry per seed)
PROFILE = {
    "full": ([0.900, 0.905, 0.900], [0.60, 0.62, 0.61]),
    "lora": ([0.895, 0.900, 0.900], [0.20, 0.21, 0.20]),
    "ia3": ([0.800, 0.805, 0.800], [0.10, 0.11, 0.10]),  # 10 pp below full: fails H1a
    "top1": ([0.890, 0.895, 0.890], [0.30, 0.31, 0.30]),
    "bitfit": ([0.885, 0.890, 0.885], [0.25, 0.26, 0.25]),
}


def inputs(st, changes_embeddings=("full",), frozen=None):
    """rows, noise, metrics, predictions for `st`: each method's changed entries drift by PROFILE; the embedding
    output only for `changes_embeddings`; `frozen`: {method: entries at drift 0}."""
    frozen = frozen or {}
    rows, noise, metrics, preds = [], [], {}, {}
    y = np.arange(N) % 2
    order = np.random.default_rng(0).permutation(N)
    for c in st.cells():
        acc, drift = PROFILE.get(c.method) or PROFILE[c.method.rstrip("0123456789").split("-")[0]]
        si = SEEDS.index(c.seed)
        for li, label in enumerate(LABELS):
            d = drift[si] * (0.5 + 0.25 * li)
            if (li == 0 and c.method not in changes_embeddings) or li in frozen.get(c.method, ()):
                d = 0.0
            rows.append({"task": c.task, "pooling": "mean", "method": c.method, "seed": c.seed, "cell": c.name,
                         "layer": label, "layer_index": li, "cka_linear": 1 - d, "cka_debiased": 1 - d,
                         "drift_linear": d, "drift_debiased": d, "cosine": 1 - d / 2, "centered_cosine": 1 - d})  # fmt: skip
        pred = y.copy()
        wrong = order[: int(round((1 - acc[si]) * N))]
        pred[wrong] = 1 - pred[wrong]
        preds[c.name] = {"idx": np.arange(N), "label": y, "pred": pred}
        metrics[c.name] = {"validation": {"accuracy": float((pred == y).mean())}}
    for m in st.methods:
        for t in st.tasks:
            for a, b in itertools.combinations(st.seeds, 2):
                for li in range(len(LABELS)):
                    d = 0.01 if li else 0.0
                    noise.append({"task": t.name, "pooling": "mean", "method": m.name, "seed_a": a, "seed_b": b,
                                  "layer_index": li, "drift_linear": d, "drift_debiased": d})  # fmt: skip
    return rows, noise, metrics, preds


def build(st, encoder=None, **kw):
    rows, noise, metrics, preds = inputs(st, **kw)
    n = {t.name: N for t in st.tasks}
    return sm.build_summary(st, rows, noise, {}, {}, metrics, preds, [], n, LABELS, encoder=encoder)


@pytest.fixture(scope="module")
def five():
    st = study([FULL, LORA, IA3, TOP, BITFIT])
    return st, build(st, encoder=False, frozen={"top1": (1, 2)})


def test_every_method_is_a_pair_with_the_reference(five):
    st, s = five
    assert s["settings"]["reference_method"] == "full"
    assert s["settings"]["compared_methods"] == ["lora", "ia3", "top1", "bitfit"]
    assert s["settings"]["lora_methods"] == ["lora"]
    assert set(s["hypotheses"]["H1a"]["by"]) == {"rte/lora", "rte/ia3", "rte/top1", "rte/bitfit"}
    assert set(s["pairs"]) == {"lora", "ia3", "top1", "bitfit"}
    assert s["pairs"]["ia3"]["kind"] == "ia3" and s["pairs"]["ia3"]["reference"] == "full"
    assert s["hypotheses"]["H1a"]["hypothesis"].startswith("H1a: each compared method's task metric within 3 pp")
    # one verdict per pair, combined over tasks; the pair table reads the hypotheses (no second rule)
    for m in ("lora", "ia3", "top1", "bitfit"):
        assert s["pairs"][m]["H1a"] == s["hypotheses"]["H1a"]["by_method"][m]["verdict"]
        assert s["pairs"][m]["tasks"]["rte"]["H1a"] == s["hypotheses"]["H1a"]["by"][f"rte/{m}"]["verdict"]


def test_a_method_with_a_bigger_gap_fails_h1a(five):
    _st, s = five
    by = s["hypotheses"]["H1a"]["by"]
    assert by["rte/ia3"]["verdict"] == "not supported"
    assert by["rte/ia3"]["gap_pp"] == pytest.approx(100 * (np.mean(PROFILE["full"][0]) - np.mean(PROFILE["ia3"][0])), abs=0.01)
    assert by["rte/ia3"]["evidence"].startswith("full 90.17 (n=3), ia3 80.17 (n=3); gap full-ia3 +10.00 pp")
    assert by["rte/lora"]["verdict"] == "supported"


def test_the_overall_line_is_the_reference_pair_and_counts(five):
    """No single word for a family of methods (before: "not supported" because ia3, one pair of four, is): the
    reference pair (the first LoRA method against the first full one) gets its verdict, every pair is counted."""
    _st, s = five
    h1a = s["hypotheses"]["H1a"]
    assert h1a["reference_pair"] == {"reference": "full", "method": "lora", "verdict": "supported"}
    assert h1a["verdict"] == "supported" == h1a["by_method"]["lora"]["verdict"]
    assert h1a["counts"]["not supported"] == 1 and h1a["counts"]["supported"] == sum(
        v["verdict"] == "supported" for v in h1a["by_method"].values())
    assert sum(h1a["counts"].values()) == 4 and set(h1a["counts"]) == set(vd.CATEGORIES)
    assert s["settings"]["reference_pair"] == ["full", "lora"]
    # without a LoRA method the first compared method makes the reference pair
    s2 = build(study([FULL, IA3, TOP]), encoder=False)
    assert s2["hypotheses"]["H1a"]["reference_pair"]["method"] == "ia3"


def test_the_full_vs_lora_pair_gets_the_same_verdict_as_in_a_two_method_study(five):
    _st, s5 = five
    s2 = build(study([FULL, LORA]), encoder=False)
    assert set(s2["hypotheses"]["H1a"]["by"]) == {"rte"}  # one compared method: keys are the task, as before
    for h in ("H1a", "H1b"):
        a, b = s2["hypotheses"][h]["by"]["rte"], s5["hypotheses"][h]["by"]["rte/lora"]
        assert a["verdict"] == b["verdict"]
        for k in ("gap_pp", "lo", "hi", "estimate_pct", "example_se_pp"):
            assert a.get(k) == b.get(k)
    assert s2["hypotheses"]["H1b"]["by"]["rte"]["verdict"] == "supported"
    # and it is the rule in verdicts.py applied to the summary's own per-seed values
    m = s2["results"]["rte"]["methods"]
    direct = vd.h1b({int(k): v for k, v in m["full"]["drift"]["mean"]["debiased"]["values"].items()},
                    {int(k): v for k, v in m["lora"]["drift"]["mean"]["debiased"]["values"].items()}, 20.0)  # fmt: skip
    assert direct["verdict"] == "supported" and direct["estimate_pct"] == s2["hypotheses"]["H1b"]["by"]["rte"]["estimate_pct"]


def test_entries_fixed_by_construction_leave_every_mean_that_compares_them(five):
    """One rule for every kind: the embedding output (LoRA, IA3, top-k, BitFit on a decoder) and top-k's frozen
    blocks have drift exactly 0 by construction, so a pair's mean covers only the entries both methods can change and
    the table over all methods only the entries every method can change; the left-out entries are listed with the
    reason and their drift, and the whole-model mean is there, labelled. Before: top1's frozen blocks stayed in its
    mean, (0 + 0 + final_norm) / 3, and its H1b rested on those zeros."""
    _st, s = five
    res = s["results"]["rte"]
    assert res["layers_in_mean"]["mean"] == ["final_norm"]  # top1 cannot change layer_1 and layer_2
    why = res["layers_excluded"]["mean"]
    assert "lora (lora on q_proj, v_proj)" in why["embeddings"] and "ia3 (ia3 on k, v, down)" in why["embeddings"]
    assert "top1 (top_layers)" in why["embeddings"] and "bitfit (bitfit)" in why["embeddings"]  # a decoder
    assert why["layer_1"].startswith("top1: frozen by construction (top1 trains the last 1 of 3")
    assert s["frozen_by_construction"] == {"top1": ["layer_1", "layer_2"]}
    assert set(s["fixed_by_construction"]["top1"]) == {"embeddings", "layer_1", "layer_2"}
    assert "full" not in s["fixed_by_construction"]
    top = res["comparisons"]["top1"]
    assert top["layers_in_mean"]["mean"] == ["final_norm"] and set(top["layers_excluded"]["mean"]) == {"embeddings", "layer_1", "layer_2"}
    layers = top["layers"]
    assert layers["layer_1"]["frozen_by_construction"].startswith("frozen by construction (top1 trains the last 1 of 3")
    assert not layers["layer_1"]["in_mean"] and layers["layer_1"]["verdict"] == "not compared"
    assert layers["layer_1"]["method_mean"] == 0.0 and layers["layer_1"]["ft_mean"] > 0  # its drift, shown apart
    assert "frozen by construction" in layers["layer_1"]["not_compared_why"]
    assert layers["final_norm"]["frozen_by_construction"] is None and layers["final_norm"]["in_mean"]
    # the top1 pair's mean is over final_norm only: no zeros from frozen blocks
    pair = top["mean"]["debiased"]
    assert pair["method_values"]["42"] == pytest.approx(PROFILE["top1"][1][0] * 1.25)
    assert pair["ft_values"]["42"] == pytest.approx(PROFILE["full"][1][0] * 1.25)
    # the lora pair keeps layer_1 and layer_2 (both methods can change them)
    assert res["comparisons"]["lora"]["layers_in_mean"]["mean"] == ["layer_1", "layer_2", "final_norm"]
    assert res["comparisons"]["lora"]["layers"]["layer_1"]["frozen_by_construction"] is None
    # the whole-model mean: every entry, frozen zeros and all, labelled as such
    whole = res["methods"]["top1"]["drift_whole_model"]["mean"]["debiased"]["values"]
    assert whole["42"] == pytest.approx(PROFILE["top1"][1][0] * 1.25 / 4)
    assert res["methods"]["top1"]["layers_whole_model"]["mean"] == LABELS
    assert top["whole_model"]["method_mean"] == pytest.approx(np.mean([PROFILE["top1"][1][i] * 1.25 / 4 for i in range(3)]))
    ev = s["hypotheses"]["H1b"]["by"]["rte/top1"]["evidence"]
    assert "over the 1 entries both methods can change (final_norm)" in ev and "whole-model mean" in ev
    assert "layer_1 (top1: frozen by construction" in ev


def test_a_two_seed_study_reads_exploratory():
    """Fewer than three seeds per method: every H1a / H1b rule outcome reads "exploratory: 2 seeds" with its numbers
    and interval (before: two seeds agreeing made lora "supported" with t = 12.71 on 1 df); the learning gate still
    says not assessable; the seed-to-seed drift says it rests on one seed pair; the overall line counts them."""
    st = study([FULL, LORA, IA3], seeds=(42, 1337))
    s = build(st, encoder=False)
    for h in ("H1a", "H1b"):
        for key, v in s["hypotheses"][h]["by"].items():
            assert v["verdict"] == "exploratory: 2 seeds", (h, key, v["evidence"])
            assert v["lo"] is not None and v["hi"] is not None  # the interval stays
        assert s["hypotheses"][h]["verdict"] == "exploratory: 2 seeds"  # the reference pair full vs lora
        assert s["hypotheses"][h]["counts"]["exploratory"] == 2
    assert s["settings"]["exploratory"] and s["settings"]["min_seeds_for_verdict"] == 3
    assert s["results"]["rte"]["methods"]["full"]["noise_floor"]["mean"]["debiased"]["n"] == 1  # one seed pair
    assert s["results"]["rte"]["comparisons"]["lora"]["reference_moved"]["seed_pairs"] == 1
    assert s["pairs"]["ia3"]["H1a"] == "exploratory: 2 seeds"


def test_bitfit_on_an_encoder_changes_the_embedding_output():
    st = study([FULL, BITFIT])
    s = build(st, encoder=True, changes_embeddings=("full", "bitfit"))
    assert s["results"]["rte"]["layers_in_mean"]["mean"] == LABELS  # nothing left out
    assert layers_in_mean.unchangeable_entries(st, LABELS, encoder=None) == {}  # architecture unknown: no exclusion without a reason
    assert 0 in layers_in_mean.unchangeable_entries(st, LABELS, encoder=False)
    r4 = method("lora-r4", "lora", r=4, target_modules=["q_proj", "v_proj"])
    why = layers_in_mean.unchangeable_entries(study([FULL, LORA, r4, TOP]), LABELS)[0]
    assert why.startswith("lora, lora-r4 (lora on q_proj, v_proj); top1 (top_layers) cannot change the embedding output")
    lora_embed = method("lora-emb", "lora", r=4, target_modules=["q_proj", "embed_tokens"])
    assert layers_in_mean.unchangeable_entries(study([FULL, lora_embed]), LABELS) == {}


def test_no_reference_no_drift_verdicts():
    st = study([LORA, method("lora-r16", "lora", r=16, alpha=32, target_modules=["q_proj", "v_proj"])])
    s = build(st)
    assert s["pairs"] == {} and s["results"]["rte"]["comparisons"] == {}
    for h in ("H1a", "H1b"):
        assert s["hypotheses"][h]["verdict"] == "not measured" and s["hypotheses"][h]["by"] == {}
        assert "no `full` method" in s["hypotheses"][h]["no_reference"]
    assert s["settings"]["reference_method"] is None and "no reference" in s["settings"]["no_reference"]
    assert math.isfinite(s["results"]["rte"]["methods"]["lora"]["drift"]["mean"]["debiased"]["mean"])


def test_a_second_full_method_is_compared_too():
    st = study([FULL, method("full2", "full"), LORA])
    s = build(st, changes_embeddings=("full", "full2"))  # full2 has full's profile
    assert s["settings"]["compared_methods"] == ["full2", "lora"]
    assert s["hypotheses"]["H1b"]["by"]["rte/full2"]["estimate_pct"] == pytest.approx(0.0, abs=1e-9)


def test_lora_targets_for_any_kind():
    from lorascope.analysis.weights import LINEAR_NAMES

    assert study_layout.lora_targets(study([FULL, LORA])) == {"q_proj", "v_proj"}
    roles = study_layout.lora_targets(study([FULL, method("l", "lora", target_modules=["q", "v"])]))
    assert {"q_proj", "v_proj", "query", "value", "qkv_proj"} <= roles and "k_proj" not in roles
    assert study_layout.lora_targets(study([FULL, method("l", "lora", target_modules=["all-linear"])])) == set(LINEAR_NAMES)
    assert study_layout.lora_targets(study([FULL, IA3])) >= {"k_proj", "v_proj", "down_proj", "key", "value"}
    assert study_layout.lora_targets(study([FULL, TOP, BITFIT])) >= {"q_proj", "v_proj"}  # LoraMethod's default roles
    assert "k_proj" not in study_layout.lora_targets(study([FULL, TOP, BITFIT]))


def test_encoder_of_reads_the_stage_config(tmp_path):
    import json

    cfg = tmp_path / "config.json"
    for model_type, expected in (("roberta", True), ("llama", False), ("gpt2", False), ("gpt_neox", None)):  # gpt2: issue 23
        cfg.write_text(json.dumps({"model_type": model_type}))
        assert sm.encoder_of(cfg) is expected
    assert sm.encoder_of(tmp_path / "missing.json") is None


def _wrow(method, seed, block, module, **values):
    return {"task": "rte", "method": method, "seed": seed, "block": block, "module": module,
            "name": f"model.layers.{block}.{'self_attn' if module[0] in 'qkvo' else 'mlp'}.{module}.weight",
            "stable_rank": values.get("stable_rank", 1.0), "effective_rank": values.get("effective_rank", 2.0),
            "r90": values.get("r90", 1), "n_intruders": values.get("n_intruders", 0), "delta_rel": values.get("delta_rel", 0.1)}  # fmt: skip


def test_weight_rows_cover_the_same_modules_for_every_method():
    """Like for like: before, the full row averaged all seven module types (it was analysed on every linear because
    one LoRA method adapted all-linear) while the lora rows covered q and v. Now the main table holds every method
    over the modules every method changes (by full name: blocks and projections); each method's own modules are in
    the union table, labelled apart."""
    linears = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    rows = [_wrow("full", s, b, m, stable_rank=2.0 if m in ("q_proj", "v_proj") else 9.0) for s in (1, 2) for b in (0, 1) for m in linears]
    rows += [_wrow("lora", s, b, m) for s in (1, 2) for b in (0, 1) for m in ("q_proj", "v_proj")]
    rows += [_wrow("ia3", s, b, m, effective_rank=30.0) for s in (1, 2) for b in (0, 1) for m in ("k_proj", "v_proj", "down_proj")]
    rows += [_wrow("top1", s, 1, m) for s in (1, 2) for m in linears]
    common, union, modules = sm.weight_summary(rows)
    assert modules["rte"]["common"] == ["model.layers.1.self_attn.v_proj.weight"]
    assert {m: e["module_types"] for m, e in common["rte"].items()} == dict.fromkeys(("full", "lora", "ia3", "top1"), ["v_proj"])
    assert {e["modules"] for e in common["rte"].values()} == {1} and {e["rows"] for e in common["rte"].values()} == {2}
    assert common["rte"]["full"]["stable_rank"]["mean"] == 2.0  # full's v_proj only, not its other six types
    assert union["rte"]["full"]["module_types"] == sorted(linears) and union["rte"]["full"]["modules"] == 14
    assert union["rte"]["full"]["stable_rank"]["mean"] == pytest.approx((2 * 2 + 9 * 5) / 7)
    assert modules["rte"]["by_method"]["ia3"] == {"modules": 6, "module_types": ["down_proj", "k_proj", "v_proj"]}
    # full and lora alone: their common modules are q and v in both blocks
    common2, _, modules2 = sm.weight_summary([r for r in rows if r["method"] in ("full", "lora")])
    assert modules2["rte"]["common_types"] == ["q_proj", "v_proj"] and common2["rte"]["full"]["modules"] == 4
    # no module in common: no like-for-like rows, the union stays
    disjoint = [_wrow("a", 1, 0, "q_proj"), _wrow("b", 1, 0, "k_proj")]
    c3, u3, m3 = sm.weight_summary(disjoint)
    assert c3 == {"rte": {}} and set(u3["rte"]) == {"a", "b"} and m3["rte"]["common"] == []
