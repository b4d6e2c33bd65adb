"""lorascope.metrics is plain Python, numpy and scipy: importing and using it loads neither torch nor transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROGRAM = """
import sys
from lorascope.metrics import glue, nlg, squad_v2
glue.task_metrics("stsb", [1.0, 2.0, 3.0], [1.5, 2.5, 2.0])
squad_v2.evaluate({"q": ["a cat"]}, {"q": "cat"}, {"q": 0.2})
nlg.bleu(["a b c d"], [["a b c d"]]); nlg.nist(["a b"], [["a b"]]); nlg.rouge_l(["a"], [["a"]])
nlg.cider(["a b", "c d"], [["a b"], ["c d"]], tokenized=True)
print(sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules))
"""


def test_metrics_import_no_torch():
    env = {**os.environ, "PYTHONPATH": str(REPO / "pkg")}
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"
