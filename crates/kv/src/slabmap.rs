//! [`SlabMap`]: the map under hashes and sets, built for what Redis asks of a collection
//! besides lookup: a uniformly random element in O(1) (`SPOP`, `SRANDMEMBER`, `HRANDFIELD`)
//! and a stateless cursor that survives writes between calls (`HSCAN`, `SSCAN`).
//!
//! # Design
//!
//! Entries live in a slab (`Vec<Option<Entry>>` with a free list of holes), and a hashbrown
//! [`HashTable<u32>`] of slab indexes finds them by key, hashed with a per-map random SipHash
//! key so that clients cannot aim collisions at one hash. The key is stored once, in its
//! entry. This is the layout of the keyspace's databases ([`crate::keyspace`]), with one
//! addition: `dense`, the slab indexes of the live entries packed into a vector, each entry
//! remembering its position there (removal swaps the last one into the gap, O(1)).
//!
//! - **Random element, O(1) always.** A uniform index into `dense`. Probing the slab for a
//!   live slot, as the keyspace does for `RANDOMKEY`, is O(1) only while the slab is mostly
//!   full; `SPOP key <count>` empties it as it goes, and probing a slab that is 99% holes
//!   costs a hundred tries per pop. The dense list costs 8 bytes an element (its own slot and
//!   the back-pointer) and makes every draw one multiplication and two loads.
//! - **Scan cursor = slab index.** Entries never move in the slab, so a cursor is the next
//!   index to look at, and an element present for the whole scan is returned: it sits at one
//!   index, which the cursor passes exactly once. An element added during the scan may land
//!   in a hole behind the cursor and be missed, and removed ones are not returned after their
//!   removal, both of which `SCAN`'s contract allows. The alternative rejected: cursors over
//!   `dense`, whose swap-removes move an element from the end to a position the cursor may
//!   have passed.
//! - **No compaction.** Moving entries to close holes would break the cursor guarantee, so the
//!   slab only reuses its holes (free list, newest first) and is released when the map
//!   empties (and Redis deletes an empty collection's key anyway). The hash table and `dense`
//!   hold no positions a cursor depends on, so both shrink when a quarter full: the table
//!   rehashes in O(len), paid for by the removals that emptied it.
//!
//! # Byte accounting
//!
//! [`SlabMap::bytes`] is kept by every insert and remove: per element, its slab slot, its
//! `dense` and table slots (with the table's control byte), and the key's and value's heap
//! allocations ([`HeapSize`]). [`SlabMap::recount_bytes`] recomputes it from the elements,
//! for the fuzz body to compare after every command.
//!
//! Elements are bounded by `u32` slab indexes: four billion elements, as Redis' own
//! collections (`2^32 - 1` fields), and far beyond any `maxmemory` (a hundred GiB of slots).

use crate::value::ALLOCATION_OVERHEAD;
use hashbrown::HashTable;
use melange_core::rng::SplitMix64;
use std::hash::{BuildHasher, RandomState};

/// Heap bytes a value holds, for [`SlabMap`]'s accounting.
pub trait HeapSize {
    /// Bytes this value holds on the heap (0 for none).
    fn heap_bytes(&self) -> usize;
}

impl HeapSize for () {
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl HeapSize for Box<[u8]> {
    fn heap_bytes(&self) -> usize {
        alloc_bytes(self.len())
    }
}

/// Bytes a boxed byte string of `len` holds (an empty one allocates nothing).
fn alloc_bytes(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len + ALLOCATION_OVERHEAD
    }
}

/// Most slots one [`SlabMap::scan`] step looks at per element it is asked for: a sparse
/// stretch of slab (after mass removals) ends a step early instead of walking it all, as
/// Redis' `SCAN` bounds its empty-bucket visits to ten per `COUNT`.
pub const SCAN_SLOTS_PER_COUNT: usize = 10;
/// Below this capacity the hash table and `dense` are not shrunk: a small map's slack is less
/// than the cost of rehashing it up and down.
const SHRINK_CAPACITY_MIN: usize = 64;

/// A slab index, the position a scan cursor names.
pub type Slot = u32;

/// One element: the key, its value, and where `dense` lists it.
#[derive(Debug, Clone)]
struct Entry<V> {
    key: Box<[u8]>,
    value: V,
    dense_at: u32,
}

/// A map of byte strings to `V` with O(1) insert, remove, lookup and uniform random element,
/// and stable scan cursors. See the module documentation.
#[derive(Clone)]
pub struct SlabMap<V> {
    hasher: RandomState,
    table: HashTable<Slot>,
    slots: Vec<Option<Entry<V>>>,
    free: Vec<Slot>,
    dense: Vec<Slot>,
    bytes: usize,
}

impl<V> Default for SlabMap<V> {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            dense: Vec::new(),
            bytes: 0,
        }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for SlabMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v)),
            )
            .finish()
    }
}

/// Equal when they hold the same keys with equal values, whatever their slab layout.
impl<V: PartialEq> PartialEq for SlabMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<V> SlabMap<V> {
    /// An empty map with a fresh random hash key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dense.len()
    }

    /// Whether there is no element.
    pub fn is_empty(&self) -> bool {
        self.dense.is_empty()
    }

    /// Bytes the elements hold (see the module documentation), O(1).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bytes every element costs, computed from scratch, O(n): equals
    /// [`SlabMap::bytes`] unless the accounting has a bug.
    pub fn recount_bytes(&self) -> usize
    where
        V: HeapSize,
    {
        self.iter().map(|(k, v)| Self::element_bytes(k, v)).sum()
    }

    /// The end of the slab: every slot is below it (the scan cursor space).
    pub fn slot_end(&self) -> Slot {
        self.slots.len() as Slot
    }

    fn element_bytes(key: &[u8], value: &V) -> usize
    where
        V: HeapSize,
    {
        // The slab slot, the dense slot, the table's index and control byte, the allocations.
        std::mem::size_of::<Option<Entry<V>>>()
            + 2 * std::mem::size_of::<Slot>()
            + 1
            + alloc_bytes(key.len())
            + value.heap_bytes()
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn find(&self, key: &[u8]) -> Option<Slot> {
        let slots = &self.slots;
        self.table
            .find(self.hash(key), |&s| {
                slots[s as usize].as_ref().is_some_and(|e| &*e.key == key)
            })
            .copied()
    }

    fn live(&self, slot: Slot) -> &Entry<V> {
        self.slots[slot as usize]
            .as_ref()
            .expect("slots listed in the table and in dense are live")
    }

    fn live_mut(&mut self, slot: Slot) -> &mut Entry<V> {
        self.slots[slot as usize]
            .as_mut()
            .expect("slots listed in the table and in dense are live")
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.find(key).map(|s| &self.live(s).value)
    }

    /// Whether `key` is in the map.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.find(key).is_some()
    }

    /// Sets `key` to `value`; the old value if the key was there (it keeps its slot).
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V>
    where
        V: HeapSize,
    {
        if let Some(slot) = self.find(key) {
            let added = value.heap_bytes();
            let entry = self.live_mut(slot);
            let old = std::mem::replace(&mut entry.value, value);
            self.bytes = self.bytes - old.heap_bytes() + added;
            return Some(old);
        }
        self.bytes += Self::element_bytes(key, &value);
        let dense_at = u32::try_from(self.dense.len())
            .expect("a collection holds fewer than 2^32 elements (100+ GiB of slots)");
        let entry = Entry {
            key: key.into(),
            value,
            dense_at,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                debug_assert!(self.slots[slot as usize].is_none(), "free slots are holes");
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                u32::try_from(self.slots.len() - 1)
                    .expect("a collection holds fewer than 2^32 elements (100+ GiB of slots)")
            }
        };
        self.dense.push(slot);
        let hash = self.hash(key);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table.insert_unique(hash, slot, |&s| {
            let entry = slots[s as usize].as_ref().expect("indexed slots are live");
            hasher.hash_one(&*entry.key)
        });
        None
    }

    /// Removes `key`; its value if it was there.
    pub fn remove(&mut self, key: &[u8]) -> Option<V>
    where
        V: HeapSize,
    {
        let slot = self.find(key)?;
        Some(self.remove_slot(slot).1)
    }

    fn remove_slot(&mut self, slot: Slot) -> (Box<[u8]>, V)
    where
        V: HeapSize,
    {
        let entry = self.slots[slot as usize]
            .take()
            .expect("a slot found in this map is live");
        let hash = self.hash(&entry.key);
        if let Ok(found) = self.table.find_entry(hash, |&s| s == slot) {
            found.remove();
        }
        let at = entry.dense_at as usize;
        self.dense.swap_remove(at);
        if let Some(&moved) = self.dense.get(at) {
            self.live_mut(moved).dense_at = at as u32;
        }
        self.bytes -= Self::element_bytes(&entry.key, &entry.value);
        if self.dense.is_empty() {
            // Nothing left for a cursor to point at: release the slab.
            debug_assert_eq!(self.bytes, 0, "an empty map accounts no bytes");
            self.table = HashTable::new();
            self.slots = Vec::new();
            self.free = Vec::new();
            self.dense = Vec::new();
        } else {
            self.free.push(slot);
            self.shrink_if_sparse();
        }
        (entry.key, entry.value)
    }

    fn shrink_if_sparse(&mut self) {
        let len = self.dense.len();
        if self.table.capacity() > SHRINK_CAPACITY_MIN && len * 4 < self.table.capacity() {
            let (slots, hasher) = (&self.slots, &self.hasher);
            self.table.shrink_to(len * 2, |&s| {
                let entry = slots[s as usize].as_ref().expect("indexed slots are live");
                hasher.hash_one(&*entry.key)
            });
        }
        if self.dense.capacity() > SHRINK_CAPACITY_MIN && len * 4 < self.dense.capacity() {
            self.dense.shrink_to(len * 2);
        }
    }

    /// A uniformly random element, O(1).
    pub fn random(&self, rng: &mut SplitMix64) -> Option<(&[u8], &V)> {
        if self.dense.is_empty() {
            return None;
        }
        let slot = self.dense[rng.below(self.dense.len() as u64) as usize];
        let entry = self.live(slot);
        Some((&entry.key, &entry.value))
    }

    /// Removes and returns a uniformly random element, O(1).
    pub fn pop_random(&mut self, rng: &mut SplitMix64) -> Option<(Box<[u8]>, V)>
    where
        V: HeapSize,
    {
        if self.dense.is_empty() {
            return None;
        }
        let slot = self.dense[rng.below(self.dense.len() as u64) as usize];
        Some(self.remove_slot(slot))
    }

    /// `count` distinct elements chosen uniformly at random (all of them if `count >= len`),
    /// in O(count) time and space (Floyd's sampling over the dense positions).
    pub fn sample_distinct(
        &self,
        count: usize,
        rng: &mut SplitMix64,
    ) -> impl Iterator<Item = (&[u8], &V)> + '_ {
        let n = self.dense.len();
        let picked: Vec<usize> = if count >= n {
            (0..n).collect()
        } else {
            // Floyd: for j in n-count..n, take a random t in 0..=j, or j itself if t was
            // already taken. Every count-subset comes out with the same probability.
            let mut taken = std::collections::HashSet::with_capacity(count);
            let mut order = Vec::with_capacity(count);
            for j in n - count..n {
                let t = rng.below(j as u64 + 1) as usize;
                let pick = if taken.insert(t) {
                    t
                } else {
                    taken.insert(j);
                    j
                };
                order.push(pick);
            }
            order
        };
        picked.into_iter().map(move |i| {
            let entry = self.live(self.dense[i]);
            (&*entry.key, &entry.value)
        })
    }

    /// Every element, in slab order (the order a full scan returns them in).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &V)> + '_ {
        self.slots
            .iter()
            .filter_map(Option::as_ref)
            .map(|e| (&*e.key, &e.value))
    }

    /// One scan step: visits the live elements from slot `cursor` on, until `count` were
    /// visited or `count * SCAN_SLOTS_PER_COUNT` slots were looked at; returns the cursor to
    /// continue from, 0 when the walk reached the end (Redis' convention).
    pub fn scan<'a>(
        &'a self,
        cursor: u64,
        count: usize,
        mut visit: impl FnMut(&'a [u8], &'a V),
    ) -> u64 {
        let count = count.max(1);
        let looks_max = count.saturating_mul(SCAN_SLOTS_PER_COUNT);
        let (mut slot, mut visited, mut looked) = (cursor, 0usize, 0usize);
        while slot < self.slots.len() as u64 && visited < count && looked < looks_max {
            if let Some(entry) = &self.slots[slot as usize] {
                visit(&entry.key, &entry.value);
                visited += 1;
            }
            slot += 1;
            looked += 1;
        }
        if slot >= self.slots.len() as u64 {
            0
        } else {
            slot
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> Vec<u8> {
        format!("member:{i}").into_bytes()
    }

    #[test]
    fn insert_get_remove_and_exact_bytes() {
        let mut m: SlabMap<Box<[u8]>> = SlabMap::new();
        assert_eq!(m.insert(b"a", b"1".as_slice().into()), None);
        assert_eq!(m.insert(b"b", b"".as_slice().into()), None);
        assert_eq!(m.bytes(), m.recount_bytes());
        assert_eq!(
            m.insert(b"a", b"longer".as_slice().into()).as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(m.bytes(), m.recount_bytes());
        assert_eq!(m.get(b"a").map(|v| &v[..]), Some(&b"longer"[..]));
        assert!(m.contains_key(b"b"));
        assert!(!m.contains_key(b"c"));
        assert_eq!(m.remove(b"c"), None);
        assert_eq!(m.remove(b"a").as_deref(), Some(&b"longer"[..]));
        assert_eq!(m.bytes(), m.recount_bytes());
        assert_eq!(m.len(), 1);
        assert!(m.remove(b"b").is_some());
        assert_eq!((m.len(), m.bytes(), m.slot_end()), (0, 0, 0));
    }

    #[test]
    fn holes_are_reused_and_the_table_shrinks() {
        let mut m: SlabMap<()> = SlabMap::new();
        for i in 0..10_000 {
            m.insert(&key(i), ());
        }
        let capacity = m.table.capacity();
        for i in 0..9_990 {
            assert!(m.remove(&key(i)).is_some());
        }
        assert!(m.table.capacity() < capacity / 8, "the table shrank");
        assert_eq!(m.slot_end(), 10_000, "the slab keeps its positions");
        for i in 20_000..20_100 {
            m.insert(&key(i), ());
        }
        assert_eq!(m.slot_end(), 10_000, "new elements fill holes");
        assert_eq!(m.len(), 110);
        assert_eq!(m.bytes(), m.recount_bytes());
        for i in (9_990..10_000).chain(20_000..20_100) {
            assert!(m.contains_key(&key(i)), "{i}");
        }
    }

    #[test]
    fn random_elements_are_uniform_and_pops_drain_the_map() {
        let mut m: SlabMap<()> = SlabMap::new();
        for i in 0..10 {
            m.insert(&key(i), ());
        }
        let mut rng = SplitMix64::new(1);
        let mut hits = std::collections::HashMap::new();
        for _ in 0..100_000 {
            let (k, _) = m.random(&mut rng).unwrap();
            *hits.entry(k.to_vec()).or_insert(0u32) += 1;
        }
        assert_eq!(hits.len(), 10);
        assert!(
            hits.values().all(|&n| (9_000..11_000).contains(&n)),
            "{hits:?}"
        );
        let mut popped = std::collections::HashSet::new();
        while let Some((k, ())) = m.pop_random(&mut rng) {
            assert!(popped.insert(k));
            assert_eq!(m.bytes(), m.recount_bytes());
        }
        assert_eq!(popped.len(), 10);
        assert!(m.random(&mut rng).is_none());
    }

    #[test]
    fn distinct_samples_have_no_repeats_and_cover_every_element() {
        let mut m: SlabMap<()> = SlabMap::new();
        for i in 0..50 {
            m.insert(&key(i), ());
        }
        let mut rng = SplitMix64::new(2);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let sample: Vec<&[u8]> = m.sample_distinct(10, &mut rng).map(|(k, _)| k).collect();
            let unique: std::collections::HashSet<_> = sample.iter().collect();
            assert_eq!((sample.len(), unique.len()), (10, 10));
            seen.extend(sample.iter().map(|k| k.to_vec()));
        }
        assert_eq!(seen.len(), 50, "every element gets picked");
        assert_eq!(m.sample_distinct(100, &mut rng).count(), 50);
    }

    #[test]
    fn a_scan_returns_every_element_present_throughout_despite_churn() {
        let mut m: SlabMap<()> = SlabMap::new();
        for i in 0..1_000 {
            m.insert(&key(i), ());
        }
        // Elements 0..500 stay; 500..1000 are removed during the scan; new ones come and go.
        let mut seen = std::collections::HashSet::new();
        let (mut cursor, mut step) = (0u64, 0u32);
        loop {
            cursor = m.scan(cursor, 7, |k, ()| {
                seen.insert(k.to_vec());
            });
            if step < 500 {
                m.remove(&key(500 + step));
            }
            m.insert(&key(5_000 + step), ());
            if step % 3 == 0 {
                m.remove(&key(5_000 + step));
            }
            step += 1;
            if cursor == 0 {
                break;
            }
            assert!(step < 10_000, "the scan terminates");
        }
        for i in 0..500 {
            assert!(seen.contains(&key(i)), "{i}");
        }
        assert_eq!(m.bytes(), m.recount_bytes());
    }

    #[test]
    fn a_scan_step_over_a_sparse_slab_is_bounded() {
        let mut m: SlabMap<()> = SlabMap::new();
        for i in 0..1_000 {
            m.insert(&key(i), ());
        }
        for i in 1..999 {
            m.remove(&key(i));
        }
        let mut got = 0;
        let next = m.scan(0, 5, |_, ()| got += 1);
        assert_eq!((got, next), (1, 50), "50 slots looked at, one live");
        assert_eq!(m.scan(5_000, 5, |_, ()| got += 1), 0, "past the end");
    }

    #[test]
    fn equality_ignores_layout() {
        let mut a: SlabMap<()> = SlabMap::new();
        let mut b: SlabMap<()> = SlabMap::new();
        a.insert(b"x", ());
        a.insert(b"y", ());
        b.insert(b"z", ());
        b.insert(b"y", ());
        b.insert(b"x", ());
        assert_ne!(a, b);
        b.remove(b"z");
        assert_eq!(a, b);
        assert_eq!(a.clone(), b);
    }
}
