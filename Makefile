# Two commands (see README.md): `make demo` installs everything and runs a short load test against the embedded
# server; `make test` runs the whole test suite (CI runs exactly this through .ci/run).
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
INSTALLED = $(VENV)/.cvload-installed

.PHONY: install system-deps demo test lint fresh-check
# The last step gives the embedded server's Python backend a Python it works with (numpy 1.x: this venv on Python
# 3.10-3.12, a private one beside it on 3.13); on platforms without the bundled server it only says so.
$(INSTALLED): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[emulator,report,ray,dev,whisper]'
	$(BIN)/python -m pip install -q --no-deps 'silero-vad>=5.1'  # only its ONNX model file is used (no torch)
	$(BIN)/python -m cvload.triton.stub_python
	touch $@

install: $(INSTALLED)

demo: install
	$(BIN)/cvload run --emulator --profile demo --num-tasks 4 --requests 40

# Debian packages the tests drive: tmux (the dashboard in a real terminal), chromium (renders `cvload report`'s
# HTML), nginx and openssl (a TLS load balancer and test certificates), prometheus and prometheus-pushgateway
# (scraping and receiving cvload's own metrics). Each test is skipped where its tool is
# missing and apt-get cannot install it. TOOL:PACKAGE pairs, installed in one apt-get call.
SYSTEM_TOOLS = tmux:tmux chromium:chromium /usr/sbin/nginx:nginx openssl:openssl prometheus:prometheus \
	prometheus-pushgateway:prometheus-pushgateway
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do tool=$${pair%%:*}; pkg=$${pair##*:}; \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing:$$missing"; apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

# The tests in four parts (docs/testing.md): most of the suite waits on servers, so it runs on TEST_WORKERS
# pytest-xdist workers (each test file whole on one worker, so module servers are shared) while ruff, lint-imports
# and mypy run beside it; the tests marked timing judge latencies that other processes' CPU use would shift, so
# they run after, three at a time; those marked paired (judged against the pipeline emulator, a server computing
# on the CPUs) two at a time; those marked alone (a few ms of slack) last, alone. Every part runs even when one
# fails, so a red run lists every failure. Five workers on two cores: with four, the first part still waited on
# servers a sixth of the time (150-172 s there, 139-149 s with five).
TEST_WORKERS ?= 5
# The files that hold tests of the later parts: collecting only those saves each of their pytest processes
# about a second of importing every other test module. xdist's default reordering (most tests first) is off:
# the longest files go first (tests/conftest.py), so that none of them starts last and runs on alone.
TIMING_FILES = $(shell grep -l "mark\.timing" tests/test_*.py)
PAIRED_FILES = $(shell grep -l "mark\.paired" tests/test_*.py)
ALONE_FILES = $(shell grep -l "mark\.alone" tests/test_*.py)
XDIST = --dist loadfile --no-loadscope-reorder
# Python writes its bytecode caches (and pytest its rewritten test modules) for the test run, whatever the shell
# says: with PYTHONDONTWRITEBYTECODE set, every worker, `cvload` subprocess and Python stub compiled every module
# it imported from source, each time (collection alone took 6.7 s instead of 2.6 s per pytest process).
test: install system-deps
	@unset PYTHONDONTWRITEBYTECODE; status=0; checks=$$(mktemp); \
	$(BIN)/python -m compileall -q -j 0 cvload server_bootstrap tests >/dev/null; \
	( $(BIN)/ruff check . && $(BIN)/lint-imports && $(BIN)/mypy ) >$$checks 2>&1 & checking=$$!; \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(XDIST) -m "not timing and not paired and not alone" || status=$$?; \
	wait $$checking || status=$$?; cat $$checks; rm -f $$checks; \
	$(BIN)/python -m pytest -q -n 3 $(XDIST) -m timing $(TIMING_FILES) || status=$$?; \
	$(BIN)/python -m pytest -q -n 2 $(XDIST) -m paired $(PAIRED_FILES) || status=$$?; \
	$(BIN)/python -m pytest -q -m alone $(ALONE_FILES) || status=$$?; \
	exit $$status

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# Not part of `test`: the two commands above on a fresh Debian 13 (Python 3.13) root made with debootstrap, in a
# chroot (root, a Debian mirror and about 15 minutes). Its output goes to the terminal; keep it with `| tee`.
fresh-check:
	scripts/fresh_check.sh
