# semflow: the two set-up commands are `make demo` and `make test`; both build the venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU torch wheel lies on local disk; any other torch spec downloads GBs of CUDA.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := -q $(if $(WHEELS),--find-links $(WHEELS))
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv demo test test-fast lint bench airflow clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) -U pip wheel setuptools
	$(PIP) install $(PIP_FLAGS) torch==2.13.0
	$(PIP) install $(PIP_FLAGS) -c constraints.txt -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) scripts/demo.py

# Two processes, a test file each at a time (module fixtures start their servers once), in
# tests/conftest.py's order (longest first); a serial run left a core idle 40% of the time.
PYTEST_PROCS ?= 2
XDIST := -n $(PYTEST_PROCS) --dist loadfile --no-loadscope-reorder
test: venv
	$(VENV)/bin/ruff check src dags plugins training bentos tests benchmarks
	$(VENV)/bin/pytest -q $(XDIST)

test-fast: venv
	$(VENV)/bin/pytest -q $(XDIST) -m "not slow"

lint: venv
	$(VENV)/bin/ruff check src dags plugins training bentos tests benchmarks
	$(VENV)/bin/ruff format --check src dags plugins training bentos tests benchmarks

bench: venv
	$(PY) benchmarks/sync.py

airflow: venv
	bash scripts/airflow_local.sh

clean:
	rm -rf var airflow_home .pytest_cache
