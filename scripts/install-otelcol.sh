#!/usr/bin/env bash
# Builds the OpenTelemetry Collector that `make dev` and the tests run natively,
# from observability/otelcol-builder.yaml with the Collector Builder (ocb), and
# installs it at $OTELCOL_BIN (scripts/lib.sh). Does nothing when it is there.
#
#   scripts/install-otelcol.sh
#   $OTELCOL_BIN --config=observability/otel-collector.yaml
#
# Needs Go and the Go module proxy; several minutes, once per machine,
# OTELCOL_VERSION (.env) and manifest: $OTELCOL_BIN's folder is named by the
# version and the manifest's hash, so adding a component to the manifest
# builds a new collector instead of running the old one without it. Go's module cache ($HOME/go) keeps the sources.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

MANIFEST=$CALLCHAIN_ROOT/observability/otelcol-builder.yaml
# The collector's modules at 0.165.0 declare `go 1.26.0`.
GO_MIN=1.26
OCB=$CALLCHAIN_TOOLS/ocb-$OTELCOL_VERSION/builder

# The manifest must build the version .env names: dist.version, and every
# v0.x module (core and contrib) at v$OTELCOL_VERSION. The stable v1.x modules
# (confmap providers) follow their own numbering and are not checked here.
manifest_version=$(sed -n 's/^  version: *"\{0,1\}\([^" #]*\).*/\1/p' "$MANIFEST" | head -n 1)
[ "$manifest_version" = "$OTELCOL_VERSION" ] ||
    die "OTELCOL_VERSION=$OTELCOL_VERSION in .env, but $MANIFEST builds version '$manifest_version' (dist.version); make them agree"
stray=$(grep -E '^\s*(-\s*)?gomod:' "$MANIFEST" | grep -E ' v0\.[0-9]+\.[0-9]+' | grep -vE " v$OTELCOL_VERSION\s*$" || true)
[ -z "$stray" ] ||
    die "OTELCOL_VERSION=$OTELCOL_VERSION in .env, but $MANIFEST has modules at another version:
$stray"

if [ -x "$OTELCOL_BIN" ]; then
    echo "otelcol $OTELCOL_VERSION: installed at $OTELCOL_BIN"
    exit 0
fi

need_go "$GO_MIN" "the OpenTelemetry Collector $OTELCOL_VERSION"

build_dir "otelcol-$OTELCOL_VERSION-$OTELCOL_MANIFEST_HASH"
work=$BUILD_DIR

if [ ! -x "$OCB" ]; then
    step "installing the OpenTelemetry Collector Builder (ocb) $OTELCOL_VERSION"
    GOBIN=$work/ocb go install "go.opentelemetry.io/collector/cmd/builder@v$OTELCOL_VERSION"
    mkdir -p "$(dirname "$OCB")"
    mv -f "$work/ocb/builder" "$OCB"
fi

step "building the OpenTelemetry Collector $OTELCOL_VERSION with the Collector Builder (several minutes, once per machine)"
start=$SECONDS
# The manifest as hashed: an edit during the build must not land in this folder.
cp "$MANIFEST" "$work/manifest.yaml"
[ "$(sha256sum "$work/manifest.yaml" | cut -c 1-12)" = "$OTELCOL_MANIFEST_HASH" ] ||
    die "$MANIFEST changed while the install ran; run it again"
# dist.output_path (./build) is relative to the directory ocb runs in.
(cd "$work" && "$OCB" --config="$work/manifest.yaml")
built=$work/build/otelcol-callchain
[ -x "$built" ] || die "ocb finished but wrote no $built"
"$built" --version >/dev/null || die "the collector just built does not run: $built"

mkdir -p "$(dirname "$OTELCOL_BIN")"
mv -f "$built" "$OTELCOL_BIN"
step "otelcol $OTELCOL_VERSION: built in $((SECONDS - start))s, installed at $OTELCOL_BIN"
