#!/usr/bin/env bash
# Installs what `make dev` and `make test` need, when it is missing. Each
# tool is installed once per machine into a versioned folder under
# $CALLCHAIN_TOOLS ($HOME/.callchain/tools), which every clone reuses:
#
#   postgres        Debian's postgresql, when the server is not installed
#   kafka           Apache Kafka $KAFKA_VERSION from Maven Central (scripts/install-kafka.sh)
#   otelcol         the OpenTelemetry Collector $OTELCOL_VERSION, built by the
#                   Collector Builder (scripts/install-otelcol.sh)
#   jaeger          Jaeger $JAEGER_VERSION, built from its Go module (scripts/install-jaeger.sh)
#   victoriametrics VictoriaMetrics $VICTORIAMETRICS_VERSION, the metrics store with
#                   its UI, built from its Go module (scripts/install-victoriametrics.sh)
#   docker-compose  validates docker-compose.yml without a Docker engine (Debian)
#   schemathesis    Schemathesis $SCHEMATHESIS_VERSION from PyPI, in a virtual
#                   environment (scripts/install-schemathesis.sh): `make test`
#                   fuzzes the API with it
#   chromium        headless Chromium, which opens tracechain's waterfall page
#                   in the tests (Debian)
#   helm            Helm $HELM_VERSION, built from its Go module
#                   (scripts/install-helm.sh): `make test` lints and renders
#                   the chart under deploy/helm
#   kubernetes-validate
#                   the Kubernetes JSON schemas, from PyPI
#                   (scripts/install-kubernetes-validate.sh): `make test`
#                   validates the rendered chart against them
#
# Not by default (`make k8s-verify` installs them; ten minutes of building):
#   etcd            etcd $ETCD_VERSION, built from its Go module (scripts/install-etcd.sh)
#   kubernetes      kube-apiserver and kubectl $KUBERNETES_VERSION, built from
#                   k8s.io/kubernetes (scripts/install-kubernetes.sh)
#
# With arguments, only those: scripts/install-tools.sh kafka jaeger
set -euo pipefail
. "$(dirname "$0")/lib.sh"

wanted=" ${*:-postgres kafka otelcol jaeger victoriametrics docker-compose schemathesis chromium helm kubernetes-validate} "
wants() { [[ $wanted == *" $1 "* ]]; }

apt_install() { # package: installs a Debian package as root, or says how to
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing Debian's $1"
        apt-get update -qq
        # --no-install-recommends: docker-compose alone, not a Docker engine;
        # Chromium without a desktop.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
    else
        die "$1 is missing: as root, run apt-get install -y --no-install-recommends $1"
    fi
}

if wants postgres && ! command -v pg_lsclusters >/dev/null 2>&1; then
    apt_install postgresql
fi
if wants kafka; then "$CALLCHAIN_ROOT/scripts/install-kafka.sh"; fi
if wants otelcol; then "$CALLCHAIN_ROOT/scripts/install-otelcol.sh"; fi
if wants jaeger; then "$CALLCHAIN_ROOT/scripts/install-jaeger.sh"; fi
if wants victoriametrics; then "$CALLCHAIN_ROOT/scripts/install-victoriametrics.sh"; fi
if wants docker-compose && ! command -v docker-compose >/dev/null 2>&1; then
    apt_install docker-compose
fi
if wants schemathesis; then "$CALLCHAIN_ROOT/scripts/install-schemathesis.sh"; fi
if wants chromium && ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium
fi
if wants helm; then "$CALLCHAIN_ROOT/scripts/install-helm.sh"; fi
if wants kubernetes-validate; then "$CALLCHAIN_ROOT/scripts/install-kubernetes-validate.sh"; fi
if wants etcd; then "$CALLCHAIN_ROOT/scripts/install-etcd.sh"; fi
if wants kubernetes; then "$CALLCHAIN_ROOT/scripts/install-kubernetes.sh"; fi
