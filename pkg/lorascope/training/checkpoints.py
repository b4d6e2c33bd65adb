"""Trainer checkpoints: reading a local checkpoint folder (its state, whether training had finished there, its
weights) and syncing checkpoints with the store.

In the store a checkpoint is the committed bundle `checkpoints/<cell>/checkpoint-<step>` (so a half-uploaded one is
invisible). `CheckpointStore` is one cell's checkpoints there, built by the train phase: `StoreCheckpoints` (the
Trainer's callback) commits each one through it as the Trainer writes it and prunes older ones (the last `keep` and
the best stay); `CheckpointStore.restore` brings the latest intact one (and the best one it refers to) back for a
resume. The train phase deletes a cell's checkpoints once the cell is committed; the training history they hold
(trainer_state.json's log_history) is kept in the cell bundle's history.json (`lorascope.history`).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from lorascope.errors import IntegrityError

if TYPE_CHECKING:
    import torch

    from lorascope.log import Logger
    from lorascope.store import Bundle, Store

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


@dataclass
class CheckpointStore:
    """One cell's checkpoints in the store: committed bundles `<prefix>/checkpoint-<step>`. The train phase builds it
    (it knows the store, the run and the cell) and hands it to the Trainer's callback (`StoreCheckpoints`) and to the
    resume, so training code sees this object, never the phase context or where in the store the checkpoints live."""

    store: Store
    prefix: str  # runs/<run>/checkpoints/<cell>
    study_hash: str
    log: Logger
    phase: str = "train"

    def upload(self, folder: Path, meta: dict[str, Any]) -> None:
        """Commit a Trainer checkpoint folder as the bundle `<prefix>/<folder name>`."""
        key = f"{self.prefix}/{folder.name}"
        with self.store.writer(key, phase=self.phase, study_hash=self.study_hash, meta=meta) as w:
            w.add_dir(folder)

    def committed(self) -> dict[int, Bundle]:
        """step -> committed checkpoint bundle."""
        out = {}
        for b in self.store.bundles(self.prefix + "/"):
            step = checkpoint_step(b.key.rsplit("/", 1)[1])
            if step is not None:
                out[step] = b
        return dict(sorted(out.items()))

    def prune(self, keep: int, best_step: int | None) -> list[int]:
        """Delete checkpoint folders older than the newest `keep` committed ones, except the best. The commit goes
        first, so a reader never sees a commit whose files are gone."""
        base = self.prefix
        steps = sorted(
            {
                s
                for o in self.store.list_objects(base + "/")
                if (s := checkpoint_step(o.key[len(base) + 1 :].split("/", 1)[0])) is not None
            }
        )
        committed = list(self.committed())
        kept = set(committed[-keep:]) | ({best_step} if best_step is not None else set())
        if not committed:
            return []
        newest_kept = max(committed[-keep:])
        removed = []
        for s in steps:
            if s in kept or s > newest_kept:  # a newer folder may be an upload in progress
                continue
            self.store.delete_tree(f"{base}/{CHECKPOINT_PREFIX}-{s}")  # the commit first
            removed.append(s)
        return removed

    def restore(self, output_dir: Path) -> Path | None:
        """Download the latest intact committed checkpoint (and the best one it refers to) into a fresh `output_dir`;
        returns the folder to resume from, or None when the store has no usable checkpoint. A checkpoint whose files
        fail their checksum (or whose trainer_state.json is unreadable) is skipped with a log line and the next older
        one is tried, so one damaged upload costs one checkpoint interval, not the cell."""
        bundles = self.committed()
        shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.mkdir(parents=True)

        def fetch(bundle: Any, dest: Path) -> None:
            corrupt = bundle.download(dest, verify=True, workers=self.store.workers)
            if corrupt:
                raise IntegrityError(f"checkpoint {bundle.key}: checksum mismatch in {corrupt}")

        for step in sorted(bundles, reverse=True):
            dest = output_dir / f"{CHECKPOINT_PREFIX}-{step}"
            try:
                fetch(bundles[step], dest)
                state_file = dest / "trainer_state.json"
                state = json.loads(state_file.read_text())
            except (IntegrityError, OSError, ValueError) as exc:
                self.log.warning("checkpoint unusable, trying the previous one", step=step, error=str(exc)[:200])
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
                    self.log.warning("best checkpoint unusable; the last one will be kept", best_step=best,
                                     error=str(exc)[:200])  # fmt: skip
                    shutil.rmtree(best_dir, ignore_errors=True)
                    best_dir = None
            # the recorded path is the old machine's; point it at the local copy (the Trainer ignores a missing path)
            state["best_model_checkpoint"] = str(best_dir) if best_dir else None
            state_file.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
            return dest
        return None

    def delete_all(self) -> None:
        """Remove every checkpoint of the cell (once the cell itself is committed)."""
        self.store.delete_tree(self.prefix)


class StoreCheckpoints(TrainerCallback):
    """After every Trainer save, commit the checkpoint folder to the store (`CheckpointStore.upload`: a committed
    bundle, so a half-uploaded checkpoint is invisible), then delete older checkpoint bundles: the last `keep` and the
    best one (needed by `load_best_model_at_end` after a resume) stay."""

    def __init__(self, checkpoints: CheckpointStore, keep: int = 2) -> None:
        self.checkpoints = checkpoints
        self.keep = keep
        self.seconds = 0.0

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}-{step}"
        t0 = time.perf_counter()
        meta = {"step": step, "best_step": state.best_global_step, "epoch": state.epoch}
        self.checkpoints.upload(folder, meta)
        removed = self.checkpoints.prune(keep=self.keep, best_step=state.best_global_step)
        self.seconds += time.perf_counter() - t0
        self.checkpoints.log.debug("checkpoint synced", step=step, best_step=state.best_global_step,
                                   removed=",".join(map(str, removed)) or None,
                                   seconds=round(time.perf_counter() - t0, 2))  # fmt: skip
