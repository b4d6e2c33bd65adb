"""Target lists of the kinds that wrap named modules (LoRA, IA3): checked against a model, resolved to the names PEFT
gets. The resolution itself is `families.resolve_targets` (roles, groups, all-linear, literal names)."""

from __future__ import annotations

from typing import Any

from lorascope.errors import ConfigError

# what PEFT's LoRA can wrap (peft.tuners.lora.model: Linear, Embedding, Conv1d/2d/3d, transformers' Conv1D)
LORA_LAYER_TYPES = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention")


def check_adaptable(model: Any, targets: list[str], field_path: str, kind: str) -> None:
    """Each target names modules of `model` (`families.resolve_targets`) of a type PEFT can wrap; ConfigError naming
    `field_path`.target_modules, the target and the layers the kind can adapt otherwise."""
    from lorascope.models import families

    modules = {n: type(m).__name__ for n, m in model.named_modules() if n}
    for target in targets:
        hits = families.resolve_targets(model, [target], f"{field_path}.target_modules")
        wrong = sorted({modules[n] for n in hits if modules[n] not in LORA_LAYER_TYPES})
        if wrong:
            head = set(families.family_of(model).head)
            adaptable = sorted({n.rsplit(".", 1)[-1] for n, t in modules.items()
                                if t in LORA_LAYER_TYPES and n.split(".")[0] not in head})  # fmt: skip
            raise ConfigError(f"{field_path}.target_modules: {target!r} names {wrong} layers, which {kind} cannot "
                              f"adapt (layers it can: {adaptable})")  # fmt: skip


def peft_target_names(model: Any, exact: list[str]) -> list[str]:
    """What PEFT gets as `target_modules` for the exact module names `families.resolve_targets` chose: the short
    names (`q_proj`) when they select exactly those modules (so an adapter of `[q_proj, v_proj]` is written as
    before, which vLLM and older readers expect), else the exact names."""
    short = sorted({n.rsplit(".", 1)[-1] for n in exact})
    from lorascope.models import families

    inside = {n for n, _, _, _ in families.block_modules(model)}
    same = {n for n in inside if n.rsplit(".", 1)[-1] in short}
    return short if same == set(exact) else list(exact)


def method_targets(model: Any, targets: list[str], field_path: str) -> list[str]:
    """`targets` as PEFT's `target_modules` for `model` (resolved, then `peft_target_names`)."""
    from lorascope.models import families

    return peft_target_names(model, families.resolve_targets(model, targets, field_path))
