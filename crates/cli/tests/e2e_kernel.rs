//! End-to-end: `melange echo --backend kernel` on 127.0.0.1 answers the project's load
//! generator and `sockperf` (ping-pong and throughput modes), and stops cleanly on SIGTERM;
//! the TCP load generator's churn and bulk modes run against `melange echo` and `melange
//! sink`; `melange source` and `melange sink` agree on the SHA-256 of what they moved, with
//! each other and with plain Linux sockets on the other end.
//!
//! sockperf comes from `scripts/setup.sh`. In CI (`CI=true`) a missing sockperf fails the test;
//! elsewhere the test says clearly what it skipped.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MELANGE: &str = env!("CARGO_BIN_EXE_melange");

struct Server(Child);

impl Server {
    fn start(port: u16, extra: &[&str]) -> Self {
        let child = Command::new(MELANGE)
            .args([
                "echo",
                "--backend",
                "kernel",
                "--addr",
                "127.0.0.1",
                "--port",
                &port.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting melange echo");
        let server = Server(child);
        wait_for_echo(port);
        server
    }

    /// SIGTERM, then the exit status and the log.
    fn stop(mut self) -> Output {
        melange_sys::process::terminate(self.0.id()).unwrap();
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
        std::mem::forget(self);
        child.wait_with_output().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Probes with a message both protocols answer: a sockperf ping (flags 3).
fn wait_for_echo(port: u16) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut probe = [0u8; 16];
    probe[9] = 3;
    let mut buf = [0u8; 32];
    while Instant::now() < deadline {
        socket
            .send_to(&probe, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
            .unwrap();
        if let Ok((16, _)) = socket.recv_from(&mut buf) {
            return;
        }
    }
    panic!("melange echo did not answer on port {port}");
}

fn sockperf_available() -> bool {
    melange_sys::testenv::tool_or_skip("sockperf client test", "sockperf")
}

#[test]
fn echo_answers_loadgen_exactly() {
    let port = 23_001;
    let server = Server::start(port, &["--engines", "2", "--idle", "sleep:100"]);
    let output = Command::new(MELANGE)
        .args([
            "loadgen",
            "--backend",
            "kernel",
            "--target",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--payload",
            "64",
            "--inflight",
            "16",
            "--duration",
            "1s",
            "--warmup",
            "0.2s",
            "--json",
        ])
        .args(["--idle", "sleep:100"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let received = report["received"].as_u64().unwrap();
    let measured = report["measured"].as_u64().unwrap();
    assert!(measured > 1000, "too few replies: {report}");
    assert_eq!(report["corrupt"].as_u64(), Some(0), "{report}");
    assert_eq!(report["timeouts"].as_u64(), Some(0), "{report}");
    assert!(report["requests_per_s"].as_f64().unwrap() > 1000.0);
    assert!(report["latency"]["p50_ns"].as_u64().unwrap() > 0);
    let log = server.stop();
    assert!(log.status.success(), "echo exited with {:?}", log.status);
    let stderr = String::from_utf8_lossy(&log.stderr);
    // Both engines report, and the echoed total covers every reply the client saw.
    let echoed: u64 = stderr
        .lines()
        .filter_map(|l| l.split("echoed ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        echoed >= received,
        "server echoed {echoed} < client received {received}\n{stderr}"
    );
    assert_eq!(
        stderr.matches("pool 4096/4096").count(),
        2,
        "every pool frame returned:\n{stderr}"
    );
}

#[test]
fn echo_answers_sockperf_ping_pong_and_throughput() {
    if !sockperf_available() {
        return;
    }
    let port = 23_002;
    let server = Server::start(port, &["--idle", "sleep:100", "--protocol", "sockperf"]);
    let ping = Command::new("sockperf")
        .args([
            "ping-pong",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "1",
            "-m",
            "64",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&ping.stdout).to_string() + &String::from_utf8_lossy(&ping.stderr);
    assert!(ping.status.success(), "sockperf ping-pong failed:\n{text}");
    assert!(
        text.contains("Summary: Latency is"),
        "no latency summary:\n{text}"
    );
    assert!(
        text.contains("# dropped messages = 0"),
        "sockperf saw drops:\n{text}"
    );
    let throughput = Command::new("sockperf")
        .args([
            "throughput",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "1",
            "-m",
            "64",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&throughput.stdout).to_string()
        + &String::from_utf8_lossy(&throughput.stderr);
    assert!(
        throughput.status.success(),
        "sockperf throughput failed:\n{text}"
    );
    assert!(
        text.contains("Summary: Message Rate is"),
        "no rate summary:\n{text}"
    );
    let log = server.stop();
    assert!(log.status.success());
    // Throughput-mode messages ask for no answer: received, counted, not answered.
    let stderr = String::from_utf8_lossy(&log.stderr);
    let unanswered: u64 = stderr
        .lines()
        .filter_map(|l| l.split("unanswered ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        unanswered > 1000,
        "throughput messages were not received:\n{stderr}"
    );
}

#[test]
fn help_is_available_for_every_subcommand() {
    for args in [
        vec!["--help"],
        vec!["echo", "--help"],
        vec!["loadgen", "--help"],
        vec!["sink", "--help"],
        vec!["source", "--help"],
        vec!["demo", "--help"],
        vec!["bench", "--help"],
        vec!["bench", "kernel-echo", "--help"],
        vec!["bench", "echo", "--help"],
        vec!["lab", "--help"],
        vec!["bench", "stack", "--help"],
        vec!["bench", "memory", "--help"],
    ] {
        let out = Command::new(MELANGE).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn echo_reports_a_clear_error_when_the_port_is_taken() {
    let _holder = UdpSocket::bind((Ipv4Addr::LOCALHOST, 23_003)).unwrap();
    let out = Command::new(MELANGE)
        .args([
            "echo",
            "--addr",
            "127.0.0.1",
            "--port",
            "23003",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("port 23003 cannot be bound") && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn tcp_echo_on_kernel_sockets_serves_two_engines_and_reports_per_engine() {
    use std::io::{Read, Write};
    let port = 23_011;
    let mut child = Command::new(MELANGE)
        .args(["echo", "--backend", "kernel", "--protocol", "tcp"])
        .args([
            "--port",
            &port.to_string(),
            "--engines",
            "2",
            "--idle",
            "sleep:100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting melange echo --protocol tcp");
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut streams = Vec::new();
    while streams.len() < 16 {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => streams.push(s),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                panic!("melange echo --protocol tcp never listened: {e}");
            }
        }
    }
    for (i, s) in streams.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let message = vec![i as u8; 10_000 + i];
        s.write_all(&message).unwrap();
        let mut back = vec![0u8; message.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, message, "connection {i} echoed byte-exact");
    }
    drop(streams);
    std::thread::sleep(Duration::from_millis(300));
    melange_sys::process::terminate(child.id()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "echo exited with {:?}\n{stderr}",
        output.status
    );
    let sum = |key: &str| -> u64 {
        stderr
            .lines()
            .filter_map(|l| l.split(key).nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(sum("accepted "), 16, "{stderr}");
    assert_eq!(sum("closed "), 16, "{stderr}");
    let expected: u64 = (0..16u64).map(|i| 10_000 + i).sum();
    assert_eq!(sum("bytes echoed "), expected, "{stderr}");
    assert_eq!(stderr.matches("pool 4096/4096").count(), 2, "{stderr}");
}

/// `melange loadgen --protocol tcp` against both TCP servers the benchmarks compare: Melange's
/// echo on kernel sockets and the Linux epoll baseline. Every reply is byte-checked.
#[test]
fn tcp_loadgen_measures_melange_echo_and_the_linux_baseline() {
    for (port, server) in [
        (
            23_021u16,
            vec![
                "echo",
                "--backend",
                "kernel",
                "--protocol",
                "tcp",
                "--idle",
                "sleep:100",
            ],
        ),
        (23_022u16, vec!["baseline", "tcp-echo", "--idle", "block"]),
    ] {
        let mut child = Command::new(MELANGE)
            .args(&server)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the TCP server");
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{server:?} never listened on {port}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let output = Command::new(MELANGE)
            .args(["loadgen", "--backend", "kernel", "--protocol", "tcp"])
            .args([
                "--target",
                &addr.to_string(),
                "--connections",
                "8",
                "--inflight",
                "2",
            ])
            .args(["--payload", "100", "--duration", "1s", "--warmup", "0.2s"])
            .args(["--idle", "sleep:100", "--json"])
            .output()
            .unwrap();
        melange_sys::process::terminate(child.id()).unwrap();
        let server_log = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "loadgen against {server:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["corrupt"].as_u64(), Some(0), "{server:?}: {report}");
        assert_eq!(
            report["unexpected"].as_u64(),
            Some(0),
            "{server:?}: {report}"
        );
        assert!(
            report["measured"].as_u64().unwrap() > 100,
            "{server:?}: {report}"
        );
        assert_eq!(report["sent"], report["received"], "{server:?}: {report}");
        assert!(
            server_log.status.success(),
            "{server:?} exited with {:?}: {}",
            server_log.status,
            String::from_utf8_lossy(&server_log.stderr)
        );
    }
}

#[test]
fn tcp_loadgen_refuses_what_it_cannot_do_and_says_why() {
    let run = |extra: &[&str]| {
        let output = Command::new(MELANGE)
            .args(["loadgen", "--protocol", "tcp", "--target", "127.0.0.1:9"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(run(&["--rate", "1000"]).contains("closed loop only"));
    assert!(run(&["--inflight", "1000"]).contains("inflight"));
    assert!(run(&["--connections", "0"]).contains("connections"));
    assert!(run(&["--backend", "af_xdp"]).contains("needs --interface"));
    // Nothing listens on the discard port here: a clear error, not a silent 0 req/s.
    assert!(run(&["--duration", "0.3s"]).contains("no connection"));
}

/// Waits until something listens on TCP `port` of 127.0.0.1, by the kernel's table of
/// sockets: a probing connection would be a connection the sink reports.
fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = format!("0100007F:{port:04X}");
    while Instant::now() < deadline {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        if table.lines().any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(1) == Some(&wanted.as_str()) && fields.get(3) == Some(&"0A")
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listened on 127.0.0.1:{port}");
}

/// A `melange sink --count N --json` on `port`, whose lines are read once it exits.
fn start_sink(port: u16, count: u64) -> Child {
    let child = Command::new(MELANGE)
        .args(["sink", "--protocol", "tcp", "--backend", "kernel"])
        .args(["--port", &port.to_string(), "--count", &count.to_string()])
        .args(["--idle", "sleep:100", "--duration", "60s", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting melange sink");
    wait_listening(port);
    child
}

/// The sink's records, once it exited by itself after its count.
fn sink_records(child: Child) -> Vec<serde_json::Value> {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "sink exited with {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("pool 4096/4096"),
        "every frame back:\n{stderr}"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `melange source` into `melange sink` over loopback: one digest on both ends, the
/// stream's; then Linux sockets on either end (a plain client into the sink, the source into
/// a plain listener), which is how the pair checks Melange against another TCP.
#[test]
fn source_and_sink_agree_on_sha256_with_each_other_and_with_linux_sockets() {
    use std::io::{Read, Write};
    let port = 23_031;
    let bytes: u64 = 5_000_007;
    let expected = melange_apps::stream::hex(&melange_apps::stream::stream_sha256(3, bytes));
    let sink = start_sink(port, 2);
    let output = Command::new(MELANGE)
        .args(["source", "--protocol", "tcp", "--backend", "kernel"])
        .args(["--target", &format!("127.0.0.1:{port}")])
        .args(["--bytes", &bytes.to_string(), "--seed", "3"])
        .args(["--idle", "sleep:100", "--timeout", "60s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "source failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with(&format!("source: {bytes} bytes sha256 {expected} in ")),
        "{stdout}"
    );
    // A Linux client sends the same stream, in odd-sized writes.
    let mut stream = vec![0u8; bytes as usize];
    melange_apps::stream::SeededStream::new(3).fill(&mut stream);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    for piece in stream.chunks(77_777) {
        client.write_all(piece).unwrap();
    }
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "a sink sends nothing");
    let records = sink_records(sink);
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        assert_eq!(record["bytes"].as_u64(), Some(bytes), "{record}");
        assert_eq!(
            record["sha256"].as_str(),
            Some(expected.as_str()),
            "{record}"
        );
        assert_eq!(record["complete"].as_bool(), Some(true), "{record}");
        assert!(record["mb_per_s"].as_f64().unwrap() > 0.0, "{record}");
    }
    // The source into a Linux listener that hashes what it reads.
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let target = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut received = Vec::new();
        conn.read_to_end(&mut received).unwrap();
        received
    });
    let output = Command::new(MELANGE)
        .args(["source", "--target", &target.to_string()])
        .args([
            "--bytes",
            "3MiB",
            "--seed",
            "11",
            "--json",
            "--idle",
            "sleep:100",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let received = reader.join().unwrap();
    assert_eq!(received.len(), 3 << 20);
    assert_eq!(report["bytes"].as_u64(), Some(3 << 20), "{report}");
    assert_eq!(report["end"].as_str(), Some("complete"), "{report}");
    assert_eq!(
        report["sha256"].as_str(),
        Some(sha256_hex(&received).as_str()),
        "the source's digest is the standard SHA-256 of what Linux received"
    );
}

/// Churn against Melange's TCP echo on kernel sockets: thousands of connect, request, reply,
/// close cycles, every reply byte-exact, none failing, the client holding TIME-WAIT.
#[test]
fn churn_cycles_against_melange_echo() {
    let port = 23_032;
    let mut echo = Command::new(MELANGE)
        .args(["echo", "--backend", "kernel", "--protocol", "tcp"])
        .args(["--port", &port.to_string(), "--idle", "sleep:100"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting melange echo --protocol tcp");
    wait_listening(port);
    let output = Command::new(MELANGE)
        .args([
            "loadgen",
            "--backend",
            "kernel",
            "--protocol",
            "tcp",
            "--mode",
            "churn",
        ])
        .args([
            "--target",
            &format!("127.0.0.1:{port}"),
            "--connections",
            "8",
        ])
        .args(["--payload", "300", "--duration", "1s", "--warmup", "0.2s"])
        .args(["--idle", "sleep:100", "--json"])
        .output()
        .unwrap();
    melange_sys::process::terminate(echo.id()).unwrap();
    let echo_log = echo.wait().unwrap();
    assert!(
        output.status.success(),
        "churn failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(echo_log.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mode"].as_str(), Some("churn"), "{report}");
    assert!(report["measured"].as_u64().unwrap() > 500, "{report}");
    assert_eq!(report["corrupt"].as_u64(), Some(0), "{report}");
    assert_eq!(report["unexpected"].as_u64(), Some(0), "{report}");
    assert_eq!(report["connect_failures"].as_u64(), Some(0), "{report}");
    assert_eq!(report["sent"], report["received"], "{report}");
    assert!(
        report["connects"].as_u64().unwrap() >= report["received"].as_u64().unwrap(),
        "one connection per request: {report}"
    );
    assert!(
        report["requests_per_s"].as_f64().unwrap() > 500.0,
        "{report}"
    );
    assert!(
        report["latency"]["p50_ns"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(
        report["bytes"].as_u64(),
        Some(report["received"].as_u64().unwrap() * 300),
        "{report}"
    );
}

/// Bulk into `melange sink`: goodput reported, and the sink received exactly the bytes the
/// load generator counts as taken.
#[test]
fn bulk_streams_into_melange_sink() {
    let port = 23_033;
    let sink = start_sink(port, 2);
    let output = Command::new(MELANGE)
        .args([
            "loadgen",
            "--backend",
            "kernel",
            "--protocol",
            "tcp",
            "--mode",
            "bulk",
        ])
        .args([
            "--target",
            &format!("127.0.0.1:{port}"),
            "--connections",
            "2",
        ])
        .args(["--payload", "65535", "--duration", "1s", "--warmup", "0.2s"])
        .args(["--idle", "sleep:100", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "bulk failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["mode"].as_str(), Some("bulk"), "{report}");
    let bytes = report["bytes"].as_u64().unwrap();
    assert!(
        report["bytes_measured"].as_u64().unwrap() > 1_000_000,
        "{report}"
    );
    assert!(report["bytes_per_sec"].as_f64().unwrap() > 1e6, "{report}");
    assert_eq!(report["connects"].as_u64(), Some(2), "{report}");
    let records = sink_records(sink);
    assert_eq!(records.len(), 2, "{records:?}");
    let received: u64 = records.iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert_eq!(received, bytes, "{records:?} {report}");
}

#[test]
fn sink_source_and_tcp_modes_refuse_bad_values_and_say_why() {
    let fails = |args: &[&str]| {
        let output = Command::new(MELANGE).args(args).output().unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        stderr
    };
    assert!(fails(&["sink", "--port", "0"]).contains("--port 0"));
    assert!(fails(&["sink", "--port", "9", "--count", "0"]).contains("--count 0"));
    assert!(fails(&["sink", "--port", "9", "--backend", "af_xdp"]).contains("needs --interface"));
    assert!(fails(&["sink", "--port", "9", "--protocol", "udp"]).contains("tcp"));
    let source = |extra: &[&str]| {
        let mut args = vec!["source", "--target", "127.0.0.1:9"];
        args.extend_from_slice(extra);
        fails(&args)
    };
    assert!(source(&["--bytes", "0"]).contains("at least one byte"));
    assert!(source(&["--bytes", "2T"]).contains("1 TiB"));
    assert!(source(&["--bytes", "lots"]).contains("whole number"));
    assert!(fails(&["source", "--target", "127.0.0.1:0", "--bytes", "1"]).contains("port 0"));
    assert!(fails(&["source", "--target", "0.0.0.0:9", "--bytes", "1"]).contains("unicast"));
    assert!(source(&["--bytes", "1", "--backend", "af_xdp"]).contains("needs --interface"));
    // Nothing listens on the discard port here: a clear error, not a hang.
    assert!(source(&["--bytes", "1", "--idle", "sleep:100"]).contains("no connection"));
    let loadgen = |extra: &[&str]| {
        let mut args = vec!["loadgen", "--target", "127.0.0.1:9"];
        args.extend_from_slice(extra);
        fails(&args)
    };
    assert!(loadgen(&["--mode", "churn"]).contains("is for --protocol tcp"));
    assert!(
        loadgen(&["--protocol", "tcp", "--mode", "bulk", "--payload", "70000"])
            .contains("--payload 70000")
    );
    assert!(loadgen(&["--protocol", "tcp", "--time-wait", "1s"]).contains("--backend af_xdp"));
    assert!(
        loadgen(&["--protocol", "tcp", "--mode", "churn", "--duration", "0.3s"])
            .contains("no connection")
    );
    assert!(
        loadgen(&["--protocol", "tcp", "--mode", "bulk", "--duration", "0.3s"])
            .contains("no connection")
    );
}
