//! Waiting for readability with `ppoll`.
//!
//! An idle worker blocks on at most a handful of descriptors: its sockets and its
//! [`crate::EventFd`] doorbell. For so few, `ppoll` costs about what `epoll_wait` does and needs
//! no registration state, no extra descriptor and no bookkeeping when sockets come and go, so
//! epoll was rejected. `ppoll` rather than `poll` because its timeout is a `timespec`: the
//! dataplane's timers are in nanoseconds and rounding a 50 µs timer up to 1 ms would add
//! latency. The `pollfd` array lives on the stack, sized [`POLL_FDS_MAX`], so waiting never
//! allocates.
//!
//! Safety contract: descriptors come in as [`BorrowedFd`], which guarantees they stay open for
//! the call; the kernel reads and writes only the first `fds.len()` entries of our stack array.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;

use crate::clock::ns_to_timespec;

/// The most descriptors one wait can watch. The stack array is this long.
pub const POLL_FDS_MAX: usize = 8;

// The bitmask returned by `wait_readable_mask` must have a bit per descriptor.
const _: () = assert!(POLL_FDS_MAX <= u32::BITS as usize);

/// Blocks until at least one of `fds` is readable (or has an error or hang-up pending), or
/// until `timeout_ns` nanoseconds have passed. `None` waits forever; `Some(0)` only checks.
///
/// Returns the number of ready descriptors, 0 on timeout or when a signal interrupted the wait
/// (`EINTR`): either way the caller re-checks its work and its timers and waits again.
///
/// # Panics
///
/// If `fds.len() > POLL_FDS_MAX`: the set of descriptors is fixed at start-up, so this is a bug.
///
/// # Errors
///
/// `ENOMEM` from the kernel; the caller should back off and retry.
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout_ns: Option<u64>) -> io::Result<usize> {
    wait_readable_mask(fds, timeout_ns).map(|mask| mask.count_ones() as usize)
}

/// Like [`wait_readable`], but returns which descriptors are ready: bit `i` is set when
/// `fds[i]` is readable or has an error or hang-up pending. 0 means timeout or `EINTR`.
///
/// # Panics
///
/// If `fds.len() > POLL_FDS_MAX`.
///
/// # Errors
///
/// As for [`wait_readable`].
pub fn wait_readable_mask(fds: &[BorrowedFd<'_>], timeout_ns: Option<u64>) -> io::Result<u32> {
    assert!(
        fds.len() <= POLL_FDS_MAX,
        "{} descriptors exceed POLL_FDS_MAX {POLL_FDS_MAX}",
        fds.len()
    );
    let mut pollfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; POLL_FDS_MAX];
    for (pfd, fd) in pollfds.iter_mut().zip(fds) {
        pfd.fd = fd.as_raw_fd();
        pfd.events = libc::POLLIN;
    }
    let timeout = timeout_ns.map(ns_to_timespec);
    let timeout_ptr = timeout
        .as_ref()
        .map_or(ptr::null(), |ts| ts as *const libc::timespec);
    // `fds.len() <= POLL_FDS_MAX`, so this cannot truncate.
    let nfds = fds.len() as libc::nfds_t;
    let pfds = pollfds.as_mut_ptr();
    // SAFETY: `pfds` points to `pollfds`, a live stack array of at least `nfds` entries, which the
    // kernel reads and updates; every fd in it is kept open by its `BorrowedFd`. `timeout_ptr`
    // is null or points to `timeout`, alive until we return. A null sigmask leaves the mask as
    // it is.
    let ret = syscall!(unsafe { libc::ppoll(pfds, nfds, timeout_ptr, ptr::null()) });
    match ret {
        Ok(_) => {
            let ready = libc::POLLIN | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
            let mask = pollfds[..fds.len()]
                .iter()
                .enumerate()
                .filter(|(_, pfd)| pfd.revents & ready != 0)
                .fold(0_u32, |mask, (i, _)| mask | (1 << i));
            Ok(mask)
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{monotonic_ns, EventFd};
    use std::os::fd::AsFd;

    #[test]
    fn times_out() {
        let efd = EventFd::new().unwrap();
        let start = monotonic_ns();
        let n = wait_readable(&[efd.as_fd()], Some(20_000_000)).unwrap();
        let elapsed = monotonic_ns() - start;
        assert_eq!(n, 0);
        assert!(elapsed >= 20_000_000, "woke after {elapsed} ns");
    }

    #[test]
    fn zero_timeout_only_checks() {
        let efd = EventFd::new().unwrap();
        assert_eq!(wait_readable(&[efd.as_fd()], Some(0)).unwrap(), 0);
        efd.signal().unwrap();
        assert_eq!(wait_readable(&[efd.as_fd()], Some(0)).unwrap(), 1);
    }

    #[test]
    fn wakes_on_eventfd_from_another_thread() {
        let quiet = EventFd::new().unwrap();
        let efd = std::sync::Arc::new(EventFd::new().unwrap());
        let remote = std::sync::Arc::clone(&efd);
        let signaller = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            remote.signal().unwrap();
        });
        let start = monotonic_ns();
        let mask = wait_readable_mask(&[quiet.as_fd(), efd.as_fd()], Some(10_000_000_000)).unwrap();
        let elapsed = monotonic_ns() - start;
        signaller.join().unwrap();
        assert_eq!(mask, 0b10);
        assert!(
            elapsed < 5_000_000_000,
            "took {elapsed} ns, the timeout not the signal woke us"
        );
        assert_eq!(efd.drain(), 1);
        assert_eq!(wait_readable(&[efd.as_fd()], Some(0)).unwrap(), 0);
    }

    #[test]
    fn no_descriptors_is_a_sleep() {
        let start = monotonic_ns();
        assert_eq!(wait_readable(&[], Some(1_000_000)).unwrap(), 0);
        assert!(monotonic_ns() - start >= 1_000_000);
    }

    #[test]
    #[should_panic(expected = "POLL_FDS_MAX")]
    fn too_many_descriptors_panics() {
        let efd = EventFd::new().unwrap();
        let fds = [efd.as_fd(); POLL_FDS_MAX + 1];
        let _ = wait_readable(&fds, Some(0));
    }
}
