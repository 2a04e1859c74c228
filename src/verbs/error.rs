//! Errors returned by the verbs wrappers.

use std::fmt;

/// The OS error number a failed verbs / rdma_cm call reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's current `errno`.
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// True for `EAGAIN` / `EWOULDBLOCK`.
    pub fn is_would_block(self) -> bool {
        self.0 == libc::EAGAIN || self.0 == libc::EWOULDBLOCK
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "errno {} ({})",
            self.0,
            std::io::Error::from_raw_os_error(self.0)
        )
    }
}

/// An error from a verbs or rdma_cm call, or from a wrapper's own checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerbsError {
    /// A libibverbs / librdmacm function failed.
    #[error("{call} failed: {errno}")]
    Call {
        /// The C function that failed.
        call: &'static str,
        /// The error it reported.
        errno: Errno,
    },
    /// A function that must return an object returned NULL.
    #[error("{call} returned NULL: {errno}")]
    Null {
        /// The C function that failed.
        call: &'static str,
        /// `errno` after the call.
        errno: Errno,
    },
    /// Posting work requests failed; WRs from `first_failed` on were not posted.
    #[error("{call} failed at WR #{first_failed} of {count}: {errno}")]
    Post {
        /// `ibv_post_send`, `ibv_post_recv` or `ibv_post_srq_recv`.
        call: &'static str,
        /// The error the provider returned.
        errno: Errno,
        /// Index in the WR list of the first WR that was not posted.
        first_failed: usize,
        /// Number of WRs in the list.
        count: usize,
    },
    /// A work-request list has no room for another WR or SGE.
    #[error("work-request list full: {what} capacity {capacity}")]
    ListFull {
        /// `"wr"` or `"sge"`.
        what: &'static str,
        /// The capacity that was exceeded.
        capacity: usize,
    },
    /// An argument does not fit the C API (e.g. private data longer than 255 bytes).
    #[error("invalid argument {name}: {value}")]
    InvalidArgument {
        /// Which argument.
        name: &'static str,
        /// Its value.
        value: u64,
    },
    /// The object needed for this call does not exist yet (e.g. no QP on a CM id).
    #[error("{0} is not available")]
    Missing(&'static str),
    /// The provider left an ops-table slot empty.
    #[error("provider has no {0} operation")]
    NoProviderOp(&'static str),
}

impl VerbsError {
    /// A `Call` error from the current `errno`.
    pub(crate) fn last(call: &'static str) -> VerbsError {
        VerbsError::Call {
            call,
            errno: Errno::last(),
        }
    }

    /// A `Call` error from a return code that is a positive errno (ibv_* style).
    pub(crate) fn code(call: &'static str, rc: i32) -> VerbsError {
        let errno = if rc > 0 { Errno(rc) } else { Errno::last() };
        VerbsError::Call { call, errno }
    }

    /// A `Null` error from the current `errno`.
    pub(crate) fn null(call: &'static str) -> VerbsError {
        VerbsError::Null {
            call,
            errno: Errno::last(),
        }
    }

    /// The errno carried by this error, if any.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            VerbsError::Call { errno, .. }
            | VerbsError::Null { errno, .. }
            | VerbsError::Post { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Result alias for the verbs module.
pub type Result<T> = std::result::Result<T, VerbsError>;
