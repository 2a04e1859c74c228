//! Interrupt mode (`nvmf_tgt --interrupt-mode`): SPDK never calls
//! `poll_group_poll` then, so each poll group registers its completion
//! channel fds as SPDK interrupts (the handler takes the events, re-arms and
//! polls until nothing is left), plus a 10 ms timer (a timerfd in interrupt
//! mode) for deadlines no fd announces: drains and abort retries. The
//! acceptor's CM and async fds are registered the same way on the app thread,
//! beside its timed poller. In polling mode nothing here is registered.

use std::ffi::{c_int, c_void, CStr};

use super::api::api;
use super::clock::now_ns;
use super::group::RsPollGroup;
use super::guard::guard;
use super::sys;

/// Period of a group's deadline timer in interrupt mode, in microseconds.
const DEADLINE_TIMER_US: u64 = 10_000;

/// Interrupts and timer registered for one object; unregistered on drop (on
/// the thread that registered them).
pub(crate) struct Interrupts {
    intrs: Vec<*mut sys::spdk_interrupt>,
    timer: *mut sys::spdk_poller,
}

impl Default for Interrupts {
    fn default() -> Self {
        Interrupts {
            intrs: Vec::new(),
            timer: std::ptr::null_mut(),
        }
    }
}

/// Whether SPDK runs in interrupt mode.
pub(crate) fn enabled() -> bool {
    // SAFETY: no arguments; reads SPDK's global mode.
    api().is_some_and(|api| unsafe { api.spdk_interrupt_mode_is_enabled() })
}

impl Interrupts {
    /// Registers `handler(arg)` for each fd and, with `timer`, a periodic
    /// `handler` run every [`DEADLINE_TIMER_US`].
    pub(crate) fn register(
        fds: &[c_int],
        handler: unsafe extern "C" fn(*mut c_void) -> c_int,
        arg: *mut c_void,
        name: &CStr,
        timer: bool,
    ) -> Interrupts {
        let mut me = Interrupts::default();
        let Some(api) = api() else { return me };
        for &fd in fds {
            // SAFETY: a live fd of ours (closed only after unregistering),
            // `arg` lives until `Drop`, which unregisters first.
            let i = unsafe { api.spdk_interrupt_register(fd, Some(handler), arg, name.as_ptr()) };
            if i.is_null() {
                tracing::error!("RDMA_RS: spdk_interrupt_register({name:?}, fd {fd}) failed");
            } else {
                me.intrs.push(i);
            }
        }
        if timer {
            // SAFETY: as above; a periodic poller is a timerfd in interrupt
            // mode.
            me.timer = unsafe {
                api.spdk_poller_register_named(Some(handler), arg, DEADLINE_TIMER_US, name.as_ptr())
            };
        }
        me
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        let Some(api) = api() else { return };
        for i in &mut self.intrs {
            // SAFETY: registered by us on this thread; NULLs it.
            unsafe { api.spdk_interrupt_unregister(i) };
        }
        if !self.timer.is_null() {
            // SAFETY: as above.
            unsafe { api.spdk_poller_unregister(&mut self.timer) };
        }
    }
}

/// A poll group's interrupt handler: an event on one of its channels, or
/// its deadline timer.
pub(crate) unsafe extern "C" fn group_event(arg: *mut c_void) -> c_int {
    guard("poll group interrupt", 0, || {
        // SAFETY: `arg` is the group that registered this handler; it
        // unregisters it before it is freed; this is its thread.
        let Some(g) = (unsafe { RsPollGroup::from_raw(arg.cast()) }) else {
            return 0;
        };
        let n = g.run(|pg| pg.handle_event(now_ns())).unwrap_or(0);
        c_int::from(n > 0)
    })
}
