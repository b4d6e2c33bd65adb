"""Reading what the phases wrote: safetensors tensors (numpy, no torch), adapter folders, predictions, CSV rows.

One place for the file formats the analysis reads, so the drift phase and the serving backends parse a safetensors
header the same way:

    header(path)               the JSON header of a .safetensors file (name -> dtype, shape, data_offsets)
    sort_metadata(path)        its `__metadata__` keys in sorted order (the same tensors, the same bytes)
    RepsFile(folder)           a `reps/<model>/<task>/` bundle, one hidden-state entry at a time (memory-mapped)
    TensorFolder(folder, stem) a HF model or adapter folder (single file or sharded index), one tensor at a time
    read_adapter(folder)       a PEFT LoRA adapter: its config and {module key: (B, A)}
    read_predictions(folder)   a cell's `predictions.jsonl` as label and prediction arrays (or per-example scores,
                               BLEU statistics) in idx order
    csv_bytes / iter_rows      the drift bundle's CSVs at full float64 precision, and back
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lorascope.errors import ConfigError, LorascopeError


def header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: 8 bytes little-endian length, then that many bytes of JSON."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n))


def sort_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header in place with its `__metadata__` keys sorted. safetensors' writer keeps the
    metadata in a hash map, so two writes of the same tensors and metadata order its keys differently (the same
    reps, different bytes). The header is the same JSON reordered, so its length and the tensor bytes stay as they
    are; anything else in it is left byte for byte (checked: the header re-serialized as read must equal the file's)."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        raw = f.read(n)
        head = json.loads(raw)
        meta = head.get("__metadata__")
        if not isinstance(meta, dict) or list(meta) == sorted(meta):
            return

        def dump(obj: dict) -> bytes:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

        if dump(head) != raw.rstrip(b" "):
            raise LorascopeError(f"{path}: safetensors header not in the compact form expected; not rewritten")
        head["__metadata__"] = dict(sorted(meta.items()))
        f.seek(8)
        f.write(dump(head).ljust(n, b" "))


def header_size(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def read_bf16(path: Path, name: str) -> np.ndarray:
    """A bf16 tensor of a safetensors file as float32 (bf16 is the top half of a float32: shift the bits up)."""
    info = header(path)[name]
    begin, end = info["data_offsets"]
    raw = np.fromfile(path, dtype="<u2", count=(end - begin) // 2, offset=header_size(path) + begin)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


class RepsFile:
    """One `reps/<model>/<task>/` bundle, read lazily a layer at a time (safetensors.numpy slices, memory-mapped)."""

    def __init__(self, folder: Path, reps_file: str = "reps.safetensors", layers_file: str = "layers.json") -> None:
        from safetensors import safe_open

        self.folder = folder
        self.layers = json.loads((folder / layers_file).read_text())
        self._file = safe_open(str(folder / reps_file), framework="np")
        self.idx = np.asarray(self._file.get_tensor("idx"), dtype=np.int64)
        self.labels: list[str] = list(self.layers["labels"])
        self.shape = tuple(self._file.get_slice("mean").get_shape())

    def layer(self, pooling: str, index: int) -> np.ndarray:
        """float32 (n, d) states of one hidden-state entry."""
        return np.ascontiguousarray(self._file.get_slice(pooling)[index])


class TensorFolder:
    """Tensors of a HF folder or adapter (`*.safetensors`, sharded via `*.safetensors.index.json` too), read one at a
    time as float64 numpy. safetensors.numpy reads F32/F16/F64; bf16 (numpy has no bfloat16) is widened to float32
    bit-exactly from the file's header and raw bytes. A model folder whose config.json is GPT-2's: its Conv1D
    projection weights (stored in x out) are returned transposed, in nn.Linear's out x in orientation (the one every
    weight reader and PEFT's LoRA B A use; `models.families.conv1d_weight`)."""

    def __init__(self, folder: Path, stem: str) -> None:
        self.folder = folder
        self.files: dict[str, Path] = {}
        index = folder / f"{stem}.safetensors.index.json"
        single = folder / f"{stem}.safetensors"
        if index.is_file():
            for name, file in json.loads(index.read_text())["weight_map"].items():
                self.files[name] = folder / file
        elif single.is_file():
            self.files = dict.fromkeys((k for k in header(single) if k != "__metadata__"), single)
        else:
            raise ConfigError(f"{folder}: no {stem}.safetensors (or sharded index) to read weights from")
        self.transposed = _conv1d_weights(folder, self.files)

    def names(self) -> list[str]:
        return sorted(self.files)

    def shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(header(self.files[name])[name]["shape"])
        return shape[::-1] if name in self.transposed else shape

    def get(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        path = self.files[name]
        with safe_open(str(path), framework="np") as f:
            dtype = f.get_slice(name).get_dtype()
            if dtype != "BF16":
                out = np.asarray(f.get_tensor(name), dtype=np.float64)
            else:
                out = read_bf16(path, name).astype(np.float64)
        return np.ascontiguousarray(out.T) if name in self.transposed else out


def _conv1d_weights(folder: Path, names: Any) -> frozenset[str]:
    """The weight names of a model folder stored as transformers' Conv1D (in x out): none unless the folder's
    config.json names a family with Conv1D projections (GPT-2)."""
    config = folder / "config.json"
    if not config.is_file():
        return frozenset()
    model_type = json.loads(config.read_text()).get("model_type")
    from lorascope.models import families

    fam = next((f for f in families.FAMILIES if model_type in f.model_types), None)
    if fam is None or not fam.conv1d:
        return frozenset()
    return frozenset(n for n in names if families.conv1d_weight(fam, n))


def read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(adapter_config.json, {module key: (B, A)}) of a PEFT LoRA adapter folder. The module key is the name PEFT
    matched when it built the adapter (`model.layers.0.self_attn.q_proj`: the saved name without `base_model.model.`
    and without `.lora_A.weight`), which is what `analysis.lora.lora_scale` matches rank/alpha patterns against."""
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = TensorFolder(folder, "adapter_model")
    out = {}
    for name in tensors.names():
        if ".lora_A." not in name:
            continue
        key = name.split(".lora_A.")[0].removeprefix("base_model.model.")
        out[key] = (tensors.get(name.replace(".lora_A.", ".lora_B.")), tensors.get(name))
    if not out:
        raise ConfigError(f"{folder}: adapter has no lora_A/lora_B tensors")
    return config, out


def read_adapter_vectors(folder: Path, marker: str) -> dict[str, np.ndarray]:
    """{module key: vector} of the adapter tensors whose name holds `marker` (`.lora_magnitude_vector` for DoRA,
    `.ia3_l` for IA3), keyed like `read_adapter` (the saved name up to the marker, without `base_model.model.`)."""
    tensors = TensorFolder(folder, "adapter_model")
    out = {n.split(marker)[0].removeprefix("base_model.model."): tensors.get(n) for n in tensors.names() if marker in n}
    if not out:
        raise ConfigError(f"{folder}: adapter has no {marker.strip('.')} tensors")
    return out


def read_predictions(folder: Path) -> dict[str, np.ndarray] | None:
    """A cell's validation predictions (`predictions.jsonl`: idx, label, pred per example) as arrays sorted by idx
    (int64; float64 labels and predictions when they are real numbers: a regression task), or None when the cell has
    none. A generation cell's (one output text per MR, no `label`): {"idx", "stats" (n, 10) BLEU statistics of its
    outputs, "trivial": {predictor: (n, 10)}} (`metrics.nlg.bleu_statistics`), or None when they carry no statistics.
    A cell whose rows carry per-example `scores` (extractive QA: each question's official exact and F1 at the
    dev-chosen threshold, and `trivial_scores` of "no answer" everywhere): {"idx", "label" (each gold as a JSON string,
    to check cells were scored against the same answers), "scores": {metric: (n,) float64}, "trivial": {predictor:
    {metric: (n,)}}}. None for other labels that are neither numbers nor classes (QA rows written before the
    scores)."""
    path = folder / "predictions.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise LorascopeError(f"{path}: no predictions")
    rows.sort(key=lambda r: int(r["idx"]))
    if "label" not in rows[0]:
        if "bleu_stats" not in rows[0]:
            return None
        return {"idx": np.array([int(r["idx"]) for r in rows], dtype=np.int64),
                "stats": np.array([r["bleu_stats"] for r in rows], dtype=np.int64),
                "trivial": {k: np.array([r["trivial_stats"][k] for r in rows], dtype=np.int64)
                            for k in rows[0]["trivial_stats"]}}  # fmt: skip
    if "scores" in rows[0]:
        return {"idx": np.array([int(r["idx"]) for r in rows], dtype=np.int64),
                "label": np.array([json.dumps(r["label"], sort_keys=True) for r in rows]),
                "scores": {m: np.array([float(r["scores"][m]) for r in rows]) for m in rows[0]["scores"]},
                "trivial": {k: {m: np.array([float(r["trivial_scores"][k][m]) for r in rows]) for m in v}
                            for k, v in rows[0]["trivial_scores"].items()}}  # fmt: skip
    if any(not isinstance(r[k], int | float) or isinstance(r[k], bool) for r in rows for k in ("label", "pred")):
        return None
    real = any(isinstance(r[k], float) for r in rows for k in ("label", "pred"))
    out = {"idx": np.array([int(r["idx"]) for r in rows], dtype=np.int64)}
    for k in ("label", "pred"):
        out[k] = np.array([float(r[k]) if real else int(r[k]) for r in rows], dtype=np.float64 if real else np.int64)
    return out


def csv_bytes(rows: list[dict], columns: list[str]) -> bytes:
    """CSV with every float at full precision (Python's repr: shortest round-trip form of the float64)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="raise", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (repr(float(v)) if isinstance(v, float | np.floating) else v) for k, v in r.items()})
    return buf.getvalue().encode()


def iter_rows(data: bytes) -> Iterator[dict]:
    """Rows of one of the drift bundle's CSVs, numbers parsed back (floats at full precision)."""
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
