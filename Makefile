# CryptoVault developer commands. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The lock tool (uv, requirements-tools.txt) lives apart from the app's environment.
LOCK_TOOLS := var/lock-tools


# Everything run from here is development: dev keys and local hosts (DEBUG defaults to
# off, and production refuses to start without its own keys). The caller's DEBUG wins.
export DEBUG ?= true

.PHONY: install lock lock-check run test lint typecheck format services browser static migrate seed bench clean

install: $(STAMP)

# requirements-dev.txt is the whole development environment (runtime pins included), every
# package pinned with its hashes: pip refuses anything else.
$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-dev.txt
	@touch $(STAMP)

$(LOCK_TOOLS)/.installed: requirements-tools.txt
	@test -x $(LOCK_TOOLS)/bin/python || $(PYTHON) -m venv $(LOCK_TOOLS)
	@$(LOCK_TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --require-hashes \
		-r requirements-tools.txt || { echo "lock: could not install uv from requirements-tools.txt;" \
		"this needs the package index (PyPI)." >&2; exit 1; }
	@touch $@

# Recompiles requirements*.txt from requirements*.in, moving only what an input changed or
# UPGRADE="NAME[==X.Y] ..." names (README "Dependencies").
lock: $(LOCK_TOOLS)/.installed
	@UV=$(LOCK_TOOLS)/bin/uv UPGRADE="$(UPGRADE)" bash scripts/lock.sh

# Fails if a lock no longer matches its input; CI runs it before the tests.
lock-check: $(LOCK_TOOLS)/.installed
	@UV=$(LOCK_TOOLS)/bin/uv bash scripts/lock.sh --check

services:
	@bash scripts/services.sh

browser:
	@bash scripts/browser.sh

# Hashed, compressed copies under var/static, served by the app itself (WhiteNoise).
static: install
	$(BIN)/python manage.py collectstatic --noinput -v0

migrate: install services
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	$(BIN)/python manage.py seed_demo --with-user

# `make run` talks to the built-in simulator unless told otherwise. Web and worker
# processes share one metrics directory, emptied at each start, so GET /metrics on the
# web port (Authorization: Bearer $METRICS_TOKEN) shows them all (README "Metrics").
run: export MARKET_DATA_URL ?= http://127.0.0.1:$(or $(SIMULATOR_PORT),8765)/api/v3
run: export METRICS_TOKEN ?= dev-metrics-token
run: install services static migrate seed
	rm -rf var/metrics && mkdir -p var/metrics
	PROMETHEUS_MULTIPROC_DIR="$(CURDIR)/var/metrics" PATH="$(CURDIR)/$(BIN):$$PATH" \
		$(BIN)/honcho start -f Procfile --port $${PORT:-8000}

test: install services browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy with the Django and DRF plugins over the app packages (pyproject's [tool.mypy]:
# services and selectors fully annotated, every body checked).
TYPED := $(wildcard cryptovault accounts markets orders notifications bots)
typecheck: install
	$(BIN)/mypy $(TYPED)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache
