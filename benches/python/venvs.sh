# Sourced by the side-by-side benchmark scripts: one virtualenv per engine under $venvs, and this
# package built in release mode into the "ours" one.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venvs=${LAMINAR_BENCH_VENVS:-$HOME/.cache/laminardb/bench-venvs}
mkdir -p "$venvs"

# mk NAME PIP-ARGS...: creates (once) and updates the virtualenv NAME.
mk() {
  local v="$venvs/$1"; shift
  [ -x "$v/bin/python" ] || python3 -m venv "$v"
  "$v/bin/pip" install -q --disable-pip-version-check "$@"
}

# build_ours: this package, release build, into the "ours" virtualenv.
build_ours() {
  mk ours maturin pyarrow
  ( source "$venvs/ours/bin/activate" && cd "$root/python" &&
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/laminardb/target}" maturin develop --release -q )
}
