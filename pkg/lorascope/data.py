"""Data: GLUE in, token ids out.

Sources (`study.data`):
  * `source: hub`   -> `datasets.load_dataset(hub_dataset, task, revision=...)` (nyu-mll/glue at a pinned revision)
  * `source: local` -> GLUE-format jsonl files `<path>/<task>/{train,validation}.jsonl`; `path: builtin` is the
                       synthetic fixtures this package ships (assets/glue, see its README: NOT GLUE's text).
Splits: `dev` is carved from GLUE train with a fixed seed (`dev_fraction` of train, at most `dev_max`) and serves HPO
and early stopping; `train` is the rest; `validation` (GLUE's) is the reported split and is never used for selection.
GLUE `test` (labels -1) is never loaded. The stage phase writes all three splits to the store once; every later
phase reads them from the stage bundle's folder with `read_split`.

Caps: `tasks[].train_samples` and `tasks[].eval_samples` are applied by the stage phase (a seeded subset; the
committed train/validation files are already capped), so every later phase sees the same examples.
`hpo_train_samples` is applied by the hpo phase on top of the staged train split.

Token ids, decoders: a single sentence is `BOS s`; a pair is `BOS s1 EOS s2` built from ids (no "[SEP]" string, no
tokenizer-added specials), truncated longest-first to `max_length`. No trailing EOS: the classifier reads the last
attended token, which is then the last token of the text.

Token ids, encoders (RoBERTa, BERT: `lorascope.models.families`): the tokenizer's own templates, which are what the
model was pretrained with: RoBERTa `<s> s </s>` and `<s> s1 </s></s> s2 </s>`, BERT `[CLS] s [SEP]` and
`[CLS] s1 [SEP] s2 [SEP]`. The tokenizer is called on the text pair with `truncation="longest_first"` and
`max_length`: the longer segment loses tokens first so both segments and every special token fit (the decoders'
rule), and its post-processor adds the specials (a hub tokenizer's template is used as is); the classifier reads the
first token. Either way the ids depend on the tokenizer and the text only, so base and fine-tuned models
see identical tokens.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lorascope.errors import ConfigError, LorascopeError
from lorascope.study import GLUE_TASKS

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from lorascope.study import DataConfig, Study

FIXTURES = Path(__file__).resolve().parent / "assets" / "glue"
SPLITS = ("train", "dev", "validation")
SOURCE_SPLITS = ("train", "validation")  # what a source provides; dev is carved from train

Split = Literal["train", "dev", "validation"]


def columns(task: str) -> tuple[str, ...]:
    if task not in GLUE_TASKS:
        raise ConfigError(f"unknown task {task!r}; known: {sorted(GLUE_TASKS)}")
    return tuple(GLUE_TASKS[task]["columns"])


# ------------------------------------------------------------------------------------------------ files
def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def sha256_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ sources
def local_root(data: DataConfig) -> Path:
    """The folder of a `source: local` study (`builtin` -> the packaged fixtures)."""
    return FIXTURES if data.path == "builtin" else Path(str(data.path)).expanduser()


def check_source(study: Study) -> None:
    """Cheap checks before anything heavy loads: a local folder exists and holds every task's files."""
    if study.data.source != "local":
        return
    root = local_root(study.data)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"data.path {study.data.path!r}: {root} is a file, not a folder of GLUE-format jsonl")
    if not root.is_dir():
        raise ConfigError(f"data.path {study.data.path!r}: folder {root} does not exist")
    for task in study.tasks:
        for split in SOURCE_SPLITS:
            f = root / task.name / f"{split}.jsonl"
            if not f.is_file():
                raise ConfigError(f"data.path {study.data.path!r}: missing {f} (GLUE-format jsonl for task {task.name})")
            try:
                with open(f, "rb") as fh:
                    fh.read(1)
            except OSError as exc:
                raise ConfigError(f"data.path {study.data.path!r}: cannot read {f}: {exc.strerror or exc}") from None


def _clean(task: str, rows: list[dict], where: str) -> list[dict]:
    """Keep GLUE's text columns, `label` (int) and `idx` (int, unique); reject rows without a label."""
    cols = columns(task)
    out, seen = [], set()
    for n, r in enumerate(rows):
        missing = [c for c in (*cols, "label", "idx") if c not in r]
        if missing:
            raise ConfigError(f"{where}: row {n} lacks {missing} (GLUE columns for {task}: {[*cols, 'label', 'idx']})")
        label = int(r["label"])
        if not 0 <= label < GLUE_TASKS[task]["num_labels"]:
            raise ConfigError(f"{where}: row {n} has label {label} (unlabelled test rows are not usable)")
        idx = int(r["idx"])
        if idx in seen:
            raise ConfigError(f"{where}: idx {idx} appears twice")
        seen.add(idx)
        out.append({**{c: str(r[c]) for c in cols}, "label": label, "idx": idx})
    return out


def load_source(study: Study, task: str) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """GLUE train and validation for `task` from the study's source, and a description of what was read
    (`fingerprint` identifies the exact content)."""
    data = study.data
    if data.source == "local":
        root = local_root(data)
        splits, digests = {}, []
        for split in SOURCE_SPLITS:
            path = root / task / f"{split}.jsonl"
            raw = path.read_bytes()
            digests.append(raw)
            splits[split] = _clean(task, [json.loads(x) for x in raw.decode("utf-8").splitlines() if x.strip()], str(path))
        source = {"source": "local", "path": "builtin" if data.path == "builtin" else str(root)}
        return splits, {**source, "fingerprint": sha256_bytes(*digests)}
    return _load_hub(data.hub_dataset, task, data.revision)


def _load_hub(dataset: str, task: str, revision: str) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        dd = datasets.load_dataset(dataset, task, revision=revision)
    except DatasetNotFoundError as exc:
        raise ConfigError(f"data.hub_dataset {dataset!r} (config {task!r}, revision {revision!r}): {exc}") from None
    except ValueError as exc:  # unknown config name, unknown revision
        raise ConfigError(f"data.hub_dataset {dataset!r} config {task!r} revision {revision!r}: {exc}") from None
    except (ConnectionError, OSError) as exc:
        raise LorascopeError(f"cannot load {dataset}/{task}@{revision} from the hub: {exc}") from None
    splits = {}
    for split in SOURCE_SPLITS:
        if split not in dd:
            raise ConfigError(f"{dataset}/{task}@{revision} has no {split!r} split (has {sorted(dd)})")
        splits[split] = _clean(task, [dict(r) for r in dd[split]], f"{dataset}/{task}/{split}")
    fingerprints = {s: getattr(dd[s], "_fingerprint", None) for s in SOURCE_SPLITS}
    content = sha256_bytes(*(json.dumps(splits[s], sort_keys=True).encode() for s in SOURCE_SPLITS))
    return splits, {"source": "hub", "dataset": dataset, "revision": revision, "datasets_fingerprints": fingerprints,
                    "fingerprint": content}  # fmt: skip


# ------------------------------------------------------------------------------------------------ splits
def dev_size(n_train: int, fraction: float, max_n: int) -> int:
    """round(fraction * n), at least 1, at most max_n, leaving at least one training example."""
    return max(1, min(max_n, round(fraction * n_train), n_train - 1))


def split_dev(rows: list[dict], fraction: float, max_n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, dev): a fixed-seed random `dev_size` subset of `rows` becomes dev, the rest train; both keep the
    source order. `random.Random(seed)` is stable across Python versions and machines."""
    n_dev = dev_size(len(rows), fraction, max_n)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    chosen = set(order[:n_dev])
    train = [r for i, r in enumerate(rows) if i not in chosen]
    dev = [r for i, r in enumerate(rows) if i in chosen]
    return train, dev


def subsample(rows: list[dict], n: int | None, seed: int) -> list[dict]:
    """A fixed-seed subset of n rows in source order (all rows when n is None or >= len)."""
    if n is None or n >= len(rows):
        return list(rows)
    keep = set(random.Random(seed).sample(range(len(rows)), n))
    return [r for i, r in enumerate(rows) if i in keep]


def prepare_task(study: Study, task: str) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """What the stage phase commits for one task: {train, dev, validation} with the study's caps applied, and
    a description (source, fingerprint, sizes) for the commit's meta."""
    cfg = study.task(task)
    source, info = load_source(study, task)
    train, dev = split_dev(source["train"], study.data.dev_fraction, study.data.dev_max, study.data.split_seed)
    train = subsample(train, cfg.train_samples, study.data.split_seed)
    validation = subsample(source["validation"], cfg.eval_samples, study.data.split_seed)
    splits = {"train": train, "dev": dev, "validation": validation}
    info = {**info, "sizes": {s: len(v) for s, v in splits.items()}, "source_sizes": {s: len(v) for s, v in source.items()},
            "split_seed": study.data.split_seed, "train_samples": cfg.train_samples, "eval_samples": cfg.eval_samples}  # fmt: skip
    return splits, info


def read_split(stage_dir: Path, task: str, split: Split) -> list[dict]:
    """A split of a task from the stage bundle's folder (`stage_dir/data/<task>/<split>.jsonl`, as the stage phase
    wrote it): GLUE columns, `label`, `idx`."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; splits are {SPLITS}")
    folder = Path(stage_dir) / "data"
    path = folder / task / f"{split}.jsonl"
    if not path.is_file():
        staged = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise ConfigError(f"task {task!r}: the stage bundle has no {split} split for it (staged tasks: {staged})")
    return read_jsonl(path)


# ------------------------------------------------------------------------------------------------ tokens
def truncate_pair(len1: int, len2: int, budget: int) -> tuple[int, int]:
    """Longest-first truncation: drop a token from the longer part (s1 on ties) until both fit in `budget`."""
    while len1 + len2 > budget:
        if len1 >= len2:
            len1 -= 1
        else:
            len2 -= 1
    return len1, len2


def is_encoder_tokenizer(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether `tokenizer` is an encoder's (models.loading.load_tokenizer marks them: `lorascope_encoder`)."""
    return bool(getattr(tokenizer, "lorascope_encoder", False))


def special_counts(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(specials around one sentence, specials around a pair) that the tokenizer's templates add (RoBERTa 2 and 4)."""
    return tokenizer.num_special_tokens_to_add(pair=False), tokenizer.num_special_tokens_to_add(pair=True)


def encode_encoder(tokenizer: PreTrainedTokenizerBase, task: str, examples: list[dict], max_length: int) -> list[dict]:
    """Token ids for an encoder classifier through the tokenizer's own single/pair template (its post-processor adds
    the specials), longest-first truncation of the texts so that the whole sequence, specials included, fits in
    `max_length` and both segments keep at least one token."""
    cols = columns(task)
    single, pair = special_counts(tokenizer)
    n_special = single if len(cols) == 1 else pair
    if n_special == 0:
        raise ConfigError("encoder tokenizer adds no special tokens: it has no template for the first-token classifier")
    if max_length < n_special + len(cols):
        raise ConfigError(f"max_length {max_length} is too short for {task} (the template alone takes {n_special} tokens)")
    if not examples:
        return []
    texts = [[str(e[c]) for e in examples] for c in cols]
    enc = tokenizer(*texts, truncation="longest_first", max_length=max_length)
    return [{"idx": int(e["idx"]), "input_ids": [int(i) for i in ids], "attention_mask": [1] * len(ids), "labels": int(e["label"])}
            for e, ids in zip(examples, enc["input_ids"], strict=True)]  # fmt: skip


def encode(tokenizer: PreTrainedTokenizerBase, task: str, examples: list[dict], max_length: int) -> list[dict]:
    """Token ids for a classifier. Decoders: `BOS s` or `BOS s1 EOS s2` (ids put together here; the tokenizer adds
    no specials), truncated to `max_length`. Encoders (a tokenizer from `models.loading.load_tokenizer` of an encoder):
    `encode_encoder`, the tokenizer's own templates. Returns {"idx", "input_ids", "attention_mask", "labels"} per
    example."""
    if is_encoder_tokenizer(tokenizer):
        return encode_encoder(tokenizer, task, examples, max_length)
    cols = columns(task)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ConfigError(f"tokenizer needs bos and eos ids (bos={bos}, eos={eos})")
    if max_length < len(cols) + 1:
        raise ConfigError(f"max_length {max_length} is too short for {task}")
    texts = [tokenizer([str(e[c]) for e in examples], add_special_tokens=False)["input_ids"] for c in cols] if examples else []
    out = []
    for n, e in enumerate(examples):
        if len(cols) == 1:
            ids = [bos, *texts[0][n][: max_length - 1]]
        else:
            a, b = texts[0][n], texts[1][n]
            la, lb = truncate_pair(len(a), len(b), max_length - 2)
            ids = [bos, *a[:la], eos, *b[:lb]]
        out.append({"idx": int(e["idx"]), "input_ids": ids, "attention_mask": [1] * len(ids), "labels": int(e["label"])})
    return out


def collate(features: list[dict], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest member (dynamic padding) or to `pad_to`. Returns int64 `input_ids`,
    `attention_mask` and, when every feature has one, `labels` (the keys a classifier's forward takes; `idx`
    stays with the caller)."""
    import torch  # here, not at the top: the slim images import this module (status, stage sizes) without torch

    if not features:
        raise ValueError("collate: empty batch")
    longest = max(len(f["input_ids"]) for f in features)
    length = longest if pad_to is None else pad_to
    if length < longest:
        raise ValueError(f"collate: pad_to={pad_to} is shorter than the longest sequence ({longest})")
    input_ids = torch.full((len(features), length), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(features), length), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        attention_mask[i, :n] = torch.tensor(f.get("attention_mask", [1] * n), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if all("labels" in f for f in features):
        batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
    return batch
