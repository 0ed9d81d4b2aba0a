//! memcached's protocols for Melange's key-value service (`melange kv`): the text protocol,
//! the meta protocol and the UDP frame header, as a pure, sans-IO crate.
//!
//! # Why it is built this way
//!
//! The server receives a byte stream in pieces it does not choose: TCP segments lent by
//! Melange's stack, each a `&[u8]` that must be handed back. A request may span pieces, a
//! 1 MiB value may arrive in hundreds of them, and one piece may hold fifty pipelined
//! commands. memcached copies everything into a per-connection read buffer, memmoves the
//! unread tail to the front before each read, and reallocates for large multigets; a copying
//! parser in Rust would also build a `String` or a `Vec` per key. Both cost a copy per byte
//! and an allocation per request, and the second makes the data path allocate.
//!
//! So the [`request::RequestParser`] is a state machine that keeps its place between pieces
//! and never needs the bytes contiguous: it looks at each byte of a command line once,
//! keeping a 32-byte head of each token (enough for every number, command word and meta
//! flag), and reports keys, arguments and data blocks as [`span::Span`]s, stream offsets the
//! caller reads from the pieces it still holds ([`span::read`] borrows when a span lies in
//! one piece and copies into the caller's scratch only when it straddles two). A data block
//! is counted, not scanned or copied, so a large value costs O(1) per piece, and a value
//! over the limit is refused as soon as its line is read and skipped without being buffered.
//! The line's tokens live in fixed arrays and a multiget's keys in one list allocated by
//! `RequestParser::new`; replies are formatted on the stack into the caller's
//! [`reply::Sink`]. After start-up nothing here allocates, which `tests/no_alloc.rs` checks
//! with a counting allocator.
//!
//! Nothing here makes a system call or reads a clock: the engine, the simulator, the tests
//! and the fuzzers all drive the same code. No input bytes can make it panic; the property
//! tests and the fuzz targets (`fuzz/fuzz_targets/memcache_*.rs`, bodies in [`fuzz`]) hold it
//! to that, and check that any cut of a stream into pieces parses as the whole stream does.
//!
//! Behaviour mirrors memcached 1.6's `proto_text.c` and `proto_parser.c`: the same limits,
//! the same error words (see [`request::ErrorKind`]), the same `noreply` silences and the
//! same resynchronisation after an error; the request module lists the few deviations, all
//! on malformed input.
//!
//! | module | role |
//! | --- | --- |
//! | [`request`] | the incremental request parser (text and meta commands) and its errors |
//! | [`meta`] | meta flags, modes and reply codes |
//! | [`reply`] | the reply encoder over a [`reply::Sink`] |
//! | [`reply_parse`] | the incremental reply parser, for the load generator and tests |
//! | [`udp`] | the UDP frame header and splitting replies into datagrams |
//! | [`span`] | spans and reading them back from held pieces |
//! | [`base64`] | base64 for binary meta keys |
//! | [`fuzz`] | the fuzz targets' bodies |
#![forbid(unsafe_code)]

pub mod base64;
pub mod fuzz;
pub mod meta;
mod num;
pub mod reply;
pub mod reply_parse;
pub mod request;
pub mod span;
mod token;
pub mod udp;

pub use meta::{ArithMode, MetaCode, MetaFlags, SetMode};
pub use reply::{Full, MetaReply, Sink, SliceSink, Status};
pub use reply_parse::{Reply, ReplyError, ReplyLimits, ReplyParser};
pub use request::{
    ErrorKind, Get, GetKind, Limits, Outcome, ParseError, Request, RequestParser, Step, Store,
    StoreKind,
};
pub use span::{Piece, Span, SpanError};

/// A field's byte range inside a header.
pub(crate) type Field = core::ops::Range<usize>;

/// Reads a big-endian `u16` at `at`. Callers have checked `at + 2 <= data.len()`.
pub(crate) fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

/// Writes a big-endian `u16` at `at`. Callers have checked `at + 2 <= data.len()`.
pub(crate) fn write_u16(data: &mut [u8], at: usize, value: u16) {
    data[at..at + 2].copy_from_slice(&value.to_be_bytes());
}
