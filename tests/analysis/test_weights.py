"""Tests for lorascope.analysis.weights (rank measures, intruder dimensions)."""

import numpy as np
import pytest

from lorascope.analysis import weights as wt


def _orth(m, k, seed):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((m, k)))
    return Q


def _tall_base(m=128, r=32, seed=0):
    """W0 = U diag(s) V^T, U: m x r, V: r x r orthogonal, s = 10 ... 1 (known SVD)."""
    U, V = _orth(m, r, seed), _orth(r, r, seed + 1)
    s = np.linspace(10.0, 1.0, r)
    return U, s, V, (U * s) @ V.T


# ---- rank measures on diagonal matrices --------------------------------------------------------


def test_stable_rank_known():
    assert wt.stable_rank(np.diag([4.0, 2.0, 2.0, 1.0])) == pytest.approx(25 / 16)
    assert wt.stable_rank(np.eye(7)) == pytest.approx(7.0)
    assert wt.stable_rank(np.outer([1.0, 2.0], [3.0, 4.0, 5.0])) == pytest.approx(1.0)
    assert wt.stable_rank(np.zeros((3, 3))) == 0.0


def test_effective_rank_known():
    assert wt.effective_rank(np.diag([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])) == pytest.approx(4.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, erank = 2^1.5
    assert wt.effective_rank(np.diag([2.0, 1.0, 1.0])) == pytest.approx(2**1.5)
    assert wt.effective_rank(np.diag([5.0, 0.0])) == pytest.approx(1.0)
    assert wt.effective_rank(np.zeros((2, 2))) == 0.0


def test_r90_known():
    assert wt.r90(np.eye(10)) == 9  # 9/10 of the energy exactly
    assert wt.r90(np.diag([3.0, 1.0, 1.0, 1.0])) == 3  # 9/12, 10/12, 11/12 >= 0.9
    assert wt.r90(np.diag([10.0, 1.0, 1.0])) == 1  # 100/102
    assert wt.r90(np.diag([3.0, 1.0, 1.0, 1.0]), energy=0.75) == 1
    assert wt.r90(np.zeros((3, 3))) == 0


def test_rank_measures_ignore_orientation():
    D = np.diag([5.0, 3.0, 1.0, 0.5])
    Q1, Q2 = _orth(4, 4, 1), _orth(4, 4, 2)
    M = Q1 @ D @ Q2.T
    assert wt.stable_rank(M) == pytest.approx(wt.stable_rank(D))
    assert wt.effective_rank(M) == pytest.approx(wt.effective_rank(D))
    assert wt.r90(M) == wt.r90(D)


# ---- top-k singular vectors ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(200, 60), (60, 200)])
def test_top_left_singular_vectors_match_svd(shape):
    rng = np.random.default_rng(1)
    M = rng.standard_normal(shape) * np.linspace(3.0, 0.1, shape[1])
    U, s, _ = np.linalg.svd(M, full_matrices=False)
    Uk, sk = wt.top_left_singular_vectors(M, 5)  # 5 <= 60 // 4: eigh path
    np.testing.assert_allclose(sk, s[:5], rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(Uk * U[:, :5], axis=0)), 1.0, atol=1e-9)
    Uk, sk = wt.top_left_singular_vectors(M, 30)  # full-SVD path
    np.testing.assert_allclose(sk, s[:30], rtol=1e-10)


# ---- intruder dimensions -------------------------------------------------------------------


def test_exactly_one_intruder_known_cosine():
    # W0 is 128 x 32: its left singular vectors span only 32 of 128 dims.  Add S u v^T with u
    # orthogonal to that span and v = W0's last right singular vector.  Then
    #   W_ft = sum_{i<32} s_i u_i v_i^T + (s_32 u_32 + S u) v_32^T
    # is an exact SVD; the new top direction w = (s_32 u_32 + S u)/r, r = sqrt(s_32^2 + S^2),
    # has max |cos| with W0's basis = s_32 / r.  The other top-k vectors are u_1..u_9 (cos 1).
    U, s, V, W0 = _tall_base()
    u = np.random.default_rng(9).standard_normal(128)
    u -= U @ (U.T @ u)
    u /= np.linalg.norm(u)
    S = 20.0
    W_ft = W0 + S * np.outer(u, V[:, -1])
    count, cos = wt.intruder_dimensions(W0, W_ft, k=10, eps=0.5)
    assert count == 1
    r = np.hypot(s[-1], S)
    assert cos[0] == pytest.approx(s[-1] / r, abs=1e-10)
    np.testing.assert_allclose(cos[1:], 1.0, atol=1e-10)
    # a generic right vector: the top direction is still essentially u -> one intruder
    v = np.random.default_rng(10).standard_normal(32)
    count, cos = wt.intruder_dimensions(W0, W0 + S * np.outer(u, v / np.linalg.norm(v)))
    assert count == 1 and cos[0] < 0.2


def test_no_intruders_for_small_noise():
    _, _, _, W0 = _tall_base()
    W_ft = W0 + 1e-3 * np.random.default_rng(3).standard_normal(W0.shape)
    count, cos = wt.intruder_dimensions(W0, W_ft, k=10, eps=0.5)
    assert count == 0
    assert cos.min() > 0.99
    basis = wt.left_singular_basis(W0)
    assert wt.intruder_dimensions(W0, W_ft, base_basis=basis)[0] == 0


def test_module_summary_and_streaming(monkeypatch):
    U, s, V, W0 = _tall_base()
    u = np.random.default_rng(9).standard_normal(128)
    u -= U @ (U.T @ u)
    u /= np.linalg.norm(u)
    delta = 20.0 * np.outer(u, V[:, -1]) + 0.5 * np.outer(U[:, 0], V[:, 1])
    W_ft = W0 + delta
    d = wt.module_summary("layers.0.q_proj", W0, W_ft, k=10, eps=0.5)
    sd = np.linalg.svd(delta, compute_uv=False)
    assert d["name"] == "layers.0.q_proj" and d["shape"] == (128, 32)
    assert d["n_intruders"] == 1 and len(d["intruder_max_cos"]) == 10
    assert d["delta_fro"] == pytest.approx(np.linalg.norm(delta))
    assert d["delta_rel"] == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(W0))
    assert d["delta_spec"] == pytest.approx(sd[0])
    assert d["stable_rank"] == pytest.approx(wt.stable_rank(delta))
    assert d["effective_rank"] == pytest.approx(wt.effective_rank(delta))
    assert d["r90"] == wt.r90(delta) == 1  # 400 / 400.25 of the energy in one direction

    calls = []
    real = wt.left_singular_basis

    def counting(W):
        calls.append(1)
        return real(W)

    noisy = W0 + 1e-3 * np.random.default_rng(4).standard_normal(W0.shape)

    def items():  # module-major: same W0 object for consecutive variants
        yield "a/lora", W0, W_ft
        yield "a/full", W0, noisy

    monkeypatch.setattr(wt, "left_singular_basis", counting)
    gen = wt.summarize_modules(items(), k=10, eps=0.5)
    assert not calls  # lazy
    out = list(gen)
    assert len(calls) == 1  # base SVD reused across variants
    assert [o["n_intruders"] for o in out] == [1, 0]
    assert out[0] == d | {"name": "a/lora"}


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        wt.module_summary("x", np.zeros((4, 3)), np.zeros((3, 4)))


# ---- a cell whose head class keeps the backbone under another path (Llama's QA class) ---------------------------


class _Folder:
    """A TensorFolder-like set of named weights."""

    def __init__(self, tensors):
        self.t = tensors

    def names(self):
        return sorted(self.t)

    def shape(self, name):
        return self.t[name].shape

    def get(self, name):
        return self.t[name]


def test_cell_updates_are_read_under_the_base_backbone_names():
    from lorascope.analysis import lora, updates

    rng = np.random.default_rng(0)
    W0 = {f"model.layers.{i}.self_attn.{m}.weight": rng.standard_normal((8, 8)) for i in (0, 1) for m in ("q_proj", "v_proj")}
    base = _Folder({**W0, "model.embed_tokens.weight": rng.standard_normal((5, 8))})
    assert updates.backbone_prefix(base.names()) == "model"
    assert updates.backbone_prefix(["roberta.encoder.layer.3.attention.self.query.weight"]) == "roberta.encoder"
    # full: the QA cell's weights under transformer.*, its head outside the backbone
    cell = _Folder({**{n.replace("model.", "transformer.", 1): w + 1.0 for n, w in W0.items()},
                    "qa_outputs.weight": np.zeros((2, 8))})  # fmt: skip
    form, u = updates.in_base_names("full", cell, base.names())
    assert form == "full" and "model.layers.1.self_attn.v_proj.weight" in u.names() and "qa_outputs.weight" in u.names()
    np.testing.assert_array_equal(u.get("model.layers.0.self_attn.q_proj.weight"), W0["model.layers.0.self_attn.q_proj.weight"] + 1.0)
    assert u.shape("model.layers.0.self_attn.q_proj.weight") == (8, 8)
    # lora: the factors' keys moved to the base's names
    B, A = rng.standard_normal((8, 2)), rng.standard_normal((2, 8))
    form, u = updates.in_base_names("lora", {"transformer.layers.0.self_attn.q_proj.weight": (B, A, 2.0)}, base.names())
    assert list(u) == ["model.layers.0.self_attn.q_proj.weight"] and u["model.layers.0.self_attn.q_proj.weight"][2] == 2.0
    # dense (DoRA): W0 read through the aliased base under the cell's names, the result named as the base
    config = {"r": 2, "lora_alpha": 4, "use_dora": True}
    factors = {"transformer.layers.1.self_attn.v_proj": (B, A)}
    mags = {"transformer.layers.1.self_attn.v_proj": np.ones(8)}
    dense = lora.dora_updates(config, factors, mags, updates.BackboneAliased(base))
    form, u = updates.in_base_names("dense", dense, base.names())
    assert list(u) == ["model.layers.1.self_attn.v_proj.weight"] and u.source == "dora_weight"
    want = lora.dora_weight(W0["model.layers.1.self_attn.v_proj.weight"], B, A, 2.0, np.ones(8))
    np.testing.assert_allclose(u.get("model.layers.1.self_attn.v_proj.weight"), want, rtol=0, atol=0)
    # same backbone path (every classification and generation cell): the update unchanged
    same = _Folder(dict(W0))
    assert updates.in_base_names("full", same, base.names()) == ("full", same)
