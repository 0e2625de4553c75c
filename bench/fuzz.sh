#!/usr/bin/env bash
# Runs the fuzz targets of crates/airlock-fuzz for longer than the test suite does: each target
# gets CASES generated inputs (default 200000), optimised build. A failure prints the smallest
# input proptest shrank it to. Usage: bench/fuzz.sh [CASES] [TARGET-NAME-FILTER]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/airlock-target}"
export PROPTEST_CASES="${1:-200000}"
filter="${2:-}"
cargo test --release --locked -p airlock-fuzz --test fuzz -- --test-threads 2 $filter
