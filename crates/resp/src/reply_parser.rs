//! The reply parser: a server's RESP2 and RESP3 replies read incrementally, for the
//! project's load generator and tests.
//!
//! It is driven like the request parser (see [`crate::request`]): [`ReplyParser::advance`]
//! over the pieces of the stream, stopping after each complete reply, which stays readable
//! until the next call. A reply comes out as a flat list of [`Frame`]s in prefix order: an
//! aggregate's frame (with its length) is followed by its elements' frames. Strings are
//! [`Span`]s of the stream, read back with [`crate::pieces::read_span`]; numbers are read as
//! they arrive. So a reply of any size costs a few words of state per level of nesting and
//! one frame per element, never a copy of the stream.
//!
//! Unlike the request parser, which mirrors Redis' leniency, this one is strict (every line
//! ends in `\r\n`, a bulk's data is followed by `\r\n`): it reads our own server and Redis,
//! and a deviation is a bug worth seeing. Every length is judged against the limits before
//! anything else happens, and nesting deeper than [`ReplyLimits::depth_max`] is refused, so
//! hostile input cannot make it allocate or recurse without bound.
//!
//! Streamed strings and aggregates (`$?`, `*?`), which RESP3 defines but Redis never sends,
//! are refused as invalid lengths.

use crate::number::NumberReader;
use crate::pieces::Span;
use crate::request::Step;
use thiserror::Error;

/// The longest bulk string accepted (Redis' `proto-max-bulk-len`).
pub const REPLY_BULK_LEN_MAX: u64 = 512 * 1024 * 1024;
/// The most elements in one aggregate (Redis' own replies are limited by memory only; an
/// array of 2^31 elements is no reply a load generator waits for).
pub const REPLY_AGGREGATE_LEN_MAX: u64 = i32::MAX as u64;
/// The deepest nesting of aggregates accepted (Redis' replies nest two or three deep; hiredis
/// stops at 7; a little room for modules and tests).
pub const REPLY_DEPTH_MAX: usize = 64;
/// The most frames in one reply (bounds the frame list).
pub const REPLY_FRAMES_MAX: usize = 1 << 20;
/// The longest simple string, error, double or big number line.
pub const REPLY_LINE_LEN_MAX: usize = 64 * 1024;
/// Frame slots kept between replies; after a larger reply the list is cut back to this.
pub const FRAMES_KEPT_MAX: usize = 1024;

/// The reply parser's limits; [`ReplyLimits::default`] is the constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimits {
    /// The longest bulk string, blob error or verbatim string.
    pub bulk_len_max: u64,
    /// The most elements (pairs, for maps and attributes) in one aggregate.
    pub aggregate_len_max: u64,
    /// The deepest nesting of aggregates.
    pub depth_max: usize,
    /// The most frames in one reply.
    pub frames_max: usize,
    /// The longest line of a line type.
    pub line_len_max: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        ReplyLimits {
            bulk_len_max: REPLY_BULK_LEN_MAX,
            aggregate_len_max: REPLY_AGGREGATE_LEN_MAX,
            depth_max: REPLY_DEPTH_MAX,
            frames_max: REPLY_FRAMES_MAX,
            line_len_max: REPLY_LINE_LEN_MAX,
        }
    }
}

/// One element of a reply. Aggregates carry their length; their elements follow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Frame {
    /// `+text`: the text.
    Simple(Span),
    /// `-CODE message`: the text.
    Error(Span),
    /// `:n`.
    Integer(i64),
    /// `$len` and data: the data.
    Bulk(Span),
    /// RESP2's null bulk string `$-1`.
    NullBulk,
    /// RESP2's null array `*-1`.
    NullArray,
    /// RESP3's null `_`.
    Null,
    /// `,text`: the text (Redis writes `inf`, `-inf`, `nan` or a decimal; see
    /// [`crate::double::parse_double`]).
    Double(Span),
    /// `#t` or `#f`.
    Boolean(bool),
    /// `(digits`: the digits.
    BigNumber(Span),
    /// `!len` and data: the error text.
    BlobError(Span),
    /// `=len` and data: all of it, the three-byte format and `:` first.
    Verbatim(Span),
    /// `*n`: n elements follow.
    Array(u64),
    /// `%n`: n key-value pairs (2n frames' values) follow.
    Map(u64),
    /// `~n`: n elements follow.
    Set(u64),
    /// `>n`: an out-of-band push of n elements.
    Push(u64),
    /// `|n`: n key-value pairs of metadata follow, then the value they describe (which is
    /// the element; the attribute does not count as one).
    Attribute(u64),
}

/// A reply broke RESP. Fatal for the connection: the stream cannot be followed after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// A reply started with a byte that is no RESP type.
    #[error("unknown reply type byte {0:#04x}")]
    UnknownType(u8),
    /// A length was not an integer, or negative other than RESP2's `-1` nulls.
    #[error("invalid length in a reply")]
    InvalidLength,
    /// An integer reply was not an integer.
    #[error("invalid integer reply")]
    InvalidInteger,
    /// A boolean was not `t` or `f`.
    #[error("invalid boolean reply")]
    InvalidBoolean,
    /// A null had text after `_`.
    #[error("invalid null reply")]
    InvalidNull,
    /// A verbatim string shorter than its format, or without `:` after it.
    #[error("verbatim string without its format")]
    InvalidVerbatim,
    /// A line was not ended by `\r\n` (a lone `\n`, or `\r` followed by something else), or
    /// a bulk's data was not followed by `\r\n`.
    #[error("reply line or bulk not ended by CRLF")]
    ExpectedCrlf,
    /// A line longer than the limit.
    #[error("reply line longer than the limit")]
    LineTooLong,
    /// A bulk longer than the limit.
    #[error("bulk reply longer than the limit")]
    BulkTooLong,
    /// An aggregate with more elements than the limit.
    #[error("aggregate reply longer than the limit")]
    AggregateTooLong,
    /// Aggregates nested deeper than the limit.
    #[error("reply nested deeper than the limit")]
    TooDeep,
    /// More frames in one reply than the limit.
    #[error("reply with more frames than the limit")]
    TooManyFrames,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlobKind {
    Bulk,
    BlobError,
    Verbatim,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AggregateKind {
    Array,
    Map,
    Set,
    Push,
    Attribute,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineKind {
    Simple,
    Error,
    Integer,
    Double,
    BigNumber,
    Boolean,
    Null,
    BlobLen(BlobKind),
    AggregateLen(AggregateKind),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a type byte.
    Type,
    /// Inside a line: its kind, where its text starts, how long it is so far, the number it
    /// may hold, its first byte, and whether the `\r` arrived.
    Line {
        kind: LineKind,
        start: u64,
        len: usize,
        number: NumberReader,
        first: u8,
        cr: bool,
    },
    /// Inside a blob's data.
    Blob {
        kind: BlobKind,
        start: u64,
        len: u64,
        seen: u64,
    },
    /// Expecting the `\r` (`cr == false`) or `\n` after a blob's data.
    BlobEnd { cr: bool },
    /// A reply is complete.
    Complete,
}

fn blob_frame(kind: BlobKind, span: Span) -> Frame {
    match kind {
        BlobKind::Bulk => Frame::Bulk(span),
        BlobKind::BlobError => Frame::BlobError(span),
        BlobKind::Verbatim => Frame::Verbatim(span),
    }
}

/// One open aggregate: elements still to come, and whether it is an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Level {
    left: u64,
    attribute: bool,
}

/// The incremental reply parser of one connection. See the module documentation.
#[derive(Clone, Debug)]
pub struct ReplyParser {
    limits: ReplyLimits,
    state: State,
    position: u64,
    reply_start: u64,
    stack: Vec<Level>,
    frames: Vec<Frame>,
    failed: Option<ReplyError>,
}

impl ReplyParser {
    /// A parser at the start of a connection's stream (offset 0).
    pub fn new(limits: ReplyLimits) -> ReplyParser {
        ReplyParser {
            limits,
            state: State::Type,
            position: 0,
            reply_start: 0,
            stack: Vec::with_capacity(limits.depth_max.min(REPLY_DEPTH_MAX)),
            frames: Vec::new(),
            failed: None,
        }
    }

    /// The stream offset of the next byte [`advance`](Self::advance) expects.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The stream offset from which the caller must keep its pieces: the start of the reply
    /// in progress (or just completed).
    pub fn retain_from(&self) -> u64 {
        if self.state == State::Type && self.stack.is_empty() && self.frames.is_empty() {
            self.position
        } else {
            self.reply_start
        }
    }

    /// The frames of the reply that just completed, until the next
    /// [`advance`](Self::advance); `None` while a reply is in progress.
    pub fn frames(&self) -> Option<&[Frame]> {
        (self.state == State::Complete).then_some(&self.frames[..])
    }

    /// Feeds the next piece of the stream. Consumes all of it unless a reply completes inside
    /// it; then it stops just after the reply. An error is fatal.
    pub fn advance(&mut self, piece: &[u8]) -> Result<Step, ReplyError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if self.state == State::Complete {
            self.frames.clear();
            if self.frames.capacity() > FRAMES_KEPT_MAX {
                self.frames.shrink_to(FRAMES_KEPT_MAX);
            }
            self.state = State::Type;
        }
        let result = self.run(piece);
        let consumed = match result {
            Ok((consumed, _)) | Err((consumed, _)) => consumed,
        };
        debug_assert!(consumed <= piece.len());
        self.position += consumed as u64;
        match result {
            Ok((consumed, complete)) => {
                debug_assert!(complete || consumed == piece.len());
                Ok(Step { consumed, complete })
            }
            Err((_, error)) => {
                self.failed = Some(error);
                Err(error)
            }
        }
    }

    fn push_frame(&mut self, frame: Frame) -> Result<(), ReplyError> {
        if self.frames.len() >= self.limits.frames_max {
            return Err(ReplyError::TooManyFrames);
        }
        self.frames.push(frame);
        Ok(())
    }

    /// A value ended: count it in the open aggregates. True when the reply is complete.
    fn value_done(&mut self) -> bool {
        loop {
            let Some(level) = self.stack.last_mut() else {
                self.state = State::Complete;
                return true;
            };
            level.left -= 1;
            if level.left > 0 {
                self.state = State::Type;
                return false;
            }
            let attribute = level.attribute;
            self.stack.pop();
            if attribute {
                // The attribute is done; the value it describes comes next and is the element.
                self.state = State::Type;
                return false;
            }
        }
    }

    fn run(&mut self, piece: &[u8]) -> Result<(usize, bool), (usize, ReplyError)> {
        let mut at = 0;
        while at < piece.len() {
            let here = self.position + at as u64;
            match self.state {
                State::Type => {
                    if self.stack.is_empty() && self.frames.is_empty() {
                        self.reply_start = here;
                    }
                    let kind = match piece[at] {
                        b'+' => LineKind::Simple,
                        b'-' => LineKind::Error,
                        b':' => LineKind::Integer,
                        b',' => LineKind::Double,
                        b'(' => LineKind::BigNumber,
                        b'#' => LineKind::Boolean,
                        b'_' => LineKind::Null,
                        b'$' => LineKind::BlobLen(BlobKind::Bulk),
                        b'!' => LineKind::BlobLen(BlobKind::BlobError),
                        b'=' => LineKind::BlobLen(BlobKind::Verbatim),
                        b'*' => LineKind::AggregateLen(AggregateKind::Array),
                        b'%' => LineKind::AggregateLen(AggregateKind::Map),
                        b'~' => LineKind::AggregateLen(AggregateKind::Set),
                        b'>' => LineKind::AggregateLen(AggregateKind::Push),
                        b'|' => LineKind::AggregateLen(AggregateKind::Attribute),
                        other => return Err((at, ReplyError::UnknownType(other))),
                    };
                    at += 1;
                    self.state = State::Line {
                        kind,
                        start: here + 1,
                        len: 0,
                        number: NumberReader::new(),
                        first: 0,
                        cr: false,
                    };
                }
                State::Line {
                    kind,
                    start,
                    mut len,
                    mut number,
                    mut first,
                    mut cr,
                } => {
                    let mut ended = false;
                    while at < piece.len() {
                        let byte = piece[at];
                        at += 1;
                        if cr {
                            if byte != b'\n' {
                                return Err((at, ReplyError::ExpectedCrlf));
                            }
                            ended = true;
                            break;
                        }
                        match byte {
                            b'\r' => cr = true,
                            b'\n' => return Err((at, ReplyError::ExpectedCrlf)),
                            _ => {
                                if len == 0 {
                                    first = byte;
                                }
                                len += 1;
                                if len > self.limits.line_len_max {
                                    return Err((at, ReplyError::LineTooLong));
                                }
                                number.push(byte);
                            }
                        }
                    }
                    if !ended {
                        self.state = State::Line {
                            kind,
                            start,
                            len,
                            number,
                            first,
                            cr,
                        };
                        continue;
                    }
                    let span = Span {
                        offset: start,
                        len: len as u64,
                    };
                    if self
                        .line_done(kind, span, number, first)
                        .map_err(|e| (at, e))?
                    {
                        return Ok((at, true));
                    }
                }
                State::Blob {
                    kind,
                    start,
                    len,
                    seen,
                } => {
                    let available = (piece.len() - at) as u64;
                    let take = (len - seen).min(available);
                    if kind == BlobKind::Verbatim && seen <= 3 && 3 < seen + take {
                        // The format is three bytes and a colon.
                        if piece[at + (3 - seen) as usize] != b':' {
                            return Err((at, ReplyError::InvalidVerbatim));
                        }
                    }
                    // `take` is at most what is left of the piece.
                    at += take as usize;
                    let seen = seen + take;
                    if seen < len {
                        self.state = State::Blob {
                            kind,
                            start,
                            len,
                            seen,
                        };
                        continue;
                    }
                    let span = Span { offset: start, len };
                    self.push_frame(blob_frame(kind, span))
                        .map_err(|e| (at, e))?;
                    self.state = State::BlobEnd { cr: false };
                }
                State::BlobEnd { cr } => {
                    let byte = piece[at];
                    at += 1;
                    if !cr {
                        if byte != b'\r' {
                            return Err((at, ReplyError::ExpectedCrlf));
                        }
                        self.state = State::BlobEnd { cr: true };
                        continue;
                    }
                    if byte != b'\n' {
                        return Err((at, ReplyError::ExpectedCrlf));
                    }
                    if self.value_done() {
                        return Ok((at, true));
                    }
                }
                State::Complete => {
                    // `advance` starts the next reply before running.
                    debug_assert!(false, "run entered with a complete reply");
                    return Ok((at, true));
                }
            }
        }
        Ok((at, self.state == State::Complete))
    }

    /// A line ended. True when the reply is complete.
    fn line_done(
        &mut self,
        kind: LineKind,
        span: Span,
        number: NumberReader,
        first: u8,
    ) -> Result<bool, ReplyError> {
        let frame = match kind {
            LineKind::Simple => Frame::Simple(span),
            LineKind::Error => Frame::Error(span),
            LineKind::Double => Frame::Double(span),
            LineKind::BigNumber => Frame::BigNumber(span),
            LineKind::Integer => Frame::Integer(number.finish().ok_or(ReplyError::InvalidInteger)?),
            LineKind::Boolean => match (span.len, first) {
                (1, b't') => Frame::Boolean(true),
                (1, b'f') => Frame::Boolean(false),
                _ => return Err(ReplyError::InvalidBoolean),
            },
            LineKind::Null if span.len == 0 => Frame::Null,
            LineKind::Null => return Err(ReplyError::InvalidNull),
            LineKind::BlobLen(blob) => {
                let len = match number.finish() {
                    Some(-1) if blob == BlobKind::Bulk => {
                        self.push_frame(Frame::NullBulk)?;
                        return Ok(self.value_done());
                    }
                    // Not negative, so the conversion keeps the value.
                    Some(len) if len >= 0 => len as u64,
                    _ => return Err(ReplyError::InvalidLength),
                };
                if len > self.limits.bulk_len_max {
                    return Err(ReplyError::BulkTooLong);
                }
                if blob == BlobKind::Verbatim && len < 4 {
                    return Err(ReplyError::InvalidVerbatim);
                }
                let data = Span {
                    offset: span.end() + 2,
                    len,
                };
                self.state = if len == 0 {
                    // No data: the frame now, then the CRLF.
                    self.push_frame(blob_frame(blob, data))?;
                    State::BlobEnd { cr: false }
                } else {
                    State::Blob {
                        kind: blob,
                        start: data.offset,
                        len,
                        seen: 0,
                    }
                };
                return Ok(false);
            }
            LineKind::AggregateLen(aggregate) => {
                let len = match number.finish() {
                    Some(-1) if aggregate == AggregateKind::Array => {
                        self.push_frame(Frame::NullArray)?;
                        return Ok(self.value_done());
                    }
                    // Not negative, so the conversion keeps the value.
                    Some(len) if len >= 0 => len as u64,
                    _ => return Err(ReplyError::InvalidLength),
                };
                if len > self.limits.aggregate_len_max {
                    return Err(ReplyError::AggregateTooLong);
                }
                let (frame, elements) = match aggregate {
                    AggregateKind::Array => (Frame::Array(len), len),
                    AggregateKind::Set => (Frame::Set(len), len),
                    AggregateKind::Push => (Frame::Push(len), len),
                    // At most i32::MAX pairs by default; a configured limit above u64::MAX / 2
                    // saturates, which no stream can reach.
                    AggregateKind::Map => (Frame::Map(len), len.saturating_mul(2)),
                    AggregateKind::Attribute => (Frame::Attribute(len), len.saturating_mul(2)),
                };
                self.push_frame(frame)?;
                if elements == 0 {
                    if aggregate == AggregateKind::Attribute {
                        self.state = State::Type;
                        return Ok(false);
                    }
                    return Ok(self.value_done());
                }
                if self.stack.len() >= self.limits.depth_max {
                    return Err(ReplyError::TooDeep);
                }
                self.stack.push(Level {
                    left: elements,
                    attribute: aggregate == AggregateKind::Attribute,
                });
                self.state = State::Type;
                return Ok(false);
            }
        };
        self.push_frame(frame)?;
        Ok(self.value_done())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pieces::Piece;
    use crate::reply::{Protocol, ReplyWriter};
    use crate::value::Value;
    use proptest::prelude::*;

    /// Parses `input` as pieces and returns each reply's frames and value, and the error.
    fn parse_with(
        parts: &[&[u8]],
        limits: ReplyLimits,
    ) -> (Vec<(Vec<Frame>, Value)>, Option<ReplyError>) {
        let mut held = Vec::new();
        let mut offset = 0;
        for part in parts {
            held.push(Piece {
                offset,
                bytes: part,
            });
            offset += part.len() as u64;
        }
        let mut parser = ReplyParser::new(limits);
        let mut replies = Vec::new();
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                match parser.advance(rest) {
                    Err(error) => return (replies, Some(error)),
                    Ok(step) => {
                        rest = &rest[step.consumed..];
                        if step.complete {
                            let frames = parser.frames().unwrap().to_vec();
                            let value = Value::from_frames(&frames, &held).unwrap();
                            replies.push((frames, value));
                        }
                    }
                }
            }
        }
        (replies, None)
    }

    fn one(input: &[u8]) -> (Vec<Frame>, Value) {
        let (mut replies, error) = parse_with(&[input], ReplyLimits::default());
        assert_eq!(error, None, "{}", input.escape_ascii());
        assert_eq!(replies.len(), 1, "{}", input.escape_ascii());
        replies.pop().unwrap()
    }

    fn value(input: &[u8]) -> Value {
        one(input).1
    }

    fn refuse(input: &[u8], error: ReplyError) {
        refuse_with(input, ReplyLimits::default(), error);
    }

    fn refuse_with(input: &[u8], limits: ReplyLimits, error: ReplyError) {
        let (_, found) = parse_with(&[input], limits);
        assert_eq!(found, Some(error), "{}", input.escape_ascii());
    }

    fn span(offset: u64, len: u64) -> Span {
        Span { offset, len }
    }

    #[test]
    fn line_types() {
        assert_eq!(one(b"+OK\r\n").0, vec![Frame::Simple(span(1, 2))]);
        assert_eq!(value(b"+\r\n"), Value::Simple(b"".to_vec()));
        assert_eq!(value(b"-ERR no\r\n"), Value::Error(b"ERR no".to_vec()));
        assert_eq!(value(b":-42\r\n"), Value::Integer(-42));
        assert_eq!(value(b":9223372036854775807\r\n"), Value::Integer(i64::MAX));
        assert_eq!(value(b",1.5\r\n"), Value::Double(1.5));
        assert_eq!(value(b",-inf\r\n"), Value::Double(f64::NEG_INFINITY));
        assert_eq!(value(b",nan\r\n"), Value::Double(f64::NAN));
        assert_eq!(value(b"#t\r\n"), Value::Boolean(true));
        assert_eq!(value(b"#f\r\n"), Value::Boolean(false));
        assert_eq!(value(b"_\r\n"), Value::Null);
        assert_eq!(
            value(b"(123456789012345678901234567890\r\n"),
            Value::BigNumber(b"123456789012345678901234567890".to_vec())
        );
    }

    #[test]
    fn blob_types() {
        assert_eq!(one(b"$5\r\nhello\r\n").0, vec![Frame::Bulk(span(4, 5))]);
        assert_eq!(value(b"$0\r\n\r\n"), Value::Bulk(Vec::new()));
        assert_eq!(value(b"$4\r\na\r\nb\r\n"), Value::Bulk(b"a\r\nb".to_vec()));
        assert_eq!(one(b"$-1\r\n").0, vec![Frame::NullBulk]);
        assert_eq!(
            value(b"!9\r\nSYNTAX no\r\n"),
            Value::BlobError(b"SYNTAX no".to_vec())
        );
        assert_eq!(value(b"!0\r\n\r\n"), Value::BlobError(Vec::new()));
        assert_eq!(
            value(b"=15\r\ntxt:Some string\r\n"),
            Value::Verbatim {
                format: *b"txt",
                text: b"Some string".to_vec()
            }
        );
        assert_eq!(
            value(b"=4\r\nmkd:\r\n"),
            Value::Verbatim {
                format: *b"mkd",
                text: Vec::new()
            }
        );
    }

    #[test]
    fn aggregates_nest() {
        let (frames, v) = one(b"*2\r\n*1\r\n:1\r\n$1\r\nx\r\n");
        assert_eq!(
            frames,
            vec![
                Frame::Array(2),
                Frame::Array(1),
                Frame::Integer(1),
                Frame::Bulk(span(16, 1))
            ]
        );
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Array(vec![Value::Integer(1)]),
                Value::Bulk(b"x".to_vec())
            ])
        );
        assert_eq!(value(b"*0\r\n"), Value::Array(Vec::new()));
        assert_eq!(one(b"*-1\r\n").0, vec![Frame::NullArray]);
        assert_eq!(
            value(b"%2\r\n+a\r\n:1\r\n+b\r\n_\r\n"),
            Value::Map(vec![
                (Value::Simple(b"a".to_vec()), Value::Integer(1)),
                (Value::Simple(b"b".to_vec()), Value::Null),
            ])
        );
        assert_eq!(
            value(b"~2\r\n:1\r\n:2\r\n"),
            Value::Set(vec![Value::Integer(1), Value::Integer(2)])
        );
        assert_eq!(
            value(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
            Value::Push(vec![
                Value::Bulk(b"message".to_vec()),
                Value::Bulk(b"ch".to_vec()),
                Value::Bulk(b"hi".to_vec()),
            ])
        );
        assert_eq!(value(b"%0\r\n"), Value::Map(Vec::new()));
    }

    #[test]
    fn attributes_describe_the_next_value_and_are_not_elements() {
        let (frames, v) = one(b"|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n");
        assert_eq!(frames[0], Frame::Attribute(1));
        assert_eq!(frames.len(), 4);
        assert_eq!(v, Value::Bulk(b"v".to_vec()));
        // Inside an array, the attributed value is the one element.
        let v = value(b"*2\r\n:1\r\n|1\r\n+k\r\n+v\r\n:2\r\n");
        assert_eq!(v, Value::Array(vec![Value::Integer(1), Value::Integer(2)]));
        // An empty attribute still needs its value.
        assert_eq!(value(b"|0\r\n:7\r\n"), Value::Integer(7));
    }

    #[test]
    fn pipelined_replies_stop_after_each() {
        let input = b"+OK\r\n:1\r\n$3\r\nabc\r\n";
        let mut parser = ReplyParser::new(ReplyLimits::default());
        assert_eq!(
            parser.advance(input),
            Ok(Step {
                consumed: 5,
                complete: true
            })
        );
        assert_eq!(parser.frames(), Some(&[Frame::Simple(span(1, 2))][..]));
        assert_eq!(parser.retain_from(), 0);
        assert_eq!(
            parser.advance(&input[5..]),
            Ok(Step {
                consumed: 4,
                complete: true
            })
        );
        assert_eq!(parser.frames(), Some(&[Frame::Integer(1)][..]));
        assert_eq!(
            parser.advance(&input[9..11]),
            Ok(Step {
                consumed: 2,
                complete: false
            })
        );
        assert_eq!(parser.frames(), None);
        assert_eq!(parser.retain_from(), 9);
        assert_eq!(
            parser.advance(&input[11..]),
            Ok(Step {
                consumed: 7,
                complete: true
            })
        );
        assert_eq!(parser.frames(), Some(&[Frame::Bulk(span(13, 3))][..]));
    }

    #[test]
    fn malformed_replies_are_refused() {
        refuse(b"?\r\n", ReplyError::UnknownType(b'?'));
        refuse(b"+a\nb\r\n", ReplyError::ExpectedCrlf);
        refuse(b"+a\rb\r\n", ReplyError::ExpectedCrlf);
        refuse(b"$1\r\nab\r\n", ReplyError::ExpectedCrlf);
        refuse(b"$1\r\na\rx", ReplyError::ExpectedCrlf);
        refuse(b":abc\r\n", ReplyError::InvalidInteger);
        refuse(b":\r\n", ReplyError::InvalidInteger);
        refuse(b"#x\r\n", ReplyError::InvalidBoolean);
        refuse(b"#tt\r\n", ReplyError::InvalidBoolean);
        refuse(b"_x\r\n", ReplyError::InvalidNull);
        refuse(b"$-2\r\n", ReplyError::InvalidLength);
        refuse(b"*-2\r\n", ReplyError::InvalidLength);
        refuse(b"%-1\r\n", ReplyError::InvalidLength);
        refuse(b"!-1\r\n", ReplyError::InvalidLength);
        refuse(b"$?\r\n", ReplyError::InvalidLength);
        refuse(b"*?\r\n", ReplyError::InvalidLength);
        refuse(b"=3\r\ntxt\r\n", ReplyError::InvalidVerbatim);
        refuse(b"=5\r\ntxtxa\r\n", ReplyError::InvalidVerbatim);
    }

    #[test]
    fn limits_are_refused_before_anything_is_reserved() {
        refuse(b"$536870913\r\n", ReplyError::BulkTooLong);
        refuse(b"*2147483648\r\n", ReplyError::AggregateTooLong);
        refuse(b"%2147483648\r\n", ReplyError::AggregateTooLong);
        let small = ReplyLimits {
            bulk_len_max: 4,
            aggregate_len_max: 2,
            depth_max: 2,
            frames_max: 4,
            line_len_max: 3,
        };
        refuse_with(b"$5\r\n", small, ReplyError::BulkTooLong);
        refuse_with(b"*3\r\n", small, ReplyError::AggregateTooLong);
        refuse_with(b"*1\r\n*1\r\n*1\r\n", small, ReplyError::TooDeep);
        refuse_with(
            b"*2\r\n*2\r\n:1\r\n:2\r\n:3\r\n",
            small,
            ReplyError::TooManyFrames,
        );
        refuse_with(b"+abcd", small, ReplyError::LineTooLong);
        assert_eq!(parse_with(&[b"*1\r\n*1\r\n:1\r\n"], small).1, None);
        let mut parser = ReplyParser::new(ReplyLimits::default());
        assert_eq!(
            parser.advance(b"*2147483647\r\n"),
            Ok(Step {
                consumed: 13,
                complete: false
            })
        );
        assert!(parser.frames.capacity() < 16);
    }

    #[test]
    fn deep_nesting_is_refused_at_the_default_depth() {
        let deep = b"*1\r\n".repeat(REPLY_DEPTH_MAX + 1);
        refuse(&deep, ReplyError::TooDeep);
        let mut ok = b"*1\r\n".repeat(REPLY_DEPTH_MAX);
        ok.extend_from_slice(b":1\r\n");
        assert_eq!(parse_with(&[&ok], ReplyLimits::default()).1, None);
    }

    #[test]
    fn errors_are_final() {
        let mut parser = ReplyParser::new(ReplyLimits::default());
        assert_eq!(parser.advance(b"?"), Err(ReplyError::UnknownType(b'?')));
        assert_eq!(
            parser.advance(b"+OK\r\n"),
            Err(ReplyError::UnknownType(b'?'))
        );
    }

    #[test]
    fn every_split_gives_the_same_replies() {
        let input: &[u8] =
            b"%1\r\n$1\r\nk\r\n*2\r\n,1.5\r\n=6\r\ntxt:ab\r\n|1\r\n+a\r\n+b\r\n:7\r\n$-1\r\n";
        let (expected, error) = parse_with(&[input], ReplyLimits::default());
        assert_eq!(error, None);
        assert_eq!(expected.len(), 3);
        for cut in 0..=input.len() {
            for second in cut..=input.len() {
                let parts = [&input[..cut], &input[cut..second], &input[second..]];
                let (replies, error) = parse_with(&parts, ReplyLimits::default());
                assert_eq!(error, None);
                let values: Vec<&Value> = replies.iter().map(|(_, v)| v).collect();
                let expected: Vec<&Value> = expected.iter().map(|(_, v)| v).collect();
                assert_eq!(values, expected, "cut at {cut} and {second}");
            }
        }
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..24);
        let leaf = prop_oneof![
            bytes().prop_map(Value::Simple),
            bytes().prop_map(Value::Error),
            bytes().prop_map(Value::BlobError),
            any::<i64>().prop_map(Value::Integer),
            bytes().prop_map(Value::Bulk),
            Just(Value::Null),
            Just(Value::NullArray),
            any::<u64>().prop_map(|bits| Value::Double(f64::from_bits(bits))),
            any::<f64>().prop_map(Value::Double),
            any::<bool>().prop_map(Value::Boolean),
            "-?[1-9][0-9]{0,40}".prop_map(|d| Value::BigNumber(d.into_bytes())),
            ("[a-z]{3}", bytes()).prop_map(|(f, text)| Value::Verbatim {
                format: f.as_bytes().try_into().expect("three bytes"),
                text,
            }),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Push),
                proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn written_replies_read_back_in_any_pieces(
            values in proptest::collection::vec(arb_value(), 1..4),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
            resp3 in any::<bool>(),
        ) {
            let protocol = if resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
            let mut out = Vec::new();
            for v in &values {
                v.write(&mut ReplyWriter::new(&mut out, protocol)).unwrap();
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (out.len() + 1)).collect();
            points.sort_unstable();
            let mut parts = Vec::new();
            let mut from = 0;
            for point in points {
                parts.push(&out[from..point]);
                from = point;
            }
            parts.push(&out[from..]);
            let (replies, error) = parse_with(&parts, ReplyLimits::default());
            prop_assert_eq!(error, None);
            let read: Vec<Value> = replies.into_iter().map(|(_, v)| v).collect();
            let expected: Vec<Value> = values.iter().map(|v| v.as_read_back(protocol)).collect();
            prop_assert_eq!(read, expected);
        }
    }
}
