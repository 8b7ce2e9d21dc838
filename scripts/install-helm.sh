#!/usr/bin/env bash
# Builds Helm $HELM_VERSION (root .env) from its Go module, through the wrapper
# module scripts/helm (which pins helm.sh/helm/v4 at that version), and
# installs it at $HELM_BIN. `make test` renders and lints the chart under
# deploy/helm with it. Does nothing when it is there.
#
#   scripts/install-helm.sh
#   $HELM_BIN lint --strict deploy/helm/callchain
#
# Needs Go and the Go module proxy; about two minutes, once per machine.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

MODULE_DIR=$CALLCHAIN_ROOT/scripts/helm
HELM_MODULE=helm.sh/helm/v4
# helm.sh/helm/v4 declares `go 1.25`.
GO_MIN=1.25.0

require_pinned "$MODULE_DIR/go.mod" "$HELM_MODULE" "v$HELM_VERSION" "HELM_VERSION=$HELM_VERSION" \
    "run (cd scripts/helm && go get -tool $HELM_MODULE/cmd/helm@v$HELM_VERSION && go mod tidy)"

if [ -x "$HELM_BIN" ]; then
    echo "helm $HELM_VERSION: installed at $HELM_BIN"
    exit 0
fi

need_go "$GO_MIN" "Helm $HELM_VERSION"

build_dir "helm-$HELM_VERSION"
work=$BUILD_DIR
step "building Helm $HELM_VERSION (about two minutes, once per machine)"
start=$SECONDS
cd "$MODULE_DIR"
# As Helm's own Makefile stamps it, less the commit (the module proxy does not
# give it) and the debug symbols.
CGO_ENABLED=0 go build -mod=readonly -trimpath \
    -ldflags "-s -w -X $HELM_MODULE/internal/version.version=v$HELM_VERSION -X $HELM_MODULE/internal/version.gitTreeState=clean" \
    -o "$work/helm" "$HELM_MODULE/cmd/helm"
have=$("$work/helm" version --template '{{.Version}}' 2>/dev/null || true)
[ "$have" = "v$HELM_VERSION" ] || die "the helm just built reports version '$have', not v$HELM_VERSION"

mkdir -p "$(dirname "$HELM_BIN")"
mv -f "$work/helm" "$HELM_BIN"
step "helm $HELM_VERSION: built in $((SECONDS - start))s, installed at $HELM_BIN"
