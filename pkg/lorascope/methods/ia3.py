"""IA3 through PEFT: learned vectors rescaling the outputs of the targets (the inputs of the feed-forward ones); the
cell saves `adapter/`. The drift phase reads each adapted layer's effective weight (`analysis.lora.ia3_weight`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from lorascope.errors import ConfigError
from lorascope.methods.base import MethodConfig, MethodKind, Targets, one_or_list, register
from lorascope.methods.targets import check_adaptable, peft_target_names
from lorascope.schema import NAME_PATTERN


class Ia3Method(MethodConfig):
    """IA3 through PEFT (`IA3Config`): learned vectors rescaling the outputs of `target_modules` and, for the
    `feedforward_modules` among them, the inputs. Defaults: k, v and down, with down as the feed-forward module
    (the IA3 paper's setting, PEFT's default mapping for Llama). `feedforward_modules: null` (the default) = the
    targets that are the MLP's down projection."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "ia3"
    kind: Literal["ia3"] = "ia3"
    target_modules: Targets = Field(default_factory=lambda: ["k", "v", "down"])
    feedforward_modules: list[Annotated[str, Field(min_length=1)]] | None = None

    @field_validator("target_modules", "feedforward_modules", mode="before")
    @classmethod
    def _targets_list(cls, v: Any) -> Any:
        return one_or_list(v)


def ia3_targets(model: Any, method: Any, where: str) -> tuple[list[str], list[str]]:
    """(exact target names, exact feed-forward names) of an IA3 method: `feedforward_modules` null = the targets that
    are the down projection; given, each must be among the targets (IA3 scales its input instead of its output)."""
    from lorascope.models import families

    targets = families.resolve_targets(model, list(method.target_modules), f"{where}.target_modules")
    if method.feedforward_modules is None:
        down = set(families.resolve_targets(model, ["down"], f"{where}.feedforward_modules"))
        return targets, [t for t in targets if t in down]
    ff = families.resolve_targets(model, list(method.feedforward_modules), f"{where}.feedforward_modules")
    outside = sorted(set(ff) - set(targets))
    if outside:
        raise ConfigError(f"{where}.feedforward_modules: {outside[:3]} are not among target_modules (IA3 scales a "
                          "feed-forward module's input, so it must be a target too)")  # fmt: skip
    return targets, ff


@register
class Ia3Kind(MethodKind):
    name = "ia3"
    title = "IA3"
    config = Ia3Method
    artifact = "adapter"
    checks_model = True
    weight_targets_priority = 1  # full fine-tuning's rows follow LoRA's targets, else IA3's

    def check(self, model: Any, config: Any, field_path: str) -> None:
        check_adaptable(model, list(config.target_modules), field_path, self.name)
        ia3_targets(model, config, field_path)

    def apply(self, model: Any, config: Any, overrides: Mapping[str, Any], field_path: str,
              task_type: str = "SEQ_CLS") -> Any:  # fmt: skip
        """PEFT `IA3Config` on `target_modules`, `feedforward_modules` (a subset of them) scaled at their input."""
        from peft import IA3Config, TaskType, get_peft_model

        from lorascope.models import families

        targets, ff = ia3_targets(model, config, field_path)
        # roles select a module in every block, so both lists come out as short names (PEFT checks ff <= targets)
        peft_config = IA3Config(task_type=TaskType[task_type], target_modules=peft_target_names(model, targets),
                                feedforward_modules=peft_target_names(model, ff) if ff else [],
                                fan_in_fan_out=families.fan_in_fan_out(model, targets, f"{field_path}.target_modules"))  # fmt: skip
        return get_peft_model(model, peft_config)

    def weight_source(self, config: Any) -> str:
        return "ia3_weight: W' - W0 with W' = diag(l) W0 (output scaling) or W0 diag(l) (feed-forward: input scaling)"

    def dense_update_note(self, config: Any) -> str:
        return ("IA3's update (diag(l) - I) W0 (or W0 (diag(l) - I)) is a dense rescaling of W0's rows (columns), not an "
                "added low-rank matrix: its rank measures follow W0's spectrum and are not comparable with a LoRA "
                "update's")  # fmt: skip

    def weight_update(self, config: Any, cell_dir: Path, base: Any) -> tuple[str, Any]:
        import json

        from lorascope import tensorio
        from lorascope.analysis import lora

        folder = Path(cell_dir) / "adapter"
        peft_config = json.loads((folder / "adapter_config.json").read_text())
        vectors = tensorio.read_adapter_vectors(folder, ".ia3_l")
        return "dense", lora.ia3_updates(peft_config, vectors, base)
