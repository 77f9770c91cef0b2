# `make test` and `make demo` each create .venv when it is missing and install everything.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Flower: no telemetry, no update check, never install an app's dependencies at run time.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_DEDUP_LOGS := 0
PIP_QUIET := 2>&1 | { grep -v -e "is ignored: it is neither" -e "^$$" || true; }

.PHONY: install test test-fast demo lint bench clean

CONSTRAINTS := .ci/constraints.txt
PIP := $(PY) -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned by the constraints file: the CPU wheel from local disk, never a
	# multi-GB CUDA build
	$(PIP) torch $(PIP_QUIET)
	$(PIP) -e ".[flower,simulation,dev]" $(PIP_QUIET)
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m simulations

lint: $(STAMP)
	$(PY) -m ruff check fedhd strategies simulations benchmarks tests
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m fedhd bench speed
	$(PY) -m fedhd bench vnmse --json results/vnmse.json --md results/vnmse.md --png results/vnmse.png

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
