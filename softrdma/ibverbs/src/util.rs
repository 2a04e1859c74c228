//! Small helpers: errno, cross-process copies, shared spin locks.

use core::sync::atomic::{AtomicU32, Ordering};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Set the calling thread's errno.
pub(crate) fn set_errno(e: i32) {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e };
}

/// The calling thread's errno.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Duplicate fd `fd` of process `pid` into this process (close-on-exec) with `pidfd_getfd`
/// (needs the same permission as `process_vm_*`); None if the process or fd is gone or it is
/// not allowed.
pub(crate) fn pidfd_getfd(pid: u32, fd: u32) -> Option<i32> {
    pidfd_getfd_from(&pidfd_open(pid)?, fd).map(IntoRawFd::into_raw_fd)
}

/// A pidfd of process `pid` (for several [`pidfd_getfd_from`] calls); None if it is gone.
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; failure is reported as -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0) } as i32;
    // SAFETY: a new fd that nothing else owns.
    (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// Duplicate fd `fd` of the process behind `pidfd` into this process (close-on-exec).
pub(crate) fn pidfd_getfd_from(pidfd: &OwnedFd, fd: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall on a pidfd we hold; failure is reported as -1.
    let d = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd() as libc::c_long,
            fd as libc::c_long,
            0 as libc::c_long,
        )
    } as i32;
    if d < 0 {
        return None;
    }
    // SAFETY: setting close-on-exec on our new fd, which nothing else owns.
    unsafe {
        libc::fcntl(d, libc::F_SETFD, libc::FD_CLOEXEC);
        Some(OwnedFd::from_raw_fd(d))
    }
}

/// Why a cross-process copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyError {
    /// The peer process is gone (ESRCH) or refused (EPERM).
    PeerGone,
    /// An address was not mapped in one of the processes (EFAULT).
    Fault,
}

fn iov(addr: u64, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    }
}

/// Gather `local` (this process) into `remote` (process `pid`). Lengths must sum equally.
/// Same-process copies use memcpy-like process_vm_writev on self (always valid addresses checked
/// by the kernel), so a bad address yields `Fault` rather than a crash.
pub(crate) fn write_to(
    pid: u32,
    local: &[(u64, usize)],
    remote: &[(u64, usize)],
) -> Result<(), CopyError> {
    transfer(pid, local, remote, true)
}

/// Scatter `remote` (process `pid`) into `local` (this process).
pub(crate) fn read_from(
    pid: u32,
    local: &[(u64, usize)],
    remote: &[(u64, usize)],
) -> Result<(), CopyError> {
    transfer(pid, local, remote, false)
}

fn transfer(
    pid: u32,
    local: &[(u64, usize)],
    remote: &[(u64, usize)],
    write: bool,
) -> Result<(), CopyError> {
    transfer_counted(pid, local, remote, write).map_err(|(_, e)| e)
}

/// Like [`write_to`] / [`read_from`], but a failure also says how many bytes (in list order)
/// were transferred before it: every byte before that count landed, and the transfer stopped
/// there (the kernel copies in list order and stops at the first page it cannot reach).
pub(crate) fn transfer_counted(
    pid: u32,
    local: &[(u64, usize)],
    remote: &[(u64, usize)],
    write: bool,
) -> Result<(), (usize, CopyError)> {
    let total: usize = local.iter().map(|x| x.1).sum();
    debug_assert_eq!(total, remote.iter().map(|x| x.1).sum::<usize>());
    if total == 0 {
        return Ok(());
    }
    // Advance through both lists; the kernel may do partial transfers.
    let mut done = 0usize;
    while done < total {
        let l = slice_from(local, done, 64);
        let r = slice_from(remote, done, 64);
        // SAFETY: the iovec arrays are valid for the call; the kernel validates every address in
        // both processes and reports EFAULT instead of touching unmapped memory.
        let n = unsafe {
            if write {
                libc::process_vm_writev(
                    pid as libc::pid_t,
                    l.as_ptr(),
                    l.len() as _,
                    r.as_ptr(),
                    r.len() as _,
                    0,
                )
            } else {
                libc::process_vm_readv(
                    pid as libc::pid_t,
                    l.as_ptr(),
                    l.len() as _,
                    r.as_ptr(),
                    r.len() as _,
                    0,
                )
            }
        };
        if let Some(rt) = crate::runtime::existing() {
            rt.count(softrdma_abi::fabric::Counter::CopyCalls, 1);
        }
        if n < 0 {
            return Err((
                done,
                match errno() {
                    libc::ESRCH | libc::EPERM => CopyError::PeerGone,
                    _ => CopyError::Fault,
                },
            ));
        }
        if n == 0 {
            return Err((done, CopyError::Fault));
        }
        done += n as usize;
    }
    Ok(())
}

/// iovecs covering `list` starting at byte `skip`, at most `max` entries.
fn slice_from(
    list: &[(u64, usize)],
    mut skip: usize,
    max: usize,
) -> smallvec::SmallVec<[libc::iovec; 8]> {
    let mut v = smallvec::SmallVec::new();
    for &(a, l) in list {
        if v.len() == max {
            break;
        }
        if skip >= l {
            skip -= l;
            continue;
        }
        v.push(iov(a + skip as u64, l - skip));
        skip = 0;
    }
    v
}

/// A spin lock living in shared memory: the word holds the holder's pid (0 = free). A holder
/// that died is detected after a while and the lock is stolen.
pub(crate) struct SharedLock<'a> {
    word: &'a AtomicU32,
}

impl<'a> SharedLock<'a> {
    /// Acquire `word` for `me`.
    pub(crate) fn lock(word: &'a AtomicU32, me: u32) -> SharedLock<'a> {
        let mut spins = 0u32;
        let mut since: Option<Instant> = None;
        loop {
            match word.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return SharedLock { word },
                Err(holder) => {
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                        continue;
                    }
                    std::thread::yield_now();
                    let t0 = *since.get_or_insert_with(Instant::now);
                    if holder != 0
                        && holder != me
                        && t0.elapsed() > Duration::from_millis(50)
                        && !softrdma_abi::fabric::pid_alive(holder)
                        && word
                            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
                            .is_ok()
                    {
                        crate::log::warn(&format!(
                            "recovered a shared lock held by dead process {holder}"
                        ));
                        return SharedLock { word };
                    }
                }
            }
        }
    }
}

impl Drop for SharedLock<'_> {
    fn drop(&mut self) {
        self.word.store(0, Ordering::Release);
    }
}

/// Monotonic milliseconds since an arbitrary process-local origin.
pub(crate) fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iovec_windows() {
        let list = [(100u64, 10usize), (200, 5), (300, 20)];
        let v = slice_from(&list, 12, 64);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].iov_base as u64, v[0].iov_len), (202, 3));
        assert_eq!((v[1].iov_base as u64, v[1].iov_len), (300, 20));
        assert_eq!(slice_from(&list, 0, 2).len(), 2);
    }

    #[test]
    fn self_copy_and_fault() {
        let src = *b"0123456789";
        let mut dst = [0u8; 10];
        let pid = std::process::id();
        write_to(
            pid,
            &[(src.as_ptr() as u64, 4), (src.as_ptr() as u64 + 4, 6)],
            &[(dst.as_mut_ptr() as u64, 10)],
        )
        .unwrap();
        assert_eq!(&dst, b"0123456789");
        assert_eq!(
            write_to(pid, &[(src.as_ptr() as u64, 4)], &[(8, 4)]),
            Err(CopyError::Fault)
        );
    }
}
