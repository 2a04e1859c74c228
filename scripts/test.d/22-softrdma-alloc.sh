#!/usr/bin/env bash
# Acceptance: softrdma's data path makes no heap allocation per work request. Runs the
# shm_bench example (SEND 4 KiB, WRITE and READ 128 KiB, both QPs in one thread) for a short
# and a long time under an LD_PRELOAD malloc/calloc/realloc counter; the long run executes at
# least 10 000 more WRs, so any per-WR allocation shows as a difference of 10 000 or more.
# Memory kinds: memfd (memcpy path) and anonymous (process_vm_* path).
# SOFTRDMA_LIB_DIR selects another staging directory (default target/softrdma).
set -euo pipefail
cd "$(dirname "$0")/../.."
lib=${SOFTRDMA_LIB_DIR:-$(pwd)/target/softrdma}
if [ ! -f "$lib/libibverbs.so.1" ]; then
  echo "softrdma is not built: run bash scripts/build-softrdma.sh" >&2
  exit 1
fi
tmp=$(mktemp -d)
export SOFTRDMA_SHM_DIR=$(mktemp -d /dev/shm/softrdma-test.XXXXXX)
trap 'rm -rf "$tmp" "$SOFTRDMA_SHM_DIR"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cargo build --release -q -p softrdma-ibverbs --example shm_bench
tdir=${CARGO_TARGET_DIR:-target}
bench=$tdir/release/examples/shm_bench
cat >"$tmp/count.c" <<'EOF'
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static unsigned long n;
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
void *malloc(size_t s) { __atomic_fetch_add(&n, 1, __ATOMIC_RELAXED); return __libc_malloc(s); }
void *calloc(size_t a, size_t b) { __atomic_fetch_add(&n, 1, __ATOMIC_RELAXED); return __libc_calloc(a, b); }
void *realloc(void *p, size_t s) { __atomic_fetch_add(&n, 1, __ATOMIC_RELAXED); return __libc_realloc(p, s); }
__attribute__((destructor)) static void fin(void) {
  char b[64];
  int l = snprintf(b, sizeof b, "allocs=%lu\n", n);
  write(2, b, l);
}
EOF
cc -shared -fPIC -O2 -o "$tmp/count.so" "$tmp/count.c" || fail "cannot build the malloc counter"

# run KIND SECONDS -> "allocs sends"
run() {
  local out
  out=$(LD_PRELOAD=$tmp/count.so LD_LIBRARY_PATH=$lib timeout 120 "$bench" "$1" "$2" local 2>&1) ||
    fail "shm_bench $1 $2 local exited $?: $out"
  local allocs rate
  allocs=$(sed -n 's/^allocs=//p' <<<"$out" | tail -1)
  rate=$(sed -n 's/.*send 4 KiB: \([0-9]*\) K msg\/s.*/\1/p' <<<"$out")
  [ -n "$allocs" ] && [ -n "$rate" ] || fail "shm_bench $1: no counts in: $out"
  echo "$allocs $((rate * 1000 * ${2%.*}))"
}

for kind in memfd anon; do
  read -r a_short _ < <(run "$kind" 0.3)
  read -r a_long sends < <(run "$kind" 2)
  echo "-- $kind: $a_short allocations in a 0.3 s run per test, $a_long in a 2 s run ($sends SENDs in its SEND phase alone)"
  [ "$sends" -ge 20000 ] || fail "$kind: too few SENDs ($sends) to tell"
  [ $((a_long - a_short)) -lt 10000 ] ||
    fail "$kind: $((a_long - a_short)) more allocations for at least 10 000 more WRs: the data path allocates per WR"
done
echo "softrdma allocation check: OK (no allocation per WR)"
