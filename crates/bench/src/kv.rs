//! `melange bench kv`: `melange kv` against redis-server, the same `redis-benchmark` load at
//! each, side by side in one run, on 127.0.0.1 with the kernel backend.
//!
//! Each repetition runs every server once per load, in an order that alternates between
//! repetitions (so drift on this noisy machine hits both alike), and reports the ratios
//! within the repetition; the summary is the median of those ratios, with the worst. Both
//! servers get one core (`--cpus` for Melange, `taskset` for redis-server, which is single
//! threaded for commands anyway), the client another. Server CPU per request is read from
//! `/proc/PID/stat` around each run, so an idle-spinning server would be charged for its
//! spinning: Melange runs with its default idle policy (sleep after 1,000 empty passes) so
//! the comparison is of work, not of polling.
//!
//! Over loopback, the kernel's TCP and the client are most of the cost of a request for both
//! servers, so this table shows what the engine design alone buys without kernel bypass; the
//! lab's af_xdp runs are the other half of the issue's table.
//!
//! The pieces are public because `melange demo` builds its table from them: [`KvProcess`]
//! starts a server at a [`Site`] (here on 127.0.0.1, or in the lab's mlg-b with melange kv on
//! AF_XDP), waits until it accepts from where the clients run and stops it when dropped;
//! [`measure_redis`] and [`measure_memcslap`] run the distribution's own load tools against
//! it and read its CPU around the run; [`missing_tools`] and [`install_hint`] say what to
//! install when a tool is missing, since nothing here installs anything itself.

use crate::table::{median, print_table};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `melange bench kv`.
#[derive(clap::Args, Debug, Clone)]
pub struct KvBenchArgs {
    /// Repetitions; medians of the per-repetition ratios are reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Requests per redis-benchmark run (`-n`).
    #[arg(long, default_value_t = 200_000)]
    pub requests: u64,
    /// Client connections (`-c`).
    #[arg(long, default_value_t = 50)]
    pub clients: u32,
    /// Value size (`-d`).
    #[arg(long, default_value_t = 32)]
    pub value_size: u32,
    /// Pipeline depths to measure (`-P`).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub pipeline: Vec<u32>,
    /// Tests (`-t`).
    #[arg(long, default_value = "set,get")]
    pub tests: String,
    /// Core of the servers.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: usize,
    /// Core of redis-benchmark.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: usize,
    /// First TCP port to use.
    #[arg(long, default_value_t = 16379)]
    pub port: u16,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A key-value server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KvServer {
    /// `redis-server` from the distribution.
    Redis,
    /// `memcached` from the distribution, one worker thread (`-t 1`).
    Memcached,
    /// `melange kv`: the kernel backend on 127.0.0.1, AF_XDP in the lab.
    Melange,
}

impl KvServer {
    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            KvServer::Redis => "redis-server",
            KvServer::Memcached => "memcached",
            KvServer::Melange => "melange kv",
        }
    }
}

/// Where a comparison runs: the servers, their clients, and the path between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Site {
    /// Everything in this namespace on 127.0.0.1; melange kv on the kernel backend.
    Loopback,
    /// The namespace lab: servers in mlg-b on 10.77.0.2, clients in mlg-a (10.77.0.1);
    /// melange kv on AF_XDP on mlg-vb, with Melange's own TCP.
    Lab,
}

/// The lab's server namespace, interface and address.
const LAB_SERVER_NS: &str = "mlg-b";
const LAB_SERVER_INTERFACE: &str = "mlg-vb";
const LAB_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The lab's client namespace.
const LAB_CLIENT_NS: &str = "mlg-a";

/// How long a server gets to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

impl Site {
    /// The address the servers listen on and the clients connect to.
    pub fn server_addr(self) -> Ipv4Addr {
        match self {
            Site::Loopback => Ipv4Addr::LOCALHOST,
            Site::Lab => LAB_SERVER_ADDR,
        }
    }

    /// `program`, pinned to `cpu` with taskset (which execs it, so the child's pid is the
    /// program's), in namespace `ns` when in the lab (`ip netns exec` execs too).
    fn command(self, ns: &str, cpu: usize, program: &OsStr) -> Command {
        let mut command = match self {
            Site::Loopback => Command::new("taskset"),
            Site::Lab => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "taskset"]);
                c
            }
        };
        command.args(["-c", &cpu.to_string()]).arg(program);
        command
    }

    /// A client program pinned to `cpu`, in the client's namespace when in the lab.
    pub fn client_command(self, cpu: usize, program: &str) -> Command {
        self.command(LAB_CLIENT_NS, cpu, OsStr::new(program))
    }

    /// Whether a TCP connection to `port` on the server's address completes from where the
    /// clients run.
    fn accepts(self, port: u16) -> bool {
        let to = std::net::SocketAddr::from((self.server_addr(), port));
        let connect = move || TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok();
        match self {
            Site::Loopback => connect(),
            // The namespace switch is the calling thread's, so it is made on a thread of its own.
            Site::Lab => std::thread::spawn(move || {
                melange_sys::netdev::enter_netns(LAB_CLIENT_NS).is_ok_and(|_guard| connect())
            })
            .join()
            .unwrap_or(false),
        }
    }
}

/// The ports a server is started with: RESP for redis-server and melange kv, memcached's for
/// memcached and (when given) melange kv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPorts {
    /// The RESP port.
    pub resp: Option<u16>,
    /// memcached's TCP port.
    pub memcache: Option<u16>,
}

/// A TCP port free on 127.0.0.1 now (the kernel's choice): a fixed port could be taken by
/// a test or another benchmark running beside this one.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("finding a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// A server process started for a measurement, its output in a log file. Stopped (SIGTERM,
/// then SIGKILL) when dropped, so no error path leaves one running; SIGTERM first because
/// melange kv on AF_XDP detaches its XDP program on the way out.
pub struct KvProcess {
    server: KvServer,
    child: Child,
    log: PathBuf,
    exited: bool,
}

impl KvProcess {
    /// Starts `server` at `site` on `ports`, pinned to `cpu`, and waits until every port
    /// accepts a connection from where the clients run.
    pub fn start(server: KvServer, site: Site, ports: KvPorts, cpu: usize) -> Result<Self> {
        let addr = site.server_addr().to_string();
        let need = |port: Option<u16>, what: &str| {
            port.ok_or_else(|| anyhow!("{} needs a {what} port", server.label()))
        };
        let mut command = match server {
            KvServer::Redis => {
                let port = need(ports.resp, "RESP")?;
                let mut c = site.command(LAB_SERVER_NS, cpu, OsStr::new("redis-server"));
                c.args(["--port", &port.to_string(), "--bind", &addr])
                    .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
                c
            }
            KvServer::Memcached => {
                let port = need(ports.memcache, "memcached")?;
                let mut c = site.command(LAB_SERVER_NS, cpu, OsStr::new("memcached"));
                c.args(["-l", &addr, "-p", &port.to_string(), "-U", "0", "-t", "1"]);
                // memcached refuses to run as root without a user to become.
                if melange_sys::testenv::is_root() {
                    c.args(["-u", "root"]);
                }
                c
            }
            KvServer::Melange => {
                let port = need(ports.resp, "RESP")?;
                let exe = std::env::current_exe().context("locating the melange binary")?;
                let mut c = site.command(LAB_SERVER_NS, cpu, exe.as_os_str());
                c.args(["kv", "--log", "warn", "--cpus", &cpu.to_string()])
                    .args(["--resp-port", &port.to_string()]);
                if let Some(port) = ports.memcache {
                    c.args(["--memcache-port", &port.to_string()]);
                }
                match site {
                    Site::Loopback => c.args(["--backend", "kernel", "--addr", &addr]),
                    // One engine on queue 0, on its one core: the caller steers every flow
                    // there with XPS on both veth ends ([`crate::lab_echo::SingleQueue`]).
                    // An engine per queue on the one core would time-share it, and an
                    // engine that sleeps or waits for its turn stalls its flows for a
                    // scheduler slice (milliseconds of p99).
                    Site::Lab => c.args(["--backend", "af_xdp", "--interface"]).args([
                        LAB_SERVER_INTERFACE,
                        "--queues",
                        "0",
                    ]),
                };
                c
            }
        };
        let log = std::env::temp_dir().join(format!(
            "melange-kv-bench-{}-{}.log",
            std::process::id(),
            server.label().replace(' ', "-")
        ));
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| {
                format!("starting {} (scripts/setup.sh installs it)", server.label())
            })?;
        let registered = register(child.id());
        let mut process = Self {
            server,
            child,
            log,
            exited: false,
        };
        if !registered {
            process.stop();
            bail!("stopping: {} not started", server.label());
        }
        let served = match server {
            KvServer::Redis => [ports.resp, None],
            KvServer::Memcached => [ports.memcache, None],
            KvServer::Melange => [ports.resp, ports.memcache],
        };
        for port in served.into_iter().flatten() {
            process.wait_accepting(site, port)?;
        }
        Ok(process)
    }

    fn wait_accepting(&mut self, site: Site, port: u16) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !site.accepts(port) {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = true;
                unregister(self.child.id());
                bail!(
                    "{} exited ({status}) before accepting on port {port}:\n{}",
                    self.server.label(),
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept on {}:{port} within {} s:\n{}",
                    self.server.label(),
                    site.server_addr(),
                    START_TIMEOUT.as_secs(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The server.
    pub fn server(&self) -> KvServer {
        self.server
    }

    /// The server's pid (taskset and `ip netns exec` exec it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's CPU time so far, user and system, ns (`/proc/PID/stat` utime + stime).
    pub fn cpu_ns(&self) -> Result<u64> {
        melange_sys::cpu::process_cpu_time_of(self.pid())
            .with_context(|| format!("reading the CPU time of {}", self.server.label()))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server (SIGTERM, SIGKILL after 3 s) and returns what it wrote.
    pub fn stop(&mut self) -> String {
        if !self.exited {
            let _ = melange_sys::process::terminate(self.child.id());
            let deadline = Instant::now() + STOP_TIMEOUT;
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
        }
        // Reaped now, so the pid can be reused: no signal may reach it through the registry.
        unregister(self.child.id());
        self.log_text()
    }
}

/// The [`KvProcess`]es running now (started and not yet reaped), for [`terminate_all`], and
/// whether it has been called: after that no server may start, so that a demo or benchmark
/// that is being stopped does not go on to its next server.
struct Running {
    pids: Vec<u32>,
    stopping: bool,
}

static RUNNING: std::sync::Mutex<Running> = std::sync::Mutex::new(Running {
    pids: Vec::new(),
    stopping: false,
});

fn running() -> std::sync::MutexGuard<'static, Running> {
    // A panic while holding the lock leaves the list whole (push and retain), so a poisoned
    // lock is used as it is.
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a started server; `false` once [`terminate_all`] has been called (the caller then
/// stops it). Checked under the lock that `terminate_all` takes, so no server can start
/// between its sweep and the flag.
fn register(pid: u32) -> bool {
    let mut running = running();
    if running.stopping {
        return false;
    }
    running.pids.push(pid);
    true
}

fn unregister(pid: u32) {
    running().pids.retain(|&p| p != pid);
}

/// Sends SIGTERM to every [`KvProcess`] running now and refuses to start any more: for a
/// SIGINT or SIGTERM handler, which cannot reach the guards on the main thread's stack. The
/// client running now then fails, the main thread unwinds through its guards (which reap the
/// servers) and anything else it holds (the lab).
pub fn terminate_all() {
    let mut running = running();
    running.stopping = true;
    for &pid in &running.pids {
        let _ = melange_sys::process::terminate(pid);
    }
}

/// Whether [`terminate_all`] has been called.
pub fn stopping() -> bool {
    running().stopping
}

impl Drop for KvProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// One redis-benchmark test on one server.
#[derive(Debug, Clone, Serialize)]
pub struct KvRun {
    /// The server.
    pub server: KvServer,
    /// The test (`SET`, `GET`).
    pub test: String,
    /// Pipeline depth.
    pub pipeline: u32,
    /// Requests per second, as redis-benchmark reports it.
    pub requests_per_s: f64,
    /// p50 latency, ms.
    pub p50_ms: f64,
    /// p99 latency, ms.
    pub p99_ms: f64,
    /// Server CPU per request, ns.
    pub server_cpu_ns_per_request: f64,
}

/// One redis-benchmark load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLoad {
    /// Requests per test (`-n`).
    pub requests: u64,
    /// Client connections (`-c`).
    pub clients: u32,
    /// Value size (`-d`).
    pub value_size: u32,
    /// Pipeline depth (`-P`).
    pub pipeline: u32,
    /// Tests (`-t`).
    pub tests: String,
}

/// Runs redis-benchmark with `load` from where the clients run (on `client_cpu`) against
/// `process` on `port`, and charges the server's CPU over the run to its tests in proportion
/// to their requests.
pub fn measure_redis(
    process: &KvProcess,
    site: Site,
    client_cpu: usize,
    port: u16,
    load: &RedisLoad,
) -> Result<Vec<KvRun>> {
    if stopping() {
        bail!("stopping: no more runs");
    }
    let server = process.server();
    let before = process.cpu_ns()?;
    let output = site
        .client_command(client_cpu, "redis-benchmark")
        .args(["-h", &site.server_addr().to_string()])
        .args(["-p", &port.to_string(), "--csv", "-r", "100000"])
        .args(["-n", &load.requests.to_string()])
        .args(["-c", &load.clients.to_string()])
        .args(["-d", &load.value_size.to_string()])
        .args(["-P", &load.pipeline.to_string()])
        .args(["-t", &load.tests])
        .output()
        .context("running redis-benchmark (scripts/setup.sh installs it)")?;
    let after = process.cpu_ns()?;
    if !output.status.success() {
        bail!(
            "redis-benchmark against {} failed: {}",
            server.label(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let csv = String::from_utf8_lossy(&output.stdout);
    let mut runs = parse_csv(&csv, server, load.pipeline)?;
    let total = load.requests as f64 * runs.len() as f64;
    for run in &mut runs {
        run.server_cpu_ns_per_request = (after - before) as f64 / total;
    }
    Ok(runs)
}

/// A memcslap test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MemcslapTest {
    /// `--test=get`: the keys are set first, then every thread gets them.
    Get,
    /// `--test=set`.
    Set,
}

impl MemcslapTest {
    /// memcslap's name of the test.
    pub fn name(self) -> &'static str {
        match self {
            MemcslapTest::Get => "get",
            MemcslapTest::Set => "set",
        }
    }
}

/// One memcslap load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemcslapLoad {
    /// The test.
    pub test: MemcslapTest,
    /// Threads, one connection and one request in flight each (`--concurrency`).
    pub concurrency: u32,
    /// Requests per thread (`--execute-number`); for `get` also the keys set beforehand.
    pub execute_number: u64,
}

/// What memcslap printed: the measured phase and the keys it loaded before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemcslapReport {
    /// Requests of the measured phase, over every thread.
    pub requests: u64,
    /// Its wall time, s (memcslap prints milliseconds).
    pub seconds: f64,
    /// Keys set before the measured phase (the `get` test's load), 0 if none.
    pub preloaded: u64,
}

/// Reads memcslap's report: `Time to get 20000 keys by 50 threads: 0.374 seconds.` is the
/// measured phase, `Time to set 400 keys: 0.051 seconds.` the load before it.
pub fn parse_memcslap(text: &str, test: MemcslapTest) -> Result<MemcslapReport> {
    let mut measured = None;
    let mut preloaded = 0;
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("Time to ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (Some(&op), Some(count)) = (words.first(), words.get(1)) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let seconds = words
            .iter()
            .rev()
            .skip_while(|w| !w.starts_with("second"))
            .nth(1)
            .and_then(|w| w.parse::<f64>().ok());
        if op == test.name() && words.contains(&"threads:") {
            measured = seconds.map(|seconds| (count, seconds));
        } else if op == "set" && test == MemcslapTest::Get && words.get(2) == Some(&"keys:") {
            preloaded = count;
        }
    }
    let (requests, seconds) =
        measured.ok_or_else(|| anyhow!("memcslap printed no {} results:\n{text}", test.name()))?;
    Ok(MemcslapReport {
        requests,
        seconds,
        preloaded,
    })
}

/// One memcslap run on one server.
#[derive(Debug, Clone, Serialize)]
pub struct MemcslapRun {
    /// The server.
    pub server: KvServer,
    /// The test.
    pub test: MemcslapTest,
    /// Requests per second of the measured phase.
    pub requests_per_s: f64,
    /// Server CPU per request, ns: the server's CPU over the whole run (the `get` test's
    /// load included) divided by every request it was sent.
    pub server_cpu_ns_per_request: f64,
}

/// Runs memcslap with `load` from where the clients run (on `client_cpu`) against `process`
/// on `port`.
pub fn measure_memcslap(
    process: &KvProcess,
    site: Site,
    client_cpu: usize,
    port: u16,
    load: &MemcslapLoad,
) -> Result<MemcslapRun> {
    if stopping() {
        bail!("stopping: no more runs");
    }
    let server = process.server();
    let before = process.cpu_ns()?;
    let output = site
        .client_command(client_cpu, "memcslap")
        .arg(format!("--servers={}:{port}", site.server_addr()))
        .arg(format!("--test={}", load.test.name()))
        .arg(format!("--concurrency={}", load.concurrency))
        .arg(format!("--execute-number={}", load.execute_number))
        .output()
        .context("running memcslap (scripts/setup.sh installs it)")?;
    let after = process.cpu_ns()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "memcslap against {} failed ({}): {text}{}",
            server.label(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report = parse_memcslap(&text, load.test)?;
    let requests = (report.requests + report.preloaded).max(1);
    Ok(MemcslapRun {
        server,
        test: load.test,
        requests_per_s: report.requests as f64 / report.seconds.max(1e-3),
        server_cpu_ns_per_request: (after - before) as f64 / requests as f64,
    })
}

/// The programs the comparisons run and the Debian packages that have them (the ones
/// scripts/setup.sh installs).
pub const TOOLS: [(&str, &str); 4] = [
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("memcached", "memcached"),
    ("memcslap", "libmemcached-tools"),
];

/// Whether `program` is an executable file in a directory of `PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Those of `programs` (names from [`TOOLS`]) that are not on `PATH`, with their packages.
pub fn missing_tools(programs: &[&str]) -> Vec<(&'static str, &'static str)> {
    TOOLS
        .iter()
        .copied()
        .filter(|(program, _)| programs.contains(program) && !on_path(program))
        .collect()
}

/// The command that installs `packages` (`sudo` first when not root).
pub fn install_command(packages: &[&str]) -> String {
    let sudo = if melange_sys::testenv::is_root() {
        ""
    } else {
        "sudo "
    };
    format!("{sudo}apt-get install -y {}", packages.join(" "))
}

/// "not installed: P, Q; install them with: apt-get install -y ..." for `missing`, as
/// [`missing_tools`] returns it. Nothing here installs anything: the user runs the command.
pub fn install_hint(missing: &[(&str, &str)]) -> String {
    let programs: Vec<&str> = missing.iter().map(|(program, _)| *program).collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    format!(
        "not installed: {}; install them with: {} (or run scripts/setup.sh)",
        programs.join(", "),
        install_command(&packages)
    )
}

fn run_one(args: &KvBenchArgs, server: KvServer, port: u16, pipeline: u32) -> Result<Vec<KvRun>> {
    let ports = KvPorts {
        resp: Some(port),
        memcache: None,
    };
    let process = KvProcess::start(server, Site::Loopback, ports, args.server_cpu)?;
    let load = RedisLoad {
        requests: args.requests,
        clients: args.clients,
        value_size: args.value_size,
        pipeline,
        tests: args.tests.clone(),
    };
    measure_redis(&process, Site::Loopback, args.client_cpu, port, &load)
}

/// Reads redis-benchmark's `--csv` output.
pub fn parse_csv(csv: &str, server: KvServer, pipeline: u32) -> Result<Vec<KvRun>> {
    let mut runs = Vec::new();
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        if fields.len() < 7 {
            continue;
        }
        let number = |i: usize| -> Result<f64> {
            fields[i]
                .parse()
                .map_err(|_| anyhow!("redis-benchmark CSV: '{}' in {line}", fields[i]))
        };
        runs.push(KvRun {
            server,
            test: fields[0].to_string(),
            pipeline,
            requests_per_s: number(1)?,
            p50_ms: number(4)?,
            p99_ms: number(6)?,
            server_cpu_ns_per_request: 0.0,
        });
    }
    if runs.is_empty() {
        bail!("redis-benchmark printed no results:\n{csv}");
    }
    Ok(runs)
}

/// The summary of one test at one depth: medians of the per-repetition ratios.
#[derive(Debug, Clone, Serialize)]
pub struct KvRow {
    /// Test.
    pub test: String,
    /// Pipeline depth.
    pub pipeline: u32,
    /// Median requests/s of redis-server.
    pub redis_rps: f64,
    /// Median requests/s of melange kv.
    pub melange_rps: f64,
    /// Median of melange/redis requests/s within each repetition.
    pub rps_ratio: f64,
    /// Lowest of those ratios.
    pub rps_ratio_worst: f64,
    /// Median of redis/melange CPU per request within each repetition (how many times less
    /// CPU melange uses).
    pub cpu_ratio: f64,
    /// Median server CPU-µs per request, redis-server.
    pub redis_cpu_us: f64,
    /// Median server CPU-µs per request, melange kv.
    pub melange_cpu_us: f64,
    /// Median p99, ms, redis-server and melange kv.
    pub p99_ms: (f64, f64),
}

/// Runs the benchmark and prints the table.
pub fn run(args: &KvBenchArgs) -> Result<Vec<KvRow>> {
    if args.reps == 0 || args.requests == 0 || args.clients == 0 || args.pipeline.is_empty() {
        bail!("--reps, --requests, --clients and --pipeline must be at least 1");
    }
    let missing = missing_tools(&["redis-server", "redis-benchmark"]);
    if !missing.is_empty() {
        bail!("{}", install_hint(&missing));
    }
    let mut all: Vec<(usize, KvRun)> = Vec::new();
    let mut port = args.port;
    for rep in 0..args.reps {
        for &pipeline in &args.pipeline {
            let order = if rep % 2 == 0 {
                [KvServer::Redis, KvServer::Melange]
            } else {
                [KvServer::Melange, KvServer::Redis]
            };
            for server in order {
                port = port.wrapping_add(1).max(1024);
                let runs = run_one(args, server, port, pipeline)?;
                for r in runs {
                    eprintln!(
                        "rep {rep} -P {pipeline} {:<20} {:<4} {:>10.0} req/s p99 {:.3} ms cpu {:.2} µs/req",
                        server.label(),
                        r.test,
                        r.requests_per_s,
                        r.p99_ms,
                        r.server_cpu_ns_per_request / 1e3
                    );
                    all.push((rep, r));
                }
            }
        }
    }
    let mut rows = Vec::new();
    let mut keys: Vec<(String, u32)> = all
        .iter()
        .map(|(_, r)| (r.test.clone(), r.pipeline))
        .collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    for (test, pipeline) in keys {
        let pick = |rep: usize, server: KvServer| {
            all.iter()
                .find(|(r, run)| {
                    *r == rep
                        && run.server == server
                        && run.test == test
                        && run.pipeline == pipeline
                })
                .map(|(_, run)| run.clone())
        };
        let mut rps_ratios = Vec::new();
        let mut cpu_ratios = Vec::new();
        let (mut rr, mut mr, mut rc, mut mc, mut rp, mut mp) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for rep in 0..args.reps {
            let (Some(redis), Some(melange)) =
                (pick(rep, KvServer::Redis), pick(rep, KvServer::Melange))
            else {
                continue;
            };
            rps_ratios.push(melange.requests_per_s / redis.requests_per_s.max(1.0));
            cpu_ratios
                .push(redis.server_cpu_ns_per_request / melange.server_cpu_ns_per_request.max(1.0));
            rr.push(redis.requests_per_s);
            mr.push(melange.requests_per_s);
            rc.push(redis.server_cpu_ns_per_request / 1e3);
            mc.push(melange.server_cpu_ns_per_request / 1e3);
            rp.push(redis.p99_ms);
            mp.push(melange.p99_ms);
        }
        let worst = rps_ratios.iter().copied().fold(f64::INFINITY, f64::min);
        rows.push(KvRow {
            test,
            pipeline,
            redis_rps: median(&mut rr),
            melange_rps: median(&mut mr),
            rps_ratio: median(&mut rps_ratios),
            rps_ratio_worst: worst,
            cpu_ratio: median(&mut cpu_ratios),
            redis_cpu_us: median(&mut rc),
            melange_cpu_us: median(&mut mc),
            p99_ms: (median(&mut rp), median(&mut mp)),
        });
    }
    println!(
        "melange kv vs redis-server, kernel backend on 127.0.0.1: redis-benchmark -c {} -d {} -n {}, servers on core {}, client on core {}, {} repetitions (medians of per-repetition ratios)",
        args.clients, args.value_size, args.requests, args.server_cpu, args.client_cpu, args.reps
    );
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.test.clone(),
                r.pipeline.to_string(),
                format!("{:.0}", r.redis_rps),
                format!("{:.0}", r.melange_rps),
                format!("x{:.2} (worst x{:.2})", r.rps_ratio, r.rps_ratio_worst),
                format!("{:.2}", r.redis_cpu_us),
                format!("{:.2}", r.melange_cpu_us),
                format!("x{:.2}", r.cpu_ratio),
                format!("{:.3} / {:.3}", r.p99_ms.0, r.p99_ms.1),
            ]
        })
        .collect();
    print_table(
        &[
            "test",
            "-P",
            "redis req/s",
            "melange req/s",
            "melange/redis",
            "redis cpu-µs/req",
            "melange cpu-µs/req",
            "cpu redis/melange",
            "p99 ms redis / melange",
        ],
        &table,
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_is_read() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"98039.22\",\"0.270\",\"0.064\",\"0.255\",\"0.383\",\"0.527\",\"1.231\"\n\
                   \"GET\",\"101010.10\",\"0.262\",\"0.072\",\"0.247\",\"0.367\",\"0.471\",\"0.943\"\n";
        let runs = parse_csv(csv, KvServer::Redis, 16).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].test, "GET");
        assert_eq!(runs[1].requests_per_s, 101010.10);
        assert_eq!((runs[0].p50_ms, runs[0].p99_ms), (0.255, 0.527));
        assert!(parse_csv("\"test\",\"rps\"\n", KvServer::Redis, 1).is_err());
    }

    /// memcslap 1.1 (libmemcached 1.1.4), as it printed against memcached 1.6.18.
    const MEMCSLAP_GET: &str = "\
Time to generate        400 test keys:                0.001 seconds.
Time to set             400 keys:                     0.051 seconds.
Time to start            50 threads:                  0.003 seconds.
--------------------------------------------------------------------
Time to get           20000 keys by   50 threads:     0.374 seconds.
--------------------------------------------------------------------
Time total:                                           0.429 seconds.
";
    const MEMCSLAP_SET: &str = "\
Time to generate        400 test keys:                0.001 seconds.
Time to start            50 threads:                  0.002 seconds.
--------------------------------------------------------------------
Time to set           20000 keys by   50 threads:     0.387 seconds.
--------------------------------------------------------------------
Time total:                                           0.390 seconds.
";

    #[test]
    fn memcslap_reports_are_read() {
        let get = parse_memcslap(MEMCSLAP_GET, MemcslapTest::Get).unwrap();
        assert_eq!(
            get,
            MemcslapReport {
                requests: 20_000,
                seconds: 0.374,
                preloaded: 400
            }
        );
        let set = parse_memcslap(MEMCSLAP_SET, MemcslapTest::Set).unwrap();
        assert_eq!(
            set,
            MemcslapReport {
                requests: 20_000,
                seconds: 0.387,
                preloaded: 0
            }
        );
        // A set report is no get result, and an error message is no report.
        assert!(parse_memcslap(MEMCSLAP_SET, MemcslapTest::Get).is_err());
        assert!(parse_memcslap("memcslap: connection refused\n", MemcslapTest::Set).is_err());
    }

    #[test]
    fn install_hint_names_programs_and_packages() {
        let hint = install_hint(&[
            ("memcached", "memcached"),
            ("memcslap", "libmemcached-tools"),
        ]);
        assert!(hint.starts_with("not installed: memcached, memcslap; install them with: "));
        assert!(
            hint.contains("apt-get install -y memcached libmemcached-tools"),
            "{hint}"
        );
        assert!(missing_tools(&["no-such-program"]).is_empty());
        assert!(!on_path("melange-no-such-program"));
    }
}
