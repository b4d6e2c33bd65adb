"""BitFit-style tuning: only the bias and/or norm parameters (and the head) train; the cell saves `model/`. No linear
weight matrix moves, so the drift phase has no weight rows for it (the reason is recorded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from lorascope.errors import ConfigError
from lorascope.methods.base import FixedByConstruction, MethodConfig, MethodKind, frozen_except, register
from lorascope.schema import NAME_PATTERN


class BitFitMethod(MethodConfig):
    """BitFit-style tuning: only the parameter groups in `train` (`bias`: every bias term, Ben Zaken et al. 2022;
    `norm`: the norms' weights and biases) plus the classifier head. Llama has no bias terms at all, so on Llama
    `train: [bias]` is an error and `train: [norm]` is norm-only tuning (the RMSNorm gains). The cell saves
    `model/`."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "bitfit"
    kind: Literal["bitfit"] = "bitfit"
    train: list[Literal["bias", "norm"]] = Field(default_factory=lambda: ["bias"], min_length=1)

    @field_validator("train")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each group at most once, got {v}")
        return v


def bitfit_parameters(model: Any, train: list[str], field_path: str) -> set[str]:
    """The bias terms and/or the norm parameters (`train`), plus the classifier head. A model without bias terms
    outside its head (Llama, Mistral, Gemma) asked for `bias` is a ConfigError: there is nothing to tune."""
    from lorascope.models import families

    fam = families.family_of(model)
    groups = families.parameter_groups(model)
    head = set(groups["head"])
    chosen = set(head)
    for group in train:
        names = [n for n in groups[group] if n not in head]
        if not names:
            what = "bias terms" if group == "bias" else "norm parameters"
            hint = " (norm-only tuning: the RMSNorm gains): use `train: [norm]`" if group == "bias" else ""
            raise ConfigError(f"{field_path}: {group!r}, but this {fam.name} model ({model.config.model_type}) has no "
                              f"{what} outside its head{hint}")  # fmt: skip
        chosen.update(names)
    return chosen


@register
class BitFitKind(MethodKind):
    name = "bitfit"
    title = "BitFit"
    config = BitFitMethod
    artifact = "model"
    checks_model = True

    def check(self, model: Any, config: Any, field_path: str) -> None:
        bitfit_parameters(model, list(config.train), f"{field_path}.train")

    def apply(self, model: Any, config: Any, overrides: Mapping[str, Any], field_path: str,
              task_type: str = "SEQ_CLS") -> Any:  # fmt: skip
        """requires_grad on the bias and/or norm parameters (`bitfit_parameters`)."""
        frozen_except(model, bitfit_parameters(model, list(config.train), f"{field_path}.train"))
        return model

    def fixed_by_construction(self, config: Any, n_blocks: int, encoder: bool | None) -> FixedByConstruction:
        """On an encoder the embedding output can move (its embeddings end in a LayerNorm with a bias); on a decoder
        it cannot (Llama-like embeddings have neither); architecture unknown (None): assumed to move, so nothing is
        excluded without a reason."""
        return FixedByConstruction(embedding_output=encoder is False)

    def weights_skipped(self, config: Any) -> str:
        return ("BitFit changes only bias / norm vectors (and the head): no linear weight matrix moves, so there is no "
                "matrix update to measure")  # fmt: skip
