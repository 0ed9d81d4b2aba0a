//! `melange kv`: the key-value service, for unmodified Redis clients, on Melange engines.
//!
//! Settings come from the command line and, with `--config FILE`, from a file in Redis'
//! `redis.conf` syntax (one `directive value...` per line, `#` comments), so an operator can
//! start from the configuration they run today. Flags win over the file. Directives that only
//! make sense for a Redis with persistence or replication (`save`, `appendonly`, `dir`, ...)
//! are accepted with a warning saying they have no effect yet; unknown ones are refused with
//! the line number, as Redis refuses them.

use anyhow::{anyhow, bail, Context, Result};
use melange_apps::kv::{KvApp, KvConfig, KvState, SharedServer, KV_OUTPUT_LIMIT_DEFAULT};
use melange_control::engines as xdp;
use melange_control::options::{check_batch, check_cpus, check_engines, cpu_for, Backend};
use melange_control::setups::{server_setup, ServerPlan};
use melange_core::PoolConfig;
use melange_engine::EngineConfig;
use melange_kv::keyspace::EvictionPolicy;
use melange_kv::Server;
use melange_runtime::{spawn_kernel_engine, IdlePolicy, KernelOptions, ShellConfig};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Arguments of `melange kv`.
#[derive(clap::Args, Debug, Clone)]
pub struct KvArgs {
    /// NIC backend: `kernel` (kernel TCP sockets, no privileges needed) or `af_xdp`
    /// (Melange's own TCP on an AF_XDP queue; the lab's mlg-vb).
    #[arg(long, value_enum, default_value_t = Backend::Kernel)]
    pub backend: Backend,
    /// Address to serve on. kernel: default 127.0.0.1 (0.0.0.0 for every address). af_xdp:
    /// the interface's own address.
    #[arg(long)]
    pub addr: Option<Ipv4Addr>,
    /// The port Redis clients connect to (Redis' `port`).
    #[arg(long)]
    pub resp_port: Option<u16>,
    /// Also serve memcached's text and meta protocols on this TCP port (memcached's `-p`;
    /// its usual port is 11211). Off unless given.
    #[arg(long)]
    pub memcache_port: Option<u16>,
    /// Also serve memcached's protocols over UDP on this port, behind memcached's UDP frame
    /// header (memcached's `-U`). Off unless given, as in memcached since 1.5.6.
    #[arg(long)]
    pub memcache_udp_port: Option<u16>,
    /// memcached's item size limit (memcached's `-I`), header and key included: `1m` by
    /// default, between `1k` and `1g`.
    #[arg(long, value_parser = parse_memory)]
    pub memcache_max_item_size: Option<u64>,
    /// The memory limit, in Redis' units (`100mb`, `1gb`, `0` for none); past it keys are
    /// evicted by `--maxmemory-policy`.
    #[arg(long, value_parser = parse_memory)]
    pub maxmemory: Option<u64>,
    /// What to evict at the memory limit (Redis' names: noeviction, allkeys-lru,
    /// volatile-lru, allkeys-random, volatile-random, volatile-ttl).
    #[arg(long)]
    pub maxmemory_policy: Option<String>,
    /// Clients must `AUTH` with this password first.
    #[arg(long)]
    pub requirepass: Option<String>,
    /// Most clients connected at once.
    #[arg(long)]
    pub maxclients: Option<u64>,
    /// A configuration file in redis.conf syntax; flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// af_xdp: the interface, e.g. mlg-vb.
    #[arg(long)]
    pub interface: Option<String>,
    /// af_xdp: queues to serve, one engine each (default: all of the interface's queues).
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<u32>,
    /// af_xdp: how to attach the XDP program.
    #[arg(long, value_enum, default_value_t = melange_control::options::XdpAttach::Native)]
    pub xdp_mode: melange_control::options::XdpAttach,
    /// kernel: engines (one thread each; the kernel spreads connections over them).
    #[arg(long, default_value_t = 1)]
    pub engines: usize,
    /// Cores to pin engines to, e.g. `0,1`.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// Idle policy: spin, sleep, or sleep:N.
    #[arg(long, default_value = "sleep:1000")]
    pub idle: IdlePolicy,
    /// Most frames per engine pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// kernel: frames in each engine's pool.
    #[arg(long, default_value_t = 16_384)]
    pub pool_frames: usize,
    /// Stop after this long (default: run until SIGINT or SIGTERM).
    #[arg(long, value_parser = melange_control::options::parse_duration)]
    pub duration: Option<Duration>,
}

/// The settings `melange kv` runs with, from the file and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// RESP port.
    pub resp_port: u16,
    /// Address (kernel backend).
    pub bind: Option<Ipv4Addr>,
    /// `maxmemory` in bytes (0: none).
    pub maxmemory: u64,
    /// `maxmemory-policy`.
    pub policy: EvictionPolicy,
    /// `requirepass`.
    pub requirepass: Option<String>,
    /// `maxclients`.
    pub maxclients: u64,
    /// `timeout` in seconds.
    pub timeout_s: u64,
    /// `proto-max-bulk-len`.
    pub proto_max_bulk_len: u64,
    /// memcached's TCP port, if served.
    pub memcache_port: Option<u16>,
    /// memcached's UDP port, if served.
    pub memcache_udp_port: Option<u16>,
    /// memcached's item size limit.
    pub memcache_item_size_max: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            resp_port: 6379,
            bind: None,
            maxmemory: 0,
            policy: EvictionPolicy::NoEviction,
            requirepass: None,
            maxclients: 10_000,
            timeout_s: 0,
            proto_max_bulk_len: 512 * 1024 * 1024,
            memcache_port: None,
            memcache_udp_port: None,
            memcache_item_size_max: melange_kv::memcached::ITEM_SIZE_MAX,
        }
    }
}

/// Parses a memory size as Redis does: a number with an optional unit `k` (1000), `kb`
/// (1024), `m`, `mb`, `g`, `gb`, case-insensitive.
pub fn parse_memory(s: &str) -> Result<u64> {
    let text = s.trim().to_ascii_lowercase();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| {
        anyhow!(
            "memory size '{s}': expected a whole number with an optional unit, e.g. 100mb or 2gb"
        )
    })?;
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" => 1_000,
        "kb" => 1 << 10,
        "m" => 1_000_000,
        "mb" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" => 1 << 30,
        _ => bail!("memory size '{s}': unknown unit '{unit}' (Redis' units: k, kb, m, mb, g, gb)"),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| anyhow!("memory size '{s}' does not fit in 64 bits"))
}

fn parse_policy(name: &str) -> Result<EvictionPolicy> {
    EvictionPolicy::from_name(name.as_bytes()).ok_or_else(|| {
        let names: Vec<&str> = EvictionPolicy::ALL.iter().map(|(_, n)| *n).collect();
        anyhow!(
            "maxmemory-policy '{name}': not a policy this server offers; use one of {}",
            names.join(", ")
        )
    })
}

fn parse_number(directive: &str, value: &str) -> Result<u64> {
    value
        .parse()
        .map_err(|_| anyhow!("{directive} '{value}': expected a whole number"))
}

/// Directives accepted for compatibility that change nothing yet, with why.
const INERT_DIRECTIVES: &[(&str, &str)] = &[
    ("save", "there is no persistence yet"),
    ("appendonly", "there is no append-only file yet"),
    ("appendfsync", "there is no append-only file yet"),
    ("dir", "there is no persistence yet"),
    ("dbfilename", "there is no persistence yet"),
    ("daemonize", "run it under your service manager"),
    ("supervised", "run it under your service manager"),
    ("pidfile", "run it under your service manager"),
    ("logfile", "logs go to standard error"),
    ("loglevel", "use --log"),
    (
        "protected-mode",
        "the kernel backend binds 127.0.0.1 unless told otherwise",
    ),
    ("tcp-backlog", "the backlog is fixed"),
    ("tcp-keepalive", "keepalive is not configurable yet"),
    ("hz", "the maintenance timer runs at 10 Hz"),
    ("maxmemory-samples", "eviction samples 5 keys"),
    ("lazyfree-lazy-eviction", "frees are immediate"),
    ("lazyfree-lazy-expire", "frees are immediate"),
    ("lazyfree-lazy-server-del", "frees are immediate"),
];

/// Reads a redis.conf-style file into `settings`.
pub fn apply_config_file(settings: &mut Settings, text: &str, path: &str) -> Result<()> {
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let directive = words.next().unwrap_or_default().to_ascii_lowercase();
        let values: Vec<&str> = words.map(|w| w.trim_matches('"')).collect();
        let at = || format!("{path}:{}", number + 1);
        let one = || -> Result<&str> {
            match values.as_slice() {
                [v] => Ok(v),
                _ => Err(anyhow!(
                    "{}: '{directive}' takes one value, got {}",
                    at(),
                    values.len()
                )),
            }
        };
        match directive.as_str() {
            "port" => {
                settings.resp_port = parse_number("port", one()?)
                    .and_then(|p| u16::try_from(p).map_err(|_| anyhow!("port {p}: above 65535")))
                    .with_context(at)?;
            }
            "bind" => {
                // Redis binds every address listed; the kernel backend serves one.
                let first = values
                    .first()
                    .ok_or_else(|| anyhow!("{}: 'bind' needs an address", at()))?;
                let first = first.trim_start_matches('-');
                settings.bind = Some(first.parse().map_err(|_| {
                    anyhow!("{}: bind '{first}': not an IPv4 address", at())
                })?);
                if values.len() > 1 {
                    tracing::warn!("{}: bind lists several addresses; serving only {first}", at());
                }
            }
            "maxmemory" => settings.maxmemory = parse_memory(one()?).with_context(at)?,
            "maxmemory-policy" => settings.policy = parse_policy(one()?).with_context(at)?,
            "requirepass" => settings.requirepass = Some(one()?.to_string()),
            "maxclients" => settings.maxclients = parse_number("maxclients", one()?).with_context(at)?,
            "timeout" => settings.timeout_s = parse_number("timeout", one()?).with_context(at)?,
            "proto-max-bulk-len" => {
                settings.proto_max_bulk_len = parse_memory(one()?).with_context(at)?
            }
            "databases" => {
                if one()? != "16" {
                    bail!("{}: databases {}: this server has exactly 16", at(), one()?);
                }
            }
            other => match INERT_DIRECTIVES.iter().find(|(name, _)| *name == other) {
                Some((name, why)) => {
                    tracing::warn!("{}: '{name}' has no effect here: {why}", at());
                }
                None => bail!(
                    "{}: Bad directive or wrong number of arguments: '{other}' is not a setting melange kv knows",
                    at()
                ),
            },
        }
    }
    Ok(())
}

/// The settings from `--config` and the flags, checked.
pub fn settings(args: &KvArgs) -> Result<Settings> {
    let mut s = Settings::default();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        apply_config_file(&mut s, &text, &path.display().to_string())?;
    }
    if let Some(port) = args.resp_port {
        s.resp_port = port;
    }
    if let Some(addr) = args.addr {
        s.bind = Some(addr);
    }
    if let Some(m) = args.maxmemory {
        s.maxmemory = m;
    }
    if let Some(p) = &args.maxmemory_policy {
        s.policy = parse_policy(p)?;
    }
    if let Some(p) = &args.requirepass {
        s.requirepass = Some(p.clone());
    }
    if let Some(m) = args.maxclients {
        s.maxclients = m;
    }
    if let Some(port) = args.memcache_port {
        s.memcache_port = Some(port);
    }
    if let Some(port) = args.memcache_udp_port {
        s.memcache_udp_port = Some(port);
    }
    if let Some(size) = args.memcache_max_item_size {
        let range = melange_kv::memcached::ITEM_SIZE_MIN..=melange_kv::memcached::ITEM_SIZE_LIMIT;
        s.memcache_item_size_max = u32::try_from(size)
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| {
                anyhow!("--memcache-max-item-size {size}: memcached accepts 1k to 1g (its -I)")
            })?;
    }
    if s.memcache_port == Some(0) || s.memcache_udp_port == Some(0) {
        bail!("--memcache-port 0 / --memcache-udp-port 0: give a fixed port (memcached's is 11211), or leave the flag out");
    }
    if s.memcache_port == Some(s.resp_port) {
        bail!(
            "--memcache-port {0} is also the Redis port: give memcached its own (11211 is usual)",
            s.resp_port
        );
    }
    if s.resp_port == 0 {
        bail!("--resp-port 0: clients need a fixed port to find; Redis' is 6379");
    }
    if s.maxclients == 0 {
        bail!("--maxclients 0 would refuse every client; give e.g. 10000");
    }
    if s.requirepass.as_deref() == Some("") {
        bail!("--requirepass '': an empty password; leave it out to need none");
    }
    Ok(s)
}

fn validate(args: &KvArgs) -> Result<()> {
    check_engines(args.engines)?;
    check_cpus(&args.cpus)?;
    check_batch(args.batch)?;
    melange_control::options::check_range(
        "pool-frames",
        args.pool_frames,
        args.batch.max(64)..=crate::echo::POOL_FRAMES_MAX,
        "frames in each engine's pool",
    )?;
    if args.duration.is_some_and(|d| d.is_zero()) {
        bail!("--duration 0: leave it out to run until stopped, or give e.g. 10s");
    }
    if args.backend == Backend::AfXdp {
        if args.interface.is_none() {
            bail!("--backend af_xdp needs --interface (the lab's server side is mlg-vb in namespace mlg-b)");
        }
        if args.engines != 1 {
            bail!("--engines is for the kernel backend; on af_xdp there is one engine per queue (--queues)");
        }
    }
    Ok(())
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Descriptors kept beside the clients' on the kernel backend (listeners, epoll, eventfds,
/// logs), as redis-server's `CONFIG_MIN_RESERVED_FDS`.
pub const KV_RESERVED_FDS: u64 = 64;

/// On the kernel backend every client holds a descriptor: raises the open-files limit to fit
/// `maxclients`, and, where the hard limit does not allow it, lowers `maxclients` to what fits
/// with a warning that says how to raise it (redis-server does the same).
fn fit_open_files(maxclients: u64) -> u64 {
    let wanted = maxclients.saturating_add(KV_RESERVED_FDS);
    let now = match melange_sys::process::raise_open_files_limit(wanted) {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!("could not raise the open-files limit for {maxclients} clients: {e}");
            return maxclients;
        }
    };
    if now >= wanted {
        return maxclients;
    }
    let fits = now.saturating_sub(KV_RESERVED_FDS).max(1);
    tracing::warn!(
        "maxclients {maxclients} needs {wanted} open files but this process may open only {now}; \
         serving at most {fits} clients. Raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) \
         to serve more"
    );
    fits
}

/// memcached's settings from `settings`.
fn memcache_config(settings: &Settings) -> melange_kv::memcached::Config {
    melange_kv::memcached::Config {
        item_size_max: settings.memcache_item_size_max,
        max_connections: u32::try_from(settings.maxclients).unwrap_or(u32::MAX),
        tcp_port: settings.memcache_port.unwrap_or(0),
    }
}

/// The server every engine shares, set up from `settings`.
pub fn shared_server(settings: &Settings) -> SharedServer {
    let config = melange_kv::command::Config {
        requirepass: settings.requirepass.clone().map(String::into_bytes),
        proto_max_bulk_len: settings.proto_max_bulk_len,
        timeout_s: settings.timeout_s,
        maxclients: settings.maxclients,
    };
    let seed = melange_sys::random::bytes::<8>()
        .map(u64::from_le_bytes)
        .unwrap_or_else(|_| wall_clock_ms());
    let mut server = Server::new(config, wall_clock_ms(), seed);
    server.keyspace.maxmemory = usize::try_from(settings.maxmemory).unwrap_or(usize::MAX);
    server.keyspace.policy = settings.policy;
    Arc::new(Mutex::new(KvState::new(
        server,
        memcache_config(settings),
        std::process::id(),
    )))
}

/// What is served where, for logs and errors: `Redis on 127.0.0.1:6379, memcached on
/// 127.0.0.1:11211 (TCP)`.
fn served(settings: &Settings, ip: Ipv4Addr) -> String {
    let mut text = format!("Redis on {}", SocketAddrV4::new(ip, settings.resp_port));
    if let Some(port) = settings.memcache_port {
        text += &format!(", memcached on {} (TCP)", SocketAddrV4::new(ip, port));
    }
    if let Some(port) = settings.memcache_udp_port {
        text += &format!(", memcached on {} (UDP)", SocketAddrV4::new(ip, port));
    }
    text
}

/// Runs the service until stopped.
pub fn run(args: KvArgs) -> Result<()> {
    validate(&args)?;
    let mut settings = settings(&args)?;
    memcache_config(&settings)
        .check()
        .map_err(|e| anyhow!("memcached settings: {e}"))?;
    if args.backend == Backend::Kernel {
        settings.maxclients = fit_open_files(settings.maxclients);
    }
    let stop = crate::stop_signal(args.duration)?;
    let server = shared_server(&settings);
    let app = |engine: usize| {
        KvApp::new(
            KvConfig {
                resp_ports: vec![settings.resp_port],
                memcache_ports: settings.memcache_port.into_iter().collect(),
                memcache_udp_ports: settings.memcache_udp_port.into_iter().collect(),
                memcache: memcache_config(&settings),
                output_limit: KV_OUTPUT_LIMIT_DEFAULT,
                cron: engine == 0,
                wall_clock_ms,
            },
            Arc::clone(&server),
        )
    };
    let mut reports = Vec::new();
    match args.backend {
        Backend::Kernel => {
            let ip = settings.bind.unwrap_or(Ipv4Addr::LOCALHOST);
            let mut handles = Vec::new();
            for id in 0..args.engines {
                let shell = ShellConfig {
                    name: format!("kv-{id}"),
                    cpu: cpu_for(&args.cpus, id),
                    idle: args.idle,
                };
                let options = KernelOptions {
                    batch_max: args.batch,
                    ..KernelOptions::new(ip)
                };
                let pool = PoolConfig {
                    frame_count: args.pool_frames,
                    ..PoolConfig::default()
                };
                let engine = EngineConfig {
                    batch_max: args.batch,
                    ..EngineConfig::new(id)
                };
                handles.push(spawn_kernel_engine(
                    shell,
                    stop.clone(),
                    options,
                    engine,
                    pool,
                    app(id),
                )?);
            }
            tracing::info!(
                "kv: {} (kernel backend, {} engine(s))",
                served(&settings, ip),
                args.engines
            );
            for (id, handle) in handles.into_iter().enumerate() {
                let outcome = handle
                    .join()
                    .map_err(|_| anyhow!("engine {id} panicked"))?
                    .map_err(|e| anyhow!("engine {id}: {e}"))?;
                reports.push((id, outcome.app));
            }
        }
        Backend::AfXdp => {
            let interface = args.interface.clone().unwrap_or_default();
            let setup = server_setup(&ServerPlan {
                interface: interface.clone(),
                addr: settings.bind,
                flag: "--addr",
                port: settings.resp_port,
                tcp: true,
                queues: args.queues.clone(),
                batch: args.batch,
                cpus: args.cpus.clone(),
                idle: args.idle,
                mode: args.xdp_mode.into(),
            })?;
            let run = xdp::start(&setup, &stop, |engine, _| app(engine))?;
            // The setup steers the Redis port; memcached's get filters of their own.
            let mut more_ports = Vec::new();
            if let Some(port) = settings.memcache_port {
                more_ports.push(xdp::steer_port(&run.filters, true, port)?);
            }
            if let Some(port) = settings.memcache_udp_port {
                more_ports.push(xdp::steer_port(&run.filters, false, port)?);
            }
            tracing::info!(
                "kv: {} (af_xdp backend on {interface}, queues {:?})",
                served(&settings, setup.addr),
                run.queues
            );
            for (id, handle) in run.handles.into_iter().enumerate() {
                let outcome = handle
                    .join()
                    .map_err(|_| anyhow!("engine {id} panicked"))?
                    .map_err(|e| anyhow!("engine {id}: {e}"))?;
                if let Some(tcp) = outcome.transport.tcp_counters() {
                    tracing::info!("engine {id}: tcp {tcp:?}");
                }
                reports.push((id, outcome.app));
            }
            drop(more_ports);
            drop(run.filter);
            drop(run.filters);
        }
    }
    let mut failure = None;
    for (id, app) in &reports {
        if let Some(error) = app.listen_error() {
            stop.stop();
            failure.get_or_insert(format!(
                "engine {id}: cannot serve {}: {error}; stop the other server on that port (a redis-server or memcached?) or pick other ports with --resp-port, --memcache-port, --memcache-udp-port",
                served(&settings, settings.bind.unwrap_or(Ipv4Addr::LOCALHOST))
            ));
        }
        tracing::info!("engine {id}: {:?}", app.counters());
    }
    match failure {
        Some(message) => Err(anyhow!(message)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_read_as_redis_reads_them() {
        assert_eq!(parse_memory("0").unwrap(), 0);
        assert_eq!(parse_memory("100").unwrap(), 100);
        assert_eq!(parse_memory("1k").unwrap(), 1_000);
        assert_eq!(parse_memory("1kb").unwrap(), 1_024);
        assert_eq!(parse_memory("100MB").unwrap(), 100 << 20);
        assert_eq!(parse_memory("2g").unwrap(), 2_000_000_000);
        assert!(parse_memory("1tb").is_err());
        assert!(parse_memory("-1").is_err());
        assert!(parse_memory("99999999999gb").is_err());
    }

    #[test]
    fn a_redis_conf_sets_what_it_names_and_refuses_what_it_does_not_know() {
        let mut s = Settings::default();
        apply_config_file(
            &mut s,
            "# a comment\nport 7000\nbind 127.0.0.1 -::1\nmaxmemory 10mb\n\
             maxmemory-policy allkeys-lru\nrequirepass \"secret\"\nsave \"\"\nappendonly no\n",
            "test.conf",
        )
        .unwrap();
        assert_eq!(s.resp_port, 7000);
        assert_eq!(s.bind, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(s.maxmemory, 10 << 20);
        assert_eq!(s.policy, EvictionPolicy::AllKeysLru);
        assert_eq!(s.requirepass.as_deref(), Some("secret"));
        let error = apply_config_file(&mut s, "port 7000\nfrobnicate yes\n", "x.conf")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("x.conf:2") && error.contains("frobnicate"),
            "{error}"
        );
        let error =
            apply_config_file(&mut s, "maxmemory-policy allkeys-lfu\n", "x.conf").unwrap_err();
        assert!(format!("{error:#}").contains("allkeys-lru"), "{error:#}");
        assert!(apply_config_file(&mut s, "port 70000\n", "x.conf").is_err());
    }
}
