//! Typed handles with generations, and the fixed table that hands them out.
//!
//! Connections, listeners, UDP sockets, storage areas and timers are named across the app
//! contract by small handles: a slot index plus the generation of the slot when the handle
//! was made. Freeing a slot bumps its generation, so a handle kept after its object went away
//! is *stale*: every lookup checks the generation and answers [`HandleError::Stale`] instead
//! of reaching whatever object lives in the slot now. The kind is a type parameter
//! (`Handle<ConnKind>` is not a `Handle<TimerKind>`), so handles of different kinds cannot be
//! mixed up either, and a handle is 8 bytes, `Copy`, and travels as a plain `u64` in the
//! fixed-layout records of service mode ([`Handle::to_raw`]).
//!
//! [`HandleTable`] is a slab of `capacity` slots allocated at start-up, with an intrusive free
//! list: insert, lookup and remove are O(1) and never allocate. Generations are 32 bits and
//! skip 0, so the raw value 0 never names a live object; a slot reused 2^32 times wraps, which
//! at a million reuses a second takes over an hour for one slot: acceptable for handles that
//! an app drops promptly, and the price of keeping handles at 8 bytes.
//!
//! Alternative rejected: bare indexes (what the first contract used for frames and tokens).
//! A stale index silently names someone else's object, the failure this module exists to
//! turn into an error.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use thiserror::Error;

/// A typed handle: a slot index and the slot's generation. See the module documentation.
pub struct Handle<K> {
    index: u32,
    generation: u32,
    kind: PhantomData<fn() -> K>,
}

impl<K> Handle<K> {
    /// A handle from its parts, for a table that keeps its own slots (the timing wheel).
    pub const fn from_parts(index: u32, generation: u32) -> Self {
        Self {
            index,
            generation,
            kind: PhantomData,
        }
    }
    /// The slot index.
    pub const fn index(self) -> u32 {
        self.index
    }
    /// The slot's generation when the handle was made.
    pub const fn generation(self) -> u32 {
        self.generation
    }
    /// The handle as one integer: generation in the high half, index in the low half.
    pub const fn to_raw(self) -> u64 {
        (self.generation as u64) << 32 | self.index as u64
    }
    /// A handle from [`Handle::to_raw`]'s integer. Any value is accepted; a value that names
    /// no live object is refused at lookup, as a stale handle is.
    pub const fn from_raw(raw: u64) -> Self {
        Self::from_parts(raw as u32, (raw >> 32) as u32)
    }
}

impl<K> Clone for Handle<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K> Copy for Handle<K> {}
impl<K> PartialEq for Handle<K> {
    fn eq(&self, other: &Self) -> bool {
        self.to_raw() == other.to_raw()
    }
}
impl<K> Eq for Handle<K> {}
impl<K> Hash for Handle<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.to_raw().hash(state);
    }
}
impl<K: HandleKind> fmt::Debug for Handle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}.{}", K::NAME, self.index, self.generation)
    }
}
impl<K: HandleKind> fmt::Display for Handle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a handle names; its name appears in messages (`conn#3.1`).
pub trait HandleKind {
    /// A short lowercase name.
    const NAME: &'static str;
}

macro_rules! kinds {
    ($($(#[$doc:meta])* $kind:ident => $alias:ident, $name:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub enum $kind {}
        impl HandleKind for $kind {
            const NAME: &'static str = $name;
        }
        $(#[$doc])*
        pub type $alias = Handle<$kind>;
    )*};
}

kinds! {
    /// A UDP socket: a local port bound by the app.
    SocketKind => SocketId, "socket";
    /// A TCP connection.
    ConnKind => ConnId, "conn";
    /// A TCP listener.
    ListenerKind => ListenerId, "listener";
    /// A storage area (Arrakis' virtual storage area).
    AreaKind => AreaId, "area";
    /// An app timer on the engine's timing wheel.
    TimerKind => TimerId, "timer";
}

/// Why a handle lookup or insert failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// The handle's object is gone (closed, cancelled, fired) or never existed: the app kept
    /// a handle past its object's life. Drop the handle.
    #[error("stale handle: its object is gone")]
    Stale,
    /// Every slot is in use; the table's capacity is a configured limit. Close something
    /// first, or configure a larger limit.
    #[error("handle table full ({capacity} in use)")]
    Full {
        /// The table's capacity.
        capacity: usize,
    },
}

const NIL: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    /// The next free slot while free.
    next_free: u32,
    value: Option<T>,
}

/// A fixed slab of objects named by handles. See the module documentation.
#[derive(Debug)]
pub struct HandleTable<K, T> {
    slots: Vec<Slot<T>>,
    free_head: u32,
    len: usize,
    kind: PhantomData<fn() -> K>,
}

impl<K, T> HandleTable<K, T> {
    /// A table of `capacity` slots, all allocated now.
    ///
    /// # Panics
    /// If `capacity` does not fit the index space (`u32::MAX` slots): a configuration bug.
    pub fn new(capacity: usize) -> Self {
        assert!(
            capacity < NIL as usize,
            "handle table capacity {capacity} too large"
        );
        let slots = (0..capacity)
            .map(|i| Slot {
                generation: 1,
                next_free: if i + 1 < capacity { i as u32 + 1 } else { NIL },
                value: None,
            })
            .collect();
        Self {
            slots,
            free_head: if capacity > 0 { 0 } else { NIL },
            len: 0,
            kind: PhantomData,
        }
    }

    /// Objects in the table.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The most objects the table holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Stores `value` and returns its handle; gives `value` back when the table is full.
    pub fn insert(&mut self, value: T) -> Result<Handle<K>, (HandleError, T)> {
        let index = self.free_head;
        if index == NIL {
            let capacity = self.capacity();
            return Err((HandleError::Full { capacity }, value));
        }
        let slot = &mut self.slots[index as usize];
        debug_assert!(slot.value.is_none(), "free slot {index} holds a value");
        self.free_head = slot.next_free;
        slot.value = Some(value);
        self.len += 1;
        Ok(Handle::from_parts(index, slot.generation))
    }

    fn slot(&self, handle: Handle<K>) -> Result<&Slot<T>, HandleError> {
        match self.slots.get(handle.index as usize) {
            Some(slot) if slot.generation == handle.generation && slot.value.is_some() => Ok(slot),
            _ => Err(HandleError::Stale),
        }
    }

    /// The object a handle names.
    pub fn get(&self, handle: Handle<K>) -> Result<&T, HandleError> {
        self.slot(handle).map(|slot| {
            slot.value
                .as_ref()
                .expect("`slot` returns only occupied slots")
        })
    }

    /// The object a handle names, writable.
    pub fn get_mut(&mut self, handle: Handle<K>) -> Result<&mut T, HandleError> {
        self.slot(handle)?;
        Ok(self.slots[handle.index as usize]
            .value
            .as_mut()
            .expect("`slot` checked the slot is occupied"))
    }

    /// Removes the object a handle names; the handle (and every copy) is stale afterwards.
    pub fn remove(&mut self, handle: Handle<K>) -> Result<T, HandleError> {
        self.slot(handle)?;
        let slot = &mut self.slots[handle.index as usize];
        let value = slot
            .value
            .take()
            .expect("`slot` checked the slot is occupied");
        // Skip generation 0 so that a zeroed record never names a live object.
        slot.generation = slot.generation.wrapping_add(1).max(1);
        slot.next_free = self.free_head;
        self.free_head = handle.index;
        self.len -= 1;
        Ok(value)
    }

    /// Every live object with its handle, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Handle<K>, &T)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, slot)| {
            slot.value
                .as_ref()
                .map(|v| (Handle::from_parts(i as u32, slot.generation), v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stale_handles_are_refused_after_reuse() {
        let mut table: HandleTable<ConnKind, &str> = HandleTable::new(1);
        let a = table.insert("a").unwrap();
        assert_eq!(table.get(a), Ok(&"a"));
        assert_eq!(
            table.insert("b").unwrap_err(),
            (HandleError::Full { capacity: 1 }, "b")
        );
        assert_eq!(table.remove(a), Ok("a"));
        let b = table.insert("b").unwrap();
        assert_eq!(a.index(), b.index(), "the slot is reused");
        assert_eq!(table.get(a), Err(HandleError::Stale));
        assert_eq!(table.remove(a), Err(HandleError::Stale));
        assert_eq!(table.get(b), Ok(&"b"));
        assert_eq!(format!("{b:?}"), "conn#0.2");
    }

    #[test]
    fn raw_round_trip_and_zero_names_nothing() {
        let mut table: HandleTable<TimerKind, u8> = HandleTable::new(4);
        let h = table.insert(7).unwrap();
        assert_eq!(Handle::<TimerKind>::from_raw(h.to_raw()), h);
        assert_eq!(table.get(Handle::from_raw(0)), Err(HandleError::Stale));
        assert_eq!(
            table.get(Handle::from_raw(u64::MAX)),
            Err(HandleError::Stale)
        );
    }

    proptest! {
        /// Against a model: a handle reaches its object exactly while the object lives.
        #[test]
        fn matches_model(ops in proptest::collection::vec((any::<bool>(), 0usize..8), 1..200)) {
            let mut table: HandleTable<AreaKind, usize> = HandleTable::new(4);
            let mut live: Vec<(AreaId, usize)> = Vec::new();
            let mut dead: Vec<AreaId> = Vec::new();
            for (n, (insert, pick)) in ops.into_iter().enumerate() {
                if insert {
                    match table.insert(n) {
                        Ok(h) => live.push((h, n)),
                        Err((HandleError::Full { .. }, _)) => prop_assert_eq!(live.len(), 4),
                        Err(e) => prop_assert!(false, "unexpected {:?}", e),
                    }
                } else if !live.is_empty() {
                    let (h, v) = live.swap_remove(pick % live.len());
                    prop_assert_eq!(table.remove(h), Ok(v));
                    dead.push(h);
                }
                for &(h, v) in &live {
                    prop_assert_eq!(table.get(h), Ok(&v));
                }
                for &h in &dead {
                    prop_assert_eq!(table.get(h), Err(HandleError::Stale));
                }
                prop_assert_eq!(table.len(), live.len());
            }
        }
    }
}
