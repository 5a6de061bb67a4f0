# SPADE Explorer: `make run` starts the app, `make test` runs lint + the test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PORT ?= 8501
PYTEST_ARGS ?=
# pytest-xdist workers (0: one process), each computing on one torch thread (tests/conftest.py): 16.5 min with 2
# against 27.8 min in one process on the 2-core development machine
TEST_WORKERS ?= 2

.PHONY: help setup run test lint bench chromium postgresql

help:
	@echo "make run    - create .venv if needed, install requirements, start the app (streamlit run app.py)"
	@echo "make test   - same setup + Debian chromium and postgresql, then ruff check and pytest on TEST_WORKERS=2 processes (PYTEST_ARGS=...)"
	@echo "make lint   - ruff check ."
	@echo "make bench  - run the benchmarks/bench_*.py scripts with their defaults"

$(PY):
	python3 -m venv $(VENV)

# Re-install only when requirements.txt changes (torch/torchvision resolve from local wheels here).
$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/streamlit run app.py --server.port $(PORT) --browser.gatherUsageStats false

# The browser tests drive the Debian chromium package (Playwright's own browser download is never used).
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
		else echo "chromium is missing and neither root nor sudo is available: install the Debian 'chromium' package" >&2; exit 1; fi; \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

# The study storage tests start a throwaway server from the Debian postgresql package's binaries
# (initdb/pg_ctl under /usr/lib/postgresql/<version>/bin); no cluster of the package is used.
postgresql:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
		else echo "PostgreSQL is missing and neither root nor sudo is available: install the Debian 'postgresql' package" >&2; exit 1; fi; \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql; \
	fi

lint: setup
	$(VENV)/bin/ruff check .

test: setup chromium postgresql
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: setup
	@set -e; for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f; done
