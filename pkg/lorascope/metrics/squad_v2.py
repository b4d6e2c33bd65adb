"""SQuAD v2.0 scoring: the official evaluation rules, in plain Python.

Mirrors "Official evaluation script for SQuAD version 2.0" (evaluate-v2.0.py, Rajpurkar, Jia & Liang 2018,
"Know What You Don't Know: Unanswerable Questions for SQuAD", ACL), in the copy the Hugging Face `evaluate`
library runs (huggingface/evaluate, metrics/squad_v2/compute_score.py). `evaluate.load("squad_v2")` downloads that
script at run time, which our offline pods cannot, so the rules live here, pinned by hand-computed tests
(tests/metrics/test_squad_v2.py).

The rules, function by function:
- `normalize_answer`: lower case, drop ASCII punctuation (`string.punctuation`), drop the articles a/an/the as whole
  words, collapse whitespace.
- `exact_match` / `token_f1`: on normalised answers; F1 over the bag of normalised tokens. If either side is empty
  (no answer), F1 is 1 when both are empty and 0 otherwise.
- `score_question`: the maximum over the gold answers. Gold answers that normalise to "" are dropped; a question
  with none left (an unanswerable question) has the single gold answer "", so only an empty prediction scores.
- `apply_no_answer_threshold`: a question whose no-answer probability is strictly above the threshold counts as
  answered "no answer": 1 if it is unanswerable, else 0 (whatever the predicted text was).
- `find_best_threshold`: the official sweep over the sorted no-answer probabilities (`best_exact`, `best_f1`).
- `evaluate`: `exact`, `f1`, `total`, and the same over answerable (`HasAns_*`) and unanswerable (`NoAns_*`)
  questions, all in percent; with no-answer probabilities also `best_*` and `best_*_thresh`.

Our rule beyond the official script (`evaluate_with_dev_threshold`): the official `best_f1` picks the threshold on
the very split it reports, an optimistic number. We choose ONE threshold on the DEV split (carved from train), by
F1, and apply it to the validation split for both exact match and F1; `best_*` on validation are still reported,
named as the official script names them, for comparison with published numbers.

Where we differ from the official script, deliberately: a question without a prediction raises (the official
script prints "Missing prediction" and leaves the question out of the overall total, and then fails in the
HasAns/NoAns split); a no-answer probability missing for a question raises (the official script fails with a
KeyError). Predictions for ids that are not in the gold set are ignored, as there.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

__all__ = [
    "answer_tokens",
    "apply_no_answer_threshold",
    "evaluate",
    "evaluate_with_dev_threshold",
    "exact_match",
    "find_best_threshold",
    "gold_answers",
    "normalize_answer",
    "raw_scores",
    "score_question",
    "token_f1",
]

ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
PUNCTUATION = frozenset(string.punctuation)

Gold = Mapping[str, Sequence[str]]  # question id -> gold answer texts ([] for an unanswerable question)


def normalize_answer(text: str) -> str:
    """Lower case, remove punctuation, remove the articles a/an/the, fix whitespace (in this order, as official).

    "The  Eiffel-Tower!" -> "eiffeltower"; "an apple" -> "apple"; "A." -> "".
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in PUNCTUATION)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """The normalised answer split on whitespace; [] for an empty answer."""
    return normalize_answer(text).split() if text else []


def exact_match(gold: str, prediction: str) -> int:
    """1 if the normalised strings are equal, else 0."""
    return int(normalize_answer(gold) == normalize_answer(prediction))


def token_f1(gold: str, prediction: str) -> float:
    """F1 of the normalised token bags: P = common / |pred|, R = common / |gold|, F1 = 2PR / (P + R), where
    common = sum over tokens of min(count in gold, count in pred). If either side has no tokens: 1.0 when both
    have none (a correctly predicted "no answer"), else 0.0."""
    gold_tokens, pred_tokens = answer_tokens(gold), answer_tokens(prediction)
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    common = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Sequence[str]) -> list[str]:
    """The gold answers a prediction is scored against: those that do not normalise to "", or [""] if none is left
    (an unanswerable question: only the empty answer is right)."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def score_question(answers: Sequence[str], prediction: str) -> tuple[int, float]:
    """(exact match, F1) of one prediction: the maximum over `gold_answers(answers)`, each taken separately."""
    golds = gold_answers(answers)
    return max(exact_match(g, prediction) for g in golds), max(token_f1(g, prediction) for g in golds)


def _checked(gold: Gold, predictions: Mapping[str, str]) -> None:
    if not gold:
        raise ValueError("SQuAD v2 scoring needs at least one question")
    missing = [qid for qid in gold if qid not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} of {len(gold)} questions (first: {missing[:3]})")


def _has_answer(gold: Gold) -> dict[str, bool]:
    """Official `make_qid_to_has_ans`: a question is answerable if its gold answer list is not empty (raw texts,
    before normalisation)."""
    return {qid: bool(answers) for qid, answers in gold.items()}


def raw_scores(gold: Gold, predictions: Mapping[str, str]) -> tuple[dict[str, int], dict[str, float]]:
    """Per question (exact match, F1) of the predicted texts, before any no-answer threshold."""
    _checked(gold, predictions)
    exact, f1 = {}, {}
    for qid, answers in gold.items():
        exact[qid], f1[qid] = score_question(answers, predictions[qid])
    return exact, f1


def apply_no_answer_threshold(scores: Mapping[str, float], no_answer_probs: Mapping[str, float],
                              has_answer: Mapping[str, bool], threshold: float) -> dict[str, float]:  # fmt: skip
    """Scores after abstaining where the no-answer probability is strictly above `threshold`: an abstention scores
    1.0 on an unanswerable question and 0.0 on an answerable one; other questions keep their score."""
    return {qid: float(not has_answer[qid]) if no_answer_probs[qid] > threshold else float(score)
            for qid, score in scores.items()}  # fmt: skip


def question_scores(gold: Gold, predictions: Mapping[str, str], no_answer_probs: Mapping[str, float] | None = None,
                    threshold: float = 1.0) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """Per question (exact match, F1) as `evaluate` averages them: the raw scores, abstentions (no-answer probability
    strictly above `threshold`) scoring 1.0 on an unanswerable question and 0.0 on an answerable one. The mean over
    the questions is `evaluate`'s exact/f1 (a fraction, not percent): the per-example scores the drift analysis
    bootstraps."""
    exact_raw, f1_raw = raw_scores(gold, predictions)
    probs = {qid: 0.0 for qid in gold} if no_answer_probs is None else no_answer_probs
    has_answer = _has_answer(gold)
    return (apply_no_answer_threshold(exact_raw, probs, has_answer, threshold),
            apply_no_answer_threshold(f1_raw, probs, has_answer, threshold))


def find_best_threshold(predictions: Mapping[str, str], scores: Mapping[str, float],
                        no_answer_probs: Mapping[str, float], has_answer: Mapping[str, bool]) -> tuple[float, float]:  # fmt: skip
    """The official sweep (`find_best_thresh`): returns (best score in percent, threshold).

    Start with every question abstaining (score = number of unanswerable questions, threshold 0.0). Walk the
    questions in ascending no-answer probability (a stable sort: ties keep the order of `no_answer_probs`), letting
    each one answer in turn: an answerable question adds its score, an unanswerable one with a non-empty prediction
    subtracts 1. Whenever the running total beats the best so far (strictly), remember it and take that question's
    probability as the threshold. Percent = 100 * best / len(scores).

    A quirk kept from the official script: the threshold is one of the probabilities, and a question at exactly the
    threshold answers (`apply_no_answer_threshold` abstains only above it), so where probabilities tie, the best
    total can be one that applying the returned threshold does not reproduce (tests pin an example).
    """
    best = current = float(sum(1 for qid in scores if not has_answer[qid]))
    best_threshold = 0.0
    for qid in sorted(no_answer_probs, key=lambda q: no_answer_probs[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best, best_threshold = current, no_answer_probs[qid]
    return 100.0 * best / len(scores), best_threshold


def _summary(exact: Mapping[str, float], f1: Mapping[str, float], qids: Sequence[str]) -> dict[str, float]:
    n = len(qids)
    return {"exact": 100.0 * sum(exact[q] for q in qids) / n, "f1": 100.0 * sum(f1[q] for q in qids) / n, "total": n}


def evaluate(gold: Gold, predictions: Mapping[str, str], no_answer_probs: Mapping[str, float] | None = None,
             threshold: float = 1.0) -> dict[str, float]:  # fmt: skip
    """The official SQuAD v2 evaluation of one split, in percent.

    Args:
        gold: question id -> gold answer texts ([] for unanswerable).
        predictions: question id -> predicted text ("" for "no answer").
        no_answer_probs: question id -> the model's probability that there is no answer (None: all 0.0, as the
            official script without --na-prob-file, so the threshold never fires and no best_* are computed).
        threshold: abstain where the probability is strictly above it (official default 1.0: never).

    Returns:
        exact, f1, total; HasAns_exact/f1/total if any question is answerable; NoAns_exact/f1/total if any is not;
        with `no_answer_probs`: best_exact, best_exact_thresh, best_f1, best_f1_thresh (chosen on THIS split).
    """
    exact_raw, f1_raw = raw_scores(gold, predictions)
    probs = {qid: 0.0 for qid in gold} if no_answer_probs is None else dict(no_answer_probs)
    missing = [qid for qid in gold if qid not in probs]
    if missing:
        raise ValueError(f"no no-answer probability for {len(missing)} questions (first: {missing[:3]})")
    has_answer = _has_answer(gold)
    exact = apply_no_answer_threshold(exact_raw, probs, has_answer, threshold)
    f1 = apply_no_answer_threshold(f1_raw, probs, has_answer, threshold)
    out = _summary(exact, f1, list(gold))
    for prefix, qids in (("HasAns", [q for q in gold if has_answer[q]]), ("NoAns", [q for q in gold if not has_answer[q]])):
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _summary(exact, f1, qids).items()})
    if no_answer_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_threshold(predictions, exact_raw, probs, has_answer)
        out["best_f1"], out["best_f1_thresh"] = find_best_threshold(predictions, f1_raw, probs, has_answer)
    return out


def evaluate_with_dev_threshold(dev_gold: Gold, dev_predictions: Mapping[str, str],
                                dev_no_answer_probs: Mapping[str, float], gold: Gold,
                                predictions: Mapping[str, str], no_answer_probs: Mapping[str, float]) -> dict[str, float]:  # fmt: skip
    """Our reported SQuAD v2 numbers: the no-answer threshold that maximises F1 on the DEV split
    (`find_best_threshold`, official sweep) applied to the validation split (`evaluate(..., threshold=...)`).

    Returns `evaluate`'s dictionary for validation (its best_* are validation's own oracle numbers, kept for
    comparison with the official script) plus `threshold` (the one applied) and `dev_best_f1` (F1 on dev at it).
    """
    _, dev_f1 = raw_scores(dev_gold, dev_predictions)
    dev_best_f1, threshold = find_best_threshold(dev_predictions, dev_f1, dev_no_answer_probs, _has_answer(dev_gold))
    out = evaluate(gold, predictions, no_answer_probs, threshold=threshold)
    out["threshold"], out["dev_best_f1"] = threshold, dev_best_f1
    return out
