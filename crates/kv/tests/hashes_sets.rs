//! The hash and set commands against the replies Redis 7.2 gives (Redis' t_hash.c and
//! t_set.c for the error words and the order of checks).

use melange_kv::command::Config;
use melange_kv::{Client, Recorder, ReplyValue as R, Server};
use std::collections::{BTreeMap, BTreeSet};

struct Session {
    server: Server,
    client: Client,
    now_ms: u64,
}

impl Session {
    fn new() -> Self {
        let now_ms = 1_700_000_000_000;
        let mut server = Server::new(Config::default(), now_ms, 11);
        let client = server.new_client();
        Self {
            server,
            client,
            now_ms,
        }
    }
    fn run(&mut self, line: &str) -> R {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        self.run_args(&args)
    }
    fn run_args(&mut self, args: &[&[u8]]) -> R {
        let mut out = Recorder::new();
        self.server
            .execute(&mut self.client, args, self.now_ms, &mut out);
        let mut replies = out.take();
        assert_eq!(replies.len(), 1, "{args:?} gave {replies:?}");
        replies.remove(0)
    }
    /// Runs a command from another client (for WATCH).
    fn run_other(&mut self, line: &str) -> R {
        let mut other = self.server.new_client();
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        let mut out = Recorder::new();
        self.server
            .execute(&mut other, &args, self.now_ms, &mut out);
        out.take().remove(0)
    }
}

fn ok() -> R {
    R::ok()
}
fn int(n: i64) -> R {
    R::Integer(n)
}
fn bulk(s: &str) -> R {
    R::bulk(s)
}
fn err(s: &str) -> R {
    R::Error(s.into())
}
fn ints(ns: &[i64]) -> R {
    R::Array(ns.iter().map(|&n| R::Integer(n)).collect())
}
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// The strings of an array or set reply, sorted (for replies in no defined order).
fn sorted(reply: R) -> Vec<String> {
    let items = match reply {
        R::Array(items) | R::Set(items) => items,
        other => panic!("not an aggregate: {other:?}"),
    };
    let mut out: Vec<String> = items
        .into_iter()
        .map(|item| match item {
            R::Bulk(b) => String::from_utf8(b).unwrap(),
            other => panic!("not a bulk: {other:?}"),
        })
        .collect();
    out.sort();
    out
}

fn strings(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A full scan with `command` (e.g. "HSCAN h {} COUNT 5"), the `{}` replaced by the cursor;
/// `between` runs after every step (churn). Returns every item returned, and the steps.
fn full_scan(
    s: &mut Session,
    command: &str,
    mut between: impl FnMut(&mut Session, usize),
) -> (Vec<Vec<u8>>, usize) {
    let mut cursor = "0".to_string();
    let mut items = Vec::new();
    let mut steps = 0;
    loop {
        let R::Array(reply) = s.run(&command.replace("{}", &cursor)) else {
            panic!("scan reply")
        };
        let [R::Bulk(next), R::Array(batch)] = &reply[..] else {
            panic!("{reply:?}")
        };
        for item in batch {
            let R::Bulk(b) = item else { panic!("{item:?}") };
            items.push(b.clone());
        }
        between(s, steps);
        steps += 1;
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            return (items, steps);
        }
        assert!(steps < 100_000, "the scan terminates");
    }
}

#[test]
fn hset_hget_and_the_field_commands() {
    let mut s = Session::new();
    assert_eq!(s.run("HSET h f1 v1 f2 v2"), int(2));
    assert_eq!(
        s.run("HSET h f1 new f3 v3"),
        int(1),
        "only new fields count"
    );
    assert_eq!(s.run("HGET h f1"), bulk("new"));
    assert_eq!(s.run("HGET h nope"), R::Null);
    assert_eq!(s.run("HGET nokey f1"), R::Null);
    assert_eq!(
        s.run("HMGET h f1 nope f3"),
        R::Array(vec![bulk("new"), R::Null, bulk("v3")])
    );
    assert_eq!(s.run("HMGET nokey a b"), R::Array(vec![R::Null, R::Null]));
    assert_eq!(s.run("HSETNX h f1 x"), int(0));
    assert_eq!(s.run("HSETNX h f4 v4"), int(1));
    assert_eq!(s.run("HSETNX fresh f v"), int(1));
    assert_eq!(s.run("HGET fresh f"), bulk("v"));
    assert_eq!(s.run("HMSET h f5 v5 f6 v6"), ok());
    assert_eq!(s.run("HLEN h"), int(6));
    assert_eq!(s.run("HLEN nokey"), int(0));
    assert_eq!(s.run("HEXISTS h f5"), int(1));
    assert_eq!(s.run("HEXISTS h nope"), int(0));
    assert_eq!(s.run("HEXISTS nokey f"), int(0));
    assert_eq!(s.run("HSTRLEN h f1"), int(3));
    assert_eq!(s.run("HSTRLEN h nope"), int(0));
    assert_eq!(s.run("HSTRLEN nokey f"), int(0));
    assert_eq!(
        s.run_args(&[b"HSET", b"h", b"", b""]),
        int(1),
        "empty field"
    );
    assert_eq!(s.run_args(&[b"HGET", b"h", b""]), bulk(""));
    // Arity: HSET needs pairs; Redis names the command it was called as.
    assert_eq!(
        s.run("HSET h f1"),
        err("ERR wrong number of arguments for 'hset' command")
    );
    assert_eq!(
        s.run("HSET h f1 v1 f2"),
        err("ERR wrong number of arguments for 'hset' command")
    );
    assert_eq!(
        s.run("HMSET h f1 v1 f2"),
        err("ERR wrong number of arguments for 'hmset' command")
    );
    assert_eq!(
        s.run("HGET h"),
        err("ERR wrong number of arguments for 'hget' command")
    );
    assert_eq!(s.run("TYPE h"), R::Simple("hash".into()));
}

#[test]
fn hdel_deletes_the_key_with_its_last_field() {
    let mut s = Session::new();
    s.run("HSET h a 1 b 2 c 3");
    assert_eq!(s.run("HDEL h a nope a"), int(1));
    assert_eq!(s.run("HDEL nokey a"), int(0));
    assert_eq!(s.run("HDEL h b c d"), int(2));
    assert_eq!(s.run("EXISTS h"), int(0));
    assert_eq!(s.run("TYPE h"), R::Simple("none".into()));
    assert_eq!(s.run("DBSIZE"), int(0));
    // A key left as an expired hash is gone too.
    s.run("HSET h a 1");
    s.run("PEXPIRE h 10");
    s.now_ms += 10;
    assert_eq!(s.run("HGET h a"), R::Null);
    assert_eq!(s.run("HSET h b 2"), int(1));
    assert_eq!(s.run("HLEN h"), int(1), "a new hash, not the expired one");
    assert_eq!(s.run("TTL h"), int(-1));
}

#[test]
fn hgetall_is_a_map_and_hkeys_hvals_are_arrays() {
    let mut s = Session::new();
    assert_eq!(s.run("HGETALL nokey"), R::Map(vec![]));
    assert_eq!(s.run("HKEYS nokey"), R::Array(vec![]));
    assert_eq!(s.run("HVALS nokey"), R::Array(vec![]));
    s.run("HSET h a 1 b 2 c 3");
    let R::Map(pairs) = s.run("HGETALL h") else {
        panic!()
    };
    let map: BTreeMap<String, String> = pairs
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (R::Bulk(k), R::Bulk(v)) => {
                (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        map,
        BTreeMap::from([
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("c".into(), "3".into())
        ])
    );
    assert_eq!(sorted(s.run("HKEYS h")), strings(&["a", "b", "c"]));
    assert_eq!(sorted(s.run("HVALS h")), strings(&["1", "2", "3"]));
    // HKEYS and HVALS walk the hash in the same order.
    let keys = s.run("HKEYS h");
    let vals = s.run("HVALS h");
    let (R::Array(keys), R::Array(vals)) = (keys, vals) else {
        panic!()
    };
    for (k, v) in keys.iter().zip(&vals) {
        assert_eq!(
            s.run(&format!(
                "HGET h {}",
                String::from_utf8_lossy(match k {
                    R::Bulk(b) => b,
                    _ => panic!(),
                })
            )),
            v.clone()
        );
    }
}

#[test]
fn hincrby_and_hincrbyfloat_follow_redis_rules() {
    let mut s = Session::new();
    assert_eq!(s.run("HINCRBY h n 5"), int(5));
    assert_eq!(s.run("HINCRBY h n -7"), int(-2));
    assert_eq!(s.run("HGET h n"), bulk("-2"));
    assert_eq!(
        s.run("HINCRBY h n x"),
        err("ERR value is not an integer or out of range")
    );
    s.run("HSET h s notanumber");
    assert_eq!(
        s.run("HINCRBY h s 1"),
        err("ERR hash value is not an integer")
    );
    s.run("HSET h big 9223372036854775807");
    assert_eq!(
        s.run("HINCRBY h big 1"),
        err("ERR increment or decrement would overflow")
    );
    assert_eq!(s.run("HGET h big"), bulk("9223372036854775807"));
    // The increment is parsed before the key is looked at.
    s.run("SET str x");
    assert_eq!(
        s.run("HINCRBY str f x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("HINCRBY str f 1"), err(WRONGTYPE));

    assert_eq!(s.run("HINCRBYFLOAT h fl 10.5"), bulk("10.5"));
    assert_eq!(s.run("HINCRBYFLOAT h fl 0.1"), bulk("10.6"));
    assert_eq!(s.run("HINCRBYFLOAT h fl -5"), bulk("5.6"));
    assert_eq!(s.run("HINCRBYFLOAT h fl 4.4"), bulk("10"));
    assert_eq!(
        s.run("HINCRBYFLOAT h n 2.5"),
        bulk("0.5"),
        "an integer field"
    );
    assert_eq!(s.run("HINCRBYFLOAT h fl 5.0e3"), bulk("5010"));
    assert_eq!(s.run("HGET h fl"), bulk("5010"));
    assert_eq!(
        s.run("HINCRBYFLOAT h fl x"),
        err("ERR value is not a valid float")
    );
    assert_eq!(
        s.run("HINCRBYFLOAT h fl nan"),
        err("ERR value is not a valid float")
    );
    assert_eq!(
        s.run("HINCRBYFLOAT h fl inf"),
        err("ERR value is NaN or Infinity")
    );
    assert_eq!(
        s.run("HINCRBYFLOAT h s 1"),
        err("ERR hash value is not a float")
    );
    s.run("HSET h huge 1.7e308");
    assert_eq!(
        s.run("HINCRBYFLOAT h huge 1.7e308"),
        err("ERR increment would produce NaN or Infinity")
    );
    assert_eq!(s.run("HINCRBYFLOAT str f 1"), err(WRONGTYPE));
}

#[test]
fn every_hash_and_set_command_refuses_other_types() {
    let mut s = Session::new();
    s.run("SET str x");
    s.run("HSET h f v");
    s.run("SADD set m");
    for cmd in [
        "HSET str f v",
        "HSETNX str f v",
        "HMSET str f v",
        "HGET str f",
        "HMGET str f",
        "HDEL str f",
        "HEXISTS str f",
        "HLEN str",
        "HGETALL str",
        "HKEYS str",
        "HVALS str",
        "HINCRBY str f 1",
        "HINCRBYFLOAT str f 1",
        "HSTRLEN str f",
        "HSCAN str 0",
        "HRANDFIELD str",
        "HRANDFIELD str 2 WITHVALUES",
        "HGET set f",
        "SADD h m",
        "SREM h m",
        "SCARD h",
        "SMEMBERS h",
        "SISMEMBER h m",
        "SMISMEMBER h m",
        "SPOP h",
        "SPOP h 2",
        "SRANDMEMBER h",
        "SRANDMEMBER h -2",
        "SINTER set h",
        "SINTER nokey h",
        "SUNION set h",
        "SDIFF set h",
        "SDIFF nokey h",
        "SINTERSTORE dst set h",
        "SUNIONSTORE dst h",
        "SDIFFSTORE dst set h",
        "SINTERCARD 2 nokey h",
        "SMOVE h set m",
        "SMOVE set h m",
        "SSCAN h 0",
        "GET h",
        "GET set",
        "INCR set",
    ] {
        assert_eq!(s.run(cmd), err(WRONGTYPE), "{cmd}");
    }
    // Nothing changed, and no destination was written.
    assert_eq!(s.run("GET str"), bulk("x"));
    assert_eq!(s.run("HGETALL h"), R::Map(vec![(bulk("f"), bulk("v"))]));
    assert_eq!(s.run("SMEMBERS set"), R::Set(vec![bulk("m")]));
    assert_eq!(s.run("EXISTS dst"), int(0));
    // A missing source answers SMOVE before the destination's type is checked.
    assert_eq!(s.run("SMOVE nokey h m"), int(0));
}

#[test]
fn hscan_returns_small_hashes_whole_and_big_ones_by_cursor() {
    let mut s = Session::new();
    assert_eq!(
        s.run("HSCAN nokey 0"),
        R::Array(vec![bulk("0"), R::Array(vec![])])
    );
    // Redis answers a missing key before reading the options.
    assert_eq!(
        s.run("HSCAN nokey 0 COUNT 0"),
        R::Array(vec![bulk("0"), R::Array(vec![])])
    );
    assert_eq!(s.run("HSCAN h x"), err("ERR invalid cursor"));
    assert_eq!(s.run("HSCAN h -1"), err("ERR invalid cursor"));
    s.run("HSET h a 1 b 2 ab 3");
    // A listpack-sized hash comes back whole, with cursor 0, whatever COUNT says.
    let R::Array(reply) = s.run("HSCAN h 0 COUNT 1") else {
        panic!()
    };
    assert_eq!(reply[0], bulk("0"));
    let R::Array(flat) = &reply[1] else { panic!() };
    assert_eq!(flat.len(), 6, "fields with values");
    assert_eq!(
        s.run("HSCAN h 0 MATCH a*"),
        R::Array(vec![
            bulk("0"),
            R::Array(vec![bulk("a"), bulk("1"), bulk("ab"), bulk("3")])
        ])
    );
    assert_eq!(
        s.run("HSCAN h 0 MATCH b NOVALUES"),
        R::Array(vec![bulk("0"), R::Array(vec![bulk("b")])])
    );
    assert_eq!(s.run("HSCAN h 0 COUNT 0"), err("ERR syntax error"));
    assert_eq!(
        s.run("HSCAN h 0 COUNT x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("HSCAN h 0 MATCH"), err("ERR syntax error"));
    assert_eq!(s.run("HSCAN h 0 TYPE hash"), err("ERR syntax error"));
    assert_eq!(s.run("HSCAN h 0 FOO"), err("ERR syntax error"));

    // A big hash: every field present throughout is returned, despite churn.
    for i in 0..300 {
        s.run(&format!("HSET big f{i} v{i}"));
    }
    assert_eq!(s.run("OBJECT ENCODING big"), bulk("hashtable"));
    let (items, steps) = full_scan(&mut s, "HSCAN big {} COUNT 10", |s, step| {
        // Remove fields 200.. as we go, add and remove others.
        if step < 100 {
            s.run(&format!("HDEL big f{}", 200 + step));
        }
        s.run(&format!("HSET big new{step} x"));
        if step % 2 == 0 {
            s.run(&format!("HDEL big new{step}"));
        }
    });
    assert!(steps > 10, "a big hash takes several calls ({steps})");
    let fields: BTreeSet<Vec<u8>> = items.chunks(2).map(|pair| pair[0].clone()).collect();
    for pair in items.chunks(2) {
        if pair[0].starts_with(b"f") {
            assert_eq!(
                pair[1][1..],
                pair[0][1..],
                "values travel with their fields"
            );
        }
    }
    for i in 0..200 {
        assert!(fields.contains(format!("f{i}").as_bytes()), "f{i}");
    }
    // NOVALUES on a big hash returns the fields only, each once when nothing changes.
    let (mut items, _) = full_scan(&mut s, "HSCAN big {} COUNT 50 NOVALUES", |_, _| {});
    items.sort();
    let keys: Vec<Vec<u8>> = sorted(s.run("HKEYS big"))
        .into_iter()
        .map(String::into_bytes)
        .collect();
    assert_eq!(items, keys);
}

#[test]
fn hrandfield_counts_repeats_and_shapes() {
    let mut s = Session::new();
    assert_eq!(s.run("HRANDFIELD nokey"), R::Null);
    assert_eq!(s.run("HRANDFIELD nokey 3"), R::Array(vec![]));
    assert_eq!(s.run("HRANDFIELD nokey -3 WITHVALUES"), R::Array(vec![]));
    s.run("HSET h a 1 b 2 c 3");
    let R::Bulk(one) = s.run("HRANDFIELD h") else {
        panic!()
    };
    assert!([&b"a"[..], b"b", b"c"].contains(&&one[..]));
    assert_eq!(s.run("HRANDFIELD h 0"), R::Array(vec![]));
    // Positive: distinct, capped at the size.
    for _ in 0..20 {
        let got = sorted(s.run("HRANDFIELD h 2"));
        assert_eq!(got.len(), 2);
        assert_ne!(got[0], got[1]);
    }
    assert_eq!(sorted(s.run("HRANDFIELD h 10")), strings(&["a", "b", "c"]));
    // Negative: exactly that many, repeats allowed (and, over 30 draws of 3, certain).
    let got = sorted(s.run("HRANDFIELD h -30"));
    assert_eq!(got.len(), 30);
    let distinct: BTreeSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), 3, "every field turns up");
    // WITHVALUES: a flat array in RESP2 ...
    let R::Array(flat) = s.run("HRANDFIELD h -4 WITHVALUES") else {
        panic!()
    };
    assert_eq!(flat.len(), 8);
    for pair in flat.chunks(2) {
        let (R::Bulk(f), R::Bulk(v)) = (&pair[0], &pair[1]) else {
            panic!()
        };
        let want = match &f[..] {
            b"a" => "1",
            b"b" => "2",
            _ => "3",
        };
        assert_eq!(v, want.as_bytes());
    }
    let R::Array(flat) = s.run("HRANDFIELD h 5 WITHVALUES") else {
        panic!()
    };
    assert_eq!(flat.len(), 6);
    // ... and pairs in RESP3.
    assert!(matches!(s.run("HELLO 3"), R::Map(_)));
    let R::Array(pairs) = s.run("HRANDFIELD h 2 WITHVALUES") else {
        panic!()
    };
    assert_eq!(pairs.len(), 2);
    for pair in &pairs {
        let R::Array(pair) = pair else {
            panic!("{pair:?}")
        };
        assert_eq!(pair.len(), 2);
    }
    let R::Array(pairs) = s.run("HRANDFIELD h -5 WITHVALUES") else {
        panic!()
    };
    assert_eq!(pairs.len(), 5);
    assert!(pairs
        .iter()
        .all(|p| matches!(p, R::Array(v) if v.len() == 2)));
    let R::Array(fields) = s.run("HRANDFIELD h -2") else {
        panic!()
    };
    assert!(
        fields.iter().all(|f| matches!(f, R::Bulk(_))),
        "no pairs without values"
    );
    // Errors, in Redis' order: the count, then the syntax, then the range.
    assert_eq!(
        s.run("HRANDFIELD h x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        s.run("HRANDFIELD h x WITHVALUES"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("HRANDFIELD h 1 WITHSCORES"), err("ERR syntax error"));
    assert_eq!(
        s.run("HRANDFIELD h 1 WITHVALUES x"),
        err("ERR syntax error")
    );
    assert_eq!(
        s.run("HRANDFIELD h -9223372036854775808"),
        err("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807")
    );
    assert_eq!(
        s.run("HRANDFIELD h -4611686018427387904 WITHVALUES"),
        err("ERR value is out of range")
    );
    assert_eq!(
        sorted(s.run("HRANDFIELD h 9223372036854775807")),
        strings(&["a", "b", "c"])
    );
}

#[test]
fn set_membership_and_cardinality() {
    let mut s = Session::new();
    assert_eq!(s.run("SADD s a b c a"), int(3));
    assert_eq!(s.run("SADD s c d"), int(1));
    assert_eq!(s.run("SCARD s"), int(4));
    assert_eq!(s.run("SCARD nokey"), int(0));
    assert_eq!(s.run("SISMEMBER s a"), int(1));
    assert_eq!(s.run("SISMEMBER s z"), int(0));
    assert_eq!(s.run("SISMEMBER nokey a"), int(0));
    assert_eq!(s.run("SMISMEMBER s a z d"), ints(&[1, 0, 1]));
    assert_eq!(s.run("SMISMEMBER nokey a b"), ints(&[0, 0]));
    let R::Set(_) = s.run("SMEMBERS s") else {
        panic!("SMEMBERS is a set reply")
    };
    assert_eq!(sorted(s.run("SMEMBERS s")), strings(&["a", "b", "c", "d"]));
    assert_eq!(s.run("SMEMBERS nokey"), R::Set(vec![]));
    assert_eq!(s.run("SREM s a z a"), int(1));
    assert_eq!(s.run("SREM nokey a"), int(0));
    assert_eq!(s.run("SREM s b c d"), int(3));
    assert_eq!(s.run("EXISTS s"), int(0), "the last member takes the key");
    assert_eq!(
        s.run("SADD s"),
        err("ERR wrong number of arguments for 'sadd' command")
    );
    assert_eq!(s.run("TYPE nokey"), R::Simple("none".into()));
    s.run("SADD s x");
    assert_eq!(s.run("TYPE s"), R::Simple("set".into()));
}

#[test]
fn encodings_follow_redis_thresholds() {
    let mut s = Session::new();
    s.run("SADD ints 1 2 3");
    assert_eq!(s.run("OBJECT ENCODING ints"), bulk("intset"));
    s.run("SADD ints x");
    assert_eq!(s.run("OBJECT ENCODING ints"), bulk("listpack"));
    for i in 0..200 {
        s.run(&format!("SADD many m{i}"));
    }
    assert_eq!(s.run("OBJECT ENCODING many"), bulk("hashtable"));
    for i in 0..600 {
        s.run(&format!("SADD bigints {i}"));
    }
    assert_eq!(s.run("OBJECT ENCODING bigints"), bulk("hashtable"));
    s.run("HSET h f v");
    assert_eq!(s.run("OBJECT ENCODING h"), bulk("listpack"));
    s.run(&format!("HSET h f {}", "x".repeat(65)));
    assert_eq!(s.run("OBJECT ENCODING h"), bulk("hashtable"));
}

#[test]
fn spop_with_and_without_count() {
    let mut s = Session::new();
    assert_eq!(s.run("SPOP nokey"), R::Null);
    assert_eq!(s.run("SPOP nokey 3"), R::Set(vec![]));
    s.run("SADD s a b c d e");
    let R::Bulk(one) = s.run("SPOP s") else {
        panic!()
    };
    assert_eq!(s.run_args(&[b"SISMEMBER", b"s", &one]), int(0));
    assert_eq!(s.run("SCARD s"), int(4));
    assert_eq!(s.run("SPOP s 0"), R::Set(vec![]));
    let R::Set(two) = s.run("SPOP s 2") else {
        panic!("a set reply")
    };
    assert_eq!(two.len(), 2);
    assert_ne!(two[0], two[1]);
    assert_eq!(s.run("SCARD s"), int(2));
    let R::Set(rest) = s.run("SPOP s 10") else {
        panic!()
    };
    assert_eq!(rest.len(), 2, "a count past the size takes everything");
    assert_eq!(s.run("EXISTS s"), int(0));
    s.run("SADD s only");
    assert_eq!(s.run("SPOP s"), bulk("only"));
    assert_eq!(s.run("EXISTS s"), int(0), "the last pop takes the key");
    // Errors: a bad count (negative or not a number) is worded the same, before the key.
    s.run("SET str x");
    assert_eq!(
        s.run("SPOP str -1"),
        err("ERR value is out of range, must be positive")
    );
    assert_eq!(
        s.run("SPOP nokey x"),
        err("ERR value is out of range, must be positive")
    );
    assert_eq!(s.run("SPOP s 1 2"), err("ERR syntax error"));
    // Popping one by one from a big set drains it with no member twice.
    for i in 0..1000 {
        s.run(&format!("SADD big m{i}"));
    }
    let mut seen = BTreeSet::new();
    loop {
        match s.run("SPOP big 7") {
            R::Set(batch) if batch.is_empty() => break,
            R::Set(batch) => {
                for m in batch {
                    assert!(seen.insert(format!("{m:?}")), "{m:?} popped twice");
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen.len(), 1000);
}

#[test]
fn srandmember_counts_and_repeats() {
    let mut s = Session::new();
    assert_eq!(s.run("SRANDMEMBER nokey"), R::Null);
    assert_eq!(s.run("SRANDMEMBER nokey 5"), R::Array(vec![]));
    assert_eq!(s.run("SRANDMEMBER nokey -5"), R::Array(vec![]));
    s.run("SADD s a b c");
    assert!(matches!(s.run("SRANDMEMBER s"), R::Bulk(_)));
    assert_eq!(s.run("SRANDMEMBER s 0"), R::Array(vec![]));
    for _ in 0..20 {
        let got = sorted(s.run("SRANDMEMBER s 2"));
        assert_eq!(got.len(), 2);
        assert_ne!(got[0], got[1], "a positive count gives distinct members");
    }
    assert_eq!(sorted(s.run("SRANDMEMBER s 3")), strings(&["a", "b", "c"]));
    assert_eq!(
        sorted(s.run("SRANDMEMBER s 100")),
        strings(&["a", "b", "c"])
    );
    let got = sorted(s.run("SRANDMEMBER s -50"));
    assert_eq!(got.len(), 50, "a negative count gives exactly that many");
    assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 3);
    assert_eq!(s.run("SCARD s"), int(3), "nothing is removed");
    // A one-member set repeated.
    s.run("SADD one x");
    assert_eq!(
        s.run("SRANDMEMBER one -3"),
        R::Array(vec![bulk("x"), bulk("x"), bulk("x")])
    );
    assert_eq!(
        s.run("SRANDMEMBER s x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        s.run("SRANDMEMBER s -9223372036854775808"),
        err("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807")
    );
    assert_eq!(s.run("SRANDMEMBER s 1 2"), err("ERR syntax error"));
    // Repeats are bounded here (Redis only by the client's output buffer), with its words.
    assert_eq!(
        s.run("SRANDMEMBER s -1048577"),
        err("ERR value is out of range")
    );
    assert_eq!(
        s.run("HRANDFIELD nokey -9223372036854775807"),
        err("ERR value is out of range")
    );
    assert_eq!(
        sorted(s.run("SRANDMEMBER s 9223372036854775807")),
        strings(&["a", "b", "c"]),
        "a positive count is capped by the size, not refused"
    );
    // Uniform enough: over 3000 draws from 3 members each comes up about 1000 times.
    let got = sorted(s.run("SRANDMEMBER s -3000"));
    for m in ["a", "b", "c"] {
        let n = got.iter().filter(|g| *g == m).count();
        assert!((800..1200).contains(&n), "{m}: {n}");
    }
}

#[test]
fn intersection_union_and_difference() {
    let mut s = Session::new();
    s.run("SADD a 1 2 3 4");
    s.run("SADD b 3 4 5");
    s.run("SADD c 4 5 6");
    assert_eq!(sorted(s.run("SINTER a b")), strings(&["3", "4"]));
    assert_eq!(sorted(s.run("SINTER a b c")), strings(&["4"]));
    assert_eq!(sorted(s.run("SINTER a a")), strings(&["1", "2", "3", "4"]));
    assert_eq!(s.run("SINTER a nokey"), R::Set(vec![]));
    assert_eq!(
        sorted(s.run("SUNION a b c nokey")),
        strings(&["1", "2", "3", "4", "5", "6"])
    );
    assert_eq!(s.run("SUNION nokey"), R::Set(vec![]));
    assert_eq!(sorted(s.run("SDIFF a b")), strings(&["1", "2"]));
    assert_eq!(sorted(s.run("SDIFF a b c")), strings(&["1", "2"]));
    assert_eq!(
        sorted(s.run("SDIFF a nokey")),
        strings(&["1", "2", "3", "4"])
    );
    assert_eq!(s.run("SDIFF nokey a"), R::Set(vec![]));
    assert_eq!(s.run("SDIFF a b a"), R::Set(vec![]), "a key minus itself");
    assert!(matches!(s.run("SINTER a b"), R::Set(_)));

    assert_eq!(s.run("SINTERCARD 2 a b"), int(2));
    assert_eq!(s.run("SINTERCARD 3 a b c"), int(1));
    assert_eq!(s.run("SINTERCARD 2 a b LIMIT 1"), int(1));
    assert_eq!(s.run("SINTERCARD 2 a b LIMIT 0"), int(2), "0 is no limit");
    assert_eq!(s.run("SINTERCARD 1 a limit 10"), int(4));
    assert_eq!(s.run("SINTERCARD 2 a nokey"), int(0));
    for bad in ["0", "-1", "x"] {
        assert_eq!(
            s.run(&format!("SINTERCARD {bad} a")),
            err("ERR numkeys should be greater than 0")
        );
    }
    assert_eq!(
        s.run("SINTERCARD 3 a b"),
        err("ERR Number of keys can't be greater than number of args")
    );
    for bad in ["-1", "x"] {
        assert_eq!(
            s.run(&format!("SINTERCARD 1 a LIMIT {bad}")),
            err("ERR LIMIT can't be negative")
        );
    }
    assert_eq!(s.run("SINTERCARD 1 a LIMIT"), err("ERR syntax error"));
    assert_eq!(s.run("SINTERCARD 1 a b"), err("ERR syntax error"));
}

#[test]
fn store_variants_overwrite_any_type_and_delete_on_empty() {
    let mut s = Session::new();
    s.run("SADD a 1 2 3");
    s.run("SADD b 2 3 4");
    // A string destination with a TTL: overwritten, the TTL gone.
    s.run("SET dst x EX 100");
    assert_eq!(s.run("SINTERSTORE dst a b"), int(2));
    assert_eq!(s.run("TYPE dst"), R::Simple("set".into()));
    assert_eq!(s.run("TTL dst"), int(-1));
    assert_eq!(sorted(s.run("SMEMBERS dst")), strings(&["2", "3"]));
    s.run("HSET hdst f v");
    assert_eq!(s.run("SUNIONSTORE hdst a b"), int(4));
    assert_eq!(
        sorted(s.run("SMEMBERS hdst")),
        strings(&["1", "2", "3", "4"])
    );
    assert_eq!(s.run("SDIFFSTORE dst a b"), int(1));
    assert_eq!(s.run("SMEMBERS dst"), R::Set(vec![bulk("1")]));
    // The destination may be a source.
    assert_eq!(s.run("SUNIONSTORE a a b"), int(4));
    assert_eq!(s.run("SCARD a"), int(4));
    // An empty result deletes the destination, whatever it held.
    s.run("SET str x");
    assert_eq!(s.run("SINTERSTORE str a nokey"), int(0));
    assert_eq!(s.run("EXISTS str"), int(0));
    assert_eq!(s.run("SDIFFSTORE dst a a"), int(0));
    assert_eq!(s.run("EXISTS dst"), int(0));
    assert_eq!(s.run("SUNIONSTORE dst nokey"), int(0));
    assert_eq!(s.run("EXISTS dst"), int(0));
    // A wrong-typed source refuses the whole command; the destination stays.
    s.run("SET keep x");
    s.run("SET notset y");
    assert_eq!(s.run("SUNIONSTORE keep a notset"), err(WRONGTYPE));
    assert_eq!(s.run("GET keep"), bulk("x"));
}

#[test]
fn smove_between_sets() {
    let mut s = Session::new();
    s.run("SADD src a b");
    s.run("SADD dst c");
    assert_eq!(s.run("SMOVE src dst a"), int(1));
    assert_eq!(sorted(s.run("SMEMBERS dst")), strings(&["a", "c"]));
    assert_eq!(s.run("SMOVE src dst nope"), int(0));
    assert_eq!(s.run("SMOVE nokey dst a"), int(0));
    assert_eq!(
        s.run("SMOVE src src b"),
        int(1),
        "same key: whether it is a member"
    );
    assert_eq!(s.run("SMOVE src src z"), int(0));
    assert_eq!(s.run("SMOVE src fresh b"), int(1));
    assert_eq!(
        s.run("EXISTS src"),
        int(0),
        "the source goes with its last member"
    );
    assert_eq!(s.run("SMEMBERS fresh"), R::Set(vec![bulk("b")]));
    // Already in the destination: removed from the source, still 1.
    s.run("SADD src c");
    assert_eq!(s.run("SMOVE src dst c"), int(1));
    assert_eq!(s.run("EXISTS src"), int(0));
    assert_eq!(s.run("SCARD dst"), int(2));
    s.run("SET str x");
    s.run("SADD src q");
    assert_eq!(s.run("SMOVE src str q"), err(WRONGTYPE));
    assert_eq!(s.run("SISMEMBER src q"), int(1), "nothing moved");
    assert_eq!(s.run("COMMAND GETKEYS SMOVE a b m"), R::bulks(["a", "b"]));
}

#[test]
fn sscan_is_complete_under_churn() {
    let mut s = Session::new();
    assert_eq!(
        s.run("SSCAN nokey 0 NOVALUES"),
        R::Array(vec![bulk("0"), R::Array(vec![])])
    );
    s.run("SADD small 1 2 3");
    let R::Array(reply) = s.run("SSCAN small 0 COUNT 1") else {
        panic!()
    };
    assert_eq!(reply[0], bulk("0"));
    assert_eq!(sorted(reply[1].clone()), strings(&["1", "2", "3"]));
    assert_eq!(
        s.run("SSCAN small 0 NOVALUES"),
        err("ERR NOVALUES option can only be used in HSCAN")
    );
    assert_eq!(s.run("SSCAN small 0 COUNT 0"), err("ERR syntax error"));
    assert_eq!(s.run("SSCAN small nope"), err("ERR invalid cursor"));
    assert_eq!(
        s.run("SSCAN small 0 MATCH 2"),
        R::Array(vec![bulk("0"), R::Array(vec![bulk("2")])])
    );

    for i in 0..1000 {
        s.run(&format!("SADD big m{i}"));
    }
    let (items, steps) = full_scan(&mut s, "SSCAN big {} COUNT 20", |s, step| {
        // Members 500.. go away during the scan; others come and go.
        if step < 500 {
            s.run(&format!("SREM big m{}", 500 + step));
        }
        s.run(&format!("SADD big tmp{step}"));
        s.run(&format!("SREM big tmp{step}"));
        s.run(&format!("SADD big new{step}"));
    });
    assert!(steps > 20, "{steps}");
    let seen: BTreeSet<Vec<u8>> = items.into_iter().collect();
    for i in 0..500 {
        assert!(seen.contains(format!("m{i}").as_bytes()), "m{i}");
    }
    let (matched, _) = full_scan(&mut s, "SSCAN big {} MATCH m1?", |_, _| {});
    let matched: BTreeSet<Vec<u8>> = matched.into_iter().collect();
    assert_eq!(matched.len(), 10, "m10..m19");
}

#[test]
fn writes_to_hashes_and_sets_invalidate_watch() {
    let mut s = Session::new();
    s.run("HSET h f v");
    s.run("SADD s m");
    for (watched, write) in [
        ("h", "HSET h f v2"),
        ("h", "HDEL h f"),
        ("s", "SADD s n"),
        ("s", "SPOP s"),
        ("dst", "SUNIONSTORE dst s"),
    ] {
        s.run("HSET h f v");
        s.run("SADD s m");
        assert_eq!(s.run(&format!("WATCH {watched}")), ok());
        s.run_other(write);
        s.run("MULTI");
        s.run("PING");
        assert_eq!(s.run("EXEC"), R::NullArray, "{write}");
    }
    // A command that changes nothing still lets the transaction through only if the key's
    // version did not move: HGET is a read.
    s.run("WATCH h");
    s.run_other("HGET h f");
    s.run("MULTI");
    s.run("PING");
    assert_eq!(s.run("EXEC"), R::Array(vec![R::Simple("PONG".into())]));
}

#[test]
fn reads_count_keyspace_hits_and_writes_do_not() {
    let mut s = Session::new();
    let stats = |s: &Session| {
        let st = s.server.keyspace.stats;
        (st.hits, st.misses)
    };
    s.run("HSET h f v");
    s.run("SADD s m");
    s.run("HSET nokey2 f v");
    s.run("HDEL nokey3 f");
    assert_eq!(stats(&s), (0, 0), "writes are not counted");
    s.run("HGET h f");
    s.run("SISMEMBER s m");
    s.run("HGET nokey f");
    assert_eq!(stats(&s), (2, 1));
}
