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
