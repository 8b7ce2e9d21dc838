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

BIN=$SCHEMATHESIS_HOME/bin/schemathesis
# Written last, so an interrupted install is redone rather than half used.
DONE=$SCHEMATHESIS_HOME/.installed

if [ -f "$DONE" ] && [ -x "$BIN" ]; then
    echo "Schemathesis $SCHEMATHESIS_VERSION: installed at $SCHEMATHESIS_HOME"
    exit 0
fi

need python3 "python3 and python3-venv (Debian)"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    die "Schemathesis $SCHEMATHESIS_VERSION needs Python 3.10 or newer; $(command -v python3) is $(python3 --version 2>&1)"

step "installing Schemathesis $SCHEMATHESIS_VERSION from PyPI into $SCHEMATHESIS_HOME (once per machine)"
rm -rf "$SCHEMATHESIS_HOME"
python3 -m venv "$SCHEMATHESIS_HOME" ||
    die "python3 cannot make a virtual environment; install python3-venv (Debian)"
"$SCHEMATHESIS_HOME/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
"$BIN" --version >/dev/null
touch "$DONE"
echo "Schemathesis $SCHEMATHESIS_VERSION: installed at $SCHEMATHESIS_HOME"
