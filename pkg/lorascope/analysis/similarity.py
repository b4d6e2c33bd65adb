"""Representation similarity: linear CKA (biased and debiased), HSIC, per-example cosine, and the registry of the
measures the drift rows carry (`MEASURES`).

A representation is an array X of shape (n, d): one row per example, one column per feature.
Two representations being compared must hold the same examples in the same row order; their
feature counts may differ. Everything is computed in float64 whatever the input dtype.

References
----------
Kornblith, Norouzi, Lee & Hinton (2019), "Similarity of Neural Network Representations
    Revisited", ICML.  Linear CKA, and its debiased variant in the authors' notebook
    (google-research/representation_similarity).
Gretton, Bousquet, Smola & Schoelkopf (2005), "Measuring Statistical Dependence with
    Hilbert-Schmidt Norms", ALT.  Biased HSIC estimator.
Song, Smola, Gretton, Bedo & Borgwardt (2012), "Feature Selection via Dependence
    Maximization", JMLR 13.  Unbiased HSIC estimator (their eq. 5).
Szekely & Rizzo (2014), "Partial distance correlation with methods for dissimilarities",
    Ann. Statist. 42(6).  U-centring; an equivalent form of the unbiased estimator.

Why the debiased estimator matters here: with n = 750 examples and d = 2048 features the
biased (plain) linear CKA of two *independent* isotropic Gaussian representations is about
d / (d + n) ~ 0.73, not 0.  Reading 1 - CKA_biased as "drift" therefore understates how
different unrelated representations are, and its value moves with n.  The debiased CKA of
independent representations is ~0 at any n (see tests/analysis/test_similarity.py).

Caching: the expensive part of CKA is the n x n Gram matrix (O(n^2 d)); given Grams, a pair
costs O(n^2).  :class:`CachedGram` holds everything one representation contributes, so
:func:`pairwise_drift` forms each Gram once and reuses it for every pair it enters.

The measures the drift rows carry are a registry (`MEASURES`, one :class:`Measure` each): the function (features
in, a float out, float64), the row column it fills, whether it is a CKA (its rows then also carry drift = 1 - value),
whether it enters the seed noise floor, and its display name. A new measure is one decorated function:

    @register_measure("rbf", column="cka_rbf", label="RBF CKA", cka=True, noise_floor=True)
    def rbf_cka(X, Y) -> float:
        ...  # ten lines of numpy, its formula and reference in the docstring

and the drift CSVs, the representation rows and the report pick it up. A measure may name a fast path over many
pairs (`fast`, a method of :class:`PairBatch`): the built-in ones share one Gram per representation (CKA) and one
per-example Gram (cosines); tests/analysis/test_similarity.py checks each fast path against its function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lorascope.registry import Registry

__all__ = [
    "MEASURES",
    "CachedGram",
    "GramCache",
    "Measure",
    "PairBatch",
    "SubsetDebiasedCKA",
    "center_gram",
    "centered_cosine",
    "cka_cached",
    "cka_from_grams",
    "cka_measures",
    "debiased_cka",
    "drift",
    "gram_linear",
    "hsic_biased",
    "hsic_unbiased",
    "layer_measures",
    "linear_cka",
    "mean_cosine",
    "measure_of_column",
    "noise_floor_measures",
    "pairwise_drift",
    "register_measure",
    "row_columns",
]


# A centred row |x - mu|^2 at or below this fraction of |x|^2 is zero up to float64 rounding (the rounding error of
# |x - mu|^2 formed as |x|^2 - 2 mu.x + |mu|^2 is ~1e-16 |x|^2): its centred cosine is 0/0, stored as NaN, never as the
# 1.0 or ~3e-8 that rounding noise would give (a constant representation, e.g. the last token's embedding output when
# every example ends with the same token).
CENTRED_ZERO = 1e-10


def _features(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D (n_examples, n_features) array, got shape {X.shape}")
    return X


def _gram(K) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"expected a square Gram matrix, got shape {K.shape}")
    return K


def _same_n(a: np.ndarray, b: np.ndarray) -> int:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"different numbers of examples: {a.shape[0]} vs {b.shape[0]}")
    return a.shape[0]


# ---------------------------------------------------------------------------------------------
# The measure registry: what the drift rows carry, one entry per measure.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """A similarity measure the drift rows carry, and what it produces.

      name         the registry key, and the key of the measure in the drift summary ("debiased")
      function     the measure itself: function(X, Y) -> float, or function(X, Y, base_mean) when
                   `uses_base_mean` (the base model's mean vector, the same for both sides)
      column       the row column of its value ("cka_debiased")
      label        its display name ("debiased CKA")
      cka          a CKA: the rows also carry drift = 1 - value in `drift_column` ("drift_debiased")
      noise_floor  also measured between two seeds of a method (noise_floor.csv); False: only against
                   the base model (the cosines compare coordinates, and the centred one subtracts the
                   base mean)
      uses_base_mean  the function takes the base model's mean as a third argument (so it is measured
                   against the base only)
      fast         optional: the values of many pairs at once from a :class:`PairBatch`, equal to
                   `function` on each pair (tests/analysis/test_similarity.py checks it)
    """

    name: str
    function: Callable[..., float]
    column: str
    label: str
    cka: bool = False
    noise_floor: bool = False
    uses_base_mean: bool = False
    fast: Callable[[PairBatch], list[float]] | None = None

    @property
    def drift_column(self) -> str | None:
        return f"drift_{self.name}" if self.cka else None

    def __call__(self, X, Y, base_mean=None) -> float:
        if self.uses_base_mean:
            if base_mean is None:
                raise ValueError(f"the {self.label} needs the base model's mean vector")
            return self.function(X, Y, base_mean)
        return self.function(X, Y)

    def values(self, batch: PairBatch) -> list[float]:
        """The measure of every pair of the batch: the fast path, else the function pair by pair."""
        if self.fast is not None:
            return self.fast(batch)
        return [self(batch.reps[a], batch.reps[b], batch.base_mean) for a, b in batch.pairs]

    def columns(self, value: float) -> dict[str, float]:
        """The row columns of one value: the value, and for a CKA its drift."""
        return {self.column: value, self.drift_column: drift(value)} if self.cka else {self.column: value}


MEASURES: Registry[Measure] = Registry("similarity measure")


def register_measure(name: str, *, column: str, label: str, cka: bool = False, noise_floor: bool = False,
                     uses_base_mean: bool = False, fast: Callable[[PairBatch], list[float]] | None = None
                     ) -> Callable[[Callable[..., float]], Callable[..., float]]:  # fmt: skip
    """Decorator: register the function as the measure `name` (see :class:`Measure`); returns the function as is."""

    def add(function: Callable[..., float]) -> Callable[..., float]:
        measure = Measure(name, function, column, label, cka, noise_floor, uses_base_mean, fast)
        if uses_base_mean and noise_floor:
            raise ValueError(f"measure {name!r}: a measure that uses the base mean is measured against the base only")
        taken = {c for _, m in MEASURES.items() for c in (m.column, m.drift_column) if c}
        clash = taken & {measure.column, measure.drift_column}
        if clash:
            raise ValueError(f"measure {name!r}: column(s) {sorted(clash)} already filled by another measure")
        MEASURES.add(name, measure)
        return function

    return add


def layer_measures() -> list[Measure]:
    """Every registered measure, in registration order: the drift rows of each cell against the base."""
    return [m for _, m in MEASURES.items()]


def noise_floor_measures() -> list[Measure]:
    """The measures also taken between two seeds of a method: the seed noise floor rows."""
    return [m for m in layer_measures() if m.noise_floor]


def cka_measures() -> list[Measure]:
    """The CKA measures (drift = 1 - value): those whose drift the summary, the hypotheses and the report use."""
    return [m for m in layer_measures() if m.cka]


def measure_of_column(column: str) -> Measure:
    """The measure whose value fills `column` ("cka_debiased" -> the debiased CKA)."""
    for m in layer_measures():
        if m.column == column:
            return m
    raise KeyError(f"no similarity measure fills column {column!r}; columns: {[m.column for m in layer_measures()]}")


def row_columns(measures: Sequence[Measure]) -> list[str]:
    """The columns rows of these measures carry, in the drift CSVs' order: every CKA's value, then every CKA's drift,
    then every other measure's value (each group in registration order)."""
    ckas = [m for m in measures if m.cka]
    return [m.column for m in ckas] + [m.drift_column for m in ckas] + [m.column for m in measures if not m.cka]


class PairBatch:
    """The pairs of one :func:`pairwise_drift` call and what the measures' fast paths share among them.

    ``reps``: name -> (n, d) features; ``cache``: their centred Grams (:class:`GramCache`); ``base_mean``: the base
    model's mean vector, or None. Linear and debiased CKA of a pair come from one n^2 dot product of two cached Grams
    (:func:`cka_cached`); both cosines of every pair from one batched per-example Gram (:func:`_row_grams`).
    """

    def __init__(self, reps: Mapping[str, object], pairs: Sequence[tuple[str, str]], cache: GramCache,
                 base_mean: np.ndarray | None = None) -> None:  # fmt: skip
        self.reps, self.pairs, self.cache, self.base_mean = reps, list(pairs), cache, base_mean
        self._cka: list[tuple[float, float]] | None = None
        self._cosines: tuple[list[float], list[float]] | None = None

    def _cka_pairs(self) -> list[tuple[float, float]]:
        if self._cka is None:
            self._cka = [cka_cached(self.cache[a], self.cache[b]) for a, b in self.pairs]
        return self._cka

    def linear_cka(self) -> list[float]:
        return [lin for lin, _ in self._cka_pairs()]

    def debiased_cka(self) -> list[float]:
        return [deb for _, deb in self._cka_pairs()]

    def _row_cosines(self) -> tuple[list[float], list[float]]:
        """(cosine, centred cosine) of every pair from the per-example Gram: <x_i, y_i> for all pairs at once, and
        <x - mu, y - mu> = <x, y> - <mu, x> - <mu, y> + |mu|^2, whose float64 rounding error is
        ~1e-16 * |x|^2 / |x - mu|^2. ValueError when either is undefined for some pair (a zero-norm row)."""
        if self._cosines is None:
            if self.base_mean is None:
                raise ValueError("the cosines of pairwise_drift are taken against a base (base=None)")
            mu = self.base_mean
            mumu = float(mu @ mu)
            names = list(dict.fromkeys(name for pair in self.pairs for name in pair))
            pos = {name: k for k, name in enumerate(names)}
            G, mux = _row_grams(self.reps, names, mu)
            cosines, centered = [], []
            for a, b in self.pairs:
                i, j = pos[a], pos[b]
                xy, xx, yy = G[:, i, j], G[:, i, i], G[:, j, j]
                cxx = xx - 2.0 * mux[:, i] + mumu
                cyy = yy - 2.0 * mux[:, j] + mumu
                if np.any(xx <= 0) or np.any(yy <= 0):
                    raise ValueError(f"cosine undefined for a zero-norm row in {a} or {b}")
                cosines.append(float(np.mean(xy / np.sqrt(xx * yy))))
                if np.any(cxx <= CENTRED_ZERO * xx) or np.any(cyy <= CENTRED_ZERO * yy):  # 0/0: a row at the base mean
                    centered.append(float("nan"))
                    continue
                cxy = xy - mux[:, i] - mux[:, j] + mumu
                centered.append(float(np.mean(cxy / np.sqrt(cxx * cyy))))
            self._cosines = (cosines, centered)
        return self._cosines

    def mean_cosine(self) -> list[float]:
        return self._row_cosines()[0]

    def centered_cosine(self) -> list[float]:
        return self._row_cosines()[1]


# ---------------------------------------------------------------------------------------------
# Kernels, HSIC and the measures.
# ---------------------------------------------------------------------------------------------


def gram_linear(X) -> np.ndarray:
    """Linear-kernel Gram matrix K = X X^T, shape (n, n), float64."""
    X = _features(X)
    return X @ X.T


def center_gram(K) -> np.ndarray:
    """Double-centred Gram matrix H K H, with H = I - 1 1^T / n.

    K_c[i, j] = K[i, j] - mean_k K[k, j] - mean_k K[i, k] + mean_kl K[k, l].
    For K = X X^T this is the Gram matrix of the column-centred features (Kornblith et al.
    2019, sec. 3).  Returns a new array.
    """
    K = _gram(K)
    col = K.mean(axis=0)
    row = K.mean(axis=1)
    return K - row[:, None] - col[None, :] + col.mean()


def hsic_biased(K, L) -> float:
    """Biased HSIC (Gretton et al. 2005): tr(K H L H) / (n - 1)^2.

    Its bias is O(1/n) and positive for n < d linear kernels; CKA built on it
    (:func:`linear_cka`) inherits that bias.
    """
    K, L = _gram(K), _gram(L)
    n = _same_n(K, L)
    return float(np.vdot(center_gram(K), center_gram(L)) / (n - 1) ** 2)


def hsic_unbiased(K, L) -> float:
    """Unbiased HSIC estimator of Song et al. (2012, eq. 5), n >= 4.

        HSIC_u(K, L) = 1 / (n (n - 3)) * [ tr(K~ L~)
                                           + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2))
                                           - 2 / (n - 2) * 1^T K~ L~ 1 ]

    where K~, L~ are K, L with their diagonals set to zero.  It is a U-statistic: no term
    pairs an example with itself, which is what removes the bias -- and also why it breaks
    when an example appears twice (a duplicated row puts a "self" term off the diagonal).
    HSIC_u is unchanged by K -> K + a 1^T + 1 a^T + c 1 1^T, so in particular by centring the
    features or the Gram matrix.
    """
    K, L = _gram(K), _gram(L)
    n = _same_n(K, L)
    if n < 4:
        raise ValueError("the unbiased HSIC estimator needs n >= 4 examples")
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    rk, rl = Kt.sum(axis=1), Lt.sum(axis=1)
    val = _hsic_u_core(np.vdot(Kt, Lt), rk.sum(), rl.sum(), rk @ rl, n)
    return float(val / (n * (n - 3)))


def _hsic_u_core(tr_kl: float, sum_k: float, sum_l: float, rk_rl: float, n: int) -> float:
    """n (n - 3) * HSIC_u from its four ingredients (tr(K~L~), 1^T K~ 1, 1^T L~ 1, 1^T K~ L~ 1)."""
    return tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * rk_rl / (n - 2)


@register_measure("linear", column="cka_linear", label="linear CKA", cka=True, noise_floor=True,
                  fast=PairBatch.linear_cka)  # fmt: skip
def linear_cka(X, Y) -> float:
    """Linear CKA, feature-space form (Kornblith et al. 2019, eq. 5), float64.

        CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

    with the columns of X and Y centred first.  Equals :func:`cka_from_grams` on the linear
    Grams.  Biased: at n < d it is far from 0 for unrelated representations (see module doc).
    Cost O(n d^2); use :func:`pairwise_drift` for many pairs.
    """
    X, Y = _features(X), _features(Y)
    _same_n(X, Y)
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    num = np.linalg.norm(Y.T @ X) ** 2
    den = np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)
    return float(num / den) if den > 0 else float("nan")


def cka_from_grams(Kx, Ky, debiased: bool = False) -> float:
    """CKA from Gram matrices.

    Biased:   <H Kx H, H Ky H>_F / (||H Kx H||_F ||H Ky H||_F)   (= HSIC normalised).
    Debiased: HSIC_u(Kx, Ky) / sqrt(HSIC_u(Kx, Kx) HSIC_u(Ky, Ky))  (Song et al. 2012 HSIC_u;
              Kornblith et al.'s notebook, ``cka(..., debiased=True)``).

    The Grams are double-centred first in both cases; HSIC_u is invariant to that, and it
    avoids cancellation when the features have a large common mean (LLM hidden states do).
    Returns nan when a denominator is not positive (constant representation).
    """
    Kc, Lc = center_gram(Kx), center_gram(Ky)
    _same_n(Kc, Lc)
    if not debiased:
        den = np.linalg.norm(Kc) * np.linalg.norm(Lc)
        return float(np.vdot(Kc, Lc) / den) if den > 0 else float("nan")
    kk, ll = hsic_unbiased(Kc, Kc), hsic_unbiased(Lc, Lc)
    if kk <= 0 or ll <= 0:
        return float("nan")
    return float(hsic_unbiased(Kc, Lc) / np.sqrt(kk * ll))


@register_measure("debiased", column="cka_debiased", label="debiased CKA", cka=True, noise_floor=True,
                  fast=PairBatch.debiased_cka)  # fmt: skip
def debiased_cka(X, Y) -> float:
    """Debiased linear CKA of two representations (features in, see :func:`cka_from_grams`).

    CKA_u = HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L)),  K = X X^T, L = Y Y^T.
    ~0 in expectation for independent representations at any n; exactly 1 for CKA_u(X, X).
    """
    X, Y = _features(X), _features(Y)
    _same_n(X, Y)
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    return cka_from_grams(X @ X.T, Y @ Y.T, debiased=True)


def drift(cka):
    """Representation drift = 1 - CKA (0: same up to rotation/isotropic scale)."""
    return 1.0 - cka


@register_measure("cosine", column="cosine", label="cosine", fast=PairBatch.mean_cosine)
def mean_cosine(X, Y) -> float:
    """Mean over examples of the cosine between matching rows: mean_i <x_i, y_i>/(|x_i| |y_i|).

    Unlike CKA this is not invariant to rotations of feature space: it asks whether each
    example's vector still points the same way in the *same* coordinates.  Raises on a
    zero-norm row.
    """
    X, Y = _features(X), _features(Y)
    _same_n(X, Y)
    if X.shape[1] != Y.shape[1]:
        raise ValueError("cosine needs the same feature dimension in both representations")
    nx, ny = np.linalg.norm(X, axis=1), np.linalg.norm(Y, axis=1)
    if np.any(nx == 0) or np.any(ny == 0):
        raise ValueError("cosine undefined for a zero-norm row")
    return float(np.mean(np.einsum("ij,ij->i", X, Y) / (nx * ny)))


@register_measure("centered_cosine", column="centered_cosine", label="centred cosine", uses_base_mean=True,
                  fast=PairBatch.centered_cosine)  # fmt: skip
def centered_cosine(X, Y, base_mean) -> float:
    """:func:`mean_cosine` after subtracting the base model's mean vector from both X and Y.

    Hidden states of decoder LMs share a large common direction, which pushes raw cosines
    towards 1 for any pair of inputs; subtracting the *base* model's mean (the same vector for
    both sides, so it is not fitted to the fine-tuned model) removes that floor.  Raises (0/0: the
    drift rows store NaN) when a centred row is zero up to rounding (`CENTRED_ZERO`).
    """
    X, Y = _features(X), _features(Y)
    mu = np.asarray(base_mean, dtype=np.float64).reshape(1, -1)
    for Z in (X, Y):
        if np.any(np.sum((Z - mu) ** 2, axis=1) <= CENTRED_ZERO * np.sum(Z**2, axis=1)):
            raise ValueError("centred cosine undefined (0/0): a row equals the base model's mean up to rounding")
    return mean_cosine(X - mu, Y - mu)


# ---------------------------------------------------------------------------------------------
# Cached Grams: O(n^2 d) once per representation, O(n^2) per pair.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class CachedGram:
    """Per-representation quantities for O(n^2) linear and debiased CKA against any partner.

    Built from the centred Gram Kc = Xc Xc^T (Xc: column-centred features):
      kt      Kc with its diagonal set to 0 (n x n, C-contiguous), shared by both estimators
      diag    diag(Kc)
      rowsum  kt @ 1          (for 1^T K~ L~ 1 = rowsum_K . rowsum_L)
      total   1^T kt 1
      self_lin  ||Kc||_F^2                 (biased self-HSIC up to (n-1)^2)
      self_u    n (n - 3) HSIC_u(Kc, Kc)   (debiased self-HSIC)
    For a pair, <Kc, Lc>_F = <kt, lt>_F + diag_K . diag_L and tr(K~ L~) = <kt, lt>_F, so both
    estimators share one n^2 dot product.
    """

    kt: np.ndarray
    diag: np.ndarray
    rowsum: np.ndarray
    total: float
    self_lin: float
    self_u: float

    @property
    def n(self) -> int:
        return self.kt.shape[0]

    @classmethod
    def from_features(cls, X) -> CachedGram:
        """Centre the columns of X (float64) and form Kc = Xc Xc^T."""
        X = _features(X)
        Xc = X - X.mean(axis=0)
        return cls._from_centered(Xc @ Xc.T)

    @classmethod
    def from_gram(cls, K) -> CachedGram:
        """From any Gram matrix (double-centred here)."""
        return cls._from_centered(center_gram(K))

    @classmethod
    def _from_centered(cls, kc: np.ndarray) -> CachedGram:
        """Takes ownership of ``kc`` (modified in place)."""
        n = kc.shape[0]
        if n < 4:
            raise ValueError("need n >= 4 examples for the debiased estimator")
        kc = np.ascontiguousarray(kc, dtype=np.float64)
        diag = kc.diagonal().copy()
        np.fill_diagonal(kc, 0.0)
        rowsum = kc.sum(axis=1)
        total = float(rowsum.sum())
        cross = float(np.dot(kc.ravel(), kc.ravel()))
        self_lin = cross + float(diag @ diag)
        self_u = _hsic_u_core(cross, total, total, float(rowsum @ rowsum), n)
        return cls(kc, diag, rowsum, total, self_lin, self_u)

    def subset(self, idx) -> CachedGram:
        """Restrict to the examples ``idx`` (K[idx][:, idx], then re-centred), O(m^2).

        ``idx`` must not repeat an example: with a duplicated row the debiased (U-statistic)
        estimator would count a self-pair as a distinct pair and be biased upwards, so
        resampling over examples has to be *without* replacement (subsampling / delete-d
        jackknife, see :func:`lorascope.analysis.stats.subsample_bootstrap_ci`).
        Re-centring matters for the biased estimator (the subset's mean is not the full mean);
        the debiased one is invariant to it.
        """
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        if idx.ndim != 1:
            raise ValueError("idx must be 1-D")
        if np.unique(idx).size != idx.size:
            raise ValueError("idx contains duplicated examples; subsample without replacement")
        sub = self.kt[np.ix_(idx, idx)]
        sub[np.diag_indices_from(sub)] = self.diag[idx]
        return CachedGram._from_centered(center_gram(sub))


def cka_cached(a: CachedGram, b: CachedGram) -> tuple[float, float]:
    """(linear CKA, debiased CKA) of two cached representations, O(n^2)."""
    if a.n != b.n:
        raise ValueError(f"different numbers of examples: {a.n} vs {b.n}")
    cross = float(np.dot(a.kt.ravel(), b.kt.ravel()))
    den_lin = np.sqrt(a.self_lin * b.self_lin)
    lin = (cross + float(a.diag @ b.diag)) / den_lin if den_lin > 0 else float("nan")
    if a.self_u <= 0 or b.self_u <= 0:
        return float(lin), float("nan")
    u = _hsic_u_core(cross, a.total, b.total, float(a.rowsum @ b.rowsum), a.n)
    return float(lin), float(u / np.sqrt(a.self_u * b.self_u))


class GramCache:
    """Name -> :class:`CachedGram`, computed lazily from ``reps`` the first time it is needed.

    >>> cache = GramCache(reps)          # reps: {name: (n, d) array}
    >>> cache.pair("base", "lora/s0")    # Grams of both formed once, reused by later pairs
    """

    def __init__(self, reps: Mapping[str, object] | None = None):
        self._reps = reps if reps is not None else {}
        self._grams: dict[str, CachedGram] = {}

    def add(self, name: str, X=None, *, gram: CachedGram | None = None) -> CachedGram:
        """Compute (from features ``X``) or insert (``gram``) the entry for ``name``."""
        g = gram if gram is not None else CachedGram.from_features(X)
        self._grams[name] = g
        return g

    def __getitem__(self, name: str) -> CachedGram:
        g = self._grams.get(name)
        if g is None:
            if name not in self._reps:
                raise KeyError(name)
            g = self.add(name, self._reps[name])
        return g

    def __contains__(self, name: str) -> bool:
        return name in self._grams or name in self._reps

    def __len__(self) -> int:
        return len(self._grams)

    def computed(self) -> list[str]:
        """Names whose Gram has been formed so far."""
        return list(self._grams)

    def pair(self, a: str, b: str) -> dict:
        """The noise-floor measures (the CKAs) of two cached representations as a drift row (:func:`pairwise_drift`)."""
        return pairwise_drift(self._reps, [(a, b)], cache=self)[0]

    def subset(self, idx, names: Iterable[str] | None = None) -> GramCache:
        """New cache restricted to examples ``idx`` (no duplicates), for jackknife/subsampling.

        Subsets ``names`` (default: every entry computed so far); O(m^2) each, no features
        needed.
        """
        names = self.computed() if names is None else list(names)
        out = GramCache()
        for name in names:
            out.add(name, gram=self[name].subset(idx))
        return out


def _row_grams(reps: Mapping[str, object], names: list[str], mu: np.ndarray, chunk: int = 64):
    """Per-example Gram across representations: G[i, a, b] = <x_i^a, x_i^b>, and <mu, x_i^a>.

    One batched float64 matmul over chunks of examples (memory ~ chunk * len(names) * d * 8
    bytes), instead of one row-wise dot product per pair.
    """
    arrays = [np.asarray(reps[name]) for name in names]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise ValueError(f"cosines need 2-D representations of one shape, got {sorted(shapes)}")
    n, d = arrays[0].shape
    G = np.empty((n, len(names), len(names)))
    mux = np.empty((n, len(names)))
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        S = np.empty((i1 - i0, len(names), d))
        for k, a in enumerate(arrays):
            S[:, k, :] = a[i0:i1]  # casts to float64
        G[i0:i1] = S @ S.transpose(0, 2, 1)
        mux[i0:i1] = S @ mu
    return G, mux


def pairwise_drift(
    reps: Mapping[str, object],
    pairs: Iterable[tuple[str, str]],
    base: str | None = None,
    cache: GramCache | None = None,
    measures: Sequence[Measure] | None = None,
) -> list[dict]:
    """The registered measures (`MEASURES`) of each pair of named representations, one row per pair.

    Default ``measures``: every one when ``base`` names an entry of ``reps`` (whose mean the centred cosine
    subtracts), else those of the seed noise floor (the CKAs). Each representation's centred Gram is formed once (in
    ``cache``, created if not given) and reused by every pair it enters; a pair then costs one n^2 dot product
    (:class:`PairBatch`).

    Returns one dict per pair: a, b, then `row_columns(measures)` (built-in: cka_linear, cka_debiased, drift_linear,
    drift_debiased [, cosine, centered_cosine]). ValueError where a measure is undefined for a pair (a zero-norm row
    for a cosine).
    """
    pairs = list(pairs)
    cache = GramCache(reps) if cache is None else cache
    if measures is None:
        measures = layer_measures() if base is not None else noise_floor_measures()
    base_mean = _features(reps[base]).mean(axis=0) if base is not None else None
    batch = PairBatch(reps, pairs, cache, base_mean)
    values = [m.values(batch) for m in measures]
    columns = row_columns(measures)
    rows = []
    for k, (a, b) in enumerate(pairs):
        row: dict = {}
        for m, vals in zip(measures, values, strict=True):
            row.update(m.columns(vals[k]))
        rows.append({"a": a, "b": b, **{c: row[c] for c in columns}})
    return rows


class SubsetDebiasedCKA:
    """Debiased CKA of two cached representations on many example subsets at once, closed form.

    The subsets are `n_resamples` sorted index sets of size m drawn without replacement exactly as
    `stats.subsample_bootstrap_ci(..., seed)` draws them (so its stat_fn can look the values up). For a subset S the
    unbiased HSIC (Song et al. 2012) needs tr(K~_S L~_S), 1^T K~_S 1, 1^T L~_S 1 and 1^T K~_S L~_S 1, where K~_S is the
    centred Gram restricted to S with its diagonal zeroed. HSIC_u is unchanged by re-centring a Gram (K + a1^T + 1a^T +
    c11^T), so restricting the full-sample centred Gram `CachedGram.kt` is enough; with s the 0/1 indicator of S:
        1^T K~_S 1 = s^T K s,   1^T K~_S L~_S 1 = sum_i s_i (K s)_i (L s)_i,   tr(K~_S L~_S) = s^T (K o L) s.
    All subsets at once are matrix products with the n x R indicator matrix: O(n^2 R) per model and per pair, against
    O(R m^2) fancy-indexing copies for `CachedGram.subset` (which it equals: tests/phases/test_drift.py)."""

    def __init__(self, n: int, m: int, n_resamples: int, seed: int) -> None:
        if not 4 <= m < n:
            raise ValueError(f"need 4 <= m < n (got m={m}, n={n})")
        rng = np.random.default_rng(seed)
        self.n, self.m, self.n_resamples, self.seed = n, m, n_resamples, seed
        self.index_sets = [np.sort(rng.choice(n, size=m, replace=False)) for _ in range(n_resamples)]
        self.S = np.zeros((n, n_resamples))
        for r, idx in enumerate(self.index_sets):
            self.S[idx, r] = 1.0

    def _core(self, tr_kl: np.ndarray, sum_k: np.ndarray, sum_l: np.ndarray, rk_rl: np.ndarray) -> np.ndarray:
        m = self.m  # m (m - 3) HSIC_u; the factor cancels in CKA
        return tr_kl + sum_k * sum_l / ((m - 1) * (m - 2)) - 2.0 * rk_rl / (m - 2)

    def prepare(self, gram: CachedGram) -> dict[str, np.ndarray]:
        """Per-representation terms: K s for every subset, 1^T K~_S 1, and the self HSIC_u."""
        S = self.S
        KS = gram.kt @ S
        total = np.einsum("ir,ir->r", S, KS)
        self_tr = np.einsum("ir,ir->r", S, (gram.kt * gram.kt) @ S)
        self_u = self._core(self_tr, total, total, np.einsum("ir,ir,ir->r", S, KS, KS))
        return {"KS": KS, "total": total, "self_u": self_u, "kt": gram.kt}

    def cka(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> np.ndarray:
        """Debiased CKA of a and b on each subset, shape (n_resamples,)."""
        S = self.S
        tr = np.einsum("ir,ir->r", S, (a["kt"] * b["kt"]) @ S)
        u = self._core(tr, a["total"], b["total"], np.einsum("ir,ir,ir->r", S, a["KS"], b["KS"]))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((a["self_u"] > 0) & (b["self_u"] > 0), u / np.sqrt(a["self_u"] * b["self_u"]), np.nan)

    def lookup(self, full_value: float, values: np.ndarray):
        """stat_fn for `stats.subsample_bootstrap_ci`: the full-sample value for arange(n), else the precomputed value
        of that index set (KeyError if the CI function ever draws other sets: the values would not belong to them)."""
        table = {idx.tobytes(): float(v) for idx, v in zip(self.index_sets, values, strict=True)}
        everything = np.arange(self.n).tobytes()

        def stat_fn(idx: np.ndarray) -> float:
            key = np.asarray(idx, dtype=np.int64).tobytes()
            if key == everything:
                return float(full_value)
            return table[key]

        return stat_fn
