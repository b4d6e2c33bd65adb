"""GLUE metrics against hand-computed values, and the task table against GLUE's own layout."""

from __future__ import annotations

import math

import pytest

from lorascope.errors import ConfigError
from lorascope.metrics import glue

# TP: positions 0, 2, 5 (3); FN: 1; TN: 3; FP: 4
LABELS = [1, 1, 1, 0, 0, 1]
PREDS = [1, 0, 1, 0, 1, 1]


def test_accuracy_and_f1_by_hand():
    assert glue.accuracy(LABELS, PREDS) == pytest.approx(4 / 6)  # right at 0, 2, 3, 5
    assert glue.binary_f1(LABELS, PREDS) == pytest.approx(6 / 8)  # 2*3 / (2*3 + 1 + 1)
    assert glue.binary_f1([0, 0], [0, 0]) == 0.0  # no positive anywhere: 0, not nan
    assert glue.binary_f1([1, 0], [0, 0]) == 0.0  # 0 / (0 + 0 + 1)


def test_matthews_by_hand():
    # binary: (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (3*1 - 1*1) / sqrt(4*4*2*2) = 2/8
    assert glue.matthews_correlation(LABELS, PREDS) == pytest.approx(0.25)
    # three classes: labels [0,1,2,0], preds [0,2,2,1]. C = [[1,1,0],[0,0,1],[0,0,1]], s = 4, c = trace = 2,
    # t (row sums) = [2,1,1], p (column sums) = [1,1,2]; p.t = 2+1+2 = 5; num = 2*4 - 5 = 3;
    # s^2 - p.p = 16 - 6 = 10, s^2 - t.t = 16 - 6 = 10 -> MCC = 3 / sqrt(100) = 0.3
    assert glue.matthews_correlation([0, 1, 2, 0], [0, 2, 2, 1]) == pytest.approx(0.3)
    assert glue.matthews_correlation([1, 0, 1], [1, 1, 1]) == 0.0  # one predicted class: denominator 0
    assert glue.matthews_correlation([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


def test_correlations_by_hand():
    # y = [1,2,3,4] (mean 2.5), p = [2,4,5,9] (mean 5): deviations [-1.5,-.5,.5,1.5] and [-3,-1,0,4];
    # sum of products = 4.5 + .5 + 0 + 6 = 11; sums of squares 5 and 26 -> r = 11 / sqrt(130)
    assert glue.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    # ties get their average rank: y = [1,2,2,3] -> ranks [1, 2.5, 2.5, 4]; p = [10,20,40,30] -> [1,2,4,3];
    # centred ranks [-1.5,0,0,1.5] and [-1.5,-.5,1.5,.5]: products 2.25 + 0 + 0 + .75 = 3; squares 4.5 and 5
    # -> rho = 3 / sqrt(22.5)
    assert glue.spearman([1, 2, 2, 3], [10, 20, 40, 30]) == pytest.approx(3 / math.sqrt(22.5))
    assert glue.spearman([1, 2, 3], [1, 8, 27]) == pytest.approx(1.0)  # monotone, not linear
    assert math.isnan(glue.pearson([1, 2, 3], [2, 2, 2]))  # constant prediction


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="same length"):
        glue.accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="no examples"):
        glue.binary_f1([], [])


def test_task_table_is_glue():
    assert glue.GLUE_TASKS.names() == ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
    cola, stsb, mnli, qqp = (glue.glue_task(n) for n in ("cola", "stsb", "mnli", "qqp"))
    assert cola.columns == ("sentence",) and cola.primary_metric == "matthews_correlation" and not cola.is_pair
    assert stsb.is_regression and stsb.num_labels == 1 and stsb.label_range == (0.0, 5.0)
    assert stsb.metrics == ("pearson", "spearman") and stsb.primary_metric == "pearson"
    assert mnli.validation_splits == ("validation_matched", "validation_mismatched") and mnli.num_labels == 3
    assert mnli.columns == ("premise", "hypothesis") and mnli.label_names[2] == "contradiction"
    assert qqp.columns == ("question1", "question2") and qqp.metrics == ("accuracy", "f1")
    assert glue.glue_task("qnli").columns == ("question", "sentence")
    assert glue.glue_task("wnli").label_names == ("not_entailment", "entailment")  # WNLI's order is the other way
    assert glue.glue_task("rte").label_names == ("entailment", "not_entailment")
    # the house rule: MRPC selects on F1, reports accuracy next to the LoRA paper's MRPC accuracy
    mrpc = glue.glue_task("mrpc")
    assert (mrpc.primary_metric, mrpc.paper_metric) == ("f1", "accuracy")
    for task in glue.GLUE_TASKS.names():
        spec = glue.glue_task(task)
        assert spec.primary_metric in spec.metrics and set(spec.metrics) <= set(glue.GLUE_METRICS)
        assert spec.is_regression or len(spec.label_names) == spec.num_labels


def test_task_metrics_and_unknown_task():
    assert glue.task_metrics("mrpc", LABELS, PREDS) == pytest.approx({"accuracy": 4 / 6, "f1": 0.75})
    assert glue.task_metrics("cola", LABELS, PREDS) == pytest.approx({"matthews_correlation": 0.25})
    with pytest.raises(ConfigError, match="tasks.name: unknown GLUE task 'qnl'; known: cola, sst2"):
        glue.glue_task("qnl", "tasks.name")
