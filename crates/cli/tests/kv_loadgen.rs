//! End-to-end: `melange loadgen --protocol resp|memcache` (kernel sockets) against `melange
//! kv` and against the real redis-server and memcached on 127.0.0.1. A set-only run fills the
//! key space, then a 90%-get mix must see every get hit with its key's own value (the load
//! generator checks each byte), no wrong reply and no error, on every server alike: the load
//! generator measures servers only if it reads them right.
//!
//! Then the bad cases: a server that answers garbage is counted and dropped, not trusted; a
//! refusal (Redis' protected mode, here `requirepass`) is logged with the server's words;
//! out-of-range flags are refused before anything starts.
//!
//! redis-server and memcached come from `scripts/setup.sh`; in CI (`CI=true`) a missing one
//! fails the test, elsewhere it is skipped with a message. No root is needed.

mod common;

use common::kv::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MELANGE: &str = env!("CARGO_BIN_EXE_melange");

/// A peer server (redis-server or memcached) on 127.0.0.1, killed when dropped.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_peer(program: &str, args: &[&str], port: u16) -> Peer {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let peer = Peer(child);
    wait_listening(port);
    peer
}

/// Runs the load generator with `args` and returns its exit status, JSON (if any) and
/// stderr.
fn loadgen(args: &[&str]) -> (bool, Value, String) {
    let output = Command::new(MELANGE)
        .arg("loadgen")
        .args(args)
        .args(["--json", "--log", "warn"])
        .output()
        .expect("running melange loadgen");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.success(), json, stderr)
}

fn count(json: &Value, path: &[&str]) -> u64 {
    let mut v = json;
    for key in path {
        v = &v[*key];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no {path:?} in the report: {json:#}"))
}

/// Fills the key space, then runs the mix, and checks what the replies were.
fn fill_then_mix(protocol: &str, port: u16, server: &str) {
    let target = format!("127.0.0.1:{port}");
    let common = [
        "--protocol",
        protocol,
        "--target",
        &target,
        "--connections",
        "8",
        "--pipeline",
        "8",
        "--keys",
        "500",
        "--value-size",
        "100",
        "--warmup",
        "0s",
    ];
    let (ok, fill, stderr) =
        loadgen(&[&common[..], &["--get-ratio", "0", "--duration", "1s"]].concat());
    assert!(ok, "{server}: the fill failed:\n{stderr}");
    assert_eq!(count(&fill, &["kv", "wrong"]), 0, "{server}: {fill:#}");
    // 20 sets a key, uniformly: the chance that one of the 500 keys is never set is 500 e^-20.
    assert!(
        count(&fill, &["kv", "stored"]) > 10_000,
        "{server}: {fill:#}"
    );
    let (ok, mix, stderr) = loadgen(
        &[
            &common[..],
            &[
                "--get-ratio",
                "0.9",
                "--duration",
                "0.5s",
                "--distribution",
                "zipf",
            ],
        ]
        .concat(),
    );
    assert!(ok, "{server}: the mix failed:\n{stderr}");
    let (hits, misses, stored) = (
        count(&mix, &["kv", "hits"]),
        count(&mix, &["kv", "misses"]),
        count(&mix, &["kv", "stored"]),
    );
    assert_eq!(
        (
            count(&mix, &["kv", "wrong"]),
            count(&mix, &["kv", "errors"]),
            count(&mix, &["corrupt"])
        ),
        (0, 0, 0),
        "{server}: {mix:#}"
    );
    assert_eq!(misses, 0, "{server}: every key was filled: {mix:#}");
    assert!(hits > 8 * stored, "{server}: about 9 gets a set: {mix:#}");
    assert_eq!(
        hits + stored,
        count(&mix, &["received"]),
        "{server}: {mix:#}"
    );
}

#[test]
fn the_kv_load_generator_reads_melange_kv_redis_and_memcached_alike() {
    let mc_port = free_port();
    let kv = Kv::start(&["--memcache-port", &mc_port.to_string()]);
    wait_listening(mc_port);
    fill_then_mix("resp", kv.port, "melange kv (RESP)");
    fill_then_mix("memcache", mc_port, "melange kv (memcached)");
    if melange_sys::testenv::tool_or_skip("kv_loadgen", "redis-server") {
        let port = free_port();
        let _redis = start_peer(
            "redis-server",
            &[
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            port,
        );
        fill_then_mix("resp", port, "redis-server");
    }
    if melange_sys::testenv::tool_or_skip("kv_loadgen", "memcached") {
        let port = free_port();
        let _memcached = start_peer(
            "memcached",
            &[
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "1",
                "-u",
                "root",
            ],
            port,
        );
        fill_then_mix("memcache", port, "memcached");
    }
}

/// A server that answers anything with `*7` (an array, no reply to a GET or SET).
fn garbage_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut conns = Vec::new();
        listener.set_nonblocking(true).unwrap();
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = listener.accept() {
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"*7\r\n");
                conns.push(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    (port, handle)
}

#[test]
fn a_server_that_answers_garbage_is_counted_and_dropped() {
    let (port, server) = garbage_server();
    let target = format!("127.0.0.1:{port}");
    let (ok, json, stderr) = loadgen(&[
        "--protocol",
        "resp",
        "--target",
        &target,
        "--connections",
        "2",
        "--duration",
        "0.3s",
        "--warmup",
        "0s",
    ]);
    assert!(!ok, "a run with no right answer must fail:\n{stderr}");
    assert!(stderr.contains("no request to"), "{stderr}");
    assert_eq!(count(&json, &["kv", "hits"]), 0, "{json:#}");
    assert!(count(&json, &["kv", "wrong"]) >= 1, "{json:#}");
    server.join().unwrap();
}

#[test]
fn a_refusal_is_logged_in_the_servers_words() {
    let kv = Kv::start(&["--requirepass", "sesame"]);
    let target = format!("127.0.0.1:{}", kv.port);
    let (_, json, stderr) = loadgen(&[
        "--protocol",
        "resp",
        "--target",
        &target,
        "--connections",
        "1",
        "--duration",
        "0.2s",
        "--warmup",
        "0s",
    ]);
    assert!(count(&json, &["kv", "errors"]) > 0, "{json:#}\n{stderr}");
    assert!(
        stderr.contains("the first refusal said: -NOAUTH"),
        "the server's words are logged:\n{stderr}"
    );
}

#[test]
fn out_of_range_workloads_are_refused_with_the_flag_named() {
    for (args, flag) in [
        (&["--get-ratio", "1.5"][..], "--get-ratio"),
        (&["--keys", "0"][..], "--keys"),
        (&["--payload", "70000"][..], "--payload"),
        (&["--mode", "churn"][..], "--mode"),
    ] {
        let (ok, _, stderr) =
            loadgen(&[&["--protocol", "resp", "--target", "127.0.0.1:9"][..], args].concat());
        assert!(!ok, "{args:?} was accepted");
        assert!(
            stderr.contains(flag),
            "{args:?}: the error names {flag}:\n{stderr}"
        );
    }
    let (ok, _, stderr) = loadgen(&[
        "--protocol",
        "tcp",
        "--target",
        "127.0.0.1:9",
        "--keys",
        "5",
    ]);
    assert!(!ok && stderr.contains("--keys"), "{stderr}");
}

#[test]
fn the_open_loop_sends_at_the_rate_asked() {
    let kv = Kv::start(&[]);
    let target = format!("127.0.0.1:{}", kv.port);
    let (ok, json, stderr) = loadgen(&[
        "--protocol",
        "resp",
        "--target",
        &target,
        "--connections",
        "10",
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--warmup",
        "0.2s",
    ]);
    assert!(ok, "{stderr}");
    let rate = json["requests_per_s"].as_f64().unwrap();
    // A schedule, not the server's pace: a loopback server answers far faster than this.
    assert!(
        (1700.0..=2300.0).contains(&rate),
        "asked 2000/s, measured {rate}: {json:#}"
    );
    assert_eq!(count(&json, &["kv", "wrong"]), 0, "{json:#}");
    let (ok, _, stderr) = loadgen(&["--protocol", "tcp", "--target", &target, "--rate", "100"]);
    assert!(!ok && stderr.contains("--rate"), "{stderr}");
}
