//! `melange echo`: a UDP or TCP echo server on Melange engines.

use anyhow::{anyhow, Result};
use melange_apps::{EchoApp, EchoConfig, EchoProtocol, TcpEchoApp, TcpEchoConfig};
use melange_control::engines as xdp;
use melange_control::options::{
    check_batch, check_cpus, check_engines, check_range, cpu_for, parse_duration, Backend,
};
use melange_control::setups::{server_setup, ServerPlan};
use melange_core::{App, IoContext, PoolConfig};
use melange_engine::{EngineConfig, EngineDrop};
use melange_engine::{Transport, TransportCounters};
use melange_net::DropReason;
use melange_runtime::{
    spawn_kernel_engine, spin_ns, EngineOutcome, IdlePolicy, KernelOptions, KernelTransport,
    ShellConfig, ShellError, StopSignal,
};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread::JoinHandle;
use std::time::Duration;

/// Arguments of `melange echo`.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// NIC backend.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    pub backend: Backend,
    /// Address to serve on. kernel: default 127.0.0.1 (0.0.0.0 for every address). af_xdp:
    /// default and only choice is the interface's own address (the XDP filter takes the port
    /// for every address on the interface).
    #[arg(long)]
    pub addr: Option<Ipv4Addr>,
    /// The port (UDP, or TCP with `--protocol tcp`).
    #[arg(long, default_value_t = 7777)]
    pub port: u16,
    /// af_xdp: the interface, e.g. mlg-vb.
    #[arg(long)]
    pub interface: Option<String>,
    /// af_xdp: queues to serve, one engine each (default: all of the interface's queues).
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<u32>,
    /// af_xdp: how to attach the XDP program: native (in the driver) or generic (after the
    /// kernel built an sk_buff; works everywhere, slower).
    #[arg(long, value_enum, default_value_t = melange_control::options::XdpAttach::Native)]
    pub xdp_mode: melange_control::options::XdpAttach,
    /// kernel: engines (one thread each; the kernel spreads flows over them with SO_REUSEPORT).
    #[arg(long, default_value_t = 1)]
    pub engines: usize,
    /// Cores to pin engines to, e.g. `0,1` (engine i gets the i-th, round robin).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Simulated application work per request, in microseconds (a spin).
    #[arg(long, default_value_t = 0)]
    pub delay_us: u64,
    /// What to answer: `plain` echoes every UDP datagram; `sockperf` serves sockperf clients
    /// (ping-pong and throughput modes) as `sockperf server` does; `tcp` echoes every byte of
    /// every TCP connection (kernel sockets, or Melange's own TCP on af_xdp).
    #[arg(long, value_enum, default_value_t = Protocol::Plain)]
    pub protocol: Protocol,
    /// Idle policy: spin, sleep, or sleep:N (N empty passes before sleeping).
    #[arg(long, default_value = "spin")]
    pub idle: IdlePolicy,
    /// Most frames per engine pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// kernel: frames in each engine's pool (af_xdp sizes its UMEM to the locked-memory limit).
    #[arg(long, default_value_t = 4096)]
    pub pool_frames: usize,
    /// Stop after this long (default: run until SIGINT or SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// The echo protocol, on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Echo every datagram unchanged.
    Plain,
    /// sockperf's server protocol.
    Sockperf,
    /// TCP: every byte comes back on its connection.
    Tcp,
}

/// Most frames in one kernel-backend engine's pool: 256 Ki frames of 2 KiB is 512 MiB per
/// engine, already far more than any socket buffer can hold in flight.
pub const POOL_FRAMES_MAX: usize = 1 << 18;

/// Longest simulated work per request: one second (beyond that, use a real app).
pub const DELAY_US_MAX: u64 = 1_000_000;

/// Checks every flag before anything is attached or started.
pub fn validate(args: &EchoArgs) -> Result<()> {
    check_engines(args.engines)?;
    check_cpus(&args.cpus)?;
    check_batch(args.batch)?;
    check_range(
        "pool-frames",
        args.pool_frames,
        args.batch.max(64)..=POOL_FRAMES_MAX,
        "frames in each engine's pool (at least one batch, at least 64)",
    )?;
    check_range(
        "delay-us",
        args.delay_us,
        0..=DELAY_US_MAX,
        "simulated work per request in µs",
    )?;
    if args.port == 0 {
        return Err(anyhow!(
            "--port 0: a server needs a fixed port its clients can find; give e.g. 7777"
        ));
    }
    if melange_apps::echo::REFLECTOR_PORTS.contains(&args.port) {
        return Err(anyhow!(
            "--port {}: the echo server refuses requests from well-known reflector ports, its own among them, so clients of another echo service could never reach it here; pick another port, e.g. 7777",
            args.port
        ));
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err(anyhow!(
            "--duration 0: leave it out to run until stopped, or give e.g. 10s"
        ));
    }
    if args.backend == Backend::AfXdp {
        if args.interface.is_none() {
            return Err(anyhow!(
                "--backend af_xdp needs --interface (the lab's server side is mlg-vb in namespace mlg-b)"
            ));
        }
        if args.engines != 1 {
            return Err(anyhow!(
                "--engines is for the kernel backend; on af_xdp there is one engine per queue (--queues)"
            ));
        }
    }
    Ok(())
}

/// Runs the echo server until stopped, then prints its counters.
pub fn run(args: EchoArgs) -> Result<()> {
    validate(&args)?;
    let stop = crate::stop_signal(args.duration)?;
    let config = EchoConfig {
        ports: vec![args.port],
        work_ns: args.delay_us * 1_000,
        protocol: match args.protocol {
            Protocol::Sockperf => EchoProtocol::Sockperf,
            Protocol::Plain | Protocol::Tcp => EchoProtocol::Plain,
        },
    };
    match args.backend {
        Backend::Kernel => run_kernel(&args, config, &stop),
        Backend::AfXdp => run_af_xdp(&args, config, &stop),
    }
}

fn run_kernel(args: &EchoArgs, config: EchoConfig, stop: &StopSignal) -> Result<()> {
    let ip = args.addr.unwrap_or(Ipv4Addr::LOCALHOST);
    let addr = SocketAddrV4::new(ip, args.port);
    let mut handles = Vec::new();
    for id in 0..args.engines {
        let args = args.clone();
        let shell = ShellConfig {
            name: format!("echo-{id}"),
            cpu: cpu_for(&args.cpus, id),
            idle: args.idle,
        };
        let config = config.clone();
        let protocol = args.protocol;
        let options = KernelOptions {
            batch_max: args.batch,
            ..KernelOptions::new(ip)
        };
        let pool = PoolConfig {
            frame_count: args.pool_frames,
            ..PoolConfig::default()
        };
        let engine_config = EngineConfig {
            batch_max: args.batch,
            ..EngineConfig::new(id)
        };
        let app = match protocol {
            Protocol::Tcp => EchoServer::Tcp(TcpEchoApp::new(
                TcpEchoConfig {
                    ports: config.ports,
                    work_ns: config.work_ns,
                },
                spin_ns,
            )),
            Protocol::Plain | Protocol::Sockperf => EchoServer::Udp(EchoApp::new(config, spin_ns)),
        };
        let handle = spawn_kernel_engine(shell, stop.clone(), options, engine_config, pool, app)?;
        handles.push(handle);
    }
    tracing::info!(
        "echo on {addr} ({}, kernel backend, {} engine(s), idle {:?}, batch {})",
        if args.protocol == Protocol::Tcp {
            "tcp"
        } else {
            "udp"
        },
        args.engines,
        args.idle,
        args.batch
    );
    report(handles, stop, |transport: &KernelTransport| {
        let k = transport.kernel_counters();
        format!(
            "recv calls {} send calls {} truncated {}",
            k.recv_calls, k.send_calls, k.rx_truncated
        )
    })
}

fn run_af_xdp(args: &EchoArgs, config: EchoConfig, stop: &StopSignal) -> Result<()> {
    let interface = args
        .interface
        .clone()
        .ok_or_else(|| anyhow!("--backend af_xdp needs --interface"))?;
    let setup = server_setup(&ServerPlan {
        interface: interface.clone(),
        addr: args.addr,
        flag: "--addr",
        port: args.port,
        tcp: args.protocol == Protocol::Tcp,
        queues: args.queues.clone(),
        batch: args.batch,
        cpus: args.cpus.clone(),
        idle: args.idle,
        mode: args.xdp_mode.into(),
    })?;
    let addr = setup.addr;
    let port = args.port;
    let protocol = args.protocol;
    let run = xdp::start(&setup, stop, |_, _| match protocol {
        Protocol::Tcp => EchoServer::Tcp(TcpEchoApp::new(
            TcpEchoConfig {
                ports: config.ports.clone(),
                work_ns: config.work_ns,
            },
            spin_ns,
        )),
        Protocol::Plain | Protocol::Sockperf => {
            EchoServer::Udp(EchoApp::new(config.clone(), spin_ns))
        }
    })?;
    tracing::info!(
        "echo on {addr}:{port} ({}, af_xdp backend on {interface}, queues {:?}, idle {:?}, batch {})",
        if protocol == Protocol::Tcp { "tcp" } else { "udp" },
        run.queues,
        args.idle,
        args.batch
    );
    let result = report(run.handles, stop, |transport: &xdp::XdpTransport| {
        let nic = transport.nic();
        let c = nic.counters();
        let kernel = nic
            .kernel_statistics()
            .map(|s| format!("{s:?}"))
            .unwrap_or_default();
        let tcp = transport
            .tcp_counters()
            .map(|t| format!(" tcp {t:?}"))
            .unwrap_or_default();
        // IPv4 fragments in (the XDP program's fragment rule sends them here) and out.
        let net = transport.interface().counters();
        format!(
            "filled {} received {} transmitted {} completed {} kicks {} kick retries {} tx ring full {} bad descriptors {} frag received {} reassembled {} fragmented {} frag sent {} kernel {kernel}{tcp}",
            c.filled, c.received, c.transmitted, c.completed, c.kicks, c.kick_retries, c.tx_ring_full_drops, c.bad_descriptors,
            net.frag_received, net.reassembled, net.fragmented, net.frag_sent
        )
    });
    if let Ok(stats) = run.filters.stats() {
        tracing::info!("xdp filter verdicts: {stats:?}");
    }
    drop(run.fragments);
    drop(run.filter);
    drop(run.filters);
    result
}

/// Joins the engines and logs what each did.
fn report<T: Transport>(
    handles: Vec<JoinHandle<Result<EngineOutcome<EchoServer, T>, ShellError>>>,
    stop: &StopSignal,
    transport_summary: impl Fn(&T) -> String,
) -> Result<()> {
    let mut failure = None;
    for (id, handle) in handles.into_iter().enumerate() {
        match handle.join().map_err(|_| anyhow!("engine {id} panicked"))? {
            Ok(outcome) => {
                if let Some(error) = outcome.app.start_error() {
                    stop.stop();
                    let message = format!(
                        "engine {id}: {error}; stop the other server on that port or pick another --port"
                    );
                    tracing::error!("{message}");
                    failure.get_or_insert(message);
                    continue;
                }
                let c = &outcome.counters;
                let t: &TransportCounters = &outcome.transport_counters;
                let mut drops: Vec<String> = EngineDrop::ALL
                    .iter()
                    .filter(|&&d| c.drops(d) > 0)
                    .map(|&d| format!("{}={}", d.name(), c.drops(d)))
                    .collect();
                if let Some(net) = &outcome.net {
                    drops.extend(
                        DropReason::ALL
                            .iter()
                            .filter(|&&r| net.drops(r) > 0)
                            .map(|&r| format!("{}={}", r.name(), net.drops(r))),
                    );
                }
                tracing::info!(
                    "engine {id}: {} rx {} tx {} tx no room {} tx dropped {} device errors {} batches {} mean batch {:.1} idle passes {} {} drops [{}] pool {}/{} cpu {:.3}s busy {:.3}s ({:.0} ns per datagram)",
                    outcome.app.summary(),
                    t.rx_packets,
                    t.tx_packets,
                    t.tx_no_room,
                    t.tx_dropped,
                    t.errors.total(),
                    c.rx_batches,
                    t.rx_packets as f64 / c.rx_batches.max(1) as f64,
                    c.idle_polls,
                    transport_summary(&outcome.transport),
                    drops.join(" "),
                    outcome.pool_available,
                    outcome.pool_capacity,
                    outcome.cpu_time_ns as f64 / 1e9,
                    outcome.busy_ns as f64 / 1e9,
                    outcome.busy_ns as f64 / t.rx_packets.max(1) as f64,
                );
            }
            Err(err) => {
                stop.stop();
                tracing::error!("engine {id}: {err}");
                failure.get_or_insert(err.to_string());
            }
        }
    }
    match failure {
        Some(err) => Err(anyhow!(err)),
        None => Ok(()),
    }
}

/// The app `melange echo` runs on each engine: the UDP echo (plain or sockperf) or the TCP
/// echo.
pub enum EchoServer {
    /// UDP datagrams.
    Udp(EchoApp),
    /// TCP byte streams.
    Tcp(TcpEchoApp),
}

impl EchoServer {
    /// Why the app could not open its ports at start, if it could not.
    fn start_error(&self) -> Option<melange_core::CommandError> {
        match self {
            EchoServer::Udp(app) => app.bind_error(),
            EchoServer::Tcp(app) => app.listen_error(),
        }
    }

    /// The app's counters, for the exit report.
    fn summary(&self) -> String {
        match self {
            EchoServer::Udp(app) => {
                let c = app.counters();
                format!(
                    "echoed {} send errors {} unanswered {} reflectors refused {}",
                    c.echoed, c.send_errors, c.unanswered, c.reflector_refused
                )
            }
            EchoServer::Tcp(app) => {
                let c = app.counters();
                format!(
                    "accepted {} closed {} bytes echoed {} partial sends {} send errors {}",
                    c.accepted, c.closed, c.bytes_echoed, c.partial_sends, c.send_errors
                )
            }
        }
    }
}

impl App for EchoServer {
    fn start(&mut self, io: &mut IoContext<'_>) {
        match self {
            EchoServer::Udp(app) => app.start(io),
            EchoServer::Tcp(app) => app.start(io),
        }
    }
    fn is_done(&self) -> bool {
        match self {
            EchoServer::Udp(app) => app.is_done(),
            EchoServer::Tcp(app) => app.is_done(),
        }
    }
    fn run_io(&mut self, io: &mut IoContext<'_>) {
        match self {
            EchoServer::Udp(app) => app.run_io(io),
            EchoServer::Tcp(app) => app.run_io(io),
        }
    }
}
