//! End-to-end tests of `melange lab`, run against the real binary and the real kernel.
//!
//! Network namespaces are global to the machine, so everything that touches the lab runs in one
//! test function, in order, under a file lock that also serializes it against other test binaries
//! that take the same lock. A guard runs `melange lab down` even when an assertion fails.
//!
//! The tests need root. Outside CI a non-root run prints "SKIPPED: needs root" and passes; in CI
//! (`CI=true`) a missing privilege is a failure, so the lab cannot silently go untested.

mod common;
use common::{root_or_skip, test_lock};

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use serde_json::Value;

const MELANGE: &str = env!("CARGO_BIN_EXE_melange");
/// Taken by every test here that creates or removes the lab.
/// Datagrams sent per loss measurement.
const DATAGRAM_COUNT: u32 = 1000;

/// A kernel UDP echo server. It exits by itself after 30 s without traffic.
const ECHO_SERVER_PY: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(("10.77.0.2", 7777))
s.settimeout(30)
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
except socket.timeout:
    pass
"#;

/// Sends argv[1] numbered datagrams to the echo server, paced in bursts of 32 so that no socket
/// buffer overflows, then prints how many distinct replies came back within a second.
const ECHO_CLIENT_PY: &str = r#"
import socket, sys, time
n = int(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.connect(("10.77.0.2", 7777))
s.setblocking(False)
got = set()
def drain():
    while True:
        try:
            data = s.recv(2048)
        except BlockingIOError:
            return
        got.add(int.from_bytes(data[:4], "big"))
for i in range(n):
    s.send(i.to_bytes(4, "big") + b"x" * 28)
    if i % 32 == 31:
        time.sleep(0.002)
        drain()
deadline = time.time() + 1.0
while time.time() < deadline:
    drain()
    time.sleep(0.01)
print(len(got))
"#;

/// Attaches a one-instruction XDP program (`return XDP_DROP` or `XDP_PASS`) to argv[1] with raw
/// bpf(BPF_PROG_LOAD) and bpf(BPF_LINK_CREATE), prints "ready", and holds the link (so the
/// program stays attached) until its standard input closes.
const XDP_ATTACH_PY: &str = r#"
import ctypes, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF, BPF_PROG_LOAD, BPF_LINK_CREATE, PROG_TYPE_XDP, BPF_XDP = 321, 5, 28, 6, 37
action = {"drop": 1, "pass": 2}[sys.argv[2]]
insns = ctypes.create_string_buffer(struct.pack("<BBhi", 0xb7, 0, 0, action) + struct.pack("<BBhi", 0x95, 0, 0, 0))
license = ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(128)
struct.pack_into("<IIQQ", attr, 0, PROG_TYPE_XDP, 2, ctypes.addressof(insns), ctypes.addressof(license))
struct.pack_into("<I", attr, 68, BPF_XDP)
prog = libc.syscall(SYS_BPF, BPF_PROG_LOAD, attr, 128)
if prog < 0:
    sys.exit("BPF_PROG_LOAD: " + os.strerror(ctypes.get_errno()))
attr = ctypes.create_string_buffer(64)
struct.pack_into("<III", attr, 0, prog, socket.if_nametoindex(sys.argv[1]), BPF_XDP)
if libc.syscall(SYS_BPF, BPF_LINK_CREATE, attr, 64) < 0:
    sys.exit("BPF_LINK_CREATE: " + os.strerror(ctypes.get_errno()))
print("ready", flush=True)
sys.stdin.read()
"#;

fn melange_output(args: &[&str]) -> Output {
    Command::new(MELANGE)
        .args(args)
        .output()
        .expect("the melange binary runs")
}

/// Runs `melange ARGS`, asserts success, and returns its stdout.
fn melange(args: &[&str]) -> String {
    let output = melange_output(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "melange {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn status() -> Value {
    serde_json::from_str(&melange(&["lab", "status", "--json"])).expect("status --json prints JSON")
}

/// Runs `ip netns exec NS ARGS` and returns its output.
fn netns_exec(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip runs")
}

/// Removes the lab when dropped, so a failed assertion does not leave namespaces behind.
struct LabGuard;

impl Drop for LabGuard {
    fn drop(&mut self) {
        let output = melange_output(&["lab", "down"]);
        if !output.status.success() {
            eprintln!(
                "lab down in the guard failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A child process that is killed (if still running) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Killing a child that already exited fails harmlessly; the wait reaps it either way.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `python3 -c SCRIPT ARGS` inside `ns` and waits for it to print "ready".
fn spawn_ready(ns: &str, script: &str, args: &[&str]) -> (Reaped, ChildStdin) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", script])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 starts inside the namespace");
    let stdin = child.stdin.take().expect("stdin was piped");
    let stdout = child.stdout.take().expect("stdout was piped");
    let child = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the child's first line");
    assert_eq!(line.trim(), "ready", "the helper in {ns} did not start");
    (child, stdin)
}

/// Sends `count` datagrams from mlg-a to the echo server in mlg-b; returns the replies received.
fn echo_round(count: u32) -> u32 {
    let output = netns_exec(
        "mlg-a",
        &["python3", "-c", ECHO_CLIENT_PY, &count.to_string()],
    );
    assert!(
        output.status.success(),
        "echo client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("the echo client prints a count")
}

fn loss_pct(count: u32) -> f64 {
    let received = echo_round(count);
    let loss = 100.0 * f64::from(count - received) / f64::from(count);
    println!("{received} of {count} datagrams echoed: {loss:.1}% round-trip loss");
    loss
}

fn namespace<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["namespaces"]
        .as_array()
        .expect("status has a namespaces array")
        .iter()
        .find(|ns| ns["name"] == name)
        .unwrap_or_else(|| panic!("status lists namespace {name}"))
}

/// Asserts that the lab is fully up, per `status --json`.
fn assert_up() {
    let status = status();
    assert_eq!(status["ready"], true, "lab not ready: {status:#}");
    for (ns, dev, addr) in [
        ("mlg-a", "mlg-va", "10.77.0.1/24"),
        ("mlg-b", "mlg-vb", "10.77.0.2/24"),
    ] {
        let ns = namespace(&status, ns);
        assert_eq!(ns["exists"], true);
        let interface = &ns["interface"];
        assert_eq!(interface["name"], dev);
        assert_eq!(interface["kind"], "veth");
        assert_eq!(interface["addresses"], serde_json::json!([addr]));
        assert_eq!(interface["rx_queues"], 2, "{dev} rx queues");
        assert_eq!(interface["tx_queues"], 2, "{dev} tx queues");
        assert_eq!(interface["xdp"], Value::Null);
    }
}

fn assert_down() {
    let status = status();
    assert_eq!(status["ready"], false);
    for ns in ["mlg-a", "mlg-b"] {
        assert_eq!(
            namespace(&status, ns)["exists"],
            false,
            "{ns} still exists: {status:#}"
        );
    }
    let text = melange(&["lab", "status"]);
    assert!(
        text.contains("mlg-a (client): absent") && text.contains("mlg-b (server): absent"),
        "{text}"
    );
}

fn ping_b_from_a() {
    let output = netns_exec("mlg-a", &["ping", "-c", "2", "-W", "1", "10.77.0.2"]);
    assert!(
        output.status.success(),
        "ping 10.77.0.2 from mlg-a failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Packets dropped so far by the impairment on `ns`'s veth end.
fn dropped_packets(ns: &str) -> u64 {
    let status = status();
    namespace(&status, ns)["impairments"][0]["dropped_packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no impairment counter in {ns}: {status:#}"))
}

#[test]
fn help_documents_every_subcommand() {
    let help = melange(&["lab", "--help"]);
    for command in ["up", "down", "status", "impair"] {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(command)),
            "{command} missing:\n{help}"
        );
        let sub = melange(&["lab", command, "--help"]);
        assert!(
            sub.lines()
                .next()
                .is_some_and(|line| !line.trim().is_empty()),
            "{command} has no doc:\n{sub}"
        );
    }
    assert!(melange(&["lab", "impair", "--help"]).contains("AF_XDP"));
}

#[test]
fn refuses_without_privileges() {
    if !root_or_skip() {
        return;
    }
    // Drop to an unprivileged uid with setpriv (util-linux) to see the message a user would.
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            MELANGE,
            "lab",
            "status",
        ])
        .output()
        .expect("setpriv runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("melange lab status needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to look inside the lab's namespaces"),
        "{stderr}"
    );
}

#[test]
fn lab_lifecycle_and_impairment() {
    if !root_or_skip() {
        return;
    }
    let _lock = test_lock();
    let _guard = LabGuard;
    melange(&["lab", "down"]);

    // Up, check, ping; up again changes nothing; down leaves nothing.
    let out = melange(&["lab", "up"]);
    assert!(
        out.contains("created namespace mlg-a") && out.contains("created veth pair"),
        "{out}"
    );
    assert_up();
    ping_b_from_a();
    let out = melange(&["lab", "up"]);
    assert!(
        !out.contains("created") && !out.contains("added"),
        "second up changed something:\n{out}"
    );
    assert_up();
    // Threaded NAPI: each end's receive work in its own pinned threads, read back by status;
    // and back to inline.
    let out = melange(&[
        "lab",
        "up",
        "--napi",
        "threaded",
        "--client-cpu",
        "1",
        "--server-cpu",
        "0",
    ]);
    assert!(out.contains("napi threaded"), "{out}");
    let s = status();
    for (ns, cpu) in [("mlg-a", "1"), ("mlg-b", "0")] {
        let napi = &namespace(&s, ns)["interface"]["napi"];
        assert_eq!(napi["mode"], "threaded", "{ns}: {napi}");
        let threads = napi["threads"].as_array().expect("threads");
        assert_eq!(
            threads.len(),
            2,
            "{ns}: one NAPI thread per receive queue: {napi}"
        );
        for t in threads {
            assert_eq!(t["cpus"], cpu, "{ns}: {t}");
        }
    }
    ping_b_from_a();
    melange(&["lab", "up", "--napi", "inline"]);
    let s = status();
    for ns in ["mlg-a", "mlg-b"] {
        assert_eq!(namespace(&s, ns)["interface"]["napi"]["mode"], "inline");
    }
    ping_b_from_a();
    melange(&["lab", "down"]);
    assert_down();
    assert!(melange(&["lab", "down"]).contains("nothing to remove"));

    // A second cycle, with repairs: a missing namespace, a stale address, a one-queue veth.
    melange(&["lab", "up"]);
    assert_up();
    assert!(Command::new("ip")
        .args(["netns", "del", "mlg-b"])
        .status()
        .expect("ip runs")
        .success());
    melange(&["lab", "up"]);
    assert_up();
    assert!(Command::new("ip")
        .args([
            "-n",
            "mlg-a",
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            "mlg-va"
        ])
        .status()
        .expect("ip runs")
        .success());
    assert!(melange(&["lab", "up"]).contains("removed stale address 10.99.0.1/24"));
    assert_up();
    assert!(Command::new("ip")
        .args(["-n", "mlg-a", "link", "del", "mlg-va"])
        .status()
        .expect("ip runs")
        .success());
    let one = ["numrxqueues", "1", "numtxqueues", "1"];
    assert!(Command::new("ip")
        .args(["-n", "mlg-a", "link", "add", "mlg-va"])
        .args(one)
        .args(["type", "veth", "peer", "name", "mlg-vb", "netns", "mlg-b"])
        .args(one)
        .status()
        .expect("ip runs")
        .success());
    assert!(melange(&["lab", "up"]).contains("rebuilt veth pair"));
    assert_up();
    ping_b_from_a();
    melange(&["lab", "down"]);
    assert_down();

    // Impairment, measured with a kernel UDP echo server in mlg-b and a client in mlg-a.
    melange(&["lab", "up"]);
    let (server, _server_stdin) = spawn_ready("mlg-b", ECHO_SERVER_PY, &[]);
    let loss = loss_pct(DATAGRAM_COUNT);
    assert!(loss <= 2.0, "{loss:.1}% loss before impairment");

    // The default placement: the client's egress, so only requests are dropped.
    let out = melange(&["lab", "impair", "--loss", "30"]);
    assert!(out.contains("netdev egress hook on mlg-a/mlg-va"), "{out}");
    melange(&["lab", "impair", "--loss", "30"]); // Idempotent: replaces, does not stack.
    let loss = loss_pct(DATAGRAM_COUNT);
    assert!(
        (15.0..=45.0).contains(&loss),
        "{loss:.1}% loss with 30% on the client's egress"
    );
    assert_eq!(
        namespace(&status(), "mlg-a")["impairments"][0]["loss_pct"],
        30
    );
    melange(&["lab", "impair", "--clear"]);
    let loss = loss_pct(DATAGRAM_COUNT);
    assert!(loss <= 2.0, "{loss:.1}% loss after --clear");

    // The server's ingress works for a kernel receiver too.
    melange(&[
        "lab",
        "impair",
        "--loss",
        "30",
        "--ns",
        "mlg-b",
        "--direction",
        "ingress",
    ]);
    let loss = loss_pct(DATAGRAM_COUNT);
    assert!(
        (15.0..=45.0).contains(&loss),
        "{loss:.1}% loss with 30% on the server's ingress"
    );

    // Why the default is egress: XDP runs before the netdev ingress hook. With an XDP_DROP
    // program on mlg-vb the ingress rule (now 100%) sees nothing; without it, it sees everything.
    melange(&[
        "lab",
        "impair",
        "--loss",
        "100",
        "--ns",
        "mlg-b",
        "--direction",
        "ingress",
    ]);
    {
        let (_xdp, _xdp_stdin) = spawn_ready("mlg-b", XDP_ATTACH_PY, &["mlg-vb", "drop"]);
        let status = status();
        let xdp = &namespace(&status, "mlg-b")["interface"]["xdp"];
        assert_eq!(
            xdp["mode"], "native",
            "status should show the XDP program: {status:#}"
        );
        let out = melange(&[
            "lab",
            "impair",
            "--loss",
            "100",
            "--ns",
            "mlg-b",
            "--direction",
            "ingress",
        ]);
        assert!(
            out.contains("warning: mlg-vb has an XDP program attached"),
            "{out}"
        );
        assert_eq!(echo_round(50), 0);
        assert_eq!(
            dropped_packets("mlg-b"),
            0,
            "the netdev ingress hook ran before XDP_DROP"
        );
        // Leaving the block kills the helper; its link fd closes and the program detaches.
    }
    let after = status();
    assert_eq!(
        namespace(&after, "mlg-b")["interface"]["xdp"],
        Value::Null,
        "{after:#}"
    );
    assert_eq!(echo_round(50), 0);
    assert_eq!(
        dropped_packets("mlg-b"),
        50,
        "without XDP the ingress rule sees every datagram"
    );

    melange(&["lab", "impair", "--clear"]);
    assert!(namespace(&status(), "mlg-b")["impairments"]
        .as_array()
        .is_some_and(Vec::is_empty));
    drop(server);
    melange(&["lab", "down"]);
    assert_down();
}
