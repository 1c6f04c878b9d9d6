#!/usr/bin/env bash
# Runs a Python test folder with the repository's venv and writes "passed failed" to $2
# for the closing summary. No result file, or a run that failed without a failing test
# (collection error, no tests, a missing venv), counts as one failure.
#   scripts/run-pytest.sh e2e/python .test-results/python.counts
set -uo pipefail
dir="$1"
out="$2"
python="$(pwd)/.venv/bin/python"
xml=$(mktemp --suffix=.xml)
if [[ ! -x "$python" ]]; then
  echo "$python is missing: run 'make venv'" >&2
  echo "0 1" > "$out"
  exit 1
fi
(cd "$dir" && "$python" -m pytest --junitxml="$xml")
status=$?
counts=$("$python" - "$xml" <<'PY'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0")
    raise SystemExit
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
n = lambda key: sum(int(s.get(key, 0)) for s in suites)
failed = n("failures") + n("errors")
print(n("tests") - failed - n("skipped"), failed)
PY
)
read -r passed failed <<< "$counts"
if [[ $status -ne 0 && $failed -eq 0 ]]; then failed=1; fi
echo "$passed $failed" > "$out"
rm -f "$xml"
exit $status
