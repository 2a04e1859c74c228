#!/usr/bin/env bash
# Side-by-side benchmark of softrdma builds under SPDK: upstream `nvmf_tgt` (RDMA transport, 64 MiB
# malloc bdev) and `spdk_nvme_perf` 4 KiB randread QD 32, on hugepages, runs alternating between the
# builds so that machine load hits them alike. Prints per run the IOPS, the CPU time both SPDK
# processes got (they busy-poll, so on a loaded machine IOPS follow their CPU share; I/Os per
# CPU second do not) and the softrdma counters of the target (mapped_bytes = memcpy path,
# copy_calls = process_vm_* calls). Needs perf (task-clock of the initiator).
#
# Usage: SPDK_DIR=/path/to/spdk bash scripts/bench-softrdma-spdk.sh LABEL=LIBDIR [LABEL=LIBDIR...]
# Env:   RUNS (3) rounds; SECS (5) seconds per perf run; MEM_MB (256) `-s` of each SPDK process;
#        PORT (45120) listen port; SPDK_EXTRA (empty) extra EAL flags for both processes, e.g. `-g`;
#        SCRATCH (/tmp/softrdma-spdk-bench) scratch directory (fabric dirs, logs, RPC socket).
# Needs hugepages (mount hugetlbfs on /dev/hugepages, set vm.nr_hugepages) and an SPDK build with
# --with-shared --with-rdma. Numbers are for comparison within one run, not assertions.
set -euo pipefail
: "${SPDK_DIR:?set SPDK_DIR to an SPDK build (--with-shared --with-rdma)}"
RUNS=${RUNS:-3} SECS=${SECS:-5} MEM_MB=${MEM_MB:-256} PORT=${PORT:-45120}
SPDK_EXTRA=${SPDK_EXTRA:-} SCRATCH=${SCRATCH:-/tmp/softrdma-spdk-bench}
[ $# -ge 1 ] || { echo "usage: $0 LABEL=LIBDIR [LABEL=LIBDIR...]" >&2; exit 2; }
for a in "$@"; do
  [ -f "${a#*=}/libibverbs.so.1" ] || { echo "no libibverbs.so.1 in ${a#*=} (from $a)" >&2; exit 2; }
done
nqn=nqn.2016-06.io.spdk:cnode1
mkdir -p "$SCRATCH"
tgt_pid=
cleanup() { [ -n "$tgt_pid" ] && kill -INT "$tgt_pid" 2>/dev/null && wait "$tgt_pid" 2>/dev/null; true; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of a pid, in clock ticks

one_run() { # label libdir round
  local label=$1 lib=$2 round=$3 dir=$SCRATCH/$1-$3
  rm -rf "$dir"; mkdir -p "$dir/shm"
  local env=(env "LD_LIBRARY_PATH=$lib:$SPDK_DIR/build/lib" "SOFTRDMA_SHM_DIR=$dir/shm" SOFTRDMA_QUIET=1)
  local sock=$dir/tgt.sock rpc=(python3 "$SPDK_DIR/scripts/rpc.py" -s "$dir/tgt.sock" -t 30)
  # shellcheck disable=SC2086
  "${env[@]}" "$SPDK_DIR/build/bin/nvmf_tgt" -s "$MEM_MB" --no-pci -m 0x1 $SPDK_EXTRA -r "$sock" \
    >"$dir/tgt.log" 2>&1 &
  tgt_pid=$!
  for _ in $(seq 300); do [ -S "$sock" ] && "${rpc[@]}" spdk_get_version >/dev/null 2>&1 && break; sleep 0.1; done
  "${rpc[@]}" nvmf_create_transport -t RDMA >/dev/null
  "${rpc[@]}" bdev_malloc_create -b Malloc0 64 512 >/dev/null
  "${rpc[@]}" nvmf_create_subsystem $nqn -a -s SPDK00000000000001 >/dev/null
  "${rpc[@]}" nvmf_subsystem_add_ns $nqn Malloc0 >/dev/null
  "${rpc[@]}" nvmf_subsystem_add_listener $nqn -t rdma -a 127.0.0.1 -s "$PORT" -f ipv4 >/dev/null
  local t0 t1
  t0=$(cpu_ticks "$tgt_pid")
  # shellcheck disable=SC2086
  perf stat -x, -e task-clock -o "$dir/perf.cpu" \
    "${env[@]}" timeout $((SECS + 60)) "$SPDK_DIR/build/bin/spdk_nvme_perf" -s "$MEM_MB" -c 0x2 $SPDK_EXTRA \
    -q 32 -o 4096 -w randread -t "$SECS" \
    -r "trtype:RDMA adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$nqn" >"$dir/perf.log" 2>&1 || true
  t1=$(cpu_ticks "$tgt_pid")
  local iops stats cpu
  iops=$(awk '/^Total/ {print $3}' "$dir/perf.log")
  # CPU seconds of both SPDK processes during the run (target: utime+stime ticks; initiator:
  # task-clock ms): I/Os per CPU second do not depend on how much CPU the scheduler gave them.
  cpu=$(awk -F, -v tk=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" \
    '/task-clock/ {printf "%.2f", $1 / 1000 + tk / hz}' "$dir/perf.cpu")
  stats=$(SOFTRDMA_SHM_DIR=$dir/shm "$lib/softrdma-ctl" stats "$tgt_pid" 2>/dev/null |
    grep -o 'mapped_bytes=[0-9]* copy_calls=[0-9]*' || true)
  kill -INT "$tgt_pid"; wait "$tgt_pid" 2>/dev/null || true; tgt_pid=
  printf '%-10s round %s: IOPS %-10s CPU %5s s  I/Os per CPU s %-8s target %s (load %s)\n' \
    "$label" "$round" "${iops:-FAILED}" "${cpu:-?}" \
    "$(awk -v i="${iops:-0}" -v s="$SECS" -v c="${cpu:-0}" 'BEGIN {if (c > 0) printf "%.0f", i * s / c}')" \
    "${stats:-?}" "$(cut -d' ' -f1 /proc/loadavg)"
  [ -n "$iops" ] || tail -5 "$dir/perf.log" >&2
}

echo "spdk_nvme_perf 4 KiB randread QD 32, ${SECS}s, -s $MEM_MB ${SPDK_EXTRA:+extra: $SPDK_EXTRA }($(date -u +%FT%TZ))"
for r in $(seq "$RUNS"); do
  for a in "$@"; do one_run "${a%%=*}" "${a#*=}" "$r"; done
done
