//! The reply encoder: every reply a memcached server sends, written into an output [`Sink`]
//! without allocating.
//!
//! A reply is written whole or not at all: each function first asks the sink to
//! [`Sink::reserve`] the reply's full length, then puts its parts (a `VALUE` line, the data,
//! its `\r\n`), so a sink that refuses for lack of room has received nothing and the caller
//! can flush and retry. Numbers are formatted on the stack; a meta reply line is built in a
//! fixed [`MetaReply`] buffer, flags appended in the order the request gave them (the order
//! memcached uses).
//!
//! Alternative rejected: `write!` into a `fmt::Write`. It hides the formatting cost, cannot
//! reserve a whole reply, and a `String` sink would allocate.

use crate::base64;
use crate::meta::MetaCode;
use crate::num::{format_i64, format_u64, DIGITS_MAX};
use crate::request::ParseError;

/// The sink refused the bytes: it has no room. Flush it and write the reply again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the output sink is full")]
pub struct Full;

/// Where replies go: a connection's send buffer, a datagram being built, a `Vec` in tests.
pub trait Sink {
    /// Appends all of `bytes`, or nothing and `Err(Full)`.
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full>;

    /// Checks that `len` more bytes would be accepted. Encoders call it before the first
    /// `put` of a reply, so a reply is written whole or not at all. The default accepts
    /// everything (for sinks that grow).
    fn reserve(&mut self, len: usize) -> Result<(), Full> {
        let _ = len;
        Ok(())
    }
}

/// A growing sink. It allocates only when it outgrows its capacity, so a `Vec` reserved at
/// start-up and cleared after each flush does not allocate per reply.
impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// A sink over a fixed buffer (a transmit buffer's payload, say).
#[derive(Debug)]
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceSink<'a> {
    /// An empty sink over `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Number of bytes written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still free.
    pub fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Forgets what was written.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Full> {
        if bytes.len() > self.room() {
            return Err(Full);
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }

    fn reserve(&mut self, len: usize) -> Result<(), Full> {
        if len > self.room() {
            return Err(Full);
        }
        Ok(())
    }
}

/// Reserves the parts' total length, then puts them.
fn put_all(sink: &mut impl Sink, parts: &[&[u8]]) -> Result<(), Full> {
    sink.reserve(parts.iter().map(|p| p.len()).sum())?;
    for part in parts {
        sink.put(part)?;
    }
    Ok(())
}

/// The one-word replies of the text protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `STORED`: a storage command succeeded.
    Stored,
    /// `NOT_STORED`: `add`'s or `replace`'s condition failed (or append/prepend found no item).
    NotStored,
    /// `EXISTS`: `cas` found the item changed.
    Exists,
    /// `NOT_FOUND`: no such item (`cas`, `delete`, `incr`, `decr`, `touch`).
    NotFound,
    /// `DELETED`.
    Deleted,
    /// `TOUCHED`.
    Touched,
    /// `END`: the end of a get's values or of a stats list.
    End,
    /// `OK`: `flush_all`, `verbosity`, `cache_memlimit`.
    Ok,
    /// `RESET`: `stats reset`.
    Reset,
}

impl Status {
    /// The reply line, `\r\n` included.
    pub const fn line(self) -> &'static [u8] {
        match self {
            Status::Stored => b"STORED\r\n",
            Status::NotStored => b"NOT_STORED\r\n",
            Status::Exists => b"EXISTS\r\n",
            Status::NotFound => b"NOT_FOUND\r\n",
            Status::Deleted => b"DELETED\r\n",
            Status::Touched => b"TOUCHED\r\n",
            Status::End => b"END\r\n",
            Status::Ok => b"OK\r\n",
            Status::Reset => b"RESET\r\n",
        }
    }

    /// The status of a reply line's word, or `None`.
    pub fn from_word(word: &[u8]) -> Option<Status> {
        Some(match word {
            b"STORED" => Status::Stored,
            b"NOT_STORED" => Status::NotStored,
            b"EXISTS" => Status::Exists,
            b"NOT_FOUND" => Status::NotFound,
            b"DELETED" => Status::Deleted,
            b"TOUCHED" => Status::Touched,
            b"END" => Status::End,
            b"OK" => Status::Ok,
            b"RESET" => Status::Reset,
            _ => return None,
        })
    }
}

/// Writes a one-word reply.
pub fn status(sink: &mut impl Sink, status: Status) -> Result<(), Full> {
    put_all(sink, &[status.line()])
}

/// Writes the reply memcached sends for a refused request (`ERROR`, `CLIENT_ERROR ...`,
/// `SERVER_ERROR ...`). The caller checks [`ParseError::noreply`] first.
pub fn parse_error(sink: &mut impl Sink, error: &ParseError) -> Result<(), Full> {
    put_all(sink, &[error.reply()])
}

/// Writes `ERROR`: memcached's answer to an unknown command.
pub fn error(sink: &mut impl Sink) -> Result<(), Full> {
    put_all(sink, &[b"ERROR\r\n"])
}

/// Writes `CLIENT_ERROR <message>`.
pub fn client_error(sink: &mut impl Sink, message: &[u8]) -> Result<(), Full> {
    put_all(sink, &[b"CLIENT_ERROR ", message, b"\r\n"])
}

/// Writes `SERVER_ERROR <message>` (e.g. `out of memory storing object`).
pub fn server_error(sink: &mut impl Sink, message: &[u8]) -> Result<(), Full> {
    put_all(sink, &[b"SERVER_ERROR ", message, b"\r\n"])
}

/// Writes the new value of an `incr`/`decr`.
pub fn number(sink: &mut impl Sink, value: u64) -> Result<(), Full> {
    let mut digits = [0u8; DIGITS_MAX];
    put_all(sink, &[format_u64(value, &mut digits), b"\r\n"])
}

/// Writes `VERSION <version>`.
pub fn version(sink: &mut impl Sink, version: &[u8]) -> Result<(), Full> {
    put_all(sink, &[b"VERSION ", version, b"\r\n"])
}

/// Writes `STAT <name> <value>` (the list ends with [`Status::End`]).
pub fn stat(sink: &mut impl Sink, name: &[u8], value: &[u8]) -> Result<(), Full> {
    put_all(sink, &[b"STAT ", name, b" ", value, b"\r\n"])
}

/// Writes `STAT <name> <number>`.
pub fn stat_u64(sink: &mut impl Sink, name: &[u8], value: u64) -> Result<(), Full> {
    let mut digits = [0u8; DIGITS_MAX];
    stat(sink, name, format_u64(value, &mut digits))
}

/// Longest `" <flags> <bytes> <cas>\r\n"` suffix of a `VALUE` line.
const VALUE_SUFFIX_LEN_MAX: usize = 1 + 10 + 1 + 10 + 1 + DIGITS_MAX + 2;

/// Formats the suffix of a `VALUE` line into `buf`; returns its length.
fn value_suffix(
    flags: u32,
    len: u32,
    cas: Option<u64>,
    buf: &mut [u8; VALUE_SUFFIX_LEN_MAX],
) -> usize {
    let mut at = 0;
    let mut push = |bytes: &[u8]| {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    let mut digits = [0u8; DIGITS_MAX];
    push(b" ");
    push(format_u64(u64::from(flags), &mut digits));
    push(b" ");
    push(format_u64(u64::from(len), &mut digits));
    if let Some(cas) = cas {
        push(b" ");
        push(format_u64(cas, &mut digits));
    }
    push(b"\r\n");
    at
}

/// Writes `VALUE <key> <flags> <bytes> [<cas>]`: the line before a value's data. The caller
/// puts the `len` data bytes (in as many pieces as it holds them) and then [`data_end`].
/// Use [`value`] when the data is at hand: it reserves the whole item at once.
pub fn value_header(
    sink: &mut impl Sink,
    key: &[u8],
    flags: u32,
    len: u32,
    cas: Option<u64>,
) -> Result<(), Full> {
    let mut suffix = [0u8; VALUE_SUFFIX_LEN_MAX];
    let n = value_suffix(flags, len, cas, &mut suffix);
    put_all(sink, &[b"VALUE ", key, &suffix[..n]])
}

/// Writes the `\r\n` that ends a data block.
pub fn data_end(sink: &mut impl Sink) -> Result<(), Full> {
    put_all(sink, &[b"\r\n"])
}

/// Writes one `get` hit: its `VALUE` line, its data and the data's `\r\n`.
///
/// # Panics
///
/// If `data` is longer than `u32::MAX` bytes: a store never holds such a value.
pub fn value(
    sink: &mut impl Sink,
    key: &[u8],
    flags: u32,
    cas: Option<u64>,
    data: &[u8],
) -> Result<(), Full> {
    let len = u32::try_from(data.len()).expect("a value is shorter than 4 GiB");
    let mut suffix = [0u8; VALUE_SUFFIX_LEN_MAX];
    let n = value_suffix(flags, len, cas, &mut suffix);
    put_all(sink, &[b"VALUE ", key, &suffix[..n], data, b"\r\n"])
}

/// Longest meta reply line this encoder builds: a 250-byte key base64-encoded (336 bytes),
/// 17 flags of at most 22 bytes, an opaque token of 32 and the code and size, with room to
/// spare.
pub const META_LINE_LEN_MAX: usize = 1024;

/// memcached's reply when a reply line would not fit its write buffer.
const OUTPUT_LINE_TOO_LONG: &[u8] = b"SERVER_ERROR output line too long\r\n";

/// A meta reply line (`HD`, `VA <size>`, `EN`, `NF`, `NS`, `EX`, `MN`) built flag by flag in
/// a fixed buffer, then written with [`MetaReply::emit`] or [`MetaReply::emit_with_value`].
///
/// Return flags are appended in the order the caller calls the methods, which should be the
/// order of the request's flags ([`crate::meta::MetaFlags::order`]); memcached adds `W`, `X`
/// and `Z` last. A line that outgrows [`META_LINE_LEN_MAX`] is replaced, as memcached does,
/// by `SERVER_ERROR output line too long`.
#[derive(Clone, Debug)]
pub struct MetaReply {
    buf: [u8; META_LINE_LEN_MAX],
    len: usize,
    overflow: bool,
}

impl MetaReply {
    /// A reply with code `code` and no flag yet. For `VA` use [`MetaReply::value`].
    pub fn new(code: MetaCode) -> Self {
        let mut reply = Self {
            buf: [0; META_LINE_LEN_MAX],
            len: 0,
            overflow: false,
        };
        reply.push(code.as_bytes());
        reply
    }

    /// A `VA <size>` reply: `size` data bytes follow the line.
    pub fn value(size: u32) -> Self {
        let mut reply = Self::new(MetaCode::Va);
        let mut digits = [0u8; DIGITS_MAX];
        reply.push(b" ");
        reply.push(format_u64(u64::from(size), &mut digits));
        reply
    }

    fn push(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(slot) => {
                slot.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.overflow = true,
        }
    }

    /// Appends a flag without a value (`W`, `X`, `Z`, `b`).
    pub fn flag(&mut self, flag: u8) -> &mut Self {
        self.push(&[b' ', flag]);
        self
    }

    /// Appends a flag with a number (`c123`, `f30`, `s2`, `h1`, `l5`).
    pub fn flag_u64(&mut self, flag: u8, value: u64) -> &mut Self {
        let mut digits = [0u8; DIGITS_MAX];
        self.push(&[b' ', flag]);
        self.push(format_u64(value, &mut digits));
        self
    }

    /// Appends a flag with a signed number (`t-1` for an item that never expires).
    pub fn flag_i64(&mut self, flag: u8, value: i64) -> &mut Self {
        let mut digits = [0u8; DIGITS_MAX];
        self.push(&[b' ', flag]);
        self.push(format_i64(value, &mut digits));
        self
    }

    /// Appends a flag with raw bytes after it.
    pub fn flag_bytes(&mut self, flag: u8, value: &[u8]) -> &mut Self {
        self.push(&[b' ', flag]);
        self.push(value);
        self
    }

    /// Appends the request's opaque token as is (`O` included).
    pub fn opaque(&mut self, token: &[u8]) -> &mut Self {
        self.push(b" ");
        self.push(token);
        self
    }

    /// Appends the key (`k`): as is, or, for a binary key, base64-encoded and followed by
    /// `b`, as memcached does. `key` is the stored (decoded) key.
    pub fn key(&mut self, key: &[u8], binary: bool) -> &mut Self {
        if !binary {
            return self.flag_bytes(b'k', key);
        }
        self.push(b" k");
        let need = base64::encoded_len(key.len());
        match self.buf.get_mut(self.len..self.len + need) {
            Some(slot) => {
                base64::encode(key, slot);
                self.len += need;
            }
            None => self.overflow = true,
        }
        self.flag(b'b')
    }

    /// The line built so far, without its `\r\n`.
    pub fn line(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes the line.
    pub fn emit(&self, sink: &mut impl Sink) -> Result<(), Full> {
        if self.overflow {
            return put_all(sink, &[OUTPUT_LINE_TOO_LONG]);
        }
        put_all(sink, &[self.line(), b"\r\n"])
    }

    /// Writes the line, then `data` and its `\r\n` (a `VA` reply).
    pub fn emit_with_value(&self, sink: &mut impl Sink, data: &[u8]) -> Result<(), Full> {
        if self.overflow {
            return put_all(sink, &[OUTPUT_LINE_TOO_LONG]);
        }
        put_all(sink, &[self.line(), b"\r\n", data, b"\r\n"])
    }
}

/// What `me` reports about an item.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaDebugInfo {
    /// Seconds until expiry (memcached prints -1 for an item that never expires).
    pub exp: i64,
    /// Seconds since the last access.
    pub la: u64,
    /// The CAS value.
    pub cas: u64,
    /// Whether the item was fetched since it was stored.
    pub fetched: bool,
    /// The slab class.
    pub cls: u32,
    /// The item's total size in memory.
    pub size: u64,
}

/// Writes `ME <key> exp=<exp> la=<la> cas=<cas> fetch=<yes|no> cls=<cls> size=<size>`, with a
/// binary key base64-encoded (memcached's `me`).
pub fn meta_debug(
    sink: &mut impl Sink,
    key: &[u8],
    binary: bool,
    info: &MetaDebugInfo,
) -> Result<(), Full> {
    let mut line = MetaReply {
        buf: [0; META_LINE_LEN_MAX],
        len: 0,
        overflow: false,
    };
    line.push(b"ME ");
    if binary {
        let need = base64::encoded_len(key.len());
        match line.buf.get_mut(line.len..line.len + need) {
            Some(slot) => {
                base64::encode(key, slot);
                line.len += need;
            }
            None => line.overflow = true,
        }
    } else {
        line.push(key);
    }
    let mut digits = [0u8; DIGITS_MAX];
    line.push(b" exp=");
    line.push(format_i64(info.exp, &mut digits));
    line.push(b" la=");
    line.push(format_u64(info.la, &mut digits));
    line.push(b" cas=");
    line.push(format_u64(info.cas, &mut digits));
    line.push(if info.fetched {
        b" fetch=yes"
    } else {
        b" fetch=no"
    });
    line.push(b" cls=");
    line.push(format_u64(u64::from(info.cls), &mut digits));
    line.push(b" size=");
    line.push(format_u64(info.size, &mut digits));
    line.emit(sink)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{ErrorKind, ParseError};

    fn out(f: impl FnOnce(&mut Vec<u8>) -> Result<(), Full>) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v).unwrap();
        v
    }

    #[test]
    fn status_lines() {
        let all = [
            (Status::Stored, &b"STORED\r\n"[..]),
            (Status::NotStored, b"NOT_STORED\r\n"),
            (Status::Exists, b"EXISTS\r\n"),
            (Status::NotFound, b"NOT_FOUND\r\n"),
            (Status::Deleted, b"DELETED\r\n"),
            (Status::Touched, b"TOUCHED\r\n"),
            (Status::End, b"END\r\n"),
            (Status::Ok, b"OK\r\n"),
            (Status::Reset, b"RESET\r\n"),
        ];
        for (s, line) in all {
            assert_eq!(out(|v| status(v, s)), line);
            assert_eq!(Status::from_word(&line[..line.len() - 2]), Some(s));
        }
    }

    #[test]
    fn errors_numbers_version_stats() {
        assert_eq!(out(error), b"ERROR\r\n");
        assert_eq!(
            out(|v| parse_error(
                v,
                &ParseError {
                    kind: ErrorKind::BadDataChunk,
                    noreply: false
                }
            )),
            b"CLIENT_ERROR bad data chunk\r\n"
        );
        assert_eq!(out(|v| client_error(v, b"bad")), b"CLIENT_ERROR bad\r\n");
        assert_eq!(
            out(|v| server_error(v, b"out of memory storing object")),
            b"SERVER_ERROR out of memory storing object\r\n"
        );
        assert_eq!(out(|v| number(v, 0)), b"0\r\n");
        assert_eq!(out(|v| number(v, u64::MAX)), b"18446744073709551615\r\n");
        assert_eq!(out(|v| version(v, b"1.6.21")), b"VERSION 1.6.21\r\n");
        assert_eq!(
            out(|v| stat(v, b"version", b"1.6.21")),
            b"STAT version 1.6.21\r\n"
        );
        assert_eq!(
            out(|v| stat_u64(v, b"curr_items", 42)),
            b"STAT curr_items 42\r\n"
        );
    }

    #[test]
    fn value_lines() {
        assert_eq!(
            out(|v| value(v, b"foo", 5, None, b"bar")),
            b"VALUE foo 5 3\r\nbar\r\n"
        );
        assert_eq!(
            out(|v| value(v, b"foo", u32::MAX, Some(u64::MAX), b"")),
            b"VALUE foo 4294967295 0 18446744073709551615\r\n\r\n"
        );
        let mut v = Vec::new();
        value_header(&mut v, b"k", 0, 4, Some(9)).unwrap();
        v.extend_from_slice(b"da");
        v.extend_from_slice(b"ta");
        data_end(&mut v).unwrap();
        status(&mut v, Status::End).unwrap();
        assert_eq!(v, b"VALUE k 0 4 9\r\ndata\r\nEND\r\n");
    }

    #[test]
    fn a_full_slice_sink_gets_all_of_a_reply_or_nothing() {
        let mut buf = [0u8; 25];
        let mut sink = SliceSink::new(&mut buf);
        value(&mut sink, b"foo", 0, None, b"bar").unwrap();
        assert_eq!(sink.written(), b"VALUE foo 0 3\r\nbar\r\n");
        assert_eq!(sink.room(), 5);
        // The line would fit, the data would not: nothing of the reply is written.
        assert_eq!(value(&mut sink, b"k", 0, None, b"bar"), Err(Full));
        assert_eq!(sink.len(), 20);
        assert_eq!(status(&mut sink, Status::Stored), Err(Full));
        status(&mut sink, Status::End).unwrap();
        assert_eq!(sink.room(), 0);
        sink.clear();
        assert!(sink.is_empty());
        status(&mut sink, Status::Stored).unwrap();
        assert_eq!(sink.written(), b"STORED\r\n");
    }

    #[test]
    fn meta_replies() {
        assert_eq!(out(|v| MetaReply::new(MetaCode::Hd).emit(v)), b"HD\r\n");
        assert_eq!(out(|v| MetaReply::new(MetaCode::En).emit(v)), b"EN\r\n");
        assert_eq!(out(|v| MetaReply::new(MetaCode::Mn).emit(v)), b"MN\r\n");
        for (code, line) in [
            (MetaCode::Nf, &b"NF\r\n"[..]),
            (MetaCode::Ns, b"NS\r\n"),
            (MetaCode::Ex, b"EX\r\n"),
        ] {
            assert_eq!(out(|v| MetaReply::new(code).emit(v)), line);
        }
        let mut r = MetaReply::value(2);
        r.flag_i64(b't', -1)
            .flag_u64(b'f', 30)
            .flag_u64(b'c', 3)
            .opaque(b"O123")
            .key(b"foo", false);
        r.flag(b'W');
        assert_eq!(r.line(), b"VA 2 t-1 f30 c3 O123 kfoo W");
        assert_eq!(
            out(|v| r.emit_with_value(v, b"hi")),
            b"VA 2 t-1 f30 c3 O123 kfoo W\r\nhi\r\n"
        );
        let mut r = MetaReply::new(MetaCode::Hd);
        r.key("テスト".as_bytes(), true).flag_bytes(b'x', b"yz");
        assert_eq!(out(|v| r.emit(v)), b"HD k44OG44K544OI b xyz\r\n");
    }

    #[test]
    fn a_meta_line_too_long_becomes_memcached_s_server_error() {
        let mut r = MetaReply::new(MetaCode::Hd);
        for _ in 0..100 {
            r.key(&[0xab; 250], false);
        }
        assert_eq!(out(|v| r.emit(v)), b"SERVER_ERROR output line too long\r\n");
        let mut r = MetaReply::new(MetaCode::Hd);
        for _ in 0..4 {
            r.key(&[0xab; 250], true);
        }
        assert_eq!(
            out(|v| r.emit_with_value(v, b"x")),
            b"SERVER_ERROR output line too long\r\n"
        );
    }

    #[test]
    fn meta_debug_line() {
        let info = MetaDebugInfo {
            exp: -1,
            la: 3,
            cas: 7,
            fetched: true,
            cls: 1,
            size: 66,
        };
        assert_eq!(
            out(|v| meta_debug(v, b"foo", false, &info)),
            b"ME foo exp=-1 la=3 cas=7 fetch=yes cls=1 size=66\r\n"
        );
        let info = MetaDebugInfo {
            fetched: false,
            ..info
        };
        assert_eq!(
            out(|v| meta_debug(v, b"foo", true, &info)),
            b"ME Zm9v exp=-1 la=3 cas=7 fetch=no cls=1 size=66\r\n"
        );
    }
}
