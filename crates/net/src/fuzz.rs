//! The body of the `net_frame_input` fuzz target: untrusted frames through a live interface.
//!
//! Design: each input builds a fresh, small world (a pool of `FRAME_COUNT` frames, an
//! interface with one bound port, one learned neighbour and a gateway), so inputs are
//! independent and any crash replays from its bytes alone. The first input byte selects
//! what the rest means:
//!
//! - Without [`FLAG_FRAGMENTS`], the rest is one frame, and the other flag bits add send,
//!   park and timeout work after it, so a fuzzer reaches those paths from a corpus of
//!   captured frames. A delivered TCP segment is, with [`FLAG_ECHO`], turned around in its
//!   own buffer (ports swapped, the options it carried) and sent back, which reaches
//!   `send_tcp` and its headroom refusal (an option layout longer than the one received);
//!   with [`FLAG_SEND_UNRESOLVED`], a SYN with every option goes along with each datagram,
//!   to the same hosts.
//! - With [`FLAG_FRAGMENTS`], the rest is a small program ([`fragment_program`]) that cuts
//!   a real UDP datagram into fragments the fuzzer places (any offset, length, order,
//!   repetition, overlap, corruption), interleaves hostile fragments whose header fields it
//!   picks, moves the clock across the reassembly timeout and sends large datagrams that
//!   must be fragmented. Random bytes almost never carry a valid IPv4 header checksum, so
//!   without this mode a fuzzer would never get past the header check into reassembly.
//!
//! Whatever happens, a delivered datagram must be exactly the one that was cut up (when no
//! fragment was corrupted), and every buffer must come back to the pool: the final
//! assertion is the leak check, and any panic inside is a bug the fuzzer reports.
//!
//! Alternative rejected: a long-lived interface across inputs (faster per input). State
//! carried between inputs makes crashes depend on history and hard to minimise.

use crate::reasm::{REASSEMBLY_BYTES_MAX, REASSEMBLY_DATAGRAMS_MAX, REASSEMBLY_FRAGMENTS_MAX};
use crate::{Interface, InterfaceConfig, Received, TCP_HEADERS_LEN_MAX};
use melange_core::pool::{BufChain, PacketPool, PoolConfig};
use melange_wire::{arp, ethernet, ipv4, tcp, udp, EtherType, EthernetAddress};
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

/// Flag bit in the first input byte: send a returned datagram or segment back to its sender.
pub const FLAG_ECHO: u8 = 0x01;
/// Flag bit: also send datagrams and SYNs that must wait for ARP (on-link and via the
/// gateway), and one of each to the learned peer.
pub const FLAG_SEND_UNRESOLVED: u8 = 0x02;
/// Flag bit: run timeouts until ARP gives up.
pub const FLAG_TIMEOUTS: u8 = 0x04;
/// Flag bit: the rest of the input is a fragment program, not one frame.
pub const FLAG_FRAGMENTS: u8 = 0x08;

/// Frames in the fuzz pool for one frame: the input, the replies, the requests and parked
/// frames (pending_max 4 + tx_queue_max 8 + a few in flight).
const FRAME_COUNT: usize = 32;
/// Frames in the fuzz pool for a fragment program: what reassembly may hold (its byte
/// budget in 2 KiB frames), a full transmit queue, the pending queue, the payload of one
/// send (4 frames), and the frame being fed plus an ARP request.
const PROGRAM_FRAME_COUNT: usize = REASSEMBLY_BYTES_MAX / 2048 + PROGRAM_TX_QUEUE_MAX + 4 + 4 + 2;
/// The transmit queue of a fragment program's interface: room for the largest send's
/// fragments.
const PROGRAM_TX_QUEUE_MAX: usize = crate::TX_FRAGMENTS_MAX;
/// Operations one fragment program may run.
pub const PROGRAM_OPS_MAX: usize = 256;
/// Largest UDP payload a fragment program cuts up.
pub const PROGRAM_PAYLOAD_MAX: usize = 9_000;

/// Feeds `data` to a fresh interface: `data[0]` holds the `FLAG_*` bits, `data[1..]` is the
/// frame (truncated to the pool's frame size) or, with [`FLAG_FRAGMENTS`], a fragment
/// program. Panics only on a bug: a leak of a pool frame, a wrong delivery, or a panic
/// inside the interface.
pub fn frame_input(data: &[u8]) {
    let (flags, rest) = match data.split_first() {
        Some((&flags, rest)) => (flags, rest),
        None => (0, data),
    };
    let (mut iface, mut pool, now_ns) = world(flags & FLAG_FRAGMENTS != 0);
    if flags & FLAG_FRAGMENTS != 0 {
        fragment_program(&mut iface, &mut pool, now_ns, rest);
    } else {
        one_frame(&mut iface, &mut pool, now_ns, flags, rest);
    }
    iface.drain(&mut pool);
    assert_eq!(iface.pending_len(), 0);
    assert_eq!(iface.reassembly_len(), (0, 0));
    while let Some(returned) = pool.take_returned() {
        pool.free(returned.buf);
    }
    assert_eq!(pool.available(), pool.capacity(), "a pool frame leaked");
}

/// The fuzz world (sized for a fragment program or for one frame), with the peer already
/// learned; returns the clock too.
fn world(program: bool) -> (Interface, PacketPool, u64) {
    let pool = PacketPool::new(PoolConfig {
        frame_size: 2048,
        frame_count: if program {
            PROGRAM_FRAME_COUNT
        } else {
            FRAME_COUNT
        },
        // Room for the longest TCP header, so a send of ours never fails for headroom.
        headroom: TCP_HEADERS_LEN_MAX,
    })
    .expect("the fuzz pool configuration is valid");
    let mut config = InterfaceConfig::new(OUR_MAC, OUR_IP, 24);
    config.gateway = Some(GATEWAY_IP);
    config.arp.pending_max = 4;
    config.arp.request_retries_max = 2;
    config.tx_queue_max = if program { PROGRAM_TX_QUEUE_MAX } else { 8 };
    let mut iface = Interface::new(config).expect("the fuzz interface configuration is valid");
    iface
        .bind_udp(PORT)
        .expect("port 7 is free on a fresh interface");
    let mut pool = pool;
    let now_ns = 1_000;
    let learned = feed(&mut iface, &mut pool, now_ns, &arp_reply_frame());
    assert!(learned.is_none());
    assert!(
        iface.arp_lookup(now_ns, PEER_IP).is_some(),
        "the peer was learned"
    );
    (iface, pool, now_ns + 1_000)
}

/// The single-frame mode; see the module documentation.
fn one_frame(
    iface: &mut Interface,
    pool: &mut PacketPool,
    mut now_ns: u64,
    flags: u8,
    frame: &[u8],
) {
    match feed(iface, pool, now_ns, frame) {
        Some(Received::Udp(d)) if flags & FLAG_ECHO != 0 => {
            if let Err((_, data)) = iface.send_udp(now_ns, pool, d.data, d.local_port, d.from) {
                pool.free_chain(data);
            }
        }
        Some(Received::Udp(d)) => pool.free_chain(d.data),
        Some(Received::Tcp(seg)) => {
            assert_eq!(seg.repr.payload_len, seg.data.len());
            assert_eq!(seg.local_port, seg.repr.dst_port);
            if flags & FLAG_ECHO != 0 {
                let reply = tcp::Repr {
                    src_port: seg.repr.dst_port,
                    dst_port: seg.repr.src_port,
                    seq: seg.repr.ack.unwrap_or(0),
                    ack: Some(seg.repr.seq.wrapping_add(seg.data.len() as u32)),
                    ..seg.repr
                };
                if let Err((_, data)) = iface.send_tcp(now_ns, pool, seg.data, seg.from, &reply) {
                    pool.free(data);
                }
            } else {
                pool.free(seg.data);
            }
        }
        None => {}
    }
    if flags & FLAG_SEND_UNRESOLVED != 0 {
        for dst in [
            Ipv4Addr::new(10, 0, 0, 99),
            Ipv4Addr::new(192, 0, 2, 1),
            PEER_IP,
        ] {
            if let Some(mut buf) = pool.alloc() {
                let len = frame.len().min(pool.tailroom(&buf)).min(64);
                if pool.set_len(&mut buf, len).is_ok() {
                    pool.data_mut(&buf).copy_from_slice(&frame[..len]);
                }
                let to = SocketAddrV4::new(dst, 9);
                if let Err((_, data)) = iface.send_udp(now_ns, pool, buf.into(), PORT, to) {
                    pool.free_chain(data);
                }
            }
            if let Some(buf) = pool.alloc() {
                let to = SocketAddrV4::new(dst, 80);
                if let Err((_, data)) = iface.send_tcp(now_ns, pool, buf, to, &syn(80)) {
                    pool.free(data);
                }
            }
        }
    }
    // Drain the transmit queue once mid-way, as an engine would.
    drain_tx(iface, pool);
    if flags & FLAG_TIMEOUTS != 0 {
        // Each step moves time to the next deadline; retries are bounded, so this ends.
        for _ in 0..16 {
            let Some(at) = iface.poll_at() else { break };
            now_ns = now_ns.max(at);
            iface.handle_timeout(now_ns, pool);
            drain_tx(iface, pool);
        }
        assert_eq!(iface.poll_at(), None, "ARP gave up within the retry budget");
        assert_eq!(iface.pending_len(), 0, "giving up frees parked frames");
    }
}

/// Runs a fragment program: `program[0..2]` is the payload length (big-endian, modulo
/// [`PROGRAM_PAYLOAD_MAX`] + 1), `program[2]` seeds its bytes, and every 4 bytes after are
/// one operation `[op, a, b, c]`:
///
/// - `op % 8 == 0`: the datagram's bytes from offset `8 * (a | b << 8 & 0x700)` for
///   `8 * (c + 1)` bytes (cut at the end, where MF is cleared), as identification `op >> 3`
///   (so several datagrams can interleave);
/// - `1`: the same, with one byte of the piece flipped;
/// - `2`: a hostile fragment: offset `8 * (a << 5 | b)`, MF `c & 1`, `c >> 1` bytes, from
///   the peer or (when `op >> 3` is odd) from another on-link host;
/// - `3`: the clock moves `a × 10 ms` (the reassembly timeout is 200 steps of 10 ms);
/// - `4`: `handle_timeout` runs if a deadline is due;
/// - `5`: the app sends a `(a << 8 | b) % 20_000`-byte payload to the peer (`c` even) or to
///   an unresolved host, as a chain of up to 4 frames (the fragmentation path);
/// - `6`: the transmit queue is drained;
/// - `7`: an exact copy of the last fragment fed is fed again.
pub fn fragment_program(
    iface: &mut Interface,
    pool: &mut PacketPool,
    mut now_ns: u64,
    program: &[u8],
) {
    let (len, seed, ops) = match program {
        [hi, lo, seed, ops @ ..] => (
            usize::from(u16::from_be_bytes([*hi, *lo])) % (PROGRAM_PAYLOAD_MAX + 1),
            *seed,
            ops,
        ),
        _ => return,
    };
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let datagram = udp_datagram(&payload);
    let mut corrupted = false;
    let mut last: Option<Vec<u8>> = None;
    for op in ops.chunks_exact(4).take(PROGRAM_OPS_MAX) {
        let [op, a, b, c] = [op[0], op[1], op[2], op[3]];
        let ident = u16::from(op >> 3);
        let frame = match op % 8 {
            0 | 1 => {
                let start = 8 * (usize::from(a) | (usize::from(b) << 8 & 0x700));
                if start >= datagram.len() {
                    continue;
                }
                let end = (start + 8 * (usize::from(c) + 1)).min(datagram.len());
                let mut piece = datagram[start..end].to_vec();
                if op % 8 == 1 {
                    let at = usize::from(c) % piece.len();
                    piece[at] ^= 0xff;
                    corrupted = true;
                }
                Some(fragment_frame(
                    PEER_IP,
                    ident,
                    start,
                    end < datagram.len(),
                    &piece,
                ))
            }
            2 => {
                let offset = 8 * (usize::from(a) << 5 | usize::from(b & 0x1f));
                let src = if ident % 2 == 1 {
                    Ipv4Addr::new(10, 0, 0, 3)
                } else {
                    PEER_IP
                };
                corrupted = true;
                Some(fragment_frame(
                    src,
                    ident,
                    offset,
                    c & 1 == 1,
                    &vec![c; usize::from(c >> 1)],
                ))
            }
            3 => {
                now_ns += u64::from(a) * 10_000_000;
                None
            }
            4 => {
                if iface.poll_at().is_some_and(|at| at <= now_ns) {
                    iface.handle_timeout(now_ns, pool);
                }
                None
            }
            5 => {
                let size = (usize::from(a) << 8 | usize::from(b)) % 20_000;
                let dst = if c % 2 == 0 {
                    PEER_IP
                } else {
                    Ipv4Addr::new(10, 0, 0, 50)
                };
                send_chain(iface, pool, now_ns, size, usize::from(c % 4) + 1, dst);
                None
            }
            6 => {
                drain_tx(iface, pool);
                None
            }
            _ => last.clone(),
        };
        let Some(frame) = frame else { continue };
        match feed(iface, pool, now_ns, &frame) {
            Some(Received::Udp(d)) => {
                if !corrupted && d.from.port() == 40_000 {
                    let mut got = vec![0u8; d.data.len()];
                    pool.chain_read(&d.data, 0, &mut got);
                    assert_eq!(
                        got, payload,
                        "a reassembled datagram differs from the one sent"
                    );
                }
                pool.free_chain(d.data);
            }
            // Programs feed only UDP fragments; a segment would be a bug, but is freed all
            // the same so the leak check stays meaningful.
            Some(Received::Tcp(seg)) => {
                pool.free(seg.data);
                panic!("a fragment program delivered a TCP segment");
            }
            None => {}
        }
        last = Some(frame);
        let (datagrams, frames) = iface.reassembly_len();
        assert!(datagrams <= REASSEMBLY_DATAGRAMS_MAX);
        assert!(frames <= REASSEMBLY_DATAGRAMS_MAX * REASSEMBLY_FRAGMENTS_MAX);
        assert!(frames * 2048 <= REASSEMBLY_BYTES_MAX);
    }
    drain_tx(iface, pool);
    // Everything still waiting times out within the reassembly timeout.
    now_ns += crate::reasm::REASSEMBLY_TIMEOUT_NS;
    iface.handle_timeout(now_ns, pool);
    assert_eq!(iface.reassembly_len(), (0, 0), "reassembly timed out");
    drain_tx(iface, pool);
}

/// Sends a payload of `len` bytes to `dst` as a chain of up to `frames` frames.
fn send_chain(
    iface: &mut Interface,
    pool: &mut PacketPool,
    now_ns: u64,
    len: usize,
    frames: usize,
    dst: Ipv4Addr,
) {
    let per = len.div_ceil(frames).max(1);
    let mut chain: Option<BufChain> = None;
    let mut left = len;
    while left > 0 || chain.is_none() {
        let Some(mut buf) = pool.alloc() else { break };
        let n = left.min(per).min(pool.tailroom(&buf));
        if pool.set_len(&mut buf, n).is_err() {
            pool.free(buf);
            break;
        }
        pool.data_mut(&buf).fill(0x5a);
        left -= n;
        match chain.as_mut() {
            None => chain = Some(BufChain::from(buf)),
            Some(c) => {
                if let Err((_, buf)) = pool.chain_push(c, buf) {
                    pool.free(buf);
                    break;
                }
            }
        }
    }
    let Some(chain) = chain else { return };
    let to = SocketAddrV4::new(dst, 9);
    if let Err((_, data)) = iface.send_udp(now_ns, pool, chain, PORT, to) {
        pool.free_chain(data);
    }
}

fn drain_tx(iface: &mut Interface, pool: &mut PacketPool) {
    while let Some(buf) = iface.poll_transmit() {
        pool.free(buf);
    }
}

/// A SYN from our port 7 to `dst_port` carrying every option a SYN may (MSS, window scale,
/// SACK-permitted, timestamps): the longest header a connection opens with.
fn syn(dst_port: u16) -> tcp::Repr {
    tcp::Repr {
        src_port: PORT,
        dst_port,
        seq: 0x1234_5678,
        ack: None,
        flags: tcp::Flags::SYN,
        window_len: 65_535,
        max_seg_size: Some(1460),
        window_scale: Some(7),
        sack_permitted: true,
        sack_ranges: [(0, 0); tcp::SACK_BLOCKS_MAX],
        sack_count: 0,
        timestamps: Some((1, 0)),
        payload_len: 0,
    }
}

/// Copies `bytes` into a pool frame and hands it to the interface.
fn feed(
    iface: &mut Interface,
    pool: &mut PacketPool,
    now_ns: u64,
    bytes: &[u8],
) -> Option<Received> {
    let mut frame = pool.alloc_frame()?;
    let len = bytes.len().min(frame.len());
    frame.truncate(len);
    pool.data_mut(&frame).copy_from_slice(&bytes[..len]);
    iface.handle_frame(now_ns, pool, frame)
}

/// The UDP datagram (header and payload, valid checksum) from the peer's port 40000 to us
/// that fragment programs cut up.
fn udp_datagram(payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; udp::HEADER_LEN + payload.len()];
    bytes[udp::HEADER_LEN..].copy_from_slice(payload);
    udp::Repr {
        src_port: 40_000,
        dst_port: PORT,
        payload_len: payload.len(),
    }
    .emit(
        &mut udp::Packet::new_unchecked(&mut bytes[..]),
        PEER_IP,
        OUR_IP,
    );
    bytes
}

/// An Ethernet frame to us carrying one IPv4 fragment (valid header checksum) of a UDP
/// datagram from `src`.
fn fragment_frame(src: Ipv4Addr, ident: u16, offset: usize, more: bool, piece: &[u8]) -> Vec<u8> {
    let ip_at = ethernet::HEADER_LEN;
    let mut bytes = vec![0u8; ip_at + ipv4::HEADER_LEN + piece.len()];
    ethernet::Repr {
        src_addr: PEER_MAC,
        dst_addr: OUR_MAC,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut ethernet::Packet::new_unchecked(&mut bytes[..]));
    let mut ip = ipv4::Packet::new_unchecked(&mut bytes[ip_at..]);
    ipv4::Repr {
        src_addr: src,
        dst_addr: OUR_IP,
        protocol: ipv4::Protocol::Udp,
        payload_len: piece.len(),
        ttl: 64,
        ident,
        dont_frag: false,
    }
    .emit(&mut ip);
    ip.set_fragment(offset.min(65_528) & !7, more);
    ip.fill_checksum();
    bytes[ip_at + ipv4::HEADER_LEN..].copy_from_slice(piece);
    bytes
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A program that cuts the datagram into its 1480-byte fragments, out of order with a
    /// duplicate, must deliver it (checked inside the body), and the counters show it.
    #[test]
    fn a_clean_program_delivers_through_reassembly() {
        let (mut iface, mut pool, now) = world(true);
        let len: u16 = 3000;
        let mut program = len.to_be_bytes().to_vec();
        program.push(9);
        // Pieces: [2960, 3008) (MF clear), [0, 1480), [0, 1480) again, [1480, 2960).
        // 1480 = 8 * 185; the op encodes the offset's low byte in `a`, bits 8..11 in `b`.
        for (offset_units, len_units) in [(370u16, 6u8), (0, 185), (0, 185), (185, 185)] {
            program.extend_from_slice(&[
                0,
                offset_units as u8,
                (offset_units >> 8) as u8,
                len_units - 1,
            ]);
        }
        fragment_program(&mut iface, &mut pool, now, &program);
        let c = iface.counters();
        assert_eq!((c.frag_received, c.reassembled, c.udp_rx), (4, 1, 1));
        assert_eq!(c.drops(crate::DropReason::ReasmDuplicate), 1);
        iface.drain(&mut pool);
        assert_eq!(pool.available(), pool.capacity());
    }

    #[test]
    fn programs_reach_every_reassembly_outcome() {
        use crate::DropReason as R;
        let (mut iface, mut pool, now) = world(true);
        let mut program = 3000u16.to_be_bytes().to_vec();
        program.push(1);
        program.extend_from_slice(&[
            0, 0, 0, 184, // [0, 1480) of datagram 0.
            1, 0, 0, 184, // The same, one byte changed: an overlap.
            0, 0, 0, 184, // Stale now.
            8, 0, 0, 184, // Datagram 1: [0, 1480).
            3, 255, 0, 0, // 2.55 s pass.
            4, 0, 0, 0, // Datagram 1 times out.
            26, 255, 31, 17, // Datagram 3, hostile, from .3: past 65,535 bytes.
            16, 0, 0, 0, // Datagram 2: [0, 8) ...
            7, 0, 0, 0, // ... and its exact copy.
            5, 40, 0, 2, // A 10,240-byte send to the peer: 7 fragments.
            6, 0, 0, 0,
        ]);
        fragment_program(&mut iface, &mut pool, now, &program);
        let c = iface.counters();
        for reason in [
            R::ReasmOverlap,
            R::ReasmStale,
            R::ReasmTimeout,
            R::ReasmTooBig,
            R::ReasmDuplicate,
        ] {
            assert!(c.drops(reason) >= 1, "{reason:?}: {c:?}");
        }
        assert_eq!((c.fragmented, c.frag_sent), (1, 7));
        iface.drain(&mut pool);
        assert_eq!(pool.available(), pool.capacity());
    }

    #[test]
    fn pseudo_random_programs_never_panic_or_leak() {
        let mut rng = melange_core::rng::SplitMix64::new(17);
        for _ in 0..300 {
            let len = rng.below(600) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if let Some(first) = input.first_mut() {
                *first |= FLAG_FRAGMENTS;
            }
            frame_input(&input);
        }
    }
}
