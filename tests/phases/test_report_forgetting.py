"""The report over a drift summary that has forgetting (analysis/forgetting.py writes summary["forgetting"]): a
second Pareto row against forgetting, the forgetting table, and every printed number from the report's summary."""

from __future__ import annotations

import uuid

import pytest

from tests.fixtures.crafted_runs import craft_run, run_drift
from tests.fixtures.report_numbers import unmatched_numbers


def test_the_report_shows_forgetting_next_to_drift(tmp_path):
    from lorascope.phases import report as report_phase
    from lorascope.runner import run_phase_index

    losses = {"base": 3.0}

    def heldout(model: str) -> dict:  # every reps bundle also holds its model's held-out loss
        losses.setdefault(model, 3.0 + (0.2 if "-full-" in model else 0.01) * (1 + len(losses) % 3))
        return {"loss_nats_per_token": losses[model], "tokens": 500, "texts_sha256": "ab" * 32, "texts": 8}

    ctx = craft_run(tmp_path / uuid.uuid4().hex[:6], lora="mixed", full="moved", heldout=heldout)
    run_drift(ctx)
    run_phase_index(ctx, "report", 0)
    b = ctx.require("report")
    md, numbers = b.read_bytes(report_phase.REPORT_FILE).decode(), b.read_json("summary.json")
    assert numbers["forgetting"]["rte"]["full"]["mean"] > numbers["forgetting"]["rte"]["lora"]["mean"] > 0
    assert set(numbers["pareto"]["forgetting"]) == {"mrpc", "rte"}
    assert numbers["pareto"]["forgetting"]["rte"]["points"]["full"]["x"] == pytest.approx(numbers["forgetting"]["rte"]["full"]["mean"])
    assert unmatched_numbers(md, numbers) == []
    v = numbers["forgetting"]["rte"]["lora"]
    assert f"| rte | lora | {v['mean']:.4f} |" in md
    assert "| forgetting | rte |" in md and "no forgetting front" not in md
    assert b.read_bytes("figures/pareto.png").startswith(b"\x89PNG")
