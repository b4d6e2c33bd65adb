"""Grep-able log lines: `phase=train cell=mrpc-lora-s42 step=120 loss=0.41`.

One function, `log(event, **fields)`, writes a line to stderr. `progress()` wraps an iterable with a bar on a
terminal and plain periodic lines in a pod.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def log(event: str, **fields: Any) -> None:
    """Write `ts=... <fields> event=<event>` as one line to stderr."""
    parts = [f"ts={time.strftime('%H:%M:%S')}"]
    parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    parts.append(f"msg={_fmt(event)}")
    print(" ".join(parts), file=sys.stderr, flush=True)


class Logger:
    """A `log` with fixed context fields, e.g. Logger(phase="train", cell="mrpc-lora-s42")."""

    def __init__(self, **context: Any) -> None:
        self.context = context

    def bind(self, **more: Any) -> Logger:
        return Logger(**{**self.context, **more})

    def __call__(self, event: str, **fields: Any) -> None:
        log(event, **{**self.context, **fields})


def progress(items: Iterable[T], total: int | None, desc: str, logger: Logger, every: int = 10) -> Iterator[T]:
    """Yield items; draw a bar on a TTY, otherwise log `desc i/total` every `every` items and at the end."""
    tty = sys.stderr.isatty()
    start = time.perf_counter()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        if tty and total:
            width = 30
            done = int(width * i / total)
            sys.stderr.write(f"\r{desc} [{'#' * done}{'.' * (width - done)}] {i}/{total}")
            sys.stderr.flush()
        elif i % every == 0:
            logger(desc, done=i, total=total, seconds=round(time.perf_counter() - start, 1))
    if tty and total:
        sys.stderr.write("\n")
    logger(desc + " done", done=i, total=total, seconds=round(time.perf_counter() - start, 1))
