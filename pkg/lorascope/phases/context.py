"""The phase context: what a phase may use (the study, the store under its run, a work folder, the few settings the
CLI read). Only phases (and the runner and CLI above them) see it: a phase turns bundles into local paths and values
(`stage_dir`, `cell_dir`, `bundle(...).read_json`) and hands those down to data, models, training, analysis and
reporting, which never see the context or the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorascope.errors import ConfigError
from lorascope.log import Logger

if TYPE_CHECKING:
    from lorascope.store import Bundle, BundleWriter, Store
    from lorascope.study import Study

STAGE_FIRST = "run the stage phase first: it fetches the model and the data"
TRAIN_FIRST = "run the train phase for this cell first"


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

    def stage_dir(self) -> Path:
        """The local folder of the committed stage bundle: `model/` (the base model) and `data/<task>/<split>.jsonl`."""
        return self.local(self.require("stage", why=STAGE_FIRST))

    def cell_dir(self, cell: str) -> Path:
        """The local folder of a committed cell bundle: `adapter/` or `model/`, metrics.json, history.json."""
        return self.local(self.require("cells", cell, why=TRAIN_FIRST))
