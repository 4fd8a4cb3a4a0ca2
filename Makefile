# reviewapp: `make run` (the demo, embedded mode) and `make test` (the whole suite on PostgreSQL + Redis).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export LITELLM_LOCAL_MODEL_COST_MAP := True
# Tests run on the real parts; override either URL to point elsewhere.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/reviewapp
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

.PHONY: run install install-dev test lint browser-deps bench faults clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'

run: install
	DEBUG=1 $(BIN)/python manage.py demo

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Browser tests drive Debian's chromium (Playwright cannot download a browser here).
browser-deps:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null); } || echo "chromium missing: browser tests will be skipped"

test: install-dev browser-deps lint
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
	  $(BIN)/pytest $(PYTEST_ARGS)

bench: install-dev
	$(BIN)/python bench/heuristic_calibration.py

clean:
	rm -rf $(VENV) db.sqlite3* media staticfiles .secret_key

# Broker and database restarts under real gunicorn + celery processes, on a private Redis and PostgreSQL
# cluster that the tests start, kill and restart themselves (never the shared ones). See docs/faults.md.
faults: install-dev
	$(BIN)/pytest tests/faults -m faults $(PYTEST_ARGS)
