//! Clocks.
//!
//! The dataplane reads the clock once per loop iteration and hands the value to the sans-IO
//! cores as `now`, so the read has to be cheap. `clock_gettime(CLOCK_MONOTONIC)` is served by the
//! vDSO on x86_64 Linux: no mode switch, a few tens of nanoseconds. We call it directly rather
//! than through [`std::time::Instant`] because the cores want a plain `u64` of nanoseconds that
//! can be stored, subtracted and replayed in the simulator; an `Instant` is opaque and cannot be
//! constructed from a number. `rdtsc` was rejected: it needs calibration, is not synchronised
//! across sockets on every machine, and the vDSO already uses it where it is safe to.
//!
//! Safety contract: the only unsafe operation is `clock_gettime` writing into a `timespec` that
//! lives on our stack for the duration of the call.

use std::mem::MaybeUninit;

/// Nanoseconds per second.
pub(crate) const NS_PER_S: u64 = 1_000_000_000;

/// Nanoseconds on the monotonic clock (`CLOCK_MONOTONIC`) since an unspecified start point
/// (boot, on Linux).
///
/// Never decreases within one boot. Not affected by `settimeofday` or NTP steps, only slewed.
/// `u64` nanoseconds wrap after 584 years of uptime.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Reads `clock` as nanoseconds.
///
/// Used for `CLOCK_MONOTONIC` here and for the CPU-time clocks in [`crate::cpu`].
///
/// # Panics
///
/// If the kernel rejects the clock id. All callers pass one of the fixed clock ids that every
/// Linux since 2.6.12 supports, so a panic here means the crate itself is wrong.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: `ts.as_mut_ptr()` points to a live, writable, correctly aligned `timespec` on our
    // stack; `clock_gettime` writes only that struct.
    let ret = syscall!(unsafe { libc::clock_gettime(clock, ts.as_mut_ptr()) });
    if let Err(e) = ret {
        panic!("clock_gettime({clock}) failed for a clock every supported kernel has: {e}");
    }
    // SAFETY: `clock_gettime` returned 0, and on success it has written the whole `timespec`.
    let ts = unsafe { ts.assume_init() };
    timespec_to_ns(&ts)
}

/// Converts a `timespec` holding a non-negative time into nanoseconds, saturating.
fn timespec_to_ns(ts: &libc::timespec) -> u64 {
    // The clocks read here never report negative times; clamp instead of trusting that.
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(NS_PER_S).saturating_add(nanos)
}

/// Converts nanoseconds into a `timespec`, for `ppoll` timeouts.
pub(crate) fn ns_to_timespec(ns: u64) -> libc::timespec {
    // u64::MAX / 1e9 is about 1.8e10, which fits in the 64-bit `time_t` of x86_64.
    let secs = ns / NS_PER_S;
    libc::timespec {
        tv_sec: libc::time_t::try_from(secs).unwrap_or(libc::time_t::MAX),
        // Less than 1e9, which fits in any `c_long`.
        tv_nsec: (ns % NS_PER_S) as libc::c_long,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_is_non_decreasing() {
        let mut prev = monotonic_ns();
        assert!(prev > 0);
        for _ in 0..100_000 {
            let now = monotonic_ns();
            assert!(now >= prev, "monotonic clock went back: {prev} -> {now}");
            prev = now;
        }
    }

    #[test]
    fn monotonic_tracks_sleep() {
        let start = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let elapsed = monotonic_ns() - start;
        assert!(elapsed >= 5_000_000, "elapsed {elapsed} ns");
    }

    #[test]
    fn timespec_round_trip() {
        for ns in [0, 1, 999_999_999, 1_000_000_000, 1_234_567_890_123] {
            assert_eq!(timespec_to_ns(&ns_to_timespec(ns)), ns);
        }
    }
}
