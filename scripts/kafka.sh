#!/usr/bin/env bash
# One Apache Kafka node (KRaft: broker and controller in one JVM) on 127.0.0.1,
# for `make dev`, from the jars scripts/install-kafka.sh puts in $KAFKA_HOME.
# The same version and settings as docker-compose.yml's kafka service.
#
#   scripts/kafka.sh [start [--override KEY=VALUE]...]
#                                    run the node in the foreground (exec java);
#                                    SIGTERM (Ctrl-C) shuts it down cleanly. Each
#                                    --override sets a broker config for this run
#   scripts/kafka.sh ready [BOOTSTRAP]
#                                    exit 0 when the broker answers requests, 1
#                                    when not (yet): one quick try, for a wait loop
#   scripts/kafka.sh create-topic [BOOTSTRAP] NAME PARTITIONS
#                                    create a topic (replication factor 1) unless
#                                    it exists, like kafka-topics.sh --if-not-exists
#   scripts/kafka.sh topics [BOOTSTRAP]
#                                    the topics docker-compose.yml's kafka-init
#                                    creates: user-events (3), user-events.dlq (1)
#   scripts/kafka.sh tool CLASS [ARGS...]
#                                    any Kafka tool, e.g. org.apache.kafka.tools.TopicCommand
#                                    (kafka-topics.sh), org.apache.kafka.tools.ConsoleProducer,
#                                    org.apache.kafka.tools.consumer.ConsoleConsumer
#
# BOOTSTRAP is one HOST:PORT, by default 127.0.0.1:$KAFKA_PORT. The environment:
#   KAFKA_DATA_DIR          required by start: the node's data (data/), its
#                           cluster id (cluster.id) and the server.properties
#                           written at each start; formatted on first start only
#   KAFKA_PORT              the client listener (default 9092)
#   KAFKA_CONTROLLER_PORT   the controller listener (default 9093)
#   KAFKA_HEAP_OPTS         default -Xms64m -Xmx256m
#   KAFKA_JVM_OPTS          the other JVM flags; the default keeps the JVM's own
#                           memory small (see the comment on it below)
#   KAFKA_OPTS              more JVM flags for the node, added after those
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
# The node idles at ~40 MB of heap; the heap grows, up to 256 MB, with load.
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms64m -Xmx256m}
# Besides the heap, a JVM's memory is class metadata, JIT-compiled code, thread
# stacks, direct buffers and malloc arenas; these flags keep them small. RSS
# measured with the defaults: ~170 MB idle, ~175 MB after 100k messages, ~190 MB
# after 1M; with C2 ~195 MB idle, with G1 ~210 MB, with -Xms256m ~240 MB.
#   -XX:TieredStopAtLevel=1   the quick compiler only: no C2 compiler threads and
#                             arenas, less code (~25 MB less RSS), a faster start,
#                             plenty of throughput for development
#   -XX:+UseSerialGC          no GC threads, no G1 remembered sets
#   the others                ceilings: metadata, code cache, thread stacks, NIO
#                             buffers (direct, and the per-thread cache of them)
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:--XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:MaxMetaspaceSize=128m -XX:ReservedCodeCacheSize=48m -Xss512k -XX:MaxDirectMemorySize=64m -Djdk.nio.maxCachedBufferSize=262144 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
KAFKA_OPTS=${KAFKA_OPTS:-}
LOG4J_CONFIG=$CALLCHAIN_ROOT/scripts/kafka/log4j2.properties
# Few malloc arenas: a guard against glibc's default (8 per core) letting the
# node's ~100 threads spread native memory over many arenas under load.
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}

installed() {
    need java "openjdk-17-jre-headless"
    [ -f "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" ] ||
        die "Kafka $KAFKA_VERSION is not installed in $KAFKA_HOME; run scripts/install-kafka.sh"
}

# tool CLASS [ARGS...]: a short-lived Kafka tool. A small heap and the quick
# (C1) compiler start it fastest; its own log, warnings only, goes to stderr.
tool() {
    java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
        -Dcallchain.kafka.level=WARN -Dcallchain.kafka.target=SYSTEM_ERR \
        -cp "$KAFKA_HOME/libs/*" "$@"
}

# admin_config TIMEOUT_MS: writes $ADMIN_CONFIG, a client config file (the
# tools' --command-config) whose requests give up after TIMEOUT_MS instead of
# the default minute. Removed when the script exits.
ADMIN_CONFIG=
admin_config() {
    if [ -z "$ADMIN_CONFIG" ]; then
        ADMIN_CONFIG=$(mktemp "${TMPDIR:-/tmp}/callchain-kafka-admin.XXXXXX")
        trap 'rm -f "$ADMIN_CONFIG"' EXIT
    fi
    printf '%s\n' \
        "request.timeout.ms=$1" \
        "default.api.timeout.ms=$1" \
        "socket.connection.setup.timeout.ms=1000" \
        "socket.connection.setup.timeout.max.ms=1000" >"$ADMIN_CONFIG"
}

# listening BOOTSTRAP: whether something accepts connections there (~10 ms,
# where a Kafka tool needs ~0.5 s to start, and retries for its whole timeout).
listening() {
    (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null
}

# is_bootstrap ARG: whether ARG looks like HOST:PORT (the optional first argument).
is_bootstrap() { [[ $1 == *:[0-9]* ]]; }

start() {
    [ -n "${KAFKA_DATA_DIR:-}" ] || die "set KAFKA_DATA_DIR to the folder for the node's data, e.g. KAFKA_DATA_DIR=.dev/kafka"
    installed
    mkdir -p "$KAFKA_DATA_DIR/data"
    local dir props cluster_id
    dir=$(cd "$KAFKA_DATA_DIR" && pwd)
    props=$dir/server.properties
    port_free "$KAFKA_PORT" "Kafka, KAFKA_PORT"
    port_free "$KAFKA_CONTROLLER_PORT" "the Kafka controller, KAFKA_CONTROLLER_PORT"

    # docker-compose.yml's kafka service, in server.properties form; written at
    # every start, so the ports can change between starts.
    cat >"$props" <<EOF
# Written by scripts/kafka.sh at every start: edits here are lost.
# One node that is both broker and controller: KRaft, no ZooKeeper.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data

# A single broker cannot replicate, so internal topics get one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Topics come from \`scripts/kafka.sh topics\`: a misspelled topic name must
# fail loudly, not quietly create a new topic.
auto.create.topics.enable=false
# Let a consumer group start at once instead of waiting for members.
group.initial.rebalance.delay.ms=0

# Not in docker-compose.yml, for memory only: the log cleaner (which compacts
# __consumer_offsets) would otherwise fill a 128 MiB buffer on the heap at
# start (measured: +120 MB RSS). 8 MiB still holds ~300k keys per cleaning.
log.cleaner.dedupe.buffer.size=8388608
EOF

    # Format the storage once: a node starts only on a formatted log dir, and
    # formatting again would fail. The cluster id is kept beside it, so an
    # interrupted first start retries with the same id.
    if [ ! -f "$dir/data/meta.properties" ]; then
        if [ ! -s "$dir/cluster.id" ]; then
            cluster_id=$(tool kafka.tools.StorageTool random-uuid)
            echo "$cluster_id" >"$dir/cluster.id"
        fi
        cluster_id=$(cat "$dir/cluster.id")
        step "formatting $dir/data for a new Kafka cluster $cluster_id"
        tool kafka.tools.StorageTool format --cluster-id "$cluster_id" --config "$props" >/dev/null ||
            die "could not format $dir/data (see above)"
    fi

    # shellcheck disable=SC2086 # the *_OPTS are lists of flags
    exec java $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS \
        -Dlog4j2.configurationFile="$LOG4J_CONFIG" \
        $KAFKA_OPTS -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$props" "$@"
}

# ready [BOOTSTRAP]: one quick try at an API-versions request, the broker's
# cheapest (compose's healthcheck: kafka-broker-api-versions.sh).
ready() {
    local bootstrap=${1:-127.0.0.1:$KAFKA_PORT}
    installed
    listening "$bootstrap" || return 1
    admin_config 3000
    tool org.apache.kafka.tools.BrokerApiVersionsCommand \
        --bootstrap-server "$bootstrap" --command-config "$ADMIN_CONFIG" >/dev/null 2>&1
}

# create_topic BOOTSTRAP NAME PARTITIONS: kafka-topics.sh --create --if-not-exists.
create_topic() {
    [[ $3 =~ ^[1-9][0-9]*$ ]] || die "PARTITIONS must be a positive number, not '$3'"
    installed
    listening "$1" || die "cannot create topic $2: nothing listens on $1 (is Kafka up? scripts/kafka.sh ready $1)"
    admin_config 30000
    tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" --command-config "$ADMIN_CONFIG" \
        --create --if-not-exists --topic "$2" --partitions "$3" --replication-factor 1 ||
        die "could not create topic $2 on $1 (is the broker up? scripts/kafka.sh ready $1)"
}

cmd=${1:-start}
if [ $# -gt 0 ]; then shift; fi
case $cmd in
    start)
        start "$@"
        ;;
    ready)
        ready "$@"
        ;;
    create-topic)
        bootstrap=127.0.0.1:$KAFKA_PORT
        if [ $# -eq 3 ] && is_bootstrap "$1"; then bootstrap=$1; shift; fi
        [ $# -eq 2 ] || die "usage: scripts/kafka.sh create-topic [BOOTSTRAP] NAME PARTITIONS"
        create_topic "$bootstrap" "$1" "$2"
        ;;
    topics)
        bootstrap=${1:-127.0.0.1:$KAFKA_PORT}
        create_topic "$bootstrap" user-events 3
        create_topic "$bootstrap" user-events.dlq 1
        ;;
    tool)
        [ $# -ge 1 ] || die "usage: scripts/kafka.sh tool CLASS [ARGS...]"
        installed
        tool "$@"
        ;;
    -h | --help | help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$cmd'; see scripts/kafka.sh --help"
        ;;
esac
