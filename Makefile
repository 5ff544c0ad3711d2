# Two entry points (see README "Quick start"): `make demo` and `make test`.
# Each creates .venv on first use. torch is pinned to the CPU wheel this kind of machine carries;
# an unpinned torch would pull a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml setup.py kernels/csrc/native.c
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/revision demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy revision store train

# REVISION_REQUIRE_NATIVE: the C kernels must have been built here (a compiler is on this kind of
# machine), so a silent build failure fails the suite instead of falling back to the torch path.
test: $(BIN)/.installed lint
	REVISION_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_store.py

clean:
	rm -rf $(VENV) revision-demo .pytest_cache .ruff_cache .hypothesis
