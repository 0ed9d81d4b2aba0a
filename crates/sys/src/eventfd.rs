//! A non-blocking `eventfd`, the doorbell between threads.
//!
//! A worker that has nothing to do sleeps in [`crate::poll::wait_readable`] on its sockets plus
//! one [`EventFd`]; another thread that hands it work rings the doorbell with
//! [`EventFd::signal`]. An eventfd is one descriptor and one 8-byte counter, so a wakeup is one
//! `write` and one `read`. The alternative, a pipe, costs two descriptors and a kernel buffer,
//! and needs a loop to drain; a futex cannot be waited on together with sockets.
//!
//! The descriptor is non-blocking so that [`EventFd::drain`] never sleeps, and close-on-exec so
//! that it does not leak into tools we spawn.
//!
//! Safety contract: the descriptor is owned by an [`OwnedFd`], so it is closed exactly once, on
//! drop, and is open for every call made through `&self`. `read` and `write` are given a pointer
//! to a `u64` on our stack and its exact size.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An `eventfd(EFD_NONBLOCK | EFD_CLOEXEC)` counter used as a wakeup signal.
///
/// Readable (for [`crate::poll::wait_readable`]) while the counter is non-zero.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// Creates an eventfd with a counter of zero.
    ///
    /// # Errors
    ///
    /// `EMFILE`/`ENFILE` when out of descriptors, `ENOMEM`; the caller cannot continue setting up
    /// the worker and should report the error.
    pub fn new() -> io::Result<Self> {
        // SAFETY: `eventfd` takes two integers and touches no caller memory.
        let raw = syscall!(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `eventfd` succeeded, so `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Adds one to the counter, waking anyone polling for readability.
    ///
    /// Signalling an already signalled eventfd is cheap and harmless; signals coalesce.
    ///
    /// # Errors
    ///
    /// None in practice: a counter at its maximum (`EAGAIN`) already means "signalled" and is
    /// reported as `Ok`. Other errors are passed through for the caller to log.
    pub fn signal(&self) -> io::Result<()> {
        let one: u64 = 1;
        let len = std::mem::size_of::<u64>();
        // SAFETY: the fd is open (owned by `self`); the pointer and length describe `one`, a
        // live `u64` on our stack, which `write` only reads.
        let ret = syscall!(unsafe { libc::write(self.as_raw_fd(), (&raw const one).cast(), len) });
        match ret {
            Ok(n) => {
                // An eventfd write is all or nothing.
                assert_eq!(n as usize, len, "short eventfd write");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads and resets the counter, returning how many signals were pending (0 if none).
    ///
    /// Never blocks.
    ///
    /// # Panics
    ///
    /// If `read` fails with anything but `EAGAIN`. For a non-blocking eventfd that we own and
    /// read with an 8-byte buffer, `EBADF`, `EINVAL` and `EINTR` cannot happen, so any other
    /// error means the crate's own invariants are broken.
    pub fn drain(&self) -> u64 {
        let mut count: u64 = 0;
        let len = std::mem::size_of::<u64>();
        // SAFETY: the fd is open (owned by `self`); the pointer and length describe `count`, a
        // live, writable `u64` on our stack.
        let ret = syscall!(unsafe { libc::read(self.as_raw_fd(), (&raw mut count).cast(), len) });
        match ret {
            Ok(n) => {
                assert_eq!(n as usize, len, "short eventfd read");
                count
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("read from an owned non-blocking eventfd failed: {e}"),
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_then_drain() {
        let efd = EventFd::new().unwrap();
        assert_eq!(efd.drain(), 0);
        efd.signal().unwrap();
        efd.signal().unwrap();
        efd.signal().unwrap();
        assert_eq!(efd.drain(), 3);
        assert_eq!(efd.drain(), 0);
    }

    #[test]
    fn signal_from_another_thread() {
        let efd = std::sync::Arc::new(EventFd::new().unwrap());
        let remote = std::sync::Arc::clone(&efd);
        std::thread::spawn(move || remote.signal().unwrap())
            .join()
            .unwrap();
        assert_eq!(efd.drain(), 1);
    }

    #[test]
    fn descriptor_is_nonblocking_and_cloexec() {
        let efd = EventFd::new().unwrap();
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", efd.as_raw_fd())).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .expect("fdinfo always has a flags line");
        assert_ne!(flags & libc::O_NONBLOCK as u32, 0);
        assert_ne!(flags & libc::O_CLOEXEC as u32, 0);
    }
}
