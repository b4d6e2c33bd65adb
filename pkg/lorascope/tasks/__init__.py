"""Task types: one module per type, each registering a `TaskType` (the protocol and its contract: `tasks.base`).

Adding a type is adding one module here (and its tests): every module of this package is imported below, and a type
module registers itself (`@register`). The study resolves each of its tasks by its type (`TaskConfig.spec`, a
`Task`); the stage, sanity, hpo, train, extract, drift and bench phases, training and the preflight checks all ask
the task's type (`task.task_type`), never compare a type's name.

Tasks a type knows by name, without a `source` (read from the study's `data` section): classification knows every
GLUE task of `lorascope.metrics.glue.GLUE_TASKS` (the one table: columns, labels, splits, metrics).

## Adding a task type

1. `lorascope/tasks/<type>.py`: a `TaskType` subclass with `@register`, implementing the contract in `tasks.base`
   (its columns and the check of rows at the door, its input format per family, head and PEFT task type, collate and
   loss, evaluation with its official metrics from `lorascope.metrics`, its learning gate facts and units, which bench
   applies, whether vLLM serves it). Its own knobs go in an `options` pydantic class (the study's `tasks[].options`).
2. Tasks it knows by name (a bundled fixture set, a benchmark's table) in `known_tasks()`; anything else is a task of
   the user's own with a `source`.
3. Tests next to it: its rows checked at the door (exit 2 naming the field or file), a decoder and (if `encoders`) an
   encoder trained, saved, reloaded and evaluated the same, its metrics on hand-computed cases.
Nothing else is edited: the phases, training and the study look the type up.
"""

from __future__ import annotations

import importlib
import pkgutil

from lorascope.errors import ConfigError
from lorascope.metrics.glue import GLUE_TASKS  # noqa: F401 (the one GLUE table; `from lorascope.tasks import` works)
from lorascope.tasks.base import (
    TASK_TYPES,
    EvalResult,
    GateFacts,
    Task,
    TaskType,
    known_task_names,
    register,
    resolve,
    type_knowing,
    type_of,
)

# every module of the package, in name order: the type modules register their types as they are imported
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


class _Named:
    """A bare task entry (name, defaults) for `known_task`: a task the package knows, outside any study."""

    def __init__(self, name: str, max_length: int) -> None:
        self.name, self.max_length = name, max_length
        self.type = self.source = self.columns = self.labels = self.metric = None
        self.options = {}


def known_task(name: str, max_length: int = 384) -> Task:
    """A task a type knows by name (GLUE's `mrpc`), resolved with the defaults of a study entry that names only it."""
    found = type_knowing(name)
    if found is None:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(known_task_names())}")
    return found.resolve(_Named(name, max_length), "")


__all__ = [
    "GLUE_TASKS", "TASK_TYPES", "EvalResult", "GateFacts", "Task", "TaskType", "known_task", "known_task_names",
    "register", "resolve", "type_knowing", "type_of",
]  # fmt: skip
