"""Phases: each is a function `(study, store, index) -> bundle`, called the same way by the local runner and by a
Kubernetes Job (`lorascope <phase> --index I`).

A phase module `lorascope/phases/<name>.py` defines `PHASE = Phase(...)`:
  * `size(study)`     -> how many indexes the phase fans out to (the Indexed Job's completions)
  * `bundles(study)`  -> the bundle keys (relative to the run) the phase commits when complete; `status` and `pull`
                         use them to say what is missing
  * `run(ctx, index)` -> do the one thing for that index and commit its bundle; skip (and say so) when the bundle
                         is already committed
  * `unit(study, i)`  -> a short name for index i, for logs and status tables
  * `interpreter(study, i, env)` (optional) -> the Python that must run index i when it is not this one (the bench
                         phase's vllm index runs in the vLLM environment, .venv-vllm); None = this process
Modules are imported only when the phase is used, so `lorascope drift` never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.errors import ConfigError
from lorascope.log import Logger

if TYPE_CHECKING:
    from lorascope.store import Bundle, BundleWriter, Store
    from lorascope.study import Study

PHASE_ORDER = ["stage", "sanity", "hpo", "train", "extract", "drift", "bench", "report"]


@dataclass
class PhaseContext:
    """Everything a phase may use. Built once by the CLI; phases read no environment themselves."""

    study: Study
    store: Store
    run_id: str
    work_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)  # the few settings the CLI read (device, storage URLs)
    log: Logger = field(default_factory=Logger)

    def key(self, *parts: str) -> str:
        """Store key under this run: ctx.key("cells", "mrpc-lora-s42") -> runs/<run>/cells/mrpc-lora-s42."""
        return "/".join(["runs", self.run_id, *[p.strip("/") for p in parts if p]])

    def bundle(self, *parts: str) -> Bundle | None:
        return self.store.bundle(self.key(*parts))

    def require(self, *parts: str, why: str = "") -> Bundle:
        """The committed bundle, or a ConfigError (exit 2) naming what is missing and which phase makes it."""
        b = self.bundle(*parts)
        if b is None:
            hint = f" ({why})" if why else ""
            raise ConfigError(f"run {self.run_id}: bundle {'/'.join(parts)} is not committed{hint}")
        return b

    def committed(self, *parts: str) -> bool:
        return self.store.committed(self.key(*parts))

    def writer(self, *parts: str, phase: str, meta: dict[str, Any] | None = None) -> BundleWriter:
        return self.store.writer(self.key(*parts), phase=phase, study_hash=self.study.hash, meta=meta)

    def scratch(self, *parts: str) -> Path:
        p = self.work_dir.joinpath(self.run_id, *parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def local(self, bundle: Bundle) -> Path:
        """A local folder holding a committed bundle's files (verified download on S3)."""
        return bundle.local_dir(self.work_dir / "cache")


@dataclass(frozen=True)
class Phase:
    name: str
    size: Callable[[Study], int]
    bundles: Callable[[Study], list[str]]
    run: Callable[[PhaseContext, int], Any]
    unit: Callable[[Study, int], str] = lambda study, i: str(i)
    gpu: bool = False  # whether the Kubernetes Job for this phase asks for a GPU
    description: str = ""
    interpreter: Callable[[Study, int, Mapping[str, str]], str | None] | None = None


def get_phase(name: str) -> Phase:
    if name not in PHASE_ORDER:
        raise ConfigError(f"unknown phase {name!r}; phases are {', '.join(PHASE_ORDER)}")
    try:
        module = importlib.import_module(f"lorascope.phases.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"lorascope.phases.{name}":
            raise ConfigError(f"phase {name!r} is not implemented in this version of lorascope") from None
        raise
    return module.PHASE


def available_phases() -> list[str]:
    here = Path(__file__).parent
    return [p for p in PHASE_ORDER if (here / f"{p}.py").exists()]


def check_index(phase: Phase, study: Study, index: int) -> None:
    n = phase.size(study)
    if not 0 <= index < n:
        raise ConfigError(f"phase {phase.name}: index {index} is outside 0..{n - 1} ({n} indexes for this study)")
