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
        results.push(one_run(args)?);
    }
    let ns = crate::table::median(&mut results);
    println!(
        "stack: {} requests of {} B, batch {}: median {:.1} ns per request-reply ({:.2} M/s), runs {:?}",
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
