//! `tracing` events forwarded to SPDK's log.
//!
//! `nvmf_tgt` installs no `tracing` subscriber, so without this every error of
//! the transport would vanish. The constructor registers the log component
//! `rdma_rs` (`-L rdma_rs`, or the `log_set_flag` RPC) and installs a global
//! subscriber whose one layer calls `spdk_log`: ERROR, WARN and INFO map to
//! SPDK's ERROR, WARN and INFO; DEBUG and TRACE map to SPDK's DEBUG and are
//! passed on only while the `rdma_rs` flag is enabled (as `SPDK_DEBUGLOG`
//! does). SPDK's print level still decides what is printed.

use std::ffi::{c_int, CString};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicPtr, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use super::api::api;
use super::sys;

/// The SPDK log component of this transport.
#[cfg(not(feature = "link-mode"))]
pub(crate) const LOG_COMPONENT: &std::ffi::CStr = c"rdma_rs";
/// Link mode (spdk-patch/): rdma.c's component, so `-L rdma` keeps working.
#[cfg(feature = "link-mode")]
pub(crate) const LOG_COMPONENT: &std::ffi::CStr = c"rdma";

/// The registered flag; SPDK keeps the pointer and flips `enabled`.
static FLAG: AtomicPtr<sys::spdk_log_flag> = AtomicPtr::new(std::ptr::null_mut());

/// Registers `rdma_rs` and installs the forwarding subscriber (once, from the
/// constructor, after every SPDK symbol resolved).
pub(crate) fn install(api: &'static sys::SpdkApi) {
    if FLAG.load(Ordering::Acquire).is_null() {
        let flag = Box::leak(Box::new(sys::spdk_log_flag {
            name: LOG_COMPONENT.as_ptr(),
            ..Default::default()
        }));
        FLAG.store(flag, Ordering::Release);
        // SAFETY: `flag` is leaked, so it lives for the rest of the process as
        // SPDK requires of a registered flag; the name is a static C string.
        unsafe { api.spdk_log_register_flag(LOG_COMPONENT.as_ptr(), flag) };
    }
    let subscriber = tracing_subscriber::registry().with(SpdkLogLayer);
    // A process that already has a global subscriber keeps it.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Whether `-L rdma_rs` (or `log_set_flag rdma_rs`) is on.
fn debug_enabled() -> bool {
    let flag = FLAG.load(Ordering::Acquire);
    if flag.is_null() {
        return false;
    }
    // SAFETY: `flag` was leaked in `install` and is never freed; SPDK writes
    // `enabled` from its app thread, a volatile read sees a whole bool.
    unsafe { std::ptr::addr_of!((*flag).enabled).read_volatile() }
}

fn spdk_level(level: &Level) -> sys::spdk_log_level {
    match *level {
        Level::ERROR => sys::SPDK_LOG_ERROR,
        Level::WARN => sys::SPDK_LOG_WARN,
        Level::INFO => sys::SPDK_LOG_INFO,
        _ => sys::SPDK_LOG_DEBUG,
    }
}

/// NUL-free C string (interior NULs become spaces).
fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// Hands one message to `spdk_log`; a no-op before SPDK resolved.
fn emit(level: sys::spdk_log_level, file: &str, line: u32, func: &str, msg: &str) {
    let Some(api) = api() else {
        return;
    };
    let (file, func, msg) = (c_string(file), c_string(func), c_string(msg));
    let line = c_int::try_from(line).unwrap_or(c_int::MAX);
    // SAFETY: every pointer is a NUL-terminated string alive for the call;
    // the format "%s\n" consumes exactly the one `char *` passed.
    unsafe {
        (api.spdk_log)(
            level,
            file.as_ptr(),
            line,
            func.as_ptr(),
            c"%s\n".as_ptr(),
            msg.as_ptr(),
        )
    };
}

/// Logs an error straight to SPDK (or stderr when SPDK is not resolved),
/// bypassing `tracing`: used by the panic guard.
pub(crate) fn error_direct(msg: &str) {
    if api().is_some() {
        emit(sys::SPDK_LOG_ERROR, file!(), line!(), module_path!(), msg);
    } else {
        eprintln!("{msg}");
    }
}

/// The layer that forwards events to `spdk_log`.
struct SpdkLogLayer;

impl<S: Subscriber> Layer<S> for SpdkLogLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // DEBUG follows the runtime flag, so it may not be cached either way.
        if *meta.level() > Level::INFO {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::always()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        *meta.level() <= Level::INFO || debug_enabled()
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut text = MessageText::default();
        event.record(&mut text);
        emit(
            spdk_level(meta.level()),
            meta.file().unwrap_or("?"),
            meta.line().unwrap_or(0),
            meta.module_path().unwrap_or("rdma_rs"),
            &text.0,
        );
    }
}

/// The event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let mut rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                rest.insert(0, ' ');
                self.0.push_str(&rest);
            }
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}
