#!/usr/bin/env bash
# The end-to-end data and fault suites again, with the standalone target in
# each other way of driving the transport (the default polling mode already
# ran under `cargo test`):
#   --reentrant-host  the host completes inside execute and frees/finishes
#                     inside disconnect (the SPDK generic layer's behaviour)
#   --interrupt-mode  poll groups sleep in epoll on their completion channels
# A suite that ran no test fails the step (no vacuous pass).
set -euo pipefail
cd "$(dirname "$0")/../.."
for mode in --reentrant-host --interrupt-mode; do
  for suite in e2e_data e2e_faults; do
    echo "== $suite with target $mode"
    out=$(NVMF_E2E_TARGET_ARGS="$mode" cargo test --test "$suite" 2>&1) || { echo "$out"; exit 1; }
    echo "$out" | grep -E "^test result:"
    echo "$out" | grep -qE "^test result: ok\. [1-9][0-9]* passed" || { echo "$out"; echo "$suite ran no test"; exit 1; }
  done
done
