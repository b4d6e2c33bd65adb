"""The task-type registry: GLUE tasks resolve through the classification type from the one table, a study's entry is
resolved at the door, and a new type is one registration that the study resolves through."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorascope import tasks
from lorascope.errors import ConfigError
from lorascope.metrics import glue
from lorascope.study import parse_study
from lorascope.tasks import TASK_TYPES, Task, TaskType, register

REPO = Path(__file__).resolve().parents[2]


def smoke(**task_fields) -> dict:
    raw = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    raw["tasks"] = [{"name": "mrpc", **task_fields}]
    return raw


def test_classification_is_registered_with_its_facts():
    assert "classification" in TASK_TYPES.names()
    c = TASK_TYPES.get("classification")
    assert (c.peft_task_type, c.encoders, c.bench, c.vllm_servable) == ("SEQ_CLS", True, "classification", True)
    with pytest.raises(ConfigError, match=r"type: unknown task type 'nope'; known: .*classification"):
        TASK_TYPES.get("nope", "type")


@pytest.mark.parametrize("name", glue.GLUE_TASKS.names())
def test_every_glue_task_resolves_from_the_one_table(name):
    spec = tasks.known_task(name)
    table = glue.glue_task(name)
    assert spec.type == "classification" and spec.text_columns == table.columns
    assert (spec.num_labels, spec.label_names, spec.validation_splits) == (table.num_labels, table.label_names,
                                                                          table.validation_splits)  # fmt: skip
    assert spec.primary_metric == table.primary_metric and set(table.metrics) <= set(spec.metrics)
    # binary tasks report accuracy and F1 (as metrics.json always has), multi-class accuracy, regression correlations
    expected = {1: ("pearson", "spearman"), 2: ("accuracy", "f1"), 3: ("accuracy",)}[table.num_labels]
    assert spec.metrics[: len(expected)] == expected


def test_the_old_three_task_table_is_gone():
    assert tasks.GLUE_TASKS is glue.GLUE_TASKS  # one table, re-exported
    assert not hasattr(tasks, "GLUE_TASKS_OLD")
    assert len(tasks.GLUE_TASKS) == 9


def test_a_study_task_resolves_at_the_door():
    study = parse_study(yaml.safe_dump(smoke(metric="accuracy")))
    assert study.tasks[0].spec.primary_metric == "accuracy" and study.tasks[0].selection_metric == "accuracy"
    assert parse_study(yaml.safe_dump(smoke())).tasks[0].selection_metric == "f1"  # GLUE's MRPC default
    with pytest.raises(ConfigError, match=r"field tasks\.0\.metric: 'pearson' is not a metric of task 'mrpc'"):
        parse_study(yaml.safe_dump(smoke(metric="pearson")))
    with pytest.raises(ConfigError, match=r"field tasks\.0\.type: unknown task type 'qa'"):
        parse_study(yaml.safe_dump(smoke(type="qa")))
    with pytest.raises(ConfigError, match=r"field tasks\.0\.options: the classification type takes no options"):
        parse_study(yaml.safe_dump(smoke(options={"stride": 8})))


class EchoType(TaskType):
    """A type defined only here: what a new module in lorascope/tasks/ does on import."""

    name = "echo"
    title = "echo"
    roles = ("text", "label")
    required_roles = ("text",)
    input_roles = ("text",)
    peft_task_type = "CAUSAL_LM"

    def known_tasks(self):
        return ("echo-fixture",)

    def resolve(self, config, where):
        return Task(name=config.name, type=self.name, columns={"text": "text"}, label_names=(), num_labels=0,
                    validation_splits=("validation",), metrics=("exact",), primary_metric="exact",
                    max_length=config.max_length)  # fmt: skip


@pytest.fixture
def echo_type():
    register(EchoType)
    yield TASK_TYPES.get("echo")
    del TASK_TYPES._entries["echo"]  # a test's type must not outlive it


def test_a_new_type_is_one_registration(echo_type):
    raw = smoke()
    raw["tasks"] = [{"name": "echo-fixture"}, {"name": "mine", "type": "echo"}]
    study = parse_study(yaml.safe_dump(raw))
    assert [t.task_type for t in study.tasks] == [echo_type, echo_type]
    assert [t.selection_metric for t in study.tasks] == ["exact", "exact"]
    assert study.tasks[0].spec.task_type.peft_task_type == "CAUSAL_LM"


def test_writing_the_default_type_out_keeps_the_hash():
    plain = parse_study(yaml.safe_dump(smoke()))
    assert parse_study(yaml.safe_dump(smoke(type="classification"))).hash == plain.hash
    assert parse_study(yaml.safe_dump(smoke(options={}))).hash == plain.hash
