#!/usr/bin/env bash
# The stack's own parts, natively, as `make up` runs them in Docker: Apache
# Kafka (one KRaft node, or a cluster of three with KAFKA_NODES=3),
# VictoriaMetrics (the metrics store), Jaeger v2 and the OpenTelemetry
# Collector, at the versions in .env, on the very config files (and store
# flags) docker-compose.yml uses.
#
#   scripts/parts.sh up DIR     install what is missing, start the four and
#                               the topics, wait until each answers
#   scripts/parts.sh down DIR   stop what `up` (and `make dev`) started in DIR
#   scripts/parts.sh rss DIR    the memory (RSS) of each process started in DIR
#
# DIR holds pids/<name>, logs/<name>.log, kafka/ (the broker's data, kept
# between runs) and victoriametrics/ (the store's). KAFKA_NODES=3 runs three
# KRaft nodes (each broker and controller, all voters) formatted with one
# cluster id: kafka, kafka2, kafka3, with data in kafka/, kafka2/, kafka3/;
# node N listens 2(N-1) ports above node 1 (9092/9093, 9094/9095, 9096/9097),
# and the topics get three replicas, two of them in sync for a write.
# PARTS_WITHOUT_KAFKA=1 leaves Kafka out. Ports come from the environment; the
# defaults are `make dev`'s:
#
#   KAFKA_PORT 9092               KAFKA_CONTROLLER_PORT 9093
#   OTELCOL_GRPC_PORT 4317        OTELCOL_HTTP_PORT 4318
#   OTELCOL_HEALTH_PORT 13133     OTELCOL_METRICS_PORT 8888
#   JAEGER_QUERY_PORT 16686       JAEGER_QUERY_GRPC_PORT 16685
#   JAEGER_GRPC_PORT 14317        JAEGER_HTTP_PORT 14318
#   JAEGER_HEALTH_PORT 13134      JAEGER_METRICS_PORT 8889
#   VICTORIAMETRICS_PORT 8428     (its UI: http://127.0.0.1:8428/vmui/)
#
# PARTS_WITHOUT_KAFKA=1 starts the other three alone, beside a broker that
# runs already (tests/e2e/tests/doctor.rs stops its own parts one by one).
# PARTS_METRICS_ENDPOINT sends the collector's metrics through another OTLP
# endpoint on their way to the store (tests/e2e/tests/metrics.rs reads the
# exemplars there, which the store does not keep).
#
# The collector listens on the standard OTLP ports and forwards to Jaeger,
# whose own OTLP receiver moves aside (14317) so both fit on one host.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

# The ports above, each kept when the environment sets it.
port_defaults "" KAFKA_PORT=9092 KAFKA_CONTROLLER_PORT=9093 \
    OTELCOL_GRPC_PORT=4317 OTELCOL_HTTP_PORT=4318 OTELCOL_HEALTH_PORT=13133 OTELCOL_METRICS_PORT=8888 \
    JAEGER_QUERY_PORT=16686 JAEGER_QUERY_GRPC_PORT=16685 JAEGER_GRPC_PORT=14317 JAEGER_HTTP_PORT=14318 \
    JAEGER_HEALTH_PORT=13134 JAEGER_METRICS_PORT=8889 VICTORIAMETRICS_PORT=8428

# The store's flags, the same in docker-compose.yml: a small cache budget (it
# otherwise takes 60% of the machine's memory for caches), a week of data,
# Prometheus' names for OTLP metrics (http.server.request.duration in s ->
# http_server_request_duration_seconds_bucket, service.name -> service_name),
# and samples visible to queries after 1 s rather than 30 s.
VICTORIAMETRICS_FLAGS=(-memory.allowedBytes=96MiB -retentionPeriod=7d
    -opentelemetry.usePrometheusNaming -search.latencyOffset=1s)

# Everything `make dev` or `make test` may have started, in the order to stop
# it: services first (they drain and flush their spans and metrics), then
# the collector (it flushes to Jaeger and the store), Kafka last. The
# replicas are user2, user3... (`USER_REPLICAS=3 make dev`), consumer2...
# (`CONSUMER_REPLICAS`) and kafka2, kafka3 (`KAFKA_NODES=3`).
stop_order() {
    echo "api consumer $(numbered consumer) user $(numbered user) otelcol jaeger victoriametrics kafka $(numbered kafka)"
}

# numbered NAME: the pid files NAME2, NAME3... in order.
numbered() {
    # shellcheck disable=SC2010,SC2015 # the pid files are named by us; none at all lists none
    (cd "$PIDS" 2>/dev/null && ls -1 | grep -E "^$1[0-9]+\$" | sort -V | tr '\n' ' ' || true)
}

usage() { die "usage: scripts/parts.sh up|down|rss DIR"; }

KAFKA_NODES=${KAFKA_NODES:-1}
kafka_nodes >/dev/null
if [ "$KAFKA_NODES" = 1 ]; then export KAFKA_REPLICATION=1; else export KAFKA_REPLICATION=3; fi

[ $# -eq 2 ] || usage
command=$1
DIR=$2
PIDS=$DIR/pids
LOGS=$DIR/logs

# stop NAME...: SIGTERM to each at once, then waits for each (15 s, then
# SIGKILL). The Kafka nodes stop together: one stopped after the others
# would wait for a quorum that is gone.
stop() {
    local name pid
    for name in "$@"; do
        if running "$name"; then kill -TERM "$(cat "$PIDS/$name")" 2>/dev/null || true; fi
    done
    for name in "$@"; do
        [ -f "$PIDS/$name" ] || continue
        pid=$(cat "$PIDS/$name")
        if kill -0 "$pid" 2>/dev/null; then
            for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                echo "$name did not stop within 15 s of SIGTERM; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
            echo "stopped $name"
        fi
        rm -f "$PIDS/$name"
    done
}

down() {
    [ -d "$PIDS" ] || return 0
    local name kafka=()
    for name in $(stop_order); do
        case $name in
            kafka*) kafka+=("$name") ;;
            *) stop "$name" ;;
        esac
    done
    stop "${kafka[@]}"
}

rss() {
    local total=0 kib name
    printf '%-16s %8s\n' process RSS
    for name in $(stop_order); do
        running "$name" || continue
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$(cat "$PIDS/$name")/status")
        total=$((total + kib))
        printf '%-16s %6d MiB\n' "$name" $((kib / 1024))
    done
    printf '%-16s %6d MiB\n' total $((total / 1024))
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

# start_kafka: the KAFKA_NODES nodes, formatted (on first start) with one
# cluster id, kept in DIR/kafka/cluster.id like a single node's.
start_kafka() {
    local name port controller voters cluster_id=
    voters=$(kafka_nodes | awk '{ printf "%s%d@127.0.0.1:%s", (NR > 1 ? "," : ""), NR, $3 }')
    if [ "$KAFKA_NODES" != 1 ]; then
        [ -f "$DIR/kafka/data/meta.properties" ] && [ ! -f "$DIR/kafka2/data/meta.properties" ] &&
            die "$DIR/kafka holds a single node's data; remove $DIR/kafka to start a cluster of $KAFKA_NODES"
        [ -s "$DIR/kafka/cluster.id" ] || "$CALLCHAIN_ROOT/scripts/kafka.sh" tool kafka.tools.StorageTool random-uuid >"$DIR/kafka/cluster.id"
        cluster_id=$(cat "$DIR/kafka/cluster.id")
    elif [ -f "$DIR/kafka2/data/meta.properties" ]; then
        die "$DIR/kafka is node 1 of a cluster of three; start it with KAFKA_NODES=3, or remove $DIR/kafka* for one node"
    fi
    local i=0
    while read -r name port controller; do
        i=$((i + 1))
        mkdir -p "$DIR/$name"
        step "starting Kafka $KAFKA_VERSION node $i of $KAFKA_NODES on 127.0.0.1:$port (data in $DIR/$name)"
        KAFKA_NODE_ID=$i KAFKA_PORT=$port KAFKA_CONTROLLER_PORT=$controller KAFKA_DATA_DIR=$DIR/$name \
            KAFKA_CONTROLLER_QUORUM_VOTERS=$voters KAFKA_CLUSTER_ID=$cluster_id \
            start "$name" "$CALLCHAIN_ROOT/scripts/kafka.sh"
    done < <(kafka_nodes)
}

up() {
    down
    mkdir -p "$PIDS" "$LOGS" "$DIR/kafka" "$DIR/victoriametrics"
    "$CALLCHAIN_ROOT/scripts/install-tools.sh" kafka otelcol jaeger victoriametrics
    need curl "curl (apt-get install -y curl)"

    local kafka=${PARTS_WITHOUT_KAFKA:+no}
    local name port controller
    if [ -z "$kafka" ]; then
        while read -r name port controller; do
            port_free "$port" "Kafka ($name)"
            port_free "$controller" "Kafka's controller ($name)"
        done < <(kafka_nodes)
    fi
    port_free "$OTELCOL_GRPC_PORT" "the collector's OTLP gRPC receiver"
    port_free "$OTELCOL_HTTP_PORT" "the collector's OTLP HTTP receiver"
    port_free "$OTELCOL_HEALTH_PORT" "the collector's health check"
    port_free "$OTELCOL_METRICS_PORT" "the collector's own metrics"
    port_free "$JAEGER_QUERY_PORT" "Jaeger's query API"
    port_free "$JAEGER_QUERY_GRPC_PORT" "Jaeger's query gRPC API"
    port_free "$JAEGER_GRPC_PORT" "Jaeger's OTLP gRPC receiver"
    port_free "$JAEGER_HTTP_PORT" "Jaeger's OTLP HTTP receiver"
    port_free "$JAEGER_HEALTH_PORT" "Jaeger's health check"
    port_free "$JAEGER_METRICS_PORT" "Jaeger's own metrics"
    port_free "$VICTORIAMETRICS_PORT" "VictoriaMetrics"

    if [ -z "$kafka" ]; then start_kafka; fi

    step "starting VictoriaMetrics $VICTORIAMETRICS_VERSION on 127.0.0.1:$VICTORIAMETRICS_PORT (data in $DIR/victoriametrics)"
    start victoriametrics "$VICTORIAMETRICS_BIN" -httpListenAddr="127.0.0.1:$VICTORIAMETRICS_PORT" \
        -storageDataPath="$DIR/victoriametrics" "${VICTORIAMETRICS_FLAGS[@]}"

    step "starting Jaeger $JAEGER_VERSION (query API on 127.0.0.1:$JAEGER_QUERY_PORT)"
    JAEGER_OTLP_GRPC_ENDPOINT=127.0.0.1:$JAEGER_GRPC_PORT \
        JAEGER_OTLP_HTTP_ENDPOINT=127.0.0.1:$JAEGER_HTTP_PORT \
        JAEGER_QUERY_HTTP_ENDPOINT=127.0.0.1:$JAEGER_QUERY_PORT \
        JAEGER_QUERY_GRPC_ENDPOINT=127.0.0.1:$JAEGER_QUERY_GRPC_PORT \
        JAEGER_HEALTH_ENDPOINT=127.0.0.1:$JAEGER_HEALTH_PORT \
        JAEGER_METRICS_PORT=$JAEGER_METRICS_PORT \
        JAEGER_METRICS_STORE_URL=http://127.0.0.1:$VICTORIAMETRICS_PORT \
        start jaeger "$JAEGER_BIN" --config="$CALLCHAIN_ROOT/observability/jaeger.yaml"

    step "starting the OpenTelemetry Collector $OTELCOL_VERSION (OTLP on 127.0.0.1:$OTELCOL_GRPC_PORT)"
    OTELCOL_OTLP_GRPC_ENDPOINT=127.0.0.1:$OTELCOL_GRPC_PORT \
        OTELCOL_OTLP_HTTP_ENDPOINT=127.0.0.1:$OTELCOL_HTTP_PORT \
        OTELCOL_HEALTH_ENDPOINT=127.0.0.1:$OTELCOL_HEALTH_PORT \
        OTELCOL_METRICS_HOST=127.0.0.1 OTELCOL_METRICS_PORT=$OTELCOL_METRICS_PORT \
        OTELCOL_JAEGER_ENDPOINT=127.0.0.1:$JAEGER_GRPC_PORT \
        OTELCOL_VICTORIAMETRICS_ENDPOINT=${PARTS_METRICS_ENDPOINT:-http://127.0.0.1:$VICTORIAMETRICS_PORT/opentelemetry} \
        start otelcol "$OTELCOL_BIN" --config="$CALLCHAIN_ROOT/observability/otel-collector.yaml"

    wait_for victoriametrics 60 http_ok "http://127.0.0.1:$VICTORIAMETRICS_PORT/health"
    wait_for jaeger 60 http_ok "http://127.0.0.1:$JAEGER_QUERY_PORT/api/services"
    wait_for otelcol 60 http_ok "http://127.0.0.1:$OTELCOL_HEALTH_PORT/"
    if [ -z "$kafka" ]; then
        while read -r name port controller; do
            wait_for "$name" 120 "$CALLCHAIN_ROOT/scripts/kafka.sh" ready "127.0.0.1:$port"
        done < <(kafka_nodes)
        # The topics of docker-compose.yml's kafka-init, with the same tool: on a
        # cluster with three replicas (KAFKA_REPLICATION), two in sync for a write.
        local bootstrap
        bootstrap=$(kafka_bootstrap)
        "$CALLCHAIN_ROOT/scripts/kafka.sh" create-topic "$bootstrap" user-events 12
        "$CALLCHAIN_ROOT/scripts/kafka.sh" create-topic "$bootstrap" user-events.dlq 1
    fi
    step "${kafka:+no }Kafka ($KAFKA_NODES node(s)), VictoriaMetrics, Jaeger and the collector are up (logs in $LOGS)"
}

case $command in
up) up ;;
down) down ;;
rss) rss ;;
*) usage ;;
esac
