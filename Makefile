# videorec - every target installs what it needs first (a virtual environment in .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP) ## Create .venv and install videorec with its dev tools

demo: $(STAMP) ## Train UniFormer-tiny on the embedded synthetic video dataset (CPU is fine)
	$(PY) -m videorec.train experiment=demo

# torchcodec loads FFmpeg's shared libraries from the system (0.17 has builds for FFmpeg 4 to 9; Debian 12 ships
# 5.1). When none is found they are installed with apt-get (as root, or through passwordless sudo); where that is not
# possible a warning says so and the torchcodec tests skip, naming the reason.
LDCONFIG ?= $(shell command -v ldconfig || echo /sbin/ldconfig)
ffmpeg-libs: ## Install FFmpeg's shared libraries for torchcodec (Debian's ffmpeg) when they are missing
	@if ! $(LDCONFIG) -p 2>/dev/null | grep -q 'libavcodec\.so'; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else sudo=none; fi; \
	  if [ "$$sudo" != none ] && command -v apt-get >/dev/null; then \
	    echo "Installing FFmpeg's shared libraries for torchcodec (apt-get install ffmpeg)"; \
	    { $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; } \
	      || echo "WARNING: apt-get install ffmpeg failed: the torchcodec tests will be skipped"; \
	  else \
	    echo "WARNING: FFmpeg's shared libraries (libavcodec) are missing and cannot be installed here (needs apt-get as root or passwordless sudo): the torchcodec tests will be skipped"; \
	  fi; \
	fi

test: $(STAMP) ffmpeg-libs ## Run the fast test suite (no slow, no GPU tests)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-full: $(STAMP) ffmpeg-libs ## Run every test, slow ones included (GPU tests skip without a GPU)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## Ruff lint and format check
	$(VENV)/bin/ruff check videorec tests scripts
	$(VENV)/bin/ruff format --check videorec tests scripts

format: $(STAMP) ## Ruff autofix and format
	$(VENV)/bin/ruff check --fix videorec tests scripts
	$(VENV)/bin/ruff format videorec tests scripts

bench: $(STAMP) ## Benchmark the tiny models on CPU against the reference implementations
	$(PY) scripts/bench_models.py --models '*_tiny' --device cpu

bench-train: $(STAMP) ## Training clips/s, peak memory and MFU of mvit_b and uniformer_s at 16x224 (GPU; bf16)
	$(PY) scripts/bench_train.py

bench-pipeline: $(STAMP) ## Loader vs model clips/s on a data config (DATA="data=k400 data.root=..." MODEL=mvit_b)
	$(PY) scripts/bench_pipeline.py $(DATA) --model $(or $(MODEL),uniformer_tiny)

clean: ## Remove caches and run outputs (keeps .venv)
	rm -rf outputs multirun wandb .pytest_cache .ruff_cache

.PHONY: help install ffmpeg-libs demo test test-full lint format bench bench-train bench-pipeline clean
