# CryptoVault developer commands. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed


# Everything run from here is development: dev keys and local hosts (DEBUG defaults to
# off, and production refuses to start without its own keys). The caller's DEBUG wins.
export DEBUG ?= true

.PHONY: install run test lint format services browser static migrate seed bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

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

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache
