//! Splitting an inline (telnet-style) command line into arguments, with the rules of Redis'
//! `sdssplitargs` (sds.c), which `processInlineBuffer` uses:
//!
//! - Arguments are separated by runs of white space (`isspace`: space, `\t`, `\n`, `\v`,
//!   `\f`, `\r`); outside quotes only space, `\t`, `\n`, `\r` end an argument, so `\v` and
//!   `\f` inside a word belong to it.
//! - `"..."` takes the escapes `\n`, `\r`, `\t`, `\b`, `\a`, `\xHH` (two hex digits, either
//!   case) and `\` before any other byte stands for that byte.
//! - `'...'` takes only `\'`; every other byte is literal.
//! - A quote may start in the middle of a word (`ab"c d"` is the one argument `abc d`), but a
//!   closing quote must be followed by white space or the end of the line.
//! - A quote never closed, or closed and followed by something else, is the error Redis
//!   answers with "unbalanced quotes in request".
//! - `sdssplitargs` works on a C string, so a NUL byte ends the line: whatever follows it is
//!   ignored, and a quote still open there is unbalanced.
//!
//! The split is done in place: an argument's bytes are never longer than the text they come
//! from, so the unescaped bytes are written over the line behind the reading position. The
//! request parser keeps one line buffer (at most `inline_len_max` bytes) and points the
//! arguments into it; nothing else is allocated.

/// The line has a quote that is not closed, or a closing quote followed by a non-space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unbalanced;

/// C's `isspace` in the "C" locale.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Splits `line` in place and calls `arg(start, len)` for each argument, in order; the
/// argument's bytes are then `line[start..start + len]`. On `Err` the line's contents are
/// unspecified.
pub(crate) fn split_in_place(
    line: &mut [u8],
    mut arg: impl FnMut(usize, usize),
) -> Result<(), Unbalanced> {
    // A NUL ends the C string `sdssplitargs` sees.
    let len = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    // The byte at `i`, or NUL past the end, as C reads its terminator.
    let at = |line: &[u8], i: usize| if i < len { line[i] } else { 0 };
    let mut read = 0;
    let mut write = 0;
    loop {
        while read < len && is_space(line[read]) {
            read += 1;
        }
        if read >= len {
            return Ok(());
        }
        let start = write;
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let byte = at(line, read);
            let mut done = false;
            // Invariant: write <= read, so a write never clobbers a byte still to be read.
            debug_assert!(write <= read);
            if in_double {
                let hex = (byte == b'\\' && at(line, read + 1) == b'x')
                    .then(|| {
                        let high = hex_value(at(line, read + 2))?;
                        let low = hex_value(at(line, read + 3))?;
                        Some(high * 16 + low)
                    })
                    .flatten();
                if let Some(value) = hex {
                    line[write] = value;
                    write += 1;
                    read += 3;
                } else if byte == b'\\' && at(line, read + 1) != 0 {
                    read += 1;
                    line[write] = match line[read] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    };
                    write += 1;
                } else if byte == b'"' {
                    let next = at(line, read + 1);
                    if next != 0 && !is_space(next) {
                        return Err(Unbalanced);
                    }
                    done = true;
                } else if byte == 0 {
                    return Err(Unbalanced);
                } else {
                    line[write] = byte;
                    write += 1;
                }
            } else if in_single {
                if byte == b'\\' && at(line, read + 1) == b'\'' {
                    read += 1;
                    line[write] = b'\'';
                    write += 1;
                } else if byte == b'\'' {
                    let next = at(line, read + 1);
                    if next != 0 && !is_space(next) {
                        return Err(Unbalanced);
                    }
                    done = true;
                } else if byte == 0 {
                    return Err(Unbalanced);
                } else {
                    line[write] = byte;
                    write += 1;
                }
            } else {
                match byte {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => {
                        line[write] = byte;
                        write += 1;
                    }
                }
            }
            if at(line, read) != 0 {
                read += 1;
            }
            if done {
                break;
            }
        }
        arg(start, write - start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &[u8]) -> Result<Vec<Vec<u8>>, Unbalanced> {
        let mut buf = line.to_vec();
        let mut spans = Vec::new();
        split_in_place(&mut buf, |start, len| spans.push((start, len)))?;
        Ok(spans
            .into_iter()
            .map(|(start, len)| buf[start..start + len].to_vec())
            .collect())
    }

    fn ok(line: &[u8], expected: &[&[u8]]) {
        let expected: Vec<Vec<u8>> = expected.iter().map(|a| a.to_vec()).collect();
        assert_eq!(split(line), Ok(expected), "{}", line.escape_ascii());
    }

    #[test]
    fn words_split_on_white_space() {
        ok(b"PING", &[b"PING"]);
        ok(b"  set  key\tvalue  ", &[b"set", b"key", b"value"]);
        ok(b"", &[]);
        ok(b" \t \x0b\x0c ", &[]);
        // Outside quotes, \v and \f do not end a word (only space, \t, \n, \r do).
        ok(b"a\x0bb c", &[b"a\x0bb", b"c"]);
    }

    #[test]
    fn double_quotes_take_escapes() {
        ok(b"set \"a b\" c", &[b"set", b"a b", b"c"]);
        ok(br#""\x41\x4a\x4b""#, &[b"AJK"]);
        ok(br#""\n\r\t\b\a\\\"\q""#, &[b"\n\r\t\x08\x07\\\"q"]);
        // Not two hex digits: `\x` is just `x`.
        ok(br#""\x4""#, &[b"x4"]);
        ok(br#""\xZZ""#, &[b"xZZ"]);
        ok(br#""""#, &[b""]);
        ok(br#"a"b c" d"#, &[b"ab c", b"d"]);
    }

    #[test]
    fn single_quotes_take_only_escaped_quote() {
        ok(br"'it\'s'", &[b"it's"]);
        ok(br"'a\nb'", &[b"a\\nb"]);
        ok(br"'a b' ''", &[b"a b", b""]);
    }

    #[test]
    fn unbalanced_quotes_are_refused() {
        for line in [
            &br#""abc"#[..],
            br"'abc",
            br#""a"b"#,
            br"'a'b",
            br#"a"b c"d"#,
            br#""abc\"#,
            b"\"ab\0c\"",
        ] {
            assert_eq!(split(line), Err(Unbalanced), "{}", line.escape_ascii());
        }
        // A closing quote followed by any white space, \v included, is fine.
        ok(b"\"a\"\x0bb", &[b"a", b"b"]);
    }

    #[test]
    fn a_nul_ends_the_line() {
        ok(b"get key\0 ignored", &[b"get", b"key"]);
        ok(b"\0get", &[]);
    }
}
