"""extract: hidden states of every layer, pooled per example, for the base model and every trained cell.

Indexes (documented order, `units(study)`):
  0 .. T-1       `base/<task>`: the base model on each of the study's T tasks, in the study's task order;
  T .. T+C-1     the C grid cells in grid order (task-major, then method, then seed), each on its own task.
Bundle `reps/<model>/<task>/` (model = `base` or the cell name):
  reps.safetensors   float32 [L, n, d] per pooling: `mean` always, the family's classification position (`last` for
                     decoders, `first` for encoders) always, and any other pooling the study lists; int64 `idx` [n]
  layers.json        the L labels, the example ids, sizes and how the states were made
  forgetting.json    decoders: the base model's LM loss on the held-out text through this model's backbone with the
                     base LM head (lorascope/heldout_loss.py); encoders: loss null and why. Absent with forgetting.enabled false
Commit meta: model, task, n, layers, hidden size, device, dtype, seconds, hardware, package versions.

Recipe
  1. skip a committed bundle;
  2. the extraction set: `extraction.examples` examples of `extraction.split` (GLUE validation, the reported split),
     a fixed-seed subset (`data.subsample` with `extraction.seed`: the same rows for every model, kept in source
     order; an example is the task type's: a generation task's MR with all its references), all of them when the
     split is smaller. Tokenized exactly as in training (the task type's
     `extraction_features`: classification its `encode`; the task's max_length);
  3. the model: the base model with the task type's head (`TaskType.load_model`, classification
     `models.loading.load_classifier`, on the staged model; its random head is never read), or the cell's model through `models.artifacts.load_cell_model`: a full cell's own weights, or the
     base with the cell's LoRA adapter attached by PEFT and NOT merged. Unmerged, the forward is exactly what training evaluated
     (W x + scale B A x); merging would compute the same function with different rounding and gains nothing here.
     float32 on every device, so the drift we measure is not bf16 rounding;
  4. batches of `extraction.batch_size` in length order, right-padded to their longest member (dynamic padding), one
     forward with `output_hidden_states=True` under `torch.inference_mode()`. Entry 0 of `hidden_states` is the
     embedding output (`embeddings`), entry i (1..L-2) the output of decoder block i (`layer_<i>`), and the last entry
     is after the final norm (`final_norm`): transformers 5.23 replaces the last decoder block's raw output with the
     model's `last_hidden_state` (`capture_outputs(tie_last_hidden_states=True)`), pinned by a test. Encoders
     (RoBERTa, BERT) have no final norm after the blocks (each post-LN block ends in its own LayerNorm): entry 0 is
     `embeddings` (after the embedding LayerNorm), entry i (1..L-1) the output of block i, `layer_<i>`, the last one
     included (`layer_<L-1>` is the `last_hidden_state` the head reads);
  5. pool each entry: `models.pooling.masked_mean` over the positions the task type pools (`pool_mask`, else the
     attended positions: classification the whole input, QA question and context, generation the prompt) with the
     first one (BOS, `<s>`, `[CLS]`) left out (padding never counts); `last`, the state at the last attended token (`models.pooling.last_token_index`,
     where a decoder classifies); `first`, the state at position 0 (`<s>`, where an encoder's head reads). Which poolings are
     allowed on which family: preflight.check_family (`first` on a decoder is the BOS state, the same for every
     input, and refused);
  6. forgetting (`study.forgetting`): the texts and the base LM head are read before the model loads
     (`heldout_loss.plan`), the loss is measured on the loaded model (`heldout_loss.unit_result`);
  7. commit.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from lorascope.models.families import family_of
from lorascope.phases import BASE, PhaseContext, get_phase
from lorascope.phases import extract_units as units
from lorascope.study import Study
from lorascope.threads import configure_threads

if TYPE_CHECKING:
    import torch

REPS_FILE = "reps.safetensors"
LAYERS_FILE = "layers.json"
POOLINGS = ("mean", "last", "first")
POOLING_TEXT = {
    "mean": "masked mean over attended positions, the first (BOS / <s>) excluded",
    "last": "state at the last attended token",
    "first": "state at the first token (<s> / [CLS], where an encoder's head reads)",
}


# ------------------------------------------------------------------------------------------------ indexes
def unit(study: Study, index: int) -> tuple[str, str]:
    """index -> (model, task) (the order is the phase's, lorascope.phases.extract_units)."""
    get_phase("extract").index(study, index)  # ConfigError naming the range
    return units(study)[index]


def layer_labels(n_entries: int, encoder: bool = False) -> list[str]:
    """Labels of the `hidden_states` entries. Decoders: `embeddings`, `layer_1` .. `layer_<L-2>`, `final_norm`.
    Encoders (no norm after the last block): `embeddings`, `layer_1` .. `layer_<L-1>`."""
    if n_entries < 2:
        raise ValueError(f"expected at least 2 hidden-state entries, got {n_entries}")
    if encoder:
        return ["embeddings", *[f"layer_{i}" for i in range(1, n_entries)]]
    return ["embeddings", *[f"layer_{i}" for i in range(1, n_entries - 1)], "final_norm"]


def stored_poolings(study: Study, encoder: bool) -> list[str]:
    """What a reps bundle holds: `mean`, the family's classification position, and whatever else the study lists."""
    wanted = {"mean", "first" if encoder else "last", *study.extraction.pooling}
    return [p for p in POOLINGS if p in wanted]


def extraction_rows(ctx: PhaseContext, task: str) -> list[dict]:
    """The fixed extraction set of a task: the same rows for every model."""
    from lorascope import data

    cfg = ctx.study.extraction
    rows = data.read_split(ctx.stage_dir(), task, cfg.split)
    return data.subsample(rows, cfg.examples, cfg.seed, data.example_key(ctx.study.task(task).spec))


# ------------------------------------------------------------------------------------------------ the states
def hidden_states(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """All hidden-state entries of one forward (embedding output first, post-final-norm last)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return tuple(out.hidden_states)


def pooled_states(
    model, features: list[dict], batch_size: int, pad_id: int, device: Any, pad_to: int | None = None,
    poolings: tuple[str, ...] | list[str] = ("mean", "last"),
) -> tuple[torch.Tensor, ...]:
    """One float32 [L, n, d] tensor per entry of `poolings` (`mean`, `last`, `first`), in that order, rows in the
    order of `features`.

    Batches are formed in length order (longest first) and right-padded to their longest member, or to `pad_to`;
    the pooled values do not depend on either (masked pooling; right padding with causal attention for decoders, the
    attention mask for encoders). The positions pooled are the features' `pool_mask` when they carry one (the task
    type's choice: generation pools the prompt), else the attention mask (the whole input); `last` is the last of
    them, `first` position 0."""
    import torch

    from lorascope import data
    from lorascope.models import pooling

    if not features:
        raise ValueError("pooled_states: no examples")
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown or not poolings:
        raise ValueError(f"pooled_states: poolings {list(poolings)}; known: {list(POOLINGS)}")
    order = sorted(range(len(features)), key=lambda i: (-len(features[i]["input_ids"]), i))
    out: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = data.collate([features[i] for i in rows], pad_id, pad_to=pad_to)
            batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "pool_mask")}
            states = hidden_states(model, batch)
            mask = batch.get("pool_mask", batch["attention_mask"])
            arange = torch.arange(mask.shape[0], device=mask.device)
            positions = {"last": pooling.last_token_index(mask), "first": torch.zeros_like(arange)}
            if not out:
                shape = (len(states), len(features), states[0].shape[-1])
                out = {p: torch.empty(shape, dtype=torch.float32) for p in poolings}
            where = torch.tensor(rows, dtype=torch.long)
            for layer, h in enumerate(states):
                for p in poolings:
                    pooled = pooling.masked_mean(h, mask, exclude_bos=True) if p == "mean" else h[arange, positions[p]]
                    out[p][layer, where] = pooled.float().cpu()
    return tuple(out[p] for p in poolings)


def load_model(ctx: PhaseContext, model_name: str, task: str, device: Any):
    """(model, tokenizer) in float32 eval mode: the base model with the task type's head (`TaskType.load_model`), or a
    cell (`model_name`, trained on `task`) via `models.artifacts.load_cell_model` on the committed cell and stage
    bundles' folders."""
    import torch

    from lorascope.models import artifacts, loading

    model_dir = ctx.stage_dir() / "model"
    spec = ctx.study.task(task).spec
    load = lambda folder, dtype, dev: spec.task_type.load_model(spec, folder, dtype, dev)  # noqa: E731
    if model_name == BASE:
        with torch.random.fork_rng(devices=[]):  # the unused head draws from the global RNG
            torch.manual_seed(0)
            model = load(model_dir, torch.float32, device)
        model.eval()
        return model, loading.load_tokenizer(model_dir)
    return artifacts.load_cell_model(ctx.cell_dir(model_name), model_dir, spec.num_labels, device, torch.float32,
                                     load=load)  # fmt: skip


# ------------------------------------------------------------------------------------------------ the phase
def run(ctx: PhaseContext, index: int) -> None:
    study = ctx.study
    model_name, task_name = unit(study, index)
    log = ctx.log.bind(model=model_name, task=task_name)
    ctx.require("stage", why="run the stage phase first: it fetches the model and the data")
    if model_name != BASE:
        ctx.require("cells", model_name, why="run the train phase for this cell first")
    t0 = time.perf_counter()

    import torch
    from safetensors.torch import save_file

    from lorascope import heldout_loss, tensorio
    from lorascope.models import loading
    from lorascope.reporting import provenance

    configure_threads(ctx.env)  # lorascope.threads: no training import (its Trainer costs ~10 s a process)
    device = loading.pick_device(ctx.env)
    spec = study.task(task_name).spec
    rows = extraction_rows(ctx, task_name)
    fplan = heldout_loss.plan(study.forgetting, ctx.stage_dir() / "model")  # ConfigError before the model loads
    model, tokenizer = load_model(ctx, model_name, task_name, device)
    family = family_of(model)
    features = spec.task_type.extraction_features(spec, tokenizer, rows, spec.max_length)
    t_load = time.perf_counter() - t0
    poolings = stored_poolings(study, family.encoder)
    pooled = dict(zip(poolings, pooled_states(model, features, study.extraction.batch_size, int(tokenizer.pad_token_id),
                                              device, poolings=poolings), strict=True))  # fmt: skip
    mean = pooled["mean"]
    t_forward = time.perf_counter() - t0 - t_load
    forgot = heldout_loss.unit_result(fplan, model, tokenizer, study.forgetting, device) if fplan else None
    t_forgetting = time.perf_counter() - t0 - t_load - t_forward
    labels = layer_labels(mean.shape[0], encoder=family.encoder)
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if n_layers is not None and len(labels) != n_layers + 1:
        raise RuntimeError(f"{model_name}: {len(labels)} hidden-state entries for {n_layers} blocks")
    ids = [int(f["idx"]) for f in features]
    tokens = sum(len(f["input_ids"]) for f in features)

    out = ctx.scratch("extract", model_name, task_name)
    save_file({**{p: t.contiguous() for p, t in pooled.items()}, "idx": torch.tensor(ids, dtype=torch.int64)},
              str(out / REPS_FILE), metadata={"model": model_name, "task": task_name})  # fmt: skip
    tensorio.sort_metadata(out / REPS_FILE)  # the same reps, the same bytes (safetensors orders metadata at random)
    layers = {
        "labels": labels,
        "poolings": {p: POOLING_TEXT[p] for p in poolings},
        "family": family.name,
        "encoder": family.encoder,
        "idx": ids,
        "n": len(ids),
        "hidden_size": int(mean.shape[-1]),
        "split": study.extraction.split,
        "selection": f"data.subsample(rows, {study.extraction.examples}, seed={study.extraction.seed}) in source order",
        "dtype": "float32",
        "model": model_name,
        "task": task_name,
    }
    (out / LAYERS_FILE).write_text(json.dumps(layers, indent=1) + "\n")
    if forgot is not None:
        (out / heldout_loss.FILE).write_text(json.dumps(forgot, indent=1) + "\n")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    meta = {
        "model": model_name, "task": task_name, "n": len(ids), "layers": len(labels), "hidden_size": int(mean.shape[-1]),
        "device": str(device), "dtype": "float32", "batch_size": study.extraction.batch_size, "tokens": tokens,
        "load_seconds": round(t_load, 3), "forward_seconds": round(t_forward, 3),
        "examples_per_second": round(len(ids) / t_forward, 2) if t_forward > 0 else None,
        "torch_threads": torch.get_num_threads(), "forgetting_loss_nats_per_token": forgot and forgot["loss_nats_per_token"],
        "forgetting_seconds": round(t_forgetting, 3),
        "hardware": provenance.hardware(device=str(device), gpu_name=gpu), "versions": provenance.package_versions(),
    }  # fmt: skip
    with ctx.writer("reps", model_name, task_name, phase="extract", meta=meta) as w:
        w.add_file(REPS_FILE, out / REPS_FILE)
        w.add_file(LAYERS_FILE, out / LAYERS_FILE)
        if forgot is not None:
            w.add_file(heldout_loss.FILE, out / heldout_loss.FILE)
    log("committed", bundle=f"reps/{model_name}/{task_name}", n=len(ids), layers=len(labels),
        seconds=round(time.perf_counter() - t0, 2), examples_per_second=meta["examples_per_second"],
        forgetting_loss=meta["forgetting_loss_nats_per_token"])  # fmt: skip
