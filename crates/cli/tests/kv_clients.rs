//! End-to-end: the clients operators worry about, against `melange kv --backend kernel`:
//! `redis-cli --pipe` mass insertion, a pipeline of 100,000 commands from one connection,
//! `redis-benchmark -P 16` over every default test, ten thousand idle connections with
//! slowloris clients trickling partial requests among them, and a client that never reads
//! its replies. Each is served or held back on its own; memory stays bounded (the server's
//! resident size is read from `/proc`), and a well-behaved client keeps its answers coming.
//!
//! The latency of the well-behaved client is printed, not asserted against a tight bound:
//! this machine is noisy, so the tests assert what must hold on any machine (every reply
//! right, each within a generous second) and leave speed to `melange bench kv`.
//!
//! The tools come from `scripts/setup.sh` (redis-tools). In CI (`CI=true`) a missing tool
//! fails the test; elsewhere the test says what it skipped. No root is needed.

mod common;

use common::kv::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// RESP for one command.
fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Round trips of `SET`/`GET` on `s`, each checked; returns the latencies, sorted.
fn round_trips(s: &mut TcpStream, count: usize, tag: &str) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("probe:{tag}:{}", i % 64);
        let value = format!("v{i}");
        let started = Instant::now();
        s.write_all(&resp(&[b"SET", key.as_bytes(), value.as_bytes()]))
            .unwrap();
        s.write_all(&resp(&[b"GET", key.as_bytes()])).unwrap();
        expect_reply(
            s,
            format!("+OK\r\n${}\r\n{value}\r\n", value.len()).as_bytes(),
        );
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// A value from `INFO` (`name:value`).
fn info_field(s: &mut TcpStream, section: &str, name: &str) -> String {
    s.write_all(&resp(&[b"INFO", section.as_bytes()])).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut header = String::new();
    reader.read_line(&mut header).unwrap();
    let len: usize = header
        .trim_end()
        .strip_prefix('$')
        .unwrap_or_else(|| panic!("INFO answered {header:?}"))
        .parse()
        .unwrap();
    let mut body = vec![0u8; len + 2];
    reader.read_exact(&mut body).unwrap();
    let body = String::from_utf8(body).unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in INFO {section}:\n{body}"))
        .to_string()
}

#[test]
fn redis_cli_pipe_and_a_pipeline_of_100k_commands_are_served_in_bounded_memory() {
    if !melange_sys::testenv::tool_or_skip("kv mass insertion test", "redis-cli") {
        return;
    }
    let kv = Kv::start(&[]);
    let rss_at_start = kv.rss_bytes();

    // redis-cli --pipe: 100,000 SETs in RESP from standard input, as Redis' mass insertion.
    let mut input = Vec::new();
    for i in 0..100_000 {
        input.extend(resp(&[
            b"SET",
            format!("mass:{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
        ]));
    }
    let mut pipe = Command::new("redis-cli")
        .args(["-p", &kv.port.to_string(), "--pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    pipe.stdin.take().unwrap().write_all(&input).unwrap();
    let out = pipe.wait_with_output().unwrap();
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("errors: 0, replies: 100000"),
        "redis-cli --pipe: {report}"
    );
    assert_eq!(redis_cli(kv.port, &["DBSIZE"]), "100000");
    assert_eq!(redis_cli(kv.port, &["GET", "mass:99999"]), "value-99999");

    // One connection writes 100,000 INCRs without waiting; a reader drains the replies. A
    // second client is served meanwhile.
    let writer = kv.connect();
    let mut reader = writer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut writer = writer;
        let incr = resp(&[b"INCR", b"counter"]);
        let batch: Vec<u8> = incr
            .iter()
            .copied()
            .cycle()
            .take(incr.len() * 1000)
            .collect();
        for _ in 0..100 {
            writer.write_all(&batch).unwrap();
        }
    });
    let mut other = kv.connect();
    let probe = round_trips(&mut other, 200, "pipeline");
    let mut replies = 0u64;
    let mut last = String::new();
    let mut lines = BufReader::new(&mut reader);
    while replies < 100_000 {
        last.clear();
        lines.read_line(&mut last).unwrap();
        assert!(last.starts_with(':'), "INCR answered {last:?}");
        replies += 1;
    }
    sender.join().unwrap();
    assert_eq!(last, ":100000\r\n");
    println!(
        "while a 100k pipeline ran: p50 {:?}, p99 {:?} per SET+GET",
        percentile(&probe, 0.5),
        percentile(&probe, 0.99)
    );
    assert!(percentile(&probe, 1.0) < Duration::from_secs(1));

    // 100k keys of ~20 bytes and the pipeline's buffers: far below 256 MiB.
    let grown = kv.rss_bytes().saturating_sub(rss_at_start);
    println!("resident memory grew by {} KiB", grown / 1024);
    assert!(grown < 256 << 20, "resident memory grew by {grown} bytes");
    let out = kv.stop();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn redis_benchmark_pipelined_by_16_runs_every_default_test() {
    if !melange_sys::testenv::tool_or_skip("kv redis-benchmark -P 16 test", "redis-benchmark") {
        return;
    }
    let kv = Kv::start(&[]);
    let bench = Command::new("redis-benchmark")
        .args([
            "-p",
            &kv.port.to_string(),
            "--csv",
            "-n",
            "20000",
            "-c",
            "20",
        ])
        .args(["-P", "16"])
        .output()
        .unwrap();
    assert!(bench.status.success(), "{}", text(&bench));
    let csv = String::from_utf8_lossy(&bench.stdout).into_owned();
    let mut tests = Vec::new();
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        let rps: f64 = fields[1].parse().unwrap();
        assert!(rps > 0.0, "{line}");
        tests.push(fields[0].split(' ').next().unwrap().to_string());
    }
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
        "LPUSH",
        "LRANGE_100",
        "LRANGE_300",
        "LRANGE_500",
        "LRANGE_600",
        "MSET",
    ] {
        assert!(tests.iter().any(|t| t == test), "no {test} in:\n{csv}");
    }
    // 20,000 INCRs of one key, pipelined: the counter is exact.
    assert_eq!(
        redis_cli(kv.port, &["GET", "counter:__rand_int__"]),
        "20000"
    );
    let out = kv.stop();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn ten_thousand_idle_clients_and_slowloris_do_not_stop_the_others() {
    // The test holds 10,000 sockets itself.
    let limit = melange_sys::process::raise_open_files_limit(12_000).unwrap();
    assert!(
        limit >= 11_000,
        "this test needs 11,000 open files; the hard limit allows {limit} (ulimit -Hn)"
    );
    let kv = Kv::start(&["--maxclients", "11000"]);
    let rss_at_start = kv.rss_bytes();
    let mut idle = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let s = TcpStream::connect(("127.0.0.1", kv.port))
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        idle.push(s);
    }
    // Slowloris: 100 clients each trickle a SET one byte at a time, never finishing it.
    let slow_request = resp(&[b"SET", b"slow", &[b'x'; 1000]]);
    let mut slow: Vec<TcpStream> = (0..100).map(|_| kv.connect()).collect();
    let mut good = kv.connect();
    let mut latencies = Vec::new();
    for (byte, chunk) in slow_request[..slow_request.len() - 1].iter().enumerate() {
        if byte >= 200 {
            break;
        }
        for s in &mut slow {
            s.write_all(std::slice::from_ref(chunk)).unwrap();
        }
        latencies.extend(round_trips(&mut good, 5, "slowloris"));
    }
    latencies.sort();
    println!(
        "with 10,000 idle and 100 slowloris clients: p50 {:?}, p99 {:?}, max {:?} per SET+GET",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    assert!(percentile(&latencies, 1.0) < Duration::from_secs(1));
    let connected: u64 = info_field(&mut good, "clients", "connected_clients")
        .parse()
        .unwrap();
    assert_eq!(connected, 10_000 + 100 + 1);
    // None of the partial requests ran.
    good.write_all(&resp(&[b"EXISTS", b"slow"])).unwrap();
    expect_reply(&mut good, b":0\r\n");
    let grown = kv.rss_bytes().saturating_sub(rss_at_start);
    println!(
        "resident memory grew by {} KiB: {} bytes per connection",
        grown / 1024,
        grown / 10_101
    );
    // Each connection's app state is a few hundred bytes plus what its buffers keep.
    assert!(
        grown / 10_101 < 16 * 1024,
        "{grown} bytes for 10,101 connections"
    );

    // Past maxclients a client is told so, as Redis does.
    let refused: Vec<TcpStream> = (0..900).map(|_| kv.connect()).collect();
    let mut extra = kv.connect();
    extra.write_all(b"PING\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "-ERR max number of clients reached\r\n"
    );
    drop(refused);
    drop(idle);
    drop(slow);
    // Every one of them is gone again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: u64 = info_field(&mut good, "clients", "connected_clients")
            .parse()
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} clients still counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = kv.stop();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_client_that_never_reads_is_held_back_without_holding_memory() {
    let kv = Kv::start(&[]);
    let mut good = kv.connect();
    let big = vec![b'v'; 1 << 20];
    good.write_all(&resp(&[b"SET", b"big", &big])).unwrap();
    expect_reply(&mut good, b"+OK\r\n");
    let rss_at_start = kv.rss_bytes();

    // 2,000 GETs of a 1 MiB value (2 GiB of replies), never read.
    let mut deaf = kv.connect();
    deaf.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let get = resp(&[b"GET", b"big"]);
    let requests: Vec<u8> = get.iter().copied().cycle().take(get.len() * 2000).collect();
    let mut sent = 0;
    while sent < requests.len() {
        match deaf.write(&requests[sent..]) {
            Ok(n) => sent += n,
            // The server stopped reading this client: its requests back up to here.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("writing to the server: {e}"),
        }
    }
    // 50 KB of requests fit in the sockets' buffers; it is the 2 GiB of replies that must
    // not pile up in the server.
    let written = sent.div_ceil(get.len());
    std::thread::sleep(Duration::from_millis(500));
    let latencies = round_trips(&mut good, 200, "deaf");
    println!(
        "while a client ignored {written} replies of 1 MiB: p50 {:?}, max {:?} per SET+GET",
        percentile(&latencies, 0.5),
        percentile(&latencies, 1.0)
    );
    assert!(percentile(&latencies, 1.0) < Duration::from_secs(1));
    let grown = kv.rss_bytes().saturating_sub(rss_at_start);
    println!("resident memory grew by {} KiB", grown / 1024);
    // The paused client holds at most its pause threshold and one reply, not 2 GiB.
    assert!(grown < 64 << 20, "resident memory grew by {grown} bytes");

    // When it starts reading, every reply it asked for arrives whole (the last request,
    // perhaps cut short by the write timeout, is finished meanwhile).
    let mut rest = deaf.try_clone().unwrap();
    rest.set_write_timeout(None).unwrap();
    let tail = requests[sent..written * get.len()].to_vec();
    let finisher = std::thread::spawn(move || rest.write_all(&tail).unwrap());
    let mut received = 0u64;
    let expected = written as u64 * (big.len() as u64 + b"$1048576\r\n\r\n".len() as u64);
    let mut buf = vec![0u8; 1 << 16];
    deaf.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while received < expected {
        let n = deaf.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the server closed after {received} of {expected} bytes"
        );
        received += n as u64;
    }
    assert_eq!(received, expected);
    finisher.join().unwrap();
    let out = kv.stop();
    assert!(out.status.success(), "{}", text(&out));
}
