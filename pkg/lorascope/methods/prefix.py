"""Prefix tuning through PEFT: learned key/value vectors prepended in every attention layer; the cell saves
`adapter/`. It moves no weight matrix, so the drift phase has no weight rows for it (the reason is recorded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

from lorascope.methods.base import MethodConfig, MethodKind, register
from lorascope.schema import NAME_PATTERN


class PrefixMethod(MethodConfig):
    """Prefix tuning through PEFT (`PrefixTuningConfig`): `num_virtual_tokens` learned key/value pairs prepended in
    every attention layer; the classifier head trains too. The cell saves `adapter/`."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "prefix"
    kind: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, ge=1)


@register
class PrefixKind(MethodKind):
    name = "prefix"
    title = "prefix tuning"
    config = PrefixMethod
    artifact = "adapter"
    size_knob = "num_virtual_tokens"

    def apply(self, model: Any, config: Any, overrides: Mapping[str, Any], field_path: str,
              task_type: str = "SEQ_CLS") -> Any:  # fmt: skip
        """PEFT `PrefixTuningConfig(num_virtual_tokens)`; the head trains through PEFT's task type `task_type`."""
        from peft import PrefixTuningConfig, TaskType, get_peft_model

        return get_peft_model(model, PrefixTuningConfig(task_type=TaskType[task_type],
                                                        num_virtual_tokens=config.num_virtual_tokens))  # fmt: skip

    def weights_skipped(self, config: Any) -> str:
        return "prefix tuning learns virtual key/value vectors and leaves every weight matrix as it is"
