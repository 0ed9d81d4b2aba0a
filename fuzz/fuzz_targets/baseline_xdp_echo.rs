//! Fuzz target: the raw AF_XDP echo's in-place turnaround (`melange_baseline::xdp_echo::
//! echo_in_place`) never panics; a frame it refuses is left as it was; a frame it answers
//! keeps its length, carries a valid UDP checksum, and answering the answer (to the original
//! source port) gives the request back, but for the UDP checksum field.
#![no_main]
use melange_baseline::xdp_echo::{echo_in_place, Verdict};
use melange_wire::{ethernet, ipv4, udp};

/// The port the lab's echo serves; captured requests go to it.
const PORT: u16 = 7777;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut frame = data.to_vec();
    if echo_in_place(&mut frame, PORT) != Verdict::Echo {
        assert_eq!(frame, data, "a refused frame is left unchanged");
        return;
    }
    assert_eq!(frame.len(), data.len());
    let (checksum_at, peer_port) = {
        let eth = ethernet::Packet::new_checked(&frame[..]).expect("an echoed frame parses");
        let ip = ipv4::Packet::new_checked(eth.payload()).expect("an echoed packet parses");
        let datagram = udp::Packet::new_checked(ip.payload()).expect("an echoed datagram parses");
        assert_eq!(datagram.src_port(), PORT);
        assert_eq!(
            udp::checksum_status(&datagram, ip.src_addr(), ip.dst_addr()),
            udp::ChecksumStatus::Valid,
            "the answer's checksum is recomputed"
        );
        (
            ethernet::HEADER_LEN + ip.header_len() + 6,
            datagram.dst_port(),
        )
    };
    assert_eq!(echo_in_place(&mut frame, peer_port), Verdict::Echo);
    let outside = |bytes: &[u8]| {
        let mut bytes = bytes.to_vec();
        bytes[checksum_at..checksum_at + 2].fill(0);
        bytes
    };
    assert_eq!(
        outside(&frame),
        outside(data),
        "the answer's answer is the request"
    );
});
