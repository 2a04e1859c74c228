#!/usr/bin/env bash
# Build softrdma (the userspace RDMA fabric) and stage it in <repo>/target/softrdma/:
#   libibverbs.so.1  librdmacm.so.1  softrdma-ctl
# Usage:  bash scripts/build-softrdma.sh
# Then:   LD_LIBRARY_PATH=target/softrdma ibv_devinfo
# Honours CARGO_TARGET_DIR (artifacts are looked up there). See docs/softrdma.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
pkgs=(-p softrdma-abi -p softrdma-ibverbs)
if [ -f softrdma/rdmacm/Cargo.toml ]; then
  pkgs+=(-p softrdma-rdmacm)
fi
cargo build --release "${pkgs[@]}"
tdir=${CARGO_TARGET_DIR:-$repo/target}
case "$tdir" in /*) ;; *) tdir=$repo/$tdir ;; esac
out=$repo/target/softrdma
mkdir -p "$out"
install -m 0755 "$tdir/release/libibverbs.so" "$out/libibverbs.so.1"
install -m 0755 "$tdir/release/softrdma-ctl" "$out/softrdma-ctl"
if [ -f "$tdir/release/librdmacm.so" ]; then
  install -m 0755 "$tdir/release/librdmacm.so" "$out/librdmacm.so.1"
fi
echo "softrdma staged in $out:"
ls -1 "$out"
