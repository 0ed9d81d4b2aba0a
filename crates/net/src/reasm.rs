//! IPv4 reassembly (RFC 791 §3.2 "Fragmentation and Reassembly") of UDP datagrams sent to
//! us, in a bounded table whose every byte is a pool frame the interface already owns.
//!
//! # Design
//!
//! A fragment arrives as the receive frame it came in, its window narrowed to the
//! fragment's data; that frame is kept, not copied, so reassembly allocates nothing per
//! fragment. A datagram in progress is one of [`REASSEMBLY_DATAGRAMS_MAX`] slots, keyed by
//! (source, identification): RFC 791 also keys on destination and protocol, but only UDP
//! datagrams to our own address get here. Each slot keeps its fragments in a vector sorted
//! by offset, preallocated to [`REASSEMBLY_FRAGMENTS_MAX`] in `Reassembler::new` and never
//! grown. Because overlapping fragments are refused (below), the held fragments are disjoint
//! intervals of the datagram, so "complete" is simply: the last fragment (MF clear) has told
//! us the length, and the bytes held add up to it. That is equivalent to RFC 815's hole list,
//! without its descriptors written into the fragment data.
//!
//! # Policy for hostile input
//!
//! - Overlap: if a fragment overlaps one already held, or disagrees with the datagram's end,
//!   the whole datagram is abandoned, as RFC 5722 requires for IPv6 ("the entire datagram
//!   (and any constituent fragments, including those not yet received) MUST be silently
//!   discarded"). Overlaps have no legitimate use and are the tool of the RFC 1858 attacks
//!   that rewrite a header a filter has already checked. The abandoned slot stays as a
//!   *closed* entry until its deadline, holding no frames, so its later fragments are
//!   dropped rather than starting a fresh datagram. A delivered datagram leaves the same
//!   closed entry, so late network duplicates of its fragments are not delivered twice.
//! - Exact duplicates (same offset, length and bytes) are not overlaps: the network
//!   duplicates packets, and RFC 8200 §4.5 lets an implementation drop the copy alone. The
//!   bytes are compared, so a "duplicate" that changes the data is an overlap.
//! - Every fragment is charged the whole pool frame it pins, not its payload, so an attacker
//!   sending 8-byte fragments holds no more memory than one sending full ones.
//! - Every refusal frees the fragment's frame and is counted (see [`DropReason`]).
//!
//! # Limits, and why these numbers
//!
//! - [`REASSEMBLY_TIMEOUT_NS`], 2 s: the fragments of one datagram leave the sender
//!   back-to-back and arrive within microseconds to milliseconds of each other, so waiting
//!   longer mostly keeps the frames of datagrams that lost a fragment. RFC 1122 §3.3.2
//!   suggests 60 to 120 s, but RFC 4963 §2 shows why that is wrong at today's rates: the
//!   16-bit identification wraps within a second at gigabit speeds, and a long timeout then
//!   splices fragments of different datagrams together. Two seconds also bounds how long an
//!   attacker's incomplete datagrams hold their frames.
//! - [`REASSEMBLY_DATAGRAMS_MAX`], 16: more datagrams in progress at once than a UDP server
//!   that expects mostly unfragmented traffic sees in one timeout, and small enough that the
//!   per-fragment lookup, a scan of the table, stays a few cache lines.
//! - [`REASSEMBLY_FRAGMENTS_MAX`], 64: a datagram of the largest size (65,535 bytes) needs 45
//!   fragments at an MTU of 1500 and 52 at IPv6's minimum-like 1280, so 64 admits every
//!   honest sender on an Ethernet path while refusing floods of tiny fragments.
//! - [`REASSEMBLY_BYTES_MAX`], 256 KiB: pool memory all datagrams in progress may pin
//!   together, charged per frame. With the default 2 KiB frames that is 128 frames, about
//!   three datagrams of the largest size in flight at MTU 1500. The pool's budget must hold
//!   it ([`melange_core::PoolBudget::stack_parked`]).

use crate::counters::{DropReason, NetCounters};
use melange_core::pool::{PacketBuf, PacketPool};
use melange_wire::ipv4;

/// Datagrams reassembled at once. See the module documentation for the numbers.
pub const REASSEMBLY_DATAGRAMS_MAX: usize = 16;
/// Fragments one datagram may be made of.
pub const REASSEMBLY_FRAGMENTS_MAX: usize = 64;
/// Pool memory, in bytes, all datagrams in progress may hold (each fragment is charged its
/// whole frame).
pub const REASSEMBLY_BYTES_MAX: usize = 256 * 1024;
/// How long after its first fragment a datagram must be complete.
pub const REASSEMBLY_TIMEOUT_NS: u64 = 2_000_000_000;
/// Largest IPv4 payload a reassembled datagram may have: a total length of 65,535 bytes
/// less a 20-byte header (datagrams with options are not accepted).
pub const REASSEMBLED_PAYLOAD_MAX: usize = ipv4::TOTAL_LEN_MAX - ipv4::HEADER_LEN;

const _: () = assert!(REASSEMBLED_PAYLOAD_MAX == 65_515);
// The largest datagram at MTU 1500 (1480 data bytes per fragment) fits the fragment bound.
const _: () = assert!(REASSEMBLED_PAYLOAD_MAX.div_ceil(1480) <= REASSEMBLY_FRAGMENTS_MAX);

/// What identifies the fragments of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    /// Source address.
    pub(crate) src: u32,
    /// IPv4 identification.
    pub(crate) ident: u16,
}

/// One held fragment: the frame it arrived in, its window narrowed to the fragment's data.
#[derive(Debug)]
pub(crate) struct Fragment {
    /// Byte offset of the data in the datagram's payload.
    pub(crate) offset: u32,
    /// The frame.
    pub(crate) buf: PacketBuf,
}

impl Fragment {
    fn end(&self) -> u32 {
        self.offset + self.buf.len() as u32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Unused.
    Free,
    /// Collecting fragments.
    Assembling,
    /// Delivered or abandoned; holds no frames and drops the datagram's late fragments
    /// until the deadline.
    Closed,
}

#[derive(Debug)]
struct Slot {
    state: State,
    key: Key,
    /// First fragment's arrival plus the timeout.
    deadline_ns: u64,
    /// Sorted by offset, pairwise disjoint; capacity [`REASSEMBLY_FRAGMENTS_MAX`].
    frags: Vec<Fragment>,
    /// Payload length, once the fragment with MF clear has arrived.
    end: Option<u32>,
    /// Payload bytes held.
    held: u32,
    /// Pool bytes charged for the held frames.
    charged: usize,
}

/// What became of a fragment handed to [`Reassembler::handle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Kept, waiting for the rest of its datagram.
    Held,
    /// Freed, and the drop counted.
    Dropped,
    /// It completed its datagram: the slot holds every fragment, in order; call
    /// [`Reassembler::fragments`] and then [`Reassembler::close`].
    Complete(usize),
}

/// The reassembly table of one interface. See the module documentation.
#[derive(Debug)]
pub(crate) struct Reassembler {
    slots: Vec<Slot>,
    /// Pool bytes charged over all slots; at most [`REASSEMBLY_BYTES_MAX`].
    charged: usize,
}

impl Reassembler {
    /// An empty table with every index preallocated.
    pub(crate) fn new() -> Self {
        let slots = (0..REASSEMBLY_DATAGRAMS_MAX)
            .map(|_| Slot {
                state: State::Free,
                key: Key { src: 0, ident: 0 },
                deadline_ns: 0,
                frags: Vec::with_capacity(REASSEMBLY_FRAGMENTS_MAX),
                end: None,
                held: 0,
                charged: 0,
            })
            .collect();
        Reassembler { slots, charged: 0 }
    }

    /// Datagrams being collected.
    pub(crate) fn datagrams(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == State::Assembling)
            .count()
    }

    /// Frames held over all datagrams.
    pub(crate) fn frames(&self) -> usize {
        self.slots.iter().map(|s| s.frags.len()).sum()
    }

    /// The earliest deadline of a datagram being collected.
    pub(crate) fn poll_at(&self) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| s.state == State::Assembling)
            .map(|s| s.deadline_ns)
            .min()
    }

    /// Frees datagrams whose deadline has passed (counted as [`DropReason::ReasmTimeout`])
    /// and forgets closed entries whose deadline has passed.
    pub(crate) fn expire(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        counters: &mut NetCounters,
    ) {
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.state == State::Free || now_ns < slot.deadline_ns {
                continue;
            }
            if slot.state == State::Assembling {
                counters.count_drop(DropReason::ReasmTimeout);
            }
            self.release(i, pool);
            self.slots[i].state = State::Free;
        }
    }

    /// Takes one fragment: `buf`'s window is its data, at byte `offset` of the datagram's
    /// payload, with the "more fragments" flag `more`. The caller has checked that the data
    /// is not empty and, unless `more` is clear, a multiple of 8 bytes long.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    pub(crate) fn handle(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        counters: &mut NetCounters,
        key: Key,
        offset: u32,
        more: bool,
        buf: PacketBuf,
    ) -> Outcome {
        debug_assert!(!buf.is_empty() && (!more || buf.len().is_multiple_of(8)));
        self.expire(now_ns, pool, counters);
        let frame_size = pool.config().frame_size;
        let end = offset + buf.len() as u32;
        let drop = |pool: &mut PacketPool, counters: &mut NetCounters, reason, buf| {
            counters.count_drop(reason);
            pool.free(buf);
            Outcome::Dropped
        };

        let found = self
            .slots
            .iter()
            .position(|s| s.state != State::Free && s.key == key);
        let at = match found {
            Some(at) if self.slots[at].state == State::Closed => {
                return drop(pool, counters, DropReason::ReasmStale, buf);
            }
            Some(at) => at,
            None => {
                if end as usize > REASSEMBLED_PAYLOAD_MAX {
                    return drop(pool, counters, DropReason::ReasmTooBig, buf);
                }
                if self.charged + frame_size > REASSEMBLY_BYTES_MAX {
                    return drop(pool, counters, DropReason::ReasmTableFull, buf);
                }
                let Some(at) = self.vacant() else {
                    return drop(pool, counters, DropReason::ReasmTableFull, buf);
                };
                let slot = &mut self.slots[at];
                debug_assert!(slot.frags.is_empty() && slot.charged == 0);
                slot.state = State::Assembling;
                slot.key = key;
                slot.deadline_ns = now_ns.saturating_add(REASSEMBLY_TIMEOUT_NS);
                slot.end = None;
                slot.held = 0;
                at
            }
        };

        // RFC 791 §3.1: the total length field is 16 bits, so no fragment may reach past it.
        if end as usize > REASSEMBLED_PAYLOAD_MAX {
            return self.abandon(at, pool, counters, DropReason::ReasmTooBig, buf);
        }
        let slot = &self.slots[at];
        // The fragment must agree with the datagram's end: nothing past it, nothing claiming
        // more data after it, and only one end.
        let conflicts_with_end = match slot.end {
            Some(e) => end > e || (more && end == e) || (!more && end != e),
            // Every held fragment so far had MF set, so each has data after it.
            None => !more && slot.frags.last().is_some_and(|f| f.end() >= end),
        };
        if conflicts_with_end {
            return self.abandon(at, pool, counters, DropReason::ReasmOverlap, buf);
        }
        let pos = slot.frags.partition_point(|f| f.offset < offset);
        if let Some(same) = slot.frags.get(pos) {
            if same.offset == offset && same.buf.len() == buf.len() {
                // RFC 8200 §4.5: an exact duplicate may be dropped alone. Compare the bytes:
                // a copy that changes them is an overlap.
                if pool.data(&same.buf) == pool.data(&buf) {
                    return drop(pool, counters, DropReason::ReasmDuplicate, buf);
                }
                return self.abandon(at, pool, counters, DropReason::ReasmOverlap, buf);
            }
        }
        let overlaps_before = pos > 0 && slot.frags[pos - 1].end() > offset;
        let overlaps_after = slot.frags.get(pos).is_some_and(|f| end > f.offset);
        if overlaps_before || overlaps_after {
            return self.abandon(at, pool, counters, DropReason::ReasmOverlap, buf);
        }
        if slot.frags.len() == REASSEMBLY_FRAGMENTS_MAX {
            return self.abandon(at, pool, counters, DropReason::ReasmTooManyFragments, buf);
        }
        if self.charged + frame_size > REASSEMBLY_BYTES_MAX {
            return self.abandon(at, pool, counters, DropReason::ReasmTableFull, buf);
        }

        let len = buf.len() as u32;
        let slot = &mut self.slots[at];
        // Capacity was checked just above, so this never reallocates.
        debug_assert!(slot.frags.len() < slot.frags.capacity());
        slot.frags.insert(pos, Fragment { offset, buf });
        slot.held += len;
        slot.charged += frame_size;
        self.charged += frame_size;
        if !more {
            slot.end = Some(end);
        }
        // Disjoint intervals inside [0, end) that add up to `end` cover it exactly.
        if slot.end == Some(slot.held) {
            Outcome::Complete(at)
        } else {
            Outcome::Held
        }
    }

    /// The fragments of a complete datagram, in order.
    pub(crate) fn fragments(&self, at: usize) -> &[Fragment] {
        debug_assert_eq!(self.slots[at].state, State::Assembling);
        &self.slots[at].frags
    }

    /// Closes a complete datagram, handing its fragments over in order. The slot stays
    /// closed until its deadline, so late duplicates are dropped as stale.
    pub(crate) fn close(&mut self, at: usize) -> std::vec::Drain<'_, Fragment> {
        let slot = &mut self.slots[at];
        debug_assert_eq!(slot.state, State::Assembling);
        slot.state = State::Closed;
        self.charged -= slot.charged;
        slot.charged = 0;
        slot.held = 0;
        slot.end = None;
        slot.frags.drain(..)
    }

    /// Frees every held frame (shutdown). Nothing is counted.
    pub(crate) fn drain(&mut self, pool: &mut PacketPool) {
        for i in 0..self.slots.len() {
            self.release(i, pool);
            self.slots[i].state = State::Free;
        }
        debug_assert_eq!(self.charged, 0);
    }

    /// A free slot, or else the closed one nearest its deadline (which only loses the
    /// suppression of its late duplicates).
    fn vacant(&self) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.state == State::Free)
            .or_else(|| {
                self.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.state == State::Closed)
                    .min_by_key(|(_, s)| s.deadline_ns)
                    .map(|(i, _)| i)
            })
    }

    /// Gives up on a datagram: frees its frames and `buf`, counts `reason` once, and leaves
    /// the slot closed so its later fragments are dropped.
    fn abandon(
        &mut self,
        at: usize,
        pool: &mut PacketPool,
        counters: &mut NetCounters,
        reason: DropReason,
        buf: PacketBuf,
    ) -> Outcome {
        counters.count_drop(reason);
        pool.free(buf);
        self.release(at, pool);
        self.slots[at].state = State::Closed;
        Outcome::Dropped
    }

    /// Frees a slot's frames and its charge; leaves the state to the caller.
    fn release(&mut self, at: usize, pool: &mut PacketPool) {
        let slot = &mut self.slots[at];
        for frag in slot.frags.drain(..) {
            pool.free(frag.buf);
        }
        self.charged -= slot.charged;
        slot.charged = 0;
        slot.held = 0;
        slot.end = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use melange_core::pool::PoolConfig;

    fn pool() -> PacketPool {
        PacketPool::new(PoolConfig {
            frame_size: 2048,
            frame_count: 64,
            headroom: 64,
        })
        .unwrap()
    }

    /// A frame whose window holds `len` bytes of `byte`.
    fn piece(pool: &mut PacketPool, len: usize, byte: u8) -> PacketBuf {
        let mut buf = pool.alloc().unwrap();
        pool.set_len(&mut buf, len).unwrap();
        pool.data_mut(&buf).fill(byte);
        buf
    }

    const KEY: Key = Key { src: 7, ident: 1 };

    #[test]
    fn charges_follow_frames_through_every_exit() {
        let mut pool = pool();
        let mut c = NetCounters::default();
        let mut r = Reassembler::new();
        // Completion.
        let a = piece(&mut pool, 16, 1);
        assert_eq!(
            r.handle(0, &mut pool, &mut c, KEY, 0, true, a),
            Outcome::Held
        );
        assert_eq!(r.charged, 2048);
        let b = piece(&mut pool, 5, 2);
        let Outcome::Complete(at) = r.handle(0, &mut pool, &mut c, KEY, 16, false, b) else {
            panic!("complete");
        };
        let offsets: Vec<u32> = r.fragments(at).iter().map(|f| f.offset).collect();
        assert_eq!(offsets, vec![0, 16]);
        for frag in r.close(at) {
            pool.free(frag.buf);
        }
        assert_eq!((r.charged, r.datagrams(), r.frames()), (0, 0, 0));
        // Abandonment.
        let key = Key { ident: 2, ..KEY };
        let a = piece(&mut pool, 16, 1);
        r.handle(0, &mut pool, &mut c, key, 0, true, a);
        let b = piece(&mut pool, 16, 1);
        assert_eq!(
            r.handle(0, &mut pool, &mut c, key, 8, true, b),
            Outcome::Dropped
        );
        assert_eq!(c.drops(DropReason::ReasmOverlap), 1);
        assert_eq!(r.charged, 0);
        // Timeout, and the closed entries forgotten at their deadlines.
        let key = Key { ident: 3, ..KEY };
        let a = piece(&mut pool, 8, 1);
        r.handle(5, &mut pool, &mut c, key, 0, true, a);
        assert_eq!(r.poll_at(), Some(5 + REASSEMBLY_TIMEOUT_NS));
        r.expire(5 + REASSEMBLY_TIMEOUT_NS, &mut pool, &mut c);
        assert_eq!(c.drops(DropReason::ReasmTimeout), 1);
        assert_eq!(r.charged, 0);
        assert!(r.slots.iter().all(|s| s.state == State::Free));
        assert_eq!(pool.available(), pool.capacity());
    }

    #[test]
    fn a_full_table_reclaims_the_oldest_closed_entry_first() {
        let mut pool = pool();
        let mut c = NetCounters::default();
        let mut r = Reassembler::new();
        for ident in 0..REASSEMBLY_DATAGRAMS_MAX as u16 {
            let a = piece(&mut pool, 8, 1);
            let key = Key { ident, ..KEY };
            assert_eq!(
                r.handle(u64::from(ident), &mut pool, &mut c, key, 0, true, a),
                Outcome::Held
            );
        }
        let extra = Key { ident: 99, ..KEY };
        let a = piece(&mut pool, 8, 1);
        assert_eq!(
            r.handle(20, &mut pool, &mut c, extra, 0, true, a),
            Outcome::Dropped
        );
        assert_eq!(c.drops(DropReason::ReasmTableFull), 1);
        // Close datagrams 5 and 3 (in that order) by overlap; 3 started earlier, so its
        // deadline is nearer and its entry is reclaimed first.
        for ident in [5u16, 3] {
            let b = piece(&mut pool, 16, 2);
            let key = Key { ident, ..KEY };
            assert_eq!(
                r.handle(21, &mut pool, &mut c, key, 0, true, b),
                Outcome::Dropped
            );
        }
        let a = piece(&mut pool, 8, 1);
        assert_eq!(
            r.handle(22, &mut pool, &mut c, extra, 0, true, a),
            Outcome::Held
        );
        let reclaimed = r.slots.iter().position(|s| s.key == extra).unwrap();
        assert_eq!(reclaimed, 3);
        // Datagram 5's entry is still closed: its fragments are stale.
        let b = piece(&mut pool, 8, 1);
        let key = Key { ident: 5, ..KEY };
        assert_eq!(
            r.handle(22, &mut pool, &mut c, key, 8, true, b),
            Outcome::Dropped
        );
        assert_eq!(c.drops(DropReason::ReasmStale), 1);
        r.drain(&mut pool);
        assert_eq!(pool.available(), pool.capacity());
    }
}
