"""sanity: before any tuning, prove each task x method can learn, and fix the floor it must beat.

One index per task x method (the study's order: task-major, then method), one bundle `sanity/<task>-<method>/`
holding `sanity.json`:
  * overfit: `sanity.examples` training examples, full batch, constant learning rate `sanity.learning_rate[method]`,
    no warmup or weight decay, through the same `training.fit` as every other run; training stops as soon as the
    training loss is below `sanity.target_loss`, and the phase fails loudly (exit 1, naming task, method and the loss
    reached) when `sanity.max_steps` steps are not enough. The same examples are then scored by the shared
    `training.evaluate` (accuracy 1.0 expected: training and evaluation read the same token; a task without accuracy,
    regression, records its primary metric instead: `train_examples_pearson`).
  * baselines on the reported split (the staged `validation`): what the task type's trivial predictors score
    (`TaskType.trivial_baselines`). Classification: the majority class of the training split, and uniform random
    guessing, both as exact expectations and as one seeded draw. For random guessing with K classes the expected
    accuracy is 1/K exactly; the expected F1 (class 1 positive) is the exact expectation over the binomial counts
    TP ~ Bin(n1, 1/K), FP ~ Bin(n0, 1/K): E[2TP / (TP + FP + n1)]. Regression: the training labels' mean as a
    constant prediction (its squared error; correlation 0).
"""

from __future__ import annotations

from typing import Any

from lorascope.errors import ConfigError, LorascopeError
from lorascope.phases import PhaseContext
from lorascope.threads import configure_threads


def run(ctx: PhaseContext, index: int) -> None:
    study = ctx.study
    task, method_name = study.task_methods()[index]  # the runner checked the index (Phase.index); unit = task-method
    name = f"{task}-{method_name}"
    log = ctx.log
    method = study.method(method_name)
    key = study.sanity_key(method)
    lr = study.sanity.learning_rate[key] if key is not None else None
    if lr is None:
        raise ConfigError(
            f"sanity.learning_rate has no entry for method {method_name!r} (nor its kind {method.kind!r})"
        )

    import torch
    from transformers import TrainerCallback, set_seed

    from lorascope import data, methods, training
    from lorascope.models import loading

    device = loading.pick_device(ctx.env)
    training.check_training(study, device)
    configure_threads(ctx.env)
    stage_dir = ctx.stage_dir()
    train_rows = data.read_split(stage_dir, task, "train")
    validation = data.read_split(stage_dir, task, "validation")
    examples = train_rows[: study.sanity.examples]
    if len(examples) < 2:
        raise ConfigError(
            f"sanity: task {task} has {len(examples)} training examples; sanity.examples needs at least 2"
        )

    # 1. overfit a handful of examples
    model_dir = stage_dir / "model"
    tokenizer = loading.load_tokenizer(model_dir)
    spec = study.task(task).spec  # the task resolved by its type (lorascope.tasks)
    ttype = spec.task_type
    features = ttype.encode(spec, tokenizer, examples, spec.max_length)
    set_seed(study.seed)
    model = ttype.load_model(spec, model_dir, torch.float32, device)
    model = methods.apply_method(model, method, {}, task_type=ttype.peft_task_type)

    class StopBelowTarget(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))
                if logs["loss"] < study.sanity.target_loss:
                    control.should_training_stop = True

    stopper = StopBelowTarget()
    plan = training.Plan(learning_rate=lr, effective_batch=len(examples), epochs=study.sanity.max_steps, seed=study.seed,
                         lr_scheduler="constant", max_steps=study.sanity.max_steps, evaluate=False, logging_steps=1)  # fmt: skip
    result = training.fit(model, features, None, training=study.training, plan=plan, pad_id=int(tokenizer.pad_token_id),
                          output_dir=ctx.scratch("sanity", name), device=device, log=log, callbacks=[stopper], task=spec,
                          tokenizer=tokenizer)  # fmt: skip
    final = stopper.losses[-1] if stopper.losses else float("nan")
    if not final < study.sanity.target_loss:
        raise LorascopeError(
            f"sanity {task}-{method_name}: training loss {final:.4f} after {result.global_step} steps did not reach "
            f"sanity.target_loss {study.sanity.target_loss} on {len(examples)} examples (lr {lr}); "
            f"raise sanity.max_steps or sanity.learning_rate.{method_name}, or look for a bug"
        )
    on_train = training.evaluate_features(result.model, features, study.training.eval_batch, int(tokenizer.pad_token_id),
                                          bf16=training.use_bf16(study.training, device), task=spec, tokenizer=tokenizer)  # fmt: skip
    shown = "accuracy" if "accuracy" in on_train.values else spec.primary_metric  # what the overfit is read by
    log("overfit reached", steps=result.global_step, loss=final, **{f"train_{shown}": on_train.metric(shown)})

    # 2. baselines on the reported split: what the type's trivial predictors score
    baselines = ttype.trivial_baselines(spec, train_rows, validation,
                                        seed=training.stable_seed(study.seed, "sanity-random-baseline", task))  # fmt: skip
    log("baselines", **_flat(baselines))

    report = {
        "task": task,
        "method": method_name,
        "overfit": {
            "examples": len(examples),
            "target_loss": study.sanity.target_loss,
            "max_steps": study.sanity.max_steps,
            "learning_rate": lr,
            "steps": result.global_step,
            "final_loss": final,
            "losses": stopper.losses,
            f"train_examples_{shown}": on_train.metric(shown),
        },
        "baselines": {"split": "validation", **baselines},
    }
    with ctx.writer("sanity", name, phase="sanity", meta={"steps": result.global_step, "final_loss": final}) as w:
        w.add_json("sanity.json", report)
    log("committed", bundle=f"sanity/{name}")


def _flat(baselines: dict[str, Any]) -> dict[str, Any]:
    """The baselines' numbers as log fields: `majority_accuracy=0.68 uniform_random_expected_f1=0.5` ..."""
    out: dict[str, Any] = {}
    for key, value in baselines.items():
        if isinstance(value, dict):
            out.update({f"{key}_{k}": v for k, v in _flat(value).items() if k not in ("seed", "class")})
        elif key not in ("n", "positives"):
            out[key] = value
    return out


def baseline_metrics(train_labels: list[int], eval_labels: list[int], num_labels: int, seed: int) -> dict[str, Any]:
    """Majority-class and uniform-random baselines on `eval_labels` of a plain classification task of `num_labels`
    classes (accuracy, and binary F1 with class 1 positive for two classes): the classification type's
    `trivial_baselines` (lorascope.tasks.classification.class_baselines)."""
    from lorascope.tasks.classification import class_baselines, plain_task

    return class_baselines(plain_task(num_labels), list(train_labels), list(eval_labels), seed)
