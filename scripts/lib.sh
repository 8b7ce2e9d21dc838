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
KAFKA_HOME=$CALLCHAIN_TOOLS/kafka-$KAFKA_VERSION
OTELCOL_BIN=$CALLCHAIN_TOOLS/otelcol-$OTELCOL_VERSION/otelcol-callchain
JAEGER_BIN=$CALLCHAIN_TOOLS/jaeger-$JAEGER_VERSION/jaeger
SCHEMATHESIS_HOME=$CALLCHAIN_TOOLS/schemathesis-$SCHEMATHESIS_VERSION

# A progress line, on stderr so it shows even when stdout is captured.
step() { printf '==> %s\n' "$*" >&2; }

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# need COMMAND "what to install": fail with the package to install when missing.
need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is not installed; install $2"
}

# port_free PORT NAME: fail, naming what wanted it, when something listens there.
port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        die "port $1 ($2) is already taken on 127.0.0.1; stop what listens there (ss -ltnp 'sport = :$1') or choose another port"
    fi
}
