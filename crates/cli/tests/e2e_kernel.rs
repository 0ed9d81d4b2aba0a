//! End-to-end: `melange echo --backend kernel` on 127.0.0.1 answers the project's load
//! generator and `sockperf` (ping-pong and throughput modes), and stops cleanly on SIGTERM.
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
