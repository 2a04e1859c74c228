#!/usr/bin/env bash
# Side-by-side qperf over softrdma builds: rc_lat (1 byte) and rc_bw (4 KiB), each with
# completion events (qperf's default) and with polling (-cp 1), runs alternating between the
# builds so that machine load hits them alike. Each build gets its own fabric directory.
#
# Usage: bash scripts/bench-softrdma-qperf.sh LABEL=LIBDIR [LABEL=LIBDIR...]
# Env:   RUNS (3) rounds; SECS (3) seconds per test; PORT (45140) qperf listen port;
#        SCRATCH (/tmp/softrdma-qperf-bench) fabric directories.
# Numbers are for comparison within one run, not assertions.
set -euo pipefail
RUNS=${RUNS:-3} SECS=${SECS:-3} PORT=${PORT:-45140} SCRATCH=${SCRATCH:-/tmp/softrdma-qperf-bench}
[ $# -ge 1 ] || { echo "usage: $0 LABEL=LIBDIR [LABEL=LIBDIR...]" >&2; exit 2; }
for a in "$@"; do
  [ -f "${a#*=}/libibverbs.so.1" ] || { echo "no libibverbs.so.1 in ${a#*=} (from $a)" >&2; exit 2; }
done
srv=
trap '[ -n "$srv" ] && kill "$srv" 2>/dev/null; true' EXIT

one_run() { # label libdir round
  local label=$1 lib=$2 dir=$SCRATCH/$1-$3 line=
  rm -rf "$dir"; mkdir -p "$dir"
  export LD_LIBRARY_PATH=$lib SOFTRDMA_SHM_DIR=$dir SOFTRDMA_QUIET=1
  qperf -lp "$PORT" >/dev/null 2>&1 &
  srv=$!
  sleep 0.3
  for cp in "" "-cp 1"; do
    # shellcheck disable=SC2086
    out=$(timeout $((4 * SECS + 30)) qperf $cp -lp "$PORT" -t "$SECS" 127.0.0.1 -m 1 rc_lat -m 4096 rc_bw 2>&1 || true)
    lat=$(awk '/^ *latency/ {print $3, $4}' <<<"$out")
    bw=$(awk '/^ *bw/ {print $3, $4}' <<<"$out")
    line+=$(printf ' | %-6s rc_lat %-10s rc_bw %-10s' "${cp:-events}" "${lat:-FAILED}" "${bw:-FAILED}")
  done
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null || true; srv=
  unset LD_LIBRARY_PATH SOFTRDMA_SHM_DIR SOFTRDMA_QUIET
  printf '%-8s round %s%s (load %s)\n' "$label" "$3" "$line" "$(cut -d' ' -f1 /proc/loadavg)"
}

echo "qperf rc_lat 1 B / rc_bw 4 KiB, ${SECS}s each ($(date -u +%FT%TZ))"
for r in $(seq "$RUNS"); do
  for a in "$@"; do one_run "${a%%=*}" "${a#*=}" "$r"; done
done
