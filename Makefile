# Two commands (see README.md): `make demo` installs everything and runs a short load test against the embedded
# server; `make test` runs the whole test suite (CI runs exactly this through .ci/run).
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install system-deps demo test lint
$(BIN)/cvload: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[emulator,dev]'
	touch $(BIN)/cvload

install: $(BIN)/cvload

demo: install
	$(BIN)/cvload run --emulator --profile demo --num-tasks 4 --requests 40

# tmux drives the real-terminal dashboard test; nginx (a TLS load balancer) and openssl (test certificates) the TLS
# tests (Debian; each test is skipped where its tool is missing and apt-get cannot install it).
system-deps:
	@command -v tmux >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq tmux >/dev/null)
	@(command -v nginx || test -x /usr/sbin/nginx) >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 || \
		! command -v apt-get >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq nginx openssl >/dev/null)

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
