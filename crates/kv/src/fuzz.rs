//! The fuzz body for the keyspace: any sequence of commands, with names from the table (and
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
use crate::reply::Recorder;
use crate::value::Value;
use crate::Server;

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
                        crate::keyspace::ENTRY_OVERHEAD + e.key().len() + e.value().heap_bytes()
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
