//! Numbers in strings, parsed and printed as Redis does.
//!
//! Redis is strict: an integer is what `string2ll` accepts (an optional `-`, no `+`, no
//! leading zeros, no spaces, at most 20 characters, inside `i64`), so `INCR` on `"01"` or
//! `" 1"` fails exactly as on Redis. Floats are what `strtold` accepts with nothing left over
//! and no leading space, never NaN. Printing uses the shortest representation that reads back
//! to the same `f64` (Redis 7.2's `fpconv_dtoa`), with Redis' exponent form.
//!
//! One known difference: Redis computes `INCRBYFLOAT` in `long double` (80-bit on x86-64),
//! this crate in `f64`; results agree whenever they fit in 17 significant digits.

/// Parses `bytes` as Redis' `string2ll` would: `None` where Redis says "value is not an
/// integer or out of range".
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() > 20 {
        return None;
    }
    if bytes == b"0" {
        return Some(0);
    }
    let (negative, digits) = match bytes[0] {
        b'-' => (true, &bytes[1..]),
        _ => (false, bytes),
    };
    // No leading zero (so no "-0" either), at least one digit, digits only.
    if digits.is_empty() || digits[0] == b'0' || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &d in digits {
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if magnitude == 1 << 63 {
            Some(i64::MIN)
        } else {
            i64::try_from(magnitude).ok().map(|m| -m)
        }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Parses `bytes` as a float the way Redis' `string2ld`/`string2d` accept it: decimal or
/// exponent notation, `inf`/`infinity` with an optional sign, no leading space, nothing left
/// over; NaN is refused.
pub fn parse_f64(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if lower.len() - unsigned.len() > 1 {
        return None;
    }
    if unsigned == "inf" || unsigned == "infinity" {
        return Some(if lower.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    // Rust's parser accepts "nan" and "inf" spellings handled above, and a trailing or
    // leading '.' like strtod; it refuses hex floats, which strtold would take (rare).
    if unsigned.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    (!value.is_nan()).then_some(value)
}

/// Formats `value` as Redis 7 replies with a double: the shortest digits that read back to
/// the same value, `inf`/`-inf`, integers without a fraction, and the exponent form `1e+21`
/// beyond 17 digits.
pub fn format_f64(value: f64, out: &mut String) {
    use std::fmt::Write;
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "inf" } else { "-inf" });
        return;
    }
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-5..1e17).contains(&magnitude) {
        let mut s = String::new();
        let _ = write!(s, "{value:e}");
        // Rust writes "1e21" and "1.5e-7"; C writes "1e+21" and "1.5e-07".
        if let Some(at) = s.find('e') {
            let (mantissa, exponent) = s.split_at(at);
            let exponent = &exponent[1..];
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exponent),
            };
            let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
            return;
        }
    }
    let _ = write!(out, "{value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_parsed_as_strictly_as_redis() {
        for (text, want) in [
            ("0", Some(0)),
            ("1", Some(1)),
            ("-1", Some(-1)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("01", None),
            ("-0", None),
            ("+1", None),
            (" 1", None),
            ("1 ", None),
            ("", None),
            ("-", None),
            ("1.0", None),
            ("123456789012345678901", None),
        ] {
            assert_eq!(parse_i64(text.as_bytes()), want, "{text:?}");
        }
    }

    #[test]
    fn floats_accept_what_strtold_accepts_without_nan() {
        for (text, want) in [
            ("1.5", Some(1.5)),
            ("-1.5", Some(-1.5)),
            ("+2", Some(2.0)),
            ("1e3", Some(1000.0)),
            (".5", Some(0.5)),
            ("5.", Some(5.0)),
            ("inf", Some(f64::INFINITY)),
            ("-Infinity", Some(f64::NEG_INFINITY)),
            ("+inf", Some(f64::INFINITY)),
            ("nan", None),
            (" 1", None),
            ("1 ", None),
            ("1x", None),
            ("", None),
            ("--1", None),
        ] {
            assert_eq!(parse_f64(text.as_bytes()), want, "{text:?}");
        }
    }

    #[test]
    fn doubles_print_as_redis_7_prints_them() {
        for (value, want) in [
            (1.5, "1.5"),
            (3.0, "3"),
            (-0.5, "-0.5"),
            (10.5 + 0.1, "10.6"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (1e21, "1e+21"),
            (1.5e-7, "1.5e-07"),
            (0.0, "0"),
        ] {
            let mut s = String::new();
            format_f64(value, &mut s);
            assert_eq!(s, want, "{value}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_i64_round_trips(n: i64) {
            proptest::prop_assert_eq!(parse_i64(n.to_string().as_bytes()), Some(n));
        }

        #[test]
        fn printed_doubles_read_back(x in proptest::num::f64::NORMAL | proptest::num::f64::ZERO) {
            let mut s = String::new();
            format_f64(x, &mut s);
            proptest::prop_assert_eq!(parse_f64(s.as_bytes()), Some(if x == 0.0 { 0.0 } else { x }));
        }
    }
}
