# Multi-model gateway: Envoy + Proxy-Wasm filter + pool-manager in front of Triton.
# `make help` lists the targets. Everything the targets need is installed by
# scripts/install-deps.sh (idempotent), so a fresh clone needs no manual step.

SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
FILTER_WASM := target/$(WASM_TARGET)/release/mm_filter.wasm
POOL_MANAGER := target/debug/pool-manager
ENVOY := .tools/bin/envoy
# Bound on each test binary (the whole integration suite takes well under a minute).
TEST_TIMEOUT ?= 900

.PHONY: help deps build filter pool-manager lint fmt test unit-test integration-test validate-k8s \
        envoy-config validate-envoy run up down status clean bench fuzz

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

deps: ## Install Envoy, Triton, the wasm target and python3-numpy (idempotent)
	@bash scripts/install-deps.sh

filter: deps ## Build the Wasm filter (release, wasm32-wasip1)
	$(CARGO) build -p mm-filter --release --target $(WASM_TARGET)

pool-manager: ## Build the pool-manager and mmctl binaries
	$(CARGO) build -p pool-manager -p mmctl --bins

build: filter pool-manager ## Build everything the stack runs

fmt: ## Format the code
	$(CARGO) fmt --all

lint: deps ## rustfmt check and clippy (host and wasm32) with warnings as errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p mm-filter -p mm-wire -p mm-noop-filter --target $(WASM_TARGET) -- -D warnings

envoy-config: filter ## Render the default Envoy bootstrap to .run/envoy.yaml
	@mkdir -p .run
	@bash scripts/render-envoy.sh > .run/envoy.yaml
	@echo ".run/envoy.yaml"

validate-envoy: envoy-config ## Check the rendered bootstrap (with the built filter) with envoy --mode validate
	$(ENVOY) --mode validate -c .run/envoy.yaml --use-dynamic-base-id --log-level warn

validate-k8s: build ## Render every k8s overlay and validate it offline (schemas, Envoy config in sync)
	bash scripts/validate-k8s.sh

unit-test: ## Unit tests of every crate (no external processes)
	$(CARGO) test --workspace --exclude mm-tests

integration-test: build ## End-to-end tests with real Triton, pool-manager and Envoy
	timeout $(TEST_TIMEOUT) $(CARGO) test -p mm-tests

test: deps build lint validate-envoy validate-k8s unit-test integration-test ## Everything CI runs

run: build ## Start the whole stack in the foreground (Ctrl-C stops it; HA=1: etcd and two pool-managers)
	@HA=$(HA) bash scripts/stack.sh run

up: build ## Start the stack in the background (state and logs in .run/; HA=1: etcd and two pool-managers)
	@HA=$(HA) bash scripts/stack.sh up

down: ## Stop what `make up` started
	@bash scripts/stack.sh down

status: ## Show the processes `make up` started
	@bash scripts/stack.sh status

bench: deps ## Run the benchmarks and regenerate BENCHMARKS.md (bounded, < 20 min)
	@bash scripts/bench.sh

fuzz: ## Fuzz the filter's parsers (cargo-fuzz, FUZZ_SECONDS=60 each) and the admin API; not in `make test`
	@bash scripts/fuzz.sh

clean: down ## Remove build outputs and run state (keeps .tools/)
	$(CARGO) clean
	rm -rf .run
