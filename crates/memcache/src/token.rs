//! The line scanner both parsers share: it cuts a command or reply line into tokens as the
//! bytes arrive, one byte at a time and once, keeping its place between pieces.
//!
//! A token is recorded as its stream span plus a copy of its first [`HEAD_LEN`] bytes. Every
//! token the protocol interprets (command names, numbers, meta flags with their values,
//! opaque tokens of at most 32 bytes) fits in the head; keys, which may be 250 bytes and may
//! straddle pieces, are only ever reported as spans. So a line is tokenized without the line
//! ever being contiguous and without copying more than 32 bytes of any token.
//!
//! Tokenizing follows memcached's `tokenize_command`: tokens are separated by spaces only
//! (a tab is part of a token), a line ends at `\n`, and a `\r` just before the `\n` is not part
//! of the line. memcached reads the line as a C string, so a NUL byte ends it early: the
//! request scanner ignores everything from a NUL to the end of the line, as memcached does.

use crate::span::Span;

/// Bytes of each token kept inline: the longest token the protocol interprets is an opaque
/// meta token (`O` and up to 31 bytes, memcached's 32-byte limit).
pub(crate) const HEAD_LEN: usize = 32;

/// One token of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    /// Stream offset of the first byte.
    pub(crate) start: u64,
    /// Length in bytes (saturating; the line limits keep it far below `u32::MAX`).
    pub(crate) len: u32,
    /// Whether the token holds a control byte (below 0x20, or 0x7f).
    pub(crate) ctrl: bool,
    /// Whether a byte outside the base64 alphabet, or an alphabet byte after `=`, was seen.
    b64_bad: bool,
    /// Number of `=` seen.
    b64_pad: u8,
    head: [u8; HEAD_LEN],
}

impl Token {
    /// A token of no byte at offset 0, to fill fixed arrays.
    pub(crate) const EMPTY: Token = Token {
        start: 0,
        len: 0,
        ctrl: false,
        b64_bad: false,
        b64_pad: 0,
        head: [0; HEAD_LEN],
    };

    fn new(start: u64) -> Self {
        Self {
            start,
            ..Self::EMPTY
        }
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.head.get_mut(self.len as usize) {
            *slot = b;
        }
        self.len = self.len.saturating_add(1);
        if b < 0x20 || b == 0x7f {
            self.ctrl = true;
        }
        if b == b'=' {
            self.b64_pad = self.b64_pad.saturating_add(1);
        } else if crate::base64::value(b).is_none() || self.b64_pad > 0 {
            self.b64_bad = true;
        }
    }

    /// The token's bytes when it fits in the head.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        self.head.get(..self.len as usize)
    }

    /// Whether the token is exactly `word`.
    pub(crate) fn is(&self, word: &[u8]) -> bool {
        self.bytes() == Some(word)
    }

    /// The first byte (tokens are never empty).
    pub(crate) fn first(&self) -> u8 {
        self.head[0]
    }

    /// The bytes after the first, when the token fits in the head.
    pub(crate) fn rest(&self) -> Option<&[u8]> {
        self.bytes().map(|b| &b[1..])
    }

    /// Where the token lies in the stream.
    pub(crate) fn span(&self) -> Span {
        Span::new(self.start, self.len)
    }

    /// Whether the token is valid padded base64 (see `base64::decoded_len`).
    pub(crate) fn is_base64(&self) -> bool {
        !self.b64_bad && self.len > 0 && self.len.is_multiple_of(4) && self.b64_pad <= 2
    }
}

/// What one call of [`Line::scan`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Every byte was consumed; the line goes on in the next piece.
    NeedMore,
    /// A token ended; scanning resumes with the next call.
    Token(Token),
    /// The line ended (its `\n` consumed). `content_end` is the stream offset where its
    /// content ends: at the `\r\n` or `\n`, or at a NUL.
    End {
        /// End of the line's content.
        content_end: u64,
    },
    /// A new token was about to start and the caller asked to stop before it; its first
    /// byte was not consumed.
    Stopped,
    /// The line's content grew past the limit.
    TooLong,
}

/// The state of the line being scanned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Line {
    /// Stream offset of the line's first byte.
    pub(crate) start: u64,
    /// Content bytes seen (not counting a `\r` that may still turn out to end the line).
    len: u64,
    /// The last byte was `\r`: part of the content unless `\n` follows.
    pending_cr: bool,
    /// A NUL was seen (requests only): the rest of the line is ignored.
    nul: bool,
    /// Content end recorded at the NUL.
    nul_at: u64,
    /// Whether a NUL ends the content (memcached's C strings), or is an ordinary byte.
    stop_at_nul: bool,
    /// The token being read.
    cur: Option<Token>,
}

impl Line {
    /// A line starting at stream offset `start`.
    pub(crate) fn new(start: u64, stop_at_nul: bool) -> Self {
        Self {
            start,
            len: 0,
            pending_cr: false,
            nul: false,
            nul_at: 0,
            stop_at_nul,
            cur: None,
        }
    }

    /// Starts the next line at `start`.
    pub(crate) fn reset(&mut self, start: u64) {
        *self = Self::new(start, self.stop_at_nul);
    }

    /// Stream offset of the token being read, if any.
    pub(crate) fn cur_start(&self) -> Option<u64> {
        self.cur.map(|t| t.start)
    }

    /// Counts one content byte; false when the line is now too long.
    fn commit(&mut self, limit: u64) -> bool {
        self.len += 1;
        self.len <= limit
    }

    /// Scans `bytes`, whose first byte is at stream offset `at`, until a token ends, the line
    /// ends or the bytes run out. With `stop_before_token`, stops (returning
    /// [`Scan::Stopped`]) instead of starting a new token. Returns the bytes consumed.
    pub(crate) fn scan(
        &mut self,
        bytes: &[u8],
        at: u64,
        limit: u64,
        stop_before_token: bool,
    ) -> (usize, Scan) {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if self.nul {
                i += 1;
                if b == b'\n' {
                    return (
                        i,
                        Scan::End {
                            content_end: self.nul_at,
                        },
                    );
                }
                if !self.commit(limit) {
                    return (i, Scan::TooLong);
                }
                continue;
            }
            if self.pending_cr {
                if b == b'\n' {
                    if let Some(token) = self.cur.take() {
                        return (i, Scan::Token(token));
                    }
                    self.pending_cr = false;
                    return (
                        i + 1,
                        Scan::End {
                            content_end: self.start + self.len,
                        },
                    );
                }
                // The `\r` did not end the line: it is an ordinary byte of it, and `b` is
                // looked at again below.
                if self.cur.is_none() {
                    if stop_before_token {
                        return (i, Scan::Stopped);
                    }
                    self.cur = Some(Token::new(at + i as u64 - 1));
                }
                self.pending_cr = false;
                if !self.commit(limit) {
                    return (i, Scan::TooLong);
                }
                if let Some(token) = self.cur.as_mut() {
                    token.push(b'\r');
                }
                continue;
            }
            match b {
                b'\n' => {
                    if let Some(token) = self.cur.take() {
                        return (i, Scan::Token(token));
                    }
                    return (
                        i + 1,
                        Scan::End {
                            content_end: self.start + self.len,
                        },
                    );
                }
                b'\r' => {
                    self.pending_cr = true;
                    i += 1;
                }
                0 if self.stop_at_nul => {
                    self.nul = true;
                    self.nul_at = self.start + self.len;
                    i += 1;
                    if !self.commit(limit) {
                        return (i, Scan::TooLong);
                    }
                    if let Some(token) = self.cur.take() {
                        return (i, Scan::Token(token));
                    }
                }
                b' ' => {
                    i += 1;
                    if !self.commit(limit) {
                        return (i, Scan::TooLong);
                    }
                    if let Some(token) = self.cur.take() {
                        return (i, Scan::Token(token));
                    }
                }
                _ => {
                    if self.cur.is_none() {
                        if stop_before_token {
                            return (i, Scan::Stopped);
                        }
                        self.cur = Some(Token::new(at + i as u64));
                    }
                    i += 1;
                    if !self.commit(limit) {
                        return (i, Scan::TooLong);
                    }
                    if let Some(token) = self.cur.as_mut() {
                        token.push(b);
                    }
                }
            }
        }
        (i, Scan::NeedMore)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` in pieces of `step` bytes; returns the token texts and the content end.
    fn tokens(input: &[u8], step: usize, stop_at_nul: bool) -> (Vec<Vec<u8>>, Option<u64>) {
        let mut line = Line::new(0, stop_at_nul);
        let mut out = Vec::new();
        let mut end = None;
        let mut at = 0usize;
        'pieces: for piece in input.chunks(step) {
            let mut i = 0;
            loop {
                let (n, scan) = line.scan(&piece[i..], (at + i) as u64, 1024, false);
                i += n;
                match scan {
                    Scan::NeedMore => break,
                    Scan::Token(t) => {
                        let s = t.span();
                        out.push(input[s.offset as usize..s.end() as usize].to_vec());
                    }
                    Scan::End { content_end } => {
                        end = Some(content_end);
                        break 'pieces;
                    }
                    Scan::Stopped | Scan::TooLong => unreachable!(),
                }
            }
            at += piece.len();
        }
        (out, end)
    }

    #[test]
    fn splits_on_spaces_only_and_strips_one_cr() {
        for step in 1..8 {
            let (t, end) = tokens(b"  set\tx  k\r 5\r\r\n", step, true);
            assert_eq!(t, [&b"set\tx"[..], b"k\r", b"5\r"], "step {step}");
            assert_eq!(end, Some(14));
        }
    }

    #[test]
    fn bare_newline_ends_a_line() {
        let (t, end) = tokens(b"version\n", 3, true);
        assert_eq!(t, [&b"version"[..]]);
        assert_eq!(end, Some(7));
    }

    #[test]
    fn nul_ends_the_content_as_in_memcached() {
        let (t, end) = tokens(b"get foo\0bar baz\r\n", 2, true);
        assert_eq!(t, [&b"get"[..], b"foo"]);
        assert_eq!(end, Some(7));
        let (t, _) = tokens(b"VALUE a\0b\r\n", 2, false);
        assert_eq!(t, [&b"VALUE"[..], b"a\0b"]);
    }

    #[test]
    fn limit_counts_content_not_the_terminator() {
        let mut line = Line::new(0, true);
        let (_, scan) = line.scan(b"abcd", 0, 4, false);
        assert_eq!(scan, Scan::NeedMore);
        let (_, scan) = line.scan(b"\r", 4, 4, false);
        assert_eq!(scan, Scan::NeedMore);
        let (n, scan) = line.scan(b"\n", 5, 4, false);
        assert_eq!((n, scan), (0, Scan::Token(line_token())));
        let (n, scan) = line.scan(b"\n", 5, 4, false);
        assert_eq!((n, scan), (1, Scan::End { content_end: 4 }));

        let mut line = Line::new(0, true);
        let (_, scan) = line.scan(b"abcde", 0, 4, false);
        assert_eq!(scan, Scan::TooLong);
    }

    fn line_token() -> Token {
        let mut t = Token::new(0);
        for &b in b"abcd" {
            t.push(b);
        }
        t
    }
}
