# streamtoken: `make run` starts the whole local stack, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.8
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --inexact --quiet --compile-bytecode
	@touch $@

.PHONY: install
install: $(VENV)/.installed ## create .venv and install the locked dependencies

.PHONY: run
run: install ## run the whole local stack (embedded broker, issuer, resolver, notifier) with demo data
	$(VENV)/bin/streamtoken dev --demo

.PHONY: test-deps
test-deps: ## Java 17 + Maven (Apache Kafka) and PostgreSQL on 127.0.0.1:5432, installed from Debian when missing
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then bash .ci/java && bash .ci/postgres; \
	else echo "note: not root - install Java 17+, Maven and PostgreSQL (trust auth on 127.0.0.1) yourself"; fi
	@bash .ci/browser  # Debian's chromium + playwright-core (npm ci) for tests/browser

.PHONY: test
test: install test-deps ## run every test: unit, integration (Apache Kafka, SQLite, PostgreSQL) and end-to-end
	$(PY) -m pytest tests --durations=25

.PHONY: test-fast
test-fast: install ## the unit tests only (no network, seconds)
	$(PY) -m pytest

.PHONY: lint
lint: install ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

.PHONY: format
format: install ## format the code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

BENCHMARKS := issuer_relay_latency issuer_rotate resolver_propagation resolver_cold_start resolver_lookup \
	notifier_fanout agent_fleet_restart broker_start broker_rotate_throughput

.PHONY: bench
bench: install ## run every benchmark script (figures and how they compare: docs/benchmarks.md)
	@for b in $(BENCHMARKS); do \
	  if [ $$b = resolver_lookup ] && ! command -v wrk >/dev/null; then \
	    echo "== $$b skipped: it needs wrk (apt-get install wrk)"; continue; fi; \
	  echo "== benchmarks/$$b.py"; $(PY) benchmarks/$$b.py || exit 1; done

.PHONY: lock
lock: $(UV) ## re-resolve uv.lock after changing pyproject.toml
	$(UV) lock

.PHONY: clean
clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .streamtoken
