# Alianza Jobs: every command a developer needs. `make dev` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.alianza/dagster_home
HOST ?= 127.0.0.1
PORT ?= 3000

.PHONY: install uv lock upgrade versions defs dev test test-stressed lint format typecheck check bench bench-smoke tail emulate clean drizzle-schema

# Exactly the locked set (requirements-dev.lock: the runtime's requirements.lock plus the dev tools,
# hashes checked), then this package on top of it without resolving anything again: what CI tested
# is what a fresh machine gets. `make lock` updates both locks.
$(BIN)/.installed: pyproject.toml requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $@

install: $(BIN)/.installed ## create .venv with the locked dependencies and dev tools, then the package

# dg finds the project from pyproject.toml's [tool.dg]; it wants the project's venv active.
DG := VIRTUAL_ENV=$(abspath $(VENV)) PATH=$(abspath $(BIN)):$$PATH $(BIN)/dg

# uv from the lock itself, even before a first install (a new dependency can make `install` fail).
uv:
	test -x $(BIN)/uv || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet "$$(grep -m1 '^uv==' requirements-dev.lock | cut -d' ' -f1)"; }

COMPILE := $(BIN)/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes pyproject.toml

lock: uv ## re-resolve the locks after a change to pyproject.toml's dependencies (keeps other pins)
	$(COMPILE) -o requirements.lock
	$(COMPILE) --extra dev --constraint requirements.lock -o requirements-dev.lock

upgrade: uv ## move every pin in the locks to the newest release pyproject.toml allows
	$(COMPILE) --upgrade -o requirements.lock
	$(COMPILE) --extra dev --constraint requirements.lock --upgrade -o requirements-dev.lock

versions: install ## what is installed (the lock's versions; a test fails when they differ)
	$(BIN)/pip freeze --exclude-editable

defs: install $(DAGSTER_HOME)/dagster.yaml ## load the code location the way Dagster's tools do: dg check defs, then dg list defs
	$(DG) check defs
	$(DG) list defs

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

check: lint typecheck defs test

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
