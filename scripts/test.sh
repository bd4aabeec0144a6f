#!/usr/bin/env bash
# Sets up and runs LaminarDB's whole test suite: the Rust workspace, then the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/laminardb/target}"
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
command -v python3 >/dev/null || { echo "python3 (>= 3.10) is required"; exit 1; }

scripts/prereqs.sh
# Superseded test executables in the shared build cache would fill the disk over time.
scripts/prune-target.sh

# The peers of the integration tests (a Kafka-protocol broker), stopped again on exit.
eval "$(scripts/services.sh start)"
trap 'scripts/services.sh stop' EXIT

cargo test --locked --workspace --all-targets
cargo test --locked --workspace --doc

# Python package: a private virtualenv, an editable build of the extension, pytest.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check \
  "maturin>=1.7,<2" pyarrow pandas polars pytest pytest-asyncio fastavro confluent-kafka websockets pika deltalake "pyiceberg[sql-sqlite,sql-postgres,glue]"
(
  source .venv/bin/activate
  cd python
  maturin develop --locked -q
)
.venv/bin/python -m pytest -q python/tests
