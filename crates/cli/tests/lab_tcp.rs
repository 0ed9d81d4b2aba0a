//! Melange's own TCP against Linux's, in the lab: the real `melange` binary with its TCP on
//! AF_XDP on one side, kernel sockets on the other, byte-exact transfers clean and under loss,
//! thousands of connections, and a packet analyser nobody here wrote (tshark) reading the wire.
//!
//! Loss comes from nftables rules on the kernel's veth end (`melange lab impair --protocol
//! tcp`): an egress rule drops what the kernel sends before Melange's XDP program sees it, an
//! ingress rule drops what Melange sends before the kernel's TCP sees it (that end has no XDP
//! program, so nothing bypasses the hook). Both directions are impaired at once.
//!
//! Attacks come from a packet socket on the kernel's veth end, with frames built by
//! `melange_wire::frames`: a SYN flood from spoofed addresses (answered with SYN cookies
//! while real clients keep connecting), and blind RST, SYN, FIN and data injection into a
//! running transfer (RFC 5961), both the uniformly random kind and segments aimed just inside
//! the window at moments when the test knows the sequence numbers exactly.
//!
//! Like `lab_xdp.rs`, every test takes the lab lock, brings the lab up itself and kills what it
//! started. Root is needed; outside CI a non-root run prints "SKIPPED: needs root" and passes,
//! in CI (`CI=true`) it fails.

mod common;
use common::lab::*;
use common::{root_or_skip, test_lock};

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use melange_sys::netdev::{self, PacketSocket};
use melange_wire::frames;
use melange_wire::tcp::{self, Flags, SACK_BLOCKS_MAX};

const SERVER: &str = "10.77.0.2";
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

type Rng = melange_core::rng::SplitMix64;

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

/// Melange's TCP load generator on af_xdp in mlg-a against 10.77.0.2:`port`, with
/// `[connections, inflight, payload, duration, warmup, timeout]`.
fn tcp_loadgen(
    port: u16,
    [connections, inflight, payload, duration, warmup, timeout]: [&str; 6],
) -> (serde_json::Value, String) {
    let target = format!("10.77.0.2:{port}");
    loadgen(&[
        "--protocol",
        "tcp",
        "--backend",
        "af_xdp",
        "--interface",
        "mlg-va",
        "--target",
        &target,
        "--connections",
        connections,
        "--inflight",
        inflight,
        "--payload",
        payload,
        "--duration",
        duration,
        "--warmup",
        warmup,
        "--timeout",
        timeout,
    ])
}

/// Drops `pct`% of TCP in both directions between the kernel in mlg-a and Melange in mlg-b.
fn impair_tcp_both_ways(pct: u8) {
    impair_tcp_both_ways_in("mlg-a", pct);
}

/// Drops `pct`% of TCP in both directions at the kernel's veth end in `ns`: egress drops
/// what that kernel sends, ingress what reaches it (that end has no XDP program).
fn impair_tcp_both_ways_in(ns: &str, pct: u8) {
    let pct = pct.to_string();
    for direction in ["egress", "ingress"] {
        melange(&[
            "lab",
            "impair",
            "--loss",
            &pct,
            "--protocol",
            "tcp",
            "--ns",
            ns,
            "--direction",
            direction,
        ]);
    }
}

/// Makes one lab veth end transmit on one queue while alive. On veth the receive queue is the
/// sender's transmit queue, which the kernel picks per flow (a packet socket's frames by a
/// hash of their headers, a TCP socket's by a random per-socket hash), so with one transmit
/// queue everything that end sends arrives on the peer's queue 0.
///
/// Used on mlg-vb so that everything the kernel in mlg-b sends reaches the Melange client's
/// one engine on mlg-va's queue 0 (a NIC would use RSS, and IX picks ephemeral ports whose
/// hash lands on the engine's queue), and on mlg-va so that a packet socket's injected
/// segments reach the engine that holds the kernel client's connection.
struct OneTxQueue {
    ns: &'static str,
    dev: &'static str,
}

impl OneTxQueue {
    fn new(ns: &'static str, dev: &'static str) -> Self {
        let out = netns_exec(ns, &["ethtool", "-L", dev, "tx", "1"]);
        assert!(
            out.status.success(),
            "ethtool -L {dev} tx 1 in {ns}:\n{}",
            output_text(&out)
        );
        OneTxQueue { ns, dev }
    }
}

impl Drop for OneTxQueue {
    fn drop(&mut self) {
        let _ = netns_exec(self.ns, &["ethtool", "-L", self.dev, "tx", "2"]);
    }
}

/// A TCP counter from the server's `tcp TcpCounters { .. }` lines, summed over engines.
fn tcp_counter(log: &str, name: &str) -> u64 {
    sum_after(log, &format!(" {name}: "))
}

#[test]
fn linux_client_echoes_100_mb_byte_exact_through_melange_tcp_clean_and_with_1_and_5_pct_loss() {
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
    impair_tcp_both_ways(5);
    let lossier = echo_transfer(9201, 100_000_000, Duration::from_secs(120));
    melange(&["lab", "impair", "--clear"]);
    println!(
        "100 MB echoed: clean {clean:?}, 1% loss both ways {lossy:?}, 5% loss both ways {lossier:?}"
    );
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
fn melange_client_against_the_linux_tcp_echo_clean_and_under_loss() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let _guard = ImpairGuard;
    let _steer = OneTxQueue::new("mlg-b", "mlg-vb");
    let mut linux = Server::start(
        "mlg-b",
        "linux-tcp-echo",
        &["baseline", "tcp-echo", "--addr", SERVER, "--port", "9202"],
    );
    wait_accepting(&mut linux, 9202);
    let run_with = |connections: &str,
                    inflight: &str,
                    payload: &str,
                    duration: &str,
                    warmup: &str,
                    timeout: &str| {
        tcp_loadgen(
            9202,
            [connections, inflight, payload, duration, warmup, timeout],
        )
    };
    let run = |connections: &str, payload: &str, duration: &str| {
        run_with(connections, "2", payload, duration, "0.2s", "10s")
    };
    // Clean: every reply arrives and every byte of it is the request's.
    let (json, text) = run("32", "1000", "1s");
    assert!(count(&json, "received") > 1000, "{text}\n{}", linux.log());
    assert_eq!(count(&json, "received"), count(&json, "sent"), "{text}");
    assert_eq!(count(&json, "corrupt"), 0, "{text}");
    // 1% and 5% loss both ways: Melange's TCP recovers against Linux's, nothing corrupt.
    for pct in [1u8, 5] {
        impair_tcp_both_ways_in("mlg-b", pct);
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
    linux.kill();
}

/// A Linux TCP sink in mlg-b on `port`: accepts one connection, reads it to the FIN, and
/// returns the bytes' count and SHA-256 (hex), or the error that ended it.
fn linux_sink(port: u16) -> std::thread::JoinHandle<Result<(u64, String), String>> {
    use sha2::{Digest, Sha256};
    let listener = in_netns("mlg-b", || std::net::TcpListener::bind((SERVER_IP, port)))
        .unwrap_or_else(|e| panic!("binding the Linux sink on {SERVER}:{port}: {e}"));
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(240)))
            .map_err(|e| e.to_string())?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    total += n as u64;
                }
                Err(e) => return Err(format!("reading at byte {total}: {e}")),
            }
        }
        let digest: [u8; 32] = hash.finalize().into();
        Ok((total, melange_apps::stream::hex(&digest)))
    })
}

/// Melange's TCP as the sender: `melange source` on af_xdp in mlg-a streams 100 MB into a
/// Linux socket in mlg-b, clean and with 1% and 5% of TCP lost both ways (nftables on the
/// kernel's end: ingress drops what Melange sends before Linux sees it, egress the ACKs).
/// Both ends hash what they saw; the digests must match each other and the stream's own.
///
/// Under loss the sender's speed is RACK-TLP's (RFC 8985): lost retransmissions are found
/// without a timeout and tail losses by a probe. Measured 2026-12-04 on the shared 2-core VM,
/// two runs each of builds that differ only in `ConnConfig::rack_tlp`: clean 256-479 MB/s
/// (off: 262-449, noise of the VM's load); 1% 56-129 MB/s in 0.8-1.8 s with 1-4 timeouts
/// (off: 4.9-5.1 MB/s, 91-96 timeouts); 5% 100 MB in 26.9-28.4 s, 3.5-3.7 MB/s, with 97-100
/// timeouts, ~4,000 RACK losses (~220 of them lost retransmissions) and ~960 probes (off:
/// 10 MB took 22.6-23.8 s, 0.4 MB/s, ~100 timeouts, so 100 MB would take minutes). The
/// timeouts left follow a lost probe or its lost ACK: RFC 8985 sends one probe, then leaves
/// the tail to the RTO (200 ms minimum, as Linux's), which is most of the 5% run's time. The
/// source's 120 s timeout is four times that run.
#[test]
fn melange_source_streams_100_mb_into_linux_byte_exact_clean_and_under_loss() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let _guard = ImpairGuard;
    let _steer = OneTxQueue::new("mlg-b", "mlg-vb");
    for (pct, port, seed, bytes) in [
        (0u8, 9206u16, 11u64, 100_000_000u64),
        (1, 9207, 12, 100_000_000),
        (5, 9208, 13, 100_000_000),
    ] {
        if pct > 0 {
            impair_tcp_both_ways_in("mlg-b", pct);
        }
        let sink = linux_sink(port);
        let target = format!("{SERVER}:{port}");
        let (seed_arg, bytes_arg) = (seed.to_string(), bytes.to_string());
        let output = netns_exec(
            "mlg-a",
            &[
                MELANGE,
                "source",
                "--backend",
                "af_xdp",
                "--interface",
                "mlg-va",
                "--target",
                &target,
                "--bytes",
                &bytes_arg,
                "--seed",
                &seed_arg,
                "--timeout",
                "120s",
                "--json",
            ],
        );
        let text = strip_ansi(&output_text(&output));
        assert!(
            output.status.success(),
            "{pct}% loss: source failed:\n{text}"
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("source printed no JSON ({e}):\n{text}"));
        let (received, digest) = sink
            .join()
            .expect("the sink thread")
            .unwrap_or_else(|e| panic!("{pct}% loss: the Linux sink: {e}\n{text}"));
        let expected = melange_apps::stream::hex(&melange_apps::stream::stream_sha256(seed, bytes));
        println!(
            "{pct}% loss: {} MB from Melange to Linux in {:.2} s ({:.1} MB/s): {} RTOs, {} retransmits, {} fast recoveries, {} RACK losses ({} lost retransmissions), {} loss probes ({} repaired a loss)",
            bytes / 1_000_000,
            json["seconds"].as_f64().unwrap_or(0.0),
            json["mb_per_s"].as_f64().unwrap_or(0.0),
            tcp_counter(&text, "rto_expirations"),
            tcp_counter(&text, "retransmits"),
            tcp_counter(&text, "fast_recoveries"),
            tcp_counter(&text, "rack_losses"),
            tcp_counter(&text, "rack_lost_retransmits"),
            tcp_counter(&text, "tlp_probes"),
            tcp_counter(&text, "tlp_recoveries"),
        );
        assert_eq!(received, bytes, "{pct}% loss: {text}");
        assert_eq!(
            json["sha256"].as_str(),
            Some(expected.as_str()),
            "{pct}%: {text}"
        );
        assert_eq!(
            digest, expected,
            "{pct}% loss: Linux received other bytes\n{text}"
        );
        melange(&["lab", "impair", "--clear"]);
    }
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
    // The payload is the echo's pseudo-random pattern: decoded as plain data, so that no
    // heuristic dissector takes it for its protocol and reports it malformed (Thrift did:
    // "Not enough data to decode", about bytes Melange only carries).
    let read = Command::new("tshark")
        .args([
            "-r",
            &capture,
            "-q",
            "-d",
            "tcp.port==9203,data",
            "-z",
            "expert,note",
        ])
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

/// Raises a stop flag when dropped, so a helper thread ends even when the test panics
/// (it would otherwise go on sending into the next test's lab).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A TCP header without options.
fn bare_segment(
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: Option<u32>,
    flags: Flags,
) -> tcp::Repr {
    tcp::Repr {
        src_port,
        dst_port,
        seq,
        ack,
        flags,
        window_len: 1024,
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        sack_ranges: [(0, 0); SACK_BLOCKS_MAX],
        sack_count: 0,
        timestamps: None,
        payload_len: 0,
    }
}

/// A packet socket on mlg-va in mlg-a, and the two MAC addresses of the lab's veth pair.
fn raw_socket_on_va() -> (PacketSocket, [u8; 6], [u8; 6]) {
    let va_mac = in_netns("mlg-a", || netdev::mac_address("mlg-va")).expect("mlg-va's MAC");
    let vb_mac = in_netns("mlg-b", || netdev::mac_address("mlg-vb")).expect("mlg-vb's MAC");
    let raw = in_netns("mlg-a", || {
        PacketSocket::bind(netdev::ifindex("mlg-va").expect("mlg-va's ifindex"))
    })
    .expect("a packet socket on mlg-va");
    (raw, va_mac, vb_mac)
}

/// Runs `ip -n NS -batch -` with `lines` on its standard input; returns its output.
fn ip_batch(ns: &str, lines: &str) -> std::process::Output {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip runs");
    child
        .stdin
        .take()
        .expect("ip's stdin is piped")
        .write_all(lines.as_bytes())
        .expect("writing ip's batch");
    child.wait_with_output().expect("ip exits")
}

/// The first spoofed address of the SYN flood, and how many there are: 10.77.0.100 to
/// 10.77.0.199, on the lab's subnet (the engines answer only on-link hosts) and nobody's.
const SPOOFED_FIRST: u8 = 100;
const SPOOFED_COUNT: u8 = 100;
/// Where the spoofed addresses "are": a locally administered MAC no interface has.
const SPOOFED_MAC: &str = "02:6d:6c:67:00:01";

fn spoofed_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, SPOOFED_FIRST + i)
}

/// Permanent neighbour entries in mlg-b for the spoofed addresses, removed when dropped.
///
/// Why: the engines learn their neighbours from the kernel's table in mlg-b (ARP stays with
/// the kernel), and a SYN-ACK to an address nobody resolves is parked and then dropped after
/// the ARP retries, so without these entries the flood would test ARP's pending queue rather
/// than the SYN queue. The MAC is nobody's: veth delivers the SYN-ACKs to mlg-va anyway, and
/// the kernel in mlg-a drops them as addressed to another host before IP looks at them. The
/// alternative, spoofing 10.77.0.1 itself with random ports, was rejected: the kernel there
/// answers each SYN-ACK with a RST, which frees the half-open slot it hit, so how full the
/// SYN queue is (and whether cookies are needed at all) would depend on how fast the kernel
/// answers. With these entries the SYN queue stays full for the whole test.
struct SpoofedNeighbours;

impl SpoofedNeighbours {
    fn add() -> Self {
        let lines: String = (0..SPOOFED_COUNT)
            .map(|i| {
                format!(
                    "neigh replace {} lladdr {SPOOFED_MAC} dev mlg-vb nud permanent\n",
                    spoofed_ip(i)
                )
            })
            .collect();
        let out = ip_batch("mlg-b", &lines);
        assert!(
            out.status.success(),
            "adding the spoofed neighbours in mlg-b:\n{}",
            output_text(&out)
        );
        SpoofedNeighbours
    }
}

impl Drop for SpoofedNeighbours {
    fn drop(&mut self) {
        let lines: String = (0..SPOOFED_COUNT)
            .map(|i| format!("neigh del {} dev mlg-vb\n", spoofed_ip(i)))
            .collect();
        let _ = ip_batch("mlg-b", &lines);
    }
}

/// A kernel client in mlg-a sends `bytes` pattern bytes to the echo server on `port`, closes
/// its side and reads everything back until the server's FIN; returns how long it took, or
/// what went wrong. For small `bytes` only (it writes everything before reading).
fn small_echo(port: u16, bytes: usize, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let to = SocketAddrV4::new(SERVER_IP, port);
    let mut stream = in_netns("mlg-a", || TcpStream::connect_timeout(&to.into(), timeout))
        .map_err(|e| format!("connecting: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.set_write_timeout(Some(timeout)).unwrap();
    let mut out = vec![0u8; bytes];
    pattern(port.into())(&mut out);
    stream
        .write_all(&out)
        .map_err(|e| format!("sending: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("half-closing: {e}"))?;
    let mut back = Vec::with_capacity(bytes);
    stream
        .read_to_end(&mut back)
        .map_err(|e| format!("reading the echo after {} bytes: {e}", back.len()))?;
    if back != out {
        return Err(format!(
            "the echo differs ({} of {bytes} bytes back)",
            back.len()
        ));
    }
    Ok(start.elapsed())
}

/// The `TcpCounters { .. }` of each engine in the server's log.
fn tcp_counter_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| l.find("TcpCounters {").map(|at| &l[at..]))
        .collect()
}

#[test]
fn syn_flood_from_spoofed_addresses_is_answered_with_cookies_and_real_clients_still_connect() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    const PORT: u16 = 9204;
    // 20 times the default SYN queue (1024 half-open per listener, per engine), over 1 s,
    // and among them ACKs with forged cookies.
    const SYNS: u64 = 20_000;
    const FORGED_ACKS: u64 = 2_000;
    const FLOOD: Duration = Duration::from_secs(1);
    const BATCHES: u64 = 200;
    // A legitimate client every 5 ms: some 300 connections, few enough that their TIME-WAITs
    // in mlg-a leave the later tests plenty of ephemeral ports.
    const CLIENT_GAP: Duration = Duration::from_millis(5);
    let _neighbours = SpoofedNeighbours::add();
    let mut echo = start_tcp_echo(PORT);
    let (raw, va_mac, vb_mac) = raw_socket_on_va();

    // Legitimate clients: one after another, 1000 bytes each, through the whole flood. Each
    // may take up to 10 s, so a SYN lost in the flood (the kernel retransmits it after 1 s)
    // would slow a client but not fail it; none is expected, as the engines keep up.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let clients = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut results = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                results.push(small_echo(PORT, 1000, Duration::from_secs(10)));
                std::thread::sleep(CLIENT_GAP);
            }
            results
        })
    };
    std::thread::sleep(Duration::from_millis(100));

    // The flood: SYNs from random spoofed addresses and ports, half of them with Linux's
    // options (timestamps, so their cookies carry window scale and SACK) and half with MSS
    // only, paced in batches; and in each batch a few ACKs from spoofed addresses with
    // random numbers, which a listener with cookies outstanding must check as cookies and
    // refuse.
    let seed = 0x5359_4e66_6c6f_6f64;
    let mut rng = Rng::new(seed);
    let mut sent = 0u64;
    let mut forged_sent = 0u64;
    let mut send_errors = 0u64;
    let flood_start = Instant::now();
    for batch in 0..BATCHES {
        for _ in 0..FORGED_ACKS / BATCHES {
            let src = spoofed_ip(rng.below(u64::from(SPOOFED_COUNT)) as u8);
            let ack = bare_segment(
                1024 + rng.below(64_512) as u16,
                PORT,
                rng.next_u64() as u32,
                Some(rng.next_u64() as u32),
                Flags::empty(),
            );
            let frame = frames::tcp_frame(va_mac, vb_mac, src, SERVER_IP, &ack, &[]);
            match raw.send(&frame) {
                Ok(()) => forged_sent += 1,
                Err(_) => send_errors += 1,
            }
        }
        for _ in 0..SYNS / BATCHES {
            let src = spoofed_ip(rng.below(u64::from(SPOOFED_COUNT)) as u8);
            let mut syn = bare_segment(
                1024 + rng.below(64_512) as u16,
                PORT,
                rng.next_u64() as u32,
                None,
                Flags::SYN,
            );
            syn.window_len = 64_240;
            syn.max_seg_size = Some(1460);
            if rng.chance(0.5) {
                syn.timestamps = Some((rng.next_u64() as u32, 0));
                syn.window_scale = Some(7);
                syn.sack_permitted = true;
            }
            match raw.send(&frames::tcp_frame(
                va_mac,
                vb_mac,
                src,
                SERVER_IP,
                &syn,
                &[],
            )) {
                Ok(()) => sent += 1,
                Err(_) => send_errors += 1,
            }
        }
        let due = FLOOD * (batch as u32 + 1) / BATCHES as u32;
        if let Some(wait) = due.checked_sub(flood_start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let flood_time = flood_start.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let results = clients.join().expect("the client thread");
    echo.assert_running();
    // After the flood, with some 2048 half-open connections still waiting for their ACKs,
    // a bulk transfer works too.
    echo_transfer(PORT, 1_000_000, Duration::from_secs(10));

    let (status, log) = echo.stop();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let times: Vec<Duration> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let slow = times
        .iter()
        .filter(|t| **t > Duration::from_millis(900))
        .count();
    let slowest = times.iter().max().copied().unwrap_or_default();
    let summary = format!(
        "SYN flood (seed {seed:#x}): {sent} SYNs and {forged_sent} forged cookie ACKs sent in \
         {flood_time:?} ({send_errors} send errors); {} legitimate connections, {} failed, \
         {slow} took over 900 ms (a lost SYN), slowest {slowest:?}; cookies sent {}, accepted \
         {}, rejected {}, SYNs dropped {}, passive opens {}\nper engine:\n{}",
        results.len(),
        failures.len(),
        tcp_counter(&log, "cookies_sent"),
        tcp_counter(&log, "cookies_accepted"),
        tcp_counter(&log, "cookies_rejected"),
        tcp_counter(&log, "syns_dropped"),
        tcp_counter(&log, "passive_opens"),
        tcp_counter_lines(&log).join("\n"),
    );
    println!("{summary}");
    assert_clean_exit(status, &log, 2);
    // Every legitimate client got through, cookies or not.
    assert!(
        failures.is_empty(),
        "legitimate connections failed during the flood: {failures:?}\n{summary}\n{log}"
    );
    assert!(
        results.len() >= 50,
        "too few legitimate connections to tell: {summary}"
    );
    // The SYN queues (1024 per engine) filled, and the rest of the flood got cookies: all of
    // it but the 2 x 1024 stateful answers and what the engines never saw, allowed 10%. (The
    // legitimate clients got cookies too; each that completed is one cookie accepted.)
    let cookies_sent = tcp_counter(&log, "cookies_sent");
    let cookies_accepted = tcp_counter(&log, "cookies_accepted");
    assert!(
        cookies_sent - cookies_accepted >= sent.saturating_sub(2 * 1024) * 9 / 10,
        "too few cookies for the flood: {summary}\n{log}"
    );
    // Legitimate clients that connected while the queues were full completed with cookies.
    assert!(
        cookies_accepted > 0,
        "no connection completed from a cookie: {summary}\n{log}"
    );
    // Legitimate clients are the only ones to complete from cookies: the flood's SYNs
    // never complete (their SYN-ACKs go nowhere) and a random ACK passes the cookie check
    // with a chance of 2^-29 (2 of the 256 minute values, 4 of the 2^24 check values), about
    // 4 x 10^-6 for all 2000 together.
    assert!(
        cookies_accepted <= results.len() as u64 + 1,
        "more connections from cookies than legitimate clients: {summary}\n{log}"
    );
    // Every forged ACK was refused with a RST, allowed 10% that never arrived. Those sent once
    // cookies were out were checked as cookies; the first batches' came before the SYN
    // queues (2 x 1024 of the 20,000 SYNs, about a tenth) filled, when no cookie was
    // outstanding, and were answered as ACKs for no connection: at least 80% are cookies
    // rejected.
    assert!(
        tcp_counter(&log, "resets_sent") >= forged_sent * 9 / 10,
        "forged cookie ACKs were not refused: {summary}\n{log}"
    );
    assert!(
        tcp_counter(&log, "cookies_rejected") >= forged_sent * 8 / 10,
        "forged cookie ACKs were not checked as cookies: {summary}\n{log}"
    );
    assert_eq!(tcp_counter(&log, "recv_queue_overflow"), 0, "{log}");
}

/// Segments for one connection's 4-tuple, from the kernel client in mlg-a to Melange, put on
/// the wire by a packet socket: what an attacker who knows the tuple but not the sequence
/// numbers can send.
#[derive(Clone)]
struct Injector {
    raw: Arc<PacketSocket>,
    va_mac: [u8; 6],
    vb_mac: [u8; 6],
    client_port: u16,
    server_port: u16,
}

impl Injector {
    /// Sends one segment; false if the socket refused it (not counted as injected).
    fn send(&self, seq: u32, ack: Option<u32>, flags: Flags, payload: &[u8]) -> bool {
        let mut repr = bare_segment(self.client_port, self.server_port, seq, ack, flags);
        repr.payload_len = payload.len();
        let frame = frames::tcp_frame(
            self.va_mac,
            self.vb_mac,
            CLIENT_IP,
            SERVER_IP,
            &repr,
            payload,
        );
        self.raw.send(&frame).is_ok()
    }
}

/// What the injector may put in a data segment: bytes that are not the echo's pattern.
const INJECTED_DATA: [u8; 200] = [b'X'; 200];

/// Blind injection until `stop`: RSTs, RST-ACKs, SYNs and data segments with uniformly random
/// sequence and acknowledgment numbers, at most about 60,000 a second. Returns how many of
/// each kind were sent, and the send errors.
fn inject_blind(injector: &Injector, stop: &AtomicBool, seed: u64) -> ([u64; 4], u64) {
    let mut rng = Rng::new(seed);
    let mut sent = [0u64; 4];
    let mut errors = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..64 {
            let kind = rng.below(4) as usize;
            let seq = rng.next_u64() as u32;
            let ack = rng.next_u64() as u32;
            let ok = match kind {
                0 => injector.send(seq, None, Flags::RST, &[]),
                1 => injector.send(seq, Some(ack), Flags::RST, &[]),
                2 => injector.send(seq, None, Flags::SYN, &[]),
                _ => {
                    let len = 1 + rng.below(INJECTED_DATA.len() as u64) as usize;
                    injector.send(seq, Some(ack), Flags::PSH, &INJECTED_DATA[..len])
                }
            };
            if ok {
                sent[kind] += 1;
            } else {
                errors += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (sent, errors)
}

/// Segments injected at a quiet point, where the test knows RCV.NXT and SND.NXT exactly, by
/// what RFC 5961 (and RFC 9293 §3.10.7.4) says must happen to them.
#[derive(Debug, Default)]
struct Targeted {
    /// RSTs (with and without a valid ACK) in the window but not at RCV.NXT: challenge ACK
    /// (§3.2).
    rst_in_window: u64,
    /// SYNs in the window: challenge ACK (§4).
    syn_in_window: u64,
    /// Data at exactly RCV.NXT acknowledging data never sent: dropped (RFC 9293).
    data_ack_unsent: u64,
    /// Data at exactly RCV.NXT with an ACK older than SND.UNA - MAX.SND.WND: challenge ACK
    /// (§5.2).
    data_ack_too_old: u64,
    /// Data at exactly RCV.NXT without the ACK bit: dropped (RFC 9293).
    data_no_ack: u64,
    /// FINs at exactly RCV.NXT acknowledging data never sent or too old: dropped before the
    /// FIN is looked at (RFC 9293 §3.10.7.4 checks the ACK fifth and the FIN eighth), so the
    /// connection stays open in both directions.
    fin_bad_ack: u64,
}

impl Targeted {
    fn total(&self) -> u64 {
        self.rst_in_window
            + self.syn_in_window
            + self.data_ack_unsent
            + self.data_ack_too_old
            + self.data_no_ack
            + self.fin_bad_ack
    }

    /// The ones that must draw a challenge ACK (sent or held back by the rate limit).
    fn challenges(&self) -> u64 {
        self.rst_in_window + self.syn_in_window + self.data_ack_too_old
    }

    /// One burst at a quiet point: Melange's RCV.NXT is `rcv_nxt` and its SND.NXT `snd_nxt`.
    /// The window there is the whole receive budget (256 KiB: the echo gives every buffer back
    /// once its send is taken), so offsets below 4096 are inside it. Every segment is one a
    /// correct TCP drops, and every data segment sits exactly at RCV.NXT, so accepting any
    /// would put its bytes into the echo, where the client's comparison finds them.
    fn burst(&mut self, injector: &Injector, rng: &mut Rng, rcv_nxt: u32, snd_nxt: u32) {
        let data = &INJECTED_DATA[..100];
        let count = |ok: bool, counter: &mut u64| *counter += u64::from(ok);
        for _ in 0..8 {
            let seq = rcv_nxt.wrapping_add(1 + rng.below(4095) as u32);
            count(
                injector.send(seq, None, Flags::RST, &[]),
                &mut self.rst_in_window,
            );
        }
        for _ in 0..4 {
            // RFC 5961 §3.2: only the sequence number decides; a valid ACK does not help.
            let seq = rcv_nxt.wrapping_add(1 + rng.below(4095) as u32);
            count(
                injector.send(seq, Some(snd_nxt), Flags::RST, &[]),
                &mut self.rst_in_window,
            );
        }
        for _ in 0..4 {
            let seq = rcv_nxt.wrapping_add(rng.below(4096) as u32);
            count(
                injector.send(seq, None, Flags::SYN, &[]),
                &mut self.syn_in_window,
            );
        }
        for _ in 0..4 {
            let ack = snd_nxt.wrapping_add(1 + rng.below(1 << 20) as u32);
            count(
                injector.send(rcv_nxt, Some(ack), Flags::PSH, data),
                &mut self.data_ack_unsent,
            );
        }
        for _ in 0..4 {
            // MAX.SND.WND is at most 2^30 (RFC 7323 §2.3), so this is older than any
            // acceptable ACK.
            let ack = snd_nxt.wrapping_sub((1 << 30) + rng.below(1 << 20) as u32);
            count(
                injector.send(rcv_nxt, Some(ack), Flags::PSH, data),
                &mut self.data_ack_too_old,
            );
        }
        for _ in 0..4 {
            count(
                injector.send(rcv_nxt, None, Flags::PSH, data),
                &mut self.data_no_ack,
            );
        }
        for too_old in [false, true] {
            let ack = if too_old {
                snd_nxt.wrapping_sub((1 << 30) + rng.below(1 << 20) as u32)
            } else {
                snd_nxt.wrapping_add(1 + rng.below(1 << 20) as u32)
            };
            count(
                injector.send(rcv_nxt, Some(ack), Flags::FIN, &[]),
                &mut self.fin_bad_ack,
            );
        }
    }
}

/// Reads the kernel client's SYN and Melange's SYN-ACK for `client_port` from the packet
/// socket, which was bound before the connection was opened: the two initial sequence
/// numbers (client's, server's).
fn handshake_isns(raw: &PacketSocket, client_port: u16, server_port: u16) -> (u32, u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut client, mut server) = (None, None);
    let mut buf = vec![0u8; 2048];
    while client.is_none() || server.is_none() {
        assert!(
            Instant::now() < deadline,
            "the handshake of port {client_port} was not seen on mlg-va"
        );
        let Some(len) = raw.recv(&mut buf, 100_000_000).expect("reading mlg-va") else {
            continue;
        };
        let frame = &buf[..len.min(buf.len())];
        let Ok(eth) = melange_wire::ethernet::Packet::new_checked(frame) else {
            continue;
        };
        if eth.ethertype() != melange_wire::EtherType::Ipv4 {
            continue;
        }
        let Ok(ip) = melange_wire::ipv4::Packet::new_checked(eth.payload()) else {
            continue;
        };
        if ip.protocol() != melange_wire::IpProtocol::Tcp {
            continue;
        }
        let Ok(seg) = tcp::Packet::new_checked(ip.payload()) else {
            continue;
        };
        let flags = seg.flags();
        if !flags.contains(Flags::SYN) {
            continue;
        }
        if (seg.src_port(), seg.dst_port()) == (client_port, server_port)
            && !flags.contains(Flags::ACK)
        {
            client = Some(seg.seq_number());
        } else if (seg.src_port(), seg.dst_port()) == (server_port, client_port)
            && flags.contains(Flags::ACK)
        {
            server = Some(seg.seq_number());
        }
    }
    (client.unwrap(), server.unwrap())
}

#[test]
fn blind_rst_syn_and_data_injection_is_ignored_and_the_echo_stays_byte_exact() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    const PORT: u16 = 9205;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 256;
    const TOTAL: usize = CHUNK * CHUNKS;
    // The connection lives in one engine, the one behind the receive queue its segments
    // arrive on, and the kernel picks the transmit queue of the client's flow and of the
    // packet socket's frames independently. With one transmit queue on mlg-va both arrive on
    // queue 0, so the injected segments meet the connection rather than the other engine's
    // listener (which would answer them as strays).
    let _steer = OneTxQueue::new("mlg-a", "mlg-va");
    let mut echo = start_tcp_echo(PORT);
    let (raw, va_mac, vb_mac) = raw_socket_on_va();
    let raw = Arc::new(raw);
    let to = SocketAddrV4::new(SERVER_IP, PORT);
    let stream = in_netns("mlg-a", || {
        TcpStream::connect_timeout(&to.into(), Duration::from_secs(5))
    })
    .unwrap_or_else(|e| panic!("connecting to {to}: {e}\n{}", echo.log()));
    let SocketAddr::V4(local) = stream.local_addr().expect("the client's address") else {
        panic!("an IPv4 connection has an IPv6 address");
    };
    let (client_isn, server_isn) = handshake_isns(&raw, local.port(), PORT);
    let injector = Injector {
        raw: Arc::clone(&raw),
        va_mac,
        vb_mac,
        client_port: local.port(),
        server_port: PORT,
    };

    // The transfer runs in chunks: the writer sends one and waits; once the reader has read
    // its echo back the connection is quiet, and the test knows Melange's RCV.NXT and SND.NXT
    // to the byte, injects a targeted burst, and lets the writer go on. The blind injector
    // runs all the while, from the end of the first chunk (the handshake is surely over) to
    // before the last chunk's FIN (after the close, a stray SYN would open a new connection).
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (quiet_tx, quiet_rx) = mpsc::channel::<usize>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let mut writer = stream.try_clone().unwrap();
    let writer_thread = std::thread::spawn(move || -> Result<(), String> {
        let mut fill = pattern(0x5eed);
        let mut buf = vec![0u8; CHUNK];
        for k in 0..CHUNKS {
            go_rx.recv().map_err(|_| "the test stopped".to_string())?;
            fill(&mut buf);
            writer
                .write_all(&buf)
                .map_err(|e| format!("sending chunk {k}: {e}"))?;
        }
        go_rx.recv().map_err(|_| "the test stopped".to_string())?;
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("half-closing: {e}"))
    });
    let reader_thread = std::thread::spawn(move || -> Result<(), String> {
        let mut reader = stream;
        let mut expect = pattern(0x5eed);
        let mut want = vec![0u8; 64 * 1024];
        let mut got = vec![0u8; 64 * 1024];
        let mut at = 0usize;
        while at < TOTAL {
            let n = reader
                .read(&mut got)
                .map_err(|e| format!("reading the echo at byte {at} of {TOTAL}: {e}"))?;
            if n == 0 {
                return Err(format!("the server closed after {at} of {TOTAL} bytes"));
            }
            expect(&mut want[..n]);
            if let Some(i) = (0..n).find(|&i| want[i] != got[i]) {
                return Err(format!("the echo differs at byte {} of {TOTAL}", at + i));
            }
            at += n;
            if at.is_multiple_of(CHUNK) {
                let _ = quiet_tx.send(at);
            }
        }
        let mut tail = [0u8; 16];
        match reader.read(&mut tail) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!("{n} bytes after the echo")),
            Err(e) => Err(format!("reading the server's FIN: {e}")),
        }
    });

    let seed = 0x0052_4643_5f35_3936;
    let mut rng = Rng::new(seed);
    let mut targeted = Targeted::default();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(Arc::clone(&stop));
    let mut blind = None;
    let start = Instant::now();
    for k in 0..=CHUNKS {
        if k > 0 {
            let Ok(at) = quiet_rx.recv_timeout(Duration::from_secs(30)) else {
                drop(go_tx);
                panic!(
                    "no echo of chunk {k}: writer {:?}, reader {:?}\n{}",
                    writer_thread.join(),
                    reader_thread.join(),
                    echo.log()
                );
            };
            assert_eq!(at, k * CHUNK);
            // Quiet: the client wrote exactly `at` bytes and read them all back.
            let rcv_nxt = client_isn.wrapping_add(1 + at as u32);
            let snd_nxt = server_isn.wrapping_add(1 + at as u32);
            targeted.burst(&injector, &mut rng, rcv_nxt, snd_nxt);
            if k == 1 {
                let (injector, stop) = (injector.clone(), Arc::clone(&stop));
                let seed = rng.next_u64();
                blind = Some(std::thread::spawn(move || {
                    inject_blind(&injector, &stop, seed)
                }));
            }
        }
        if k == CHUNKS {
            stop.store(true, Ordering::Relaxed);
        }
        if go_tx.send(()).is_err() {
            break;
        }
    }
    let (blind_sent, blind_errors) = blind
        .expect("the blind injector started")
        .join()
        .expect("the blind injector thread");
    let writer_result = writer_thread.join().expect("the writer thread");
    let reader_result = reader_thread.join().expect("the reader thread");
    let elapsed = start.elapsed();
    let (status, log) = echo.stop();

    let blind_total: u64 = blind_sent.iter().sum();
    let injected = blind_total + targeted.total();
    let dropped = tcp_counter(&log, "segments_dropped");
    let challenged =
        tcp_counter(&log, "challenge_acks") + tcp_counter(&log, "challenge_acks_suppressed");
    let summary = format!(
        "{TOTAL} bytes echoed in {elapsed:?} (seed {seed:#x}); injected {injected}: blind \
         {blind_total} (RST {}, RST-ACK {}, SYN {}, data {}; {blind_errors} send errors), \
         targeted {} ({targeted:?}); segments dropped {dropped}, challenge ACKs {} sent + {} \
         held back, segments in {}, resets from the peer {}\nper engine:\n{}",
        blind_sent[0],
        blind_sent[1],
        blind_sent[2],
        blind_sent[3],
        targeted.total(),
        tcp_counter(&log, "challenge_acks"),
        tcp_counter(&log, "challenge_acks_suppressed"),
        tcp_counter(&log, "segments_in"),
        tcp_counter(&log, "reset_by_peer"),
        tcp_counter_lines(&log).join("\n"),
    );
    println!("{summary}");
    // Byte-exact both ways, not reset, closed in order.
    writer_result.unwrap_or_else(|e| panic!("writer: {e}\n{summary}\n{log}"));
    reader_result.unwrap_or_else(|e| panic!("reader: {e}\n{summary}\n{log}"));
    assert_clean_exit(status, &log, 2);
    assert_eq!(
        tcp_counter(&log, "reset_by_peer"),
        0,
        "an injected RST closed a connection:\n{summary}"
    );
    assert!(
        blind_total >= 5_000,
        "the blind injector hardly ran: {summary}"
    );
    // Every targeted segment is one the connection must drop, and so is every blind one but
    // a data segment that lands in the 256 KiB window (2^-14) with an ACK in
    // [SND.UNA - MAX.SND.WND, SND.NXT] (about 2^-9.5 with Linux's window of some 6 MB) at
    // once: about 10^-7 per segment, 5 x 10^-4 for the 5000 of a run. That one would be
    // taken as data (RFC 5961 §5 narrows blind injection, no TCP can refuse it) and fail the
    // echo comparison above. So the only shortfall allowed is what never reached the
    // connection (frames lost before the engine): 5%.
    assert!(
        dropped >= injected * 95 / 100,
        "the connection did not drop what was injected:\n{summary}\n{log}"
    );
    assert!(
        challenged >= targeted.challenges(),
        "in-window RSTs and SYNs or too-old ACKs drew no challenge ACK:\n{summary}\n{log}"
    );
}

/// 10,000 concurrent connections from Melange's client against the Linux epoll echo, each
/// opened, used and closed. (Runs on 2026-12-03 once left thousands unopened: a burst of
/// handshakes completing at once overflowed the app's event queue and the engine dropped
/// connections with undelivered `Established` events from its ready list; the simulator's
/// `every_handshake_is_reported_when_the_event_queue_overflows` pins that down.)
#[test]
fn ten_thousand_connections_against_the_linux_tcp_echo() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let _steer = OneTxQueue::new("mlg-b", "mlg-vb");
    let mut linux = Server::start(
        "mlg-b",
        "linux-tcp-echo-10k",
        &["baseline", "tcp-echo", "--addr", SERVER, "--port", "9204"],
    );
    wait_accepting(&mut linux, 9204);
    let run_with = |connections: &str,
                    inflight: &str,
                    payload: &str,
                    duration: &str,
                    warmup: &str,
                    timeout: &str| {
        tcp_loadgen(
            9204,
            [connections, inflight, payload, duration, warmup, timeout],
        )
    };
    // 10,000 connections at once, each used. They open during a 5 s warm-up (256 handshakes
    // in flight at a time) and drain for up to 30 s: a handshake whose SYN-ACK was lost in a
    // burst (the AF_XDP receive ring overflows when every connection answers at once) waits
    // out SYN retransmission timeouts of 1, 2, 4 s.
    let (json, text) = run_with("10000", "1", "64", "3s", "5s", "30s");
    assert!(
        count(&json, "received") >= 10_000,
        "{text}\n{}",
        linux.log()
    );
    assert_eq!(count(&json, "received"), count(&json, "sent"), "{text}");
    assert!(!text.contains("could not be opened"), "{text}");
    linux.kill();
}

/// Reads from `s` until `end` closes what arrived.
fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end) {
        let n = s.read(&mut buf).expect("a reply from melange kv");
        assert!(n > 0, "melange kv closed the connection; got {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn kv_on_af_xdp_serves_redis_and_memcached_clients_from_the_other_host() {
    if !root_or_skip() {
        return;
    }
    for tool in ["redis-benchmark", "memcslap"] {
        if !melange_sys::testenv::tool_or_skip("kv af_xdp lab test", tool) {
            return;
        }
    }
    let _lock = test_lock();
    lab_ready();
    let mut kv = Server::start(
        "mlg-b",
        "kv",
        &[
            "kv",
            "--backend",
            "af_xdp",
            "--interface",
            "mlg-vb",
            "--resp-port",
            "6390",
            "--memcache-port",
            "11290",
            "--memcache-udp-port",
            "11290",
            "--queues",
            "0,1",
        ],
    );
    wait_accepting(&mut kv, 6390);
    // Redis, then memcached over TCP and UDP, on one keyspace.
    in_netns("mlg-a", || {
        let mut redis = TcpStream::connect((SERVER_IP, 6390)).unwrap();
        redis
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        redis.write_all(b"SET shared from-redis\r\n").unwrap();
        assert_eq!(read_until(&mut redis, b"\r\n"), b"+OK\r\n");
        let mut mc = TcpStream::connect((SERVER_IP, 11290)).unwrap();
        mc.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        mc.write_all(b"get shared\r\nset m 0 0 2\r\nhi\r\n")
            .unwrap();
        assert_eq!(
            read_until(&mut mc, b"STORED\r\n"),
            b"VALUE shared 0 10\r\nfrom-redis\r\nEND\r\nSTORED\r\n"
        );
        redis.write_all(b"GET m\r\n").unwrap();
        assert_eq!(read_until(&mut redis, b"hi\r\n"), b"$2\r\nhi\r\n");
        let udp = std::net::UdpSocket::bind((CLIENT_IP, 0)).unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        udp.send_to(
            b"\x00\x2a\x00\x00\x00\x01\x00\x00get m\r\n",
            (SERVER_IP, 11290),
        )
        .unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = udp.recv_from(&mut buf).expect("a UDP reply");
        assert_eq!(
            &buf[..n],
            b"\x00\x2a\x00\x00\x00\x01\x00\x00VALUE m 0 2\r\nhi\r\nEND\r\n"
        );
    });
    // Real load tools from the other host: every reply right, no errors.
    let bench = netns_exec(
        "mlg-a",
        &[
            "redis-benchmark",
            "-h",
            SERVER,
            "-p",
            "6390",
            "-t",
            "set,get,incr,lpush,lpop",
            "-n",
            "20000",
            "-c",
            "20",
            "-P",
            "16",
            "-q",
        ],
    );
    let report = output_text(&bench);
    assert!(bench.status.success(), "redis-benchmark: {report}");
    assert!(
        !report.contains("rror"),
        "redis-benchmark saw errors: {report}"
    );
    println!("redis-benchmark over af_xdp:\n{report}");
    let slap = netns_exec(
        "mlg-a",
        &[
            "memcslap",
            "--servers=10.77.0.2:11290",
            "--concurrency=10",
            "--execute-number=2000",
        ],
    );
    let report = output_text(&slap);
    assert!(slap.status.success(), "memcslap: {report}");
    assert!(report.contains("Time to set"), "{report}");
    println!("memcslap over af_xdp:\n{report}");
    // Melange's own key-value load generator, on AF_XDP on both sides: every get of a filled
    // key space hits with its key's value, over both protocols.
    for (protocol, port) in [("resp", "6390"), ("memcache", "11290")] {
        let target = format!("{SERVER}:{port}");
        let common = [
            "--protocol",
            protocol,
            "--backend",
            "af_xdp",
            "--interface",
            "mlg-va",
            "--target",
            &target,
            "--connections",
            "20",
            "--pipeline",
            "8",
            "--keys",
            "1000",
            "--warmup",
            "0s",
            "--timeout",
            "2s",
        ];
        let (fill, text) =
            loadgen(&[&common[..], &["--get-ratio", "0", "--duration", "1s"]].concat());
        assert!(
            fill["kv"]["stored"].as_u64().unwrap_or(0) > 20_000,
            "{text}"
        );
        let (mix, text) =
            loadgen(&[&common[..], &["--get-ratio", "0.9", "--duration", "1s"]].concat());
        let kv_counts = &mix["kv"];
        assert_eq!(kv_counts["wrong"], 0, "{protocol}: {text}");
        assert_eq!(kv_counts["errors"], 0, "{protocol}: {text}");
        assert_eq!(
            kv_counts["misses"], 0,
            "{protocol}: every key was filled: {text}"
        );
        assert!(
            kv_counts["hits"].as_u64().unwrap_or(0) > 1000,
            "{protocol}: {text}"
        );
        println!("melange loadgen --protocol {protocol} over af_xdp:\n{text}");
    }
    let (status, log) = kv.stop();
    assert!(status.success(), "melange kv exited {status}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(tcp_counter(&log, "recv_queue_overflow"), 0, "{log}");
}
