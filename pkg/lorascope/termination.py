"""SIGTERM: stop within the grace period, with the last checkpoint in the store when there is time for it.

The kubelet sends SIGTERM when a pod is evicted, preempted, drained or its spot node shuts down, and SIGKILL
`terminationGracePeriodSeconds` later. In the images tini is PID 1 and forwards the signal (images/phase/Dockerfile);
lorascope then:

  * outside a training loop: raises `Terminated` at once. The phase unwinds; a bundle whose `_COMMIT.json` was not
    written does not exist, so nothing half-done is left (the commit protocol).
  * inside a training loop (training/sigterm.py, a Trainer callback): finishes the optimizer step it is in, writes a
    checkpoint and syncs it to the store when that fits in the time left (measured on the loop's earlier checkpoints,
    else estimated from the trainable state's size), then raises `Terminated`. The next pod of the index resumes from
    that checkpoint (training.restore_checkpoint), so a preemption costs the steps since the signal, not a checkpoint
    interval. When it does not fit (full fine-tuning of a 1.1B model writes ~13 GB), it stops without one and the
    previous checkpoint stays.
  * in any case: a watchdog ends the process `budget` seconds after the signal (exit 143), so it never outlives the
    grace period half-way through an upload; a half-uploaded checkpoint has no commit and is ignored.

The exit code is 143 (128 + SIGTERM), what a shell reports for a process killed by SIGTERM; the Jobs'
podFailurePolicy ignores the pod when it carries the DisruptionTarget condition (preemption, eviction).

The budget comes from LORASCOPE_STOP_SECONDS, which the rendered pods set (k8s/render.py: STOP_BUDGET_SECONDS, under
GKE's 15 s for non-system pods at a node shutdown); the CLI reads it once and installs the handler around the command.
A signal handler is process-wide by nature, so the one `Termination` of the process is reachable through `current()`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

STOP_BUDGET_ENV = "LORASCOPE_STOP_SECONDS"
DEFAULT_BUDGET_SECONDS = 20.0
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM). A BaseException, like KeyboardInterrupt: no `except Exception` on the
    way up swallows it."""

    exit_code = EXIT_TERMINATED


@dataclass
class Termination:
    budget_seconds: float = DEFAULT_BUDGET_SECONDS
    clock: Callable[[], float] = time.monotonic
    exit: Callable[[int], None] = os._exit  # the watchdog's way out: no cleanup can outlast the grace period
    requested_at: float | None = None
    deferring: int = 0  # > 0 while a loop that checkpoints on request runs (training)
    _watchdog: threading.Thread | None = field(default=None, repr=False)

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def remaining(self) -> float:
        """Seconds left of the budget since the signal (the whole budget before one)."""
        if self.requested_at is None:
            return self.budget_seconds
        return self.budget_seconds - (self.clock() - self.requested_at)

    def request(self) -> None:
        """What SIGTERM does: note the time, start the watchdog, and unwind now unless a loop takes care of it."""
        if self.requested_at is not None:
            return  # a second SIGTERM changes nothing: the first one's deadline holds
        self.requested_at = self.clock()
        print(f"lorascope: SIGTERM: stopping within {self.budget_seconds:g} s", file=sys.stderr, flush=True)
        self._watchdog = threading.Thread(target=self._expire, name="sigterm-watchdog", daemon=True)
        self._watchdog.start()
        if not self.deferring:
            raise Terminated("SIGTERM")

    def _expire(self) -> None:
        time.sleep(max(0.0, self.remaining()))
        print(f"lorascope: SIGTERM: {self.budget_seconds:g} s passed, exiting now", file=sys.stderr, flush=True)
        self.exit(EXIT_TERMINATED)

    def _handler(self, signum: int, frame: object) -> None:
        self.request()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, SIGTERM only marks the request: the loop checks `requested` at its next safe point."""
        self.deferring += 1
        try:
            yield
        finally:
            self.deferring -= 1


_current: Termination | None = None


def current() -> Termination | None:
    """The installed handler's state (None outside `installed`, e.g. in library use without the CLI)."""
    return _current


def budget_from(env: dict[str, str] | None) -> float:
    raw = (env or {}).get(STOP_BUDGET_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_BUDGET_SECONDS
    except ValueError:
        return DEFAULT_BUDGET_SECONDS


@contextmanager
def installed(termination: Termination) -> Iterator[Termination]:
    """SIGTERM handled by `termination` inside the block (main thread only, as `signal.signal` requires); the previous
    handler is back afterwards, so an in-process caller (the tests) keeps its own."""
    global _current
    if threading.current_thread() is not threading.main_thread():
        yield termination
        return
    previous = signal.signal(signal.SIGTERM, termination._handler)
    _current = termination
    try:
        yield termination
    finally:
        signal.signal(signal.SIGTERM, previous)
        _current = None
