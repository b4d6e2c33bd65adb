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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.errors import ConfigError, LorascopeError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from lorascope.study import DataConfig, Study
    from lorascope.tasks import Task

FIXTURES = Path(__file__).resolve().parent / "assets" / "glue"
SPLITS = ("train", "dev", "validation")  # every task's; a task with several validation splits stages the others too
EXTRA_SPLIT_PREFIX = "validation_"  # mnli: validation_mismatched, staged beside `validation` (matched)

Split = str  # "train", "dev", "validation", or an extra validation split ("validation_mismatched")


def glue_task(task: str | Task) -> Task:
    """A task the package knows by name (GLUE's), resolved; a `Task` is returned as it is."""
    from lorascope import tasks

    if not isinstance(task, str):
        return task
    return tasks.known_task(task)


def columns(task: str | Task) -> tuple[str, ...]:
    """The input text columns of a task's staged rows (GLUE mrpc: sentence1, sentence2)."""
    return glue_task(task).text_columns


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
    """The folder of a `source: local` study (`builtin` -> the packaged GLUE fixtures)."""
    return FIXTURES if data.path == "builtin" else Path(str(data.path)).expanduser()


def local_files(data: DataConfig, spec: Task) -> dict[str, Path]:
    """{source split: file} of a task read from the study's `data` section with `source: local`: its type's
    `local_files` under `data.path` (`builtin`: the fixtures the package ships for the type)."""
    root = None if data.path == "builtin" else Path(str(data.path)).expanduser()
    return spec.task_type.local_files(spec, root)


def read_rows(path: Path, where: str) -> list[dict]:
    """The rows of a local source file: JSON lines (`.jsonl`, one object a line) or CSV with a header row (`.csv`,
    every value a string). ConfigError naming `where` (the field) and the file for a missing or unreadable file, a
    line that is not a JSON object."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{where}: {path} is a folder; give a .jsonl or .csv file")
    if not path.is_file():
        raise ConfigError(f"{where}: file {path.absolute()} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if path.suffix.lower() == ".csv":
        import csv
        import io

        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            return [dict(r) for r in reader]
        except csv.Error as exc:
            raise ConfigError(f"{where}: {path} is not valid CSV ({exc})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{where}: {path} line {n} is not JSON ({exc})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: {path} line {n} is not a JSON object")
        rows.append(row)
    return rows


def own_source_splits(spec: Task, where: str) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """A task's own local files (`tasks[].source.files`), every source split of its type read (`read_rows`) and checked
    at the door (`check_rows`: columns, labels, an empty split), and a description (files, fingerprint)."""
    files = dict(spec.source.files)
    needed = spec.task_type.source_splits(spec)
    missing = [s for s in needed if s not in files]
    extra = sorted(set(files) - set(needed))
    if missing or extra:
        raise ConfigError(f"{where}.source.files: a {spec.type} task reads the splits {list(needed)} (dev is carved from "
                          f"train); {'missing ' + str(missing) if missing else 'unknown ' + str(extra)}")  # fmt: skip
    splits, digests = {}, []
    for split in needed:
        field = f"{where}.source.files.{split}"
        rows = read_rows(Path(files[split]), field)
        splits[split] = spec.task_type.check_rows(spec, rows, f"{field}: {files[split]}")
        digests.append(Path(files[split]).expanduser().read_bytes())
    return splits, {"source": "files", "files": {s: str(files[s]) for s in needed}, "fingerprint": sha256_bytes(*digests)}


def check_source(study: Study) -> None:
    """Cheap checks before anything heavy loads: a local folder exists and holds every task's files (each source split
    of every task the study reads from its `data` section), and every task's own local files are there, readable,
    and hold rows the task's type accepts (columns, labels, no empty split). A task's own hub dataset is checked when
    the stage phase loads it, before the model."""
    for i, task in enumerate(study.tasks):
        spec = task.spec
        if spec.source is not None and spec.source.local:
            own_source_splits(spec, f"field tasks.{i}")
    if study.data.source != "local" or all(t.spec.source is not None for t in study.tasks):
        return
    root = local_root(study.data)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"data.path {study.data.path!r}: {root} is a file, not a folder of GLUE-format jsonl")
    if not root.is_dir():
        raise ConfigError(f"data.path {study.data.path!r}: folder {root} does not exist")
    for task in study.tasks:
        spec = task.spec
        if spec.source is not None:  # a task with its own source: checked with it
            continue
        for f in local_files(study.data, spec).values():
            if not f.is_file():
                raise ConfigError(f"data.path {study.data.path!r}: missing {f} (GLUE-format jsonl for task {task.name})")
            try:
                with open(f, "rb") as fh:
                    fh.read(1)
            except OSError as exc:
                raise ConfigError(f"data.path {study.data.path!r}: cannot read {f}: {exc.strerror or exc}") from None


def load_source(study: Study, task: str) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """The source splits of `task` (train, then its validation splits) from the study's source, checked by the task's
    type (`check_rows`), and a description of what was read (`fingerprint` identifies the exact content)."""
    spec = study.task(task).spec
    ttype = spec.task_type
    data = study.data
    if spec.source is not None:  # the task's own data
        where = f"field tasks.{[t.name for t in study.tasks].index(task)}"
        if spec.source.local:
            return own_source_splits(spec, where)
        src = spec.source
        try:
            splits, info = _load_hub(spec, src.hub, src.config, src.revision, dict(src.splits))
        except ConfigError as exc:  # a missing split or column, a label outside the set: name the study's field too
            raise ConfigError(f"{where}.source.hub: {exc}") from None
        return splits, {**info, "config": src.config}
    if data.source == "local":
        root = local_root(data)
        splits, digests = {}, []
        for split, path in local_files(data, spec).items():
            raw = path.read_bytes()
            digests.append(raw)
            splits[split] = ttype.check_rows(spec, [json.loads(x) for x in raw.decode("utf-8").splitlines() if x.strip()],
                                             str(path))  # fmt: skip
        source = {"source": "local", "path": "builtin" if data.path == "builtin" else str(root)}
        return splits, {**source, "fingerprint": sha256_bytes(*digests)}
    return _load_hub(spec, *ttype.hub_source(spec, data))


def _load_hub(spec: Task, dataset: str, config: str | None, revision: str,
              split_names: dict[str, str] | None = None) -> tuple[dict[str, list[dict]], dict[str, Any]]:  # fmt: skip
    """`datasets.load_dataset(dataset, config, revision=revision)`, every source split of `spec` checked by its type.
    `split_names`: {our split: the dataset's split} where they differ."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    try:
        dd = datasets.load_dataset(dataset, config, revision=revision)
    except DatasetNotFoundError as exc:
        raise ConfigError(f"hub dataset {dataset!r} (config {config!r}, revision {revision!r}): {exc}") from None
    except ValueError as exc:  # unknown config name, unknown revision
        raise ConfigError(f"hub dataset {dataset!r} config {config!r} revision {revision!r}: {exc}") from None
    except (ConnectionError, OSError) as exc:
        raise LorascopeError(f"cannot load {dataset}/{config}@{revision} from the hub: {exc}") from None
    names = dict(split_names or {})
    ours = spec.task_type.source_splits(spec)
    splits = {}
    for split in ours:
        theirs = names.get(split, split)
        if theirs not in dd:
            raise ConfigError(f"{dataset}/{config}@{revision} has no {theirs!r} split (has {sorted(dd)})")
        splits[split] = spec.task_type.check_rows(spec, [dict(r) for r in dd[theirs]], f"{dataset}/{config}/{theirs}")
    fingerprints = {s: getattr(dd[names.get(s, s)], "_fingerprint", None) for s in ours}
    content = sha256_bytes(*(json.dumps(splits[s], sort_keys=True).encode() for s in ours))
    return splits, {"source": "hub", "dataset": dataset, "revision": revision, "datasets_fingerprints": fingerprints,
                    "fingerprint": content}  # fmt: skip


# ------------------------------------------------------------------------------------------------ splits
def dev_size(n_train: int, fraction: float, max_n: int) -> int:
    """round(fraction * n), at least 1, at most max_n, leaving at least one training example."""
    return max(1, min(max_n, round(fraction * n_train), n_train - 1))


def _examples(rows: list[dict], key: Callable[[dict], Any] | None) -> list[list[int]]:
    """The row positions of each example, examples in first-seen order: one row each without `key`, else the rows with
    an equal `key(row)` (a generation task's MR and its references)."""
    if key is None:
        return [[i] for i in range(len(rows))]
    groups: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(key(r), []).append(i)
    return list(groups.values())


def split_dev(rows: list[dict], fraction: float, max_n: int, seed: int,
              key: Callable[[dict], Any] | None = None) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """(train, dev): a fixed-seed random `dev_size` subset of the examples becomes dev, the rest train; both keep the
    source order. `random.Random(seed)` is stable across Python versions and machines. An example is a row, or with
    `key` (the task type's `example_key`) the rows sharing a key: they land in the same split, and sizes count them."""
    examples = _examples(rows, key)
    n_dev = dev_size(len(examples), fraction, max_n)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    chosen = {i for e in order[:n_dev] for i in examples[e]}
    train = [r for i, r in enumerate(rows) if i not in chosen]
    dev = [r for i, r in enumerate(rows) if i in chosen]
    return train, dev


def subsample(rows: list[dict], n: int | None, seed: int, key: Callable[[dict], Any] | None = None) -> list[dict]:
    """A fixed-seed subset of n examples in source order (all rows when n is None or >= the number of examples). An
    example is a row, or with `key` the rows sharing a key (kept or dropped together)."""
    examples = _examples(rows, key)
    if n is None or n >= len(examples):
        return list(rows)
    keep = {i for e in random.Random(seed).sample(range(len(examples)), n) for i in examples[e]}
    return [r for i, r in enumerate(rows) if i in keep]


def example_key(task: Task) -> Callable[[dict], Any] | None:
    """The task type's `example_key` bound to the task, or None when every row is an example of its own."""
    from lorascope.tasks.base import TaskType

    ttype = task.task_type
    if type(ttype).example_key is TaskType.example_key:
        return None
    return lambda row: ttype.example_key(task, row)


def prepare_task(study: Study, task: str) -> tuple[dict[str, list[dict]], dict[str, Any]]:
    """What the stage phase commits for one task: {train, dev, validation} with the study's caps applied (and a task's
    further validation splits under their own names: mnli's `validation_mismatched`), and a description (source,
    fingerprint, sizes) for the commit's meta. `validation` is the task's first validation split (mnli: matched)."""
    cfg = study.task(task)
    spec = cfg.spec
    source, info = load_source(study, task)
    key = example_key(spec)  # generation: an MR with its references is one example
    train, dev = split_dev(source["train"], study.data.dev_fraction, study.data.dev_max, study.data.split_seed, key)
    train = subsample(train, cfg.train_samples, study.data.split_seed, key)
    first, *others = spec.validation_splits
    splits = {"train": train, "dev": dev,
              "validation": subsample(source[first], cfg.eval_samples, study.data.split_seed, key)}  # fmt: skip
    for name in others:
        splits[name] = subsample(source[name], cfg.eval_samples, study.data.split_seed, key)
    info = {**info, "sizes": {s: len(v) for s, v in splits.items()}, "source_sizes": {s: len(v) for s, v in source.items()},
            "split_seed": study.data.split_seed, "train_samples": cfg.train_samples, "eval_samples": cfg.eval_samples}  # fmt: skip
    if others:
        info["validation_split"] = first  # which source split `validation` is; the others keep their names
    return splits, info


def staged_splits(task: Task) -> tuple[str, ...]:
    """The splits the stage phase writes for a task: train, dev, validation, then its further validation splits."""
    return (*SPLITS, *task.extra_validation_splits)


def read_split(stage_dir: Path, task: str, split: Split) -> list[dict]:
    """A split of a task from the stage bundle's folder (`stage_dir/data/<task>/<split>.jsonl`, as the stage phase
    wrote it): the task's columns, `label`, `idx`. `split`: train, dev, validation, or a further validation split the
    task has (`validation_mismatched`)."""
    if split not in SPLITS and not str(split).startswith(EXTRA_SPLIT_PREFIX):
        raise ConfigError(f"unknown split {split!r}; splits are {SPLITS} (and a task's further validation splits)")
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


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[list[str]], max_length: int, what: str = "task") -> list[list[int]]:
    """Token ids of one or two texts per example (`texts`: one list per column, in input order), as every type that
    reads sentences or sentence pairs builds them. Decoders: `BOS s` or `BOS s1 EOS s2`, ids put together here (the
    tokenizer adds no specials), truncated longest-first to `max_length`; no trailing EOS (the last attended token is
    the last token of the text). Encoders (a tokenizer from `models.loading.load_tokenizer` of an encoder): the
    tokenizer's own single/pair template, its post-processor adding the specials, longest-first truncation so the whole
    sequence fits in `max_length` and both segments keep at least one token."""
    n_cols = len(texts)
    if n_cols not in (1, 2):
        raise ValueError(f"encode_texts: one or two text columns, got {n_cols}")
    n = len(texts[0])
    if is_encoder_tokenizer(tokenizer):
        single, pair = special_counts(tokenizer)
        n_special = single if n_cols == 1 else pair
        if n_special == 0:
            raise ConfigError("encoder tokenizer adds no special tokens: it has no template for the first-token classifier")
        if max_length < n_special + n_cols:
            raise ConfigError(f"max_length {max_length} is too short for {what} (the template alone takes {n_special} tokens)")
        if not n:
            return []
        enc = tokenizer(*texts, truncation="longest_first", max_length=max_length)
        return [[int(i) for i in ids] for ids in enc["input_ids"]]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ConfigError(f"tokenizer needs bos and eos ids (bos={bos}, eos={eos})")
    if max_length < n_cols + 1:
        raise ConfigError(f"max_length {max_length} is too short for {what}")
    ids = [tokenizer(col, add_special_tokens=False)["input_ids"] for col in texts] if n else []
    out = []
    for i in range(n):
        if n_cols == 1:
            out.append([bos, *ids[0][i][: max_length - 1]])
        else:
            a, b = ids[0][i], ids[1][i]
            la, lb = truncate_pair(len(a), len(b), max_length - 2)
            out.append([bos, *a[:la], eos, *b[:lb]])
    return out


def encode(tokenizer: PreTrainedTokenizerBase, task: str | Task, examples: list[dict], max_length: int) -> list[dict]:
    """Features of a task's rows by its type's `encode` (a task name: one the package knows, GLUE's). Classification:
    {"idx", "input_ids", "attention_mask", "labels"} per example, the ids of `encode_texts`."""
    spec = glue_task(task)
    return spec.task_type.encode(spec, tokenizer, examples, max_length)


def collate(features: list[dict], pad_id: int, pad_to: int | None = None, label_dtype: str = "long") -> dict[str, torch.Tensor]:
    """Right-pad a batch to its longest member (dynamic padding) or to `pad_to`. Returns int64 `input_ids`,
    `attention_mask`, `pool_mask` when every feature has one (0 on padding) and, when every feature has one, `labels`
    (int64, or float32 with `label_dtype="float"`: regression). `idx` stays with the caller."""
    import torch  # here, not at the top: the slim images import this module (status, stage sizes) without torch

    if not features:
        raise ValueError("collate: empty batch")
    longest = max(len(f["input_ids"]) for f in features)
    length = longest if pad_to is None else pad_to
    if length < longest:
        raise ValueError(f"collate: pad_to={pad_to} is shorter than the longest sequence ({longest})")
    input_ids = torch.full((len(features), length), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((len(features), length), dtype=torch.long)
    pool = all("pool_mask" in f for f in features)
    pool_mask = torch.zeros((len(features), length), dtype=torch.long) if pool else None
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        input_ids[i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
        attention_mask[i, :n] = torch.tensor(f.get("attention_mask", [1] * n), dtype=torch.long)
        if pool_mask is not None:
            pool_mask[i, :n] = torch.tensor(f["pool_mask"], dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if pool_mask is not None:
        batch["pool_mask"] = pool_mask
    if all("labels" in f for f in features):
        if label_dtype == "float":
            batch["labels"] = torch.tensor([float(f["labels"]) for f in features], dtype=torch.float32)
        else:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
    return batch
