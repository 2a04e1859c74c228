//! Stubs for the parts of the rdma-core 44 ABI softrdma does not implement (provider-private
//! `ibv_cmd_*`, `@IBVERBS_1.0` compat variants, multicast, DM, ...). Each reports itself once on
//! stderr and fails: pointer-returning ones return NULL with `errno = ENOSYS`, int-returning ones
//! return `ENOSYS` (positive, the libibverbs convention) with `errno = ENOSYS`.

use std::collections::HashSet;
use std::sync::Mutex;

/// How a stub fails.
#[derive(Clone, Copy)]
pub(crate) enum StubKind {
    /// Returns NULL, errno = ENOSYS.
    Ptr,
    /// Returns ENOSYS, errno = ENOSYS.
    Errno,
    /// Returns nothing useful (void functions): no-op.
    Void,
}

static REPORTED: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

/// Report `name` once and produce the stub's return value.
pub(crate) fn unimplemented(name: &'static str, kind: StubKind) -> usize {
    let first = {
        let mut g = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert_with(HashSet::new).insert(name)
    };
    if first && !matches!(kind, StubKind::Void) {
        crate::log::warn(&format!(
            "{name} is not implemented by softrdma (returns ENOSYS)"
        ));
    }
    match kind {
        StubKind::Ptr => {
            crate::util::set_errno(libc::ENOSYS);
            0
        }
        StubKind::Errno => {
            crate::util::set_errno(libc::ENOSYS);
            libc::ENOSYS as usize
        }
        StubKind::Void => 0,
    }
}

macro_rules! stub {
    ($id:ident, $name:expr, $kind:expr) => {
        extern "C" fn $id() -> usize {
            crate::stubs::unimplemented($name, $kind)
        }
    };
}
pub(crate) use stub;

/// `verbs_register_driver_34`: called by provider constructors (libmlx5/libmlx4 loaded by DPDK).
/// softrdma has no provider plugins; registering is a silent no-op.
pub(crate) extern "C" fn register_driver_noop() {}
