"""The tasks a study can name: GLUE's MRPC, RTE and SST-2 (a plain table for now).

Each entry: the text columns (pair tasks have two), the number of labels, and the metric used for selection and
reporting by default (a study's `tasks[].metric` may say otherwise).
"""

from __future__ import annotations

from typing import Any

GLUE_TASKS: dict[str, dict[str, Any]] = {
    # name: text columns (pair tasks have two), number of labels, metric used for selection and reporting
    "mrpc": {"columns": ("sentence1", "sentence2"), "num_labels": 2, "metric": "f1"},
    "rte": {"columns": ("sentence1", "sentence2"), "num_labels": 2, "metric": "accuracy"},
    "sst2": {"columns": ("sentence",), "num_labels": 2, "metric": "accuracy"},
}
