//! Ethernet II frames (IEEE 802.3 with an EtherType, RFC 894 for IPv4 over Ethernet).
//!
//! Design: a checked view over the 14-byte header and a three-field `Repr`. The frame check
//! sequence never reaches us (NICs and the kernel strip it), and trailing padding up to the
//! 60-byte minimum is left in the payload for the upper layer to trim by its own length
//! field (RFC 894: IPv4 uses its total length). 802.1Q tags are *recognised* (`Vlan`) so the
//! network core can count them, but not unwrapped: the dataplane serves one untagged
//! interface, and silently stripping tags would deliver traffic meant for another VLAN.
//!
//! Alternative rejected: a generic `EtherType` newtype over `u16`. An enum with `Unknown`
//! makes the match in the network core exhaustive, so a newly recognised type is a compile
//! error where it must be handled rather than a silent fall-through.

use crate::{read_u16, write_u16};
use core::fmt;
use thiserror::Error;

/// Field ranges of the Ethernet II header.
pub mod field {
    use crate::{Field, Rest};
    /// Destination MAC address.
    pub const DESTINATION: Field = 0..6;
    /// Source MAC address.
    pub const SOURCE: Field = 6..12;
    /// EtherType.
    pub const ETHERTYPE: Field = 12..14;
    /// Payload.
    pub const PAYLOAD: Rest = 14..;
}

/// Length of the Ethernet II header in bytes.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

// The header is contiguous fields ending at the payload.
const _: () = assert!(field::ETHERTYPE.end == HEADER_LEN);

/// Errors from checking an Ethernet frame.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the 14-byte header; drop the frame and count it.
    #[error("ethernet frame shorter than its header")]
    Truncated,
}

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// The address in the first six bytes of `data`; `None` if `data` is shorter.
    pub fn from_bytes(data: &[u8]) -> Option<EthernetAddress> {
        let bytes: [u8; 6] = data.get(..6)?.try_into().ok()?;
        Some(EthernetAddress(bytes))
    }
    /// The six address bytes.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }
    /// True for `ff:ff:ff:ff:ff:ff`.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
    /// True when the group bit (least significant bit of the first octet) is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }
    /// True for an individual (unicast) address: group bit clear and not all zeros.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && self.0 != [0; 6]
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The EtherType of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// IPv4, 0x0800 (RFC 894).
    Ipv4,
    /// ARP, 0x0806 (RFC 826).
    Arp,
    /// An IEEE 802.1Q VLAN tag, 0x8100; recognised so it can be counted.
    Vlan,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x8100 => EtherType::Vlan,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Vlan => 0x8100,
            EtherType::Unknown(other) => other,
        }
    }
}

/// A view of an Ethernet II frame. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer. Use this
    /// only for buffers the caller sized itself (emitting).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wraps a buffer after checking it holds a whole header; no accessor panics afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }
    /// Checks the buffer holds the 14-byte header.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }
    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Destination MAC address.
    #[inline]
    pub fn dst_addr(&self) -> EthernetAddress {
        let d = self.buffer.as_ref();
        EthernetAddress([d[0], d[1], d[2], d[3], d[4], d[5]])
    }
    /// Source MAC address.
    #[inline]
    pub fn src_addr(&self) -> EthernetAddress {
        let d = self.buffer.as_ref();
        EthernetAddress([d[6], d[7], d[8], d[9], d[10], d[11]])
    }
    /// EtherType.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::ETHERTYPE.start))
    }
    /// Everything after the header, padding included.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the destination MAC address.
    #[inline]
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }
    /// Sets the source MAC address.
    #[inline]
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }
    /// Sets the EtherType.
    #[inline]
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(
            self.buffer.as_mut(),
            field::ETHERTYPE.start,
            ethertype.into(),
        );
    }
    /// Everything after the header, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A parsed Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source MAC address.
    pub src_addr: EthernetAddress,
    /// Destination MAC address.
    pub dst_addr: EthernetAddress,
    /// EtherType.
    pub ethertype: EtherType,
}

impl Repr {
    /// Parses a checked frame. Ethernet has nothing to validate beyond its length.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        packet.check_len()?;
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            ethertype: packet.ethertype(),
        })
    }
    /// Header length: 14 bytes.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }
    /// Bytes `emit` writes: the header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }
    /// Writes the header. Precondition: the packet is at least `buffer_len()` long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_dst_addr(self.dst_addr);
        packet.set_src_addr(self.src_addr);
        packet.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use proptest::prelude::*;

    // The Ethernet header of an ARP request from a Linux host (broadcast destination).
    const ARP_HEADER: &str = "ffffffffffff 525400123456 0806";

    #[test]
    fn parse_golden_header() {
        let bytes = hex(ARP_HEADER);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr.dst_addr, EthernetAddress::BROADCAST);
        assert_eq!(
            repr.src_addr,
            EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(repr.ethertype, EtherType::Arp);
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn emit_golden_header() {
        let repr = Repr {
            src_addr: EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EtherType::Arp,
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, hex(ARP_HEADER));
    }

    #[test]
    fn truncated_and_types() {
        assert_eq!(
            Packet::new_checked(&[0u8; 13][..]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(EtherType::from(0x8100), EtherType::Vlan);
        assert_eq!(EtherType::from(0x86dd), EtherType::Unknown(0x86dd));
        assert_eq!(u16::from(EtherType::Unknown(0x86dd)), 0x86dd);
    }

    #[test]
    fn address_classes_and_display() {
        let a = EthernetAddress([0x02, 0, 0, 0, 0, 0x0a]);
        assert!(a.is_unicast() && !a.is_multicast() && !a.is_broadcast());
        assert!(
            EthernetAddress::BROADCAST.is_broadcast() && !EthernetAddress::BROADCAST.is_unicast()
        );
        assert!(!EthernetAddress([0; 6]).is_unicast());
        assert_eq!(a.to_string(), "02:00:00:00:00:0a");
        assert_eq!(EthernetAddress::from_bytes(&[1, 2, 3]), None);
    }

    fn arb_addr() -> impl Strategy<Value = EthernetAddress> {
        any::<[u8; 6]>().prop_map(EthernetAddress)
    }

    proptest! {
        #[test]
        fn round_trip(src in arb_addr(), dst in arb_addr(), ty in any::<u16>()) {
            let repr = Repr { src_addr: src, dst_addr: dst, ethertype: EtherType::from(ty) };
            let mut bytes = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap(), repr);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(packet) = Packet::new_checked(&data[..]) {
                let _ = Repr::parse(&packet);
                let _ = packet.payload();
            }
        }
    }
}
