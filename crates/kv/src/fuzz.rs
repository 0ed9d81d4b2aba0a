//! The fuzz bodies of the keyspace: [`commands`] and [`memcached()`].
//!
//! [`commands`]: any sequence of commands, with names from the table (and
//! junk) and arguments drawn from a small alphabet of keys, numbers at the edges of `i64`,
//! options and raw bytes, from two clients, with the clock moving. Shared by the libFuzzer
//! target `kv_commands` and this crate's property test.
//!
//! Checks, after every command: exactly one complete reply, the byte count the keyspace
//! reports equals a recount of every entry (so accounting never drifts), every hash and set's
//! running byte count equals a recount of its elements, and every list and sorted set passes
//! its own invariant check (element byte counts recounted from scratch, the sorted set's tree
//! ordered, sized and indexed).

use crate::command::{table, Config};
use crate::keyspace::{EvictionPolicy, Keyspace};
use crate::memcached;
use crate::reply::Recorder;
use crate::value::Value;
use crate::Server;
use melange_core::rng::SplitMix64;
use melange_memcache::reply_parse::{ReplyLimits, ReplyParser};
use melange_memcache::span::Piece;

/// Arguments the fuzzer picks from, besides raw bytes of the input.
const WORDS: &[&[u8]] = &[
    b"k",
    b"k2",
    b"h",
    b"0",
    b"1",
    b"-1",
    b"2",
    b"10",
    b"100",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"9223372036854775808",
    b"1.5",
    b"inf",
    b"-inf",
    b"nan",
    b"",
    b"NX",
    b"XX",
    b"GT",
    b"LT",
    b"EX",
    b"PX",
    b"EXAT",
    b"PXAT",
    b"KEEPTTL",
    b"GET",
    b"PERSIST",
    b"MATCH",
    b"COUNT",
    b"TYPE",
    b"string",
    b"*",
    b"k*",
    b"[",
    b"\\",
    b"REPLACE",
    b"DB",
    b"15",
    b"16",
    b"SETNAME",
    b"ID",
    b"GETNAME",
    b"ENCODING",
    b"IDLETIME",
    b"FREQ",
    b"maxmemory",
    b"maxmemory-policy",
    b"allkeys-lru",
    b"noeviction",
    b"1kb",
    b"SET",
    b"GETKEYS",
    b"COUNT",
    // Hash and set commands: fields, members, counts (negative ones repeat), options.
    b"f",
    b"a",
    b"3",
    b"-3",
    b"-1000",
    b"WITHVALUES",
    b"NOVALUES",
    b"LIMIT",
    b"hash",
    b"set",
    b"a*",
    // Lists and sorted sets: members, ends, options and range syntax.
    b"a",
    b"b",
    b"-2",
    b"3",
    b"0.5",
    b"1e400",
    b"LEFT",
    b"RIGHT",
    b"BEFORE",
    b"AFTER",
    b"RANK",
    b"MAXLEN",
    b"CH",
    b"INCR",
    b"MIN",
    b"MAX",
    b"(1",
    b"(0",
    b"[a",
    b"(a",
    b"[b",
    b"-",
    b"+",
    b"+inf",
    b"(-inf",
    b"WITHSCORES",
    b"WITHSCORE",
    b"BYSCORE",
    b"BYLEX",
    b"REV",
    b"LIMIT",
    b"lpush",
    b"zadd",
    b"zrange",
];

/// Runs the command program in `data`; panics (the fuzzer's finding) if an invariant breaks.
pub fn commands(data: &[u8]) {
    let mut server = Server::new(Config::default(), 1_700_000_000_000, 1);
    let mut clients = [server.new_client(), server.new_client()];
    let mut now = 1_700_000_000_000u64;
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    let names = table();
    while let Some(op) = next() {
        let client = usize::from(op & 1);
        let argc = usize::from((op >> 1) & 7);
        if op >> 4 == 15 {
            // A clock step of up to 25.5 s, and an active-expiry cycle.
            now += u64::from(next().unwrap_or(0)) * 100;
            server.keyspace.active_expire(now);
            continue;
        }
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(argc + 1);
        let Some(pick) = next() else { break };
        args.push(match pick {
            250..=255 => vec![pick; 3],
            _ => names[usize::from(pick) % names.len()]
                .name
                .as_bytes()
                .to_vec(),
        });
        for _ in 0..argc {
            let Some(a) = next() else { break };
            if a >= 240 {
                let len = usize::from(a - 240);
                args.push((0..len).filter_map(|_| next()).collect());
            } else {
                args.push(WORDS[usize::from(a) % WORDS.len()].to_vec());
            }
        }
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let mut out = Recorder::new();
        server.execute(&mut clients[client], &refs, now, &mut out);
        let replies = out.take();
        assert_eq!(replies.len(), 1, "{refs:?} gave {replies:?}");
        let recount: usize = (0..crate::keyspace::DATABASES)
            .map(|db| {
                server
                    .keyspace
                    .db(db)
                    .entries()
                    .map(|e| {
                        crate::keyspace::ENTRY_OVERHEAD
                            + crate::keyspace::Key::new(e.key()).heap_bytes()
                            + e.value().heap_bytes()
                    })
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(recount, server.keyspace.used_bytes(), "after {refs:?}");
        for db in 0..crate::keyspace::DATABASES {
            for entry in server.keyspace.db(db).entries() {
                match entry.value() {
                    Value::Hash(h) => {
                        assert_eq!(
                            h.map().bytes(),
                            h.map().recount_bytes(),
                            "{:?} after {refs:?}",
                            entry.key()
                        )
                    }
                    Value::Set(s) => assert_eq!(
                        s.members().bytes(),
                        s.members().recount_bytes(),
                        "{:?} after {refs:?}",
                        entry.key()
                    ),
                    Value::List(l) => l.check_invariants(),
                    Value::ZSet(z) => z.check_invariants(),
                    Value::Str(_) => {}
                }
                assert!(!entry.value().is_empty_collection(), "after {refs:?}");
            }
        }
    }
}

/// The byte count the keyspace reports equals a recount of every entry.
fn check_accounting(ks: &Keyspace, context: &dyn std::fmt::Debug) {
    let recount: usize = (0..crate::keyspace::DATABASES)
        .map(|db| {
            ks.db(db)
                .entries()
                .map(|e| {
                    crate::keyspace::ENTRY_OVERHEAD
                        + crate::keyspace::Key::new(e.key()).heap_bytes()
                        + e.value().heap_bytes()
                })
                .sum::<usize>()
        })
        .sum();
    assert_eq!(recount, ks.used_bytes(), "after {context:?}");
}

/// `kv_memcached`: a client's byte stream, cut into pieces, through a memcached
/// [`memcached::Session`] over a keyspace that also holds a Redis hash.
///
/// The first byte chooses the setting: bit 0 a 2 KiB item size limit (so refusals and their
/// skipped data are frequent), bit 1 a memory limit of 4 KiB, bit 2 eviction under it
/// (otherwise `noeviction`), bits 3..8 the clock step per piece (0 to 3.1 s, so items
/// expire). The piece lengths come from a generator seeded by that byte.
///
/// Checks: no panic; `execute` is called only when a request is ready and every piece is
/// consumed; the app may release every byte before `hold_from` (the pieces before it are
/// dropped, so a span that still needed them would fail and close the connection, which is
/// caught because a close is expected only after `quit` or a line too long); the keyspace's
/// byte count equals a recount after every request; and the whole output parses as
/// memcached replies, ending on a complete reply.
pub fn memcached(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let config = memcached::Config {
        item_size_max: if control & 1 != 0 {
            2048
        } else {
            memcached::ITEM_SIZE_MAX
        },
        ..memcached::Config::default()
    };
    let mut now = 1_700_000_000_000u64;
    let step_ms = u64::from(control >> 3) * 100;
    let mut ks = Keyspace::new(u64::from(control));
    if control & 2 != 0 {
        ks.maxmemory = 4096;
        ks.policy = if control & 4 != 0 {
            EvictionPolicy::AllKeysLru
        } else {
            EvictionPolicy::NoEviction
        };
    }
    let mut hash = crate::value::HashValue::default();
    hash.insert(b"f", b"v");
    ks.store(memcached::DB, b"h", Value::Hash(Box::new(hash)), false, now);
    let mut stats = memcached::Stats::new(config, 1, now);
    let Ok(mut session) = memcached::Session::new(&config) else {
        panic!("the default settings are valid");
    };
    let mut rng = SplitMix64::new(u64::from(control));
    let mut held: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut out = Vec::new();
    let mut rest = input;
    'stream: while !rest.is_empty() {
        let len = (1 + rng.below(64) as usize).min(rest.len());
        let (piece, tail) = rest.split_at(len);
        rest = tail;
        now += step_ms;
        held.push((session.offset(), piece.to_vec()));
        let mut at = 0;
        loop {
            let fed = session.feed(&piece[at..]);
            at += fed.consumed;
            if !fed.ready {
                assert_eq!(at, piece.len(), "a piece left unconsumed");
                break;
            }
            let pieces: Vec<Piece<'_>> = held.iter().map(|(o, b)| Piece::new(*o, b)).collect();
            let before = out.len();
            let after = session.execute(&mut ks, &mut stats, &pieces, now, &mut out);
            check_accounting(&ks, &String::from_utf8_lossy(&out[before..]));
            if after == memcached::After::Close {
                // Only quit (silent) and a line too long close: a span not held would too,
                // and must not happen.
                let reply = &out[before..];
                assert!(
                    reply.is_empty() || reply == b"CLIENT_ERROR line too long\r\n",
                    "closed after {:?}",
                    String::from_utf8_lossy(reply)
                );
                break 'stream;
            }
        }
        let hold = session.hold_from();
        held.retain(|(o, b)| o + b.len() as u64 > hold);
        ks.active_expire(now);
    }
    let mut parser = ReplyParser::new(ReplyLimits::default());
    let mut at = 0;
    let mut complete = true;
    while at < out.len() {
        match parser.advance(&out[at..]) {
            Ok(step) => {
                at += step.consumed;
                complete = step.complete;
            }
            Err(e) => panic!(
                "malformed reply at {at}: {e}: {:?}",
                String::from_utf8_lossy(&out[at.saturating_sub(80)..])
            ),
        }
    }
    assert!(complete, "the output ends inside a reply");
}
