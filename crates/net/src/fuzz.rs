//! The body of the `frame` fuzz target: one untrusted frame through a live interface.
//!
//! Design: each input builds a fresh, small world (a 32-frame pool, an interface with one
//! bound port, one learned neighbour and a gateway), so inputs are independent and any
//! crash replays from its bytes alone. The first input byte selects extra operations, the
//! rest is the frame, so a fuzzer can reach the send, park and timeout paths from the same
//! corpus of captured frames. Whatever happens, every buffer must come back to the pool:
//! the final assertion is the leak check, and any panic inside is a bug the fuzzer reports.
//!
//! Alternative rejected: a long-lived interface across inputs (faster per input). State
//! carried between inputs makes crashes depend on history and hard to minimise.

use crate::{Interface, InterfaceConfig};
use melange_core::pool::{PacketPool, PoolConfig};
use melange_wire::{arp, ethernet, EtherType, EthernetAddress};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Our MAC address in the fuzz world.
pub const OUR_MAC: EthernetAddress = EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, 0x01]);
/// Our IPv4 address in the fuzz world (prefix /24).
pub const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// A neighbour whose MAC the interface learns before the input is fed.
pub const PEER_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
/// The neighbour's IPv4 address.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The gateway (never answers ARP in the fuzz world).
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
/// The bound UDP port.
pub const PORT: u16 = 7;

/// Flag bit in the first input byte: send a returned datagram back to its sender.
pub const FLAG_ECHO: u8 = 0x01;
/// Flag bit: also send datagrams that must wait for ARP (on-link and via the gateway).
pub const FLAG_SEND_UNRESOLVED: u8 = 0x02;
/// Flag bit: run timeouts until ARP gives up.
pub const FLAG_TIMEOUTS: u8 = 0x04;

/// Frames in the fuzz pool: enough for the input, the replies, the requests and parked
/// frames (pending_max 4 + tx_queue_max 8 + a few in flight).
const FRAME_COUNT: usize = 32;

/// Feeds `data` to a fresh interface: `data[0]` holds the `FLAG_*` bits, `data[1..]` is the
/// frame (truncated to the pool's frame size). Panics only on a bug: a leak of a pool frame
/// or a panic inside the interface.
pub fn frame_input(data: &[u8]) {
    let (flags, frame_bytes) = match data.split_first() {
        Some((&flags, rest)) => (flags, rest),
        None => (0, data),
    };
    let mut pool = PacketPool::new(PoolConfig {
        frame_size: 2048,
        frame_count: FRAME_COUNT,
        headroom: 64,
    })
    .expect("the fuzz pool configuration is valid");
    let mut config = InterfaceConfig::new(OUR_MAC, OUR_IP, 24);
    config.gateway = Some(GATEWAY_IP);
    config.arp.pending_max = 4;
    config.arp.request_retries_max = 2;
    config.tx_queue_max = 8;
    let mut iface = Interface::new(config).expect("the fuzz interface configuration is valid");
    iface
        .bind_udp(PORT)
        .expect("port 7 is free on a fresh interface");

    let mut now_ns = 1_000;
    feed(&mut iface, &mut pool, now_ns, &arp_reply_frame());
    assert!(
        iface.arp_lookup(now_ns, PEER_IP).is_some(),
        "the peer was learned"
    );

    now_ns += 1_000;
    let datagram = feed(&mut iface, &mut pool, now_ns, frame_bytes);
    if let Some(d) = datagram {
        if flags & FLAG_ECHO != 0 {
            if let Err((_, data)) = iface.send_udp(now_ns, &mut pool, d.data, d.local_port, d.from)
            {
                pool.free_chain(data);
            }
        } else {
            pool.free_chain(d.data);
        }
    }
    if flags & FLAG_SEND_UNRESOLVED != 0 {
        for dst in [
            Ipv4Addr::new(10, 0, 0, 99),
            Ipv4Addr::new(192, 0, 2, 1),
            PEER_IP,
        ] {
            if let Some(mut buf) = pool.alloc() {
                let len = frame_bytes.len().min(pool.tailroom(&buf)).min(64);
                if pool.set_len(&mut buf, len).is_ok() {
                    pool.data_mut(&buf).copy_from_slice(&frame_bytes[..len]);
                }
                let to = SocketAddrV4::new(dst, 9);
                if let Err((_, data)) = iface.send_udp(now_ns, &mut pool, buf.into(), PORT, to) {
                    pool.free_chain(data);
                }
            }
        }
    }
    // Drain the transmit queue once mid-way, as an engine would.
    while let Some(buf) = iface.poll_transmit() {
        pool.free(buf);
    }
    if flags & FLAG_TIMEOUTS != 0 {
        // Each step moves time to the next deadline; retries are bounded, so this ends.
        for _ in 0..16 {
            let Some(at) = iface.poll_at() else { break };
            now_ns = now_ns.max(at);
            iface.handle_timeout(now_ns, &mut pool);
            while let Some(buf) = iface.poll_transmit() {
                pool.free(buf);
            }
        }
        assert_eq!(iface.poll_at(), None, "ARP gave up within the retry budget");
        assert_eq!(iface.pending_len(), 0, "giving up frees parked frames");
    }
    iface.drain(&mut pool);
    assert_eq!(iface.pending_len(), 0);
    assert_eq!(pool.available(), pool.capacity(), "a pool frame leaked");
}

/// Copies `bytes` into a pool frame and hands it to the interface.
fn feed(
    iface: &mut Interface,
    pool: &mut PacketPool,
    now_ns: u64,
    bytes: &[u8],
) -> Option<crate::Datagram> {
    let mut frame = pool.alloc_frame()?;
    let len = bytes.len().min(frame.len());
    frame.truncate(len);
    pool.data_mut(&frame).copy_from_slice(&bytes[..len]);
    iface.handle_frame(now_ns, pool, frame)
}

/// An ARP reply from the peer to us, which teaches the interface the peer's MAC.
fn arp_reply_frame() -> [u8; 42] {
    let mut bytes = [0u8; 42];
    ethernet::Repr {
        src_addr: PEER_MAC,
        dst_addr: OUR_MAC,
        ethertype: EtherType::Arp,
    }
    .emit(&mut ethernet::Packet::new_unchecked(&mut bytes[..]));
    arp::Repr {
        operation: arp::Operation::Reply,
        source_hardware_addr: PEER_MAC,
        source_protocol_addr: PEER_IP,
        target_hardware_addr: OUR_MAC,
        target_protocol_addr: OUR_IP,
    }
    .emit(&mut arp::Packet::new_unchecked(
        &mut bytes[ethernet::HEADER_LEN..],
    ));
    bytes
}
