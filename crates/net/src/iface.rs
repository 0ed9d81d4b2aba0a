//! The sans-IO core of one Ethernet/IPv4 interface: ARP, IPv4 receive with reassembly, ICMP
//! echo, UDP with fragmentation, and TCP segments in and out for the transport above.
//!
//! # Design
//!
//! [`Interface`] owns no memory for packets: frames live in the engine's [`PacketPool`] and
//! move through the core as [`PacketBuf`] handles. A received frame is parsed in place and
//! then has exactly one fate: it is returned as a [`Datagram`] or a [`Segment`] (its window
//! narrowed to the UDP or TCP payload, zero-copy), kept as a fragment until its datagram is
//! complete (see `reasm`), rewritten in place into a reply and queued (ARP reply, ICMP echo
//! reply), or freed and counted under one [`DropReason`]. A datagram the application sends
//! in one buffer that fits the MTU gets its UDP, IPv4 and Ethernet headers written into the
//! headroom in front of its payload, so an echo server returns the very buffer it was given
//! with no copy. Only a payload that must be fragmented, or that arrives as a chain of
//! several frames, is copied, into fresh frames of one fragment each: fragment boundaries
//! fall every `MTU - 20` bytes rounded down to 8, which the app's frames would almost never
//! match.
//!
//! The core makes no system calls and reads no clock (`now_ns` is an argument), so the
//! engine, the simulator and the fuzzers all drive the same code. Every table and queue is
//! allocated in [`Interface::new`] to its configured `*_max` and never grows.
//!
//! # Receive checks (RFC 791, RFC 1122, RFC 1812)
//!
//! Only frames to our MAC (or, for ARP, to broadcast) from an individual source MAC are looked
//! at; IPv4 to the broadcast MAC is refused because we accept no IPv4 broadcast destination
//! (RFC 1122 §3.3.6). IPv4 datagrams must have version 4, a valid IHL, a total length inside
//! the frame (Ethernet padding beyond it is ignored), a correct header checksum, no options,
//! and be addressed to our unicast address. A datagram from a *martian* source is dropped and
//! never answered, each class under its own reason (RFC 1122 §3.2.1.3, RFC 1812 §5.3.7): `0/8`,
//! `127/8`, `224/4`, `240/4`, the limited broadcast, our subnet's broadcast and network
//! addresses (for prefixes below /31), and our own address. Answering any of them would make
//! us a reflector: a reply to a broadcast source is a broadcast. UDP fragments go to
//! reassembly; TCP fragments are dropped as `TcpFragment`, other fragments as `IpFragment`.
//!
//! # UDP checksum policy (RFC 768)
//!
//! Received checksums are classified by [`melange_wire::udp::checksum_status`] (or, for a
//! reassembled datagram, the same rules over its fragments):
//!
//! - `Valid`: accept.
//! - `Zero`: the sender computed no checksum, which RFC 768 allows over IPv4: accept and
//!   count `udp_checksum_zero`.
//! - `Partial`: the field holds the folded pseudo-header sum that Linux leaves for the NIC to
//!   finish (`CHECKSUM_PARTIAL`). Across a veth pair no NIC ever finishes it, and no wire lies
//!   between the two ends to corrupt the data, so with `accept_partial_udp_checksum` (the
//!   default) we accept and count `udp_checksum_partial`; without it we drop as
//!   `UdpBadChecksum`. Only this one exact value is accepted, never an arbitrary bad sum.
//! - `Invalid`: drop and count `UdpBadChecksum`.
//!
//! A received checksum is never forwarded: [`Interface::send_udp`] always computes the full
//! checksum over the pseudo-header, header and payload (a computed zero is sent as `0xffff`).
//!
//! # TCP (RFC 9293)
//!
//! This layer moves TCP segments; connections live in the transport above. A segment passes
//! the IPv4 checks above (so one to a broadcast or multicast address, or from a martian, is
//! already gone) and then: a fixed header that fits with a data offset of 5 to 15 words
//! inside the datagram (else `TcpMalformed`); source and destination ports not 0 (else
//! `TcpPortZero`: port 0 names no connection, and nothing may answer it, not even with a
//! reset); a checksum that verifies (else `TcpBadChecksum`); well-formed options (else
//! `TcpBadOption`: a segment whose option lengths lie cannot be trusted in anything else,
//! see `melange_wire::tcp`). It is then returned as a [`Segment`]: the parsed
//! [`tcp::Repr`] and the frame, its window narrowed to the data, zero-copy. IPv4 fragments
//! of TCP are dropped as `TcpFragment`: we send every segment with DF set and within the
//! MTU, a peer sizes its segments by the MSS we announce, and reassembling them would only
//! spend memory an attacker chooses.
//!
//! Every valid segment addressed to us goes up, on any port, bound or not. The transport
//! owns the connection table and must answer a segment for no connection with a reset
//! (RFC 9293 §3.10.7.1), which it can only do if it sees the segment; a port filter here
//! would be a second copy of its table to keep in step. The alternative rejected is a
//! `bind_tcp` port set like UDP's, with unbound ports dropped or reset here: it splits one
//! decision (is there a connection for this 4-tuple?) across two layers.
//!
//! Checksums follow the UDP policy with TCP's one difference, that no value means "no
//! checksum" (RFC 9293 §3.1): `Valid` is accepted; `Partial`, the pseudo-header sum Linux
//! leaves under transmit offload on every segment crossing a veth, is accepted and counted
//! as `tcp_checksum_partial` with `accept_partial_tcp_checksum` (the default, for the same
//! reason as UDP: no wire lies between the two ends), and dropped as `TcpBadChecksum`
//! without it; anything else is `TcpBadChecksum`. [`Interface::send_tcp`] writes the TCP
//! header (options in Linux's layout, see `melange_wire::tcp`), IPv4 (DF, TTL 64) and
//! Ethernet headers into the payload's headroom (up to [`TCP_HEADERS_LEN_MAX`] bytes) and
//! computes the full checksum: we never leave one for offload to finish. Segments take the
//! same ARP path as UDP datagrams, parked while the next hop resolves.
//!
//! # ARP (RFC 826), and where a frame's destination MAC comes from
//!
//! The destination MAC of every unicast frame we send comes from the ARP cache (see
//! `arp_cache`), or from a static entry the control plane installed, never from the source
//! MAC of a frame we received: a forged frame claiming a neighbour's address must not
//! redirect our replies. The cache learns only from ARP, by RFC 826's merge rule: a packet
//! whose sender is already in the cache updates that entry, whoever it was addressed to; a
//! new entry is created only from a request for our address (we are about to answer it) or a
//! reply to our address. Anything else is counted as `arp_ignored_unsolicited` and not
//! learned, so a host on the LAN cannot fill our cache by asking about others. Static
//! entries are never overwritten or evicted by ARP.
//!
//! A send to a next hop with no fresh entry parks the frame in one bounded queue shared by
//! all next hops (`pending_max`), records the next hop as *resolving* and broadcasts a
//! request; the request is repeated every `request_retry_ns` up to `request_retries_max`
//! times, after which the parked frames are freed and counted as `ArpUnresolved`. When the
//! answer arrives the parked frames for that next hop are released to the transmit queue in
//! the order they were sent. ICMP echo replies and TCP segments take the same path. Entries
//! expire after `entry_ttl_ns`; an expired entry is a miss, so the next send resolves it
//! again. Expiry is lazy, so [`Interface::poll_at`] reports only retry and reassembly
//! deadlines.
//!
//! Alternatives rejected: a per-next-hop queue of parked frames (it needs either allocation
//! or `entries_max × per-hop bound` preallocated slots, while one shared queue of
//! `pending_max` frames bounds memory directly and keeps release order trivially correct);
//! and learning neighbours from the source MAC of IPv4 frames, which saves an ARP round trip
//! but lets any host on the link point our replies for any address at itself.
//!
//! # Fragmentation on transmit (RFC 791 §3.2)
//!
//! A UDP payload of up to [`UDP_PAYLOAD_MAX`] bytes that does not fit one frame is sent as
//! fragments of one identification, offsets in multiples of 8, MF set on all but the last,
//! the UDP checksum computed once over the whole datagram. Unfragmented datagrams carry DF
//! (we rely on path MTU discovery for them, as before); fragments do not. A send is all or
//! nothing: the room in the transmit (or ARP pending) queue and the pool's free frames are
//! checked for every fragment before the first is built, and a refusal hands the payload
//! back untouched.

use crate::arp_cache::{ArpCache, Insert, Refresh};
use crate::config::{ConfigError, InterfaceConfig, Martian};
use crate::counters::{DropReason, NetCounters};
use crate::ports::{BindError, PortTable};
use crate::reasm::{self, Outcome, Reassembler};
use melange_core::pool::{BufChain, PacketBuf, PacketPool, TxDropped};
use melange_wire::{arp, checksum, ethernet, icmpv4, ipv4, tcp, udp, EtherType, EthernetAddress};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use thiserror::Error;

/// Bytes of headers `send_udp` writes in front of a payload: Ethernet, IPv4, UDP.
pub const HEADERS_LEN: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;
const _: () = assert!(HEADERS_LEN == melange_core::pool::PoolConfig::HEADROOM_MIN);

/// Largest UDP payload over IPv4: a total length of 65,535 bytes less the IPv4 (20) and UDP
/// (8) headers.
pub const UDP_PAYLOAD_MAX: usize = ipv4::TOTAL_LEN_MAX - ipv4::HEADER_LEN - udp::HEADER_LEN;
const _: () = assert!(UDP_PAYLOAD_MAX == 65_507);

/// Most bytes of headers `send_tcp` writes in front of a payload: Ethernet (14), IPv4 (20)
/// and the longest TCP header, options included (60). A payload buffer with this much
/// headroom never meets [`SendError::NoHeadroom`], whatever options its header carries.
pub const TCP_HEADERS_LEN_MAX: usize =
    ethernet::HEADER_LEN + ipv4::HEADER_LEN + tcp::HEADER_LEN_MAX;
const _: () = assert!(TCP_HEADERS_LEN_MAX == 94);

/// Most frames one send may become. The same bound as a receiver's
/// [`reasm::REASSEMBLY_FRAGMENTS_MAX`]: a datagram cut finer than that would be refused by
/// our own reassembly, and it bounds how much of the transmit queue one send may take. At
/// MTU 1500 the largest payload needs 45.
pub const TX_FRAGMENTS_MAX: usize = reasm::REASSEMBLY_FRAGMENTS_MAX;

/// Offset of the IPv4 header in a frame.
const IP_AT: usize = ethernet::HEADER_LEN;
/// Offset of the transport header in a frame whose IPv4 header has no options.
const L4_AT: usize = IP_AT + ipv4::HEADER_LEN;
/// Length of an ARP frame without padding.
const ARP_FRAME_LEN: usize = ethernet::HEADER_LEN + arp::PACKET_LEN;
/// Bytes copied at a time from a payload chain into a fragment (a stack buffer: the pool
/// lends one frame's bytes at a time).
const COPY_CHUNK_LEN: usize = 1024;

/// TTL of datagrams we originate (RFC 1700 / RFC 1122 §3.2.1.7 recommend 64).
pub const TTL: u8 = 64;

/// A UDP datagram received for a bound port. The application owns `data` (the UDP payload:
/// one frame, or the fragments of a reassembled datagram in order) and must send it or free
/// it to the pool.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a Datagram holds a BufChain that must be sent or freed"]
pub struct Datagram {
    /// The payload.
    pub data: BufChain,
    /// Sender address and port.
    pub from: SocketAddrV4,
    /// Our port it was sent to.
    pub local_port: u16,
}

/// A TCP segment addressed to us, delivered whatever its port: the transport above owns the
/// connection table and answers a segment for no connection with a reset (RFC 9293 §3.10.7.1),
/// so it must see every one. The transport owns `data` and must send it or free it to the
/// pool.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a Segment holds a PacketBuf that must be sent or freed"]
pub struct Segment {
    /// The peer's address and port.
    pub from: SocketAddrV4,
    /// Our port it was sent to (`repr.dst_port`).
    pub local_port: u16,
    /// The parsed header, options included; `repr.payload_len` is `data.len()`.
    pub repr: tcp::Repr,
    /// The received frame, its window narrowed to the TCP payload (zero-copy; empty for a
    /// segment without data, such as a bare ACK or SYN).
    pub data: PacketBuf,
}

/// What [`Interface::handle_frame`] delivers to the layer above.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a Received holds buffers that must be sent or freed"]
pub enum Received {
    /// A UDP datagram for a bound port.
    Udp(Datagram),
    /// A TCP segment addressed to us.
    Tcp(Segment),
}

/// Why `send_udp` or `send_tcp` refused to send. In every case the payload comes back with
/// the error, as it was given, and the refusal is counted under [`SendError::reason`].
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The payload buffer has less headroom than the headers need ([`HEADERS_LEN`] for UDP,
    /// 34 plus the TCP header for TCP, at most [`TCP_HEADERS_LEN_MAX`]); allocate payload
    /// buffers with `PacketPool::alloc` from a pool whose headroom is at least that.
    #[error("payload has {headroom} bytes of headroom, {needed} needed")]
    NoHeadroom {
        /// Headroom the buffer had.
        headroom: usize,
        /// Headroom the headers need.
        needed: usize,
    },
    /// The payload exceeds [`UDP_PAYLOAD_MAX`], or would need more than
    /// [`TX_FRAGMENTS_MAX`] fragments at this MTU and frame size; send less per datagram.
    /// For TCP, the segment does not fit the MTU (TCP is never fragmented): send at most
    /// [`Interface::tcp_payload_len_max`] bytes per segment.
    #[error("payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Largest payload.
        max: usize,
    },
    /// No route to the destination: it is off-link and no gateway is configured. Fix the
    /// destination or configure a gateway.
    #[error("no route to {0}")]
    NoRoute(Ipv4Addr),
    /// The destination is not a unicast host: a martian (`0/8`, `127/8`, multicast, `240/4`),
    /// a broadcast or network address, or our own address. We never send to one (a reply to
    /// a forged broadcast source would make us an amplifier). Check where the address came
    /// from.
    #[error("destination {dst} is {why}")]
    BadDestination {
        /// The destination.
        dst: Ipv4Addr,
        /// What kind of address it is.
        why: Martian,
    },
    /// The transmit queue cannot take the datagram's frames; poll transmissions more often or
    /// retry later.
    #[error("transmit queue full")]
    TxQueueFull,
    /// The frames had to wait for ARP but the pending queue cannot take them all; retry
    /// later.
    #[error("ARP pending queue full")]
    ArpPendingFull,
    /// `send_tcp` was given a header that does not describe its segment: `repr.payload_len`
    /// is not the payload's length, or `repr.dst_port` is not `dst`'s port. A bug in the
    /// transport: build the header from the segment it sends.
    #[error(
        "TCP header says {repr_len} bytes to port {repr_port}, \
         the segment has {len} bytes to port {port}"
    )]
    TcpReprMismatch {
        /// The payload's length.
        len: usize,
        /// `repr.payload_len`.
        repr_len: usize,
        /// `dst`'s port.
        port: u16,
        /// `repr.dst_port`.
        repr_port: u16,
    },
    /// The pool has fewer free frames than the datagram's fragments; retry once buffers
    /// come back, or size the pool for fragmented sends.
    #[error("{needed} frames needed for the fragments, {available} free in the pool")]
    PoolExhausted {
        /// Frames the fragments need.
        needed: usize,
        /// Frames free.
        available: usize,
    },
}

impl SendError {
    /// The drop reason this error was counted under.
    pub const fn reason(&self) -> DropReason {
        match self {
            SendError::NoHeadroom { .. } => DropReason::TxNoHeadroom,
            SendError::PayloadTooLarge { .. } => DropReason::PayloadTooLarge,
            SendError::NoRoute(_) => DropReason::NoRoute,
            SendError::BadDestination { .. } => DropReason::TxBadDestination,
            SendError::TxQueueFull => DropReason::TxQueueFull,
            SendError::ArpPendingFull => DropReason::ArpPendingFull,
            SendError::PoolExhausted { .. } => DropReason::PoolExhausted,
            SendError::TcpReprMismatch { .. } => DropReason::TxTcpReprMismatch,
        }
    }
}

/// What a transmitted frame counts as once it is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A whole UDP datagram, or the last fragment of one: counts `udp_tx`.
    Udp,
    /// A fragment before the last: counts nothing of its own.
    UdpFragment,
    /// An ICMP echo reply: counts `icmp_echo_replies`.
    EchoReply,
    /// A TCP segment: counts `tcp_tx`.
    Tcp,
}

/// A frame waiting for its next hop's MAC address.
#[derive(Debug)]
struct Parked {
    next_hop: u32,
    buf: PacketBuf,
    kind: Kind,
}

/// A next hop being resolved.
#[derive(Debug, Clone, Copy)]
struct Resolving {
    ip: u32,
    next_retry_ns: u64,
    retries_left: u32,
}

/// What receiving a frame came to.
enum Rx {
    Drop(DropReason),
    Deliver {
        from: SocketAddrV4,
        local_port: u16,
        offset: usize,
        len: usize,
    },
    /// A UDP fragment whose data is `len` bytes at `data_at` in the frame.
    Fragment {
        src: Ipv4Addr,
        ident: u16,
        offset: u32,
        more: bool,
        data_at: usize,
        len: usize,
    },
    /// A TCP segment whose payload is `len` bytes at `offset` in the frame.
    Tcp {
        from: SocketAddrV4,
        repr: tcp::Repr,
        offset: usize,
        len: usize,
    },
    ArpReply,
    /// An echo reply built in place, `len` bytes, to go to `peer`.
    EchoReply {
        len: usize,
        peer: Ipv4Addr,
    },
    Consumed,
}

/// The drop reason for a datagram from a martian source.
const fn source_drop(why: Martian) -> DropReason {
    match why {
        Martian::ThisNetwork => DropReason::IpSrcThisNetwork,
        Martian::Loopback => DropReason::IpSrcLoopback,
        Martian::Multicast => DropReason::IpSrcMulticast,
        Martian::Reserved => DropReason::IpSrcReserved,
        Martian::Broadcast => DropReason::IpSrcBroadcast,
        Martian::Network => DropReason::IpSrcNetwork,
        Martian::Ours => DropReason::IpSrcOurs,
    }
}

/// The folded one's-complement sum (RFC 1071) of several byte slices read as one stream:
/// a slice that starts at an odd offset of the stream has its sum byte-swapped before it is
/// added (RFC 1071 §2(B): the sum is byte-order independent, so a one-byte shift is a swap).
fn sum_segments<'a>(segments: impl Iterator<Item = &'a [u8]>) -> u16 {
    let mut acc = 0u64;
    let mut odd = false;
    for segment in segments {
        let sum = checksum::sum(segment);
        acc += u64::from(if odd { sum.swap_bytes() } else { sum });
        odd ^= segment.len() % 2 == 1;
    }
    checksum::fold(acc)
}

/// The network core of one Ethernet/IPv4 interface. See the module documentation.
///
/// # Call order
///
/// Each turn of the engine's loop, with the same `now_ns` for the whole turn:
///
/// 1. [`handle_frame`](Self::handle_frame) for every received frame; the returned datagrams
///    go to the application, the returned segments to the TCP transport.
/// 2. [`send_udp`](Self::send_udp) for every datagram the application sends, and
///    [`send_tcp`](Self::send_tcp) for every segment the transport sends.
/// 3. [`handle_timeout`](Self::handle_timeout) if `now_ns >= poll_at()`.
/// 4. [`poll_transmit`](Self::poll_transmit) until it returns `None`, handing each frame to
///    the NIC (which frees it to the pool once sent).
///
/// Any other order is also safe (nothing panics or leaks); this one gives the lowest
/// latency. At shutdown call [`drain`](Self::drain) so every frame returns to the pool.
#[derive(Debug)]
pub struct Interface {
    config: InterfaceConfig,
    ports: PortTable,
    arp: ArpCache,
    /// Next hops being resolved; at most `arp.pending_max` (each has a parked frame).
    resolving: Vec<Resolving>,
    /// Frames waiting for ARP, in send order; at most `arp.pending_max`.
    pending: VecDeque<Parked>,
    /// Frames ready to transmit; at most `tx_queue_max`.
    tx: VecDeque<PacketBuf>,
    /// Fragments of datagrams being reassembled.
    reasm: Reassembler,
    /// IPv4 identification of the next datagram we send.
    ident_next: u16,
    counters: NetCounters,
}

impl Interface {
    /// Validates `config` and preallocates every table and queue.
    pub fn new(config: InterfaceConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Interface {
            ports: PortTable::new(),
            arp: ArpCache::new(config.arp.entries_max),
            resolving: Vec::with_capacity(config.arp.pending_max),
            pending: VecDeque::with_capacity(config.arp.pending_max),
            tx: VecDeque::with_capacity(config.tx_queue_max),
            reasm: Reassembler::new(),
            ident_next: 0,
            counters: NetCounters::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &InterfaceConfig {
        &self.config
    }

    /// Binds a UDP port: datagrams to it are returned by `handle_frame`.
    pub fn bind_udp(&mut self, port: u16) -> Result<(), BindError> {
        self.ports.bind(port)
    }

    /// Unbinds a UDP port; true if it was bound.
    pub fn unbind_udp(&mut self, port: u16) -> bool {
        self.ports.unbind(port)
    }

    /// The counters.
    pub fn counters(&self) -> &NetCounters {
        &self.counters
    }

    /// Number of frames currently parked waiting for ARP (for leak checks in tests).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Number of frames waiting in the transmit queue.
    pub fn tx_len(&self) -> usize {
        self.tx.len()
    }

    /// Datagrams being reassembled, and the fragment frames they hold.
    pub fn reassembly_len(&self) -> (usize, usize) {
        (self.reasm.datagrams(), self.reasm.frames())
    }

    /// Frames a payload of `len` bytes becomes when sent: 1 when it fits the MTU and one
    /// frame of `pool`, else its fragment count. For a caller that reserves device room
    /// before sending; `None` when the payload is too large to send at all.
    pub fn tx_frames_for(&self, pool: &PacketPool, len: usize) -> Option<usize> {
        if len > UDP_PAYLOAD_MAX {
            return None;
        }
        let (count, _) = self.fragment_plan(pool, len);
        (count <= TX_FRAGMENTS_MAX).then_some(count)
    }

    /// Installs a static ARP entry: it never expires, is never evicted, and ARP traffic
    /// never overwrites it (for a control plane that resolved the next hop itself, through
    /// the kernel's neighbour table say). Frames parked for `ip` leave at once. Returns
    /// false, installing nothing, when the cache is full of static entries.
    pub fn add_static_arp(
        &mut self,
        pool: &mut PacketPool,
        ip: Ipv4Addr,
        mac: EthernetAddress,
    ) -> bool {
        let ip_u32 = u32::from(ip);
        let evictions = self.arp.evictions();
        if !self.arp.pin(ip_u32, mac) {
            return false;
        }
        self.counters.arp_evicted += self.arp.evictions() - evictions;
        self.release_parked(pool, ip_u32, mac);
        true
    }

    /// Takes a neighbour the control plane learnt from a trusted source (the kernel's own
    /// neighbour table, which ran ARP's rules for the address this interface shares with it):
    /// the entry for `ip` is created or refreshed as a dynamic entry with the normal lifetime,
    /// so it expires unless the control plane says it again, and frames parked for `ip` leave
    /// at once. A static entry is not changed. Returns false, changing nothing, for an
    /// address that is not a unicast host on our subnet (a control plane bug, counted as an
    /// ignored ARP update) or when the table is full of static entries.
    pub fn learn_neighbor(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        ip: Ipv4Addr,
        mac: EthernetAddress,
    ) -> bool {
        if self.config.martian(ip).is_some() || !self.config.is_on_link(ip) || !mac.is_unicast() {
            self.counters.arp_ignored_unsolicited += 1;
            return false;
        }
        let ip_u32 = u32::from(ip);
        let expires_at_ns = now_ns.saturating_add(self.config.arp.entry_ttl_ns);
        match self.arp.refresh(ip_u32, mac, expires_at_ns) {
            Refresh::Updated => self.counters.arp_updated += 1,
            Refresh::Pinned => return true,
            Refresh::Absent => match self.arp.insert(ip_u32, mac, expires_at_ns) {
                Insert::Inserted => self.counters.arp_learned += 1,
                Insert::Evicted => {
                    self.counters.arp_learned += 1;
                    self.counters.arp_evicted += 1;
                }
                Insert::Full => return false,
            },
        }
        self.release_parked(pool, ip_u32, mac);
        true
    }

    /// The cached MAC address of `ip`, if known and fresh at `now_ns`.
    pub fn arp_lookup(&self, now_ns: u64, ip: Ipv4Addr) -> Option<EthernetAddress> {
        self.arp.lookup(u32::from(ip), now_ns)
    }

    /// ARP cache entries held (expired ones included) and entries evicted so far.
    pub fn arp_cache_stats(&self) -> (usize, u64) {
        (self.arp.len(), self.arp.evictions())
    }

    /// Takes ownership of one received Ethernet frame (window = the whole frame).
    /// Returns [`Received::Udp`] if it is UDP for a bound port (the frame's window advanced
    /// to the UDP payload), or if it is the fragment that completes such a datagram (a chain
    /// of the fragments' frames); [`Received::Tcp`] if it is a valid TCP segment addressed to
    /// us, on any port (the frame's window advanced to the TCP payload). Otherwise the frame
    /// is consumed: kept as a fragment, dropped and counted by reason, or turned in place
    /// into a reply that is queued for transmission (ARP reply, ICMP echo reply).
    #[inline]
    pub fn handle_frame(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        mut frame: PacketBuf,
    ) -> Option<Received> {
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len() as u64;
        let (rx, learned) = self.receive(now_ns, pool.data_mut(&frame));
        let delivered = match rx {
            Rx::Deliver {
                from,
                local_port,
                offset,
                len,
            } => {
                // `receive` checked `offset + len` lies inside the window.
                frame.advance(offset);
                frame.truncate(len);
                self.counters.udp_rx += 1;
                Some(Received::Udp(Datagram {
                    data: BufChain::from(frame),
                    from,
                    local_port,
                }))
            }
            Rx::Tcp {
                from,
                repr,
                offset,
                len,
            } => {
                // `receive_tcp` checked `offset + len` lies inside the window.
                frame.advance(offset);
                frame.truncate(len);
                self.counters.tcp_rx += 1;
                Some(Received::Tcp(Segment {
                    from,
                    local_port: repr.dst_port,
                    repr,
                    data: frame,
                }))
            }
            Rx::Fragment {
                src,
                ident,
                offset,
                more,
                data_at,
                len,
            } => {
                // `receive` checked the fragment's data lies inside the window.
                frame.advance(data_at);
                frame.truncate(len);
                self.counters.frag_received += 1;
                let key = reasm::Key {
                    src: u32::from(src),
                    ident,
                };
                match self
                    .reasm
                    .handle(now_ns, pool, &mut self.counters, key, offset, more, frame)
                {
                    Outcome::Complete(at) => {
                        self.deliver_reassembled(pool, at, src).map(Received::Udp)
                    }
                    Outcome::Held | Outcome::Dropped => None,
                }
            }
            Rx::Drop(reason) => {
                self.counters.count_drop(reason);
                pool.free(frame);
                None
            }
            Rx::ArpReply => {
                frame.truncate(ARP_FRAME_LEN);
                if self.enqueue_tx(pool, frame) {
                    self.counters.arp_replies_sent += 1;
                }
                None
            }
            Rx::EchoReply { len, peer } => {
                frame.truncate(len);
                self.send_echo_reply(now_ns, pool, frame, peer);
                None
            }
            Rx::Consumed => {
                pool.free(frame);
                None
            }
        };
        if let Some((ip, mac)) = learned {
            self.release_parked(pool, ip, mac);
        }
        delivered
    }

    /// Sends `payload` (the windows of its frames, in order) as one UDP datagram from our
    /// `src_port` to `dst`.
    ///
    /// A one-frame payload that fits the MTU needs [`HEADERS_LEN`] bytes of headroom: the
    /// headers are written in place in front of it (full UDP checksum, DF set), and that
    /// frame is queued for transmission, or parked (bounded) while ARP resolves the next hop.
    /// Any other payload up to [`UDP_PAYLOAD_MAX`] bytes is copied into fresh frames: one if
    /// it fits, otherwise IPv4 fragments (see the module documentation); its own frames are
    /// then released as transmitted (`PacketPool::release_tx`), so a buffer marked with
    /// `return_after_tx` goes back to its app.
    ///
    /// On error nothing was sent, the refusal is counted, and the payload comes back with
    /// the error as it was given.
    pub fn send_udp(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        payload: BufChain,
        src_port: u16,
        dst: SocketAddrV4,
    ) -> Result<(), (SendError, BufChain)> {
        let len = payload.len();
        if len > UDP_PAYLOAD_MAX {
            let max = UDP_PAYLOAD_MAX;
            return self.refuse(payload, SendError::PayloadTooLarge { len, max });
        }
        let next_hop = match self.next_hop(*dst.ip()) {
            Ok(next_hop) => next_hop,
            Err(error) => return self.refuse(payload, error),
        };
        let fits_mtu = len <= usize::from(self.config.mtu) - ipv4::HEADER_LEN - udp::HEADER_LEN;
        match payload.into_single() {
            Ok(buf) if fits_mtu => self
                .send_in_place(now_ns, pool, buf, src_port, dst, next_hop)
                .map_err(|(error, buf)| (error, BufChain::from(buf))),
            Ok(buf) => self.send_copied(now_ns, pool, BufChain::from(buf), src_port, dst, next_hop),
            Err(chain) => self.send_copied(now_ns, pool, chain, src_port, dst, next_hop),
        }
    }

    /// Sends one TCP segment to `dst`: `payload`'s window holds the data (possibly empty),
    /// and `repr` the header to put in front of it (from `repr.src_port` to `repr.dst_port`,
    /// options included).
    ///
    /// The TCP header, the IPv4 header (DF set, TTL 64, the next identification) and the
    /// Ethernet header are written into the headroom, so the buffer needs `34 +
    /// repr.header_len()` bytes of it (at most [`TCP_HEADERS_LEN_MAX`]); the checksum is
    /// computed in full over the pseudo-header, header and data, never left to offload. The
    /// frame is then queued for transmission, or parked (bounded) while ARP resolves the next
    /// hop, like a UDP datagram. TCP is never fragmented: the data must fit the MTU with its
    /// header, at most [`tcp_payload_len_max`](Self::tcp_payload_len_max) bytes.
    ///
    /// `repr.payload_len` must equal the payload's length and `repr.dst_port` `dst`'s port,
    /// or the send is refused as [`SendError::TcpReprMismatch`]. On error nothing was sent,
    /// the refusal is counted, and the payload comes back with the error as it was given.
    pub fn send_tcp(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        mut payload: PacketBuf,
        dst: SocketAddrV4,
        repr: &tcp::Repr,
    ) -> Result<(), (SendError, PacketBuf)> {
        let len = payload.len();
        if repr.payload_len != len || repr.dst_port != dst.port() {
            let error = SendError::TcpReprMismatch {
                len,
                repr_len: repr.payload_len,
                port: dst.port(),
                repr_port: repr.dst_port,
            };
            return self.refuse(payload, error);
        }
        let max = self.tcp_payload_len_max(repr.options_len());
        if len > max {
            return self.refuse(payload, SendError::PayloadTooLarge { len, max });
        }
        let next_hop = match self.next_hop(*dst.ip()) {
            Ok(next_hop) => next_hop,
            Err(error) => return self.refuse(payload, error),
        };
        let tcp_len = repr.header_len() + len;
        let needed = L4_AT + repr.header_len();
        let headroom = payload.start();
        if headroom < needed {
            return self.refuse(payload, SendError::NoHeadroom { headroom, needed });
        }
        let mac = self.arp.lookup(next_hop, now_ns);
        if mac.is_some() && self.tx.len() >= self.config.tx_queue_max {
            return self.refuse(payload, SendError::TxQueueFull);
        }
        payload.prepend(needed);
        let ident = self.take_ident();
        let frame = pool.data_mut(&payload);
        self.write_eth_ip(
            frame,
            mac.unwrap_or_default(),
            *dst.ip(),
            ipv4::Protocol::Tcp,
            tcp_len,
            ident,
        );
        // RFC 9293 §3.1 "Checksum": over pseudo-header, header and data, always in full.
        // `frame[L4_AT..]` is exactly `repr.buffer_len()` bytes, as `emit` requires.
        repr.emit(
            &mut tcp::Packet::new_unchecked(&mut frame[L4_AT..]),
            self.config.ipv4,
            *dst.ip(),
        );
        match mac {
            Some(_) => {
                self.tx.push_back(payload);
                self.counters.tcp_tx += 1;
                Ok(())
            }
            None => self
                .park(now_ns, pool, next_hop, payload, Kind::Tcp)
                .map_err(|(error, mut buf)| {
                    buf.advance(needed);
                    (error, buf)
                }),
        }
    }

    /// The most TCP data one segment may carry at this interface's MTU when its header has
    /// `options_len` bytes of options ([`tcp::Repr::options_len`], at most 40): the MTU less
    /// the IPv4 header (20) and the TCP header (20 plus options). TCP is never fragmented,
    /// so this bounds the MSS we announce (with `options_len` 0, RFC 9293 §3.7.1) and what
    /// [`send_tcp`](Self::send_tcp) accepts. Zero when the options alone fill the MTU.
    pub fn tcp_payload_len_max(&self, options_len: usize) -> usize {
        usize::from(self.config.mtu)
            .saturating_sub(ipv4::HEADER_LEN + tcp::HEADER_LEN)
            .saturating_sub(options_len)
    }

    /// Next frame to transmit (window = whole frame): ARP requests/replies, ICMP replies,
    /// UDP datagrams and fragments, TCP segments.
    pub fn poll_transmit(&mut self) -> Option<PacketBuf> {
        let buf = self.tx.pop_front()?;
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += buf.len() as u64;
        Some(buf)
    }

    /// Earliest time `handle_timeout` has work (an ARP retry or give-up, a reassembly
    /// timeout), if any. ARP entry expiry needs no timer (see the module documentation).
    pub fn poll_at(&self) -> Option<u64> {
        let arp = self.resolving.iter().map(|r| r.next_retry_ns).min();
        match (arp, self.reasm.poll_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends due ARP retries and gives up on next hops that used all their retries,
    /// freeing their parked frames (counted as `ArpUnresolved`); frees datagrams whose
    /// reassembly timed out (counted as `ReasmTimeout`).
    pub fn handle_timeout(&mut self, now_ns: u64, pool: &mut PacketPool) {
        let mut i = 0;
        while i < self.resolving.len() {
            let r = self.resolving[i];
            if now_ns < r.next_retry_ns {
                i += 1;
            } else if r.retries_left > 0 {
                self.resolving[i] = Resolving {
                    ip: r.ip,
                    next_retry_ns: now_ns.saturating_add(self.config.arp.request_retry_ns),
                    retries_left: r.retries_left - 1,
                };
                self.send_arp_request(pool, r.ip);
                i += 1;
            } else {
                self.resolving.swap_remove(i);
                let freed = self.take_parked(pool, r.ip, None);
                self.counters.count_drops(DropReason::ArpUnresolved, freed);
            }
        }
        self.reasm.expire(now_ns, pool, &mut self.counters);
    }

    /// Frees every parked, queued and reassembling frame back to the pool (engine shutdown;
    /// tests check no leak). Nothing is counted as dropped.
    pub fn drain(&mut self, pool: &mut PacketPool) {
        while let Some(parked) = self.pending.pop_front() {
            pool.free(parked.buf);
        }
        self.resolving.clear();
        while let Some(buf) = self.tx.pop_front() {
            pool.free(buf);
        }
        self.reasm.drain(pool);
    }

    // ----- receive -----

    /// Parses a frame in place and decides its fate; returns the sender learned or updated
    /// by ARP, if any, so parked frames can be released once the frame's borrow ends.
    fn receive(&mut self, now_ns: u64, data: &mut [u8]) -> (Rx, Option<(u32, EthernetAddress)>) {
        let Ok(eth) = ethernet::Packet::new_checked(&*data) else {
            return (Rx::Drop(DropReason::EthTruncated), None);
        };
        let dst = eth.dst_addr();
        let to_us = dst == self.config.mac;
        if !to_us && !dst.is_broadcast() {
            return (Rx::Drop(DropReason::EthNotForUs), None);
        }
        // Source addresses are individual (IEEE 802.3 §3.2.3); a group source would turn our
        // replies into broadcasts, and the all-zeros address names no station.
        if !eth.src_addr().is_unicast() {
            return (Rx::Drop(DropReason::EthBadSource), None);
        }
        match eth.ethertype() {
            // RFC 1122 §3.3.6: a datagram received via link-layer broadcast must have an IP
            // broadcast or multicast destination; we accept neither, so IPv4 must be
            // addressed to our MAC.
            EtherType::Ipv4 if !to_us => (Rx::Drop(DropReason::EthNotForUs), None),
            EtherType::Ipv4 => (self.receive_ipv4(data), None),
            EtherType::Arp => self.receive_arp(now_ns, data),
            EtherType::Vlan => (Rx::Drop(DropReason::Vlan), None),
            EtherType::Unknown(_) => (Rx::Drop(DropReason::UnknownEthertype), None),
        }
    }

    fn receive_ipv4(&mut self, frame: &mut [u8]) -> Rx {
        let ip = match ipv4::Packet::new_checked(&frame[IP_AT..]) {
            Ok(ip) => ip,
            Err(e) => {
                return Rx::Drop(match e {
                    ipv4::Error::Truncated => DropReason::IpTruncated,
                    ipv4::Error::BadVersion(_) => DropReason::IpBadVersion,
                    ipv4::Error::BadHeaderLen(_) => DropReason::IpBadHeaderLen,
                    ipv4::Error::BadTotalLen(_) => DropReason::IpBadTotalLen,
                    // `check_len` reports only the four errors above.
                    ipv4::Error::BadChecksum | ipv4::Error::Options | ipv4::Error::Fragment => {
                        DropReason::IpTruncated
                    }
                });
            }
        };
        // RFC 791 §3.1 "Header Checksum": a header that does not verify is discarded.
        if !ip.verify_checksum() {
            return Rx::Drop(DropReason::IpBadChecksum);
        }
        if ip.has_options() {
            return Rx::Drop(DropReason::IpOptions);
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if dst != self.config.ipv4 {
            return Rx::Drop(DropReason::IpNotForUs);
        }
        // RFC 1122 §3.2.1.3, RFC 1812 §5.3.7: a datagram from a martian source is silently
        // discarded, and never answered.
        if let Some(why) = self.config.martian(src) {
            return Rx::Drop(source_drop(why));
        }
        // No options, so the transport header starts at L4_AT; ip_end excludes padding.
        let ip_end = IP_AT + usize::from(ip.total_len());
        if ip.is_fragment() {
            // RFC 791 §3.2 "Fragmentation and Reassembly": only UDP is reassembled. TCP
            // never needs it (see the module documentation), so a TCP fragment is counted
            // apart: a steady count of them means a peer ignores our MSS or a middlebox
            // fragments.
            match ip.protocol() {
                ipv4::Protocol::Udp => {}
                ipv4::Protocol::Tcp => return Rx::Drop(DropReason::TcpFragment),
                ipv4::Protocol::Icmp | ipv4::Protocol::Unknown(_) => {
                    return Rx::Drop(DropReason::IpFragment)
                }
            }
            let len = ip_end - L4_AT;
            let more = ip.more_frags();
            // RFC 791 §3.2: every fragment but the last carries a multiple of 8 bytes.
            if len == 0 || (more && !len.is_multiple_of(8)) {
                return Rx::Drop(DropReason::ReasmMalformed);
            }
            return Rx::Fragment {
                src,
                ident: ip.ident(),
                offset: ip.frag_offset_bytes(),
                more,
                data_at: L4_AT,
                len,
            };
        }
        match ip.protocol() {
            ipv4::Protocol::Udp => self.receive_udp(&frame[..ip_end], src, dst),
            ipv4::Protocol::Icmp => self.receive_icmp(&mut frame[..ip_end]),
            ipv4::Protocol::Tcp => self.receive_tcp(&frame[..ip_end], src, dst),
            ipv4::Protocol::Unknown(_) => Rx::Drop(DropReason::IpUnknownProtocol),
        }
    }

    /// Checks a TCP segment (see the module documentation) whose IPv4 datagram ends where
    /// `frame` ends, and hands every valid one up, whatever its port.
    fn receive_tcp(&mut self, frame: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Rx {
        let segment = &frame[L4_AT..];
        let Ok(packet) = tcp::Packet::new_checked(segment) else {
            return Rx::Drop(DropReason::TcpMalformed);
        };
        // Port 0 is reserved (the IANA registry, RFC 6335) and names no connection; nothing
        // may answer it, not even with a reset. Checked before the checksum, the costly part.
        if packet.src_port() == 0 || packet.dst_port() == 0 {
            return Rx::Drop(DropReason::TcpPortZero);
        }
        let policy = if self.config.accept_partial_tcp_checksum {
            tcp::ChecksumPolicy::AcceptPartial
        } else {
            tcp::ChecksumPolicy::Strict
        };
        let repr = match tcp::Repr::parse(&packet, src, dst, policy) {
            Ok(repr) => repr,
            Err(tcp::Error::BadChecksum | tcp::Error::PartialChecksum) => {
                return Rx::Drop(DropReason::TcpBadChecksum)
            }
            Err(
                tcp::Error::OptionLenTooShort { .. }
                | tcp::Error::OptionTruncated { .. }
                | tcp::Error::OptionBadLen { .. },
            ) => return Rx::Drop(DropReason::TcpBadOption),
            // `new_checked` above reports these; an IPv4 datagram holds no segment too long
            // for the pseudo-header.
            Err(
                tcp::Error::Truncated
                | tcp::Error::TooLong(_)
                | tcp::Error::BadDataOffset(_)
                | tcp::Error::BadHeaderLen(_),
            ) => return Rx::Drop(DropReason::TcpMalformed),
        };
        if policy == tcp::ChecksumPolicy::AcceptPartial {
            // The parse accepted a valid or a partial sum. The field equals the pseudo-header
            // sum whenever the sum was partial, and in about one valid segment in 65,536 by
            // chance; telling those apart would take a second pass over the data of every
            // segment crossing a veth (all of them are partial), so the counter counts the
            // field, as documented on it. What is accepted is exact either way.
            let segment_len = segment.len() as u16; // `new_checked` bounds it by 65,535.
            let pseudo = checksum::pseudo_header_v4(src, dst, tcp::PROTOCOL, segment_len);
            if packet.checksum() == pseudo {
                self.counters.tcp_checksum_partial += 1;
            }
        }
        let offset = L4_AT + packet.header_len();
        debug_assert_eq!(offset + repr.payload_len, frame.len());
        Rx::Tcp {
            from: SocketAddrV4::new(src, repr.src_port),
            repr,
            offset,
            len: repr.payload_len,
        }
    }

    /// Applies the checksum policy (see the module documentation) to a datagram whose
    /// checksum field is `field` and whose pseudo-header and body sums are given.
    fn udp_checksum_ok(&mut self, field: u16, pseudo: u16, body: u16) -> bool {
        let status = if field == 0 {
            udp::ChecksumStatus::Zero
        } else if checksum::combine(&[pseudo, body]) == 0xffff {
            udp::ChecksumStatus::Valid
        } else if field == pseudo {
            udp::ChecksumStatus::Partial
        } else {
            udp::ChecksumStatus::Invalid
        };
        match status {
            udp::ChecksumStatus::Valid => true,
            udp::ChecksumStatus::Zero => {
                self.counters.udp_checksum_zero += 1;
                true
            }
            udp::ChecksumStatus::Partial if self.config.accept_partial_udp_checksum => {
                self.counters.udp_checksum_partial += 1;
                true
            }
            udp::ChecksumStatus::Partial | udp::ChecksumStatus::Invalid => false,
        }
    }

    fn receive_udp(&mut self, frame: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Rx {
        let udp = match udp::Packet::new_checked(&frame[L4_AT..]) {
            Ok(udp) => udp,
            Err(udp::Error::Truncated) => return Rx::Drop(DropReason::UdpTruncated),
            Err(_) => return Rx::Drop(DropReason::UdpBadLength),
        };
        let local_port = udp.dst_port();
        // RFC 768 "Destination Port": demultiplex; nobody listening means drop.
        if !self.ports.contains(local_port) {
            return Rx::Drop(DropReason::UdpNoListener);
        }
        let udp_len = udp.len();
        let pseudo = checksum::pseudo_header_v4(src, dst, udp::PROTOCOL, udp_len);
        let body = checksum::sum(&frame[L4_AT..L4_AT + usize::from(udp_len)]);
        if !self.udp_checksum_ok(udp.checksum(), pseudo, body) {
            return Rx::Drop(DropReason::UdpBadChecksum);
        }
        Rx::Deliver {
            from: SocketAddrV4::new(src, udp.src_port()),
            local_port,
            offset: L4_AT + udp::HEADER_LEN,
            len: usize::from(udp_len) - udp::HEADER_LEN,
        }
    }

    /// Checks a reassembled datagram as `receive_udp` checks one frame, and delivers it as
    /// a chain of its fragments' frames, narrowed to the UDP payload. Either way the slot is
    /// closed, so late duplicates of its fragments are not taken for a new datagram.
    #[cold]
    #[inline(never)]
    fn deliver_reassembled(
        &mut self,
        pool: &mut PacketPool,
        at: usize,
        src: Ipv4Addr,
    ) -> Option<Datagram> {
        let frags = self.reasm.fragments(at);
        let total = frags.last().map_or(0, |f| f.offset as usize + f.buf.len());
        // The first fragment sits at offset 0 and, carrying MF, holds at least 8 bytes
        // (`receive_ipv4` refuses fragment lengths before the last that are not non-zero
        // multiples of 8); the check below only keeps a broken invariant from panicking.
        let head = pool.data(&frags[0].buf);
        debug_assert!(frags[0].offset == 0 && head.len() >= udp::HEADER_LEN);
        // Only the header is read from the first fragment: its length field covers the
        // whole datagram, not this fragment, so `new_checked` does not apply.
        let (src_port, local_port, udp_len, field) = match head.get(..udp::HEADER_LEN) {
            Some(bytes) => {
                let h = udp::Packet::new_unchecked(bytes);
                (
                    h.src_port(),
                    h.dst_port(),
                    usize::from(h.len()),
                    h.checksum(),
                )
            }
            None => (0, 0, 0, 0),
        };
        let verdict = if head.len() < udp::HEADER_LEN {
            Err(DropReason::UdpTruncated)
        } else if udp_len < udp::HEADER_LEN || udp_len > total {
            Err(DropReason::UdpBadLength)
        } else if !self.ports.contains(local_port) {
            Err(DropReason::UdpNoListener)
        } else {
            // Each fragment starts at a multiple of 8, so the slices' sums add directly;
            // bytes past the UDP length (if the IPv4 payload is longer) are not covered.
            let body = sum_segments(frags.iter().map(|f| {
                let data = pool.data(&f.buf);
                let start = f.offset as usize;
                &data[..data.len().min(udp_len.saturating_sub(start))]
            }));
            let pseudo =
                checksum::pseudo_header_v4(src, self.config.ipv4, udp::PROTOCOL, udp_len as u16);
            if self.udp_checksum_ok(field, pseudo, body) {
                Ok(())
            } else {
                Err(DropReason::UdpBadChecksum)
            }
        };
        if let Err(reason) = verdict {
            self.counters.count_drop(reason);
            for frag in self.reasm.close(at) {
                pool.free(frag.buf);
            }
            return None;
        }
        let mut chain: Option<BufChain> = None;
        for frag in self.reasm.close(at) {
            let mut buf = frag.buf;
            let start = frag.offset as usize;
            // Keep the payload bytes of this fragment: past the UDP header, before the end.
            let lo = start.max(udp::HEADER_LEN);
            let hi = (start + buf.len()).min(udp_len);
            match chain.as_mut() {
                // The first fragment always stays, as the head (its window may be empty).
                None => {
                    buf.advance(lo - start);
                    buf.truncate(hi.saturating_sub(lo));
                    chain = Some(BufChain::from(buf));
                }
                Some(_) if hi <= lo => pool.free(buf),
                Some(chain) => {
                    buf.advance(lo - start);
                    buf.truncate(hi - lo);
                    // A chain holds up to 65,535 bytes and the payload is below 65,515.
                    if let Err((_, buf)) = pool.chain_push(chain, buf) {
                        debug_assert!(false, "a reassembled payload fits a chain");
                        pool.free(buf);
                    }
                }
            }
        }
        let data = chain?;
        debug_assert_eq!(data.len(), udp_len - udp::HEADER_LEN);
        self.counters.reassembled += 1;
        self.counters.udp_rx += 1;
        Some(Datagram {
            data,
            from: SocketAddrV4::new(src, src_port),
            local_port,
        })
    }

    /// Answers an echo request in place; `frame` ends where the IPv4 datagram ends. The
    /// destination MAC is left for the transmit path to fill from the ARP cache.
    fn receive_icmp(&mut self, frame: &mut [u8]) -> Rx {
        {
            let Ok(icmp) = icmpv4::Packet::new_checked(&frame[L4_AT..]) else {
                return Rx::Drop(DropReason::IcmpMalformed);
            };
            // RFC 792: the checksum covers the whole ICMP message.
            if !icmp.verify_checksum() {
                return Rx::Drop(DropReason::IcmpBadChecksum);
            }
            if icmp.msg_type() != icmpv4::Message::EchoRequest || icmp.msg_code() != 0 {
                return Rx::Drop(DropReason::IcmpUnsupported);
            }
        }
        let len = frame.len();
        // Lengths were checked above: Ethernet 14, IPv4 20 and ICMP 8 bytes are present.
        ethernet::Packet::new_unchecked(&mut *frame).set_src_addr(self.config.mac);
        let mut ip = ipv4::Packet::new_unchecked(&mut frame[IP_AT..]);
        let peer = ip.src_addr();
        ip.set_src_addr(self.config.ipv4);
        ip.set_dst_addr(peer);
        ip.set_ttl(TTL);
        ip.fill_checksum();
        let mut icmp = icmpv4::Packet::new_unchecked(&mut frame[L4_AT..]);
        // RFC 792 "Echo or Echo Reply Message": to form a reply, the source and destination
        // are reversed, the type changed to 0 and the checksum recomputed; here the checksum
        // is updated incrementally for the one changed word (RFC 1624 §3, eqn. 3).
        let old_csum = icmp.checksum();
        icmp.set_msg_type(icmpv4::Message::EchoReply);
        icmp.set_checksum(checksum::update_u16(old_csum, 0x0800, 0x0000));
        Rx::EchoReply { len, peer }
    }

    fn receive_arp(
        &mut self,
        now_ns: u64,
        frame: &mut [u8],
    ) -> (Rx, Option<(u32, EthernetAddress)>) {
        let repr =
            match arp::Packet::new_checked(&frame[IP_AT..]).and_then(|p| arp::Repr::parse(&p)) {
                Ok(repr) => repr,
                Err(_) => return (Rx::Drop(DropReason::ArpMalformed), None),
            };
        let sha = repr.source_hardware_addr;
        let spa = repr.source_protocol_addr;
        if !sha.is_unicast() {
            return (Rx::Drop(DropReason::ArpMalformed), None);
        }
        // A sender of 0.0.0.0 is an RFC 5227 probe: answered if it asks for us, never
        // learned. Any other martian sender, or one claiming our own address, is neither.
        let probe = spa.is_unspecified();
        if !probe && self.config.martian(spa).is_some() {
            return (Rx::Drop(DropReason::ArpBadSender), None);
        }
        // RFC 826: "Am I the target protocol address?"
        let for_us = repr.target_protocol_addr == self.config.ipv4;
        let mut learned = None;
        if !probe {
            let spa_u32 = u32::from(spa);
            let expires_at_ns = now_ns.saturating_add(self.config.arp.entry_ttl_ns);
            // RFC 826 "Packet Reception": if the sender is already in the table, update it
            // (merge), whoever the target is.
            match self.arp.refresh(spa_u32, sha, expires_at_ns) {
                Refresh::Updated => {
                    self.counters.arp_updated += 1;
                    learned = Some((spa_u32, sha));
                }
                // A static entry is the control plane's word; ARP does not overrule it.
                Refresh::Pinned => {}
                // RFC 826: if not merged and we are the target, add the sender. Only a
                // request for our address or a reply to it qualifies, and only from our
                // subnet: an off-link entry could never be used (off-link traffic goes to
                // the gateway), but a flood of them would evict the entries that are.
                Refresh::Absent
                    if for_us
                        && self.config.is_on_link(spa)
                        && matches!(
                            repr.operation,
                            arp::Operation::Request | arp::Operation::Reply
                        ) =>
                {
                    match self.arp.insert(spa_u32, sha, expires_at_ns) {
                        Insert::Inserted => self.counters.arp_learned += 1,
                        Insert::Evicted => {
                            self.counters.arp_learned += 1;
                            self.counters.arp_evicted += 1;
                        }
                        Insert::Full => {}
                    }
                    learned = Some((spa_u32, sha));
                }
                Refresh::Absent => self.counters.arp_ignored_unsolicited += 1,
            }
        }
        if !for_us {
            return (Rx::Drop(DropReason::ArpNotForUs), learned);
        }
        match repr.operation {
            arp::Operation::Request => {
                // RFC 826: swap the fields, put our addresses in the sender fields, set the
                // opcode to reply, and send it to the requester's hardware address.
                let mut eth = ethernet::Packet::new_unchecked(&mut *frame);
                eth.set_dst_addr(sha);
                eth.set_src_addr(self.config.mac);
                let reply = arp::Repr {
                    operation: arp::Operation::Reply,
                    source_hardware_addr: self.config.mac,
                    source_protocol_addr: self.config.ipv4,
                    target_hardware_addr: sha,
                    target_protocol_addr: spa,
                };
                reply.emit(&mut arp::Packet::new_unchecked(&mut frame[IP_AT..]));
                (Rx::ArpReply, learned)
            }
            arp::Operation::Reply | arp::Operation::Unknown(_) => (Rx::Consumed, learned),
        }
    }

    // ----- transmit -----

    /// The link-layer next hop for `dst`: itself on-link, the gateway off-link. Martian,
    /// broadcast and network destinations, and our own address, are refused.
    fn next_hop(&self, dst: Ipv4Addr) -> Result<u32, SendError> {
        if let Some(why) = self.config.martian(dst) {
            return Err(SendError::BadDestination { dst, why });
        }
        if self.config.is_on_link(dst) {
            return Ok(u32::from(dst));
        }
        self.config
            .gateway
            .map(u32::from)
            .ok_or(SendError::NoRoute(dst))
    }

    /// Queues an echo reply built in place to `peer`, addressed from the ARP cache or
    /// parked until ARP resolves. A reply that cannot leave is freed and counted.
    fn send_echo_reply(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        frame: PacketBuf,
        peer: Ipv4Addr,
    ) {
        let next_hop = match self.next_hop(peer) {
            Ok(next_hop) => next_hop,
            Err(error) => {
                self.counters.count_drop(error.reason());
                pool.free(frame);
                return;
            }
        };
        match self.arp.lookup(next_hop, now_ns) {
            Some(mac) => {
                ethernet::Packet::new_unchecked(pool.data_mut(&frame)).set_dst_addr(mac);
                if self.enqueue_tx(pool, frame) {
                    self.counters.icmp_echo_replies += 1;
                }
            }
            None => {
                if let Err((_, frame)) = self.park(now_ns, pool, next_hop, frame, Kind::EchoReply) {
                    pool.free(frame);
                }
            }
        }
    }

    /// The zero-copy path: headers written into `payload`'s headroom.
    fn send_in_place(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        mut payload: PacketBuf,
        src_port: u16,
        dst: SocketAddrV4,
        next_hop: u32,
    ) -> Result<(), (SendError, PacketBuf)> {
        let len = payload.len();
        let headroom = payload.start();
        if headroom < HEADERS_LEN {
            let needed = HEADERS_LEN;
            return self.refuse(payload, SendError::NoHeadroom { headroom, needed });
        }
        let mac = self.arp.lookup(next_hop, now_ns);
        if mac.is_some() && self.tx.len() >= self.config.tx_queue_max {
            return self.refuse(payload, SendError::TxQueueFull);
        }
        payload.prepend(HEADERS_LEN);
        let ident = self.take_ident();
        let frame = pool.data_mut(&payload);
        self.write_eth_ip(
            frame,
            mac.unwrap_or_default(),
            *dst.ip(),
            ipv4::Protocol::Udp,
            udp::HEADER_LEN + len,
            ident,
        );
        // RFC 768: full checksum over pseudo-header, header and data, always.
        udp::Repr {
            src_port,
            dst_port: dst.port(),
            payload_len: len,
        }
        .emit(
            &mut udp::Packet::new_unchecked(&mut frame[L4_AT..]),
            self.config.ipv4,
            *dst.ip(),
        );
        match mac {
            Some(_) => {
                self.tx.push_back(payload);
                self.counters.udp_tx += 1;
                Ok(())
            }
            None => self
                .park(now_ns, pool, next_hop, payload, Kind::Udp)
                .map_err(|(error, mut buf)| {
                    buf.advance(HEADERS_LEN);
                    (error, buf)
                }),
        }
    }

    /// Frames and data bytes per frame for a payload of `len` bytes on the copying path:
    /// `(1, len)` when header and payload fit one frame and the MTU, else the fragment count
    /// and the IPv4 data bytes per fragment (RFC 791 §3.2: a multiple of 8).
    fn fragment_plan(&self, pool: &PacketPool, len: usize) -> (usize, usize) {
        let frame_cap = pool.config().frame_size.min(usize::from(u16::MAX));
        let mtu = usize::from(self.config.mtu);
        let udp_len = udp::HEADER_LEN + len;
        if ipv4::HEADER_LEN + udp_len <= mtu && HEADERS_LEN + len <= frame_cap {
            return (1, udp_len);
        }
        // A valid pool has frames of at least 43 bytes and the MTU is at least 68, so there
        // is room for 8 data bytes after the 34 bytes of Ethernet and IPv4 headers.
        let per = (mtu - ipv4::HEADER_LEN).min(frame_cap.saturating_sub(L4_AT)) & !7;
        let per = per.max(8);
        (udp_len.div_ceil(per), per)
    }

    /// The copying path: the payload goes into fresh frames, one datagram or its fragments.
    /// Kept out of line: it is the rare path, and inlined it would crowd the echo path.
    #[cold]
    #[inline(never)]
    fn send_copied(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        payload: BufChain,
        src_port: u16,
        dst: SocketAddrV4,
        next_hop: u32,
    ) -> Result<(), (SendError, BufChain)> {
        let len = payload.len();
        let (count, per) = self.fragment_plan(pool, len);
        if count > TX_FRAGMENTS_MAX {
            let max = (TX_FRAGMENTS_MAX * per - udp::HEADER_LEN).min(UDP_PAYLOAD_MAX);
            return self.refuse(payload, SendError::PayloadTooLarge { len, max });
        }
        // All or nothing: room for every frame is checked before the first is built.
        let mac = self.arp.lookup(next_hop, now_ns);
        match mac {
            Some(_) if self.tx.len() + count > self.config.tx_queue_max => {
                return self.refuse(payload, SendError::TxQueueFull);
            }
            None if self.pending.len() + count > self.config.arp.pending_max => {
                return self.refuse(payload, SendError::ArpPendingFull);
            }
            _ => {}
        }
        let available = pool.available();
        if available < count {
            let error = SendError::PoolExhausted {
                needed: count,
                available,
            };
            return self.refuse(payload, error);
        }
        let fragmented = count > 1;
        let dst_ip = *dst.ip();
        let udp_len = udp::HEADER_LEN + len;
        // RFC 768: the checksum covers the whole datagram, so it is computed once, over the
        // pseudo-header, the header (checksum zero) and every payload segment.
        let mut header = [0u8; udp::HEADER_LEN];
        {
            let mut h = udp::Packet::new_unchecked(&mut header[..]);
            h.set_src_port(src_port);
            h.set_dst_port(dst.port());
            h.set_len(udp_len as u16);
        }
        let pseudo =
            checksum::pseudo_header_v4(self.config.ipv4, dst_ip, udp::PROTOCOL, udp_len as u16);
        let body = sum_segments(std::iter::once(&header[..]).chain(pool.chain_segments(&payload)));
        let csum = !checksum::combine(&[pseudo, body]);
        // RFC 768: a computed zero is transmitted as all ones.
        udp::Packet::new_unchecked(&mut header[..]).set_checksum(if csum == 0 {
            0xffff
        } else {
            csum
        });

        let ident = self.take_ident();
        let queued_before = if mac.is_some() {
            self.tx.len()
        } else {
            self.pending.len()
        };
        let mut offset = 0;
        while offset < udp_len {
            let data_len = per.min(udp_len - offset);
            let more = offset + data_len < udp_len;
            let Some(mut buf) = pool.alloc() else {
                // Unreachable: the pool had `count` free frames and nothing else allocates
                // in between. Undo what was queued rather than send part of a datagram.
                self.unqueue(pool, mac.is_some(), queued_before);
                let error = SendError::PoolExhausted {
                    needed: count,
                    available: pool.available(),
                };
                return self.refuse(payload, error);
            };
            if pool.set_window(&mut buf, 0, L4_AT + data_len).is_err() {
                // Unreachable: `fragment_plan` sized `data_len` to the frame.
                pool.free(buf);
                self.unqueue(pool, mac.is_some(), queued_before);
                let error = SendError::PayloadTooLarge { len, max: 0 };
                return self.refuse(payload, error);
            }
            let frame = pool.data_mut(&buf);
            let udp = ipv4::Protocol::Udp;
            self.write_eth_ip(frame, mac.unwrap_or_default(), dst_ip, udp, data_len, ident);
            if fragmented {
                // RFC 791 §3.2: same identification, offset in 8-byte units, MF on all but
                // the last, and no DF on a datagram that is being fragmented.
                let mut ip = ipv4::Packet::new_unchecked(&mut frame[IP_AT..]);
                ip.set_fragment(offset, more);
                ip.fill_checksum();
            }
            // The UDP datagram's bytes [offset, offset + data_len): header, then payload.
            let mut at = L4_AT;
            let mut from = offset;
            if from < udp::HEADER_LEN {
                let n = (udp::HEADER_LEN - from).min(data_len);
                frame[at..at + n].copy_from_slice(&header[from..from + n]);
                at += n;
                from += n;
            }
            let end = offset + data_len;
            copy_from_chain(pool, &payload, from - udp::HEADER_LEN, &buf, at, end - from);
            let kind = if more { Kind::UdpFragment } else { Kind::Udp };
            match mac {
                Some(_) => self.tx.push_back(buf),
                None => self.pending.push_back(Parked {
                    next_hop,
                    buf,
                    kind,
                }),
            }
            offset = end;
        }
        if mac.is_some() {
            self.counters.udp_tx += 1;
        } else {
            self.start_resolving(now_ns, pool, next_hop);
        }
        if fragmented {
            self.counters.fragmented += 1;
            self.counters.frag_sent += count as u64;
        }
        // The payload's bytes are in the new frames: its own frames' transmit is over.
        let mut rest = Some(payload);
        while let Some(chain) = rest {
            let (buf, tail) = pool.chain_pop_front(chain);
            pool.release_tx(buf, Ok(()));
            rest = tail;
        }
        Ok(())
    }

    /// Removes the frames queued after position `to` (in the transmit queue, or the pending
    /// queue) and frees them: the undo of a send that could not complete.
    fn unqueue(&mut self, pool: &mut PacketPool, tx: bool, to: usize) {
        if tx {
            while self.tx.len() > to {
                if let Some(buf) = self.tx.pop_back() {
                    pool.free(buf);
                }
            }
        } else {
            while self.pending.len() > to {
                if let Some(parked) = self.pending.pop_back() {
                    pool.free(parked.buf);
                }
            }
        }
    }

    fn take_ident(&mut self) -> u16 {
        let ident = self.ident_next;
        self.ident_next = ident.wrapping_add(1);
        ident
    }

    /// Writes the Ethernet and IPv4 headers (unfragmented, DF set) of a `protocol` datagram
    /// whose IPv4 payload is `ip_payload_len` bytes at the front of `frame`.
    fn write_eth_ip(
        &self,
        frame: &mut [u8],
        dst_mac: EthernetAddress,
        dst_ip: Ipv4Addr,
        protocol: ipv4::Protocol,
        ip_payload_len: usize,
        ident: u16,
    ) {
        debug_assert_eq!(frame.len(), L4_AT + ip_payload_len);
        ethernet::Repr {
            src_addr: self.config.mac,
            dst_addr: dst_mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut ethernet::Packet::new_unchecked(&mut *frame));
        // RFC 791 §3.1; TTL 64 and DF set: a datagram that fits is never fragmented on the
        // way, and we rely on path MTU discovery.
        ipv4::Repr {
            src_addr: self.config.ipv4,
            dst_addr: dst_ip,
            protocol,
            payload_len: ip_payload_len,
            ttl: TTL,
            ident,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut frame[IP_AT..]));
    }

    /// Parks a frame until `next_hop` resolves, starting resolution if needed.
    fn park(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        next_hop: u32,
        buf: PacketBuf,
        kind: Kind,
    ) -> Result<(), (SendError, PacketBuf)> {
        if self.pending.len() >= self.config.arp.pending_max {
            return self.refuse(buf, SendError::ArpPendingFull);
        }
        self.pending.push_back(Parked {
            next_hop,
            buf,
            kind,
        });
        self.start_resolving(now_ns, pool, next_hop);
        Ok(())
    }

    /// Records `next_hop` as resolving and asks for it, unless it already is. The caller
    /// has just parked a frame for it.
    fn start_resolving(&mut self, now_ns: u64, pool: &mut PacketPool, next_hop: u32) {
        if self.resolving.iter().any(|r| r.ip == next_hop) {
            return;
        }
        // Every resolving next hop has at least one parked frame, so this cannot exceed
        // `pending_max`.
        debug_assert!(self.resolving.len() < self.config.arp.pending_max);
        self.resolving.push(Resolving {
            ip: next_hop,
            next_retry_ns: now_ns.saturating_add(self.config.arp.request_retry_ns),
            retries_left: self.config.arp.request_retries_max,
        });
        self.send_arp_request(pool, next_hop);
    }

    /// Broadcasts an ARP request for `target` in a fresh buffer (RFC 826 "Packet
    /// Generation").
    fn send_arp_request(&mut self, pool: &mut PacketPool, target: u32) {
        let Some(mut buf) = pool.alloc_frame() else {
            self.counters.count_drop(DropReason::PoolExhausted);
            return;
        };
        if pool.set_len(&mut buf, ARP_FRAME_LEN).is_err() {
            // Unreachable with a valid pool (frames exceed the 42-byte minimum headroom).
            pool.free(buf);
            self.counters.count_drop(DropReason::PoolExhausted);
            return;
        }
        let frame = pool.data_mut(&buf);
        ethernet::Repr {
            src_addr: self.config.mac,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EtherType::Arp,
        }
        .emit(&mut ethernet::Packet::new_unchecked(&mut *frame));
        arp::Repr {
            operation: arp::Operation::Request,
            source_hardware_addr: self.config.mac,
            source_protocol_addr: self.config.ipv4,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Addr::from(target),
        }
        .emit(&mut arp::Packet::new_unchecked(&mut frame[IP_AT..]));
        if self.enqueue_tx(pool, buf) {
            self.counters.arp_requests_sent += 1;
        }
    }

    /// Releases frames parked for `ip` to the transmit queue, in the order they were sent.
    fn release_parked(&mut self, pool: &mut PacketPool, ip: u32, mac: EthernetAddress) {
        let Some(at) = self.resolving.iter().position(|r| r.ip == ip) else {
            return;
        };
        self.resolving.swap_remove(at);
        self.take_parked(pool, ip, Some(mac));
    }

    /// Removes every frame parked for `ip`, keeping the others in order. With `mac`, each is
    /// addressed to it and queued for transmission; without, each is freed. Returns how many
    /// frames were removed.
    fn take_parked(&mut self, pool: &mut PacketPool, ip: u32, mac: Option<EthernetAddress>) -> u64 {
        let mut taken = 0;
        // Rotate the queue once: pop each frame from the front and push the others to the
        // back. Pushing never exceeds the capacity because a pop precedes every push.
        for _ in 0..self.pending.len() {
            let Some(parked) = self.pending.pop_front() else {
                break;
            };
            if parked.next_hop != ip {
                self.pending.push_back(parked);
                continue;
            }
            taken += 1;
            match mac {
                Some(mac) => {
                    if let Ok(mut eth) = ethernet::Packet::new_checked(pool.data_mut(&parked.buf)) {
                        eth.set_dst_addr(mac);
                    }
                    if self.enqueue_tx(pool, parked.buf) {
                        match parked.kind {
                            Kind::Udp => self.counters.udp_tx += 1,
                            Kind::UdpFragment => {}
                            Kind::EchoReply => self.counters.icmp_echo_replies += 1,
                            Kind::Tcp => self.counters.tcp_tx += 1,
                        }
                    }
                }
                // The frame's transmit ends here: its owner (the pool, or the app that asked
                // for its buffer back) learns it was never sent.
                None => pool.release_tx(parked.buf, Err(TxDropped::Unresolved)),
            }
        }
        taken
    }

    /// Queues a frame for transmission; if the queue is full, frees it, counts
    /// `TxQueueFull` and returns false.
    #[inline]
    fn enqueue_tx(&mut self, pool: &mut PacketPool, buf: PacketBuf) -> bool {
        if self.tx.len() >= self.config.tx_queue_max {
            self.counters.count_drop(DropReason::TxQueueFull);
            pool.release_tx(buf, Err(TxDropped::RingFull));
            return false;
        }
        self.tx.push_back(buf);
        true
    }

    /// Counts a send we refuse and hands the buffer back with the error.
    fn refuse<B>(&mut self, buf: B, error: SendError) -> Result<(), (SendError, B)> {
        self.counters.count_drop(error.reason());
        Err((error, buf))
    }
}

/// Copies `len` bytes of `chain` from byte `from` into `dst`'s window at `dst_at`, through a
/// stack buffer: the pool lends one frame's bytes at a time.
fn copy_from_chain(
    pool: &mut PacketPool,
    chain: &BufChain,
    from: usize,
    dst: &PacketBuf,
    dst_at: usize,
    len: usize,
) {
    let mut chunk = [0u8; COPY_CHUNK_LEN];
    let mut done = 0;
    while done < len {
        let n = COPY_CHUNK_LEN.min(len - done);
        let got = pool.chain_read(chain, from + done, &mut chunk[..n]);
        debug_assert_eq!(got, n, "the chain holds the bytes being copied");
        pool.data_mut(dst)[dst_at + done..dst_at + done + got].copy_from_slice(&chunk[..got]);
        if got < n {
            break;
        }
        done += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reasm::{REASSEMBLY_DATAGRAMS_MAX, REASSEMBLY_TIMEOUT_NS};
    use melange_core::pool::PoolConfig;

    /// The error of a refused send, after checking the buffer came back with its payload
    /// window and returning it to the pool.
    fn refused(pool: &mut PacketPool, result: Result<(), (SendError, BufChain)>) -> SendError {
        let (error, data) = result.expect_err("the send was refused");
        assert!(
            data.head().start() >= HEADERS_LEN || matches!(error, SendError::NoHeadroom { .. })
        );
        pool.free_chain(data);
        error
    }
    use proptest::prelude::*;

    const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
    const PEER_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
    const S: u64 = 1_000_000_000;

    // Golden frames, computed with an independent Python implementation (struct + RFC 1071
    // checksum). The peer is a Linux host 52:54:00:12:34:56 / 10.0.0.2; we are
    // 02:00:00:00:00:01 / 10.0.0.1.

    /// "Who has 10.0.0.1? Tell 10.0.0.2", broadcast, padded to the 60-byte minimum.
    const ARP_REQUEST: &str =
        "ffffffffffff 525400123456 0806 0001 0800 06 04 0001 525400123456 0a000002 \
        000000000000 0a000001 000000000000000000000000000000000000";
    /// Our reply, built in place in the request's buffer.
    const ARP_REPLY: &str =
        "525400123456 020000000001 0806 0001 0800 06 04 0002 020000000001 0a000001 \
        525400123456 0a000002";
    /// An echo request as Linux `ping` sends it (56 data bytes: timestamp, then 0x10..=0x3f).
    const ICMP_REQUEST: &str = "020000000001 525400123456 0800 \
        4500 0054 a1b2 4000 4001 84f4 0a000002 0a000001 \
        0800 cc88 1c2d 0001 a0b1c2d300000000 \
        101112131415161718191a1b1c1d1e1f 202122232425262728292a2b2c2d2e2f 303132333435363738393a3b3c3d3e3f";
    /// The expected echo reply: MACs and addresses swapped, type 0, checksum d488.
    const ICMP_REPLY: &str = "525400123456 020000000001 0800 \
        4500 0054 a1b2 4000 4001 84f4 0a000001 0a000002 \
        0000 d488 1c2d 0001 a0b1c2d300000000 \
        101112131415161718191a1b1c1d1e1f 202122232425262728292a2b2c2d2e2f 303132333435363738393a3b3c3d3e3f";
    /// A UDP datagram 10.0.0.2:40000 -> 10.0.0.1:7 with 64 payload bytes (i*7+3).
    const UDP_REQUEST: &str = "020000000001 525400123456 0800 \
        4500 005c 1234 4000 4011 145b 0a000002 0a000001 \
        9c40 0007 0048 c0a5 \
        030a11181f262d343b424950575e656c737a81888f969da4abb2b9c0c7ced5dce3eaf1f8ff060d141b222930373e454c535a61686f767d848b9299a0a7aeb5bc";
    /// The reply `send_udp` builds from the same buffer: ident 0 (first send), DF, TTL 64.
    const UDP_REPLY: &str = "525400123456 020000000001 0800 \
        4500 005c 0000 4000 4011 268f 0a000001 0a000002 \
        0007 9c40 0048 c0a5 \
        030a11181f262d343b424950575e656c737a81888f969da4abb2b9c0c7ced5dce3eaf1f8ff060d141b222930373e454c535a61686f767d848b9299a0a7aeb5bc";

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn pool() -> PacketPool {
        PacketPool::new(PoolConfig {
            frame_size: 2048,
            frame_count: 64,
            headroom: 64,
        })
        .unwrap()
    }

    fn config() -> InterfaceConfig {
        let mut c = InterfaceConfig::new(OUR_MAC, OUR_IP, 24);
        c.arp.pending_max = 8;
        c.tx_queue_max = 16;
        c
    }

    fn world_with(config: InterfaceConfig) -> (Interface, PacketPool) {
        world_with_pool(config, pool())
    }

    fn world_with_pool(config: InterfaceConfig, pool: PacketPool) -> (Interface, PacketPool) {
        let mut iface = Interface::new(config).unwrap();
        iface.bind_udp(7).unwrap();
        (iface, pool)
    }

    fn world() -> (Interface, PacketPool) {
        world_with(config())
    }

    /// Hands `bytes` to the interface as a received frame.
    fn rx_any(
        iface: &mut Interface,
        pool: &mut PacketPool,
        now_ns: u64,
        bytes: &[u8],
    ) -> Option<Received> {
        let mut frame = pool.alloc_frame().expect("test pool has room");
        pool.set_len(&mut frame, bytes.len()).unwrap();
        pool.data_mut(&frame).copy_from_slice(bytes);
        iface.handle_frame(now_ns, pool, frame)
    }

    /// Hands `bytes` to the interface as a received frame that must not be TCP; returns the
    /// datagram it completed, if any.
    fn rx(
        iface: &mut Interface,
        pool: &mut PacketPool,
        now_ns: u64,
        bytes: &[u8],
    ) -> Option<Datagram> {
        match rx_any(iface, pool, now_ns, bytes)? {
            Received::Udp(d) => Some(d),
            Received::Tcp(seg) => {
                pool.free(seg.data);
                panic!("a TCP segment where UDP or nothing was expected");
            }
        }
    }

    /// Hands `bytes` to the interface as a received frame that must be a TCP segment.
    fn rx_tcp(iface: &mut Interface, pool: &mut PacketPool, now_ns: u64, bytes: &[u8]) -> Segment {
        match rx_any(iface, pool, now_ns, bytes) {
            Some(Received::Tcp(seg)) => seg,
            Some(Received::Udp(d)) => {
                pool.free_chain(d.data);
                panic!("a UDP datagram where a TCP segment was expected");
            }
            None => panic!("no TCP segment delivered: {:?}", iface.counters()),
        }
    }

    /// Polls every queued frame, frees it, and returns the bytes.
    fn tx_all(iface: &mut Interface, pool: &mut PacketPool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(buf) = iface.poll_transmit() {
            out.push(pool.data(&buf).to_vec());
            pool.free(buf);
        }
        out
    }

    std::thread_local! {
        /// Drop reasons seen by `assert_no_leak` on this thread, for the coverage test.
        static SEEN: std::cell::RefCell<std::collections::BTreeSet<DropReason>> =
            const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
    }

    /// Drains the interface and checks every frame is back in the pool; records which drop
    /// reasons the test provoked.
    fn assert_no_leak(mut iface: Interface, mut pool: PacketPool) {
        SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            seen.extend(
                DropReason::ALL
                    .iter()
                    .filter(|&&r| iface.counters().drops(r) > 0),
            );
        });
        iface.drain(&mut pool);
        assert_eq!(iface.pending_len(), 0);
        assert_eq!(pool.available(), pool.capacity(), "a frame leaked");
    }

    /// The bytes of a chain, in order.
    fn bytes(pool: &PacketPool, chain: &BufChain) -> Vec<u8> {
        pool.chain_segments(chain).flatten().copied().collect()
    }

    /// A chain holding `bytes`, at most `per_frame` of them in each frame (default headroom).
    fn chain_of(pool: &mut PacketPool, bytes: &[u8], per_frame: usize) -> BufChain {
        let mut pieces = bytes.chunks(per_frame.max(1));
        let first = pieces.next().unwrap_or(&[]);
        let mut chain = BufChain::from(payload(pool, first));
        for piece in pieces {
            let buf = payload(pool, piece);
            pool.chain_push(&mut chain, buf).unwrap();
        }
        chain
    }

    /// A payload buffer with default headroom holding `bytes`.
    fn payload(pool: &mut PacketPool, bytes: &[u8]) -> PacketBuf {
        let mut buf = pool.alloc().unwrap();
        pool.set_len(&mut buf, bytes.len()).unwrap();
        pool.data_mut(&buf).copy_from_slice(bytes);
        buf
    }

    fn arp_frame(
        op: arp::Operation,
        eth_dst: EthernetAddress,
        sha: EthernetAddress,
        spa: Ipv4Addr,
        tpa: Ipv4Addr,
    ) -> Vec<u8> {
        let mut bytes = vec![0u8; ARP_FRAME_LEN];
        ethernet::Repr {
            src_addr: sha,
            dst_addr: eth_dst,
            ethertype: EtherType::Arp,
        }
        .emit(&mut ethernet::Packet::new_unchecked(&mut bytes[..]));
        let tha = if op == arp::Operation::Reply {
            OUR_MAC
        } else {
            EthernetAddress([0; 6])
        };
        arp::Repr {
            operation: op,
            source_hardware_addr: sha,
            source_protocol_addr: spa,
            target_hardware_addr: tha,
            target_protocol_addr: tpa,
        }
        .emit(&mut arp::Packet::new_unchecked(&mut bytes[IP_AT..]));
        bytes
    }

    fn arp_reply_from(mac: EthernetAddress, ip: Ipv4Addr) -> Vec<u8> {
        arp_frame(arp::Operation::Reply, OUR_MAC, mac, ip, OUR_IP)
    }

    /// An Ethernet + IPv4 (no options) frame around `l4`, checksum filled.
    fn ip_frame(protocol: u8, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; L4_AT + l4.len()];
        ethernet::Repr {
            src_addr: PEER_MAC,
            dst_addr: OUR_MAC,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut ethernet::Packet::new_unchecked(&mut bytes[..]));
        ipv4::Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: ipv4::Protocol::from(protocol),
            payload_len: l4.len(),
            ttl: 64,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut bytes[IP_AT..]));
        bytes[L4_AT..].copy_from_slice(l4);
        bytes
    }

    fn udp_frame(src: Ipv4Addr, src_port: u16, dst_port: u16, data: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0u8; udp::HEADER_LEN + data.len()];
        l4[udp::HEADER_LEN..].copy_from_slice(data);
        udp::Repr {
            src_port,
            dst_port,
            payload_len: data.len(),
        }
        .emit(&mut udp::Packet::new_unchecked(&mut l4[..]), src, OUR_IP);
        ip_frame(17, src, OUR_IP, &l4)
    }

    /// Recomputes the IPv4 header checksum after a test edited the header.
    fn refill_ip_checksum(frame: &mut [u8]) {
        let ihl = usize::from(frame[IP_AT] & 0x0f) * 4;
        ipv4::Packet::new_unchecked(&mut frame[IP_AT..IP_AT + ihl]).fill_checksum();
    }

    fn learn_peer(iface: &mut Interface, pool: &mut PacketPool, now_ns: u64) {
        assert!(rx(iface, pool, now_ns, &arp_reply_from(PEER_MAC, PEER_IP)).is_none());
        assert_eq!(iface.arp_lookup(now_ns, PEER_IP), Some(PEER_MAC));
    }

    // ----- golden exchanges -----

    #[test]
    fn golden_arp_request_gets_reply_in_place() {
        let (mut iface, mut pool) = world();
        assert!(rx(&mut iface, &mut pool, 0, &hex(ARP_REQUEST)).is_none());
        assert_eq!(tx_all(&mut iface, &mut pool), vec![hex(ARP_REPLY)]);
        // RFC 826: the requester was learned.
        assert_eq!(iface.arp_lookup(0, PEER_IP), Some(PEER_MAC));
        let c = iface.counters();
        assert_eq!(
            (
                c.rx_frames,
                c.rx_bytes,
                c.arp_replies_sent,
                c.tx_frames,
                c.tx_bytes
            ),
            (1, 60, 1, 1, 42)
        );
        assert_eq!(c.drops_total(), 0);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn golden_icmp_echo_request_gets_reply_in_place() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let mut request = hex(ICMP_REQUEST);
        request.extend_from_slice(&[0xee; 4]); // Trailing padding must not be echoed.
        assert!(rx(&mut iface, &mut pool, 0, &request).is_none());
        assert_eq!(tx_all(&mut iface, &mut pool), vec![hex(ICMP_REPLY)]);
        assert_eq!(iface.counters().icmp_echo_replies, 1);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn echo_reply_sets_ttl_and_refreshes_ip_checksum() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let mut request = hex(ICMP_REQUEST);
        request[IP_AT + 8] = 3; // Arrived with TTL 3 after some hops.
        refill_ip_checksum(&mut request);
        assert!(rx(&mut iface, &mut pool, 0, &request).is_none());
        let reply = tx_all(&mut iface, &mut pool).pop().unwrap();
        let ip = ipv4::Packet::new_checked(&reply[IP_AT..]).unwrap();
        assert_eq!(ip.ttl(), TTL);
        assert!(ip.verify_checksum());
        assert!(icmpv4::Packet::new_checked(ip.payload())
            .unwrap()
            .verify_checksum());
        assert_no_leak(iface, pool);
    }

    #[test]
    fn golden_udp_request_datagram_and_reply() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let d = rx(&mut iface, &mut pool, 1, &hex(UDP_REQUEST)).expect("delivered");
        assert_eq!(d.from, SocketAddrV4::new(PEER_IP, 40000));
        assert_eq!(d.local_port, 7);
        assert_eq!(bytes(&pool, &d.data), &hex(UDP_REQUEST)[L4_AT + 8..]);
        assert_eq!(d.data.head().start(), HEADERS_LEN);
        iface
            .send_udp(2, &mut pool, d.data, d.local_port, d.from)
            .unwrap();
        assert_eq!(tx_all(&mut iface, &mut pool), vec![hex(UDP_REPLY)]);
        let c = iface.counters();
        assert_eq!((c.udp_rx, c.udp_tx, c.drops_total()), (1, 1, 0));
        assert_no_leak(iface, pool);
    }

    #[test]
    fn udp_ignores_ethernet_padding_and_counts_zero_and_partial_checksums() {
        let (mut iface, mut pool) = world();
        let mut frame = udp_frame(PEER_IP, 5000, 7, b"hi");
        frame.resize(60, 0); // Padded to the Ethernet minimum.
        let d = rx(&mut iface, &mut pool, 0, &frame).unwrap();
        assert_eq!(bytes(&pool, &d.data), b"hi");
        pool.free_chain(d.data);
        // Zero checksum: accepted and counted (RFC 768).
        let mut zero = udp_frame(PEER_IP, 5000, 7, b"zero");
        zero[L4_AT + 6..L4_AT + 8].copy_from_slice(&[0, 0]);
        let d = rx(&mut iface, &mut pool, 0, &zero).unwrap();
        pool.free_chain(d.data);
        assert_eq!(iface.counters().udp_checksum_zero, 1);
        // Partial checksum as left by veth TX offload: accepted by default.
        let mut partial = udp_frame(PEER_IP, 5000, 7, b"partial");
        let pseudo = checksum::pseudo_header_v4(PEER_IP, OUR_IP, 17, 15);
        partial[L4_AT + 6..L4_AT + 8].copy_from_slice(&pseudo.to_be_bytes());
        let d = rx(&mut iface, &mut pool, 0, &partial).unwrap();
        pool.free_chain(d.data);
        assert_eq!(iface.counters().udp_checksum_partial, 1);
        assert_eq!(iface.counters().drops_total(), 0);
        // The same frame is refused when the policy says so.
        let mut strict = config();
        strict.accept_partial_udp_checksum = false;
        let (mut strict_iface, mut strict_pool) = world_with(strict);
        assert!(rx(&mut strict_iface, &mut strict_pool, 0, &partial).is_none());
        assert_eq!(strict_iface.counters().drops(DropReason::UdpBadChecksum), 1);
        assert_no_leak(strict_iface, strict_pool);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn ipv4_frames_teach_the_cache_nothing() {
        // A datagram from a host never seen in ARP is delivered, but the reply waits for ARP:
        // the frame's source MAC is not taken as the host's address.
        let (mut iface, mut pool) = world();
        let d = rx(
            &mut iface,
            &mut pool,
            0,
            &udp_frame(PEER_IP, 5000, 7, b"hi"),
        )
        .unwrap();
        assert_eq!(iface.arp_lookup(0, PEER_IP), None);
        iface.send_udp(1, &mut pool, d.data, 7, d.from).unwrap();
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            &sent[0][12..14],
            &[0x08, 0x06],
            "an ARP request, not the reply"
        );
        assert_eq!(iface.pending_len(), 1);
        // The answer releases the reply, addressed from the cache.
        assert!(rx(&mut iface, &mut pool, 2, &arp_reply_from(PEER_MAC, PEER_IP)).is_none());
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 1);
        assert_eq!(&sent[0][12..14], &[0x08, 0x00]);
        assert_eq!(&sent[0][0..6], PEER_MAC.as_bytes());
        assert_eq!(iface.counters().udp_tx, 1);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn spoofed_source_mac_does_not_redirect_replies() {
        const ATTACKER_MAC: EthernetAddress = EthernetAddress([0x02, 0xba, 0xd0, 0, 0, 0x66]);
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        // The attacker sends as PEER_IP from its own MAC: a UDP datagram and a ping.
        let mut frame = udp_frame(PEER_IP, 5000, 7, b"spoof");
        frame[6..12].copy_from_slice(&ATTACKER_MAC.0);
        let d = rx(&mut iface, &mut pool, 1, &frame).expect("IPv4 cannot tell a spoof");
        iface.send_udp(1, &mut pool, d.data, 7, d.from).unwrap();
        let mut ping = hex(ICMP_REQUEST);
        ping[6..12].copy_from_slice(&ATTACKER_MAC.0);
        assert!(rx(&mut iface, &mut pool, 1, &ping).is_none());
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 2, "the UDP reply and the echo reply");
        for f in &sent {
            assert_eq!(
                &f[0..6],
                PEER_MAC.as_bytes(),
                "replies go to the cached MAC"
            );
            assert_eq!(&f[6..12], OUR_MAC.as_bytes());
        }
        assert_eq!(iface.arp_lookup(1, PEER_IP), Some(PEER_MAC));
        assert_eq!(iface.counters().icmp_echo_replies, 1);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn echo_reply_to_an_unknown_host_waits_for_arp() {
        let (mut iface, mut pool) = world();
        assert!(rx(&mut iface, &mut pool, 0, &hex(ICMP_REQUEST)).is_none());
        assert_eq!(iface.counters().icmp_echo_replies, 0);
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 1);
        assert_eq!(&sent[0][12..14], &[0x08, 0x06], "an ARP request");
        assert_eq!(iface.pending_len(), 1);
        assert!(rx(&mut iface, &mut pool, 1, &arp_reply_from(PEER_MAC, PEER_IP)).is_none());
        assert_eq!(tx_all(&mut iface, &mut pool), vec![hex(ICMP_REPLY)]);
        assert_eq!(iface.counters().icmp_echo_replies, 1);
        // Off-link with no gateway: no route, counted, nothing sent.
        let mut far = hex(ICMP_REQUEST);
        far[IP_AT + 12..IP_AT + 16].copy_from_slice(&[192, 0, 2, 7]);
        refill_ip_checksum(&mut far);
        assert!(rx(&mut iface, &mut pool, 2, &far).is_none());
        assert_eq!(iface.counters().drops(DropReason::NoRoute), 1);
        assert!(tx_all(&mut iface, &mut pool).is_empty());
        assert_no_leak(iface, pool);
    }

    #[test]
    fn control_plane_neighbours_release_parked_frames_and_expire() {
        let (mut iface, mut pool) = world();
        let to = SocketAddrV4::new(PEER_IP, 9);
        let buf = payload(&mut pool, b"parked");
        iface.send_udp(0, &mut pool, buf.into(), 7, to).unwrap();
        let _arp_request = tx_all(&mut iface, &mut pool);
        assert!(iface.learn_neighbor(5, &mut pool, PEER_IP, PEER_MAC));
        assert_eq!(iface.pending_len(), 0);
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 1);
        assert_eq!(&sent[0][0..6], PEER_MAC.as_bytes());
        assert_eq!(iface.counters().arp_learned, 1);
        // A dynamic entry: it expires unless the control plane says it again.
        let ttl = iface.config().arp.entry_ttl_ns;
        assert_eq!(iface.arp_lookup(5 + ttl - 1, PEER_IP), Some(PEER_MAC));
        assert_eq!(iface.arp_lookup(5 + ttl + 1, PEER_IP), None);
        // Off-link, broadcast, our own address and a multicast MAC are refused.
        let off_link = Ipv4Addr::new(192, 0, 2, 1);
        assert!(!iface.learn_neighbor(6, &mut pool, off_link, PEER_MAC));
        let ours = iface.config().ipv4;
        assert!(!iface.learn_neighbor(6, &mut pool, ours, PEER_MAC));
        let multicast_mac = EthernetAddress([0x01, 0, 0x5e, 0, 0, 1]);
        assert!(!iface.learn_neighbor(6, &mut pool, PEER_IP, multicast_mac));
        assert_eq!(iface.counters().arp_ignored_unsolicited, 3);
        assert_eq!(pool.available(), pool.capacity());
    }

    #[test]
    fn static_arp_entries_release_parked_frames_and_do_not_expire() {
        let (mut iface, mut pool) = world();
        let to = SocketAddrV4::new(PEER_IP, 9);
        let buf = payload(&mut pool, b"parked");
        iface.send_udp(0, &mut pool, buf.into(), 7, to).unwrap();
        assert_eq!(iface.pending_len(), 1);
        let _arp_request = tx_all(&mut iface, &mut pool);
        iface.add_static_arp(&mut pool, PEER_IP, PEER_MAC);
        assert_eq!(iface.pending_len(), 0);
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 1);
        assert_eq!(&sent[0][0..6], PEER_MAC.as_bytes());
        // An hour later the entry still resolves.
        assert_eq!(iface.arp_lookup(3_600_000_000_000, PEER_IP), Some(PEER_MAC));
        assert_no_leak(iface, pool);
    }

    #[test]
    fn bind_and_unbind() {
        let (mut iface, mut pool) = world();
        assert_eq!(iface.bind_udp(0), Err(BindError::PortZero));
        assert_eq!(iface.bind_udp(7), Err(BindError::AlreadyBound(7)));
        assert!(iface.unbind_udp(7));
        assert!(!iface.unbind_udp(7));
        assert!(rx(&mut iface, &mut pool, 0, &hex(UDP_REQUEST)).is_none());
        assert_eq!(iface.counters().drops(DropReason::UdpNoListener), 1);
        assert_no_leak(iface, pool);
    }

    // ----- TCP -----

    /// A pool whose buffers have room for the longest TCP header in front of their payload.
    fn tcp_pool() -> PacketPool {
        PacketPool::new(PoolConfig {
            frame_size: 2048,
            frame_count: 64,
            headroom: TCP_HEADERS_LEN_MAX,
        })
        .unwrap()
    }

    fn tcp_world() -> (Interface, PacketPool) {
        world_with_pool(config(), tcp_pool())
    }

    /// A SYN with every option a SYN carries (MSS, window scale, SACK-permitted,
    /// timestamps), as Linux opens a connection: 40 bytes of header.
    fn syn_repr(src_port: u16, dst_port: u16) -> tcp::Repr {
        tcp::Repr {
            src_port,
            dst_port,
            seq: 0x0102_0304,
            ack: None,
            flags: tcp::Flags::SYN,
            window_len: 64_240,
            max_seg_size: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            sack_ranges: [(0, 0); tcp::SACK_BLOCKS_MAX],
            sack_count: 0,
            timestamps: Some((0x1122_3344, 0)),
            payload_len: 0,
        }
    }

    /// A data segment of `len` bytes with ACK, PSH, timestamps and one SACK block: 44 bytes
    /// of header.
    fn data_repr(src_port: u16, dst_port: u16, len: usize) -> tcp::Repr {
        let mut sack_ranges = [(0, 0); tcp::SACK_BLOCKS_MAX];
        sack_ranges[0] = (5000, 6000);
        tcp::Repr {
            src_port,
            dst_port,
            seq: 0xfffffff0,
            ack: Some(4000),
            flags: tcp::Flags::PSH,
            window_len: 502,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_ranges,
            sack_count: 1,
            timestamps: Some((77, 66)),
            payload_len: len,
        }
    }

    /// A bare ACK without options: 20 bytes of header, no data.
    fn ack_repr(src_port: u16, dst_port: u16) -> tcp::Repr {
        tcp::Repr {
            flags: tcp::Flags::empty(),
            sack_ranges: [(0, 0); tcp::SACK_BLOCKS_MAX],
            sack_count: 0,
            timestamps: None,
            ..data_repr(src_port, dst_port, 0)
        }
    }

    /// The TCP segment `repr` with `data`, from `src` to us, checksum filled by `emit`.
    fn tcp_segment(src: Ipv4Addr, repr: &tcp::Repr, data: &[u8]) -> Vec<u8> {
        assert_eq!(repr.payload_len, data.len());
        let mut l4 = vec![0u8; repr.buffer_len()];
        l4[repr.header_len()..].copy_from_slice(data);
        repr.emit(&mut tcp::Packet::new_unchecked(&mut l4[..]), src, OUR_IP);
        l4
    }

    /// A frame from the peer carrying `repr` with `data`.
    fn tcp_frame(repr: &tcp::Repr, data: &[u8]) -> Vec<u8> {
        ip_frame(6, PEER_IP, OUR_IP, &tcp_segment(PEER_IP, repr, data))
    }

    /// Recomputes the TCP checksum of a frame from the peer after a test edited the segment
    /// (the frame must end where its IPv4 datagram does).
    fn refill_tcp_checksum(frame: &mut [u8]) {
        tcp::Packet::new_unchecked(&mut frame[L4_AT..]).fill_checksum(PEER_IP, OUR_IP);
    }

    /// The RFC 1071 sum written out byte pair by byte pair, independent of
    /// `melange_wire::checksum`, to check what `send_tcp` computed.
    fn naive_sum(chunks: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut acc: u32 = 0;
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u32::from);
            acc += hi | lo;
            while acc > 0xffff {
                acc = (acc & 0xffff) + (acc >> 16);
            }
        }
        acc as u16
    }

    /// Checks a frame `send_tcp` built for the peer, field by field and with an independent
    /// checksum, and returns its TCP header and data.
    fn parse_sent_tcp(frame: &[u8]) -> (tcp::Repr, Vec<u8>) {
        let eth = ethernet::Packet::new_checked(frame).unwrap();
        assert_eq!(eth.dst_addr(), PEER_MAC);
        assert_eq!(eth.src_addr(), OUR_MAC);
        assert_eq!(eth.ethertype(), EtherType::Ipv4);
        let ip = ipv4::Packet::new_checked(&frame[IP_AT..]).unwrap();
        assert!(ip.verify_checksum());
        assert!(!ip.has_options());
        assert!(ip.dont_frag(), "DF set");
        assert!(!ip.is_fragment());
        assert_eq!(ip.ttl(), TTL);
        assert_eq!(ip.protocol(), ipv4::Protocol::Tcp);
        assert_eq!((ip.src_addr(), ip.dst_addr()), (OUR_IP, PEER_IP));
        assert_eq!(usize::from(ip.total_len()), frame.len() - IP_AT);
        let segment = &frame[L4_AT..];
        let pseudo = [
            &OUR_IP.octets()[..],
            &PEER_IP.octets()[..],
            &[0, 6],
            &(segment.len() as u16).to_be_bytes()[..],
        ]
        .concat();
        assert_eq!(naive_sum(&[&pseudo, segment]), 0xffff, "full TCP checksum");
        let packet = tcp::Packet::new_checked(segment).unwrap();
        let repr = tcp::Repr::parse(&packet, OUR_IP, PEER_IP, tcp::ChecksumPolicy::Strict).unwrap();
        (repr, packet.payload().to_vec())
    }

    #[test]
    fn tcp_segment_is_delivered_with_its_repr_and_payload_window() {
        let (mut iface, mut pool) = world();
        let data: Vec<u8> = (0..300u16).map(|i| (i * 13) as u8).collect();
        let repr = data_repr(40_000, 80, data.len());
        let seg = rx_tcp(&mut iface, &mut pool, 0, &tcp_frame(&repr, &data));
        // Port 80 is bound by nobody: every valid segment goes up, the transport resets it.
        assert_eq!(seg.from, SocketAddrV4::new(PEER_IP, 40_000));
        assert_eq!(seg.local_port, 80);
        assert_eq!(seg.repr, repr);
        assert_eq!(seg.repr.sack_ranges(), &[(5000, 6000)]);
        // Zero-copy: the window is the payload, right behind the 44-byte header in the frame.
        assert_eq!(seg.data.start(), L4_AT + 44);
        assert_eq!(pool.data(&seg.data), &data[..]);
        pool.free(seg.data);
        let c = iface.counters();
        assert_eq!((c.tcp_rx, c.udp_rx, c.tcp_checksum_partial), (1, 0, 0));
        assert_eq!(c.drops_total(), 0);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn tcp_segment_without_payload_has_an_empty_window_and_ignores_padding() {
        let (mut iface, mut pool) = world();
        // A bare ACK is 54 bytes of frame, padded to the 60-byte Ethernet minimum.
        let ack = ack_repr(40_000, 7);
        let mut frame = tcp_frame(&ack, &[]);
        assert_eq!(frame.len(), 54);
        frame.resize(60, 0xee);
        let seg = rx_tcp(&mut iface, &mut pool, 0, &frame);
        assert_eq!(seg.repr, ack);
        assert!(seg.data.is_empty());
        assert_eq!(seg.data.start(), L4_AT + tcp::HEADER_LEN);
        pool.free(seg.data);
        // A SYN with all its options: still no data.
        let syn = syn_repr(40_001, 443);
        let seg = rx_tcp(&mut iface, &mut pool, 0, &tcp_frame(&syn, &[]));
        assert_eq!(seg.repr, syn);
        assert!(seg.data.is_empty());
        assert_eq!(seg.data.start(), L4_AT + 40);
        pool.free(seg.data);
        assert_eq!(iface.counters().tcp_rx, 2);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn tcp_partial_checksums_follow_the_config() {
        let data = b"offloaded";
        let mut partial = tcp_frame(&data_repr(40_000, 80, data.len()), data);
        let segment_len = (partial.len() - L4_AT) as u16;
        let pseudo = checksum::pseudo_header_v4(PEER_IP, OUR_IP, 6, segment_len);
        partial[L4_AT + 16..L4_AT + 18].copy_from_slice(&pseudo.to_be_bytes());
        // Accepted by default, as it comes across a veth, and counted.
        let (mut iface, mut pool) = world();
        let seg = rx_tcp(&mut iface, &mut pool, 0, &partial);
        assert_eq!(pool.data(&seg.data), data);
        pool.free(seg.data);
        // A valid checksum is not counted as partial.
        let seg = rx_tcp(&mut iface, &mut pool, 0, &tcp_frame(&syn_repr(1, 2), &[]));
        pool.free(seg.data);
        let c = iface.counters();
        assert_eq!(
            (c.tcp_rx, c.tcp_checksum_partial, c.drops_total()),
            (2, 1, 0)
        );
        assert_no_leak(iface, pool);
        // Refused when the policy says so; the UDP policy is separate.
        let mut strict = config();
        strict.accept_partial_tcp_checksum = false;
        let (mut iface, mut pool) = world_with(strict);
        assert!(rx_any(&mut iface, &mut pool, 0, &partial).is_none());
        assert_eq!(iface.counters().drops(DropReason::TcpBadChecksum), 1);
        assert_eq!(iface.counters().tcp_checksum_partial, 0);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn send_tcp_syn_with_options_parses_back() {
        let (mut iface, mut pool) = tcp_world();
        learn_peer(&mut iface, &mut pool, 0);
        let syn = syn_repr(7, 40_000);
        let buf = pool.alloc().unwrap();
        let index = buf.index();
        let to = SocketAddrV4::new(PEER_IP, 40_000);
        iface.send_tcp(1, &mut pool, buf, to, &syn).unwrap();
        let frame = iface.poll_transmit().unwrap();
        assert_eq!(frame.index(), index, "headers written in place");
        assert_eq!(frame.start(), TCP_HEADERS_LEN_MAX - L4_AT - 40);
        let bytes = pool.data(&frame).to_vec();
        pool.free(frame);
        assert_eq!(bytes.len(), L4_AT + 40);
        let (repr, data) = parse_sent_tcp(&bytes);
        assert_eq!(repr, syn);
        assert!(data.is_empty());
        // Linux's SYN layout: MSS, SACK-permitted + timestamps, NOP + window scale.
        assert_eq!(
            &bytes[L4_AT + 20..L4_AT + 40],
            &hex("020405b4 0402080a 11223344 00000000 01030307")[..]
        );
        assert_eq!(iface.counters().tcp_tx, 1);
        assert_eq!(iface.counters().drops_total(), 0);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn send_tcp_data_segment_parses_back() {
        let (mut iface, mut pool) = tcp_world();
        learn_peer(&mut iface, &mut pool, 0);
        let to = SocketAddrV4::new(PEER_IP, 40_000);
        for len in [1, 1001, iface.tcp_payload_len_max(32)] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let repr = data_repr(7, 40_000, len);
            assert_eq!(repr.options_len(), 24);
            let buf = payload(&mut pool, &data);
            iface.send_tcp(1, &mut pool, buf, to, &repr).unwrap();
            let sent = tx_all(&mut iface, &mut pool);
            assert_eq!(sent.len(), 1);
            let (parsed, got) = parse_sent_tcp(&sent[0]);
            assert_eq!(parsed, repr);
            assert_eq!(got, data);
        }
        // The identification advances per datagram, UDP and TCP alike.
        let buf = payload(&mut pool, b"x");
        iface
            .send_tcp(1, &mut pool, buf, to, &data_repr(7, 40_000, 1))
            .unwrap();
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(
            ipv4::Packet::new_checked(&sent[0][IP_AT..])
                .unwrap()
                .ident(),
            3
        );
        assert_eq!(iface.counters().tcp_tx, 4);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn send_tcp_parks_while_arp_resolves() {
        let (mut iface, mut pool) = tcp_world();
        let to = SocketAddrV4::new(PEER_IP, 40_000);
        let buf = pool.alloc().unwrap();
        iface
            .send_tcp(0, &mut pool, buf, to, &syn_repr(7, 40_000))
            .unwrap();
        let buf = payload(&mut pool, b"second");
        iface
            .send_tcp(0, &mut pool, buf, to, &data_repr(7, 40_000, 6))
            .unwrap();
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            &sent[0][12..14],
            &[0x08, 0x06],
            "one ARP request, not the SYN"
        );
        assert_eq!(iface.pending_len(), 2);
        assert_eq!(iface.counters().tcp_tx, 0);
        assert!(rx(&mut iface, &mut pool, 1, &arp_reply_from(PEER_MAC, PEER_IP)).is_none());
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 2);
        let (first, _) = parse_sent_tcp(&sent[0]);
        let (second, data) = parse_sent_tcp(&sent[1]);
        assert_eq!(first.flags, tcp::Flags::SYN, "released in send order");
        assert_eq!(second.payload_len, 6);
        assert_eq!(data, b"second");
        assert_eq!(iface.counters().tcp_tx, 2);
        assert_no_leak(iface, pool);
    }

    /// The error of a refused TCP send, after checking the buffer came back with the window
    /// it was given and returning it to the pool.
    fn refused_tcp(
        pool: &mut PacketPool,
        result: Result<(), (SendError, PacketBuf)>,
        window: (usize, usize),
    ) -> SendError {
        let (error, buf) = result.expect_err("the send was refused");
        assert_eq!(
            (buf.start(), buf.len()),
            window,
            "the window comes back as given"
        );
        pool.free(buf);
        error
    }

    #[test]
    fn send_tcp_refusals_give_the_buffer_back() {
        let (mut iface, mut pool) = tcp_world();
        learn_peer(&mut iface, &mut pool, 0);
        let to = SocketAddrV4::new(PEER_IP, 40_000);
        let syn = syn_repr(7, 40_000);
        // Headroom: 34 bytes of Ethernet and IPv4 plus the 40-byte SYN header, exactly.
        let mut buf = pool.alloc_frame().unwrap();
        pool.set_window(&mut buf, 73, 0).unwrap();
        let result = iface.send_tcp(0, &mut pool, buf, to, &syn);
        assert_eq!(
            refused_tcp(&mut pool, result, (73, 0)),
            SendError::NoHeadroom {
                headroom: 73,
                needed: 74
            }
        );
        let mut buf = pool.alloc_frame().unwrap();
        pool.set_window(&mut buf, 74, 0).unwrap();
        assert_eq!(iface.send_tcp(0, &mut pool, buf, to, &syn), Ok(()));
        // The MTU less IPv4 (20), TCP (20) and 24 bytes of options.
        let max = iface.tcp_payload_len_max(24);
        assert_eq!(max, 1436);
        let buf = payload(&mut pool, &vec![1u8; max + 1]);
        let start = buf.start();
        let result = iface.send_tcp(0, &mut pool, buf, to, &data_repr(7, 40_000, max + 1));
        assert_eq!(
            refused_tcp(&mut pool, result, (start, max + 1)),
            SendError::PayloadTooLarge { len: max + 1, max }
        );
        // The header must describe the segment: its length and its destination port.
        let buf = payload(&mut pool, b"four");
        let result = iface.send_tcp(0, &mut pool, buf, to, &data_repr(7, 40_000, 5));
        assert_eq!(
            refused_tcp(&mut pool, result, (start, 4)),
            SendError::TcpReprMismatch {
                len: 4,
                repr_len: 5,
                port: 40_000,
                repr_port: 40_000
            }
        );
        let buf = payload(&mut pool, b"four");
        let elsewhere = SocketAddrV4::new(PEER_IP, 9);
        let result = iface.send_tcp(0, &mut pool, buf, elsewhere, &data_repr(7, 40_000, 4));
        assert!(matches!(
            refused_tcp(&mut pool, result, (start, 4)),
            SendError::TcpReprMismatch { port: 9, .. }
        ));
        // Routing and destination checks are the UDP ones.
        let far = SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 80);
        let buf = pool.alloc().unwrap();
        let result = iface.send_tcp(0, &mut pool, buf, far, &syn_repr(7, 80));
        assert_eq!(
            refused_tcp(&mut pool, result, (start, 0)),
            SendError::NoRoute(Ipv4Addr::new(8, 8, 8, 8))
        );
        let broadcast = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 255), 40_000);
        let buf = pool.alloc().unwrap();
        let result = iface.send_tcp(0, &mut pool, buf, broadcast, &syn);
        assert!(matches!(
            refused_tcp(&mut pool, result, (start, 0)),
            SendError::BadDestination {
                why: Martian::Broadcast,
                ..
            }
        ));
        // A full transmit queue, and a full ARP pending queue: the headers already written
        // into the headroom are given back too.
        let _ = tx_all(&mut iface, &mut pool);
        for _ in 0..iface.config().tx_queue_max {
            let buf = pool.alloc().unwrap();
            iface.send_tcp(0, &mut pool, buf, to, &syn).unwrap();
        }
        let buf = pool.alloc().unwrap();
        let result = iface.send_tcp(0, &mut pool, buf, to, &syn);
        assert_eq!(
            refused_tcp(&mut pool, result, (start, 0)),
            SendError::TxQueueFull
        );
        let _ = tx_all(&mut iface, &mut pool);
        let unresolved = SocketAddrV4::new(OTHER_IP, 40_000);
        for _ in 0..iface.config().arp.pending_max {
            let buf = pool.alloc().unwrap();
            iface.send_tcp(0, &mut pool, buf, unresolved, &syn).unwrap();
        }
        let buf = payload(&mut pool, b"late");
        let result = iface.send_tcp(0, &mut pool, buf, unresolved, &data_repr(7, 40_000, 4));
        assert_eq!(
            refused_tcp(&mut pool, result, (start, 4)),
            SendError::ArpPendingFull
        );
        let c = iface.counters();
        for (reason, count) in [
            (DropReason::TxNoHeadroom, 1),
            (DropReason::PayloadTooLarge, 1),
            (DropReason::TxTcpReprMismatch, 2),
            (DropReason::NoRoute, 1),
            (DropReason::TxBadDestination, 1),
            (DropReason::TxQueueFull, 1),
            (DropReason::ArpPendingFull, 1),
        ] {
            assert_eq!(c.drops(reason), count, "{reason:?}");
        }
        assert_eq!(c.drops_total(), 8);
        assert_eq!(c.tcp_tx, 1 + iface.config().tx_queue_max as u64);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn tcp_payload_len_max_follows_the_mtu() {
        let (iface, pool) = world();
        assert_eq!(iface.tcp_payload_len_max(0), 1460);
        assert_eq!(iface.tcp_payload_len_max(12), 1448);
        assert_eq!(iface.tcp_payload_len_max(tcp::OPTIONS_LEN_MAX), 1420);
        assert_no_leak(iface, pool);
        let mut small = config();
        small.mtu = 68;
        let (iface, pool) = world_with(small);
        assert_eq!(iface.tcp_payload_len_max(0), 28);
        assert_eq!(iface.tcp_payload_len_max(tcp::OPTIONS_LEN_MAX), 0);
        assert_no_leak(iface, pool);
    }

    // ----- ARP resolution -----

    #[test]
    fn parked_frames_are_released_in_order_after_reply() {
        let (mut iface, mut pool) = world();
        let other_mac = EthernetAddress([2, 0, 0, 0, 0, 3]);
        for (i, dst) in [PEER_IP, OTHER_IP, PEER_IP, OTHER_IP, PEER_IP]
            .into_iter()
            .enumerate()
        {
            let buf = payload(&mut pool, &[i as u8]);
            iface
                .send_udp(0, &mut pool, buf.into(), 7, SocketAddrV4::new(dst, 9))
                .unwrap();
        }
        assert_eq!(iface.pending_len(), 5);
        // One request per next hop, not per frame.
        let requests = tx_all(&mut iface, &mut pool);
        assert_eq!(requests.len(), 2);
        let req =
            arp::Repr::parse(&arp::Packet::new_checked(&requests[0][IP_AT..]).unwrap()).unwrap();
        assert_eq!(
            (
                req.operation,
                req.target_protocol_addr,
                req.source_protocol_addr
            ),
            (arp::Operation::Request, PEER_IP, OUR_IP)
        );
        assert_eq!(&requests[0][..6], &[0xff; 6]);
        assert_eq!(iface.poll_at(), Some(S));

        assert!(rx(
            &mut iface,
            &mut pool,
            10,
            &arp_reply_from(PEER_MAC, PEER_IP)
        )
        .is_none());
        assert_eq!(iface.pending_len(), 2);
        let sent = tx_all(&mut iface, &mut pool);
        let payloads: Vec<u8> = sent.iter().map(|f| f[HEADERS_LEN]).collect();
        assert_eq!(payloads, vec![0, 2, 4], "released in send order");
        assert!(sent.iter().all(|f| f[..6] == PEER_MAC.0));
        assert!(rx(
            &mut iface,
            &mut pool,
            20,
            &arp_reply_from(other_mac, OTHER_IP)
        )
        .is_none());
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(
            sent.iter().map(|f| f[HEADERS_LEN]).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(sent.iter().all(|f| f[..6] == other_mac.0));
        assert_eq!(iface.poll_at(), None);
        assert_eq!(iface.counters().udp_tx, 5);
        assert_eq!(iface.counters().arp_requests_sent, 2);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn off_link_goes_via_gateway_and_no_gateway_is_no_route() {
        let mut c = config();
        c.gateway = Some(GATEWAY);
        let (mut iface, mut pool) = world_with(c);
        let buf = payload(&mut pool, b"x");
        iface
            .send_udp(
                0,
                &mut pool,
                buf.into(),
                7,
                SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 53),
            )
            .unwrap();
        let req = tx_all(&mut iface, &mut pool).pop().unwrap();
        assert_eq!(
            arp::Packet::new_checked(&req[IP_AT..])
                .unwrap()
                .target_protocol_addr(),
            GATEWAY
        );
        let gw_mac = EthernetAddress([2, 0, 0, 0, 0, 0xfe]);
        assert!(rx(&mut iface, &mut pool, 1, &arp_reply_from(gw_mac, GATEWAY)).is_none());
        let frame = tx_all(&mut iface, &mut pool).pop().unwrap();
        assert_eq!(&frame[..6], &gw_mac.0);
        assert_eq!(
            ipv4::Packet::new_checked(&frame[IP_AT..])
                .unwrap()
                .dst_addr(),
            Ipv4Addr::new(8, 8, 8, 8)
        );
        assert_no_leak(iface, pool);

        let (mut iface, mut pool) = world();
        let buf = payload(&mut pool, b"x");
        let err = iface.send_udp(
            0,
            &mut pool,
            buf.into(),
            7,
            SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 53),
        );
        assert_eq!(
            refused(&mut pool, err),
            SendError::NoRoute(Ipv4Addr::new(8, 8, 8, 8))
        );
        assert_eq!(iface.counters().drops(DropReason::NoRoute), 1);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn martian_and_broadcast_destinations_are_refused() {
        let mut c = config();
        c.gateway = Some(GATEWAY);
        let (mut iface, mut pool) = world_with(c);
        let cases = [
            (Ipv4Addr::BROADCAST, Martian::Broadcast),
            (Ipv4Addr::new(10, 0, 0, 255), Martian::Broadcast),
            (Ipv4Addr::new(10, 0, 0, 0), Martian::Network),
            (Ipv4Addr::UNSPECIFIED, Martian::ThisNetwork),
            (Ipv4Addr::new(0, 1, 2, 3), Martian::ThisNetwork),
            (Ipv4Addr::new(127, 0, 0, 1), Martian::Loopback),
            (Ipv4Addr::new(224, 0, 0, 251), Martian::Multicast),
            (Ipv4Addr::new(240, 0, 0, 9), Martian::Reserved),
            (OUR_IP, Martian::Ours),
        ];
        for (dst, why) in cases {
            let buf = payload(&mut pool, b"no");
            let result = iface.send_udp(0, &mut pool, buf.into(), 7, SocketAddrV4::new(dst, 9));
            let (error, data) = result.expect_err("refused");
            assert_eq!(error, SendError::BadDestination { dst, why });
            assert_eq!(
                bytes(&pool, &data),
                b"no",
                "the payload comes back as given"
            );
            assert_eq!(data.head().start(), 64);
            pool.free_chain(data);
        }
        assert!(
            tx_all(&mut iface, &mut pool).is_empty(),
            "nothing sent, not even ARP"
        );
        assert_eq!(
            iface.counters().drops(DropReason::TxBadDestination),
            cases.len() as u64
        );
        assert_no_leak(iface, pool);
    }

    #[test]
    fn retry_then_give_up_frees_parked_frames() {
        let (mut iface, mut pool) = world();
        for _ in 0..3 {
            let buf = payload(&mut pool, b"lost");
            iface
                .send_udp(0, &mut pool, buf.into(), 7, SocketAddrV4::new(OTHER_IP, 9))
                .unwrap();
        }
        assert_eq!(tx_all(&mut iface, &mut pool).len(), 1);
        // Nothing is due before the deadline.
        iface.handle_timeout(S - 1, &mut pool);
        assert!(tx_all(&mut iface, &mut pool).is_empty());
        // Three retries, one per second (request_retries_max = 3).
        for k in 1..=3 {
            assert_eq!(iface.poll_at(), Some(k * S));
            iface.handle_timeout(k * S, &mut pool);
            assert_eq!(tx_all(&mut iface, &mut pool).len(), 1, "retry {k}");
        }
        assert_eq!(iface.pending_len(), 3);
        iface.handle_timeout(4 * S, &mut pool);
        assert_eq!(iface.pending_len(), 0);
        assert_eq!(iface.poll_at(), None);
        assert_eq!(iface.counters().drops(DropReason::ArpUnresolved), 3);
        assert_eq!(iface.counters().arp_requests_sent, 4);
        assert_eq!(
            pool.available(),
            pool.capacity(),
            "parked frames were freed"
        );
        assert_no_leak(iface, pool);
    }

    #[test]
    fn expired_entry_triggers_re_resolution() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let ttl = iface.config().arp.entry_ttl_ns;
        let buf = payload(&mut pool, b"fresh");
        iface
            .send_udp(
                ttl - 1,
                &mut pool,
                buf.into(),
                7,
                SocketAddrV4::new(PEER_IP, 9),
            )
            .unwrap();
        assert_eq!(tx_all(&mut iface, &mut pool).len(), 1);
        assert_eq!(iface.pending_len(), 0);
        let buf = payload(&mut pool, b"stale");
        iface
            .send_udp(ttl, &mut pool, buf.into(), 7, SocketAddrV4::new(PEER_IP, 9))
            .unwrap();
        assert_eq!(iface.pending_len(), 1);
        let req = tx_all(&mut iface, &mut pool).pop().unwrap();
        assert_eq!(u16::from_be_bytes([req[12], req[13]]), 0x0806);
        // The answer refreshes the entry and releases the frame.
        assert!(rx(
            &mut iface,
            &mut pool,
            ttl + 5,
            &arp_reply_from(PEER_MAC, PEER_IP)
        )
        .is_none());
        assert_eq!(tx_all(&mut iface, &mut pool).len(), 1);
        assert_eq!(iface.arp_lookup(ttl + 5, PEER_IP), Some(PEER_MAC));
        assert_no_leak(iface, pool);
    }

    #[test]
    fn arp_merge_refreshes_existing_entry_only() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        // The peer asks about another host; RFC 826 merges its (new) MAC anyway.
        let new_mac = EthernetAddress([2, 0, 0, 0, 0, 0x22]);
        let frame = arp_frame(
            arp::Operation::Request,
            EthernetAddress::BROADCAST,
            new_mac,
            PEER_IP,
            OTHER_IP,
        );
        assert!(rx(&mut iface, &mut pool, 5, &frame).is_none());
        assert_eq!(iface.arp_lookup(5, PEER_IP), Some(new_mac));
        // A stranger asking about another host is not learned.
        let stranger = arp_frame(
            arp::Operation::Request,
            EthernetAddress::BROADCAST,
            new_mac,
            Ipv4Addr::new(10, 0, 0, 9),
            OTHER_IP,
        );
        assert!(rx(&mut iface, &mut pool, 5, &stranger).is_none());
        assert_eq!(iface.arp_lookup(5, Ipv4Addr::new(10, 0, 0, 9)), None);
        assert_eq!(iface.counters().drops(DropReason::ArpNotForUs), 2);
        assert!(tx_all(&mut iface, &mut pool).is_empty());
        let c = iface.counters();
        assert_eq!(
            (c.arp_learned, c.arp_updated, c.arp_ignored_unsolicited),
            (1, 1, 1)
        );
        assert_no_leak(iface, pool);
    }

    #[test]
    fn arp_creates_entries_only_from_requests_for_us_and_replies_to_us() {
        let (mut iface, mut pool) = world();
        let host = |n: u8| Ipv4Addr::new(10, 0, 0, n);
        let mac = |n: u8| EthernetAddress([2, 0, 0, 0, 7, n]);
        // Unsolicited: a reply to another host, a broadcast reply to another host, a
        // gratuitous announcement (sender = target), a request for another host.
        let unsolicited = [
            arp_frame(arp::Operation::Reply, OUR_MAC, mac(20), host(20), OTHER_IP),
            arp_frame(
                arp::Operation::Reply,
                EthernetAddress::BROADCAST,
                mac(21),
                host(21),
                host(21),
            ),
            arp_frame(
                arp::Operation::Request,
                EthernetAddress::BROADCAST,
                mac(22),
                host(22),
                host(22),
            ),
            arp_frame(
                arp::Operation::Request,
                EthernetAddress::BROADCAST,
                mac(23),
                host(23),
                OTHER_IP,
            ),
            // Off-link: asks for us (and is answered) but is not learned.
            arp_frame(
                arp::Operation::Request,
                EthernetAddress::BROADCAST,
                mac(24),
                Ipv4Addr::new(192, 168, 7, 7),
                OUR_IP,
            ),
        ];
        for frame in &unsolicited {
            assert!(rx(&mut iface, &mut pool, 0, frame).is_none());
        }
        for n in 20..=23 {
            assert_eq!(iface.arp_lookup(0, host(n)), None, "{n} not learned");
        }
        assert_eq!(iface.arp_lookup(0, Ipv4Addr::new(192, 168, 7, 7)), None);
        assert_eq!(iface.arp_cache_stats().0, 0);
        assert_eq!(iface.counters().arp_ignored_unsolicited, 5);
        // A request for us, and a reply to us, each create an entry.
        let request = arp_frame(
            arp::Operation::Request,
            EthernetAddress::BROADCAST,
            mac(30),
            host(30),
            OUR_IP,
        );
        assert!(rx(&mut iface, &mut pool, 0, &request).is_none());
        assert!(rx(&mut iface, &mut pool, 0, &arp_reply_from(mac(31), host(31))).is_none());
        assert_eq!(iface.arp_lookup(0, host(30)), Some(mac(30)));
        assert_eq!(iface.arp_lookup(0, host(31)), Some(mac(31)));
        assert_eq!(iface.counters().arp_learned, 2);
        // Now known, host 30's gratuitous announcement of a new MAC is merged.
        let moved = arp_frame(
            arp::Operation::Request,
            EthernetAddress::BROADCAST,
            mac(99),
            host(30),
            host(30),
        );
        assert!(rx(&mut iface, &mut pool, 1, &moved).is_none());
        assert_eq!(iface.arp_lookup(1, host(30)), Some(mac(99)));
        assert_eq!(iface.counters().arp_updated, 1);
        // A probe (sender 0.0.0.0, RFC 5227) for our address is answered, not learned.
        let probe = arp_frame(
            arp::Operation::Request,
            EthernetAddress::BROADCAST,
            mac(40),
            Ipv4Addr::UNSPECIFIED,
            OUR_IP,
        );
        assert!(rx(&mut iface, &mut pool, 1, &probe).is_none());
        assert_eq!(iface.arp_cache_stats().0, 2);
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(
            sent.len(),
            3,
            "replies to the off-link host, the request, the probe"
        );
        assert_eq!(&sent[0][0..6], mac(24).as_bytes());
        assert_eq!(&sent[2][0..6], mac(40).as_bytes());
        assert_no_leak(iface, pool);
    }

    #[test]
    fn static_entries_are_not_overwritten_by_arp() {
        let (mut iface, mut pool) = world();
        assert!(iface.add_static_arp(&mut pool, PEER_IP, PEER_MAC));
        let forged = arp_reply_from(EthernetAddress([2, 0xee, 0, 0, 0, 1]), PEER_IP);
        assert!(rx(&mut iface, &mut pool, 5, &forged).is_none());
        assert_eq!(iface.arp_lookup(5, PEER_IP), Some(PEER_MAC));
        let c = iface.counters();
        assert_eq!((c.arp_learned, c.arp_updated), (0, 0));
        assert_no_leak(iface, pool);
    }

    #[test]
    fn arp_cache_is_bounded() {
        let mut c = config();
        c.arp.entries_max = 4;
        let (mut iface, mut pool) = world_with(c);
        for i in 0..10u8 {
            let frame = arp_reply_from(
                EthernetAddress([2, 0, 0, 0, 1, i]),
                Ipv4Addr::new(10, 0, 0, 10 + i),
            );
            assert!(rx(&mut iface, &mut pool, u64::from(i), &frame).is_none());
        }
        assert_eq!(iface.arp_cache_stats(), (4, 6));
        assert_eq!(iface.counters().arp_evicted, 6);
        assert_eq!(iface.counters().arp_learned, 10);
        // The least recently written went first: 10..=15 are gone, 16..=19 stay.
        for i in 0..6u8 {
            assert_eq!(iface.arp_lookup(100, Ipv4Addr::new(10, 0, 0, 10 + i)), None);
        }
        assert_eq!(
            iface.arp_lookup(100, Ipv4Addr::new(10, 0, 0, 19)),
            Some(EthernetAddress([2, 0, 0, 0, 1, 9]))
        );
        assert_no_leak(iface, pool);
    }

    #[test]
    fn pending_queue_is_bounded() {
        let (mut iface, mut pool) = world();
        let pending_max = iface.config().arp.pending_max;
        for _ in 0..pending_max {
            let buf = payload(&mut pool, b"p");
            iface
                .send_udp(0, &mut pool, buf.into(), 7, SocketAddrV4::new(OTHER_IP, 9))
                .unwrap();
        }
        let buf = payload(&mut pool, b"p");
        let result = iface.send_udp(0, &mut pool, buf.into(), 7, SocketAddrV4::new(OTHER_IP, 9));
        assert_eq!(refused(&mut pool, result), SendError::ArpPendingFull);
        let buf = payload(&mut pool, b"p");
        let result = iface.send_udp(0, &mut pool, buf.into(), 7, SocketAddrV4::new(PEER_IP, 9));
        assert_eq!(refused(&mut pool, result), SendError::ArpPendingFull);
        assert_eq!(iface.pending_len(), pending_max);
        assert_eq!(iface.counters().drops(DropReason::ArpPendingFull), 2);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn tx_queue_is_bounded() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let tx_queue_max = iface.config().tx_queue_max;
        for _ in 0..tx_queue_max + 3 {
            assert!(rx(&mut iface, &mut pool, 0, &hex(ICMP_REQUEST)).is_none());
        }
        assert_eq!(iface.tx_len(), tx_queue_max);
        assert_eq!(iface.counters().drops(DropReason::TxQueueFull), 3);
        assert_eq!(iface.counters().icmp_echo_replies, tx_queue_max as u64);
        learn_peer(&mut iface, &mut pool, 0);
        let buf = payload(&mut pool, b"q");
        let result = iface.send_udp(0, &mut pool, buf.into(), 7, SocketAddrV4::new(PEER_IP, 9));
        assert_eq!(refused(&mut pool, result), SendError::TxQueueFull);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn pool_exhaustion_when_arp_request_needed() {
        let (mut iface, mut pool) = world();
        let buf = payload(&mut pool, b"p");
        let mut hoard = Vec::new();
        while let Some(b) = pool.alloc() {
            hoard.push(b);
        }
        iface
            .send_udp(0, &mut pool, buf.into(), 7, SocketAddrV4::new(OTHER_IP, 9))
            .unwrap();
        assert_eq!(iface.counters().drops(DropReason::PoolExhausted), 1);
        assert_eq!(
            iface.pending_len(),
            1,
            "the frame waits; the retry will ask again"
        );
        for b in hoard {
            pool.free(b);
        }
        iface.handle_timeout(S, &mut pool);
        assert_eq!(iface.counters().arp_requests_sent, 1);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn send_errors_give_the_buffer_back() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let to = SocketAddrV4::new(PEER_IP, 9);
        let too_big = vec![7u8; UDP_PAYLOAD_MAX + 1];
        let chain = chain_of(&mut pool, &too_big, 1984);
        let result = iface.send_udp(0, &mut pool, chain, 7, to);
        assert_eq!(
            refused(&mut pool, result),
            SendError::PayloadTooLarge {
                len: 65_508,
                max: 65_507
            }
        );
        let fits = payload(&mut pool, &[0u8; 1472]);
        assert_eq!(iface.send_udp(0, &mut pool, fits.into(), 7, to), Ok(()));
        let mut no_headroom = pool.alloc_frame().unwrap();
        pool.set_len(&mut no_headroom, 10).unwrap();
        let result = iface.send_udp(0, &mut pool, no_headroom.into(), 7, to);
        assert_eq!(
            refused(&mut pool, result),
            SendError::NoHeadroom {
                headroom: 0,
                needed: HEADERS_LEN
            }
        );
        assert_eq!(iface.counters().drops(DropReason::PayloadTooLarge), 1);
        assert_eq!(iface.counters().drops(DropReason::TxNoHeadroom), 1);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn ident_increments_per_datagram() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        for _ in 0..3 {
            let buf = payload(&mut pool, b"i");
            iface
                .send_udp(0, &mut pool, buf.into(), 7, SocketAddrV4::new(PEER_IP, 9))
                .unwrap();
        }
        let idents: Vec<u16> = tx_all(&mut iface, &mut pool)
            .iter()
            .map(|f| ipv4::Packet::new_checked(&f[IP_AT..]).unwrap().ident())
            .collect();
        assert_eq!(idents, vec![0, 1, 2]);
        assert_no_leak(iface, pool);
    }

    // ----- reassembly -----

    /// A pool of `frames` 2 KiB frames.
    fn pool_of(frames: usize) -> PacketPool {
        PacketPool::new(PoolConfig {
            frame_size: 2048,
            frame_count: frames,
            headroom: 64,
        })
        .unwrap()
    }

    /// A UDP datagram (header and payload, checksum filled) from `PEER_IP:src_port` to our
    /// port 7: the IPv4 payload that fragments cut up.
    fn udp_datagram(src_port: u16, data: &[u8]) -> Vec<u8> {
        let mut l4 = vec![0u8; udp::HEADER_LEN + data.len()];
        l4[udp::HEADER_LEN..].copy_from_slice(data);
        udp::Repr {
            src_port,
            dst_port: 7,
            payload_len: data.len(),
        }
        .emit(
            &mut udp::Packet::new_unchecked(&mut l4[..]),
            PEER_IP,
            OUR_IP,
        );
        l4
    }

    /// A fragment frame from `src` carrying `piece` at byte `offset` of datagram `ident`.
    fn frag_frame(src: Ipv4Addr, ident: u16, offset: usize, more: bool, piece: &[u8]) -> Vec<u8> {
        let mut f = ip_frame(17, src, OUR_IP, piece);
        let mut ip = ipv4::Packet::new_unchecked(&mut f[IP_AT..]);
        ip.set_ident(ident);
        ip.set_fragment(offset, more);
        ip.fill_checksum();
        f
    }

    /// `datagram` cut at `cuts` (multiples of 8, increasing) into fragment frames from the
    /// peer, in order.
    fn fragments(datagram: &[u8], ident: u16, cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut bounds = vec![0];
        bounds.extend(
            cuts.iter()
                .copied()
                .filter(|&c| c > 0 && c < datagram.len()),
        );
        bounds.push(datagram.len());
        bounds
            .windows(2)
            .map(|w| {
                let more = w[1] < datagram.len();
                frag_frame(PEER_IP, ident, w[0], more, &datagram[w[0]..w[1]])
            })
            .collect()
    }

    fn test_payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn fragments_in_any_order_are_reassembled_into_a_chain() {
        let (mut iface, mut pool) = world();
        let data = test_payload(3000);
        let frags = fragments(&udp_datagram(40_000, &data), 0x1234, &[1480, 2960]);
        assert_eq!(frags.len(), 3);
        for i in [2, 0] {
            assert!(rx(&mut iface, &mut pool, 10, &frags[i]).is_none());
        }
        assert_eq!(iface.reassembly_len(), (1, 2));
        assert_eq!(iface.poll_at(), Some(10 + REASSEMBLY_TIMEOUT_NS));
        let d = rx(&mut iface, &mut pool, 11, &frags[1]).expect("the last piece completes it");
        assert_eq!(d.from, SocketAddrV4::new(PEER_IP, 40_000));
        assert_eq!(d.local_port, 7);
        assert_eq!(d.data.frames(), 3, "zero-copy: the fragments' own frames");
        assert_eq!(bytes(&pool, &d.data), data);
        pool.free_chain(d.data);
        let c = iface.counters();
        assert_eq!((c.frag_received, c.reassembled, c.udp_rx), (3, 1, 1));
        assert_eq!(c.drops_total(), 0);
        assert_eq!(iface.reassembly_len(), (0, 0));
        assert_eq!(iface.poll_at(), None, "a closed entry needs no timer");
        assert_no_leak(iface, pool);
    }

    #[test]
    fn reassembly_honours_the_udp_length_and_tiny_last_fragments() {
        let (mut iface, mut pool) = world();
        // The IPv4 payload is 16 bytes longer than the UDP length says: those bytes are not
        // part of the datagram (RFC 768), and a fragment holding only them adds no segment.
        let data = test_payload(100);
        let mut datagram = udp_datagram(5, &data);
        datagram.extend_from_slice(&[0xee; 16]);
        let frags = fragments(&datagram, 9, &[8, 104, 112]);
        assert_eq!(frags.len(), 4);
        let mut got = None;
        for f in &frags {
            got = got.or(rx(&mut iface, &mut pool, 0, f));
        }
        let d = got.expect("delivered");
        assert_eq!(bytes(&pool, &d.data), data);
        // The header-only fragment heads the chain with an empty window; the fragment of
        // bytes past the UDP length adds no segment.
        assert_eq!(d.data.frames(), 3);
        assert_eq!(d.data.head().len(), 0);
        pool.free_chain(d.data);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn reassembled_datagrams_get_the_udp_checks() {
        let (mut iface, mut pool) = world();
        let data = test_payload(2000);
        let mut datagram = udp_datagram(5, &data);
        datagram[udp::HEADER_LEN + 1500] ^= 0x40;
        for f in fragments(&datagram, 1, &[1480]) {
            assert!(rx(&mut iface, &mut pool, 0, &f).is_none());
        }
        assert_eq!(iface.counters().drops(DropReason::UdpBadChecksum), 1);
        let mut datagram = udp_datagram(5, &data);
        datagram[2..4].copy_from_slice(&9u16.to_be_bytes()); // Nobody on port 9.
        for f in fragments(&datagram, 2, &[1480]) {
            assert!(rx(&mut iface, &mut pool, 0, &f).is_none());
        }
        assert_eq!(iface.counters().drops(DropReason::UdpNoListener), 1);
        let mut datagram = udp_datagram(5, &data);
        datagram[4..6].copy_from_slice(&3000u16.to_be_bytes()); // Past the datagram.
        for f in fragments(&datagram, 3, &[1480]) {
            assert!(rx(&mut iface, &mut pool, 0, &f).is_none());
        }
        assert_eq!(iface.counters().drops(DropReason::UdpBadLength), 1);
        let mut datagram = udp_datagram(5, &data);
        datagram[6..8].copy_from_slice(&[0, 0]); // No checksum: allowed (RFC 768).
        let mut got = None;
        for f in fragments(&datagram, 4, &[1480]) {
            got = got.or(rx(&mut iface, &mut pool, 0, &f));
        }
        let d = got.expect("a zero checksum is accepted");
        assert_eq!(bytes(&pool, &d.data), data);
        pool.free_chain(d.data);
        let c = iface.counters();
        assert_eq!(
            (c.udp_checksum_zero, c.reassembled, c.frag_received),
            (1, 1, 8)
        );
        assert_eq!(iface.reassembly_len(), (0, 0));
        assert_no_leak(iface, pool);
    }

    #[test]
    fn overlapping_fragments_abandon_the_whole_datagram() {
        let (mut iface, mut pool) = world();
        let datagram = udp_datagram(5, &test_payload(3000));
        let primary = fragments(&datagram, 7, &[1480, 2960]);
        // The same bytes cut elsewhere: [1472, 2960) overlaps [0, 1480) by 8 bytes.
        let overlapping = frag_frame(PEER_IP, 7, 1472, true, &datagram[1472..2960]);
        assert!(rx(&mut iface, &mut pool, 0, &primary[0]).is_none());
        assert!(rx(&mut iface, &mut pool, 0, &overlapping).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmOverlap), 1);
        assert_eq!(iface.reassembly_len(), (0, 0), "every fragment was freed");
        assert_eq!(pool.available(), pool.capacity());
        // RFC 5722: fragments not yet received are discarded too, even a complete set.
        for f in &primary {
            assert!(rx(&mut iface, &mut pool, 1, f).is_none());
        }
        assert_eq!(iface.counters().drops(DropReason::ReasmStale), 3);
        assert_eq!(iface.counters().reassembled, 0);
        // Once the closed entry's deadline has passed, the identification is free again.
        let later = REASSEMBLY_TIMEOUT_NS;
        let mut got = None;
        for f in &primary {
            got = got.or(rx(&mut iface, &mut pool, later, f));
        }
        pool.free_chain(got.expect("a fresh datagram").data);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn exact_duplicates_are_dropped_alone_and_never_delivered_twice() {
        let (mut iface, mut pool) = world();
        let data = test_payload(2000);
        let datagram = udp_datagram(5, &data);
        let frags = fragments(&datagram, 7, &[1480]);
        assert!(rx(&mut iface, &mut pool, 0, &frags[0]).is_none());
        assert!(rx(&mut iface, &mut pool, 0, &frags[0]).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmDuplicate), 1);
        let d = rx(&mut iface, &mut pool, 0, &frags[1]).expect("delivered");
        assert_eq!(bytes(&pool, &d.data), data);
        pool.free_chain(d.data);
        // The network duplicated the whole train: the copies are stale, not a datagram.
        for f in &frags {
            assert!(rx(&mut iface, &mut pool, 1, f).is_none());
        }
        assert_eq!(iface.counters().drops(DropReason::ReasmStale), 2);
        assert_eq!(iface.counters().udp_rx, 1);
        // A "duplicate" that changes the bytes is an overlap.
        let frags = fragments(&datagram, 8, &[1480]);
        let mut forged = frags[0].clone();
        forged[L4_AT + 100] ^= 1;
        refill_ip_checksum(&mut forged);
        assert!(rx(&mut iface, &mut pool, 2, &frags[0]).is_none());
        assert!(rx(&mut iface, &mut pool, 2, &forged).is_none());
        assert!(rx(&mut iface, &mut pool, 2, &frags[1]).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmOverlap), 1);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn fragments_disagreeing_about_the_end_abandon_the_datagram() {
        let datagram = udp_datagram(5, &test_payload(3000));
        let frags = fragments(&datagram, 7, &[1480, 2960]);
        let cases: Vec<Vec<Vec<u8>>> = vec![
            // Two different last fragments.
            vec![
                frags[2].clone(),
                frag_frame(PEER_IP, 7, 2960, false, &datagram[2960..3000]),
            ],
            // Data past the known end.
            vec![
                frag_frame(PEER_IP, 7, 1480, false, &datagram[1480..1488]),
                frags[2].clone(),
            ],
            // A last fragment ending before data already held.
            vec![
                frags[1].clone(),
                frag_frame(PEER_IP, 7, 8, false, &datagram[8..1480]),
            ],
            // A fragment with MF set that ends exactly at the end.
            vec![
                frags[2].clone(),
                frag_frame(PEER_IP, 7, 2960, true, &datagram[2960..3008]),
            ],
        ];
        for (i, case) in cases.iter().enumerate() {
            let (mut iface, mut pool) = world();
            for f in case {
                assert!(rx(&mut iface, &mut pool, 0, f).is_none(), "case {i}");
            }
            assert_eq!(
                iface.counters().drops(DropReason::ReasmOverlap),
                1,
                "case {i}: {:?}",
                iface.counters()
            );
            assert_eq!(iface.reassembly_len(), (0, 0), "case {i}");
            assert_no_leak(iface, pool);
        }
    }

    #[test]
    fn incomplete_datagrams_time_out() {
        let (mut iface, mut pool) = world();
        let frags = fragments(&udp_datagram(5, &test_payload(2000)), 7, &[1480]);
        assert!(rx(&mut iface, &mut pool, 100, &frags[0]).is_none());
        let deadline = 100 + REASSEMBLY_TIMEOUT_NS;
        assert_eq!(iface.poll_at(), Some(deadline));
        iface.handle_timeout(deadline - 1, &mut pool);
        assert_eq!(iface.reassembly_len(), (1, 1));
        iface.handle_timeout(deadline, &mut pool);
        assert_eq!(iface.reassembly_len(), (0, 0));
        assert_eq!(iface.counters().drops(DropReason::ReasmTimeout), 1);
        assert_eq!(iface.poll_at(), None);
        assert_eq!(pool.available(), pool.capacity(), "the frame came back");
        // Expiry is also checked when a fragment arrives, whether or not the timer ran: the
        // late piece starts a fresh datagram instead of completing the stale one.
        assert!(rx(&mut iface, &mut pool, 0, &frags[0]).is_none());
        assert!(rx(&mut iface, &mut pool, REASSEMBLY_TIMEOUT_NS, &frags[1]).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmTimeout), 2);
        assert_eq!(iface.reassembly_len(), (1, 1));
        assert_no_leak(iface, pool);
    }

    #[test]
    fn reassembly_table_is_bounded() {
        let (mut iface, mut pool) = world_with_pool(config(), pool_of(128));
        let datagram = udp_datagram(5, &test_payload(2000));
        let first = |ident| frag_frame(PEER_IP, ident, 0, true, &datagram[..1480]);
        for ident in 0..REASSEMBLY_DATAGRAMS_MAX as u16 {
            assert!(rx(&mut iface, &mut pool, 0, &first(ident)).is_none());
        }
        assert_eq!(
            iface.reassembly_len(),
            (REASSEMBLY_DATAGRAMS_MAX, REASSEMBLY_DATAGRAMS_MAX)
        );
        assert!(rx(&mut iface, &mut pool, 0, &first(100)).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmTableFull), 1);
        // Completing one closes its entry; a new datagram may reclaim a closed entry.
        let last = frag_frame(PEER_IP, 0, 1480, false, &datagram[1480..]);
        let d = rx(&mut iface, &mut pool, 0, &last).expect("complete");
        pool.free_chain(d.data);
        assert!(rx(&mut iface, &mut pool, 0, &first(100)).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmTableFull), 1);
        assert_eq!(iface.reassembly_len().0, REASSEMBLY_DATAGRAMS_MAX);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn reassembly_memory_is_bounded_by_frames_pinned() {
        // 8-byte fragments are charged a whole 2 KiB frame each: 128 fit in 256 KiB.
        let (mut iface, mut pool) = world_with_pool(config(), pool_of(160));
        let datagram = udp_datagram(5, &test_payload(1000));
        let piece = |ident: u16, k: usize| {
            frag_frame(PEER_IP, ident, 8 * k, true, &datagram[8 * k..8 * k + 8])
        };
        for ident in 0..16u16 {
            for k in 0..8 {
                assert!(rx(&mut iface, &mut pool, 0, &piece(ident, k)).is_none());
            }
        }
        assert_eq!(iface.reassembly_len(), (16, 128));
        assert_eq!(iface.counters().drops_total(), 0);
        // One more frame would pass the budget: its datagram is abandoned, its frames freed.
        assert!(rx(&mut iface, &mut pool, 0, &piece(3, 8)).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmTableFull), 1);
        assert_eq!(iface.reassembly_len(), (15, 120));
        assert_no_leak(iface, pool);
    }

    #[test]
    fn oversized_and_over_fragmented_datagrams_are_refused() {
        let (mut iface, mut pool) = world_with_pool(config(), pool_of(128));
        // A fragment reaching past 65,535 bytes of total length (65,515 of payload).
        let tail = frag_frame(PEER_IP, 1, 65_512, false, &[0; 8]);
        assert!(rx(&mut iface, &mut pool, 0, &tail).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmTooBig), 1);
        assert_eq!(iface.reassembly_len(), (0, 0));
        let head = frag_frame(PEER_IP, 2, 0, true, &[0; 8]);
        assert!(rx(&mut iface, &mut pool, 0, &head).is_none());
        assert!(rx(&mut iface, &mut pool, 0, &tail.clone()).is_none());
        let mut tail2 = tail.clone();
        ipv4::Packet::new_unchecked(&mut tail2[IP_AT..]).set_ident(2);
        refill_ip_checksum(&mut tail2);
        assert!(rx(&mut iface, &mut pool, 0, &tail2).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmTooBig), 3);
        assert_eq!(
            iface.reassembly_len(),
            (0, 0),
            "the datagram in progress was abandoned"
        );
        // The largest legal fragment end is accepted.
        let edge = frag_frame(PEER_IP, 3, 65_504, false, &[0; 11]);
        assert!(rx(&mut iface, &mut pool, 0, &edge).is_none());
        assert_eq!(iface.reassembly_len(), (1, 1));
        // Sixty-four 8-byte fragments are the most one datagram may hold.
        let datagram = udp_datagram(5, &test_payload(1000));
        for k in 0..64 {
            let f = frag_frame(PEER_IP, 4, 8 * k, true, &datagram[8 * k..8 * k + 8]);
            assert!(rx(&mut iface, &mut pool, 0, &f).is_none());
        }
        assert_eq!(iface.reassembly_len(), (2, 65));
        let f = frag_frame(PEER_IP, 4, 8 * 64, true, &datagram[8 * 64..8 * 64 + 8]);
        assert!(rx(&mut iface, &mut pool, 0, &f).is_none());
        assert_eq!(iface.counters().drops(DropReason::ReasmTooManyFragments), 1);
        assert_eq!(iface.reassembly_len(), (1, 1));
        assert_no_leak(iface, pool);
    }

    // ----- fragmentation on transmit -----

    /// Turns a frame we sent to the peer around, as if the peer had sent it to us. Swapping
    /// the two addresses changes neither checksum (the sums commute).
    fn turn_around(frame: &mut [u8]) {
        frame[..6].copy_from_slice(&OUR_MAC.0);
        frame[6..12].copy_from_slice(&PEER_MAC.0);
        let mut ip = ipv4::Packet::new_unchecked(&mut frame[IP_AT..]);
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        ip.set_src_addr(dst);
        ip.set_dst_addr(src);
    }

    #[test]
    fn large_payloads_are_sent_as_fragments_that_reassemble() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let data = test_payload(4000);
        let chain = chain_of(&mut pool, &data, 999);
        assert_eq!(chain.frames(), 5);
        assert_eq!(iface.tx_frames_for(&pool, data.len()), Some(3));
        iface
            .send_udp(0, &mut pool, chain, 7, SocketAddrV4::new(PEER_IP, 7))
            .unwrap();
        let mut sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 3);
        let mut offsets = Vec::new();
        for f in &sent {
            assert!(f.len() <= 14 + 1500, "each fragment fits the MTU");
            assert_eq!(&f[0..6], PEER_MAC.as_bytes());
            let ip = ipv4::Packet::new_checked(&f[IP_AT..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.ident(), 0, "one identification for all fragments");
            assert!(!ip.dont_frag(), "no DF on fragments");
            assert_eq!(ip.frag_offset_bytes() % 8, 0);
            offsets.push((ip.frag_offset_bytes(), ip.more_frags(), ip.payload().len()));
        }
        assert_eq!(
            offsets,
            vec![(0, true, 1480), (1480, true, 1480), (2960, false, 1048)]
        );
        let c = iface.counters();
        assert_eq!((c.udp_tx, c.fragmented, c.frag_sent), (1, 1, 3));
        assert_eq!(
            pool.available(),
            pool.capacity(),
            "the payload's frames were released"
        );
        // What we sent, turned around and fed back last first, is the payload again: the
        // checksum over the whole datagram verifies.
        let mut got = None;
        for f in sent.iter_mut().rev() {
            turn_around(f);
            got = got.or(rx(&mut iface, &mut pool, 1, f));
        }
        let d = got.expect("reassembled");
        assert_eq!(bytes(&pool, &d.data), data);
        pool.free_chain(d.data);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn one_frame_above_the_mtu_is_fragmented_and_a_small_chain_is_joined() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let to = SocketAddrV4::new(PEER_IP, 7);
        // 1473 bytes in one 2 KiB frame: one byte more than fits unfragmented.
        let data = test_payload(1473);
        let buf = payload(&mut pool, &data);
        iface.send_udp(0, &mut pool, buf.into(), 7, to).unwrap();
        let mut sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 2);
        let mut got = None;
        for f in sent.iter_mut() {
            turn_around(f);
            got = got.or(rx(&mut iface, &mut pool, 1, f));
        }
        let d = got.unwrap();
        assert_eq!(bytes(&pool, &d.data), data);
        pool.free_chain(d.data);
        // Three small frames (odd lengths, so the checksum must carry across segments) that
        // fit the MTU together go out as one unfragmented frame with DF.
        let data = test_payload(301);
        let chain = chain_of(&mut pool, &data, 101);
        assert_eq!(chain.frames(), 3);
        iface.send_udp(0, &mut pool, chain, 7, to).unwrap();
        let mut sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 1);
        let ip = ipv4::Packet::new_checked(&sent[0][IP_AT..]).unwrap();
        assert!(ip.dont_frag() && !ip.is_fragment());
        turn_around(&mut sent[0]);
        let d = rx(&mut iface, &mut pool, 2, &sent[0]).expect("one frame, delivered at once");
        assert_eq!(bytes(&pool, &d.data), data);
        pool.free_chain(d.data);
        assert_eq!(iface.counters().fragmented, 1);
        assert_eq!(iface.counters().udp_tx, 2);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn fragmented_sends_are_all_or_nothing() {
        let to = SocketAddrV4::new(PEER_IP, 7);
        let data = test_payload(4000);
        // Transmit queue: 16 places, 14 taken; three fragments do not fit.
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        for _ in 0..14 {
            let buf = payload(&mut pool, b"x");
            iface.send_udp(0, &mut pool, buf.into(), 7, to).unwrap();
        }
        let chain = chain_of(&mut pool, &data, 1984);
        let (error, chain) = iface.send_udp(0, &mut pool, chain, 7, to).unwrap_err();
        assert_eq!(error, SendError::TxQueueFull);
        assert_eq!(bytes(&pool, &chain), data, "the payload comes back intact");
        assert_eq!(iface.tx_len(), 14, "no fragment was queued");
        pool.free_chain(chain);
        assert_no_leak(iface, pool);
        // Pool: two frames free, three needed.
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let chain = chain_of(&mut pool, &data, 1984);
        let mut hoard = Vec::new();
        while pool.available() > 2 {
            hoard.push(pool.alloc().unwrap());
        }
        let (error, chain) = iface.send_udp(0, &mut pool, chain, 7, to).unwrap_err();
        assert_eq!(
            error,
            SendError::PoolExhausted {
                needed: 3,
                available: 2
            }
        );
        assert_eq!(bytes(&pool, &chain), data);
        assert_eq!((iface.tx_len(), pool.available()), (0, 2));
        assert_eq!(iface.counters().drops(DropReason::PoolExhausted), 1);
        pool.free_chain(chain);
        for b in hoard {
            pool.free(b);
        }
        assert_no_leak(iface, pool);
        // ARP pending queue: 8 places, 6 taken by frames for an unresolved host.
        let (mut iface, mut pool) = world();
        for _ in 0..6 {
            let buf = payload(&mut pool, b"x");
            iface.send_udp(0, &mut pool, buf.into(), 7, to).unwrap();
        }
        let chain = chain_of(&mut pool, &data, 1984);
        let (error, chain) = iface.send_udp(0, &mut pool, chain, 7, to).unwrap_err();
        assert_eq!(error, SendError::ArpPendingFull);
        assert_eq!(iface.pending_len(), 6);
        pool.free_chain(chain);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn fragments_wait_for_arp_together() {
        let (mut iface, mut pool) = world();
        let chain = chain_of(&mut pool, &test_payload(4000), 1984);
        iface
            .send_udp(0, &mut pool, chain, 7, SocketAddrV4::new(PEER_IP, 7))
            .unwrap();
        assert_eq!(iface.pending_len(), 3);
        let requests = tx_all(&mut iface, &mut pool);
        assert_eq!(requests.len(), 1, "one request for the next hop");
        assert_eq!(iface.counters().udp_tx, 0);
        assert!(rx(&mut iface, &mut pool, 1, &arp_reply_from(PEER_MAC, PEER_IP)).is_none());
        let sent = tx_all(&mut iface, &mut pool);
        let offsets: Vec<u32> = sent
            .iter()
            .map(|f| {
                ipv4::Packet::new_checked(&f[IP_AT..])
                    .unwrap()
                    .frag_offset_bytes()
            })
            .collect();
        assert_eq!(offsets, vec![0, 1480, 2960], "released in order");
        assert!(sent.iter().all(|f| f[..6] == PEER_MAC.0));
        assert_eq!(iface.counters().udp_tx, 1, "one datagram");
        assert_no_leak(iface, pool);
    }

    #[test]
    fn a_copied_payload_goes_back_to_its_app() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let chain = chain_of(&mut pool, &test_payload(3000), 1984);
        pool.return_after_tx(chain.head(), 77);
        iface
            .send_udp(0, &mut pool, chain, 7, SocketAddrV4::new(PEER_IP, 7))
            .unwrap();
        let returned = pool.take_returned().expect("the head comes back");
        assert_eq!((returned.token, returned.result), (77, Ok(())));
        assert_eq!(pool.data(&returned.buf), &test_payload(3000)[..1984]);
        pool.free(returned.buf);
        assert_eq!(tx_all(&mut iface, &mut pool).len(), 3);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn payloads_needing_too_many_fragments_are_refused() {
        let mut c = config();
        c.mtu = 68; // 48 data bytes per fragment.
        let (mut iface, mut pool) = world_with(c);
        learn_peer(&mut iface, &mut pool, 0);
        let max = TX_FRAGMENTS_MAX * 48 - 8;
        assert_eq!(iface.tx_frames_for(&pool, max), Some(TX_FRAGMENTS_MAX));
        assert_eq!(iface.tx_frames_for(&pool, max + 1), None);
        let chain = chain_of(&mut pool, &test_payload(max + 1), 1984);
        let result = iface.send_udp(0, &mut pool, chain, 7, SocketAddrV4::new(PEER_IP, 7));
        assert_eq!(
            refused(&mut pool, result),
            SendError::PayloadTooLarge { len: max + 1, max }
        );
        assert_no_leak(iface, pool);
    }

    #[test]
    fn segment_sums_carry_odd_offsets() {
        let data = test_payload(333);
        let whole = checksum::sum(&data);
        for cuts in [vec![1], vec![1, 2], vec![3, 100, 101], vec![0, 332], vec![]] {
            let mut pieces = Vec::new();
            let mut at = 0;
            for &c in &cuts {
                pieces.push(&data[at..c]);
                at = c;
            }
            pieces.push(&data[at..]);
            assert_eq!(sum_segments(pieces.into_iter()), whole, "{cuts:?}");
        }
    }

    /// One fragment of a random delivery schedule: datagram bytes `start..end`.
    #[derive(Debug, Clone)]
    struct Piece {
        start: usize,
        end: usize,
    }

    proptest! {
        /// Random fragment sequences of a random datagram (shuffled, duplicated, with
        /// overlapping pieces of the same bytes cut elsewhere): the datagram is delivered at
        /// most once and then exactly, or dropped and counted; a schedule with every primary
        /// piece and no overlap is delivered; and every frame comes back to the pool.
        #[test]
        fn random_fragment_sequences(
            len in 1usize..6000,
            cut_units in proptest::collection::vec(1usize..180, 1..40),
            alt_units in proptest::collection::vec(1usize..180, 1..40),
            order in proptest::collection::vec(any::<u32>(), 0..120),
            dups in proptest::collection::vec(any::<u16>(), 0..8),
            overlaps in proptest::collection::vec(any::<u16>(), 0..3),
            gaps in proptest::collection::vec(0u64..REASSEMBLY_TIMEOUT_NS / 64, 0..120),
            pause in proptest::option::of((0usize..12, 0u64..2 * REASSEMBLY_TIMEOUT_NS)),
        ) {
            let data = test_payload(len);
            let datagram = udp_datagram(4242, &data);
            let total = datagram.len();
            // Cut points at multiples of 8; always at least one, so every piece is a
            // fragment (a piece from 0 to the end with MF clear would be a whole datagram).
            let cut = |units: &[usize]| {
                let mut bounds = vec![0];
                // Cycling the units reaches the end; every piece fits a 2 KiB frame.
                for u in units.iter().cycle() {
                    let next = bounds.last().unwrap() + u * 8;
                    if next >= total { break; }
                    bounds.push(next);
                }
                if bounds.len() == 1 {
                    bounds.push(8);
                }
                bounds.push(total);
                bounds
            };
            let primary: Vec<Piece> = cut(&cut_units)
                .windows(2)
                .map(|w| Piece { start: w[0], end: w[1] })
                .collect();
            let alternative: Vec<Piece> = cut(&alt_units)
                .windows(2)
                .map(|w| Piece { start: w[0], end: w[1] })
                .filter(|p| !primary.iter().any(|q| q.start == p.start && q.end == p.end))
                .collect();
            let mut schedule = primary.clone();
            for d in &dups {
                schedule.push(primary[usize::from(*d) % primary.len()].clone());
            }
            let mut overlapped = false;
            if !alternative.is_empty() {
                for o in &overlaps {
                    schedule.push(alternative[usize::from(*o) % alternative.len()].clone());
                    overlapped = true;
                }
            }
            // Shuffle with the generated keys (Fisher-Yates).
            for i in (1..schedule.len()).rev() {
                let k = order.get(i).copied().unwrap_or(i as u32) as usize % (i + 1);
                schedule.swap(i, k);
            }
            let (mut iface, mut pool) = world_with_pool(config(), pool_of(256));
            let mut now = 0;
            let mut delivered = 0;
            for (i, p) in schedule.iter().enumerate() {
                now += gaps.get(i).copied().unwrap_or(0);
                // Sometimes the train stalls, past the reassembly timeout or not.
                if let Some((at, ns)) = pause {
                    if at == i {
                        now += ns;
                    }
                }
                let frame = frag_frame(PEER_IP, 99, p.start, p.end < total, &datagram[p.start..p.end]);
                if let Some(d) = rx(&mut iface, &mut pool, now, &frame) {
                    prop_assert_eq!(bytes(&pool, &d.data), data.clone());
                    prop_assert_eq!(d.from, SocketAddrV4::new(PEER_IP, 4242));
                    pool.free_chain(d.data);
                    delivered += 1;
                }
            }
            // Within one timeout of the first fragment, the closed entry keeps a second
            // delivery out; after it the identification may legitimately be reused.
            let within_timeout = now < REASSEMBLY_TIMEOUT_NS;
            if within_timeout {
                prop_assert!(delivered <= 1, "delivered {} times", delivered);
            }
            // Whatever is still waiting times out.
            iface.handle_timeout(now + REASSEMBLY_TIMEOUT_NS, &mut pool);
            prop_assert_eq!(iface.reassembly_len(), (0, 0));
            let c = iface.counters().clone();
            let lost = c.drops(DropReason::ReasmOverlap)
                + c.drops(DropReason::ReasmTimeout)
                + c.drops(DropReason::ReasmTooManyFragments)
                + c.drops(DropReason::ReasmTableFull);
            if delivered == 0 {
                prop_assert!(lost >= 1, "dropped without a count: {:?}", c);
            }
            prop_assert_eq!(c.reassembled, delivered);
            if !overlapped && within_timeout && primary.len() <= 64 {
                prop_assert_eq!(delivered, 1, "a clean schedule must be delivered: {:?}", c);
            }
            prop_assert_eq!(c.frag_received, schedule.len() as u64);
            assert_no_leak(iface, pool);
        }
    }

    // ----- every drop reason provoked from bytes -----

    /// Feeds `frame` to a fresh world and asserts it was dropped for `reason` alone.
    fn assert_drop(frame: &[u8], reason: DropReason) {
        let (mut iface, mut pool) = world();
        assert!(
            rx_any(&mut iface, &mut pool, 0, frame).is_none(),
            "{reason:?}: delivered"
        );
        assert_eq!(
            iface.counters().drops(reason),
            1,
            "{reason:?}: {:?}",
            iface.counters()
        );
        assert_eq!(
            iface.counters().drops_total(),
            1,
            "{reason:?}: counted twice"
        );
        assert!(
            tx_all(&mut iface, &mut pool).is_empty(),
            "{reason:?}: replied"
        );
        assert_no_leak(iface, pool);
    }

    #[test]
    fn ethernet_drops() {
        assert_drop(&hex(UDP_REQUEST)[..13], DropReason::EthTruncated);
        assert_drop(&[], DropReason::EthTruncated);
        let mut f = hex(UDP_REQUEST);
        f[5] = 0x99;
        assert_drop(&f, DropReason::EthNotForUs);
        let mut f = hex(UDP_REQUEST);
        f[0] = 0x01; // A multicast MAC is not for us either.
        assert_drop(&f, DropReason::EthNotForUs);
        let mut f = hex(UDP_REQUEST);
        f[..6].copy_from_slice(&[0xff; 6]); // IPv4 to the broadcast MAC (RFC 1122 §3.3.6).
        assert_drop(&f, DropReason::EthNotForUs);
        let mut f = hex(UDP_REQUEST);
        f[6] = 0x01; // Group bit set in the source MAC.
        assert_drop(&f, DropReason::EthBadSource);
        let mut f = hex(ARP_REQUEST);
        f[6..12].copy_from_slice(&[0xff; 6]);
        assert_drop(&f, DropReason::EthBadSource);
        let mut f = hex(UDP_REQUEST);
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        assert_drop(&f, DropReason::Vlan);
        let mut f = hex(UDP_REQUEST);
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_drop(&f, DropReason::UnknownEthertype);
        let mut f = hex(UDP_REQUEST);
        f[6..12].copy_from_slice(&[0; 6]); // The all-zeros MAC names no station.
        assert_drop(&f, DropReason::EthBadSource);
    }

    #[test]
    fn arp_drops() {
        assert_drop(&hex(ARP_REQUEST)[..41], DropReason::ArpMalformed);
        let mut f = hex(ARP_REQUEST);
        f[IP_AT + 1] = 6; // Hardware type IEEE 802.
        assert_drop(&f, DropReason::ArpMalformed);
        let mut f = hex(ARP_REQUEST);
        f[IP_AT + 7] = 9; // Unknown operation.
        assert_drop(&f, DropReason::ArpMalformed);
        let mut f = hex(ARP_REQUEST);
        f[IP_AT + 8] = 0xff; // Multicast sender hardware address.
        assert_drop(&f, DropReason::ArpMalformed);
        let f = arp_frame(
            arp::Operation::Request,
            EthernetAddress::BROADCAST,
            PEER_MAC,
            PEER_IP,
            OTHER_IP,
        );
        assert_drop(&f, DropReason::ArpNotForUs);
        // A martian sender, or one claiming our own address, is neither learned nor
        // answered, even when it asks for us.
        for spa in [
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(224, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 255),
            Ipv4Addr::BROADCAST,
            OUR_IP,
        ] {
            let f = arp_frame(
                arp::Operation::Request,
                EthernetAddress::BROADCAST,
                PEER_MAC,
                spa,
                OUR_IP,
            );
            assert_drop(&f, DropReason::ArpBadSender);
        }
    }

    #[test]
    fn ipv4_drops() {
        let good = hex(UDP_REQUEST);
        assert_drop(&good[..IP_AT + 19], DropReason::IpTruncated);
        let mut f = good.clone();
        f[IP_AT] = 0x65;
        assert_drop(&f, DropReason::IpBadVersion);
        let mut f = good.clone();
        f[IP_AT] = 0x44;
        assert_drop(&f, DropReason::IpBadHeaderLen);
        let mut f = good.clone();
        f[IP_AT] = 0x4f;
        f.truncate(IP_AT + 40);
        assert_drop(&f, DropReason::IpBadHeaderLen);
        let mut f = good.clone();
        f[IP_AT + 11] ^= 0x01;
        assert_drop(&f, DropReason::IpBadChecksum);
        let mut f = good.clone();
        f[IP_AT + 2..IP_AT + 4].copy_from_slice(&1000u16.to_be_bytes()); // Oversized.
        refill_ip_checksum(&mut f);
        assert_drop(&f, DropReason::IpBadTotalLen);
        let mut f = good.clone();
        f[IP_AT + 2..IP_AT + 4].copy_from_slice(&19u16.to_be_bytes());
        refill_ip_checksum(&mut f);
        assert_drop(&f, DropReason::IpBadTotalLen);
        // Options: a 24-byte header (one word of NOPs) in front of the same UDP datagram.
        let mut f = good[..L4_AT].to_vec();
        f.extend_from_slice(&[1, 1, 1, 0]);
        f.extend_from_slice(&good[L4_AT..]);
        f[IP_AT] = 0x46;
        f[IP_AT + 2..IP_AT + 4]
            .copy_from_slice(&(good.len() as u16 - IP_AT as u16 + 4).to_be_bytes());
        refill_ip_checksum(&mut f);
        assert_drop(&f, DropReason::IpOptions);
        // Fragments of anything but UDP are not reassembled.
        for flags in [0x2000u16, 0x0001, 0x4000 | 0x00b9] {
            let mut f = hex(ICMP_REQUEST);
            f[IP_AT + 6..IP_AT + 8].copy_from_slice(&flags.to_be_bytes());
            refill_ip_checksum(&mut f);
            assert_drop(&f, DropReason::IpFragment);
        }
        // A UDP fragment that can belong to no datagram: empty, or a middle fragment whose
        // length is not a multiple of 8.
        let mut f = ip_frame(17, PEER_IP, OUR_IP, &[]);
        f[IP_AT + 6..IP_AT + 8].copy_from_slice(&0x0001u16.to_be_bytes());
        refill_ip_checksum(&mut f);
        assert_drop(&f, DropReason::ReasmMalformed);
        let mut f = ip_frame(17, PEER_IP, OUR_IP, &[0u8; 12]);
        f[IP_AT + 6..IP_AT + 8].copy_from_slice(&0x2001u16.to_be_bytes());
        refill_ip_checksum(&mut f);
        assert_drop(&f, DropReason::ReasmMalformed);
        assert_drop(
            &ip_frame(17, PEER_IP, OTHER_IP, &good[L4_AT..]),
            DropReason::IpNotForUs,
        );
        // Martian sources, each class under its own reason (RFC 1122 §3.2.1.3, RFC 1812
        // §5.3.7), UDP and ICMP alike: never delivered, never answered.
        for (src, reason) in [
            (Ipv4Addr::UNSPECIFIED, DropReason::IpSrcThisNetwork),
            (Ipv4Addr::new(0, 0, 0, 7), DropReason::IpSrcThisNetwork),
            (Ipv4Addr::new(127, 0, 0, 1), DropReason::IpSrcLoopback),
            (Ipv4Addr::new(224, 0, 0, 1), DropReason::IpSrcMulticast),
            (Ipv4Addr::new(240, 1, 2, 3), DropReason::IpSrcReserved),
            (Ipv4Addr::BROADCAST, DropReason::IpSrcBroadcast),
            (Ipv4Addr::new(10, 0, 0, 255), DropReason::IpSrcBroadcast),
            (Ipv4Addr::new(10, 0, 0, 0), DropReason::IpSrcNetwork),
            (OUR_IP, DropReason::IpSrcOurs),
        ] {
            assert_drop(&udp_frame(src, 1, 7, b"x"), reason);
            let mut ping = hex(ICMP_REQUEST);
            ping[IP_AT + 12..IP_AT + 16].copy_from_slice(&src.octets());
            refill_ip_checksum(&mut ping);
            assert_drop(&ping, reason);
        }
        assert_drop(
            &ip_frame(99, PEER_IP, OUR_IP, &[0u8; 20]),
            DropReason::IpUnknownProtocol,
        );
    }

    #[test]
    fn icmp_drops() {
        assert_drop(
            &ip_frame(1, PEER_IP, OUR_IP, &[8, 0, 0xf7]),
            DropReason::IcmpMalformed,
        );
        let mut f = hex(ICMP_REQUEST);
        f[L4_AT + 20] ^= 0x40;
        assert_drop(&f, DropReason::IcmpBadChecksum);
        // A timestamp request (13) with a valid checksum is well formed but unsupported.
        let mut msg = vec![13u8, 0, 0, 0, 0, 1, 0, 1];
        msg.extend_from_slice(&[0; 12]);
        icmpv4::Packet::new_unchecked(&mut msg[..]).fill_checksum();
        assert_drop(
            &ip_frame(1, PEER_IP, OUR_IP, &msg),
            DropReason::IcmpUnsupported,
        );
        // An echo reply is not answered.
        let mut f = hex(ICMP_REPLY);
        f[..6].copy_from_slice(&OUR_MAC.0);
        f[IP_AT + 16..IP_AT + 20].copy_from_slice(&OUR_IP.octets());
        f[IP_AT + 12..IP_AT + 16].copy_from_slice(&PEER_IP.octets());
        refill_ip_checksum(&mut f);
        assert_drop(&f, DropReason::IcmpUnsupported);
    }

    #[test]
    fn udp_drops() {
        assert_drop(
            &ip_frame(17, PEER_IP, OUR_IP, &[0x9c, 0x40, 0, 7]),
            DropReason::UdpTruncated,
        );
        let good = hex(UDP_REQUEST);
        let mut f = good.clone();
        f[L4_AT + 4..L4_AT + 6].copy_from_slice(&200u16.to_be_bytes()); // Beyond the IP payload.
        assert_drop(&f, DropReason::UdpBadLength);
        let mut f = good.clone();
        f[L4_AT + 4..L4_AT + 6].copy_from_slice(&4u16.to_be_bytes()); // Below the header.
        assert_drop(&f, DropReason::UdpBadLength);
        let mut f = good.clone();
        f[L4_AT + 20] ^= 0xff;
        assert_drop(&f, DropReason::UdpBadChecksum);
        assert_drop(
            &udp_frame(PEER_IP, 40000, 9, b"nobody"),
            DropReason::UdpNoListener,
        );
    }

    #[test]
    fn tcp_header_drops() {
        assert_drop(
            &ip_frame(6, PEER_IP, OUR_IP, &[0u8; 19]),
            DropReason::TcpMalformed,
        );
        let mut f = tcp_frame(&data_repr(40_000, 80, 4), b"data");
        f[L4_AT + 12] = 0x40; // Data offset 4 words: below the fixed header.
        refill_tcp_checksum(&mut f);
        assert_drop(&f, DropReason::TcpMalformed);
        let mut f = tcp_frame(&syn_repr(40_000, 80), &[]);
        f[L4_AT + 12] = 0xf0; // 60 bytes of header in a 40-byte segment.
        refill_tcp_checksum(&mut f);
        assert_drop(&f, DropReason::TcpMalformed);
        // The data offset counts against the IPv4 total length, not the frame: a header
        // reaching into Ethernet padding is still too long.
        let mut f = tcp_frame(&ack_repr(40_000, 80), &[]);
        f[L4_AT + 12] = 0x60;
        refill_tcp_checksum(&mut f);
        f.resize(64, 0);
        assert_drop(&f, DropReason::TcpMalformed);
    }

    #[test]
    fn tcp_malformed_options_are_dropped() {
        // An MSS-only SYN has 4 bytes of options, `02 04 05 b4`; each edit below keeps the
        // checksum valid, so only the options are wrong (RFC 9293 §3.2 MUST-7).
        let mut syn = syn_repr(40_000, 80);
        syn.window_scale = None;
        syn.sack_permitted = false;
        syn.timestamps = None;
        let good = tcp_frame(&syn, &[]);
        assert_eq!(&good[L4_AT + 20..], &[2, 4, 5, 0xb4]);
        for options in [
            [2, 0, 5, 0xb4], // A length of 0 would never advance.
            [2, 1, 5, 0xb4], // Nor would 1.
            [2, 3, 5, 0xb4], // MSS is 4 bytes long.
            [8, 10, 0, 0],   // Timestamps run past the header.
            [1, 1, 1, 3],    // A kind with no length byte left.
        ] {
            let mut f = good.clone();
            f[L4_AT + 20..].copy_from_slice(&options);
            refill_tcp_checksum(&mut f);
            assert_drop(&f, DropReason::TcpBadOption);
        }
        // An unknown kind with a sound length is skipped (MUST-6), and the rest delivered.
        let mut f = good.clone();
        f[L4_AT + 20..].copy_from_slice(&[0xfd, 4, 0xbe, 0xef]);
        refill_tcp_checksum(&mut f);
        let (mut iface, mut pool) = world();
        let seg = rx_tcp(&mut iface, &mut pool, 0, &f);
        assert_eq!(seg.repr.max_seg_size, None);
        pool.free(seg.data);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn tcp_checksum_port_and_address_drops() {
        let good = tcp_frame(&data_repr(40_000, 80, 5), b"hello");
        let mut f = good.clone();
        let last = f.len() - 1;
        f[last] ^= 0x20;
        assert_drop(&f, DropReason::TcpBadChecksum);
        let mut f = good.clone();
        f[L4_AT + 16] ^= 0xff;
        assert_drop(&f, DropReason::TcpBadChecksum);
        for (src_port, dst_port) in [(0, 80), (40_000, 0), (0, 0)] {
            let f = tcp_frame(&data_repr(src_port, dst_port, 5), b"hello");
            assert_drop(&f, DropReason::TcpPortZero);
        }
        // Broadcast and multicast destinations never reach TCP (RFC 1122 §4.2.3.10: a SYN
        // to one must be silently discarded), nor do martian sources.
        let segment = &good[L4_AT..];
        for dst in [
            Ipv4Addr::new(10, 0, 0, 255),
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(224, 0, 0, 1),
        ] {
            assert_drop(&ip_frame(6, PEER_IP, dst, segment), DropReason::IpNotForUs);
        }
        assert_drop(
            &ip_frame(6, Ipv4Addr::new(127, 0, 0, 1), OUR_IP, segment),
            DropReason::IpSrcLoopback,
        );
    }

    #[test]
    fn tcp_fragments_are_dropped() {
        // First fragment (MF), a middle one, the last one (offset, no MF): never reassembled.
        for flags in [0x2000u16, 0x2001, 0x00b9, 0x4000 | 0x0001] {
            let mut f = tcp_frame(&data_repr(40_000, 80, 16), &[0x55; 16]);
            f[IP_AT + 6..IP_AT + 8].copy_from_slice(&flags.to_be_bytes());
            refill_ip_checksum(&mut f);
            assert_drop(&f, DropReason::TcpFragment);
        }
    }

    /// Every reason in `DropReason::ALL` is provoked by at least one of the tests above.
    #[test]
    fn every_drop_reason_is_provoked() {
        ethernet_drops();
        arp_drops();
        ipv4_drops();
        icmp_drops();
        udp_drops();
        tcp_header_drops();
        tcp_malformed_options_are_dropped();
        tcp_checksum_port_and_address_drops();
        tcp_fragments_are_dropped();
        send_tcp_refusals_give_the_buffer_back();
        udp_ignores_ethernet_padding_and_counts_zero_and_partial_checksums();
        tx_queue_is_bounded();
        pending_queue_is_bounded();
        retry_then_give_up_frees_parked_frames();
        off_link_goes_via_gateway_and_no_gateway_is_no_route();
        pool_exhaustion_when_arp_request_needed();
        send_errors_give_the_buffer_back();
        martian_and_broadcast_destinations_are_refused();
        incomplete_datagrams_time_out();
        overlapping_fragments_abandon_the_whole_datagram();
        exact_duplicates_are_dropped_alone_and_never_delivered_twice();
        reassembly_table_is_bounded();
        oversized_and_over_fragmented_datagrams_are_refused();
        let seen = SEEN.with(|seen| seen.borrow().clone());
        let missing: Vec<DropReason> = DropReason::ALL
            .into_iter()
            .filter(|r| !seen.contains(r))
            .collect();
        assert!(missing.is_empty(), "no test provokes {missing:?}");
    }

    // ----- fuzz body and properties -----

    #[test]
    fn fuzz_body_runs_golden_frames() {
        for frame in [ARP_REQUEST, ICMP_REQUEST, UDP_REQUEST, ARP_REPLY] {
            // All flag combinations; with FLAG_FRAGMENTS the frame's bytes are read as a
            // fragment program instead.
            for flags in 0..16u8 {
                let mut input = vec![flags];
                input.extend_from_slice(&hex(frame));
                crate::fuzz::frame_input(&input);
            }
        }
        // TCP: every option a SYN carries, a data segment with timestamps and SACK, a bare
        // ACK padded to the Ethernet minimum; echoed back (FLAG_ECHO) and not.
        let mut padded = tcp_frame(&ack_repr(40_000, 7), &[]);
        padded.resize(60, 0);
        for frame in [
            tcp_frame(&syn_repr(40_000, 7), &[]),
            tcp_frame(&data_repr(40_000, 7, 100), &[0x42; 100]),
            padded,
        ] {
            for flags in 0..8u8 {
                let mut input = vec![flags];
                input.extend_from_slice(&frame);
                crate::fuzz::frame_input(&input);
            }
        }
        crate::fuzz::frame_input(&[]);
    }

    /// The fuzz body turns a TCP segment around in its own buffer: it leaves as a valid
    /// segment to the peer with the ports swapped.
    #[test]
    fn fuzz_body_echoes_tcp_segments() {
        // `frame_input` checks for leaks; this checks what it sent, through the same steps.
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let data = [0x42; 100];
        let seg = rx_tcp(
            &mut iface,
            &mut pool,
            0,
            &tcp_frame(&data_repr(40_000, 7, 100), &data),
        );
        let reply = tcp::Repr {
            src_port: seg.repr.dst_port,
            dst_port: seg.repr.src_port,
            ..seg.repr
        };
        iface
            .send_tcp(0, &mut pool, seg.data, seg.from, &reply)
            .unwrap();
        let sent = tx_all(&mut iface, &mut pool);
        let (parsed, got) = parse_sent_tcp(&sent[0]);
        assert_eq!(parsed, reply);
        assert_eq!(got, data);
        assert_no_leak(iface, pool);
    }

    proptest! {
        #[test]
        fn fuzz_body_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            crate::fuzz::frame_input(&data);
        }

        #[test]
        fn fuzz_body_on_mutated_valid_frames(
            which in 0usize..5,
            flags in 0u8..8,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in proptest::option::of(0usize..120),
        ) {
            let mut frame = match which {
                0..=2 => hex([ARP_REQUEST, ICMP_REQUEST, UDP_REQUEST][which]),
                3 => tcp_frame(&syn_repr(40_000, 7), &[]),
                _ => tcp_frame(&data_repr(40_000, 7, 20), &[0x42; 20]),
            };
            for (at, value) in edits {
                let at = at % frame.len();
                frame[at] = value;
            }
            if let Some(cut) = cut {
                frame.truncate(cut.min(frame.len()));
            }
            let mut input = vec![flags];
            input.extend_from_slice(&frame);
            crate::fuzz::frame_input(&input);
        }

        /// Any payload sent to the peer comes out as a frame our own receive path accepts
        /// with a valid checksum, and is delivered back intact.
        #[test]
        fn sent_frames_parse_back(data in proptest::collection::vec(any::<u8>(), 0..1472), port in 1u16..) {
            let (mut iface, mut pool) = world();
            learn_peer(&mut iface, &mut pool, 0);
            let buf = payload(&mut pool, &data);
            iface.send_udp(0, &mut pool, buf.into(), port, SocketAddrV4::new(PEER_IP, 7)).unwrap();
            let mut frame = tx_all(&mut iface, &mut pool).pop().unwrap();
            // Turn it around as if the peer had sent it to us.
            frame[..6].copy_from_slice(&OUR_MAC.0);
            frame[IP_AT + 12..IP_AT + 20].copy_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
            // Swapping the two addresses changes neither checksum (the sums commute).
            let d = rx(&mut iface, &mut pool, 0, &frame).unwrap();
            prop_assert_eq!(bytes(&pool, &d.data), &data[..]);
            prop_assert_eq!(d.from, SocketAddrV4::new(PEER_IP, port));
            prop_assert_eq!(iface.counters().udp_checksum_zero, 0);
            pool.free_chain(d.data);
            assert_no_leak(iface, pool);
        }
    }

    proptest! {
        /// Any segment sent to the peer, whatever its options and data, comes out as a frame
        /// our own receive path accepts with a valid checksum, and is delivered back with the
        /// same header (less SACK blocks that did not fit) and data.
        #[test]
        fn sent_tcp_segments_parse_back(
            data in proptest::collection::vec(any::<u8>(), 0..1400),
            ports in (1u16.., 1u16..),
            seq in any::<u32>(),
            ack in proptest::option::of(any::<u32>()),
            flags in any::<u8>(),
            window_len in any::<u16>(),
            mss in proptest::option::of(any::<u16>()),
            window_scale in proptest::option::of(0u8..=tcp::WINDOW_SCALE_MAX),
            sack_permitted in any::<bool>(),
            sack in proptest::collection::vec(any::<(u32, u32)>(), 0..=tcp::SACK_BLOCKS_MAX),
            timestamps in proptest::option::of((any::<u32>(), any::<u32>())),
        ) {
            let (mut iface, mut pool) = tcp_world();
            learn_peer(&mut iface, &mut pool, 0);
            let mut sack_ranges = [(0, 0); tcp::SACK_BLOCKS_MAX];
            sack_ranges[..sack.len()].copy_from_slice(&sack);
            let mut repr = tcp::Repr {
                src_port: ports.0,
                dst_port: ports.1,
                seq,
                ack,
                flags: tcp::Flags::from_bits(flags).difference(tcp::Flags::ACK),
                window_len,
                max_seg_size: mss,
                window_scale,
                sack_permitted,
                sack_ranges,
                sack_count: sack.len(),
                timestamps,
                payload_len: data.len(),
            };
            let max = iface.tcp_payload_len_max(repr.options_len());
            let data = &data[..data.len().min(max)];
            repr.payload_len = data.len();
            let buf = payload(&mut pool, data);
            let to = SocketAddrV4::new(PEER_IP, ports.1);
            iface.send_tcp(0, &mut pool, buf, to, &repr).unwrap();
            let mut frame = tx_all(&mut iface, &mut pool).pop().unwrap();
            let (parsed, got) = parse_sent_tcp(&frame);
            prop_assert_eq!(&got[..], data);
            // Turn it around as if the peer had sent it to us; the sums commute.
            frame[..6].copy_from_slice(&OUR_MAC.0);
            frame[IP_AT + 12..IP_AT + 20].copy_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
            let seg = rx_tcp(&mut iface, &mut pool, 0, &frame);
            prop_assert_eq!(pool.data(&seg.data), data);
            prop_assert_eq!(seg.repr, parsed);
            let mut expected = repr;
            expected.sack_count = repr.sack_count_emitted();
            expected.sack_ranges[expected.sack_count..].fill((0, 0));
            prop_assert_eq!(parsed, expected);
            // A valid sum that happens to equal the pseudo-header sum (about one segment in
            // 65,536; the saved regression case is one) is counted as partial, and nothing else.
            let segment_len = (frame.len() - L4_AT) as u16;
            let pseudo = checksum::pseudo_header_v4(PEER_IP, OUR_IP, 6, segment_len);
            let field = u16::from_be_bytes([frame[L4_AT + 16], frame[L4_AT + 17]]);
            prop_assert_eq!(iface.counters().tcp_checksum_partial, u64::from(field == pseudo));
            pool.free(seg.data);
            assert_no_leak(iface, pool);
        }
    }

    // ----- cost of the echo path -----

    /// Times handle_frame + send_udp + poll_transmit for a 64-byte UDP echo. Run with
    /// `cargo test --release -p melange-net -- --ignored --nocapture echo_path_cost`.
    #[test]
    #[ignore = "timing; run in release"]
    fn echo_path_cost() {
        let (mut iface, mut pool) = world();
        learn_peer(&mut iface, &mut pool, 0);
        let request = hex(UDP_REQUEST);
        let rounds = 2_000_000u32;
        let mut frame = pool.alloc_frame().unwrap();
        let index = frame.index();
        pool.frame_mut(&frame)[..request.len()].copy_from_slice(&request);
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            // The NIC would DMA the frame; here it is written once and re-armed each round.
            pool.set_window(&mut frame, 0, request.len()).unwrap();
            let Some(Received::Udp(d)) = iface.handle_frame(1, &mut pool, frame) else {
                panic!("the request is delivered");
            };
            iface
                .send_udp(1, &mut pool, d.data, d.local_port, d.from)
                .unwrap();
            frame = iface.poll_transmit().unwrap();
            // The reply overwrote the request's headers; restore them for the next round.
            pool.frame_mut(&frame)[..L4_AT + 8].copy_from_slice(&request[..L4_AT + 8]);
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(rounds);
        println!("echo path: {ns:.1} ns per request");
        assert_eq!(frame.index(), index);
        pool.free(frame);
        assert_eq!(iface.counters().udp_rx, u64::from(rounds));
        if !cfg!(debug_assertions) {
            assert!(ns < 150.0, "echo path costs {ns:.1} ns");
        }
        assert_no_leak(iface, pool);
    }
}
