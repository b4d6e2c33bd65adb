"""The forgetting measurement (torch): the base model's language-model loss on a fixed held-out text, measured through
a fine-tuned backbone. analysis/forgetting.py turns these losses into forgetting per cell and method (numpy).

What is measured. A decoder cell is the base model's backbone (embeddings, blocks, final norm) fine-tuned for
classification, plus a classifier head. Its language-modelling ability is read with the BASE model's LM head:

    loss = - (1 / N) sum_{texts t} sum_{i=1}^{n_t - 1} log softmax(W_head h_i(t) + b_head)[x_{i+1}(t)]   (nats/token)

where h_i is the backbone's output at position i (the `last_hidden_state` of `model.model`: after the backbone's own
final norm, fine-tuned with it when the method trains it), x the text's token ids `BOS t_1 .. t_{n-1}` (truncated at
`max_length`), and N = sum_t (n_t - 1) the predicted tokens: every position predicts the next one, so the first
token (BOS) is never a target and padding is never a position or a target. W_head is the staged base checkpoint's
`lm_head.weight`; with tied embeddings (SmolLM2: `tie_word_embeddings`) it is the BASE embedding matrix, even where
full fine-tuning changed the cell's own embeddings: the head is the base's, so a change of the loss is a change of
the backbone. Forgetting of a cell = its loss - the base's loss (the same code on the base model: exactly 0 there).
Logits and the per-token cross-entropy in float32, the sums in float64; batches in length order, right-padded,
under `torch.inference_mode()`: deterministic for a fixed device and batch size.

Models: a full model (any `*ForSequenceClassification` or `*ForCausalLM` with a `base_model_prefix` backbone), or a
PEFT model: the backbone is taken inside PEFT's wrapper (`get_base_model()`), whose injected adapter layers (LoRA,
IA3, ...) run in its forward exactly as in the cell's own forward; merging gives the same value (tested). PEFT
prompt-learning methods (prefix tuning) act only through the PeftModel's forward (virtual tokens / past key values),
not through the backbone alone: `Unsupported`. Encoders (RoBERTa) have no causal LM head: their masked-LM loss would
be a different measure, so forgetting is decoder-only (`Unsupported`).

The text: `assets/forgetting/stdlib-prose.jsonl` (`builtin`; provenance and license in its README), or a study's own
`.jsonl` (one {"text": ...} a line) or `.txt` (paragraphs separated by blank lines) file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorascope.errors import ConfigError

ASSETS = Path(__file__).resolve().parent / "assets" / "forgetting"
BUILTIN = "builtin"
BUILTIN_FILE = ASSETS / "stdlib-prose.jsonl"
BUILTIN_INFO = {
    "name": "stdlib-prose",
    "description": "English prose paragraphs from CPython 3.11 standard-library docstrings (tools/make_forgetting_texts.py)",
    "license": "PSF-2.0 (Copyright (c) 2001-2023 Python Software Foundation)",
}
FILE = "forgetting.json"  # in a decoder model's reps bundle
LOGIT_CHUNK = 2048  # positions per logits matmul: bounds the [positions, vocab] float32 buffer (400 MB at 49k vocab)


class Unsupported(Exception):
    """The model has no measurable LM loss through its backbone (an encoder, a prompt-learning PEFT method)."""


# ------------------------------------------------------------------------------------------------ the text set
@dataclass(frozen=True)
class TextSet:
    texts: list[str]  # the first max_texts texts, in file order
    sha256: str  # of the whole file
    info: dict[str, Any]  # source, license, n_available

    def describe(self) -> dict[str, Any]:
        return {**self.info, "sha256": self.sha256, "texts": len(self.texts)}


def load_texts(spec: str = BUILTIN, max_texts: int | None = None, field: str = "forgetting.texts") -> TextSet:
    """The held-out texts: `builtin` or a .jsonl / .txt path (ConfigError naming `field` when unreadable or empty)."""
    path = BUILTIN_FILE if spec == BUILTIN else Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"{field}: {spec!r} is neither 'builtin' nor an existing file")
    raw = path.read_bytes()
    try:
        if path.suffix == ".jsonl":
            texts = [str(json.loads(line)["text"]) for line in raw.decode().splitlines() if line.strip()]
        elif path.suffix == ".txt":
            texts = [" ".join(p.split()) for p in raw.decode().split("\n\n") if p.strip()]
        else:
            raise ConfigError(f"{field}: {spec!r} must be a .jsonl (one {{\"text\": ...}} a line) or a .txt file")
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{field}: {path}: not one JSON object with a 'text' a line ({e})") from None
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ConfigError(f"{field}: {path} holds no text")
    info = dict(BUILTIN_INFO) if spec == BUILTIN else {"name": path.name, "path": str(path)}
    info["n_available"] = len(texts)
    return TextSet(texts[:max_texts] if max_texts else texts, hashlib.sha256(raw).hexdigest(), info)


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """`BOS t_1 .. t_{n-1}` per text (the tokenizer adds no specials), truncated to `max_length` ids; texts that give
    fewer than 2 ids (nothing to predict) are dropped."""
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ConfigError("forgetting: the tokenizer has no bos token")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = [[int(bos), *t[: max_length - 1]] for t in ids]
    return [t for t in out if len(t) >= 2]


# ------------------------------------------------------------------------------------------------ the base head
ENCODER_REASON = ("{model_type} is an encoder: no causal LM head, so the base model's next-token loss is not defined "
                  "(a masked-LM loss would be a different measure)")  # fmt: skip


def is_encoder(config: Any) -> bool:
    """An encoder family (families.py), or an encoder-decoder: forgetting is not measured for it."""
    from lorascope.models import families

    if getattr(config, "is_encoder_decoder", False):
        return True
    try:
        return families.family_for(str(config.model_type)).encoder
    except ConfigError:  # an architecture families.py does not list: a decoder if its checkpoint has an LM head
        return False


@dataclass(frozen=True)
class LMHead:
    weight: torch.Tensor  # float32 [vocab, hidden]
    bias: torch.Tensor | None  # float32 [vocab]
    softcap: float | None  # Gemma-2-style final logit soft-capping, when the config has it
    source: str  # which tensor of which checkpoint

    def to(self, device: Any) -> LMHead:
        bias = None if self.bias is None else self.bias.to(device)
        return LMHead(self.weight.to(device), bias, self.softcap, self.source)


def read_lm_head(model_dir: str | Path) -> LMHead:
    """The base checkpoint's LM head, read from its safetensors without loading the model: `lm_head.weight` (and a
    bias when there is one), or, with tied embeddings, the input embedding matrix (the family's token embedding,
    `models.families.Family.token_embedding`: `*embed_tokens.weight`, GPT-2's `*wte.weight`)."""
    from safetensors import safe_open
    from transformers import AutoConfig

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(str(model_dir))
    if is_encoder(config):
        raise Unsupported(ENCODER_REASON.format(model_type=config.model_type))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"forgetting: {model_dir} holds no *.safetensors (the staged base model)")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                where[k] = f
    from lorascope.models import families

    token = families.family_for(str(config.model_type)).token_embedding + ".weight"
    embed = sorted(k for k in where if k == token or k.endswith("." + token))
    if tied:
        if not embed:
            raise ConfigError(f"forgetting: {model_dir}: tied embeddings but no *{token} tensor")
        key = embed[0]
    elif "lm_head.weight" in where:
        key = "lm_head.weight"
    else:
        raise ConfigError(f"forgetting: {model_dir}: no lm_head.weight and tie_word_embeddings is false")

    def read(k: str) -> torch.Tensor:
        with safe_open(str(where[k]), framework="pt") as st:
            return st.get_tensor(k).to(torch.float32)

    bias = read("lm_head.bias") if "lm_head.bias" in where else None
    softcap = getattr(config, "final_logit_softcapping", None)
    return LMHead(read(key), bias, float(softcap) if softcap else None, f"{model_dir.name}/{where[key].name}:{key}")


# ------------------------------------------------------------------------------------------------ the backbone
def backbone_of(model) -> torch.nn.Module:
    """The decoder backbone (embeddings, blocks, final norm) of a classifier, a causal LM, or a PEFT model of one."""
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        cfg = model.active_peft_config if hasattr(model, "active_peft_config") else None
        if cfg is not None and getattr(cfg, "is_prompt_learning", False):
            raise Unsupported(f"PEFT {cfg.peft_type} acts through virtual tokens in the PeftModel's forward, not "
                              "through the backbone: the LM loss with the base head is not defined for it here")  # fmt: skip
        model = model.get_base_model()  # adapter layers stay injected in it and run in its forward
    config = getattr(model, "config", None)
    if config is not None and is_encoder(config):
        raise Unsupported(ENCODER_REASON.format(model_type=config.model_type))
    prefix = getattr(model, "base_model_prefix", "")
    inner = getattr(model, prefix, None) if prefix else None
    return inner if isinstance(inner, torch.nn.Module) else model


# ------------------------------------------------------------------------------------------------ the measure
def lm_loss(model, sequences: list[list[int]], head: LMHead, pad_id: int, batch_size: int, device: Any) -> dict[str, Any]:
    """Mean next-token cross-entropy (nats per predicted token) of `sequences` through `model`'s backbone and `head`.
    Returns {"loss_nats_per_token", "tokens" (predicted tokens N), "nll_nats" (the float64 sum)}."""
    from lorascope import data

    if not sequences:
        raise ValueError("lm_loss: no sequences")
    backbone = backbone_of(model)
    head = head.to(device)
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    total = torch.zeros((), dtype=torch.float64)
    tokens = 0
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = data.collate([{"input_ids": sequences[i]} for i in order[start : start + batch_size]], pad_id)
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                valid = mask[:, 1:].bool() & mask[:, :-1].bool()  # position i predicts token i+1: both must be real
                h = hidden[:, :-1][valid].float()
                target = ids[:, 1:][valid]
                for c in range(0, h.shape[0], LOGIT_CHUNK):
                    logits = h[c : c + LOGIT_CHUNK] @ head.weight.T
                    if head.bias is not None:
                        logits = logits + head.bias
                    if head.softcap:
                        logits = torch.tanh(logits / head.softcap) * head.softcap
                    nll = torch.nn.functional.cross_entropy(logits, target[c : c + LOGIT_CHUNK], reduction="none")
                    total += nll.double().sum().cpu()
                tokens += int(target.numel())
    finally:
        backbone.train(was_training)
    return {"loss_nats_per_token": float(total / tokens), "tokens": tokens, "nll_nats": float(total)}


def measure(model, tokenizer, head: LMHead, texts: TextSet, max_length: int, batch_size: int, device: Any) -> dict[str, Any]:
    """What a reps bundle's forgetting.json holds: the loss, its token count, the text set's identity and settings."""
    sequences = encode_texts(tokenizer, texts.texts, max_length)
    out = lm_loss(model, sequences, head, int(tokenizer.pad_token_id), batch_size, device)
    return {**out, "texts": len(sequences), "texts_sha256": texts.sha256, "text_set": texts.info.get("name"),
            "max_length": max_length, "head": head.source, "perplexity": float(torch.tensor(out["loss_nats_per_token"]).exp())}  # fmt: skip


# ------------------------------------------------------------------------------------------------ one extract unit
@dataclass(frozen=True)
class Plan:
    """What one extract unit needs for the measure, read before any model loads (`plan`); `reason` when skipped."""

    texts: TextSet | None = None
    head: LMHead | None = None
    reason: str | None = None


def plan(cfg: Any, base_dir: str | Path) -> Plan | None:
    """For `study.forgetting` and the staged base model: None when disabled, a Plan with the texts and the base head,
    or (`enabled: null`) a Plan with the reason it is not measured: an encoder, or a checkpoint with no causal LM head.
    ConfigError before any model loads for `enabled: true` on such a model and for unreadable texts."""
    if cfg.enabled is False:
        return None
    texts = load_texts(cfg.texts, cfg.max_texts)
    try:
        head = read_lm_head(base_dir)
    except (Unsupported, ConfigError) as e:  # an encoder, or a checkpoint without a causal LM head
        if cfg.enabled:
            raise ConfigError(f"forgetting.enabled is true, but {e}; set forgetting.enabled to false or null") from None
        return Plan(texts=texts, reason=str(e))
    return Plan(texts=texts, head=head)


def unit_result(p: Plan, model, tokenizer, cfg: Any, device: Any) -> dict[str, Any]:
    """The forgetting.json of one model unit: the measure, or `loss_nats_per_token: null` with the reason."""
    not_measured = {"loss_nats_per_token": None, "tokens": 0, "texts": 0, "texts_sha256": p.texts.sha256 if p.texts else None}
    if p.reason is not None:
        return {**not_measured, "reason": p.reason}
    assert p.head is not None and p.texts is not None
    try:
        return measure(model, tokenizer, p.head, p.texts, cfg.max_length, cfg.batch_size, device)
    except Unsupported as e:  # a prompt-learning PEFT cell
        if cfg.enabled:
            raise ConfigError(f"forgetting.enabled is true, but {e}; set forgetting.enabled to false or null") from None
        return {**not_measured, "reason": str(e)}


__all__ = ["Plan", "plan", "unit_result", "BUILTIN", "FILE", "LMHead", "TextSet", "Unsupported", "backbone_of", "encode_texts", "lm_loss", "load_texts",
           "measure", "read_lm_head"]  # fmt: skip
