#!/usr/bin/env bash
# Installs what building and testing nvmf-rdma-rs needs on a fresh Debian
# machine: rdma-core development files (rdma-sys links against them; softrdma
# replaces the libraries at run time), libclang for bindgen, rdma-core's and
# qperf's tools (softrdma's acceptance clients), and the Rust components.
# Idempotent: does nothing that is already done.
set -euo pipefail

pkgs=(pkg-config clang libclang-dev libibverbs-dev librdmacm-dev ibverbs-utils rdmacm-utils qperf)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
