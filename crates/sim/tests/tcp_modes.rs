//! Simulation tests of the TCP load generator's churn and bulk modes and of the sink/source
//! pair: the real engines, stacks and TCP endpoints over the simulated network, clean and
//! impaired.
//!
//! Every scenario runs over several seeds; a failure prints its seed, and
//! `MELANGE_SIM_SEED=N cargo test -p melange-sim --release --test tcp_modes` replays it.

mod common;

use common::{
    assert_no_leak, engine, iface, tcp_config, SimEngine, CLIENT_IP, CLIENT_MAC, MS, PORT,
    SERVER_IP, SERVER_MAC,
};
use melange_apps::stream::{hex, stream_sha256};
use melange_apps::{
    SinkRecord, SourceEnd, TcpEchoApp, TcpEchoConfig, TcpLoadMode, TcpLoadgenApp, TcpLoadgenConfig,
    TcpSinkApp, TcpSinkConfig, TcpSourceApp, TcpSourceConfig,
};
use melange_engine::tcp::TcpConfig;
use melange_engine::EngineConfig;
use melange_sim::{check_seeds, Impairments, SimNic, Simulation};
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};

fn echo_server(nic: SimNic, seed: u64) -> SimEngine<TcpEchoApp> {
    let app = TcpEchoApp::new(
        TcpEchoConfig {
            ports: vec![PORT],
            work_ns: 0,
        },
        |_| {},
    );
    let tcp = tcp_config(seed, 1);
    let iface = iface(SERVER_MAC, SERVER_IP);
    engine(EngineConfig::new(0), nic, iface, tcp, 4096, app)
}

/// A sink that ends after `connections` streams, and the records it reported.
fn sink_server(
    nic: SimNic,
    seed: u64,
    connections: u64,
) -> (SimEngine<TcpSinkApp>, Arc<Mutex<Vec<SinkRecord>>>) {
    let records = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&records);
    let app = TcpSinkApp::new(
        TcpSinkConfig {
            ports: vec![PORT],
            connections_max: Some(connections),
        },
        Box::new(move |r| out.lock().unwrap().push(*r)),
    );
    let tcp = tcp_config(seed, 1);
    let iface = iface(SERVER_MAC, SERVER_IP);
    (
        engine(EngineConfig::new(0), nic, iface, tcp, 4096, app),
        records,
    )
}

fn client<A: melange_core::App>(nic: SimNic, tcp: TcpConfig, app: A) -> SimEngine<A> {
    let iface = iface(CLIENT_MAC, CLIENT_IP);
    engine(EngineConfig::new(1), nic, iface, tcp, 4096, app)
}

fn load(mode: TcpLoadMode, connections: usize, message_len: usize, ms: u64) -> TcpLoadgenConfig {
    TcpLoadgenConfig {
        target: SocketAddrV4::new(SERVER_IP, PORT),
        connections,
        inflight: 1,
        message_len,
        warmup_ns: 2 * MS,
        duration_ns: ms * MS,
        drain_ns: 400 * MS,
        mode,
    }
}

#[test]
fn churn_completes_many_cycles_with_every_reply_exact() {
    check_seeds(0..6, |seed| {
        let mut sim = Simulation::new(seed);
        let clean = Impairments::delay(10_000);
        let app = TcpLoadgenApp::new(load(TcpLoadMode::Churn, 16, 300, 100));
        // Some 100,000 cycles a second, each holding its slot in TIME-WAIT for 10 ms: room
        // for 1,000 of them and more (with the default 1,024 a connect finds the table full
        // now and then, which `churn_outlives_its_ephemeral_ports` covers).
        let mut tcp = tcp_config(seed, 2);
        tcp.connections_max = 4096;
        let mut c = client(sim.add_port(CLIENT_MAC, clean, 1024), tcp, app);
        let mut s = echo_server(sim.add_port(SERVER_MAC, clean, 1024), seed);
        sim.run(&mut [&mut c, &mut s], 5_000 * MS);
        let report = c.app().report();
        assert!(c.is_done(), "the load generator finishes: {report:?}");
        assert!(report.measured > 1_000, "too few cycles: {report:?}");
        assert_eq!(report.corrupt, 0, "{report:?}");
        assert_eq!(report.unexpected, 0, "{report:?}");
        assert_eq!(
            report.received, report.sent,
            "every request answered: {report:?}"
        );
        assert_eq!(report.bytes, report.received * 300, "{report:?}");
        assert!(report.requests_per_s > 0.0 && report.latency.p50_ns > 0);
        assert_eq!(report.connect_failures, 0, "{report:?}");
        assert_eq!(c.app().resets(), 0, "{report:?}");
        assert_eq!(c.app().open(), 0);
        let ct = c.transport().tcp_counters().unwrap();
        let st = s.transport().tcp_counters().unwrap();
        assert_eq!(ct.active_opens, report.connects, "{ct:?}");
        assert_eq!(st.passive_opens, report.connects, "{st:?}");
        assert_eq!(st.reset_by_peer + ct.reset_by_peer, 0, "{ct:?} {st:?}");
        // Connections the server has not fully closed would be leaks of its table.
        assert_eq!(s.transport().tcp().unwrap().connections(), 0, "{st:?}");
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

/// The client closes first, so it holds TIME-WAIT and its ports stay taken for a while. With
/// a range of 32 ports the slots run out of ports again and again: connects refused at once
/// must wait for the retry timer (no hot loop) and the churn must go on as TIME-WAIT ends,
/// far past the number of ports.
#[test]
fn churn_outlives_its_ephemeral_ports() {
    check_seeds(0..3, |seed| {
        let mut sim = Simulation::new(seed);
        let clean = Impairments::delay(10_000);
        let mut tcp = tcp_config(seed, 2);
        tcp.ephemeral_ports = (40_000, 40_031);
        let duration_ms = 200;
        let app = TcpLoadgenApp::new(load(TcpLoadMode::Churn, 8, 100, duration_ms));
        let mut c = client(sim.add_port(CLIENT_MAC, clean, 1024), tcp, app);
        let mut s = echo_server(sim.add_port(SERVER_MAC, clean, 1024), seed);
        sim.run(&mut [&mut c, &mut s], 5_000 * MS);
        let report = c.app().report();
        assert!(c.is_done(), "{report:?}");
        assert_eq!(report.corrupt, 0, "{report:?}");
        assert_eq!(report.received, report.sent, "{report:?}");
        // 32 ports, each busy for one TIME-WAIT (10 ms) per cycle: at most 3.2 cycles per
        // millisecond, and the run must come close to that, not stall at 32.
        assert!(
            report.connects > 10 * 32,
            "churn stalled once the ports were in TIME-WAIT: {report:?}"
        );
        assert!(
            report.connect_failures > 0,
            "the range did run out: {report:?}"
        );
        // One refused connect per retry tick at most (plus one per finished cycle that found
        // no port), never a connect per pass.
        let ticks = (duration_ms + 2) * MS / melange_apps::tcp_loadgen::TCP_LOADGEN_RETRY_NS;
        assert!(
            report.connect_failures <= ticks + report.connects,
            "refused connects were retried in a loop: {report:?}"
        );
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

/// With a TIME-WAIT of a full minute, 32 ports would carry 32 cycles: the client must reuse
/// the tuples of connections that idled a second in TIME-WAIT (RFC 6191, Linux's
/// `tcp_tw_reuse`), every reply still byte-exact.
#[test]
fn churn_reuses_time_wait_tuples_after_a_second() {
    check_seeds(0..2, |seed| {
        let mut sim = Simulation::new(seed);
        let clean = Impairments::delay(10_000);
        let mut tcp = tcp_config(seed, 2);
        tcp.ephemeral_ports = (40_000, 40_031);
        tcp.conn.time_wait_ns = 60_000 * MS;
        let duration_ms = 3_500;
        let app = TcpLoadgenApp::new(load(TcpLoadMode::Churn, 8, 100, duration_ms));
        let mut c = client(sim.add_port(CLIENT_MAC, clean, 1024), tcp, app);
        let mut s = echo_server(sim.add_port(SERVER_MAC, clean, 1024), seed);
        sim.run(&mut [&mut c, &mut s], 10_000 * MS);
        let report = c.app().report();
        assert_eq!(report.corrupt, 0, "{report:?}");
        assert_eq!(report.received, report.sent, "{report:?}");
        let reused = c.transport().tcp_counters().unwrap().time_wait_reused;
        // Each port is reusable a second after its last cycle: about 3 rounds of 32 in 3.5 s.
        assert!(
            report.connects >= 3 * 32 && reused >= 2 * 32,
            "{} connects, {reused} TIME-WAIT tuples reused: {report:?}",
            report.connects
        );
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

/// A table of 16 slots, a minute of TIME-WAIT and plenty of ports: the table fills with
/// TIME-WAIT connections after 16 cycles, and each new connect must end the oldest of them
/// early (as Linux does beyond `tcp_max_tw_buckets`) rather than fail.
#[test]
fn a_table_full_of_time_wait_gives_the_oldest_slot_to_a_new_connection() {
    check_seeds(0..2, |seed| {
        let mut sim = Simulation::new(seed);
        let clean = Impairments::delay(10_000);
        let mut tcp = tcp_config(seed, 2);
        tcp.connections_max = 16;
        tcp.ephemeral_ports = (40_000, 41_999);
        tcp.conn.time_wait_ns = 60_000 * MS;
        let app = TcpLoadgenApp::new(load(TcpLoadMode::Churn, 4, 100, 200));
        let mut c = client(sim.add_port(CLIENT_MAC, clean, 1024), tcp, app);
        let mut s = echo_server(sim.add_port(SERVER_MAC, clean, 1024), seed);
        sim.run(&mut [&mut c, &mut s], 5_000 * MS);
        let report = c.app().report();
        assert_eq!(report.corrupt, 0, "{report:?}");
        assert_eq!(report.received, report.sent, "{report:?}");
        let evicted = c.transport().tcp_counters().unwrap().time_wait_evicted;
        assert!(
            report.connects > 10 * 16 && evicted > 0,
            "{} connects, {evicted} TIME-WAIT slots given up: {report:?}",
            report.connects
        );
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

#[test]
fn churn_survives_loss_reordering_duplication_and_corruption() {
    check_seeds(0..12, |seed| {
        let mut sim = Simulation::new(seed);
        let bad = Impairments {
            loss: 0.03,
            delay_ns: 10_000,
            jitter_ns: 30_000,
            duplicate: 0.02,
            truncate: 0.01,
            corrupt: 0.02,
        };
        let app = TcpLoadgenApp::new(load(TcpLoadMode::Churn, 8, 2_000, 100));
        let mut c = client(
            sim.add_port(CLIENT_MAC, bad, 1024),
            tcp_config(seed, 2),
            app,
        );
        let mut s = echo_server(sim.add_port(SERVER_MAC, bad, 1024), seed);
        sim.run(&mut [&mut c, &mut s], 30_000 * MS);
        let report = c.app().report();
        assert!(c.is_done(), "the load generator finishes: {report:?}");
        assert_eq!(
            report.corrupt, 0,
            "TCP delivered a corrupted byte: {report:?}"
        );
        assert_eq!(report.received, report.sent, "{report:?}");
        assert!(report.received > 50, "{report:?}");
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

#[test]
fn bulk_streams_to_a_sink_and_reports_goodput() {
    check_seeds(0..4, |seed| {
        let mut sim = Simulation::new(seed);
        let clean = Impairments::delay(10_000);
        let connections = 4;
        let app = TcpLoadgenApp::new(load(TcpLoadMode::Bulk, connections, 16_000, 50));
        let mut c = client(
            sim.add_port(CLIENT_MAC, clean, 1024),
            tcp_config(seed, 2),
            app,
        );
        let (mut s, records) = sink_server(
            sim.add_port(SERVER_MAC, clean, 1024),
            seed,
            connections as u64,
        );
        sim.run(&mut [&mut c, &mut s], 5_000 * MS);
        let report = c.app().report();
        assert!(c.is_done(), "{report:?}");
        assert!(s.is_done(), "the sink saw every stream end");
        assert!(report.bytes_measured > 1_000_000, "{report:?}");
        assert!(report.bytes_per_sec > 0.0, "{report:?}");
        assert!(report.bytes >= report.bytes_measured);
        assert_eq!(report.connects, connections as u64);
        let records = records.lock().unwrap();
        assert_eq!(records.len(), connections, "{records:?}");
        assert!(
            records.iter().all(|r| r.complete && r.bytes > 0),
            "{records:?}"
        );
        // Everything acknowledged was received, and the sink read every byte before its FIN.
        let received: u64 = records.iter().map(|r| r.bytes).sum();
        assert_eq!(received, report.bytes, "{report:?}");
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

/// 2 MB from a source to a sink over a bad link: both ends compute the same SHA-256, which is
/// the stream's.
#[test]
fn source_to_sink_is_byte_exact_under_loss() {
    check_seeds(0..6, |seed| {
        let mut sim = Simulation::new(seed);
        let bad = Impairments {
            loss: 0.02,
            delay_ns: 20_000,
            jitter_ns: 40_000,
            duplicate: 0.01,
            truncate: 0.005,
            corrupt: 0.01,
        };
        let bytes = 2_000_000 + seed;
        let app = TcpSourceApp::new(TcpSourceConfig {
            target: SocketAddrV4::new(SERVER_IP, PORT),
            bytes,
            seed,
        });
        let mut c = client(
            sim.add_port(CLIENT_MAC, bad, 1024),
            tcp_config(seed, 2),
            app,
        );
        let (mut s, records) = sink_server(sim.add_port(SERVER_MAC, bad, 1024), seed, 1);
        sim.run(&mut [&mut c, &mut s], 60_000 * MS);
        let report = c.app().report();
        assert!(c.is_done(), "the source finishes: {report:?}");
        assert_eq!(report.end, Some(SourceEnd::Complete), "{report:?}");
        assert_eq!(report.bytes_sent, bytes);
        let expected = stream_sha256(seed, bytes);
        assert_eq!(report.sha256, Some(expected), "{report:?}");
        let records = records.lock().unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(records[0].complete, "{records:?}");
        assert_eq!(records[0].bytes, bytes);
        assert_eq!(
            hex(&records[0].sha256),
            hex(&expected),
            "the sink received other bytes than were sent"
        );
        // Retransmissions copy the lost bytes again (the retransmit counter is summed only
        // once a connection leaves TIME-WAIT).
        let ct = c.transport().tcp_counters().unwrap();
        assert!(ct.tx_bytes_copied > bytes, "the loss was felt: {ct:?}");
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

/// A source whose sink is not there ends with the reason, and so does a sink fed a stream
/// that stops short (the source aborted): nothing hangs, nothing panics.
#[test]
fn transfers_that_cannot_complete_end_with_a_reason() {
    check_seeds(0..2, |seed| {
        let mut sim = Simulation::new(seed);
        let clean = Impairments::delay(10_000);
        let app = TcpSourceApp::new(TcpSourceConfig {
            target: SocketAddrV4::new(SERVER_IP, PORT + 1),
            bytes: 1000,
            seed,
        });
        let mut c = client(
            sim.add_port(CLIENT_MAC, clean, 1024),
            tcp_config(seed, 2),
            app,
        );
        let (mut s, records) = sink_server(sim.add_port(SERVER_MAC, clean, 1024), seed, 1);
        sim.run(&mut [&mut c, &mut s], 5_000 * MS);
        let report = c.app().report();
        assert!(c.is_done());
        assert!(
            matches!(report.end, Some(SourceEnd::ConnectFailed(_))),
            "{report:?}"
        );
        assert_eq!(report.sha256, None);
        assert!(records.lock().unwrap().is_empty());
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}
