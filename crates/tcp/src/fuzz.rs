//! Bodies of the `tcp_*` fuzz targets, kept in the library so the property tests run exactly
//! the code libFuzzer runs.
//!
//! [`conn`] drives one [`Connection`] with an operation stream decoded from the input: peer
//! segments on every state (numbers near what the connection expects, so the fuzzer reaches
//! deep states, and anywhere else), app commands, clock steps and timer runs. It checks what
//! must hold whatever the input: no panic, every `poll_transmit` drain ends, every emitted
//! payload lies inside what the app queued and fits the MSS, an emitted header re-parses, and
//! the receive budget is never exceeded.

use crate::conn::{ConnConfig, ConnEvent, Connection, Ports, RecvSink, State};
use crate::cookie::CookieParams;
use melange_wire::tcp::{self, Flags, Repr};
use std::net::Ipv4Addr;

/// Most segments one drain of `poll_transmit` may yield before the body calls it a loop.
const TRANSMIT_DRAIN_MAX: usize = 4096;

/// A byte reader that yields zeros once the input runs out.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Collects what the connection delivers and checks the budget.
#[derive(Default)]
struct Sink {
    delivered: u64,
}

impl RecvSink<Vec<u8>> for Sink {
    fn deliver(&mut self, data: Vec<u8>) {
        self.delivered += data.len() as u64;
    }
    fn discard(&mut self, _data: Vec<u8>) {}
}

/// The peer's view, learnt from what the connection emits.
#[derive(Default)]
struct Peer {
    /// The connection's RCV.NXT as its last ACK said.
    our_ack: u32,
    /// One past the highest sequence number the connection sent.
    our_seq_end: u32,
    /// The peer's next sequence number (what it would send).
    next_seq: u32,
    /// The connection's last TSval.
    our_tsval: u32,
}

/// `tcp_conn`: one connection under an arbitrary operation stream. Returns the states it went
/// through (a bit per [`State`] in declaration order), so tests can see how deep inputs reach.
pub fn conn(data: &[u8]) -> u16 {
    let mut b = Bytes { data, at: 0 };
    let mode = b.u8();
    let mut config = ConnConfig {
        sack: mode & 1 != 0,
        timestamps: mode & 2 != 0,
        window_scaling: mode & 4 != 0,
        nodelay: mode & 8 == 0,
        delayed_ack_ns: if mode & 16 != 0 { 0 } else { 1_000_000 },
        recv_buffer_bytes: if mode & 32 != 0 { 4 * 1460 } else { 256 * 1024 },
        send_buffer_bytes: if mode & 64 != 0 { 3 * 1460 } else { 256 * 1024 },
        ..ConnConfig::default()
    };
    config.rtt.rto_min_ns = 1_000_000;
    config.time_wait_ns = 5_000_000;
    let ports = Ports {
        local: 80,
        remote: 40_000,
    };
    let mut now = 1_000_000_000u64;
    let mut peer = Peer {
        next_seq: b.u32(),
        ..Peer::default()
    };
    let iss = b.u32();
    let syn = syn_repr(&mut b, &peer);
    let created = match mode >> 6 {
        0 | 1 => Connection::<Vec<u8>>::connect(config, ports, iss, now),
        2 => Connection::accept_syn(config, ports, iss, now, &syn),
        _ => {
            let mut ack = syn;
            ack.flags = Flags::empty();
            ack.seq = peer.next_seq.wrapping_add(1);
            ack.ack = Some(iss.wrapping_add(1));
            let params = CookieParams {
                mss: 536 + (b.u16() % 1000),
                window_scale: (b.u8() % 16 < 15).then_some(b.u8() % 15),
                sack_permitted: b.u8() & 1 != 0,
                ecn: false,
            };
            Connection::from_cookie(config, ports, now, &ack, params)
        }
    };
    let Ok(mut conn) = created else {
        return 0;
    };
    let mut seen = 0u16;
    if mode >> 6 == 2 {
        peer.next_seq = peer.next_seq.wrapping_add(1);
    }
    let mut sink = Sink::default();
    let mut queued: u64 = 0;
    let mut ops = 0;
    while !b.done() && ops < 10_000 {
        ops += 1;
        match b.u8() % 10 {
            0..=3 => {
                let (repr, payload) = segment(&mut b, &peer);
                let _ = conn.handle_segment(now, &repr, payload, &mut sink);
                if repr.payload_len > 0 && b.u8() & 1 == 0 {
                    peer.next_seq = peer.next_seq.wrapping_add(repr.payload_len as u32);
                }
            }
            4 => {
                let offered = u32::from(b.u16()) * 4;
                let taken = conn.handle_send(now, offered);
                assert!(taken <= offered);
                queued += u64::from(taken);
            }
            5 => conn.handle_recv_done(u32::from(b.u16()) * 8),
            6 => match b.u8() % 6 {
                0 => conn.close(now),
                1 => conn.abort(),
                2 => conn.set_nodelay(b.u8() & 1 != 0),
                3 => conn.set_keepalive(now, Some(crate::conn::Keepalive::with_idle(1_000_000))),
                4 => conn.handle_send_cut_short(),
                _ => {
                    let _ = conn.set_congestion(if b.u8() & 1 != 0 {
                        crate::cc::CongestionKind::NewReno
                    } else {
                        crate::cc::CongestionKind::Cubic
                    });
                }
            },
            7 => {
                now = now.saturating_add(u64::from(b.u16()) * 1_000);
                if conn.poll_at().is_some_and(|t| t <= now) {
                    conn.handle_timeout(now);
                }
            }
            8 => {
                if let Some(t) = conn.poll_at() {
                    now = now.max(t);
                    conn.handle_timeout(now);
                }
            }
            _ => {}
        }
        drain(&mut conn, now, queued, &mut peer);
        while let Some(event) = conn.poll_event() {
            if let ConnEvent::Sent { bytes } = event {
                assert!(
                    u64::from(bytes) <= queued,
                    "acknowledged more than was queued"
                );
            }
        }
        assert!(
            conn.recv_lent() <= config.recv_buffer_bytes,
            "lent {} bytes with a budget of {}",
            conn.recv_lent(),
            config.recv_buffer_bytes
        );
        seen |= 1 << state_bit(conn.state());
        if conn.state() == State::Closed && conn.is_closed() {
            break;
        }
    }
    seen
}

fn state_bit(state: State) -> u16 {
    match state {
        State::SynSent => 0,
        State::SynReceived => 1,
        State::Established => 2,
        State::FinWait1 => 3,
        State::FinWait2 => 4,
        State::CloseWait => 5,
        State::Closing => 6,
        State::LastAck => 7,
        State::TimeWait => 8,
        State::Closed => 9,
    }
}

/// Drains `poll_transmit`, checking every segment.
fn drain(conn: &mut Connection<Vec<u8>>, now: u64, queued: u64, peer: &mut Peer) {
    for n in 0.. {
        let Some(t) = conn.poll_transmit(now) else {
            return;
        };
        assert!(n < TRANSMIT_DRAIN_MAX, "poll_transmit does not end");
        let repr = t.repr;
        assert!(repr.payload_len <= 1460, "a segment above the MSS");
        if repr.payload_len > 0 {
            assert!(
                t.payload_offset + repr.payload_len as u64 <= queued,
                "a segment past what the app queued: {} + {} > {queued}",
                t.payload_offset,
                repr.payload_len
            );
        }
        // The header emits and parses back as it was.
        let mut bytes = vec![0u8; repr.buffer_len()];
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        repr.emit(&mut tcp::Packet::new_unchecked(&mut bytes[..]), src, dst);
        let packet =
            tcp::Packet::new_checked(&bytes[..]).expect("an emitted segment is well formed");
        let parsed = Repr::parse(&packet, src, dst, tcp::ChecksumPolicy::Strict)
            .expect("an emitted segment parses");
        assert_eq!(parsed.seq, repr.seq);
        assert_eq!(parsed.ack, repr.ack);
        if let Some(ack) = repr.ack {
            peer.our_ack = ack;
        }
        let len = repr.payload_len as u32
            + u32::from(repr.flags.contains(Flags::SYN))
            + u32::from(repr.flags.contains(Flags::FIN));
        peer.our_seq_end = repr.seq.wrapping_add(len);
        if let Some((tsval, _)) = repr.timestamps {
            peer.our_tsval = tsval;
        }
    }
}

/// A SYN with options from the input.
fn syn_repr(b: &mut Bytes<'_>, peer: &Peer) -> Repr {
    let opts = b.u8();
    Repr {
        src_port: 40_000,
        dst_port: 80,
        seq: peer.next_seq,
        ack: None,
        flags: Flags::SYN,
        window_len: b.u16(),
        max_seg_size: (opts & 1 != 0).then(|| b.u16()),
        window_scale: (opts & 2 != 0).then(|| b.u8() % 15),
        sack_permitted: opts & 4 != 0,
        sack_ranges: [(0, 0); tcp::SACK_BLOCKS_MAX],
        sack_count: 0,
        timestamps: (opts & 8 != 0).then(|| (b.u32(), 0)),
        payload_len: 0,
    }
}

/// A peer segment: numbers near what the connection expects, or anywhere.
fn segment(b: &mut Bytes<'_>, peer: &Peer) -> (Repr, Vec<u8>) {
    let kind = b.u8();
    let flags = Flags::from_bits(b.u8()).difference(Flags::ACK);
    let near = |b: &mut Bytes<'_>, base: u32| {
        base.wrapping_add((i32::from(b.u8() as i8) as u32).wrapping_mul(64))
    };
    let seq = if kind & 1 == 0 {
        near(b, peer.next_seq)
    } else {
        b.u32()
    };
    let ack = match kind >> 1 & 3 {
        0 => None,
        1 => Some(peer.our_seq_end),
        2 => Some(near(b, peer.our_seq_end)),
        _ => Some(b.u32()),
    };
    let len = match kind >> 3 & 3 {
        0 => 0,
        1 => usize::from(b.u8()),
        2 => 1448,
        _ => usize::from(b.u16() % 2048),
    };
    let mut sack_ranges = [(0, 0); tcp::SACK_BLOCKS_MAX];
    let sack_count = usize::from(kind >> 5 & 3);
    for r in sack_ranges.iter_mut().take(sack_count) {
        let l = near(b, peer.our_ack.max(peer.our_seq_end));
        *r = (l, l.wrapping_add(u32::from(b.u16())));
    }
    let timestamps = (kind & 0x80 != 0).then(|| (near(b, 1_000), peer.our_tsval));
    let repr = Repr {
        src_port: 40_000,
        dst_port: 80,
        seq,
        ack,
        flags,
        window_len: b.u16(),
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        sack_ranges,
        sack_count,
        timestamps,
        payload_len: len,
    };
    (repr, vec![0xA5; len])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        /// The fuzz body on random operation streams: it asserts its own invariants.
        #[test]
        fn conn_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::conn(&data);
        }
    }

    /// Random streams reach most states, or the body tests little.
    #[test]
    fn random_streams_reach_most_states() {
        let key = crate::siphash::SipKey::new(1, 2);
        let mut seen = 0u16;
        for i in 0..5_000u64 {
            let data: Vec<u8> = (0..400u64)
                .map(|j| key.hash_u32x4(i as u32, j as u32, 0, 0) as u8)
                .collect();
            seen |= super::conn(&data);
        }
        let reached = seen.count_ones();
        assert!(reached >= 9, "random streams reached only states {seen:#b}");
        eprintln!("random streams reached states {seen:#012b}");
    }

    /// Streams that walk a connection through a handshake and data, so the random ones above
    /// start from more than the first state.
    #[test]
    fn conn_survives_hand_made_streams() {
        for mode in [0u8, 0x0f, 0x80, 0x8f, 0xc0, 0xcf, 0xff] {
            let mut data = vec![mode, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xff, 0xff];
            for i in 0..200u8 {
                data.extend_from_slice(&[i % 10, i, i.wrapping_mul(7), 0x10, 0x20, 0, 4]);
            }
            super::conn(&data);
        }
    }
}
