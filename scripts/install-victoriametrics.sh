#!/usr/bin/env bash
# Builds VictoriaMetrics single-node $VICTORIAMETRICS_VERSION (root .env), the
# metrics store that `make dev` and the tests run natively, from its Go module
# through the wrapper module scripts/victoriametrics (which pins
# github.com/VictoriaMetrics/VictoriaMetrics at that version), and installs it
# at $VICTORIAMETRICS_BIN (scripts/lib.sh). Does nothing when it is there.
# The binary embeds its web UI, vmui (/vmui/).
#
#   scripts/install-victoriametrics.sh
#   $VICTORIAMETRICS_BIN -storageDataPath=DIR -httpListenAddr=127.0.0.1:8428
#
# Needs Go and the Go module proxy; under a minute, once per machine.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

MODULE_DIR=$CALLCHAIN_ROOT/scripts/victoriametrics
VM_MODULE=github.com/VictoriaMetrics/VictoriaMetrics
# github.com/VictoriaMetrics/VictoriaMetrics declares `go 1.26.6`.
GO_MIN=1.26.6

require_pinned "$MODULE_DIR/go.mod" "$VM_MODULE" "v$VICTORIAMETRICS_VERSION" "VICTORIAMETRICS_VERSION=$VICTORIAMETRICS_VERSION" \
    "run (cd scripts/victoriametrics && go get -tool $VM_MODULE/app/victoria-metrics@v$VICTORIAMETRICS_VERSION && go mod tidy), and copy the replace directives of its go.mod at that version"

if [ -x "$VICTORIAMETRICS_BIN" ]; then
    echo "victoriametrics $VICTORIAMETRICS_VERSION: installed at $VICTORIAMETRICS_BIN"
    exit 0
fi

need_go "$GO_MIN" "VictoriaMetrics $VICTORIAMETRICS_VERSION"

build_dir "victoriametrics-$VICTORIAMETRICS_VERSION"
work=$BUILD_DIR
step "building VictoriaMetrics $VICTORIAMETRICS_VERSION (under a minute, once per machine)"
start=$SECONDS
cd "$MODULE_DIR"
# As its own Makefile stamps it (pure Go, as its `-pure` builds), less the
# commit (the module proxy does not give it) and the debug symbols.
CGO_ENABLED=0 go build -mod=readonly -trimpath \
    -ldflags "-s -w -X '$VM_MODULE/lib/buildinfo.Version=victoria-metrics-v$VICTORIAMETRICS_VERSION'" \
    -o "$work/victoria-metrics" "$VM_MODULE/app/victoria-metrics"
have=$("$work/victoria-metrics" -version 2>/dev/null || true)
[ "$have" = "victoria-metrics-v$VICTORIAMETRICS_VERSION" ] ||
    die "the victoria-metrics just built reports version '$have', not victoria-metrics-v$VICTORIAMETRICS_VERSION"

mkdir -p "$(dirname "$VICTORIAMETRICS_BIN")"
mv -f "$work/victoria-metrics" "$VICTORIAMETRICS_BIN"
step "victoriametrics $VICTORIAMETRICS_VERSION: built in $((SECONDS - start))s, installed at $VICTORIAMETRICS_BIN"
