//! The panic policy of every `extern "C"` entry point.
//!
//! A panic unwinding into SPDK's C frames would abort `nvmf_tgt`. Every entry
//! runs inside [`guard`]: a panic is caught, logged as an error naming the
//! op and the panic message, and the op returns the failure value SPDK
//! expects from it (NULL from `create` / `poll_group_create`, a negative errno
//! from int ops, nothing more from void ops). `destroy` still calls SPDK's
//! completion callback so shutdown goes on; the object the panic left behind
//! is leaked rather than freed in an unknown state.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`; on a panic logs it against `op` and returns `on_panic`.
/// Inlined into each entry point (a call per SPDK op was ~27 instructions
/// per I/O); the panic report itself is out of line.
#[inline(always)]
pub(crate) fn guard<R>(op: &'static str, on_panic: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            report(op, payload.as_ref());
            on_panic
        }
    }
}

/// Logs a panic caught in `op`.
#[cold]
#[inline(never)]
fn report(op: &str, payload: &(dyn std::any::Any + Send)) {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string());
    super::log::error_direct(&format!("RDMA_RS: panic in {op}: {msg}"));
}

#[cfg(test)]
mod tests {
    use super::guard;

    #[test]
    fn a_panic_becomes_the_failure_value() {
        assert_eq!(guard("test_op", -5, || 7), 7);
        assert_eq!(guard("test_op", -5, || -> i32 { panic!("boom") }), -5);
        let p: *mut u8 = guard("test_op", std::ptr::null_mut(), || panic!("boom"));
        assert!(p.is_null());
    }
}
