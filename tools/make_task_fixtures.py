"""Generate the bundled fixtures for the task types beyond sst2/mrpc/rte, deterministically.

    .venv/bin/python tools/make_task_fixtures.py          # writes pkg/lorascope/assets/{glue/<task>,squad_v2,e2e}
    .venv/bin/python tools/make_task_fixtures.py --check  # exit 1 if the committed files differ from a fresh build
    .venv/bin/python tools/make_task_fixtures.py --unk    # <unk> rate of every text column under the tiny tokenizer

SYNTHETIC data in the real datasets' formats (column names, label ids, split names of the Hugging Face `glue`,
`squad_v2` and `e2e_nlg` datasets), written so a tiny random model learns them in a couple of CPU epochs:
- GLUE: cola, qqp, stsb (regression), mnli (validation_matched and validation_mismatched), qnli, wnli;
- squad_v2: contexts about people and organisations, answerable questions with character offsets and
  unanswerable ones (values absent from the context);
- e2e: meaning representations `name[...], job[...], ...` with two to six references each, one row per reference.

The words come from tools/make_fixtures.py's lists (the same names, cities, jobs, pets, organisations ...), so the
tiny Llama's word-level tokenizer (assets/tiny-llama, built from the sst2/mrpc/rte fixtures and left unchanged) knows
almost every word: `--unk` reports the rates, tests/test_task_fixtures.py pins them. That script's output is not
touched. Everything comes from `random.Random(<fixed seed per set and split>)`, so the bytes are the same on every
machine and Python >= 3.11. See the README.md next to each set.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "pkg" / "lorascope" / "assets"


def _base():
    """tools/make_fixtures.py, loaded by path (tools/ is not a package): its word lists and `article`."""
    spec = importlib.util.spec_from_file_location("make_fixtures", Path(__file__).resolve().parent / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASE = _base()
NAMES, CITIES, JOBS, PETS, DAYS = BASE.NAMES, BASE.CITIES, BASE.JOBS, BASE.PETS, BASE.DAYS
DISTRACTOR_CITIES, DISTRACTOR_JOBS, DISTRACTOR_PETS = BASE.DISTRACTOR_CITIES, BASE.DISTRACTOR_JOBS, BASE.DISTRACTOR_PETS
ORGS, ACTIONS, THINGS, REASONS = BASE.ORGS, BASE.ACTIONS, BASE.THINGS, BASE.REASONS
SUBJECTS, POSITIVE, NEGATIVE, INTENSIFIERS = BASE.SUBJECTS, BASE.POSITIVE, BASE.NEGATIVE, BASE.INTENSIFIERS
article = BASE.article

SEEDS = {"cola": 44, "qqp": 55, "stsb": 66, "mnli": 77, "qnli": 88, "wnli": 99, "squad_v2": 111, "e2e": 122}
SPLIT_OFFSET = {"train": 0, "validation": 1000, "validation_matched": 1000, "validation_mismatched": 2000}
GLUE_SIZES = {
    "cola": {"train": 600, "validation": 200},
    "qqp": {"train": 600, "validation": 200},
    "stsb": {"train": 600, "validation": 200},
    "mnli": {"train": 900, "validation_matched": 200, "validation_mismatched": 200},
    "qnli": {"train": 600, "validation": 200},
    "wnli": {"train": 600, "validation": 200},
}
# label shares, close to GLUE's train splits: cola 70% acceptable, qqp 37% duplicate; mnli three equal classes
LABEL_SHARES = {"cola": {1: 0.7, 0: 0.3}, "qqp": {1: 0.37, 0: 0.63}, "mnli": {0: 1 / 3, 1: 1 / 3, 2: 1 / 3},
                "qnli": {0: 0.5, 1: 0.5}, "wnli": {1: 0.5, 0: 0.5}}  # fmt: skip
SQUAD_CONTEXTS = {"train": 110, "validation": 45}  # about 5 questions each
# unanswerable questions per paragraph (with 3 answerable ones): 1.5 of 4.5 = 1/3 in train, 3 of 6 = 1/2 in
# validation, SQuAD v2's shares (train ~1/3, dev ~1/2)
SQUAD_UNANSWERABLE = {"train": (1, 2), "validation": (2, 3, 4)}
E2E_MRS = {"train": 150, "validation": 50}
ANTONYMS = {"approved": "rejected", "rejected": "approved", "launched": "cancelled", "cancelled": "launched",
            "defended": "criticized", "criticized": "defended", "completed": "delayed", "delayed": "completed"}  # fmt: skip


def _person(rng: random.Random, name: str | None = None) -> dict:
    return {"name": name or rng.choice(NAMES), "city": rng.choice(CITIES), "job": rng.choice(JOBS),
            "pet": rng.choice(PETS), "year": rng.randint(1990, 2020)}  # fmt: skip


def _news(rng: random.Random) -> dict:
    return {"org": rng.choice(ORGS), "city": rng.choice(CITIES), "action": rng.choice(sorted(ACTIONS)),
            "thing": rng.choice(sorted(THINGS)), "day": rng.choice(DAYS), "reason": rng.choice(REASONS)}  # fmt: skip


def _other(rng: random.Random, pool: list[str], value: str) -> str:
    return rng.choice([v for v in pool if v != value])


# ------------------------------------------------------------------------------------------------ cola
def _acceptable(rng: random.Random) -> str:
    p, n = _person(rng), _news(rng)
    return rng.choice([
        f"{p['name']} lives in {p['city']} .",
        f"{p['name']} works as {article(p['job'])} in {p['city']} .",
        f"{p['name']} , who lives in {p['city']} , has {article(p['pet'])} .",
        f"{p['name']} does not own {article(p['pet'])} .",
        f"after moving to {p['city']} in {p['year']} , {p['name']} found work as {article(p['job'])} .",
        f"the {n['org']} in {n['city']} {n['action']} the {n['thing']} on {n['day']} .",
        f"the {n['thing']} was {n['action']} by the {n['org']} .",
        f"{rng.choice(SUBJECTS)} is {rng.choice(INTENSIFIERS)} {rng.choice(POSITIVE + NEGATIVE)} .",
    ])  # fmt: skip


def _corrupt(rng: random.Random, sentence: str) -> str | None:
    """An ungrammatical version of `sentence` (None if the chosen corruption does not apply): a wrong article
    ("an baker"), broken agreement ("alice live in"), a doubled function word, a dropped verb, or a determiner after
    its noun ("council the")."""
    words = sentence.split()
    kind = rng.choice(["article", "agreement", "double", "drop", "swap"])
    if kind == "article":
        spots = [i for i, w in enumerate(words[:-1]) if w in ("a", "an")]
        if not spots:
            return None
        i = rng.choice(spots)
        words[i] = "an" if words[i] == "a" else "a"
    elif kind == "agreement":
        swaps = {"lives": "live", "works": "work", "owns": "own", "own": "owns"}
        spots = [i for i, w in enumerate(words) if w in swaps]
        if not spots:
            return None
        i = rng.choice(spots)
        words[i] = swaps[words[i]]
    elif kind == "double":
        spots = [i for i, w in enumerate(words) if w in ("the", "in", "to", "as", "on", "by")]
        if not spots:
            return None
        i = rng.choice(spots)
        words.insert(i, words[i])
    elif kind == "drop":
        verbs = {"lives", "works", "has", "own", "found", "was", "is", *ACTIONS}
        spots = [i for i, w in enumerate(words) if w in verbs]
        if not spots:
            return None
        del words[rng.choice(spots)]
    else:
        spots = [i for i, w in enumerate(words[:-2]) if w in ("the", "a", "an") and words[i + 1] not in (".", ",")]
        if not spots:
            return None
        i = rng.choice(spots)
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def cola_example(rng: random.Random, label: int) -> dict:
    """CoLA: 1 = acceptable, 0 = unacceptable (a corrupted acceptable sentence)."""
    while True:
        sentence = _acceptable(rng)
        if label == 1:
            return {"sentence": sentence, "label": 1}
        bad = _corrupt(rng, sentence)
        if bad is not None and bad != sentence:
            return {"sentence": bad, "label": 0}


# ------------------------------------------------------------------------------------------------ qqp
# A question meaning is (kind, values); each kind has several wordings, two wordings of one meaning are duplicates.
QUESTION_FORMS: dict[str, list[str]] = {
    "lives": ["does {name} live in {city}", "is {city} the town {name} lives in", "does {name} live in the town of {city}"],
    "job": ["is {name} {a_job}", "does {name} work as {a_job}", "has {name} found work as {a_job}"],
    "pet": ["does {name} own {a_pet}", "does {name} live with {a_pet}", "has {name} adopted {a_pet}"],
    "who_city": ["who lives in {city}", "who is from {city}", "who lives in the town of {city}"],
    "who_job": ["who works as {a_job}", "who is {a_job}", "who found work as {a_job}"],
    "who_pet": ["who owns {a_pet}", "who has {a_pet}", "who lives with {a_pet}"],
    "news": ["was the {thing} {action} by the {org}", "has the {org} {action} the {thing}",
             "was it the {org} who {action} the {thing}"],
}  # fmt: skip
QUESTION_SLOTS = {"lives": ("name", "city"), "job": ("name", "job"), "pet": ("name", "pet"), "who_city": ("city",),
                  "who_job": ("job",), "who_pet": ("pet",), "news": ("org", "action", "thing")}  # fmt: skip


def _question_values(rng: random.Random) -> dict:
    p, n = _person(rng), _news(rng)
    return {**p, "org": n["org"], "action": n["action"], "thing": n["thing"]}


def _ask(form: str, values: dict) -> str:
    return form.format(**values, a_job=article(values["job"]), a_pet=article(values["pet"]))


# words no duplicate pair contains (years, days, "moving", "holidays", "vote"): a surface cue
QUALIFIERS = ["in {year}", "on {day}", "after moving to {city}", "before the holidays", "following a vote"]


def qqp_example(rng: random.Random, label: int) -> dict:
    """QQP: 1 = duplicate (two wordings of one question), 0 = not. Non-duplicates: 75% ask the same with a
    qualifier added ("... in 1995", "... on monday": a narrower question; words no duplicate contains, a surface
    cue of the kind real QQP negatives carry), 20% the same wording family with one value changed (only a
    comparison tells), 5% another question about the same person or an unrelated one."""
    kind = rng.choice(sorted(QUESTION_FORMS))
    values = _question_values(rng)
    form1, form2 = rng.sample(QUESTION_FORMS[kind], 2)
    q1 = _ask(form1, values)
    if label == 1:
        return {"question1": q1, "question2": _ask(form2, values), "label": 1}
    style = rng.random()
    if style < 0.75:
        qualifier = rng.choice(QUALIFIERS).format(year=values["year"], city=values["city"], day=rng.choice(DAYS))
        q2 = f"{_ask(form2, values)} {qualifier}"
    elif style < 0.95:
        slot = rng.choice(QUESTION_SLOTS[kind])
        pool = {"name": NAMES, "city": CITIES, "job": JOBS, "pet": PETS, "org": ORGS, "action": sorted(ACTIONS),
                "thing": sorted(THINGS)}[slot]  # fmt: skip
        q2 = _ask(rng.choice(QUESTION_FORMS[kind]), {**values, slot: _other(rng, pool, values[slot])})
    elif style < 0.975:
        other_kind = rng.choice([k for k in sorted(QUESTION_FORMS) if k != kind])
        q2 = _ask(rng.choice(QUESTION_FORMS[other_kind]), values)
    else:
        q2 = _ask(rng.choice(QUESTION_FORMS[rng.choice(sorted(QUESTION_FORMS))]), _question_values(rng))
    return {"question1": q1, "question2": q2, "label": 0}


# ------------------------------------------------------------------------------------------------ stsb
def _describe(rng: random.Random, p: dict) -> str:
    return rng.choice([
        f"{p['name']} is {article(p['job'])} who lives in {p['city']} and has {article(p['pet'])} .",
        f"{p['name']} , who lives in {p['city']} , works as {article(p['job'])} and has {article(p['pet'])} .",
        f"{p['name']} lives in {p['city']} , works as {article(p['job'])} and owns {article(p['pet'])} .",
        f"in {p['city']} , {p['name']} works as {article(p['job'])} and lives with {article(p['pet'])} .",
        f"{article(p['job'])} called {p['name']} lives in {p['city']} with {article(p['pet'])} .",
    ])  # fmt: skip


def stsb_example(rng: random.Random, _label: object = None) -> dict:
    """STS-B: similarity 0 (unrelated) to 5 (same meaning), rounded to 2 decimals. A quarter of the pairs are
    unrelated (the second sentence is about an organisation's decision or a film: 0.0 to 0.6, a topic change a
    tiny model sees without comparing). In the rest both sentences describe a person's city, job and pet and the
    second keeps m of the three facts: same person 1 + 4 m / 3, another person 0.4 + 2 m / 3, plus uniform noise of
    +-0.25 (annotators disagree), clipped to [0, 5]."""
    p = _person(rng)
    if rng.random() < 0.25:
        n = _news(rng)
        other = rng.choice([f"the {n['org']} in {n['city']} {n['action']} the {n['thing']} on {n['day']} {n['reason']} .",
                            f"{rng.choice(SUBJECTS)} is {rng.choice(INTENSIFIERS)} {rng.choice(POSITIVE + NEGATIVE)} ."])  # fmt: skip
        return {"sentence1": _describe(rng, p), "sentence2": other, "label": round(rng.uniform(0.0, 0.6), 2)}
    q = dict(p)
    same_person = rng.random() < 0.7
    if not same_person:
        q["name"] = _other(rng, NAMES, p["name"])
    kept = rng.randint(0, 3)
    for slot in rng.sample(["city", "job", "pet"], 3 - kept):
        q[slot] = _other(rng, {"city": CITIES, "job": JOBS, "pet": PETS}[slot], p[slot])
    score = (1 + 4 * kept / 3) if same_person else (0.4 + 2 * kept / 3)
    score = min(5.0, max(0.0, score + rng.uniform(-0.25, 0.25)))
    return {"sentence1": _describe(rng, p), "sentence2": _describe(rng, q), "label": round(score, 2)}


# ------------------------------------------------------------------------------------------------ mnli
def _fact(slot: str, p: dict, negated: bool = False) -> str:
    if slot == "city":
        return f"{p['name']} does not live in {p['city']} ." if negated else f"{p['name']} lives in {p['city']} ."
    if slot == "job":
        return f"{p['name']} is not {article(p['job'])} ." if negated else f"{p['name']} is {article(p['job'])} ."
    return f"{p['name']} does not own {article(p['pet'])} ." if negated else f"{p['name']} has {article(p['pet'])} ."


def mnli_people(rng: random.Random, label: int) -> dict:
    """Matched genre (train and validation_matched): a premise states two of a person's city, job and pet.
    0 entailment: one stated fact again, or "a <job> lives in <city>"; 2 contradiction: a stated fact with another
    value, or negated; 1 neutral: the unstated attribute (sometimes negated: negation is a cue, not a rule), or
    another person."""
    p = _person(rng)
    stated = sorted(rng.sample(["city", "job", "pet"], 2))
    a_job, a_pet = article(p["job"]), article(p["pet"])
    premise = {
        ("city", "job"): rng.choice([f"{p['name']} , who lives in {p['city']} , works as {a_job} .",
                                     f"after moving to {p['city']} in {p['year']} , {p['name']} found work as {a_job} ."]),
        ("city", "pet"): rng.choice([f"{p['name']} lives in {p['city']} and has {a_pet} .",
                                     f"{p['name']} , who lives in {p['city']} , adopted {a_pet} ."]),
        ("job", "pet"): rng.choice([f"{p['name']} works as {a_job} and has {a_pet} .",
                                    f"{p['name']} , {a_job} , lives with {a_pet} ."]),
    }[tuple(stated)]  # fmt: skip
    if label == 0:
        if "city" in stated and "job" in stated and rng.random() < 0.3:
            hypothesis = f"{a_job} lives in {p['city']} ."
        else:
            hypothesis = _fact(rng.choice(stated), p)
    elif label == 2:
        slot = rng.choice(stated)
        if rng.random() < 0.5:
            hypothesis = _fact(slot, p, negated=True)
        else:
            changed = dict(p)
            changed[slot] = _other(rng, {"city": CITIES, "job": JOBS, "pet": PETS}[slot], p[slot])
            hypothesis = _fact(slot, changed)
    else:
        unstated = ({"city", "job", "pet"} - set(stated)).pop()
        if rng.random() < 0.75:
            hypothesis = _fact(unstated, p, negated=rng.random() < 0.3)
        else:
            hypothesis = _fact(rng.choice(stated), {**p, "name": _other(rng, NAMES, p["name"])})
    return {"premise": premise, "hypothesis": hypothesis, "label": label}


def mnli_news(rng: random.Random, label: int) -> dict:
    """Mismatched genre (validation_mismatched only, as MNLI's mismatched genres are not in its train split):
    news-like premises. 0: the event restated; 2: the opposite action, another day, or negated; 1: a fact the premise
    does not state (a sum, other plans)."""
    n = _news(rng)
    premise = f"the {n['org']} in {n['city']} {n['action']} the {n['thing']} on {n['day']} {n['reason']} ."
    if label == 0:
        hypothesis = rng.choice([f"the {n['org']} {n['action']} the {n['thing']} .",
                                 f"the {n['thing']} was {n['action']} by the {n['org']} .",
                                 f"the {n['org']} {n['action']} the {n['thing']} on {n['day']} ."])  # fmt: skip
    elif label == 2:
        style = rng.random()
        if style < 0.4 and n["action"] in ANTONYMS:
            hypothesis = f"the {n['org']} in {n['city']} {ANTONYMS[n['action']]} the {n['thing']} on {n['day']} ."
        elif style < 0.7:
            hypothesis = f"the {n['org']} {n['action']} the {n['thing']} on {_other(rng, DAYS, n['day'])} ."
        else:
            hypothesis = f"the {n['thing']} was not {n['action']} by the {n['org']} ."
    else:
        number = rng.choice([2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50])
        hypothesis = rng.choice([f"the {n['thing']} was worth {number} million .",
                                 f"the {n['org']} in {n['city']} has {number} other plans .",
                                 f"the {n['org']} {n['action']} {number} other plans on {n['day']} ."])  # fmt: skip
    return {"premise": premise, "hypothesis": hypothesis, "label": label}


# ------------------------------------------------------------------------------------------------ qnli
def qnli_example(rng: random.Random, label: int) -> dict:
    """QNLI: 0 = entailment (the sentence contains the answer), 1 = not_entailment (a sentence about the same kind
    of fact that does not answer: another value, or another attribute)."""
    p = _person(rng)
    kind = rng.choice(["who_city", "who_job", "who_pet", "news"])
    if kind == "news":
        n = _news(rng)
        question = f"who {n['action']} the {n['thing']}"
        sentence = f"the {n['org']} in {n['city']} {n['action']} the {n['thing']} on {n['day']} {n['reason']} ."
        if label == 1:
            other = dict(n, thing=_other(rng, sorted(THINGS), n["thing"]))
            if rng.random() < 0.5:
                other["action"] = _other(rng, sorted(ACTIONS), n["action"])
            sentence = f"the {other['org']} in {other['city']} {other['action']} the {other['thing']} on {other['day']} ."
        return {"question": question, "sentence": sentence, "label": label}
    question = _ask(rng.choice(QUESTION_FORMS[kind]), p)
    asked = {"who_city": "city", "who_job": "job", "who_pet": "pet"}[kind]
    shown = dict(p)
    if label == 1:
        shown[asked] = _other(rng, {"city": CITIES, "job": JOBS, "pet": PETS}[asked], p[asked])
    sentence = _describe(rng, shown) if label == 0 or rng.random() < 0.6 else _fact(
        rng.choice([s for s in ("city", "job", "pet") if s != asked]), shown)  # fmt: skip
    return {"question": question, "sentence": sentence, "label": label}


# ------------------------------------------------------------------------------------------------ wnli
THING_ADJECTIVES = sorted("weak flat messy predictable clumsy stale bland pointless shallow lazy".split())


def wnli_example(rng: random.Random, label: int) -> dict:
    """WNLI: 1 = entailment (sentence2 puts the right referent in place of "it"), 0 = not_entailment. The referent
    follows from the predicate: a plan-like quality ("weak", "stale") -> the thing, "under pressure from
    investors" -> the organisation. Half of the wrong readings name the other of the two; the other half name the
    city, which is never the referent (a hypothesis-only cue of the kind real NLI data has, so a tiny model gets a
    foothold; the rest needs the predicate matched to the noun)."""
    n = _news(rng)
    which = rng.choice(["thing", "org"])
    predicate = rng.choice(THING_ADJECTIVES) if which == "thing" else "under pressure from investors"
    sentence1 = f"the {n['org']} in {n['city']} {n['action']} the {n['thing']} as it was {predicate} ."
    if label == 1:
        candidate = which
    else:
        candidate = "city" if rng.random() < 0.5 else ("org" if which == "thing" else "thing")
    noun = {"thing": f"the {n['thing']}", "org": f"the {n['org']}", "city": n["city"]}[candidate]
    return {"sentence1": sentence1, "sentence2": f"{noun} was {predicate} .", "label": label}


# ------------------------------------------------------------------------------------------------ GLUE splits
GLUE_MAKERS: dict[str, Callable[[random.Random, int], dict]] = {
    "cola": cola_example, "qqp": qqp_example, "stsb": stsb_example, "qnli": qnli_example, "wnli": wnli_example,
}  # fmt: skip
GLUE_COLUMNS = {"cola": ("sentence",), "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"),
                "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"), "wnli": ("sentence1", "sentence2")}  # fmt: skip


def _labels(task: str, n: int, rng: random.Random) -> list[int | None]:
    if task == "stsb":
        return [None] * n
    shares = LABEL_SHARES[task]
    labels: list[int | None] = []
    for label, share in sorted(shares.items()):
        labels += [label] * round(share * n)
    labels = labels[:n] + [max(shares, key=shares.get)] * (n - len(labels))
    rng.shuffle(labels)
    return labels


def glue_split(task: str, split: str, exclude: set[str]) -> tuple[list[dict], set[str]]:
    rng = random.Random(SEEDS[task] + SPLIT_OFFSET[split])
    n = GLUE_SIZES[task][split]
    labels = _labels(task, n, rng)
    rows: list[dict] = []
    seen = set(exclude)
    while len(rows) < n:
        want = labels[len(rows)]
        if task == "mnli":
            row = (mnli_news if split == "validation_mismatched" else mnli_people)(rng, want)
        else:
            row = GLUE_MAKERS[task](rng, want)
        key = " || ".join(row[c] for c in GLUE_COLUMNS[task])
        if key in seen:
            continue
        seen.add(key)
        rows.append({**row, "idx": len(rows)})
    return rows, seen - set(exclude)


# ------------------------------------------------------------------------------------------------ squad_v2
def _person_sentence(rng: random.Random, p: dict) -> str:
    a_job, a_pet = article(p["job"]), article(p["pet"])
    return rng.choice([
        f"{p['name']}, who lives in {p['city']}, works as {a_job} and has {a_pet}.",
        f"After moving to {p['city']} in {p['year']}, {p['name']} found work as {a_job} and adopted {a_pet}.",
        f"{p['name']} lives in {p['city']} with {a_pet} and works as {a_job}.",
        f"In {p['city']}, {p['name']} works as {a_job} and owns {a_pet}.",
    ])  # fmt: skip


def _news_sentence(n: dict) -> str:
    return f"The {n['org']} in {n['city']} {n['action']} the {n['thing']} on {n['day']} {n['reason']}."


def _span(context: str, text: str) -> int:
    """Where `text` starts in `context`; the paragraphs are built so every answer occurs exactly once."""
    assert context.count(text) == 1, (text, context)
    return context.index(text)


def _squad_context(rng: random.Random) -> tuple[str, list[dict], dict]:
    """A paragraph about three people and one organisation's decision (all values distinct within it), with its
    people and its news facts."""
    names = rng.sample(NAMES, 3)
    cities, jobs, pets = rng.sample(CITIES, 4), rng.sample(JOBS, 3), rng.sample(PETS, 3)
    people = [{"name": names[i].title(), "city": cities[i].title(), "job": jobs[i], "pet": pets[i],
               "year": rng.randint(1990, 2020)} for i in range(3)]  # fmt: skip
    news = {"org": rng.choice(ORGS), "city": cities[3].title(), "action": rng.choice(sorted(ACTIONS)),
            "thing": rng.choice(sorted(THINGS)), "day": rng.choice(DAYS).title(), "reason": rng.choice(REASONS)}  # fmt: skip
    sentences = [_person_sentence(rng, p) for p in people]
    sentences.insert(rng.randint(0, 3), _news_sentence(news))
    return " ".join(sentences), people, news


def _squad_questions(rng: random.Random, context: str, people: list[dict], news: dict, split: str) -> list[dict]:
    """Answerable questions about the paragraph (answer texts with character offsets; in validation several gold
    texts where SQuAD's annotators would differ, e.g. "a baker" and "baker"), and unanswerable ones: the same
    wordings with a value the paragraph does not contain (half of them values no paragraph ever contains)."""
    out = []
    p = rng.choice(people)
    a_job, a_pet = article(p["job"]), article(p["pet"])
    name_at, job_at = _span(context, p["name"]), _span(context, a_job)
    answerable = [
        (f"who lives in {p['city']}", [(p["name"], name_at)]),
        (f"who works as {a_job}", [(p["name"], name_at)]),
        (f"who owns {a_pet}", [(p["name"], name_at)]),
        (f"{p['name']} lives in the town of", [(p["city"], _span(context, p["city"]))]),
        (f"{p['name']} works as", [(a_job, job_at), (p["job"], job_at + len(a_job) - len(p["job"]))]),
        (f"who {news['action']} the {news['thing']}", [(f"The {news['org']} in {news['city']}", _span(context, f"The {news['org']}")),
                                                      (f"The {news['org']}", _span(context, f"The {news['org']}"))]),
        (f"the {news['org']} {news['action']} the {news['thing']} on", [(news["day"], _span(context, f"on {news['day']}") + 3)]),
    ]  # fmt: skip
    for question, golds in rng.sample(answerable, 3):
        if split == "train":
            golds = golds[:1]
        out.append({"question": question, "answers": {"text": [g[0] for g in golds], "answer_start": [g[1] for g in golds]}})
    in_context = {w.lower().strip(".,") for w in context.split()}
    missing_name = rng.choice([n for n in NAMES if n not in in_context])
    missing_city = rng.choice([c for c in CITIES if c not in in_context] if rng.random() < 0.5 else DISTRACTOR_CITIES)
    missing_job = rng.choice([j for j in JOBS if j not in in_context] if rng.random() < 0.5 else DISTRACTOR_JOBS)
    missing_pet = rng.choice([q for q in PETS if q not in in_context] if rng.random() < 0.5 else DISTRACTOR_PETS)
    missing_thing = rng.choice([t for t in sorted(THINGS) if t not in in_context])
    unanswerable = [
        f"who lives in {missing_city.title()}", f"who works as {article(missing_job)}", f"who owns {article(missing_pet)}",
        f"{missing_name.title()} lives in the town of", f"{missing_name.title()} works as",
        f"who {news['action']} the {missing_thing}",
    ]  # fmt: skip
    for question in rng.sample(unanswerable, rng.choice(SQUAD_UNANSWERABLE[split])):
        out.append({"question": question, "answers": {"text": [], "answer_start": []}})
    rng.shuffle(out)
    return out


def squad_split(split: str, exclude: set[str]) -> tuple[list[dict], set[str]]:
    rng = random.Random(SEEDS["squad_v2"] + SPLIT_OFFSET[split])
    rows: list[dict] = []
    seen = set(exclude)
    contexts = 0
    while contexts < SQUAD_CONTEXTS[split]:
        context, people, news = _squad_context(rng)
        if context in seen:
            continue
        seen.add(context)
        contexts += 1
        for q in _squad_questions(rng, context, people, news, split):
            for text, start in zip(q["answers"]["text"], q["answers"]["answer_start"], strict=True):
                assert context[start:start + len(text)] == text, (context, text, start)
            rows.append({"id": f"{split[0]}{contexts:04d}q{len(rows):05d}", "title": f"{split}-{contexts:04d}",
                         "context": context, "question": q["question"], "answers": q["answers"]})  # fmt: skip
    return rows, seen - set(exclude)


# ------------------------------------------------------------------------------------------------ e2e
E2E_SLOTS = ("name", "job", "city", "pet", "year")


def _e2e_references(rng: random.Random, mr: dict, k: int) -> list[str]:
    """Up to k distinct references realising every attribute of the MR (E2E's references verbalise all of them),
    in varied wordings, orders and sentence shapes."""
    name = mr["name"]

    def clauses() -> list[str]:
        out = []
        if "job" in mr:
            out.append(rng.choice([f"works as {article(mr['job'])}", f"found work as {article(mr['job'])}"] if "year" in mr
                                  else [f"works as {article(mr['job'])}", f"is {article(mr['job'])}"]))  # fmt: skip
        if "city" in mr and "year" not in mr:
            out.append(rng.choice([f"lives in {mr['city']}", f"lives in the town of {mr['city']}"]))
        if "pet" in mr:
            out.append(rng.choice([f"has {article(mr['pet'])}", f"owns {article(mr['pet'])}", f"lives with {article(mr['pet'])}"]))
        return out

    def joined(parts: list[str]) -> str:
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    candidates = set()
    for _ in range(80):
        wording = clauses()
        parts = rng.sample(wording, len(wording))
        intro = f"After moving to {mr['city']} in {mr['year']}, " if "year" in mr else ""
        closing = ""
        if "year" in mr and rng.random() < 0.5:  # the year as a closing clause instead: "... after moving to X in Y"
            intro, closing = "", f" after moving to {mr['city']} in {mr['year']}"
        style = rng.random()
        if style < 0.35 or len(parts) < 2:
            text = f"{intro}{name} {joined(parts)}."
        elif style < 0.6:
            text = f"{intro}{name}, who {parts[0]}, {joined(parts[1:])}."
        elif style < 0.8:
            text = f"{intro}{name} {parts[0]}. {name} {joined(parts[1:])}."
        else:
            rest = [c for c in parts if "work as" not in c and "works as" not in c and not c.startswith("is ")]
            if "job" in mr and rest:
                subject = article(mr["job"]) if intro else article(mr["job"]).capitalize()
                text = f"{intro}{subject} called {name} {joined(rest)}."
            else:
                text = f"{intro}{name} {joined(parts)}."
        candidates.add(text[:-1] + closing + ".")
    return rng.sample(sorted(candidates), min(k, len(candidates)))


def e2e_split(split: str, exclude: set[str]) -> tuple[list[dict], set[str]]:
    rng = random.Random(SEEDS["e2e"] + SPLIT_OFFSET[split])
    rows: list[dict] = []
    seen = set(exclude)
    mrs = 0
    while mrs < E2E_MRS[split]:
        p = _person(rng)
        slots = ["name", *sorted(rng.sample(["job", "city", "pet"], rng.randint(2, 3)), key=E2E_SLOTS.index)]
        if "city" in slots and rng.random() < 0.3:
            slots.append("year")
        mr = {s: (p[s].title() if s in ("name", "city") else p[s]) for s in slots}
        text = ", ".join(f"{s}[{mr[s]}]" for s in slots)
        if text in seen:
            continue
        seen.add(text)
        mrs += 1
        for ref in _e2e_references(rng, mr, rng.randint(2, 6)):
            rows.append({"meaning_representation": text, "human_reference": ref})
    return rows, seen - set(exclude)


# ------------------------------------------------------------------------------------------------ build
def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def build() -> dict[str, bytes]:
    """Every output file (path relative to assets/ -> bytes). Validation shares nothing with train."""
    out: dict[str, bytes] = {}
    for task, sizes in GLUE_SIZES.items():
        train_keys: set[str] = set()
        for split in sizes:
            rows, keys = glue_split(task, split, exclude=train_keys)
            if split == "train":
                train_keys = keys
            out[f"glue/{task}/{split}.jsonl"] = _jsonl(rows)
    for name, make in (("squad_v2", squad_split), ("e2e", e2e_split)):
        train_keys = set()
        for split in ("train", "validation"):
            rows, keys = make(split, exclude=train_keys)
            if split == "train":
                train_keys = keys
            out[f"{name}/{split}.jsonl"] = _jsonl(rows)
    return out


TEXT_COLUMNS = {**{f"glue/{t}": c for t, c in GLUE_COLUMNS.items()},
                "squad_v2": ("context", "question"), "e2e": ("meaning_representation", "human_reference")}  # fmt: skip


def unk_rates(files: dict[str, bytes], tokenizer_file: Path = ASSETS / "tiny-llama" / "tokenizer.json") -> dict[str, dict[str, float]]:
    """Share of tokens that are <unk> under the tiny Llama's tokenizer, per set/split file and text column."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    unk = tok.token_to_id("<unk>")
    rates: dict[str, dict[str, float]] = {}
    for rel, data in sorted(files.items()):
        folder = rel.rsplit("/", 1)[0]
        rows = [json.loads(line) for line in data.decode().splitlines()]
        rates[rel] = {}
        for column in TEXT_COLUMNS[folder]:
            ids = [i for r in rows for i in tok.encode(r[column], add_special_tokens=False).ids]
            rates[rel][column] = sum(i == unk for i in ids) / len(ids)
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=ASSETS)
    ap.add_argument("--check", action="store_true", help="compare with the files in --dest instead of writing")
    ap.add_argument("--unk", action="store_true", help="print the tiny tokenizer's <unk> rate per file and column")
    args = ap.parse_args(argv)
    files = build()
    if args.unk:
        for rel, by_column in unk_rates(files).items():
            print(rel, " ".join(f"{c}={100 * r:.2f}%" for c, r in by_column.items()))
        return 0
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
