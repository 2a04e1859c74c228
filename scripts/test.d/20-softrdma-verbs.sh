#!/usr/bin/env bash
# Acceptance: rdma-core's own tools and qperf over softrdma's libibverbs (no CM), plus qperf -cm1
# when librdmacm is built. Every step is bounded by a timeout. Needs scripts/build-softrdma.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
lib=$(pwd)/target/softrdma
if [ ! -f "$lib/libibverbs.so.1" ]; then
  echo "softrdma is not built: run bash scripts/build-softrdma.sh" >&2
  exit 1
fi
export LD_LIBRARY_PATH=$lib
# A private fabric directory so runs never see stale state of other runs.
export SOFTRDMA_SHM_DIR=$(mktemp -d /dev/shm/softrdma-test.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$SOFTRDMA_SHM_DIR"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "-- $*"; }

step "ibv_devinfo"
out=$(timeout 20 ibv_devinfo) || fail "ibv_devinfo exited $?"
echo "$out"
grep -q "hca_id:.*softrdma0" <<<"$out" || fail "device softrdma0 not listed"
grep -q "PORT_ACTIVE" <<<"$out" || fail "port not active"
grep -q "link_layer:.*InfiniBand" <<<"$out" || fail "link layer is not InfiniBand"

step "ibv_devinfo -v"
out=$(timeout 20 ibv_devinfo -v) || fail "ibv_devinfo -v exited $?"
for f in "max_qp_wr:.*16384" "max_sge:.*32" "max_cqe:" "max_srq_wr:" "max_qp_rd_atom:.*16" "vendor_id:.*0x5fdb1"; do
  grep -q "$f" <<<"$out" || fail "ibv_devinfo -v lacks '$f'"
done

pingpong() {
  local tool=ibv_rc_pingpong
  case $1 in ibv_*) tool=$1; shift ;; esac
  local port=$1; shift
  timeout 60 $tool -p "$port" "$@" >/tmp/softrdma-pp-server.$$ 2>&1 &
  local spid=$!
  pids+=("$spid")
  sleep 0.5
  local ok=0
  for _ in 1 2 3 4 5; do
    if timeout 60 $tool -p "$port" "$@" 127.0.0.1 >/tmp/softrdma-pp-client.$$ 2>&1; then ok=1; break; fi
    grep -q "Couldn't connect" /tmp/softrdma-pp-client.$$ || break
    sleep 0.5
  done
  cat /tmp/softrdma-pp-client.$$
  [ $ok = 1 ] || { cat /tmp/softrdma-pp-server.$$; fail "$tool $* (client)"; }
  wait "$spid" || { cat /tmp/softrdma-pp-server.$$; fail "$tool $* (server)"; }
  grep -q "iters in" /tmp/softrdma-pp-client.$$ || fail "$tool $*: no result line"
  rm -f /tmp/softrdma-pp-server.$$ /tmp/softrdma-pp-client.$$
}
step "ibv_rc_pingpong"
pingpong 18515 -n 2000
step "ibv_rc_pingpong -e"
pingpong 18516 -e -n 2000
step "ibv_rc_pingpong -s 65536 -e"
pingpong 18517 -e -s 65536 -n 200
step "ibv_rc_pingpong -g 0 -e (GRH addressing)"
pingpong 18518 -g 0 -e -n 500
step "ibv_srq_pingpong -e (16 QPs on one SRQ)"
pingpong ibv_srq_pingpong 18519 -e -n 500
step "ibv_uc_pingpong -e"
pingpong ibv_uc_pingpong 18520 -e -n 500

step "leak check after ibv_rc_pingpong (every live-object counter is 0)"
stats=$("$lib/softrdma-ctl" stats)
echo "$stats"
[ "$(grep -c . <<<"$stats")" -ge 2 ] || fail "expected the pingpong processes in the fabric"
for c in contexts pds mrs cqs qps srqs comp_channels outstanding_sends; do
  if grep -Eq " $c=[1-9-]" <<<"$stats"; then fail "counter $c not 0 after ibv_rc_pingpong exited"; fi
done

step "qperf server"
timeout 300 qperf -lp 19765 >/tmp/softrdma-qperf-server.$$ 2>&1 &
pids+=("$!")
sleep 0.5
qp() {
  local out
  out=$(timeout 60 qperf -lp 19765 -t 1 "$@" 2>&1) || { echo "$out"; fail "qperf $*"; }
  echo "$out"
  grep -Eq "(bw|latency|msg_rate) +=" <<<"$out" || fail "qperf $*: no result"
}
for t in rc_bw rc_lat rc_rdma_read_bw rc_rdma_write_bw rc_rdma_read_lat rc_rdma_write_lat; do
  step "qperf $t"
  qp 127.0.0.1 "$t"
done
if [ -f "$lib/librdmacm.so.1" ]; then
  for t in rc_bw rc_lat rc_rdma_read_bw rc_rdma_write_bw rc_rdma_read_lat; do
    step "qperf -cm1 $t"
    qp -cm1 127.0.0.1 "$t"
  done
else
  echo "librdmacm.so.1 not built: skipping qperf -cm1"
fi

step "counters after qperf (qperf itself does not free its objects at exit)"
"$lib/softrdma-ctl" stats
echo "softrdma verbs acceptance: OK"
