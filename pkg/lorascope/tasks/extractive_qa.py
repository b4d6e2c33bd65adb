"""Extractive question answering (SQuAD v2): a span head for decoders and encoders, with unanswerable questions.

Tasks it knows without a source: `squad-v2` (study task names allow no underscore; the Hugging Face `squad_v2` format
and dataset; `data.path: builtin` reads the SYNTHETIC SQuAD-v2-format fixture the package ships,
assets/squad_v2/README.md: not SQuAD).

  rows      one row per question, staged as {"id", "question", "context", "answers", "idx"}: `answers` is
            {"text": [...], "answer_start": [...]} with character offsets into `context` ({"text": [], ...} for an
            unanswerable question); every gold answer must be the context's text at its offset (checked at the door);
            `idx` the row number (SQuAD's ids are strings: kept as `id`)
  input     one or more WINDOWS per question (long contexts with a stride): the question (at most
            `options.max_question_tokens` tokens) and a window of context tokens filling `max_length`; consecutive
            windows overlap by `options.stride` context tokens. Every window carries, per position, the character
            span of its context token (`offsets`, None outside the context), so a predicted token span maps back to
            the context's characters.
              decoders  `BOS question EOS context-window EOS` from ids (the tokenizer adds no specials)
              encoders  the tokenizer's own pair template, `<s> question </s></s> context-window </s>` (RoBERTa)
  NO ANSWER the "null" position, where start and end both point for an unanswerable question (or a window that does
            not hold the answer). Encoders: the first token (`<s>`/`[CLS]`), as for SQuAD v2 everywhere. Decoders have
            no CLS position: under causal attention the first token sees only itself, so its logits cannot depend on
            the question or the context. OUR CONVENTION: decoders get an explicit no-answer token, the EOS closing
            the input, the LAST position of the window, which attends to the whole question and context window
            (`Window.null_pos`, in every feature as `null_pos`).
  head      `AutoModelForQuestionAnswering` (`qa_outputs`: hidden -> 2, start and end logits), PEFT task type
            QUESTION_ANS. THE TRAP: `LlamaForQuestionAnswering.from_pretrained` on a causal-LM checkpoint (transformers
            5.19 and 5.23) leaves the whole backbone randomly initialised (the class keeps its backbone under
            `transformer.*`, the checkpoint has `model.*`; the load report only says MISSING/UNEXPECTED). So a
            checkpoint that is not a QA model is loaded as: the QA class from its config, the backbone through
            `AutoModel.from_pretrained` and copied into the QA model's backbone (`load_qa_model`), every backbone key
            accounted for; a saved QA model (architectures `*ForQuestionAnswering`) reloads with `from_pretrained`,
            refused if any key is missing. tests/tasks/test_extractive_qa.py checks the hidden states equal the base
            model's.
  loss      cross-entropy of the start and of the end position over the window's own positions (padding masked),
            (start + end) / 2, the mean over the windows of the accumulated batch
  decoding  per window, the `options.n_best` highest start and end logits over context positions, spans with
            start <= end and at most `options.max_answer_tokens` tokens, scored start + end; per question the best
            span over all its windows and the null score = the smallest null score over its windows (HF's
            run_qa_beam convention). The no-answer probability is sigmoid(null - best span); the model's own decision
            (threshold 0.5) answers "" where the null score beats the best span
  metrics   the official SQuAD v2 rules (`lorascope.metrics.squad_v2`): exact and F1 (best over the gold answers),
            HasAns_* and NoAns_*, reported as fractions (a point is 0.01). `evaluate` applies the model's own decision
            (threshold 0.5) and adds the official `best_f1`/`best_exact` (threshold chosen on the split itself, an
            oracle). The REPORTED numbers: `reported_eval(task, dev, validation)` (the train phase): the no-answer threshold that
            maximises F1 on the DEV split (carved from train) applied to the validation split
            (`squad_v2.evaluate_with_dev_threshold`), `threshold` and `dev_best_f1` added. Primary metric: F1
  gate      the trivial predictor answers "no answer" everywhere: it scores the unanswerable share of the split
            (NoAns F1 1, HasAns F1 0); `trivial_baselines` computes it on the evaluated rows. H1a's margin is in F1
            points
  bench     none (the forward-pass bench is classification's); vLLM does not serve span heads
  extract   pools the question and the context positions of the first window (`pool_mask`: specials, BOS/EOS and the
            no-answer token left out), the same tokens for the base model and every cell
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from lorascope.errors import ConfigError, LorascopeError
from lorascope.metrics import squad_v2
from lorascope.schema import Strict
from lorascope.tasks.base import EvalResult, GateFacts, Task, TaskType, register

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SQUAD_V2 = "squad-v2"  # the task's name in a study (names are store keys and Kubernetes labels: no underscore)
HUB_DATASET, HUB_CONFIG = "rajpurkar/squad_v2", "squad_v2"
METRICS = ("f1", "exact", "HasAns_f1", "HasAns_exact", "NoAns_f1", "NoAns_exact")
COLUMNS = {"id": "id", "question": "question", "context": "context", "answers": "answers", "idx": "idx"}


class QAOptions(Strict):
    """`tasks[].options` of an extractive QA task."""

    stride: int = Field(128, ge=0, description="context tokens shared by consecutive windows of a long context")
    max_question_tokens: int = Field(64, ge=1, description="question tokens kept (the rest cut)")
    max_answer_tokens: int = Field(30, ge=1, description="longest span the decoding considers, in tokens")
    n_best: int = Field(20, ge=1, description="start and end candidates per window")


@dataclass(frozen=True)
class Window:
    """One model input of a question: ids, per position the context character span (None outside the context),
    the no-answer position, and which positions extraction pools."""

    input_ids: list[int]
    offsets: list[tuple[int, int] | None]
    null_pos: int
    pool_mask: list[int]


# ------------------------------------------------------------------------------------------------ windows
def _question_ids(tokenizer: Any, question: str, cap: int) -> tuple[list[int], str]:
    """The question's ids without specials, at most `cap`, and the question text those ids cover."""
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
    if len(ids) <= cap:
        return ids, question
    return ids[:cap], question[: offs[cap - 1][1]]


def context_budget(tokenizer: Any, n_question: int, max_length: int) -> int:
    """Context tokens per window beside a question of `n_question` tokens (decoders: BOS, EOS, EOS; encoders: the
    pair template's specials)."""
    from lorascope import data

    specials = data.special_counts(tokenizer)[1] if data.is_encoder_tokenizer(tokenizer) else 3
    return max_length - n_question - specials


def windows(tokenizer: Any, question: str, context: str, max_length: int, stride: int, max_question_tokens: int) -> list[Window]:
    """The windows of one question over its context: each holds the question and `context_budget` context tokens;
    window k starts at context token k * (budget - stride); the last one reaches the context's end."""
    from lorascope import data

    q_ids, q_text = _question_ids(tokenizer, question, max_question_tokens)
    budget = context_budget(tokenizer, len(q_ids), max_length)
    if budget <= stride:
        raise ConfigError(f"max_length {max_length}: {budget} context tokens per window beside a {len(q_ids)}-token "
                          f"question, not more than the stride {stride} (raise max_length or lower options.stride)")  # fmt: skip
    enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    c_ids, c_offs = list(enc["input_ids"]), [tuple(int(x) for x in o) for o in enc["offset_mapping"]]
    starts = [0]
    while starts[-1] + budget < len(c_ids):
        starts.append(starts[-1] + budget - stride)
    encoder = data.is_encoder_tokenizer(tokenizer)
    out = []
    for s in starts:
        ids, offs = c_ids[s : s + budget], c_offs[s : s + budget]
        if encoder:
            # the tokenizer's own pair template around the question and this window's context text
            # (the template from a one-token stand-in context, the window's own ids spliced in: a window is the
            # whole context's tokenisation cut, never a re-tokenised substring, whose BPE can differ at its edges)
            e = tokenizer(q_text, "x", return_offsets_mapping=True)
            seq = e.sequence_ids()
            first, n_ctx = seq.index(1), sum(1 for x in seq if x == 1)
            full = [*e["input_ids"][:first], *ids, *e["input_ids"][first + n_ctx :]]
            seq = [*seq[:first], *[1] * len(ids), *seq[first + n_ctx :]]
            offsets: list[tuple[int, int] | None] = [None] * len(full)
            for j, o in enumerate(offs):
                offsets[first + j] = o
            pool = [1 if x is not None else 0 for x in seq]
            out.append(Window(full, offsets, 0, pool))
        else:
            bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
            full = [bos, *q_ids, eos, *ids, eos]
            offsets = [None] * (len(q_ids) + 2) + list(offs) + [None]
            pool = [0] + [1] * len(q_ids) + [0] + [1] * len(ids) + [0]
            out.append(Window(full, offsets, len(full) - 1, pool))
    return out


def answer_tokens(offsets: Sequence[tuple[int, int] | None], start_char: int, end_char: int) -> tuple[int, int] | None:
    """The (start, end) positions of the answer's characters [start_char, end_char) in a window, or None when the
    window's context does not hold the whole answer. Start: the first context token that ends after start_char;
    end: the last that starts before end_char (tokens with an empty character span skipped)."""
    ctx = [(i, o) for i, o in enumerate(offsets) if o is not None and o[1] > o[0]]
    if not ctx or ctx[0][1][0] > start_char or ctx[-1][1][1] < end_char:
        return None
    start = next(i for i, o in ctx if o[1] > start_char)
    end = max(i for i, o in ctx if o[0] < end_char)
    return (start, end) if start <= end else None


def best_span(start: Sequence[float], end: Sequence[float], offsets: Sequence[tuple[int, int] | None], n_best: int,
              max_answer_tokens: int) -> tuple[float, int, int] | None:  # fmt: skip
    """(score, start, end) of the best context span of one window: among the `n_best` highest start and end logits at
    context positions, start <= end, at most `max_answer_tokens` tokens; score = start + end logit. None if none."""
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx:
        return None
    top_s = sorted(ctx, key=lambda i: -start[i])[:n_best]
    top_e = sorted(ctx, key=lambda i: -end[i])[:n_best]
    best = None
    for s in top_s:
        for e in top_e:
            if s <= e < s + max_answer_tokens:
                score = float(start[s]) + float(end[e])
                if best is None or score > best[0]:
                    best = (score, s, e)
    return best


# ------------------------------------------------------------------------------------------------ the model
def load_qa_model(model_dir: str | Path, dtype: Any, device: Any) -> Any:
    """The span-head model of `model_dir`. A saved QA model (config `architectures` ends in ForQuestionAnswering):
    `AutoModelForQuestionAnswering.from_pretrained`, refused if any weight is missing. Any other checkpoint (a causal
    LM, a masked LM): the QA class built from the config (a fresh `qa_outputs` head from torch's global RNG: seed
    before calling), its backbone's weights copied from `AutoModel.from_pretrained(model_dir)` (the trap in this
    module's docstring: never the QA class's `from_pretrained` on such a checkpoint), every key accounted for (an
    encoder's backbone built without the pooler the QA class lacks)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForQuestionAnswering

    from lorascope.models import loading

    model_dir = Path(model_dir)
    family = loading.model_family(model_dir)
    config = AutoConfig.from_pretrained(str(model_dir))
    if family.encoder:
        loading.check_encoder_config(config.to_dict(), f"model in {model_dir}")
    else:
        config.pad_token_id = loading._pad_id(config)
    archs = list(getattr(config, "architectures", None) or [])
    if archs and all(a.endswith("ForQuestionAnswering") for a in archs):
        with loading.expected_load_report_silenced():
            model, info = AutoModelForQuestionAnswering.from_pretrained(str(model_dir), config=config, dtype=dtype,
                                                                        output_loading_info=True)  # fmt: skip
        if info.get("missing_keys"):
            raise LorascopeError(f"QA model in {model_dir}: weights missing from the checkpoint: "
                                 f"{sorted(info['missing_keys'])[:5]}")  # fmt: skip
    else:
        model = AutoModelForQuestionAnswering.from_config(config, dtype=dtype)
        with loading.expected_load_report_silenced():
            extra = {"add_pooling_layer": False} if family.encoder else {}  # QA heads read every position, no pooler
            backbone = AutoModel.from_pretrained(str(model_dir), dtype=dtype, **extra)
        inner = getattr(model, model.base_model_prefix)
        with torch.no_grad():
            missing, unexpected = inner.load_state_dict(backbone.state_dict(), strict=False)
        if missing or unexpected:
            raise LorascopeError(f"model in {model_dir}: its backbone does not fit {type(model).__name__} (missing "
                                 f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")  # fmt: skip
        del backbone
    model.accepts_loss_kwargs = False  # the task type's loss divides by the accumulated batch (see classification)
    return model.to(device)


def forward_spans(model: Any, features: list[dict], batch_size: int, pad_id: int, bf16: bool) -> list[tuple[Any, Any]]:
    """(start logits, end logits) float32 of each feature over its own length, in input order
    (`base.batched_forward`, right-padded by `data.collate` on the input ids alone)."""
    from lorascope import data
    from lorascope.tasks.base import batched_forward

    def collate(batch: list[dict]) -> dict:
        return data.collate([{"input_ids": f["input_ids"]} for f in batch], pad_id)

    def take(outputs: Any, j: int, feature: dict) -> tuple[Any, Any]:
        n = len(feature["input_ids"])
        return outputs["start_logits"][j, :n].float().cpu(), outputs["end_logits"][j, :n].float().cpu()

    return batched_forward(model, features, batch_size, bf16, collate, take)


# ------------------------------------------------------------------------------------------------ the type
@register
class ExtractiveQAType(TaskType):
    name = "extractive_qa"
    title = "extractive question answering"
    roles = ("id", "question", "context", "answers", "idx")
    required_roles = ("question", "context", "answers")
    input_roles = ("question", "context")
    peft_task_type = "QUESTION_ANS"
    encoders = True
    bench = None
    vllm_servable = False
    options = QAOptions
    metric_units = {m: ("exact match points" if "exact" in m else "F1 points") for m in METRICS}

    # ---- the study
    def known_tasks(self) -> tuple[str, ...]:
        return (SQUAD_V2,)

    def resolve(self, config: Any, where: str) -> Task:
        at = f"{where}." if where else ""
        try:
            opts = QAOptions(**dict(getattr(config, "options", None) or {}))
        except Exception as exc:  # pydantic's ValidationError: name the field
            raise ConfigError(f"{at}options: {exc}".splitlines()[0] + f" ({'; '.join(str(exc).splitlines()[1:3])})") from None
        if opts.max_question_tokens + 4 + opts.stride >= config.max_length:
            raise ConfigError(f"{at}options: max_question_tokens {opts.max_question_tokens} + stride {opts.stride} "
                              f"leave no context tokens in max_length {config.max_length}")  # fmt: skip
        if getattr(config, "labels", None) is not None:
            raise ConfigError(f"{at}labels: an extractive QA task has no labels (its targets are answer spans)")
        source = getattr(config, "source", None)
        columns = getattr(config, "columns", None)
        if source is None:
            if config.name != SQUAD_V2:
                raise ConfigError(f"{at}name: {config.name!r}: the extractive_qa type knows {SQUAD_V2!r}; a task of "
                                  "your own names its `source` and `columns`")  # fmt: skip
            if columns is not None:
                raise ConfigError(f"{at}columns: task {SQUAD_V2!r} has its own columns; a column mapping goes with a "
                                  "`source` of your own")  # fmt: skip
            source_columns = None
        else:
            source_columns = dict(columns or {})
            unknown = sorted(set(source_columns) - set(self.roles))
            missing = [r for r in self.required_roles if r not in source_columns]
            if unknown or missing:
                raise ConfigError(f"{at}columns: an extractive QA task maps {list(self.roles)} ({', '.join(self.required_roles)} "
                                  f"required); unknown {unknown}, missing {missing}")  # fmt: skip
        task = Task(name=config.name, type=self.name, columns=dict(COLUMNS), label_names=(), num_labels=0,
                    validation_splits=("validation",), metrics=METRICS, primary_metric="f1",
                    max_length=config.max_length, paper_metric="f1", source=source, options=opts,
                    source_columns=source_columns)  # fmt: skip
        metric = getattr(config, "metric", None)
        if metric is not None:
            if metric not in METRICS:
                raise ConfigError(f"{at}metric: {metric!r} is not a metric of task {config.name!r}; it reports {', '.join(METRICS)}")
            from dataclasses import replace

            task = replace(task, primary_metric=metric)
        return task

    # ---- the data
    def check_rows(self, task: Task, rows: Sequence[Mapping[str, Any]], where: str) -> list[dict]:
        """Rows as staged: {"id", "question", "context", "answers", "idx"}; ConfigError naming `where` and the row for
        an empty split, a missing column, answers that are not {"text": [...], "answer_start": [...]} of equal length, a
        gold answer that is not the context's text at its offset, a repeated id."""
        if not rows:
            raise ConfigError(f"{where}: no rows (an empty split)")
        mapping = dict(task.source_columns or {r: r for r in ("id", "question", "context", "answers")})
        out, seen = [], set()
        for n, r in enumerate(rows):
            wanted = [mapping[k] for k in ("question", "context", "answers")]
            lacking = [c for c in wanted if c not in r]
            if lacking:
                raise ConfigError(f"{where}: row {n} lacks {lacking} (columns of task {task.name}: {wanted})")
            context, question, answers = r[mapping["context"]], r[mapping["question"]], r[mapping["answers"]]
            if not isinstance(context, str) or not context or not isinstance(question, str) or not question.strip():
                raise ConfigError(f"{where}: row {n}: question and context must be non-empty text")
            if not (isinstance(answers, Mapping) and isinstance(answers.get("text"), list)
                    and isinstance(answers.get("answer_start"), list)
                    and len(answers["text"]) == len(answers["answer_start"])):  # fmt: skip
                raise ConfigError(f"{where}: row {n}: answers must be {{'text': [...], 'answer_start': [...]}} of equal "
                                  f"length (got {answers!r:.80})")  # fmt: skip
            for text, start in zip(answers["text"], answers["answer_start"], strict=True):
                if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int) \
                        or context[start : start + len(text)] != text:  # fmt: skip
                    raise ConfigError(f"{where}: row {n}: answer {text!r} is not the context's text at offset {start!r}")
            qid = str(r[mapping["id"]]) if "id" in mapping and mapping["id"] in r else str(n)
            if qid in seen:
                raise ConfigError(f"{where}: id {qid!r} appears twice")
            seen.add(qid)
            out.append({"id": qid, "question": question, "context": context,
                        "answers": {"text": list(answers["text"]), "answer_start": list(answers["answer_start"])},
                        "idx": n})  # fmt: skip
        return out

    def local_files(self, task: Task, root: Path | None) -> dict[str, Path]:
        """`<root>/<task>/<split>.jsonl`; `root` None: the packaged SYNTHETIC fixture (assets/squad_v2/<split>.jsonl)."""
        if root is None:
            return {split: ASSETS / "squad_v2" / f"{split}.jsonl" for split in self.source_splits(task)}
        return super().local_files(task, root)

    def hub_source(self, task: Task, data: Any) -> tuple[str, str | None, str, dict[str, str]]:
        """SQuAD v2 on the hub: `rajpurkar/squad_v2` (config `squad_v2`) at the study's `data.revision`."""
        return HUB_DATASET, HUB_CONFIG, data.revision, {}

    # ---- model input
    def encode(self, task: Task, tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int) -> list[dict]:
        """The windows of every row (module docstring), each a feature: `idx`, `input_ids`, `attention_mask`,
        `labels` [start, end] (the null position twice when the window does not hold the first gold answer),
        `pool_mask` (question and context), `offsets`, `null_pos`, and for scoring `id`, `context`, `answers`."""
        opts = task.options or QAOptions()
        out = []
        for r in rows:
            answers = r["answers"]
            gold = (answers["answer_start"][0], answers["answer_start"][0] + len(answers["text"][0])) if answers["text"] else None
            for w in windows(tokenizer, r["question"], r["context"], max_length, opts.stride, opts.max_question_tokens):
                span = answer_tokens(w.offsets, *gold) if gold else None
                labels = list(span) if span else [w.null_pos, w.null_pos]
                out.append({"idx": int(r["idx"]), "id": str(r["id"]), "input_ids": w.input_ids,
                            "attention_mask": [1] * len(w.input_ids), "labels": labels, "pool_mask": w.pool_mask,
                            "offsets": w.offsets, "null_pos": w.null_pos, "context": r["context"],
                            "answers": list(answers["text"])})  # fmt: skip
        return out

    def extraction_features(self, task: Task, tokenizer: Any, rows: Sequence[Mapping[str, Any]], max_length: int) -> list[dict]:
        """The first window of each question (one pooled vector per example): `idx`, `input_ids`, `attention_mask`
        and `pool_mask` (question and context positions), what `data.collate` batches for the extract phase."""
        seen, out = set(), []
        for f in self.encode(task, tokenizer, rows, max_length):
            if f["idx"] not in seen:
                seen.add(f["idx"])
                out.append({k: f[k] for k in ("idx", "input_ids", "attention_mask", "pool_mask")})
        return out

    def collate(self, task: Task, features: list[dict], pad_id: int, pad_to: int | None = None) -> dict[str, Any]:
        """Right-padded `input_ids`, `attention_mask`; `labels` int64 [batch, 3]: start, end and the window's length
        (what `loss` masks beyond). No `pool_mask`: the Trainer hands every key but `labels` to the model's forward
        (extraction batches `extraction_features`)."""
        import torch

        from lorascope import data

        plain = [{k: f[k] for k in ("input_ids", "attention_mask") if k in f} for f in features]
        batch = data.collate(plain, pad_id, pad_to)
        if all("labels" in f for f in features):
            batch["labels"] = torch.tensor([[*f["labels"], len(f["input_ids"])] for f in features], dtype=torch.long)
        return batch

    # ---- the model
    def head_size(self, task: Task) -> int:
        return 2

    def load_model(self, task: Task, model_dir: str | Path, dtype: Any, device: Any) -> Any:
        return load_qa_model(model_dir, dtype, device)

    def meta_model(self, task: Task, config: Mapping[str, Any]) -> Any:
        import torch
        from transformers import AutoConfig, AutoModelForQuestionAnswering

        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            return AutoModelForQuestionAnswering.from_config(cfg)

    # ---- training and evaluation
    def loss(self, task: Task, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        """(CE(start) + CE(end)) / 2 summed over the micro-batch's windows, divided by the windows of the accumulated
        batch: the mean over the effective batch, the loss `evaluate` reports. `labels` are [start, end, length] per
        window (`collate`): the softmax runs over the window's own positions, never its padding (so the loss does not
        depend on the batch it is padded in). The Trainer's `num_items_in_batch` counts label entries: 3 per window."""
        import torch
        import torch.nn.functional as F

        start, end = outputs["start_logits"].float(), outputs["end_logits"].float()
        labels = labels.to(start.device)
        padding = torch.arange(start.shape[1], device=start.device)[None, :] >= labels[:, 2:3]
        start, end = start.masked_fill(padding, float("-inf")), end.masked_fill(padding, float("-inf"))
        loss = (F.cross_entropy(start, labels[:, 0], reduction="sum") + F.cross_entropy(end, labels[:, 1], reduction="sum")) / 2
        count = num_items_in_batch / labels.shape[1] if num_items_in_batch is not None else labels.shape[0]
        return loss / count

    def evaluate(self, task: Task, model: Any, features: list[dict], *, batch_size: int, pad_id: int,
                 bf16: bool = False, tokenizer: Any = None) -> EvalResult:  # fmt: skip
        """Official SQuAD v2 scores of the questions in `features` at the model's own no-answer decision (threshold
        0.5 on the no-answer probability), plus the official oracle `best_f1`/`best_exact` on this split; predictions
        per question carry `text` (the best span), `no_answer_prob` and `gold` for `reported_eval`."""
        import torch
        import torch.nn.functional as F

        opts = task.options or QAOptions()
        logits = forward_spans(model, features, batch_size, pad_id, bf16)
        losses = []
        per_q: dict[str, dict[str, Any]] = {}
        for f, (s, e) in zip(features, logits, strict=True):
            lab = torch.tensor(f["labels"])
            losses.append(float((F.cross_entropy(s.double()[None], lab[:1]) + F.cross_entropy(e.double()[None], lab[1:])) / 2))
            q = per_q.setdefault(f["id"], {"idx": f["idx"], "gold": f["answers"], "null": math.inf, "best": None})
            q["null"] = min(q["null"], float(s[f["null_pos"]] + e[f["null_pos"]]))
            span = best_span(s.tolist(), e.tolist(), f["offsets"], opts.n_best, opts.max_answer_tokens)
            if span is not None and (q["best"] is None or span[0] > q["best"][0]):
                q["best"] = (span[0], f["context"][f["offsets"][span[1]][0] : f["offsets"][span[2]][1]])
        predictions = []
        for qid, q in per_q.items():
            text = q["best"][1] if q["best"] else ""
            prob = 1.0 if q["best"] is None else 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, q["null"] - q["best"][0]))))
            predictions.append({"idx": q["idx"], "id": qid, "label": q["gold"], "gold": q["gold"], "text": text,
                                "no_answer_prob": prob, "pred": "" if prob > 0.5 else text})  # fmt: skip
        values = score_predictions(predictions, threshold=0.5)
        return EvalResult(values=values, loss=sum(losses) / len(losses), n=len(predictions), primary=task.primary_metric,
                          predictions=predictions)  # fmt: skip

    def reported_eval(self, task: Task, dev: EvalResult, validation: EvalResult) -> EvalResult:
        """The reported numbers: validation scored with the no-answer threshold that maximises F1 on DEV
        (`squad_v2.evaluate_with_dev_threshold`); `threshold` and `dev_best_f1` (a fraction) added, predictions'
        `pred` re-decided at that threshold."""
        gold = lambda r: {p["id"]: p["gold"] for p in r.predictions}  # noqa: E731
        texts = lambda r: {p["id"]: p["text"] for p in r.predictions}  # noqa: E731
        probs = lambda r: {p["id"]: p["no_answer_prob"] for p in r.predictions}  # noqa: E731
        out = squad_v2.evaluate_with_dev_threshold(gold(dev), texts(dev), probs(dev), gold(validation),
                                                   texts(validation), probs(validation))  # fmt: skip
        values = _fractions(out)
        values["threshold"], values["dev_best_f1"] = float(out["threshold"]), out["dev_best_f1"] / 100.0
        preds = [{**p, "pred": "" if p["no_answer_prob"] > out["threshold"] else p["text"]} for p in validation.predictions]
        preds = with_question_scores(preds, out["threshold"])
        return EvalResult(values=values, loss=validation.loss, n=validation.n, primary=validation.primary, predictions=preds)

    # ---- the learning gate
    def trivial_baselines(self, task: Task, train_rows: Sequence[Mapping[str, Any]],
                          eval_rows: Sequence[Mapping[str, Any]], seed: int) -> dict[str, Any]:  # fmt: skip
        """"No answer" everywhere, scored by the official rules on the evaluated rows."""
        gold = {str(r["id"]): list(r["answers"]["text"]) for r in eval_rows}
        scores = squad_v2.evaluate(gold, dict.fromkeys(gold, ""))
        return {"n": len(gold), "unanswerable": sum(1 for a in gold.values() if not a), "no_answer": _fractions(scores)}

    def gate(self, task: Task) -> GateFacts:
        return GateFacts(metric=task.primary_metric, units=self.units(task.primary_metric),
                         trivial='"no answer" everywhere (scores the unanswerable share of the split)',
                         trivial_value=None, best=1.0, label_kind="span")  # fmt: skip


def _fractions(scores: Mapping[str, float]) -> dict[str, float]:
    """The official percentages as fractions (a point is 0.01), the metrics the task reports and the oracle best_*."""
    keys = (*METRICS, "best_f1", "best_exact")
    return {k: float(scores[k]) / 100.0 for k in keys if k in scores}


def with_question_scores(predictions: Sequence[Mapping[str, Any]], threshold: float) -> list[dict]:
    """The predictions with each question's official scores at `threshold` (`scores`: {"exact", "f1"}, fractions)
    and the trivial predictor's ("no answer" everywhere, `trivial_scores`: {"no_answer": {"exact", "f1"}}): their
    means are the reported exact/f1 and the sanity baseline, and the drift analysis bootstraps them over questions
    (`analysis.score_bootstrap`) for the learning gate and H1a."""
    gold = {p["id"]: p["gold"] for p in predictions}
    exact, f1 = squad_v2.question_scores(gold, {p["id"]: p["text"] for p in predictions},
                                         {p["id"]: p["no_answer_prob"] for p in predictions}, threshold)  # fmt: skip
    t_exact, t_f1 = squad_v2.question_scores(gold, dict.fromkeys(gold, ""))
    return [{**p, "scores": {"exact": float(exact[p["id"]]), "f1": float(f1[p["id"]])},
             "trivial_scores": {"no_answer": {"exact": float(t_exact[p["id"]]), "f1": float(t_f1[p["id"]])}}}
            for p in predictions]  # fmt: skip


def score_predictions(predictions: Sequence[Mapping[str, Any]], threshold: float) -> dict[str, float]:
    """Official SQuAD v2 scores (fractions) of per-question predictions ({"id", "gold", "text", "no_answer_prob"}) at
    `threshold`, with the official oracle best_f1/best_exact of the split; `threshold` added."""
    gold = {p["id"]: p["gold"] for p in predictions}
    out = squad_v2.evaluate(gold, {p["id"]: p["text"] for p in predictions},
                            {p["id"]: p["no_answer_prob"] for p in predictions}, threshold=threshold)  # fmt: skip
    return {**_fractions(out), "threshold": float(threshold)}
