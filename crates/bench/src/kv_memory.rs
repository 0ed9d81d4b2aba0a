//! `melange bench kv-memory`: the bytes one small key costs in `melange kv`, redis-server
//! and memcached, measured on the same key set in one run (issue 8, "Memory per key").
//!
//! # How it measures
//!
//! Each server is started fresh, one at a time, so no server's pages or allocator state
//! colour another's figure: redis-server 7 (no RDB, no AOF), memcached 1.6 (one worker
//! thread, no UDP, `-m` sized so that nothing is evicted), and `melange kv --backend kernel
//! --engines 1` (no memory limit), the last twice: loaded with `SET` over RESP, and loaded
//! through its memcached port with `set ... noreply`, since the two front ends store the same
//! entry and a difference between them would be a finding. Every server gets the same keys
//! (`key:%010d`, 14 bytes) and the same deterministic values.
//!
//! The load comes from a client in this process, not from `redis-benchmark` or `memcslap`:
//! those tools draw random keys (`-r`), so they neither load an exact count of distinct keys
//! nor say when the last write has been applied. Here one TCP connection carries every write,
//! pipelined in batches by a writer thread while the reader counts the replies, and the load
//! ends with a round trip (`PING`, or memcached's `version` after `noreply` sets), so when
//! it returns every key has been stored; a million keys take a few seconds.
//!
//! Memory is read twice, idle after start and after the load (the loading connection closed
//! and a short settle, so redis-server's incremental rehash and memcached's hash expansion
//! have finished): `VmRSS` and `RssAnon` from `/proc/PID/status`, and the server's own
//! accounting (`INFO memory` `used_memory` for the RESP servers, `stats` `bytes` for
//! memcached). The figure per key is the difference over the key count, so the binary, the
//! start-up allocations and the idle buffers cancel out. What does not cancel is everything
//! the load itself touched besides the keys (an allocator's retained free memory, receive
//! buffers, Melange's frame pool pages first touched by traffic): that is charged to the
//! keys, for every server alike, and is why the server-reported figure is printed beside RSS.
//! The keys are then verified (`DBSIZE`, memcached's `curr_items`, and sampled reads of
//! values), so a server that dropped or evicted keys cannot look small.
//!
//! Memory is deterministic enough that one repetition is the default; `--reps` repeats the
//! whole set and reports medians.

use crate::table::{median, print_table};
use anyhow::{anyhow, bail, Context, Result};
use melange_control::options::parse_duration;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Most keys a run may load (a hundred million keys is tens of GiB in any of the servers).
pub const KEYS_MAX: u64 = 100_000_000;
/// Largest value (memcached's default item limit is 1 MiB, header and key included).
pub const VALUE_SIZE_MAX: usize = 512 * 1024;
/// Most keys written per pipelined batch.
pub const BATCH_MAX: usize = 1_000_000;
/// Values read back from each server to check what it holds.
pub const SAMPLED_GETS: u64 = 16;
/// How long a server may take to answer after start.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one read from a server may take during the load or a query.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped server may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of the client's receive buffer.
const READ_BUFFER_BYTES: usize = 1 << 16;

/// Arguments of `melange bench kv-memory`.
#[derive(clap::Args, Debug, Clone)]
pub struct KvMemoryArgs {
    /// Keys to load into each server (`key:0000000000` and on).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Bytes of every value.
    #[arg(long, default_value_t = 32)]
    pub value_size: usize,
    /// Repetitions, every server started fresh in each; medians are reported.
    #[arg(long, default_value_t = 1)]
    pub reps: usize,
    /// Keys per pipelined batch on the loading connection.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Wait after start and after the load before memory is read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// The servers to measure, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "redis,memcached,melange-resp,melange-memcache"
    )]
    pub servers: Vec<Target>,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A server and the protocol it is loaded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// `redis-server`, loaded with `SET` over RESP.
    Redis,
    /// `memcached`, loaded with `set ... noreply`.
    Memcached,
    /// `melange kv`, loaded with `SET` over RESP.
    MelangeResp,
    /// `melange kv --memcache-port`, loaded with `set ... noreply` on that port.
    MelangeMemcache,
}

impl Target {
    /// The name in the table.
    pub fn label(self) -> &'static str {
        match self {
            Target::Redis => "redis-server (SET)",
            Target::Memcached => "memcached (set noreply)",
            Target::MelangeResp => "melange kv (SET)",
            Target::MelangeMemcache => "melange kv (memcached set noreply)",
        }
    }

    /// The protocol the keys are loaded (and read back) with.
    pub fn protocol(self) -> Protocol {
        match self {
            Target::Redis | Target::MelangeResp => Protocol::Resp,
            Target::Memcached | Target::MelangeMemcache => Protocol::Memcache,
        }
    }

    /// Whether this is one of Melange's rows (the others are the peers it is compared with).
    pub fn is_melange(self) -> bool {
        matches!(self, Target::MelangeResp | Target::MelangeMemcache)
    }

    fn program(self) -> &'static str {
        match self {
            Target::Redis => "redis-server",
            Target::Memcached => "memcached",
            Target::MelangeResp | Target::MelangeMemcache => "melange",
        }
    }
}

/// A wire protocol of the loading client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// Redis' RESP: `SET key value`, answered `+OK`.
    Resp,
    /// memcached's text protocol: `set key 0 0 len noreply`, answered by nothing.
    Memcache,
}

/// The key of index `i`: `key:` and ten digits, 14 bytes for every index below 10^10.
pub fn key_for(i: u64) -> String {
    format!("key:{i:010}")
}

/// Fills `out` with the value of key `i`: letters that shift with the index, so a value
/// read back under the wrong key is noticed.
pub fn fill_value(i: u64, out: &mut [u8]) {
    let shift = (i % 26) as usize;
    for (j, byte) in out.iter_mut().enumerate() {
        *byte = b'a' + ((shift + j) % 26) as u8;
    }
}

/// The value of key `i`, `size` bytes.
pub fn value_for(i: u64, size: usize) -> Vec<u8> {
    let mut value = vec![0; size];
    fill_value(i, &mut value);
    value
}

/// Appends the request that stores key `i` in `protocol` to `out`.
pub fn encode_store(protocol: Protocol, i: u64, value_size: usize, out: &mut Vec<u8>) {
    let key = key_for(i);
    // Writes into a Vec cannot fail.
    let _ = match protocol {
        Protocol::Resp => write!(
            out,
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${value_size}\r\n",
            key.len()
        ),
        Protocol::Memcache => write!(out, "set {key} 0 0 {value_size} noreply\r\n"),
    };
    let start = out.len();
    out.resize(start + value_size, 0);
    fill_value(i, &mut out[start..]);
    out.extend_from_slice(b"\r\n");
}

/// The indexes read back after a load: [`SAMPLED_GETS`] spread over the keys, the first and
/// the last among them.
pub fn sample_indexes(keys: u64) -> Vec<u64> {
    if keys == 0 {
        return Vec::new();
    }
    let mut indexes: Vec<u64> = (0..SAMPLED_GETS)
        .map(|n| n * (keys - 1) / (SAMPLED_GETS - 1))
        .collect();
    indexes.dedup();
    indexes
}

/// Bytes per key between two readings: `(after - before) / keys`, negative if memory fell.
pub fn per_key(before_bytes: u64, after_bytes: u64, keys: u64) -> f64 {
    (after_bytes as f64 - before_bytes as f64) / keys.max(1) as f64
}

/// memcached's `-m` (MiB) for `keys` items: twice a generous item size (its 56-byte header
/// with CAS, the key, the value, and the slab class rounding of up to 25% above it), so no
/// item is evicted. memcached takes its memory page by page as items arrive, so a large
/// limit costs nothing until used.
pub fn memcached_megabytes(keys: u64, key_len: usize, value_size: usize) -> u64 {
    let item_bytes = (56 + key_len as u64 + value_size as u64 + 8) * 5 / 4;
    (keys.saturating_mul(item_bytes).saturating_mul(2) >> 20).max(64)
}

/// The value of `field` in the text of `INFO` (`field:value` lines).
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.trim_end_matches('\r').split_once(':')?;
        (name == field).then_some(value)
    })
}

/// `INFO`'s `field` as a number.
pub fn info_number(info: &str, field: &str) -> Result<u64> {
    let value =
        info_field(info, field).ok_or_else(|| anyhow!("INFO has no '{field}' field:\n{info}"))?;
    value
        .parse()
        .map_err(|_| anyhow!("INFO '{field}:{value}': not a whole number"))
}

/// The `STAT name value` lines of a memcached `stats` reply up to its `END`.
pub fn parse_stats(text: &str) -> Result<Vec<(String, String)>> {
    let mut stats = Vec::new();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if line == "END" {
            return Ok(stats);
        }
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("STAT"), Some(name), Some(value)) => {
                stats.push((name.to_string(), value.to_string()))
            }
            _ => bail!("memcached stats: '{line}' is not a STAT line"),
        }
    }
    bail!("memcached stats: no END in:\n{text}")
}

/// The statistic `name` of a parsed `stats` reply as a number.
pub fn stat_number(stats: &[(String, String)], name: &str) -> Result<u64> {
    let (_, value) = stats
        .iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| anyhow!("memcached stats have no '{name}'"))?;
    value
        .parse()
        .map_err(|_| anyhow!("memcached stat {name} '{value}': not a whole number"))
}

/// Resident memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcMemory {
    /// `VmRSS`: every resident page, file-backed (the binary, shared libraries) included.
    pub vm_rss_bytes: u64,
    /// `RssAnon`: resident anonymous pages, the heap and the stacks.
    pub rss_anon_bytes: u64,
}

impl ProcMemory {
    /// Reads `VmRSS` and `RssAnon` (in kB) from the text of `/proc/PID/status`.
    pub fn parse(status: &str) -> Result<Self> {
        let kb = |field: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .ok_or_else(|| anyhow!("/proc/PID/status has no '{field}: N kB' line"))
        };
        Ok(Self {
            vm_rss_bytes: kb("VmRSS")?,
            rss_anon_bytes: kb("RssAnon")?,
        })
    }

    /// The memory of process `pid` now.
    pub fn of(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path} (has the server exited?)"))?;
        Self::parse(&text).with_context(|| format!("in {path}"))
    }
}

/// Memory at one moment: the kernel's view and the server's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemorySample {
    /// From `/proc/PID/status`.
    pub process: ProcMemory,
    /// What the server says it holds: `used_memory` (RESP servers) or `bytes` (memcached).
    pub reported_bytes: u64,
}

/// One server, loaded once.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// The server and how it was loaded.
    pub target: Target,
    /// The server's version, as it reports it.
    pub version: String,
    /// Keys loaded.
    pub keys: u64,
    /// Keys the server holds after the load (`DBSIZE`, or memcached's `curr_items`).
    pub keys_held: u64,
    /// Values read back and found equal to what was written.
    pub sampled_gets_ok: u64,
    /// Seconds the load took, from the first write to the final round trip's answer.
    pub load_s: f64,
    /// Idle, after start.
    pub before: MemorySample,
    /// After the load and the settle.
    pub after: MemorySample,
}

impl Measurement {
    /// `VmRSS` growth per key.
    pub fn rss_per_key(&self) -> f64 {
        let (b, a) = (self.before.process, self.after.process);
        per_key(b.vm_rss_bytes, a.vm_rss_bytes, self.keys)
    }
    /// `RssAnon` growth per key.
    pub fn rss_anon_per_key(&self) -> f64 {
        let (b, a) = (self.before.process, self.after.process);
        per_key(b.rss_anon_bytes, a.rss_anon_bytes, self.keys)
    }
    /// Growth of the server's own count per key.
    pub fn reported_per_key(&self) -> f64 {
        per_key(
            self.before.reported_bytes,
            self.after.reported_bytes,
            self.keys,
        )
    }
}

/// The medians of one server over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct KvMemoryRow {
    /// The server and how it was loaded.
    pub target: Target,
    /// Its label in the table.
    pub label: &'static str,
    /// Its version.
    pub version: String,
    /// Keys loaded (and held: every run checked that).
    pub keys: u64,
    /// Median load time, s.
    pub load_s: f64,
    /// Median idle `VmRSS`, bytes.
    pub rss_before_bytes: f64,
    /// Median loaded `VmRSS`, bytes.
    pub rss_after_bytes: f64,
    /// Median `VmRSS` growth per key, bytes.
    pub rss_per_key: f64,
    /// Median `RssAnon` growth per key, bytes.
    pub rss_anon_per_key: f64,
    /// Median server-reported bytes after the load.
    pub reported_after_bytes: f64,
    /// Median growth of the server-reported bytes per key.
    pub reported_per_key: f64,
    /// Every repetition.
    pub runs: Vec<Measurement>,
}

/// One of Melange's rows over one peer's.
#[derive(Debug, Clone, Serialize)]
pub struct KvMemoryRatio {
    /// Melange's row.
    pub melange: Target,
    /// The peer's.
    pub peer: Target,
    /// melange / peer, `VmRSS` per key.
    pub rss_per_key: f64,
    /// melange / peer, `RssAnon` per key.
    pub rss_anon_per_key: f64,
    /// melange / peer, server-reported bytes per key.
    pub reported_per_key: f64,
}

/// What `bench kv-memory` found.
#[derive(Debug, Clone, Serialize)]
pub struct KvMemoryResults {
    /// Keys per server.
    pub keys: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// Bytes per key name.
    pub key_size: usize,
    /// Repetitions.
    pub reps: usize,
    /// One row per server.
    pub rows: Vec<KvMemoryRow>,
    /// Melange's rows over the peers'.
    pub ratios: Vec<KvMemoryRatio>,
}

/// A port free on 127.0.0.1 now (the kernel picks it; it is released for the server).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A server under test, stopped (SIGTERM, then SIGKILL) when dropped.
struct Running {
    target: Target,
    child: Child,
    /// Its RESP port, for redis-server and melange kv.
    resp_port: Option<u16>,
    /// Its memcached port, for memcached and melange kv's memcached front end.
    memcache_port: Option<u16>,
    /// Its standard output and error.
    log: PathBuf,
}

impl Running {
    fn start(target: Target, args: &KvMemoryArgs) -> Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "melange-kv-memory-{}-{}.log",
            target.program(),
            std::process::id()
        ));
        let mut resp_port = None;
        let mut memcache_port = None;
        let mut command = match target {
            Target::Redis => {
                let port = free_port()?;
                resp_port = Some(port);
                let mut c = Command::new("redis-server");
                c.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--save", "", "--appendonly", "no"])
                    .args(["--protected-mode", "no"]);
                c
            }
            Target::Memcached => {
                let port = free_port()?;
                memcache_port = Some(port);
                let megabytes = memcached_megabytes(args.keys, key_for(0).len(), args.value_size);
                let mut c = Command::new("memcached");
                c.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"])
                    .args(["-t", "1", "-m", &megabytes.to_string()])
                    // memcached refuses to start as root without -u; it ignores -u otherwise.
                    .args(["-u", "root"]);
                c
            }
            Target::MelangeResp | Target::MelangeMemcache => {
                let exe = std::env::current_exe().context("locating the melange binary")?;
                let port = free_port()?;
                resp_port = Some(port);
                let mut c = Command::new(exe);
                c.args([
                    "kv",
                    "--backend",
                    "kernel",
                    "--engines",
                    "1",
                    "--log",
                    "warn",
                ])
                .args(["--resp-port", &port.to_string(), "--maxmemory", "0"]);
                if target == Target::MelangeMemcache {
                    let port = free_port()?;
                    memcache_port = Some(port);
                    c.args(["--memcache-port", &port.to_string()]);
                }
                c
            }
        };
        let file = std::fs::File::create(&log)
            .with_context(|| format!("creating the server log {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow!(
                        "{} is not installed: apt-get install -y redis-server memcached (or run scripts/setup.sh as root)",
                        target.program()
                    )
                } else {
                    anyhow!("starting {}: {e}", target.program())
                }
            })?;
        let mut running = Self {
            target,
            child,
            resp_port,
            memcache_port,
            log,
        };
        running.wait_until_answering()?;
        Ok(running)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of the server's log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until every port of the server answers a round trip.
    fn wait_until_answering(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited at start ({status}); its log ({}):\n{}",
                    self.target.program(),
                    self.log.display(),
                    self.log_tail()
                );
            }
            let resp_ok = self.resp_port.is_none_or(|port| {
                Client::connect(port)
                    .and_then(|mut c| c.resp(&[b"PING"]))
                    .is_ok_and(|r| r == Reply::Status("PONG".into()))
            });
            let memcache_ok = self
                .memcache_port
                .is_none_or(|port| Client::connect(port).and_then(|mut c| c.version()).is_ok());
            if resp_ok && memcache_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer on 127.0.0.1 (RESP port {:?}, memcached port {:?}) within {} s; its log ({}):\n{}",
                    self.target.program(),
                    self.resp_port,
                    self.memcache_port,
                    START_TIMEOUT.as_secs(),
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port the keys are loaded through.
    fn load_port(&self) -> u16 {
        let port = match self.target.protocol() {
            Protocol::Resp => self.resp_port,
            Protocol::Memcache => self.memcache_port,
        };
        port.expect("start gives every target a port for its protocol")
    }

    /// The server's version.
    fn version(&self) -> Result<String> {
        match self.target {
            Target::Redis => {
                let info = self.info("server")?;
                Ok(info_field(&info, "redis_version")
                    .unwrap_or("?")
                    .to_string())
            }
            Target::Memcached => {
                let mut client = Client::connect(self.load_port())?;
                client.version()
            }
            Target::MelangeResp | Target::MelangeMemcache => {
                Ok(env!("CARGO_PKG_VERSION").to_string())
            }
        }
    }

    fn info(&self, section: &str) -> Result<String> {
        let port = self.resp_port.expect("INFO is asked of RESP servers only");
        let mut client = Client::connect(port)?;
        match client.resp(&[b"INFO", section.as_bytes()])? {
            Reply::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text).into_owned()),
            other => bail!("{}: INFO {section} answered {other:?}", self.target.label()),
        }
    }

    fn stats(&self) -> Result<Vec<(String, String)>> {
        let port = self
            .memcache_port
            .expect("stats are asked of memcached ports only");
        Client::connect(port)?.stats()
    }

    /// The process's memory and the server's own count now.
    fn sample(&self) -> Result<MemorySample> {
        let reported_bytes = match self.target {
            Target::Memcached => stat_number(&self.stats()?, "bytes")?,
            _ => info_number(&self.info("memory")?, "used_memory")?,
        };
        Ok(MemorySample {
            process: ProcMemory::of(self.pid())?,
            reported_bytes,
        })
    }

    /// Checks that the server holds `keys` keys and that sampled values are what was
    /// written; returns the keys held and the values checked.
    fn verify(&self, keys: u64, value_size: usize) -> Result<(u64, u64)> {
        let label = self.target.label();
        let mut held = None;
        if let Some(port) = self.resp_port {
            match Client::connect(port)?.resp(&[b"DBSIZE"])? {
                Reply::Integer(n) => held = Some(n as u64),
                other => bail!("{label}: DBSIZE answered {other:?}"),
            }
        }
        if self.memcache_port.is_some() {
            let items = stat_number(&self.stats()?, "curr_items")?;
            if held.is_some_and(|n| n != items) {
                bail!("{label}: DBSIZE says {held:?} keys but curr_items says {items}");
            }
            held = Some(items);
        }
        let held = held.expect("every target has a RESP or a memcached port");
        if held != keys {
            bail!(
                "{label} holds {held} keys after loading {keys}: it dropped or evicted some (for memcached, raise -m; for melange kv, check --maxmemory)"
            );
        }
        let mut client = Client::connect(self.load_port())?;
        let mut checked = 0;
        for i in sample_indexes(keys) {
            let key = key_for(i);
            let got = match self.target.protocol() {
                Protocol::Resp => match client.resp(&[b"GET", key.as_bytes()])? {
                    Reply::Bulk(value) => value,
                    other => bail!("{label}: GET {key} answered {other:?}"),
                },
                Protocol::Memcache => client.get(&key)?,
            };
            let want = value_for(i, value_size);
            match got {
                Some(value) if value == want => checked += 1,
                Some(value) => bail!(
                    "{label}: {key} holds {:?}, not the {:?} that was written",
                    String::from_utf8_lossy(&value),
                    String::from_utf8_lossy(&want)
                ),
                None => bail!("{label}: {key} is missing after the load"),
            }
        }
        Ok((held, checked))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = melange_sys::process::terminate(self.child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A RESP reply, as far as this client needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`.
    Status(String),
    /// `-text`.
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` and n bytes, or `$-1` (nil).
    Bulk(Option<Vec<u8>>),
}

/// A blocking client connection for queries (not the load): one request, one reply.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("the server closed the connection");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Sends a RESP command and reads its reply.
    fn resp(&mut self, args: &[&[u8]]) -> Result<Reply> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&request)?;
        let line = self.line()?;
        let (kind, rest) = line.split_at(line.len().min(1));
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(
                rest.parse()
                    .map_err(|_| anyhow!("RESP integer reply '{line}'"))?,
            ),
            "$" => {
                let len: i64 = rest
                    .parse()
                    .map_err(|_| anyhow!("RESP bulk reply '{line}'"))?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut body = vec![0; len as usize + 2];
                    self.reader.read_exact(&mut body)?;
                    body.truncate(len as usize);
                    Reply::Bulk(Some(body))
                }
            }
            _ => bail!("unexpected RESP reply '{line}'"),
        })
    }

    /// memcached's `version`: the version it names.
    fn version(&mut self) -> Result<String> {
        self.writer.write_all(b"version\r\n")?;
        let line = self.line()?;
        line.strip_prefix("VERSION ")
            .map(str::to_string)
            .ok_or_else(|| anyhow!("memcached answered 'version' with '{line}'"))
    }

    /// memcached's `stats`.
    fn stats(&mut self) -> Result<Vec<(String, String)>> {
        self.writer.write_all(b"stats\r\n")?;
        let mut text = String::new();
        loop {
            let line = self.line()?;
            text.push_str(&line);
            text.push('\n');
            if line == "END" || line.contains("ERROR") {
                return parse_stats(&text);
            }
        }
    }

    /// memcached's `get`: the value, or `None` for a miss.
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        self.writer.write_all(format!("get {key}\r\n").as_bytes())?;
        let line = self.line()?;
        if line == "END" {
            return Ok(None);
        }
        let len: usize = line
            .strip_prefix("VALUE ")
            .and_then(|rest| rest.split(' ').nth(2))
            .and_then(|len| len.parse().ok())
            .ok_or_else(|| anyhow!("memcached answered 'get {key}' with '{line}'"))?;
        let mut body = vec![0; len + 2];
        self.reader.read_exact(&mut body)?;
        body.truncate(len);
        let end = self.line()?;
        if end != "END" {
            bail!("memcached: 'get {key}' ended with '{end}', not END");
        }
        Ok(Some(body))
    }
}

/// Stores keys `0..keys` on one pipelined connection to `port` and returns when the server
/// has answered the final round trip: a writer thread sends batches of `batch` requests
/// while this thread reads and checks every reply.
pub fn load(
    port: u16,
    protocol: Protocol,
    keys: u64,
    value_size: usize,
    batch: usize,
) -> Result<Duration> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("connecting to 127.0.0.1:{port} to load the keys"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let started = Instant::now();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(batch * (value_size + 64));
        let mut next = 0;
        while next < keys {
            buf.clear();
            let end = keys.min(next + batch as u64);
            for i in next..end {
                encode_store(protocol, i, value_size, &mut buf);
            }
            writer.write_all(&buf)?;
            next = end;
        }
        // The round trip after the last store: its answer comes after every store's.
        writer.write_all(match protocol {
            Protocol::Resp => b"PING\r\n",
            Protocol::Memcache => b"version\r\n",
        })
    });
    let outcome = read_load_replies(&stream, protocol, keys);
    if outcome.is_err() {
        // Unblocks the writer if the server stopped reading.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    let sent = sender
        .join()
        .map_err(|_| anyhow!("the loading thread panicked"))?;
    outcome?;
    sent.context("sending the stores")?;
    Ok(started.elapsed())
}

/// Reads the replies of a load: `keys` `+OK` and a `+PONG` (RESP), or only the `VERSION`
/// line (memcached, whose `noreply` stores answer nothing).
fn read_load_replies(stream: &TcpStream, protocol: Protocol, keys: u64) -> Result<()> {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    let mut line = Vec::new();
    let mut stored = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading replies after {stored} stores"))?;
        if n == 0 {
            bail!("the server closed the connection after {stored} of {keys} stores");
        }
        match (protocol, line.as_slice()) {
            (Protocol::Resp, b"+OK\r\n") => stored += 1,
            (Protocol::Resp, b"+PONG\r\n") if stored == keys => return Ok(()),
            (Protocol::Memcache, l) if l.starts_with(b"VERSION ") => return Ok(()),
            (_, l) => bail!(
                "unexpected reply after {stored} of {keys} stores: '{}'",
                String::from_utf8_lossy(l).trim_end()
            ),
        }
    }
}

/// Starts `target`, measures it idle, loads it, verifies it and measures it again.
fn measure(target: Target, args: &KvMemoryArgs) -> Result<Measurement> {
    let server = Running::start(target, args)?;
    let version = server.version()?;
    std::thread::sleep(args.settle);
    let before = server.sample()?;
    let load_time = load(
        server.load_port(),
        target.protocol(),
        args.keys,
        args.value_size,
        args.batch,
    )
    .with_context(|| format!("loading {} keys into {}", args.keys, target.label()))?;
    std::thread::sleep(args.settle);
    let (keys_held, sampled_gets_ok) = server.verify(args.keys, args.value_size)?;
    let after = server.sample()?;
    Ok(Measurement {
        target,
        version,
        keys: args.keys,
        keys_held,
        sampled_gets_ok,
        load_s: load_time.as_secs_f64(),
        before,
        after,
    })
}

fn check(args: &KvMemoryArgs) -> Result<()> {
    if args.keys == 0 || args.keys > KEYS_MAX {
        bail!("--keys {}: give 1 to {KEYS_MAX}", args.keys);
    }
    if args.value_size == 0 || args.value_size > VALUE_SIZE_MAX {
        bail!(
            "--value-size {}: give 1 to {VALUE_SIZE_MAX} bytes",
            args.value_size
        );
    }
    if args.batch == 0 || args.batch > BATCH_MAX {
        bail!("--batch {}: give 1 to {BATCH_MAX} keys", args.batch);
    }
    if args.reps == 0 {
        bail!("--reps 0: give at least 1");
    }
    if args.servers.is_empty() {
        bail!("--servers: name at least one of redis, memcached, melange-resp, melange-memcache");
    }
    Ok(())
}

fn summarize(target: Target, runs: Vec<Measurement>) -> KvMemoryRow {
    let med = |f: &dyn Fn(&Measurement) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    KvMemoryRow {
        target,
        label: target.label(),
        version: runs.first().map(|m| m.version.clone()).unwrap_or_default(),
        keys: runs.first().map_or(0, |m| m.keys),
        load_s: med(&|m| m.load_s),
        rss_before_bytes: med(&|m| m.before.process.vm_rss_bytes as f64),
        rss_after_bytes: med(&|m| m.after.process.vm_rss_bytes as f64),
        rss_per_key: med(&Measurement::rss_per_key),
        rss_anon_per_key: med(&Measurement::rss_anon_per_key),
        reported_after_bytes: med(&|m| m.after.reported_bytes as f64),
        reported_per_key: med(&Measurement::reported_per_key),
        runs,
    }
}

/// Melange's rows over each peer's, per-key figure by per-key figure.
pub fn ratios(rows: &[KvMemoryRow]) -> Vec<KvMemoryRatio> {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let mut out = Vec::new();
    for ours in rows.iter().filter(|r| r.target.is_melange()) {
        for peer in rows.iter().filter(|r| !r.target.is_melange()) {
            out.push(KvMemoryRatio {
                melange: ours.target,
                peer: peer.target,
                rss_per_key: ratio(ours.rss_per_key, peer.rss_per_key),
                rss_anon_per_key: ratio(ours.rss_anon_per_key, peer.rss_anon_per_key),
                reported_per_key: ratio(ours.reported_per_key, peer.reported_per_key),
            });
        }
    }
    out
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / f64::from(1 << 20))
}

/// Prints the results as two tables: bytes per server, then Melange over the peers.
pub fn print_results(results: &KvMemoryResults) {
    println!(
        "memory per key: {} keys of {} bytes, values of {} bytes, each server fresh, loaded over one pipelined connection; {} repetition(s), medians",
        results.keys, results.key_size, results.value_size, results.reps
    );
    let rows: Vec<Vec<String>> = results
        .rows
        .iter()
        .map(|r| {
            vec![
                r.label.to_string(),
                r.version.clone(),
                r.keys.to_string(),
                format!("{:.2}", r.load_s),
                mib(r.rss_before_bytes),
                mib(r.rss_after_bytes),
                format!("{:.1}", r.rss_per_key),
                format!("{:.1}", r.rss_anon_per_key),
                mib(r.reported_after_bytes),
                format!("{:.1}", r.reported_per_key),
            ]
        })
        .collect();
    print_table(
        &[
            "server",
            "version",
            "keys",
            "load s",
            "RSS idle MiB",
            "RSS loaded MiB",
            "RSS B/key",
            "RssAnon B/key",
            "reported MiB",
            "reported B/key",
        ],
        &rows,
    );
    if results.ratios.is_empty() {
        return;
    }
    println!("melange / peer, bytes per key:");
    let label = |t: Target| t.label().to_string();
    let rows: Vec<Vec<String>> = results
        .ratios
        .iter()
        .map(|r| {
            vec![
                label(r.melange),
                label(r.peer),
                format!("x{:.2}", r.rss_per_key),
                format!("x{:.2}", r.rss_anon_per_key),
                format!("x{:.2}", r.reported_per_key),
            ]
        })
        .collect();
    print_table(&["melange", "peer", "RSS", "RssAnon", "reported"], &rows);
}

/// Runs the benchmark, prints its tables and writes `--json`.
pub fn run(args: &KvMemoryArgs) -> Result<KvMemoryResults> {
    check(args)?;
    let mut runs: Vec<Vec<Measurement>> = vec![Vec::new(); args.servers.len()];
    for rep in 0..args.reps {
        for (i, &target) in args.servers.iter().enumerate() {
            let m = measure(target, args)
                .with_context(|| format!("{}, repetition {rep}", target.label()))?;
            eprintln!(
                "rep {rep} {:<36} {} keys in {:.2} s, RSS {} -> {} MiB ({:.1} B/key), reported {:.1} B/key, {} sampled values ok",
                target.label(),
                m.keys_held,
                m.load_s,
                mib(m.before.process.vm_rss_bytes as f64),
                mib(m.after.process.vm_rss_bytes as f64),
                m.rss_per_key(),
                m.reported_per_key(),
                m.sampled_gets_ok
            );
            runs[i].push(m);
        }
    }
    let rows: Vec<KvMemoryRow> = args
        .servers
        .iter()
        .zip(runs)
        .map(|(&target, runs)| summarize(target, runs))
        .collect();
    let results = KvMemoryResults {
        keys: args.keys,
        value_size: args.value_size,
        key_size: key_for(0).len(),
        reps: args.reps,
        ratios: ratios(&rows),
        rows,
    };
    print_results(&results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_from_crlf_lines() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
                    used_memory_rss:5000\r\nmaxmemory:0\r\n\r\n";
        assert_eq!(info_field(info, "used_memory"), Some("1048576"));
        assert_eq!(info_field(info, "used_memory_rss"), Some("5000"));
        assert_eq!(info_number(info, "used_memory").unwrap(), 1_048_576);
        assert!(info_number(info, "used_memory_human").is_err());
        assert!(info_number(info, "used_memory_peak").is_err());
        assert_eq!(info_field(info, "# Memory"), None);
    }

    #[test]
    fn memcached_stats_are_read_up_to_end() {
        let text = "STAT pid 123\r\nSTAT version 1.6.18\r\nSTAT rusage_user 0.012000\r\n\
                    STAT bytes 115000000\r\nSTAT curr_items 1000000\r\nEND\r\n";
        let stats = parse_stats(text).unwrap();
        assert_eq!(stats.len(), 5);
        assert_eq!(stat_number(&stats, "curr_items").unwrap(), 1_000_000);
        assert_eq!(stat_number(&stats, "bytes").unwrap(), 115_000_000);
        assert!(stat_number(&stats, "rusage_user").is_err());
        assert!(stat_number(&stats, "evictions").is_err());
        assert!(parse_stats("STAT pid 1\r\n").is_err());
        assert!(parse_stats("ERROR\r\n").is_err());
    }

    #[test]
    fn proc_status_gives_rss_and_anonymous_rss_in_bytes() {
        let status = "Name:\tredis-server\nVmPeak:\t  100000 kB\nVmRSS:\t    8192 kB\n\
                      RssAnon:\t    2048 kB\nRssFile:\t    6144 kB\n";
        let memory = ProcMemory::parse(status).unwrap();
        assert_eq!(memory.vm_rss_bytes, 8192 * 1024);
        assert_eq!(memory.rss_anon_bytes, 2048 * 1024);
        assert!(ProcMemory::parse("Name:\tx\nVmRSS:\t1 kB\n").is_err());
        let me = ProcMemory::of(std::process::id()).unwrap();
        assert!(me.vm_rss_bytes >= me.rss_anon_bytes && me.rss_anon_bytes > 0);
    }

    #[test]
    fn bytes_per_key_are_the_growth_over_the_keys() {
        assert_eq!(per_key(10 << 20, 110 << 20, 1 << 20), 100.0);
        assert_eq!(per_key(2000, 1000, 10), -100.0);
        assert_eq!(per_key(0, 0, 0), 0.0);
        let sample = |rss: u64, anon: u64, reported: u64| MemorySample {
            process: ProcMemory {
                vm_rss_bytes: rss,
                rss_anon_bytes: anon,
            },
            reported_bytes: reported,
        };
        let m = Measurement {
            target: Target::MelangeResp,
            version: "0".into(),
            keys: 1000,
            keys_held: 1000,
            sampled_gets_ok: 16,
            load_s: 0.1,
            before: sample(8_000_000, 1_000_000, 500),
            after: sample(8_300_000, 1_250_000, 200_500),
        };
        assert_eq!(m.rss_per_key(), 300.0);
        assert_eq!(m.rss_anon_per_key(), 250.0);
        assert_eq!(m.reported_per_key(), 200.0);
        let mut redis = m.clone();
        redis.target = Target::Redis;
        redis.after = sample(8_100_000, 1_100_000, 100_500);
        let rows = vec![
            summarize(Target::Redis, vec![redis]),
            summarize(Target::MelangeResp, vec![m]),
        ];
        let r = ratios(&rows);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].melange, r[0].peer),
            (Target::MelangeResp, Target::Redis)
        );
        assert_eq!(
            (
                r[0].rss_per_key,
                r[0].rss_anon_per_key,
                r[0].reported_per_key
            ),
            (3.0, 2.5, 2.0)
        );
    }

    #[test]
    fn requests_carry_the_key_and_its_deterministic_value() {
        assert_eq!(key_for(7), "key:0000000007");
        assert_eq!(key_for(999_999).len(), 14);
        assert_eq!(value_for(0, 4), b"abcd");
        assert_eq!(value_for(1, 4), b"bcde");
        assert_eq!(value_for(25, 3), b"zab");
        let mut out = Vec::new();
        encode_store(Protocol::Resp, 1, 4, &mut out);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$14\r\nkey:0000000001\r\n$4\r\nbcde\r\n"
        );
        out.clear();
        encode_store(Protocol::Memcache, 2, 3, &mut out);
        assert_eq!(out, b"set key:0000000002 0 0 3 noreply\r\ncde\r\n");
    }

    #[test]
    fn samples_span_the_keys_and_memcached_gets_room() {
        let s = sample_indexes(1_000_000);
        assert_eq!(s.len(), SAMPLED_GETS as usize);
        assert_eq!((s[0], *s.last().unwrap()), (0, 999_999));
        assert_eq!(sample_indexes(1), vec![0]);
        assert_eq!(sample_indexes(3), vec![0, 1, 2]);
        assert!(sample_indexes(0).is_empty());
        // A million 14-byte keys with 32-byte values: ~150 MB of items, twice that allowed.
        let mb = memcached_megabytes(1_000_000, 14, 32);
        assert!((250..400).contains(&mb), "{mb}");
        assert_eq!(memcached_megabytes(10, 14, 32), 64);
    }
}
