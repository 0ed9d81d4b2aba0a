//! `melange bench stack`: the engine's own cost per request, with no kernel involved.
//!
//! A [`ReplayNic`] hands one engine prebuilt Ethernet/IPv4/UDP request frames as fast as it
//! asks; the engine runs the full stack and the echo app and transmits reply frames, which the
//! replay NIC counts and drops. The result is nanoseconds per request-reply on one core: the
//! budget the dataplane spends before any device is involved.

use anyhow::{anyhow, ensure, Result};
use melange_apps::{EchoApp, EchoConfig};
use melange_core::{PacketPool, PoolConfig};
use melange_engine::{Engine, EngineConfig, StackTransport};
use melange_net::InterfaceConfig;
use melange_sim::{frames, ReplayNic};
use melange_wire::EthernetAddress;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Arguments of `melange bench stack`.
#[derive(clap::Args, Debug, Clone)]
pub struct StackArgs {
    /// Requests to replay.
    #[arg(long, default_value_t = 5_000_000)]
    pub requests: u64,
    /// Engine batch size.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Core to pin to.
    #[arg(long, default_value_t = 0)]
    pub cpu: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// `udp`: replayed datagrams into one echo engine. `tcp`: Melange's TCP echo served by
    /// one engine, with Melange's TCP load generator in a second engine joined back to back
    /// (only the server engine's passes are timed).
    #[arg(long, value_enum, default_value_t = StackProtocol::Udp)]
    pub protocol: StackProtocol,
    /// TCP: connections, one request in flight on each.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
}

/// What `bench stack` measures.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackProtocol {
    /// UDP echo over replayed frames.
    Udp,
    /// TCP echo against a TCP client over a back-to-back pipe.
    Tcp,
}

const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

/// The largest payload the replayed request frame carries: one Ethernet frame of the
/// standard MTU (1500 bytes of IPv4 packet, 28 of them IPv4 and UDP headers).
pub const PAYLOAD_MAX: usize = 1472;

/// Runs the stack benchmark and prints ns per request.
pub fn run(args: &StackArgs) -> Result<()> {
    melange_control::options::check_range(
        "payload",
        args.payload,
        0..=PAYLOAD_MAX,
        "the request payload in bytes (one standard 1500-byte-MTU frame)",
    )?;
    melange_control::options::check_batch(args.batch)?;
    melange_control::options::check_cpus(&Some(vec![args.cpu]))?;
    melange_control::options::check_range(
        "requests",
        args.requests,
        1..=u64::MAX / 2,
        "requests to replay",
    )?;
    melange_control::options::check_range("reps", args.reps, 1..=1000, "repetitions")?;
    melange_sys::cpu::pin_current_thread(args.cpu)?;
    let mut results = Vec::new();
    for _ in 0..args.reps {
        results.push(match args.protocol {
            StackProtocol::Udp => one_run(args)?,
            StackProtocol::Tcp => one_tcp_run(args)?,
        });
    }
    let ns = crate::table::median(&mut results);
    println!(
        "stack ({}): {} requests of {} B, batch {}: median {:.1} ns per request-reply ({:.2} M/s), runs {:?}",
        match args.protocol {
            StackProtocol::Udp => "udp".to_string(),
            StackProtocol::Tcp => format!("tcp, {} connections, server engine only", args.connections),
        },
        args.requests,
        args.payload,
        args.batch,
        ns,
        1e3 / ns,
        results.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>()
    );
    Ok(())
}

fn one_run(args: &StackArgs) -> Result<f64> {
    let server_ip = Ipv4Addr::new(10, 77, 0, 2);
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 40000);
    let server = SocketAddrV4::new(server_ip, 7);
    let payload: Vec<u8> = (0..args.payload).map(|i| i as u8).collect();
    let request = frames::udp_frame(CLIENT_MAC, SERVER_MAC, client, server, &payload);
    let prelude = vec![frames::arp_request(CLIENT_MAC, *client.ip(), server_ip)];
    let nic = ReplayNic::new(prelude, request, args.requests, false);
    let mut pool = PacketPool::new(PoolConfig::default())?;
    let config = EngineConfig {
        batch_max: args.batch,
        ..EngineConfig::new(0)
    };
    let interface = InterfaceConfig::new(EthernetAddress(SERVER_MAC), server_ip, 24);
    let transport = StackTransport::new(nic, interface, &[], &mut pool, args.batch)
        .map_err(|e| anyhow!("{e}"))?;
    let app = EchoApp::new(
        EchoConfig {
            ports: vec![7],
            ..EchoConfig::default()
        },
        |_| {},
    );
    let mut engine = Engine::new(config, transport, pool, app, 0).map_err(|e| anyhow!("{e}"))?;
    // The prelude (ARP) and a warm-up batch, outside the timed part.
    engine.poll(0);
    let replies_before = engine.transport().nic().tx_frames;
    let start = melange_sys::clock::monotonic_ns();
    let mut now = 0;
    while engine.transport().nic().remaining() > 0 {
        now += 1_000;
        engine.poll(now);
    }
    let elapsed = melange_sys::clock::monotonic_ns() - start;
    let replies = engine.transport().nic().tx_frames;
    // One ARP reply for the prelude, then one echo reply per request.
    ensure!(
        replies == args.requests + 1,
        "expected {} replies, got {replies}",
        args.requests + 1
    );
    Ok(elapsed as f64 / (replies - replies_before).max(1) as f64)
}

/// One TCP run: ns of the server engine's passes per request it echoed.
fn one_tcp_run(args: &StackArgs) -> Result<f64> {
    use melange_apps::{TcpEchoApp, TcpEchoConfig, TcpLoadgenApp, TcpLoadgenConfig};
    use melange_engine::tcp::{TcpConfig, TcpKeys};
    use melange_sim::PipeNic;
    let server_ip = Ipv4Addr::new(10, 77, 0, 2);
    let client_ip = Ipv4Addr::new(10, 77, 0, 1);
    let payload = args.payload.max(1);
    let (client_nic, server_nic) = PipeNic::pair();
    let keys = |salt: u8| -> Result<TcpKeys> {
        let mut bytes: [u8; 80] = melange_sys::random::bytes()?;
        bytes[0] ^= salt;
        Ok(TcpKeys::from_bytes(bytes))
    };
    let engine =
        |nic: PipeNic, mac: [u8; 6], ip: Ipv4Addr, peer: (Ipv4Addr, [u8; 6]), tcp: TcpConfig| {
            let mut pool = PacketPool::new(PoolConfig {
                frame_count: 16_384,
                ..PoolConfig::default()
            })?;
            let interface = InterfaceConfig::new(EthernetAddress(mac), ip, 24);
            let transport = StackTransport::new(
                nic,
                interface,
                &[(peer.0, EthernetAddress(peer.1))],
                &mut pool,
                args.batch,
            )
            .map_err(|e| anyhow!("{e}"))?
            .with_tcp(tcp, 0)
            .map_err(|e| anyhow!("{e}"))?;
            anyhow::Ok((transport, pool))
        };
    let config = EngineConfig {
        batch_max: args.batch,
        ..EngineConfig::new(0)
    };
    let (transport, pool) = engine(
        server_nic,
        SERVER_MAC,
        server_ip,
        (client_ip, CLIENT_MAC),
        TcpConfig::new(keys(1)?),
    )?;
    let echo = TcpEchoApp::new(
        TcpEchoConfig {
            ports: vec![7777],
            work_ns: 0,
        },
        |_| {},
    );
    let mut server =
        Engine::new(config.clone(), transport, pool, echo, 0).map_err(|e| anyhow!("{e}"))?;
    let (transport, pool) = engine(
        client_nic,
        CLIENT_MAC,
        client_ip,
        (server_ip, SERVER_MAC),
        TcpConfig::new(keys(2)?),
    )?;
    let load = TcpLoadgenApp::new(TcpLoadgenConfig {
        target: SocketAddrV4::new(server_ip, 7777),
        connections: args.connections,
        inflight: 1,
        message_len: payload,
        warmup_ns: 0,
        duration_ns: u64::MAX / 4,
        drain_ns: 1_000_000_000,
        mode: melange_apps::TcpLoadMode::RequestResponse,
    });
    let mut client =
        Engine::new(EngineConfig::new(1), transport, pool, load, 0).map_err(|e| anyhow!("{e}"))?;
    let echoed = |server: &Engine<StackTransport<PipeNic>, TcpEchoApp>| {
        server.app().counters().bytes_echoed / payload as u64
    };
    let mut now = 0u64;
    // The handshakes and a warm-up, untimed.
    let warm = 10_000u64.min(args.requests);
    let mut guard = 0u64;
    while echoed(&server) < warm {
        now += 1_000;
        client.poll(now);
        server.poll(now);
        guard += 1;
        ensure!(
            guard < 10_000_000,
            "the TCP client and server made no progress in warm-up"
        );
    }
    let start_echoed = echoed(&server);
    let mut server_ns = 0u64;
    while echoed(&server) - start_echoed < args.requests {
        now += 1_000;
        client.poll(now);
        let t0 = melange_sys::clock::monotonic_ns();
        server.poll(now);
        server_ns += melange_sys::clock::monotonic_ns() - t0;
        guard += 1;
        ensure!(
            guard < 100 * args.requests.max(1_000_000),
            "the TCP echo stopped making progress"
        );
    }
    let done = echoed(&server) - start_echoed;
    Ok(server_ns as f64 / done.max(1) as f64)
}
