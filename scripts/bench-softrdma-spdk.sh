#!/usr/bin/env bash
# Side-by-side benchmark of softrdma builds under SPDK: upstream `nvmf_tgt` (RDMA transport, 64 MiB
# malloc bdev) and `spdk_nvme_perf` 4 KiB randread QD 32, on hugepages, runs alternating between the
# builds so that machine load hits them alike. Prints one IOPS line per run and the softrdma
# counters (mapped_bytes = memcpy path, copy_calls = process_vm_* calls) of the target.
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
  # shellcheck disable=SC2086
  "${env[@]}" timeout $((SECS + 60)) "$SPDK_DIR/build/bin/spdk_nvme_perf" -s "$MEM_MB" -c 0x2 $SPDK_EXTRA \
    -q 32 -o 4096 -w randread -t "$SECS" \
    -r "trtype:RDMA adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:$nqn" >"$dir/perf.log" 2>&1 || true
  local iops stats
  iops=$(awk '/^Total/ {print $3}' "$dir/perf.log")
  stats=$(SOFTRDMA_SHM_DIR=$dir/shm "$lib/softrdma-ctl" stats "$tgt_pid" 2>/dev/null |
    grep -o 'mapped_bytes=[0-9]* copy_calls=[0-9]*' || true)
  kill -INT "$tgt_pid"; wait "$tgt_pid" 2>/dev/null || true; tgt_pid=
  printf '%-10s round %s: IOPS %-10s target %s (load %s)\n' "$label" "$round" "${iops:-FAILED}" \
    "${stats:-?}" "$(cut -d' ' -f1 /proc/loadavg)"
  [ -n "$iops" ] || tail -5 "$dir/perf.log" >&2
}

echo "spdk_nvme_perf 4 KiB randread QD 32, ${SECS}s, -s $MEM_MB ${SPDK_EXTRA:+extra: $SPDK_EXTRA }($(date -u +%FT%TZ))"
for r in $(seq "$RUNS"); do
  for a in "$@"; do one_run "${a%%=*}" "${a#*=}" "$r"; done
done
