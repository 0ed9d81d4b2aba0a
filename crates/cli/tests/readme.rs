//! The README's first command, `cargo run --release -- demo`, works exactly as written: from the
//! workspace root `cargo run` must resolve to the `melange` binary (the workspace also builds
//! `melange-baseline`, and two binaries make a bare `cargo run` ambiguous), and the demo must
//! need no executable that `cargo run` does not build (it runs the baselines as
//! `melange baseline ...`).
//!
//! The demo runs melange kv beside redis-server and memcached under redis-benchmark and
//! memcslap, and the test checks that every load has its row. As root the demo uses the
//! namespace lab, so this test takes the lab tests' lock; without root the demo runs on the
//! kernel backend on 127.0.0.1, which the test checks instead. The other tests here check
//! `demo --echo` (the UDP echo demo) and that a missing tool is named with its install
//! command, the comparisons it allows still running.

mod common;

use std::path::Path;
use std::process::Command;

const MELANGE: &str = env!("CARGO_BIN_EXE_melange");

/// The tools the demo compares with; under CI (where scripts/setup.sh installs them) a
/// missing one fails the test, elsewhere it skips.
fn kv_tools_or_skip(test: &str) -> bool {
    ["redis-server", "redis-benchmark", "memcached", "memcslap"]
        .iter()
        .all(|tool| melange_sys::testenv::tool_or_skip(test, tool))
}

#[test]
fn readme_main_command_runs_the_demo() {
    if !kv_tools_or_skip("readme demo") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let _lock = common::is_root().then(common::test_lock);
    // A short run: 2,000 requests per client run (the default is 50,000).
    let output = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "run",
            "--release",
            "--quiet",
            "--",
            "demo",
            "--requests",
            "2000",
        ])
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`cargo run --release -- demo` failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    for header in [
        "peer req/s",
        "melange req/s",
        "melange/peer",
        "cpu peer/melange",
    ] {
        assert!(stdout.contains(header), "no {header} column:\n{stdout}");
    }
    // Every load has its row, with melange kv's side filled in (a ratio, not "-").
    for (load, peer) in [
        ("redis-benchmark SET -P 1", "redis-server"),
        ("redis-benchmark GET -P 1", "redis-server"),
        ("redis-benchmark SET -P 16", "redis-server"),
        ("redis-benchmark GET -P 16", "redis-server"),
        ("memcslap get", "memcached"),
        ("memcslap set", "memcached"),
    ] {
        let row = stdout
            .lines()
            .find(|line| line.trim_start().starts_with(load))
            .unwrap_or_else(|| panic!("no row for {load}:\n{stdout}"));
        assert!(
            row.contains(peer) && row.matches(" x").count() == 2,
            "row for {load} lacks the peer or a ratio:\n{stdout}"
        );
    }
    if common::is_root() {
        assert!(
            stdout.contains("melange kv on AF_XDP") && stdout.contains("namespace lab"),
            "as root the demo should run melange kv on AF_XDP in the lab:\n{stdout}"
        );
    } else {
        assert!(
            stdout.contains("kernel backend"),
            "without root the demo should say it runs on the kernel backend:\n{stdout}"
        );
    }
}

#[test]
fn demo_echo_runs_the_echo_comparison() {
    let _lock = common::is_root().then(common::test_lock);
    let output = Command::new(MELANGE)
        .args(["demo", "--echo", "--duration", "0.3s"])
        .output()
        .expect("melange runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`melange demo --echo` failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("req/s"), "no result table:\n{stdout}");
    if common::is_root() {
        for server in [
            "(a) melange echo (af_xdp)",
            "linux recvmmsg/sendmmsg x32 (spin)",
            "(c) raw af_xdp echo, no stack",
        ] {
            assert!(stdout.contains(server), "no row for {server}:\n{stdout}");
        }
        assert!(
            stdout.contains("melange/linux-spin requests/s"),
            "no ratios:\n{stdout}"
        );
    } else {
        assert!(
            stdout.contains("kernel backend"),
            "without root the demo should say it runs on the kernel backend:\n{stdout}"
        );
    }
}

/// A directory for `PATH` holding links to just `programs` (from /usr/bin or wherever they
/// are now), so the demo sees the others as not installed.
fn path_with_only(name: &str, programs: &[&str]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("melange-readme-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for program in programs {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{program} is on PATH"));
        std::os::unix::fs::symlink(found, dir.join(program)).unwrap();
    }
    dir
}

#[test]
fn demo_without_the_servers_says_what_to_install_and_installs_nothing() {
    let empty = path_with_only("none", &[]);
    let output = Command::new(MELANGE)
        .args(["demo", "--no-lab", "--requests", "1000"])
        .env("PATH", &empty)
        .output()
        .expect("melange runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "nothing can run, yet: {stderr}");
    assert!(
        stderr.contains("not installed: redis-server, redis-benchmark, memcached, memcslap")
            && stderr.contains(
                "apt-get install -y redis-server redis-tools memcached libmemcached-tools"
            ),
        "the error should name the tools and the command that installs them:\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn demo_without_memcached_runs_the_redis_comparison() {
    if !["redis-server", "redis-benchmark"]
        .iter()
        .all(|tool| melange_sys::testenv::tool_or_skip("demo without memcached", tool))
    {
        return;
    }
    let dir = path_with_only("redis", &["redis-server", "redis-benchmark", "taskset"]);
    let output = Command::new(MELANGE)
        .args(["demo", "--no-lab", "--requests", "1000"])
        .env("PATH", &dir)
        .output()
        .expect("melange runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Redis comparison can run ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("memcached comparison is left out")
            && stdout.contains("apt-get install -y memcached libmemcached-tools"),
        "the demo should say what it leaves out and how to install it:\n{stdout}"
    );
    assert!(
        stdout.contains("redis-benchmark GET -P 16") && !stdout.contains("memcslap get"),
        "Redis rows and no memcached rows:\n{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn baselines_run_from_the_melange_binary() {
    for baseline in ["udp-echo", "xdp-echo"] {
        let output = Command::new(MELANGE)
            .args(["baseline", baseline, "--help"])
            .output()
            .expect("melange runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && text.contains("Usage: melange-baseline"),
            "`melange baseline {baseline} --help`:\n{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
