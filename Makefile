# Development tasks. Tools come from .venv/ when it exists (see README.md), else from PATH.
# `make check` is what CI runs (.ci/run), after `make wheel-check`; it stops at the first failing step.

VENV ?= .venv
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
PYTEST_ARGS ?=
# Tests run in parallel processes (pytest-xdist), one per CPU: many of them wait on
# servers, subprocesses and timers. PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= auto

.PHONY: help test lint format typecheck check dist wheel-check

help:
	@echo "make test       run the test suite (pytest, one worker per CPU; PYTEST_ARGS=..., PYTEST_WORKERS=N)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make format     apply ruff format and the safe ruff fixes"
	@echo "make typecheck  mypy (strict, files from pyproject.toml)"
	@echo "make check      lint, typecheck, then test: what CI runs"
	@echo "make dist       python -m build: a wheel and an sdist in dist/"
	@echo "make wheel-check  build, then install the wheel with [server] into a fresh venv and"
	@echo "                  serve the demo from it (scripts/check_wheel.py; CI runs it too)"

test:
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

typecheck:
	$(PYTHON) -m mypy

check: lint typecheck test

dist:
	rm -rf dist
	$(PYTHON) -m build --outdir dist .

wheel-check: dist
	$(PYTHON) scripts/check_wheel.py dist/abi_engine-*.whl
