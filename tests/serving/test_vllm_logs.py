"""vLLM's expected per-engine notices are dropped, anything else it says still reaches the log (no vLLM needed:
quiet_info_logs imports nothing from vLLM, and vLLM's loggers are plain `logging` loggers under `vllm`)."""

from __future__ import annotations

import logging
import warnings

from lorascope.log import configure_logging, parse_logfmt
from lorascope.serving import vllm_backend


def test_expected_vllm_warnings_are_dropped_and_unexpected_ones_shown(capsys):
    configure_logging("info")
    vllm_backend.quiet_info_logs()
    capsys.readouterr()
    worker = logging.getLogger("vllm.v1.worker.cpu_worker")
    worker.warning("CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding, skip it.")
    logging.getLogger("vllm.triton_utils.dispatcher").warning("Kernel %s is already registered. Overwriting.", "k.x")
    logging.getLogger("vllm.config.vllm").warning("Enforce eager set, disabling torch.compile, CUDAGraphs, and more")
    logging.getLogger("vllm.engine").info("Initializing a V1 LLM engine with config: ...")  # INFO chatter
    worker.warning("KV cache memory 1 GiB exceeds what is free")  # not expected: shown
    worker.error("engine core died")
    lines = [parse_logfmt(x) for x in capsys.readouterr().err.splitlines()]
    assert [(x["level"], x["logger"], x["msg"]) for x in lines] == [
        ("warning", "vllm.v1.worker.cpu_worker", "KV cache memory 1 GiB exceeds what is free"),
        ("error", "vllm.v1.worker.cpu_worker", "engine core died"),
    ]


def test_only_the_known_torch_deprecation_from_vllm_is_ignored():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        vllm_backend.quiet_info_logs()
        warnings.warn_explicit("`torch.distributed.reduce_op` is deprecated, please use ReduceOp", FutureWarning,
                               "dispatcher.py", 138, module="vllm.triton_utils.dispatcher")  # fmt: skip
        warnings.warn_explicit("`torch.distributed.reduce_op` is deprecated, please use ReduceOp", FutureWarning,
                               "mine.py", 1, module="lorascope.mine")  # fmt: skip
        warnings.warn_explicit("something else is deprecated", FutureWarning, "dispatcher.py", 140,
                               module="vllm.triton_utils.dispatcher")  # fmt: skip
    assert [(str(w.message)[:30], w.filename) for w in seen] == [
        ("`torch.distributed.reduce_op` ", "mine.py"),
        ("something else is deprecated", "dispatcher.py"),
    ]
