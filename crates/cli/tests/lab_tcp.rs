//! Melange's own TCP against Linux's, in the lab: the real `melange` binary with its TCP on
//! AF_XDP on one side, kernel sockets on the other, byte-exact transfers clean and under loss,
//! thousands of connections, and a packet analyser nobody here wrote (tshark) reading the wire.
//!
//! Loss comes from nftables rules on the kernel's veth end (`melange lab impair --protocol
//! tcp`): an egress rule drops what the kernel sends before Melange's XDP program sees it, an
//! ingress rule drops what Melange sends before the kernel's TCP sees it (that end has no XDP
//! program, so nothing bypasses the hook). Both directions are impaired at once.
//!
//! Like `lab_xdp.rs`, every test takes the lab lock, brings the lab up itself and kills what it
//! started. Root is needed; outside CI a non-root run prints "SKIPPED: needs root" and passes,
//! in CI (`CI=true`) it fails.

mod common;
use common::lab::*;
use common::{root_or_skip, test_lock};

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const SERVER: &str = "10.77.0.2";

/// Starts Melange's TCP echo on AF_XDP on mlg-vb (both queues) and waits until it accepts.
fn start_tcp_echo(port: u16) -> Server {
    let port_arg = port.to_string();
    let mut server = Server::start(
        "mlg-b",
        &format!("tcp-echo-{port}"),
        &[
            "echo",
            "--protocol",
            "tcp",
            "--backend",
            "af_xdp",
            "--interface",
            "mlg-vb",
            "--addr",
            SERVER,
            "--port",
            &port_arg,
            "--queues",
            "0,1",
            "--idle",
            "sleep:1000",
        ],
    );
    wait_accepting(&mut server, port);
    server
}

/// Waits until a kernel client in mlg-a completes a handshake with `port`.
fn wait_accepting(server: &mut Server, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let to = SocketAddrV4::new(SERVER.parse().unwrap(), port);
    loop {
        server.assert_running();
        let ok = in_netns("mlg-a", || {
            TcpStream::connect_timeout(&to.into(), Duration::from_millis(200))
        })
        .is_ok();
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing accepted on {to} within 10 s:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The test pattern: a byte stream nobody could produce by accident (a xorshift, not a
/// repeating counter, so an offset error cannot realign).
fn pattern(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut x = seed | 1;
    move |out: &mut [u8]| {
        for b in out {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
}

/// A kernel client in mlg-a sends `bytes` to the echo server on `port` and reads them back,
/// comparing every byte; returns the time it took. Fails with the first differing offset.
fn echo_transfer(port: u16, bytes: usize, timeout: Duration) -> Duration {
    let to = SocketAddrV4::new(SERVER.parse().unwrap(), port);
    let stream = in_netns("mlg-a", || TcpStream::connect_timeout(&to.into(), timeout))
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    let start = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut fill = pattern(0x5eed);
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            fill(&mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .expect("sending to the echo server");
            left -= n;
        }
        writer.shutdown(Shutdown::Write).expect("half-closing");
    });
    let mut reader = stream;
    let mut expect = pattern(0x5eed);
    let mut want = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    let mut at = 0usize;
    while at < bytes {
        let n = reader
            .read(&mut got)
            .unwrap_or_else(|e| panic!("reading the echo at byte {at} of {bytes}: {e}"));
        assert!(n > 0, "the server closed after {at} of {bytes} bytes");
        expect(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| want[i] != got[i]) {
            panic!("the echo differs at byte {} of {bytes}", at + i);
        }
        at += n;
    }
    // The server closes its side once ours is closed and everything is echoed.
    let mut tail = [0u8; 16];
    assert_eq!(
        reader.read(&mut tail).expect("reading the server's FIN"),
        0,
        "bytes after the echo"
    );
    sender.join().expect("the sender thread");
    start.elapsed()
}

/// Drops `pct`% of TCP in both directions between the kernel in mlg-a and Melange in mlg-b.
fn impair_tcp_both_ways(pct: u8) {
    let pct = pct.to_string();
    melange(&[
        "lab",
        "impair",
        "--loss",
        &pct,
        "--protocol",
        "tcp",
        "--ns",
        "mlg-a",
    ]);
    melange(&[
        "lab",
        "impair",
        "--loss",
        &pct,
        "--protocol",
        "tcp",
        "--ns",
        "mlg-a",
        "--direction",
        "ingress",
    ]);
}

/// Makes mlg-vb transmit on one queue while alive, so everything the kernel in mlg-b sends
/// arrives on mlg-va's queue 0, where the Melange client's one engine listens. (A NIC would
/// use RSS, and IX picks ephemeral ports whose hash lands on the engine's queue; on veth the
/// receive queue is the sender's transmit queue, which the kernel picks per flow.)
struct OneTxQueue;

impl OneTxQueue {
    fn new() -> Self {
        let out = netns_exec("mlg-b", &["ethtool", "-L", "mlg-vb", "tx", "1"]);
        assert!(
            out.status.success(),
            "ethtool -L mlg-vb tx 1:\n{}",
            output_text(&out)
        );
        OneTxQueue
    }
}

impl Drop for OneTxQueue {
    fn drop(&mut self) {
        let _ = netns_exec("mlg-b", &["ethtool", "-L", "mlg-vb", "tx", "2"]);
    }
}

/// A TCP counter from the server's `tcp TcpCounters { .. }` lines, summed over engines.
fn tcp_counter(log: &str, name: &str) -> u64 {
    sum_after(log, &format!(" {name}: "))
}

#[test]
fn linux_client_echoes_100_mb_byte_exact_through_melange_tcp_clean_and_with_1_pct_loss() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let _guard = ImpairGuard;
    let mut echo = start_tcp_echo(9201);
    let clean = echo_transfer(9201, 100_000_000, Duration::from_secs(30));
    impair_tcp_both_ways(1);
    let lossy = echo_transfer(9201, 100_000_000, Duration::from_secs(60));
    melange(&["lab", "impair", "--clear"]);
    println!("100 MB echoed: clean {clean:?}, 1% loss both ways {lossy:?}");
    let (status, log) = echo.stop();
    assert_clean_exit(status, &log, 2);
    assert!(
        tcp_counter(&log, "retransmits") > 0,
        "1% loss but no retransmission:\n{log}"
    );
    assert_eq!(tcp_counter(&log, "recv_queue_overflow"), 0, "{log}");
    assert!(tcp_counter(&log, "passive_opens") >= 3, "{log}");
}

#[test]
fn melange_client_against_the_linux_tcp_echo_clean_under_loss_and_with_10000_connections() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let _guard = ImpairGuard;
    let _steer = OneTxQueue::new();
    let mut linux = Server::start(
        "mlg-b",
        "linux-tcp-echo",
        &["baseline", "tcp-echo", "--addr", SERVER, "--port", "9202"],
    );
    wait_accepting(&mut linux, 9202);
    let run = |connections: &str, payload: &str, duration: &str| {
        loadgen(&[
            "--protocol",
            "tcp",
            "--backend",
            "af_xdp",
            "--interface",
            "mlg-va",
            "--target",
            "10.77.0.2:9202",
            "--connections",
            connections,
            "--inflight",
            "2",
            "--payload",
            payload,
            "--duration",
            duration,
            "--warmup",
            "0.2s",
            "--timeout",
            "10s",
        ])
    };
    // Clean: every reply arrives and every byte of it is the request's.
    let (json, text) = run("32", "1000", "1s");
    assert!(count(&json, "received") > 1000, "{text}\n{}", linux.log());
    assert_eq!(count(&json, "received"), count(&json, "sent"), "{text}");
    assert_eq!(count(&json, "corrupt"), 0, "{text}");
    // 1% and 5% loss both ways: Melange's TCP recovers against Linux's, nothing corrupt.
    for pct in [1u8, 5] {
        let p = pct.to_string();
        melange(&[
            "lab",
            "impair",
            "--loss",
            &p,
            "--protocol",
            "tcp",
            "--ns",
            "mlg-b",
        ]);
        melange(&[
            "lab",
            "impair",
            "--loss",
            &p,
            "--protocol",
            "tcp",
            "--ns",
            "mlg-b",
            "--direction",
            "ingress",
        ]);
        let (json, text) = run("8", "4000", "2s");
        println!(
            "{pct}% loss: {} replies of 4000 B",
            count(&json, "received")
        );
        assert!(
            count(&json, "received") > 100,
            "{pct}%: {text}\n{}",
            linux.log()
        );
        assert_eq!(
            count(&json, "received"),
            count(&json, "sent"),
            "{pct}%: {text}"
        );
        assert_eq!(count(&json, "corrupt"), 0, "{pct}%: {text}");
        melange(&["lab", "impair", "--clear"]);
    }
    // 10,000 connections at once, each used.
    let (json, text) = run("10000", "64", "3s");
    assert!(
        count(&json, "received") >= 20_000,
        "{text}\n{}",
        linux.log()
    );
    assert_eq!(count(&json, "received"), count(&json, "sent"), "{text}");
    assert!(!text.contains("could not be opened"), "{text}");
    linux.kill();
}

#[test]
fn tshark_finds_no_malformed_or_protocol_errors_in_melange_tcp() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let _guard = ImpairGuard;
    let capture = format!("/tmp/melange-lab-tcp-{}.pcap", std::process::id());
    let mut echo = start_tcp_echo(9203);
    // Capture on the kernel's end (no XDP there: it sees every frame Melange sends).
    let mut tshark = Command::new("ip")
        .args([
            "netns",
            "exec",
            "mlg-a",
            "tshark",
            "-q",
            "-i",
            "mlg-va",
            "-s",
            "128",
            "-f",
            "tcp port 9203",
            "-w",
            &capture,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tshark starts (scripts/setup.sh installs it)");
    std::thread::sleep(Duration::from_secs(2));
    // A mixed run: small and bulk transfers, clean and with 2% loss both ways.
    echo_transfer(9203, 1000, Duration::from_secs(10));
    echo_transfer(9203, 5_000_000, Duration::from_secs(30));
    impair_tcp_both_ways(2);
    echo_transfer(9203, 5_000_000, Duration::from_secs(60));
    melange(&["lab", "impair", "--clear"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = melange_sys::process::terminate(tshark.id());
    let _ = tshark.wait();
    let (status, log) = echo.stop();
    assert_clean_exit(status, &log, 2);
    let read = Command::new("tshark")
        .args(["-r", &capture, "-q", "-z", "expert,note"])
        .output()
        .expect("tshark reads the capture");
    let report = String::from_utf8_lossy(&read.stdout).into_owned();
    let _ = std::fs::remove_file(&capture);
    assert!(read.status.success(), "tshark -r failed:\n{report}");
    println!("tshark expert summary of the capture:\n{report}");
    // Count segments, so an empty capture cannot pass.
    assert!(
        report.contains("Sequence"),
        "no TCP analysis in the capture:\n{report}"
    );
    // Retransmissions, duplicate ACKs and the like are expected under loss (the Sequence
    // group); malformed packets, bad checksums and protocol violations are not.
    let bad: Vec<&str> = report
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            (l.contains("Malformed") || l.contains(" Protocol ") || l.contains("Checksum"))
                && !l.starts_with("Frequency")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "tshark expert findings of the malformed/protocol kind:\n{}\n\nfull report:\n{report}",
        bad.join("\n")
    );
}
