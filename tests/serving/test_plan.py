"""serving.plan.BenchPlan (what one backend's bench serves, from the study alone) and the servers' Build it feeds."""

from pathlib import Path

import pytest

from lorascope.errors import ConfigError
from lorascope.serving import servers
from lorascope.serving.plan import BenchPlan
from lorascope.study import load_study

SMOKE = Path(__file__).resolve().parents[2] / "jobs" / "smoke.yaml"


def test_plan_of_the_smoke_study():
    plan = BenchPlan(load_study(SMOKE), "hf")
    assert (plan.backend, plan.regimes, plan.served_task, plan.seed) == ("hf", ["eager"], "mrpc", 42)
    assert plan.cells_of("multi-2") == ["mrpc-lora-s42", "sst2-lora-s42"]
    assert plan.orders("multi-2") == ["rr", "random"] and plan.orders("merged") == ["single"]
    with pytest.raises(ConfigError, match="unknown backend 'tgi'; backends are \\['hf', 'vllm'\\]"):
        BenchPlan(load_study(SMOKE), "tgi")


def test_build_takes_named_fields_only(tmp_path):
    plan = BenchPlan(load_study(SMOKE), "hf")
    fields = dict(plan=plan, base_dir=tmp_path / "base", cell_dirs={}, work=tmp_path, num_labels=2, dtype=None,
                  dtype_name="float32", device="cpu", kv_cache_bytes=0, log=print)  # fmt: skip
    build = servers.Build(**fields)
    assert (build.platform, build.merge_seconds, build.kv_cache_bytes) == ("torch", None, 0)
    assert build.possible()("separate", "eager") and not build.possible()("separate", "compiled")
    with pytest.raises(TypeError):
        servers.Build(*fields.values())  # no positional soup
