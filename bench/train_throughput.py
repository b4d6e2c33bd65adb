"""Training throughput: dynamic padding + length-grouped batches vs padding every sequence to 384.

    .venv/bin/python bench/train_throughput.py                 # smoke model, full fine-tuning, CPU
    .venv/bin/python bench/train_throughput.py --method lora
    python bench/train_throughput.py --shape tinyllama --device cuda --method full   # on a GPU node
    python bench/train_throughput.py --shape tinyllama --device cuda --method lora

Both configurations train the same model (same init) on the same examples with the same micro-batch, optimizer and
step count, in one process, alternating (dynamic, fixed) `--repeats` times so a change in machine load hits both; it
prints the ratio of the best runs and the ratio within each (dynamic, fixed) pair. Throughput counts real (non-pad)
tokens per second of forward + backward + AdamW step; the padded configuration also spends time on pad tokens, which
is the point.

Shapes: `smoke` is the builtin tiny Llama of jobs/smoke.yaml; `tinyllama` is TinyLlama-1.1B's architecture
(22 layers, hidden 2048, 32 heads / 4 KV heads, MLP 5632, vocab 32000) built from its config with random weights
(they time like the real ones; nothing is downloaded). `--layers N` shrinks it to check the code path on a CPU.

On CUDA the step is the train phase's: bf16 autocast over fp32 master weights, fused AdamW, gradient checkpointing
(`--no-gradient-checkpointing` turns it off), clip 0.3; the clock is read after `torch.cuda.synchronize()`. It also
prints peak GPU memory (`torch.cuda.max_memory_allocated`, reset per run) and MFU = model FLOPs per real token x
real tokens/s / the GPU's peak dense bf16 FLOP/s (`--peak-tflops`, else looked up from the device name). Model FLOPs
per token, per Kaplan et al. / PaLM appendix B: full FT 6N + 12 L s d (N = non-embedding parameters, s = mean real
length, d = hidden); LoRA 4N + 12 L s d (frozen weights need no weight gradients; the adapter's own FLOPs are
negligible at r=8). Recomputation by gradient checkpointing is not counted (MFU, not hardware FLOPs utilisation).

Lengths are MRPC-like: each sentence's token count is drawn from a normal distribution with mean 28 and sd 9 tokens,
clipped to [6, 90] (MRPC sentences average about 22 words, about 28 Llama tokens), and a pair is `BOS s1 EOS s2`,
about 58 tokens on average. Token ids are random words of the vocabulary: the compute does not depend on which
ids they are. Batches for the dynamic run come from transformers' LengthGroupedSampler, as `group_by_length` uses.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from lorascope import data, methods
from lorascope.methods.full import FullMethod
from lorascope.methods.lora import LoraMethod
from lorascope.models import builtin, loading

MAX_LENGTH = 384


def mrpc_like_features(n: int, vocab: range, bos: int, eos: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    feats = []
    for i in range(n):
        l1, l2 = (min(90, max(6, round(rng.gauss(28, 9)))) for _ in range(2))
        ids = [bos, *rng.choices(vocab, k=l1), eos, *rng.choices(vocab, k=l2)][:MAX_LENGTH]
        feats.append({"idx": i, "input_ids": ids, "attention_mask": [1] * len(ids), "labels": rng.randint(0, 1)})
    return feats


def batches_for(mode: str, feats: list[dict], micro_batch: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    if mode == "dynamic":
        from transformers.trainer_pt_utils import LengthGroupedSampler

        order = list(LengthGroupedSampler(micro_batch, lengths=[len(f["input_ids"]) for f in feats], generator=g))
    else:
        order = torch.randperm(len(feats), generator=g).tolist()
    return [order[i : i + micro_batch] for i in range(0, len(order) - micro_batch + 1, micro_batch)]


# Peak dense bf16 tensor FLOP/s by device-name substring (vendor data sheets, no sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # longer names first where they share a prefix (L40S before L4)
        if key in device_name:
            return value
    return None


class Shape:
    """A model factory: `smoke` loads the builtin tiny Llama from a folder, `tinyllama` builds TinyLlama's
    architecture in memory from its config (random weights, seeded)."""

    def __init__(self, name: str, tmp: Path, layers: int | None) -> None:
        self.name = name
        if name == "smoke" and layers:
            raise SystemExit("--layers applies to --shape tinyllama only")
        if name == "smoke":
            self.model_dir = builtin.build_tiny_llama(tmp / "model")
            tok = loading.load_tokenizer(self.model_dir)
            self.vocab, self.bos, self.eos, self.pad = (
                range(3, len(tok)),
                tok.bos_token_id,
                tok.eos_token_id,
                tok.pad_token_id,
            )
            from transformers import AutoConfig

            self.config = AutoConfig.from_pretrained(str(self.model_dir))
        else:
            from transformers import LlamaConfig

            cfg = dict(builtin.TINYLLAMA_1B_ARCH)
            if layers:
                cfg["num_hidden_layers"] = layers
            self.config = LlamaConfig(**cfg, num_labels=2, pad_token_id=cfg["eos_token_id"])
            self.vocab, self.bos, self.eos = range(3, cfg["vocab_size"]), cfg["bos_token_id"], cfg["eos_token_id"]
            self.pad = self.eos  # pad = eos, as loading.load_tokenizer sets it

    def build(self, device: torch.device) -> torch.nn.Module:
        torch.manual_seed(0)
        if self.name == "smoke":
            return loading.load_classifier(self.model_dir, 2, torch.float32, device)
        from transformers import LlamaForSequenceClassification

        with torch.device(device):
            model = LlamaForSequenceClassification(self.config)
        return model.to(torch.float32)

    def flops_per_token(self, method: str, mean_len: float) -> float:
        c = self.config
        d, layers = c.hidden_size, c.num_hidden_layers
        kv = d * c.num_key_value_heads // c.num_attention_heads
        per_layer = d * d * 2 + d * kv * 2 + 3 * d * c.intermediate_size  # q, o; k, v; gate, up, down
        n = layers * per_layer + d * 2  # + the score head
        attention = 12 * layers * mean_len * d
        return (6 if method == "full" else 4) * n + attention


def train_once(
    shape: Shape, method, feats, batches, pad_to: int | None, warmup: int, device: torch.device, checkpointing: bool
) -> dict:
    cuda = device.type == "cuda"
    model = shape.build(device)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = methods.apply_method(model, method, {}).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=cuda)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    real = padded = 0
    t0 = None
    for step, idxs in enumerate(batches):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            real = padded = 0
        batch = {k: v.to(device, non_blocking=True) for k, v in
                 data.collate([feats[i] for i in idxs], shape.pad, pad_to=pad_to).items()}  # fmt: skip
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.3)
        opt.step()
        opt.zero_grad(set_to_none=True)
        real += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "real_tokens": real, "padded_tokens": padded, "tokens_per_second": real / seconds,
           "steps": len(batches) - warmup}  # fmt: skip
    if cuda:
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    del model, opt, params
    if cuda:
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["smoke", "tinyllama"], default="smoke")
    ap.add_argument("--layers", type=int, default=None, help="tinyllama only: fewer decoder layers (a CPU check)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=8, help="the reference study's training.micro_batch is 8")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--method", choices=["full", "lora"], default="full")
    ap.add_argument("--no-gradient-checkpointing", action="store_true", help="CUDA: turn it off (on by default)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak dense bf16 TFLOP/s for MFU")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    checkpointing = device.type == "cuda" and not args.no_gradient_checkpointing
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    with tempfile.TemporaryDirectory() as tmp:
        shape = Shape(args.shape, Path(tmp), args.layers)
        feats = mrpc_like_features(args.examples, shape.vocab, shape.bos, shape.eos, args.seed)
        lengths = [len(f["input_ids"]) for f in feats]
        method = LoraMethod(dropout=0.0) if args.method == "lora" else FullMethod()
        runs: dict[str, list[dict]] = {"dynamic": [], "fixed": []}
        for _ in range(args.repeats):
            for mode, pad_to in (("dynamic", None), ("fixed", MAX_LENGTH)):
                batches = batches_for(mode, feats, args.micro_batch, args.seed)
                runs[mode].append(
                    train_once(shape, method, feats, batches, pad_to, args.warmup_steps, device, checkpointing)
                )

    best = {mode: max(r["tokens_per_second"] for r in rs) for mode, rs in runs.items()}
    summary = {
        "model": "builtin:tiny-llama" if args.shape == "smoke" else f"tinyllama-shape(layers={shape.config.num_hidden_layers}, random weights)",
        "method": args.method, "device": device_name,
        "threads": torch.get_num_threads(), "gradient_checkpointing": checkpointing,
        "precision": "bf16 autocast, fp32 master weights" if device.type == "cuda" else "fp32",
        "examples": args.examples, "micro_batch": args.micro_batch, "repeats": args.repeats,
        "length_mean": round(statistics.mean(lengths), 1), "length_p50": sorted(lengths)[len(lengths) // 2],
        "length_max": max(lengths),
        "pad_fraction": {m: round(1 - rs[0]["real_tokens"] / rs[0]["padded_tokens"], 3) for m, rs in runs.items()},
        "tokens_per_second": {m: round(v, 1) for m, v in best.items()},
        "all_runs_tokens_per_second": {m: [round(r["tokens_per_second"], 1) for r in rs] for m, rs in runs.items()},
        "ratio_dynamic_over_fixed": round(best["dynamic"] / best["fixed"], 2),
        "paired_ratios": [round(d["tokens_per_second"] / f["tokens_per_second"], 2) for d, f in zip(runs["dynamic"], runs["fixed"], strict=True)],
    }  # fmt: skip
    summary["paired_ratio_median"] = statistics.median(summary["paired_ratios"])
    where = f"{summary['threads']} CPU threads" if device.type == "cpu" else device_name
    print(f"{summary['model']}; MRPC-like lengths: mean {summary['length_mean']} tokens, median {summary['length_p50']}, "
          f"max {summary['length_max']}; {args.examples} examples, micro-batch {args.micro_batch}, {args.method}, {where}")  # fmt: skip
    print(
        f"dynamic padding + length grouping: {best['dynamic']:10.1f} tokens/s (pad fraction {summary['pad_fraction']['dynamic']:.1%})"
    )
    print(
        f"padded to {MAX_LENGTH}:                  {best['fixed']:10.1f} tokens/s (pad fraction {summary['pad_fraction']['fixed']:.1%})"
    )
    print(f"ratio dynamic / fixed: {summary['ratio_dynamic_over_fixed']:.2f}x (best of {args.repeats} runs each); "
          f"per repeat {summary['paired_ratios']}, median {summary['paired_ratio_median']:.2f}x")  # fmt: skip
    if device.type == "cuda":
        peak = args.peak_tflops or peak_tflops(device_name)
        summary["peak_memory_gib"] = {
            m: round(max(r["peak_memory_bytes"] for r in rs) / 2**30, 2) for m, rs in runs.items()
        }
        fpt = shape.flops_per_token(args.method, statistics.mean(lengths))
        summary["model_flops_per_token"] = fpt
        summary["peak_bf16_tflops"] = peak
        summary["mfu"] = {m: (round(fpt * v / (peak * 1e12), 4) if peak else None) for m, v in best.items()}
        print(f"peak GPU memory (max_memory_allocated): dynamic {summary['peak_memory_gib']['dynamic']} GiB, "
              f"fixed {summary['peak_memory_gib']['fixed']} GiB (an L4 has 24 GB = 22.5 GiB)")  # fmt: skip
        if peak:
            print(f"MFU at {peak:g} peak bf16 TFLOP/s: dynamic {summary['mfu']['dynamic']:.1%}, fixed {summary['mfu']['fixed']:.1%} "
                  f"({fpt / 1e9:.2f} GFLOP per real token)")  # fmt: skip
        else:
            print(f"MFU: unknown peak FLOP/s for {device_name!r}; pass --peak-tflops")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
