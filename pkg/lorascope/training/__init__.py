"""Training and evaluation: one code path for both methods, used by the sanity, hpo and train phases.

One module per job:
  * `hparams`     hyperparameter resolution: study defaults / HPO's pick -> params, `Plan`, the step `schedule`,
                  batch layout, precision and optimizer for a device (no torch import at module level)
  * `evaluation`  the one evaluation of every method (`evaluate`, `evaluate_features`: the task type's `evaluate`)
  * `fit`         the Trainer: build it from a `Plan`, train (resuming from a checkpoint folder), return `FitResult`
  * `checkpoints` Trainer checkpoints: local folders (state, weights) and a cell's checkpoints in the store
                  (`CheckpointStore`, built by the train phase; `StoreCheckpoints`, the Trainer's callback)

The training history a cell keeps (history.json) is built by `lorascope.history` (no torch: the report reads it).
The names below are the package's interface (`from lorascope import training; training.fit(...)`).
"""

from lorascope.training.checkpoints import (
    CHECKPOINT_PREFIX,
    CheckpointStore,
    StoreCheckpoints,
    checkpoint_state,
    checkpoint_step,
    load_checkpoint_weights,
    training_finished,
)
from lorascope.training.evaluation import EvalResult, classification_metrics, evaluate, evaluate_features, task_of
from lorascope.training.fit import (
    ClassifierTrainer,
    FitResult,
    LogLines,
    SeededLengthGroupedSampler,
    StepTimer,
    TaskTrainer,
    classification_loss,
    fit,
    peak_memory,
    training_arguments,
)
from lorascope.training.hparams import (
    Plan,
    batch_layout,
    check_training,
    optimizer_name,
    resolve_params,
    schedule,
    stable_seed,
    use_bf16,
)

__all__ = [
    "CHECKPOINT_PREFIX", "CheckpointStore", "ClassifierTrainer", "EvalResult", "FitResult", "LogLines", "Plan",
    "SeededLengthGroupedSampler", "StepTimer", "StoreCheckpoints", "TaskTrainer", "task_of", "batch_layout", "check_training", "checkpoint_state",
    "checkpoint_step", "classification_loss", "classification_metrics", "evaluate", "evaluate_features", "fit",
    "load_checkpoint_weights", "optimizer_name", "peak_memory", "resolve_params", "schedule",
    "stable_seed", "training_arguments", "training_finished", "use_bf16",
]  # fmt: skip
