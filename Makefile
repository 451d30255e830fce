# jamsweep: every target installs what it needs into .venv first (idempotent).
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/jamsweep submit examples/demo.yaml

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not ray"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy schemas workers orchestrator

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf results .pytest_cache .ruff_cache .mypy_cache
