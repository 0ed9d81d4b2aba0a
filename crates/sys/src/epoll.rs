//! An epoll instance used as one wakeup descriptor for many sockets.
//!
//! An engine that sleeps waits in [`crate::poll::wait_readable`] on its transport's wakeup
//! descriptor and its stop eventfd. A transport with several sockets (the kernel-socket
//! transport binds one per UDP port) registers them all in an [`Epoll`]; an epoll descriptor
//! is itself readable while any registered descriptor is, so the engine still waits on one
//! descriptor, and the registration happens once per bind, not once per sleep. We never call
//! `epoll_wait`: the sockets are read by the transport's own batched calls.
//!
//! Safety contract: the epoll descriptor is owned by an [`OwnedFd`] and open for every call
//! through `&self`; `epoll_ctl` is given a pointer to an `epoll_event` on our stack.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// An `epoll_create1(EPOLL_CLOEXEC)` instance. See the module documentation.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// A new, empty instance.
    ///
    /// # Errors
    /// `EMFILE`/`ENFILE` when out of descriptors, `ENOMEM`.
    pub fn new() -> io::Result<Self> {
        // SAFETY: `epoll_create1` takes one integer flag and touches no caller memory.
        let raw = syscall!(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: the call succeeded, so `raw` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Registers `fd` for readability (level-triggered).
    ///
    /// # Errors
    /// `EEXIST` if it is registered already, `ENOMEM`/`ENOSPC` when the kernel's limit on
    /// watches is reached.
    pub fn add_readable(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd.as_raw_fd() as u64,
        };
        // SAFETY: both descriptors are open (one owned by `self`, one borrowed); `event` is a
        // live `epoll_event` on our stack that the kernel only reads.
        syscall!(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &raw mut event,
            )
        })?;
        Ok(())
    }

    /// Unregisters `fd`.
    ///
    /// # Errors
    /// `ENOENT` if it was not registered.
    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: both descriptors are open; `EPOLL_CTL_DEL` ignores the event pointer, and
        // null is accepted since Linux 2.6.9.
        syscall!(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventfd::EventFd;
    use crate::poll::wait_readable;

    #[test]
    fn readable_while_a_registered_descriptor_is() {
        let epoll = Epoll::new().unwrap();
        let a = EventFd::new().unwrap();
        let b = EventFd::new().unwrap();
        epoll.add_readable(a.as_fd()).unwrap();
        epoll.add_readable(b.as_fd()).unwrap();
        assert_eq!(
            epoll.add_readable(a.as_fd()).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        let ready = wait_readable(&[epoll.as_fd()], Some(1_000_000)).unwrap();
        assert_eq!(ready, 0, "nothing signalled yet");
        b.signal().unwrap();
        assert_eq!(
            wait_readable(&[epoll.as_fd()], Some(1_000_000_000)).unwrap(),
            1
        );
        assert_eq!(b.drain(), 1);
        epoll.remove(b.as_fd()).unwrap();
        b.signal().unwrap();
        assert_eq!(wait_readable(&[epoll.as_fd()], Some(1_000_000)).unwrap(), 0);
    }
}
