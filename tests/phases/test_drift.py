"""The drift phase on crafted runs: reps, cells and a stage model written directly with numpy (no training, no torch
in the phase), so the expected answers are known: a rotated copy of the base has CKA 1 (drift 0), independent noise
has debiased CKA ~0 (the runs: tests/fixtures/crafted_runs.py). Also the closed-form subset CKA, the LoRA weight path,
bf16 reading and the H-verdicts."""

from __future__ import annotations

import csv
import io
import uuid

import numpy as np
import pytest

from lorascope import tensorio
from lorascope.analysis import lora as lora_math
from lorascope.analysis import representations
from lorascope.analysis import weights as weights_math
from lorascope.errors import ConfigError, LorascopeError
from lorascope.phases.extract import REPS_FILE, units
from lorascope.runner import run_phase_index
from lorascope.study import load_study
from tests.fixtures.crafted_runs import (
    BLOCKS,
    SEEDS,
    L,
    commit_bench,
    commit_reps,
    craft_run,
    crafted_study,
    read_csv,
    run_drift,
)


@pytest.fixture(scope="module")
def rotated_vs_noise(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted") / uuid.uuid4().hex[:6]
    ctx = craft_run(folder)
    return ctx, run_drift(ctx)


# ------------------------------------------------------------------------------------------------ tests
def test_rotated_reps_have_no_drift_and_noise_has_debiased_cka_near_zero(rotated_vs_noise):
    ctx, summary = rotated_vs_noise
    rows = read_csv(ctx, "layer_rows.csv")
    assert len(rows) == 2 * 6 * L * 2  # tasks x cells per task x layers x poolings
    assert list(rows[0]) == representations.layer_columns()
    lora = [r for r in rows if r["method"] == "lora"]
    full = [r for r in rows if r["method"] == "full"]
    for r in lora:  # base @ orthogonal * 2: CKA is invariant to rotation and isotropic scaling
        assert r["cka_linear"] == pytest.approx(1.0, abs=1e-10)
        assert r["cka_debiased"] == pytest.approx(1.0, abs=1e-10)
        assert r["drift_debiased"] == pytest.approx(0.0, abs=1e-10)
        assert r["cosine"] < 0.9  # but the coordinates moved: cosine is not rotation invariant
    for r in full:  # independent noise: debiased ~0, while the biased (linear) CKA sits well above it at n ~ d
        assert abs(r["cka_debiased"]) < 0.1
        assert r["cka_linear"] > r["cka_debiased"] + 0.1
        assert r["drift_debiased"] == pytest.approx(1.0 - r["cka_debiased"], abs=1e-15)
    comp = summary["results"]["mrpc"]["comparisons"]["lora"]["mean"]["debiased"]
    assert comp["method_mean"] == pytest.approx(0.0, abs=1e-10)
    assert comp["reduction_pct"] == pytest.approx(100.0, abs=1e-6)
    ci = summary["results"]["mrpc"]["comparisons"]["lora"]["reduction_ci"]
    assert ci["lo"] <= comp["reduction_pct"] + 1e-9 and ci["hi"] >= comp["reduction_pct"] - 1e-9
    assert ci["hi"] - ci["lo"] < 1.0  # LoRA drift is exactly 0 on every subset: only FT's drift varies
    # the seed noise floor: two rotations of the base agree perfectly, two noise draws do not at all
    noise = read_csv(ctx, "noise_floor.csv")
    assert len(noise) == 2 * 2 * 3 * L * 2  # tasks x methods x seed pairs x layers x poolings
    assert all(r["cka_debiased"] == pytest.approx(1.0, abs=1e-10) for r in noise if r["method"] == "lora")
    assert all(abs(r["cka_debiased"]) < 0.1 for r in noise if r["method"] == "full")
    assert summary["results"]["mrpc"]["methods"]["full"]["noise_floor"]["mean"]["debiased"]["mean"] > 0.9


def test_summary_means_equal_the_csv_rows_at_full_precision(rotated_vs_noise):
    ctx, summary = rotated_vs_noise
    rows = read_csv(ctx, "layer_rows.csv")
    for task in ("mrpc", "rte"):
        for method in ("full", "lora"):
            for seed in SEEDS:
                vals = [r["drift_debiased"] for r in rows if (r["task"], r["method"], r["seed"], r["pooling"]) == (task, method, seed, "mean")
                    and r["layer"] != "embeddings"]  # LoRA on q/v cannot change the embeddings: not in the mean
                assert len(vals) == L - 1
                stored = summary["results"][task]["methods"][method]["drift"]["mean"]["debiased"]["values"][str(seed)]
                assert stored == float(np.mean(vals))  # exact: the CSV holds every float64 digit


def test_statistics_follow_analysis_stats(rotated_vs_noise):
    from lorascope.analysis import stats

    _ctx, summary = rotated_vs_noise
    comps = [summary["results"][t]["comparisons"]["lora"]["mean"]["debiased"] for t in ("mrpc", "rte")]
    for c in comps:
        assert len(c["diffs"]) == 3 and all(d > 0 for d in c["diffs"])
        assert c["sign_flip_p"] == pytest.approx(0.25)  # 3 seeds, all LoRA < FT: exactly the two-sided floor
        assert c["sign_flip_floor"] == 0.25
        assert c["paired_t"]["df"] == 2
        assert np.mean(c["diffs"]) == pytest.approx(c["ft_mean"] - c["method_mean"])
        assert c["cohens_dz"] == pytest.approx(stats.cohens_dz(np.array(c["diffs"]), np.zeros(3)))
    holm = stats.holm([c["paired_t"]["p"] for c in comps])
    assert [c["holm_p_t"] for c in comps] == pytest.approx(list(holm))
    assert summary["settings"]["sign_flip_floor_two_sided"] == 0.25


@pytest.fixture(scope="module")
def moved_vs_mixed(tmp_path_factory):
    """Full fine-tuning moves every seed the same way (drift far above its seed noise floor); LoRA stays near the
    base with its own seed noise; metrics within 0.5 pp on nested error sets."""
    folder = tmp_path_factory.mktemp("crafted") / uuid.uuid4().hex[:6]
    ctx = craft_run(folder, lora="mixed", full="moved")
    return ctx, run_drift(ctx)


def test_hypotheses_supported_on_the_crafted_run(moved_vs_mixed):
    _ctx, summary = moved_vs_mixed
    h = summary["hypotheses"]
    assert h["H1a"]["verdict"] == "supported", h["H1a"]["by"]  # gaps of 0.5 pp, bound within 3 pp
    assert h["H1b"]["verdict"] == "supported", h["H1b"]["by"]  # every seed ~90% reduction
    assert h["H2"]["verdict"] == "not measured"  # no bench bundle
    assert set(h["H1a"]["by"]) == {"mrpc", "rte"}
    for task in ("mrpc", "rte"):
        v = h["H1b"]["by"][task]
        red = [float(x) for x in v["seed_reductions_pct"].values()]
        m = summary["results"][task]["methods"]
        ft = m["full"]["drift"]["mean"]["debiased"]["values"]
        lo = m["lora"]["drift"]["mean"]["debiased"]["values"]
        assert red == pytest.approx([100 * (ft[s] - lo[s]) / ft[s] for s in map(str, SEEDS)])
        assert v["lo"] >= 20 and min(red) >= 20
        assert m["full"]["moved"]["mean"]["moved"]  # full fine-tuning moved (was: not within its noise floor)
        assert all(g["learned"] for mm in m.values() for g in mm["learning"].values())
        layers = summary["results"][task]["comparisons"]["lora"]["layers"]
        assert layers["embeddings"]["verdict"] == "not compared" and not layers["embeddings"]["in_mean"]
        assert layers["layer_1"]["in_mean"] and layers["layer_1"]["verdict"] in ("supported", "inconclusive")
        ex = h["H1a"]["by"][task]
        assert ex["example_se_pp"] > 0 and ex["hi"] <= 3.0


def test_a_lora_cell_that_did_not_learn_makes_h1b_not_assessable(tmp_path):
    metrics = {"full": [0.81, 0.80, 0.81], "lora": [0.80, 0.52, 0.80]}  # one LoRA seed at the 50% majority baseline
    ctx = craft_run(tmp_path, lora="mixed", full="moved", metrics=metrics)
    s = run_drift(ctx)
    h1b = s["hypotheses"]["H1b"]["by"]["mrpc"]
    assert h1b["verdict"] == "not assessable" and "lora seed 1337 did not learn" in h1b["evidence"]
    assert s["results"]["mrpc"]["methods"]["lora"]["learning"]["1337"]["learned"] is False
    assert s["results"]["mrpc"]["methods"]["lora"]["learned"] is False
    assert s["hypotheses"]["H1b"]["verdict"] != "supported"
    layers = s["results"]["mrpc"]["comparisons"]["lora"]["layers"]
    assert {v["verdict"] for v in layers.values() if v["in_mean"]} == {"not assessable"}  # per layer too


def test_full_fine_tuning_that_did_not_move_is_indistinguishable(tmp_path):
    """The gate asks whether the reference moved at all: full fine-tuning whose states are the base's has nothing for
    LoRA to reduce (indistinguishable, per layer too)."""
    ctx = craft_run(tmp_path, lora="mixed", full="base")
    s = run_drift(ctx)
    for task in ("mrpc", "rte"):
        full = s["results"][task]["methods"]["full"]
        assert not full["moved"]["mean"]["moved"] and full["drift"]["mean"]["debiased"]["mean"] == pytest.approx(0, abs=1e-12)
        assert s["hypotheses"]["H1b"]["by"][task]["verdict"] == "indistinguishable"
        assert "not distinguishable from 0" in s["hypotheses"]["H1b"]["by"][task]["evidence"]
        layers = s["results"][task]["comparisons"]["lora"]["layers"]
        assert {v["verdict"] for v in layers.values() if v["in_mean"]} == {"indistinguishable"}


def test_full_fine_tuning_that_moved_in_seed_specific_directions_is_not_indistinguishable(tmp_path):
    """Full fine-tuning = base + independent seed noise: its drift from the base (~0.5) is below the drift between
    two of its seeds (~0.7), which the old noise-floor gate called "indistinguishable from retraining noise", yet the
    model moved. The gate now says it moved (seed and example spread), the seed-to-seed drift is shown as consistency,
    and H1b is decided by the rule over seeds."""
    ctx = craft_run(tmp_path, lora="rotated", full="mixed")
    s = run_drift(ctx)
    for task in ("mrpc", "rte"):
        full = s["results"][task]["methods"]["full"]
        gate = s["results"][task]["comparisons"]["lora"]["reference_moved"]
        assert full["drift"]["mean"]["debiased"]["mean"] < full["noise_floor"]["mean"]["debiased"]["mean"]  # old gate fired
        assert gate["moved"] and full["moved"]["mean"]["moved"] and gate["lo"] > 0
        assert gate["seed_to_seed"] > gate["mean"] and gate["shared_share"] < 0.5  # seed-specific: inconsistent
        assert gate["se_examples"] > 0 and gate["seed_pairs"] == 3
        v = s["hypotheses"]["H1b"]["by"][task]
        assert v["verdict"] == "supported", v["evidence"]  # LoRA a rotation of the base: drift 0, a 100% reduction


def test_verdicts_follow_the_study_thresholds(tmp_path):
    # LoRA 20 pp below full FT (on 64 examples the validation error alone is ~5 pp), and a reduction threshold above
    # 100%: both not supported
    metrics = {"full": [0.90, 0.91, 0.90], "lora": [0.70, 0.71, 0.70]}
    ctx = craft_run(tmp_path, lora="mixed", full="moved", metrics=metrics,
                    hypotheses={"h1a_max_gap_pp": 3.0, "h1b_min_reduction_pct": 101.0})  # fmt: skip
    h = run_drift(ctx)["hypotheses"]
    assert h["H1a"]["verdict"] == "not supported"
    assert all(v["verdict"] == "not supported" for v in h["H1a"]["by"].values())
    assert h["H1b"]["verdict"] == "not supported"
    assert h["H1b"]["by"]["rte"]["verdict"] == "not supported" and "threshold 101%" in h["H1b"]["by"]["rte"]["evidence"]
    # MRPC is scored by F1: 70% accuracy on balanced labels is F1 ~0.71, against the 0.667 of always answering 1
    assert h["H1b"]["by"]["mrpc"]["verdict"] == "not assessable" and "majority baseline 66.7" in h["H1b"]["by"]["mrpc"]["evidence"]


def test_h2_from_a_committed_bench_bundle(tmp_path):
    ctx = craft_run(tmp_path, hypotheses={"h2_max_overhead_pct": 30.0})
    commit_bench(ctx, {"1": [10.0, 12.0, 11.0], "4": [20.0, 25.0, 22.0]})
    summary = run_drift(ctx)
    h2 = summary["hypotheses"]["H2"]
    assert h2["verdict"] == "supported" and set(h2["by"]) == {"hf batch 1", "hf batch 4"}
    assert h2["source"]["hf"]["bundle"] == "bench/hf"
    assert summary["bench"]["hf"]["configs"][0]["mean_batch_ms"] == 5.0
    # the same function on the same per-repeat latencies as the bench phase's own summary: the same verdicts
    bench = ctx.require("bench", "hf").read_json("summary.json")["h2"]
    assert {k.removeprefix("hf "): v["verdict"] for k, v in h2["by"].items()} == {k: v["verdict"] for k, v in bench["by"].items()}
    assert h2["verdict"] == bench["verdict"]


def test_example_ids_must_match(tmp_path):
    ctx = craft_run(tmp_path)
    cell = ctx.study.cells()[0]
    b = ctx.require("reps", cell.name, cell.task)
    local = ctx.local(b)
    from safetensors.numpy import load_file

    t = load_file(str(local / REPS_FILE))
    ctx.store.delete_tree(ctx.key("reps", cell.name, cell.task))
    commit_reps(ctx, tmp_path / "again", cell.name, cell.task, t["mean"], t["last"], idx=t["idx"][::-1])
    with pytest.raises(LorascopeError, match="example ids of reps/mrpc-full-s42/mrpc differ"):
        run_phase_index(ctx, "drift", 0)


def test_missing_bundles_are_a_config_error_naming_them(tmp_path):
    ctx = craft_run(tmp_path)
    ctx.store.delete_tree(ctx.key("reps", "mrpc-lora-s1337", "mrpc"))
    with pytest.raises(ConfigError, match="reps/mrpc-lora-s1337/mrpc"):
        run_phase_index(ctx, "drift", 0)


def test_committed_drift_is_skipped(rotated_vs_noise, capsys):
    ctx, _ = rotated_vs_noise
    attempt = ctx.require("drift").attempt
    run_phase_index(ctx, "drift", 0)
    assert ctx.require("drift").attempt == attempt
    assert "already committed, skipping" in capsys.readouterr().err


def test_drift_phase_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys, lorascope.phases.drift as d, lorascope.phases.report as r, lorascope.reporting.figures, "
            "lorascope.reporting.markdown; assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------ the math it adds
def test_subset_closed_form_equals_cached_subset():
    from lorascope.analysis import similarity as sim
    from lorascope.analysis import stats

    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 12)) + 3.0
    Y = X @ rng.standard_normal((12, 9)) + rng.standard_normal((40, 9))
    gx, gy = sim.CachedGram.from_features(X), sim.CachedGram.from_features(Y)
    res = sim.SubsetDebiasedCKA(40, 20, 15, seed=3)
    got = res.cka(res.prepare(gx), res.prepare(gy))
    want = [sim.cka_cached(gx.subset(idx), gy.subset(idx))[1] for idx in res.index_sets]
    assert got == pytest.approx(want, abs=1e-12)
    # the lookup hands subsample_bootstrap_ci exactly the index sets it draws
    ci = stats.subsample_bootstrap_ci(res.lookup(0.5, got), 40, 20, 15, 0.05, 3)
    assert ci["subsample_mean"] == pytest.approx(float(np.mean(got)))


def test_lora_module_summary_equals_module_summary():
    from lorascope.analysis import weights as wt

    rng = np.random.default_rng(2)
    W0 = rng.standard_normal((30, 20))
    B, A = rng.standard_normal((30, 4)), rng.standard_normal((4, 20))
    basis = wt.left_singular_basis(W0)
    got = lora_math.lora_module_summary("m", W0, B, A, 0.7, 10, 0.5, basis)
    want = wt.module_summary("m", W0, W0 + 0.7 * B @ A, 10, 0.5, base_basis=basis)
    for k in ("delta_fro", "delta_rel", "delta_spec", "stable_rank", "effective_rank"):
        assert got[k] == pytest.approx(want[k], rel=1e-9), k
    assert got["r90"] == want["r90"] and got["n_intruders"] == want["n_intruders"]
    assert got["intruder_max_cos"] == pytest.approx(want["intruder_max_cos"], abs=1e-9)


def test_adapter_delta_equals_peft_merge(tmp_path):
    """delta = scale * B @ A read from the adapter files equals what PEFT's merge adds to the base weight."""
    import torch

    from lorascope.models import builtin, loading
    from lorascope.study import LoraMethod
    from tests.fixtures.tiny_model import make_adapter

    base_dir = builtin.build_tiny_llama(tmp_path / "base")
    method = LoraMethod(r=4, alpha=12, target_modules=["q_proj", "v_proj"])
    make_adapter(base_dir, tmp_path / "adapter", method, seed=5)
    deltas = lora_math.adapter_deltas(*tensorio.read_adapter(tmp_path / "adapter"))
    from peft import PeftModel

    merged = PeftModel.from_pretrained(loading.load_classifier(base_dir, 2, torch.float32, "cpu"), str(tmp_path / "adapter")).merge_and_unload()
    base = tensorio.TensorFolder(base_dir, "model")
    assert len(deltas) == 2 * 2  # 2 blocks x (q, v)
    for name, (B, A, scale) in deltas.items():
        assert scale == 3.0
        want = merged.state_dict()[name].double().numpy() - base.get(name)
        assert scale * B @ A == pytest.approx(want, abs=1e-6)


def test_bf16_weights_are_read_bit_exactly(tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch

    t = torch.randn(5, 7).to(torch.bfloat16)
    save_torch({"w": t, "f": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    reader = tensorio.TensorFolder(tmp_path, "model")
    assert np.array_equal(reader.get("w"), t.float().double().numpy())
    assert np.array_equal(reader.get("f"), np.ones(2))


def test_extract_units_order_is_base_first_then_grid(tmp_path):
    study = load_study(crafted_study(tmp_path))
    u = units(study)
    assert u[:2] == [("base", "mrpc"), ("base", "rte")]
    assert u[2:] == [(c.name, c.task) for c in study.cells()]


def test_weights_csv_has_target_modules_for_both_methods(rotated_vs_noise):
    ctx, summary = rotated_vs_noise
    rows = read_csv(ctx, "weights.csv")
    lora = [r for r in rows if r["method"] == "lora"]
    full = [r for r in rows if r["method"] == "full"]
    assert {r["module"] for r in lora} == {"q_proj", "v_proj"} and len(lora) == 2 * 3 * BLOCKS * 2
    assert {r["source"] for r in lora} == {"lora_factors"}
    assert all(r["r90"] <= 2 and r["stable_rank"] <= 2 + 1e-9 for r in lora)  # rank-2 updates
    # the crafted model is tiny: full cells get every decoder linear
    assert {r["module"] for r in full} == set(weights_math.LINEAR_NAMES)
    assert summary["settings"]["weights_full_extra_linears"] is True
    assert summary["weights"]["mrpc"]["lora"]["r90"]["max"] <= 2
    # the method rows compare the same modules; full FT's other linears are in the union table only
    assert summary["weights"]["mrpc"]["full"]["module_types"] == ["q_proj", "v_proj"] == summary["weights"]["mrpc"]["lora"]["module_types"]
    assert summary["weights"]["mrpc"]["full"]["rows"] == 3 * BLOCKS * 2
    assert summary["weights_union"]["mrpc"]["full"]["module_types"] == sorted(weights_math.LINEAR_NAMES)
    assert summary["weights_modules"]["mrpc"]["common_types"] == ["q_proj", "v_proj"]


def test_csv_helper_writes_full_precision():
    x = 0.1 + 0.2
    data = tensorio.csv_bytes([{"a": x, "b": 1}], ["a", "b"])
    assert float(next(csv.DictReader(io.StringIO(data.decode())))["a"]) == x


def test_a_constant_representation_is_left_out_of_the_layer_means(tmp_path):
    ctx = craft_run(tmp_path, lora="mixed", constant_last_embedding=True)
    summary = run_drift(ctx)
    rows = read_csv(ctx, "layer_rows.csv")
    undefined = [r for r in rows if r["pooling"] == "last" and r["layer"] == "embeddings"]
    assert undefined and all(np.isnan(r["cka_debiased"]) for r in undefined)
    why = summary["results"]["mrpc"]["layers_excluded"]
    assert why["last"] == {"embeddings": "CKA undefined (a constant representation)"}
    assert list(why["mean"]) == ["embeddings"] and "by construction" in why["mean"]["embeddings"]
    comp = summary["results"]["mrpc"]["comparisons"]["lora"]["last"]["debiased"]
    kept = [r["drift_debiased"] for r in rows if (r["task"], r["method"], r["seed"], r["pooling"]) == ("mrpc", "lora", 42, "last")
            and r["layer"] != "embeddings"]  # fmt: skip
    assert summary["results"]["mrpc"]["methods"]["lora"]["drift"]["last"]["debiased"]["values"]["42"] == float(np.mean(kept))
    assert comp["sign_flip_p"] == 0.25 and np.isfinite(comp["paired_t"]["p"])
