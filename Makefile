# Fleetwire: `make run` starts the whole stack, `make test` runs every suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
DATA_DIR ?= .data
PORT ?= 8080
NODE_BIN := node_modules/.bin
# The npm workspaces, in package.json order: the one list of Node packages and services.
WORKSPACES := $(shell node -p "require('./package.json').workspaces.join(' ')")
VENV := .venv
# Python parts, each a folder with its pyproject.toml and tests/, installed into the one $(VENV).
PY_PROJECTS := e2e/python python-worker
# pip targets: the worker is installed editable, so an edit to its source is what runs
# (fleetwire up starts .venv/bin/fleetwire-ml-worker); its train extra retrains the models.
PY_INSTALL := './e2e/python[dev]' -e './python-worker[dev,train]'
# Python files outside those folders that ruff checks with their settings (README snippets).
PY_EXTRA := examples
RUFF_CONFIG := e2e/python/pyproject.toml

.PHONY: help install build venv run test lint bench clean

help:
	@echo "make run    install what is missing (npm deps, the Python venv), start Redis and Fleetwire on port $(PORT)"
	@echo "make test   install, start a private Redis, run every suite"
	@echo "make bench  run the broker benchmarks (see bench/README.md)"
	@echo "make lint   eslint + type check (sources and tests) + import cycles + ruff"
	@echo "make venv   the Python venv ($(VENV)) with the Python parts: $(PY_PROJECTS)"

node_modules/.package-lock.json: package.json package-lock.json $(addsuffix /package.json,$(WORKSPACES))
	npm ci --no-audit --no-fund
	@touch $@

install: node_modules/.package-lock.json build

# Created, and refilled, only when missing or when a pyproject.toml changed.
$(VENV)/.installed: $(addsuffix /pyproject.toml,$(PY_PROJECTS)) scripts/ensure-venv.sh
	scripts/ensure-venv.sh $(VENV) $(PY_INSTALL)
	@touch $@

venv: $(VENV)/.installed

build: node_modules/.package-lock.json
	$(NODE_BIN)/tsc -b $(WORKSPACES)
	@chmod +x cli/dist/main.js
	@ln -sf ../@fleetwire/cli/dist/main.js node_modules/.bin/fleetwire

run: install venv
	@mkdir -p $(DATA_DIR)
	@REDIS_URL=$$(scripts/ensure-redis.sh $(DATA_DIR)/redis 6379) && \
	  echo "Redis: $$REDIS_URL" && \
	  REDIS_URL=$$REDIS_URL FLEETWIRE_DATA_DIR=$(DATA_DIR) PORT=$(PORT) exec node cli/dist/main.js up

# Every suite writes its result into .test-results/; the last line sums them all.
# The Python tests use REDIS_URL, or a private Redis started here and stopped when this
# target ends (the EXIT trap: also on failure or Ctrl-C).
# Every vitest file starts a Redis server of its own (scripts/vitest/redis-per-file.ts),
# so no suite sees another's keys, per-address counters or pub/sub, and order does not matter.
test: install venv
	@rm -rf .test-results .test-data && mkdir -p .test-results .test-data
	@set -o pipefail; \
	if [[ -z "$${REDIS_URL:-}" ]]; then \
	  TEST_REDIS_URL=$$(scripts/ensure-redis.sh .test-data/redis free) || exit 1; \
	  trap 'redis-cli -u "$$TEST_REDIS_URL" shutdown nosave >/dev/null 2>&1 || true' EXIT; \
	else TEST_REDIS_URL=$$REDIS_URL; fi; \
	echo "test Redis for Python: $$TEST_REDIS_URL"; \
	echo "building the device simulator for the end-to-end tests"; \
	cargo build --quiet --manifest-path firmware-esp32/Cargo.toml -p fleetwire-sim || echo "cargo build failed: the e2e tests will fail"; \
	for p in $(PY_PROJECTS); do \
	  REDIS_URL=$$TEST_REDIS_URL scripts/run-pytest.sh $$p ".test-results/$${p//\//-}.counts"; \
	done; \
	$(NODE_BIN)/vitest run; \
	scripts/run-cargo-tests.sh .test-results/cargo.counts; \
	node scripts/test-summary.mjs .test-results

# Import cycles: madge reads every package's src/ (type-only imports count too, as the
# layering forbids them as well) and fails on any cycle. Inside one package only: the
# packages themselves cannot form one (tsc -b refuses circular project references).
lint: node_modules/.package-lock.json venv
	$(NODE_BIN)/eslint .
	$(NODE_BIN)/tsc -b $(WORKSPACES)
	$(NODE_BIN)/tsc -p tsconfig.tests.json
	$(NODE_BIN)/madge --circular --no-spinner --extensions ts --ts-config tsconfig.base.json --exclude '/dist/' $(addsuffix /src,$(WORKSPACES))
	$(VENV)/bin/ruff check --config $(RUFF_CONFIG) $(PY_PROJECTS) $(PY_EXTRA)
	$(VENV)/bin/ruff format --check --config $(RUFF_CONFIG) $(PY_PROJECTS) $(PY_EXTRA)

bench: install
	bash bench/run-all.sh

clean:
	rm -rf $(addsuffix /dist,$(WORKSPACES)) $(addsuffix /tsconfig.tsbuildinfo,$(WORKSPACES)) .test-results .test-data
