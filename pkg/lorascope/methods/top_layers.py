"""Fine-tune the last k blocks (and the final norm and the head); the embeddings and the earlier blocks stay frozen,
so their outputs are the base model's by construction. The cell saves `model/`; the drift phase reads W_ft - W0 of
the trained blocks' linears."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from lorascope.errors import ConfigError
from lorascope.methods.base import FixedByConstruction, MethodConfig, MethodKind, frozen_except, register
from lorascope.schema import NAME_PATTERN


class TopLayersMethod(MethodConfig):
    """Fine-tune the last `k` blocks and the classifier head; everything else (embeddings, earlier blocks, the final
    norm) stays frozen. The cell saves `model/`."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "top-layers"
    kind: Literal["top_layers"] = "top_layers"
    k: int = Field(1, ge=1)


def top_layers_parameters(model: Any, k: int, field_path: str) -> set[str]:
    """The last `k` blocks and everything after them (Llama: the final norm; every family: the classifier head);
    the embeddings and the first n - k blocks stay frozen."""
    from lorascope.models import families

    groups = families.parameter_groups(model)
    n = families.num_blocks(model)
    if k > n:
        raise ConfigError(f"{field_path}: k={k} but the model has {n} blocks (k must be at most {n})")
    early = {p for i in range(n - k) for p in groups.get(f"block:{i}", [])}
    return {name for name, _ in model.named_parameters() if name not in early and name not in groups["embeddings"]}


@register
class TopLayersKind(MethodKind):
    name = "top_layers"
    title = "top-k layers"
    config = TopLayersMethod
    artifact = "model"
    size_knob = "k"
    checks_model = True

    def check(self, model: Any, config: Any, field_path: str) -> None:
        top_layers_parameters(model, config.k, f"{field_path}.k")

    def apply(self, model: Any, config: Any, overrides: Mapping[str, Any], field_path: str,
              task_type: str = "SEQ_CLS") -> Any:  # fmt: skip
        """requires_grad on the last k blocks and what follows them (`top_layers_parameters`)."""
        frozen_except(model, top_layers_parameters(model, config.k, f"{field_path}.k"))
        return model

    def fixed_by_construction(self, config: Any, n_blocks: int, encoder: bool | None) -> FixedByConstruction:
        """The embedding output and the outputs of the first n - k blocks (n blocks, the last k trained)."""
        k = int(getattr(config, "k", 0))
        return FixedByConstruction(embedding_output=True, frozen_blocks=tuple(range(max(0, n_blocks - k))),
                                   why_frozen=f"frozen by construction ({config.name} trains the last {k} of "
                                              f"{n_blocks} blocks, so this block's output is the base model's)")  # fmt: skip

    def weight_source(self, config: Any) -> str:
        return "top_layers_delta: W_ft - W0 of the linears of the trained blocks, from the cell's model/"

    def weight_update(self, config: Any, cell_dir: Path, base: Any) -> tuple[str, Any]:
        from lorascope import tensorio
        from lorascope.analysis import lora, weights

        linears, n_blocks = weights.block_linears(base.names())
        trained = [n for n in linears if weights.module_parts(n)[0] >= n_blocks - config.k]
        cell_model = tensorio.TensorFolder(Path(cell_dir) / "model", "model")
        return "dense", lora.DenseUpdates("top_layers_delta", trained, cell_model.get)
