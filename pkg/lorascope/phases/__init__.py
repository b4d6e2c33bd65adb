"""Phases: each is a function `(study, store, index) -> bundle`, called the same way by the local runner and by a
Kubernetes Job (`lorascope <phase> --index I`).

This module is the one place that says what each phase is (`PHASES`): its indexes (a unit name and the bundle key
each index commits), so its size and bundle list; whether its Job asks for a GPU; its description; what it reads
and writes (bundle-key patterns) and which phases must have run first. The runner, `status`, `pull`, the CLI's help,
the manifests (k8s/render) and the launcher all read these facts here; none of them imports a phase module for them.

A phase module `lorascope/phases/<name>.py` holds only what the phase does:
  * `run(ctx, index)`  -> do the one thing for that index and commit its bundle. The runner skips (and says so) an
                          index whose bundle is already committed, before `run` is called or the module imported
  * `when_committed(ctx, index, bundle)` (optional, listed in the Phase's `hooks`) -> what a skipped index still
                          does (report: deliver the committed report)
  * `interpreter(study, i, env)` (optional, listed in `hooks`) -> the Python that must run index i when it is not
                          this one (the bench phase's vllm index runs in the vLLM environment, .venv-vllm); None =
                          this process
Modules are imported only when the phase runs, so `lorascope status`, `render` or `drift` never import torch.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from lorascope.errors import ConfigError
from lorascope.phases.context import PhaseContext

if TYPE_CHECKING:
    from lorascope.store import Bundle
    from lorascope.study import Study


_STUDY_FIELD = re.compile(r"\{study\.([\w.]+)\}")  # `{study.hpo.workers}` in a fan_out -> `hpo.workers` in help


class Index(NamedTuple):
    """One index of a phase: a short name for logs and status tables, and the bundle key (relative to the run) it
    commits. Several indexes may commit one bundle (the HPO workers of one task x method)."""

    unit: str
    bundle: str


@dataclass(frozen=True)
class Phase:
    """The facts of one phase. `indexes(study)` is the fan-out: index i of the Indexed Job is `indexes(study)[i]`."""

    name: str
    indexes: Callable[[Study], list[Index]]
    description: str = ""  # what the phase does (the subcommand's help)
    fan_out: str = ""  # what one index is; str.format(study=study) fills it (the Job's description)
    gpu: bool = False  # whether the Kubernetes Job for this phase asks for a GPU
    timed: bool = False  # its indexes measure time: `lorascope run --jobs N` runs them one at a time, nothing beside
    reads: tuple[str, ...] = ()  # bundle keys (patterns) it reads, or where its inputs come from
    writes: tuple[str, ...] = ()  # bundle keys (patterns) it commits
    requires: tuple[str, ...] = ()  # phases whose bundles must be committed first
    hooks: tuple[str, ...] = ()  # the optional functions its module defines: when_committed, interpreter
    run_fn: Callable[[PhaseContext, int], Any] | None = None  # default: `run` of lorascope.phases.<name>

    # -------------------------------------------------------------------- derived facts
    def size(self, study: Study) -> int:
        return len(self.indexes(study))

    def bundles(self, study: Study) -> list[str]:
        """Every bundle key the phase commits when complete, in index order, each once."""
        return list(dict.fromkeys(ix.bundle for ix in self.indexes(study)))

    def index(self, study: Study, i: int) -> Index:
        all_ = self.indexes(study)
        if not 0 <= i < len(all_):
            raise ConfigError(f"phase {self.name}: index {i} is outside 0..{len(all_) - 1} ({len(all_)} indexes for "
                              "this study)")  # fmt: skip
        return all_[i]

    def unit(self, study: Study, i: int) -> str:
        return self.index(study, i).unit

    def bundle(self, study: Study, i: int) -> str:
        """The bundle key index i commits."""
        return self.index(study, i).bundle

    def describe(self, study: Study, n: int | None = None) -> str:
        n = self.size(study) if n is None else n
        return f"{self.name}: {n} index(es); {self.fan_out.format(study=study)}"

    def help_text(self) -> str:
        """The long help of `lorascope <phase>`: what it does, reads, writes and needs first."""
        first = ", ".join(self.requires) if self.requires else "none (the first phase)"
        fan_out = _STUDY_FIELD.sub(r"\1", self.fan_out)
        return "\n".join([
            f"{self.description}.",
            "",
            f"indexes:    {fan_out}",
            f"reads:      {'; '.join(self.reads) or 'nothing from the store'}",
            f"writes:     {'; '.join(self.writes)}  (under runs/<run>/ in the store)",
            f"run first:  {first}",
            f"gpu:        {'yes (the Kubernetes Job asks for one L4)' if self.gpu else 'no'}",
            "An index whose bundle is already committed is skipped.",
        ])  # fmt: skip

    # -------------------------------------------------------------------- the code (imported when used)
    def module(self):
        return importlib.import_module(f"lorascope.phases.{self.name}")

    def run(self, ctx: PhaseContext, i: int) -> Any:
        return (self.run_fn or self.module().run)(ctx, i)

    def when_committed(self, ctx: PhaseContext, i: int, bundle: Bundle) -> None:
        """What an index whose bundle is committed still does (most phases: nothing)."""
        if "when_committed" in self.hooks:  # no import of the module otherwise: a skip loads no phase code
            self.module().when_committed(ctx, i, bundle)

    def interpreter(self, study: Study, i: int, env: Mapping[str, str]) -> str | None:
        """The Python that must run index i when it is not this one; None = this process."""
        return self.module().interpreter(study, i, env) if "interpreter" in self.hooks else None


# ------------------------------------------------------------------------------------------------ the indexes
BASE = "base"  # the model name of the base model's representations (reps/base/<task>)


def hpo_slots(study: Study) -> list[tuple[str, str, int]]:
    """(task, method, worker) per hpo index: task x method, then the workers that share its Optuna study."""
    if not study.hpo.enabled:
        return []
    return [(t, m, w) for t, m in study.task_methods() for w in range(study.hpo.workers)]


def extract_units(study: Study) -> list[tuple[str, str]]:
    """(model, task) per extract index: the base model on every task first, then every cell on its own task."""
    return [(BASE, t.name) for t in study.tasks] + [(c.name, c.task) for c in study.cells()]


def _one(name: str) -> Callable[[Study], list[Index]]:
    return lambda study: [Index(name, name)]


PHASES: dict[str, Phase] = {
    p.name: p
    for p in (
        Phase(
            "stage",
            _one("stage"),
            description="fetch the base model (pinned revision) and GLUE once; commit model/ and "
            "data/<task>/{train,dev,validation}",
            fan_out="download model and data into the store",
            reads=("the model hub (model.name at model.revision) and the GLUE data source",),
            writes=("stage",),
        ),
        Phase(
            "sanity",
            lambda study: [Index(f"{t}-{m}", f"sanity/{t}-{m}") for t, m in study.task_methods()],
            description="per task x method: overfit a few examples below a loss target; majority and random baselines",
            fan_out="one index per task x method: overfit a few examples",
            gpu=True,
            reads=("stage",),
            writes=("sanity/<task>-<method>",),
            requires=("stage",),
        ),
        Phase(
            "hpo",
            lambda study: [Index(f"{t}-{m}/w{w}", f"hpo/{t}-{m}") for t, m, w in hpo_slots(study)],
            description="per task x method: Optuna TPE over the study's space, workers share one study; best params "
            "+ trials",
            fan_out="one index per task x method x worker ({study.hpo.workers} workers share an Optuna study)",
            gpu=True,
            reads=("stage", "the Optuna storage of the task x method (hpo.storage / LORASCOPE_OPTUNA_STORAGE)"),
            writes=("hpo/<task>-<method>",),
            requires=("stage",),
        ),
        Phase(
            "train",
            lambda study: [Index(c.name, f"cells/{c.name}") for c in study.cells()],
            description="one grid cell per index: fine-tune (full or LoRA) with the chosen params, resumable from "
            "checkpoints",
            fan_out="one index per grid cell (task-major, then method, then seed)",
            gpu=True,
            reads=("stage", "hpo/<task>-<method> (when hpo.enabled)", "checkpoints/<cell> (to resume)"),
            writes=("cells/<cell>", "checkpoints/<cell> (while it trains)"),
            requires=("stage", "hpo"),
        ),
        Phase(
            "extract",
            lambda study: [Index(f"{m}/{t}", f"reps/{m}/{t}") for m, t in extract_units(study)],
            description="hidden states of every layer (masked mean and last token) for the base model on each task, "
            "then each cell",
            fan_out="one index per task (base model) then one per cell",
            gpu=True,
            reads=("stage", "cells/<cell>"),
            writes=(f"reps/{BASE}/<task>", "reps/<cell>/<task>"),
            requires=("stage", "train"),
        ),
        Phase(
            "drift",
            _one("drift"),
            description="CKA drift (linear, debiased), cosines, seed noise floor, weight spectra, statistics and "
            "verdicts",
            fan_out="CKA drift from the extracted representations",
            reads=("stage", "reps/*/*", "cells/*", "bench/* (when committed: H2)"),
            writes=("drift",),
            requires=("train", "extract"),
        ),
        Phase(
            "bench",
            lambda study: [Index(b, f"bench/{b}") for b in study.bench.backends],
            description="serving latency, throughput and memory: full vs merged vs separate vs multi-adapter (H2)",
            fan_out="one index per serving backend",
            gpu=True,
            timed=True,
            reads=("stage", "cells/<task>-<method>-s<bench.seed>"),
            writes=("bench/<backend>", "bench/<backend>-generation (bench.generation.enabled)"),
            requires=("stage", "train"),
            hooks=("interpreter",),  # the vllm index runs in the vLLM environment
        ),
        Phase(
            "report",
            _one("report"),
            description="ANALYSIS_REPORT.md with figures, hypotheses and provenance, from the drift (and bench) "
            "bundles",
            fan_out="tables, figures and tests",
            reads=("drift", "stage (provenance)"),
            writes=("report",),
            requires=("drift",),
            hooks=("when_committed",),  # a committed report is still delivered (LORASCOPE_REPORT_DIR)
        ),
    )
}
PHASE_ORDER = list(PHASES)  # stage -> sanity -> hpo -> train -> extract -> drift -> bench -> report


def get_phase(name: str) -> Phase:
    if name not in PHASE_ORDER:
        raise ConfigError(f"unknown phase {name!r}; phases are {', '.join(PHASE_ORDER)}")
    if name not in PHASES:
        raise ConfigError(f"phase {name!r} is not implemented in this version of lorascope")
    return PHASES[name]


def available_phases() -> list[str]:
    return [p for p in PHASE_ORDER if p in PHASES]


def select_phases(spec: str | None, until: str | None = None, option: str = "--phases") -> list[str]:
    """`a,b` -> the named phases in pipeline order (None: every phase), cut after `until`. An unknown phase is a
    ConfigError naming the option, never a silent skip."""
    names = [p.strip() for p in spec.split(",") if p.strip()] if spec else available_phases()
    unknown = [n for n in names if n not in PHASE_ORDER]
    if unknown:
        raise ConfigError(f"{option}: unknown phase {unknown[0]!r}; phases are {', '.join(PHASE_ORDER)}")
    for n in names:
        get_phase(n)  # raises ConfigError for an unimplemented one
    if until:
        if until not in PHASE_ORDER:
            raise ConfigError(f"--until: unknown phase {until!r}; phases are {', '.join(PHASE_ORDER)}")
        names = [p for p in names if PHASE_ORDER.index(p) <= PHASE_ORDER.index(until)]
    return [p for p in PHASE_ORDER if p in names]
