"""Thread counts, in one place: what LORASCOPE_TORCH_THREADS means for torch in this process, and what a child
process of `lorascope run --jobs N` is given. (A pod gets the same variables from its CPU request: k8s/render.)"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from lorascope.errors import ConfigError

THREADS_ENV = "LORASCOPE_TORCH_THREADS"


def torch_threads(env: Mapping[str, str]) -> int | None:
    """LORASCOPE_TORCH_THREADS as a count (at least 1); None when unset; a ConfigError (exit 2) when not an integer."""
    raw = env.get(THREADS_ENV)
    if not raw:
        return None
    try:
        return max(1, int(raw))
    except ValueError:
        raise ConfigError(f"{THREADS_ENV}={raw!r} is not an integer") from None


def configure_threads(env: Mapping[str, str], default: int | None = None) -> None:
    """torch's intra-op threads: LORASCOPE_TORCH_THREADS, else `default` (None: leave torch's own choice)."""
    n = torch_threads(env) or default
    if n:
        import torch

        torch.set_num_threads(n)


@contextmanager
def kept_threads() -> Iterator[None]:
    """torch's thread count as it was before the block (the local runner may run later phases in this process)."""
    import torch

    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_per_job(env: Mapping[str, str], jobs: int) -> int:
    """Threads for each of `jobs` processes sharing this machine: LORASCOPE_TORCH_THREADS, else the cores / jobs."""
    return torch_threads(env) or max(1, (os.cpu_count() or 1) // max(1, jobs))


def child_env(threads: int) -> dict[str, str]:
    """The variables a child process gets so that torch, OpenMP and MKL all use `threads` threads."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), THREADS_ENV: str(threads)}
