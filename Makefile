# castlab — the two commands: `make demo` and `make test`. Everything else is a building block.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export CASTLAB_WORKSPACE ?= $(CURDIR)/workspace
# Keep Prefect, numba and torch caches inside the project, never in the user's home.
export PREFECT_HOME ?= $(CASTLAB_WORKSPACE)/stack/prefect
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
export TORCHDYNAMO_DISABLE ?= 1

.PHONY: setup venv labelstudio-venv bench-venv demo test test-unit test-integration lint bench up down status clean lock

setup: venv labelstudio-venv

venv:
	@scripts/setup_venv.sh project

labelstudio-venv:
	@scripts/setup_venv.sh labelstudio

demo: setup
	$(VENV)/bin/castlab up --backend
	$(VENV)/bin/castlab demo

test: setup
	$(PY) -m pytest tests -q --durations=25

test-unit: venv
	$(PY) -m pytest tests/unit -q

test-integration: setup
	$(PY) -m pytest tests/integration -q

lint: venv
	$(VENV)/bin/ruff check castlab flows ml_backend trainers tests benchmarks

# Refresh requirements*.lock: fresh venvs from pyproject.toml without the locks, then their exact versions.
lock:
	rm -rf .cache/lock
	CASTLAB_NO_LOCK=1 CASTLAB_VENV_DIR=.cache/lock/venv scripts/setup_venv.sh project
	CASTLAB_NO_LOCK=1 CASTLAB_LS_VENV_DIR=.cache/lock/venv-labelstudio scripts/setup_venv.sh labelstudio
	{ head -2 requirements.lock; .cache/lock/venv/bin/pip freeze --exclude-editable; } > .cache/lock/project.lock
	{ head -1 requirements-labelstudio.lock; .cache/lock/venv-labelstudio/bin/pip freeze --exclude-editable; } \
	  > .cache/lock/labelstudio.lock
	mv .cache/lock/project.lock requirements.lock
	mv .cache/lock/labelstudio.lock requirements-labelstudio.lock
	@echo "locks refreshed: run make test, then commit requirements*.lock"

bench-venv:
	@scripts/setup_venv.sh bench

bench: venv bench-venv
	$(PY) benchmarks/run_all.py

up: setup
	$(VENV)/bin/castlab up --backend

down:
	$(VENV)/bin/castlab down

status:
	$(VENV)/bin/castlab status

clean:
	-$(VENV)/bin/castlab down
	rm -rf $(CASTLAB_WORKSPACE)
