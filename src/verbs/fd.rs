//! File-descriptor helpers for the pollable channels (CM event channel,
//! completion channel, device async fd).

use std::os::fd::RawFd;
use std::time::Duration;

use super::error::{Errno, Result, VerbsError};

/// Put `fd` in non-blocking mode.
pub(crate) fn set_nonblocking(fd: RawFd) -> Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL only reads/writes the descriptor's
    // status flags; an invalid fd yields EBADF, not UB.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(VerbsError::last("fcntl(F_GETFL)"));
    }
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if rc < 0 {
        return Err(VerbsError::last("fcntl(F_SETFL)"));
    }
    Ok(())
}

/// Wait until `fd` is readable or `timeout` passes. Returns `true` if readable
/// (or hung up / in error: the next read reports it).
pub fn wait_readable(fd: RawFd, timeout: Duration) -> Result<bool> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid, exclusively borrowed pollfd array of length 1
        // for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let errno = Errno::last();
            if errno.0 == libc::EINTR {
                continue;
            }
            return Err(VerbsError::Call {
                call: "poll",
                errno,
            });
        }
        return Ok(rc > 0);
    }
}

/// Wait until any of `fds` is readable or `timeout` passes. Returns the index
/// of the first readable fd, or `None` on timeout. At most 8 fds.
pub fn wait_readable_any(fds: &[RawFd], timeout: Duration) -> Result<Option<usize>> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 8];
    let n = fds.len().min(pfds.len());
    for (p, &fd) in pfds.iter_mut().zip(fds.iter()) {
        p.fd = fd;
    }
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `pfds[..n]` is a valid, exclusively borrowed pollfd array.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, ms) };
        if rc < 0 {
            let errno = Errno::last();
            if errno.0 == libc::EINTR {
                continue;
            }
            return Err(VerbsError::Call {
                call: "poll",
                errno,
            });
        }
        if rc == 0 {
            return Ok(None);
        }
        return Ok(pfds[..n].iter().position(|p| p.revents != 0));
    }
}

/// A non-blocking `eventfd`: a pollable wake-up for a thread that sleeps in
/// [`wait_readable_any`] (e.g. a poll group in interrupt mode woken when a
/// message was queued for it).
#[derive(Debug)]
pub struct EventFd {
    fd: RawFd,
}

impl EventFd {
    /// `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`.
    pub fn new() -> Result<EventFd> {
        // SAFETY: eventfd takes no pointers; a negative return is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(VerbsError::last("eventfd"));
        }
        Ok(EventFd { fd })
    }

    /// The fd to wait on.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Makes the fd readable (adds 1 to the counter).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own fd; a failure
        // (counter saturated: the fd is readable anyway) needs no handling.
        let _ = unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
    }

    /// Clears the counter (the fd is no longer readable).
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking fd;
        // EAGAIN (nothing signalled) is fine.
        let _ = unsafe { libc::read(self.fd, (&mut v as *mut u64).cast(), 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: our fd, closed exactly once.
        unsafe { libc::close(self.fd) };
    }
}
