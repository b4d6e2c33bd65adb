"""Fine-tuning methods: one module per kind, each registering a `MethodKind` (the protocol: `methods.base`).

Adding a kind is adding one module here: every module of this package is imported below, and a kind module
registers itself (`@register`); the study's union of method configs, the preflight checks, training, saving and the
drift analysis all look kinds up in `METHOD_KINDS`. The functions below are what the phases call.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Field

from lorascope.methods.base import (
    METHOD_KINDS,
    FixedByConstruction,
    Hyperparameter,
    MethodConfig,
    MethodKind,
    kind_of,
    kind_only_problem,
    register,
)

# every module of the package, in name order: the kind modules register their kinds as they are imported
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def method_union() -> Any:
    """The study's `methods` entry type: the registered kinds' configs as a union discriminated by `kind`."""
    configs = tuple(k.config for _, k in METHOD_KINDS.items())
    return Annotated[Union[configs], Field(discriminator="kind")]  # noqa: UP007 (a runtime tuple of classes)


def hyperparameter_rules() -> dict[str, tuple[Any, str]]:
    """{name: (rule, expected)} of the hyperparameters only some kinds accept (LoRA's lora_alpha, lora_dropout)."""
    return {name: (h.rule, h.expected) for _, k in METHOD_KINDS.items() for name, h in k.hyperparameters.items()}


def apply_method(model: Any, method: Any, overrides: Mapping[str, Any] | None = None, field_path: str | None = None,
                 task_type: str = "SEQ_CLS"):  # fmt: skip
    """Set up `model` (a loaded model with its task's head) for `method` (its kind's `apply`); the head trains under
    every method. `overrides`: the run's hyperparameters (HPO's pick of a kind's own ones: LoRA's alpha, dropout);
    `field_path`: where the method is in the study, for error messages (default `methods.<name>`); `task_type`: PEFT's
    task type, the task type's `peft_task_type` (SEQ_CLS, QUESTION_ANS, CAUSAL_LM), which a PEFT kind builds its
    config with."""
    where = field_path or f"methods.{method.name}"
    # SEQ_CLS is every kind's default: a kind written before task types (no `task_type` parameter) still applies there
    extra = {} if task_type == "SEQ_CLS" else {"task_type": task_type}
    return kind_of(method, f"{where}.kind").apply(model, method, dict(overrides or {}), where, **extra)


def save_initial_adapter(model: Any, method: Any, folder: Path) -> Path | None:
    """What the kind must keep from before the first training step to save the cell (PiSSA/OLoRA's initial
    adapter), written to `folder`; None for every other method."""
    return kind_of(method).save_initial(model, method, Path(folder))


def save_cell_artifact(model: Any, method: Any, folder: Path, initial_adapter: Path | None = None) -> Path:
    """Save what a cell keeps, `adapter/` or `model/` (the kind's `artifact`), into `folder`/<that>; the kind's
    `save` (a PiSSA/OLoRA adapter converted to a plain LoRA delta on the untouched base)."""
    return kind_of(method).save(model, method, Path(folder), initial_adapter)


def own_artifact(cell_dir: Path) -> MethodKind | None:
    """The kind whose own artifact format the cell folder holds (bottleneck adapters), first match in registration
    order; None for a PEFT adapter or a whole model, which lorascope.models.artifacts loads."""
    return next((kind for _, kind in METHOD_KINDS.items() if kind.loads(Path(cell_dir))), None)


__all__ = [
    "METHOD_KINDS", "FixedByConstruction", "Hyperparameter", "MethodConfig", "MethodKind", "apply_method",
    "hyperparameter_rules", "kind_of", "kind_only_problem", "method_union", "own_artifact", "register",
    "save_cell_artifact",
    "save_initial_adapter",
]  # fmt: skip
