#!/usr/bin/env bash
# Installs Schemathesis $SCHEMATHESIS_VERSION (root .env), the OpenAPI fuzzer
# the contract test runs (tests/e2e/tests/contract.rs), once per machine: from
# PyPI into its own virtual environment at $SCHEMATHESIS_HOME, which every
# clone reuses. Needs python3 (3.10 or newer) with its venv module.
#
#   scripts/install-schemathesis.sh
#
# Safe to run again: does nothing when installed.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

pip_tool schemathesis "$SCHEMATHESIS_VERSION" "$SCHEMATHESIS_HOME"
"$SCHEMATHESIS_HOME/bin/schemathesis" --version >/dev/null
