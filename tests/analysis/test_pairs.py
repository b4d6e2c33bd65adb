"""Verdicts per method pair on synthetic drift rows (no store, no torch): the reference (first full method) against
every other method of any kind under the one H1a / H1b rule, the embedding output left out of the means when a
compared method cannot change it, top-k's frozen blocks kept in the means but marked, and no reference -> no
verdicts. The study is duck-typed (summary.py reads kind, name and a few fields)."""

from __future__ import annotations

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


def study(methods, tasks=("rte",), hypotheses=None):
    task_objs = [NS(name=t, selection_metric="accuracy") for t in tasks]
    cells = [NS(index=i, task=t, method=m.name, seed=s, name=f"{t}-{m.name}-s{s}")
             for i, (t, m, s) in enumerate((t, m, s) for t in tasks for m in methods for s in SEEDS)]  # fmt: skip
    return NS(tasks=task_objs, methods=list(methods), seeds=list(SEEDS), cells=lambda: cells,
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
            for a, b in ((42, 1337), (42, 2024), (1337, 2024)):
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
    assert s["hypotheses"]["H1a"]["verdict"] == "not supported"  # the overall rule: any part not supported


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


def test_embeddings_left_out_and_top_k_frozen_blocks_kept_but_marked(five):
    _st, s = five
    res = s["results"]["rte"]
    assert res["layers_in_mean"]["mean"] == ["layer_1", "layer_2", "final_norm"]
    why = res["layers_excluded"]["mean"]["embeddings"]
    assert "lora (lora on q_proj, v_proj)" in why and "ia3 (ia3 on k, v, down)" in why and "top1 (top_layers)" in why
    assert "bitfit (bitfit)" in why  # a decoder: BitFit cannot change the embedding output
    assert s["frozen_by_construction"] == {"top1": ["layer_1", "layer_2"]}
    layers = res["comparisons"]["top1"]["layers"]
    assert layers["layer_1"]["frozen_by_construction"].startswith("frozen by construction (top1 trains the last 1 of 3")
    assert layers["layer_1"]["in_mean"] and layers["layer_1"]["method_mean"] == 0.0
    assert layers["final_norm"]["frozen_by_construction"] is None
    assert res["comparisons"]["lora"]["layers"]["layer_1"]["frozen_by_construction"] is None
    # the frozen blocks' zero drift is in top1's mean: (0 + 0 + final_norm) / 3
    vals = res["methods"]["top1"]["drift"]["mean"]["debiased"]["values"]
    assert vals["42"] == pytest.approx(PROFILE["top1"][1][0] * 1.25 / 3)
    assert "(frozen by construction)" in s["hypotheses"]["H1b"]["by"]["rte/top1"]["evidence"]


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
