#!/usr/bin/env bash
# Engine instructions per I/O, counted by callgrind (repeatable on a loaded
# machine, unlike wall-clock time). For each scenario of
# crates/engine-bench/benches/engine.rs, runs the bench binary in its fixed-count
# mode (ENGINE_BENCH_COUNT) twice, with N1 and N2 I/Os, and prints
# (Ir(N2) - Ir(N1)) / (N2 - N1): setup and warm-up cancel out.
# Usage:  bash scripts/engine-icount.sh [scenario ...]
#         (default: read_4k write_4k write_4k_in_capsule read_4k_qd32)
# Env:    N1 (default 2048), N2 (default 10240), both multiples of 32.
# Honours CARGO_TARGET_DIR. See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
n1=${N1:-2048}
n2=${N2:-10240}
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(read_4k write_4k write_4k_in_capsule read_4k_qd32)
bin=$(cargo bench -p nvmf-rdma-engine-bench --bench engine --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\/engine-[0-9a-f]*\)".*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "engine bench binary not found" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
count() { # scenario ios -> total instructions
  ENGINE_BENCH_COUNT="$1:$2" valgrind --tool=callgrind --callgrind-out-file="$tmp/out" \
    "$bin" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
  grep -q "^$1: $2 I/Os (sim build: no)" "$tmp/log" || { cat "$tmp/log" >&2; exit 1; }
  sed -n 's/^summary: \([0-9]*\)/\1/p' "$tmp/out"
}
for s in "${scenarios[@]}"; do
  a=$(count "$s" "$n1")
  b=$(count "$s" "$n2")
  echo "$s: $(( (b - a) / (n2 - n1) )) instructions per I/O"
done
