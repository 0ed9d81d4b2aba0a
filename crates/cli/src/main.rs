//! The `melange` command: run Melange's apps on its engines, and measure them.
//!
//! Subcommands are thin: argument parsing and reporting live here, everything else in the
//! library crates (`melange-control` for the control plane, `melange-lab` for the namespace
//! lab, `melange-bench` for the load generator and the benchmarks), so tests and benchmarks
//! drive the same code paths users do.
#![forbid(unsafe_code)]

mod demo;
mod echo;
mod kv;
mod transfer;

use anyhow::Result;
use clap::{Parser, Subcommand};
use melange_bench::{self as bench, loadgen};
use melange_lab as lab;
use std::io::IsTerminal;

/// Melange: a protected user-space I/O dataplane.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `melange=debug`.
    #[arg(long, global = true, default_value = "info", env = "MELANGE_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// UDP echo server on Melange engines.
    Echo(echo::EchoArgs),
    /// The key-value service for Redis and memcached clients (redis-cli, redis-benchmark,
    /// redis-py; memcached's text and meta protocols over TCP and UDP), on one keyspace.
    Kv(kv::KvArgs),
    /// Load generator: UDP closed or open loop; TCP request/response, connection churn or
    /// bulk (`--protocol tcp --mode rr|churn|bulk`).
    Loadgen(loadgen::LoadgenArgs),
    /// TCP sink: reads every connection to its end and prints its bytes and SHA-256.
    Sink(transfer::SinkArgs),
    /// TCP source: sends N bytes of a seeded stream, closes, and prints their SHA-256.
    Source(transfer::SourceArgs),
    /// Benchmarks that run Melange and its baseline side by side and report ratios.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The main job: melange kv against redis-server and memcached, the same redis-benchmark
    /// and memcslap load at each, with a result table (`--echo`: the UDP echo demo).
    Demo(demo::DemoArgs),
    /// The namespace lab: two network namespaces joined by a veth pair.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// The baselines of the benchmarks: `melange baseline udp-echo ...` (a recvmmsg/sendmmsg
    /// server) and `melange baseline xdp-echo ...` (a raw AF_XDP echo); `melange baseline
    /// --help` lists their flags. `bench` and `demo` run them as separate processes.
    Baseline(BaselineArgs),
}

/// Arguments passed through to `melange-baseline`.
#[derive(clap::Args, Debug)]
struct BaselineArgs {
    /// `udp-echo ...` or `xdp-echo ...`, as `melange-baseline` takes them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<std::ffi::OsString>,
}

fn main() -> std::process::ExitCode {
    // An error is reported as its chain of causes, one line, never as a backtrace: the
    // message says what went wrong and how to fix it.
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Echo(args) => echo::run(args),
        Command::Kv(args) => kv::run(args),
        Command::Loadgen(args) => loadgen::main(args),
        Command::Sink(args) => transfer::run_sink(args),
        Command::Source(args) => transfer::run_source(args),
        Command::Bench(command) => bench::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Lab(command) => lab::run(command),
        Command::Baseline(baseline) => {
            // The baseline parses its own arguments, exactly as `melange-baseline` does.
            let program = std::ffi::OsString::from("melange-baseline");
            melange_baseline::main_from(std::iter::once(program).chain(baseline.args))
        }
    }
}

/// A stop signal raised by SIGINT or SIGTERM, and after `limit` if one is given: how every
/// long-running subcommand (echo, sink, source) knows when to end.
fn stop_signal(limit: Option<std::time::Duration>) -> anyhow::Result<melange_runtime::StopSignal> {
    use anyhow::Context;
    let stop = melange_runtime::StopSignal::new();
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.stop()).context("installing the SIGINT/SIGTERM handler")?;
    }
    if let Some(limit) = limit {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            stop.stop();
        });
    }
    Ok(stop)
}
