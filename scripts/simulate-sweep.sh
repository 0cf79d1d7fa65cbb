#!/usr/bin/env bash
# A longer simulation sweep than CI's: SEEDS seeds (default 5000) of every
# scenario, or of the scenarios named, starting at FIRST_SEED (default 1).
#   scripts/simulate-sweep.sh                      # every scenario
#   SEEDS=20000 scripts/simulate-sweep.sh flaky-network
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin tributary
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    scenarios=(simulations/*.toml)
fi
for scenario in "${scenarios[@]}"; do
    ./target/release/tributary simulate "$scenario" --seeds "${SEEDS:-5000}" --first-seed "${FIRST_SEED:-1}"
done
