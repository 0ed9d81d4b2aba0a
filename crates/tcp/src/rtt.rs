//! The retransmission timer's estimator (RFC 6298), in integer nanoseconds.
//!
//! The estimator keeps SRTT and RTTVAR as plain `u64` nanoseconds and applies RFC 6298 §2.3's
//! updates with alpha = 1/8 and beta = 1/4 as integer divisions: at nanosecond resolution the
//! truncation loses under 8 ns a sample, far below any clock granularity, so the fixed-point
//! scaling of BSD and Linux (SRTT kept times 8, RTTVAR times 4) buys nothing here and was
//! rejected for readability. No floats: the core must behave identically on every target and
//! in the simulator.
//!
//! Samples come from the peer (an echoed timestamp can lie), so each is clamped to the
//! configured maximum RTO before use: a sample above it cannot be a real round trip, since the
//! timer would have fired first. With the maximum itself capped at [`RTO_CEILING_NS`], no
//! arithmetic below can overflow.
//!
//! Karn's rule (RFC 6298 §3) is the caller's: pass samples only from segments that were never
//! retransmitted, or from timestamps (RFC 7323 §4), which are unambiguous. RFC 7323 appendix G's
//! per-flight weighting of many timestamp samples is not done: every sample is weighted alike,
//! as Linux does; a caller that wants one sample per flight passes only one.
//!
//! Call order: [`RttEstimator::new`] once; then, in any order, [`RttEstimator::handle_sample`]
//! for each valid measurement and [`RttEstimator::handle_timeout`] each time the retransmission
//! timer fires; [`RttEstimator::rto_ns`] gives the value to arm the timer with.

use thiserror::Error;

/// One second in nanoseconds.
const SECOND_NS: u64 = 1_000_000_000;

/// RFC 6298 §2.1: the RTO before any sample, 1 second.
pub const RTO_INITIAL_NS_DEFAULT: u64 = SECOND_NS;

/// The default floor on the RTO: 200 ms, Linux's `TCP_RTO_MIN`.
///
/// RFC 6298 §2.4 says 1 s, which costs a full second of stall per tail loss on paths whose RTT
/// is microseconds; data-centre stacks use 1-5 ms, but that fires spuriously against peers
/// that delay ACKs by 40-200 ms (RFC 9293 §3.8.6.3 allows up to 500 ms). 200 ms is the value
/// every peer on the Internet is already tuned against; a data-centre deployment that controls
/// both ends lowers it through [`RttConfig::rto_min_ns`].
pub const RTO_MIN_NS_DEFAULT: u64 = 200_000_000;

/// The default cap on the RTO, and the smallest cap allowed: RFC 6298 (2.5) permits a maximum
/// only if it is at least 60 s.
pub const RTO_MAX_NS_DEFAULT: u64 = 60 * SECOND_NS;

/// The largest cap accepted: one day. It keeps `4 * RTTVAR` and the backoff doubling far from
/// `u64` overflow.
pub const RTO_CEILING_NS: u64 = 86_400 * SECOND_NS;

/// The default clock granularity G: 1 µs, the resolution of the engine's clock readings.
pub const GRANULARITY_NS_DEFAULT: u64 = 1_000;

/// RFC 6298 §2's K.
const K: u64 = 4;

/// A refused [`RttConfig`].
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RttError {
    /// `rto_max_ns` is below RFC 6298 (2.5)'s 60 s or above [`RTO_CEILING_NS`]; choose a cap
    /// inside that range.
    #[error("RTO maximum {0} ns is outside [60 s, 1 day]")]
    MaxOutOfRange(u64),
    /// `rto_min_ns` is zero or above `rto_max_ns`; choose a floor between 1 ns and the cap.
    #[error("RTO minimum {0} ns is zero or above the maximum")]
    MinOutOfRange(u64),
    /// `rto_initial_ns` is outside `[rto_min_ns, rto_max_ns]`; choose one inside.
    #[error("initial RTO {0} ns is outside [minimum, maximum]")]
    InitialOutOfRange(u64),
    /// `granularity_ns` is above `rto_max_ns`; it must be a clock's tick, not a timeout.
    #[error("clock granularity {0} ns is above the maximum RTO")]
    GranularityOutOfRange(u64),
}

/// The estimator's tunables, checked by [`RttEstimator::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttConfig {
    /// The floor on the RTO (RFC 6298 (2.4)); see [`RTO_MIN_NS_DEFAULT`] for the default's reason.
    pub rto_min_ns: u64,
    /// The cap on the RTO, also after backoff (RFC 6298 (2.5), §5.5).
    pub rto_max_ns: u64,
    /// The RTO before the first sample (RFC 6298 (2.1)).
    pub rto_initial_ns: u64,
    /// The clock granularity G (RFC 6298 §2).
    pub granularity_ns: u64,
}

impl Default for RttConfig {
    fn default() -> Self {
        RttConfig {
            rto_min_ns: RTO_MIN_NS_DEFAULT,
            rto_max_ns: RTO_MAX_NS_DEFAULT,
            rto_initial_ns: RTO_INITIAL_NS_DEFAULT,
            granularity_ns: GRANULARITY_NS_DEFAULT,
        }
    }
}

/// SRTT, RTTVAR and the current (possibly backed-off) RTO of one connection.
///
/// Call order: `new`, then `handle_sample` per valid sample (Karn's rule is the caller's, see
/// the module doc) and `handle_timeout` per expiry, in any interleaving; `rto_ns` at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttEstimator {
    config: RttConfig,
    /// `None` until the first sample (RFC 6298 (2.2)).
    srtt_ns: Option<u64>,
    rttvar_ns: u64,
    /// The RTO computed from the estimates, before backoff.
    rto_base_ns: u64,
    /// The RTO in force, doubled on each timeout.
    rto_ns: u64,
    backoff_count: u32,
}

impl RttEstimator {
    /// An estimator with no sample yet, its RTO the configured initial one (RFC 6298 (2.1)).
    pub fn new(config: RttConfig) -> Result<Self, RttError> {
        if !(RTO_MAX_NS_DEFAULT..=RTO_CEILING_NS).contains(&config.rto_max_ns) {
            return Err(RttError::MaxOutOfRange(config.rto_max_ns));
        }
        if config.rto_min_ns == 0 || config.rto_min_ns > config.rto_max_ns {
            return Err(RttError::MinOutOfRange(config.rto_min_ns));
        }
        if !(config.rto_min_ns..=config.rto_max_ns).contains(&config.rto_initial_ns) {
            return Err(RttError::InitialOutOfRange(config.rto_initial_ns));
        }
        if config.granularity_ns > config.rto_max_ns {
            return Err(RttError::GranularityOutOfRange(config.granularity_ns));
        }
        Ok(RttEstimator {
            config,
            srtt_ns: None,
            rttvar_ns: 0,
            rto_base_ns: config.rto_initial_ns,
            rto_ns: config.rto_initial_ns,
            backoff_count: 0,
        })
    }

    /// Takes one round-trip measurement `rtt_ns`, which must obey Karn's rule (module doc).
    /// It clamps the sample to the maximum RTO, updates SRTT and RTTVAR, recomputes the RTO and
    /// clears any backoff (RFC 6298 §5.7's note: a new sample ends the backoff).
    pub fn handle_sample(&mut self, rtt_ns: u64) {
        // A lying echoed timestamp cannot push the estimates past the cap (module doc).
        let r = rtt_ns.min(self.config.rto_max_ns);
        match self.srtt_ns {
            // RFC 6298 (2.2): SRTT <- R, RTTVAR <- R/2.
            None => {
                self.srtt_ns = Some(r);
                self.rttvar_ns = r / 2;
            }
            // RFC 6298 (2.3): RTTVAR <- 3/4 RTTVAR + 1/4 |SRTT - R'| first, with the old SRTT,
            // then SRTT <- 7/8 SRTT + 1/8 R'.
            Some(srtt) => {
                self.rttvar_ns = (3 * self.rttvar_ns + srtt.abs_diff(r)) / 4;
                self.srtt_ns = Some((7 * srtt + r) / 8);
            }
        }
        let srtt = self.srtt_ns.unwrap_or(r);
        // RFC 6298 (2.2)/(2.3): RTO <- SRTT + max(G, K*RTTVAR); (2.4) floor; (2.5) cap.
        let rto = srtt + self.config.granularity_ns.max(K * self.rttvar_ns);
        self.rto_base_ns = rto.clamp(self.config.rto_min_ns, self.config.rto_max_ns);
        self.rto_ns = self.rto_base_ns;
        self.backoff_count = 0;
    }

    /// The sample between a segment sent at `sent_ns` and its ACK at `now_ns`, passed to
    /// [`RttEstimator::handle_sample`]; a send time after `now_ns` counts as zero.
    pub fn handle_ack_timing(&mut self, now_ns: u64, sent_ns: u64) {
        self.handle_sample(now_ns.saturating_sub(sent_ns));
    }

    /// The peer acknowledged data sent after the timeouts began (the caller knows from an ACK
    /// or SACK above what was outstanding then, or from a timestamp echo): the backoff ends
    /// and the RTO returns to what the estimates give. RFC 6298 §5 collapses the backoff once
    /// new data is sent and acknowledged; SRTT and RTTVAR are left alone, because that delay
    /// may include the receiver's wait for a hole to fill (RFC 7323 §4.3), no round trip.
    pub fn handle_backoff_end(&mut self) {
        self.rto_ns = self.rto_base_ns;
        self.backoff_count = 0;
    }

    /// The retransmission timer fired: RFC 6298 (5.5), RTO <- RTO * 2, capped at the maximum.
    pub fn handle_timeout(&mut self) {
        self.rto_ns = self.rto_ns.saturating_mul(2).min(self.config.rto_max_ns);
        self.backoff_count = self.backoff_count.saturating_add(1);
    }

    /// The RTO to arm the retransmission timer with, always within `[rto_min_ns, rto_max_ns]`.
    #[must_use]
    pub fn rto_ns(&self) -> u64 {
        self.rto_ns
    }

    /// The RTO the estimates give, before any backoff.
    #[must_use]
    pub fn rto_base_ns(&self) -> u64 {
        self.rto_base_ns
    }

    /// The smoothed round-trip time, `None` before the first sample.
    #[must_use]
    pub fn srtt_ns(&self) -> Option<u64> {
        self.srtt_ns
    }

    /// The round-trip time variation (zero before the first sample).
    #[must_use]
    pub fn rttvar_ns(&self) -> u64 {
        self.rttvar_ns
    }

    /// How many timeouts have doubled the RTO since the last sample.
    #[must_use]
    pub fn backoff_count(&self) -> u32 {
        self.backoff_count
    }

    /// The configuration this estimator was built with.
    #[must_use]
    pub fn config(&self) -> RttConfig {
        self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn dc() -> RttEstimator {
        RttEstimator::new(RttConfig {
            rto_min_ns: MS,
            ..RttConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn initial_and_first_sample() {
        let mut e = RttEstimator::new(RttConfig::default()).unwrap();
        assert_eq!(e.rto_ns(), SECOND_NS);
        assert_eq!(e.srtt_ns(), None);
        // R = 100 ms: SRTT 100, RTTVAR 50, RTO = 100 + 4*50 = 300 ms.
        e.handle_sample(100 * MS);
        assert_eq!(e.srtt_ns(), Some(100 * MS));
        assert_eq!(e.rttvar_ns(), 50 * MS);
        assert_eq!(e.rto_ns(), 300 * MS);
    }

    #[test]
    fn hand_computed_sequence() {
        let mut e = dc();
        e.handle_sample(8 * MS); // SRTT 8, RTTVAR 4, RTO 8 + 16 = 24.
        assert_eq!(e.rto_ns(), 24 * MS);
        e.handle_sample(16 * MS); // RTTVAR (12 + 8)/4 = 5, SRTT (56 + 16)/8 = 9, RTO 29.
        assert_eq!((e.srtt_ns(), e.rttvar_ns()), (Some(9 * MS), 5 * MS));
        assert_eq!(e.rto_ns(), 29 * MS);
        e.handle_sample(MS); // RTTVAR (15 + 8)/4 = 5.75, SRTT (63 + 1)/8 = 8, RTO 31.
        assert_eq!((e.srtt_ns(), e.rttvar_ns()), (Some(8 * MS), 5_750_000));
        assert_eq!(e.rto_ns(), 31 * MS);
    }

    #[test]
    fn backoff_ends_without_touching_the_estimates() {
        let mut e = RttEstimator::new(RttConfig::default()).unwrap();
        e.handle_sample(300 * MS); // RTO 300 + 600 = 900 ms.
        e.handle_timeout();
        e.handle_timeout();
        assert_eq!((e.rto_ns(), e.backoff_count()), (3_600 * MS, 2));
        e.handle_backoff_end();
        assert_eq!((e.rto_ns(), e.backoff_count()), (900 * MS, 0));
        assert_eq!((e.srtt_ns(), e.rttvar_ns()), (Some(300 * MS), 150 * MS));
    }

    #[test]
    fn floor_granularity_and_backoff() {
        let mut e = RttEstimator::new(RttConfig::default()).unwrap();
        e.handle_sample(10 * MS); // 10 + 20 = 30 ms, raised to the 200 ms floor.
        assert_eq!(e.rto_ns(), 200 * MS);
        e.handle_timeout();
        e.handle_timeout();
        assert_eq!((e.rto_ns(), e.backoff_count()), (800 * MS, 2));
        for _ in 0..100 {
            e.handle_timeout();
        }
        assert_eq!(e.rto_ns(), 60 * SECOND_NS);
        e.handle_sample(10 * MS);
        assert_eq!((e.rto_ns(), e.backoff_count()), (200 * MS, 0));
        // Zero variance: the granularity term keeps RTO above SRTT.
        let mut g = RttEstimator::new(RttConfig {
            rto_min_ns: 1,
            granularity_ns: 7,
            ..RttConfig::default()
        })
        .unwrap();
        g.handle_sample(0);
        assert_eq!(g.rto_ns(), 7);
    }

    #[test]
    fn refuses_bad_configs() {
        let d = RttConfig::default();
        let max = |rto_max_ns| RttConfig { rto_max_ns, ..d };
        assert_eq!(
            RttEstimator::new(max(SECOND_NS)),
            Err(RttError::MaxOutOfRange(SECOND_NS))
        );
        let min0 = RttConfig { rto_min_ns: 0, ..d };
        assert_eq!(RttEstimator::new(min0), Err(RttError::MinOutOfRange(0)));
        let init = RttConfig {
            rto_initial_ns: 1,
            ..d
        };
        assert_eq!(RttEstimator::new(init), Err(RttError::InitialOutOfRange(1)));
    }

    #[test]
    fn absurd_samples_clamp() {
        let mut e = dc();
        e.handle_sample(u64::MAX);
        assert_eq!(e.rto_ns(), 60 * SECOND_NS);
        e.handle_ack_timing(5, 10);
        assert!(e.rto_ns() >= MS);
    }

    proptest! {
        #[test]
        fn rto_within_bounds(
            min in 1u64..=RTO_MAX_NS_DEFAULT,
            max in RTO_MAX_NS_DEFAULT..=RTO_CEILING_NS,
            g in 0u64..SECOND_NS,
            ops in proptest::collection::vec(proptest::option::of(any::<u64>()), 0..64),
        ) {
            let mut e = RttEstimator::new(RttConfig {
                rto_min_ns: min,
                rto_max_ns: max,
                rto_initial_ns: min,
                granularity_ns: g,
            }).unwrap();
            for op in ops {
                match op {
                    Some(s) => e.handle_sample(s),
                    None => e.handle_timeout(),
                }
                prop_assert!((min..=max).contains(&e.rto_ns()));
                prop_assert!(e.rto_ns() >= e.rto_base_ns());
                prop_assert!(e.srtt_ns().unwrap_or(0) <= max);
            }
        }
    }
}
