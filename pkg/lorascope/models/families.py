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

Not supported, and why: GPT-2 and GPT-NeoX (their own sequence classifiers find the last token from pad_token_id,
the bug models/pooling.py's docstring describes, and GPT-2's Conv1D projections), OPT (same). A model_type outside
FAMILIES is a ConfigError naming the supported ones. Imports no torch at module level.
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

    @property
    def classifies_at(self) -> str:
        return "first token (the model's own head)" if self.encoder else "last attended token"


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
)  # fmt: skip


def family_for(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    supported = sorted(t for f in FAMILIES for t in f.model_types)
    raise ConfigError(f"model_type {model_type!r} is not a supported architecture; lorascope supports {supported} "
                      "(see lorascope/models/families.py for why GPT-2, GPT-NeoX and OPT are not)")  # fmt: skip


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


def resolve_targets(model: Any, targets: Iterable[str], field_path: str = "target_modules") -> list[str]:
    """The exact names of the modules `targets` (roles, groups, `all-linear`, literal names) denote in `model`,
    sorted. A role the family lacks (RoBERTa has no `gate`) or an entry matching no module is a ConfigError naming
    `field_path`."""
    import torch

    fam = family_of(model)
    mods = block_modules(model, fam)
    chosen: set[str] = set()
    for t in expand_roles(targets):
        if t == ALL_LINEAR:
            hits = [n for n, _, _, m in mods if isinstance(m, torch.nn.Linear)]
        elif t in ROLES:
            inner = fam.roles.get(t)
            if inner is None:
                raise ConfigError(f"{field_path}: role {t!r} does not exist in {fam.name} models (roles there: "
                                  f"{sorted(fam.roles)})")  # fmt: skip
            hits = [n for n, _, rel, _ in mods if rel == inner]
        else:
            hits = [n for n, _, rel, _ in mods if rel == t or rel.endswith("." + t)]
        if not hits:
            known = sorted({rel.rsplit(".", 1)[-1] for _, _, rel, m in mods if isinstance(m, torch.nn.Linear)})
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
    "ALL_LINEAR", "FAMILIES", "GROUPS", "ROLES", "Family", "block_modules", "expand_roles", "family_for", "family_of",
    "num_blocks", "parameter_groups", "resolve_targets", "target_roles",
]  # fmt: skip
