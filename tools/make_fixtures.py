"""Generate the bundled GLUE-format fixtures and the tiny-llama tokenizer, deterministically.

    .venv/bin/python tools/make_fixtures.py          # rewrites pkg/lorascope/assets/{glue,tiny-llama}
    .venv/bin/python tools/make_fixtures.py --check  # exit 1 if the committed files differ from a fresh build

The data are SYNTHETIC (GLUE cannot be downloaded here): English-like sentences from templates, with GLUE's column
names, label meanings and roughly GLUE's label balance, written so a tiny randomly initialised Llama learns them
above the majority baseline in a couple of CPU epochs. See pkg/lorascope/assets/glue/README.md.

Everything comes from `random.Random(<fixed seed per task and split>)` and sorted word lists, so the output is
byte-identical on every machine and Python >= 3.11.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from tokenizers import pre_tokenizers

ASSETS = Path(__file__).resolve().parents[1] / "pkg" / "lorascope" / "assets"
SIZES = {"train": 600, "validation": 200}
SEEDS = {"sst2": 11, "mrpc": 22, "rte": 33}
SPLIT_OFFSET = {"train": 0, "validation": 1000}
POSITIVE_RATE = {"sst2": 0.56, "mrpc": 0.68, "rte": 0.5}  # share of label 1, close to GLUE's train splits

# Special tokens of the tiny tokenizer, in id order: <unk>=0, <s>=1 (BOS), </s>=2 (EOS, also the pad token).
SPECIALS = ["<unk>", "<s>", "</s>"]
PRE_TOKENIZER = pre_tokenizers.Whitespace()  # words and runs of punctuation: "it's" -> it ' s

# ------------------------------------------------------------------------------------------------ word lists
NAMES = sorted("""alice bruno carla daniel elena felix greta hugo irene jonas karin leo maria nora oscar paula
quentin rosa samuel tara victor wanda yusuf zoe amir bianca chen dmitri esther farid""".split())
CITIES = sorted("""paris lisbon oslo vienna dublin prague madrid berlin warsaw athens rome helsinki zurich
lyon porto seville krakow bergen geneva milan""".split())
DISTRACTOR_CITIES = sorted("""cairo lima quito""".split())
JOBS = sorted("""baker teacher nurse pilot farmer lawyer plumber chemist painter editor dentist florist
architect carpenter librarian""".split())
DISTRACTOR_JOBS = sorted("""juggler astronaut sculptor""".split())
PETS = sorted("""dog cat parrot rabbit turtle hamster goat pony""".split())
DISTRACTOR_PETS = sorted("""llama ferret iguana""".split())
DAYS = sorted("monday tuesday wednesday thursday friday saturday sunday".split())

# sst2
SUBJECTS = [
    "the film", "this movie", "the plot", "the acting", "the soundtrack", "the script", "the cast", "the ending",
    "the dialogue", "the story", "the lead performance", "the camera work", "this picture", "the screenplay",
    "the second half", "the opening scene", "the humor", "the direction", "the editing", "the premise",
]
POSITIVE = sorted("""wonderful brilliant moving charming delightful gripping funny beautiful smart engaging
touching superb fresh witty powerful heartfelt stunning clever warm memorable""".split())
NEGATIVE = sorted("""dull boring clumsy tedious lifeless predictable awful bland messy shallow tiresome
forgettable flat pointless silly stale painful weak lazy hollow""".split())
INTENSIFIERS = ["very", "really", "quite", "truly", "remarkably", "rather", "so", "utterly"]
NEUTRAL_CLAUSES = [
    "a modest budget", "a running time of two hours", "a cast of unknowns", "its familiar setting",
    "a story set in a small town", "a script based on a novel", "a score by a newcomer", "a long first act",
    "a release in the middle of summer", "a director making a debut",
]
TOPICS = ["family", "war", "love", "friendship", "music", "a heist", "growing up", "revenge", "a long journey",
          "an old house", "two brothers", "a small village"]

# mrpc
ORGS = sorted("""company ministry council union bank agency court airline university hospital""".split())
ACTIONS = {  # verb (past) -> synonym used by the paraphrase
    "announced": "revealed", "approved": "backed", "rejected": "turned down", "launched": "started",
    "cancelled": "called off", "delayed": "postponed", "expanded": "enlarged", "reviewed": "examined",
    "criticized": "faulted", "defended": "supported", "completed": "finished", "proposed": "suggested",
}
THINGS = {  # object -> synonym
    "plan": "proposal", "budget": "spending plan", "project": "program", "deal": "agreement",
    "report": "study", "policy": "rule", "contract": "agreement with suppliers", "merger": "combination",
    "strike": "walkout", "investigation": "inquiry", "schedule": "timetable", "offer": "bid",
}
REASONS = ["after a long debate", "despite strong opposition", "following a vote", "after months of talks",
           "citing rising costs", "under pressure from investors", "to meet new rules", "before the holidays"]
EXTRA_CLAUSES = ["officials said", "according to a spokesman", "sources said", "a statement added",
                 "analysts noted", "the newspaper reported"]


def article(word: str) -> str:
    """'a baker', 'an editor'."""
    return ("an " if word[0] in "aeiou" else "a ") + word


# ------------------------------------------------------------------------------------------------ sst2
def sst2_example(rng: random.Random, label: int) -> tuple[str, int]:
    """SST-2: 1 = positive, 0 = negative (56% positive like GLUE's train split)."""
    own, other = (POSITIVE, NEGATIVE) if label == 1 else (NEGATIVE, POSITIVE)
    a, b, c = rng.sample(own, 3)
    s1, s2 = rng.sample(SUBJECTS, 2)
    intens = rng.choice(INTENSIFIERS)
    kind = rng.random()
    if kind < 0.14:
        text = f"{s1} is {intens} {a} ."
    elif kind < 0.26:
        text = f"{s1} feels {a} from start to finish ."
    elif kind < 0.38:
        text = f"{article(a)} and {b} film about {rng.choice(TOPICS)} ."
    elif kind < 0.48:
        text = f"{a} , {b} , and {intens} {c} ."
    elif kind < 0.60:
        text = f"i thought {s1} was {a} , and {s2} was {b} ."
    elif kind < 0.70:
        text = f"even with {rng.choice(NEUTRAL_CLAUSES)} , {s1} remains {a} ."
    elif kind < 0.80:
        text = f"{s1} , about {rng.choice(TOPICS)} , is {a} and {intens} {b} ."
    elif kind < 0.90:  # contrast: the clause after "but" carries the label
        text = f"{s1} is {rng.choice(other)} , but {s2} is {intens} {a} ."
    else:  # negated opposite word: "not dull" is positive
        text = f"{s1} is not {rng.choice(other)} at all ; it is {a} ."
    return text, label


# ------------------------------------------------------------------------------------------------ mrpc
def _mrpc_source(rng: random.Random) -> dict:
    return {
        "org": rng.choice(ORGS), "action": rng.choice(sorted(ACTIONS)), "thing": rng.choice(sorted(THINGS)),
        "city": rng.choice(CITIES), "day": rng.choice(DAYS), "reason": rng.choice(REASONS),
        "number": rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50]),
    }


def _mrpc_sentence(f: dict) -> str:
    return f"the {f['org']} in {f['city']} {f['action']} the {f['thing']} on {f['day']} {f['reason']} ."


def _mrpc_rewrite(rng: random.Random, f: dict) -> str:
    """A paraphrase-style rewrite of the facts in `f`: synonyms and a different word order."""
    verb, thing = ACTIONS[f["action"]], THINGS[f["thing"]]
    style = rng.random()
    if style < 0.4:
        return f"on {f['day']} , the {f['org']} in {f['city']} {verb} the {thing} {f['reason']} ."
    if style < 0.7:
        return f"{f['reason']} , the {f['city']} {f['org']} {verb} the {thing} on {f['day']} ."
    return f"the {thing} was {verb} by the {f['org']} in {f['city']} on {f['day']} ."


def mrpc_example(rng: random.Random, label: int) -> tuple[str, str, int]:
    """MRPC: 1 = equivalent (68% like GLUE), 0 = not equivalent."""
    f = _mrpc_source(rng)
    s1 = _mrpc_sentence(f)
    if label == 1:
        return s1, _mrpc_rewrite(rng, f), 1
    # not equivalent. Half are hard: the same rewrite with one detail changed (only a comparison with s1 tells);
    # the rest look like many MRPC negatives: related sentences with extra attribution ("officials said") and
    # numbers, or a sentence about something else
    g = dict(f)
    style = rng.random()
    if style < 0.5:
        detail = rng.choice(["org", "city", "day", "thing"])
        pool = {"org": ORGS, "city": CITIES, "day": DAYS, "thing": sorted(THINGS)}[detail]
        g[detail] = rng.choice([v for v in pool if v != f[detail]])
        s2 = _mrpc_rewrite(rng, g)
    elif style < 0.7:
        g["action"] = rng.choice([a for a in sorted(ACTIONS) if a != f["action"]])
        g["number"] = f["number"]
        s2 = f"{rng.choice(EXTRA_CLAUSES)} the {g['org']} {g['action']} {g['number']} other plans on {g['day']} ."
    elif style < 0.85:
        g["city"] = rng.choice([c for c in CITIES if c != f["city"]])
        g["thing"] = rng.choice([t for t in sorted(THINGS) if t != f["thing"]])
        s2 = f"the {g['org']} in {g['city']} {g['action']} {article(g['thing'])} worth {g['number']} million , {rng.choice(EXTRA_CLAUSES)} ."
    else:
        h = _mrpc_source(rng)
        s2 = _mrpc_sentence(h)
    return s1, s2, 0


# ------------------------------------------------------------------------------------------------ rte
def rte_example(rng: random.Random, label: int) -> tuple[str, str, int]:
    """RTE: 0 = entailment, 1 = not_entailment (GLUE's label order), 50/50."""
    name, other_name = rng.sample(NAMES, 2)
    city, job, pet = rng.choice(CITIES), rng.choice(JOBS), rng.choice(PETS)
    year = rng.randint(1990, 2020)
    style = rng.random()
    if style < 0.5:
        s1 = f"{name} , who lives in {city} , works as {article(job)} and has {article(pet)} ."
    else:
        s1 = f"after moving to {city} in {year} , {name} found work as {article(job)} and adopted {article(pet)} ."
    fact = rng.choice(["city", "job", "pet"])
    right = {"city": city, "job": job, "pet": pet}[fact]
    who, value, negated = name, right, False
    if label == 1:
        # not entailed: a wrong value (often one that never occurs in any premise: a hypothesis-only cue of the
        # kind real NLI data has), a negated true fact (negation words are the classic NLI artifact), or the
        # right fact about another person
        same_pool, distractors = {"city": (CITIES, DISTRACTOR_CITIES), "job": (JOBS, DISTRACTOR_JOBS),
                                  "pet": (PETS, DISTRACTOR_PETS)}[fact]  # fmt: skip
        wrong = rng.random()
        if wrong < 0.5:
            value = rng.choice(distractors)
        elif wrong < 0.65:
            value = rng.choice([v for v in same_pool if v != right])
        elif wrong < 0.9:
            negated = True
        else:
            who = other_name
    if negated:
        s2 = {"city": f"{who} does not live in {value} .", "job": f"{who} is not {article(value)} .",
              "pet": f"{who} does not own {article(value)} ."}[fact]  # fmt: skip
    else:
        s2 = {"city": f"{who} lives in {value} .", "job": f"{who} is {article(value)} .",
              "pet": f"{who} owns {article(value)} ."}[fact]  # fmt: skip
    return s1, s2, label


# ------------------------------------------------------------------------------------------------ writing
def make_split(task: str, split: str, exclude: set[str] = frozenset()) -> tuple[list[dict], set[str]]:
    """`SIZES[split]` distinct examples, none of them in `exclude` (GLUE's splits are disjoint)."""
    rng = random.Random(SEEDS[task] + SPLIT_OFFSET[split])
    n = SIZES[split]
    positives = round(POSITIVE_RATE[task] * n)
    labels = [1] * positives + [0] * (n - positives)
    rng.shuffle(labels)
    rows, seen = [], set(exclude)
    while len(rows) < n:
        want = labels[len(rows)]
        if task == "sst2":
            text, label = sst2_example(rng, want)
            key = text
            row = {"sentence": text, "label": label}
        else:
            s1, s2, label = (mrpc_example if task == "mrpc" else rte_example)(rng, want)
            key = s1 + " || " + s2
            row = {"sentence1": s1, "sentence2": s2, "label": label}
        if key in seen:
            continue
        seen.add(key)
        rows.append({**row, "idx": len(rows)})
    return rows, seen - set(exclude)


def build(dest: Path) -> dict[str, bytes]:
    """Every output file (relative path -> bytes)."""
    out: dict[str, bytes] = {}
    words: set[str] = set()
    splits: dict[tuple[str, str], list[dict]] = {}
    for task in ("mrpc", "rte", "sst2"):
        train_keys: set[str] = set()
        for split in SIZES:
            rows, keys = make_split(task, split, exclude=train_keys)
            train_keys |= keys
            splits[task, split] = rows
            out[f"glue/{task}/{split}.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
        cols = ("sentence",) if task == "sst2" else ("sentence1", "sentence2")
        for r in splits[task, "train"]:
            for c in cols:
                words.update(w for w, _span in PRE_TOKENIZER.pre_tokenize_str(r[c].lower()))
    out.update(tokenizer_files(sorted(words)))
    return out


def tokenizer_files(words: list[str]) -> dict[str, bytes]:
    """A word-level `tokenizers` tokenizer over the train splits' words (lowercased, split on whitespace and
    punctuation), ids assigned in sorted order after the specials; unseen words map to <unk>."""
    from tokenizers import Tokenizer, decoders, normalizers
    from tokenizers.models import WordLevel

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = PRE_TOKENIZER
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.add_special_tokens(SPECIALS)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "padding_side": "right",
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    model_config = {  # the smoke model: a Llama with TinyLlama's structure (GQA, SwiGLU, RMSNorm, RoPE), tiny sizes
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(vocab),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": vocab["<s>"],
        "eos_token_id": vocab["</s>"],
        "pad_token_id": vocab["</s>"],
        "torch_dtype": "float32",
    }
    return {
        "tiny-llama/config.json": (json.dumps(model_config, indent=2) + "\n").encode(),
        "tiny-llama/tokenizer.json": tok.to_str(pretty=True).encode() + b"\n",
        "tiny-llama/tokenizer_config.json": (json.dumps(config, indent=2) + "\n").encode(),
        "tiny-llama/special_tokens_map.json": (
            json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}, indent=2) + "\n"
        ).encode(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=ASSETS)
    ap.add_argument("--check", action="store_true", help="compare with the files in --dest instead of writing")
    args = ap.parse_args(argv)
    files = build(args.dest)
    if args.check:
        stale = [rel for rel, data in files.items() if not (args.dest / rel).is_file() or (args.dest / rel).read_bytes() != data]
        for rel in stale:
            print(f"stale: {args.dest / rel}")
        return 1 if stale else 0
    for rel, data in sorted(files.items()):
        path = args.dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
