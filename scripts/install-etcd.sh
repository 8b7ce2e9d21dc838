#!/usr/bin/env bash
# Builds etcd $ETCD_VERSION (root .env) from its Go module, through the wrapper
# module scripts/etcd (which pins go.etcd.io/etcd/server/v3 at that version),
# and installs it at $ETCD_BIN (scripts/lib.sh). `make k8s-verify` stores the
# API server's objects in it. Does nothing when it is there.
#
#   scripts/install-etcd.sh
#   $ETCD_BIN --version
#
# Needs Go and the Go module proxy; about a minute, once per machine.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

MODULE_DIR=$CALLCHAIN_ROOT/scripts/etcd
ETCD_MODULE=go.etcd.io/etcd/server/v3
# go.etcd.io/etcd/server/v3 declares `go 1.26.0`.
GO_MIN=1.26.0

# The wrapper module must pin the version .env names. etcd's own go.mod
# replaces its sibling modules (api, client, pkg) with folders of its
# repository, which Go ignores in a dependency: the wrapper requires their
# published versions instead, the same tag.
require_pinned "$MODULE_DIR/go.mod" "$ETCD_MODULE" "v$ETCD_VERSION" "ETCD_VERSION=$ETCD_VERSION" \
    "run (cd scripts/etcd && go get -tool $ETCD_MODULE@v$ETCD_VERSION && go mod tidy)"

if [ -x "$ETCD_BIN" ]; then
    echo "etcd $ETCD_VERSION: installed at $ETCD_BIN"
    exit 0
fi

need_go "$GO_MIN" "etcd $ETCD_VERSION"

build_dir "etcd-$ETCD_VERSION"
work=$BUILD_DIR
step "building etcd $ETCD_VERSION (about a minute, once per machine)"
start=$SECONDS
cd "$MODULE_DIR"
# As etcd's own build script makes it (static), less the commit (the module
# proxy does not give it) and the debug symbols; the version is a constant of
# go.etcd.io/etcd/api/v3.
CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$work/etcd" "$ETCD_MODULE"
have=$("$work/etcd" --version 2>/dev/null | sed -n 's/^etcd Version: *//p')
[ "$have" = "$ETCD_VERSION" ] || die "the etcd just built reports version '$have', not $ETCD_VERSION"

mkdir -p "$(dirname "$ETCD_BIN")"
mv -f "$work/etcd" "$ETCD_BIN"
step "etcd $ETCD_VERSION: built in $((SECONDS - start))s, installed at $ETCD_BIN"
