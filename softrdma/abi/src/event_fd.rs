//! The fd softrdma hands to applications for an event queue: a completion channel
//! (`ibv_comp_channel::fd`), a context's `async_fd`, an `rdma_event_channel::fd`.
//!
//! Records travel over a Unix socket pair (datagrams or a byte stream), which suits softrdma's
//! producers: a peer process duplicates the write end once (`pidfd_getfd`) and sends with
//! `MSG_NOSIGNAL`, so a consumer that is gone costs it no `SIGPIPE`; softrdma itself reads
//! without blocking (`MSG_DONTWAIT`) whatever flags the application set; device removal
//! shuts the read end so readers see EOF. But a socket is always writable, and an application
//! that registers the fd for `EPOLLIN | EPOLLOUT` (upstream SPDK's rdma transport does) would
//! be woken without end. So the fd handed out is an epoll instance watching the read end for
//! `EPOLLIN` alone: like the kernel's uverbs and rdma_cm event files, `poll` reports it
//! readable exactly while a record is queued (or the read end is shut) and never writable.
//! `O_NONBLOCK` set on it by the application is honoured by [`EventFd::recv`].

use std::ffi::c_int;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An event queue's fds: the application's poll fd and the socket pair carrying records.
#[derive(Debug)]
pub struct EventFd {
    poll: OwnedFd,
    rd: OwnedFd,
    wr: OwnedFd,
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

impl EventFd {
    /// A new queue over a socket pair of `sock_type` (`SOCK_DGRAM`: one record per datagram;
    /// `SOCK_STREAM`: a byte stream). All fds are close-on-exec; the write end is non-blocking.
    pub fn new(sock_type: c_int) -> Result<EventFd, c_int> {
        let mut fds = [0 as c_int; 2];
        // SAFETY: fds is a valid 2-element array.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                sock_type | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(errno());
        }
        // SAFETY: both fds were just created and belong to nobody else.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let fl = libc::fcntl(wr.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(wr.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        // SAFETY: plain system call.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(errno());
        }
        // SAFETY: ep was just created and belongs to nobody else.
        let poll = unsafe { OwnedFd::from_raw_fd(ep) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: registering our own read end on our own epoll instance; ev is valid.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, rd.as_raw_fd(), &mut ev) } != 0 {
            return Err(errno());
        }
        Ok(EventFd { poll, rd, wr })
    }

    /// The fd the application polls (readable while a record is queued, never writable).
    pub fn app_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// The read end of the socket pair.
    pub fn read_end(&self) -> RawFd {
        self.rd.as_raw_fd()
    }

    /// The write end of the socket pair (non-blocking; peers may duplicate it).
    pub fn write_end(&self) -> RawFd {
        self.wr.as_raw_fd()
    }

    /// Queue one record (never blocks, never raises `SIGPIPE`). False if it was not queued
    /// whole (the queue is full).
    pub fn send(&self, rec: &[u8]) -> bool {
        send_on(self.wr.as_raw_fd(), rec)
    }

    /// Take one record without blocking, whatever the application's flags: its length (0 at
    /// EOF), or None when none is queued.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<usize> {
        self.recv_flags(buf, libc::MSG_DONTWAIT).ok()
    }

    /// Take one record as a `read` of the application's fd would: blocks unless the
    /// application set `O_NONBLOCK` on [`app_fd`](Self::app_fd) (then EAGAIN when empty).
    /// Ok(0) means EOF (the read end was shut and everything queued was read).
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize, c_int> {
        match self.recv_flags(buf, libc::MSG_DONTWAIT) {
            Err(libc::EAGAIN) => {}
            r => return r,
        }
        // SAFETY: fcntl F_GETFL on an fd we own.
        let fl = unsafe { libc::fcntl(self.poll.as_raw_fd(), libc::F_GETFL) };
        if fl >= 0 && fl & libc::O_NONBLOCK != 0 {
            return Err(libc::EAGAIN);
        }
        self.recv_flags(buf, 0)
    }

    fn recv_flags(&self, buf: &mut [u8], flags: c_int) -> Result<usize, c_int> {
        // SAFETY: receiving at most buf.len() bytes into the caller's buffer from our own fd.
        let r = unsafe {
            libc::recv(
                self.rd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r as usize)
        }
    }

    /// Shut the read end: once the records queued are read, readers get EOF and the
    /// application's fd stays readable.
    pub fn shut_read(&self) {
        // SAFETY: shutdown of a socket we own.
        unsafe { libc::shutdown(self.rd.as_raw_fd(), libc::SHUT_RD) };
    }
}

/// Queue one record on a write end `fd` (ours or a peer's duplicate) without blocking and
/// without `SIGPIPE`. False if it was not queued whole.
pub fn send_on(fd: RawFd, rec: &[u8]) -> bool {
    // SAFETY: sending rec.len() bytes from the caller's buffer on an fd the caller holds.
    let r = unsafe {
        libc::send(
            fd,
            rec.as_ptr().cast(),
            rec.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    r == rec.len() as isize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// poll(2) of `fd` for IN|OUT with a 0 timeout: the reported events.
    fn revents(fd: RawFd) -> i16 {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        assert!(n >= 0);
        p.revents
    }

    #[test]
    fn readable_only_while_queued_never_writable() {
        for ty in [libc::SOCK_DGRAM, libc::SOCK_STREAM] {
            let q = EventFd::new(ty).unwrap();
            assert_eq!(revents(q.app_fd()), 0, "empty: neither IN nor OUT");
            assert!(q.send(&7u64.to_ne_bytes()));
            assert_eq!(revents(q.app_fd()), libc::POLLIN, "one record: IN, not OUT");
            let mut b = [0u8; 8];
            assert_eq!(q.try_recv(&mut b), Some(8));
            assert_eq!(u64::from_ne_bytes(b), 7);
            assert_eq!(revents(q.app_fd()), 0, "read: neither IN nor OUT");
            assert_eq!(q.try_recv(&mut b), None);
        }
    }

    #[test]
    fn nonblock_flag_of_the_app_fd_is_honoured() {
        let q = EventFd::new(libc::SOCK_DGRAM).unwrap();
        // SAFETY: fcntl on our own fd.
        unsafe {
            let fl = libc::fcntl(q.app_fd(), libc::F_GETFL);
            libc::fcntl(q.app_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let mut b = [0u8; 8];
        assert_eq!(q.recv(&mut b), Err(libc::EAGAIN));
        assert!(q.send(&1u64.to_ne_bytes()));
        assert_eq!(q.recv(&mut b), Ok(8));
    }

    #[test]
    fn blocking_recv_waits_for_a_record_and_shut_gives_eof() {
        let q = std::sync::Arc::new(EventFd::new(libc::SOCK_DGRAM).unwrap());
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 8];
            q2.recv(&mut b).map(|n| (n, u64::from_ne_bytes(b)))
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(q.send(&9u64.to_ne_bytes()));
        assert_eq!(t.join().unwrap(), Ok((8, 9)));
        assert!(q.send(&3u64.to_ne_bytes()));
        q.shut_read();
        let mut b = [0u8; 8];
        assert_eq!(q.recv(&mut b), Ok(8), "queued before the shut: still read");
        assert_eq!(q.recv(&mut b), Ok(0), "then EOF");
        assert_eq!(
            revents(q.app_fd()),
            libc::POLLIN,
            "EOF: readable, not writable"
        );
    }
}
