//! Bodies of the `resp_request` and `resp_reply` fuzz targets, kept in the library so that the
//! property tests run exactly what libFuzzer runs (as `melange_wire::fuzz` does).
//!
//! Input layout, for both: a flags byte (bit 0: small limits, so the limit paths are reached
//! with short inputs; bit 1: authentication required, for the request parser), a byte `n`
//! (n % 16 piece lengths follow), the piece lengths (one byte each; 0 makes an empty piece),
//! then the stream. The stream is cut into pieces of those lengths, cycling, and fed to the
//! parser; the same stream is also fed whole to a second parser.
//!
//! Checked on every step: nothing panics; `consumed` never exceeds the piece, and is all of it
//! unless a message completed; every span lies inside what was fed and after the parser's
//! `retain_from` (the run drops every piece that ends before it, as a server would, and must
//! still read every argument); and the split does not change the outcome (the same requests or
//! replies, the same error). For replies, each reply read is written again with the
//! [`crate::ReplyWriter`] in RESP2 and RESP3 and must read back as the same value.

use crate::pieces::Piece;
use crate::reply::{Protocol, ReplyWriter};
use crate::reply_parser::{ReplyError, ReplyLimits, ReplyParser};
use crate::request::{Limits, ProtocolError, RequestParser};
use crate::value::{Value, ValueError};

/// Limits small enough for short fuzz inputs to reach every refusal.
const SMALL_REQUEST_LIMITS: Limits = Limits {
    bulk_len_max: 64,
    args_max: 8,
    inline_len_max: 32,
    query_len_max: 200,
};

const SMALL_REPLY_LIMITS: ReplyLimits = ReplyLimits {
    bulk_len_max: 64,
    aggregate_len_max: 8,
    depth_max: 4,
    frames_max: 32,
    line_len_max: 32,
};

/// Splits the input into flags, the pieces and the whole stream.
fn plan(data: &[u8]) -> (u8, Vec<&[u8]>, &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let count = data.get(1).map_or(0, |&n| usize::from(n % 16));
    let lengths_end = (2 + count).min(data.len());
    let lengths = data.get(2..lengths_end).unwrap_or(&[]);
    let stream = data.get(lengths_end..).unwrap_or(&[]);
    let mut parts = Vec::new();
    let mut rest = stream;
    if lengths.iter().all(|&len| len == 0) {
        parts.extend(lengths.iter().map(|_| &stream[..0]));
        parts.push(stream);
        return (flags, parts, stream);
    }
    let mut index = 0;
    while !rest.is_empty() {
        let len = usize::from(lengths[index % lengths.len()]).min(rest.len());
        parts.push(&rest[..len]);
        rest = &rest[len..];
        index += 1;
    }
    (flags, parts, stream)
}

/// The requests a run found, and how it ended.
#[derive(Debug, PartialEq, Eq)]
struct RequestRun {
    requests: Vec<Vec<Vec<u8>>>,
    error: Option<ProtocolError>,
}

fn run_requests(parts: &[&[u8]], limits: Limits, auth_required: bool) -> RequestRun {
    let mut parser = RequestParser::new(limits);
    parser.set_auth_required(auth_required);
    let mut held: Vec<Piece<'_>> = Vec::new();
    let mut scratch = Vec::new();
    let mut run = RequestRun {
        requests: Vec::new(),
        error: None,
    };
    for part in parts {
        held.push(Piece {
            offset: parser.position(),
            bytes: part,
        });
        let mut rest: &[u8] = part;
        loop {
            let fed = parser.position();
            let step = match parser.advance(rest) {
                Ok(step) => step,
                Err(error) => {
                    assert_eq!(parser.advance(b"more"), Err(error), "errors are final");
                    run.error = Some(error);
                    return run;
                }
            };
            assert!(step.consumed <= rest.len(), "consumed more than the piece");
            assert!(
                step.complete || step.consumed == rest.len(),
                "stopped early"
            );
            assert_eq!(parser.position(), fed + step.consumed as u64);
            rest = &rest[step.consumed..];
            // Drop what the parser says it will never need, as a server would.
            let keep_from = parser.retain_from();
            assert!(keep_from <= parser.position());
            held.retain(|piece| piece.end() > keep_from || piece.offset >= keep_from);
            if step.complete {
                let request = parser.request().expect("a complete request is readable");
                let whole = request.stream_span();
                assert_eq!(whole.end(), parser.position());
                let mut previous_end = whole.offset;
                for index in 0..request.len() {
                    if let Some(span) = request.span(index) {
                        assert!(span.offset >= previous_end, "spans in order");
                        assert!(span.offset >= keep_from, "span before retain_from");
                        assert!(span.end() <= parser.position(), "span past what was fed");
                        previous_end = span.end();
                    } else {
                        assert!(request.inline_arg(index).is_some());
                    }
                }
                let args = parser
                    .args(&held, &mut scratch)
                    .expect("the pieces kept from retain_from hold every argument");
                run.requests.push(args.iter().map(<[u8]>::to_vec).collect());
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    run
}

/// `resp_request`: the request parser over arbitrary bytes and splits.
pub fn request(data: &[u8]) {
    let (flags, parts, stream) = plan(data);
    let limits = if flags & 1 != 0 {
        SMALL_REQUEST_LIMITS
    } else {
        Limits::default()
    };
    let auth_required = flags & 2 != 0;
    let split = run_requests(&parts, limits, auth_required);
    let whole = run_requests(&[stream], limits, auth_required);
    assert_eq!(
        split.requests, whole.requests,
        "the split changed the requests"
    );
    // The query buffer limit is checked once per piece, so where it fires (and whether a
    // protocol error later in the same piece fires first) depends on the split; every other
    // error must be the same.
    let limit =
        |e: &Option<ProtocolError>| matches!(e, Some(ProtocolError::QueryBufferLimit { .. }));
    if !limit(&split.error) && !limit(&whole.error) {
        assert_eq!(split.error, whole.error, "the split changed the error");
    } else {
        assert_eq!(split.error.is_some(), whole.error.is_some());
    }
}

/// The replies a run found, and how it ended.
#[derive(Debug, PartialEq)]
struct ReplyRun {
    values: Vec<Result<Value, ValueError>>,
    error: Option<ReplyError>,
}

fn run_replies(parts: &[&[u8]], limits: ReplyLimits) -> ReplyRun {
    let mut parser = ReplyParser::new(limits);
    let mut held: Vec<Piece<'_>> = Vec::new();
    let mut run = ReplyRun {
        values: Vec::new(),
        error: None,
    };
    for part in parts {
        held.push(Piece {
            offset: parser.position(),
            bytes: part,
        });
        let mut rest: &[u8] = part;
        loop {
            let step = match parser.advance(rest) {
                Ok(step) => step,
                Err(error) => {
                    assert_eq!(parser.advance(b"+x\r\n"), Err(error), "errors are final");
                    run.error = Some(error);
                    return run;
                }
            };
            assert!(step.consumed <= rest.len(), "consumed more than the piece");
            assert!(
                step.complete || step.consumed == rest.len(),
                "stopped early"
            );
            rest = &rest[step.consumed..];
            let keep_from = parser.retain_from();
            held.retain(|piece| piece.end() > keep_from || piece.offset >= keep_from);
            if step.complete {
                let frames = parser.frames().expect("a complete reply is readable");
                assert!(!frames.is_empty());
                let value = Value::from_frames(frames, &held);
                assert!(
                    !matches!(value, Err(ValueError::Pieces(_) | ValueError::Truncated)),
                    "a complete reply's frames read back from the kept pieces: {value:?}"
                );
                if let Ok(value) = &value {
                    round_trip(value);
                }
                run.values.push(value);
            }
            if rest.is_empty() {
                break;
            }
        }
    }
    run
}

/// Writes `value` in both protocols and reads it back.
fn round_trip(value: &Value) {
    for protocol in [Protocol::Resp2, Protocol::Resp3] {
        let mut out = Vec::new();
        value
            .write(&mut ReplyWriter::new(&mut out, protocol))
            .expect("a vector has room");
        let mut parser = ReplyParser::new(ReplyLimits::default());
        let step = parser.advance(&out).expect("our own output parses");
        assert!(
            step.complete && step.consumed == out.len(),
            "one whole reply"
        );
        let piece = [Piece {
            offset: 0,
            bytes: &out,
        }];
        let frames = parser.frames().expect("complete");
        let back = Value::from_frames(frames, &piece).expect("our own output reads back");
        assert_eq!(
            back,
            value.as_read_back(protocol),
            "{protocol:?} round trip"
        );
    }
}

/// `resp_reply`: the reply parser over arbitrary bytes and splits, and the writer's output
/// read back.
pub fn reply(data: &[u8]) {
    let (flags, parts, stream) = plan(data);
    let limits = if flags & 1 != 0 {
        SMALL_REPLY_LIMITS
    } else {
        ReplyLimits::default()
    };
    let split = run_replies(&parts, limits);
    let whole = run_replies(&[stream], limits);
    assert_eq!(split, whole, "the split changed the outcome");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn request_body_holds_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            request(&data);
        }

        #[test]
        fn request_body_holds_on_protocol_like_bytes(
            head in proptest::collection::vec(any::<u8>(), 0..8),
            words in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"*"[..],
                    &b"$"[..],
                    &b"\r\n"[..],
                    &b"\r"[..],
                    &b"\n"[..],
                    &b"1"[..],
                    &b"3"[..],
                    &b"-1"[..],
                    &b"0"[..],
                    &b"abc"[..],
                    &b" "[..],
                    &b"\""[..],
                    &b"'"[..],
                    &b"\\x4"[..],
                    &b"SET"[..],
                    &b"99"[..],
                ]),
                0..64,
            ),
        ) {
            let mut data = head;
            for word in words {
                data.extend_from_slice(word);
            }
            request(&data);
        }

        #[test]
        fn reply_body_holds_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            reply(&data);
        }

        #[test]
        fn reply_body_holds_on_protocol_like_bytes(
            head in proptest::collection::vec(any::<u8>(), 0..8),
            words in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"*"[..],
                    &b"$"[..],
                    &b"%"[..],
                    &b"~"[..],
                    &b">"[..],
                    &b"|"[..],
                    &b"+"[..],
                    &b"-"[..],
                    &b":"[..],
                    &b","[..],
                    &b"#"[..],
                    &b"_"[..],
                    &b"("[..],
                    &b"="[..],
                    &b"!"[..],
                    &b"\r\n"[..],
                    &b"1"[..],
                    &b"2"[..],
                    &b"-1"[..],
                    &b"0"[..],
                    &b"t"[..],
                    &b"inf"[..],
                    &b"1.5"[..],
                    &b"txt:"[..],
                    &b"ab"[..],
                ]),
                0..64,
            ),
        ) {
            let mut data = head;
            for word in words {
                data.extend_from_slice(word);
            }
            reply(&data);
        }
    }
}
