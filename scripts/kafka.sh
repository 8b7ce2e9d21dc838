#!/usr/bin/env bash
# One Apache Kafka node (KRaft: broker and controller in one JVM) on 127.0.0.1,
# for `make dev`, from the jars scripts/install-kafka.sh puts in $KAFKA_HOME:
# alone, or one of the nodes of a cluster (`KAFKA_NODES=3 make dev`). The same
# version and settings as docker-compose.yml's kafka service.
#
#   scripts/kafka.sh [start [--override KEY=VALUE]...]
#                                    run the node in the foreground (exec java);
#                                    SIGTERM (Ctrl-C) shuts it down cleanly. Each
#                                    --override sets a broker config for this run
#   scripts/kafka.sh ready [BOOTSTRAP]
#                                    exit 0 when the broker answers requests, 1
#                                    when not (yet): one quick try, for a wait loop
#   scripts/kafka.sh create-topic [BOOTSTRAP] NAME PARTITIONS [REPLICAS]
#                                    create a topic unless it exists, like
#                                    kafka-topics.sh --if-not-exists: REPLICAS
#                                    (default $KAFKA_REPLICATION) 1, or 3 with
#                                    min.insync.replicas=2
#   scripts/kafka.sh topics [BOOTSTRAP] [REPLICAS]
#                                    the topics docker-compose.yml's kafka-init
#                                    creates: user-events (12), user-events.dlq (1)
#   scripts/kafka.sh controller [BOOTSTRAP]
#                                    print the node id of the active controller
#                                    (the KRaft quorum's leader)
#   scripts/kafka.sh under-replicated [BOOTSTRAP]
#                                    print how many partitions have fewer in-sync
#                                    replicas than replicas (0 on a healthy cluster)
#   scripts/kafka.sh tool CLASS [ARGS...]
#                                    any Kafka tool, e.g. org.apache.kafka.tools.TopicCommand
#                                    (kafka-topics.sh), org.apache.kafka.tools.ConsoleProducer,
#                                    org.apache.kafka.tools.consumer.ConsoleConsumer
#
# BOOTSTRAP is HOST:PORT[,HOST:PORT...], by default 127.0.0.1:$KAFKA_PORT. The
# environment:
#   KAFKA_DATA_DIR          required by start: the node's data (data/), its
#                           cluster id (cluster.id) and the server.properties
#                           written at each start; formatted on first start only
#   KAFKA_PORT              the client listener (default 9092)
#   KAFKA_CONTROLLER_PORT   the controller listener (default 9093)
#   KAFKA_NODE_ID           this node's id (default 1)
#   KAFKA_CONTROLLER_QUORUM_VOTERS
#                           the cluster's controllers, ID@HOST:PORT,... (default
#                           1@127.0.0.1:$KAFKA_CONTROLLER_PORT: a cluster of one),
#                           e.g. 1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097
#   KAFKA_CLUSTER_ID        the cluster id the node is formatted with; every node
#                           of a cluster needs the same (default: a random id,
#                           kept in KAFKA_DATA_DIR/cluster.id)
#   KAFKA_REPLICATION       1 or 3: the replicas of the topics made here and of
#                           Kafka's own (offsets, transactions); with 3, at least
#                           2 in sync for a write (min.insync.replicas). Default:
#                           3 when the voters are 3 or more, else 1
#   KAFKA_HEAP_OPTS         default -Xms64m -Xmx256m
#   KAFKA_JVM_OPTS          the other JVM flags; the default keeps the JVM's own
#                           memory small (see the comment on it below)
#   KAFKA_OPTS              more JVM flags for the node, added after those
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_NODE_ID=${KAFKA_NODE_ID:-1}
KAFKA_CONTROLLER_QUORUM_VOTERS=${KAFKA_CONTROLLER_QUORUM_VOTERS:-1@127.0.0.1:$KAFKA_CONTROLLER_PORT}
KAFKA_CLUSTER_ID=${KAFKA_CLUSTER_ID:-}
if [ -z "${KAFKA_REPLICATION:-}" ]; then
    voters=${KAFKA_CONTROLLER_QUORUM_VOTERS//[^,]/}
    if [ ${#voters} -ge 2 ]; then KAFKA_REPLICATION=3; else KAFKA_REPLICATION=1; fi
fi
case $KAFKA_REPLICATION in
    1 | 3) ;;
    *) die "KAFKA_REPLICATION must be 1 or 3, not '$KAFKA_REPLICATION'" ;;
esac
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

# listening BOOTSTRAP: whether something accepts connections at one of its
# addresses (~10 ms, where a Kafka tool needs ~0.5 s to start, and retries for
# its whole timeout).
listening() {
    local address
    for address in ${1//,/ }; do
        (exec 3<>"/dev/tcp/${address%:*}/${address##*:}") 2>/dev/null && return 0
    done
    return 1
}

# is_bootstrap ARG: whether ARG looks like HOST:PORT[,...] (the optional first argument).
is_bootstrap() { [[ $1 == *:[0-9]* ]]; }

# min_isr REPLICAS: the in-sync replicas a write needs: 2 of 3, 1 of 1.
min_isr() { if [ "$1" -ge 3 ]; then echo 2; else echo 1; fi; }

start() {
    [ -n "${KAFKA_DATA_DIR:-}" ] || die "set KAFKA_DATA_DIR to the folder for the node's data, e.g. KAFKA_DATA_DIR=.dev/kafka"
    installed
    mkdir -p "$KAFKA_DATA_DIR/data"
    local dir props cluster_id isr
    dir=$(cd "$KAFKA_DATA_DIR" && pwd)
    props=$dir/server.properties
    port_free "$KAFKA_PORT" "Kafka, KAFKA_PORT"
    port_free "$KAFKA_CONTROLLER_PORT" "the Kafka controller, KAFKA_CONTROLLER_PORT"
    [[ $KAFKA_NODE_ID =~ ^[0-9]+$ ]] || die "KAFKA_NODE_ID must be a number, not '$KAFKA_NODE_ID'"
    [[ ,$KAFKA_CONTROLLER_QUORUM_VOTERS, == *",$KAFKA_NODE_ID@"*":$KAFKA_CONTROLLER_PORT,"* ]] ||
        die "KAFKA_CONTROLLER_QUORUM_VOTERS ($KAFKA_CONTROLLER_QUORUM_VOTERS) must name this node as $KAFKA_NODE_ID@HOST:$KAFKA_CONTROLLER_PORT"
    isr=$(min_isr "$KAFKA_REPLICATION")

    # docker-compose.yml's kafka service, in server.properties form; written at
    # every start, so the ports can change between starts.
    cat >"$props" <<EOF
# Written by scripts/kafka.sh at every start: edits here are lost.
# A node that is both broker and controller: KRaft, no ZooKeeper. Alone, or
# one of the voters of a cluster.
process.roles=broker,controller
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_CONTROLLER_QUORUM_VOTERS
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data

# Replicas of Kafka's own topics and of topics made without a replication
# factor: one on a single node (it cannot replicate), three on a cluster, of
# which two must have a write before it is acknowledged (acks=all), so one
# node may die without losing an acknowledged write.
offsets.topic.replication.factor=$KAFKA_REPLICATION
transaction.state.log.replication.factor=$KAFKA_REPLICATION
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$KAFKA_REPLICATION
share.coordinator.state.topic.min.isr=$isr
default.replication.factor=$KAFKA_REPLICATION
min.insync.replicas=$isr
# A replica that fell behind never becomes leader: that would drop the writes
# it missed. A partition waits for an in-sync replica instead.
unclean.leader.election.enable=false
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
    # interrupted first start retries with the same id; the nodes of a cluster
    # are given theirs (KAFKA_CLUSTER_ID).
    if [ ! -f "$dir/data/meta.properties" ]; then
        if [ -n "$KAFKA_CLUSTER_ID" ]; then
            echo "$KAFKA_CLUSTER_ID" >"$dir/cluster.id"
        elif [ ! -s "$dir/cluster.id" ]; then
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

# create_topic BOOTSTRAP NAME PARTITIONS [REPLICAS]: kafka-topics.sh --create
# --if-not-exists, with REPLICAS replicas (default $KAFKA_REPLICATION) and the
# in-sync replicas a write needs (min_isr).
create_topic() {
    local replicas=${4:-$KAFKA_REPLICATION}
    [[ $3 =~ ^[1-9][0-9]*$ ]] || die "PARTITIONS must be a positive number, not '$3'"
    [[ $replicas == 1 || $replicas == 3 ]] || die "REPLICAS must be 1 or 3, not '$replicas'"
    installed
    listening "$1" || die "cannot create topic $2: nothing listens on $1 (is Kafka up? scripts/kafka.sh ready $1)"
    admin_config 30000
    tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" --command-config "$ADMIN_CONFIG" \
        --create --if-not-exists --topic "$2" --partitions "$3" --replication-factor "$replicas" \
        --config "min.insync.replicas=$(min_isr "$replicas")" ||
        die "could not create topic $2 on $1 (is the broker up? scripts/kafka.sh ready $1)"
}

# controller BOOTSTRAP: the node id of the KRaft quorum's leader.
controller() {
    local status leader
    installed
    listening "$1" || die "nothing listens on $1 (is Kafka up? scripts/kafka.sh ready $1)"
    admin_config 10000
    status=$(tool org.apache.kafka.tools.MetadataQuorumCommand --bootstrap-server "$1" \
        --command-config "$ADMIN_CONFIG" describe --status) ||
        die "could not describe the metadata quorum on $1"
    leader=$(awk -F: '$1 == "LeaderId" { gsub(/[ \t]/, "", $2); print $2 }' <<<"$status")
    [[ $leader =~ ^[0-9]+$ ]] || die "the metadata quorum on $1 names no leader: $status"
    echo "$leader"
}

# under_replicated BOOTSTRAP: how many partitions lack an in-sync replica.
under_replicated() {
    local partitions
    installed
    listening "$1" || die "nothing listens on $1 (is Kafka up? scripts/kafka.sh ready $1)"
    admin_config 10000
    partitions=$(tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" \
        --command-config "$ADMIN_CONFIG" --describe --under-replicated-partitions) ||
        die "could not describe the topics on $1"
    grep -c 'Partition: ' <<<"$partitions" || true
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
        if [ $# -ge 3 ] && is_bootstrap "$1"; then bootstrap=$1; shift; fi
        [ $# -eq 2 ] || [ $# -eq 3 ] ||
            die "usage: scripts/kafka.sh create-topic [BOOTSTRAP] NAME PARTITIONS [REPLICAS]"
        create_topic "$bootstrap" "$@"
        ;;
    topics)
        bootstrap=127.0.0.1:$KAFKA_PORT
        if [ $# -ge 1 ] && is_bootstrap "$1"; then bootstrap=$1; shift; fi
        [ $# -le 1 ] || die "usage: scripts/kafka.sh topics [BOOTSTRAP] [REPLICAS]"
        create_topic "$bootstrap" user-events 12 "${1:-}"
        create_topic "$bootstrap" user-events.dlq 1 "${1:-}"
        ;;
    controller)
        controller "${1:-127.0.0.1:$KAFKA_PORT}"
        ;;
    under-replicated)
        under_replicated "${1:-127.0.0.1:$KAFKA_PORT}"
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
