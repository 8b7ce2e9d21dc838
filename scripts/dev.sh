#!/usr/bin/env bash
# `make dev`: the whole system on this machine, without Docker.
#
#   scripts/dev.sh        build, start tansu, Postgres and the three services,
#                         print what to try, and stay until Ctrl-C (which stops all)
#   scripts/dev.sh down   stop what a detached run started (`make dev-down`)
#
# Each service writes its JSON log to .dev/logs/<service>.log. tansu keeps its
# data in .dev/tansu (SQLite), so events survive a broker restart. Set
# OTEL_EXPORTER_OTLP_ENDPOINT to send spans to a collector; DEV_DETACH=1 to
# return once everything is up.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV_DIR=.dev
PIDS="$DEV_DIR/pids"
LOGS="$DEV_DIR/logs"
KAFKA_PORT=${KAFKA_PORT:-9092}
API_PORT=${API_PORT:-8080}
USER_PORT=${USER_PORT:-50051}
CONSUMER_PORT=${CONSUMER_PORT:-8081}
BIN=${DEV_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}

stop_all() {
    [ -d "$PIDS" ] || return 0
    # Services first (they drain and flush), the broker last.
    for name in api consumer user tansu; do
        [ -f "$PIDS/$name" ] || continue
        pid=$(cat "$PIDS/$name")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
            echo "stopped $name"
        fi
        rm -f "$PIDS/$name"
    done
}

if [ "${1:-}" = "down" ]; then
    stop_all
    exit 0
fi

wait_for() { # name, command...
    local name=$1
    shift
    for _ in $(seq 1 150); do
        "$@" >/dev/null 2>&1 && return 0
        if [ -f "$PIDS/$name" ] && ! kill -0 "$(cat "$PIDS/$name")" 2>/dev/null; then
            echo "$name exited; the end of $LOGS/$name.log:" >&2
            tail -n 20 "$LOGS/$name.log" >&2
            return 1
        fi
        sleep 0.2
    done
    echo "$name did not become ready; see $LOGS/$name.log" >&2
    return 1
}

start() { # name, command...
    local name=$1
    shift
    "$@" >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$PIDS/$name"
}

stop_all
mkdir -p "$PIDS" "$LOGS" "$DEV_DIR/tansu"
scripts/install-tools.sh tansu
scripts/ensure-postgres.sh
scripts/build-services.sh

export RUST_LOG=${RUST_LOG:-info}
export DATABASE_URL=${DATABASE_URL:-postgres://callchain:callchain@127.0.0.1:5432/callchain}
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export USER_LISTEN_ADDR=127.0.0.1:$USER_PORT
export API_LISTEN_ADDR=127.0.0.1:$API_PORT
export CONSUMER_HEALTH_ADDR=127.0.0.1:$CONSUMER_PORT
export USER_SERVICE_URL=http://127.0.0.1:$USER_PORT
export JWT_SECRET=${JWT_SECRET:-callchain-dev-only-secret-change-me-0123456789}
export ADMIN_EMAIL=${ADMIN_EMAIL:-admin@callchain.dev}
export ADMIN_PASSWORD=${ADMIN_PASSWORD:-admin-password-dev}

trap 'echo; stop_all; exit 130' INT TERM

url=tcp://127.0.0.1:$KAFKA_PORT
# tansu exports its own spans when OTEL_EXPORTER_OTLP_ENDPOINT is set, too.
start tansu tansu broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine "sqlite://$DEV_DIR/tansu/tansu.db"
wait_for tansu bash -c "exec 3<>/dev/tcp/127.0.0.1/$KAFKA_PORT"
for topic in user-events:3 user-events.dlq:1; do
    # Already there after a restart: tansu keeps them in SQLite.
    tansu topic create "${topic%%:*}" --partitions "${topic##*:}" --broker "$url" >/dev/null 2>&1 || true
done

OTEL_SERVICE_NAME=user start user "$BIN/user"
wait_for user "$BIN/user" --healthcheck
OTEL_SERVICE_NAME=consumer start consumer "$BIN/consumer"
wait_for consumer "$BIN/consumer" --healthcheck
OTEL_SERVICE_NAME=api start api "$BIN/api"
wait_for api "$BIN/api" --healthcheck

api=http://127.0.0.1:$API_PORT
cat <<TRY

callchain is running (logs: $LOGS/{api,user,consumer,tansu}.log)
  API         $api   (OpenAPI: $api/openapi.json)
  user        grpc://127.0.0.1:$USER_PORT
  consumer    http://127.0.0.1:$CONSUMER_PORT/readyz
  Kafka       127.0.0.1:$KAFKA_PORT (tansu)
  admin       $ADMIN_EMAIL / $ADMIN_PASSWORD

Try:
  curl -si $api/v1/users -H 'content-type: application/json' \\
    -d '{"email":"ada@example.com","name":"Ada Lovelace","password":"correct horse battery staple"}'
  TOKEN=\$(curl -s $api/v1/auth/login -H 'content-type: application/json' \\
    -d '{"email":"ada@example.com","password":"correct horse battery staple"}' | sed 's/.*"access_token":"\\([^"]*\\)".*/\\1/')
  curl -s $api/v1/users/<id from the first answer> -H "authorization: Bearer \$TOKEN"
  grep <trace id from the traceparent header> $LOGS/*.log

TRY

if [ -n "${DEV_DETACH:-}" ]; then
    echo "Detached: stop with make dev-down"
    exit 0
fi
echo "Ctrl-C stops everything."
while :; do
    for name in tansu user consumer api; do
        if ! kill -0 "$(cat "$PIDS/$name")" 2>/dev/null; then
            echo "$name stopped; see $LOGS/$name.log" >&2
            stop_all
            exit 1
        fi
    done
    sleep 1
done
