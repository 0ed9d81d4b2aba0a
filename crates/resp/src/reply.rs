//! The reply writer: RESP2 or RESP3 replies written straight into the caller's output.
//!
//! The output is a [`Sink`]: something with a bounded amount of room (the free space of the
//! connection's transmit frames, a fixed buffer) that takes bytes. Each call of the
//! [`ReplyWriter`] writes one element (a header, a whole small value) and is atomic: it
//! checks the room for the whole element first and writes all of it or, with [`Full`],
//! nothing. So a server that runs out of room mid-reply can wait for the network and repeat
//! the same call; and a value too large for any buffer is written in pieces with
//! [`ReplyWriter::bulk_start`], [`ReplyWriter::bulk_part`] and [`ReplyWriter::bulk_end`].
//! Numbers are formatted on the stack; nothing allocates.
//!
//! The protocol version belongs to the connection (`HELLO 3` switches it) and is given to
//! each writer. RESP3 types fall back to RESP2 as Redis' `networking.c` does: a null is
//! `$-1` (or `*-1` for a null array), a map is a flat array of 2n elements, a set or a push
//! an array, a double a bulk string of its text, a boolean the integer 1 or 0, a big number
//! or a verbatim string a bulk string (the verbatim one without its format).
//!
//! Simple strings and errors are single lines: a `\r` or `\n` in their text is written as a
//! space, as Redis does for its formatted errors, so no text can break the framing.

use crate::double::{format_double, DOUBLE_TEXT_LEN_MAX};
use crate::number::{decimal_len_i64, decimal_len_u64, format_i64, INTEGER_TEXT_LEN_MAX};
use crate::request::ProtocolError;
use thiserror::Error;

/// The protocol version of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// RESP2, what every connection starts with.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// The sink has no room for the element; nothing was written. Wait for room (transmit what
/// is queued) and make the same call again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("the output has no room for this reply element")]
pub struct Full;

/// Where replies go: a bounded output that takes bytes.
pub trait Sink {
    /// How many more bytes fit now.
    fn room(&self) -> usize;
    /// Appends `bytes`. The writer calls it only after [`room`](Self::room) said they fit,
    /// so it cannot fail.
    fn put(&mut self, bytes: &[u8]);
}

/// A growing vector never runs out of room (tests, tools).
impl Sink for Vec<u8> {
    fn room(&self) -> usize {
        isize::MAX as usize - self.len()
    }

    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A sink over a fixed buffer, filled from the start.
#[derive(Debug)]
pub struct SliceSink<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> SliceSink<'b> {
    /// An empty sink over `buf`.
    pub fn new(buf: &'b mut [u8]) -> SliceSink<'b> {
        SliceSink { buf, len: 0 }
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// How many bytes were written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Sink for SliceSink<'_> {
    fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    fn put(&mut self, bytes: &[u8]) {
        // The writer checked `room` first.
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// The bytes of a bulk string of `len` bytes, header and trailer included.
pub fn bulk_encoded_len(len: u64) -> u64 {
    // `$`, the digits, CRLF, the data, CRLF.
    1 + decimal_len_u64(len) as u64 + 2 + len + 2
}

/// Writes replies into a sink in one protocol version. Cheap to make: make one per reply or
/// per batch of replies.
#[derive(Debug)]
pub struct ReplyWriter<'s, S: Sink + ?Sized> {
    sink: &'s mut S,
    protocol: Protocol,
}

const CRLF: &[u8] = b"\r\n";

impl<'s, S: Sink + ?Sized> ReplyWriter<'s, S> {
    /// A writer into `sink` speaking `protocol`.
    pub fn new(sink: &'s mut S, protocol: Protocol) -> Self {
        ReplyWriter { sink, protocol }
    }

    /// The protocol version this writer speaks.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    fn check(&self, len: u64) -> Result<(), Full> {
        if (self.sink.room() as u64) < len {
            Err(Full)
        } else {
            Ok(())
        }
    }

    /// Writes `parts` as one element, or nothing.
    fn element(&mut self, parts: &[&[u8]]) -> Result<(), Full> {
        let len: usize = parts.iter().map(|part| part.len()).sum();
        self.check(len as u64)?;
        for part in parts {
            self.sink.put(part);
        }
        Ok(())
    }

    /// `prefix`, the decimal `value`, CRLF, then `tail`, as one element.
    fn header_then(&mut self, prefix: u8, value: i64, tail: &[&[u8]]) -> Result<(), Full> {
        let mut digits = [0; INTEGER_TEXT_LEN_MAX];
        let number = format_i64(value, &mut digits);
        let tail_len: usize = tail.iter().map(|part| part.len()).sum();
        self.check((1 + number.len() + 2 + tail_len) as u64)?;
        self.sink.put(&[prefix]);
        self.sink.put(number);
        self.sink.put(CRLF);
        for part in tail {
            self.sink.put(part);
        }
        Ok(())
    }

    /// An aggregate header with a length that came in as `u64` (counts and sizes).
    fn length_header(&mut self, prefix: u8, len: u64, tail: &[&[u8]]) -> Result<(), Full> {
        // Lengths beyond i64::MAX cannot be sent: no peer could hold them, and RESP's
        // lengths are signed. Clamp rather than wrap; the caller's own limits are far lower.
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        self.header_then(prefix, len, tail)
    }

    /// A line type (`+`, `-`): the prefix, the text with `\r` and `\n` made spaces, CRLF.
    fn line(&mut self, prefix: u8, text: &[u8]) -> Result<(), Full> {
        self.check(1 + text.len() as u64 + 2)?;
        self.sink.put(&[prefix]);
        let mut rest = text;
        while let Some(at) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            self.sink.put(&rest[..at]);
            self.sink.put(b" ");
            rest = &rest[at + 1..];
        }
        self.sink.put(rest);
        self.sink.put(CRLF);
        Ok(())
    }

    /// A simple string: `+text\r\n`.
    pub fn simple(&mut self, text: &[u8]) -> Result<(), Full> {
        self.line(b'+', text)
    }

    /// `+OK\r\n`.
    pub fn ok(&mut self) -> Result<(), Full> {
        self.element(&[b"+OK\r\n"])
    }

    /// An error: `-text\r\n`. The text starts with the error code, as in `ERR unknown
    /// command` or `WRONGTYPE Operation against a key holding the wrong kind of value`.
    pub fn error(&mut self, text: &[u8]) -> Result<(), Full> {
        self.line(b'-', text)
    }

    /// The reply Redis sends for a protocol error before closing (nothing for the errors it
    /// closes on silently).
    pub fn protocol_error(&mut self, error: &ProtocolError) -> Result<(), Full> {
        match error.reply() {
            Some(text) => self.error(text.as_bytes()),
            None => Ok(()),
        }
    }

    /// An integer: `:n\r\n`.
    pub fn integer(&mut self, value: i64) -> Result<(), Full> {
        self.header_then(b':', value, &[])
    }

    /// A bulk string, whole: `$len\r\n` data `\r\n`.
    pub fn bulk(&mut self, data: &[u8]) -> Result<(), Full> {
        self.length_header(b'$', data.len() as u64, &[data, CRLF])
    }

    /// The header of a bulk string of `len` bytes whose data follows in
    /// [`bulk_part`](Self::bulk_part)s (exactly `len` bytes in all), then
    /// [`bulk_end`](Self::bulk_end).
    pub fn bulk_start(&mut self, len: u64) -> Result<(), Full> {
        self.length_header(b'$', len, &[])
    }

    /// Some of a bulk string's data, after [`bulk_start`](Self::bulk_start).
    pub fn bulk_part(&mut self, data: &[u8]) -> Result<(), Full> {
        self.element(&[data])
    }

    /// The end of a bulk string written in parts.
    pub fn bulk_end(&mut self) -> Result<(), Full> {
        self.element(&[CRLF])
    }

    /// A null: `_\r\n` in RESP3, the null bulk string `$-1\r\n` in RESP2 (Redis'
    /// `addReplyNull`).
    pub fn null(&mut self) -> Result<(), Full> {
        match self.protocol {
            Protocol::Resp2 => self.element(&[b"$-1\r\n"]),
            Protocol::Resp3 => self.element(&[b"_\r\n"]),
        }
    }

    /// A null array: `*-1\r\n` in RESP2, `_\r\n` in RESP3 (Redis' `addReplyNullArray`).
    pub fn null_array(&mut self) -> Result<(), Full> {
        match self.protocol {
            Protocol::Resp2 => self.element(&[b"*-1\r\n"]),
            Protocol::Resp3 => self.element(&[b"_\r\n"]),
        }
    }

    /// The header of an array of `len` elements, which follow.
    pub fn array(&mut self, len: u64) -> Result<(), Full> {
        self.length_header(b'*', len, &[])
    }

    /// The header of a map of `len` pairs (2 `len` elements, key then value, follow):
    /// `%len` in RESP3, an array of 2 `len` in RESP2.
    pub fn map(&mut self, len: u64) -> Result<(), Full> {
        match self.protocol {
            Protocol::Resp2 => self.length_header(b'*', len.saturating_mul(2), &[]),
            Protocol::Resp3 => self.length_header(b'%', len, &[]),
        }
    }

    /// The header of a set of `len` elements: `~len` in RESP3, an array in RESP2.
    pub fn set(&mut self, len: u64) -> Result<(), Full> {
        match self.protocol {
            Protocol::Resp2 => self.length_header(b'*', len, &[]),
            Protocol::Resp3 => self.length_header(b'~', len, &[]),
        }
    }

    /// The header of an out-of-band push of `len` elements: `>len` in RESP3, an array in
    /// RESP2 (how Redis sends pub/sub messages to RESP2 clients).
    pub fn push(&mut self, len: u64) -> Result<(), Full> {
        match self.protocol {
            Protocol::Resp2 => self.length_header(b'*', len, &[]),
            Protocol::Resp3 => self.length_header(b'>', len, &[]),
        }
    }

    /// A double in Redis' text (see [`crate::double`]): `,text\r\n` in RESP3, a bulk string
    /// of the text in RESP2.
    pub fn double(&mut self, value: f64) -> Result<(), Full> {
        let mut buf = [0; DOUBLE_TEXT_LEN_MAX];
        let text = format_double(value, &mut buf);
        match self.protocol {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => self.element(&[b",", text, CRLF]),
        }
    }

    /// A boolean: `#t\r\n` or `#f\r\n` in RESP3, the integer 1 or 0 in RESP2.
    pub fn boolean(&mut self, value: bool) -> Result<(), Full> {
        match (self.protocol, value) {
            (Protocol::Resp2, true) => self.element(&[b":1\r\n"]),
            (Protocol::Resp2, false) => self.element(&[b":0\r\n"]),
            (Protocol::Resp3, true) => self.element(&[b"#t\r\n"]),
            (Protocol::Resp3, false) => self.element(&[b"#f\r\n"]),
        }
    }

    /// A big number given as its decimal digits (with an optional `-`): `(digits\r\n` in
    /// RESP3, a bulk string in RESP2.
    pub fn big_number(&mut self, digits: &[u8]) -> Result<(), Full> {
        match self.protocol {
            Protocol::Resp2 => self.bulk(digits),
            Protocol::Resp3 => self.line(b'(', digits),
        }
    }

    /// A verbatim string with its three-byte format (`txt`, `mkd`): `=len\r\nfmt:text\r\n`
    /// in RESP3, a bulk string of the text alone in RESP2.
    pub fn verbatim(&mut self, format: &[u8; 3], text: &[u8]) -> Result<(), Full> {
        match self.protocol {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => {
                self.length_header(b'=', text.len() as u64 + 4, &[format, b":", text, CRLF])
            }
        }
    }

    /// A blob error (RESP3 `!len\r\n...\r\n`, for error texts with any bytes); in RESP2 a
    /// simple error of the same text. Redis itself never sends one.
    pub fn blob_error(&mut self, text: &[u8]) -> Result<(), Full> {
        match self.protocol {
            Protocol::Resp2 => self.error(text),
            Protocol::Resp3 => self.length_header(b'!', text.len() as u64, &[text, CRLF]),
        }
    }
}

/// How many bytes `value` takes as an integer reply.
pub fn integer_encoded_len(value: i64) -> usize {
    1 + decimal_len_i64(value) + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(
        write: impl Fn(&mut ReplyWriter<'_, Vec<u8>>) -> Result<(), Full>,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut two = Vec::new();
        write(&mut ReplyWriter::new(&mut two, Protocol::Resp2)).unwrap();
        let mut three = Vec::new();
        write(&mut ReplyWriter::new(&mut three, Protocol::Resp3)).unwrap();
        (two, three)
    }

    fn same(write: impl Fn(&mut ReplyWriter<'_, Vec<u8>>) -> Result<(), Full>, expected: &[u8]) {
        let (two, three) = both(write);
        assert_eq!(
            two.escape_ascii().to_string(),
            expected.escape_ascii().to_string()
        );
        assert_eq!(
            three.escape_ascii().to_string(),
            expected.escape_ascii().to_string()
        );
    }

    fn differ(
        write: impl Fn(&mut ReplyWriter<'_, Vec<u8>>) -> Result<(), Full>,
        resp2: &[u8],
        resp3: &[u8],
    ) {
        let (two, three) = both(write);
        assert_eq!(
            two.escape_ascii().to_string(),
            resp2.escape_ascii().to_string()
        );
        assert_eq!(
            three.escape_ascii().to_string(),
            resp3.escape_ascii().to_string()
        );
    }

    #[test]
    fn simple_strings_and_errors() {
        same(|w| w.simple(b"PONG"), b"+PONG\r\n");
        same(|w| w.ok(), b"+OK\r\n");
        same(|w| w.simple(b""), b"+\r\n");
        same(
            |w| w.error(b"ERR unknown command 'FOO'"),
            b"-ERR unknown command 'FOO'\r\n",
        );
        // No text can break the line.
        same(|w| w.simple(b"a\r\nb\nc"), b"+a  b c\r\n");
        same(|w| w.error(b"ERR bad\r\n"), b"-ERR bad  \r\n");
    }

    #[test]
    fn protocol_errors_are_written_with_redis_words() {
        same(
            |w| w.protocol_error(&ProtocolError::ExpectedDollar(b'x')),
            b"-ERR Protocol error: expected '$', got 'x'\r\n",
        );
        same(
            |w| w.protocol_error(&ProtocolError::InvalidBulkLength),
            b"-ERR Protocol error: invalid bulk length\r\n",
        );
        same(
            |w| w.protocol_error(&ProtocolError::QueryBufferLimit { len: 1 }),
            b"",
        );
    }

    #[test]
    fn integers() {
        same(|w| w.integer(0), b":0\r\n");
        same(|w| w.integer(-42), b":-42\r\n");
        same(|w| w.integer(i64::MAX), b":9223372036854775807\r\n");
        same(|w| w.integer(i64::MIN), b":-9223372036854775808\r\n");
        assert_eq!(integer_encoded_len(i64::MIN), 23);
    }

    #[test]
    fn bulk_strings_whole_and_in_parts() {
        same(|w| w.bulk(b"hello"), b"$5\r\nhello\r\n");
        same(|w| w.bulk(b""), b"$0\r\n\r\n");
        same(|w| w.bulk(b"a\r\nb"), b"$4\r\na\r\nb\r\n");
        same(
            |w| {
                w.bulk_start(10)?;
                w.bulk_part(b"01234")?;
                w.bulk_part(b"56789")?;
                w.bulk_end()
            },
            b"$10\r\n0123456789\r\n",
        );
        assert_eq!(bulk_encoded_len(5), 11);
        assert_eq!(bulk_encoded_len(0), 6);
        assert_eq!(
            bulk_encoded_len(512 * 1024 * 1024),
            1 + 9 + 2 + 536_870_912 + 2
        );
    }

    #[test]
    fn nulls_follow_the_protocol() {
        differ(|w| w.null(), b"$-1\r\n", b"_\r\n");
        differ(|w| w.null_array(), b"*-1\r\n", b"_\r\n");
    }

    #[test]
    fn aggregates_fall_back_to_arrays_in_resp2() {
        same(|w| w.array(3), b"*3\r\n");
        same(|w| w.array(0), b"*0\r\n");
        differ(|w| w.map(2), b"*4\r\n", b"%2\r\n");
        differ(|w| w.set(3), b"*3\r\n", b"~3\r\n");
        differ(|w| w.push(3), b"*3\r\n", b">3\r\n");
    }

    #[test]
    fn doubles_booleans_big_numbers_verbatim() {
        differ(|w| w.double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n");
        differ(|w| w.double(3.0), b"$1\r\n3\r\n", b",3\r\n");
        differ(|w| w.double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n");
        differ(
            |w| w.double(f64::NEG_INFINITY),
            b"$4\r\n-inf\r\n",
            b",-inf\r\n",
        );
        differ(|w| w.double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n");
        differ(
            |w| w.double(0.1 + 0.2),
            b"$19\r\n0.30000000000000004\r\n",
            b",0.30000000000000004\r\n",
        );
        differ(|w| w.boolean(true), b":1\r\n", b"#t\r\n");
        differ(|w| w.boolean(false), b":0\r\n", b"#f\r\n");
        differ(
            |w| w.big_number(b"3492890328409238509324850943850943825024385"),
            b"$43\r\n3492890328409238509324850943850943825024385\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
        );
        differ(
            |w| w.verbatim(b"txt", b"Some string"),
            b"$11\r\nSome string\r\n",
            b"=15\r\ntxt:Some string\r\n",
        );
        differ(
            |w| w.blob_error(b"SYNTAX invalid syntax"),
            b"-SYNTAX invalid syntax\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
        );
    }

    #[test]
    fn a_full_sink_takes_nothing_of_the_element() {
        let mut buf = [0u8; 8];
        let mut sink = SliceSink::new(&mut buf);
        let mut w = ReplyWriter::new(&mut sink, Protocol::Resp2);
        assert_eq!(w.bulk(b"hello"), Err(Full));
        assert_eq!(w.integer(1234), Ok(()));
        assert_eq!(w.simple(b"toolong"), Err(Full));
        assert_eq!(w.bulk_start(100), Err(Full));
        assert_eq!(w.ok(), Err(Full));
        assert_eq!(sink.written(), b":1234\r\n");
        assert_eq!(sink.len(), 7);
    }

    #[test]
    fn a_nested_reply_in_both_versions() {
        // HGETALL-like: a map of two pairs.
        differ(
            |w| {
                w.map(2)?;
                w.bulk(b"a")?;
                w.integer(1)?;
                w.bulk(b"b")?;
                w.null()
            },
            b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n$-1\r\n",
            b"%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n_\r\n",
        );
    }
}
