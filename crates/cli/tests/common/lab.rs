//! Helpers for the tests that drive the lab with the real `melange` binary: running it (in a
//! namespace or not), bringing the lab to a known state, and servers that are killed and reaped
//! when a test ends, even when an assertion fails.

use serde_json::Value;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::TEST_LOCK_PATH;
use melange_sys::netdev;

/// The binary under test.
pub const MELANGE: &str = env!("CARGO_BIN_EXE_melange");
/// How long a server gets to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn output_text(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `melange ARGS` in this namespace, asserts success, and returns its stdout.
pub fn melange(args: &[&str]) -> String {
    let output = Command::new(MELANGE)
        .args(args)
        .output()
        .expect("the melange binary runs");
    assert!(
        output.status.success(),
        "melange {args:?} failed:\n{}",
        output_text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `ip netns exec NS ARGS` and returns its output.
pub fn netns_exec(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip runs")
}

/// Runs `f` with the calling thread in namespace `ns`; sockets it creates stay there.
pub fn in_netns<T>(ns: &str, f: impl FnOnce() -> T) -> T {
    let _guard = netdev::enter_netns(ns).unwrap_or_else(|e| panic!("entering {ns}: {e}"));
    f()
}

/// `ip -j link show` of the lab interface `dev` in `ns`, as JSON.
pub fn link_json(ns: &str, dev: &str) -> Value {
    let output = Command::new("ip")
        .args(["-j", "-n", ns, "link", "show", "dev", dev])
        .output()
        .expect("ip runs");
    assert!(output.status.success(), "{}", output_text(&output));
    let links: Value = serde_json::from_slice(&output.stdout).expect("ip -j prints JSON");
    links[0].clone()
}

pub fn has_xdp(ns: &str, dev: &str) -> bool {
    link_json(ns, dev).get("xdp").is_some()
}

/// Brings the lab up (idempotent), clears any impairment and checks that no XDP program is left
/// on either veth end. A process that is still exiting gets a few seconds to let go; anything
/// longer is another user of the lab that does not take the lock, and fails the test.
pub fn lab_ready() {
    melange(&["lab", "up"]);
    melange(&["lab", "impair", "--clear"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (ns, dev) in [("mlg-a", "mlg-va"), ("mlg-b", "mlg-vb")] {
        loop {
            let link = link_json(ns, dev);
            if link.get("xdp").is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "an XDP program has been attached to {ns}/{dev} for 30 s before the test: is \
                 another process using the lab without taking {TEST_LOCK_PATH}? {link:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Clears the lab's impairments when dropped.
pub struct ImpairGuard;

impl Drop for ImpairGuard {
    fn drop(&mut self) {
        let output = Command::new(MELANGE)
            .args(["lab", "impair", "--clear"])
            .output();
        if let Ok(output) = output {
            if !output.status.success() {
                eprintln!(
                    "lab impair --clear in the guard failed:\n{}",
                    output_text(&output)
                );
            }
        }
    }
}

/// Removes ANSI colour sequences (the log is coloured even when written to a file).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters... final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `melange` process started with `ip netns exec` (which execs it, so the pid is melange's),
/// its stdout and stderr in files. Killed and reaped when dropped.
pub struct Server {
    child: Option<Child>,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    pub fn start(ns: &str, name: &str, args: &[&str]) -> Self {
        let base = format!("/tmp/melange-lab-xdp-{}-{name}", std::process::id());
        let stdout = PathBuf::from(format!("{base}.out"));
        let stderr = PathBuf::from(format!("{base}.err"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns, MELANGE])
            .args(args)
            .env("MELANGE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("creating the stdout log"))
            .stderr(File::create(&stderr).expect("creating the stderr log"))
            .spawn()
            .expect("melange starts inside the namespace");
        Self {
            child: Some(child),
            name: format!("melange {} (in {ns})", args.join(" ")),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// Everything the server printed so far, stdout then stderr, without colours.
    pub fn log(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        strip_ansi(&format!(
            "--- {} ---\n[stdout]\n{out}\n[stderr]\n{err}",
            self.name
        ))
    }

    /// Panics (with the log) if the server already exited.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("the server is running");
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the server exited early ({status}):\n{}", self.log());
        }
    }

    /// Waits up to `timeout` for the server to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("the server is running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait for the exit, and return the status and the whole log.
    pub fn stop(&mut self) -> (ExitStatus, String) {
        melange_sys::process::terminate(self.pid()).expect("SIGTERM to the server");
        match self.wait_exit(EXIT_TIMEOUT) {
            Some(status) => (status, self.log()),
            None => panic!(
                "the server did not exit within {EXIT_TIMEOUT:?} of SIGTERM:\n{}",
                self.log()
            ),
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

/// The number right after the first `key` in `log` (e.g. `key = "redirected: "`).
pub fn number_after(log: &str, key: &str) -> Option<u64> {
    let start = log.find(key)? + key.len();
    let digits: String = log[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The sum of the numbers after every `key` in `log`.
pub fn sum_after(log: &str, key: &str) -> u64 {
    log.match_indices(key)
        .filter_map(|(at, _)| number_after(&log[at..], key))
        .sum()
}

/// One XDP verdict counter from the `xdp filter verdicts: FilterStats { .. }` line.
pub fn verdict(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .find(|line| line.contains("xdp filter verdicts: FilterStats {"))
        .unwrap_or_else(|| panic!("no `xdp filter verdicts` line in the log:\n{log}"));
    number_after(line, &format!("{name}: "))
        .unwrap_or_else(|| panic!("no `{name}` in the XDP verdicts:\n{log}"))
}

/// Asserts that the server exited cleanly, without a panic, and that every engine's pool got
/// all its frames back (`pool A/B` with A == B).
pub fn assert_clean_exit(status: ExitStatus, log: &str, engines: usize) {
    assert!(status.success(), "the server exited with {status}:\n{log}");
    assert!(
        !log.contains("panicked"),
        "the server log mentions a panic:\n{log}"
    );
    let pools: Vec<(u64, u64)> = log
        .match_indices(" pool ")
        .filter_map(|(at, key)| {
            let rest = &log[at + key.len()..];
            let (a, rest) = rest.split_once('/')?;
            let b: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    assert_eq!(
        pools.len(),
        engines,
        "expected one `pool A/B` per engine:\n{log}"
    );
    for (available, capacity) in pools {
        assert_eq!(
            available,
            capacity,
            "an engine leaked {} frames:\n{log}",
            capacity - available
        );
    }
}

/// Runs `melange loadgen ... --json` inside mlg-a and returns its parsed output and full text.
pub fn loadgen(args: &[&str]) -> (Value, String) {
    let mut full = vec![MELANGE, "loadgen"];
    full.extend_from_slice(args);
    full.push("--json");
    let output = netns_exec("mlg-a", &full);
    let text = strip_ansi(&output_text(&output));
    assert!(output.status.success(), "loadgen {args:?} failed:\n{text}");
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("loadgen printed no JSON ({e}):\n{text}"));
    (json, text)
}

pub fn count(json: &Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("loadgen JSON has no `{key}`: {json:#}"))
}
