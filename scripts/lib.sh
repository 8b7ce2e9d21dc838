# shellcheck shell=bash
# Shared by the scripts in this folder: `source "$(dirname "$0")/lib.sh"`.
#
# Reads the versions from the root .env, and says where the stack's tools are
# installed: one versioned folder per tool under $CALLCHAIN_TOOLS (default
# $HOME/.callchain/tools), so every clone on the machine, and CI, reuse them.

CALLCHAIN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
set -a
# shellcheck source=../.env
. "$CALLCHAIN_ROOT/.env"
set +a

CALLCHAIN_TOOLS=${CALLCHAIN_TOOLS:-$HOME/.callchain/tools}
# shellcheck disable=SC2034 # read by the scripts that source this file
{
KAFKA_HOME=$CALLCHAIN_TOOLS/kafka-$KAFKA_VERSION
# The collector's folder is named by its builder manifest's hash too: a
# manifest with other components is another build, kept beside the first.
OTELCOL_MANIFEST_HASH=$(sha256sum "$CALLCHAIN_ROOT/observability/otelcol-builder.yaml" | cut -c 1-12)
OTELCOL_BIN=$CALLCHAIN_TOOLS/otelcol-$OTELCOL_VERSION-$OTELCOL_MANIFEST_HASH/otelcol-callchain
JAEGER_BIN=$CALLCHAIN_TOOLS/jaeger-$JAEGER_VERSION/jaeger
VICTORIAMETRICS_BIN=$CALLCHAIN_TOOLS/victoriametrics-$VICTORIAMETRICS_VERSION/victoria-metrics
SCHEMATHESIS_HOME=$CALLCHAIN_TOOLS/schemathesis-$SCHEMATHESIS_VERSION
HELM_BIN=$CALLCHAIN_TOOLS/helm-$HELM_VERSION/helm
KUBERNETES_VALIDATE_HOME=$CALLCHAIN_TOOLS/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
ETCD_BIN=$CALLCHAIN_TOOLS/etcd-$ETCD_VERSION/etcd
KUBERNETES_HOME=$CALLCHAIN_TOOLS/kubernetes-$KUBERNETES_VERSION
KUBE_APISERVER_BIN=$KUBERNETES_HOME/kube-apiserver
KUBECTL_BIN=$KUBERNETES_HOME/kubectl
}

# A progress line, on stderr so it shows even when stdout is captured.
step() { printf '==> %s\n' "$*" >&2; }

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# need COMMAND "what to install": fail with the package to install when missing.
need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is not installed; install $2"
}

# need_go MIN WHAT: fail unless `go` is installed and at least version MIN,
# naming WHAT needs it.
need_go() {
    local version
    need go "golang (Go $1 or later: apt-get install -y golang, or from go.dev)"
    version=$(go env GOVERSION)
    version=${version#go}
    if [ "$(printf '%s\n' "$1" "$version" | sort -V | head -n 1)" != "$1" ]; then
        die "$2 needs Go $1 or later, and \`go\` is $version; install a newer Go from go.dev (or set GOTOOLCHAIN=auto to let go fetch it)"
    fi
}

# build_dir NAME: a fresh folder beside the installed tools to build NAME in,
# removed on exit; the install ends with a rename on one file system, so an
# interrupted build never leaves a half-built tool in place.
build_dir() {
    mkdir -p "$CALLCHAIN_TOOLS"
    BUILD_DIR=$(mktemp -d "$CALLCHAIN_TOOLS/.$1.build.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the folder of this build
    trap "rm -rf '$BUILD_DIR'" EXIT
}

# port_free PORT NAME: fail, naming what wanted it, when something listens there.
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        die "port $1 ($2) is already taken on 127.0.0.1; stop what listens there (ss -ltnp 'sport = :$1') or choose another port"
    fi
}

# The processes a script starts and waits for. The caller sets PIDS (a folder
# of <name> files, each holding a pid) and LOGS (a folder of <name>.log).

# running NAME: whether its recorded process is alive.
running() {
    [ -f "$PIDS/$1" ] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null
}

# start NAME COMMAND...: in the background, its output appended to its log.
start() {
    local name=$1
    shift
    "$@" >>"$LOGS/$name.log" 2>&1 &
    echo $! >"$PIDS/$name"
}

# wait_for NAME SECONDS PROBE...: until PROBE succeeds; fails, with the end
# of its log, when NAME exits first or SECONDS pass.
wait_for() {
    local name=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ! running "$name"; then
            echo "$name exited; the end of $LOGS/$name.log:" >&2
            tail -n 30 "$LOGS/$name.log" >&2
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "$name did not answer within $seconds s; see $LOGS/$name.log" >&2
            return 1
        fi
        sleep 0.2
    done
}

# port_defaults PREFIX NAME=PORT...: exports each NAME as the value of
# PREFIX+NAME when that is set, else as PORT. `scripts/parts.sh` keeps the
# caller's own (PREFIX empty); `scripts/test-parts.sh` reads TEST_<NAME>, so
# the test parts never take `make dev`'s ports by accident.
port_defaults() {
    local prefix=$1 setting name override
    shift
    for setting in "$@"; do
        name=${setting%%=*}
        override=$prefix$name
        export "$name=${!override:-${setting#*=}}"
    done
}

# require_pinned GO_MOD MODULE VERSION SETTING FIX: fail unless the wrapper
# module GO_MOD requires MODULE at VERSION, naming the .env SETTING (as
# `NAME=value`) and how to FIX it, so a tool is never built at a version
# .env does not name.
require_pinned() {
    local pinned
    pinned=$(awk -v m="$2" '$1 == m { print $2; exit }' "$1")
    [ "$pinned" = "$3" ] ||
        die "$4 in .env, but $1 requires $2 '${pinned:-nothing}'; $5"
}

# pip_tool NAME VERSION HOME: installs the PyPI package NAME==VERSION into its
# own virtual environment at HOME, once; a marker written last makes an
# interrupted install start again rather than be half used.
pip_tool() {
    local name=$1 version=$2 home=$3
    if [ -f "$home/.installed" ]; then
        echo "$name $version: installed at $home"
        return 0
    fi
    need python3 "python3 and python3-venv (Debian)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "$name $version needs Python 3.10 or newer; $(command -v python3) is $(python3 --version 2>&1)"
    step "installing $name $version from PyPI into $home (once per machine)"
    rm -rf "$home"
    python3 -m venv "$home" || die "python3 cannot make a virtual environment; install python3-venv (Debian)"
    "$home/bin/pip" install --quiet --disable-pip-version-check "$name==$version"
    touch "$home/.installed"
    echo "$name $version: installed at $home"
}

# kafka_nodes: the Kafka nodes `scripts/parts.sh` runs, one line each, NAME
# CLIENT_PORT CONTROLLER_PORT. KAFKA_NODES (1, the default, or 3) of them:
# kafka, kafka2, kafka3, node N's ports 2(N-1) above KAFKA_PORT and
# KAFKA_CONTROLLER_PORT (9092/9093, 9094/9095, 9096/9097 by default).
kafka_nodes() {
    local i
    case ${KAFKA_NODES:-1} in
        1 | 3) ;;
        *) die "KAFKA_NODES must be 1 or 3 (a KRaft quorum of three tolerates one node down), not '$KAFKA_NODES'" ;;
    esac
    for i in $(seq 1 "${KAFKA_NODES:-1}"); do
        printf '%s %s %s\n' "kafka${i#1}" $((KAFKA_PORT + 2 * (i - 1))) $((KAFKA_CONTROLLER_PORT + 2 * (i - 1)))
    done
}

# kafka_bootstrap: every node's HOST:PORT, comma-separated (KAFKA_BROKERS).
kafka_bootstrap() {
    kafka_nodes | awk '{ printf "%s127.0.0.1:%s", (NR > 1 ? "," : ""), $2 }'
}
