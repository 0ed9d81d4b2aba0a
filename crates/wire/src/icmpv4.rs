//! ICMPv4 (RFC 792): echo request and reply in full, every other type classified only.
//!
//! Design: the view knows the common 8-byte header (type, code, checksum, and the 4-byte
//! "rest of header", which for echo is identifier and sequence number). The checksum covers
//! the whole ICMP message (RFC 792 "Echo or Echo Reply Message": "the 16-bit one's complement
//! of the one's complement sum of the ICMP message starting with the ICMP Type"), so the
//! message length is the IPv4 payload length, which the caller trims before making the view.
//! `Repr` covers echo only: that is all the dataplane answers, and it answers in place, so
//! error messages (unreachable, time exceeded) need classifying for counters, not parsing.
//!
//! Alternative rejected: a `Repr` variant per RFC 792 message. Nothing here consumes them,
//! and each would be more code to fuzz.

use crate::checksum;
use crate::{read_u16, write_u16};
use thiserror::Error;

/// Field ranges of the ICMPv4 header (RFC 792).
pub mod field {
    use crate::{Field, Rest};
    /// Type.
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum over the whole message.
    pub const CHECKSUM: Field = 2..4;
    /// Echo identifier (within the "rest of header").
    pub const ECHO_IDENT: Field = 4..6;
    /// Echo sequence number (within the "rest of header").
    pub const ECHO_SEQNO: Field = 6..8;
    /// Data following the 8-byte header.
    pub const DATA: Rest = 8..;
}

/// Length of the ICMPv4 header.
pub const HEADER_LEN: usize = field::DATA.start;

/// Errors from checking or parsing an ICMPv4 message.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the 8-byte header; drop and count it as malformed.
    #[error("ICMP message shorter than 8 bytes")]
    Truncated,
    /// The checksum over the message does not verify; drop and count it.
    #[error("ICMP checksum does not verify")]
    BadChecksum,
    /// A well-formed message of a type (or code) we do not parse; drop and count it.
    #[error("ICMP message {0:?} code {1} is not supported")]
    Unsupported(Message, u8),
}

/// The ICMPv4 message type (RFC 792).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// Echo reply, 0.
    EchoReply,
    /// Destination unreachable, 3.
    DstUnreachable,
    /// Source quench, 4 (deprecated by RFC 6633).
    SourceQuench,
    /// Redirect, 5.
    Redirect,
    /// Echo request, 8.
    EchoRequest,
    /// Time exceeded, 11.
    TimeExceeded,
    /// Parameter problem, 12.
    ParamProblem,
    /// Timestamp, 13.
    Timestamp,
    /// Timestamp reply, 14.
    TimestampReply,
    /// Anything else.
    Unknown(u8),
}

impl From<u8> for Message {
    fn from(value: u8) -> Self {
        match value {
            0 => Message::EchoReply,
            3 => Message::DstUnreachable,
            4 => Message::SourceQuench,
            5 => Message::Redirect,
            8 => Message::EchoRequest,
            11 => Message::TimeExceeded,
            12 => Message::ParamProblem,
            13 => Message::Timestamp,
            14 => Message::TimestampReply,
            other => Message::Unknown(other),
        }
    }
}

impl From<Message> for u8 {
    fn from(value: Message) -> Self {
        match value {
            Message::EchoReply => 0,
            Message::DstUnreachable => 3,
            Message::SourceQuench => 4,
            Message::Redirect => 5,
            Message::EchoRequest => 8,
            Message::TimeExceeded => 11,
            Message::ParamProblem => 12,
            Message::Timestamp => 13,
            Message::TimestampReply => 14,
            Message::Unknown(other) => other,
        }
    }
}

/// A view of an ICMPv4 message whose buffer is exactly the message. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wraps a buffer after checking it holds the 8-byte header; no accessor panics
    /// afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }
    /// Checks the buffer holds the 8-byte header.
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
    /// Message type.
    #[inline]
    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE])
    }
    /// Message code.
    #[inline]
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }
    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
    /// Echo identifier (meaningful for echo messages).
    #[inline]
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }
    /// Echo sequence number (meaningful for echo messages).
    #[inline]
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQNO.start)
    }
    /// The data after the 8-byte header.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }
    /// True when the checksum over the whole message verifies (RFC 792).
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::sum(self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the message type.
    #[inline]
    pub fn set_msg_type(&mut self, value: Message) {
        self.buffer.as_mut()[field::TYPE] = value.into();
    }
    /// Sets the message code.
    #[inline]
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }
    /// Sets the echo identifier.
    #[inline]
    pub fn set_echo_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT.start, value);
    }
    /// Sets the echo sequence number.
    #[inline]
    pub fn set_echo_seq_no(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQNO.start, value);
    }
    /// The data after the header, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }
    /// Computes and stores the checksum over the whole message (RFC 792).
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let csum = !checksum::sum(self.buffer.as_ref());
        self.set_checksum(csum);
    }
}

/// A parsed echo request or reply; `data` borrows the packet's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr<'a> {
    /// Echo request (type 8, code 0).
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data, echoed back verbatim.
        data: &'a [u8],
    },
    /// Echo reply (type 0, code 0).
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data.
        data: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Parses an echo message after verifying the checksum over the whole message.
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Repr<'a>, Error> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        let bytes: &'a [u8] = packet.buffer;
        let data = &bytes[field::DATA];
        match (packet.msg_type(), packet.msg_code()) {
            (Message::EchoRequest, 0) => Ok(Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            (Message::EchoReply, 0) => Ok(Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            (message, code) => Err(Error::Unsupported(message, code)),
        }
    }
    /// Header length: 8 bytes.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }
    /// Header plus data.
    pub fn buffer_len(&self) -> usize {
        match self {
            Repr::EchoRequest { data, .. } | Repr::EchoReply { data, .. } => {
                HEADER_LEN + data.len()
            }
        }
    }
    /// Writes the message, data and checksum included. Precondition: the packet is exactly
    /// `buffer_len()` long (the checksum covers the whole buffer).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        let (message, ident, seq_no, data) = match *self {
            Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => (Message::EchoRequest, ident, seq_no, data),
            Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => (Message::EchoReply, ident, seq_no, data),
        };
        packet.set_msg_type(message);
        packet.set_msg_code(0);
        packet.set_echo_ident(ident);
        packet.set_echo_seq_no(seq_no);
        packet.data_mut()[..data.len()].copy_from_slice(data);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use proptest::prelude::*;

    /// An echo request in the layout Linux `ping` (iputils) uses: identifier 0x1c2d,
    /// sequence 1, 56 bytes of data (an 8-byte timestamp, then bytes 0x10..=0x3f); the
    /// checksum was computed with an independent Python implementation.
    const ECHO_REQUEST: &str = "0800 cc88 1c2d 0001 \
        a0b1c2d300000000 \
        101112131415161718191a1b1c1d1e1f 202122232425262728292a2b2c2d2e2f \
        303132333435363738393a3b3c3d3e3f";

    #[test]
    fn parse_golden_echo_request() {
        let bytes = hex(ECHO_REQUEST);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.verify_checksum());
        match Repr::parse(&packet).unwrap() {
            Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => {
                assert_eq!((ident, seq_no, data.len()), (0x1c2d, 1, 56));
                assert_eq!(data[8], 0x10);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn emit_golden_echo_request() {
        let golden = hex(ECHO_REQUEST);
        let repr = Repr::EchoRequest {
            ident: 0x1c2d,
            seq_no: 1,
            data: &golden[8..],
        };
        let mut bytes = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, golden);
    }

    #[test]
    fn classify_and_reject() {
        let mut bytes = hex(ECHO_REQUEST);
        bytes[20] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()),
            Err(Error::BadChecksum)
        );
        assert_eq!(
            Packet::new_checked(&bytes[..7]).unwrap_err(),
            Error::Truncated
        );
        // Destination unreachable, port unreachable (3/3), with a valid checksum.
        let mut unreachable = [3u8, 3, 0, 0, 0, 0, 0, 0];
        Packet::new_unchecked(&mut unreachable[..]).fill_checksum();
        let packet = Packet::new_checked(&unreachable[..]).unwrap();
        assert_eq!(packet.msg_type(), Message::DstUnreachable);
        assert_eq!(
            Repr::parse(&packet),
            Err(Error::Unsupported(Message::DstUnreachable, 3))
        );
        assert_eq!(Message::from(200), Message::Unknown(200));
        assert_eq!(u8::from(Message::TimeExceeded), 11);
    }

    proptest! {
        #[test]
        fn round_trip(reply in any::<bool>(), ident in any::<u16>(), seq_no in any::<u16>(),
                      data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let repr = if reply {
                Repr::EchoReply { ident, seq_no, data: &data }
            } else {
                Repr::EchoRequest { ident, seq_no, data: &data }
            };
            let mut bytes = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet).unwrap(), repr);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(packet) = Packet::new_checked(&data[..]) {
                let _ = Repr::parse(&packet);
                let _ = (packet.msg_type(), packet.echo_ident(), packet.data());
            }
        }
    }
}
