"""drift: how far each fine-tuned model's representations and weights moved from the base, and what 3 seeds can say.

Size 1, CPU only, imports no torch: representations are read with `safetensors.numpy`, the math is
`lorascope.analysis` (numpy/scipy, float64). docs/analysis.md explains every measure.

Recipe
  1. require every `reps/<model>/<task>/` bundle, every cell's metrics and the stage model (ConfigError naming the
     missing bundle otherwise); the example ids of every model on a task must be identical (else LorascopeError);
  2. representations, one task, pooling and layer at a time (7 x n x d floats live at once at the reference size):
     one centred float64 Gram per model (`similarity.GramCache`), reused by every pair it enters:
       * each cell vs the base: linear CKA, debiased CKA (the primary measure), drift = 1 - CKA, mean cosine and
         cosine centred on the BASE model's mean vector -> `layer_rows.csv`;
       * each pair of seeds of one method (the seed noise floor) -> `noise_floor.csv`;
       * for the primary pooling, the debiased CKA of each cell vs the base on `RESAMPLES` example subsets of
         size n/2 drawn without replacement (closed form on the same Grams, `SubsetDebiasedCKA`), for the
         example-level CI of the drift reduction;
  3. weights, one module at a time (`analysis.weights`): per adapted module the update delta = W_ft - W0 (full cells;
     base weights from the stage bundle) or delta = scale * B @ A (LoRA cells, from the adapter's factors): stable
     rank, effective rank, r90, intruder dimensions (k=10, eps=0.5) -> `weights.csv`;
  4. statistics (`analysis.stats`): per task and method the mean and SD over seeds of the task metric and of the
     mean drift over layers; drift reduction % = 100 (FT - LoRA) / FT; paired t-test and exact sign-flip test over
     seeds (paired by seed; the sign-flip floor stated); Cohen's d_z; Holm across tasks; the subsampling CI of the
     reduction over examples; hypotheses H1a, H1b, H2 with verdict and evidence -> `summary.json`;
  5. commit `drift/`.

H2 needs the bench phase, which runs after drift in the pipeline: it is evaluated here when `bench/<backend>/` is
already committed, else recorded as not measured; the report phase re-evaluates it with `h2_hypothesis` when a bench
bundle appears later (and says so).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lorascope.errors import ConfigError, LorascopeError
from lorascope.phases import Phase, PhaseContext
from lorascope.study import FullMethod, LoraMethod, Study

SUMMARY_FORMAT = 1
MEASURES = ("linear", "debiased")
PRIMARY_MEASURE = "debiased"
RESAMPLES = 200  # example subsets for the CI of the drift reduction
CI_ALPHA = 0.05
INTRUDER_K = 10  # PEFT's intruder utility defaults (Shuttleworth et al. 2024)
INTRUDER_EPS = 0.5
# Full cells: the linear layers LoRA did not adapt are analysed too when their total size over all full cells is at
# most this many elements (the smoke model: yes; TinyLlama: 8.6e8 per cell, hours of SVDs on 2 cores: no).
EXTRA_LINEARS_MAX_ELEMENTS = 50_000_000
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

LAYER_COLUMNS = ["task", "method", "seed", "layer_index", "layer", "pooling", "cka_linear", "cka_debiased",
                 "drift_linear", "drift_debiased", "cosine", "centered_cosine"]  # fmt: skip
NOISE_COLUMNS = ["task", "method", "seed_a", "seed_b", "layer_index", "layer", "pooling", "cka_linear", "cka_debiased",
                 "drift_linear", "drift_debiased"]  # fmt: skip
WEIGHT_COLUMNS = ["task", "method", "seed", "cell", "block", "module", "name", "rows", "cols", "source", "delta_fro",
                  "delta_rel", "delta_spec", "stable_rank", "effective_rank", "r90", "n_intruders", "k", "eps",
                  "intruder_max_cos"]  # fmt: skip


# ------------------------------------------------------------------------------------------------ study layout
def primary_pooling(study: Study) -> str:
    """The pooling the hypotheses use: the masked mean when extracted (it uses every text token), else the first."""
    return "mean" if "mean" in study.extraction.pooling else study.extraction.pooling[0]


def method_roles(study: Study) -> tuple[FullMethod | None, list[LoraMethod]]:
    """(the reference full fine-tuning method, the LoRA methods compared with it)."""
    full = [m for m in study.methods if isinstance(m, FullMethod)]
    lora = [m for m in study.methods if isinstance(m, LoraMethod)]
    return (full[0] if full else None), lora


def task_cells(study: Study, task: str) -> list[Any]:
    return [c for c in study.cells() if c.task == task]


def seed_pairs(cells: list[Any]) -> list[tuple[Any, Any]]:
    """Pairs of cells of one method (same task) with different seeds: the seed noise floor."""
    out = []
    for method in dict.fromkeys(c.method for c in cells):
        out += list(itertools.combinations([c for c in cells if c.method == method], 2))
    return out


# ------------------------------------------------------------------------------------------------ reading reps
class RepsFile:
    """One `reps/<model>/<task>/` bundle, read lazily a layer at a time (safetensors.numpy slices, memory-mapped)."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        from lorascope.phases.extract import LAYERS_FILE, REPS_FILE

        self.folder = folder
        self.layers = json.loads((folder / LAYERS_FILE).read_text())
        self._file = safe_open(str(folder / REPS_FILE), framework="np")
        self.idx = np.asarray(self._file.get_tensor("idx"), dtype=np.int64)
        self.labels: list[str] = list(self.layers["labels"])
        self.shape = tuple(self._file.get_slice("mean").get_shape())

    def layer(self, pooling: str, index: int) -> np.ndarray:
        """float32 (n, d) states of one hidden-state entry."""
        return np.ascontiguousarray(self._file.get_slice(pooling)[index])


# ------------------------------------------------------------------------------------------------ example subsets
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

    def prepare(self, gram: Any) -> dict[str, np.ndarray]:
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


# ------------------------------------------------------------------------------------------------ representations
def representation_drift(
    study: Study, task: str, reps: Mapping[str, RepsFile], log: Any, resampler: SubsetDebiasedCKA | None
) -> tuple[list[dict], list[dict], dict[str, np.ndarray]]:
    """(layer rows vs base, seed-pair rows, per-cell sum of the subset drift over the primary pooling's defined layers).

    A layer where some CKA is undefined (a constant representation: e.g. the last token's embedding when every
    example ends in the same token) is left out of every mean over layers (`defined_layers`), also here."""
    from lorascope.analysis import similarity as sim

    cells = task_cells(study, task)
    pairs = [("base", c.name) for c in cells]
    spairs = seed_pairs(cells)
    labels = reps["base"].labels
    primary = primary_pooling(study)
    rows: list[dict] = []
    noise: list[dict] = []
    subset_sums = {c.name: np.zeros(resampler.n_resamples) for c in cells} if resampler else {}
    for pooling in study.extraction.pooling:
        for li, label in enumerate(labels):
            layer = {name: r.layer(pooling, li) for name, r in reps.items()}
            cache = sim.GramCache(layer)
            for c, row in zip(cells, drift_rows(layer, pairs, cache), strict=True):
                rows.append({"task": task, "method": c.method, "seed": c.seed, "layer_index": li, "layer": label,
                             "pooling": pooling, **{k: row[k] for k in LAYER_COLUMNS[6:]}})  # fmt: skip
            for (a, b), row in zip(spairs, sim.pairwise_drift(layer, [(a.name, b.name) for a, b in spairs], cache=cache), strict=True):
                noise.append({"task": task, "method": a.method, "seed_a": a.seed, "seed_b": b.seed, "layer_index": li,
                              "layer": label, "pooling": pooling, **{k: row[k] for k in NOISE_COLUMNS[7:]}})  # fmt: skip
            defined = all(math.isfinite(r["cka_linear"]) and math.isfinite(r["cka_debiased"]) for r in rows[-len(cells):])
            if not defined:
                log("CKA undefined at this layer (constant representation): left out of the layer means", task=task,
                    pooling=pooling, layer=label)  # fmt: skip
            if resampler is not None and pooling == primary and defined:
                base_terms = resampler.prepare(cache["base"])
                for c in cells:
                    subset_sums[c.name] += 1.0 - resampler.cka(base_terms, resampler.prepare(cache[c.name]))
            del layer, cache
        log("representations", task=task, pooling=pooling, layers=len(labels), models=len(reps))
    return rows, noise, subset_sums


def drift_rows(layer: Mapping[str, np.ndarray], pairs: list[tuple[str, str]], cache: Any) -> list[dict]:
    """`similarity.pairwise_drift` against the base with cosines; where a cosine is undefined (a zero vector, e.g. a
    constant representation minus its own mean) that pair's cosines are nan and its CKA values are kept."""
    from lorascope.analysis import similarity as sim

    try:
        return sim.pairwise_drift(layer, pairs, base="base", cache=cache)
    except ValueError:
        rows = sim.pairwise_drift(layer, pairs, cache=cache)
    mu = np.asarray(layer["base"], dtype=np.float64).mean(axis=0)
    for (a, b), row in zip(pairs, rows, strict=True):
        for key, fn in (("cosine", lambda x, y: sim.mean_cosine(x, y)), ("centered_cosine", lambda x, y: sim.centered_cosine(x, y, mu))):
            try:
                row[key] = fn(layer[a], layer[b])
            except ValueError:
                row[key] = float("nan")
    return rows


# ------------------------------------------------------------------------------------------------ weights
class TensorFolder:
    """Tensors of a HF folder or adapter (`*.safetensors`, sharded via `*.safetensors.index.json` too), read one at a
    time as float64 numpy. safetensors.numpy reads F32/F16/F64; bf16 (numpy has no bfloat16) is widened to float32
    bit-exactly from the file's header and raw bytes."""

    def __init__(self, folder: Path, stem: str) -> None:
        from safetensors import safe_open

        self.folder = folder
        self.files: dict[str, Path] = {}
        index = folder / f"{stem}.safetensors.index.json"
        single = folder / f"{stem}.safetensors"
        if index.is_file():
            for name, file in json.loads(index.read_text())["weight_map"].items():
                self.files[name] = folder / file
        elif single.is_file():
            with safe_open(str(single), framework="np") as f:
                self.files = dict.fromkeys(f.keys(), single)
        else:
            raise ConfigError(f"{folder}: no {stem}.safetensors (or sharded index) to read weights from")

    def names(self) -> list[str]:
        return sorted(self.files)

    def get(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        path = self.files[name]
        with safe_open(str(path), framework="np") as f:
            dtype = f.get_slice(name).get_dtype()
            if dtype != "BF16":
                return np.asarray(f.get_tensor(name), dtype=np.float64)
        return read_bf16(path, name).astype(np.float64)


def read_bf16(path: Path, name: str) -> np.ndarray:
    """A bf16 tensor of a safetensors file as float32 (bf16 is the top half of a float32: shift the bits up)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    info = header[name]
    begin, end = info["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - begin) // 2, offset=8 + n + begin)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def lora_scale(config: Mapping[str, Any], module_key: str) -> tuple[int, float]:
    """(rank, scale) of one adapted module from adapter_config.json: alpha / r, or alpha / sqrt(r) with rsLoRA, with
    PEFT's per-module `rank_pattern` / `alpha_pattern` (pattern = a suffix of the module's name)."""
    if config.get("use_dora"):
        raise ConfigError("drift: DoRA adapters are not supported (their update is not scale * B @ A)")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    for pattern, value in (config.get("rank_pattern") or {}).items():
        if module_key.endswith(pattern):
            r = int(value)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module_key.endswith(pattern):
            alpha = float(value)
    return r, (alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)


def adapter_deltas(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """{base weight name: (B, A, scale)} of a PEFT LoRA adapter folder; delta W = scale * B @ A."""
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = TensorFolder(folder, "adapter_model")
    out = {}
    for name in tensors.names():
        if ".lora_A." not in name:
            continue
        module = name.split(".lora_A.")[0]
        key = module.removeprefix("base_model.model.")
        _, scale = lora_scale(config, key)
        out[key + ".weight"] = (tensors.get(name.replace(".lora_A.", ".lora_B.")), tensors.get(name), scale)
    if not out:
        raise ConfigError(f"{folder}: adapter has no lora_A/lora_B tensors")
    return out


def lora_module_summary(name: str, W0: np.ndarray, B: np.ndarray, A: np.ndarray, scale: float, k: int, eps: float,
                        base_basis: np.ndarray) -> dict:  # fmt: skip
    """`weights.module_summary` of W_ft = W0 + scale B A, with the spectrum of delta from its r x r core.

    delta = scale B A = Q_B (scale R_B R_A^T) Q_A^T (thin QRs of B and A^T), so delta's non-zero singular values are
    those of the r x r core: every rank measure is exact at O((m + n) r^2) instead of a full m x n SVD. The
    intruder test still needs the top-k singular vectors of the whole W_ft."""
    from lorascope.analysis import weights as wt

    qb, rb = np.linalg.qr(B)
    qa, ra = np.linalg.qr(A.T)
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


def _module_parts(name: str) -> tuple[int | None, str]:
    """('model.layers.3.self_attn.q_proj.weight') -> (3, 'q_proj')."""
    parts = name.split(".")
    block = int(parts[parts.index("layers") + 1]) if "layers" in parts and parts[parts.index("layers") + 1].isdigit() else None
    return block, parts[-2] if len(parts) >= 2 else name


def weight_plan(study: Study, base: TensorFolder, cells: dict[str, tuple[Any, Path]]) -> tuple[list[str], dict[str, list[str]], bool]:
    """(every module name analysed, per cell the modules analysed for it, whether full cells got the extra linears).

    LoRA cells: the modules their adapter adapts. Full cells: the LoRA methods' target modules, and every other
    decoder linear when cheap (EXTRA_LINEARS_MAX_ELEMENTS)."""
    _, loras = method_roles(study)
    targets = {t for m in loras for t in m.target_modules} or set(LoraMethod().target_modules)  # no LoRA: its defaults
    linears = [n for n in base.names() if n.endswith(".weight") and _module_parts(n)[0] is not None
               and _module_parts(n)[1] in LINEAR_NAMES]  # fmt: skip
    adapted = [n for n in linears if _module_parts(n)[1] in targets]
    extra = [n for n in linears if n not in adapted]
    full_cells = [c for c, (cell, _) in cells.items() if isinstance(study.method(cell.method), FullMethod)]
    extra_elements = len(full_cells) * sum(int(np.prod(_shape(base, n))) for n in extra)
    with_extra = bool(extra) and extra_elements <= EXTRA_LINEARS_MAX_ELEMENTS
    per_cell: dict[str, list[str]] = {}
    for name, (cell, folder) in cells.items():
        if isinstance(study.method(cell.method), LoraMethod):
            per_cell[name] = sorted(adapter_deltas(folder / "adapter"))
        else:
            per_cell[name] = adapted + (extra if with_extra else [])
    modules = [n for n in linears if any(n in v for v in per_cell.values())]
    return modules, per_cell, with_extra


def _shape(t: TensorFolder, name: str) -> tuple[int, ...]:
    from safetensors import safe_open

    with safe_open(str(t.files[name]), framework="np") as f:
        return tuple(f.get_slice(name).get_shape())


def weight_rows(study: Study, base: TensorFolder, cells: dict[str, tuple[Any, Path]], log: Any) -> tuple[list[dict], bool]:
    """weights.csv rows, module-major: W0 and its left singular basis once per module, then every cell's update."""
    from lorascope.analysis import weights as wt
    from lorascope.log import progress

    modules, per_cell, with_extra = weight_plan(study, base, cells)
    readers: dict[str, Any] = {}
    for name, (cell, folder) in cells.items():
        if isinstance(study.method(cell.method), LoraMethod):
            readers[name] = ("lora", adapter_deltas(folder / "adapter"))
        else:
            readers[name] = ("full", TensorFolder(folder / "model", "model"))
    rows: list[dict] = []
    for module in progress(modules, len(modules), "weight modules", log, every=max(1, len(modules) // 10)):
        W0 = base.get(module)
        basis = wt.left_singular_basis(W0)
        block, short = _module_parts(module)
        for cname, (cell, _) in cells.items():
            if module not in per_cell[cname]:
                continue
            kind, reader = readers[cname]
            if kind == "lora":
                B, A, scale = reader[module]
                s = lora_module_summary(module, W0, B, A, scale, INTRUDER_K, INTRUDER_EPS, basis)
                source = "lora_factors"
            else:
                s = wt.module_summary(module, W0, reader.get(module), INTRUDER_K, INTRUDER_EPS, base_basis=basis)
                source = "full_delta"
            rows.append({"task": cell.task, "method": cell.method, "seed": cell.seed, "cell": cname, "block": block,
                         "module": short, "name": module, "rows": s["shape"][0], "cols": s["shape"][1], "source": source,
                         **{k: s[k] for k in ("delta_fro", "delta_rel", "delta_spec", "stable_rank", "effective_rank",
                                              "r90", "n_intruders", "k", "eps")},
                         "intruder_max_cos": ";".join(repr(float(c)) for c in s["intruder_max_cos"])})  # fmt: skip
    return rows, with_extra


# ------------------------------------------------------------------------------------------------ statistics
def json_safe(x: Any) -> Any:
    """JSON-safe: non-finite floats -> None, numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _summary(values: Mapping[int, float]) -> dict:
    from lorascope.analysis import stats

    s = stats.seed_summary(list(values.values()))
    return {"values": {str(k): float(v) for k, v in values.items()}, **s}


def defined_layers(rows: Iterable[dict]) -> dict[tuple[str, str], list[int]]:
    """(task, pooling) -> the layer indexes where every cell's linear and debiased CKA vs the base is defined (finite).
    Means over layers use these only, the same set for every method and seed of a task."""
    bad: dict[tuple[str, str], set[int]] = {}
    seen: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        key = (r["task"], r["pooling"])
        seen.setdefault(key, set()).add(int(r["layer_index"]))
        if not (math.isfinite(r["cka_linear"]) and math.isfinite(r["cka_debiased"])):
            bad.setdefault(key, set()).add(int(r["layer_index"]))
    return {k: sorted(v - bad.get(k, set())) for k, v in seen.items()}


def seed_means(rows: Iterable[dict], key: str, layers: Mapping[tuple[str, str], list[int]]) -> dict[tuple[str, str, str, int], float]:
    """(task, pooling, method, seed) -> mean of rows[key] over the defined layers (nan when there are none)."""
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        k = (r["task"], r["pooling"], r["method"], int(r["seed"]))
        acc.setdefault(k, [])
        if int(r["layer_index"]) in layers[(r["task"], r["pooling"])]:
            acc[k].append(float(r[key]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in acc.items()}


def compare(ft: Mapping[int, float], lora: Mapping[int, float]) -> dict:
    """FT vs LoRA mean drift over seeds, paired by seed: reduction, paired t, sign-flip p (with its floor), d_z."""
    from lorascope.analysis import stats

    seeds = sorted(set(ft) & set(lora))
    if len(seeds) != len(ft) or len(seeds) != len(lora):
        raise LorascopeError(f"paired comparison needs the same seeds for both methods (got {sorted(ft)} and {sorted(lora)})")
    a = np.array([ft[s] for s in seeds])
    b = np.array([lora[s] for s in seeds])
    diffs = a - b
    finite = bool(np.all(np.isfinite(diffs)))
    out = {
        "seeds": seeds,
        "ft_mean": float(a.mean()),
        "lora_mean": float(b.mean()),
        "reduction_pct": stats.drift_reduction_pct(float(a.mean()), float(b.mean())),
        "diffs": diffs.tolist(),
        "sign_flip_p": stats.sign_flip_pvalue(diffs) if finite else float("nan"),
        "sign_flip_floor": stats.sign_flip_floor(len(seeds)),
        "cohens_dz": stats.cohens_dz(a, b) if finite else float("nan"),
    }
    if finite and len(seeds) >= 2 and np.ptp(diffs) > 0:
        out["paired_t"] = stats.paired_t(a, b)
    else:
        out["paired_t"] = {"t": float("nan"), "p": float("nan"), "df": len(seeds) - 1}
    return out


def combine_verdicts(parts: Mapping[str, dict]) -> str:
    """Overall verdict of a hypothesis tested on several tasks (or batch sizes): not supported if any part is not
    supported, supported if every part is supported, else inconclusive."""
    verdicts = [p["verdict"] for p in parts.values()]
    if not verdicts:
        return "not measured"
    if any(v == "not supported" for v in verdicts):
        return "not supported"
    if all(v == "supported" for v in verdicts):
        return "supported"
    return "inconclusive"


def h2_hypothesis(study: Study, bench: Mapping[str, Mapping[str, Any]]) -> dict:
    """H2 from committed bench summaries ({backend: {"summary": ..., "bundle": ..., "attempt": ...}}): separate
    (base + adapter, unmerged) vs merged latency overhead at every batch size, `stats.verdict_h2` on the per-repeat
    overheads. The hf backend decides when present, else the first committed one."""
    from lorascope.analysis import stats

    limit = study.hypotheses.h2_max_overhead_pct
    hyp = f"H2: separate adapter serving at most {limit:g}% slower than merged"
    if not bench:
        return {"hypothesis": hyp, "verdict": "not measured", "evidence": "no bench bundle was committed", "by": {},
                "backend": None, "source": None}  # fmt: skip
    backend = "hf" if "hf" in bench else sorted(bench)[0]
    summary = bench[backend]["summary"]
    sep = (summary.get("overhead") or {}).get("separate_vs_merged") or {}
    by = {}
    for bs in sorted(sep, key=int):
        o = sep[bs]
        values = o.get("per_repeat_pct") or [o["pct"]]
        v = stats.verdict_h2(values, limit)
        by[f"batch {bs}"] = {**v, "pct": o["pct"], "low": o.get("low"), "high": o.get("high"), "batch_size": int(bs)}
    verdict = combine_verdicts(by) if by else "not measured"
    worst = max(by.values(), key=lambda v: v["pct"]) if by else None
    evidence = (f"backend {backend}, {len(by)} batch sizes; largest overhead {worst['pct']:.1f}% at batch "
                f"{worst['batch_size']}" if worst else "the bench bundle has no separate-vs-merged overheads")  # fmt: skip
    return {"hypothesis": hyp, "verdict": verdict, "evidence": evidence, "by": by, "backend": backend,
            "source": {"bundle": bench[backend]["bundle"], "attempt": bench[backend]["attempt"]}}  # fmt: skip


def bench_section(bench: Mapping[str, Mapping[str, Any]]) -> dict:
    """Latency by mode and batch size from each committed bench summary (for the report's figure and table)."""
    out = {}
    for backend, b in bench.items():
        s = b["summary"]
        configs = []
        for c in s.get("configs", []):
            ci = c.get("mean_batch_ms_ci") or {}
            configs.append({"mode": c["mode"], "order": c["order"], "batch_size": int(c["batch_size"]),
                            "mean_batch_ms": c["latency_batch_ms"]["mean"], "p50_ms": c["latency_batch_ms"].get("p50"),
                            "low": ci.get("low"), "high": ci.get("high"),
                            "throughput_rps": (c.get("throughput_rps") or {}).get("mean")})  # fmt: skip
        out[backend] = {"device": s.get("device"), "device_name": s.get("device_name"), "dtype": s.get("dtype"),
                        "configs": configs, "bundle": b["bundle"], "attempt": b["attempt"]}  # fmt: skip
    return out


def committed_bench(ctx: PhaseContext) -> dict[str, dict]:
    out = {}
    for backend in ctx.study.bench.backends:
        b = ctx.bundle("bench", backend)
        if b is not None and "summary.json" in b.files:
            out[backend] = {"summary": b.read_json("summary.json"), "bundle": f"bench/{backend}", "attempt": b.attempt,
                            "committed_at": b.commit.get("committed_at")}  # fmt: skip
    return out


def build_summary(ctx: PhaseContext, rows: list[dict], noise: list[dict], subset_sums: dict[str, dict[str, np.ndarray]],
                  resamplers: dict[str, SubsetDebiasedCKA], metrics: dict[str, dict], wrows: list[dict],
                  n_examples: dict[str, int], labels: list[str]) -> dict:  # fmt: skip
    """Everything the report prints, from the rows computed above (no new measurements here)."""
    from lorascope.analysis import stats

    study = ctx.study
    full, loras = method_roles(study)
    primary = primary_pooling(study)
    hyp = study.hypotheses
    layers_used = defined_layers(rows)
    drift_means = {m: seed_means(rows, f"drift_{m}", layers_used) for m in MEASURES}
    cos_means = {k: seed_means(rows, k, layers_used) for k in ("cosine", "centered_cosine")}
    results: dict[str, Any] = {}
    for task in [t.name for t in study.tasks]:
        tcfg = study.task(task)
        cells = task_cells(study, task)
        methods: dict[str, Any] = {}
        for method in dict.fromkeys(c.method for c in cells):
            mcells = [c for c in cells if c.method == method]
            entry: dict[str, Any] = {"kind": study.method(method).kind, "cells": [c.name for c in mcells]}
            entry["metric"] = _summary({c.seed: metrics[c.name]["validation"][tcfg.selection_metric] for c in mcells})
            entry["accuracy"] = _summary({c.seed: metrics[c.name]["validation"]["accuracy"] for c in mcells})
            entry["drift"] = {p: {m: _summary({c.seed: drift_means[m][(task, p, method, c.seed)] for c in mcells})
                                  for m in MEASURES} for p in study.extraction.pooling}  # fmt: skip
            entry["cosine"] = {p: {k: _summary({c.seed: cos_means[k][(task, p, method, c.seed)] for c in mcells})
                                   for k in cos_means} for p in study.extraction.pooling}  # fmt: skip
            entry["noise_floor"] = {}
            entry["layers"] = {}
            for p in study.extraction.pooling:
                pair_rows = [r for r in noise if r["task"] == task and r["method"] == method and r["pooling"] == p]
                per_pair: dict[tuple, list[float]] = {}
                for r in pair_rows:
                    per_pair.setdefault((r["seed_a"], r["seed_b"]), []).append(r)
                used = set(layers_used[(task, p)])
                entry["noise_floor"][p] = {m: stats.noise_floor([np.mean([r[f"drift_{m}"] for r in v if r["layer_index"] in used])
                                                                 if used else float("nan") for v in per_pair.values()])
                                           if per_pair else stats.noise_floor([]) for m in MEASURES}  # fmt: skip
                layer_stats: dict[str, Any] = {}
                for m in MEASURES:
                    per_layer = [[r[f"drift_{m}"] for r in rows if r["task"] == task and r["method"] == method
                                  and r["pooling"] == p and r["layer_index"] == li] for li in range(len(labels))]  # fmt: skip
                    floor = [[r[f"drift_{m}"] for r in pair_rows if r["layer_index"] == li] for li in range(len(labels))]
                    layer_stats[m] = {"mean": [float(np.mean(v)) for v in per_layer], "min": [float(np.min(v)) for v in per_layer],
                                      "max": [float(np.max(v)) for v in per_layer],
                                      "noise_floor": [float(np.mean(v)) if v else float("nan") for v in floor]}  # fmt: skip
                entry["layers"][p] = layer_stats
            methods[method] = entry
        comparisons: dict[str, Any] = {}
        if full is not None:
            for lm in loras:
                comp: dict[str, Any] = {}
                for p in study.extraction.pooling:
                    comp[p] = {m: compare({c.seed: drift_means[m][(task, p, full.name, c.seed)] for c in cells if c.method == full.name},
                                          {c.seed: drift_means[m][(task, p, lm.name, c.seed)] for c in cells if c.method == lm.name})
                               for m in MEASURES}  # fmt: skip
                res = resamplers.get(task)
                if res is not None and layers_used[(task, primary)]:
                    sums = subset_sums[task]
                    L = len(layers_used[(task, primary)])  # the subset sums ran over the same defined layers
                    ft_r = np.mean([sums[c.name] / L for c in cells if c.method == full.name], axis=0)
                    lo_r = np.mean([sums[c.name] / L for c in cells if c.method == lm.name], axis=0)
                    red_r = np.asarray(stats.drift_reduction_pct(ft_r, lo_r), dtype=np.float64)
                    primary_comp = comp[primary][PRIMARY_MEASURE]
                    ci = stats.subsample_bootstrap_ci(res.lookup(primary_comp["reduction_pct"], red_r), res.n, res.m,
                                                      res.n_resamples, CI_ALPHA, res.seed)  # fmt: skip
                    comp["reduction_ci"] = ci
                comparisons[lm.name] = comp
        excluded = {p: [labels[li] for li in range(len(labels)) if li not in layers_used[(task, p)]]
                    for p in study.extraction.pooling}  # fmt: skip
        results[task] = {"metric_name": tcfg.selection_metric, "n_examples": n_examples[task], "methods": methods,
                         "comparisons": comparisons, "layers_excluded": {p: v for p, v in excluded.items() if v}}  # fmt: skip

    # Holm across tasks, per (LoRA method, pooling, measure), for both seed-level tests
    for lm in loras if full is not None else []:
        for p in study.extraction.pooling:
            for m in MEASURES:
                comps = [results[t]["comparisons"][lm.name][p][m] for t in results]
                for key, get in (("holm_p_t", lambda c: c["paired_t"]["p"]), ("holm_p_sign_flip", lambda c: c["sign_flip_p"])):
                    ps = [get(c) for c in comps]
                    if all(math.isfinite(x) for x in ps):
                        for c, adj in zip(comps, stats.holm(ps), strict=True):
                            c[key] = float(adj)
                    else:
                        for c in comps:
                            c[key] = float("nan")

    hypotheses = hypotheses_from(study, results)
    return {
        "format": SUMMARY_FORMAT,
        "tasks": list(results),
        "results": results,
        "weights": weight_summary(wrows, {t for m in loras for t in m.target_modules} or set(LoraMethod().target_modules)),
        "hypotheses": hypotheses,
        "labels": labels,
        "settings": {
            "primary_measure": f"cka_{PRIMARY_MEASURE}", "primary_pooling": primary, "poolings": list(study.extraction.pooling),
            "measures": list(MEASURES), "full_method": full.name if full else None, "lora_methods": [m.name for m in loras],
            "seeds": list(study.seeds), "n_seeds": len(study.seeds), "n_examples": n_examples, "layers": len(labels),
            "resamples": RESAMPLES, "subsample_m": {t: r.m for t, r in resamplers.items()}, "ci_level_pct": 100 * (1 - CI_ALPHA),
            "intruder_k": INTRUDER_K, "intruder_eps": INTRUDER_EPS,
            "sign_flip_floor_two_sided": stats.sign_flip_floor(len(study.seeds)),
            "sign_flip_floor_one_sided": stats.sign_flip_floor(len(study.seeds), "greater"),
            "h1a_max_gap_pp": hyp.h1a_max_gap_pp, "h1b_min_reduction_pct": hyp.h1b_min_reduction_pct,
            "h2_max_overhead_pct": hyp.h2_max_overhead_pct,
        },  # fmt: skip
    }


def hypotheses_from(study: Study, results: Mapping[str, Any]) -> dict:
    """H1a and H1b per task (and LoRA method) with `stats.verdict_h1a/h1b`, and their overall verdicts."""
    from lorascope.analysis import stats

    full, loras = method_roles(study)
    hyp = study.hypotheses
    primary = primary_pooling(study)
    h1a: dict[str, Any] = {}
    h1b: dict[str, Any] = {}
    if full is not None:
        for task, res in results.items():
            fm = res["methods"][full.name]["metric"]["values"]
            for lm in loras:
                key = task if len(loras) == 1 else f"{task}/{lm.name}"
                lv = res["methods"][lm.name]["metric"]["values"]
                seeds = sorted(fm)
                h1a[key] = stats.verdict_h1a([lv[s] for s in seeds], [fm[s] for s in seeds], hyp.h1a_max_gap_pp)
                comp = res["comparisons"][lm.name]
                ci = comp.get("reduction_ci")
                red = comp[primary][PRIMARY_MEASURE]["reduction_pct"]
                h1b[key] = stats.verdict_h1b(red, (ci["lo"], ci["hi"]) if ci else (float("nan"), float("nan")),
                                             hyp.h1b_min_reduction_pct)  # fmt: skip
    return {
        "H1a": {"hypothesis": f"H1a: LoRA task metric within {hyp.h1a_max_gap_pp:g} pp of full fine-tuning",
                "verdict": combine_verdicts(h1a), "by": h1a,
                "rule": "per task: Welch 95% CI of the gap (full - LoRA, pp, over seeds) against the margin; overall: "
                        "not supported if any task is, supported if all are, else inconclusive"},
        "H1b": {"hypothesis": f"H1b: LoRA representation drift at least {hyp.h1b_min_reduction_pct:g}% below full "
                              f"fine-tuning ({PRIMARY_MEASURE} CKA, {primary} pooling, mean over layers and seeds)",
                "verdict": combine_verdicts(h1b), "by": h1b,
                "rule": "per task: subsampling 95% CI over examples of the reduction against the threshold; overall as H1a"},
    }  # fmt: skip


def weight_summary(wrows: list[dict], targets: set[str]) -> dict:
    """Per task and method: mean and SD over (module, seed) of the update's rank measures and intruder counts, on the
    LoRA target modules (like with like); a full method's other linears, when analysed, under "<method> (other
    linears)"."""
    out: dict[str, dict] = {}
    keys = ("stable_rank", "effective_rank", "r90", "n_intruders", "delta_rel")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in wrows:
        group = r["method"] if r["module"] in targets else f"{r['method']} (other linears)"
        groups.setdefault((r["task"], group), []).append(r)
    for (task, method), rs in groups.items():
        entry: dict[str, Any] = {"modules": len({r["name"] for r in rs}), "rows": len(rs),
                                 "module_types": sorted({r["module"] for r in rs})}  # fmt: skip
        for k in keys:
            v = np.array([float(r[k]) for r in rs])
            entry[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
                        "max": float(v.max())}  # fmt: skip
        entry["modules_with_intruders_pct"] = 100.0 * float(np.mean([r["n_intruders"] > 0 for r in rs]))
        out.setdefault(task, {})[method] = entry
    return out


# ------------------------------------------------------------------------------------------------ files
def csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    """CSV with every float at full precision (Python's repr: shortest round-trip form of the float64)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(float(v)) if isinstance(v, float | np.floating) else v) for k, v in r.items()})
    return buf.getvalue().encode()


def provenance_section(ctx: PhaseContext, reps_bundles: Mapping[tuple[str, str], Any]) -> dict:
    from lorascope.reporting import provenance

    metas = [b.meta for b in reps_bundles.values()]
    stage = ctx.require("stage")
    hw = [m.get("hardware") or {} for m in metas]
    return {
        "run_id": ctx.run_id,
        "study": ctx.study.name,
        "study_hash": ctx.study.hash,
        "model": ctx.study.model.name,
        "model_revision": ctx.study.model.revision,
        "model_commit": (stage.meta.get("model") or {}).get("commit_sha"),
        "dataset_fingerprint": stage.meta.get("dataset_fingerprint"),
        "builtin_model": ctx.study.model.name == "builtin:tiny-llama",  # the random smoke model (not smollm2-135m)
        "model_variant": (stage.meta.get("model") or {}).get("variant"),  # e.g. a quantised model's provenance
        "synthetic_data": ctx.study.data.source == "local" and ctx.study.data.path == "builtin",
        "code_version": ctx.store.code_version,
        "extract": {
            "bundles": len(metas),
            "code_versions": sorted({b.commit.get("code_version", "?") for b in reps_bundles.values()}),
            "devices": sorted({str(m.get("device")) for m in metas}),
            "gpu_names": sorted({h.get("gpu_name") for h in hw if h.get("gpu_name")}),
            "cpu_models": sorted({str(h.get("cpu_model")) for h in hw if h.get("cpu_model")}),
            "cpu_cores_usable": sorted({int(h["cpu_cores_usable"]) for h in hw if h.get("cpu_cores_usable")}),
            "forward_seconds_total": float(sum(m.get("forward_seconds") or 0.0 for m in metas)),
            "versions": metas[0].get("versions") if metas else {},
        },
        "drift": {"hardware": provenance.hardware(), "versions": provenance.package_versions()},
    }


# ------------------------------------------------------------------------------------------------ the phase
def run(ctx: PhaseContext, index: int) -> None:
    study = ctx.study
    log = ctx.log
    if ctx.committed("drift"):
        log("already committed, skipping", bundle="drift")
        return
    from lorascope.phases.extract import units

    # 1. inputs: everything must be committed before any work starts
    missing = [f"reps/{m}/{t}" for m, t in units(study) if not ctx.committed("reps", m, t)]
    missing += [f"cells/{c.name}" for c in study.cells() if not ctx.committed("cells", c.name)]
    if missing:
        raise ConfigError(f"drift needs {len(missing)} more committed bundle(s): {', '.join(missing[:8])}"
                          f"{' ...' if len(missing) > 8 else ''} (run the train and extract phases first)")  # fmt: skip
    stage = ctx.require("stage", why="the base weights come from the stage bundle")
    t0 = time.perf_counter()
    reps_bundles = {(m, t): ctx.require("reps", m, t) for m, t in units(study)}
    cell_bundles = {c.name: ctx.require("cells", c.name) for c in study.cells()}
    metrics = {name: b.read_json("metrics.json") for name, b in cell_bundles.items()}

    # 2. representations, task by task
    rows: list[dict] = []
    noise: list[dict] = []
    subset_sums: dict[str, dict[str, np.ndarray]] = {}
    resamplers: dict[str, SubsetDebiasedCKA] = {}
    n_examples: dict[str, int] = {}
    labels: list[str] = []
    t_reps = time.perf_counter()
    for task in [t.name for t in study.tasks]:
        reps = {"base": RepsFile(ctx.local(reps_bundles[("base", task)]))}
        for c in task_cells(study, task):
            reps[c.name] = RepsFile(ctx.local(reps_bundles[(c.name, task)]))
        check_reps(task, reps)
        labels = reps["base"].labels
        n = len(reps["base"].idx)
        n_examples[task] = n
        m = n // 2
        if m >= 4:
            resamplers[task] = SubsetDebiasedCKA(n, m, RESAMPLES, study.extraction.seed)
        r, nf, sums = representation_drift(study, task, reps, log, resamplers.get(task))
        rows += r
        noise += nf
        subset_sums[task] = sums
    t_reps = time.perf_counter() - t_reps
    log("representations done", rows=len(rows), seconds=round(t_reps, 2))

    # 3. weights
    t_w = time.perf_counter()
    base = TensorFolder(ctx.local(stage) / "model", "model")
    cells = {c.name: (c, ctx.local(cell_bundles[c.name])) for c in study.cells()}
    wrows, with_extra = weight_rows(study, base, cells, log)
    t_w = time.perf_counter() - t_w
    log("weights done", modules=len(wrows), seconds=round(t_w, 2))

    # 4. statistics and hypotheses
    t_s = time.perf_counter()
    summary = build_summary(ctx, rows, noise, subset_sums, resamplers, metrics, wrows, n_examples, labels)
    bench = committed_bench(ctx)
    summary["hypotheses"]["H2"] = h2_hypothesis(study, bench)
    summary["bench"] = bench_section(bench)
    summary["settings"]["weights_full_extra_linears"] = with_extra
    summary["provenance"] = provenance_section(ctx, reps_bundles)
    t_s = time.perf_counter() - t_s
    summary["timings"] = {"representations_seconds": t_reps, "weights_seconds": t_w, "statistics_seconds": t_s,
                          "total_seconds": time.perf_counter() - t0}  # fmt: skip
    summary = json_safe(summary)

    # 5. commit
    hw = summary["provenance"]["drift"]["hardware"]
    meta = {"seconds": round(time.perf_counter() - t0, 3), "rows": len(rows), "hardware": hw,
            "versions": summary["provenance"]["drift"]["versions"],
            "verdicts": {k: v["verdict"] for k, v in summary["hypotheses"].items()}}  # fmt: skip
    with ctx.writer("drift", phase="drift", meta=meta) as w:
        w.add_bytes("layer_rows.csv", csv_bytes(rows, LAYER_COLUMNS))
        w.add_bytes("noise_floor.csv", csv_bytes(noise, NOISE_COLUMNS))
        w.add_bytes("weights.csv", csv_bytes(wrows, WEIGHT_COLUMNS))
        w.add_bytes("summary.json", (json.dumps(summary, indent=1, allow_nan=False) + "\n").encode())
    log("committed", bundle="drift", seconds=round(time.perf_counter() - t0, 2),
        **{k: v["verdict"].replace(" ", "_") for k, v in summary["hypotheses"].items()})  # fmt: skip


def check_reps(task: str, reps: Mapping[str, RepsFile]) -> None:
    """Every model on a task must hold the same examples in the same order, and the same layers."""
    base = reps["base"]
    for name, r in reps.items():
        if not np.array_equal(r.idx, base.idx):
            raise LorascopeError(f"task {task}: example ids of reps/{name}/{task} differ from reps/base/{task}; every "
                                 "model must be extracted on the same examples (re-run extract for it)")  # fmt: skip
        if r.labels != base.labels or r.shape != base.shape:
            raise LorascopeError(f"task {task}: reps/{name}/{task} has layers {r.labels} / shape {r.shape}, the base "
                                 f"{base.labels} / {base.shape}")  # fmt: skip


def iter_rows(data: bytes) -> Iterator[dict]:
    """Rows of one of the bundle's CSVs, numbers parsed back (floats at full precision)."""
    for r in csv.DictReader(io.StringIO(data.decode())):
        out: dict[str, Any] = {}
        for k, v in r.items():
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
        yield out


PHASE = Phase(
    name="drift",
    size=lambda study: 1,
    bundles=lambda study: ["drift"],
    run=run,
    unit=lambda study, i: "drift",
    gpu=False,
    description="CKA drift (linear, debiased), cosines, seed noise floor, weight spectra, statistics and hypotheses",
)
