//! The simulation tier for our TCP (house style item 11): thousands of seeded scenarios of
//! our connection against itself over impaired links (`melange_tcp::testkit`).
//!
//! Run with `cargo test -p melange-tcp --profile ci-test --features testkit --test sim`.
//!
//! - Each seed draws a scenario (`SimConfig::random`: loss 0-10%, corruption, duplication,
//!   reordering, jitter, rate limits with queues, and a random `ConnConfig` per side) and runs
//!   it; every structural invariant is checked by the testkit, and here the liveness bounds
//!   (`testkit::time_bound_ns`, `testkit::segments_bound`).
//! - A failing seed prints `MELANGE_TCP_SIM_SEED=<seed>` and its scenario. Setting
//!   `MELANGE_TCP_SIM_SEED=<seed>` replays only that seed and prints its report;
//!   `MELANGE_TCP_SIM_TRACE=1` with it prints every packet.
//! - Soak by hand: `MELANGE_TCP_SIM_SEEDS=100000` runs that many seeds (from
//!   `MELANGE_TCP_SIM_FIRST`, default 0) instead of the default [`SEEDS_DEFAULT`];
//!   `MELANGE_TCP_SIM_RACK_SEEDS` sets the seeds of the RACK-TLP comparison (default
//!   [`RACK_SEEDS_DEFAULT`]).

use melange_tcp::cc::CongestionKind;
use melange_tcp::conn::ConnConfig;
use melange_tcp::testkit::{self, LinkConfig, Report, SimConfig, Workload};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Seeds per `cargo test` run.
const SEEDS_DEFAULT: u64 = 10_000;

/// Seeds per scenario of `rack_tlp_needs_far_fewer_timeouts_at_5_pct_loss` per `cargo test`.
const RACK_SEEDS_DEFAULT: u64 = 40;

/// Failures printed in full before the rest are only counted.
const FAILURES_PRINTED_MAX: usize = 5;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be an integer, not {v:?}"))
    })
}

fn trace() -> bool {
    std::env::var_os("MELANGE_TCP_SIM_TRACE").is_some()
}

/// Runs one scenario and checks the bounds; `Err` carries the whole story.
fn check(seed: u64, config: &SimConfig) -> Result<Report, String> {
    let mut config = *config;
    config.trace = trace();
    let outcome = std::panic::catch_unwind(|| testkit::run(seed, &config));
    let report = match outcome {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return Err(format!("{e}")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(format!("panic: {msg}"));
        }
    };
    let completion = report.completion_ns.unwrap_or(u64::MAX);
    let time_bound = testkit::time_bound_ns(&config, &report);
    if completion > time_bound {
        return Err(format!(
            "completion {} ms above the bound {} ms\n{report}",
            completion / 1_000_000,
            time_bound / 1_000_000
        ));
    }
    let segments_bound = testkit::segments_bound(&config, &report);
    if report.segments_sent() > segments_bound {
        return Err(format!(
            "{} segments above the bound {segments_bound}\n{report}",
            report.segments_sent()
        ));
    }
    Ok(report)
}

fn failure_text(seed: u64, config: &SimConfig, why: &str) -> String {
    format!("MELANGE_TCP_SIM_SEED={seed}\nscenario: {config:#?}\n{why}")
}

/// Statistics over many runs, for the summary line.
#[derive(Default)]
struct Summary {
    completion_over_bound: Vec<f64>,
    completion_ms: Vec<f64>,
    rtos: u64,
    retransmits: u64,
    drops: u64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p) as usize]
}

/// Runs the seeds `first..first + count` on every core; panics listing the failures.
fn run_seeds(first: u64, count: u64) {
    if let Some(seed) = env_u64("MELANGE_TCP_SIM_SEED") {
        let config = SimConfig::random(seed);
        match check(seed, &config) {
            Ok(report) => eprintln!("seed {seed} passed:\n{config:#?}\n{report}"),
            Err(why) => panic!("{}", failure_text(seed, &config, &why)),
        }
        return;
    }
    let started = Instant::now();
    let next = AtomicU64::new(first);
    let failures = Mutex::new(Vec::<(u64, String)>::new());
    let summary = Mutex::new(Summary::default());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    break;
                }
                let config = SimConfig::random(seed);
                match check(seed, &config) {
                    Ok(report) => {
                        let bound = testkit::time_bound_ns(&config, &report) as f64;
                        let done = report.completion_ns.unwrap_or(0) as f64;
                        let mut s = summary.lock().unwrap_or_else(|e| e.into_inner());
                        s.completion_over_bound.push(done / bound);
                        s.completion_ms.push(done / 1e6);
                        s.rtos += report.rtos();
                        s.retransmits += report.retransmits();
                        s.drops += report.drops();
                    }
                    Err(why) => {
                        let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                        f.push((seed, failure_text(seed, &config, &why)));
                    }
                }
            });
        }
    });
    let mut s = summary.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|f| f.0);
    eprintln!(
        "{count} seeds from {first} in {:.1} s on {workers} threads: {} failed; completion/bound p50 {:.3} p99 {:.3} max {:.3}; completion p50 {:.0} ms p99 {:.0} ms; {} drops, {} retransmits, {} RTOs",
        started.elapsed().as_secs_f64(),
        failures.len(),
        percentile(&mut s.completion_over_bound, 0.5),
        percentile(&mut s.completion_over_bound, 0.99),
        percentile(&mut s.completion_over_bound, 1.0),
        percentile(&mut s.completion_ms, 0.5),
        percentile(&mut s.completion_ms, 0.99),
        s.drops,
        s.retransmits,
        s.rtos,
    );
    if !failures.is_empty() {
        let shown: Vec<&str> = failures
            .iter()
            .take(FAILURES_PRINTED_MAX)
            .map(|f| f.1.as_str())
            .collect();
        let seeds: Vec<u64> = failures.iter().map(|f| f.0).collect();
        panic!(
            "{} of {count} seeds failed: {seeds:?}\n\n{}",
            failures.len(),
            shown.join("\n\n")
        );
    }
}

/// Seeds that fail when the fix named is reverted from the current code (checked seed by seed;
/// the seed that first found a bug often passes later without its fix, since other fixes
/// change its course). Each replays the scenario `SimConfig::random` draws for it, which
/// stays fixed because the generator is append-only (see its documentation); a change to the
/// link model or to the connection can still move a seed off its bug, so re-check the list
/// (revert the fix, run the seed) after such a change.
const REGRESSIONS: &[(u64, &str)] = &[
    (
        130,
        "pure ACKs numbered from a SND.NXT that go-back-N rewound are dropped by the peer",
    ),
    (
        379,
        "no zero-window probe when admission left the app's data unqueued",
    ),
    (
        13185,
        "the RTO stays backed off after the stall is repaired",
    ),
    (
        3059,
        "pure ACKs at the right edge of a filled window are dropped unread",
    ),
    (
        72883,
        "a fast recovery entered just after go-back-N; 12.8 s RTOs, then a RST",
    ),
    // TIME-WAIT's handling of a retransmitted FIN (found by seed 27912) is pinned by
    // conn's unit test `time_wait_acks_a_retransmitted_fin_and_restarts_2msl`: no seed of
    // 120 000 fails without that fix once the others are in.
];

/// Seeds whose completion time a fix cut, with the fix and a ceiling in milliseconds between
/// the times after the fix (up to twice it) and before it.
const SLOW_REGRESSIONS: &[(u64, &str, u64)] = &[
    (
        2689,
        "admission charged cwnd for SACKed bytes and bytes dup ACKs had cleared (4.4 s before)",
        1_400,
    ),
    (
        7,
        "no Limited Transmit (RFC 3042) without SACK (1.3 s before)",
        120,
    ),
    (
        80,
        "no fast retransmit after a timeout's go-back-N without SACK (3.1 s before)",
        2_300,
    ),
];

#[test]
fn slow_regression_seeds() {
    let failures: Vec<String> = SLOW_REGRESSIONS
        .iter()
        .filter_map(|&(seed, bug, ceiling_ms)| {
            let config = SimConfig::random(seed);
            match check(seed, &config) {
                Err(why) => Some(format!(
                    "regression of {bug:?}\n{}",
                    failure_text(seed, &config, &why)
                )),
                Ok(report) if report.completion_ns.unwrap_or(u64::MAX) > ceiling_ms * 1_000_000 => {
                    Some(format!(
                        "regression of {bug:?}: above {ceiling_ms} ms\n{}",
                        failure_text(seed, &config, &report.to_string())
                    ))
                }
                Ok(_) => None,
            }
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn regression_seeds() {
    let failures: Vec<String> = REGRESSIONS
        .iter()
        .filter_map(|&(seed, bug)| {
            let config = SimConfig::random(seed);
            check(seed, &config).err().map(|why| {
                format!(
                    "regression of {bug:?}\n{}",
                    failure_text(seed, &config, &why)
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn random_scenarios() {
    let count = env_u64("MELANGE_TCP_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let first = env_u64("MELANGE_TCP_SIM_FIRST").unwrap_or(0);
    run_seeds(first, count);
}

/// A fixed lossy scenario: 256 KiB each way over 5 ms each way, 100 MB/s, `loss` both ways.
fn lossy(loss: f64, sack: bool) -> SimConfig {
    let conn = ConnConfig {
        sack,
        congestion: CongestionKind::NewReno,
        time_wait_ns: 10_000_000_000,
        ..ConnConfig::default()
    };
    let link = LinkConfig {
        loss,
        bandwidth_bytes_per_s: 100_000_000,
        queue_bytes_max: 4 << 20,
        ..LinkConfig::clean(5_000_000)
    };
    SimConfig {
        client: conn,
        server: conn,
        to_server: link,
        to_client: link,
        ..SimConfig::bulk(256 * 1024)
    }
}

/// Median completion time, median RTO count and worst completion time (ms) of `runs` seeds
/// of a scenario, and the seeds that failed (with the first failure's story).
fn medians(config: &SimConfig, runs: u64) -> (f64, f64, u64, Vec<u64>, Option<String>) {
    let mut times = Vec::new();
    let mut rtos = Vec::new();
    let mut worst = 0;
    let mut failed = Vec::new();
    let mut first = None;
    for seed in 0..runs {
        match check(seed, config) {
            Ok(r) => {
                let t = r.completion_ns.unwrap_or(0);
                worst = worst.max(t);
                times.push(t as f64 / 1e6);
                rtos.push(r.rtos() as f64);
            }
            Err(why) => {
                failed.push(seed);
                first.get_or_insert_with(|| failure_text(seed, config, &why));
            }
        }
    }
    (
        percentile(&mut times, 0.5),
        percentile(&mut rtos, 0.5),
        worst / 1_000_000,
        failed,
        first,
    )
}

/// Loss recovery efficiency at fixed loss rates, SACK on and off: printed for the record, and
/// the bounds checked for every run.
///
/// Each median has a ceiling about 30% above what it was after the fixes of the simulation's
/// first round; before them the medians were 397, 480, 1315 and 1274 ms (and three of fifty
/// seeds of the last scenario never finished).
#[test]
fn fixed_loss_recovery() {
    let mut failures = Vec::new();
    for (loss, sack, ceiling_ms) in [
        (0.01, true, 450.0),
        (0.01, false, 600.0),
        (0.05, true, 1_250.0),
        (0.05, false, 950.0),
    ] {
        let config = lossy(loss, sack);
        let (t, rto, worst, failed, first) = medians(&config, 50);
        eprintln!(
            "loss {:.0}% sack {sack}: median completion {t:.0} ms, median RTOs {rto}, worst {worst} ms, failed seeds {failed:?}",
            loss * 100.0
        );
        failures.extend(first);
        if t > ceiling_ms {
            failures.push(format!(
                "loss {loss} sack {sack}: median {t:.0} ms above {ceiling_ms} ms"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Echo with small messages and Nagle on: the request/response mode.
#[test]
fn echo_with_loss() {
    let mut config = lossy(0.02, false);
    config.workload = Workload::Echo {
        messages: 50,
        message_bytes: 700,
    };
    config.client.nodelay = false;
    let (t, rto, worst, failed, first) = medians(&config, 20);
    eprintln!("echo: median completion {t:.0} ms, median RTOs {rto}, worst {worst} ms, failed seeds {failed:?}");
    assert!(first.is_none(), "{}", first.unwrap_or_default());
}

/// HyStart++ end to end: a bulk transfer into a bloated drop-tail queue (100 Mbit/s, 40 ms
/// of RTT, 4 MB of queue: eight bandwidth-delay products) with CUBIC, against the same with
/// NewReno, whose slow start runs until the queue overflows. CUBIC's HyStart++ sees the
/// queueing delay rise by its 4 ms threshold and leaves slow start first, so it loses far
/// fewer packets to the queue (on 2026-12-03: none, against NewReno's 1,179).
#[test]
fn hystart_leaves_slow_start_before_a_bloated_queue_overflows() {
    let run = |congestion: CongestionKind| {
        let mut config = SimConfig::bulk(12 << 20);
        config.workload = Workload::Bulk {
            client_bytes: 12 << 20,
            server_bytes: 0,
            close: testkit::CloseMode::AfterQueued,
        };
        for side in [&mut config.client, &mut config.server] {
            side.congestion = congestion;
            side.recv_buffer_bytes = 8 << 20;
            side.send_buffer_bytes = 8 << 20;
        }
        config.to_server = LinkConfig {
            bandwidth_bytes_per_s: 12_500_000,
            queue_bytes_max: 4 << 20,
            ..LinkConfig::clean(20_000_000)
        };
        config.to_client = LinkConfig::clean(20_000_000);
        config.segments_per_poll_max =
            testkit::segments_per_poll_bound(&config.client, &config.server);
        check(1, &config).unwrap_or_else(|why| panic!("{}", failure_text(1, &config, &why)))
    };
    let cubic = run(CongestionKind::Cubic);
    let newreno = run(CongestionKind::NewReno);
    let c = &cubic.client.counters;
    println!(
        "CUBIC with HyStart++: {} CSS entries, {} exits, {} queue drops; NewReno: {} queue drops",
        c.hystart_css_entries,
        c.hystart_exits,
        cubic.to_server.queue_drops,
        newreno.to_server.queue_drops
    );
    assert!(c.hystart_css_entries >= 1, "{cubic}");
    assert_eq!(c.hystart_exits, 1, "{cubic}");
    assert!(newreno.to_server.queue_drops > 0, "{newreno}");
    assert!(
        cubic.to_server.queue_drops * 4 < newreno.to_server.queue_drops,
        "HyStart++ did not spare the queue: {cubic}\nNewReno: {newreno}"
    );
}

/// RACK-TLP against RFC 6675's DupThresh alone, with everything else equal: 1 MiB each way at
/// 5% loss both ways (5 ms each way, 100 MB/s), NewReno and CUBIC, over many seeds. Every
/// run is byte-exact (the testkit checks it); RACK must need under a fifth of the
/// retransmission timeouts in aggregate, since it finds lost retransmissions and, with its
/// probe, tail losses without them, and must finish sooner on average. On 2026-12-04, 40
/// seeds: NewReno 8 RTOs against 468 (mean 1966 ms against 3290 ms), CUBIC 15 against 509
/// (2311 ms against 3771 ms); the timeouts left follow a lost probe (RFC 8985 §7.3 sends one
/// and then leaves the tail to the RTO).
#[test]
fn rack_tlp_needs_far_fewer_timeouts_at_5_pct_loss() {
    let seeds = env_u64("MELANGE_TCP_SIM_RACK_SEEDS").unwrap_or(RACK_SEEDS_DEFAULT);
    let mut failures = Vec::new();
    for congestion in [CongestionKind::NewReno, CongestionKind::Cubic] {
        let mut totals = [(0u64, 0u64, 0u64, 0.0f64); 2];
        for (k, rack_tlp) in [true, false].into_iter().enumerate() {
            let mut config = lossy(0.05, true);
            config.workload = Workload::Bulk {
                client_bytes: 1 << 20,
                server_bytes: 1 << 20,
                close: testkit::CloseMode::AfterQueued,
            };
            for side in [&mut config.client, &mut config.server] {
                side.rack_tlp = rack_tlp;
                side.congestion = congestion;
            }
            config.segments_per_poll_max =
                testkit::segments_per_poll_bound(&config.client, &config.server);
            for seed in 0..seeds {
                match check(seed, &config) {
                    Ok(r) => {
                        let t = &mut totals[k];
                        t.0 += r.rtos();
                        t.1 += r.retransmits();
                        t.2 += r.client.counters.tlp_probes + r.server.counters.tlp_probes;
                        t.3 += r.completion_ns.unwrap_or(0) as f64 / 1e6;
                    }
                    Err(why) => failures.push(failure_text(seed, &config, &why)),
                }
            }
        }
        let [(on_rtos, on_rexmits, probes, on_ms), (off_rtos, off_rexmits, _, off_ms)] = totals;
        eprintln!(
            "{congestion:?}, {seeds} seeds at 5% loss: RACK-TLP {on_rtos} RTOs, {on_rexmits} retransmits, {probes} probes, mean {:.0} ms; DupThresh alone {off_rtos} RTOs, {off_rexmits} retransmits, mean {:.0} ms",
            on_ms / seeds as f64,
            off_ms / seeds as f64,
        );
        if seeds >= 10 && on_rtos * 5 >= off_rtos {
            failures.push(format!(
                "{congestion:?}: RACK-TLP {on_rtos} RTOs, not under a fifth of {off_rtos}"
            ));
        }
        if seeds >= 10 && on_ms >= off_ms {
            failures.push(format!(
                "{congestion:?}: RACK-TLP took {on_ms:.0} ms over {seeds} seeds, DupThresh alone {off_ms:.0} ms"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
