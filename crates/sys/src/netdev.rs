//! Network devices: names, indexes, link facts, network namespaces, and a raw packet socket.
//!
//! # Design
//!
//! The control plane needs a handful of facts about an interface before it binds AF_XDP
//! sockets to it: its index, how many queues it has (one socket per queue), its MAC address
//! (to fill in Ethernet headers) and its MTU (to size frames). This module answers those
//! questions and nothing more; configuring links stays with `ip(8)`.
//!
//! The facts come from one `RTM_GETLINK` request on a route netlink socket, parsed by
//! [`parse_link_reply`], a pure function with byte-vector tests. Reading
//! `/sys/class/net/NAME/...` was the obvious alternative and was rejected: sysfs shows the
//! devices of the network namespace that *mounted* `/sys`, not the namespace of the calling
//! thread, so after [`enter_netns`] it silently describes the wrong machine (measured: a veth
//! created in a fresh namespace is invisible under `/sys/class/net` after `setns`). A netlink
//! socket, like every socket, belongs to the namespace of the thread that created it, so the
//! answer is always about the namespace the caller is in. `ioctl(SIOCGIF*)` would also be
//! namespace-correct but has no request for the queue count, so it would have been a second
//! mechanism next to netlink rather than instead of it.
//!
//! Two helpers exist mainly for tests and the lab tooling: [`enter_netns`], which moves the
//! calling *thread* into a named network namespace (as created by `ip netns add`) and back, and
//! [`PacketSocket`], an `AF_PACKET` raw socket that sees every frame on one interface. Both are
//! documented, safe and small rather than fast.
//!
//! # Safety contract
//!
//! Every kernel call takes either a descriptor we own ([`OwnedFd`]) or a pointer and length of a
//! live Rust buffer or stack value, passed in the same expression that borrows it. Bytes that
//! come back from the kernel are parsed with bounds checks and never trusted to be well formed:
//! a malformed netlink reply is an error, not a panic.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;

/// The longest interface name the kernel accepts, without the terminating NUL (`IFNAMSIZ - 1`).
pub const IFNAME_LEN_MAX: usize = 15;

/// The receive buffer for one `RTM_GETLINK` reply. A veth link's reply is about 1.5 KiB; the
/// statistics blocks grow with the kernel, so leave ample room. Control plane only.
const NETLINK_REPLY_BYTES_MAX: usize = 32 * 1024;

/// `struct nlmsghdr` is 16 bytes, `struct ifinfomsg` 16 bytes (`linux/netlink.h`,
/// `linux/rtnetlink.h`).
const NLMSGHDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
/// `struct rtattr`/`nlattr` header: `u16 len, u16 type`.
const RTA_HDR_LEN: usize = 4;
/// The top two bits of an attribute type are flags (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Attribute numbers from `enum { IFLA_... }` in `linux/if_link.h` (not exported by `libc`).
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;

/// Where `ip netns add` bind-mounts named namespaces.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Why a network-device query failed. Carried inside an [`io::Error`].
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    /// The name is empty, longer than [`IFNAME_LEN_MAX`] bytes, or contains a NUL or `/`.
    /// Fix the configuration.
    #[error("{name:?} is not a valid interface name (1..={IFNAME_LEN_MAX} bytes, no NUL or '/')")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// No interface has this name in the calling thread's network namespace. Check the name,
    /// and that the thread has entered the namespace the interface lives in.
    #[error("no interface named {name:?} in this thread's network namespace: {source}")]
    NoSuchInterface {
        /// The name as given.
        name: String,
        /// The error from `if_nametoindex` (usually `ENODEV`).
        source: io::Error,
    },
    /// No interface has this index in the calling thread's network namespace. The interface
    /// was deleted or the thread is in another namespace; look it up again by name.
    #[error("no interface with index {ifindex} in this thread's network namespace")]
    NoSuchIndex {
        /// The index as given.
        ifindex: u32,
    },
    /// The kernel's netlink reply did not have the expected shape. This is a kernel ABI change
    /// or a bug here; report it.
    #[error("malformed RTM_GETLINK reply: {what}")]
    Netlink {
        /// What was wrong with it.
        what: &'static str,
    },
    /// The link did not report an attribute it should have (for example a device without a
    /// hardware address has no MAC). Do not use this interface for Ethernet.
    #[error("{} reports no {what}", describe_ifindex(*ifindex))]
    MissingAttribute {
        /// The interface index.
        ifindex: u32,
        /// Which attribute.
        what: &'static str,
    },
    /// The named network namespace does not exist. Create it with `ip netns add NAME`.
    #[error(
        "cannot open network namespace {name:?} under {NETNS_RUN_DIR} (create it with `ip netns \
         add {name}`): {source}"
    )]
    NoSuchNetns {
        /// The namespace name.
        name: String,
        /// The error from `open` (usually `ENOENT`).
        source: io::Error,
    },
}

impl NetdevError {
    fn into_io(self, kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, self)
    }
}

/// Facts about one link, as reported by `RTM_GETLINK` in the caller's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// The interface index.
    pub ifindex: u32,
    /// The MTU in bytes (`IFLA_MTU`): the largest IP packet, without the Ethernet header.
    pub mtu: u32,
    /// The hardware address if it is 6 bytes long (Ethernet); `None` for loopback-like or
    /// tunnel devices with another address length.
    pub mac: Option<[u8; 6]>,
    /// The number of receive queues allocated (`IFLA_NUM_RX_QUEUES`). For veth this is what
    /// `numrxqueues` asked for; a driver may run fewer after `ethtool -L`.
    pub rx_queue_count: u32,
    /// The number of transmit queues allocated (`IFLA_NUM_TX_QUEUES`).
    pub tx_queue_count: u32,
}

fn validate_name(name: &str) -> io::Result<CString> {
    let invalid = || {
        NetdevError::InvalidName {
            name: name.to_owned(),
        }
        .into_io(io::ErrorKind::InvalidInput)
    };
    if name.is_empty() || name.len() > IFNAME_LEN_MAX || name.contains('/') {
        return Err(invalid());
    }
    CString::new(name).map_err(|_| invalid())
}

/// The index of the interface called `name` in the calling thread's network namespace
/// (`if_nametoindex`).
///
/// # Errors
///
/// `InvalidInput` ([`NetdevError::InvalidName`]) for a name the kernel could never accept;
/// `NotFound` ([`NetdevError::NoSuchInterface`], naming the interface) if there is none.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let cname = validate_name(name)?;
    // SAFETY: `cname` is a live NUL-terminated string; `if_nametoindex` only reads it.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        let source = io::Error::last_os_error();
        return Err(NetdevError::NoSuchInterface {
            name: name.to_owned(),
            source,
        }
        .into_io(io::ErrorKind::NotFound));
    }
    Ok(index)
}

/// How messages name the interface with index `ifindex`: its name and index (`mlg-vb (index
/// 2)`), or just the index when it has no name here (gone, or in another namespace).
pub fn describe_ifindex(ifindex: u32) -> String {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` is a live, writable buffer of IF_NAMESIZE bytes, the size
    // `if_indextoname` writes at most (the name and its NUL).
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return format!("interface index {ifindex}");
    }
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    format!("{} (index {ifindex})", String::from_utf8_lossy(&bytes))
}

/// The link facts of the interface with index `ifindex`, from one `RTM_GETLINK` request made in
/// the calling thread's network namespace.
///
/// # Errors
///
/// `NotFound` ([`NetdevError::NoSuchIndex`]) if no such interface exists here; socket errors;
/// `InvalidData` ([`NetdevError::Netlink`]) for a reply we cannot parse.
pub fn link_info(ifindex: u32) -> io::Result<LinkInfo> {
    let index = i32::try_from(ifindex)
        .map_err(|_| NetdevError::NoSuchIndex { ifindex }.into_io(io::ErrorKind::NotFound))?;
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

    let request = getlink_request(index, 1);
    // An unbound netlink socket sending to the kernel (nl_pid 0) is auto-bound by the kernel.
    // SAFETY: `zeroed` is a valid bit pattern for the plain-integer `sockaddr_nl`.
    let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `request` is a live byte array of the given length; `kernel` is a live
    // `sockaddr_nl` whose exact size we pass; the kernel only reads both.
    syscall!(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            ptr::from_ref(&kernel).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;

    // rtnetlink answers synchronously: the reply is queued on our socket before `sendto`
    // returns, so a non-blocking read finds it, and a missing reply cannot hang us.
    let mut reply = vec![0u8; NETLINK_REPLY_BYTES_MAX];
    // SAFETY: `reply` is a live, writable buffer of `reply.len()` bytes owned by us.
    let got = syscall!(unsafe {
        libc::recv(
            fd.as_raw_fd(),
            reply.as_mut_ptr().cast(),
            reply.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    })?;
    // `recv` returned a non-negative count; with MSG_TRUNC it is the datagram's real length.
    let got = got as usize;
    if got > reply.len() {
        return Err(NetdevError::Netlink {
            what: "reply larger than the receive buffer",
        }
        .into_io(io::ErrorKind::InvalidData));
    }
    parse_link_reply(&reply[..got], ifindex)
}

/// Builds an `RTM_GETLINK` request for one interface index: `nlmsghdr` then `ifinfomsg`, in
/// host byte order as netlink requires.
fn getlink_request(ifindex: i32, seq: u32) -> [u8; NLMSGHDR_LEN + IFINFOMSG_LEN] {
    let mut req = [0u8; NLMSGHDR_LEN + IFINFOMSG_LEN];
    req[0..4].copy_from_slice(&((NLMSGHDR_LEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0; ifi_family AF_UNSPEC, pad, ifi_type 0.
    req[NLMSGHDR_LEN + 4..NLMSGHDR_LEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
    // ifi_flags 0, ifi_change 0.
    req
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([bytes[0], bytes[1]]))
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Parses the kernel's answer to an `RTM_GETLINK` request for `ifindex`: either an
/// `NLMSG_ERROR` (turned into the `io::Error` it carries, `ENODEV` becoming
/// [`NetdevError::NoSuchIndex`]) or one `RTM_NEWLINK` whose attributes we read.
///
/// Never panics, whatever the bytes.
///
/// # Errors
///
/// As for [`link_info`].
pub fn parse_link_reply(buf: &[u8], ifindex: u32) -> io::Result<LinkInfo> {
    let malformed = |what| NetdevError::Netlink { what }.into_io(io::ErrorKind::InvalidData);
    let msg_len = read_u32(buf, 0).ok_or_else(|| malformed("shorter than nlmsghdr"))? as usize;
    let msg_type = read_u16(buf, 4).ok_or_else(|| malformed("shorter than nlmsghdr"))?;
    if msg_len < NLMSGHDR_LEN || msg_len > buf.len() {
        return Err(malformed("nlmsg_len outside the datagram"));
    }
    let msg = &buf[..msg_len];
    if i32::from(msg_type) == libc::NLMSG_ERROR {
        // struct nlmsgerr { int error; struct nlmsghdr msg; }: error is a negative errno.
        let error = read_u32(msg, NLMSGHDR_LEN).ok_or_else(|| malformed("short NLMSG_ERROR"))?;
        let errno = (error as i32).wrapping_neg();
        return Err(if errno == libc::ENODEV {
            NetdevError::NoSuchIndex { ifindex }.into_io(io::ErrorKind::NotFound)
        } else {
            io::Error::from_raw_os_error(errno)
        });
    }
    if msg_type != libc::RTM_NEWLINK {
        return Err(malformed("reply is neither NLMSG_ERROR nor RTM_NEWLINK"));
    }
    let reported = read_u32(msg, NLMSGHDR_LEN + 4).ok_or_else(|| malformed("short ifinfomsg"))?;
    if reported != ifindex {
        return Err(malformed("reply describes another interface"));
    }
    let mut info = LinkInfo {
        ifindex,
        mtu: 0,
        mac: None,
        rx_queue_count: 0,
        tx_queue_count: 0,
    };
    let (mut have_mtu, mut have_rx, mut have_tx) = (false, false, false);
    let mut at = NLMSGHDR_LEN + IFINFOMSG_LEN;
    // Each attribute advances `at` by at least RTA_HDR_LEN, so this loop ends.
    while at + RTA_HDR_LEN <= msg.len() {
        let rta_len = read_u16(msg, at).ok_or_else(|| malformed("short rtattr"))? as usize;
        let rta_type = read_u16(msg, at + 2).ok_or_else(|| malformed("short rtattr"))?;
        if rta_len < RTA_HDR_LEN || at + rta_len > msg.len() {
            return Err(malformed("rtattr length outside the message"));
        }
        let payload = &msg[at + RTA_HDR_LEN..at + rta_len];
        match rta_type & NLA_TYPE_MASK {
            IFLA_MTU => {
                info.mtu = read_u32(payload, 0).ok_or_else(|| malformed("short IFLA_MTU"))?;
                have_mtu = true;
            }
            IFLA_NUM_RX_QUEUES => {
                info.rx_queue_count =
                    read_u32(payload, 0).ok_or_else(|| malformed("short IFLA_NUM_RX_QUEUES"))?;
                have_rx = true;
            }
            IFLA_NUM_TX_QUEUES => {
                info.tx_queue_count =
                    read_u32(payload, 0).ok_or_else(|| malformed("short IFLA_NUM_TX_QUEUES"))?;
                have_tx = true;
            }
            IFLA_ADDRESS => {
                info.mac = <[u8; 6]>::try_from(payload).ok();
            }
            _ => {}
        }
        // Attributes are padded to 4 bytes (RTA_ALIGN); the last one may lack its padding.
        at = at.saturating_add(rta_len.next_multiple_of(4));
    }
    if !(have_mtu && have_rx && have_tx) {
        return Err(malformed("IFLA_MTU or a queue count is missing"));
    }
    Ok(info)
}

/// The number of receive queues of interface `name` in this thread's network namespace. Bind
/// one AF_XDP socket per queue: on veth the sender picks the queue.
///
/// # Errors
///
/// As for [`ifindex`] and [`link_info`].
pub fn rx_queue_count(name: &str) -> io::Result<usize> {
    Ok(link_info(ifindex(name)?)?.rx_queue_count as usize)
}

/// The Ethernet (MAC) address of interface `name`.
///
/// # Errors
///
/// As for [`ifindex`] and [`link_info`], and `Unsupported`
/// ([`NetdevError::MissingAttribute`]) if the device has no 6-byte hardware address.
pub fn mac_address(name: &str) -> io::Result<[u8; 6]> {
    let index = ifindex(name)?;
    link_info(index)?.mac.ok_or_else(|| {
        NetdevError::MissingAttribute {
            ifindex: index,
            what: "6-byte hardware address",
        }
        .into_io(io::ErrorKind::Unsupported)
    })
}

/// The MTU of interface `name` in bytes (the largest IP packet, excluding the Ethernet header).
///
/// # Errors
///
/// As for [`ifindex`] and [`link_info`].
pub fn mtu(name: &str) -> io::Result<u32> {
    Ok(link_info(ifindex(name)?)?.mtu)
}

/// The primary IPv4 address of interface `name` and its prefix length, as `ip -4 addr`
/// shows first, or `None` if it has no IPv4 address. Asked with `ioctl(SIOCGIFADDR)` and
/// `ioctl(SIOCGIFNETMASK)` on a socket of the calling thread's namespace (one address is all
/// the control plane needs; netlink's `RTM_GETADDR` dump would give every address).
///
/// # Errors
///
/// As for [`ifindex`]; socket and `ioctl` errors other than "no address" (`EADDRNOTAVAIL`).
pub fn ipv4_address(name: &str) -> io::Result<Option<(std::net::Ipv4Addr, u8)>> {
    let cname = validate_name(name)?;
    ifindex(name)?;
    let raw = syscall!(
        // SAFETY: plain socket creation, no pointers.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
    )?;
    // SAFETY: `raw` is a descriptor we just created and nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let ask = |request: libc::c_ulong| -> io::Result<Option<[u8; 4]>> {
        // SAFETY: `zeroed` is a valid bit pattern for the plain-integer and union `ifreq`.
        let mut req: libc::ifreq = unsafe { mem::zeroed() };
        for (dst, &src) in req.ifr_name.iter_mut().zip(cname.as_bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: `req` is a live `ifreq` with a NUL-terminated name (zeroed beyond the name,
        // which `validate_name` bounded to `IFNAME_LEN_MAX`); the kernel writes only inside it.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, ptr::from_mut(&mut req)) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
                return Ok(None);
            }
            return Err(err);
        }
        // SAFETY: the kernel filled `ifru_addr` with a `sockaddr_in` for these requests; a
        // `sockaddr` and a `sockaddr_in` are both 16 plain bytes, so reading the union's
        // `sockaddr` member and its data bytes is defined.
        let addr = unsafe { req.ifr_ifru.ifru_addr };
        // sockaddr_in: family (2), port (2), address (4), in network byte order.
        let d = addr.sa_data;
        Ok(Some([d[2] as u8, d[3] as u8, d[4] as u8, d[5] as u8]))
    };
    let Some(addr) = ask(libc::SIOCGIFADDR)? else {
        return Ok(None);
    };
    let mask = ask(libc::SIOCGIFNETMASK)?.unwrap_or([255, 255, 255, 255]);
    let prefix = u32::from_be_bytes(mask).leading_ones() as u8;
    Ok(Some((std::net::Ipv4Addr::from(addr), prefix)))
}

/// Moves the calling thread back to its previous network namespace when dropped.
///
/// Returned by [`enter_netns`]. It is neither `Send` nor `Sync`: the namespace switch belongs to
/// the thread that made it, and restoring from another thread would move the wrong thread.
#[derive(Debug)]
pub struct NetnsGuard {
    previous: OwnedFd,
    _not_send: PhantomData<*const ()>,
}

/// Moves the calling **thread** (not the process) into the named network namespace, as created
/// by `ip netns add NAME` under `/var/run/netns`, until the returned guard is dropped.
///
/// Only this thread moves: other threads, including ones spawned later by *other* threads, stay
/// where they were. Threads spawned by this thread while the guard lives start in the new
/// namespace. Sockets (and so AF_XDP sockets and netlink queries) belong to the namespace of the
/// thread that creates them and stay there after the guard is dropped.
///
/// # Errors
///
/// `NotFound` ([`NetdevError::NoSuchNetns`]) if the namespace does not exist; `EPERM` from
/// `setns` without `CAP_SYS_ADMIN`.
pub fn enter_netns(name: &str) -> io::Result<NetnsGuard> {
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        return Err(NetdevError::InvalidName {
            name: name.to_owned(),
        }
        .into_io(io::ErrorKind::InvalidInput));
    }
    // `thread-self`, not `self`: `/proc/self` is the thread-group leader, which may be elsewhere.
    let previous = OwnedFd::from(File::open("/proc/thread-self/ns/net")?);
    let target = File::open(format!("{NETNS_RUN_DIR}/{name}")).map_err(|source| {
        let kind = source.kind();
        NetdevError::NoSuchNetns {
            name: name.to_owned(),
            source,
        }
        .into_io(kind)
    })?;
    // SAFETY: `target` is an open namespace file we own for the duration of the call; setns
    // takes no pointers.
    syscall!(unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(NetnsGuard {
        previous,
        _not_send: PhantomData,
    })
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: `previous` is an open namespace descriptor we own; setns takes no pointers.
        let ret = syscall!(unsafe { libc::setns(self.previous.as_raw_fd(), libc::CLONE_NEWNET) });
        // We were in that namespace a moment ago with the same privileges; failing to return
        // would leave this thread silently in the wrong namespace, which is worse than aborting.
        assert!(
            ret.is_ok(),
            "cannot return to the previous network namespace: {ret:?}"
        );
    }
}

/// An `AF_PACKET` raw socket bound to one interface: it receives every frame the interface sends
/// or receives (`ETH_P_ALL`) and can inject whole Ethernet frames.
///
/// Test-support quality: one frame per system call, for checking what an AF_XDP socket put on
/// the wire and for feeding it frames. Not for the data path.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a raw packet socket in the calling thread's network namespace, bound to `ifindex`.
    ///
    /// # Errors
    ///
    /// `EPERM` without `CAP_NET_RAW`; `ENODEV` if there is no such interface here.
    pub fn bind(ifindex: u32) -> io::Result<Self> {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation, no pointers.
        let raw = syscall!(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        })?;
        // SAFETY: `raw` is a descriptor we just created and nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let index =
            i32::try_from(ifindex).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
        // SAFETY: `zeroed` is a valid bit pattern for the plain-integer `sockaddr_ll`.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index;
        // SAFETY: `addr` is a live `sockaddr_ll` whose exact size we pass; the kernel reads it.
        syscall!(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                ptr::from_ref(&addr).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(Self { fd })
    }

    /// Waits up to `timeout_ns` for one frame and copies it into `buf`.
    ///
    /// Returns `Some(len)` with the frame's full length (which may exceed `buf.len()`, in which
    /// case the frame was truncated to `buf`), or `None` on timeout. Frames this interface sent
    /// are seen too, so callers filter for the frame they expect.
    ///
    /// # Errors
    ///
    /// Errors from `ppoll` or `recv`.
    pub fn recv(&self, buf: &mut [u8], timeout_ns: u64) -> io::Result<Option<usize>> {
        if crate::poll::wait_readable(&[self.fd.as_fd()], Some(timeout_ns))? == 0 {
            return Ok(None);
        }
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes that we borrow mutably.
        let got = syscall!(unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        });
        match got {
            // Non-negative by the syscall! contract.
            Ok(len) => Ok(Some(len as usize)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one whole Ethernet frame (header included) out of the bound interface.
    ///
    /// # Errors
    ///
    /// Errors from `send` (`EMSGSIZE` for a frame above the MTU, `ENETDOWN` if the link is down).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a live buffer of `frame.len()` bytes; the kernel only reads it.
        syscall!(unsafe {
            libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0)
        })?;
        Ok(())
    }

    /// The socket's descriptor, for polling.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an RTM_NEWLINK reply for `ifindex` carrying the given attributes.
    fn newlink(ifindex: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut msg = vec![0u8; NLMSGHDR_LEN + IFINFOMSG_LEN];
        msg[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        msg[NLMSGHDR_LEN + 4..NLMSGHDR_LEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
        for (kind, payload) in attrs {
            let len = (RTA_HDR_LEN + payload.len()) as u16;
            msg.extend_from_slice(&len.to_ne_bytes());
            msg.extend_from_slice(&kind.to_ne_bytes());
            msg.extend_from_slice(payload);
            while !msg.len().is_multiple_of(4) {
                msg.push(0);
            }
        }
        let total = msg.len() as u32;
        msg[0..4].copy_from_slice(&total.to_ne_bytes());
        msg
    }

    #[test]
    fn request_layout() {
        let req = getlink_request(7, 1);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 18);
        assert_eq!(u16::from_ne_bytes(req[6..8].try_into().unwrap()), 1);
        assert_eq!(i32::from_ne_bytes(req[20..24].try_into().unwrap()), 7);
    }

    #[test]
    fn parses_a_link_reply() {
        let mac = [0x02, 0, 0, 0, 0, 0x0b];
        let reply = newlink(
            5,
            &[
                (3, b"vb\0"),
                (IFLA_MTU, &1500u32.to_ne_bytes()),
                (IFLA_ADDRESS, &mac),
                (IFLA_NUM_TX_QUEUES, &2u32.to_ne_bytes()),
                // With NLA_F_NESTED set, to check the type mask.
                (0x8000 | 18, &[]),
                (IFLA_NUM_RX_QUEUES, &3u32.to_ne_bytes()),
            ],
        );
        let info = parse_link_reply(&reply, 5).unwrap();
        assert_eq!(
            info,
            LinkInfo {
                ifindex: 5,
                mtu: 1500,
                mac: Some(mac),
                rx_queue_count: 3,
                tx_queue_count: 2,
            }
        );
    }

    #[test]
    fn error_reply_becomes_an_io_error() {
        let mut reply = vec![0u8; NLMSGHDR_LEN + 4 + NLMSGHDR_LEN];
        let total = reply.len() as u32;
        reply[0..4].copy_from_slice(&total.to_ne_bytes());
        reply[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        reply[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        let err = parse_link_reply(&reply, 9).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("index 9"), "{err}");
        reply[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        let err = parse_link_reply(&reply, 9).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn malformed_replies_never_panic() {
        let good = newlink(
            5,
            &[
                (IFLA_MTU, &1500u32.to_ne_bytes()),
                (IFLA_NUM_TX_QUEUES, &2u32.to_ne_bytes()),
                (IFLA_NUM_RX_QUEUES, &2u32.to_ne_bytes()),
            ],
        );
        assert!(parse_link_reply(&good, 5).is_ok());
        assert!(parse_link_reply(&good, 6).is_err(), "wrong interface");
        for cut in 0..good.len() {
            let mut short = good[..cut].to_vec();
            if cut >= 4 {
                short[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            assert!(parse_link_reply(&short, 5).is_err(), "cut at {cut}");
        }
        // Every single-byte corruption either parses or errors, without panicking.
        for at in 0..good.len() {
            for value in [0u8, 1, 3, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                let _ = parse_link_reply(&bad, 5);
            }
        }
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", "a/b", "sixteen-chars-xx", "nul\0"] {
            let err = ifindex(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        let err = ifindex("mlg-absent0").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("mlg-absent0"), "{err}");
    }

    #[test]
    fn loopback_facts() {
        let lo = ifindex("lo").unwrap();
        assert_eq!(lo, 1);
        let info = link_info(lo).unwrap();
        assert_eq!(info.mtu, mtu("lo").unwrap());
        assert!(info.rx_queue_count >= 1);
        assert_eq!(rx_queue_count("lo").unwrap(), info.rx_queue_count as usize);
        // Loopback has a 6-byte all-zero address.
        assert_eq!(mac_address("lo").unwrap(), [0; 6]);
        let err = link_info(999_999).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        // Loopback's address is 127.0.0.1/8 in every namespace where lo is up or down.
        assert_eq!(
            ipv4_address("lo").unwrap(),
            Some((std::net::Ipv4Addr::LOCALHOST, 8))
        );
        assert_eq!(
            ipv4_address("mlg-nonexistent").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn missing_netns_is_named() {
        let err = enter_netns("mlg-no-such-ns").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let message = err.to_string();
        assert!(message.contains("ip netns add mlg-no-such-ns"), "{message}");
    }
}
