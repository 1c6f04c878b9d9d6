#!/usr/bin/env bash
# Runs the firmware's host tests and writes "passed failed" to $1 for the closing summary.
# A build failure counts as one failed test, so it cannot pass unnoticed.
set -uo pipefail
out="$1"
manifest=firmware-esp32/Cargo.toml
if [[ ! -f "$manifest" ]]; then exit 0; fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust (https://rustup.rs) to run the firmware tests" >&2
  echo "0 1" > "$out"
  exit 1
fi
log=$(mktemp)
cargo test --manifest-path "$manifest" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{p += $4; f += $6} END {print p + 0}')
failed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{p += $4; f += $6} END {print f + 0}')
if [[ $status -ne 0 && $failed -eq 0 ]]; then failed=1; fi
echo "$passed $failed" > "$out"
rm -f "$log"
exit $status
