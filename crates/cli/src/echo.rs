//! `melange echo`: a UDP echo server on Melange engines.

use crate::util::{cpu_for, parse_duration, Backend};
use crate::xdp::{self, XdpSetup};
use anyhow::{anyhow, Context, Result};
use melange_apps::{EchoApp, EchoConfig, EchoProtocol};
use melange_bpf::PortRange;
use melange_core::{PacketPool, PoolConfig};
use melange_engine::{Engine, EngineConfig, EngineDrop};
use melange_net::DropReason;
use melange_runtime::{
    spawn_engine, spin_ns, EngineOutcome, IdlePolicy, KernelQueueOptions, KernelUdpQueue,
    ShellConfig, StopSignal,
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
    /// Address to serve on (with af_xdp: the interface's own address).
    #[arg(long, default_value = "127.0.0.1")]
    pub addr: Ipv4Addr,
    /// UDP port.
    #[arg(long, default_value_t = 7777)]
    pub port: u16,
    /// af_xdp: the interface, e.g. mlg-vb.
    #[arg(long)]
    pub interface: Option<String>,
    /// af_xdp: queues to serve, one engine each (default: all of the interface's queues).
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<u32>,
    /// af_xdp: prefix length of the interface's subnet.
    #[arg(long, default_value_t = 24)]
    pub prefix: u8,
    /// af_xdp: attach the XDP program in generic (skb) mode instead of native mode.
    #[arg(long)]
    pub generic_xdp: bool,
    /// kernel: engines (one thread each; the kernel spreads flows over them with SO_REUSEPORT).
    #[arg(long, default_value_t = 1)]
    pub engines: usize,
    /// Cores to pin engines to, e.g. `0,1` (engine i gets the i-th, round robin).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Simulated application work per request, in microseconds (a spin).
    #[arg(long, default_value_t = 0)]
    pub delay_us: u64,
    /// What to answer: `plain` echoes every datagram; `sockperf` serves sockperf clients
    /// (ping-pong and throughput modes) as `sockperf server` does.
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
}

/// Runs the echo server until stopped, then prints its counters.
pub fn run(args: EchoArgs) -> Result<()> {
    if args.engines == 0 {
        return Err(anyhow!("--engines must be at least 1"));
    }
    let stop = StopSignal::new();
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.stop()).context("installing the SIGINT/SIGTERM handler")?;
    }
    if let Some(duration) = args.duration {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            stop.stop();
        });
    }
    let config = EchoConfig {
        work_ns: args.delay_us * 1_000,
        protocol: match args.protocol {
            Protocol::Plain => EchoProtocol::Plain,
            Protocol::Sockperf => EchoProtocol::Sockperf,
        },
    };
    match args.backend {
        Backend::Kernel => run_kernel(&args, config, &stop),
        Backend::AfXdp => run_af_xdp(&args, config, &stop),
    }
}

fn run_kernel(args: &EchoArgs, config: EchoConfig, stop: &StopSignal) -> Result<()> {
    let addr = SocketAddrV4::new(args.addr, args.port);
    let mut handles = Vec::new();
    for id in 0..args.engines {
        let args = args.clone();
        let shell = ShellConfig {
            name: format!("echo-{id}"),
            cpu: cpu_for(&args.cpus, id),
            idle: args.idle,
        };
        let handle = spawn_engine(shell, stop.clone(), move |now| {
            let options = KernelQueueOptions {
                batch_max: args.batch,
                ..KernelQueueOptions::default()
            };
            let nic =
                KernelUdpQueue::bind(addr, options).map_err(|e| format!("binding {addr}: {e}"))?;
            let pool = PacketPool::new(PoolConfig {
                frame_count: args.pool_frames,
                ..PoolConfig::default()
            })
            .map_err(|e| e.to_string())?;
            let engine_config = EngineConfig {
                batch_max: args.batch,
                ..EngineConfig::new(id)
            };
            Engine::new(engine_config, nic, pool, EchoApp::new(config, spin_ns), now)
                .map_err(|e| e.to_string())
        })?;
        handles.push(handle);
    }
    tracing::info!(
        "echo on {addr} (kernel backend, {} engine(s), idle {:?}, batch {})",
        args.engines,
        args.idle,
        args.batch
    );
    report(handles, stop, |nic: &KernelUdpQueue| {
        let k = nic.counters();
        format!("recv calls {} send calls {}", k.recv_calls, k.send_calls)
    })
}

fn run_af_xdp(args: &EchoArgs, config: EchoConfig, stop: &StopSignal) -> Result<()> {
    let interface = args
        .interface
        .clone()
        .ok_or_else(|| anyhow!("--backend af_xdp needs --interface"))?;
    let setup = XdpSetup {
        interface: interface.clone(),
        addr: args.addr,
        prefix_len: args.prefix,
        queues: args.queues.clone(),
        ports: PortRange::single(args.port),
        static_arp: Vec::new(),
        batch: args.batch,
        cpus: args.cpus.clone(),
        idle: args.idle,
        mode: if args.generic_xdp {
            melange_sys::bpf::XdpMode::Generic
        } else {
            melange_sys::bpf::XdpMode::Native
        },
    };
    let port = args.port;
    let run = xdp::start(&setup, stop, |_, _| {
        (EchoApp::new(config, spin_ns), vec![port])
    })?;
    tracing::info!(
        "echo on {}:{port} (af_xdp backend on {interface}, queues {:?}, idle {:?}, batch {})",
        args.addr,
        run.queues,
        args.idle,
        args.batch
    );
    let result = report(run.handles, stop, |nic: &melange_runtime::AfXdpQueue| {
        let c = nic.counters();
        let kernel = nic
            .kernel_statistics()
            .map(|s| format!("{s:?}"))
            .unwrap_or_default();
        format!(
            "filled {} received {} transmitted {} completed {} kicks {} kick retries {} tx ring full {} bad descriptors {} kernel {kernel}",
            c.filled, c.received, c.transmitted, c.completed, c.kicks, c.kick_retries, c.tx_ring_full_drops, c.bad_descriptors
        )
    });
    if let Ok(stats) = run.filters.stats() {
        tracing::info!("xdp filter verdicts: {stats:?}");
    }
    drop(run.filter);
    drop(run.filters);
    result
}

/// Joins the engines and logs what each did.
fn report<N>(
    handles: Vec<JoinHandle<Result<EngineOutcome<EchoApp, N>, String>>>,
    stop: &StopSignal,
    nic_summary: impl Fn(&N) -> String,
) -> Result<()> {
    let mut failure = None;
    for (id, handle) in handles.into_iter().enumerate() {
        match handle.join().map_err(|_| anyhow!("engine {id} panicked"))? {
            Ok(outcome) => {
                let c = &outcome.counters;
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
                    "engine {id}: echoed {} unanswered {} rx {} tx {} batches {} mean batch {:.1} idle passes {} {} drops [{}] pool {}/{} cpu {:.3}s busy {:.3}s ({:.0} ns per datagram)",
                    outcome.app.counters().echoed,
                    outcome.app.counters().unanswered,
                    c.rx_packets,
                    c.tx_packets,
                    c.rx_batches,
                    c.rx_packets as f64 / c.rx_batches.max(1) as f64,
                    c.idle_polls,
                    nic_summary(&outcome.nic),
                    drops.join(" "),
                    outcome.pool_available,
                    outcome.pool_capacity,
                    outcome.cpu_time_ns as f64 / 1e9,
                    outcome.busy_ns as f64 / 1e9,
                    outcome.busy_ns as f64 / c.rx_packets.max(1) as f64,
                );
            }
            Err(err) => {
                stop.stop();
                tracing::error!("engine {id}: {err}");
                failure.get_or_insert(err);
            }
        }
    }
    match failure {
        Some(err) => Err(anyhow!(err)),
        None => Ok(()),
    }
}
