#!/usr/bin/env bash
# Installs kubernetes-validate $KUBERNETES_VALIDATE_VERSION (root .env) once
# per machine: from PyPI into its own virtual environment at
# $KUBERNETES_VALIDATE_HOME. It ships the Kubernetes JSON schemas, strict mode
# included, that `make test` validates the rendered Helm chart against
# (tests/e2e/tests/helm.rs). Needs python3 (3.10 or newer) with venv.
#
#   scripts/install-kubernetes-validate.sh
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

pip_tool kubernetes-validate "$KUBERNETES_VALIDATE_VERSION" "$KUBERNETES_VALIDATE_HOME"
"$KUBERNETES_VALIDATE_HOME/bin/kubernetes-validate" --version >/dev/null
