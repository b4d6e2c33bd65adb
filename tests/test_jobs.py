"""Every study file we ship validates (the study model alone, no model or data needed) and lists its grid: a job file
that drifts from the study format fails here, not on a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorascope.study import load_study

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


def test_the_shipped_job_files_are_the_documented_ones():
    assert {p.stem for p in JOBS} >= {"study", "smoke", "real-mini", "smoke-methods", "smoke-roberta",
                                      "lora-paper-roberta", "real-methods"}  # fmt: skip


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_job_file_validates_and_lists_its_cells(path):
    study = load_study(path)
    cells = study.cells()
    assert len(cells) == len(study.tasks) * len(study.methods) * len(study.seeds)
    assert [c.index for c in cells] == list(range(len(cells)))
    assert len({c.name for c in cells}) == len(cells)  # names are store keys: unique
    assert all(study.defaults_for(m) or study.hpo.enabled for m in study.methods)  # every method trains with something
