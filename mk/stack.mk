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

up: ## Build the image, start the stack, wait until every service is healthy
	@docker info >/dev/null 2>&1 || { \
		echo "make up needs a running Docker engine, and none answers (try: docker info)" >&2; exit 1; }
	@if [ "$(COMPOSE)" = "docker compose" ]; then \
		echo "+ $(COMPOSE) up -d --build --wait"; \
		$(COMPOSE) up -d --build --wait; \
	else \
		echo "+ $(COMPOSE) build && $(COMPOSE) up -d"; \
		$(COMPOSE) build && $(COMPOSE) up -d && $(MAKE) --no-print-directory stack-wait; \
	fi
	@echo ""
	@echo "callchain is up:"
	@echo "  API     $(STACK_API_URL)"
	@echo "  Jaeger  $(STACK_JAEGER_URL)"
	@echo ""
	@echo "Create a user; the traceparent response header holds its trace id, to look up in Jaeger:"
	@echo "  curl -i $(STACK_API_URL)/v1/users -H 'content-type: application/json' \\"
	@echo "    -d '{\"email\":\"ada@example.com\",\"name\":\"Ada Lovelace\",\"password\":\"correct horse battery staple\"}'"

# Waits until no container of the stack is still `starting` its healthcheck;
# fails on the first `unhealthy` one. Only needed with docker-compose v1.
stack-wait:
	@deadline=$$(( $$(date +%s) + $(STACK_WAIT_SECONDS) )); \
	while :; do \
		pending=""; \
		for id in $$($(COMPOSE) ps -q); do \
			name=$$(docker inspect --format '{{.Name}}' "$$id"); \
			health=$$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$$id"); \
			case "$$health" in \
				unhealthy) echo "$$name is unhealthy; see: make logs" >&2; exit 1 ;; \
				starting) pending="$$pending $$name" ;; \
			esac; \
		done; \
		[ -z "$$pending" ] && break; \
		if [ "$$(date +%s)" -ge "$$deadline" ]; then \
			echo "not healthy after $(STACK_WAIT_SECONDS)s:$$pending" >&2; exit 1; \
		fi; \
		sleep 2; \
	done

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
	@command -v docker-compose >/dev/null 2>&1 || { \
		echo "docker-compose is not installed: run 'make tools'" >&2; exit 1; }
	docker-compose --file docker-compose.yml config --quiet
	@if docker compose version >/dev/null 2>&1; then \
		echo "+ docker compose --file docker-compose.yml config --quiet"; \
		docker compose --file docker-compose.yml config --quiet; \
	fi
