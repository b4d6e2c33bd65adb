"""Bottleneck adapters (Houlsby et al. 2019; Lin et al. 2020): a small residual MLP inserted after a sublayer of every
block, `x + up(act(down(x)))`, with `up` initialised to zero so the model starts exactly as the base. Only the
adapters and the classifier head train. Written here because PEFT has none (and AdapterHub's `adapters` pins an older
transformers).

Placements, the two adapter baselines of the LoRA paper's tables (Hu et al. 2021, Adapter^H and Adapter^L):

  houlsby  two adapters per block: on the attention sublayer's output and on the MLP's output, each before the
           block's residual sum (Houlsby et al. 2019, Fig. 2). Here: on the output of the attention output projection
           (role `o`: Llama `self_attn.o_proj`, RoBERTa `attention.output.dense`) and of the MLP's down projection
           (role `down`: `mlp.down_proj`, RoBERTa `output.dense`).
  lin      one adapter per block, after the MLP, with its own LayerNorm on the adapter's input: Lin et al. 2020's
           Adapter(H) = ReLU(LN(H) W_E) W_D + H (the non-linearity is this method's `non_linearity`). Here H is the
           MLP's output (role `down`), before the block's residual sum, where Houlsby's second adapter sits.

The adapter's width is `hidden_size`, or the model's hidden size divided by `reduction_factor` (16 when neither is
given). The wrapped projection keeps its class name's behaviour and its parameter names (the module is re-classed to
a subclass whose forward adds the adapter, and the adapter is its submodule `bottleneck`), so the base weights load
and save under their own names; the adapter's parameters are `<projection>.bottleneck.{down,up,norm}.*`.

The cell saves `adapter/`: `bottleneck_config.json` (placement, width, non-linearity, the exact modules wrapped) and
`adapter_model.safetensors` (the adapters' and the head's tensors); loading puts the same adapters on the staged base
and loads those tensors (`load`). The update is not a weight delta (the non-linearity sits between the two
projections, so nothing merges into W0): no weight rows in drift, with the reason; vLLM does not serve it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from lorascope.errors import ConfigError
from lorascope.methods.base import FixedByConstruction, MethodConfig, MethodKind, frozen_except, register
from lorascope.schema import NAME_PATTERN

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
DEFAULT_REDUCTION_FACTOR = 16
PLACEMENT_ROLES = {"houlsby": ("o", "down"), "lin": ("down",)}  # the families' roles whose outputs get an adapter
INIT_STD = 1e-2  # down: N(0, 0.01^2) (Houlsby et al.'s near-identity initialisation); up: 0, so x + up(...) = x


class BottleneckMethod(MethodConfig):
    """Bottleneck adapters: `placement` (`houlsby`: after the attention output and after the MLP; `lin`: after the
    MLP, with a LayerNorm), the adapter width as `reduction_factor` (model hidden size / factor) or `hidden_size`
    (at most one; neither = reduction factor 16) and the `non_linearity` between the two projections. The cell saves
    `adapter/` (the adapters and the head)."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = "bottleneck"
    kind: Literal["bottleneck"] = "bottleneck"
    placement: Literal["houlsby", "lin"] = "houlsby"
    reduction_factor: int | None = Field(None, ge=1)
    hidden_size: int | None = Field(None, ge=1)
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"

    @model_validator(mode="after")
    def _one_width(self) -> BottleneckMethod:
        if self.reduction_factor is not None and self.hidden_size is not None:
            raise ValueError("@hidden_size: give the adapter width as reduction_factor or as hidden_size, not both")
        return self

    def width(self, model_hidden: int) -> int:
        """The adapter's bottleneck width on a model of hidden size `model_hidden`."""
        if self.hidden_size is not None:
            return self.hidden_size
        return model_hidden // (self.reduction_factor or DEFAULT_REDUCTION_FACTOR)


@functools.cache
def _bottleneck_class() -> type:
    """The adapter module, x -> x + up(act(down(LN(x)))) (LN only with `layer_norm`), up = 0 at the start: the
    identity. Built on first use, so importing this kind needs no torch."""
    import torch
    from torch import nn

    activations = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}

    class Bottleneck(nn.Module):
        def __init__(self, dim: int, width: int, non_linearity: str, layer_norm: bool) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(dim) if layer_norm else None
            self.down = nn.Linear(dim, width)
            self.act = activations[non_linearity]()
            self.up = nn.Linear(width, dim)
            nn.init.normal_(self.down.weight, std=INIT_STD)
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.norm(x) if self.norm is not None else x
            return x + self.up(self.act(self.down(h)))

    return Bottleneck


class _WithBottleneck:
    """Mixin for a wrapped projection: its own forward, then its `bottleneck` submodule on the output."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.bottleneck(super().forward(*args, **kwargs))


_WRAPPED: dict[type, type] = {}


def _wrap(module: Any, adapter: Any) -> None:
    """Re-class `module` (in place) so its output passes through `adapter`, kept as its submodule `bottleneck`."""
    cls = type(module)
    if cls not in _WRAPPED:
        _WRAPPED[cls] = type(f"{cls.__name__}WithBottleneck", (_WithBottleneck, cls), {"__module__": __name__})
    module.__class__ = _WRAPPED[cls]
    module.add_module("bottleneck", adapter)


def bottleneck_targets(model: Any, placement: str, field_path: str) -> list[str]:
    """The exact names of the modules whose outputs get an adapter (`families.resolve_targets` of the placement's
    roles), in block order."""
    from lorascope.models import families

    return families.resolve_targets(model, list(PLACEMENT_ROLES[placement]), f"{field_path}.placement")


def insert_adapters(model: Any, targets: list[str], width: int, non_linearity: str, layer_norm: bool) -> list[str]:
    """Put a fresh adapter after each module of `targets` (exact names); returns the adapters' parameter names."""
    modules = dict(model.named_modules())
    dim = int(model.config.hidden_size)
    for name in targets:
        weight = next(modules[name].parameters())
        adapter = _bottleneck_class()(dim, width, non_linearity, layer_norm)
        _wrap(modules[name], adapter.to(weight.device, weight.dtype))
    prefixes = tuple(f"{name}.bottleneck." for name in targets)
    return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]


@register
class BottleneckKind(MethodKind):
    name = "bottleneck"
    title = "bottleneck adapters"
    config = BottleneckMethod
    artifact = "adapter"
    size_knob = "reduction_factor"
    checks_model = True

    def check(self, model: Any, config: Any, field_path: str) -> None:
        bottleneck_targets(model, config.placement, field_path)
        hidden = int(model.config.hidden_size)
        if config.width(hidden) < 1:
            raise ConfigError(f"{field_path}.reduction_factor: {config.reduction_factor} leaves no adapter width on a "
                              f"model of hidden size {hidden} (at most {hidden})")  # fmt: skip

    def apply(self, model: Any, config: Any, overrides: Mapping[str, Any], field_path: str) -> Any:
        """Adapters after the placement's modules (their `down` drawn from torch's global RNG: seed before), and
        requires_grad on exactly the adapters and the classifier head."""
        from lorascope.models import families

        self.check(model, config, field_path)
        targets = bottleneck_targets(model, config.placement, field_path)
        width = config.width(int(model.config.hidden_size))
        adapters = insert_adapters(model, targets, width, config.non_linearity, config.placement == "lin")
        frozen_except(model, {*adapters, *families.parameter_groups(model)["head"]})
        return model

    def save(self, model: Any, config: Any, folder: Path, initial: Path | None = None) -> Path:
        """`adapter/`: bottleneck_config.json and the trained tensors (the adapters and the head) as safetensors."""
        import shutil

        from safetensors.torch import save_file

        out = Path(folder) / self.artifact
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        spec = {"kind": self.name, "method": config.name, "placement": config.placement,
                "width": config.width(int(model.config.hidden_size)), "non_linearity": config.non_linearity,
                "layer_norm": config.placement == "lin",
                "targets": bottleneck_targets(model, config.placement, f"methods.{config.name}")}  # fmt: skip
        trained = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        (out / CONFIG_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        return out

    def loads(self, cell_dir: Path) -> bool:
        return (Path(cell_dir) / self.artifact / CONFIG_FILE).is_file()

    def load(self, cell_dir: Path, base: Any) -> Any:
        """The cell's model: `base` (the staged base classifier) with the saved adapters inserted and every saved
        tensor (adapters and head) loaded; ConfigError when the files do not match."""
        from safetensors.torch import load_file

        folder = Path(cell_dir) / self.artifact
        spec = json.loads((folder / CONFIG_FILE).read_text())
        adapters = insert_adapters(base, list(spec["targets"]), int(spec["width"]), spec["non_linearity"],
                                   bool(spec["layer_norm"]))  # fmt: skip
        tensors = load_file(str(folder / WEIGHTS_FILE))
        missing = sorted(set(adapters) - set(tensors))
        unknown = sorted(set(tensors) - set(dict(base.named_parameters())))
        if missing or unknown:
            raise ConfigError(f"{folder}: {WEIGHTS_FILE} does not match {CONFIG_FILE} (missing {missing[:3]}, not in "
                              f"the model {unknown[:3]})")  # fmt: skip
        base.load_state_dict(tensors, strict=False)
        return base

    def fixed_by_construction(self, config: Any, n_blocks: int, encoder: bool | None) -> FixedByConstruction:
        return FixedByConstruction(embedding_output=True)  # the adapters sit inside the blocks

    def weights_skipped(self, config: Any) -> str:
        return ("bottleneck adapters add new modules (x + up(act(down(x))) after a sublayer) and change no weight "
                "matrix of the base; their update does not merge into W0 (the non-linearity sits between the two "
                "projections), so there is no weight delta to measure")  # fmt: skip
