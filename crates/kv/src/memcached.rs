//! memcached's commands over the shared keyspace: what `melange kv` answers on its memcached
//! port, text and meta protocol, as memcached 1.6.18 answers.
//!
//! # Why it is built this way
//!
//! One keyspace serves both protocols: a key stored by memcached's `set` is a Redis string in
//! database 0, its client flags and its memcached bits kept on the entry, and the entry's
//! version stamp (new on every change, never reused) is memcached's CAS unique. A Redis
//! `GET` sees what memcached stored and a memcached `get` sees what Redis `SET`; a key of
//! another Redis type is invisible to memcached's reads (a miss), while writes treat it as
//! present (`set` and `replace` overwrite it as Redis' `SET` does, `add`, `append` and
//! `prepend` refuse, `incr` calls it non-numeric, `delete` removes it).
//!
//! A connection is a [`Session`]: the sans-IO request parser of `melange-memcache` plus
//! the little state memcached keeps per connection. The app feeds it the pieces it receives
//! ([`Session::feed`]), keeps every piece from [`Session::hold_from`] on, and calls
//! [`Session::execute`] when a request completed; keys and values are read from the held
//! pieces through their spans, never gathered first. A stored value is copied once, piece by
//! piece, straight into the allocation the keyspace keeps (a scratch buffer would cost a
//! second copy); keys are copied into a stack buffer of 250 bytes. After warm-up nothing
//! here allocates but the values the keyspace stores.
//!
//! memcached refuses an item larger than its item size limit (`-I`, 1 MiB by default)
//! counting its header, key and CAS, not only the value, and it does so as soon as the
//! command line is read, before the data arrives. The session asks the parser to announce
//! each storage command's line; when the item could be too large it reports the line as
//! ready, [`Session::execute`] refuses it (and, as memcached, drops the old item of a `set`
//! or `ms`), and the session skips the data without asking the app to hold it. So a client
//! streaming a 100 MiB value costs no memory.
//!
//! Time is the caller's `now_ms` (Unix milliseconds). memcached's exptime rules hold: 0 is
//! never, up to 30 days is relative seconds, more is a Unix time, and a negative or past
//! time stores an item already expired (the next read misses it). memcached's clock ticks in
//! seconds; here expiry is to the millisecond from the request's time.
//!
//! Behaviour follows memcached 1.6.18's `proto_text.c`, `memcached.c` and `items.c`,
//! including its quirks: `incr`/`decr` rewrite a shorter number in place padded with spaces
//! (`decr` of `100` by 91 reads back `9  `), a number is what C's `strtoull` accepts
//! followed by a space or the end, `ms` in append mode with `N` does not vivify, the meta
//! `E` and `x` flags are refused as invalid (1.6.18 predates them), and `mg` with `q` hides only misses.
//! `tests/memcached.rs` checks these against the real server. Deviations, none visible on
//! the wire for well-formed requests: a delayed `flush_all` empties database 0 when its time
//! comes rather than hiding older items one by one (memcached's own rule is to the second),
//! `stats` values describe this server (its slabs, threads and rusage are not modelled), and
//! the `l` (last access) and `h` (hit before) flags follow every fetch, where memcached
//! refreshes its access time at most once a minute.

use crate::keyspace::{Keyspace, Slot};
use crate::value::Value;
use melange_memcache::meta::{ArithMode, MetaCode, MetaFlags, SetMode};
use melange_memcache::reply::{self, Full, MetaDebugInfo, MetaReply, Sink, Status};
use melange_memcache::request::{
    ArithKind, GetKind, Limits, LimitsError, Outcome, ParseError, Request, RequestParser,
    StoreKind, KEY_LEN_MAX, VALUE_LEN_LIMIT,
};
use melange_memcache::span::{self, Piece, Span};

/// The memcached version whose behaviour this module follows, and which `version` reports
/// (clients check it to know whether the meta protocol is there).
pub const VERSION: &str = "1.6.18";
/// memcached's default item size limit (`-I 1m`).
pub const ITEM_SIZE_MAX: u32 = 1 << 20;
/// The smallest item size limit memcached accepts (`-I 1k`).
pub const ITEM_SIZE_MIN: u32 = 1024;
/// The largest item size limit memcached accepts (`-I 1g`).
pub const ITEM_SIZE_LIMIT: u32 = 1 << 30;
/// The database memcached's commands work in.
pub const DB: usize = 0;

/// memcached's `sizeof(item)` on a 64-bit machine: what an item costs besides its key, the
/// key's NUL, its client flags (4 bytes when not 0), its data with `\r\n`, and its CAS.
const ITEM_HEADER_LEN: u64 = 48;
/// The CAS unique stored in each item.
const ITEM_CAS_LEN: u64 = 8;
/// Items larger than this are chunked by memcached (`slab_chunk_max`), and `incr` refuses
/// them as non-numeric.
const SLAB_CHUNK_MAX: u64 = 512 * 1024;
/// memcached's `REALTIME_MAXDELTA`: an exptime above it is a Unix time.
const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// Item bit: fetched since stored (`h`, `me`'s `fetch=`).
const FETCHED: u8 = 1;
/// Item bit: a win token (`W`) was handed out; later fetches see `Z`.
const TOKEN_SENT: u8 = 2;
/// Item bit: invalidated by `md ... I` (fetches see `X`).
const STALE: u8 = 4;
/// Item bit: stored by `ms` under a binary (base64) key; `k` returns it encoded.
const KEY_BINARY: u8 = 8;

/// Whether the request carries a meta flag the parser knows but memcached 1.6.18 does not
/// (`E`, a client-chosen CAS, and `md`'s `x`): 1.6.18 refuses them as invalid.
fn unknown_to_1_6_18(flags: &MetaFlags) -> bool {
    flags.has(b'E') || flags.has(b'x')
}

/// The size memcached charges an item against its item size limit.
fn item_total(key_len: u64, flags: u32, value_len: u64) -> u64 {
    let suffix = if flags == 0 { 0 } else { 4 };
    ITEM_HEADER_LEN + key_len + 1 + suffix + value_len + 2 + ITEM_CAS_LEN
}

/// memcached's `realtime(EXPTIME_TO_POSITIVE_TIME(exptime))`, in Unix ms: 0 for never; an
/// expired item gets `now_ms` (so the next read at or after `now_ms` misses it).
fn expire_at(exptime: i64, now_ms: u64) -> u64 {
    let expired = now_ms.max(1);
    if exptime == 0 {
        0
    } else if exptime < 0 {
        expired
    } else if exptime > REALTIME_MAXDELTA {
        let at = (exptime as u64).saturating_mul(1000);
        if at <= now_ms {
            expired
        } else {
            at
        }
    } else {
        now_ms.saturating_add(exptime as u64 * 1000)
    }
}

/// Seconds left before `at_ms` (the `t` flag): -1 for never; an expired item reads 0.
fn ttl_left(at_ms: Option<u64>, now_ms: u64) -> i64 {
    match at_ms {
        None => -1,
        Some(at) => (at.saturating_sub(now_ms).div_ceil(1000)) as i64,
    }
}

/// C's `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// memcached's `safe_strtoull` over an item's data as memcached holds it (the data, then
/// `\r\n`, then whatever; `strtoull` stops at the `\r`): optional leading spaces, an optional
/// sign, digits, then a space or the end. A negative number is refused unless its negation
/// wraps to a small one, as in C.
fn parse_counter(data: &[u8]) -> Option<u64> {
    let at = |i: usize| -> u8 {
        match i.checked_sub(data.len()) {
            None => data[i],
            Some(0) => b'\r',
            Some(1) => b'\n',
            Some(_) => 0,
        }
    };
    let mut i = 0;
    while is_c_space(at(i)) {
        i += 1;
    }
    let negative = match at(i) {
        b'-' => {
            i += 1;
            true
        }
        b'+' => {
            i += 1;
            false
        }
        _ => false,
    };
    let start = i;
    let mut value: Option<u64> = Some(0);
    while at(i).is_ascii_digit() {
        value = value
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(u64::from(at(i) - b'0')));
        i += 1;
    }
    if i == start {
        return None;
    }
    let value = value?;
    let end = at(i);
    if !(is_c_space(end) || end == 0) {
        return None;
    }
    let result = if negative {
        value.wrapping_neg()
    } else {
        value
    };
    if negative && (result as i64) < 0 {
        return None;
    }
    Some(result)
}

/// Writes a reply line of its own words (`MEMLIMIT_TOO_SMALL ...`), `\r\n` added.
fn put_line(sink: &mut impl Sink, line: &[u8]) -> Result<(), Full> {
    sink.reserve(line.len() + 2)?;
    sink.put(line)?;
    sink.put(b"\r\n")
}

/// Formats `value` in decimal into `buf`; returns the digits.
fn digits(value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut v = value;
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[at..]
}

/// The memcached settings of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// memcached's `-I`: the largest item (header, key, value and CAS), 1 MiB by default.
    pub item_size_max: u32,
    /// memcached's `-c`, reported by `stats` (the app enforces it).
    pub max_connections: u32,
    /// The TCP port, reported by `stats settings`.
    pub tcp_port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            item_size_max: ITEM_SIZE_MAX,
            max_connections: 1024,
            tcp_port: 11211,
        }
    }
}

/// A [`Config`] memcached would refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `item_size_max` outside memcached's 1 KiB ..= 1 GiB. Use a size in that range.
    #[error("item_size_max must be between {ITEM_SIZE_MIN} and {ITEM_SIZE_LIMIT} bytes")]
    ItemSize,
    /// The parser refused its limits (a bug here, reported rather than hidden).
    #[error("request parser limits: {0}")]
    Limits(#[from] LimitsError),
}

impl Config {
    /// Checks the settings.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(ITEM_SIZE_MIN..=ITEM_SIZE_LIMIT).contains(&self.item_size_max) {
            return Err(ConfigError::ItemSize);
        }
        self.limits().check()?;
        Ok(())
    }

    /// The parser's limits: memcached's, with no value limit of the parser's own (the
    /// session refuses items by their whole size, as memcached does).
    fn limits(&self) -> Limits {
        Limits {
            value_len_max: VALUE_LEN_LIMIT,
            ..Limits::MEMCACHED
        }
    }
}

/// memcached's server-wide counters and state, shared by every [`Session`] of a server:
/// what `stats` reports, the verbosity, and a pending delayed `flush_all`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// The process id `stats` reports (the app passes it; this crate makes no system call).
    pub pid: u32,
    /// When the server started (Unix ms), for `uptime`.
    pub started_ms: u64,
    /// The settings.
    pub config: Config,
    /// Open connections; the app keeps it up to date.
    pub curr_connections: u64,
    /// Connections accepted since start; the app keeps it up to date.
    pub total_connections: u64,
    /// Keys looked up by get-family commands and `mg`.
    pub cmd_get: u64,
    /// Storage commands whose data arrived.
    pub cmd_set: u64,
    /// `flush_all` commands.
    pub cmd_flush: u64,
    /// Touches (`touch`, `gat`, `gats`, `mg ... T`).
    pub cmd_touch: u64,
    /// Meta commands.
    pub cmd_meta: u64,
    /// Get lookups that found their key.
    pub get_hits: u64,
    /// Get lookups that did not.
    pub get_misses: u64,
    /// Get lookups that found their key expired.
    pub get_expired: u64,
    /// Deletes of absent keys.
    pub delete_misses: u64,
    /// Deletes of present keys.
    pub delete_hits: u64,
    /// `incr` of absent keys.
    pub incr_misses: u64,
    /// `incr` of present keys.
    pub incr_hits: u64,
    /// `decr` of absent keys.
    pub decr_misses: u64,
    /// `decr` of present keys.
    pub decr_hits: u64,
    /// `cas` of absent keys.
    pub cas_misses: u64,
    /// `cas` that stored.
    pub cas_hits: u64,
    /// `cas` refused for a changed item.
    pub cas_badval: u64,
    /// Touches that found their key.
    pub touch_hits: u64,
    /// Touches that did not.
    pub touch_misses: u64,
    /// Items refused as larger than the item size limit.
    pub store_too_large: u64,
    /// Items refused for lack of memory.
    pub store_no_memory: u64,
    /// Items stored since start.
    pub total_items: u64,
    /// Bytes read from clients.
    pub bytes_read: u64,
    /// Bytes written to clients.
    pub bytes_written: u64,
    /// `verbosity`'s last level.
    pub verbosity: u32,
    /// When a delayed `flush_all` empties database 0 (Unix ms), 0 for none.
    pub flush_at_ms: u64,
}

impl Stats {
    /// The state of a server started at `now_ms` as process `pid`.
    pub fn new(config: Config, pid: u32, now_ms: u64) -> Self {
        Self {
            pid,
            started_ms: now_ms,
            config,
            ..Self::default()
        }
    }

    /// Applies a delayed `flush_all` whose time has come.
    fn apply_pending_flush(&mut self, ks: &mut Keyspace, now_ms: u64) {
        if self.flush_at_ms != 0 && now_ms >= self.flush_at_ms {
            self.flush_at_ms = 0;
            ks.flush_db(DB);
        }
    }

    /// `stats reset`: zeroes the counters memcached zeroes.
    fn reset(&mut self) {
        *self = Self {
            pid: self.pid,
            started_ms: self.started_ms,
            config: self.config,
            curr_connections: self.curr_connections,
            total_items: 0,
            verbosity: self.verbosity,
            flush_at_ms: self.flush_at_ms,
            ..Self::default()
        };
    }
}

/// What one [`Session::feed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes of the piece consumed; feed the rest after [`Session::execute`].
    pub consumed: usize,
    /// A request (or an error to answer) is ready: call [`Session::execute`] before feeding
    /// more, with the pieces held from [`Session::hold_from`] (this piece included).
    pub ready: bool,
}

/// What the app does after [`Session::execute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Go on: feed the rest of the piece, then the next pieces.
    Continue,
    /// Close the connection once the replies written so far are sent (`quit`, a line too
    /// long, an output sink that refused a reply, pieces that were not held).
    Close,
}

/// What `execute` has to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ready {
    Nothing,
    Request,
    /// A storage command's line whose item may be too large.
    Header,
    Error(ParseError),
}

/// Why a command stops early.
enum Fail {
    /// The sink refused bytes or a span was not held: close the connection.
    Close,
}

impl From<Full> for Fail {
    fn from(_: Full) -> Self {
        Fail::Close
    }
}

impl From<span::SpanError> for Fail {
    fn from(_: span::SpanError) -> Self {
        Fail::Close
    }
}

/// A sink that counts what it accepts (`bytes_written`).
struct Counting<'s, S: Sink> {
    inner: &'s mut S,
    written: u64,
}

impl<S: Sink> Sink for Counting<'_, S> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        self.inner.put(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn reserve(&mut self, len: usize) -> Result<(), Full> {
        self.inner.reserve(len)
    }
}

/// One memcached connection: the request parser and what memcached keeps per connection.
///
/// Drive it as:
///
/// ```text
/// let mut rest = piece;            // the piece received, at stream offset session.offset()
/// loop {
///     let fed = session.feed(rest);
///     rest = &rest[fed.consumed..];
///     if !fed.ready { break; }     // all of `rest` consumed
///     if session.execute(&mut keyspace, &mut stats, &held_pieces, now_ms, &mut out)
///         == After::Close { close after `out` is sent; break }
/// }
/// release the pieces that end before session.hold_from()
/// ```
#[derive(Debug)]
pub struct Session {
    parser: RequestParser,
    item_size_max: u32,
    ready: Ready,
    /// A refused item's data is being skipped: its completion is not a request.
    swallowing: bool,
    /// Bytes consumed since the last `execute`, for `bytes_read`.
    unreported_read: u64,
}

impl Session {
    /// A session for a new connection (stream offset 0). Allocates the parser's multiget key
    /// list, and nothing after.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        config.check()?;
        let mut parser = RequestParser::new(config.limits())?;
        parser.announce_data(true);
        Ok(Self {
            parser,
            item_size_max: config.item_size_max,
            ready: Ready::Nothing,
            swallowing: false,
            unreported_read: 0,
        })
    }

    /// Starts over at stream offset 0, dropping any unfinished request (a UDP datagram's
    /// requests stand alone: memcached drops what a datagram left unfinished). Allocates
    /// nothing.
    pub fn reset(&mut self) {
        self.parser.reset();
        self.ready = Ready::Nothing;
        self.swallowing = false;
        self.unreported_read = 0;
    }

    /// Whether no request is under way (nothing fed since the last one completed).
    pub fn is_idle(&self) -> bool {
        self.parser.is_idle() && !self.swallowing && self.ready == Ready::Nothing
    }

    /// Stream offset of the next byte to feed: the offset of the next piece's first byte.
    pub fn offset(&self) -> u64 {
        self.parser.offset()
    }

    /// The first stream offset the app must keep: every held byte before it may be released
    /// once the ready request (if any) was executed.
    pub fn hold_from(&self) -> u64 {
        if self.swallowing {
            self.parser.offset()
        } else {
            self.parser.hold_from()
        }
    }

    /// Feeds the next piece of the stream (or the rest of one): consumes bytes until a
    /// request is ready or the piece is used up.
    pub fn feed(&mut self, piece: &[u8]) -> Fed {
        let mut consumed = 0;
        loop {
            let step = self.parser.advance(&piece[consumed..]);
            consumed += step.consumed;
            self.unreported_read += step.consumed as u64;
            let ready = match step.outcome {
                Outcome::NeedMore => Ready::Nothing,
                Outcome::Header => {
                    if self.may_be_too_large() {
                        Ready::Header
                    } else {
                        continue;
                    }
                }
                Outcome::Request if self.swallowing => {
                    self.swallowing = false;
                    continue;
                }
                Outcome::Request => Ready::Request,
                Outcome::Error(e)
                    if self.swallowing && e.kind == melange_memcache::ErrorKind::BadDataChunk =>
                {
                    // memcached skips a refused item's bytes without looking at them.
                    self.swallowing = false;
                    continue;
                }
                Outcome::Error(e) => Ready::Error(e),
            };
            self.ready = ready;
            return Fed {
                consumed,
                ready: ready != Ready::Nothing,
            };
        }
    }

    /// Whether the announced storage command's item may exceed the item size limit (the raw
    /// key length bounds a base64 key's decoded one).
    fn may_be_too_large(&self) -> bool {
        let (key, flags, data) = match self.parser.request() {
            Some(Request::Store(s)) => (s.key, s.flags, s.data),
            Some(Request::MetaSet {
                key, data, flags, ..
            }) => (key, flags.client_flags().unwrap_or(0), data),
            _ => return false,
        };
        item_total(u64::from(key.len), flags, u64::from(data.len)) > u64::from(self.item_size_max)
    }

    /// Runs the ready request against `keyspace` (database 0) and writes its replies into
    /// `out`. `pieces` are the held pieces (from [`Session::hold_from`] on, the last piece
    /// fed included); `now_ms` is the time (Unix ms). `out` should accept every reply (a
    /// growing buffer): a refused reply closes the connection, as a broken stream would.
    pub fn execute(
        &mut self,
        keyspace: &mut Keyspace,
        stats: &mut Stats,
        pieces: &[Piece<'_>],
        now_ms: u64,
        out: &mut impl Sink,
    ) -> After {
        let ready = std::mem::replace(&mut self.ready, Ready::Nothing);
        stats.bytes_read += std::mem::take(&mut self.unreported_read);
        stats.apply_pending_flush(keyspace, now_ms);
        let mut x = Exec {
            ks: keyspace,
            st: stats,
            pieces,
            now: now_ms,
            out: Counting {
                inner: out,
                written: 0,
            },
            item_size_max: u64::from(self.item_size_max),
        };
        let result = match ready {
            Ready::Nothing => Ok(After::Continue),
            Ready::Error(e) => (|| {
                if !e.noreply {
                    reply::parse_error(&mut x.out, &e)?;
                }
                Ok(if e.closes_connection() {
                    After::Close
                } else {
                    After::Continue
                })
            })(),
            Ready::Header => match self.parser.request() {
                Some(request) => x.refuse_if_too_large(request).map(|refused| {
                    self.swallowing = refused;
                    After::Continue
                }),
                None => Ok(After::Continue),
            },
            Ready::Request => match self.parser.request() {
                Some(request) => x.run(request),
                None => Ok(After::Continue),
            },
        };
        let written = x.out.written;
        stats.bytes_written += written;
        result.unwrap_or(After::Close)
    }
}

/// The outcome of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreOutcome {
    Stored,
    NotStored,
    Exists,
    NotFound,
}

/// memcached's store modes (`NREAD_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Comm {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

/// How an `incr`/`decr` went.
enum Delta {
    Done(u64),
    NonNumeric,
    CasMismatch,
}

const NON_NUMERIC: &[u8] = b"cannot increment or decrement non-numeric value";
const OUT_OF_MEMORY: &[u8] = b"out of memory storing object";
const TOO_LARGE: &[u8] = b"object too large for cache";

/// One `execute`: the borrowed world a command runs in.
struct Exec<'a, 'p, S: Sink> {
    ks: &'a mut Keyspace,
    st: &'a mut Stats,
    pieces: &'a [Piece<'p>],
    now: u64,
    out: Counting<'a, S>,
    item_size_max: u64,
}

impl<S: Sink> Exec<'_, '_, S> {
    /// Reads a key (decoding base64 when `binary`) into `buf`.
    fn key<'b>(
        &self,
        span: Span,
        binary: bool,
        buf: &'b mut [u8; KEY_LEN_MAX],
    ) -> Result<&'b [u8], Fail> {
        let len = span.len as usize;
        if len > KEY_LEN_MAX {
            return Err(Fail::Close);
        }
        if !binary {
            span::copy_to(self.pieces, span, &mut buf[..len])?;
            return Ok(&buf[..len]);
        }
        let mut raw = [0u8; KEY_LEN_MAX];
        span::copy_to(self.pieces, span, &mut raw[..len])?;
        match melange_memcache::base64::decode(&raw[..len], buf) {
            Ok(n) => Ok(&buf[..n]),
            // The parser checked the key; a failure here is a bug, not input.
            Err(_) => Err(Fail::Close),
        }
    }

    /// The live string item of `key`, without counting it or touching it (memcached's
    /// `DONT_UPDATE` lookup); counts `get_expired` when it had expired.
    fn find(&mut self, key: &[u8]) -> Option<Slot> {
        let expired = self.ks.stats.expired_keys;
        let slot = self.ks.lookup_quiet(DB, key, self.now);
        if self.ks.stats.expired_keys > expired {
            self.st.get_expired += 1;
        }
        let slot = slot?;
        matches!(self.ks.entry(DB, slot).value(), Value::Str(_)).then_some(slot)
    }

    /// A fetch's LRU bump: refreshes the access clock and marks the item fetched.
    fn bump(&mut self, slot: Slot) {
        self.ks.mark_accessed(DB, slot, self.now);
        let bits = self.ks.entry(DB, slot).memcached_bits();
        self.ks.set_memcached_bits(DB, slot, bits | FETCHED);
    }

    /// Counts a lookup in the keyspace's (Redis') hit and miss counters too.
    fn count_lookup(&mut self, hit: bool) {
        if hit {
            self.ks.stats.hits += 1;
        } else {
            self.ks.stats.misses += 1;
        }
    }

    fn status(&mut self, status: Status, noreply: bool) -> Result<(), Fail> {
        if !noreply {
            reply::status(&mut self.out, status)?;
        }
        Ok(())
    }

    fn client_error(&mut self, message: &[u8], noreply: bool) -> Result<(), Fail> {
        if !noreply {
            reply::client_error(&mut self.out, message)?;
        }
        Ok(())
    }

    fn server_error(&mut self, message: &[u8], noreply: bool) -> Result<(), Fail> {
        if !noreply {
            reply::server_error(&mut self.out, message)?;
        }
        Ok(())
    }

    fn run(&mut self, request: Request<'_>) -> Result<After, Fail> {
        match request {
            Request::Get(get) => {
                for &key in get.keys {
                    self.get_one(get.kind, get.exptime, key)?;
                }
                if get.last {
                    reply::status(&mut self.out, Status::End)?;
                }
            }
            Request::Store(s) => {
                let mut buf = [0u8; KEY_LEN_MAX];
                let key = self.key(s.key, false, &mut buf)?;
                self.text_store(key, s.kind, s.flags, s.exptime, s.cas, s.data, s.noreply)?;
            }
            Request::Delete { key, noreply } => {
                let mut buf = [0u8; KEY_LEN_MAX];
                let key = self.key(key, false, &mut buf)?;
                if self.ks.remove(DB, key, self.now).is_some() {
                    self.st.delete_hits += 1;
                    self.status(Status::Deleted, noreply)?;
                } else {
                    self.st.delete_misses += 1;
                    self.status(Status::NotFound, noreply)?;
                }
            }
            Request::Arith {
                kind,
                key,
                delta,
                noreply,
            } => {
                let mut buf = [0u8; KEY_LEN_MAX];
                let key = self.key(key, false, &mut buf)?;
                self.text_arith(key, kind == ArithKind::Incr, delta, noreply)?;
            }
            Request::Touch {
                key,
                exptime,
                noreply,
            } => {
                let mut buf = [0u8; KEY_LEN_MAX];
                let key = self.key(key, false, &mut buf)?;
                self.st.cmd_touch += 1;
                match self.touch(key, exptime) {
                    Some(_) => {
                        self.st.touch_hits += 1;
                        self.status(Status::Touched, noreply)?;
                    }
                    None => {
                        self.st.touch_misses += 1;
                        self.status(Status::NotFound, noreply)?;
                    }
                }
            }
            Request::FlushAll { delay, noreply } => {
                self.st.cmd_flush += 1;
                if delay > 0 {
                    // memcached: `oldest_live = realtime(delay) - 1`.
                    let at = expire_at(delay, self.now).max(self.now + 1);
                    self.st.flush_at_ms = at.saturating_sub(1000).max(1);
                    self.st.apply_pending_flush(self.ks, self.now);
                } else {
                    self.st.flush_at_ms = 0;
                    self.ks.flush_db(DB);
                }
                self.status(Status::Ok, noreply)?;
            }
            Request::Version => reply::version(&mut self.out, VERSION.as_bytes())?,
            Request::Verbosity { level, noreply } => {
                self.st.verbosity = level.min(2);
                self.status(Status::Ok, noreply)?;
            }
            Request::CacheMemlimit { megabytes, noreply } => {
                if noreply {
                } else if megabytes < 8 {
                    put_line(
                        &mut self.out,
                        b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m",
                    )?;
                } else if megabytes > 1_000_000_000 {
                    put_line(
                        &mut self.out,
                        b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes",
                    )?;
                }
                if (8..=1_000_000_000).contains(&megabytes) {
                    self.ks.maxmemory = megabytes as usize * (1 << 20);
                    self.status(Status::Ok, noreply)?;
                }
            }
            Request::Stats { args } => self.stats(args)?,
            Request::Quit => return Ok(After::Close),
            Request::MetaGet { key, flags } => self.meta_get(key, *flags)?,
            Request::MetaSet {
                key,
                data,
                mode,
                flags,
            } => self.meta_set(key, data, mode, *flags)?,
            Request::MetaDelete { key, flags } => self.meta_delete(key, *flags)?,
            Request::MetaArith { key, mode, flags } => self.meta_arith(key, mode, *flags)?,
            Request::MetaDebug { key, binary } => self.meta_debug(key, binary)?,
            Request::MetaNoop => {
                self.st.cmd_meta += 1;
                MetaReply::new(MetaCode::Mn).emit(&mut self.out)?;
            }
        }
        Ok(After::Continue)
    }

    /// memcached's `item_touch`: the live item of `key` with a new exptime (its CAS kept).
    fn touch(&mut self, key: &[u8], exptime: i64) -> Option<Slot> {
        let slot = self.find(key);
        self.count_lookup(slot.is_some());
        let slot = slot?;
        self.ks.touch_expire(DB, slot, expire_at(exptime, self.now));
        self.bump(slot);
        Some(slot)
    }

    /// One key of `get`, `gets`, `gat`, `gats`.
    fn get_one(&mut self, kind: GetKind, exptime: i64, span: Span) -> Result<(), Fail> {
        let mut buf = [0u8; KEY_LEN_MAX];
        let key = self.key(span, false, &mut buf)?;
        let slot = if kind.touches() {
            self.st.cmd_touch += 1;
            let slot = self.touch(key, exptime);
            if slot.is_some() {
                self.st.touch_hits += 1;
            } else {
                self.st.touch_misses += 1;
            }
            slot
        } else {
            self.st.cmd_get += 1;
            let slot = self.find(key);
            self.count_lookup(slot.is_some());
            if let Some(slot) = slot {
                self.st.get_hits += 1;
                self.bump(slot);
            } else {
                self.st.get_misses += 1;
            }
            slot
        };
        if let Some(slot) = slot {
            let entry = self.ks.entry(DB, slot);
            if let Value::Str(data) = entry.value() {
                let cas = kind.returns_cas().then_some(entry.version());
                reply::value(&mut self.out, key, entry.flags(), cas, data)?;
            }
        }
        Ok(())
    }

    /// Answers a storage command's line whose item may be too large; true when it was
    /// refused (its data is to be skipped).
    fn refuse_if_too_large(&mut self, request: Request<'_>) -> Result<bool, Fail> {
        let mut buf = [0u8; KEY_LEN_MAX];
        match request {
            Request::Store(s) => {
                let key = self.key(s.key, false, &mut buf)?;
                if item_total(key.len() as u64, s.flags, u64::from(s.data.len))
                    <= self.item_size_max
                {
                    return Ok(false);
                }
                self.st.store_too_large += 1;
                if s.kind == StoreKind::Set {
                    // memcached drops the old item rather than keep stale data.
                    self.ks.remove(DB, key, self.now);
                }
                self.server_error(TOO_LARGE, s.noreply)?;
                Ok(true)
            }
            Request::MetaSet {
                key, data, flags, ..
            } => {
                if unknown_to_1_6_18(flags) {
                    reply::client_error(&mut self.out, b"invalid flag")?;
                    return Ok(true);
                }
                let key = self.key(key, flags.base64_key(), &mut buf)?;
                let client_flags = flags.client_flags().unwrap_or(0);
                if item_total(key.len() as u64, client_flags, u64::from(data.len))
                    <= self.item_size_max
                {
                    return Ok(false);
                }
                self.st.store_too_large += 1;
                self.ks.remove(DB, key, self.now);
                self.server_error(TOO_LARGE, false)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`.
    #[allow(clippy::too_many_arguments)]
    fn text_store(
        &mut self,
        key: &[u8],
        kind: StoreKind,
        flags: u32,
        exptime: i64,
        cas: u64,
        data: Span,
        noreply: bool,
    ) -> Result<(), Fail> {
        if item_total(key.len() as u64, flags, u64::from(data.len)) > self.item_size_max {
            // Announced lines are checked when read; this only guards the invariant.
            self.st.store_too_large += 1;
            return self.server_error(TOO_LARGE, noreply);
        }
        if self.ks.make_room(self.now).is_err() {
            self.st.store_no_memory += 1;
            if kind == StoreKind::Set {
                self.ks.remove(DB, key, self.now);
            }
            return self.server_error(OUT_OF_MEMORY, noreply);
        }
        self.st.cmd_set += 1;
        let comm = match kind {
            StoreKind::Set => Comm::Set,
            StoreKind::Add => Comm::Add,
            StoreKind::Replace => Comm::Replace,
            StoreKind::Append => Comm::Append,
            StoreKind::Prepend => Comm::Prepend,
            StoreKind::Cas => Comm::Cas,
        };
        let at = expire_at(exptime, self.now);
        let (stored, _) = self.store_item(key, false, comm, flags, at, cas, false, data)?;
        let status = match stored {
            StoreOutcome::Stored => Status::Stored,
            StoreOutcome::NotStored => Status::NotStored,
            StoreOutcome::Exists => Status::Exists,
            StoreOutcome::NotFound => Status::NotFound,
        };
        self.status(status, noreply)
    }

    /// memcached's `do_store_item`: stores `data` under `key` by `comm`, comparing `cas_in`
    /// (0 for none); returns the outcome and the stored item's CAS (0 when not stored).
    #[allow(clippy::too_many_arguments)]
    fn store_item(
        &mut self,
        key: &[u8],
        binary: bool,
        comm: Comm,
        flags: u32,
        at_ms: u64,
        cas_in: u64,
        set_stale: bool,
        data: Span,
    ) -> Result<(StoreOutcome, u64), Fail> {
        #[derive(PartialEq)]
        enum Cas {
            None,
            Match,
            BadVal,
            Stale,
        }
        let new_value = |pieces: &[Piece<'_>]| -> Result<Vec<u8>, Fail> {
            let mut v = Vec::with_capacity(data.len as usize);
            span::for_each_chunk(pieces, data, |c| v.extend_from_slice(c))?;
            Ok(v)
        };
        let binary_bit = if binary { KEY_BINARY } else { 0 };
        let Some(slot) = self.ks.lookup_quiet(DB, key, self.now) else {
            return match comm {
                Comm::Add | Comm::Set => {
                    let value = new_value(self.pieces)?;
                    let cas = self.put(key, value, flags, Some(at_ms), binary_bit);
                    Ok((StoreOutcome::Stored, cas))
                }
                Comm::Cas => {
                    self.st.cas_misses += 1;
                    Ok((StoreOutcome::NotFound, 0))
                }
                Comm::Replace | Comm::Append | Comm::Prepend => Ok((StoreOutcome::NotStored, 0)),
            };
        };
        let entry = self.ks.entry(DB, slot);
        let old_cas = entry.version();
        let old_bits = entry.memcached_bits();
        let is_str = matches!(entry.value(), Value::Str(_));
        let cas = if cas_in == 0 {
            Cas::None
        } else if cas_in == old_cas {
            Cas::Match
        } else if set_stale && cas_in < old_cas {
            Cas::Stale
        } else {
            Cas::BadVal
        };
        match comm {
            Comm::Add => Ok((StoreOutcome::NotStored, 0)),
            Comm::Cas => match cas {
                Cas::Match => {
                    self.st.cas_hits += 1;
                    let value = new_value(self.pieces)?;
                    let cas = self.put(key, value, flags, Some(at_ms), binary_bit);
                    Ok((StoreOutcome::Stored, cas))
                }
                Cas::Stale => {
                    // Stored, keeping the old TTL, marked stale, the token state kept.
                    self.st.cas_hits += 1;
                    let value = new_value(self.pieces)?;
                    let bits = binary_bit | STALE | (old_bits & TOKEN_SENT);
                    let cas = self.put(key, value, flags, None, bits);
                    Ok((StoreOutcome::Stored, cas))
                }
                Cas::None | Cas::BadVal => {
                    self.st.cas_badval += 1;
                    Ok((StoreOutcome::Exists, 0))
                }
            },
            Comm::Append | Comm::Prepend => {
                if cas != Cas::None && cas != Cas::Match {
                    return Ok((StoreOutcome::Exists, 0));
                }
                if !is_str {
                    return Ok((StoreOutcome::NotStored, 0));
                }
                let pieces = self.pieces;
                let append = comm == Comm::Append;
                self.ks.update(DB, slot, |v| {
                    if let Value::Str(s) = v {
                        if append {
                            s.reserve_exact(data.len as usize);
                            span::for_each_chunk(pieces, data, |c| s.extend_from_slice(c))
                        } else {
                            let mut joined = Vec::with_capacity(s.len() + data.len as usize);
                            let read =
                                span::for_each_chunk(pieces, data, |c| joined.extend_from_slice(c));
                            joined.extend_from_slice(s);
                            *s = joined;
                            read
                        }
                    } else {
                        Ok(())
                    }
                })?;
                self.ks.set_memcached_bits(DB, slot, 0);
                self.st.total_items += 1;
                Ok((StoreOutcome::Stored, self.ks.entry(DB, slot).version()))
            }
            Comm::Set | Comm::Replace => {
                let value = new_value(self.pieces)?;
                let cas = self.put(key, value, flags, Some(at_ms), binary_bit);
                Ok((StoreOutcome::Stored, cas))
            }
        }
    }

    /// Stores a new item (`at_ms`: its expiry, `None` to keep the old one's); returns its CAS.
    fn put(&mut self, key: &[u8], value: Vec<u8>, flags: u32, at_ms: Option<u64>, bits: u8) -> u64 {
        let slot = self
            .ks
            .store(DB, key, Value::Str(value), at_ms.is_none(), self.now);
        self.ks.set_flags(DB, slot, flags);
        if let Some(at) = at_ms {
            self.ks.touch_expire(DB, slot, at);
        }
        self.ks.set_memcached_bits(DB, slot, bits);
        self.st.total_items += 1;
        self.ks.entry(DB, slot).version()
    }

    /// memcached's `do_add_delta` on the string item in `slot`.
    fn add_delta(&mut self, key: &[u8], slot: Slot, incr: bool, delta: u64, cas_in: u64) -> Delta {
        let entry = self.ks.entry(DB, slot);
        let Value::Str(data) = entry.value() else {
            return Delta::NonNumeric;
        };
        if data.is_empty()
            || item_total(key.len() as u64, entry.flags(), data.len() as u64) > SLAB_CHUNK_MAX
        {
            return Delta::NonNumeric;
        }
        if cas_in != 0 && entry.version() != cas_in {
            return Delta::CasMismatch;
        }
        let Some(value) = parse_counter(data) else {
            return Delta::NonNumeric;
        };
        let value = if incr {
            value.wrapping_add(delta)
        } else {
            value.saturating_sub(delta)
        };
        if incr {
            self.st.incr_hits += 1;
        } else {
            self.st.decr_hits += 1;
        }
        let mut buf = [0u8; 20];
        let text = digits(value, &mut buf);
        let grows = text.len() > data.len();
        self.ks.update(DB, slot, |v| {
            if let Value::Str(s) = v {
                if text.len() <= s.len() {
                    // In place, padded with spaces to the old length.
                    s[..text.len()].copy_from_slice(text);
                    s[text.len()..].fill(b' ');
                } else {
                    *s = text.to_vec();
                }
            }
        });
        if grows {
            // memcached links a new item: its fetched and token bits start over.
            self.ks.set_memcached_bits(DB, slot, 0);
        }
        Delta::Done(value)
    }

    /// `incr`, `decr`.
    fn text_arith(
        &mut self,
        key: &[u8],
        incr: bool,
        delta: u64,
        noreply: bool,
    ) -> Result<(), Fail> {
        let Some(slot) = self.ks.lookup_quiet(DB, key, self.now) else {
            if incr {
                self.st.incr_misses += 1;
            } else {
                self.st.decr_misses += 1;
            }
            return self.status(Status::NotFound, noreply);
        };
        match self.add_delta(key, slot, incr, delta, 0) {
            Delta::Done(value) => {
                if !noreply {
                    reply::number(&mut self.out, value)?;
                }
                Ok(())
            }
            Delta::NonNumeric | Delta::CasMismatch => self.client_error(NON_NUMERIC, noreply),
        }
    }

    /// `mg`.
    fn meta_get(&mut self, span: Span, f: MetaFlags) -> Result<(), Fail> {
        self.st.cmd_meta += 1;
        if unknown_to_1_6_18(&f) {
            reply::client_error(&mut self.out, b"invalid flag")?;
            return Ok(());
        }
        let mut buf = [0u8; KEY_LEN_MAX];
        let key = self.key(span, f.base64_key(), &mut buf)?;
        let mut slot = self.find(key);
        self.count_lookup(slot.is_some());
        let mut created = false;
        if slot.is_none() && f.vivify_ttl().is_some() && self.ks.make_room(self.now).is_ok() {
            slot = Some(
                self.ks
                    .store(DB, key, Value::Str(Vec::new()), false, self.now),
            );
            self.st.total_items += 1;
            created = true;
        }
        let mut ttl_set = false;
        let Some(slot) = slot else {
            self.st.get_misses += 1;
            self.st.cmd_get += 1;
            if !f.quiet() {
                let mut line = MetaReply::new(MetaCode::En);
                for &flag in f.order() {
                    match flag {
                        b'O' => {
                            line.opaque(f.opaque().unwrap_or_default());
                        }
                        b'k' => {
                            line.key(key, f.base64_key());
                        }
                        _ => {}
                    }
                }
                line.emit(&mut self.out)?;
            }
            return Ok(());
        };
        let len = match self.ks.entry(DB, slot).value() {
            Value::Str(s) => s.len() as u32,
            _ => 0,
        };
        let mut line = if f.return_value() {
            MetaReply::value(len)
        } else {
            MetaReply::new(MetaCode::Hd)
        };
        let mut won = false;
        for &flag in f.order() {
            let entry = self.ks.entry(DB, slot);
            match flag {
                b'T' => {
                    ttl_set = true;
                    let at = expire_at(f.ttl().unwrap_or(0), self.now);
                    self.ks.touch_expire(DB, slot, at);
                }
                b'N' if created => {
                    let at = expire_at(f.vivify_ttl().unwrap_or(0), self.now);
                    self.ks.touch_expire(DB, slot, at);
                    won = true;
                }
                b'R' => {
                    let r = f.recache_ttl().unwrap_or(0);
                    if let (true, Some(at)) = (r > 0, entry.expire_at_ms()) {
                        if entry.memcached_bits() & TOKEN_SENT == 0
                            && !created
                            && at < expire_at(r, self.now)
                        {
                            won = true;
                        }
                    }
                }
                b's' => {
                    line.flag_u64(b's', u64::from(len));
                }
                b't' => {
                    line.flag_i64(b't', ttl_left(entry.expire_at_ms(), self.now));
                }
                b'c' => {
                    line.flag_u64(b'c', entry.version());
                }
                b'f' => {
                    line.flag_u64(b'f', u64::from(entry.flags()));
                }
                b'l' => {
                    line.flag_u64(b'l', entry.idle_s(self.now));
                }
                b'h' => {
                    line.flag_u64(b'h', u64::from(entry.memcached_bits() & FETCHED != 0));
                }
                b'O' => {
                    line.opaque(f.opaque().unwrap_or_default());
                }
                b'k' => {
                    line.key(key, entry.memcached_bits() & KEY_BINARY != 0);
                }
                _ => {}
            }
        }
        let mut bits = self.ks.entry(DB, slot).memcached_bits();
        if bits & TOKEN_SENT != 0 {
            line.flag(b'Z');
        }
        if bits & STALE != 0 {
            line.flag(b'X');
            if bits & TOKEN_SENT == 0 {
                won = true;
            }
        }
        if won {
            line.flag(b'W');
            bits |= TOKEN_SENT;
        }
        self.ks.set_memcached_bits(DB, slot, bits);
        if ttl_set {
            self.st.cmd_touch += 1;
            self.st.touch_hits += 1;
        } else {
            self.st.cmd_get += 1;
            self.st.get_hits += 1;
        }
        match (f.return_value(), self.ks.entry(DB, slot).value()) {
            (true, Value::Str(data)) => line.emit_with_value(&mut self.out, data)?,
            _ => line.emit(&mut self.out)?,
        }
        if !f.has(b'u') {
            self.bump(slot);
        }
        Ok(())
    }

    /// `ms`.
    fn meta_set(
        &mut self,
        span: Span,
        data: Span,
        mode: SetMode,
        f: MetaFlags,
    ) -> Result<(), Fail> {
        self.st.cmd_meta += 1;
        if unknown_to_1_6_18(&f) {
            reply::client_error(&mut self.out, b"invalid flag")?;
            return Ok(());
        }
        let mut buf = [0u8; KEY_LEN_MAX];
        let key = self.key(span, f.base64_key(), &mut buf)?;
        let client_flags = f.client_flags().unwrap_or(0);
        if item_total(key.len() as u64, client_flags, u64::from(data.len)) > self.item_size_max {
            self.st.store_too_large += 1;
            self.ks.remove(DB, key, self.now);
            return self.server_error(TOO_LARGE, false);
        }
        if self.ks.make_room(self.now).is_err() {
            self.st.store_no_memory += 1;
            self.ks.remove(DB, key, self.now);
            return self.server_error(OUT_OF_MEMORY, false);
        }
        self.st.cmd_set += 1;
        let mut comm = match mode {
            SetMode::Set => Comm::Set,
            SetMode::Add => Comm::Add,
            SetMode::Append => Comm::Append,
            SetMode::Prepend => Comm::Prepend,
            SetMode::Replace => Comm::Replace,
        };
        if f.compare_cas().is_some() && matches!(comm, Comm::Set | Comm::Replace) {
            comm = Comm::Cas;
        }
        let set_stale = f.has(b'I') && comm == Comm::Cas;
        let at = expire_at(f.ttl().unwrap_or(0), self.now);
        let cas_in = f.compare_cas().unwrap_or(0);
        let binary = f.base64_key();
        let (stored, cas) =
            self.store_item(key, binary, comm, client_flags, at, cas_in, set_stale, data)?;
        let code = match stored {
            StoreOutcome::Stored if f.quiet() => return Ok(()),
            StoreOutcome::Stored => MetaCode::Hd,
            StoreOutcome::Exists => MetaCode::Ex,
            StoreOutcome::NotFound => MetaCode::Nf,
            StoreOutcome::NotStored => MetaCode::Ns,
        };
        let mut line = MetaReply::new(code);
        for &flag in f.order() {
            match flag {
                b'O' => {
                    line.opaque(f.opaque().unwrap_or_default());
                }
                b'k' => {
                    line.key(key, binary);
                }
                b'c' => {
                    line.flag_u64(b'c', cas);
                }
                _ => {}
            }
        }
        line.emit(&mut self.out)?;
        Ok(())
    }

    /// `md`.
    fn meta_delete(&mut self, span: Span, f: MetaFlags) -> Result<(), Fail> {
        self.st.cmd_meta += 1;
        if unknown_to_1_6_18(&f) {
            reply::client_error(&mut self.out, b"invalid or duplicate flag")?;
            return Ok(());
        }
        let mut buf = [0u8; KEY_LEN_MAX];
        let key = self.key(span, f.base64_key(), &mut buf)?;
        let code = match self.ks.lookup_quiet(DB, key, self.now) {
            Some(slot) => {
                let entry = self.ks.entry(DB, slot);
                let old_bits = entry.memcached_bits();
                if f.compare_cas().is_some_and(|c| c != entry.version()) {
                    self.st.delete_misses += 1;
                    MetaCode::Ex
                } else if f.has(b'I') {
                    if let Some(ttl) = f.ttl() {
                        let at = expire_at(ttl, self.now);
                        self.ks.touch_expire(DB, slot, at);
                    }
                    let bits = (old_bits | STALE) & !TOKEN_SENT;
                    self.ks.set_memcached_bits(DB, slot, bits);
                    self.ks.bump_version(DB, slot);
                    MetaCode::Hd
                } else {
                    self.st.delete_hits += 1;
                    self.ks.remove_slot(DB, slot);
                    MetaCode::Hd
                }
            }
            None => {
                self.st.delete_misses += 1;
                MetaCode::Nf
            }
        };
        if code == MetaCode::Hd && f.quiet() {
            return Ok(());
        }
        let mut line = MetaReply::new(code);
        for &flag in f.order() {
            match flag {
                b'O' => {
                    line.opaque(f.opaque().unwrap_or_default());
                }
                b'k' => {
                    line.key(key, f.base64_key());
                }
                _ => {}
            }
        }
        line.emit(&mut self.out)?;
        Ok(())
    }

    /// `ma`.
    fn meta_arith(&mut self, span: Span, mode: ArithMode, f: MetaFlags) -> Result<(), Fail> {
        self.st.cmd_meta += 1;
        if unknown_to_1_6_18(&f) {
            reply::client_error(&mut self.out, b"invalid or duplicate flag")?;
            return Ok(());
        }
        let mut buf = [0u8; KEY_LEN_MAX];
        let key = self.key(span, f.base64_key(), &mut buf)?;
        let incr = mode == ArithMode::Incr;
        let delta = f.delta().unwrap_or(1);
        let mut created = false;
        let mut code = MetaCode::Hd;
        let mut item: Option<(Slot, u64)> = None;
        match self.ks.lookup_quiet(DB, key, self.now) {
            Some(slot) => {
                match self.add_delta(key, slot, incr, delta, f.compare_cas().unwrap_or(0)) {
                    Delta::Done(value) => item = Some((slot, value)),
                    Delta::NonNumeric => {
                        reply::client_error(&mut self.out, NON_NUMERIC)?;
                        return Ok(());
                    }
                    Delta::CasMismatch => code = MetaCode::Ex,
                }
            }
            None if f.vivify_ttl().is_some() => {
                if self.ks.make_room(self.now).is_err() {
                    reply::server_error(&mut self.out, b"Out of memory allocating new item")?;
                    return Ok(());
                }
                let initial = f.initial().unwrap_or(0);
                let mut digits_buf = [0u8; 20];
                let text = digits(initial, &mut digits_buf).to_vec();
                let slot = self.ks.store(DB, key, Value::Str(text), false, self.now);
                self.st.total_items += 1;
                created = true;
                item = Some((slot, initial));
            }
            None => {
                if incr {
                    self.st.incr_misses += 1;
                } else {
                    self.st.decr_misses += 1;
                }
                code = MetaCode::Nf;
            }
        }
        let Some((slot, value)) = item else {
            let mut line = MetaReply::new(code);
            for &flag in f.order() {
                match flag {
                    b'O' => {
                        line.opaque(f.opaque().unwrap_or_default());
                    }
                    b'k' => {
                        line.key(key, f.base64_key());
                    }
                    _ => {}
                }
            }
            line.emit(&mut self.out)?;
            return Ok(());
        };
        let mut digits_buf = [0u8; 20];
        let text = digits(value, &mut digits_buf);
        let mut line = if f.return_value() {
            MetaReply::value(text.len() as u32)
        } else {
            MetaReply::new(MetaCode::Hd)
        };
        for &flag in f.order() {
            let entry = self.ks.entry(DB, slot);
            match flag {
                b'c' => {
                    line.flag_u64(b'c', entry.version());
                }
                b't' => {
                    line.flag_i64(b't', ttl_left(entry.expire_at_ms(), self.now));
                }
                b'T' => {
                    let at = expire_at(f.ttl().unwrap_or(0), self.now);
                    self.ks.touch_expire(DB, slot, at);
                }
                b'N' if created => {
                    let at = expire_at(f.vivify_ttl().unwrap_or(0), self.now);
                    self.ks.touch_expire(DB, slot, at);
                }
                b'O' => {
                    line.opaque(f.opaque().unwrap_or_default());
                }
                b'k' => {
                    line.key(key, f.base64_key());
                }
                _ => {}
            }
        }
        // memcached silences only the successful delta, not a vivified item.
        if f.quiet() && !created {
            return Ok(());
        }
        if f.return_value() {
            line.emit_with_value(&mut self.out, text)?;
        } else {
            line.emit(&mut self.out)?;
        }
        Ok(())
    }

    /// `me`.
    fn meta_debug(&mut self, span: Span, binary: bool) -> Result<(), Fail> {
        self.st.cmd_meta += 1;
        let mut buf = [0u8; KEY_LEN_MAX];
        let key = self.key(span, binary, &mut buf)?;
        match self.find(key) {
            Some(slot) => {
                let entry = self.ks.entry(DB, slot);
                let len = match entry.value() {
                    Value::Str(s) => s.len() as u64,
                    _ => 0,
                };
                let info = MetaDebugInfo {
                    // memcached 1.6.18 prints `current_time - exptime`: minus the TTL left.
                    exp: match entry.expire_at_ms() {
                        None => -1,
                        Some(_) => -ttl_left(entry.expire_at_ms(), self.now),
                    },
                    la: entry.idle_s(self.now),
                    cas: entry.version(),
                    fetched: entry.memcached_bits() & FETCHED != 0,
                    cls: 1,
                    size: item_total(key.len() as u64, entry.flags(), len),
                };
                let binary = entry.memcached_bits() & KEY_BINARY != 0;
                reply::meta_debug(&mut self.out, key, binary, &info)?;
            }
            None => MetaReply::new(MetaCode::En).emit(&mut self.out)?,
        }
        Ok(())
    }

    /// `stats [<group>]`.
    fn stats(&mut self, args: &[Span]) -> Result<(), Fail> {
        let mut group_buf = [0u8; 16];
        let group: &[u8] = match args.first() {
            None => b"",
            Some(s) if s.len as usize <= group_buf.len() => {
                let n = s.len as usize;
                span::copy_to(self.pieces, *s, &mut group_buf[..n])?;
                &group_buf[..n]
            }
            Some(_) => b"?",
        };
        let out = &mut self.out;
        match group {
            b"" => self.general_stats()?,
            b"reset" => {
                self.st.reset();
                reply::status(out, Status::Reset)?;
                return Ok(());
            }
            b"detail" => {
                let mut sub_buf = [0u8; 4];
                let sub: &[u8] = match args.get(1) {
                    Some(s) if s.len as usize <= sub_buf.len() => {
                        let n = s.len as usize;
                        span::copy_to(self.pieces, *s, &mut sub_buf[..n])?;
                        &sub_buf[..n]
                    }
                    _ => b"",
                };
                match sub {
                    b"on" | b"off" => reply::status(out, Status::Ok)?,
                    b"dump" => reply::status(out, Status::End)?,
                    _ => put_line(out, b"CLIENT_ERROR usage: stats detail on|off|dump")?,
                }
                return Ok(());
            }
            b"settings" => {
                let c = self.st.config;
                let maxbytes = self.ks.maxmemory as u64;
                let evictions: &[u8] =
                    if self.ks.policy == crate::keyspace::EvictionPolicy::NoEviction {
                        b"off"
                    } else {
                        b"on"
                    };
                reply::stat_u64(out, b"maxbytes", maxbytes)?;
                reply::stat_u64(out, b"maxconns", u64::from(c.max_connections))?;
                reply::stat_u64(out, b"tcpport", u64::from(c.tcp_port))?;
                reply::stat_u64(out, b"udpport", 0)?;
                reply::stat_u64(out, b"verbosity", u64::from(self.st.verbosity))?;
                reply::stat_u64(out, b"oldest", 0)?;
                reply::stat(out, b"evictions", evictions)?;
                reply::stat(out, b"cas_enabled", b"yes")?;
                reply::stat_u64(out, b"item_size_max", u64::from(c.item_size_max))?;
                reply::stat_u64(out, b"slab_chunk_max", SLAB_CHUNK_MAX)?;
                reply::stat(out, b"flush_enabled", b"yes")?;
            }
            b"items" => {
                let items = self.ks.db(DB).len() as u64;
                if items > 0 {
                    reply::stat_u64(out, b"items:1:number", items)?;
                    reply::stat_u64(out, b"items:1:mem_requested", self.ks.db(DB).bytes() as u64)?;
                    reply::stat_u64(out, b"items:1:evicted", self.ks.stats.evicted_keys)?;
                }
            }
            b"slabs" => {
                let used = u64::from(!self.ks.db(DB).is_empty());
                reply::stat_u64(out, b"active_slabs", used)?;
                reply::stat_u64(out, b"total_malloced", self.ks.used_bytes() as u64)?;
            }
            b"sizes" => reply::stat(out, b"sizes_status", b"disabled")?,
            b"conns" => {}
            _ => {
                reply::error(out)?;
                return Ok(());
            }
        }
        reply::status(&mut self.out, Status::End)?;
        Ok(())
    }

    /// The general `stats` list, memcached 1.6.18's names in its order.
    fn general_stats(&mut self) -> Result<(), Fail> {
        let st = &*self.st;
        let ks = &*self.ks;
        let now_s = self.now / 1000;
        let uptime = self.now.saturating_sub(st.started_ms) / 1000;
        let n = |v: u64| v;
        let numbers: [(&[u8], u64); 83] = [
            (b"pid", n(u64::from(st.pid))),
            (b"uptime", uptime),
            (b"time", now_s),
            (b"", 0), // version
            (b"", 0), // libevent
            (b"pointer_size", 64),
            (b"", 0), // rusage_user
            (b"", 0), // rusage_system
            (b"max_connections", u64::from(st.config.max_connections)),
            (b"curr_connections", st.curr_connections),
            (b"total_connections", st.total_connections),
            (b"rejected_connections", 0),
            (b"connection_structures", st.curr_connections),
            (b"response_obj_oom", 0),
            (b"response_obj_count", 0),
            (b"response_obj_bytes", 0),
            (b"read_buf_count", 0),
            (b"read_buf_bytes", 0),
            (b"read_buf_bytes_free", 0),
            (b"read_buf_oom", 0),
            (b"reserved_fds", 0),
            (b"cmd_get", st.cmd_get),
            (b"cmd_set", st.cmd_set),
            (b"cmd_flush", st.cmd_flush),
            (b"cmd_touch", st.cmd_touch),
            (b"cmd_meta", st.cmd_meta),
            (b"get_hits", st.get_hits),
            (b"get_misses", st.get_misses),
            (b"get_expired", st.get_expired),
            (b"get_flushed", 0),
            (b"delete_misses", st.delete_misses),
            (b"delete_hits", st.delete_hits),
            (b"incr_misses", st.incr_misses),
            (b"incr_hits", st.incr_hits),
            (b"decr_misses", st.decr_misses),
            (b"decr_hits", st.decr_hits),
            (b"cas_misses", st.cas_misses),
            (b"cas_hits", st.cas_hits),
            (b"cas_badval", st.cas_badval),
            (b"touch_hits", st.touch_hits),
            (b"touch_misses", st.touch_misses),
            (b"store_too_large", st.store_too_large),
            (b"store_no_memory", st.store_no_memory),
            (b"auth_cmds", 0),
            (b"auth_errors", 0),
            (b"bytes_read", st.bytes_read),
            (b"bytes_written", st.bytes_written),
            (b"limit_maxbytes", ks.maxmemory as u64),
            (b"accepting_conns", 1),
            (b"listen_disabled_num", 0),
            (b"time_in_listen_disabled_us", 0),
            (b"threads", 1),
            (b"conn_yields", 0),
            (b"hash_power_level", 16),
            (b"hash_bytes", 524_288),
            (b"hash_is_expanding", 0),
            (b"slab_reassign_rescues", 0),
            (b"slab_reassign_chunk_rescues", 0),
            (b"slab_reassign_evictions_nomem", 0),
            (b"slab_reassign_inline_reclaim", 0),
            (b"slab_reassign_busy_items", 0),
            (b"slab_reassign_busy_deletes", 0),
            (b"slab_reassign_running", 0),
            (b"slabs_moved", 0),
            (b"lru_crawler_running", 0),
            (b"lru_crawler_starts", 0),
            (b"lru_maintainer_juggles", 0),
            (b"malloc_fails", 0),
            (b"log_worker_dropped", 0),
            (b"log_worker_written", 0),
            (b"log_watcher_skipped", 0),
            (b"log_watcher_sent", 0),
            (b"log_watchers", 0),
            (b"unexpected_napi_ids", 0),
            (b"round_robin_fallback", 0),
            (b"bytes", ks.db(DB).bytes() as u64),
            (b"curr_items", ks.db(DB).len() as u64),
            (b"total_items", st.total_items),
            (b"slab_global_page_pool", 0),
            (b"expired_unfetched", 0),
            (b"evicted_unfetched", 0),
            (b"evicted_active", 0),
            (b"evictions", ks.stats.evicted_keys),
        ];
        let out = &mut self.out;
        for (i, (name, value)) in numbers.iter().enumerate() {
            match i {
                3 => reply::stat(out, b"version", VERSION.as_bytes())?,
                4 => reply::stat(out, b"libevent", b"none")?,
                6 => reply::stat(out, b"rusage_user", b"0.000000")?,
                7 => reply::stat(out, b"rusage_system", b"0.000000")?,
                _ => reply::stat_u64(out, name, *value)?,
            }
        }
        for name in [
            &b"reclaimed"[..],
            b"crawler_reclaimed",
            b"crawler_items_checked",
            b"lrutail_reflocked",
            b"moves_to_cold",
            b"moves_to_warm",
            b"moves_within_lru",
            b"direct_reclaims",
            b"lru_bumps_dropped",
        ] {
            reply::stat_u64(out, name, 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_as_strtoull() {
        assert_eq!(parse_counter(b"100"), Some(100));
        assert_eq!(parse_counter(b"9  "), Some(9));
        assert_eq!(parse_counter(b"  7"), Some(7));
        assert_eq!(parse_counter(b"+7"), Some(7));
        assert_eq!(parse_counter(b"5 abc"), Some(5));
        assert_eq!(parse_counter(b"5\0x"), Some(5));
        assert_eq!(parse_counter(b"12abc"), None);
        assert_eq!(parse_counter(b"abc"), None);
        assert_eq!(parse_counter(b"   "), None);
        assert_eq!(parse_counter(b"-1"), None);
        assert_eq!(parse_counter(b"-0"), Some(0));
        assert_eq!(parse_counter(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_counter(b"18446744073709551616"), None);
        assert_eq!(parse_counter(b"-18446744073709551615"), Some(1));
    }

    #[test]
    fn exptimes_follow_memcached() {
        let now = 1_700_000_000_000;
        assert_eq!(expire_at(0, now), 0);
        assert_eq!(expire_at(-1, now), now);
        assert_eq!(expire_at(10, now), now + 10_000);
        assert_eq!(expire_at(REALTIME_MAXDELTA, now), now + 2_592_000_000);
        assert_eq!(expire_at(REALTIME_MAXDELTA + 1, now), now);
        assert_eq!(expire_at(1_800_000_000, now), 1_800_000_000_000);
        assert_eq!(ttl_left(None, now), -1);
        assert_eq!(ttl_left(Some(now + 1), now), 1);
        assert_eq!(ttl_left(Some(now + 30_000), now), 30);
    }
}
