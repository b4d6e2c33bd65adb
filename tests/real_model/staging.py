"""Staging SmolLM2-135M for tests: reusable from any test (the real-model suite here, the vLLM tests).

`stage_smollm2(root, **study_update) -> Run`: the real stage phase (conversion included, once per model cache) on a
study derived from jobs/real-mini.yaml, into a file store under `root`; `run.model_dir` is the staged model folder.
`smollm2_model_dir() -> Path`: the converted model folder alone, from the persistent cache
(LORASCOPE_MODEL_CACHE, else ~/.cache/lorascope/work/models, the default work dir's, where `make install-real-model` converts it). It needs
`gguf` only when the folder is not there yet, so a venv without gguf (.venv-vllm) can use a folder that
`make install-real-model` made.
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lorascope.models import smollm2
from lorascope.study import load_study
from tests.phases.conftest import Run

REPO = Path(__file__).resolve().parents[2]
REAL_MINI = REPO / "jobs" / "real-mini.yaml"
THREADS = os.environ.get("LORASCOPE_TORCH_THREADS") or "2"


def wheel_dir() -> Path:
    raw = os.environ.get("LORASCOPE_WHEEL_DIR")
    return Path(raw).expanduser() if raw else smollm2.default_wheel_dir()


def persistent_model_cache() -> Path:
    raw = os.environ.get("LORASCOPE_MODEL_CACHE")
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "lorascope" / "work" / "models"


def smollm2_model_dir() -> Path:
    """The converted SmolLM2-135M folder (a plain HF LlamaForCausalLM folder with its tokenizer)."""
    return smollm2.ensure_converted(persistent_model_cache(), wheel_dir())


def _merge(base: dict, update: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class RealRun(Run):
    """A Run whose phases always see its env (threads, wheel folder, model cache)."""

    def ctx(self, **env: str):
        return super().ctx(**{**self.env, **env})

    @property
    def model_dir(self) -> Path:
        ctx = self.ctx()
        return ctx.local(ctx.require("stage")) / "model"


def stage_smollm2(root: Path, model_cache: Path | None = None, **study_update: Any) -> RealRun:
    """Commit the stage bundle of a real-mini-derived study (converting SmolLM2 into `model_cache`, default
    `root/models`, when it is not there) and return the run."""
    raw = _merge(yaml.safe_load(REAL_MINI.read_text()), study_update)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"study-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_study(path)
    env = {"LORASCOPE_TORCH_THREADS": THREADS, "LORASCOPE_WHEEL_DIR": str(wheel_dir()),
           "LORASCOPE_MODEL_CACHE": str(model_cache or root / "models")}  # fmt: skip
    run = RealRun(path, str(root / "store"), root / "work", env)
    run.phase("stage", 0)
    assert run.store.committed(run.key("stage"))
    return run
