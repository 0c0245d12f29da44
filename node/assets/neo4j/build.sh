#!/usr/bin/env bash
# Builds the embedded Neo4j launcher from pom.xml and src/ beside this script: haorch-neo4j.jar plus its runtime
# jars in lib/, into OUT_DIR (default: target/ beside this script; haorch passes node.paths.NEO4J_LAUNCHER_TARGET,
# so the sources may sit in a read-only site-packages).
#   usage: build.sh [OUT_DIR]
# Skips Maven when OUT_DIR/.built is newer than pom.xml, this script and every file under src/. One build at a time
# per OUT_DIR (flock on OUT_DIR/.lock): a second caller waits, then skips. A build that dies leaves no .built, so
# the next run builds again. Maven's output goes to OUT_DIR/build.log; a failure prints one line on stderr
# (haorch shows it as `neo4j: <line>`).
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$src/target}
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec 9>"$out/.lock"
flock 9

if [[ -f "$out/.built" && -f "$out/haorch-neo4j.jar" ]] \
    && [[ -z "$(find "$src/pom.xml" "$src/build.sh" "$src/src" -newer "$out/.built" -print -quit)" ]]; then
    echo "neo4j launcher: $out is up to date; skipped mvn"
    exit 0
fi

for tool in java mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "the launcher cannot be built into $out: '$tool' not found; install Maven and a JDK 17" \
             "(apt-get install maven openjdk-17-jdk-headless; the build fetches Neo4j from Maven Central)" >&2
        exit 1
    fi
done

start=$(date +%s)
rm -f "$out/.built"
# copy-dependencies never deletes jars: drop lib/ so a version bump leaves no stale jars behind.
rm -rf "$out/lib"
# Maven 3.8 prints stray ANSI resets even with -q -B: keep its output in the log.
if ! mvn -q -B -f "$src/pom.xml" package -DskipTests -Dhaorch.build.directory="$out" >"$out/build.log" 2>&1; then
    echo "the launcher build (mvn package) failed; see $out/build.log" >&2
    exit 1
fi
touch "$out/.built"
echo "neo4j launcher: built $out/haorch-neo4j.jar and lib/ with mvn in $(( $(date +%s) - start ))s"
