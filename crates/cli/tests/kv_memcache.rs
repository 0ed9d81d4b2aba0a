//! End-to-end: memcached's clients against `melange kv --memcache-port --memcache-udp-port`
//! on the kernel backend, compared with a real memcached (1.6.18, the version whose
//! behaviour `melange_kv::memcached` follows) started beside it.
//!
//! - The same text and meta requests go to both servers over TCP, one at a time, each
//!   followed by `mn` (the meta no-op, answered `MN`) so that the end of every reply is known
//!   without timing; the replies must match byte for byte. Requests whose reply carries
//!   state the two servers cannot share (`stats`, CAS uniques, `version`'s build) are left
//!   out of that comparison and checked on their own.
//! - pymemcache, a client operators use, runs the same program against both, and the
//!   results must match.
//! - `get` over UDP, a reply split over several datagrams with memcached's frame header.
//! - memcslap (libmemcached) loads melange kv and must see no errors.
//!
//! The tools come from `scripts/setup.sh` (memcached, libmemcached-tools,
//! python3-pymemcache). In CI (`CI=true`) a missing tool fails the test; elsewhere the test
//! says what it skipped. No root is needed.

mod common;

use common::kv::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real memcached on 127.0.0.1, killed when dropped.
struct Memcached {
    child: Child,
    port: u16,
}

impl Memcached {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new("memcached")
            .args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "1",
            ])
            .args(["-u", "root"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting memcached");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "memcached never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Memcached { child, port }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `melange kv` with memcached on a TCP and a UDP port; returns it and the two ports.
fn start_kv() -> (Kv, u16, u16) {
    let tcp = free_port();
    let udp = free_port();
    let kv = Kv::start(&[
        "--memcache-port",
        &tcp.to_string(),
        "--memcache-udp-port",
        &udp.to_string(),
    ]);
    (kv, tcp, udp)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `request` then `mn`, and returns what came back before `MN\r\n`.
fn ask(s: &mut TcpStream, request: &[u8]) -> Vec<u8> {
    s.write_all(request).unwrap();
    s.write_all(b"mn\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.ends_with(b"MN\r\n") {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("reply to {:?}: {e}", String::from_utf8_lossy(request)));
        assert!(
            n > 0,
            "closed while answering {:?}",
            String::from_utf8_lossy(request)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got.truncate(got.len() - 4);
    got
}

/// Requests whose replies both servers must give identically. Numbers, flags, expiry
/// rules, `noreply`, errors and the meta flags that do not return CAS uniques.
fn requests() -> Vec<Vec<u8>> {
    let big = vec![b'b'; 100_000];
    let mut big_set = b"set big 3 0 100000\r\n".to_vec();
    big_set.extend_from_slice(&big);
    big_set.extend_from_slice(b"\r\n");
    let mut r: Vec<Vec<u8>> = [
        "get nothing\r\n",
        "set a 0 0 1\r\nx\r\n",
        "get a\r\n",
        "set b 4294967295 0 3\r\nabc\r\n",
        "get a b nothing\r\n",
        "add a 0 0 1\r\ny\r\n",
        "add c 0 0 1\r\ny\r\n",
        "replace nothing 0 0 1\r\ny\r\n",
        "replace c 1 0 2\r\nzz\r\n",
        "append c 0 0 2\r\n++\r\n",
        "prepend c 0 0 2\r\n--\r\n",
        "append nothing 0 0 1\r\nx\r\n",
        "get c\r\n",
        "set n 0 0 2\r\n10\r\n",
        "incr n 5\r\n",
        "decr n 100\r\n",
        "incr n 18446744073709551615\r\n",
        "set m 0 0 3\r\n100\r\n",
        "decr m 91\r\n",
        "get m\r\n",
        "incr a 1\r\n",
        "incr nothing 1\r\n",
        "incr n abc\r\n",
        "touch a 100\r\n",
        "touch nothing 100\r\n",
        "gat 100 a b\r\n",
        "delete a\r\n",
        "delete a\r\n",
        "delete b noreply\r\n",
        "get a b\r\n",
        "set e 0 -1 1\r\nx\r\n",
        "get e\r\n",
        "set s 0 0 1 noreply\r\nq\r\n",
        "get s\r\n",
        "set bad 0 0 2\r\ntoolong\r\n",
        "set k 0 0 notanumber\r\n",
        "get\r\n",
        "bogus command\r\n",
        "verbosity 1\r\n",
        "ms mk 2 T0 F7\r\nhi\r\n",
        "mg mk v f s k\r\n",
        "mg mk t v\r\n",
        "mg missing v\r\n",
        "mg missing v q\r\n",
        "ma n\r\n",
        "ma n MD D3 v\r\n",
        "ma nothing N0 J13 v\r\n",
        "md mk q\r\n",
        "md mk\r\n",
        "mg mk v\r\n",
        "ms mk 2 MA\r\nhi\r\n",
        "flush_all noreply\r\n",
        "get n m c\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    r.push(big_set);
    r.push(b"get big\r\n".to_vec());
    let key250 = "k".repeat(250);
    let key251 = "k".repeat(251);
    r.push(format!("set {key250} 0 0 1\r\n1\r\n").into_bytes());
    r.push(format!("get {key250}\r\n").into_bytes());
    r.push(format!("get {key251}\r\n").into_bytes());
    r
}

fn tools(what: &str, tools: &[&str]) -> bool {
    tools
        .iter()
        .all(|tool| melange_sys::testenv::tool_or_skip(what, tool))
}

#[test]
fn memcached_requests_get_the_replies_memcached_gives() {
    if !tools("kv memcached differential", &["memcached"]) {
        return;
    }
    let real = Memcached::start();
    let (kv, port, _) = start_kv();
    let mut theirs = connect(real.port);
    let mut ours = connect(port);
    for request in requests() {
        let expected = ask(&mut theirs, &request);
        let got = ask(&mut ours, &request);
        let shown = String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "request {shown:?}"
        );
    }
    // CAS: the uniques differ between servers; the rules must not.
    for s in [&mut theirs, &mut ours] {
        ask(s, b"set c1 0 0 1\r\nx\r\n");
        let gets = String::from_utf8(ask(s, b"gets c1\r\n")).unwrap();
        let unique: u64 = gets
            .split_whitespace()
            .nth(4)
            .and_then(|u| u.parse().ok())
            .unwrap_or_else(|| panic!("a CAS unique in {gets:?}"));
        assert_eq!(
            ask(
                s,
                format!("cas c1 0 0 1 {}\r\ny\r\n", unique + 1).as_bytes()
            ),
            b"EXISTS\r\n"
        );
        assert_eq!(
            ask(s, format!("cas c1 0 0 1 {unique}\r\ny\r\n").as_bytes()),
            b"STORED\r\n"
        );
        assert_eq!(
            ask(s, format!("cas c1 0 0 1 {unique}\r\nz\r\n").as_bytes()),
            b"EXISTS\r\n"
        );
        assert_eq!(ask(s, b"cas none 0 0 1 1\r\nz\r\n"), b"NOT_FOUND\r\n");
    }
    let stats = String::from_utf8(ask(&mut ours, b"stats\r\n")).unwrap();
    assert!(
        stats.starts_with(&format!("STAT pid {}\r\n", kv.pid())),
        "{stats}"
    );
    assert!(stats.contains("STAT curr_connections 1\r\n"), "{stats}");
    assert!(stats.ends_with("END\r\n"), "{stats}");
    assert_eq!(ask(&mut ours, b"version\r\n"), b"VERSION 1.6.18\r\n");
    drop(ours);
    let log = text(&kv.stop());
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn pymemcache_sees_what_it_sees_with_memcached() {
    if !tools("kv pymemcache test", &["memcached", PYTHON]) {
        return;
    }
    let program = r#"
import sys
from pymemcache.client.base import Client
out = []
c = Client(("127.0.0.1", int(sys.argv[1])), default_noreply=False)
out.append(c.set("k", b"v", expire=100))
out.append(c.get("k"))
out.append(c.add("k", b"w"))
out.append(c.replace("k", b"w"))
out.append(c.append("k", b"+"))
out.append(c.prepend("k", b"-"))
out.append(c.get("k"))
out.append(c.set_many({"a": b"1", "b": b"2", "c": b"3"}))
out.append(sorted(c.get_many(["a", "b", "c", "zz"]).items()))
out.append(c.incr("a", 41))
out.append(c.decr("a", 100))
out.append(c.incr("zz", 1))
value, unique = c.gets("b")
out.append(value)
out.append(c.cas("b", b"22", unique))
out.append(c.cas("b", b"23", unique))
out.append(c.get("b"))
out.append(c.touch("b", 50))
out.append(c.touch("zz", 50))
out.append(c.delete("b"))
out.append(c.delete("b"))
out.append(c.get("b"))
out.append(c.set("big", b"x" * 500000))
out.append(len(c.get("big")))
try:
    c.set("huge", b"x" * (2 << 20))
    out.append("stored huge")
except Exception as e:
    out.append(type(e).__name__ + ": " + str(e))
out.append(c.get("huge"))
out.append(c.flush_all())
out.append(c.get("k"))
print(repr(out))
"#;
    let run = |port: u16| {
        let out = Command::new(PYTHON)
            .args(["-c", program, &port.to_string()])
            .output()
            .expect("running python3");
        assert!(out.status.success(), "pymemcache program: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let check = Command::new(PYTHON)
        .args(["-c", "import pymemcache"])
        .output()
        .expect("running python3");
    if !check.status.success() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "python3-pymemcache is missing; run scripts/setup.sh"
        );
        eprintln!("skipping the pymemcache test: python3-pymemcache is missing (sudo bash scripts/setup.sh)");
        return;
    }
    let real = Memcached::start();
    let (kv, port, _) = start_kv();
    let expected = run(real.port);
    let got = run(port);
    println!("pymemcache against both: {got}");
    assert_eq!(got, expected);
    drop(kv);
}

#[test]
fn get_over_udp_answers_in_datagrams_with_the_request_id() {
    let (kv, tcp, udp) = start_kv();
    let value = vec![b'u'; 4000];
    let mut s = connect(tcp);
    let mut set = b"set uk 0 0 4000\r\n".to_vec();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    assert_eq!(ask(&mut s, &set), b"STORED\r\n");
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut request = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0];
    request.extend_from_slice(b"get uk\r\n");
    socket
        .send_to(&request, (Ipv4Addr::LOCALHOST, udp))
        .unwrap();
    let expected: Vec<u8> = [b"VALUE uk 0 4000\r\n".as_slice(), &value, b"\r\nEND\r\n"].concat();
    let total = expected.len().div_ceil(1392);
    let mut parts = vec![Vec::new(); total];
    for _ in 0..total {
        let mut buf = [0u8; 2048];
        let (n, _) = socket.recv_from(&mut buf).expect("a reply datagram");
        assert!(n <= 1400, "datagram of {n} bytes");
        let (id, seq, count) = (
            u16::from_be_bytes([buf[0], buf[1]]),
            u16::from_be_bytes([buf[2], buf[3]]) as usize,
            u16::from_be_bytes([buf[4], buf[5]]) as usize,
        );
        assert_eq!((id, count), (0x1234, total));
        parts[seq] = buf[8..n].to_vec();
    }
    assert_eq!(parts.concat(), expected);
    drop(kv);
}

#[test]
fn memcslap_loads_without_errors() {
    if !tools("kv memcslap test", &["memcslap"]) {
        return;
    }
    let (kv, port, _) = start_kv();
    let out = Command::new("memcslap")
        .args([
            &format!("--servers=127.0.0.1:{port}"),
            "--concurrency=20",
            "--execute-number=2000",
        ])
        .output()
        .expect("running memcslap");
    let report = text(&out);
    println!("{report}");
    assert!(out.status.success(), "memcslap failed: {report}");
    assert!(report.contains("Time to set"), "{report}");
    assert!(!report.to_lowercase().contains("failure"), "{report}");
    let mut s = connect(port);
    let stats = String::from_utf8(ask(&mut s, b"stats\r\n")).unwrap();
    let sets: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("STAT cmd_set "))
        .and_then(|v| v.parse().ok())
        .expect("cmd_set in stats");
    assert!(sets >= 20 * 2000, "memcslap's sets were counted: {stats}");
    let log = text(&kv.stop());
    assert!(!log.contains("panicked"), "{log}");
}
