#!/usr/bin/env bash
# Sets up and runs LaminarDB's whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/laminardb/target}"
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
cargo test --locked --workspace --all-targets
cargo test --locked --workspace --doc
