# The two commands a newcomer needs: `make run` serves, `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEV_ADMIN_TOKEN := dev-admin-token-change-me

export HOST ?= 127.0.0.1
export PORT ?= 8000

.PHONY: run test lint bench stress bench-writer loadtest loadtest-locust loadtest-spike setup db check clean

run: setup db
	@if [ -z "$$ADMIN_TOKEN" ]; then \
	  echo "make run: ADMIN_TOKEN not set; using the development token '$(DEV_ADMIN_TOKEN)' (never in production)"; \
	fi
	@echo "make run: serving on http://$(HOST):$(PORT) (Ctrl-C stops it)"
	ADMIN_TOKEN="$${ADMIN_TOKEN:-$(DEV_ADMIN_TOKEN)}" exec $(BIN)/coupon-service

test: setup check
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup db
	@bash loadtest/bench.sh

# Rising open-model rates (STRESS_RATES) to find the highest held with p99 <= P99_MS.
stress: setup db
	@bash loadtest/stress.sh

# 100,000 rows through the writer (FLUSH_BATCH_ROWS per flush), timed.
bench-writer: setup db
	$(BIN)/python loadtest/bench_writer.py

# The original scenario (k6, 2,800 req/s for 60 s, 100,000 coupons); override with
# RATE=, DURATION=, QUANTITY=, PRE_VUS=, MAX_VUS=, P99_MS=, WORKERS=.
loadtest: setup db
	$(BIN)/python loadtest/run.py --tool k6

loadtest-locust: setup db
	$(BIN)/python loadtest/run.py --tool locust

# The flash-sale opening: SPIKE_VUS (3,000) requests fire at once at a fresh event.
loadtest-spike: setup db
	$(BIN)/python loadtest/run.py --tool k6 --scenario spike

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or newer"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

check: setup
	@$(BIN)/couponctl check

db: check
	@$(BIN)/couponctl migrate --create-db

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
