"""Serving stacks for the deployment benchmark (the `bench` phase).

A *server* holds one model in one *mode* and answers batches of requests with class logits:

  mode       what is loaded                                            how a request is served
  ---------  --------------------------------------------------------  -------------------------------------------
  full       a full fine-tuned checkpoint (a `full` cell)              plain model
  merged     the LoRA cell merged into the base (PEFT merge_and_unload, plain model
             saved as a full checkpoint, re-loaded as a plain model)
  separate   base + one adapter                                        the adapter on every request
  multi-2/3  base + 2 or 3 task adapters                               each request by its own task's adapter,
                                                                       several adapters in one batch

Backends: `hf_backend` (transformers + PEFT) and `vllm_backend` (vLLM's pooling runner). Both implement `Server`.
`plan` says what one backend's bench serves (from the study alone); `servers` builds and opens the servers;
`protocol` runs the timing protocol over any server; `timing` holds the clock loop and the statistics;
`workload` builds the request streams; `bench_summary` turns a backend's raw timings into its summary.json.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from lorascope.serving.workload import Request

MODES = ("full", "merged", "separate", "multi-2", "multi-3")

# Largest difference in class probability that still counts as "the same answer" between two ways of computing one
# request (merged vs separate weights, a mixed multi-adapter batch vs a single-adapter batch), per compute dtype.
# float32 differences come from summation order (~1e-6); half precisions keep 8 (bf16) or 11 (fp16) mantissa bits.
PROB_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


def multi_count(mode: str) -> int:
    """How many task adapters a mode serves at once: multi-k -> k, separate/merged -> 1, full -> 0."""
    if mode.startswith("multi-"):
        return int(mode.split("-", 1)[1])
    return 0 if mode == "full" else 1


class Server(Protocol):
    """One loaded model in one mode. `serve` includes everything a server does per batch: pad the token ids,
    move them to the device, run the model, and bring the logits back to the host."""

    backend: str
    mode: str
    tasks: list[str]  # adapters loaded, in order (empty for full/merged: the served task is in `served_task`)
    load_seconds: float

    def serve(self, batch: list[Request]) -> np.ndarray: ...  # float32 logits [len(batch), num_labels]

    def sync(self) -> None: ...  # wait for queued device work (cuda synchronize; no-op on CPU)

    def memory(self) -> dict: ...  # weights and process memory right after loading

    def reset_peak(self) -> None: ...

    def peak_memory(self) -> dict: ...  # peak device memory since reset_peak (None on CPU)

    def switch(self, task: str) -> None: ...  # make `task` the active adapter (multi modes)

    def close(self) -> None: ...
