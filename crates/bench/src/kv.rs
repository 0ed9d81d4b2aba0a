//! `melange bench kv`: `melange kv` against redis-server, the same `redis-benchmark` load at
//! each, side by side in one run, on 127.0.0.1 with the kernel backend.
//!
//! Each repetition runs every server once per load, in an order that alternates between
//! repetitions (so drift on this noisy machine hits both alike), and reports the ratios
//! within the repetition; the summary is the median of those ratios, with the worst. Both
//! servers get one core (`--cpus` for Melange, `taskset` for redis-server, which is single
//! threaded for commands anyway), the client another. Server CPU per request is read from
//! `/proc/PID/stat` around each run, so an idle-spinning server would be charged for its
//! spinning: Melange runs with its default idle policy (sleep after 1,000 empty passes) so
//! the comparison is of work, not of polling.
//!
//! Over loopback, the kernel's TCP and the client are most of the cost of a request for both
//! servers, so this table shows what the engine design alone buys without kernel bypass; the
//! lab's af_xdp runs are the other half of the issue's table.

use crate::table::{median, print_table};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `melange bench kv`.
#[derive(clap::Args, Debug, Clone)]
pub struct KvBenchArgs {
    /// Repetitions; medians of the per-repetition ratios are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Requests per redis-benchmark run (`-n`).
    #[arg(long, default_value_t = 200_000)]
    pub requests: u64,
    /// Client connections (`-c`).
    #[arg(long, default_value_t = 50)]
    pub clients: u32,
    /// Value size (`-d`).
    #[arg(long, default_value_t = 32)]
    pub value_size: u32,
    /// Pipeline depths to measure (`-P`).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub pipeline: Vec<u32>,
    /// Tests (`-t`).
    #[arg(long, default_value = "set,get")]
    pub tests: String,
    /// Core of the servers.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// Core of redis-benchmark.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// First TCP port to use.
    #[arg(long, default_value_t = 16379)]
    pub port: u16,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A Redis server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KvServer {
    /// `redis-server` from the distribution.
    Redis,
    /// `melange kv --backend kernel --engines 1`.
    Melange,
}

impl KvServer {
    fn label(self) -> &'static str {
        match self {
            KvServer::Redis => "redis-server",
            KvServer::Melange => "melange kv (kernel)",
        }
    }
}

/// One redis-benchmark test on one server.
#[derive(Debug, Clone, Serialize)]
pub struct KvRun {
    /// The server.
    pub server: KvServer,
    /// The test (`SET`, `GET`).
    pub test: String,
    /// Pipeline depth.
    pub pipeline: u32,
    /// Requests per second, as redis-benchmark reports it.
    pub requests_per_s: f64,
    /// p50 latency, ms.
    pub p50_ms: f64,
    /// p99 latency, ms.
    pub p99_ms: f64,
    /// Server CPU per request, ns.
    pub server_cpu_ns_per_request: f64,
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(server: KvServer, port: u16, cpu: usize) -> Result<Process> {
    let mut command = match server {
        KvServer::Redis => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "redis-server"]).args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ]);
            c
        }
        KvServer::Melange => {
            let exe = std::env::current_exe().context("locating the melange binary")?;
            let mut c = Command::new(exe);
            c.args(["kv", "--backend", "kernel", "--log", "warn"])
                .args(["--resp-port", &port.to_string(), "--cpus", &cpu.to_string()]);
            c
        }
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (install it with scripts/setup.sh)",
                server.label()
            )
        })?;
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if Instant::now() > deadline {
            bail!("{} did not start listening on port {port}", server.label());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(process)
}

/// The pid doing the work: taskset execs redis-server, so the child's pid is the server's.
fn run_one(args: &KvBenchArgs, server: KvServer, port: u16, pipeline: u32) -> Result<Vec<KvRun>> {
    let process = start(server, port, args.server_cpu)?;
    let pid = process.0.id();
    let before = melange_sys::cpu::process_cpu_time_of(pid)?;
    let output = Command::new("taskset")
        .args(["-c", &args.client_cpu.to_string(), "redis-benchmark"])
        .args(["-p", &port.to_string(), "--csv", "-r", "100000"])
        .args(["-n", &args.requests.to_string()])
        .args(["-c", &args.clients.to_string()])
        .args(["-d", &args.value_size.to_string()])
        .args(["-P", &pipeline.to_string()])
        .args(["-t", &args.tests])
        .output()
        .context("running redis-benchmark (install it with scripts/setup.sh)")?;
    let after = melange_sys::cpu::process_cpu_time_of(pid)?;
    if !output.status.success() {
        bail!(
            "redis-benchmark against {} failed: {}",
            server.label(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let csv = String::from_utf8_lossy(&output.stdout);
    let mut runs = parse_csv(&csv, server, pipeline)?;
    // CPU is shared by the tests of one run in proportion to their requests.
    let total = args.requests as f64 * runs.len() as f64;
    for run in &mut runs {
        run.server_cpu_ns_per_request = (after - before) as f64 / total;
    }
    Ok(runs)
}

/// Reads redis-benchmark's `--csv` output.
pub fn parse_csv(csv: &str, server: KvServer, pipeline: u32) -> Result<Vec<KvRun>> {
    let mut runs = Vec::new();
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        if fields.len() < 7 {
            continue;
        }
        let number = |i: usize| -> Result<f64> {
            fields[i]
                .parse()
                .map_err(|_| anyhow!("redis-benchmark CSV: '{}' in {line}", fields[i]))
        };
        runs.push(KvRun {
            server,
            test: fields[0].to_string(),
            pipeline,
            requests_per_s: number(1)?,
            p50_ms: number(4)?,
            p99_ms: number(6)?,
            server_cpu_ns_per_request: 0.0,
        });
    }
    if runs.is_empty() {
        bail!("redis-benchmark printed no results:\n{csv}");
    }
    Ok(runs)
}

/// The summary of one test at one depth: medians of the per-repetition ratios.
#[derive(Debug, Clone, Serialize)]
pub struct KvRow {
    /// Test.
    pub test: String,
    /// Pipeline depth.
    pub pipeline: u32,
    /// Median requests/s of redis-server.
    pub redis_rps: f64,
    /// Median requests/s of melange kv.
    pub melange_rps: f64,
    /// Median of melange/redis requests/s within each repetition.
    pub rps_ratio: f64,
    /// Lowest of those ratios.
    pub rps_ratio_worst: f64,
    /// Median of redis/melange CPU per request within each repetition (how many times less
    /// CPU melange uses).
    pub cpu_ratio: f64,
    /// Median server CPU-µs per request, redis-server.
    pub redis_cpu_us: f64,
    /// Median server CPU-µs per request, melange kv.
    pub melange_cpu_us: f64,
    /// Median p99, ms, redis-server and melange kv.
    pub p99_ms: (f64, f64),
}

/// Runs the benchmark and prints the table.
pub fn run(args: &KvBenchArgs) -> Result<Vec<KvRow>> {
    if args.reps == 0 || args.requests == 0 || args.clients == 0 || args.pipeline.is_empty() {
        bail!("--reps, --requests, --clients and --pipeline must be at least 1");
    }
    let mut all: Vec<(usize, KvRun)> = Vec::new();
    let mut port = args.port;
    for rep in 0..args.reps {
        for &pipeline in &args.pipeline {
            let order = if rep % 2 == 0 {
                [KvServer::Redis, KvServer::Melange]
            } else {
                [KvServer::Melange, KvServer::Redis]
            };
            for server in order {
                port = port.wrapping_add(1).max(1024);
                let runs = run_one(args, server, port, pipeline)?;
                for r in runs {
                    eprintln!(
                        "rep {rep} -P {pipeline} {:<20} {:<4} {:>10.0} req/s p99 {:.3} ms cpu {:.2} µs/req",
                        server.label(),
                        r.test,
                        r.requests_per_s,
                        r.p99_ms,
                        r.server_cpu_ns_per_request / 1e3
                    );
                    all.push((rep, r));
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut keys: Vec<(String, u32)> = all
        .iter()
        .map(|(_, r)| (r.test.clone(), r.pipeline))
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    for (test, pipeline) in keys {
        let pick = |rep: usize, server: KvServer| {
            all.iter()
                .find(|(r, run)| {
                    *r == rep
                        && run.server == server
                        && run.test == test
                        && run.pipeline == pipeline
                })
                .map(|(_, run)| run.clone())
        };
        let mut rps_ratios = Vec::new();
        let mut cpu_ratios = Vec::new();
        let (mut rr, mut mr, mut rc, mut mc, mut rp, mut mp) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for rep in 0..args.reps {
            let (Some(redis), Some(melange)) =
                (pick(rep, KvServer::Redis), pick(rep, KvServer::Melange))
            else {
                continue;
            };
            rps_ratios.push(melange.requests_per_s / redis.requests_per_s.max(1.0));
            cpu_ratios
                .push(redis.server_cpu_ns_per_request / melange.server_cpu_ns_per_request.max(1.0));
            rr.push(redis.requests_per_s);
            mr.push(melange.requests_per_s);
            rc.push(redis.server_cpu_ns_per_request / 1e3);
            mc.push(melange.server_cpu_ns_per_request / 1e3);
            rp.push(redis.p99_ms);
            mp.push(melange.p99_ms);
        }
        let worst = rps_ratios.iter().copied().fold(f64::INFINITY, f64::min);
        rows.push(KvRow {
            test,
            pipeline,
            redis_rps: median(&mut rr),
            melange_rps: median(&mut mr),
            rps_ratio: median(&mut rps_ratios),
            rps_ratio_worst: worst,
            cpu_ratio: median(&mut cpu_ratios),
            redis_cpu_us: median(&mut rc),
            melange_cpu_us: median(&mut mc),
            p99_ms: (median(&mut rp), median(&mut mp)),
        });
    }
    println!(
        "melange kv vs redis-server, kernel backend on 127.0.0.1: redis-benchmark -c {} -d {} -n {}, servers on core {}, client on core {}, {} repetitions (medians of per-repetition ratios)",
        args.clients, args.value_size, args.requests, args.server_cpu, args.client_cpu, args.reps
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.test.clone(),
                r.pipeline.to_string(),
                format!("{:.0}", r.redis_rps),
                format!("{:.0}", r.melange_rps),
                format!("x{:.2} (worst x{:.2})", r.rps_ratio, r.rps_ratio_worst),
                format!("{:.2}", r.redis_cpu_us),
                format!("{:.2}", r.melange_cpu_us),
                format!("x{:.2}", r.cpu_ratio),
                format!("{:.3} / {:.3}", r.p99_ms.0, r.p99_ms.1),
            ]
        })
        .collect();
    print_table(
        &[
            "test",
            "-P",
            "redis req/s",
            "melange req/s",
            "melange/redis",
            "redis cpu-µs/req",
            "melange cpu-µs/req",
            "cpu redis/melange",
            "p99 ms redis / melange",
        ],
        &table,
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_is_read() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"98039.22\",\"0.270\",\"0.064\",\"0.255\",\"0.383\",\"0.527\",\"1.231\"\n\
                   \"GET\",\"101010.10\",\"0.262\",\"0.072\",\"0.247\",\"0.367\",\"0.471\",\"0.943\"\n";
        let runs = parse_csv(csv, KvServer::Redis, 16).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].test, "GET");
        assert_eq!(runs[1].requests_per_s, 101010.10);
        assert_eq!((runs[0].p50_ms, runs[0].p99_ms), (0.255, 0.527));
        assert!(parse_csv("\"test\",\"rps\"\n", KvServer::Redis, 1).is_err());
    }
}
