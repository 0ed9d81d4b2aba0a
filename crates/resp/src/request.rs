//! The request parser: Redis commands, multibulk (`*N\r\n$len\r\n...`) or inline
//! (`SET k v\r\n`), read incrementally from the pieces of a connection's stream.
//!
//! # How it is driven
//!
//! ```text
//! let mut parser = RequestParser::new(Limits::default());
//! for each piece the stack hands over, in stream order:
//!     keep the piece while the parser may point into it (parser.retain_from())
//!     let mut rest = piece;
//!     while !rest.is_empty():
//!         let step = parser.advance(rest)?;     // Err: reply err.reply(), then close
//!         rest = &rest[step.consumed..];
//!         if step.complete:
//!             let args = parser.args(&held_pieces, &mut scratch)?;   // the command
//!             ...                                // until the next advance
//! ```
//!
//! `advance` consumes the whole piece unless a request completes inside it; then it stops
//! just after that request, and the request stays readable until the next call to
//! `advance`, which starts the next one. Empty requests (`*0\r\n`, `*-1\r\n`, blank inline
//! lines) are skipped without a completion, as Redis does.
//!
//! # What it keeps
//!
//! Redis copies every received byte into the client's query buffer and then copies each
//! argument out of it into its own object. Here the stream is not copied at all: the parser
//! keeps its progress between calls (which argument, how many bytes of the bulk are left, the
//! length number half read, the half-read line of an inline command) and reports each
//! multibulk argument as a [`Span`] of the stream. A 512 MiB value arriving over thousands of
//! pieces costs one subtraction per piece; nothing is rescanned, so there is no quadratic
//! case. The caller, who holds the pieces, reads an argument back borrowed when one piece
//! holds it and copied only when it straddles pieces ([`RequestParser::args`]), or copies a
//! large value straight to its destination ([`crate::pieces::chunks`]).
//!
//! Inline commands are the exception: their arguments need unescaping, so the line (at most
//! [`PROTO_INLINE_MAX_SIZE`] bytes) is copied into the parser's line buffer and split there in
//! place.
//!
//! # Limits and errors
//!
//! Each limit is Redis' default (and the name of its setting is in the constant's
//! documentation), and each length is judged the moment its line ends, before anything is
//! reserved for it. The span list and the line buffer are reused from request to request;
//! they grow only for a request larger than any before (bounded by the limits) and are cut
//! back to a small size after an unusually large one, so an idle connection holds little.
//!
//! A protocol error is fatal for the connection, as in Redis: answer with
//! [`ProtocolError::reply`] (Redis' exact words) and close after the reply. The parser
//! refuses every later call with the same error.
//!
//! Redis' behaviour is mirrored where a client could tell the difference: the byte after
//! each `\r` of a length line and the two bytes after a bulk are skipped without being
//! checked (Redis steps over them); a bulk-length line's first byte is judged only when the
//! line ends, so a `$`-less line of 64 KiB without `\r` is "too big bulk count string", not
//! "expected '$'". Where Redis depends on how its reads happened to fall, this parser
//! decides the same way for every split of the stream: a line longer than the limit is
//! refused even if its end would have arrived in the same read, and a NUL byte does not
//! hide the end of an inline line (Redis' `strchr` stops at it and waits for 64 KiB).
//!
//! The error words and these corner cases (every input in this module's tests that makes an
//! error, the unchecked bytes, the skipped empty requests, the inline quoting rules, the
//! unauthenticated limits) were sent to a real redis-server 7.0.15 over a socket, and its
//! replies and closes matched, except the two choices above: Redis waits on `*1\r\n\x003\r\n`
//! and on an inline line holding a NUL, where this parser answers at once.

use crate::inline;
use crate::number::NumberReader;
use crate::pieces::{self, Piece, PiecesError, Span};
use thiserror::Error;

/// `proto-max-bulk-len`: the longest bulk argument, 512 MiB by default.
pub const PROTO_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;
/// `PROTO_INLINE_MAX_SIZE`: the longest inline command line, and the longest length line of
/// a multibulk request, 64 KiB (a compile-time constant in Redis).
pub const PROTO_INLINE_MAX_SIZE: usize = 64 * 1024;
/// The most arguments in one multibulk request. Redis 7 takes up to `INT_MAX` (older
/// versions 1024 * 1024) and grows its argument vector as the arguments arrive; so does this
/// parser, so the count alone reserves nothing.
pub const MULTIBULK_LEN_MAX: u64 = i32::MAX as u64;
/// `client-query-buffer-limit`, 1 GiB: here, the most bytes of one request the caller may
/// have to keep (from its first argument's data to the stream position). Redis closes the
/// connection without a reply past it.
pub const CLIENT_QUERY_BUFFER_LIMIT: u64 = 1024 * 1024 * 1024;
/// The most arguments a client may send before it authenticates, when a password is required
/// (Redis' `processMultibulkBuffer`: more than 10 is "unauthenticated multibulk length").
pub const UNAUTHENTICATED_MULTIBULK_LEN_MAX: u64 = 10;
/// The longest argument before authentication, when a password is required (more than
/// 16384 bytes is "unauthenticated bulk length").
pub const UNAUTHENTICATED_BULK_LEN_MAX: u64 = 16 * 1024;
/// Capacity reserved at once for a request's arguments when its count is read, as Redis
/// reserves `min(count, 1024)`; beyond it the list grows as arguments arrive.
pub const ARGS_RESERVE_MAX: usize = 1024;
/// Argument slots kept between requests; after a request with more, the list is cut back so
/// that an idle connection holds at most this many (32 bytes each).
pub const ARGS_KEPT_MAX: usize = 64;
/// Bytes of inline line buffer kept between requests.
pub const LINE_KEPT_MAX: usize = 1024;

// A bulk of the largest size, with its length line and a full count line, fits the query
// buffer limit, so the default limits never refuse a request Redis would take for its size.
const _: () =
    assert!(CLIENT_QUERY_BUFFER_LIMIT > PROTO_MAX_BULK_LEN + 2 * PROTO_INLINE_MAX_SIZE as u64);

/// The parser's limits. [`Limits::default`] is Redis' defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest bulk argument ([`PROTO_MAX_BULK_LEN`]).
    pub bulk_len_max: u64,
    /// The most arguments in a multibulk request ([`MULTIBULK_LEN_MAX`]).
    pub args_max: u64,
    /// The longest inline line or length line ([`PROTO_INLINE_MAX_SIZE`]).
    pub inline_len_max: usize,
    /// The most bytes of one request the caller keeps ([`CLIENT_QUERY_BUFFER_LIMIT`]).
    pub query_len_max: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bulk_len_max: PROTO_MAX_BULK_LEN,
            args_max: MULTIBULK_LEN_MAX,
            inline_len_max: PROTO_INLINE_MAX_SIZE,
            query_len_max: CLIENT_QUERY_BUFFER_LIMIT,
        }
    }
}

/// A request broke the protocol. Every variant is fatal for the connection: send
/// [`reply`](Self::reply) (when it is `Some`) and close the connection after it, as Redis
/// does; the parser refuses any further input. The `Display` text is Redis' reply, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// A multibulk count line longer than the inline limit without its `\r`.
    #[error("ERR Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A bulk length line longer than the inline limit without its `\r`.
    #[error("ERR Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// The count after `*` is not an integer or exceeds the argument limit.
    #[error("ERR Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// More than [`UNAUTHENTICATED_MULTIBULK_LEN_MAX`] arguments before authentication.
    #[error("ERR Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// An argument of a multibulk request does not start with `$`; the byte found.
    #[error("ERR Protocol error: expected '$', got '{}'", .0.escape_ascii())]
    ExpectedDollar(u8),
    /// The length after `$` is not an integer, is negative, or exceeds the bulk limit.
    #[error("ERR Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An argument longer than [`UNAUTHENTICATED_BULK_LEN_MAX`] before authentication.
    #[error("ERR Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    /// An inline line longer than the inline limit.
    #[error("ERR Protocol error: too big inline request")]
    TooBigInlineRequest,
    /// An inline line with a quote never closed, or closed and followed by a non-space.
    #[error("ERR Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// The request outgrew the query buffer limit. Redis closes such a client without a
    /// reply (and logs it); `reply` is `None`.
    #[error("closing client that reached max query buffer length ({len} bytes)")]
    QueryBufferLimit {
        /// The bytes of the request the caller would have had to keep.
        len: u64,
    },
}

/// The longest reply text of a [`ProtocolError`] ("ERR Protocol error: unauthenticated
/// multibulk length" is 52 bytes).
pub const ERROR_TEXT_LEN_MAX: usize = 64;

/// The text of an error reply, without the leading `-` and the final `\r\n` (which
/// [`ReplyWriter::error`](crate::ReplyWriter::error) adds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorText {
    bytes: [u8; ERROR_TEXT_LEN_MAX],
    len: usize,
}

impl ErrorText {
    fn new(parts: &[&[u8]]) -> ErrorText {
        let mut text = ErrorText {
            bytes: [0; ERROR_TEXT_LEN_MAX],
            len: 0,
        };
        for part in parts {
            let end = text.len + part.len();
            // Every message is a fixed text below the maximum (checked by the tests).
            text.bytes[text.len..end].copy_from_slice(part);
            text.len = end;
        }
        text
    }

    /// The bytes of the text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl ProtocolError {
    /// The error reply Redis sends before it closes the connection, or `None` when it closes
    /// without a reply.
    pub fn reply(&self) -> Option<ErrorText> {
        const PREFIX: &[u8] = b"ERR Protocol error: ";
        let words: &[u8] = match self {
            ProtocolError::TooBigMultibulkCount => b"too big mbulk count string",
            ProtocolError::TooBigBulkCount => b"too big bulk count string",
            ProtocolError::InvalidMultibulkLength => b"invalid multibulk length",
            ProtocolError::UnauthenticatedMultibulkLength => b"unauthenticated multibulk length",
            ProtocolError::InvalidBulkLength => b"invalid bulk length",
            ProtocolError::UnauthenticatedBulkLength => b"unauthenticated bulk length",
            ProtocolError::TooBigInlineRequest => b"too big inline request",
            ProtocolError::UnbalancedQuotes => b"unbalanced quotes in request",
            ProtocolError::QueryBufferLimit { .. } => return None,
            ProtocolError::ExpectedDollar(byte) => {
                // Redis formats the byte with `%c`, builds the text with `strlen` (so a NUL
                // ends it there) and turns `\r` and `\n` into spaces so the reply stays one
                // line.
                let got: &[u8] = match byte {
                    0 => return Some(ErrorText::new(&[PREFIX, b"expected '$', got '"])),
                    b'\r' | b'\n' => b" ",
                    other => std::slice::from_ref(other),
                };
                return Some(ErrorText::new(&[PREFIX, b"expected '$', got '", got, b"'"]));
            }
        };
        Some(ErrorText::new(&[PREFIX, words]))
    }
}

/// What one call to [`RequestParser::advance`] (or [`ReplyParser::advance`]) did.
///
/// [`ReplyParser::advance`]: crate::ReplyParser::advance
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the piece consumed: all of them unless a request completed.
    pub consumed: usize,
    /// A request (or reply) completed at `consumed`; read it before the next `advance`.
    pub complete: bool,
}

/// The two forms of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `*N\r\n` followed by N bulk strings: what every client library sends.
    Multibulk,
    /// A line of space-separated words (telnet, `redis-benchmark`'s `PING_INLINE`).
    Inline,
}

/// Where a resolved argument's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Location {
    /// Not resolved yet (a multibulk argument before [`RequestParser::args`]).
    Stream,
    /// In the inline line buffer, from `ArgEntry::offset`.
    Line,
    /// Inside one piece: its index and the start within it.
    Piece { index: usize, start: usize },
    /// Copied into the scratch buffer, from this start.
    Scratch { start: usize },
}

/// One argument: a stream span (multibulk) or a range of the line buffer (inline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ArgEntry {
    offset: u64,
    len: u64,
    location: Location,
}

/// A length line in progress: `*count` or `$len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LineReader {
    /// Bytes of the line before its `\r`, the type byte included.
    len: usize,
    /// The line's first byte (the type: `*` or, if the client follows the protocol, `$`).
    first: Option<u8>,
    /// The number after the type byte.
    number: NumberReader,
    /// The `\r` arrived; the next byte ends the line.
    cr: bool,
}

impl LineReader {
    fn new(first: Option<u8>) -> LineReader {
        LineReader {
            len: usize::from(first.is_some()),
            first,
            number: NumberReader::new(),
            cr: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between requests: the next byte decides the kind.
    Start,
    /// Reading the `*count` line.
    Count(LineReader),
    /// Reading an argument's `$len` line.
    BulkLen(LineReader),
    /// Inside an argument's data: bytes left.
    Bulk { left: u64 },
    /// The two bytes after an argument's data: bytes left.
    Trailer { left: u8 },
    /// Copying an inline line up to its `\n`.
    Inline,
    /// A request is complete and readable.
    Complete,
}

/// Result of feeding one byte to a length line.
enum LineStep {
    More,
    Done,
    TooLong,
}

/// The incremental request parser of one connection; see the module documentation for the
/// call order. Makes no system call and allocates only when a request needs more room than
/// any before it.
#[derive(Clone, Debug)]
pub struct RequestParser {
    limits: Limits,
    auth_required: bool,
    state: State,
    kind: RequestKind,
    /// Stream offset of the next byte `advance` will see.
    position: u64,
    /// Stream offset of the current request's first byte.
    request_start: u64,
    /// Stream offset of the current request's first argument data, once known.
    retain_from: Option<u64>,
    /// Arguments still to come in the multibulk request.
    args_left: u64,
    /// The argument being read: its data's stream offset and length.
    arg_offset: u64,
    arg_len: u64,
    args: Vec<ArgEntry>,
    line: Vec<u8>,
    failed: Option<ProtocolError>,
}

impl RequestParser {
    /// A parser at the start of a connection's stream (offset 0).
    pub fn new(limits: Limits) -> RequestParser {
        RequestParser {
            limits,
            auth_required: false,
            state: State::Start,
            kind: RequestKind::Multibulk,
            position: 0,
            request_start: 0,
            retain_from: None,
            args_left: 0,
            arg_offset: 0,
            arg_len: 0,
            args: Vec::new(),
            line: Vec::new(),
            failed: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Says whether the client still has to authenticate (a password is required and it has
    /// not given it). While it does, requests are held to [`UNAUTHENTICATED_MULTIBULK_LEN_MAX`]
    /// arguments of [`UNAUTHENTICATED_BULK_LEN_MAX`] bytes, as Redis holds them. Off at first.
    pub fn set_auth_required(&mut self, required: bool) {
        self.auth_required = required;
    }

    /// The stream offset of the next byte [`advance`](Self::advance) expects.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The stream offset from which the caller must keep its pieces: arguments of the
    /// request in progress (or just completed) may point anywhere from there on. Bytes before
    /// it will never be asked for again.
    pub fn retain_from(&self) -> u64 {
        self.retain_from.unwrap_or(self.position)
    }

    /// Feeds the next piece of the stream (the bytes from [`position`](Self::position) on).
    ///
    /// Consumes the whole piece, unless a request completes inside it: then it stops just
    /// after the request and says so; the request is readable (with
    /// [`request`](Self::request) and [`args`](Self::args)) until the next call, which starts
    /// the next request. An error is fatal; see [`ProtocolError`].
    pub fn advance(&mut self, piece: &[u8]) -> Result<Step, ProtocolError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if self.state == State::Complete {
            self.start_next_request();
        }
        let result = self.run(piece);
        let (consumed, outcome) = match result {
            Ok((consumed, complete)) => (consumed, Ok(complete)),
            Err((consumed, error)) => (consumed, Err(error)),
        };
        debug_assert!(consumed <= piece.len());
        self.position += consumed as u64;
        let outcome = outcome.and_then(|complete| {
            // What the caller keeps for this request: checked on every piece, so a request
            // cannot grow past the limit by more than one piece.
            let kept = self.position - self.retain_from();
            if kept > self.limits.query_len_max {
                Err(ProtocolError::QueryBufferLimit { len: kept })
            } else {
                Ok(complete)
            }
        });
        match outcome {
            Ok(complete) => {
                debug_assert!(complete || consumed == piece.len());
                Ok(Step { consumed, complete })
            }
            Err(error) => {
                self.failed = Some(error);
                Err(error)
            }
        }
    }

    /// The request that just completed, until the next [`advance`](Self::advance); `None`
    /// while a request is still in progress.
    pub fn request(&self) -> Option<Request<'_>> {
        (self.state == State::Complete).then_some(Request { parser: self })
    }

    /// The arguments of the request that just completed, read from the pieces the caller
    /// holds (in stream order, covering the stream from [`retain_from`](Self::retain_from)
    /// to [`position`](Self::position)). An argument inside one piece is borrowed from it;
    /// one that straddles pieces is copied into `scratch`, which is cleared first. Inline
    /// arguments come from the parser's own line buffer and need no pieces.
    ///
    /// Returns an empty list when no request is complete.
    pub fn args<'x>(
        &'x mut self,
        pieces: &'x [Piece<'x>],
        scratch: &'x mut Vec<u8>,
    ) -> Result<Args<'x>, PiecesError> {
        scratch.clear();
        if self.state != State::Complete {
            return Ok(Args {
                entries: &[],
                pieces,
                scratch,
                line: &self.line,
            });
        }
        if self.kind == RequestKind::Multibulk {
            for entry in &mut self.args {
                let span = Span {
                    offset: entry.offset,
                    len: entry.len,
                };
                entry.location = match pieces::locate(pieces, span)? {
                    Some((index, start)) => Location::Piece { index, start },
                    None => {
                        let start = scratch.len();
                        pieces::copy_into(pieces, span, scratch)?;
                        Location::Scratch { start }
                    }
                };
            }
        }
        Ok(Args {
            entries: &self.args,
            pieces,
            scratch,
            line: &self.line,
        })
    }

    fn start_next_request(&mut self) {
        self.args.clear();
        if self.args.capacity() > ARGS_KEPT_MAX {
            self.args.shrink_to(ARGS_KEPT_MAX);
        }
        self.line.clear();
        if self.line.capacity() > LINE_KEPT_MAX {
            self.line.shrink_to(LINE_KEPT_MAX);
        }
        self.retain_from = None;
        self.kind = RequestKind::Multibulk;
        self.state = State::Start;
    }

    /// Runs the state machine over `piece`: `(consumed, complete)`, or the error and where.
    fn run(&mut self, piece: &[u8]) -> Result<(usize, bool), (usize, ProtocolError)> {
        let mut at = 0;
        while at < piece.len() {
            match self.state {
                State::Start => {
                    self.request_start = self.position + at as u64;
                    if piece[at] == b'*' {
                        at += 1;
                        self.kind = RequestKind::Multibulk;
                        self.state = State::Count(LineReader::new(Some(b'*')));
                    } else {
                        self.kind = RequestKind::Inline;
                        self.state = State::Inline;
                    }
                }
                State::Count(mut line) | State::BulkLen(mut line) => {
                    let counting = matches!(self.state, State::Count(_));
                    let mut done = false;
                    while at < piece.len() {
                        let byte = piece[at];
                        at += 1;
                        match self.line_byte(&mut line, byte) {
                            LineStep::More => {}
                            LineStep::Done => {
                                done = true;
                                break;
                            }
                            LineStep::TooLong => {
                                let error = if counting {
                                    ProtocolError::TooBigMultibulkCount
                                } else {
                                    ProtocolError::TooBigBulkCount
                                };
                                return Err((at, error));
                            }
                        }
                    }
                    if !done {
                        self.state = if counting {
                            State::Count(line)
                        } else {
                            State::BulkLen(line)
                        };
                        continue;
                    }
                    let result = if counting {
                        self.count_line_done(&line)
                    } else {
                        self.bulk_line_done(&line, self.position + at as u64)
                    };
                    result.map_err(|error| (at, error))?;
                }
                State::Bulk { left } => {
                    let available = (piece.len() - at) as u64;
                    let take = left.min(available);
                    // `take` is at most what is left of the piece, so it fits a usize.
                    at += take as usize;
                    self.state = if take == left {
                        State::Trailer { left: 2 }
                    } else {
                        State::Bulk { left: left - take }
                    };
                }
                State::Trailer { left } => {
                    // Redis steps over the two bytes after a bulk without looking at them.
                    let take = usize::from(left).min(piece.len() - at);
                    at += take;
                    // `take` is at most `left`, which is at most 2.
                    let left = left - take as u8;
                    if left > 0 {
                        self.state = State::Trailer { left };
                        continue;
                    }
                    self.args.push(ArgEntry {
                        offset: self.arg_offset,
                        len: self.arg_len,
                        location: Location::Stream,
                    });
                    self.args_left -= 1;
                    if self.args_left == 0 {
                        self.state = State::Complete;
                        return Ok((at, true));
                    }
                    self.state = State::BulkLen(LineReader::new(None));
                }
                State::Inline => {
                    let rest = &piece[at..];
                    let newline = rest.iter().position(|&b| b == b'\n');
                    let chunk = &rest[..newline.unwrap_or(rest.len())];
                    if self.line.len() + chunk.len() > self.limits.inline_len_max {
                        return Err((at + chunk.len(), ProtocolError::TooBigInlineRequest));
                    }
                    self.line.extend_from_slice(chunk);
                    at += chunk.len();
                    if newline.is_none() {
                        continue;
                    }
                    at += 1;
                    if self.inline_line_done().map_err(|error| (at, error))? {
                        return Ok((at, true));
                    }
                }
                State::Complete => {
                    // `advance` starts the next request before running, and every path that
                    // completes one returns at once.
                    debug_assert!(false, "run entered with a complete request");
                    return Ok((at, true));
                }
            }
        }
        Ok((at, self.state == State::Complete))
    }

    fn line_byte(&self, line: &mut LineReader, byte: u8) -> LineStep {
        if line.cr {
            // Redis skips the byte after `\r` without checking that it is `\n`.
            return LineStep::Done;
        }
        if byte == b'\r' {
            line.cr = true;
            if line.first.is_none() {
                line.first = Some(byte);
            }
            return LineStep::More;
        }
        if line.first.is_none() {
            line.first = Some(byte);
        } else {
            line.number.push(byte);
        }
        line.len += 1;
        if line.len > self.limits.inline_len_max {
            LineStep::TooLong
        } else {
            LineStep::More
        }
    }

    fn count_line_done(&mut self, line: &LineReader) -> Result<(), ProtocolError> {
        let count = match line.number.finish() {
            Some(count) if count <= 0 => {
                // `*0` and `*-1` are empty requests: Redis resets and reads on.
                self.state = State::Start;
                return Ok(());
            }
            // Positive, so the conversion keeps the value.
            Some(count) if count as u64 <= self.limits.args_max => count as u64,
            _ => return Err(ProtocolError::InvalidMultibulkLength),
        };
        if self.auth_required && count > UNAUTHENTICATED_MULTIBULK_LEN_MAX {
            return Err(ProtocolError::UnauthenticatedMultibulkLength);
        }
        self.args_left = count;
        self.args.reserve(ARGS_RESERVE_MAX.min(count as usize));
        self.state = State::BulkLen(LineReader::new(None));
        Ok(())
    }

    fn bulk_line_done(&mut self, line: &LineReader, data_offset: u64) -> Result<(), ProtocolError> {
        if line.first != Some(b'$') {
            // The line ended, so it had at least its `\r`, which stands in for a missing byte.
            return Err(ProtocolError::ExpectedDollar(line.first.unwrap_or(b'\r')));
        }
        let len = match line.number.finish() {
            // Not negative, so the conversion keeps the value.
            Some(len) if len >= 0 && len as u64 <= self.limits.bulk_len_max => len as u64,
            _ => return Err(ProtocolError::InvalidBulkLength),
        };
        if self.auth_required && len > UNAUTHENTICATED_BULK_LEN_MAX {
            return Err(ProtocolError::UnauthenticatedBulkLength);
        }
        self.arg_offset = data_offset;
        self.arg_len = len;
        if self.retain_from.is_none() {
            self.retain_from = Some(data_offset);
        }
        self.state = if len == 0 {
            State::Trailer { left: 2 }
        } else {
            State::Bulk { left: len }
        };
        Ok(())
    }

    /// Splits the inline line that just ended. `Ok(true)` when it held a command.
    fn inline_line_done(&mut self) -> Result<bool, ProtocolError> {
        let mut len = self.line.len();
        // `processInlineBuffer` drops one `\r` before the `\n`.
        if len > 0 && self.line[len - 1] == b'\r' {
            len -= 1;
        }
        let args = &mut self.args;
        inline::split_in_place(&mut self.line[..len], |start, len| {
            args.push(ArgEntry {
                offset: start as u64,
                len: len as u64,
                location: Location::Line,
            })
        })
        .map_err(|_| ProtocolError::UnbalancedQuotes)?;
        if self.args.is_empty() {
            // A blank line: Redis reads on.
            self.line.clear();
            self.state = State::Start;
            Ok(false)
        } else {
            self.state = State::Complete;
            Ok(true)
        }
    }
}

/// A view of the request that just completed.
#[derive(Clone, Copy, Debug)]
pub struct Request<'p> {
    parser: &'p RequestParser,
}

impl<'p> Request<'p> {
    /// Multibulk or inline.
    pub fn kind(&self) -> RequestKind {
        self.parser.kind
    }

    /// Number of arguments (at least one: empty requests are skipped).
    pub fn len(&self) -> usize {
        self.parser.args.len()
    }

    /// Always false: the parser skips empty requests. Here for the convention.
    pub fn is_empty(&self) -> bool {
        self.parser.args.is_empty()
    }

    /// The stream span of argument `index` of a multibulk request (`None` for inline
    /// arguments, which live in the parser's line buffer, and past the end).
    pub fn span(&self, index: usize) -> Option<Span> {
        let entry = self.parser.args.get(index)?;
        (self.parser.kind == RequestKind::Multibulk).then_some(Span {
            offset: entry.offset,
            len: entry.len,
        })
    }

    /// The bytes of argument `index` of an inline request (`None` for multibulk arguments,
    /// which are spans of the stream, and past the end).
    pub fn inline_arg(&self, index: usize) -> Option<&'p [u8]> {
        let entry = self.parser.args.get(index)?;
        (self.parser.kind == RequestKind::Inline).then(|| {
            // Inline entries are ranges of the line buffer written by the split.
            &self.parser.line[entry.offset as usize..(entry.offset + entry.len) as usize]
        })
    }

    /// The whole request in the stream, from its first byte to just past its last.
    pub fn stream_span(&self) -> Span {
        Span {
            offset: self.parser.request_start,
            len: self.parser.position - self.parser.request_start,
        }
    }
}

/// The arguments of a completed request, resolved to bytes (see [`RequestParser::args`]).
#[derive(Clone, Copy, Debug)]
pub struct Args<'x> {
    entries: &'x [ArgEntry],
    pieces: &'x [Piece<'x>],
    scratch: &'x [u8],
    line: &'x [u8],
}

impl<'x> Args<'x> {
    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no complete request.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes of argument `index`.
    pub fn get(&self, index: usize) -> Option<&'x [u8]> {
        let entry = self.entries.get(index)?;
        // Lengths were bounded by the limits and checked against the pieces when resolved.
        let len = entry.len as usize;
        Some(match entry.location {
            Location::Line => &self.line[entry.offset as usize..entry.offset as usize + len],
            Location::Piece { index, start } => &self.pieces[index].bytes[start..start + len],
            Location::Scratch { start } => &self.scratch[start..start + len],
            // Every multibulk entry is resolved by `RequestParser::args` before an `Args`
            // exists; an empty argument needs no bytes.
            Location::Stream => &[],
        })
    }

    /// The arguments in order.
    pub fn iter(&self) -> impl Iterator<Item = &'x [u8]> + '_ {
        (0..self.len()).filter_map(|index| self.get(index))
    }
}

/// What [`parse_requests`] found: for tests and tools that have the whole stream at hand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The complete requests, each a list of arguments.
    pub requests: Vec<Vec<Vec<u8>>>,
    /// The protocol error that ended parsing, if any.
    pub error: Option<ProtocolError>,
    /// The stream ended inside a request.
    pub incomplete: bool,
}

/// Parses a stream given as consecutive pieces and returns its requests, copied out. A
/// convenience for tests (it allocates per argument); a server drives [`RequestParser`]
/// itself.
pub fn parse_pieces(parts: &[&[u8]], limits: Limits, auth_required: bool) -> Parsed {
    let mut parser = RequestParser::new(limits);
    parser.set_auth_required(auth_required);
    let mut held = Vec::new();
    let mut offset = 0u64;
    for part in parts {
        held.push(Piece {
            offset,
            bytes: part,
        });
        offset += part.len() as u64;
    }
    let mut parsed = Parsed::default();
    let mut scratch = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let mut rest: &[u8] = part;
        while !rest.is_empty() {
            match parser.advance(rest) {
                Err(error) => {
                    parsed.error = Some(error);
                    return parsed;
                }
                Ok(step) => {
                    rest = &rest[step.consumed..];
                    if step.complete {
                        let args = parser
                            .args(&held[..=index], &mut scratch)
                            .expect("every piece fed so far is held");
                        parsed
                            .requests
                            .push(args.iter().map(<[u8]>::to_vec).collect());
                    }
                }
            }
        }
    }
    parsed.incomplete = !matches!(parser.state, State::Start | State::Complete);
    parsed
}

/// Parses a whole stream held in one slice; see [`parse_pieces`].
pub fn parse_requests(input: &[u8], limits: Limits) -> Parsed {
    parse_pieces(&[input], limits, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(input: &[u8]) -> Parsed {
        parse_requests(input, Limits::default())
    }

    fn requests(list: &[&[&[u8]]]) -> Vec<Vec<Vec<u8>>> {
        list.iter()
            .map(|args| args.iter().map(|a| a.to_vec()).collect())
            .collect()
    }

    /// Parses `input` and expects exactly these requests, no error, nothing pending.
    fn expect(input: &[u8], expected: &[&[&[u8]]]) {
        let parsed = parse(input);
        assert_eq!(parsed.error, None, "{}", input.escape_ascii());
        assert_eq!(
            parsed.requests,
            requests(expected),
            "{}",
            input.escape_ascii()
        );
        assert!(!parsed.incomplete, "{}", input.escape_ascii());
    }

    /// Parses `input` and expects this error after these requests.
    fn refuse(input: &[u8], error: ProtocolError, words: &[u8]) {
        refuse_with(input, Limits::default(), false, error, words);
    }

    fn refuse_with(input: &[u8], limits: Limits, auth: bool, error: ProtocolError, words: &[u8]) {
        let parsed = parse_pieces(&[input], limits, auth);
        assert_eq!(parsed.error, Some(error), "{}", input.escape_ascii());
        let text = error
            .reply()
            .map(|t| t.as_bytes().to_vec())
            .unwrap_or_default();
        assert_eq!(
            text.escape_ascii().to_string(),
            words.escape_ascii().to_string()
        );
    }

    /// Feeds `input` whole to a fresh parser and returns the step or error of the first call.
    fn first_step(input: &[u8], limits: Limits) -> (RequestParser, Result<Step, ProtocolError>) {
        let mut parser = RequestParser::new(limits);
        let step = parser.advance(input);
        (parser, step)
    }

    #[test]
    fn a_multibulk_ping() {
        expect(b"*1\r\n$4\r\nPING\r\n", &[&[b"PING"]]);
    }

    #[test]
    fn a_multibulk_set() {
        expect(
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n",
            &[&[b"SET", b"key", b"value"]],
        );
    }

    #[test]
    fn binary_and_empty_arguments() {
        expect(
            b"*3\r\n$0\r\n\r\n$4\r\n\r\n\0\xff\r\n$1\r\n*\r\n",
            &[&[b"", b"\r\n\0\xff", b"*"]],
        );
    }

    #[test]
    fn pipelined_requests_stop_after_each() {
        let input = b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n";
        let mut parser = RequestParser::new(Limits::default());
        let step = parser.advance(input).unwrap();
        assert_eq!(
            step,
            Step {
                consumed: 14,
                complete: true
            }
        );
        assert_eq!(parser.request().unwrap().kind(), RequestKind::Multibulk);
        let step = parser.advance(&input[14..]).unwrap();
        assert_eq!(
            step,
            Step {
                consumed: 20,
                complete: true
            }
        );
        assert_eq!(parser.request().unwrap().len(), 2);
        let step = parser.advance(&input[34..]).unwrap();
        assert_eq!(
            step,
            Step {
                consumed: 6,
                complete: true
            }
        );
        assert_eq!(parser.request().unwrap().kind(), RequestKind::Inline);
        assert_eq!(parser.request().unwrap().inline_arg(0), Some(&b"PING"[..]));
        let step = parser.advance(b"").unwrap();
        assert_eq!(
            step,
            Step {
                consumed: 0,
                complete: false
            }
        );
        assert!(parser.request().is_none());
    }

    #[test]
    fn empty_multibulk_requests_are_skipped() {
        expect(b"*0\r\n*-1\r\n*-100\r\n*1\r\n$1\r\na\r\n", &[&[b"a"]]);
        let (parser, step) = first_step(b"*0\r\n", Limits::default());
        assert_eq!(
            step,
            Ok(Step {
                consumed: 4,
                complete: false
            })
        );
        assert!(parser.request().is_none());
    }

    #[test]
    fn inline_commands() {
        expect(b"PING\r\n", &[&[b"PING"]]);
        expect(b"PING\n", &[&[b"PING"]]);
        expect(b"set key \"a value\"\r\n", &[&[b"set", b"key", b"a value"]]);
        expect(b"set k '\\'quoted\\''\r\n", &[&[b"set", b"k", b"'quoted'"]]);
        expect(b"a\rb\r\n", &[&[b"a", b"b"]]);
        // Only one \r before the \n is the line end; another one is white space.
        expect(b"a\r\r\n", &[&[b"a"]]);
    }

    #[test]
    fn blank_inline_lines_are_skipped() {
        expect(b"\r\n\n   \r\n\t\nPING\r\n\r\n", &[&[b"PING"]]);
    }

    #[test]
    fn a_nul_ends_an_inline_line_but_not_its_search_for_newline() {
        expect(b"GET a\0b c\r\nPING\r\n", &[&[b"GET", b"a"], &[b"PING"]]);
    }

    #[test]
    fn inline_and_multibulk_interleave() {
        expect(
            b"PING\r\n*1\r\n$4\r\nPING\r\nECHO x\n",
            &[&[b"PING"], &[b"PING"], &[b"ECHO", b"x"]],
        );
    }

    #[test]
    fn unbalanced_quotes_are_refused_with_redis_words() {
        refuse(
            b"set \"key\r\n",
            ProtocolError::UnbalancedQuotes,
            b"ERR Protocol error: unbalanced quotes in request",
        );
        refuse(
            b"set 'a'b\r\n",
            ProtocolError::UnbalancedQuotes,
            b"ERR Protocol error: unbalanced quotes in request",
        );
    }

    #[test]
    fn a_bulk_without_dollar_is_refused() {
        refuse(
            b"*1\r\nx3\r\nabc\r\n",
            ProtocolError::ExpectedDollar(b'x'),
            b"ERR Protocol error: expected '$', got 'x'",
        );
        refuse(
            b"*2\r\n$1\r\na\r\n:1\r\n",
            ProtocolError::ExpectedDollar(b':'),
            b"ERR Protocol error: expected '$', got ':'",
        );
    }

    #[test]
    fn expected_dollar_keeps_the_reply_on_one_line() {
        // An empty line: the byte Redis finds is the \r, which it writes as a space.
        refuse(
            b"*1\r\n\r\n",
            ProtocolError::ExpectedDollar(b'\r'),
            b"ERR Protocol error: expected '$', got ' '",
        );
        refuse(
            b"*1\r\n\n\r\n",
            ProtocolError::ExpectedDollar(b'\n'),
            b"ERR Protocol error: expected '$', got ' '",
        );
        // `%c` of a NUL ends Redis' formatted text there.
        refuse(
            b"*1\r\n\x003\r\n",
            ProtocolError::ExpectedDollar(0),
            b"ERR Protocol error: expected '$', got '",
        );
        assert_eq!(
            ProtocolError::ExpectedDollar(0x01).to_string(),
            "ERR Protocol error: expected '$', got '\\x01'"
        );
    }

    #[test]
    fn invalid_multibulk_lengths_are_refused() {
        for input in [
            &b"*abc\r\n"[..],
            b"*\r\n",
            b"*+1\r\n",
            b"*01\r\n",
            b"*-0\r\n",
            b"*1 \r\n",
            b"*2147483648\r\n",
            b"*9223372036854775808\r\n",
            b"*3\n$3\r\n",
        ] {
            refuse(
                input,
                ProtocolError::InvalidMultibulkLength,
                b"ERR Protocol error: invalid multibulk length",
            );
        }
    }

    #[test]
    fn an_absurd_count_is_refused_at_once_and_a_large_one_reserves_little() {
        let (parser, step) = first_step(b"*2147483648\r\n$1\r\n", Limits::default());
        assert_eq!(step, Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parser.position(), 13, "refused when its line ended");
        assert_eq!(parser.args.capacity(), 0);
        // The largest count Redis takes is accepted, and reserves only ARGS_RESERVE_MAX.
        let (parser, step) = first_step(b"*2147483647\r\n", Limits::default());
        assert_eq!(
            step,
            Ok(Step {
                consumed: 13,
                complete: false
            })
        );
        assert!(parser.args.capacity() <= 2 * ARGS_RESERVE_MAX);
    }

    #[test]
    fn invalid_bulk_lengths_are_refused() {
        for input in [
            &b"*1\r\n$abc\r\n"[..],
            b"*1\r\n$-1\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$01\r\n",
            b"*1\r\n$536870913\r\n",
            b"*1\r\n$600000000\r\n",
            b"*1\r\n$9223372036854775808\r\n",
        ] {
            refuse(
                input,
                ProtocolError::InvalidBulkLength,
                b"ERR Protocol error: invalid bulk length",
            );
        }
    }

    #[test]
    fn an_absurd_bulk_is_refused_before_its_data() {
        let (parser, step) = first_step(b"*1\r\n$600000000\r\nxxxx", Limits::default());
        assert_eq!(step, Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parser.position(), 16, "refused when its length line ended");
        // The largest bulk Redis takes is accepted, and reserves nothing.
        let (parser, step) = first_step(b"*1\r\n$536870912\r\n", Limits::default());
        assert_eq!(
            step,
            Ok(Step {
                consumed: 16,
                complete: false
            })
        );
        assert!(parser.args.capacity() < 16);
        assert_eq!(parser.line.capacity(), 0);
    }

    #[test]
    fn a_count_line_without_cr_is_too_big_past_64_kib() {
        let mut input = b"*".to_vec();
        input.resize(PROTO_INLINE_MAX_SIZE, b'1');
        let (mut parser, step) = first_step(&input, Limits::default());
        assert_eq!(
            step,
            Ok(Step {
                consumed: PROTO_INLINE_MAX_SIZE,
                complete: false
            })
        );
        assert_eq!(
            parser.advance(b"1"),
            Err(ProtocolError::TooBigMultibulkCount)
        );
        assert_eq!(
            ProtocolError::TooBigMultibulkCount
                .reply()
                .unwrap()
                .as_bytes(),
            b"ERR Protocol error: too big mbulk count string"
        );
        // Within the limit, the line's end judges the number instead.
        input.extend_from_slice(b"\r\n");
        assert_eq!(
            first_step(&input, Limits::default()).1,
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn a_bulk_line_without_cr_is_too_big_past_64_kib() {
        let mut input = b"*1\r\n".to_vec();
        // Not even a `$`: the length is judged before the type byte, as in Redis.
        input.resize(4 + PROTO_INLINE_MAX_SIZE + 1, b'x');
        refuse(
            &input,
            ProtocolError::TooBigBulkCount,
            b"ERR Protocol error: too big bulk count string",
        );
    }

    #[test]
    fn an_inline_line_past_64_kib_is_too_big() {
        let mut line = vec![b'a'; PROTO_INLINE_MAX_SIZE];
        let (mut parser, step) = first_step(&line, Limits::default());
        assert_eq!(
            step,
            Ok(Step {
                consumed: PROTO_INLINE_MAX_SIZE,
                complete: false
            })
        );
        assert_eq!(
            parser.advance(b"a"),
            Err(ProtocolError::TooBigInlineRequest)
        );
        assert!(
            parser.line.capacity() <= 2 * PROTO_INLINE_MAX_SIZE,
            "bounded before copying"
        );
        refuse(
            &[&line[..], b"aa\r\n"].concat(),
            ProtocolError::TooBigInlineRequest,
            b"ERR Protocol error: too big inline request",
        );
        // Exactly at the limit is fine.
        line.push(b'\n');
        let parsed = parse(&line);
        assert_eq!(parsed.requests.len(), 1);
        assert_eq!(parsed.requests[0][0].len(), PROTO_INLINE_MAX_SIZE);
    }

    #[test]
    fn unauthenticated_clients_get_small_requests() {
        let limits = Limits::default();
        let eleven = b"*11\r\n";
        refuse_with(
            eleven,
            limits,
            true,
            ProtocolError::UnauthenticatedMultibulkLength,
            b"ERR Protocol error: unauthenticated multibulk length",
        );
        assert_eq!(parse_pieces(&[eleven], limits, false).error, None);
        assert_eq!(parse_pieces(&[b"*10\r\n"], limits, true).error, None);
        refuse_with(
            b"*1\r\n$16385\r\n",
            limits,
            true,
            ProtocolError::UnauthenticatedBulkLength,
            b"ERR Protocol error: unauthenticated bulk length",
        );
        assert_eq!(
            parse_pieces(&[b"*1\r\n$16384\r\n"], limits, true).error,
            None
        );
        // An invalid length is invalid first.
        refuse_with(
            b"*1\r\n$-5\r\n",
            limits,
            true,
            ProtocolError::InvalidBulkLength,
            b"ERR Protocol error: invalid bulk length",
        );
    }

    #[test]
    fn authentication_lifts_the_small_limits() {
        let mut parser = RequestParser::new(Limits::default());
        parser.set_auth_required(true);
        let step = parser
            .advance(b"*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n")
            .unwrap();
        assert!(step.complete);
        parser.set_auth_required(false);
        assert!(parser.advance(b"*11\r\n").is_ok());
    }

    #[test]
    fn the_query_buffer_limit_closes_without_a_reply() {
        let limits = Limits {
            query_len_max: 100,
            ..Limits::default()
        };
        let mut parser = RequestParser::new(limits);
        assert!(parser.advance(b"*2\r\n$200\r\n").is_ok());
        assert!(parser.advance(&[b'x'; 100]).is_ok());
        let error = parser.advance(b"x").unwrap_err();
        assert_eq!(error, ProtocolError::QueryBufferLimit { len: 101 });
        assert_eq!(error.reply(), None);
        // A request within the limit, even across many pieces, is fine.
        let parsed = parse_pieces(
            &[b"*1\r\n$90\r\n", &[b'y'; 50], &[b'y'; 40], b"\r\n"],
            limits,
            false,
        );
        assert_eq!(parsed.error, None);
        assert_eq!(parsed.requests.len(), 1);
    }

    #[test]
    fn errors_are_final() {
        let mut parser = RequestParser::new(Limits::default());
        assert_eq!(
            parser.advance(b"*x\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            parser.advance(b"*1\r\n$4\r\nPING\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert!(parser.request().is_none());
    }

    #[test]
    fn the_bytes_after_cr_and_after_a_bulk_are_not_checked() {
        // Redis steps over them; so do we.
        expect(b"*1\rX$4\rYPINGzz*1\r\n$1\r\na\r\n", &[&[b"PING"], &[b"a"]]);
    }

    #[test]
    fn a_512_mib_value_over_thousands_of_pieces_costs_one_step_each() {
        let zeros = vec![0u8; 64 * 1024];
        let mut parser = RequestParser::new(Limits::default());
        let step = parser
            .advance(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\n")
            .unwrap();
        assert!(!step.complete);
        let value_start = parser.position();
        assert_eq!(parser.retain_from(), 8, "from the first argument");
        for _ in 0..(PROTO_MAX_BULK_LEN as usize / zeros.len()) {
            let step = parser.advance(&zeros).unwrap();
            assert_eq!(
                step,
                Step {
                    consumed: zeros.len(),
                    complete: false
                }
            );
        }
        let step = parser.advance(b"\r\n*1").unwrap();
        assert_eq!(
            step,
            Step {
                consumed: 2,
                complete: true
            }
        );
        let request = parser.request().unwrap();
        assert_eq!(request.len(), 3);
        assert_eq!(
            request.span(2),
            Some(Span {
                offset: value_start,
                len: PROTO_MAX_BULK_LEN
            })
        );
        assert_eq!(request.span(0), Some(Span { offset: 8, len: 3 }));
    }

    #[test]
    fn retain_from_follows_the_request() {
        let mut parser = RequestParser::new(Limits::default());
        assert_eq!(parser.retain_from(), 0);
        let _ = parser.advance(b"*2\r\n").unwrap();
        assert_eq!(parser.retain_from(), 4, "no argument yet: nothing to keep");
        let _ = parser.advance(b"$3\r\nGE").unwrap();
        assert_eq!(parser.retain_from(), 8);
        let step = parser.advance(b"T\r\n$1\r\nk\r\n").unwrap();
        assert!(step.complete);
        assert_eq!(
            parser.retain_from(),
            8,
            "the complete request is still readable"
        );
        let _ = parser.advance(b"PI").unwrap();
        assert_eq!(
            parser.retain_from(),
            22,
            "inline lines are copied: nothing to keep"
        );
    }

    #[test]
    fn arguments_inside_a_piece_are_borrowed_and_across_pieces_copied() {
        let first = b"*2\r\n$3\r\nGET\r\n$5\r\nke";
        let second = b"y12\r\n";
        let held = [
            Piece {
                offset: 0,
                bytes: &first[..],
            },
            Piece {
                offset: first.len() as u64,
                bytes: &second[..],
            },
        ];
        let mut parser = RequestParser::new(Limits::default());
        let step = parser.advance(first).unwrap();
        assert!(!step.complete);
        let step = parser.advance(second).unwrap();
        assert!(step.complete);
        let mut scratch = Vec::new();
        let args = parser.args(&held, &mut scratch).unwrap();
        assert_eq!(args.len(), 2);
        assert_eq!(args.get(0), Some(&b"GET"[..]));
        assert!(std::ptr::eq(
            args.get(0).unwrap().as_ptr(),
            first[8..].as_ptr()
        ));
        assert_eq!(args.get(1), Some(&b"key12"[..]));
        assert_eq!(args.get(2), None);
        assert_eq!(scratch, b"key12");
    }

    #[test]
    fn missing_pieces_are_reported_not_invented() {
        let mut parser = RequestParser::new(Limits::default());
        let step = parser.advance(b"*1\r\n$4\r\nPING\r\n").unwrap();
        assert!(step.complete);
        let mut scratch = Vec::new();
        let held = [Piece {
            offset: 0,
            bytes: &b"*1\r\n$4\r\nPI"[..],
        }];
        assert_eq!(
            parser.args(&held, &mut scratch).err(),
            Some(PiecesError::NotHeld { offset: 10 })
        );
    }

    #[test]
    fn no_request_means_no_arguments() {
        let mut parser = RequestParser::new(Limits::default());
        let _ = parser.advance(b"*1\r\n$4\r\nPI").unwrap();
        let mut scratch = Vec::new();
        assert!(parser.args(&[], &mut scratch).unwrap().is_empty());
        assert!(parser.request().is_none());
    }

    #[test]
    fn request_views_describe_the_request() {
        let mut parser = RequestParser::new(Limits::default());
        let _ = parser.advance(b"PING\r\n").unwrap();
        let step = parser.advance(b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n").unwrap();
        assert!(step.complete);
        let request = parser.request().unwrap();
        assert_eq!(request.kind(), RequestKind::Multibulk);
        assert!(!request.is_empty());
        assert_eq!(request.stream_span(), Span { offset: 6, len: 22 });
        assert_eq!(request.span(1), Some(Span { offset: 24, len: 2 }));
        assert_eq!(request.inline_arg(1), None);
        assert_eq!(request.span(2), None);
        let step = parser.advance(b"ECHO 'a b'\r\n").unwrap();
        assert!(step.complete);
        let request = parser.request().unwrap();
        assert_eq!(request.kind(), RequestKind::Inline);
        assert_eq!(request.inline_arg(1), Some(&b"a b"[..]));
        assert_eq!(request.span(1), None);
        assert_eq!(
            request.stream_span(),
            Span {
                offset: 28,
                len: 12
            }
        );
    }

    #[test]
    fn lists_are_reused_and_cut_back_after_a_huge_request() {
        let mut parser = RequestParser::new(Limits::default());
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
        let _ = parser.advance(set).unwrap();
        let capacity = parser.args.capacity();
        for _ in 0..1000 {
            let step = parser.advance(set).unwrap();
            assert!(step.complete);
            assert_eq!(
                parser.args.capacity(),
                capacity,
                "no allocation per request"
            );
        }
        let mut big = b"*5000\r\n".to_vec();
        for _ in 0..5000 {
            big.extend_from_slice(b"$1\r\nx\r\n");
        }
        let step = parser.advance(&big).unwrap();
        assert!(step.complete);
        assert!(parser.args.capacity() >= 5000);
        let _ = parser.advance(b"P").unwrap();
        assert!(parser.args.capacity() <= ARGS_KEPT_MAX);
    }

    #[test]
    fn every_split_of_a_pipeline_gives_the_same_requests() {
        let input: &[u8] =
            b"*3\r\n$3\r\nSET\r\n$4\r\nk\r\ny\r\n$0\r\n\r\nGET \"k\\r\\ny\"\r\n*1\r\n$4\r\nPING\r\n";
        let expected = parse(input);
        assert_eq!(expected.requests.len(), 3);
        for cut in 0..=input.len() {
            for second in cut..=input.len() {
                let parsed = parse_pieces(
                    &[&input[..cut], &input[cut..second], &input[second..]],
                    Limits::default(),
                    false,
                );
                assert_eq!(parsed, expected, "cut at {cut} and {second}");
            }
        }
    }

    #[test]
    fn error_texts_fit_their_buffer() {
        let all = [
            ProtocolError::TooBigMultibulkCount,
            ProtocolError::TooBigBulkCount,
            ProtocolError::InvalidMultibulkLength,
            ProtocolError::UnauthenticatedMultibulkLength,
            ProtocolError::ExpectedDollar(b'x'),
            ProtocolError::InvalidBulkLength,
            ProtocolError::UnauthenticatedBulkLength,
            ProtocolError::TooBigInlineRequest,
            ProtocolError::UnbalancedQuotes,
        ];
        for error in all {
            let text = error.reply().unwrap();
            assert_eq!(text.as_bytes(), error.to_string().as_bytes());
            assert!(text.as_bytes().starts_with(b"ERR Protocol error: "));
        }
    }

    /// Encodes arguments as a client library does.
    fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Encodes an argument for an inline line as redis-cli quotes (sdscatrepr): in double
    /// quotes, with escapes for quotes, backslashes and unprintable bytes.
    fn inline_quoted(arg: &[u8]) -> Vec<u8> {
        let mut out = vec![b'"'];
        for &byte in arg {
            match byte {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'"' => out.extend_from_slice(b"\\\""),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0x07 => out.extend_from_slice(b"\\a"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x20..=0x7e => out.push(byte),
                _ => out.extend_from_slice(format!("\\x{byte:02x}").as_bytes()),
            }
        }
        out.push(b'"');
        out
    }

    /// Cuts `input` at the given fractions of its length.
    fn cut<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        let mut parts = Vec::new();
        let mut from = 0;
        for point in points {
            parts.push(&input[from..point]);
            from = point;
        }
        parts.push(&input[from..]);
        parts
    }

    fn arb_requests() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
        let arg = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            proptest::collection::vec(
                prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'$'), Just(b'*')],
                0..8
            ),
        ];
        proptest::collection::vec(proptest::collection::vec(arg, 1..6), 1..6)
    }

    proptest! {
        #[test]
        fn multibulk_requests_in_any_pieces_parse_back(
            requests in arb_requests(),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let stream: Vec<u8> = requests.iter().flat_map(|r| multibulk(r)).collect();
            let parsed = parse_pieces(&cut(&stream, &cuts), Limits::default(), false);
            prop_assert_eq!(parsed.error, None);
            prop_assert!(!parsed.incomplete);
            prop_assert_eq!(parsed.requests, requests);
        }

        #[test]
        fn inline_requests_in_any_pieces_parse_back(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(1u8..=255, 0..20), 1..5), 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            crlf in any::<bool>(),
        ) {
            let mut stream = Vec::new();
            for request in &requests {
                let words: Vec<Vec<u8>> = request.iter().map(|a| inline_quoted(a)).collect();
                stream.extend_from_slice(&words.join(&b' '));
                stream.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            let parsed = parse_pieces(&cut(&stream, &cuts), Limits::default(), false);
            prop_assert_eq!(parsed.error, None);
            prop_assert_eq!(parsed.requests, requests);
        }

        #[test]
        fn plain_inline_words_parse_back(
            words in proptest::collection::vec("[a-zA-Z0-9:_.-]{1,12}", 1..8),
            separators in proptest::collection::vec("[ \t]{1,3}", 8),
        ) {
            let mut line = String::new();
            for (i, word) in words.iter().enumerate() {
                line.push_str(word);
                line.push_str(&separators[i % separators.len()]);
            }
            line.push_str("\r\n");
            let parsed = parse(line.as_bytes());
            let expected: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
            prop_assert_eq!(parsed.requests, vec![expected]);
        }

        #[test]
        fn arbitrary_bytes_in_arbitrary_pieces_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let _ = parse_pieces(&cut(&data, &cuts), Limits::default(), false);
            let _ = parse_pieces(&cut(&data, &cuts), Limits { inline_len_max: 8, bulk_len_max: 4, args_max: 3, query_len_max: 16 }, true);
        }
    }
}
