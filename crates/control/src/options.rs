//! What an operator configures, checked before anything starts: durations, backends, CPU
//! lists and the ranges of numeric settings.
//!
//! Every value that reaches the control plane from a person (a flag today, a configuration
//! file or a daemon's request later) passes through one of these checks, so that a bad value
//! is an error naming the setting, its range and what it means, and never a panic, an
//! allocation of gigabytes or a run that measures nothing and exits 0. The checks live here,
//! in the control plane, rather than in the command-line crate, so that every front end
//! applies the same limits.

use anyhow::{bail, Result};
use std::time::Duration;

/// Which NIC backend engines use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Ordinary UDP sockets with recvmmsg/sendmmsg (the kernel does IP and UDP). No privileges.
    Kernel,
    /// AF_XDP sockets steered by Melange's XDP program: kernel bypass. Needs root.
    #[value(name = "af_xdp", alias = "af-xdp")]
    AfXdp,
}

/// How the XDP program is attached (`--xdp-mode`, the same flag on every command).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XdpAttach {
    /// In the driver, before an sk_buff exists (veth supports it): the fast path.
    #[default]
    Native,
    /// After the kernel built the sk_buff: works on every interface, slower.
    Generic,
}

impl From<XdpAttach> for melange_sys::bpf::XdpMode {
    fn from(mode: XdpAttach) -> Self {
        match mode {
            XdpAttach::Native => melange_sys::bpf::XdpMode::Native,
            XdpAttach::Generic => melange_sys::bpf::XdpMode::Generic,
        }
    }
}

/// Parses `250ms`, `5s`, `2m`, `100us`, `10ns`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("duration '{s}': expected e.g. 5s or 250ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" => value * 60.0,
        _ => bail!("duration '{s}': unknown unit '{unit}' (use ns, us, ms, s or m)"),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        bail!("duration '{s}' must be a non-negative number");
    }
    if seconds > DURATION_MAX_S {
        bail!("duration '{s}' is longer than the most allowed, {DURATION_MAX_S} s (one year)");
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The longest duration a flag takes: one year, far beyond any run, far below where
/// nanosecond arithmetic on `u64` overflows (584 years).
pub const DURATION_MAX_S: f64 = 365.0 * 24.0 * 3600.0;

/// Most engines one command starts. Each engine is a thread with its own pool (MiBs), and
/// more engines than cores only adds contention; 64 is far above any machine this runs on
/// today while keeping a typo (`--engines 1000`) from allocating gigabytes.
pub const ENGINES_MAX: usize = 64;

/// Checks that flag `--name`'s `value` lies in `range`, with a message that names the flag,
/// the range and what the value means.
pub fn check_range<T>(
    name: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    meaning: &str,
) -> Result<()>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if !range.contains(&value) {
        bail!(
            "--{name} {value} is out of range: {meaning} must be between {} and {}",
            range.start(),
            range.end()
        );
    }
    Ok(())
}

/// Checks that every core in `--cpus` exists on this machine.
pub fn check_cpus(cpus: &Option<Vec<usize>>) -> Result<()> {
    let online = melange_sys::cpu::online_cpus();
    if let Some(&cpu) = cpus.iter().flatten().find(|&&c| c >= online) {
        bail!(
            "--cpus {cpu}: this machine has {online} core(s), numbered 0 to {}",
            online.saturating_sub(1)
        );
    }
    Ok(())
}

/// Checks `--engines`, `--batch` and `--prefix`-style flags shared by the subcommands.
pub fn check_engines(engines: usize) -> Result<()> {
    check_range(
        "engines",
        engines,
        1..=ENGINES_MAX,
        "the number of engine threads",
    )
}

/// Checks `--batch` against the engine's limit.
pub fn check_batch(batch: usize) -> Result<()> {
    check_range(
        "batch",
        batch,
        1..=melange_engine::EngineConfig::BATCH_MAX_LIMIT,
        "the most frames per engine pass",
    )
}

/// Checks a subnet prefix length.
pub fn check_prefix(prefix: u8) -> Result<()> {
    check_range("prefix", prefix, 1..=32, "an IPv4 prefix length")
}

/// The core for engine `i` given an optional list.
pub fn cpu_for(cpus: &Option<Vec<usize>>, i: usize) -> Option<usize> {
    cpus.as_ref()
        .filter(|c| !c.is_empty())
        .map(|c| c[i % c.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e300s").is_err());
        assert!(parse_duration("inf").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn ranges_name_the_flag() {
        let err = check_range("engines", 0usize, 1..=64, "engines").unwrap_err();
        assert!(err.to_string().contains("--engines 0"), "{err}");
        assert!(check_range("engines", 64usize, 1..=64, "engines").is_ok());
        assert!(check_prefix(33).is_err());
        assert!(check_prefix(24).is_ok());
        assert!(check_batch(0).is_err());
        assert!(check_cpus(&Some(vec![usize::MAX])).is_err());
        assert!(check_cpus(&Some(vec![0])).is_ok());
    }
}
