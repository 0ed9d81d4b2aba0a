//! Wire formats for Melange: Ethernet II, ARP, IPv4, ICMPv4, UDP and TCP (with its options),
//! plus the Internet checksum.
//!
//! Every format comes in two layers, as in smoltcp's `wire` module:
//!
//! - a checked view `Packet<T: AsRef<[u8]>>` over borrowed (or owned) bytes, with the field
//!   ranges listed in a `mod field`. `Packet::new_checked` validates every length the
//!   accessors rely on, so that after it succeeds no accessor can panic, whatever the bytes.
//!   Setters exist when `T: AsMut<[u8]>`, which lets the network core rewrite a received frame
//!   in place (an ARP reply, an ICMP echo reply) or write headers into a buffer's headroom.
//! - a parsed form `Repr` with `parse` (which validates semantics: checksums, versions,
//!   supported types) and `emit` (which writes a valid header, checksums included).
//!
//! The alternative rejected is a copying parser into owned structs on the per-packet path:
//! it costs a copy of every header and still needs the bounds checks. Views cost nothing
//! until a field is read, and a field is read straight from the packet buffer.
//!
//! Nothing here allocates, reads a clock or makes a system call, and no input bytes can make
//! these functions panic; the `never panics` property tests and the fuzz targets hold us to
//! that. `emit` has preconditions on its *caller* (the buffer is `buffer_len()` long) because
//! its input is a `Repr` built by our own code, not bytes from the wire.
#![forbid(unsafe_code)]

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod frames;
pub mod fuzz;
pub mod icmpv4;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use ethernet::{EtherType, EthernetAddress};
pub use ipv4::Protocol as IpProtocol;

/// A field's byte range inside a header.
pub type Field = core::ops::Range<usize>;
/// The rest of a packet from an offset on.
pub type Rest = core::ops::RangeFrom<usize>;

/// Reads a big-endian `u16` at `at`. Callers have checked `at + 2 <= data.len()`.
#[inline(always)]
pub(crate) fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

/// Writes a big-endian `u16` at `at`. Callers have checked `at + 2 <= data.len()`.
#[inline(always)]
pub(crate) fn write_u16(data: &mut [u8], at: usize, value: u16) {
    data[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Reads an IPv4 address at `at`. Callers have checked `at + 4 <= data.len()`.
#[inline(always)]
pub(crate) fn read_ipv4(data: &[u8], at: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(data[at], data[at + 1], data[at + 2], data[at + 3])
}

/// Decodes a hex string (whitespace ignored) for golden-packet tests.
#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex digit"))
        .collect()
}
