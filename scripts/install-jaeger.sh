#!/usr/bin/env bash
# Builds Jaeger v2 (the `jaeger` binary) that `make dev` and the tests run
# natively, from the Go module observability/jaeger (which pins
# github.com/jaegertracing/jaeger at JAEGER_MODULE_VERSION), and installs it at
# $JAEGER_BIN (scripts/lib.sh). Does nothing when it is there.
#
#   scripts/install-jaeger.sh
#   $JAEGER_BIN --config=observability/jaeger.yaml
#
# Needs Go and the Go module proxy; a few minutes, once per machine and
# JAEGER_VERSION (.env). Go's module cache ($HOME/go) keeps the sources.
# Built from the Go module, the binary serves Jaeger's query API but only a
# placeholder page instead of the web UI (the UI is a separate JavaScript build).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

MODULE_DIR=$CALLCHAIN_ROOT/observability/jaeger
JAEGER_MODULE=github.com/jaegertracing/jaeger
# github.com/jaegertracing/jaeger declares `go 1.24.6`.
GO_MIN=1.24.6

# The wrapper module must pin the version .env names.
require_pinned "$MODULE_DIR/go.mod" "$JAEGER_MODULE" "$JAEGER_MODULE_VERSION" "JAEGER_MODULE_VERSION=$JAEGER_MODULE_VERSION" \
    "run (cd observability/jaeger && go get -tool $JAEGER_MODULE/cmd/jaeger@$JAEGER_MODULE_VERSION && go mod tidy), and copy the replace directives of Jaeger's own go.mod at that version"

if [ -x "$JAEGER_BIN" ]; then
    echo "jaeger $JAEGER_VERSION: installed at $JAEGER_BIN"
    exit 0
fi

need_go "$GO_MIN" "Jaeger $JAEGER_VERSION"

cd "$MODULE_DIR"
go mod download "$JAEGER_MODULE"
# Jaeger tags one commit twice (v1.x for the module, v2.x for the binary); its
# changelog names the pair, so a wrong JAEGER_VERSION fails here, not later.
src=$(go list -m -f '{{.Dir}}' "$JAEGER_MODULE")
released=$(go list -m -f '{{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "$JAEGER_MODULE")
# Some tags carry the changelog as it stood before their own entry was written,
# so the entry of the release just before the pair counts as well.
m=${JAEGER_MODULE_VERSION#v}; b=$JAEGER_VERSION
before="v${m%%.*}.$(( $(echo "$m" | cut -d. -f2) - 1 )).0 / v${b%%.*}.$(( $(echo "$b" | cut -d. -f2) - 1 )).0 "
grep -qF "$JAEGER_MODULE_VERSION / v$JAEGER_VERSION " "$src/CHANGELOG.md" ||
    grep -m1 -E '^v[0-9]+\.[0-9]+\.[0-9]+ / v' "$src/CHANGELOG.md" | grep -qF "$before" ||
    die "JAEGER_VERSION=$JAEGER_VERSION and JAEGER_MODULE_VERSION=$JAEGER_MODULE_VERSION in .env are not one Jaeger release (see the first entry of $src/CHANGELOG.md)"

build_dir "jaeger-$JAEGER_VERSION"
work=$BUILD_DIR

step "building Jaeger $JAEGER_VERSION (a few minutes, once per machine)"
start=$SECONDS
# As Jaeger's own Makefile builds it (static, version and date stamped in; the
# module proxy does not give the commit hash), less the debug symbols. Go
# downloads the modules it needs first.
v=$JAEGER_MODULE/internal/version
CGO_ENABLED=0 go build -mod=readonly -trimpath \
    -ldflags "-s -w -X $v.latestVersion=v$JAEGER_VERSION -X $v.date=$released" \
    -o "$work/jaeger" "$JAEGER_MODULE/cmd/jaeger"
have=$("$work/jaeger" version 2>/dev/null | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')
[ "$have" = "v$JAEGER_VERSION" ] || die "the jaeger just built reports version '$have', not v$JAEGER_VERSION"

mkdir -p "$(dirname "$JAEGER_BIN")"
mv -f "$work/jaeger" "$JAEGER_BIN"
step "jaeger $JAEGER_VERSION: built in $((SECONDS - start))s, installed at $JAEGER_BIN"
