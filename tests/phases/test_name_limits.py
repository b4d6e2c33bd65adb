"""lorascope.limits.NAME_TEMPLATES against a real run: a method name of the longest length the door allows goes
through stage, sanity, hpo, train and extract; every file and folder name the run built in the store and the work
dir fits in a path component, and every one built from the method name is one of the templates the limit is
derived from (a new place that builds a longer name fails here). The names are caught as they are made (Python's
audit events for open, mkdir, rename, symlink, link: libraries included), so transient ones count too (a trial's
folder, Optuna's journal lock). Before: a 300-character method name passed `validate` and train failed with "File
name too long", exit 1."""

from __future__ import annotations

import os
import re
import sys

import pytest

from lorascope import limits

_made: list[str] | None = None  # paths opened or made while the test runs (None: not recording)


def _record(event: str, args: tuple) -> None:
    if _made is None or event not in ("open", "os.mkdir", "os.rename", "os.symlink", "os.link"):
        return
    for p in args[: 1 if event in ("open", "os.mkdir") else 2]:
        if isinstance(p, str | bytes | os.PathLike):
            _made.append(os.fsdecode(p))


sys.addaudithook(_record)  # an audit hook cannot be removed: it records only while _made is a list

pytestmark = pytest.mark.slow  # about 30 s

SPACE = {"learning_rate": {"type": "float", "low": 5e-3, "high": 5e-3}, "effective_batch": {"type": "categorical", "choices": [8]},
         "epochs": {"type": "int", "low": 1, "high": 1}}  # fmt: skip


def test_a_run_with_the_longest_method_name_builds_only_templated_names_that_fit(make_run):
    method = "l" * limits.method_name_max(["mrpc"], [42])
    assert len(method) == 255 - len("mrpc-.journal.lock.rename") - limits.UUID_CHARS == 194
    run = make_run(methods=[{"name": method, "kind": "lora", "r": 2, "alpha": 4, "dropout": 0.0}], seeds=[42],
                   hpo={"enabled": True, "trials": 1, "spaces": {method: SPACE}})  # fmt: skip
    global _made
    _made = []
    try:
        for phase, index in (("sanity", 0), ("hpo", 0), ("train", 0), ("extract", 1)):
            run.phase(phase, index)
    finally:
        made, _made = _made, None
    store = run.store.backend.root
    templates = [re.escape(t).replace(r"\{task\}", "mrpc").replace(r"\{method\}", method).replace(r"\{seed\}", r"\d+")
                 .replace(r"\{trial\}", r"\d+").replace(r"\{uuid\}", "[0-9a-f-]{36}") for t, _ in limits.NAME_TEMPLATES]  # fmt: skip
    named = set()
    paths = [p for p in made if p.startswith((str(store), str(run.work_dir)))]
    paths += [str(p) for root in (store, run.work_dir) for p in root.rglob("*")]
    assert len(paths) > 100
    for path in paths:
        for part in path.split("/"):
            assert len(part.encode()) <= limits.FILE_NAME_MAX, path
            if method in part:
                assert any(re.fullmatch(t, part) for t in templates), part.replace(method, "<method>")
                named.add(re.sub(r"\d+", "N", re.sub(r"[0-9a-f-]{36}", "<uuid>", part.replace(method, "<method>"))))
    assert named == {"mrpc-<method>", "mrpc-<method>-sN", "mrpc-<method>-sN-final", "mrpc-<method>.journal",
                     "mrpc-<method>.journal.lock", "mrpc-<method>.journal.lock<uuid>.rename",
                     "mrpc-<method>-trial-N"}, named  # fmt: skip
