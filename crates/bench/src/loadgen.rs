//! `melange loadgen`: a UDP or TCP load generator on Melange engines.
//!
//! UDP (the default): requests of `--payload` bytes, `--inflight` in flight in all, closed or
//! open loop ([`LoadgenApp`]). TCP (`--protocol tcp`, [`TcpLoadgenApp`]) on kernel sockets or,
//! on af_xdp, over Melange's own TCP (one engine), in one of three `--mode`s: `rr`,
//! `--connections` connections each with `--inflight` requests of `--payload` bytes
//! outstanding (closed loop); `churn`, `--connections` slots each looping connect, one
//! request, its reply, close (connections per second, connect-to-reply latency); `bulk`,
//! `--connections` connections streaming `--payload`-byte chunks one way to a sink (goodput).
//!
//! Churn's client closes first and so holds TIME-WAIT: on kernel sockets that is the kernel's
//! business (on loopback Linux reuses such ports, `net.ipv4.tcp_tw_reuse`); on af_xdp each
//! port in TIME-WAIT holds a port and a table slot of Melange's TCP until a connect reuses its
//! tuple, which Melange's TCP allows after a second without a word from the peer (RFC 6191,
//! with timestamps, as Linux's `tcp_tw_reuse`), so churn there takes every port from
//! `--local-port` up and a table to match, and logs the rate that sustains; `--time-wait`
//! shortens 2 MSL further.

use crate::table::us;
use anyhow::{anyhow, Context, Result};
use melange_apps::kv_load::{
    KeyDistribution, KvProtocol, KvWorkload, KV_LOAD_KEYS_MAX, KV_LOAD_VALUE_MAX, PER_MILLION,
};
use melange_apps::loadgen::{HEADER_LEN, PAYLOAD_MAX, WINDOW_MAX};
use melange_apps::tcp_loadgen::{
    TCP_LOADGEN_CHUNK_MAX, TCP_LOADGEN_CONNECTIONS_MAX, TCP_LOADGEN_INFLIGHT_MAX,
    TCP_LOADGEN_MESSAGE_MAX,
};
use melange_apps::{
    LoadgenApp, LoadgenConfig, LoadgenReport, TcpLoadMode, TcpLoadgenApp, TcpLoadgenConfig,
};
use melange_control::options::{
    check_batch, check_cpus, check_engines, check_range, cpu_for, parse_duration, Backend,
};
use melange_control::setups::{tcp_client_setup, TcpClientPlan};
use melange_core::PoolConfig;
use melange_engine::EngineConfig;
use melange_engine::Transport;
use melange_runtime::{
    spawn_kernel_engine, IdlePolicy, KernelOptions, KernelTransport, ShellConfig, ShellError,
    StopSignal,
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
    /// The protocol: `udp` datagrams; `tcp` connections carrying fixed-size requests; `resp`
    /// or `memcache`, gets and sets to a Redis or memcached server on TCP connections (see
    /// `--keys`, `--get-ratio`, `--distribution`; `--payload` is the value size, `--inflight`
    /// the pipeline depth).
    #[arg(long, value_enum, default_value_t = LoadProtocol::Udp)]
    pub protocol: LoadProtocol,
    /// The key-value workload of `--protocol resp|memcache`.
    #[command(flatten)]
    pub kv: KvLoadArgs,
    /// TCP: what each connection does: `rr` keeps `--inflight` requests outstanding; `churn`
    /// loops connect, one request, its reply, close; `bulk` streams `--payload`-byte chunks
    /// one way (to `melange sink`).
    #[arg(long, value_enum, default_value_t = LoadMode::Rr)]
    pub mode: LoadMode,
    /// TCP: connections, in all (spread over the engines); churn: connections open at once.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Request payload bytes (UDP: at least 24, for the request header; TCP: at least 1; churn
    /// and bulk: at most 65535, one buffer chain, bulk's chunk size). resp and memcache: the
    /// value size of a set (and so of a get's hit).
    #[arg(long, visible_alias = "value-size", default_value_t = 64)]
    pub payload: usize,
    /// UDP: requests in flight, in all (closed loop), or the most allowed (open loop). TCP rr,
    /// resp and memcache: requests in flight on each connection, the pipeline depth (churn
    /// and bulk: unused).
    #[arg(long, visible_alias = "pipeline", default_value_t = 32)]
    pub inflight: usize,
    /// Open loop: requests per second, in all (UDP, resp and memcache). Without it the loop
    /// is closed.
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
    /// af_xdp TCP: how long a closed connection stays in TIME-WAIT, holding its port and
    /// table slot (default 60 s, two maximum segment lifetimes); a connect reuses such a tuple
    /// once its peer has been silent a second, so churn's rate is at most the local ports
    /// divided by the shorter of this and 1 s.
    #[arg(long, value_parser = parse_duration)]
    pub time_wait: Option<Duration>,
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
    /// Redis' RESP on TCP: GET and SET.
    Resp,
    /// memcached's text protocol on TCP: get and set.
    Memcache,
}

impl LoadProtocol {
    /// Whether it runs on TCP connections.
    pub fn is_tcp(self) -> bool {
        self != LoadProtocol::Udp
    }
    /// The key-value protocol, if it is one.
    pub fn kv(self) -> Option<KvProtocol> {
        match self {
            LoadProtocol::Resp => Some(KvProtocol::Resp),
            LoadProtocol::Memcache => Some(KvProtocol::Memcache),
            LoadProtocol::Udp | LoadProtocol::Tcp => None,
        }
    }
}

/// How `--protocol resp|memcache` chooses keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyChoice {
    /// Every key alike.
    Uniform,
    /// A Zipf law, θ = 0.99 (YCSB's): a few keys take most requests.
    Zipf,
}

/// The key-value workload's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct KvLoadArgs {
    /// resp and memcache: keys in the key space (`mlg:000000000000` up).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// resp and memcache: the share of gets, 0 to 1 (the rest are sets); memcached's ETC
    /// workload is about 0.9-0.97, `0` fills the key space.
    #[arg(long, default_value_t = 0.9)]
    pub get_ratio: f64,
    /// resp and memcache: how keys are chosen.
    #[arg(long, value_enum, default_value_t = KeyChoice::Uniform)]
    pub distribution: KeyChoice,
    /// resp and memcache: seed of the key and get/set choices (runs repeat given a seed).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Default for KvLoadArgs {
    fn default() -> Self {
        Self {
            keys: 100_000,
            get_ratio: 0.9,
            distribution: KeyChoice::Uniform,
            seed: 1,
        }
    }
}

/// What each TCP connection of `melange loadgen --protocol tcp` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// Closed-loop requests and replies.
    Rr,
    /// Connect, one request and its reply, close; again.
    Churn,
    /// One-way stream, client to server.
    Bulk,
}

impl LoadMode {
    /// The app's mode.
    pub fn app_mode(self) -> TcpLoadMode {
        match self {
            LoadMode::Rr => TcpLoadMode::RequestResponse,
            LoadMode::Churn => TcpLoadMode::Churn,
            LoadMode::Bulk => TcpLoadMode::Bulk,
        }
    }
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            LoadMode::Rr => "rr",
            LoadMode::Churn => "churn",
            LoadMode::Bulk => "bulk",
        }
    }
}

/// Longest `--time-wait`: four minutes, RFC 9293's 2 MSL with its suggested MSL of two.
pub const TIME_WAIT_MAX: Duration = Duration::from_secs(240);

/// The JSON form of a run.
#[derive(Debug, Serialize)]
pub struct LoadgenOutput<'a> {
    /// Target.
    pub target: String,
    /// `udp`, the TCP mode (`rr`, `churn` or `bulk`), or `resp` or `memcache`.
    pub mode: &'static str,
    /// TCP connections (churn: open at once).
    pub connections: usize,
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
            mode: match args.protocol {
                LoadProtocol::Udp => "udp",
                LoadProtocol::Tcp => args.mode.name(),
                LoadProtocol::Resp => "resp",
                LoadProtocol::Memcache => "memcache",
            },
            connections: args.connections,
            payload: args.payload,
            inflight: args.inflight,
            rate: args.rate,
            report: &report,
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        print_report(&args, &report);
    }
    if args.protocol == LoadProtocol::Tcp && args.mode == LoadMode::Bulk {
        if report.bytes == 0 {
            return Err(anyhow!(
                "no byte sent to {} was acknowledged ({} connections opened): is a sink listening there (`melange sink --protocol tcp`), and reading?",
                args.target,
                report.connects
            ));
        }
        return Ok(());
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
    if args.protocol == LoadProtocol::Tcp && args.mode != LoadMode::Rr {
        return print_tcp_mode_report(args, r);
    }
    if let Some(kv) = &r.kv {
        let gets = kv.hits + kv.misses;
        println!(
            "loadgen -> {} {}: {} connections x {} pipelined{}, {} keys ({}), {:.0}% gets, {} B values, {:.1}s measured",
            args.target,
            if args.protocol == LoadProtocol::Resp { "resp" } else { "memcache" },
            args.connections,
            args.inflight,
            args.rate
                .map(|r| format!(" at most, open loop {r:.0}/s"))
                .unwrap_or_default(),
            args.kv.keys,
            match args.kv.distribution {
                KeyChoice::Uniform => "uniform",
                KeyChoice::Zipf => "zipf 0.99",
            },
            args.kv.get_ratio * 100.0,
            args.payload,
            r.window_ns as f64 / 1e9
        );
        println!("  requests/s   {:.0}", r.requests_per_s);
        print_latency("latency us", &r.latency);
        println!(
            "  gets {gets} (hits {}, {:.1}%)  sets {}  errors {}  wrong replies {}",
            kv.hits,
            if gets == 0 {
                0.0
            } else {
                kv.hits as f64 * 100.0 / gets as f64
            },
            kv.stored,
            kv.errors,
            kv.wrong
        );
        println!(
            "  connects {}  connect failures {}  sent {}  received {}  send failures {}{}",
            r.connects,
            r.connect_failures,
            r.sent,
            r.received,
            r.send_failures,
            if args.rate.is_some() && r.send_failures > 0 {
                " (requests due when every pipeline was full: the server did not keep up with the rate)"
            } else {
                ""
            }
        );
        return;
    }
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
    print_latency("latency us", &r.latency);
    println!(
        "  sent {}  received {}  timeouts {}  corrupt {}  unexpected {}  send failures {}",
        r.sent, r.received, r.timeouts, r.corrupt, r.unexpected, r.send_failures
    );
}

/// Prints a latency summary line: `label` and the percentiles, in µs.
fn print_latency(label: &str, l: &melange_apps::LatencySummary) {
    println!(
        "  {label}   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        us(l.p50_ns),
        us(l.p90_ns),
        us(l.p99_ns),
        us(l.p999_ns),
        us(l.max_ns)
    );
}

/// Prints a churn or bulk report for people.
fn print_tcp_mode_report(args: &LoadgenArgs, r: &LoadgenReport) {
    let window_s = r.window_ns as f64 / 1e9;
    match args.mode {
        LoadMode::Churn => {
            println!(
                "loadgen -> {} churn: {} connections at once, {} B request each, {window_s:.1}s measured",
                args.target, args.connections, args.payload
            );
            println!("  connections/s  {:.0}", r.requests_per_s);
            print_latency("connect to reply us", &r.latency);
        }
        _ => {
            println!(
                "loadgen -> {} bulk: {} connections, {} B chunks, {window_s:.1}s measured",
                args.target, args.connections, args.payload
            );
            println!(
                "  goodput  {:.1} MB/s ({:.3} Gbit/s)",
                r.bytes_per_sec / 1e6,
                r.bytes_per_sec * 8.0 / 1e9
            );
            println!(
                "  bytes    {} in the window, {} in all",
                r.bytes_measured, r.bytes
            );
        }
    }
    println!(
        "  connects {}  connect failures {}  sent {}  received {}  corrupt {}  unexpected {}  send failures {}",
        r.connects, r.connect_failures, r.sent, r.received, r.corrupt, r.unexpected, r.send_failures
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
    if args.protocol.is_tcp() {
        return validate_tcp(args);
    }
    if args.connections != 1 {
        return Err(anyhow!(
            "--connections is for --protocol tcp; UDP has no connections (use --inflight and --engines)"
        ));
    }
    if args.mode != LoadMode::Rr {
        return Err(anyhow!(
            "--mode {} is for --protocol tcp; UDP runs request/response only",
            args.mode.name()
        ));
    }
    if args.time_wait.is_some() {
        return Err(anyhow!(
            "--time-wait is for --protocol tcp --backend af_xdp; UDP has no TIME-WAIT"
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
    if let Some(rate) = args.rate {
        if args.protocol.kv().is_none() {
            return Err(anyhow!(
                "--rate: --protocol tcp runs closed loop only; an open loop is for --protocol resp or memcache (leave --rate out)"
            ));
        }
        if !rate.is_finite() || !(1.0..=1e8).contains(&rate) {
            return Err(anyhow!(
                "--rate {rate}: an open-loop rate is requests per second over all connections, from 1 to 1e8; leave it out for a closed loop"
            ));
        }
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
    if args.protocol.kv().is_some() {
        validate_kv(args)?;
    } else if args.kv.keys != KvLoadArgs::default().keys
        || args.kv.get_ratio != KvLoadArgs::default().get_ratio
        || args.kv.distribution != KvLoadArgs::default().distribution
    {
        return Err(anyhow!(
            "--keys, --get-ratio and --distribution are for --protocol resp or memcache (a key-value workload)"
        ));
    }
    match args.mode {
        LoadMode::Rr if args.protocol.kv().is_some() => {}
        LoadMode::Rr => check_range(
            "payload",
            args.payload,
            1..=TCP_LOADGEN_MESSAGE_MAX,
            "bytes per TCP request",
        )?,
        LoadMode::Churn => check_range(
            "payload",
            args.payload,
            1..=TCP_LOADGEN_CHUNK_MAX,
            "bytes of churn's one request per connection",
        )?,
        LoadMode::Bulk => check_range(
            "payload",
            args.payload,
            1..=TCP_LOADGEN_CHUNK_MAX,
            "bytes per bulk chunk (e.g. 65535)",
        )?,
    }
    if args.duration.is_zero() {
        return Err(anyhow!("--duration 0: give a measured time, e.g. 5s"));
    }
    if let Some(time_wait) = args.time_wait {
        if args.backend != Backend::AfXdp {
            return Err(anyhow!(
                "--time-wait is for --backend af_xdp: on kernel sockets TIME-WAIT is the kernel's (net.ipv4.tcp_tw_reuse decides whether connects reuse such ports)"
            ));
        }
        if time_wait < Duration::from_millis(1) || time_wait > TIME_WAIT_MAX {
            return Err(anyhow!(
                "--time-wait {time_wait:?} is out of range: TIME-WAIT must be between 1ms and {}s",
                TIME_WAIT_MAX.as_secs()
            ));
        }
    }
    Ok(())
}

/// The key-value part of [`validate_tcp`].
fn validate_kv(args: &LoadgenArgs) -> Result<()> {
    if args.mode != LoadMode::Rr {
        return Err(anyhow!(
            "--mode {} is for --protocol tcp; resp and memcache keep long-lived connections with --inflight requests pipelined (leave --mode out)",
            args.mode.name()
        ));
    }
    check_range(
        "payload",
        args.payload,
        1..=KV_LOAD_VALUE_MAX,
        "bytes per value (`--value-size`; a set must fit one 64 KiB buffer chain)",
    )?;
    check_range(
        "keys",
        args.kv.keys,
        1..=KV_LOAD_KEYS_MAX,
        "keys in the key space",
    )?;
    let ratio = args.kv.get_ratio;
    if !ratio.is_finite() || !(0.0..=1.0).contains(&ratio) {
        return Err(anyhow!(
            "--get-ratio {ratio}: the share of gets is between 0 (sets only, to fill the key space) and 1 (gets only), e.g. 0.9"
        ));
    }
    Ok(())
}

/// Runs the load generator and returns the merged report.
pub fn run(args: &LoadgenArgs) -> Result<LoadgenReport> {
    validate(args)?;
    match (args.protocol.is_tcp(), args.backend) {
        (true, Backend::Kernel) => run_kernel_tcp(args),
        (true, Backend::AfXdp) => run_af_xdp_tcp(args),
        (false, Backend::Kernel) => run_kernel(args),
        (false, Backend::AfXdp) => run_af_xdp(args),
    }
}

fn run_kernel_tcp(args: &LoadgenArgs) -> Result<LoadgenReport> {
    let stop = StopSignal::new();
    let mut handles = Vec::new();
    for id in 0..args.engines {
        let config = tcp_engine_config(args, id);
        let shell = ShellConfig {
            name: format!("loadgen-tcp-{id}"),
            cpu: cpu_for(&args.cpus, id),
            idle: args.idle,
        };
        let options = KernelOptions {
            reuse_port: false,
            ..KernelOptions::new(args.bind)
        };
        let handle = spawn_kernel_engine(
            shell,
            stop.clone(),
            options,
            EngineConfig::new(id),
            PoolConfig::default(),
            TcpLoadgenApp::new(config),
        )
        .context("starting a load generator engine")?;
        handles.push(handle);
    }
    join_tcp_reports(handles, &stop, args, |t: &KernelTransport| {
        format!("{:?}", t.tcp_counters())
    })
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
        mode: match kv_workload(args, id) {
            Some(workload) => TcpLoadMode::Kv(workload),
            None => args.mode.app_mode(),
        },
    }
}

/// The key-value workload of engine `id`, if the protocol is resp or memcache: every engine
/// draws from the one key space, with a seed of its own.
fn kv_workload(args: &LoadgenArgs, id: usize) -> Option<KvWorkload> {
    let protocol = args.protocol.kv()?;
    Some(KvWorkload {
        protocol,
        keys: args.kv.keys,
        get_per_million: (args.kv.get_ratio * f64::from(PER_MILLION)).round() as u32,
        value_len: args.payload,
        distribution: match args.kv.distribution {
            KeyChoice::Uniform => KeyDistribution::Uniform,
            KeyChoice::Zipf => KeyDistribution::Zipf,
        },
        seed: args.kv.seed.wrapping_add((id as u64) << 32),
        rate_per_s: args
            .rate
            .map(|rate| (rate / args.engines as f64).round().max(1.0) as u64),
    })
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
    tcp_summary: impl Fn(&T) -> String,
) -> Result<LoadgenReport> {
    let mut reports = Vec::new();
    let (mut connect_failures, mut connects, mut resets) = (0, 0, 0);
    for (id, handle) in handles.into_iter().enumerate() {
        let outcome = handle
            .join()
            .map_err(|_| anyhow!("load generator engine {id} panicked"))?
            .map_err(|e| {
                stop.stop();
                anyhow!("load generator engine {id}: {e}")
            })?;
        connect_failures += outcome.app.connect_failures();
        connects += outcome.app.connects();
        resets += outcome.app.resets();
        tracing::debug!(
            "load generator engine {id}: {:?}",
            outcome.transport_counters
        );
        // Retransmissions, drops and segment counts say whether a slow run was the path,
        // the server or this client.
        tracing::info!(
            "load generator engine {id}: tcp {}",
            tcp_summary(&outcome.transport)
        );
        if let Some(error) = outcome.app.first_error() {
            tracing::warn!("the server refused requests; the first refusal said: {error}");
        }
        reports.push(outcome.app.report());
    }
    if connects == 0 && connect_failures > 0 {
        return Err(anyhow!(
            "no connection to {} could be opened: is a TCP server listening there (e.g. `melange echo --protocol tcp`)?",
            args.target
        ));
    }
    if connect_failures > 0 || resets > 0 {
        tracing::warn!(
            "{connect_failures} connection attempts failed ({connects} opened) and {resets} connections ended before the run did"
        );
    }
    LoadgenReport::merge(reports).ok_or_else(|| anyhow!("no load generator engine ran"))
}

/// Local ports each af_xdp TCP engine may use. Request/response and bulk: twice its
/// connections (room for ports still in TIME-WAIT at the server), at least 64. Churn: every
/// port from `--local-port` up, since each finished cycle holds its port for a TIME-WAIT.
fn tcp_ports_per_engine(args: &LoadgenArgs) -> usize {
    match args.mode {
        LoadMode::Churn => {
            (usize::from(u16::MAX) + 1 - usize::from(args.local_port.max(1))) / args.engines
        }
        LoadMode::Rr | LoadMode::Bulk => (args.connections.div_ceil(args.engines) * 2).max(64),
    }
}

/// The af_xdp TCP client's setup for `args`: ports, table and UMEM sized for the mode.
fn tcp_client_plan(args: &LoadgenArgs, interface: String) -> TcpClientPlan {
    let span = tcp_ports_per_engine(args);
    let per_engine = args.connections.div_ceil(args.engines);
    // A request or chunk waits in its own frames (1,792 payload bytes each, at least) until
    // acknowledged.
    let frames_per_message = args.payload.div_ceil(1792) + 1;
    let held = match args.mode {
        LoadMode::Rr => per_engine * args.inflight * frames_per_message,
        LoadMode::Churn => per_engine * frames_per_message,
        // The stack queues at most SEND_CHAINS_MAX chunks per connection.
        LoadMode::Bulk => per_engine * melange_engine::tcp::SEND_CHAINS_MAX * frames_per_message,
    };
    TcpClientPlan {
        interface,
        bind: Some(args.bind),
        target: *args.target.ip(),
        engines: args.engines,
        first_port: args.local_port,
        ports_per_engine: span,
        // Every port may hold a connection in TIME-WAIT besides the open ones (churn), or
        // twice the connections (the others), and never fewer than 1,024.
        connections_max: (span + per_engine + 16).max(1024),
        // Beside the fill and transmit rings (2048 + 1024) and the receive batch.
        umem_frames: (held + 2 * per_engine + 4096).clamp(4096, 1 << 18) as u32,
        time_wait_ns: args.time_wait.map(|d| d.as_nanos() as u64),
        cpus: args.cpus.clone(),
        idle: args.idle,
        mode: args.xdp_mode.into(),
    }
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
    let plan = tcp_client_plan(args, interface);
    let setup = tcp_client_setup(&plan)?;
    if args.mode == LoadMode::Churn {
        let time_wait_s = plan
            .time_wait_ns
            .unwrap_or(melange_tcp::conn::ConnConfig::default().time_wait_ns)
            as f64
            / 1e9;
        let held_s = time_wait_s.min(melange_tcp::conn::TIME_WAIT_REUSE_IDLE_NS as f64 / 1e9);
        tracing::info!(
            "churn: {} local ports, each held after its cycle for {held_s} s (TIME-WAIT of {time_wait_s} s, its tuple reused after 1 s of silence): at most {:.0} connections/s are sustained",
            plan.ports_per_engine,
            plan.ports_per_engine as f64 / held_s
        );
    }
    let stop = StopSignal::new();
    let run = melange_control::engines::start(&setup, &stop, |id, _queue| {
        TcpLoadgenApp::new(tcp_engine_config(args, id))
    })?;
    let report = join_tcp_reports(run.handles, &stop, args, |t| {
        format!("{:?}", t.tcp_counters())
    });
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
        let shell = ShellConfig {
            name: format!("loadgen-{id}"),
            cpu: cpu_for(&args.cpus, id),
            idle: args.idle,
        };
        let options = KernelOptions {
            reuse_port: false,
            ..KernelOptions::new(args.bind)
        };
        let handle = spawn_kernel_engine(
            shell,
            stop.clone(),
            options,
            EngineConfig::new(id),
            PoolConfig::default(),
            LoadgenApp::new(config),
        )
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
