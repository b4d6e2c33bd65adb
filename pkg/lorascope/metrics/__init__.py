"""Task metrics, each mirroring the official script its benchmark is scored with.

- `squad_v2`: SQuAD v2.0 exact match and F1 with unanswerable questions and the no-answer threshold
  (Rajpurkar et al.'s evaluate-v2.0.py).
- `nlg`: the E2E NLG Challenge's metrics (BLEU, NIST, METEOR 1.5, ROUGE-L, CIDEr) over references grouped per
  meaning representation (tuetschek/e2e-metrics, measure_scores.py).
- `glue`: accuracy, binary F1, Matthews correlation, Pearson and Spearman correlation, and the GLUE task table
  (columns, labels, splits, primary metric) the task registry reads.

Plain Python, numpy and scipy (nlg: sacrebleu, nltk, rouge-score, pycocoevalcap and a Java runtime for METEOR's and
the PTB tokenizer's jars); nothing here imports torch. Where our number can differ from the official script's, the
function's docstring says so, and docs/metrics.md collects it.
"""
