//! Decimal numbers as memcached reads and writes them.
//!
//! memcached reads numbers with `strtoul`/`strtol`/`strtoull` wrapped in its `safe_strto*`
//! helpers: an optional sign, digits, and nothing after them in the token. The unsigned
//! readers refuse a minus sign; every reader refuses a value outside its type (memcached's
//! 32-bit readers use `long`, so on 64-bit hosts a too large flags value used to be
//! truncated; we refuse it, which no client notices). Formatting writes into a stack buffer,
//! never allocating.

/// Longest decimal form of a `u64` or `i64` ("-9223372036854775808" is 20 bytes).
pub(crate) const DIGITS_MAX: usize = 20;

/// Reads an unsigned decimal with an optional `+`, refusing anything else.
fn unsigned(b: &[u8]) -> Option<u64> {
    let digits = b.strip_prefix(b"+").unwrap_or(b);
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(value)
}

/// memcached's `safe_strtoull`: a `u64`.
pub(crate) fn parse_u64(b: &[u8]) -> Option<u64> {
    unsigned(b)
}

/// memcached's `safe_strtoul`: a `u32`.
pub(crate) fn parse_u32(b: &[u8]) -> Option<u32> {
    unsigned(b).and_then(|v| u32::try_from(v).ok())
}

/// memcached's `safe_strtol`: an `i32`, with an optional sign.
pub(crate) fn parse_i32(b: &[u8]) -> Option<i32> {
    match b.split_first() {
        Some((b'-', rest)) if !rest.starts_with(b"+") => {
            let magnitude = unsigned(rest)?;
            i32::try_from(-i64::try_from(magnitude).ok()?).ok()
        }
        _ => unsigned(b).and_then(|v| i32::try_from(v).ok()),
    }
}

/// Writes `v` in decimal at the end of `buf`; returns the digits.
pub(crate) fn format_u64(v: u64, buf: &mut [u8; DIGITS_MAX]) -> &[u8] {
    let mut at = DIGITS_MAX;
    let mut v = v;
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[at..]
}

/// Writes `v` in decimal (with a minus sign when negative) at the end of `buf`.
pub(crate) fn format_i64(v: i64, buf: &mut [u8; DIGITS_MAX]) -> &[u8] {
    let mut at = DIGITS_MAX;
    let mut m = v.unsigned_abs();
    loop {
        at -= 1;
        buf[at] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if v < 0 {
        // i64::MIN has 19 digits, so there is room for the sign.
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_readers_follow_safe_strtoul() {
        assert_eq!(parse_u32(b"0"), Some(0));
        assert_eq!(parse_u32(b"+42"), Some(42));
        assert_eq!(parse_u32(b"0007"), Some(7));
        assert_eq!(parse_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(parse_u32(b"4294967296"), None);
        assert_eq!(parse_u32(b"-1"), None);
        assert_eq!(parse_u32(b""), None);
        assert_eq!(parse_u32(b"+"), None);
        assert_eq!(parse_u32(b"1x"), None);
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
    }

    #[test]
    fn signed_reader_follows_safe_strtol() {
        assert_eq!(parse_i32(b"-1"), Some(-1));
        assert_eq!(parse_i32(b"+1"), Some(1));
        assert_eq!(parse_i32(b"-2147483648"), Some(i32::MIN));
        assert_eq!(parse_i32(b"2147483647"), Some(i32::MAX));
        assert_eq!(parse_i32(b"2147483648"), None);
        assert_eq!(parse_i32(b"-2147483649"), None);
        assert_eq!(parse_i32(b"-"), None);
        assert_eq!(parse_i32(b"-+1"), None);
        assert_eq!(parse_i32(b"--1"), None);
    }

    #[test]
    fn formatting_round_trips() {
        let mut buf = [0u8; DIGITS_MAX];
        assert_eq!(format_u64(0, &mut buf), b"0");
        assert_eq!(format_u64(u64::MAX, &mut buf), b"18446744073709551615");
        assert_eq!(format_i64(-1, &mut buf), b"-1");
        assert_eq!(format_i64(i64::MIN, &mut buf), b"-9223372036854775808");
        assert_eq!(format_i64(i64::MAX, &mut buf), b"9223372036854775807");
    }
}
