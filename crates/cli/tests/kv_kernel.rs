//! End-to-end: `melange kv --backend kernel` on 127.0.0.1 serves Redis' own tools and the
//! common client library unmodified: `redis-benchmark` runs every one of its default tests,
//! `redis-cli` reads and writes, redis-py pipelines with MULTI/EXEC (its default) and moves a
//! 20 MiB value, hostile clients get Redis' errors and are closed without harming the others,
//! and two engines serve one keyspace.
//!
//! The tools come from `scripts/setup.sh` (redis-tools, python3-redis). In CI (`CI=true`) a
//! missing tool fails the test; elsewhere the test says what it skipped. No root is needed.

mod common;

use common::kv::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn redis_benchmark_runs_every_default_test_and_redis_cli_reads_back() {
    if !melange_sys::testenv::tool_or_skip("kv redis-benchmark test", "redis-benchmark") {
        return;
    }
    let kv = Kv::start(&[]);
    let bench = Command::new("redis-benchmark")
        .args(["-p", &kv.port.to_string(), "-q", "-n", "2000", "-c", "20"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&bench.stdout).replace('\r', "\n");
    assert!(bench.status.success(), "{}", text(&bench));
    // Every default test of redis-benchmark 7.0, each with its result line.
    for test in [
        "PING_INLINE",
        "PING_MBULK",
        "SET",
        "GET",
        "INCR",
        "LPUSH",
        "RPUSH",
        "LPOP",
        "RPOP",
        "SADD",
        "HSET",
        "SPOP",
        "ZADD",
        "ZPOPMIN",
        "LRANGE_100",
        "LRANGE_300",
        "LRANGE_500",
        "LRANGE_600",
        "MSET",
    ] {
        assert!(
            report
                .lines()
                .any(|l| l.trim_start().starts_with(test) && l.contains("requests per second")),
            "no result for {test}:\n{report}"
        );
    }
    // What the benchmark wrote is there, as Redis would hold it.
    assert!(
        redis_cli(kv.port, &["LLEN", "mylist"])
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(redis_cli(kv.port, &["TYPE", "myhash"]), "hash");
    // Its values are 3 bytes (`-d 3`).
    assert_eq!(redis_cli(kv.port, &["STRLEN", "key:__rand_int__"]), "3");
    assert_eq!(redis_cli(kv.port, &["SET", "greeting", "hello"]), "OK");
    assert_eq!(redis_cli(kv.port, &["APPEND", "greeting", " world"]), "11");
    assert_eq!(redis_cli(kv.port, &["GET", "greeting"]), "hello world");
    assert_eq!(redis_cli(kv.port, &["EXPIRE", "greeting", "100"]), "1");
    let ttl: u64 = redis_cli(kv.port, &["TTL", "greeting"]).parse().unwrap();
    assert!((99..=100).contains(&ttl));
    let info = redis_cli(kv.port, &["INFO", "server"]);
    assert!(info.contains("redis_version:7.2.0") && info.contains("redis_mode:standalone"));
    let out = kv.stop();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn redis_py_pipelines_transactions_and_a_20_mib_value() {
    let has_redis_py = Command::new(PYTHON)
        .args(["-c", "import redis"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_redis_py {
        melange_sys::testenv::skip_or_fail(
            "kv redis-py test",
            "python3-redis is not installed (run scripts/setup.sh)",
        );
        return;
    }
    let kv = Kv::start(&[]);
    let script = r#"
import sys, redis
r = redis.Redis(port=int(sys.argv[1]))
assert r.ping()
p = r.pipeline()  # transaction=True: MULTI ... EXEC
p.set('n', 1).incr('n').incrbyfloat('n', 0.5).get('n').hset('h', mapping={'f': 'v', 'g': 'w'}).hgetall('h')
assert p.execute() == [True, 2, 2.5, b'2.5', 2, {b'f': b'v', b'g': b'w'}], 'pipeline'
p = r.pipeline(transaction=False)
for i in range(1000):
    p.set(f'k{i}', i)
assert all(p.execute())
assert r.mget('k0', 'k999', 'nope') == [b'0', b'999', None]
assert r.zadd('z', {'a': 1.5, 'b': 2}) == 2
assert r.zrange('z', 0, -1, withscores=True) == [(b'a', 1.5), (b'b', 2.0)]
assert r.rpush('l', 'a', 'b', 'c') == 3 and r.lrange('l', 0, -1) == [b'a', b'b', b'c']
assert r.sadd('s', 'x', 'y') == 2 and r.smembers('s') == {b'x', b'y'}
with r.pipeline() as w:
    w.watch('n')
    w.multi()
    w.set('n', 10)
    assert w.execute() == [True]
big = bytes(range(256)) * (20 * 4096)
assert r.set('big', big) and r.get('big') == big, 'big value'
try:
    r.lpush('n', 1)
    raise SystemExit('no WRONGTYPE')
except redis.ResponseError as e:
    assert str(e) == 'WRONGTYPE Operation against a key holding the wrong kind of value', e
assert r.client_setname('py') and r.client_getname() == 'py'  # redis-py decodes it
assert r.info()['redis_version'] == '7.2.0'
keys = set()
for k in r.scan_iter(match='k1*', count=50):
    keys.add(k)
assert len(keys) == 111, len(keys)
print('redis-py ok')
"#;
    let out = Command::new(PYTHON)
        .args(["-c", script, &kv.port.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("redis-py ok"));
    let out = kv.stop();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn hostile_clients_get_redis_errors_and_the_others_keep_being_served() {
    let kv = Kv::start(&["--requirepass", "s3cret"]);
    let mut good = kv.connect();
    good.write_all(b"AUTH s3cret\r\n").unwrap();
    expect_reply(&mut good, b"+OK\r\n");

    // Not authenticated: refused, the connection stays.
    let mut stranger = kv.connect();
    stranger.write_all(b"GET x\r\n").unwrap();
    expect_reply(&mut stranger, b"-NOAUTH Authentication required.\r\n");
    // Unauthenticated clients may not announce big requests (Redis' rule).
    stranger.write_all(b"*100000\r\n").unwrap();
    let got = read_to_close(&mut stranger);
    assert_eq!(
        got,
        b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    );

    // A protocol error: Redis' words, then the connection closes.
    let mut broken = kv.connect();
    broken
        .write_all(b"AUTH s3cret\r\n*2\r\n$3\r\nGET\r\n+oops\r\n")
        .unwrap();
    assert_eq!(
        read_to_close(&mut broken),
        b"+OK\r\n-ERR Protocol error: expected '$', got '+'\r\n"
    );

    // A bulk length past proto-max-bulk-len is refused before anything is allocated.
    let mut greedy = kv.connect();
    greedy
        .write_all(b"AUTH s3cret\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$99999999999\r\n")
        .unwrap();
    assert_eq!(
        read_to_close(&mut greedy),
        b"+OK\r\n-ERR Protocol error: invalid bulk length\r\n"
    );

    // Random bytes from many clients at once.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut noisy: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = kv.connect();
            let bytes: Vec<u8> = (0..4096)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            let _ = s.write_all(&bytes);
            s
        })
        .collect();

    // Meanwhile the good client is served, errors included, and keeps its connection.
    good.write_all(b"SET a 1\r\nINCR a\r\nNOSUCH x\r\nLPUSH a b\r\nGET a\r\n")
        .unwrap();
    expect_reply(
        &mut good,
        b"+OK\r\n:2\r\n-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n\
          -WRONGTYPE Operation against a key holding the wrong kind of value\r\n$1\r\n2\r\n",
    );
    for s in &mut noisy {
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    drop(noisy);
    // Every hostile connection is gone: the good one is the only client left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        good.write_all(b"INFO clients\r\n").unwrap();
        let mut buf = vec![0u8; 4096];
        let n = good.read(&mut buf).unwrap();
        let info = String::from_utf8_lossy(&buf[..n]).into_owned();
        if info.contains("connected_clients:1\r\n") {
            break;
        }
        assert!(Instant::now() < deadline, "clients never went away: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = kv.stop();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("protocol_errors"), "{}", text(&out));
}

#[test]
fn two_engines_serve_one_keyspace() {
    let kv = Kv::start(&["--engines", "2"]);
    // Enough connections that SO_REUSEPORT gives both engines some.
    let mut clients: Vec<TcpStream> = (0..16).map(|_| kv.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(format!("SET key{i} value{i}\r\n").as_bytes())
            .unwrap();
        expect_reply(c, b"+OK\r\n");
    }
    // Each client reads every key, whichever engine wrote it.
    for c in clients.iter_mut() {
        for i in 0..16 {
            c.write_all(format!("GET key{i}\r\n").as_bytes()).unwrap();
            let value = format!("value{i}");
            expect_reply(c, format!("${}\r\n{value}\r\n", value.len()).as_bytes());
        }
    }
    clients[0].write_all(b"DBSIZE\r\n").unwrap();
    expect_reply(&mut clients[0], b":16\r\n");
    drop(clients);
    let out = kv.stop();
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    // Both engines accepted connections.
    for engine in [
        "engine 0: KvCounters { accepted: ",
        "engine 1: KvCounters { accepted: ",
    ] {
        let at = log
            .find(engine)
            .unwrap_or_else(|| panic!("no report of {engine}:\n{log}"));
        let n: u64 = log[at + engine.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(n > 0, "{engine}0: the kernel gave it no connection\n{log}");
    }
}

#[test]
fn a_bad_configuration_is_refused_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("melange-kv-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("redis.conf");
    std::fs::write(&conf, "port 7001\nmaxmemory 1gb\nfrobnicate yes\n").unwrap();
    let out = Command::new(MELANGE)
        .args(["kv", "--config", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = text(&out);
    assert!(
        log.contains("redis.conf:3") && log.contains("frobnicate"),
        "{log}"
    );
    let out = Command::new(MELANGE)
        .args(["kv", "--maxmemory", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("memory size 'lots'"), "{}", text(&out));
    // The port is taken: the error says by what and what to do.
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(MELANGE)
        .args(["kv", "--resp-port", &port, "--duration", "5s"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("cannot serve Redis on 127.0.0.1:{port}"))
            && text(&out).contains("pick other ports with --resp-port"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
