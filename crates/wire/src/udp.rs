//! UDP (RFC 768) over IPv4, with the pseudo-header checksum and a classifier for checksums
//! left unfinished by transmit offload.
//!
//! Design: the view's buffer is the IPv4 payload; `new_checked` requires the UDP length
//! field to lie in `8..=buffer length` and `payload()` is `8..length`, so bytes beyond the
//! UDP length are ignored, as Linux does (it trims the datagram to the UDP length).
//!
//! Receive checksums are *classified*, not just verified, by [`checksum_status`]:
//!
//! - `Valid`: the one's-complement sum over pseudo-header and datagram is all ones.
//! - `Zero`: the field is zero, meaning the sender computed none, which RFC 768 allows for
//!   IPv4 ("An all zero transmitted checksum value means that the transmitter generated no
//!   checksum").
//! - `Partial`: the field holds exactly the folded pseudo-header sum, not complemented. That
//!   is what Linux leaves when a packet with `CHECKSUM_PARTIAL` crosses a veth pair: the
//!   "hardware" that was to finish the sum never existed. Telling it apart lets the network
//!   core accept it by policy (same host, no wire to corrupt it) and count it.
//! - `Invalid`: anything else.
//!
//! On transmit the checksum is always computed in full, and a computed zero is sent as
//! `0xffff` (RFC 768: "If the computed checksum is zero, it is transmitted as all ones").
//!
//! Alternative rejected: verifying with a boolean and a "trust offload" flag that skips the
//! check. That would also accept genuinely corrupt datagrams; the classifier accepts only
//! the one specific unfinished value.

use crate::checksum;
use crate::read_u16;
use crate::write_u16;
use std::net::Ipv4Addr;
use thiserror::Error;

/// Field ranges of the UDP header (RFC 768 "Format").
pub mod field {
    use crate::{Field, Rest};
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Length of header plus data.
    pub const LENGTH: Field = 4..6;
    /// Checksum.
    pub const CHECKSUM: Field = 6..8;
    /// Data.
    pub const PAYLOAD: Rest = 8..;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;
/// The IPv4 protocol number of UDP, used in the pseudo-header.
pub const PROTOCOL: u8 = 17;
/// Largest payload the 16-bit length field can express.
pub const PAYLOAD_LEN_MAX: usize = u16::MAX as usize - HEADER_LEN;

/// Errors from checking or parsing a UDP datagram.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the 8-byte header; drop and count it.
    #[error("UDP datagram shorter than 8 bytes")]
    Truncated,
    /// The length field is below 8 or beyond the IPv4 payload; drop and count it.
    #[error("UDP length {0} is invalid for this buffer")]
    BadLength(usize),
    /// The checksum does not verify; drop and count it.
    #[error("UDP checksum does not verify")]
    BadChecksum,
    /// The checksum holds only the pseudo-header sum (unfinished offload); the caller
    /// decides by policy, see [`checksum_status`].
    #[error("UDP checksum is a partial (offload) checksum")]
    PartialChecksum,
}

/// What a received UDP checksum says. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumStatus {
    /// The checksum verifies.
    Valid,
    /// The sender sent no checksum (field zero); RFC 768 allows this over IPv4.
    Zero,
    /// The field equals the folded pseudo-header sum: transmit offload left it unfinished.
    Partial,
    /// The checksum does not verify.
    Invalid,
}

/// A view of a UDP datagram whose buffer is the IPv4 payload. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wraps a buffer after checking the header and length field; no accessor panics
    /// afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }
    /// Checks 8 bytes are present and the length field lies in `8..=buffer length`
    /// (RFC 768 "Length": the minimum value is eight).
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let udp_len = usize::from(self.len());
        if udp_len < HEADER_LEN || udp_len > len {
            return Err(Error::BadLength(udp_len));
        }
        Ok(())
    }
    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT.start)
    }
    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT.start)
    }
    /// The length field: header plus data.
    #[inline]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }
    /// True when the length field says there is no data.
    #[inline]
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }
    /// The checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
    /// The data, `8..length`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port.
    #[inline]
    pub fn set_src_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT.start, value);
    }
    /// Sets the destination port.
    #[inline]
    pub fn set_dst_port(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT.start, value);
    }
    /// Sets the length field.
    #[inline]
    pub fn set_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, value);
    }
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }
    /// The data, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
    /// Computes the full checksum over pseudo-header, header and data, and stores it;
    /// a computed zero is stored as `0xffff` (RFC 768 "Checksum").
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = self.len();
        let pseudo = checksum::pseudo_header_v4(src, dst, PROTOCOL, len);
        let body = checksum::sum(&self.buffer.as_ref()[..usize::from(len)]);
        self.set_checksum(transmitted_checksum(checksum::combine(&[pseudo, body])));
    }
}

/// The checksum field for a datagram whose folded sum is `sum`: its complement, except that a
/// computed zero is transmitted as all ones, since zero means "none" (RFC 768 "Checksum").
#[inline]
fn transmitted_checksum(sum: u16) -> u16 {
    match !sum {
        0 => 0xffff,
        csum => csum,
    }
}

/// Classifies the checksum of a received datagram from `src` to `dst`. See the module
/// documentation for what each status means.
#[inline]
pub fn checksum_status<T: AsRef<[u8]>>(
    packet: &Packet<T>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> ChecksumStatus {
    let field = packet.checksum();
    if field == 0 {
        // RFC 768: zero means the transmitter generated no checksum.
        return ChecksumStatus::Zero;
    }
    let len = packet.len();
    let pseudo = checksum::pseudo_header_v4(src, dst, PROTOCOL, len);
    let body = checksum::sum(&packet.buffer.as_ref()[..usize::from(len)]);
    if checksum::combine(&[pseudo, body]) == 0xffff {
        ChecksumStatus::Valid
    } else if field == pseudo {
        ChecksumStatus::Partial
    } else {
        ChecksumStatus::Invalid
    }
}

/// A parsed UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Data length in bytes; at most [`PAYLOAD_LEN_MAX`].
    pub payload_len: usize,
}

impl Repr {
    /// Parses a checked datagram from `src` to `dst`, accepting `Valid` and `Zero`
    /// checksums. `Partial` is reported as [`Error::PartialChecksum`] for the caller's
    /// policy; `Invalid` as [`Error::BadChecksum`].
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<Repr, Error> {
        packet.check_len()?;
        match checksum_status(packet, src, dst) {
            ChecksumStatus::Valid | ChecksumStatus::Zero => {}
            ChecksumStatus::Partial => return Err(Error::PartialChecksum),
            ChecksumStatus::Invalid => return Err(Error::BadChecksum),
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
        })
    }
    /// Header length: 8 bytes.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }
    /// Header plus data.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }
    /// Writes the header in front of data already in place and computes the full
    /// checksum. Preconditions: the packet holds `buffer_len()` bytes and
    /// `payload_len <= PAYLOAD_LEN_MAX`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        assert!(
            self.payload_len <= PAYLOAD_LEN_MAX,
            "UDP payload of {} bytes",
            self.payload_len
        );
        let len = (HEADER_LEN + self.payload_len) as u16;
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        // The header's words come from the values just written, not from memory: reading
        // back freshly written narrow stores with wide loads stalls store forwarding (see
        // `ipv4::Repr::emit`). Only the data, written earlier, is summed from the buffer.
        let data = checksum::sum(&packet.buffer.as_ref()[HEADER_LEN..usize::from(len)]);
        let pseudo = checksum::pseudo_header_v4(src, dst, PROTOCOL, len);
        let sum = checksum::combine(&[pseudo, self.src_port, self.dst_port, len, data]);
        packet.set_checksum(transmitted_checksum(sum));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    // A UDP datagram in the form `echo -n hello-melange | nc -u 10.0.0.1 7` sends from port
    // 40000; the checksum was computed with an independent Python implementation.
    const DATAGRAM: &str = "9c40 0007 0015 5e4c 68656c6c6f2d6d656c616e6765";

    #[test]
    fn parse_golden_datagram() {
        let mut bytes = hex(DATAGRAM);
        bytes.extend_from_slice(&[0, 0, 0]); // Bytes beyond the UDP length are ignored.
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(checksum_status(&packet, SRC, DST), ChecksumStatus::Valid);
        assert_eq!(packet.payload(), b"hello-melange");
        assert_eq!(
            Repr::parse(&packet, SRC, DST).unwrap(),
            Repr {
                src_port: 40000,
                dst_port: 7,
                payload_len: 13
            }
        );
    }

    #[test]
    fn emit_golden_datagram() {
        let golden = hex(DATAGRAM);
        let repr = Repr {
            src_port: 40000,
            dst_port: 7,
            payload_len: 13,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        bytes[8..].copy_from_slice(b"hello-melange");
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]), SRC, DST);
        assert_eq!(bytes, golden);
    }

    #[test]
    fn checksum_statuses() {
        let mut bytes = hex(DATAGRAM);
        {
            let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
            p.set_checksum(0);
            assert_eq!(checksum_status(&p, SRC, DST), ChecksumStatus::Zero);
            // What veth TX offload leaves: the folded pseudo-header sum, not complemented.
            p.set_checksum(checksum::pseudo_header_v4(SRC, DST, PROTOCOL, 21));
            assert_eq!(checksum_status(&p, SRC, DST), ChecksumStatus::Partial);
            assert_eq!(Repr::parse(&p, SRC, DST), Err(Error::PartialChecksum));
            p.set_checksum(0x1234);
            assert_eq!(checksum_status(&p, SRC, DST), ChecksumStatus::Invalid);
            assert_eq!(Repr::parse(&p, SRC, DST), Err(Error::BadChecksum));
        }
        assert_eq!(
            Packet::new_checked(&bytes[..7]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&bytes[..20]).unwrap_err(),
            Error::BadLength(21)
        );
        bytes[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::BadLength(7)
        );
    }

    #[test]
    fn computed_zero_is_sent_as_all_ones() {
        // Find a payload word that makes the computed checksum zero, then check the field.
        let repr = Repr {
            src_port: 1,
            dst_port: 2,
            payload_len: 2,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]), SRC, DST);
        // The sum without the payload word is `!checksum`; choosing the word equal to the
        // checksum makes the total all ones, so the computed checksum is zero.
        let word = read_u16(&bytes, 6);
        bytes[8..10].copy_from_slice(&word.to_be_bytes());
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.fill_checksum(SRC, DST);
        assert_eq!(p.checksum(), 0xffff);
        assert_eq!(checksum_status(&p, SRC, DST), ChecksumStatus::Valid);
    }

    proptest! {
        #[test]
        fn round_trip(src_port in any::<u16>(), dst_port in any::<u16>(), s in any::<u32>(), d in any::<u32>(),
                      data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (src, dst) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
            let repr = Repr { src_port, dst_port, payload_len: data.len() };
            let mut bytes = vec![0u8; repr.buffer_len()];
            bytes[HEADER_LEN..].copy_from_slice(&data);
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]), src, dst);
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(checksum_status(&packet, src, dst), ChecksumStatus::Valid);
            prop_assert_eq!(Repr::parse(&packet, src, dst).unwrap(), repr);
            prop_assert_eq!(packet.payload(), &data[..]);
            // The checksum computed from the values equals the one summed over the datagram.
            let mut refilled = bytes.clone();
            Packet::new_unchecked(&mut refilled[..]).fill_checksum(src, dst);
            prop_assert_eq!(refilled, bytes);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), s in any::<u32>(), d in any::<u32>()) {
            if let Ok(packet) = Packet::new_checked(&data[..]) {
                let _ = Repr::parse(&packet, Ipv4Addr::from(s), Ipv4Addr::from(d));
                let _ = checksum_status(&packet, Ipv4Addr::from(s), Ipv4Addr::from(d));
                let _ = packet.payload();
            }
        }
    }
}
