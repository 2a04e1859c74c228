//! What link mode (`link-mode` feature, `spdk-patch/`) adds: the one public
//! function of SPDK's `lib/nvmf/rdma.c` that other code can call, so a
//! `libspdk_nvmf` built with this library in place of rdma.c still provides
//! every symbol of its version script (`spdk_nvmf.map`).
//!
//! The transport's other names (`RDMA`, the `rdma` log component, the
//! `nvmf_rdma` trace group) are the link-mode values of the constants in
//! `ops.rs`, `log.rs` and `trace.rs`.

use std::ffi::c_void;

/// `spdk_nvmf_rdma_init_hooks`: lets an application supply its own protection
/// domains and memory keys to upstream's RDMA transport. This transport has
/// no such hooks; as SPDK does when its RDMA transport is not built
/// (`lib/nvmf/stubs.c`), the call logs an error and aborts, rather than let
/// the application run with memory registered in a way it did not ask for.
#[no_mangle]
pub extern "C" fn spdk_nvmf_rdma_init_hooks(hooks: *mut c_void) {
    let msg = format!(
        "RDMA_RS: spdk_nvmf_rdma_init_hooks({hooks:p}) is not supported by the nvmf-rdma-rs \
         RDMA transport (link mode): aborting"
    );
    super::log::error_direct(&msg);
    std::process::abort();
}
