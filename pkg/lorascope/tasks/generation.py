"""Data-to-text generation (the E2E NLG Challenge): a decoder learns to write a reference text for a prompt (a meaning
representation, MR), scored by the challenge's metrics over the references of each MR.

Tasks it knows without a source: `e2e` (the bundled synthetic fixtures with `data.path: builtin`, a folder
`<data.path>/e2e/{train,validation}.jsonl` with `source: local`, or the hub's E2E at a pinned revision with
`data.source: hub`: `E2E_HUB`). A task of the user's own names `source` and `columns` (roles `prompt`, `reference`,
optionally `idx`); a row's reference may be one text or a list of them.

  rows      staged as one row per (prompt, reference): E2E's `meaning_representation`, `human_reference` (a user's task:
            `prompt`, `reference`) and `idx` (int, unique; the row number when the source has none). One *example* is
            an MR with all its references (`example_key`: rows with the same prompt text, wherever they are, as the
            official e2e-metrics script groups them): dev is carved from train by MR, and `train_samples`,
            `eval_samples` and `extraction.examples` count MRs, so no MR has references on both sides of a split
  input     decoders only (an encoder is refused at the door and at load): `BOS prompt EOS reference EOS` from ids (no
            tokenizer-added specials; the EOS after the reference teaches the model to stop), the prompt and the
            reference+EOS truncated longest-first to `max_length`. Labels are the ids of the reference and its final
            EOS; every prompt position (BOS, prompt, separator EOS) is -100 and carries no loss
  model     `AutoModelForCausalLM` (its own LM head), pad = eos; PEFT task type CAUSAL_LM. GPT-2 (Conv1D projections:
            LoRA with fan_in_fan_out, `models.families`), Llama-likes, SmolLM2
  loss      next-token cross-entropy summed over the target tokens of the micro-batch, divided by the target tokens of
            the accumulated batch (token-level mean, as HF's causal-LM loss); `options.label_smoothing` (the LoRA
            paper: 0.1) in training only: evaluation losses are plain cross-entropy in nats per target token
  decoding  the prompt `BOS prompt EOS`, batches of prompts of one length (no padding, so an output never depends on
            its batch), `options.decoding`: `greedy` (argmax), or `beam` with `num_beams`, `length_penalty`,
            `no_repeat_ngram_size` (the LoRA paper: 10, 0.9, 4); at most `max_new_tokens` (the paper: 64), cut at the
            first EOS
  metrics   `metrics.nlg.e2e_metrics` on the reported split's MRs, references grouped per MR: bleu, meteor, rouge_l
            (rouge-score's), rouge_l_coco (the script's, the LoRA paper's ROUGE-L) as fractions in [0, 1] (the
            official script prints 0.7040 for BLEU 70.40: a point is 0.01, one BLEU point), nist and cider as they are.
            `options.java_metrics: false` leaves out the three that need Java (meteor, rouge_l_coco, cider). Primary:
            bleu (HPO's objective on dev, the learning gate's and H1a's unit: H1a's margin is in BLEU points)
  cost      the full evaluation (every dev MR decoded with the study's decoding, the metric set with METEOR's JVM)
            runs after training (dev and the reported split) and once per HPO trial (its objective, dev BLEU of the best
            checkpoint). The Trainer's dev evaluations while training (`evaluate_during_training`: early stopping and the
            best checkpoint on the dev loss, as for every type; HPO's pruner on the primary metric) compute the loss on
            every dev pair and the primary metric on the first `options.dev_prompts` dev MRs decoded greedily: bounded
            by that count, whatever the dev size
  gate      two trivial predictors, scored on the evaluated MRs: copying the prompt's values (E2E's `attr[value]`
            values in order, joined by spaces: all the content, no sentence; a prompt without such pairs is copied
            whole) and one fixed sentence (the evaluated split's most frequent reference, the first in a tie: fluent,
            no content). The learning gate's baseline is the better of the two in BLEU on the same MRs (per bootstrap
            resample, as the majority baseline is the best constant class); each MR's prediction carries the BLEU
            statistics of the model's output and of both predictors, so the analysis bootstraps corpus BLEU over MRs
            (analysis/text_bootstrap.py)
  extract   the prompt alone (`BOS prompt EOS`, one per MR, without the target: identical for the base and every
            cell); `mean` pools it without BOS, `last` is the separator EOS, where the first word is predicted
  bench     "generation" (tokens/s, TTFT, TPOT), which is not built yet: the bench phase refuses a generation task
            (serving/plan.py). vllm_servable says vLLM could serve plain LoRA on Llama-like decoders (untested here)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from lorascope.errors import ConfigError
from lorascope.schema import Strict
from lorascope.tasks.base import EvalResult, GateFacts, Task, TaskType, register

E2E = "e2e"  # a study task name ([a-z0-9-]: cell names and Kubernetes names)
E2E_FIXTURES = Path(__file__).resolve().parent.parent / "assets" / "e2e"
# The hub's E2E NLG Challenge data (Novikova, Dusek & Rieser 2017; CC BY-SA 4.0): `tuetschek/e2e_nlg` (formerly
# `e2e_nlg`). Its main branch holds a loading script, which datasets >= 4 no longer runs; the hub's parquet conversion
# (branch refs/convert/parquet, config `default`) is pinned at this commit. Splits train (42,061 rows, 4,862 MRs),
# validation (4,672 rows, 547 MRs), test (4,693 rows, 630 MRs: the split the LoRA paper reports), one row per
# (meaning_representation, human_reference).
E2E_HUB = ("tuetschek/e2e_nlg", None, "a1fd8dcb2b81207ecc5b7fd886f78fcee959eebc")
E2E_COLUMNS = {"prompt": "meaning_representation", "reference": "human_reference", "idx": "idx"}
METRICS = ("bleu", "nist", "meteor", "rouge_l", "rouge_l_coco", "cider")  # metrics.nlg.e2e_metrics, in its order
JAVA_METRICS = ("meteor", "rouge_l_coco", "cider")  # the jars pycocoevalcap ships (METEOR 1.5, the PTB tokenizer)
PERCENT_METRICS = ("bleu", "meteor", "rouge_l", "rouge_l_coco")  # metrics.nlg gives percent: stored as fractions
UNBOUNDED = ("nist", "cider")  # no perfect score: reported, but the gate's headroom needs one (not a primary metric)
IGNORE = -100  # the label of a position without loss (PyTorch's cross-entropy ignore_index)
TRIVIAL_TEXT = ("the better in BLEU of two trivial outputs on the same MRs: the prompt's values copied (E2E's "
                "attr[value] values joined by spaces) and one fixed sentence (the evaluated split's most frequent "
                "reference)")  # fmt: skip
_ATTRIBUTE = re.compile(r"([^\[\],]+)\[([^\]]*)\]")  # E2E's `name[The Eagle]`


class GenerationOptions(Strict):
    """`tasks[].options` of a generation task. Decoding: `greedy` (argmax) or `beam` with the LoRA paper's settings
    (Hu et al. 2021, Table 11: beam 10, length penalty 0.9, no_repeat_ngram_size 4; `max_new_tokens` 64 as its
    `--eval_len`); `num_beams`, `length_penalty`, `no_repeat_ngram_size` apply to beam search only. `dev_prompts`:
    dev MRs decoded greedily at each dev evaluation while training (the primary metric for HPO's pruner).
    `label_smoothing`: of the training loss (the paper: 0.1). `java_metrics`: false leaves out METEOR, ROUGE-L (coco)
    and CIDEr (they run Java jars). `reported_split` (e2e): `validation`, or `test` as the paper reports (the
    hub's E2E; the bundled fixtures have no test split)."""

    decoding: Literal["greedy", "beam"] = "greedy"
    num_beams: int = Field(10, ge=2)
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = Field(4, ge=0)
    max_new_tokens: int = Field(64, ge=1)
    dev_prompts: int = Field(32, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    java_metrics: bool = True
    reported_split: Literal["validation", "test"] = "validation"


@register
class GenerationType(TaskType):
    name = "generation"
    title = "data-to-text generation"
    roles = ("prompt", "reference", "idx")
    required_roles = ("prompt", "reference")
    input_roles = ("prompt",)
    peft_task_type = "CAUSAL_LM"
    encoders = False
    bench = "generation"
    vllm_servable = True  # plain LoRA on Llama-like decoders (LLM.generate with a LoRARequest); not GPT-2 in vLLM
    options = GenerationOptions
    metric_units = {"bleu": "BLEU points", "meteor": "METEOR points", "rouge_l": "ROUGE-L points",
                    "rouge_l_coco": "ROUGE-L (coco) points", "nist": "NIST", "cider": "CIDEr"}  # fmt: skip

    # ---- the study
    def known_tasks(self) -> tuple[str, ...]:
        return (E2E,)

    def resolve(self, config: Any, where: str) -> Task:
        at = f"{where}." if where else ""
        opts = parse_options(getattr(config, "options", None) or {}, at)
        if getattr(config, "labels", None) is not None:
            raise ConfigError(f"{at}labels: a generation task has no label set (its targets are reference texts)")
        metrics = METRICS if opts.java_metrics else tuple(m for m in METRICS if m not in JAVA_METRICS)
        if getattr(config, "source", None) is None:
            if config.name != E2E:
                raise ConfigError(f"{at}name: {config.name!r} is not a generation task lorascope knows ({E2E}); a task "
                                  "of your own names its `source` and `columns`")  # fmt: skip
            if getattr(config, "columns", None) is not None:
                raise ConfigError(f"{at}columns: {E2E} has its own columns; a column mapping goes with a `source` of "
                                  "your own")  # fmt: skip
            task = Task(name=config.name, type=self.name, columns=dict(E2E_COLUMNS), label_names=(), num_labels=0,
                        validation_splits=(opts.reported_split,), metrics=metrics, primary_metric="bleu",
                        max_length=config.max_length, paper_metric="bleu", options=opts)  # fmt: skip
        else:
            task = self._resolve_own(config, at, opts, metrics)
        metric = getattr(config, "metric", None)
        if metric is not None:
            if metric not in task.metrics:
                raise ConfigError(f"{at}metric: {metric!r} is not a metric of task {config.name!r}; it reports "
                                  f"{', '.join(task.metrics)}")  # fmt: skip
            if metric in UNBOUNDED:
                raise ConfigError(f"{at}metric: {metric!r} has no perfect score, so the learning gate's headroom is "
                                  f"undefined; the primary metric is one of {[m for m in task.metrics if m not in UNBOUNDED]}")  # fmt: skip
            task = replace(task, primary_metric=metric)
        return task

    def _resolve_own(self, config: Any, at: str, opts: GenerationOptions, metrics: tuple[str, ...]) -> Task:
        columns = self.own_columns(config, at, "a generation task", "prompt and reference onto your columns, optionally idx")
        if "reported_split" in (getattr(config, "options", None) or {}):
            raise ConfigError(f"{at}options.reported_split: for {E2E} only; a task of your own reports its "
                              "`validation` split")  # fmt: skip
        staged = {"prompt": "prompt", "reference": "reference", "idx": "idx"}
        return Task(name=config.name, type=self.name, columns=staged, label_names=(), num_labels=0,
                    validation_splits=("validation",), metrics=metrics, primary_metric="bleu",
                    max_length=config.max_length, source=config.source, source_columns=columns, options=opts)  # fmt: skip

    # ---- the data
    def check_rows(self, task: Task, rows: Sequence[Mapping[str, Any]], where: str) -> list[dict]:
        """One staged row per (prompt, reference): the prompt and reference texts (non-empty strings) and `idx` (an
        int, unique; the running row number when the source has no idx column). A source row whose reference is a list
        gives one staged row per reference (then it cannot carry an idx of its own). ConfigError naming `where` and
        the row for a missing column, an empty text, a repeated idx, an empty split."""
        if not rows:
            raise ConfigError(f"{where}: no rows (an empty split)")
        mapping = dict(task.source_columns if task.source_columns is not None else task.columns)
        prompt_col, ref_col = mapping["prompt"], mapping["reference"]
        own_idx = "idx" in mapping and task.source_columns is not None or any("idx" in r for r in rows[:1])
        idx_col = mapping.get("idx", "idx")
        out, seen = [], set()
        for n, r in enumerate(rows):
            missing = [c for c in (prompt_col, ref_col) if c not in r]
            if missing:
                raise ConfigError(f"{where}: row {n} lacks {missing} (columns of task {task.name}: prompt "
                                  f"{prompt_col!r}, reference {ref_col!r})")  # fmt: skip
            prompt = _text(r[prompt_col], f"{where}: row {n} {prompt_col}")
            value = r[ref_col]
            refs = list(value) if isinstance(value, list | tuple) else [value]
            if not refs:
                raise ConfigError(f"{where}: row {n} has no reference ({ref_col} is an empty list)")
            if own_idx and len(refs) > 1:
                raise ConfigError(f"{where}: row {n} has {len(refs)} references and one idx; give one reference a row, "
                                  "or no idx column (rows are then numbered)")  # fmt: skip
            for ref in refs:
                idx = _int(r[idx_col], f"{where}: row {n} {idx_col}") if own_idx else len(out)
                if idx in seen:
                    raise ConfigError(f"{where}: idx {idx} appears twice")
                seen.add(idx)
                out.append({task.columns["prompt"]: prompt, task.columns["reference"]: _text(ref, f"{where}: row {n} "
                            f"{ref_col}"), "idx": idx})  # fmt: skip
        return out

    def example_key(self, task: Task, row: Mapping[str, Any]) -> str:
        """The prompt text: an MR with all its references is one example."""
        return str(row[task.columns["prompt"]])

    def local_files(self, task: Task, root: Path | None) -> dict[str, Path]:
        """E2E-format jsonl `<root>/e2e/<split>.jsonl`; `root` None: the bundled synthetic fixtures (train and
        validation only)."""
        if root is None:
            if "test" in task.validation_splits:
                raise ConfigError(f"tasks[{task.name}].options.reported_split: test, but the bundled {E2E} fixtures "
                                  "(data.path: builtin) have no test split; use validation, or the hub's E2E "
                                  "(data.source: hub)")  # fmt: skip
            return {split: E2E_FIXTURES / f"{split}.jsonl" for split in self.source_splits(task)}
        return super().local_files(task, root)

    def hub_source(self, task: Task, data: Any) -> tuple[str, str | None, str, dict[str, str]]:
        """The pinned hub E2E (`E2E_HUB`), whatever `data.hub_dataset` says (that is GLUE's)."""
        dataset, config, revision = E2E_HUB
        return dataset, config, revision, {}

    # ---- model input
    def encode(self, task: Task, tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int) -> list[dict]:
        """{"idx", "input_ids", "attention_mask", "labels" (-100 on the prompt), "prompt_length", "prompt",
        "reference"} per row: `BOS prompt EOS reference EOS`, prompt and reference+EOS truncated longest-first."""
        from lorascope import data

        bos, eos = _specials(tokenizer)
        if max_length < 4:
            raise ConfigError(f"max_length {max_length} is too short for {task.name} (BOS, prompt, EOS, reference)")
        prompts = [str(r[task.columns["prompt"]]) for r in rows]
        refs = [str(r[task.columns["reference"]]) for r in rows]
        p_ids = _ids(tokenizer, prompts)
        r_ids = _ids(tokenizer, refs)
        out = []
        for r, p, t, prompt, ref in zip(rows, p_ids, r_ids, prompts, refs, strict=True):
            target = [*t, eos]
            lp, lt = data.truncate_pair(len(p), len(target), max_length - 2)
            head = [bos, *p[:lp], eos]
            ids = [*head, *target[:lt]]
            out.append({"idx": int(r["idx"]), "input_ids": ids, "attention_mask": [1] * len(ids),
                        "labels": [IGNORE] * len(head) + target[:lt], "prompt_length": len(head), "prompt": prompt,
                        "reference": ref})  # fmt: skip
        return out

    def extraction_features(self, task: Task, tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int) -> list[dict]:
        """One feature per MR, the prompt alone as decoding sees it (`BOS prompt EOS`, no target), `idx` its first
        row's: what the extract phase pools (the base and every cell read the same ids)."""
        first = {}
        for f in self.encode(task, tokenizer, rows, max_length):
            first.setdefault(f["prompt"], f)
        return [{"idx": f["idx"], "input_ids": f["input_ids"][: f["prompt_length"]],
                 "attention_mask": [1] * f["prompt_length"]} for f in first.values()]  # fmt: skip

    def collate(self, task: Task, features: list[dict], pad_id: int, pad_to: int | None = None) -> dict[str, Any]:
        """Right-padded int64 `input_ids` (pad id), `attention_mask` and, when the features have them, `labels`
        (-100 on padding)."""
        import torch

        if not features:
            raise ValueError("collate: empty batch")
        longest = max(len(f["input_ids"]) for f in features)
        length = longest if pad_to is None else pad_to
        if length < longest:
            raise ValueError(f"collate: pad_to={pad_to} is shorter than the longest sequence ({longest})")
        batch = {"input_ids": torch.full((len(features), length), int(pad_id), dtype=torch.long),
                 "attention_mask": torch.zeros((len(features), length), dtype=torch.long)}  # fmt: skip
        labels = torch.full((len(features), length), IGNORE, dtype=torch.long) if all("labels" in f for f in features) else None
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            batch["attention_mask"][i, :n] = 1
            if labels is not None:
                labels[i, :n] = torch.tensor(f["labels"], dtype=torch.long)
        if labels is not None:
            batch["labels"] = labels
        return batch

    # ---- the model
    def load_model(self, task: Task, model_dir: str | Path, dtype: Any, device: Any) -> Any:
        """`AutoModelForCausalLM.from_pretrained` (its own LM head), pad = eos; ConfigError for an encoder."""
        from transformers import AutoModelForCausalLM

        from lorascope.models import loading

        family = loading.model_family(model_dir)
        if family.encoder:
            raise ConfigError(f"task {task.name}: generation runs on decoders only; {family.name} is an encoder")
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        eos = model.config.eos_token_id
        model.config.pad_token_id = int(eos[0] if isinstance(eos, list | tuple) else eos)
        return model.to(device)

    def meta_model(self, task: Task, config: Mapping[str, Any]) -> Any:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)

    # ---- training and evaluation
    def loss(self, task: Task, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        """Next-token cross-entropy (float32 logits) summed over the positions whose next token is a target, divided by
        the target tokens of the whole accumulated batch (`num_items_in_batch`, the Trainer's count of labels != -100);
        with `options.label_smoothing`."""
        import torch.nn.functional as F

        logits = outputs["logits"]
        shifted = labels[:, 1:].to(logits.device)
        keep = shifted != IGNORE
        loss = F.cross_entropy(logits[:, :-1][keep].float(), shifted[keep], reduction="sum",
                               label_smoothing=float(_options(task).label_smoothing))  # fmt: skip
        count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
        return loss / count

    def evaluate(self, task: Task, model: Any, features: list[dict], *, batch_size: int, pad_id: int,
                 bf16: bool = False, tokenizer: Any = None) -> EvalResult:  # fmt: skip
        """The loss (mean cross-entropy per target token over every (MR, reference) row), then every MR decoded with
        the task's decoding and scored by `metrics.nlg.e2e_metrics` against all its references. `n`: the MRs.
        Predictions, one per MR in first-seen order: idx (its first row's), prompt, references, pred (the output),
        the two trivial outputs, and BLEU's sufficient statistics of each (`bleu_stats`, `trivial_stats`: the drift
        analysis bootstraps corpus BLEU over MRs, `analysis.text_bootstrap`)."""
        from lorascope.metrics import nlg

        tokenizer = _need_tokenizer(tokenizer)
        opts = _options(task)
        loss = target_loss(self, task, model, features, batch_size, pad_id, bf16)
        groups = group_features(features)
        hyps = decode(model, tokenizer, [g["prompt_ids"] for g in groups], opts, batch_size, bf16)
        refs = [g["references"] for g in groups]
        values = score(task.metrics, hyps, refs)
        copies = [copy_values(g["prompt"]) for g in groups]
        constant = most_frequent([r for g in groups for r in g["references"]])
        stats = nlg.bleu_statistics(hyps, refs)
        trivial = {"copy_values": nlg.bleu_statistics(copies, refs),
                   "constant": nlg.bleu_statistics([constant] * len(groups), refs)}  # fmt: skip
        predictions = [{"idx": g["idx"], "prompt": g["prompt"], "references": g["references"], "pred": h,
                        "trivial": {"copy_values": c, "constant": constant}, "bleu_stats": st,
                        "trivial_stats": {k: v[i] for k, v in trivial.items()}}
                       for i, (g, h, c, st) in enumerate(zip(groups, hyps, copies, stats, strict=True))]  # fmt: skip
        return EvalResult(values=values, loss=loss, n=len(groups), primary=task.primary_metric, predictions=predictions)

    def evaluate_during_training(self, task: Task, model: Any, features: list[dict], *, batch_size: int, pad_id: int,
                                 bf16: bool = False, tokenizer: Any = None) -> EvalResult:  # fmt: skip
        """The bounded dev evaluation while training: the loss over every dev (MR, reference) row (early stopping and
        the best checkpoint), and the primary metric on the first `options.dev_prompts` dev MRs decoded greedily
        (HPO's pruner; history.json's dev curve). `n`: the MRs decoded."""
        tokenizer = _need_tokenizer(tokenizer)
        opts = _options(task)
        loss = target_loss(self, task, model, features, batch_size, pad_id, bf16)
        groups = group_features(features)[: opts.dev_prompts]
        hyps = decode(model, tokenizer, [g["prompt_ids"] for g in groups], opts.model_copy(update={"decoding": "greedy"}),
                      batch_size, bf16)  # fmt: skip
        values = score((task.primary_metric,), hyps, [g["references"] for g in groups])
        return EvalResult(values=values, loss=loss, n=len(groups), primary=task.primary_metric)

    # ---- the learning gate
    def trivial_baselines(self, task: Task, train_rows: Sequence[Mapping[str, Any]],
                          eval_rows: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:  # fmt: skip
        """The two trivial outputs on the reported split's MRs (`copy_values`, `constant`: the gate's; module doc),
        each scored by bleu, nist and rouge_l (no Java), and which one the gate takes (the better in BLEU)."""
        from lorascope.metrics import nlg

        grouped = nlg.group_references([str(r[task.columns["prompt"]]) for r in eval_rows],
                                       [str(r[task.columns["reference"]]) for r in eval_rows])  # fmt: skip
        prompts, refs = list(grouped), list(grouped.values())
        constant = most_frequent([r for rs in refs for r in rs])
        outputs = {"copy_values": [copy_values(p) for p in prompts], "constant": [constant] * len(prompts)}
        scored = {name: score(("bleu", "nist", "rouge_l"), hyps, refs) for name, hyps in outputs.items()}
        best = max(scored, key=lambda k: scored[k]["bleu"])
        return {"n": len(prompts), "references": sum(len(r) for r in refs), "constant_text": constant,
                "copy_values": scored["copy_values"], "constant": scored["constant"],
                "gate": {"predictor": best, "bleu": scored[best]["bleu"]}}  # fmt: skip

    def gate(self, task: Task) -> GateFacts:
        return GateFacts(metric=task.primary_metric, units=self.units(task.primary_metric), trivial=TRIVIAL_TEXT,
                         trivial_value=None, best=1.0, label_kind="text")  # fmt: skip


# ------------------------------------------------------------------------------------------------ helpers
def parse_options(raw: Mapping[str, Any], at: str) -> GenerationOptions:
    """`tasks[].options` validated: ConfigError naming `<at>options.<field>`."""
    try:
        return GenerationOptions(**dict(raw))
    except ValidationError as exc:
        e = exc.errors()[0]
        field = ".".join(str(p) for p in e["loc"])
        raise ConfigError(f"{at}options.{field}: {e['msg']} (got {e.get('input')!r})") from None


def _options(task: Task) -> GenerationOptions:
    return task.options if isinstance(task.options, GenerationOptions) else GenerationOptions()


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {value!r} is not a non-empty text")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: {value!r} is not an integer")
    try:
        as_float = float(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not an integer") from None
    if not as_float.is_integer():
        raise ConfigError(f"{where}: {value!r} is not an integer")
    return int(as_float)


def _specials(tokenizer: Any) -> tuple[int, int]:
    from lorascope import data

    if data.is_encoder_tokenizer(tokenizer):
        raise ConfigError("generation runs on decoders only: this is an encoder's tokenizer")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ConfigError(f"tokenizer needs bos and eos ids (bos={bos}, eos={eos})")
    return int(bos), int(eos)


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return [list(map(int, x)) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _need_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None:
        raise ValueError("generation evaluate: the tokenizer is needed to decode outputs into text")
    return tokenizer


def copy_values(prompt: str) -> str:
    """The trivial output that copies the prompt's content: E2E's `attr[value]` values in order, joined by spaces
    ("name[Tara], city[Porto]" -> "Tara Porto"); a prompt without such pairs, whole."""
    values = [v.strip() for _, v in _ATTRIBUTE.findall(prompt) if v.strip()]
    return " ".join(values) if values else prompt.strip()


def most_frequent(texts: Sequence[str]) -> str:
    """The most frequent text, the first seen among the most frequent (stable, no randomness)."""
    counts: dict[str, int] = {}
    for t in texts:
        counts[t] = counts.get(t, 0) + 1
    return max(counts, key=lambda t: counts[t])  # dicts keep first-seen order; max keeps the first maximum


def group_features(features: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The MRs of encoded rows, in first-seen order, as the official script groups references (every row with the
    same prompt text, wherever it is): {"idx" (its first row's), "prompt", "prompt_ids" (`BOS prompt EOS`),
    "references"}."""
    groups: dict[str, dict[str, Any]] = {}
    for f in features:
        g = groups.setdefault(f["prompt"], {"idx": int(f["idx"]), "prompt": f["prompt"],
                                            "prompt_ids": list(f["input_ids"][: f["prompt_length"]]), "references": []})  # fmt: skip
        g["references"].append(f["reference"])
    return list(groups.values())


def score(names: Sequence[str], hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """The metrics `names` of one output (`metrics.nlg`; METEOR's jar and the PTB tokenizer start only when a metric
    needs them), BLEU, METEOR and the ROUGE-Ls as fractions (the script's form), NIST and CIDEr as they are."""
    from lorascope.metrics import nlg

    names = list(names)
    if any(n in JAVA_METRICS for n in names):
        values = nlg.e2e_metrics(hypotheses, references)
    else:
        functions = {"bleu": nlg.bleu, "nist": nlg.nist, "rouge_l": nlg.rouge_l}
        values = {n: functions[n](hypotheses, references) for n in names}
    return {n: float(values[n]) / (100.0 if n in PERCENT_METRICS else 1.0) for n in names}


def target_loss(ttype: GenerationType, task: Task, model: Any, features: Sequence[Mapping[str, Any]], batch_size: int,
                pad_id: int, bf16: bool) -> float:  # fmt: skip
    """Mean next-token cross-entropy (nats) per target token over `features`, teacher-forced: float64 sum of float32
    per-token losses, batches in length order, right-padded (causal attention: a row's losses do not depend on its
    batch), no label smoothing."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(features)), key=lambda i: (len(features[i]["input_ids"]), i))
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = ttype.collate(task, [features[i] for i in order[start : start + batch_size]], pad_id)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
                shifted = batch["labels"][:, 1:].to(device)
                keep = shifted != IGNORE
                nll = F.cross_entropy(out["logits"][:, :-1][keep].float(), shifted[keep], reduction="none")
                total += float(nll.double().sum())
                count += int(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: no target tokens")
    return total / count


def decode(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], opts: GenerationOptions, batch_size: int,
           bf16: bool = False) -> list[str]:  # fmt: skip
    """The output text for each prompt (ids `BOS prompt EOS`), in input order: `model.generate` without sampling
    (greedy, or beam search with the options' beam settings), at most `max_new_tokens`, the new tokens up to the first
    EOS decoded without special tokens and stripped. Batches hold prompts of one length only (no padding: an output
    does not depend on its batch), at most `batch_size` sequences (beam search: `batch_size // num_beams` prompts)."""
    import torch
    from transformers import GenerationConfig

    eos = int(tokenizer.eos_token_id)
    beam = opts.decoding == "beam"
    settings = dict(max_new_tokens=opts.max_new_tokens, do_sample=False, num_beams=opts.num_beams if beam else 1,
                    eos_token_id=eos, pad_token_id=int(tokenizer.pad_token_id), bos_token_id=int(tokenizer.bos_token_id))  # fmt: skip
    if beam:
        settings.update(length_penalty=opts.length_penalty, no_repeat_ngram_size=opts.no_repeat_ngram_size)
    config = GenerationConfig(**settings)
    per_batch = max(1, batch_size // opts.num_beams) if beam else max(1, batch_size)
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    out: list[str | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for length in sorted(by_length):
                rows = by_length[length]
                for start in range(0, len(rows), per_batch):
                    chunk = rows[start : start + per_batch]
                    ids = torch.tensor([list(prompts[i]) for i in chunk], dtype=torch.long, device=device)
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                   generation_config=config)  # fmt: skip
                    for j, i in enumerate(chunk):
                        new = generated[j, length:].tolist()
                        new = new[: new.index(eos)] if eos in new else new
                        out[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return [o if o is not None else "" for o in out]
