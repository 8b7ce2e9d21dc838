#!/usr/bin/env bash
# The one recipe for building callchain's three service binaries.
#
# Used by the Makefile and by the Dockerfile, so a local build and the image
# build cannot drift apart.
#
#   scripts/build-services.sh          # build into target/release/
#   scripts/build-services.sh DIR      # ...and copy api, user, consumer into DIR
set -euo pipefail

# Resolve the destination before moving to the workspace root, so a relative
# DIR means relative to where the caller stands.
dest=""
if [[ $# -ge 1 ]]; then
    mkdir -p "$1"
    dest=$(cd "$1" && pwd)
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --locked --release \
    -p callchain-api \
    -p callchain-user \
    -p callchain-consumer

if [[ -n $dest ]]; then
    target_dir=${CARGO_TARGET_DIR:-target}
    for bin in api user consumer; do
        cp "$target_dir/release/$bin" "$dest/$bin"
    done
    echo "copied api, user, consumer to $dest"
fi
