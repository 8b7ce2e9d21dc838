# callchain: every command a user or CI runs. `make help` lists them.

SHELL := bash
export PATH := $(HOME)/.cargo/bin:$(PATH)

# cargo-nextest runs each test in its own process; plain cargo test works too.
TEST_RUNNER ?= $(shell command -v cargo-nextest >/dev/null 2>&1 && echo "cargo nextest run --no-fail-fast" || echo "cargo test --no-fail-fast")

.DEFAULT_GOAL := help
.PHONY: help tools postgres build test lint fmt ci dev dev-down doctor bench chaos trace fuzz k8s-verify

help: ## List the commands
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

tools: ## Install what dev and the tests need when missing (Postgres, Kafka, the collector, Jaeger, VictoriaMetrics, Schemathesis, Chromium, Helm, the Kubernetes schemas: once per machine)
	@scripts/install-tools.sh

postgres: ## Start the machine's Postgres and create the callchain role and database
	@scripts/ensure-postgres.sh

build: ## Build the three service binaries (release), the same way the Dockerfile does
	scripts/build-services.sh

test: ## Run every test against real parts (Kafka, Postgres, the collector, Jaeger), installed and started here
	@scripts/test-parts.sh run $(TEST_RUNNER) --workspace

lint: ## cargo fmt --check and clippy with warnings denied
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt --all

ci: lint test ## What CI runs

bench: ## Print the performance figures (consumer events/s, write-to-row lag, read rate, trace integrity) on real Kafka; optimised build
	@scripts/test-parts.sh run cargo bench -p callchain-e2e --bench pipeline

chaos: ## Inject faults (broker, consumer, Postgres, replicas, a slow user service, the collector, SIGTERM, a three-node cluster's nodes) under load; fails on a lost, duplicated or reordered change. CHAOS_ONLY=2 CHAOS_QUICK=1; NEMESIS=<minutes> SEED=<n> for random faults in combination
	@scripts/test-parts.sh run bash -c 'scripts/build-services.sh && cargo bench -p callchain-e2e --bench chaos'

# Cases per property for make fuzz (make test runs a few hundred). A debug
# build, whose overflow checks are part of what is looked for.
FUZZ_CASES ?= 20000

fuzz: ## Run tracechain's properties over generated hostile logs and spans at length (FUZZ_CASES=<n> cases each); needs no parts
	PROPTEST_CASES=$(FUZZ_CASES) cargo test -p callchain-tracechain --test hostile

dev: ## Run everything on this machine without Docker (Kafka, Postgres, the collector, Jaeger, VictoriaMetrics, the services); Ctrl-C stops it
	@scripts/dev.sh

dev-down: ## Stop what `DEV_DETACH=1 make dev` started
	@scripts/dev.sh down

doctor: ## Say, hop by hop, where telemetry stops in a running stack (make dev's ports; make up publishes the same): one line per hop, ✓ or ✗ with the fix
	@scripts/doctor.sh

k8s-verify: ## Apply the Helm chart to a real API server on loopback (etcd + kube-apiserver, built from Go once per machine): server dry run, apply, read back
	@scripts/k8s-verify.sh

# make dev's logs; TRACE_LOGS=... reads others (a folder, files, or - for stdin).
TRACE_LOGS ?= .dev/logs

trace: ## Rebuild a request's call chain from make dev's logs: make trace ID=<trace id> (the newest without ID; HTML=page.html draws it)
	@[ "$(TRACE_LOGS)" != .dev/logs ] || [ -d .dev/logs ] || { \
		echo "no .dev/logs: start make dev, send a request, then make trace ID=<trace id from its traceparent header>" >&2; exit 2; }
	@cargo run --quiet -p callchain-tracechain -- $(if $(ID),$(ID),--last) $(TRACE_LOGS) $(if $(HTML),--html $(HTML))

include mk/stack.mk
