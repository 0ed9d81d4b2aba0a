//! An epoll instance used as one wakeup descriptor for many sockets.
//!
//! An engine that sleeps waits in [`crate::poll::wait_readable`] on its transport's wakeup
//! descriptor and its stop eventfd. A transport with several sockets (the kernel-socket
//! transport binds one per UDP port) registers them all in an [`Epoll`]; an epoll descriptor
//! is itself readable while any registered descriptor is, so the engine still waits on one
//! descriptor, and the registration happens once per bind, not once per sleep. We never call
//! `epoll_wait`: the sockets are read by the transport's own batched calls.
//!
//! The baseline TCP echo server (`melange baseline tcp-echo`) is an ordinary epoll server, so
//! it registers each connection with a token ([`Epoll::add`]) and calls [`Epoll::wait`].
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

    /// Registers `fd` for `interest`, tagged with `token`, which [`Epoll::wait`] hands back
    /// with each readiness report (a server's connection slot, say).
    ///
    /// # Errors
    /// `EEXIST` if it is registered already, `ENOMEM`/`ENOSPC` when the kernel's limit on
    /// watches is reached.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, token, interest)
    }

    /// Changes the interest (and token) of a registered `fd`.
    ///
    /// # Errors
    /// `ENOENT` if it is not registered.
    pub fn modify(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, token, interest)
    }

    fn control(
        &self,
        op: libc::c_int,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
    ) -> io::Result<()> {
        // Errors and hang-ups are always reported. The peer's FIN (`EPOLLRDHUP`) only with
        // read interest: level-triggered, it would otherwise be reported on every wait to an
        // owner that paused reading.
        let mut events = 0;
        if interest.readable {
            events |= (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        }
        if interest.writable {
            events |= libc::EPOLLOUT as u32;
        }
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: both descriptors are open (one owned by `self`, one borrowed); `event` is a
        // live `epoll_event` on our stack that the kernel only reads.
        syscall!(unsafe {
            libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &raw mut event)
        })?;
        Ok(())
    }

    /// Waits up to `timeout_ms` (0: do not wait; `None`: without limit) for registered
    /// descriptors to become ready, fills `events` from the front and returns how many it
    /// filled. `EINTR` is reported as 0 events, so a signal only ends the wait early.
    ///
    /// # Errors
    /// `EBADF`/`EINVAL` only if the instance were broken, which its ownership rules out.
    pub fn wait(&self, events: &mut [EpollEvent], timeout_ms: Option<u32>) -> io::Result<usize> {
        let timeout = timeout_ms.map_or(-1, |ms| ms.min(i32::MAX as u32) as libc::c_int);
        let capacity = events.len().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: `EpollEvent` is `repr(transparent)` over `libc::epoll_event`, so `events` is
        // `capacity` writable, properly aligned `epoll_event`s that live across the call; the
        // kernel writes at most `capacity` of them.
        let result = syscall!(unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                events.as_mut_ptr().cast::<libc::epoll_event>(),
                capacity,
                timeout,
            )
        });
        match result {
            Ok(n) => Ok(n as usize),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(err) => Err(err),
        }
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

/// What a registration waits for. Hang-ups and errors are always reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest {
    /// Data to read (or a connection to accept, or the peer's FIN).
    pub readable: bool,
    /// Room to write.
    pub writable: bool,
}

impl Interest {
    /// Readable only.
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Readable and writable.
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };
}

/// One readiness report from [`Epoll::wait`].
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct EpollEvent(libc::epoll_event);

impl EpollEvent {
    /// An empty slot for [`Epoll::wait`] to fill.
    pub const EMPTY: EpollEvent = EpollEvent(libc::epoll_event { events: 0, u64: 0 });

    /// The token the descriptor was registered with.
    pub fn token(&self) -> u64 {
        // `epoll_event` is packed on x86-64: the field is copied out, never referenced.
        self.0.u64
    }
    /// Readable, or the peer closed its side (`EPOLLRDHUP`): a read says which.
    pub fn is_readable(&self) -> bool {
        self.events() & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 != 0
    }
    /// Writable.
    pub fn is_writable(&self) -> bool {
        self.events() & libc::EPOLLOUT as u32 != 0
    }
    /// An error or a hang-up: the next read or write reports it.
    pub fn is_error(&self) -> bool {
        self.events() & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0
    }
    fn events(&self) -> u32 {
        self.0.events
    }
}

impl std::fmt::Debug for EpollEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpollEvent")
            .field("token", &self.token())
            .field("events", &format_args!("{:#x}", self.events()))
            .finish()
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
    fn wait_reports_tokens_and_interest() {
        let epoll = Epoll::new().unwrap();
        let a = EventFd::new().unwrap();
        let b = EventFd::new().unwrap();
        epoll.add(a.as_fd(), 7, Interest::READABLE).unwrap();
        epoll.add(b.as_fd(), 9, Interest::READABLE).unwrap();
        let mut events = [EpollEvent::EMPTY; 4];
        assert_eq!(epoll.wait(&mut events, Some(0)).unwrap(), 0);
        b.signal().unwrap();
        assert_eq!(epoll.wait(&mut events, Some(1000)).unwrap(), 1);
        assert_eq!(events[0].token(), 9);
        assert!(events[0].is_readable() && !events[0].is_error());
        // An eventfd is always writable: asking for it reports it, with the new token.
        epoll.modify(a.as_fd(), 8, Interest::BOTH).unwrap();
        let n = epoll.wait(&mut events, Some(1000)).unwrap();
        let a_event = events[..n]
            .iter()
            .find(|e| e.token() == 8)
            .expect("a reported");
        assert!(a_event.is_writable() && !a_event.is_readable());
        assert_eq!(
            epoll
                .modify(EventFd::new().unwrap().as_fd(), 1, Interest::READABLE)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
    }

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
