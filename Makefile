# Two commands do all set-up: `make demo` (run with live simulated data) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo serve test lint typecheck unit openapi bench screenshots clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11+ is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/jobs-gateway demo

serve: setup
	$(BIN)/jobs-gateway serve

lint: setup
	$(BIN)/ruff check app migrations tests bench
	$(BIN)/ruff format --check app migrations tests bench
	$(BIN)/mypy
	$(BIN)/jobs-gateway openapi --check

# Two workers (the machine's two cores): both take the e2e tests first, longest first, then
# the in-process tests, a test at a time, so that both finish together (tests/conftest.py).
test: lint
	$(BIN)/pytest -n 2

# The fast layers, for a quick loop: unit tests and the API on SQLite (no PostgreSQL, no
# server processes). `make test` runs everything.
unit: setup
	$(BIN)/pytest tests/unit tests/api -m "not postgres and not e2e"

openapi: setup
	$(BIN)/jobs-gateway openapi

bench: setup
	$(BIN)/python -m bench.load

# The README's pictures of the board, from the demo, in Debian's Chromium (apt-get install chromium).
screenshots: setup
	$(BIN)/python -m tests.browser.screenshots --out docs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis data
