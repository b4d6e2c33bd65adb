"""stage: the model and the data committed once to the store (file and S3), bad inputs refused with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lorascope import data
from lorascope.cli import main
from lorascope.log import Logger
from lorascope.models import builtin, loading
from lorascope.phases import PhaseContext
from lorascope.runner import find_runs, load_frozen_study
from lorascope.store import Store

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "jobs" / "smoke.yaml"
FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"
EXPECTED_FILES = {
    "model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/tokenizer_config.json",
    *(f"data/{t}/{s}.jsonl" for t in ("mrpc", "sst2", "rte") for s in ("train", "dev", "validation")),
}  # fmt: skip


def write_study(tmp_path: Path, name: str = "study.yaml", **changes) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        raw[section][field] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def context(store_url: str, work_dir: Path) -> PhaseContext:
    store = Store.open(store_url, code_version="test")
    (run_id,) = find_runs(store)
    return PhaseContext(load_frozen_study(store, run_id), store, run_id, work_dir, {}, Logger())


def test_stage_commits_model_and_splits(store_url, tmp_path, capsys):
    argv = ["stage", "--study", str(SMOKE), "--store", store_url, "--work-dir", str(tmp_path / "work")]
    assert main(argv) == 0
    ctx = context(store_url, tmp_path / "reader")  # a fresh work dir: on S3 the reader downloads and verifies
    bundle = ctx.require("stage")
    assert EXPECTED_FILES <= set(bundle.files)
    meta = bundle.meta
    assert meta["model"]["source"] == "builtin" and meta["model"]["name"] == "builtin:tiny-llama"
    assert meta["model"]["builtin_fingerprint"] == builtin.tiny_llama_fingerprint()
    assert meta["model"]["bos_token_id"] == 1 and meta["model"]["eos_token_id"] == 2
    for task in ("mrpc", "sst2", "rte"):
        assert meta["data"][task]["sizes"] == {"train": 540, "dev": 60, "validation": 200}
        assert len(meta["data"][task]["fingerprint"]) == 64
    assert len(meta["dataset_fingerprint"]) == 64

    # the splits read back equal a fresh split of the fixtures; train and dev are disjoint
    source = data.read_jsonl(data.FIXTURES / "rte" / "train.jsonl")
    train, dev = data.split_dev(source, 0.1, 2000, seed=0)
    assert data.read_split(ctx.stage_dir(), "rte", "train") == train
    assert data.read_split(ctx.stage_dir(), "rte", "dev") == dev
    assert data.read_split(ctx.stage_dir(), "rte", "validation") == data.read_jsonl(data.FIXTURES / "rte" / "validation.jsonl")

    # the staged model is the builtin one, loadable through the real loader
    model_dir = ctx.stage_dir() / "model"
    built = builtin.build_tiny_llama(tmp_path / "built")
    assert (model_dir / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()
    clf = loading.load_classifier(model_dir, 2, torch.float32, "cpu")
    assert clf.config.pad_token_id == loading.load_tokenizer(model_dir).eos_token_id == 2

    # a second run skips
    capsys.readouterr()
    assert main(argv) == 0
    assert "already committed, skipping" in capsys.readouterr().err
    assert ctx.require("stage").attempt == bundle.attempt


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model__name": "/no/such/model/dir"}, "model.name '/no/such/model/dir'"),
        ({"model__name": "builtin:giant-llama"}, "unknown builtin model"),
        ({"data__path": "/no/such/glue"}, "data.path '/no/such/glue'"),
        ({"data__path": "PARTIAL"}, "rte/train.jsonl"),
    ],
)
def test_stage_bad_input_exits_2_and_commits_nothing(tmp_path, capsys, change, message):
    if change.get("data__path") == "PARTIAL":  # a folder with mrpc and sst2 but no rte
        for task in ("mrpc", "sst2"):
            for split in ("train", "validation"):
                dest = tmp_path / "glue" / task / f"{split}.jsonl"
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes((data.FIXTURES / task / f"{split}.jsonl").read_bytes())
        change = {"data__path": str(tmp_path / "glue")}
    study = write_study(tmp_path, **change)
    store = tmp_path / "store"
    assert main(["stage", "--study", str(study), "--store", str(store), "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") <= 2
    assert not list(store.rglob("_COMMIT.json"))


def test_stage_bad_model_path_fails_before_transformers_loads(tmp_path):
    """Through the `lorascope` CLI in a fresh process: exit 2, one error line, and transformers never imported."""
    study = write_study(tmp_path, model__name=str(tmp_path / "missing-model"))
    code = ("import sys; from lorascope.cli import main; rc = main(sys.argv[1:]); "
            "print('transformers_loaded=%s' % ('transformers' in sys.modules)); sys.exit(rc)")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", code, "stage", "--study", str(study), "--store", str(tmp_path / "store"),
         "--work-dir", str(tmp_path / "work")],  # fmt: skip
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "transformers_loaded=False" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: model.name '{tmp_path / 'missing-model'}': model folder {tmp_path / 'missing-model'} does not exist (and it is not a hub id org/name)"]


def test_stage_hub_model_records_the_resolved_commit_sha(tmp_path):
    """The hub path for real, offline: a Hugging Face cache holding `lorascope-test/tiny-llama` at commit FAKE_SHA
    (refs/main -> that commit), as `huggingface-cli download` leaves it. Stage resolves `main` to the sha."""
    repo = tmp_path / "hf" / "models--lorascope-test--tiny-llama"
    snapshot = repo / "snapshots" / FAKE_SHA
    builtin.build_tiny_llama(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(FAKE_SHA)
    study = write_study(tmp_path, model__name="lorascope-test/tiny-llama", model__revision="main")
    # and a revision the cache does not hold, with the hub unreachable: exit 1 (retryable), not a config error
    study2 = write_study(tmp_path, "study2.yaml", model__name="lorascope-test/tiny-llama", model__revision="v9")
    code = ("import sys; from lorascope.cli import main; work = sys.argv[1]; "
            "rcs = [main(['stage', '--study', s, '--store', st, '--work-dir', work]) for s, st in "
            "zip(sys.argv[2::2], sys.argv[3::2])]; print('rcs=%s' % rcs)")  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    args = [str(tmp_path / "work"), str(study), str(tmp_path / "store"), str(study2), str(tmp_path / "store2")]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, env=env)
    assert "rcs=[0, 1]" in proc.stdout, proc.stderr
    assert "not in the local HF cache" in proc.stderr
    (commit,) = (tmp_path / "store").rglob("stage/_COMMIT.json")
    record = json.loads(commit.read_text())
    assert record["meta"]["model"]["source"] == "hub"
    assert record["meta"]["model"]["commit_sha"] == FAKE_SHA
    staged = commit.parent / "_attempts" / record["attempt"] / "model"
    assert (staged / "model.safetensors").read_bytes() == (snapshot / "model.safetensors").read_bytes()
    assert not (staged / "model.safetensors").is_symlink()
    assert not list((tmp_path / "store2").rglob("_COMMIT.json"))
