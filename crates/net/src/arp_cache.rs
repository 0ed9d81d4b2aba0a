//! The ARP translation table (RFC 826 "translation table"): IPv4 address to MAC address,
//! with a per-entry expiry.
//!
//! Design: three parts, all allocated once in [`ArpCache::new`].
//!
//! - A slab of `entries_max` entries holding the address pair, the expiry and two links.
//! - A hash index from address to slab position: open addressing with linear probing over
//!   `2 × entries_max` slots rounded up to a power of two, so the load factor is at most one
//!   half and a probe chain is one or two slots. The slot is chosen by Fibonacci hashing of
//!   the 32-bit address (one multiply and a shift). Deletion shifts later members of the
//!   chain back (Knuth's algorithm R), so there are no tombstones and lookups never slow down
//!   with age. Address `0.0.0.0` marks an empty index slot; it is never a valid next hop or
//!   sender to learn.
//! - An intrusive doubly linked list through the slab, ordered by when each dynamic entry
//!   was last written (learned or refreshed), most recent at the head. Every dynamic entry
//!   lives for the same `entry_ttl_ns` after its last write, so this order is also the order
//!   of expiry: the tail is the entry that expires first (or has expired longest). A full
//!   table evicts the tail, in O(1). Expired entries need no sweep: they drift to the tail
//!   and are the first to go.
//!
//! Static entries (from the control plane) are *pinned*: they are not on the list, so they
//! are never evicted, and ARP traffic never overwrites them (as Linux treats `PERMANENT`
//! neighbours). A table whose every entry is pinned refuses new dynamic entries.
//!
//! Expiry is lazy: an expired entry is a miss for [`ArpCache::lookup`], so the next send
//! re-resolves it, and it stays in its slot (cheap to refresh) until a reply refreshes it or
//! eviction reclaims it.
//!
//! Alternatives rejected: `std::collections::HashMap` (SipHash is slow for a 4-byte key, it
//! may allocate on insert, and it has no bound of its own); and the previous design, which
//! found the entry closest to expiry by scanning the whole table on every insert into a full
//! table, which lets a neighbour flood make every ARP packet cost `O(entries_max)`.

use melange_wire::EthernetAddress;

/// "No entry" in a link or a slab position.
const NIL: u32 = u32::MAX;

/// One entry of the slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// The IPv4 address as a `u32`; 0 when the entry is free.
    ip: u32,
    /// The hardware address.
    mac: EthernetAddress,
    /// When the entry stops being used; `u64::MAX` for a pinned entry.
    expires_at_ns: u64,
    /// Towards the head (more recent) on the list; the next free entry while free.
    prev: u32,
    /// Towards the tail (less recent) on the list.
    next: u32,
    /// A static entry: off the list, never evicted or overwritten by ARP.
    pinned: bool,
}

const FREE: Entry = Entry {
    ip: 0,
    mac: EthernetAddress([0; 6]),
    expires_at_ns: 0,
    prev: NIL,
    next: NIL,
    pinned: false,
};

/// One slot of the hash index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexSlot {
    /// The address; 0 when the slot is empty.
    ip: u32,
    /// Its position in the slab.
    entry: u32,
}

const EMPTY_SLOT: IndexSlot = IndexSlot { ip: 0, entry: NIL };

/// What [`ArpCache::refresh`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// No entry for the address.
    Absent,
    /// The entry was rewritten and moved to the head of the list.
    Updated,
    /// The entry is static and was left as it was.
    Pinned,
}

/// What [`ArpCache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Insert {
    /// A new entry, in a free slot.
    Inserted,
    /// A new entry, after evicting the least recently written one.
    Evicted,
    /// Every entry is pinned; nothing was inserted.
    Full,
}

/// A fixed-capacity IPv4-to-MAC table. See the module documentation.
#[derive(Debug)]
pub(crate) struct ArpCache {
    entries: Box<[Entry]>,
    index: Box<[IndexSlot]>,
    /// `index.len() - 1`; the length is a power of two.
    mask: usize,
    /// `32 - log2(index.len())`: the Fibonacci hash keeps the top bits.
    shift: u32,
    /// First free entry, linked through `prev`.
    free_head: u32,
    /// Most recently written dynamic entry.
    head: u32,
    /// Least recently written dynamic entry: the next to evict.
    tail: u32,
    /// Entries held, pinned ones included.
    len: usize,
    /// Entries evicted to make room.
    evictions: u64,
}

impl ArpCache {
    /// A table for `entries_max` entries (`1..=65536`, checked by the configuration).
    pub(crate) fn new(entries_max: usize) -> Self {
        assert!(
            entries_max > 0 && entries_max <= 1 << 16,
            "entries_max {entries_max}"
        );
        let slot_count = (entries_max * 2).next_power_of_two();
        let shift = 32 - slot_count.trailing_zeros();
        let mut entries = vec![FREE; entries_max].into_boxed_slice();
        // Chain every entry on the free list: 0 -> 1 -> ... -> entries_max - 1.
        for (i, entry) in entries.iter_mut().enumerate() {
            entry.prev = if i + 1 < entries_max {
                (i + 1) as u32
            } else {
                NIL
            };
        }
        ArpCache {
            entries,
            index: vec![EMPTY_SLOT; slot_count].into_boxed_slice(),
            mask: slot_count - 1,
            shift,
            free_head: 0,
            head: NIL,
            tail: NIL,
            len: 0,
            evictions: 0,
        }
    }

    /// Entries held, expired and pinned ones included.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Entries evicted because the table was full.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    #[inline(always)]
    fn home(&self, ip: u32) -> usize {
        // Fibonacci hashing: multiply by 2^32/phi and keep the top bits.
        (ip.wrapping_mul(0x9e37_79b9) >> self.shift) as usize & self.mask
    }

    /// The index slot holding `ip`, if any.
    #[inline]
    fn find(&self, ip: u32) -> Option<usize> {
        debug_assert!(ip != 0);
        let mut i = self.home(ip);
        // The load factor is at most 1/2, so an empty slot ends every chain.
        loop {
            let slot = self.index[i];
            if slot.ip == ip {
                return Some(i);
            }
            if slot.ip == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slab position of `ip`'s entry, if any.
    #[inline]
    fn entry_of(&self, ip: u32) -> Option<usize> {
        if ip == 0 {
            return None;
        }
        self.find(ip).map(|slot| self.index[slot].entry as usize)
    }

    /// The MAC for `ip` if known and not expired at `now_ns`.
    #[inline]
    pub(crate) fn lookup(&self, ip: u32, now_ns: u64) -> Option<EthernetAddress> {
        let entry = &self.entries[self.entry_of(ip)?];
        (now_ns < entry.expires_at_ns).then_some(entry.mac)
    }

    /// True when the table holds an entry for `ip`, expired or not (RFC 826: "if the pair
    /// <protocol type, sender protocol address> is already in my translation table").
    #[cfg(test)]
    pub(crate) fn contains(&self, ip: u32) -> bool {
        self.entry_of(ip).is_some()
    }

    /// Rewrites the entry for `ip` if there is one and it is not pinned (RFC 826 "merge"),
    /// making it the most recently written.
    pub(crate) fn refresh(&mut self, ip: u32, mac: EthernetAddress, expires_at_ns: u64) -> Refresh {
        let Some(at) = self.entry_of(ip) else {
            return Refresh::Absent;
        };
        if self.entries[at].pinned {
            return Refresh::Pinned;
        }
        self.entries[at].mac = mac;
        self.entries[at].expires_at_ns = expires_at_ns;
        self.unlink(at as u32);
        self.push_head(at as u32);
        Refresh::Updated
    }

    /// Adds a dynamic entry for `ip`, which must not be in the table (callers
    /// [`refresh`](Self::refresh) first). Evicts the least recently written dynamic entry
    /// when the table is full.
    pub(crate) fn insert(&mut self, ip: u32, mac: EthernetAddress, expires_at_ns: u64) -> Insert {
        debug_assert!(ip != 0 && self.entry_of(ip).is_none());
        let (at, outcome) = match self.take_entry() {
            Some(at) => (at, Insert::Inserted),
            None => match self.evict_tail() {
                Some(at) => (at, Insert::Evicted),
                None => return Insert::Full,
            },
        };
        self.entries[at as usize] = Entry {
            ip,
            mac,
            expires_at_ns,
            prev: NIL,
            next: NIL,
            pinned: false,
        };
        self.push_head(at);
        self.index_insert(ip, at);
        outcome
    }

    /// Makes `ip -> mac` a static entry: pinned, never expiring. Returns false, changing
    /// nothing, when `ip` is new and every entry is already pinned.
    pub(crate) fn pin(&mut self, ip: u32, mac: EthernetAddress) -> bool {
        if ip == 0 {
            return false;
        }
        let at = match self.entry_of(ip) {
            Some(at) => {
                if !self.entries[at].pinned {
                    self.unlink(at as u32);
                }
                at as u32
            }
            None => {
                let Some(at) = self.take_entry().or_else(|| self.evict_tail()) else {
                    return false;
                };
                self.index_insert(ip, at);
                at
            }
        };
        self.entries[at as usize] = Entry {
            ip,
            mac,
            expires_at_ns: u64::MAX,
            prev: NIL,
            next: NIL,
            pinned: true,
        };
        true
    }

    /// Removes the entry for `ip`; true if there was one. Only the model test needs it:
    /// the interface removes entries by eviction alone.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, ip: u32) -> bool {
        let Some(at) = self.entry_of(ip) else {
            return false;
        };
        let at = at as u32;
        if !self.entries[at as usize].pinned {
            self.unlink(at);
        }
        self.index_remove(ip);
        self.give_back(at);
        true
    }

    /// The address the next eviction would remove, for the model test.
    #[cfg(test)]
    fn eviction_candidate(&self) -> Option<u32> {
        (self.tail != NIL).then(|| self.entries[self.tail as usize].ip)
    }

    // ----- slab and list -----

    /// A free slab entry, if any.
    fn take_entry(&mut self) -> Option<u32> {
        let at = self.free_head;
        if at == NIL {
            return None;
        }
        self.free_head = self.entries[at as usize].prev;
        self.len += 1;
        Some(at)
    }

    /// Returns a slab entry to the free list (only removal, a test's operation, frees one).
    #[cfg(test)]
    fn give_back(&mut self, at: u32) {
        self.entries[at as usize] = Entry {
            prev: self.free_head,
            ..FREE
        };
        self.free_head = at;
        self.len -= 1;
    }

    /// Evicts the tail of the list and hands its slab entry to the caller (still counted in
    /// `len`). `None` when the list is empty: every entry is pinned.
    fn evict_tail(&mut self) -> Option<u32> {
        let at = self.tail;
        if at == NIL {
            return None;
        }
        self.unlink(at);
        self.index_remove(self.entries[at as usize].ip);
        self.evictions += 1;
        Some(at)
    }

    fn push_head(&mut self, at: u32) {
        let old = self.head;
        self.entries[at as usize].prev = NIL;
        self.entries[at as usize].next = old;
        if old == NIL {
            self.tail = at;
        } else {
            self.entries[old as usize].prev = at;
        }
        self.head = at;
    }

    fn unlink(&mut self, at: u32) {
        let Entry { prev, next, .. } = self.entries[at as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        self.entries[at as usize].prev = NIL;
        self.entries[at as usize].next = NIL;
    }

    // ----- hash index -----

    fn index_insert(&mut self, ip: u32, entry: u32) {
        let mut i = self.home(ip);
        while self.index[i].ip != 0 {
            i = (i + 1) & self.mask;
        }
        self.index[i] = IndexSlot { ip, entry };
    }

    /// Empties the slot of `ip` and shifts later members of its probe chain back (Knuth,
    /// TAOCP vol. 3, §6.4, Algorithm R), so no tombstones are needed.
    fn index_remove(&mut self, ip: u32) {
        let Some(mut hole) = self.find(ip) else {
            debug_assert!(false, "index_remove of absent {ip:#x}");
            return;
        };
        let mut i = hole;
        loop {
            i = (i + 1) & self.mask;
            let slot = self.index[i];
            if slot.ip == 0 {
                break;
            }
            let home = self.home(slot.ip);
            // The entry may move into the hole if the hole lies on its probe path, i.e. it
            // is no further from its home slot than the entry's current position.
            if hole.wrapping_sub(home) & self.mask < i.wrapping_sub(home) & self.mask {
                self.index[hole] = slot;
                hole = i;
            }
        }
        self.index[hole] = EMPTY_SLOT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, VecDeque};

    fn mac(n: u8) -> EthernetAddress {
        EthernetAddress([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn insert_lookup_expire_refresh() {
        let mut c = ArpCache::new(4);
        assert_eq!(c.insert(0x0a00_0002, mac(2), 100), Insert::Inserted);
        assert_eq!(c.lookup(0x0a00_0002, 99), Some(mac(2)));
        assert_eq!(c.lookup(0x0a00_0002, 100), None, "expired at its deadline");
        assert!(c.contains(0x0a00_0002), "an expired entry is still held");
        assert_eq!(c.lookup(0x0a00_0003, 0), None);
        assert_eq!(c.lookup(0, 0), None);
        assert_eq!(c.refresh(0x0a00_0002, mac(9), 200), Refresh::Updated);
        assert_eq!(c.lookup(0x0a00_0002, 150), Some(mac(9)));
        assert_eq!(c.refresh(0x0a00_0003, mac(9), 200), Refresh::Absent);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn full_table_evicts_least_recently_written() {
        let mut c = ArpCache::new(2);
        c.insert(1, mac(1), 300);
        c.insert(2, mac(2), 100);
        // Refreshing 1 makes 2 the oldest write.
        assert_eq!(c.refresh(1, mac(1), 400), Refresh::Updated);
        assert_eq!(c.insert(3, mac(3), 500), Insert::Evicted);
        assert_eq!(c.len(), 2);
        assert_eq!(c.evictions(), 1);
        assert!(!c.contains(2));
        assert_eq!(c.lookup(1, 0), Some(mac(1)));
        assert_eq!(c.lookup(3, 0), Some(mac(3)));
    }

    #[test]
    fn pinned_entries_are_neither_evicted_nor_overwritten() {
        let mut c = ArpCache::new(2);
        assert!(c.pin(1, mac(1)));
        assert_eq!(c.refresh(1, mac(7), 10), Refresh::Pinned);
        assert_eq!(c.lookup(1, u64::MAX - 1), Some(mac(1)));
        c.insert(2, mac(2), 10);
        assert_eq!(c.insert(3, mac(3), 20), Insert::Evicted, "2 goes, 1 stays");
        assert!(c.contains(1) && c.contains(3) && !c.contains(2));
        // Pinning an existing dynamic entry takes it off the list.
        assert!(c.pin(3, mac(4)));
        assert_eq!(c.insert(5, mac(5), 30), Insert::Full);
        assert!(!c.pin(6, mac(6)), "a table of pinned entries refuses more");
        assert_eq!(c.len(), 2);
        assert_eq!(c.lookup(3, 1 << 40), Some(mac(4)));
    }

    #[test]
    fn eviction_is_constant_time() {
        // With a full table of 65,536 entries, each further insert evicts one entry; if it
        // scanned the table, a million inserts would cost 6.5e10 entry visits, far beyond
        // this test's time.
        let mut c = ArpCache::new(1 << 16);
        for ip in 1..=(1u32 << 16) {
            c.insert(ip, mac(0), u64::from(ip));
        }
        let start = std::time::Instant::now();
        for ip in (1u32 << 16) + 1..=(1 << 16) + 1_000_000 {
            assert_eq!(c.insert(ip, mac(1), u64::from(ip)), Insert::Evicted);
        }
        assert_eq!(c.evictions(), 1_000_000);
        assert_eq!(c.len(), 1 << 16);
        // The oldest writes went first.
        assert!(!c.contains(1_000_000));
        assert!(c.contains((1 << 16) + 1_000_000));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u32, u8),
        Pin(u32, u8),
        Remove(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u32..40, any::<u8>()).prop_map(|(ip, m)| Op::Write(ip, m)),
            1 => (1u32..40, any::<u8>()).prop_map(|(ip, m)| Op::Pin(ip, m)),
            2 => (1u32..40).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// The table agrees with a model (a map plus a recency queue) through writes, pins
        /// and removes, with keys drawn from a small range so chains collide and wrap, and
        /// a capacity below the key range so eviction runs.
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 0..400), cap in 1usize..24) {
            let mut c = ArpCache::new(cap);
            let mut map: HashMap<u32, (EthernetAddress, bool)> = HashMap::new();
            // Dynamic entries, most recent at the front.
            let mut recency: VecDeque<u32> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Write(ip, m) => {
                        let ip = ip.wrapping_mul(0x0100_0001); // Spread over the hash input.
                        match c.refresh(ip, mac(m), u64::MAX - 1) {
                            Refresh::Updated => {
                                prop_assert!(!map[&ip].1);
                                map.insert(ip, (mac(m), false));
                                recency.retain(|&x| x != ip);
                                recency.push_front(ip);
                            }
                            Refresh::Pinned => prop_assert!(map[&ip].1),
                            Refresh::Absent => {
                                prop_assert!(!map.contains_key(&ip));
                                let expected_victim = recency.back().copied();
                                prop_assert_eq!(c.eviction_candidate(), expected_victim);
                                match c.insert(ip, mac(m), u64::MAX - 1) {
                                    Insert::Inserted => prop_assert!(map.len() < cap),
                                    Insert::Evicted => {
                                        prop_assert_eq!(map.len(), cap);
                                        let victim = recency.pop_back().unwrap();
                                        map.remove(&victim);
                                    }
                                    Insert::Full => {
                                        prop_assert!(recency.is_empty() && map.len() == cap);
                                        continue;
                                    }
                                }
                                map.insert(ip, (mac(m), false));
                                recency.push_front(ip);
                            }
                        }
                    }
                    Op::Pin(ip, m) => {
                        let ip = ip.wrapping_mul(0x0100_0001);
                        let pinned = c.pin(ip, mac(m));
                        if map.contains_key(&ip) {
                            prop_assert!(pinned);
                            recency.retain(|&x| x != ip);
                        } else if map.len() < cap {
                            prop_assert!(pinned);
                        } else if let Some(victim) = recency.pop_back() {
                            prop_assert!(pinned);
                            map.remove(&victim);
                        } else {
                            prop_assert!(!pinned);
                            continue;
                        }
                        map.insert(ip, (mac(m), true));
                    }
                    Op::Remove(ip) => {
                        let ip = ip.wrapping_mul(0x0100_0001);
                        prop_assert_eq!(c.remove(ip), map.remove(&ip).is_some());
                        recency.retain(|&x| x != ip);
                    }
                }
                prop_assert_eq!(c.len(), map.len());
            }
            for (&ip, &(m, _)) in &map {
                prop_assert_eq!(c.lookup(ip, 0), Some(m));
            }
        }
    }
}
