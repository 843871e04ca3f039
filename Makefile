# cnnlab developer targets. `make help` lists them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 / torchvision 0.29.1 are the pairing this project is tested with (see README).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: help setup data train test lint
help:  ## list targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-6s %s\n", $$1, $$2}'

$(BIN)/cnnlab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: $(BIN)/cnnlab  ## create .venv and install cnnlab with its dependencies

data:  ## make sure Fashion-MNIST is on disk (CNNLAB_DATA, /usr/share/datasets, or Debian's package)
	@bash scripts/ensure_fashion_mnist.sh

train: setup data  ## set up, then train LeNet on real Fashion-MNIST with the default config
	$(BIN)/cnnlab train

test: setup  ## run the test suite (real-data tests too when CNNLAB_DATA is set)
	$(BIN)/pytest -q

lint: setup  ## ruff lint and format check, and the import layers (import-linter)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports
