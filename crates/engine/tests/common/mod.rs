//! A small world for engine tests: one engine over the fake NIC, serving UDP on one port,
//! with the peer's MAC resolved ahead (as the control plane does).
#![allow(dead_code)]

use melange_core::{App, PacketPool, PoolConfig};
use melange_engine::fake_nic::FakeNic;
use melange_engine::{Engine, EngineConfig, StackTransport};
use melange_net::{EthernetAddress, InterfaceConfig};
use melange_wire::frames::udp_frame;
use std::net::{Ipv4Addr, SocketAddrV4};

pub const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const PORT: u16 = 7777;
pub const BATCH: usize = 32;

pub type TestEngine<A> = Engine<StackTransport<FakeNic>, A>;

/// An engine over a fake NIC with a pool of `frames` frames.
pub fn engine<A: App>(app: A, frames: usize, config: EngineConfig) -> TestEngine<A> {
    let mut pool = PacketPool::new(PoolConfig {
        frame_size: 2048,
        frame_count: frames,
        headroom: 256,
    })
    .unwrap();
    let nic = FakeNic::new(frames, BATCH, 64);
    let iface = InterfaceConfig::new(EthernetAddress(OUR_MAC), OUR_IP, 24);
    let transport = StackTransport::new(
        nic,
        iface,
        &[(PEER_IP, EthernetAddress(PEER_MAC))],
        &mut pool,
        config.batch_max,
    )
    .unwrap();
    Engine::new(config, transport, pool, app, 0).unwrap()
}

/// The default engine configuration with this world's batch size.
pub fn config() -> EngineConfig {
    EngineConfig {
        batch_max: BATCH,
        ..EngineConfig::new(0)
    }
}

/// A request from the peer's `port` to ours, carrying `payload`.
pub fn request(port: u16, payload: &[u8]) -> Vec<u8> {
    udp_frame(
        PEER_MAC,
        OUR_MAC,
        SocketAddrV4::new(PEER_IP, port),
        SocketAddrV4::new(OUR_IP, PORT),
        payload,
    )
}

/// Puts `n` requests on the wire.
pub fn deliver<A: App>(engine: &mut TestEngine<A>, n: usize) {
    for i in 0..n {
        let frame = request(40_000 + (i % 1000) as u16, &[i as u8; 64]);
        engine.transport_mut().nic_mut().deliver(frame);
    }
}

/// Shuts the engine down and checks that every frame came back to the pool.
pub fn assert_no_leak<A: App>(mut engine: TestEngine<A>) {
    engine.shutdown();
    assert_eq!(
        engine.pool().available(),
        engine.pool().capacity(),
        "a frame leaked"
    );
}
