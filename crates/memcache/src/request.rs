//! The request parser: memcached's text and meta commands, incremental and zero-copy.
//!
//! # Call order
//!
//! ```text
//! let mut parser = RequestParser::new(Limits::default())?;
//! for each piece the connection receives (stream order):
//!     let mut rest = piece;
//!     loop {
//!         let step = parser.advance(rest);
//!         rest = &rest[step.consumed..];
//!         match step.outcome {
//!             Outcome::NeedMore => break,                 // all of `rest` was consumed
//!             Outcome::Request => handle(parser.request()), // spans point into held pieces
//!             Outcome::Header => {}                       // only with announce_data(true)
//!             Outcome::Error(e) => { reply e.reply() unless e.noreply;
//!                                    if e.closes_connection() { close } }
//!         }
//!     }
//! ```
//!
//! `advance` consumes bytes until a request (or an error) completes or the piece runs out,
//! and keeps its place: the next call continues where this one stopped, whatever the piece
//! boundaries. Each byte of a command line is looked at once; a data block is only counted
//! (O(1) per piece), never copied and never scanned, so a 1 MiB value costs the same whatever
//! the number of pieces it arrives in. [`RequestParser::request`] is valid until the next
//! `advance`; its keys, arguments and data block are [`Span`]s of the stream, which the caller
//! reads from the pieces it still holds (see [`crate::span`]); [`RequestParser::hold_from`]
//! says which bytes a future request may still point into.
//!
//! # Multigets come in chunks
//!
//! memcached's `get` and `gets` lines are unbounded (it grows its read buffer for them).
//! Here a `get` line is handed out in chunks of at most [`Limits::get_chunk_keys_max`] keys:
//! [`Get::last`] is false on every chunk but the line's last one, after which the server
//! writes `END`. So the key list lives in a buffer allocated once, and a client's 10 000-key
//! `get_many` still works. memcached handles a long multiget in pieces of 24 tokens too.
//!
//! # Errors and resynchronisation
//!
//! Errors are worded as memcached words them ([`ErrorKind`], with the reply line), say
//! whether memcached would stay silent because the command asked for `noreply`
//! ([`ParseError::noreply`]), and the parser resynchronises as memcached does:
//!
//! - an error in a command line: the line is consumed and parsing goes on at the next line.
//!   When a storage command's line is refused before its length was read (unknown command,
//!   wrong token count, bad key, bad number), its data block is then read as command lines,
//!   which usually gives `ERROR`: memcached does exactly that.
//! - `SERVER_ERROR object too large for cache` (the length is known) and the `ms` errors found
//!   after its length: the announced `bytes + 2` are skipped without being buffered, so the
//!   next command parses. This is refused as soon as the line is read, before any data.
//! - `CLIENT_ERROR bad data chunk`: the data block and its 2 terminator bytes were consumed;
//!   parsing goes on after them (memcached reads `bytes + 2` and then checks the last two).
//! - a line longer than its limit: memcached closes the connection without a word; so does
//!   the caller ([`ParseError::closes_connection`]); the parser refuses all further input.
//!
//! # Deviations from memcached, all on malformed input
//!
//! - Keys with control bytes are refused ("bad command line format"), as protocol.txt
//!   requires; memcached checks only their length.
//! - A command line (other than `get`/`gets`) longer than [`Limits::line_len_max`] closes the
//!   connection. memcached closes only when 2048 bytes without a `\n` are *buffered*, which
//!   depends on how the bytes arrived; here the rule is the same for every split.
//! - Numbers longer than 32 bytes (absurd zero padding) are refused; flags above `u32::MAX`
//!   are refused instead of truncated.
//! - Commands memcached has but a key-value service does not serve (`shutdown`, `slabs`,
//!   `lru`, `lru_crawler`, `watch`, `extstore`, `bget`, ...) are unknown (`ERROR`).

use crate::meta::{ArithMode, MetaFlags, SetMode, META_FLAGS_MAX};
use crate::num::{parse_i32, parse_u32, parse_u64};
use crate::span::Span;
use crate::token::{Line, Scan, Token};

/// memcached's `KEY_MAX_LENGTH`.
pub const KEY_LEN_MAX: usize = 250;
/// memcached's default item size limit (`-I 1m`), applied to the value length.
pub const VALUE_LEN_MAX: u32 = 1 << 20;
/// The largest value length memcached accepts on a command line at all (`INT_MAX - 2`);
/// longer is "bad command line format" rather than "too large".
pub const VALUE_LEN_LIMIT: u32 = i32::MAX as u32 - 2;
/// memcached closes a connection that sends 2048 bytes without a line end (unless the line
/// is a `get`/`gets`).
pub const LINE_LEN_MAX: usize = 2048;
/// Default limit on a `get`/`gets` line (memcached has none; 1 MiB is about 4 000 keys of 250
/// bytes).
pub const GET_LINE_LEN_MAX: usize = 1 << 20;
/// Default number of keys per multiget chunk.
pub const GET_CHUNK_KEYS_MAX: usize = 64;
/// Tokens of a line memcached looks at (its `MAX_TOKENS` of 24 counts a terminal token).
pub const TOKENS_MAX: usize = 23;
/// Tokens of a meta command line, command and key included (memcached refuses more than
/// `MFLAG_MAX_OPT_LENGTH` = 20 counting its terminal token).
pub const META_TOKENS_MAX: usize = 19;

const _: () = assert!(META_TOKENS_MAX - 2 == META_FLAGS_MAX);
const _: () = assert!(META_TOKENS_MAX <= TOKENS_MAX);
const _: () = assert!(VALUE_LEN_MAX <= VALUE_LEN_LIMIT);

/// The parser's limits. [`Limits::default`] is memcached's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key (memcached: 250).
    pub key_len_max: usize,
    /// Longest value; a longer one is refused with "SERVER_ERROR object too large for
    /// cache" and skipped (memcached: its item size limit, 1 MiB by default).
    pub value_len_max: u32,
    /// Longest command line, `get`/`gets` lines apart (memcached: 2048).
    pub line_len_max: usize,
    /// Longest `get`/`gets` line.
    pub get_line_len_max: usize,
    /// Keys per multiget chunk (the key list is allocated once, this long).
    pub get_chunk_keys_max: usize,
}

impl Limits {
    /// memcached's limits.
    pub const MEMCACHED: Limits = Limits {
        key_len_max: KEY_LEN_MAX,
        value_len_max: VALUE_LEN_MAX,
        line_len_max: LINE_LEN_MAX,
        get_line_len_max: GET_LINE_LEN_MAX,
        get_chunk_keys_max: GET_CHUNK_KEYS_MAX,
    };

    /// Checks the limits against each other.
    pub fn check(&self) -> Result<(), LimitsError> {
        if self.line_len_max < 64 {
            return Err(LimitsError::LineLen);
        }
        if self.key_len_max == 0 || self.key_len_max > self.line_len_max {
            return Err(LimitsError::KeyLen);
        }
        if self.value_len_max > VALUE_LEN_LIMIT {
            return Err(LimitsError::ValueLen);
        }
        if self.get_line_len_max < self.line_len_max {
            return Err(LimitsError::GetLineLen);
        }
        if self.get_chunk_keys_max == 0 {
            return Err(LimitsError::ChunkKeys);
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::MEMCACHED
    }
}

/// A [`Limits`] that cannot work; the operator's setting is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// `line_len_max` below 64: no storage command would fit. Raise it.
    #[error("line_len_max must be at least 64")]
    LineLen,
    /// `key_len_max` is 0 or longer than a line. Use 1..=line_len_max.
    #[error("key_len_max must be between 1 and line_len_max")]
    KeyLen,
    /// `value_len_max` above what memcached's syntax allows. Lower it.
    #[error("value_len_max must be at most {VALUE_LEN_LIMIT}")]
    ValueLen,
    /// `get_line_len_max` below `line_len_max`. Raise it.
    #[error("get_line_len_max must be at least line_len_max")]
    GetLineLen,
    /// `get_chunk_keys_max` is 0. Use at least 1.
    #[error("get_chunk_keys_max must be at least 1")]
    ChunkKeys,
}

macro_rules! error_kinds {
    ($( $(#[$doc:meta])* $name:ident => $words:literal, )*) => {
        /// What was wrong with a request, as memcached words it: the `Display` form is
        /// memcached's reply line without its `\r\n`, [`ErrorKind::reply`] is the line.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
        pub enum ErrorKind {
            $( $(#[$doc])* #[error($words)] $name, )*
        }

        impl ErrorKind {
            /// memcached's reply line, `\r\n` included.
            pub const fn reply(self) -> &'static [u8] {
                match self {
                    $( ErrorKind::$name => concat!($words, "\r\n").as_bytes(), )*
                }
            }
        }
    };
}

error_kinds! {
    /// An unknown command, or a known one with the wrong number of tokens (memcached
    /// answers both with a bare `ERROR`). Reply; the connection goes on at the next line.
    UnknownCommand => "ERROR",
    /// A key too long (or with control bytes), a malformed number, a negative length.
    /// Reply; the connection goes on at the next line.
    BadFormat => "CLIENT_ERROR bad command line format",
    /// `delete` with a third or fourth token that is neither `0` nor `noreply`.
    DeleteUsage => "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]",
    /// `touch`, `gat`/`gats` or `flush_all` with a malformed exptime.
    InvalidExptime => "CLIENT_ERROR invalid exptime argument",
    /// `incr`/`decr` with a malformed delta.
    InvalidDelta => "CLIENT_ERROR invalid numeric delta argument",
    /// A data block not followed by `\r\n`. Its `bytes + 2` were consumed; parsing goes on.
    BadDataChunk => "CLIENT_ERROR bad data chunk",
    /// A value longer than the limit. Refused as soon as its line is read; the parser skips
    /// the announced data block, so the next command parses.
    TooLarge => "SERVER_ERROR object too large for cache",
    /// A line longer than its limit. memcached closes the connection without replying:
    /// close it (writing this line first is harmless). The parser refuses further input.
    LineTooLong => "CLIENT_ERROR line too long",
    /// `mg` with more than 19 tokens.
    MgFlagsTooLong => "CLIENT_ERROR options flags are too long",
    /// `ms`, `md` or `ma` with more than 19 tokens.
    FlagsTooLong => "CLIENT_ERROR options flags too long",
    /// A meta flag given twice (or a flag byte of 127 or more).
    DuplicateFlag => "CLIENT_ERROR duplicate flag",
    /// An unknown meta flag.
    InvalidFlag => "CLIENT_ERROR invalid flag",
    /// `md` or `ma` with any bad flag (memcached words them all so).
    InvalidOrDuplicateFlag => "CLIENT_ERROR invalid or duplicate flag",
    /// A meta flag whose value is malformed (`N`, `T`, `R`, `C`, `E`).
    BadToken => "CLIENT_ERROR bad token in command line format",
    /// The `b` flag with a key that is not base64.
    KeyDecode => "CLIENT_ERROR error decoding key",
    /// An `M` flag not followed by exactly one mode byte.
    MTokenLength => "CLIENT_ERROR incorrect length for M token",
    /// `ma`'s `J` value is malformed.
    InvalidInitial => "CLIENT_ERROR invalid numeric initial value",
    /// `ma`'s `D` value is malformed.
    InvalidMetaDelta => "CLIENT_ERROR invalid numeric delta value",
    /// An opaque token longer than 32 bytes.
    OpaqueTooLong => "CLIENT_ERROR opaque token too long",
    /// `ms` with a mode other than `E A P R S`.
    InvalidSetMode => "CLIENT_ERROR invalid mode for ms M token",
    /// `ma` with a mode other than `I + D -`.
    InvalidArithMode => "CLIENT_ERROR invalid mode for ma M token",
}

/// A refused request: what was wrong, and whether memcached would stay silent about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    /// What was wrong; [`ErrorKind::reply`] is the reply line.
    pub kind: ErrorKind,
    /// The command asked for `noreply` and memcached had already seen it when it found the
    /// error, so it sends nothing: don't reply. (Meta commands always report errors.)
    pub noreply: bool,
}

impl ParseError {
    const fn new(kind: ErrorKind, noreply: bool) -> Self {
        Self { kind, noreply }
    }

    /// memcached's reply line, `\r\n` included.
    pub const fn reply(&self) -> &'static [u8] {
        self.kind.reply()
    }

    /// Whether the connection must be closed (memcached closes it); every other error
    /// leaves the connection usable.
    pub fn closes_connection(&self) -> bool {
        self.kind == ErrorKind::LineTooLong
    }
}

/// What one [`RequestParser::advance`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the piece consumed; at most its length. Feed the rest (if any) next.
    pub consumed: usize,
    /// What completed.
    pub outcome: Outcome,
}

/// What completed in an [`RequestParser::advance`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing: the whole piece was consumed. Feed the next piece.
    NeedMore,
    /// A request: read it with [`RequestParser::request`] before the next `advance`.
    Request,
    /// Only with [`RequestParser::announce_data`]: a storage command's line was read and its
    /// data block follows. [`RequestParser::request`] shows the command, its data span
    /// announced but not yet arrived; the same request completes later (or a
    /// [`ErrorKind::BadDataChunk`] error).
    Header,
    /// A refused request. Reply [`ParseError::reply`] unless [`ParseError::noreply`]; close
    /// the connection if [`ParseError::closes_connection`].
    Error(ParseError),
}

/// `get`, `gets`, `gat` or `gats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GetKind {
    /// `get <key>*`
    Get,
    /// `gets <key>*`: values with their CAS.
    Gets,
    /// `gat <exptime> <key>*`: get and touch.
    Gat,
    /// `gats <exptime> <key>*`: get and touch, with CAS.
    Gats,
}

impl GetKind {
    /// Whether `VALUE` lines carry the CAS value.
    pub fn returns_cas(self) -> bool {
        matches!(self, GetKind::Gets | GetKind::Gats)
    }

    /// Whether the command sets the items' exptime.
    pub fn touches(self) -> bool {
        matches!(self, GetKind::Gat | GetKind::Gats)
    }

    fn from_word(word: &[u8]) -> Option<GetKind> {
        Some(match word {
            b"get" => GetKind::Get,
            b"gets" => GetKind::Gets,
            b"gat" => GetKind::Gat,
            b"gats" => GetKind::Gats,
            _ => return None,
        })
    }

    /// Whether memcached lets the line grow past 2048 bytes (it checks for `get ` and `gets `).
    fn unbounded_line(self) -> bool {
        matches!(self, GetKind::Get | GetKind::Gets)
    }
}

/// The six storage commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// `set`
    Set,
    /// `add`: only if absent.
    Add,
    /// `replace`: only if present.
    Replace,
    /// `append`: after the existing value (flags and exptime ignored).
    Append,
    /// `prepend`: before the existing value (flags and exptime ignored).
    Prepend,
    /// `cas`: only if the CAS value matches.
    Cas,
}

/// `incr` or `decr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithKind {
    /// `incr`: wraps at 2^64.
    Incr,
    /// `decr`: stops at 0.
    Decr,
}

/// One chunk of a `get`-family line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Get<'a> {
    /// Which command.
    pub kind: GetKind,
    /// The exptime of `gat`/`gats` (0 for `get`/`gets`).
    pub exptime: i64,
    /// This chunk's keys, in request order (possibly none: `gat 10` has no key).
    pub keys: &'a [Span],
    /// Whether this chunk ends the line: the server writes `END` after its values.
    pub last: bool,
}

/// A storage command: `<cmd> <key> <flags> <exptime> <bytes> [<cas>] [noreply]` and its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Store {
    /// Which command.
    pub kind: StoreKind,
    /// The key.
    pub key: Span,
    /// Client flags.
    pub flags: u32,
    /// Expiration time (memcached's rules: 0 never, up to 30 days relative, else Unix time).
    pub exptime: i64,
    /// The data block (its `\r\n` excluded).
    pub data: Span,
    /// The CAS value of `cas` (0 for the others).
    pub cas: u64,
    /// `noreply`: send nothing back.
    pub noreply: bool,
}

/// A parsed request. Spans point into the stream; see [`crate::span`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `get`, `gets`, `gat`, `gats` (one chunk).
    Get(Get<'a>),
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`.
    Store(Store),
    /// `delete <key> [0] [noreply]`.
    Delete {
        /// The key.
        key: Span,
        /// `noreply`.
        noreply: bool,
    },
    /// `incr`/`decr <key> <delta> [noreply]`.
    Arith {
        /// Which command.
        kind: ArithKind,
        /// The key.
        key: Span,
        /// The delta.
        delta: u64,
        /// `noreply`.
        noreply: bool,
    },
    /// `touch <key> <exptime> [noreply]`.
    Touch {
        /// The key.
        key: Span,
        /// The new exptime.
        exptime: i64,
        /// `noreply`.
        noreply: bool,
    },
    /// `flush_all [delay] [noreply]`.
    FlushAll {
        /// Seconds from now (or Unix time); 0 (or absent, or negative) means now.
        delay: i64,
        /// `noreply`.
        noreply: bool,
    },
    /// `version`.
    Version,
    /// `verbosity <level> [noreply]`.
    Verbosity {
        /// The level.
        level: u32,
        /// `noreply`.
        noreply: bool,
    },
    /// `cache_memlimit <megabytes> [noreply]`. memcached answers `MEMLIMIT_TOO_SMALL ...`
    /// below 8 and `MEMLIMIT_ADJUST_FAILED ...` on failure, else `OK`.
    CacheMemlimit {
        /// The new limit in MiB.
        megabytes: u32,
        /// `noreply`.
        noreply: bool,
    },
    /// `stats [<args>]` (at most 22 arguments are kept, as memcached looks at no more).
    Stats {
        /// The arguments after `stats`.
        args: &'a [Span],
    },
    /// `quit`: close the connection after the replies before it are sent.
    Quit,
    /// `mg <key> <flags>*`.
    MetaGet {
        /// The key (base64 when `flags.base64_key()`).
        key: Span,
        /// The flags.
        flags: &'a MetaFlags,
    },
    /// `ms <key> <datalen> <flags>*` and its data.
    MetaSet {
        /// The key (base64 when `flags.base64_key()`).
        key: Span,
        /// The data block.
        data: Span,
        /// The `M` mode.
        mode: SetMode,
        /// The flags.
        flags: &'a MetaFlags,
    },
    /// `md <key> <flags>*`.
    MetaDelete {
        /// The key (base64 when `flags.base64_key()`).
        key: Span,
        /// The flags.
        flags: &'a MetaFlags,
    },
    /// `ma <key> <flags>*`.
    MetaArith {
        /// The key (base64 when `flags.base64_key()`).
        key: Span,
        /// The `M` mode.
        mode: ArithMode,
        /// The flags.
        flags: &'a MetaFlags,
    },
    /// `me <key> [b]`: the item's metadata (`ME <key> exp=.. la=.. cas=.. fetch=.. cls=..
    /// size=..`) or `EN`.
    MetaDebug {
        /// The key.
        key: Span,
        /// Whether the key is base64.
        binary: bool,
    },
    /// `mn`: answer `MN` (and flush, as memcached does).
    MetaNoop,
}

/// A request without its borrowed parts, kept in the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Get {
        kind: GetKind,
        exptime: i64,
        last: bool,
    },
    Store(Store),
    Delete {
        key: Span,
        noreply: bool,
    },
    Arith {
        kind: ArithKind,
        key: Span,
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: Span,
        exptime: i64,
        noreply: bool,
    },
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Version,
    Verbosity {
        level: u32,
        noreply: bool,
    },
    CacheMemlimit {
        megabytes: u32,
        noreply: bool,
    },
    Stats {
        argc: usize,
    },
    Quit,
    MetaGet {
        key: Span,
    },
    MetaSet {
        key: Span,
        data: Span,
        mode: SetMode,
    },
    MetaDelete {
        key: Span,
    },
    MetaArith {
        key: Span,
        mode: ArithMode,
    },
    MetaDebug {
        key: Span,
        binary: bool,
    },
    MetaNoop,
}

impl Pending {
    /// The first stream offset the request points at.
    fn first_offset(&self) -> Option<u64> {
        match *self {
            Pending::Store(s) => Some(s.key.offset),
            Pending::MetaSet { key, .. } => Some(key.offset),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading a command line.
    Line,
    /// Counting a data block.
    Data { remaining: u64 },
    /// Checking the 2 bytes after a data block (`seen` of them so far).
    DataEnd { seen: u8, bad: bool },
    /// Skipping a refused data block.
    Swallow { remaining: u64 },
    /// A line was too long; the connection must close.
    Closed,
}

/// The incremental request parser of one connection (or of one UDP datagram). See the
/// module documentation for the call order.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    announce_data: bool,
    /// Stream offset of the next byte to feed.
    offset: u64,
    state: State,
    line: Line,
    /// The rest of the current line is ignored (after an error found mid-line).
    skip_line: bool,
    /// Tokens of the current line (a get line keeps only its command and exptime here).
    tokens: [Token; TOKENS_MAX],
    /// Tokens seen on the current line (may exceed `TOKENS_MAX`).
    ntok: usize,
    /// The current line is a get-family line.
    get_kind: Option<GetKind>,
    get_exptime: i64,
    /// Keys of the current multiget chunk; capacity `get_chunk_keys_max`, allocated once.
    keys: Vec<Span>,
    /// A key of the current chunk is too long or has control bytes.
    keys_bad: bool,
    /// The keys were handed out; clear them at the next `advance`.
    keys_handed_out: bool,
    /// Stats arguments of the current request.
    args: [Span; TOKENS_MAX],
    /// Meta flags of the current request.
    meta: MetaFlags,
    /// A storage command waiting for its data block.
    pending: Option<Pending>,
    /// Whether that command's `bad data chunk` error is silent (text `noreply`).
    pending_noreply: bool,
    /// What `request()` returns.
    ready: Option<Pending>,
}

impl RequestParser {
    /// A parser for a new connection (stream offset 0). Allocates the multiget key list,
    /// and nothing after.
    pub fn new(limits: Limits) -> Result<Self, LimitsError> {
        limits.check()?;
        Ok(Self {
            keys: Vec::with_capacity(limits.get_chunk_keys_max),
            ..Self::new_unchecked(limits)
        })
    }

    /// Starts over at stream offset 0 with no partial request, as a new parser would, keeping
    /// the limits, `announce_data` and the key list's allocation: for a transport where each
    /// message stands alone (memcached's UDP, where a datagram's unfinished request is
    /// dropped, never continued by the next datagram).
    pub fn reset(&mut self) {
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        let announce_data = self.announce_data;
        *self = Self {
            keys,
            announce_data,
            ..Self::new_unchecked(self.limits)
        };
    }

    /// [`RequestParser::new`] without the check and without the key list.
    fn new_unchecked(limits: Limits) -> Self {
        Self {
            limits,
            announce_data: false,
            offset: 0,
            state: State::Line,
            line: Line::new(0, true),
            skip_line: false,
            tokens: [Token::EMPTY; TOKENS_MAX],
            ntok: 0,
            get_kind: None,
            get_exptime: 0,
            keys: Vec::new(),
            keys_bad: false,
            keys_handed_out: false,
            args: [Span::default(); TOKENS_MAX],
            meta: MetaFlags::EMPTY,
            pending: None,
            pending_noreply: false,
            ready: None,
        }
    }

    /// Makes the parser report [`Outcome::Header`] when a storage command's line is read,
    /// before its data block, so that a store can allocate the item and copy the data as it
    /// arrives instead of holding every piece until the request completes.
    pub fn announce_data(&mut self, on: bool) {
        self.announce_data = on;
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Stream offset of the next byte to feed (the bytes fed so far).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether the parser sits between requests (no partial line or data block).
    pub fn is_idle(&self) -> bool {
        self.state == State::Line && self.line.start == self.offset && self.ntok == 0
    }

    /// The first stream offset a request still to come may point into: the caller may
    /// release every byte before it once it has handled the request just returned (which
    /// may point before it).
    pub fn hold_from(&self) -> u64 {
        match self.state {
            State::Line => {
                if self.get_kind.is_some() {
                    let current = self.line.cur_start().unwrap_or(self.offset);
                    match self.keys.first() {
                        Some(k) if !self.keys_handed_out => k.offset.min(current),
                        _ => current,
                    }
                } else {
                    self.line.start
                }
            }
            State::Data { .. } | State::DataEnd { .. } => self
                .pending
                .and_then(|p| p.first_offset())
                .unwrap_or(self.offset),
            State::Swallow { .. } | State::Closed => self.offset,
        }
    }

    /// The request of the last [`Outcome::Request`] or [`Outcome::Header`], until the next
    /// `advance`.
    pub fn request(&self) -> Option<Request<'_>> {
        let pending = self.ready?;
        Some(match pending {
            Pending::Get {
                kind,
                exptime,
                last,
            } => Request::Get(Get {
                kind,
                exptime,
                keys: &self.keys,
                last,
            }),
            Pending::Store(store) => Request::Store(store),
            Pending::Delete { key, noreply } => Request::Delete { key, noreply },
            Pending::Arith {
                kind,
                key,
                delta,
                noreply,
            } => Request::Arith {
                kind,
                key,
                delta,
                noreply,
            },
            Pending::Touch {
                key,
                exptime,
                noreply,
            } => Request::Touch {
                key,
                exptime,
                noreply,
            },
            Pending::FlushAll { delay, noreply } => Request::FlushAll { delay, noreply },
            Pending::Version => Request::Version,
            Pending::Verbosity { level, noreply } => Request::Verbosity { level, noreply },
            Pending::CacheMemlimit { megabytes, noreply } => {
                Request::CacheMemlimit { megabytes, noreply }
            }
            Pending::Stats { argc } => Request::Stats {
                args: &self.args[..argc],
            },
            Pending::Quit => Request::Quit,
            Pending::MetaGet { key } => Request::MetaGet {
                key,
                flags: &self.meta,
            },
            Pending::MetaSet { key, data, mode } => Request::MetaSet {
                key,
                data,
                mode,
                flags: &self.meta,
            },
            Pending::MetaDelete { key } => Request::MetaDelete {
                key,
                flags: &self.meta,
            },
            Pending::MetaArith { key, mode } => Request::MetaArith {
                key,
                mode,
                flags: &self.meta,
            },
            Pending::MetaDebug { key, binary } => Request::MetaDebug { key, binary },
            Pending::MetaNoop => Request::MetaNoop,
        })
    }

    /// Feeds the next piece of the stream; see the module documentation.
    pub fn advance(&mut self, piece: &[u8]) -> Step {
        self.ready = None;
        if self.keys_handed_out {
            self.keys.clear();
            self.keys_bad = false;
            self.keys_handed_out = false;
        }
        let mut i = 0;
        let outcome = loop {
            match self.state {
                State::Closed => {
                    break Outcome::Error(ParseError::new(ErrorKind::LineTooLong, false));
                }
                State::Data { remaining } => {
                    let take = remaining.min((piece.len() - i) as u64);
                    i += take as usize;
                    if take < remaining {
                        self.state = State::Data {
                            remaining: remaining - take,
                        };
                        break Outcome::NeedMore;
                    }
                    self.state = State::DataEnd {
                        seen: 0,
                        bad: false,
                    };
                }
                State::DataEnd { seen, bad } => {
                    let Some(&b) = piece.get(i) else {
                        break Outcome::NeedMore;
                    };
                    i += 1;
                    let bad = bad || b != [b'\r', b'\n'][seen as usize];
                    if seen == 0 {
                        self.state = State::DataEnd { seen: 1, bad };
                        continue;
                    }
                    self.state = State::Line;
                    self.line.reset(self.offset + i as u64);
                    let pending = self.pending.take();
                    debug_assert!(pending.is_some(), "a data block without its command");
                    if bad {
                        break Outcome::Error(ParseError::new(
                            ErrorKind::BadDataChunk,
                            self.pending_noreply,
                        ));
                    }
                    self.ready = pending;
                    break Outcome::Request;
                }
                State::Swallow { remaining } => {
                    let take = remaining.min((piece.len() - i) as u64);
                    i += take as usize;
                    if take < remaining {
                        self.state = State::Swallow {
                            remaining: remaining - take,
                        };
                        break Outcome::NeedMore;
                    }
                    self.state = State::Line;
                    self.line.reset(self.offset + i as u64);
                }
                State::Line => {
                    if i == piece.len() {
                        break Outcome::NeedMore;
                    }
                    let chunk_full = self.get_kind.is_some()
                        && !self.skip_line
                        && self.keys.len() >= self.limits.get_chunk_keys_max;
                    let limit = match self.get_kind {
                        Some(kind) if kind.unbounded_line() => self.limits.get_line_len_max,
                        _ => self.limits.line_len_max,
                    };
                    let at = self.offset + i as u64;
                    let (n, scan) = self.line.scan(&piece[i..], at, limit as u64, chunk_full);
                    i += n;
                    match scan {
                        Scan::NeedMore => break Outcome::NeedMore,
                        Scan::Token(token) => {
                            if let Some(outcome) = self.on_token(token) {
                                break outcome;
                            }
                        }
                        Scan::Stopped => break self.hand_out_chunk(false),
                        Scan::End { .. } => {
                            if let Some(outcome) = self.on_line_end(self.offset + i as u64) {
                                break outcome;
                            }
                        }
                        Scan::TooLong => {
                            self.state = State::Closed;
                            break Outcome::Error(ParseError::new(ErrorKind::LineTooLong, false));
                        }
                    }
                }
            }
        };
        debug_assert!(i <= piece.len());
        self.offset += i as u64;
        Step {
            consumed: i,
            outcome,
        }
    }

    /// A token of the current line ended.
    fn on_token(&mut self, token: Token) -> Option<Outcome> {
        if self.skip_line {
            return None;
        }
        let index = self.ntok;
        self.ntok += 1;
        if index == 0 {
            self.get_kind = token.bytes().and_then(GetKind::from_word);
            self.tokens[0] = token;
            return None;
        }
        let Some(kind) = self.get_kind else {
            if let Some(slot) = self.tokens.get_mut(index) {
                *slot = token;
            }
            return None;
        };
        if kind.touches() && index == 1 {
            match token.bytes().and_then(parse_i32) {
                Some(exptime) => self.get_exptime = i64::from(exptime),
                None => {
                    self.skip_line = true;
                    return Some(Outcome::Error(ParseError::new(
                        ErrorKind::InvalidExptime,
                        false,
                    )));
                }
            }
            return None;
        }
        if token.len as usize > self.limits.key_len_max || token.ctrl {
            self.keys_bad = true;
        }
        // `advance` stops before a token starts once the chunk is full.
        debug_assert!(self.keys.len() < self.limits.get_chunk_keys_max);
        self.keys.push(token.span());
        None
    }

    /// Hands out the current multiget chunk (or its error).
    fn hand_out_chunk(&mut self, last: bool) -> Outcome {
        self.keys_handed_out = true;
        if self.keys_bad {
            // memcached stops at the bad key and drops the rest of the line.
            if !last {
                self.skip_line = true;
            }
            return Outcome::Error(ParseError::new(ErrorKind::BadFormat, false));
        }
        let kind = self.get_kind.unwrap_or(GetKind::Get);
        self.ready = Some(Pending::Get {
            kind,
            exptime: self.get_exptime,
            last,
        });
        Outcome::Request
    }

    /// The current line ended; the next byte is at stream offset `next`.
    fn on_line_end(&mut self, next: u64) -> Option<Outcome> {
        let skipped = self.skip_line;
        let ntok = self.ntok;
        let get_kind = self.get_kind;
        self.line.reset(next);
        self.skip_line = false;
        self.ntok = 0;
        if skipped {
            self.get_kind = None;
            self.get_exptime = 0;
            return None;
        }
        if get_kind.is_some() {
            // memcached wants at least a key (or, for gat, an exptime): `get` alone is
            // `ERROR`, `gat 10` answers `END`.
            let outcome = if ntok < 2 {
                self.keys_handed_out = true;
                Outcome::Error(ParseError::new(ErrorKind::UnknownCommand, false))
            } else {
                self.hand_out_chunk(true)
            };
            self.get_kind = None;
            self.get_exptime = 0;
            return Some(outcome);
        }
        self.interpret(ntok, next)
    }

    fn error(kind: ErrorKind, noreply: bool) -> Option<Outcome> {
        Some(Outcome::Error(ParseError::new(kind, noreply)))
    }

    fn ready(&mut self, pending: Pending) -> Option<Outcome> {
        self.ready = Some(pending);
        Some(Outcome::Request)
    }

    /// Whether `token` may be a key: short enough and without control bytes.
    fn key_ok(&self, token: &Token) -> bool {
        token.len as usize <= self.limits.key_len_max && !token.ctrl
    }

    /// memcached's `process_command_ascii` for a non-get line of `ntok` tokens whose data
    /// block (if any) starts at `data_start`.
    fn interpret(&mut self, ntok: usize, data_start: u64) -> Option<Outcome> {
        use ErrorKind::*;
        let n = ntok.min(TOKENS_MAX);
        // memcached's `ntokens` counts a terminal token.
        let nt = n + 1;
        if n == 0 || self.tokens[0].len < 2 {
            return Self::error(UnknownCommand, false);
        }
        let cmd = self.tokens[0];
        if cmd.len == 2 && cmd.first() == b'm' {
            return self.interpret_meta(cmd.rest().map_or(0, |r| r[0]), n, data_start);
        }
        // memcached's `set_noreply_maybe`: the last token is `noreply`.
        let noreply = self.tokens[n - 1].is(b"noreply");
        let word = cmd.bytes().unwrap_or(b"");
        let store = |kind| match kind {
            StoreKind::Cas => (nt == 7 || nt == 8).then_some(kind),
            _ => (nt == 6 || nt == 7).then_some(kind),
        };
        let store_kind = match word {
            b"set" => Some(StoreKind::Set),
            b"add" => Some(StoreKind::Add),
            b"replace" => Some(StoreKind::Replace),
            b"append" => Some(StoreKind::Append),
            b"prepend" => Some(StoreKind::Prepend),
            b"cas" => Some(StoreKind::Cas),
            _ => None,
        };
        if let Some(kind) = store_kind {
            let Some(kind) = store(kind) else {
                return Self::error(UnknownCommand, false);
            };
            return self.interpret_store(kind, noreply, data_start);
        }
        let t = &self.tokens;
        match word {
            b"incr" | b"decr" => {
                if nt != 4 && nt != 5 {
                    return Self::error(UnknownCommand, false);
                }
                if !self.key_ok(&t[1]) {
                    return Self::error(BadFormat, noreply);
                }
                let Some(delta) = t[2].bytes().and_then(parse_u64) else {
                    return Self::error(InvalidDelta, noreply);
                };
                let kind = if word == b"incr" {
                    ArithKind::Incr
                } else {
                    ArithKind::Decr
                };
                self.ready(Pending::Arith {
                    kind,
                    key: t[1].span(),
                    delta,
                    noreply,
                })
            }
            b"delete" => {
                if !(3..=5).contains(&nt) {
                    return Self::error(UnknownCommand, false);
                }
                // memcached accepts a `0` hold time for ancient clients, and looks for
                // `noreply` only past the key.
                let mut noreply_seen = false;
                if nt > 3 {
                    let hold_is_zero = t[2].is(b"0");
                    noreply_seen = noreply;
                    let valid = (nt == 4 && (hold_is_zero || noreply))
                        || (nt == 5 && hold_is_zero && noreply);
                    if !valid {
                        return Self::error(DeleteUsage, noreply);
                    }
                }
                if !self.key_ok(&t[1]) {
                    return Self::error(BadFormat, noreply_seen);
                }
                self.ready(Pending::Delete {
                    key: t[1].span(),
                    noreply: noreply_seen,
                })
            }
            b"touch" => {
                if nt != 4 && nt != 5 {
                    return Self::error(UnknownCommand, false);
                }
                if !self.key_ok(&t[1]) {
                    return Self::error(BadFormat, noreply);
                }
                let Some(exptime) = t[2].bytes().and_then(parse_i32) else {
                    return Self::error(InvalidExptime, noreply);
                };
                self.ready(Pending::Touch {
                    key: t[1].span(),
                    exptime: i64::from(exptime),
                    noreply,
                })
            }
            b"flush_all" => {
                if !(2..=4).contains(&nt) {
                    return Self::error(UnknownCommand, false);
                }
                let mut delay = 0;
                if nt != if noreply { 3 } else { 2 } {
                    let Some(d) = t[1].bytes().and_then(parse_i32) else {
                        return Self::error(InvalidExptime, noreply);
                    };
                    delay = i64::from(d);
                }
                self.ready(Pending::FlushAll { delay, noreply })
            }
            b"verbosity" => {
                if nt != 3 && nt != 4 {
                    return Self::error(UnknownCommand, false);
                }
                let Some(level) = t[1].bytes().and_then(parse_u32) else {
                    return Self::error(BadFormat, noreply);
                };
                self.ready(Pending::Verbosity { level, noreply })
            }
            b"cache_memlimit" => {
                if nt != 3 && nt != 4 {
                    return Self::error(UnknownCommand, false);
                }
                let Some(megabytes) = t[1].bytes().and_then(parse_u32) else {
                    return Self::error(UnknownCommand, noreply);
                };
                self.ready(Pending::CacheMemlimit { megabytes, noreply })
            }
            b"stats" => {
                for (arg, token) in self.args.iter_mut().zip(&t[1..n]) {
                    *arg = token.span();
                }
                self.ready(Pending::Stats { argc: n - 1 })
            }
            b"version" => self.ready(Pending::Version),
            b"quit" => self.ready(Pending::Quit),
            _ => Self::error(UnknownCommand, false),
        }
    }

    /// memcached's `process_update_command`.
    fn interpret_store(
        &mut self,
        kind: StoreKind,
        noreply: bool,
        data_start: u64,
    ) -> Option<Outcome> {
        use ErrorKind::*;
        let t = &self.tokens;
        if !self.key_ok(&t[1]) {
            return Self::error(BadFormat, noreply);
        }
        let flags = t[2].bytes().and_then(parse_u32);
        let exptime = t[3].bytes().and_then(parse_i32);
        let len = t[4].bytes().and_then(parse_i32);
        let (Some(flags), Some(exptime), Some(len)) = (flags, exptime, len) else {
            return Self::error(BadFormat, noreply);
        };
        let mut cas = 0;
        if kind == StoreKind::Cas {
            let Some(c) = t[5].bytes().and_then(parse_u64) else {
                return Self::error(BadFormat, noreply);
            };
            cas = c;
        }
        let Some(len) = u32::try_from(len).ok().filter(|&l| l <= VALUE_LEN_LIMIT) else {
            return Self::error(BadFormat, noreply);
        };
        if len > self.limits.value_len_max {
            self.state = State::Swallow {
                remaining: u64::from(len) + 2,
            };
            return Self::error(TooLarge, noreply);
        }
        let store = Store {
            kind,
            key: t[1].span(),
            flags,
            exptime: i64::from(exptime),
            data: Span::new(data_start, len),
            cas,
            noreply,
        };
        self.begin_data(Pending::Store(store), len, noreply)
    }

    /// Waits for a storage command's data block.
    fn begin_data(&mut self, pending: Pending, len: u32, noreply: bool) -> Option<Outcome> {
        self.pending = Some(pending);
        self.pending_noreply = noreply;
        self.state = State::Data {
            remaining: u64::from(len),
        };
        if self.announce_data {
            self.ready = Some(pending);
            return Some(Outcome::Header);
        }
        None
    }

    /// memcached's meta commands, `m<c>` with `n` tokens.
    fn interpret_meta(&mut self, c: u8, n: usize, data_start: u64) -> Option<Outcome> {
        use ErrorKind::*;
        let nt = n + 1;
        let t = &self.tokens;
        match c {
            b'n' => self.ready(Pending::MetaNoop),
            b'e' => {
                if nt < 3 || t[1].len as usize > self.limits.key_len_max {
                    return Self::error(BadFormat, false);
                }
                let binary = nt >= 4 && t[2].is(b"b");
                let key_ok = if binary { t[1].is_base64() } else { !t[1].ctrl };
                if !key_ok {
                    return Self::error(BadFormat, false);
                }
                self.ready(Pending::MetaDebug {
                    key: t[1].span(),
                    binary,
                })
            }
            b'g' | b'd' | b'a' => {
                if nt < 3 {
                    return Self::error(UnknownCommand, false);
                }
                let key = t[1];
                if key.len as usize > self.limits.key_len_max {
                    return Self::error(BadFormat, false);
                }
                if n > META_TOKENS_MAX {
                    let kind = if c == b'g' {
                        MgFlagsTooLong
                    } else {
                        FlagsTooLong
                    };
                    return Self::error(kind, false);
                }
                let flags = match MetaFlags::parse(&t[2..n], &key) {
                    Ok(flags) => flags,
                    // memcached reports md's and ma's flag errors with one message.
                    Err(kind) if c == b'g' => return Self::error(kind, false),
                    Err(_) => return Self::error(InvalidOrDuplicateFlag, false),
                };
                let mode = if c == b'a' {
                    match ArithMode::from_flag(flags.mode()) {
                        Some(mode) => mode,
                        None => return Self::error(InvalidArithMode, false),
                    }
                } else {
                    ArithMode::Incr
                };
                if let Err(kind) = flags.check_opaque() {
                    return Self::error(kind, false);
                }
                if !flags.base64_key() && key.ctrl {
                    return Self::error(BadFormat, false);
                }
                self.meta = flags;
                let key = key.span();
                self.ready(match c {
                    b'g' => Pending::MetaGet { key },
                    b'd' => Pending::MetaDelete { key },
                    _ => Pending::MetaArith { key, mode },
                })
            }
            b's' => {
                if nt < 3 {
                    return Self::error(UnknownCommand, false);
                }
                let key = t[1];
                if key.len as usize > self.limits.key_len_max || nt == 3 {
                    return Self::error(BadFormat, false);
                }
                if n > META_TOKENS_MAX {
                    return Self::error(FlagsTooLong, false);
                }
                let Some(len) = t[2]
                    .bytes()
                    .and_then(parse_i32)
                    .and_then(|l| u32::try_from(l).ok())
                    .filter(|&l| l <= VALUE_LEN_LIMIT)
                else {
                    return Self::error(BadFormat, false);
                };
                // From here on memcached knows the length and skips the data block on error.
                let refused = match MetaFlags::parse(&t[3..n], &key) {
                    Err(kind) => Err(kind),
                    Ok(flags) => {
                        // memcached checks the mode before acting on a too long opaque.
                        match SetMode::from_flag(flags.mode()) {
                            None => Err(InvalidSetMode),
                            Some(mode) => flags
                                .check_opaque()
                                .and_then(|()| {
                                    if !flags.base64_key() && key.ctrl {
                                        Err(BadFormat)
                                    } else if len > self.limits.value_len_max {
                                        Err(TooLarge)
                                    } else {
                                        Ok(())
                                    }
                                })
                                .map(|()| (flags, mode)),
                        }
                    }
                };
                match refused {
                    Err(kind) => {
                        self.state = State::Swallow {
                            remaining: u64::from(len) + 2,
                        };
                        Self::error(kind, false)
                    }
                    Ok((flags, mode)) => {
                        self.meta = flags;
                        let pending = Pending::MetaSet {
                            key: key.span(),
                            data: Span::new(data_start, len),
                            mode,
                        };
                        self.begin_data(pending, len, false)
                    }
                }
            }
            _ => Self::error(UnknownCommand, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{copy_to, Piece};
    use ErrorKind::*;

    /// A request with its spans resolved to bytes.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum M {
        Get(GetKind, i64, Vec<Vec<u8>>, bool),
        Store(StoreKind, Vec<u8>, u32, i64, Vec<u8>, u64, bool),
        Delete(Vec<u8>, bool),
        Arith(ArithKind, Vec<u8>, u64, bool),
        Touch(Vec<u8>, i64, bool),
        FlushAll(i64, bool),
        Version,
        Verbosity(u32, bool),
        CacheMemlimit(u32, bool),
        Stats(Vec<Vec<u8>>),
        Quit,
        MetaGet(Vec<u8>, MetaFlags),
        MetaSet(Vec<u8>, Vec<u8>, SetMode, MetaFlags),
        MetaDelete(Vec<u8>, MetaFlags),
        MetaArith(Vec<u8>, ArithMode, MetaFlags),
        MetaDebug(Vec<u8>, bool),
        MetaNoop,
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Ev {
        Req(M),
        Header(M),
        Err(ErrorKind, bool),
    }

    fn bytes(pieces: &[Piece<'_>], span: Span) -> Vec<u8> {
        let mut out = vec![0; span.len as usize];
        copy_to(pieces, span, &mut out).expect("spans lie in the pieces fed");
        out
    }

    fn model(r: Request<'_>, p: &[Piece<'_>]) -> M {
        let b = |s: Span| bytes(p, s);
        match r {
            Request::Get(g) => M::Get(
                g.kind,
                g.exptime,
                g.keys.iter().map(|&k| b(k)).collect(),
                g.last,
            ),
            Request::Store(s) => M::Store(
                s.kind,
                b(s.key),
                s.flags,
                s.exptime,
                b(s.data),
                s.cas,
                s.noreply,
            ),
            Request::Delete { key, noreply } => M::Delete(b(key), noreply),
            Request::Arith {
                kind,
                key,
                delta,
                noreply,
            } => M::Arith(kind, b(key), delta, noreply),
            Request::Touch {
                key,
                exptime,
                noreply,
            } => M::Touch(b(key), exptime, noreply),
            Request::FlushAll { delay, noreply } => M::FlushAll(delay, noreply),
            Request::Version => M::Version,
            Request::Verbosity { level, noreply } => M::Verbosity(level, noreply),
            Request::CacheMemlimit { megabytes, noreply } => M::CacheMemlimit(megabytes, noreply),
            Request::Stats { args } => M::Stats(args.iter().map(|&a| b(a)).collect()),
            Request::Quit => M::Quit,
            Request::MetaGet { key, flags } => M::MetaGet(b(key), *flags),
            Request::MetaSet {
                key,
                data,
                mode,
                flags,
            } => M::MetaSet(b(key), b(data), mode, *flags),
            Request::MetaDelete { key, flags } => M::MetaDelete(b(key), *flags),
            Request::MetaArith { key, mode, flags } => M::MetaArith(b(key), mode, *flags),
            Request::MetaDebug { key, binary } => M::MetaDebug(b(key), binary),
            Request::MetaNoop => M::MetaNoop,
        }
    }

    /// Parses `input` cut into pieces of `step` bytes, with data headers announced or not.
    fn run_with(input: &[u8], limits: Limits, step: usize, announce: bool) -> Vec<Ev> {
        let mut parser = RequestParser::new(limits).unwrap();
        parser.announce_data(announce);
        let mut events = Vec::new();
        let mut held = Vec::new();
        let mut at = 0u64;
        for piece in input.chunks(step.max(1)) {
            held.push(Piece::new(at, piece));
            at += piece.len() as u64;
            let mut rest = piece;
            loop {
                let s = parser.advance(rest);
                assert!(s.consumed <= rest.len());
                rest = &rest[s.consumed..];
                match s.outcome {
                    Outcome::NeedMore => {
                        assert!(rest.is_empty());
                        break;
                    }
                    Outcome::Request => {
                        events.push(Ev::Req(model(parser.request().unwrap(), &held)))
                    }
                    Outcome::Header => {
                        let r = parser.request().unwrap();
                        // The data has not arrived: report it empty.
                        let m = match r {
                            Request::Store(mut s) => {
                                s.data.len = 0;
                                model(Request::Store(s), &held)
                            }
                            Request::MetaSet {
                                key, mode, flags, ..
                            } => M::MetaSet(bytes(&held, key), Vec::new(), mode, *flags),
                            other => panic!("header for {other:?}"),
                        };
                        events.push(Ev::Header(m));
                    }
                    Outcome::Error(e) => {
                        events.push(Ev::Err(e.kind, e.noreply));
                        if e.closes_connection() {
                            return events;
                        }
                    }
                }
            }
        }
        events
    }

    /// Parses `input` whole and byte by byte (the two must agree) with `limits`.
    fn run(input: &[u8], limits: Limits) -> Vec<Ev> {
        let whole = run_with(input, limits, input.len(), false);
        for step in [1, 2, 3, 7] {
            assert_eq!(
                run_with(input, limits, step, false),
                whole,
                "pieces of {step}"
            );
        }
        whole
    }

    fn parse(input: &[u8]) -> Vec<Ev> {
        run(input, Limits::default())
    }

    fn one(input: &[u8]) -> Ev {
        let events = parse(input);
        assert_eq!(events.len(), 1, "{events:?}");
        events[0].clone()
    }

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn get(kind: GetKind, exptime: i64, keys: &[&str], last: bool) -> Ev {
        Ev::Req(M::Get(
            kind,
            exptime,
            keys.iter().map(|s| k(s)).collect(),
            last,
        ))
    }

    fn set(key: &str, flags: u32, exptime: i64, data: &[u8], noreply: bool) -> Ev {
        Ev::Req(M::Store(
            StoreKind::Set,
            k(key),
            flags,
            exptime,
            data.to_vec(),
            0,
            noreply,
        ))
    }

    fn err(kind: ErrorKind) -> Ev {
        Ev::Err(kind, false)
    }

    /// The flags of `tokens` (for a key that is valid base64 too).
    fn flags(tokens: &[&str]) -> MetaFlags {
        let key = line_token(b"Zm9v");
        let t: Vec<Token> = tokens.iter().map(|s| line_token(s.as_bytes())).collect();
        MetaFlags::parse(&t, &key).unwrap()
    }

    fn line_token(b: &[u8]) -> Token {
        let mut line = Line::new(0, true);
        let mut input = b.to_vec();
        input.push(b' ');
        match line.scan(&input, 0, 4096, false) {
            (_, Scan::Token(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    // Retrieval.

    #[test]
    fn get_one_key() {
        assert_eq!(one(b"get foo\r\n"), get(GetKind::Get, 0, &["foo"], true));
    }

    #[test]
    fn get_many_keys_with_extra_spaces_and_bare_newline() {
        assert_eq!(
            one(b"get  a bb   ccc \n"),
            get(GetKind::Get, 0, &["a", "bb", "ccc"], true)
        );
    }

    #[test]
    fn gets_gat_gats() {
        assert_eq!(
            one(b"gets a b\r\n"),
            get(GetKind::Gets, 0, &["a", "b"], true)
        );
        assert_eq!(one(b"gat 10 a\r\n"), get(GetKind::Gat, 10, &["a"], true));
        assert_eq!(
            one(b"gats -1 a b\r\n"),
            get(GetKind::Gats, -1, &["a", "b"], true)
        );
        assert!(GetKind::Gats.returns_cas() && GetKind::Gats.touches());
        assert!(!GetKind::Get.returns_cas() && !GetKind::Get.touches());
    }

    #[test]
    fn gat_without_keys_answers_end_and_get_without_keys_is_error() {
        // memcached: `gat 10` passes its token count check and finds no key.
        assert_eq!(one(b"gat 10\r\n"), get(GetKind::Gat, 10, &[], true));
        assert_eq!(one(b"get\r\n"), err(UnknownCommand));
        assert_eq!(one(b"gets \r\n"), err(UnknownCommand));
        assert_eq!(one(b"gat\r\n"), err(UnknownCommand));
    }

    #[test]
    fn gat_with_bad_exptime_skips_its_line() {
        assert_eq!(
            parse(b"gat x a b\r\nget c\r\n"),
            [err(InvalidExptime), get(GetKind::Get, 0, &["c"], true)]
        );
    }

    #[test]
    fn get_key_length_limit_is_250() {
        let ok = format!("get {}\r\n", "k".repeat(250));
        assert_eq!(
            one(ok.as_bytes()),
            get(GetKind::Get, 0, &[&"k".repeat(250)], true)
        );
        let long = format!("get a {} b\r\nversion\r\n", "k".repeat(251));
        assert_eq!(
            parse(long.as_bytes()),
            [err(BadFormat), Ev::Req(M::Version)]
        );
    }

    #[test]
    fn keys_with_control_bytes_are_refused() {
        assert_eq!(one(b"get a\tb\r\n"), err(BadFormat));
        assert_eq!(one(b"get a\rb\r\n"), err(BadFormat));
        assert_eq!(one(b"delete a\x7f\r\n"), err(BadFormat));
        // Bytes above 0x7f (UTF-8) are fine.
        assert_eq!(
            one("get ключ\r\n".as_bytes()),
            get(GetKind::Get, 0, &["ключ"], true)
        );
    }

    #[test]
    fn multiget_comes_in_chunks() {
        let limits = Limits {
            get_chunk_keys_max: 2,
            ..Limits::default()
        };
        assert_eq!(
            run(b"get a b c d e\r\nget f g\r\n", limits),
            [
                get(GetKind::Get, 0, &["a", "b"], false),
                get(GetKind::Get, 0, &["c", "d"], false),
                get(GetKind::Get, 0, &["e"], true),
                get(GetKind::Get, 0, &["f", "g"], true),
            ]
        );
        assert_eq!(
            run(b"gats 5 a b c\r\n", limits),
            [
                get(GetKind::Gats, 5, &["a", "b"], false),
                get(GetKind::Gats, 5, &["c"], true),
            ]
        );
    }

    #[test]
    fn a_bad_key_refuses_its_chunk_and_drops_the_rest_of_the_line() {
        let limits = Limits {
            get_chunk_keys_max: 2,
            key_len_max: 3,
            ..Limits::default()
        };
        assert_eq!(
            run(b"get a b cccc d e f\r\nget g\r\n", limits),
            [
                get(GetKind::Get, 0, &["a", "b"], false),
                err(BadFormat),
                get(GetKind::Get, 0, &["g"], true),
            ]
        );
        assert_eq!(
            run(b"get a bbbb\r\nget g\r\n", limits),
            [err(BadFormat), get(GetKind::Get, 0, &["g"], true)]
        );
    }

    #[test]
    fn a_huge_multiget_needs_only_its_chunk_of_keys() {
        let keys: Vec<String> = (0..5000).map(|i| format!("key:{i}")).collect();
        let line = format!("get {}\r\n", keys.join(" "));
        assert!(line.len() > LINE_LEN_MAX);
        let events = run_with(line.as_bytes(), Limits::default(), 1460, false);
        let mut got = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let Ev::Req(M::Get(GetKind::Get, 0, chunk, last)) = e else {
                panic!("{e:?}");
            };
            assert!(chunk.len() <= GET_CHUNK_KEYS_MAX);
            assert_eq!(*last, i == events.len() - 1);
            got.extend(chunk.iter().cloned());
        }
        assert_eq!(got, keys.iter().map(|s| k(s)).collect::<Vec<_>>());
    }

    // Storage.

    #[test]
    fn set_with_data() {
        assert_eq!(
            one(b"set foo 5 100 3\r\nbar\r\n"),
            set("foo", 5, 100, b"bar", false)
        );
    }

    #[test]
    fn set_noreply_and_data_holding_crlf() {
        assert_eq!(
            one(b"set k 0 0 6 noreply\r\na\r\nb\r\n\r\n"),
            set("k", 0, 0, b"a\r\nb\r\n", true)
        );
    }

    #[test]
    fn set_empty_value_negative_exptime_max_flags() {
        assert_eq!(
            one(b"set k 4294967295 -1 0\r\n\r\n"),
            set("k", u32::MAX, -1, b"", false)
        );
    }

    #[test]
    fn every_storage_command() {
        for (word, kind) in [
            ("add", StoreKind::Add),
            ("replace", StoreKind::Replace),
            ("append", StoreKind::Append),
            ("prepend", StoreKind::Prepend),
        ] {
            let input = format!("{word} k 1 2 1\r\nx\r\n");
            assert_eq!(
                one(input.as_bytes()),
                Ev::Req(M::Store(kind, k("k"), 1, 2, k("x"), 0, false))
            );
        }
        assert_eq!(
            one(b"cas k 1 2 1 18446744073709551615\r\nx\r\n"),
            Ev::Req(M::Store(
                StoreKind::Cas,
                k("k"),
                1,
                2,
                k("x"),
                u64::MAX,
                false
            ))
        );
        assert_eq!(
            one(b"cas k 1 2 1 7 noreply\r\nx\r\n"),
            Ev::Req(M::Store(StoreKind::Cas, k("k"), 1, 2, k("x"), 7, true))
        );
    }

    #[test]
    fn a_seventh_token_other_than_noreply_is_ignored() {
        // memcached's set_noreply_maybe only looks for `noreply`; the count check passed.
        assert_eq!(
            one(b"set k 0 0 1 later\r\nx\r\n"),
            set("k", 0, 0, b"x", false)
        );
    }

    #[test]
    fn storage_token_counts() {
        assert_eq!(parse(b"set k 0 0\r\n"), [err(UnknownCommand)]);
        assert_eq!(parse(b"cas k 0 0 1\r\n"), [err(UnknownCommand)]);
        assert_eq!(parse(b"set k 0 0 1 noreply x\r\n"), [err(UnknownCommand)]);
    }

    #[test]
    fn bad_data_chunk_consumes_bytes_plus_two() {
        assert_eq!(
            parse(b"set k 0 0 3\r\nabcde\r\nget k\r\n"),
            // "abc" then "de" where "\r\n" should be; then "\r\n" is an empty line.
            [
                err(BadDataChunk),
                err(UnknownCommand),
                get(GetKind::Get, 0, &["k"], true)
            ]
        );
        assert_eq!(
            parse(b"set k 0 0 1 noreply\r\nab\nget k\r\n"),
            [
                Ev::Err(BadDataChunk, true),
                get(GetKind::Get, 0, &["k"], true)
            ]
        );
    }

    #[test]
    fn too_large_is_refused_at_once_and_its_data_skipped() {
        let mut parser = RequestParser::new(Limits::default()).unwrap();
        let header = b"set big 0 0 2000000\r\n";
        let step = parser.advance(header);
        assert_eq!(step.consumed, header.len());
        assert_eq!(
            step.outcome,
            Outcome::Error(ParseError::new(TooLarge, false))
        );
        // The value arrives in segments; none of it is looked at or kept.
        let segment = [b'\n'; 1460];
        let mut left = 2_000_002usize;
        while left > 0 {
            let n = left.min(segment.len());
            let step = parser.advance(&segment[..n]);
            assert_eq!(
                step,
                Step {
                    consumed: n,
                    outcome: Outcome::NeedMore
                }
            );
            left -= n;
        }
        let step = parser.advance(b"get big\r\n");
        assert_eq!(step.outcome, Outcome::Request);
        assert!(
            matches!(parser.request(), Some(Request::Get(g)) if g.keys == [Span::new(2_000_002 + 21 + 4, 3)])
        );
    }

    #[test]
    fn too_large_with_noreply_is_silent_and_the_limit_is_configurable() {
        let limits = Limits {
            value_len_max: 4,
            ..Limits::default()
        };
        assert_eq!(
            run(
                b"set k 0 0 5 noreply\r\nhello\r\nset k 0 0 4\r\nhell\r\n",
                limits
            ),
            [Ev::Err(TooLarge, true), set("k", 0, 0, b"hell", false)]
        );
    }

    #[test]
    fn a_line_refused_before_its_length_leaves_the_data_to_be_read_as_commands() {
        // memcached does not know how much to skip, so neither do we.
        assert_eq!(
            parse(b"set k 0 0 -1\r\nhello\r\n"),
            [err(BadFormat), err(UnknownCommand)]
        );
        let long = format!("set {} 0 0 5\r\nhello\r\n", "k".repeat(251));
        assert_eq!(
            parse(long.as_bytes()),
            [err(BadFormat), err(UnknownCommand)]
        );
        assert_eq!(
            parse(b"set k x 0 5 noreply\r\nhello\r\n"),
            [Ev::Err(BadFormat, true), err(UnknownCommand)]
        );
    }

    #[test]
    fn storage_numbers_follow_memcached_readers() {
        for line in [
            &b"set k 4294967296 0 1\r\n"[..],
            b"set k -1 0 1\r\n",
            b"set k 0 2147483648 1\r\n",
            b"set k 0 0 2147483646\r\n",
            b"set k 0 0 1x\r\n",
            b"cas k 0 0 1 -1\r\n",
        ] {
            assert_eq!(parse(line), [err(BadFormat)], "{line:?}");
        }
        // The largest length memcached's syntax allows is "too large", not malformed.
        let step = RequestParser::new(Limits::default())
            .unwrap()
            .advance(b"set k 0 0 2147483645\r\n");
        assert_eq!(
            step.outcome,
            Outcome::Error(ParseError::new(TooLarge, false))
        );
    }

    // Other text commands.

    #[test]
    fn delete_forms() {
        assert_eq!(one(b"delete k\r\n"), Ev::Req(M::Delete(k("k"), false)));
        assert_eq!(
            one(b"delete k noreply\r\n"),
            Ev::Req(M::Delete(k("k"), true))
        );
        assert_eq!(one(b"delete k 0\r\n"), Ev::Req(M::Delete(k("k"), false)));
        assert_eq!(
            one(b"delete k 0 noreply\r\n"),
            Ev::Req(M::Delete(k("k"), true))
        );
        assert_eq!(
            one(b"delete noreply\r\n"),
            Ev::Req(M::Delete(k("noreply"), false))
        );
        assert_eq!(one(b"delete k 5\r\n"), err(DeleteUsage));
        assert_eq!(one(b"delete k 5 noreply\r\n"), Ev::Err(DeleteUsage, true));
        assert_eq!(one(b"delete k 0 0 noreply\r\n"), err(UnknownCommand));
        assert_eq!(one(b"delete\r\n"), err(UnknownCommand));
        assert_eq!(
            DeleteUsage.reply(),
            b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
        );
    }

    #[test]
    fn incr_decr() {
        assert_eq!(
            one(b"incr k 5\r\n"),
            Ev::Req(M::Arith(ArithKind::Incr, k("k"), 5, false))
        );
        assert_eq!(
            one(b"decr k 18446744073709551615 noreply\r\n"),
            Ev::Req(M::Arith(ArithKind::Decr, k("k"), u64::MAX, true))
        );
        assert_eq!(one(b"incr k -1\r\n"), err(InvalidDelta));
        assert_eq!(one(b"incr k x noreply\r\n"), Ev::Err(InvalidDelta, true));
        assert_eq!(one(b"incr k\r\n"), err(UnknownCommand));
    }

    #[test]
    fn touch() {
        assert_eq!(one(b"touch k 10\r\n"), Ev::Req(M::Touch(k("k"), 10, false)));
        assert_eq!(
            one(b"touch k -5 noreply\r\n"),
            Ev::Req(M::Touch(k("k"), -5, true))
        );
        assert_eq!(one(b"touch k x\r\n"), err(InvalidExptime));
        assert_eq!(one(b"touch k\r\n"), err(UnknownCommand));
    }

    #[test]
    fn flush_all_forms() {
        assert_eq!(one(b"flush_all\r\n"), Ev::Req(M::FlushAll(0, false)));
        assert_eq!(one(b"flush_all 10\r\n"), Ev::Req(M::FlushAll(10, false)));
        assert_eq!(one(b"flush_all noreply\r\n"), Ev::Req(M::FlushAll(0, true)));
        assert_eq!(
            one(b"flush_all 10 noreply\r\n"),
            Ev::Req(M::FlushAll(10, true))
        );
        assert_eq!(one(b"flush_all -1\r\n"), Ev::Req(M::FlushAll(-1, false)));
        assert_eq!(one(b"flush_all x\r\n"), err(InvalidExptime));
        // memcached reads the delay from the second token whatever comes after.
        assert_eq!(one(b"flush_all noreply 10\r\n"), err(InvalidExptime));
        assert_eq!(one(b"flush_all 1 2 3\r\n"), err(UnknownCommand));
    }

    #[test]
    fn version_quit_verbosity_memlimit() {
        assert_eq!(one(b"version\r\n"), Ev::Req(M::Version));
        assert_eq!(one(b"version please\r\n"), Ev::Req(M::Version));
        assert_eq!(one(b"quit\r\n"), Ev::Req(M::Quit));
        assert_eq!(one(b"verbosity 1\r\n"), Ev::Req(M::Verbosity(1, false)));
        assert_eq!(
            one(b"verbosity 1 noreply\r\n"),
            Ev::Req(M::Verbosity(1, true))
        );
        assert_eq!(one(b"verbosity x\r\n"), err(BadFormat));
        assert_eq!(one(b"verbosity noreply\r\n"), Ev::Err(BadFormat, true));
        assert_eq!(
            one(b"cache_memlimit 64\r\n"),
            Ev::Req(M::CacheMemlimit(64, false))
        );
        assert_eq!(one(b"cache_memlimit x\r\n"), err(UnknownCommand));
        assert_eq!(
            one(b"cache_memlimit x noreply\r\n"),
            Ev::Err(UnknownCommand, true)
        );
    }

    #[test]
    fn stats_with_and_without_arguments() {
        assert_eq!(one(b"stats\r\n"), Ev::Req(M::Stats(vec![])));
        assert_eq!(
            one(b"stats slabs 1\r\n"),
            Ev::Req(M::Stats(vec![k("slabs"), k("1")]))
        );
        let many = format!("stats {}\r\n", vec!["a"; 40].join(" "));
        assert_eq!(
            one(many.as_bytes()),
            Ev::Req(M::Stats(vec![k("a"); TOKENS_MAX - 1]))
        );
    }

    #[test]
    fn unknown_commands_and_empty_lines_are_error() {
        for line in [
            &b"bogus\r\n"[..],
            b"x\r\n",
            b"\r\n",
            b"\n",
            b"   \r\n",
            b"GET a\r\n",
            b"gett a\r\n",
        ] {
            assert_eq!(parse(line), [err(UnknownCommand)], "{line:?}");
        }
        assert_eq!(UnknownCommand.reply(), b"ERROR\r\n");
    }

    #[test]
    fn a_nul_ends_the_command_as_memcached_reads_c_strings() {
        assert_eq!(one(b"get a\0 b c\r\n"), get(GetKind::Get, 0, &["a"], true));
        assert_eq!(
            one(b"set k 0 0 1\0junk\r\nx\r\n"),
            set("k", 0, 0, b"x", false)
        );
    }

    #[test]
    fn a_pipeline_parses_in_order() {
        let input = b"set a 0 0 1\r\n1\r\nget a b\r\nincr a 2\r\ndelete b noreply\r\n\
            mg a v\r\nms b 2 T0\r\nhi\r\nmn\r\nbogus\r\nversion\r\n";
        let events = parse(input);
        assert_eq!(events.len(), 9);
        assert_eq!(events[0], set("a", 0, 0, b"1", false));
        assert_eq!(events[1], get(GetKind::Get, 0, &["a", "b"], true));
        assert_eq!(
            events[2],
            Ev::Req(M::Arith(ArithKind::Incr, k("a"), 2, false))
        );
        assert_eq!(events[3], Ev::Req(M::Delete(k("b"), true)));
        assert_eq!(events[4], Ev::Req(M::MetaGet(k("a"), flags(&["v"]))));
        assert_eq!(
            events[5],
            Ev::Req(M::MetaSet(k("b"), k("hi"), SetMode::Set, flags(&["T0"])))
        );
        assert_eq!(events[6], Ev::Req(M::MetaNoop));
        assert_eq!(events[7], err(UnknownCommand));
        assert_eq!(events[8], Ev::Req(M::Version));
    }

    // Line limits.

    #[test]
    fn a_line_too_long_closes_the_connection() {
        let mut input = vec![b'x'; LINE_LEN_MAX + 1];
        input.extend_from_slice(b"\r\nversion\r\n");
        assert_eq!(parse(&input), [err(LineTooLong)]);
        let mut parser = RequestParser::new(Limits::default()).unwrap();
        let step = parser.advance(&input);
        assert!(matches!(step.outcome, Outcome::Error(e) if e.closes_connection()));
        // Nothing after is accepted.
        let step = parser.advance(b"version\r\n");
        assert_eq!(step.consumed, 0);
        assert!(matches!(step.outcome, Outcome::Error(e) if e.kind == LineTooLong));
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted() {
        let stats = format!("stats {}\r\n", "a".repeat(LINE_LEN_MAX - 6));
        assert_eq!(parse(stats.as_bytes()).len(), 1);
        assert!(matches!(&parse(stats.as_bytes())[0], Ev::Req(M::Stats(_))));
    }

    #[test]
    fn only_get_and_gets_lines_may_exceed_the_line_limit() {
        let keys = vec!["abcdefgh"; 400].join(" ");
        let get_line = format!("get {keys}\r\n");
        assert!(matches!(
            parse(get_line.as_bytes()).last(),
            Some(Ev::Req(M::Get(_, _, _, true)))
        ));
        let gat_line = format!("gat 1 {keys}\r\n");
        assert_eq!(
            run_with(gat_line.as_bytes(), Limits::default(), 100, false).last(),
            Some(&err(LineTooLong))
        );
        let limits = Limits {
            get_line_len_max: 3000,
            ..Limits::default()
        };
        assert_eq!(
            run(get_line.as_bytes(), limits).last(),
            Some(&err(LineTooLong))
        );
    }

    // Meta commands.

    #[test]
    fn mg_with_return_flags_in_order() {
        let f = flags(&["v", "t", "f", "c", "k", "s", "Oabc", "q"]);
        assert_eq!(f.order(), b"vtfcksOq");
        assert!(f.return_value() && f.quiet() && !f.base64_key());
        assert_eq!(f.opaque(), Some(&b"Oabc"[..]));
        assert_eq!(
            one(b"mg foo v t f c k s Oabc q\r\n"),
            Ev::Req(M::MetaGet(k("foo"), f))
        );
        assert_eq!(
            one(b"mg foo\r\n"),
            Ev::Req(M::MetaGet(k("foo"), MetaFlags::EMPTY))
        );
    }

    #[test]
    fn mg_values_for_ttl_vivify_recache() {
        let events = parse(b"mg foo T30 N-1 R+5 E7 C9\r\n");
        let [Ev::Req(M::MetaGet(_, f))] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(f.ttl(), Some(30));
        assert_eq!(f.vivify_ttl(), Some(-1));
        assert_eq!(f.recache_ttl(), Some(5));
        assert_eq!(f.new_cas(), Some(7));
        assert_eq!(f.compare_cas(), Some(9));
        assert_eq!(f.client_flags(), None);
    }

    #[test]
    fn base64_keys() {
        let events = parse(b"mg 44OG44K544OI b v k\r\nmg Zg= b v\r\nmd Zg= b\r\nme Zm9v b\r\n");
        assert_eq!(
            events,
            [
                Ev::Req(M::MetaGet(k("44OG44K544OI"), flags(&["b", "v", "k"]))),
                err(KeyDecode),
                err(InvalidOrDuplicateFlag),
                Ev::Req(M::MetaDebug(k("Zm9v"), true)),
            ]
        );
        assert_eq!(one(b"me Zg= b\r\n"), err(BadFormat));
    }

    #[test]
    fn meta_flag_errors_are_worded_per_command() {
        assert_eq!(one(b"mg foo v v\r\n"), err(DuplicateFlag));
        assert_eq!(one(b"mg foo \xff\r\n"), err(DuplicateFlag));
        assert_eq!(one(b"mg foo Y\r\n"), err(InvalidFlag));
        assert_eq!(one(b"mg foo Tx\r\n"), err(BadToken));
        assert_eq!(one(b"mg foo T\r\n"), err(BadToken));
        assert_eq!(one(b"md foo v v\r\n"), err(InvalidOrDuplicateFlag));
        assert_eq!(one(b"ma foo Tx\r\n"), err(InvalidOrDuplicateFlag));
        // A bad value is remembered and the parse goes on: the last message wins, and an
        // unknown flag after it stops the parse with its own.
        assert_eq!(one(b"mg foo Tx Jx\r\n"), err(InvalidInitial));
        assert_eq!(one(b"mg foo Jx Dx\r\n"), err(InvalidMetaDelta));
        assert_eq!(one(b"mg foo Tx Y\r\n"), err(InvalidFlag));
        // A bad `F` sets the error without a message of its own.
        assert_eq!(one(b"mg foo Fx\r\n"), err(BadFormat));
        assert_eq!(one(b"mg foo Tx Fx\r\n"), err(BadToken));
        assert_eq!(one(b"mg foo MEE\r\n"), err(MTokenLength));
    }

    #[test]
    fn meta_token_limits() {
        let seventeen = "c f h k l q s t u v x I P L O1 T1 N1";
        let ok = format!("mg foo {seventeen}\r\n");
        assert!(matches!(one(ok.as_bytes()), Ev::Req(M::MetaGet(_, f)) if f.len() == 17));
        let over = format!("mg foo {seventeen} E1\r\n");
        assert_eq!(one(over.as_bytes()), err(MgFlagsTooLong));
        let over = format!("md foo {seventeen} E1\r\n");
        assert_eq!(one(over.as_bytes()), err(FlagsTooLong));
        assert_eq!(
            MgFlagsTooLong.reply(),
            b"CLIENT_ERROR options flags are too long\r\n"
        );
        assert_eq!(
            FlagsTooLong.reply(),
            b"CLIENT_ERROR options flags too long\r\n"
        );
        assert_eq!(one(b"mg\r\n"), err(UnknownCommand));
        assert_eq!(one(b"md\r\n"), err(UnknownCommand));
        let long_key = format!("mg {} v\r\n", "k".repeat(251));
        assert_eq!(one(long_key.as_bytes()), err(BadFormat));
        assert_eq!(one(b"mz foo\r\n"), err(UnknownCommand));
    }

    #[test]
    fn opaque_tokens_up_to_32_bytes() {
        let ok = format!("mg foo O{}\r\n", "9".repeat(31));
        assert!(
            matches!(one(ok.as_bytes()), Ev::Req(M::MetaGet(_, f)) if f.opaque().map(<[u8]>::len) == Some(32))
        );
        let long = format!("mg foo O{}\r\n", "9".repeat(32));
        assert_eq!(one(long.as_bytes()), err(OpaqueTooLong));
        let long = format!("md foo O{}\r\n", "9".repeat(40));
        assert_eq!(one(long.as_bytes()), err(OpaqueTooLong));
    }

    #[test]
    fn ms_with_flags_and_modes() {
        assert_eq!(
            one(b"ms foo 2 T90 F1 I\r\nhi\r\n"),
            Ev::Req(M::MetaSet(
                k("foo"),
                k("hi"),
                SetMode::Set,
                flags(&["T90", "F1", "I"])
            ))
        );
        for (m, mode) in [
            ("S", SetMode::Set),
            ("E", SetMode::Add),
            ("A", SetMode::Append),
            ("P", SetMode::Prepend),
            ("R", SetMode::Replace),
        ] {
            let input = format!("ms foo 1 M{m} q\r\nx\r\n");
            let mode_flag = format!("M{m}");
            assert_eq!(
                one(input.as_bytes()),
                Ev::Req(M::MetaSet(
                    k("foo"),
                    k("x"),
                    mode,
                    flags(&[&mode_flag, "q"])
                ))
            );
        }
    }

    #[test]
    fn ms_errors_after_its_length_skip_the_data() {
        for (line, kind) in [
            (&b"ms foo 5 MX\r\nhello\r\nmn\r\n"[..], InvalidSetMode),
            (b"ms foo 5 Y\r\nhello\r\nmn\r\n", InvalidFlag),
            (b"ms foo 5 MXX\r\nhello\r\nmn\r\n", MTokenLength),
            (b"ms foo 5 Fx\r\nhello\r\nmn\r\n", BadFormat),
            (b"ms Zg= 5 b\r\nhello\r\nmn\r\n", KeyDecode),
        ] {
            assert_eq!(parse(line), [err(kind), Ev::Req(M::MetaNoop)], "{line:?}");
        }
        let opaque = format!("ms foo 5 O{}\r\nhello\r\nmn\r\n", "1".repeat(40));
        assert_eq!(
            parse(opaque.as_bytes()),
            [err(OpaqueTooLong), Ev::Req(M::MetaNoop)]
        );
        // memcached checks the mode before acting on a too long opaque.
        let both = format!("ms foo 5 O{} MX\r\nhello\r\nmn\r\n", "1".repeat(40));
        assert_eq!(
            parse(both.as_bytes()),
            [err(InvalidSetMode), Ev::Req(M::MetaNoop)]
        );
        let limits = Limits {
            value_len_max: 4,
            ..Limits::default()
        };
        assert_eq!(
            run(b"ms foo 5 q\r\nhello\r\nmn\r\n", limits),
            [err(TooLarge), Ev::Req(M::MetaNoop)]
        );
    }

    #[test]
    fn ms_errors_before_its_length_do_not_skip() {
        assert_eq!(
            parse(b"ms foo\r\nmn\r\n"),
            [err(BadFormat), Ev::Req(M::MetaNoop)]
        );
        assert_eq!(
            parse(b"ms foo x\r\nmn\r\n"),
            [err(BadFormat), Ev::Req(M::MetaNoop)]
        );
        assert_eq!(
            parse(b"ms foo -1\r\nmn\r\n"),
            [err(BadFormat), Ev::Req(M::MetaNoop)]
        );
        assert_eq!(
            parse(b"ms\r\nmn\r\n"),
            [err(UnknownCommand), Ev::Req(M::MetaNoop)]
        );
    }

    #[test]
    fn ms_bad_data_chunk_is_reported_even_when_quiet() {
        assert_eq!(
            parse(b"ms foo 2 q\r\nhix\r\nmn\r\n"),
            // "hi" then "x\r" where "\r\n" should be; then "\n" ends an empty line.
            [err(BadDataChunk), err(UnknownCommand), Ev::Req(M::MetaNoop)]
        );
    }

    #[test]
    fn md_and_ma() {
        assert_eq!(
            one(b"md foo q C5 I T30 x\r\n"),
            Ev::Req(M::MetaDelete(
                k("foo"),
                flags(&["q", "C5", "I", "T30", "x"])
            ))
        );
        assert_eq!(
            one(b"ma foo\r\n"),
            Ev::Req(M::MetaArith(k("foo"), ArithMode::Incr, MetaFlags::EMPTY))
        );
        for (m, mode) in [
            ("I", ArithMode::Incr),
            ("+", ArithMode::Incr),
            ("D", ArithMode::Decr),
            ("-", ArithMode::Decr),
        ] {
            let input = format!("ma foo M{m} D5 J10 N0 v\r\n");
            let events = parse(input.as_bytes());
            let [Ev::Req(M::MetaArith(_, got, f))] = events.as_slice() else {
                panic!("{events:?}");
            };
            assert_eq!(*got, mode);
            assert_eq!(
                (f.delta(), f.initial(), f.vivify_ttl()),
                (Some(5), Some(10), Some(0))
            );
        }
        assert_eq!(one(b"ma foo MS\r\n"), err(InvalidArithMode));
        assert_eq!(one(b"ma foo Dx\r\n"), err(InvalidOrDuplicateFlag));
    }

    #[test]
    fn me_and_mn() {
        assert_eq!(one(b"me foo\r\n"), Ev::Req(M::MetaDebug(k("foo"), false)));
        assert_eq!(one(b"me\r\n"), err(BadFormat));
        assert_eq!(one(b"mn\r\n"), Ev::Req(M::MetaNoop));
        assert_eq!(one(b"mn extra tokens\r\n"), Ev::Req(M::MetaNoop));
    }

    // The caller's view.

    #[test]
    fn announced_data_headers() {
        let input = b"set k 0 0 5\r\nhello\r\nms j 2 q\r\nhi\r\n";
        let events = run_with(input, Limits::default(), 4, true);
        assert_eq!(
            events,
            [
                Ev::Header(M::Store(StoreKind::Set, k("k"), 0, 0, vec![], 0, false)),
                set("k", 0, 0, b"hello", false),
                Ev::Header(M::MetaSet(k("j"), vec![], SetMode::Set, flags(&["q"]))),
                Ev::Req(M::MetaSet(k("j"), k("hi"), SetMode::Set, flags(&["q"]))),
            ]
        );
    }

    #[test]
    fn offsets_idle_and_what_to_hold() {
        let mut p = RequestParser::new(Limits::default()).unwrap();
        assert!(p.is_idle());
        let s = p.advance(b"set key 0 0 3\r\nab");
        assert_eq!(s.outcome, Outcome::NeedMore);
        assert!(!p.is_idle());
        assert_eq!(p.offset(), 17);
        // The key (offset 4) must stay readable until the request completes.
        assert_eq!(p.hold_from(), 4);
        let s = p.advance(b"c\r\nget a b");
        assert_eq!((s.consumed, s.outcome), (3, Outcome::Request));
        let Some(Request::Store(st)) = p.request() else {
            panic!()
        };
        assert_eq!((st.key, st.data), (Span::new(4, 3), Span::new(15, 3)));
        let s = p.advance(b"get a b");
        assert_eq!(s.outcome, Outcome::NeedMore);
        // A get line needs its chunk's keys only: from "a" on.
        assert_eq!(p.hold_from(), 24);
        let s = p.advance(b"\r\n");
        assert_eq!(s.outcome, Outcome::Request);
        assert!(p.is_idle());
        assert_eq!(p.hold_from(), p.offset());
        assert_eq!(p.request(), p.request());
        // A request is readable until the next advance only.
        p.advance(b"");
        assert_eq!(p.request(), None);
    }

    #[test]
    fn bad_limits_are_refused() {
        let bad = |f: fn(&mut Limits)| {
            let mut l = Limits::default();
            f(&mut l);
            RequestParser::new(l).unwrap_err()
        };
        assert_eq!(bad(|l| l.line_len_max = 10), LimitsError::LineLen);
        assert_eq!(bad(|l| l.key_len_max = 0), LimitsError::KeyLen);
        assert_eq!(bad(|l| l.value_len_max = u32::MAX), LimitsError::ValueLen);
        assert_eq!(bad(|l| l.get_line_len_max = 100), LimitsError::GetLineLen);
        assert_eq!(bad(|l| l.get_chunk_keys_max = 0), LimitsError::ChunkKeys);
    }

    #[test]
    fn error_words_match_memcached() {
        assert_eq!(
            BadFormat.reply(),
            b"CLIENT_ERROR bad command line format\r\n"
        );
        assert_eq!(BadDataChunk.reply(), b"CLIENT_ERROR bad data chunk\r\n");
        assert_eq!(
            TooLarge.reply(),
            b"SERVER_ERROR object too large for cache\r\n"
        );
        assert_eq!(
            InvalidExptime.reply(),
            b"CLIENT_ERROR invalid exptime argument\r\n"
        );
        assert_eq!(
            InvalidDelta.reply(),
            b"CLIENT_ERROR invalid numeric delta argument\r\n"
        );
        assert_eq!(KeyDecode.reply(), b"CLIENT_ERROR error decoding key\r\n");
        assert_eq!(
            InvalidSetMode.reply(),
            b"CLIENT_ERROR invalid mode for ms M token\r\n"
        );
        assert_eq!(
            InvalidArithMode.reply(),
            b"CLIENT_ERROR invalid mode for ma M token\r\n"
        );
        assert_eq!(
            BadToken.to_string(),
            "CLIENT_ERROR bad token in command line format"
        );
        let e = ParseError::new(OpaqueTooLong, false);
        assert_eq!(e.to_string(), "CLIENT_ERROR opaque token too long");
        assert!(!e.closes_connection());
    }
}
