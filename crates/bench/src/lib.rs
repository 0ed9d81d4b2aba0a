//! `melange-bench`: benchmarks that run Melange and its baseline in one run and report ratios,
//! and the load generator they drive ([`loadgen`]).
//!
//! | module        | role |
//! |---------------|------|
//! | [`loadgen`]   | `melange loadgen`: runs [`melange_apps::LoadgenApp`] engines and merges their reports |
//! | [`lab_echo`]  | `bench echo`: echo servers over AF_XDP and the kernel, in the namespace lab |
//! | [`stack`]     | `bench stack`: the engine's own cost per request, no kernel |
//! | [`table`]     | tables and medians for people |
//!
//! This machine is noisy (a 2-vCPU VM), so no number here is compared with a constant from
//! another run: each benchmark measures Melange and the baseline back to back, repeats, and
//! reports medians and the ratio between them.

use crate::loadgen::LoadgenArgs;
use crate::table::{median, print_table, us};
use anyhow::{anyhow, bail, Context, Result};
use melange_control::options::{parse_duration, Backend};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod kv;
pub mod kv_memory;
pub mod lab_echo;
pub mod lab_kv;
pub mod lab_tcp;
pub mod loadgen;
pub mod stack;
pub mod table;

pub use lab_echo::LabEchoArgs;

/// The benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Echo over AF_XDP against the Linux baseline and a raw AF_XDP echo, in the namespace lab.
    Echo(lab_echo::LabEchoArgs),
    /// Melange's TCP against the Linux epoll TCP echo (and Melange's UDP), in the lab.
    Tcp(lab_tcp::LabTcpArgs),
    /// Echo on the kernel backend against a plain recvmmsg/sendmmsg server, on 127.0.0.1.
    KernelEcho(KernelEchoArgs),
    /// The stack's own cost: prebuilt frames through one engine, no kernel.
    Stack(stack::StackArgs),
    /// Resident memory of the echo server over a long run at full load.
    Memory(MemoryArgs),
    /// `melange kv` against redis-server with redis-benchmark, kernel backend on 127.0.0.1.
    Kv(kv::KvBenchArgs),
    /// `melange kv` on AF_XDP against redis-server and memcached in the lab, with Melange's
    /// RESP and memcached load generator and with redis-benchmark.
    KvLab(lab_kv::LabKvArgs),
    /// Bytes per key for 1M small keys: `melange kv` against redis-server and memcached.
    KvMemory(kv_memory::KvMemoryArgs),
}

/// Runs a benchmark.
pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Echo(args) => lab_echo::run(&args).map(|_| ()),
        BenchCommand::Tcp(args) => lab_tcp::run(&args).map(|_| ()),
        BenchCommand::KernelEcho(args) => kernel_echo(&args).map(|_| ()),
        BenchCommand::Stack(args) => stack::run(&args),
        BenchCommand::Memory(args) => memory(&args),
        BenchCommand::Kv(args) => kv::run(&args).map(|_| ()),
        BenchCommand::KvLab(args) => lab_kv::run(&args).map(|_| ()),
        BenchCommand::KvMemory(args) => kv_memory::run(&args).map(|_| ()),
    }
}

/// The lock the lab tests take (`/tmp/melange-lab-tests.lock`): a benchmark and a test
/// never use the one lab at the same time. Released when dropped. A process whose parent
/// already holds it (a lab test running `melange demo`) says so with
/// `MELANGE_LAB_LOCK_HELD=1` and gets `None`: taking it again would wait for ever.
pub fn lab_lock() -> Result<Option<std::fs::File>> {
    if std::env::var_os(LAB_LOCK_HELD_ENV).is_some() {
        return Ok(None);
    }
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/melange-lab-tests.lock")
        .context("opening /tmp/melange-lab-tests.lock")?;
    if file.try_lock().is_err() {
        // Say why nothing happens: a lab test or another benchmark may hold it for minutes.
        eprintln!(
            "waiting for the lab (/tmp/melange-lab-tests.lock is held by a lab test or benchmark)"
        );
        file.lock().context("locking the lab")?;
    }
    Ok(Some(file))
}

/// Set by a process that holds the lab lock for the processes it starts.
pub const LAB_LOCK_HELD_ENV: &str = "MELANGE_LAB_LOCK_HELD";

/// The arguments every echo benchmark takes: repetitions, timing, load and placement.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoRunArgs {
    /// Repetitions of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Measured time of each repetition.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before each repetition.
    #[arg(long, default_value = "0.5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Requests in flight to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub inflight: Vec<usize>,
    /// Request payload bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Core of the servers.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// Core of the load generator.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Arguments of `melange bench kernel-echo`.
#[derive(clap::Args, Debug, Clone)]
pub struct KernelEchoArgs {
    /// Repetitions, timing, load and placement.
    #[command(flatten)]
    pub run: EchoRunArgs,
    /// First UDP port to use.
    #[arg(long, default_value_t = 17777)]
    pub port: u16,
}

/// A server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Server {
    /// `melange echo --backend kernel`.
    MelangeKernel,
    /// `melange-baseline udp-echo --idle spin`.
    LinuxSpin,
    /// `melange-baseline udp-echo --idle block`.
    LinuxBlock,
    /// `melange echo --backend af_xdp`.
    MelangeAfXdp,
    /// `melange-baseline xdp-echo`: raw AF_XDP, no stack.
    RawXdp,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::MelangeKernel => "melange echo (kernel backend, spin)",
            Server::LinuxSpin => "linux recvmmsg/sendmmsg x32 (spin)",
            Server::LinuxBlock => "linux recvmmsg/sendmmsg x32 (block)",
            Server::MelangeAfXdp => "(a) melange echo (af_xdp)",
            Server::RawXdp => "(c) raw af_xdp echo, no stack",
        }
    }
}

/// A server process started for one measurement; terminated on drop.
pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    fn start(server: Server, port: u16, cpu: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the melange binary")?;
        let mut command = match server {
            Server::MelangeKernel => {
                let mut c = Command::new(&exe);
                c.args([
                    "echo",
                    "--backend",
                    "kernel",
                    "--idle",
                    "spin",
                    "--log",
                    "warn",
                ])
                .args(["--port", &port.to_string(), "--cpus", &cpu.to_string()]);
                c
            }
            Server::MelangeAfXdp | Server::RawXdp => {
                bail!("{} runs in the lab: melange bench echo", server.label())
            }
            Server::LinuxSpin | Server::LinuxBlock => {
                let mut c = Command::new(&exe);
                let idle = if server == Server::LinuxSpin {
                    "spin"
                } else {
                    "block"
                };
                c.args(["baseline", "udp-echo", "--batch", "32", "--idle", idle])
                    .args(["--port", &port.to_string(), "--cpu", &cpu.to_string()]);
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let process = Self { child };
        wait_until_echoing(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).with_context(|| {
            format!("{} did not start answering on port {port}", server.label())
        })?;
        Ok(process)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = melange_sys::process::terminate(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends probes until the server echoes one (5 s at most).
pub fn wait_until_echoing(target: SocketAddrV4) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        socket.send_to(b"melange-probe", target)?;
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if &buf[..n] == b"melange-probe" {
                return Ok(());
            }
        }
    }
    Err(anyhow!("no echo from {target} within 5 s"))
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Server.
    pub server: Server,
    /// Requests in flight.
    pub inflight: usize,
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
    /// Server resident memory at the end, bytes.
    pub server_rss_bytes: u64,
    /// Timeouts seen by the load generator.
    pub timeouts: u64,
}

/// The medians of a row.
#[derive(Debug, Clone, Serialize)]
pub struct Row<M> {
    /// Server.
    pub server: Server,
    /// Label.
    pub label: &'static str,
    /// Requests in flight.
    pub inflight: usize,
    /// Median requests/s.
    pub requests_per_s: f64,
    /// Median p50, ns.
    pub p50_ns: u64,
    /// Median p99, ns.
    pub p99_ns: u64,
    /// Median p99.9, ns.
    pub p999_ns: u64,
    /// Median server CPU ns per request.
    pub server_cpu_ns_per_request: f64,
    /// Every repetition.
    pub runs: Vec<M>,
}

/// Prints rows of medians as a table.
pub fn print_rows<M>(rows: &[Row<M>]) {
    print_table(
        &[
            "server",
            "inflight",
            "req/s",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "cpu ns/req",
        ],
        &rows
            .iter()
            .map(|r| {
                vec![
                    r.label.to_string(),
                    r.inflight.to_string(),
                    format!("{:.0}", r.requests_per_s),
                    us(r.p50_ns),
                    us(r.p99_ns),
                    us(r.p999_ns),
                    format!("{:.0}", r.server_cpu_ns_per_request),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

/// The median of one quantity over repetitions.
pub fn median_of<M>(runs: &[M], f: impl Fn(&M) -> f64) -> f64 {
    median(&mut runs.iter().map(f).collect::<Vec<_>>())
}

fn measure(
    server: Server,
    inflight: usize,
    args: &KernelEchoArgs,
    port: u16,
) -> Result<Measurement> {
    let process = ServerProcess::start(server, port, args.run.server_cpu)?;
    let cpu_before = melange_sys::cpu::process_cpu_time_of(process.pid())?;
    let loadgen_args = LoadgenArgs {
        protocol: crate::loadgen::LoadProtocol::Udp,
        kv: Default::default(),
        mode: crate::loadgen::LoadMode::Rr,
        connections: 1,
        backend: Backend::Kernel,
        target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        bind: Ipv4Addr::LOCALHOST,
        interface: None,
        local_port: 40000,
        xdp_mode: melange_control::options::XdpAttach::Native,
        payload: args.run.payload,
        inflight,
        rate: None,
        duration: args.run.duration,
        warmup: args.run.warmup,
        timeout: Duration::from_millis(200),
        engines: 1,
        cpus: Some(vec![args.run.client_cpu]),
        idle: melange_runtime::IdlePolicy::Spin,
        time_wait: None,
        json: false,
    };
    let report = loadgen::run(&loadgen_args)?;
    let cpu_after = melange_sys::cpu::process_cpu_time_of(process.pid())?;
    let rss = melange_sys::cpu::rss_bytes_of(process.pid()).unwrap_or(0);
    drop(process);
    Ok(Measurement {
        server,
        inflight,
        requests_per_s: report.requests_per_s,
        p50_ns: report.latency.p50_ns,
        p99_ns: report.latency.p99_ns,
        p999_ns: report.latency.p999_ns,
        server_cpu_ns_per_request: (cpu_after - cpu_before) as f64 / report.received.max(1) as f64,
        server_rss_bytes: rss,
        timeouts: report.timeouts,
    })
}

fn summarize(server: Server, inflight: usize, runs: Vec<Measurement>) -> Row<Measurement> {
    Row {
        server,
        label: server.label(),
        inflight,
        requests_per_s: median_of(&runs, |m| m.requests_per_s),
        p50_ns: median_of(&runs, |m| m.p50_ns as f64) as u64,
        p99_ns: median_of(&runs, |m| m.p99_ns as f64) as u64,
        p999_ns: median_of(&runs, |m| m.p999_ns as f64) as u64,
        server_cpu_ns_per_request: median_of(&runs, |m| m.server_cpu_ns_per_request),
        runs,
    }
}

/// The results of `bench kernel-echo`.
#[derive(Debug, Serialize)]
pub struct KernelEchoResults {
    /// Medians per server and load.
    pub rows: Vec<Row<Measurement>>,
    /// `melange / linux spin` ratios per load: (inflight, requests/s ratio, p50 ratio).
    pub ratios: Vec<(usize, f64, f64)>,
}

/// Runs `bench kernel-echo` and prints its table.
pub fn kernel_echo(args: &KernelEchoArgs) -> Result<KernelEchoResults> {
    let servers = [Server::MelangeKernel, Server::LinuxSpin, Server::LinuxBlock];
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    let mut port = args.port;
    for &inflight in &args.run.inflight {
        let mut runs: Vec<Vec<Measurement>> = vec![Vec::new(); servers.len()];
        for rep in 0..args.run.reps {
            // Interleave servers within a repetition so drift in the machine hits all alike.
            for (i, &server) in servers.iter().enumerate() {
                port = port.wrapping_add(1).max(1024);
                let m = measure(server, inflight, args, port).with_context(|| {
                    format!(
                        "{} at {inflight} in flight, repetition {rep}",
                        server.label()
                    )
                })?;
                eprintln!(
                    "  {:<40} inflight {:>3} rep {rep}: {:>9.0} req/s p50 {} us",
                    server.label(),
                    inflight,
                    m.requests_per_s,
                    us(m.p50_ns)
                );
                runs[i].push(m);
            }
        }
        let load_rows: Vec<Row<Measurement>> = servers
            .iter()
            .zip(runs)
            .map(|(&server, runs)| summarize(server, inflight, runs))
            .collect();
        let ours = &load_rows[0];
        let base = &load_rows[1];
        ratios.push((
            inflight,
            ours.requests_per_s / base.requests_per_s.max(1.0),
            ours.p50_ns as f64 / base.p50_ns.max(1) as f64,
        ));
        rows.extend(load_rows);
    }
    print_rows(&rows);
    for &(inflight, rps, p50) in &ratios {
        println!(
            "  melange/linux-spin at {inflight} in flight: requests/s x{rps:.2}, p50 x{p50:.2}"
        );
    }
    let results = KernelEchoResults { rows, ratios };
    if let Some(path) = &args.run.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(results)
}

/// Arguments of `melange bench memory`.
#[derive(clap::Args, Debug, Clone)]
pub struct MemoryArgs {
    /// How long to run at full load.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// UDP port.
    #[arg(long, default_value_t = 17700)]
    pub port: u16,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    pub inflight: usize,
}

/// Runs echo at full load and samples its resident memory every second.
fn memory(args: &MemoryArgs) -> Result<()> {
    let process = ServerProcess::start(Server::MelangeKernel, args.port, 0)?;
    let pid = process.pid();
    let loadgen_args = loadgen_args_for(args);
    let duration = args.duration;
    let sampler = std::thread::spawn(move || {
        let mut samples = Vec::new();
        let start = Instant::now();
        while start.elapsed() < duration {
            samples.push(melange_sys::cpu::rss_bytes_of(pid).unwrap_or(0));
            std::thread::sleep(Duration::from_secs(1));
        }
        samples
    });
    let report = loadgen::run(&loadgen_args)?;
    let samples = sampler.join().map_err(|_| anyhow!("sampler panicked"))?;
    drop(process);
    let first = samples.get(1).or(samples.first()).copied().unwrap_or(0);
    let last = samples.last().copied().unwrap_or(0);
    let max = samples.iter().copied().max().unwrap_or(0);
    println!(
        "echo RSS over {:.0}s at {:.0} req/s: after 1s {} KiB, end {} KiB, max {} KiB, growth {} KiB",
        args.duration.as_secs_f64(),
        report.requests_per_s,
        first / 1024,
        last / 1024,
        max / 1024,
        (last as i64 - first as i64) / 1024
    );
    Ok(())
}

fn loadgen_args_for(args: &MemoryArgs) -> LoadgenArgs {
    LoadgenArgs {
        protocol: crate::loadgen::LoadProtocol::Udp,
        kv: Default::default(),
        mode: crate::loadgen::LoadMode::Rr,
        connections: 1,
        backend: Backend::Kernel,
        target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, args.port),
        bind: Ipv4Addr::LOCALHOST,
        interface: None,
        local_port: 40000,
        xdp_mode: melange_control::options::XdpAttach::Native,
        payload: 64,
        inflight: args.inflight,
        rate: None,
        duration: args.duration,
        warmup: Duration::ZERO,
        timeout: Duration::from_millis(200),
        engines: 1,
        cpus: Some(vec![1]),
        idle: melange_runtime::IdlePolicy::Spin,
        time_wait: None,
        json: false,
    }
}
