//! Frame builders for tests, fuzz seeds and benchmarks: real frames, built with the wire crate.
//!
//! These are what a peer would put on the wire. Tests mutate them to make bad input
//! (truncated, wrong checksums, options, fragments...), so every builder returns a plain
//! `Vec<u8>` and costs an allocation: never use them on a data path.

use crate::{arp, ethernet, icmpv4, ipv4, udp, EtherType, EthernetAddress, IpProtocol};
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
