"""What one backend's bench serves, derived from the study alone (`BenchPlan`): the modes, execution regimes, batch
sizes, the served task, the cells of seed `bench.seed` each mode loads, and the request orders. Building it is the
bench's bad-input check (one ConfigError line, exit 2, before anything loads); the bench phase (phases/bench.py), the
servers (serving/servers.py) and the summary (serving/bench_summary.py) read it.
"""

from __future__ import annotations

from lorascope.errors import ConfigError
from lorascope.methods import kind_of
from lorascope.methods.full import FullMethod
from lorascope.methods.lora import LoraMethod
from lorascope.serving import MODES, multi_count
from lorascope.study import Study

BACKENDS = ("hf", "vllm")


class BenchPlan:
    """What one backend's bench serves, derived from the study alone. Building it is the bad-input check."""

    def __init__(self, study: Study, backend: str) -> None:
        bench = study.bench
        if backend not in BACKENDS:
            raise ConfigError(f"bench.backends: unknown backend {backend!r}; backends are {list(BACKENDS)}")
        bad = [size for size in bench.batch_sizes if size < 1]
        if bad:
            raise ConfigError(f"bench.batch_sizes: every batch size must be >= 1 (got {bad})")
        unknown = [m for m in bench.modes if m not in MODES]
        if unknown:
            raise ConfigError(f"bench.modes: unknown mode(s) {unknown}; modes are {list(MODES)}")
        if bench.seed not in study.seeds:
            raise ConfigError(f"bench.seed: {bench.seed} is not one of the study's seeds {study.seeds}; the bench serves "
                              "the cells trained with that seed")
        self.backend = backend
        # hf serves PyTorch eager; vllm the study's regimes (the first one decides its H2)
        self.regimes = ["eager"] if backend == "hf" else list(bench.vllm_regimes)
        self.modes = list(bench.modes)
        self.batch_sizes = list(bench.batch_sizes)
        self.seed = bench.seed
        self.tasks = [t.name for t in study.tasks]
        self.served_task = self.tasks[0]
        # the LoRA method served: bench.method, else the first vLLM-servable one (plain LoRA; the study validator
        # refuses a bench.method that is not servable)
        full = [m for m in study.methods if kind_of(m).is_reference]  # full fine-tuning, the reference
        self.lora: LoraMethod | None = study.bench_method()
        self.full: FullMethod | None = full[0] if full else None
        for mode in self.modes:
            k = multi_count(mode)
            if mode == "full" and self.full is None:
                raise ConfigError("bench.modes: mode 'full' needs a full fine-tuning method (kind: full) in methods; "
                                  f"the study has {[m.name for m in study.methods]}")
            if mode != "full" and self.lora is None:
                raise ConfigError(f"bench.modes: mode {mode!r} needs LoRA adapters but the study has no vLLM-servable "
                                  f"LoRA method (kind: lora without DoRA, rsLoRA or PiSSA/OLoRA init; bench.method "
                                  f"names one) in methods {[m.name for m in study.methods]}")
            if mode.startswith("multi-") and k > len(self.tasks):
                raise ConfigError(f"bench.modes: mode {mode!r} serves {k} task adapters at once but the study has "
                                  f"{len(self.tasks)} task(s) {self.tasks}; drop the mode or add tasks")
        specs = {t.name: t.spec for t in study.tasks}
        # which bench applies is the task type's (`TaskType.bench`): this one serves forward-pass classifiers
        for name in dict.fromkeys([self.served_task, *self.adapter_tasks]):
            ttype = specs[name].task_type
            if ttype.bench != "classification":
                what = f"the {ttype.bench} bench applies" if ttype.bench else "no bench applies"
                raise ConfigError(f"bench: task {name!r} is of type {ttype.name!r}, for which {what}; this bench serves "
                                  "classification tasks (list a classification task first, or leave the bench phase "
                                  "out)")  # fmt: skip
            if backend == "vllm" and not ttype.vllm_servable:
                raise ConfigError(f"bench.backends: vllm cannot serve task {name!r} (type {ttype.name!r})")
        labels = {specs[t].num_labels for t in self.adapter_tasks}
        if len(labels) > 1:
            raise ConfigError(f"bench: multi-adapter modes need tasks with one label count, got {sorted(labels)}")
        if backend == "vllm" and self.lora is not None:
            from lorascope.serving.vllm_backend import MAX_LORA_RANKS

            if self.lora.r > MAX_LORA_RANKS[-1]:
                raise ConfigError(f"methods.{self.lora.name}.r: {self.lora.r} exceeds vLLM's largest LoRA rank")
        self.max_length = max(study.task(t).max_length for t in self.tasks)

    @property
    def adapter_tasks(self) -> list[str]:
        """Tasks whose LoRA cells some mode serves (the first k tasks for the largest multi-k)."""
        k = max([multi_count(m) for m in self.modes if m != "full"], default=0)
        return self.tasks[:k]

    def tasks_of(self, mode: str) -> list[str]:
        return self.tasks[: multi_count(mode)] if mode.startswith("multi-") else [self.served_task]

    def mode_key(self, mode: str, regime: str) -> str:
        """The key of a mode's load/memory record: the mode itself in the first regime, `mode [regime]` in others."""
        return mode if regime == self.regimes[0] else f"{mode} [{regime}]"

    def orders(self, mode: str) -> list[str]:
        return ["rr", "random"] if mode.startswith("multi-") else ["single"]

    def cell(self, task: str, kind: str) -> str:
        method = self.full if kind == "full" else self.lora
        assert method is not None
        return f"{task}-{method.name}-s{self.seed}"

    def cells_of(self, mode: str) -> list[str]:
        if mode == "full":
            return [self.cell(self.served_task, "full")]
        return [self.cell(t, "lora") for t in self.tasks_of(mode)]

    @property
    def cells(self) -> list[str]:
        out: list[str] = []
        for mode in self.modes:
            out += [c for c in self.cells_of(mode) if c not in out]
        return out
