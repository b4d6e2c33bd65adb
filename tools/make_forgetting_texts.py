"""Build the forgetting measure's held-out text set once: prose paragraphs from Python standard-library docstrings.

    .venv/bin/python tools/make_forgetting_texts.py          # rewrites pkg/lorascope/assets/forgetting/stdlib-prose.jsonl
    .venv/bin/python tools/make_forgetting_texts.py --check  # exit 1 if a fresh build differs from the committed file

The committed file IS the text set: it is read by lorascope.heldout_loss and never rebuilt at run time, so it does not
change with the Python version a study runs on (docstrings differ between CPython releases; this script records the
version it ran on in the file's README). Why this text: general English prose (explanations written for people, not
code), available offline, under a permissive license (the PSF License, Python's own), and not GLUE, so a model
fine-tuned on GLUE has not seen it during fine-tuning.

Selection, deterministic: the modules in MODULES (sorted), each module's docstring and the docstrings of its public
classes, functions and methods (sorted by qualified name), split at blank lines into paragraphs; a paragraph is kept
when it reads as prose (PROSE rules below), after joining its words with single spaces; exact duplicates are dropped
(first occurrence kept); then ordered by the sha256 of each text (a fixed shuffle, so that the first
`forgetting.max_texts` texts mix all modules) and the first MAX_TEXTS written.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import platform
import re
import sys
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parents[1] / "pkg" / "lorascope" / "assets" / "forgetting"
OUT = OUT_DIR / "stdlib-prose.jsonl"
MAX_TEXTS = 400
MIN_WORDS, MAX_WORDS = 30, 160
MODULES = sorted([
    "_pydecimal", "argparse", "asyncio.events", "asyncio.locks", "asyncio.queues", "asyncio.tasks", "bdb", "calendar",
    "cgitb", "cmd", "codecs", "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "difflib", "doctest", "email.message", "email.parser", "enum", "filecmp", "fileinput", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "heapq", "hmac", "http.client",
    "http.cookiejar", "http.server", "imaplib", "inspect", "ipaddress", "json", "json.decoder", "json.encoder",
    "locale", "logging", "logging.handlers", "mailbox", "multiprocessing.pool", "netrc", "numbers", "optparse",
    "pathlib", "pdb", "pickle", "pickletools", "platform", "poplib", "pprint", "pydoc", "queue", "random", "reprlib",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback",
    "typing", "unittest.case", "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "webbrowser", "xml.dom.minidom", "zipfile",
])  # fmt: skip

# PROSE: a paragraph of running text, not code, a table, a signature or a list of options
_CODEY = re.compile(r">>>|\.\.\. |::|\{|\}|==|->|\[\]|\bdef\b|\bself\.|\w\(\w*[,)]|_\w+_|\w\.\w+\(|^\s*[-*+|]|^\s*\d+[.)]\s|\t", re.M)


def prose(paragraph: str) -> str | None:
    lines = [ln for ln in paragraph.splitlines() if ln.strip()]
    if not lines or len({len(ln) - len(ln.lstrip()) for ln in lines}) > 1:  # mixed indentation: an example or a list
        return None
    if _CODEY.search(paragraph):
        return None
    words = paragraph.split()
    text = " ".join(words)
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not text[0].isupper() or text[-1] not in ".!?":
        return None
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters < 0.9 * len(text) or not text.isascii():
        return None
    return text


def docstrings(module_name: str):
    """(qualified name, docstring) of the module and its public classes, functions and methods, sorted by name."""
    mod = importlib.import_module(module_name)
    out = {module_name: inspect.getdoc(mod)}
    for name, obj in vars(mod).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            out[f"{module_name}.{name}"] = inspect.getdoc(obj)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, property)):
                    out[f"{module_name}.{name}.{attr}"] = inspect.getdoc(member)
    return sorted((k, v) for k, v in out.items() if v)


def build() -> list[dict]:
    seen, rows = set(), []
    for module_name in MODULES:
        for qualname, doc in docstrings(module_name):
            for para in re.split(r"\n\s*\n", doc):
                text = prose(para)
                if text and text not in seen:
                    seen.add(text)
                    rows.append({"source": qualname, "text": text})
    # a fixed shuffle (by each text's sha256), so that any prefix (forgetting.max_texts) mixes all the modules
    rows.sort(key=lambda r: hashlib.sha256(r["text"].encode()).hexdigest())
    return [{"id": i, **r} for i, r in enumerate(rows[:MAX_TEXTS])]


def render(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=True, sort_keys=True) + "\n" for r in rows).encode()


README = """# The forgetting measure's held-out text set

`stdlib-prose.jsonl`: {n} paragraphs of English prose ({words} words), one JSON object a line
(`id`, `source` = the docstring's qualified name, `text`), taken from the docstrings of Python standard-library
modules by `tools/make_forgetting_texts.py` (run once, on CPython {python}; the committed file is the text set, it is
not rebuilt at run time). `lorascope.heldout_loss` measures a model's language-model loss on these texts, each text
one segment (BOS + its tokens, truncated at `forgetting.max_length`; the first `forgetting.max_texts` texts).

Why this text: general English prose that is not GLUE (what the cells are fine-tuned on), offline, stable, and
permissively licensed. It is technical English (documentation of a programming library), which a general pretrained
model such as SmolLM2 has seen a lot of in kind, and no study trains on it.

sha256 of stdlib-prose.jsonl: `{sha256}` (recorded in every forgetting.json and in the drift summary).

## License and provenance
The text is from the CPython {python} standard library's source (docstrings), Copyright (c) 2001-2023 Python Software
Foundation; All Rights Reserved; distributed under the PSF License Agreement (PSF-2.0, https://docs.python.org/3/license.html),
which permits reproduction and derivative works provided the PSF copyright notice is retained (it is, here).
Changes: paragraphs selected, re-wrapped (words joined with single spaces) and reordered, nothing else.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs from a fresh build")
    args = parser.parse_args(argv)
    data = render(build())
    if args.check:
        same = OUT.is_file() and OUT.read_bytes() == data
        print("stdlib-prose.jsonl is up to date" if same else "stdlib-prose.jsonl differs from a fresh build "
              "(expected on another Python version: the committed file is the text set)")  # fmt: skip
        return 0 if same else 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(data)
    rows = [json.loads(line) for line in data.decode().splitlines()]
    (OUT_DIR / "README.md").write_text(README.format(
        n=len(rows), words=sum(len(r["text"].split()) for r in rows), python=platform.python_version(),
        sha256=hashlib.sha256(data).hexdigest()))  # fmt: skip
    print(f"wrote {OUT} ({len(rows)} texts, sha256 {hashlib.sha256(data).hexdigest()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
