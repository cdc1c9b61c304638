# The two commands a newcomer needs: `make demo` and `make test`. Both set up everything.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOD_CACHE ?= $(HOME)/.cache/sod-operator
export SOD_CACHE
STAMP := $(VENV)/.installed

.PHONY: all deps venv testbed test test-unit test-e2e lint crds demo demo-down bench bench-migration clean

all: test

deps:
	@tools/install-system-deps.sh

$(STAMP): pyproject.toml testbed/pyproject.toml | deps
	@echo "[venv] creating $(VENV) and installing the project (tpm2-pytss compiles once, ~30 s)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@# The test bed (testbed/) is a separate distribution: a developer's venv has it, the images do not.
	@$(BIN)/pip install -q -e '.[dev]' -e testbed
	@touch $(STAMP)

venv: $(STAMP)

testbed:
	@tools/build-testbed.sh all

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

crds: venv
	$(BIN)/python -m sod_codegen.crdgen --write

# Everything CI runs: lint, the unit tiers, then the e2e tier on the real local control plane.
# The reliability figures of this run go to $(FIGURES) (one file per run: removed here, and
# truncated by the run's first row); docs/RELIABILITY.md is regenerated from it, never by hand.
FIGURES ?= $(CURDIR)/build/reliability/figures.jsonl
test: venv testbed
	@rm -f $(FIGURES); SOD_RELIABILITY_FIGURES=$(FIGURES) tools/run-tests.sh; rc=$$?; \
	echo "[test] reliability figures of this run: $(FIGURES); regenerate the doc with:" >&2; \
	echo "[test]   SOD_RELIABILITY_FIGURES=$(FIGURES) $(BIN)/python -m tests.reliability.figures --write docs/RELIABILITY.md" >&2; \
	exit $$rc

test-unit: venv
	$(BIN)/pytest tests/unit tests/node_agent -q

test-e2e: venv testbed
	$(BIN)/pytest tests/e2e -q

demo: venv testbed
	$(BIN)/sodctl sandbox demo

demo-down: venv
	$(BIN)/sodctl sandbox down

bench: venv testbed
	$(BIN)/python -m bench.run

# Real QEMU live migrations (TCG), Table V-shaped, and the model fitted to them (< 20 min, 2 cores).
bench-migration: venv
	@VENV=$(VENV) tools/build-guest.sh >/dev/null
	$(BIN)/python -m bench.run --only migration

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
