#!/usr/bin/env bash
# Installs what the tests need (Debian packages, Python clients in .venv) and runs every test:
# Rust unit/property/embedded tests, then the real-client integration suite
# against real broker processes on 127.0.0.1 (clusters on 127.0.0.1-3, and one
# in network namespaces the test creates, which needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# kcat: librdkafka's CLI client; iproute2 (ip, tc) and iptables: the cluster
# and Jepsen-style tests' network namespaces and faults; openssl: the security
# tests' certificates.
if ! command -v kcat >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1 || ! command -v tc >/dev/null 2>&1 \
    || ! command -v iptables >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
    echo "== installing kcat, iproute2, iptables and openssl"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat iproute2 iptables openssl >/dev/null
fi

# Java and Maven: Apache Kafka's Java client in the tests (tests/java).
if ! command -v mvn >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
    echo "== installing a JDK and Maven"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jdk-headless maven >/dev/null
fi

# Python clients in a virtual environment in the repo (.venv, gitignored):
# Debian's system Python refuses pip installs (see scripts/venv.sh).
VENV="$PWD/.venv"
./scripts/venv.sh "$VENV" tests/requirements.txt

echo "== installing kafkajs (tests/js/package-lock.json)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

echo "== fetching Apache Kafka's Java client (tests/java/pom.xml)"
(cd tests/java && mvn -q -B dependency:copy-dependencies)

echo "== building (release)"
cargo build --release --workspace --locked

echo "== Rust tests"
cargo test --release --workspace --locked

echo "== simulations: ${SIM_SEEDS:=200} seeds of every scenario (a longer sweep: scripts/simulate-sweep.sh)"
for scenario in simulations/*.toml; do
    ./target/release/tributary simulate "$scenario" --seeds "$SIM_SEEDS"
done

echo "== integration tests with real clients"
TRIBUTARY_BIN="$PWD/target/release/tributary" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/clients
