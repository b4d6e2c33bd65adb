"""A LoRA adapter's update, exactly as PEFT builds it: rank and scale per module, delta W = scale * B @ A, and the
spectral summary of W0 + delta from the factors.

PEFT (0.21, `peft.tuners.lora.model.LoraModel._create_and_replace`) picks a module's rank and alpha with
`peft.utils.other.get_pattern_key`: the FIRST key of `rank_pattern` / `alpha_pattern` (in the config's order) for
which `re.match(rf"(.*\\.)?({key})$", module_key)` matches, i.e. the key is a regular expression that must match the
whole module name or a suffix starting after a dot. `pattern_key` restates that rule (a test checks it against
PEFT's function); it is the only copy in this package. PEFT saves adapter_config.json with `sort_keys=True`, so the
order that decides when an adapter is read back (by PEFT or here) is the file's sorted one; `adapter_deltas` checks
the resulting rank against the factors' shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["pattern_key", "lora_scale", "adapter_deltas", "lora_module_summary", "dora_weight", "ia3_weight",
           "DenseUpdates", "dora_updates", "ia3_updates"]


def pattern_key(pattern_keys: Iterable[str], module_key: str) -> str | None:
    """The key of `rank_pattern`/`alpha_pattern` that PEFT applies to `module_key`, or None (the config's global r /
    lora_alpha apply): the first key k, in order, with `re.match(rf"(.*\\.)?({k})$", module_key)`."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", module_key):
            return key
    return None


def lora_scale(config: Mapping[str, Any], module_key: str) -> tuple[int, float]:
    """(rank, scale) of one adapted module from adapter_config.json: alpha / r, or alpha / sqrt(r) with rsLoRA, r and
    alpha taken from `rank_pattern` / `alpha_pattern` by PEFT's rule (`pattern_key`)."""
    if config.get("use_dora"):
        raise ValueError("a DoRA adapter's update is not scale * B @ A (see dora_weight)")
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rk, ak = pattern_key(ranks, module_key), pattern_key(alphas, module_key)
    r = int(ranks[rk]) if rk is not None else int(config["r"])
    alpha = float(alphas[ak]) if ak is not None else float(config["lora_alpha"])
    return r, (alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)


def adapter_deltas(config: Mapping[str, Any], factors: Mapping[str, tuple[np.ndarray, np.ndarray]]
                   ) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:  # fmt: skip
    """{base weight name: (B, A, scale)} from an adapter's config and {module key: (B, A)} (`tensorio.read_adapter`);
    delta W = scale * B @ A. The rank in the config must be the factors' (a mismatch means the patterns were read
    wrong)."""
    out = {}
    for key, (B, A) in factors.items():
        r, scale = lora_scale(config, key)
        if A.shape[0] != r or B.shape[1] != r:
            raise ValueError(f"{key}: adapter config gives rank {r}, the factors have A {A.shape}, B {B.shape}")
        out[key + ".weight"] = (B, A, scale)
    return out


def lora_module_summary(name: str, W0: np.ndarray, B: np.ndarray, A: np.ndarray, scale: float, k: int, eps: float,
                        base_basis: np.ndarray) -> dict:  # fmt: skip
    """`weights.module_summary` of W_ft = W0 + scale B A, with the spectrum of delta from its r x r core.

    delta = scale B A = Q_B (scale R_B R_A^T) Q_A^T (thin QRs of B and A^T), so delta's non-zero singular values are
    those of the r x r core: every rank measure is exact at O((m + n) r^2) instead of a full m x n SVD. The
    intruder test still needs the top-k singular vectors of the whole W_ft."""
    from lorascope.analysis import weights as wt

    _, rb = np.linalg.qr(B)
    _, ra = np.linalg.qr(A.T)
    core = scale * rb @ ra.T
    s = wt.singular_values(core)
    n_intr, cos = wt.intruder_dimensions(W0, W0 + scale * (B @ A), k, eps, base_basis=base_basis)
    w0_fro = float(np.linalg.norm(W0))
    delta_fro = float(np.sqrt(np.sum(s**2)))
    return {
        "name": name, "shape": tuple(W0.shape), "delta_fro": delta_fro,
        "delta_rel": delta_fro / w0_fro if w0_fro > 0 else float("nan"), "delta_spec": float(s[0]) if s.size else 0.0,
        "stable_rank": wt.stable_rank(core), "effective_rank": wt.effective_rank(core), "r90": wt.r90(core),
        "n_intruders": n_intr, "intruder_max_cos": cos.tolist(), "k": int(k), "eps": float(eps),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ DoRA, IA3
def dora_weight(W0: np.ndarray, B: np.ndarray, A: np.ndarray, scale: float, magnitude: np.ndarray) -> np.ndarray:
    """The weight a DoRA layer computes with (Liu et al. 2024; PEFT 0.21 `tuners.lora.dora.DoraLinearLayer`):
    V = W0 + scale B A, W' = diag(m / ||V||_row) V, the norm of each output row over the input features
    (`get_weight_norm`: `torch.linalg.norm(W0 + scaling * lora_weight, dim=1)`; forward: `mag_norm_scale =
    magnitude / weight_norm`, result = mag_norm_scale * (W0 x + scale B A x)). The update is W' - W0, not scale B A."""
    V = W0.astype(np.float64) + scale * (B.astype(np.float64) @ A.astype(np.float64))
    norm = np.linalg.norm(V, axis=1)
    return (magnitude.astype(np.float64) / norm)[:, None] * V


def ia3_weight(W0: np.ndarray, vector: np.ndarray, feedforward: bool) -> np.ndarray:
    """The weight an IA3 layer computes with (Liu et al. 2022; PEFT 0.21 `tuners.ia3.layer.Linear.forward`): a
    feed-forward module scales its input, `W0 (l * x)` = W0 diag(l) (`ia3_l` of shape 1 x in); any other scales its
    output, `l * (W0 x)` = diag(l) W0 (`ia3_l` of shape out x 1). On a biased layer the output scaling scales the
    bias too (a vector, which weights.csv's matrix measures leave out; Llama has no biases)."""
    v = vector.astype(np.float64).reshape(-1)
    W = W0.astype(np.float64)
    return W * v[None, :] if feedforward else v[:, None] * W


class DenseUpdates:
    """{weight name: W_ft} computed on demand from an adapter, for `updates.update_rows` (form "dense": the modules
    listed here only, their `module_summary` of W_ft - W0). `source` names how W_ft was computed."""

    def __init__(self, source: str, names: list[str], make) -> None:
        self.source, self._names, self._make = source, sorted(names), make

    def __iter__(self):
        return iter(self._names)

    def get(self, name: str) -> np.ndarray:
        return self._make(name)


def dora_updates(config: Mapping[str, Any], factors: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 magnitudes: Mapping[str, np.ndarray], base) -> DenseUpdates:  # fmt: skip
    """A DoRA adapter's modules as W' (`dora_weight`); scale per module as for plain LoRA (`lora_scale` without the
    DoRA refusal: the scale of B A inside V is PEFT's usual alpha / r or alpha / sqrt(r))."""
    plain = {**config, "use_dora": False}
    missing = sorted(set(factors) - set(magnitudes))
    if missing:
        raise ValueError(f"DoRA adapter without a magnitude vector for {missing[:3]}")

    def make(name: str) -> np.ndarray:
        key = name.removesuffix(".weight")
        B, A = factors[key]
        r, scale = lora_scale(plain, key)
        if A.shape[0] != r:
            raise ValueError(f"{key}: adapter config gives rank {r}, A has {A.shape}")
        return dora_weight(base.get(name), B, A, scale, magnitudes[key])

    return DenseUpdates("dora_weight", [k + ".weight" for k in factors], make)


def ia3_updates(config: Mapping[str, Any], vectors: Mapping[str, np.ndarray], base) -> DenseUpdates:
    """An IA3 adapter's modules as W' (`ia3_weight`); a module is feed-forward when PEFT's rule matches it against
    `feedforward_modules` (an entry equal to the module name or a suffix after a dot)."""
    ff = config.get("feedforward_modules") or []
    ff = [ff] if isinstance(ff, str) else list(ff)

    def is_ff(key: str) -> bool:
        return any(key == f or key.endswith("." + f) for f in ff)

    def make(name: str) -> np.ndarray:
        key = name.removesuffix(".weight")
        return ia3_weight(base.get(name), vectors[key], is_ff(key))

    return DenseUpdates("ia3_weight", [k + ".weight" for k in vectors], make)
