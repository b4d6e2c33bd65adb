"""train: one grid cell per index (`study.cell(index)`: task-major, then method, then seed).

Recipe:
  1. skip a committed cell (no model load: it returns in well under a second);
  2. hyperparameters: the best params committed by the hpo phase (`hpo/<task>-<method>/best_params.json`) or, when
     `hpo.enabled` is false, `training.defaults[method]`; HPO enabled but nothing committed is a config error;
  3. data from the stage bundle: train (the staged train split, already capped by `train_samples`), dev (early
     stopping and the best checkpoint), validation (the reported split);
  4. resume: when the store holds committed checkpoints of this cell (`checkpoints/<cell>/checkpoint-<step>`), the
     latest is downloaded (with the best one it refers to) and training continues from it: weights, optimizer,
     scheduler, RNG states, early-stopping counter and the data order all come back, so the result equals an
     uninterrupted run;
  5. train with `training.fit` (seed = the cell's seed); every checkpoint is committed to the store as it is written
     and older ones are deleted (the last 2 and the best stay);
  6. evaluate the best model on dev and validation with the shared `training.evaluate`;
  7. commit `cells/<cell>/`: `adapter/` (a PEFT method's adapter incl. the score head; PiSSA/OLoRA converted to a plain
     LoRA delta on the untouched base) or `model/` (full, top_layers, bitfit: safetensors), `metrics.json`,
     `predictions.jsonl` (validation), `history.json` (the training curves: loss, learning rate, grad norm per
     logging step and dev metrics per evaluation, complete across resumes; `lorascope.history`). The checkpoints of a
     committed cell are deleted.

metrics.json: validation and dev {the task's metrics (classification: accuracy, f1; regression: pearson, spearman), loss,
n}, and each further validation split of the task under its own name (mnli: `validation` is matched,
`validation_mismatched` beside it, with `predictions_validation_mismatched.jsonl`); train_seconds (wall clock of training, with evaluations and
checkpoint uploads, of this process: a resumed run counts only its own part); tokens_per_second (non-pad training
tokens / time in optimizer steps); peak_memory_bytes with peak_memory_kind (`cuda_max_memory_allocated`, or
`process_peak_rss` on CPU); trainable_params / total_params; trainable_bytes (trainable params x their dtype size);
artifact_bytes (bytes on disk of the saved adapter/ or model/ folder); method_kind; params (the hyperparameters and the batch layout);
best_step; resumed_from_step.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

from lorascope.errors import ConfigError
from lorascope.history import HISTORY_FILE, build_history
from lorascope.phases import PhaseContext
from lorascope.threads import configure_threads

if TYPE_CHECKING:
    from lorascope.training import CheckpointStore


def hyperparameters(ctx: PhaseContext, task: str, method: str) -> tuple[dict[str, Any], str]:
    """(params, source): HPO's committed best params, or the study defaults when HPO is off."""
    study = ctx.study
    chosen, source = None, "training.defaults" + (f" + tasks.{task}.defaults" if method in study.task(task).defaults else "")
    if study.hpo.enabled:
        bundle = ctx.bundle("hpo", f"{task}-{method}")
        if bundle is None:
            raise ConfigError(f"HPO required but no best params committed for {task}-{method} (run the hpo phase "
                              "first, or set hpo.enabled: false to train with training.defaults)")  # fmt: skip
        best = bundle.read_json("best_params.json")
        chosen, source = best["params"], f"hpo/{task}-{method} trial {best.get('trial')}"
    from lorascope.training import resolve_params  # imports torch and transformers: after the cheap checks

    return resolve_params(study, method, chosen, task=task), source


def checkpoint_store(ctx: PhaseContext, cell: str) -> CheckpointStore:
    """The cell's checkpoints in the store (`checkpoints/<cell>/checkpoint-<step>`), as the object training sees."""
    from lorascope.training import CheckpointStore

    return CheckpointStore(ctx.store, ctx.key("checkpoints", cell), study_hash=ctx.study.hash, log=ctx.log)


def run(ctx: PhaseContext, index: int) -> None:
    study = ctx.study
    cell = study.cell(index)
    log = ctx.log.bind(cell=cell.name)
    ctx.require("stage", why="run the stage phase first: it fetches the model and the data")
    params, source = hyperparameters(ctx, cell.task, cell.method)

    import torch
    from transformers import set_seed

    from lorascope import data, methods, training
    from lorascope.models import artifacts, loading

    device = loading.pick_device(ctx.env)
    training.check_training(study, device)
    configure_threads(ctx.env)
    task = study.task(cell.task)
    spec = task.spec  # the task resolved by its type (lorascope.tasks): its input format, head, loss and metrics
    ttype = spec.task_type
    method = study.method(cell.method)
    log("params", source=source, **params)

    # data
    stage_dir = ctx.stage_dir()
    model_dir = stage_dir / "model"
    tokenizer = loading.load_tokenizer(model_dir)
    pad_id = int(tokenizer.pad_token_id)
    train_features = ttype.encode(spec, tokenizer, data.read_split(stage_dir, task.name, "train"), spec.max_length)
    dev_rows = data.read_split(stage_dir, task.name, "dev")
    validation_rows = data.read_split(stage_dir, task.name, "validation")
    extra_rows = {s: data.read_split(stage_dir, task.name, s) for s in spec.extra_validation_splits}
    dev_features = ttype.encode(spec, tokenizer, dev_rows, spec.max_length)

    # model (seeded: the score head and LoRA's A matrices are random)
    set_seed(cell.seed)
    model = ttype.load_model(spec, model_dir, torch.float32, device)
    model = methods.apply_method(model, method, params, field_path=f"methods.{study.methods.index(method)}",
                                 task_type=ttype.peft_task_type)  # fmt: skip
    trainable, total = artifacts.trainable_parameters(model)
    trainable_bytes = artifacts.trainable_bytes(model)
    saved = ctx.scratch("train", cell.name + "-final")
    # PiSSA/OLoRA: the adapter as initialised, before any step (a resumed run rebuilds the same one: the SVD / QR of
    # the base is deterministic), for the conversion at the end
    initial_adapter = methods.save_initial_adapter(model, method, saved / "initial_adapter")

    # resume from the store, then train
    output_dir = ctx.scratch("train", cell.name)
    checkpoints = checkpoint_store(ctx, cell.name)
    resume = checkpoints.restore(output_dir)
    if resume is not None:
        log(f"resume from step={resume.name.rsplit('-', 1)[1]}", checkpoint=str(resume))
    if ctx.committed("cells", cell.name):  # another writer (a second pod) committed while this one prepared
        log("committed by another writer meanwhile, skipping", bundle=f"cells/{cell.name}")
        return
    sync = training.StoreCheckpoints(checkpoints, keep=2)
    plan = training.Plan.from_params(params, seed=cell.seed)
    result = training.fit(model, train_features, dev_features, training=study.training, plan=plan, pad_id=pad_id,
                          output_dir=output_dir, device=device, log=log, callbacks=[sync], resume_from=resume, task=spec,
                          tokenizer=tokenizer)  # fmt: skip
    memory, memory_kind = training.peak_memory(device)

    # evaluate the best model with the shared code
    bf16 = training.use_bf16(study.training, device)
    dev_eval = training.evaluate(result.model, tokenizer, dev_rows, spec, study.training.eval_batch, bf16=bf16)
    val_eval = training.evaluate(result.model, tokenizer, validation_rows, spec, study.training.eval_batch, bf16=bf16)
    extra_evals = {s: training.evaluate(result.model, tokenizer, rows, spec, study.training.eval_batch, bf16=bf16)
                   for s, rows in extra_rows.items()}  # fmt: skip
    # the type's reported numbers given dev (extractive QA: the no-answer threshold chosen on dev; others: unchanged)
    val_eval = ttype.reported_eval(spec, dev_eval, val_eval)
    extra_evals = {s: ttype.reported_eval(spec, dev_eval, e) for s, e in extra_evals.items()}
    log.debug("evaluated", best_step=result.best_step, dev_loss=dev_eval.loss, validation_loss=val_eval.loss,
              **{f"validation_{k}": v for k, v in val_eval.values.items()})  # fmt: skip

    metrics = {
        "cell": cell.name,
        "task": cell.task,
        "method": cell.method,
        "method_kind": method.kind,
        "seed": cell.seed,
        "validation": val_eval.metrics(),
        **{s: e.metrics() for s, e in extra_evals.items()},  # mnli: validation_mismatched beside matched
        "dev": dev_eval.metrics(),
        "selection_metric": task.selection_metric,
        "train_seconds": round(result.train_seconds, 3),
        "step_seconds": round(result.step_seconds, 3),
        "checkpoint_sync_seconds": round(sync.seconds, 3),
        "train_tokens": result.tokens,
        "tokens_per_second": round(result.tokens_per_second, 1),
        "peak_memory_bytes": memory,
        "peak_memory_kind": memory_kind,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_bytes": trainable_bytes,
        "params": {
            **params,
            "micro_batch": result.schedule["micro_batch"],
            "grad_accum": result.schedule["grad_accum"],
        },
        "params_source": source,
        "best_step": result.best_step,
        "global_step": result.global_step,
        "max_steps": result.schedule["max_steps"],
        "resumed_from_step": result.resumed_from_step,
        "device": str(device),
        "bf16": bf16,
        "torch_threads": torch.get_num_threads(),
    }
    history = build_history(result.log_history, schedule=result.schedule, global_step=result.global_step,
                            logging_steps=plan.logging_steps or result.schedule["eval_steps"], best_step=result.best_step,
                            resumed_from_step=result.resumed_from_step, cell=cell.name, task=cell.task,
                            method=cell.method, seed=cell.seed, selection_metric=task.selection_metric)  # fmt: skip
    folder = methods.save_cell_artifact(result.model, method, saved, initial_adapter)
    if (folder / "adapter_config.json").is_file():
        publish_adapter(folder, study.model.name)
    metrics["artifact_bytes"] = artifacts.folder_bytes(folder)  # what the bundle holds under adapter/ or model/
    with ctx.writer(
        "cells", cell.name, phase="train", meta={"best_step": result.best_step, "params_source": source}
    ) as w:
        w.add_dir(folder, prefix=folder.name)
        w.add_json("metrics.json", metrics)
        w.add_json(HISTORY_FILE, history)
        w.add_bytes("predictions.jsonl", "".join(_jsonl(p) for p in val_eval.predictions).encode())
        for s, e in extra_evals.items():
            w.add_bytes(f"predictions_{s}.jsonl", "".join(_jsonl(p) for p in e.predictions).encode())
    checkpoints.delete_all()
    # the local scratch (Trainer checkpoints, the saved copy) is in the commit or superseded by it: a full FT cell of
    # a 135M model leaves ~3 GB here, a grid of them fills a laptop's disk
    shutil.rmtree(output_dir, ignore_errors=True)
    shutil.rmtree(saved, ignore_errors=True)
    log("committed", bundle=f"cells/{cell.name}", **{f"validation_{k}": v for k, v in val_eval.values.items()})


def publish_adapter(folder, model_name: str) -> None:
    """The saved adapter as we publish it: the same study gives the same bytes on any machine. PEFT records the base
    by the path it was loaded from (this machine's staging folder) in adapter_config.json and in the README's model
    card (`base_model:` and its tag): both name the study's model instead. It writes the module lists it keeps as
    sets (target_modules, IA3's feedforward_modules) in set order, which changes from process to process: sorted."""
    config = json.loads((folder / "adapter_config.json").read_text())
    staged = config.get("base_model_name_or_path")
    config["base_model_name_or_path"] = model_name
    for key in ("target_modules", "feedforward_modules", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    readme = folder / "README.md"
    if staged and staged != model_name and readme.is_file():
        readme.write_text(readme.read_text().replace(staged, model_name))


def _jsonl(row: dict) -> str:
    import json

    return json.dumps(row, sort_keys=True) + "\n"
