"""The report over a drift summary that has forgetting (analysis/forgetting.py writes summary["forgetting"]): a
second Pareto row against forgetting, the forgetting table, and every printed number from the report's summary."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from lorascope import heldout_loss


def test_the_report_shows_forgetting_next_to_drift(tmp_path, monkeypatch):
    from lorascope.phases import report as report_phase
    from lorascope.runner import run_phase_index
    from tests.phases import test_drift as td
    from tests.phases.test_report import unmatched_numbers

    losses = {"base": 3.0}

    def commit_reps(ctx, tmp, model, task, mean, last, idx=None):  # td.commit_reps, plus forgetting.json
        from safetensors.numpy import save_file

        folder = tmp / "reps" / model / task
        folder.mkdir(parents=True, exist_ok=True)
        idx = np.arange(100, 100 + mean.shape[1], dtype=np.int64)
        save_file({"mean": mean.astype(np.float32), "last": last.astype(np.float32), "idx": idx}, str(folder / td.REPS_FILE))
        (folder / td.LAYERS_FILE).write_text(json.dumps({"labels": td.layer_labels(mean.shape[0]), "idx": idx.tolist()}))
        losses.setdefault(model, 3.0 + (0.2 if "-full-" in model else 0.01) * (1 + len(losses) % 3))
        unit = {"loss_nats_per_token": losses[model], "tokens": 500, "texts_sha256": "ab" * 32, "texts": 8}
        (folder / heldout_loss.FILE).write_text(json.dumps(unit))
        meta = {"model": model, "task": task, "device": "cpu", "forward_seconds": 0.0,
                "hardware": {"cpu_model": "crafted", "cpu_cores_usable": 2}, "versions": {"numpy": np.__version__}}  # fmt: skip
        with ctx.writer("reps", model, task, phase="extract", meta=meta) as w:
            for name in (td.REPS_FILE, td.LAYERS_FILE, heldout_loss.FILE):
                w.add_file(name, folder / name)

    monkeypatch.setattr(td, "commit_reps", commit_reps)
    ctx = td.craft_run(tmp_path / uuid.uuid4().hex[:6], lora="mixed", full="moved")
    td.run_drift(ctx)
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
