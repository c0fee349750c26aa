# Alianza Jobs: every command a developer needs. `make dev` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.alianza/dagster_home
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: install dev test test-stressed lint format typecheck check bench bench-smoke tail emulate clean drizzle-schema

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed ## create .venv and install the package with its dev tools

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

dev: install $(DAGSTER_HOME)/dagster.yaml ## stand in for the platform's tables, migrate + seed, then start the UI, the daemon and the webhook receiver
	$(BIN)/alianza-jobs db platform-stand-in
	$(BIN)/alianza-jobs db upgrade
	$(BIN)/alianza-jobs db seed-demo --if-empty
	BIN=$(BIN) HOST=$(HOST) PORT=$(PORT) scripts/dev

test: install ## the whole suite (Postgres tests skip without a server unless ALIANZA_REQUIRE_POSTGRES=1)
	$(BIN)/pytest

test-stressed: install ## the whole suite with both CPU cores kept busy (scripts/stress-test)
	scripts/stress-test $(BIN)/pytest

lint: install ## ruff, the formatter's check, and deptry (every import a declared dependency)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/deptry .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install
	$(BIN)/mypy

check: lint typecheck test

bench: install ## benchmarks against the TypeScript package's way, on loopback emulators; writes benchmarks/results/
	$(BIN)/python -m benchmarks --triggers

bench-smoke: install
	$(BIN)/python -m benchmarks --smoke

drizzle-schema: ## regenerate the tests' Drizzle platform schema (needs npm; the suite itself does not)
	cd alianza_jobs_tests/db/drizzle && npm ci --no-audit --no-fund && rm -rf generated && npx drizzle-kit generate --name platform

tail: install ## follow run logs from the instance in DAGSTER_HOME
	$(BIN)/alianza-jobs tail --follow

emulate: install ## serve the Stream and Resend emulators on 127.0.0.1:8787
	$(BIN)/alianza-jobs emulate --port 8787

clean: ## remove the virtualenv, local state and caches
	rm -rf $(VENV) .alianza .tmp_dagster_home_* .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf *.egg-info
