#!/usr/bin/env bash
# `make dev`: the whole system on this machine, without Docker, on the same
# programs and config files as `make up`.
#
#   scripts/dev.sh        install what is missing (once per machine), build,
#                         start Postgres, Kafka, VictoriaMetrics, Jaeger, the
#                         collector and the three services, print what to try, and stay until
#                         Ctrl-C (which stops all)
#   scripts/dev.sh down   stop what a detached run started (`make dev-down`)
#
# Each process writes its log to .dev/logs/<name>.log (the services' are
# JSON lines). Kafka keeps its data in .dev/kafka, so events survive a
# restart. The services export their spans and metrics to the collector,
# which forwards the spans to Jaeger and the metrics (and RED metrics made
# from the spans) to VictoriaMetrics; OTEL_EXPORTER_OTLP_ENDPOINT sends them
# elsewhere instead.
# DEV_DETACH=1 returns once everything is up. USER_REPLICAS=2 starts two user
# services (user, user2) on consecutive ports from USER_PORT and gives the API
# both, to watch it balance over them and drop one that is killed
# (`kill $(cat .dev/pids/user2)`). CONSUMER_REPLICAS=3 starts three consumers
# (consumer, consumer2, consumer3) in one group, health checks on consecutive
# ports from CONSUMER_PORT, static member ids consumer-1, consumer-2, ...; they
# share user-events' 12 partitions (a thirteenth would idle). KAFKA_NODES=3
# runs Kafka as a cluster of three nodes (see scripts/parts.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DEV_DIR=.dev
PIDS="$DEV_DIR/pids"
LOGS="$DEV_DIR/logs"
export KAFKA_PORT=${KAFKA_PORT:-9092}
export KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
export KAFKA_NODES=${KAFKA_NODES:-1}
export OTELCOL_GRPC_PORT=${OTELCOL_GRPC_PORT:-4317}
export OTELCOL_HEALTH_PORT=${OTELCOL_HEALTH_PORT:-13133}
export JAEGER_QUERY_PORT=${JAEGER_QUERY_PORT:-16686}
export VICTORIAMETRICS_PORT=${VICTORIAMETRICS_PORT:-8428}
API_PORT=${API_PORT:-8080}
USER_PORT=${USER_PORT:-50051}
USER_REPLICAS=${USER_REPLICAS:-1}
CONSUMER_PORT=${CONSUMER_PORT:-8081}
CONSUMER_REPLICAS=${CONSUMER_REPLICAS:-1}
BIN=${DEV_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
# How long each service may take to answer its health check.
WAIT_SECONDS=30

stop_all() { scripts/parts.sh down "$DEV_DIR"; }

if [ "${1:-}" = "down" ]; then
    stop_all
    exit 0
fi

case $USER_REPLICAS in
    '' | *[!0-9]* | 0) die "USER_REPLICAS must be a whole number of at least 1, not '$USER_REPLICAS'" ;;
esac
case $CONSUMER_REPLICAS in
    '' | *[!0-9]* | 0) die "CONSUMER_REPLICAS must be a whole number of at least 1, not '$CONSUMER_REPLICAS'" ;;
esac
# The replicas' names (user, user2, ...), ports and URLs, in order.
USER_NAMES=() USER_PORTS=() USER_URLS=()
for i in $(seq 1 "$USER_REPLICAS"); do
    if [ "$i" = 1 ]; then USER_NAMES+=(user); else USER_NAMES+=("user$i"); fi
    USER_PORTS+=($((USER_PORT + i - 1)))
    USER_URLS+=("http://127.0.0.1:$((USER_PORT + i - 1))")
done
# The consumers' names (consumer, consumer2, ...) and health ports.
CONSUMER_NAMES=() CONSUMER_PORTS=()
for i in $(seq 1 "$CONSUMER_REPLICAS"); do
    if [ "$i" = 1 ]; then CONSUMER_NAMES+=(consumer); else CONSUMER_NAMES+=("consumer$i"); fi
    CONSUMER_PORTS+=($((CONSUMER_PORT + i - 1)))
done

stop_all
for port in "$API_PORT" "${USER_PORTS[@]}" "${CONSUMER_PORTS[@]}"; do port_free "$port" "a callchain service"; done
scripts/install-tools.sh postgres kafka otelcol jaeger victoriametrics
scripts/ensure-postgres.sh
step "building the services (release)"
scripts/build-services.sh

trap 'echo; stop_all; exit 130' INT TERM
scripts/parts.sh up "$DEV_DIR"

export RUST_LOG=${RUST_LOG:-info}
export OTEL_EXPORTER_OTLP_ENDPOINT=${OTEL_EXPORTER_OTLP_ENDPOINT:-http://127.0.0.1:$OTELCOL_GRPC_PORT}
export DATABASE_URL=${DATABASE_URL:-postgres://callchain:callchain@127.0.0.1:5432/callchain}
KAFKA_BROKERS=$(kafka_bootstrap)
export KAFKA_BROKERS
# Each consumer's static member id ends in its index: consumer-1, consumer-2...
CONSUMER_INSTANCE_PREFIX=${KAFKA_GROUP_INSTANCE_ID:-consumer}
export API_LISTEN_ADDR=127.0.0.1:$API_PORT
USER_SERVICE_URL=$(IFS=,; echo "${USER_URLS[*]}")
export USER_SERVICE_URL
export JWT_SECRET=${JWT_SECRET:-callchain-dev-only-secret-change-me-0123456789}
export ADMIN_EMAIL=${ADMIN_EMAIL:-admin@callchain.dev}
export ADMIN_PASSWORD=${ADMIN_PASSWORD:-admin-password-dev}
export SHUTDOWN_TIMEOUT_SECONDS=${SHUTDOWN_TIMEOUT_SECONDS:-10}
# Chaos knobs (README, Configuration), off unless set in the calling shell.
export FAULT_LATENCY_MS=${FAULT_LATENCY_MS:-}
export FAULT_ERROR_RATE=${FAULT_ERROR_RATE:-}
export FAULT_PROCESS_DELAY_MS=${FAULT_PROCESS_DELAY_MS:-}

step "starting the services (spans to $OTEL_EXPORTER_OTLP_ENDPOINT)"
for i in "${!USER_NAMES[@]}"; do
    export USER_LISTEN_ADDR=127.0.0.1:${USER_PORTS[$i]}
    OTEL_SERVICE_NAME=user start "${USER_NAMES[$i]}" "$BIN/user"
    wait_for "${USER_NAMES[$i]}" "$WAIT_SECONDS" "$BIN/user" --healthcheck
done
for i in "${!CONSUMER_NAMES[@]}"; do
    export CONSUMER_HEALTH_ADDR=127.0.0.1:${CONSUMER_PORTS[$i]}
    export KAFKA_GROUP_INSTANCE_ID=$CONSUMER_INSTANCE_PREFIX-$((i + 1))
    OTEL_SERVICE_NAME=consumer start "${CONSUMER_NAMES[$i]}" "$BIN/consumer"
    wait_for "${CONSUMER_NAMES[$i]}" "$WAIT_SECONDS" "$BIN/consumer" --healthcheck
done
OTEL_SERVICE_NAME=api start api "$BIN/api"
wait_for api "$WAIT_SECONDS" "$BIN/api" --healthcheck

api=http://127.0.0.1:$API_PORT
jaeger=http://127.0.0.1:$JAEGER_QUERY_PORT
metrics=http://127.0.0.1:$VICTORIAMETRICS_PORT
cat <<TRY

callchain is running (logs: $LOGS/*.log)
  API         $api   (OpenAPI: $api/openapi.json)
  Jaeger      $jaeger/api/traces/<trace id>   (its query API; the UI comes with make up)
  metrics     $metrics/vmui/   (VictoriaMetrics' UI; PromQL on $metrics/api/v1/query)
  collector   OTLP gRPC http://127.0.0.1:$OTELCOL_GRPC_PORT, health http://127.0.0.1:$OTELCOL_HEALTH_PORT/
  Kafka       $KAFKA_BROKERS (Apache Kafka $KAFKA_VERSION, $KAFKA_NODES node(s))
  user        $(printf 'grpc://127.0.0.1:%s ' "${USER_PORTS[@]}")
  consumer    $(printf 'http://127.0.0.1:%s/readyz ' "${CONSUMER_PORTS[@]}")
  admin       $ADMIN_EMAIL / $ADMIN_PASSWORD

Memory of each process:
$(scripts/parts.sh rss "$DEV_DIR")

Try:
  curl -si $api/v1/users -H 'content-type: application/json' \\
    -d '{"email":"ada@example.com","name":"Ada Lovelace","password":"correct horse battery staple"}'
  curl -s $jaeger/api/traces/<trace id from the traceparent header>
  grep <trace id> $LOGS/*.log
  open $metrics/vmui/?#/?g0.expr=sum(rate(http_server_request_duration_seconds_count[1m]))
  make doctor     (where telemetry stops, hop by hop)

TRY

if [ -n "${DEV_DETACH:-}" ]; then
    echo "Detached: stop with make dev-down"
    exit 0
fi
echo "Ctrl-C stops everything."
while :; do
    # The other replicas (and Kafka nodes of a cluster) may be stopped, to
    # watch the others carry on.
    watched="victoriametrics jaeger otelcol user consumer api"
    if [ "$KAFKA_NODES" = 1 ]; then watched="kafka $watched"; fi
    for name in $watched; do
        if ! running "$name"; then
            echo "$name stopped; see $LOGS/$name.log" >&2
            stop_all
            exit 1
        fi
    done
    sleep 1
done
