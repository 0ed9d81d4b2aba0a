//! Property tests over the public API: any pipeline of valid requests, encoded as a client
//! would and cut into arbitrary pieces, parses back to the same requests in order; any
//! sequence of replies written by the encoder parses back with the reply parser.

use melange_memcache::reply::{self, MetaReply};
use melange_memcache::span::{copy_to, Piece};
use melange_memcache::{
    ArithMode, GetKind, Limits, MetaCode, MetaFlags, Outcome, Reply, ReplyLimits, ReplyParser,
    Request, RequestParser, SetMode, Span, Status, StoreKind,
};
use proptest::prelude::*;

/// A request as a client builds it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cmd {
    Get(GetKind, i64, Vec<Vec<u8>>),
    Store(StoreKind, Vec<u8>, u32, i64, Vec<u8>, u64, bool),
    Delete(Vec<u8>, bool),
    Arith(bool, Vec<u8>, u64, bool),
    Touch(Vec<u8>, i64, bool),
    FlushAll(i64, bool),
    Version,
    Verbosity(u32, bool),
    CacheMemlimit(u32, bool),
    Stats(Vec<Vec<u8>>),
    Quit,
    /// Command letter, key, data (ms), flag tokens.
    Meta(u8, Vec<u8>, Option<Vec<u8>>, Vec<String>),
    MetaDebug(Vec<u8>),
    MetaNoop,
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Cmd {
    fn encode(&self, out: &mut Vec<u8>) {
        let nr = |noreply: bool| if noreply { " noreply" } else { "" };
        let line = match self {
            Cmd::Get(kind, exptime, keys) => {
                let keys: Vec<String> = keys.iter().map(|k| s(k)).collect();
                match kind {
                    GetKind::Get => format!("get {}", keys.join(" ")),
                    GetKind::Gets => format!("gets {}", keys.join(" ")),
                    GetKind::Gat => format!("gat {exptime} {}", keys.join(" ")),
                    GetKind::Gats => format!("gats {exptime} {}", keys.join(" ")),
                }
            }
            Cmd::Store(kind, key, flags, exptime, data, cas, noreply) => {
                let word = match kind {
                    StoreKind::Set => "set",
                    StoreKind::Add => "add",
                    StoreKind::Replace => "replace",
                    StoreKind::Append => "append",
                    StoreKind::Prepend => "prepend",
                    StoreKind::Cas => "cas",
                };
                let cas = if *kind == StoreKind::Cas {
                    format!(" {cas}")
                } else {
                    String::new()
                };
                let line = format!(
                    "{word} {} {flags} {exptime} {}{cas}{}\r\n",
                    s(key),
                    data.len(),
                    nr(*noreply)
                );
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
                return;
            }
            Cmd::Delete(key, noreply) => format!("delete {}{}", s(key), nr(*noreply)),
            Cmd::Arith(incr, key, delta, noreply) => {
                format!(
                    "{} {} {delta}{}",
                    if *incr { "incr" } else { "decr" },
                    s(key),
                    nr(*noreply)
                )
            }
            Cmd::Touch(key, exptime, noreply) => {
                format!("touch {} {exptime}{}", s(key), nr(*noreply))
            }
            Cmd::FlushAll(0, noreply) => format!("flush_all{}", nr(*noreply)),
            Cmd::FlushAll(delay, noreply) => format!("flush_all {delay}{}", nr(*noreply)),
            Cmd::Version => "version".into(),
            Cmd::Verbosity(level, noreply) => format!("verbosity {level}{}", nr(*noreply)),
            Cmd::CacheMemlimit(mb, noreply) => format!("cache_memlimit {mb}{}", nr(*noreply)),
            Cmd::Stats(args) => {
                let args: Vec<String> = args.iter().map(|a| format!(" {}", s(a))).collect();
                format!("stats{}", args.concat())
            }
            Cmd::Quit => "quit".into(),
            Cmd::Meta(c, key, data, flags) => {
                let len = data
                    .as_ref()
                    .map(|d| format!(" {}", d.len()))
                    .unwrap_or_default();
                let flags: Vec<String> = flags.iter().map(|f| format!(" {f}")).collect();
                let line = format!("m{} {}{len}{}\r\n", *c as char, s(key), flags.concat());
                out.extend_from_slice(line.as_bytes());
                if let Some(data) = data {
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                return;
            }
            Cmd::MetaDebug(key) => format!("me {}", s(key)),
            Cmd::MetaNoop => "mn".into(),
        };
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The flag tokens of parsed flags, written as the generator writes them.
fn tokens(flags: &MetaFlags) -> Vec<String> {
    flags
        .order()
        .iter()
        .map(|&f| match f {
            b'T' => format!("T{}", flags.ttl().unwrap()),
            b'N' => format!("N{}", flags.vivify_ttl().unwrap()),
            b'R' => format!("R{}", flags.recache_ttl().unwrap()),
            b'F' => format!("F{}", flags.client_flags().unwrap()),
            b'C' => format!("C{}", flags.compare_cas().unwrap()),
            b'E' => format!("E{}", flags.new_cas().unwrap()),
            b'J' => format!("J{}", flags.initial().unwrap()),
            b'D' => format!("D{}", flags.delta().unwrap()),
            b'M' => format!("M{}", flags.mode().unwrap() as char),
            b'O' => s(flags.opaque().unwrap()),
            other => (other as char).to_string(),
        })
        .collect()
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => "[!-~]{1,24}".prop_map(String::into_bytes),
        1 => "[a-z]{250}".prop_map(String::into_bytes),
    ]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>()], 0..2000),
    ]
}

/// Distinct meta flags with valid tokens; `modes` are the valid `M` bytes.
fn meta_flags(max: usize, modes: &'static [u8]) -> impl Strategy<Value = Vec<String>> {
    let one = prop_oneof![
        prop::sample::select(&b"cfhklqstuvxIPL"[..]).prop_map(|c| (c as char).to_string()),
        (prop::sample::select(&b"TNR"[..]), any::<i32>())
            .prop_map(|(c, v)| format!("{}{v}", c as char)),
        any::<u32>().prop_map(|v| format!("F{v}")),
        (prop::sample::select(&b"CEJD"[..]), any::<u64>())
            .prop_map(|(c, v)| format!("{}{v}", c as char)),
        prop::sample::select(modes).prop_map(|m| format!("M{}", m as char)),
        "[a-zA-Z0-9]{0,31}".prop_map(|o| format!("O{o}")),
    ];
    proptest::collection::vec(one, 0..max + 4).prop_map(move |all| {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for f in all {
            let c = f.as_bytes()[0];
            if !seen.contains(&c) && out.len() < max {
                seen.push(c);
                out.push(f);
            }
        }
        out
    })
}

fn cmd() -> impl Strategy<Value = Cmd> {
    let store_kind = prop::sample::select(vec![
        StoreKind::Set,
        StoreKind::Add,
        StoreKind::Replace,
        StoreKind::Append,
        StoreKind::Prepend,
        StoreKind::Cas,
    ]);
    let get_kind = prop::sample::select(vec![
        GetKind::Get,
        GetKind::Gets,
        GetKind::Gat,
        GetKind::Gats,
    ]);
    let exptime = any::<i32>().prop_map(i64::from);
    prop_oneof![
        (
            get_kind,
            exptime.clone(),
            proptest::collection::vec(key(), 1..12)
        )
            .prop_map(|(k, e, keys)| {
                let e = if k.touches() { e } else { 0 };
                Cmd::Get(k, e, keys)
            }),
        (
            store_kind,
            key(),
            any::<u32>(),
            exptime.clone(),
            data(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(kind, key, f, e, d, cas, nr)| {
                let cas = if kind == StoreKind::Cas { cas } else { 0 };
                Cmd::Store(kind, key, f, e, d, cas, nr)
            }),
        (key(), any::<bool>()).prop_map(|(k, nr)| Cmd::Delete(k, nr)),
        (any::<bool>(), key(), any::<u64>(), any::<bool>())
            .prop_map(|(i, k, d, nr)| Cmd::Arith(i, k, d, nr)),
        (key(), exptime.clone(), any::<bool>()).prop_map(|(k, e, nr)| Cmd::Touch(k, e, nr)),
        (exptime, any::<bool>()).prop_map(|(d, nr)| Cmd::FlushAll(d, nr)),
        Just(Cmd::Version),
        (any::<u32>(), any::<bool>()).prop_map(|(l, nr)| Cmd::Verbosity(l, nr)),
        (any::<u32>(), any::<bool>()).prop_map(|(m, nr)| Cmd::CacheMemlimit(m, nr)),
        proptest::collection::vec("[a-z0-9]{1,8}".prop_map(String::into_bytes), 0..4)
            .prop_map(Cmd::Stats),
        Just(Cmd::Quit),
        (key(), meta_flags(17, b"S")).prop_map(|(k, f)| Cmd::Meta(b'g', k, None, f)),
        (key(), data(), meta_flags(16, b"EAPRS")).prop_map(|(k, d, f)| Cmd::Meta(
            b's',
            k,
            Some(d),
            f
        )),
        (key(), meta_flags(17, b"S")).prop_map(|(k, f)| Cmd::Meta(b'd', k, None, f)),
        (key(), meta_flags(17, b"I+D-")).prop_map(|(k, f)| Cmd::Meta(b'a', k, None, f)),
        key().prop_map(Cmd::MetaDebug),
        Just(Cmd::MetaNoop),
    ]
}

fn bytes(held: &[Piece<'_>], span: Span) -> Vec<u8> {
    let mut out = vec![0; span.len as usize];
    copy_to(held, span, &mut out).unwrap();
    out
}

/// Parses `input` cut into pieces of the given lengths (cycled); merges multiget chunks.
fn parse(input: &[u8], cuts: &[usize], limits: Limits) -> Vec<Cmd> {
    let mut parser = RequestParser::new(limits).unwrap();
    let mut held = Vec::new();
    let mut got = Vec::new();
    let mut open_get: Option<Cmd> = None;
    let mut at = 0;
    let mut cut = cuts.iter().cycle();
    while at < input.len() {
        let len = (*cut.next().unwrap()).min(input.len() - at);
        let piece = &input[at..at + len];
        held.push(Piece::new(at as u64, piece));
        at += len;
        let mut rest = piece;
        loop {
            let step = parser.advance(rest);
            rest = &rest[step.consumed..];
            match step.outcome {
                Outcome::NeedMore => break,
                Outcome::Header => unreachable!("not announced"),
                Outcome::Error(e) => panic!("a valid request was refused: {e}"),
                Outcome::Request => {}
            }
            let b = |span: Span| bytes(&held, span);
            let cmd = match parser.request().unwrap() {
                Request::Get(g) => {
                    assert!(g.keys.len() <= limits.get_chunk_keys_max);
                    let keys: Vec<Vec<u8>> = g.keys.iter().map(|&k| b(k)).collect();
                    let merged = match open_get.take() {
                        Some(Cmd::Get(kind, e, mut before)) => {
                            assert_eq!((kind, e), (g.kind, g.exptime));
                            before.extend(keys);
                            Cmd::Get(kind, e, before)
                        }
                        _ => Cmd::Get(g.kind, g.exptime, keys),
                    };
                    if !g.last {
                        open_get = Some(merged);
                        continue;
                    }
                    merged
                }
                Request::Store(st) => Cmd::Store(
                    st.kind,
                    b(st.key),
                    st.flags,
                    st.exptime,
                    b(st.data),
                    st.cas,
                    st.noreply,
                ),
                Request::Delete { key, noreply } => Cmd::Delete(b(key), noreply),
                Request::Arith {
                    kind,
                    key,
                    delta,
                    noreply,
                } => Cmd::Arith(
                    kind == melange_memcache::request::ArithKind::Incr,
                    b(key),
                    delta,
                    noreply,
                ),
                Request::Touch {
                    key,
                    exptime,
                    noreply,
                } => Cmd::Touch(b(key), exptime, noreply),
                Request::FlushAll { delay, noreply } => Cmd::FlushAll(delay, noreply),
                Request::Version => Cmd::Version,
                Request::Verbosity { level, noreply } => Cmd::Verbosity(level, noreply),
                Request::CacheMemlimit { megabytes, noreply } => {
                    Cmd::CacheMemlimit(megabytes, noreply)
                }
                Request::Stats { args } => Cmd::Stats(args.iter().map(|&a| b(a)).collect()),
                Request::Quit => Cmd::Quit,
                Request::MetaGet { key, flags } => Cmd::Meta(b'g', b(key), None, tokens(flags)),
                Request::MetaSet {
                    key,
                    data,
                    mode,
                    flags,
                } => {
                    assert_eq!(Some(mode), SetMode::from_flag(flags.mode()));
                    Cmd::Meta(b's', b(key), Some(b(data)), tokens(flags))
                }
                Request::MetaDelete { key, flags } => Cmd::Meta(b'd', b(key), None, tokens(flags)),
                Request::MetaArith { key, mode, flags } => {
                    assert_eq!(Some(mode), ArithMode::from_flag(flags.mode()));
                    Cmd::Meta(b'a', b(key), None, tokens(flags))
                }
                Request::MetaDebug { key, binary } => {
                    assert!(!binary);
                    Cmd::MetaDebug(b(key))
                }
                Request::MetaNoop => Cmd::MetaNoop,
            };
            got.push(cmd);
        }
    }
    assert!(open_get.is_none(), "a multiget without its last chunk");
    assert!(parser.is_idle());
    got
}

/// A reply as the encoder writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rep {
    Value(Vec<u8>, u32, Option<u64>, Vec<u8>),
    Status(Status),
    Number(u64),
    Version(Vec<u8>),
    Stat(Vec<u8>, Vec<u8>),
    ClientError(Vec<u8>),
    ServerError(Vec<u8>),
    /// Code, data (VA), flags as (char, value).
    Meta(MetaCode, Option<Vec<u8>>, Vec<(u8, Vec<u8>)>),
}

fn rep() -> impl Strategy<Value = Rep> {
    let word = "[!-~]{1,20}".prop_map(String::into_bytes);
    let text = "[!-~][ -~]{0,40}[!-~]".prop_map(String::into_bytes);
    let status = prop::sample::select(vec![
        Status::Stored,
        Status::NotStored,
        Status::Exists,
        Status::NotFound,
        Status::Deleted,
        Status::Touched,
        Status::End,
        Status::Ok,
        Status::Reset,
    ]);
    let code = prop::sample::select(vec![
        MetaCode::Hd,
        MetaCode::En,
        MetaCode::Nf,
        MetaCode::Ns,
        MetaCode::Ex,
        MetaCode::Mn,
    ]);
    let flag = (
        prop::sample::select(&b"ctfskOhlWXZ"[..]),
        "[a-zA-Z0-9]{0,20}".prop_map(String::into_bytes),
    );
    prop_oneof![
        (key(), any::<u32>(), any::<Option<u64>>(), data())
            .prop_map(|(k, f, c, d)| Rep::Value(k, f, c, d)),
        status.prop_map(Rep::Status),
        any::<u64>().prop_map(Rep::Number),
        word.clone().prop_map(Rep::Version),
        (word, text.clone()).prop_map(|(n, v)| Rep::Stat(n, v)),
        text.clone().prop_map(Rep::ClientError),
        text.prop_map(Rep::ServerError),
        (code, proptest::collection::vec(flag.clone(), 0..8))
            .prop_map(|(c, f)| Rep::Meta(c, None, f)),
        (data(), proptest::collection::vec(flag, 0..8)).prop_map(|(d, f)| Rep::Meta(
            MetaCode::Va,
            Some(d),
            f
        )),
    ]
}

fn encode_reply(r: &Rep, out: &mut Vec<u8>) {
    match r {
        Rep::Value(k, f, c, d) => reply::value(out, k, *f, *c, d),
        Rep::Status(st) => reply::status(out, *st),
        Rep::Number(n) => reply::number(out, *n),
        Rep::Version(v) => reply::version(out, v),
        Rep::Stat(n, v) => reply::stat(out, n, v),
        Rep::ClientError(m) => reply::client_error(out, m),
        Rep::ServerError(m) => reply::server_error(out, m),
        Rep::Meta(code, data, flags) => {
            let mut line = match data {
                Some(d) => MetaReply::value(d.len() as u32),
                None => MetaReply::new(*code),
            };
            for (f, v) in flags {
                line.flag_bytes(*f, v);
            }
            match data {
                Some(d) => line.emit_with_value(out, d),
                None => line.emit(out),
            }
        }
    }
    .unwrap();
}

fn parse_replies(input: &[u8], cuts: &[usize]) -> Vec<Rep> {
    let mut parser = ReplyParser::new(ReplyLimits::default());
    let mut held = Vec::new();
    let mut got = Vec::new();
    let mut at = 0;
    let mut cut = cuts.iter().cycle();
    while at < input.len() {
        let len = (*cut.next().unwrap()).min(input.len() - at);
        let piece = &input[at..at + len];
        held.push(Piece::new(at as u64, piece));
        at += len;
        let mut rest = piece;
        loop {
            let step = parser.advance(rest).expect("the encoder's replies parse");
            rest = &rest[step.consumed..];
            if !step.complete {
                break;
            }
            let b = |span: Span| bytes(&held, span);
            got.push(match parser.reply().unwrap() {
                Reply::Value {
                    key,
                    flags,
                    cas,
                    data,
                } => Rep::Value(b(key), flags, cas, b(data)),
                Reply::Status(st) => Rep::Status(st),
                Reply::Number(n) => Rep::Number(n),
                Reply::Version { version } => Rep::Version(b(version)),
                Reply::Stat { name, value } => Rep::Stat(b(name), b(value)),
                Reply::ClientError { message } => Rep::ClientError(b(message)),
                Reply::ServerError { message } => Rep::ServerError(b(message)),
                Reply::Meta { code, data, flags } => Rep::Meta(
                    code,
                    data.map(b),
                    flags.iter().map(|f| (f.flag, b(f.value))).collect(),
                ),
                other => panic!("unexpected {other:?}"),
            });
        }
    }
    got
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_pipeline_of_valid_requests_parses_back_in_any_pieces(
        cmds in proptest::collection::vec(cmd(), 1..16),
        cuts in proptest::collection::vec(1usize..80, 1..8),
        chunk in 1usize..8,
    ) {
        let mut input = Vec::new();
        for c in &cmds {
            c.encode(&mut input);
        }
        let limits = Limits { get_chunk_keys_max: chunk, ..Limits::default() };
        prop_assert_eq!(&parse(&input, &cuts, limits), &cmds);
        prop_assert_eq!(&parse(&input, &[input.len()], Limits::default()), &cmds);
    }

    #[test]
    fn any_replies_parse_back_in_any_pieces(
        reps in proptest::collection::vec(rep(), 1..16),
        cuts in proptest::collection::vec(1usize..80, 1..8),
    ) {
        let mut input = Vec::new();
        for r in &reps {
            encode_reply(r, &mut input);
        }
        prop_assert_eq!(&parse_replies(&input, &cuts), &reps);
    }
}

#[test]
fn a_huge_value_arriving_in_many_segments_is_refused_before_any_data_and_the_stream_stays_in_step()
{
    let mut stream = b"set big 0 0 5000000 noreply\r\n".to_vec();
    stream.extend(std::iter::repeat_n(b'v', 5_000_000));
    stream.extend_from_slice(b"\r\nset small 0 0 2\r\nok\r\nget small\r\n");
    let mut parser = RequestParser::new(Limits::default()).unwrap();
    let mut outcomes = Vec::new();
    for segment in stream.chunks(1448) {
        let mut rest = segment;
        loop {
            let step = parser.advance(rest);
            rest = &rest[step.consumed..];
            match step.outcome {
                Outcome::NeedMore => break,
                Outcome::Error(e) => {
                    outcomes.push((parser.offset(), format!("{}", e.kind), e.noreply))
                }
                Outcome::Request => outcomes.push((
                    parser.offset(),
                    format!(
                        "{:?}",
                        parser.request().map(|r| matches!(r, Request::Store(_)))
                    ),
                    false,
                )),
                Outcome::Header => unreachable!(),
            }
        }
    }
    assert_eq!(
        outcomes,
        [
            // Refused at the end of its line (29 bytes), silently (noreply).
            (
                29,
                "SERVER_ERROR object too large for cache".to_string(),
                true
            ),
            (29 + 5_000_002 + 21, "Some(true)".to_string(), false),
            (stream.len() as u64, "Some(false)".to_string(), false),
        ]
    );
}
