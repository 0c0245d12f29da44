#!/usr/bin/env bash
# Installs what haorch needs on a Debian 12 machine, idempotently, and is quick when all is in place:
#   1. Debian packages: ZooKeeper, RabbitMQ, MariaDB, Prometheus (+ promtool), Docker Engine and debootstrap (for
#      `haorch deploy --docker`; haorch starts dockerd itself when none runs), SLURM (+ slurmdbd), munge and an
#      OpenSSH server (for the HPC test site of `haorch hpc up`), Graphviz (the console draws DAGs with `dot`),
#      Chromium (the console's browser tests drive it headless with Playwright), a JDK and Maven if missing
#   2. the Python venv in .venv with haorch installed editable (re-installed when pyproject.toml changes)
#   3. the embedded Neo4j launcher (node/assets/neo4j, built with Maven into its target/)
# The packages' own system services are not used: `haorch stack up` runs its own processes (or containers).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf 'setup: %s\n' "$*"; }

packages=(zookeeper rabbitmq-server mariadb-server mariadb-client prometheus iproute2 iptables procps
          docker.io debootstrap slurm-wlm slurmdbd slurm-wlm-mysql-plugin munge openssh-server graphviz chromium
          fonts-dejavu-core)
command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || packages+=(maven)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        say "missing Debian packages: ${missing[*]} (run this script as root, or install them)" >&2
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    apt-get update -q >/dev/null
    # no service starts at install: haorch runs its own processes
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
else
    say "Debian packages present"
fi

python=""
for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [[ -z "$python" ]]; then
    say "Python 3.11 with venv is required (apt-get install python3 python3-venv)" >&2
    exit 1
fi

stamp=.venv/.haorch-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]]; then
    say "creating .venv with $python"
    "$python" -m venv .venv
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    say "installing haorch and its pinned dependencies into .venv"
    log=$(mktemp)
    if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e '.[test]'; } \
        >"$log" 2>&1; then
        cat "$log" >&2
        say "pip install failed" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$want" > "$stamp"
else
    say "venv up to date"
fi

bash node/assets/neo4j/build.sh | sed 's/^/setup: /'
say "done"
