//! The key-value workload of the TCP load generator: what `melange loadgen --protocol
//! resp|memcache` asks a Redis or memcached server, and how it reads the answers.
//!
//! Like memtier and mutilate, a workload is a key space (`keys` keys, chosen uniformly or by
//! a Zipf law, YCSB's θ = 0.99), a get/set mix and a value size. Keys are fixed-width
//! (`mlg:000000000042`), so every request of a kind has the same length, and every value is
//! a pattern of its key: a set of key *k* always writes the same bytes, so a get that hits is
//! checked byte for byte without keeping a copy, and a server that returns another key's
//! value, a truncated one or a stale length is caught (counted `corrupt`).
//!
//! [`ReplyScanner`] is a sans-IO reader of the replies: it is fed whatever bytes arrived (a
//! reply may span segments, or many replies share one), keeps at most one header line
//! ([`REPLY_LINE_MAX`] bytes), never allocates, and reports each whole reply as a [`Reply`].
//! It reads RESP2's scalar replies (`+`, `-`, `:`, `$`) and memcached's text replies (`VALUE
//! ... END`, `END`, `STORED`, the errors); anything else is [`Reply::Malformed`], after which
//! the stream cannot be resynchronised and the load generator drops the connection. A
//! hostile or broken server therefore costs a counter, never a panic or unbounded memory
//! (the scanner has a fuzz target).
//!
//! Requests are written by [`KvChooser::write_request`] into a caller's buffer; the load
//! generator copies them into pool buffers, so nothing is allocated per request.

/// Longest reply header line the scanner keeps (memcached's `VALUE <key> <flags> <bytes>
/// <cas>` with a 250-byte key fits, as does any RESP scalar header).
pub const REPLY_LINE_MAX: usize = 512;
/// Most keys of a workload (a Zipf law's normalising sum is computed once, O(keys)).
pub const KV_LOAD_KEYS_MAX: u64 = 100_000_000;
/// Largest value of a workload: a set request (key, value and framing) must fit one buffer
/// chain, as the load generator builds each request in one.
pub const KV_LOAD_VALUE_MAX: usize = melange_core::BufChain::LEN_MAX - 128;
/// The prefix of every key.
pub const KV_LOAD_KEY_PREFIX: &[u8] = b"mlg:";
/// Digits of a key's number.
const KEY_DIGITS: usize = 12;
/// Length of every key.
pub const KV_LOAD_KEY_LEN: usize = KV_LOAD_KEY_PREFIX.len() + KEY_DIGITS;
/// Parts per million in a get ratio.
pub const PER_MILLION: u32 = 1_000_000;
/// YCSB's Zipf constant.
const ZIPF_THETA: f64 = 0.99;

/// The protocol a workload speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvProtocol {
    /// Redis' RESP2: `GET key`, `SET key value` as arrays of bulk strings.
    Resp,
    /// memcached's text protocol: `get key`, `set key 0 0 len`.
    Memcache,
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDistribution {
    /// Every key alike.
    Uniform,
    /// Zipf with θ = 0.99 (YCSB's default): key 0 is the hottest.
    Zipf,
}

/// A key-value workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvWorkload {
    /// The protocol.
    pub protocol: KvProtocol,
    /// Keys in the key space, 1..=[`KV_LOAD_KEYS_MAX`].
    pub keys: u64,
    /// Gets per million requests (the rest are sets), 0..=[`PER_MILLION`].
    pub get_per_million: u32,
    /// Bytes per value, 1..=[`KV_LOAD_VALUE_MAX`].
    pub value_len: usize,
    /// How keys are chosen.
    pub distribution: KeyDistribution,
    /// Seed of the key and operation choices.
    pub seed: u64,
    /// Open loop: requests per second over all connections, sent on schedule whatever the
    /// replies do (so latency at a fixed offered load is measured, not the server's pace);
    /// `None` keeps every pipeline full (closed loop).
    pub rate_per_s: Option<u64>,
}

/// One request: a get or a set of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvOp {
    /// The key's number.
    pub key: u64,
    /// A get (else a set).
    pub get: bool,
}

/// The byte at `offset` of key `key`'s value: printable, so a value can be read in a trace.
pub fn value_byte(key: u64, offset: usize) -> u8 {
    let mix = key
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(offset as u64)
        .wrapping_mul(0x2545_f491_4f6c_dd1d);
    b'a' + ((mix >> 59) as u8 % 26)
}

/// A small, fast generator (SplitMix64): one per connection, so runs repeat given a seed.
#[derive(Debug, Clone, Copy)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator for `seed` and `stream` (a connection's number).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut g = SplitMix(seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03));
        g.next_u64();
        g
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A uniform float in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The workload's choices, with what a Zipf law needs computed once (Gray et al.,
/// "Quickly generating billion-record synthetic databases", as YCSB does).
#[derive(Debug, Clone, Copy)]
pub struct KvChooser {
    workload: KvWorkload,
    zipf: Option<Zipf>,
}

#[derive(Debug, Clone, Copy)]
struct Zipf {
    alpha: f64,
    zeta_n: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl KvChooser {
    /// The chooser of `workload` (its counts clamped to their ranges).
    pub fn new(mut workload: KvWorkload) -> Self {
        workload.keys = workload.keys.clamp(1, KV_LOAD_KEYS_MAX);
        workload.get_per_million = workload.get_per_million.min(PER_MILLION);
        workload.value_len = workload.value_len.clamp(1, KV_LOAD_VALUE_MAX);
        let zipf =
            (workload.distribution == KeyDistribution::Zipf && workload.keys > 1).then(|| {
                let n = workload.keys;
                let zeta = |count: u64| {
                    (1..=count)
                        .map(|i| 1.0 / (i as f64).powf(ZIPF_THETA))
                        .sum::<f64>()
                };
                let zeta_n = zeta(n);
                let zeta_2 = zeta(2);
                Zipf {
                    alpha: 1.0 / (1.0 - ZIPF_THETA),
                    zeta_n,
                    eta: (1.0 - (2.0 / n as f64).powf(1.0 - ZIPF_THETA)) / (1.0 - zeta_2 / zeta_n),
                    half_pow_theta: 0.5f64.powf(ZIPF_THETA),
                }
            });
        Self { workload, zipf }
    }

    /// The workload, as clamped.
    pub fn workload(&self) -> &KvWorkload {
        &self.workload
    }

    /// The next request of a connection drawing from `rng`.
    pub fn next_op(&self, rng: &mut SplitMix) -> KvOp {
        let get =
            (rng.next_u64() % u64::from(PER_MILLION)) < u64::from(self.workload.get_per_million);
        let n = self.workload.keys;
        let key = match self.zipf {
            None => rng.next_u64() % n,
            Some(z) => {
                let u = rng.next_f64();
                let uz = u * z.zeta_n;
                if uz < 1.0 {
                    0
                } else if uz < 1.0 + z.half_pow_theta {
                    1
                } else {
                    let k = (n as f64 * (z.eta * u - z.eta + 1.0).powf(z.alpha)) as u64;
                    k.min(n - 1)
                }
            }
        };
        KvOp { key, get }
    }

    /// Longest request of the workload (a set).
    pub fn request_len_max(&self) -> usize {
        let mut scratch = Vec::new();
        append_request(&self.workload, KvOp { key: 0, get: false }, &mut scratch);
        scratch.len()
    }

    /// Writes request `op` to `out` (cleared first).
    pub fn write_request(&self, op: KvOp, out: &mut Vec<u8>) {
        out.clear();
        append_request(&self.workload, op, out);
    }

    /// Appends request `op` to `out`: pipelined requests go out in one send.
    pub fn append_request(&self, op: KvOp, out: &mut Vec<u8>) {
        append_request(&self.workload, op, out);
    }
}

/// Writes `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Writes key `key`: the prefix and twelve digits.
fn push_key(out: &mut Vec<u8>, key: u64) {
    out.extend_from_slice(KV_LOAD_KEY_PREFIX);
    let mut digits = [b'0'; KEY_DIGITS];
    let mut n = key;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
}

fn push_value(out: &mut Vec<u8>, key: u64, len: usize) {
    out.extend((0..len).map(|k| value_byte(key, k)));
}

fn append_request(workload: &KvWorkload, op: KvOp, out: &mut Vec<u8>) {
    let len = workload.value_len;
    match (workload.protocol, op.get) {
        (KvProtocol::Resp, true) => {
            out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$");
            push_decimal(out, KV_LOAD_KEY_LEN);
            out.extend_from_slice(b"\r\n");
            push_key(out, op.key);
            out.extend_from_slice(b"\r\n");
        }
        (KvProtocol::Resp, false) => {
            out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$");
            push_decimal(out, KV_LOAD_KEY_LEN);
            out.extend_from_slice(b"\r\n");
            push_key(out, op.key);
            out.extend_from_slice(b"\r\n$");
            push_decimal(out, len);
            out.extend_from_slice(b"\r\n");
            push_value(out, op.key, len);
            out.extend_from_slice(b"\r\n");
        }
        (KvProtocol::Memcache, true) => {
            out.extend_from_slice(b"get ");
            push_key(out, op.key);
            out.extend_from_slice(b"\r\n");
        }
        (KvProtocol::Memcache, false) => {
            out.extend_from_slice(b"set ");
            push_key(out, op.key);
            out.extend_from_slice(b" 0 0 ");
            push_decimal(out, len);
            out.extend_from_slice(b"\r\n");
            push_value(out, op.key, len);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// One whole reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A value (`$n` bulk string; memcached `VALUE ... END`) of `len` bytes; `matches` says
    /// whether its bytes were the expected key's pattern.
    Value {
        /// Its length.
        len: usize,
        /// Every byte was the expected key's.
        matches: bool,
    },
    /// No such key (`$-1`; memcached's bare `END`).
    Miss,
    /// A write was taken (`+OK`; `STORED`).
    Stored,
    /// The server refused the request (`-ERR ...`, `-OOM ...`; memcached's `ERROR`,
    /// `CLIENT_ERROR`, `SERVER_ERROR`).
    Error,
    /// Another well-formed reply (an integer, another status, `NOT_STORED`): not what a get
    /// or a set is answered with.
    Other,
    /// Bytes that are no reply of the protocol: the stream is lost.
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    /// Reading a header line.
    Line,
    /// Reading a value's bytes: `left` to go.
    Value { left: usize },
    /// Reading the `\r\n` after a value: `left` bytes to go.
    ValueEnd { left: usize },
    /// memcached: the `END` line after a value.
    End,
    /// The stream was malformed; everything after is ignored.
    Lost,
}

/// The incremental reply reader. See the module documentation.
#[derive(Debug, Clone)]
pub struct ReplyScanner {
    protocol: KvProtocol,
    state: ScanState,
    line: [u8; REPLY_LINE_MAX],
    line_len: usize,
    /// The line being read is longer than [`REPLY_LINE_MAX`]: only its start is kept.
    line_truncated: bool,
    /// The last byte of the line read so far (to find its `\r\n` across pieces).
    line_last: u8,
    /// Length of the text of the last error reply, at the start of `line`.
    error_len: usize,
    value_len: usize,
    value_at: usize,
    value_matches: bool,
}

impl ReplyScanner {
    /// A scanner of `protocol` replies.
    pub fn new(protocol: KvProtocol) -> Self {
        Self {
            protocol,
            state: ScanState::Line,
            line: [0; REPLY_LINE_MAX],
            line_len: 0,
            line_truncated: false,
            line_last: 0,
            error_len: 0,
            value_len: 0,
            value_at: 0,
            value_matches: true,
        }
    }

    /// Starts over, for a new connection.
    pub fn reset(&mut self) {
        self.state = ScanState::Line;
        self.line_len = 0;
        self.line_truncated = false;
        self.line_last = 0;
        self.error_len = 0;
    }

    /// The text of the error reply [`ReplyScanner::feed`] returned last (at most
    /// [`REPLY_LINE_MAX`] bytes of it), valid until the next call: what a server said when
    /// it refused a request (`-DENIED Redis is running in protected mode ...`).
    pub fn error_text(&self) -> &[u8] {
        &self.line[..self.error_len]
    }

    /// Whether the stream was lost to a malformed reply.
    pub fn is_lost(&self) -> bool {
        self.state == ScanState::Lost
    }

    /// Reads from `bytes` until one reply is whole or `bytes` runs out: returns how many
    /// bytes it consumed and the reply, if one completed. A value's bytes are compared with
    /// key `expect_key`'s pattern (the key of the oldest request outstanding).
    pub fn feed(&mut self, bytes: &[u8], expect_key: u64) -> (usize, Option<Reply>) {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                ScanState::Lost => return (bytes.len(), None),
                ScanState::Line | ScanState::End => {
                    let rest = &bytes[at..];
                    let (take, complete) = match rest.iter().position(|&b| b == b'\n') {
                        Some(nl) => (nl + 1, true),
                        None => (rest.len(), false),
                    };
                    // A longer line keeps its first REPLY_LINE_MAX bytes: enough to tell an
                    // error (whose text may be long) from anything else.
                    let keep = take.min(REPLY_LINE_MAX - self.line_len);
                    self.line[self.line_len..self.line_len + keep].copy_from_slice(&rest[..keep]);
                    self.line_len += keep;
                    self.line_truncated |= keep < take;
                    let before_newline = if take >= 2 {
                        rest[take - 2]
                    } else {
                        self.line_last
                    };
                    if take > 0 {
                        self.line_last = rest[take - 1];
                    }
                    at += take;
                    if !complete {
                        return (at, None);
                    }
                    let truncated = std::mem::take(&mut self.line_truncated);
                    let len = std::mem::take(&mut self.line_len);
                    self.line_last = 0;
                    if before_newline != b'\r' || (!truncated && len < 2) {
                        self.state = ScanState::Lost;
                        return (bytes.len(), Some(Reply::Malformed));
                    }
                    let content = if truncated { len } else { len - 2 };
                    let line = &self.line[..content];
                    if truncated {
                        let error = match self.protocol {
                            KvProtocol::Resp => line.starts_with(b"-"),
                            KvProtocol::Memcache => {
                                line.starts_with(b"CLIENT_ERROR")
                                    || line.starts_with(b"SERVER_ERROR")
                            }
                        };
                        if !error {
                            self.state = ScanState::Lost;
                            return (bytes.len(), Some(Reply::Malformed));
                        }
                        self.error_len = content;
                        return (at, Some(Reply::Error));
                    }
                    if self.state == ScanState::End {
                        if line == b"END" {
                            self.state = ScanState::Line;
                            return (
                                at,
                                Some(Reply::Value {
                                    len: self.value_len,
                                    matches: self.value_matches,
                                }),
                            );
                        }
                        // Several values for one get (or a value without END): not ours.
                        self.state = ScanState::Lost;
                        return (bytes.len(), Some(Reply::Malformed));
                    }
                    let parsed = match self.protocol {
                        KvProtocol::Resp => resp_line(line),
                        KvProtocol::Memcache => memcache_line(line),
                    };
                    match parsed {
                        LineKind::Done(reply) => {
                            if reply == Reply::Malformed {
                                self.state = ScanState::Lost;
                                return (bytes.len(), Some(reply));
                            }
                            if reply == Reply::Error {
                                self.error_len = content;
                            }
                            return (at, Some(reply));
                        }
                        LineKind::Value(len) => {
                            self.value_len = len;
                            self.value_at = 0;
                            self.value_matches = true;
                            self.state = if len == 0 {
                                ScanState::ValueEnd { left: 2 }
                            } else {
                                ScanState::Value { left: len }
                            };
                        }
                    }
                }
                ScanState::Value { left } => {
                    let take = left.min(bytes.len() - at);
                    for (k, &b) in bytes[at..at + take].iter().enumerate() {
                        if b != value_byte(expect_key, self.value_at + k) {
                            self.value_matches = false;
                        }
                    }
                    self.value_at += take;
                    at += take;
                    self.state = if take == left {
                        ScanState::ValueEnd { left: 2 }
                    } else {
                        ScanState::Value { left: left - take }
                    };
                }
                ScanState::ValueEnd { left } => {
                    let expected: &[u8] = if left == 2 { b"\r\n" } else { b"\n" };
                    if bytes[at] != expected[0] {
                        self.state = ScanState::Lost;
                        return (bytes.len(), Some(Reply::Malformed));
                    }
                    at += 1;
                    if left > 1 {
                        self.state = ScanState::ValueEnd { left: left - 1 };
                        continue;
                    }
                    match self.protocol {
                        KvProtocol::Resp => {
                            self.state = ScanState::Line;
                            return (
                                at,
                                Some(Reply::Value {
                                    len: self.value_len,
                                    matches: self.value_matches,
                                }),
                            );
                        }
                        KvProtocol::Memcache => self.state = ScanState::End,
                    }
                }
            }
        }
        (at, None)
    }
}

enum LineKind {
    Done(Reply),
    /// A value of this many bytes follows.
    Value(usize),
}

/// A decimal length of at most [`KV_LOAD_VALUE_MAX`]... or any length a server may send,
/// bounded so that the arithmetic cannot overflow: a larger one is malformed for us.
fn parse_len(digits: &[u8]) -> Option<usize> {
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

fn resp_line(line: &[u8]) -> LineKind {
    let Some((&kind, rest)) = line.split_first() else {
        return LineKind::Done(Reply::Malformed);
    };
    match kind {
        b'+' if rest == b"OK" => LineKind::Done(Reply::Stored),
        b'+' | b':' => LineKind::Done(Reply::Other),
        b'-' => LineKind::Done(Reply::Error),
        b'$' if rest == b"-1" => LineKind::Done(Reply::Miss),
        b'$' => match parse_len(rest) {
            Some(len) => LineKind::Value(len),
            None => LineKind::Done(Reply::Malformed),
        },
        // Arrays, RESP3 types and anything else: no get or set is answered so.
        _ => LineKind::Done(Reply::Malformed),
    }
}

fn memcache_line(line: &[u8]) -> LineKind {
    match line {
        b"END" => LineKind::Done(Reply::Miss),
        b"STORED" => LineKind::Done(Reply::Stored),
        b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND" | b"DELETED" | b"TOUCHED" => {
            LineKind::Done(Reply::Other)
        }
        b"ERROR" => LineKind::Done(Reply::Error),
        _ if line.starts_with(b"CLIENT_ERROR") || line.starts_with(b"SERVER_ERROR") => {
            LineKind::Done(Reply::Error)
        }
        _ if line.starts_with(b"VALUE ") => {
            // VALUE <key> <flags> <bytes> [<cas>]
            let mut fields = line[6..].split(|&b| b == b' ').filter(|f| !f.is_empty());
            let (Some(_key), Some(_flags), Some(bytes)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return LineKind::Done(Reply::Malformed);
            };
            match parse_len(bytes) {
                Some(len) => LineKind::Value(len),
                None => LineKind::Done(Reply::Malformed),
            }
        }
        _ => LineKind::Done(Reply::Malformed),
    }
}

/// What a workload's replies came to, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KvReplyCounts {
    /// Gets answered with the key's value.
    pub hits: u64,
    /// Gets answered "no such key".
    pub misses: u64,
    /// Sets the server took.
    pub stored: u64,
    /// Requests the server refused with an error (out of memory, say).
    pub errors: u64,
    /// Replies that were not what the request is answered with, or a value not the key's.
    pub wrong: u64,
}

impl KvReplyCounts {
    /// Counts `reply` to `op`; whether it is a right answer.
    pub fn count(&mut self, op: KvOp, reply: Reply, value_len: usize) -> bool {
        match (op.get, reply) {
            (true, Reply::Value { len, matches }) if matches && len == value_len => {
                self.hits += 1;
                true
            }
            (true, Reply::Miss) => {
                self.misses += 1;
                true
            }
            (false, Reply::Stored) => {
                self.stored += 1;
                true
            }
            (_, Reply::Error) => {
                self.errors += 1;
                true
            }
            _ => {
                self.wrong += 1;
                false
            }
        }
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &KvReplyCounts) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.stored += other.stored;
        self.errors += other.errors;
        self.wrong += other.wrong;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(protocol: KvProtocol) -> KvWorkload {
        KvWorkload {
            protocol,
            keys: 1000,
            get_per_million: 900_000,
            value_len: 5,
            distribution: KeyDistribution::Uniform,
            seed: 7,
            rate_per_s: None,
        }
    }

    fn request(protocol: KvProtocol, op: KvOp) -> Vec<u8> {
        let mut out = Vec::new();
        KvChooser::new(workload(protocol)).write_request(op, &mut out);
        out
    }

    fn value(key: u64, len: usize) -> Vec<u8> {
        (0..len).map(|k| value_byte(key, k)).collect()
    }

    #[test]
    fn requests_are_the_protocols_get_and_set() {
        let v = String::from_utf8(value(42, 5)).unwrap();
        assert_eq!(
            request(KvProtocol::Resp, KvOp { key: 42, get: true }),
            b"*2\r\n$3\r\nGET\r\n$16\r\nmlg:000000000042\r\n"
        );
        assert_eq!(
            request(
                KvProtocol::Resp,
                KvOp {
                    key: 42,
                    get: false
                }
            ),
            format!("*3\r\n$3\r\nSET\r\n$16\r\nmlg:000000000042\r\n$5\r\n{v}\r\n").as_bytes()
        );
        assert_eq!(
            request(KvProtocol::Memcache, KvOp { key: 7, get: true }),
            b"get mlg:000000000007\r\n"
        );
        let v7 = String::from_utf8(value(7, 5)).unwrap();
        assert_eq!(
            request(KvProtocol::Memcache, KvOp { key: 7, get: false }),
            format!("set mlg:000000000007 0 0 5\r\n{v7}\r\n").as_bytes()
        );
    }

    /// Feeds `bytes` in pieces of `step` and collects the replies.
    fn scan(protocol: KvProtocol, bytes: &[u8], key: u64, step: usize) -> Vec<Reply> {
        let mut s = ReplyScanner::new(protocol);
        let mut replies = Vec::new();
        for piece in bytes.chunks(step) {
            let mut at = 0;
            while at < piece.len() {
                let (used, reply) = s.feed(&piece[at..], key);
                assert!(used > 0 || reply.is_some(), "the scanner makes progress");
                at += used;
                replies.extend(reply);
            }
        }
        replies
    }

    #[test]
    fn resp_replies_are_read_whole_however_they_are_split() {
        let mut bytes = b"+OK\r\n$-1\r\n$5\r\n".to_vec();
        bytes.extend(value(3, 5));
        bytes.extend_from_slice(b"\r\n-OOM command not allowed\r\n:12\r\n$5\r\nwrong\r\n");
        for step in [1, 2, 3, 7, bytes.len()] {
            assert_eq!(
                scan(KvProtocol::Resp, &bytes, 3, step),
                [
                    Reply::Stored,
                    Reply::Miss,
                    Reply::Value {
                        len: 5,
                        matches: true
                    },
                    Reply::Error,
                    Reply::Other,
                    Reply::Value {
                        len: 5,
                        matches: false
                    },
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn memcache_replies_are_read_whole_however_they_are_split() {
        let mut bytes = b"STORED\r\nEND\r\nVALUE mlg:000000000003 0 5\r\n".to_vec();
        bytes.extend(value(3, 5));
        bytes.extend_from_slice(
            b"\r\nEND\r\nSERVER_ERROR out of memory storing object\r\nNOT_STORED\r\n",
        );
        for step in [1, 4, 9, bytes.len()] {
            assert_eq!(
                scan(KvProtocol::Memcache, &bytes, 3, step),
                [
                    Reply::Stored,
                    Reply::Miss,
                    Reply::Value {
                        len: 5,
                        matches: true
                    },
                    Reply::Error,
                    Reply::Other,
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn garbage_loses_the_stream_once_and_then_is_ignored() {
        for (protocol, bytes) in [
            (KvProtocol::Resp, &b"*1\r\n$1\r\na\r\n+OK\r\n"[..]),
            (KvProtocol::Resp, b"$99999999999\r\n"),
            (KvProtocol::Resp, b"+OK\n"),
            (KvProtocol::Resp, b"$2\r\nabXY+OK\r\n"),
            (KvProtocol::Memcache, b"HELLO\r\nSTORED\r\n"),
            (KvProtocol::Memcache, b"VALUE k 0\r\n"),
            (
                KvProtocol::Memcache,
                b"VALUE k 0 1\r\nx\r\nVALUE k 0 1\r\nx\r\nEND\r\n",
            ),
        ] {
            let replies = scan(protocol, bytes, 0, 1);
            assert_eq!(
                replies,
                [Reply::Malformed],
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let mut long = vec![b'+'; REPLY_LINE_MAX + 1];
        long.extend_from_slice(b"\r\n");
        assert_eq!(scan(KvProtocol::Resp, &long, 0, 100), [Reply::Malformed]);
    }

    #[test]
    fn a_long_error_is_an_error_and_its_text_is_kept() {
        let mut text = b"-DENIED Redis is running in protected mode".to_vec();
        text.extend(std::iter::repeat_n(b'.', 2 * REPLY_LINE_MAX));
        let mut bytes = text.clone();
        bytes.extend_from_slice(b"\r\n+OK\r\n");
        for step in [1, 2, 100, bytes.len()] {
            assert_eq!(
                scan(KvProtocol::Resp, &bytes, 0, step),
                [Reply::Error, Reply::Stored],
                "step {step}"
            );
        }
        let mut s = ReplyScanner::new(KvProtocol::Resp);
        assert_eq!(s.feed(&bytes, 0).1, Some(Reply::Error));
        assert_eq!(s.error_text(), &text[..REPLY_LINE_MAX]);
        let mut s = ReplyScanner::new(KvProtocol::Memcache);
        assert_eq!(
            s.feed(b"SERVER_ERROR out of memory\r\n", 0),
            (28, Some(Reply::Error))
        );
        assert_eq!(s.error_text(), b"SERVER_ERROR out of memory");
    }

    #[test]
    fn counts_tell_right_answers_from_wrong_ones() {
        let mut c = KvReplyCounts::default();
        let get = KvOp { key: 1, get: true };
        let set = KvOp { key: 1, get: false };
        assert!(c.count(
            get,
            Reply::Value {
                len: 5,
                matches: true
            },
            5
        ));
        assert!(!c.count(
            get,
            Reply::Value {
                len: 4,
                matches: true
            },
            5
        ));
        assert!(!c.count(
            get,
            Reply::Value {
                len: 5,
                matches: false
            },
            5
        ));
        assert!(c.count(get, Reply::Miss, 5));
        assert!(c.count(set, Reply::Stored, 5));
        assert!(!c.count(set, Reply::Miss, 5));
        assert!(c.count(set, Reply::Error, 5));
        assert_eq!(
            c,
            KvReplyCounts {
                hits: 1,
                misses: 1,
                stored: 1,
                errors: 1,
                wrong: 3
            }
        );
    }

    #[test]
    fn the_mix_and_the_keys_follow_the_workload() {
        for distribution in [KeyDistribution::Uniform, KeyDistribution::Zipf] {
            let chooser = KvChooser::new(KvWorkload {
                distribution,
                ..workload(KvProtocol::Resp)
            });
            let mut rng = SplitMix::new(1, 2);
            let mut gets = 0;
            let mut hits_of_key_0 = 0;
            let n = 100_000;
            for _ in 0..n {
                let op = chooser.next_op(&mut rng);
                assert!(op.key < 1000);
                gets += u32::from(op.get);
                hits_of_key_0 += u32::from(op.key == 0);
            }
            assert!(
                (88_000..92_000).contains(&gets),
                "{distribution:?}: {gets} gets"
            );
            match distribution {
                // 1 in 1000.
                KeyDistribution::Uniform => assert!(hits_of_key_0 < 300, "{hits_of_key_0}"),
                // Zipf(0.99) over 1000 keys gives the first about 13%.
                KeyDistribution::Zipf => assert!(hits_of_key_0 > 8_000, "{hits_of_key_0}"),
            }
        }
    }

    #[test]
    fn the_longest_request_is_a_set() {
        let chooser = KvChooser::new(workload(KvProtocol::Memcache));
        assert_eq!(
            chooser.request_len_max(),
            b"set mlg:000000000000 0 0 5\r\n\r\n".len() + 5
        );
    }
}
