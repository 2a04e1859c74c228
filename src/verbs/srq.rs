//! Shared receive queues.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as sys;

use super::error::{Result, VerbsError};
use super::mr::Pd;
use super::wr::RecvWrList;

struct SrqInner {
    ptr: NonNull<sys::ibv_srq>,
    max_wr: u32,
    max_sge: u32,
    _pd: Pd,
}

// SAFETY: SRQ verbs (post, destroy) are thread-safe in libibverbs.
unsafe impl Send for SrqInner {}
// SAFETY: see Send.
unsafe impl Sync for SrqInner {}

impl Drop for SrqInner {
    fn drop(&mut self) {
        // SAFETY: every QP attached to the SRQ holds a clone, so none remains.
        let rc = unsafe { sys::ibv_destroy_srq(self.ptr.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_srq failed");
        }
    }
}

/// A shared receive queue (`ibv_srq`). Cheap to clone (shared with its QPs).
#[derive(Clone)]
pub struct Srq {
    inner: Arc<SrqInner>,
}

impl std::fmt::Debug for Srq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srq")
            .field("key", &self.key())
            .field("max_wr", &self.inner.max_wr)
            .finish()
    }
}

impl Srq {
    /// `ibv_create_srq` with `max_wr` receives of up to `max_sge` SGEs.
    pub fn new(pd: &Pd, max_wr: u32, max_sge: u32) -> Result<Srq> {
        let mut init = sys::ibv_srq_init_attr {
            srq_context: std::ptr::null_mut(),
            attr: sys::ibv_srq_attr {
                max_wr,
                max_sge,
                srq_limit: 0,
            },
        };
        // SAFETY: PD alive; `init` is a valid init attr; the provider writes
        // back the actual sizes.
        let p = unsafe { sys::ibv_create_srq(pd.as_ptr(), &mut init) };
        let ptr = NonNull::new(p).ok_or_else(|| VerbsError::null("ibv_create_srq"))?;
        Ok(Srq {
            inner: Arc::new(SrqInner {
                ptr,
                max_wr: init.attr.max_wr,
                max_sge: init.attr.max_sge,
                _pd: pd.clone(),
            }),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ibv_srq {
        self.inner.ptr.as_ptr()
    }

    /// Identity (address), as reported in SRQ async events.
    pub fn key(&self) -> usize {
        self.as_ptr() as usize
    }

    /// Actual max WRs.
    pub fn max_wr(&self) -> u32 {
        self.inner.max_wr
    }

    /// Actual max SGEs per WR.
    pub fn max_sge(&self) -> u32 {
        self.inner.max_sge
    }

    /// Post all receives in `list` with one `ibv_post_srq_recv`.
    ///
    /// On success the list is emptied. On failure it is left intact and the
    /// error's `first_failed` says which WRs (that index onward) were not
    /// posted; the caller then clears it. Memory safety of the SGEs is the
    /// contract of how they were built (see [`super::Sge::from_raw`]).
    pub fn post_recv(&self, list: &mut RecvWrList) -> Result<()> {
        let head = list.link();
        if head.is_null() {
            return Ok(());
        }
        let mut bad: *mut sys::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: SRQ alive; `head` is a well-formed chain inside `list`,
        // which stays borrowed for the call; the ops slot is checked. The
        // SGE memory contract is upheld by the Sge constructors.
        let rc = unsafe {
            let srq = self.as_ptr();
            let f = (*(*srq).context)
                .ops
                .post_srq_recv
                .ok_or(VerbsError::NoProviderOp("post_srq_recv"))?;
            f(srq, head, &mut bad)
        };
        if rc != 0 {
            let first_failed = if bad.is_null() { 0 } else { list.index_of(bad) };
            return Err(VerbsError::Post {
                call: "ibv_post_srq_recv",
                errno: super::Errno(rc.abs()),
                first_failed,
                count: list.len(),
            });
        }
        list.clear();
        Ok(())
    }
}
