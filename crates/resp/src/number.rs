//! Decimal integers as Redis reads and writes them.
//!
//! Reading follows Redis' `string2ll` (util.c), the function behind every length in the
//! protocol: an optional `-`, then either the single digit `0` or a digit from 1 to 9
//! followed by digits, with nothing else around them (no `+`, no spaces, no leading zeros, no
//! `-0`), inside the range of a signed 64-bit integer. The reader here takes the bytes one at
//! a time, because a length line may be split between two pieces of the stream; it keeps only
//! a few words of state, so a line of any length costs nothing but the time to look at it.
//!
//! Writing formats into a fixed array on the stack, so that an integer reply or a length
//! header never allocates.

/// The longest decimal form of an `i64` or a `u64` (`-9223372036854775808` and
/// `18446744073709551615` are both 20 bytes).
pub const INTEGER_TEXT_LEN_MAX: usize = 20;

/// An incremental reader of one decimal integer under `string2ll`'s rules.
///
/// Feed the bytes of the number with [`push`](Self::push) (it accepts any byte and remembers
/// that the text became invalid), then ask for the value with [`finish`](Self::finish).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NumberReader {
    /// Bytes pushed so far (saturating; only "zero" and "one" matter past the first digits).
    len: u32,
    /// The text began with `-`.
    negative: bool,
    /// The first digit was `0`, so no digit may follow.
    leading_zero: bool,
    /// The magnitude read so far; at most 2^63 while the text is valid.
    magnitude: u64,
    /// A byte broke the rules; the text can no longer become a number.
    invalid: bool,
}

impl NumberReader {
    /// A reader that has seen nothing (an empty text is not a number).
    pub const fn new() -> Self {
        NumberReader {
            len: 0,
            negative: false,
            leading_zero: false,
            magnitude: 0,
            invalid: false,
        }
    }

    /// Takes the next byte of the text.
    pub fn push(&mut self, byte: u8) {
        let position = self.len;
        self.len = self.len.saturating_add(1);
        if self.invalid {
            return;
        }
        if position == 0 && byte == b'-' {
            self.negative = true;
            return;
        }
        if !byte.is_ascii_digit() {
            self.invalid = true;
            return;
        }
        let digit = u64::from(byte - b'0');
        let first_digit = position == u32::from(self.negative);
        if first_digit {
            // `string2ll`: the first digit is 1 to 9, unless the whole text is "0".
            if digit == 0 {
                if self.negative {
                    self.invalid = true;
                    return;
                }
                self.leading_zero = true;
            }
        } else if self.leading_zero {
            self.invalid = true;
            return;
        }
        match self
            .magnitude
            .checked_mul(10)
            .and_then(|m| m.checked_add(digit))
        {
            // 2^63 is the magnitude of i64::MIN; anything larger fits no i64.
            Some(m) if m <= 1 << 63 => self.magnitude = m,
            _ => self.invalid = true,
        }
    }

    /// The number, or `None` when the text is not one (empty, `-` alone, a stray byte, a
    /// leading zero, out of range).
    pub fn finish(&self) -> Option<i64> {
        let digits = self.len.saturating_sub(u32::from(self.negative));
        if self.invalid || digits == 0 {
            return None;
        }
        if self.negative {
            // The magnitude is at most 2^63 (checked in push), so the negation fits.
            Some(0i64.wrapping_sub_unsigned(self.magnitude))
        } else {
            i64::try_from(self.magnitude).ok()
        }
    }
}

/// Reads a whole text with `string2ll`'s rules.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let mut reader = NumberReader::new();
    for &byte in text {
        reader.push(byte);
    }
    reader.finish()
}

/// Writes `value` in decimal at the end of `buf` and returns the digits.
pub fn format_u64(value: u64, buf: &mut [u8; INTEGER_TEXT_LEN_MAX]) -> &[u8] {
    let mut at = buf.len();
    let mut rest = value;
    loop {
        at -= 1;
        // `rest % 10` is below 10, so the cast keeps every bit.
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &buf[at..]
}

/// Writes `value` in decimal (with a `-` when negative) and returns the text.
pub fn format_i64(value: i64, buf: &mut [u8; INTEGER_TEXT_LEN_MAX]) -> &[u8] {
    let magnitude = value.unsigned_abs();
    // 19 digits at most for a magnitude up to 2^63, so index 0 stays free for the sign.
    let at = buf.len() - format_u64(magnitude, buf).len();
    if value < 0 {
        buf[at - 1] = b'-';
        &buf[at - 1..]
    } else {
        &buf[at..]
    }
}

/// How many bytes `value` takes in decimal.
pub fn decimal_len_u64(value: u64) -> usize {
    match value.checked_ilog10() {
        Some(log) => log as usize + 1,
        None => 1,
    }
}

/// How many bytes `value` takes in decimal, its sign included.
pub fn decimal_len_i64(value: i64) -> usize {
    decimal_len_u64(value.unsigned_abs()) + usize::from(value < 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_string2ll_reads() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"7"), Some(7));
        assert_eq!(parse_i64(b"-7"), Some(-7));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"2147483648"), Some(2_147_483_648));
    }

    #[test]
    fn refuses_what_string2ll_refuses() {
        for text in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1a",
            b"--1",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999999",
            b"1-",
            b"?",
        ] {
            assert_eq!(
                parse_i64(text),
                None,
                "{:?}",
                text.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn formats_extremes() {
        let mut buf = [0; INTEGER_TEXT_LEN_MAX];
        assert_eq!(format_i64(0, &mut buf), b"0");
        assert_eq!(format_i64(-1, &mut buf), b"-1");
        assert_eq!(format_i64(i64::MIN, &mut buf), b"-9223372036854775808");
        assert_eq!(format_i64(i64::MAX, &mut buf), b"9223372036854775807");
        assert_eq!(format_u64(u64::MAX, &mut buf), b"18446744073709551615");
        assert_eq!(decimal_len_u64(0), 1);
        assert_eq!(decimal_len_u64(9), 1);
        assert_eq!(decimal_len_u64(10), 2);
        assert_eq!(decimal_len_u64(u64::MAX), 20);
        assert_eq!(decimal_len_i64(i64::MIN), 20);
    }

    proptest! {
        #[test]
        fn format_then_read_is_identity(value in any::<i64>()) {
            let mut buf = [0; INTEGER_TEXT_LEN_MAX];
            let text = format_i64(value, &mut buf);
            let expected = value.to_string();
            prop_assert_eq!(text, expected.as_bytes());
            prop_assert_eq!(decimal_len_i64(value), text.len());
            prop_assert_eq!(parse_i64(text), Some(value));
        }

        #[test]
        fn reads_like_the_standard_parser_on_canonical_text(text in "-?[0-9]{0,21}") {
            let ours = parse_i64(text.as_bytes());
            let canonical = text.parse::<i64>().ok().filter(|v| v.to_string() == text);
            prop_assert_eq!(ours, canonical);
        }
    }
}
