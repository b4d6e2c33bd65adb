"""Shared fixtures of the serving tests."""

from __future__ import annotations

import pytest

from lorascope.serving import workload


@pytest.fixture
def pools():
    """Request pools of three tasks, 30 requests each, 2 to 5 tokens long."""
    feats = [{"idx": i, "input_ids": [1] + [5] * (1 + i % 4), "attention_mask": [1] * (2 + i % 4), "labels": i % 2}
             for i in range(30)]  # fmt: skip
    return {t: workload.make_pool(t, feats, 0) for t in ("mrpc", "sst2", "rte")}
