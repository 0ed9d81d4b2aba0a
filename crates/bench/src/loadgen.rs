//! `melange loadgen`: a UDP or TCP load generator on Melange engines.
//!
//! UDP (the default): requests of `--payload` bytes, `--inflight` in flight in all, closed or
//! open loop ([`LoadgenApp`]). TCP (`--protocol tcp`): `--connections` connections, each with
//! `--inflight` requests of `--payload` bytes outstanding, closed loop ([`TcpLoadgenApp`]);
//! on kernel sockets or, on af_xdp, over Melange's own TCP (one engine).

use crate::table::us;
use anyhow::{anyhow, Context, Result};
use melange_apps::loadgen::{HEADER_LEN, PAYLOAD_MAX, WINDOW_MAX};
use melange_apps::tcp_loadgen::{
    TCP_LOADGEN_CONNECTIONS_MAX, TCP_LOADGEN_INFLIGHT_MAX, TCP_LOADGEN_MESSAGE_MAX,
};
use melange_apps::{LoadgenApp, LoadgenConfig, LoadgenReport, TcpLoadgenApp, TcpLoadgenConfig};
use melange_control::options::{
    check_batch, check_cpus, check_engines, check_range, cpu_for, parse_duration, Backend,
};
use melange_core::{PacketPool, PoolConfig};
use melange_engine::Transport;
use melange_engine::{Engine, EngineConfig};
use melange_runtime::{
    spawn_engine, IdlePolicy, KernelOptions, KernelTransport, ShellConfig, ShellError, StopSignal,
};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Arguments of `melange loadgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// NIC backend.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    pub backend: Backend,
    /// Server address, IP:PORT.
    #[arg(long)]
    pub target: SocketAddrV4,
    /// Local address to send from. kernel: any (default 0.0.0.0). af_xdp: the interface's own
    /// address, the default; another is refused.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: Ipv4Addr,
    /// af_xdp: the interface, e.g. mlg-va.
    #[arg(long)]
    pub interface: Option<String>,
    /// af_xdp: first local UDP port; engine i sends from this plus i, on queue i.
    #[arg(long, default_value_t = 40000)]
    pub local_port: u16,
    /// af_xdp: how to attach the XDP program: native (in the driver) or generic (after the
    /// kernel built an sk_buff; works everywhere, slower).
    #[arg(long, value_enum, default_value_t = melange_control::options::XdpAttach::Native)]
    pub xdp_mode: melange_control::options::XdpAttach,
    /// The protocol: `udp` datagrams, or `tcp` connections carrying fixed-size requests.
    #[arg(long, value_enum, default_value_t = LoadProtocol::Udp)]
    pub protocol: LoadProtocol,
    /// TCP: connections, in all (spread over the engines).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Request payload bytes (UDP: at least 24, for the request header; TCP: at least 1).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// UDP: requests in flight, in all (closed loop), or the most allowed (open loop). TCP:
    /// requests in flight on each connection.
    #[arg(long, default_value_t = 32)]
    pub inflight: usize,
    /// Open loop: requests per second, in all. Without it the loop is closed.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured time.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured time before.
    #[arg(long, default_value = "0.5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// A request unanswered this long is a timeout.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Engines (threads), each with its own socket and share of the load.
    #[arg(long, default_value_t = 1)]
    pub engines: usize,
    /// Cores to pin engines to, e.g. `1`.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Idle policy of the load generator's engines.
    #[arg(long, default_value = "spin")]
    pub idle: IdlePolicy,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `melange loadgen` sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadProtocol {
    /// UDP datagrams.
    Udp,
    /// TCP connections.
    Tcp,
}

/// The JSON form of a run.
#[derive(Debug, Serialize)]
pub struct LoadgenOutput<'a> {
    /// Target.
    pub target: String,
    /// Payload bytes.
    pub payload: usize,
    /// In flight.
    pub inflight: usize,
    /// Open-loop rate, if any.
    pub rate: Option<f64>,
    /// The measurements.
    #[serde(flatten)]
    pub report: &'a LoadgenReport,
}

/// Entry point of the subcommand.
pub fn main(args: LoadgenArgs) -> Result<()> {
    let report = run(&args)?;
    if args.json {
        let output = LoadgenOutput {
            target: args.target.to_string(),
            payload: args.payload,
            inflight: args.inflight,
            rate: args.rate,
            report: &report,
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print_report(&args, &report);
    }
    if report.received == 0 {
        return Err(anyhow!(
            "no request to {} was answered ({} sent, {} send failures, {} timeouts): is a server listening there, and reachable from here?",
            args.target,
            report.sent,
            report.send_failures,
            report.timeouts
        ));
    }
    Ok(())
}

/// Prints a report for people.
pub fn print_report(args: &LoadgenArgs, r: &LoadgenReport) {
    println!(
        "loadgen -> {} payload {} B, {} in flight{}, {:.1}s measured",
        args.target,
        args.payload,
        args.inflight,
        args.rate
            .map(|r| format!(", open loop {r:.0}/s"))
            .unwrap_or_default(),
        r.window_ns as f64 / 1e9
    );
    println!("  requests/s   {:.0}", r.requests_per_s);
    println!(
        "  latency us   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        us(r.latency.p50_ns),
        us(r.latency.p90_ns),
        us(r.latency.p99_ns),
        us(r.latency.p999_ns),
        us(r.latency.max_ns)
    );
    println!(
        "  sent {}  received {}  timeouts {}  corrupt {}  unexpected {}  send failures {}",
        r.sent, r.received, r.timeouts, r.corrupt, r.unexpected, r.send_failures
    );
}

/// Engine `id`'s share of the load.
fn engine_config(args: &LoadgenArgs, id: usize, local_port: u16) -> LoadgenConfig {
    let inflight =
        (args.inflight / args.engines + usize::from(id < args.inflight % args.engines)).max(1);
    LoadgenConfig {
        target: args.target,
        local_port,
        payload_len: args.payload,
        inflight,
        rate_per_s: args.rate.map(|r| r / args.engines as f64),
        warmup_ns: args.warmup.as_nanos() as u64,
        duration_ns: args.duration.as_nanos() as u64,
        timeout_ns: args.timeout.as_nanos() as u64,
        drain_ns: args.timeout.as_nanos().min(200_000_000) as u64,
        stream: id as u32,
    }
}

/// Checks every flag before anything starts, so that a bad value is an error that names the
/// flag, never a run that measures nothing and exits 0.
pub fn validate(args: &LoadgenArgs) -> Result<()> {
    check_engines(args.engines)?;
    check_cpus(&args.cpus)?;
    check_batch(64)?;
    if args.protocol == LoadProtocol::Tcp {
        return validate_tcp(args);
    }
    if args.connections != 1 {
        return Err(anyhow!(
            "--connections is for --protocol tcp; UDP has no connections (use --inflight and --engines)"
        ));
    }
    if args.target.port() == 0 {
        return Err(anyhow!(
            "--target {}: port 0 is not a port a server listens on; give the server's port",
            args.target
        ));
    }
    if args.target.ip().is_unspecified()
        || args.target.ip().is_broadcast()
        || args.target.ip().is_multicast()
    {
        return Err(anyhow!(
            "--target {}: a load generator sends to one unicast server address",
            args.target
        ));
    }
    check_range(
        "payload",
        args.payload,
        HEADER_LEN..=PAYLOAD_MAX,
        "the request payload in bytes (the request header needs 24; UDP over IPv4 carries at most 65507)",
    )?;
    check_range(
        "inflight",
        args.inflight,
        args.engines..=WINDOW_MAX * args.engines,
        "requests in flight (at least one per engine)",
    )?;
    if let Some(rate) = args.rate {
        if !rate.is_finite() || rate <= 0.0 || rate > 1e9 {
            return Err(anyhow!(
                "--rate {rate}: an open-loop rate is requests per second, more than 0 and at most 1e9; leave it out for a closed loop"
            ));
        }
    }
    if args.duration.is_zero() {
        return Err(anyhow!("--duration 0: give a measured time, e.g. 5s"));
    }
    if args.timeout.is_zero() {
        return Err(anyhow!(
            "--timeout 0: every request would time out; give e.g. 1s"
        ));
    }
    if args.backend == Backend::AfXdp {
        if args.local_port == 0 {
            return Err(anyhow!(
                "--local-port 0: on af_xdp the XDP filter needs fixed ports; give e.g. 40000"
            ));
        }
        if usize::from(args.local_port) + args.engines - 1 > usize::from(u16::MAX) {
            return Err(anyhow!(
                "--local-port {} with {} engines runs past port 65535",
                args.local_port,
                args.engines
            ));
        }
    }
    Ok(())
}

/// The TCP half of [`validate`].
fn validate_tcp(args: &LoadgenArgs) -> Result<()> {
    if args.backend == Backend::AfXdp && args.interface.is_none() {
        return Err(anyhow!(
            "--backend af_xdp needs --interface (the lab's client side is mlg-va in namespace mlg-a)"
        ));
    }
    if args.rate.is_some() {
        return Err(anyhow!(
            "--rate: the TCP load generator runs closed loop only for now; leave --rate out"
        ));
    }
    if args.target.port() == 0 || args.target.ip().is_unspecified() {
        return Err(anyhow!(
            "--target {}: give the server's address and port",
            args.target
        ));
    }
    check_range(
        "connections",
        args.connections,
        args.engines..=TCP_LOADGEN_CONNECTIONS_MAX * args.engines,
        "TCP connections in all (at least one per engine)",
    )?;
    check_range(
        "inflight",
        args.inflight,
        1..=TCP_LOADGEN_INFLIGHT_MAX,
        "requests in flight on each TCP connection",
    )?;
    check_range(
        "payload",
        args.payload,
        1..=TCP_LOADGEN_MESSAGE_MAX,
        "bytes per TCP request",
    )?;
    if args.duration.is_zero() {
        return Err(anyhow!("--duration 0: give a measured time, e.g. 5s"));
    }
    Ok(())
}

/// Runs the load generator and returns the merged report.
pub fn run(args: &LoadgenArgs) -> Result<LoadgenReport> {
    validate(args)?;
    match (args.protocol, args.backend) {
        (LoadProtocol::Tcp, Backend::Kernel) => run_kernel_tcp(args),
        (LoadProtocol::Tcp, Backend::AfXdp) => run_af_xdp_tcp(args),
        (LoadProtocol::Udp, Backend::Kernel) => run_kernel(args),
        (LoadProtocol::Udp, Backend::AfXdp) => run_af_xdp(args),
    }
}

fn run_kernel_tcp(args: &LoadgenArgs) -> Result<LoadgenReport> {
    let stop = StopSignal::new();
    let mut handles = Vec::new();
    for id in 0..args.engines {
        let config = tcp_engine_config(args, id);
        let bind = args.bind;
        let shell = ShellConfig {
            name: format!("loadgen-tcp-{id}"),
            cpu: cpu_for(&args.cpus, id),
            idle: args.idle,
        };
        let handle = spawn_engine(shell, stop.clone(), move |now| {
            let options = KernelOptions {
                reuse_port: false,
                ..KernelOptions::new(bind)
            };
            let transport =
                KernelTransport::new(options).map_err(|e| format!("kernel sockets: {e}"))?;
            let pool = PacketPool::new(PoolConfig::default()).map_err(|e| e.to_string())?;
            Engine::new(
                EngineConfig::new(id),
                transport,
                pool,
                TcpLoadgenApp::new(config),
                now,
            )
            .map_err(|e| e.to_string())
        })
        .context("starting a load generator engine")?;
        handles.push(handle);
    }
    join_tcp_reports(handles, &stop, args)
}

/// The TCP load generator's settings for engine `id` of `args.engines`: connections split
/// as evenly as they go (validate() gave each engine at least one).
fn tcp_engine_config(args: &LoadgenArgs, id: usize) -> TcpLoadgenConfig {
    let connections =
        args.connections / args.engines + usize::from(id < args.connections % args.engines);
    TcpLoadgenConfig {
        target: args.target,
        connections,
        inflight: args.inflight,
        message_len: args.payload,
        warmup_ns: args.warmup.as_nanos() as u64,
        duration_ns: args.duration.as_nanos() as u64,
        drain_ns: args.timeout.as_nanos() as u64,
    }
}

/// Waits for the TCP load generator engines and merges their reports.
fn join_tcp_reports<T: Transport>(
    handles: Vec<
        std::thread::JoinHandle<
            Result<melange_runtime::EngineOutcome<TcpLoadgenApp, T>, ShellError>,
        >,
    >,
    stop: &StopSignal,
    args: &LoadgenArgs,
) -> Result<LoadgenReport> {
    let mut reports = Vec::new();
    let (mut connect_failures, mut resets) = (0, 0);
    for (id, handle) in handles.into_iter().enumerate() {
        let outcome = handle
            .join()
            .map_err(|_| anyhow!("load generator engine {id} panicked"))?
            .map_err(|e| {
                stop.stop();
                anyhow!("load generator engine {id}: {e}")
            })?;
        connect_failures += outcome.app.connect_failures();
        resets += outcome.app.resets();
        tracing::debug!(
            "load generator engine {id}: {:?}",
            outcome.transport_counters
        );
        reports.push(outcome.app.report());
    }
    if connect_failures as usize == args.connections {
        return Err(anyhow!(
            "no connection to {} could be opened: is a TCP server listening there (e.g. `melange echo --protocol tcp`)?",
            args.target
        ));
    }
    if connect_failures > 0 || resets > 0 {
        tracing::warn!(
            "{connect_failures} of {} connections could not be opened and {resets} ended before the run did",
            args.connections
        );
    }
    LoadgenReport::merge(reports).ok_or_else(|| anyhow!("no load generator engine ran"))
}

/// Local ports each af_xdp TCP engine may use: twice its connections (room for ports still in
/// TIME-WAIT at the server), at least 64.
fn tcp_ports_per_engine(args: &LoadgenArgs) -> usize {
    (args.connections.div_ceil(args.engines) * 2).max(64)
}

fn run_af_xdp_tcp(args: &LoadgenArgs) -> Result<LoadgenReport> {
    if args.engines > 1 {
        return Err(anyhow!(
            "--engines {} with --protocol tcp on af_xdp: each engine needs its own port range steered to its own queue, which is not wired yet; use --engines 1",
            args.engines
        ));
    }
    let interface = args
        .interface
        .clone()
        .ok_or_else(|| anyhow!("--backend af_xdp needs --interface"))?;
    let (bind, prefix) =
        melange_control::engines::interface_address(&interface, Some(args.bind), "--bind")?;
    melange_control::engines::check_on_link(&interface, bind, prefix, *args.target.ip())?;
    let span = tcp_ports_per_engine(args);
    let first = usize::from(args.local_port);
    let last = first + span * args.engines - 1;
    if last > usize::from(u16::MAX) {
        return Err(anyhow!(
            "--local-port {}: {} engine(s) with {} connections need local ports {first}..={last}, past 65535; give a lower --local-port",
            args.local_port,
            args.engines,
            args.connections
        ));
    }
    let server_mac = melange_control::engines::kernel_neighbor(*args.target.ip())?;
    let queues = melange_sys::netdev::rx_queue_count(&interface)
        .with_context(|| format!("queues of {interface}"))?;
    if queues > 1 {
        tracing::warn!(
            "{interface} has {queues} receive queues and the TCP client runs one engine on queue 0: segments the server sends that arrive on another queue go to the kernel, which resets those connections. Make the server send on one queue (in the lab: `ip netns exec mlg-b ethtool -L mlg-vb tx 1`) or give {interface} one receive queue"
        );
    }
    let mtu = melange_sys::netdev::mtu(&interface)
        .with_context(|| format!("interface {interface} (does it exist? `ip link` lists them)"))?;
    let conn = melange_tcp::conn::ConnConfig {
        mss: mtu.saturating_sub(40).min(1460) as u16,
        ..melange_tcp::conn::ConnConfig::default()
    };
    // Each engine's ephemeral ports are its own slice of the filtered range; the XDP filter
    // steers the whole range (the kernel must not use these ports meanwhile: the lab's
    // namespace runs nothing else).
    let setup = melange_control::engines::XdpSetup {
        interface,
        addr: bind,
        prefix_len: prefix,
        queues: (0..args.engines as u32).collect(),
        ports: melange_control::PortRange::new(first as u16, last as u16)?,
        // Every connection's requests wait in their own frames until acknowledged, beside
        // the fill and transmit rings (2048 + 1024) and the receive batch.
        umem_frames: Some(
            (args.connections * (args.inflight + 2) + 4096).clamp(4096, 1 << 18) as u32,
        ),
        tcp: Some(melange_control::engines::XdpTcp {
            connections_max: (span + 16).max(1024),
            conn,
            ephemeral_ports: (first as u16, (first + span - 1) as u16),
        }),
        static_arp: vec![(*args.target.ip(), server_mac)],
        batch: 64,
        cpus: args.cpus.clone(),
        idle: args.idle,
        mode: args.xdp_mode.into(),
    };
    let stop = StopSignal::new();
    let run = melange_control::engines::start(&setup, &stop, |id, _queue| {
        TcpLoadgenApp::new(tcp_engine_config(args, id))
    })?;
    let report = join_tcp_reports(run.handles, &stop, args);
    stop.stop();
    let _ = run.neighbors.join();
    report
}

fn run_af_xdp(args: &LoadgenArgs) -> Result<LoadgenReport> {
    let interface = args
        .interface
        .clone()
        .ok_or_else(|| anyhow!("--backend af_xdp needs --interface"))?;
    let (bind, prefix) =
        melange_control::engines::interface_address(&interface, Some(args.bind), "--bind")?;
    melange_control::engines::check_on_link(&interface, bind, prefix, *args.target.ip())?;
    // validate() checked that the ports fit.
    let last_port = (usize::from(args.local_port) + args.engines - 1) as u16;
    let mtu = melange_sys::netdev::mtu(&interface)
        .with_context(|| format!("interface {interface} (does it exist? `ip link` lists them)"))?;
    let single_frame_max = (mtu as usize).saturating_sub(28);
    if args.payload > single_frame_max {
        return Err(anyhow!(
            "--payload {}: {interface}'s MTU is {mtu}, so one datagram carries at most {single_frame_max} bytes unfragmented, and on af_xdp fragments do not reach the engines (the XDP program leaves IP fragments to the kernel: a fragment after the first carries no port to steer by); use --payload {single_frame_max} or less, or --backend kernel, which carries up to 65507",
            args.payload
        ));
    }
    // The control plane resolves the server once, through the kernel, before the engines start.
    let server_mac = melange_control::engines::kernel_neighbor(*args.target.ip())?;
    let setup = melange_control::engines::XdpSetup {
        interface,
        addr: bind,
        prefix_len: prefix,
        queues: (0..args.engines as u32).collect(),
        ports: melange_control::PortRange::new(args.local_port, last_port)?,
        umem_frames: None,
        tcp: None,
        static_arp: vec![(*args.target.ip(), server_mac)],
        batch: 64,
        cpus: args.cpus.clone(),
        idle: args.idle,
        mode: args.xdp_mode.into(),
    };
    let stop = StopSignal::new();
    let run = melange_control::engines::start(&setup, &stop, |id, _queue| {
        let port = args.local_port + id as u16;
        LoadgenApp::new(engine_config(args, id, port))
    })?;
    let report = join_reports(run.handles, &stop);
    // The engines are done; the control plane's neighbour thread ends with the signal.
    stop.stop();
    let _ = run.neighbors.join();
    report
}

fn run_kernel(args: &LoadgenArgs) -> Result<LoadgenReport> {
    let stop = StopSignal::new();
    let mut handles = Vec::new();
    for id in 0..args.engines {
        let config = engine_config(args, id, 0);
        let bind = SocketAddrV4::new(args.bind, 0);
        let shell = ShellConfig {
            name: format!("loadgen-{id}"),
            cpu: cpu_for(&args.cpus, id),
            idle: args.idle,
        };
        let handle = spawn_engine(shell, stop.clone(), move |now| {
            let options = KernelOptions {
                reuse_port: false,
                ..KernelOptions::new(*bind.ip())
            };
            let transport = KernelTransport::new(options)
                .map_err(|e| format!("kernel sockets on {bind}: {e}"))?;
            let pool = PacketPool::new(PoolConfig::default()).map_err(|e| e.to_string())?;
            Engine::new(
                EngineConfig::new(id),
                transport,
                pool,
                LoadgenApp::new(config),
                now,
            )
            .map_err(|e| e.to_string())
        })
        .context("starting a load generator engine")?;
        handles.push(handle);
    }
    join_reports(handles, &stop)
}

/// Waits for every load generator engine and merges their reports; stops the others when
/// one fails.
fn join_reports<T: Transport>(
    handles: Vec<
        std::thread::JoinHandle<Result<melange_runtime::EngineOutcome<LoadgenApp, T>, ShellError>>,
    >,
    stop: &StopSignal,
) -> Result<LoadgenReport> {
    let mut reports = Vec::new();
    for (id, handle) in handles.into_iter().enumerate() {
        let outcome = handle
            .join()
            .map_err(|_| anyhow!("load generator engine {id} panicked"))?;
        let outcome = outcome.map_err(|e| {
            stop.stop();
            anyhow!("load generator engine {id}: {e}")
        })?;
        tracing::debug!(
            "loadgen engine {id}: cpu {:.3}s busy {:.3}s {:?} {:?}",
            outcome.cpu_time_ns as f64 / 1e9,
            outcome.busy_ns as f64 / 1e9,
            outcome.counters,
            outcome.transport_counters
        );
        if outcome.app.bind_failed() {
            stop.stop();
            return Err(anyhow!(
                "load generator engine {id} could not bind its UDP port (see the log above); pick another --local-port or --bind address"
            ));
        }
        reports.push(outcome.app.report());
    }
    LoadgenReport::merge(reports).ok_or_else(|| anyhow!("no load generator engine ran"))
}
