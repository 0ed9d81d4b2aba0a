//! RACK-TLP loss detection (RFC 8985) for SACK connections: when each range of sequence space
//! was last sent, which ranges are lost by the clock, and the tail loss probe's bookkeeping.
//!
//! # Why time, and what it fixes
//!
//! RFC 6675 infers loss from counts: a hole is lost once DupThresh segments above it are
//! SACKed, and a lost *retransmission* is never inferred at all, since HighRxt moves past it;
//! only the retransmission timer finds it, after at least [`crate::rtt::RTO_MIN_NS_DEFAULT`].
//! A lost segment at the tail of a flight draws no SACK above it, so it too waits for the
//! timer. RACK instead asks one question of every outstanding segment: was a segment sent
//! *later* delivered, and has a reordering window passed since? That finds lost
//! retransmissions (anything sent after the retransmission and delivered proves it overdue),
//! tolerates reordering (within `reo_wnd`) and needs no count. TLP sends one probe two round
//! trips after the last ACK, so that a tail loss draws the SACK RACK needs instead of the RTO.
//!
//! # The send log: bounded, coalesced, exact where it matters
//!
//! RACK needs a transmit time per segment (RFC 8985 §6.1's `Segment.xmit_ts`). Linux tags
//! each buffer of its retransmit queue; here the app's buffers live outside the connection
//! (zero-copy, see [`crate::conn`]), and the connection's state must stay fixed in size. So
//! [`SentLog`] holds at most [`SENT_RANGES_MAX`] records, each a range of sequence space with
//! the interval of times at which its bytes were last sent, kept sorted by sequence number and
//! disjoint. A segment sent right after the record below it, at the same instant (one drain of
//! `poll_transmit`), extends that record: bursts cost one record. When the log is full, the two
//! neighbours whose send times are closest merge into one, their time interval the union. A
//! merged record answers RACK's two questions conservatively: its *latest* time decides
//! whether it was sent before the delivered segment and when it becomes overdue (never
//! earlier than any of its bytes would), and its *earliest* time gives the RTT of a delivery
//! from it (never shorter than the truth). Merging can only delay a detection, by at most the
//! merged gap, never make one spurious. A per-byte or per-segment array was rejected: a window
//! of 1 GiB would need millions of entries, and the ranges cost O(bursts), not O(segments).
//!
//! Every outstanding, unSACKed byte is in exactly one record, the one of its latest
//! transmission; so a retransmission carves its range out of older records (splitting one at
//! most). A record flagged lost holds bytes that wait for retransmission; the pipe of RFC 6675
//! §4 becomes, as in Linux, "outstanding, not SACKed and not lost" (a lost byte that was
//! retransmitted is in a newer record that is not lost, so it counts once). Bytes the log does
//! not cover (SACK information the peer reneged on) count as in flight and are left to the
//! RTO, the backstop it always is.
//!
//! # Probes in a fast recovery (beyond RFC 8985)
//!
//! RFC 8985 §7.2 arms the probe timeout only outside recovery, as Linux does. A retransmission
//! lost in a fast recovery with nothing sent after it delivered is then found only by the
//! RTO: RACK needs a later delivery to judge it, and RFC 6675's rescue retransmission resends
//! only data not retransmitted yet. So [`crate::conn`] arms the PTO in a fast recovery too,
//! restarted by every transmission and every ACK that delivers something, and its probe
//! resends the highest unSACKed segment (or sends new data): the probe's SACK is the later
//! delivery RACK needs. It is still one probe at a time, and a probe sent in recovery never
//! counts as a repaired loss, since the recovery reduced the window already. In the
//! simulator (10 MB over a 50 µs path at 5% loss both ways) this took the timeouts of a
//! transfer from 5-10 to 2-4; the remaining ones follow a lost probe.
//!
//! Peer input only reaches this module through validated ranges; nothing here panics,
//! allocates or reads a clock.
//!
//! Call order: [`Rack::handle_transmit`] for every data segment sent; per ACK
//! [`Rack::handle_ack`] (with the bytes it newly delivered, from
//! [`crate::sack::Scoreboard::handle_ack_delivered`]), [`Rack::handle_dsack_round`], then
//! [`Rack::detect_loss`] with [`Rack::reo_wnd_ns`]; the same detection when the reordering
//! timer fires; [`Rack::handle_rto`] on a timeout. The TLP half: [`Rack::probe_allowed`],
//! [`Rack::handle_probe`], [`Rack::handle_probe_ack`], [`Rack::end_probe_episode`].

use crate::sack::{SeqRange, SeqRangeSet, DUP_THRESH, RANGES_MAX};
use crate::seq::SeqNumber;

/// Records in one connection's [`SentLog`]: 32, as many as the SACK sets hold ranges. A full
/// window of 256 KiB (181 segments) then averages six segments a record, and a record's time
/// interval about 1/32 of a round trip, far inside the smallest reordering window.
pub const SENT_RANGES_MAX: usize = 32;

/// RFC 8985 §7.2's TLP.max_ack_delay: the PTO of a flight of one segment waits this much more
/// for the peer's delayed ACK. 200 ms is the RFC's WCDelAckT, the longest delay RFC 9293
/// §3.8.6.3 lets a receiver take in practice (Linux's `TCP_DELACK_MAX`).
pub const TLP_MAX_ACK_DELAY_NS: u64 = 200_000_000;

/// The shortest PTO: 2 ms, Linux's `TCP_TIMEOUT_MIN`. RFC 8985 §7.2's 2 * SRTT is kept above
/// it; below it (a veth pair's round trip is tens of microseconds) a probe would race the
/// peer's ACK processing and the engine's 50 µs timing wheel, and every flight would end with
/// a spurious probe.
pub const TLP_PTO_MIN_NS: u64 = 2_000_000;

/// RFC 8985 §7.2: the PTO before any RTT sample.
pub const TLP_PTO_NO_RTT_NS: u64 = 1_000_000_000;

/// RFC 8985 §6.2 step 4: DSACK-free recoveries after which `reo_wnd_mult` resets.
const REO_WND_PERSIST: u8 = 16;

/// A bound on `reo_wnd_mult`, so the window's arithmetic cannot overflow; the window is capped
/// at SRTT anyway (RFC 8985 §6.2 step 4), which four times `min_RTT / 4` already reaches for
/// any path whose RTT does not vary.
const REO_WND_MULT_MAX: u8 = 64;

/// The cost of merging two records of different kinds (lost with not lost, a retransmission
/// with an original): only when no two neighbours of one kind are left.
const MERGE_COST_MIXED: u64 = 1 << 62;

/// A record is 24 bytes and the whole of RACK-TLP's state under 900 (of a connection's fixed
/// size, which ARCHITECTURE.md quotes): checked here so that a new field is a conscious cost.
const _: () = assert!(core::mem::size_of::<Sent>() == 24);
const _: () = assert!(core::mem::size_of::<Rack>() <= 896);

/// One record of the [`SentLog`]: a range of sequence space and when its bytes were last sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sent {
    /// The bytes (sequence numbers: a FIN counts).
    range: SeqRange,
    /// The latest time any byte of the range was last sent.
    last_ns: u64,
    /// `last_ns` less the earliest such time: nonzero only for merged records. Saturated at
    /// `u32::MAX` (4.3 s), which makes the earliest time later than the truth: an RTT sample
    /// from such a record is short by the excess (module doc; the log only merges records that
    /// far apart when every closer pair is gone).
    span_ns: u32,
    /// This transmission was a retransmission (RFC 8985 §6.1 `Segment.retransmitted`).
    retransmitted: bool,
    /// RACK deemed it lost (`Segment.lost`); its unSACKed bytes wait for retransmission.
    lost: bool,
}

impl Sent {
    fn first_ns(&self) -> u64 {
        self.last_ns.saturating_sub(u64::from(self.span_ns))
    }

    /// `self` and `next` (its neighbour above) as one record.
    fn merged(&self, next: &Sent) -> Sent {
        let last = self.last_ns.max(next.last_ns);
        let first = self.first_ns().min(next.first_ns());
        Sent {
            range: SeqRange::new(self.range.start, next.range.end),
            last_ns: last,
            span_ns: (last - first).min(u64::from(u32::MAX)) as u32,
            retransmitted: self.retransmitted || next.retransmitted,
            // Lost only if both were: a lost byte taken for in flight waits for a later
            // detection or the RTO; an in-flight byte taken for lost would be resent for
            // nothing.
            lost: self.lost && next.lost,
        }
    }
}

/// Walks the sorted, disjoint ranges of a [`SeqRangeSet`] alongside queries whose starts do
/// not decrease, so that a pass over the log costs O(records + ranges).
struct Cursor<'a> {
    ranges: &'a [SeqRange],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new<const N: usize>(set: &'a SeqRangeSet<N>) -> Self {
        Cursor {
            ranges: set.as_slice(),
            at: 0,
        }
    }

    /// The ranges overlapping `r`; `r.start` must not be below an earlier query's start.
    fn overlapping(&mut self, r: SeqRange) -> impl Iterator<Item = SeqRange> + 'a {
        while self.at < self.ranges.len() && self.ranges[self.at].end.le(r.start) {
            self.at += 1;
        }
        let ranges: &'a [SeqRange] = self.ranges;
        ranges[self.at..]
            .iter()
            .take_while(move |x| x.start.lt(r.end))
            .map(move |x| SeqRange::new(x.start.max(r.start), x.end.min(r.end)))
            .filter(|x| !x.is_empty())
    }

    /// The bytes of `r` the set covers.
    fn covered(&mut self, r: SeqRange) -> u32 {
        self.overlapping(r).map(|x| x.len()).sum()
    }

    /// One past the highest byte of `r` the set covers.
    fn highest(&mut self, r: SeqRange) -> Option<SeqNumber> {
        self.overlapping(r).last().map(|x| x.end)
    }

    /// The first part of `r` the set does not cover.
    fn first_gap(&mut self, r: SeqRange) -> Option<SeqRange> {
        let mut at = r.start;
        for x in self.overlapping(r) {
            if x.start.gt(at) {
                return Some(SeqRange::new(at, x.start));
            }
            at = x.end;
        }
        Some(SeqRange::new(at, r.end)).filter(|g| !g.is_empty())
    }
}

/// When each outstanding range was last sent: [`SENT_RANGES_MAX`] records, sorted by sequence
/// number, disjoint (module doc).
#[derive(Clone, Copy, Debug)]
pub struct SentLog {
    sent: [Sent; SENT_RANGES_MAX],
    len: usize,
}

impl Default for SentLog {
    fn default() -> Self {
        SentLog {
            sent: [Sent::default(); SENT_RANGES_MAX],
            len: 0,
        }
    }
}

impl SentLog {
    fn as_slice(&self) -> &[Sent] {
        &self.sent[..self.len]
    }

    /// Records held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the log holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn insert_at(&mut self, i: usize, s: Sent) {
        debug_assert!(self.len < SENT_RANGES_MAX && i <= self.len);
        self.sent.copy_within(i..self.len, i + 1);
        self.sent[i] = s;
        self.len += 1;
    }

    fn remove_at(&mut self, i: usize) {
        debug_assert!(i < self.len);
        self.sent.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    /// Merges the two neighbours cheapest to merge (module doc): two lost records first (their
    /// times no longer matter), then two of one kind with the closest send times, and records
    /// of different kinds only as a last resort. Returns `false` with fewer than two records.
    fn compact(&mut self) -> bool {
        let best = self
            .as_slice()
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let (a, b) = (&w[0], &w[1]);
                let cost = if a.lost && b.lost {
                    0
                } else if a.lost == b.lost && a.retransmitted == b.retransmitted {
                    a.last_ns.abs_diff(b.last_ns)
                } else {
                    MERGE_COST_MIXED.saturating_add(a.last_ns.abs_diff(b.last_ns))
                };
                (cost, i)
            })
            .min();
        let Some((_, i)) = best else {
            return false;
        };
        self.sent[i] = self.sent[i].merged(&self.sent[i + 1]);
        self.remove_at(i + 1);
        true
    }

    /// Removes `r` from every record (a retransmission of it is about to be recorded): a
    /// record is trimmed, dropped, or split around `r`. A piece left with nothing but SACKed
    /// bytes is dropped instead of kept. Needs one free slot for a split.
    fn carve(&mut self, r: SeqRange, sacked: &SeqRangeSet<RANGES_MAX>) {
        let mut i = self
            .as_slice()
            .iter()
            .position(|s| s.range.end.gt(r.start))
            .unwrap_or(self.len);
        while i < self.len && self.sent[i].range.start.lt(r.end) {
            let s = self.sent[i];
            let below = SeqRange::new(s.range.start, r.start.max(s.range.start));
            let above = SeqRange::new(r.end.min(s.range.end), s.range.end);
            let keep = |p: SeqRange| !p.is_empty() && !sacked.covers(p);
            match (keep(below), keep(above)) {
                (false, false) => {
                    self.remove_at(i);
                    continue;
                }
                (true, false) => self.sent[i].range = below,
                (false, true) => self.sent[i].range = above,
                (true, true) => {
                    self.sent[i].range = below;
                    if self.len < SENT_RANGES_MAX {
                        self.insert_at(i + 1, Sent { range: above, ..s });
                    }
                    // Without room the part above loses its record and counts as in flight
                    // (module doc); `handle_transmit` keeps a slot free so this does not
                    // happen.
                }
            }
            i += 1;
        }
    }

    /// Records that `r` was sent at `now_ns` (a retransmission if `retransmitted`).
    fn record(
        &mut self,
        r: SeqRange,
        now_ns: u64,
        retransmitted: bool,
        sacked: &SeqRangeSet<RANGES_MAX>,
    ) {
        if r.is_empty() {
            return;
        }
        // Room for a split in `carve`, the new record, and one split in `detect_loss`.
        while self.len + 3 > SENT_RANGES_MAX && self.compact() {}
        self.carve(r, sacked);
        let i = self
            .as_slice()
            .iter()
            .position(|s| s.range.start.ge(r.end))
            .unwrap_or(self.len);
        // One drain of `poll_transmit` sends a burst at one instant: it extends one record.
        if i > 0 {
            let prev = &mut self.sent[i - 1];
            if prev.range.end == r.start
                && prev.last_ns == now_ns
                && prev.retransmitted == retransmitted
                && !prev.lost
            {
                prev.range.end = r.end;
                self.debug_check();
                return;
            }
        }
        self.insert_at(
            i,
            Sent {
                range: r,
                last_ns: now_ns,
                span_ns: 0,
                retransmitted,
                lost: false,
            },
        );
        self.debug_check();
    }

    /// Forgets everything below `una` (a cumulative ACK).
    fn remove_below(&mut self, una: SeqNumber) {
        let k = self
            .as_slice()
            .iter()
            .position(|s| s.range.end.gt(una))
            .unwrap_or(self.len);
        self.sent.copy_within(k..self.len, 0);
        self.len -= k;
        if self.len > 0 && self.sent[0].range.start.lt(una) {
            self.sent[0].range.start = una;
        }
    }

    /// Drops the records whose every byte is SACKed.
    fn remove_sacked(&mut self, sacked: &SeqRangeSet<RANGES_MAX>) {
        let mut cursor = Cursor::new(sacked);
        let mut kept = 0;
        for i in 0..self.len {
            let s = self.sent[i];
            if cursor.covered(s.range) < s.range.len() {
                self.sent[kept] = s;
                kept += 1;
            }
        }
        self.len = kept;
    }

    fn debug_check(&self) {
        for w in self.as_slice().windows(2) {
            debug_assert!(
                w[0].range.end.le(w[1].range.start),
                "sent records must be sorted and disjoint"
            );
        }
        debug_assert!(self.as_slice().iter().all(|s| !s.range.is_empty()));
    }
}

/// What one [`Rack::detect_loss`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Detection {
    /// Segments newly marked lost (a record's unSACKed bytes, in SMSS, rounded up).
    pub lost_segments: u32,
    /// Of those, segments that were retransmissions (RFC 8985 §9.3 asks for another
    /// congestion response).
    pub lost_retransmissions: u32,
    /// When the reordering timer must fire to look again, from now (RFC 8985 §6.2 step 5's
    /// `timeout`); `None` when nothing waits for the window.
    pub timeout_ns: Option<u64>,
}

/// The loss probe in flight (RFC 8985 §7.1's TLP.end_seq and TLP.is_retrans).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Probe {
    /// The first byte the probe carried.
    start: SeqNumber,
    /// SND.NXT just after the probe (TLP.end_seq).
    end: SeqNumber,
    /// The probe resent old data rather than sending new data (TLP.is_retrans).
    retransmission: bool,
    /// RFC 5681's FlightSize when the probe went: the window a loss it repairs belongs to.
    flight_bytes: u32,
}

/// RACK-TLP's per-connection state (RFC 8985 §6.1, §7.1) and the [`SentLog`]. See the module
/// documentation for the call order.
#[derive(Clone, Copy, Debug)]
pub struct Rack {
    log: SentLog,
    /// RACK.xmit_ts and RACK.end_seq: the send time and end of the most recently sent segment
    /// known delivered; `None` before any delivery.
    latest: Option<(u64, SeqNumber)>,
    /// RACK.rtt: the RTT of the most recently sent segment delivered (§6.2 step 1).
    rtt_ns: u64,
    /// RACK.min_RTT: the smallest RTT sample of the connection.
    min_rtt_ns: Option<u64>,
    /// RACK.fack: the highest sequence number delivered.
    fack: SeqNumber,
    /// RACK.reordering_seen.
    reordering_seen: bool,
    /// RACK.dsack_round: SND.NXT when a D-SACK last grew the window.
    dsack_round: Option<SeqNumber>,
    /// RACK.reo_wnd_mult.
    reo_wnd_mult: u8,
    /// RACK.reo_wnd_persist.
    reo_wnd_persist: u8,
    /// The loss probe in flight, if any.
    probe: Option<Probe>,
    /// An RTT sample arrived since the last probe (RFC 8985 §7.3's second condition).
    rtt_since_probe: bool,
}

impl Rack {
    /// The state of a connection whose first unacknowledged byte is `snd_una`.
    #[must_use]
    pub fn new(snd_una: SeqNumber) -> Self {
        Rack {
            log: SentLog::default(),
            latest: None,
            rtt_ns: 0,
            min_rtt_ns: None,
            fack: snd_una,
            reordering_seen: false,
            dsack_round: None,
            reo_wnd_mult: 1,
            reo_wnd_persist: 0,
            probe: None,
            rtt_since_probe: true,
        }
    }

    /// Starts over at `snd_una` (the handshake is done), keeping what the RTT taught.
    pub fn reset(&mut self, snd_una: SeqNumber) {
        let min_rtt = self.min_rtt_ns;
        *self = Rack::new(snd_una);
        self.min_rtt_ns = min_rtt;
    }

    /// The send log.
    #[must_use]
    pub fn log(&self) -> &SentLog {
        &self.log
    }

    /// Whether reordering has been seen (RACK.reordering_seen).
    #[must_use]
    pub fn reordering_seen(&self) -> bool {
        self.reordering_seen
    }

    /// RACK.min_RTT, once sampled.
    #[must_use]
    pub fn min_rtt_ns(&self) -> Option<u64> {
        self.min_rtt_ns
    }

    /// `r` (sequence space, a FIN included) was sent at `now_ns`; `retransmission` if any of it
    /// had been sent before (RFC 8985 §6.2's `RACK_transmit_*`).
    pub fn handle_transmit(
        &mut self,
        now_ns: u64,
        r: SeqRange,
        retransmission: bool,
        sacked: &SeqRangeSet<RANGES_MAX>,
    ) {
        self.log.record(r, now_ns, retransmission, sacked);
    }

    /// An RTT sample from the retransmission timer's estimator (the handshake's, or a timed
    /// segment's): it bounds RACK.min_RTT and counts for TLP's freshness rule.
    pub fn handle_rtt_sample(&mut self, rtt_ns: u64) {
        self.min_rtt_ns = Some(self.min_rtt_ns.map_or(rtt_ns, |m| m.min(rtt_ns)));
        self.rtt_since_probe = true;
    }

    /// An ACK moved SND.UNA to `ack` and newly delivered `delivered` (cumulatively or
    /// selectively; `sacked` is the scoreboard after it). RFC 8985 §6.2 steps 1 and 2: RACK.rtt,
    /// RACK.xmit_ts / end_seq from the most recently sent segment delivered, and reordering
    /// from an original delivered below RACK.fack. `echo_predates(t)` says whether the ACK's
    /// timestamp echo shows it was triggered by a transmission before time `t` (always `false`
    /// without timestamps). Then the log forgets what is acknowledged or SACKed.
    pub fn handle_ack(
        &mut self,
        now_ns: u64,
        ack: SeqNumber,
        delivered: &SeqRangeSet<RANGES_MAX>,
        sacked: &SeqRangeSet<RANGES_MAX>,
        echo_predates: impl Fn(u64) -> bool,
    ) {
        if !delivered.is_empty() {
            // The most recently sent delivered segment: (send time, end, RTT).
            let mut newest: Option<(u64, SeqNumber, u64)> = None;
            let mut cursor = Cursor::new(delivered);
            for s in self.log.as_slice() {
                let Some(end) = cursor.highest(s.range) else {
                    continue;
                };
                // Step 2: an original delivered below the highest delivered byte arrived out
                // of order.
                if end.gt(self.fack) {
                    self.fack = end;
                } else if end.lt(self.fack) && !s.retransmitted {
                    self.reordering_seen = true;
                }
                // Step 1: a retransmission's delivery may be the original's; skip it when the
                // timestamp echo or an RTT below the minimum says so.
                let rtt = now_ns.saturating_sub(s.first_ns());
                if s.retransmitted
                    && (echo_predates(s.last_ns) || self.min_rtt_ns.is_some_and(|m| rtt < m))
                {
                    continue;
                }
                if newest.is_none_or(|(t, e, _)| sent_after((s.last_ns, end), (t, e))) {
                    newest = Some((s.last_ns, end, rtt));
                }
            }
            if let Some((t, end, rtt)) = newest {
                self.rtt_ns = rtt;
                self.min_rtt_ns = Some(self.min_rtt_ns.map_or(rtt, |m| m.min(rtt)));
                self.rtt_since_probe = true;
                if self.latest.is_none_or(|l| sent_after((t, end), l)) {
                    self.latest = Some((t, end));
                }
            }
        }
        if self.fack.lt(ack) {
            self.fack = ack;
        }
        self.log.remove_below(ack);
        self.log.remove_sacked(sacked);
    }

    /// RFC 8985 §6.2 step 4, the D-SACK half, on every ACK: a round (up to the SND.NXT of the
    /// last growth) with a D-SACK grows the reordering window by one `min_RTT / 4`.
    pub fn handle_dsack_round(&mut self, snd_una: SeqNumber, snd_nxt: SeqNumber, dsack: bool) {
        if self.dsack_round.is_some_and(|r| snd_una.ge(r)) {
            self.dsack_round = None;
        }
        if self.dsack_round.is_none() && dsack {
            self.dsack_round = Some(snd_nxt);
            self.reo_wnd_mult = self.reo_wnd_mult.saturating_add(1).min(REO_WND_MULT_MAX);
            self.reo_wnd_persist = REO_WND_PERSIST;
        }
    }

    /// A fast or RTO recovery ended: after 16 without a D-SACK the window's multiplier resets
    /// (RFC 8985 §6.2 step 4).
    pub fn handle_recovery_end(&mut self) {
        self.reo_wnd_persist = self.reo_wnd_persist.saturating_sub(1);
        if self.reo_wnd_persist == 0 {
            self.reo_wnd_mult = 1;
        }
    }

    /// RACK.reo_wnd (RFC 8985 §6.2 step 4): zero while no reordering was seen and either a
    /// recovery runs or DupThresh segments' worth is SACKed (so that RACK starts recovery as
    /// fast as RFC 6675 would), otherwise `reo_wnd_mult * min_RTT / 4`, at most SRTT.
    #[must_use]
    pub fn reo_wnd_ns(
        &self,
        in_recovery: bool,
        sacked_bytes: u64,
        smss: u32,
        srtt_ns: Option<u64>,
    ) -> u64 {
        if !self.reordering_seen
            && (in_recovery || sacked_bytes > u64::from(DUP_THRESH - 1) * u64::from(smss))
        {
            return 0;
        }
        let Some(min_rtt) = self.min_rtt_ns.or(srtt_ns) else {
            return 0;
        };
        let wnd = u64::from(self.reo_wnd_mult).saturating_mul(min_rtt / 4);
        srtt_ns.map_or(wnd, |s| wnd.min(s))
    }

    /// RFC 8985 §6.2 step 5, `RACK_detect_loss`: every record not lost that was sent before
    /// RACK's segment is lost once `RACK.rtt + reo_wnd` has passed since its send time; the
    /// others are waited for. A record sent in the same burst as RACK's segment is split at
    /// RACK.end_seq, since only its part below was sent before (RFC 8985's `RACK_sent_after`
    /// tie on sequence numbers).
    pub fn detect_loss(
        &mut self,
        now_ns: u64,
        reo_wnd_ns: u64,
        sacked: &SeqRangeSet<RANGES_MAX>,
        smss: u32,
    ) -> Detection {
        let mut d = Detection::default();
        let Some((xmit, end_seq)) = self.latest else {
            return d;
        };
        let smss = smss.max(1);
        let mut timeout = 0u64;
        let mut cursor = Cursor::new(sacked);
        let mut i = 0;
        while i < self.log.len {
            let at = i;
            let s = self.log.sent[at];
            i += 1;
            let before = s.last_ns < xmit || (s.last_ns == xmit && s.range.start.lt(end_seq));
            if s.lost || !before {
                continue;
            }
            let mut unsacked = s.range.len() - cursor.covered(s.range);
            if s.last_ns == xmit && s.range.end.gt(end_seq) {
                let below = SeqRange::new(s.range.start, end_seq);
                let above = SeqRange::new(end_seq, s.range.end);
                let below_unsacked = below.len() - cursor.covered(below);
                if below_unsacked == 0 {
                    continue;
                }
                if below_unsacked < unsacked {
                    if self.log.len == SENT_RANGES_MAX {
                        // No room to split: wait for a later delivery (or the RTO).
                        continue;
                    }
                    // The part above keeps the record's times and is looked at no further:
                    // it was sent after RACK's segment.
                    self.log.sent[at].range = below;
                    self.log.insert_at(at + 1, Sent { range: above, ..s });
                    i += 1;
                    unsacked = below_unsacked;
                }
            }
            let deadline = s
                .last_ns
                .saturating_add(self.rtt_ns)
                .saturating_add(reo_wnd_ns);
            if deadline <= now_ns {
                self.log.sent[at].lost = true;
                let segments = unsacked.div_ceil(smss);
                d.lost_segments = d.lost_segments.saturating_add(segments);
                if s.retransmitted {
                    d.lost_retransmissions = d.lost_retransmissions.saturating_add(segments);
                }
            } else {
                timeout = timeout.max(deadline - now_ns);
            }
        }
        self.log.debug_check();
        d.timeout_ns = (timeout > 0).then_some(timeout);
        d
    }

    /// The retransmission timer fired: everything outstanding is resent from SND.UNA
    /// (go-back-N, [`crate::conn`]), so every record is lost until resent, and the probe
    /// episode ends (RFC 8985 §7.1).
    pub fn handle_rto(&mut self) {
        for s in &mut self.log.sent[..self.log.len] {
            s.lost = true;
        }
        self.probe = None;
    }

    /// Whether some unSACKed bytes are marked lost.
    #[must_use]
    pub fn has_lost(&self, sacked: &SeqRangeSet<RANGES_MAX>) -> bool {
        self.first_lost(sacked, u32::MAX).is_some()
    }

    /// The first lost bytes to retransmit: the lowest unSACKed run of the lowest lost record,
    /// at most `len_max` bytes.
    #[must_use]
    pub fn first_lost(&self, sacked: &SeqRangeSet<RANGES_MAX>, len_max: u32) -> Option<SeqRange> {
        let mut cursor = Cursor::new(sacked);
        for s in self.log.as_slice() {
            if !s.lost {
                continue;
            }
            if let Some(gap) = cursor.first_gap(s.range) {
                let end = gap.end.min(gap.start + len_max.max(1));
                return Some(SeqRange::new(gap.start, end));
            }
        }
        None
    }

    /// UnSACKed bytes in `[from, to)` marked lost.
    #[must_use]
    pub fn lost_bytes(
        &self,
        sacked: &SeqRangeSet<RANGES_MAX>,
        from: SeqNumber,
        to: SeqNumber,
    ) -> u64 {
        let mut cursor = Cursor::new(sacked);
        let mut sum = 0u64;
        for s in self.log.as_slice() {
            let r = SeqRange::new(s.range.start.max(from), s.range.end.min(to));
            if s.lost && !r.is_empty() {
                sum += u64::from(r.len() - cursor.covered(r));
            }
        }
        sum
    }

    // ----- Tail loss probe (RFC 8985 §7) -----

    /// RFC 8985 §7.3: a probe may go only if none is in flight and an RTT sample arrived since
    /// the last one.
    #[must_use]
    pub fn probe_allowed(&self) -> bool {
        self.probe.is_none() && self.rtt_since_probe
    }

    /// A probe carrying `[start, end)` went out (TLP.end_seq = `end`, SND.NXT after it) with
    /// `flight_bytes` outstanding before it.
    pub fn handle_probe(
        &mut self,
        start: SeqNumber,
        end: SeqNumber,
        retransmission: bool,
        flight_bytes: u32,
    ) {
        self.probe = Some(Probe {
            start,
            end,
            retransmission,
            flight_bytes,
        });
        self.rtt_since_probe = false;
    }

    /// RFC 8985 §7.4.2, `TLP_process_ack`: whether this ACK shows that the probe repaired a
    /// loss; then congestion control must react, as to any loss, and the FlightSize of the
    /// probe's window is returned for it (the flight now, after the ACK, may be nothing: a
    /// reduction from it would not halve the window but empty it). The episode ends when the
    /// probe carried new data, when a D-SACK reports it a duplicate, when an ACK goes beyond it
    /// (the repaired loss), or on a pure duplicate ACK without SACK (the probe arrived after
    /// the original).
    pub fn handle_probe_ack(
        &mut self,
        ack: SeqNumber,
        dsack: Option<SeqRange>,
        dupack_without_sack: bool,
    ) -> Option<u32> {
        let p = self.probe?;
        if ack.lt(p.end) {
            return None;
        }
        let duplicate = dsack.is_some_and(|d| d.start.lt(p.end) && d.end.gt(p.start));
        if !p.retransmission || duplicate || dupack_without_sack {
            self.probe = None;
            return None;
        }
        if ack.gt(p.end) {
            self.probe = None;
            return Some(p.flight_bytes);
        }
        None
    }

    /// A fast recovery or RTO recovery started: the probe episode ends (RFC 8985 §7.1); the
    /// recovery's own window reduction covers any loss it would have shown.
    pub fn end_probe_episode(&mut self) {
        self.probe = None;
    }

    /// RFC 8985 §7.2 `TLP_calc_PTO`, before the cap by the RTO's deadline (the caller's): two
    /// SRTTs, plus [`TLP_MAX_ACK_DELAY_NS`] when one segment is in flight, at least
    /// [`TLP_PTO_MIN_NS`]; [`TLP_PTO_NO_RTT_NS`] without an RTT sample.
    #[must_use]
    pub fn pto_ns(srtt_ns: Option<u64>, one_segment_in_flight: bool) -> u64 {
        let Some(srtt) = srtt_ns else {
            return TLP_PTO_NO_RTT_NS;
        };
        let pto = srtt.saturating_mul(2).max(TLP_PTO_MIN_NS);
        if one_segment_in_flight {
            pto.saturating_add(TLP_MAX_ACK_DELAY_NS)
        } else {
            pto
        }
    }
}

/// RFC 8985 §6.2's `RACK_sent_after`: `a` was sent after `b` (later, or at the same time with a
/// higher end).
fn sent_after(a: (u64, SeqNumber), b: (u64, SeqNumber)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1.gt(b.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BASE: SeqNumber = SeqNumber(u32::MAX - 1_000);

    fn r(a: u32, b: u32) -> SeqRange {
        SeqRange::new(BASE + a, BASE + b)
    }

    #[test]
    fn a_burst_is_one_record_and_a_retransmission_carves_its_own() {
        let none = SeqRangeSet::new();
        let mut log = SentLog::default();
        log.record(r(0, 100), 10, false, &none);
        log.record(r(100, 200), 10, false, &none);
        assert_eq!(log.len(), 1);
        log.record(r(200, 300), 20, false, &none);
        assert_eq!(log.len(), 2);
        // Resending the middle of the first record splits it in three.
        log.record(r(40, 60), 30, true, &none);
        let got: Vec<_> = log
            .as_slice()
            .iter()
            .map(|s| (s.range, s.last_ns))
            .collect();
        assert_eq!(
            got,
            [
                (r(0, 40), 10),
                (r(40, 60), 30),
                (r(60, 200), 10),
                (r(200, 300), 20)
            ]
        );
        // A piece left with only SACKed bytes goes.
        let mut sacked = SeqRangeSet::new();
        sacked.insert(r(0, 40));
        log.record(r(20, 40), 40, true, &sacked);
        assert_eq!(log.as_slice()[0].range, r(20, 40));
        log.remove_below(BASE + 50u32);
        assert_eq!(log.as_slice()[0].range, r(50, 60));
    }

    #[test]
    fn a_full_log_merges_the_closest_neighbours() {
        let none = SeqRangeSet::new();
        let mut log = SentLog::default();
        for k in 0..SENT_RANGES_MAX as u32 {
            // Send times 0, 100, 200, ... except record 7, sent 1 ns after record 6.
            let t = if k == 7 { 601 } else { u64::from(k) * 100 };
            log.record(r(k * 10, k * 10 + 10), t, false, &none);
        }
        assert!(log.len() <= SENT_RANGES_MAX - 2);
        let merged = log
            .as_slice()
            .iter()
            .find(|s| s.range.contains(BASE + 60u32))
            .copied()
            .unwrap();
        // Records 6 and 7 were the closest pair when room ran out.
        assert_eq!(merged.range, r(60, 80));
        assert_eq!((merged.first_ns(), merged.last_ns), (600, 601));
    }

    /// Ten segments of 100 sent at 0 (one record), RTT 50: segments 2-4 arrive at 50.
    fn flight_with_three_sacked(rack: &mut Rack, sacked: &mut SeqRangeSet<RANGES_MAX>) {
        rack.handle_transmit(0, r(0, 1_000), false, sacked);
        let mut delivered = SeqRangeSet::new();
        delivered.insert(r(100, 400));
        sacked.insert(r(100, 400));
        rack.handle_ack(50, BASE, &delivered, sacked, |_| false);
    }

    #[test]
    fn a_segment_sent_before_a_delivered_one_is_lost_once_the_window_passes() {
        let mut rack = Rack::new(BASE);
        rack.handle_rtt_sample(50);
        let mut sacked = SeqRangeSet::new();
        flight_with_three_sacked(&mut rack, &mut sacked);
        // A window of 10: segment 1 waits until 60; 5-10 were sent after segment 4.
        let d = rack.detect_loss(50, 10, &sacked, 100);
        assert_eq!(
            d,
            Detection {
                timeout_ns: Some(10),
                ..Detection::default()
            }
        );
        let d = rack.detect_loss(60, 10, &sacked, 100);
        assert_eq!((d.lost_segments, d.timeout_ns), (1, None));
        assert_eq!(rack.first_lost(&sacked, 1_000), Some(r(0, 100)));
        assert_eq!(rack.lost_bytes(&sacked, BASE, BASE + 1_000u32), 100);
        // Resent at 70, it is in flight again; delivered 5 (sent at 0) says nothing of it,
        // delivered new data sent at 80 does.
        rack.handle_transmit(70, r(0, 100), true, &sacked);
        rack.handle_transmit(80, r(1_000, 1_100), false, &sacked);
        assert!(!rack.has_lost(&sacked));
        let mut delivered = SeqRangeSet::new();
        delivered.insert(r(1_000, 1_100));
        sacked.insert(r(1_000, 1_100));
        rack.handle_ack(130, BASE, &delivered, &sacked, |_| false);
        let d = rack.detect_loss(130, 0, &sacked, 100);
        // The retransmission (70 + RACK.rtt 50 = 120 < 130) and 5-10 (sent at 0) are lost.
        assert_eq!((d.lost_segments, d.lost_retransmissions), (7, 1));
    }

    #[test]
    fn an_original_delivered_below_the_highest_is_reordering() {
        let mut rack = Rack::new(BASE);
        let mut sacked = SeqRangeSet::new();
        flight_with_three_sacked(&mut rack, &mut sacked);
        assert!(!rack.reordering_seen());
        let mut delivered = SeqRangeSet::new();
        delivered.insert(r(0, 100));
        rack.handle_ack(51, BASE + 400u32, &delivered, &SeqRangeSet::new(), |_| {
            false
        });
        assert!(rack.reordering_seen());
        assert_eq!(rack.reo_wnd_ns(true, 1_000, 100, Some(80)), 50 / 4);
    }

    #[test]
    fn the_reordering_window_follows_rfc_8985() {
        let mut rack = Rack::new(BASE);
        rack.handle_rtt_sample(40);
        // No reordering: zero in recovery or past DupThresh, min_RTT / 4 otherwise.
        assert_eq!(rack.reo_wnd_ns(true, 0, 100, Some(40)), 0);
        assert_eq!(rack.reo_wnd_ns(false, 201, 100, Some(40)), 0);
        assert_eq!(rack.reo_wnd_ns(false, 200, 100, Some(40)), 10);
        // A D-SACK per round adds min_RTT / 4; capped at SRTT.
        rack.handle_dsack_round(BASE, BASE + 10u32, true);
        rack.handle_dsack_round(BASE, BASE + 10u32, true);
        assert_eq!(rack.reo_wnd_ns(false, 0, 100, Some(40)), 20);
        rack.handle_dsack_round(BASE + 10u32, BASE + 20u32, true);
        assert_eq!(rack.reo_wnd_ns(false, 0, 100, Some(25)), 25);
        // Sixteen recoveries without a D-SACK reset it.
        for _ in 0..16 {
            rack.handle_recovery_end();
        }
        assert_eq!(rack.reo_wnd_ns(false, 0, 100, Some(40)), 10);
    }

    #[test]
    fn a_probe_episode_ends_as_rfc_8985_section_7_4_says() {
        let end = BASE + 500u32;
        let mut rack = Rack::new(BASE);
        rack.handle_probe(BASE + 400u32, end, true, 500);
        assert!(!rack.probe_allowed());
        // An ACK of the probe's end alone proves nothing; one beyond it shows a repair.
        assert_eq!(rack.handle_probe_ack(end, None, false), None);
        assert_eq!(rack.handle_probe_ack(end + 100u32, None, false), Some(500));
        // A D-SACK of the probe: no loss.
        rack.handle_probe(BASE + 400u32, end, true, 500);
        assert_eq!(rack.handle_probe_ack(end, Some(r(400, 500)), false), None);
        assert_eq!(rack.handle_probe_ack(end + 100u32, None, false), None);
        // New data probed: no loss either way; an RTT sample allows the next probe.
        rack.handle_probe(BASE + 400u32, end, false, 500);
        assert_eq!(rack.handle_probe_ack(end + 100u32, None, false), None);
        assert!(!rack.probe_allowed());
        rack.handle_rtt_sample(10);
        assert!(rack.probe_allowed());
    }

    #[test]
    fn the_pto_is_two_srtts_with_a_floor_and_a_delayed_ack_allowance() {
        assert_eq!(Rack::pto_ns(Some(10_000_000), false), 20_000_000);
        assert_eq!(Rack::pto_ns(Some(10_000_000), true), 220_000_000);
        assert_eq!(Rack::pto_ns(Some(50_000), false), TLP_PTO_MIN_NS);
        assert_eq!(Rack::pto_ns(None, false), TLP_PTO_NO_RTT_NS);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(u32, u64),
        Resend(u32, u32, u64),
        Ack(u32),
        Sack(u32, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u32..60, 0u64..4).prop_map(|(l, dt)| Op::Send(l, dt)),
            (0u32..400, 1u32..40, 0u64..4).prop_map(|(o, l, dt)| Op::Resend(o, l, dt)),
            (0u32..400).prop_map(Op::Ack),
            (0u32..400, 10u32..60).prop_map(|(o, l)| Op::Sack(o, l)),
        ]
    }

    proptest! {
        /// Against a per-byte model: the log stays sorted, disjoint and within its bound, and
        /// every outstanding unSACKed byte is in one record whose time interval holds the
        /// byte's last send time.
        #[test]
        fn log_matches_a_per_byte_model(ops in proptest::collection::vec(op(), 1..120)) {
            let mut log = SentLog::default();
            let mut sacked = SeqRangeSet::<RANGES_MAX>::new();
            let mut last: Vec<Option<u64>> = Vec::new();
            let (mut una, mut nxt, mut now) = (0u32, 0u32, 0u64);
            for op in ops {
                match op {
                    Op::Send(len, dt) => {
                        now += dt;
                        log.record(r(nxt, nxt + len), now, false, &sacked);
                        last.extend((0..len).map(|_| Some(now)));
                        nxt += len;
                    }
                    Op::Resend(off, len, dt) => {
                        now += dt;
                        let start = una + off.min(nxt - una);
                        let end = (start + len).min(nxt);
                        if start < end {
                            log.record(r(start, end), now, true, &sacked);
                            last[start as usize..end as usize].iter_mut().for_each(|t| *t = Some(now));
                        }
                    }
                    Op::Ack(off) => una = (una + off).min(nxt),
                    Op::Sack(off, len) => {
                        let start = una + off.min(nxt - una);
                        sacked.insert(r(start, (start + len).min(nxt)));
                    }
                }
                sacked.remove_below(BASE + una);
                log.remove_below(BASE + una);
                log.remove_sacked(&sacked);
                prop_assert!(log.len() <= SENT_RANGES_MAX);
                for w in log.as_slice().windows(2) {
                    prop_assert!(w[0].range.end.le(w[1].range.start));
                }
                if sacked.as_slice().len() == RANGES_MAX {
                    continue; // the set dropped ranges the model keeps
                }
                for b in una..nxt {
                    let seq = BASE + b;
                    if sacked.contains(seq) {
                        continue;
                    }
                    let owners: Vec<&Sent> =
                        log.as_slice().iter().filter(|s| s.range.contains(seq)).collect();
                    prop_assert_eq!(owners.len(), 1, "byte {} in {} records", b, owners.len());
                    let t = last[b as usize].unwrap();
                    prop_assert!(owners[0].first_ns() <= t && t <= owners[0].last_ns,
                        "byte {} sent at {} in record {:?}", b, t, owners[0]);
                }
            }
        }
    }
}
