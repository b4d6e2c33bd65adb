"""Spectral summaries of weight updates: rank measures of delta = W_ft - W0, intruder dimensions.

All matrices are 2-D and processed in float64 (numpy LAPACK).  "Left" singular vectors live in
the column space, i.e. the output space for weights stored (out_features, in_features) as in
torch/PEFT.

Precision caveat: compute delta from float32 (or better) weights, or from the LoRA factors
B @ A directly.  Subtracting two bf16 checkpoints leaves rounding noise of ~2^-8 |W| per
entry, which inflates every rank measure of a LoRA update.

References
----------
Roy & Vetterli (2007), "The effective rank: a measure of effective dimensionality", EUSIPCO.
Rudelson & Vershynin (2007), stable rank ||M||_F^2 / ||M||_2^2.
Shuttleworth, Andreas, Torralba & Sharma (2024), "LoRA vs Full Fine-tuning: An Illusion of
    Equivalence", arXiv:2410.21228 -- intruder dimensions; PEFT implements the same test in
    ``peft.tuners.lora.intruders.reduce_intruder_dimension`` (top_k=10, threshold 0.5).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from scipy.linalg import eigh

__all__ = [
    "effective_rank",
    "intruder_dimensions",
    "left_singular_basis",
    "module_summary",
    "r90",
    "singular_values",
    "stable_rank",
    "summarize_modules",
    "top_left_singular_vectors",
]


def _matrix(M) -> np.ndarray:
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {M.shape}")
    return M


def singular_values(M) -> np.ndarray:
    """All min(m, n) singular values of M, descending, float64 (LAPACK gesdd, no vectors)."""
    return np.linalg.svd(_matrix(M), compute_uv=False)


def _stable_rank_sv(s: np.ndarray) -> float:
    return float(np.sum(s**2) / s[0] ** 2) if s.size and s[0] > 0 else 0.0


def _effective_rank_sv(s: np.ndarray) -> float:
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def _r_energy_sv(s: np.ndarray, energy: float) -> int:
    e = np.cumsum(s**2)
    if e.size == 0 or e[-1] <= 0:
        return 0
    # small slack so that e.g. 9 of 10 equal singular values count as exactly 90 %
    return int(np.searchsorted(e / e[-1], energy - 1e-12, side="left") + 1)


def stable_rank(M) -> float:
    """Stable rank ||M||_F^2 / ||M||_2^2 = sum_i s_i^2 / s_1^2 (0 for the zero matrix).

    In [1, rank(M)]; insensitive to tiny singular values.
    """
    return _stable_rank_sv(singular_values(M))


def effective_rank(M) -> float:
    """Effective rank of Roy & Vetterli (2007): exp(H(p)), p_i = s_i / sum_j s_j,
    H(p) = -sum_i p_i log p_i (0 log 0 = 0).  In [1, rank(M)]; 0 for the zero matrix."""
    return _effective_rank_sv(singular_values(M))


def r90(M, energy: float = 0.9) -> int:
    """Fewest leading singular values holding ``energy`` of sum_i s_i^2 (90 % by default)."""
    return _r_energy_sv(singular_values(M), energy)


def left_singular_basis(W0) -> np.ndarray:
    """All min(m, n) left singular vectors of W0 as columns (economy SVD, float64)."""
    U, _, _ = np.linalg.svd(_matrix(W0), full_matrices=False)
    return U


def top_left_singular_vectors(M, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left singular vectors (columns, m x k) and singular values of M, float64.

    For k well below min(m, n) this solves the symmetric eigenproblem of the smaller Gram
    (M M^T or M^T M, only the top k eigenpairs, U = M V / s in the second case) -- 5-10x faster
    than a full SVD of a 2048 x 5632 matrix and as accurate for leading, non-degenerate
    directions.  Falls back to the full SVD when k is large or s_k < 1e-4 s_1.
    Signs are arbitrary, as with any SVD.
    """
    M = _matrix(M)
    m, n = M.shape
    r = min(m, n)
    k = min(k, r)
    if k < 1:
        raise ValueError("k must be >= 1")
    if k <= r // 4:
        G = M @ M.T if m <= n else M.T @ M
        w, V = eigh(G, subset_by_index=[G.shape[0] - k, G.shape[0] - 1])
        s = np.sqrt(np.clip(w[::-1], 0.0, None))
        V = V[:, ::-1]
        if s[0] > 0 and s[-1] >= 1e-4 * s[0]:
            return (V if m <= n else (M @ V) / s), s
    U, s, _ = np.linalg.svd(M, full_matrices=False)
    return U[:, :k], s[:k]


def intruder_dimensions(
    W0, W_ft, k: int = 10, eps: float = 0.5, *, base_basis: np.ndarray | None = None
) -> tuple[int, np.ndarray]:
    """Intruder dimensions (Shuttleworth et al. 2024; PEFT's ``reduce_intruder_dimension``).

    For each of the top-k left singular vectors u_j of W_ft take
        c_j = max_i |<u_j, u0_i>|   over ALL min(m, n) left singular vectors u0_i of W0;
    u_j is an intruder if c_j < eps.  Returns (number of intruders, c as a length-k array).
    ``base_basis`` (from :func:`left_singular_basis`) skips recomputing W0's SVD.

    Note: if W0 is square and full rank its basis spans the whole space, so c_j >= 1/sqrt(m);
    at m = 2048 that is 0.022, far below eps = 0.5, so the test still discriminates.
    """
    W_ft = _matrix(W_ft)
    U0 = left_singular_basis(W0) if base_basis is None else base_basis
    if U0.shape[0] != W_ft.shape[0]:
        raise ValueError(f"row mismatch: W0 basis {U0.shape}, W_ft {W_ft.shape}")
    Uk, _ = top_left_singular_vectors(W_ft, k)
    cos = np.abs(Uk.T @ U0).max(axis=1)
    return int(np.sum(cos < eps)), cos


def module_summary(
    name: str,
    W0,
    W_ft,
    k: int = 10,
    eps: float = 0.5,
    *,
    base_basis: np.ndarray | None = None,
) -> dict:
    """Spectral summary of one module's update delta = W_ft - W0 (all in float64).

    Keys: name, shape, delta_fro, delta_rel (||delta||_F / ||W0||_F), delta_spec (||delta||_2),
    stable_rank, effective_rank, r90 (of delta), n_intruders, intruder_max_cos (list, length
    k), k, eps.  One singular-value decomposition of delta (values only) feeds all three rank
    measures.
    """
    W0, W_ft = _matrix(W0), _matrix(W_ft)
    if W0.shape != W_ft.shape:
        raise ValueError(f"{name}: shape mismatch {W0.shape} vs {W_ft.shape}")
    delta = W_ft - W0
    s = singular_values(delta)
    n_intr, cos = intruder_dimensions(W0, W_ft, k, eps, base_basis=base_basis)
    w0_fro = float(np.linalg.norm(W0))
    delta_fro = float(np.sqrt(np.sum(s**2)))
    return {
        "name": name,
        "shape": tuple(W0.shape),
        "delta_fro": delta_fro,
        "delta_rel": delta_fro / w0_fro if w0_fro > 0 else float("nan"),
        "delta_spec": float(s[0]) if s.size else 0.0,
        "stable_rank": _stable_rank_sv(s),
        "effective_rank": _effective_rank_sv(s),
        "r90": _r_energy_sv(s, 0.9),
        "n_intruders": n_intr,
        "intruder_max_cos": cos.tolist(),
        "k": int(k),
        "eps": float(eps),
    }


def summarize_modules(items: Iterable[tuple[str, object, object]], k: int = 10, eps: float = 0.5) -> Iterator[dict]:
    """Lazily yield :func:`module_summary` for each (name, W0, W_ft), one module at a time.

    Only the current module's matrices (plus the last base SVD) are held, so memory stays
    bounded when ``items`` is a generator reading weights from disk.  W0's left singular basis
    is reused while consecutive items pass the *same* W0 object: iterate module-major (all
    fine-tuned variants of one module in a row, yielding the same W0 array) to compute each
    base SVD once.
    """
    last_w0, last_basis = None, None
    for name, W0, W_ft in items:
        if W0 is not last_w0:
            last_w0, last_basis = W0, left_singular_basis(W0)
        yield module_summary(name, W0, W_ft, k, eps, base_basis=last_basis)


# ------------------------------------------------------------------------------------------------ weight names
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# the block lists of the families lorascope supports (lorascope.models.families: Llama-likes `model.layers.<i>`, RoBERTa and
# BERT `roberta.encoder.layer.<i>`); written here too because analysis/ imports nothing of the torch side
BLOCK_LISTS = ("layers", "layer", "h")  # GPT-2: `transformer.h.<i>`
# an encoder's block linears, by their path inside the block (RoBERTa/BERT: `output.dense` and
# `attention.output.dense` are two modules, so the short name is the path, not the last part)
FUSED_LINEARS = ("qkv_proj", "gate_up_proj")  # Phi-3's fused projections (q, k, v in one; gate and up in one)
ENCODER_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                   "intermediate.dense", "output.dense")  # fmt: skip
# GPT-2's block projections by path (attn.c_proj and mlp.c_proj share a short name); transformers' Conv1D stores them
# in x out: `tensorio.TensorFolder` returns them transposed (nn.Linear's out x in), as PEFT's LoRA B A is
GPT2_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def module_parts(name: str) -> tuple[int | None, str]:
    """('model.layers.3.self_attn.q_proj.weight') -> (3, 'q_proj'); an encoder's
    ('roberta.encoder.layer.3.attention.self.query.weight') -> (3, 'attention.self.query')."""
    parts = name.split(".")
    i = next((k + 1 for k, p in enumerate(parts) if p in BLOCK_LISTS), None)
    block = int(parts[i]) if i is not None and i < len(parts) and parts[i].isdigit() else None
    if block is not None and i is not None and ".".join(parts[i + 1 : -1]) in (*ENCODER_LINEARS, *GPT2_LINEARS):
        return block, ".".join(parts[i + 1 : -1])
    return block, parts[-2] if len(parts) >= 2 else name


def block_linears(names: Iterable[str]) -> tuple[list[str], int]:
    """(the decoder linears' weight names among `names` (`LINEAR_NAMES` inside a block), the number of blocks they
    span), e.g. the base weights' names: what a top_layers update is read on."""
    linears = [n for n in names if n.endswith(".weight") and module_parts(n)[0] is not None
               and module_parts(n)[1] in LINEAR_NAMES]  # fmt: skip
    return linears, 1 + max((module_parts(n)[0] for n in linears), default=-1)
