#!/usr/bin/env bash
# The Docker Compose stack (docker-compose.yml), for mk/stack.mk's targets.
#
#   scripts/stack.sh up      build the image, start everything, wait until
#                            every service is healthy, print what to try
#   scripts/stack.sh check   validate docker-compose.yml, alone and with
#                            docker-compose.cluster.yml (no engine needed)
#
# From the environment (the Makefile passes its variables): COMPOSE, the
# Compose command (v2: `docker compose`); STACK_API_URL and
# STACK_JAEGER_URL, printed by `up`; COMPOSE_FILE, Compose's own, which
# `make up KAFKA_NODES=3` sets to add docker-compose.cluster.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

COMPOSE=${COMPOSE:-docker compose}
STACK_API_URL=${STACK_API_URL:-http://localhost:8080}
STACK_JAEGER_URL=${STACK_JAEGER_URL:-http://localhost:16686}

# Runs the Compose command, split into its words (`docker compose`).
compose() {
    local -a command
    read -r -a command <<<"$COMPOSE"
    "${command[@]}" "$@"
}

up() {
    compose version 2>/dev/null | grep -q 'version v\?2' ||
        die "make up needs Docker Compose v2 (\`docker compose\`): install Docker's compose plugin (the docker-compose-plugin package of Docker's repository, or Docker Desktop); the standalone docker-compose v1 cannot drive current engines"
    docker info >/dev/null 2>&1 ||
        die "make up needs a running Docker engine, and none answers (try: docker info)"
    echo "+ $COMPOSE up -d --build --wait"
    compose up -d --build --wait
    cat <<TRY

callchain is up:
  API     $STACK_API_URL
  Jaeger  $STACK_JAEGER_URL

Create a user; the traceparent response header holds its trace id, to look up in Jaeger:
  curl -i $STACK_API_URL/v1/users -H 'content-type: application/json' \\
    -d '{"email":"ada@example.com","name":"Ada Lovelace","password":"correct horse battery staple"}'
TRY
}

check() {
    need docker-compose "it with 'make tools'"
    local files
    for files in "--file docker-compose.yml" "--file docker-compose.yml --file docker-compose.cluster.yml"; do
        echo "+ docker-compose $files config --quiet"
        # shellcheck disable=SC2086 # the flags, split
        docker-compose $files config --quiet
        if docker compose version >/dev/null 2>&1; then
            echo "+ docker compose $files config --quiet"
            # shellcheck disable=SC2086
            docker compose $files config --quiet
        fi
    done
}

case ${1:-} in
up) up ;;
check) check ;;
*) die "usage: scripts/stack.sh up|check" ;;
esac
