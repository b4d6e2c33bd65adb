"""data: the bundled fixtures, sources, the dev split, pair encoding and collation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from lorascope import data
from lorascope.errors import ConfigError
from lorascope.models import builtin, loading
from lorascope.study import parse_study

REPO = Path(__file__).resolve().parents[1]
COLUMNS = {"mrpc": ["sentence1", "sentence2", "label", "idx"], "rte": ["sentence1", "sentence2", "label", "idx"],
           "sst2": ["sentence", "label", "idx"]}  # fmt: skip
POSITIVE_RATE = {"mrpc": 0.68, "rte": 0.5, "sst2": 0.56}


def study(**data_cfg):
    text = (REPO / "jobs" / "smoke.yaml").read_text()
    import yaml

    raw = yaml.safe_load(text)
    raw["data"].update(data_cfg)
    return parse_study(yaml.safe_dump(raw))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return loading.load_tokenizer(builtin.build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model"))


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.mark.parametrize("task", ["mrpc", "rte", "sst2"])
def test_fixtures_have_glue_columns_sizes_and_balance(task):
    for split, size in (("train", 600), ("validation", 200)):
        path = data.FIXTURES / task / f"{split}.jsonl"
        assert path.stat().st_size < 200_000
        rows = data.read_jsonl(path)
        assert len(rows) == size
        assert all(list(r) == COLUMNS[task] for r in rows)
        assert [r["idx"] for r in rows] == list(range(size))
        assert {r["label"] for r in rows} == {0, 1}
        assert abs(sum(r["label"] for r in rows) / size - POSITIVE_RATE[task]) < 0.01
    text = lambda r: tuple(r[c] for c in COLUMNS[task][:-2])  # noqa: E731
    train = {text(r) for r in data.read_jsonl(data.FIXTURES / task / "train.jsonl")}
    assert not train & {text(r) for r in data.read_jsonl(data.FIXTURES / task / "validation.jsonl")}


def test_fixture_generator_reproduces_the_committed_files(tmp_path):
    spec = importlib.util.spec_from_file_location("make_fixtures", REPO / "tools" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0
    assert module.main(["--dest", str(tmp_path)]) == 0
    assert (tmp_path / "glue" / "rte" / "train.jsonl").read_bytes() == (data.FIXTURES / "rte" / "train.jsonl").read_bytes()


def test_fixture_words_are_in_the_tokenizer(tokenizer):
    for task in ("mrpc", "rte", "sst2"):
        rows = data.read_jsonl(data.FIXTURES / task / "train.jsonl")
        feats = data.encode(tokenizer, task, rows, 384)
        assert all(tokenizer.unk_token_id not in f["input_ids"] for f in feats)
        assert max(len(f["input_ids"]) for f in feats) < 64


# ------------------------------------------------------------------------------------------------ splits
def test_dev_split_is_deterministic_disjoint_and_sized():
    rows = data.read_jsonl(data.FIXTURES / "mrpc" / "train.jsonl")
    train, dev = data.split_dev(rows, 0.1, 2000, seed=0)
    train2, dev2 = data.split_dev(rows, 0.1, 2000, seed=0)
    assert (train, dev) == (train2, dev2)
    assert len(dev) == 60 and len(train) == 540
    assert not {r["idx"] for r in train} & {r["idx"] for r in dev}
    assert sorted(r["idx"] for r in train + dev) == list(range(600))
    assert [r["idx"] for r in dev] == sorted(r["idx"] for r in dev)  # source order kept
    assert [r["idx"] for r in dev] != list(range(60))  # a random subset, not the head of the file
    _, other_seed = data.split_dev(rows, 0.1, 2000, seed=1)
    assert {r["idx"] for r in other_seed} != {r["idx"] for r in dev}
    _, capped = data.split_dev(rows, 0.1, 25, seed=0)
    assert len(capped) == 25
    assert data.dev_size(67_349, 0.1, 2000) == 2000  # GLUE SST-2 train: capped
    assert data.dev_size(3_668, 0.1, 2000) == 367  # GLUE MRPC train


def test_prepare_task_applies_caps_at_stage():
    import yaml

    raw = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    raw["tasks"][0].update(train_samples=100, eval_samples=50)  # mrpc
    s = parse_study(yaml.safe_dump(raw))
    splits, info = data.prepare_task(s, "mrpc")
    assert {k: len(v) for k, v in splits.items()} == {"train": 100, "dev": 60, "validation": 50}
    full, _ = data.prepare_task(study(), "mrpc")
    assert {r["idx"] for r in splits["train"]} <= {r["idx"] for r in full["train"]}  # a subset of train, never dev
    assert not {r["idx"] for r in splits["train"]} & {r["idx"] for r in full["dev"]}
    assert full["dev"] == splits["dev"]  # caps do not move the dev split
    assert info["sizes"] == {"train": 100, "dev": 60, "validation": 50} and info["source_sizes"]["train"] == 600


def test_local_source_fingerprint_and_bad_paths(tmp_path):
    splits, info = data.load_source(study(), "rte")
    assert info["source"] == "local" and len(info["fingerprint"]) == 64
    assert data.load_source(study(), "rte")[1]["fingerprint"] == info["fingerprint"]
    with pytest.raises(ConfigError, match="does not exist"):
        data.check_source(study(path=str(tmp_path / "missing")))
    (tmp_path / "glue" / "mrpc").mkdir(parents=True)
    for task in ("mrpc", "sst2"):
        (tmp_path / "glue" / task).mkdir(parents=True, exist_ok=True)
        for split in ("train", "validation"):
            (tmp_path / "glue" / task / f"{split}.jsonl").write_bytes((data.FIXTURES / task / f"{split}.jsonl").read_bytes())
    with pytest.raises(ConfigError, match=r"rte/train.jsonl"):
        data.check_source(study(path=str(tmp_path / "glue")))


def test_unlabelled_rows_are_rejected(tmp_path):
    for split in ("train", "validation"):
        rows = data.read_jsonl(data.FIXTURES / "sst2" / f"{split}.jsonl")
        if split == "validation":
            rows[3]["label"] = -1  # GLUE's test split has label -1
        data.write_jsonl(tmp_path / "sst2" / f"{split}.jsonl", rows)
    s = study(path=str(tmp_path))
    with pytest.raises(ConfigError, match="label -1"):
        data.load_source(s, "sst2")


def test_hub_source_calls_load_dataset_with_the_revision_and_never_uses_test(monkeypatch):
    """The hub is unreachable here; `datasets.load_dataset` is replaced by an in-memory DatasetDict of the same
    shape (GLUE has train, validation and an unlabelled test split) to check what the hub path does with it."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, revision=None, **kw):
        calls.append((path, name, revision))
        split = lambda s: data.read_jsonl(data.FIXTURES / name / f"{s}.jsonl")  # noqa: E731
        test = [{**r, "label": -1} for r in split("validation")]
        return datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in
                                     (("train", split("train")), ("validation", split("validation")), ("test", test))})  # fmt: skip

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    s = study(source="hub", path=None, revision="abc123")
    splits, info = data.load_source(s, "mrpc")
    assert calls == [("nyu-mll/glue", "mrpc", "abc123")]
    assert set(splits) == {"train", "validation"}
    assert splits["train"] == data.read_jsonl(data.FIXTURES / "mrpc" / "train.jsonl")
    assert info["source"] == "hub" and info["revision"] == "abc123" and len(info["fingerprint"]) == 64


# ------------------------------------------------------------------------------------------------ tokens
def test_encode_single_and_pair_token_layout(tokenizer):
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    single = data.encode(tokenizer, "sst2", [{"sentence": "the film is dull .", "label": 0, "idx": 7}], 384)[0]
    words = tokenizer("the film is dull .", add_special_tokens=False)["input_ids"]
    assert single == {"idx": 7, "input_ids": [bos, *words], "attention_mask": [1] * (len(words) + 1), "labels": 0}
    row = {"sentence1": "alice lives in paris .", "sentence2": "alice owns a dog .", "label": 1, "idx": 3}
    pair = data.encode(tokenizer, "rte", [row], 384)[0]
    s1 = tokenizer(row["sentence1"], add_special_tokens=False)["input_ids"]
    s2 = tokenizer(row["sentence2"], add_special_tokens=False)["input_ids"]
    assert pair["input_ids"] == [bos, *s1, eos, *s2]
    assert pair["input_ids"].count(eos) == 1 and pair["input_ids"].count(bos) == 1
    assert "[SEP]" not in tokenizer.decode(pair["input_ids"])


def test_encode_truncates_longest_first(tokenizer):
    long1 = " ".join(["the film is dull ."] * 30)  # 150 words
    row = {"sentence1": long1, "sentence2": "alice owns a dog .", "label": 0, "idx": 0}
    f = data.encode(tokenizer, "mrpc", [row], max_length=32)[0]
    assert len(f["input_ids"]) == 32
    assert f["input_ids"][-5:] == tokenizer("alice owns a dog .", add_special_tokens=False)["input_ids"]  # s2 kept
    assert f["input_ids"][26] == tokenizer.eos_token_id
    both = data.encode(tokenizer, "mrpc", [{**row, "sentence2": long1}], max_length=32)[0]
    assert len(both["input_ids"]) == 32 and both["input_ids"].index(tokenizer.eos_token_id) == 16  # 15 + 15 words
    assert data.truncate_pair(10, 3, 8) == (5, 3)
    assert data.truncate_pair(9, 9, 8) == (4, 4)
    single = data.encode(tokenizer, "sst2", [{"sentence": long1, "label": 1, "idx": 0}], max_length=20)[0]
    assert len(single["input_ids"]) == 20


def test_collate_dynamic_and_fixed_padding():
    feats = [{"input_ids": [1, 5, 6], "attention_mask": [1, 1, 1], "labels": 1, "idx": 0},
             {"input_ids": [1, 7], "attention_mask": [1, 1], "labels": 0, "idx": 1}]  # fmt: skip
    b = data.collate(feats, pad_id=2)
    assert b["input_ids"].tolist() == [[1, 5, 6], [1, 7, 2]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [1, 0] and b["labels"].dtype == torch.long
    assert set(b) == {"input_ids", "attention_mask", "labels"}
    fixed = data.collate(feats, pad_id=2, pad_to=6)
    assert fixed["input_ids"].tolist() == [[1, 5, 6, 2, 2, 2], [1, 7, 2, 2, 2, 2]]
    assert fixed["attention_mask"].sum().item() == 5
    with pytest.raises(ValueError, match="shorter"):
        data.collate(feats, pad_id=2, pad_to=2)
    no_labels = data.collate([{"input_ids": [1, 4]}], pad_id=2)
    assert set(no_labels) == {"input_ids", "attention_mask"}


def test_glue_columns_written_by_stage_match_json(tmp_path):
    rows = [{"sentence": "café , naïve", "label": 1, "idx": 0}]
    data.write_jsonl(tmp_path / "x.jsonl", rows)
    assert data.read_jsonl(tmp_path / "x.jsonl") == rows
    assert json.loads((tmp_path / "x.jsonl").read_text(encoding="utf-8")) == rows[0]
