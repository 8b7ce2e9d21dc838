#!/usr/bin/env bash
# Installs Apache Kafka $KAFKA_VERSION (root .env) for `make dev`, once per
# machine: the broker, its command-line tools and a log4j2 binding, as jars from
# Maven Central (scripts/kafka/pom.xml), into $KAFKA_HOME/libs. No tarball, no
# Docker: only java (17 or newer) and mvn. scripts/kafka.sh runs them.
#
#   scripts/install-kafka.sh
#
# Maven keeps its downloads in ~/.m2, so a reinstall (after deleting
# $KAFKA_HOME) needs no network. Safe to run again: does nothing when installed.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

POM=$CALLCHAIN_ROOT/scripts/kafka/pom.xml
LIBS=$KAFKA_HOME/libs

# The pom's default version is what a plain `mvn -f scripts/kafka/pom.xml`
# would fetch; keep it equal to .env so the two never tell different stories.
pom_version=$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$POM" | head -n 1)
[ "$pom_version" = "$KAFKA_VERSION" ] ||
    die "scripts/kafka/pom.xml says kafka.version ${pom_version:-<none>} but .env says KAFKA_VERSION=$KAFKA_VERSION; make them equal"

if [ -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ] && [ -f "$LIBS/kafka-tools-$KAFKA_VERSION.jar" ]; then
    echo "Kafka $KAFKA_VERSION: installed at $KAFKA_HOME"
    exit 0
fi

need java "openjdk-17-jre-headless"
need mvn "maven"

# "17.0.15", "21", or "1.8.0_402" (Java 8, whose major version is the second number).
java_version=$(java -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1)
java_major=${java_version%%.*}
[ "$java_major" = 1 ] && java_major=$(echo "$java_version" | cut -d. -f2)
[[ $java_major =~ ^[0-9]+$ ]] || die "cannot tell the version of $(command -v java) (java -version says: $(java -version 2>&1 | head -n 1))"
[ "$java_major" -ge 17 ] ||
    die "Kafka $KAFKA_VERSION needs Java 17 or newer, but $(command -v java) is Java $java_version; install openjdk-17-jre-headless"

step "fetching Apache Kafka $KAFKA_VERSION from Maven Central (once per machine)"
build_dir "kafka-$KAFKA_VERSION"
tmp=$BUILD_DIR

# Maven's log goes to a file (Debian's mvn 3.8 prints stray colour codes even
# with --quiet), and is shown only when something went wrong.
if ! mvn --batch-mode --no-transfer-progress -Dstyle.color=never \
    -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs" \
    >"$tmp/mvn.log" 2>&1; then
    grep -E '^\[(ERROR|WARNING)\]' "$tmp/mvn.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || tail -n 30 "$tmp/mvn.log" >&2
    die "mvn could not fetch Kafka $KAFKA_VERSION from Maven Central (is it reachable? a proxy in ~/.m2/settings.xml?)"
fi

[ -f "$tmp/libs/kafka_2.13-$KAFKA_VERSION.jar" ] ||
    die "mvn finished, but fetched no kafka_2.13-$KAFKA_VERSION.jar"

mkdir -p "$KAFKA_HOME"
rm -rf "$LIBS"
mv "$tmp/libs" "$LIBS"
echo "Kafka $KAFKA_VERSION: installed at $KAFKA_HOME ($(find "$LIBS" -name '*.jar' | wc -l) jars)"
