"""sanity: before any tuning, prove each task x method can learn, and fix the floor it must beat.

One index per task x method (the study's order: task-major, then method), one bundle `sanity/<task>-<method>/`
holding `sanity.json`:
  * overfit: `sanity.examples` training examples, full batch, constant learning rate `sanity.learning_rate[method]`,
    no warmup or weight decay, through the same `training.fit` as every other run; training stops as soon as the
    training loss is below `sanity.target_loss`, and the phase fails loudly (exit 1, naming task, method and the loss
    reached) when `sanity.max_steps` steps are not enough. The same examples are then scored by the shared
    `training.evaluate` (accuracy 1.0 expected: training and evaluation read the same token).
  * baselines on the reported split (GLUE validation as staged): the majority class of the training split, and
    uniform random guessing, both as exact expectations and as one seeded draw. For random guessing with K
    classes the expected accuracy is 1/K exactly; the expected F1 (class 1 positive) is the exact expectation over
    the binomial counts TP ~ Bin(n1, 1/K), FP ~ Bin(n0, 1/K): E[2TP / (TP + FP + n1)].
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
    features = data.encode(tokenizer, task, examples, study.task(task).max_length)
    set_seed(study.seed)
    model = loading.load_classifier(model_dir, training.num_labels(task), torch.float32, device)
    model = methods.apply_method(model, method, {})

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
                          output_dir=ctx.scratch("sanity", name), device=device, log=log, callbacks=[stopper])  # fmt: skip
    final = stopper.losses[-1] if stopper.losses else float("nan")
    if not final < study.sanity.target_loss:
        raise LorascopeError(
            f"sanity {task}-{method_name}: training loss {final:.4f} after {result.global_step} steps did not reach "
            f"sanity.target_loss {study.sanity.target_loss} on {len(examples)} examples (lr {lr}); "
            f"raise sanity.max_steps or sanity.learning_rate.{method_name}, or look for a bug"
        )
    on_train = training.evaluate_features(result.model, features, study.training.eval_batch, int(tokenizer.pad_token_id),
                                          bf16=training.use_bf16(study.training, device))  # fmt: skip
    log("overfit reached", steps=result.global_step, loss=final, train_accuracy=on_train.accuracy)

    # 2. baselines on the reported split
    baselines = baseline_metrics(
        [int(r["label"]) for r in train_rows],
        [int(r["label"]) for r in validation],
        training.num_labels(task),
        seed=training.stable_seed(study.seed, "sanity-random-baseline", task),
    )
    log("baselines", majority_accuracy=baselines["majority"]["accuracy"], majority_f1=baselines["majority"]["f1"],
        random_accuracy=baselines["uniform_random"]["expected"]["accuracy"], random_f1=baselines["uniform_random"]["expected"]["f1"])  # fmt: skip

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
            "train_examples_accuracy": on_train.accuracy,
        },
        "baselines": {"split": "validation", **baselines},
    }
    with ctx.writer("sanity", name, phase="sanity", meta={"steps": result.global_step, "final_loss": final}) as w:
        w.add_json("sanity.json", report)
    log("committed", bundle=f"sanity/{name}")


def baseline_metrics(train_labels: list[int], eval_labels: list[int], num_labels: int, seed: int) -> dict[str, Any]:
    """Majority-class and uniform-random baselines on `eval_labels` (binary F1, class 1 positive)."""
    import numpy as np
    from scipy.stats import binom

    from lorascope.training import classification_metrics

    y = np.asarray(eval_labels, dtype=np.int64)
    majority = int(np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_labels).argmax())
    n1 = int((y == 1).sum())
    n0 = int(y.size - n1)
    p = 1.0 / num_labels
    # E[F1] for independent uniform guesses: TP ~ Bin(n1, p), FP ~ Bin(n0, p), F1 = 2TP / (TP + FP + n1)
    tp = np.arange(n1 + 1)
    fp = np.arange(n0 + 1)
    joint = np.outer(binom.pmf(tp, n1, p), binom.pmf(fp, n0, p))
    denom = tp[:, None] + fp[None, :] + n1
    f1 = np.divide(2.0 * tp[:, None], denom, out=np.zeros(joint.shape), where=denom > 0)
    draw = np.random.default_rng(seed).integers(0, num_labels, size=y.size)
    return {
        "n": int(y.size),
        "positives": n1,
        "majority": {"class": majority, **classification_metrics(y, np.full_like(y, majority))},
        "uniform_random": {
            "expected": {"accuracy": p, "f1": float((joint * f1).sum())},
            "draw": {"seed": seed, **classification_metrics(y, draw)},
        },
    }
