#!/usr/bin/env bash
# Installs and builds what bench/peers.py compares: the broker, the bench client
# (librdkafka + async-nats, its own Cargo workspace), Tansu from crates.io and NATS
# JetStream from Debian. Builds take a while on 2 cores (Tansu alone ~15 min), once.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# cmake, libcurl and OpenSSL headers: rdkafka's bundled librdkafka build (with TLS, for
# tributary-tls); nats-server: the non-Kafka peer.
if ! dpkg -s cmake libcurl4-openssl-dev libssl-dev nats-server >/dev/null 2>&1; then
    echo "== installing cmake, libcurl4-openssl-dev, libssl-dev and nats-server"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake libcurl4-openssl-dev libssl-dev nats-server >/dev/null
fi

# Python packages in the repo's .venv (Debian's system Python refuses pip installs):
# tests/requirements.txt for the cluster helper, bench/requirements.txt for the plot.
./scripts/venv.sh .venv tests/requirements.txt
./scripts/venv.sh .venv bench/requirements.txt

echo "== building the broker (release)"
cargo build --release --locked

echo "== building the bench client"
cargo build --release --locked --manifest-path bench/client/Cargo.toml

# Tansu 0.6.0's default features have no storage engine that runs here; libsql is its
# SQLite engine, a single local file like ours; dynostore is its memory:// engine.
if ! [ -x bench/.peers/bin/tansu ]; then
    echo "== building Tansu 0.6.0 from crates.io (about 15 minutes on 2 cores)"
    cargo install tansu --version 0.6.0 --locked --features libsql,dynostore --root bench/.peers
fi
echo "ready: .venv/bin/python bench/peers.py"
