"""The extract phase on the tiny Llama with cells made directly (no training): the extraction set and its ids, the
layer labels (the last entry is the final norm's output), masked pooling (pad length does not matter, BOS is left
out), and hidden states that are the fine-tuned model's."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from lorascope import data
from lorascope.models import loading
from lorascope.phases import extract, get_phase
from lorascope.runner import run_phase_index
from tests.fixtures.runs import Run
from tests.fixtures.studies import write_study
from tests.fixtures.tiny_model import commit_cells, commit_stage

N_EXAMPLES = 24
CELLS = ["mrpc-full-s42", "mrpc-full-s7", "mrpc-lora-s42", "mrpc-lora-s7"]  # grid order: method, then seed


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A tiny run (mrpc, full + lora, seeds 42 and 7) with stage and cells committed and every extract index run."""
    folder = tmp_path_factory.mktemp("extract") / uuid.uuid4().hex[:6]
    study_path = write_study(folder, extraction={"examples": N_EXAMPLES, "batch_size": 5, "seed": 3})
    run = Run(study_path, str(folder / "store"), folder / "work", {})
    ctx = run.ctx()
    base_dir = commit_stage(ctx, folder)
    commit_cells(ctx, folder, base_dir, CELLS)
    for i in range(get_phase("extract").size(ctx.study)):
        run_phase_index(ctx, "extract", i)
    return ctx, base_dir


def _reps(ctx, model: str, task: str = "mrpc") -> tuple[dict[str, np.ndarray], dict]:
    local = ctx.local(ctx.require("reps", model, task))
    return load_file(str(local / extract.REPS_FILE)), json.loads((local / extract.LAYERS_FILE).read_text())


def test_units_and_bundles(extracted):
    ctx, _ = extracted
    assert extract.units(ctx.study) == [("base", "mrpc"), *[(c, "mrpc") for c in CELLS]]
    assert [get_phase("extract").unit(ctx.study, i) for i in range(2)] == ["base/mrpc", "mrpc-full-s42/mrpc"]
    assert all(ctx.committed(b) for b in get_phase("extract").bundles(ctx.study))


def test_extraction_set_is_a_fixed_subset_with_identical_ids_for_every_model(extracted):
    ctx, _ = extracted
    rows = data.read_split(ctx.stage_dir(), "mrpc", "validation")
    want = [r["idx"] for r in data.subsample(rows, N_EXAMPLES, 3)]
    assert len(rows) > N_EXAMPLES and want != [r["idx"] for r in rows[:N_EXAMPLES]]
    for model in ["base", *CELLS]:
        t, layers = _reps(ctx, model)
        assert t["idx"].tolist() == want == layers["idx"]
        assert t["mean"].dtype == np.float32 and t["mean"].shape == (3, N_EXAMPLES, 64) == t["last"].shape
        assert layers["labels"] == ["embeddings", "layer_1", "final_norm"]
    meta = ctx.require("reps", "base", "mrpc").meta
    assert meta["n"] == N_EXAMPLES and meta["hardware"]["cpu_cores_usable"] >= 1 and meta["versions"]["torch"]


def test_all_examples_when_the_split_is_smaller(tmp_path):
    study_path = write_study(tmp_path, extraction={"examples": 10_000})
    run = Run(study_path, str(tmp_path / "store"), tmp_path / "work", {})
    ctx = run.ctx()
    commit_stage(ctx, tmp_path)
    assert [r["idx"] for r in extract.extraction_rows(ctx, "mrpc")] == [r["idx"] for r in data.read_split(ctx.stage_dir(), "mrpc", "validation")]


def test_states_are_the_fine_tuned_models(extracted):
    """The LoRA cell's states equal those of PEFT's merged model run one example at a time, and differ from the base's;
    the full cell's equal its own checkpoint's."""
    from peft import PeftModel

    ctx, base_dir = extracted
    tok = loading.load_tokenizer(base_dir)
    features = data.encode(tok, "mrpc", extract.extraction_rows(ctx, "mrpc"), 64)
    lora_dir = ctx.local(ctx.require("cells", "mrpc-lora-s42")) / "adapter"
    merged = PeftModel.from_pretrained(loading.load_classifier(base_dir, 2, torch.float32, "cpu"), str(lora_dir)).merge_and_unload()
    full = loading.load_classifier(ctx.local(ctx.require("cells", "mrpc-full-s7")) / "model", 2, torch.float32, "cpu")
    base = loading.load_classifier(base_dir, 2, torch.float32, "cpu")
    for model, name in ((merged, "mrpc-lora-s42"), (full, "mrpc-full-s7"), (base, "base")):
        model.eval()
        t, _ = _reps(ctx, name)
        with torch.inference_mode():
            for i in (0, 7, N_EXAMPLES - 1):
                ids = torch.tensor([features[i]["input_ids"]])
                hs = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
                for layer in range(3):
                    np.testing.assert_allclose(t["last"][layer, i], hs[layer][0, -1].numpy(), atol=1e-5)
                    np.testing.assert_allclose(t["mean"][layer, i], hs[layer][0, 1:].mean(0).numpy(), atol=1e-5)  # BOS out
    lora, base_t = _reps(ctx, "mrpc-lora-s42")[0], _reps(ctx, "base")[0]
    assert np.array_equal(lora["mean"][0], base_t["mean"][0])  # LoRA on q, v leaves the embeddings alone
    assert np.abs(lora["last"][2] - base_t["last"][2]).max() > 1e-2  # ... but not the output


def test_pooling_ignores_padding_and_excludes_bos(extracted):
    ctx, base_dir = extracted
    tok = loading.load_tokenizer(base_dir)
    model = loading.load_classifier(base_dir, 2, torch.float32, "cpu").eval()
    features = data.encode(tok, "mrpc", extract.extraction_rows(ctx, "mrpc")[:9], 64)
    lengths = {len(f["input_ids"]) for f in features}
    assert len(lengths) > 1  # so batching pads
    one = extract.pooled_states(model, features, 1, tok.pad_token_id, "cpu")  # no padding at all
    batched = extract.pooled_states(model, features, 4, tok.pad_token_id, "cpu")  # padded to the batch's longest
    padded = extract.pooled_states(model, features, 9, tok.pad_token_id, "cpu", pad_to=64)  # padded to max_length
    for a, b in ((one, batched), (one, padded)):
        torch.testing.assert_close(a[0], b[0], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(a[1], b[1], atol=2e-5, rtol=1e-5)
    # BOS excluded: the mean is over positions 1..len-1, and including BOS would give something else
    f = features[0]
    ids = torch.tensor([f["input_ids"]])
    with torch.inference_mode():
        hs = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
    for layer in range(3):
        torch.testing.assert_close(one[0][layer, 0], hs[layer][0, 1:].mean(0), atol=1e-5, rtol=1e-5)
        assert (one[0][layer, 0] - hs[layer][0].mean(0)).abs().max() > 1e-4


def test_last_hidden_state_entry_is_the_final_norm_output(extracted):
    _ctx, base_dir = extracted
    model = loading.load_classifier(base_dir, 2, torch.float32, "cpu").eval()
    seen = {}
    h1 = model.model.norm.register_forward_hook(lambda m, i, o: seen.update(norm_in=i[0], norm_out=o))
    h2 = model.model.layers[-1].register_forward_hook(lambda m, i, o: seen.update(block=o[0] if isinstance(o, tuple) else o))
    batch = data.collate([{"input_ids": [1, 40, 41, 2, 50], "attention_mask": [1] * 5}, {"input_ids": [1, 60], "attention_mask": [1, 1]}], 2)
    with torch.inference_mode():
        hs = extract.hidden_states(model, batch)
    h1.remove()
    h2.remove()
    assert len(hs) == model.config.num_hidden_layers + 1
    assert torch.equal(hs[-1], seen["norm_out"])  # post-norm
    assert torch.equal(seen["norm_in"], seen["block"])  # the norm's input is the last block's raw output ...
    assert (hs[-1] - seen["block"]).abs().max() > 1e-3  # ... which is not what the last entry holds
    assert torch.equal(hs[0], model.model.embed_tokens(batch["input_ids"]))
    assert extract.layer_labels(len(hs)) == ["embeddings", "layer_1", "final_norm"]


def test_committed_bundle_is_skipped(extracted, capsys):
    ctx, _ = extracted
    attempt = ctx.require("reps", "base", "mrpc").attempt
    run_phase_index(ctx, "extract", 0)
    assert ctx.require("reps", "base", "mrpc").attempt == attempt
    assert "already committed, skipping" in capsys.readouterr().err
