"""Broken studies: every error a later phase would find from the study and the model config alone is found by
`lorascope validate` (and by `lorascope run` before any work), exit 2, one line naming the field path.

Before these checks each of these studies passed `validate`; the later phases found them after stage, sanity and
HPO had run (target_modules: a PEFT traceback after 105 s; seeds: a numpy traceback after 153 s of HPO)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lorascope import cli
from tests.fixtures.cli import REPO, assert_one_line, lorascope
from tests.fixtures.studies import read_job, set_path

SMOKE = read_job("smoke.yaml")


HPO_OFF = set_path(SMOKE, "hpo.enabled", False)
BROKEN = [
    # (id, study, what the error names)
    ("target-not-a-module", set_path(SMOKE, "methods.1.target_modules", ["q_proj", "vv_proj"]), "field methods.1.target_modules: 'vv_proj'"),
    ("target-a-norm", set_path(SMOKE, "methods.1.target_modules", ["input_layernorm"]), "field methods.1.target_modules: 'input_layernorm'"),
    ("seed-negative", set_path(SMOKE, "seeds", [42, -1, 2024]), "field seeds.1"),
    ("seed-too-large", set_path(SMOKE, "seeds", [2**32, 1337, 2024]), "field seeds.0"),
    ("seed-bool", set_path(SMOKE, "seeds", [True, 1337, 2024]), "field seeds.0"),
    ("defaults-epochs-negative", set_path(HPO_OFF, "training.defaults.full.epochs", -1), "field training.defaults.full.epochs"),
    ("defaults-checked-with-hpo-on", set_path(SMOKE, "training.defaults.lora.learning_rate", 0), "field training.defaults.lora.learning_rate"),
    ("defaults-batch-not-int", set_path(HPO_OFF, "training.defaults.full.effective_batch", 8.5), "field training.defaults.full.effective_batch"),
    ("defaults-unknown-param", set_path(HPO_OFF, "training.defaults.full.lr", 0.1), "field training.defaults.full"),
    ("defaults-missing-with-hpo-off", set_path(HPO_OFF, "training.defaults.lora", {"learning_rate": 0.001}), "training.defaults.lora"),
    ("space-pick-out-of-range", set_path(SMOKE, "hpo.spaces.full.warmup_ratio", {"type": "float", "low": 0.0, "high": 1.0}), "field hpo.spaces.full.warmup_ratio"),
    ("space-choice-out-of-range", set_path(SMOKE, "hpo.spaces.lora.effective_batch", {"type": "categorical", "choices": [8, 0]}), "field hpo.spaces.lora.effective_batch"),
    ("trials-bool", set_path(SMOKE, "hpo.trials", True), "field hpo.trials"),
    ("workers-bool", set_path(SMOKE, "hpo.workers", True), "field hpo.workers"),
    ("data-path-missing", set_path(SMOKE, "data.path", "/no/such/glue"), "data.path '/no/such/glue'"),
    ("model-unknown-builtin", set_path(SMOKE, "model.name", "builtin:tiny-lama"), "model.name 'builtin:tiny-lama'"),
    ("model-missing-folder", set_path(SMOKE, "model.name", "./no/such/model"), "model.name './no/such/model'"),
    ("max-length-over-positions", set_path(SMOKE, "tasks.2.max_length", 4096), "field tasks.2.max_length: 4096 exceeds"),
    ("bench-seed-not-trained", set_path(SMOKE, "bench.seed", 7), "field bench.seed"),
]  # fmt: skip


@pytest.mark.parametrize("name,raw,needle", BROKEN, ids=[b[0] for b in BROKEN])
def test_validate_refuses_the_broken_study_naming_the_field(name, raw, needle, tmp_path, capsys):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    rc = cli.main(["validate", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {path}: ") and needle in err[0], err[0]


def test_the_smoke_study_still_validates(capsys):
    assert cli.main(["validate", str(REPO / "jobs" / "smoke.yaml")]) == 0
    assert "ok  study=smoke" in capsys.readouterr().out


def test_run_refuses_before_any_work(tmp_path: Path):
    """The real CLI: `lorascope run` with a bad target module exits 2 before the store or the work dir exist."""
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(BROKEN[0][1], sort_keys=False))
    store, work = tmp_path / "store", tmp_path / "work"
    proc = lorascope("run", "--study", str(path), "--store", str(store), "--work-dir", str(work))
    assert_one_line(proc, 2, "methods.1.target_modules", "vv_proj")
    assert not store.exists() and not work.exists()
