# Two commands for a newcomer: `make demo` and `make test`. Re-runs are quick: pip runs again
# only when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench-generate bench-governance clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.stamp-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-runtime
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

demo: $(VENV)/.stamp-runtime
	$(BIN)/atelier demo

test: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check flows server sdxl_core governance migrations tests bench
	$(BIN)/ruff format --check flows server sdxl_core governance migrations tests bench
	$(BIN)/mypy

bench-generate: $(VENV)/.stamp-runtime
	$(BIN)/python bench/generate.py

clean:
	rm -rf .atelier .pytest_cache
