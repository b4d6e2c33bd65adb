"""What a fine-tuning method kind is: one small protocol (`MethodKind`), one registry (`METHOD_KINDS`).

A kind is one module of this package that defines its config (a pydantic class with `kind: Literal[<name>]`) and a
`MethodKind` subclass registered with `@register`. Everything the rest of the package asks about a kind is a field
or a method of that class, and every caller gets the kind from the registry (`kind_of(method)`), never by comparing
`method.kind` with a name:

  configured, validated   `config`: the study entry's pydantic class (the study's discriminated union is built from
                          the registered configs, `lorascope.methods.method_union`)
  checked against a model `check(model, config, field_path)`: the preflight checks on a meta-device model (targets,
                          BitFit on a model without biases, top_layers' k against the block count)
  applied                 `apply(model, config, overrides, field_path, task_type=)`: the model set up for training;
                          `task_type` is PEFT's task type of the study task (its type's `peft_task_type`: SEQ_CLS,
                          QUESTION_ANS, CAUSAL_LM), which a PEFT kind passes to its config (the head it keeps trainable)
  hyperparameters         `hyperparameters`: the HPO parameters only this kind accepts (LoRA's lora_alpha,
                          lora_dropout), their rule and the config field they default to
  saved, loaded           `artifact` (`adapter` or `model`), `save_initial` and `save` (PiSSA/OLoRA conversion, the
                          head restored after it); `loads`/`load` for a kind with its own artifact format (a PEFT
                          adapter or a whole model is loaded by lorascope.models.artifacts)
  served                  `vllm_servable(config)`
  swept                   `size_knob` (and `size_companions`, the fields a sweep over it moves along)
  unchangeable            `fixed_by_construction(config, n_blocks, encoder)`: what it leaves exactly at the base
                          model's (the embedding output, frozen blocks): the drift summary keeps those entries out of
                          every mean a comparison with this method makes, and the report lists them with the reason
  its weight update       `weight_update(config, cell_dir, base)` for the drift phase's weight rows, with
                          `weight_source(config)` (how it is read) or `weights_skipped(config)` (why it has no rows),
                          and `dense_update_note(config)` when the update is a dense rescaling of W0 rather than an
                          added low-rank matrix (IA3, DoRA's magnitude): its rank measures are then read differently

The shape is PEFT's (`tuners/lora/model.py`: one dispatcher per variant, a new variant is a sibling file) and
lm-evaluation-harness's (`api/registry.py`: register, and a `get` that fails by listing what exists). Imports no
torch or PEFT at module level: a kind imports them inside the methods that touch a model, so the drift and report
phases (slim image, no torch) can ask a kind about its weights and what it leaves fixed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from lorascope.registry import Registry
from lorascope.schema import Strict

# Target lists name modules by role (q k v o gate up down), group (attention, mlp), `all-linear`, or a module's own
# name (PEFT's suffix rule); lorascope.models.families.resolve_targets turns them into the exact names of a loaded model.
# A bare string is a one-entry list (`target_modules: all-linear`).
Targets = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


def one_or_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class MethodConfig(Strict):
    """A study's method entry. Each kind's config subclasses this with `name` (a default) and `kind` (a Literal of
    the kind's registry name, the discriminator of the study's union)."""

    @property
    def adapter(self) -> bool:
        """Whether the cell saves `adapter/` (else `model/`)."""
        return kind_of(self).artifact == "adapter"

    @property
    def vllm_servable(self) -> bool:
        return kind_of(self).vllm_servable(self)


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter only some kinds accept: its rule (`study.PARAM_RULES`), and the config field it defaults to
    when neither HPO nor training.defaults give it."""

    rule: Callable[[Any], bool]
    expected: str  # the rule in words: "> 0"
    field: str


@dataclass(frozen=True)
class FixedByConstruction:
    """What a method leaves exactly at the base model's, whatever it learns (drift exactly 0 there).

    `embedding_output`: hidden_states[0] is the base's. `frozen_blocks`: 0-based indexes of the blocks whose outputs
    are the base's (hidden-state entry i + 1), None for a kind that freezes no block by design; `why_frozen` says why
    in words. One rule for both (`analysis.layers_in_mean`): an entry a method cannot change is left out of every
    mean over layers that compares it with another method (a pair's mean covers only the entries both can change;
    the table over all methods, only the entries every method can change), listed with the reason and its drift
    shown apart; the whole-model mean, over every entry, is reported too, labelled as such."""

    embedding_output: bool = False
    frozen_blocks: tuple[int, ...] | None = None
    why_frozen: str = ""


class MethodKind:
    """One fine-tuning kind. Subclasses set the class attributes and override what differs from these defaults (a
    kind that changes nothing by construction, trains with no kind-only hyperparameters, saves with
    `save_pretrained` and is not served by vLLM)."""

    name: ClassVar[str]  # the `kind:` value in a study
    title: ClassVar[str]  # words for people ("LoRA", "prefix tuning")
    config: ClassVar[type[MethodConfig]]
    artifact: ClassVar[Literal["adapter", "model"]]  # what the cell bundle holds
    size_knob: ClassVar[str | None] = None  # the field a sweep over the method's size varies (LoRA: r)
    size_companions: ClassVar[tuple[str, ...]] = ()  # fields that move with it in a sweep (LoRA: alpha, dropout)
    hyperparameters: ClassVar[Mapping[str, Hyperparameter]] = {}  # HPO parameters only this kind accepts
    # fields added after studies were first run: left out of the study hash while they hold these defaults
    hash_neutral_defaults: ClassVar[Mapping[str, Any]] = {}
    checks_model: ClassVar[bool] = False  # whether `check` needs the model (preflight builds a meta-device one)
    is_reference: ClassVar[bool] = False  # the drift comparison's reference (full fine-tuning)
    hypothesis_subject: ClassVar[str | None] = None  # how the hypotheses name a comparison of only this kind
    # whose targets full fine-tuning's weight rows are compared on, like with like: the lowest number present
    weight_targets_priority: ClassVar[int | None] = None

    # ---- the study and the model
    def vllm_servable(self, config: Any) -> bool:
        return False

    def targets(self, config: Any) -> list[str]:
        """The module names / roles the method adapts (`target_modules`, then `feedforward_modules`), as written."""
        both = [*(getattr(config, "target_modules", None) or []), *(getattr(config, "feedforward_modules", None) or [])]
        return list(dict.fromkeys(both))  # IA3's feedforward_modules are a subset of its target_modules

    def check(self, model: Any, config: Any, field_path: str) -> None:
        """Raise ConfigError (naming `field_path`) when `config` does not fit `model` (used on a meta-device model)."""

    def apply(self, model: Any, config: Any, overrides: Mapping[str, Any], field_path: str,
              task_type: str = "SEQ_CLS") -> Any:  # fmt: skip
        raise NotImplementedError

    def hyperparameter_values(self, config: Any, merged: Mapping[str, Any]) -> dict[str, float]:
        """This kind's own hyperparameters of one run: the chosen value, else the config's field."""
        return {name: float(merged.get(name, getattr(config, h.field))) for name, h in self.hyperparameters.items()}

    # ---- the cell's artifact
    def save_initial(self, model: Any, config: Any, folder: Path) -> Path | None:
        """What must be saved before the first training step for `save` (PiSSA/OLoRA's initial adapter); None."""
        return None

    def save(self, model: Any, config: Any, folder: Path, initial: Path | None = None) -> Path:
        """Save the cell's artifact into `folder`/<artifact> and return that folder."""
        out = Path(folder) / self.artifact
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(str(out))
        return out

    def loads(self, cell_dir: Path) -> bool:
        """Whether the cell folder holds this kind's own artifact format, which `load` reads. False for the kinds
        saved as a PEFT adapter or a whole model (lorascope.models.artifacts loads those)."""
        return False

    def load(self, cell_dir: Path, base: Any) -> Any:
        """The trained model from the cell folder's own artifact format and `base` (the staged base classifier)."""
        raise NotImplementedError

    # ---- what the analysis reads
    def fixed_by_construction(self, config: Any, n_blocks: int, encoder: bool | None) -> FixedByConstruction:
        """By default the embedding output is the base's unless a target names the embeddings (`encoder`: whether
        the model is an encoder, None when unknown)."""
        return FixedByConstruction(embedding_output=not any("embed" in t for t in self.targets(config)))

    def weight_source(self, config: Any) -> str | None:
        """How the drift phase reads the update (settings.weights_source); None when it has no weight rows."""
        return None

    def weights_skipped(self, config: Any) -> str | None:
        """Why the method has no weight rows (settings.weights_skipped); None when it has them."""
        return None

    def dense_update_note(self, config: Any) -> str | None:
        """Where the update is a dense rescaling of W0 rather than an added low-rank matrix (settings.weights_notes):
        what its rank measures then describe, for the weight table; None for an additive update."""
        return None

    def weight_update(self, config: Any, cell_dir: Path, base: Any) -> tuple[str, Any]:
        """(form, update) for `analysis.updates.update_rows` from the committed cell folder `cell_dir` and the base
        weights `base` (`tensorio.TensorFolder`): form "lora" ({weight name: (B, A, scale)}), "dense" (the fine-tuned
        weight of exactly the modules it lists, `analysis.lora.DenseUpdates`) or "full" (the cell's weights)."""
        raise NotImplementedError(f"{self.name}: no weight update ({self.weights_skipped(config)})")

    def __repr__(self) -> str:
        return f"<method kind {self.name}>"


METHOD_KINDS: Registry[MethodKind] = Registry("method kind")


def register(cls: type[MethodKind]) -> type[MethodKind]:
    """Class decorator: register one instance of a MethodKind under its `name` (which its config's `kind` must be)."""
    declared = cls.config.model_fields["kind"].default
    if declared != cls.name:
        raise ValueError(f"method kind {cls.name!r}: its config {cls.config.__name__} says kind {declared!r}")
    METHOD_KINDS.add(cls.name, cls())
    return cls


def kind_of(method: Any, field: str = "") -> MethodKind:
    """The registered kind of a method (a config, or anything with a `kind` attribute)."""
    return METHOD_KINDS.get(method.kind, field)


def kind_only_problem(kind: MethodKind, given: Iterable[str]) -> str | None:
    """Why hyperparameters in `given` that other kinds own do not apply to `kind` (None when none is given):
    "['lora_alpha'] apply to LoRA only"."""
    given = set(given)
    foreign = [p for k in METHOD_KINDS.names() for p in METHOD_KINDS.get(k).hyperparameters
               if p in given and p not in kind.hyperparameters]  # fmt: skip
    foreign = list(dict.fromkeys(foreign))
    if not foreign:
        return None
    owners = [k.title for _, k in METHOD_KINDS.items() if any(p in k.hyperparameters for p in foreign)]
    return f"{foreign} apply to {' and '.join(owners)} only"


def frozen_except(model: Any, names: set[str]) -> None:
    """requires_grad on exactly the parameters named in `names`."""
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
