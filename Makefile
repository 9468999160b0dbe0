# Two commands (see README.md): `make demo` installs everything and runs a short load test against the embedded
# server; `make test` runs the whole test suite (CI runs exactly this through .ci/run).
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo test lint
$(BIN)/cvload: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[emulator,dev]'
	touch $(BIN)/cvload

install: $(BIN)/cvload

demo: install
	$(BIN)/cvload run --emulator --profile demo --num-tasks 4 --requests 40

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
