"""The generation bench on a classification study (`bench.generation.enabled: true`, what the smoke study and `make
demo` run): the cells' LoRA adapters and full model served as causal LMs (`serving.generation.adapters.causal_adapter`,
`causal_model`), committed as `bench/<backend>-generation`, rendered into the report's "Generation serving" section;
and the generation knobs stay out of a classification study's hash. Real transformers + PEFT on the tiny Llama.
The vLLM side of the same bench: tests/vllm/test_generation_vllm.py."""

from __future__ import annotations

import json

import pytest
import torch

from lorascope import study_hash
from lorascope.phases import bench as bench_phase
from lorascope.reporting import generation_bench as report
from lorascope.serving.generation import adapters as gen_adapters
from lorascope.study import GenerationBenchConfig, load_study
from tests.phases.conftest import stage_run, write_study

GENERATION = {"enabled": True, "modes": ["full", "merged", "separate", "multi-2"], "batch_sizes": [1, 2], "prompt_tokens": 10,
              "output_tokens": 4, "requests": 4, "warmup_batches": 0, "repeats": 2}  # fmt: skip


def make_classifier_adapter(base_dir, dest, seed: int):
    """A SEQ_CLS LoRA adapter as the train phase saves one (q_proj, v_proj; the score head in modules_to_save), lora_B
    drawn from a seeded normal so that it changes the backbone."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=2, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    model.save_pretrained(str(dest))
    return dest


def make_full_classifier(base_dir, dest, seed: int):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(base_dir), num_labels=2, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(str(dest), safe_serialization=True)
    return dest


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generation-cells")
    tasks = [{"name": t, "max_length": 64} for t in ("mrpc", "sst2")]
    path = write_study(folder, tasks=tasks, seeds=[42], bench={"backends": ["hf"], "generation": GENERATION})
    r = stage_run(path, str(folder / "store"), folder / "work", {"LORASCOPE_TORCH_THREADS": "1"})
    ctx = r.ctx()
    base = ctx.stage_dir() / "model"
    for i, task in enumerate(("mrpc", "sst2")):
        with ctx.writer("cells", f"{task}-lora-s42", phase="train") as w:
            w.add_dir(make_classifier_adapter(base, folder / f"adapter-{task}", seed=60 + i), prefix="adapter")
    with ctx.writer("cells", "mrpc-full-s42", phase="train") as w:
        w.add_dir(make_full_classifier(base, folder / "full", seed=7), prefix="model")
    return r, folder


def test_causal_copies_keep_the_trained_backbone(run):
    """The causal-LM adapter / model compute exactly the classifier's backbone hidden states, on the base's lm_head."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    r, folder = run
    ctx = r.ctx()
    base = ctx.stage_dir() / "model"
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    src = ctx.cell_dir("mrpc-lora-s42") / "adapter"
    dest = gen_adapters.causal_adapter(src, folder / "causal-adapter")
    config = json.loads((dest / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] is None and config["r"] == 4
    cls = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=2), str(src)).eval()
    lm = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(dest)).eval()
    plain = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    with torch.no_grad():
        h_cls = cls.base_model.model.model(input_ids=ids).last_hidden_state
        h_lm = lm.base_model.model.model(input_ids=ids).last_hidden_state
        h_base = plain.model(input_ids=ids).last_hidden_state
    assert torch.equal(h_cls, h_lm) and not torch.allclose(h_lm, h_base, atol=1e-4)

    full_src = ctx.cell_dir("mrpc-full-s42") / "model"
    full = gen_adapters.causal_model(full_src, base, folder / "causal-full")
    cls_full = AutoModelForSequenceClassification.from_pretrained(str(full_src)).eval()
    lm_full = AutoModelForCausalLM.from_pretrained(str(full)).eval()
    with torch.no_grad():
        assert torch.equal(cls_full.model(input_ids=ids).last_hidden_state, lm_full.model(input_ids=ids).last_hidden_state)
    assert torch.equal(lm_full.lm_head.weight, plain.lm_head.weight)


def test_bench_phase_commits_the_generation_bundle_and_the_report_section(run, tmp_path):
    r, _folder = run
    ctx = r.ctx()
    assert bench_phase.generation_on_classification(r.study)
    bench_phase.measure_generation(ctx, "hf", ctx.log.bind(backend="hf"), from_classification=True)
    bundle = r.store.bundle(r.key("bench", "hf-generation"))
    s = bundle.read_json("summary.json")
    assert {"summary.json", "summary.md", "requests.jsonl", "generation_serving.png"} <= set(bundle.files)
    assert s["cells_as_causal_lm"]["cells"] == ["mrpc-lora-s42", "sst2-lora-s42", "mrpc-full-s42"]
    assert s["adapters"] == {"mrpc": {"synthetic": False}, "sst2": {"synthetic": False}}
    assert {(c["mode"], c["order"], c["batch_size"]) for c in s["offline"]} == {
        (m, o, b) for m, o in (("full", "single"), ("merged", "single"), ("separate", "single"), ("multi-2", "rr"),
                               ("multi-2", "random")) for b in (1, 2)}  # fmt: skip
    assert s["correctness"]["ok"] and s["correctness"]["requests"] > 0
    assert set(s["ratios"]["separate_vs_merged"]) == {"eager batch 1", "eager batch 2"}
    lines = "\n".join(report.report_lines({"hf": s}))
    assert "classification cells served as causal LMs" in lines and "### Closing note" in lines
    by = s["ratios"]["separate_vs_merged"]["eager batch 2"]
    assert f"batch 2: TPOT x{by['tpot_ratio']:.2f}, tokens/s x{by['tokens_per_s_ratio']:.2f}" in lines
    assert f"model start-up (load): adapters {s['models']['adapters']['load_seconds']:.1f} s" in lines


def test_generation_knobs_stay_out_of_a_classification_studys_hash(tmp_path):
    with_gen = load_study(write_study(tmp_path, bench={"backends": ["hf"], "generation": GENERATION}))
    plain = with_gen.model_copy(update={"bench": with_gen.bench.model_copy(update={"generation": GenerationBenchConfig()})})
    assert with_gen.bench.generation.enabled is True and plain.bench.generation.enabled is None
    assert study_hash.digest(plain) == study_hash.digest(with_gen)
    assert "generation" not in json.loads(study_hash.canonical_json(with_gen))["bench"]


def test_closing_note_names_ratios_start_ups_curves_or_why_not():
    base = {"platform": "cpu", "device": "cpu", "device_name": "x86_64", "models": {"adapters": {"load_seconds": 6.48}},
            "ratios": {"separate_vs_merged": {"eager batch 4": {"batch_size": 4, "tpot_ratio": 2.08, "tokens_per_s_ratio": 0.57},
                                              "eager batch 1": {"batch_size": 1, "tpot_ratio": 3.13, "tokens_per_s_ratio": 0.31}}}}  # fmt: skip
    off = report.closing_note({"vllm": base})
    assert "separate / merged: batch 1: TPOT x3.13, tokens/s x0.31; batch 4: TPOT x2.08, tokens/s x0.57." in off[0]
    assert off[1] == "  - engine start-up (load): adapters 6.5 s." and "not run in this study" in off[2]
    curve = [{"request_rate": 8.0, "output_tokens_per_s": 59.6, "p95_tpot_ms": 7.34},
             {"request_rate": 64.0, "output_tokens_per_s": 95.7, "p95_tpot_ms": 52.19}]  # fmt: skip
    on = report.closing_note({"vllm": {**base, "online": [{}], "servers": {"separate": {"startup_seconds": 116.0}},
                                       "curves": {"separate x1": curve}}})  # fmt: skip
    assert on[2:] == ["  - OpenAI-compatible server start-up (until it answers): separate 116.0 s.",
                      "  - online separate x1: rate 8 -> 64 req/s: 60 -> 96 tokens/s (still rising), p95 TPOT 7.34 -> 52.19 ms."]
