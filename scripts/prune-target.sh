#!/usr/bin/env bash
# Keeps the shared build cache ($CARGO_TARGET_DIR) from filling the disk: every build of a test
# or benchmark leaves a new executable in target/*/deps next to the old ones, and incremental
# state piles up. Removes all but the newest executable of each name and the incremental
# state of the debug profile. Dependencies' compiled libraries stay, so nothing is rebuilt.
set -euo pipefail
target=${CARGO_TARGET_DIR:-$HOME/.cache/laminardb/target}
[ -d "$target" ] || exit 0
for deps in "$target"/debug/deps "$target"/release/deps; do
  [ -d "$deps" ] || continue
  # Executables have no extension; group them by the name before the hash, keep the newest.
  find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -printf '%T@ %p\n' \
    | awk '{ n = $2; sub(/-[0-9a-f]+$/, "", n); print n, $1, $2 }' \
    | sort -k1,1 -k2,2nr \
    | awk 'seen[$1]++ { print $3 }' \
    | xargs -r rm -f
done
# Incremental state is only a speed-up; it grows without bound across sessions.
if [ -d "$target/debug/incremental" ] && [ "$(du -sm "$target/debug/incremental" | cut -f1)" -gt 8000 ]; then
  rm -rf "$target/debug/incremental"
fi
