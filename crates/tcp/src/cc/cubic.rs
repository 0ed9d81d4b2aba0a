//! CUBIC (RFC 9438): the window follows a cubic function of the time since the last
//! congestion event, `W_cubic(t) = C (t - K)^3 + W_max`, concave up to the window where the loss
//! happened (`W_max`) and convex beyond it, so growth does not depend on the RTT; a Reno-friendly
//! estimate (`W_est`, §4.3) keeps it at least as fast as Reno where Reno would win (short RTTs,
//! small windows, which is most of a data centre).
//!
//! Windows are computed in segments as `f64` (the RFC's unit, and the cube root needs floats)
//! and stored in bytes as `u32`, clamped to `[SMSS, CWND_BYTES_MAX]` after every step, so no
//! NaN or infinity can reach `cwnd`: every input to the float arithmetic is finite and bounded
//! (times are clamped to a day, windows to 2^30 bytes).
//!
//! Slow start is RFC 3465 byte counting, as NewReno's. HyStart++ (RFC 9406) is not built yet:
//! the initial slow start ends on the first loss or at ssthresh. Time the sender spent
//! application-limited is not taken out of `t` (RFC 9438 §5.8 suggests it); instead the window
//! does not grow while the sender is not cwnd-limited, and the per-ACK target is bounded by
//! 1.5 × cwnd (§4.2), which bounds the jump when it is again. Spurious-congestion undo (§4.9) is
//! not done.

use super::{
    check_smss, clamp_cwnd, initial_window_bytes, recovery_exit_window, restart_window,
    slow_start_window, ssthresh_floor, AckSample, CcError, CongestionControl, EcnGate,
    CWND_BYTES_MAX,
};

/// RFC 9438 §5.1: C = 0.4 (segments / s^3).
pub const CUBIC_C: f64 = 0.4;
/// RFC 9438 §4.6: the multiplicative decrease factor.
pub const CUBIC_BETA: f64 = 0.7;
/// RFC 9438 §4.3: alpha_cubic = 3 (1 - beta) / (1 + beta), the Reno-friendly additive step.
pub const CUBIC_ALPHA: f64 = 3.0 * (1.0 - CUBIC_BETA) / (1.0 + CUBIC_BETA);
/// Longest time since an epoch's start the curve is evaluated at: a day, so `t^3` stays finite
/// and a clock that jumps cannot produce an infinity.
const EPOCH_SECONDS_MAX: f64 = 86_400.0;

/// CUBIC's state for one connection.
#[derive(Debug, Clone)]
pub struct Cubic {
    smss: u32,
    cwnd: u32,
    ssthresh: u32,
    in_recovery: bool,
    ecn: EcnGate,
    /// Window (segments) just before the last reduction; 0 before the first.
    w_max: f64,
    /// Start of the current congestion-avoidance epoch, if one runs.
    epoch_start_ns: Option<u64>,
    /// Seconds from the epoch's start until the curve reaches `w_max` (§4.2 eq. 2).
    k_s: f64,
    /// The Reno-friendly estimate, in segments (§4.3).
    w_est: f64,
    /// Smallest RTT seen, for the target's `t + RTT` (§4.2).
    rtt_min_ns: Option<u64>,
    /// Congestion avoidance's growth below one byte, carried to the next ACK (a window grows
    /// by fractions of a byte per ACK at large windows).
    carry_bytes: f64,
}

impl Cubic {
    /// A controller with RFC 6928's initial window and an unbounded ssthresh.
    pub fn new(smss: u32) -> Result<Self, CcError> {
        let smss = check_smss(smss)?;
        Ok(Cubic {
            smss,
            cwnd: initial_window_bytes(smss),
            ssthresh: CWND_BYTES_MAX,
            in_recovery: false,
            ecn: EcnGate::default(),
            w_max: 0.0,
            epoch_start_ns: None,
            k_s: 0.0,
            w_est: 0.0,
            rtt_min_ns: None,
            carry_bytes: 0.0,
        })
    }

    /// `W_max` in segments (0 before the first congestion event).
    pub fn w_max_segments(&self) -> f64 {
        self.w_max
    }

    /// `K` of the current epoch, in seconds.
    pub fn k_seconds(&self) -> f64 {
        self.k_s
    }

    fn segments(&self, bytes: u32) -> f64 {
        f64::from(bytes) / f64::from(self.smss)
    }

    /// §4.2 eq. 1: the curve, in segments, `t` seconds into the epoch.
    fn w_cubic(&self, t_s: f64) -> f64 {
        let d = t_s - self.k_s;
        CUBIC_C * d * d * d + self.w_max
    }

    /// Starts a congestion-avoidance epoch at `now_ns` from the current window (§4.2).
    fn start_epoch(&mut self, now_ns: u64) {
        let cwnd = self.segments(self.cwnd);
        self.epoch_start_ns = Some(now_ns);
        if self.w_max <= cwnd {
            // Above the last loss point (or none yet): the curve starts on its plateau.
            self.w_max = cwnd;
            self.k_s = 0.0;
        } else {
            // §4.2 eq. 2: K = cbrt((W_max - cwnd_epoch) / C).
            self.k_s = ((self.w_max - cwnd) / CUBIC_C).cbrt();
        }
        // §4.3: W_est starts at cwnd_epoch.
        self.w_est = cwnd;
        self.carry_bytes = 0.0;
    }

    /// §4.6 (and §4.7's fast convergence): a congestion event with `flight_bytes` in flight.
    fn reduce(&mut self, flight_bytes: u32) {
        let cwnd = self.segments(self.cwnd);
        self.w_max = if cwnd < self.w_max {
            // §4.7: the available bandwidth shrank; release some to new flows.
            cwnd * (1.0 + CUBIC_BETA) / 2.0
        } else {
            cwnd
        };
        // §4.6: ssthresh = flight_size * beta (at least 2 SMSS, RFC 5681).
        let reduced = (f64::from(flight_bytes.max(self.smss)) * CUBIC_BETA) as u32;
        self.ssthresh = reduced.max(ssthresh_floor(self.smss));
        self.epoch_start_ns = None;
        self.carry_bytes = 0.0;
    }
}

impl CongestionControl for Cubic {
    fn handle_ack(&mut self, ack: &AckSample) {
        if let Some(rtt) = ack.rtt_ns.filter(|&rtt| rtt > 0) {
            self.rtt_min_ns = Some(self.rtt_min_ns.map_or(rtt, |min| min.min(rtt)));
        }
        if self.in_recovery || !ack.cwnd_limited || ack.acked_bytes == 0 {
            return;
        }
        let cwnd = u64::from(self.cwnd);
        if self.cwnd < self.ssthresh {
            // RFC 3465 §2.2, as NewReno, up to ssthresh.
            self.cwnd = slow_start_window(self.cwnd, self.ssthresh, self.smss, ack.acked_bytes);
            return;
        }
        let epoch_start = match self.epoch_start_ns {
            Some(start) => start,
            None => {
                self.start_epoch(ack.now_ns);
                ack.now_ns
            }
        };
        let rtt_s = self.rtt_min_ns.unwrap_or(0) as f64 / 1e9;
        let t_s = (ack.now_ns.saturating_sub(epoch_start) as f64 / 1e9).min(EPOCH_SECONDS_MAX);
        let cwnd_seg = self.segments(self.cwnd);
        let acked_seg = f64::from(ack.acked_bytes) / f64::from(self.smss);
        // §4.3: W_est grows by alpha_cubic segments per window of acknowledged segments.
        self.w_est += CUBIC_ALPHA * acked_seg / cwnd_seg;
        let cubic_now = self.w_cubic(t_s);
        let target_seg = if cubic_now < self.w_est {
            // §4.3: the Reno-friendly region; cwnd follows W_est.
            self.w_est
        } else {
            // §4.2: the target one RTT ahead, bounded to [cwnd, 1.5 cwnd].
            self.w_cubic((t_s + rtt_s).min(EPOCH_SECONDS_MAX))
                .clamp(cwnd_seg, 1.5 * cwnd_seg)
        };
        // §4.2 and §4.4/§4.5: cwnd += (target - cwnd) / cwnd per acknowledged segment, counted
        // in bytes so stretch or delayed ACKs earn what their bytes earned.
        let growth_bytes =
            ((target_seg - cwnd_seg).max(0.0) / cwnd_seg) * f64::from(ack.acked_bytes);
        self.carry_bytes += growth_bytes.min(f64::from(CWND_BYTES_MAX));
        if self.carry_bytes >= 1.0 {
            let whole = self.carry_bytes.floor();
            self.carry_bytes -= whole;
            self.cwnd = clamp_cwnd(cwnd.saturating_add(whole as u64), self.smss);
        }
    }

    fn handle_recovery_start(&mut self, _now_ns: u64, flight_bytes: u32, recover_seq: u32) {
        self.reduce(flight_bytes);
        // §4.6: cwnd = ssthresh (the connection's pipe handles recovery's sending).
        self.cwnd = clamp_cwnd(u64::from(self.ssthresh), self.smss);
        self.in_recovery = true;
        self.ecn.arm(recover_seq);
    }

    fn handle_recovery_end(&mut self, _now_ns: u64, flight_bytes: u32) {
        if !self.in_recovery {
            return;
        }
        self.in_recovery = false;
        self.cwnd = recovery_exit_window(flight_bytes, self.ssthresh, self.smss);
    }

    fn handle_rto(&mut self, _now_ns: u64, flight_bytes: u32) {
        // §4.8: reduce as for a loss, then restart from one segment in slow start; the next
        // congestion-avoidance epoch starts from the window slow start reaches.
        self.reduce(flight_bytes);
        self.cwnd = self.smss;
        self.in_recovery = false;
        self.ecn = EcnGate::default();
    }

    fn handle_ecn_echo(&mut self, _now_ns: u64, snd_una: u32, snd_nxt: u32, flight: u32) -> bool {
        if self.in_recovery || !self.ecn.admit(snd_una, snd_nxt) {
            return false;
        }
        // §4.6: ECN-Echo is a congestion event like a loss, without a retransmission.
        self.reduce(flight);
        self.cwnd = clamp_cwnd(u64::from(self.ssthresh), self.smss);
        true
    }

    fn handle_idle_restart(&mut self, _now_ns: u64) {
        // RFC 5681 §4.1, and a new epoch: the idle time is not growth time.
        self.cwnd = restart_window(self.cwnd, self.smss);
        self.epoch_start_ns = None;
    }

    fn set_smss(&mut self, smss: u32) -> Result<(), CcError> {
        let old = f64::from(self.smss);
        self.smss = check_smss(smss)?;
        // Segment counts follow the new segment size; byte values stay.
        let scale = old / f64::from(self.smss);
        self.w_max *= scale;
        self.w_est *= scale;
        self.cwnd = clamp_cwnd(u64::from(self.cwnd), self.smss);
        Ok(())
    }

    fn cwnd_bytes(&self) -> u32 {
        self.cwnd
    }
    fn ssthresh_bytes(&self) -> u32 {
        self.ssthresh
    }
    fn smss(&self) -> u32 {
        self.smss
    }
    fn in_slow_start(&self) -> bool {
        self.cwnd < self.ssthresh
    }
    fn in_recovery(&self) -> bool {
        self.in_recovery
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MSS: u32 = 1000;

    fn ack(now_ns: u64, acked_bytes: u32, rtt_ns: u64) -> AckSample {
        AckSample {
            now_ns,
            acked_bytes,
            snd_una: 0,
            snd_nxt: 0,
            flight_bytes: 0,
            rtt_ns: Some(rtt_ns),
            cwnd_limited: true,
        }
    }

    /// A controller in congestion avoidance right after a loss at `cwnd_seg` segments.
    fn after_loss_at(cwnd_seg: u32) -> Cubic {
        let mut cc = Cubic::new(MSS).unwrap();
        cc.cwnd = cwnd_seg * MSS;
        cc.handle_recovery_start(0, cwnd_seg * MSS, 0);
        cc.handle_recovery_end(0, cwnd_seg * MSS);
        cc
    }

    /// One RTT of full-window ACKs, one per segment.
    fn one_round(cc: &mut Cubic, now_ns: u64, rtt_ns: u64) {
        let segments = cc.cwnd_bytes() / MSS;
        for _ in 0..segments {
            cc.handle_ack(&ack(now_ns, MSS, rtt_ns));
        }
    }

    #[test]
    fn a_loss_multiplies_by_beta_and_remembers_w_max() {
        let cc = after_loss_at(100);
        assert_eq!(cc.w_max_segments(), 100.0);
        assert_eq!(cc.ssthresh_bytes(), 70 * MSS);
        assert_eq!(cc.cwnd_bytes(), 70 * MSS);
    }

    #[test]
    fn k_is_the_cube_root_of_the_gap_over_c() {
        let mut cc = after_loss_at(100);
        cc.handle_ack(&ack(1_000_000, MSS, 1_000_000));
        // K = cbrt((100 - 70) / 0.4) = cbrt(75) = 4.2172 s.
        assert!(
            (cc.k_seconds() - 75f64.cbrt()).abs() < 1e-9,
            "{}",
            cc.k_seconds()
        );
    }

    #[test]
    fn fast_convergence_lowers_w_max_when_the_loss_comes_early() {
        let mut cc = after_loss_at(100);
        cc.cwnd = 90 * MSS;
        cc.handle_recovery_start(0, 90 * MSS, 0);
        // §4.7: W_max = 90 * (1 + 0.7) / 2 = 76.5.
        assert!((cc.w_max_segments() - 76.5).abs() < 1e-9);
    }

    #[test]
    fn the_curve_is_concave_to_w_max_then_convex() {
        // A long RTT (100 ms) so the cubic region, not the Reno-friendly one, rules.
        let rtt = 100_000_000;
        let mut cc = after_loss_at(100);
        let mut now = 0;
        let mut windows = Vec::new();
        while now < 8_000_000_000 {
            one_round(&mut cc, now, rtt);
            windows.push((now, cc.cwnd_bytes() / MSS));
            now += rtt;
        }
        let at = |s: f64| {
            windows
                .iter()
                .find(|(t, _)| *t as f64 / 1e9 >= s)
                .unwrap()
                .1
        };
        // Near K (4.2 s) the window sits just under W_max; it is past W_max well after.
        assert!((95..=101).contains(&at(4.2)), "at K: {}", at(4.2));
        assert!(at(2.0) > 80 && at(2.0) < 100, "concave part: {}", at(2.0));
        assert!(at(7.5) > 105, "convex part: {}", at(7.5));
        // Growth slows approaching W_max (concave), then speeds up (convex).
        let growth = |a: f64, b: f64| at(b) as i64 - at(a) as i64;
        assert!(growth(0.5, 1.5) > growth(3.5, 4.5));
        assert!(growth(6.5, 7.5) > growth(3.5, 4.5));
    }

    #[test]
    fn at_a_short_rtt_the_reno_friendly_estimate_rules() {
        // 100 µs rounds: 100 rounds are 10 ms, where the cubic curve has barely moved from
        // 70 segments; W_est gains alpha (0.53) segments a round, so about 52 segments.
        let rtt = 100_000;
        let mut cc = after_loss_at(100);
        let mut now = 0;
        for _ in 0..100 {
            one_round(&mut cc, now, rtt);
            now += rtt;
        }
        let cwnd = cc.cwnd_bytes() / MSS;
        assert!(
            cwnd >= 100,
            "Reno-friendly growth should have reached W_max: {cwnd}"
        );
    }

    #[test]
    fn an_rto_restarts_from_one_segment_below_the_reduced_ssthresh() {
        let mut cc = after_loss_at(100);
        cc.handle_rto(0, 70 * MSS);
        assert_eq!(cc.cwnd_bytes(), MSS);
        assert_eq!(cc.ssthresh_bytes(), 49 * MSS);
        assert!(cc.in_slow_start());
    }

    #[test]
    fn an_app_limited_sender_does_not_grow() {
        let mut cc = after_loss_at(100);
        let before = cc.cwnd_bytes();
        let mut sample = ack(5_000_000_000, MSS, 1_000_000);
        sample.cwnd_limited = false;
        for _ in 0..1000 {
            cc.handle_ack(&sample);
        }
        assert_eq!(cc.cwnd_bytes(), before);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Ack {
            dt_ns: u64,
            bytes: u32,
            rtt_ns: Option<u64>,
            limited: bool,
        },
        Loss {
            flight: u32,
        },
        RecoveryEnd {
            flight: u32,
        },
        Rto {
            flight: u32,
        },
        Ecn {
            una: u32,
            nxt: u32,
            flight: u32,
        },
        Idle,
        Smss(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (any::<u64>(), any::<u32>(), proptest::option::of(any::<u64>()), any::<bool>())
                .prop_map(|(dt_ns, bytes, rtt_ns, limited)| Op::Ack {
                    dt_ns: dt_ns % 10_000_000_000, bytes, rtt_ns, limited
                }),
            1 => any::<u32>().prop_map(|flight| Op::Loss { flight }),
            1 => any::<u32>().prop_map(|flight| Op::RecoveryEnd { flight }),
            1 => any::<u32>().prop_map(|flight| Op::Rto { flight }),
            1 => (any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(una, nxt, flight)| Op::Ecn { una, nxt, flight }),
            1 => Just(Op::Idle),
            1 => any::<u32>().prop_map(Op::Smss),
        ]
    }

    proptest! {
        /// Whatever a peer's ACKs and the clock do: cwnd stays in [SMSS, CWND_BYTES_MAX],
        /// ssthresh at least 2 SMSS after any congestion event, and nothing panics.
        #[test]
        fn invariants_hold_for_any_event_sequence(ops in proptest::collection::vec(op(), 1..300)) {
            let mut cc = Cubic::new(1460).unwrap();
            let mut now: u64 = 0;
            let mut reduced = false;
            for op in ops {
                match op {
                    Op::Ack { dt_ns, bytes, rtt_ns, limited } => {
                        now = now.saturating_add(dt_ns);
                        cc.handle_ack(&AckSample {
                            now_ns: now, acked_bytes: bytes, snd_una: 0, snd_nxt: 0,
                            flight_bytes: 0, rtt_ns, cwnd_limited: limited,
                        });
                    }
                    Op::Loss { flight } => { cc.handle_recovery_start(now, flight, 0); reduced = true; }
                    Op::RecoveryEnd { flight } => cc.handle_recovery_end(now, flight),
                    Op::Rto { flight } => { cc.handle_rto(now, flight); reduced = true; }
                    Op::Ecn { una, nxt, flight } => {
                        if cc.handle_ecn_echo(now, una, nxt, flight) { reduced = true; }
                    }
                    Op::Idle => cc.handle_idle_restart(now),
                    Op::Smss(smss) => { let _ = cc.set_smss(smss); reduced = false; }
                }
                prop_assert!(cc.cwnd_bytes() >= cc.smss(), "cwnd {} below smss {}", cc.cwnd_bytes(), cc.smss());
                prop_assert!(cc.cwnd_bytes() <= CWND_BYTES_MAX);
                prop_assert!(cc.w_max_segments().is_finite());
                if reduced {
                    prop_assert!(cc.ssthresh_bytes() >= ssthresh_floor(cc.smss()));
                }
            }
        }
    }
}
