//! The `melange kv --backend kernel` harness the kv test binaries share: start it on a free
//! port and wait until it answers, connect, stop it with SIGTERM and read its log, and small
//! RESP helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `melange` binary under test.
pub const MELANGE: &str = env!("CARGO_BIN_EXE_melange");
/// The distribution's Python, which python3-redis installs into (a pyenv `python3` on the
/// PATH would not see it).
pub const PYTHON: &str = "/usr/bin/python3";

/// A running `melange kv --backend kernel`, killed when dropped.
pub struct Kv {
    /// The process.
    pub child: Child,
    /// Its RESP port on 127.0.0.1.
    pub port: u16,
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Kv {
    /// Starts `melange kv --backend kernel` with `extra` arguments and waits for PING.
    pub fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(MELANGE)
            .args([
                "kv",
                "--backend",
                "kernel",
                "--resp-port",
                &port.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting melange kv");
        let mut kv = Kv { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = kv.child.try_wait().unwrap() {
                let mut log = String::new();
                kv.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut log)
                    .unwrap();
                panic!("melange kv exited at start ({status}):\n{log}");
            }
            if let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"PING\r\n").unwrap();
                let mut reply = [0u8; 7];
                // A server with a password answers `-NOAUTH Authentication required.`.
                if s.read_exact(&mut reply).is_ok()
                    && (&reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
                {
                    return kv;
                }
            }
            assert!(Instant::now() < deadline, "melange kv never answered PING");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client connection with a 10 s read timeout.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// SIGTERM, then the exit status and the log.
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    pub fn stop(mut self) -> Output {
        melange_sys::process::terminate(self.child.id()).unwrap();
        let child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        std::mem::forget(self);
        child.wait_with_output().unwrap()
    }
}

impl Drop for Kv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard output and error of a finished process, as text.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs redis-cli against `port`; its trimmed output.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("running redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Reads from `s` until `expected.len()` bytes arrived, and checks them.
pub fn expect_reply(s: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("waiting for {:?}: {e}", String::from_utf8_lossy(expected)));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// Reads until the peer closes; returns what arrived.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    s.read_to_end(&mut all)
        .expect("the server closes the connection");
    all
}
