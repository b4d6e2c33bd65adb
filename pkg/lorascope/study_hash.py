"""A study's identity: its canonical JSON and the hash of it, which names runs (`runs/<study>-<hash>`) and stamps
every bundle. Everything that decides whether two study files are the same study is here.

The canonical JSON is the validated study (defaults filled in) with sorted keys and no spaces, without:
  * `training.report_to`: where the Trainer reports, not what any phase computes (adding TensorBoard to a run keeps
    its hash and run id);
  * `max_cells`: how large a study the user allows, not a result;
  * fields added after studies were first run, while they hold their defaults, so a study written before they
    existed keeps its hash: each method kind's `hash_neutral_defaults` (LoRA's use_dora, use_rslora, init),
    `bench.method` when null, `bench.generation` equal to the default one or on a study of classification tasks only
    (there it only times serving the cells as causal LMs: no cell, drift or classification-bench number depends on it,
    and its bundle's summary.json records every knob), an empty `tasks[].defaults`, the task fields of
    `TASK_HASH_NEUTRAL` at their defaults (`type`, also when it is the type the task's name implies; `options`, a
    user's `source`, `columns`, `labels`), a `report` section equal to the default one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lorascope.methods import METHOD_KINDS
from lorascope.tasks import type_knowing

# task fields added after studies were first run (the task types, a user's own data), left out at these defaults
TASK_HASH_NEUTRAL: dict[str, Any] = {"type": None, "options": {}, "source": None, "columns": None, "labels": None}


def canonical_json(study: Any) -> str:
    """The study as canonical JSON, without what does not change any result (see the module docstring)."""
    dump = study.model_dump(mode="json")
    dump["training"].pop("report_to", None)
    dump.pop("max_cells", None)  # how large a study the user allows, not what any phase computes
    for m in dump["methods"]:
        for key, default in METHOD_KINDS.get(m["kind"]).hash_neutral_defaults.items():
            if m.get(key) == default:
                m.pop(key)
    if dump["bench"].get("method") is None:
        dump["bench"].pop("method", None)
    if study.bench.generation == type(study.bench.generation)() or all(t.task_type.bench == "classification"
                                                                       for t in study.tasks):  # fmt: skip
        dump["bench"].pop("generation", None)  # at its defaults, or a side measurement of a classification study
    for task in dump["tasks"]:  # an empty per-task override is no override: studies without one keep their hash
        if not task.get("defaults"):
            task.pop("defaults", None)
        for key, default in TASK_HASH_NEUTRAL.items():  # task fields added with the task types, at their defaults
            if key in task and task[key] == default:
                task.pop(key)
        known = type_knowing(task["name"])
        if known is not None and task.get("type") == known.name:  # the type the name implies, written out
            task.pop("type")
    if study.report == type(study.report)():  # a study without a report section keeps the hash it had before one
        dump.pop("report")
    return json.dumps(dump, sort_keys=True, separators=(",", ":"))


def digest(study: Any) -> str:
    """sha256 of `canonical_json`, first 16 hex digits: the study hash."""
    return hashlib.sha256(canonical_json(study).encode()).hexdigest()[:16]
