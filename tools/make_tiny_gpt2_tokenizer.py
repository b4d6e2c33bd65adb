"""Build the tiny GPT-2's tokenizer (pkg/lorascope/assets/tiny-gpt2/tokenizer.json) with the `tokenizers` library.

GPT-2's kind of tokenizer: a byte-level BPE (ByteLevel pre-tokenizer without prefix space, ByteLevel decoder and
post-processor, no unknown token: every byte is in the alphabet) whose only special token is `<|endoftext|>`, the
last id (GPT-2: 50256 of 50257), serving as BOS, EOS and UNK; no pad token (GPT-2 has none; lorascope sets pad = eos
for decoders). Trained on every bundled fixture's train text, sorted so the result is the same on every machine with
the same `tokenizers`: assets/glue/*/train.jsonl (all nine tasks), assets/squad_v2/train.jsonl (contexts and
questions), assets/e2e/train.jsonl (meaning representations and references).

    python tools/make_tiny_gpt2_tokenizer.py           # writes assets/tiny-gpt2/tokenizer.json
    python tools/make_tiny_gpt2_tokenizer.py --check   # exit 1 if the committed file differs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "pkg" / "lorascope" / "assets"
OUT = ASSETS / "tiny-gpt2" / "tokenizer.json"
EOS = "<|endoftext|>"
VOCAB_SIZE = 1024  # including <|endoftext|>, which comes last
TEXT_COLUMNS = ("sentence", "sentence1", "sentence2", "question1", "question2", "premise", "hypothesis", "question",
                "context", "meaning_representation", "human_reference")  # fmt: skip


def corpus() -> list[str]:
    lines: set[str] = set()
    files = sorted((ASSETS / "glue").glob("*/train.jsonl")) + [ASSETS / "squad_v2" / "train.jsonl", ASSETS / "e2e" / "train.jsonl"]
    for path in files:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            lines.update(str(row[c]) for c in TEXT_COLUMNS if c in row)
    return sorted(lines)


def build() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - 1, min_frequency=2, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens([EOS])
    assert tok.token_to_id(EOS) == VOCAB_SIZE - 1 == tok.get_vocab_size() - 1, (tok.token_to_id(EOS), tok.get_vocab_size())
    return tok.to_str(pretty=True) + "\n"


def main(argv: list[str]) -> int:
    text = build()
    if "--check" in argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} differs from this script's output; rerun without --check", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(json.loads(text)['model']['vocab'])} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
