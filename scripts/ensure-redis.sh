#!/usr/bin/env bash
# Makes a Redis 7 available and prints its URL on stdout.
#   REDIS_URL set      -> checked and printed as is.
#   otherwise          -> a private redis-server under $1 (default .data/redis) with AOF on,
#                         on port $2 (default 6379; "free" picks a free port), started if not running.
# redis-server is installed with apt when missing and we are root; otherwise we say how.
set -euo pipefail
dir="${1:-.data/redis}"
port="${2:-6379}"

if [[ -n "${REDIS_URL:-}" ]]; then
  echo "$REDIS_URL"
  exit 0
fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server with apt-get..." >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2
  else
    echo "redis-server is missing: run 'sudo apt-get install redis-server' (or set REDIS_URL to an existing Redis 7)" >&2
    exit 1
  fi
fi

if [[ "$port" == "free" ]]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "redis://127.0.0.1:$port"
  exit 0
fi
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes --save '' \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >&2
for _ in $(seq 1 50); do
  redis-cli -p "$port" ping >/dev/null 2>&1 && { echo "redis://127.0.0.1:$port"; exit 0; }
  sleep 0.1
done
echo "redis-server did not start; see $dir/redis.log" >&2
exit 1
