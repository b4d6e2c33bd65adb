"""The bundled fixtures of the later task types (tools/make_task_fixtures.py): reproducible, in the real datasets'
formats, and written in the tiny Llama tokenizer's words (its vocabulary, and so every smoke result, unchanged)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lorascope.metrics import glue, squad_v2
from tests.fixtures.scripts import load_script

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "pkg" / "lorascope" / "assets"
NEW_GLUE = ("cola", "qqp", "stsb", "mnli", "qnli", "wnli")


@pytest.fixture(scope="module")
def maker():
    module = load_script("tools/make_task_fixtures.py")
    return module


def rows(rel: str) -> list[dict]:
    return [json.loads(line) for line in (ASSETS / rel).read_text().splitlines()]


def test_generator_reproduces_the_committed_files(maker, tmp_path):
    assert maker.main(["--check"]) == 0
    assert maker.main(["--dest", str(tmp_path)]) == 0
    for rel in ("glue/mnli/validation_mismatched.jsonl", "squad_v2/train.jsonl", "e2e/validation.jsonl"):
        assert (tmp_path / rel).read_bytes() == (ASSETS / rel).read_bytes()
    assert not (tmp_path / "glue" / "mrpc").exists()  # the first three tasks stay tools/make_fixtures.py's


def test_new_glue_tasks_have_glues_layout():
    for task in NEW_GLUE:
        spec = glue.glue_task(task)
        keys: dict[str, set] = {}
        for split in ("train", *spec.validation_splits):
            data = rows(f"glue/{task}/{split}.jsonl")
            assert 100 <= len(data) <= 900
            assert all(list(r) == [*spec.columns, "label", "idx"] for r in data)
            assert [r["idx"] for r in data] == list(range(len(data)))
            keys[split] = {tuple(r[c] for c in spec.columns) for r in data}
            labels = [r["label"] for r in data]
            if spec.is_regression:
                assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in labels)
            else:
                assert set(labels) == set(range(spec.num_labels))
        for split in spec.validation_splits:
            assert not keys["train"] & keys[split], (task, split)  # GLUE's splits are disjoint
    shares = {t: Counter(r["label"] for r in rows(f"glue/{t}/train.jsonl")) for t in ("cola", "qqp", "mnli")}
    assert shares["cola"][1] == 420 and shares["qqp"][1] == 222 and set(shares["mnli"].values()) == {300}
    # mnli's mismatched validation is another genre (organisations' decisions), absent from train
    assert all(r["premise"].startswith("the ") for r in rows("glue/mnli/validation_mismatched.jsonl"))
    assert not any(" million" in r["hypothesis"] for r in rows("glue/mnli/train.jsonl"))


def test_squad_v2_fixture_is_squad_v2_shaped():
    for split, unanswerable_share in (("train", 1 / 3), ("validation", 1 / 2)):
        data = rows(f"squad_v2/{split}.jsonl")
        assert all(list(r) == ["id", "title", "context", "question", "answers"] for r in data)
        assert len({r["id"] for r in data}) == len(data)
        for r in data:
            answers = r["answers"]
            assert len(answers["text"]) == len(answers["answer_start"])
            for text, start in zip(answers["text"], answers["answer_start"], strict=True):
                assert r["context"][start:start + len(text)] == text
        share = sum(not r["answers"]["text"] for r in data) / len(data)
        assert abs(share - unanswerable_share) < 0.05, (split, share)
    validation, train = rows("squad_v2/validation.jsonl"), rows("squad_v2/train.jsonl")
    assert any(len(r["answers"]["text"]) > 1 for r in validation)  # several gold answers, as SQuAD's dev set has
    assert all(len(r["answers"]["text"]) <= 1 for r in train)
    assert not {r["context"] for r in train} & {r["context"] for r in validation}
    # an unanswerable question's value is nowhere in its context
    for r in validation:
        if not r["answers"]["text"] and r["question"].startswith("who lives in "):
            assert r["question"].removeprefix("who lives in ") not in r["context"]
    # the gold answers, scored as predictions by the official rules: 100, and "no answer" everywhere gets the
    # unanswerable share
    gold = {r["id"]: r["answers"]["text"] for r in validation}
    assert squad_v2.evaluate(gold, {q: (a[0] if a else "") for q, a in gold.items()})["f1"] == pytest.approx(100.0)
    no_answer = squad_v2.evaluate(gold, dict.fromkeys(gold, ""))
    assert no_answer["exact"] == pytest.approx(100 * no_answer["NoAns_total"] / no_answer["total"])


def test_e2e_fixture_groups_references_per_meaning_representation():
    mr_pattern = re.compile(r"^name\[[A-Z][a-z]+\](, (job|city|pet|year)\[[A-Za-z0-9]+\])+$")
    by_split = {}
    for split in ("train", "validation"):
        data = rows(f"e2e/{split}.jsonl")
        assert all(list(r) == ["meaning_representation", "human_reference"] for r in data)
        grouped: dict[str, list[str]] = {}
        for r in data:
            grouped.setdefault(r["meaning_representation"], []).append(r["human_reference"])
        # one row per reference, the rows of one MR consecutive (as E2E's CSVs), 2 to 6 distinct references each
        assert [r["meaning_representation"] for r in data] == [mr for mr, refs in grouped.items() for _ in refs]
        assert all(2 <= len(refs) <= 6 and len(set(refs)) == len(refs) for refs in grouped.values())
        for mr, refs in grouped.items():
            assert mr_pattern.match(mr), mr
            values = re.findall(r"\[([^\]]+)\]", mr)
            assert all(v in ref for ref in refs for v in values), (mr, refs)  # every attribute realised
        by_split[split] = set(grouped)
    assert len(by_split["train"]) == 150 and len(by_split["validation"]) == 50
    assert not by_split["train"] & by_split["validation"]


def test_the_tiny_llama_tokenizer_knows_the_words(maker):
    rates = maker.unk_rates(maker.build())
    for rel, by_column in rates.items():
        for column, rate in by_column.items():
            if column == "meaning_representation":
                # E2E's MR syntax: per attribute "key", "[", value, "]" (or "],"): the key and brackets are unknown
                # to the word-level tokenizer, every value is known -> exactly 3 of 4 tokens
                assert rate == pytest.approx(0.75), rel
            else:
                assert rate == 0.0, (rel, column)
