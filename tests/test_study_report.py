"""The study's `report:` section (published reference numbers): validated at the door, each error naming the
field; a study without it keeps its hash."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorascope import cli
from lorascope.study import load_study, parse_study

REPO = Path(__file__).resolve().parents[1]
GOOD = {"reference": {"source": "Hu et al. 2021 (LoRA), Table 2, RoBERTa-base", "metric": "accuracy",
                      "values": {"mrpc": {"full": 90.2, "lora": 89.7}, "rte": {"full": 78.7, "lora": 86.6}}}}  # fmt: skip


def _with_report(report) -> dict:
    raw = yaml.safe_load((REPO / "jobs/smoke.yaml").read_text())
    raw["report"] = report
    return raw


def test_a_valid_reference_section():
    s = parse_study(yaml.safe_dump(_with_report(GOOD)))
    ref = s.report.reference
    assert ref.values["rte"]["lora"] == 86.6 and ref.metric_of("mrpc") == "accuracy"
    per_task = {**GOOD["reference"], "metric": {"mrpc": "accuracy", "rte": "accuracy"}}
    assert parse_study(yaml.safe_dump(_with_report({"reference": per_task}))).report.reference.metric_of("rte") == "accuracy"
    # a study without the section keeps the hash it had; with it, the hash changes (it is part of the study)
    plain = load_study(REPO / "jobs/smoke.yaml")
    assert parse_study(yaml.safe_dump(_with_report({}))).hash == plain.hash
    assert s.hash != plain.hash


def _ref(**change):
    return {"reference": {**GOOD["reference"], **change}}


BAD = [
    ("unknown task", _ref(values={"cola": {"full": 80.0}}), "field report.reference.values.cola: not a task of this study"),
    ("unknown method", _ref(values={"rte": {"dora": 80.0}}), "field report.reference.values.rte.dora: not a method of this study"),
    ("above 100", _ref(values={"rte": {"full": 178.7}}), "field report.reference.values.rte.full: 178.7 must be a percentage in [0, 100]"),
    ("negative", _ref(values={"rte": {"full": -1.0}}), "field report.reference.values.rte.full: -1.0 must be a percentage"),
    ("fractions", _ref(values={"rte": {"full": 0.787, "lora": 0.866}}), "field report.reference.values: every value is <= 1"),
    ("bad metric", _ref(metric="mcc"), "field report.reference.metric"),
    ("metric for an unknown task", _ref(metric={"rte": "accuracy", "mrpc": "f1", "cola": "accuracy"}),
     "field report.reference.metric.cola: not a task of this study"),
    ("metric missing a task", _ref(metric={"rte": "accuracy"}), "field report.reference.metric: no metric for task(s) ['mrpc']"),
    ("no source", {"reference": {k: v for k, v in GOOD["reference"].items() if k != "source"}}, "field report.reference.source"),
    ("empty source", _ref(source=""), "field report.reference.source"),
    ("unknown key", {"reference": GOOD["reference"], "extra": 1}, "field report.extra"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "report", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_reference_exits_2_naming_the_field(name, report, expected, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with_report(report)))
    assert cli.main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
