//! Frame builders for tests, fuzz seeds and benchmarks: real frames, built with the wire crate.
//!
//! These are what a peer would put on the wire. Tests mutate them to make bad input
//! (truncated, wrong checksums, options, fragments...), so every builder returns a plain
//! `Vec<u8>` and costs an allocation: never use them on a data path.

use crate::{arp, ethernet, icmpv4, ipv4, tcp, udp, EtherType, EthernetAddress, IpProtocol};
use std::net::{Ipv4Addr, SocketAddrV4};

/// An Ethernet/IPv4/UDP frame with correct checksums.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = udp::HEADER_LEN + payload.len();
    let mut frame = ipv4_frame(
        src_mac,
        dst_mac,
        *src.ip(),
        *dst.ip(),
        IpProtocol::Udp,
        udp_len,
    );
    let start = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
    frame[start + udp::HEADER_LEN..].copy_from_slice(payload);
    let mut packet = udp::Packet::new_unchecked(&mut frame[start..]);
    // Emitting computes the checksum over the payload, so the payload goes in first.
    udp::Repr {
        src_port: src.port(),
        dst_port: dst.port(),
        payload_len: payload.len(),
    }
    .emit(&mut packet, *src.ip(), *dst.ip());
    frame
}

/// An Ethernet/IPv4/TCP frame from `src` to `dst` with the header `repr` (ports, numbers,
/// flags, window, options) and `payload`, both checksums full (as a peer without offload
/// sends them). `repr.payload_len` must equal `payload.len()`, asserted because a header that
/// disagreed with its payload would be a different test's malformed frame; otherwise the
/// preconditions are [`tcp::Repr::emit`]'s.
pub fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    repr: &tcp::Repr,
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(
        repr.payload_len,
        payload.len(),
        "the TCP header's payload length"
    );
    let tcp_len = repr.buffer_len();
    let mut frame = ipv4_frame(src_mac, dst_mac, src, dst, IpProtocol::Tcp, tcp_len);
    let start = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
    // As for UDP: the checksum covers the payload, so the payload goes in first.
    frame[start + repr.header_len()..].copy_from_slice(payload);
    repr.emit(
        &mut tcp::Packet::new_unchecked(&mut frame[start..]),
        src,
        dst,
    );
    frame
}

/// An Ethernet/IPv4 frame with a zeroed payload of `payload_len` bytes.
pub fn ipv4_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    payload_len: usize,
) -> Vec<u8> {
    let mut frame = vec![0u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN + payload_len];
    ethernet::Repr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut ethernet::Packet::new_unchecked(&mut frame[..]));
    ipv4::Repr {
        src_addr: src,
        dst_addr: dst,
        protocol,
        payload_len,
        ttl: 64,
        ident: 1,
        dont_frag: true,
    }
    .emit(&mut ipv4::Packet::new_unchecked(
        &mut frame[ethernet::HEADER_LEN..],
    ));
    frame
}

/// An ICMP echo request frame.
pub fn icmp_echo_request(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
    seq_no: u16,
    data: &[u8],
) -> Vec<u8> {
    let repr = icmpv4::Repr::EchoRequest {
        ident,
        seq_no,
        data,
    };
    let len = repr.buffer_len();
    let mut frame = ipv4_frame(src_mac, dst_mac, src, dst, IpProtocol::Icmp, len);
    let start = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
    repr.emit(&mut icmpv4::Packet::new_unchecked(&mut frame[start..]));
    frame
}

/// An ARP request from `src_mac`/`src_ip` asking for `target_ip`, broadcast.
pub fn arp_request(src_mac: [u8; 6], src_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    arp_frame(
        arp::Operation::Request,
        src_mac,
        src_ip,
        [0; 6],
        target_ip,
        [0xff; 6],
    )
}

/// An ARP reply telling `target` that `src_ip` is at `src_mac`.
pub fn arp_reply(
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    arp_frame(
        arp::Operation::Reply,
        src_mac,
        src_ip,
        target_mac,
        target_ip,
        target_mac,
    )
}

fn arp_frame(
    operation: arp::Operation,
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let repr = arp::Repr {
        operation,
        source_hardware_addr: EthernetAddress(src_mac),
        source_protocol_addr: src_ip,
        target_hardware_addr: EthernetAddress(target_mac),
        target_protocol_addr: target_ip,
    };
    let mut frame = vec![0u8; ethernet::HEADER_LEN + repr.buffer_len()];
    ethernet::Repr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EtherType::Arp,
    }
    .emit(&mut ethernet::Packet::new_unchecked(&mut frame[..]));
    repr.emit(&mut arp::Packet::new_unchecked(
        &mut frame[ethernet::HEADER_LEN..],
    ));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::{ChecksumPolicy, Flags, SACK_BLOCKS_MAX};

    const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

    /// A data segment with options, so the payload lands after a header longer than 20.
    fn data_repr(payload_len: usize) -> tcp::Repr {
        tcp::Repr {
            src_port: 40000,
            dst_port: 9205,
            seq: 0xdead_beef,
            ack: Some(0x0102_0304),
            flags: Flags::PSH,
            window_len: 512,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_ranges: [(0, 0); SACK_BLOCKS_MAX],
            sack_count: 0,
            timestamps: Some((7, 9)),
            payload_len,
        }
    }

    #[test]
    fn tcp_frame_parses_back_with_full_checksums() {
        let payload = b"injected";
        let repr = data_repr(payload.len());
        let frame = tcp_frame(MAC_A, MAC_B, A, B, &repr, payload);
        let eth = ethernet::Packet::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.src_addr(), EthernetAddress(MAC_A));
        assert_eq!(eth.dst_addr(), EthernetAddress(MAC_B));
        assert_eq!(eth.ethertype(), EtherType::Ipv4);
        let ip = ipv4::Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (A, B));
        assert_eq!(ip.protocol(), IpProtocol::Tcp);
        assert_eq!(
            usize::from(ip.total_len()),
            frame.len() - ethernet::HEADER_LEN
        );
        let segment = tcp::Packet::new_checked(ip.payload()).unwrap();
        // Strict: a partial (offload-style) checksum would be refused.
        let parsed = tcp::Repr::parse(&segment, A, B, ChecksumPolicy::Strict).unwrap();
        assert_eq!(parsed, repr);
        assert_eq!(segment.payload(), payload);
    }

    #[test]
    fn tcp_frame_of_a_bare_rst() {
        let repr = tcp::Repr {
            flags: Flags::RST,
            ack: None,
            timestamps: None,
            ..data_repr(0)
        };
        let frame = tcp_frame(MAC_A, MAC_B, A, B, &repr, &[]);
        assert_eq!(
            frame.len(),
            ethernet::HEADER_LEN + ipv4::HEADER_LEN + tcp::HEADER_LEN
        );
        let ip = ipv4::Packet::new_checked(&frame[ethernet::HEADER_LEN..]).unwrap();
        let segment = tcp::Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(segment.flags(), Flags::RST);
        let parsed = tcp::Repr::parse(&segment, A, B, ChecksumPolicy::Strict).unwrap();
        assert_eq!(parsed, repr);
    }

    #[test]
    #[should_panic(expected = "payload length")]
    fn tcp_frame_refuses_a_header_that_disagrees_with_the_payload() {
        tcp_frame(MAC_A, MAC_B, A, B, &data_repr(3), b"four");
    }
}
