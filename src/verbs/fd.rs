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
