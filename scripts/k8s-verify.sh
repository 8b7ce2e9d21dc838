#!/usr/bin/env bash
# `make k8s-verify`: the Helm chart applied to a real Kubernetes control plane
# on loopback, which checks what no schema does (admission, defaulting, the
# server's own validation of every field, strict decoding).
#
#   1. builds etcd, kube-apiserver and kubectl from their Go modules when
#      missing (scripts/install-etcd.sh, scripts/install-kubernetes.sh), and Helm
#      (scripts/install-helm.sh);
#   2. starts etcd and kube-apiserver on free loopback ports, with a CA, serving
#      and client certificates and the service-account key made by openssl in a
#      temporary folder, and a kubeconfig for kubectl;
#   3. renders the chart with deploy/examples/values-operators.yaml into the
#      namespace `callchain`, applies it with --dry-run=server
#      --validate=strict, then for real, and reads back the Deployments,
#      Services, PodDisruptionBudgets and the HorizontalPodAutoscaler.
#
# Only the API server and its store run: no kubelet, scheduler or controller
# manager, so no pod is created (the Deployments are stored and validated, not
# run). The operators' examples (deploy/examples/strimzi-kafka.yaml,
# cloudnativepg-cluster.yaml) are not applied: their kinds are the operators'
# CustomResourceDefinitions, which this control plane does not have.
#
# Everything it started is stopped, and the temporary folder removed, on exit.
# Needs Go (for the first build), openssl and curl.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

NAMESPACE=callchain
RELEASE=callchain
CHART=$CALLCHAIN_ROOT/deploy/helm/callchain
VALUES=$CALLCHAIN_ROOT/deploy/examples/values-operators.yaml
# How long the API server may take to answer /readyz (its first start
# bootstraps the built-in roles and priority levels into etcd).
READY_SECONDS=${K8S_VERIFY_READY_SECONDS:-120}
# What the chart must create with VALUES, as `kubectl get -o name` prints it.
EXPECTED=(
    deployment.apps/callchain-api
    deployment.apps/callchain-user
    deployment.apps/callchain-consumer
    deployment.apps/callchain-collector
    deployment.apps/callchain-jaeger
    service/callchain-api
    service/callchain-user
    service/callchain-collector
    service/callchain-jaeger
    poddisruptionbudget.policy/callchain-api
    poddisruptionbudget.policy/callchain-user
    poddisruptionbudget.policy/callchain-consumer
    horizontalpodautoscaler.autoscaling/callchain-api
)

need openssl "openssl (Debian)"
need curl "curl (Debian)"

total_start=$EPOCHREALTIME
timings=()
# timed LABEL START: records how long LABEL took since START ($EPOCHREALTIME).
since() { awk -v now="$EPOCHREALTIME" -v start="$1" 'BEGIN { printf "%.1f", now - start }'; }
timed() { timings+=("$(printf '%-28s %6ss' "$1" "$(since "$2")")"); }

t=$EPOCHREALTIME
"$CALLCHAIN_ROOT/scripts/install-helm.sh"
"$CALLCHAIN_ROOT/scripts/install-etcd.sh"
"$CALLCHAIN_ROOT/scripts/install-kubernetes.sh"
timed "tools (built when missing)" "$t"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/callchain-k8s.XXXXXX")
pids=()
# The logs worth reading should the current step fail (a failing apply
# explains itself; a process that does not start does so in its log).
explain=()
cleanup() {
    local pid log
    for log in "${explain[@]}"; do
        [ -s "$tmp/$log" ] || continue
        printf '\n--- last lines of %s ---\n' "$log" >&2
        tail -n 25 "$tmp/$log" >&2
    done
    # The API server first, then its store.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        if kill "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port: a TCP port nothing listens on at 127.0.0.1.
free_port() {
    local port
    for _ in $(seq 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "found no free port on 127.0.0.1"
}

step "making a CA, the API server's and kubectl's certificates, and the service-account key (openssl)"
t=$EPOCHREALTIME
pki=$tmp/pki
mkdir -p "$pki"
explain=(openssl.log)
(
    cd "$pki"
    exec 2>"$tmp/openssl.log"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=callchain-k8s-verify-ca" \
        -keyout ca.key -out ca.crt
    # The serving certificate names the address kubectl dials.
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n' >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
        -extfile apiserver.ext -out apiserver.crt
    # kubectl's identity: the group system:masters holds every permission.
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=callchain-admin" -keyout admin.key -out admin.csr
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -out admin.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
) >/dev/null
timed "certificates" "$t"

etcd_port=$(free_port)
etcd_peer_port=$(free_port)
api_port=$(free_port)
if [ "$etcd_port" = "$etcd_peer_port" ] || [ "$etcd_port" = "$api_port" ] || [ "$etcd_peer_port" = "$api_port" ]; then
    die "drew the same free port twice; run it again"
fi

step "starting etcd $ETCD_VERSION on 127.0.0.1:$etcd_port"
t=$EPOCHREALTIME
explain=(etcd.log)
"$ETCD_BIN" --name k8s-verify --data-dir "$tmp/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "k8s-verify=http://127.0.0.1:$etcd_peer_port" \
    >"$tmp/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"' && break
    kill -0 "${pids[0]}" 2>/dev/null || die "etcd exited at start (its log is below)"
    sleep 0.2
done
curl -fsS "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"' ||
    die "etcd is not healthy after 20s (its log is below)"
timed "etcd healthy" "$t"

step "starting kube-apiserver $KUBERNETES_VERSION on https://127.0.0.1:$api_port"
t=$EPOCHREALTIME
explain=(kube-apiserver.log)
# --endpoint-reconciler-type=none: the default reconciler publishes the
# server's address as the `kubernetes` Service's endpoint and refuses a
# loopback one. No kubelet runs, so the kubelet and cloud flags are left out.
"$KUBE_APISERVER_BIN" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --endpoint-reconciler-type none \
    --cert-dir "$tmp/apiserver-certs" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    >"$tmp/kube-apiserver.log" 2>&1 &
pids+=($!)

export KUBECONFIG=$tmp/kubeconfig
cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: k8s-verify
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: callchain-admin
  user:
    client-certificate: $pki/admin.crt
    client-key: $pki/admin.key
contexts:
- name: k8s-verify
  context:
    cluster: k8s-verify
    user: callchain-admin
current-context: k8s-verify
EOF
kubectl() { "$KUBECTL_BIN" "$@"; }

ready=
for _ in $(seq $((READY_SECONDS * 2))); do
    if [ "$(kubectl get --raw /readyz 2>/dev/null)" = ok ]; then
        ready=1
        break
    fi
    kill -0 "${pids[1]}" 2>/dev/null || die "kube-apiserver exited at start (its log is below)"
    sleep 0.5
done
[ -n "$ready" ] || {
    kubectl get --raw '/readyz?verbose' >&2 || true
    die "kube-apiserver is not ready after ${READY_SECONDS}s (K8S_VERIFY_READY_SECONDS); its log is below"
}
server=$(kubectl version -o json | sed -n '/"serverVersion"/,/}/s/.*"gitVersion": *"\([^"]*\)".*/\1/p')
[ "$server" = "v$KUBERNETES_VERSION" ] || die "the API server reports version '$server', not v$KUBERNETES_VERSION"
timed "kube-apiserver ready" "$t"
explain=()

step "creating namespace $NAMESPACE; rendering the chart with ${VALUES#"$CALLCHAIN_ROOT"/}"
t=$EPOCHREALTIME
kubectl create namespace "$NAMESPACE" >/dev/null
"$HELM_BIN" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --values "$VALUES" \
    >"$tmp/rendered.yaml" 2>"$tmp/helm.log" || { explain=(helm.log); die "helm template failed (its output is below)"; }
timed "namespace + helm template" "$t"

step "kubectl apply --dry-run=server --validate=strict"
t=$EPOCHREALTIME
kubectl apply --namespace "$NAMESPACE" --dry-run=server --validate=strict -f "$tmp/rendered.yaml" >&2 ||
    die "the API server refused the rendered chart (dry run, strict validation): see kubectl's message above"
timed "server dry run (strict)" "$t"

step "kubectl apply (for real)"
t=$EPOCHREALTIME
kubectl apply --namespace "$NAMESPACE" --validate=strict -f "$tmp/rendered.yaml" -o name >"$tmp/applied" ||
    die "the API server refused the rendered chart: see kubectl's message above"
timed "apply" "$t"

step "reading back the Deployments, Services, PodDisruptionBudgets and HorizontalPodAutoscalers"
t=$EPOCHREALTIME
kubectl get deploy,svc,pdb,hpa --namespace "$NAMESPACE" >&2
kubectl get deploy,svc,pdb,hpa --namespace "$NAMESPACE" -o name >"$tmp/stored"
missing=()
for name in "${EXPECTED[@]}"; do
    grep -qxF "$name" "$tmp/stored" || missing+=("$name")
done
# And every object of those kinds that apply reported is stored.
while read -r name; do
    case $name in deployment.apps/* | service/* | poddisruptionbudget.policy/* | horizontalpodautoscaler.autoscaling/*)
        grep -qxF "$name" "$tmp/stored" || missing+=("$name (applied)") ;;
    esac
done <"$tmp/applied"
[ ${#missing[@]} = 0 ] || die "not in namespace $NAMESPACE after apply: ${missing[*]}"
# The user service is reached pod by pod (gRPC balances across the addresses
# the name resolves to): the server must have kept it headless.
cluster_ip=$(kubectl get service callchain-user --namespace "$NAMESPACE" -o jsonpath='{.spec.clusterIP}')
[ "$cluster_ip" = None ] || die "service/callchain-user has clusterIP '$cluster_ip', not None (headless)"
timed "read back" "$t"

stored=$(wc -l <"$tmp/stored")
applied=$(wc -l <"$tmp/applied")
{
    echo
    echo "k8s-verify: passed. Kubernetes v$KUBERNETES_VERSION (kube-apiserver + etcd $ETCD_VERSION on 127.0.0.1) accepted"
    echo "  the chart rendered with ${VALUES#"$CALLCHAIN_ROOT"/}: $applied objects applied (strict server-side"
    echo "  dry run first), $stored Deployments/Services/PDBs/HPAs read back in namespace $NAMESPACE."
    echo "  No pod ran: this control plane has no kubelet, scheduler or controller manager."
    echo "  Not applied: deploy/examples/strimzi-kafka.yaml and cloudnativepg-cluster.yaml (their kinds"
    echo "  need the Strimzi and CloudNativePG operators' CRDs)."
    printf '  %s\n' "${timings[@]}"
    printf '  %-28s %6ss\n' total "$(since "$total_start")"
} >&2
