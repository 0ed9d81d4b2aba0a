//! The Redis protocol, RESP2 and RESP3, as a pure sans-IO crate: what `melange kv` needs to
//! talk to unmodified Redis clients (`redis-cli`, `redis-benchmark`, redis-py), and what the
//! load generator needs to talk to a Redis server.
//!
//! - [`request`]: the [`RequestParser`], incremental and zero-copy, for multibulk and inline
//!   commands, with Redis' limits and Redis' exact error words.
//! - [`reply`]: the [`ReplyWriter`] into a bounded [`Sink`], per-connection protocol version,
//!   every RESP3 type with its RESP2 fallback.
//! - [`reply_parser`]: the [`ReplyParser`], incremental, nested aggregates with a depth limit.
//! - [`pieces`]: [`Span`]s of a connection's stream and reading them back from the
//!   [`Piece`]s the caller holds.
//! - [`number`] and [`double`]: integers and doubles exactly as Redis reads and writes them.
//! - [`value`]: an owned [`Value`] for tests and tools.
//! - [`fuzz`]: the bodies of the `resp_*` fuzz targets.
//!
//! # Why it is built this way
//!
//! Redis reads each client's bytes into a query buffer (an sds string that grows to hold a
//! whole command, up to a 512 MiB argument), parses it from there, and copies every argument
//! into an object of its own. Under Melange the bytes already sit in memory: the TCP stack
//! lends the application each received segment. Copying them into a query buffer would cost a
//! copy of every byte and a buffer per connection sized for the largest command. So the
//! parsers here never need the stream contiguous: they take the pieces as they come, keep
//! their progress between pieces in a few words (which argument, bytes left of a bulk, a
//! length half read), and report what they found as spans of stream offsets. The caller
//! keeps the pieces from the parser's `retain_from()` on and reads each argument borrowed
//! from its segment, copying only an argument that straddles two segments. Nothing is
//! rescanned, so a 512 MiB value over thousands of pieces costs one step per piece, not a
//! quadratic rescan; and nothing is allocated per request or per reply once the reused lists
//! have grown to the connection's usual request.
//!
//! The alternative rejected was a parser over one contiguous buffer (redis-protocol,
//! hiredis, Redis itself): simpler, but it forces either the copy into a query buffer or a
//! re-parse from the start whenever a request is split, and large values then cost either
//! memory or quadratic time.
//!
//! Everything is sans-IO, as the house style asks: bytes in, steps out, no system call, no
//! clock. The same code runs under the engine, the tests and the fuzzers.
#![forbid(unsafe_code)]

pub mod double;
pub mod fuzz;
mod inline;
pub mod number;
pub mod pieces;
pub mod reply;
pub mod reply_parser;
pub mod request;
pub mod value;

pub use pieces::{read_span, Piece, PiecesError, Span};
pub use reply::{Full, Protocol, ReplyWriter, Sink, SliceSink};
pub use reply_parser::{Frame, ReplyError, ReplyLimits, ReplyParser};
pub use request::{
    parse_pieces, parse_requests, Args, ErrorText, Limits, Parsed, ProtocolError, Request,
    RequestKind, RequestParser, Step,
};
pub use value::{Value, ValueError};
