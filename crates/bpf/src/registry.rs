//! The filter registry: which filters an interface has, and which map writes add or remove
//! one.
//!
//! # Design
//!
//! The filter program ([`crate::filter`]) is fixed; filters are data in its maps. Deciding
//! that data is pure logic: whether a new filter is ambiguous with the ones already there,
//! whether it fits, which `services`, `peers` and `filters` entries it needs and in what
//! order they must be written. That logic lives here, with no kernel in sight, so it is tested
//! without root and can be driven by a simulator; the control plane (`melange-control`'s
//! `XdpFilters`) only applies the [`MapOp`]s this module computes to the kernel's maps, as
//! aya's `aya-obj` computes what `aya` loads. A registry that wrote to the maps itself was
//! rejected: its every test would need `bpf(2)`, and the order of writes (below) could only
//! be checked by racing packets against it.
//!
//! # Filters that share a port
//!
//! As in Arrakis, several filters may take the same (protocol, port) when they are told apart
//! by peers: app A gets UDP 7000 from 10.0.0.0/8, app B from 192.168.1.0/24, app C from
//! anyone else. Per port, each filter contributes its prefixes, and a filter with no peers (or
//! with `0.0.0.0/0`) contributes the empty prefix; a packet goes to the filter owning the
//! **longest prefix that contains its source**, the rule routers use, so overlapping prefixes
//! are allowed and the more specific one wins (A with 10.0.0.0/8 and B with 10.1.0.0/16: B
//! gets 10.1.2.3, A gets 10.2.3.4). A source that no prefix contains goes to the kernel,
//! counted as `peer_rejected`. Only the truly ambiguous cases are refused, with an error
//! naming the other filter: two filters on one port accepting any peer
//! ([`RegistryError::Overlap`]), or listing the same prefix ([`RegistryError::PeerOverlap`]).
//!
//! The program decides this with O(1) lookups and no loop: the `services` entry of a port
//! names its any-peer filter and says whether restricted filters exist; if they do, one lookup
//! in the `peers` LPM trie, keyed by (port, source), returns the filter of the longest
//! matching prefix. The price is paid here, in entries: a filter with P prefixes over R ports
//! stores R × P trie entries, all counted against [`FilterOptions::peers_max`]
//! ([`RegistryError::PeersExhausted`] when they do not fit).
//!
//! The [`Registry`] mirrors the maps: per port, the any-peer filter and the number of trie
//! entries, and per (port, prefix) its filter. Conflicts are checked against it, and every
//! `services` value is a function of it, so removing a filter rewrites its ports' entries from
//! what the other filters hold and restores exactly the state before the filter was added.
//!
//! # Order of writes
//!
//! A filter becomes visible to packets in one order and disappears in the reverse one: its
//! `filters` entry and its trie entries are written before any `services` entry points at it
//! or tells the program to consult the trie, and on removal the `services` entries go first
//! ([`Registry::install_ops`], [`Registry::clear_ops`] yield their operations in that order,
//! and the caller must apply them in it). So no packet ever sees a filter whose entries are
//! half written. On a port that already has restricted filters, a new filter's prefixes become
//! visible one by one as they are written, each complete, and on removal they disappear one by
//! one, each packet then going to the next longest prefix or to the any-peer filter, as it will
//! once the removal is done. (A port range is written one port at a time; while it is written,
//! some of its ports already match and others do not yet, which is the same as the filter
//! arriving a little later on those ports.) Every state in between thus steers each packet
//! either as before the change or as after it; the tests check this after every operation.
//!
//! # Fragment rules
//!
//! A [`FragmentRule`] says "IPv4 fragments of this protocol to this address go to this slot"
//! (see [`crate::filter`], "Fragments", for why fragments are steered by address). Several
//! services of one slot on one address share a rule, counted by reference: the first to ask
//! writes its `fragments` entry, the last to go deletes it. A rule for the same address and
//! protocol but another slot is refused ([`RegistryError::FragmentRuleConflict`]): the
//! fragments of one datagram must all reach one reassembly, and nothing in a later fragment
//! says which service it belongs to. A rule is one map entry, written in one step, so no
//! ordering is needed: a packet sees the entry or does not.
//!
//! Safety contract: none needed; the crate forbids `unsafe`.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

use crate::filter::{
    fragment_key, peer_key, service_index, service_value, FilterEntry, FilterProgramSpec, Protocol,
    Steer, FILTER_F_ACTIVE, FRAGMENT_KEY_SIZE, PEER_KEY_SIZE, SERVICE_FILTER_MASK,
};

/// The most slots times queues the `xsks` map may have.
pub const XSKS_LEN_MAX: u32 = 1 << 16;
/// The most filters one interface may have.
pub const FILTERS_MAX_LIMIT: u32 = 1 << 16;

// Every `filter_id + 1` fits the filter bits of a `services` value.
const _: () = assert!(FILTERS_MAX_LIMIT < SERVICE_FILTER_MASK);

/// Errors of the registry: a filter or setting that cannot be had, decided without the
/// kernel. Each variant says what the caller should do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Both this filter and another one on the same protocol and port accept any peer, so no
    /// packet could tell them apart. Give this filter peer prefixes (it then takes those peers
    /// from the other one), drop the other filter's handle first, or choose other ports.
    #[error(
        "{protocol:?} port {port} already has filter {existing} accepting any peer, and a port \
         may have only one: give this filter peer prefixes, drop filter {existing} first, or \
         use other ports"
    )]
    Overlap {
        /// The protocol of both filters.
        protocol: Protocol,
        /// The first port the two filters share.
        port: u16,
        /// The id of the filter that accepts any peer there.
        existing: u32,
    },
    /// Another filter on the same protocol and port lists the same peer prefix, so packets
    /// from it could go to either. List a different prefix (a longer or shorter one is fine:
    /// the longest match wins), drop the other filter's handle first, or choose other ports.
    #[error(
        "{protocol:?} port {port} already takes peer {peer} to filter {existing}: filters on \
         one port need distinct prefixes (the longest match wins), so list another prefix, \
         drop filter {existing} first, or use other ports"
    )]
    PeerOverlap {
        /// The protocol of both filters.
        protocol: Protocol,
        /// The first port the two filters share with the same prefix.
        port: u16,
        /// The prefix both filters list.
        peer: Ipv4Prefix,
        /// The id of the filter that already lists it.
        existing: u32,
    },
    /// Every filter id is in use. Drop unused filters or raise [`FilterOptions::filters_max`].
    #[error("all {filters_max} filters are in use: drop unused filters or raise filters_max")]
    FiltersExhausted {
        /// The configured limit.
        filters_max: u32,
    },
    /// The peer trie has no room for this filter's entries: one per port and prefix (other
    /// than `0.0.0.0/0`). Use fewer prefixes or a narrower port range, drop other restricted
    /// filters, or raise [`FilterOptions::peers_max`].
    #[error(
        "the filter needs {needed} peer trie entries (ports × prefixes) but only {free} of \
         {peers_max} are free: use fewer prefixes or ports, or raise peers_max"
    )]
    PeersExhausted {
        /// Trie entries the filter needs: its port count times its prefix count.
        needed: usize,
        /// Trie entries still free.
        free: u32,
        /// The configured limit.
        peers_max: u32,
    },
    /// The slot is not below [`FilterOptions::slots_max`]. Use a smaller slot number.
    #[error("slot {slot} is out of range (slots_max {slots_max})")]
    SlotOutOfRange {
        /// The slot given.
        slot: u32,
        /// The configured limit.
        slots_max: u32,
    },
    /// The queue is not below [`FilterOptions::queues_max`]. Use a queue the interface has.
    #[error("queue {queue} is out of range (queues_max {queues_max})")]
    QueueOutOfRange {
        /// The queue given.
        queue: u32,
        /// The configured limit.
        queues_max: u32,
    },
    /// A prefix longer than 32 bits. Fix the prefix.
    #[error("IPv4 prefix length {len} is longer than 32")]
    InvalidPrefix {
        /// The length given.
        len: u8,
    },
    /// A port range whose first port is after its last. Fix the range.
    #[error("port range {first}..={last} is empty")]
    InvalidPortRange {
        /// The first port.
        first: u16,
        /// The last port.
        last: u16,
    },
    /// Fragments of this protocol to this address already go to another slot, and the
    /// fragments of one datagram cannot be told apart by service. Serve both from one slot,
    /// give the other service its own address, or drop the other rule's handle first.
    #[error(
        "{protocol:?} fragments to {addr} already go to slot {existing}, and an address's \
         fragments can go to one slot only: use slot {existing}, another address, or drop \
         that rule first"
    )]
    FragmentRuleConflict {
        /// The protocol of both rules.
        protocol: Protocol,
        /// The address of both rules.
        addr: Ipv4Addr,
        /// The slot the fragments go to now.
        existing: u32,
    },
    /// Every fragment rule entry is in use (one per address and protocol). Drop unused rules
    /// or raise [`FilterOptions::fragment_rules_max`].
    #[error(
        "all {fragment_rules_max} fragment rules are in use: drop unused ones or raise \
         fragment_rules_max"
    )]
    FragmentRulesExhausted {
        /// The configured limit.
        fragment_rules_max: u32,
    },
    /// The options are inconsistent; the message says which. Fix the options.
    #[error("invalid filter options: {0}")]
    InvalidOptions(&'static str),
}

/// An IPv4 prefix `addr/len`, with the host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Prefix {
    /// The prefix `addr/len`; host bits of `addr` beyond `len` are cleared.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidPrefix`] if `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, RegistryError> {
        if len > 32 {
            return Err(RegistryError::InvalidPrefix { len });
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    /// One host, `addr/32`.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, len: 32 }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is `0.0.0.0/0`, which matches every address.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `addr` lies inside the prefix.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
        u32::from(addr) & mask == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Prefix {
    /// `addr/len`, as in `10.0.0.0/8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// One port.
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// The ports `first..=last`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidPortRange`] if `first > last`.
    pub fn new(first: u16, last: u16) -> Result<Self, RegistryError> {
        if first > last {
            return Err(RegistryError::InvalidPortRange { first, last });
        }
        Ok(Self { first, last })
    }

    /// The first port.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// The last port.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// The ports, in order.
    pub fn ports(self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }

    /// The number of ports, 1..=65536.
    pub fn count(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

/// Which traffic a filter applies to. Only receive filters exist: on transmit, the dataplane
/// writes headers itself and validates them in user space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// Packets arriving on the interface.
    #[default]
    Receive,
}

/// Arrakis' `create_filter(flags, peers, services)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    /// Receive only, for now.
    pub direction: Direction,
    /// The transport protocol.
    pub protocol: Protocol,
    /// Accepted source prefixes; empty, or holding `0.0.0.0/0`, accepts any peer. Filters that
    /// share a port are told apart by these: a packet goes to the filter with the longest
    /// prefix containing its source, or else to the port's one any-peer filter.
    pub peers: Vec<Ipv4Prefix>,
    /// Destination ports.
    pub ports: PortRange,
    /// The slot (application/socket group) whose socket on the packet's queue receives it.
    pub slot: u32,
}

/// Sizes and policy of one interface's filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterOptions {
    /// What to do with ARP (default: pass to the kernel).
    pub arp: Steer,
    /// What to do with IPv4 other than UDP and TCP (default: pass to the kernel).
    pub other_ipv4: Steer,
    /// Receive queues per slot in the socket map; at least the interface's queue count.
    pub queues_max: u32,
    /// Slots (applications/socket groups).
    pub slots_max: u32,
    /// Filters at once.
    pub filters_max: u32,
    /// Entries of the peer trie over all filters: a filter with P prefixes (not counting
    /// `0.0.0.0/0`) over R ports uses R × P.
    pub peers_max: u32,
    /// Entries of the `fragments` map: one per (address, protocol) whose fragments go to a
    /// slot ([`FragmentRule`]).
    pub fragment_rules_max: u32,
}

impl Default for FilterOptions {
    fn default() -> Self {
        Self {
            arp: Steer::Kernel,
            other_ipv4: Steer::Kernel,
            queues_max: 16,
            slots_max: 16,
            filters_max: 1024,
            peers_max: 4096,
            fragment_rules_max: 64,
        }
    }
}

impl FilterOptions {
    /// Checks that the options describe maps the kernel can create and a program that
    /// steers only to slots that exist.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidOptions`], naming the inconsistency.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if self.queues_max == 0 || self.slots_max == 0 || self.filters_max == 0 {
            return Err(RegistryError::InvalidOptions(
                "queues_max, slots_max and filters_max must be positive",
            ));
        }
        if u64::from(self.queues_max) * u64::from(self.slots_max) > u64::from(XSKS_LEN_MAX) {
            return Err(RegistryError::InvalidOptions(
                "queues_max * slots_max exceeds XSKS_LEN_MAX",
            ));
        }
        if self.filters_max > FILTERS_MAX_LIMIT {
            return Err(RegistryError::InvalidOptions(
                "filters_max exceeds FILTERS_MAX_LIMIT",
            ));
        }
        for steer in [self.arp, self.other_ipv4] {
            if let Steer::Slot(slot) = steer {
                if slot >= self.slots_max {
                    return Err(RegistryError::InvalidOptions(
                        "a steering slot is not below slots_max",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The entries of the `xsks` map: `queues_max * slots_max` (at most [`XSKS_LEN_MAX`] once
    /// [`FilterOptions::validate`] passed).
    pub fn xsks_len(&self) -> u32 {
        self.queues_max.saturating_mul(self.slots_max)
    }

    /// The `xsks` key of `slot`'s socket on `queue`: `slot * queues_max + queue`, the index
    /// the program computes.
    ///
    /// # Errors
    ///
    /// [`RegistryError::SlotOutOfRange`], [`RegistryError::QueueOutOfRange`].
    pub fn xsk_index(&self, slot: u32, queue: u32) -> Result<u32, RegistryError> {
        if slot >= self.slots_max {
            return Err(RegistryError::SlotOutOfRange {
                slot,
                slots_max: self.slots_max,
            });
        }
        if queue >= self.queues_max {
            return Err(RegistryError::QueueOutOfRange {
                queue,
                queues_max: self.queues_max,
            });
        }
        // Below queues_max * slots_max, which validate() bounds by XSKS_LEN_MAX; without
        // validation the product may still not overflow silently.
        slot.checked_mul(self.queues_max)
            .and_then(|base| base.checked_add(queue))
            .ok_or(RegistryError::InvalidOptions(
                "queues_max * slots_max exceeds XSKS_LEN_MAX",
            ))
    }

    /// The knobs these options bake into the filter program.
    pub fn program_spec(&self) -> FilterProgramSpec {
        FilterProgramSpec {
            arp: self.arp,
            other_ipv4: self.other_ipv4,
            queues_max: self.queues_max,
        }
    }
}

/// One write to the filter program's maps, computed by the [`Registry`]. The caller applies a
/// sequence of them in order; each names the map, the key and the value in the layouts of
/// [`crate::filter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Set `filters[id]` (an ARRAY: create or replace) to `entry`; a zero entry clears it.
    SetFilter {
        /// The filter id, the `filters` index.
        id: u32,
        /// The value.
        entry: FilterEntry,
    },
    /// Create the `peers` trie entry `key` with value `value` (`filter_id + 1`). No other
    /// filter holds the key (the registry checked), so write it create-only (`BPF_NOEXIST`):
    /// an existing key is a failure, never something to overwrite.
    InsertPeer {
        /// The [`peer_key`] of (port, prefix).
        key: [u8; PEER_KEY_SIZE as usize],
        /// `filter_id + 1`.
        value: u32,
    },
    /// Delete the `peers` trie entry `key` if it holds `value` (`filter_id + 1`), and leave it
    /// if it is absent or holds another value: a failed install may have stopped before
    /// writing it, and must not take a key from the filter that owns it.
    RemovePeer {
        /// The [`peer_key`] of (port, prefix).
        key: [u8; PEER_KEY_SIZE as usize],
        /// The value that marks the entry as this filter's.
        value: u32,
    },
    /// Set `services[index]` (an ARRAY: create or replace) to `value`, a [`service_value`].
    SetService {
        /// The [`service_index`] of (protocol, port).
        index: u32,
        /// The value.
        value: u32,
    },
    /// Create the `fragments` entry `key` with value `slot`. No other rule holds the key (the
    /// registry checked), so write it create-only (`BPF_NOEXIST`).
    InsertFragmentRule {
        /// The [`fragment_key`] of (address, protocol).
        key: [u8; FRAGMENT_KEY_SIZE as usize],
        /// The slot.
        slot: u32,
    },
    /// Delete the `fragments` entry `key`; an absent key is not an error (a failed insert
    /// may never have written it).
    RemoveFragmentRule {
        /// The [`fragment_key`] of (address, protocol).
        key: [u8; FRAGMENT_KEY_SIZE as usize],
    },
}

/// Arrakis' filters name ports; fragments past the first carry none, so they are steered by
/// address: "IPv4 fragments of `protocol` to `addr` go to `slot`" (see [`crate::filter`],
/// "Fragments", for what that means for the kernel's traffic on the same address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentRule {
    /// The protocol of the fragments (the IPv4 header's protocol field).
    pub protocol: Protocol,
    /// Their destination address.
    pub addr: Ipv4Addr,
    /// The slot whose socket on a fragment's queue receives it.
    pub slot: u32,
}

impl FragmentRule {
    /// The rule's `fragments` key.
    pub fn key(&self) -> [u8; FRAGMENT_KEY_SIZE as usize] {
        fragment_key(self.addr.octets(), self.protocol)
    }
}

/// A held fragment rule: its slot and how many holders share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FragmentState {
    slot: u32,
    holders: u32,
}

/// What the registry remembers of one filter, to check conflicts and to remove it.
#[derive(Clone, Debug)]
struct FilterRecord {
    protocol: Protocol,
    ports: PortRange,
    slot: u32,
    /// The filter accepts any peer: its peers were empty or held `0.0.0.0/0`.
    any_peer: bool,
    /// Its other prefixes, distinct and sorted; each is one trie entry per port. An any-peer
    /// filter keeps them too, since they can still be the longest match against another
    /// filter's shorter prefix.
    peers: Vec<Ipv4Prefix>,
}

impl FilterRecord {
    fn new(spec: &FilterSpec) -> Self {
        let mut peers = spec.peers.clone();
        peers.sort_unstable_by_key(|p| (u32::from(p.addr), p.len));
        peers.dedup();
        let any_peer = peers.is_empty() || peers.iter().any(Ipv4Prefix::is_empty);
        peers.retain(|p| !p.is_empty());
        Self {
            protocol: spec.protocol,
            ports: spec.ports,
            slot: spec.slot,
            any_peer,
            peers,
        }
    }

    /// The `services` indices of the filter's ports.
    fn services(&self) -> impl Iterator<Item = u32> + '_ {
        self.ports
            .ports()
            .map(move |port| service_index(self.protocol, port))
    }

    /// The trie entries the filter holds: one per port and prefix.
    fn peer_entries(&self) -> u64 {
        u64::from(self.ports.count()) * self.peers.len() as u64
    }
}

/// What the registry knows of one (protocol, port) that has filters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ServiceState {
    /// The filter that accepts any peer here, if any.
    any_peer: Option<u32>,
    /// The port's entries in the `peers` trie, over all its restricted filters.
    peer_entries: u32,
}

impl ServiceState {
    /// The state with filter `id` (not yet counted) added.
    fn with(self, id: u32, record: &FilterRecord) -> Self {
        assert!(
            !(record.any_peer && self.any_peer.is_some()),
            "two any-peer filters on one port"
        );
        Self {
            any_peer: if record.any_peer {
                Some(id)
            } else {
                self.any_peer
            },
            peer_entries: self.peer_entries + record.peers.len() as u32,
        }
    }

    /// The state with filter `id` (counted) removed; the inverse of [`ServiceState::with`].
    fn without(self, id: u32, record: &FilterRecord) -> Self {
        if record.any_peer {
            assert_eq!(self.any_peer, Some(id), "removing a filter never added");
        }
        Self {
            any_peer: if record.any_peer { None } else { self.any_peer },
            peer_entries: self
                .peer_entries
                .checked_sub(record.peers.len() as u32)
                .expect("removing a filter never added"),
        }
    }

    /// The `services` value the program reads.
    fn value(self) -> u32 {
        service_value(self.any_peer, self.peer_entries > 0)
    }
}

/// A filter with an id that the [`Registry`] does not hold: one being added
/// ([`Registry::stage`]) or one just removed ([`Registry::remove`]). It carries what
/// [`Registry::install_ops`] and [`Registry::clear_ops`] need, and must end in
/// [`Registry::commit`] or [`Registry::release`], or its id is lost until the registry goes.
#[derive(Debug)]
#[must_use = "a staged filter holds an id: commit or release it"]
pub struct StagedFilter {
    id: u32,
    record: FilterRecord,
}

impl StagedFilter {
    /// The filter's id (its index in the `filters` map).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The slot its packets go to.
    pub fn slot(&self) -> u32 {
        self.record.slot
    }
}

/// Filter ids in use and free, and a mirror of the `services` and `peers` maps.
///
/// Call order, for one change at a time (the caller holds the registry under its lock for
/// the whole change):
///
/// - Adding: [`Registry::stage`] checks the filter and reserves an id; apply every
///   [`Registry::install_ops`] in order, stopping at the first failure; on success
///   [`Registry::commit`], on failure apply [`Registry::clear_ops`] (carrying on past errors)
///   and [`Registry::release`].
/// - Removing: [`Registry::remove`] forgets the filter; apply every [`Registry::clear_ops`]
///   in order (carrying on past errors), then [`Registry::release`] the id.
/// - Adding a fragment rule: [`Registry::fragment_rule_op`] checks it and says which write,
///   if any, it needs; apply it, and on success [`Registry::commit_fragment_rule`].
/// - Removing one: [`Registry::remove_fragment_rule`] forgets one holder and returns the
///   write to apply when it was the last.
#[derive(Debug)]
pub struct Registry {
    filters: HashMap<u32, FilterRecord>,
    /// Every service with a filter; a service not here has the value 0.
    services: HashMap<u32, ServiceState>,
    /// The `peers` trie: (service index, prefix) to filter id. Its length is the trie's.
    peers: HashMap<(u32, Ipv4Prefix), u32>,
    /// Free ids, popped from the end (lowest id first).
    free_ids: Vec<u32>,
    /// The `fragments` map: (address, protocol) to its rule's slot and holders.
    fragments: HashMap<(Ipv4Addr, Protocol), FragmentState>,
    slots_max: u32,
    filters_max: u32,
    peers_max: u32,
    fragment_rules_max: u32,
}

impl Registry {
    /// An empty registry for maps created with `options`.
    ///
    /// # Errors
    ///
    /// [`RegistryError::InvalidOptions`] from [`FilterOptions::validate`].
    pub fn new(options: &FilterOptions) -> Result<Self, RegistryError> {
        options.validate()?;
        Ok(Self {
            filters: HashMap::new(),
            services: HashMap::new(),
            peers: HashMap::new(),
            free_ids: (0..options.filters_max).rev().collect(),
            fragments: HashMap::new(),
            slots_max: options.slots_max,
            filters_max: options.filters_max,
            peers_max: options.peers_max,
            fragment_rules_max: options.fragment_rules_max,
        })
    }

    /// The `fragments` entries the held rules use, of [`FilterOptions::fragment_rules_max`].
    pub fn fragment_rules(&self) -> usize {
        self.fragments.len()
    }

    /// The slot fragments of `protocol` to `addr` go to, if a rule holds them.
    pub fn fragment_slot(&self, addr: Ipv4Addr, protocol: Protocol) -> Option<u32> {
        self.fragments
            .get(&(addr, protocol))
            .map(|state| state.slot)
    }

    /// Checks `rule` against the options and the rules held, and returns the write that
    /// installs it: `None` when the same rule is held already (the new holder shares its
    /// entry). Nothing is recorded until [`Registry::commit_fragment_rule`].
    ///
    /// # Errors
    ///
    /// In the order checked: [`RegistryError::SlotOutOfRange`];
    /// [`RegistryError::FragmentRuleConflict`] if the address and protocol go to another
    /// slot; [`RegistryError::FragmentRulesExhausted`]. A refused rule changes nothing.
    pub fn fragment_rule_op(&self, rule: &FragmentRule) -> Result<Option<MapOp>, RegistryError> {
        if rule.slot >= self.slots_max {
            return Err(RegistryError::SlotOutOfRange {
                slot: rule.slot,
                slots_max: self.slots_max,
            });
        }
        match self.fragments.get(&(rule.addr, rule.protocol)) {
            Some(state) if state.slot == rule.slot => Ok(None),
            Some(state) => Err(RegistryError::FragmentRuleConflict {
                protocol: rule.protocol,
                addr: rule.addr,
                existing: state.slot,
            }),
            None if self.fragments.len() >= self.fragment_rules_max as usize => {
                Err(RegistryError::FragmentRulesExhausted {
                    fragment_rules_max: self.fragment_rules_max,
                })
            }
            None => Ok(Some(MapOp::InsertFragmentRule {
                key: rule.key(),
                slot: rule.slot,
            })),
        }
    }

    /// Records one more holder of `rule`, whose [`Registry::fragment_rule_op`] write (if any)
    /// succeeded. Paired with [`Registry::remove_fragment_rule`].
    ///
    /// # Panics
    ///
    /// If the address and protocol are held for another slot (the check was skipped).
    pub fn commit_fragment_rule(&mut self, rule: &FragmentRule) {
        let state = self
            .fragments
            .entry((rule.addr, rule.protocol))
            .or_insert(FragmentState {
                slot: rule.slot,
                holders: 0,
            });
        assert_eq!(state.slot, rule.slot, "fragment rule committed unchecked");
        state.holders += 1;
    }

    /// Forgets one holder of `rule` and returns the write that deletes its entry when that
    /// was the last; `None` if others still hold it, or if the rule is not held at all.
    pub fn remove_fragment_rule(&mut self, rule: &FragmentRule) -> Option<MapOp> {
        let key = (rule.addr, rule.protocol);
        let state = self.fragments.get_mut(&key)?;
        if state.slot != rule.slot {
            return None;
        }
        state.holders -= 1;
        if state.holders > 0 {
            return None;
        }
        self.fragments.remove(&key);
        Some(MapOp::RemoveFragmentRule { key: rule.key() })
    }

    /// The number of filters held.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether no filter is held; then no port has a `services` entry and the trie is empty.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The `peers` trie entries the held filters use, of [`FilterOptions::peers_max`].
    pub fn peer_entries(&self) -> u32 {
        u32::try_from(self.peers.len()).expect("the trie holds at most peers_max")
    }

    /// The number of (protocol, port) pairs with a non-zero `services` entry.
    pub fn services_len(&self) -> usize {
        self.services.len()
    }

    /// The `services` value that (`protocol`, `port`) has with the held filters.
    pub fn service_value(&self, protocol: Protocol, port: u16) -> u32 {
        self.service(service_index(protocol, port)).value()
    }

    /// Whether filter `id` is held.
    pub fn contains(&self, id: u32) -> bool {
        self.filters.contains_key(&id)
    }

    /// The state of `service`, empty if no filter covers it.
    fn service(&self, service: u32) -> ServiceState {
        self.services.get(&service).copied().unwrap_or_default()
    }

    /// Checks `spec` against the options and the filters held and reserves an id for it.
    /// Nothing is recorded until [`Registry::commit`].
    ///
    /// # Errors
    ///
    /// In the order checked: [`RegistryError::SlotOutOfRange`];
    /// [`RegistryError::PeersExhausted`]; [`RegistryError::Overlap`] if this filter and
    /// another one on a shared port both accept any peer; [`RegistryError::PeerOverlap`] if
    /// both list the same prefix on a shared port; [`RegistryError::FiltersExhausted`]. A
    /// refused filter changes nothing.
    pub fn stage(&mut self, spec: &FilterSpec) -> Result<StagedFilter, RegistryError> {
        let Direction::Receive = spec.direction;
        if spec.slot >= self.slots_max {
            return Err(RegistryError::SlotOutOfRange {
                slot: spec.slot,
                slots_max: self.slots_max,
            });
        }
        let record = FilterRecord::new(spec);
        // Capacity first: it also bounds the work of the conflict check.
        let needed = record.peer_entries();
        let free = self.peers_max.saturating_sub(self.peer_entries());
        if needed > u64::from(free) {
            return Err(RegistryError::PeersExhausted {
                needed: usize::try_from(needed).unwrap_or(usize::MAX),
                free,
                peers_max: self.peers_max,
            });
        }
        self.check_conflicts(&record)?;
        let Some(id) = self.free_ids.pop() else {
            return Err(RegistryError::FiltersExhausted {
                filters_max: self.filters_max,
            });
        };
        Ok(StagedFilter { id, record })
    }

    /// Refuses a filter that no packet could tell apart from one already here, naming the
    /// first port (in order) where that happens. Costs one hash lookup per port, plus one per
    /// port and prefix on ports that have filters: at most the trie entries the filter needs,
    /// which the caller has bounded by `peers_max` first.
    fn check_conflicts(&self, record: &FilterRecord) -> Result<(), RegistryError> {
        for port in record.ports.ports() {
            let service = service_index(record.protocol, port);
            let Some(state) = self.services.get(&service) else {
                continue;
            };
            if let (true, Some(existing)) = (record.any_peer, state.any_peer) {
                return Err(RegistryError::Overlap {
                    protocol: record.protocol,
                    port,
                    existing,
                });
            }
            for &peer in &record.peers {
                if let Some(&existing) = self.peers.get(&(service, peer)) {
                    return Err(RegistryError::PeerOverlap {
                        protocol: record.protocol,
                        port,
                        peer,
                        existing,
                    });
                }
            }
        }
        Ok(())
    }

    /// The writes that install `staged`, which this registry does not hold, in the order of
    /// the module docs: its `filters` entry, then its trie entries, then its ports' `services`
    /// entries, computed as the held filters plus this one. Apply them in order and stop at
    /// the first failure.
    ///
    /// # Panics
    ///
    /// If the registry holds `staged`'s id (it was committed already).
    pub fn install_ops<'a>(&'a self, staged: &'a StagedFilter) -> impl Iterator<Item = MapOp> + 'a {
        let id = staged.id;
        let record = &staged.record;
        assert!(!self.contains(id), "filter {id} is installed already");
        let entry = MapOp::SetFilter {
            id,
            entry: FilterEntry {
                flags: FILTER_F_ACTIVE,
                slot: record.slot,
            },
        };
        let peers = record.services().flat_map(move |service| {
            record.peers.iter().map(move |p| MapOp::InsertPeer {
                key: peer_key(service, p.addr.octets(), p.len),
                value: id + 1,
            })
        });
        let services = record.services().map(move |service| MapOp::SetService {
            index: service,
            value: self.service(service).with(id, record).value(),
        });
        std::iter::once(entry).chain(peers).chain(services)
    }

    /// The writes that remove `staged`, which this registry does not hold (it was removed, or
    /// its install failed), in the reverse order of [`Registry::install_ops`]: its ports'
    /// `services` entries are rewritten from the held filters, which restores them to what the
    /// other filters need, then its trie entries and its `filters` entry go. They tolerate
    /// entries that were never written; apply them all, carrying on past errors.
    ///
    /// # Panics
    ///
    /// If the registry holds `staged`'s id.
    pub fn clear_ops<'a>(&'a self, staged: &'a StagedFilter) -> impl Iterator<Item = MapOp> + 'a {
        let id = staged.id;
        let record = &staged.record;
        assert!(!self.contains(id), "filter {id} is still held");
        let services = record.services().map(move |service| MapOp::SetService {
            index: service,
            value: self.service(service).value(),
        });
        let peers = record.services().flat_map(move |service| {
            record.peers.iter().map(move |p| MapOp::RemovePeer {
                key: peer_key(service, p.addr.octets(), p.len),
                value: id + 1,
            })
        });
        let entry = MapOp::SetFilter {
            id,
            entry: FilterEntry::default(),
        };
        services.chain(peers).chain(std::iter::once(entry))
    }

    /// Records `staged`, whose [`Registry::install_ops`] all succeeded, and returns its id.
    /// Paired with [`Registry::remove`].
    pub fn commit(&mut self, staged: StagedFilter) -> u32 {
        let StagedFilter { id, record } = staged;
        for service in record.services() {
            let state = self.service(service).with(id, &record);
            self.services.insert(service, state);
            for &peer in &record.peers {
                let previous = self.peers.insert((service, peer), id);
                assert!(
                    previous.is_none(),
                    "two filters with one prefix on one port"
                );
            }
        }
        let previous = self.filters.insert(id, record);
        assert!(previous.is_none(), "filter id {id} added twice");
        id
    }

    /// Forgets filter `id` and returns it staged for [`Registry::clear_ops`]; afterwards the
    /// mirror is as it was before [`Registry::commit`]. `None` if `id` is not held. The id is
    /// not free until [`Registry::release`].
    pub fn remove(&mut self, id: u32) -> Option<StagedFilter> {
        let record = self.filters.remove(&id)?;
        for service in record.services() {
            let state = self.service(service).without(id, &record);
            if state == ServiceState::default() {
                self.services.remove(&service);
            } else {
                self.services.insert(service, state);
            }
            for &peer in &record.peers {
                let owner = self.peers.remove(&(service, peer));
                assert_eq!(owner, Some(id), "trie mirror lost a prefix of filter {id}");
            }
        }
        Some(StagedFilter { id, record })
    }

    /// Frees the id of `staged`, a filter whose install failed or that was removed, once its
    /// [`Registry::clear_ops`] were applied. The id is the next one handed out.
    ///
    /// # Panics
    ///
    /// If the registry holds `staged`'s id.
    pub fn release(&mut self, staged: StagedFilter) {
        assert!(
            !self.contains(staged.id),
            "releasing held filter {}",
            staged.id
        );
        debug_assert!(!self.free_ids.contains(&staged.id), "id freed twice");
        self.free_ids.push(staged.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Counter, SERVICE_F_PEERS};
    use std::collections::BTreeMap;

    fn prefix(a: [u8; 4], len: u8) -> Ipv4Prefix {
        Ipv4Prefix::new(Ipv4Addr::from(a), len).unwrap()
    }

    fn spec_to(
        slot: u32,
        protocol: Protocol,
        ports: PortRange,
        peers: Vec<Ipv4Prefix>,
    ) -> FilterSpec {
        FilterSpec {
            direction: Direction::Receive,
            protocol,
            peers,
            ports,
            slot,
        }
    }

    fn spec(protocol: Protocol, ports: PortRange, peers: Vec<Ipv4Prefix>) -> FilterSpec {
        spec_to(1, protocol, ports, peers)
    }

    fn range(first: u16, last: u16) -> PortRange {
        PortRange::new(first, last).unwrap()
    }

    /// The filter program's maps as plain collections, changed only by [`MapOp`]s with the
    /// kernel's semantics, and read the way the program reads them.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    struct Maps {
        /// Non-zero `services` entries.
        services: BTreeMap<u32, u32>,
        /// Non-zero `filters` entries.
        filters: BTreeMap<u32, FilterEntry>,
        peers: BTreeMap<[u8; PEER_KEY_SIZE as usize], u32>,
        /// The `fragments` hash.
        fragments: BTreeMap<[u8; FRAGMENT_KEY_SIZE as usize], u32>,
    }

    impl Maps {
        /// Applies `op` as the kernel would, or fails it as the kernel would (a create-only
        /// write of an existing key).
        fn apply(&mut self, op: MapOp) -> Result<(), String> {
            match op {
                MapOp::SetFilter { id, entry } => {
                    if entry == FilterEntry::default() {
                        self.filters.remove(&id);
                    } else {
                        self.filters.insert(id, entry);
                    }
                }
                MapOp::InsertPeer { key, value } => {
                    if self.peers.contains_key(&key) {
                        return Err(format!("EEXIST for peer key {key:?}"));
                    }
                    self.peers.insert(key, value);
                }
                MapOp::RemovePeer { key, value } => {
                    if self.peers.get(&key) == Some(&value) {
                        self.peers.remove(&key);
                    }
                }
                MapOp::SetService { index, value } => {
                    if value == 0 {
                        self.services.remove(&index);
                    } else {
                        self.services.insert(index, value);
                    }
                }
                MapOp::InsertFragmentRule { key, slot } => {
                    if self.fragments.contains_key(&key) {
                        return Err(format!("EEXIST for fragment key {key:?}"));
                    }
                    self.fragments.insert(key, slot);
                }
                MapOp::RemoveFragmentRule { key } => {
                    self.fragments.remove(&key);
                }
            }
            Ok(())
        }

        fn apply_all(&mut self, ops: impl IntoIterator<Item = MapOp>) {
            for op in ops {
                self.apply(op).unwrap();
            }
        }

        /// The longest-prefix match of an LPM trie over the 64 data bits of a [`peer_key`].
        fn lpm(&self, data: [u8; 8]) -> Option<u32> {
            let bits = u64::from_be_bytes(data);
            self.peers
                .iter()
                .filter(|(key, _)| {
                    let len = u32::from_ne_bytes(key[..4].try_into().unwrap());
                    let stored = u64::from_be_bytes(key[4..].try_into().unwrap());
                    let mask = u64::MAX.checked_shl(64 - len).unwrap_or(0);
                    bits & mask == stored & mask
                })
                .max_by_key(|(key, _)| u32::from_ne_bytes(key[..4].try_into().unwrap()))
                .map(|(_, &value)| value)
        }

        /// What the filter program does with a UDP/TCP packet (steps 3 to 5 of
        /// [`crate::filter`]): the filter id and slot it goes to, or the counter of its pass.
        fn steer(
            &self,
            protocol: Protocol,
            port: u16,
            src: [u8; 4],
        ) -> Result<(u32, u32), Counter> {
            let service = service_index(protocol, port);
            let value = self.services.get(&service).copied().unwrap_or(0);
            if value == 0 {
                return Err(Counter::NoFilter);
            }
            let mut filter = value;
            if value & SERVICE_F_PEERS != 0 {
                filter = value & SERVICE_FILTER_MASK;
                let mut data = [0u8; 8];
                data[..4].copy_from_slice(&service.to_be_bytes());
                data[4..].copy_from_slice(&src);
                if let Some(v) = self.lpm(data) {
                    filter = v;
                }
                if filter == 0 {
                    return Err(Counter::PeerRejected);
                }
            }
            let id = filter - 1;
            match self.filters.get(&id) {
                Some(e) if e.flags & FILTER_F_ACTIVE != 0 => Ok((id, e.slot)),
                _ => Err(Counter::NoFilter),
            }
        }
    }

    /// Adds one holder of `rule` the way the control plane does, applying its write.
    fn add_fragment_rule(
        registry: &mut Registry,
        maps: &mut Maps,
        rule: &FragmentRule,
    ) -> Result<(), RegistryError> {
        let op = registry.fragment_rule_op(rule)?;
        maps.apply_all(op);
        registry.commit_fragment_rule(rule);
        Ok(())
    }

    #[test]
    fn fragment_rules_are_shared_within_a_slot_and_refused_across_slots() {
        let mut registry = Registry::new(&FilterOptions {
            fragment_rules_max: 2,
            ..FilterOptions::default()
        })
        .unwrap();
        let mut maps = Maps::default();
        let ours = Ipv4Addr::new(10, 77, 0, 2);
        let udp = FragmentRule {
            protocol: Protocol::Udp,
            addr: ours,
            slot: 1,
        };
        add_fragment_rule(&mut registry, &mut maps, &udp).unwrap();
        assert_eq!(maps.fragments, BTreeMap::from([(udp.key(), 1)]));
        assert_eq!(registry.fragment_slot(ours, Protocol::Udp), Some(1));
        assert_eq!(registry.fragment_slot(ours, Protocol::Tcp), None);
        // A second service of slot 1 on the address shares the entry: no write.
        assert_eq!(registry.fragment_rule_op(&udp), Ok(None));
        registry.commit_fragment_rule(&udp);
        // Another slot cannot have the same address's UDP fragments.
        let other_slot = FragmentRule { slot: 2, ..udp };
        assert_eq!(
            registry.fragment_rule_op(&other_slot),
            Err(RegistryError::FragmentRuleConflict {
                protocol: Protocol::Udp,
                addr: ours,
                existing: 1,
            })
        );
        // ... but may have its TCP fragments, until the table is full.
        let tcp = FragmentRule {
            protocol: Protocol::Tcp,
            ..other_slot
        };
        add_fragment_rule(&mut registry, &mut maps, &tcp).unwrap();
        let elsewhere = FragmentRule {
            addr: Ipv4Addr::new(10, 77, 0, 3),
            ..udp
        };
        assert_eq!(
            registry.fragment_rule_op(&elsewhere),
            Err(RegistryError::FragmentRulesExhausted {
                fragment_rules_max: 2
            })
        );
        assert!(matches!(
            registry.fragment_rule_op(&FragmentRule { slot: 16, ..udp }),
            Err(RegistryError::SlotOutOfRange { slot: 16, .. })
        ));
        // The entry goes with its last holder, and only then.
        assert_eq!(registry.remove_fragment_rule(&udp), None);
        assert_eq!(maps.fragments.len(), 2);
        let op = registry.remove_fragment_rule(&udp);
        assert_eq!(op, Some(MapOp::RemoveFragmentRule { key: udp.key() }));
        maps.apply_all(op);
        assert_eq!(
            registry.remove_fragment_rule(&udp),
            None,
            "not held any more"
        );
        // Removing a rule nobody holds for that slot changes nothing.
        assert_eq!(
            registry.remove_fragment_rule(&FragmentRule { slot: 3, ..tcp }),
            None
        );
        maps.apply_all(registry.remove_fragment_rule(&tcp));
        assert!(maps.fragments.is_empty());
        assert_eq!(registry.fragment_rules(), 0);
        // Filters and fragment rules are independent tables.
        assert!(registry.is_empty());
    }

    #[test]
    fn prefixes_and_ranges_validate() {
        assert_eq!(
            prefix([10, 1, 2, 3], 16),
            Ipv4Prefix::new(Ipv4Addr::new(10, 1, 0, 0), 16).unwrap()
        );
        assert_eq!(prefix([10, 1, 2, 3], 0).addr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            Ipv4Prefix::new(Ipv4Addr::LOCALHOST, 33),
            Err(RegistryError::InvalidPrefix { len: 33 })
        );
        assert_eq!(
            PortRange::new(5, 4),
            Err(RegistryError::InvalidPortRange { first: 5, last: 4 })
        );
        assert_eq!(range(10, 20).count(), 11);
        assert_eq!(PortRange::single(7).count(), 1);
        assert_eq!(range(0, 65535).count(), 65536);
        assert!(range(10, 20).contains(20) && !range(10, 20).contains(21));
        assert_eq!(prefix([10, 1, 2, 3], 16).to_string(), "10.1.0.0/16");
        let p = prefix([10, 1, 0, 0], 16);
        assert!(p.contains(Ipv4Addr::new(10, 1, 255, 1)));
        assert!(!p.contains(Ipv4Addr::new(10, 2, 0, 0)));
        assert!(prefix([0; 4], 0).contains(Ipv4Addr::BROADCAST));
        assert!(Ipv4Prefix::host(Ipv4Addr::LOCALHOST).contains(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn options_validate() {
        let ok = FilterOptions::default();
        ok.validate().unwrap();
        let bad = |o: FilterOptions| matches!(o.validate(), Err(RegistryError::InvalidOptions(_)));
        assert!(bad(FilterOptions {
            queues_max: 0,
            ..ok
        }));
        assert!(bad(FilterOptions {
            filters_max: 0,
            ..ok
        }));
        assert!(bad(FilterOptions {
            queues_max: 1 << 10,
            slots_max: 1 << 7,
            ..ok
        }));
        assert!(bad(FilterOptions {
            filters_max: FILTERS_MAX_LIMIT + 1,
            ..ok
        }));
        assert!(bad(FilterOptions {
            arp: Steer::Slot(16),
            ..ok
        }));
        assert!(Registry::new(&FilterOptions { slots_max: 0, ..ok }).is_err());
        assert_eq!(ok.xsks_len(), 256);
        assert_eq!(ok.xsk_index(2, 3), Ok(2 * 16 + 3));
        assert_eq!(
            ok.xsk_index(16, 0),
            Err(RegistryError::SlotOutOfRange {
                slot: 16,
                slots_max: 16
            })
        );
        assert_eq!(
            ok.xsk_index(0, 16),
            Err(RegistryError::QueueOutOfRange {
                queue: 16,
                queues_max: 16
            })
        );
        let spec = FilterOptions {
            arp: Steer::Slot(2),
            ..ok
        }
        .program_spec();
        assert_eq!(
            (spec.arp, spec.other_ipv4, spec.queues_max),
            (Steer::Slot(2), Steer::Kernel, 16)
        );
    }

    /// Adds `spec` to `registry` and `maps`, as the control plane does.
    fn add(
        registry: &mut Registry,
        maps: &mut Maps,
        spec: &FilterSpec,
    ) -> Result<u32, RegistryError> {
        let staged = registry.stage(spec)?;
        maps.apply_all(registry.install_ops(&staged));
        Ok(registry.commit(staged))
    }

    /// Removes filter `id` from `registry` and `maps`, as the control plane does.
    fn remove(registry: &mut Registry, maps: &mut Maps, id: u32) {
        let staged = registry.remove(id).unwrap();
        maps.apply_all(registry.clear_ops(&staged));
        registry.release(staged);
    }

    /// The registry's mirror holds nothing, and agrees with itself.
    fn assert_empty(registry: &Registry) {
        assert!(registry.is_empty());
        assert!(registry.services.is_empty(), "{:?}", registry.services);
        assert!(registry.peers.is_empty(), "{:?}", registry.peers);
    }

    #[test]
    fn writes_come_in_the_documented_order() {
        let mut registry = Registry::new(&FilterOptions::default()).unwrap();
        let staged = registry
            .stage(&spec_to(
                3,
                Protocol::Tcp,
                range(80, 81),
                vec![prefix([10, 0, 0, 0], 8), prefix([192, 168, 0, 0], 16)],
            ))
            .unwrap();
        let id = staged.id();
        assert_eq!((id, staged.slot()), (0, 3));
        let s80 = service_index(Protocol::Tcp, 80);
        let s81 = service_index(Protocol::Tcp, 81);
        let peer = |service, a, len| peer_key(service, a, len);
        let active = FilterEntry {
            flags: FILTER_F_ACTIVE,
            slot: 3,
        };
        let install: Vec<MapOp> = registry.install_ops(&staged).collect();
        assert_eq!(
            install,
            vec![
                MapOp::SetFilter { id, entry: active },
                MapOp::InsertPeer {
                    key: peer(s80, [10, 0, 0, 0], 8),
                    value: 1
                },
                MapOp::InsertPeer {
                    key: peer(s80, [192, 168, 0, 0], 16),
                    value: 1
                },
                MapOp::InsertPeer {
                    key: peer(s81, [10, 0, 0, 0], 8),
                    value: 1
                },
                MapOp::InsertPeer {
                    key: peer(s81, [192, 168, 0, 0], 16),
                    value: 1
                },
                MapOp::SetService {
                    index: s80,
                    value: SERVICE_F_PEERS
                },
                MapOp::SetService {
                    index: s81,
                    value: SERVICE_F_PEERS
                },
            ]
        );
        // A failed install is cleared with the same writes as a removal.
        let rollback: Vec<MapOp> = registry.clear_ops(&staged).collect();
        assert_eq!(registry.commit(staged), id);
        assert_eq!(registry.peer_entries(), 4);
        assert_eq!(registry.services_len(), 2);
        assert_eq!(registry.service_value(Protocol::Tcp, 80), SERVICE_F_PEERS);
        let removed = registry.remove(id).unwrap();
        let clear: Vec<MapOp> = registry.clear_ops(&removed).collect();
        assert_eq!(clear, rollback);
        assert_eq!(
            clear,
            vec![
                MapOp::SetService {
                    index: s80,
                    value: 0
                },
                MapOp::SetService {
                    index: s81,
                    value: 0
                },
                MapOp::RemovePeer {
                    key: peer(s80, [10, 0, 0, 0], 8),
                    value: 1
                },
                MapOp::RemovePeer {
                    key: peer(s80, [192, 168, 0, 0], 16),
                    value: 1
                },
                MapOp::RemovePeer {
                    key: peer(s81, [10, 0, 0, 0], 8),
                    value: 1
                },
                MapOp::RemovePeer {
                    key: peer(s81, [192, 168, 0, 0], 16),
                    value: 1
                },
                MapOp::SetFilter {
                    id,
                    entry: FilterEntry::default()
                },
            ]
        );
        registry.release(removed);
        assert_empty(&registry);

        // On a port shared with an any-peer filter, the services value keeps it.
        let mut maps = Maps::default();
        let any = add(
            &mut registry,
            &mut maps,
            &spec(Protocol::Udp, PortRange::single(5), vec![]),
        )
        .unwrap();
        assert_eq!(any, 0, "the released id is handed out again");
        let staged = registry
            .stage(&spec(
                Protocol::Udp,
                PortRange::single(5),
                vec![prefix([10, 0, 0, 0], 8)],
            ))
            .unwrap();
        let last = registry.install_ops(&staged).last().unwrap();
        assert_eq!(
            last,
            MapOp::SetService {
                index: service_index(Protocol::Udp, 5),
                value: service_value(Some(any), true)
            }
        );
        registry.release(staged);
    }

    #[test]
    fn ambiguous_filters_are_refused() {
        let mut registry = Registry::new(&FilterOptions::default()).unwrap();
        let mut maps = Maps::default();
        let any = add(
            &mut registry,
            &mut maps,
            &spec(Protocol::Udp, range(100, 200), vec![]),
        )
        .unwrap();
        let ten = add(
            &mut registry,
            &mut maps,
            &spec(
                Protocol::Udp,
                range(150, 250),
                vec![prefix([10, 0, 0, 0], 8), prefix([192, 168, 1, 1], 32)],
            ),
        )
        .unwrap();
        let before = maps.clone();

        // A second any-peer filter, also spelled 0.0.0.0/0, on a shared port.
        for peers in [vec![], vec![prefix([0, 0, 0, 0], 0)]] {
            let e = registry
                .stage(&spec(Protocol::Udp, range(190, 300), peers))
                .unwrap_err();
            assert_eq!(
                e,
                RegistryError::Overlap {
                    protocol: Protocol::Udp,
                    port: 190,
                    existing: any
                }
            );
            assert!(
                e.to_string().contains("give this filter peer prefixes"),
                "{e}"
            );
        }
        // The same prefix (host bits do not matter) on a shared port, whatever else is listed.
        let e = registry
            .stage(&spec(
                Protocol::Udp,
                range(240, 260),
                vec![prefix([172, 16, 0, 0], 12), prefix([10, 20, 30, 40], 8)],
            ))
            .unwrap_err();
        assert_eq!(
            e,
            RegistryError::PeerOverlap {
                protocol: Protocol::Udp,
                port: 240,
                peer: prefix([10, 0, 0, 0], 8),
                existing: ten
            }
        );
        let message = e.to_string();
        assert!(message.contains("10.0.0.0/8"), "{message}");
        assert!(message.contains("list another prefix"), "{message}");
        // A refused filter changes nothing and uses no id.
        assert_eq!(maps, before);
        assert_eq!(registry.len(), 2);

        // Different lengths, other ports, or the other protocol are all fine.
        let mut ok = vec![];
        for s in [
            spec(
                Protocol::Udp,
                range(150, 250),
                vec![prefix([10, 0, 0, 0], 9), prefix([192, 168, 1, 0], 31)],
            ),
            spec(
                Protocol::Udp,
                range(251, 300),
                vec![prefix([10, 0, 0, 0], 8)],
            ),
            spec(
                Protocol::Tcp,
                range(100, 200),
                vec![prefix([10, 0, 0, 0], 8)],
            ),
            spec(Protocol::Tcp, range(100, 200), vec![]),
        ] {
            ok.push(add(&mut registry, &mut maps, &s).unwrap());
        }
        assert_eq!(ok, vec![2, 3, 4, 5]);
        // Once the owner is gone, its prefix and its any-peer role are free again.
        remove(&mut registry, &mut maps, ten);
        ok.push(
            add(
                &mut registry,
                &mut maps,
                &spec(
                    Protocol::Udp,
                    PortRange::single(150),
                    vec![prefix([10, 0, 0, 0], 8)],
                ),
            )
            .unwrap(),
        );
        remove(&mut registry, &mut maps, any);
        ok.push(
            add(
                &mut registry,
                &mut maps,
                &spec(Protocol::Udp, range(190, 300), vec![]),
            )
            .unwrap(),
        );
        for id in ok {
            remove(&mut registry, &mut maps, id);
        }
        assert_empty(&registry);
        assert_eq!(maps, Maps::default());
    }

    #[test]
    fn capacity_and_slots_are_checked_first() {
        let mut registry = Registry::new(&FilterOptions {
            peers_max: 20,
            filters_max: 3,
            ..FilterOptions::default()
        })
        .unwrap();
        let mut maps = Maps::default();
        let a = add(
            &mut registry,
            &mut maps,
            &spec(
                Protocol::Udp,
                range(5000, 5009),
                vec![prefix([10, 0, 0, 0], 8)],
            ),
        )
        .unwrap();
        add(
            &mut registry,
            &mut maps,
            &spec(
                Protocol::Udp,
                range(5003, 5006),
                vec![prefix([10, 1, 0, 0], 16), prefix([192, 168, 0, 0], 16)],
            ),
        )
        .unwrap();
        assert_eq!(registry.peer_entries(), 18);
        // Ports × prefixes count against peers_max: 18 of 20 are used. Capacity is checked
        // before conflicts: this one would also overlap filter a.
        let e = registry
            .stage(&spec(
                Protocol::Udp,
                range(5000, 5002),
                vec![prefix([10, 0, 0, 0], 8)],
            ))
            .unwrap_err();
        assert_eq!(
            e,
            RegistryError::PeersExhausted {
                needed: 3,
                free: 2,
                peers_max: 20
            }
        );
        assert!(e.to_string().contains("raise peers_max"), "{e}");
        // A huge prefix list is refused by the count, before any work per prefix.
        let many: Vec<Ipv4Prefix> = (0..=255).map(|i| prefix([i, 0, 0, 0], 8)).collect();
        assert!(matches!(
            registry.stage(&spec(Protocol::Tcp, range(0, 65535), many)),
            Err(RegistryError::PeersExhausted { needed, .. }) if needed == 65536 * 256
        ));
        assert_eq!(
            registry
                .stage(&spec_to(16, Protocol::Udp, PortRange::single(1), vec![]))
                .unwrap_err(),
            RegistryError::SlotOutOfRange {
                slot: 16,
                slots_max: 16
            }
        );
        let third = add(
            &mut registry,
            &mut maps,
            &spec(Protocol::Udp, PortRange::single(1), vec![]),
        )
        .unwrap();
        let e = registry
            .stage(&spec(Protocol::Udp, PortRange::single(2), vec![]))
            .unwrap_err();
        assert_eq!(e, RegistryError::FiltersExhausted { filters_max: 3 });
        assert!(e.to_string().contains("raise filters_max"), "{e}");
        // The freed id is reused, and the freed entries count as free again.
        remove(&mut registry, &mut maps, a);
        assert_eq!(registry.peer_entries(), 8);
        let again = add(
            &mut registry,
            &mut maps,
            &spec(
                Protocol::Udp,
                range(1000, 1011),
                vec![prefix([1, 0, 0, 0], 8)],
            ),
        )
        .unwrap();
        assert_eq!(again, a);
        assert_eq!(registry.peer_entries(), 20);
        remove(&mut registry, &mut maps, third);
    }

    #[test]
    fn a_failed_install_is_rolled_back() {
        let mut registry = Registry::new(&FilterOptions::default()).unwrap();
        let mut maps = Maps::default();
        let a = add(
            &mut registry,
            &mut maps,
            &spec(Protocol::Udp, range(10, 12), vec![prefix([10, 0, 0, 0], 8)]),
        )
        .unwrap();
        let before = maps.clone();
        // A trie entry the registry does not know of (a bug, or another writer): the
        // create-only write fails part way and the rollback leaves that entry alone.
        let stray = peer_key(service_index(Protocol::Udp, 12), [172, 16, 0, 0], 12);
        maps.peers.insert(stray, 99);
        let staged = registry
            .stage(&spec(
                Protocol::Udp,
                range(11, 13),
                vec![prefix([172, 16, 0, 0], 12)],
            ))
            .unwrap();
        let mut failed = false;
        for op in registry.install_ops(&staged) {
            if maps.apply(op).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        maps.apply_all(registry.clear_ops(&staged));
        let id = staged.id();
        registry.release(staged);
        assert_eq!(maps.peers.remove(&stray), Some(99));
        assert_eq!(maps, before);
        // The id is handed out again, and filter a is untouched.
        let b = add(
            &mut registry,
            &mut maps,
            &spec(
                Protocol::Udp,
                range(11, 13),
                vec![prefix([172, 16, 0, 0], 12)],
            ),
        )
        .unwrap();
        assert_eq!(b, id);
        assert_eq!(maps.steer(Protocol::Udp, 11, [10, 1, 1, 1]), Ok((a, 1)));
        assert_eq!(maps.steer(Protocol::Udp, 13, [172, 17, 0, 1]), Ok((b, 1)));
        assert_eq!(
            maps.steer(Protocol::Udp, 13, [10, 1, 1, 1]),
            Err(Counter::PeerRejected)
        );
    }

    // The reference model: the rules of the module docs, written the slow and obvious way.

    /// One step of [`steering_matches_a_reference_model`].
    #[derive(Clone, Debug)]
    enum Op {
        /// Create a filter on `MODEL_PORT + first ..= + first + extra` with these indices
        /// into `MODEL_PREFIXES` (empty: any peer); if `fail_at` is set, the map write of that
        /// index (modulo their number) fails, as the kernel's may (ENOMEM).
        Create {
            tcp: bool,
            first: u16,
            extra: u16,
            peers: Vec<usize>,
            fail_at: Option<usize>,
        },
        /// Drop the live filter at this index, modulo their number.
        Remove(usize),
    }

    const MODEL_PORT: u16 = 9000;
    const MODEL_PORTS: u16 = 5;
    /// Nested and disjoint prefixes, and `0.0.0.0/0`.
    const MODEL_PREFIXES: [([u8; 4], u8); 6] = [
        ([10, 0, 0, 0], 8),
        ([10, 1, 0, 0], 16),
        ([10, 1, 2, 0], 24),
        ([10, 1, 2, 3], 32),
        ([192, 168, 0, 0], 16),
        ([0, 0, 0, 0], 0),
    ];
    /// Sources inside each prefix and outside all but `/0`.
    const MODEL_SOURCES: [[u8; 4]; 6] = [
        [10, 1, 2, 3],
        [10, 1, 2, 4],
        [10, 1, 9, 9],
        [10, 9, 9, 9],
        [192, 168, 5, 5],
        [8, 8, 8, 8],
    ];

    /// A filter as the reference model sees it: a set of prefixes on some ports, "any peer"
    /// being `0.0.0.0/0`.
    #[derive(Clone, Debug)]
    struct ModelFilter {
        id: u32,
        slot: u32,
        protocol: Protocol,
        ports: PortRange,
        prefixes: Vec<Ipv4Prefix>,
    }

    impl ModelFilter {
        fn new(spec: &FilterSpec) -> Self {
            let mut prefixes = spec.peers.clone();
            if prefixes.is_empty() {
                prefixes.push(prefix([0; 4], 0));
            }
            prefixes.sort_unstable_by_key(|p| (u32::from(p.addr()), p.len()));
            prefixes.dedup();
            Self {
                id: u32::MAX,
                slot: spec.slot,
                protocol: spec.protocol,
                ports: spec.ports,
                prefixes,
            }
        }

        fn covers(&self, protocol: Protocol, port: u16) -> bool {
            self.protocol == protocol && self.ports.contains(port)
        }

        /// Trie entries: one per port and prefix other than `/0`.
        fn peer_entries(&self) -> u32 {
            self.ports.count() * self.prefixes.iter().filter(|p| !p.is_empty()).count() as u32
        }
    }

    /// Where a packet goes: the filter of the longest prefix containing its source.
    fn model_steer(
        live: &[ModelFilter],
        protocol: Protocol,
        port: u16,
        src: [u8; 4],
    ) -> Result<(u32, u32), Counter> {
        let on_port: Vec<_> = live.iter().filter(|m| m.covers(protocol, port)).collect();
        if on_port.is_empty() {
            return Err(Counter::NoFilter);
        }
        on_port
            .iter()
            .flat_map(|m| m.prefixes.iter().map(move |&p| (p, (m.id, m.slot))))
            .filter(|&(p, _)| p.contains(Ipv4Addr::from(src)))
            .max_by_key(|&(p, _)| p.len())
            .map(|(_, target)| target)
            .ok_or(Counter::PeerRejected)
    }

    /// The first port where `candidate` would be ambiguous, and whether because both accept
    /// any peer (`true`) or because they list the same prefix (`false`).
    fn model_conflict(live: &[ModelFilter], candidate: &ModelFilter) -> Option<(u16, bool)> {
        for port in candidate.ports.ports() {
            let mut same_prefix = false;
            for other in live.iter().filter(|m| m.covers(candidate.protocol, port)) {
                for p in &candidate.prefixes {
                    if other.prefixes.contains(p) {
                        if p.is_empty() {
                            return Some((port, true));
                        }
                        same_prefix = true;
                    }
                }
            }
            if same_prefix {
                return Some((port, false));
            }
        }
        None
    }

    /// The maps the live filters call for, built from the model alone: the state every
    /// sequence of changes must leave, whatever its history.
    fn model_maps(live: &[ModelFilter]) -> Maps {
        let mut maps = Maps::default();
        for m in live {
            maps.filters.insert(
                m.id,
                FilterEntry {
                    flags: FILTER_F_ACTIVE,
                    slot: m.slot,
                },
            );
            for port in m.ports.ports() {
                let service = service_index(m.protocol, port);
                for p in m.prefixes.iter().filter(|p| !p.is_empty()) {
                    maps.peers
                        .insert(peer_key(service, p.addr().octets(), p.len()), m.id + 1);
                }
            }
        }
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            // Filters exist only on the model's ports, all among the probed ones.
            for port in MODEL_PORT - 1..=MODEL_PORT + MODEL_PORTS + 2 {
                let on_port: Vec<_> = live.iter().filter(|m| m.covers(protocol, port)).collect();
                let any = on_port
                    .iter()
                    .find(|m| m.prefixes.iter().any(Ipv4Prefix::is_empty))
                    .map(|m| m.id);
                let restricted = on_port
                    .iter()
                    .any(|m| m.prefixes.iter().any(|p| !p.is_empty()));
                let value = service_value(any, restricted);
                if value != 0 {
                    maps.services.insert(service_index(protocol, port), value);
                }
            }
        }
        maps
    }

    /// Every packet the model distinguishes: both protocols, the model's ports and one on
    /// each side, and every model source.
    fn probes() -> impl Iterator<Item = (Protocol, u16, [u8; 4])> {
        [Protocol::Udp, Protocol::Tcp]
            .into_iter()
            .flat_map(|protocol| {
                (MODEL_PORT - 1..=MODEL_PORT + MODEL_PORTS + 2).flat_map(move |port| {
                    MODEL_SOURCES
                        .into_iter()
                        .map(move |src| (protocol, port, src))
                })
            })
    }

    fn steer_all(maps: &Maps) -> Vec<Result<(u32, u32), Counter>> {
        probes()
            .map(|(protocol, port, src)| maps.steer(protocol, port, src))
            .collect()
    }

    /// Applies `ops` to `maps` one at a time, checking that every packet is steered as before
    /// the change or as after it at every step in between (the module docs' order of writes).
    /// Stops before the op at `fail_at` (which then fails) and returns whether it stopped.
    fn apply_checked(
        maps: &mut Maps,
        ops: &[MapOp],
        fail_at: Option<usize>,
    ) -> Result<bool, proptest::test_runner::TestCaseError> {
        let before = steer_all(maps);
        let mut end = maps.clone();
        end.apply_all(ops.iter().copied());
        let after = steer_all(&end);
        for (i, &op) in ops.iter().enumerate() {
            if fail_at == Some(i) {
                return Ok(true);
            }
            maps.apply(op)
                .map_err(proptest::test_runner::TestCaseError::fail)?;
            for (((probe, now), b), a) in probes().zip(steer_all(maps)).zip(&before).zip(&after) {
                proptest::prop_assert!(
                    now == *b || now == *a,
                    "after {:?}, {:?} goes to {:?}: neither before ({:?}) nor after ({:?})",
                    op,
                    probe,
                    now,
                    b,
                    a
                );
            }
        }
        Ok(false)
    }

    fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (
                any::<bool>(),
                0..MODEL_PORTS,
                0u16..3,
                proptest::collection::vec(0..MODEL_PREFIXES.len(), 0..3),
                proptest::option::weighted(0.2, 0usize..32),
            )
                .prop_map(|(tcp, first, extra, peers, fail_at)| Op::Create { tcp, first, extra, peers, fail_at }),
            1 => any::<usize>().prop_map(Op::Remove),
        ]
    }

    /// One run of operations against a registry with `options`, checking every step against
    /// the reference model.
    fn run_model(
        options: FilterOptions,
        ops: Vec<Op>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::prop_assert_eq;
        let mut registry = Registry::new(&options).unwrap();
        let mut maps = Maps::default();
        let mut live: Vec<ModelFilter> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Create {
                    tcp,
                    first,
                    extra,
                    peers,
                    fail_at,
                } => {
                    let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
                    let first = MODEL_PORT + first;
                    let peers: Vec<Ipv4Prefix> = peers
                        .iter()
                        .map(|&i| prefix(MODEL_PREFIXES[i].0, MODEL_PREFIXES[i].1))
                        .collect();
                    // Slots 1..=15 in turn.
                    let spec = spec_to(
                        step as u32 % 15 + 1,
                        protocol,
                        range(first, first + extra),
                        peers,
                    );
                    let mut model = ModelFilter::new(&spec);
                    let used: u32 = live.iter().map(ModelFilter::peer_entries).sum();
                    let want = if model.peer_entries() > options.peers_max - used {
                        Err("PeersExhausted")
                    } else if let Some((_, any)) = model_conflict(&live, &model) {
                        // (The port is checked below, against the error's.)
                        Err(if any { "Overlap" } else { "PeerOverlap" })
                    } else if live.len() == options.filters_max as usize {
                        Err("FiltersExhausted")
                    } else {
                        Ok(())
                    };
                    let untouched = maps.clone();
                    match (registry.stage(&spec), want) {
                        (Ok(staged), Ok(())) => {
                            let ops: Vec<MapOp> = registry.install_ops(&staged).collect();
                            let fail_at = fail_at.map(|i| i % ops.len());
                            if apply_checked(&mut maps, &ops, fail_at)? {
                                let clear: Vec<MapOp> = registry.clear_ops(&staged).collect();
                                maps.apply_all(clear);
                                registry.release(staged);
                                prop_assert_eq!(&maps, &untouched, "step {}: rollback", step);
                            } else {
                                model.id = registry.commit(staged);
                                live.push(model);
                            }
                        }
                        (Err(e), Err(kind)) => {
                            let got = match e {
                                RegistryError::PeersExhausted { .. } => "PeersExhausted",
                                RegistryError::Overlap { port, .. }
                                | RegistryError::PeerOverlap { port, .. } => {
                                    let (want_port, _) = model_conflict(&live, &model).unwrap();
                                    prop_assert_eq!(port, want_port, "step {}", step);
                                    if matches!(e, RegistryError::Overlap { .. }) {
                                        "Overlap"
                                    } else {
                                        "PeerOverlap"
                                    }
                                }
                                RegistryError::FiltersExhausted { .. } => "FiltersExhausted",
                                other => {
                                    return Err(proptest::test_runner::TestCaseError::fail(
                                        format!("step {step}: {other:?}"),
                                    ))
                                }
                            };
                            prop_assert_eq!(got, kind, "step {}", step);
                        }
                        (got, want) => {
                            return Err(proptest::test_runner::TestCaseError::fail(format!(
                                "step {step}: stage gave {got:?}, the model {want:?}"
                            )))
                        }
                    }
                }
                Op::Remove(i) => {
                    if !live.is_empty() {
                        let model = live.remove(i % live.len());
                        let staged = registry.remove(model.id).unwrap();
                        let ops: Vec<MapOp> = registry.clear_ops(&staged).collect();
                        apply_checked(&mut maps, &ops, None)?;
                        registry.release(staged);
                    }
                }
            }
            prop_assert_eq!(registry.len(), live.len());
            prop_assert_eq!(&maps, &model_maps(&live), "step {}", step);
            for (protocol, port, src) in probes() {
                prop_assert_eq!(
                    maps.steer(protocol, port, src),
                    model_steer(&live, protocol, port, src),
                    "step {}: {:?} port {} from {:?}",
                    step,
                    protocol,
                    port,
                    src
                );
            }
        }
        for model in live {
            let staged = registry.remove(model.id).unwrap();
            maps.apply_all(registry.clear_ops(&staged));
            registry.release(staged);
        }
        assert_empty(&registry);
        prop_assert_eq!(maps, Maps::default());
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The registry's map writes, applied by the rules of the kernel's maps and read by
        /// the rules of the program, steer every packet as the reference model says, refuse
        /// exactly the filters the model calls ambiguous or too big, roll a failed install
        /// back to the state before it, and never show a packet anything but the state before
        /// or after a change.
        #[test]
        fn steering_matches_a_reference_model(ops in proptest::collection::vec(op_strategy(), 1..12)) {
            run_model(FilterOptions::default(), ops)?;
        }

        /// The same with room for only a few filters and trie entries, so that every
        /// exhaustion path is taken.
        #[test]
        fn exhaustion_matches_a_reference_model(ops in proptest::collection::vec(op_strategy(), 1..12)) {
            run_model(FilterOptions { filters_max: 3, peers_max: 6, ..FilterOptions::default() }, ops)?;
        }
    }
}
