//! `melange bench echo`: kernel bypass against Linux, in the namespace lab, in one run.
//!
//! Servers run in `mlg-b` pinned to one core; Melange's load generator runs on AF_XDP in
//! `mlg-a`, pinned to the other core (a kernel-socket client saturates its own core near
//! 285k requests/s here and could not measure a fast server). Each server is started for one
//! measurement and stopped after it, because spinning servers cannot share the core:
//!
//! - (a) `melange echo --backend af_xdp`, one engine on queue 0;
//! - (b) the Linux baseline, `melange-baseline udp-echo` (recvmmsg/sendmmsg ×32), spinning
//!   and blocking;
//! - (c) `melange-baseline xdp-echo`: a minimal raw AF_XDP echo with no stack, the driver
//!   limit, as Arrakis measured against its raw driver.
//!
//! One queue: the servers serve queue 0 and the load generator sends on its queue 0. On veth
//! the sender picks the receiving queue, so for the kernel's own transmissions (the Linux
//! baseline's replies) the benchmark maps every CPU to TX queue 0 with XPS on both ends for
//! its duration ([`SingleQueue`]), and restores the previous maps after.
//!
//! sockperf's server is not measured: it answers only sockperf's own messages, so the same
//! client cannot drive it, and it runs on the kernel stack like (b).

use super::{median_of, print_rows, EchoRunArgs, Row, Server};
use crate::table::{print_table, us};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// Arguments of `melange bench echo`.
#[derive(clap::Args, Debug, Clone)]
pub struct LabEchoArgs {
    /// Repetitions, timing, load and placement.
    #[command(flatten)]
    pub run: EchoRunArgs,
    /// Simulated application work per request for the curve (µs), at 32 in flight;
    /// `--delay-us` with no value skips the curve.
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "0,2,4,8,16,32,64")]
    pub delay_us: Vec<u64>,
    /// Where each lab host's receive work runs (`melange lab up --napi`): `threaded` (the
    /// default) pins each end's NAPI threads to that host's core (--server-cpu, --client-cpu),
    /// as on two machines; `inline` is the kernel's default, where on veth the sender's core
    /// runs the receiver's XDP program and copy.
    #[arg(long, value_enum, default_value_t = melange_lab::NapiMode::Threaded)]
    pub napi: melange_lab::NapiMode,
}

/// The lab's servers.
fn servers() -> [Server; 4] {
    [
        Server::MelangeAfXdp,
        Server::LinuxSpin,
        Server::LinuxBlock,
        Server::RawXdp,
    ]
}

/// The order, as indexes into [`servers`], in which repetition `rep` measures them: (a) always
/// sits between Linux spin and the raw echo, the two servers its headline ratios divide by, so
/// each ratio compares runs taken seconds apart; odd repetitions run the order backwards, so
/// neither side of a pair always goes first (a warmer machine, a drift in one direction).
fn measurement_order(rep: usize) -> [usize; 4] {
    // Linux spin, (a), raw AF_XDP, Linux block.
    const FORWARD: [usize; 4] = [1, 0, 3, 2];
    let mut order = FORWARD;
    if rep % 2 == 1 {
        order.reverse();
    }
    order
}

pub(crate) struct LabServer {
    pub(crate) child: Child,
    /// Set once the child has been reaped, so its pid is never signalled again.
    exited: bool,
}

impl LabServer {
    fn start(server: Server, port: u16, cpu: usize, delay_us: u64) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", "mlg-b"]);
        let (port, cpu, delay) = (port.to_string(), cpu.to_string(), delay_us.to_string());
        match server {
            Server::MelangeAfXdp => command.arg(&exe).args([
                "echo",
                "--backend",
                "af_xdp",
                "--interface",
                "mlg-vb",
                "--addr",
                "10.77.0.2",
                "--queues",
                "0",
                "--idle",
                "spin",
                // The engine summary (with its busy time) is logged at info when it stops.
                "--log",
                "warn,melange::echo=info",
                "--port",
                &port,
                "--cpus",
                &cpu,
                "--delay-us",
                &delay,
            ]),
            Server::LinuxSpin | Server::LinuxBlock => {
                let idle = if server == Server::LinuxSpin {
                    "spin"
                } else {
                    "block"
                };
                command.arg(&exe).args([
                    "baseline",
                    "udp-echo",
                    "--addr",
                    "10.77.0.2",
                    "--batch",
                    "32",
                    "--idle",
                    idle,
                    "--port",
                    &port,
                    "--cpu",
                    &cpu,
                    "--delay-us",
                    &delay,
                ])
            }
            Server::RawXdp => command.arg(&exe).args([
                "baseline",
                "xdp-echo",
                "--interface",
                "mlg-vb",
                "--queues",
                "0",
                "--port",
                &port,
                "--cpu",
                &cpu,
            ]),
            Server::MelangeKernel => bail!("not a lab server"),
        };
        let mut server_process = Self::spawn(command)?;
        if let Err(err) = probe(SocketAddrV4::new(SERVER_ADDR, port.parse()?)) {
            let stderr = server_process.stop();
            return Err(err.context(format!("{} did not answer:\n{stderr}", server.label())));
        }
        Ok(server_process)
    }

    /// Starts `command` (an `ip netns exec ...` line) with its stderr captured.
    pub(crate) fn spawn(mut command: Command) -> Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(Self {
            child,
            exited: false,
        })
    }

    /// Stops the server: SIGTERM, then SIGKILL after 3 s. Returns what it wrote to stderr
    /// (the Melange echo's engine summaries among it).
    pub(crate) fn stop(&mut self) -> String {
        if self.exited {
            return String::new();
        }
        let _ = melange_sys::process::terminate(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.exited = true;
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        stderr
    }
}

/// The busy time per datagram from a Melange echo's engine summaries ("busy 1.2s (1494 ns per
/// datagram)"), averaged over engines; `None` if the log has none.
fn busy_ns_per_datagram(log: &str) -> Option<f64> {
    let values: Vec<f64> = log
        .lines()
        .filter_map(|line| {
            let end = line.find(" ns per datagram)")?;
            let start = line[..end].rfind('(')? + 1;
            line[start..end].trim().parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

impl Drop for LabServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `melange loadgen` on AF_XDP in `mlg-a`, from the lab's client address, reporting JSON; the
/// caller adds the load, the target and the timing.
pub(crate) fn lab_loadgen() -> Result<Command> {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", "mlg-a"])
        .arg(std::env::current_exe()?)
        .args([
            "loadgen",
            "--backend",
            "af_xdp",
            "--interface",
            "mlg-va",
            "--bind",
            "10.77.0.1",
            "--json",
        ]);
    Ok(command)
}

/// Waits until the server echoes (10 s at most), probing with a short run of the AF_XDP load
/// generator: it sends on queue 0, the queue the servers under test serve, whereas a kernel
/// socket's datagrams may leave on any queue.
fn probe(target: SocketAddrV4) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        let output = lab_loadgen()?
            .args([
                "--log",
                "error",
                "--inflight",
                "1",
                "--duration",
                "50ms",
                "--warmup",
                "0s",
                "--timeout",
                "20ms",
            ])
            .args(["--payload", "32", "--target", &target.to_string()])
            .output()?;
        if output.status.success() {
            let report: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            if report["received"].as_u64().unwrap_or(0) > 0 {
                return Ok(());
            }
        }
        last = String::from_utf8_lossy(&output.stderr).to_string();
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(anyhow!(
        "no echo from {target} within 10 s; last load generator output: {last}"
    ))
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Requests per second.
    pub requests_per_s: f64,
    /// Median latency, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Server CPU time per request, ns.
    pub server_cpu_ns_per_request: f64,
    /// Timeouts seen by the load generator.
    pub timeouts: u64,
    /// Melange only: the engine's busy time per datagram over its life, ns (time in passes
    /// that found work; a spinning server's CPU time counts its idle polling too).
    pub server_busy_ns_per_request: Option<f64>,
}

fn measure(
    server: Server,
    inflight: usize,
    delay_us: u64,
    args: &LabEchoArgs,
    port: u16,
) -> Result<Run> {
    let mut process = LabServer::start(server, port, args.run.server_cpu, delay_us)?;
    let pid = process.child.id();
    let cpu_before = melange_sys::cpu::process_cpu_time_of(pid)?;
    let output = lab_loadgen()?
        .args(["--log", "warn", "--timeout", "200ms"])
        .args(["--target", &format!("{SERVER_ADDR}:{port}")])
        .args([
            "--payload",
            &args.run.payload.to_string(),
            "--inflight",
            &inflight.to_string(),
        ])
        .args([
            "--duration",
            &format!("{}s", args.run.duration.as_secs_f64()),
        ])
        .args(["--warmup", &format!("{}s", args.run.warmup.as_secs_f64())])
        .args(["--cpus", &args.run.client_cpu.to_string()])
        .output()?;
    let cpu_after = melange_sys::cpu::process_cpu_time_of(pid)?;
    let server_log = process.stop();
    if !output.status.success() {
        bail!(
            "loadgen failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("loadgen JSON")?;
    let field = |path: &[&str]| -> f64 {
        let mut v = &report;
        for p in path {
            v = &v[*p];
        }
        v.as_f64().unwrap_or(0.0)
    };
    let received = field(&["received"]).max(1.0);
    Ok(Run {
        requests_per_s: field(&["requests_per_s"]),
        p50_ns: field(&["latency", "p50_ns"]) as u64,
        p99_ns: field(&["latency", "p99_ns"]) as u64,
        p999_ns: field(&["latency", "p999_ns"]) as u64,
        server_cpu_ns_per_request: (cpu_after - cpu_before) as f64 / received,
        timeouts: field(&["timeouts"]) as u64,
        server_busy_ns_per_request: busy_ns_per_datagram(&server_log),
    })
}

/// A row of the delay curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    /// Simulated work per request, µs.
    pub delay_us: u64,
    /// Melange (af_xdp) requests/s.
    pub melange_rps: f64,
    /// Linux baseline (spin) requests/s.
    pub linux_rps: f64,
    /// Their ratio.
    pub ratio: f64,
}

/// The ratios at one load: each is the median, over repetitions, of the ratio between two
/// servers measured back to back in the same repetition.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Requests in flight.
    pub inflight: usize,
    /// (a) / (b spin), requests/s.
    pub melange_over_linux_spin: f64,
    /// (a) / (c), requests/s.
    pub melange_over_raw_af_xdp: f64,
    /// (a) p50 / (b spin) p50.
    pub p50_melange_over_linux_spin: f64,
    /// (a) p99 / (b block) p99.
    pub p99_melange_over_linux_block: f64,
    /// What one server core needs per request: (b block) CPU time per request over (a) busy
    /// time per request. Meaningful when the servers are saturated (many requests in flight).
    pub core_cost_linux_block_over_melange_busy: f64,
}

/// The results of `bench echo`.
#[derive(Debug, Serialize)]
pub struct LabEchoResults {
    /// The lab's NAPI mode during the run.
    pub napi: melange_lab::NapiMode,
    /// Medians per server and load.
    pub rows: Vec<Row<Run>>,
    /// Ratios per load, each the median over repetitions of the ratio within a repetition.
    pub ratios: Vec<Ratios>,
    /// Requests/s against simulated work, at 32 in flight.
    pub curve: Vec<CurvePoint>,
}

/// Brings the lab up (`melange lab up`) with each host's receive work on its core, or says
/// why it could not (the lab needs root).
pub(crate) fn lab_up(
    napi: melange_lab::NapiMode,
    server_cpu: usize,
    client_cpu: usize,
) -> Result<()> {
    let up = Command::new(std::env::current_exe()?)
        .args(["lab", "up", "--napi", napi.name()])
        .args(["--server-cpu", &server_cpu.to_string()])
        .args(["--client-cpu", &client_cpu.to_string()])
        .output()?;
    if !up.status.success() {
        bail!(
            "`melange lab up` failed (the lab needs root):\n{}",
            String::from_utf8_lossy(&up.stderr)
        );
    }
    Ok(())
}

/// Steers the kernel's transmissions on both veth ends to queue 0 (XPS) while it lives, so
/// that one engine on queue 0 sees every flow of the lab.
pub struct SingleQueue {
    saved: Vec<(&'static str, &'static str, usize, String)>,
}

impl SingleQueue {
    const ENDS: [(&'static str, &'static str); 2] = [("mlg-a", "mlg-va"), ("mlg-b", "mlg-vb")];

    fn xps_path(dev: &str, queue: usize) -> String {
        format!("/sys/class/net/{dev}/queues/tx-{queue}/xps_cpus")
    }

    fn write(ns: &str, dev: &str, queue: usize, mask: &str) -> Result<()> {
        let command = format!("echo {mask} > {}", Self::xps_path(dev, queue));
        let status = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &command])
            .status()?;
        if !status.success() {
            bail!("setting XPS on {dev} queue {queue} in {ns}");
        }
        Ok(())
    }

    /// Steers both ends to queue 0, remembering the maps to restore when dropped.
    pub fn new() -> Result<Self> {
        let mut saved = Vec::new();
        let all_cpus = format!("{:x}", (1u64 << melange_sys::cpu::online_cpus()) - 1);
        for (ns, dev) in Self::ENDS {
            for queue in 0..2 {
                let path = Self::xps_path(dev, queue);
                let out = Command::new("ip")
                    .args(["netns", "exec", ns, "cat", &path])
                    .output()?;
                saved.push((
                    ns,
                    dev,
                    queue,
                    String::from_utf8_lossy(&out.stdout).trim().to_string(),
                ));
            }
            Self::write(ns, dev, 0, &all_cpus)?;
            Self::write(ns, dev, 1, "0")?;
        }
        Ok(Self { saved })
    }
}

impl Drop for SingleQueue {
    fn drop(&mut self) {
        for (ns, dev, queue, value) in &self.saved {
            let value = if value.is_empty() {
                "0"
            } else {
                value.as_str()
            };
            let _ = Self::write(ns, dev, *queue, value);
        }
    }
}

/// Runs the benchmark and prints its tables.
pub fn run(args: &LabEchoArgs) -> Result<LabEchoResults> {
    let _lock = crate::lab_lock()?;
    lab_up(args.napi, args.run.server_cpu, args.run.client_cpu)?;
    let _single_queue = SingleQueue::new()?;
    let mut port = 20_000u16;
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for &inflight in &args.run.inflight {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); servers().len()];
        for rep in 0..args.run.reps {
            // Each repetition measures every server once, back to back, in an order that puts
            // (a) right next to each server it is divided by (see `measurement_order`): this
            // VM's speed drifts on a scale of seconds to minutes (see BENCHMARKS.md), so only
            // servers measured close together see the same machine.
            for i in measurement_order(rep) {
                let server = servers()[i];
                port += 1;
                let run = measure(server, inflight, 0, args, port).with_context(|| {
                    format!(
                        "{} at {inflight} in flight, repetition {rep}",
                        server.label()
                    )
                })?;
                eprintln!(
                    "  {:<40} inflight {:>3} rep {rep}: {:>9.0} req/s p50 {} us",
                    server.label(),
                    inflight,
                    run.requests_per_s,
                    us(run.p50_ns)
                );
                runs[i].push(run);
            }
        }
        // Ratios within each repetition, then their median: robust to the machine changing
        // speed between repetitions.
        let per_rep = |f: &dyn Fn(usize) -> f64| -> f64 {
            median_of(&(0..args.run.reps).collect::<Vec<_>>(), |&rep| f(rep))
        };
        let (ia, ib, ic) = (0, 1, 3);
        ratios.push(Ratios {
            inflight,
            melange_over_linux_spin: per_rep(&|r| {
                runs[ia][r].requests_per_s / runs[ib][r].requests_per_s.max(1.0)
            }),
            melange_over_raw_af_xdp: per_rep(&|r| {
                runs[ia][r].requests_per_s / runs[ic][r].requests_per_s.max(1.0)
            }),
            p50_melange_over_linux_spin: per_rep(&|r| {
                runs[ia][r].p50_ns as f64 / runs[ib][r].p50_ns.max(1) as f64
            }),
            p99_melange_over_linux_block: per_rep(&|r| {
                runs[ia][r].p99_ns as f64 / runs[2][r].p99_ns.max(1) as f64
            }),
            core_cost_linux_block_over_melange_busy: per_rep(&|r| {
                runs[2][r].server_cpu_ns_per_request
                    / runs[ia][r].server_busy_ns_per_request.unwrap_or(f64::NAN)
            }),
        });
        let load_rows: Vec<Row<Run>> = servers()
            .into_iter()
            .zip(runs)
            .map(|(server, runs)| Row {
                server,
                label: server.label(),
                inflight,
                requests_per_s: median_of(&runs, |r| r.requests_per_s),
                p50_ns: median_of(&runs, |r| r.p50_ns as f64) as u64,
                p99_ns: median_of(&runs, |r| r.p99_ns as f64) as u64,
                p999_ns: median_of(&runs, |r| r.p999_ns as f64) as u64,
                server_cpu_ns_per_request: median_of(&runs, |r| r.server_cpu_ns_per_request),
                runs,
            })
            .collect();
        rows.extend(load_rows);
    }
    let mut curve = Vec::new();
    for &delay_us in &args.delay_us {
        let mut ours = Vec::new();
        let mut linux = Vec::new();
        for _ in 0..args.run.reps.min(2) {
            port += 1;
            ours.push(measure(Server::MelangeAfXdp, 32, delay_us, args, port)?);
            port += 1;
            linux.push(measure(Server::LinuxSpin, 32, delay_us, args, port)?);
        }
        let melange_rps = median_of(&ours, |r| r.requests_per_s);
        let linux_rps = median_of(&linux, |r| r.requests_per_s);
        let ratio = median_of(&ours.iter().zip(&linux).collect::<Vec<_>>(), |(o, l)| {
            o.requests_per_s / l.requests_per_s.max(1.0)
        });
        eprintln!("  delay {delay_us:>3} us: melange {melange_rps:>9.0} req/s, linux {linux_rps:>9.0} req/s");
        curve.push(CurvePoint {
            delay_us,
            melange_rps,
            linux_rps,
            ratio,
        });
    }
    print_rows(&rows);
    println!(
        "  lab napi mode: {} (server receive work on cpu {}, client's on cpu {}{})",
        args.napi.name(),
        args.run.server_cpu,
        args.run.client_cpu,
        if args.napi == melange_lab::NapiMode::Inline {
            "; inline: each side's receive work runs on the sender's core"
        } else {
            ""
        }
    );
    println!("  ratios: medians over repetitions of the ratio within each repetition");
    for r in &ratios {
        println!(
            "  at {} in flight: melange/linux-spin requests/s x{:.2}, melange/raw-af_xdp x{:.2}, p50 melange/linux-spin x{:.2}, p99 melange/linux-block x{:.2}",
            r.inflight,
            r.melange_over_linux_spin,
            r.melange_over_raw_af_xdp,
            r.p50_melange_over_linux_spin,
            r.p99_melange_over_linux_block
        );
    }
    for row in rows.iter().filter(|r| r.server == Server::MelangeAfXdp) {
        let busy = median_of(&row.runs, |r| {
            r.server_busy_ns_per_request.unwrap_or(f64::NAN)
        });
        let ratio = ratios
            .iter()
            .find(|r| r.inflight == row.inflight)
            .map_or(f64::NAN, |r| r.core_cost_linux_block_over_melange_busy);
        println!(
            "  at {} in flight: melange's engine was busy {busy:.0} ns per request (of {:.0} ns of CPU); linux-block's CPU per request is x{ratio:.2} that",
            row.inflight, row.server_cpu_ns_per_request
        );
    }
    if !curve.is_empty() {
        println!();
        print_table(
            &["delay us", "melange req/s", "linux req/s", "ratio"],
            &curve
                .iter()
                .map(|p| {
                    vec![
                        p.delay_us.to_string(),
                        format!("{:.0}", p.melange_rps),
                        format!("{:.0}", p.linux_rps),
                        format!("x{:.2}", p.ratio),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    let results = LabEchoResults {
        napi: args.napi,
        rows,
        ratios,
        curve,
    };
    if let Some(path) = &args.run.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::{busy_ns_per_datagram, measurement_order, servers, Server};

    #[test]
    fn melange_is_measured_next_to_both_servers_it_is_divided_by() {
        for rep in 0..6 {
            let order = measurement_order(rep);
            let mut seen = order;
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2, 3], "every server once in repetition {rep}");
            let at = |server: Server| {
                order
                    .iter()
                    .position(|&i| servers()[i] == server)
                    .expect("measured")
            };
            let melange = at(Server::MelangeAfXdp);
            for partner in [Server::LinuxSpin, Server::RawXdp] {
                assert_eq!(
                    melange.abs_diff(at(partner)),
                    1,
                    "{partner:?} next to (a) in repetition {rep}: {order:?}"
                );
            }
        }
        assert_ne!(measurement_order(0)[0], measurement_order(1)[0]);
    }

    #[test]
    fn busy_time_is_read_from_engine_summaries() {
        let log = "\
INFO melange::echo: echo on 10.77.0.2:7000 (af_xdp backend on mlg-vb, queues [0])
INFO melange::echo: engine 0: echoed 10 drops [] pool 4096/4096 cpu 3.551s busy 2.477s (1494 ns per datagram)
INFO melange::echo: engine 1: echoed 10 drops [] pool 4096/4096 cpu 3.551s busy 2.477s (1506 ns per datagram)
";
        assert_eq!(busy_ns_per_datagram(log), Some(1500.0));
        assert_eq!(
            busy_ns_per_datagram("baseline udp-echo on 10.77.0.2:7000"),
            None
        );
        assert_eq!(busy_ns_per_datagram("(x ns per datagram)"), None);
    }
}
