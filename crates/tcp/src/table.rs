//! The per-engine connection table: O(1) demultiplexing of segments to connections by a keyed
//! hash of the 4-tuple, a fixed number of fixed-size entries allocated at start-up, and the
//! chooser of local ports for active opens ([`EphemeralPorts`]).
//!
//! Shape: a slab of `capacity` slots, each holding one connection's tuple and state `V`, and
//! a bucket array of `u32` slab indexes, its length the next power of two at or above
//! 2 × `capacity`. A bucket heads a singly linked chain that runs through the slots' `next`
//! fields; free slots are chained through the same field. The bucket is chosen by the low bits
//! of SipHash-2-4 of the tuple ([`FourTuple::hash`], counter 0) under a key from the control
//! plane, so a peer who chooses its addresses and ports cannot aim them at one bucket and turn
//! every lookup into a list walk (the hash-flooding attack that an unkeyed hash, say an XOR
//! fold or the NIC's Toeplitz hash with its well-known default key, invites). The key must be
//! independent of the ISN and cookie keys: then nothing about it can be learnt from the
//! sequence numbers a peer sees. With at most one entry per two buckets, a successful lookup
//! reads on average 1.25 chain entries and an unsuccessful one 0.5 (the textbook `1 + α/2`
//! and `α` for separate chaining at load α ≤ ½), typically one cache miss in the bucket
//! array and one in the slab. The slot caches its tuple's 32-bit hash, which rejects most
//! non-matching chain entries with one compare and lets `remove` find the bucket without
//! hashing again.
//!
//! Alternative rejected: open addressing (linear probing with backward-shift deletion) in the
//! bucket array. Connections must stay put in the slab anyway, because a [`ConnIndex`] names
//! one (it becomes the app's `ConnId`, and timers and side tables are indexed by it), so the
//! probed array would hold slab indexes as the chains do and every probe would still have to
//! read the slab to compare tuples: the same two cache misses as chaining for a hit, more on
//! a miss as clusters grow, and a deletion that moves other entries around instead of
//! unlinking one. Open addressing wins when the keys live in the probed array itself; here
//! that would be 16 bytes (tuple and index) per bucket, 2–4 buckets per connection, to save
//! one pointer chase. Chaining costs 4 bytes per slot and 4 per bucket and each operation
//! touches only the entries of one chain. A doubly linked chain would make `remove` O(1)
//! in the worst case rather than in expectation, for another 4 bytes a slot; chains are
//! short, so it is not worth them.
//!
//! Stale indexes: each slot has a 32-bit generation, bumped (skipping 0) when its entry is
//! removed, and a [`ConnIndex`] carries the generation it was made with, so an index kept past
//! its connection's life finds nothing rather than the slot's next tenant. The raw `u64` form
//! ([`ConnIndex::to_raw`]) is laid out as `melange_core::Handle::to_raw` (generation high,
//! index low), so the engine's `ConnId` is the same 64 bits.
//!
//! Memory, per entry ([`slot_overhead_bytes`] and the tests' `size_of` asserts): a slot is
//! `V` plus 24 bytes (tuple 12, cached hash 4, chain link 4, generation 4) plus the tag of
//! `Option<V>`, which is free when `V` has a niche (an enum, a reference, a `NonZero*`) and
//! otherwise costs up to `align_of::<V>()` bytes, rounded up to `V`'s alignment: 24 bytes for
//! a `V` with a niche and alignment 8, 32 for one without. The buckets add 8 to 16 bytes per
//! entry of capacity (2 to 4 buckets of 4 bytes). [`ConnTable::bytes_for`] gives the total.
//!
//! Nothing here allocates after [`ConnTable::new`] or [`EphemeralPorts::new`], and no input
//! can make an operation panic: indexes that come back from an app go through
//! bounds-checked lookups, and every chain walk is bounded by the number of entries.

use core::fmt;
use core::mem::size_of;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::ops::RangeInclusive;

use thiserror::Error;

use crate::isn::FourTuple;
use crate::siphash::SipKey;

/// The most connections one table can hold, 2^20. At 32 bytes of overhead and a 1 KiB `V`
/// this is a gigabyte, far past what one engine core serves; the bound exists so a
/// configuration typo is an error rather than an out-of-memory abort.
pub const CONNECTIONS_MAX: usize = 1 << 20;

/// The end of a chain, and the free list's end.
const NIL: u32 = u32::MAX;

// Slab indexes are u32 with NIL reserved.
const _: () = assert!(CONNECTIONS_MAX < NIL as usize);
// Buckets are chosen by the low bits of a 32-bit hash, so there can be at most 2^32 of them.
const _: () = assert!((2 * CONNECTIONS_MAX).next_power_of_two().trailing_zeros() <= 32);

/// A connection's place in a [`ConnTable`]: its slab index and the slot's generation when the
/// connection was inserted. Eight bytes, `Copy`; a stale index (the connection was removed)
/// finds nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnIndex {
    index: u32,
    generation: u32,
}

impl ConnIndex {
    /// The index as one integer: generation in the high half, slab index in the low half, the
    /// layout of `melange_core::Handle::to_raw`, so the engine's `ConnId` carries it as is.
    pub const fn to_raw(self) -> u64 {
        (self.generation as u64) << 32 | self.index as u64
    }

    /// An index from [`ConnIndex::to_raw`]'s integer. Any value is accepted; one that names
    /// no live connection finds nothing at lookup. Raw 0 never names a live connection, since
    /// generations skip 0.
    pub const fn from_raw(raw: u64) -> Self {
        Self {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }

    /// The slab index, in `0..capacity` for an index the table handed out: the key of
    /// per-connection side arrays of the same capacity (timer slots, statistics).
    pub const fn slab_index(self) -> u32 {
        self.index
    }

    /// The slot's generation when this index was made.
    pub const fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Debug for ConnIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}.{}", self.index, self.generation)
    }
}

/// Why a table could not be built or an entry not inserted.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// The configured capacity is above [`CONNECTIONS_MAX`]: a configuration error. Configure
    /// at most the maximum (and more engines, if one cannot serve enough connections).
    #[error("connection table capacity {capacity} exceeds the maximum {max}")]
    CapacityTooLarge {
        /// The capacity asked for.
        capacity: usize,
        /// [`CONNECTIONS_MAX`].
        max: usize,
    },
    /// Every slot holds a connection. Refuse the new connection (answer a SYN with a cookie,
    /// if cookies are on, or drop it; fail an active open back to the app); it is a load
    /// condition, not a bug.
    #[error("connection table full ({capacity} connections)")]
    Full {
        /// The table's capacity.
        capacity: usize,
    },
    /// The tuple already has a connection: hand the segment to `existing` instead (an active
    /// open must choose another local port).
    #[error("the 4-tuple already has a connection, {existing:?}")]
    Duplicate {
        /// The connection the tuple belongs to.
        existing: ConnIndex,
    },
}

/// One slab entry. See the module documentation for its layout and size.
struct Slot<V> {
    /// The connection's tuple while live; a placeholder while free.
    tuple: FourTuple,
    /// `tuple.hash(key, 0)` while live, cached for chain walks and `remove`.
    hash: u32,
    /// While live, the next slot in the bucket's chain; while free, the next free slot;
    /// [`NIL`] at either list's end.
    next: u32,
    /// Bumped on every remove, never 0.
    generation: u32,
    /// The state, `Some` exactly while live.
    value: Option<V>,
}

/// Bytes a slot spends beyond `V`: what the table costs per entry on top of the state itself,
/// bucket array not included (see [`ConnTable::bytes_for`]).
pub const fn slot_overhead_bytes<V>() -> usize {
    size_of::<Slot<V>>() - size_of::<V>()
}

/// The tuple free slots hold; never compared, since only live slots are in chains.
const TUPLE_NONE: FourTuple = FourTuple {
    local: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    remote: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
};

/// An engine's connections, found by 4-tuple in O(1) expected time. See the module
/// documentation.
///
/// Call order: [`ConnTable::new`] at start-up; on each received segment [`ConnTable::find`]
/// with the tuple (local = the segment's destination), then [`ConnTable::get_mut`]; on a new
/// connection [`ConnTable::insert`]; when it is gone [`ConnTable::remove`]; at shutdown
/// [`ConnTable::iter`] to reset what remains.
pub struct ConnTable<V> {
    /// `capacity` slots, allocated at construction.
    slots: Vec<Slot<V>>,
    /// Chain heads, a power-of-two count at least twice `capacity`.
    buckets: Vec<u32>,
    /// `buckets.len() - 1`.
    mask: u32,
    /// The first free slot, [`NIL`] when full.
    free_head: u32,
    /// Live entries.
    len: u32,
    /// The control plane's key for the bucket hash. Debug prints no key material.
    key: SipKey,
}

impl<V> ConnTable<V> {
    /// A table of `capacity` connections under the bucket-hash `key`, everything allocated
    /// now. `key` must come from a CSPRNG (the control plane reads `getrandom(2)`) and be
    /// independent of the ISN and cookie keys.
    pub fn new(capacity: usize, key: SipKey) -> Result<Self, TableError> {
        if capacity > CONNECTIONS_MAX {
            return Err(TableError::CapacityTooLarge {
                capacity,
                max: CONNECTIONS_MAX,
            });
        }
        let bucket_count = Self::bucket_count(capacity);
        let mut slots = Vec::with_capacity(capacity);
        for i in 0..capacity {
            // Each free slot links to the next; the last ends the free list.
            let next = if i + 1 < capacity { i as u32 + 1 } else { NIL };
            slots.push(Slot {
                tuple: TUPLE_NONE,
                hash: 0,
                next,
                generation: 1,
                value: None,
            });
        }
        Ok(Self {
            slots,
            buckets: vec![NIL; bucket_count],
            // At most 2^21 buckets (checked at compile time), so the mask fits.
            mask: (bucket_count - 1) as u32,
            free_head: if capacity > 0 { 0 } else { NIL },
            len: 0,
            key,
        })
    }

    /// Buckets for `capacity` entries: the next power of two at or above twice it, so the load
    /// factor stays at or below one half.
    const fn bucket_count(capacity: usize) -> usize {
        (2 * capacity).next_power_of_two()
    }

    /// Bytes a table of `capacity` entries allocates: slots and buckets. For sizing the
    /// engine's memory budget at configuration time.
    pub const fn bytes_for(capacity: usize) -> usize {
        capacity * size_of::<Slot<V>>() + Self::bucket_count(capacity) * size_of::<u32>()
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when the table holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most connections the table holds, fixed at construction.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The bucket hash of a tuple: SipHash-2-4 under the table's key.
    fn hash(&self, tuple: &FourTuple) -> u32 {
        tuple.hash(&self.key, 0)
    }

    /// The bucket a hash selects; always in range, since `mask` is `buckets.len() - 1`.
    fn bucket_of(&self, hash: u32) -> usize {
        (hash & self.mask) as usize
    }

    /// The live slot holding `tuple`, whose hash is `hash`.
    fn find_slot(&self, hash: u32, tuple: &FourTuple) -> Option<u32> {
        let mut at = self.buckets[self.bucket_of(hash)];
        // A chain holds each live entry at most once, so len + 1 steps reach its end.
        for _ in 0..=self.len {
            let slot = self.slots.get(at as usize)?;
            if slot.hash == hash && slot.tuple == *tuple {
                return Some(at);
            }
            at = slot.next;
        }
        debug_assert!(at == NIL, "a bucket chain is longer than the table");
        None
    }

    /// The slot an index names, if it is live with the index's generation.
    fn live_slot(&self, index: ConnIndex) -> Option<&Slot<V>> {
        self.slots
            .get(index.index as usize)
            .filter(|slot| slot.generation == index.generation && slot.value.is_some())
    }

    /// The index of live slot `at`.
    fn index_at(&self, at: u32) -> ConnIndex {
        ConnIndex {
            index: at,
            generation: self.slots[at as usize].generation,
        }
    }

    /// Adds a connection on `tuple`. Gives `value` back with the error when the tuple already
    /// has a connection ([`TableError::Duplicate`], checked first, since it tells the caller
    /// where the segment belongs) or every slot is taken ([`TableError::Full`]).
    pub fn insert(&mut self, tuple: FourTuple, value: V) -> Result<ConnIndex, (TableError, V)> {
        let hash = self.hash(&tuple);
        if let Some(at) = self.find_slot(hash, &tuple) {
            let existing = self.index_at(at);
            return Err((TableError::Duplicate { existing }, value));
        }
        let at = self.free_head;
        let bucket = self.bucket_of(hash);
        // The free head is NIL exactly when every slot is live.
        let Some(slot) = self.slots.get_mut(at as usize) else {
            debug_assert_eq!(self.len as usize, self.slots.len());
            let capacity = self.slots.len();
            return Err((TableError::Full { capacity }, value));
        };
        debug_assert!(slot.value.is_none(), "free slot {at} holds a connection");
        self.free_head = slot.next;
        slot.tuple = tuple;
        slot.hash = hash;
        slot.next = self.buckets[bucket];
        slot.value = Some(value);
        let index = ConnIndex {
            index: at,
            generation: slot.generation,
        };
        self.buckets[bucket] = at;
        self.len += 1;
        debug_assert_eq!(self.find(&tuple), Some(index));
        Ok(index)
    }

    /// The connection on `tuple`, if any. For a received segment, `tuple.local` is its
    /// destination and `tuple.remote` its source.
    pub fn find(&self, tuple: &FourTuple) -> Option<ConnIndex> {
        let at = self.find_slot(self.hash(tuple), tuple)?;
        Some(self.index_at(at))
    }

    /// The state of the connection `index` names, `None` if it is stale.
    pub fn get(&self, index: ConnIndex) -> Option<&V> {
        self.live_slot(index)?.value.as_ref()
    }

    /// The state of the connection `index` names, writable; `None` if it is stale.
    pub fn get_mut(&mut self, index: ConnIndex) -> Option<&mut V> {
        self.live_slot(index)?;
        self.slots.get_mut(index.index as usize)?.value.as_mut()
    }

    /// The tuple of the connection `index` names, `None` if it is stale.
    pub fn tuple_of(&self, index: ConnIndex) -> Option<FourTuple> {
        self.live_slot(index).map(|slot| slot.tuple)
    }

    /// Removes the connection `index` names and returns its state; `None` if it is stale.
    /// Afterwards `index` and every copy of it are stale.
    pub fn remove(&mut self, index: ConnIndex) -> Option<V> {
        let slot = self.live_slot(index)?;
        let (hash, next) = (slot.hash, slot.next);
        let bucket = self.bucket_of(hash);
        // Unlink from the chain: either it heads the bucket or some live slot links to it.
        if self.buckets[bucket] == index.index {
            self.buckets[bucket] = next;
        } else {
            let mut at = self.buckets[bucket];
            let mut unlinked = false;
            for _ in 0..self.len {
                let Some(prev) = self.slots.get_mut(at as usize) else {
                    break;
                };
                if prev.next == index.index {
                    prev.next = next;
                    unlinked = true;
                    break;
                }
                at = prev.next;
            }
            debug_assert!(unlinked, "{index:?} is live but not in its bucket's chain");
        }
        let slot = self.slots.get_mut(index.index as usize)?;
        let value = slot.value.take();
        // Skip generation 0, so a zeroed raw index never names a live connection.
        slot.generation = slot.generation.wrapping_add(1).max(1);
        slot.next = self.free_head;
        self.free_head = index.index;
        self.len -= 1;
        debug_assert!(value.is_some());
        value
    }

    /// Every live connection with its index and tuple, in slab order. O(capacity): for
    /// shutdown and diagnostics, not the per-segment path.
    pub fn iter(&self) -> impl Iterator<Item = (ConnIndex, FourTuple, &V)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, slot)| {
            let index = ConnIndex {
                index: i as u32,
                generation: slot.generation,
            };
            slot.value.as_ref().map(|v| (index, slot.tuple, v))
        })
    }

    /// As [`ConnTable::iter`], with the states writable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (ConnIndex, FourTuple, &mut V)> + '_ {
        self.slots.iter_mut().enumerate().filter_map(|(i, slot)| {
            let index = ConnIndex {
                index: i as u32,
                generation: slot.generation,
            };
            slot.value.as_mut().map(|v| (index, slot.tuple, v))
        })
    }

    /// The longest bucket chain. O(capacity): a diagnostic for the control plane (a long
    /// chain under a secret key means a bug, not an attack) and the tests.
    pub fn chain_len_max(&self) -> usize {
        let mut longest = 0;
        for &head in &self.buckets {
            let mut at = head;
            let mut chain_len = 0;
            while let Some(slot) = self.slots.get(at as usize) {
                chain_len += 1;
                if chain_len > self.slots.len() {
                    break;
                }
                at = slot.next;
            }
            longest = longest.max(chain_len);
        }
        longest
    }
}

impl<V> fmt::Debug for ConnTable<V> {
    /// The sizes only: a million slots are not a useful log line, and the key stays hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnTable")
            .field("len", &self.len)
            .field("capacity", &self.slots.len())
            .field("buckets", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

/// Linux's default ephemeral port range (`net.ipv4.ip_local_port_range`).
pub const EPHEMERAL_PORTS_DEFAULT: RangeInclusive<u16> = 32768..=60999;

/// The default bound on ports examined per active open. With a predicate that accepts one
/// port in 16 (the engine demanding its own of 16 NIC queues) and no port in use, all 1024
/// tries fail with probability (15/16)^1024 < 10^-28; the bound caps one open at 1024 hash
/// lookups (around a hundred microseconds) when the range is nearly exhausted, where Linux
/// would walk the whole range.
pub const PORT_TRIES_MAX_DEFAULT: u32 = 1024;

/// Entries in the per-destination counter table, 2^16, as Linux has had since the
/// device-tracking attack on its 256-entry table (Kol, Klein and Gilad, 2022): an attacker who
/// can make the host connect to servers of its choice learns counters it shares with the
/// victim's destinations, and a larger table makes sharing rarer. 128 KiB per engine: each
/// counter is kept below the range's size, so 16 bits suffice.
pub const PORT_COUNTERS_LEN: usize = 1 << 16;

const _: () = assert!(PORT_COUNTERS_LEN.is_power_of_two());
const _: () = assert!(*EPHEMERAL_PORTS_DEFAULT.start() >= 1);
const _: () = assert!(*EPHEMERAL_PORTS_DEFAULT.start() <= *EPHEMERAL_PORTS_DEFAULT.end());
const _: () = assert!(PORT_TRIES_MAX_DEFAULT >= 1);

/// Why [`EphemeralPorts`] could not be built or found no port.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PortError {
    /// The range is empty or includes port 0 (which names no port on the wire): a
    /// configuration error. Configure a non-empty range within 1..=65535.
    #[error("ephemeral port range {start}..={end} is empty or includes port 0")]
    BadRange {
        /// The first port of the range asked for.
        start: u16,
        /// The last port of the range asked for.
        end: u16,
    },
    /// A bound of zero tries would never find a port: configure at least 1.
    #[error("ephemeral port tries_max is 0")]
    ZeroTries,
    /// Every port tried is in use towards this destination or refused by the predicate. Fail
    /// the open back to the app (as `EADDRNOTAVAIL`), or widen the range, raise the bound or
    /// wait for connections to close.
    #[error("no free local port towards {remote} after {tries} tries")]
    Exhausted {
        /// The destination.
        remote: SocketAddrV4,
        /// Ports examined.
        tries: u32,
    },
}

/// Chooses local ports for active opens: RFC 6056 §3.3.4's double-hash port selection
/// (Algorithm 4), a variant of which Linux uses.
///
/// For a destination, `offset = F(local IP, remote IP, remote port, key)` places the search's
/// start unpredictably in the range (so an off-path attacker cannot guess the port, RFC 6056
/// §1), and a counter chosen by a second keyed hash `G` of the same inputs moves it along on
/// each try, so successive opens to one destination walk the range sequentially (reusing a
/// port, and meeting its old TIME-WAIT incarnation, only after the whole range), while opens
/// to other destinations advance other counters and reveal nothing about this one. Algorithm
/// 3, the same offset with one global counter, was rejected because the shared counter shows
/// any peer how many connections the host makes elsewhere. `F` and `G` are
/// [`FourTuple::hash`] under one key with counters 0 and 1 (the local port field is 0).
///
/// Call [`EphemeralPorts::choose`], or [`EphemeralPorts::choose_with`] with a predicate
/// (IX: the engine accepts only ports whose NIC flow hash lands on its own queue, which also
/// keeps engines sharing a local address from choosing the same tuple); then insert the
/// returned tuple into the table. Rotating the key now and then with
/// [`EphemeralPorts::rekey`] bounds what an attacker can learn about the counters over time.
pub struct EphemeralPorts {
    /// The key of `F` and `G`. Debug prints no key material.
    key: SipKey,
    /// The first port of the range.
    port_min: u16,
    /// Ports in the range, 1..=65535.
    port_count: u32,
    /// Ports examined per open at most, 1..=`port_count`.
    tries_max: u32,
    /// RFC 6056's `table[]`, [`PORT_COUNTERS_LEN`] entries, each below `port_count`.
    counters: Box<[u16]>,
}

impl EphemeralPorts {
    /// A chooser over `range` (inclusive, without port 0) examining at most `tries_max` ports
    /// per open (cut to the range's size), keyed with `key` from a CSPRNG, independent of the
    /// other keys. Allocates the counter table.
    pub fn new(key: SipKey, range: RangeInclusive<u16>, tries_max: u32) -> Result<Self, PortError> {
        let (start, end) = (*range.start(), *range.end());
        if start == 0 || start > end {
            return Err(PortError::BadRange { start, end });
        }
        if tries_max == 0 {
            return Err(PortError::ZeroTries);
        }
        Ok(Self::build(key, start, end, tries_max))
    }

    /// A chooser over Linux's default range ([`EPHEMERAL_PORTS_DEFAULT`]) with
    /// [`PORT_TRIES_MAX_DEFAULT`] tries.
    pub fn linux_default(key: SipKey) -> Self {
        // The defaults are checked at compile time (the asserts after the constants).
        Self::build(
            key,
            *EPHEMERAL_PORTS_DEFAULT.start(),
            *EPHEMERAL_PORTS_DEFAULT.end(),
            PORT_TRIES_MAX_DEFAULT,
        )
    }

    /// Precondition: `1 <= start <= end` and `tries_max >= 1`.
    fn build(key: SipKey, start: u16, end: u16, tries_max: u32) -> Self {
        debug_assert!(start >= 1 && start <= end && tries_max >= 1);
        let port_count = u32::from(end) - u32::from(start) + 1;
        Self {
            key,
            port_min: start,
            port_count,
            tries_max: tries_max.min(port_count),
            counters: vec![0; PORT_COUNTERS_LEN].into_boxed_slice(),
        }
    }

    /// The range ports are chosen from.
    pub fn range(&self) -> RangeInclusive<u16> {
        // port_min + port_count - 1 <= 65535 by construction.
        let end = u32::from(self.port_min) + self.port_count - 1;
        self.port_min..=end as u16
    }

    /// Ports examined per open at most.
    pub fn tries_max(&self) -> u32 {
        self.tries_max
    }

    /// Replaces the key and forgets the counters: every destination starts from a fresh,
    /// unrelated offset. Ports still in use are skipped as always, so this is safe at any time.
    pub fn rekey(&mut self, key: SipKey) {
        self.key = key;
        self.counters.fill(0);
    }

    /// A free tuple from `local` to `remote`: [`EphemeralPorts::choose_with`] accepting every
    /// port.
    pub fn choose<V>(
        &mut self,
        table: &ConnTable<V>,
        local: Ipv4Addr,
        remote: SocketAddrV4,
    ) -> Result<FourTuple, PortError> {
        self.choose_with(table, local, remote, |_| true)
    }

    /// Like [`EphemeralPorts::choose_with`], but a port whose tuple is taken by a connection
    /// `reusable` accepts (a TIME-WAIT one that may be reused) is chosen too: the tuple comes
    /// back with that connection's index, for the caller to remove first.
    pub fn choose_reusing<V>(
        &mut self,
        table: &ConnTable<V>,
        local: Ipv4Addr,
        remote: SocketAddrV4,
        mut reusable: impl FnMut(&V) -> bool,
    ) -> Result<(FourTuple, Option<ConnIndex>), PortError> {
        let mut reuse = None;
        let tuple = self.choose_inner(
            table,
            local,
            remote,
            |_| true,
            |index, value| {
                let take = reusable(value);
                if take {
                    reuse = Some(index);
                }
                take
            },
        )?;
        Ok((tuple, reuse))
    }

    /// A tuple from `local` to `remote` whose local port is in the range, passes `accept`,
    /// and has no connection in `table`; [`PortError::Exhausted`] after `tries_max` ports
    /// without one. `accept` is called before the table lookup, so it should be the cheaper
    /// test.
    pub fn choose_with<V>(
        &mut self,
        table: &ConnTable<V>,
        local: Ipv4Addr,
        remote: SocketAddrV4,
        accept: impl FnMut(u16) -> bool,
    ) -> Result<FourTuple, PortError> {
        self.choose_inner(table, local, remote, accept, |_, _| false)
    }

    /// The search behind the `choose` functions: a tuple that passes `accept` and is free or
    /// held by a connection `occupied_ok` accepts.
    fn choose_inner<V>(
        &mut self,
        table: &ConnTable<V>,
        local: Ipv4Addr,
        remote: SocketAddrV4,
        mut accept: impl FnMut(u16) -> bool,
        mut occupied_ok: impl FnMut(ConnIndex, &V) -> bool,
    ) -> Result<FourTuple, PortError> {
        let destination = FourTuple {
            local: SocketAddrV4::new(local, 0),
            remote,
        };
        // RFC 6056 §3.3.4: offset = F(local_IP, remote_IP, remote_port, secret_key1) and
        // index = G(local_IP, remote_IP, remote_port, secret_key2), here one key with two
        // counter words.
        let offset = destination.hash(&self.key, 0);
        let counter_index = destination.hash(&self.key, 1) as usize & (PORT_COUNTERS_LEN - 1);
        for _ in 0..self.tries_max {
            let Some(counter) = self.counters.get_mut(counter_index) else {
                break;
            };
            // RFC 6056 §3.3.4: port = min_ephemeral + (offset + table[index]) % num_ephemeral;
            // table[index]++ on every try. The counter is kept modulo num_ephemeral, so the
            // sum never wraps and one pass of num_ephemeral tries meets every port once.
            let count = u32::from(*counter);
            let step = (offset % self.port_count + count) % self.port_count;
            // count < port_count <= 65535, so the successor fits in 16 bits.
            *counter = ((count + 1) % self.port_count) as u16;
            // step < port_count, so the port stays within the range's end.
            let port = (u32::from(self.port_min) + step) as u16;
            if !accept(port) {
                continue;
            }
            let tuple = FourTuple {
                local: SocketAddrV4::new(local, port),
                remote,
            };
            match table.find(&tuple) {
                None => return Ok(tuple),
                Some(index) => {
                    if table.get(index).is_some_and(|v| occupied_ok(index, v)) {
                        return Ok(tuple);
                    }
                }
            }
        }
        Err(PortError::Exhausted {
            remote,
            tries: self.tries_max,
        })
    }
}

impl fmt::Debug for EphemeralPorts {
    /// The configuration only: no key, and not 65 536 counters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralPorts")
            .field("range", &self.range())
            .field("tries_max", &self.tries_max)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::num::NonZeroU64;

    use proptest::prelude::*;

    use super::*;

    fn key() -> SipKey {
        SipKey::new(0x7ab1_e000_0000_0001, 0x7ab1_e000_0000_0002)
    }

    fn tuple(local: [u8; 4], lport: u16, remote: [u8; 4], rport: u16) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::from(local), lport),
            remote: SocketAddrV4::new(Ipv4Addr::from(remote), rport),
        }
    }

    /// The `n`-th of a small pool of tuples, so that random operations hit the same ones.
    fn pool_tuple(n: u8) -> FourTuple {
        tuple([10, 0, 0, 1], 80, [10, 0, 1, n], 40_000 + u16::from(n % 3))
    }

    /// The documented overhead: 24 bytes of metadata, plus the `Option` tag where `V` has no
    /// niche, rounded up to `V`'s alignment.
    #[test]
    fn slot_overhead_is_as_documented() {
        // Alignment 8, no niche: 24 + an 8-byte tag.
        assert_eq!(slot_overhead_bytes::<u64>(), 32);
        assert_eq!(slot_overhead_bytes::<[u64; 64]>(), 32);
        // Alignment 8 with a niche: the tag is free.
        assert_eq!(slot_overhead_bytes::<NonZeroU64>(), 24);
        assert_eq!(slot_overhead_bytes::<&u8>(), 24);
        assert_eq!(size_of::<Slot<Option<NonZeroU64>>>(), 40);
        // Alignment 4 without a niche: a 4-byte tag.
        assert_eq!(slot_overhead_bytes::<[u32; 16]>(), 28);
        // Alignment 1: a 1-byte tag padded to the slot's alignment of 4.
        assert_eq!(slot_overhead_bytes::<[u8; 64]>(), 28);
        assert_eq!(size_of::<ConnIndex>(), 8);
        assert_eq!(size_of::<Option<ConnIndex>>(), 12);
        // 1000 entries: 1000 slots and 2048 buckets.
        assert_eq!(
            ConnTable::<u64>::bytes_for(1000),
            1000 * 40 + 2048 * 4,
            "slots plus buckets"
        );
    }

    #[test]
    fn capacity_bounds() {
        assert_eq!(
            ConnTable::<u8>::new(CONNECTIONS_MAX + 1, key()).unwrap_err(),
            TableError::CapacityTooLarge {
                capacity: CONNECTIONS_MAX + 1,
                max: CONNECTIONS_MAX
            }
        );
        let mut empty = ConnTable::new(0, key()).unwrap();
        assert_eq!(
            empty.insert(pool_tuple(0), 5u8),
            Err((TableError::Full { capacity: 0 }, 5))
        );
        assert_eq!(empty.find(&pool_tuple(0)), None);
        assert_eq!(empty.capacity(), 0);
        let t = ConnTable::<u8>::new(3, key()).unwrap();
        assert_eq!(t.buckets.len(), 8);
        assert_eq!(ConnTable::<u8>::new(4, key()).unwrap().buckets.len(), 8);
        assert_eq!(ConnTable::<u8>::new(5, key()).unwrap().buckets.len(), 16);
    }

    #[test]
    fn insert_find_remove_and_stale_indexes() {
        let mut t = ConnTable::new(2, key()).unwrap();
        let (a, b, c) = (pool_tuple(1), pool_tuple(2), pool_tuple(3));
        let ia = t.insert(a, "a").unwrap();
        let ib = t.insert(b, "b").unwrap();
        assert_eq!(
            t.insert(c, "c"),
            Err((TableError::Full { capacity: 2 }, "c"))
        );
        assert_eq!(
            t.insert(a, "again"),
            Err((TableError::Duplicate { existing: ia }, "again"))
        );
        assert_eq!(
            (t.find(&a), t.find(&b), t.find(&c)),
            (Some(ia), Some(ib), None)
        );
        assert_eq!(t.tuple_of(ib), Some(b));
        *t.get_mut(ia).unwrap() = "A";
        assert_eq!(t.get(ia), Some(&"A"));
        assert_eq!(t.len(), 2);

        assert_eq!(t.remove(ia), Some("A"));
        assert_eq!(t.remove(ia), None, "a second remove finds nothing");
        let ic = t.insert(c, "c").unwrap();
        assert_eq!(ic.slab_index(), ia.slab_index(), "the slot is reused");
        assert_ne!(ic, ia);
        assert_eq!(
            t.get(ia),
            None,
            "the stale index does not reach the new tenant"
        );
        assert_eq!(t.get_mut(ia), None);
        assert_eq!(t.tuple_of(ia), None);
        assert_eq!(t.find(&a), None);
        assert_eq!(t.get(ic), Some(&"c"));
        assert_eq!(format!("{ic:?}"), "conn#0.2");

        let live: Vec<_> = t.iter().map(|(i, tu, v)| (i, tu, *v)).collect();
        assert_eq!(live, vec![(ic, c, "c"), (ib, b, "b")]);
        for (_, _, v) in t.iter_mut() {
            *v = "x";
        }
        assert_eq!(t.get(ib), Some(&"x"));
        let shown = format!("{t:?}");
        assert!(
            shown.contains("len: 2") && !shown.contains("7ab1"),
            "{shown}"
        );
    }

    #[test]
    fn raw_round_trip_and_foreign_indexes() {
        let mut t = ConnTable::new(4, key()).unwrap();
        let i = t.insert(pool_tuple(0), 1u32).unwrap();
        assert_eq!(ConnIndex::from_raw(i.to_raw()), i);
        assert_eq!(i.to_raw(), 1 << 32, "generation 1, slot 0");
        for raw in [0, u64::MAX, 1 << 32 | 4, 2 << 32, u64::from(u32::MAX)] {
            let foreign = ConnIndex::from_raw(raw);
            assert_eq!(t.get(foreign), None, "raw {raw:#x}");
            assert_eq!(t.remove(foreign), None, "raw {raw:#x}");
        }
        assert_eq!(t.len(), 1);
    }

    /// Generations skip 0 when they wrap.
    #[test]
    fn generation_wraps_past_zero() {
        let mut t = ConnTable::new(1, key()).unwrap();
        t.slots[0].generation = u32::MAX;
        let i = t.insert(pool_tuple(0), ()).unwrap();
        assert_eq!(i.generation(), u32::MAX);
        assert_eq!(t.remove(i), Some(()));
        let j = t.insert(pool_tuple(0), ()).unwrap();
        assert_eq!(j.generation(), 1);
    }

    /// Tuples that an XOR-folding hash maps to one bucket (the same ports, and the same bits
    /// flipped in both addresses, so `local ^ remote` is constant) and tuples that differ from
    /// one another in a single address bit spread over the buckets under the keyed hash.
    #[test]
    fn near_identical_tuples_spread_over_buckets() {
        let capacity = 4096;
        let mut t = ConnTable::new(capacity, key()).unwrap();
        let base_local = u32::from(Ipv4Addr::new(10, 0, 0, 1));
        let base_remote = u32::from(Ipv4Addr::new(192, 168, 0, 1));
        let mut inserted = 0;
        let mut xor_folds = HashSet::new();
        for x in 0..4032u32 {
            let x = x << 4;
            let (l, r) = (base_local ^ x, base_remote ^ x);
            let tu = FourTuple {
                local: SocketAddrV4::new(Ipv4Addr::from(l), 443),
                remote: SocketAddrV4::new(Ipv4Addr::from(r), 50_000),
            };
            xor_folds.insert(l ^ r ^ (443 << 16 | 50_000));
            t.insert(tu, ()).unwrap();
            inserted += 1;
        }
        assert_eq!(
            xor_folds.len(),
            1,
            "an XOR fold would put them all in one bucket"
        );
        // And the 64 single-bit neighbours of one more tuple, which is not itself inserted.
        for bit in 0..32 {
            for (dl, dr) in [(1u32 << bit, 0u32), (0, 1 << bit)] {
                let tu = FourTuple {
                    local: SocketAddrV4::new(Ipv4Addr::from(base_local ^ dl ^ 0xf), 443),
                    remote: SocketAddrV4::new(Ipv4Addr::from(base_remote ^ dr ^ 0xf), 50_000),
                };
                t.insert(tu, ()).unwrap();
                inserted += 1;
            }
        }
        assert_eq!(inserted, capacity, "the table is full");
        // 4096 keys in 8192 buckets: the longest chain of a random function is about 5; a
        // weak hash would give hundreds.
        let longest = t.chain_len_max();
        assert!(longest <= 7, "longest chain {longest}");
        // About e^-0.5 = 61% of buckets stay empty at load one half.
        let empty = t.buckets.iter().filter(|&&head| head == NIL).count();
        assert!(
            (4700..5300).contains(&empty),
            "{empty} empty buckets of 8192"
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u32),
        Remove(usize),
        RemoveDead(usize),
        Find(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..24, any::<u32>()).prop_map(|(t, v)| Op::Insert(t, v)),
            3 => any::<usize>().prop_map(Op::Remove),
            1 => any::<usize>().prop_map(Op::RemoveDead),
            2 => (0u8..24).prop_map(Op::Find),
        ]
    }

    proptest! {
        /// Random operations against a `HashMap` model, over a pool of 24 tuples and a table of
        /// 1 to 16 slots, so that duplicates, a full table, shared buckets (unlinking from the
        /// middle of a chain) and stale indexes all happen.
        #[test]
        fn matches_hashmap_model(capacity in 1usize..=16, seed in any::<u64>(),
                                 ops in proptest::collection::vec(op(), 1..300)) {
            let mut t = ConnTable::new(capacity, SipKey::new(seed, !seed)).unwrap();
            let mut model: HashMap<FourTuple, (ConnIndex, u32)> = HashMap::new();
            let mut dead: Vec<ConnIndex> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(n, v) => {
                        let tu = pool_tuple(n);
                        match (t.insert(tu, v), model.get(&tu)) {
                            (Err((TableError::Duplicate { existing }, back)), Some(&(i, _))) => {
                                prop_assert_eq!(existing, i);
                                prop_assert_eq!(back, v);
                            }
                            (Err((TableError::Full { capacity: c }, back)), None) => {
                                prop_assert_eq!(c, capacity);
                                prop_assert_eq!(model.len(), capacity);
                                prop_assert_eq!(back, v);
                            }
                            (Ok(i), None) => {
                                prop_assert!(model.len() < capacity);
                                prop_assert!(!dead.contains(&i), "a stale index came back");
                                model.insert(tu, (i, v));
                            }
                            (got, want) => prop_assert!(false, "{:?} for {:?}", got, want),
                        }
                    }
                    Op::Remove(pick) if !model.is_empty() => {
                        let tu = *model.keys().nth(pick % model.len()).unwrap();
                        let (i, v) = model.remove(&tu).unwrap();
                        prop_assert_eq!(t.remove(i), Some(v));
                        dead.push(i);
                    }
                    Op::Remove(_) => {}
                    Op::RemoveDead(pick) if !dead.is_empty() => {
                        prop_assert_eq!(t.remove(dead[pick % dead.len()]), None);
                    }
                    Op::RemoveDead(_) => {}
                    Op::Find(n) => {
                        let tu = pool_tuple(n);
                        prop_assert_eq!(t.find(&tu), model.get(&tu).map(|&(i, _)| i));
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                for (tu, &(i, v)) in &model {
                    prop_assert_eq!(t.find(tu), Some(i));
                    prop_assert_eq!(t.get(i), Some(&v));
                    prop_assert_eq!(t.tuple_of(i), Some(*tu));
                }
                for &i in &dead {
                    prop_assert_eq!(t.get(i), None);
                    prop_assert_eq!(t.tuple_of(i), None);
                }
                let listed: HashMap<FourTuple, (ConnIndex, u32)> =
                    t.iter().map(|(i, tu, &v)| (tu, (i, v))).collect();
                prop_assert_eq!(&listed, &model);
            }
        }

        /// Any raw index is answered without a panic.
        #[test]
        fn foreign_raw_indexes_never_panic(raw in any::<u64>()) {
            let mut t = ConnTable::new(8, key()).unwrap();
            t.insert(pool_tuple(1), 1u8).unwrap();
            let i = ConnIndex::from_raw(raw);
            let _ = (t.get(i).is_some(), t.tuple_of(i), t.get_mut(i).is_some());
            let _ = t.remove(i);
        }

        /// A chosen tuple is always in the range, free in the table, accepted by the
        /// predicate, and towards the asked destination.
        #[test]
        fn chosen_ports_are_free_and_in_range(start in 1u16..=65535, len in 1u16..64,
                                              used in proptest::collection::vec(any::<u16>(), 0..64),
                                              modulus in 1u16..4, seed in any::<u64>()) {
            let end = start.saturating_add(len - 1);
            let mut ports = EphemeralPorts::new(SipKey::new(seed, 1), start..=end, 10_000).unwrap();
            let local = Ipv4Addr::new(10, 0, 0, 1);
            let remote = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80);
            let mut t = ConnTable::new(128, key()).unwrap();
            for p in used {
                let p = start.saturating_add(p % len);
                let _ = t.insert(FourTuple { local: SocketAddrV4::new(local, p), remote }, ());
            }
            for _ in 0..8 {
                match ports.choose_with(&t, local, remote, |p| p % modulus == 0) {
                    Ok(tu) => {
                        let p = tu.local.port();
                        prop_assert!((start..=end).contains(&p));
                        prop_assert_eq!(p % modulus, 0);
                        prop_assert_eq!(*tu.local.ip(), local);
                        prop_assert_eq!(tu.remote, remote);
                        prop_assert_eq!(t.find(&tu), None);
                        t.insert(tu, ()).unwrap();
                    }
                    Err(PortError::Exhausted { tries, .. }) => {
                        prop_assert_eq!(tries, u32::from(end - start) + 1);
                        // Every acceptable port in the range is taken.
                        for p in start..=end {
                            let tu = FourTuple { local: SocketAddrV4::new(local, p), remote };
                            prop_assert!(p % modulus != 0 || t.find(&tu).is_some());
                        }
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                }
            }
        }
    }

    #[test]
    fn ephemeral_configuration_errors() {
        assert_eq!(
            EphemeralPorts::new(key(), 0..=10, 5).unwrap_err(),
            PortError::BadRange { start: 0, end: 10 }
        );
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 10..=9;
        assert_eq!(
            EphemeralPorts::new(key(), backwards, 5).unwrap_err(),
            PortError::BadRange { start: 10, end: 9 }
        );
        assert_eq!(
            EphemeralPorts::new(key(), 1..=1, 0).unwrap_err(),
            PortError::ZeroTries
        );
        let all = EphemeralPorts::new(key(), 1..=65535, u32::MAX).unwrap();
        assert_eq!(all.range(), 1..=65535);
        assert_eq!(all.tries_max(), 65535, "cut to the range");
        let linux = EphemeralPorts::linux_default(key());
        assert_eq!(linux.range(), 32768..=60999);
        assert_eq!(linux.tries_max(), PORT_TRIES_MAX_DEFAULT);
        let shown = format!("{linux:?}");
        assert!(
            shown.contains("32768..=60999") && !shown.contains("7ab1"),
            "{shown}"
        );
    }

    /// RFC 6056 §3.3.4's walk: successive opens to one destination take successive ports
    /// from a keyed offset, a used port is skipped, other destinations start elsewhere, and a
    /// new key moves the start.
    #[test]
    fn sequential_per_destination_from_a_keyed_offset() {
        let mut ports = EphemeralPorts::linux_default(key());
        let mut t = ConnTable::new(64, key()).unwrap();
        let local = Ipv4Addr::new(10, 0, 0, 1);
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 443);
        let first = ports.choose(&t, local, server).unwrap();
        let p0 = first.local.port();
        let next_of = |p: u16| if p == 60999 { 32768 } else { p + 1 };
        // Without inserting, the next open still moves on: the counter advanced.
        let second = ports.choose(&t, local, server).unwrap();
        assert_eq!(second.local.port(), next_of(p0));
        // A port in use is skipped.
        let in_use = next_of(next_of(p0));
        t.insert(
            FourTuple {
                local: SocketAddrV4::new(local, in_use),
                remote: server,
            },
            (),
        )
        .unwrap();
        let third = ports.choose(&t, local, server).unwrap();
        assert_eq!(third.local.port(), next_of(in_use));
        // Opens to other destinations neither start next to p0 nor disturb its sequence
        // (barring a shared counter slot, which these fixed inputs do not hit).
        let mut starts = HashSet::new();
        for rport in 1..=32u16 {
            let other = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), rport);
            starts.insert(ports.choose(&t, local, other).unwrap().local.port());
        }
        assert!(starts.len() >= 30, "{} distinct starts of 32", starts.len());
        assert_eq!(
            ports.choose(&t, local, server).unwrap().local.port(),
            next_of(next_of(in_use))
        );
        // A new key starts the destination elsewhere.
        ports.rekey(SipKey::new(3, 4));
        let moved = ports.choose(&t, local, server).unwrap().local.port();
        assert_ne!(moved, p0);
        let mut again = EphemeralPorts::linux_default(key());
        assert_eq!(again.choose(&t, local, server).unwrap().local.port(), p0);
    }

    #[test]
    fn exhaustion_and_the_predicate() {
        let mut ports = EphemeralPorts::new(key(), 5000..=5007, 100).unwrap();
        let mut t = ConnTable::new(16, key()).unwrap();
        let local = Ipv4Addr::new(10, 0, 0, 1);
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 443);
        // An IX-style predicate: only ports "hashing" to queue 1 of 4.
        let mut chosen = Vec::new();
        for _ in 0..2 {
            let tu = ports
                .choose_with(&t, local, server, |p| p % 4 == 1)
                .unwrap();
            chosen.push(tu.local.port());
            t.insert(tu, ()).unwrap();
        }
        chosen.sort_unstable();
        assert_eq!(chosen, vec![5001, 5005]);
        assert_eq!(
            ports.choose_with(&t, local, server, |p| p % 4 == 1),
            Err(PortError::Exhausted {
                remote: server,
                tries: 8
            })
        );
        // Other ports remain for a caller without the predicate.
        assert!(ports.choose(&t, local, server).is_ok());
        // The same local port towards another server is another tuple.
        let elsewhere = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 443);
        assert!(ports
            .choose_with(&t, local, elsewhere, |p| p == 5001)
            .is_ok());
        // A bound below the range size stops early.
        let mut few = EphemeralPorts::new(key(), 1000..=1999, 3).unwrap();
        let mut calls = 0;
        assert_eq!(
            few.choose_with(&t, local, server, |_| {
                calls += 1;
                false
            }),
            Err(PortError::Exhausted {
                remote: server,
                tries: 3
            })
        );
        assert_eq!(calls, 3);
    }
}
