//! `melange demo`: the README's first command, melange kv side by side with redis-server and
//! memcached.
//!
//! The demo answers the question a newcomer asks first: is this faster than what I run
//! today? So it runs the servers people run today, unmodified, with their own load tools
//! (redis-benchmark for Redis, memcslap for memcached), and the same tool at the same load
//! against melange kv's RESP and memcached ports. A load generator of Melange's own would
//! be faster to drive and easier to parse, but a table it printed could be suspected of
//! measuring what Melange happens to be good at; the distribution's clients cannot.
//!
//! As root it brings up the namespace lab (threaded NAPI, each host's receive work on its own
//! core) and runs every server in mlg-b pinned to cpu 0, melange kv on AF_XDP with Melange's
//! own TCP and the others on the kernel's, with the clients in mlg-a on cpu 1: the two-host
//! setup the project is about. A lab this demo created is taken down at the end, one that
//! was already there is left as it was. Without root (or with `--no-lab`) it says so and runs
//! the same comparison on 127.0.0.1 with melange kv on the kernel backend, where the kernel's
//! TCP is most of the cost on both sides and the table shows the engine alone.
//!
//! The peers run first (redis-server and memcached together, neither loaded while the other
//! is measured), then melange kv serving both protocols; each server's CPU is read from
//! `/proc/PID/stat` (user + system) around each client run, and melange kv idles by sleeping,
//! so an idle server is not charged for polling. In the lab the veth's receive work runs in
//! NAPI threads that are charged to no server, the same for all of them.
//!
//! It installs nothing. A missing tool is named with the command that installs it, and the
//! comparisons that need it are left out; if none is left, the demo fails with that message.
//! Every server it starts is stopped when the demo ends, by error or not (the processes are
//! guards that stop them on drop).
//!
//! `melange demo --echo` runs the demo of the UDP echo engine that came before melange kv:
//! echo on AF_XDP against the Linux baseline and a raw AF_XDP echo in the lab, or against the
//! Linux baseline on 127.0.0.1 on the kernel backend.

use anyhow::{bail, Context, Result};
use melange_bench::kv::{
    self, KvPorts, KvProcess, KvServer, MemcslapLoad, MemcslapTest, RedisLoad, Site,
};
use melange_bench::table::print_table;
use melange_bench::{self as bench, EchoRunArgs, KernelEchoArgs, LabEchoArgs};
use melange_control::options::parse_duration;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `melange demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Requests per client run: redis-benchmark's `-n` for each of SET and GET, memcslap's
    /// total over its threads.
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    /// Skip the lab even when it could be built: kernel backend on 127.0.0.1 only.
    #[arg(long)]
    pub no_lab: bool,
    /// Run the UDP echo demo instead (echo on Melange against the Linux baseline).
    #[arg(long)]
    pub echo: bool,
    /// With --echo: measured time per run.
    #[arg(long, default_value = "2s", value_parser = parse_duration, requires = "echo")]
    pub duration: Duration,
    /// With --echo: repetitions per measurement (medians are shown).
    #[arg(long, default_value_t = 1, requires = "echo")]
    pub reps: usize,
}

/// The client connections of every run (redis-benchmark's `-c`, memcslap's `--concurrency`).
const CLIENTS: u32 = 50;
/// redis-benchmark's value size (`-d`).
const VALUE_SIZE: u32 = 32;
/// redis-benchmark's pipeline depths: one request in flight per connection, then sixteen.
const PIPELINES: [u32; 2] = [1, 16];
/// memcslap's tests.
const MEMCSLAP_TESTS: [MemcslapTest; 2] = [MemcslapTest::Get, MemcslapTest::Set];
/// The cores of the servers and of the clients.
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<()> {
    if args.echo {
        run_echo(args)
    } else {
        run_kv(&args)
    }
}

/// Whether any part of the lab exists now (a namespace of it), as `lab status` reports.
fn lab_exists(exe: &std::path::Path) -> bool {
    let Ok(out) = Command::new(exe).args(["lab", "status", "--json"]).output() else {
        return false;
    };
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    status["namespaces"]
        .as_array()
        .is_some_and(|list| list.iter().any(|ns| ns["exists"] == true))
}

/// The lab while the demo uses it: taken down when dropped if the demo created it, left as
/// it was otherwise.
struct LabInUse {
    exe: std::path::PathBuf,
    existed: bool,
}

impl Drop for LabInUse {
    fn drop(&mut self) {
        if self.existed {
            println!(
                "(the lab existed before the demo and is left up: `melange lab down` removes it)"
            );
            return;
        }
        match Command::new(&self.exe).args(["lab", "down"]).output() {
            Ok(down) if !down.status.success() => {
                eprintln!("lab down failed: {}", String::from_utf8_lossy(&down.stderr));
            }
            Err(e) => eprintln!("lab down failed: {e}"),
            Ok(_) => {}
        }
    }
}

/// Brings the lab up (threaded NAPI) unless `--no-lab`; `Err` carries why it could not, for
/// the message that the demo runs on 127.0.0.1 instead.
fn lab_up(exe: &std::path::Path) -> Result<LabInUse, String> {
    // A lab that is already there (with whatever runs in it) is used and left as it was;
    // only a lab this demo creates is taken down again.
    let existed = lab_exists(exe);
    let up = Command::new(exe)
        .args(["lab", "up", "--napi", "threaded"])
        .output()
        .map_err(|e| format!("running melange lab up: {e}"))?;
    if up.status.success() {
        return Ok(LabInUse {
            exe: exe.to_path_buf(),
            existed,
        });
    }
    let stderr = String::from_utf8_lossy(&up.stderr);
    // The reason is anyhow's first line ("Error: ..."), never a backtrace line after it.
    Err(stderr
        .lines()
        .find_map(|line| line.strip_prefix("Error: "))
        .unwrap_or("melange lab up failed")
        .to_string())
}

/// One measurement of one server under one load.
#[derive(Debug, Clone, Copy)]
struct Measured {
    requests_per_s: f64,
    /// p99 latency, ms, when the client reports it (redis-benchmark does, memcslap not).
    p99_ms: Option<f64>,
    server_cpu_ns_per_request: f64,
}

/// A row of the table: one load on the peer and on melange kv.
struct Row {
    load: String,
    peer: KvServer,
    peer_run: Measured,
    melange_run: Option<Measured>,
}

/// The comparisons the installed tools allow, and what is missing for the others.
struct Plan {
    redis: bool,
    memcached: bool,
}

fn plan() -> Result<Plan> {
    let redis = kv::missing_tools(&["redis-server", "redis-benchmark"]);
    let memcached = kv::missing_tools(&["memcached", "memcslap"]);
    let missing: Vec<_> = redis.iter().chain(&memcached).copied().collect();
    let plan = Plan {
        redis: redis.is_empty(),
        memcached: memcached.is_empty(),
    };
    if !plan.redis && !plan.memcached {
        bail!(
            "the demo compares melange kv with redis-server and memcached, and {}",
            kv::install_hint(&missing)
        );
    }
    if !missing.is_empty() {
        let skipped = if plan.redis {
            "memcached"
        } else {
            "redis-server"
        };
        println!(
            "The {skipped} comparison is left out: {}.\n",
            kv::install_hint(&missing)
        );
    }
    Ok(plan)
}

/// Runs every load of `plan` against `process`, appending a row per load (`peer` rows) or
/// filling in melange kv's side of the rows already there.
fn measure(
    process: &KvProcess,
    site: Site,
    ports: KvPorts,
    requests: u64,
    loads: Loads,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let server = process.server();
    let mut record = |load: String, peer: KvServer, run: Measured| {
        eprintln!(
            "  {:<12} {load:<27} {:>9.0} req/s  {:>6.2} cpu-µs/req",
            server.label(),
            run.requests_per_s,
            run.server_cpu_ns_per_request / 1e3
        );
        if server == KvServer::Melange {
            if let Some(row) = rows.iter_mut().find(|r| r.load == load) {
                row.melange_run = Some(run);
            }
        } else {
            rows.push(Row {
                load,
                peer,
                peer_run: run,
                melange_run: None,
            });
        }
    };
    if let (true, Some(port)) = (loads.redis, ports.resp) {
        for pipeline in PIPELINES {
            let load = RedisLoad {
                requests,
                clients: CLIENTS,
                value_size: VALUE_SIZE,
                pipeline,
                tests: "set,get".to_string(),
            };
            for run in kv::measure_redis(process, site, CLIENT_CPU, port, &load)? {
                record(
                    format!("redis-benchmark {} -P {pipeline}", run.test),
                    KvServer::Redis,
                    Measured {
                        requests_per_s: run.requests_per_s,
                        p99_ms: Some(run.p99_ms),
                        server_cpu_ns_per_request: run.server_cpu_ns_per_request,
                    },
                );
            }
        }
    }
    if let (true, Some(port)) = (loads.memcached, ports.memcache) {
        for test in MEMCSLAP_TESTS {
            let load = MemcslapLoad {
                test,
                concurrency: CLIENTS,
                execute_number: (requests / u64::from(CLIENTS)).max(1),
            };
            let run = kv::measure_memcslap(process, site, CLIENT_CPU, port, &load)?;
            record(
                format!("memcslap {}", test.name()),
                KvServer::Memcached,
                Measured {
                    requests_per_s: run.requests_per_s,
                    p99_ms: None,
                    server_cpu_ns_per_request: run.server_cpu_ns_per_request,
                },
            );
        }
    }
    Ok(())
}

/// Which protocols a [`measure`] call loads.
#[derive(Debug, Clone, Copy)]
struct Loads {
    redis: bool,
    memcached: bool,
}

/// Runs the key-value demo.
fn run_kv(args: &DemoArgs) -> Result<()> {
    if args.requests < u64::from(CLIENTS) {
        bail!("--requests must be at least {CLIENTS}, one per client connection");
    }
    let plan = plan()?;
    // SIGINT or SIGTERM (a person's Ctrl-C, a CI timeout) stops the servers, so the client
    // running now fails and the demo unwinds through its guards: the lab it created is taken
    // down and nothing it started is left running. A second signal ends the demo at once
    // (while it waits for the lab lock, say, where there is nothing to stop). The flag guards
    // no other data, so Relaxed is enough on both sides.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = Arc::clone(&interrupted);
        ctrlc::set_handler(move || {
            if interrupted.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
            eprintln!("stopping the servers (again to quit at once)");
            kv::terminate_all();
        })
        .context("installing the SIGINT/SIGTERM handler")?;
    }
    let result = compare(args, &plan);
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted: every server the demo started has been stopped");
    }
    result
}

/// Runs the key-value comparisons `plan` allows and prints the table.
fn compare(args: &DemoArgs, plan: &Plan) -> Result<()> {
    let exe = std::env::current_exe()?;
    // The lab lock first, so that a lab test or benchmark running now is not disturbed
    // (`None` when a lab test that runs this demo holds it already).
    // Declared before the lab, so dropped after it: the lab is taken down under the lock.
    let mut _lock = None;
    let mut lab = None;
    if !args.no_lab {
        _lock = bench::lab_lock()?;
        match lab_up(&exe) {
            Ok(in_use) => lab = Some(in_use),
            Err(reason) => println!(
                "No namespace lab ({reason}): running on the kernel backend on 127.0.0.1 instead.\n"
            ),
        }
    }
    let site = if lab.is_some() {
        Site::Lab
    } else {
        Site::Loopback
    };
    // In the lab melange kv runs one engine on queue 0: every flow is steered there.
    let _single_queue = match site {
        Site::Lab => Some(bench::lab_echo::SingleQueue::new()?),
        Site::Loopback => None,
    };
    let peers = match (plan.redis, plan.memcached) {
        (true, true) => "redis-server and memcached",
        (true, false) => "redis-server",
        _ => "memcached",
    };
    match site {
        Site::Lab => {
            println!("Melange demo: melange kv on AF_XDP (Melange's own TCP) against {peers} on the kernel's TCP,");
            println!("in the namespace lab: servers in mlg-b (10.77.0.2) on cpu 0, clients in mlg-a (10.77.0.1) on cpu 1,");
            println!("each host's receive work on its own core.");
        }
        Site::Loopback => {
            println!(
                "Melange demo: melange kv against {peers}, on 127.0.0.1 with the kernel backend"
            );
            println!(
                "(the kernel does TCP for every server here, Melange's engine does the rest),"
            );
            println!("servers on cpu 0, clients on cpu 1.");
        }
    }
    println!(
        "Load: redis-benchmark -c {CLIENTS} -d {VALUE_SIZE} -n {} -t set,get at -P 1 and -P 16; memcslap --concurrency={CLIENTS}, {} requests, get and set.\n",
        args.requests,
        (args.requests / u64::from(CLIENTS)).max(1) * u64::from(CLIENTS)
    );
    let mut rows = Vec::new();
    // The peers, each on its own port; then melange kv on both protocols.
    {
        let redis = if plan.redis {
            let port = kv::free_port()?;
            let ports = KvPorts {
                resp: Some(port),
                memcache: None,
            };
            Some((
                KvProcess::start(KvServer::Redis, site, ports, SERVER_CPU)?,
                ports,
            ))
        } else {
            None
        };
        let memcached = if plan.memcached {
            let ports = KvPorts {
                resp: None,
                memcache: Some(kv::free_port()?),
            };
            Some((
                KvProcess::start(KvServer::Memcached, site, ports, SERVER_CPU)?,
                ports,
            ))
        } else {
            None
        };
        let all = Loads {
            redis: true,
            memcached: true,
        };
        for (process, ports) in [&redis, &memcached].into_iter().flatten() {
            measure(process, site, *ports, args.requests, all, &mut rows)?;
        }
    }
    {
        let ports = KvPorts {
            resp: Some(kv::free_port()?),
            memcache: if plan.memcached {
                Some(kv::free_port()?)
            } else {
                None
            },
        };
        let melange = KvProcess::start(KvServer::Melange, site, ports, SERVER_CPU)?;
        let loads = Loads {
            redis: plan.redis,
            memcached: plan.memcached,
        };
        measure(&melange, site, ports, args.requests, loads, &mut rows)?;
    }
    println!();
    print_rows(&rows);
    println!();
    println!("melange/peer > 1: melange kv served more requests per second; cpu peer/melange > 1: it used less");
    println!("CPU per request (the server process's user + system time, /proc/PID/stat).");
    if site == Site::Loopback && !args.no_lab {
        println!("As root the demo runs in the namespace lab, melange kv on AF_XDP.");
    }
    drop(lab);
    Ok(())
}

fn print_rows(rows: &[Row]) {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let peer = row.peer_run;
            let mut cells = vec![
                row.load.clone(),
                row.peer.label().to_string(),
                format!("{:.0}", peer.requests_per_s),
            ];
            match row.melange_run {
                Some(m) => cells.extend([
                    format!("{:.0}", m.requests_per_s),
                    format!("x{:.2}", m.requests_per_s / peer.requests_per_s.max(1.0)),
                    format!("{} / {}", ms(peer.p99_ms), ms(m.p99_ms)),
                    format!(
                        "{:.2} / {:.2}",
                        peer.server_cpu_ns_per_request / 1e3,
                        m.server_cpu_ns_per_request / 1e3
                    ),
                    format!(
                        "x{:.2}",
                        peer.server_cpu_ns_per_request / m.server_cpu_ns_per_request.max(1.0)
                    ),
                ]),
                None => cells.extend(["-", "-", "-", "-", "-"].map(String::from)),
            }
            cells
        })
        .collect();
    print_table(
        &[
            "load",
            "peer",
            "peer req/s",
            "melange req/s",
            "melange/peer",
            "p99 ms peer / melange",
            "cpu-µs/req peer / melange",
            "cpu peer/melange",
        ],
        &table,
    );
}

/// Runs the UDP echo demo (`--echo`).
fn run_echo(args: DemoArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    // The same load on either path: 64-byte requests at 1 and 32 in flight, server on cpu 0.
    let run = EchoRunArgs {
        reps: args.reps,
        duration: args.duration,
        warmup: Duration::from_millis(300),
        inflight: vec![1, 32],
        payload: 64,
        server_cpu: SERVER_CPU,
        client_cpu: CLIENT_CPU,
        json: None,
    };
    if !args.no_lab {
        match lab_up(&exe) {
            Ok(lab) => {
                println!("Melange demo: 64-byte UDP echo in the namespace lab (mlg-a -> mlg-b over a veth pair),");
                println!("server on cpu 0, Melange's AF_XDP load generator on cpu 1, each host's receive work on its own core.\n");
                let result = bench::lab_echo::run(&LabEchoArgs {
                    run: run.clone(),
                    delay_us: Vec::new(),
                    napi: melange_lab::NapiMode::Threaded,
                });
                drop(lab);
                return result.map(|_| ());
            }
            Err(reason) => println!(
                "No namespace lab ({reason}): running on the kernel backend on 127.0.0.1 instead."
            ),
        }
    }
    println!(
        "Melange demo: 64-byte UDP echo on 127.0.0.1, server on cpu 0, load generator on cpu 1"
    );
    println!("(kernel backend: the kernel does IP and UDP, Melange's engine does batching and the app contract)\n");
    bench::kernel_echo(&KernelEchoArgs { run, port: 27777 })?;
    Ok(())
}
