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
# PYTHONSAFEPATH: no Python the suite starts puts the checkout's root on sys.path, where kernels/,
# store/, train/ and bench/ (installed as revision.*) would shadow top-level packages of the same
# names (transformers >= 5.25 imports Hugging Face's `kernels`).
test: $(BIN)/.installed lint
	PYTHONSAFEPATH=1 REVISION_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_store.py

clean:
	rm -rf $(VENV) revision-demo .pytest_cache .ruff_cache .hypothesis

# The GPU check proven on this machine (docs/gpu.md): a fresh virtualenv holding only what the lent GPU
# machine's image holds (same pins as .venv, so pip's cache serves them), the wheels of
# bench/gpu_wheels.sh for this interpreter, and bench/gpu_check.sh run with pip cut off from every
# index and CUDA hidden: it must install everything and stop with exit 4 ("no CUDA device"). The 3.12
# folder the GPU machine gets is downloaded too, which checks its size limit.
DRYRUN ?= build/gpu-dryrun
GPU_IMAGE_SPEC ?= "$(TORCH_SPEC)" triton==3.9.0 numpy==2.4.6 pyarrow==26.0.1 psutil==7.2.2 tqdm==4.70.1 \
	matplotlib==3.11.2 fsspec==2026.9.0 transformers==5.24.0 setuptools==84.2.1

.PHONY: gpu-dryrun
gpu-dryrun:
	rm -rf $(DRYRUN)/venv $(DRYRUN)/site $(DRYRUN)/site-faiss $(DRYRUN)/results
	$(PYTHON) -m venv $(DRYRUN)/venv
	$(DRYRUN)/venv/bin/pip install -q $(GPU_IMAGE_SPEC)
	bash bench/gpu_wheels.sh $(DRYRUN)/wheels-3.12
	bash bench/gpu_wheels.sh --python-version "$$($(DRYRUN)/venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" $(DRYRUN)/wheels-host
	env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 \
		CUDA_VISIBLE_DEVICES= PYTHON=$(DRYRUN)/venv/bin/python GPU_WHEELS=$(DRYRUN)/wheels-host \
		GPU_RESULTS=$(DRYRUN)/results GPU_SITE=$(DRYRUN)/site GPU_WORK=$(DRYRUN)/work \
		bash bench/gpu_check.sh; rc=$$?; \
	if [ $$rc -ne 4 ]; then echo "gpu-dryrun: bench/gpu_check.sh exited $$rc, expected 4 (no CUDA device)" >&2; exit 1; fi
	@echo "gpu-dryrun: passed (installed offline, stopped at the CUDA check)"
