# finpulse — `make demo` and `make test` are the two set-up commands (README).
# VENV may point outside the tree (CI keeps one in ~/.cache so PyTorch is installed once).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.finpulse-installed
LOCKS := ops/locks
# uv for `make lock`, installed from its hashed pin next to (not into) the environment.
UV_HOME ?= $(VENV)/.tools/uv
UV_TOOL := $(UV_HOME)/bin/uv
UV ?= $(UV_TOOL)
LOCK_ARGS ?=
UV_COMPILE = --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--custom-compile-command "make lock" $(LOCK_ARGS)

.PHONY: install services services-down tools k8s-tools demo test test-unit test-integration test-faults test-scale lock clean

install: $(STAMP)

# The dev lock (runtime lock + test and quality tools), every file checked against its sha256; then
# finpulse itself, editable, without dependencies and built with the locked setuptools.
# pip>=25 only replaces an old bundled pip; an up-to-date one is left as it is.
$(STAMP): $(LOCKS)/dev.txt $(LOCKS)/runtime.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'pip>=25'
	$(PY) -m pip install -q --require-hashes -r $(LOCKS)/dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

services:
	$(PYTHON) -m ops.services up

services-down:
	$(PYTHON) -m ops.services down

# Checking tools from Debian packages (promtool and prometheus for ops/prometheus and the dashboard test),
# installed with apt-get when missing (as root).
tools:
	$(PYTHON) -m ops.tools install

demo: install
	$(PY) -m worker demo

# Unit tests need nothing running; integration tests talk to the real services.
test: install services tools k8s-tools
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

test-integration: install services
	$(PY) -m pytest tests/integration

# Fault injection (docs/reliability.md), ~10 min: runs its own Kafka/Redis/PostgreSQL on ports
# 19092/16379/15432 because it kills and restarts them; `make test` skips it.
test-faults: install
	FINPULSE_FAULTS=1 $(PY) -m pytest tests/faults -p no:cacheprovider

# Scale-out (docs/scaling.md), a few minutes: 1, 2 and 4 workers on one 8-partition docs topic with the tiny model,
# on the local services; rewrites docs/scaling/*.json, docs/scaling.png and the figures in docs/scaling.md. `make test` skips it.
test-scale: install services
	FINPULSE_SCALE=1 $(PY) -m pytest tests/scale -p no:cacheprovider

# Re-pin after changing dependencies in pyproject.toml (README, "Dependencies"). uv keeps every pin the
# locks already hold unless told otherwise: `make lock LOCK_ARGS="--upgrade-package torch"`.
# runtime.txt: [project].dependencies; dev.txt: + the test and quality extras, constrained by runtime.txt;
# gpu.txt: TensorRT (ops/locks/gpu.in) on top of runtime.txt. uv comes from ops/locks/uv.txt (UV=uv to use your own).
lock: $(if $(filter $(UV_TOOL),$(UV)),$(UV_TOOL))
	$(UV) pip compile $(UV_COMPILE) pyproject.toml -o $(LOCKS)/runtime.txt
	$(UV) pip compile $(UV_COMPILE) pyproject.toml --extra test --extra quality -c $(LOCKS)/runtime.txt -o $(LOCKS)/dev.txt
	$(UV) pip compile $(UV_COMPILE) $(LOCKS)/gpu.in -c $(LOCKS)/runtime.txt -o $(LOCKS)/gpu.txt

$(UV_TOOL): $(LOCKS)/uv.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade --require-hashes --target $(UV_HOME) -r $(LOCKS)/uv.txt
	touch $@

# Pinned kustomize, kubeconform (Go module proxy), KEDA's CRDs and the Kubernetes JSON schemas, which
# tests/ops/test_k8s_manifests.py checks ops/k8s with. Needs Go (ops/k8s/tools.sh).
K8S_TOOLS := $(VENV)/.tools/k8s
k8s-tools: $(K8S_TOOLS)/.installed

$(K8S_TOOLS)/.installed: ops/k8s/tools.sh ops/k8s/tools-requirements.txt | $(STAMP)
	PYTHON=$(PY) ops/k8s/tools.sh $(K8S_TOOLS)
	touch $@

clean:
	rm -rf demo-data .pytest_cache
