# The Docker Compose stack (docker-compose.yml). The main Makefile includes
# this file: `include mk/stack.mk`.
#
#   make up              build the image, start everything, wait until healthy
#   make down            stop and remove the containers (data volume kept)
#   make logs [SERVICE=api]   follow the logs
#   make ps              what is running, and its health
#   make e2e-up          the `running_stack` e2e tests against `make up`'s stack
#   make compose-check   validate docker-compose.yml (no Docker engine needed)

# The Compose v2 plugin (`docker compose`) when the docker client has it, else
# the standalone `docker-compose` (Debian's package, v1.29; `make tools`
# installs it). Override it on the command line: `make up COMPOSE=...`.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo 'docker compose' || echo docker-compose)

# The same project name wherever the checkout lives, so containers, network
# and volume are always callchain-*.
export COMPOSE_PROJECT_NAME ?= callchain
# The Dockerfile's cache mounts need BuildKit; docker-compose v1 must ask for it.
export DOCKER_BUILDKIT ?= 1
export COMPOSE_DOCKER_CLI_BUILD ?= 1

STACK_API_URL ?= http://localhost:8080
STACK_JAEGER_URL ?= http://localhost:16686
# How long `make up` waits for health when Compose cannot (`docker-compose` v1
# has no `up --wait`).
STACK_WAIT_SECONDS ?= 300
SERVICE ?=

.PHONY: up down logs ps e2e-up compose-check stack-wait

# The recipes' shell lives in scripts/stack.sh, which reads these variables.
STACK_ENV = COMPOSE='$(COMPOSE)' STACK_WAIT_SECONDS=$(STACK_WAIT_SECONDS) \
	STACK_API_URL=$(STACK_API_URL) STACK_JAEGER_URL=$(STACK_JAEGER_URL)

up: ## Build the image, start the stack, wait until every service is healthy
	@$(STACK_ENV) scripts/stack.sh up

# Waits until no container of the stack is still `starting` its healthcheck;
# fails on the first `unhealthy` one. Only needed with docker-compose v1.
stack-wait:
	@$(STACK_ENV) scripts/stack.sh wait

down: ## Stop and remove the stack's containers (`$(COMPOSE) down -v` also drops the data)
	$(COMPOSE) down

logs: ## Follow the stack's logs (all services, or SERVICE=api)
	$(COMPOSE) logs -f $(SERVICE)

ps: ## List the stack's containers and their health
	$(COMPOSE) ps

e2e-up: ## Run the `running_stack` e2e tests against the stack of `make up`
	CALLCHAIN_API_URL=$(STACK_API_URL) CALLCHAIN_JAEGER_URL=$(STACK_JAEGER_URL) \
		cargo nextest run -p callchain-e2e --run-ignored all -E 'test(running_stack)'

compose-check: ## Validate docker-compose.yml against the Compose schema (no engine needed)
	@scripts/stack.sh check
