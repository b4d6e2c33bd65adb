"""SQuAD v2.0 scoring against values worked out by hand from the official rules (evaluate-v2.0.py).

Each expected number has its arithmetic in a comment: normalise (lower, drop punctuation, drop a/an/the, squeeze
spaces), EM/F1 as the max over gold answers, unanswerable questions scored against "", abstain where the no-answer
probability is strictly above the threshold, and the official threshold sweep.
"""

from __future__ import annotations

import pytest

from lorascope.metrics import squad_v2 as sq


# ------------------------------------------------------------------------------------------------ one answer
@pytest.mark.parametrize(("text", "expected"), [
    ("The  Cat, sat!", "cat sat"),      # lower -> drop ",!" -> "the  cat sat" -> drop "the" -> squeeze
    ("an apple a day", "apple day"),    # a/an/the only as whole words
    ("theatre", "theatre"),             # "the" inside a word stays
    ("A.", ""),                         # "a." -> "a" -> "" (an answer that is only an article is empty)
    ("Eiffel-Tower", "eiffeltower"),    # punctuation is removed, not replaced by a space
])  # fmt: skip
def test_normalize_answer(text, expected):
    assert sq.normalize_answer(text) == expected


def test_exact_match_and_f1_by_hand():
    assert sq.exact_match("The Cat.", "cat") == 1
    assert sq.exact_match("cat", "cats") == 0
    # gold "the cat sat on the mat" -> [cat, sat, on, mat]; pred "cat on a mat" -> [cat, on, mat]
    # common 3: P = 3/3, R = 3/4, F1 = 2 * 1 * 0.75 / 1.75 = 6/7
    assert sq.token_f1("the cat sat on the mat", "cat on a mat") == pytest.approx(6 / 7)
    # repeated tokens count with multiplicity: common = min(2, 1) = 1, P = 1/1, R = 1/2, F1 = 2 * 0.5 / 1.5 = 2/3
    assert sq.token_f1("paris paris", "paris") == pytest.approx(2 / 3)
    assert sq.token_f1("oslo", "rome") == 0.0
    # an empty side: 1 if both are empty (a right "no answer"), else 0
    assert sq.token_f1("", "") == 1.0
    assert sq.token_f1("", "paris") == 0.0
    assert sq.token_f1("paris", "") == 0.0
    assert sq.token_f1("the", "a") == 1.0  # both normalise to no tokens


def test_score_is_the_max_over_gold_answers():
    # "baker" equals the second gold exactly -> EM 1, F1 1
    assert sq.score_question(["a baker in paris", "baker"], "baker") == (1, 1.0)
    # pred [council, in, rome]; gold 1 [council, in, oslo]: common 2, P = R = 2/3, F1 = 2/3;
    # gold 2 [council]: common 1, P = 1/3, R = 1, F1 = 2 * (1/3) / (4/3) = 1/2. Max = 2/3 (from gold 1), EM 0
    em, f1 = sq.score_question(["the council in oslo", "council"], "council in rome")
    assert em == 0 and f1 == pytest.approx(2 / 3)
    # unanswerable: the only gold is "", so only an empty prediction scores
    assert sq.score_question([], "") == (1, 1.0)
    assert sq.score_question([], "paris") == (0, 0.0)
    # golds that normalise to "" are dropped; none left -> scored as unanswerable
    assert sq.gold_answers(["the", "."]) == [""]
    assert sq.score_question(["the", "."], "") == (1, 1.0)


# ------------------------------------------------------------------------------------------------ a split
GOLD = {
    "q1": ["alice"],                 # answerable
    "q2": ["a baker", "baker"],      # answerable, two golds
    "q3": ["lisbon"],                # answerable
    "q4": [],                        # unanswerable
    "q5": [],                        # unanswerable
}  # fmt: skip
PREDICTIONS = {"q1": "alice", "q2": "the baker in paris", "q3": "", "q4": "", "q5": "oslo"}
# per question (EM, F1): q1 (1, 1); q2: pred [baker, in, paris] vs gold [baker]: common 1, P = 1/3, R = 1,
# F1 = 2 * (1/3) / (4/3) = 0.5, EM 0 -> (0, 0.5); q3 answered "" -> (0, 0); q4 "" = "" -> (1, 1); q5 "oslo" -> (0, 0)
NO_ANSWER_PROBS = {"q1": 0.1, "q2": 0.4, "q3": 0.9, "q4": 0.8, "q5": 0.6}


def test_evaluate_without_probabilities():
    out = sq.evaluate(GOLD, PREDICTIONS)
    assert out["total"] == 5
    assert out["exact"] == pytest.approx(100 * (1 + 0 + 0 + 1 + 0) / 5)  # 40
    assert out["f1"] == pytest.approx(100 * (1 + 0.5 + 0 + 1 + 0) / 5)  # 50
    assert (out["HasAns_total"], out["NoAns_total"]) == (3, 2)
    assert out["HasAns_exact"] == pytest.approx(100 * 1 / 3)  # q1 only
    assert out["HasAns_f1"] == pytest.approx(100 * 1.5 / 3)  # 1 + 0.5 + 0
    assert out["NoAns_exact"] == pytest.approx(50) and out["NoAns_f1"] == pytest.approx(50)  # q4 right, q5 wrong
    assert "best_f1" not in out  # no probabilities, no sweep (as the official script without --na-prob-file)


def test_threshold_abstains_strictly_above_it():
    # threshold 0.5: q3 (0.9), q4 (0.8), q5 (0.6) abstain. q3 answerable -> 0; q4, q5 unanswerable -> 1 each.
    # q1 (0.1), q2 (0.4) keep their scores.
    out = sq.evaluate(GOLD, PREDICTIONS, NO_ANSWER_PROBS, threshold=0.5)
    assert out["exact"] == pytest.approx(100 * (1 + 0 + 0 + 1 + 1) / 5)  # 60
    assert out["f1"] == pytest.approx(100 * (1 + 0.5 + 0 + 1 + 1) / 5)  # 70
    assert out["NoAns_exact"] == pytest.approx(100.0) and out["HasAns_f1"] == pytest.approx(50.0)
    # exactly at the threshold answers: q2 (0.4) at threshold 0.4 keeps its own F1 0.5
    at = sq.apply_no_answer_threshold({"q2": 0.5}, {"q2": 0.4}, {"q2": True}, 0.4)
    assert at == {"q2": 0.5}


def test_best_threshold_sweep_by_hand():
    # start: everyone abstains -> 2 (the two unanswerable questions), threshold 0.0. In ascending probability:
    # F1:  q1 0.1 answerable +1 -> 3 (best, t 0.1); q2 0.4 +0.5 -> 3.5 (best, t 0.4); q5 0.6 unanswerable with
    #      text "oslo" -1 -> 2.5; q4 0.8 unanswerable, empty text, 0 -> 2.5; q3 0.9 answerable +0 -> 2.5.
    #      best_f1 = 100 * 3.5 / 5 = 70 at 0.4
    # EM:  q1 +1 -> 3 (best, t 0.1); q2 +0 -> 3 (not better); q5 -1 -> 2; q4, q3 +0. best_exact = 100 * 3 / 5 = 60 at 0.1
    out = sq.evaluate(GOLD, PREDICTIONS, NO_ANSWER_PROBS)
    assert out["best_f1"] == pytest.approx(70.0) and out["best_f1_thresh"] == 0.4
    assert out["best_exact"] == pytest.approx(60.0) and out["best_exact_thresh"] == 0.1
    # and applying the F1 threshold reproduces it: abstain q5, q4, q3 -> F1 1 + 0.5 + 0 + 1 + 1 = 3.5 of 5
    assert sq.evaluate(GOLD, PREDICTIONS, NO_ANSWER_PROBS, threshold=0.4)["f1"] == pytest.approx(70.0)


def test_best_threshold_with_tied_probabilities_is_the_official_quirk():
    # a (answerable, right) and b (unanswerable, answered "x") share p = 0.5, a first. Start 1 (b abstains).
    # a: +1 -> 2 (best, t 0.5); b: -1 -> 1. best = 100 * 2 / 2 = 100 at 0.5 ...
    gold, preds, probs = {"a": ["oslo"], "b": []}, {"a": "oslo", "b": "x"}, {"a": 0.5, "b": 0.5}
    out = sq.evaluate(gold, preds, probs)
    assert out["best_f1"] == pytest.approx(100.0) and out["best_f1_thresh"] == 0.5
    # ... but at threshold 0.5 neither abstains (0.5 > 0.5 is false): a 1, b 0 -> 50
    assert sq.evaluate(gold, preds, probs, threshold=0.5)["f1"] == pytest.approx(50.0)


def test_threshold_chosen_on_dev_is_applied_to_validation():
    # dev: d1 answerable right p 0.2; d3 answerable right p 0.5; d2 unanswerable answered "rome" p 0.7.
    # sweep F1: start 1; d1 +1 -> 2 (t 0.2); d3 +1 -> 3 (t 0.5); d2 -1 -> 2. dev best = 100 * 3 / 3 at 0.5
    dev_gold = {"d1": ["paris"], "d2": [], "d3": ["dog"]}
    dev_preds = {"d1": "paris", "d2": "rome", "d3": "dog"}
    dev_probs = {"d1": 0.2, "d2": 0.7, "d3": 0.5}
    # validation at 0.5: v1 right but p 0.6 > 0.5 abstains -> 0; v2 unanswerable answered "cat" at p 0.45 -> 0;
    # v3 "cat" vs gold "a cat" -> both "cat" -> 1; v4 unanswerable, "" at p 0.3 -> 1. EM = F1 = 100 * 2 / 4 = 50
    gold = {"v1": ["oslo"], "v2": [], "v3": ["a cat"], "v4": []}
    preds = {"v1": "oslo", "v2": "cat", "v3": "cat", "v4": ""}
    probs = {"v1": 0.6, "v2": 0.45, "v3": 0.1, "v4": 0.3}
    out = sq.evaluate_with_dev_threshold(dev_gold, dev_preds, dev_probs, gold, preds, probs)
    assert out["threshold"] == 0.5 and out["dev_best_f1"] == pytest.approx(100.0)
    assert out["exact"] == pytest.approx(50.0) and out["f1"] == pytest.approx(50.0)
    # validation's own (optimistic) sweep: start 2; v3 0.1 +1 -> 3 (t 0.1); v4 0.3 +0; v2 0.45 -1 -> 2;
    # v1 0.6 +1 -> 3 (not better). best_f1 = 100 * 3 / 4 = 75 at 0.1: 25 points above the dev-chosen threshold
    assert out["best_f1"] == pytest.approx(75.0) and out["best_f1_thresh"] == 0.1


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="no prediction for 1 of 5"):
        sq.evaluate(GOLD, {k: v for k, v in PREDICTIONS.items() if k != "q3"})
    with pytest.raises(ValueError, match="no no-answer probability"):
        sq.evaluate(GOLD, PREDICTIONS, {"q1": 0.1})
    with pytest.raises(ValueError, match="at least one question"):
        sq.evaluate({}, {})
    # only answerable questions: no NoAns_* keys (as official)
    assert "NoAns_total" not in sq.evaluate({"q1": ["alice"]}, {"q1": "alice", "extra": "ignored"})
