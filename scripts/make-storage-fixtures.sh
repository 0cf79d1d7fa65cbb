#!/usr/bin/env bash
# Regenerates tests/fixtures/storage-aaeadfb/: data dirs written by release
# aaeadfb, the last one whose stored records carry no format version. The
# Rust tests open them with today's code (see scripts/make_storage_fixtures.py
# for what is written). Run it only to rebuild those fixtures: the tests'
# expected values are the ones the Python script writes.
#
#   scripts/make-storage-fixtures.sh [path/to/tributary-aaeadfb]
#
# Without a binary it builds aaeadfb in a temporary git worktree (sharing
# ./target, so only Tributary's own crates compile). Needs python3 with
# tests/requirements.txt (PYTHON=/path/to/venv/bin/python to choose one) and
# mdb_copy / mdb_dump (Debian: lmdb-utils). Uses 127.0.0.1:39092 and
# 127.0.0.{1,2,3}:39192-39193.
set -euo pipefail
cd "$(dirname "$0")/.."
LEGACY=aaeadfb
OUT=tests/fixtures/storage-$LEGACY
PYTHON=${PYTHON:-python3}

for tool in mdb_copy mdb_dump; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install lmdb-utils" >&2; exit 1; }
done

binary=${1:-}
if [ -z "$binary" ]; then
    tree=$(mktemp -d)
    trap 'git worktree remove --force "$tree"' EXIT
    git worktree add --detach "$tree" "$LEGACY" >/dev/null
    CARGO_TARGET_DIR="$PWD/target/legacy-$LEGACY" cargo build --release --locked --manifest-path "$tree/Cargo.toml"
    binary="$PWD/target/legacy-$LEGACY/release/tributary"
fi

rm -rf "$OUT"
"$PYTHON" scripts/make_storage_fixtures.py --binary "$binary" --out "$OUT"
du -sh "$OUT"
