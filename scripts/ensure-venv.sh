#!/usr/bin/env bash
# Makes the repository's Python venv ($1, default .venv) and installs the Python parts into it.
#   scripts/ensure-venv.sh .venv e2e/python[dev] [more pip install targets...]
# python3 -m venv needs Debian's python3-venv; it is installed with apt when missing and we are root.
set -euo pipefail
venv="${1:-.venv}"
shift || true
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
  echo "$python is missing: install Python 3.10 or newer (Debian: apt-get install python3 python3-venv)" >&2
  exit 1
fi
if [[ ! -x "$venv/bin/python" ]]; then
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
      echo "installing python3-venv with apt-get..." >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv) >&2
      "$python" -m venv "$venv"
    else
      echo "python3 -m venv failed: run 'sudo apt-get install python3-venv' (or use another Python 3.10+ as PYTHON=...)" >&2
      exit 1
    fi
  fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
