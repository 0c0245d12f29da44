#!/usr/bin/env bash
# Builds the embedded Neo4j launcher: target/haorch-neo4j.jar plus its runtime jars in target/lib/.
# Skips Maven when the jar is newer than pom.xml and every file under src/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

for tool in java mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "deploy/neo4j/build.sh: '$tool' not found; run deploy/setup.sh first" >&2
        exit 1
    fi
done

jar=target/haorch-neo4j.jar
if [[ -f "$jar" && -d target/lib ]] \
    && [[ -z "$(find pom.xml src -newer "$jar" -print -quit)" ]] \
    && compgen -G 'target/lib/neo4j-*.jar' >/dev/null; then
    echo "deploy/neo4j/build.sh: $jar is up to date; skipped mvn"
    exit 0
fi

start=$(date +%s)
# copy-dependencies never deletes jars: drop target/lib so a version bump leaves no stale jars behind.
rm -rf target/lib
# Maven 3.8 prints stray ANSI resets even with -q -B: keep its output, show it only on failure.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! mvn -q -B package -DskipTests >"$log" 2>&1; then
    cat "$log" >&2
    echo "deploy/neo4j/build.sh: mvn package failed" >&2
    exit 1
fi
# the jar plugin may leave an unchanged jar untouched: mark it fresh for the skip check above
touch "$jar"
echo "deploy/neo4j/build.sh: built $jar and target/lib/ with mvn in $(( $(date +%s) - start ))s"
