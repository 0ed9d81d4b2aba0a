//! The sans-IO core of one Ethernet/IPv4 interface: ARP, IPv4 receive, ICMP echo, UDP.
//!
//! # Design
//!
//! [`Interface`] owns no memory for packets: frames live in the engine's [`PacketPool`] and
//! move through the core as [`PacketBuf`] handles. A received frame is parsed in place and
//! then has exactly one fate: it is returned as a [`Datagram`] (its window narrowed to the
//! UDP payload, zero-copy), rewritten in place into a reply and queued (ARP reply, ICMP echo
//! reply), or freed and counted under one [`DropReason`]. A datagram the application sends
//! gets its UDP, IPv4 and Ethernet headers written into the headroom in front of its payload,
//! so an echo server returns the very buffer it was given with no copy.
//!
//! The core makes no system calls and reads no clock (`now_ns` is an argument), so the
//! engine, the simulator and the fuzzers all drive the same code. Every table and queue is
//! allocated in [`Interface::new`] to its configured `*_max` and never grows.
//!
//! # Receive checks (RFC 791, RFC 1122)
//!
//! Only frames to our MAC (or, for ARP, to broadcast) from an individual source MAC are looked
//! at; IPv4 to the broadcast MAC is refused because we accept no IPv4 broadcast destination
//! (RFC 1122 §3.3.6). IPv4 datagrams must have version 4,
//! a valid IHL, a total length inside the frame (Ethernet padding beyond it is ignored), a
//! correct header checksum, no options, not be a fragment (we do not reassemble), be
//! addressed to our unicast address and come from a unicast source. Each failure is counted
//! under its own reason.
//!
//! # UDP checksum policy (RFC 768)
//!
//! Received checksums are classified by [`melange_wire::udp::checksum_status`]:
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
//! # ARP (RFC 826)
//!
//! The cache is a fixed open-addressing table (see `arp_cache`). A send to a next hop with
//! no fresh entry parks the frame in one bounded queue shared by all next hops
//! (`pending_max`), records the next hop as *resolving* and broadcasts a request; the request
//! is repeated every `request_retry_ns` up to `request_retries_max` times, after which the
//! parked frames are freed and counted as `ArpUnresolved`. When the answer arrives the
//! parked frames for that next hop are released to the transmit queue in the order they were
//! sent. Entries expire after `entry_ttl_ns`; an expired entry is a miss, so the next send
//! resolves it again. Expiry is lazy, so [`Interface::poll_at`] reports only retry deadlines:
//! there is nothing to do at the moment an entry expires.
//!
//! Alternative rejected: a per-next-hop queue of parked frames. It needs either allocation
//! or `entries_max × per-hop bound` preallocated slots, while one shared queue of
//! `pending_max` frames bounds memory directly and keeps release order trivially correct.

use crate::arp_cache::{ArpCache, Refresh};
use crate::config::{ConfigError, InterfaceConfig};
use crate::counters::{DropReason, NetCounters};
use crate::ports::{BindError, PortTable};
use melange_core::pool::{PacketBuf, PacketPool, TxDropped};
use melange_wire::{arp, checksum, ethernet, icmpv4, ipv4, udp, EtherType, EthernetAddress};
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use thiserror::Error;

/// Bytes of headers `send_udp` writes in front of a payload: Ethernet, IPv4, UDP.
pub const HEADERS_LEN: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN;
const _: () = assert!(HEADERS_LEN == melange_core::pool::PoolConfig::HEADROOM_MIN);

/// Offset of the IPv4 header in a frame.
const IP_AT: usize = ethernet::HEADER_LEN;
/// Offset of the transport header in a frame whose IPv4 header has no options.
const L4_AT: usize = IP_AT + ipv4::HEADER_LEN;
/// Length of an ARP frame without padding.
const ARP_FRAME_LEN: usize = ethernet::HEADER_LEN + arp::PACKET_LEN;

/// TTL of datagrams we originate (RFC 1700 / RFC 1122 §3.2.1.7 recommend 64).
pub const TTL: u8 = 64;

/// A UDP datagram received for a bound port. The application owns `buf` (window = the UDP
/// payload) and must send it or free it to the pool.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a Datagram holds a PacketBuf that must be sent or freed"]
pub struct Datagram {
    /// The payload.
    pub buf: PacketBuf,
    /// Sender address and port.
    pub from: SocketAddrV4,
    /// Our port it was sent to.
    pub local_port: u16,
}

/// Why `send_udp` refused a datagram. In every case the buffer has already been freed to
/// the pool and the drop counted under [`SendError::reason`].
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The payload buffer has less than [`HEADERS_LEN`] bytes of headroom; allocate payload
    /// buffers with `PacketPool::alloc` (which leaves the configured headroom).
    #[error("payload has {headroom} bytes of headroom, {HEADERS_LEN} needed")]
    NoHeadroom {
        /// Headroom the buffer had.
        headroom: usize,
    },
    /// The payload exceeds the MTU less 28 bytes of headers; send less per datagram.
    #[error("payload of {len} bytes exceeds {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// Largest payload.
        max: usize,
    },
    /// No route to the destination: it is off-link and no gateway is configured, or it is
    /// unspecified, multicast or our own address. Fix the destination or configure a gateway.
    #[error("no route to {0}")]
    NoRoute(Ipv4Addr),
    /// The transmit queue is full; poll transmissions more often or retry later.
    #[error("transmit queue full")]
    TxQueueFull,
    /// The frame had to wait for ARP but the pending queue is full; retry later.
    #[error("ARP pending queue full")]
    ArpPendingFull,
}

impl SendError {
    /// The drop reason this error was counted under.
    pub const fn reason(&self) -> DropReason {
        match self {
            SendError::NoHeadroom { .. } => DropReason::TxNoHeadroom,
            SendError::PayloadTooLarge { .. } => DropReason::PayloadTooLarge,
            SendError::NoRoute(_) => DropReason::NoRoute,
            SendError::TxQueueFull => DropReason::TxQueueFull,
            SendError::ArpPendingFull => DropReason::ArpPendingFull,
        }
    }
}

/// A frame waiting for its next hop's MAC address.
#[derive(Debug)]
struct Parked {
    next_hop: u32,
    buf: PacketBuf,
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
    ArpReply,
    EchoReply {
        len: usize,
    },
    Consumed,
}

/// Where a datagram goes on the link.
enum NextHop {
    Broadcast,
    Unicast(u32),
}

/// The network core of one Ethernet/IPv4 interface. See the module documentation.
///
/// # Call order
///
/// Each turn of the engine's loop, with the same `now_ns` for the whole turn:
///
/// 1. [`handle_frame`](Self::handle_frame) for every received frame; the returned datagrams
///    go to the application.
/// 2. [`send_udp`](Self::send_udp) for every datagram the application sends.
/// 3. [`handle_timeout`](Self::handle_timeout) if `now_ns >= poll_at()`.
/// 4. [`poll_transmit`](Self::poll_transmit) until it returns `None`, handing each frame to
///    the NIC (which frees it to the pool once sent).
///
/// Any other order is also safe (nothing panics or leaks); this one gives the lowest
/// latency. At shutdown call [`drain`](Self::drain) so every frame returns to the pool.
#[derive(Debug)]
pub struct Interface {
    config: InterfaceConfig,
    ip_u32: u32,
    ports: PortTable,
    arp: ArpCache,
    /// Next hops being resolved; at most `arp.pending_max` (each has a parked frame).
    resolving: Vec<Resolving>,
    /// Frames waiting for ARP, in send order; at most `arp.pending_max`.
    pending: VecDeque<Parked>,
    /// Frames ready to transmit; at most `tx_queue_max`.
    tx: VecDeque<PacketBuf>,
    /// IPv4 identification of the next datagram we send.
    ident_next: u16,
    counters: NetCounters,
}

impl Interface {
    /// Validates `config` and preallocates every table and queue.
    pub fn new(config: InterfaceConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Interface {
            ip_u32: u32::from(config.ipv4),
            ports: PortTable::new(),
            arp: ArpCache::new(config.arp.entries_max),
            resolving: Vec::with_capacity(config.arp.pending_max),
            pending: VecDeque::with_capacity(config.arp.pending_max),
            tx: VecDeque::with_capacity(config.tx_queue_max),
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

    /// Adds a static entry: it never expires, is never evicted, and ARP traffic never
    /// overwrites it. For a control plane that resolved the next hop itself, through the
    /// kernel's neighbour table say. Nothing is installed when the cache is full of static
    /// entries.
    pub fn add_static_arp(&mut self, pool: &mut PacketPool, ip: Ipv4Addr, mac: EthernetAddress) {
        let ip_u32 = u32::from(ip);
        if self.arp.pin(ip_u32, mac) {
            self.release_parked(pool, ip_u32, mac);
        }
    }

    /// Refreshes the cache from a delivered datagram's source (see
    /// [`InterfaceConfig::learn_from_ip`]). The common case, a fresh entry with the same MAC,
    /// costs one lookup.
    fn learn_from_ip(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        src: Ipv4Addr,
        mac: EthernetAddress,
    ) {
        if !mac.is_unicast() || !self.config.is_on_link(src) {
            return;
        }
        let ip_u32 = u32::from(src);
        if self.arp.lookup(ip_u32, now_ns) == Some(mac) {
            return;
        }
        let expires_at_ns = now_ns.saturating_add(self.config.arp.entry_ttl_ns);
        if self.arp.refresh(ip_u32, mac, expires_at_ns) == Refresh::Absent {
            self.arp.insert(ip_u32, mac, expires_at_ns);
        }
        self.release_parked(pool, ip_u32, mac);
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
    /// Returns the datagram if it is UDP for a bound port (window advanced to the UDP
    /// payload); otherwise the frame is consumed: dropped and counted by reason, or turned
    /// in place into a reply that is queued for transmission (ARP reply, ICMP echo reply).
    pub fn handle_frame(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        mut frame: PacketBuf,
    ) -> Option<Datagram> {
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len() as u64;
        let (rx, learned) = self.receive(now_ns, pool.data_mut(&frame));
        match rx {
            Rx::Deliver {
                from,
                local_port,
                offset,
                len,
            } => {
                if self.config.learn_from_ip {
                    let data = pool.data(&frame);
                    let src_mac =
                        EthernetAddress([data[6], data[7], data[8], data[9], data[10], data[11]]);
                    self.learn_from_ip(now_ns, pool, *from.ip(), src_mac);
                }
                // `receive` checked `offset + len` lies inside the window.
                frame.advance(offset);
                frame.truncate(len);
                self.counters.udp_rx += 1;
                debug_assert!(learned.is_none());
                return Some(Datagram {
                    buf: frame,
                    from,
                    local_port,
                });
            }
            Rx::Drop(reason) => {
                self.counters.count_drop(reason);
                pool.free(frame);
            }
            Rx::ArpReply => {
                frame.truncate(ARP_FRAME_LEN);
                if self.enqueue_tx(pool, frame) {
                    self.counters.arp_replies_sent += 1;
                }
            }
            Rx::EchoReply { len } => {
                frame.truncate(len);
                if self.enqueue_tx(pool, frame) {
                    self.counters.icmp_echo_replies += 1;
                }
            }
            Rx::Consumed => pool.free(frame),
        }
        if let Some((ip, mac)) = learned {
            self.release_parked(pool, ip, mac);
        }
        None
    }

    /// Sends a UDP datagram whose payload is `payload`'s window (needs >= 42 bytes of
    /// headroom in front). Writes UDP/IPv4/Ethernet headers in place in front of the payload
    /// (full UDP checksum), and queues the frame for transmission, or parks it (bounded)
    /// while ARP resolves the next hop. On error the drop is counted and the buffer comes
    /// back with the error, its window as it was given.
    pub fn send_udp(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        mut payload: PacketBuf,
        src_port: u16,
        dst: SocketAddrV4,
    ) -> Result<(), (SendError, PacketBuf)> {
        let len = payload.len();
        let headroom = payload.start();
        if headroom < HEADERS_LEN {
            return self.refuse(payload, SendError::NoHeadroom { headroom });
        }
        let max = usize::from(self.config.mtu) - ipv4::HEADER_LEN - udp::HEADER_LEN;
        if len > max {
            return self.refuse(payload, SendError::PayloadTooLarge { len, max });
        }
        let dst_ip = *dst.ip();
        // `Ok(mac)` when the link address is known, `Err(next_hop)` when it must be resolved.
        let resolved = match self.next_hop(dst_ip) {
            None => return self.refuse(payload, SendError::NoRoute(dst_ip)),
            Some(NextHop::Broadcast) => Ok(EthernetAddress::BROADCAST),
            Some(NextHop::Unicast(ip)) => self.arp.lookup(ip, now_ns).ok_or(ip),
        };
        payload.prepend(HEADERS_LEN);
        let ident = self.ident_next;
        self.ident_next = ident.wrapping_add(1);
        let dst_mac = resolved.unwrap_or_default();
        self.write_udp_headers(
            pool.data_mut(&payload),
            dst_mac,
            dst_ip,
            src_port,
            dst.port(),
            len,
            ident,
        );
        match resolved {
            Ok(_) => {
                if self.tx.len() >= self.config.tx_queue_max {
                    payload.advance(HEADERS_LEN);
                    return self.refuse(payload, SendError::TxQueueFull);
                }
                self.tx.push_back(payload);
                self.counters.udp_tx += 1;
                Ok(())
            }
            Err(next_hop) => {
                self.park(now_ns, pool, next_hop, payload)
                    .map_err(|(error, mut buf)| {
                        buf.advance(HEADERS_LEN);
                        (error, buf)
                    })
            }
        }
    }

    /// Next frame to transmit (window = whole frame): ARP requests/replies, ICMP replies,
    /// UDP.
    pub fn poll_transmit(&mut self) -> Option<PacketBuf> {
        let buf = self.tx.pop_front()?;
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += buf.len() as u64;
        Some(buf)
    }

    /// Earliest time `handle_timeout` has work (an ARP retry or give-up), if any. Entry
    /// expiry needs no timer (see the module documentation).
    pub fn poll_at(&self) -> Option<u64> {
        self.resolving.iter().map(|r| r.next_retry_ns).min()
    }

    /// Sends due ARP retries and gives up on next hops that used all their retries,
    /// freeing their parked frames (counted as `ArpUnresolved`).
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
    }

    /// Frees every parked and queued frame back to the pool (engine shutdown; tests check
    /// no leak). Nothing is counted as dropped.
    pub fn drain(&mut self, pool: &mut PacketPool) {
        while let Some(parked) = self.pending.pop_front() {
            pool.free(parked.buf);
        }
        self.resolving.clear();
        while let Some(buf) = self.tx.pop_front() {
            pool.free(buf);
        }
    }

    // ----- receive -----

    /// Parses a frame in place and decides its fate; returns the sender learned by ARP, if
    /// any, so parked frames can be released once the frame's borrow ends.
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
        // replies into broadcasts.
        if eth.src_addr().is_multicast() {
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
        // RFC 791 §3.2 "Fragmentation and Reassembly": we do not reassemble.
        if ip.is_fragment() {
            return Rx::Drop(DropReason::IpFragment);
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if dst != self.config.ipv4 {
            return Rx::Drop(DropReason::IpNotForUs);
        }
        // RFC 1122 §3.2.1.3: discard datagrams whose source is not a unicast address.
        if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
            return Rx::Drop(DropReason::IpBadSource);
        }
        // No options, so the transport header starts at L4_AT; ip_end excludes padding.
        let ip_end = IP_AT + usize::from(ip.total_len());
        match ip.protocol() {
            ipv4::Protocol::Udp => self.receive_udp(&frame[..ip_end], src, dst),
            ipv4::Protocol::Icmp => self.receive_icmp(&mut frame[..ip_end]),
            ipv4::Protocol::Tcp | ipv4::Protocol::Unknown(_) => {
                Rx::Drop(DropReason::IpUnknownProtocol)
            }
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
        match udp::checksum_status(&udp, src, dst) {
            udp::ChecksumStatus::Valid => {}
            udp::ChecksumStatus::Zero => self.counters.udp_checksum_zero += 1,
            udp::ChecksumStatus::Partial if self.config.accept_partial_udp_checksum => {
                self.counters.udp_checksum_partial += 1
            }
            udp::ChecksumStatus::Partial | udp::ChecksumStatus::Invalid => {
                return Rx::Drop(DropReason::UdpBadChecksum)
            }
        }
        Rx::Deliver {
            from: SocketAddrV4::new(src, udp.src_port()),
            local_port,
            offset: L4_AT + udp::HEADER_LEN,
            len: usize::from(udp.len()) - udp::HEADER_LEN,
        }
    }

    /// Answers an echo request in place; `frame` ends where the IPv4 datagram ends.
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
        let mut eth = ethernet::Packet::new_unchecked(&mut *frame);
        let peer_mac = eth.src_addr();
        eth.set_dst_addr(peer_mac);
        eth.set_src_addr(self.config.mac);
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
        Rx::EchoReply { len }
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
        let spa_u32 = u32::from(spa);
        // A sender of 0.0.0.0 is an RFC 5227 probe, and a sender claiming our address is a
        // conflict: neither is learned.
        let learnable = !spa.is_unspecified()
            && spa_u32 != self.ip_u32
            && !spa.is_broadcast()
            && !spa.is_multicast();
        let expires_at_ns = now_ns.saturating_add(self.config.arp.entry_ttl_ns);
        // RFC 826 "Packet Reception": if the sender is already in the table, update it
        // (merge), whoever the target is.
        let merged = learnable && self.arp.refresh(spa_u32, sha, expires_at_ns) != Refresh::Absent;
        // RFC 826: "Am I the target protocol address?"
        if repr.target_protocol_addr != self.config.ipv4 {
            return (
                Rx::Drop(DropReason::ArpNotForUs),
                merged.then_some((spa_u32, sha)),
            );
        }
        // RFC 826: if not merged, add the sender to the table.
        if learnable && !merged {
            self.arp.insert(spa_u32, sha, expires_at_ns);
        }
        let learned = learnable.then_some((spa_u32, sha));
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

    /// Where a datagram to `dst` goes on the link, or `None` without a route.
    fn next_hop(&self, dst: Ipv4Addr) -> Option<NextHop> {
        if dst.is_broadcast() {
            return Some(NextHop::Broadcast);
        }
        if dst.is_unspecified() || dst.is_multicast() || dst == self.config.ipv4 {
            return None;
        }
        let d = u32::from(dst);
        let mask = self.config.netmask();
        if self.config.is_on_link(dst) {
            // RFC 922: the all-ones host part is the subnet's directed broadcast (not for
            // /31 and /32, which have no broadcast address, RFC 3021).
            if self.config.prefix_len <= 30 && d | mask == u32::MAX {
                return Some(NextHop::Broadcast);
            }
            return Some(NextHop::Unicast(d));
        }
        self.config.gateway.map(|g| NextHop::Unicast(u32::from(g)))
    }

    /// Writes Ethernet, IPv4 and UDP headers in front of `payload_len` bytes already in
    /// place; `frame` is exactly `HEADERS_LEN + payload_len` bytes.
    #[allow(clippy::too_many_arguments)]
    fn write_udp_headers(
        &self,
        frame: &mut [u8],
        dst_mac: EthernetAddress,
        dst_ip: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
        payload_len: usize,
        ident: u16,
    ) {
        debug_assert_eq!(frame.len(), HEADERS_LEN + payload_len);
        let src_ip = self.config.ipv4;
        ethernet::Repr {
            src_addr: self.config.mac,
            dst_addr: dst_mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut ethernet::Packet::new_unchecked(&mut *frame));
        // RFC 791 §3.1; TTL 64 and DF set: we send no fragments and rely on PMTU discovery.
        ipv4::Repr {
            src_addr: src_ip,
            dst_addr: dst_ip,
            protocol: ipv4::Protocol::Udp,
            payload_len: udp::HEADER_LEN + payload_len,
            ttl: TTL,
            ident,
            dont_frag: true,
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut frame[IP_AT..]));
        // RFC 768: full checksum over pseudo-header, header and data, always.
        udp::Repr {
            src_port,
            dst_port,
            payload_len,
        }
        .emit(
            &mut udp::Packet::new_unchecked(&mut frame[L4_AT..]),
            src_ip,
            dst_ip,
        );
    }

    /// Parks a frame until `next_hop` resolves, starting resolution if needed.
    fn park(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        next_hop: u32,
        buf: PacketBuf,
    ) -> Result<(), (SendError, PacketBuf)> {
        if self.pending.len() >= self.config.arp.pending_max {
            return self.refuse(buf, SendError::ArpPendingFull);
        }
        if !self.resolving.iter().any(|r| r.ip == next_hop) {
            // Every resolving next hop has at least one parked frame, so this cannot
            // exceed `pending_max` while `pending` has room.
            debug_assert!(self.resolving.len() < self.config.arp.pending_max);
            self.resolving.push(Resolving {
                ip: next_hop,
                next_retry_ns: now_ns.saturating_add(self.config.arp.request_retry_ns),
                retries_left: self.config.arp.request_retries_max,
            });
            self.send_arp_request(pool, next_hop);
        }
        self.pending.push_back(Parked { next_hop, buf });
        Ok(())
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
                        self.counters.udp_tx += 1;
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
    fn refuse(&mut self, buf: PacketBuf, error: SendError) -> Result<(), (SendError, PacketBuf)> {
        self.counters.count_drop(error.reason());
        Err((error, buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use melange_core::pool::PoolConfig;

    /// The error of a refused send, after checking the buffer came back with its payload
    /// window and returning it to the pool.
    fn refused(pool: &mut PacketPool, result: Result<(), (SendError, PacketBuf)>) -> SendError {
        let (error, buf) = result.expect_err("the send was refused");
        assert!(buf.start() >= HEADERS_LEN || matches!(error, SendError::NoHeadroom { .. }));
        pool.free(buf);
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
        let mut iface = Interface::new(config).unwrap();
        iface.bind_udp(7).unwrap();
        (iface, pool())
    }

    fn world() -> (Interface, PacketPool) {
        world_with(config())
    }

    /// Hands `bytes` to the interface as a received frame.
    fn rx(
        iface: &mut Interface,
        pool: &mut PacketPool,
        now_ns: u64,
        bytes: &[u8],
    ) -> Option<Datagram> {
        let mut frame = pool.alloc_frame().expect("test pool has room");
        pool.set_len(&mut frame, bytes.len()).unwrap();
        pool.data_mut(&frame).copy_from_slice(bytes);
        iface.handle_frame(now_ns, pool, frame)
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
        assert_eq!(pool.data(&d.buf), &hex(UDP_REQUEST)[L4_AT + 8..]);
        assert_eq!(d.buf.start(), HEADERS_LEN);
        iface
            .send_udp(2, &mut pool, d.buf, d.local_port, d.from)
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
        assert_eq!(pool.data(&d.buf), b"hi");
        pool.free(d.buf);
        // Zero checksum: accepted and counted (RFC 768).
        let mut zero = udp_frame(PEER_IP, 5000, 7, b"zero");
        zero[L4_AT + 6..L4_AT + 8].copy_from_slice(&[0, 0]);
        let d = rx(&mut iface, &mut pool, 0, &zero).unwrap();
        pool.free(d.buf);
        assert_eq!(iface.counters().udp_checksum_zero, 1);
        // Partial checksum as left by veth TX offload: accepted by default.
        let mut partial = udp_frame(PEER_IP, 5000, 7, b"partial");
        let pseudo = checksum::pseudo_header_v4(PEER_IP, OUR_IP, 17, 15);
        partial[L4_AT + 6..L4_AT + 8].copy_from_slice(&pseudo.to_be_bytes());
        let d = rx(&mut iface, &mut pool, 0, &partial).unwrap();
        pool.free(d.buf);
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
    fn learns_on_link_senders_from_ipv4_unless_told_not_to() {
        // Learning on: a reply to a sender never seen in ARP goes out at once.
        let (mut iface, mut pool) = world();
        let d = rx(
            &mut iface,
            &mut pool,
            0,
            &udp_frame(PEER_IP, 5000, 7, b"hi"),
        )
        .unwrap();
        iface.send_udp(1, &mut pool, d.buf, 7, d.from).unwrap();
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(sent.len(), 1);
        assert_eq!(
            &sent[0][12..14],
            &[0x08, 0x00],
            "the reply itself, no ARP request"
        );
        assert_eq!(&sent[0][0..6], PEER_MAC.as_bytes());
        assert_eq!(iface.counters().arp_requests_sent, 0);
        assert_no_leak(iface, pool);
        // Learning off: the same reply waits for ARP.
        let mut strict = config();
        strict.learn_from_ip = false;
        let (mut iface, mut pool) = world_with(strict);
        let d = rx(
            &mut iface,
            &mut pool,
            0,
            &udp_frame(PEER_IP, 5000, 7, b"hi"),
        )
        .unwrap();
        iface.send_udp(1, &mut pool, d.buf, 7, d.from).unwrap();
        let sent = tx_all(&mut iface, &mut pool);
        assert_eq!(&sent[0][12..14], &[0x08, 0x06], "an ARP request");
        assert_eq!(iface.pending_len(), 1);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn static_arp_entries_release_parked_frames_and_do_not_expire() {
        let (mut iface, mut pool) = world();
        let to = SocketAddrV4::new(PEER_IP, 9);
        let buf = payload(&mut pool, b"parked");
        iface.send_udp(0, &mut pool, buf, 7, to).unwrap();
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
                .send_udp(0, &mut pool, buf, 7, SocketAddrV4::new(dst, 9))
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
                buf,
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
            buf,
            7,
            SocketAddrV4::new(Ipv4Addr::new(8, 8, 8, 8), 53),
        );
        assert_eq!(
            refused(&mut pool, err),
            SendError::NoRoute(Ipv4Addr::new(8, 8, 8, 8))
        );
        let buf = payload(&mut pool, b"x");
        let result = iface.send_udp(
            0,
            &mut pool,
            buf,
            7,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 53),
        );
        assert_eq!(
            refused(&mut pool, result),
            SendError::NoRoute(Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(iface.counters().drops(DropReason::NoRoute), 2);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn broadcast_needs_no_arp() {
        let (mut iface, mut pool) = world();
        for dst in [Ipv4Addr::BROADCAST, Ipv4Addr::new(10, 0, 0, 255)] {
            let buf = payload(&mut pool, b"b");
            iface
                .send_udp(0, &mut pool, buf, 7, SocketAddrV4::new(dst, 9))
                .unwrap();
        }
        let frames = tx_all(&mut iface, &mut pool);
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|f| f[..6] == [0xff; 6]));
        assert_no_leak(iface, pool);
    }

    #[test]
    fn retry_then_give_up_frees_parked_frames() {
        let (mut iface, mut pool) = world();
        for _ in 0..3 {
            let buf = payload(&mut pool, b"lost");
            iface
                .send_udp(0, &mut pool, buf, 7, SocketAddrV4::new(OTHER_IP, 9))
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
            .send_udp(ttl - 1, &mut pool, buf, 7, SocketAddrV4::new(PEER_IP, 9))
            .unwrap();
        assert_eq!(tx_all(&mut iface, &mut pool).len(), 1);
        assert_eq!(iface.pending_len(), 0);
        let buf = payload(&mut pool, b"stale");
        iface
            .send_udp(ttl, &mut pool, buf, 7, SocketAddrV4::new(PEER_IP, 9))
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
                .send_udp(0, &mut pool, buf, 7, SocketAddrV4::new(OTHER_IP, 9))
                .unwrap();
        }
        let buf = payload(&mut pool, b"p");
        let result = iface.send_udp(0, &mut pool, buf, 7, SocketAddrV4::new(OTHER_IP, 9));
        assert_eq!(refused(&mut pool, result), SendError::ArpPendingFull);
        let buf = payload(&mut pool, b"p");
        let result = iface.send_udp(0, &mut pool, buf, 7, SocketAddrV4::new(PEER_IP, 9));
        assert_eq!(refused(&mut pool, result), SendError::ArpPendingFull);
        assert_eq!(iface.pending_len(), pending_max);
        assert_eq!(iface.counters().drops(DropReason::ArpPendingFull), 2);
        assert_no_leak(iface, pool);
    }

    #[test]
    fn tx_queue_is_bounded() {
        let (mut iface, mut pool) = world();
        let tx_queue_max = iface.config().tx_queue_max;
        for _ in 0..tx_queue_max + 3 {
            assert!(rx(&mut iface, &mut pool, 0, &hex(ICMP_REQUEST)).is_none());
        }
        assert_eq!(iface.tx_len(), tx_queue_max);
        assert_eq!(iface.counters().drops(DropReason::TxQueueFull), 3);
        assert_eq!(iface.counters().icmp_echo_replies, tx_queue_max as u64);
        learn_peer(&mut iface, &mut pool, 0);
        let buf = payload(&mut pool, b"q");
        let result = iface.send_udp(0, &mut pool, buf, 7, SocketAddrV4::new(PEER_IP, 9));
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
            .send_udp(0, &mut pool, buf, 7, SocketAddrV4::new(OTHER_IP, 9))
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
        let big = payload(&mut pool, &[0u8; 1473]);
        let result = iface.send_udp(0, &mut pool, big, 7, to);
        assert_eq!(
            refused(&mut pool, result),
            SendError::PayloadTooLarge {
                len: 1473,
                max: 1472
            }
        );
        let fits = payload(&mut pool, &[0u8; 1472]);
        assert_eq!(iface.send_udp(0, &mut pool, fits, 7, to), Ok(()));
        let mut no_headroom = pool.alloc_frame().unwrap();
        pool.set_len(&mut no_headroom, 10).unwrap();
        let result = iface.send_udp(0, &mut pool, no_headroom, 7, to);
        assert_eq!(
            refused(&mut pool, result),
            SendError::NoHeadroom { headroom: 0 }
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
                .send_udp(0, &mut pool, buf, 7, SocketAddrV4::new(PEER_IP, 9))
                .unwrap();
        }
        let idents: Vec<u16> = tx_all(&mut iface, &mut pool)
            .iter()
            .map(|f| ipv4::Packet::new_checked(&f[IP_AT..]).unwrap().ident())
            .collect();
        assert_eq!(idents, vec![0, 1, 2]);
        assert_no_leak(iface, pool);
    }

    // ----- every drop reason provoked from bytes -----

    /// Feeds `frame` to a fresh world and asserts it was dropped for `reason` alone.
    fn assert_drop(frame: &[u8], reason: DropReason) {
        let (mut iface, mut pool) = world();
        assert!(
            rx(&mut iface, &mut pool, 0, frame).is_none(),
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
        for flags in [0x2000u16, 0x0001, 0x4000 | 0x00b9] {
            let mut f = good.clone();
            f[IP_AT + 6..IP_AT + 8].copy_from_slice(&flags.to_be_bytes());
            refill_ip_checksum(&mut f);
            assert_drop(&f, DropReason::IpFragment);
        }
        assert_drop(
            &ip_frame(17, PEER_IP, OTHER_IP, &good[L4_AT..]),
            DropReason::IpNotForUs,
        );
        assert_drop(
            &udp_frame(Ipv4Addr::BROADCAST, 1, 7, b"x"),
            DropReason::IpBadSource,
        );
        assert_drop(
            &udp_frame(Ipv4Addr::new(224, 0, 0, 1), 1, 7, b"x"),
            DropReason::IpBadSource,
        );
        assert_drop(
            &ip_frame(6, PEER_IP, OUR_IP, &[0u8; 20]),
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

    /// Every reason in `DropReason::ALL` is provoked by at least one of the tests above.
    #[test]
    fn every_drop_reason_is_provoked() {
        ethernet_drops();
        arp_drops();
        ipv4_drops();
        icmp_drops();
        udp_drops();
        udp_ignores_ethernet_padding_and_counts_zero_and_partial_checksums();
        tx_queue_is_bounded();
        pending_queue_is_bounded();
        retry_then_give_up_frees_parked_frames();
        off_link_goes_via_gateway_and_no_gateway_is_no_route();
        pool_exhaustion_when_arp_request_needed();
        send_errors_give_the_buffer_back();
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
            for flags in 0..8u8 {
                let mut input = vec![flags];
                input.extend_from_slice(&hex(frame));
                crate::fuzz::frame_input(&input);
            }
        }
        crate::fuzz::frame_input(&[]);
    }

    proptest! {
        #[test]
        fn fuzz_body_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            crate::fuzz::frame_input(&data);
        }

        #[test]
        fn fuzz_body_on_mutated_valid_frames(
            which in 0usize..3,
            flags in 0u8..8,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in proptest::option::of(0usize..120),
        ) {
            let mut frame = hex([ARP_REQUEST, ICMP_REQUEST, UDP_REQUEST][which]);
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
            iface.send_udp(0, &mut pool, buf, port, SocketAddrV4::new(PEER_IP, 7)).unwrap();
            let mut frame = tx_all(&mut iface, &mut pool).pop().unwrap();
            // Turn it around as if the peer had sent it to us.
            frame[..6].copy_from_slice(&OUR_MAC.0);
            frame[IP_AT + 12..IP_AT + 20].copy_from_slice(&[10, 0, 0, 2, 10, 0, 0, 1]);
            // Swapping the two addresses changes neither checksum (the sums commute).
            let d = rx(&mut iface, &mut pool, 0, &frame).unwrap();
            prop_assert_eq!(pool.data(&d.buf), &data[..]);
            prop_assert_eq!(d.from, SocketAddrV4::new(PEER_IP, port));
            prop_assert_eq!(iface.counters().udp_checksum_zero, 0);
            pool.free(d.buf);
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
            let d = iface.handle_frame(1, &mut pool, frame).unwrap();
            iface
                .send_udp(1, &mut pool, d.buf, d.local_port, d.from)
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
