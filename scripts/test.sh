#!/usr/bin/env bash
# Installs what the tests need (Debian packages, Python clients) and runs every test:
# Rust unit/property/embedded tests, then the real-client integration suite
# against real broker processes on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v kcat >/dev/null 2>&1; then
    echo "== installing kcat (librdkafka's CLI client)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null
fi

echo "== installing Python test clients (tests/requirements.txt)"
python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt

echo "== installing kafkajs (tests/js/package-lock.json)"
(cd tests/js && npm ci --no-audit --no-fund --loglevel=error)

echo "== building (release)"
cargo build --release --workspace --locked

echo "== Rust tests"
cargo test --release --workspace --locked

echo "== integration tests with real clients"
TRIBUTARY_BIN="$PWD/target/release/tributary" python3 -m pytest -q -p no:cacheprovider tests/clients
