//! Bodies of the `memcache_*` fuzz targets, kept in the library so that the property tests
//! run exactly the code libFuzzer runs (on stable toolchains the property tests are the only
//! fuzzing there is).
//!
//! Each body parses its input twice, once as a single piece and once cut into pieces chosen
//! from the input's first byte, and requires the two runs to agree outcome for outcome: any
//! cut of a stream must parse as the whole stream does. Along the way it checks the parsers'
//! invariants: no step consumes more than it was given, every span of a request lies in the
//! bytes fed so far and reads back from the pieces held, a data block is followed by `\r\n`,
//! keys hold no space or control byte, and a closed or failed parser stays so.

use crate::reply::{self, MetaReply, Sink, Status};
use crate::reply_parse::{Reply, ReplyLimits, ReplyParser};
use crate::request::{Limits, Outcome, Request, RequestParser};
use crate::span::{self, Piece, Span};
use crate::udp::{self, FrameHeader, UdpError, HEADER_LEN};
use crate::MetaCode;

/// Small limits, so that short inputs reach the limit paths (too large, chunking, too long).
const SMALL: Limits = Limits {
    key_len_max: 8,
    value_len_max: 16,
    line_len_max: 64,
    get_line_len_max: 128,
    get_chunk_keys_max: 2,
};

/// Piece lengths drawn from a xorshift generator seeded by the control byte.
struct Cuts {
    state: u32,
    max: usize,
}

impl Cuts {
    fn new(control: u8, len: usize) -> Self {
        let max = [1, 2, 3, 7, 17, 64, 512, usize::MAX][usize::from(control >> 5)];
        Self {
            state: u32::from(control).wrapping_mul(0x9e37_79b9) ^ len as u32 | 1,
            max,
        }
    }

    fn next(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        if self.max == usize::MAX {
            return usize::MAX;
        }
        1 + self.state as usize % self.max
    }
}

/// The spans a request points at.
fn spans(request: &Request<'_>, out: &mut Vec<Span>) {
    match *request {
        Request::Get(g) => out.extend_from_slice(g.keys),
        Request::Store(s) => out.extend([s.key, s.data]),
        Request::Delete { key, .. }
        | Request::Arith { key, .. }
        | Request::Touch { key, .. }
        | Request::MetaGet { key, .. }
        | Request::MetaDelete { key, .. }
        | Request::MetaArith { key, .. }
        | Request::MetaDebug { key, .. } => out.push(key),
        Request::MetaSet { key, data, .. } => out.extend([key, data]),
        Request::Stats { args } => out.extend_from_slice(args),
        Request::FlushAll { .. }
        | Request::Version
        | Request::Verbosity { .. }
        | Request::CacheMemlimit { .. }
        | Request::Quit
        | Request::MetaNoop => {}
    }
}

/// The bytes of `span`.
fn bytes(held: &[Piece<'_>], span: Span) -> Vec<u8> {
    let mut out = vec![0; span.len as usize];
    span::copy_to(held, span, &mut out).expect("a span lies in the pieces fed");
    out
}

/// Checks a completed request against the bytes fed.
fn check_request(request: &Request<'_>, held: &[Piece<'_>], fed: u64, limits: &Limits) {
    let mut all = Vec::new();
    spans(request, &mut all);
    for s in &all {
        assert!(s.end() <= fed, "span {s:?} beyond the {fed} bytes fed");
        let _ = bytes(held, *s);
    }
    let key_check = |key: Span| {
        let k = bytes(held, key);
        assert!(!k.is_empty() && k.len() <= limits.key_len_max);
        assert!(k.iter().all(|&b| b > b' ' && b != 0x7f), "key {k:?}");
    };
    match *request {
        Request::Get(g) => {
            assert!(g.keys.len() <= limits.get_chunk_keys_max);
            g.keys.iter().copied().for_each(key_check);
        }
        Request::Store(s) => {
            key_check(s.key);
            assert!(s.data.len <= limits.value_len_max);
            assert_eq!(bytes(held, Span::new(s.data.end(), 2)), b"\r\n");
        }
        Request::MetaSet { data, .. } => {
            assert!(data.len <= limits.value_len_max);
            assert_eq!(bytes(held, Span::new(data.end(), 2)), b"\r\n");
        }
        Request::Delete { key, .. } | Request::Arith { key, .. } | Request::Touch { key, .. } => {
            key_check(key)
        }
        _ => {}
    }
}

/// Parses `input` cut by `cuts` (or whole); returns the outcomes, one line each.
fn run_requests(
    input: &[u8],
    limits: Limits,
    announce: bool,
    cuts: Option<&mut Cuts>,
) -> Vec<String> {
    let mut parser = RequestParser::new(limits).expect("valid limits");
    parser.announce_data(announce);
    let mut log = Vec::new();
    let mut held = Vec::new();
    let mut cuts = cuts;
    let mut at = 0;
    while at < input.len() {
        let len = cuts
            .as_mut()
            .map_or(usize::MAX, |c| c.next())
            .min(input.len() - at);
        let piece = &input[at..at + len];
        held.push(Piece::new(at as u64, piece));
        at += len;
        let mut rest = piece;
        loop {
            let step = parser.advance(rest);
            assert!(step.consumed <= rest.len(), "consumed more than given");
            rest = &rest[step.consumed..];
            assert!(parser.hold_from() <= parser.offset());
            match step.outcome {
                Outcome::NeedMore => {
                    assert!(rest.is_empty(), "NeedMore with bytes left");
                    break;
                }
                Outcome::Request => {
                    let request = parser.request().expect("a request after Request");
                    check_request(&request, &held, parser.offset(), &limits);
                    log.push(format!("{} {request:?}", parser.offset()));
                }
                Outcome::Header => {
                    let request = parser.request().expect("a request after Header");
                    assert!(matches!(
                        request,
                        Request::Store(_) | Request::MetaSet { .. }
                    ));
                    log.push(format!("{} header {request:?}", parser.offset()));
                }
                Outcome::Error(e) => {
                    log.push(format!("{} {e:?}", parser.offset()));
                    if e.closes_connection() {
                        let again = parser.advance(rest);
                        assert_eq!(again.consumed, 0, "a closed parser consumed input");
                        return log;
                    }
                }
            }
        }
    }
    log
}

/// `memcache_request`: the first byte picks the limits, data announcements and the cuts;
/// the rest is the stream.
pub fn request(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let limits = if control & 1 == 0 {
        Limits::default()
    } else {
        SMALL
    };
    let announce = control & 2 != 0;
    let whole = run_requests(input, limits, announce, None);
    let mut cuts = Cuts::new(control, input.len());
    let cut = run_requests(input, limits, announce, Some(&mut cuts));
    assert_eq!(whole, cut, "cutting the stream changed what was parsed");
}

/// Answers one request with the encoder (a plausible reply of each kind).
fn answer(request: &Request<'_>, held: &[Piece<'_>], out: &mut Vec<u8>) -> usize {
    let before = out.len();
    let ok = match *request {
        Request::Get(g) => {
            for &key in g.keys {
                let k = bytes(held, key);
                reply::value(out, &k, 7, g.kind.returns_cas().then_some(9), &k).expect("a Vec");
            }
            if g.last {
                reply::status(out, Status::End)
            } else {
                Ok(())
            }
        }
        Request::Store(_) => reply::status(out, Status::Stored),
        Request::Arith { delta, .. } => reply::number(out, delta),
        Request::Version => reply::version(out, b"1.6.21"),
        Request::Stats { args } => reply::stat_u64(out, b"args", args.len() as u64)
            .and_then(|()| reply::status(out, Status::End)),
        Request::MetaGet { key, flags } => {
            let k = bytes(held, key);
            let mut r = if flags.return_value() {
                MetaReply::value(k.len() as u32)
            } else {
                MetaReply::new(MetaCode::Hd)
            };
            if let Some(o) = flags.opaque() {
                r.opaque(o);
            }
            r.key(&k, false).flag_i64(b't', -1);
            if flags.return_value() {
                r.emit_with_value(out, &k)
            } else {
                r.emit(out)
            }
        }
        Request::Quit => Ok(()),
        _ => MetaReply::new(MetaCode::Hd).emit(out),
    };
    ok.expect("a Vec never fills");
    out.len() - before
}

/// Reads `stream` with the reply parser; returns the replies' count, requiring no error.
fn count_replies(stream: &[u8]) -> usize {
    let mut parser = ReplyParser::new(ReplyLimits::default());
    let mut rest = stream;
    let mut count = 0;
    loop {
        let step = parser.advance(rest).expect("the encoder's replies parse");
        rest = &rest[step.consumed..];
        if !step.complete {
            assert!(rest.is_empty());
            return count;
        }
        // A get's values and a stats list's lines are counted with the `END` that closes
        // them, as in `answer`.
        if !matches!(
            parser.reply(),
            Some(Reply::Value { .. } | Reply::Stat { .. })
        ) {
            count += 1;
        }
    }
}

/// `memcache_udp`: a request datagram (header and commands) is checked as memcached checks
/// it, its commands are answered with the encoder, and the replies are cut into datagrams
/// and put back together; the reply stream must parse.
pub fn udp(data: &[u8]) {
    if let Ok(header) = FrameHeader::parse(data) {
        assert_eq!(header.to_bytes(), data[..HEADER_LEN], "header round trip");
    }
    let (header, payload) = match udp::parse_request(data) {
        Err(UdpError::Truncated { len }) => {
            assert!(len <= HEADER_LEN);
            return;
        }
        Err(UdpError::MultiPacket { request_id }) => {
            let h = FrameHeader::parse(data).expect("a header was read");
            assert_eq!((h.request_id, h.total != 1), (request_id, true));
            return;
        }
        Err(e) => panic!("parse_request cannot fail so: {e}"),
        Ok(ok) => ok,
    };
    let mut parser = RequestParser::new(Limits::default()).expect("valid limits");
    let held = [Piece::new(0, payload)];
    let mut replies = Vec::new();
    let mut answered = 0;
    let mut rest = payload;
    loop {
        let step = parser.advance(rest);
        rest = &rest[step.consumed..];
        match step.outcome {
            Outcome::NeedMore => break,
            Outcome::Header => {}
            Outcome::Request => {
                let request = parser.request().expect("a request");
                if answer(&request, &held, &mut replies) > 0 {
                    let ends_reply = !matches!(request, Request::Get(g) if !g.last);
                    answered += usize::from(ends_reply);
                }
            }
            Outcome::Error(e) => {
                replies.put(e.reply()).expect("a Vec");
                answered += 1;
                if e.closes_connection() {
                    break;
                }
            }
        }
    }
    assert_eq!(count_replies(&replies), answered);
    // The reserved field picks the datagram limit, from 9 bytes (one payload byte) up.
    let limit = HEADER_LEN + 1 + usize::from(header.reserved) % 1500;
    let datagrams = udp::split(&replies, header.request_id, limit).expect("a small reply");
    let total = datagrams.len();
    let mut joined = Vec::with_capacity(replies.len());
    let mut frame = vec![0u8; limit];
    for (i, (h, chunk)) in datagrams.enumerate() {
        assert_eq!(
            (h.request_id, h.sequence as usize, h.total as usize),
            (header.request_id, i, total)
        );
        assert!(!chunk.is_empty() && HEADER_LEN + chunk.len() <= limit);
        let n = udp::write_datagram(&mut frame, &h, chunk).expect("room for a datagram");
        assert_eq!(FrameHeader::parse(&frame[..n]), Ok(h));
        joined.extend_from_slice(&frame[HEADER_LEN..n]);
    }
    assert_eq!(joined, replies, "the datagrams carry the reply");
}

/// Parses a reply stream cut by `cuts` (or whole); returns the replies, one line each.
fn run_replies(input: &[u8], cuts: Option<&mut Cuts>) -> Vec<String> {
    let mut parser = ReplyParser::new(ReplyLimits {
        line_len_max: 256,
        value_len_max: 1 << 16,
    });
    let mut log = Vec::new();
    let mut held = Vec::new();
    let mut cuts = cuts;
    let mut at = 0;
    while at < input.len() {
        let len = cuts
            .as_mut()
            .map_or(usize::MAX, |c| c.next())
            .min(input.len() - at);
        let piece = &input[at..at + len];
        held.push(Piece::new(at as u64, piece));
        at += len;
        let mut rest = piece;
        loop {
            match parser.advance(rest) {
                Err(e) => {
                    log.push(format!("{} {e:?}", parser.offset()));
                    assert_eq!(parser.advance(rest), Err(e), "a failed parser stays failed");
                    return log;
                }
                Ok(step) => {
                    assert!(step.consumed <= rest.len());
                    rest = &rest[step.consumed..];
                    if !step.complete {
                        assert!(rest.is_empty());
                        break;
                    }
                    let reply = parser.reply().expect("a reply after a complete step");
                    let mut all = Vec::new();
                    match reply {
                        Reply::Value { key, data, .. } => {
                            all.extend([key, data]);
                            assert_eq!(bytes(&held, Span::new(data.end(), 2)), b"\r\n");
                        }
                        Reply::Meta { data, flags, .. } => {
                            all.extend(data);
                            all.extend(flags.iter().map(|f| f.value));
                        }
                        Reply::Error { message }
                        | Reply::ClientError { message }
                        | Reply::ServerError { message } => all.push(message),
                        Reply::Version { version } => all.push(version),
                        Reply::Stat { name, value } => all.extend([name, value]),
                        Reply::MetaDebug { key, info } => all.extend([key, info]),
                        Reply::Other { line } => all.push(line),
                        Reply::Status(_) | Reply::Number(_) => {}
                    }
                    for s in all {
                        assert!(s.end() <= parser.offset());
                        let _ = bytes(&held, s);
                    }
                    log.push(format!("{} {reply:?}", parser.offset()));
                }
            }
        }
    }
    log
}

/// `memcache_reply`: the reply parser over a cut stream agrees with the whole stream.
pub fn reply(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let whole = run_replies(input, None);
    let cut = run_replies(input, Some(&mut Cuts::new(control, input.len())));
    assert_eq!(whole, cut, "cutting the stream changed what was parsed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Fragments of the protocol, so that random streams reach deep paths.
    const WORDS: &[&str] = &[
        "get",
        "gets",
        "gat",
        "gats",
        "set",
        "add",
        "cas",
        "append",
        "delete",
        "incr",
        "touch",
        "flush_all",
        "stats",
        "version",
        "verbosity",
        "noreply",
        "mg",
        "ms",
        "md",
        "ma",
        "mn",
        "me",
        "0",
        "1",
        "5",
        "-1",
        "17",
        "2000000",
        "k",
        "key",
        "Zm9v",
        "v",
        "q",
        "b",
        "T10",
        "O12",
        "MA",
        "MX",
        "D3",
        "J",
        "\r\n",
        "\n",
        "\r",
        " ",
        "  ",
        "\0",
        "hello",
        "VALUE",
        "END",
        "STORED",
        "HD",
        "VA",
        "EN",
        "ERROR",
        "STAT",
    ];

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            proptest::collection::vec(proptest::sample::select(WORDS), 0..80).prop_map(|w| {
                let mut out = Vec::new();
                for (i, word) in w.iter().enumerate() {
                    if i > 0 && !word.starts_with(['\r', '\n', ' ']) {
                        out.push(b' ');
                    }
                    out.extend_from_slice(word.as_bytes());
                }
                out
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn request_never_panics_and_cuts_do_not_matter(control in any::<u8>(), input in stream()) {
            let mut data = vec![control];
            data.extend_from_slice(&input);
            request(&data);
        }

        #[test]
        fn reply_never_panics_and_cuts_do_not_matter(control in any::<u8>(), input in stream()) {
            let mut data = vec![control];
            data.extend_from_slice(&input);
            reply(&data);
        }

        #[test]
        fn udp_never_panics(header in proptest::collection::vec(any::<u8>(), 0..9), input in stream()) {
            let mut data = header;
            data.extend_from_slice(&input);
            udp(&data);
            if data.len() > HEADER_LEN {
                // And as a well-formed single-datagram request.
                data[4] = 0;
                data[5] = 1;
                udp(&data);
            }
        }
    }

    #[test]
    fn regressions() {
        for input in [
            &b""[..],
            b"\x00",
            b"\x01get a b c d e f\r\n",
            b"\x03set k 0 0 20\r\n",
            b"\x22set k 0 0 2\r\nhi\r\nms k 2 T1\r\nhi\r\n",
            b"\x00get a\r\rb\r\n",
        ] {
            request(input);
            reply(input);
        }
        udp(b"\x00\x01\x00\x00\x00\x01\x00\x05get a b\r\nset k 0 0 1\r\nx\r\nmg k v O1\r\nbogus\r\n");
    }
}
