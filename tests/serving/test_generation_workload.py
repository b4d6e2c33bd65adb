"""The generation bench's pure parts: fixed-length prompts, the same batches in every mode, the online adapter mixes
(uniform and Zipf: realised frequencies equal the requested ones to within one request), settings and the study's
`bench.generation` section (validated, out of the study hash at its defaults)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from lorascope.errors import ConfigError
from lorascope.serving.generation import GenerationSettings, adapter_count, workload
from lorascope.study import load_study

REPO = Path(__file__).resolve().parents[2]


def test_prompts_are_cut_or_continued_to_the_length():
    prompts = [[1, 10, 11], [1, 20, 21, 22, 23, 24], [1, 30]]
    out = workload.fixed_length(prompts, 5)
    assert out == [(1, 10, 11, 20, 21), (1, 20, 21, 22, 23), (1, 30, 10, 11, 20)]
    assert all(len(p) == 17 for p in workload.fixed_length(prompts, 17))
    with pytest.raises(ValueError):
        workload.fixed_length([[1]], 4)


def test_every_mode_sees_the_same_prompts_at_a_batch_size():
    prompts = workload.fixed_length([[1, i, i + 1] for i in range(10, 40)], 6)
    pools = workload.pools(prompts, ["a", "b", "c"], seed=3)
    single = workload.batches(pools, ["a"], "single", 3, 4, 2, 8)
    again = workload.batches(workload.pools(prompts, ["a", "b", "c"], seed=3), ["a"], "single", 3, 4, 2, 8)
    assert [[q.input_ids for q in b] for b in single[1]] == [[q.input_ids for q in b] for b in again[1]]
    rr = workload.batches(pools, ["a", "b", "c"], "rr", 3, 4, 0, 8)[1]
    assert [q.task for b in rr for q in b][:6] == ["a", "b", "c", "a", "b", "c"]
    assert len(rr) == 2 and all(len(b) == 4 for b in rr)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("n", [7, 64, 1000])
def test_uniform_and_zipf_mixes_give_the_requested_frequencies(k, n):
    names = [f"a{i}" for i in range(k)]
    for kind in ("uniform", "zipf"):
        want = workload.popularity(k, kind, 1.0)
        seq = workload.assign(names, n, kind, seed=11)
        got = workload.frequencies(seq, names)
        assert len(seq) == n and abs(sum(want) - 1) < 1e-12
        for name, p in zip(names, want, strict=True):
            assert abs(got[name] - p) < 1.0 / n + 1e-12, (kind, name, got[name], p)
    if k > 1:
        zipf = workload.popularity(k, "zipf", 1.0)
        assert np.all(np.diff(zipf) < 0) and zipf[0] / zipf[1] == pytest.approx(2.0)
        assert np.allclose(workload.popularity(k, "zipf", 0.0), 1.0 / k)  # exponent 0 is uniform


def test_zipf_exponent_and_seed():
    names = ["a", "b", "c", "d"]
    p = workload.popularity(4, "zipf", 2.0)
    assert p == pytest.approx(np.array([1, 1 / 4, 1 / 9, 1 / 16]) / sum([1, 1 / 4, 1 / 9, 1 / 16]))
    assert workload.quotas(100, p) == [70, 18, 8, 4]  # 70.2, 17.6, 7.8, 4.4 -> largest remainders
    a, b = workload.assign(names, 100, "zipf", 5, 2.0), workload.assign(names, 100, "zipf", 5, 2.0)
    assert a == b and a != workload.assign(names, 100, "zipf", 6, 2.0)  # seeded order, same mix
    assert sorted(a) == sorted(workload.assign(names, 100, "zipf", 6, 2.0))
    with pytest.raises(ValueError):
        workload.popularity(3, "pareto")


def test_modes_and_settings():
    assert [adapter_count(m) for m in ("full", "merged", "separate", "multi-2", "multi-16")] == [0, 1, 1, 2, 16]
    for bad in ("multi-1", "multi-02", "mixed"):
        with pytest.raises(ValueError):
            adapter_count(bad)
    with pytest.raises(ValueError, match="TPOT"):
        GenerationSettings(output_tokens=1)
    s = GenerationSettings(modes=("separate", "multi-3"))
    assert s.adapters_needed() == 8 and s.adapters_needed(online=False) == 3  # the online server's counts reach 8


def _study(tmp_path: Path, generation: dict | None) -> Path:
    raw = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    if generation is not None:
        raw["bench"]["generation"] = generation
    path = tmp_path / f"study-{abs(hash(str(generation)))}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_generation_section_is_validated_and_hash_neutral_on_a_classification_study(tmp_path):
    plain = load_study(_study(tmp_path, None))
    assert plain.hash == "95e6a039157bcf66"  # jobs/smoke.yaml, its bench.generation section included (baseline hash)
    assert load_study(_study(tmp_path, {})).hash == plain.hash
    assert load_study(_study(tmp_path, {"modes": ["full", "merged", "separate", "multi-2", "multi-4"]})).hash == plain.hash
    small = load_study(_study(tmp_path, {"batch_sizes": [1, 4], "output_tokens": 8, "online": {"request_rates": [2, 8]}}))
    assert small.hash == plain.hash and small.bench.generation.online.request_rates == [2.0, 8.0]  # GLUE tasks only
    for bad, field in (({"modes": ["multi-1"]}, "modes"), ({"output_tokens": 1}, "output_tokens"),
                       ({"online": {"popularity": ["pareto"]}}, "popularity"), ({"online": {"request_rates": [0]}}, "request_rates"),
                       ({"online": {"adapter_counts": [2, 2]}}, "adapter_counts")):  # fmt: skip
        with pytest.raises(ConfigError, match=field):
            load_study(_study(tmp_path, bad))

