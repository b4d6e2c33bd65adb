"""Model families: which architectures lorascope fine-tunes, and what their parts are called.

A study names the modules a method adapts by *role*, so one study line means the same thing on every architecture:

  roles    q, k, v, o (attention projections), gate, up, down (MLP projections)
  groups   attention = q k v o; mlp = gate up down; all-linear = every nn.Linear inside the blocks
  literal  anything else is a module's own name, matched the way PEFT matches a target_modules entry (the module's
           name equals it or ends in '.<entry>'): `q_proj` keeps working on Llama, `query` on RoBERTa

`Family` says, per architecture, where a role lives inside a block (Llama `self_attn.q_proj`, RoBERTa
`attention.self.query`, Phi-3's fused `self_attn.qkv_proj` serves q, k and v at once), where the blocks are, what the
classifier head is called, whether the model is an encoder (classifies at the first token with its own head) or a
decoder (classifies at the last attended token: models.pooling.use_last_attended_pooling), and which parameters are
biases and norms (BitFit). `resolve_targets` turns a study's target list into the exact module names of an
instantiated model, which PEFT receives as its `target_modules`: exact names, so RoBERTa's two `output.dense`
modules (attention output vs block output) are never confused.

GPT-2 (`gpt2`): a decoder for generation only. Its projections are transformers' `Conv1D` (weight stored in x out,
the transpose of nn.Linear's): `conv1d` lists them, so LoRA and IA3 get PEFT's `fan_in_fan_out=True`
(`fan_in_fan_out`) and the weight readers return them in nn.Linear's orientation (`conv1d_weight`,
`tensorio.TensorFolder`). q, k and v are one fused `attn.c_attn` (adapting q adapts k and v too, as Phi-3's
qkv_proj); `attn.c_proj` and `mlp.c_proj` are two modules with one short name, so rows and targets use the path.
Classification on GPT-2 is refused (`refused_task_types`): GPT2ForSequenceClassification finds the last token from
pad_token_id, the failure models/pooling.py's docstring describes, and it is not transformers'
GenericForSequenceClassification that `use_last_attended_pooling` re-classes.

Not supported, and why: GPT-NeoX and OPT (their own sequence classifiers find the last token from pad_token_id,
the bug models/pooling.py's docstring describes). A model_type outside FAMILIES is a ConfigError naming the supported
ones. Imports no torch at module level.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lorascope.errors import ConfigError

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("q", "k", "v", "o"),
    "mlp": ("gate", "up", "down"),
}
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    encoder: bool
    roles: Mapping[str, str]  # role -> module path inside one block (several roles may share a fused module)
    blocks: str  # path of the block list below the backbone (the model's base_model_prefix), e.g. "layers"
    head: tuple[str, ...]  # top-level names of the task heads' modules, trained by every method (qa_outputs: span heads)
    embeddings: tuple[str, ...] = ("embed_tokens",)  # module-name parts of the input embeddings
    norm_marker: str = "norm"  # a parameter is a norm's when a part of its name contains this (lower-cased)
    notes: tuple[str, ...] = field(default_factory=tuple)
    token_embedding: str = "embed_tokens"  # the token embedding's module name (a tied LM head's weight is its weight)
    conv1d: tuple[str, ...] = ()  # paths inside a block of transformers' Conv1D modules (weight stored in x out)
    # task types the family cannot run, with the reason ({type name: why}): preflight refuses them at the door
    refused_task_types: Mapping[str, str] = field(default_factory=dict)

    @property
    def classifies_at(self) -> str:
        return "first token (the model's own head)" if self.encoder else "last attended token"


GPT2_CLASSIFIER_REASON = (
    "GPT-2 runs generation tasks only: its sequence classifier (GPT2ForSequenceClassification) finds the last token "
    "from pad_token_id, which with pad = eos lands on the wrong token (models/pooling.py), and it is not the "
    "GenericForSequenceClassification whose pooling lorascope moves to the last attended token"
)

_LLAMA_ROLES = {
    "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj",
}  # fmt: skip

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo2", "granite"), False,
           _LLAMA_ROLES, "layers", ("score", "qa_outputs"),
           notes=("Qwen2 has biases on q, k, v; Llama, Mistral, Gemma have no bias terms",)),
    Family("phi3", ("phi3",), False,
           {"q": "self_attn.qkv_proj", "k": "self_attn.qkv_proj", "v": "self_attn.qkv_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_up_proj", "up": "mlp.gate_up_proj", "down": "mlp.down_proj"},
           "layers", ("score", "qa_outputs"),
           notes=("q, k, v are one fused qkv_proj and gate, up one fused gate_up_proj: adapting q adapts all three",)),
    Family("roberta", ("roberta", "bert", "xlm-roberta"), True,
           {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
            "o": "attention.output.dense", "up": "intermediate.dense", "down": "output.dense"},
           "encoder.layer", ("classifier", "qa_outputs"), embeddings=("embeddings",), norm_marker="layernorm",
           notes=("no gate projection (the MLP is up, GELU, down)",)),
    Family("gpt2", ("gpt2",), False,
           {"q": "attn.c_attn", "k": "attn.c_attn", "v": "attn.c_attn", "o": "attn.c_proj",
            "up": "mlp.c_fc", "down": "mlp.c_proj"},
           "h", ("score",), embeddings=("wte", "wpe"), norm_marker="ln_", token_embedding="wte",
           conv1d=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
           refused_task_types={"classification": GPT2_CLASSIFIER_REASON},
           notes=("q, k, v are one fused attn.c_attn (adapting q adapts k and v too); no gate projection (the MLP is "
                  "up, GELU, down); every projection is a Conv1D (LoRA with fan_in_fan_out)",)),
)  # fmt: skip


def family_for(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    supported = sorted(t for f in FAMILIES for t in f.model_types)
    raise ConfigError(f"model_type {model_type!r} is not a supported architecture; lorascope supports {supported} "
                      "(see lorascope/models/families.py for why GPT-NeoX and OPT are not)")  # fmt: skip


def family_of(model_or_config: Any) -> Family:
    """The family of a model, a config object or a config.json dict."""
    cfg = getattr(model_or_config, "config", model_or_config)
    model_type = cfg.get("model_type") if isinstance(cfg, Mapping) else getattr(cfg, "model_type", None)
    if not model_type:
        raise ConfigError("model config has no model_type")
    return family_for(str(model_type))


def expand_roles(targets: Iterable[str]) -> list[str]:
    """Groups to roles (order kept, duplicates dropped); literals and `all-linear` pass through."""
    out: list[str] = []
    for t in targets:
        for r in GROUPS.get(t, (t,)):
            if r not in out:
                out.append(r)
    return out


def _blocks_pattern(fam: Family) -> re.Pattern[str]:
    return re.compile(rf"(?:^|\.){re.escape(fam.blocks)}\.(\d+)\.(.+)$")


def block_modules(model: Any, fam: Family | None = None) -> list[tuple[str, int, str, Any]]:
    """(full name, block index, name inside the block, module) for every module inside the model's blocks."""
    fam = fam or family_of(model)
    pat = _blocks_pattern(fam)
    out = []
    for name, module in model.named_modules():
        m = pat.search(name)
        if m:
            out.append((name, int(m.group(1)), m.group(2), module))
    return out


def is_linear(module: Any) -> bool:
    """A linear layer: torch's nn.Linear, or transformers' Conv1D (GPT-2's projections: the same map, weight stored
    transposed)."""
    import torch

    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def fan_in_fan_out(model: Any, names: Iterable[str], field_path: str = "target_modules") -> bool:
    """PEFT's `fan_in_fan_out` for adapting the modules `names` of `model`: True when they are transformers' Conv1D
    (weight stored in x out: GPT-2), False for nn.Linear. PEFT takes one flag per adapter, so a mix is refused."""
    modules = dict(model.named_modules())
    conv = {type(modules[n]).__name__ == "Conv1D" for n in names if n in modules}
    if len(conv) > 1:
        raise ConfigError(f"{field_path}: mixes Conv1D and Linear modules, which one PEFT adapter cannot wrap "
                          "(fan_in_fan_out is one flag per adapter)")  # fmt: skip
    return conv == {True}


def conv1d_weight(fam: Family, name: str) -> bool:
    """Whether the parameter `name` (a full name, `transformer.h.0.attn.c_attn.weight`) is the weight of one of the
    family's Conv1D modules (stored in x out; nn.Linear's orientation is its transpose)."""
    if not fam.conv1d or not name.endswith(".weight"):
        return False
    m = _blocks_pattern(fam).search(name.removesuffix(".weight"))
    return bool(m) and m.group(2) in fam.conv1d


def resolve_targets(model: Any, targets: Iterable[str], field_path: str = "target_modules") -> list[str]:
    """The exact names of the modules `targets` (roles, groups, `all-linear`, literal names) denote in `model`,
    sorted. A role the family lacks (RoBERTa has no `gate`) or an entry matching no module is a ConfigError naming
    `field_path`. `all-linear`: every nn.Linear (and Conv1D: GPT-2) inside the blocks."""
    fam = family_of(model)
    mods = block_modules(model, fam)
    chosen: set[str] = set()
    for t in expand_roles(targets):
        if t == ALL_LINEAR:
            hits = [n for n, _, _, m in mods if is_linear(m)]
        elif t in ROLES:
            inner = fam.roles.get(t)
            if inner is None:
                raise ConfigError(f"{field_path}: role {t!r} does not exist in {fam.name} models (roles there: "
                                  f"{sorted(fam.roles)})")  # fmt: skip
            hits = [n for n, _, rel, _ in mods if rel == inner]
        else:
            hits = [n for n, _, rel, _ in mods if rel == t or rel.endswith("." + t)]
        if not hits:
            known = sorted({rel.rsplit(".", 1)[-1] for _, _, rel, m in mods if is_linear(m)})
            raise ConfigError(f"{field_path}: {t!r} matches no module of this {fam.name} model; roles are "
                              f"{list(ROLES)}, groups {sorted(GROUPS)} or {ALL_LINEAR!r}, linear layers {known}")  # fmt: skip
        chosen.update(hits)
    return sorted(chosen, key=_natural)


def target_roles(model: Any, names: Iterable[str]) -> list[str]:
    """The module paths inside a block that exact names denote (for logs and reports: 'self_attn.q_proj')."""
    fam = family_of(model)
    pat = _blocks_pattern(fam)
    return sorted({m.group(2) for n in names if (m := pat.search(n))})


def num_blocks(model: Any) -> int:
    fam = family_of(model)
    return 1 + max(i for _, i, _, _ in block_modules(model, fam))


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def parameter_groups(model: Any) -> dict[str, list[str]]:
    """Parameter names by what they are: `bias` (every bias term), `norm` (norm weights and biases), `head` (the
    classifier head), `embeddings`, and `block:<i>` for the parameters of block i. A parameter may be in several."""
    fam = family_of(model)
    pat = _blocks_pattern(fam)
    out: dict[str, list[str]] = {"bias": [], "norm": [], "head": [], "embeddings": []}
    for name, _ in model.named_parameters():
        parts = name.split(".")
        if parts[-1] == "bias":
            out["bias"].append(name)
        if any(fam.norm_marker in p.lower() for p in parts[:-1]):
            out["norm"].append(name)
        if parts[0] in fam.head:
            out["head"].append(name)
        if any(e in parts for e in fam.embeddings):
            out["embeddings"].append(name)
        if m := pat.search(name):
            out.setdefault(f"block:{int(m.group(1))}", []).append(name)
    return out


__all__ = [
    "ALL_LINEAR", "FAMILIES", "GROUPS", "ROLES", "Family", "block_modules", "conv1d_weight", "expand_roles",
    "fan_in_fan_out", "family_for", "family_of", "is_linear", "num_blocks", "parameter_groups", "resolve_targets",
    "target_roles",
]  # fmt: skip
