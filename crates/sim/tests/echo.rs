//! Simulation tests: the real engine, stack and apps over a simulated, misbehaving network.
//!
//! Every scenario runs over many seeds; a failure prints its seed, and
//! `MELANGE_SIM_SEED=N cargo test -p melange-sim` replays it exactly.

use melange_apps::{EchoApp, EchoConfig, LoadgenApp, LoadgenConfig};
use melange_engine::{Engine, EngineConfig, StackTransport};
use melange_net::{DropReason, InterfaceConfig};
use melange_sim::{check_seeds, frames, Impairments, Link, SimNic, Simulation};
use melange_wire::{ethernet, icmpv4, ipv4, EthernetAddress};
use std::net::{Ipv4Addr, SocketAddrV4};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const RAW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const RAW_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
const ECHO_PORT: u16 = 7;
const CLIENT_PORT: u16 = 40_000;
const MS: u64 = 1_000_000;

type Server = Engine<StackTransport<SimNic>, EchoApp>;
type Client = Engine<StackTransport<SimNic>, LoadgenApp>;

/// An engine over the stack on a simulated port.
fn engine<A: melange_core::App>(
    id: usize,
    nic: SimNic,
    iface: InterfaceConfig,
    pool_frames: usize,
    app: A,
) -> Engine<StackTransport<SimNic>, A> {
    let config = EngineConfig::new(id);
    let mut pool = Simulation::pool(pool_frames);
    let transport = StackTransport::new(nic, iface, &[], &mut pool, config.batch_max)
        .expect("a valid interface configuration");
    Engine::new(config, transport, pool, app, 0).expect("engine")
}

/// An interface whose ARP retries fit the millisecond scale of these runs (the default, one
/// second, would outlast them).
fn iface(mac: [u8; 6], ip: Ipv4Addr) -> InterfaceConfig {
    let mut config = InterfaceConfig::new(EthernetAddress(mac), ip, 24);
    config.arp.request_retry_ns = MS;
    config.arp.request_retries_max = 5;
    config
}

fn server(nic: SimNic, pool_frames: usize, arp_ttl_ns: Option<u64>) -> Server {
    server_with(nic, pool_frames, |iface| {
        if let Some(ttl) = arp_ttl_ns {
            iface.arp.entry_ttl_ns = ttl;
        }
    })
}

fn server_with(
    nic: SimNic,
    pool_frames: usize,
    configure: impl FnOnce(&mut InterfaceConfig),
) -> Server {
    let mut iface = iface(SERVER_MAC, SERVER_IP);
    configure(&mut iface);
    let app = EchoApp::new(
        EchoConfig {
            ports: vec![ECHO_PORT],
            ..EchoConfig::default()
        },
        |_| {},
    );
    engine(0, nic, iface, pool_frames, app)
}

fn client(nic: SimNic, load: LoadgenConfig) -> Client {
    client_with_arp_ttl(nic, load, None)
}

fn client_with_arp_ttl(nic: SimNic, load: LoadgenConfig, arp_ttl_ns: Option<u64>) -> Client {
    let mut iface = iface(CLIENT_MAC, CLIENT_IP);
    if let Some(ttl) = arp_ttl_ns {
        iface.arp.entry_ttl_ns = ttl;
    }
    engine(1, nic, iface, 512, LoadgenApp::new(load))
}

fn load(inflight: usize, duration_ns: u64, timeout_ns: u64) -> LoadgenConfig {
    LoadgenConfig {
        local_port: CLIENT_PORT,
        timeout_ns,
        drain_ns: timeout_ns,
        ..LoadgenConfig::closed_loop(
            SocketAddrV4::new(SERVER_IP, ECHO_PORT),
            64,
            inflight,
            duration_ns,
        )
    }
}

fn assert_no_leak(engine: &mut Engine<StackTransport<SimNic>, impl melange_core::App>, name: &str) {
    engine.shutdown();
    assert_eq!(
        engine.pool().available(),
        engine.pool().capacity(),
        "{name} leaked pool frames"
    );
}

#[test]
fn echo_survives_loss_reordering_duplication_truncation_and_corruption() {
    check_seeds(0..48, |seed| {
        let mut sim = Simulation::new(seed);
        let bad = Impairments {
            loss: 0.05,
            delay_ns: 10_000,
            jitter_ns: 40_000,
            duplicate: 0.03,
            truncate: 0.02,
            corrupt: 0.03,
        };
        // ARP has no checksum: a corrupted reply can poison a cache until the entry expires,
        // as on a real network. Short lifetimes let the caches heal within the run.
        let mut c = client_with_arp_ttl(
            sim.add_port(CLIENT_MAC, bad, 1024),
            load(8, 40 * MS, 2 * MS),
            Some(4 * MS),
        );
        let mut s = server(sim.add_port(SERVER_MAC, bad, 1024), 256, Some(4 * MS));
        sim.run(&mut [&mut c, &mut s], 10_000 * MS);
        assert!(c.is_done(), "the load generator finishes");
        let report = c.app().report();
        let stats = sim.network().stats();
        assert!(report.sent > 500, "sent only {}", report.sent);
        assert_eq!(
            report.corrupt, 0,
            "a corrupted payload reached the app ({stats:?})"
        );
        assert_eq!(
            report.received + report.timeouts + c.app().outstanding() as u64,
            report.sent,
            "every request is answered, timed out, or still outstanding"
        );
        assert!(
            report.received * 10 >= report.sent * 7,
            "too few replies: {report:?}"
        );
        assert!(report.timeouts > 0, "5% loss must show up as timeouts");
        // What the server echoed is what its stack delivered.
        let net = s.transport().interface().counters().clone();
        assert_eq!(s.app().counters().echoed, net.udp_rx);
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

#[test]
fn corruption_is_caught_by_checksums_not_delivered() {
    // Heavy corruption, nothing else: every corrupted frame must be dropped by a check.
    check_seeds(0..16, |seed| {
        let mut sim = Simulation::new(seed);
        let bad = Impairments {
            corrupt: 0.3,
            delay_ns: 5_000,
            ..Impairments::default()
        };
        let mut c = client_with_arp_ttl(
            sim.add_port(CLIENT_MAC, bad, 1024),
            load(4, 20 * MS, MS),
            Some(2 * MS),
        );
        let mut s = server(sim.add_port(SERVER_MAC, bad, 1024), 256, Some(2 * MS));
        sim.run(&mut [&mut c, &mut s], 10_000 * MS);
        let report = c.app().report();
        assert_eq!(report.corrupt, 0);
        assert!(report.received > 0);
        let server_drops = s.transport().interface().counters().drops_total();
        let client_drops = c.transport().interface().counters().drops_total();
        assert!(
            server_drops + client_drops > 0,
            "corruption must be counted as drops"
        );
    });
}

#[test]
fn arp_entries_expire_and_are_resolved_again() {
    check_seeds(0..8, |seed| {
        let mut sim = Simulation::new(seed);
        let link = Impairments::delay(20_000);
        let mut config = load(1, 100 * MS, 5 * MS);
        config.rate_per_s = Some(200.0);
        let mut c = client(sim.add_port(CLIENT_MAC, link, 1024), config);
        let mut s = server_with(sim.add_port(SERVER_MAC, link, 1024), 256, |iface| {
            iface.arp.entry_ttl_ns = 10 * MS;
        });
        sim.run(&mut [&mut c, &mut s], 10_000 * MS);
        let report = c.app().report();
        assert_eq!(
            report.timeouts, 0,
            "a clean link answers everything: {report:?}"
        );
        assert!(report.received >= 15, "{report:?}");
        let server_arp = s.transport().interface().counters().arp_requests_sent;
        // The server learnt the client from its ARP request, then had to resolve again each
        // time the 10 ms entry expired over a 100 ms run.
        assert!(server_arp >= 3, "server sent {server_arp} ARP requests");
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

#[test]
fn servers_learn_clients_only_from_arp_and_ask_again_when_entries_expire() {
    check_seeds(0..4, |seed| {
        let mut sim = Simulation::new(seed);
        let link = Impairments::delay(20_000);
        let mut config = load(1, 50 * MS, 5 * MS);
        config.rate_per_s = Some(500.0);
        let mut c = client(sim.add_port(CLIENT_MAC, link, 1024), config);
        let mut s = server(sim.add_port(SERVER_MAC, link, 1024), 256, Some(10 * MS));
        sim.run(&mut [&mut c, &mut s], 10_000 * MS);
        assert_eq!(c.app().report().timeouts, 0);
        // The entry learnt from the client's ARP request expires every 10 ms, and datagrams
        // teach the cache nothing (a spoofed source MAC must never redirect replies), so the
        // server asks again after each expiry, with no request lost.
        let asked = s.transport().interface().counters().arp_requests_sent;
        assert!(asked >= 3, "server sent {asked} ARP requests");
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

#[test]
fn unresolvable_next_hop_gives_up_and_frees_parked_frames() {
    let mut sim = Simulation::new(1);
    let mut config = load(4, 50 * MS, 5 * MS);
    // Nobody owns this address: ARP never answers.
    config.target = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 99), ECHO_PORT);
    let mut c = client(
        sim.add_port(CLIENT_MAC, Impairments::delay(1_000), 64),
        config,
    );
    sim.run(&mut [&mut c], 10_000 * MS);
    let report = c.app().report();
    assert_eq!(report.received, 0);
    assert!(report.timeouts > 0);
    let counters = c.transport().interface().counters().clone();
    assert!(
        counters.drops(DropReason::ArpUnresolved) > 0,
        "{counters:?}"
    );
    assert_no_leak(&mut c, "client");
}

#[test]
fn ping_is_answered() {
    let mut sim = Simulation::new(3);
    let raw = sim.add_port(RAW_MAC, Impairments::delay(1_000), 64);
    let server_nic = sim.add_port(SERVER_MAC, Impairments::delay(1_000), 64);
    let server_port = server_nic.port();
    let mut s = server(server_nic, 64, None);
    let raw_port = raw.port();
    let data = b"melange ping payload";
    // The pinging host resolved the server first, as every host does: its ARP request for the
    // server's address is what teaches the server its MAC (datagrams teach nothing).
    sim.network()
        .inject(server_port, frames::arp_request(RAW_MAC, RAW_IP, SERVER_IP));
    let request =
        frames::icmp_echo_request(RAW_MAC, SERVER_MAC, RAW_IP, SERVER_IP, 0x1234, 7, data);
    sim.network().inject(server_port, request);
    sim.run(&mut [&mut s], 10 * MS);
    let all = sim.network().take_rx(raw_port);
    // The ARP reply to its request, then the echo reply.
    assert_eq!(all.len(), 2, "an ARP reply and one echo reply: {all:?}");
    let frames: Vec<_> = all
        .into_iter()
        .filter(|f| {
            ethernet::Packet::new_checked(&f[..])
                .is_ok_and(|e| e.ethertype() == ethernet::EtherType::Ipv4)
        })
        .collect();
    assert_eq!(frames.len(), 1, "one echo reply");
    let eth = ethernet::Packet::new_checked(&frames[0][..]).unwrap();
    assert_eq!(eth.dst_addr(), EthernetAddress(RAW_MAC));
    let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.src_addr(), SERVER_IP);
    assert_eq!(ip.dst_addr(), RAW_IP);
    let icmp = icmpv4::Packet::new_checked(ip.payload()).unwrap();
    match icmpv4::Repr::parse(&icmp).unwrap() {
        icmpv4::Repr::EchoReply {
            ident,
            seq_no,
            data: reply,
        } => {
            assert_eq!((ident, seq_no), (0x1234, 7));
            assert_eq!(reply, data);
        }
        other => panic!("expected an echo reply, got {other:?}"),
    }
    assert_eq!(s.transport().interface().counters().icmp_echo_replies, 1);
    assert_no_leak(&mut s, "server");
}

#[test]
fn pool_exhaustion_drops_are_counted_and_service_recovers() {
    check_seeds(0..8, |seed| {
        let mut sim = Simulation::new(seed);
        // No jitter: the 64 requests sent together arrive together.
        let link = Impairments {
            delay_ns: 10_000,
            jitter_ns: 0,
            ..Impairments::default()
        };
        // 64 requests in flight against a server with 16 frames.
        let mut c = client(sim.add_port(CLIENT_MAC, link, 4096), load(64, 30 * MS, MS));
        let server_nic = sim.add_port(SERVER_MAC, link, 4096);
        let server_port = server_nic.port();
        let mut s = server(server_nic, 16, None);
        sim.run(&mut [&mut c, &mut s], 10_000 * MS);
        let report = c.app().report();
        let exhausted = sim.network().port_stats(server_port).rx_pool_exhausted;
        assert!(exhausted > 0, "the burst must exhaust the server's pool");
        assert!(
            report.received > 1000,
            "the server keeps serving: {report:?}"
        );
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

#[test]
fn bad_frames_are_counted_and_never_stop_the_echo() {
    check_seeds(0..8, |seed| {
        let mut sim = Simulation::new(seed);
        let link = Impairments::delay(5_000);
        let mut c = client(sim.add_port(CLIENT_MAC, link, 1024), load(4, 20 * MS, MS));
        let _raw = sim.add_port(RAW_MAC, link, 1024);
        let server_nic = sim.add_port(SERVER_MAC, link, 1024);
        let server_port = server_nic.port();
        let mut s = server(server_nic, 256, None);
        let good = frames::udp_frame(
            RAW_MAC,
            SERVER_MAC,
            SocketAddrV4::new(RAW_IP, 5000),
            SocketAddrV4::new(SERVER_IP, ECHO_PORT),
            &[0xab; 32],
        );
        let mut rng = melange_sim::SimRng::new(seed);
        // A header field changed with the header checksum made right again, so that the
        // check under test is the one that fires.
        let with_header = |mutate: &dyn Fn(&mut Vec<u8>)| {
            let mut f = good.clone();
            mutate(&mut f);
            ipv4::Packet::new_unchecked(&mut f[ethernet::HEADER_LEN..]).fill_checksum();
            f
        };
        let mut bad: Vec<Vec<u8>> = vec![
            good[..10].to_vec(),            // truncated Ethernet
            good[..30].to_vec(),            // truncated IPv4
            with_header(&|f| f[14] = 0x44), // bad IHL
            {
                let mut f = good.clone();
                f[24] ^= 0xff;
                f
            }, // bad header checksum
            with_header(&|f| f[20] = 0x20), // more fragments
            with_header(&|f| {
                f[16] = 0xff;
                f[17] = 0xff;
            }), // total length too big
            with_header(&|f| f[14] = 0x46), // options
            {
                let mut f = good.clone();
                f[0..6].copy_from_slice(&[2, 9, 9, 9, 9, 9]);
                f
            }, // wrong MAC
            {
                let mut f = good.clone();
                f[12] = 0x86;
                f[13] = 0xdd;
                f
            }, // IPv6 ethertype
            {
                let mut f = good.clone();
                f[12] = 0x81;
                f[13] = 0x00;
                f
            }, // VLAN tag
            {
                let mut f = good.clone();
                let n = f.len();
                f[n - 1] ^= 1;
                f
            }, // bad UDP checksum
            frames::arp_request(RAW_MAC, RAW_IP, Ipv4Addr::new(10, 77, 0, 200)), // ARP for another host
        ];
        for _ in 0..64 {
            let len = rng.below(200) as usize;
            bad.push((0..len).map(|_| rng.next_u64() as u8).collect());
        }
        for frame in bad {
            sim.network().inject(server_port, frame);
        }
        sim.run(&mut [&mut c, &mut s], 10_000 * MS);
        let report = c.app().report();
        assert_eq!(report.timeouts, 0, "the echo kept answering: {report:?}");
        assert!(report.received > 100);
        let counters = s.transport().interface().counters().clone();
        for reason in [
            DropReason::EthTruncated,
            DropReason::IpBadHeaderLen,
            DropReason::IpBadChecksum,
            DropReason::IpBadTotalLen,
            DropReason::IpOptions,
            DropReason::EthNotForUs,
            DropReason::UnknownEthertype,
            DropReason::Vlan,
            DropReason::UdpBadChecksum,
            DropReason::ArpNotForUs,
        ] {
            assert!(
                counters.drops(reason) > 0,
                "{} not counted: {counters:?}",
                reason.name()
            );
        }
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}

#[test]
fn datagrams_up_to_65507_bytes_are_fragmented_and_reassembled() {
    // UDP's largest payload over IPv4, and sizes around the one-frame and one-MTU limits:
    // the client's stack fragments each request, the server's reassembles it, echoes it
    // (fragmenting again) and the client reassembles and checks the reply's bytes.
    for payload in [1472, 1473, 4000, 65_507] {
        check_seeds(0..3, |seed| {
            let mut sim = Simulation::new(seed);
            let link = Impairments::delay(10_000);
            let mut config = load(2, 20 * MS, 10 * MS);
            config.payload_len = payload;
            let mut c = client(sim.add_port(CLIENT_MAC, link, 1024), config);
            let mut s = server(sim.add_port(SERVER_MAC, link, 1024), 512, None);
            sim.run(&mut [&mut c, &mut s], 10_000 * MS);
            let report = c.app().report();
            assert_eq!(report.timeouts, 0, "{payload} B: {report:?}");
            assert_eq!(report.corrupt, 0, "{payload} B: {report:?}");
            assert!(report.received >= 4, "{payload} B: {report:?}");
            if payload > 1472 {
                let server_net = s.transport().interface().counters().clone();
                assert!(server_net.reassembled > 0, "{server_net:?}");
                assert!(server_net.fragmented > 0, "{server_net:?}");
            }
            assert_no_leak(&mut c, "client");
            assert_no_leak(&mut s, "server");
        });
    }
}

#[test]
fn a_slow_link_pushes_back_and_nothing_is_lost_silently() {
    check_seeds(0..4, |seed| {
        let mut sim = Simulation::new(seed);
        let link = Impairments::delay(5_000);
        // 256 requests in flight against a server whose link carries 10 Mbit/s from an
        // 8-frame transmit ring: the ring fills, the stack refuses what cannot leave (the app
        // gets its buffer back and counts a send error), and every request is either answered
        // or a timeout at the client.
        let mut config = load(256, 20 * MS, 5 * MS);
        config.payload_len = 1000;
        let mut c = client(sim.add_port(CLIENT_MAC, link, 1024), config);
        let slow = Link {
            tx_ring: 8,
            mbit_per_s: 10,
        };
        let mut s = server(
            sim.add_port_with_link(SERVER_MAC, link, 1024, slow),
            1024,
            None,
        );
        sim.run(&mut [&mut c, &mut s], 10_000 * MS);
        let report = c.app().report();
        let refused = s.transport_counters().tx_no_room;
        let send_errors = s.app().counters().send_errors;
        assert!(refused > 0, "the ring never filled: {report:?}");
        assert_eq!(
            send_errors, refused,
            "every refusal reached the app as a send error"
        );
        assert!(report.received > 0, "{report:?}");
        assert!(
            report.timeouts > 0,
            "refused replies show up as timeouts: {report:?}"
        );
        assert_eq!(
            report.received + report.timeouts,
            report.sent,
            "every request is accounted for: {report:?}"
        );
        assert_no_leak(&mut c, "client");
        assert_no_leak(&mut s, "server");
    });
}
