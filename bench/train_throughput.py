"""Training throughput: dynamic padding + length-grouped batches vs padding every sequence to 384.

    .venv/bin/python bench/train_throughput.py                 # smoke model, full fine-tuning, CPU
    .venv/bin/python bench/train_throughput.py --method lora

Both configurations train the same model (the builtin tiny Llama, same init) on the same examples with the same
micro-batch, optimizer and step count, in one process, alternating (dynamic, fixed) `--repeats` times so a change
in machine load hits both; it prints the ratio of the best runs and the ratio within each (dynamic, fixed) pair.
Throughput counts real (non-pad) tokens per second of forward + backward + AdamW step;
the padded configuration also spends time on pad tokens, which is the point.

Lengths are MRPC-like: each sentence's token count is drawn from a normal distribution with mean 28 and sd 9 tokens,
clipped to [6, 90] (MRPC sentences average about 22 words, about 28 Llama tokens), and a pair is `BOS s1 EOS s2`,
about 58 tokens on average. Token ids are random words of the tiny vocabulary: the compute does not depend on which
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

from lorascope import data, modeling
from lorascope.study import FullMethod, LoraMethod

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


def train_once(model_dir: Path, method, feats, batches, pad_id: int, pad_to: int | None, warmup: int) -> dict:
    torch.manual_seed(0)
    model = modeling.apply_method(modeling.load_classifier(model_dir, 2, torch.float32, "cpu"), method, {})
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    real = padded = 0
    t0 = None
    for step, idxs in enumerate(batches):
        if step == warmup:
            t0 = time.perf_counter()
            real = padded = 0
        batch = data.collate([feats[i] for i in idxs], pad_id, pad_to=pad_to)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.3)
        opt.step()
        opt.zero_grad(set_to_none=True)
        real += int(batch["attention_mask"].sum())
        padded += batch["input_ids"].numel()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "real_tokens": real, "padded_tokens": padded, "tokens_per_second": real / seconds,
            "steps": len(batches) - warmup}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--method", choices=["full", "lora"], default="full")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = modeling.build_tiny_llama(Path(tmp) / "model")
        tok = modeling.load_tokenizer(model_dir)
        vocab = range(3, len(tok))  # words only, no specials
        feats = mrpc_like_features(args.examples, vocab, tok.bos_token_id, tok.eos_token_id, args.seed)
        lengths = [len(f["input_ids"]) for f in feats]
        method = LoraMethod(dropout=0.0) if args.method == "lora" else FullMethod()
        runs: dict[str, list[dict]] = {"dynamic": [], "fixed": []}
        for _ in range(args.repeats):
            for mode, pad_to in (("dynamic", None), ("fixed", MAX_LENGTH)):
                batches = batches_for(mode, feats, args.micro_batch, args.seed)
                runs[mode].append(train_once(model_dir, method, feats, batches, tok.pad_token_id, pad_to, args.warmup_steps))

    best = {mode: max(r["tokens_per_second"] for r in rs) for mode, rs in runs.items()}
    summary = {
        "model": "builtin:tiny-llama", "method": args.method, "device": "cpu", "threads": torch.get_num_threads(),
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
    print(f"MRPC-like lengths: mean {summary['length_mean']} tokens, median {summary['length_p50']}, max {summary['length_max']}; "
          f"{args.examples} examples, micro-batch {args.micro_batch}, {args.method}, {summary['threads']} CPU threads")  # fmt: skip
    print(f"dynamic padding + length grouping: {best['dynamic']:10.1f} tokens/s (pad fraction {summary['pad_fraction']['dynamic']:.1%})")
    print(f"padded to {MAX_LENGTH}:                  {best['fixed']:10.1f} tokens/s (pad fraction {summary['pad_fraction']['fixed']:.1%})")
    print(f"ratio dynamic / fixed: {summary['ratio_dynamic_over_fixed']:.2f}x (best of {args.repeats} runs each); "
          f"per repeat {summary['paired_ratios']}, median {summary['paired_ratio_median']:.2f}x")  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
