#!/usr/bin/env bash
# `make doctor`: where does telemetry stop? Walks the pipeline of a running
# stack hop by hop and prints one line per hop, ✓ or ✗ with the fix:
#
#   services (up, logging trace ids) --OTLP--> collector (receiving, exporting)
#       --spans--> Jaeger (a trace of each service; the Monitor tab)
#       --metrics--> VictoriaMetrics (each service's series, span metrics)
#
# The collector's own counters (accepted, refused, sent, failed spans and
# metric points, queued batches) say whether it receives and delivers; Jaeger
# and the store are asked what they hold. Exits 1 when a hop fails.
#
# The defaults are `make dev`'s ports; `make up` publishes the same ones (its
# user and consumer services have no published port, and their logs are
# `make logs`'). Each can be moved:
#
#   API_PORT 8080   USER_PORT 50051   CONSUMER_PORT 8081
#   OTELCOL_HEALTH_PORT 13133   OTELCOL_METRICS_PORT 8888
#   JAEGER_QUERY_PORT 16686     VICTORIAMETRICS_PORT 8428
#   DOCTOR_HOST 127.0.0.1       DOCTOR_LOGS .dev/logs (one <service>.log each)
#   DOCTOR_SERVICES "api user consumer"
set -uo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

port_defaults "" API_PORT=8080 USER_PORT=50051 CONSUMER_PORT=8081 \
    OTELCOL_HEALTH_PORT=13133 OTELCOL_METRICS_PORT=8888 JAEGER_QUERY_PORT=16686 VICTORIAMETRICS_PORT=8428
HOST=${DOCTOR_HOST:-127.0.0.1}
LOGS=${DOCTOR_LOGS:-$CALLCHAIN_ROOT/.dev/logs}
SERVICES=${DOCTOR_SERVICES:-api user consumer}
JAEGER=http://$HOST:$JAEGER_QUERY_PORT
STORE=http://$HOST:$VICTORIAMETRICS_PORT
need curl "curl (apt-get install -y curl)"

failed=0
ok() { printf '✓ %s\n' "$*"; }
bad() { # what fix
    printf '✗ %s — fix: %s\n' "$1" "$2"
    failed=1
}

get() { curl -fsS --max-time 3 "$@" 2>/dev/null; }
open_port() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# sum NAME [LABEL-FILTER]: the sum of a counter over the collector's own
# metrics (Prometheus text in $own), over the series whose labels contain
# LABEL-FILTER; 0 when it has no such series.
sum() {
    awk -v name="$1" -v filter="${2:-}" '
        ($1 == name || index($1, name "{") == 1) && index($1, filter) { s += $NF }
        END { printf "%d", s }' <<<"$own"
}

# query PROMQL: the store's answer (JSON) to an instant query.
query() { get "$STORE/api/v1/query" --data-urlencode "query=$1"; }

# The service_name labels of a query's series, one a line.
service_names() { grep -o '"service_name":"[^"]*"' | cut -d'"' -f4 | sort -u; }
# The services of $SERVICES not among the names on stdin (sorted), one a line.
missing_among() { comm -23 <(tr ' ' '\n' <<<"$SERVICES" | sort -u) -; }

# ---- the services -----------------------------------------------------------

log_of() { echo "$LOGS/$1.log"; }
for service in $SERVICES; do
    case $service in
    api) probe="http://$HOST:$API_PORT/healthz" ;;
    consumer) probe="http://$HOST:$CONSUMER_PORT/healthz" ;;
    user) probe="tcp $HOST:$USER_PORT" ;;
    *) probe="" ;;
    esac
    case $probe in
    http*) if get -o /dev/null "$probe"; then up=1; else up=0; fi ;;
    tcp*) if open_port "$USER_PORT"; then up=1; else up=0; fi ;;
    *) up=1 ;;
    esac
    if [ "$up" = 1 ]; then
        ok "$service: up (${probe#tcp })"
    else
        bad "$service: not answering (${probe#tcp })" \
            "start it (make dev, or make up); why it stopped is at the end of $(log_of "$service")"
    fi
done

# ---- the collector ----------------------------------------------------------

own=""
if ! get -o /dev/null "http://$HOST:$OTELCOL_HEALTH_PORT/"; then
    bad "collector: not answering (health http://$HOST:$OTELCOL_HEALTH_PORT/)" \
        "start it (make dev, or make up); the services' spans and metrics go nowhere meanwhile; see $(log_of otelcol) or make logs SERVICE=otel-collector"
elif ! own=$(get "http://$HOST:$OTELCOL_METRICS_PORT/metrics"); then
    bad "collector: up, but its own metrics do not answer (http://$HOST:$OTELCOL_METRICS_PORT/metrics)" \
        "set OTELCOL_METRICS_HOST/OTELCOL_METRICS_PORT (observability/otel-collector.yaml) to where the doctor looks"
else
    ok "collector: up (health http://$HOST:$OTELCOL_HEALTH_PORT/)"
    for signal in spans metric_points; do
        what=${signal/_/ }
        accepted=$(sum "otelcol_receiver_accepted_$signal" 'receiver="otlp"')
        refused=$(sum "otelcol_receiver_refused_$signal" 'receiver="otlp"')
        if [ "$accepted" -eq 0 ]; then
            bad "collector: has received no $what from the services" \
                "point the services' OTEL_EXPORTER_OTLP_ENDPOINT at the collector (http://$HOST:4317 with make dev) and send a request"
        elif [ "$refused" -gt 0 ]; then
            bad "collector: refused $refused $what (accepted $accepted)" \
                "its memory_limiter is at its bound: the exporters behind it are stuck (see the lines below) or the load is over its limit_mib"
        else
            ok "collector: received $accepted $what, refused 0"
        fi
    done
    for pair in "spans:otlp_grpc/jaeger:Jaeger" "metric_points:otlp_http/victoriametrics:VictoriaMetrics"; do
        IFS=: read -r signal exporter dest <<<"$pair"
        what=${signal/_/ }
        filter="exporter=\"$exporter\""
        sent=$(sum "otelcol_exporter_sent_$signal" "$filter")
        lost=$(( $(sum "otelcol_exporter_send_failed_$signal" "$filter") + $(sum "otelcol_exporter_enqueue_failed_$signal" "$filter") ))
        queued=$(sum otelcol_exporter_queue_size "$filter")
        if [ "$queued" -gt 0 ]; then
            # A batch waits only while its destination does not take it.
            sleep 1
            own=$(get "http://$HOST:$OTELCOL_METRICS_PORT/metrics") || own=""
            queued=$(sum otelcol_exporter_queue_size "$filter")
        fi
        if [ "$queued" -gt 0 ]; then
            bad "collector → $dest: $queued batches of $what waiting ($sent sent, $lost lost)" \
                "$dest does not take them: see its line below; they are retried for two minutes, then dropped"
        elif [ "$sent" -eq 0 ]; then
            bad "collector → $dest: no $what sent" \
                "check the collector's log ($(log_of otelcol)) for its $exporter exporter's errors"
        elif [ "$lost" -gt 0 ]; then
            bad "collector → $dest: $sent $what sent, $lost lost since it started" \
                "$dest was unreachable for over two minutes, or its queue filled; see $(log_of otelcol)"
        else
            ok "collector → $dest: $sent $what sent, 0 lost"
        fi
    done
fi

# ---- Jaeger -----------------------------------------------------------------

if ! held=$(get "$JAEGER/api/services"); then
    bad "Jaeger: not answering ($JAEGER/api/services)" \
        "start it (make dev, or make up); the collector keeps spans for two minutes meanwhile; see $(log_of jaeger)"
else
    missing=""
    for service in $SERVICES; do
        grep -q "\"$service\"" <<<"$held" || missing="$missing $service"
    done
    if [ -n "$missing" ]; then
        bad "Jaeger: holds no trace of${missing}" \
            "send a request through the API; if the collector received spans, its line above says where they stopped"
    else
        ok "Jaeger: holds traces of ${SERVICES// /, }"
    fi
fi

# ---- the store --------------------------------------------------------------

names=$(tr ' ' '|' <<<"$SERVICES")
if ! get -o /dev/null "$STORE/health"; then
    bad "VictoriaMetrics: not answering ($STORE/health)" \
        "start it (make dev, or make up); the collector keeps metrics for two minutes meanwhile; see $(log_of victoriametrics)"
else
    # The services' own metrics (http.server.request.duration, ...), without
    # the span metrics the collector makes for them.
    missing=$(query "count by (service_name) ({service_name=~\"$names\", __name__!~\"traces_span_metrics_.*\"})" | service_names | missing_among)
    if [ -n "$missing" ]; then
        bad "VictoriaMetrics: no series of $(paste -sd, <<<"$missing") in the last 5 minutes" \
            "those services export no metrics: check OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_METRIC_EXPORT_INTERVAL, and the collector's lines above"
    else
        ok "VictoriaMetrics: holds series of ${SERVICES// /, } ($STORE/vmui/)"
    fi
    missing=$(query "count by (service_name) (traces_span_metrics_calls_total{service_name=~\"$names\"})" | service_names | missing_among)
    if [ -n "$missing" ]; then
        bad "VictoriaMetrics: no span metrics of $(paste -sd, <<<"$missing")" \
            "the collector makes them from spans (its span_metrics connector, every 5 s): see its lines above"
    else
        ok "VictoriaMetrics: holds span metrics of ${SERVICES// /, } (traces_span_metrics_calls_total)"
    fi
fi

# ---- Jaeger's Monitor tab -----------------------------------------------------

first=${SERVICES%% *}
if monitor=$(get "$JAEGER/api/metrics/calls?service=$first"); then
    if grep -q '"metricPoints"' <<<"$monitor"; then
        ok "Jaeger Monitor: call rates of $first ($JAEGER/monitor)"
    else
        bad "Jaeger Monitor: no call rates of $first" \
            "Jaeger reads them from the store: JAEGER_METRICS_STORE_URL (observability/jaeger.yaml) must name it, and the span metrics line above must pass"
    fi
elif [ -n "${held:-}" ]; then
    bad "Jaeger Monitor: $JAEGER/api/metrics/calls fails" \
        "Jaeger cannot query the store: JAEGER_METRICS_STORE_URL (observability/jaeger.yaml) must name it ($STORE)"
fi

# ---- the logs -----------------------------------------------------------------

# A service's replicas (make dev's CONSUMER_REPLICAS=2, a second user
# service) log to <service>2.log and on: one request reaches one of them, so
# any replica's log carrying trace ids will do.
for service in $SERVICES; do
    log=$(log_of "$service")
    if [ ! -f "$log" ]; then
        # make up: the logs are Docker's.
        continue
    fi
    traced=""
    for replica in "$log" "$LOGS/$service"[0-9]*.log; do
        if [ -f "$replica" ] && grep -q '"trace_id"' "$replica"; then
            traced=$replica
            break
        fi
    done
    if [ -n "$traced" ]; then
        ok "logs: $service's carry trace ids ($traced)"
    else
        bad "logs: $service's carry no trace id ($log)" \
            "its log lines are JSON with trace_id only inside a span: send a request; RUST_LOG must keep info"
    fi
done

exit $failed
