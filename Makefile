# Development tasks. Tools come from .venv/ when it exists (see README.md), else from PATH.
# `make check` is what CI runs (.ci/run); it stops at the first failing step.

VENV ?= .venv
PYTHON ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
PYTEST_ARGS ?=

.PHONY: help test lint format typecheck check

help:
	@echo "make test       run the test suite (pytest; PYTEST_ARGS=... to pass options)"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make format     apply ruff format and the safe ruff fixes"
	@echo "make typecheck  mypy (strict, files from pyproject.toml)"
	@echo "make check      lint, typecheck, then test: what CI runs"

test:
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

typecheck:
	$(PYTHON) -m mypy

check: lint typecheck test
