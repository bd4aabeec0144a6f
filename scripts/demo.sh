#!/usr/bin/env bash
# Builds LaminarDB and runs the demo pipeline (examples/demo.sql) with the `laminardb` command
# line on the embedded default (a generated feed; no external services needed).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/laminardb/target}"
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
scripts/prereqs.sh
cargo run --locked --bin laminardb -- run examples/demo.sql "$@"
