#!/usr/bin/env bash
# Wall time of `make test` on a fresh clone, as CI sees it (download caches stay warm).
#   bench/make-test-time.sh REV [REV...]   one run per REV, in the order given
# Prints one line per run: label, revision, exit code, wall seconds, the summary line.
# Example (issue 9's before/after, three runs each, alternating):
#   bench/make-test-time.sh b4d2975 HEAD b4d2975 HEAD b4d2975 HEAD
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
n=0
for rev in "$@"; do
  n=$((n + 1))
  dir=$(mktemp -d /tmp/fw-make-test-XXXXXX)
  git clone -q "$repo" "$dir" && git -C "$dir" checkout -q "$(git -C "$repo" rev-parse "$rev")"
  start=$(date +%s.%N)
  (cd "$dir" && make test > "$dir.log" 2>&1)
  rc=$?
  end=$(date +%s.%N)
  printf 'run %d rev=%s rc=%d wall_s=%.1f summary=%s\n' "$n" "$rev" "$rc" "$(echo "$end - $start" | bc)" "$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$dir.log" | tail -1)"
  rm -rf "$dir"
done
