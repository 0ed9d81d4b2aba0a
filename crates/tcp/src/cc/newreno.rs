//! NewReno: RFC 5681's slow start and congestion avoidance with RFC 3465's byte counting, and
//! RFC 6582's window handling around fast recovery.
//!
//! Both phases count bytes, not ACKs: a receiver that delays or stretches its ACKs (or a peer
//! that splits them to inflate our window, the ACK-division attack RFC 3465 §1 describes) gets
//! the growth its bytes earned, no more. Slow start adds `min(acked, L * SMSS)` with L = 2;
//! congestion avoidance adds one SMSS per cwnd of acknowledged bytes. The alternative, RFC 5681's
//! per-ACK `SMSS * SMSS / cwnd`, was rejected: it under-grows with delayed ACKs and rounds to 0
//! at large windows.
//!
//! HyStart++ ([`super::hystart`]) is not used here: RFC 9406 allows it for any algorithm, but
//! CUBIC is the default and the algorithm RFC 9438 pairs it with, so only CUBIC consults it;
//! NewReno leaves slow start on loss or when cwnd reaches ssthresh. Inflation during recovery
//! is the connection's job (see the parent module).

use super::{
    check_smss, clamp_cwnd, initial_window_bytes, recovery_exit_window, restart_window,
    slow_start_window, ssthresh_floor, AckSample, CcError, CongestionControl, EcnGate,
    CWND_BYTES_MAX,
};

/// NewReno's state for one connection.
#[derive(Debug, Clone)]
pub struct NewReno {
    smss: u32,
    cwnd: u32,
    ssthresh: u32,
    /// Bytes acknowledged in congestion avoidance since cwnd last grew (RFC 3465 §2.1).
    bytes_acked: u32,
    in_recovery: bool,
    ecn: EcnGate,
}

impl NewReno {
    /// A controller with RFC 6928's initial window and an "arbitrarily high" ssthresh
    /// (RFC 5681 §3.1).
    pub fn new(smss: u32) -> Result<Self, CcError> {
        let smss = check_smss(smss)?;
        Ok(NewReno {
            smss,
            cwnd: initial_window_bytes(smss),
            ssthresh: CWND_BYTES_MAX,
            bytes_acked: 0,
            in_recovery: false,
            ecn: EcnGate::default(),
        })
    }

    /// RFC 5681 eq. 4: ssthresh = max(FlightSize / 2, 2 * SMSS).
    fn reduce(&mut self, flight_bytes: u32) {
        self.ssthresh = (flight_bytes / 2).max(ssthresh_floor(self.smss));
        self.bytes_acked = 0;
    }
}

impl CongestionControl for NewReno {
    fn handle_ack(&mut self, ack: &AckSample) {
        // RFC 6582 §3.2 step 4: partial ACKs in recovery do not grow the window; deflation is
        // the connection's pipe arithmetic. RFC 7661: an unused window is not grown.
        if self.in_recovery || !ack.cwnd_limited || ack.acked_bytes == 0 {
            return;
        }
        let cwnd = u64::from(self.cwnd);
        if self.cwnd < self.ssthresh {
            // RFC 3465 §2.2: slow start adds min(acked, L * SMSS), L = 2 (§2.3).
            self.cwnd = slow_start_window(self.cwnd, self.ssthresh, self.smss, ack.acked_bytes);
        } else {
            // RFC 3465 §2.1: +SMSS once a full cwnd of bytes has been acknowledged.
            self.bytes_acked = self.bytes_acked.saturating_add(ack.acked_bytes);
            if self.bytes_acked >= self.cwnd {
                self.bytes_acked -= self.cwnd;
                // One window per ACK at most: a giant ACK must not buy many increments.
                self.bytes_acked = self.bytes_acked.min(self.cwnd);
                self.cwnd = clamp_cwnd(cwnd + u64::from(self.smss), self.smss);
            }
        }
    }

    fn handle_recovery_start(&mut self, _now_ns: u64, flight_bytes: u32, recover_seq: u32) {
        // RFC 5681 §3.2 step 2 (eq. 4), and step 3's cwnd = ssthresh without the +3 SMSS
        // inflation, which the connection's pipe accounts for.
        self.reduce(flight_bytes);
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
        // RFC 5681 §3.1 eq. 4, then cwnd = LW = 1 SMSS; recovery is abandoned (RFC 6582 §3.2
        // step 1 resets `recover` on the connection's side).
        self.reduce(flight_bytes);
        self.cwnd = self.smss;
        self.in_recovery = false;
        self.ecn = EcnGate::default();
    }

    fn handle_ecn_echo(&mut self, _now_ns: u64, snd_una: u32, snd_nxt: u32, flight: u32) -> bool {
        // RFC 3168 §6.1.2: once per window, and not again inside a loss recovery's window.
        if self.in_recovery || !self.ecn.admit(snd_una, snd_nxt) {
            return false;
        }
        // RFC 3168 §6.1.2: halve as for a loss, but with no retransmission and no recovery.
        self.reduce(flight);
        self.cwnd = clamp_cwnd(u64::from(self.ssthresh), self.smss);
        true
    }

    fn handle_idle_restart(&mut self, _now_ns: u64) {
        // RFC 5681 §4.1: cwnd = min(RW, cwnd) with RW = the initial window.
        self.cwnd = restart_window(self.cwnd, self.smss);
        self.bytes_acked = 0;
    }

    fn set_smss(&mut self, smss: u32) -> Result<(), CcError> {
        self.smss = check_smss(smss)?;
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

    const MSS: u32 = 1000;

    fn ack(acked: u32) -> AckSample {
        AckSample {
            acked_bytes: acked,
            cwnd_limited: true,
            ..AckSample::default()
        }
    }

    /// Acks one window's worth of segments, one ACK per `per_ack` bytes.
    fn ack_window(cc: &mut NewReno, per_ack: u32) {
        let mut left = cc.cwnd_bytes();
        while left > 0 {
            let n = left.min(per_ack);
            cc.handle_ack(&ack(n));
            left -= n;
        }
    }

    #[test]
    fn initial_window_is_rfc6928() {
        // min(10 * 1000, max(2000, 14600)) = 10000.
        assert_eq!(NewReno::new(1000).unwrap().cwnd_bytes(), 10_000);
        // min(14600, max(2920, 14600)) = 14600 for 1460.
        assert_eq!(NewReno::new(1460).unwrap().cwnd_bytes(), 14_600);
        // min(90000, max(18000, 14600)) = 18000 for 9000.
        assert_eq!(NewReno::new(9000).unwrap().cwnd_bytes(), 18_000);
        assert_eq!(
            NewReno::new(0).unwrap_err(),
            CcError::SmssOutOfRange { smss: 0 }
        );
    }

    #[test]
    fn slow_start_doubles_per_rtt_with_abc() {
        let mut cc = NewReno::new(MSS).unwrap();
        // One ACK per segment: each adds 1 SMSS, so each round doubles: 10, 20, 40, 80 SMSS.
        for want in [20_000, 40_000, 80_000] {
            ack_window(&mut cc, MSS);
            assert_eq!(cc.cwnd_bytes(), want);
        }
        // Delayed ACKs (2 segments each) also double under ABC with L = 2.
        ack_window(&mut cc, 2 * MSS);
        assert_eq!(cc.cwnd_bytes(), 160_000);
        // A stretch ACK of 10 segments earns only L = 2 SMSS.
        cc.handle_ack(&ack(10 * MSS));
        assert_eq!(cc.cwnd_bytes(), 162_000);
    }

    #[test]
    fn congestion_avoidance_adds_one_smss_per_rtt() {
        let mut cc = NewReno::new(MSS).unwrap();
        cc.handle_recovery_start(0, 40_000, 0);
        assert_eq!((cc.ssthresh_bytes(), cc.cwnd_bytes()), (20_000, 20_000));
        cc.handle_recovery_end(0, 20_000);
        assert_eq!(cc.cwnd_bytes(), 20_000);
        for rtt in 1..=5 {
            ack_window(&mut cc, MSS);
            assert_eq!(cc.cwnd_bytes(), 20_000 + rtt * MSS);
        }
    }

    #[test]
    fn loss_halves_flight_with_two_segment_floor() {
        let mut cc = NewReno::new(MSS).unwrap();
        cc.handle_recovery_start(0, 3 * MSS, 0);
        // max(1500, 2000) = 2000.
        assert_eq!(cc.ssthresh_bytes(), 2 * MSS);
        // Partial ACKs in recovery do not grow cwnd.
        cc.handle_ack(&ack(MSS));
        assert_eq!(cc.cwnd_bytes(), 2 * MSS);
        // Full ACK with nearly nothing in flight: min(ssthresh, max(0, SMSS) + SMSS).
        cc.handle_recovery_end(0, 0);
        assert_eq!(cc.cwnd_bytes(), 2 * MSS);
    }

    #[test]
    fn rto_sets_loss_window_and_slow_starts_to_ssthresh() {
        let mut cc = NewReno::new(MSS).unwrap();
        cc.handle_rto(0, 30_000);
        assert_eq!((cc.cwnd_bytes(), cc.ssthresh_bytes()), (MSS, 15_000));
        assert!(cc.in_slow_start());
        // 1, 2, 4, 8, then stops at ssthresh = 15 SMSS instead of 16.
        for want in [2_000, 4_000, 8_000, 15_000] {
            ack_window(&mut cc, MSS);
            assert_eq!(cc.cwnd_bytes(), want);
        }
        assert!(!cc.in_slow_start());
    }

    #[test]
    fn ecn_echo_reduces_once_per_window() {
        let mut cc = NewReno::new(MSS).unwrap();
        assert!(cc.handle_ecn_echo(0, 100, 10_100, 10_000));
        assert_eq!(cc.cwnd_bytes(), 5_000);
        // Still inside the window [100, 10100): ignored.
        assert!(!cc.handle_ecn_echo(0, 5_000, 12_000, 8_000));
        assert_eq!(cc.cwnd_bytes(), 5_000);
        // That window is acknowledged: the next ECE reduces again.
        assert!(cc.handle_ecn_echo(0, 10_100, 15_000, 5_000));
        assert_eq!(cc.cwnd_bytes(), 2_500);
    }

    #[test]
    fn idle_restart_and_app_limited() {
        let mut cc = NewReno::new(MSS).unwrap();
        ack_window(&mut cc, MSS);
        assert_eq!(cc.cwnd_bytes(), 20_000);
        // RFC 7661: an ACK when the app did not fill cwnd does not grow it.
        cc.handle_ack(&AckSample {
            acked_bytes: MSS,
            ..AckSample::default()
        });
        assert_eq!(cc.cwnd_bytes(), 20_000);
        cc.handle_idle_restart(0);
        assert_eq!(cc.cwnd_bytes(), 10_000);
    }
}
