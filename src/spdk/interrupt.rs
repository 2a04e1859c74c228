//! Interrupt mode (`nvmf_tgt --interrupt-mode`): SPDK never calls
//! `poll_group_poll` then. As upstream rdma.c does: each poller's completion
//! channel fd is an SPDK interrupt of its own, whose handler takes that
//! channel's event, re-arms its CQ and polls the group until nothing is left;
//! the acceptor's CM and async fds are interrupts on the app thread. Beyond
//! upstream, a timer (a timerfd in interrupt mode) for what no fd announces,
//! registered only while there is some: a group's while it has a deadline (a
//! qpair draining, an abort being retried) or a request waiting for buffers;
//! the acceptor's while a device is dead (rescans). An idle target never
//! wakes. In polling mode nothing here is registered.

use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};

use super::api::api;
use super::group::RsPollGroup;
use super::guard::guard;
use super::sys;

/// Period of the on-demand timers (a group's while it has a deadline, the
/// acceptor's while a device is dead), in microseconds.
pub(crate) const TIMER_US: u64 = 10_000;

/// An SPDK interrupt handler.
pub(crate) type Handler = unsafe extern "C" fn(*mut c_void) -> c_int;

/// Interrupts registered for one object; unregistered on drop (on the
/// thread that registered them).
#[derive(Default)]
pub(crate) struct Interrupts {
    intrs: Vec<*mut sys::spdk_interrupt>,
}

/// Whether SPDK runs in interrupt mode.
pub(crate) fn enabled() -> bool {
    // SAFETY: no arguments; reads SPDK's global mode.
    api().is_some_and(|api| unsafe { api.spdk_interrupt_mode_is_enabled() })
}

impl Interrupts {
    /// Registers `handler(arg(i))` for each fd `fds[i]`.
    pub(crate) fn register(
        fds: &[c_int],
        handler: Handler,
        arg: impl Fn(usize) -> *mut c_void,
        name: &CStr,
    ) -> Interrupts {
        let mut me = Interrupts::default();
        let Some(api) = api() else { return me };
        for (i, &fd) in fds.iter().enumerate() {
            // SAFETY: a live fd of ours (closed only after unregistering);
            // the argument lives until `Drop`, which unregisters first.
            let r =
                unsafe { api.spdk_interrupt_register(fd, Some(handler), arg(i), name.as_ptr()) };
            if r.is_null() {
                tracing::error!("RDMA_RS: spdk_interrupt_register({name:?}, fd {fd}) failed");
            } else {
                me.intrs.push(r);
            }
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
    }
}

/// A periodic SPDK poller registered only while wanted ([`Timer::want`]);
/// unregistered on drop. Used from its owner's thread only.
pub(crate) struct Timer {
    poller: Cell<*mut sys::spdk_poller>,
    handler: Handler,
    arg: *mut c_void,
    period_us: u64,
    name: &'static CStr,
}

impl Timer {
    /// A timer that runs `handler(arg)` every `period_us` while wanted; `arg`
    /// must outlive it.
    pub(crate) fn new(
        handler: Handler,
        arg: *mut c_void,
        period_us: u64,
        name: &'static CStr,
    ) -> Timer {
        Timer {
            poller: Cell::new(std::ptr::null_mut()),
            handler,
            arg,
            period_us,
            name,
        }
    }

    /// Registers the poller if `on` and it is not, unregisters it if it is
    /// and not `on` (also from inside its own handler, as SPDK allows).
    pub(crate) fn want(&self, on: bool) {
        if on != self.poller.get().is_null() {
            return;
        }
        let Some(api) = api() else { return };
        if on {
            // SAFETY: `arg` outlives the timer (caller's contract), which
            // unregisters the poller on drop; a static name.
            let p = unsafe {
                api.spdk_poller_register_named(
                    Some(self.handler),
                    self.arg,
                    self.period_us,
                    self.name.as_ptr(),
                )
            };
            if p.is_null() {
                tracing::error!("RDMA_RS: spdk_poller_register({:?}) failed", self.name);
            }
            self.poller.set(p);
        } else {
            let mut p = self.poller.replace(std::ptr::null_mut());
            // SAFETY: registered by us on this (the owner's) thread.
            unsafe { api.spdk_poller_unregister(&mut p) };
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.want(false);
    }
}

/// What a channel interrupt's handler gets: its group and the poller whose
/// channel it is.
struct ChannelArg {
    group: *const RsPollGroup,
    poller: usize,
}

/// A poll group's interrupt-mode registrations (field order: unregistered
/// before the arguments they point to are freed).
pub(crate) struct GroupInterrupts {
    _channels: Interrupts,
    timer: Timer,
    _args: Box<[ChannelArg]>,
}

impl GroupInterrupts {
    /// Registers `group`'s channel fds (`fds[i]` = poller `i`'s channel);
    /// its timer starts unregistered. `group` must outlive the result.
    pub(crate) fn register(group: *const RsPollGroup, fds: &[c_int]) -> GroupInterrupts {
        let args: Box<[ChannelArg]> = (0..fds.len())
            .map(|poller| ChannelArg { group, poller })
            .collect();
        let channels = Interrupts::register(
            fds,
            channel_event,
            |i| (&args[i] as *const ChannelArg).cast_mut().cast(),
            c"nvmf_rdma_rs_cq",
        );
        GroupInterrupts {
            _channels: channels,
            timer: Timer::new(
                group_deadline,
                group.cast_mut().cast(),
                TIMER_US,
                c"nvmf_rdma_rs_deadline",
            ),
            _args: args,
        }
    }

    /// Keeps the group's timer registered exactly while `on`.
    pub(crate) fn want_timer(&self, on: bool) {
        self.timer.want(on);
    }
}

/// A poll group's channel interrupt: that poller's channel is readable.
unsafe extern "C" fn channel_event(arg: *mut c_void) -> c_int {
    guard("poll group interrupt", 0, || {
        // SAFETY: `arg` is a `ChannelArg` of the group's `GroupInterrupts`,
        // which unregisters this handler before freeing it.
        let a = unsafe { &*arg.cast::<ChannelArg>() };
        // SAFETY: the group unregisters its interrupts before it is freed;
        // this is its thread.
        let Some(g) = (unsafe { RsPollGroup::from_raw(a.group.cast_mut().cast()) }) else {
            return 0;
        };
        let now = g.now();
        let n = g
            .run(|pg| pg.handle_channel_event(a.poller, now))
            .unwrap_or(0);
        c_int::from(n > 0)
    })
}

/// A poll group's timer: a deadline may have passed, or buffers may be free.
unsafe extern "C" fn group_deadline(arg: *mut c_void) -> c_int {
    guard("poll group timer", 0, || {
        // SAFETY: `arg` is the group that owns this timer; it unregisters
        // it before it is freed; this is its thread.
        let Some(g) = (unsafe { RsPollGroup::from_raw(arg.cast()) }) else {
            return 0;
        };
        let now = g.now();
        let n = g.run(|pg| pg.handle_deadline(now)).unwrap_or(0);
        c_int::from(n > 0)
    })
}
