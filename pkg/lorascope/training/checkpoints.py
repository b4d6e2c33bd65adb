"""Trainer checkpoints: reading a local checkpoint folder (its state, whether training had finished there, its
weights) and syncing checkpoints with the store.

In the store a checkpoint is the committed bundle `checkpoints/<cell>/checkpoint-<step>` (so a half-uploaded one is
invisible). `StoreCheckpoints` uploads each one as the Trainer writes it and prunes older ones (the last `keep` and
the best stay); `restore_checkpoint` brings the latest intact one (and the best one it refers to) back for a resume.
The train phase deletes a cell's checkpoints once the cell is committed; the training history they hold
(trainer_state.json's log_history) is kept in the cell bundle's history.json (`lorascope.history`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from lorascope.errors import IntegrityError

if TYPE_CHECKING:
    import torch

    from lorascope.phases import PhaseContext

CHECKPOINT_PREFIX = "checkpoint"


def checkpoint_state(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "trainer_state.json").read_text())


def training_finished(state: Mapping[str, Any]) -> bool:
    """Whether a checkpoint was written when training stopped (early stopping or the last step): resuming from it
    must not train any further (the Trainer would reset its stop flag and run on)."""
    control = state.get("stateful_callbacks", {}).get("TrainerControl", {}).get("args", {})
    return bool(control.get("should_training_stop")) or state["global_step"] >= state.get("max_steps", math.inf)


def load_checkpoint_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a Trainer checkpoint's weights into `model`: a PEFT adapter (LoRA, with the score head) or the whole
    model (full fine-tuning), as the Trainer itself loads its best checkpoint."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        missing: list[str] = []
    else:
        result = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        unexpected, missing = list(result.unexpected_keys), list(result.missing_keys)
    if unexpected or missing:
        raise IntegrityError(
            f"checkpoint {folder}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


def checkpoint_step(name: str) -> int | None:
    prefix = CHECKPOINT_PREFIX + "-"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return None


class StoreCheckpoints(TrainerCallback):
    """After every Trainer save, upload the checkpoint folder as the bundle `checkpoints/<cell>/checkpoint-<step>`
    (a committed bundle, so a half-uploaded checkpoint is invisible), then delete older checkpoint bundles: the
    last `keep` and the best one (needed by `load_best_model_at_end` after a resume) stay."""

    def __init__(self, ctx: PhaseContext, cell: str, keep: int = 2) -> None:
        self.ctx = ctx
        self.cell = cell
        self.keep = keep
        self.seconds = 0.0

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}-{step}"
        t0 = time.perf_counter()
        meta = {"step": step, "best_step": state.best_global_step, "epoch": state.epoch}
        with self.ctx.writer("checkpoints", self.cell, folder.name, phase="train", meta=meta) as w:
            w.add_dir(folder)
        removed = prune_checkpoints(self.ctx, self.cell, keep=self.keep, best_step=state.best_global_step)
        self.seconds += time.perf_counter() - t0
        self.ctx.log.debug("checkpoint synced", step=step, best_step=state.best_global_step, removed=",".join(map(str, removed)) or None,
                     seconds=round(time.perf_counter() - t0, 2))  # fmt: skip


def committed_checkpoints(ctx: PhaseContext, cell: str) -> dict[int, Any]:
    """step -> committed checkpoint bundle of a cell."""
    out = {}
    for b in ctx.store.bundles(ctx.key("checkpoints", cell) + "/"):
        step = checkpoint_step(b.key.rsplit("/", 1)[1])
        if step is not None:
            out[step] = b
    return dict(sorted(out.items()))


def prune_checkpoints(ctx: PhaseContext, cell: str, keep: int, best_step: int | None) -> list[int]:
    """Delete checkpoint folders older than the newest `keep` committed ones, except the best. The commit goes
    first, so a reader never sees a commit whose files are gone."""
    base = ctx.key("checkpoints", cell)
    steps = sorted(
        {
            s
            for o in ctx.store.backend.list(base + "/")
            if (s := checkpoint_step(o.key[len(base) + 1 :].split("/", 1)[0])) is not None
        }
    )
    committed = list(committed_checkpoints(ctx, cell))
    kept = set(committed[-keep:]) | ({best_step} if best_step is not None else set())
    if not committed:
        return []
    newest_kept = max(committed[-keep:])
    removed = []
    for s in steps:
        if s in kept or s > newest_kept:  # a newer folder may be an upload in progress
            continue
        key = f"{base}/{CHECKPOINT_PREFIX}-{s}"
        ctx.store.backend.delete_prefix(f"{key}/_COMMIT.json")
        ctx.store.backend.delete_prefix(f"{key}/")
        removed.append(s)
    return removed


def restore_checkpoint(ctx: PhaseContext, cell: str, output_dir: Path) -> Path | None:
    """Download the latest intact committed checkpoint of `cell` (and the best one it refers to) into a fresh
    `output_dir`; returns the folder to resume from, or None when the store has no usable checkpoint. A checkpoint
    whose files fail their checksum (or whose trainer_state.json is unreadable) is skipped with a log line and the
    next older one is tried, so one damaged upload costs one checkpoint interval, not the cell."""
    bundles = committed_checkpoints(ctx, cell)
    shutil.rmtree(output_dir, ignore_errors=True)
    output_dir.mkdir(parents=True)

    def fetch(bundle: Any, dest: Path) -> None:
        corrupt = bundle.download(dest, verify=True, workers=ctx.store.workers)
        if corrupt:
            raise IntegrityError(f"checkpoint {bundle.key}: checksum mismatch in {corrupt}")

    for step in sorted(bundles, reverse=True):
        dest = output_dir / f"{CHECKPOINT_PREFIX}-{step}"
        try:
            fetch(bundles[step], dest)
            state_file = dest / "trainer_state.json"
            state = json.loads(state_file.read_text())
        except (IntegrityError, OSError, ValueError) as exc:
            ctx.log.warning("checkpoint unusable, trying the previous one", step=step, error=str(exc)[:200])
            shutil.rmtree(dest, ignore_errors=True)
            continue
        best = state.get("best_global_step")
        best_dir = output_dir / f"{CHECKPOINT_PREFIX}-{best}" if best else None
        if best and best != step:
            try:
                if best not in bundles:
                    raise IntegrityError("not in the store")
                fetch(bundles[best], best_dir)
            except IntegrityError as exc:
                ctx.log.warning("best checkpoint unusable; the last one will be kept", best_step=best, error=str(exc)[:200])
                shutil.rmtree(best_dir, ignore_errors=True)
                best_dir = None
        # the recorded path is the old machine's; point it at the local copy (the Trainer ignores a missing path)
        state["best_model_checkpoint"] = str(best_dir) if best_dir else None
        state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        return dest
    return None
