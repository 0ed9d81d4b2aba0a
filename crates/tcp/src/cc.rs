//! Congestion control behind one trait, chosen per connection: NewReno (RFC 5681 with RFC 6582's
//! window handling) and CUBIC (RFC 9438) with HyStart++ (RFC 9406) in its slow start.
//!
//! Status: NewReno and CUBIC are built, and CUBIC's initial slow start runs HyStart++
//! ([`hystart`]; NewReno's does not). HyStart++ decides on rounds with 8 RTT samples: the
//! connection gives one on every ACK that advances `snd_una`, from its timed segment or from
//! the ACK's timestamp echo (whole milliseconds, so on sub-millisecond paths most ACKs bring
//! none; there the RFC's 4 ms threshold could not be reached anyway, see [`hystart`]).
//!
//! The connection owns sequence numbers, the SACK scoreboard, the retransmission timer and the
//! decision of *when* a congestion event happened; a controller owns only the two numbers the
//! sender obeys, `cwnd` and `ssthresh`, and the state it needs to move them. That split keeps each
//! controller a small pure function of events, so the same code runs in the engine, the
//! simulator and a fuzzer, and a hand-computed sequence from an RFC's formula is a unit test.
//!
//! Dispatch is static: [`Congestion`] is an enum over the algorithms and implements
//! [`CongestionControl`] by matching. The alternative, a `Box<dyn CongestionControl>` per
//! connection, was rejected: it allocates when a connection is created (the data path allocates
//! nothing after start-up), puts an indirect call on every ACK, and makes the connection table's
//! entries unsized. The enum is as large as its largest variant (CUBIC, 112 bytes, 24 of them
//! HyStart++'s), which is a fair price for a table sized once at start-up. Adding an algorithm
//! means adding a variant.
//!
//! # Call order (what the connection does)
//! 1. At connection set-up, [`Congestion::new`] with the negotiated SMSS; the initial window is
//!    RFC 6928's. When the MSS changes (PMTU discovery), [`CongestionControl::set_smss`].
//! 2. On every ACK that advances `snd_una`, [`CongestionControl::handle_ack`] with an
//!    [`AckSample`]: the bytes newly acknowledged *cumulatively* (we take RFC 5681's byte
//!    counting, not RFC 6675's variant that also counts newly SACKed bytes: a peer's SACK blocks
//!    are advisory and may be reneged, so growth is paid only for bytes it can no longer take
//!    back), the new `snd_una` and the current `snd_nxt` (HyStart++ needs them to find the end of
//!    a round), whether the sender was cwnd-limited (RFC 7661: a window the application did not
//!    fill is not grown), an RTT sample if the ACK yielded one, and the flight size.
//! 3. When fast retransmit starts loss recovery (RFC 5681 §3.2 step 2, RFC 6582 §3.2 step 2),
//!    [`CongestionControl::handle_recovery_start`] with the flight size and `recover` (`snd_nxt`
//!    at that moment). While in recovery the connection still calls `handle_ack`; controllers do
//!    not grow the window then.
//! 4. On the full ACK that ends recovery (RFC 6582 §3.2 step 3, an ACK covering `recover`),
//!    [`CongestionControl::handle_recovery_end`] with the flight size after that ACK, *instead
//!    of* `handle_ack` for that ACK.
//! 5. On a retransmission timeout, [`CongestionControl::handle_rto`] (RFC 5681 §3.1 eq. 4).
//! 6. On an ACK carrying ECN-Echo, [`CongestionControl::handle_ecn_echo`] before `handle_ack`;
//!    the controller reacts at most once per window of data (RFC 3168 §6.1.2) and says whether
//!    it did, so the connection knows to set CWR on its next segment.
//! 7. When sending after an idle period longer than the RTO (RFC 5681 §4.1),
//!    [`CongestionControl::handle_idle_restart`].
//!
//! # Who inflates the window in fast recovery
//! The controller does not. RFC 5681 §3.2's artificial inflation (+SMSS per duplicate ACK) and
//! RFC 6582 §3.2 step 4's partial-ACK deflation are the *connection's* job: during recovery the
//! controller's cwnd stays at the reduced window, and the connection sends while RFC 6675's
//! `pipe` (from the SACK scoreboard, or for a non-SACK peer `flight - dupacks * SMSS`, which is
//! the same inflation spelled as a smaller pipe) is below it. Keeping inflation out of `cwnd`
//! means `cwnd` always means "the window the algorithm wants", CUBIC's W_max and K are computed
//! from a window that was never inflated, and only one place counts duplicate ACKs.
//!
//! # Invariants every controller keeps, whatever the inputs
//! `SMSS <= cwnd <= CWND_BYTES_MAX`; after any congestion event `ssthresh >= 2 * SMSS`; no
//! arithmetic overflows (sums saturate, times are differenced with `saturating_sub`, so a clock
//! that goes backwards reads as no time elapsed); no NaN or infinity from CUBIC's floating point
//! reaches `cwnd`. The property tests at the bottom drive random and absurd event sequences
//! against these.

mod cubic;
pub mod hystart;
mod newreno;

pub use cubic::Cubic;
pub use newreno::NewReno;

use core::fmt;
use core::str::FromStr;

/// The largest congestion window in bytes: RFC 7323 §2.3's largest window (2^30 bytes), since a
/// window the peer can never advertise is never used. Every sum is clamped to it.
pub const CWND_BYTES_MAX: u32 = 1 << 30;

/// The smallest SMSS accepted: below this the headers dwarf the payload and the window
/// arithmetic (multiples of SMSS) loses meaning. IPv4's minimum reassembly size less headers is
/// larger; 64 leaves room for tests and odd links.
pub const SMSS_BYTES_MIN: u32 = 64;

/// The largest SMSS accepted: an IPv4/IPv6 payload cannot exceed 65,535 bytes without jumbograms.
pub const SMSS_BYTES_MAX: u32 = 65_535;

/// Appropriate byte counting's limit L in SMSS per ACK during slow start (RFC 3465 §2.3: L = 2).
pub const ABC_LIMIT_SMSS: u32 = 2;

/// The errors of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CcError {
    /// The name is not one of the algorithms; the caller (a CLI or config parser) should show
    /// the message, which lists the choices.
    #[error("unknown congestion control; the choices are: newreno, cubic")]
    UnknownKind,
    /// The SMSS is outside `SMSS_BYTES_MIN..=SMSS_BYTES_MAX`; the caller should clamp the
    /// negotiated MSS or refuse the connection.
    #[error("SMSS of {smss} bytes is outside {SMSS_BYTES_MIN}..={SMSS_BYTES_MAX}")]
    SmssOutOfRange {
        /// The SMSS that was given.
        smss: u32,
    },
}

/// Which algorithm a connection uses; parsed from the CLI as `newreno` or `cubic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionKind {
    /// RFC 5681 + RFC 6582 NewReno with RFC 3465 byte counting.
    NewReno,
    /// RFC 9438 CUBIC (the default, as in Linux: its growth does not depend on the RTT).
    #[default]
    Cubic,
}

impl CongestionKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [CongestionKind; 2] = [CongestionKind::NewReno, CongestionKind::Cubic];

    /// The name the CLI accepts and prints.
    pub const fn name(self) -> &'static str {
        match self {
            CongestionKind::NewReno => "newreno",
            CongestionKind::Cubic => "cubic",
        }
    }
}

impl fmt::Display for CongestionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CongestionKind {
    type Err = CcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CongestionKind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(s))
            .ok_or(CcError::UnknownKind)
    }
}

/// What one ACK that advanced `snd_una` tells the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckSample {
    /// The time of the ACK's arrival, from the engine's clock.
    pub now_ns: u64,
    /// Bytes newly acknowledged cumulatively by this ACK (not SACKed bytes; see the module doc).
    pub acked_bytes: u32,
    /// `snd_una` after this ACK.
    pub snd_una: u32,
    /// `snd_nxt` when this ACK is processed (HyStart++'s round ends when `snd_una` passes the
    /// `snd_nxt` recorded at the round's start).
    pub snd_nxt: u32,
    /// Bytes in flight after this ACK (RFC 5681's FlightSize).
    pub flight_bytes: u32,
    /// An RTT sample from this ACK (RFC 6298 / RFC 7323 rules: not from a retransmitted segment
    /// unless timestamps disambiguate), if any.
    pub rtt_ns: Option<u64>,
    /// RFC 7661's test: `true` if since the previous ACK the sender had data it could not send
    /// because of cwnd (flight reached cwnd). When `false` the window is not grown.
    pub cwnd_limited: bool,
}

/// A congestion controller, driven by the connection in the order the module doc gives.
///
/// No method panics, allocates or reads a clock, whatever the arguments.
pub trait CongestionControl {
    /// An ACK advanced `snd_una` (call order step 2).
    fn handle_ack(&mut self, ack: &AckSample);
    /// Fast retransmit started loss recovery (RFC 5681 §3.2 step 2); `recover_seq` is
    /// `snd_nxt` now (RFC 6582 §3.2 step 2).
    fn handle_recovery_start(&mut self, now_ns: u64, flight_bytes: u32, recover_seq: u32);
    /// The full ACK (covering `recover`) ended recovery (RFC 6582 §3.2 step 3).
    fn handle_recovery_end(&mut self, now_ns: u64, flight_bytes: u32);
    /// The retransmission timer expired (RFC 5681 §3.1 eq. 4 and the loss window).
    fn handle_rto(&mut self, now_ns: u64, flight_bytes: u32);
    /// An ACK carried ECN-Echo; returns `true` if the window was reduced (set CWR), `false` if
    /// this window already had its reduction (RFC 3168 §6.1.2).
    fn handle_ecn_echo(
        &mut self,
        now_ns: u64,
        snd_una: u32,
        snd_nxt: u32,
        flight_bytes: u32,
    ) -> bool;
    /// The sender is about to send after an idle period longer than the RTO (RFC 5681 §4.1).
    fn handle_idle_restart(&mut self, now_ns: u64);
    /// The SMSS changed; `cwnd` keeps its byte value but is clamped to at least one SMSS.
    fn set_smss(&mut self, smss: u32) -> Result<(), CcError>;
    /// The congestion window in bytes.
    fn cwnd_bytes(&self) -> u32;
    /// The slow-start threshold in bytes (`CWND_BYTES_MAX` until the first congestion event).
    fn ssthresh_bytes(&self) -> u32;
    /// The sender maximum segment size in bytes.
    fn smss(&self) -> u32;
    /// Whether the controller is in (any kind of) slow start.
    fn in_slow_start(&self) -> bool;
    /// Whether the controller is between `handle_recovery_start` and `handle_recovery_end`.
    fn in_recovery(&self) -> bool;
}

/// The per-connection controller: one of the algorithms, dispatched by `match`.
#[derive(Debug, Clone)]
pub enum Congestion {
    /// NewReno.
    NewReno(NewReno),
    /// CUBIC.
    Cubic(Cubic),
}

impl Congestion {
    /// A controller of `kind` for a connection whose SMSS is `smss` bytes.
    pub fn new(kind: CongestionKind, smss: u32) -> Result<Self, CcError> {
        Ok(match kind {
            CongestionKind::NewReno => Congestion::NewReno(NewReno::new(smss)?),
            CongestionKind::Cubic => Congestion::Cubic(Cubic::new(smss)?),
        })
    }

    /// Where HyStart++ is, for the controllers that run it (CUBIC); `None` for the others.
    pub fn hystart_phase(&self) -> Option<hystart::HyStartPhase> {
        match self {
            Congestion::NewReno(_) => None,
            Congestion::Cubic(cc) => Some(cc.hystart_phase()),
        }
    }

    /// Which algorithm this is.
    pub fn kind(&self) -> CongestionKind {
        match self {
            Congestion::NewReno(_) => CongestionKind::NewReno,
            Congestion::Cubic(_) => CongestionKind::Cubic,
        }
    }
}

/// Forwards a trait method to the variant.
macro_rules! dispatch {
    ($self:ident, $cc:ident => $body:expr) => {
        match $self {
            Congestion::NewReno($cc) => $body,
            Congestion::Cubic($cc) => $body,
        }
    };
}

impl CongestionControl for Congestion {
    fn handle_ack(&mut self, ack: &AckSample) {
        dispatch!(self, cc => cc.handle_ack(ack))
    }
    fn handle_recovery_start(&mut self, now_ns: u64, flight_bytes: u32, recover_seq: u32) {
        dispatch!(self, cc => cc.handle_recovery_start(now_ns, flight_bytes, recover_seq))
    }
    fn handle_recovery_end(&mut self, now_ns: u64, flight_bytes: u32) {
        dispatch!(self, cc => cc.handle_recovery_end(now_ns, flight_bytes))
    }
    fn handle_rto(&mut self, now_ns: u64, flight_bytes: u32) {
        dispatch!(self, cc => cc.handle_rto(now_ns, flight_bytes))
    }
    fn handle_ecn_echo(
        &mut self,
        now_ns: u64,
        snd_una: u32,
        snd_nxt: u32,
        flight_bytes: u32,
    ) -> bool {
        dispatch!(self, cc => cc.handle_ecn_echo(now_ns, snd_una, snd_nxt, flight_bytes))
    }
    fn handle_idle_restart(&mut self, now_ns: u64) {
        dispatch!(self, cc => cc.handle_idle_restart(now_ns))
    }
    fn set_smss(&mut self, smss: u32) -> Result<(), CcError> {
        dispatch!(self, cc => cc.set_smss(smss))
    }
    fn cwnd_bytes(&self) -> u32 {
        dispatch!(self, cc => cc.cwnd_bytes())
    }
    fn ssthresh_bytes(&self) -> u32 {
        dispatch!(self, cc => cc.ssthresh_bytes())
    }
    fn smss(&self) -> u32 {
        dispatch!(self, cc => cc.smss())
    }
    fn in_slow_start(&self) -> bool {
        dispatch!(self, cc => cc.in_slow_start())
    }
    fn in_recovery(&self) -> bool {
        dispatch!(self, cc => cc.in_recovery())
    }
}

/// Checks an SMSS against the accepted range.
pub(crate) fn check_smss(smss: u32) -> Result<u32, CcError> {
    if (SMSS_BYTES_MIN..=SMSS_BYTES_MAX).contains(&smss) {
        Ok(smss)
    } else {
        Err(CcError::SmssOutOfRange { smss })
    }
}

/// RFC 6928 §2's initial window: `min(10 * SMSS, max(2 * SMSS, 14600))` bytes.
pub const fn initial_window_bytes(smss: u32) -> u32 {
    let ten = smss.saturating_mul(10);
    let floor = {
        let two = smss.saturating_mul(2);
        if two > 14_600 {
            two
        } else {
            14_600
        }
    };
    if ten < floor {
        ten
    } else {
        floor
    }
}

/// Clamps a byte count to the window's range `[smss, CWND_BYTES_MAX]`.
pub(crate) fn clamp_cwnd(bytes: u64, smss: u32) -> u32 {
    // Both bounds fit u32 and smss <= CWND_BYTES_MAX, so the clamp cannot panic.
    bytes.clamp(u64::from(smss), u64::from(CWND_BYTES_MAX)) as u32
}

/// RFC 5681 eq. 4's floor on ssthresh after a congestion event: two segments.
pub(crate) fn ssthresh_floor(smss: u32) -> u32 {
    smss.saturating_mul(2).min(CWND_BYTES_MAX)
}

/// `a >= b` in sequence space (RFC 9293 §3.4, modulo 2^32). A local copy so this module does not
/// wait on `seq`; it should become `seq`'s comparison once that lands.
pub(crate) fn seq_ge(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// RFC 3168 §6.1.2's "at most once per window of data" for ECN-Echo, shared by the algorithms.
/// RFC 3465 §2.2 slow start, shared by every controller: `cwnd` grows by
/// `min(acked, L * SMSS)` (L = 2, §2.3) and stops at `ssthresh` without overshooting it on one
/// ACK (RFC 5681 §3.1).
pub(crate) fn slow_start_window(cwnd: u32, ssthresh: u32, smss: u32, acked: u32) -> u32 {
    let cwnd = u64::from(cwnd);
    let limit = u64::from(smss) * u64::from(ABC_LIMIT_SMSS);
    let grown = cwnd + u64::from(acked).min(limit);
    clamp_cwnd(grown.min(u64::from(ssthresh).max(cwnd)), smss)
}

/// RFC 6582 §3.2 step 3 option 1, shared by every controller: on the full ACK, cwnd =
/// min(ssthresh, max(FlightSize, SMSS) + SMSS), so leaving recovery with little in flight
/// does not release a burst.
pub(crate) fn recovery_exit_window(flight_bytes: u32, ssthresh: u32, smss: u32) -> u32 {
    let smss64 = u64::from(smss);
    let deflated = (u64::from(flight_bytes).max(smss64) + smss64).min(u64::from(ssthresh));
    clamp_cwnd(deflated, smss)
}

/// RFC 5681 §4.1, shared by every controller: after an idle period cwnd = min(RW, cwnd), RW
/// being the initial window.
pub(crate) fn restart_window(cwnd: u32, smss: u32) -> u32 {
    cwnd.min(initial_window_bytes(smss)).max(smss)
}

/// After a reduction (for ECN or for loss), ECE is ignored until `snd_una` passes the `snd_nxt`
/// recorded at the reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct EcnGate {
    /// `snd_nxt` at the last reduction, while that window is still outstanding.
    window_end: Option<u32>,
}

impl EcnGate {
    /// Whether an ECE seen with this `snd_una` should cause a reduction; if so, arms the gate
    /// until `snd_nxt` is acknowledged.
    pub(crate) fn admit(&mut self, snd_una: u32, snd_nxt: u32) -> bool {
        if let Some(end) = self.window_end {
            // RFC 3168 §6.1.2: the window that already had a reduction is not reduced again.
            if !seq_ge(snd_una, end) {
                return false;
            }
        }
        self.window_end = Some(snd_nxt);
        true
    }

    /// A loss reduction also counts as this window's reaction (RFC 3168 §6.1.2).
    pub(crate) fn arm(&mut self, snd_nxt: u32) {
        self.window_end = Some(snd_nxt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_each_builds_its_own_algorithm() {
        for kind in CongestionKind::ALL {
            assert_eq!(kind.name().parse::<CongestionKind>(), Ok(kind));
            assert_eq!(Congestion::new(kind, 1460).unwrap().kind(), kind);
        }
        assert_eq!("vegas".parse::<CongestionKind>(), Err(CcError::UnknownKind));
        assert_eq!(CongestionKind::default(), CongestionKind::Cubic);
    }
}
