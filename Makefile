# finpulse — `make demo` and `make test` are the two set-up commands (README).
# VENV may point outside the tree (CI keeps one in ~/.cache so PyTorch is installed once).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.finpulse-installed

.PHONY: install services services-down demo test test-unit test-integration test-faults lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

services:
	$(PYTHON) -m ops.services up

services-down:
	$(PYTHON) -m ops.services down

demo: install
	$(PY) -m worker demo

# Unit tests need nothing running; integration tests talk to the real services.
test: install services
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install services
	$(PY) -m pytest tests/integration

# Fault injection (docs/reliability.md), ~10 min: runs its own Kafka/Redis/PostgreSQL on ports
# 19092/16379/15432 because it kills and restarts them; `make test` skips it.
test-faults: install
	FINPULSE_FAULTS=1 $(PY) -m pytest tests/faults -p no:cacheprovider

# Re-pin after changing dependencies in pyproject.toml.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^finpulse' > requirements.lock

clean:
	rm -rf demo-data .pytest_cache
