//! `melange bench kv-lab`: `melange kv` on AF_XDP against redis-server and memcached in the
//! namespace lab, the same load at each, side by side in one run.
//!
//! The servers run one at a time in `mlg-b`, each on the server core: redis-server 7,
//! memcached 1.6 with one worker thread (`-t 1`), and `melange kv --backend af_xdp` with one
//! engine on queue 0 (the kernel's transmissions on both veth ends are steered to queue 0
//! with XPS for the run, [`SingleQueue`], so one engine sees every flow). The client runs in
//! `mlg-a` on the client core:
//!
//! - `resp`: Melange's own load generator on AF_XDP speaking RESP (`melange loadgen
//!   --protocol resp`): SETs, then GETs of keys that are there, at each `--pipeline` depth,
//!   against redis-server and melange kv. A kernel client saturates its own core long
//!   before a fast server (DESIGN.md), so only a client that bypasses the kernel too can
//!   show what the server does.
//! - `memcache`: the same load generator speaking memcached's protocol, an ETC-like mix
//!   (`--get-ratio`, 90% gets by default), against memcached and melange kv's memcached port.
//! - `scale`: GETs at one in flight on 10 to 10,000 connections (`--scale`), melange kv
//!   against redis-server: whether throughput holds as connections grow (closed loop, so
//!   the offered load is the connections' own).
//! - `latency`: an open loop of GETs at each `--rates` (50,000/s by default), the same
//!   schedule against redis-server and melange kv: p50 and p99 at a fixed offered load, and
//!   the requests a server fell behind on (due when every pipeline was full).
//! - `redis-benchmark`: the real client (`redis-benchmark -t set,get`), from mlg-a on kernel
//!   sockets, against redis-server and melange kv: what an operator's own tool sees, and
//!   where the kernel client is the limit.
//!
//! Each server is started fresh for each repetition and its key space filled first (sets
//! only, unmeasured, so that the gets hit: the hit ratio is in the table). The servers' order
//! alternates between repetitions, ratios are taken within a repetition and their median
//! reported with the worst, so a machine that changes speed between repetitions (this VM
//! does, BENCHMARKS.md) cannot fake a win. Server CPU per request is the server process's
//! CPU time (`/proc/PID/stat`) over the client's run divided by the replies it sent, with
//! every server on its default idle policy (melange kv sleeps after 1,000 empty passes), so
//! the figure is work, not polling.

use crate::kv::{self, KvPorts, KvProcess, KvServer, RedisLoad, Site};
use crate::lab_echo::{lab_loadgen, SingleQueue};
use crate::table::{median, print_table};
use anyhow::{anyhow, bail, Context, Result};
use melange_control::options::parse_duration;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// The lab's server address, as the clients reach it.
const SERVER_ADDR: &str = "10.77.0.2";
/// How long the unmeasured fill of each server's key space runs (sets only, 16 pipelined on
/// every connection: a few hundred thousand sets a second, many times the key space).
const FILL_TIME: Duration = Duration::from_secs(2);

/// Arguments of `melange bench kv-lab`.
#[derive(clap::Args, Debug, Clone)]
pub struct LabKvArgs {
    /// Repetitions; medians of the per-repetition ratios are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Measured time of each load generator run.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each run.
    #[arg(long, default_value = "0.5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Client connections.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Pipeline depths (requests in flight per connection) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub pipeline: Vec<usize>,
    /// Value size, bytes.
    #[arg(long, default_value_t = 32)]
    pub value_size: usize,
    /// Keys in the key space.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// The memcached mix's share of gets.
    #[arg(long, default_value_t = 0.9)]
    pub get_ratio: f64,
    /// Suites to run: `resp`, `memcache`, `redis-benchmark`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "resp,memcache,redis-benchmark,scale,latency"
    )]
    pub suites: Vec<KvSuite>,
    /// The latency suite's offered loads, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "50000")]
    pub rates: Vec<u64>,
    /// The scale suite's connection counts (at most 10,000, the servers' `maxclients`).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    pub scale: Vec<usize>,
    /// redis-benchmark: requests per test (`-n`).
    #[arg(long, default_value_t = 200_000)]
    pub requests: u64,
    /// Core of the servers (in mlg-b).
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// Core of the client (in mlg-a).
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A part of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum KvSuite {
    /// Melange's load generator speaking RESP: melange kv against redis-server.
    Resp,
    /// Melange's load generator speaking memcached's protocol: against memcached.
    Memcache,
    /// redis-benchmark from mlg-a (kernel sockets): melange kv against redis-server.
    RedisBenchmark,
    /// GETs at one in flight on `--scale` connections (10 to 10,000): how throughput holds
    /// as connections grow, melange kv against redis-server.
    Scale,
    /// Latency at a fixed offered load: an open loop of GETs at each `--rates`, the same
    /// schedule for redis-server and melange kv.
    Latency,
}

/// One measured load on one server.
#[derive(Debug, Clone, Serialize)]
pub struct KvLabRun {
    /// The server.
    pub server: KvServer,
    /// What was run, e.g. `GET -P 16`.
    pub load: String,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Server CPU per request, ns.
    pub server_cpu_ns_per_request: f64,
    /// Gets that hit, of all gets (load generator runs; `None` for redis-benchmark).
    pub hit_ratio: Option<f64>,
    /// Open loop: requests due when every pipeline was full (the server fell behind).
    pub missed: u64,
}

/// One row of the summary: a load, melange kv against its peer.
#[derive(Debug, Clone, Serialize)]
pub struct KvLabRow {
    /// The suite.
    pub suite: KvSuite,
    /// The load.
    pub load: String,
    /// The peer (redis-server or memcached).
    pub peer: KvServer,
    /// Medians over repetitions: peer and melange requests/s.
    pub peer_requests_per_s: f64,
    /// See `peer_requests_per_s`.
    pub melange_requests_per_s: f64,
    /// Median and worst of the per-repetition melange/peer requests/s.
    pub throughput_ratio: (f64, f64),
    /// Medians: server CPU-ns per request, peer and melange.
    pub peer_cpu_ns: f64,
    /// See `peer_cpu_ns`.
    pub melange_cpu_ns: f64,
    /// Median and worst of the per-repetition peer/melange CPU per request.
    pub cpu_ratio: (f64, f64),
    /// Medians: p50 latency, µs, peer and melange.
    pub peer_p50_us: f64,
    /// See `peer_p50_us`.
    pub melange_p50_us: f64,
    /// Most requests a server fell behind on in one repetition (open loop), peer and melange.
    pub missed: (u64, u64),
    /// Medians: p99 latency, µs, peer and melange.
    pub peer_p99_us: f64,
    /// See `peer_p99_us`.
    pub melange_p99_us: f64,
    /// Medians: hit ratio of the gets, peer and melange.
    pub hit_ratio: Option<(f64, f64)>,
    /// Every run, per repetition.
    pub runs: Vec<[KvLabRun; 2]>,
}

/// One load generator load.
#[derive(Debug, Clone, Copy)]
struct GenLoad {
    protocol: &'static str,
    pipeline: usize,
    get_ratio: f64,
    /// Connections, if not `--connections`.
    connections: Option<usize>,
    /// Open loop: the offered load.
    rate: Option<u64>,
}

impl GenLoad {
    fn label(&self) -> String {
        let resp = self.protocol == "resp";
        let kind = if self.get_ratio <= 0.0 {
            if resp { "SET" } else { "set" }.to_string()
        } else if self.get_ratio >= 1.0 {
            if resp { "GET" } else { "get" }.to_string()
        } else {
            format!("{:.0}% get", self.get_ratio * 100.0)
        };
        match (self.connections, self.rate) {
            (_, Some(rate)) => format!("{kind} at {rate}/s (open loop)"),
            (Some(c), None) => format!("{kind} -P {} x{c} conns", self.pipeline),
            (None, None) => format!("{kind} -P {}", self.pipeline),
        }
    }
}

/// Runs Melange's load generator from mlg-a against `port` and charges `process` the CPU it
/// used meanwhile.
fn loadgen_run(
    args: &LabKvArgs,
    process: &KvProcess,
    port: u16,
    load: GenLoad,
    duration: Duration,
    warmup: Duration,
) -> Result<KvLabRun> {
    let mut command = lab_loadgen()?;
    command
        .args(["--log", "error", "--protocol", load.protocol])
        .args(["--target", &format!("{SERVER_ADDR}:{port}")])
        .args([
            "--connections",
            &load.connections.unwrap_or(args.connections).to_string(),
        ])
        .args(["--inflight", &load.pipeline.to_string()])
        .args(["--payload", &args.value_size.to_string()])
        .args(["--keys", &args.keys.to_string()])
        .args(["--get-ratio", &load.get_ratio.to_string()]);
    if let Some(rate) = load.rate {
        command.args(["--rate", &rate.to_string()]);
    }
    command
        .args(["--cpus", &args.client_cpu.to_string()])
        .args(["--duration", &format!("{}s", duration.as_secs_f64())])
        .args(["--warmup", &format!("{}s", warmup.as_secs_f64())]);
    let before = process.cpu_ns()?;
    let output = command
        .output()
        .context("running melange loadgen in mlg-a")?;
    let after = process.cpu_ns()?;
    if !output.status.success() {
        bail!(
            "melange loadgen --protocol {} against {} failed: {}",
            load.protocol,
            process.server().label(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading melange loadgen's JSON")?;
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let received = number(&json["received"]);
    let kv = &json["kv"];
    let wrong = number(&kv["wrong"]);
    let errors = number(&kv["errors"]);
    if wrong > 0.0 || errors > 0.0 {
        bail!(
            "{} answered {wrong} requests wrongly and refused {errors} ({}): the comparison would be of unlike work",
            process.server().label(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let gets = number(&kv["hits"]) + number(&kv["misses"]);
    Ok(KvLabRun {
        server: process.server(),
        load: load.label(),
        requests_per_s: number(&json["requests_per_s"]),
        p50_us: number(&json["latency"]["p50_ns"]) / 1e3,
        p99_us: number(&json["latency"]["p99_ns"]) / 1e3,
        server_cpu_ns_per_request: (after.saturating_sub(before)) as f64 / received.max(1.0),
        hit_ratio: (gets > 0.0).then(|| number(&kv["hits"]) / gets),
        missed: if load.rate.is_some() {
            json["send_failures"].as_u64().unwrap_or(0)
        } else {
            0
        },
    })
}

/// The loads of a suite.
fn gen_loads(args: &LabKvArgs, suite: KvSuite) -> Vec<GenLoad> {
    let mut loads = Vec::new();
    for &pipeline in &args.pipeline {
        match suite {
            KvSuite::Resp => {
                for get_ratio in [0.0, 1.0] {
                    loads.push(GenLoad {
                        protocol: "resp",
                        pipeline,
                        get_ratio,
                        connections: None,
                        rate: None,
                    });
                }
            }
            KvSuite::Memcache => loads.push(GenLoad {
                protocol: "memcache",
                pipeline,
                get_ratio: args.get_ratio,
                connections: None,
                rate: None,
            }),
            KvSuite::RedisBenchmark | KvSuite::Scale | KvSuite::Latency => {}
        }
    }
    if suite == KvSuite::Latency {
        for &rate in &args.rates {
            loads.push(GenLoad {
                protocol: "resp",
                pipeline: 16,
                get_ratio: 1.0,
                connections: None,
                rate: Some(rate),
            });
        }
    }
    if suite == KvSuite::Scale {
        for &connections in &args.scale {
            loads.push(GenLoad {
                protocol: "resp",
                pipeline: 1,
                get_ratio: 1.0,
                connections: Some(connections),
                rate: None,
            });
        }
    }
    loads
}

/// The peer of melange kv in a suite.
fn peer_of(suite: KvSuite) -> KvServer {
    match suite {
        KvSuite::Memcache => KvServer::Memcached,
        KvSuite::Resp | KvSuite::RedisBenchmark | KvSuite::Scale | KvSuite::Latency => {
            KvServer::Redis
        }
    }
}

/// Every load of one suite on one freshly started server.
fn suite_on(
    args: &LabKvArgs,
    suite: KvSuite,
    server: KvServer,
    port: &mut u16,
) -> Result<Vec<KvLabRun>> {
    *port += 1;
    let ports = match (suite, server) {
        (KvSuite::Memcache, KvServer::Melange) => KvPorts {
            resp: Some(*port + 1000),
            memcache: Some(*port),
        },
        (KvSuite::Memcache, _) => KvPorts {
            resp: None,
            memcache: Some(*port),
        },
        _ => KvPorts {
            resp: Some(*port),
            memcache: None,
        },
    };
    let process = KvProcess::start(server, Site::Lab, ports, args.server_cpu)?;
    let mut runs = Vec::new();
    match suite {
        KvSuite::RedisBenchmark => {
            for &pipeline in &args.pipeline {
                let load = RedisLoad {
                    requests: args.requests,
                    clients: args.connections as u32,
                    value_size: args.value_size as u32,
                    pipeline: pipeline as u32,
                    tests: "set,get".into(),
                };
                for run in kv::measure_redis(&process, Site::Lab, args.client_cpu, *port, &load)? {
                    runs.push(KvLabRun {
                        server,
                        load: format!("redis-benchmark {} -P {pipeline}", run.test),
                        requests_per_s: run.requests_per_s,
                        p50_us: run.p50_ms * 1e3,
                        p99_us: run.p99_ms * 1e3,
                        server_cpu_ns_per_request: run.server_cpu_ns_per_request,
                        hit_ratio: None,
                        missed: 0,
                    });
                }
            }
        }
        KvSuite::Resp | KvSuite::Memcache | KvSuite::Scale | KvSuite::Latency => {
            let protocol = if suite == KvSuite::Memcache {
                "memcache"
            } else {
                "resp"
            };
            let fill = GenLoad {
                protocol,
                pipeline: 16,
                get_ratio: 0.0,
                connections: None,
                rate: None,
            };
            loadgen_run(args, &process, *port, fill, FILL_TIME, Duration::ZERO)
                .context("filling the key space")?;
            for load in gen_loads(args, suite) {
                runs.push(loadgen_run(
                    args,
                    &process,
                    *port,
                    load,
                    args.duration,
                    args.warmup,
                )?);
            }
        }
    }
    Ok(runs)
}

fn check(args: &LabKvArgs) -> Result<()> {
    if args.reps == 0 {
        bail!("--reps 0: give at least one repetition");
    }
    if args.pipeline.is_empty() || args.pipeline.iter().any(|&p| p == 0 || p > 64) {
        bail!("--pipeline: depths between 1 and 64, e.g. 1,16");
    }
    if args.suites.is_empty() {
        bail!("--suites: name at least one of resp, memcache, redis-benchmark, scale, latency");
    }
    if args.scale.iter().any(|&c| c == 0 || c > 10_000) {
        bail!("--scale: connection counts between 1 and 10000 (the servers' maxclients), e.g. 10,100,1000,10000");
    }
    if !(0.0..=1.0).contains(&args.get_ratio) {
        bail!("--get-ratio {}: a share between 0 and 1", args.get_ratio);
    }
    let mut tools = vec!["redis-server"];
    if args.suites.contains(&KvSuite::Memcache) {
        tools.push("memcached");
    }
    if args.suites.contains(&KvSuite::RedisBenchmark) {
        tools.push("redis-benchmark");
    }
    let missing = kv::missing_tools(&tools);
    if !missing.is_empty() {
        bail!("{}", kv::install_hint(&missing));
    }
    Ok(())
}

/// Runs the benchmark and prints its tables.
pub fn run(args: &LabKvArgs) -> Result<Vec<KvLabRow>> {
    check(args)?;
    let _lock = crate::lab_lock()?;
    crate::lab_echo::lab_up(
        melange_lab::NapiMode::Threaded,
        args.server_cpu,
        args.client_cpu,
    )?;
    let _single_queue = SingleQueue::new()?;
    let mut port = 21_000u16;
    let mut rows = Vec::new();
    for &suite in &args.suites {
        let peer = peer_of(suite);
        // per repetition: [peer runs, melange runs]
        let mut reps: Vec<[Vec<KvLabRun>; 2]> = Vec::new();
        for rep in 0..args.reps {
            let order = if rep % 2 == 0 {
                [peer, KvServer::Melange]
            } else {
                [KvServer::Melange, peer]
            };
            let mut got: [Vec<KvLabRun>; 2] = [Vec::new(), Vec::new()];
            for server in order {
                let runs = suite_on(args, suite, server, &mut port)
                    .with_context(|| format!("{suite:?} on {}", server.label()))?;
                for run in &runs {
                    eprintln!(
                        "  rep {} {:<12} {:<28} {:>10.0} req/s  p50 {:>8.1} us  p99 {:>8.1} us  {:>6.0} CPU-ns/req{}",
                        rep + 1,
                        server.label(),
                        run.load,
                        run.requests_per_s,
                        run.p50_us,
                        run.p99_us,
                        run.server_cpu_ns_per_request,
                        if run.missed > 0 {
                            format!("  (fell behind on {} requests)", run.missed)
                        } else {
                            String::new()
                        }
                    );
                }
                got[usize::from(server == KvServer::Melange)] = runs;
            }
            reps.push(got);
        }
        rows.extend(summarise(suite, peer, reps)?);
    }
    print_rows(args, &rows);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(rows)
}

/// The rows of one suite: for each load, medians over repetitions of the ratios within them.
fn summarise(
    suite: KvSuite,
    peer: KvServer,
    reps: Vec<[Vec<KvLabRun>; 2]>,
) -> Result<Vec<KvLabRow>> {
    let Some(first) = reps.first() else {
        return Ok(Vec::new());
    };
    let loads: Vec<String> = first[0].iter().map(|r| r.load.clone()).collect();
    let mut rows = Vec::new();
    for load in loads {
        let mut pairs = Vec::new();
        for rep in &reps {
            let find = |runs: &[KvLabRun]| runs.iter().find(|r| r.load == load).cloned();
            let (Some(p), Some(m)) = (find(&rep[0]), find(&rep[1])) else {
                return Err(anyhow!("load {load} is missing from a repetition"));
            };
            pairs.push([p, m]);
        }
        let med = |f: &dyn Fn(&[KvLabRun; 2]) -> f64| {
            let mut values: Vec<f64> = pairs.iter().map(f).collect();
            median(&mut values)
        };
        let worst =
            |f: &dyn Fn(&[KvLabRun; 2]) -> f64| pairs.iter().map(f).fold(f64::INFINITY, f64::min);
        let tput = |p: &[KvLabRun; 2]| p[1].requests_per_s / p[0].requests_per_s.max(1e-9);
        let cpu = |p: &[KvLabRun; 2]| {
            p[0].server_cpu_ns_per_request / p[1].server_cpu_ns_per_request.max(1e-9)
        };
        let hit = pairs[0][0].hit_ratio.is_some() && pairs[0][1].hit_ratio.is_some();
        rows.push(KvLabRow {
            suite,
            load,
            peer,
            peer_requests_per_s: med(&|p| p[0].requests_per_s),
            melange_requests_per_s: med(&|p| p[1].requests_per_s),
            throughput_ratio: (med(&tput), worst(&tput)),
            peer_cpu_ns: med(&|p| p[0].server_cpu_ns_per_request),
            melange_cpu_ns: med(&|p| p[1].server_cpu_ns_per_request),
            cpu_ratio: (med(&cpu), worst(&cpu)),
            peer_p50_us: med(&|p| p[0].p50_us),
            melange_p50_us: med(&|p| p[1].p50_us),
            missed: (
                pairs.iter().map(|p| p[0].missed).max().unwrap_or(0),
                pairs.iter().map(|p| p[1].missed).max().unwrap_or(0),
            ),
            peer_p99_us: med(&|p| p[0].p99_us),
            melange_p99_us: med(&|p| p[1].p99_us),
            hit_ratio: hit.then(|| {
                (
                    med(&|p| p[0].hit_ratio.unwrap_or(0.0)),
                    med(&|p| p[1].hit_ratio.unwrap_or(0.0)),
                )
            }),
            runs: pairs,
        });
    }
    Ok(rows)
}

fn print_rows(args: &LabKvArgs, rows: &[KvLabRow]) {
    println!(
        "\nmelange kv (af_xdp, 1 engine) against its peers in the lab: {} connections, {} B values, {} keys, servers on cpu {}, client on cpu {}; medians of {} repetitions (worst in brackets)\n",
        args.connections, args.value_size, args.keys, args.server_cpu, args.client_cpu, args.reps
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.load.clone(),
                r.peer.label().to_string(),
                format!("{:.0}", r.peer_requests_per_s),
                format!("{:.0}", r.melange_requests_per_s),
                format!(
                    "x{:.2} (x{:.2})",
                    r.throughput_ratio.0, r.throughput_ratio.1
                ),
                format!("{:.2} / {:.2}", r.peer_cpu_ns / 1e3, r.melange_cpu_ns / 1e3),
                format!("x{:.2} (x{:.2})", r.cpu_ratio.0, r.cpu_ratio.1),
                format!("{:.0} / {:.0}", r.peer_p50_us, r.melange_p50_us),
                format!("{:.0} / {:.0}", r.peer_p99_us, r.melange_p99_us),
                r.hit_ratio
                    .map(|(p, m)| format!("{:.0}% / {:.0}%", p * 100.0, m * 100.0))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "load",
            "peer",
            "peer req/s",
            "melange req/s",
            "melange/peer",
            "CPU-us/req peer / melange",
            "peer/melange CPU",
            "p50 us peer / melange",
            "p99 us peer / melange",
            "hits peer / melange",
        ],
        &table,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(server: KvServer, load: &str, rps: f64, cpu: f64) -> KvLabRun {
        KvLabRun {
            server,
            load: load.into(),
            requests_per_s: rps,
            p50_us: 10.0,
            p99_us: 20.0,
            server_cpu_ns_per_request: cpu,
            hit_ratio: Some(1.0),
            missed: 0,
        }
    }

    #[test]
    fn ratios_are_taken_within_each_repetition() {
        let reps = vec![
            [
                vec![run(KvServer::Redis, "GET -P 1", 100.0, 4000.0)],
                vec![run(KvServer::Melange, "GET -P 1", 300.0, 1000.0)],
            ],
            // A slow repetition for both: the ratio is the same.
            [
                vec![run(KvServer::Redis, "GET -P 1", 50.0, 8000.0)],
                vec![run(KvServer::Melange, "GET -P 1", 150.0, 2000.0)],
            ],
            [
                vec![run(KvServer::Redis, "GET -P 1", 100.0, 4000.0)],
                vec![run(KvServer::Melange, "GET -P 1", 200.0, 2000.0)],
            ],
        ];
        let rows = summarise(KvSuite::Resp, KvServer::Redis, reps).unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.throughput_ratio, (3.0, 2.0));
        assert_eq!(row.cpu_ratio, (4.0, 2.0));
        assert_eq!(row.peer_requests_per_s, 100.0);
        assert_eq!(row.melange_requests_per_s, 200.0);
    }

    #[test]
    fn a_load_missing_from_a_repetition_is_an_error() {
        let reps = vec![[
            vec![run(KvServer::Redis, "GET -P 1", 100.0, 4000.0)],
            vec![run(KvServer::Melange, "SET -P 1", 300.0, 1000.0)],
        ]];
        assert!(summarise(KvSuite::Resp, KvServer::Redis, reps).is_err());
    }

    #[test]
    fn the_loads_name_what_they_run() {
        let args = LabKvArgs {
            reps: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            connections: 50,
            pipeline: vec![1, 16],
            value_size: 32,
            keys: 1000,
            get_ratio: 0.9,
            suites: vec![KvSuite::Resp],
            scale: vec![10, 10_000],
            rates: vec![50_000],
            requests: 1000,
            server_cpu: 0,
            client_cpu: 1,
            json: None,
        };
        let labels: Vec<String> = gen_loads(&args, KvSuite::Resp)
            .iter()
            .map(GenLoad::label)
            .collect();
        assert_eq!(labels, ["SET -P 1", "GET -P 1", "SET -P 16", "GET -P 16"]);
        let labels: Vec<String> = gen_loads(&args, KvSuite::Memcache)
            .iter()
            .map(GenLoad::label)
            .collect();
        assert_eq!(labels, ["90% get -P 1", "90% get -P 16"]);
        let labels: Vec<String> = gen_loads(&args, KvSuite::Scale)
            .iter()
            .map(GenLoad::label)
            .collect();
        assert_eq!(labels, ["GET -P 1 x10 conns", "GET -P 1 x10000 conns"]);
        let labels: Vec<String> = gen_loads(&args, KvSuite::Latency)
            .iter()
            .map(GenLoad::label)
            .collect();
        assert_eq!(labels, ["GET at 50000/s (open loop)"]);
    }
}
