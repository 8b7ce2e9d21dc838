#!/usr/bin/env bash
# The parts a test run shares, on ports of their own (so `make test` runs
# beside `make dev`): Postgres, one Kafka broker (or a cluster of three with
# KAFKA_NODES=3 or TEST_KAFKA_NODES=3, as in `KAFKA_NODES=3 make test`),
# VictoriaMetrics, Jaeger and the collector.
#
#   scripts/test-parts.sh run CMD...   start them, run CMD with the variables
#                                      below set, stop them; CMD's exit code
#                                      (`make test` and `make bench` use this)
#   scripts/test-parts.sh up           start them and print what to export,
#                                      for running `cargo test` by hand
#   scripts/test-parts.sh down         stop them
#
# What the tests read:
#   CALLCHAIN_TEST_KAFKA    the shared broker (every node, comma-separated, on a
#                           cluster); each test makes topics of its own
#   CALLCHAIN_TEST_OTLP     the collector's OTLP gRPC endpoint
#   CALLCHAIN_TEST_JAEGER   Jaeger's query API, where the collector's traces land
#   CALLCHAIN_TEST_OTELCOL_METRICS  the collector's own metrics (Prometheus
#                           text): its counts of refused, sent and failed spans
#   CALLCHAIN_TEST_METRICS  VictoriaMetrics (Prometheus' query API, vmui), where
#                           the collector's metrics land
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DIR=$CALLCHAIN_ROOT/.test
# The parts' ports (see scripts/parts.sh), away from `make dev`'s and below
# Linux's ephemeral ports (32768 and up): tests kill the broker and start it
# again on its port, and meanwhile a client retrying it can connect to
# itself from that very port, which then stays taken (TIME-WAIT) for a
# minute. Each can be moved with TEST_<NAME>, e.g. TEST_KAFKA_PORT=29192.
port_defaults TEST_ KAFKA_PORT=29092 KAFKA_CONTROLLER_PORT=29093 \
    OTELCOL_GRPC_PORT=24317 OTELCOL_HTTP_PORT=24318 OTELCOL_HEALTH_PORT=23133 OTELCOL_METRICS_PORT=28888 \
    JAEGER_QUERY_PORT=26686 JAEGER_QUERY_GRPC_PORT=26685 JAEGER_GRPC_PORT=25317 JAEGER_HTTP_PORT=25318 \
    JAEGER_HEALTH_PORT=23134 JAEGER_METRICS_PORT=28889 VICTORIAMETRICS_PORT=28428
export KAFKA_NODES=${TEST_KAFKA_NODES:-${KAFKA_NODES:-1}}

exports() {
    echo "export CALLCHAIN_TEST_KAFKA=$(kafka_bootstrap)"
    echo "export CALLCHAIN_TEST_OTLP=http://127.0.0.1:$OTELCOL_GRPC_PORT"
    echo "export CALLCHAIN_TEST_JAEGER=http://127.0.0.1:$JAEGER_QUERY_PORT"
    echo "export CALLCHAIN_TEST_OTELCOL_METRICS=http://127.0.0.1:$OTELCOL_METRICS_PORT/metrics"
    echo "export CALLCHAIN_TEST_METRICS=http://127.0.0.1:$VICTORIAMETRICS_PORT"
}

up() {
    "$CALLCHAIN_ROOT/scripts/install-tools.sh" postgres docker-compose schemathesis chromium helm kubernetes-validate
    "$CALLCHAIN_ROOT/scripts/ensure-postgres.sh"
    # A fresh broker every run: nothing of an earlier run is left to read.
    "$CALLCHAIN_ROOT/scripts/parts.sh" down "$DIR" >/dev/null
    rm -rf "$DIR"
    "$CALLCHAIN_ROOT/scripts/parts.sh" up "$DIR"
}

case ${1:-} in
run)
    shift
    [ $# -gt 0 ] || die "usage: scripts/test-parts.sh run CMD..."
    up
    trap '"$CALLCHAIN_ROOT/scripts/parts.sh" down "$DIR" >/dev/null' EXIT
    eval "$(exports)"
    status=0
    "$@" || status=$?
    exit $status
    ;;
up)
    up
    echo
    echo "The test parts are up. To run tests by hand:"
    exports
    echo "Stop them with: scripts/test-parts.sh down"
    ;;
down) "$CALLCHAIN_ROOT/scripts/parts.sh" down "$DIR" ;;
*) die "usage: scripts/test-parts.sh run CMD... | up | down" ;;
esac
