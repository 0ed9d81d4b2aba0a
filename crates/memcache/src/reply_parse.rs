//! The reply parser, for Melange's own load generator and for tests: memcached's replies,
//! incremental and zero-copy in the same span style as the request parser.
//!
//! A client does not need to know what it asked to read the reply stream: every reply is a
//! line, and the two that carry data (`VALUE <key> <flags> <bytes> [<cas>]` and
//! `VA <size> <flags>*`) announce its length. [`ReplyParser::advance`] consumes bytes until a
//! reply completes; [`ReplyParser::reply`] shows it (valid until the next `advance`), its
//! key, data and free text as [`Span`]s. A reply line the parser does not know (`BUSY ...`,
//! `MEMLIMIT_TOO_SMALL ...`) is [`Reply::Other`], not an error.
//!
//! Errors are final: a malformed `VALUE` line or a data block without its `\r\n` means the
//! stream is out of step, and a client can only close the connection. The parser then
//! refuses further input.

use crate::meta::MetaCode;
use crate::num::{parse_u32, parse_u64};
use crate::reply::Status;
use crate::span::Span;
use crate::token::{Line, Scan, Token};

/// Default limit on a reply line (memcached's longest lines are `stats settings` entries and
/// `ME` lines, far below this).
pub const REPLY_LINE_LEN_MAX: usize = 8192;

/// Tokens of a reply line kept (a meta reply has at most 17 return flags and the code and
/// size); further tokens are counted, and only a meta reply with more is an error.
pub const REPLY_TOKENS_MAX: usize = 24;

/// The reply parser's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Longest reply line.
    pub line_len_max: usize,
    /// Longest value the client accepts.
    pub value_len_max: u32,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        Self {
            line_len_max: REPLY_LINE_LEN_MAX,
            value_len_max: crate::request::VALUE_LEN_MAX,
        }
    }
}

/// Why the reply stream cannot be read on. All are final: close the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A reply line longer than [`ReplyLimits::line_len_max`].
    #[error("reply line longer than {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// A `VALUE` or `VA` line whose numbers or token count are wrong.
    #[error("malformed value line")]
    BadValueLine,
    /// A value longer than [`ReplyLimits::value_len_max`].
    #[error("value of {len} bytes is longer than the limit")]
    ValueTooLarge {
        /// The announced length.
        len: u32,
    },
    /// A data block not followed by `\r\n`.
    #[error("data block not followed by \\r\\n")]
    BadDataChunk,
    /// A meta reply with more flags than [`REPLY_TOKENS_MAX`] allows.
    #[error("meta reply with too many flags")]
    TooManyTokens,
}

/// What one [`ReplyParser::advance`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyStep {
    /// Bytes of the piece consumed.
    pub consumed: usize,
    /// Whether a reply completed: read it with [`ReplyParser::reply`].
    pub complete: bool,
}

/// One return flag of a meta reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyFlag {
    /// The flag character.
    pub flag: u8,
    /// The bytes after it (the whole token for an opaque `O` token is `flag` then `value`).
    pub value: Span,
}

/// The return flags of a meta reply, in the order the server wrote them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyFlags<'a> {
    tokens: &'a [Token],
}

impl<'a> ReplyFlags<'a> {
    /// Number of flags.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there is no flag.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The flags in order.
    pub fn iter(&self) -> impl Iterator<Item = ReplyFlag> + 'a {
        self.tokens.iter().map(|t| ReplyFlag {
            flag: t.first(),
            value: Span::new(t.start + 1, t.len - 1),
        })
    }

    fn find(&self, flag: u8) -> Option<&'a Token> {
        self.tokens.iter().find(|t| t.first() == flag)
    }

    /// Whether flag `flag` is present (`W`, `X`, `Z`, `b`).
    pub fn has(&self, flag: u8) -> bool {
        self.find(flag).is_some()
    }

    /// Where the value of flag `flag` lies (a key returned by `k`, say).
    pub fn span(&self, flag: u8) -> Option<Span> {
        self.find(flag).map(|t| Span::new(t.start + 1, t.len - 1))
    }

    /// The value of flag `flag` when it is at most 31 bytes (an opaque token's, say).
    pub fn value(&self, flag: u8) -> Option<&'a [u8]> {
        self.find(flag).and_then(|t| t.rest())
    }

    /// The value of flag `flag` as an unsigned number (`c`, `f`, `s`, `h`, `l`).
    pub fn u64(&self, flag: u8) -> Option<u64> {
        self.value(flag).and_then(parse_u64)
    }

    /// The value of flag `flag` as a signed number (`t`, which is -1 for no expiry).
    pub fn i64(&self, flag: u8) -> Option<i64> {
        let v = self.value(flag)?;
        match v.strip_prefix(b"-") {
            Some(m) => parse_u64(m).and_then(|m| i64::try_from(m).ok()).map(|m| -m),
            None => parse_u64(v).and_then(|m| i64::try_from(m).ok()),
        }
    }
}

/// A parsed reply. Spans point into the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `VALUE <key> <flags> <bytes> [<cas>]` and its data.
    Value {
        /// The key.
        key: Span,
        /// Client flags.
        flags: u32,
        /// The CAS value (`gets`, `gats`).
        cas: Option<u64>,
        /// The data block.
        data: Span,
    },
    /// A one-word reply (`END`, `STORED`, ...).
    Status(Status),
    /// `ERROR [<message>]`.
    Error {
        /// The message (empty for a bare `ERROR`).
        message: Span,
    },
    /// `CLIENT_ERROR <message>`.
    ClientError {
        /// The message.
        message: Span,
    },
    /// `SERVER_ERROR <message>`.
    ServerError {
        /// The message.
        message: Span,
    },
    /// `VERSION <version>`.
    Version {
        /// The version.
        version: Span,
    },
    /// `STAT <name> <value>`.
    Stat {
        /// The name.
        name: Span,
        /// The rest of the line.
        value: Span,
    },
    /// The value of an `incr`/`decr`.
    Number(u64),
    /// A meta reply: `HD`, `EN`, `NF`, `NS`, `EX`, `MN` with flags, or `VA` with flags and
    /// data.
    Meta {
        /// The code.
        code: MetaCode,
        /// The data block of `VA`.
        data: Option<Span>,
        /// The return flags.
        flags: ReplyFlags<'a>,
    },
    /// `ME <key> <info>`.
    MetaDebug {
        /// The key (base64 for a binary key).
        key: Span,
        /// The rest of the line (`exp=.. la=.. ...`).
        info: Span,
    },
    /// Any other line.
    Other {
        /// The line, without its `\r\n`.
        line: Span,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Value {
        key: Span,
        flags: u32,
        cas: Option<u64>,
        data: Span,
    },
    Status(Status),
    Error(Span),
    ClientError(Span),
    ServerError(Span),
    Version(Span),
    Stat {
        name: Span,
        value: Span,
    },
    Number(u64),
    /// Flags are `tokens[first..count]`.
    Meta {
        code: MetaCode,
        data: Option<Span>,
        first: usize,
        count: usize,
    },
    MetaDebug {
        key: Span,
        info: Span,
    },
    Other(Span),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Line,
    Data { remaining: u64 },
    DataEnd { seen: u8 },
    Failed(ReplyError),
}

/// The incremental reply parser of one connection.
#[derive(Debug)]
pub struct ReplyParser {
    limits: ReplyLimits,
    offset: u64,
    state: State,
    line: Line,
    tokens: [Token; REPLY_TOKENS_MAX],
    ntok: usize,
    pending: Option<Pending>,
    ready: Option<Pending>,
}

impl ReplyParser {
    /// A parser for a new connection (stream offset 0).
    pub fn new(limits: ReplyLimits) -> Self {
        Self {
            limits,
            offset: 0,
            state: State::Line,
            line: Line::new(0, false),
            tokens: [Token::EMPTY; REPLY_TOKENS_MAX],
            ntok: 0,
            pending: None,
            ready: None,
        }
    }

    /// Stream offset of the next byte to feed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The reply of the last completed step, until the next `advance`.
    pub fn reply(&self) -> Option<Reply<'_>> {
        Some(match self.ready? {
            Pending::Value {
                key,
                flags,
                cas,
                data,
            } => Reply::Value {
                key,
                flags,
                cas,
                data,
            },
            Pending::Status(s) => Reply::Status(s),
            Pending::Error(message) => Reply::Error { message },
            Pending::ClientError(message) => Reply::ClientError { message },
            Pending::ServerError(message) => Reply::ServerError { message },
            Pending::Version(version) => Reply::Version { version },
            Pending::Stat { name, value } => Reply::Stat { name, value },
            Pending::Number(n) => Reply::Number(n),
            Pending::Meta {
                code,
                data,
                first,
                count,
            } => Reply::Meta {
                code,
                data,
                flags: ReplyFlags {
                    tokens: &self.tokens[first..count],
                },
            },
            Pending::MetaDebug { key, info } => Reply::MetaDebug { key, info },
            Pending::Other(line) => Reply::Other { line },
        })
    }

    /// Feeds the next piece of the stream.
    pub fn advance(&mut self, piece: &[u8]) -> Result<ReplyStep, ReplyError> {
        self.ready = None;
        let mut i = 0;
        let result = loop {
            match self.state {
                State::Failed(e) => break Err(e),
                State::Data { remaining } => {
                    let take = remaining.min((piece.len() - i) as u64);
                    i += take as usize;
                    if take < remaining {
                        self.state = State::Data {
                            remaining: remaining - take,
                        };
                        break Ok(false);
                    }
                    self.state = State::DataEnd { seen: 0 };
                }
                State::DataEnd { seen } => {
                    let Some(&b) = piece.get(i) else {
                        break Ok(false);
                    };
                    i += 1;
                    if b != [b'\r', b'\n'][seen as usize] {
                        break Err(ReplyError::BadDataChunk);
                    }
                    if seen == 0 {
                        self.state = State::DataEnd { seen: 1 };
                        continue;
                    }
                    self.state = State::Line;
                    self.line.reset(self.offset + i as u64);
                    self.ready = self.pending.take();
                    break Ok(true);
                }
                State::Line => {
                    if i == piece.len() {
                        break Ok(false);
                    }
                    let at = self.offset + i as u64;
                    let limit = self.limits.line_len_max as u64;
                    let (n, scan) = self.line.scan(&piece[i..], at, limit, false);
                    i += n;
                    match scan {
                        Scan::NeedMore => break Ok(false),
                        Scan::Token(token) => {
                            if let Some(slot) = self.tokens.get_mut(self.ntok) {
                                *slot = token;
                            }
                            self.ntok += 1;
                        }
                        Scan::Stopped => unreachable!("the reply scanner never stops early"),
                        Scan::End { content_end } => {
                            let line_start = self.line.start;
                            let next = self.offset + i as u64;
                            self.line.reset(next);
                            let ntok = std::mem::take(&mut self.ntok);
                            match self.interpret(ntok, line_start, content_end, next) {
                                Err(e) => break Err(e),
                                Ok(true) => break Ok(true),
                                Ok(false) => {}
                            }
                        }
                        Scan::TooLong => {
                            break Err(ReplyError::LineTooLong {
                                limit: self.limits.line_len_max,
                            })
                        }
                    }
                }
            }
        };
        self.offset += i as u64;
        match result {
            Ok(complete) => Ok(ReplyStep {
                consumed: i,
                complete,
            }),
            Err(e) => {
                self.state = State::Failed(e);
                self.ready = None;
                Err(e)
            }
        }
    }

    /// Interprets a reply line of `ntok` tokens; true when the reply is complete (false when
    /// a data block follows).
    fn interpret(
        &mut self,
        ntok: usize,
        line_start: u64,
        content_end: u64,
        next: u64,
    ) -> Result<bool, ReplyError> {
        let n = ntok.min(REPLY_TOKENS_MAX);
        let t = &self.tokens;
        // The rest of the line from token `k` on.
        let rest = |k: usize| match t[..n].get(k) {
            Some(token) => Span::new(token.start, (content_end - token.start) as u32),
            None => Span::new(content_end, 0),
        };
        let whole = Span::new(line_start, (content_end - line_start) as u32);
        if n == 0 {
            self.ready = Some(Pending::Other(whole));
            return Ok(true);
        }
        let word = t[0].bytes().unwrap_or(b"");
        if let Some(status) = Status::from_word(word) {
            self.ready = Some(Pending::Status(status));
            return Ok(true);
        }
        let simple = match word {
            b"ERROR" => Some(Pending::Error(rest(1))),
            b"CLIENT_ERROR" => Some(Pending::ClientError(rest(1))),
            b"SERVER_ERROR" => Some(Pending::ServerError(rest(1))),
            b"VERSION" => Some(Pending::Version(rest(1))),
            b"STAT" if n >= 2 => Some(Pending::Stat {
                name: t[1].span(),
                value: rest(2),
            }),
            b"ME" if n >= 2 => Some(Pending::MetaDebug {
                key: t[1].span(),
                info: rest(2),
            }),
            _ if word.first().is_some_and(u8::is_ascii_digit) => Some(match parse_u64(word) {
                Some(v) if n == 1 => Pending::Number(v),
                _ => Pending::Other(whole),
            }),
            _ => None,
        };
        if let Some(pending) = simple {
            self.ready = Some(pending);
            return Ok(true);
        }
        if word == b"VALUE" {
            if n != 4 && n != 5 {
                return Err(ReplyError::BadValueLine);
            }
            let flags = t[2].bytes().and_then(parse_u32);
            let len = t[3].bytes().and_then(parse_u32);
            let cas = match n {
                5 => t[4].bytes().and_then(parse_u64).map(Some),
                _ => Some(None),
            };
            let (Some(flags), Some(len), Some(cas)) = (flags, len, cas) else {
                return Err(ReplyError::BadValueLine);
            };
            let key = t[1].span();
            return self.begin_data(
                Pending::Value {
                    key,
                    flags,
                    cas,
                    data: Span::new(next, len),
                },
                len,
            );
        }
        if let Some(code) = MetaCode::from_bytes(word) {
            if ntok > REPLY_TOKENS_MAX {
                return Err(ReplyError::TooManyTokens);
            }
            if code != MetaCode::Va {
                self.ready = Some(Pending::Meta {
                    code,
                    data: None,
                    first: 1,
                    count: n,
                });
                return Ok(true);
            }
            let Some(len) = t.get(1).filter(|_| n >= 2).and_then(|t| t.bytes()) else {
                return Err(ReplyError::BadValueLine);
            };
            let Some(len) = parse_u32(len) else {
                return Err(ReplyError::BadValueLine);
            };
            return self.begin_data(
                Pending::Meta {
                    code,
                    data: Some(Span::new(next, len)),
                    first: 2,
                    count: n,
                },
                len,
            );
        }
        self.ready = Some(Pending::Other(whole));
        Ok(true)
    }

    fn begin_data(&mut self, pending: Pending, len: u32) -> Result<bool, ReplyError> {
        if len > self.limits.value_len_max {
            return Err(ReplyError::ValueTooLarge { len });
        }
        self.pending = Some(pending);
        self.state = State::Data {
            remaining: u64::from(len),
        };
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{copy_to, Piece};

    /// A reply with spans resolved.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum R {
        Value(Vec<u8>, u32, Option<u64>, Vec<u8>),
        Status(Status),
        Error(Vec<u8>),
        ClientError(Vec<u8>),
        ServerError(Vec<u8>),
        Version(Vec<u8>),
        Stat(Vec<u8>, Vec<u8>),
        Number(u64),
        Meta(MetaCode, Option<Vec<u8>>, Vec<(u8, Vec<u8>)>),
        MetaDebug(Vec<u8>, Vec<u8>),
        Other(Vec<u8>),
    }

    fn resolve(r: Reply<'_>, p: &[Piece<'_>]) -> R {
        let b = |s: Span| {
            let mut v = vec![0; s.len as usize];
            copy_to(p, s, &mut v).unwrap();
            v
        };
        match r {
            Reply::Value {
                key,
                flags,
                cas,
                data,
            } => R::Value(b(key), flags, cas, b(data)),
            Reply::Status(s) => R::Status(s),
            Reply::Error { message } => R::Error(b(message)),
            Reply::ClientError { message } => R::ClientError(b(message)),
            Reply::ServerError { message } => R::ServerError(b(message)),
            Reply::Version { version } => R::Version(b(version)),
            Reply::Stat { name, value } => R::Stat(b(name), b(value)),
            Reply::Number(n) => R::Number(n),
            Reply::Meta { code, data, flags } => R::Meta(
                code,
                data.map(b),
                flags.iter().map(|f| (f.flag, b(f.value))).collect(),
            ),
            Reply::MetaDebug { key, info } => R::MetaDebug(b(key), b(info)),
            Reply::Other { line } => R::Other(b(line)),
        }
    }

    fn run_with(input: &[u8], step: usize) -> (Vec<R>, Option<ReplyError>) {
        let mut parser = ReplyParser::new(ReplyLimits::default());
        let mut held = Vec::new();
        let mut got = Vec::new();
        let mut at = 0u64;
        for piece in input.chunks(step.max(1)) {
            held.push(Piece::new(at, piece));
            at += piece.len() as u64;
            let mut rest = piece;
            loop {
                match parser.advance(rest) {
                    Err(e) => return (got, Some(e)),
                    Ok(s) => {
                        rest = &rest[s.consumed..];
                        if !s.complete {
                            assert!(rest.is_empty());
                            break;
                        }
                        got.push(resolve(parser.reply().unwrap(), &held));
                    }
                }
            }
        }
        (got, None)
    }

    fn run(input: &[u8]) -> (Vec<R>, Option<ReplyError>) {
        let whole = run_with(input, input.len());
        for step in [1, 2, 5] {
            assert_eq!(run_with(input, step), whole, "pieces of {step}");
        }
        whole
    }

    fn v(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn text_replies() {
        let (got, e) = run(b"VALUE foo 5 3\r\nbar\r\nVALUE k 0 4 99\r\na\r\nb\r\nEND\r\nSTORED\r\n\
            NOT_FOUND\r\n42\r\nERROR\r\nERROR cannot pipeline\r\nCLIENT_ERROR bad data chunk\r\n\
            SERVER_ERROR out of memory\r\nVERSION 1.6.21\r\nSTAT pid 1\r\nSTAT libevent 2.1 stable\r\n\
            BUSY currently processing\r\n");
        assert_eq!(e, None);
        assert_eq!(
            got,
            [
                R::Value(v("foo"), 5, None, v("bar")),
                R::Value(v("k"), 0, Some(99), v("a\r\nb")),
                R::Status(Status::End),
                R::Status(Status::Stored),
                R::Status(Status::NotFound),
                R::Number(42),
                R::Error(v("")),
                R::Error(v("cannot pipeline")),
                R::ClientError(v("bad data chunk")),
                R::ServerError(v("out of memory")),
                R::Version(v("1.6.21")),
                R::Stat(v("pid"), v("1")),
                R::Stat(v("libevent"), v("2.1 stable")),
                R::Other(v("BUSY currently processing")),
            ]
        );
    }

    #[test]
    fn meta_replies() {
        let (got, e) = run(
            b"HD\r\nVA 2 t-1 c3 Oab kfoo W\r\nhi\r\nEN\r\nNF Oab\r\nNS\r\nEX\r\nMN\r\n\
            ME foo exp=-1 la=0 cas=2 fetch=no cls=1 size=63\r\n",
        );
        assert_eq!(e, None);
        assert_eq!(
            got,
            [
                R::Meta(MetaCode::Hd, None, vec![]),
                R::Meta(
                    MetaCode::Va,
                    Some(v("hi")),
                    vec![
                        (b't', v("-1")),
                        (b'c', v("3")),
                        (b'O', v("ab")),
                        (b'k', v("foo")),
                        (b'W', v(""))
                    ]
                ),
                R::Meta(MetaCode::En, None, vec![]),
                R::Meta(MetaCode::Nf, None, vec![(b'O', v("ab"))]),
                R::Meta(MetaCode::Ns, None, vec![]),
                R::Meta(MetaCode::Ex, None, vec![]),
                R::Meta(MetaCode::Mn, None, vec![]),
                R::MetaDebug(v("foo"), v("exp=-1 la=0 cas=2 fetch=no cls=1 size=63")),
            ]
        );
    }

    #[test]
    fn reply_flag_accessors() {
        let mut p = ReplyParser::new(ReplyLimits::default());
        let input = b"VA 0 t-1 c18446744073709551615 Oopaque W s0\r\n\r\n";
        let s = p.advance(input).unwrap();
        assert!(s.complete);
        assert_eq!(s.consumed, input.len());
        let Some(Reply::Meta {
            code: MetaCode::Va,
            data: Some(d),
            flags,
        }) = p.reply()
        else {
            panic!("{:?}", p.reply());
        };
        assert_eq!(d, Span::new(input.len() as u64 - 2, 0));
        assert_eq!(flags.len(), 5);
        assert_eq!(flags.i64(b't'), Some(-1));
        assert_eq!(flags.u64(b'c'), Some(u64::MAX));
        assert_eq!(flags.u64(b's'), Some(0));
        assert_eq!(flags.value(b'O'), Some(&b"opaque"[..]));
        assert_eq!(flags.span(b'O'), Some(Span::new(32, 6)));
        assert!(flags.has(b'W') && !flags.has(b'Z'));
        assert_eq!(flags.u64(b'Z'), None);
    }

    #[test]
    fn errors_are_final() {
        assert_eq!(
            run(b"VALUE k x 3\r\nabc\r\n").1,
            Some(ReplyError::BadValueLine)
        );
        assert_eq!(run(b"VALUE k 0\r\n").1, Some(ReplyError::BadValueLine));
        assert_eq!(run(b"VA x\r\n").1, Some(ReplyError::BadValueLine));
        assert_eq!(
            run(b"VALUE k 0 3\r\nabcd\r\n").1,
            Some(ReplyError::BadDataChunk)
        );
        assert_eq!(
            run(b"VALUE k 0 2000000\r\n").1,
            Some(ReplyError::ValueTooLarge { len: 2_000_000 })
        );
        let long = vec![b'x'; REPLY_LINE_LEN_MAX + 1];
        assert_eq!(
            run(&long).1,
            Some(ReplyError::LineTooLong {
                limit: REPLY_LINE_LEN_MAX
            })
        );
        let many = format!("HD{}\r\n", " W".repeat(REPLY_TOKENS_MAX));
        assert_eq!(run(many.as_bytes()).1, Some(ReplyError::TooManyTokens));
        let mut p = ReplyParser::new(ReplyLimits::default());
        assert!(p.advance(b"VA x\r\n").is_err());
        assert_eq!(p.advance(b"HD\r\n"), Err(ReplyError::BadValueLine));
        assert_eq!(p.reply(), None);
    }

    #[test]
    fn odd_lines_are_other() {
        let (got, e) = run(b"\r\n12x\r\n1 2\r\nSTAT\r\n");
        assert_eq!(e, None);
        assert_eq!(
            got,
            [
                R::Other(v("")),
                R::Other(v("12x")),
                R::Other(v("1 2")),
                R::Other(v("STAT"))
            ]
        );
    }

    #[test]
    fn a_long_stat_line_keeps_its_whole_value() {
        let line = format!("STAT settings {}\r\n", vec!["x"; 40].join(" "));
        let (got, _) = run(line.as_bytes());
        assert_eq!(got, [R::Stat(v("settings"), v(&vec!["x"; 40].join(" ")))]);
    }
}
