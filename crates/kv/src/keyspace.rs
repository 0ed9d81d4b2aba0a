//! The keyspace: numbered databases of keys, each with a value, an optional expiry and an
//! access clock, and the byte count of everything held.
//!
//! # Design
//!
//! A database is a slab of entries (`Vec<Option<Entry>>` with a free list) and a hash table
//! of slab indexes (hashbrown's `HashTable<u32>`, hashed by a per-database random SipHash-1-3
//! key, so clients cannot aim collisions). The key is stored once, in its entry. The slab
//! gives what a plain map cannot, each in O(1):
//! - a uniformly random key (`RANDOMKEY`, eviction sampling, active expiry sampling): a
//!   random slab index, retried over holes;
//! - a stable `SCAN` cursor: entries never move, so a cursor is a slab index and every key
//!   present for the whole scan is returned (a key inserted into a hole behind the cursor
//!   may be missed, as Redis allows);
//! - expiry sampling: `volatile` lists the slab indexes of the entries with a TTL, and each
//!   entry remembers its position there for O(1) removal.
//!
//! Every change goes through methods that keep `memory` (the bytes held: entry overhead, key,
//! value) and stamp the entry with a new version from a keyspace-wide counter; `WATCH`
//! compares versions, so no write path can forget to invalidate a transaction.
//!
//! Time is the caller's: every call that may expire takes `now_ms` (Unix milliseconds), so
//! the simulator and the tests control it.

use crate::value::{Kind, Value, ALLOCATION_OVERHEAD};
use hashbrown::HashTable;
use melange_core::rng::SplitMix64;
use std::hash::{BuildHasher, RandomState};

/// Databases in a keyspace (Redis' default `databases 16`).
pub const DATABASES: usize = 16;
/// Bytes an entry costs besides what its key and value hold on the heap: the slab slot, and
/// the table's index and control byte.
pub const ENTRY_OVERHEAD: usize = std::mem::size_of::<Option<Entry>>() + 5;
/// Longest key kept inside its entry: most keys (`user:1000`, `key:000000000042`) are short,
/// and one held inline costs neither an allocation (32 bytes of glibc's heap for a 14-byte
/// key) nor, on every lookup, a cache miss more to compare it.
pub const KEY_INLINE_MAX: usize = 22;

/// A key: inline up to [`KEY_INLINE_MAX`] bytes, else in a heap block of its own. Reads as
/// the bytes it holds.
#[derive(Clone)]
pub enum Key {
    /// A short key, in place.
    Inline {
        /// Its length.
        len: u8,
        /// Its bytes (the first `len`).
        bytes: [u8; KEY_INLINE_MAX],
    },
    /// A longer key.
    Heap(Box<[u8]>),
}

impl Key {
    /// The key `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        if bytes.len() <= KEY_INLINE_MAX {
            let mut inline = [0; KEY_INLINE_MAX];
            inline[..bytes.len()].copy_from_slice(bytes);
            Key::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Key::Heap(bytes.into())
        }
    }

    /// Bytes it holds on the heap (none when inline).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Key::Inline { .. } => 0,
            Key::Heap(bytes) => bytes.len() + ALLOCATION_OVERHEAD,
        }
    }

    /// The key in a box of its own.
    pub fn into_boxed(self) -> Box<[u8]> {
        match self {
            Key::Inline { .. } => Box::from(&*self),
            Key::Heap(bytes) => bytes,
        }
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

/// What an entry of `key` and `value` costs, all told.
pub fn entry_bytes(key: &Key, value: &Value) -> usize {
    ENTRY_OVERHEAD + key.heap_bytes() + value.heap_bytes()
}
/// Random probes of the slab before a sample falls back to a linear walk (a slab that is
/// mostly holes after a mass delete).
const RANDOM_PROBES_MAX: usize = 64;

/// Slab index of an entry in its database.
pub type Slot = u32;

/// No position in `volatile`.
const NOT_VOLATILE: u32 = u32::MAX;

/// One key and what it holds.
#[derive(Debug)]
pub struct Entry {
    key: Key,
    value: Value,
    /// Unix ms at which the key expires; 0 for never.
    expire_at_ms: u64,
    /// Position of this entry's slot in `Db::volatile`, or [`NOT_VOLATILE`].
    volatile_at: u32,
    /// Last access, Unix seconds (wrapping), for approximate LRU.
    accessed_s: u32,
    /// Version stamp of the last change: what `WATCH` compares, and the memcached protocol's
    /// CAS unique (unique per change, never reused, as memcached requires).
    version: u64,
    /// memcached's client flags (0 for values written through RESP, as memcached clients
    /// expect of raw strings).
    flags: u32,
    /// memcached's per-item bits (fetched, win token sent, stale, binary key): see
    /// [`Entry::memcached_bits`]. Cleared by every store.
    mc_bits: u8,
    /// Bytes accounted for this entry.
    bytes: usize,
}

impl Entry {
    /// The key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
    /// The value.
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// When the key expires (Unix ms), if it does.
    pub fn expire_at_ms(&self) -> Option<u64> {
        (self.expire_at_ms != 0).then_some(self.expire_at_ms)
    }
    /// Seconds since the last access at `now_ms`.
    pub fn idle_s(&self, now_ms: u64) -> u64 {
        u64::from(unix_s(now_ms).wrapping_sub(self.accessed_s))
    }
    /// The version stamp of the last change.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// memcached's client flags.
    pub fn flags(&self) -> u32 {
        self.flags
    }
    /// memcached's per-item bits, owned by the memcached front end (`crate::memcached`): what
    /// its items carry besides flags and CAS (fetched since stored, win token sent, stale,
    /// stored under a binary key). 0 after every [`Keyspace::store`].
    pub fn memcached_bits(&self) -> u8 {
        self.mc_bits
    }
    fn is_expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms != 0 && self.expire_at_ms <= now_ms
    }
}

fn unix_s(now_ms: u64) -> u32 {
    (now_ms / 1000) as u32
}

/// Counters a keyspace keeps for `INFO stats` and `INFO keyspace`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyspaceStats {
    /// Keys removed because their TTL passed (lazily or by the active cycle).
    pub expired_keys: u64,
    /// Keys removed to stay under `maxmemory`.
    pub evicted_keys: u64,
    /// Lookups that found their key.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
}

/// One numbered database.
#[derive(Debug)]
pub struct Db {
    hasher: RandomState,
    table: HashTable<Slot>,
    slots: Vec<Option<Entry>>,
    free: Vec<Slot>,
    volatile: Vec<Slot>,
    bytes: usize,
}

impl Default for Db {
    fn default() -> Self {
        Self::new()
    }
}

impl Db {
    /// An empty database.
    pub fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            table: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            volatile: Vec::new(),
            bytes: 0,
        }
    }

    /// Number of keys (expired keys not yet removed included, as Redis' `DBSIZE`).
    pub fn len(&self) -> usize {
        self.table.len()
    }
    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
    /// Keys with a TTL.
    pub fn volatile_len(&self) -> usize {
        self.volatile.len()
    }
    /// Bytes held by this database's entries.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The end of the slab: every slot is below it (the `SCAN` cursor space).
    pub fn slot_end(&self) -> Slot {
        self.slots.len() as Slot
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slot of `key`, expired or not.
    pub fn find(&self, key: &[u8]) -> Option<Slot> {
        let slots = &self.slots;
        self.table
            .find(self.hash(key), |&s| {
                slots[s as usize].as_ref().is_some_and(|e| &*e.key == key)
            })
            .copied()
    }

    /// The entry in `slot`, if any.
    pub fn entry(&self, slot: Slot) -> Option<&Entry> {
        self.slots.get(slot as usize)?.as_ref()
    }

    fn entry_mut(&mut self, slot: Slot) -> &mut Entry {
        self.slots[slot as usize]
            .as_mut()
            .expect("a slot handed out by this database holds an entry")
    }

    /// Inserts a new key (which must not exist) and returns its slot.
    fn insert_new(&mut self, key: &[u8], value: Value, version: u64, now_ms: u64) -> Slot {
        debug_assert!(self.find(key).is_none(), "insert_new of an existing key");
        let mut entry = Entry {
            key: Key::new(key),
            value,
            expire_at_ms: 0,
            volatile_at: NOT_VOLATILE,
            accessed_s: unix_s(now_ms),
            version,
            flags: 0,
            mc_bits: 0,
            bytes: 0,
        };
        entry.bytes = entry_bytes(&entry.key, &entry.value);
        self.bytes += entry.bytes;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as Slot
            }
        };
        let hash = self.hash(key);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table.insert_unique(hash, slot, |&s| {
            let key = &slots[s as usize]
                .as_ref()
                .expect("indexed slots are live")
                .key;
            hasher.hash_one(&**key)
        });
        slot
    }

    /// Removes the entry in `slot` and returns its key and value.
    fn remove_slot(&mut self, slot: Slot) -> Entry {
        let entry = self.slots[slot as usize]
            .take()
            .expect("a slot handed out by this database holds an entry");
        let hash = self.hash(&entry.key);
        if let Ok(found) = self.table.find_entry(hash, |&s| s == slot) {
            found.remove();
        }
        if entry.volatile_at != NOT_VOLATILE {
            self.unlist_volatile(entry.volatile_at);
        }
        self.bytes -= entry.bytes;
        self.free.push(slot);
        entry
    }

    fn unlist_volatile(&mut self, at: u32) {
        let at = at as usize;
        self.volatile.swap_remove(at);
        if let Some(&moved) = self.volatile.get(at) {
            self.entry_mut(moved).volatile_at = at as u32;
        }
    }

    fn set_expire(&mut self, slot: Slot, at_ms: u64) {
        let listed = self.entry_mut(slot).volatile_at != NOT_VOLATILE;
        if at_ms == 0 {
            if listed {
                let at = self.entry_mut(slot).volatile_at;
                self.unlist_volatile(at);
                self.entry_mut(slot).volatile_at = NOT_VOLATILE;
            }
        } else if !listed {
            self.volatile.push(slot);
            self.entry_mut(slot).volatile_at = (self.volatile.len() - 1) as u32;
        }
        self.entry_mut(slot).expire_at_ms = at_ms;
    }

    fn reaccount(&mut self, slot: Slot) {
        let entry = self.entry_mut(slot);
        let now = entry_bytes(&entry.key, &entry.value);
        let before = std::mem::replace(&mut entry.bytes, now);
        self.bytes = self.bytes - before + now;
    }

    /// A uniformly random live slot.
    pub fn random_slot(&self, rng: &mut SplitMix64) -> Option<Slot> {
        if self.table.is_empty() {
            return None;
        }
        let end = self.slots.len() as u64;
        for _ in 0..RANDOM_PROBES_MAX {
            let slot = rng.below(end) as usize;
            if self.slots[slot].is_some() {
                return Some(slot as Slot);
            }
        }
        let start = rng.below(end) as usize;
        (0..self.slots.len())
            .map(|i| (start + i) % self.slots.len())
            .find(|&s| self.slots[s].is_some())
            .map(|s| s as Slot)
    }

    /// A uniformly random slot among the keys with a TTL.
    pub fn random_volatile(&self, rng: &mut SplitMix64) -> Option<Slot> {
        if self.volatile.is_empty() {
            return None;
        }
        Some(self.volatile[rng.below(self.volatile.len() as u64) as usize])
    }

    /// Visits the live entries of slots `cursor..` until `budget` slots were looked at;
    /// returns the next cursor, 0 when the walk is complete (Redis' convention).
    pub fn scan(&self, cursor: u64, budget: usize, mut visit: impl FnMut(&Entry)) -> u64 {
        let mut slot = cursor as usize;
        let mut looked = 0;
        while slot < self.slots.len() && looked < budget.max(1) {
            if let Some(entry) = &self.slots[slot] {
                visit(entry);
            }
            slot += 1;
            looked += 1;
        }
        if slot >= self.slots.len() {
            0
        } else {
            slot as u64
        }
    }

    /// Every live entry, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.slots.iter().filter_map(Option::as_ref)
    }

    fn clear(&mut self) {
        self.table.clear();
        self.slots.clear();
        self.free.clear();
        self.volatile.clear();
        self.bytes = 0;
    }
}

/// What to do when a write would exceed `maxmemory` (Redis' `maxmemory-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EvictionPolicy {
    /// Refuse writes with `OOM command not allowed when used memory > 'maxmemory'`.
    #[default]
    NoEviction,
    /// Evict the least recently used of a sample of all keys.
    AllKeysLru,
    /// Evict the least recently used of a sample of keys with a TTL.
    VolatileLru,
    /// Evict a random key.
    AllKeysRandom,
    /// Evict a random key with a TTL.
    VolatileRandom,
    /// Evict the key with the nearest expiry of a sample of keys with a TTL.
    VolatileTtl,
}

impl EvictionPolicy {
    /// Every policy, with its Redis name.
    pub const ALL: [(EvictionPolicy, &'static str); 6] = [
        (EvictionPolicy::NoEviction, "noeviction"),
        (EvictionPolicy::AllKeysLru, "allkeys-lru"),
        (EvictionPolicy::VolatileLru, "volatile-lru"),
        (EvictionPolicy::AllKeysRandom, "allkeys-random"),
        (EvictionPolicy::VolatileRandom, "volatile-random"),
        (EvictionPolicy::VolatileTtl, "volatile-ttl"),
    ];

    /// The Redis name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, n)| *n)
            .unwrap_or("noeviction")
    }

    /// The policy a Redis name names (case-insensitive). The LFU policies are not offered.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(_, n)| n.as_bytes().eq_ignore_ascii_case(name))
            .map(|(p, _)| *p)
    }
}

/// Keys a single eviction looks at to pick its victim (Redis' `maxmemory-samples`).
pub const EVICTION_SAMPLES: usize = 5;
/// Keys with a TTL one active-expiry round looks at per database (Redis'
/// `ACTIVE_EXPIRE_CYCLE_KEYS_PER_LOOP`).
pub const ACTIVE_EXPIRE_SAMPLES: usize = 20;
/// Rounds of one active-expiry cycle per database, at most: a round that expires more than a
/// quarter of its sample runs again, as Redis does, up to this bound.
pub const ACTIVE_EXPIRE_ROUNDS_MAX: usize = 16;

/// A write that cannot fit under `maxmemory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

/// The whole keyspace: [`DATABASES`] databases, the memory limit and the counters.
#[derive(Debug)]
pub struct Keyspace {
    dbs: Vec<Db>,
    version: u64,
    rng: SplitMix64,
    /// Bytes the keyspace may hold (0: no limit), Redis' `maxmemory`.
    pub maxmemory: usize,
    /// What to do at the limit.
    pub policy: EvictionPolicy,
    /// Counters.
    pub stats: KeyspaceStats,
}

impl Keyspace {
    /// An empty keyspace with no memory limit; `seed` drives its sampling.
    pub fn new(seed: u64) -> Self {
        Self {
            dbs: (0..DATABASES).map(|_| Db::new()).collect(),
            version: 0,
            rng: SplitMix64::new(seed),
            maxmemory: 0,
            policy: EvictionPolicy::NoEviction,
            stats: KeyspaceStats::default(),
        }
    }

    /// Database `db`.
    ///
    /// # Panics
    ///
    /// If `db >= DATABASES` (clients select only checked numbers).
    pub fn db(&self, db: usize) -> &Db {
        &self.dbs[db]
    }

    /// The keyspace's random source (seeded at creation), for commands that pick at random
    /// (`SPOP`, `SRANDMEMBER`, `HRANDFIELD`, ...).
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }

    /// Bytes held by every database.
    pub fn used_bytes(&self) -> usize {
        self.dbs.iter().map(Db::bytes).sum()
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// The live slot of `key` in `db`, removing it first if it has expired; counts a hit or a
    /// miss and refreshes the access clock on a hit.
    pub fn lookup(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<Slot> {
        let found = self.lookup_quiet(db, key, now_ms);
        match found {
            Some(slot) => {
                self.stats.hits += 1;
                self.dbs[db].entry_mut(slot).accessed_s = unix_s(now_ms);
            }
            None => self.stats.misses += 1,
        }
        found
    }

    /// As [`Keyspace::lookup`], without counting or touching the access clock (for writes
    /// and for commands such as `TOUCH`-less existence checks that Redis does not count).
    pub fn lookup_quiet(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<Slot> {
        let slot = self.dbs[db].find(key)?;
        if self.dbs[db].entry_mut(slot).is_expired(now_ms) {
            self.dbs[db].remove_slot(slot);
            self.stats.expired_keys += 1;
            self.version += 1;
            return None;
        }
        Some(slot)
    }

    /// The entry in `slot` of `db`.
    ///
    /// # Panics
    ///
    /// If the slot is empty: slots come from a lookup in the same command.
    pub fn entry(&self, db: usize, slot: Slot) -> &Entry {
        self.dbs[db]
            .entry(slot)
            .expect("a slot from a lookup in this command")
    }

    /// The value of `key` if it is of `kind`: `Ok(None)` if absent, `Err(())` if of another
    /// type (the caller replies `WRONGTYPE`).
    pub fn get_typed(
        &mut self,
        db: usize,
        key: &[u8],
        kind: Kind,
        now_ms: u64,
    ) -> Result<Option<Slot>, WrongType> {
        match self.lookup(db, key, now_ms) {
            None => Ok(None),
            Some(slot) if self.entry(db, slot).value.kind() == kind => Ok(Some(slot)),
            Some(_) => Err(WrongType),
        }
    }

    /// As [`Keyspace::get_typed`], for a command that writes the key (Redis'
    /// `lookupKeyWrite`): a hit refreshes the access clock, but neither a hit nor a miss is
    /// counted in the stats.
    pub fn get_typed_for_write(
        &mut self,
        db: usize,
        key: &[u8],
        kind: Kind,
        now_ms: u64,
    ) -> Result<Option<Slot>, WrongType> {
        let Some(slot) = self.lookup_quiet(db, key, now_ms) else {
            return Ok(None);
        };
        let entry = self.dbs[db].entry_mut(slot);
        entry.accessed_s = unix_s(now_ms);
        if entry.value.kind() == kind {
            Ok(Some(slot))
        } else {
            Err(WrongType)
        }
    }

    /// Changes the value in `slot` through `change`; re-accounts its bytes, stamps a new
    /// version, and deletes the key if the change left an empty collection.
    pub fn update<R>(&mut self, db: usize, slot: Slot, change: impl FnOnce(&mut Value) -> R) -> R {
        let version = self.next_version();
        let d = &mut self.dbs[db];
        let entry = d.entry_mut(slot);
        let result = change(&mut entry.value);
        entry.version = version;
        if entry.value.is_empty_collection() {
            d.remove_slot(slot);
        } else {
            d.reaccount(slot);
        }
        result
    }

    /// Stores `value` under `key` in `db`: a new key, or a new value for an existing one
    /// (whose TTL is dropped unless `keep_ttl`). Returns the slot.
    pub fn store(
        &mut self,
        db: usize,
        key: &[u8],
        value: Value,
        keep_ttl: bool,
        now_ms: u64,
    ) -> Slot {
        let version = self.next_version();
        match self.lookup_quiet(db, key, now_ms) {
            Some(slot) => {
                let d = &mut self.dbs[db];
                let entry = d.entry_mut(slot);
                entry.value = value;
                entry.version = version;
                entry.flags = 0;
                entry.mc_bits = 0;
                entry.accessed_s = unix_s(now_ms);
                if !keep_ttl {
                    d.set_expire(slot, 0);
                }
                d.reaccount(slot);
                slot
            }
            None => self.dbs[db].insert_new(key, value, version, now_ms),
        }
    }

    /// Removes `key` from `db`; its value if it was there (and live).
    pub fn remove(&mut self, db: usize, key: &[u8], now_ms: u64) -> Option<Value> {
        let slot = self.lookup_quiet(db, key, now_ms)?;
        self.version += 1;
        Some(self.dbs[db].remove_slot(slot).value)
    }

    /// Removes the entry in `slot` and returns its key, value and expiry.
    pub fn remove_slot(&mut self, db: usize, slot: Slot) -> (Box<[u8]>, Value, u64) {
        self.version += 1;
        let entry = self.dbs[db].remove_slot(slot);
        (entry.key.into_boxed(), entry.value, entry.expire_at_ms)
    }

    /// Sets (or with 0 clears) the expiry of the key in `slot`.
    pub fn set_expire(&mut self, db: usize, slot: Slot, at_ms: u64) {
        let version = self.next_version();
        let d = &mut self.dbs[db];
        d.set_expire(slot, at_ms);
        d.entry_mut(slot).version = version;
    }

    /// Sets memcached's client flags of the key in `slot` (after a [`Keyspace::store`], which
    /// clears them).
    pub fn set_flags(&mut self, db: usize, slot: Slot, flags: u32) {
        self.dbs[db].entry_mut(slot).flags = flags;
    }

    /// Sets memcached's per-item bits of the key in `slot` (see [`Entry::memcached_bits`]).
    pub fn set_memcached_bits(&mut self, db: usize, slot: Slot, bits: u8) {
        self.dbs[db].entry_mut(slot).mc_bits = bits;
    }

    /// Sets (or with 0 clears) the expiry of the key in `slot` without stamping a new
    /// version: memcached's `touch`, which keeps the item's CAS unique (a client may `gets`,
    /// `touch`, then `cas`). A Redis `WATCH` therefore does not see a memcached touch.
    pub fn touch_expire(&mut self, db: usize, slot: Slot, at_ms: u64) {
        self.dbs[db].set_expire(slot, at_ms);
    }

    /// Refreshes the access clock of the key in `slot` (a fetch's LRU bump), without an
    /// expiry check: the slot stays valid for the rest of the command.
    pub fn mark_accessed(&mut self, db: usize, slot: Slot, now_ms: u64) {
        self.dbs[db].entry_mut(slot).accessed_s = unix_s(now_ms);
    }

    /// Stamps a new version on the key in `slot` without changing it (memcached's `md ... I`,
    /// which marks an item stale and gives it a new CAS unique).
    pub fn bump_version(&mut self, db: usize, slot: Slot) {
        let version = self.next_version();
        self.dbs[db].entry_mut(slot).version = version;
    }

    /// Removes every key of `db`.
    pub fn flush_db(&mut self, db: usize) {
        self.version += 1;
        self.dbs[db].clear();
    }

    /// Removes every key of every database.
    pub fn flush_all(&mut self) {
        self.version += 1;
        self.dbs.iter_mut().for_each(Db::clear);
    }

    /// Swaps two databases' contents.
    pub fn swap_db(&mut self, a: usize, b: usize) {
        self.version += 1;
        self.dbs.swap(a, b);
    }

    /// The version of `key` in `db` (0 if absent), for `WATCH`. Expired keys count as
    /// absent.
    pub fn watch_version(&mut self, db: usize, key: &[u8], now_ms: u64) -> u64 {
        match self.lookup_quiet(db, key, now_ms) {
            Some(slot) => self.entry(db, slot).version,
            None => 0,
        }
    }

    /// A random live key of `db` (expired ones met on the way are removed).
    pub fn random_key(&mut self, db: usize, now_ms: u64) -> Option<Box<[u8]>> {
        // Bounded: in a database of only expired keys each probe removes one.
        for _ in 0..RANDOM_PROBES_MAX {
            let slot = self.dbs[db].random_slot(&mut self.rng)?;
            let entry = self.entry(db, slot);
            if entry.is_expired(now_ms) {
                self.remove_slot(db, slot);
                self.stats.expired_keys += 1;
                continue;
            }
            return Some(Box::from(&*entry.key));
        }
        None
    }

    /// One active-expiry cycle (Redis' `activeExpireCycle`, run about ten times a second):
    /// samples keys with a TTL in every database and removes the expired ones, again while a
    /// round finds more than a quarter expired. Returns the keys removed.
    pub fn active_expire(&mut self, now_ms: u64) -> u64 {
        let mut removed = 0;
        for db in 0..DATABASES {
            for _ in 0..ACTIVE_EXPIRE_ROUNDS_MAX {
                let sample = ACTIVE_EXPIRE_SAMPLES.min(self.dbs[db].volatile_len());
                if sample == 0 {
                    break;
                }
                let mut expired = 0;
                for _ in 0..sample {
                    let Some(slot) = self.dbs[db].random_volatile(&mut self.rng) else {
                        break;
                    };
                    if self.entry(db, slot).is_expired(now_ms) {
                        self.remove_slot(db, slot);
                        expired += 1;
                    }
                }
                removed += expired;
                if expired * 4 <= sample {
                    break;
                }
            }
        }
        self.stats.expired_keys += removed as u64;
        removed as u64
    }

    /// Makes room before a write: while the keyspace holds more than `maxmemory`, evicts by
    /// the policy. `Err` if over the limit and nothing can be evicted (or the policy is
    /// `noeviction`): the caller refuses the command with Redis' OOM error.
    pub fn make_room(&mut self, now_ms: u64) -> Result<(), OutOfMemory> {
        if self.maxmemory == 0 {
            return Ok(());
        }
        while self.used_bytes() > self.maxmemory {
            let Some((db, slot)) = self.eviction_victim(now_ms) else {
                return Err(OutOfMemory);
            };
            self.remove_slot(db, slot);
            self.stats.evicted_keys += 1;
        }
        Ok(())
    }

    fn eviction_victim(&mut self, now_ms: u64) -> Option<(usize, Slot)> {
        let volatile = matches!(
            self.policy,
            EvictionPolicy::VolatileLru
                | EvictionPolicy::VolatileRandom
                | EvictionPolicy::VolatileTtl
        );
        let samples = match self.policy {
            EvictionPolicy::NoEviction => return None,
            EvictionPolicy::AllKeysRandom | EvictionPolicy::VolatileRandom => 1,
            _ => EVICTION_SAMPLES,
        };
        // Databases with candidates, weighted by their size through the sampling.
        let mut best: Option<(usize, Slot, u64)> = None;
        for db in 0..DATABASES {
            let d = &self.dbs[db];
            let count = if volatile { d.volatile_len() } else { d.len() };
            if count == 0 {
                continue;
            }
            for _ in 0..samples {
                let slot = if volatile {
                    d.random_volatile(&mut self.rng)
                } else {
                    d.random_slot(&mut self.rng)
                };
                let Some(slot) = slot else { continue };
                let entry = d.entry(slot).expect("sampled slots are live");
                // Larger score = better victim.
                let score = match self.policy {
                    EvictionPolicy::VolatileTtl => u64::MAX - entry.expire_at_ms,
                    EvictionPolicy::AllKeysRandom | EvictionPolicy::VolatileRandom => {
                        self.rng.next_u64()
                    }
                    _ => entry.idle_s(now_ms),
                };
                if best.is_none_or(|(_, _, s)| score > s) {
                    best = Some((db, slot, score));
                }
            }
        }
        best.map(|(db, slot, _)| (db, slot))
    }
}

/// The value under the key is of another type (`WRONGTYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongType;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_live_in_their_entry_and_long_ones_on_the_heap() {
        for len in [0, 1, 14, KEY_INLINE_MAX, KEY_INLINE_MAX + 1, 300] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let key = Key::new(&bytes);
            assert_eq!(&*key, &bytes[..]);
            assert_eq!(&*key.clone().into_boxed(), &bytes[..]);
            let inline = len <= KEY_INLINE_MAX;
            assert_eq!(key.heap_bytes() == 0, inline, "length {len}");
        }
        // A key costs no more room in its entry than a boxed slice and its length byte.
        assert_eq!(std::mem::size_of::<Key>(), 24);
        assert!(std::mem::size_of::<Option<Entry>>() <= 88);
    }

    fn s(v: &str) -> Value {
        Value::Str(v.as_bytes().to_vec())
    }

    #[test]
    fn store_find_remove_and_byte_counts() {
        let mut ks = Keyspace::new(1);
        assert_eq!(ks.used_bytes(), 0);
        ks.store(0, b"a", s("1"), false, 1000);
        ks.store(0, b"b", s("22"), false, 1000);
        assert_eq!(ks.db(0).len(), 2);
        let before = ks.used_bytes();
        ks.store(0, b"a", s("333333"), false, 1000);
        assert!(ks.used_bytes() > before);
        assert_eq!(ks.remove(0, b"a", 1000), Some(s("333333")));
        assert_eq!(ks.remove(0, b"a", 1000), None);
        assert_eq!(ks.remove(0, b"b", 1000), Some(s("22")));
        assert_eq!(ks.used_bytes(), 0);
        // The freed slots are reused.
        ks.store(0, b"c", s("x"), false, 1000);
        assert!(ks.db(0).slot_end() <= 2);
    }

    #[test]
    fn expired_keys_vanish_on_access_and_in_the_active_cycle() {
        let mut ks = Keyspace::new(2);
        for i in 0..1000u32 {
            let slot = ks.store(0, format!("k{i}").as_bytes(), s("v"), false, 0);
            if i % 2 == 0 {
                ks.set_expire(0, slot, 5_000);
            }
        }
        assert_eq!(ks.db(0).volatile_len(), 500);
        assert!(ks.lookup(0, b"k0", 4_999).is_some());
        assert!(ks.lookup(0, b"k0", 5_000).is_none());
        assert_eq!(ks.stats.expired_keys, 1);
        let mut cycles = 0;
        while ks.db(0).volatile_len() > 0 {
            ks.active_expire(6_000);
            cycles += 1;
            assert!(cycles < 100, "the active cycle makes progress");
        }
        assert_eq!(ks.db(0).len(), 500);
        assert_eq!(ks.stats.expired_keys, 500);
        // Persisting removes a key from the volatile list.
        let slot = ks.lookup(0, b"k1", 6_000).unwrap();
        ks.set_expire(0, slot, 10_000);
        ks.set_expire(0, slot, 0);
        assert_eq!(ks.db(0).volatile_len(), 0);
    }

    #[test]
    fn eviction_keeps_the_keyspace_under_maxmemory() {
        let mut ks = Keyspace::new(3);
        ks.policy = EvictionPolicy::AllKeysLru;
        ks.maxmemory = 100_000;
        for i in 0..10_000u32 {
            ks.make_room(u64::from(i) * 1000).unwrap();
            // As Redis, room is made before a write: the limit holds then, and a write may
            // pass it by its own size until the next one.
            assert!(
                ks.used_bytes() <= 100_000,
                "{} before write {i}",
                ks.used_bytes()
            );
            ks.store(
                0,
                format!("key:{i}").as_bytes(),
                s("0123456789"),
                false,
                u64::from(i) * 1000,
            );
        }
        assert!(ks.used_bytes() <= 100_000 + 400, "{}", ks.used_bytes());
        assert!(ks.stats.evicted_keys > 8_000);
        // Recent keys survive far more often than old ones (approximate LRU).
        let recent = (9_000..10_000)
            .filter(|i| ks.db(0).find(format!("key:{i}").as_bytes()).is_some())
            .count();
        let old = (0..1_000)
            .filter(|i| ks.db(0).find(format!("key:{i}").as_bytes()).is_some())
            .count();
        assert!(recent > 10 * old.max(1), "recent {recent} old {old}");

        ks.policy = EvictionPolicy::NoEviction;
        ks.store(0, b"big", Value::Str(vec![0; 10_000]), false, 0);
        assert_eq!(ks.make_room(0), Err(OutOfMemory));
    }

    #[test]
    fn versions_change_on_every_write_and_expiry() {
        let mut ks = Keyspace::new(4);
        assert_eq!(ks.watch_version(0, b"k", 0), 0);
        let slot = ks.store(0, b"k", s("1"), false, 0);
        let v1 = ks.watch_version(0, b"k", 0);
        assert_ne!(v1, 0);
        ks.update(0, slot, |v| *v = s("2"));
        let v2 = ks.watch_version(0, b"k", 0);
        assert_ne!(v1, v2);
        ks.set_expire(0, slot, 10);
        assert_ne!(ks.watch_version(0, b"k", 0), v2);
        assert_eq!(ks.watch_version(0, b"k", 10), 0);
    }

    #[test]
    fn scan_returns_every_key_present_throughout() {
        let mut ks = Keyspace::new(5);
        for i in 0..500u32 {
            ks.store(0, format!("k{i}").as_bytes(), s("v"), false, 0);
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        let mut i = 500u32;
        loop {
            cursor = ks.db(0).scan(cursor, 10, |e| {
                seen.insert(e.key().to_vec());
            });
            // Churn while scanning: new keys and removals of keys not counted below.
            ks.store(0, format!("k{i}").as_bytes(), s("v"), false, 0);
            ks.remove(0, format!("k{i}").as_bytes(), 0);
            i += 1;
            if cursor == 0 {
                break;
            }
        }
        for i in 0..500u32 {
            assert!(seen.contains(format!("k{i}").as_bytes()), "k{i}");
        }
    }

    #[test]
    fn random_keys_come_from_the_database() {
        let mut ks = Keyspace::new(6);
        assert_eq!(ks.random_key(0, 0), None);
        for i in 0..100u32 {
            ks.store(0, format!("k{i}").as_bytes(), s("v"), false, 0);
        }
        for i in 0..99u32 {
            ks.remove(0, format!("k{i}").as_bytes(), 0);
        }
        assert_eq!(ks.random_key(0, 0).as_deref(), Some(&b"k99"[..]));
    }
}
