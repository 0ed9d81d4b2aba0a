//! `melange bench tcp`: Melange's TCP against Linux's, in the namespace lab, in one run.
//!
//! Each load is `connections x requests in flight` of `--payload`-byte requests, sent by
//! Melange's TCP load generator on AF_XDP in `mlg-a`, pinned to the client core (a kernel
//! client saturates its own core first). The servers run in `mlg-b`, pinned to the server
//! core, one at a time:
//!
//! - (t) `melange echo --protocol tcp --backend af_xdp`: Melange's own TCP, one engine,
//!   spinning;
//! - (l) `melange-baseline tcp-echo`: a plain Linux epoll TCP echo server (non-blocking
//!   sockets, TCP_NODELAY), the project's baseline;
//! - (u) `melange echo --backend af_xdp` (UDP) at the same number of requests in flight, so
//!   the cost of TCP over UDP on the same stack shows.
//!
//! Each repetition measures all three back to back, (t) in the middle so that both ratios it
//! is part of compare runs seconds apart; odd repetitions reverse the order. Ratios are taken
//! within each repetition and their median reported, so a machine that changes speed between
//! repetitions cannot fake a win.
//!
//! Server CPU per request: for Linux, the process's CPU time over the measurement divided by
//! the requests answered (it sleeps in epoll when idle); for Melange, which spins, the
//! engine's busy time (passes that found work) over its life divided by the requests it
//! answered over its life (its log's `busy` and `bytes echoed`).
//!
//! The kernel's transmissions are steered to queue 0 with XPS for the run ([`SingleQueue`]),
//! where the load generator's engine listens.
//!
//! `--suites` adds, beside this request/response comparison (`rr`): `churn` (connect, one
//! request, its reply, close, against (t) and (l); the client shortens its TIME-WAIT to
//! [`CHURN_TIME_WAIT`] so its ports never bound the run), `scale` ([`SCALE_LOADS`], 10 to
//! 10,000 connections, each load saturating the server, with the server's RSS) and `bulk`
//! (one flow of `--bulk-bytes` from `melange source` into `melange sink` on AF_XDP or on
//! kernel sockets: MB/s and the sink's CPU per GB).

use super::lab_echo::{lab_loadgen, LabServer, SingleQueue};
use super::median_of;
use crate::table::{print_table, us};
use anyhow::{anyhow, bail, Context, Result};
use melange_control::options::parse_duration;
use serde::Serialize;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const SERVER_ADDR: &str = "10.77.0.2";

/// One load: connections and requests in flight on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Load {
    /// TCP connections (UDP: none; the requests in flight are `connections * inflight`).
    pub connections: usize,
    /// Requests in flight per connection.
    pub inflight: usize,
}

impl std::str::FromStr for Load {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (c, i) = s
            .split_once('x')
            .ok_or_else(|| format!("{s:?}: give CONNECTIONSxINFLIGHT, e.g. 32x1"))?;
        let parse = |v: &str, what: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{s:?}: {what} must be a positive integer"))
        };
        Ok(Load {
            connections: parse(c, "connections")?,
            inflight: parse(i, "inflight")?,
        })
    }
}

/// Arguments of `melange bench tcp`.
#[derive(clap::Args, Debug, Clone)]
pub struct LabTcpArgs {
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Measured time of each repetition.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each repetition (connections open during it).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Loads to measure, CONNECTIONSxINFLIGHT.
    #[arg(long, value_delimiter = ',', default_value = "1x1,32x1,1000x1")]
    pub loads: Vec<Load>,
    /// Request payload bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Core of the servers.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// Core of the load generator.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Where each lab host's receive work runs (see `melange bench echo --napi`).
    #[arg(long, value_enum, default_value_t = melange_lab::NapiMode::Threaded)]
    pub napi: melange_lab::NapiMode,
    /// What to measure: `rr` (request/response at `--loads`), `churn` (connect, one request,
    /// close), `scale` (10 to 10,000 connections, saturating), `bulk` (one flow into a sink).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "rr")]
    pub suites: Vec<Suite>,
    /// churn: concurrent connect-request-close loops.
    #[arg(long, default_value_t = 32)]
    pub churn_connections: usize,
    /// bulk: bytes per transfer.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub bulk_bytes: u64,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A part of `bench tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Suite {
    /// Request/response at each of `--loads`.
    Rr,
    /// Connection churn: connect, one request, its reply, close; connections per second.
    Churn,
    /// 10, 100, 1,000 and 10,000 connections, each load saturating the server.
    Scale,
    /// One flow of `--bulk-bytes` from `melange source` into a sink: bytes per second.
    Bulk,
}

/// The loads of the `scale` suite: the server saturated at every point (closed loop, at
/// least 640 requests in flight), so each measures its capacity at that many connections.
pub const SCALE_LOADS: [Load; 4] = [
    Load {
        connections: 10,
        inflight: 64,
    },
    Load {
        connections: 100,
        inflight: 8,
    },
    Load {
        connections: 1_000,
        inflight: 1,
    },
    Load {
        connections: 10_000,
        inflight: 1,
    },
];

/// TIME-WAIT of the churn client (Melange's TCP, which closes first and so holds it): long
/// enough for the lab's 50 µs path, short enough that 25,536 ports allow 255,000
/// connections per second, so the client's ports never bound what the servers do.
pub const CHURN_TIME_WAIT: &str = "100ms";

/// The servers of this benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TcpServer {
    /// (t) Melange's TCP on AF_XDP.
    MelangeTcp,
    /// (l) The Linux epoll TCP echo.
    LinuxEpoll,
    /// (u) Melange's UDP echo on AF_XDP.
    MelangeUdp,
}

impl TcpServer {
    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Self::MelangeTcp => "(t) melange tcp, af_xdp",
            Self::LinuxEpoll => "(l) linux epoll tcp echo",
            Self::MelangeUdp => "(u) melange udp, af_xdp",
        }
    }
}

const SERVERS: [TcpServer; 3] = [
    TcpServer::LinuxEpoll,
    TcpServer::MelangeTcp,
    TcpServer::MelangeUdp,
];

/// The order of [`SERVERS`] indexes in repetition `rep`: (t) in the middle, reversed on odd
/// repetitions.
fn measurement_order(rep: usize) -> [usize; 3] {
    if rep.is_multiple_of(2) {
        [0, 1, 2]
    } else {
        [2, 1, 0]
    }
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct TcpRun {
    /// Requests per second.
    pub requests_per_s: f64,
    /// Median latency, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// Server CPU per request, ns (see the module documentation).
    pub server_cpu_ns_per_request: f64,
    /// Requests sent and answered.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// The server's resident memory at the end of the measurement, bytes.
    pub server_rss_bytes: u64,
}

fn server_command(server: TcpServer, port: u16, cpu: usize) -> Result<Command> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new("ip");
    command.args(["netns", "exec", "mlg-b"]).arg(exe);
    let (port, cpu) = (port.to_string(), cpu.to_string());
    match server {
        TcpServer::MelangeTcp | TcpServer::MelangeUdp => {
            let protocol = if server == TcpServer::MelangeTcp {
                "tcp"
            } else {
                "plain"
            };
            command.args([
                "echo",
                "--protocol",
                protocol,
                "--backend",
                "af_xdp",
                "--interface",
                "mlg-vb",
                "--addr",
                SERVER_ADDR,
                "--queues",
                "0",
                "--idle",
                "spin",
                "--log",
                "warn,melange::echo=info",
                "--port",
                &port,
                "--cpus",
                &cpu,
            ]);
        }
        TcpServer::LinuxEpoll => {
            command.args([
                "baseline",
                "tcp-echo",
                "--addr",
                SERVER_ADDR,
                "--port",
                &port,
                "--cpus",
                &cpu,
            ]);
        }
    }
    Ok(command)
}

/// Runs the load generator against `port` and returns its JSON report.
fn loadgen(
    server: TcpServer,
    port: u16,
    load: Load,
    args: &LabTcpArgs,
    duration: Duration,
    warmup: Duration,
    extra: &[&str],
) -> Result<serde_json::Value> {
    let mut command = lab_loadgen()?;
    command.args(extra);
    command.args([
        "--log",
        "error",
        "--target",
        &format!("{SERVER_ADDR}:{port}"),
    ]);
    command.args([
        "--payload",
        &args.payload.to_string(),
        "--cpus",
        &args.client_cpu.to_string(),
    ]);
    command.args(["--duration", &format!("{}s", duration.as_secs_f64())]);
    command.args(["--warmup", &format!("{}s", warmup.as_secs_f64())]);
    match server {
        TcpServer::MelangeUdp => {
            let inflight =
                (load.connections * load.inflight).min(melange_apps::loadgen::WINDOW_MAX);
            command.args(["--inflight", &inflight.to_string(), "--timeout", "200ms"]);
        }
        _ => {
            command.args([
                "--protocol",
                "tcp",
                "--connections",
                &load.connections.to_string(),
            ]);
            command.args(["--inflight", &load.inflight.to_string(), "--timeout", "5s"]);
        }
    }
    let output = command.output()?;
    if !output.status.success() {
        bail!(
            "loadgen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("loadgen JSON")
}

/// Waits until the server answers a short run.
fn probe(server: TcpServer, port: u16, args: &LabTcpArgs) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let load = Load {
        connections: 1,
        inflight: 1,
    };
    let mut last = String::new();
    while Instant::now() < deadline {
        match loadgen(
            server,
            port,
            load,
            args,
            Duration::from_millis(50),
            Duration::ZERO,
            &[],
        ) {
            Ok(report) if report["received"].as_u64().unwrap_or(0) > 0 => return Ok(()),
            Ok(report) => last = report.to_string(),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(anyhow!(
        "{} on port {port} did not answer within 10 s: {last}",
        server.label()
    ))
}

/// Busy seconds and bytes echoed summed over a Melange echo's engine summaries.
fn busy_and_echoed(log: &str) -> Option<(f64, u64)> {
    let mut busy = 0.0;
    let mut echoed = 0u64;
    let mut found = false;
    for line in log.lines() {
        let Some(at) = line.find(" busy ") else {
            continue;
        };
        let rest = &line[at + 6..];
        let secs: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        busy += secs.parse::<f64>().ok()?;
        for key in ["bytes echoed ", "echoed "] {
            if let Some(at) = line.find(key) {
                let n: String = line[at + key.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                echoed += n.parse::<u64>().unwrap_or(0);
                break;
            }
        }
        found = true;
    }
    found.then_some((busy, echoed))
}

fn measure(
    server: TcpServer,
    load: Load,
    args: &LabTcpArgs,
    port: u16,
    extra: &[&str],
) -> Result<TcpRun> {
    let mut process = LabServer::spawn(server_command(server, port, args.server_cpu)?)?;
    if let Err(e) = probe(server, port, args) {
        let log = process.stop();
        return Err(e.context(log));
    }
    let pid = process.child.id();
    let cpu_before = melange_sys::cpu::process_cpu_time_of(pid)?;
    let report = loadgen(server, port, load, args, args.duration, args.warmup, extra);
    let cpu_after = melange_sys::cpu::process_cpu_time_of(pid)?;
    let rss_bytes = rss_bytes_of(pid);
    let log = process.stop();
    let report = report.with_context(|| format!("server log:\n{log}"))?;
    let field = |path: &[&str]| -> f64 {
        let mut v = &report;
        for p in path {
            v = &v[*p];
        }
        v.as_f64().unwrap_or(0.0)
    };
    if field(&["measured"]) == 0.0 {
        bail!(
            "the load generator measured nothing (sent {}, received {}): its measuring window never opened; the run is refused rather than reported as 0 req/s",
            field(&["sent"]),
            field(&["received"])
        );
    }
    let received = field(&["received"]).max(1.0);
    let cpu_ns = match server {
        TcpServer::LinuxEpoll => (cpu_after - cpu_before) as f64 / received,
        TcpServer::MelangeTcp => {
            let (busy, echoed) = busy_and_echoed(&log)
                .ok_or_else(|| anyhow!("no engine summary in the server log:\n{log}"))?;
            busy * 1e9 / (echoed as f64 / args.payload as f64).max(1.0)
        }
        TcpServer::MelangeUdp => {
            let (busy, echoed) = busy_and_echoed(&log)
                .ok_or_else(|| anyhow!("no engine summary in the server log:\n{log}"))?;
            busy * 1e9 / (echoed as f64).max(1.0)
        }
    };
    Ok(TcpRun {
        requests_per_s: field(&["requests_per_s"]),
        p50_ns: field(&["latency", "p50_ns"]) as u64,
        p99_ns: field(&["latency", "p99_ns"]) as u64,
        server_cpu_ns_per_request: cpu_ns,
        sent: field(&["sent"]) as u64,
        received: field(&["received"]) as u64,
        server_rss_bytes: rss_bytes,
    })
}

/// The resident memory of process `pid` (`VmRSS`), 0 if unreadable. For a process started
/// through `ip netns exec`, that is the server itself (ip execs it).
fn rss_bytes_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// The ratios at one load, each the median over repetitions of the ratio within one.
#[derive(Debug, Clone, Serialize)]
pub struct TcpRatios {
    /// The load.
    pub load: Load,
    /// (t) / (l) requests/s. Target at 32 connections: >= 3.
    pub melange_over_linux_rps: f64,
    /// (l) / (t) server CPU per request. Target at 32 connections: >= 3.
    pub linux_over_melange_cpu: f64,
    /// (t) / (l) p50. Target at 1x1: <= 0.6.
    pub p50_melange_over_linux: f64,
    /// (t) / (u) requests/s. Target: >= 0.9.
    pub tcp_over_udp_rps: f64,
}

/// The connection-churn comparison: connect, one request, its reply, close.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnResult {
    /// Concurrent loops.
    pub connections: usize,
    /// Median cycles per second of (t) and (l), and every run of each.
    pub melange_per_s: f64,
    /// See `melange_per_s`.
    pub linux_per_s: f64,
    /// Median of (t)/(l) within each repetition. Target: >= 3.
    pub melange_over_linux: f64,
    /// Every run, (t) then (l) per repetition.
    pub runs: Vec<(TcpRun, TcpRun)>,
}

/// One point of the connection-count scaling suite.
#[derive(Debug, Clone, Serialize)]
pub struct ScalePoint {
    /// The load.
    pub load: Load,
    /// Median requests/s of (t) and (l).
    pub melange_rps: f64,
    /// See `melange_rps`.
    pub linux_rps: f64,
    /// Median server RSS of (t), bytes.
    pub melange_rss_bytes: u64,
    /// (t) requests/s over (t)'s at the first point, median of the ratio per repetition.
    /// Target at 10,000 connections: >= 0.8.
    pub melange_over_first: f64,
    /// The same for (l).
    pub linux_over_first: f64,
}

/// One bulk transfer into a sink.
#[derive(Debug, Clone, Serialize)]
pub struct BulkRun {
    /// MB/s (10^6 bytes) the source reported, end to end.
    pub mb_per_s: f64,
    /// Sink process CPU time per GB received, ms.
    pub server_cpu_ms_per_gb: f64,
}

/// The single-flow bulk comparison.
#[derive(Debug, Clone, Serialize)]
pub struct BulkResult {
    /// Bytes per transfer.
    pub bytes: u64,
    /// Medians of (t) `melange sink` on af_xdp and (l) `melange sink` on kernel sockets.
    pub melange: BulkRun,
    /// See `melange`.
    pub linux: BulkRun,
    /// Median of (t)/(l) MB/s within each repetition (reported, no target).
    pub melange_over_linux: f64,
    /// Every run, (t) then (l) per repetition.
    pub runs: Vec<(BulkRun, BulkRun)>,
}

/// The results of `bench tcp`.
#[derive(Debug, Serialize)]
pub struct LabTcpResults {
    /// Medians per server and load: (server, load, median run, every run).
    pub rows: Vec<(TcpServer, Load, TcpRun, Vec<TcpRun>)>,
    /// Ratios per load.
    pub ratios: Vec<TcpRatios>,
    /// The churn suite, if run.
    pub churn: Option<ChurnResult>,
    /// The scaling suite, if run.
    pub scale: Vec<ScalePoint>,
    /// The bulk suite, if run.
    pub bulk: Option<BulkResult>,
}

fn median_run(server_runs: &[TcpRun]) -> TcpRun {
    TcpRun {
        requests_per_s: median_of(server_runs, |r| r.requests_per_s),
        p50_ns: median_of(server_runs, |r| r.p50_ns as f64) as u64,
        p99_ns: median_of(server_runs, |r| r.p99_ns as f64) as u64,
        server_cpu_ns_per_request: median_of(server_runs, |r| r.server_cpu_ns_per_request),
        sent: median_of(server_runs, |r| r.sent as f64) as u64,
        received: median_of(server_runs, |r| r.received as f64) as u64,
        server_rss_bytes: median_of(server_runs, |r| r.server_rss_bytes as f64) as u64,
    }
}

/// Runs the benchmark and prints its tables.
pub fn run(args: &LabTcpArgs) -> Result<LabTcpResults> {
    let _lock = crate::lab_lock()?;
    crate::lab_echo::lab_up(args.napi, args.server_cpu, args.client_cpu)?;
    let _single_queue = SingleQueue::new()?;
    let mut port = 23_000u16;
    let mut results = LabTcpResults {
        rows: Vec::new(),
        ratios: Vec::new(),
        churn: None,
        scale: Vec::new(),
        bulk: None,
    };
    for suite in &args.suites {
        match suite {
            Suite::Rr => rr_suite(args, &mut port, &mut results)?,
            Suite::Churn => results.churn = Some(churn_suite(args, &mut port)?),
            Suite::Scale => results.scale = scale_suite(args, &mut port)?,
            Suite::Bulk => results.bulk = Some(bulk_suite(args, &mut port)?),
        }
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(results)
}

fn log_run(server: TcpServer, load: Load, rep: usize, run: &TcpRun) {
    eprintln!(
        "  {:<28} {:>5}x{:<3} rep {rep}: {:>9.0} req/s p50 {} us cpu {:.0} ns/req rss {:.1} MiB",
        server.label(),
        load.connections,
        load.inflight,
        run.requests_per_s,
        us(run.p50_ns),
        run.server_cpu_ns_per_request,
        run.server_rss_bytes as f64 / (1 << 20) as f64
    );
}

fn rr_suite(args: &LabTcpArgs, port: &mut u16, results: &mut LabTcpResults) -> Result<()> {
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for &load in &args.loads {
        let mut runs: Vec<Vec<TcpRun>> = vec![Vec::new(); SERVERS.len()];
        for rep in 0..args.reps {
            for i in measurement_order(rep) {
                let server = SERVERS[i];
                *port += 1;
                let run = measure(server, load, args, *port, &[]).with_context(|| {
                    format!(
                        "{} at {}x{}, repetition {rep}",
                        server.label(),
                        load.connections,
                        load.inflight
                    )
                })?;
                log_run(server, load, rep, &run);
                runs[i].push(run);
            }
        }
        let per_rep =
            |f: &dyn Fn(usize) -> f64| median_of(&(0..args.reps).collect::<Vec<_>>(), |&r| f(r));
        let (l, t, u) = (0, 1, 2);
        ratios.push(TcpRatios {
            load,
            melange_over_linux_rps: per_rep(&|r| {
                runs[t][r].requests_per_s / runs[l][r].requests_per_s.max(1.0)
            }),
            linux_over_melange_cpu: per_rep(&|r| {
                runs[l][r].server_cpu_ns_per_request / runs[t][r].server_cpu_ns_per_request.max(1.0)
            }),
            p50_melange_over_linux: per_rep(&|r| {
                runs[t][r].p50_ns as f64 / runs[l][r].p50_ns.max(1) as f64
            }),
            tcp_over_udp_rps: per_rep(&|r| {
                runs[t][r].requests_per_s / runs[u][r].requests_per_s.max(1.0)
            }),
        });
        for (i, server_runs) in runs.into_iter().enumerate() {
            rows.push((SERVERS[i], load, median_run(&server_runs), server_runs));
        }
    }
    print_table(
        &["server", "load", "req/s", "p50 us", "p99 us", "cpu ns/req"],
        &rows
            .iter()
            .map(|(s, load, m, _)| {
                vec![
                    s.label().to_string(),
                    format!("{}x{}", load.connections, load.inflight),
                    format!("{:.0}", m.requests_per_s),
                    us(m.p50_ns),
                    us(m.p99_ns),
                    format!("{:.0}", m.server_cpu_ns_per_request),
                ]
            })
            .collect::<Vec<_>>(),
    );
    println!(
        "  ratios: medians over {} repetitions of the ratio within each repetition",
        args.reps
    );
    for r in &ratios {
        println!(
            "  at {}x{}: melange/linux requests/s x{:.2}, linux/melange server cpu per request x{:.2}, p50 melange/linux x{:.2}, melange tcp/udp requests/s x{:.2}",
            r.load.connections, r.load.inflight, r.melange_over_linux_rps, r.linux_over_melange_cpu, r.p50_melange_over_linux, r.tcp_over_udp_rps
        );
    }
    results.rows.extend(rows);
    results.ratios.extend(ratios);
    Ok(())
}

/// (t) and (l) in alternating order per repetition, each with the loadgen's `extra` flags.
fn pair_runs(
    args: &LabTcpArgs,
    port: &mut u16,
    load: Load,
    extra: &[&str],
) -> Result<Vec<(TcpRun, TcpRun)>> {
    let mut runs = Vec::new();
    for rep in 0..args.reps {
        let order = if rep % 2 == 0 {
            [TcpServer::MelangeTcp, TcpServer::LinuxEpoll]
        } else {
            [TcpServer::LinuxEpoll, TcpServer::MelangeTcp]
        };
        let mut got = Vec::new();
        for server in order {
            *port += 1;
            let run = measure(server, load, args, *port, extra).with_context(|| {
                format!(
                    "{} at {}x{} {extra:?}, repetition {rep}",
                    server.label(),
                    load.connections,
                    load.inflight
                )
            })?;
            log_run(server, load, rep, &run);
            got.push((server, run));
        }
        let take = |want: TcpServer| {
            got.iter()
                .find(|(s, _)| *s == want)
                .map(|(_, r)| r.clone())
                .expect("both servers ran")
        };
        runs.push((take(TcpServer::MelangeTcp), take(TcpServer::LinuxEpoll)));
    }
    Ok(runs)
}

fn churn_suite(args: &LabTcpArgs, port: &mut u16) -> Result<ChurnResult> {
    let load = Load {
        connections: args.churn_connections,
        inflight: 1,
    };
    let runs = pair_runs(
        args,
        port,
        load,
        &["--mode", "churn", "--time-wait", CHURN_TIME_WAIT],
    )?;
    let result = ChurnResult {
        connections: load.connections,
        melange_per_s: median_of(&runs, |(t, _)| t.requests_per_s),
        linux_per_s: median_of(&runs, |(_, l)| l.requests_per_s),
        melange_over_linux: median_of(&runs, |(t, l)| t.requests_per_s / l.requests_per_s.max(1.0)),
        runs,
    };
    println!(
        "  churn ({} loops of connect, {} B request, reply, close): melange {:.0}/s, linux {:.0}/s, melange/linux x{:.2} (median of the ratio per repetition)",
        result.connections, args.payload, result.melange_per_s, result.linux_per_s, result.melange_over_linux
    );
    Ok(result)
}

fn scale_suite(args: &LabTcpArgs, port: &mut u16) -> Result<Vec<ScalePoint>> {
    let mut all = Vec::new();
    for load in SCALE_LOADS {
        all.push((load, pair_runs(args, port, load, &[])?));
    }
    let first = all[0].1.clone();
    let points: Vec<ScalePoint> = all
        .iter()
        .map(|(load, runs)| {
            let reps: Vec<usize> = (0..runs.len()).collect();
            ScalePoint {
                load: *load,
                melange_rps: median_of(runs, |(t, _)| t.requests_per_s),
                linux_rps: median_of(runs, |(_, l)| l.requests_per_s),
                melange_rss_bytes: median_of(runs, |(t, _)| t.server_rss_bytes as f64) as u64,
                melange_over_first: median_of(&reps, |&r| {
                    runs[r].0.requests_per_s / first[r].0.requests_per_s.max(1.0)
                }),
                linux_over_first: median_of(&reps, |&r| {
                    runs[r].1.requests_per_s / first[r].1.requests_per_s.max(1.0)
                }),
            }
        })
        .collect();
    for p in &points {
        println!(
            "  scale at {}x{}: melange {:.0} req/s (x{:.2} of 10 connections, rss {:.1} MiB), linux {:.0} req/s (x{:.2})",
            p.load.connections,
            p.load.inflight,
            p.melange_rps,
            p.melange_over_first,
            p.melange_rss_bytes as f64 / (1 << 20) as f64,
            p.linux_rps,
            p.linux_over_first
        );
    }
    println!(
        "  melange's TCP state is {} B per connection in a table sized at start-up (so RSS does not grow with connections); received data stays in the pool's frames",
        melange_engine::tcp::connection_bytes()
    );
    Ok(points)
}

/// One bulk transfer: `melange source` on af_xdp in mlg-a into `sink` in mlg-b.
fn bulk_once(args: &LabTcpArgs, port: u16, melange_sink: bool) -> Result<BulkRun> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new("ip");
    command.args(["netns", "exec", "mlg-b"]).arg(&exe).args([
        "sink",
        "--protocol",
        "tcp",
        "--addr",
        SERVER_ADDR,
        "--port",
        &port.to_string(),
        "--cpus",
        &args.server_cpu.to_string(),
        "--count",
        "1",
    ]);
    if melange_sink {
        command.args([
            "--backend",
            "af_xdp",
            "--interface",
            "mlg-vb",
            "--queues",
            "0",
            "--idle",
            "sleep:1000",
        ]);
    } else {
        command.args(["--backend", "kernel"]);
    }
    let mut process = LabServer::spawn(command)?;
    // The sink listens once its engine is up; the source retries nothing, so wait for it.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = process.child.id();
    let cpu_before = melange_sys::cpu::process_cpu_time_of(pid)?;
    let output = Command::new("ip")
        .args(["netns", "exec", "mlg-a"])
        .arg(&exe)
        .args([
            "source",
            "--backend",
            "af_xdp",
            "--interface",
            "mlg-va",
            "--target",
            &format!("{SERVER_ADDR}:{port}"),
            "--bytes",
            &args.bulk_bytes.to_string(),
            "--cpus",
            &args.client_cpu.to_string(),
            "--timeout",
            "120s",
            "--json",
        ])
        .output()?;
    let cpu_after = melange_sys::cpu::process_cpu_time_of(pid).unwrap_or(cpu_before);
    let log = process.stop();
    if !output.status.success() {
        bail!(
            "source failed: {}\nsink log:\n{log}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).context("source JSON")?;
    let gb = args.bulk_bytes as f64 / 1e9;
    Ok(BulkRun {
        mb_per_s: json["mb_per_s"].as_f64().unwrap_or(0.0),
        server_cpu_ms_per_gb: (cpu_after - cpu_before) as f64 / 1e6 / gb.max(1e-9),
    })
}

fn bulk_suite(args: &LabTcpArgs, port: &mut u16) -> Result<BulkResult> {
    let mut runs = Vec::new();
    for rep in 0..args.reps {
        let order = if rep % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        let mut got = [None, None];
        for melange in order {
            *port += 1;
            let run = bulk_once(args, *port, melange).with_context(|| {
                format!(
                    "bulk into the {} sink, repetition {rep}",
                    if melange { "melange" } else { "linux" }
                )
            })?;
            eprintln!(
                "  bulk into {} sink rep {rep}: {:.0} MB/s, sink cpu {:.0} ms/GB",
                if melange {
                    "melange af_xdp"
                } else {
                    "linux kernel"
                },
                run.mb_per_s,
                run.server_cpu_ms_per_gb
            );
            got[usize::from(!melange)] = Some(run);
        }
        let [Some(t), Some(l)] = got else {
            bail!("a bulk run is missing");
        };
        runs.push((t, l));
    }
    let med = |f: &dyn Fn(&(BulkRun, BulkRun)) -> f64| median_of(&runs, |r| f(r));
    let result = BulkResult {
        bytes: args.bulk_bytes,
        melange: BulkRun {
            mb_per_s: med(&|r| r.0.mb_per_s),
            server_cpu_ms_per_gb: med(&|r| r.0.server_cpu_ms_per_gb),
        },
        linux: BulkRun {
            mb_per_s: med(&|r| r.1.mb_per_s),
            server_cpu_ms_per_gb: med(&|r| r.1.server_cpu_ms_per_gb),
        },
        melange_over_linux: med(&|r| r.0.mb_per_s / r.1.mb_per_s.max(1e-9)),
        runs,
    };
    println!(
        "  bulk ({} B, one flow, Melange's TCP sending): into melange sink {:.0} MB/s ({:.0} ms cpu/GB), into linux sink {:.0} MB/s ({:.0} ms cpu/GB), melange/linux x{:.2}",
        result.bytes,
        result.melange.mb_per_s,
        result.melange.server_cpu_ms_per_gb,
        result.linux.mb_per_s,
        result.linux.server_cpu_ms_per_gb,
        result.melange_over_linux
    );
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_parse_and_refuse_nonsense() {
        assert_eq!(
            "32x1".parse::<Load>(),
            Ok(Load {
                connections: 32,
                inflight: 1
            })
        );
        assert!("32".parse::<Load>().is_err());
        assert!("0x1".parse::<Load>().is_err());
        assert!("1xz".parse::<Load>().is_err());
    }

    #[test]
    fn melange_tcp_sits_between_the_servers_it_is_divided_by() {
        for rep in 0..4 {
            let order = measurement_order(rep);
            assert_eq!(SERVERS[order[1]], TcpServer::MelangeTcp);
        }
        assert_ne!(measurement_order(0)[0], measurement_order(1)[0]);
    }

    #[test]
    fn busy_time_and_bytes_are_read_from_engine_summaries() {
        let log = "INFO engine 0: accepted 3 closed 3 bytes echoed 6400 partial sends 0 rx 10 busy 0.002s (5 ns per datagram)\n\
                   INFO engine 1: accepted 1 closed 1 bytes echoed 3600 partial sends 0 rx 10 busy 0.001s (5 ns per datagram)\n";
        let (busy, echoed) = busy_and_echoed(log).unwrap();
        assert!((busy - 0.003).abs() < 1e-9);
        assert_eq!(echoed, 10_000);
        assert_eq!(busy_and_echoed("nothing here"), None);
    }
}
