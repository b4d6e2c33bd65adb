"""Checks of a study against the world it names, before any work: the data folder, the model name, and the model's
config (max positions, the modules and parameter groups each method names). `load_study` checks the study on its own; this module adds
what needs the model config, so `lorascope validate` and `lorascope run` refuse such a study at once (exit 2, the
field path named) instead of after stage, sanity and HPO.

The model config comes from the package (builtin models), the model folder (local), or the local HF cache / the hub
(config.json only). When it cannot be had (a hub id, offline, not cached) the model checks are skipped with a note,
and the stage phase makes them once it has fetched the model.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lorascope.errors import ConfigError
from lorascope.methods import kind_of
from lorascope.study import Study

ASSETS = Path(__file__).resolve().parent / "assets"


def model_config(study: Study, env: Mapping[str, str]) -> tuple[dict[str, Any] | None, str]:
    """(config.json as a dict, where it came from), or (None, why not). Raises ConfigError for a bad model.name."""
    from lorascope.models import builtin, hub

    name, revision = study.model.name, study.model.revision
    kind = hub.model_source(name)  # unknown builtin, missing folder, folder without config.json
    if kind == "builtin":
        folder = builtin.builtin_config_dir(name)
        if folder is not None and (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text()), f"package asset {folder.name}"
        return None, f"builtin model {name!r} ships no config.json in assets/"
    if kind == "local":
        path = Path(name).expanduser() / "config.json"
        try:
            return json.loads(path.read_text()), str(path)
        except ValueError as exc:
            raise ConfigError(f"model.name {name!r}: {path} is not valid JSON ({exc})") from None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from lorascope.models import hub

    cached = try_to_load_from_cache(repo_id=name, filename="config.json", revision=revision)
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text()), "local HF cache"
    if env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return None, f"model {name!r}@{revision} is not in the local HF cache and HF_HUB_OFFLINE is set"
    try:
        path = hf_hub_download(repo_id=name, filename="config.json", revision=revision)
    except OSError as exc:  # every hub error (HTTP errors and LocalEntryNotFoundError are OSErrors)
        err = hub.study_error(exc, name, revision, "config.json")
        if err is not None:
            raise err from None
        return None, f"the hub is unreachable for {name!r} ({type(exc).__name__})"
    return json.loads(Path(path).read_text()), "hub"


def meta_classifier(config: dict[str, Any]):
    """The sequence classifier the train phase builds for a classification task, instantiated on the meta device (no
    weights, no memory): the classification type's `meta_model`."""
    from lorascope.tasks.classification import plain_task

    task = plain_task()
    return task.task_type.meta_model(task, config)


def module_names(config: dict[str, Any]) -> dict[str, str]:
    """Module name -> class name of the sequence classifier the train phase builds (on the meta device)."""
    return {n: type(m).__name__ for n, m in meta_classifier(config).named_modules() if n}


def check_methods(study: Study, model: Any) -> None:
    """What each method names must exist in the model, by its kind's `check` (`lorascope.methods`): LoRA and IA3
    targets (roles, groups, all-linear, literal names: `families.resolve_targets`, of a type LoRA can wrap), IA3's
    feed-forward modules among its targets, BitFit's parameter groups (Llama has no bias terms), top_layers' k
    against the block count. The same functions the kinds' `apply` runs, on a meta-device model, with the field
    path `methods.<i>...`. Methods that differ only in their name and size (a sweep's entries differ in r, alpha,
    ...) are checked once: 10,000 methods take a second."""
    checked: set[str] = set()
    for i, m in enumerate(study.methods):
        kind = kind_of(m)
        size = {"name", *([kind.size_knob] if kind.size_knob else []), *kind.size_companions}
        key = repr(m.model_dump(exclude=size))
        if key in checked:
            continue
        checked.add(key)
        kind.check(model, m, f"field methods.{i}")


def check_family(study: Study, family: Any) -> None:
    """What the model family allows (docs/families.md): pooling `first` is the encoders' classification position
    (`<s>`/`[CLS]`), `last` the decoders'. `first` on a decoder is the BOS state, which causal attention makes the same
    for every input (a constant representation, CKA undefined): refused. `last` on an encoder is allowed: its final
    `</s>` attends to the whole input, so it is a real (if unused by the head) representation."""
    if family.encoder and "vllm" in study.bench.backends:
        raise ConfigError(f"field bench.backends: the vllm bench serves decoders only (vLLM's classify pooling reads "
                          f"the last token of a causal LM with LoRA adapters); {family.name} is an encoder: use "
                          "backends [hf] (the hf bench serves encoders through the same code as decoders)")  # fmt: skip
    if family.encoder and study.forgetting.enabled:
        from lorascope.heldout_loss import ENCODER_REASON  # the reason the extract phase would give, after training

        raise ConfigError(f"field forgetting.enabled: true, but {ENCODER_REASON.format(model_type=family.name)}; set "
                          "forgetting.enabled to false or null (null: measured for decoders only)")  # fmt: skip
    if family.encoder:
        for i, task in enumerate(study.tasks):
            ttype = task.task_type
            if not ttype.encoders:
                raise ConfigError(f"field tasks.{i}.type: a {ttype.name} task ({task.name}) runs on decoders only; "
                                  f"{family.name} is an encoder")  # fmt: skip
    for i, task in enumerate(study.tasks):
        why = family.refused_task_types.get(task.task_type.name)
        if why is not None:
            raise ConfigError(f"field tasks.{i}.type: {family.name} cannot run a {task.task_type.name} task "
                              f"({task.name}): {why}")  # fmt: skip
    if not family.encoder and "first" in study.extraction.pooling:
        raise ConfigError(f"field extraction.pooling: 'first' is for encoders; on a decoder ({family.name}) the first "
                          "token is BOS, whose state is the same for every input; use 'last' (where the decoder "
                          "classifies) and/or 'mean'")  # fmt: skip


def check_files(study: Study, read: bool = True) -> None:
    """The files the study names exist and can be read, by the process that will read them: the local data folder
    (data.check_source) and forgetting.texts (read by the extract phase, after training, when forgetting is not off;
    `read`: also parsed as extract parses it, which imports torch). A relative path is relative to the working
    directory, as in the phases."""
    from lorascope import data

    data.check_source(study)
    texts = study.forgetting.texts
    if study.forgetting.enabled is False or texts == "builtin":
        return
    path = Path(texts).expanduser()
    field = f"field forgetting.texts: {texts!r}"
    if path.is_dir():
        raise ConfigError(f"{field} is a folder; give a .jsonl or .txt file (or 'builtin')")
    if not path.is_file():
        raise ConfigError(f"{field}: file {path.absolute()} does not exist (or give 'builtin', or set forgetting.enabled "
                          "to false)")  # fmt: skip
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"{field}: cannot be read: {exc.strerror or exc}") from None
    if read and importlib.util.find_spec("torch") is not None:  # extract's own reading: empty, not JSON lines
        from lorascope.heldout_loss import load_texts

        load_texts(texts, study.forgetting.max_texts, field="field forgetting.texts")


def check_model(study: Study, config: dict[str, Any]) -> None:
    """Every check that needs the model's config.json: the family (pooling, the vllm bench, forgetting on an encoder),
    the positions each task's max_length needs, and what each method names (check_methods). Made by `validate` and
    `run` when the config is at hand, else by the stage phase on the model it fetched."""
    from lorascope.models import loading
    from lorascope.models.families import family_of

    try:
        family = family_of(config)  # an unsupported architecture: ConfigError naming the supported model types
    except ConfigError as exc:
        raise ConfigError(f"field model.name: {study.model.name!r}: {exc}") from None
    check_family(study, family)
    if family.encoder:
        loading.check_encoder_config(config, f"field model.name: {study.model.name!r}")
    limit = config.get("max_position_embeddings")
    if isinstance(limit, int) and config.get("model_type") in ("roberta", "xlm-roberta"):
        limit -= int(config.get("pad_token_id") or 0) + 1  # position ids start after padding_idx: 514 hold 512
    for i, task in enumerate(study.tasks):
        if isinstance(limit, int) and task.max_length > limit:
            raise ConfigError(f"field tasks.{i}.max_length: {task.max_length} exceeds the model's "
                              f"max_position_embeddings {limit} ({study.model.name})")  # fmt: skip
    if any(kind_of(m).checks_model for m in study.methods):
        seen: set[str] = set()
        for task in study.tasks:  # the model each task type builds (its head), once per type
            spec = task.spec
            if spec.type not in seen:
                seen.add(spec.type)
                check_methods(study, spec.task_type.meta_model(spec, config))


MODEL_CHECKS_AT_STAGE = "the stage phase makes them after fetching the model"
MODEL_CHECKS_NOT_RUN = ("model checks not run (this command loads no model code); `lorascope validate` makes them, "
                        "and `lorascope run` before any work")  # fmt: skip


def check_study(study: Study, source: str = "", env: Mapping[str, str] | None = None, model: bool = True) -> list[str]:
    """Every check that needs more than the study file: raises ConfigError (field path first) or returns notes on
    what could not be checked here (the model checks, when the model's config is not at hand offline). `model=False`
    (`lorascope grid`, which imports no torch): the file checks only, and a note saying so."""
    env = os.environ if env is None else env
    notes: list[str] = []
    try:
        check_files(study, read=model)
        if not model:
            return [MODEL_CHECKS_NOT_RUN]
        if importlib.util.find_spec("torch") is None:  # a laptop with lorascope[k8s], a slim image: the file checks only
            notes.append(f"model checks skipped (torch is not installed here); {MODEL_CHECKS_AT_STAGE}")
            return notes
        config, origin = model_config(study, env)
        if config is None:
            notes.append(f"model checks skipped ({origin}); {MODEL_CHECKS_AT_STAGE}")
            return notes
        check_model(study, config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}" if source else str(exc)) from None
    return notes
