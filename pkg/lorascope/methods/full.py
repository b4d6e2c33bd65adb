"""Full fine-tuning: every parameter trains; the cell saves `model/`. The drift comparison's reference."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from lorascope.methods.base import FixedByConstruction, MethodConfig, MethodKind, register
from lorascope.schema import NAME_PATTERN


class FullMethod(MethodConfig):
    """Full fine-tuning: every parameter trains; the cell saves `model/`."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "full"
    kind: Literal["full"] = "full"


@register
class FullKind(MethodKind):
    name = "full"
    title = "full fine-tuning"
    config = FullMethod
    artifact = "model"
    is_reference = True

    def apply(self, model: Any, config: Any, overrides: Mapping[str, Any], field_path: str,
              task_type: str = "SEQ_CLS") -> Any:  # fmt: skip
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def fixed_by_construction(self, config: Any, n_blocks: int, encoder: bool | None) -> FixedByConstruction:
        return FixedByConstruction()  # every entry can move

    def weight_source(self, config: Any) -> str:
        return "full_delta: W_ft - W0 from the cell's model/"

    def weight_update(self, config: Any, cell_dir: Path, base: Any) -> tuple[str, Any]:
        from lorascope import tensorio

        return "full", tensorio.TensorFolder(Path(cell_dir) / "model", "model")
