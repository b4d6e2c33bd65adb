"""Build the tiny RoBERTa's tokenizer (pkg/lorascope/assets/tiny-roberta/tokenizer.json) with the `tokenizers` library.

A byte-level BPE (RoBERTa's kind: ByteLevel pre-tokenizer without prefix space, ByteLevel decoder) trained on the
bundled GLUE-format fixtures' train splits (sorted text, so the result is the same on every machine with the same
`tokenizers`), with RoBERTa's special tokens at RoBERTa's ids (<s>=0 <pad>=1 </s>=2 <unk>=3, <mask>=4) and RoBERTa's
templates as the post-processor: a sentence `<s> A </s>`, a pair `<s> A </s></s> B </s>` (tokenizers'
RobertaProcessing). `python tools/make_tiny_roberta_tokenizer.py --check` verifies the committed file is exactly
this script's output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "pkg" / "lorascope" / "assets"
OUT = ASSETS / "tiny-roberta" / "tokenizer.json"
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
VOCAB_SIZE = 1024


def corpus() -> list[str]:
    lines = []
    for task in ("mrpc", "rte", "sst2"):
        for line in (ASSETS / "glue" / task / "train.jsonl").read_text().splitlines():
            row = json.loads(line)
            lines.extend(str(row[c]) for c in ("sentence", "sentence1", "sentence2") if c in row)
    return sorted(lines)


def build() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)  # fmt: skip
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok.to_str(pretty=True) + "\n"


def main(argv: list[str]) -> int:
    text = build()
    if "--check" in argv:
        if OUT.read_text() != text:
            print(f"{OUT} differs from this script's output; rerun without --check", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({json.loads(text)['model']['vocab'].__len__()} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
