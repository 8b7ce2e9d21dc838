# The Docker Compose stack (docker-compose.yml). The main Makefile includes
# this file: `include mk/stack.mk`.
#
#   make up              build the image, start everything, wait until healthy
#                        (KAFKA_NODES=3: Kafka as a cluster of three nodes)
#   make down            stop and remove the containers (data volume kept)
#   make logs [SERVICE=api]   follow the logs
#   make ps              what is running, and its health
#   make e2e-up          the `running_stack` e2e tests against `make up`'s stack
#   make compose-check   validate docker-compose.yml (no Docker engine needed)

# Compose v2 (`docker compose`), the only one that drives current Docker
# engines: the standalone `docker-compose` v1 is refused by Engine 29 (API
# 1.38) and fails to recreate containers on 25-28. `make up` says how to get
# v2 when the client lacks it; v1 (Debian's package, which `make tools`
# installs) only validates the file, in `make compose-check` and the tests.
COMPOSE ?= docker compose

# The same project name wherever the checkout lives, so containers, network
# and volume are always callchain-*.
export COMPOSE_PROJECT_NAME ?= callchain
# The Dockerfile's cache mounts need BuildKit (Compose v2's default).
export DOCKER_BUILDKIT ?= 1

# `make up KAFKA_NODES=3` (and down, logs, ps with it): Kafka as a cluster
# of three, docker-compose.cluster.yml over docker-compose.yml.
KAFKA_NODES ?= 1
ifeq ($(KAFKA_NODES),3)
export COMPOSE_FILE := docker-compose.yml:docker-compose.cluster.yml
else ifneq ($(KAFKA_NODES),1)
$(error KAFKA_NODES must be 1 or 3, not $(KAFKA_NODES))
endif

STACK_API_URL ?= http://localhost:8080
STACK_JAEGER_URL ?= http://localhost:16686
SERVICE ?=

.PHONY: up down logs ps e2e-up compose-check

# The recipes' shell lives in scripts/stack.sh, which reads these variables.
STACK_ENV = COMPOSE='$(COMPOSE)' STACK_API_URL=$(STACK_API_URL) STACK_JAEGER_URL=$(STACK_JAEGER_URL)

up: ## Build the image, start the stack, wait until every service is healthy
	@$(STACK_ENV) scripts/stack.sh up

down: ## Stop and remove the stack's containers (`$(COMPOSE) down -v` also drops the data)
	$(COMPOSE) down

logs: ## Follow the stack's logs (all services, or SERVICE=api)
	$(COMPOSE) logs -f $(SERVICE)

ps: ## List the stack's containers and their health
	$(COMPOSE) ps

# With cargo-nextest when it is installed, else plain cargo test, as `make test`.
E2E_UP_RUNNER ?= $(shell command -v cargo-nextest >/dev/null 2>&1 \
	&& echo "cargo nextest run -p callchain-e2e --test running_stack --run-ignored all" \
	|| echo "cargo test -p callchain-e2e --test running_stack -- --include-ignored")

e2e-up: ## Run the `running_stack` e2e tests against the stack of `make up`
	CALLCHAIN_API_URL=$(STACK_API_URL) CALLCHAIN_JAEGER_URL=$(STACK_JAEGER_URL) $(E2E_UP_RUNNER)

compose-check: ## Validate docker-compose.yml (and the cluster override) against the Compose schema (no engine needed)
	@scripts/stack.sh check
