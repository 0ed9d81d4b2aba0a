//! The XDP program of Melange's control plane and the layout of its maps.
//!
//! # Design
//!
//! Arrakis gives each application a virtual NIC guarded by hardware filters created with
//! `create_filter(flags, peers, services)`. On Linux the "hardware" is one XDP program per
//! interface (the kernel here has no `ext` programs, so no libxdp dispatcher and no program per
//! filter): the program is fixed, and filters are *data* in its maps. Adding or removing a
//! filter is a few map writes, never a program reload, and the program's cost does not grow
//! with the number of filters.
//!
//! Per packet, the program does:
//!
//! 1. Ethernet: ARP goes to the kernel or to a fixed slot ([`FilterProgramSpec::arp`]); any
//!    other ethertype but IPv4 (802.1Q tags, IPv6, ...) goes to the kernel.
//! 2. IPv4: version 4 and IHL >= 5 or the frame is malformed; options are skipped using IHL.
//!    A fragment (MF set or non-zero offset) goes to the slot the `fragments` map names for
//!    its destination address and protocol, and without an entry to the kernel, which
//!    reassembles it (RFC 791 section 3.2); see "Fragments" below. UDP and TCP continue; any
//!    other protocol (ICMP, ...) goes where [`FilterProgramSpec::other_ipv4`] says.
//! 3. Service lookup: the `services` ARRAY has [`SERVICES_LEN`] `u32` entries indexed by
//!    [`service_index`]`(protocol, destination port)`. An entry ([`service_value`]) holds the
//!    port's *any-peer* filter as `filter_id + 1` (0 for none) and the bit
//!    [`SERVICE_F_PEERS`], set when the port also has filters restricted to peers. An entry of
//!    0 means no filter at all. One array lookup, O(1), no loop for the verifier to bound; a
//!    port range is just several entries written by the control plane. A hash keyed by port
//!    was rejected: it costs a hash per packet and a range would still need one entry per port.
//! 4. Peer lookup, only if [`SERVICE_F_PEERS`] is set: the `peers` LPM trie is keyed by
//!    [`peer_key`] `{prefixlen, service index (big-endian), source address}` and its value is
//!    the `filter_id + 1` of the filter that listed the prefix. Every stored prefix includes
//!    the whole service index (prefix length 32 + n), so a lookup with the full 64 bits sees
//!    only the prefixes of the packet's own port and returns the *longest* one that contains
//!    the source: several filters can share a port, told apart by their peers, and the most
//!    specific prefix wins, decided by one lookup whatever the number of filters. If no prefix
//!    matches, the port's any-peer filter takes the packet; without one, it goes to the kernel
//!    (counted as [`Counter::PeerRejected`]). Ports without restricted filters skip the trie.
//!
//!    The alternative, a trie keyed by filter id (as this program once had), answers "does
//!    filter F accept this peer?", so a port with several filters would need a loop over its
//!    candidates, bounded for the verifier and paid per packet. Keying by service moves the
//!    cost to the control plane: a filter with P prefixes over R ports stores R × P entries.
//! 5. Filter lookup: the `filters` ARRAY holds a [`FilterEntry`] `{flags, slot}` per filter;
//!    the indirection keeps the values above small and lets a filter's slot be read from one
//!    place. An entry without [`FILTER_F_ACTIVE`] (a filter being removed) counts as no filter.
//! 6. `bpf_redirect_map(&xsks, slot * queues_max + rx_queue_index, XDP_PASS)`: to the AF_XDP
//!    socket of the filter's slot (application/socket group) on the queue the packet arrived
//!    on, or, if no socket is registered there, to the kernel.
//!
//! # Fragments
//!
//! Only the first fragment of a datagram carries its UDP header, so the port table cannot
//! steer the others. What every fragment repeats is its IPv4 header: source, destination,
//! protocol and identification. So the program steers a fragment by (destination address,
//! protocol): the `fragments` HASH, keyed by [`fragment_key`], holds the slot whose engines
//! reassemble them. The control plane writes an entry when it starts a UDP service on an
//! address (`melange_control::engines::start`, for the interface's address, which `echo
//! --addr` may only repeat) and deletes it when the service goes. With an entry, a fragment
//! goes to the slot's socket on its queue, counted as [`Counter::FragmentRedirected`] (or
//! [`Counter::NoSocket`]); without one, to the kernel as before, counted as
//! [`Counter::Fragment`]. It costs one hash lookup per fragment, and nothing for the
//! unfragmented packets, which never reach that branch.
//!
//! What it means:
//!
//! - Every fragment of a datagram gets the same verdict, in whatever order they arrive,
//!   because the verdict reads only fields they all carry. Reassembly needs exactly that: a
//!   datagram split between the kernel and Melange would time out in both.
//! - Fragments of traffic the kernel owns on the same address and protocol (a kernel UDP
//!   socket on another port of that address) go to Melange too. Its stack reassembles them,
//!   finds no bound port and drops the datagram, counted as `udp_no_listener`; it never
//!   answers (Melange sends no ICMP errors, so no "port unreachable" for a port the kernel
//!   may own). Their unfragmented datagrams still reach the kernel. A host whose kernel UDP
//!   services receive datagrams larger than the MTU (a resolver taking large EDNS answers,
//!   say) should therefore not share its address with a Melange UDP service: give one of them
//!   another address. Large pings (ICMP fragments) and TCP fragments have their own protocol
//!   in the key and stay with the kernel.
//! - A fragment rule does not look at peers: if a port's filters are restricted to peers, its
//!   reassembled datagrams from other sources still reach the stack, which delivers by port.
//!   (Melange's engines install only any-peer filters today.)
//! - TCP gets no rule. Melange's TCP sends with DF set and an MSS that fits the MTU, so do
//!   its peers (Linux sets DF on every TCP segment), and the stack does not reassemble TCP (it
//!   drops fragments as `tcp_fragment`): steering TCP fragments to it could only drop them,
//!   while the kernel reassembles them for its own TCP sockets on the address. The key holds
//!   the protocol so that TCP reassembly, if it ever comes, needs no new program.
//!
//! The alternative, steering the later fragments by the *first* fragment's port, was
//! rejected. The program would remember the first fragment's verdict per (source,
//! destination, protocol, identification) in an LRU hash written from XDP, and look the
//! others up there. That is a map write per fragmented datagram on the data path, a table an
//! attacker churns with first fragments to evict honest entries, and it still fails when a
//! later fragment overtakes the first (a reordering path, or a stack that sends the last
//! fragment first): the fragments that came before their first one find no
//! verdict and go to the kernel, and the datagram is lost in both places. The address rule
//! keeps no state and does not depend on order; its price is the kernel's large UDP on a
//! shared address, above.
//!
//! Queues: a fragment is redirected to the socket of the queue it arrived on, like every
//! packet, so all the fragments of a datagram must arrive on one queue to reach one engine's
//! reassembly. On a NIC they do: RSS hashes an IPv4 fragment by its 2-tuple, since only the
//! first one has ports, the same for every fragment of a datagram (possibly another queue
//! than the flow's unfragmented datagrams, which are hashed by 4-tuple). On veth the receive
//! queue is the sender's transmit queue, picked by the packet's hash: `ip_fragment` copies
//! the datagram's hash into every fragment, and when it has none yet (an unconnected socket)
//! each fragment's is computed from the same 2-tuple, since the flow dissector does not read
//! the ports of fragments. Measured in the lab (`ethtool -S mlg-vb`, 16 client sockets on
//! different ports): their 100-byte datagrams arrived on both queues (11 and 5), and all 96
//! fragments of their 8,000-byte ones on queue 1. So all the fragmented traffic between two
//! hosts lands on one queue and one engine, as under a NIC's RSS.
//!
//! # Counting
//!
//! Every path ends in one tail that adds 1 to a [`Counter`] in the `stats` PERCPU_ARRAY and
//! returns. The counters tell apart outcomes that share an XDP action: "matched but no socket"
//! and "no filter" are both `XDP_PASS`. Each CPU has its own copy of every counter, so the add
//! is a plain load, add and store on a cache line no other CPU writes; user space sums the
//! copies when it reads them. A shared ARRAY with an atomic add (as this program once had)
//! was rejected: every packet on every queue would bounce the same cache line between CPUs,
//! a locked instruction per packet that grows with the number of queues. The plain add
//! cannot lose counts on the receive path, where XDP runs in the NAPI softirq of its CPU one
//! packet at a time; only two `BPF_PROG_TEST_RUN`s of the same maps, preempting each other on
//! one CPU, could interleave their load and store, and the counts are statistics.
//!
//! Every packet read is preceded by the `data + n > data_end` check the verifier demands; the
//! tests load the program into the real verifier, so a missing check fails the build.
//!
//! A UDP/TCP packet to a filtered port thus costs two array lookups (`services`, `filters`),
//! one trie lookup if its port has restricted filters, the `xsks` lookup inside
//! `bpf_redirect_map` and the `stats` lookup: at most five map lookups, none in a loop, the
//! same as when a port could have only one filter. A fragment costs three (`fragments`,
//! `xsks`, `stats`).
//!
//! Register use: `r6` = context for the whole program; `r2`/`r3` = packet and packet end while
//! parsing; then `r7` = the `services` value, then `filter_id + 1`, then the filter id, and
//! `r9` = slot, across helper calls; from the redirect on, `r7` = counter (the one a
//! successful redirect counts, set by whoever jumps there) and, in the tail, `r8` = the XDP
//! action to return.
//!
//! Safety contract: none (pure code generation); the verifier is the judge.

use crate::asm::{AluOp, Asm, AsmError, Cond, Helper, Size, R0, R1, R2, R3, R4, R5, R6};
use crate::asm::{R10, R7, R8, R9};

/// `XDP_PASS`: hand the packet to the kernel's stack.
pub const XDP_PASS: u32 = 2;
/// `XDP_REDIRECT`: what `bpf_redirect_map` returns when it found the key.
pub const XDP_REDIRECT: u32 = 4;

/// Number of entries of the `services` array: one per (protocol, port).
pub const SERVICES_LEN: u32 = 2 * 65536;
/// Bytes of a `services` value (`u32`, see [`service_value`]).
pub const SERVICE_VALUE_SIZE: u32 = 4;
/// Bytes of a `filters` value ([`FilterEntry`]).
pub const FILTER_VALUE_SIZE: u32 = 8;
/// Bytes of a `peers` key ([`peer_key`]).
pub const PEER_KEY_SIZE: u32 = 12;
/// Bytes of a `peers` value (`u32`: `filter_id + 1` of the filter that listed the prefix).
pub const PEER_VALUE_SIZE: u32 = 4;
/// Bytes of a `stats` value (`u64` packet count).
pub const STAT_VALUE_SIZE: u32 = 8;
/// Bytes of an `xsks` value (an AF_XDP socket descriptor).
pub const XSK_VALUE_SIZE: u32 = 4;
/// Bytes of a `fragments` key ([`fragment_key`]).
pub const FRAGMENT_KEY_SIZE: u32 = 8;
/// Bytes of a `fragments` value (`u32`: the slot that reassembles the fragments).
pub const FRAGMENT_VALUE_SIZE: u32 = 4;
/// `services` value bit: the port has filters restricted to peers, so the program looks the
/// source up in the `peers` trie before falling back to the port's any-peer filter.
pub const SERVICE_F_PEERS: u32 = 1 << 31;
/// The bits of a `services` value that hold the any-peer filter's `filter_id + 1`.
pub const SERVICE_FILTER_MASK: u32 = SERVICE_F_PEERS - 1;

/// The transport protocols filters can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP (IP protocol 17).
    Udp,
    /// TCP (IP protocol 6).
    Tcp,
}

impl Protocol {
    /// The protocol's row in the `services` array.
    pub const fn index(self) -> u32 {
        match self {
            Self::Udp => 0,
            Self::Tcp => 1,
        }
    }

    /// The IPv4 protocol number.
    pub const fn ip_number(self) -> u8 {
        match self {
            Self::Udp => 17,
            Self::Tcp => 6,
        }
    }
}

/// The `services` index of `(protocol, destination port)`.
pub const fn service_index(protocol: Protocol, port: u16) -> u32 {
    protocol.index() * 65536 + port as u32
}

/// The `services` value of a port whose any-peer filter is `any_peer` (if any) and which has
/// filters restricted to peers if `restricted`: `any_peer + 1` (0 for none), or-ed with
/// [`SERVICE_F_PEERS`] if `restricted`. 0 means the port has no filter.
///
/// # Panics
///
/// If `any_peer + 1` does not fit [`SERVICE_FILTER_MASK`] (filter ids are far smaller).
pub const fn service_value(any_peer: Option<u32>, restricted: bool) -> u32 {
    let filter = match any_peer {
        Some(id) => {
            assert!(
                id < SERVICE_FILTER_MASK,
                "filter id too large for a service value"
            );
            id + 1
        }
        None => 0,
    };
    if restricted {
        filter | SERVICE_F_PEERS
    } else {
        filter
    }
}

/// [`FilterEntry::flags`] bit: the entry belongs to an installed filter. Removal clears the
/// entry to zero after unlinking the filter from `services` and `peers`, so a packet that
/// raced the removal finds the bit clear and goes to the kernel instead of slot 0.
pub const FILTER_F_ACTIVE: u32 = 1;

/// A `filters` array value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterEntry {
    /// `FILTER_F_*` bits: [`FILTER_F_ACTIVE`] for an installed filter. (Whether peers are
    /// checked is decided per port, by [`SERVICE_F_PEERS`], since one port may have
    /// restricted and unrestricted filters.)
    pub flags: u32,
    /// The slot (application/socket group) matched packets are redirected to.
    pub slot: u32,
}

impl FilterEntry {
    /// The value's bytes as the program reads them (`flags` at 0, `slot` at 4, host order).
    pub fn to_bytes(self) -> [u8; FILTER_VALUE_SIZE as usize] {
        let mut b = [0u8; FILTER_VALUE_SIZE as usize];
        b[..4].copy_from_slice(&self.flags.to_ne_bytes());
        b[4..].copy_from_slice(&self.slot.to_ne_bytes());
        b
    }
}

/// The `peers` trie key for the prefix `addr/prefix_len` on the port with [`service_index`]
/// `service`: `{prefixlen: u32 (host order) = 32 + prefix_len, service: u32 big-endian, addr:
/// [u8; 4]}`. The program looks up `{64, service, source}`; big-endian makes the trie compare
/// the service index whole before the address bits, so ports never see each other's prefixes.
///
/// # Panics
///
/// If `prefix_len > 32` (callers validate prefixes first).
pub fn peer_key(service: u32, addr: [u8; 4], prefix_len: u8) -> [u8; PEER_KEY_SIZE as usize] {
    assert!(prefix_len <= 32, "IPv4 prefix length {prefix_len} > 32");
    let mut k = [0u8; PEER_KEY_SIZE as usize];
    k[..4].copy_from_slice(&(32 + u32::from(prefix_len)).to_ne_bytes());
    k[4..8].copy_from_slice(&service.to_be_bytes());
    k[8..].copy_from_slice(&addr);
    k
}

/// The `fragments` key of IPv4 fragments of `protocol` to `addr`: `{addr: [u8; 4] (network
/// order, as in the header), protocol: u32 (host order, the IPv4 protocol number)}`. The
/// program stores the header's destination word and its protocol byte zero-extended, so the
/// key's last three bytes are zero.
pub fn fragment_key(addr: [u8; 4], protocol: Protocol) -> [u8; FRAGMENT_KEY_SIZE as usize] {
    let mut k = [0u8; FRAGMENT_KEY_SIZE as usize];
    k[..4].copy_from_slice(&addr);
    k[4..].copy_from_slice(&u32::from(protocol.ip_number()).to_ne_bytes());
    k
}

/// The packet counters of the `stats` array, by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Redirected to an AF_XDP socket by a filter or a steering rule (fragments are
    /// [`Counter::FragmentRedirected`]).
    Redirected = 0,
    /// Matched a filter (or a steering rule) but no socket is registered for its slot and the
    /// packet's queue: passed to the kernel.
    NoSocket = 1,
    /// UDP/TCP to a port no filter covers: passed to the kernel.
    NoFilter = 2,
    /// Matched a port that has only filters restricted to peers, none of which lists a prefix
    /// containing the source address: passed to the kernel.
    PeerRejected = 3,
    /// Not for the filters by policy (non-IPv4 ethertype, ARP or other IP protocols steered to
    /// the kernel): passed.
    Kernel = 4,
    /// An IPv4 fragment whose destination address and protocol have no fragment rule: passed
    /// to the kernel for reassembly.
    Fragment = 5,
    /// Truncated or invalid headers: passed to the kernel, which drops and counts them.
    Malformed = 6,
    /// An IPv4 fragment redirected to the AF_XDP socket of its fragment rule's slot, for the
    /// stack's reassembly. (A rule whose slot has no socket on the queue counts
    /// [`Counter::NoSocket`].)
    FragmentRedirected = 7,
}

impl Counter {
    /// All counters, in index order.
    pub const ALL: [Counter; 8] = [
        Self::Redirected,
        Self::NoSocket,
        Self::NoFilter,
        Self::PeerRejected,
        Self::Kernel,
        Self::Fragment,
        Self::Malformed,
        Self::FragmentRedirected,
    ];

    /// The counter's index in the `stats` array.
    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Number of entries of the `stats` array.
pub const STATS_LEN: u32 = Counter::ALL.len() as u32;

/// Where the program sends packets that filters do not decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steer {
    /// `XDP_PASS` to the kernel's stack.
    Kernel,
    /// Redirect to this slot's socket on the packet's queue (falls back to the kernel if none
    /// is registered), so the dataplane handles it.
    Slot(u32),
}

/// The knobs baked into the program as immediates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterProgramSpec {
    /// What to do with ARP. Redirect everything but ARP and the kernel stops answering ARP for
    /// the address; pass ARP up unless the dataplane answers it.
    pub arp: Steer,
    /// What to do with IPv4 that is neither UDP nor TCP (ICMP, ...).
    pub other_ipv4: Steer,
    /// The number of receive queues per slot in the `xsks` map: a slot's sockets occupy keys
    /// `slot * queues_max .. (slot + 1) * queues_max`.
    pub queues_max: u32,
}

impl Default for FilterProgramSpec {
    fn default() -> Self {
        Self {
            arp: Steer::Kernel,
            other_ipv4: Steer::Kernel,
            queues_max: 64,
        }
    }
}

/// The descriptors of the program's maps, as the kernel returned them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterMapFds {
    /// ARRAY, `u32` [`service_index`] key, [`service_value`] value, [`SERVICES_LEN`] entries.
    pub services: i32,
    /// ARRAY, `u32` filter id, [`FilterEntry`] value.
    pub filters: i32,
    /// LPM_TRIE, [`peer_key`] key, `u32` value `filter_id + 1`.
    pub peers: i32,
    /// XSKMAP, `u32` key `slot * queues_max + queue`, socket value.
    pub xsks: i32,
    /// PERCPU_ARRAY, `u32` [`Counter`] index, `u64` value per CPU, [`STATS_LEN`] entries.
    pub stats: i32,
    /// HASH, [`fragment_key`] key, `u32` slot value.
    pub fragments: i32,
}

// Stack layout below r10.
/// `services` key.
const STACK_SERVICE_KEY: i16 = -4;
/// `peers` key: prefixlen at -16, service index (big-endian) at -12, source address at -8.
const STACK_PEER_KEY: i16 = -16;
const STACK_PEER_KEY_SERVICE: i16 = -12;
const STACK_PEER_KEY_ADDR: i16 = -8;
/// `filters` key.
const STACK_FILTER_KEY: i16 = -20;
/// `stats` key.
const STACK_STATS_KEY: i16 = -24;
/// `fragments` key: destination address at -32, protocol (a `u32`) at -28.
const STACK_FRAGMENT_KEY: i16 = -32;
const STACK_FRAGMENT_KEY_PROTO: i16 = -28;

// Offsets in `struct xdp_md`.
const MD_DATA: i16 = 0;
const MD_DATA_END: i16 = 4;
const MD_RX_QUEUE_INDEX: i16 = 16;

// Frame offsets.
const ETH_HLEN: i32 = 14;
const ETH_TYPE: i16 = 12;
const IP_VER_IHL: i16 = 14;
const IP_FRAG: i16 = 20;
const IP_PROTO: i16 = 23;
const IP_SRC: i16 = 26;
const IP_DST: i16 = 30;
const IP_MIN_END: i32 = ETH_HLEN + 20;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// The MF flag and the fragment offset of the IPv4 flags/fragment field.
const IP_FRAG_MASK: u16 = 0x3fff;

/// A 16-bit network-order field as an `ldxh` on this (little-endian) host reads it.
const fn wire16(v: u16) -> i32 {
    v.swap_bytes() as i32
}

/// Assembles the filter program for `spec` over the maps in `maps`.
///
/// # Errors
///
/// [`AsmError`] only if this generator has a bug (the tests assemble and load every variant).
pub fn build(spec: &FilterProgramSpec, maps: &FilterMapFds) -> Result<Vec<u64>, AsmError> {
    let mut a = Asm::new();

    // Entry: r1 = ctx.
    a.mov64(R6, R1)
        .ldx(Size::W, R2, R6, MD_DATA)
        .ldx(Size::W, R3, R6, MD_DATA_END);

    // Ethernet header.
    a.mov64(R4, R2)
        .alu64_imm(AluOp::Add, R4, ETH_HLEN)
        .jmp_reg(Cond::Gt, R4, R3, "malformed")
        .ldx(Size::H, R5, R2, ETH_TYPE)
        .jmp_imm(Cond::Eq, R5, wire16(ETHERTYPE_ARP), "arp")
        .jmp_imm(Cond::Ne, R5, wire16(ETHERTYPE_IPV4), "kernel");

    // IPv4 fixed header.
    a.mov64(R4, R2)
        .alu64_imm(AluOp::Add, R4, IP_MIN_END)
        .jmp_reg(Cond::Gt, R4, R3, "malformed")
        .ldx(Size::B, R5, R2, IP_VER_IHL)
        .mov64(R4, R5)
        .alu64_imm(AluOp::Rsh, R4, 4)
        .jmp_imm(Cond::Ne, R4, 4, "malformed")
        // r5 = header length in bytes, 20..=60 after the check.
        .alu64_imm(AluOp::And, R5, 0x0f)
        .alu64_imm(AluOp::Lsh, R5, 2)
        .jmp_imm(Cond::Lt, R5, 20, "malformed")
        .ldx(Size::H, R4, R2, IP_FRAG)
        .alu64_imm(AluOp::And, R4, wire16(IP_FRAG_MASK))
        .jmp_imm(Cond::Ne, R4, 0, "fragment")
        .ldx(Size::B, R4, R2, IP_PROTO)
        .mov64_imm(R7, Protocol::Udp.index() as i32)
        .jmp_imm(Cond::Eq, R4, i32::from(Protocol::Udp.ip_number()), "l4")
        .mov64_imm(R7, Protocol::Tcp.index() as i32)
        .jmp_imm(Cond::Eq, R4, i32::from(Protocol::Tcp.ip_number()), "l4")
        .ja("other_ipv4");

    // UDP/TCP: both have the destination port at bytes 2..4 of their header.
    a.label("l4")
        .ldx(Size::W, R4, R2, IP_SRC)
        .stx(Size::W, R10, STACK_PEER_KEY_ADDR, R4)
        .alu64_imm(AluOp::Add, R2, ETH_HLEN)
        .alu64(AluOp::Add, R2, R5)
        .mov64(R4, R2)
        .alu64_imm(AluOp::Add, R4, 4)
        .jmp_reg(Cond::Gt, R4, R3, "malformed")
        .ldx(Size::H, R5, R2, 2)
        .to_be(R5, 16)
        .alu64_imm(AluOp::Lsh, R7, 16)
        .alu64(AluOp::Add, R7, R5)
        .stx(Size::W, R10, STACK_SERVICE_KEY, R7);

    // services[proto * 65536 + port] = any-peer filter_id + 1 (or 0) | SERVICE_F_PEERS.
    a.ld_map_fd(R1, maps.services)
        .mov64(R2, R10)
        .alu64_imm(AluOp::Add, R2, i32::from(STACK_SERVICE_KEY))
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "no_filter")
        .ldx(Size::W, R7, R0, 0)
        .jmp_imm(Cond::Eq, R7, 0, "no_filter")
        .jmp32_imm(Cond::Set, R7, SERVICE_F_PEERS as i32, "peers")
        .label("filter");

    // filters[r7 - 1] = {flags, slot}. Entered with r7 = filter_id + 1, non-zero.
    a.alu64_imm(AluOp::Add, R7, -1)
        .stx(Size::W, R10, STACK_FILTER_KEY, R7)
        .ld_map_fd(R1, maps.filters)
        .mov64(R2, R10)
        .alu64_imm(AluOp::Add, R2, i32::from(STACK_FILTER_KEY))
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "no_filter")
        // A filter being removed has its entry cleared after its services entry: a packet that
        // read the services entry just before must not follow the cleared entry to slot 0.
        .ldx(Size::W, R8, R0, 0)
        .alu64_imm(AluOp::And, R8, FILTER_F_ACTIVE as i32)
        .jmp_imm(Cond::Eq, R8, 0, "no_filter")
        .ldx(Size::W, R9, R0, 4)
        .mov64_imm(R7, Counter::Redirected.index() as i32)
        .ja("redirect");

    // peers: longest prefix match on {64, service index (BE), source}, whose value is the
    // filter_id + 1 of the most specific restricted filter; else the any-peer filter, if any.
    a.label("peers")
        .alu64_imm(AluOp::And, R7, SERVICE_FILTER_MASK as i32)
        .st_imm(Size::W, R10, STACK_PEER_KEY, 64)
        .ldx(Size::W, R1, R10, STACK_SERVICE_KEY)
        .to_be(R1, 32)
        .stx(Size::W, R10, STACK_PEER_KEY_SERVICE, R1)
        .ld_map_fd(R1, maps.peers)
        .mov64(R2, R10)
        .alu64_imm(AluOp::Add, R2, i32::from(STACK_PEER_KEY))
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "any_peer")
        .ldx(Size::W, R7, R0, 0)
        // r7 = the matching prefix's filter_id + 1 or, on a miss, the any-peer filter's; 0
        // (none, or a trie value never written) goes to the kernel.
        .label("any_peer")
        .jmp_imm(Cond::Ne, R7, 0, "filter")
        .ja("peer_rejected");

    // fragments[{destination, protocol}] = slot. Entered with r2 = packet, whose first
    // IP_MIN_END bytes were checked, so the destination (bytes 30..34) may be read.
    a.label("fragment")
        .ldx(Size::W, R4, R2, IP_DST)
        .stx(Size::W, R10, STACK_FRAGMENT_KEY, R4)
        // The protocol byte, zero-extended: the key's last three bytes are zero.
        .ldx(Size::B, R4, R2, IP_PROTO)
        .stx(Size::W, R10, STACK_FRAGMENT_KEY_PROTO, R4)
        .ld_map_fd(R1, maps.fragments)
        .mov64(R2, R10)
        .alu64_imm(AluOp::Add, R2, i32::from(STACK_FRAGMENT_KEY))
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "fragment_kernel")
        .ldx(Size::W, R9, R0, 0)
        .mov64_imm(R7, Counter::FragmentRedirected.index() as i32)
        .ja("redirect");

    // Redirect to xsks[slot * queues_max + rx_queue_index], falling back to XDP_PASS.
    // Entered with r6 = ctx, r9 = slot, r7 = the counter of a successful redirect.
    a.label("redirect")
        .ldx(Size::W, R2, R6, MD_RX_QUEUE_INDEX)
        .mov64(R1, R9)
        .alu64_imm(AluOp::Mul, R1, spec.queues_max as i32)
        .alu64(AluOp::Add, R2, R1)
        .ld_map_fd(R1, maps.xsks)
        .mov64_imm(R3, XDP_PASS as i32)
        .call(Helper::RedirectMap)
        .mov64(R8, R0)
        .jmp_imm(Cond::Eq, R0, XDP_REDIRECT as i32, "count")
        .mov64_imm(R7, Counter::NoSocket.index() as i32)
        .ja("count");

    // Steering of what the filters do not decide.
    for (label, steer) in [("arp", spec.arp), ("other_ipv4", spec.other_ipv4)] {
        a.label(label);
        match steer {
            Steer::Kernel => pass(&mut a, Counter::Kernel),
            Steer::Slot(slot) => {
                a.mov64_imm(R9, slot as i32)
                    .mov64_imm(R7, Counter::Redirected.index() as i32)
                    .ja("redirect");
            }
        }
    }
    for (label, counter) in [
        ("kernel", Counter::Kernel),
        ("fragment_kernel", Counter::Fragment),
        ("malformed", Counter::Malformed),
        ("no_filter", Counter::NoFilter),
        ("peer_rejected", Counter::PeerRejected),
    ] {
        a.label(label);
        pass(&mut a, counter);
    }

    // Tail: stats[r7] += 1 on this CPU's copy (a per-CPU lookup returns it); return r8.
    a.label("count")
        .stx(Size::W, R10, STACK_STATS_KEY, R7)
        .ld_map_fd(R1, maps.stats)
        .mov64(R2, R10)
        .alu64_imm(AluOp::Add, R2, i32::from(STACK_STATS_KEY))
        .call(Helper::MapLookupElem)
        .jmp_imm(Cond::Eq, R0, 0, "out")
        .ldx(Size::DW, R1, R0, 0)
        .alu64_imm(AluOp::Add, R1, 1)
        .stx(Size::DW, R0, 0, R1)
        .label("out")
        .mov64(R0, R8)
        .exit();

    a.finish()
}

/// Emits "count `counter`, return `XDP_PASS`".
fn pass(a: &mut Asm, counter: Counter) {
    a.mov64_imm(R7, counter.index() as i32)
        .mov64_imm(R8, XDP_PASS as i32)
        .ja("count");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asm::Insn;

    const FDS: FilterMapFds = FilterMapFds {
        services: 10,
        filters: 11,
        peers: 12,
        xsks: 13,
        stats: 14,
        fragments: 15,
    };

    #[test]
    fn builds_for_every_steering() {
        for arp in [Steer::Kernel, Steer::Slot(3)] {
            for other_ipv4 in [Steer::Kernel, Steer::Slot(0)] {
                let spec = FilterProgramSpec {
                    arp,
                    other_ipv4,
                    queues_max: 4,
                };
                let code = build(&spec, &FDS).unwrap();
                assert!(code.len() < 200, "{} slots", code.len());
                assert_eq!(Insn::decode(*code.last().unwrap()), Insn::exit());
            }
        }
    }

    #[test]
    fn map_references_use_the_given_fds() {
        let code = build(&FilterProgramSpec::default(), &FDS).unwrap();
        let mut fds: Vec<i32> = code
            .iter()
            .map(|&raw| Insn::decode(raw))
            .filter(|i| i.code == 0x18 && i.src == crate::asm::PSEUDO_MAP_FD)
            .map(|i| i.imm)
            .collect();
        fds.sort_unstable();
        fds.dedup();
        assert_eq!(fds, vec![10, 11, 12, 13, 14, 15]);
    }

    /// The counters are per CPU, so the program takes no lock: no atomic instruction, and the
    /// tail's increment is a plain 8-byte load, add and store through the pointer the stats
    /// lookup returned.
    #[test]
    fn counting_is_a_plain_add() {
        let code: Vec<Insn> = build(&FilterProgramSpec::default(), &FDS)
            .unwrap()
            .into_iter()
            .map(Insn::decode)
            .collect();
        const BPF_ATOMIC: u8 = 0xc0;
        const MODE_MASK: u8 = 0xe0;
        assert!(
            !code.iter().any(
                |i| i.code & 0x07 == crate::asm::class::STX && i.code & MODE_MASK == BPF_ATOMIC
            ),
            "the program uses an atomic instruction"
        );
        let tail = &code[code.len() - 6..];
        assert_eq!(
            tail,
            &[
                Insn::jmp_imm(Cond::Eq, R0, 0, 3),
                Insn::ldx(Size::DW, R1, R0, 0),
                Insn::alu64_imm(AluOp::Add, R1, 1),
                Insn::stx(Size::DW, R0, 0, R1),
                Insn::alu64_reg(AluOp::Mov, R0, R8),
                Insn::exit(),
            ]
        );
    }

    #[test]
    fn key_layouts() {
        assert_eq!(service_index(Protocol::Udp, 7), 7);
        assert_eq!(service_index(Protocol::Tcp, 65535), SERVICES_LEN - 1);
        let k = peer_key(service_index(Protocol::Tcp, 0x0304), [10, 0, 0, 0], 8);
        assert_eq!(&k[..4], &40u32.to_ne_bytes());
        assert_eq!(&k[4..], &[0, 1, 3, 4, 10, 0, 0, 0]);
        assert_eq!(service_value(None, false), 0);
        assert_eq!(service_value(Some(0), false), 1);
        assert_eq!(service_value(None, true), SERVICE_F_PEERS);
        assert_eq!(service_value(Some(6), true), 7 | SERVICE_F_PEERS);
        assert_eq!(service_value(Some(6), true) & SERVICE_FILTER_MASK, 7);
        let e = FilterEntry { flags: 1, slot: 2 };
        assert_eq!(e.to_bytes()[..4], 1u32.to_ne_bytes());
        assert_eq!(e.to_bytes()[4..], 2u32.to_ne_bytes());
        assert_eq!(wire16(0x0800), 0x0008);
        // Address as in the header, then the protocol number as a host-order u32.
        assert_eq!(
            fragment_key([10, 77, 0, 2], Protocol::Udp),
            [10, 77, 0, 2, 17, 0, 0, 0]
        );
        assert_eq!(
            fragment_key([10, 77, 0, 2], Protocol::Tcp),
            [10, 77, 0, 2, 6, 0, 0, 0]
        );
    }

    /// Only fragments take the `fragments` lookup: the branch to it follows the check of the
    /// flags and offset, and the unfragmented path never reaches the map.
    #[test]
    fn only_fragments_look_up_the_fragment_rules() {
        let code: Vec<Insn> = build(&FilterProgramSpec::default(), &FDS)
            .unwrap()
            .into_iter()
            .map(Insn::decode)
            .collect();
        let loads: Vec<usize> = (code.iter().enumerate())
            .filter(|(_, i)| {
                i.code == 0x18 && i.src == crate::asm::PSEUDO_MAP_FD && i.imm == FDS.fragments
            })
            .map(|(at, _)| at)
            .collect();
        assert_eq!(loads.len(), 1, "one lookup in the fragment rules");
        // The block starts four slots before the map load (two loads, two stores); the one
        // jump into it is the `flags & (MF | offset) != 0` test.
        let block = loads[0] - 4;
        let into: Vec<Insn> = (code.iter().enumerate())
            .filter(|(at, i)| {
                i.code & 0x07 == crate::asm::class::JMP
                    && i.code != Insn::call(Helper::MapLookupElem).code
                    && i.code != Insn::exit().code
                    && *at as i64 + 1 + i64::from(i.off) == block as i64
            })
            .map(|(_, &i)| i)
            .collect();
        assert_eq!(into.len(), 1, "{into:?}");
        assert_eq!(into[0], Insn::jmp_imm(Cond::Ne, R4, 0, into[0].off));
    }
}
