//! The commands against the replies Redis 7.2 gives (checked by hand against redis-server;
//! the differential test against a live redis-server comes with the service).

use melange_kv::command::{lookup, table, Config};
use melange_kv::{Client, Recorder, ReplyValue as R, Server};

struct Session {
    server: Server,
    client: Client,
    now_ms: u64,
}

impl Session {
    fn new() -> Self {
        Self::with(Config::default())
    }
    fn with(config: Config) -> Self {
        let now_ms = 1_700_000_000_000;
        let mut server = Server::new(config, now_ms, 7);
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

#[test]
fn the_table_is_sorted_and_every_name_is_found_in_any_case() {
    let names: Vec<&str> = table().iter().map(|s| s.name).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    for name in names {
        assert!(lookup(name.as_bytes()).is_some());
        assert!(lookup(name.to_uppercase().as_bytes()).is_some());
    }
    assert!(lookup(b"nosuch").is_none());
}

#[test]
fn unknown_commands_and_arity_are_worded_as_redis() {
    let mut s = Session::new();
    assert_eq!(
        s.run("FOO a b"),
        err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ")
    );
    assert_eq!(
        s.run("FOO"),
        err("ERR unknown command 'FOO', with args beginning with: ")
    );
    assert_eq!(
        s.run("GET"),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        s.run("get a b"),
        err("ERR wrong number of arguments for 'get' command")
    );
    // Newlines in an echoed name cannot break the reply line.
    assert_eq!(
        s.run_args(&[b"a\r\nb"]),
        err("ERR unknown command 'a  b', with args beginning with: ")
    );
    // The connection keeps working after errors.
    assert_eq!(s.run("PING"), R::Simple("PONG".into()));
}

#[test]
fn set_and_get_with_every_option() {
    let mut s = Session::new();
    assert_eq!(s.run("SET k v"), ok());
    assert_eq!(s.run("GET k"), bulk("v"));
    assert_eq!(s.run("GET missing"), R::Null);
    assert_eq!(s.run("SET k v2 NX"), R::Null);
    assert_eq!(s.run("SET k v2 XX"), ok());
    assert_eq!(s.run("SET other v XX"), R::Null);
    assert_eq!(s.run("SET k v3 GET"), bulk("v2"));
    assert_eq!(s.run("SET new v GET"), R::Null);
    assert_eq!(s.run("SET k v NX XX"), err("ERR syntax error"));
    assert_eq!(s.run("SET k v EX 10 PX 100"), err("ERR syntax error"));
    assert_eq!(
        s.run("SET k v EX 0"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        s.run("SET k v EX -1"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        s.run("SET k v EX x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        s.run("SET k v EX 9223372036854775807"),
        err("ERR invalid expire time in 'set' command")
    );
    assert_eq!(s.run("SET k v EX"), err("ERR syntax error"));
    assert_eq!(s.run("SET k v EX 100"), ok());
    assert_eq!(s.run("TTL k"), int(100));
    assert_eq!(s.run("SET k v2 KEEPTTL"), ok());
    assert_eq!(s.run("TTL k"), int(100));
    assert_eq!(s.run("SET k v3"), ok());
    assert_eq!(s.run("TTL k"), int(-1));
    assert_eq!(s.run("SET k v PX 1500"), ok());
    assert_eq!(s.run("PTTL k"), int(1500));
    assert_eq!(s.run("TTL k"), int(2), "rounded as Redis rounds");
    s.now_ms += 1500;
    assert_eq!(s.run("GET k"), R::Null);
    assert_eq!(s.run("TTL k"), int(-2));
    let at = (s.now_ms / 1000 + 50).to_string();
    assert_eq!(s.run(&format!("SET k v EXAT {at}")), ok());
    assert_eq!(s.run("EXPIRETIME k"), R::Integer(at.parse().unwrap()));
}

#[test]
fn wrong_types_are_refused_and_nothing_changes() {
    let mut s = Session::new();
    // A non-string value, made through the keyspace directly until the hash commands land.
    let mut h = melange_kv::value::HashValue::default();
    h.insert(b"f", b"v");
    let now = s.now_ms;
    s.server.keyspace.store(
        0,
        b"h",
        melange_kv::value::Value::Hash(Box::new(h)),
        false,
        now,
    );
    let wrongtype = err("WRONGTYPE Operation against a key holding the wrong kind of value");
    for cmd in [
        "GET h",
        "INCR h",
        "APPEND h x",
        "STRLEN h",
        "GETRANGE h 0 1",
        "SETRANGE h 0 x",
        "GETDEL h",
        "GETSET h x",
        "SET h x GET",
        "INCRBYFLOAT h 1",
        "GETEX h",
    ] {
        assert_eq!(s.run(cmd), wrongtype, "{cmd}");
    }
    assert_eq!(s.run("TYPE h"), R::Simple("hash".into()));
    assert_eq!(s.run("MGET h"), R::Array(vec![R::Null]));
    // SET without GET overwrites any type, as Redis.
    assert_eq!(s.run("SET h x"), ok());
    assert_eq!(s.run("TYPE h"), R::Simple("string".into()));
}

#[test]
fn counters_follow_redis_rules() {
    let mut s = Session::new();
    assert_eq!(s.run("INCR n"), int(1));
    assert_eq!(s.run("INCRBY n 41"), int(42));
    assert_eq!(s.run("DECR n"), int(41));
    assert_eq!(s.run("DECRBY n 41"), int(0));
    assert_eq!(s.run("SET n 01"), ok());
    assert_eq!(
        s.run("INCR n"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("SET n 9223372036854775807"), ok());
    assert_eq!(
        s.run("INCR n"),
        err("ERR increment or decrement would overflow")
    );
    assert_eq!(
        s.run("DECRBY n -9223372036854775808"),
        err("ERR decrement would overflow")
    );
    assert_eq!(
        s.run("INCRBY n x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("SET f 10.5"), ok());
    assert_eq!(s.run("INCRBYFLOAT f 0.1"), bulk("10.6"));
    assert_eq!(s.run("INCRBYFLOAT f -5"), bulk("5.6"));
    assert_eq!(s.run("INCRBYFLOAT f 4.4"), bulk("10"));
    assert_eq!(s.run("INCRBYFLOAT f 5.0e3"), bulk("5010"));
    assert_eq!(
        s.run("INCRBYFLOAT f x"),
        err("ERR value is not a valid float")
    );
    assert_eq!(
        s.run("INCRBYFLOAT f inf"),
        err("ERR increment would produce NaN or Infinity")
    );
    assert_eq!(s.run("GET f"), bulk("5010"));
}

#[test]
fn appends_ranges_and_lengths() {
    let mut s = Session::new();
    assert_eq!(s.run("APPEND k Hello"), int(5));
    assert_eq!(s.run("APPEND k World"), int(10));
    assert_eq!(s.run("STRLEN k"), int(10));
    assert_eq!(s.run("STRLEN none"), int(0));
    assert_eq!(s.run("GETRANGE k 0 4"), bulk("Hello"));
    assert_eq!(s.run("GETRANGE k -5 -1"), bulk("World"));
    assert_eq!(s.run("GETRANGE k 5 100"), bulk("World"));
    assert_eq!(s.run("GETRANGE k 7 2"), bulk(""));
    assert_eq!(s.run("GETRANGE k -1 -5"), bulk(""));
    assert_eq!(s.run("GETRANGE none 0 -1"), bulk(""));
    assert_eq!(s.run("SETRANGE k 5 _"), int(10));
    assert_eq!(s.run("GET k"), bulk("Hello_orld"));
    assert_eq!(s.run("SETRANGE pad 3 x"), int(4));
    assert_eq!(s.run("GET pad"), R::Bulk(b"\0\0\0x".to_vec()));
    assert_eq!(s.run("SETRANGE k -1 x"), err("ERR offset is out of range"));
    assert_eq!(
        s.run("SETRANGE k 536870911 xx"),
        err("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    );
    assert_eq!(s.run("SETRANGE nothing 10 "), int(0));
    assert_eq!(s.run("EXISTS nothing"), int(0));
}

#[test]
fn multi_key_string_commands() {
    let mut s = Session::new();
    assert_eq!(s.run("MSET a 1 b 2"), ok());
    assert_eq!(
        s.run("MSET a 1 b"),
        err("ERR wrong number of arguments for 'mset' command")
    );
    assert_eq!(
        s.run("MGET a b c"),
        R::Array(vec![bulk("1"), bulk("2"), R::Null])
    );
    assert_eq!(s.run("MSETNX c 3 a 9"), int(0));
    assert_eq!(s.run("GET c"), R::Null);
    assert_eq!(s.run("MSETNX c 3 d 4"), int(1));
    assert_eq!(s.run("SETNX c 9"), int(0));
    assert_eq!(s.run("GETSET c 30"), bulk("3"));
    assert_eq!(s.run("GETDEL c"), bulk("30"));
    assert_eq!(s.run("GETDEL c"), R::Null);
    assert_eq!(s.run("SETEX e 10 v"), ok());
    assert_eq!(s.run("TTL e"), int(10));
    assert_eq!(
        s.run("SETEX e 0 v"),
        err("ERR invalid expire time in 'setex' command")
    );
    assert_eq!(
        s.run("PSETEX e 0 v"),
        err("ERR invalid expire time in 'psetex' command")
    );
    assert_eq!(s.run("GETEX e PERSIST"), bulk("v"));
    assert_eq!(s.run("TTL e"), int(-1));
    assert_eq!(s.run("GETEX e EX 5"), bulk("v"));
    assert_eq!(s.run("TTL e"), int(5));
    assert_eq!(s.run("GETEX e EX 5 PERSIST"), err("ERR syntax error"));
}

#[test]
fn keys_expiry_and_conditions() {
    let mut s = Session::new();
    s.run("SET k v");
    assert_eq!(s.run("EXPIRE k 100 XX"), int(0));
    assert_eq!(
        s.run("EXPIRE k 100 GT"),
        int(0),
        "no TTL counts as infinite"
    );
    assert_eq!(s.run("EXPIRE k 100 NX"), int(1));
    assert_eq!(s.run("EXPIRE k 50 NX"), int(0));
    assert_eq!(s.run("EXPIRE k 50 GT"), int(0));
    assert_eq!(s.run("EXPIRE k 200 GT"), int(1));
    assert_eq!(s.run("EXPIRE k 150 LT"), int(1));
    assert_eq!(s.run("TTL k"), int(150));
    assert_eq!(
        s.run("EXPIRE k 1 NX XX"),
        err("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        s.run("EXPIRE k 1 GT LT"),
        err("ERR GT and LT options at the same time are not compatible")
    );
    assert_eq!(s.run("EXPIRE k 1 FOO"), err("ERR Unsupported option FOO"));
    assert_eq!(s.run("EXPIRE missing 10"), int(0));
    assert_eq!(s.run("PERSIST k"), int(1));
    assert_eq!(s.run("PERSIST k"), int(0));
    assert_eq!(s.run("PEXPIRE k 2500"), int(1));
    assert_eq!(s.run("PTTL k"), int(2500));
    assert_eq!(s.run("EXPIRE k -1"), int(1), "a past time deletes");
    assert_eq!(s.run("EXISTS k"), int(0));
    assert_eq!(
        s.run("EXPIRE k 9223372036854775807"),
        err("ERR invalid expire time in 'expire' command")
    );
    s.run("SET k v");
    let at = s.now_ms + 10_000;
    assert_eq!(s.run(&format!("PEXPIREAT k {at}")), int(1));
    assert_eq!(s.run("PEXPIRETIME k"), R::Integer(at as i64));
    assert_eq!(s.run("EXPIRETIME nokey"), int(-2));
}

#[test]
fn rename_copy_move_swap_and_flush() {
    let mut s = Session::new();
    assert_eq!(s.run("RENAME a b"), err("ERR no such key"));
    s.run("SET a 1");
    s.run("EXPIRE a 100");
    assert_eq!(s.run("RENAME a b"), ok());
    assert_eq!(s.run("TTL b"), int(100), "the TTL moves with the key");
    assert_eq!(s.run("EXISTS a"), int(0));
    s.run("SET c 3");
    assert_eq!(s.run("RENAMENX b c"), int(0));
    assert_eq!(s.run("RENAMENX b d"), int(1));
    assert_eq!(s.run("RENAME d d"), ok());
    assert_eq!(s.run("COPY d e"), int(1));
    assert_eq!(s.run("COPY d e"), int(0));
    assert_eq!(s.run("COPY d e REPLACE"), int(1));
    assert_eq!(
        s.run("COPY d d"),
        err("ERR source and destination objects are the same")
    );
    assert_eq!(s.run("COPY d x DB 16"), err("ERR DB index is out of range"));
    assert_eq!(s.run("COPY d x DB 3"), int(1));
    assert_eq!(s.run("MOVE d 3"), int(1));
    assert_eq!(
        s.run("MOVE c 0"),
        err("ERR source and destination objects are the same")
    );
    assert_eq!(s.run("DBSIZE"), int(2));
    assert_eq!(s.run("SELECT 3"), ok());
    assert_eq!(s.run("DBSIZE"), int(2));
    assert_eq!(s.run("SELECT 16"), err("ERR DB index is out of range"));
    assert_eq!(
        s.run("SELECT x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("SWAPDB 0 3"), ok());
    assert_eq!(s.run("GET c"), bulk("3"));
    assert_eq!(s.run("SWAPDB x 3"), err("ERR invalid first DB index"));
    assert_eq!(s.run("SWAPDB 0 y"), err("ERR invalid second DB index"));
    assert_eq!(s.run("FLUSHDB"), ok());
    assert_eq!(s.run("DBSIZE"), int(0));
    assert_eq!(s.run("FLUSHALL SYNC"), ok());
    assert_eq!(s.run("FLUSHALL NOW"), err("ERR syntax error"));
    assert_eq!(s.run("SELECT 0"), ok());
    assert_eq!(s.run("DBSIZE"), int(0));
    assert_eq!(s.run("RANDOMKEY"), R::Null);
}

#[test]
fn del_exists_keys_and_scan() {
    let mut s = Session::new();
    for i in 0..50 {
        s.run(&format!("SET user:{i} x"));
    }
    s.run("SET other x");
    assert_eq!(s.run("EXISTS user:1 user:1 nokey"), int(2));
    let R::Array(keys) = s.run("KEYS user:1*") else {
        panic!()
    };
    assert_eq!(keys.len(), 11); // user:1, user:10..19
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let R::Array(reply) = s.run(&format!("SCAN {cursor} MATCH user:* COUNT 7")) else {
            panic!()
        };
        let [R::Bulk(next), R::Array(batch)] = &reply[..] else {
            panic!("{reply:?}")
        };
        seen.extend(batch.iter().cloned());
        cursor = String::from_utf8(next.clone()).unwrap();
        if cursor == "0" {
            break;
        }
    }
    seen.sort_by_key(|v| format!("{v:?}"));
    seen.dedup();
    assert_eq!(seen.len(), 50);
    assert_eq!(s.run("SCAN x"), err("ERR invalid cursor"));
    assert_eq!(s.run("SCAN 0 COUNT 0"), err("ERR syntax error"));
    let R::Array(reply) = s.run("SCAN 0 TYPE hash COUNT 1000") else {
        panic!()
    };
    assert_eq!(reply[1], R::Array(vec![]));
    assert_eq!(s.run("DEL user:1 user:2 nokey"), int(2));
    assert_eq!(s.run("UNLINK user:3"), int(1));
    assert_eq!(s.run("TOUCH user:4 nokey"), int(1));
    assert_eq!(s.run("TYPE nokey"), R::Simple("none".into()));
    assert_eq!(s.run("OBJECT ENCODING user:4"), bulk("embstr"));
    assert_eq!(s.run("OBJECT ENCODING nokey"), R::Null);
    assert_eq!(s.run("OBJECT IDLETIME user:4"), int(0));
}

#[test]
fn transactions_queue_execute_and_abort() {
    let mut s = Session::new();
    assert_eq!(s.run("EXEC"), err("ERR EXEC without MULTI"));
    assert_eq!(s.run("DISCARD"), err("ERR DISCARD without MULTI"));
    assert_eq!(s.run("MULTI"), ok());
    assert_eq!(s.run("MULTI"), err("ERR MULTI calls can not be nested"));
    assert_eq!(s.run("SET a 1"), R::Simple("QUEUED".into()));
    assert_eq!(s.run("INCR a"), R::Simple("QUEUED".into()));
    assert_eq!(s.run("EXEC"), R::Array(vec![ok(), int(2)]));
    // An error while queueing aborts EXEC.
    s.run("MULTI");
    s.run("SET a 5");
    assert_eq!(
        s.run("GET"),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        s.run("EXEC"),
        err("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(s.run("GET a"), bulk("2"));
    // Run-time errors do not abort the others.
    s.run("SET s notanumber");
    s.run("MULTI");
    s.run("INCR s");
    s.run("INCR a");
    assert_eq!(
        s.run("EXEC"),
        R::Array(vec![
            err("ERR value is not an integer or out of range"),
            int(3)
        ])
    );
    // WATCH: a change by another client makes EXEC return the null array.
    assert_eq!(s.run("WATCH a"), ok());
    let mut other = s.server.new_client();
    let mut out = Recorder::new();
    s.server
        .execute(&mut other, &[b"INCR", b"a"], s.now_ms, &mut out);
    s.run("MULTI");
    s.run("SET a 100");
    assert_eq!(s.run("EXEC"), R::NullArray);
    assert_eq!(s.run("GET a"), bulk("4"));
    // Unchanged watched keys let it through, and EXEC unwatches.
    s.run("WATCH a nokey");
    s.run("MULTI");
    assert_eq!(
        s.run("WATCH a"),
        err("ERR WATCH inside MULTI is not allowed")
    );
    s.run("SET a 100");
    assert_eq!(s.run("EXEC"), R::Array(vec![ok()]));
    s.run("MULTI");
    assert_eq!(s.run("DISCARD"), ok());
    assert_eq!(s.run("GET a"), bulk("100"));
}

#[test]
fn authentication_gates_every_command_but_the_connection_ones() {
    let mut s = Session::with(Config {
        requirepass: Some(b"secret".to_vec()),
        ..Config::default()
    });
    assert_eq!(s.run("GET a"), err("NOAUTH Authentication required."));
    assert_eq!(
        s.run("AUTH wrong"),
        err("WRONGPASS invalid username-password pair or user is disabled.")
    );
    assert_eq!(
        s.run("AUTH someone secret"),
        err("WRONGPASS invalid username-password pair or user is disabled.")
    );
    assert_eq!(s.run("AUTH default secret"), ok());
    assert_eq!(s.run("GET a"), R::Null);
    assert_eq!(s.run("RESET"), R::Simple("RESET".into()));
    assert_eq!(s.run("GET a"), err("NOAUTH Authentication required."));
    let R::Map(fields) = s.run("HELLO 3 AUTH default secret SETNAME app") else {
        panic!()
    };
    assert_eq!(fields[2], (bulk("proto"), int(3)));
    assert_eq!(s.client.resp, 3);
    assert_eq!(s.run("CLIENT GETNAME"), bulk("app"));

    let mut open = Session::new();
    assert_eq!(
        open.run("AUTH x"),
        err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
    );
    assert_eq!(
        open.run("HELLO 4"),
        err("NOPROTO unsupported protocol version")
    );
}

#[test]
fn connection_and_server_commands() {
    let mut s = Session::new();
    assert_eq!(s.run("PING hi"), bulk("hi"));
    assert_eq!(s.run("ECHO hi"), bulk("hi"));
    assert_eq!(s.run("CLIENT ID"), int(1));
    assert_eq!(s.run("CLIENT SETNAME app"), ok());
    assert_eq!(
        s.run_args(&[b"CLIENT", b"SETNAME", b"my app"]),
        err("ERR Client names cannot contain spaces, newlines or special characters.")
    );
    assert_eq!(s.run("CLIENT GETNAME"), bulk("app"));
    assert_eq!(s.run("CLIENT SETINFO lib-name redis-py"), ok());
    assert_eq!(
        s.run("CLIENT NOPE"),
        err("ERR unknown subcommand 'NOPE'. Try CLIENT HELP.")
    );
    assert_eq!(s.run("CONFIG SET maxmemory 10mb"), ok());
    assert_eq!(
        s.run("CONFIG GET maxmemory"),
        R::Map(vec![(bulk("maxmemory"), bulk("10485760"))])
    );
    let R::Map(all) = s.run("CONFIG GET maxmemory*") else {
        panic!()
    };
    assert_eq!(all.len(), 3);
    assert_eq!(s.run("CONFIG SET maxmemory-policy allkeys-lru"), ok());
    assert!(matches!(
        s.run("CONFIG SET maxmemory-policy nope"),
        R::Error(_)
    ));
    assert!(matches!(s.run("CONFIG SET databases 32"), R::Error(_)));
    let R::Verbatim(_, info) = s.run("INFO") else {
        panic!()
    };
    let info = String::from_utf8(info).unwrap();
    for field in [
        "redis_version:",
        "redis_mode:standalone",
        "arch_bits:64",
        "cluster_enabled:0",
        "used_memory:",
    ] {
        assert!(info.contains(field), "{field} in {info}");
    }
    assert_eq!(s.run("COMMAND COUNT"), R::Integer(table().len() as i64));
    assert_eq!(s.run("COMMAND GETKEYS MSET a 1 b 2"), R::bulks(["a", "b"]));
    assert_eq!(s.run("QUIT"), ok());
    assert!(s.client.close_after_reply);
}

#[test]
fn maxmemory_with_noeviction_refuses_writes_but_serves_reads() {
    let mut s = Session::new();
    s.run("SET a 1");
    s.run("CONFIG SET maxmemory 1");
    assert_eq!(
        s.run("SET b 2"),
        err("OOM command not allowed when used memory > 'maxmemory'.")
    );
    assert_eq!(s.run("GET a"), bulk("1"));
    assert_eq!(s.run("DEL a"), int(1));
    assert_eq!(s.run("SET b 2"), ok(), "under the limit again");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
    #[test]
    fn any_command_sequence_keeps_the_keyspace_consistent(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        melange_kv::fuzz::commands(&data);
    }
}

/// Found by the differential test against redis-server (scripts/kv_differential.py): Redis
/// looks subcommands up like commands, so an unknown one or a wrong count has its own words
/// and is refused before a transaction queues it.
#[test]
fn subcommands_are_checked_before_the_command_runs() {
    let mut s = Session::new();
    assert_eq!(
        s.run("object BOGUS k"),
        err("ERR unknown subcommand 'BOGUS'. Try OBJECT HELP.")
    );
    assert_eq!(
        s.run("OBJECT encoding"),
        err("ERR wrong number of arguments for 'object|encoding' command")
    );
    assert_eq!(
        s.run("CONFIG GET"),
        err("ERR wrong number of arguments for 'config|get' command")
    );
    assert_eq!(s.run("MULTI"), ok());
    assert_eq!(
        s.run("OBJECT BOGUS k"),
        err("ERR unknown subcommand 'BOGUS'. Try OBJECT HELP.")
    );
    assert_eq!(
        s.run("EXEC"),
        err("EXECABORT Transaction discarded because of previous errors.")
    );
}

/// Found by the differential test: EXPIRE checks its flags before its time, and GETEX looks
/// the key up before it reads the time, as Redis does.
#[test]
fn expire_flags_and_getex_key_come_before_the_time() {
    let mut s = Session::new();
    assert_eq!(
        s.run("EXPIRE k x NX XX"),
        err("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(s.run("EXPIRE k x BAD"), err("ERR Unsupported option BAD"));
    assert_eq!(
        s.run("EXPIRE k x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("GETEX k EX x"), R::Null);
    assert_eq!(s.run("GETEX k EX 0"), R::Null);
    assert_eq!(s.run("GETEX k PERSIST EX 1"), err("ERR syntax error"));
    assert_eq!(s.run("LPUSH l a"), int(1));
    assert_eq!(
        s.run("GETEX l EX x"),
        err("WRONGTYPE Operation against a key holding the wrong kind of value")
    );
    assert_eq!(s.run("SET k v"), ok());
    assert_eq!(
        s.run("GETEX k EX x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        s.run("GETEX k EX 0"),
        err("ERR invalid expire time in 'getex' command")
    );
    assert_eq!(s.run("GETEX k EX 100"), bulk("v"));
    assert_eq!(s.run("TTL k"), int(100));
}

/// Found by the differential test: strtold takes hex floats, and a large integral result is
/// printed with all its digits.
#[test]
fn incrbyfloat_takes_hex_and_prints_exact_integers() {
    let mut s = Session::new();
    assert_eq!(s.run("SET k 0x10"), ok());
    assert_eq!(s.run("INCRBYFLOAT k -0.0001"), bulk("15.9999"));
    assert_eq!(s.run("INCRBYFLOAT n 0x1p4"), bulk("16"));
    assert_eq!(s.run("SET big 9223372036854775807"), ok());
    assert_eq!(s.run("INCRBYFLOAT big 1.5"), bulk("9223372036854775808"));
    assert_eq!(s.run("HINCRBYFLOAT h f 0x1.8"), bulk("1.5"));
    assert_eq!(
        s.run("INCRBYFLOAT k 0x"),
        err("ERR value is not a valid float")
    );
}

/// Found by the differential test: SET parses its whole syntax before the time, and
/// INCRBYFLOAT checks the key before the increment.
#[test]
fn set_syntax_before_time_and_incrbyfloat_type_before_increment() {
    let mut s = Session::new();
    assert_eq!(s.run("SET k v EXAT XX 4000000000"), err("ERR syntax error"));
    assert_eq!(
        s.run("SET k v EX x"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(s.run("LPUSH l a"), int(1));
    assert_eq!(
        s.run("INCRBYFLOAT l abc"),
        err("WRONGTYPE Operation against a key holding the wrong kind of value")
    );
    assert_eq!(s.run("SET s text"), ok());
    assert_eq!(
        s.run("INCRBYFLOAT s abc"),
        err("ERR value is not a valid float")
    );
    assert_eq!(
        s.run("INCRBYFLOAT n abc"),
        err("ERR value is not a valid float")
    );
}
