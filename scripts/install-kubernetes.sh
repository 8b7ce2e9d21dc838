#!/usr/bin/env bash
# Builds kube-apiserver and kubectl of Kubernetes $KUBERNETES_VERSION (root
# .env) from the Go module k8s.io/kubernetes, through the wrapper module
# scripts/kubernetes, and installs them under $KUBERNETES_HOME (scripts/lib.sh).
# `make k8s-verify` applies the chart to that API server with that kubectl.
# Does nothing when they are there.
#
#   scripts/install-kubernetes.sh
#   $KUBECTL_BIN version --client
#
# k8s.io/kubernetes replaces each k8s.io/* library it ships (api, apimachinery,
# client-go, ...) with a folder of its repository (./staging/src/k8s.io/...),
# and Go ignores a dependency's replace directives; the wrapper module
# replaces each with the same library as published on its own, at the
# matching v0.x.y (v1.37.2 ships v0.37.2).
#
# Needs Go and the Go module proxy; five to ten minutes, once per machine.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

MODULE_DIR=$CALLCHAIN_ROOT/scripts/kubernetes
KUBE_MODULE=k8s.io/kubernetes
# k8s.io/kubernetes declares `go 1.26.0`.
GO_MIN=1.26.0
STAGING_VERSION=v0.${KUBERNETES_VERSION#*.}

require_pinned "$MODULE_DIR/go.mod" "$KUBE_MODULE" "v$KUBERNETES_VERSION" "KUBERNETES_VERSION=$KUBERNETES_VERSION" \
    "set each k8s.io/* replace in it to $STAGING_VERSION, then run (cd scripts/kubernetes && go get -tool $KUBE_MODULE/cmd/kube-apiserver@v$KUBERNETES_VERSION $KUBE_MODULE/cmd/kubectl@v$KUBERNETES_VERSION && go mod tidy)"
stale=$(awk -v v="$STAGING_VERSION" '$2 == "=>" && $1 ~ /^k8s\.io\// && $4 != v { print $1 " => " $3 " " $4 }' "$MODULE_DIR/go.mod")
[ -z "$stale" ] ||
    die "KUBERNETES_VERSION=$KUBERNETES_VERSION ships the k8s.io/* libraries at $STAGING_VERSION, but $MODULE_DIR/go.mod replaces: $stale"

if [ -x "$KUBE_APISERVER_BIN" ] && [ -x "$KUBECTL_BIN" ]; then
    echo "kubernetes $KUBERNETES_VERSION: kube-apiserver and kubectl installed in $KUBERNETES_HOME"
    exit 0
fi

need_go "$GO_MIN" "Kubernetes $KUBERNETES_VERSION"

build_dir "kubernetes-$KUBERNETES_VERSION"
work=$BUILD_DIR
step "building kube-apiserver and kubectl $KUBERNETES_VERSION (five to ten minutes, once per machine)"
start=$SECONDS
cd "$MODULE_DIR"
# As Kubernetes' own build stamps them (hack/lib/version.sh), less the commit
# (the module proxy does not give it) and the debug symbols. Without the
# version, the server reports v0.0.0-master and kubectl cannot parse it.
released=$(go list -m -f '{{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' "$KUBE_MODULE")
minor=${KUBERNETES_VERSION#*.}
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $pkg.gitVersion=v$KUBERNETES_VERSION -X $pkg.gitMajor=${KUBERNETES_VERSION%%.*}"
    ldflags+=" -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean -X $pkg.buildDate=$released"
done
mkdir "$work/bin"
# One build for both: they share most packages.
CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$work/bin/" \
    "$KUBE_MODULE/cmd/kube-apiserver" "$KUBE_MODULE/cmd/kubectl"
have=$("$work/bin/kube-apiserver" --version 2>/dev/null || true)
[ "$have" = "Kubernetes v$KUBERNETES_VERSION" ] ||
    die "the kube-apiserver just built reports '$have', not Kubernetes v$KUBERNETES_VERSION"
have=$("$work/bin/kubectl" version --client -o json 2>/dev/null | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')
[ "$have" = "v$KUBERNETES_VERSION" ] || die "the kubectl just built reports version '$have', not v$KUBERNETES_VERSION"

# Both binaries or neither: the folder is renamed into place in one step.
rm -rf "$KUBERNETES_HOME"
mv "$work/bin" "$KUBERNETES_HOME"
step "kubernetes $KUBERNETES_VERSION: built in $((SECONDS - start))s, kube-apiserver and kubectl installed in $KUBERNETES_HOME"
