"""LoRA through PEFT, with PEFT's variants DoRA, rsLoRA and the PiSSA/OLoRA initialisations; the cell saves `adapter/`.

A PiSSA/OLoRA adapter starts from the principal singular vectors / a QR of W0 and replaces W0 by the residual; the
adapter as initialised is saved before the first step (`save_initial`), and the trained one is saved converted to a
plain LoRA delta of rank 2r that applies to the untouched base (PEFT's `path_initial_model_for_weight_conversion`),
with the trained classifier head put back (PEFT 0.21.2's conversion drops it). The drift phase reads the update from
the factors (scale B A, PEFT's rank/alpha patterns: `analysis.lora`), or for DoRA the layer's effective weight.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from lorascope.errors import ConfigError
from lorascope.methods.base import Hyperparameter, MethodConfig, MethodKind, Targets, one_or_list, register
from lorascope.methods.targets import check_adaptable, method_targets
from lorascope.schema import NAME_PATTERN

# PEFT warns at every get_peft_model with init pissa/olora that the base weights change and advises converting the
# adapter: the train phase does exactly that (`LoraKind.save`), so this one message is expected.
warnings.filterwarnings("ignore", message=r"(PiSSA|OLoRA) changes the base weights of the model", category=UserWarning,
                        module=r"peft\.peft_model$")

LORA_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}  # -> init_lora_weights


class LoraMethod(MethodConfig):
    """LoRA through PEFT (`LoraConfig`): rank `r`, `alpha`, `dropout` on `target_modules`; PEFT's variants DoRA
    (`use_dora`: magnitude + direction), rsLoRA (`use_rslora`: scale alpha/sqrt(r) instead of alpha/r) and the
    initialisation `init` (`default`: A Kaiming-uniform, B = 0; `gaussian`: A Gaussian; `pissa`/`olora`: the adapter
    starts from the principal singular vectors / a QR of W0, and W0 is replaced by the residual; the saved adapter is
    converted to a plain LoRA delta of rank 2r that applies to the untouched base, PEFT's
    `path_initial_model_for_weight_conversion`)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "lora"
    kind: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Targets = Field(default_factory=lambda: ["q_proj", "v_proj"])
    use_dora: bool = False
    use_rslora: bool = False
    init: Literal["default", "gaussian", "pissa", "olora"] = "default"

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets_list(cls, v: Any) -> Any:
        return one_or_list(v)

    @model_validator(mode="after")
    def _dora_not_converted(self) -> LoraMethod:
        if self.use_dora and self.init in ("pissa", "olora"):
            raise ValueError(f"@init: {self.init!r} with use_dora: a PiSSA/OLoRA adapter is saved converted to a plain "
                             "LoRA delta (A B - A0 B0), which does not hold DoRA's magnitude; use one or the other")  # fmt: skip
        return self

    @property
    def converts_init(self) -> bool:
        """Whether the init mutates the base weights (PiSSA, OLoRA): the adapter is saved converted."""
        return self.init in ("pissa", "olora")


@register
class LoraKind(MethodKind):
    name = "lora"
    title = "LoRA"
    config = LoraMethod
    artifact = "adapter"
    size_knob = "r"
    size_companions = ("alpha", "dropout")  # a sweep over r usually moves alpha with it
    hyperparameters = {
        "lora_alpha": Hyperparameter(lambda v: v > 0, "> 0", "alpha"),
        "lora_dropout": Hyperparameter(lambda v: 0 <= v < 1, "in [0, 1)", "dropout"),
    }
    hash_neutral_defaults = {"use_dora": False, "use_rslora": False, "init": "default"}
    checks_model = True
    hypothesis_subject = "LoRA"
    weight_targets_priority = 0

    def vllm_servable(self, config: Any) -> bool:
        """Plain LoRA only: vLLM's LoRA layers compute scale B A with scale alpha / r; DoRA's magnitude vector and
        rsLoRA's scale are not what they serve, and a converted PiSSA/OLoRA adapter has rank 2r (kept out until the
        bench's max_lora_rank accounts for it)."""
        return not config.use_dora and not config.use_rslora and config.init in ("default", "gaussian")

    def check(self, model: Any, config: Any, field_path: str) -> None:
        check_adaptable(model, list(config.target_modules), field_path, self.name)

    def apply(self, model: Any, config: Any, overrides: Mapping[str, Any], field_path: str,
              task_type: str = "SEQ_CLS") -> Any:  # fmt: skip
        """PEFT `LoraConfig` on `target_modules` (roles/groups/literals resolved by families.resolve_targets), alpha
        and dropout from `overrides["lora_alpha"/"lora_dropout"]` when HPO chose them, `use_dora`, `use_rslora`,
        `init_lora_weights` from `init`; the head trains through PEFT's task type `task_type` (SEQ_CLS: the
        classifier head in modules_to_save). `fan_in_fan_out` for transformers' Conv1D targets (GPT-2)."""
        from peft import LoraConfig, TaskType, get_peft_model

        from lorascope.models import families

        where = f"{field_path}.target_modules"
        exact = families.resolve_targets(model, list(config.target_modules), where)
        peft_config = LoraConfig(
            task_type=TaskType[task_type],
            r=config.r,
            lora_alpha=float(overrides.get("lora_alpha", config.alpha)),
            lora_dropout=float(overrides.get("lora_dropout", config.dropout)),
            target_modules=method_targets(model, list(config.target_modules), where),
            fan_in_fan_out=families.fan_in_fan_out(model, exact, where),  # GPT-2's Conv1D: weight stored in x out
            use_dora=config.use_dora,
            use_rslora=config.use_rslora,
            init_lora_weights=LORA_INITS[config.init],
        )
        return get_peft_model(model, peft_config)

    def save_initial(self, model: Any, config: Any, folder: Path) -> Path | None:
        """For PiSSA/OLoRA: the adapter as initialised (A0, B0), saved before any training step, with
        `init_lora_weights=True` in its config as PEFT's conversion requires (loading it must not decompose W again).
        None for every other init."""
        if not config.converts_init:
            return None
        folder = Path(folder)
        shutil.rmtree(folder, ignore_errors=True)
        peft_config = model.peft_config["default"]
        init = peft_config.init_lora_weights
        peft_config.init_lora_weights = True
        try:
            model.save_pretrained(str(folder))
        finally:
            peft_config.init_lora_weights = init
        return folder

    def save(self, model: Any, config: Any, folder: Path, initial: Path | None = None) -> Path:
        """A PiSSA/OLoRA adapter is converted (PEFT's `path_initial_model_for_weight_conversion`, from the initial
        adapter `save_initial` wrote) into a plain LoRA delta that applies to the untouched base."""
        if not config.converts_init:
            return super().save(model, config, folder, initial)
        out = Path(folder) / self.artifact
        shutil.rmtree(out, ignore_errors=True)
        if initial is None or not (initial / "adapter_config.json").is_file():
            raise ConfigError(f"method {config.name!r} (init {config.init}): the initial adapter was not saved before "
                              "training, so the trained adapter cannot be converted for the original base")  # fmt: skip
        model.save_pretrained(str(out), path_initial_model_for_weight_conversion=str(initial))
        _restore_modules_to_save(model, out)
        return out

    def weight_source(self, config: Any) -> str:
        if config.use_dora:
            return "dora_weight: W' - W0 with W' = diag(m / ||W0 + scale B A||_row) (W0 + scale B A), PEFT's DoRA"
        return ("lora_factors: scale B A from the adapter (rsLoRA: alpha/sqrt(r); PiSSA/OLoRA: the converted rank-2r "
                "adapter, a plain LoRA delta on the untouched base)")  # fmt: skip

    def dense_update_note(self, config: Any) -> str | None:
        if not config.use_dora:
            return None
        return ("DoRA's update includes the magnitude rescaling diag(m / ||W0 + scale B A||_row) of every row of W0: "
                "dense, not a rank-r addition, so its rank measures are not comparable with a plain LoRA update's")  # fmt: skip

    def weight_update(self, config: Any, cell_dir: Path, base: Any) -> tuple[str, Any]:
        from lorascope import tensorio
        from lorascope.analysis import lora

        folder = Path(cell_dir) / "adapter"
        if not config.use_dora:
            return "lora", lora.adapter_deltas(*tensorio.read_adapter(folder))
        peft_config, factors = tensorio.read_adapter(folder)
        magnitudes = tensorio.read_adapter_vectors(folder, ".lora_magnitude_vector")
        return "dense", lora.dora_updates(peft_config, factors, magnitudes, base)


def _restore_modules_to_save(model: Any, out: Path) -> None:
    """PEFT 0.21.2's conversion (`LoraModel.subtract_mutated_init`) returns only the lora_A/lora_B tensors, so the
    converted file lacks the modules_to_save copies (the trained classifier head): put them back, as the plain
    save writes them (same keys, from PEFT's `get_peft_model_state_dict`)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    path = out / "adapter_model.safetensors"
    converted = load_file(str(path))
    extra = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()
             if "lora_" not in k and k not in converted}  # fmt: skip
    if extra:
        save_file({**converted, **extra}, str(path), metadata={"format": "pt"})


def module_shapes(config: Any) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear layer of a Llama decoder layer, from its config."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = config.num_key_value_heads * head_dim
    inter = config.intermediate_size
    return {
        "q_proj": (hidden, q_out), "k_proj": (hidden, kv_out), "v_proj": (hidden, kv_out), "o_proj": (q_out, hidden),
        "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden),
    }  # fmt: skip


def lora_parameter_count(config: Any, target_modules: list[str], r: int, num_labels: int) -> int:
    """Trainable parameters of LoRA on a Llama: each adapted linear d_in -> d_out adds A (r x d_in) and B (d_out x r),
    r * (d_in + d_out), in every layer; plus the score head (hidden x num_labels, no bias)."""
    shapes = module_shapes(config)
    unknown = sorted(set(target_modules) - set(shapes))
    if unknown:
        raise ConfigError(f"lora target_modules {unknown} are not Llama linear layers ({sorted(shapes)})")
    per_layer = sum(r * (shapes[m][0] + shapes[m][1]) for m in target_modules)
    return config.num_hidden_layers * per_layer + config.hidden_size * num_labels
