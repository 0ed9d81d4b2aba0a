//! HyStart++ (RFC 9406): leaving the initial slow start when the round-trip time starts to
//! climb, before the queue overflows, instead of on the first loss.
//!
//! Standard slow start doubles the window each round until a loss, and by then it has
//! overshot by up to a window: a burst of drops, a long recovery, sometimes an RTO. HyStart++
//! watches the smallest RTT of each round. When it rises by more than a threshold over the
//! previous round's smallest, a queue is forming, and the sender moves to Conservative Slow
//! Start (CSS), which grows at a quarter of the rate (`CSS_GROWTH_DIVISOR`, §4.2). If the RTT
//! falls back below the smallest RTT at CSS's entry, the rise was jitter and standard slow
//! start resumes. After `CSS_ROUNDS` rounds in CSS, ssthresh becomes cwnd and congestion
//! avoidance takes over. CSS is the RFC's answer to the older HyStart's weakness, leaving slow
//! start for good on a single noisy round.
//!
//! # Why it is built this way
//! [`HyStart`] is a tracker the controller consults, not a controller: it owns rounds, RTT
//! minima and the phase; the controller keeps `cwnd` and `ssthresh` and asks two things, how
//! many bytes this ACK may add (`credit_bytes`) and whether CSS has ended (`handle_ack`).
//! RFC 9406 is written for any loss-based algorithm, so the same tracker can serve NewReno
//! later without change. Today only CUBIC uses it, as RFC 9438 §4.10 recommends.
//!
//! It reads no clock. Rounds are delimited by sequence numbers (§4.2: `windowEnd` is
//! `SND.NXT` at the start of a round, and the round ends when `snd_una` reaches it, compared
//! modulo 2^32), and the only times are the connection's RTT samples. A clock that goes
//! backwards therefore cannot confuse it; at worst the connection reports no sample (a zero
//! sample is ignored, as CUBIC's minimum ignores it).
//!
//! Only the initial slow start uses it (§4.3: "An implementation SHOULD use HyStart++ only
//! for the initial slow start"). Any congestion event (loss, RTO, ECN-Echo) moves it to
//! [`HyStartPhase::Done`] for good, and the controller's own reduction applies (§4.2: a loss
//! or an ECN mark during slow start or CSS ends it, and the algorithm responds as it would
//! without HyStart++). Later slow starts run to the ssthresh the reduction set.
//!
//! # Samples per round
//! The exit test needs at least `N_RTT_SAMPLE` (8) samples in the round (§4.2; §4.3 makes 8
//! the RECOMMENDED count, above the one sample per round every TCP must take). The RFC's
//! pseudocode keeps the round's minimum over all its samples and tests on every sample from
//! the 8th on. Both tests are monotone in that minimum, so CSS entry is in effect decided on
//! the 8th sample (a later sample can only lower the minimum), and the fall-back to slow
//! start can happen on any sample from the 8th on. A round with fewer samples decides
//! nothing; its minimum still becomes the next round's `lastRoundMinRTT`.
//!
//! The connection (`conn.rs`) gives a sample on each ACK that advances `snd_una`: the one
//! timed segment of the round (RFC 6298's single timer under Karn's rule) or, on the other
//! ACKs, the RTT the ACK's timestamp echo measures (RFC 7323 §4.1), in whole milliseconds
//! of the timestamp clock. Echoes younger than one tick give no sample, so a path of well
//! under a millisecond brings one or two samples a round and HyStart++ decides nothing there
//! (it could not reach its 4 ms threshold either); on a WAN path most ACKs carry one.
//!
//! # Thresholds on data-centre paths
//! `RttThresh = clamp(lastRoundMinRTT / 8, MIN_RTT_THRESH, MAX_RTT_THRESH)` (§4.2), with the
//! RFC's 4 ms and 16 ms ([`RTT_THRESH_NS_MIN`], [`RTT_THRESH_NS_MAX`]). On a data-centre path
//! with an RTT of tens of microseconds, `lastRoundMinRTT / 8` is a few microseconds and the
//! 4 ms floor rules: CSS starts only once queueing has added 4 ms to the smallest RTT of a
//! round. At 10-100 Gb/s that is a standing queue of 5-50 MB, more than a switch port
//! usually buffers, so the drop comes first and slow start ends on loss, as without
//! HyStart++. That is what the RFC intends: §4.3 warns that "smaller values of MIN_RTT_THRESH
//! may cause spurious exits from slow start", and on such a path the jitter the hosts add on
//! their own (interrupt moderation, delayed ACKs, a busy core's run queue; tens of
//! microseconds) is as large as the RTT, so a threshold scaled to the RTT would read noise as
//! queueing. We keep the RFC's values and rejected a scaled floor for sub-millisecond RTTs
//! (say `max(lastRoundMinRTT / 8, 50 µs)`): §4.3 lets an implementation choose other values,
//! but there is no measurement of ours to pick one from, and a spurious exit costs a
//! quarter-rate slow start for five rounds and then congestion avoidance from a small window.
//! On paths of a few milliseconds or more (wide-area links, and the simulator's, whose one-way
//! delays go up to 20 ms) HyStart++ works as tuned. The thresholds are named constants so
//! that a deployment that has measured its jitter can change them in one place.
//!
//! # Size
//! The state is three RTTs, the round's end (`Option<u32>`) and four bytes of counters and
//! phase: 24 bytes, checked at compile time below. It grows CUBIC, the largest variant of
//! [`super::Congestion`], and so the enum, by those 24 bytes (from 88 to 112). The RTTs are
//! `u32` nanoseconds, `u32::MAX` standing for the RFC's "infinity": a sample above 4.29 s is
//! clamped just below it, which loses nothing, since no threshold exceeds 16 ms and a round
//! whose minimum is over 4 s is not one to leave slow start on. `u64`s would cost 16 bytes
//! more per connection for no decision that differs.
//!
//! # Not built
//! Pacing: we do not pace, so §4.3's `L` for a paced sender (infinity) does not arise, and
//! growth uses the slow start's existing RFC 3465 limit `L = 2` (`ABC_LIMIT_SMSS`) in both
//! standard slow start and CSS instead of §4.3's `L = 8` for non-paced senders. A smaller
//! `L` is only more conservative, and it keeps slow start identical with and without
//! HyStart++ until CSS begins.

use super::{seq_ge, AckSample, ABC_LIMIT_SMSS};

/// RFC 9406 §4.3's `MIN_RTT_THRESH`, in nanoseconds: the smallest RTT increase over the last
/// round that counts as a queue forming (4 ms). See the module doc on data-centre paths.
pub const RTT_THRESH_NS_MIN: u32 = 4_000_000;

/// RFC 9406 §4.3's `MAX_RTT_THRESH`, in nanoseconds: the largest increase ever required
/// (16 ms), so long paths still leave slow start before a loss.
pub const RTT_THRESH_NS_MAX: u32 = 16_000_000;

/// RFC 9406 §4.3's `MIN_RTT_DIVISOR`: the threshold is this fraction of the last round's
/// smallest RTT, within the two bounds above.
pub const MIN_RTT_DIVISOR: u32 = 8;

/// RFC 9406 §4.3's `N_RTT_SAMPLE`: RTT samples a round needs before it may decide anything.
pub const N_RTT_SAMPLE: u8 = 8;

/// RFC 9406 §4.3's `CSS_GROWTH_DIVISOR`: in CSS, cwnd grows by the credited bytes over this.
pub const CSS_GROWTH_DIVISOR: u32 = 4;

/// RFC 9406 §4.3's `CSS_ROUNDS`: rounds in CSS (the partial round of entry included) before
/// congestion avoidance.
pub const CSS_ROUNDS: u8 = 5;

/// The RFC's "infinity" for an RTT not yet measured.
const RTT_NS_INFINITY: u32 = u32::MAX;

/// The largest RTT stored (4.29 s); larger samples are clamped to it (see the module doc).
const RTT_NS_MAX: u32 = u32::MAX - 1;

// RFC 9406 §4.3: "The minimum value of CSS_GROWTH_DIVISOR MUST be at least 2." The carry of
// CSS's division is kept in a `u8`, so the divisor must also fit one.
const _: () = assert!(CSS_GROWTH_DIVISOR >= 2 && CSS_GROWTH_DIVISOR <= 256);
const _: () = assert!(RTT_THRESH_NS_MIN <= RTT_THRESH_NS_MAX && RTT_THRESH_NS_MAX < RTT_NS_MAX);
const _: () = assert!(MIN_RTT_DIVISOR > 0);
const _: () = assert!(N_RTT_SAMPLE > 0 && CSS_ROUNDS > 0);
// The size the module doc promises.
const _: () = assert!(core::mem::size_of::<HyStart>() <= 24);

/// Where HyStart++ is in the initial slow start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HyStartPhase {
    /// Standard slow start, watching each round's RTT for a rise (§4.2).
    #[default]
    SlowStart,
    /// Conservative Slow Start: a quarter of slow start's growth, for at most `CSS_ROUNDS`
    /// rounds (§4.2).
    Conservative,
    /// Finished: CSS ran its rounds, or a congestion event ended the initial slow start.
    /// Any later slow start is the standard one (§4.3).
    Done,
}

/// HyStart++'s per-connection state: the rounds, their smallest RTTs and the phase.
///
/// Call order (the controller's): while in slow start and outside recovery, for each ACK that
/// advanced `snd_una`, first `credit_bytes` if the window may grow, then `handle_ack`; on any
/// congestion event `finish`; on an idle restart `handle_idle_restart`. No method panics,
/// allocates or overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HyStart {
    /// `lastRoundMinRTT`: the previous round's smallest RTT sample.
    last_round_rtt_ns_min: u32,
    /// `currentRoundMinRTT`: this round's smallest RTT sample so far.
    round_rtt_ns_min: u32,
    /// `cssBaselineMinRtt`: the round's smallest RTT when CSS was entered.
    css_baseline_rtt_ns_min: u32,
    /// `windowEnd`: `snd_nxt` at the start of this round; `None` before the first ACK.
    window_end: Option<u32>,
    /// `rttSampleCount` for this round, saturating (only `>= N_RTT_SAMPLE` matters).
    rtt_samples: u8,
    /// Round ends seen in this stay in CSS, the partial round of entry included.
    css_rounds: u8,
    /// The remainder of CSS's division, carried so that small ACKs add up (always less than
    /// `CSS_GROWTH_DIVISOR`).
    css_carry_bytes: u8,
    /// Standard slow start, CSS, or finished.
    phase: HyStartPhase,
}

impl Default for HyStart {
    fn default() -> Self {
        Self::new()
    }
}

impl HyStart {
    /// The state at connection set-up: standard slow start, nothing measured (§4.2: the
    /// minima start at infinity).
    pub const fn new() -> Self {
        HyStart {
            last_round_rtt_ns_min: RTT_NS_INFINITY,
            round_rtt_ns_min: RTT_NS_INFINITY,
            css_baseline_rtt_ns_min: RTT_NS_INFINITY,
            window_end: None,
            rtt_samples: 0,
            css_rounds: 0,
            css_carry_bytes: 0,
            phase: HyStartPhase::SlowStart,
        }
    }

    /// The current phase.
    pub fn phase(&self) -> HyStartPhase {
        self.phase
    }

    /// The bytes an ACK of `acked_bytes` adds to cwnd in slow start: `min(N, L * SMSS)`, over
    /// `CSS_GROWTH_DIVISOR` in CSS (§4.2). Call before `handle_ack` for the same ACK: the
    /// pseudocode grows the window with the phase the ACK found.
    pub(crate) fn credit_bytes(&mut self, acked_bytes: u32, smss: u32) -> u32 {
        let credit = acked_bytes.min(smss.saturating_mul(ABC_LIMIT_SMSS));
        if self.phase != HyStartPhase::Conservative {
            return credit;
        }
        // §4.2: cwnd += min(N, L * SMSS) / CSS_GROWTH_DIVISOR, the remainder carried. The sum
        // fits u64, and the quotient is at most the credit, so it fits u32.
        let total = u64::from(credit) + u64::from(self.css_carry_bytes);
        let divisor = u64::from(CSS_GROWTH_DIVISOR);
        self.css_carry_bytes = (total % divisor) as u8;
        (total / divisor) as u32
    }

    /// An ACK in slow start: takes its RTT sample, runs §4.2's tests, and ends the round
    /// when `snd_una` reaches `windowEnd`. Returns `true` when CSS has run its `CSS_ROUNDS`
    /// rounds; the caller then sets ssthresh to cwnd and enters congestion avoidance.
    #[must_use]
    pub(crate) fn handle_ack(&mut self, ack: &AckSample) -> bool {
        if self.phase == HyStartPhase::Done {
            return false;
        }
        // A zero sample can only come from a clock that stood still or went backwards.
        if let Some(rtt_ns) = ack.rtt_ns.filter(|&rtt| rtt > 0) {
            // In range after the clamp, so the cast is exact.
            self.handle_rtt_sample(rtt_ns.min(u64::from(RTT_NS_MAX)) as u32);
        }
        let Some(window_end) = self.window_end else {
            // §4.2: "Define windowEnd as a sequence number initialized to SND.NXT." The first
            // ACK opens the first round; its sample belongs to that round.
            self.window_end = Some(ack.snd_nxt);
            return false;
        };
        if !seq_ge(ack.snd_una, window_end) {
            return false;
        }
        // §4.2: "When windowEnd is ACKed, the current round ends and windowEnd is set to
        // SND.NXT."
        if self.phase == HyStartPhase::Conservative {
            // §4.2: "If the transition into CSS happens in the middle of a round, that
            // partial round counts towards the limit."
            self.css_rounds = self.css_rounds.saturating_add(1);
            if self.css_rounds >= CSS_ROUNDS {
                // §4.2: "If CSS_ROUNDS rounds are complete, enter congestion avoidance by
                // setting the ssthresh to the current cwnd."
                self.finish();
                return true;
            }
        }
        // §4.2: at the start of each round, lastRoundMinRTT = currentRoundMinRTT,
        // currentRoundMinRTT = infinity, rttSampleCount = 0.
        self.last_round_rtt_ns_min = self.round_rtt_ns_min;
        self.round_rtt_ns_min = RTT_NS_INFINITY;
        self.rtt_samples = 0;
        self.window_end = Some(ack.snd_nxt);
        false
    }

    /// §4.2's per-sample bookkeeping and the two tests.
    fn handle_rtt_sample(&mut self, rtt_ns: u32) {
        // §4.2: currentRoundMinRTT = min(currentRoundMinRTT, currRTT); rttSampleCount += 1.
        self.round_rtt_ns_min = self.round_rtt_ns_min.min(rtt_ns);
        self.rtt_samples = self.rtt_samples.saturating_add(1);
        if self.rtt_samples < N_RTT_SAMPLE {
            return;
        }
        match self.phase {
            HyStartPhase::SlowStart => {
                // §4.2: with N_RTT_SAMPLE samples and both minima valid, a rise of RttThresh
                // over the last round's minimum means a queue: enter CSS.
                if self.round_rtt_ns_min == RTT_NS_INFINITY
                    || self.last_round_rtt_ns_min == RTT_NS_INFINITY
                {
                    return;
                }
                let thresh_ns = rtt_thresh_ns(self.last_round_rtt_ns_min);
                if self.round_rtt_ns_min >= self.last_round_rtt_ns_min.saturating_add(thresh_ns) {
                    self.css_baseline_rtt_ns_min = self.round_rtt_ns_min;
                    self.css_rounds = 0;
                    self.css_carry_bytes = 0;
                    self.phase = HyStartPhase::Conservative;
                }
            }
            HyStartPhase::Conservative => {
                // §4.2: a minimum below the baseline means the exit was spurious: resume slow
                // start, HyStart++ included.
                if self.round_rtt_ns_min < self.css_baseline_rtt_ns_min {
                    self.resume_slow_start();
                }
            }
            HyStartPhase::Done => {}
        }
    }

    /// A congestion event ended the initial slow start (§4.2, §4.3), or CSS ran its rounds.
    pub(crate) fn finish(&mut self) {
        self.phase = HyStartPhase::Done;
    }

    /// The sender restarts after an idle period (RFC 5681 §4.1). The queue that raised the
    /// RTT has drained meanwhile, so what was measured is stale: leave CSS for standard slow
    /// start and measure afresh, from the next ACK's round.
    pub(crate) fn handle_idle_restart(&mut self) {
        if self.phase == HyStartPhase::Done {
            return;
        }
        *self = HyStart::new();
    }

    fn resume_slow_start(&mut self) {
        self.css_baseline_rtt_ns_min = RTT_NS_INFINITY;
        self.css_rounds = 0;
        self.css_carry_bytes = 0;
        self.phase = HyStartPhase::SlowStart;
    }
}

/// §4.2: `RttThresh = max(MIN_RTT_THRESH, min(lastRoundMinRTT / MIN_RTT_DIVISOR,
/// MAX_RTT_THRESH))`.
pub(crate) fn rtt_thresh_ns(last_round_rtt_ns_min: u32) -> u32 {
    (last_round_rtt_ns_min / MIN_RTT_DIVISOR).clamp(RTT_THRESH_NS_MIN, RTT_THRESH_NS_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const MSS: u32 = 1000;

    fn sample(snd_una: u32, snd_nxt: u32, rtt_ns: Option<u64>) -> AckSample {
        AckSample {
            now_ns: 0,
            acked_bytes: MSS,
            snd_una,
            snd_nxt,
            flight_bytes: 0,
            rtt_ns,
            cwnd_limited: true,
        }
    }

    /// One round of `acks` ACKs of one segment each after `start`, the last reporting
    /// `next_end` as `snd_nxt` (the next round's `windowEnd`); every ACK carries `rtt_ns`.
    /// Returns whether CSS ended.
    fn round(h: &mut HyStart, start: u32, acks: u32, next_end: u32, rtt_ns: Option<u64>) -> bool {
        let mut done = false;
        for i in 1..=acks {
            let una = start + i * MSS;
            let nxt = if i == acks {
                next_end
            } else {
                start + acks * MSS
            };
            done |= h.handle_ack(&sample(una, nxt, rtt_ns));
        }
        done
    }

    #[test]
    fn the_threshold_is_an_eighth_of_the_last_minimum_within_4_and_16_ms() {
        let ms = MS as u32;
        assert_eq!(rtt_thresh_ns(0), 4 * ms);
        assert_eq!(
            rtt_thresh_ns(20_000),
            4 * ms,
            "a data-centre RTT gets the 4 ms floor"
        );
        assert_eq!(rtt_thresh_ns(32 * ms), 4 * ms);
        assert_eq!(rtt_thresh_ns(40 * ms), 5 * ms);
        assert_eq!(rtt_thresh_ns(128 * ms), 16 * ms);
        assert_eq!(rtt_thresh_ns(200 * ms), 16 * ms);
        assert_eq!(rtt_thresh_ns(RTT_NS_MAX), 16 * ms);
    }

    #[test]
    fn the_first_ack_opens_the_first_round_at_snd_nxt() {
        let mut h = HyStart::new();
        // snd_nxt = 10 000 on the first ACK: the round ends when snd_una reaches it.
        assert!(!h.handle_ack(&sample(1000, 10_000, Some(10 * MS))));
        assert_eq!(h.window_end, Some(10_000));
        assert!(!h.handle_ack(&sample(9000, 12_000, Some(10 * MS))));
        assert_eq!(h.rtt_samples, 2, "still the first round");
        assert!(!h.handle_ack(&sample(10_000, 30_000, Some(10 * MS))));
        assert_eq!(
            h.window_end,
            Some(30_000),
            "the next round ends at SND.NXT now"
        );
        assert_eq!(u64::from(h.last_round_rtt_ns_min), 10 * MS);
        assert_eq!(h.rtt_samples, 0);
    }

    #[test]
    fn a_rise_of_exactly_the_threshold_enters_css_one_less_does_not() {
        // Last round 40 ms: the threshold is 5 ms.
        for (rtt, phase) in [
            (45 * MS - 1, HyStartPhase::SlowStart),
            (45 * MS, HyStartPhase::Conservative),
        ] {
            let mut h = HyStart::new();
            let _ = round(&mut h, 0, 10, 20_000, Some(40 * MS));
            let _ = round(&mut h, 10_000, 10, 30_000, Some(rtt));
            assert_eq!(h.phase(), phase, "rtt {rtt}");
        }
    }

    #[test]
    fn css_divides_the_credit_by_four_and_carries_the_rest() {
        let mut h = HyStart::new();
        assert_eq!(h.credit_bytes(1000, MSS), 1000);
        // L = 2: an ACK of 5 segments earns 2 in slow start.
        assert_eq!(h.credit_bytes(5000, MSS), 2000);
        h.phase = HyStartPhase::Conservative;
        assert_eq!(h.credit_bytes(1000, MSS), 250);
        assert_eq!(h.credit_bytes(5000, MSS), 500);
        // 3 + 3 + 3 + 3 bytes: 0, 1 (6 / 4, 2 carried), 1 (5 / 4, 1 carried), 1 (4 / 4).
        let credits: Vec<u32> = (0..4).map(|_| h.credit_bytes(3, MSS)).collect();
        assert_eq!(credits, [0, 1, 1, 1]);
        assert_eq!(h.css_carry_bytes, 0);
    }

    #[test]
    fn a_round_that_never_ends_decides_from_its_samples_and_never_overflows() {
        // snd_una never reaches windowEnd (a peer's nonsense, or a stalled round): the count
        // saturates and the tests still run on the minimum.
        let mut h = HyStart::new();
        let _ = h.handle_ack(&sample(1000, 1 << 31, Some(10 * MS)));
        for _ in 0..1000 {
            assert!(!h.handle_ack(&sample(2000, 1 << 31, Some(10 * MS))));
        }
        assert_eq!(h.rtt_samples, u8::MAX);
        // No previous round: no decision, however large the RTT.
        assert!(!h.handle_ack(&sample(2000, 1 << 31, Some(u64::MAX - 1))));
        assert_eq!(h.phase(), HyStartPhase::SlowStart);
    }

    #[derive(Debug, Clone)]
    struct Ack {
        una_step: u32,
        nxt_step: u32,
        rtt_ns: Option<u64>,
        acked: u32,
    }

    fn arb_ack() -> impl Strategy<Value = Ack> {
        let rtt = prop_oneof![
            4 => (1..60u64).prop_map(|ms| Some(ms * MS)),
            1 => proptest::option::of(any::<u64>()),
        ];
        let step = prop_oneof![4 => 0..4000u32, 1 => any::<u32>()];
        (step.clone(), step, rtt, any::<u32>()).prop_map(|(una_step, nxt_step, rtt_ns, acked)| {
            Ack {
                una_step,
                nxt_step,
                rtt_ns,
                acked,
            }
        })
    }

    proptest! {
        /// Whatever the ACKs say: counters stay in range, the carry below the divisor, a
        /// credit never exceeds slow start's, and once done HyStart++ stays done.
        #[test]
        fn any_ack_sequence_keeps_the_state_in_range(
            acks in proptest::collection::vec(arb_ack(), 1..400),
        ) {
            let mut h = HyStart::new();
            let (mut una, mut nxt) = (0u32, 0u32);
            let mut done = false;
            for a in acks {
                una = una.wrapping_add(a.una_step);
                nxt = nxt.wrapping_add(a.nxt_step);
                let credit = h.credit_bytes(a.acked, MSS);
                prop_assert!(credit <= a.acked.min(2 * MSS));
                let ack = AckSample { acked_bytes: a.acked, ..sample(una, nxt, a.rtt_ns) };
                if h.handle_ack(&ack) {
                    prop_assert!(!done, "CSS ended twice");
                    done = true;
                }
                prop_assert!(u32::from(h.css_carry_bytes) < CSS_GROWTH_DIVISOR);
                prop_assert!(h.css_rounds <= CSS_ROUNDS);
                prop_assert_eq!(done, h.phase() == HyStartPhase::Done);
                if h.phase() == HyStartPhase::Conservative {
                    prop_assert!(h.css_baseline_rtt_ns_min != RTT_NS_INFINITY);
                }
            }
        }
    }
}
