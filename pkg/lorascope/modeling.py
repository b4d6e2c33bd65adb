"""The fine-tuning methods (`apply_method`: full, LoRA and its variants, IA3, prefix tuning, top-k layers, BitFit) and
saving a cell's artifact; they move to lorascope.methods. Everything else that was here is in lorascope.models
(builtin, families, hub, smollm2, loading, pooling, artifacts), re-exported below until this module goes.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.errors import ConfigError
from lorascope.models.artifacts import folder_bytes, load_cell_model, trainable_bytes, trainable_parameters
from lorascope.models.builtin import (
    ASSETS,
    BUILTIN_MODELS,
    SMOLLM2,
    TINY_BUILTINS,
    TINY_LLAMA_ASSETS,
    TINY_LLAMA_SEED,
    TINYLLAMA_1B_ARCH,
    TOKENIZER_FILES,
    build_tiny,
    build_tiny_llama,
    builtin_config_dir,
    builtin_fingerprint,
    tiny_llama_fingerprint,
)
from lorascope.models.hub import MODEL_FILE_PATTERNS, _file_digest, _hub_snapshot, fetch_model, model_source
from lorascope.models.loading import (
    check_encoder_config,
    expected_load_report_silenced,
    load_classifier,
    load_tokenizer,
    model_family,
    pick_device,
)
from lorascope.models.pooling import LastAttendedPooling, last_token_index, masked_mean, use_last_attended_pooling

LORA_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}  # -> init_lora_weights


def peft_target_names(model, exact: list[str]) -> list[str]:
    """What PEFT gets as `target_modules` for the exact module names `families.resolve_targets` chose: the short
    names (`q_proj`) when they select exactly those modules (so an adapter of `[q_proj, v_proj]` is written as
    before, which vLLM and older readers expect), else the exact names."""
    short = sorted({n.rsplit(".", 1)[-1] for n in exact})
    from lorascope import families

    inside = {n for n, _, _, _ in families.block_modules(model)}
    same = {n for n in inside if n.rsplit(".", 1)[-1] in short}
    return short if same == set(exact) else list(exact)


def method_targets(model, targets: list[str], field_path: str) -> list[str]:
    from lorascope import families

    return peft_target_names(model, families.resolve_targets(model, targets, field_path))


def frozen_except(model, names: set[str]) -> None:
    """requires_grad on exactly the parameters named in `names`."""
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def top_layers_parameters(model, k: int, field_path: str) -> set[str]:
    """The last `k` blocks and everything after them (Llama: the final norm; every family: the classifier head);
    the embeddings and the first n - k blocks stay frozen."""
    from lorascope import families

    groups = families.parameter_groups(model)
    n = families.num_blocks(model)
    if k > n:
        raise ConfigError(f"{field_path}: k={k} but the model has {n} blocks (k must be at most {n})")
    early = {p for i in range(n - k) for p in groups.get(f"block:{i}", [])}
    return {name for name, _ in model.named_parameters() if name not in early and name not in groups["embeddings"]}


def bitfit_parameters(model, train: list[str], field_path: str) -> set[str]:
    """The bias terms and/or the norm parameters (`train`), plus the classifier head. A model without bias terms
    outside its head (Llama, Mistral, Gemma) asked for `bias` is a ConfigError: there is nothing to tune."""
    from lorascope import families

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


def ia3_targets(model, method: Any, where: str) -> tuple[list[str], list[str]]:
    """(exact target names, exact feed-forward names) of an IA3 method: `feedforward_modules` null = the targets that
    are the down projection; given, each must be among the targets (IA3 scales its input instead of its output)."""
    from lorascope import families

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


def apply_method(model, method: Any, overrides: Mapping[str, Any] | None = None, field_path: str | None = None):
    """Set up `model` (a loaded classifier) for `method`; the classifier head trains under every method.

    full        every parameter trains
    lora        PEFT `LoraConfig` on `target_modules` (roles/groups/literals resolved by families.resolve_targets),
                alpha and dropout from `overrides["lora_alpha"/"lora_dropout"]` when HPO chose them, `use_dora`,
                `use_rslora`, `init_lora_weights` from `init`
    ia3         PEFT `IA3Config` on `target_modules`, `feedforward_modules` (a subset of them) scaled at their input
    prefix      PEFT `PrefixTuningConfig(num_virtual_tokens)`
    top_layers  requires_grad on the last k blocks and what follows them (`top_layers_parameters`)
    bitfit      requires_grad on the bias and/or norm parameters (`bitfit_parameters`)
    PEFT methods get the head through the SEQ_CLS task (PEFT adds `score`/`classifier` to modules_to_save)."""
    overrides = dict(overrides or {})
    where = field_path or f"methods.{method.name}"
    if method.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method.kind == "top_layers":
        frozen_except(model, top_layers_parameters(model, method.k, f"{where}.k"))
        return model
    if method.kind == "bitfit":
        frozen_except(model, bitfit_parameters(model, list(method.train), f"{where}.train"))
        return model
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, TaskType, get_peft_model

    if method.kind == "lora":
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=method.r,
            lora_alpha=float(overrides.get("lora_alpha", method.alpha)),
            lora_dropout=float(overrides.get("lora_dropout", method.dropout)),
            target_modules=method_targets(model, list(method.target_modules), f"{where}.target_modules"),
            use_dora=method.use_dora,
            use_rslora=method.use_rslora,
            init_lora_weights=LORA_INITS[method.init],
        )
    elif method.kind == "ia3":
        targets, ff = ia3_targets(model, method, where)
        # roles select a module in every block, so both lists come out as short names (PEFT checks ff <= targets)
        config = IA3Config(task_type=TaskType.SEQ_CLS, target_modules=peft_target_names(model, targets),
                           feedforward_modules=peft_target_names(model, ff) if ff else [])  # fmt: skip
    elif method.kind == "prefix":
        config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=method.num_virtual_tokens)
    else:
        raise ConfigError(f"{where}: unknown method kind {method.kind!r}")
    return get_peft_model(model, config)


def save_cell_artifact(model, method: Any, folder: Path, initial_adapter: Path | None = None) -> Path:
    """Save what a cell keeps: `adapter/` for a PEFT method, `model/` otherwise, into `folder`/<that>. A PiSSA/OLoRA
    adapter is converted (PEFT's `path_initial_model_for_weight_conversion`, from the initial adapter saved by
    `save_initial_adapter` before training) into a plain LoRA delta that applies to the untouched base."""
    out = Path(folder) / ("adapter" if method.adapter else "model")
    shutil.rmtree(out, ignore_errors=True)
    if getattr(method, "converts_init", False):
        if initial_adapter is None or not (initial_adapter / "adapter_config.json").is_file():
            raise ConfigError(f"method {method.name!r} (init {method.init}): the initial adapter was not saved before "
                              "training, so the trained adapter cannot be converted for the original base")  # fmt: skip
        model.save_pretrained(str(out), path_initial_model_for_weight_conversion=str(initial_adapter))
        _restore_modules_to_save(model, out)
    else:
        model.save_pretrained(str(out))
    return out


def _restore_modules_to_save(model, out: Path) -> None:
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


def save_initial_adapter(model, method: Any, folder: Path) -> Path | None:
    """For PiSSA/OLoRA: the adapter as initialised (A0, B0), saved before any training step, with
    `init_lora_weights=True` in its config as PEFT's conversion requires (loading it must not decompose W again).
    None for every other method."""
    if not getattr(method, "converts_init", False):
        return None
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True
    try:
        model.save_pretrained(str(folder))
    finally:
        config.init_lora_weights = init
    return folder


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


__all__ = [
    "ASSETS", "BUILTIN_MODELS", "LORA_INITS", "MODEL_FILE_PATTERNS", "SMOLLM2", "TINYLLAMA_1B_ARCH", "TINY_BUILTINS",
    "TINY_LLAMA_ASSETS", "TINY_LLAMA_SEED", "TOKENIZER_FILES", "LastAttendedPooling", "_file_digest", "_hub_snapshot",
    "apply_method", "bitfit_parameters", "build_tiny", "build_tiny_llama", "builtin_config_dir", "builtin_fingerprint",
    "check_encoder_config", "expected_load_report_silenced", "fetch_model", "folder_bytes", "frozen_except",
    "ia3_targets", "last_token_index", "load_cell_model", "load_classifier", "load_tokenizer", "lora_parameter_count",
    "masked_mean", "method_targets", "model_family", "model_source", "module_shapes", "peft_target_names",
    "pick_device", "save_cell_artifact", "save_initial_adapter", "tiny_llama_fingerprint", "top_layers_parameters",
    "trainable_bytes", "trainable_parameters", "use_last_attended_pooling",
]  # fmt: skip
