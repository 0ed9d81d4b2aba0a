//! Sequence numbers and their arithmetic modulo 2^32 (RFC 9293 §3.4).
//!
//! A TCP sequence number is a point on a circle of 2^32 bytes, so "less than" only means
//! something between two numbers less than 2^31 apart: `a < b` is defined as the signed 32-bit
//! difference `b - a` being positive. That relation is not transitive over the whole circle
//! (a < b < c < a is possible), so [`SeqNumber`] deliberately does not implement `PartialOrd`
//! or `Ord`: a derived `Ord` would compare raw integers and be wrong across the wrap, and a
//! hand-written `PartialOrd` would promise a partial order that does not exist, letting
//! `sort`, `BTreeMap` or `max` on iterators silently misbehave. The comparisons are named
//! methods ([`SeqNumber::lt`] and friends) instead, so every call site reads as sequence-space
//! arithmetic. The alternative rejected was a bare `u32` with `wrapping_*` calls everywhere:
//! one forgotten `<` on raw integers is a bug that only shows after 4 GiB.
//!
//! Every operation here is total: nothing panics on any input, since sequence numbers come
//! straight from peers.

use core::ops::{Add, AddAssign, Sub, SubAssign};

/// A 32-bit TCP sequence number; arithmetic wraps modulo 2^32 (RFC 9293 §3.4).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// The signed distance from `other` to `self`: positive when `self` is after `other`.
    ///
    /// This is the 32-bit two's-complement difference, meaningful only when the two are less
    /// than 2^31 apart (RFC 9293 §3.4); at exactly 2^31 apart it is `i32::MIN` and both
    /// numbers are "before" each other's negation, which the comparisons treat as "before".
    #[must_use]
    pub const fn diff(self, other: SeqNumber) -> i32 {
        self.0.wrapping_sub(other.0) as i32
    }

    /// The forward distance from `other` to `self` if `self` is at or after `other`, else `None`.
    #[must_use]
    pub const fn checked_distance(self, other: SeqNumber) -> Option<u32> {
        let d = self.diff(other);
        if d >= 0 {
            Some(d as u32)
        } else {
            None
        }
    }

    /// The forward distance from `other` to `self` going round the circle, always in `0..2^32`.
    #[must_use]
    pub const fn wrapping_distance(self, other: SeqNumber) -> u32 {
        self.0.wrapping_sub(other.0)
    }

    /// `self` is strictly before `other` (RFC 9293 §3.4, `<` modulo 2^32).
    #[must_use]
    pub const fn lt(self, other: SeqNumber) -> bool {
        self.diff(other) < 0
    }

    /// `self` is before or equal to `other`.
    #[must_use]
    pub const fn le(self, other: SeqNumber) -> bool {
        self.diff(other) <= 0
    }

    /// `self` is strictly after `other`.
    #[must_use]
    pub const fn gt(self, other: SeqNumber) -> bool {
        other.lt(self)
    }

    /// `self` is after or equal to `other`.
    #[must_use]
    pub const fn ge(self, other: SeqNumber) -> bool {
        other.le(self)
    }

    /// The later of the two in sequence space.
    #[must_use]
    pub const fn max(self, other: SeqNumber) -> SeqNumber {
        if self.lt(other) {
            other
        } else {
            self
        }
    }

    /// The earlier of the two in sequence space.
    #[must_use]
    pub const fn min(self, other: SeqNumber) -> SeqNumber {
        if self.lt(other) {
            self
        } else {
            other
        }
    }

    /// `self` lies in the window `[start, start + len)`, computed as an unsigned distance so
    /// that it is correct for any `len` up to 2^32 - 1 (RFC 9293 §3.10.7.4's acceptability
    /// test `RCV.NXT =< SEG.SEQ < RCV.NXT+RCV.WND`). An empty window contains nothing.
    #[must_use]
    pub const fn in_window(self, start: SeqNumber, len: u32) -> bool {
        self.wrapping_distance(start) < len
    }

    /// `self` lies in `[start, end)` with `end` at or after `start`; an `end` before `start`
    /// makes the window empty.
    #[must_use]
    pub const fn in_range(self, start: SeqNumber, end: SeqNumber) -> bool {
        match end.checked_distance(start) {
            Some(len) => self.in_window(start, len),
            None => false,
        }
    }
}

/// RFC 9293 §3.10.7.4's four-case test: is a segment of `seg_len` octets (SYN and FIN counted)
/// at `seg_seq` acceptable to a receiver whose window is `[rcv_nxt, rcv_nxt + rcv_wnd)`?
#[must_use]
pub const fn segment_acceptable(
    seg_seq: SeqNumber,
    seg_len: u32,
    rcv_nxt: SeqNumber,
    rcv_wnd: u32,
) -> bool {
    match (seg_len, rcv_wnd) {
        // RFC 9293 §3.10.7.4: zero-length segment, zero window: only SEG.SEQ = RCV.NXT.
        (0, 0) => seg_seq.0 == rcv_nxt.0,
        // Zero-length segment, open window: its sequence number falls in the window.
        (0, _) => seg_seq.in_window(rcv_nxt, rcv_wnd),
        // Data into a zero window is never acceptable.
        (_, 0) => false,
        // Data: the first or the last octet falls in the window.
        (_, _) => {
            seg_seq.in_window(rcv_nxt, rcv_wnd)
                || seg_seq
                    .wrapping_add(seg_len - 1)
                    .in_window(rcv_nxt, rcv_wnd)
        }
    }
}

impl SeqNumber {
    /// `self + n` modulo 2^32, usable in `const` context.
    #[must_use]
    pub const fn wrapping_add(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(n))
    }
}

impl Add<u32> for SeqNumber {
    type Output = SeqNumber;
    fn add(self, rhs: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(rhs))
    }
}

impl Add<usize> for SeqNumber {
    type Output = SeqNumber;
    /// Adds modulo 2^32: a `usize` length is first reduced modulo 2^32, which is what
    /// sequence space means by it.
    fn add(self, rhs: usize) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(rhs as u32))
    }
}

impl AddAssign<u32> for SeqNumber {
    fn add_assign(&mut self, rhs: u32) {
        *self = *self + rhs;
    }
}

impl AddAssign<usize> for SeqNumber {
    fn add_assign(&mut self, rhs: usize) {
        *self = *self + rhs;
    }
}

impl Sub<u32> for SeqNumber {
    type Output = SeqNumber;
    fn sub(self, rhs: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(rhs))
    }
}

impl SubAssign<u32> for SeqNumber {
    fn sub_assign(&mut self, rhs: u32) {
        *self = *self - rhs;
    }
}

impl Sub<SeqNumber> for SeqNumber {
    type Output = i32;
    /// The signed difference, as [`SeqNumber::diff`].
    fn sub(self, rhs: SeqNumber) -> i32 {
        self.diff(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wraps() {
        let a = SeqNumber(u32::MAX - 1);
        let b = a + 4u32;
        assert_eq!(b, SeqNumber(2));
        assert_eq!(b - a, 4);
        assert_eq!(a - b, -4);
        assert!(a.lt(b) && b.gt(a) && a.le(a) && a.ge(a));
        assert_eq!(a.max(b), b);
        assert_eq!(a.min(b), a);
        assert_eq!(b.checked_distance(a), Some(4));
        assert_eq!(a.checked_distance(b), None);
        assert!(SeqNumber(0).in_window(a, 3));
        assert!(!SeqNumber(1).in_window(a, 3));
        assert!(!a.in_window(a, 0));
        assert_eq!(a + 5usize, SeqNumber(3));
        assert_eq!(b - 4u32, a);
    }

    #[test]
    fn acceptability_cases() {
        let nxt = SeqNumber(u32::MAX - 10);
        assert!(segment_acceptable(nxt, 0, nxt, 0));
        assert!(!segment_acceptable(nxt + 1u32, 0, nxt, 0));
        assert!(segment_acceptable(nxt + 19u32, 0, nxt, 20));
        assert!(!segment_acceptable(nxt + 20u32, 0, nxt, 20));
        assert!(!segment_acceptable(nxt, 10, nxt, 0));
        // Starts before the window and ends inside it.
        assert!(segment_acceptable(nxt - 5u32, 10, nxt, 20));
        // Ends just before the window.
        assert!(!segment_acceptable(nxt - 10u32, 10, nxt, 20));
    }

    proptest! {
        #[test]
        fn add_then_diff(a: u32, n in 0u32..(1 << 31)) {
            let a = SeqNumber(a);
            let b = a + n;
            prop_assert_eq!(b - a, n as i32);
            prop_assert_eq!(b.checked_distance(a), Some(n));
            prop_assert!(a.le(b));
            prop_assert_eq!(a.max(b), b);
            prop_assert_eq!(a.min(b), a);
            prop_assert_eq!(b - n, a);
            if n > 0 {
                prop_assert!(a.lt(b) && !b.lt(a) && b.gt(a) && !a.ge(b));
                prop_assert_eq!(a.checked_distance(b), None);
            }
        }

        #[test]
        fn window_matches_offset(start: u32, len: u32, off: u32) {
            let x = SeqNumber(start) + off;
            prop_assert_eq!(x.in_window(SeqNumber(start), len), off < len);
        }

        #[test]
        fn comparisons_antisymmetric(a: u32, b: u32) {
            let (a, b) = (SeqNumber(a), SeqNumber(b));
            prop_assert_eq!(a.lt(b) || a == b, a.le(b));
            if a.0.wrapping_sub(b.0) != 1 << 31 {
                prop_assert_eq!(a.lt(b), b.gt(a));
                prop_assert!(!(a.lt(b) && b.lt(a)));
            }
        }
    }
}
