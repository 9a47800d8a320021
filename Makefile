# fraudpipe developer entry points. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
DATA   ?= fraudpipe-data

.PHONY: install run test test-fast lint format bench clean

$(BIN)/fraudpipe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/fraudpipe ## create .venv and install fraudpipe with its dev tools

run: install ## run the whole pipeline locally (Ctrl-C stops)
	$(BIN)/fraudpipe run --data-dir $(DATA)

lint: install ## ruff + mypy
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

test: install lint ## lint, then every test (unit, property, multi-process, whole pipeline)
	$(BIN)/pytest

test-fast: install ## skip the whole-pipeline tests
	$(BIN)/pytest -m "not slow"

clean:
	rm -rf $(DATA) test-artifacts .pytest_cache .mypy_cache .ruff_cache
