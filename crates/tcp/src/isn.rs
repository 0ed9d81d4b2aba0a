//! Initial sequence numbers per RFC 6528 §3: `ISN = M + F(localip, localport, remoteip,
//! remoteport, secretkey)`, where `M` is a clock ticking every 4 µs and `F` is a keyed
//! pseudo-random function of the connection's 4-tuple.
//!
//! Why this construction: the ISN must be unpredictable to an off-path attacker, or they can
//! inject into or reset connections they cannot see (RFC 6528 §1), and yet successive
//! incarnations of the same 4-tuple should get increasing ISNs, so that old duplicates from a
//! previous incarnation fall outside the new window (RFC 9293 §3.4.1). A random ISN per
//! connection meets the first goal and gives up the second; a bare clock meets the second and
//! gives up the first. RFC 6528's sum does both: `F` is constant per tuple and unknowable
//! without the key, and `M` moves each tuple's sequence space forward with time. `F` is
//! SipHash-2-4 ([`crate::siphash`]), as in Linux; MD5, which the RFC names as an example, is
//! slower and no more fit for purpose.
//!
//! Time comes in as `now_ns`, the caller's monotonic clock in nanoseconds; nothing here reads a
//! clock. `M` is `now_ns / 4000` truncated to 32 bits, so it wraps every 4.77 hours, which
//! sequence arithmetic modulo 2^32 absorbs. Linux has since moved `M` to a 64 ns tick; we
//! keep the RFC's 4 µs (250 000 per second), which at the rates of one tuple's reincarnations
//! is no weaker and wraps sixteen times less often.
//!
//! The key is the control plane's to choose and may be rotated with [`IsnGenerator::rekey`].
//! Rotation trades one property for another: after it, a tuple's next ISN is unrelated to its
//! previous one, so the monotonic ordering of incarnations is lost across the rotation (as if
//! the host had rebooted, which RFC 9293 §3.4.3 already covers with the quiet time), while an
//! attacker who learnt something about `F` from many observed ISNs must start over.

use core::net::SocketAddrV4;

use crate::siphash::SipKey;

/// Nanoseconds per tick of `M`: RFC 6528 §3 specifies a timer that "is a 4-microsecond
/// timer".
pub const ISN_TICK_NS: u64 = 4_000;

/// A TCP connection's identity as seen from this host: our address and port, and the peer's.
///
/// `local` is the address segments arrive at and `remote` the one they come from, so the same
/// connection has the same `FourTuple` for a passive and an active open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FourTuple {
    /// Our address and port (the destination of received segments).
    pub local: SocketAddrV4,
    /// The peer's address and port (the source of received segments).
    pub remote: SocketAddrV4,
}

impl FourTuple {
    /// SipHash-2-4 of the tuple and a 32-bit `counter` under `key`, truncated to 32 bits.
    ///
    /// The 16 bytes hashed are the local address, the remote address, the local port in the
    /// high half of a word with the remote port in the low half, and the counter, each as
    /// a 32-bit word. Every field has a fixed position, so two different tuples never present
    /// the same input. [`IsnGenerator`] uses counter 0; [`crate::cookie`] uses the minute count.
    pub fn hash(&self, key: &SipKey, counter: u32) -> u32 {
        let ports = (u32::from(self.local.port()) << 16) | u32::from(self.remote.port());
        let hash = key.hash_u32x4(
            u32::from(*self.local.ip()),
            u32::from(*self.remote.ip()),
            ports,
            counter,
        );
        // Any 32 bits of a PRF's output are a PRF; the low half is as good as a fold.
        hash as u32
    }
}

/// Chooses initial sequence numbers (RFC 6528 §3) for active opens and for SYN-ACKs sent
/// without cookies.
///
/// Holds only the key. Call [`IsnGenerator::isn`] once per new connection with the current
/// time; there is no state to advance between calls.
#[derive(Clone, Debug)]
pub struct IsnGenerator {
    /// The secret of `F`. Debug prints no key material (see [`SipKey`]).
    key: SipKey,
}

impl IsnGenerator {
    /// A generator keyed with `key`, which must come from a cryptographically secure random
    /// source (the control plane reads `getrandom(2)` at start-up); a guessable key makes
    /// every ISN guessable.
    pub fn new(key: SipKey) -> Self {
        Self { key }
    }

    /// Replaces the key. ISNs chosen afterwards are unrelated to those chosen before, for
    /// every tuple; see the module documentation for what that gives up.
    pub fn rekey(&mut self, key: SipKey) {
        self.key = key;
    }

    /// The ISN for a new connection on `tuple` at time `now_ns` (nanoseconds of the caller's
    /// monotonic clock).
    pub fn isn(&self, now_ns: u64, tuple: &FourTuple) -> u32 {
        // RFC 6528 §3: ISN = M + F(localip, localport, remoteip, remoteport, secretkey).
        isn_clock(now_ns).wrapping_add(tuple.hash(&self.key, 0))
    }
}

/// `M` of RFC 6528 §3: `now_ns` in 4 µs ticks, modulo 2^32.
pub fn isn_clock(now_ns: u64) -> u32 {
    // Truncation is the wrap-around of the 32-bit timer the RFC describes.
    (now_ns / ISN_TICK_NS) as u32
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;

    fn tuple(local: [u8; 4], lport: u16, remote: [u8; 4], rport: u16) -> FourTuple {
        FourTuple {
            local: SocketAddrV4::new(Ipv4Addr::from(local), lport),
            remote: SocketAddrV4::new(Ipv4Addr::from(remote), rport),
        }
    }

    fn generator() -> IsnGenerator {
        IsnGenerator::new(SipKey::new(0x5eed_0000_1111_2222, 0x3333_4444_5555_6666))
    }

    const SECOND_NS: u64 = 1_000_000_000;

    #[test]
    fn same_tuple_advances_at_250k_per_second() {
        let g = generator();
        let t = tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40_000);
        let t0 = 123 * SECOND_NS;
        let base = g.isn(t0, &t);
        assert_eq!(g.isn(t0 + SECOND_NS, &t).wrapping_sub(base), 250_000);
        assert_eq!(g.isn(t0 + 4_000, &t).wrapping_sub(base), 1);
        assert_eq!(
            g.isn(t0 + 3_999, &t),
            base,
            "less than a tick changes nothing"
        );
        assert_eq!(g.isn(t0, &t), base, "no hidden state between calls");
    }

    #[test]
    fn wraps_around_modulo_2_32() {
        let g = generator();
        let t = tuple([192, 0, 2, 1], 443, [198, 51, 100, 7], 51_234);
        // One tick before M wraps, and one tick after.
        let before = (u64::from(u32::MAX)) * ISN_TICK_NS;
        let after = before + 2 * ISN_TICK_NS;
        assert_eq!(isn_clock(before), u32::MAX);
        assert_eq!(isn_clock(after), 1);
        assert_eq!(g.isn(after, &t).wrapping_sub(g.isn(before, &t)), 2);
        // The far end of the u64 clock does not overflow either.
        let _ = g.isn(u64::MAX, &t);
    }

    #[test]
    fn different_tuples_give_unrelated_isns() {
        let g = generator();
        let now = 42 * SECOND_NS;
        let base = tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40_000);
        let neighbours = [
            tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], 40_001),
            tuple([10, 0, 0, 1], 81, [10, 0, 0, 2], 40_000),
            tuple([10, 0, 0, 1], 80, [10, 0, 0, 3], 40_000),
            tuple([10, 0, 0, 0], 80, [10, 0, 0, 2], 40_000),
            // Local and remote swapped: the other direction is another tuple.
            tuple([10, 0, 0, 2], 40_000, [10, 0, 0, 1], 80),
        ];
        let isn = g.isn(now, &base);
        for n in neighbours {
            let other = g.isn(now, &n);
            // A one-bit change of input flips about half of the output bits; demand a
            // difference far from the 0 or 1 bits a linear or clock-only ISN would show.
            let flipped = (isn ^ other).count_ones();
            assert!((6..=26).contains(&flipped), "{n:?}: {flipped} bits differ");
        }
        // Over many neighbouring ports, the ISNs spread over the whole space: each of the
        // top four bits takes both values, which a clock-plus-offset scheme would not.
        let mut ones = [0u32; 4];
        for port in 0..1024u16 {
            let v = g.isn(now, &tuple([10, 0, 0, 1], 80, [10, 0, 0, 2], port));
            for (bit, count) in ones.iter_mut().enumerate() {
                *count += (v >> (31 - bit)) & 1;
            }
        }
        for count in ones {
            assert!(
                (412..=612).contains(&count),
                "top bit set {count} times of 1024"
            );
        }
    }

    #[test]
    fn the_key_decides_and_rekey_changes_it() {
        let t = tuple([10, 1, 2, 3], 22, [10, 4, 5, 6], 60_000);
        let mut g = generator();
        let before = g.isn(7, &t);
        g.rekey(SipKey::new(1, 2));
        assert_ne!(g.isn(7, &t), before);
        g.rekey(SipKey::new(0x5eed_0000_1111_2222, 0x3333_4444_5555_6666));
        assert_eq!(g.isn(7, &t), before);
    }

    #[test]
    fn debug_hides_the_key() {
        let g = generator();
        let shown = format!("{g:?}");
        assert!(shown.contains("SipKey(..)"), "{shown}");
        assert!(!shown.to_lowercase().contains("5eed"), "{shown}");
        assert!(
            !shown.contains(&0x5eed_0000_1111_2222u64.to_string()),
            "{shown}"
        );
    }
}
