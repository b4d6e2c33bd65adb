"""The study config: grid order, hashing, and an exit-2 error naming the field for every invalid field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lorascope import cli
from lorascope.study import load_study, parse_study
from tests.fixtures.studies import read_job, set_path

REPO = Path(__file__).resolve().parents[1]


def test_reference_grid_has_18_cells_in_documented_order():
    study = load_study(REPO / "jobs/study.yaml")
    cells = study.cells()
    assert len(cells) == 18
    assert [c.name for c in cells[:7]] == [
        "mrpc-full-s42", "mrpc-full-s1337", "mrpc-full-s2024",
        "mrpc-lora-s42", "mrpc-lora-s1337", "mrpc-lora-s2024", "sst2-full-s42",
    ]
    assert cells[17].name == "rte-lora-s2024" and all(c.index == i for i, c in enumerate(cells))
    assert study.model.name == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"
    lora = study.method("lora")
    assert (lora.r, lora.target_modules) == (8, ["q_proj", "v_proj"])
    assert study.hpo.trials == 15 and study.extraction.examples == 750 and study.bench.batch_sizes == [1, 2, 4, 8, 16]
    assert study.task("mrpc").selection_metric == "f1" and study.task("rte").selection_metric == "accuracy"


def test_smoke_study_has_the_same_shape():
    ref, smoke = load_study(REPO / "jobs/study.yaml"), load_study(REPO / "jobs/smoke.yaml")
    assert [(c.task, c.method, c.seed) for c in ref.cells()] == [(c.task, c.method, c.seed) for c in smoke.cells()]
    assert smoke.model.name == "builtin:tiny-llama" and smoke.data.source == "local"


def test_hash_is_stable_and_sensitive():
    a = load_study(REPO / "jobs/study.yaml")
    b = parse_study((REPO / "jobs/study.yaml").read_text())
    assert a.hash == b.hash and len(a.hash) == 16
    assert a.model_copy(update={"seeds": [42]}).hash != a.hash


BAD_FIELDS = [
    ("tasks.0.name", "imdb", "tasks.0.name"),  # every GLUE task is known (issue 23); imdb is not
    ("tasks.0.name", "Not-A-Name", "tasks.0.name"),
    ("tasks.0.metric", "auc", "tasks.0.metric"),
    ("tasks.1.max_length", 2, "tasks.1.max_length"),
    ("methods.1.r", 0, "methods.1.lora.r"),
    ("methods.1.kind", "ia3", "methods.1"),
    ("methods.1.dropout", 1.5, "methods.1.lora.dropout"),
    ("seeds", [], "seeds"),
    ("seeds", [1, 1], "seeds: duplicate entries"),
    ("hpo.trials", 0, "hpo.trials"),
    ("hpo.spaces.lora.learning_rate", {"type": "float", "low": 0.1, "high": 0.01}, "hpo.spaces.lora.learning_rate"),
    ("hpo.spaces.lora.learning_rate", {"type": "float", "low": 0.0, "high": 0.01, "log": True}, "log scale needs low > 0"),
    ("hpo.spaces.lora.momentum", {"type": "float", "low": 0.0, "high": 0.9}, "unknown parameter"),
    ("hpo.spaces", {"full": {}}, "no search space for ['lora']"),
    ("training.micro_batch", 0, "training.micro_batch"),
    ("training.optimizer", "sgd", "training.optimizer"),
    ("training.report_to", ["tensorbord"], "field training.report_to: unknown integration(s) ['tensorbord']"),
    ("training.report_to", ["none", "wandb"], "field training.report_to: 'none' cannot be combined"),
    ("training.report_to", [], "field training.report_to: an empty list"),
    ("extraction.examples", 1, "extraction.examples"),
    ("bench.batch_sizes", [1, 0], "bench.batch_sizes.1"),
    ("bench.modes", ["merged", "multi-9"], "bench.modes.1"),
    ("bench.backends", ["onnx"], "bench.backends.0"),
    ("model", {"name": "x", "dtype": "int4"}, "model.dtype"),
    ("data", {"source": "local"}, "data.path is empty"),
    ("name", "Bad Name", "name"),
    ("surprise", 1, "surprise"),
]


@pytest.mark.parametrize(("path", "value", "expected"), BAD_FIELDS, ids=[b[0] + "=" + str(b[1])[:20] for b in BAD_FIELDS])
def test_invalid_field_exits_2_naming_the_field(path, value, expected, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(set_path(read_job("study.yaml"), path, value)))
    assert cli.main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(bad) in err, err


def test_missing_and_malformed_files(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "x.yaml").write_text("name: [unclosed")
    assert cli.main(["validate", str(tmp_path / "x.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_console_script_grid_prints_18_cells():
    out = subprocess.run([sys.executable, "-m", "lorascope.cli", "grid", str(REPO / "jobs/study.yaml")],
                         capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.strip() and line.strip()[0].isdigit()]
    assert len(rows) == 18 and rows[17].split()[-1] == "rte-lora-s2024"


def test_usage_errors_exit_2(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert cli.main(["run"]) == 2
    assert cli.main(["grid"]) == 2
