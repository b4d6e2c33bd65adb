"""The process heap between units of work: `settle_heap()` collects the garbage of the unit before, then freezes what
is left (gc.freeze), so that the cyclic collector no longer walks it.

What is left at such a point is what the process imported (torch, transformers, PEFT, Optuna: about a million
long-lived objects) and the state that outlives the unit; every full collection walked all of it again, the Trainer's
gc.collect at the end of each training and HPO's between trials among them. Measured on the methods smoke study
(26 cells in one process, `lorascope run --jobs 1`): 52 full collections took 12 s of its 55 s; with the heap settled
before each index, 1.3 s of 43 s, with the same committed predictions, adapters and drift (docs/performance.md).

Reference counting still frees frozen objects; only a reference cycle among objects alive at the settle point is never
collected, so it is called only where nothing alive is dropped later: before an index (runner.run_phase_index) and
between HPO trials, after the trial's model is gone. A process that runs one index (a pod) freezes only the runner
there; its HPO trials and `--jobs N` workers' later indexes get the frozen imports.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    gc.collect()
    gc.freeze()
