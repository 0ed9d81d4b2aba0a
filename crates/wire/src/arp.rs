//! ARP for Ethernet and IPv4 (RFC 826), the only combination the dataplane speaks.
//!
//! Design: the view reads fields at the fixed offsets of the Ethernet/IPv4 layout (28 bytes)
//! and `Repr::parse` rejects any packet whose hardware type, protocol type or address
//! lengths say otherwise. Supporting variable-length addresses would make every accessor
//! depend on two length bytes from the wire, which is more code to prove panic-free for a
//! generality nobody on this link uses.
//!
//! Alternative rejected: treating unknown operations as requests (some stacks do). RFC 826
//! defines only request and reply; anything else is dropped and counted as malformed.

use crate::ethernet::EthernetAddress;
use crate::{read_ipv4, read_u16, write_u16};
use std::net::Ipv4Addr;
use thiserror::Error;

/// Field ranges of an Ethernet/IPv4 ARP packet (RFC 826 "Packet format").
pub mod field {
    use crate::Field;
    /// Hardware address space (`ar$hrd`).
    pub const HTYPE: Field = 0..2;
    /// Protocol address space (`ar$pro`).
    pub const PTYPE: Field = 2..4;
    /// Hardware address length (`ar$hln`).
    pub const HLEN: usize = 4;
    /// Protocol address length (`ar$pln`).
    pub const PLEN: usize = 5;
    /// Operation (`ar$op`).
    pub const OPER: Field = 6..8;
    /// Sender hardware address (`ar$sha`).
    pub const SHA: Field = 8..14;
    /// Sender protocol address (`ar$spa`).
    pub const SPA: Field = 14..18;
    /// Target hardware address (`ar$tha`).
    pub const THA: Field = 18..24;
    /// Target protocol address (`ar$tpa`).
    pub const TPA: Field = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TPA.end;
/// Hardware type for Ethernet (RFC 826; IANA "Hardware Types").
pub const HTYPE_ETHERNET: u16 = 1;
/// Protocol type for IPv4 (the IPv4 EtherType).
pub const PTYPE_IPV4: u16 = 0x0800;

/// Errors from checking or parsing an ARP packet. The network core drops and counts all of
/// them as malformed ARP.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than 28 bytes; drop it.
    #[error("ARP packet shorter than 28 bytes")]
    Truncated,
    /// Hardware type is not Ethernet; drop it, we speak only Ethernet.
    #[error("ARP hardware type {0} is not Ethernet")]
    UnsupportedHardware(u16),
    /// Protocol type is not IPv4; drop it, we speak only IPv4.
    #[error("ARP protocol type {0:#06x} is not IPv4")]
    UnsupportedProtocol(u16),
    /// Address lengths are not 6 and 4; drop it.
    #[error("ARP address lengths {hlen}/{plen} are not 6/4")]
    BadAddressLength {
        /// Hardware address length on the wire.
        hlen: u8,
        /// Protocol address length on the wire.
        plen: u8,
    },
    /// The operation is neither request (1) nor reply (2); drop it.
    #[error("ARP operation {0} is not request or reply")]
    UnsupportedOperation(u16),
}

/// ARP operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `ares_op$REQUEST` (1).
    Request,
    /// `ares_op$REPLY` (2).
    Reply,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for Operation {
    fn from(value: u16) -> Self {
        match value {
            1 => Operation::Request,
            2 => Operation::Reply,
            other => Operation::Unknown(other),
        }
    }
}

impl From<Operation> for u16 {
    fn from(value: Operation) -> Self {
        match value {
            Operation::Request => 1,
            Operation::Reply => 2,
            Operation::Unknown(other) => other,
        }
    }
}

/// A view of an Ethernet/IPv4 ARP packet. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wraps a buffer after checking it holds 28 bytes; no accessor panics afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }
    /// Checks the buffer holds an Ethernet/IPv4 ARP packet's 28 bytes.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }
    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Hardware type.
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE.start)
    }
    /// Protocol type.
    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PTYPE.start)
    }
    /// Hardware address length.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }
    /// Protocol address length.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }
    /// Operation.
    pub fn operation(&self) -> Operation {
        Operation::from(read_u16(self.buffer.as_ref(), field::OPER.start))
    }
    /// Sender hardware address.
    pub fn source_hardware_addr(&self) -> EthernetAddress {
        let d = &self.buffer.as_ref()[field::SHA];
        EthernetAddress([d[0], d[1], d[2], d[3], d[4], d[5]])
    }
    /// Sender protocol address.
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::SPA.start)
    }
    /// Target hardware address.
    pub fn target_hardware_addr(&self) -> EthernetAddress {
        let d = &self.buffer.as_ref()[field::THA];
        EthernetAddress([d[0], d[1], d[2], d[3], d[4], d[5]])
    }
    /// Target protocol address.
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        read_ipv4(self.buffer.as_ref(), field::TPA.start)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::HTYPE.start, value);
    }
    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::PTYPE.start, value);
    }
    /// Sets the hardware address length.
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }
    /// Sets the protocol address length.
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }
    /// Sets the operation.
    pub fn set_operation(&mut self, value: Operation) {
        write_u16(self.buffer.as_mut(), field::OPER.start, value.into());
    }
    /// Sets the sender hardware address.
    pub fn set_source_hardware_addr(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&value.0);
    }
    /// Sets the sender protocol address.
    pub fn set_source_protocol_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&value.octets());
    }
    /// Sets the target hardware address.
    pub fn set_target_hardware_addr(&mut self, value: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&value.0);
    }
    /// Sets the target protocol address.
    pub fn set_target_protocol_addr(&mut self, value: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&value.octets());
    }
}

/// A parsed Ethernet/IPv4 ARP request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Request or reply; never `Unknown` after `parse`.
    pub operation: Operation,
    /// Sender hardware address.
    pub source_hardware_addr: EthernetAddress,
    /// Sender protocol address.
    pub source_protocol_addr: Ipv4Addr,
    /// Target hardware address (ignored in requests, RFC 826).
    pub target_hardware_addr: EthernetAddress,
    /// Target protocol address.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Parses an Ethernet/IPv4 request or reply.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        packet.check_len()?;
        // RFC 826 "Packet Reception": check ar$hrd and ar$pro, and (here) their lengths.
        if packet.hardware_type() != HTYPE_ETHERNET {
            return Err(Error::UnsupportedHardware(packet.hardware_type()));
        }
        if packet.protocol_type() != PTYPE_IPV4 {
            return Err(Error::UnsupportedProtocol(packet.protocol_type()));
        }
        if packet.hardware_len() != 6 || packet.protocol_len() != 4 {
            return Err(Error::BadAddressLength {
                hlen: packet.hardware_len(),
                plen: packet.protocol_len(),
            });
        }
        let operation = packet.operation();
        if let Operation::Unknown(op) = operation {
            return Err(Error::UnsupportedOperation(op));
        }
        Ok(Repr {
            operation,
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }
    /// Header length: the whole 28-byte packet.
    pub const fn header_len(&self) -> usize {
        PACKET_LEN
    }
    /// Bytes `emit` writes: 28.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }
    /// Writes the packet. Precondition: the packet is at least `buffer_len()` long.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_hardware_type(HTYPE_ETHERNET);
        packet.set_protocol_type(PTYPE_IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use proptest::prelude::*;

    // An ARP request as Linux sends it ("who has 10.0.0.1? tell 10.0.0.2"), after the
    // Ethernet header: sender 52:54:00:12:34:56, target hardware address zero.
    const REQUEST: &str = "0001 0800 06 04 0001 525400123456 0a000002 000000000000 0a000001";
    // The reply from 02:00:00:00:00:01 (10.0.0.1) back to the requester.
    const REPLY: &str = "0001 0800 06 04 0002 020000000001 0a000001 525400123456 0a000002";

    fn requester() -> EthernetAddress {
        EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
    }

    #[test]
    fn parse_golden_request() {
        let bytes = hex(REQUEST);
        let repr = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(
            repr,
            Repr {
                operation: Operation::Request,
                source_hardware_addr: requester(),
                source_protocol_addr: Ipv4Addr::new(10, 0, 0, 2),
                target_hardware_addr: EthernetAddress([0; 6]),
                target_protocol_addr: Ipv4Addr::new(10, 0, 0, 1),
            }
        );
    }

    #[test]
    fn emit_golden_reply() {
        let repr = Repr {
            operation: Operation::Reply,
            source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            source_protocol_addr: Ipv4Addr::new(10, 0, 0, 1),
            target_hardware_addr: requester(),
            target_protocol_addr: Ipv4Addr::new(10, 0, 0, 2),
        };
        let mut bytes = vec![0xaau8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, hex(REPLY));
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap(),
            repr
        );
    }

    #[test]
    fn rejects_other_types() {
        let mut bytes = hex(REQUEST);
        assert_eq!(
            Packet::new_checked(&bytes[..27]).unwrap_err(),
            Error::Truncated
        );
        bytes[1] = 6; // IEEE 802 hardware.
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::UnsupportedHardware(6))
        );
        bytes[1] = 1;
        bytes[2] = 0x86;
        bytes[3] = 0xdd;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::UnsupportedProtocol(0x86dd))
        );
        bytes[2] = 0x08;
        bytes[3] = 0x00;
        bytes[5] = 16;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::BadAddressLength { hlen: 6, plen: 16 })
        );
        bytes[5] = 4;
        bytes[7] = 3; // RARP request.
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::UnsupportedOperation(3))
        );
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (
            any::<bool>(),
            any::<[u8; 6]>(),
            any::<u32>(),
            any::<[u8; 6]>(),
            any::<u32>(),
        )
            .prop_map(|(reply, sha, spa, tha, tpa)| Repr {
                operation: if reply {
                    Operation::Reply
                } else {
                    Operation::Request
                },
                source_hardware_addr: EthernetAddress(sha),
                source_protocol_addr: Ipv4Addr::from(spa),
                target_hardware_addr: EthernetAddress(tha),
                target_protocol_addr: Ipv4Addr::from(tpa),
            })
    }

    proptest! {
        #[test]
        fn round_trip(repr in arb_repr()) {
            let mut bytes = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap(), repr);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(packet) = Packet::new_checked(&data[..]) {
                let _ = Repr::parse(&packet);
            }
        }
    }
}
