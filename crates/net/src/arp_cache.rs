//! The ARP translation table (RFC 826 "translation table"): IPv4 address to MAC address,
//! with a per-entry expiry.
//!
//! Design: open addressing with linear probing over a boxed slice of `2 × entries_max`
//! slots rounded up to a power of two, allocated once. The slot is chosen by Fibonacci
//! hashing of the 32-bit address (one multiply and a shift), and a load factor of at most
//! one half keeps probe chains to one or two slots, so the lookup on every `send_udp` costs a
//! multiply, a shift and a compare or two. Deletion shifts later entries of the chain back
//! (Knuth's algorithm R), so there are no tombstones and lookups never slow down with age.
//! Address `0.0.0.0` marks an empty slot; it is never a valid next hop or sender to learn.
//!
//! Expiry is lazy: an expired entry is a miss for [`ArpCache::lookup`], so the next send
//! re-resolves it, and it stays in its slot (cheap to refresh) until a reply updates it or
//! eviction reclaims it. When the table is full, the entry that expires first is evicted;
//! finding it scans the table, which only happens when more neighbours talk to us than
//! `entries_max`, a sizing error the operator can see as evictions.
//!
//! Alternative rejected: `std::collections::HashMap`. It hashes with SipHash (slow for a
//! 4-byte key), may allocate on insert, and has no bound of its own.

use melange_wire::EthernetAddress;

/// One slot of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// The IPv4 address as a `u32`; 0 when the slot is empty.
    ip: u32,
    /// The hardware address.
    mac: EthernetAddress,
    /// When the entry stops being used.
    expires_at_ns: u64,
}

const EMPTY: Slot = Slot {
    ip: 0,
    mac: EthernetAddress([0; 6]),
    expires_at_ns: 0,
};

/// A fixed-capacity IPv4-to-MAC table. See the module documentation.
#[derive(Debug)]
pub(crate) struct ArpCache {
    slots: Box<[Slot]>,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
    /// `32 - log2(slots.len())`: the Fibonacci hash keeps the top bits.
    shift: u32,
    /// Occupied slots.
    len: usize,
    /// Most entries held at once; at most half the slots.
    entries_max: usize,
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
        ArpCache {
            slots: vec![EMPTY; slot_count].into_boxed_slice(),
            mask: slot_count - 1,
            shift,
            len: 0,
            entries_max,
            evictions: 0,
        }
    }

    /// Entries held, expired ones included.
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

    /// The slot holding `ip`, if any.
    #[inline]
    fn find(&self, ip: u32) -> Option<usize> {
        debug_assert!(ip != 0);
        let mut i = self.home(ip);
        // The load factor is at most 1/2, so an empty slot ends every chain.
        loop {
            let slot = &self.slots[i];
            if slot.ip == ip {
                return Some(i);
            }
            if slot.ip == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The MAC for `ip` if known and not expired at `now_ns`.
    #[inline]
    pub(crate) fn lookup(&self, ip: u32, now_ns: u64) -> Option<EthernetAddress> {
        if ip == 0 {
            return None;
        }
        let slot = &self.slots[self.find(ip)?];
        (now_ns < slot.expires_at_ns).then_some(slot.mac)
    }

    /// Updates the entry for `ip` if one exists (RFC 826 "merge"); true if it did.
    pub(crate) fn update(&mut self, ip: u32, mac: EthernetAddress, expires_at_ns: u64) -> bool {
        if ip == 0 {
            return false;
        }
        match self.find(ip) {
            Some(i) => {
                self.slots[i].mac = mac;
                self.slots[i].expires_at_ns = expires_at_ns;
                true
            }
            None => false,
        }
    }

    /// Inserts or updates the entry for `ip`, evicting the entry closest to expiry if full.
    pub(crate) fn insert(&mut self, ip: u32, mac: EthernetAddress, expires_at_ns: u64) {
        if ip == 0 || self.update(ip, mac, expires_at_ns) {
            return;
        }
        if self.len == self.entries_max {
            self.evict_one();
        }
        debug_assert!(self.len < self.entries_max);
        let mut i = self.home(ip);
        while self.slots[i].ip != 0 {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Slot {
            ip,
            mac,
            expires_at_ns,
        };
        self.len += 1;
    }

    /// Removes the entry for `ip`; true if there was one. Only the model test needs it:
    /// the interface removes entries by eviction alone.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, ip: u32) -> bool {
        if ip == 0 {
            return false;
        }
        match self.find(ip) {
            Some(i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    fn evict_one(&mut self) {
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.ip != 0)
            .min_by_key(|(_, s)| s.expires_at_ns)
            .map(|(i, _)| i);
        if let Some(i) = victim {
            self.remove_at(i);
            self.evictions += 1;
        }
    }

    /// Empties slot `hole` and shifts later members of its probe chain back (Knuth, TAOCP
    /// vol. 3, §6.4, Algorithm R), so no tombstones are needed.
    fn remove_at(&mut self, mut hole: usize) {
        debug_assert!(self.slots[hole].ip != 0);
        let mut i = hole;
        loop {
            i = (i + 1) & self.mask;
            let slot = self.slots[i];
            if slot.ip == 0 {
                break;
            }
            let home = self.home(slot.ip);
            // The entry may move into the hole if the hole lies on its probe path, i.e. it
            // is no further from its home slot than the entry's current position.
            if hole.wrapping_sub(home) & self.mask < i.wrapping_sub(home) & self.mask {
                self.slots[hole] = slot;
                hole = i;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn mac(n: u8) -> EthernetAddress {
        EthernetAddress([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn insert_lookup_expire() {
        let mut c = ArpCache::new(4);
        c.insert(0x0a00_0002, mac(2), 100);
        assert_eq!(c.lookup(0x0a00_0002, 99), Some(mac(2)));
        assert_eq!(c.lookup(0x0a00_0002, 100), None, "expired at its deadline");
        assert_eq!(c.lookup(0x0a00_0003, 0), None);
        assert_eq!(c.lookup(0, 0), None);
        c.insert(0x0a00_0002, mac(9), 200);
        assert_eq!(c.lookup(0x0a00_0002, 150), Some(mac(9)));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn full_table_evicts_earliest_expiry() {
        let mut c = ArpCache::new(2);
        c.insert(1, mac(1), 300);
        c.insert(2, mac(2), 100);
        c.insert(3, mac(3), 200);
        assert_eq!(c.len(), 2);
        assert_eq!(c.evictions(), 1);
        assert_eq!(c.lookup(2, 0), None);
        assert_eq!(c.lookup(1, 0), Some(mac(1)));
        assert_eq!(c.lookup(3, 0), Some(mac(3)));
    }

    proptest! {
        /// The table agrees with a `HashMap` model through inserts and removes, with keys
        /// drawn from a small range so chains collide and wrap.
        #[test]
        fn matches_model(ops in proptest::collection::vec((any::<bool>(), 1u32..40, any::<u8>()), 0..300)) {
            let mut c = ArpCache::new(64);
            let mut model: HashMap<u32, EthernetAddress> = HashMap::new();
            for (insert, ip, m) in ops {
                let ip = ip.wrapping_mul(0x0100_0001); // Spread over the hash's input bits.
                if insert {
                    c.insert(ip, mac(m), u64::MAX);
                    model.insert(ip, mac(m));
                } else {
                    prop_assert_eq!(c.remove(ip), model.remove(&ip).is_some());
                }
                prop_assert_eq!(c.len(), model.len());
            }
            for (&ip, &m) in &model {
                prop_assert_eq!(c.lookup(ip, 0), Some(m));
            }
        }
    }
}
