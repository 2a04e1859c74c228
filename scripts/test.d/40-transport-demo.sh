#!/usr/bin/env bash
# The #3463 demo as an acceptance test: standalone target + initiator over
# softrdma, fault injected, teardown checked, verified I/O after. Uses the
# dev-profile binary that `cargo test` already built; installs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --bin nvmf-rdma-rs
tdir=${CARGO_TARGET_DIR:-target}
NVMF_RDMA_RS_LOG=warn timeout 180 "$tdir/debug/nvmf-rdma-rs" demo \
  --softrdma "$PWD/target/softrdma" --seconds 1 --port 4431
