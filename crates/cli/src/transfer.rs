//! `melange sink` and `melange source`: byte-exact TCP transfers, checked by SHA-256.
//!
//! The source sends `--bytes` bytes of a stream generated from `--seed`
//! ([`melange_apps::stream`]) and prints its SHA-256; the sink prints the SHA-256 of what each
//! connection carried. Equal digests mean every byte arrived once, in order, unchanged. Either
//! end can be Linux instead (`head -c N FILE | nc HOST PORT` into a Melange sink, or a Melange
//! source into `nc -l PORT | sha256sum`), which is what makes the pair a check of Melange's
//! TCP against another implementation, not only against itself. The sink also serves the load
//! generator's bulk mode.
//!
//! Both run one engine on kernel sockets, or Melange's own TCP on af_xdp with the same setup
//! as `echo` (a server on one port) and `loadgen` (a TCP client) through
//! [`melange_control::setups`], so they run in the lab exactly as those do. The apps report
//! through a callback and counters; this module only parses, prints and decides the exit
//! status.

use anyhow::{anyhow, bail, Context, Result};
use melange_apps::stream::hex;
use melange_apps::tcp_source::TCP_SOURCE_BYTES_MAX;
use melange_apps::{
    SinkRecord, SinkReporter, SourceEnd, SourceReport, TcpSinkApp, TcpSinkConfig, TcpSourceApp,
    TcpSourceConfig,
};
use melange_control::engines as xdp;
use melange_control::options::{check_cpus, cpu_for, parse_duration, Backend, XdpAttach};
use melange_control::setups::{server_setup, tcp_client_setup, ServerPlan, TcpClientPlan};
use melange_core::PoolConfig;
use melange_engine::EngineConfig;
use melange_runtime::{spawn_kernel_engine, IdlePolicy, KernelOptions, ShellConfig, StopSignal};
use serde::Serialize;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The transport protocol of a transfer (TCP only, for now).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransferProtocol {
    /// A TCP byte stream.
    Tcp,
}

/// Arguments of `melange sink`.
#[derive(clap::Args, Debug, Clone)]
pub struct SinkArgs {
    /// The protocol (TCP).
    #[arg(long, value_enum, default_value_t = TransferProtocol::Tcp)]
    pub protocol: TransferProtocol,
    /// NIC backend.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    pub backend: Backend,
    /// Address to listen on. kernel: default 127.0.0.1 (0.0.0.0 for every address). af_xdp:
    /// the interface's own address, the default and only choice.
    #[arg(long)]
    pub addr: Option<Ipv4Addr>,
    /// The TCP port to listen on.
    #[arg(long)]
    pub port: u16,
    /// af_xdp: the interface, e.g. mlg-vb.
    #[arg(long)]
    pub interface: Option<String>,
    /// af_xdp: queues to serve, one engine each (default: all of the interface's queues).
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<u32>,
    /// af_xdp: how to attach the XDP program.
    #[arg(long, value_enum, default_value_t = XdpAttach::Native)]
    pub xdp_mode: XdpAttach,
    /// Cores to pin engines to, e.g. `0`.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Idle policy: spin, sleep, or sleep:N.
    #[arg(long, default_value = "spin")]
    pub idle: IdlePolicy,
    /// End after this many connections have finished (default: run until SIGINT or SIGTERM).
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// One JSON object per finished connection instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `melange source`.
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// The protocol (TCP).
    #[arg(long, value_enum, default_value_t = TransferProtocol::Tcp)]
    pub protocol: TransferProtocol,
    /// NIC backend.
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    pub backend: Backend,
    /// The sink, IP:PORT.
    #[arg(long)]
    pub target: SocketAddrV4,
    /// Bytes to send: a number, with an optional k, M, G, T (powers of 1000) or Ki, Mi, Gi,
    /// Ti (powers of 1024) and an optional B, e.g. 2MB or 1GiB; at most 1 TiB.
    #[arg(long, value_parser = parse_bytes)]
    pub bytes: u64,
    /// The seed of the stream: the same seed and length give the same bytes and digest.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Local address. kernel: any (default 0.0.0.0). af_xdp: the interface's own address.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: Ipv4Addr,
    /// af_xdp: the interface, e.g. mlg-va.
    #[arg(long)]
    pub interface: Option<String>,
    /// af_xdp: first local TCP port of the engine's range (64 ports).
    #[arg(long, default_value_t = 40000)]
    pub local_port: u16,
    /// af_xdp: how to attach the XDP program.
    #[arg(long, value_enum, default_value_t = XdpAttach::Native)]
    pub xdp_mode: XdpAttach,
    /// Core to pin the engine to.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Idle policy: spin, sleep, or sleep:N.
    #[arg(long, default_value = "spin")]
    pub idle: IdlePolicy,
    /// Give up after this long (default: wait until the transfer ends or SIGINT).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses a byte count: `1000`, `64k`, `2MB`, `1GiB`, `3Ti`.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let text = s.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| {
        anyhow!(
            "bytes '{s}': expected a whole number with an optional unit, e.g. 1000000, 2MB or 1GiB"
        )
    })?;
    let unit = unit.strip_suffix('B').unwrap_or(unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => bail!("bytes '{s}': unknown unit '{unit}' (use k, M, G, T or Ki, Mi, Gi, Ti)"),
    };
    let bytes = number
        .checked_mul(scale)
        .ok_or_else(|| anyhow!("bytes '{s}' is far more than the most a source sends (1 TiB)"))?;
    if bytes == 0 {
        bail!("bytes '{s}': a transfer sends at least one byte");
    }
    if bytes > TCP_SOURCE_BYTES_MAX {
        bail!("bytes '{s}' is more than the most a source sends, 1 TiB ({TCP_SOURCE_BYTES_MAX} bytes)");
    }
    Ok(bytes)
}

/// Checks the sink's flags before anything is attached or started.
pub fn validate_sink(args: &SinkArgs) -> Result<()> {
    check_cpus(&args.cpus)?;
    if args.port == 0 {
        bail!("--port 0: a sink needs a fixed port its sources can find; give e.g. 9000");
    }
    if args.count == Some(0) {
        bail!("--count 0: give the number of connections to serve, or leave it out to serve until stopped");
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        bail!("--duration 0: leave it out to run until stopped, or give e.g. 10s");
    }
    match args.backend {
        Backend::AfXdp if args.interface.is_none() => bail!(
            "--backend af_xdp needs --interface (the lab's server side is mlg-vb in namespace mlg-b)"
        ),
        Backend::Kernel if args.interface.is_some() || !args.queues.is_empty() => {
            bail!("--interface and --queues are for --backend af_xdp")
        }
        _ => Ok(()),
    }
}

/// Checks the source's flags before anything is attached or started (`--bytes` was checked
/// while parsing).
pub fn validate_source(args: &SourceArgs) -> Result<()> {
    check_cpus(&args.cpus)?;
    let ip = args.target.ip();
    if args.target.port() == 0 {
        bail!(
            "--target {}: port 0 is not a port a sink listens on; give the sink's port",
            args.target
        );
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        bail!(
            "--target {}: a source sends to one unicast address",
            args.target
        );
    }
    if args.timeout.is_some_and(|d| d.is_zero()) {
        bail!("--timeout 0: leave it out to wait for the transfer, or give e.g. 60s");
    }
    match args.backend {
        Backend::AfXdp => {
            if args.interface.is_none() {
                bail!("--backend af_xdp needs --interface (the lab's client side is mlg-va in namespace mlg-a)");
            }
            if args.local_port == 0 || args.local_port > u16::MAX - SOURCE_PORTS + 1 {
                bail!(
                    "--local-port {}: on af_xdp the XDP filter steers {SOURCE_PORTS} fixed ports from it; give e.g. 40000",
                    args.local_port
                );
            }
            Ok(())
        }
        Backend::Kernel if args.interface.is_some() => {
            bail!("--interface is for --backend af_xdp")
        }
        Backend::Kernel => Ok(()),
    }
}

/// Local ports the af_xdp source's engine may use (room for a few runs' TIME-WAITs).
const SOURCE_PORTS: u16 = 64;

/// One finished connection, as `--json` prints it.
#[derive(Debug, Serialize)]
struct SinkLine {
    peer: String,
    bytes: u64,
    sha256: String,
    seconds: f64,
    mb_per_s: f64,
    complete: bool,
    end: String,
}

/// The line `melange sink` prints for a finished connection.
pub fn sink_line(r: &SinkRecord) -> String {
    let mut line = format!(
        "sink: connection from {}: {} bytes sha256 {} in {:.3} s ({:.1} MB/s)",
        r.peer,
        r.bytes,
        hex(&r.sha256),
        r.elapsed_ns as f64 / 1e9,
        r.mb_per_s()
    );
    if !r.complete {
        line.push_str(&format!(
            ", incomplete: {:?} before the peer's FIN",
            r.reason
        ));
    }
    line
}

fn sink_reporter(json: bool, reported: Arc<AtomicU64>) -> SinkReporter {
    Box::new(move |r: &SinkRecord| {
        if json {
            let line = SinkLine {
                peer: r.peer.to_string(),
                bytes: r.bytes,
                sha256: hex(&r.sha256),
                seconds: r.elapsed_ns as f64 / 1e9,
                mb_per_s: r.mb_per_s(),
                complete: r.complete,
                end: format!("{:?}", r.reason).to_lowercase(),
            };
            match serde_json::to_string(&line) {
                Ok(text) => println!("{text}"),
                Err(e) => tracing::error!("printing a sink record: {e}"),
            }
        } else {
            println!("{}", sink_line(r));
        }
        // Read by the main thread, which only compares it to --count: no other memory is
        // published through it, so Relaxed suffices.
        reported.fetch_add(1, Ordering::Relaxed);
    })
}

/// Runs `melange sink` until stopped (or `--count` connections finished).
pub fn run_sink(args: SinkArgs) -> Result<()> {
    validate_sink(&args)?;
    let stop = crate::stop_signal(args.duration)?;
    let reported = Arc::new(AtomicU64::new(0));
    match args.backend {
        Backend::Kernel => run_sink_kernel(&args, &stop, reported),
        Backend::AfXdp => run_sink_af_xdp(&args, &stop, reported),
    }
}

fn run_sink_kernel(args: &SinkArgs, stop: &StopSignal, reported: Arc<AtomicU64>) -> Result<()> {
    let ip = args.addr.unwrap_or(Ipv4Addr::LOCALHOST);
    let config = TcpSinkConfig {
        ports: vec![args.port],
        // One engine: it ends by itself once the last connection closed.
        connections_max: args.count,
    };
    let report = sink_reporter(args.json, reported);
    let shell = ShellConfig {
        name: "sink".into(),
        cpu: cpu_for(&args.cpus, 0),
        idle: args.idle,
    };
    let handle = spawn_kernel_engine(
        shell,
        stop.clone(),
        KernelOptions::new(ip),
        EngineConfig::new(0),
        PoolConfig::default(),
        TcpSinkApp::new(config, report),
    )?;
    tracing::info!(
        "sink on {ip}:{} (tcp, kernel backend, idle {:?})",
        args.port,
        args.idle
    );
    let outcome = handle
        .join()
        .map_err(|_| anyhow!("the sink engine panicked"))?
        .map_err(|e| anyhow!("sink engine: {e}"))?;
    finish_sink(
        &outcome.app,
        0,
        outcome.pool_available,
        outcome.pool_capacity,
    )
}

fn run_sink_af_xdp(args: &SinkArgs, stop: &StopSignal, reported: Arc<AtomicU64>) -> Result<()> {
    let interface = args
        .interface
        .clone()
        .ok_or_else(|| anyhow!("--backend af_xdp needs --interface"))?;
    let setup = server_setup(&ServerPlan {
        interface: interface.clone(),
        addr: args.addr,
        flag: "--addr",
        port: args.port,
        tcp: true,
        queues: args.queues.clone(),
        batch: 64,
        cpus: args.cpus.clone(),
        idle: args.idle,
        mode: args.xdp_mode.into(),
    })?;
    let engines = if args.queues.is_empty() {
        melange_sys::netdev::rx_queue_count(&interface)
            .with_context(|| format!("queues of {interface}"))?
    } else {
        args.queues.len()
    };
    let run = xdp::start(&setup, stop, |_, _| {
        TcpSinkApp::new(
            TcpSinkConfig {
                ports: vec![args.port],
                // One engine ends by itself once its last connection closed; several share
                // the count, watched below.
                connections_max: args.count.filter(|_| engines == 1),
            },
            sink_reporter(args.json, Arc::clone(&reported)),
        )
    })?;
    tracing::info!(
        "sink on {}:{} (tcp, af_xdp backend on {interface}, queues {:?}, idle {:?})",
        setup.addr,
        args.port,
        run.queues,
        args.idle
    );
    if let Some(count) = args.count.filter(|_| run.handles.len() > 1) {
        // Connections spread over the queues' engines: stop them all once the count is
        // reached, after a moment for the last closes to go out.
        while !stop.is_stopped() && reported.load(Ordering::Relaxed) < count {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.stop();
    }
    let mut result = Ok(());
    for (id, handle) in run.handles.into_iter().enumerate() {
        let outcome = handle
            .join()
            .map_err(|_| anyhow!("sink engine {id} panicked"))?;
        match outcome {
            Ok(outcome) => {
                if let Some(tcp) = outcome.transport.tcp_counters() {
                    tracing::info!("engine {id}: tcp {tcp:?}");
                }
                let done = finish_sink(
                    &outcome.app,
                    id,
                    outcome.pool_available,
                    outcome.pool_capacity,
                );
                if result.is_ok() {
                    result = done;
                }
            }
            Err(e) => {
                stop.stop();
                result = Err(anyhow!("sink engine {id}: {e}"));
            }
        }
    }
    stop.stop();
    let _ = run.neighbors.join();
    drop(run.filter);
    drop(run.filters);
    result
}

/// Logs what a sink engine did; an error if it could not listen.
fn finish_sink(app: &TcpSinkApp, id: usize, available: usize, capacity: usize) -> Result<()> {
    if let Some(error) = app.listen_error() {
        bail!(
            "sink engine {id}: {error}; stop the other server on that port or pick another --port"
        );
    }
    let c = app.counters();
    tracing::info!(
        "sink engine {id}: accepted {} complete {} incomplete {} bytes {} pool {available}/{capacity}",
        c.accepted,
        c.complete,
        c.incomplete,
        c.bytes
    );
    Ok(())
}

/// The JSON form of a source run.
#[derive(Debug, Serialize)]
struct SourceOutput {
    target: String,
    seed: u64,
    bytes: u64,
    bytes_acked: u64,
    sha256: Option<String>,
    seconds: f64,
    mb_per_s: f64,
    end: String,
}

/// Runs `melange source`: one transfer, then its line (or JSON); an error unless complete.
pub fn run_source(args: SourceArgs) -> Result<()> {
    validate_source(&args)?;
    let stop = crate::stop_signal(args.timeout)?;
    let config = TcpSourceConfig {
        target: args.target,
        bytes: args.bytes,
        seed: args.seed,
    };
    let report = match args.backend {
        Backend::Kernel => run_source_kernel(&args, config, &stop)?,
        Backend::AfXdp => run_source_af_xdp(&args, config, &stop)?,
    };
    print_source(&args, &report)
}

fn run_source_kernel(
    args: &SourceArgs,
    config: TcpSourceConfig,
    stop: &StopSignal,
) -> Result<SourceReport> {
    let bind = args.bind;
    let shell = ShellConfig {
        name: "source".into(),
        cpu: cpu_for(&args.cpus, 0),
        idle: args.idle,
    };
    let options = KernelOptions {
        reuse_port: false,
        ..KernelOptions::new(bind)
    };
    let handle = spawn_kernel_engine(
        shell,
        stop.clone(),
        options,
        EngineConfig::new(0),
        PoolConfig::default(),
        TcpSourceApp::new(config),
    )?;
    let outcome = handle
        .join()
        .map_err(|_| anyhow!("the source engine panicked"))?
        .map_err(|e| anyhow!("source engine: {e}"))?;
    Ok(outcome.app.report())
}

fn run_source_af_xdp(
    args: &SourceArgs,
    config: TcpSourceConfig,
    stop: &StopSignal,
) -> Result<SourceReport> {
    let interface = args
        .interface
        .clone()
        .ok_or_else(|| anyhow!("--backend af_xdp needs --interface"))?;
    let setup = tcp_client_setup(&TcpClientPlan {
        interface,
        bind: Some(args.bind),
        target: *args.target.ip(),
        engines: 1,
        first_port: args.local_port,
        ports_per_engine: usize::from(SOURCE_PORTS),
        connections_max: 1024,
        // The stack queues at most SEND_CHAINS_MAX chunks of ten frames each until they are
        // acknowledged, beside the rings and the receive batch.
        umem_frames: 8192,
        time_wait_ns: None,
        cpus: args.cpus.clone(),
        idle: args.idle,
        mode: args.xdp_mode.into(),
    })?;
    let run = xdp::start(&setup, stop, |_, _| TcpSourceApp::new(config))?;
    let mut report = None;
    for handle in run.handles {
        let outcome = handle
            .join()
            .map_err(|_| anyhow!("the source engine panicked"))?
            .map_err(|e| anyhow!("source engine: {e}"))?;
        if let Some(tcp) = outcome.transport.tcp_counters() {
            tracing::info!("source: tcp {tcp:?}");
        }
        report = Some(outcome.app.report());
    }
    stop.stop();
    let _ = run.neighbors.join();
    report.ok_or_else(|| anyhow!("no source engine ran"))
}

fn print_source(args: &SourceArgs, r: &SourceReport) -> Result<()> {
    let digest = r.sha256.as_ref().map(hex);
    if args.json {
        let output = SourceOutput {
            target: args.target.to_string(),
            seed: args.seed,
            bytes: r.bytes_sent,
            bytes_acked: r.bytes_acked,
            sha256: digest.clone(),
            seconds: r.elapsed_ns as f64 / 1e9,
            mb_per_s: r.mb_per_s(),
            end: match r.end {
                Some(SourceEnd::Complete) => "complete".into(),
                Some(end) => format!("{end:?}"),
                None => "stopped".into(),
            },
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
    }
    match r.end {
        Some(SourceEnd::Complete) => {
            if !args.json {
                println!(
                    "source: {} bytes sha256 {} in {:.3} s ({:.1} MB/s)",
                    r.bytes_sent,
                    digest.unwrap_or_default(),
                    r.elapsed_ns as f64 / 1e9,
                    r.mb_per_s()
                );
            }
            Ok(())
        }
        Some(SourceEnd::ConnectRefused(error)) => Err(anyhow!(
            "could not open a connection to {}: {error}",
            args.target
        )),
        Some(SourceEnd::ConnectFailed(reason)) => Err(anyhow!(
            "no connection to {} ({reason:?}): is a sink listening there (`melange sink --protocol tcp --port {}`)?",
            args.target,
            args.target.port()
        )),
        Some(SourceEnd::PeerClosedEarly) => Err(anyhow!(
            "{} closed the connection after {} of {} bytes",
            args.target,
            r.bytes_sent,
            args.bytes
        )),
        Some(SourceEnd::Broken(reason)) => Err(anyhow!(
            "the connection to {} ended ({reason:?}) after {} of {} bytes",
            args.target,
            r.bytes_sent,
            args.bytes
        )),
        None => Err(anyhow!(
            "stopped after {} of {} bytes ({:.1} s{})",
            r.bytes_sent,
            args.bytes,
            r.elapsed_ns as f64 / 1e9,
            if args.timeout.is_some() {
                ", --timeout reached"
            } else {
                ""
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("2MB").unwrap(), 2_000_000);
        assert_eq!(parse_bytes("64k").unwrap(), 64_000);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1Ti").unwrap(), 1 << 40);
        for bad in [
            "0",
            "",
            "MB",
            "-5",
            "1.5M",
            "2XB",
            "2T",
            "99999999999999999999999",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad} was accepted");
        }
        assert!(parse_bytes("0")
            .unwrap_err()
            .to_string()
            .contains("at least one byte"));
        assert!(parse_bytes("2T").unwrap_err().to_string().contains("1 TiB"));
    }

    #[test]
    fn sink_lines_say_what_arrived() {
        let record = SinkRecord {
            peer: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 5000),
            bytes: 2_000_000,
            sha256: [0xab; 32],
            elapsed_ns: 500_000_000,
            complete: true,
            reason: melange_core::contract::CloseReason::Closed,
        };
        let line = sink_line(&record);
        assert!(
            line.starts_with("sink: connection from 127.0.0.1:5000: 2000000 bytes sha256 abab"),
            "{line}"
        );
        assert!(line.ends_with("in 0.500 s (4.0 MB/s)"), "{line}");
        let broken = SinkRecord {
            complete: false,
            reason: melange_core::contract::CloseReason::Reset,
            ..record
        };
        assert!(sink_line(&broken).contains("incomplete: Reset"));
    }
}
