//! After start-up, parsing requests and replies and encoding replies allocate nothing.
//!
//! The counting global allocator comes from `melange-sys`, the one crate allowed `unsafe`;
//! installing it is one safe line. Everything is warmed up once (the parsers are built, the
//! output buffer reaches its size), then a mixed pipeline is parsed, answered and read back
//! while allocations are counted. Run alone in its own test binary, so no other test
//! allocates meanwhile.

use melange_memcache::reply::{self, MetaReply};
use melange_memcache::span::{self, Piece};
use melange_memcache::{
    Limits, MetaCode, Outcome, ReplyLimits, ReplyParser, Request, RequestParser, SliceSink, Status,
};
use melange_sys::alloc_count::{start_counting, stop_counting, CountingAllocator};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const PIPELINE: &[u8] = b"set a 0 0 5\r\nhello\r\nget a b c d e f g h\r\ngets a\r\n\
    incr n 1\r\ndelete a noreply\r\nmg a v t c k Oxyz q\r\nms b 3 T10 F2\r\nabc\r\n\
    md b q\r\nma n D2 v\r\nmn\r\nbogus\r\nversion\r\nstats items\r\nset big 0 0 2000000\r\n";

/// Parses `input` in pieces of `step`, answers every request into `out`, reads the answers
/// back; returns the number of replies read.
fn round(
    parser: &mut RequestParser,
    replies: &mut ReplyParser,
    input: &[u8],
    step: usize,
    out: &mut [u8],
) -> usize {
    let mut sink = SliceSink::new(out);
    let mut held = [Piece::new(0, b"")];
    let mut scratch = [0u8; 256];
    let base = parser.offset();
    // The test holds the whole input as one piece, as a caller holding its segments does.
    held[0] = Piece::new(base, input);
    for piece in input.chunks(step) {
        let mut rest = piece;
        loop {
            let s = parser.advance(rest);
            rest = &rest[s.consumed..];
            match s.outcome {
                Outcome::NeedMore => break,
                Outcome::Header => {}
                Outcome::Error(e) => {
                    if !e.noreply {
                        reply::parse_error(&mut sink, &e).unwrap();
                    }
                }
                Outcome::Request => match parser.request().unwrap() {
                    Request::Get(g) => {
                        for &k in g.keys {
                            let key = span::read(&held, k, &mut scratch).unwrap();
                            reply::value(&mut sink, key, 0, Some(1), b"value").unwrap();
                        }
                        if g.last {
                            reply::status(&mut sink, Status::End).unwrap();
                        }
                    }
                    Request::Store(st) if !st.noreply => {
                        reply::status(&mut sink, Status::Stored).unwrap()
                    }
                    Request::Arith { delta, .. } => reply::number(&mut sink, delta).unwrap(),
                    Request::MetaGet { key, flags } => {
                        let key = span::read(&held, key, &mut scratch).unwrap();
                        let mut line = MetaReply::value(5);
                        if let Some(o) = flags.opaque() {
                            line.opaque(o);
                        }
                        line.key(key, false).flag_i64(b't', -1).flag_u64(b'c', 7);
                        line.emit_with_value(&mut sink, b"value").unwrap();
                    }
                    Request::Version => reply::version(&mut sink, b"1.6.21").unwrap(),
                    Request::Stats { .. } => {
                        reply::stat_u64(&mut sink, b"curr_items", 1).unwrap();
                        reply::status(&mut sink, Status::End).unwrap();
                    }
                    Request::MetaNoop => MetaReply::new(MetaCode::Mn).emit(&mut sink).unwrap(),
                    _ => MetaReply::new(MetaCode::Hd).emit(&mut sink).unwrap(),
                },
            }
        }
    }
    let mut count = 0;
    let mut rest = sink.written();
    loop {
        let s = replies.advance(rest).unwrap();
        rest = &rest[s.consumed..];
        if !s.complete {
            break;
        }
        assert!(replies.reply().is_some());
        count += 1;
    }
    count
}

#[test]
fn the_data_path_allocates_nothing() {
    let mut parser = RequestParser::new(Limits::default()).unwrap();
    let mut replies = ReplyParser::new(ReplyLimits::default());
    let mut out = vec![0u8; 64 * 1024];
    // The refused value's 2000000 bytes and their "\r\n" follow the pipeline; the parser
    // skips them without looking, and the next round starts in step.
    let tail = vec![b'x'; 2_000_002];
    let warm = round(&mut parser, &mut replies, PIPELINE, 7, &mut out);
    parser.advance(&tail);
    start_counting();
    let mut counted = 0;
    for step in [1, 3, 64, 1460] {
        counted += round(&mut parser, &mut replies, PIPELINE, step, &mut out);
        parser.advance(&tail);
    }
    let allocations = stop_counting();
    assert_eq!(counted, 4 * warm);
    assert_eq!(allocations, 0, "the data path allocated");
}
