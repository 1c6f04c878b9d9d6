#!/usr/bin/env bash
# Runs every benchmark against every target with modest defaults and writes
# the combined output to bench/results/<UTC timestamp>.txt (git-ignored).
#   bench/run-all.sh                 # all targets
#   TARGETS=bare-aedes,mosquitto bench/run-all.sh
#   QUICK=1 bench/run-all.sh         # shorter windows, 3000 idle connections
# Each script stops itself (bounded counts and durations, plus a hard
# wall-clock deadline); `timeout` below is a second safety net.
set -uo pipefail
cd "$(dirname "$0")/.."

# Everything runs inside main(), which bash parses completely before running,
# so editing this file during a run cannot make bash re-read shifted lines.
main() {

TARGETS=${TARGETS:-all}
DUR=${DUR:-5}
IDLE_N=${IDLE_N:-10000}
if [[ "${QUICK:-0}" == "1" ]]; then DUR=3; IDLE_N=3000; fi

# idle-rss needs ~N file descriptors in this shell, the generator and the broker
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ts=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
out="bench/results/$ts.txt"

run() {
  echo
  echo "################ node $* --targets $TARGETS"
  timeout 900 node "$@" --targets "$TARGETS" 2>&1
  echo "################ exit code $?"
}

{
  echo "Fleetwire benchmark run $ts"
  echo "host: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "node $(node -v), $(mosquitto -h 2>/dev/null | head -1), redis $(redis-server --version | awk '{print $3}')"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo 'no commit yet') $(git status --porcelain 2>/dev/null | wc -l) changed paths"
  echo "fleetwire build: newest file in cli/dist broker/dist common/dist: $(find cli/dist broker/dist common/dist -type f -printf '%TY-%Tm-%TdT%TH:%TM:%.2TS %p\n' 2>/dev/null | sort | tail -1 || echo missing)"
  echo "pinning: broker -> cpu ${BENCH_BROKER_CPU:-0}, load generator + redis -> cpu ${BENCH_LOAD_CPU:-1}; RLIMIT_NOFILE $(ulimit -n)"
  run bench/smoke.mjs
  run bench/fanout.mjs --transport ws --duration "$DUR"
  run bench/fanout.mjs --transport tcp --duration "$DUR"
  run bench/fanin.mjs --transport ws --duration "$DUR"
  run bench/fanin.mjs --transport tcp --duration "$DUR"
  run bench/latency.mjs --duration $((DUR * 2))
  run bench/connects.mjs
  run bench/idle-rss.mjs --n "$IDLE_N"
  run bench/flood.mjs
  run bench/flood-isolated.mjs
} 2>&1 | tee "$out"

echo
echo "results written to $out"
}

main "$@"
exit
