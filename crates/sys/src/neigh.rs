//! The kernel's IPv4 neighbour table, watched through route netlink instead of polled.
//!
//! # Design
//!
//! The control plane is the engines' ARP: it tells them what the kernel's neighbour table says
//! about their interface. Reading `/proc/net/arp` on a timer was the first way, and it was
//! rejected because it is a poll: to learn a new neighbour within 5 ms it woke 200 times a
//! second (open, read, close, about 40 µs each), which on a small machine is time taken from
//! the cores the engines and their peers spin on, and it still answered up to 5 ms late.
//!
//! The kernel already announces every change: a route netlink socket bound to the
//! `RTMGRP_NEIGH` multicast group receives an `RTM_NEWNEIGH` or `RTM_DELNEIGH` message for each
//! entry that appears, changes state or goes away. [`NeighborWatch`] is that socket. It starts
//! with one `RTM_GETNEIGH` dump of the IPv4 table, so its owner sees every entry that existed
//! before it started, and then sleeps in `ppoll` until the kernel has something to say.
//!
//! Multicast is lossy by design: if the owner falls behind and the socket's receive buffer
//! fills, the kernel drops messages and the next `recv` fails with `ENOBUFS`. A watcher that
//! ignored that would hold a stale table forever, so [`NeighborWatch::recv`] turns it into
//! [`Received::Overrun`] and asks for a fresh dump at once; the dump's messages then follow as
//! ordinary updates. A datagram larger than the receive buffer is treated the same way.
//!
//! The bytes are parsed by [`parse_neigh_messages`], a pure iterator with byte-vector tests, a
//! property test and a fuzz target (`sys_neigh_messages`). It allocates nothing and refuses a
//! malformed message with a typed [`NeighError`] rather than guessing; after a refusal it
//! yields nothing more from that datagram, since its framing can no longer be trusted.
//!
//! # Safety contract
//!
//! As in [`crate::netdev`]: every kernel call takes a descriptor we own or a pointer and length
//! of a live buffer or stack value borrowed in the same expression, and nothing the kernel
//! sends is trusted to be well formed.

use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

/// The receive buffer for one netlink datagram. The kernel builds dump datagrams of at most
/// 32 KiB (`netlink_dump` caps its allocation there) and notifications are far smaller, so
/// this holds any datagram; a larger one is detected (`MSG_TRUNC`) and handled as an overrun.
/// Allocated once, in [`NeighborWatch::open`].
pub const NEIGH_DATAGRAM_BYTES_MAX: usize = 64 * 1024;

/// `struct nlmsghdr` is 16 bytes, `struct ndmsg` 12 bytes (`linux/netlink.h`,
/// `linux/neighbour.h`).
const NLMSGHDR_LEN: usize = 16;
const NDMSG_LEN: usize = 12;
/// `struct rtattr` header: `u16 len, u16 type`.
const RTA_HDR_LEN: usize = 4;
/// The top two bits of an attribute type are flags (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Field offsets inside `struct ndmsg`, counted from the end of the `nlmsghdr`.
mod field {
    /// `ndm_family: u8`.
    pub const FAMILY: usize = 0;
    /// `ndm_ifindex: i32` (after `u8 pad1, u16 pad2`).
    pub const IFINDEX: usize = 4;
    /// `ndm_state: u16`.
    pub const STATE: usize = 8;
}

/// The NUD states in which an entry names a MAC that may be used to send
/// (`linux/neighbour.h`, `NUD_VALID` without `NUD_INCOMPLETE`-like transients): reachable,
/// stale, delay, probe, permanent and noarp.
const NUD_USABLE: u16 = libc::NUD_REACHABLE
    | libc::NUD_STALE
    | libc::NUD_DELAY
    | libc::NUD_PROBE
    | libc::NUD_PERMANENT
    | libc::NUD_NOARP;

/// Why a neighbour message or the watch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NeighError {
    /// The bytes are not a well-formed netlink neighbour message. A kernel ABI change or a bug
    /// here: report it. The rest of the datagram is skipped; the next dump (an overrun, or a
    /// restart of the watcher) repairs the table.
    #[error("malformed neighbour netlink message: {what}")]
    Malformed {
        /// What was wrong with it.
        what: &'static str,
    },
    /// The kernel refused our `RTM_GETNEIGH` dump request with this errno. `EPERM`: the
    /// process may not dump the table here; anything else: report it.
    #[error("the kernel refused the neighbour dump: {}", errno_text(.errno))]
    Refused {
        /// The positive errno from `NLMSG_ERROR`.
        errno: i32,
    },
}

/// The system's text for `errno`, for error messages.
fn errno_text(errno: &i32) -> io::Error {
    io::Error::from_raw_os_error(*errno)
}

/// Whether an entry appeared or changed (`RTM_NEWNEIGH`), or was removed (`RTM_DELNEIGH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighborChange {
    /// The entry is new or changed; see its state.
    New,
    /// The kernel removed the entry.
    Deleted,
}

/// One parsed IPv4 neighbour message: what the kernel says about one address on one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborUpdate {
    /// New/changed or deleted.
    pub change: NeighborChange,
    /// The interface the entry belongs to.
    pub ifindex: u32,
    /// The neighbour's IPv4 address (`NDA_DST`).
    pub ip: Ipv4Addr,
    /// Its link-layer address, if the message carries a 6-byte one (`NDA_LLADDR`); an
    /// incomplete or failed entry has none.
    pub mac: Option<[u8; 6]>,
    /// The NUD state bits (`NUD_*` in `linux/neighbour.h`).
    pub state: u16,
}

impl NeighborUpdate {
    /// The MAC to send to, if this update makes the entry usable: a new or changed entry in a
    /// usable state (reachable, stale, delay, probe, permanent or noarp) with a MAC. `None` for
    /// a deletion, an incomplete or failed entry, or one without a MAC: the address must not be
    /// sent to on the strength of this entry.
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        match self.change {
            NeighborChange::New if self.state & NUD_USABLE != 0 => self.mac,
            _ => None,
        }
    }
}

/// One item of a netlink datagram, as [`parse_neigh_messages`] yields it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighMessage {
    /// An IPv4 neighbour entry appeared, changed or went away.
    Update(NeighborUpdate),
    /// The end of a dump (`NLMSG_DONE`): every entry that existed has been sent.
    DumpDone,
}

/// The items of one netlink datagram; see [`parse_neigh_messages`].
#[derive(Debug, Clone)]
pub struct NeighMessages<'a> {
    buf: &'a [u8],
    at: usize,
}

/// Parses a netlink datagram from a route socket into neighbour items, lazily and without
/// allocating.
///
/// Yields `RTM_NEWNEIGH`/`RTM_DELNEIGH` for `AF_INET` as [`NeighMessage::Update`] and
/// `NLMSG_DONE` as [`NeighMessage::DumpDone`]; skips acknowledgements, no-ops, other
/// families (IPv6 neighbours arrive on the same group) and other message types. A malformed
/// message, or an `NLMSG_ERROR` carrying an errno, yields one `Err` and ends the iteration.
///
/// Never panics, whatever the bytes; yields at most one item per 16 bytes.
pub fn parse_neigh_messages(buf: &[u8]) -> NeighMessages<'_> {
    NeighMessages { buf, at: 0 }
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([bytes[0], bytes[1]]))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Iterator for NeighMessages<'_> {
    type Item = Result<NeighMessage, NeighError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Each pass consumes at least NLMSGHDR_LEN bytes or ends the iteration, so this ends.
        while self.at < self.buf.len() {
            let rest = &self.buf[self.at..];
            let parsed = parse_one(rest);
            match parsed {
                Err(e) => {
                    self.at = self.buf.len();
                    return Some(Err(e));
                }
                Ok((len, item)) => {
                    debug_assert!(len >= NLMSGHDR_LEN);
                    // Messages are padded to 4 bytes (NLMSG_ALIGN); the last may lack padding.
                    self.at = self.at.saturating_add(len.next_multiple_of(4));
                    if let Some(item) = item {
                        return Some(Ok(item));
                    }
                }
            }
        }
        None
    }
}

/// Parses the message at the start of `buf`: its length and its item, if it yields one.
fn parse_one(buf: &[u8]) -> Result<(usize, Option<NeighMessage>), NeighError> {
    let malformed = |what| NeighError::Malformed { what };
    let len = read_u32(buf, 0).ok_or(malformed("shorter than nlmsghdr"))? as usize;
    let kind = read_u16(buf, 4).ok_or(malformed("shorter than nlmsghdr"))?;
    if len < NLMSGHDR_LEN || len > buf.len() {
        return Err(malformed("nlmsg_len outside the datagram"));
    }
    let body = &buf[NLMSGHDR_LEN..len];
    let item = match i32::from(kind) {
        libc::NLMSG_DONE => Some(NeighMessage::DumpDone),
        libc::NLMSG_ERROR => {
            // struct nlmsgerr { int error; struct nlmsghdr msg; }: error is 0 (an ack) or a
            // negative errno.
            let error = read_u32(body, 0).ok_or(malformed("short NLMSG_ERROR"))? as i32;
            if error != 0 {
                return Err(NeighError::Refused {
                    errno: error.wrapping_neg(),
                });
            }
            None
        }
        _ if kind == libc::RTM_NEWNEIGH || kind == libc::RTM_DELNEIGH => {
            let change = if kind == libc::RTM_NEWNEIGH {
                NeighborChange::New
            } else {
                NeighborChange::Deleted
            };
            parse_ndmsg(body, change)?.map(NeighMessage::Update)
        }
        _ => None,
    };
    Ok((len, item))
}

/// Parses the body of a neighbour message (`ndmsg` then attributes); `None` for a family other
/// than IPv4.
fn parse_ndmsg(body: &[u8], change: NeighborChange) -> Result<Option<NeighborUpdate>, NeighError> {
    let malformed = |what| NeighError::Malformed { what };
    if body.len() < NDMSG_LEN {
        return Err(malformed("shorter than ndmsg"));
    }
    if i32::from(body[field::FAMILY]) != libc::AF_INET {
        return Ok(None);
    }
    let ifindex = read_u32(body, field::IFINDEX).ok_or(malformed("short ndmsg"))?;
    if ifindex == 0 || i32::try_from(ifindex).is_err() {
        return Err(malformed("ndm_ifindex is not a valid interface index"));
    }
    let state = read_u16(body, field::STATE).ok_or(malformed("short ndmsg"))?;
    let (mut ip, mut mac) = (None, None);
    let mut at = NDMSG_LEN;
    // Each attribute advances `at` by at least RTA_HDR_LEN, so this loop ends.
    while at + RTA_HDR_LEN <= body.len() {
        let rta_len = read_u16(body, at).ok_or(malformed("short rtattr"))? as usize;
        let rta_type = read_u16(body, at + 2).ok_or(malformed("short rtattr"))?;
        if rta_len < RTA_HDR_LEN || at + rta_len > body.len() {
            return Err(malformed("rtattr length outside the message"));
        }
        let payload = &body[at + RTA_HDR_LEN..at + rta_len];
        match rta_type & NLA_TYPE_MASK {
            libc::NDA_DST => {
                let octets = <[u8; 4]>::try_from(payload)
                    .map_err(|_| malformed("NDA_DST of an AF_INET entry is not 4 bytes"))?;
                ip = Some(Ipv4Addr::from(octets));
            }
            // Another length (an empty address, a non-Ethernet device) is not a MAC we use.
            libc::NDA_LLADDR => mac = <[u8; 6]>::try_from(payload).ok(),
            _ => {}
        }
        // Attributes are padded to 4 bytes (RTA_ALIGN); the last one may lack its padding.
        at = at.saturating_add(rta_len.next_multiple_of(4));
    }
    let ip = ip.ok_or(malformed("neighbour message without NDA_DST"))?;
    Ok(Some(NeighborUpdate {
        change,
        ifindex,
        ip,
        mac,
        state,
    }))
}

/// Builds an `RTM_GETNEIGH` dump request for the IPv4 table: `nlmsghdr` then `ndmsg`, in host
/// byte order as netlink requires.
fn getneigh_dump_request(seq: u32) -> [u8; NLMSGHDR_LEN + NDMSG_LEN] {
    let mut req = [0u8; NLMSGHDR_LEN + NDMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSGHDR_LEN + NDMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETNEIGH.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0; ndm_family AF_INET, the rest (pads, ifindex, state, flags, type) 0.
    req[NLMSGHDR_LEN + field::FAMILY] = libc::AF_INET as u8;
    req
}

/// What one [`NeighborWatch::recv`] brought.
#[derive(Debug)]
pub enum Received<'a> {
    /// Nothing arrived within the timeout (or a signal interrupted the wait).
    Timeout,
    /// One datagram's items; iterate them before the next `recv`.
    Messages(NeighMessages<'a>),
    /// The kernel dropped notifications (the socket's receive buffer overran, `ENOBUFS`, or a
    /// datagram did not fit). A fresh dump has been requested, so every entry arrives again;
    /// until it has, the caller's table may miss changes. Say so in the log.
    Overrun,
}

/// A route netlink socket subscribed to the kernel's neighbour notifications, in the network
/// namespace of the thread that opened it.
///
/// Call order: [`open`](Self::open) (which requests the initial dump), then
/// [`recv`](Self::recv) in a loop; the dump's entries arrive first, ending with
/// [`NeighMessage::DumpDone`], then notifications as the table changes.
#[derive(Debug)]
pub struct NeighborWatch {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
    /// A dump was asked for while one was still running (`EBUSY`); ask again at its end.
    dump_pending: bool,
}

impl NeighborWatch {
    /// Opens the socket (`NETLINK_ROUTE`, close-on-exec), joins `RTMGRP_NEIGH` and asks for a
    /// dump of the IPv4 neighbour table.
    ///
    /// # Errors
    ///
    /// Errors from `socket`, `bind` or `sendto` (`EPROTONOSUPPORT` on a kernel without
    /// netlink, `EPERM` under a seccomp policy that forbids it); the caller may fall back to
    /// reading `/proc/net/arp`.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket creation, no pointers.
        let raw = syscall!(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: `raw` is a descriptor we just created and nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `zeroed` is a valid bit pattern for the plain-integer `sockaddr_nl`.
        let mut local: libc::sockaddr_nl = unsafe { mem::zeroed() };
        local.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // nl_pid 0: the kernel picks our port id.
        local.nl_groups = libc::RTMGRP_NEIGH as u32;
        // SAFETY: `local` is a live `sockaddr_nl` whose exact size we pass; the kernel reads it.
        syscall!(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                ptr::from_ref(&local).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        let mut watch = Self {
            fd,
            buf: vec![0u8; NEIGH_DATAGRAM_BYTES_MAX],
            seq: 0,
            dump_pending: false,
        };
        watch.request_dump()?;
        Ok(watch)
    }

    /// Asks the kernel for every IPv4 neighbour entry; they arrive through `recv`. A dump
    /// already running (`EBUSY`) is asked again when it ends.
    fn request_dump(&mut self) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let request = getneigh_dump_request(self.seq);
        // SAFETY: `zeroed` is a valid bit pattern for the plain-integer `sockaddr_nl`.
        let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `request` is a live byte array of the given length; `kernel` is a live
        // `sockaddr_nl` whose exact size we pass; the kernel only reads both.
        let sent = syscall!(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                ptr::from_ref(&kernel).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        });
        match sent {
            Ok(_) => {
                self.dump_pending = false;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                self.dump_pending = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Waits up to `timeout_ns` for the next datagram and returns its items, or tells of a
    /// timeout or an overrun (see [`Received`]).
    ///
    /// # Errors
    ///
    /// Errors from `ppoll`, `recv` or a re-dump request other than `ENOBUFS`, `EAGAIN` and
    /// `EINTR` (which are handled here).
    pub fn recv(&mut self, timeout_ns: u64) -> io::Result<Received<'_>> {
        if self.dump_pending {
            self.request_dump()?;
        }
        if crate::poll::wait_readable(&[self.fd.as_fd()], Some(timeout_ns))? == 0 {
            return Ok(Received::Timeout);
        }
        // SAFETY: `self.buf` is a live, writable buffer of `self.buf.len()` bytes we own.
        let got = syscall!(unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        });
        let got = match got {
            // Non-negative by the syscall! contract; with MSG_TRUNC, the datagram's length.
            Ok(len) => len as usize,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.request_dump()?;
                return Ok(Received::Overrun);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(Received::Timeout);
            }
            Err(e) => return Err(e),
        };
        if got > self.buf.len() {
            self.request_dump()?;
            return Ok(Received::Overrun);
        }
        // A dump asked for while another ran (`dump_pending`) is asked again by the next call,
        // which comes soon: the running dump's datagrams keep this socket readable.
        Ok(Received::Messages(parse_neigh_messages(&self.buf[..got])))
    }

    /// The socket's descriptor, for polling it together with others.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Turns a refused dump or a malformed message into an `io::Error` of kind `InvalidData`.
impl From<NeighError> for io::Error {
    fn from(e: NeighError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Appends one neighbour message to `out`, padded to 4 bytes.
    fn push_neigh(
        out: &mut Vec<u8>,
        kind: u16,
        family: u8,
        ifindex: u32,
        state: u16,
        attrs: &[(u16, &[u8])],
    ) {
        let start = out.len();
        out.extend_from_slice(&[0u8; NLMSGHDR_LEN + NDMSG_LEN]);
        out[start + 4..start + 6].copy_from_slice(&kind.to_ne_bytes());
        let nd = start + NLMSGHDR_LEN;
        out[nd + field::FAMILY] = family;
        out[nd + field::IFINDEX..nd + field::IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
        out[nd + field::STATE..nd + field::STATE + 2].copy_from_slice(&state.to_ne_bytes());
        for (kind, payload) in attrs {
            let len = (RTA_HDR_LEN + payload.len()) as u16;
            out.extend_from_slice(&len.to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(payload);
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        }
        let total = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&total.to_ne_bytes());
    }

    /// Appends a header-only message (`NLMSG_DONE`) or an `NLMSG_ERROR` with `error`.
    fn push_control(out: &mut Vec<u8>, kind: i32, error: Option<i32>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; NLMSGHDR_LEN]);
        if let Some(error) = error {
            out.extend_from_slice(&error.to_ne_bytes());
            out.extend_from_slice(&[0u8; NLMSGHDR_LEN]);
        } else {
            out.extend_from_slice(&0i32.to_ne_bytes());
        }
        out[start + 4..start + 6].copy_from_slice(&(kind as u16).to_ne_bytes());
        let total = (out.len() - start) as u32;
        out[start..start + 4].copy_from_slice(&total.to_ne_bytes());
    }

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];

    fn collect(buf: &[u8]) -> Vec<Result<NeighMessage, NeighError>> {
        parse_neigh_messages(buf).collect()
    }

    #[test]
    fn dump_request_layout() {
        let req = getneigh_dump_request(7);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 30);
        // NLM_F_REQUEST | NLM_F_ROOT | NLM_F_MATCH.
        assert_eq!(u16::from_ne_bytes(req[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 7);
        assert_eq!(req[16], 2, "AF_INET");
    }

    #[test]
    fn parses_a_dump_datagram() {
        let mut buf = Vec::new();
        push_neigh(
            &mut buf,
            libc::RTM_NEWNEIGH,
            libc::AF_INET as u8,
            3,
            libc::NUD_REACHABLE,
            // NDA_CACHEINFO (3) is skipped; NLA_F_NET_BYTEORDER on NDA_DST is masked off.
            &[
                (0x4000 | libc::NDA_DST, &[10, 0, 0, 5]),
                (libc::NDA_LLADDR, &MAC),
                (3, &[0u8; 16]),
            ],
        );
        // An IPv6 neighbour on the same group is skipped.
        push_neigh(
            &mut buf,
            libc::RTM_NEWNEIGH,
            libc::AF_INET6 as u8,
            3,
            libc::NUD_REACHABLE,
            &[(libc::NDA_DST, &[0u8; 16])],
        );
        push_neigh(
            &mut buf,
            libc::RTM_NEWNEIGH,
            libc::AF_INET as u8,
            3,
            libc::NUD_INCOMPLETE,
            &[(libc::NDA_DST, &[10, 0, 0, 6])],
        );
        push_control(&mut buf, libc::NLMSG_DONE, None);
        let items = collect(&buf);
        let reachable = NeighborUpdate {
            change: NeighborChange::New,
            ifindex: 3,
            ip: Ipv4Addr::new(10, 0, 0, 5),
            mac: Some(MAC),
            state: libc::NUD_REACHABLE,
        };
        let incomplete = NeighborUpdate {
            ip: Ipv4Addr::new(10, 0, 0, 6),
            mac: None,
            state: libc::NUD_INCOMPLETE,
            ..reachable
        };
        assert_eq!(
            items,
            vec![
                Ok(NeighMessage::Update(reachable)),
                Ok(NeighMessage::Update(incomplete)),
                Ok(NeighMessage::DumpDone),
            ]
        );
        assert_eq!(reachable.usable_mac(), Some(MAC));
        assert_eq!(incomplete.usable_mac(), None);
    }

    #[test]
    fn usable_states() {
        let base = NeighborUpdate {
            change: NeighborChange::New,
            ifindex: 1,
            ip: Ipv4Addr::new(10, 0, 0, 1),
            mac: Some(MAC),
            state: 0,
        };
        for state in [
            libc::NUD_REACHABLE,
            libc::NUD_STALE,
            libc::NUD_DELAY,
            libc::NUD_PROBE,
            libc::NUD_PERMANENT,
            libc::NUD_NOARP,
        ] {
            assert_eq!(NeighborUpdate { state, ..base }.usable_mac(), Some(MAC));
        }
        for state in [0, libc::NUD_INCOMPLETE, libc::NUD_FAILED] {
            assert_eq!(NeighborUpdate { state, ..base }.usable_mac(), None);
        }
        let deleted = NeighborUpdate {
            change: NeighborChange::Deleted,
            state: libc::NUD_PERMANENT,
            ..base
        };
        assert_eq!(deleted.usable_mac(), None);
        let no_mac = NeighborUpdate {
            state: libc::NUD_NOARP,
            mac: None,
            ..base
        };
        assert_eq!(no_mac.usable_mac(), None);
    }

    #[test]
    fn deletions_acks_and_errors() {
        let mut buf = Vec::new();
        push_control(&mut buf, libc::NLMSG_ERROR, Some(0));
        push_neigh(
            &mut buf,
            libc::RTM_DELNEIGH,
            libc::AF_INET as u8,
            9,
            libc::NUD_FAILED,
            &[(libc::NDA_DST, &[10, 9, 9, 9])],
        );
        push_control(&mut buf, libc::NLMSG_ERROR, Some(-libc::EPERM));
        push_control(&mut buf, libc::NLMSG_DONE, None);
        let items = collect(&buf);
        assert_eq!(
            items.len(),
            2,
            "the ack is skipped; the error ends it: {items:?}"
        );
        let Ok(NeighMessage::Update(update)) = items[0] else {
            panic!("{items:?}");
        };
        assert_eq!(update.change, NeighborChange::Deleted);
        assert_eq!(update.ifindex, 9);
        assert_eq!(items[1], Err(NeighError::Refused { errno: libc::EPERM }));
        let message = io::Error::from(NeighError::Refused { errno: libc::EPERM }).to_string();
        assert!(message.contains("refused the neighbour dump"), "{message}");
    }

    #[test]
    fn malformed_messages_are_refused() {
        let malformed = |buf: &[u8]| {
            let items = collect(buf);
            assert!(
                matches!(items.last(), Some(Err(NeighError::Malformed { .. }))),
                "{items:?}"
            );
        };
        let mut good = Vec::new();
        push_neigh(
            &mut good,
            libc::RTM_NEWNEIGH,
            libc::AF_INET as u8,
            3,
            libc::NUD_PERMANENT,
            &[(libc::NDA_DST, &[10, 0, 0, 5]), (libc::NDA_LLADDR, &MAC)],
        );
        assert_eq!(collect(&good).len(), 1);
        // Truncated anywhere, with nlmsg_len fixed up or not, it is refused.
        for cut in 1..good.len() {
            malformed(&good[..cut]);
            if cut >= NLMSGHDR_LEN {
                let mut short = good[..cut].to_vec();
                short[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
                if cut < NLMSGHDR_LEN + NDMSG_LEN + RTA_HDR_LEN + 4 {
                    malformed(&short);
                } else if cut > NLMSGHDR_LEN + NDMSG_LEN + 2 * RTA_HDR_LEN + 4
                    && cut < good.len() - 2
                {
                    // Cut inside NDA_LLADDR's payload: its length now overruns. (A cut right
                    // after NDA_DST is a complete message; a partial attribute header is
                    // ignored, as the kernel's own nla_for_each_attr does, and the last 2 bytes are padding.)
                    let items = collect(&short);
                    assert!(items.iter().any(Result::is_err), "cut {cut}: {items:?}");
                }
            }
        }
        let mut wrong_dst = Vec::new();
        push_neigh(
            &mut wrong_dst,
            libc::RTM_NEWNEIGH,
            libc::AF_INET as u8,
            3,
            libc::NUD_PERMANENT,
            &[(libc::NDA_DST, &[10, 0, 0])],
        );
        malformed(&wrong_dst);
        let mut no_dst = Vec::new();
        push_neigh(
            &mut no_dst,
            libc::RTM_NEWNEIGH,
            libc::AF_INET as u8,
            3,
            libc::NUD_PERMANENT,
            &[],
        );
        malformed(&no_dst);
        let mut no_ifindex = Vec::new();
        push_neigh(
            &mut no_ifindex,
            libc::RTM_NEWNEIGH,
            libc::AF_INET as u8,
            0,
            libc::NUD_PERMANENT,
            &[(libc::NDA_DST, &[10, 0, 0, 5])],
        );
        malformed(&no_ifindex);
        // A zero-length message cannot make the parser stand still.
        malformed(&[0u8; 32]);
        assert!(collect(&[]).is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let items = collect(&bytes);
            prop_assert!(items.len() <= bytes.len() / NLMSGHDR_LEN + 1);
            // Nothing follows an error.
            if let Some(at) = items.iter().position(Result::is_err) {
                prop_assert_eq!(at, items.len() - 1);
            }
        }

        #[test]
        fn corrupted_messages_never_panic(at in 0usize..64, value in any::<u8>()) {
            let mut buf = Vec::new();
            push_neigh(
                &mut buf,
                libc::RTM_NEWNEIGH,
                libc::AF_INET as u8,
                3,
                libc::NUD_STALE,
                &[(libc::NDA_DST, &[10, 0, 0, 5]), (libc::NDA_LLADDR, &MAC)],
            );
            push_control(&mut buf, libc::NLMSG_DONE, None);
            let at = at % buf.len();
            buf[at] = value;
            let _ = collect(&buf);
        }
    }

    // ----- Against the kernel, in a private network namespace. -----

    use crate::testenv::{ip, TestNetns};

    /// A fresh network namespace with a veth pair `d0` <-> `d1`, `d0` up. (veth, not dummy:
    /// not every kernel here builds the dummy driver.)
    fn veth_netns() -> TestNetns {
        let ns = TestNetns::new("neigh");
        ns.ip(&["link", "add", "d0", "type", "veth", "peer", "d1"]);
        ns.ip(&["link", "set", "d0", "up"]);
        ns
    }

    /// Receives until an update for `ip` with `change` arrives, or fails after `bound_ns`.
    fn expect_update(
        watch: &mut NeighborWatch,
        ip: Ipv4Addr,
        change: NeighborChange,
        bound_ns: u64,
    ) -> NeighborUpdate {
        let deadline = crate::monotonic_ns() + bound_ns;
        loop {
            let now = crate::monotonic_ns();
            assert!(
                now < deadline,
                "no {change:?} for {ip} within {bound_ns} ns"
            );
            match watch.recv(deadline - now).unwrap() {
                Received::Messages(items) => {
                    for item in items {
                        if let NeighMessage::Update(u) = item.unwrap() {
                            if u.ip == ip && u.change == change {
                                return u;
                            }
                        }
                    }
                }
                Received::Timeout => {}
                Received::Overrun => panic!("a quiet test namespace overran"),
            }
        }
    }

    #[test]
    fn watches_the_kernel_table() {
        const BOUND_NS: u64 = 2_000_000_000;
        if !crate::testenv::root_or_skip("neigh::watches_the_kernel_table") {
            return;
        }
        let ns = veth_netns();
        let n = ns.name();
        // Present before the watcher opens: the initial dump must bring it.
        ip(&[
            "-n",
            n,
            "neigh",
            "add",
            "10.99.7.1",
            "lladdr",
            "02:00:00:00:07:01",
            "dev",
            "d0",
            "nud",
            "permanent",
        ]);
        let _inside = crate::netdev::enter_netns(n).unwrap();
        let d0 = crate::netdev::ifindex("d0").unwrap();
        let mut watch = NeighborWatch::open().unwrap();
        let before = expect_update(
            &mut watch,
            Ipv4Addr::new(10, 99, 7, 1),
            NeighborChange::New,
            BOUND_NS,
        );
        assert_eq!(before.ifindex, d0);
        assert_eq!(before.usable_mac(), Some([2, 0, 0, 0, 7, 1]));

        let start = crate::monotonic_ns();
        ip(&[
            "-n",
            n,
            "neigh",
            "add",
            "10.99.7.2",
            "lladdr",
            "02:00:00:00:07:02",
            "dev",
            "d0",
            "nud",
            "permanent",
        ]);
        let added = expect_update(
            &mut watch,
            Ipv4Addr::new(10, 99, 7, 2),
            NeighborChange::New,
            BOUND_NS,
        );
        assert_eq!(added.ifindex, d0);
        assert_eq!(added.state, libc::NUD_PERMANENT);
        assert_eq!(added.usable_mac(), Some([2, 0, 0, 0, 7, 2]));

        ip(&["-n", n, "neigh", "del", "10.99.7.2", "dev", "d0"]);
        let deleted = expect_update(
            &mut watch,
            Ipv4Addr::new(10, 99, 7, 2),
            NeighborChange::Deleted,
            BOUND_NS,
        );
        assert_eq!(deleted.ifindex, d0);
        assert_eq!(deleted.usable_mac(), None);
        eprintln!(
            "neighbour add and delete seen in {} µs (two ip(8) runs included)",
            (crate::monotonic_ns() - start) / 1000
        );
    }
}
