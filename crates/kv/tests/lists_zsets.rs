//! The list and sorted-set commands against the replies Redis 7.2 gives (from its
//! `t_list.c`, `t_zset.c` and its test suite's expectations): exact replies and error words,
//! WRONGTYPE, deletion of emptied keys, negative indexes, exclusive and lex ranges, RESP2 and
//! RESP3 shapes.

use melange_kv::command::Config;
use melange_kv::{Client, Recorder, ReplyValue as R, Server};

struct Session {
    server: Server,
    client: Client,
    now_ms: u64,
}

impl Session {
    fn new() -> Self {
        let now_ms = 1_700_000_000_000;
        let mut server = Server::new(Config::default(), now_ms, 7);
        let client = server.new_client();
        Self {
            server,
            client,
            now_ms,
        }
    }
    fn resp3() -> Self {
        let mut s = Self::new();
        s.client.resp = 3;
        s
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
        let reply = replies.remove(0);
        if self.client.resp == 2 {
            resp2(reply)
        } else {
            reply
        }
    }
    /// The watch version of `key` (0 when absent): changes exactly when Redis would
    /// invalidate a WATCH.
    fn version(&mut self, key: &str) -> u64 {
        self.server
            .keyspace
            .watch_version(0, key.as_bytes(), self.now_ms)
    }
}

/// A reply as a RESP2 client reads it: doubles become the bulk strings the encoder prints.
fn resp2(reply: R) -> R {
    match reply {
        R::Double(d) => {
            let mut text = String::new();
            melange_kv::number::format_f64(d, &mut text);
            R::bulk(text)
        }
        R::Array(items) => R::Array(items.into_iter().map(resp2).collect()),
        other => other,
    }
}

/// The text of a bulk reply.
fn text(reply: &R) -> String {
    match reply {
        R::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("not a bulk: {other:?}"),
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
fn bulks(items: &[&str]) -> R {
    R::bulks(items.iter())
}
fn err(s: &str) -> R {
    R::Error(s.into())
}
fn ints(items: &[i64]) -> R {
    R::Array(items.iter().map(|&n| R::Integer(n)).collect())
}
fn empty() -> R {
    R::Array(vec![])
}
fn pair(member: &str, score: f64) -> R {
    R::Array(vec![bulk(member), R::Double(score)])
}
const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

// ---------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------

#[test]
fn pushes_and_ranges() {
    let mut s = Session::new();
    assert_eq!(s.run("RPUSH l a b c"), int(3));
    assert_eq!(s.run("LPUSH l x y"), int(5));
    assert_eq!(s.run("LRANGE l 0 -1"), bulks(&["y", "x", "a", "b", "c"]));
    assert_eq!(s.run("LRANGE l -2 -1"), bulks(&["b", "c"]));
    assert_eq!(s.run("LRANGE l -100 1"), bulks(&["y", "x"]));
    assert_eq!(s.run("LRANGE l 3 100"), bulks(&["b", "c"]));
    assert_eq!(s.run("LRANGE l 4 2"), empty());
    assert_eq!(s.run("LRANGE l 5 10"), empty());
    assert_eq!(s.run("LRANGE l -1 -3"), empty());
    assert_eq!(
        s.run("LRANGE l 0 9223372036854775807"),
        bulks(&["y", "x", "a", "b", "c"])
    );
    assert_eq!(
        s.run("LRANGE l -9223372036854775808 9223372036854775807"),
        bulks(&["y", "x", "a", "b", "c"])
    );
    assert_eq!(
        s.run("LRANGE l 9223372036854775807 -9223372036854775808"),
        empty()
    );
    assert_eq!(s.run("LRANGE nokey 0 -1"), empty());
    assert_eq!(
        s.run("LRANGE l a 1"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("LLEN l"), int(5));
    assert_eq!(s.run("LLEN nokey"), int(0));
    assert_eq!(s.run("LPUSHX nokey a"), int(0));
    assert_eq!(s.run("RPUSHX nokey a"), int(0));
    assert_eq!(s.run("EXISTS nokey"), int(0));
    assert_eq!(s.run("RPUSHX l z"), int(6));
    assert_eq!(s.run("LPUSHX l w"), int(7));
    assert_eq!(s.run("LINDEX l 0"), bulk("w"));
    assert_eq!(s.run("LINDEX l -1"), bulk("z"));
    assert_eq!(s.run("LINDEX l 7"), R::Null);
    assert_eq!(s.run("LINDEX l -8"), R::Null);
    assert_eq!(
        s.run("LINDEX nokey x"),
        R::Null,
        "the key is looked up first"
    );
    assert_eq!(
        s.run("LINDEX l x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("TYPE l"), R::Simple("list".into()));
}

#[test]
fn pops_with_and_without_count() {
    let mut s = Session::new();
    s.run("RPUSH l a b c d e");
    assert_eq!(s.run("LPOP l"), bulk("a"));
    assert_eq!(s.run("RPOP l"), bulk("e"));
    assert_eq!(s.run("LPOP l 2"), bulks(&["b", "c"]));
    assert_eq!(s.run("LPOP l 0"), empty());
    assert_eq!(s.run("RPOP l 10"), bulks(&["d"]));
    assert_eq!(s.run("EXISTS l"), int(0), "an emptied list is deleted");
    assert_eq!(s.run("LPOP l"), R::Null);
    assert_eq!(s.run("LPOP l 2"), R::NullArray);
    assert_eq!(s.run("LPOP l 0"), R::NullArray);
    assert_eq!(
        s.run("LPOP l -1"),
        err("ERR value is out of range, must be positive")
    );
    assert_eq!(
        s.run("LPOP l x"),
        err("ERR value is out of range, must be positive")
    );
    assert_eq!(
        s.run("LPOP l 1 2"),
        err("ERR wrong number of arguments for 'lpop' command")
    );
    s.run("RPUSH l a b c");
    assert_eq!(
        s.run("RPOP l 2"),
        bulks(&["c", "b"]),
        "from the tail inwards"
    );
    assert_eq!(s.run("RPOP l 9223372036854775807"), bulks(&["a"]));
}

#[test]
fn lset_linsert_lrem_ltrim() {
    let mut s = Session::new();
    assert_eq!(s.run("LSET l 0 x"), err("ERR no such key"));
    s.run("RPUSH l a b c");
    assert_eq!(s.run("LSET l 1 B"), ok());
    assert_eq!(s.run("LSET l -1 C"), ok());
    assert_eq!(s.run("LSET l 3 x"), err("ERR index out of range"));
    assert_eq!(s.run("LSET l -4 x"), err("ERR index out of range"));
    assert_eq!(
        s.run("LSET l x x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("LRANGE l 0 -1"), bulks(&["a", "B", "C"]));

    assert_eq!(s.run("LINSERT l BEFORE B x"), int(4));
    assert_eq!(s.run("LINSERT l after C y"), int(5));
    assert_eq!(s.run("LINSERT l AFTER nothere z"), int(-1));
    assert_eq!(s.run("LINSERT nokey AFTER a z"), int(0));
    assert_eq!(s.run("LINSERT l SIDEWAYS a z"), err("ERR syntax error"));
    assert_eq!(s.run("LRANGE l 0 -1"), bulks(&["a", "x", "B", "C", "y"]));

    s.run("DEL l");
    s.run("RPUSH l a b a c a b a");
    assert_eq!(s.run("LREM l 2 a"), int(2));
    assert_eq!(s.run("LRANGE l 0 -1"), bulks(&["b", "c", "a", "b", "a"]));
    assert_eq!(s.run("LREM l -1 b"), int(1));
    assert_eq!(s.run("LRANGE l 0 -1"), bulks(&["b", "c", "a", "a"]));
    assert_eq!(s.run("LREM l 0 a"), int(2));
    assert_eq!(s.run("LREM l 0 zz"), int(0));
    assert_eq!(s.run("LREM nokey 0 a"), int(0));
    assert_eq!(s.run("LREM l -9223372036854775808 c"), int(1));
    assert_eq!(s.run("LREM l 1 b"), int(1));
    assert_eq!(s.run("EXISTS l"), int(0));

    s.run("RPUSH l a b c d e");
    assert_eq!(s.run("LTRIM l 1 -2"), ok());
    assert_eq!(s.run("LRANGE l 0 -1"), bulks(&["b", "c", "d"]));
    assert_eq!(s.run("LTRIM l -100 100"), ok());
    assert_eq!(s.run("LLEN l"), int(3));
    assert_eq!(s.run("LTRIM l 2 1"), ok());
    assert_eq!(s.run("EXISTS l"), int(0), "an empty trim deletes the key");
    assert_eq!(s.run("LTRIM nokey 0 1"), ok());
}

#[test]
fn lpos_with_rank_count_and_maxlen() {
    let mut s = Session::new();
    s.run("RPUSH l a b c 1 2 3 c c");
    assert_eq!(s.run("LPOS l c"), int(2));
    assert_eq!(s.run("LPOS l c RANK 2"), int(6));
    assert_eq!(s.run("LPOS l c RANK 4"), R::Null);
    assert_eq!(s.run("LPOS l c RANK -1"), int(7));
    assert_eq!(s.run("LPOS l c RANK -2"), int(6));
    assert_eq!(s.run("LPOS l c COUNT 0"), ints(&[2, 6, 7]));
    assert_eq!(s.run("LPOS l c COUNT 2"), ints(&[2, 6]));
    assert_eq!(s.run("LPOS l c COUNT 2 RANK -1"), ints(&[7, 6]));
    assert_eq!(s.run("LPOS l c RANK 2 COUNT 0"), ints(&[6, 7]));
    assert_eq!(s.run("LPOS l x COUNT 2"), empty());
    assert_eq!(s.run("LPOS l c MAXLEN 2"), R::Null);
    assert_eq!(s.run("LPOS l c MAXLEN 3"), int(2));
    assert_eq!(s.run("LPOS l c COUNT 0 MAXLEN 7"), ints(&[2, 6]));
    assert_eq!(s.run("LPOS l c RANK -1 MAXLEN 1 COUNT 0"), ints(&[7]));
    assert_eq!(s.run("LPOS nokey c"), R::Null);
    assert_eq!(s.run("LPOS nokey c COUNT 1"), empty());
    assert_eq!(
        s.run("LPOS l c RANK 0"),
        err("ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list")
    );
    assert_eq!(
        s.run("LPOS l c RANK -9223372036854775808"),
        err("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807")
    );
    assert_eq!(
        s.run("LPOS l c COUNT -1"),
        err("ERR COUNT can't be negative")
    );
    assert_eq!(
        s.run("LPOS l c MAXLEN -1"),
        err("ERR MAXLEN can't be negative")
    );
    assert_eq!(
        s.run("LPOS l c MAXLEN x"),
        err("ERR MAXLEN can't be negative")
    );
    assert_eq!(s.run("LPOS l c RANK"), err("ERR syntax error"));
    assert_eq!(s.run("LPOS l c FIRST 1"), err("ERR syntax error"));
}

#[test]
fn lmove_rpoplpush_and_lmpop() {
    let mut s = Session::new();
    s.run("RPUSH src a b c");
    assert_eq!(s.run("LMOVE src dst LEFT RIGHT"), bulk("a"));
    assert_eq!(s.run("LMOVE src dst right left"), bulk("c"));
    assert_eq!(s.run("LRANGE dst 0 -1"), bulks(&["c", "a"]));
    assert_eq!(s.run("RPOPLPUSH src dst"), bulk("b"));
    assert_eq!(s.run("EXISTS src"), int(0));
    assert_eq!(s.run("LRANGE dst 0 -1"), bulks(&["b", "c", "a"]));
    assert_eq!(s.run("RPOPLPUSH src dst"), R::Null);
    assert_eq!(s.run("LMOVE dst dst LEFT RIGHT"), bulk("b"), "rotation");
    assert_eq!(s.run("LRANGE dst 0 -1"), bulks(&["c", "a", "b"]));
    assert_eq!(s.run("RPOPLPUSH dst dst"), bulk("b"));
    assert_eq!(s.run("LRANGE dst 0 -1"), bulks(&["b", "c", "a"]));
    assert_eq!(s.run("LMOVE dst x UP LEFT"), err("ERR syntax error"));
    s.run("SET str v");
    assert_eq!(s.run("LMOVE dst str LEFT LEFT"), err(WRONGTYPE));
    assert_eq!(
        s.run("LLEN dst"),
        int(3),
        "nothing popped on a bad destination"
    );
    assert_eq!(s.run("LMOVE str dst LEFT LEFT"), err(WRONGTYPE));
    s.run("RPUSH one x");
    assert_eq!(s.run("LMOVE one one LEFT LEFT"), bulk("x"));
    assert_eq!(s.run("LRANGE one 0 -1"), bulks(&["x"]));

    assert_eq!(
        s.run("LMPOP 2 nokey dst LEFT"),
        R::Array(vec![bulk("dst"), bulks(&["b"])])
    );
    assert_eq!(
        s.run("LMPOP 2 nokey dst RIGHT COUNT 10"),
        R::Array(vec![bulk("dst"), bulks(&["a", "c"])])
    );
    assert_eq!(s.run("EXISTS dst"), int(0));
    assert_eq!(s.run("LMPOP 1 nokey LEFT"), R::NullArray);
    assert_eq!(s.run("LMPOP 1 str LEFT"), err(WRONGTYPE));
    assert_eq!(
        s.run("LMPOP 0 one LEFT"),
        err("ERR numkeys should be greater than 0")
    );
    assert_eq!(
        s.run("LMPOP x one LEFT"),
        err("ERR numkeys should be greater than 0")
    );
    assert_eq!(s.run("LMPOP 2 one LEFT"), err("ERR syntax error"));
    assert_eq!(
        s.run("LMPOP 9223372036854775807 one LEFT"),
        err("ERR syntax error")
    );
    assert_eq!(s.run("LMPOP 1 one UP"), err("ERR syntax error"));
    assert_eq!(
        s.run("LMPOP 1 one LEFT COUNT 0"),
        err("ERR count should be greater than 0")
    );
    assert_eq!(s.run("LMPOP 1 one LEFT COUNT"), err("ERR syntax error"));
    assert_eq!(
        s.run("LMPOP 1 one LEFT COUNT 1 COUNT 1"),
        err("ERR syntax error")
    );
}

#[test]
fn list_commands_refuse_other_types() {
    let mut s = Session::new();
    s.run("SET str v");
    for cmd in [
        "LPUSH str a",
        "RPUSH str a",
        "LPUSHX str a",
        "LPOP str",
        "RPOP str 2",
        "LLEN str",
        "LRANGE str 0 -1",
        "LINDEX str 0",
        "LSET str 0 a",
        "LINSERT str BEFORE a b",
        "LREM str 0 a",
        "LTRIM str 0 1",
        "LPOS str a",
        "RPOPLPUSH str x",
    ] {
        assert_eq!(s.run(cmd), err(WRONGTYPE), "{cmd}");
    }
    s.run("RPUSH l a");
    assert_eq!(s.run("GET l"), err(WRONGTYPE));
    assert_eq!(s.run("ZADD l 1 a"), err(WRONGTYPE));
}

#[test]
fn list_writes_that_change_nothing_keep_watch_valid() {
    let mut s = Session::new();
    s.run("RPUSH l a b c");
    let v = s.version("l");
    s.run("LREM l 0 zz");
    s.run("LSET l 10 x");
    s.run("LINSERT l BEFORE zz x");
    s.run("LPOP l 0");
    s.run("LRANGE l 0 -1");
    assert_eq!(s.version("l"), v);
    s.run("LSET l 0 x");
    assert_ne!(s.version("l"), v);
}

#[test]
fn list_encodings_follow_redis_size_limits() {
    let mut s = Session::new();
    s.run("RPUSH l a b c");
    assert_eq!(s.run("OBJECT ENCODING l"), bulk("listpack"));
    let big = "x".repeat(9000);
    s.run(&format!("RPUSH l {big}"));
    assert_eq!(s.run("OBJECT ENCODING l"), bulk("quicklist"));
    s.run("RPOP l");
    assert_eq!(s.run("OBJECT ENCODING l"), bulk("listpack"));
}

// ---------------------------------------------------------------------------------------
// Sorted sets
// ---------------------------------------------------------------------------------------

#[test]
fn zadd_options_and_their_conflicts() {
    let mut s = Session::new();
    assert_eq!(s.run("ZADD z 1 a 2 b 3 c"), int(3));
    assert_eq!(s.run("ZADD z 1 a"), int(0));
    assert_eq!(s.run("ZADD z CH 5 a 2 b 9 d"), int(2), "a changed, d added");
    assert_eq!(s.run("ZADD z NX 100 a 4 e"), int(1));
    assert_eq!(s.run("ZSCORE z a"), bulk("5"));
    assert_eq!(s.run("ZADD z XX 6 a 7 f"), int(0));
    assert_eq!(s.run("ZSCORE z a"), bulk("6"));
    assert_eq!(s.run("ZSCORE z f"), R::Null);
    assert_eq!(s.run("ZADD z GT CH 1 a 10 b"), int(1));
    assert_eq!(s.run("ZADD z LT CH 100 a 0 c"), int(1));
    assert_eq!(
        s.run("ZRANGE z 0 -1 WITHSCORES"),
        bulks(&["c", "0", "e", "4", "a", "6", "d", "9", "b", "10"])
    );
    assert_eq!(
        s.run("ZADD z GT 1 new"),
        int(1),
        "GT still adds new members"
    );
    assert_eq!(s.run("ZADD z XX GT 20 b"), int(0));
    assert_eq!(s.run("ZSCORE z b"), bulk("20"));
    assert_eq!(
        s.run("ZADD z NX XX 1 a"),
        err("ERR XX and NX options at the same time are not compatible")
    );
    for cmd in ["ZADD z GT LT 1 a", "ZADD z NX GT 1 a", "ZADD z LT NX 1 a"] {
        assert_eq!(
            s.run(cmd),
            err("ERR GT, LT, and/or NX options at the same time are not compatible"),
            "{cmd}"
        );
    }
    assert_eq!(
        s.run("ZADD z INCR 1 a 2 b"),
        err("ERR INCR option supports a single increment-element pair")
    );
    assert_eq!(
        s.run("ZADD z 1"),
        err("ERR wrong number of arguments for 'zadd' command")
    );
    assert_eq!(s.run("ZADD z 1 a 2"), err("ERR syntax error"));
    assert_eq!(s.run("ZADD z NX 1"), err("ERR syntax error"));
    assert_eq!(
        s.run("ZADD z NX XX"),
        err("ERR syntax error"),
        "no pairs after options"
    );
    assert_eq!(s.run("ZADD z x a"), err("ERR value is not a valid float"));
    assert_eq!(s.run("ZADD z nan a"), err("ERR value is not a valid float"));
    assert_eq!(
        s.run("ZADD z 1e400 a"),
        err("ERR value is not a valid float")
    );
    assert_eq!(
        s.run("ZADD z 1 a x b"),
        err("ERR value is not a valid float"),
        "every score is checked before any is added"
    );
    assert_eq!(s.run("ZSCORE z a"), bulk("6"));
    assert_eq!(s.run("ZADD z XX 1 a"), int(0));
    assert_eq!(s.run("ZADD nokey XX 1 a"), int(0));
    assert_eq!(s.run("ZADD nokey XX INCR 1 a"), R::Null);
    assert_eq!(s.run("EXISTS nokey"), int(0));
    assert_eq!(s.run("ZADD z -inf lo +inf hi"), int(2));
    assert_eq!(s.run("ZSCORE z lo"), bulk("-inf"));
    assert_eq!(s.run("ZSCORE z hi"), bulk("inf"));
}

#[test]
fn incr_and_nan() {
    let mut s = Session::new();
    assert_eq!(s.run("ZINCRBY z 2.5 a"), bulk("2.5"));
    assert_eq!(s.run("ZINCRBY z -1 a"), bulk("1.5"));
    assert_eq!(s.run("ZADD z INCR 10 a"), bulk("11.5"));
    assert_eq!(s.run("ZADD z NX INCR 10 a"), R::Null);
    assert_eq!(s.run("ZADD z XX INCR 1 nope"), R::Null);
    assert_eq!(s.run("ZADD z GT INCR -1 a"), R::Null);
    assert_eq!(s.run("ZADD z LT INCR -1 a"), bulk("10.5"));
    assert_eq!(
        s.run("ZINCRBY z 0 a"),
        bulk("10.5"),
        "a zero increment still replies"
    );
    assert_eq!(
        s.run("ZINCRBY z x a"),
        err("ERR value is not a valid float")
    );
    assert_eq!(s.run("ZADD z +inf inf"), int(1));
    assert_eq!(
        s.run("ZINCRBY z -inf inf"),
        err("ERR resulting score is not a number (NaN)")
    );
    assert_eq!(s.run("ZSCORE z inf"), bulk("inf"));
    assert_eq!(s.run("ZINCRBY z 1 inf"), bulk("inf"));
    // ZINCRBY parses its arguments as ZADD's, options included.
    assert_eq!(s.run("ZINCRBY z nx a"), err("ERR syntax error"));
    let mut r3 = Session::resp3();
    assert_eq!(r3.run("ZINCRBY z 1.5 a"), R::Double(1.5));
    assert_eq!(r3.run("ZSCORE z a"), R::Double(1.5));
}

#[test]
fn scores_are_printed_as_redis_prints_doubles() {
    let mut s = Session::new();
    s.run("ZADD z 0.1 a 1e17 b 1.5e-7 c -0 d 3.0 e 1e21 f");
    assert_eq!(s.run("ZSCORE z a"), bulk("0.1"));
    assert_eq!(s.run("ZSCORE z b"), bulk("100000000000000000"));
    assert_eq!(s.run("ZSCORE z c"), bulk("1.5e-7"));
    assert_eq!(s.run("ZSCORE z d"), bulk("0"), "-0 is stored as 0");
    assert_eq!(s.run("ZSCORE z e"), bulk("3"));
    assert_eq!(s.run("ZSCORE z f"), bulk("1e+21"));
}

#[test]
fn zrem_zcard_zscore_zmscore() {
    let mut s = Session::new();
    s.run("ZADD z 1 a 2 b 3 c");
    assert_eq!(s.run("ZCARD z"), int(3));
    assert_eq!(s.run("ZCARD nokey"), int(0));
    assert_eq!(s.run("ZREM z a x a"), int(1));
    assert_eq!(s.run("ZREM nokey a"), int(0));
    assert_eq!(
        s.run("ZMSCORE z b x c"),
        R::Array(vec![bulk("2"), R::Null, bulk("3")])
    );
    assert_eq!(s.run("ZMSCORE nokey a b"), R::Array(vec![R::Null, R::Null]));
    assert_eq!(s.run("ZSCORE nokey a"), R::Null);
    assert_eq!(s.run("ZREM z b c"), int(2));
    assert_eq!(
        s.run("EXISTS z"),
        int(0),
        "an emptied sorted set is deleted"
    );
    let mut r3 = Session::resp3();
    r3.run("ZADD z 1 a");
    assert_eq!(
        r3.run("ZMSCORE z a x"),
        R::Array(vec![R::Double(1.0), R::Null])
    );
}

#[test]
fn ranks_with_and_without_scores() {
    let mut s = Session::new();
    s.run("ZADD z 1 a 2 b 3 c 3 bb");
    assert_eq!(s.run("ZRANK z a"), int(0));
    assert_eq!(s.run("ZRANK z c"), int(3), "ties order by member");
    assert_eq!(s.run("ZRANK z bb"), int(2));
    assert_eq!(s.run("ZREVRANK z a"), int(3));
    assert_eq!(s.run("ZRANK z x"), R::Null);
    assert_eq!(s.run("ZRANK nokey x"), R::Null);
    assert_eq!(
        s.run("ZRANK z b WITHSCORE"),
        R::Array(vec![int(1), bulk("2")])
    );
    assert_eq!(
        s.run("ZREVRANK z b withscore"),
        R::Array(vec![int(2), bulk("2")])
    );
    assert_eq!(s.run("ZRANK z x WITHSCORE"), R::NullArray);
    assert_eq!(s.run("ZRANK nokey x WITHSCORE"), R::NullArray);
    assert_eq!(s.run("ZRANK z a WITHSCORES"), err("ERR syntax error"));
    assert_eq!(
        s.run("ZRANK z a WITHSCORE x"),
        err("ERR wrong number of arguments for 'zrank' command")
    );
    let mut r3 = Session::resp3();
    r3.run("ZADD z 1.5 a");
    assert_eq!(
        r3.run("ZRANK z a WITHSCORE"),
        R::Array(vec![int(0), R::Double(1.5)])
    );
}

#[test]
fn ranges_by_rank() {
    let mut s = Session::new();
    s.run("ZADD z 1 a 2 b 3 c 4 d");
    assert_eq!(s.run("ZRANGE z 0 -1"), bulks(&["a", "b", "c", "d"]));
    assert_eq!(s.run("ZRANGE z 1 2"), bulks(&["b", "c"]));
    assert_eq!(s.run("ZRANGE z -2 -1"), bulks(&["c", "d"]));
    assert_eq!(s.run("ZRANGE z -100 0"), bulks(&["a"]));
    assert_eq!(s.run("ZRANGE z 3 1"), empty());
    assert_eq!(s.run("ZRANGE z 4 10"), empty());
    assert_eq!(
        s.run("ZRANGE z 0 9223372036854775807"),
        bulks(&["a", "b", "c", "d"])
    );
    assert_eq!(s.run("ZRANGE z 0 0 REV"), bulks(&["d"]));
    assert_eq!(s.run("ZRANGE z 1 -1 REV"), bulks(&["c", "b", "a"]));
    assert_eq!(s.run("ZREVRANGE z 0 1"), bulks(&["d", "c"]));
    assert_eq!(
        s.run("ZREVRANGE z 0 1 WITHSCORES"),
        bulks(&["d", "4", "c", "3"])
    );
    assert_eq!(s.run("ZRANGE nokey 0 -1"), empty());
    assert_eq!(
        s.run("ZRANGE z a 1"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        s.run("ZRANGE z 0 1 LIMIT 0 1"),
        err(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
        )
    );
    assert_eq!(s.run("ZRANGE z 0 1 LIMIT 0 -1"), bulks(&["a", "b"]));
    assert_eq!(s.run("ZRANGE z 0 1 REV REV"), err("ERR syntax error"));
    assert_eq!(s.run("ZREVRANGE z 0 1 REV"), err("ERR syntax error"));
    assert_eq!(s.run("ZRANGE z 0 1 FOO"), err("ERR syntax error"));
    assert_eq!(s.run("ZRANGE z 0 1 LIMIT 0"), err("ERR syntax error"));
}

#[test]
fn ranges_by_score_with_exclusive_bounds_and_limits() {
    let mut s = Session::new();
    s.run("ZADD z 1 a 2 b 3 c 4 d 5 e");
    assert_eq!(s.run("ZRANGEBYSCORE z 2 4"), bulks(&["b", "c", "d"]));
    assert_eq!(s.run("ZRANGEBYSCORE z (2 4"), bulks(&["c", "d"]));
    assert_eq!(s.run("ZRANGEBYSCORE z (2 (4"), bulks(&["c"]));
    assert_eq!(
        s.run("ZRANGEBYSCORE z -inf +inf"),
        bulks(&["a", "b", "c", "d", "e"])
    );
    assert_eq!(
        s.run("ZRANGEBYSCORE z (-inf (+inf"),
        bulks(&["a", "b", "c", "d", "e"])
    );
    assert_eq!(s.run("ZRANGEBYSCORE z (3 (3"), empty());
    assert_eq!(s.run("ZRANGEBYSCORE z 3 3"), bulks(&["c"]));
    assert_eq!(s.run("ZRANGEBYSCORE z 4 2"), empty());
    assert_eq!(s.run("ZRANGEBYSCORE z 2.5 inf"), bulks(&["c", "d", "e"]));
    assert_eq!(
        s.run("ZRANGEBYSCORE z 1 5 WITHSCORES LIMIT 1 2"),
        bulks(&["b", "2", "c", "3"])
    );
    assert_eq!(s.run("ZRANGEBYSCORE z 1 5 LIMIT 3 -1"), bulks(&["d", "e"]));
    assert_eq!(s.run("ZRANGEBYSCORE z 1 5 LIMIT 0 0"), empty());
    assert_eq!(s.run("ZRANGEBYSCORE z 1 5 LIMIT -1 2"), empty());
    assert_eq!(s.run("ZRANGEBYSCORE z 1 5 LIMIT 5 2"), empty());
    assert_eq!(s.run("ZREVRANGEBYSCORE z 4 (1"), bulks(&["d", "c", "b"]));
    assert_eq!(
        s.run("ZREVRANGEBYSCORE z +inf -inf LIMIT 1 2"),
        bulks(&["d", "c"])
    );
    assert_eq!(s.run("ZRANGE z (1 4 BYSCORE"), bulks(&["b", "c", "d"]));
    assert_eq!(s.run("ZRANGE z 4 (1 BYSCORE REV"), bulks(&["d", "c", "b"]));
    assert_eq!(
        s.run("ZRANGE z 5 1 BYSCORE REV LIMIT 1 1 WITHSCORES"),
        bulks(&["d", "4"])
    );
    assert_eq!(
        s.run("ZRANGEBYSCORE z x 1"),
        err("ERR min or max is not a float")
    );
    assert_eq!(
        s.run("ZRANGEBYSCORE z 1 (x"),
        err("ERR min or max is not a float")
    );
    assert_eq!(
        s.run("ZRANGEBYSCORE z nan 1"),
        err("ERR min or max is not a float")
    );
    assert_eq!(
        s.run("ZRANGEBYSCORE z 1 2 BYSCORE"),
        err("ERR syntax error")
    );
    assert_eq!(
        s.run("ZRANGEBYSCORE z 1 2 LIMIT x 1"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("ZCOUNT z (1 3"), int(2));
    assert_eq!(s.run("ZCOUNT z -inf +inf"), int(5));
    assert_eq!(s.run("ZCOUNT z 10 20"), int(0));
    assert_eq!(s.run("ZCOUNT nokey 1 2"), int(0));
    assert_eq!(s.run("ZCOUNT z 1 x"), err("ERR min or max is not a float"));
    // strtod reads the empty string (and a bare "(") as 0, and skips leading space.
    s.run("ZADD z 0 zero");
    assert_eq!(s.run_args(&[b"ZCOUNT", b"z", b"", b"("]), int(0));
    assert_eq!(s.run_args(&[b"ZCOUNT", b"z", b"", b""]), int(1));
    assert_eq!(s.run_args(&[b"ZCOUNT", b"z", b" 1", b"2"]), int(2));
}

#[test]
fn ranges_by_lex() {
    let mut s = Session::new();
    s.run("ZADD z 0 a 0 b 0 c 0 d 0 e 0 f 0 g");
    assert_eq!(s.run("ZRANGEBYLEX z - [c"), bulks(&["a", "b", "c"]));
    assert_eq!(s.run("ZRANGEBYLEX z - (c"), bulks(&["a", "b"]));
    assert_eq!(
        s.run("ZRANGEBYLEX z [aaa (g"),
        bulks(&["b", "c", "d", "e", "f"])
    );
    assert_eq!(s.run("ZRANGEBYLEX z (e +"), bulks(&["f", "g"]));
    assert_eq!(
        s.run("ZRANGEBYLEX z - +"),
        bulks(&["a", "b", "c", "d", "e", "f", "g"])
    );
    assert_eq!(s.run("ZRANGEBYLEX z + -"), empty());
    assert_eq!(s.run("ZRANGEBYLEX z - -"), empty());
    assert_eq!(s.run("ZRANGEBYLEX z [c [c"), bulks(&["c"]));
    assert_eq!(s.run("ZRANGEBYLEX z (c [c"), empty());
    assert_eq!(
        s.run("ZRANGEBYLEX z - + LIMIT 2 3"),
        bulks(&["c", "d", "e"])
    );
    assert_eq!(s.run("ZREVRANGEBYLEX z [c -"), bulks(&["c", "b", "a"]));
    assert_eq!(s.run("ZREVRANGEBYLEX z + (e LIMIT 1 5"), bulks(&["f"]));
    assert_eq!(s.run("ZRANGE z [b [d BYLEX"), bulks(&["b", "c", "d"]));
    assert_eq!(
        s.run("ZRANGE z [d [b BYLEX REV LIMIT 0 2"),
        bulks(&["d", "c"])
    );
    assert_eq!(
        s.run("ZRANGE z - + BYLEX WITHSCORES"),
        err("ERR syntax error, WITHSCORES not supported in combination with BYLEX")
    );
    assert_eq!(s.run("ZRANGE z - + BYLEX BYSCORE"), err("ERR syntax error"));
    for bad in [
        "ZRANGEBYLEX z a [c",
        "ZRANGEBYLEX z [a c",
        "ZRANGEBYLEX z -a +",
        "ZRANGEBYLEX z - ++",
    ] {
        assert_eq!(
            s.run(bad),
            err("ERR min or max not valid string range item"),
            "{bad}"
        );
    }
    assert_eq!(s.run("ZLEXCOUNT z - +"), int(7));
    assert_eq!(s.run("ZLEXCOUNT z [b (d"), int(2));
    assert_eq!(s.run("ZLEXCOUNT nokey - +"), int(0));
    assert_eq!(
        s.run("ZLEXCOUNT z x +"),
        err("ERR min or max not valid string range item")
    );
    assert_eq!(
        s.run_args(&[b"ZRANGEBYLEX", b"z", b"[", b"(b"]),
        bulks(&["a"])
    );
}

#[test]
fn withscores_shapes_differ_by_protocol() {
    let mut r2 = Session::new();
    let mut r3 = Session::resp3();
    for s in [&mut r2, &mut r3] {
        s.run("ZADD z 1 a 2.5 b");
    }
    assert_eq!(
        r2.run("ZRANGE z 0 -1 WITHSCORES"),
        bulks(&["a", "1", "b", "2.5"])
    );
    assert_eq!(
        r3.run("ZRANGE z 0 -1 WITHSCORES"),
        R::Array(vec![pair("a", 1.0), pair("b", 2.5)])
    );
    assert_eq!(r3.run("ZRANGE z 0 -1"), bulks(&["a", "b"]));
    assert_eq!(
        r3.run("ZRANGEBYSCORE z 2 3 WITHSCORES"),
        R::Array(vec![pair("b", 2.5)])
    );
    // ZPOPMIN: flat without a count in both; pairs with a count in RESP3.
    assert_eq!(r2.run("ZPOPMIN z"), bulks(&["a", "1"]));
    assert_eq!(
        r3.run("ZPOPMIN z"),
        R::Array(vec![bulk("a"), R::Double(1.0)])
    );
    assert_eq!(r2.run("ZPOPMAX z 5"), bulks(&["b", "2.5"]));
    assert_eq!(r3.run("ZPOPMAX z 5"), R::Array(vec![pair("b", 2.5)]));
    for s in [&mut r2, &mut r3] {
        s.run("ZADD z 1 a");
    }
    assert_eq!(r2.run("ZRANDMEMBER z 1 WITHSCORES"), bulks(&["a", "1"]));
    assert_eq!(
        r3.run("ZRANDMEMBER z 1 WITHSCORES"),
        R::Array(vec![pair("a", 1.0)])
    );
    // ZMPOP nests in both protocols.
    assert_eq!(
        r2.run("ZMPOP 1 z MIN"),
        R::Array(vec![
            bulk("z"),
            R::Array(vec![R::Array(vec![bulk("a"), bulk("1")])])
        ])
    );
}

#[test]
fn pops_and_zmpop() {
    let mut s = Session::new();
    s.run("ZADD z 1 a 2 b 3 c 4 d");
    assert_eq!(s.run("ZPOPMIN z"), bulks(&["a", "1"]));
    assert_eq!(s.run("ZPOPMAX z 2"), bulks(&["d", "4", "c", "3"]));
    assert_eq!(s.run("ZPOPMIN z 0"), empty());
    assert_eq!(s.run("ZPOPMIN z 10"), bulks(&["b", "2"]));
    assert_eq!(s.run("EXISTS z"), int(0));
    assert_eq!(s.run("ZPOPMIN z"), empty());
    assert_eq!(s.run("ZPOPMIN z 3"), empty());
    assert_eq!(
        s.run("ZPOPMIN z -1"),
        err("ERR value is out of range, must be positive")
    );
    assert_eq!(s.run("ZPOPMIN z 1 2"), err("ERR syntax error"));
    s.run("ZADD z2 1 a 2 b");
    assert_eq!(
        s.run("ZMPOP 2 z z2 MAX COUNT 5"),
        R::Array(vec![
            bulk("z2"),
            R::Array(vec![
                R::Array(vec![bulk("b"), bulk("2")]),
                R::Array(vec![bulk("a"), bulk("1")]),
            ])
        ])
    );
    assert_eq!(s.run("ZMPOP 2 z z2 MIN"), R::NullArray);
    assert_eq!(s.run("ZMPOP 1 z SIDE"), err("ERR syntax error"));
    assert_eq!(
        s.run("ZMPOP 1 z MIN COUNT 0"),
        err("ERR count should be greater than 0")
    );
    assert_eq!(
        s.run("ZMPOP 0 z MIN"),
        err("ERR numkeys should be greater than 0")
    );
}

#[test]
fn range_removals() {
    let mut s = Session::new();
    s.run("ZADD z 1 a 2 b 3 c 4 d 5 e");
    assert_eq!(s.run("ZREMRANGEBYRANK z 0 1"), int(2));
    assert_eq!(s.run("ZRANGE z 0 -1"), bulks(&["c", "d", "e"]));
    assert_eq!(s.run("ZREMRANGEBYRANK z -1 -1"), int(1));
    assert_eq!(s.run("ZREMRANGEBYRANK z 5 10"), int(0));
    assert_eq!(s.run("ZREMRANGEBYRANK nokey 0 1"), int(0));
    assert_eq!(
        s.run("ZREMRANGEBYRANK z x 1"),
        err("ERR value is not an integer or out of range")
    );
    s.run("ZADD z 1 a 2 b 5 e");
    assert_eq!(s.run("ZREMRANGEBYSCORE z (1 3"), int(2));
    assert_eq!(s.run("ZRANGE z 0 -1"), bulks(&["a", "d", "e"]));
    assert_eq!(s.run("ZREMRANGEBYSCORE z 10 20"), int(0));
    assert_eq!(
        s.run("ZREMRANGEBYSCORE z x 1"),
        err("ERR min or max is not a float")
    );
    assert_eq!(s.run("ZREMRANGEBYSCORE z -inf +inf"), int(3));
    assert_eq!(s.run("EXISTS z"), int(0));
    s.run("ZADD z 0 a 0 b 0 c 0 d");
    assert_eq!(s.run("ZREMRANGEBYLEX z (a [c"), int(2));
    assert_eq!(s.run("ZRANGE z 0 -1"), bulks(&["a", "d"]));
    assert_eq!(
        s.run("ZREMRANGEBYLEX z a c"),
        err("ERR min or max not valid string range item")
    );
    assert_eq!(s.run("ZREMRANGEBYLEX z - +"), int(2));
    assert_eq!(s.run("EXISTS z"), int(0));
}

#[test]
fn zrangestore_overwrites_and_deletes() {
    let mut s = Session::new();
    s.run("ZADD src 1 a 2 b 3 c 4 d");
    s.run("SET dst string");
    s.run("EXPIRE dst 100");
    assert_eq!(s.run("ZRANGESTORE dst src 1 2"), int(2));
    assert_eq!(s.run("TYPE dst"), R::Simple("zset".into()));
    assert_eq!(s.run("TTL dst"), int(-1));
    assert_eq!(
        s.run("ZRANGE dst 0 -1 WITHSCORES"),
        bulks(&["b", "2", "c", "3"])
    );
    assert_eq!(
        s.run("ZRANGESTORE dst src (1 +inf BYSCORE LIMIT 1 2"),
        int(2)
    );
    assert_eq!(s.run("ZRANGE dst 0 -1"), bulks(&["c", "d"]));
    assert_eq!(s.run("ZRANGESTORE dst src [d - BYLEX REV"), int(4));
    assert_eq!(s.run("ZRANGESTORE dst src 10 20"), int(0));
    assert_eq!(
        s.run("EXISTS dst"),
        int(0),
        "an empty result deletes the destination"
    );
    s.run("SET dst x");
    assert_eq!(s.run("ZRANGESTORE dst nokey 0 -1"), int(0));
    assert_eq!(s.run("EXISTS dst"), int(0));
    assert_eq!(
        s.run("ZRANGESTORE dst src 0 -1 WITHSCORES"),
        err("ERR syntax error")
    );
    s.run("SET str x");
    assert_eq!(s.run("ZRANGESTORE dst str 0 -1"), err(WRONGTYPE));
    assert_eq!(
        s.run("ZRANGESTORE src src 0 1"),
        int(2),
        "source and destination alike"
    );
    assert_eq!(s.run("ZRANGE src 0 -1"), bulks(&["a", "b"]));
}

#[test]
fn zscan_returns_all_members_with_scores() {
    let mut s = Session::new();
    s.run("ZADD z 1 a 2.5 b 3 c");
    assert_eq!(
        s.run("ZSCAN z 0"),
        R::Array(vec![bulk("0"), bulks(&["a", "1", "b", "2.5", "c", "3"])])
    );
    assert_eq!(
        s.run("ZSCAN z 0 MATCH b*"),
        R::Array(vec![bulk("0"), bulks(&["b", "2.5"])])
    );
    assert_eq!(s.run("ZSCAN nokey 0"), R::Array(vec![bulk("0"), empty()]));
    assert_eq!(
        s.run("ZSCAN nokey 0 BAD"),
        R::Array(vec![bulk("0"), empty()])
    );
    assert_eq!(s.run("ZSCAN z x"), err("ERR invalid cursor"));
    assert_eq!(s.run("ZSCAN z 0 COUNT 0"), err("ERR syntax error"));
    assert_eq!(s.run("ZSCAN z 0 TYPE zset"), err("ERR syntax error"));
    assert_eq!(s.run("ZSCAN z 0 COUNT"), err("ERR syntax error"));
    s.run("SET str x");
    assert_eq!(s.run("ZSCAN str 0"), err(WRONGTYPE));

    // A large set (Redis' skiplist encoding) is walked in steps by the cursor, every member
    // present throughout coming back, with scores in %.17g.
    for i in 0..300 {
        s.run(&format!("ZADD big {i}.1 m{i}"));
    }
    assert_eq!(s.run("OBJECT ENCODING big"), bulk("skiplist"));
    let mut seen = std::collections::HashMap::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let R::Array(reply) = s.run(&format!("ZSCAN big {cursor} COUNT 20")) else {
            panic!()
        };
        let [R::Bulk(next), R::Array(items)] = &reply[..] else {
            panic!("{reply:?}")
        };
        for chunk in items.chunks(2) {
            seen.insert(text(&chunk[0]), text(&chunk[1]));
        }
        // Churn between calls.
        s.run(&format!("ZADD big 0.5 churn{calls}"));
        s.run(&format!("ZREM big churn{}", calls / 2));
        calls += 1;
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    assert!(calls > 5, "a large set takes several calls");
    for i in 0..300 {
        assert!(seen.contains_key(&format!("m{i}")), "m{i}");
    }
    assert_eq!(seen["m0"], "0.10000000000000001");
}

#[test]
fn zrandmember_counts() {
    let mut s = Session::new();
    s.run("ZADD z 1 a 2 b 3 c 4 d 5 e");
    let R::Bulk(one) = s.run("ZRANDMEMBER z") else {
        panic!()
    };
    assert!([&b"a"[..], b"b", b"c", b"d", b"e"].contains(&&one[..]));
    assert_eq!(s.run("ZRANDMEMBER nokey"), R::Null);
    assert_eq!(s.run("ZRANDMEMBER nokey 3"), empty());
    assert_eq!(s.run("ZRANDMEMBER z 0"), empty());
    // A count of at least the size is the whole set, walked from the top.
    assert_eq!(s.run("ZRANDMEMBER z 5"), bulks(&["e", "d", "c", "b", "a"]));
    assert_eq!(
        s.run("ZRANDMEMBER z 100"),
        bulks(&["e", "d", "c", "b", "a"])
    );
    let R::Array(three) = s.run("ZRANDMEMBER z 3") else {
        panic!()
    };
    let unique: std::collections::HashSet<String> = three.iter().map(text).collect();
    assert_eq!(unique.len(), 3, "a positive count gives distinct members");
    let R::Array(many) = s.run("ZRANDMEMBER z -20") else {
        panic!()
    };
    assert_eq!(many.len(), 20, "a negative count repeats");
    let R::Array(scored) = s.run("ZRANDMEMBER z -3 WITHSCORES") else {
        panic!()
    };
    assert_eq!(scored.len(), 6);
    assert_eq!(s.run("ZRANDMEMBER z 1 WITHSCORE"), err("ERR syntax error"));
    assert_eq!(
        s.run("ZRANDMEMBER z 1 WITHSCORES x"),
        err("ERR syntax error")
    );
    assert_eq!(
        s.run("ZRANDMEMBER z x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        s.run("ZRANDMEMBER z -9223372036854775808"),
        err("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807")
    );
    assert_eq!(
        s.run("ZRANDMEMBER z 9223372036854775807 WITHSCORES"),
        err("ERR value is out of range")
    );
    // A large set with a small unique sample.
    for i in 0..1000 {
        s.run(&format!("ZADD big {i} m{i}"));
    }
    let R::Array(sample) = s.run("ZRANDMEMBER big 10") else {
        panic!()
    };
    let distinct: std::collections::HashSet<String> = sample.iter().map(text).collect();
    assert_eq!(distinct.len(), 10);
}

#[test]
fn zset_commands_refuse_other_types() {
    let mut s = Session::new();
    s.run("RPUSH l a");
    for cmd in [
        "ZADD l 1 a",
        "ZINCRBY l 1 a",
        "ZREM l a",
        "ZCARD l",
        "ZSCORE l a",
        "ZMSCORE l a",
        "ZRANK l a",
        "ZREVRANK l a WITHSCORE",
        "ZRANGE l 0 -1",
        "ZRANGEBYSCORE l 0 1",
        "ZRANGEBYLEX l - +",
        "ZREVRANGE l 0 1",
        "ZCOUNT l 0 1",
        "ZLEXCOUNT l - +",
        "ZPOPMIN l",
        "ZPOPMAX l 2",
        "ZREMRANGEBYRANK l 0 1",
        "ZREMRANGEBYSCORE l 0 1",
        "ZREMRANGEBYLEX l - +",
        "ZRANDMEMBER l",
        "ZRANDMEMBER l 2",
        "ZSCAN l 0",
        "ZMPOP 1 l MIN",
    ] {
        assert_eq!(s.run(cmd), err(WRONGTYPE), "{cmd}");
    }
    s.run("ZADD z 1 a");
    assert_eq!(s.run("TYPE z"), R::Simple("zset".into()));
    assert_eq!(s.run("LPUSH z a"), err(WRONGTYPE));
}

#[test]
fn zset_writes_that_change_nothing_keep_watch_valid() {
    let mut s = Session::new();
    s.run("ZADD z 1 a 2 b");
    let v = s.version("z");
    for cmd in [
        "ZADD z 1 a",
        "ZADD z XX 5 nope",
        "ZADD z NX 5 a",
        "ZADD z GT 0 a",
        "ZINCRBY z 0 a",
        "ZREM z nope",
        "ZREMRANGEBYSCORE z 10 20",
        "ZREMRANGEBYRANK z 5 6",
        "ZPOPMIN z 0",
    ] {
        s.run(cmd);
        assert_eq!(s.version("z"), v, "{cmd}");
    }
    s.run("ZADD z 3 a");
    assert_ne!(s.version("z"), v);
}

#[test]
fn zset_encodings_follow_redis_thresholds() {
    let mut s = Session::new();
    s.run("ZADD z 1 a");
    assert_eq!(s.run("OBJECT ENCODING z"), bulk("listpack"));
    s.run(&format!("ZADD z 1 {}", "x".repeat(65)));
    assert_eq!(s.run("OBJECT ENCODING z"), bulk("skiplist"));
    s.run(&format!("ZREM z {}", "x".repeat(65)));
    assert_eq!(
        s.run("OBJECT ENCODING z"),
        bulk("skiplist"),
        "Redis never converts back"
    );
    for i in 0..129 {
        s.run(&format!("ZADD y {i} m{i}"));
    }
    assert_eq!(s.run("OBJECT ENCODING y"), bulk("skiplist"));
}

#[test]
fn ties_order_by_member_bytes_everywhere() {
    let mut s = Session::new();
    s.run("ZADD z 1 b 1 a 1 c 1 B 0 z");
    assert_eq!(s.run("ZRANGE z 0 -1"), bulks(&["z", "B", "a", "b", "c"]));
    assert_eq!(s.run("ZREVRANGE z 0 -1"), bulks(&["c", "b", "a", "B", "z"]));
    assert_eq!(s.run("ZRANGEBYSCORE z 1 1 LIMIT 1 2"), bulks(&["a", "b"]));
    assert_eq!(s.run("ZRANK z a"), int(2));
    assert_eq!(s.run("ZADD z 1 z"), int(0));
    assert_eq!(s.run("ZRANGE z 0 -1"), bulks(&["B", "a", "b", "c", "z"]));
}

#[test]
fn a_large_sorted_set_ranks_and_ranges_consistently() {
    let mut s = Session::new();
    for i in 0..2000 {
        s.run(&format!("ZADD z {} m{i:05}", i % 100));
    }
    assert_eq!(s.run("ZCARD z"), int(2000));
    // Score k holds members with i % 100 == k, 20 of them.
    assert_eq!(s.run("ZCOUNT z 10 (20"), int(200));
    assert_eq!(s.run("ZRANK z m00000"), int(0));
    assert_eq!(s.run("ZRANK z m00100"), int(1));
    assert_eq!(s.run("ZRANK z m01999"), int(1999));
    assert_eq!(s.run("ZRANGE z 20 21"), bulks(&["m00001", "m00101"]));
    assert_eq!(s.run("ZREVRANGE z 0 0"), bulks(&["m01999"]));
    assert_eq!(s.run("ZREMRANGEBYRANK z 0 999"), int(1000));
    assert_eq!(s.run("ZRANGE z 0 0 WITHSCORES"), bulks(&["m00050", "50"]));
    assert_eq!(s.run("ZREMRANGEBYSCORE z -inf 98"), int(980));
    assert_eq!(s.run("ZCARD z"), int(20));
}

#[test]
fn commands_are_registered_with_redis_arity_and_keys() {
    let mut s = Session::new();
    assert_eq!(
        s.run("COMMAND GETKEYS LMOVE a b LEFT RIGHT"),
        bulks(&["a", "b"])
    );
    assert_eq!(
        s.run("COMMAND GETKEYS ZRANGESTORE dst src 0 -1"),
        bulks(&["dst", "src"])
    );
    assert_eq!(
        s.run("ZADD z"),
        err("ERR wrong number of arguments for 'zadd' command")
    );
    assert_eq!(
        s.run("LMOVE a b LEFT"),
        err("ERR wrong number of arguments for 'lmove' command")
    );
    assert_eq!(
        s.run("ZRANGESTORE a b 0"),
        err("ERR wrong number of arguments for 'zrangestore' command")
    );
    let R::Array(info) = s.run("COMMAND INFO zadd") else {
        panic!()
    };
    let R::Array(zadd) = &info[0] else { panic!() };
    assert_eq!(zadd[1], int(-4));
    assert_eq!(
        zadd[2],
        R::Set(vec![
            R::Simple("write".into()),
            R::Simple("denyoom".into()),
            R::Simple("fast".into())
        ])
    );
}

#[test]
fn transactions_run_list_and_zset_commands() {
    let mut s = Session::new();
    s.run("MULTI");
    s.run("RPUSH l a b");
    s.run("ZADD z 1 a");
    s.run("LPOP l");
    assert_eq!(s.run("EXEC"), R::Array(vec![int(2), int(1), bulk("a")]));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
    /// The fuzz body, with its words for lists and sorted sets, under proptest.
    #[test]
    fn any_command_sequence_keeps_lists_and_zsets_consistent(
        data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)
    ) {
        melange_kv::fuzz::commands(&data);
    }
}
