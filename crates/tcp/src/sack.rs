//! Selective acknowledgement: a bounded range set over sequence space, the receiver's SACK
//! blocks (RFC 2018, with D-SACK per RFC 2883), and the sender's scoreboard (RFC 6675).
//!
//! Everything is a fixed array of disjoint, non-adjacent half-open ranges kept in sequence
//! order ([`SeqRangeSet`]); no allocation after construction. A per-segment list (Linux's
//! skb-tagged retransmit queue) or a bitmap was rejected: the sender's buffers belong to the
//! application (zero-copy), so the scoreboard must not live in them, and ranges cost O(holes)
//! rather than O(segments) for every ACK. When a set is full, a new disjoint range that would
//! be the highest is refused and otherwise the highest stored range is dropped: forgetting
//! SACK information is always safe (RFC 2018 §8: the data is merely resent), and the lowest
//! ranges are the ones loss recovery needs first.
//!
//! Peer-derived input (SACK blocks) is validated and clipped; nothing here panics on it.
//! Pipe and loss are counted in bytes rather than RFC 6675's segments, which is the same for
//! full-sized segments and exact for small ones.

use crate::seq::SeqNumber;

/// The most ranges a [`SeqRangeSet`] used by this module holds: a SACK option carries at most
/// four blocks, so 32 holes is ample for a window and keeps every scan short.
pub const RANGES_MAX: usize = 32;

/// The most SACK blocks in one option (RFC 2018 §3: 40 option bytes / 8 per block, less room
/// for the kind and length; 3 when timestamps are on).
pub const SACK_BLOCKS_MAX: usize = 4;

/// RFC 6675 §2's DupThresh.
pub const DUP_THRESH: u32 = 3;

/// A half-open range `[start, end)` of sequence space.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SeqRange {
    /// The first sequence number in the range.
    pub start: SeqNumber,
    /// One past the last sequence number in the range.
    pub end: SeqNumber,
}

impl SeqRange {
    /// The range `[start, end)`.
    #[must_use]
    pub const fn new(start: SeqNumber, end: SeqNumber) -> Self {
        SeqRange { start, end }
    }

    /// The number of bytes, zero when `end` is at or before `start`.
    #[must_use]
    pub const fn len(&self) -> u32 {
        match self.end.checked_distance(self.start) {
            Some(n) => n,
            None => 0,
        }
    }

    /// Whether the range holds no byte.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `seq` is in the range.
    #[must_use]
    pub const fn contains(&self, seq: SeqNumber) -> bool {
        seq.in_range(self.start, self.end)
    }
}

/// At most `N` disjoint, non-adjacent ranges in sequence order, merged on insert.
///
/// All ranges are assumed to lie within 2^31 of each other (a TCP window), where sequence
/// order is a total order.
#[derive(Clone, Copy, Debug)]
pub struct SeqRangeSet<const N: usize> {
    ranges: [SeqRange; N],
    len: usize,
}

impl<const N: usize> Default for SeqRangeSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> SeqRangeSet<N> {
    const _NONEMPTY: () = assert!(N > 0);

    /// An empty set.
    #[must_use]
    pub const fn new() -> Self {
        SeqRangeSet {
            ranges: [SeqRange {
                start: SeqNumber(0),
                end: SeqNumber(0),
            }; N],
            len: 0,
        }
    }

    /// The stored ranges, lowest first.
    #[must_use]
    pub fn as_slice(&self) -> &[SeqRange] {
        &self.ranges[..self.len]
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every range.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The total number of bytes covered.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.as_slice().iter().map(|r| u64::from(r.len())).sum()
    }

    /// The range holding `seq`, if any.
    #[must_use]
    pub fn find(&self, seq: SeqNumber) -> Option<SeqRange> {
        self.as_slice().iter().copied().find(|r| r.contains(seq))
    }

    /// Whether `seq` is covered.
    #[must_use]
    pub fn contains(&self, seq: SeqNumber) -> bool {
        self.find(seq).is_some()
    }

    /// Whether all of `r` is covered (an empty `r` is).
    #[must_use]
    pub fn covers(&self, r: SeqRange) -> bool {
        r.is_empty() || self.find(r.start).is_some_and(|f| r.end.le(f.end))
    }

    /// The bytes covered in `[from, to)`.
    #[must_use]
    pub fn bytes_in(&self, from: SeqNumber, to: SeqNumber) -> u64 {
        self.as_slice()
            .iter()
            .map(|r| u64::from(SeqRange::new(r.start.max(from), r.end.min(to)).len()))
            .sum()
    }

    /// Calls `f` with each part of `r` the set does not cover, lowest first.
    pub fn for_each_gap(&self, r: SeqRange, mut f: impl FnMut(SeqRange)) {
        let mut at = r.start;
        for x in self.as_slice() {
            if x.end.le(at) {
                continue;
            }
            if x.start.ge(r.end) {
                break;
            }
            if x.start.gt(at) {
                f(SeqRange::new(at, x.start));
            }
            at = x.end;
            if at.ge(r.end) {
                return;
            }
        }
        let rest = SeqRange::new(at, r.end);
        if !rest.is_empty() {
            f(rest);
        }
    }

    /// Adds `r`, merging it with the ranges it overlaps or touches. Returns the number of
    /// bytes of `r` not covered before (not counting any dropped range); when the set is full, the highest range is dropped to make room,
    /// or `r` itself is refused if it would be the highest (module doc). An empty `r` is a
    /// no-op.
    pub fn insert(&mut self, r: SeqRange) -> u64 {
        if r.is_empty() {
            return 0;
        }
        let before = self.bytes();
        let mut dropped = 0u64;
        // The first range that ends at or after r.start (touching counts as overlapping).
        let i = self
            .as_slice()
            .iter()
            .position(|x| x.end.ge(r.start))
            .unwrap_or(self.len);
        // One past the last range that starts at or before r.end.
        let mut j = i;
        while j < self.len && self.ranges[j].start.le(r.end) {
            j += 1;
        }
        if i == j {
            if self.len == N {
                if i == N {
                    return 0;
                }
                self.len -= 1;
                dropped = u64::from(self.ranges[self.len].len());
            }
            self.ranges.copy_within(i..self.len, i + 1);
            self.ranges[i] = r;
            self.len += 1;
        } else {
            let merged = SeqRange::new(
                r.start.min(self.ranges[i].start),
                r.end.max(self.ranges[j - 1].end),
            );
            self.ranges[i] = merged;
            self.ranges.copy_within(j..self.len, i + 1);
            self.len -= j - i - 1;
        }
        self.debug_check();
        (self.bytes() + dropped).saturating_sub(before)
    }

    /// Forgets everything before `seq` (a cumulative ACK), clipping a range that straddles it.
    pub fn remove_below(&mut self, seq: SeqNumber) {
        let k = self
            .as_slice()
            .iter()
            .position(|x| x.end.gt(seq))
            .unwrap_or(self.len);
        self.ranges.copy_within(k..self.len, 0);
        self.len -= k;
        if self.len > 0 && self.ranges[0].start.lt(seq) {
            self.ranges[0].start = seq;
        }
        self.debug_check();
    }

    fn debug_check(&self) {
        for w in self.as_slice().windows(2) {
            debug_assert!(
                w[0].end.lt(w[1].start),
                "ranges must be disjoint and non-adjacent"
            );
        }
        debug_assert!(self.as_slice().iter().all(|r| !r.is_empty()));
    }
}

/// The receiver's side: out-of-order data and the SACK blocks to send (RFC 2018 §4) with
/// D-SACK (RFC 2883 §4).
///
/// Call order per received segment: [`SackReceiver::handle_segment`] for data above
/// `RCV.NXT`, or [`SackReceiver::handle_duplicate`] for data already received; after `RCV.NXT`
/// moves, [`SackReceiver::handle_rcv_nxt`]; then [`SackReceiver::poll_blocks`] when building
/// the ACK, which consumes a pending D-SACK.
#[derive(Clone, Copy, Debug, Default)]
pub struct SackReceiver {
    ooo: SeqRangeSet<RANGES_MAX>,
    /// Sequence numbers of the most recently received out-of-order segments, newest first.
    recent: [Option<SeqNumber>; SACK_BLOCKS_MAX],
    dsack: Option<SeqRange>,
}

impl SackReceiver {
    /// A receiver with nothing out of order.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The out-of-order data held above `RCV.NXT`.
    #[must_use]
    pub fn out_of_order(&self) -> &SeqRangeSet<RANGES_MAX> {
        &self.ooo
    }

    /// Records an out-of-order segment `seg` received above `rcv_nxt` (the part at or below
    /// `rcv_nxt` is ignored). Returns the bytes newly held.
    pub fn handle_segment(&mut self, rcv_nxt: SeqNumber, seg: SeqRange) -> u64 {
        let seg = SeqRange::new(seg.start.max(rcv_nxt), seg.end);
        if seg.is_empty() {
            return 0;
        }
        let added = self.ooo.insert(seg);
        // RFC 2018 §4: the newest segment's block goes first, then the others most recent first.
        self.recent.copy_within(0..SACK_BLOCKS_MAX - 1, 1);
        self.recent[0] = Some(seg.start);
        added
    }

    /// Records a duplicate segment, to be reported as the first block of the next ACK (RFC
    /// 2883 §4); only the latest duplicate is kept.
    pub fn handle_duplicate(&mut self, seg: SeqRange) {
        if !seg.is_empty() {
            self.dsack = Some(seg);
        }
    }

    /// `RCV.NXT` advanced to `rcv_nxt`: forgets the data now in order.
    pub fn handle_rcv_nxt(&mut self, rcv_nxt: SeqNumber) {
        self.ooo.remove_below(rcv_nxt);
    }

    /// Writes the blocks for the next ACK into `out` (at most `out.len()`, which the caller sets
    /// to what fits in the option space: 4, or 3 with timestamps) and returns how many. A
    /// pending D-SACK goes first (RFC 2883 §4) and is consumed.
    pub fn poll_blocks(&mut self, out: &mut [SeqRange]) -> usize {
        let mut n = 0;
        if let Some(d) = self.dsack.take() {
            if n < out.len() {
                out[n] = d;
                n += 1;
            }
        }
        let push = |r: SeqRange, n: &mut usize, out: &mut [SeqRange]| {
            if *n < out.len() && !out[..*n].contains(&r) {
                out[*n] = r;
                *n += 1;
            }
        };
        // RFC 2018 §4: the block holding the newest segment, then the most recently reported.
        for seq in self.recent.iter().flatten() {
            if let Some(r) = self.ooo.find(*seq) {
                push(r, &mut n, out);
            }
        }
        // Then any others, lowest first, while room remains.
        for r in self.ooo.as_slice() {
            push(*r, &mut n, out);
        }
        n
    }
}

/// What one ACK told the [`Scoreboard`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Bytes newly acknowledged cumulatively.
    pub acked_bytes: u32,
    /// Bytes newly SACKed above the cumulative ACK.
    pub sacked_bytes: u64,
    /// A D-SACK block (RFC 2883 §4), reported for the caller's spurious-retransmit logic.
    pub dsack: Option<SeqRange>,
    /// SACK blocks ignored as invalid (empty, reversed, below SND.UNA or above SND.NXT).
    pub invalid_blocks: u32,
}

/// What [`Scoreboard::next_seg`] says to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextSeg {
    /// RFC 6675 §4 NextSeg rule 1 or 3: retransmit this range.
    Retransmit(SeqRange),
    /// Rule 2: send this new data.
    NewData(SeqRange),
    /// RFC 6675 §4 rescue retransmission: resend this range, the highest unSACKed data.
    Rescue(SeqRange),
}

/// The sender's SACK scoreboard and loss-recovery bookkeeping (RFC 6675).
///
/// Call order: [`Scoreboard::new`] at connection set-up; per ACK, [`Scoreboard::handle_ack`];
/// on entering loss recovery (RFC 6675 §5 step 4), [`Scoreboard::enter_recovery`]; then, while
/// `cwnd - pipe() >= SMSS`, [`Scoreboard::next_seg`] and, once the segment is sent,
/// [`Scoreboard::handle_transmit`]; after an RTO, [`Scoreboard::handle_rto`]. HighACK is
/// SND.UNA as last passed to `handle_ack`.
#[derive(Clone, Copy, Debug)]
pub struct Scoreboard {
    smss: u32,
    snd_una: SeqNumber,
    sacked: SeqRangeSet<RANGES_MAX>,
    /// RFC 6675 §2 HighRxt, kept as one past the highest byte retransmitted.
    high_rxt: SeqNumber,
    /// RFC 6675 §2 RescueRxt (one past), `None` when undefined.
    rescue_rxt: Option<SeqNumber>,
    /// RFC 6675 §5 RecoveryPoint, `None` outside recovery.
    recovery_point: Option<SeqNumber>,
}

impl Scoreboard {
    /// A scoreboard for a connection whose first unacknowledged byte is `snd_una`, with sender
    /// MSS `smss` (raised to 1 if zero).
    #[must_use]
    pub fn new(snd_una: SeqNumber, smss: u32) -> Self {
        Scoreboard {
            smss: smss.max(1),
            snd_una,
            sacked: SeqRangeSet::new(),
            high_rxt: snd_una,
            rescue_rxt: None,
            recovery_point: None,
        }
    }

    /// The SACKed ranges above SND.UNA.
    #[must_use]
    pub fn sacked(&self) -> &SeqRangeSet<RANGES_MAX> {
        &self.sacked
    }

    /// SND.UNA, RFC 6675's HighACK.
    #[must_use]
    pub fn snd_una(&self) -> SeqNumber {
        self.snd_una
    }

    /// One past HighRxt.
    #[must_use]
    pub fn high_rxt(&self) -> SeqNumber {
        self.high_rxt
    }

    /// The recovery point while in recovery.
    #[must_use]
    pub fn recovery_point(&self) -> Option<SeqNumber> {
        self.recovery_point
    }

    /// Takes an ACK: cumulative `ack` and its SACK `blocks`, with `snd_nxt` the highest data
    /// sent (HighData). An `ack` outside `[SND.UNA, snd_nxt]` moves nothing (RFC 9293
    /// §3.10.7.4 has the caller drop such ACKs; this is only defence).
    pub fn handle_ack(
        &mut self,
        ack: SeqNumber,
        snd_nxt: SeqNumber,
        blocks: &[SeqRange],
    ) -> AckOutcome {
        self.ack_inner(ack, snd_nxt, blocks, None)
    }

    /// [`Scoreboard::handle_ack`], also adding to `delivered` every range this ACK newly
    /// acknowledges, cumulatively or selectively (what RACK needs to know was delivered, RFC
    /// 8985 §6.2 step 1). Should `delivered` fill up, its highest ranges are dropped, as
    /// [`SeqRangeSet::insert`] does.
    pub fn handle_ack_delivered(
        &mut self,
        ack: SeqNumber,
        snd_nxt: SeqNumber,
        blocks: &[SeqRange],
        delivered: &mut SeqRangeSet<RANGES_MAX>,
    ) -> AckOutcome {
        self.ack_inner(ack, snd_nxt, blocks, Some(delivered))
    }

    fn ack_inner(
        &mut self,
        ack: SeqNumber,
        snd_nxt: SeqNumber,
        blocks: &[SeqRange],
        mut delivered: Option<&mut SeqRangeSet<RANGES_MAX>>,
    ) -> AckOutcome {
        let mut out = AckOutcome::default();
        if ack.in_range(self.snd_una, snd_nxt + 1u32) {
            if let Some(d) = delivered.as_deref_mut() {
                self.sacked
                    .for_each_gap(SeqRange::new(self.snd_una, ack), |g| {
                        d.insert(g);
                    });
            }
            out.acked_bytes = ack.wrapping_distance(self.snd_una);
            self.snd_una = ack;
            self.sacked.remove_below(ack);
            self.high_rxt = self.high_rxt.max(ack);
            if self.recovery_point.is_some_and(|rp| ack.ge(rp)) {
                // RFC 6675 §5 step (A): recovery ends once RecoveryPoint is acknowledged.
                self.recovery_point = None;
            }
        }
        for (k, b) in blocks.iter().enumerate() {
            // RFC 2883 §4: the first block is a D-SACK if it is below the cumulative ACK or
            // lies within the second block.
            if k == 0
                && !b.is_empty()
                && (b.end.le(ack)
                    || blocks
                        .get(1)
                        .is_some_and(|s| b.start.ge(s.start) && b.end.le(s.end) && !s.is_empty()))
            {
                out.dsack = Some(*b);
                continue;
            }
            let valid = !b.is_empty()
                && b.start.ge(self.snd_una)
                && b.end.le(snd_nxt)
                && b.end.wrapping_distance(b.start) < 1 << 31;
            if !valid {
                out.invalid_blocks += 1;
                continue;
            }
            if let Some(d) = delivered.as_deref_mut() {
                self.sacked.for_each_gap(*b, |g| {
                    d.insert(g);
                });
            }
            out.sacked_bytes += self.sacked.insert(*b);
        }
        out
    }

    /// The lowest sequence number not lost: `is_lost(x)` holds exactly for unSACKed `x` below it.
    fn lost_boundary(&self) -> SeqNumber {
        // RFC 6675 §4 IsLost: more than (DupThresh - 1) * SMSS bytes SACKed above.
        let thresh = u64::from(DUP_THRESH - 1) * u64::from(self.smss);
        let mut acc = 0u64;
        for r in self.sacked.as_slice().iter().rev() {
            let len = u64::from(r.len());
            if acc + len > thresh {
                // Bytes above x within r: r.end - x; lost iff acc + r.end - x > thresh.
                let keep = (thresh - acc) as u32;
                return r.end - keep;
            }
            acc += len;
        }
        self.snd_una
    }

    /// RFC 6675 §4 IsLost(SeqNum) with DupThresh = 3, by bytes: `seq` is unSACKed and more
    /// than (DupThresh - 1) * SMSS bytes above it are SACKed.
    #[must_use]
    pub fn is_lost(&self, seq: SeqNumber) -> bool {
        seq.ge(self.snd_una) && !self.sacked.contains(seq) && seq.lt(self.lost_boundary())
    }

    /// RFC 6675 §4 SetPipe, in bytes: each unSACKed byte in `[SND.UNA, snd_nxt)` counts once
    /// if not lost, and once more if it was retransmitted (below HighRxt).
    #[must_use]
    pub fn pipe(&self, snd_nxt: SeqNumber) -> u64 {
        let unsacked = |from: SeqNumber, to: SeqNumber| {
            u64::from(SeqRange::new(from, to).len()) - self.sacked.bytes_in(from, to)
        };
        let lost = self.lost_boundary().min(snd_nxt);
        unsacked(lost, snd_nxt) + unsacked(self.snd_una, self.high_rxt.min(snd_nxt))
    }

    /// The first unSACKed range at or after `from` and before `snd_nxt`.
    fn first_hole(&self, from: SeqNumber, snd_nxt: SeqNumber) -> Option<SeqRange> {
        let mut at = from;
        for r in self.sacked.as_slice() {
            if r.end.le(at) {
                continue;
            }
            if r.start.gt(at) {
                return Some(SeqRange::new(at, r.start.min(snd_nxt))).filter(|h| !h.is_empty());
            }
            at = r.end;
        }
        Some(SeqRange::new(at, snd_nxt)).filter(|h| !h.is_empty())
    }

    /// RFC 6675 §4 NextSeg: what to send next given HighData `snd_nxt` and `data_end`, one
    /// past the last byte the application has queued and the receive window allows.
    /// Rules 1-3 are implemented; the optional rule 4 is not (it resends data not known lost
    /// with no SACK evidence). When no rule applies in recovery, the §4 rescue retransmission
    /// is offered once per recovery.
    #[must_use]
    pub fn next_seg(&self, snd_nxt: SeqNumber, data_end: SeqNumber) -> Option<NextSeg> {
        let from = self.high_rxt.max(self.snd_una);
        let hole = self.first_hole(from, snd_nxt);
        let clip = |h: SeqRange| SeqRange::new(h.start, h.end.min(h.start + self.smss));
        // Rule 1: the first unSACKed byte above HighRxt that IsLost.
        if let Some(h) = hole {
            if self.is_lost(h.start) {
                let end = h.end.min(self.lost_boundary());
                return Some(NextSeg::Retransmit(clip(SeqRange::new(h.start, end))));
            }
        }
        // Rule 2: new data.
        let new = SeqRange::new(snd_nxt, data_end);
        if !new.is_empty() {
            return Some(NextSeg::NewData(clip(new)));
        }
        // Rule 3: an unSACKed byte above HighRxt with SACKed data above it.
        if let (Some(h), Some(top)) = (hole, self.sacked.as_slice().last()) {
            if h.start.lt(top.start) {
                return Some(NextSeg::Retransmit(clip(h)));
            }
        }
        self.rescue(snd_nxt)
    }

    /// NextSeg when RACK (RFC 8985) decides what is lost and the caller retransmits that
    /// first: rule 2 (new data), then the rescue retransmission. Rules 1 and 3 are RFC 6675's
    /// DupThresh inference, which RFC 8985 §9.2 says not to combine with RACK.
    #[must_use]
    pub fn next_seg_new_or_rescue(
        &self,
        snd_nxt: SeqNumber,
        data_end: SeqNumber,
    ) -> Option<NextSeg> {
        let new = SeqRange::new(snd_nxt, data_end);
        if !new.is_empty() {
            return Some(NextSeg::NewData(SeqRange::new(
                new.start,
                new.end.min(new.start + self.smss),
            )));
        }
        self.rescue(snd_nxt)
    }

    /// RFC 6675 §4 rescue: in recovery, once, if HighACK > RescueRxt (or undefined), send the
    /// highest outstanding unSACKed data, at most SMSS.
    fn rescue(&self, snd_nxt: SeqNumber) -> Option<NextSeg> {
        let rp = self.recovery_point?;
        if self.rescue_rxt.is_some_and(|r| self.snd_una.le(r)) {
            return None;
        }
        let top = self.highest_unsacked(rp.min(snd_nxt))?;
        // Data already retransmitted in this recovery needs no rescue.
        if top.lt(self.high_rxt) {
            return None;
        }
        let start = (top - self.smss.saturating_sub(1)).max(self.snd_una);
        let start = match self.sacked.as_slice().iter().rev().find(|r| r.end.le(top)) {
            Some(r) => start.max(r.end),
            None => start,
        };
        Some(NextSeg::Rescue(SeqRange::new(start, top + 1u32)))
    }

    /// The highest unSACKed byte below `end`.
    fn highest_unsacked(&self, end: SeqNumber) -> Option<SeqNumber> {
        let mut at = end;
        while at.gt(self.snd_una) {
            match self.sacked.find(at - 1) {
                Some(r) => at = r.start,
                None => return Some(at - 1),
            }
        }
        None
    }

    /// Enters loss recovery with RecoveryPoint = HighData `snd_nxt` (RFC 6675 §5 step 4.1):
    /// HighRxt restarts at SND.UNA and RescueRxt becomes undefined.
    pub fn enter_recovery(&mut self, snd_nxt: SeqNumber) {
        self.recovery_point = Some(snd_nxt);
        self.high_rxt = self.snd_una;
        self.rescue_rxt = None;
    }

    /// A segment `next_seg` offered has been sent: RFC 6675 §5 (C.2), HighRxt moves to its
    /// end for a retransmission; a rescue sets RescueRxt to RecoveryPoint and leaves HighRxt.
    pub fn handle_transmit(&mut self, seg: NextSeg) {
        match seg {
            NextSeg::Retransmit(r) => self.high_rxt = self.high_rxt.max(r.end),
            NextSeg::NewData(_) => {}
            NextSeg::Rescue(_) => self.rescue_rxt = self.recovery_point,
        }
    }

    /// The retransmission timer fired: RFC 6675 §5.1, SACK information is kept as a hint but
    /// recovery state restarts; the caller resends from SND.UNA.
    pub fn handle_rto(&mut self, snd_nxt: SeqNumber) {
        self.recovery_point = Some(snd_nxt);
        self.high_rxt = self.snd_una;
        self.rescue_rxt = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(a: u32, b: u32) -> SeqRange {
        SeqRange::new(SeqNumber(a), SeqNumber(b))
    }

    #[test]
    fn set_merges_and_bounds() {
        let mut s = SeqRangeSet::<3>::new();
        assert_eq!(s.insert(r(10, 20)), 10);
        assert_eq!(s.insert(r(30, 40)), 10);
        assert_eq!(s.insert(r(20, 30)), 10);
        assert_eq!(s.as_slice(), &[r(10, 40)]);
        s.insert(r(50, 60));
        s.insert(r(70, 80));
        // Full: a new highest range is refused, a lower one drops the highest.
        assert_eq!(s.insert(r(90, 95)), 0);
        assert_eq!(s.insert(r(0, 5)), 5);
        assert_eq!(s.as_slice(), &[r(0, 5), r(10, 40), r(50, 60)]);
        s.remove_below(SeqNumber(15));
        assert_eq!(s.as_slice(), &[r(15, 40), r(50, 60)]);
    }

    /// The tail (segment 10) lost with SACKs of 2..=9 and segment 1 lost too: after segment 1 is
    /// resent, only the rescue retransmission can recover the tail before the RTO.
    #[test]
    fn rescue_retransmits_a_lost_tail_once() {
        let base = SeqNumber(5_000);
        let seg = |i: u32| SeqRange::new(base + (i - 1) * 1000, base + i * 1000);
        let nxt = base + 10_000u32;
        let mut sb = Scoreboard::new(base, 1000);
        sb.handle_ack(base, nxt, &[SeqRange::new(seg(2).start, seg(9).end)]);
        sb.enter_recovery(nxt);
        let n = sb.next_seg(nxt, nxt).unwrap();
        assert_eq!(n, NextSeg::Retransmit(seg(1)));
        sb.handle_transmit(n);
        let n = sb.next_seg(nxt, nxt).unwrap();
        assert_eq!(n, NextSeg::Rescue(seg(10)));
        sb.handle_transmit(n);
        assert_eq!(sb.next_seg(nxt, nxt), None);
    }

    /// What an ACK newly delivered: the cumulative part and the SACK blocks, less what was
    /// SACKed before; D-SACK and invalid blocks deliver nothing.
    #[test]
    fn ack_reports_exactly_the_newly_delivered_ranges() {
        let base = SeqNumber(u32::MAX - 1500);
        let at = |n: u32| base + n;
        let nxt = at(10_000);
        let mut sb = Scoreboard::new(base, 1000);
        let mut d = SeqRangeSet::new();
        sb.handle_ack_delivered(base, nxt, &[SeqRange::new(at(2000), at(4000))], &mut d);
        assert_eq!(d.as_slice(), &[SeqRange::new(at(2000), at(4000))]);
        let mut d = SeqRangeSet::new();
        // The cumulative ACK to 3000 delivers 0-2000 (2000-3000 was SACKed); the block
        // 3500-6000 delivers 4000-6000; the D-SACK below the ACK nothing.
        sb.handle_ack_delivered(
            at(3000),
            nxt,
            &[
                SeqRange::new(at(100), at(200)),
                SeqRange::new(at(3500), at(6000)),
            ],
            &mut d,
        );
        assert_eq!(
            d.as_slice(),
            &[
                SeqRange::new(at(0), at(2000)),
                SeqRange::new(at(4000), at(6000))
            ]
        );
        let mut gaps = Vec::new();
        sb.sacked()
            .for_each_gap(SeqRange::new(at(3000), at(7000)), |g| gaps.push(g));
        assert_eq!(gaps, [SeqRange::new(at(6000), at(7000))]);
        // With RACK deciding what is lost, NextSeg offers new data, then the rescue only.
        sb.enter_recovery(nxt);
        assert_eq!(
            sb.next_seg_new_or_rescue(nxt, nxt + 5000u32),
            Some(NextSeg::NewData(SeqRange::new(nxt, nxt + 1000u32)))
        );
        assert_eq!(
            sb.next_seg_new_or_rescue(nxt, nxt),
            Some(NextSeg::Rescue(SeqRange::new(at(9000), nxt)))
        );
    }

    /// Segments 1..=10 of 1000 bytes starting at `base`, 2 and 5 lost.
    #[test]
    fn scenario_two_and_five_lost() {
        let base = SeqNumber(u32::MAX - 3000);
        let seg = |i: u32| SeqRange::new(base + (i - 1) * 1000, base + i * 1000);
        let nxt = base + 10_000u32;
        let mut sb = Scoreboard::new(base, 1000);
        // ACK of segment 1, then SACKs of 3-4 and 6-10.
        let o = sb.handle_ack(seg(1).end, nxt, &[SeqRange::new(seg(3).start, seg(4).end)]);
        assert_eq!((o.acked_bytes, o.sacked_bytes), (1000, 2000));
        let o = sb.handle_ack(seg(1).end, nxt, &[SeqRange::new(seg(6).start, seg(10).end)]);
        assert_eq!(o.sacked_bytes, 5000);
        assert!(sb.is_lost(seg(2).start) && sb.is_lost(seg(5).start));
        assert!(!sb.is_lost(seg(3).start));
        sb.enter_recovery(nxt);
        // Pipe: segments 2 and 5 are lost and not retransmitted: nothing in flight.
        assert_eq!(sb.pipe(nxt), 0);
        let n = sb.next_seg(nxt, nxt).unwrap();
        assert_eq!(n, NextSeg::Retransmit(seg(2)));
        sb.handle_transmit(n);
        assert_eq!(sb.pipe(nxt), 1000);
        let n = sb.next_seg(nxt, nxt).unwrap();
        assert_eq!(n, NextSeg::Retransmit(seg(5)));
        sb.handle_transmit(n);
        assert_eq!(sb.pipe(nxt), 2000);
        // Nothing left: the rescue would resend segment 5, which was just retransmitted.
        assert_eq!(sb.next_seg(nxt, nxt), None);
        // Invalid and D-SACK blocks.
        let o = sb.handle_ack(
            seg(1).end,
            nxt,
            &[r(5, 1), seg(1), SeqRange::new(nxt, nxt + 5u32)],
        );
        assert_eq!(o.dsack, None);
        assert_eq!(o.invalid_blocks, 3);
        let o = sb.handle_ack(seg(2).end, nxt, &[seg(2)]);
        assert_eq!((o.acked_bytes, o.dsack), (1000, Some(seg(2))));
        let o = sb.handle_ack(seg(10).end, nxt, &[]);
        assert_eq!(o.acked_bytes, 8000);
        assert!(sb.sacked().is_empty() && sb.recovery_point().is_none());
    }

    #[test]
    fn receiver_blocks() {
        let mut rx = SackReceiver::new();
        let nxt = SeqNumber(u32::MAX - 500);
        rx.handle_segment(nxt, SeqRange::new(nxt + 1000u32, nxt + 2000u32));
        rx.handle_segment(nxt, SeqRange::new(nxt + 3000u32, nxt + 4000u32));
        rx.handle_segment(nxt, SeqRange::new(nxt + 2000u32, nxt + 2500u32));
        rx.handle_duplicate(SeqRange::new(nxt - 100u32, nxt));
        let mut out = [SeqRange::default(); SACK_BLOCKS_MAX];
        let n = rx.poll_blocks(&mut out);
        assert_eq!(
            &out[..n],
            &[
                SeqRange::new(nxt - 100u32, nxt),
                SeqRange::new(nxt + 1000u32, nxt + 2500u32),
                SeqRange::new(nxt + 3000u32, nxt + 4000u32),
            ]
        );
        assert_eq!(rx.poll_blocks(&mut out[..1]), 1);
        assert_eq!(out[0], SeqRange::new(nxt + 1000u32, nxt + 2500u32));
        rx.handle_rcv_nxt(nxt + 2500u32);
        assert_eq!(rx.poll_blocks(&mut out), 1);
    }

    const W: u32 = 300;

    proptest! {
        #[test]
        fn set_matches_bitmap(
            base in (u32::MAX - 400)..=u32::MAX,
            ops in proptest::collection::vec((0u32..W, 0u32..40, any::<bool>()), 0..64),
        ) {
            let base = SeqNumber(base);
            let mut s = SeqRangeSet::<RANGES_MAX>::new();
            let mut model = [false; W as usize + 40];
            for (off, len, remove) in ops {
                if remove {
                    s.remove_below(base + off);
                    model[..off as usize].iter_mut().for_each(|b| *b = false);
                } else {
                    let added = s.insert(SeqRange::new(base + off, base + off + len));
                    let mut fresh = 0;
                    for b in &mut model[off as usize..(off + len) as usize] {
                        fresh += u64::from(!*b);
                        *b = true;
                    }
                    // A full set refuses or drops ranges the model keeps, so the model is
                    // compared only while the set has room.
                    if s.as_slice().len() < RANGES_MAX {
                        prop_assert_eq!(added, fresh);
                    }
                }
                if s.as_slice().len() < RANGES_MAX {
                    for (i, b) in model.iter().enumerate() {
                        prop_assert_eq!(s.contains(base + i), *b);
                    }
                }
                for w in s.as_slice().windows(2) {
                    prop_assert!(w[0].end.lt(w[1].start));
                }
            }
        }

        #[test]
        fn scoreboard_matches_model(
            base in (u32::MAX - 400)..=u32::MAX,
            acks in proptest::collection::vec(
                (0u32..W, proptest::collection::vec((0u32..W + 20, 0u32..W + 20), 0..4)), 0..16),
            smss in 1u32..40,
        ) {
            let base = SeqNumber(base);
            let nxt = base + W;
            let mut sb = Scoreboard::new(base, smss);
            let mut sacked = [false; W as usize];
            let mut una = 0u32;
            for (ack, blocks) in acks {
                let ack = ack.max(una);
                let bl: Vec<SeqRange> =
                    blocks.iter().map(|&(a, b)| SeqRange::new(base + a, base + b)).collect();
                let o = sb.handle_ack(base + ack, nxt, &bl);
                prop_assert_eq!(o.acked_bytes, ack - una);
                una = ack;
                sacked[..una as usize].iter_mut().for_each(|b| *b = false);
                for (k, &(a, b)) in blocks.iter().enumerate() {
                    if k == 0 && o.dsack.is_some() {
                        continue;
                    }
                    if a < b && a >= una && b <= W {
                        sacked[a as usize..b as usize].iter_mut().for_each(|x| *x = true);
                    }
                }
                for i in una..W {
                    prop_assert_eq!(sb.sacked().contains(base + i), sacked[i as usize]);
                    let above = sacked[i as usize + 1..].iter().filter(|b| **b).count() as u64;
                    let lost = !sacked[i as usize] && above > u64::from((DUP_THRESH - 1) * smss);
                    prop_assert_eq!(sb.is_lost(base + i), lost, "at {}", i);
                }
                let pipe = (una..W).filter(|&i| !sacked[i as usize] && !sb.is_lost(base + i)).count();
                prop_assert_eq!(sb.pipe(nxt), pipe as u64);
                let _ = sb.next_seg(nxt, nxt + 10u32);
            }
        }
    }
}
