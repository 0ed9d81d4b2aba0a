//! Bodies of the `wire_*` fuzz targets, one per format, kept in the library so that the
//! property tests run exactly the code libFuzzer runs (on toolchains without nightly, the
//! property tests are the only fuzzing there is).
//!
//! Each body checks the view, then exercises every accessor and `Repr::parse`; a body that
//! parses also emits the `Repr` again and checks the round trip, so the fuzzer searches for
//! both panics and parse/emit disagreements. Alternative rejected: bodies in the fuzz crate
//! itself, which the stable-toolchain test gate would never run.

use crate::{arp, ethernet, icmpv4, ipv4, tcp, udp};
use std::net::Ipv4Addr;

/// Buffer size for re-emitting in the round-trip checks: the largest input we re-emit.
const EMIT_LEN_MAX: usize = 2048;

/// `wire_ethernet`: checked view, accessors, parse and re-emit.
pub fn ethernet(data: &[u8]) {
    let Ok(packet) = ethernet::Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.src_addr(),
        packet.dst_addr(),
        packet.ethertype(),
        packet.payload().len(),
    );
    if let Ok(repr) = ethernet::Repr::parse(&packet) {
        let mut out = [0u8; ethernet::HEADER_LEN];
        repr.emit(&mut ethernet::Packet::new_unchecked(&mut out[..]));
        assert_eq!(
            &out[..],
            &data[..ethernet::HEADER_LEN],
            "ethernet round trip"
        );
    }
}

/// `wire_arp`: checked view, accessors, parse and re-emit.
pub fn arp(data: &[u8]) {
    let Ok(packet) = arp::Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.operation(),
        packet.source_hardware_addr(),
        packet.target_protocol_addr(),
    );
    if let Ok(repr) = arp::Repr::parse(&packet) {
        let mut out = [0u8; arp::PACKET_LEN];
        repr.emit(&mut arp::Packet::new_unchecked(&mut out[..]));
        assert_eq!(&out[..], &data[..arp::PACKET_LEN], "ARP round trip");
    }
}

/// `wire_ipv4`: checked view, accessors, parse and re-emit.
pub fn ipv4(data: &[u8]) {
    let Ok(packet) = ipv4::Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.payload().len(),
        packet.options().len(),
        packet.verify_checksum(),
    );
    let _ = (
        packet.is_fragment(),
        packet.frag_offset_bytes(),
        packet.protocol(),
        packet.ttl(),
    );
    if let Ok(repr) = ipv4::Repr::parse(&packet) {
        if repr.buffer_len() <= EMIT_LEN_MAX {
            let mut out = [0u8; EMIT_LEN_MAX];
            let out = &mut out[..repr.buffer_len()];
            repr.emit(&mut ipv4::Packet::new_unchecked(&mut *out));
            let again = ipv4::Packet::new_checked(&*out).expect("an emitted header checks");
            assert_eq!(ipv4::Repr::parse(&again), Ok(repr), "IPv4 round trip");
        }
    }
}

/// `wire_icmpv4`: checked view, accessors, parse and re-emit.
pub fn icmpv4(data: &[u8]) {
    let Ok(packet) = icmpv4::Packet::new_checked(data) else {
        return;
    };
    let _ = (
        packet.msg_type(),
        packet.msg_code(),
        packet.echo_ident(),
        packet.data().len(),
    );
    if let Ok(repr) = icmpv4::Repr::parse(&packet) {
        if repr.buffer_len() <= EMIT_LEN_MAX {
            let mut out = [0u8; EMIT_LEN_MAX];
            let out = &mut out[..repr.buffer_len()];
            repr.emit(&mut icmpv4::Packet::new_unchecked(&mut *out));
            let again = icmpv4::Packet::new_checked(&*out).expect("an emitted message checks");
            assert_eq!(icmpv4::Repr::parse(&again), Ok(repr), "ICMP round trip");
        }
    }
}

/// `wire_udp`: checked view, accessors, checksum classification, parse and re-emit. The
/// first 8 bytes are the pseudo-header's source and destination addresses.
pub fn udp(data: &[u8]) {
    let Some((addrs, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let src = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
    let dst = Ipv4Addr::new(addrs[4], addrs[5], addrs[6], addrs[7]);
    let Ok(packet) = udp::Packet::new_checked(rest) else {
        return;
    };
    let _ = (packet.src_port(), packet.dst_port(), packet.payload().len());
    let status = udp::checksum_status(&packet, src, dst);
    if let Ok(repr) = udp::Repr::parse(&packet, src, dst) {
        assert!(matches!(
            status,
            udp::ChecksumStatus::Valid | udp::ChecksumStatus::Zero
        ));
        if repr.buffer_len() <= EMIT_LEN_MAX {
            let mut out = [0u8; EMIT_LEN_MAX];
            let out = &mut out[..repr.buffer_len()];
            out[udp::HEADER_LEN..].copy_from_slice(packet.payload());
            repr.emit(&mut udp::Packet::new_unchecked(&mut *out), src, dst);
            let again = udp::Packet::new_checked(&*out).expect("an emitted datagram checks");
            assert_eq!(
                udp::checksum_status(&again, src, dst),
                udp::ChecksumStatus::Valid
            );
            assert_eq!(
                udp::Repr::parse(&again, src, dst),
                Ok(repr),
                "UDP round trip"
            );
        }
    }
}

/// `wire_tcp`: checked view, every accessor, option iteration, checksum classification,
/// parse and re-emit. The first 8 bytes are the pseudo-header's source and destination
/// addresses. Random bytes almost never carry a valid checksum, so the body also parses a
/// copy whose checksum it has filled in; that copy reaches option parsing and the round trip.
pub fn tcp(data: &[u8]) {
    let Some((addrs, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let src = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
    let dst = Ipv4Addr::new(addrs[4], addrs[5], addrs[6], addrs[7]);
    let Ok(packet) = tcp::Packet::new_checked(rest) else {
        return;
    };
    let _ = (packet.src_port(), packet.dst_port(), packet.seq_number());
    let _ = (packet.ack_number(), packet.flags(), packet.window_len());
    let _ = (packet.checksum(), packet.urgent_at(), packet.header_len());
    let _ = (packet.options().len(), packet.payload().len());
    // The iterator ends, and after an error yields nothing more.
    let mut options = packet.options_iter();
    for option in options.by_ref() {
        if option.is_err() {
            break;
        }
    }
    assert!(options.next().is_none(), "TCP options iterator ends");
    let status = tcp::checksum_status(&packet, src, dst);
    match tcp::Repr::parse(&packet, src, dst, tcp::ChecksumPolicy::Strict) {
        Ok(_) => assert_eq!(status, tcp::ChecksumStatus::Valid),
        Err(tcp::Error::PartialChecksum) => assert_eq!(status, tcp::ChecksumStatus::Partial),
        Err(_) => {}
    }
    if rest.len() > EMIT_LEN_MAX {
        return;
    }
    let mut filled = [0u8; EMIT_LEN_MAX];
    let filled = &mut filled[..rest.len()];
    filled.copy_from_slice(rest);
    tcp::Packet::new_unchecked(&mut *filled).fill_checksum(src, dst);
    let filled = tcp::Packet::new_checked(&*filled).expect("the same lengths check again");
    let repr = match tcp::Repr::parse(&filled, src, dst, tcp::ChecksumPolicy::Strict) {
        Ok(repr) => repr,
        Err(e) => {
            // With the checksum filled in, only an option can be wrong.
            assert!(
                !matches!(e, tcp::Error::BadChecksum | tcp::Error::PartialChecksum),
                "filled TCP checksum rejected: {e:?}"
            );
            return;
        }
    };
    if repr.buffer_len() <= EMIT_LEN_MAX {
        let mut out = [0u8; EMIT_LEN_MAX];
        let out = &mut out[..repr.buffer_len()];
        out[repr.header_len()..].copy_from_slice(filled.payload());
        repr.emit(&mut tcp::Packet::new_unchecked(&mut *out), src, dst);
        let again = tcp::Packet::new_checked(&*out).expect("an emitted segment checks");
        assert_eq!(
            tcp::checksum_status(&again, src, dst),
            tcp::ChecksumStatus::Valid
        );
        // Emit drops the SACK blocks that do not fit in its layout; nothing else changes.
        let mut expect = repr;
        expect.sack_count = repr.sack_count_emitted();
        expect.sack_ranges[expect.sack_count..].fill((0, 0));
        assert_eq!(
            tcp::Repr::parse(&again, src, dst, tcp::ChecksumPolicy::Strict),
            Ok(expect),
            "TCP round trip"
        );
        assert_eq!(again.payload(), filled.payload(), "TCP payload round trip");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            ethernet(&data);
            arp(&data);
            ipv4(&data);
            icmpv4(&data);
            udp(&data);
            tcp(&data);
        }

        /// Inputs that pass the version and length checks, so the deeper paths run.
        #[test]
        fn ipv4_body_on_plausible_headers(mut data in proptest::collection::vec(any::<u8>(), 20..128)) {
            data[0] = 0x45;
            let len = data.len() as u16;
            data[2..4].copy_from_slice(&len.to_be_bytes());
            ipv4::Packet::new_unchecked(&mut data[..]).fill_checksum();
            ipv4(&data);
        }

        /// Inputs with a plausible data offset, so option parsing and the round trip run.
        #[test]
        fn tcp_body_on_plausible_segments(mut data in proptest::collection::vec(any::<u8>(), 28..128), words in 5u8..=15) {
            let segment_len = data.len() - 8;
            let words = words.min((segment_len / 4) as u8);
            data[8 + 12] = (words << 4) | (data[8 + 12] & 0x0f);
            tcp(&data);
        }
    }
}
