#!/usr/bin/env bash
# Whole nvmf_tgt --interrupt-mode instructions and reactor wake-ups per I/O,
# counted by callgrind, with an aio bdev on /dev/shm: SPDK's aio bdev supports
# interrupts, so the reactor sleeps when idle (the malloc and null bdevs have
# period-0 pollers that SPDK turns into always-readable eventfds: the reactor
# would spin and the count would follow wall time). One target (upstream RDMA
# or this project's RDMA_RS), `nvmf-rdma-rs perf --ios N1` then `--ios N2`
# 4 KiB I/Os, a callgrind dump after each; prints per I/O ((N2 - N1) I/Os):
# the whole process's instructions and the calls of epoll_wait (reactor
# wake-ups), read and SPDK's _interrupt_wrapper (interrupt handlers run).
# Usage:  bash scripts/interrupt-wakeups.sh RDMA|RDMA_RS
# Env:    SPDK_DIR (required), PLUGIN (default $CARGO_TARGET_DIR or target,
#         release/libnvmf_rdma_rs.so), INITIATOR (same dir, nvmf-rdma-rs),
#         SOFTRDMA (target/softrdma), QD (1), WORKLOAD (randread), N1 (500),
#         N2 (4500), PORT (4420), OUT (a fresh dir under /tmp, kept).
# Needs valgrind, hugepages (nvmf_tgt -s 512), softrdma staged. See
# docs/benchmarks.md ("Inside SPDK").
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:?usage: interrupt-wakeups.sh RDMA|RDMA_RS}
: "${SPDK_DIR:?SPDK_DIR must name an SPDK tree built with --with-shared --with-rdma}"
TD=${CARGO_TARGET_DIR:-target}
PLUGIN=${PLUGIN:-$TD/release/libnvmf_rdma_rs.so}
INITIATOR=${INITIATOR:-$TD/release/nvmf-rdma-rs}
SOFTRDMA=$(realpath "${SOFTRDMA:-target/softrdma}")
QD=${QD:-1} WORKLOAD=${WORKLOAD:-randread} N1=${N1:-500} N2=${N2:-4500} PORT=${PORT:-4420}
OUT=${OUT:-$(mktemp -d /tmp/interrupt-wakeups.XXXXXX)}
command -v valgrind >/dev/null || { echo "valgrind is not installed"; exit 2; }
[ -x "$INITIATOR" ] || { echo "no initiator at $INITIATOR (cargo build --release)"; exit 2; }
[ "$T" = RDMA ] || [ -f "$PLUGIN" ] || { echo "no plugin at $PLUGIN (SPDK_DIR=... cargo build --release)"; exit 2; }
mkdir -p "$OUT/shm"
export LD_LIBRARY_PATH=$SOFTRDMA:$SPDK_DIR/build/lib SOFTRDMA_QUIET=1 SOFTRDMA_SHM_DIR=$OUT/shm
pre=""
[ "$T" = RDMA_RS ] && pre=$(realpath "$PLUGIN")
sock=$OUT/tgt.sock img=/dev/shm/interrupt-wakeups-$$.img nqn=nqn.2016-06.io.spdk:cnode1
LD_PRELOAD=$pre valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" \
  "$SPDK_DIR/build/bin/nvmf_tgt" -m 0x1 -s 512 --disable-cpumask-locks --interrupt-mode \
  -r "$sock" >"$OUT/tgt.log" 2>&1 &
tgt=$!
trap 'kill -INT $tgt 2>/dev/null || true; rm -f "$img"' EXIT
for _ in $(seq 600); do [ -S "$sock" ] && break; sleep 0.2; done
rpc() { python3 "$SPDK_DIR/scripts/rpc.py" -t 120 -s "$sock" "$@" >/dev/null; }
truncate -s 64M "$img"
rpc nvmf_create_transport -t "$T"
rpc bdev_aio_create "$img" aio0 512
rpc nvmf_create_subsystem $nqn -a -s SPDK00000000000001
rpc nvmf_subsystem_add_ns $nqn aio0
rpc nvmf_subsystem_add_listener $nqn -t "$T" -a 127.0.0.1 -s "$PORT" -f ipv4
io() {
  NVMF_RDMA_RS_LOG=warn LD_LIBRARY_PATH=$SOFTRDMA "$INITIATOR" perf --addr "127.0.0.1:$PORT" \
    --nqn $nqn --workload "$WORKLOAD" --io-size 4096 -q "$QD" --time 600 --ios "$1" \
    --command-timeout-ms 60000 --connect-timeout-ms 60000 >"$OUT/perf-$1.log" 2>&1
}
dump() { callgrind_control "$1" $tgt >/dev/null 2>&1; sleep 2; }
io 50
dump -z
io "$N1"
dump -d
io "$N2"
dump -d
kill -INT $tgt
wait $tgt || true
python3 - "$OUT/cg.out.1" "$OUT/cg.out.2" $((N2 - N1)) "$T $WORKLOAD QD $QD" <<'EOF'
import re, sys

def parse(path):
    """Total Ir and calls per callee name of one callgrind dump."""
    total, names, calls, callee = 0, {}, {}, None
    for line in open(path, errors="replace"):
        if line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2).strip()
            callee = names.get(m.group(1)) if line.startswith("cfn=") else None
            continue
        m = re.match(r"calls=(\d+)", line)
        if m and callee is not None:
            calls[callee] = calls.get(callee, 0) + int(m.group(1))
            callee = None
    return total, calls

(t1, c1), (t2, c2), n = parse(sys.argv[1]), parse(sys.argv[2]), int(sys.argv[3])
per = lambda f: (c2.get(f, 0) - c1.get(f, 0)) / n
print(f"{sys.argv[4]}: whole nvmf_tgt {(t2 - t1) / n:.0f} Ir/I/O; epoll_wait {per('epoll_wait'):.2f}, "
      f"read {per('read'):.2f}, _interrupt_wrapper {per('_interrupt_wrapper'):.2f} per I/O")
EOF
echo "logs and dumps: $OUT"
