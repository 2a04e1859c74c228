#!/usr/bin/env bash
# One command from a fresh clone: install build dependencies, build softrdma
# and nvmf-rdma-rs, then run the #3463 fault demo (standalone target +
# initiator over softrdma; no RDMA hardware, no SPDK).
#   bash scripts/demo.sh [demo flags, e.g. --seconds 5 --port 4430]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-softrdma.sh
cargo build --release --bin nvmf-rdma-rs
tdir=${CARGO_TARGET_DIR:-target}
exec "$tdir/release/nvmf-rdma-rs" demo --softrdma "$PWD/target/softrdma" "$@"
