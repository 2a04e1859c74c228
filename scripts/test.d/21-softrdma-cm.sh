#!/usr/bin/env bash
# softrdma acceptance, CM half: rdma-core's rping and ucmatose (server + client processes)
# over softrdma's librdmacm.so.1 + libibverbs.so.1 (LD_LIBRARY_PATH=target/softrdma).
# Every process is bounded by `timeout`; any failure fails the script.
# Needs: rdmacm-utils (rping, ucmatose); scripts/build-softrdma.sh already run.
set -euo pipefail
cd "$(dirname "$0")/../.."
lib=${SOFTRDMA_LIB_DIR:-$PWD/target/softrdma}
for f in libibverbs.so.1 librdmacm.so.1; do
  [ -f "$lib/$f" ] || { echo "21-softrdma-cm: $lib/$f missing; run bash scripts/build-softrdma.sh" >&2; exit 1; }
done
for b in rping ucmatose; do
  command -v "$b" >/dev/null || { echo "21-softrdma-cm: $b not installed (apt-get install rdmacm-utils)" >&2; exit 1; }
done
export LD_LIBRARY_PATH=$lib
# A private fabric (and CM name space) so runs never meet other runs' processes or state.
export SOFTRDMA_SHM_DIR=$(mktemp -d /dev/shm/softrdma-test.XXXXXX)
log=$(mktemp -d /tmp/softrdma-cm.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$SOFTRDMA_SHM_DIR"
}
trap cleanup EXIT

# Wait (bounded) until a softrdma CM listener is bound on <port>.
wait_listener() {
  for _ in $(seq 1 100); do
    grep -q "@softrdma/[^/]*/cm/106/.*/$1\$" /proc/net/unix && return 0
    sleep 0.05
  done
  echo "21-softrdma-cm: no listener on port $1" >&2
  return 1
}

# server_client <name> <port> "<server cmd>" "<client cmd>"
server_client() {
  local name=$1 port=$2 scmd=$3 ccmd=$4
  echo "-- $name"
  timeout 60 $scmd >"$log/$name.server" 2>&1 &
  local spid=$!
  pids+=("$spid")
  wait_listener "$port"
  if ! timeout 60 $ccmd >"$log/$name.client" 2>&1; then
    echo "21-softrdma-cm: $name client failed:"; cat "$log/$name.client"; echo "server:"; cat "$log/$name.server"
    exit 1
  fi
  if ! wait "$spid"; then
    echo "21-softrdma-cm: $name server failed:"; cat "$log/$name.server"; echo "client:"; cat "$log/$name.client"
    exit 1
  fi
}

# rping: 100 pings, data verified by the client (-V), IPv4 and IPv6.
server_client rping-v4 7174 "rping -s -a 127.0.0.1 -p 7174 -v" "rping -c -a 127.0.0.1 -p 7174 -v -V -C 100"
n=$(grep -c '^ping data: rdma-ping-' "$log/rping-v4.client")
[ "$n" -eq 100 ] || { echo "21-softrdma-cm: rping client printed $n pings, want 100"; exit 1; }
server_client rping-v6 7175 "rping -s -a ::1 -p 7175 -v" "rping -c -a ::1 -p 7175 -v -V -C 100"
n=$(grep -c '^ping data: rdma-ping-' "$log/rping-v6.client")
[ "$n" -eq 100 ] || { echo "21-softrdma-cm: rping (IPv6) client printed $n pings, want 100"; exit 1; }

# rping -q: the application creates its QP itself (rdma_init_qp_attr, CONNECT_RESPONSE,
# rdma_establish on the active side).
server_client rping-q 7176 "rping -s -q -a 127.0.0.1 -p 7176 -v" "rping -c -q -a 127.0.0.1 -p 7176 -v -V -C 20"
n=$(grep -c '^ping data: rdma-ping-' "$log/rping-q.client")
[ "$n" -eq 20 ] || { echo "21-softrdma-cm: rping -q client printed $n pings, want 20"; exit 1; }

# ucmatose: default (1 connection, 10 messages), then 8 connections with channel migration.
server_client ucmatose 7471 "ucmatose -p 7471" "ucmatose -s 127.0.0.1 -p 7471"
server_client ucmatose-multi 7472 "ucmatose -p 7472 -c 8 -C 20" "ucmatose -s 127.0.0.1 -p 7472 -c 8 -C 20 -m"
for f in "$log"/ucmatose*.server "$log"/ucmatose*.client; do
  grep -q "return status 0" "$f" || { echo "21-softrdma-cm: $f did not report success:"; cat "$f"; exit 1; }
done
echo "21-softrdma-cm: rping (IPv4, IPv6: 100 verified pings; -q) and ucmatose (1 and 8 connections) passed"
rm -rf "$log"
