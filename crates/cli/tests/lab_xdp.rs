//! End-to-end tests of the AF_XDP backend in the lab: the real `melange` binary, Melange's XDP
//! program on a real veth, and real clients (the load generator, sockperf, ping, kernel sockets
//! and a raw packet socket).
//!
//! The lab is global to the machine, so every test takes the same file lock as `tests/lab.rs`
//! and brings the lab up itself (idempotently). The lab is left up afterwards; every process a
//! test starts is killed and reaped when the test ends, even when an assertion fails.
//!
//! The tests need root. Outside CI a non-root run prints "SKIPPED: needs root" and passes; in CI
//! (`CI=true`) a missing privilege is a failure, so the AF_XDP path cannot silently go untested.

mod common;
use common::lab::*;
use common::{root_or_skip, test_lock};

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use melange_sim::frames;
use melange_sys::netdev::{self, PacketSocket};
use serde_json::Value;

/// The lock `tests/lab.rs` takes too: it serializes everything that touches the lab.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// How long a server gets to answer its first probe.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `melange echo --backend af_xdp` on mlg-vb in mlg-b and waits until it answers.
fn start_echo(port: u16, protocol: &str, client: &Client) -> Server {
    start_echo_with(port, protocol, client, &[])
}

/// [`start_echo`] with more arguments (e.g. `--batch 8`).
fn start_echo_with(port: u16, protocol: &str, client: &Client, extra: &[&str]) -> Server {
    let port_arg = port.to_string();
    let mut args = vec![
        "echo",
        "--backend",
        "af_xdp",
        "--interface",
        "mlg-vb",
        "--addr",
        "10.77.0.2",
        "--port",
        &port_arg,
        "--queues",
        "0,1",
        "--idle",
        "sleep:1000",
        "--protocol",
        protocol,
    ];
    args.extend_from_slice(extra);
    let mut server = Server::start("mlg-b", &format!("echo-{port}-{protocol}"), &args);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        server.assert_running();
        let answered = if protocol == "sockperf" {
            client.sockperf_probe(port, Duration::from_millis(100))
        } else {
            client.probe(port, Duration::from_millis(100))
        };
        if answered {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "the echo server on port {port} did not answer a probe within {READY_TIMEOUT:?}:\n{}",
            server.log()
        );
    }
}

/// A kernel UDP socket in mlg-a, bound to 10.77.0.1, for probes and requests.
struct Client {
    socket: UdpSocket,
    next: AtomicU64,
}

impl Client {
    fn new() -> Self {
        let socket = in_netns("mlg-a", || UdpSocket::bind((CLIENT_IP, 0)))
            .expect("binding a UDP socket to 10.77.0.1 in mlg-a");
        Self {
            socket,
            next: AtomicU64::new(1),
        }
    }

    /// Sends `payload` to SERVER_IP:`port` and waits up to `timeout` for a reply from there that
    /// `matches`.
    fn ask(
        &self,
        port: u16,
        payload: &[u8],
        timeout: Duration,
        matches: impl Fn(&[u8]) -> bool,
    ) -> bool {
        let target = SocketAddrV4::new(SERVER_IP, port);
        self.socket
            .send_to(payload, target)
            .expect("sending a request");
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            match self.socket.recv_from(&mut buf) {
                Ok((len, from)) if from == target.into() && matches(&buf[..len]) => return true,
                Ok(_) => {} // A stale reply to an earlier request.
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(e) => panic!("receiving a reply: {e}"),
            }
        }
    }

    /// Sends `payload` (up to 65,507 bytes: the kernel fragments what exceeds the MTU) to
    /// SERVER_IP:`port` and waits up to `timeout` for the same bytes to come back from there;
    /// other replies (stale ones, to earlier requests) are skipped.
    fn echo_exact(&self, port: u16, payload: &[u8], timeout: Duration) -> bool {
        let target = SocketAddrV4::new(SERVER_IP, port);
        self.socket
            .send_to(payload, target)
            .expect("sending a request");
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            match self.socket.recv_from(&mut buf) {
                Ok((len, from)) if from == target.into() && buf[..len] == *payload => return true,
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(e) => panic!("receiving a reply: {e}"),
            }
        }
    }

    /// A unique plain datagram; true if it came back unchanged (from Melange's echo).
    fn probe(&self, port: u16, timeout: Duration) -> bool {
        self.probe_from(port, timeout, b"")
    }

    /// A unique plain datagram; true if it came back with `prefix` in front (a [`KernelEcho`]
    /// answers with [`KERNEL_ECHO_PREFIX`], so its replies cannot pass for Melange's).
    fn probe_from(&self, port: u16, timeout: Duration, prefix: &[u8]) -> bool {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let payload = format!("melange lab_xdp probe {n}").into_bytes();
        self.ask(port, &payload, timeout, |reply| {
            reply.strip_prefix(prefix) == Some(&payload[..])
        })
    }

    /// A sockperf ping-pong message (seq, flags = client | pong request, length); true if the
    /// server answered it as sockperf does (same seq, client flag cleared).
    fn sockperf_probe(&self, port: u16, timeout: Duration) -> bool {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut message = vec![0u8; 64];
        message[0..8].copy_from_slice(&seq.to_be_bytes());
        message[8..10].copy_from_slice(&3u16.to_be_bytes());
        message[10..14].copy_from_slice(&64u32.to_be_bytes());
        self.ask(port, &message, timeout, |reply| {
            reply.len() == 64 && reply[0..8] == seq.to_be_bytes() && reply[8..10] == [0, 2]
        })
    }

    /// `probe` with up to `attempts` tries; returns the attempts used, or None.
    fn probe_retrying(&self, port: u16, attempts: u32) -> Option<u32> {
        (1..=attempts).find(|_| self.probe(port, Duration::from_millis(500)))
    }

    /// `probe_retrying` for a [`KernelEcho`].
    fn kernel_probe_retrying(&self, port: u16, attempts: u32) -> Option<u32> {
        (1..=attempts)
            .find(|_| self.probe_from(port, Duration::from_millis(500), KERNEL_ECHO_PREFIX))
    }
}

/// What a [`KernelEcho`] puts in front of every reply.
const KERNEL_ECHO_PREFIX: &[u8] = b"kernel:";

/// A kernel UDP echo server on SERVER_IP:`port` in mlg-b, on a thread; counts what it received
/// and answers with [`KERNEL_ECHO_PREFIX`] in front of the datagram.
struct KernelEcho {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl KernelEcho {
    fn start(port: u16) -> Self {
        let socket = in_netns("mlg-b", || UdpSocket::bind((SERVER_IP, port)))
            .unwrap_or_else(|e| panic!("binding a kernel UDP socket to 10.77.0.2:{port}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("set_read_timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, peer)) = socket.recv_from(&mut buf) {
                        received.fetch_add(1, Ordering::Relaxed);
                        let mut reply = KERNEL_ECHO_PREFIX.to_vec();
                        reply.extend_from_slice(&buf[..len]);
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            })
        };
        Self {
            stop,
            received,
            thread: Some(thread),
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for KernelEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn af_xdp_echo_answers_loadgen_sockperf_and_ping() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let client = Client::new();
    const PORT: u16 = 9101;

    // The load generator's requests are not sockperf messages (bytes 8..10 are the top of its
    // sequence number, so never "pong requested"): a `--protocol sockperf` server rightly leaves
    // them unanswered. So the load generator gets a plain echo, and sockperf a sockperf one.
    let mut echo = start_echo(PORT, "plain", &client);
    let target = format!("10.77.0.2:{PORT}");
    let (json, text) = loadgen(&[
        "--backend",
        "af_xdp",
        "--interface",
        "mlg-va",
        "--bind",
        "10.77.0.1",
        "--target",
        &target,
        "--inflight",
        "16",
        "--duration",
        "1s",
        "--warmup",
        "0.3s",
    ]);
    let context = || format!("{text}\n{}", echo.log());
    println!(
        "af_xdp loadgen: measured {} at {} requests/s, p50 {} ns",
        count(&json, "measured"),
        json["requests_per_s"],
        json["latency"]["p50_ns"]
    );
    assert!(
        count(&json, "measured") > 1000,
        "too few measured:\n{}",
        context()
    );
    assert_eq!(count(&json, "timeouts"), 0, "timeouts:\n{}", context());
    assert_eq!(
        count(&json, "corrupt"),
        0,
        "corrupt replies:\n{}",
        context()
    );
    assert_eq!(
        count(&json, "unexpected"),
        0,
        "unexpected replies:\n{}",
        context()
    );
    assert!(
        has_xdp("mlg-b", "mlg-vb"),
        "no XDP program on mlg-vb while the echo runs:\n{}",
        context()
    );
    // The loadgen's XDP link went with its process.
    assert!(
        !has_xdp("mlg-a", "mlg-va"),
        "the loadgen's XDP program is still on mlg-va after it exited:\n{text}"
    );

    // ICMP is left to the kernel.
    let ping = netns_exec("mlg-a", &["ping", "-c", "3", "-W", "1", "10.77.0.2"]);
    assert!(
        ping.status.success(),
        "ping through the XDP program failed:\n{}\n{}",
        output_text(&ping),
        echo.log()
    );
    let (status, log) = echo.stop();
    assert_clean_exit(status, &log, 2);
    let echoed = sum_after(&log, "echoed ");
    assert!(
        echoed >= count(&json, "received"),
        "the engines echoed {echoed} but the loadgen received more:\n{text}\n{log}"
    );
    assert!(
        verdict(&log, "redirected") >= echoed,
        "fewer redirected than echoed:\n{log}"
    );
    assert!(
        verdict(&log, "kernel") > 0,
        "the ICMP echo requests (and ARP) should be passed to the kernel:\n{log}"
    );

    // sockperf against the sockperf protocol.
    let mut echo = start_echo(PORT, "sockperf", &client);
    let port_arg = PORT.to_string();
    let sockperf = netns_exec(
        "mlg-a",
        &[
            "sockperf",
            "ping-pong",
            "-i",
            "10.77.0.2",
            "-p",
            &port_arg,
            "-t",
            "1",
            "-m",
            "64",
        ],
    );
    let sockperf_text = output_text(&sockperf);
    assert!(
        sockperf.status.success() && sockperf_text.contains("Summary: Latency is"),
        "sockperf ping-pong failed:\n{sockperf_text}\n{}",
        echo.log()
    );
    let ping = netns_exec("mlg-a", &["ping", "-c", "3", "-W", "1", "10.77.0.2"]);
    assert!(
        ping.status.success(),
        "ping with the sockperf echo failed:\n{}\n{}",
        output_text(&ping),
        echo.log()
    );
    let (status, log) = echo.stop();
    assert_clean_exit(status, &log, 2);
    assert!(
        verdict(&log, "redirected") > 1000,
        "sockperf ran a second but few datagrams were redirected:\n{sockperf_text}\n{log}"
    );
    assert!(
        sum_after(&log, "echoed ") > 1000,
        "sockperf ran a second but few messages were answered:\n{sockperf_text}\n{log}"
    );
}

#[test]
fn filters_isolate_kernel_traffic_and_detach_on_sigkill() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let client = Client::new();
    const PORT: u16 = 9201;

    // Kernel sockets on the filtered port and on the next one, bound before Melange starts.
    // Until the filter is in place the kernel socket on PORT answers the readiness probes (with
    // its prefix, which the probe does not accept); from then on it must see nothing.
    let kernel_same_port = KernelEcho::start(PORT);
    let kernel_other_port = KernelEcho::start(PORT + 1);
    let mut echo = start_echo(PORT, "plain", &client);
    assert!(has_xdp("mlg-b", "mlg-vb"), "{}", echo.log());
    let kernel_before = kernel_same_port.received();

    for round in 0..50 {
        assert_eq!(
            client.probe_retrying(PORT, 3),
            Some(1),
            "round {round}: Melange's echo on port {PORT} did not answer at once:\n{}",
            echo.log()
        );
        assert_eq!(
            client.kernel_probe_retrying(PORT + 1, 3),
            Some(1),
            "round {round}: the kernel echo on port {} did not answer at once:\n{}",
            PORT + 1,
            echo.log()
        );
    }
    assert_eq!(
        kernel_same_port.received(),
        kernel_before,
        "the kernel socket on the filtered port saw datagrams the filter should have taken:\n{}",
        echo.log()
    );
    assert!(kernel_other_port.received() >= 50);

    // A second XDP user of mlg-vb fails clearly and leaves the first one alone.
    let second = netns_exec(
        "mlg-b",
        &[
            MELANGE,
            "echo",
            "--backend",
            "af_xdp",
            "--interface",
            "mlg-vb",
            "--addr",
            "10.77.0.2",
            "--port",
            "9299",
            "--idle",
            "sleep:1000",
            "--duration",
            "2s",
        ],
    );
    let second_text = strip_ansi(&output_text(&second));
    assert!(
        !second.status.success()
            && (second_text.contains("xdp off")
                || second_text.contains("another XDP program is attached")),
        "a second echo on mlg-vb should fail, naming the attached program:\n{second_text}"
    );
    assert_eq!(
        client.probe_retrying(PORT, 3),
        Some(1),
        "the first echo stopped answering after a second one failed to attach:\n{second_text}\n{}",
        echo.log()
    );

    // SIGKILL: no clean-up code runs, yet the link dies with the process.
    let log_before_kill = echo.log();
    echo.kill();
    let killed = Instant::now();
    while has_xdp("mlg-b", "mlg-vb") {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "the XDP program is still attached to mlg-vb 2 s after SIGKILL: {:#}\n{log_before_kill}",
            link_json("mlg-b", "mlg-vb")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("XDP detached {:?} after SIGKILL", killed.elapsed());
    // The filtered port's traffic is back with the kernel.
    let deadline = Instant::now() + Duration::from_secs(2);
    while client.kernel_probe_retrying(PORT, 1).is_none() {
        assert!(
            Instant::now() < deadline,
            "after SIGKILL the kernel socket on port {PORT} does not answer \
             (it received {}):\n{log_before_kill}",
            kernel_same_port.received()
        );
    }
    assert!(kernel_same_port.received() > kernel_before);
    assert_eq!(client.kernel_probe_retrying(PORT + 1, 3), Some(1));
}

/// The random frames come from the workspace's one deterministic generator.
type Rng = melange_core::rng::SplitMix64;

/// `len` random bytes.
fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

const ETH: usize = 14;
const IP: usize = 14;

/// Recomputes the IPv4 header checksum of `frame` (header at byte 14, length from its IHL).
fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[IP] & 0x0f) * 4;
    let header_len = ihl.max(20).min(frame.len() - IP);
    frame[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
    let mut sum: u32 = frame[IP..IP + header_len]
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[IP + 10..IP + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// The kinds of bad frame, each built from a valid request to the echo's port.
const BAD_KINDS: &[&str] = &[
    "eth_header_only",
    "ip_truncated",
    "udp_truncated",
    "udp_payload_cut",
    "bad_ihl",
    "ihl_with_options",
    "bad_version",
    "bad_ip_checksum",
    "fragment_mf",
    "fragment_offset",
    "oversized_total_len",
    "random_bytes",
    "wrong_dst_mac",
    "arp_for_other_host",
    "bad_udp_checksum",
    "bad_udp_length",
    "vlan_tagged",
];

fn bad_frame(kind: &str, good: &[u8], va_mac: [u8; 6], rng: &mut Rng) -> Vec<u8> {
    let mut f = good.to_vec();
    match kind {
        "eth_header_only" => f.truncate(ETH),
        "ip_truncated" => f.truncate(ETH + 19),
        "udp_truncated" => f.truncate(ETH + 20 + 3),
        "udp_payload_cut" => f.truncate(ETH + 20 + 8 + 4),
        "bad_ihl" => {
            f[IP] = 0x44;
            fix_ip_checksum(&mut f);
        }
        "ihl_with_options" => {
            f[IP] = 0x4f;
            fix_ip_checksum(&mut f);
        }
        "bad_version" => {
            f[IP] = 0x65;
            fix_ip_checksum(&mut f);
        }
        "bad_ip_checksum" => f[IP + 10] ^= 0x5a,
        "fragment_mf" => {
            f[IP + 6] = 0x20; // MF, offset 0, DF cleared
            f[IP + 4..IP + 6].copy_from_slice(&(rng.next_u64() as u16).to_be_bytes());
            fix_ip_checksum(&mut f);
        }
        "fragment_offset" => {
            f[IP + 6] = 0x00;
            f[IP + 7] = 0x10;
            f[IP + 4..IP + 6].copy_from_slice(&(rng.next_u64() as u16).to_be_bytes());
            fix_ip_checksum(&mut f);
        }
        "oversized_total_len" => {
            f[IP + 2..IP + 4].copy_from_slice(&1400u16.to_be_bytes());
            fix_ip_checksum(&mut f);
        }
        "random_bytes" => {
            let len = 14 + (rng.next_u64() % 100) as usize;
            f = random_bytes(rng, len);
        }
        "wrong_dst_mac" => f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]),
        "arp_for_other_host" => {
            f = frames::arp_request(va_mac, CLIENT_IP, Ipv4Addr::new(10, 77, 0, 99));
        }
        "bad_udp_checksum" => {
            let at = ETH + 20 + 6;
            let sum = u16::from_be_bytes([f[at], f[at + 1]]) ^ 0x1234;
            f[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        "bad_udp_length" => {
            let at = ETH + 20 + 4;
            f[at..at + 2].copy_from_slice(&900u16.to_be_bytes());
        }
        "vlan_tagged" => {
            f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        }
        other => unreachable!("unknown bad frame kind {other}"),
    }
    f
}

#[test]
fn bad_frames_on_the_wire_are_counted_and_echo_keeps_answering() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let client = Client::new();
    const PORT: u16 = 9301;
    let mut echo = start_echo(PORT, "plain", &client);

    let va_mac = in_netns("mlg-a", || netdev::mac_address("mlg-va")).expect("mlg-va's MAC address");
    let vb_mac = in_netns("mlg-b", || netdev::mac_address("mlg-vb")).expect("mlg-vb's MAC address");
    let raw = in_netns("mlg-a", || {
        PacketSocket::bind(netdev::ifindex("mlg-va").expect("mlg-va's ifindex"))
    })
    .expect("a packet socket on mlg-va");
    let good = frames::udp_frame(
        va_mac,
        vb_mac,
        SocketAddrV4::new(CLIENT_IP, 40999),
        SocketAddrV4::new(SERVER_IP, PORT),
        b"a well-formed request from a raw socket",
    );

    let mut rng = Rng::new(0x006d_656c_616e_6765);
    let mut sent_per_kind = vec![0u64; BAD_KINDS.len()];
    let mut send_errors = Vec::new();
    let mut retried = 0;
    const ROUNDS: usize = 300;
    for round in 0..ROUNDS {
        for (i, kind) in BAD_KINDS.iter().enumerate() {
            let frame = bad_frame(kind, &good, va_mac, &mut rng);
            match raw.send(&frame) {
                Ok(()) => sent_per_kind[i] += 1,
                Err(e) => send_errors.push(format!("{kind}: {e}")),
            }
        }
        match client.probe_retrying(PORT, 3) {
            Some(1) => {}
            Some(_) => retried += 1,
            None => panic!(
                "round {round}: a good request went unanswered 3 times among bad frames:\n{}",
                echo.log()
            ),
        }
    }
    for _ in 0..20 {
        assert!(
            client.probe_retrying(PORT, 3).is_some(),
            "a good request after the bad frames went unanswered:\n{}",
            echo.log()
        );
    }
    let sent_bad: u64 = sent_per_kind.iter().sum();
    // The fragment kinds go to the engines' reassembly, which holds the lone last fragments
    // until they time out: wait, so that every one is counted (as `reasm_timeout`).
    std::thread::sleep(REASSEMBLY_TIMEOUT + Duration::from_millis(300));
    let (status, log) = echo.stop();
    let summary = format!(
        "bad frames sent: {sent_bad} ({} kinds x {ROUNDS} rounds); send errors: {} {:?}; \
         good requests that needed a retry: {retried}\n{log}",
        BAD_KINDS.len(),
        send_errors.len(),
        send_errors.iter().take(5).collect::<Vec<_>>(),
    );
    println!("{summary}");
    assert_clean_exit(status, &log, 2);
    assert!(
        send_errors.is_empty(),
        "the packet socket refused bad frames:\n{summary}"
    );

    // Every bad frame is accounted for: passed to the kernel by the XDP program (with a reason)
    // or redirected and dropped by an engine (with a reason; the fragments, which the XDP
    // program's fragment rule sends to the engines, by their reassembly). Only the good
    // requests, a few probes and the kernel's own chatter (counted as `kernel`) add to the sum.
    let passed: u64 = [
        "no_socket",
        "no_filter",
        "peer_rejected",
        "kernel",
        "fragment",
        "malformed",
    ]
    .iter()
    .map(|name| verdict(&log, name))
    .sum();
    let engine_drops: u64 = log
        .match_indices("drops [")
        .map(|(at, key)| {
            let rest = &log[at + key.len()..];
            let list = &rest[..rest.find(']').unwrap_or(0)];
            list.split_whitespace()
                .filter_map(|item| item.split_once('=')?.1.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    assert!(
        passed + engine_drops >= sent_bad,
        "{sent_bad} bad frames sent, but the XDP program passed {passed} and the engines \
         dropped {engine_drops}:\n{summary}"
    );

    // Every kind of bad frame shows up in the union of the XDP verdicts (frames the program
    // passed to the kernel) and the engines' drop reasons (frames redirected to them).
    let drops = |reason: &str| sum_after(&log, &format!("{reason}="));
    let rounds = ROUNDS as u64;
    let expectations: &[(&str, u64, u64)] = &[
        // (what, observed, at least)
        (
            "fragments (xdp fragment_redirected)",
            verdict(&log, "fragment_redirected"),
            2 * rounds,
        ),
        (
            "fragments: a first one of 47 bytes (reasm_malformed), a lone last one (timed out, \
             refused by a full table, or a random identification seen before)",
            drops("reasm_malformed")
                + drops("reasm_timeout")
                + drops("reasm_table_full")
                + drops("reasm_duplicate")
                + drops("reasm_stale"),
            2 * rounds,
        ),
        (
            "truncated / bad IHL / bad version (xdp malformed)",
            verdict(&log, "malformed"),
            5 * rounds,
        ),
        (
            "ARP and VLAN frames (xdp kernel)",
            verdict(&log, "kernel"),
            2 * rounds,
        ),
        ("bad IP header checksum", drops("ip_bad_checksum"), rounds),
        ("bad UDP checksum", drops("udp_bad_checksum"), rounds),
        ("wrong destination MAC", drops("eth_not_for_us"), rounds),
        (
            "oversized total length, cut payload, bad UDP length",
            drops("ip_bad_total_len")
                + drops("ip_truncated")
                + drops("udp_bad_length")
                + drops("udp_truncated"),
            3 * rounds,
        ),
    ];
    let failures: Vec<String> = expectations
        .iter()
        .filter(|(_, observed, least)| observed < least)
        .map(|(what, observed, least)| format!("{what}: {observed} < {least}"))
        .collect();
    assert!(
        failures.is_empty(),
        "bad frames not accounted for:\n  {}\n{summary}",
        failures.join("\n  ")
    );
    assert_eq!(
        verdict(&log, "fragment"),
        0,
        "fragments to the echo's address went to the kernel:\n{summary}"
    );
}

/// How long the stack waits for the rest of a datagram's fragments.
const REASSEMBLY_TIMEOUT: Duration =
    Duration::from_nanos(melange_net::reasm::REASSEMBLY_TIMEOUT_NS);

/// IPv4 fragments the kernel makes of a UDP payload of `len` bytes at MTU 1500: 1,480 bytes of
/// IPv4 payload (the 8-byte UDP header first) per fragment.
fn fragments_of(len: usize) -> u64 {
    (8 + len).div_ceil(1480) as u64
}

/// The kernel's IPv4 reassembly requests in namespace `ns` (`ReasmReqds`, /proc/net/snmp):
/// one per fragment it received.
fn kernel_reassembly_requests(ns: &str) -> u64 {
    let out = netns_exec(ns, &["cat", "/proc/net/snmp"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut ip = text.lines().filter(|line| line.starts_with("Ip: "));
    let (names, values) = (ip.next(), ip.next());
    let (Some(names), Some(values)) = (names, values) else {
        panic!("no Ip lines in /proc/net/snmp:\n{text}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ReasmReqds")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_else(|| panic!("no ReasmReqds in /proc/net/snmp:\n{text}"))
}

/// UDP datagrams larger than a frame (1,473 bytes, just past one at MTU 1500; 8,000; UDP's
/// largest over IPv4, 65,507) from a Linux socket reach the af_xdp echo as fragments: the XDP
/// program's fragment rule sends them to the engines, the stack reassembles them (not the
/// kernel, whose reassembly counter does not move), and the echo's reply leaves fragmented;
/// each comes back byte-exact. The price of steering fragments by address is checked too: a
/// kernel socket on another port of the same address still gets its small datagrams, but its
/// fragmented ones now go to Melange, which drops them as `udp_no_listener`.
#[test]
fn large_datagrams_are_reassembled_and_echoed_in_fragments() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let client = Client::new();
    const PORT: u16 = 9501;
    let kernel_other_port = KernelEcho::start(PORT + 1);
    let mut echo = start_echo(PORT, "plain", &client);
    let kernel_reassembly_before = kernel_reassembly_requests("mlg-b");

    const SIZES: [usize; 3] = [1473, 8000, 65_507];
    const ROUNDS: usize = 5;
    let mut rng = Rng::new(0x6672_6167_6d65_6e74);
    let (mut datagrams, mut fragments) = (0u64, 0u64);
    for size in SIZES {
        for round in 0..ROUNDS {
            let payload = random_bytes(&mut rng, size);
            assert!(
                client.echo_exact(PORT, &payload, Duration::from_secs(2)),
                "round {round}: a {size}-byte datagram did not come back byte-exact:\n{}",
                echo.log()
            );
            datagrams += 1;
            fragments += fragments_of(size);
        }
        println!("{ROUNDS} datagrams of {size} bytes echoed byte-exact");
    }
    let kernel_reassembly = kernel_reassembly_requests("mlg-b") - kernel_reassembly_before;

    // The kernel's socket on the next port: its unfragmented datagrams still reach it, its
    // fragmented ones go to Melange (see melange_bpf::filter, "Fragments").
    assert_eq!(
        client.kernel_probe_retrying(PORT + 1, 3),
        Some(1),
        "the kernel echo on port {} stopped answering:\n{}",
        PORT + 1,
        echo.log()
    );
    let kernel_before = kernel_other_port.received();
    const KERNEL_LARGE: usize = 3000;
    client
        .socket
        .send_to(&[7; KERNEL_LARGE], SocketAddrV4::new(SERVER_IP, PORT + 1))
        .expect("sending a large datagram to the kernel's port");
    std::thread::sleep(Duration::from_millis(300));
    let kernel_large_received = kernel_other_port.received() - kernel_before;

    let (status, log) = echo.stop();
    assert_clean_exit(status, &log, 2);
    let context = format!(
        "{datagrams} datagrams in {fragments} fragments echoed; the kernel got \
         {kernel_reassembly} fragments\n{log}"
    );
    assert_eq!(
        kernel_reassembly, 0,
        "fragments for the echo reached the kernel's reassembly:\n{context}"
    );
    // The XDP program sent every fragment to the engines, none to the kernel.
    let large_fragments = fragments_of(KERNEL_LARGE);
    assert_eq!(
        verdict(&log, "fragment_redirected"),
        fragments + large_fragments,
        "{context}"
    );
    assert_eq!(verdict(&log, "fragment"), 0, "{context}");
    // The stack reassembled each request and fragmented each reply.
    assert_eq!(
        sum_after(&log, "frag received "),
        fragments + large_fragments,
        "{context}"
    );
    assert_eq!(sum_after(&log, "reassembled "), datagrams, "{context}");
    assert_eq!(sum_after(&log, "fragmented "), datagrams, "{context}");
    assert_eq!(sum_after(&log, "frag sent "), fragments, "{context}");
    assert!(
        !log.contains("reasm_"),
        "reassembly dropped something:\n{context}"
    );
    assert!(
        sum_after(&log, "echoed ") >= datagrams,
        "fewer echoed than came back:\n{context}"
    );
    // The kernel-owned port's large datagram: reassembled by Melange, dropped as no listener.
    assert_eq!(
        kernel_large_received,
        0,
        "the kernel socket on port {} received a fragmented datagram:\n{context}",
        PORT + 1
    );
    assert_eq!(sum_after(&log, "udp_no_listener="), 1, "{context}");

    // An engine batch smaller than a datagram's 45 fragments: the reply still leaves whole
    // (the stack asks the AF_XDP queue for room for all its fragments at once, in several
    // device batches).
    drop(echo);
    let mut echo = start_echo_with(PORT, "plain", &client, &["--batch", "8"]);
    const SMALL_BATCH_ROUNDS: u64 = 5;
    for round in 0..SMALL_BATCH_ROUNDS {
        let payload = random_bytes(&mut rng, 65_507);
        assert!(
            client.echo_exact(PORT, &payload, Duration::from_secs(2)),
            "--batch 8, round {round}: a 65,507-byte datagram did not come back:\n{}",
            echo.log()
        );
    }
    let (status, log) = echo.stop();
    assert_clean_exit(status, &log, 2);
    assert_eq!(sum_after(&log, "fragmented "), SMALL_BATCH_ROUNDS, "{log}");
    assert_eq!(sum_after(&log, "tx no room "), 0, "{log}");
}

/// An nftables chain on mlg-va's egress (where the kernel's fragments leave the client, before
/// mlg-vb's XDP program) that drops every IPv4 fragment to the server at one offset; removed
/// when dropped.
struct DropFragmentsAt;

/// The nftables table of [`DropFragmentsAt`].
const FRAGMENT_DROP_TABLE: &str = "melange_frag_test";

impl DropFragmentsAt {
    /// Drops the fragments whose offset is `offset_units` 8-byte units (185: the second
    /// fragment of a datagram at MTU 1500, a middle one when it has three or more).
    fn install(offset_units: u16) -> Self {
        // Declaring the table first lets the script delete a stale one from a killed run.
        let script = format!(
            "table netdev {FRAGMENT_DROP_TABLE}\n\
             delete table netdev {FRAGMENT_DROP_TABLE}\n\
             table netdev {FRAGMENT_DROP_TABLE} {{\n\
               chain egress {{\n\
                 type filter hook egress device \"mlg-va\" priority 0; policy accept;\n\
                 ip daddr {SERVER_IP} ip frag-off & 0x1fff == {offset_units} counter drop\n\
               }}\n\
             }}\n"
        );
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", "mlg-a", "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft runs in mlg-a");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("nft's stdin")
            .write_all(script.as_bytes())
            .expect("writing the nft script");
        let out = child.wait_with_output().expect("nft exits");
        assert!(
            out.status.success(),
            "installing the fragment drop rule:\n{script}\n{}",
            output_text(&out)
        );
        DropFragmentsAt
    }

    /// Fragments the rule dropped so far.
    fn dropped(&self) -> u64 {
        let out = netns_exec(
            "mlg-a",
            &[
                "nft",
                "list",
                "chain",
                "netdev",
                FRAGMENT_DROP_TABLE,
                "egress",
            ],
        );
        let text = output_text(&out);
        assert!(out.status.success(), "{text}");
        number_after(&text, "counter packets ")
            .unwrap_or_else(|| panic!("no counter in the fragment drop chain:\n{text}"))
    }
}

impl Drop for DropFragmentsAt {
    fn drop(&mut self) {
        let out = netns_exec(
            "mlg-a",
            &["nft", "delete", "table", "netdev", FRAGMENT_DROP_TABLE],
        );
        if !out.status.success() {
            eprintln!(
                "removing the fragment drop rule failed:\n{}",
                output_text(&out)
            );
        }
    }
}

/// Cuts the IPv4 datagram of `frame` (an Ethernet/IPv4 frame without options, DF or not) into
/// the fragments Linux would send at MTU 1500 (1,480 bytes of payload each), with
/// identification `ident`, header checksums fixed.
fn fragment_frame(frame: &[u8], ident: u16) -> Vec<Vec<u8>> {
    let (header, payload) = (&frame[..ETH + 20], &frame[ETH + 20..]);
    let chunks: Vec<&[u8]> = payload.chunks(1480).collect();
    let last = chunks.len() - 1;
    (chunks.iter().enumerate())
        .map(|(i, chunk)| {
            let mut f = header.to_vec();
            f.extend_from_slice(chunk);
            f[IP + 2..IP + 4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
            f[IP + 4..IP + 6].copy_from_slice(&ident.to_be_bytes());
            let more = if i < last { 0x2000 } else { 0 };
            let field = more | (i * 1480 / 8) as u16;
            f[IP + 6..IP + 8].copy_from_slice(&field.to_be_bytes());
            fix_ip_checksum(&mut f);
            f
        })
        .collect()
}

/// A datagram that loses a fragment is never delivered: the stack holds its other fragments
/// until the reassembly timeout, then frees them and counts `reasm_timeout` once per
/// datagram. Two kinds of loss: nftables on the client's egress dropping the second fragment
/// of a Linux socket's datagrams (Linux then sends none of the later ones either: measured,
/// only the first fragment of each reaches the server, since `ip_do_fragment` stops at the
/// first fragment the device refuses), and datagrams injected with a packet socket with a hole
/// in the middle (every fragment but the second arrives). Afterwards the table is free again
/// (more datagrams than it has slots come back whole) and the engines' pools get every frame
/// back.
#[test]
fn lost_fragments_time_out_in_reassembly_and_leak_nothing() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let client = Client::new();
    const PORT: u16 = 9601;
    const SIZE: usize = 8000;
    let per = fragments_of(SIZE);
    let mut echo = start_echo(PORT, "plain", &client);
    let mut rng = Rng::new(0x6c6f_7374_6672_6167);

    // A Linux socket's datagrams, their second fragment dropped on the way out.
    const LOST_NFT: u64 = 10;
    let rule = DropFragmentsAt::install(185);
    for round in 0..LOST_NFT {
        let payload = random_bytes(&mut rng, SIZE);
        assert!(
            !client.echo_exact(PORT, &payload, Duration::from_millis(200)),
            "round {round}: a datagram that lost a fragment came back:\n{}",
            echo.log()
        );
    }
    let nft_dropped = rule.dropped();
    drop(rule);
    assert_eq!(nft_dropped, LOST_NFT, "one fragment dropped per datagram");

    // Injected datagrams with a hole: every fragment but the second.
    const LOST_RAW: u64 = 5;
    let va_mac = in_netns("mlg-a", || netdev::mac_address("mlg-va")).expect("mlg-va's MAC address");
    let vb_mac = in_netns("mlg-b", || netdev::mac_address("mlg-vb")).expect("mlg-vb's MAC address");
    let raw = in_netns("mlg-a", || {
        PacketSocket::bind(netdev::ifindex("mlg-va").expect("mlg-va's ifindex"))
    })
    .expect("a packet socket on mlg-va");
    for round in 0..LOST_RAW {
        let frame = frames::udp_frame(
            va_mac,
            vb_mac,
            SocketAddrV4::new(CLIENT_IP, 40999),
            SocketAddrV4::new(SERVER_IP, PORT),
            &random_bytes(&mut rng, SIZE),
        );
        let fragments = fragment_frame(&frame, 0xf000 + round as u16);
        assert_eq!(fragments.len() as u64, per);
        for (i, fragment) in fragments.iter().enumerate() {
            if i != 1 {
                raw.send(fragment).expect("injecting a fragment");
            }
        }
    }
    std::thread::sleep(REASSEMBLY_TIMEOUT + Duration::from_millis(500));

    // More datagrams than the table has slots (16): the timed-out entries are free again.
    const AFTER: u64 = 20;
    for round in 0..AFTER {
        let payload = random_bytes(&mut rng, SIZE);
        assert!(
            client.echo_exact(PORT, &payload, Duration::from_secs(2)),
            "round {round} after the loss: a datagram did not come back:\n{}",
            echo.log()
        );
    }
    let (status, log) = echo.stop();
    // Every engine's pool is whole: the timed-out fragments' frames came back.
    assert_clean_exit(status, &log, 2);
    let arrived = LOST_NFT + LOST_RAW * (per - 1) + AFTER * per;
    assert_eq!(
        sum_after(&log, "reasm_timeout="),
        LOST_NFT + LOST_RAW,
        "{log}"
    );
    assert_eq!(sum_after(&log, "reassembled "), AFTER, "{log}");
    assert_eq!(sum_after(&log, "frag received "), arrived, "{log}");
    assert_eq!(verdict(&log, "fragment_redirected"), arrived, "{log}");
    println!(
        "{} datagrams lost a fragment and timed out ({LOST_NFT} from nftables, {LOST_RAW} \
         injected with a hole); {AFTER} came back whole afterwards",
        LOST_NFT + LOST_RAW
    );
}

#[test]
fn loss_shows_up_as_timeouts_and_the_server_keeps_up() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    lab_ready();
    let client = Client::new();
    const PORT: u16 = 9401;
    let mut echo = start_echo(PORT, "plain", &client);

    let impair = ImpairGuard;
    let out = melange(&["lab", "impair", "--loss", "5"]);
    assert!(out.contains("mlg-a/mlg-va"), "{out}");
    let target = format!("10.77.0.2:{PORT}");
    let (json, text) = loadgen(&[
        "--backend",
        "kernel",
        "--bind",
        "10.77.0.1",
        "--target",
        &target,
        "--inflight",
        "16",
        "--duration",
        "2s",
        "--timeout",
        "50ms",
    ]);
    let status_json: Value = serde_json::from_str(&melange(&["lab", "status", "--json"]))
        .expect("lab status --json prints JSON");
    let nft_dropped = status_json["namespaces"]
        .as_array()
        .and_then(|namespaces| namespaces.iter().find(|ns| ns["name"] == "mlg-a"))
        .and_then(|ns| ns["impairments"][0]["dropped_packets"].as_u64())
        .unwrap_or_else(|| panic!("no impairment counter on mlg-a: {status_json:#}"));
    drop(impair);

    let (sent, received, timeouts) = (
        count(&json, "sent"),
        count(&json, "received"),
        count(&json, "timeouts"),
    );
    let pct = 100.0 * timeouts as f64 / sent.max(1) as f64;
    println!(
        "5% loss: sent {sent} received {received} timeouts {timeouts} ({pct:.2}%), \
         nft dropped {nft_dropped}"
    );
    let context = || {
        format!(
            "timeouts {pct:.2}% of sent; nft dropped {nft_dropped}\n{text}\n{}",
            echo.log()
        )
    };
    assert!(received > 0, "no replies:\n{}", context());
    assert_eq!(
        count(&json, "corrupt"),
        0,
        "corrupt replies:\n{}",
        context()
    );
    assert!(timeouts > 0, "5% loss but no timeouts:\n{}", context());
    assert!(
        (2.0..=10.0).contains(&pct),
        "5% loss should time out roughly 2-10% of requests:\n{}",
        context()
    );
    assert!(
        timeouts <= nft_dropped,
        "more timeouts than datagrams nftables dropped: the server lost some:\n{}",
        context()
    );
    // The server answered everything that reached it: it kept up.
    let (status, log) = echo.stop();
    assert_clean_exit(status, &log, 2);
    let echoed = sum_after(&log, "echoed ");
    assert!(
        echoed >= received,
        "the engines echoed {echoed} < {received} received:\n{text}\n{log}"
    );
    assert!(
        !log.contains("drops [") || log.matches("drops []").count() == 2,
        "the engines dropped frames under 5% loss:\n{log}"
    );
}
