# Fleetwire: `make run` starts the whole stack, `make test` runs every suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
DATA_DIR ?= .data
PORT ?= 8080
NODE_BIN := node_modules/.bin

.PHONY: help install build run test lint bench clean

help:
	@echo "make run    install what is missing, start Redis and Fleetwire on port $(PORT)"
	@echo "make test   install, start a private Redis, run every suite"
	@echo "make bench  run the broker benchmarks (see bench/README.md)"
	@echo "make lint   eslint + type check"

node_modules/.package-lock.json: package.json package-lock.json common/package.json broker/package.json auth-service/package.json cli/package.json
	npm ci --no-audit --no-fund
	@touch $@

install: node_modules/.package-lock.json build

build: node_modules/.package-lock.json
	$(NODE_BIN)/tsc -b
	@chmod +x cli/dist/main.js
	@ln -sf ../@fleetwire/cli/dist/main.js node_modules/.bin/fleetwire

run: install
	@mkdir -p $(DATA_DIR)
	@REDIS_URL=$$(scripts/ensure-redis.sh $(DATA_DIR)/redis 6379) && \
	  echo "Redis: $$REDIS_URL" && \
	  REDIS_URL=$$REDIS_URL FLEETWIRE_DATA_DIR=$(DATA_DIR) PORT=$(PORT) exec node cli/dist/main.js up

# Every suite writes its result into .test-results/; the last line sums them all.
test: install
	@rm -rf .test-results .test-data && mkdir -p .test-results .test-data
	@set -o pipefail; \
	if [[ -z "$${REDIS_URL:-}" ]]; then \
	  TEST_REDIS_URL=$$(scripts/ensure-redis.sh .test-data/redis free) || exit 1; \
	  STARTED_REDIS=1; \
	else TEST_REDIS_URL=$$REDIS_URL; fi; \
	echo "test Redis: $$TEST_REDIS_URL"; \
	echo "building the device simulator for the end-to-end tests"; \
	cargo build --quiet --manifest-path firmware-esp32/Cargo.toml -p fleetwire-sim || echo "cargo build failed: the e2e tests will fail"; \
	REDIS_URL=$$TEST_REDIS_URL $(NODE_BIN)/vitest run; \
	if [[ -n "$${STARTED_REDIS:-}" ]]; then redis-cli -u "$$TEST_REDIS_URL" shutdown nosave >/dev/null 2>&1 || true; fi; \
	scripts/run-cargo-tests.sh .test-results/cargo.counts; \
	node scripts/test-summary.mjs .test-results

lint: node_modules/.package-lock.json
	$(NODE_BIN)/eslint .
	$(NODE_BIN)/tsc -b

bench: install
	bash bench/run-all.sh

clean:
	rm -rf common/dist broker/dist auth-service/dist cli/dist */tsconfig.tsbuildinfo .test-results .test-data
