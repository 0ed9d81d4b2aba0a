//! One answer, for every test in the workspace, to "may this test skip here?".
//!
//! Tests that need root, network namespaces, bpf(2), AF_XDP or an installed tool run in CI
//! and must never skip there; on a developer's machine without the privilege they say so
//! and skip. Before this module each crate read the `CI` variable its own way (`is_some`,
//! `== "true"`, `== "1"`), so one spelling could make CI skip silently. Now there is one rule,
//! here: CI is on when `CI` is `true` or `1` (`.ci/run` exports `CI=true` itself, and so do
//! the hosted CI services), and a missing privilege or tool under CI is a test failure whose
//! message says what to install or how to run.
//!
//! These functions are for tests and the tools that run them; the data path never calls
//! them.

use std::io;

/// True when the tests run under CI (`CI=true` or `CI=1`), where nothing may skip.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// True when the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a test that needs root may run: true as root. Without root it panics under CI
/// (CI must run as root) and otherwise prints why `test` is skipped and returns false.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip_or_fail(
        test,
        "needs root (run the tests as root: sudo ./scripts/test.sh)",
    );
    false
}

/// Whether a test that needs an outside program may run: true when `program --version` (or
/// `program -V` for tools without `--version`) can be started. Without it: a failure under
/// CI (where `scripts/setup.sh` installs it), else a skip that says how to install it.
pub fn tool_or_skip(test: &str, program: &str) -> bool {
    let found = ["--version", "-V"].iter().any(|flag| {
        std::process::Command::new(program)
            .arg(flag)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok()
    });
    if !found {
        skip_or_fail(
            test,
            &format!(
                "needs `{program}`, which is not installed (scripts/setup.sh installs it, as root)"
            ),
        );
    }
    found
}

/// Whether a test may go on after a kernel call failed with `error` for lack of privilege:
/// false (skip) outside CI when it is a permission error; a panic under CI; a panic for any
/// other error, which is a real failure.
pub fn permitted_or_skip(test: &str, error: &io::Error) -> bool {
    match error.kind() {
        io::ErrorKind::PermissionDenied => {
            skip_or_fail(
                test,
                &format!("needs root or CAP_BPF + CAP_NET_ADMIN ({error})"),
            );
            false
        }
        _ => panic!("{test}: {error}"),
    }
}

/// Skips `test` with `reason` outside CI; fails it under CI.
pub fn skip_or_fail(test: &str, reason: &str) {
    assert!(
        !in_ci(),
        "{test}: {reason}; CI (CI=true) must run every test and may not skip this one"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

/// Runs `ip ARGS` (iproute2) and panics with the arguments if it fails: the test fixtures'
/// way to build namespaces, links and neighbour entries.
pub fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("run ip(8) (iproute2; scripts/setup.sh installs it)");
    assert!(status.success(), "ip {args:?} failed: {status}");
}

/// A fresh network namespace for one test, named `mlg-test-<what>-<pid>-<n>` so parallel tests
/// and runs never collide, deleted on drop (also when the test panics). Needs root: check
/// [`root_or_skip`] first.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates the namespace.
    pub fn new(what: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "mlg-test-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        Self { name }
    }

    /// The namespace's name (for `ip netns exec`, [`crate::netdev::enter_netns`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`, panicking if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_true_or_one() {
        // The parsing rule itself, without touching this process's environment.
        for (value, ci) in [("true", true), ("1", true), ("false", false), ("", false)] {
            assert_eq!(matches!(value, "true" | "1"), ci, "{value}");
        }
        // And the live answer agrees with the variable as set for this run.
        let expected = matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"));
        assert_eq!(in_ci(), expected);
    }

    #[test]
    fn a_missing_tool_is_reported() {
        if in_ci() {
            // Under CI the call would (rightly) panic; check that it does.
            let result = std::panic::catch_unwind(|| {
                tool_or_skip("testenv", "melange-no-such-tool-anywhere")
            });
            assert!(result.is_err());
        } else {
            assert!(!tool_or_skip("testenv", "melange-no-such-tool-anywhere"));
        }
        assert!(tool_or_skip("testenv", "sh"), "sh is on every machine");
    }
}
