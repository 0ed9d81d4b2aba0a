//! TCP headers (RFC 9293 §3.1) over IPv4, with options (RFC 9293 §3.2, RFC 7323 window
//! scale and timestamps, RFC 2018 SACK), the pseudo-header checksum, and the same
//! offload-aware checksum classifier as UDP. This is the wire layer under Melange's own TCP.
//!
//! Design: the view's buffer is the IPv4 payload (as `ipv4::Packet::payload` trims it), since
//! TCP has no length field of its own and takes the segment length from IP (RFC 9293 §3.1
//! "TCP Length" in the pseudo-header). `new_checked` requires the 20-byte fixed header, a data
//! offset of 5 to 15 words, and a header that fits the buffer; after it succeeds `options()`
//! is `20..header_len` and `payload()` is `header_len..`, and no accessor can panic.
//!
//! Options are read by [`TcpOptions`], an iterator that yields each option *or a typed error*
//! and stops after the first error. RFC 9293 §3.2 (MUST-7) requires a receiver to be ready
//! for an illegal option length such as zero; we go further and never guess: a malformed
//! options region gives an [`enum@Error`], and the connection layer drops the segment and counts
//! it (a segment whose option lengths are wrong cannot be trusted in anything else). RFC 9293
//! suggests resetting the connection instead; that is the connection layer's choice to make,
//! and dropping is the safer default, since a reset sent for a forged segment would let an
//! off-path sender tear connections down. Unknown kinds with a well-formed length are
//! skipped (RFC 9293 §3.2, MUST-6: options a receiver does not implement are ignored).
//!
//! [`Repr`] holds what Melange's TCP acts on: ports, sequence and acknowledgment numbers,
//! control bits, the raw window, MSS, window scale, SACK-permitted, up to four SACK blocks,
//! timestamps and the payload length. The urgent pointer is not carried (Melange does not
//! implement urgent data, which RFC 6093 discourages); emit writes zero. `Repr::emit` lays
//! options out exactly as Linux's `tcp_options_write` does, every option on a 4-byte
//! boundary padded with NOPs, so our segments look like the peer stacks' and a capture of
//! ours diffs cleanly against a capture of Linux:
//!
//! - SYN: `MSS, SACK-permitted + timestamps, NOP + window scale` (`02 04 .. | 04 02 08 0a ..
//!   | 01 03 03 ..`); without timestamps, SACK-permitted is sent as `NOP NOP 04 02` after
//!   window scale.
//! - Later segments: `NOP NOP timestamps`, then `NOP NOP SACK blocks`.
//!
//! Alternative rejected: the tightest packing (no NOPs). It saves up to 3 bytes a segment
//! but moves the timestamp words off 4-byte boundaries, which Linux's fast path (header
//! prediction) checks for, and it would make our captures differ from the kernel's.
//!
//! Checksums are classified as in `udp`: `Valid`, `Partial` (the field holds the folded
//! pseudo-header sum that Linux leaves under `CHECKSUM_PARTIAL`, as every TCP segment
//! captured on `lo` or crossing a veth shows) and `Invalid`. TCP has no "zero means none"
//! rule (RFC 9293 §3.1: the checksum is mandatory), so the parallel [`ChecksumStatus`] here
//! has no `Zero` variant: reusing `udp::ChecksumStatus` would make every TCP match handle a
//! case that cannot happen, and a `Zero` that slipped through would accept a corrupt
//! segment. [`Repr::parse`] takes a [`ChecksumPolicy`] so that the same-host acceptance of
//! `Partial` is decided once, by the caller, rather than by every call site matching on an
//! error.

use crate::checksum;
use crate::read_u16;
use crate::write_u16;
use std::net::Ipv4Addr;
use thiserror::Error;

/// Field ranges of the TCP header (RFC 9293 §3.1 "Header Format").
pub mod field {
    use crate::{Field, Rest};
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Sequence number.
    pub const SEQ_NUM: Field = 4..8;
    /// Acknowledgment number.
    pub const ACK_NUM: Field = 8..12;
    /// Data offset (high nibble, in 32-bit words) and reserved bits (low nibble).
    pub const DATA_OFF: usize = 12;
    /// Control bits: CWR ECE URG ACK PSH RST SYN FIN, high bit first.
    pub const FLAGS: usize = 13;
    /// Window.
    pub const WINDOW: Field = 14..16;
    /// Checksum.
    pub const CHECKSUM: Field = 16..18;
    /// Urgent pointer.
    pub const URGENT: Field = 18..20;
    /// Options, up to the data offset, then data.
    pub const OPTIONS: Rest = 20..;
}

/// Length of the header without options.
pub const HEADER_LEN: usize = field::OPTIONS.start;
/// Length of the longest header: data offset 15 words (RFC 9293 §3.1 "Data Offset").
pub const HEADER_LEN_MAX: usize = 15 * 4;
/// The largest option space, 40 bytes: what a 4-bit data offset leaves after the fixed header.
pub const OPTIONS_LEN_MAX: usize = HEADER_LEN_MAX - HEADER_LEN;
/// Most SACK blocks an option can hold: `2 + 8n <= 40` (RFC 2018 §3).
pub const SACK_BLOCKS_MAX: usize = 4;
/// Largest window scale shift (RFC 7323 §2.3).
pub const WINDOW_SCALE_MAX: u8 = 14;
/// The IPv4 protocol number of TCP, used in the pseudo-header.
pub const PROTOCOL: u8 = 6;
/// Largest segment (header plus data) the 16-bit pseudo-header length can express.
pub const SEGMENT_LEN_MAX: usize = u16::MAX as usize;

const _: () = assert!(OPTIONS_LEN_MAX == 40);
const _: () = assert!(2 + 8 * SACK_BLOCKS_MAX <= OPTIONS_LEN_MAX);
const _: () = assert!(2 + 8 * (SACK_BLOCKS_MAX + 1) > OPTIONS_LEN_MAX);

/// Option kinds (RFC 9293 §3.2, RFC 7323 §2.2 and §3.2, RFC 2018 §2 and §3).
mod kind {
    pub const END_OF_LIST: u8 = 0;
    pub const NO_OPERATION: u8 = 1;
    pub const MAX_SEG_SIZE: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const SACK_RANGE: u8 = 5;
    pub const TIMESTAMPS: u8 = 8;
}

/// Errors from checking or parsing a TCP segment. In every case the connection layer drops
/// the segment and counts the variant; none of them is a reason to reset a connection.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the 20-byte fixed header; drop and count it.
    #[error("TCP segment shorter than 20 bytes")]
    Truncated,
    /// The segment is longer than the pseudo-header length can express; drop and count it
    /// (no IPv4 datagram can carry one, so the caller passed the wrong slice).
    #[error("TCP segment of {0} bytes is longer than 65535")]
    TooLong(usize),
    /// Data offset below 5 words; drop and count it.
    #[error("TCP data offset {0} is below 5 words")]
    BadDataOffset(u8),
    /// The header length the data offset gives exceeds the buffer; drop and count it.
    #[error("TCP header of {0} bytes is longer than the segment")]
    BadHeaderLen(usize),
    /// An option's length byte is 0 or 1, which cannot cover its own kind and length bytes
    /// (RFC 9293 §3.2, MUST-7); drop the segment and count it.
    #[error("TCP option kind {kind} has illegal length {len}")]
    OptionLenTooShort {
        /// Option kind.
        kind: u8,
        /// Length byte as received.
        len: u8,
    },
    /// An option's length byte (or the length byte itself) runs past the options region;
    /// drop the segment and count it.
    #[error("TCP option kind {kind} runs past the options region")]
    OptionTruncated {
        /// Option kind.
        kind: u8,
    },
    /// A known option has the wrong length (MSS not 4, window scale not 3, SACK-permitted not
    /// 2, timestamps not 10, SACK not `2 + 8n`); drop the segment and count it.
    #[error("TCP option kind {kind} has wrong length {len}")]
    OptionBadLen {
        /// Option kind.
        kind: u8,
        /// Length byte as received.
        len: u8,
    },
    /// The checksum does not verify; drop and count it.
    #[error("TCP checksum does not verify")]
    BadChecksum,
    /// The checksum holds only the pseudo-header sum (unfinished offload) and the policy
    /// was [`ChecksumPolicy::Strict`]; drop and count it, or parse again with
    /// [`ChecksumPolicy::AcceptPartial`] if the segment came from this host.
    #[error("TCP checksum is a partial (offload) checksum")]
    PartialChecksum,
}

/// What a received TCP checksum says. See the module documentation for why this is not
/// `udp::ChecksumStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumStatus {
    /// The checksum verifies.
    Valid,
    /// The field equals the folded pseudo-header sum: transmit offload left it unfinished.
    Partial,
    /// The checksum does not verify.
    Invalid,
}

/// Which checksums [`Repr::parse`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChecksumPolicy {
    /// Only `Valid`; `Partial` is [`Error::PartialChecksum`]. For segments off a wire.
    Strict,
    /// `Valid` and `Partial`. For segments from this host (veth, loopback), where offload
    /// leaves the sum unfinished and there is no wire to corrupt the bytes.
    AcceptPartial,
}

/// The control bits of a TCP header (RFC 9293 §3.1 "Control bits", RFC 3168 §6.1 for ECE
/// and CWR), a bit set over the flags byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No more data from sender.
    pub const FIN: Flags = Flags(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: Flags = Flags(0x02);
    /// Reset the connection.
    pub const RST: Flags = Flags(0x04);
    /// Push function.
    pub const PSH: Flags = Flags(0x08);
    /// Acknowledgment field is significant.
    pub const ACK: Flags = Flags(0x10);
    /// Urgent pointer field is significant.
    pub const URG: Flags = Flags(0x20);
    /// ECN-Echo (RFC 3168).
    pub const ECE: Flags = Flags(0x40);
    /// Congestion Window Reduced (RFC 3168).
    pub const CWR: Flags = Flags(0x80);

    /// The empty set.
    pub const fn empty() -> Flags {
        Flags(0)
    }
    /// The set whose bits are `bits`; every bit of the byte is a defined flag.
    pub const fn from_bits(bits: u8) -> Flags {
        Flags(bits)
    }
    /// The flags byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// True when no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// True when every flag of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    /// True when any flag of `other` is set in `self`.
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }
    /// The flags in either set.
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    /// The flags of `self` that are not in `other`.
    pub const fn difference(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
    /// Clears the flags of `other`.
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, other: Flags) -> Flags {
        self.union(other)
    }
}

impl core::ops::BitOrAssign for Flags {
    fn bitor_assign(&mut self, other: Flags) {
        self.insert(other);
    }
}

impl core::fmt::Debug for Flags {
    /// Prints the set flags by name, as tcpdump's letters would be unreadable in test output.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        const NAMES: [(Flags, &str); 8] = [
            (Flags::FIN, "FIN"),
            (Flags::SYN, "SYN"),
            (Flags::RST, "RST"),
            (Flags::PSH, "PSH"),
            (Flags::ACK, "ACK"),
            (Flags::URG, "URG"),
            (Flags::ECE, "ECE"),
            (Flags::CWR, "CWR"),
        ];
        f.write_str("Flags(")?;
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// One TCP option as read from the options region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOption<'a> {
    /// End of option list (kind 0, RFC 9293 §3.2); the iterator stops after it, since what
    /// follows is padding.
    EndOfList,
    /// No-operation (kind 1), used to align the next option.
    NoOperation,
    /// Maximum segment size (kind 2, length 4, RFC 9293 §3.7.1).
    MaxSegmentSize(u16),
    /// Window scale shift count as received (kind 3, length 3, RFC 7323 §2.2); not clamped
    /// here, [`Repr::parse`] clamps it.
    WindowScale(u8),
    /// SACK permitted (kind 4, length 2, RFC 2018 §2).
    SackPermitted,
    /// SACK blocks (kind 5, length `2 + 8 * count`, RFC 2018 §3): `ranges[..count]` are
    /// (left edge, right edge) pairs; the rest are zero.
    SackRange {
        /// The blocks, left edge first; entries at `count..` are zero.
        ranges: [(u32, u32); SACK_BLOCKS_MAX],
        /// How many blocks are present, `0..=4`. Zero happens for a length-2 option, which
        /// is accepted and carries nothing, as Linux treats it.
        count: usize,
    },
    /// Timestamps (kind 8, length 10, RFC 7323 §3.2).
    Timestamps {
        /// The sender's timestamp value.
        tsval: u32,
        /// The echoed timestamp.
        tsecr: u32,
    },
    /// A kind this crate does not interpret, with a well-formed length.
    Unknown {
        /// Option kind.
        kind: u8,
        /// The bytes after kind and length.
        data: &'a [u8],
    },
}

/// Iterator over an options region, yielding each option or the first error and then
/// stopping. Create it with [`Packet::options_iter`] or [`TcpOptions::new`].
#[derive(Debug, Clone)]
pub struct TcpOptions<'a> {
    rest: &'a [u8],
}

impl<'a> TcpOptions<'a> {
    /// Iterates over `region`, an options region of any length.
    pub const fn new(region: &'a [u8]) -> Self {
        TcpOptions { rest: region }
    }
}

/// Reads a big-endian `u32` at `at`. Callers have checked `at + 4 <= data.len()`.
#[inline(always)]
fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

/// Writes a big-endian `u32` at `at`. Callers have checked `at + 4 <= data.len()`.
#[inline(always)]
fn write_u32(data: &mut [u8], at: usize, value: u32) {
    data[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

impl<'a> Iterator for TcpOptions<'a> {
    type Item = Result<TcpOption<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, after_kind) = self.rest.split_first()?;
        // RFC 9293 §3.2: kinds 0 and 1 are a single byte; every other kind has a length byte
        // that counts kind, length and data.
        match kind {
            kind::END_OF_LIST => {
                self.rest = &[];
                return Some(Ok(TcpOption::EndOfList));
            }
            kind::NO_OPERATION => {
                self.rest = after_kind;
                return Some(Ok(TcpOption::NoOperation));
            }
            _ => {}
        }
        // After any error the iterator is exhausted: the lengths that follow cannot be trusted.
        let result = Self::parse_long(kind, self.rest);
        match result {
            Ok((_, len)) => self.rest = &self.rest[len..],
            Err(_) => self.rest = &[],
        }
        Some(result.map(|(option, _)| option))
    }
}

impl<'a> TcpOptions<'a> {
    /// Parses a kind-length-data option at the start of `rest`, returning it and its length.
    fn parse_long(kind: u8, rest: &'a [u8]) -> Result<(TcpOption<'a>, usize), Error> {
        let Some(&len_byte) = rest.get(1) else {
            return Err(Error::OptionTruncated { kind });
        };
        let len = usize::from(len_byte);
        // RFC 9293 §3.2 MUST-7: a length below 2 cannot cover kind and length; looping on it
        // would never advance.
        if len < 2 {
            return Err(Error::OptionLenTooShort {
                kind,
                len: len_byte,
            });
        }
        let Some(option) = rest.get(..len) else {
            return Err(Error::OptionTruncated { kind });
        };
        let bad_len = Err(Error::OptionBadLen {
            kind,
            len: len_byte,
        });
        let parsed = match kind {
            // RFC 9293 §3.2: MSS, length 4.
            kind::MAX_SEG_SIZE if len == 4 => TcpOption::MaxSegmentSize(read_u16(option, 2)),
            // RFC 7323 §2.2: window scale, length 3.
            kind::WINDOW_SCALE if len == 3 => TcpOption::WindowScale(option[2]),
            // RFC 2018 §2: SACK-permitted, length 2.
            kind::SACK_PERMITTED if len == 2 => TcpOption::SackPermitted,
            // RFC 2018 §3: SACK, length 2 + 8n.
            kind::SACK_RANGE if (len - 2) % 8 == 0 && (len - 2) / 8 <= SACK_BLOCKS_MAX => {
                let count = (len - 2) / 8;
                let mut ranges = [(0, 0); SACK_BLOCKS_MAX];
                for (i, range) in ranges.iter_mut().enumerate().take(count) {
                    let at = 2 + 8 * i;
                    *range = (read_u32(option, at), read_u32(option, at + 4));
                }
                TcpOption::SackRange { ranges, count }
            }
            // RFC 7323 §3.2: timestamps, length 10.
            kind::TIMESTAMPS if len == 10 => TcpOption::Timestamps {
                tsval: read_u32(option, 2),
                tsecr: read_u32(option, 6),
            },
            kind::MAX_SEG_SIZE
            | kind::WINDOW_SCALE
            | kind::SACK_PERMITTED
            | kind::SACK_RANGE
            | kind::TIMESTAMPS => return bad_len,
            // RFC 9293 §3.2 MUST-6: skip an option we do not implement.
            _ => TcpOption::Unknown {
                kind,
                data: &option[2..],
            },
        };
        Ok((parsed, len))
    }
}

/// A view of a TCP segment whose buffer is the IPv4 payload. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }
    /// Wraps a buffer after checking the header lengths; no accessor panics afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }
    /// Checks the fixed header is present, the data offset is at least 5 words and the
    /// header fits the buffer (RFC 9293 §3.1 "Data Offset"), and the segment fits the
    /// pseudo-header's 16-bit length.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if len > SEGMENT_LEN_MAX {
            return Err(Error::TooLong(len));
        }
        let words = self.data_offset_words();
        if words < 5 {
            return Err(Error::BadDataOffset(words));
        }
        let header_len = self.header_len();
        if header_len > len {
            return Err(Error::BadHeaderLen(header_len));
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
    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }
    /// Acknowledgment number; meaningful only when [`Flags::ACK`] is set.
    #[inline]
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM.start)
    }
    /// The data offset field in 32-bit words (the high nibble of byte 12).
    #[inline]
    pub fn data_offset_words(&self) -> u8 {
        self.buffer.as_ref()[field::DATA_OFF] >> 4
    }
    /// Header length in bytes, options included: data offset times four.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset_words()) * 4
    }
    /// The control bits.
    #[inline]
    pub fn flags(&self) -> Flags {
        Flags(self.buffer.as_ref()[field::FLAGS])
    }
    /// The window field, unscaled.
    #[inline]
    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW.start)
    }
    /// The checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }
    /// The urgent pointer field; meaningful only when [`Flags::URG`] is set.
    #[inline]
    pub fn urgent_at(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT.start)
    }
    /// The options region, `20..header_len`.
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// An iterator over the options.
    #[inline]
    pub fn options_iter(&self) -> TcpOptions<'_> {
        TcpOptions::new(self.options())
    }
    /// The data, `header_len..`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
    /// Segment length as the pseudo-header counts it: the whole buffer. `check_len` bounds it
    /// by [`SEGMENT_LEN_MAX`], so the conversion is exact on checked packets.
    #[inline]
    fn segment_len(&self) -> u16 {
        self.buffer.as_ref().len() as u16
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
    /// Sets the sequence number.
    #[inline]
    pub fn set_seq_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM.start, value);
    }
    /// Sets the acknowledgment number.
    #[inline]
    pub fn set_ack_number(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM.start, value);
    }
    /// Sets the data offset from a header length in bytes and clears the reserved bits
    /// (RFC 9293 §3.1 "Reserved": must be zero in generated segments). Precondition:
    /// `header_len` is a multiple of 4 in `20..=60`.
    #[inline]
    pub fn set_header_len(&mut self, header_len: usize) {
        debug_assert!(
            header_len.is_multiple_of(4) && (HEADER_LEN..=HEADER_LEN_MAX).contains(&header_len),
            "TCP header length {header_len}"
        );
        self.buffer.as_mut()[field::DATA_OFF] = ((header_len / 4) as u8) << 4;
    }
    /// Sets the control bits.
    #[inline]
    pub fn set_flags(&mut self, value: Flags) {
        self.buffer.as_mut()[field::FLAGS] = value.bits();
    }
    /// Sets the window field.
    #[inline]
    pub fn set_window_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW.start, value);
    }
    /// Sets the checksum field.
    #[inline]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, value);
    }
    /// Sets the urgent pointer.
    #[inline]
    pub fn set_urgent_at(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT.start, value);
    }
    /// The options region, writable.
    #[inline]
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
    /// The data, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
    /// Computes the full checksum over pseudo-header, header and data, and stores it
    /// (RFC 9293 §3.1 "Checksum"). Reads the header back from memory; [`Repr::emit`] does
    /// not need to.
    #[inline]
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let pseudo = checksum::pseudo_header_v4(src, dst, PROTOCOL, self.segment_len());
        let body = checksum::sum(self.buffer.as_ref());
        self.set_checksum(!checksum::combine(&[pseudo, body]));
    }
}

/// Classifies the checksum of a received segment from `src` to `dst`. See the module
/// documentation for what each status means.
#[inline]
pub fn checksum_status<T: AsRef<[u8]>>(
    packet: &Packet<T>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> ChecksumStatus {
    // RFC 9293 §3.1 "Checksum": the sum covers the pseudo-header, header and data; there is
    // no "no checksum" value as in UDP.
    let pseudo = checksum::pseudo_header_v4(src, dst, PROTOCOL, packet.segment_len());
    let body = checksum::sum(packet.buffer.as_ref());
    if checksum::combine(&[pseudo, body]) == 0xffff {
        ChecksumStatus::Valid
    } else if packet.checksum() == pseudo {
        ChecksumStatus::Partial
    } else {
        ChecksumStatus::Invalid
    }
}

/// A parsed TCP header. See the module documentation for what it carries and what not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number, present exactly when the ACK bit is (RFC 9293 §3.1).
    pub ack: Option<u32>,
    /// The control bits other than ACK, which `ack` carries: parse clears ACK here and emit
    /// sets it from `ack`, so the two can never disagree.
    pub flags: Flags,
    /// The window field, unscaled.
    pub window_len: u16,
    /// Maximum segment size option.
    pub max_seg_size: Option<u16>,
    /// Window scale shift; parse clamps values above 14 to 14 (RFC 7323 §2.3: "use 14
    /// instead of the length value received"), so it is always `<= WINDOW_SCALE_MAX`.
    pub window_scale: Option<u8>,
    /// SACK-permitted option.
    pub sack_permitted: bool,
    /// SACK blocks (left edge, right edge); `sack_ranges[..sack_count]` are live and the rest
    /// zero.
    pub sack_ranges: [(u32, u32); SACK_BLOCKS_MAX],
    /// Number of live SACK blocks, `0..=SACK_BLOCKS_MAX`.
    pub sack_count: usize,
    /// Timestamps option as (TSval, TSecr).
    pub timestamps: Option<(u32, u32)>,
    /// Data length in bytes.
    pub payload_len: usize,
}

/// Bytes [`Repr::emit`] spends on each option, NOP padding included (Linux's layout).
mod layout {
    pub const MAX_SEG_SIZE: usize = 4;
    pub const TIMESTAMPS: usize = 12;
    pub const WINDOW_SCALE: usize = 4;
    /// SACK-permitted on its own (`NOP NOP 04 02`); with timestamps it shares their NOPs.
    pub const SACK_PERMITTED: usize = 4;
    /// `NOP NOP 05 len` before the blocks.
    pub const SACK_RANGE_BASE: usize = 4;
    pub const SACK_BLOCK: usize = 8;
}

impl Repr {
    /// Parses a checked segment from `src` to `dst`. The checksum is classified and judged
    /// by `policy`; then the options are read, and any malformed option is an error (see
    /// [`enum@Error`]). Unknown options are skipped; when a known option appears twice, the last
    /// one counts, as in Linux.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        policy: ChecksumPolicy,
    ) -> Result<Repr, Error> {
        packet.check_len()?;
        match (checksum_status(packet, src, dst), policy) {
            (ChecksumStatus::Valid, _) => {}
            (ChecksumStatus::Partial, ChecksumPolicy::AcceptPartial) => {}
            (ChecksumStatus::Partial, ChecksumPolicy::Strict) => {
                return Err(Error::PartialChecksum)
            }
            (ChecksumStatus::Invalid, _) => return Err(Error::BadChecksum),
        }
        let flags = packet.flags();
        let mut repr = Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq: packet.seq_number(),
            // RFC 9293 §3.1: the acknowledgment number is meaningful only with ACK set.
            ack: flags.contains(Flags::ACK).then(|| packet.ack_number()),
            flags: flags.difference(Flags::ACK),
            window_len: packet.window_len(),
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_ranges: [(0, 0); SACK_BLOCKS_MAX],
            sack_count: 0,
            timestamps: None,
            payload_len: packet.payload().len(),
        };
        let options = packet.options();
        // RFC 7323 Appendix A's layout, which Linux and we send on every segment once
        // timestamps are in use: NOP, NOP, then the option. Read it in one go (Linux's
        // `tcp_fast_parse_options` does the same); anything else takes the general loop.
        if let [kind::NO_OPERATION, kind::NO_OPERATION, kind::TIMESTAMPS, 10, ts @ ..] = options {
            if let Ok(ts) = <[u8; 8]>::try_from(ts) {
                let tsval = u32::from_be_bytes([ts[0], ts[1], ts[2], ts[3]]);
                let tsecr = u32::from_be_bytes([ts[4], ts[5], ts[6], ts[7]]);
                repr.timestamps = Some((tsval, tsecr));
                return Ok(repr);
            }
        }
        for option in packet.options_iter() {
            match option? {
                TcpOption::EndOfList | TcpOption::NoOperation | TcpOption::Unknown { .. } => {}
                TcpOption::MaxSegmentSize(mss) => repr.max_seg_size = Some(mss),
                // RFC 7323 §2.3: a shift above 14 is logged and treated as 14.
                TcpOption::WindowScale(shift) => {
                    repr.window_scale = Some(shift.min(WINDOW_SCALE_MAX))
                }
                TcpOption::SackPermitted => repr.sack_permitted = true,
                TcpOption::SackRange { ranges, count } => {
                    repr.sack_ranges = ranges;
                    repr.sack_count = count;
                }
                TcpOption::Timestamps { tsval, tsecr } => repr.timestamps = Some((tsval, tsecr)),
            }
        }
        Ok(repr)
    }

    /// The live SACK blocks, `sack_ranges[..sack_count]`.
    pub fn sack_ranges(&self) -> &[(u32, u32)] {
        &self.sack_ranges[..self.sack_count.min(SACK_BLOCKS_MAX)]
    }

    /// Option bytes other than SACK blocks, in Linux's layout.
    const fn options_len_without_sack(&self) -> usize {
        let mut len = 0;
        if self.max_seg_size.is_some() {
            len += layout::MAX_SEG_SIZE;
        }
        if self.timestamps.is_some() {
            len += layout::TIMESTAMPS;
        }
        if self.window_scale.is_some() {
            len += layout::WINDOW_SCALE;
        }
        if self.sack_permitted && self.timestamps.is_none() {
            len += layout::SACK_PERMITTED;
        }
        len
    }

    /// How many SACK blocks [`Repr::emit`] writes: the first `sack_count` blocks, cut to what
    /// fits the 40-byte option space after the other options. With timestamps alone that is
    /// 3, with nothing else 4 (RFC 2018 §3 notes the same limits). The first blocks are kept
    /// because RFC 2018 §4 puts the most recently received data in the first block.
    pub const fn sack_count_emitted(&self) -> usize {
        let rest = OPTIONS_LEN_MAX - self.options_len_without_sack();
        let fit = if rest >= layout::SACK_RANGE_BASE + layout::SACK_BLOCK {
            (rest - layout::SACK_RANGE_BASE) / layout::SACK_BLOCK
        } else {
            0
        };
        let want = if self.sack_count < SACK_BLOCKS_MAX {
            self.sack_count
        } else {
            SACK_BLOCKS_MAX
        };
        if want < fit {
            want
        } else {
            fit
        }
    }

    /// Option bytes [`Repr::emit`] writes, a multiple of 4 and at most [`OPTIONS_LEN_MAX`].
    pub const fn options_len(&self) -> usize {
        let sack = match self.sack_count_emitted() {
            0 => 0,
            n => layout::SACK_RANGE_BASE + n * layout::SACK_BLOCK,
        };
        self.options_len_without_sack() + sack
    }

    /// Header length, options included.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// Header plus data.
    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header and options in front of data already in place and computes the full
    /// checksum. Preconditions: the packet holds exactly `buffer_len()` bytes with the data at
    /// `header_len()..`, `buffer_len() <= SEGMENT_LEN_MAX`, `sack_count <= SACK_BLOCKS_MAX`
    /// and `window_scale <= WINDOW_SCALE_MAX` (debug-asserted). SACK blocks that do not fit
    /// are dropped, see [`Repr::sack_count_emitted`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        debug_assert!(
            self.sack_count <= SACK_BLOCKS_MAX,
            "{} SACK blocks",
            self.sack_count
        );
        debug_assert!(self.window_scale.is_none_or(|s| s <= WINDOW_SCALE_MAX));
        let header_len = self.header_len();
        debug_assert!(header_len <= HEADER_LEN_MAX && header_len.is_multiple_of(4));
        let buffer_len = self.buffer_len();
        assert!(
            buffer_len <= SEGMENT_LEN_MAX,
            "TCP segment of {buffer_len} bytes"
        );
        assert_eq!(
            packet.buffer.as_ref().len(),
            buffer_len,
            "TCP emit buffer length"
        );
        let flags = match self.ack {
            Some(_) => self.flags.union(Flags::ACK),
            None => self.flags.difference(Flags::ACK),
        };
        let ack = self.ack.unwrap_or(0);
        let off_flags = (((header_len / 4) as u16) << 12) | u16::from(flags.bits());
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq);
        packet.set_ack_number(ack);
        packet.set_header_len(header_len);
        packet.set_flags(flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(0);
        // As in `udp::Repr::emit`: the header's words come from the values just written, not
        // from memory, because reading freshly written narrow stores back with wide loads
        // stalls store forwarding. The options are summed the same way as they are written.
        let options_sum = self.write_options(packet.options_mut());
        let data = checksum::sum(&packet.buffer.as_ref()[header_len..]);
        let pseudo = checksum::pseudo_header_v4(src, dst, PROTOCOL, buffer_len as u16);
        let header = [
            self.src_port,
            self.dst_port,
            (self.seq >> 16) as u16,
            self.seq as u16,
            (ack >> 16) as u16,
            ack as u16,
            off_flags,
            self.window_len,
        ];
        let mut sum = u64::from(pseudo) + u64::from(data) + options_sum;
        for word in header {
            sum += u64::from(word);
        }
        // RFC 9293 §3.1 "Checksum": the complement of the one's-complement sum.
        packet.set_checksum(!checksum::fold(sum));
    }

    /// Writes the options in Linux's layout into `out` (exactly `options_len()` bytes) and
    /// returns the unfolded sum of their 16-bit words.
    fn write_options(&self, out: &mut [u8]) -> u64 {
        let mut writer = OptionWriter { out, at: 0, sum: 0 };
        if let Some(mss) = self.max_seg_size {
            // RFC 9293 §3.2: kind 2, length 4.
            writer.word(u16::from_be_bytes([kind::MAX_SEG_SIZE, 4]));
            writer.word(mss);
        }
        if let Some((tsval, tsecr)) = self.timestamps {
            // RFC 7323 §3.2: kind 8, length 10; SACK-permitted (RFC 2018 §2) takes the place
            // of the two NOPs when both are sent, as on a Linux SYN.
            if self.sack_permitted {
                writer.word(u16::from_be_bytes([kind::SACK_PERMITTED, 2]));
            } else {
                writer.word(u16::from_be_bytes([kind::NO_OPERATION; 2]));
            }
            writer.word(u16::from_be_bytes([kind::TIMESTAMPS, 10]));
            writer.word((tsval >> 16) as u16);
            writer.word(tsval as u16);
            writer.word((tsecr >> 16) as u16);
            writer.word(tsecr as u16);
        }
        if let Some(shift) = self.window_scale {
            // RFC 7323 §2.2: kind 3, length 3, after one NOP.
            writer.word(u16::from_be_bytes([kind::NO_OPERATION, kind::WINDOW_SCALE]));
            writer.word(u16::from_be_bytes([3, shift]));
        }
        if self.sack_permitted && self.timestamps.is_none() {
            writer.word(u16::from_be_bytes([kind::NO_OPERATION; 2]));
            writer.word(u16::from_be_bytes([kind::SACK_PERMITTED, 2]));
        }
        let blocks = self.sack_count_emitted();
        if blocks > 0 {
            // RFC 2018 §3: kind 5, length 2 + 8n, after two NOPs.
            let len = (2 + blocks * layout::SACK_BLOCK) as u8;
            writer.word(u16::from_be_bytes([kind::NO_OPERATION; 2]));
            writer.word(u16::from_be_bytes([kind::SACK_RANGE, len]));
            for &(left, right) in &self.sack_ranges[..blocks] {
                writer.word((left >> 16) as u16);
                writer.word(left as u16);
                writer.word((right >> 16) as u16);
                writer.word(right as u16);
            }
        }
        debug_assert_eq!(writer.at, writer.out.len(), "TCP options length");
        writer.sum
    }
}

/// Writes big-endian words into an options region and sums them as it goes.
struct OptionWriter<'a> {
    out: &'a mut [u8],
    at: usize,
    sum: u64,
}

impl OptionWriter<'_> {
    #[inline(always)]
    fn word(&mut self, value: u16) {
        write_u16(self.out, self.at, value);
        self.at += 2;
        self.sum += u64::from(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;
    use proptest::prelude::*;

    const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;

    // Segments captured with `tcpdump -i lo -w` while Python sockets on 127.0.0.1 connected
    // port 45679 to 45678, sent "hello-melange", closed, and the server's late write drew a
    // RST (Linux 6.x, 2026-12-02). These are the TCP parts of the IPv4 payloads. On `lo`
    // Linux leaves CHECKSUM_PARTIAL sums, so each segment's checksum is the pseudo-header
    // sum; tcpdump's "incorrect -> xxxx" gave the full checksum, kept next to each.
    const SYN: &str = "b26f b26e 64c8 5967 0000 0000 a002 ffd7 fe30 0000
                       0204 ffd7 0402 080a 5708 d9db 0000 0000 0103 030a";
    const SYN_FULL: u16 = 0xfc0c;
    const SYN_ACK: &str = "b26e b26f 7d64 6187 64c8 5968 a012 ffcb fe30 0000
                           0204 ffd7 0402 080a de1b b92b 5708 d9db 0103 030a";
    const SYN_ACK_FULL: u16 = 0x85d4;
    const DATA: &str = "b26f b26e 64c8 5968 7d64 6188 8018 0040 fe35 0000
                        0101 080a 5708 da0d de1b b92b 6865 6c6c 6f2d 6d65 6c61 6e67 65";
    const DATA_FULL: u16 = 0xbcde;
    const FIN: &str = "b26f b26e 64c8 5975 7d64 6188 8011 0040 fe28 0000
                       0101 080a 5708 da3f de1b b95d";
    const FIN_FULL: u16 = 0xadaf;
    // The RST is built by the kernel without offload, so its checksum is already complete.
    const RST: &str = "b26f b26e 64c8 5976 0000 0000 5004 0000 8ec1 0000";

    /// Hex of `golden` with its checksum replaced by the full one.
    fn finished(golden: &str, full: u16) -> Vec<u8> {
        let mut bytes = hex(golden);
        bytes[16..18].copy_from_slice(&full.to_be_bytes());
        bytes
    }

    fn base() -> Repr {
        Repr {
            src_port: 0xb26f,
            dst_port: 0xb26e,
            seq: 0,
            ack: None,
            flags: Flags::empty(),
            window_len: 0,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_ranges: [(0, 0); SACK_BLOCKS_MAX],
            sack_count: 0,
            timestamps: None,
            payload_len: 0,
        }
    }

    fn emit(repr: &Repr, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; repr.buffer_len()];
        bytes[repr.header_len()..].copy_from_slice(payload);
        repr.emit(&mut Packet::new_unchecked(&mut bytes[..]), LO, LO);
        bytes
    }

    /// Parses `bytes` (a full checksum) and checks that emitting the result gives them back.
    fn golden_round_trip(bytes: &[u8], expect: Repr) {
        let packet = Packet::new_checked(bytes).unwrap();
        assert_eq!(checksum_status(&packet, LO, LO), ChecksumStatus::Valid);
        let repr = Repr::parse(&packet, LO, LO, ChecksumPolicy::Strict).unwrap();
        assert_eq!(repr, expect);
        assert_eq!(emit(&repr, packet.payload()), bytes, "Linux's layout");
    }

    #[test]
    fn golden_syn() {
        let bytes = finished(SYN, SYN_FULL);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.flags(), Flags::SYN);
        assert_eq!(packet.header_len(), 40);
        let options: Vec<_> = packet.options_iter().map(Result::unwrap).collect();
        assert_eq!(
            options,
            [
                TcpOption::MaxSegmentSize(65495),
                TcpOption::SackPermitted,
                TcpOption::Timestamps {
                    tsval: 1460197851,
                    tsecr: 0
                },
                TcpOption::NoOperation,
                TcpOption::WindowScale(10),
            ]
        );
        golden_round_trip(
            &bytes,
            Repr {
                seq: 1690851687,
                flags: Flags::SYN,
                window_len: 65495,
                max_seg_size: Some(65495),
                window_scale: Some(10),
                sack_permitted: true,
                timestamps: Some((1460197851, 0)),
                ..base()
            },
        );
    }

    #[test]
    fn golden_syn_ack() {
        golden_round_trip(
            &finished(SYN_ACK, SYN_ACK_FULL),
            Repr {
                src_port: 0xb26e,
                dst_port: 0xb26f,
                seq: 2103730567,
                ack: Some(1690851688),
                flags: Flags::SYN,
                window_len: 65483,
                max_seg_size: Some(65495),
                window_scale: Some(10),
                sack_permitted: true,
                timestamps: Some((3726358827, 1460197851)),
                ..base()
            },
        );
    }

    #[test]
    fn golden_data() {
        let bytes = finished(DATA, DATA_FULL);
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap().payload(),
            b"hello-melange"
        );
        golden_round_trip(
            &bytes,
            Repr {
                seq: 1690851688,
                ack: Some(2103730568),
                flags: Flags::PSH,
                window_len: 64,
                timestamps: Some((1460197901, 3726358827)),
                payload_len: 13,
                ..base()
            },
        );
    }

    #[test]
    fn golden_fin() {
        golden_round_trip(
            &finished(FIN, FIN_FULL),
            Repr {
                seq: 1690851701,
                ack: Some(2103730568),
                flags: Flags::FIN,
                window_len: 64,
                timestamps: Some((1460197951, 3726358877)),
                ..base()
            },
        );
    }

    #[test]
    fn golden_rst() {
        golden_round_trip(
            &hex(RST),
            Repr {
                seq: 1690851702,
                flags: Flags::RST,
                ..base()
            },
        );
    }

    #[test]
    fn captured_partial_checksums() {
        for golden in [SYN, SYN_ACK, DATA, FIN] {
            let bytes = hex(golden);
            let p = Packet::new_checked(&bytes[..]).unwrap();
            assert_eq!(checksum_status(&p, LO, LO), ChecksumStatus::Partial);
            assert_eq!(
                Repr::parse(&p, LO, LO, ChecksumPolicy::Strict),
                Err(Error::PartialChecksum)
            );
            assert!(Repr::parse(&p, LO, LO, ChecksumPolicy::AcceptPartial).is_ok());
            // The same segment from another source is not partial but wrong.
            let other = Ipv4Addr::new(10, 0, 0, 1);
            assert_eq!(checksum_status(&p, other, LO), ChecksumStatus::Invalid);
        }
    }

    #[test]
    fn checksum_statuses() {
        let mut bytes = finished(DATA, DATA_FULL);
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.fill_checksum(LO, LO);
        assert_eq!(p.checksum(), DATA_FULL);
        assert_eq!(checksum_status(&p, LO, LO), ChecksumStatus::Valid);
        // TCP has no "zero means none": a zero field is simply wrong here.
        p.set_checksum(0);
        assert_eq!(checksum_status(&p, LO, LO), ChecksumStatus::Invalid);
        p.set_checksum(checksum::pseudo_header_v4(LO, LO, PROTOCOL, 45));
        assert_eq!(checksum_status(&p, LO, LO), ChecksumStatus::Partial);
        p.set_checksum(0x1234);
        assert_eq!(
            Repr::parse(&p, LO, LO, ChecksumPolicy::AcceptPartial),
            Err(Error::BadChecksum)
        );
        p.fill_checksum(LO, LO);
        // A corrupted payload byte is caught, under either policy.
        p.payload_mut()[3] ^= 0x40;
        assert_eq!(checksum_status(&p, LO, LO), ChecksumStatus::Invalid);
        assert_eq!(
            Repr::parse(&p, LO, LO, ChecksumPolicy::AcceptPartial),
            Err(Error::BadChecksum)
        );
    }

    #[test]
    fn length_checks() {
        let bytes = hex(SYN);
        assert_eq!(
            Packet::new_checked(&bytes[..19]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&bytes[..39]).unwrap_err(),
            Error::BadHeaderLen(40)
        );
        let mut short = bytes.clone();
        short[12] = 0x40;
        assert_eq!(
            Packet::new_checked(&short[..]).unwrap_err(),
            Error::BadDataOffset(4)
        );
        let long = vec![0x50; SEGMENT_LEN_MAX + 1];
        assert_eq!(
            Packet::new_checked(&long[..]).unwrap_err(),
            Error::TooLong(SEGMENT_LEN_MAX + 1)
        );
    }

    fn options(region: &str) -> Vec<Result<TcpOption<'static>, Error>> {
        let bytes: &'static [u8] = Vec::leak(hex(region));
        TcpOptions::new(bytes).collect()
    }

    #[test]
    fn malformed_options() {
        let kind = 2;
        assert_eq!(
            options("0200 ffff"),
            [Err(Error::OptionLenTooShort { kind, len: 0 })]
        );
        assert_eq!(
            options("01 0201"),
            [
                Ok(TcpOption::NoOperation),
                Err(Error::OptionLenTooShort { kind, len: 1 })
            ]
        );
        assert_eq!(options("02"), [Err(Error::OptionTruncated { kind })]);
        assert_eq!(options("0205 ffff"), [Err(Error::OptionTruncated { kind })]);
        assert_eq!(
            options("0203 ff"),
            [Err(Error::OptionBadLen { kind, len: 3 })]
        );
        assert_eq!(
            options("0304 0a00"),
            [Err(Error::OptionBadLen { kind: 3, len: 4 })]
        );
        assert_eq!(
            options("0403 00"),
            [Err(Error::OptionBadLen { kind: 4, len: 3 })]
        );
        assert_eq!(
            options("080b 0000 0000 0000 0000 00"),
            [Err(Error::OptionBadLen { kind: 8, len: 11 })]
        );
        assert_eq!(
            options("0509 0000 0000 0000 0000"),
            [Err(Error::OptionBadLen { kind: 5, len: 9 })]
        );
        // Five blocks would need 42 bytes; a region longer than 40 is only possible when the
        // iterator is given one directly, and still gets an error rather than an overflow.
        let mut five = vec![5u8, 42];
        five.resize(42, 0);
        assert_eq!(
            TcpOptions::new(&five).collect::<Vec<_>>(),
            [Err(Error::OptionBadLen { kind: 5, len: 42 })]
        );
        // An unknown kind with a good length is skipped; the end of list ends the walk.
        assert_eq!(
            options("fe04 abcd 0001 0202"),
            [
                Ok(TcpOption::Unknown {
                    kind: 0xfe,
                    data: &[0xab, 0xcd]
                }),
                Ok(TcpOption::EndOfList)
            ]
        );
        // A length-2 SACK is empty, not an error.
        assert_eq!(
            options("0502"),
            [Ok(TcpOption::SackRange {
                ranges: [(0, 0); 4],
                count: 0
            })]
        );
    }

    #[test]
    fn parse_rejects_malformed_option_and_clamps_window_scale() {
        let mut repr = base();
        repr.window_scale = Some(14);
        let mut bytes = emit(&repr, &[]);
        // `01 03 03 0e` -> shift 15 in the received segment.
        bytes[23] = 15;
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.fill_checksum(LO, LO);
        let parsed = Repr::parse(&p, LO, LO, ChecksumPolicy::Strict).unwrap();
        assert_eq!(parsed.window_scale, Some(WINDOW_SCALE_MAX));
        // Length 0 on the window scale option: a typed error from parse.
        p.options_mut()[2] = 0;
        p.fill_checksum(LO, LO);
        assert_eq!(
            Repr::parse(&p, LO, LO, ChecksumPolicy::Strict),
            Err(Error::OptionLenTooShort { kind: 3, len: 0 })
        );
    }

    #[test]
    fn timestamps_parse_the_same_in_the_usual_layout_and_in_any_other() {
        let mut repr = base();
        repr.timestamps = Some((0x0102_0304, 0xa0b0_c0d0));
        let mut bytes = emit(&repr, &[]);
        // The usual layout (NOP, NOP, timestamps) takes the fast path.
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(&p.options()[..4], &[1, 1, 8, 10]);
        assert_eq!(Repr::parse(&p, LO, LO, ChecksumPolicy::Strict), Ok(repr));
        // Timestamps first, the NOPs after: the general loop, the same result.
        let mut p = Packet::new_checked(&mut bytes[..]).unwrap();
        p.options_mut().rotate_left(2);
        assert_eq!(&p.options()[..2], &[8, 10]);
        p.fill_checksum(LO, LO);
        assert_eq!(Repr::parse(&p, LO, LO, ChecksumPolicy::Strict), Ok(repr));
        // The usual start with a bad length is no timestamp option: the loop refuses it.
        p.options_mut().rotate_right(2);
        p.options_mut()[3] = 9;
        p.fill_checksum(LO, LO);
        assert!(Repr::parse(&p, LO, LO, ChecksumPolicy::Strict).is_err());
    }

    // A SACK segment as Linux would send it from the capture's server side, acknowledging
    // the client's first byte while holding two later 1000-byte ranges. Built by hand (loss on
    // `lo` is hard to provoke), its checksum computed by an independent Python script, and
    // decoded by `tcpdump -nn -vv -S -r` as "Flags [.], cksum 0x3827 (correct), seq
    // 2103730568, ack 1690851688, win 64, options [nop,nop,TS val 1460197901 ecr 3726358827,
    // nop,nop,sack 2 {1690852688:1690853688}{1690854688:1690855688}], length 0".
    const SACK: &str = "b26e b26f 7d64 6188 64c8 5968 d010 0040 3827 0000
                        0101 080a 5708 da0d de1b b92b 0101 0512 64c8 5d50 64c8 6138
                        64c8 6520 64c8 6908";

    fn sack_repr() -> Repr {
        Repr {
            src_port: 0xb26e,
            dst_port: 0xb26f,
            seq: 2103730568,
            ack: Some(1690851688),
            window_len: 64,
            timestamps: Some((1460197901, 3726358827)),
            sack_ranges: [
                (1690852688, 1690853688),
                (1690854688, 1690855688),
                (0, 0),
                (0, 0),
            ],
            sack_count: 2,
            ..base()
        }
    }

    #[test]
    fn golden_sack() {
        let bytes = hex(SACK);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let options: Vec<_> = packet.options_iter().map(Result::unwrap).collect();
        assert_eq!(options.len(), 6);
        assert!(matches!(options[5], TcpOption::SackRange { count: 2, .. }));
        golden_round_trip(&bytes, sack_repr());
    }

    #[test]
    fn sack_blocks_that_do_not_fit_are_dropped() {
        let mut repr = sack_repr();
        repr.sack_ranges = [(1, 2), (3, 4), (5, 6), (7, 8)];
        repr.sack_count = 4;
        // Timestamps leave room for three blocks.
        assert_eq!(repr.sack_count_emitted(), 3);
        assert_eq!(repr.header_len(), HEADER_LEN_MAX);
        let bytes = emit(&repr, &[]);
        let parsed = Repr::parse(
            &Packet::new_checked(&bytes[..]).unwrap(),
            LO,
            LO,
            ChecksumPolicy::Strict,
        )
        .unwrap();
        assert_eq!(parsed.sack_ranges(), &[(1, 2), (3, 4), (5, 6)]);
        // Without timestamps all four fit.
        repr.timestamps = None;
        assert_eq!(repr.sack_count_emitted(), 4);
        assert_eq!(repr.header_len(), HEADER_LEN_MAX - 4);
    }

    #[test]
    fn syn_without_timestamps_layout() {
        let repr = Repr {
            flags: Flags::SYN,
            max_seg_size: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            ..base()
        };
        let bytes = emit(&repr, &[]);
        // Linux: MSS, NOP window scale, NOP NOP SACK-permitted.
        assert_eq!(&bytes[20..], &hex("0204 05b4 0103 0307 0101 0402")[..]);
    }

    #[test]
    fn flags_debug_and_ops() {
        let f = Flags::SYN | Flags::ACK;
        assert_eq!(format!("{f:?}"), "Flags(SYN | ACK)");
        assert!(f.contains(Flags::ACK) && f.intersects(Flags::SYN | Flags::FIN));
        assert_eq!(f.difference(Flags::ACK), Flags::SYN);
        assert_eq!(Flags::from_bits(0xff).bits(), 0xff);
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (
            (
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<Option<u32>>(),
            ),
            (
                any::<u8>(),
                any::<u16>(),
                any::<Option<u16>>(),
                proptest::option::of(0u8..=14),
            ),
            (
                any::<bool>(),
                any::<[(u32, u32); SACK_BLOCKS_MAX]>(),
                0usize..=SACK_BLOCKS_MAX,
                any::<Option<(u32, u32)>>(),
            ),
        )
            .prop_map(
                |((src_port, dst_port, seq, ack), (flags, window_len, mss, ws), (sp, r, n, ts))| {
                    let mut sack_ranges = [(0, 0); SACK_BLOCKS_MAX];
                    sack_ranges[..n].copy_from_slice(&r[..n]);
                    Repr {
                        src_port,
                        dst_port,
                        seq,
                        ack,
                        flags: Flags::from_bits(flags).difference(Flags::ACK),
                        window_len,
                        max_seg_size: mss,
                        window_scale: ws,
                        sack_permitted: sp,
                        sack_ranges,
                        sack_count: n,
                        timestamps: ts,
                        payload_len: 0,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(mut repr in arb_repr(), s in any::<u32>(), d in any::<u32>(),
                      data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (src, dst) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
            repr.payload_len = data.len();
            let mut bytes = vec![0u8; repr.buffer_len()];
            bytes[repr.header_len()..].copy_from_slice(&data);
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]), src, dst);
            prop_assert!(repr.header_len() <= HEADER_LEN_MAX);
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(checksum_status(&packet, src, dst), ChecksumStatus::Valid);
            let parsed = Repr::parse(&packet, src, dst, ChecksumPolicy::Strict).unwrap();
            // Emit drops SACK blocks that do not fit; everything else survives.
            let kept = repr.sack_count_emitted();
            let mut expect = repr;
            expect.sack_count = kept;
            expect.sack_ranges[kept..].fill((0, 0));
            prop_assert_eq!(parsed, expect);
            prop_assert_eq!(packet.payload(), &data[..]);
            // The checksum computed from the values equals the one summed over the segment.
            let mut refilled = bytes.clone();
            Packet::new_unchecked(&mut refilled[..]).fill_checksum(src, dst);
            prop_assert_eq!(refilled, bytes);
        }

        #[test]
        fn corrupted_byte_is_detected(repr in arb_repr(), at in any::<usize>(), bit in 0u8..8) {
            let bytes0 = emit(&repr, &[]);
            let mut bytes = bytes0.clone();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            // A single flipped bit always changes the one's-complement sum.
            let p = Packet::new_unchecked(&bytes[..]);
            prop_assert_ne!(checksum_status(&p, LO, LO), ChecksumStatus::Valid);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..96), s in any::<u32>(), d in any::<u32>()) {
            let _ = TcpOptions::new(&data).count();
            if let Ok(packet) = Packet::new_checked(&data[..]) {
                let (src, dst) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
                let _ = Repr::parse(&packet, src, dst, ChecksumPolicy::AcceptPartial);
                let _ = checksum_status(&packet, src, dst);
                let _ = (packet.payload(), packet.options_iter().count());
            }
        }
    }
}
