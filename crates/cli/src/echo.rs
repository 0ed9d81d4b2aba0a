//! `melange echo`: a UDP echo server on Melange engines.

use crate::util::{cpu_for, parse_duration, Backend};
use anyhow::{anyhow, Context, Result};
use melange_apps::{EchoApp, EchoConfig, EchoProtocol};
use melange_core::{PacketPool, PoolConfig};
use melange_engine::{Engine, EngineConfig, EngineDrop};
use melange_runtime::{
    spawn_engine, spin_ns, IdlePolicy, KernelQueueOptions, KernelUdpQueue, ShellConfig, StopSignal,
};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

/// Arguments of `melange echo`.
#[derive(clap::Args, Debug, Clone)]
pub struct EchoArgs {
    /// NIC backend.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    pub backend: Backend,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1")]
    pub addr: Ipv4Addr,
    /// UDP port.
    #[arg(long, default_value_t = 7777)]
    pub port: u16,
    /// Engines (one thread each; the kernel spreads flows over them with SO_REUSEPORT).
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
    /// Frames in each engine's pool.
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
            let protocol = match args.protocol {
                Protocol::Plain => EchoProtocol::Plain,
                Protocol::Sockperf => EchoProtocol::Sockperf,
            };
            let app = EchoApp::new(
                EchoConfig {
                    work_ns: args.delay_us * 1_000,
                    protocol,
                },
                spin_ns,
            );
            let config = EngineConfig {
                batch_max: args.batch,
                ..EngineConfig::new(id)
            };
            Engine::new(config, nic, pool, app, now).map_err(|e| e.to_string())
        })?;
        handles.push(handle);
    }
    tracing::info!(
        "echo on {addr} ({:?} backend, {} engine(s), idle {:?}, batch {})",
        args.backend,
        args.engines,
        args.idle,
        args.batch
    );
    let mut failure = None;
    for (id, handle) in handles.into_iter().enumerate() {
        match handle.join().map_err(|_| anyhow!("engine {id} panicked"))? {
            Ok(outcome) => {
                let c = &outcome.counters;
                let k = outcome.nic.counters();
                let drops: Vec<String> = EngineDrop::ALL
                    .iter()
                    .filter(|&&d| c.drops(d) > 0)
                    .map(|&d| format!("{}={}", d.name(), c.drops(d)))
                    .collect();
                tracing::info!(
                    "engine {id}: echoed {} unanswered {} rx {} tx {} batches {} mean batch {:.1} idle passes {} recv calls {} send calls {} drops [{}] pool {}/{} cpu {:.3}s",
                    outcome.app.counters().echoed,
                    outcome.app.counters().unanswered,
                    c.rx_packets,
                    c.tx_packets,
                    c.rx_batches,
                    c.rx_batch_sizes.mean(),
                    c.idle_polls,
                    k.recv_calls,
                    k.send_calls,
                    drops.join(" "),
                    outcome.pool_available,
                    outcome.pool_capacity,
                    outcome.cpu_time_ns as f64 / 1e9,
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
