# jamsweep: every target installs what it needs into .venv first (idempotent).
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install slurm-deps demo test test-fast test-slurm lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's SLURM and munge for tests/test_slurm.py, installed only when a command is missing.
SLURM_CMDS := munged mungekey slurmctld slurmd sbatch squeue scontrol sinfo
slurm-deps:
	@missing=; for c in $(SLURM_CMDS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "missing:$$missing; as root: apt-get install slurm-wlm munge" >&2; exit 1; fi; \
	  echo "installing slurm-wlm and munge (missing:$$missing)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; \
	fi

demo: install
	$(VENV)/bin/jamsweep submit examples/demo.yaml

test: install slurm-deps lint
	$(PY) -m pytest --durations=15

test-fast: install
	$(PY) -m pytest -m "not ray"

test-slurm: install slurm-deps
	$(PY) -m pytest -m slurm

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy schemas workers orchestrator

BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf results .pytest_cache .ruff_cache .mypy_cache
