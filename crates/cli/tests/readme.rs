//! The README's first command, `cargo run --release -- demo`, works exactly as written: from the
//! workspace root `cargo run` must resolve to the `melange` binary (the workspace also builds
//! `melange-baseline`, and two binaries make a bare `cargo run` ambiguous), and the demo must
//! need no executable that `cargo run` does not build (it runs the baselines as
//! `melange baseline ...`).
//!
//! As root the demo uses the namespace lab, so this test takes the lab tests' lock; without
//! root the demo runs on the kernel backend on 127.0.0.1, which the test checks instead.

mod common;

use std::path::Path;
use std::process::Command;

const MELANGE: &str = env!("CARGO_BIN_EXE_melange");

#[test]
fn readme_main_command_runs_the_demo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let _lock = common::is_root().then(common::test_lock);
    let output = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "run",
            "--release",
            "--quiet",
            "--",
            "demo",
            "--duration",
            "0.3s",
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
