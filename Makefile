# Trailmark — `make run` to try it, `make test` for the whole suite. `make help` lists the rest.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run serve test test-sqlite test-postgres lint bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

install: $(VENV)/.installed ## Create .venv and install Trailmark with its test tools

run: $(VENV)/.installed ## Migrate SQLite and serve the tool, scheduler and sandbox LMS on 127.0.0.1:5000
	$(VENV)/bin/trailmark start

serve: $(VENV)/.installed ## Serve with gunicorn, server.workers workers and the scheduler leader-elected among them
	$(VENV)/bin/trailmark serve --with-scheduler

test: $(VENV)/.installed ## The whole suite: SQLite, then PostgreSQL (TRAILMARK_TEST_POSTGRES_URL); Redis tests need TRAILMARK_TEST_REDIS_URL
	$(MAKE) --no-print-directory test-sqlite
	@if [ -n "$$TRAILMARK_TEST_POSTGRES_URL" ]; then $(MAKE) --no-print-directory test-postgres; fi

test-sqlite: $(VENV)/.installed ## The suite on SQLite, browser tests included
	env -u TRAILMARK_TEST_POSTGRES_URL TRAILMARK_REQUIRE="$$(echo "$$TRAILMARK_REQUIRE" | sed 's/postgres//')" \
	  $(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

test-postgres: $(VENV)/.installed ## The suite again on PostgreSQL (browser tests run once, on SQLite)
	$(PY) -m pytest -n 2 -q -m "not browser" $(PYTEST_ARGS)

lint: $(VENV)/.installed ## ruff
	$(VENV)/bin/ruff check plugin connectors tests bench

bench: $(VENV)/.installed ## Run the benchmarks in bench/ and print their figures
	@for b in bench/*.py; do case $$b in */_*|*/district_gen.py) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## Remove the virtualenv and local data
	rm -rf $(VENV) var .pytest_cache
