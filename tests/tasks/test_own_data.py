"""A user's own data: local JSONL and CSV files per split (or a hub dataset at a pinned revision), a column mapping
onto the type's roles and the label set, checked at the door: each bad case exits 2 from validate, run and stage,
naming the field or the file, before anything is created."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lorascope import cli, data
from lorascope.errors import ConfigError, LorascopeError
from lorascope.study import parse_study
from tests.tasks.own_data import reviews_task, scores_task, small_study, write_reviews_jsonl, write_scores_csv


def _write(folder: Path, raw: dict) -> Path:
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _one_error(capsys) -> str:
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------------------ the door
def _missing_file(tmp: Path) -> dict:
    files = write_reviews_jsonl(tmp / "d")
    Path(files["validation"]).unlink()
    return small_study([reviews_task(files)])


def _missing_split(tmp: Path) -> dict:
    files = write_reviews_jsonl(tmp / "d")
    del files["validation"]
    return small_study([reviews_task(files)])


def _missing_column(tmp: Path) -> dict:
    return small_study([reviews_task(write_reviews_jsonl(tmp / "d"), columns={"text": "body", "label": "sentiment"})])


def _empty_split(tmp: Path) -> dict:
    files = write_reviews_jsonl(tmp / "d")
    Path(files["validation"]).write_text("")
    return small_study([reviews_task(files)])


def _label_outside(tmp: Path) -> dict:
    files = write_reviews_jsonl(tmp / "d")
    rows = [json.loads(x) for x in Path(files["train"]).read_text().splitlines()]
    rows[7]["sentiment"] = "neutral"
    Path(files["train"]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return small_study([reviews_task(files)])


def _mapping_unknown_role(tmp: Path) -> dict:
    return small_study([reviews_task(write_reviews_jsonl(tmp / "d"), columns={"text": "review", "label": "sentiment",
                                                                             "answer": "id"})])  # fmt: skip


def _mapping_without_label(tmp: Path) -> dict:
    return small_study([reviews_task(write_reviews_jsonl(tmp / "d"), columns={"text": "review"})])


def _no_labels_declared(tmp: Path) -> dict:
    task = reviews_task(write_reviews_jsonl(tmp / "d"))
    del task["labels"]
    return small_study([task])


def _regression_label_not_a_number(tmp: Path) -> dict:
    files = write_scores_csv(tmp / "d")
    text = Path(files["validation"]).read_text().splitlines()
    text[3] = "a,b,high"
    Path(files["validation"]).write_text("\n".join(text) + "\n")
    return small_study([scores_task(files)])


def _not_json(tmp: Path) -> dict:
    files = write_reviews_jsonl(tmp / "d")
    with open(files["train"], "a") as f:
        f.write("{not json\n")
    return small_study([reviews_task(files)])


def _hub_without_revision(tmp: Path) -> dict:
    return small_study([{"name": "reviews", "source": {"hub": "someone/reviews"}, "columns": {"text": "t", "label": "l"},
                         "labels": ["a", "b"]}])  # fmt: skip


def _wrong_suffix(tmp: Path) -> dict:
    return small_study([reviews_task({"train": str(tmp / "a.parquet"), "validation": str(tmp / "b.jsonl")})])


def _glue_name_with_a_mapping(tmp: Path) -> dict:
    return small_study([{"name": "sst2", "columns": {"text": "sentence", "label": "label"}}])


DOOR = [
    ("missing-file", _missing_file, "field tasks.0.source.files.validation", "does not exist"),
    ("missing-split", _missing_split, "field tasks.0.source.files", "missing ['validation']"),
    ("missing-column", _missing_column, "field tasks.0.source.files.train", "lacks ['body']"),
    ("empty-split", _empty_split, "field tasks.0.source.files.validation", "no rows (an empty split)"),
    ("label-outside", _label_outside, "reviews-train.jsonl: row 7", "label 'neutral' is outside the declared labels"),
    ("mapping-unknown-role", _mapping_unknown_role, "field tasks.0.columns", "['answer'] are not columns of a classification task"),
    ("mapping-without-label", _mapping_without_label, "field tasks.0.columns", "no source column for ['label']"),
    ("no-labels", _no_labels_declared, "field tasks.0.labels", "declares its label set"),
    ("regression-label", _regression_label_not_a_number, "scores-validation.csv: row 2", "'high' is not a number"),
    ("not-json", _not_json, "field tasks.0.source.files.train", "is not JSON"),
    ("hub-without-revision", _hub_without_revision, "field tasks.0.source.revision", "pinned revision"),
    ("wrong-suffix", _wrong_suffix, "field tasks.0.source.files.train", "neither .jsonl nor .csv"),
    ("glue-name-with-mapping", _glue_name_with_a_mapping, "field tasks.0.columns", "has its own columns"),
]  # fmt: skip


@pytest.mark.parametrize("name,make,field,needle", DOOR, ids=[d[0] for d in DOOR])
def test_a_bad_source_or_mapping_exits_2_naming_the_field_before_anything_is_created(name, make, field, needle, tmp_path,
                                                                                     capsys):  # fmt: skip
    study = _write(tmp_path, make(tmp_path))
    store, work = tmp_path / "store", tmp_path / "work"
    for argv in (
        ["validate", str(study)],
        ["run", "--study", str(study), "--store", str(store), "--work-dir", str(work)],
        ["stage", "--study", str(study), "--store", str(store), "--work-dir", str(work)],
    ):
        rc = cli.main(argv)
        line = _one_error(capsys)
        assert rc == 2 and field in line and needle in line, (argv[0], line)
        assert not store.exists() and not work.exists(), argv[0]


# ------------------------------------------------------------------------------------------------ what is staged
def test_local_jsonl_and_csv_are_staged_in_the_types_columns_with_declared_label_ids(tmp_path):
    study = parse_study(yaml.safe_dump(small_study([reviews_task(write_reviews_jsonl(tmp_path / "j")),
                                                    scores_task(write_scores_csv(tmp_path / "c"))])))  # fmt: skip
    reviews, info = data.prepare_task(study, "reviews")
    sst2 = data.read_jsonl(data.FIXTURES / "sst2" / "validation.jsonl")
    assert reviews["validation"] == [{"text": r["sentence"], "label": r["label"], "idx": r["idx"]} for r in sst2]
    assert info["source"] == "files" and len(info["fingerprint"]) == 64
    assert info["sizes"] == {"train": 540, "dev": 60, "validation": 200}
    scores, _ = data.prepare_task(study, "scores")
    stsb = data.read_jsonl(data.FIXTURES / "stsb" / "validation.jsonl")
    # CSV has no id column: the row number is the idx; the score parsed as a float
    assert scores["validation"] == [{"text": r["sentence1"], "text_pair": r["sentence2"], "label": float(r["label"]), "idx": i}
                                    for i, r in enumerate(stsb)]  # fmt: skip
    spec = study.task("scores").spec
    assert (spec.num_labels, spec.primary_metric, spec.metrics) == (1, "pearson", ("pearson", "spearman"))
    assert study.task("reviews").spec.label_names == ("negative", "positive")


def test_labels_as_ids_and_a_metric_of_the_task(tmp_path):
    files = write_reviews_jsonl(tmp_path / "j")
    for split in files.values():  # labels as ids 0/1 in the files
        rows = [json.loads(x) for x in Path(split).read_text().splitlines()]
        Path(split).write_text("".join(json.dumps({**r, "sentiment": int(r["sentiment"] == "positive")}) + "\n" for r in rows))
    study = parse_study(yaml.safe_dump(small_study([reviews_task(files, labels=[0, 1], metric="f1")])))
    splits, _ = data.prepare_task(study, "reviews")
    assert {r["label"] for r in splits["train"]} == {0, 1} and study.tasks[0].selection_metric == "f1"
    with pytest.raises(ConfigError, match=r"field tasks\.0\.labels: \[1, 0\]: ids are 0\.\.1 in order"):
        parse_study(yaml.safe_dump(small_study([reviews_task(files, labels=[1, 0])])))
    with pytest.raises(ConfigError, match=r"field tasks\.0\.metric: 'pearson' is not a metric of task 'reviews'"):
        parse_study(yaml.safe_dump(small_study([reviews_task(files, metric="pearson")])))


def test_own_data_fields_are_hash_neutral_when_absent():
    """Every shipped study keeps its hash: the new task fields at their defaults are not part of the canonical JSON."""
    plain = parse_study(yaml.safe_dump(small_study([{"name": "sst2", "metric": "accuracy"}])))
    canonical = json.loads(plain.canonical_json())
    assert set(canonical["tasks"][0]) == {"name", "metric", "max_length", "train_samples", "hpo_train_samples",
                                          "eval_samples"}  # fmt: skip


def test_a_hub_source_goes_through_load_dataset_with_its_revision_and_mapping(monkeypatch, tmp_path):
    """The hub path is `datasets.load_dataset(hub, config, revision=...)`; here replaced by an in-memory DatasetDict
    of the same shape (the hub is unreachable in tests) to check the mapping, the split names and the revision."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, revision=None, **kw):
        calls.append((path, name, revision))
        rows = lambda s: [{"body": r["sentence"], "stars": ["bad", "good"][r["label"]]}  # noqa: E731
                          for r in data.read_jsonl(data.FIXTURES / "sst2" / f"{s}.jsonl")]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows("train")),
                                     "test": datasets.Dataset.from_list(rows("validation"))})  # fmt: skip

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = {"name": "stars", "source": {"hub": "someone/stars", "revision": "0123abc", "config": "en",
                                        "splits": {"validation": "test"}},
            "columns": {"text": "body", "label": "stars"}, "labels": ["bad", "good"]}  # fmt: skip
    study = parse_study(yaml.safe_dump(small_study([task])))
    splits, info = data.prepare_task(study, "stars")
    assert calls == [("someone/stars", "en", "0123abc")]
    assert info["source"] == "hub" and info["revision"] == "0123abc" and info["config"] == "en"
    assert splits["validation"][:2] == [{"text": r["sentence"], "label": r["label"], "idx": i}
                                        for i, r in enumerate(data.read_jsonl(data.FIXTURES / "sst2" / "validation.jsonl")[:2])]


def test_a_hub_source_offline_fails_naming_the_dataset(monkeypatch):
    """With HF_HUB_OFFLINE=1 (how the tests run) the real `datasets.load_dataset` cannot reach the hub: the stage
    phase fails with the dataset and revision named (exit 1: the network, not the study), before any model loads."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    task = {"name": "stars", "source": {"hub": "lorascope-tests/no-such-dataset", "revision": "0123abc"},
            "columns": {"text": "body", "label": "stars"}, "labels": ["bad", "good"]}  # fmt: skip
    study = parse_study(yaml.safe_dump(small_study([task])))
    with pytest.raises(LorascopeError, match=r"cannot load lorascope-tests/no-such-dataset/None@0123abc from the hub") as e:
        data.prepare_task(study, "stars")
    assert e.value.exit_code == 1


@pytest.mark.parametrize("bad,needle", [("column", "lacks ['stars']"), ("split", "has no 'test' split"),
                                        ("label", "label 'meh' is outside the declared labels")])  # fmt: skip
def test_a_bad_hub_dataset_exits_2_from_stage_before_the_model_is_fetched(bad, needle, monkeypatch, tmp_path, capsys):
    """A hub dataset is read by the stage phase (validate cannot reach it): a missing column or split or a label
    outside the set is exit 2 naming the task's field and the dataset, and `hub.fetch_model` is never called."""
    import datasets

    from lorascope.models import hub

    def fake_load_dataset(path, name=None, revision=None, **kw):
        rows = [{"body": r["sentence"], "stars": ["bad", "good"][r["label"]]}
                for r in data.read_jsonl(data.FIXTURES / "sst2" / "validation.jsonl")]  # fmt: skip
        if bad == "column":
            rows = [{"body": r["body"]} for r in rows]
        if bad == "label":
            rows[3]["stars"] = "meh"
        splits = {"train": rows} if bad == "split" else {"train": rows, "test": rows}
        return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})

    fetched = []
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(hub, "fetch_model", lambda *a, **k: fetched.append(a))
    task = {"name": "stars", "source": {"hub": "someone/stars", "revision": "0123abc", "splits": {"validation": "test"}},
            "columns": {"text": "body", "label": "stars"}, "labels": ["bad", "good"]}  # fmt: skip
    study = _write(tmp_path, small_study([task]))
    rc = cli.main(["stage", "--study", str(study), "--store", str(tmp_path / "store"), "--work-dir", str(tmp_path / "w")])
    line = _one_error(capsys)
    assert rc == 2 and "field tasks.0.source.hub: " in line and "someone/stars" in line and needle in line, line
    assert fetched == []
