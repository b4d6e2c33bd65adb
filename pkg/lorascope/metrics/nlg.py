"""E2E NLG Challenge metrics: BLEU, NIST, METEOR 1.5, ROUGE-L and CIDEr over references grouped per meaning
representation.

Mirrors the challenge's official scorer, measure_scores.py of tuetschek/e2e-metrics (Dusek, Novikova & Rieser
2020, "Evaluating the state-of-the-art of End-to-End Natural Language Generation: The E2E NLG Challenge", Computer
Speech & Language 59), the script behind the LoRA paper's E2E table (Hu et al. 2021, Table 3). That script:
- groups the references of each meaning representation (MR): every reference row with the same MR text belongs to
  it, wherever it is in the file (`group_references`); one system output per MR;
- runs mteval-v13a-sig.pl (Perl) for BLEU and NIST on the raw text: mteval's tokenisation, lower-cased, BLEU with
  the closest reference length and NIST smoothing, NIST up to 5-grams; MRs with fewer references than the most any
  MR has get empty references to fill the SGML file, which that edited mteval skips;
- runs the MS-COCO caption scorer (pycocoevalcap) for METEOR, ROUGE-L and CIDEr on text tokenised by Stanford
  CoreNLP 3.4.1's PTBTokenizer (lower-cased, punctuation tokens dropped).

Here (each function's docstring says how it maps onto the script):
- `bleu`: sacrebleu's corpus BLEU with mteval-v13a's tokeniser ("13a"), lower-cased, "exp" smoothing (mteval's),
  MRs with fewer references padded with None, which sacrebleu skips as the script's edited mteval skips its empty
  padding. The script's mteval BLEU times 100.
- `nist`: mteval-v13a-sig's NIST (5-grams), re-implemented in 30 lines: the script's number. The issue named
  nltk's `corpus_nist`, but with several references per MR nltk computes another quantity (the single best
  reference per n-gram order, and its length) and lands about 0.5 NIST lower on E2E-like data; nltk is the
  cross-check on single-reference data in the tests, where the two agree.
- `meteor`: METEOR 1.5 (Denkowski & Lavie 2014) from the jar pycocoevalcap ships, run with `java`, same options
  and protocol as the script (`-l en -norm`, -Xmx2G, corpus score from the summed statistics), on PTB tokens.
- `rouge_l`: rouge-score's ROUGE-L F1 (Lin 2004; beta = 1, its own tokeniser, best reference by F1), averaged over
  MRs: the issue's choice. `rouge_l_coco`: the script's variant (pycocoevalcap's Rouge: beta = 1.2, precision and
  recall each maximised over references, on PTB tokens), the number the LoRA paper prints.
- `cider`: pycocoevalcap's CIDEr (CIDEr-D: clipped, Gaussian length penalty, sigma 6; Vedantam, Zitnick & Parikh
  2015) on PTB tokens, idf from the evaluated set's references.

Units: BLEU, METEOR and ROUGE-L in percent (the script prints fractions: 0.704 -> 70.4, as papers print them);
NIST and CIDEr as they are (8.85, 2.53). docs/metrics.md lists every difference and the measured Java costs.
"""

from __future__ import annotations

import collections
import math
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "PTB_PUNCTUATION",
    "Meteor",
    "bleu",
    "bleu_statistics",
    "cider",
    "e2e_metrics",
    "group_references",
    "meteor",
    "mteval_tokens",
    "nist",
    "nist_length_penalty",
    "ptb_tokenize",
    "rouge_l",
    "rouge_l_coco",
]

# The tokens pycocoevalcap's PTBTokenizer drops after tokenising (pycocoevalcap/tokenizer/ptbtokenizer.py).
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-",
                             "--", "...", ";"])  # fmt: skip
References = Sequence[Sequence[str]]  # per MR, its references (at least one)


def _coco_dir() -> Path:
    """pycocoevalcap's install folder (a namespace package: found through a module inside it)."""
    from pycocoevalcap.meteor import meteor as coco_meteor

    return Path(coco_meteor.__file__).resolve().parents[1]


def _java(java: str) -> str:
    path = shutil.which(java)
    if path is None:
        raise RuntimeError(f"{java!r} not found: METEOR 1.5 and the PTB tokenizer are Java jars; install a Java "
                           "runtime (Debian: default-jre-headless, `make install-system`)")  # fmt: skip
    return path


def _checked(hypotheses: Sequence[str], references: References) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but references for {len(references)} meaning representations")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"meaning representations without a reference at positions {empty[:5]}")


# ------------------------------------------------------------------------------------------------ grouping
def group_references(meaning_representations: Iterable[str], references: Iterable[str]) -> dict[str, list[str]]:
    """MR -> its references, MRs in first-seen order: the script's `read_and_group_tsv` when the data carry real MRs
    (every row with the same MR text adds a reference to it, consecutive or not). E2E's CSVs and the Hugging Face
    `e2e_nlg` dataset hold one row per (MR, reference)."""
    grouped: dict[str, list[str]] = {}
    for mr, ref in zip(meaning_representations, references, strict=True):
        grouped.setdefault(mr, []).append(ref)
    return grouped


# ------------------------------------------------------------------------------------------------ BLEU, NIST
def mteval_tokens(text: str) -> list[str]:
    """mteval-v13a's tokenisation, lower-cased (its default without -c), as sacrebleu's "13a" tokeniser does it.
    mteval lower-cases A-Z only; Python's lower() also lower-cases non-ASCII capitals ("É"), the one place the
    tokens can differ."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(text.lower()).split()


def bleu(hypotheses: Sequence[str], references: References) -> float:
    """Corpus BLEU in percent (Papineni et al. 2002), as mteval-v13a(-sig) computes it:

        BLEU = BP * exp(sum_{n=1..4} log(p_n) / 4),   BP = min(1, exp(1 - r / c))

    p_n: clipped n-gram matches over hypothesis n-grams, summed over the corpus, each hypothesis n-gram clipped at
    its largest count in any one reference of its MR; c: total hypothesis length; r: sum over MRs of the reference
    length closest to the hypothesis's (the shorter on a tie). An order with no match at all counts
    1 / (2^k |hyp n-grams|) for its k-th such order (mteval's smoothing, sacrebleu's "exp"). Tokens: mteval-v13a's,
    lower-cased.

    MRs with fewer references than the most any MR has: the official script pads them with empty references, and
    its edited mteval (-sig) skips empty references when it picks the closest length; sacrebleu skips a `None`
    reference the same way, so we pad with None (padding with "" would let a length-0 reference be "closest").
    Where they part: no hypothesis has a 4-gram (every output under 4 tokens) or nothing matches at all: sacrebleu
    says 0, mteval skips an order without n-grams and smooths an all-zero corpus to a tiny positive number.
    """
    from sacrebleu.metrics import BLEU

    _checked(hypotheses, references)
    streams = max(len(refs) for refs in references)
    padded = [list(refs) + [None] * (streams - len(refs)) for refs in references]
    scorer = BLEU(lowercase=True, tokenize="13a", smooth_method="exp")
    return float(scorer.corpus_score(list(hypotheses), [list(s) for s in zip(*padded, strict=True)]).score)


def bleu_statistics(hypotheses: Sequence[str], references: References) -> list[list[int]]:
    """BLEU's sufficient statistics of each MR, as `bleu` computes them (same tokeniser, lower-casing, None padding):
    [hypothesis length, closest reference length, matches of orders 1-4, hypothesis n-grams of orders 1-4]. Summed
    over MRs they give `bleu` exactly (`lorascope.analysis.text_bootstrap.bleu_from_statistics`), so BLEU can be
    bootstrapped over MRs without re-tokenising."""
    from sacrebleu.metrics import BLEU

    _checked(hypotheses, references)
    streams = max(len(refs) for refs in references)
    padded = [list(refs) + [None] * (streams - len(refs)) for refs in references]
    scorer = BLEU(lowercase=True, tokenize="13a", smooth_method="exp")
    stats = scorer._extract_corpus_statistics(list(hypotheses), [list(s) for s in zip(*padded, strict=True)])
    return [[int(v) for v in row] for row in stats]


def _ngram_counts(tokens: Sequence[str], max_order: int) -> collections.Counter[tuple[str, ...]]:
    return collections.Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1))


def nist_length_penalty(ratio: float) -> float:
    """NIST's brevity factor: exp(-beta ln^2 ratio) for 0 < ratio < 1, beta = -ln 0.5 / ln^2 1.5 (so 0.5 at a
    ratio of 2/3), 1 at ratio >= 1, 0 at ratio <= 0 (mteval-v13a's nist_length_penalty)."""
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    beta = -math.log(0.5) / math.log(1.5) ** 2
    return math.exp(-beta * math.log(ratio) ** 2)


def nist(hypotheses: Sequence[str], references: References, max_order: int = 5) -> float:
    """Corpus NIST (Doddington 2002) exactly as the official script's mteval-v13a-sig.pl computes it, on its
    tokens (mteval-v13a, lower-cased):

        info(w_1..w_n) = log2( count(w_1..w_{n-1}) / count(w_1..w_n) )     counts over every reference of every MR;
                                                                           count() of the empty prefix = total words
        NIST = LP * sum_{n=1..5} [ sum_MR sum_{w in hyp n-grams} info(w) * min(count_hyp(w), max_ref count(w))
                                   / max(1, hypothesis n-grams) ]
        LP   = nist_length_penalty( hypothesis words / (reference words / (references / MRs)) )

    i.e. matches are clipped against all references of an MR at once, and the length ratio is against the average
    reference length (the "-sig" edit: only non-empty references count). nltk's `corpus_nist` (the issue's first
    choice) differs with several references per MR: per order it keeps the single best reference and its length;
    on E2E-like data that moved NIST by about -0.5 (docs/metrics.md), so nltk serves as the single-reference check
    in tests/metrics/test_nlg.py instead.
    """
    _checked(hypotheses, references)
    hyp_tokens = [mteval_tokens(h) for h in hypotheses]
    ref_tokens = [[mteval_tokens(r) for r in refs] for refs in references]
    counts: collections.Counter[tuple[str, ...]] = collections.Counter()
    for refs in ref_tokens:
        for ref in refs:
            counts.update(_ngram_counts(ref, max_order))
    total_words = sum(len(ref) for refs in ref_tokens for ref in refs)
    if total_words == 0:
        raise ValueError("every reference is empty")

    def info(ngram: tuple[str, ...]) -> float:
        prefix = counts[ngram[:-1]] if len(ngram) > 1 else total_words
        return math.log2(prefix / counts[ngram])

    matched_info, hyp_ngrams = [0.0] * max_order, [0] * max_order
    for hyp, refs in zip(hyp_tokens, ref_tokens, strict=True):
        clip: collections.Counter[tuple[str, ...]] = collections.Counter()
        for ref in refs:
            clip |= _ngram_counts(ref, max_order)  # | keeps the larger count: the max over references
        for ngram, count in _ngram_counts(hyp, max_order).items():
            if ngram in clip:
                matched_info[len(ngram) - 1] += info(ngram) * min(count, clip[ngram])
        for n in range(max_order):
            hyp_ngrams[n] += max(len(hyp) - n, 0)
    nonempty_refs = sum(1 for refs in ref_tokens for ref in refs if ref)
    average_ref_words = total_words / (nonempty_refs / len(ref_tokens))  # reference words per reference set
    score = sum(m / max(h, 1) for m, h in zip(matched_info, hyp_ngrams, strict=True))
    return score * nist_length_penalty(hyp_ngrams[0] / average_ref_words)


# ------------------------------------------------------------------------------------------------ PTB tokens
def ptb_tokenize(texts: Sequence[str], java: str = "java") -> list[str]:
    """Stanford CoreNLP 3.4.1's PTBTokenizer (`-preserveLines -lowerCase`, the jar pycocoevalcap ships), then the
    punctuation tokens in `PTB_PUNCTUATION` dropped: what the script's COCO scorer feeds METEOR, ROUGE-L and CIDEr.
    ("Alice's cafe, near £20 (cheap)." -> "alice 's cafe near # 20 -lrb- cheap -rrb-": the drop list's "-LRB-" is
    upper case and the tokens are already lower-cased, so brackets stay, as in the script). One JVM start per call (~0.3-1 s); empty texts stay
    empty. Unlike pycocoevalcap we pass the text on stdin, not through a temporary file in the package folder
    (which a non-root pod cannot write)."""
    if not texts:
        return []
    jar = _coco_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    lines = [t.replace("\n", " ") for t in texts]
    nonempty = [i for i, t in enumerate(lines) if t.strip()]
    out = [""] * len(lines)
    if not nonempty:
        return out
    proc = subprocess.run([_java(java), "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                           "-lowerCase"], input="\n".join(lines[i] for i in nonempty), capture_output=True,
                          text=True, encoding="utf-8", check=False)  # fmt: skip
    tokenized = proc.stdout.split("\n")
    if proc.returncode != 0 or len(tokenized) < len(nonempty):
        raise RuntimeError(f"PTBTokenizer failed (exit {proc.returncode}, {len(tokenized)} lines for "
                           f"{len(nonempty)} texts): {proc.stderr.strip()[-500:]}")  # fmt: skip
    for i, line in zip(nonempty, tokenized, strict=False):
        out[i] = " ".join(w for w in line.rstrip().split(" ") if w and w not in PTB_PUNCTUATION)
    return out


# ------------------------------------------------------------------------------------------------ METEOR
class Meteor:
    """METEOR 1.5 running in its jar (`java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm`, pycocoevalcap's
    command line), talking the jar's stdio protocol as pycocoevalcap's wrapper does: one `SCORE ||| ref_1 ||| ... |||
    hyp` line per segment returns its sufficient statistics; one `EVAL ||| stats_1 ||| ... ||| stats_n` line returns
    n segment scores and then the corpus score, computed from the summed statistics (not a mean of segments).

    Starting it costs a JVM start and loading the English paraphrase table (docs/metrics.md: seconds), so keep one
    open across evaluations: `with Meteor() as m: m.score(...)`.

    METEOR (Lavie & Denkowski): align hypothesis and reference words by exact, stem, synonym and paraphrase matches
    (weights 1.0, 0.6, 0.8, 0.6); P and R weight content words by delta = 0.75 and function words by 0.25;
    Fmean = P R / (alpha P + (1 - alpha) R), alpha = 0.85; penalty = gamma (chunks / matches)^beta, gamma = 0.6,
    beta = 0.2 (0 for an exact whole-sentence match); score = Fmean (1 - penalty); with several references, the best.
    """

    def __init__(self, java: str = "java") -> None:
        jar = _coco_dir() / "meteor" / "meteor-1.5.jar"
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([_java(java), "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"],
                                      cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr)  # fmt: skip

    def _ask(self, line: str) -> str:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write((line + "\n").encode("utf-8"))
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().decode("utf-8").strip()
        if not answer:
            self._stderr.seek(0)
            raise RuntimeError(f"METEOR jar stopped answering (exit {self._proc.poll()}): "
                               f"{self._stderr.read().decode('utf-8', 'replace').strip()[-500:]}")  # fmt: skip
        return answer

    def score(self, hypotheses: Sequence[str], references: References) -> tuple[float, list[float]]:
        """(corpus METEOR, per-segment METEOR), fractions in [0, 1], of already tokenised texts. "|||" (the
        protocol's separator) is removed from every text and double spaces squeezed, as pycocoevalcap does."""
        _checked(hypotheses, references)
        clean = lambda s: s.replace("|||", "").replace("  ", " ")  # noqa: E731
        stats = [self._ask(" ||| ".join(["SCORE", *(clean(r) for r in refs), clean(h)]))
                 for h, refs in zip(hypotheses, references, strict=True)]  # fmt: skip
        segments = [float(self._ask(" ||| ".join(["EVAL", *stats])))]
        segments += [float(self._proc.stdout.readline()) for _ in range(len(stats) - 1)]  # type: ignore[union-attr]
        return float(self._proc.stdout.readline()), segments  # type: ignore[union-attr]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()  # type: ignore[union-attr]
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc.stdout.close()  # type: ignore[union-attr]
        self._stderr.close()

    def __enter__(self) -> Meteor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def meteor(hypotheses: Sequence[str], references: References, scorer: Meteor | None = None) -> float:
    """Corpus METEOR 1.5 in percent on PTB tokens (see `Meteor`); starts and stops a jar unless `scorer` is given."""
    _checked(hypotheses, references)
    hyp, refs = _ptb(hypotheses, references)
    return _meteor_tokenized(hyp, refs, scorer)


def _meteor_tokenized(hyp: Sequence[str], refs: References, scorer: Meteor | None) -> float:
    if scorer is not None:
        return 100.0 * scorer.score(hyp, refs)[0]
    with Meteor() as own:
        return 100.0 * own.score(hyp, refs)[0]


# ------------------------------------------------------------------------------------------------ ROUGE-L, CIDEr
def rouge_l(hypotheses: Sequence[str], references: References) -> float:
    """ROUGE-L F1 in percent, rouge-score's (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"):
    per MR, LCS = longest common subsequence of hypothesis and reference tokens, P = LCS / |hyp|, R = LCS / |ref|,
    F = 2PR / (P + R); the reference with the best F; mean over MRs. rouge-score's tokeniser: lower case, every
    non-alphanumeric character a separator, no stemming. Not the script's number: see `rouge_l_coco`."""
    from rouge_score import rouge_scorer

    _checked(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    scores = [scorer.score_multi(list(refs), hyp)["rougeL"].fmeasure for hyp, refs in zip(hypotheses, references, strict=True)]
    return 100.0 * sum(scores) / len(scores)


def rouge_l_coco(hypotheses: Sequence[str], references: References, *, tokenized: bool = False) -> float:
    """ROUGE-L in percent as the official script computes it (pycocoevalcap's Rouge, on PTB tokens): per MR,
    P_max = max_ref LCS / |hyp| and R_max = max_ref LCS / |ref| (each maximised on its own, possibly over different
    references), F = (1 + beta^2) P_max R_max / (R_max + beta^2 P_max) with beta = 1.2; mean over MRs."""
    from pycocoevalcap.rouge.rouge import Rouge

    _checked(hypotheses, references)
    hyp, refs = (hypotheses, references) if tokenized else _ptb(hypotheses, references)
    gts, res = _coco_dicts(hyp, refs)
    return 100.0 * float(Rouge().compute_score(gts, res)[0])


def cider(hypotheses: Sequence[str], references: References, *, tokenized: bool = False) -> float:
    """CIDEr-D as pycocoevalcap computes it (Vedantam et al. 2015), on PTB tokens: per MR and n = 1..4, the cosine
    of tf-idf n-gram vectors of hypothesis and each reference (idf = log(#MRs / #MRs whose references contain the
    n-gram), hypothesis weights clipped at the reference's), times exp(-(len_hyp - len_ref)^2 / (2 * 6^2)); mean over
    references and n, times 10; mean over MRs. The idf comes from the evaluated set itself, so an n-gram in every
    MR's references weighs 0 and a one-MR corpus scores 0."""
    from pycocoevalcap.cider.cider import Cider

    _checked(hypotheses, references)
    hyp, refs = (hypotheses, references) if tokenized else _ptb(hypotheses, references)
    gts, res = _coco_dicts(hyp, refs)
    return float(Cider().compute_score(gts, res)[0])


def _coco_dicts(hyp: Sequence[str], refs: References) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    return {i: list(r) for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyp)}


def _ptb(hypotheses: Sequence[str], references: References) -> tuple[list[str], list[list[str]]]:
    """PTB-tokenise hypotheses and references in one JVM start."""
    flat = ptb_tokenize([*hypotheses, *(r for refs in references for r in refs)])
    hyp, rest = flat[: len(hypotheses)], iter(flat[len(hypotheses):])
    return hyp, [[next(rest) for _ in refs] for refs in references]


# ------------------------------------------------------------------------------------------------ the set
def e2e_metrics(hypotheses: Sequence[str], references: References, meteor_scorer: Meteor | None = None) -> dict[str, float]:
    """Every E2E metric of one system output (one hypothesis per MR, `references[i]` the references of MR i):
    bleu, nist, meteor, rouge_l, rouge_l_coco, cider (units: module doc). One PTB tokenisation for the COCO metrics;
    METEOR's jar is started and stopped here unless `meteor_scorer` is an open one."""
    _checked(hypotheses, references)
    hyp, refs = _ptb(hypotheses, references)
    return {
        "bleu": bleu(hypotheses, references),
        "nist": nist(hypotheses, references),
        "meteor": _meteor_tokenized(hyp, refs, meteor_scorer),
        "rouge_l": rouge_l(hypotheses, references),
        "rouge_l_coco": rouge_l_coco(hyp, refs, tokenized=True),
        "cider": cider(hyp, refs, tokenized=True),
    }
