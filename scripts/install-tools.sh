#!/usr/bin/env bash
# Installs the tools the tests need, when they are missing:
#   tansu           the Kafka-compatible broker the tests run against (crates.io)
#   docker-compose  validates docker-compose.yml without a Docker engine (Debian)
# With arguments, only those: scripts/install-tools.sh tansu
# Tools go where cargo and apt put them ($HOME/.cargo/bin, /usr/bin), outside
# the checkout, so every clone on this machine reuses them.
set -euo pipefail

TANSU_VERSION=${TANSU_VERSION:-0.6.0}
export PATH="$HOME/.cargo/bin:$PATH"
wanted=" ${*:-tansu docker-compose} "

if [[ $wanted == *" tansu "* ]] && ! command -v tansu >/dev/null 2>&1; then
    echo "installing tansu $TANSU_VERSION (a release build: several minutes, once per machine)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi

if [[ $wanted == *" docker-compose "* ]] && ! command -v docker-compose >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing docker-compose (Debian) to validate docker-compose.yml"
        apt-get update -qq
        # --no-install-recommends: the validator alone, not a Docker engine.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    else
        echo "docker-compose is missing: as root, run apt-get install -y --no-install-recommends docker-compose" >&2
        exit 1
    fi
fi
