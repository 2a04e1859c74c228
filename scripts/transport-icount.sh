#!/usr/bin/env bash
# Transport instructions per I/O, counted by callgrind (repeatable, unlike
# wall-clock time). For each scenario of benches/transport.rs (one poll group
# over softrdma, an ideal host, an in-process initiator on the same thread),
# runs the bench binary in its fixed-count mode (TRANSPORT_BENCH_COUNT) with
# N1 and N2 I/Os, each twice: once counting the whole main thread, once
# counting only inside PollGroup::poll (the target's side). Prints per I/O
# ((Ir(N2) - Ir(N1)) / (N2 - N1), so setup and warm-up cancel out):
#   all       the main thread: initiator + target + softrdma on both sides
#   target    inside PollGroup::poll: transport + engine + ideal host + the
#             verbs provider calls the target makes
#   ours      of target: code in the bench binary (transport, engine, host, std)
#   provider  of target: softrdma's libibverbs (what a NIC provider would be)
#   libc      of target: libc and the dynamic loader
# Usage:  bash scripts/transport-icount.sh [scenario ...]
#         (default: read_4k write_4k write_4k_in_capsule read_4k_qd32)
# Env:    N1 (default 1024), N2 (default 5120), both multiples of 32;
#         TRANSPORT_BENCH_PORT (default 4420; the fabric directory is private).
# Needs softrdma staged (bash scripts/build-softrdma.sh). Honours
# CARGO_TARGET_DIR. See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
n1=${N1:-1024}
n2=${N2:-5120}
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(read_4k write_4k write_4k_in_capsule read_4k_qd32)
lib=${SOFTRDMA_LIB_DIR:-$(pwd)/target/softrdma}
[ -f "$lib/libibverbs.so.1" ] || { echo "softrdma not staged in $lib: run bash scripts/build-softrdma.sh" >&2; exit 1; }
bin=$(cargo bench --bench transport --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\/transport-[0-9a-f]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "transport bench binary not found" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/fabric"
poll='nvmf_rdma_rs::transport::poll_group::PollGroup<H>::poll'
# Self cost per object of a callgrind file, as "object instructions" lines
# (a cost line right after calls= is the call's inclusive cost: skipped).
by_object() {
  awk '
    /^c?ob=/ { s = $0; sub(/^c?ob=/, "", s); id = s; sub(/ .*/, "", id); nm = s
               sub(/^[^ ]* ?/, "", nm); if (nm != "") name[id] = nm
               if ($0 ~ /^ob=/) cur = id; next }
    /^calls=/ { skip = 1; next }
    /^[0-9+*-]/ { if (skip) { skip = 0; next } sum[cur] += $2; next }
    END { for (o in sum) print name[o], sum[o] }' "$1"
}
count() { # scenario ios [toggle] -> "all <Ir>" or per-object lines for the toggled run
  local args=(--tool=callgrind --separate-threads=yes --callgrind-out-file="$tmp/out")
  [ -z "${3:-}" ] || args+=("--toggle-collect=$3")
  rm -f "$tmp"/out*
  TRANSPORT_BENCH_CHILD=1 LD_LIBRARY_PATH="$lib" SOFTRDMA_SHM_DIR="$tmp/fabric" SOFTRDMA_QUIET=1 \
    TRANSPORT_BENCH_COUNT="$1:$2" valgrind "${args[@]}" "$bin" >"$tmp/log" 2>&1 ||
    { cat "$tmp/log" >&2; exit 1; }
  grep -q "^$1: $2 I/Os" "$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
  if [ -z "${3:-}" ]; then
    echo "all $(sed -n 's/^summary: \([0-9]*\)/\1/p' "$tmp/out-01")"
  else
    by_object "$tmp/out-01" | awk '
      $1 ~ /\/deps\/transport-/ { o += $2; next }
      $1 ~ /libibverbs|librdmacm/ { p += $2; next }
      { l += $2 }
      END { printf "ours %d\nprovider %d\nlibc %d\ntarget %d\n", o, p, l, o + p + l }'
  fi
}
per_io() { # file1 file2 key -> per-I/O difference
  local a b
  a=$(awk -v k="$3" '$1 == k { print $2 }' "$1")
  b=$(awk -v k="$3" '$1 == k { print $2 }' "$2")
  echo $(( (b - a) / (n2 - n1) ))
}
for s in "${scenarios[@]}"; do
  { count "$s" "$n1"; count "$s" "$n1" "$poll"; } >"$tmp/a"
  { count "$s" "$n2"; count "$s" "$n2" "$poll"; } >"$tmp/b"
  echo "$s: instructions per I/O: all $(per_io "$tmp/a" "$tmp/b" all)," \
    "target $(per_io "$tmp/a" "$tmp/b" target)" \
    "(ours $(per_io "$tmp/a" "$tmp/b" ours)," \
    "provider $(per_io "$tmp/a" "$tmp/b" provider)," \
    "libc $(per_io "$tmp/a" "$tmp/b" libc))"
done
