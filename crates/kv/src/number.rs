//! Numbers in strings, parsed and printed as Redis does.
//!
//! Redis is strict: an integer is what `string2ll` accepts (an optional `-`, no `+`, no
//! leading zeros, no spaces, at most 20 characters, inside `i64`), so `INCR` on `"01"` or
//! `" 1"` fails exactly as on Redis. Floats are what `strtold` accepts with nothing left over
//! and no leading space, never NaN. Printing uses Redis 7.2's `d2string`: integers as integers, anything else in the
//! shortest digits that read back to the same `f64`, laid out as its `fpconv_dtoa` lays them
//! out (Rust finds the shortest digits always; fpconv's Grisu2 misses them for a rare value,
//! which Redis then prints with one digit more).
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
    // leading '.' like strtod; it refuses hex floats, which strtold takes (`INCRBYFLOAT` on
    // "0x10" answers 17 in Redis; the differential test found it).
    if let Some(hex) = unsigned.strip_prefix("0x") {
        let value = parse_hex_float(hex)?;
        return Some(if lower.starts_with('-') {
            -value
        } else {
            value
        });
    }
    if unsigned.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    (!value.is_nan()).then_some(value)
}

/// The digits of a C99 hex float after `0x`: `hexdigits[.hexdigits][p[+-]decimal]`, at least
/// one hex digit; `None` for anything else.
fn parse_hex_float(text: &str) -> Option<f64> {
    let (mantissa, exponent) = match text.find('p') {
        Some(at) => (&text[..at], text[at + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.len() + frac_part.len() == 0 {
        return None;
    }
    let mut value = 0.0f64;
    for c in int_part.chars() {
        value = value * 16.0 + f64::from(c.to_digit(16)?);
    }
    let mut scale = 1.0 / 16.0;
    for c in frac_part.chars() {
        value += f64::from(c.to_digit(16)?) * scale;
        scale /= 16.0;
    }
    let value = value * 2f64.powi(exponent);
    value.is_finite().then_some(value)
}

/// Parses `bytes` as Redis' `string2d` does (`getDoubleFromObject`: sorted-set scores and
/// increments): as [`parse_f64`], but a finite spelling that overflows to infinity or
/// underflows to zero is refused, as `strtod` reports `ERANGE` for it (`ZADD z 1e400 m` is
/// "value is not a valid float"; `inf` itself is accepted).
pub fn parse_double(bytes: &[u8]) -> Option<f64> {
    let value = parse_f64(bytes)?;
    let lower = bytes.to_ascii_lowercase();
    let unsigned = lower
        .strip_prefix(b"-")
        .or_else(|| lower.strip_prefix(b"+"));
    let unsigned = unsigned.unwrap_or(&lower);
    if value.is_infinite() && unsigned != b"inf" && unsigned != b"infinity" {
        return None;
    }
    if value == 0.0 {
        // Underflow: a nonzero digit in the mantissa that still read as zero.
        let mantissa = unsigned.split(|&b| b == b'e').next().unwrap_or(&[]);
        if mantissa.iter().any(|&b| (b'1'..=b'9').contains(&b)) {
            return None;
        }
    }
    Some(value)
}

/// Parses `bytes` as Redis' score ranges read their bounds (`zslParseRange`: `strtod` with
/// nothing left over): leading white space is skipped, the text ends at a NUL byte, the empty
/// text is 0 (`strtod` converts nothing and stops at the end), overflow is infinity; NaN is
/// refused. Hexadecimal floats, which `strtod` also reads, are refused here.
pub fn parse_strtod(bytes: &[u8]) -> Option<f64> {
    let text = match bytes.iter().position(|&b| b == 0) {
        Some(nul) => &bytes[..nul],
        None => bytes,
    };
    if text.is_empty() {
        return Some(0.0);
    }
    // C's isspace: space, \t, \n, \v, \f, \r.
    let start = text
        .iter()
        .position(|&b| !matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))?;
    parse_f64(&text[start..])
}

/// Formats `value` as Redis 7.2 replies with a double (`d2string`): `inf`, `-inf`, `0`,
/// `-0`; an integral value within `±(i64::MAX / 2)` as an integer (`double2ll`); anything
/// else as `fpconv_dtoa` prints the shortest digits that read back to the same value: plainly
/// when the exponent is small (`0.000001`, `123.456`), else `1.5e-7`, `1e+21`, `1.25e+100`.
pub fn format_f64(value: f64, out: &mut String) {
    use std::fmt::Write;
    if value.is_nan() {
        out.push_str("nan");
        return;
    }
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if value == 0.0 {
        out.push_str(if value.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    // double2ll: the bound is (double)(LLONG_MAX / 2), which rounds up to 2^62.
    let bound = (i64::MAX / 2) as f64;
    if value.trunc() == value && (-bound..=bound).contains(&value) {
        let _ = write!(out, "{}", value as i64);
        return;
    }
    if value < 0.0 {
        out.push('-');
    }
    // The shortest digits, as d.ddde[-]x, then fpconv's emit_digits: the value is
    // digits * 10^k, with decimal exponent k + n - 1.
    let scientific = format!("{:e}", value.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len() as i32;
    let k = exponent - (n - 1);
    let magnitude = exponent.abs();
    if k >= 0 && magnitude < n + 7 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', k as usize));
        return;
    }
    if k < 0 && (k > -7 || magnitude < 4) {
        let offset = n + k;
        if offset <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-offset) as usize));
            out.push_str(&digits);
        } else {
            out.push_str(&digits[..offset as usize]);
            out.push('.');
            out.push_str(&digits[offset as usize..]);
        }
        return;
    }
    out.push_str(&digits[..1]);
    if n > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    let _ = write!(out, "e{}{magnitude}", if exponent < 0 { '-' } else { '+' });
}

/// Formats `value` as C's `%.17g` does (Redis' `ld2string` in `LD_STR_AUTO` mode, which
/// `ZSCAN` of a large sorted set uses for scores): 17 significant digits, trailing zeros
/// dropped, the exponent form `1.0000000000000001e-05` below 1e-4 or from 1e17 on.
pub fn format_f64_17g(value: f64, out: &mut String) {
    use std::fmt::Write;
    if value.is_nan() {
        out.push_str("nan");
        return;
    }
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "inf" } else { "-inf" });
        return;
    }
    if value == 0.0 {
        out.push_str(if value.is_sign_negative() { "-0" } else { "0" });
        return;
    }
    let scientific = format!("{value:.16e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if !(-4..17).contains(&exponent) {
        let mantissa = trim_fraction(mantissa);
        let sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "{mantissa}e{sign}{:02}", exponent.abs());
    } else {
        let fixed = format!("{value:.*}", (16 - exponent) as usize);
        out.push_str(trim_fraction(&fixed));
    }
}

/// Drops the trailing zeros of a fraction, and the point if nothing is left after it.
fn trim_fraction(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
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
            (1.5e-7, "1.5e-7"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1e17, "100000000000000000"),
            (4611686018427387904.0, "4611686018427387904"),
            (5e18, "5e+18"),
            (1.2345678901234568e21, "1234567890123456800000"),
            (0.1, "0.1"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (0.0012345678, "0.0012345678"),
            (0.00012345678, "1.2345678e-4"),
            (123456.7891, "123456.7891"),
            (1.25e100, "1.25e+100"),
            (-2.5e-300, "-2.5e-300"),
        ] {
            let mut s = String::new();
            format_f64(value, &mut s);
            assert_eq!(s, want, "{value}");
        }
    }

    #[test]
    fn percent_17g_matches_c() {
        for (value, want) in [
            (0.1, "0.10000000000000001"),
            (1.5, "1.5"),
            (3.0, "3"),
            (1e21, "1e+21"),
            (1e17, "1e+17"),
            (1e16, "10000000000000000"),
            (1e-5, "1.0000000000000001e-05"),
            (0.0001, "0.0001"),
            (-2.5, "-2.5"),
            (f64::INFINITY, "inf"),
        ] {
            let mut s = String::new();
            format_f64_17g(value, &mut s);
            assert_eq!(s, want, "{value}");
        }
    }

    #[test]
    fn doubles_and_strtod_ranges_parse_as_redis() {
        assert_eq!(parse_double(b"1e400"), None);
        assert_eq!(parse_double(b"-1e400"), None);
        assert_eq!(parse_double(b"1e-400"), None);
        assert_eq!(parse_double(b"0e5"), Some(0.0));
        assert_eq!(parse_double(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_double(b" 1"), None);
        assert_eq!(parse_double(b"nan"), None);
        assert_eq!(parse_strtod(b""), Some(0.0));
        assert_eq!(parse_strtod(b" 1.5"), Some(1.5));
        assert_eq!(parse_strtod(b"  "), None);
        assert_eq!(parse_strtod(b"1\0junk"), Some(1.0));
        assert_eq!(parse_strtod(b"1e400"), Some(f64::INFINITY));
        assert_eq!(parse_strtod(b"nan"), None);
        assert_eq!(parse_strtod(b"1x"), None);
    }

    proptest::proptest! {
        #[test]
        fn every_i64_round_trips(n: i64) {
            proptest::prop_assert_eq!(parse_i64(n.to_string().as_bytes()), Some(n));
        }

        #[test]
        fn printed_doubles_read_back(x in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
            let mut s = String::new();
            format_f64(x, &mut s);
            proptest::prop_assert_eq!(parse_f64(s.as_bytes()), Some(if x == 0.0 { 0.0 } else { x }));
        }
    }
}
