//! Socket options std does not expose.
//!
//! `std::net::TcpListener::bind` listens with a backlog of 128, which a server facing
//! thousands of concurrent connects (the TCP benchmarks, a SYN flood test) outgrows at once;
//! calling `listen` again on a listening socket changes the backlog, which Linux allows. The
//! alternative, building the socket by hand with `socket`/`bind`/`listen`, duplicates what std
//! already does well.
//!
//! Safety contract: every call takes a borrowed, open descriptor and touches no caller memory.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

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
    use std::os::fd::AsFd;

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
