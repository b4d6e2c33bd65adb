"""SIGTERM inside a training loop: the last checkpoint, then stop (lorascope.termination explains the whole path).

`SigtermCheckpoint` is the last Trainer callback `fit` adds, so at `on_save` the phase's own callbacks (the train
phase's StoreCheckpoints, which commits the checkpoint to the store) have run before it. While a resumable run trains
(checkpoints with optimizer, scheduler and RNG state), SIGTERM is deferred to the end of the optimizer step it arrives
in; then:

  * a checkpoint that fits in the time left is written and synced (control.should_save), and `on_save` stops the
    process with `Terminated` once the phase's callbacks committed it;
  * a step that was about to checkpoint anyway does the same;
  * otherwise `Terminated` at once: the previous checkpoint stays, and the watchdog is not needed.

How long a checkpoint takes is measured on this run's earlier checkpoints (from the step end that asked for it to the
end of its sync); before the first one it is estimated from the trainable state: weights and AdamW's two moments,
4 bytes each, at SAVE_BYTES_PER_SECOND (a conservative write + upload rate, not measured here).
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from lorascope.termination import Terminated, Termination

SAVE_BYTES_PER_SECOND = 50e6
SAFETY = 2.0  # a checkpoint is attempted only when twice its expected time is left


class SigtermCheckpoint(TrainerCallback):
    def __init__(self, termination: Termination, log: Any) -> None:
        self.termination = termination
        self.log = log
        self.active = False  # a resumable run with checkpoints: SIGTERM is deferred to a step end
        self.state_bytes = 0
        self.save_seconds: float | None = None  # the slowest measured checkpoint of this run
        self._save_started: float | None = None
        self._defer: Any = None

    # ------------------------------------------------------------------------------------------ the loop's bounds
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.active = args.save_strategy != "no" and not args.save_only_model
        if model is not None:
            self.state_bytes = 3 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.active:
            self._defer = self.termination.deferred()
            self._defer.__enter__()
            if self.termination.requested:  # the signal came before the loop: nothing to save yet
                self.on_train_end(args, state, control)
                raise Terminated(f"SIGTERM before training started (step {state.global_step})")

    def on_train_end(self, args, state, control, **kwargs):
        if self._defer is not None:
            self._defer.__exit__(None, None, None)
            self._defer = None

    # ------------------------------------------------------------------------------------------ the decision
    def expected_save_seconds(self) -> float:
        return self.save_seconds if self.save_seconds is not None else self.state_bytes / SAVE_BYTES_PER_SECOND

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # a periodic checkpoint follows this step: time it
            self._save_started = time.monotonic()
        if not (self.active and self.termination.requested):
            return
        step = state.global_step
        if control.should_save:
            self.log("SIGTERM: the checkpoint of this step is being written, then stopping", step=step)
            return
        expected, left = self.expected_save_seconds(), self.termination.remaining()
        if expected * SAFETY <= left:
            control.should_save = True
            self._save_started = time.monotonic()
            self.log("SIGTERM: writing a last checkpoint, then stopping", step=step,
                     expected_seconds=round(expected, 2), seconds_left=round(left, 1))  # fmt: skip
            return
        self.on_train_end(args, state, control)
        raise Terminated(f"SIGTERM at step {step}: a checkpoint takes ~{expected:.0f} s and {left:.0f} s are left: "
                         "stopping without one; the last committed checkpoint stays")  # fmt: skip

    def on_save(self, args, state, control, **kwargs):
        if self._save_started is not None:
            took = time.monotonic() - self._save_started
            self.save_seconds = max(self.save_seconds or 0.0, took)
            self._save_started = None
        if self.active and self.termination.requested:
            self.on_train_end(args, state, control)
            raise Terminated(f"SIGTERM: checkpoint of step {state.global_step} written and synced; stopping")
