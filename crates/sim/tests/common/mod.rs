//! The setup the engine-pair TCP simulations share: two hosts on one simulated switch, keys
//! drawn from the seed, data-centre timers, and the end-of-test leak check.
//!
//! [`engine`] takes a whole [`EngineConfig`], so a test can shrink the batch (and with it the
//! event queue) to provoke overflows.
// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use melange_engine::tcp::{TcpConfig, TcpKeys};
use melange_engine::{Engine, EngineConfig, StackTransport};
use melange_net::InterfaceConfig;
use melange_sim::{SimNic, SimRng, Simulation};
use melange_wire::EthernetAddress;
use std::net::Ipv4Addr;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const PORT: u16 = 7777;
pub const MS: u64 = 1_000_000;

/// An engine on Melange's stack over a simulated NIC.
pub type SimEngine<A> = Engine<StackTransport<SimNic>, A>;

/// Keys from the seed: deterministic per run, different across runs.
pub fn keys(seed: u64, salt: u64) -> TcpKeys {
    let mut rng = SimRng::new(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut bytes = [0u8; 80];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    TcpKeys::from_bytes(bytes)
}

/// A small table and data-centre timers: the simulated RTT is tens of microseconds, and a
/// TIME-WAIT of 10 ms lets a test churn through its ports many times.
pub fn tcp_config(seed: u64, salt: u64) -> TcpConfig {
    let mut config = TcpConfig::new(keys(seed, salt));
    config.connections_max = 1024;
    config.conn.rtt.rto_min_ns = 5 * MS;
    config.conn.rtt.rto_initial_ns = 20 * MS;
    config.conn.time_wait_ns = 10 * MS;
    config
}

/// An interface whose ARP retries fast enough for a lossy simulated link.
pub fn iface(mac: [u8; 6], ip: Ipv4Addr) -> InterfaceConfig {
    let mut config = InterfaceConfig::new(EthernetAddress(mac), ip, 24);
    config.arp.request_retry_ns = MS;
    config.arp.request_retries_max = 20;
    config
}

/// An engine running `app` on Melange's TCP over `nic`.
pub fn engine<A: melange_core::App>(
    config: EngineConfig,
    nic: SimNic,
    iface: InterfaceConfig,
    tcp: TcpConfig,
    pool_frames: usize,
    app: A,
) -> SimEngine<A> {
    let mut pool = Simulation::pool(pool_frames);
    let transport = StackTransport::new(nic, iface, &[], &mut pool, config.batch_max)
        .expect("a valid interface configuration")
        .with_tcp(tcp, 0)
        .expect("a valid TCP configuration");
    Engine::new(config, transport, pool, app, 0).expect("engine")
}

/// Shuts the engine down and checks that every pool frame came back.
pub fn assert_no_leak<A: melange_core::App>(engine: &mut SimEngine<A>, name: &str) {
    engine.shutdown();
    assert_eq!(
        engine.pool().available(),
        engine.pool().capacity(),
        "{name} leaked pool frames"
    );
}
