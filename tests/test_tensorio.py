"""tensorio: the one reader of safetensors headers, model/adapter folders, predictions and the drift CSVs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from lorascope import tensorio
from lorascope.errors import ConfigError


def test_header_and_tensor_folder(tmp_path):
    save_file({"b": np.zeros((2, 3), np.float32), "a": np.arange(4, dtype=np.float64)}, str(tmp_path / "model.safetensors"),
              metadata={"format": "np"})  # fmt: skip
    h = tensorio.header(tmp_path / "model.safetensors")
    assert h["__metadata__"] == {"format": "np"} and h["b"]["shape"] == [2, 3] and h["b"]["dtype"] == "F32"
    t = tensorio.TensorFolder(tmp_path, "model")
    assert t.names() == ["a", "b"] and t.shape("b") == (2, 3)
    assert t.get("a").dtype == np.float64 and np.array_equal(t.get("a"), np.arange(4))
    with pytest.raises(ConfigError, match="no adapter_model.safetensors"):
        tensorio.TensorFolder(tmp_path, "adapter_model")


def test_vllm_weights_bytes_reads_the_same_header(tmp_path):
    from lorascope.serving import vllm_backend

    save_file({"w": np.zeros((3, 5), np.float32), "v": np.zeros(7, np.float32)}, str(tmp_path / "model.safetensors"),
              metadata={"x": "y"})  # fmt: skip
    assert vllm_backend.weights_bytes(tmp_path, "bfloat16") == (15 + 7) * 2


def test_read_adapter_keys_and_predictions(tmp_path):
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{key}.lora_A.weight": np.ones((2, 4), np.float32), f"{key}.lora_B.weight": np.ones((3, 2), np.float32)},
              str(tmp_path / "adapter_model.safetensors"))  # fmt: skip
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4}))
    config, factors = tensorio.read_adapter(tmp_path)
    assert config["r"] == 2 and list(factors) == ["model.layers.0.self_attn.q_proj"]
    B, A = factors["model.layers.0.self_attn.q_proj"]
    assert B.shape == (3, 2) and A.shape == (2, 4)
    assert tensorio.read_predictions(tmp_path) is None
    rows = [{"idx": 5, "label": 1, "pred": 0, "logits": [0, 1]}, {"idx": 2, "label": 0, "pred": 0, "logits": [1, 0]}]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = tensorio.read_predictions(tmp_path)
    assert p["idx"].tolist() == [2, 5] and p["label"].tolist() == [0, 1] and p["pred"].tolist() == [0, 0]


def test_csv_round_trip_at_full_precision():
    rows = [{"a": 0.1 + 0.2, "b": 3, "c": "x"}]
    back = list(tensorio.iter_rows(tensorio.csv_bytes(rows, ["a", "b", "c"])))
    assert back == rows
