"""What a Hugging Face Hub error means for a study, in one place: `preflight.model_config` (config.json) and
`modeling.fetch_model` (the snapshot) both map hub errors through `study_error`, so a missing model, revision or
file and a gated repo read the same wherever they are met. No torch import.

Order matters: huggingface_hub's `LocalEntryNotFoundError` (offline, not cached, hub unreachable) is also an
`EntryNotFoundError`, and `GatedRepoError` is a `RepositoryNotFoundError`; the narrower class is checked first.
"""

from __future__ import annotations

from lorascope.errors import ConfigError


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
