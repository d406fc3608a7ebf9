# The two commands: `make run` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo test test-fast lint reliability bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/bulkhook run --generate-key var/signature.key

demo: install
	$(BIN)/bulkhook demo $(DEMO_ARGS)

test: install lint
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

reliability: install
	rm -rf var/reliability
	RELIABILITY_REPORT_DIR=var/reliability $(BIN)/pytest -m faults -q
	$(BIN)/python bench/fsync.py --out var/reliability/fsync.json
	$(BIN)/python bench/reliability_report.py var/reliability docs/reliability.md

lint: install
	$(BIN)/ruff check service tests deploy bench
	$(BIN)/ruff format --check service tests deploy bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache

bench: install
	$(BIN)/python bench/run.py
