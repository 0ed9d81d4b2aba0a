//! TCP socket set-up std does not expose.
//!
//! std's sockets cover reading and writing; a server engine needs a few things more:
//! - a listener bound with `SO_REUSEPORT`, so every engine listens on the same port and the
//!   kernel spreads connections over them as RSS spreads flows over NIC queues, with the
//!   backlog the app asked for (std listens with 128; [`listen`] raises it afterwards);
//! - a connect that does not block ([`connect_nonblocking`]: `EINPROGRESS`, then writability
//!   and `SO_ERROR` tell the outcome), since an engine never waits;
//! - an abortive close ([`set_linger_zero`]: `SO_LINGER` with a zero timeout makes `close`
//!   send RST), and keepalive timing ([`set_keepalive`]).
//!
//! The results are std types (`TcpListener`, `TcpStream`), so the rest of the code reads and
//! writes with std. The alternative, a socket crate as a dependency, would put a second
//! copy of this crate's safety argument somewhere nobody reviews with it.
//!
//! Safety contract: every call takes a borrowed, open descriptor (or one it just created and
//! owns) and passes only live, correctly sized structures on its own stack.

use crate::udp::{setsockopt_int, sockaddr_from};
use std::io;
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn tcp_socket() -> io::Result<OwnedFd> {
    let ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: `socket` takes three integers and touches no caller memory.
    let raw = syscall!(unsafe { libc::socket(libc::AF_INET, ty, 0) })?;
    // SAFETY: `socket` succeeded, so `raw` is a new descriptor nothing else owns; every
    // error path below closes it by dropping the `OwnedFd`.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A non-blocking TCP listener on `addr` with `SO_REUSEADDR` and, when `reuse_port`,
/// `SO_REUSEPORT`, listening with `backlog` (capped by `net.core.somaxconn`).
///
/// # Errors
/// `EADDRINUSE` when another socket holds the port without `SO_REUSEPORT` (`ss -ltnp`
/// shows it), `EACCES` for a port below 1024 without privileges.
pub fn tcp_listener(addr: SocketAddrV4, backlog: u32, reuse_port: bool) -> io::Result<TcpListener> {
    let fd = tcp_socket()?;
    setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuse_port {
        setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let sockaddr = sockaddr_from(addr);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sockaddr` is a live, initialised `sockaddr_in` of `len` bytes the kernel only
    // reads; the descriptor is ours and open.
    syscall!(unsafe { libc::bind(fd.as_raw_fd(), (&raw const sockaddr).cast(), len) })?;
    listen(fd.as_fd(), backlog)?;
    Ok(TcpListener::from(fd))
}

/// Starts a non-blocking connect to `to`. The stream becomes writable when the handshake
/// ends; then [`TcpStream::take_error`] says whether it failed (`ECONNREFUSED`,
/// `ETIMEDOUT`, ...).
///
/// # Errors
/// Immediate failures only: `ENETUNREACH`, `EADDRNOTAVAIL` (no ephemeral port left), ...
pub fn connect_nonblocking(to: SocketAddrV4) -> io::Result<TcpStream> {
    let fd = tcp_socket()?;
    let sockaddr = sockaddr_from(to);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: as in `tcp_listener`: a live `sockaddr_in` of `len` bytes, only read.
    match syscall!(unsafe { libc::connect(fd.as_raw_fd(), (&raw const sockaddr).cast(), len) }) {
        Ok(_) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    Ok(TcpStream::from(fd))
}

/// Makes the next `close` of `fd` abortive: `SO_LINGER` on with a zero timeout, so the
/// kernel discards unsent data and sends RST (RFC 9293 §3.10.5's ABORT).
///
/// # Errors
/// `ENOTSOCK`/`EBADF` if `fd` is not a socket.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: `linger` is a live `struct linger` passed with its exact size; the kernel only
    // reads it.
    syscall!(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        )
    })?;
    Ok(())
}

/// Keepalive on `fd`: `None` turns it off; `Some(idle_s)` probes after `idle_s` seconds of
/// silence (at least 1, at most 32767, the kernel's limit), then every `idle_s` seconds, and
/// gives up after 9 unanswered probes (Linux's default count).
///
/// # Errors
/// `EINVAL` is not possible for values in range; `ENOTSOCK`/`EBADF` if `fd` is not a socket.
pub fn set_keepalive(fd: BorrowedFd<'_>, idle_s: Option<u32>) -> io::Result<()> {
    let Some(idle_s) = idle_s else {
        return setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 0);
    };
    let idle = idle_s.clamp(1, 32_767) as libc::c_int;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, idle)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)
}

/// Sets the accept backlog of the listening socket `fd` to `backlog` (the kernel caps it at
/// `net.core.somaxconn`).
///
/// # Errors
/// `EOPNOTSUPP` if `fd` is not a stream socket, `EBADF`/`ENOTSOCK` if it is not a socket.
pub fn listen(fd: BorrowedFd<'_>, backlog: u32) -> io::Result<()> {
    let backlog = backlog.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: `fd` is borrowed, so open for the call; `listen` takes two integers.
    syscall!(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_with_reuse_port_shares_the_port_and_connect_does_not_block() {
        let a = tcp_listener(
            SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
            1024,
            true,
        )
        .unwrap();
        let std::net::SocketAddr::V4(addr) = a.local_addr().unwrap() else {
            unreachable!()
        };
        let b = tcp_listener(addr, 1024, true).expect("a second listener on the same port");
        let _ = b;
        let stream = connect_nonblocking(addr).unwrap();
        // The handshake completes on loopback at once or soon; either way no error.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stream.peer_addr().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "connect never completed"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(stream.take_error().unwrap().is_none());
        set_keepalive(stream.as_fd(), Some(30)).unwrap();
        set_keepalive(stream.as_fd(), None).unwrap();
        set_linger_zero(stream.as_fd()).unwrap();
    }

    #[test]
    fn connect_to_a_closed_port_reports_refused() {
        let closed = {
            let l = tcp_listener(
                SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
                1,
                false,
            )
            .unwrap();
            let std::net::SocketAddr::V4(addr) = l.local_addr().unwrap() else {
                unreachable!()
            };
            addr
        };
        let stream = connect_nonblocking(closed).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(err) = stream.take_error().unwrap() {
                assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no error reported");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn raises_the_backlog_of_a_listener_and_refuses_a_datagram_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listen(listener.as_fd(), 4096).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(listen(udp.as_fd(), 16).is_err());
    }
}
