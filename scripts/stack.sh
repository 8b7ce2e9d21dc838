#!/usr/bin/env bash
# The Docker Compose stack (docker-compose.yml), for mk/stack.mk's targets.
#
#   scripts/stack.sh up      build the image, start everything, wait until
#                            every service is healthy, print what to try
#   scripts/stack.sh wait    wait until no container is still starting its
#                            health check (docker-compose v1 has no --wait)
#   scripts/stack.sh check   validate docker-compose.yml (no engine needed)
#
# From the environment (the Makefile passes its variables): COMPOSE, the
# Compose command; STACK_WAIT_SECONDS, how long `wait` waits; STACK_API_URL
# and STACK_JAEGER_URL, printed by `up`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

COMPOSE=${COMPOSE:-docker compose}
STACK_WAIT_SECONDS=${STACK_WAIT_SECONDS:-300}
STACK_API_URL=${STACK_API_URL:-http://localhost:8080}
STACK_JAEGER_URL=${STACK_JAEGER_URL:-http://localhost:16686}

# Runs the Compose command, split into its words (`docker compose`).
compose() {
    local -a command
    read -r -a command <<<"$COMPOSE"
    "${command[@]}" "$@"
}

up() {
    docker info >/dev/null 2>&1 ||
        die "make up needs a running Docker engine, and none answers (try: docker info)"
    if [ "$COMPOSE" = "docker compose" ]; then
        echo "+ $COMPOSE up -d --build --wait"
        compose up -d --build --wait
    else
        echo "+ $COMPOSE build && $COMPOSE up -d"
        compose build
        compose up -d
        wait_healthy
    fi
    cat <<TRY

callchain is up:
  API     $STACK_API_URL
  Jaeger  $STACK_JAEGER_URL

Create a user; the traceparent response header holds its trace id, to look up in Jaeger:
  curl -i $STACK_API_URL/v1/users -H 'content-type: application/json' \\
    -d '{"email":"ada@example.com","name":"Ada Lovelace","password":"correct horse battery staple"}'
TRY
}

# Fails on the first `unhealthy` container, or when some are still
# `starting` after STACK_WAIT_SECONDS.
wait_healthy() {
    local deadline=$((SECONDS + STACK_WAIT_SECONDS)) pending id name health
    while :; do
        pending=""
        for id in $(compose ps -q); do
            name=$(docker inspect --format '{{.Name}}' "$id")
            health=$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")
            case $health in
                unhealthy) die "$name is unhealthy; see: make logs" ;;
                starting) pending="$pending $name" ;;
            esac
        done
        [ -z "$pending" ] && return 0
        [ $SECONDS -lt $deadline ] || die "not healthy after ${STACK_WAIT_SECONDS}s:$pending"
        sleep 2
    done
}

check() {
    need docker-compose "it with 'make tools'"
    echo "+ docker-compose --file docker-compose.yml config --quiet"
    docker-compose --file docker-compose.yml config --quiet
    if docker compose version >/dev/null 2>&1; then
        echo "+ docker compose --file docker-compose.yml config --quiet"
        docker compose --file docker-compose.yml config --quiet
    fi
}

case ${1:-} in
up) up ;;
wait) wait_healthy ;;
check) check ;;
*) die "usage: scripts/stack.sh up|wait|check" ;;
esac
