//! A hierarchical timing wheel with injectable ticks (Varghese and Lauck; IX uses one for TCP).
//!
//! Six levels of 64 slots each: level `L` slots are `64^L` ticks wide, so the wheel spans
//! `64^6` ticks (about 19 hours at the default 1 µs tick). Inserting, cancelling, re-arming
//! and expiring are O(1); finding the next deadline is a few `trailing_zeros` on per-level
//! occupancy bitmaps, so an idle engine can sleep exactly until its next timer instead of
//! ticking through empty slots. A slot holds an intrusive doubly linked list of entries in a
//! slab allocated at start-up (`timers_max` entries); nothing allocates afterwards.
//!
//! Every armed timer is named by a [`TimerKey`] (slot index plus generation): TCP re-arms its
//! retransmission timer on nearly every acknowledgement, so [`TimerWheel::reschedule`] moves an
//! entry in place (unlink, re-file: O(1)) and [`TimerWheel::cancel`] unlinks it, and a key kept
//! after its timer fired or was cancelled is refused ([`TimerError::Stale`]) rather than
//! reaching a timer armed since in the same entry. The lists are doubly linked for exactly
//! this: a singly linked slot list would make cancel a walk of the slot.
//!
//! When time passes a slot of level `L > 0`, its entries cascade to lower levels, and finally
//! fire from level 0. Deadlines beyond the span are clamped into the top level and re-filed
//! when they come round, so no deadline is ever fired early.
//!
//! Time is injected: callers pass `now_ns`; the wheel converts with `tick_ns`, rounding
//! deadlines up, so a timer fires at or after its deadline, never before.
//!
//! Alternative rejected: a binary heap. It is O(log n) per operation, and cancelling or
//! re-arming thousands of TCP retransmission timers per batch is exactly where that shows.

use thiserror::Error;

const LEVEL_BITS: u32 = 6;
const SLOTS: usize = 1 << LEVEL_BITS;
const LEVELS: usize = 6;
const SPAN_TICKS: u64 = 1 << (LEVEL_BITS * LEVELS as u32);
const NIL: u32 = u32::MAX;
/// `Entry::list` of an entry on the due list.
const LIST_DUE: u16 = (LEVELS * SLOTS) as u16;
/// `Entry::list` of a free entry.
const LIST_NONE: u16 = LIST_DUE + 1;

/// Errors from the timing wheel.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum TimerError {
    /// All `timers_max` entries are in use. The caller sized the wheel too small, or leaks
    /// timers; drop the work that needed the timer.
    #[error("timing wheel full")]
    Full,
    /// The key names a timer that already fired or was cancelled. Forget the key.
    #[error("stale timer key: the timer fired or was cancelled")]
    Stale,
}

/// Names one armed timer; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    /// Entry index in the wheel's slab.
    pub index: u32,
    /// The entry's generation when the timer was armed.
    pub generation: u32,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    deadline_tick: u64,
    next: u32,
    prev: u32,
    generation: u32,
    /// Which list holds the entry: `level * SLOTS + slot`, `LIST_DUE` or `LIST_NONE`.
    list: u16,
    value: Option<T>,
}

/// A hierarchical timing wheel holding values of type `T`. See the module documentation.
#[derive(Debug)]
pub struct TimerWheel<T> {
    tick_ns: u64,
    elapsed_tick: u64,
    entries: Vec<Entry<T>>,
    free_head: u32,
    heads: [[u32; SLOTS]; LEVELS],
    occupied: [u64; LEVELS],
    /// Entries whose deadline has passed, waiting to be polled, oldest first.
    due_head: u32,
    due_tail: u32,
    len: usize,
}

impl<T> TimerWheel<T> {
    /// A wheel for at most `timers_max` timers, ticking every `tick_ns`, starting at `now_ns`.
    ///
    /// # Panics
    /// If `tick_ns` is zero or `timers_max` does not fit a `u32` index.
    pub fn new(timers_max: usize, tick_ns: u64, now_ns: u64) -> Self {
        assert!(tick_ns > 0, "tick must be positive");
        assert!(timers_max < NIL as usize, "timers_max too large");
        let entries = (0..timers_max)
            .map(|i| Entry {
                deadline_tick: 0,
                next: if i + 1 < timers_max {
                    i as u32 + 1
                } else {
                    NIL
                },
                prev: NIL,
                generation: 1,
                list: LIST_NONE,
                value: None,
            })
            .collect();
        Self {
            tick_ns,
            elapsed_tick: now_ns / tick_ns,
            entries,
            free_head: if timers_max > 0 { 0 } else { NIL },
            heads: [[NIL; SLOTS]; LEVELS],
            occupied: [0; LEVELS],
            due_head: NIL,
            due_tail: NIL,
            len: 0,
        }
    }

    /// Timers armed and not yet polled.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The most timers the wheel holds.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Arms a timer that yields `value` at or after `deadline_ns`.
    pub fn insert(&mut self, deadline_ns: u64, value: T) -> Result<TimerKey, TimerError> {
        let index = self.free_head;
        if index == NIL {
            return Err(TimerError::Full);
        }
        let entry = &mut self.entries[index as usize];
        self.free_head = entry.next;
        entry.deadline_tick = deadline_ns.div_ceil(self.tick_ns);
        entry.value = Some(value);
        let key = TimerKey {
            index,
            generation: entry.generation,
        };
        self.len += 1;
        self.file(index);
        Ok(key)
    }

    fn check(&self, key: TimerKey) -> Result<(), TimerError> {
        match self.entries.get(key.index as usize) {
            Some(e) if e.generation == key.generation && e.list != LIST_NONE => Ok(()),
            _ => Err(TimerError::Stale),
        }
    }

    /// Moves an armed timer to a new deadline, in O(1).
    pub fn reschedule(&mut self, key: TimerKey, deadline_ns: u64) -> Result<(), TimerError> {
        self.check(key)?;
        self.unlink(key.index);
        self.entries[key.index as usize].deadline_tick = deadline_ns.div_ceil(self.tick_ns);
        self.file(key.index);
        Ok(())
    }

    /// Disarms a timer, in O(1), and gives back its value.
    pub fn cancel(&mut self, key: TimerKey) -> Result<T, TimerError> {
        self.check(key)?;
        self.unlink(key.index);
        Ok(self.release(key.index))
    }

    /// The deadline of an armed timer, in ns (rounded up to the tick).
    pub fn deadline_ns(&self, key: TimerKey) -> Result<u64, TimerError> {
        self.check(key)?;
        Ok(self.entries[key.index as usize].deadline_tick * self.tick_ns)
    }

    /// Returns an unlinked entry to the free list, bumping its generation.
    fn release(&mut self, index: u32) -> T {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take().expect("an armed entry holds a value");
        entry.generation = entry.generation.wrapping_add(1).max(1);
        entry.list = LIST_NONE;
        entry.prev = NIL;
        entry.next = self.free_head;
        self.free_head = index;
        self.len -= 1;
        value
    }

    /// Takes an entry off whichever list holds it.
    fn unlink(&mut self, index: u32) {
        let (prev, next, list) = {
            let e = &self.entries[index as usize];
            (e.prev, e.next, e.list)
        };
        debug_assert_ne!(list, LIST_NONE, "unlinking a free entry");
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if prev != NIL {
            self.entries[prev as usize].next = next;
        }
        if list == LIST_DUE {
            if prev == NIL {
                self.due_head = next;
            }
            if next == NIL {
                self.due_tail = prev;
            }
        } else if prev == NIL {
            let (level, slot) = (usize::from(list) / SLOTS, usize::from(list) % SLOTS);
            self.heads[level][slot] = next;
            if next == NIL {
                self.occupied[level] &= !(1 << slot);
            }
        }
        let e = &mut self.entries[index as usize];
        e.prev = NIL;
        e.next = NIL;
        e.list = LIST_NONE;
    }

    /// Puts an entry in the slot its deadline belongs to, relative to `elapsed_tick`.
    fn file(&mut self, index: u32) {
        let deadline = self.entries[index as usize].deadline_tick;
        if deadline <= self.elapsed_tick {
            let tail = self.due_tail;
            let e = &mut self.entries[index as usize];
            e.next = NIL;
            e.prev = tail;
            e.list = LIST_DUE;
            if tail == NIL {
                self.due_head = index;
            } else {
                self.entries[tail as usize].next = index;
            }
            self.due_tail = index;
            return;
        }
        // Clamp far deadlines into the top level; they are re-filed when their slot comes up.
        let when = deadline.min(self.elapsed_tick + SPAN_TICKS - 1);
        let level = level_for(self.elapsed_tick, when);
        let slot = ((when >> (level as u32 * LEVEL_BITS)) as usize) & (SLOTS - 1);
        let head = self.heads[level][slot];
        let e = &mut self.entries[index as usize];
        e.next = head;
        e.prev = NIL;
        e.list = (level * SLOTS + slot) as u16;
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        self.heads[level][slot] = index;
        self.occupied[level] |= 1 << slot;
    }

    /// The earliest (level, slot, slot start tick) holding entries, if any.
    fn next_expiration(&self) -> Option<(usize, usize, u64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * LEVEL_BITS;
            let slot_range = 1u64 << shift;
            let level_range = slot_range << LEVEL_BITS;
            let now_slot = ((self.elapsed_tick >> shift) as usize) & (SLOTS - 1);
            let zeros = occupied.rotate_right(now_slot as u32).trailing_zeros() as usize;
            let slot = (zeros + now_slot) % SLOTS;
            let level_start = self.elapsed_tick & !(level_range - 1);
            let mut start = level_start + slot as u64 * slot_range;
            if start <= self.elapsed_tick {
                // Only the top level wraps: its slots form a ring (see `file`).
                debug_assert_eq!(level, LEVELS - 1);
                start += level_range;
            }
            return Some((level, slot, start));
        }
        None
    }

    /// The earliest time, in ns, at which [`TimerWheel::poll_expired`] may yield something.
    /// It may be earlier than the first deadline (a slot boundary where entries cascade).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.due_head != NIL {
            return Some(self.elapsed_tick * self.tick_ns);
        }
        self.next_expiration()
            .map(|(_, _, start)| start * self.tick_ns)
    }

    /// Yields one timer whose deadline is at or before `now_ns`, oldest slot first, with the
    /// key it was armed under (stale from now on). Call until `None` (or until the caller's
    /// batch is full; the rest wait).
    pub fn poll_expired(&mut self, now_ns: u64) -> Option<(TimerKey, T)> {
        if self.len == 0 {
            // Nothing to fire, so no reason to pay the division on every engine pass. Leaving
            // `elapsed_tick` behind is sound: the wheel then works as if it had not been polled
            // for a while, and the next poll with timers armed catches up slot by slot.
            return None;
        }
        let now_tick = now_ns / self.tick_ns;
        loop {
            if self.due_head != NIL {
                let index = self.due_head;
                let key = TimerKey {
                    index,
                    generation: self.entries[index as usize].generation,
                };
                self.unlink(index);
                return Some((key, self.release(index)));
            }
            match self.next_expiration() {
                Some((level, slot, start)) if start <= now_tick => {
                    self.elapsed_tick = start;
                    let mut index = std::mem::replace(&mut self.heads[level][slot], NIL);
                    self.occupied[level] &= !(1 << slot);
                    while index != NIL {
                        let next = self.entries[index as usize].next;
                        self.file(index);
                        index = next;
                    }
                }
                _ => {
                    self.elapsed_tick = self.elapsed_tick.max(now_tick);
                    return None;
                }
            }
        }
    }
}

/// The level whose slot width separates `elapsed` from `when` (`when > elapsed`).
fn level_for(elapsed: u64, when: u64) -> usize {
    // `when - elapsed < SPAN_TICKS`, but the two may still differ above the span (a carry
    // across a top-level boundary): such a deadline belongs to the top level's ring.
    let masked = ((elapsed ^ when) | (SLOTS as u64 - 1)).min(SPAN_TICKS - 1);
    let significant = 63 - masked.leading_zeros();
    (significant / LEVEL_BITS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(wheel: &mut TimerWheel<u64>, now_ns: u64) -> Vec<u64> {
        std::iter::from_fn(|| wheel.poll_expired(now_ns).map(|(_, v)| v)).collect()
    }

    #[test]
    fn fires_at_or_after_deadline_never_before() {
        let mut w = TimerWheel::new(16, 1000, 0);
        w.insert(5_000, 5).unwrap();
        w.insert(70_000, 70).unwrap();
        w.insert(4_100_000, 4100).unwrap();
        assert_eq!(drain(&mut w, 4_999), Vec::<u64>::new());
        assert_eq!(drain(&mut w, 5_000), vec![5]);
        assert_eq!(drain(&mut w, 69_999), Vec::<u64>::new());
        assert_eq!(drain(&mut w, 100_000), vec![70]);
        assert_eq!(drain(&mut w, 4_099_999), Vec::<u64>::new());
        assert_eq!(drain(&mut w, 5_000_000), vec![4100]);
        assert!(w.is_empty());
    }

    #[test]
    fn full_wheel_refuses_and_recovers() {
        let mut w = TimerWheel::new(2, 1, 0);
        w.insert(1, 1).unwrap();
        w.insert(2, 2).unwrap();
        assert_eq!(w.insert(3, 3), Err(TimerError::Full));
        assert_eq!(drain(&mut w, 10), vec![1, 2]);
        w.insert(11, 11).unwrap();
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn past_deadlines_fire_at_next_poll_and_far_ones_are_clamped() {
        let mut w = TimerWheel::new(4, 1, 1_000);
        w.insert(10, 10).unwrap();
        let far = 1_000 + SPAN_TICKS * 3;
        w.insert(far, far).unwrap();
        assert_eq!(w.next_deadline_ns(), Some(1_000));
        assert_eq!(drain(&mut w, 1_000), vec![10]);
        assert_eq!(drain(&mut w, far - 1), Vec::<u64>::new());
        assert_eq!(drain(&mut w, far), vec![far]);
    }

    proptest! {
        /// Against a model: every timer fires exactly once, at the first poll at or after its
        /// deadline, and `next_deadline_ns` never lies past the earliest pending deadline.
        #[test]
        fn matches_model(deadlines in proptest::collection::vec(0u64..5_000_000, 1..64),
                         steps in proptest::collection::vec(1u64..400_000, 1..64)) {
            let tick = 100;
            let mut w = TimerWheel::new(64, tick, 0);
            let mut pending: Vec<(u64, u64)> = Vec::new();
            for (i, &d) in deadlines.iter().enumerate() {
                w.insert(d, i as u64).unwrap();
                pending.push((d.div_ceil(tick) * tick, i as u64));
            }
            let mut now = 0;
            for step in steps.iter().chain(std::iter::once(&10_000_000)) {
                if let (Some(next), Some(min)) = (w.next_deadline_ns(), pending.iter().map(|p| p.0).min()) {
                    prop_assert!(next <= min, "next {} beyond earliest {}", next, min);
                }
                now += step;
                let mut fired = drain(&mut w, now);
                fired.sort();
                let mut expect: Vec<u64> = pending.iter().filter(|p| p.0 <= now).map(|p| p.1).collect();
                expect.sort();
                pending.retain(|p| p.0 > now);
                prop_assert_eq!(fired, expect);
            }
            prop_assert!(w.is_empty());
        }
    }

    #[test]
    fn cancel_and_reschedule_in_every_list() {
        let mut w = TimerWheel::new(8, 1, 0);
        let a = w.insert(5, 5).unwrap();
        let b = w.insert(5, 6).unwrap();
        let c = w.insert(100_000, 7).unwrap();
        // Cancel the head of a slot list and a far entry.
        assert_eq!(w.cancel(b), Ok(6));
        assert_eq!(w.cancel(b), Err(TimerError::Stale));
        assert_eq!(w.cancel(c), Ok(7));
        assert_eq!(w.len(), 1);
        // Move a timer later, then earlier.
        w.reschedule(a, 50).unwrap();
        assert_eq!(drain(&mut w, 10), Vec::<u64>::new());
        w.reschedule(a, 20).unwrap();
        assert_eq!(w.deadline_ns(a), Ok(20));
        assert_eq!(drain(&mut w, 20), vec![5]);
        assert_eq!(w.reschedule(a, 30), Err(TimerError::Stale));
        // Cancel from the due list (deadline passed, not yet polled).
        let d = w.insert(0, 8).unwrap();
        let e = w.insert(0, 9).unwrap();
        assert_eq!(w.cancel(d), Ok(8));
        let (key, v) = w.poll_expired(30).unwrap();
        assert_eq!((key, v), (e, 9));
        assert!(w.is_empty());
        // A reused entry does not answer to the old key.
        let f = w.insert(40, 10).unwrap();
        assert!(f != d && f != e);
        assert_eq!(w.cancel(d), Err(TimerError::Stale));
        assert_eq!(w.cancel(f), Ok(10));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Cancel(usize),
        Reschedule(usize, u64),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..2_000_000).prop_map(Op::Insert),
            (0usize..64).prop_map(Op::Cancel),
            ((0usize..64), (0u64..2_000_000)).prop_map(|(i, d)| Op::Reschedule(i, d)),
            (1u64..300_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a model with cancels and re-arms: every live timer fires exactly once, at
        /// the first poll at or after its latest deadline; cancelled ones never fire; keys of
        /// fired or cancelled timers are refused.
        #[test]
        fn matches_model_with_cancel_and_reschedule(ops in proptest::collection::vec(op(), 1..200)) {
            let tick = 100;
            let mut w = TimerWheel::new(16, tick, 0);
            // (key, value, deadline rounded to the tick)
            let mut live: Vec<(TimerKey, u64, u64)> = Vec::new();
            let mut dead: Vec<TimerKey> = Vec::new();
            let mut now = 0;
            let mut n = 0;
            for op in ops {
                match op {
                    Op::Insert(d) => {
                        let at = now + d;
                        match w.insert(at, n) {
                            Ok(k) => live.push((k, n, at.div_ceil(tick) * tick)),
                            Err(e) => { prop_assert_eq!(e, TimerError::Full); prop_assert_eq!(live.len(), 16); }
                        }
                        n += 1;
                    }
                    Op::Cancel(i) if !live.is_empty() => {
                        let (k, v, _) = live.swap_remove(i % live.len());
                        prop_assert_eq!(w.cancel(k), Ok(v));
                        dead.push(k);
                    }
                    Op::Reschedule(i, d) if !live.is_empty() => {
                        let i = i % live.len();
                        let at = now + d;
                        w.reschedule(live[i].0, at).unwrap();
                        live[i].2 = at.div_ceil(tick) * tick;
                    }
                    Op::Advance(step) => {
                        if let (Some(next), Some(min)) = (w.next_deadline_ns(), live.iter().map(|p| p.2).min()) {
                            prop_assert!(next <= min, "next {} beyond earliest {}", next, min);
                        }
                        now += step;
                        let mut fired: Vec<(TimerKey, u64)> = std::iter::from_fn(|| w.poll_expired(now)).collect();
                        fired.sort_by_key(|f| f.1);
                        let mut expect: Vec<(TimerKey, u64)> = live.iter().filter(|p| p.2 <= now).map(|p| (p.0, p.1)).collect();
                        expect.sort_by_key(|f| f.1);
                        dead.extend(expect.iter().map(|e| e.0));
                        live.retain(|p| p.2 > now);
                        prop_assert_eq!(fired, expect);
                    }
                    _ => {}
                }
                for &k in &dead {
                    prop_assert_eq!(w.cancel(k), Err(TimerError::Stale));
                }
                prop_assert_eq!(w.len(), live.len());
            }
        }
    }
}
