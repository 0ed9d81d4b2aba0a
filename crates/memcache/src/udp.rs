//! memcached's UDP frame header, and splitting a reply into datagrams.
//!
//! Every memcached datagram starts with 8 bytes, four big-endian 16-bit fields (protocol.txt,
//! "UDP protocol"): a request ID chosen by the client and echoed in every reply datagram, the
//! datagram's sequence number, the total number of datagrams of the message, and a reserved
//! field that must be 0. After it comes the text or meta protocol, as on TCP.
//!
//! memcached accepts only single-datagram requests: a request whose total is not 1 is
//! answered `SERVER_ERROR multi-packet request not supported`, and a datagram of 8 bytes or
//! fewer is dropped without a reply; it ignores the sequence number and the reserved field.
//! [`parse_request`] does the same. A reply is cut into datagrams of at most 1400 bytes,
//! header included (memcached's `UDP_MAX_PAYLOAD_SIZE`, which counts the header it reserves
//! in each message), numbered from 0 with the total in each ([`split`]).

use crate::{read_u16, write_u16, Field};

/// Length of the frame header.
pub const HEADER_LEN: usize = 8;

/// memcached's largest reply datagram, header included.
pub const DATAGRAM_LEN_MAX: usize = 1400;

/// memcached's reply for a request spread over several datagrams.
pub const MULTI_PACKET_REPLY: &[u8] = b"SERVER_ERROR multi-packet request not supported\r\n";

/// Field ranges of the header.
mod field {
    use super::Field;
    /// Request ID.
    pub const REQUEST_ID: Field = 0..2;
    /// Sequence number of this datagram.
    pub const SEQUENCE: Field = 2..4;
    /// Total datagrams in the message.
    pub const TOTAL: Field = 4..6;
    /// Reserved, 0.
    pub const RESERVED: Field = 6..8;
}

/// The frame header of one datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// The client's request ID, echoed in every reply datagram.
    pub request_id: u16,
    /// This datagram's sequence number, from 0.
    pub sequence: u16,
    /// Datagrams in the message.
    pub total: u16,
    /// Reserved; memcached writes 0 and ignores what it reads.
    pub reserved: u16,
}

/// Why a datagram is refused, or a reply cannot be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    /// The datagram has no command after its header (8 bytes or fewer; memcached drops it
    /// silently). Drop it.
    #[error("datagram of {len} bytes carries no request")]
    Truncated {
        /// The datagram's length.
        len: usize,
    },
    /// The request claims more than one datagram. Reply [`MULTI_PACKET_REPLY`] (framed with
    /// `request_id`), as memcached does, and drop it.
    #[error("SERVER_ERROR multi-packet request not supported")]
    MultiPacket {
        /// The request's ID, for the reply.
        request_id: u16,
    },
    /// The reply needs more than 65535 datagrams: the caller's value limit is too large for
    /// UDP. Reply `SERVER_ERROR` instead.
    #[error("reply of {len} bytes needs more than 65535 datagrams")]
    TooManyDatagrams {
        /// The reply's length.
        len: usize,
    },
    /// A datagram limit that leaves no room after the header: a caller's setting is wrong.
    #[error("datagram limit {limit} leaves no room for a payload")]
    DatagramTooSmall {
        /// The limit given.
        limit: usize,
    },
}

impl FrameHeader {
    /// Reads the header at the start of `datagram`.
    pub fn parse(datagram: &[u8]) -> Result<FrameHeader, UdpError> {
        if datagram.len() < HEADER_LEN {
            return Err(UdpError::Truncated {
                len: datagram.len(),
            });
        }
        Ok(FrameHeader {
            request_id: read_u16(datagram, field::REQUEST_ID.start),
            sequence: read_u16(datagram, field::SEQUENCE.start),
            total: read_u16(datagram, field::TOTAL.start),
            reserved: read_u16(datagram, field::RESERVED.start),
        })
    }

    /// The header's 8 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        write_u16(&mut out, field::REQUEST_ID.start, self.request_id);
        write_u16(&mut out, field::SEQUENCE.start, self.sequence);
        write_u16(&mut out, field::TOTAL.start, self.total);
        write_u16(&mut out, field::RESERVED.start, self.reserved);
        out
    }
}

/// A request datagram's header and payload (the commands), with memcached's checks.
pub fn parse_request(datagram: &[u8]) -> Result<(FrameHeader, &[u8]), UdpError> {
    if datagram.len() <= HEADER_LEN {
        return Err(UdpError::Truncated {
            len: datagram.len(),
        });
    }
    let header = FrameHeader::parse(datagram)?;
    if header.total != 1 {
        return Err(UdpError::MultiPacket {
            request_id: header.request_id,
        });
    }
    Ok((header, &datagram[HEADER_LEN..]))
}

/// Payload bytes per datagram under a limit of `datagram_len_max`.
fn payload_max(datagram_len_max: usize) -> Result<usize, UdpError> {
    match datagram_len_max.checked_sub(HEADER_LEN) {
        Some(p) if p > 0 => Ok(p),
        _ => Err(UdpError::DatagramTooSmall {
            limit: datagram_len_max,
        }),
    }
}

/// Number of datagrams a reply of `reply_len` bytes takes (0 for an empty reply: nothing is
/// sent, as after `noreply`).
pub fn datagram_count(reply_len: usize, datagram_len_max: usize) -> Result<u16, UdpError> {
    let count = reply_len.div_ceil(payload_max(datagram_len_max)?);
    u16::try_from(count).map_err(|_| UdpError::TooManyDatagrams { len: reply_len })
}

/// The datagrams of one reply: each item is a header and the payload bytes that follow it.
#[derive(Clone, Debug)]
pub struct Datagrams<'a> {
    reply: &'a [u8],
    request_id: u16,
    payload_max: usize,
    total: u16,
    next: u16,
}

impl<'a> Iterator for Datagrams<'a> {
    type Item = (FrameHeader, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.total {
            return None;
        }
        let start = self.next as usize * self.payload_max;
        let end = (start + self.payload_max).min(self.reply.len());
        let header = FrameHeader {
            request_id: self.request_id,
            sequence: self.next,
            total: self.total,
            reserved: 0,
        };
        self.next += 1;
        Some((header, &self.reply[start..end]))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::from(self.total - self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Datagrams<'_> {}

/// Cuts `reply` into datagrams of at most `datagram_len_max` bytes, header included
/// ([`DATAGRAM_LEN_MAX`] for memcached's), answering request `request_id`.
pub fn split(
    reply: &[u8],
    request_id: u16,
    datagram_len_max: usize,
) -> Result<Datagrams<'_>, UdpError> {
    let total = datagram_count(reply.len(), datagram_len_max)?;
    Ok(Datagrams {
        reply,
        request_id,
        payload_max: payload_max(datagram_len_max)?,
        total,
        next: 0,
    })
}

/// Writes `header` and `payload` into the front of `out`; returns the datagram's length, or
/// `None` when `out` is too short.
pub fn write_datagram(out: &mut [u8], header: &FrameHeader, payload: &[u8]) -> Option<usize> {
    let len = HEADER_LEN + payload.len();
    let out = out.get_mut(..len)?;
    out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    out[HEADER_LEN..].copy_from_slice(payload);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_golden_bytes() {
        let h = FrameHeader {
            request_id: 0x1234,
            sequence: 2,
            total: 3,
            reserved: 0,
        };
        assert_eq!(h.to_bytes(), [0x12, 0x34, 0, 2, 0, 3, 0, 0]);
        assert_eq!(FrameHeader::parse(&h.to_bytes()), Ok(h));
    }

    #[test]
    fn request_checks_follow_memcached() {
        let d = b"\x00\x07\x00\x00\x00\x01\x00\x00get a\r\n";
        let (h, payload) = parse_request(d).unwrap();
        assert_eq!(h.request_id, 7);
        assert_eq!(payload, b"get a\r\n");
        // The sequence number and reserved field are ignored.
        let d = b"\x00\x07\x00\x05\x00\x01\xff\xffget a\r\n";
        assert!(parse_request(d).is_ok());
        let d = b"\x00\x07\x00\x00\x00\x02\x00\x00get a\r\n";
        assert_eq!(
            parse_request(d),
            Err(UdpError::MultiPacket { request_id: 7 })
        );
        let d = b"\x00\x07\x00\x00\x00\x00\x00\x00get a\r\n";
        assert_eq!(
            parse_request(d),
            Err(UdpError::MultiPacket { request_id: 7 })
        );
        assert_eq!(parse_request(&d[..8]), Err(UdpError::Truncated { len: 8 }));
    }

    #[test]
    fn split_counts_the_header_inside_1400_bytes() {
        let reply = vec![b'x'; 1392 * 2 + 1];
        let datagrams: Vec<_> = split(&reply, 9, DATAGRAM_LEN_MAX).unwrap().collect();
        assert_eq!(datagrams.len(), 3);
        for (i, (h, payload)) in datagrams.iter().enumerate() {
            assert_eq!((h.request_id, h.sequence, h.total), (9, i as u16, 3));
            assert!(HEADER_LEN + payload.len() <= DATAGRAM_LEN_MAX);
        }
        assert_eq!(datagrams[0].1.len(), 1392);
        assert_eq!(datagrams[2].1.len(), 1);
        assert_eq!(datagram_count(1392, DATAGRAM_LEN_MAX), Ok(1));
        assert_eq!(datagram_count(0, DATAGRAM_LEN_MAX), Ok(0));
        assert_eq!(
            datagram_count(1, HEADER_LEN),
            Err(UdpError::DatagramTooSmall { limit: 8 })
        );
        assert_eq!(
            datagram_count(65536, 9),
            Err(UdpError::TooManyDatagrams { len: 65536 })
        );
    }

    #[test]
    fn write_datagram_frames_a_payload() {
        let mut out = [0u8; 32];
        let h = FrameHeader {
            request_id: 1,
            sequence: 0,
            total: 1,
            reserved: 0,
        };
        let n = write_datagram(&mut out, &h, b"END\r\n").unwrap();
        assert_eq!(&out[..n], b"\x00\x01\x00\x00\x00\x01\x00\x00END\r\n");
        assert_eq!(write_datagram(&mut out[..10], &h, b"END\r\n"), None);
    }
}
