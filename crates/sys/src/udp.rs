//! Batched UDP I/O with `recvmmsg` and `sendmmsg`.
//!
//! # Design
//!
//! A dataplane that makes one system call per datagram spends most of its time entering and
//! leaving the kernel. [`UdpBatchSocket`] moves up to `batch_max` datagrams per call. The
//! `mmsghdr`, `iovec` and `sockaddr_in` arrays the kernel needs are allocated once, in
//! [`UdpBatchSocket::bind`], and rewritten in place on every call, so the data path never
//! allocates.
//!
//! Datagram payloads live in one caller-owned byte region (a [`crate::Region`] carved into
//! frames, or any `[u8]`), and the caller describes each datagram by a slot: an offset and a
//! length inside that region. Offsets rather than `&mut [u8]` per datagram because the frame
//! pools above us hand out indices, and because a slice of slices would have to be built, and
//! so allocated or bounded, on every call. An `io::IoSliceMut` API like `std`'s was rejected for
//! the same reason.
//!
//! # Datagrams larger than a frame
//!
//! A UDP datagram over IPv4 carries up to [`UDP_PAYLOAD_MAX`] (65,507) bytes, far more than a
//! pool frame. On receive, each slot can get a second iovec over a *spill area*, a range of a
//! second caller-owned region ([`UdpBatchSocket::recv_batch_spill`]): the kernel fills the
//! slot's frame first and puts the rest in the spill, and the caller copies the rest out only
//! for the rare datagram that needed it. The spill belongs to the caller, not the socket, so
//! one spill serves every socket of a thread (the receives are sequential). Two iovecs per message
//! stay under the kernel's `UIO_FASTIOV` (8), so `recvmmsg` copies the iovec array onto its
//! stack instead of allocating it per message. Posting a chain of further pool frames per slot
//! (no copy at all) was rejected: 65,507 bytes in 2 KiB frames is 33 frames per slot, 2,112
//! frames held for a batch of 64 (half the default pool), and 33 iovecs per message, which the
//! kernel allocates for on every message. On send, a datagram may be gathered from several byte
//! ranges ([`UdpBatchSocket::send_gather`]), one iovec each, so a chain of frames leaves without
//! a copy.
//!
//! # Safety contract
//!
//! The kernel writes (recv) or reads (send) `region[offset..offset + len]` for each slot. Before
//! any system call, every slot's range is checked to lie inside the borrowed `region` (with
//! overflow checked), and if one does not the call fails with
//! [`io::ErrorKind::InvalidInput`] and the kernel is not called. That check is what lets these
//! functions be safe. Overlapping receive slots are allowed: the kernel writes bytes into memory
//! we hold exclusively through `&mut [u8]`, which is sound however the ranges overlap; the
//! contents of the overlap are then unspecified.
//!
//! The preallocated arrays hold raw pointers between calls. They are rewritten before every
//! call, are only handed to the kernel during that call, and are never dereferenced by Rust
//! code, so a stale pointer from an earlier call is harmless. This is why the type can be
//! [`Send`].

use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

/// The largest `batch_max` accepted: the kernel silently caps `recvmmsg`/`sendmmsg` at
/// `UIO_MAXIOV` (1024) messages per call, so larger arrays would only waste memory.
pub const BATCH_MAX_LIMIT: usize = 1024;

/// The default `batch_max`: 64 datagrams of 1500 bytes is 96 KiB, which fits in L2.
pub const BATCH_MAX_DEFAULT: usize = 64;

/// The largest UDP payload over IPv4: 65,535 bytes of IPv4 total length, less 20 of IPv4
/// header and 8 of UDP header.
pub const UDP_PAYLOAD_MAX: usize = 65_507;

/// The most byte ranges (iovecs) one gathered datagram may have: the kernel's `UIO_MAXIOV`.
pub const SEND_SEGMENTS_MAX: usize = 1024;

/// Iovecs one receive slot uses: its frame and its spill area.
const RECV_IOVS_PER_SLOT: usize = 2;

pub(crate) const SOCKADDR_IN_LEN: libc::socklen_t =
    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// Why a UDP call was refused before reaching the kernel. Carried inside an [`io::Error`] of
/// kind [`io::ErrorKind::InvalidInput`].
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// `batch_max` was 0 or above [`BATCH_MAX_LIMIT`]. Fix the configuration.
    #[error("batch_max {batch_max} is not in 1..={BATCH_MAX_LIMIT}")]
    BatchMax {
        /// The requested value.
        batch_max: usize,
    },
    /// A socket buffer size does not fit the kernel's `int`. Fix the configuration.
    #[error("socket buffer size {bytes} exceeds {max}", max = libc::c_int::MAX)]
    BufferSize {
        /// The requested size in bytes.
        bytes: usize,
    },
    /// A slot's byte range is not inside the region. This is a bug in the caller's frame
    /// accounting; nothing was sent or received.
    #[error("slot {index}: range {offset}+{len} is outside the region of {region_len} bytes")]
    SlotOutOfRegion {
        /// The index of the first bad slot.
        index: usize,
        /// The slot's offset.
        offset: usize,
        /// The slot's length (send) or capacity (receive).
        len: usize,
        /// The length of the region.
        region_len: usize,
    },
    /// A gathered datagram names more segments than remain in the segment list, or more than
    /// [`SEND_SEGMENTS_MAX`]. This is a bug in the caller; nothing was sent.
    #[error(
        "slot {index}: {segments} segments, but {available} remain (at most {SEND_SEGMENTS_MAX})"
    )]
    Segments {
        /// The index of the first bad slot.
        index: usize,
        /// Segments the slot asked for.
        segments: usize,
        /// Segments left in the list for it.
        available: usize,
    },
}

impl From<UdpError> for io::Error {
    fn from(e: UdpError) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// Options for [`UdpBatchSocket::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSocketOptions {
    /// Set `SO_REUSEPORT`, so several sockets (one per worker) can bind the same address and
    /// the kernel spreads flows over them.
    pub reuse_port: bool,
    /// Open the socket non-blocking. The batch calls never block either way (they pass
    /// `MSG_DONTWAIT`); this affects [`UdpBatchSocket::send_to`] and
    /// [`UdpBatchSocket::recv_from`].
    pub nonblocking: bool,
    /// The most datagrams one batch call moves; sizes the preallocated arrays.
    pub batch_max: usize,
    /// `SO_RCVBUF` in bytes (the kernel doubles it for bookkeeping). Tried first with
    /// `SO_RCVBUFFORCE`, which ignores `net.core.rmem_max` but needs `CAP_NET_ADMIN`.
    pub recv_buffer_bytes: Option<usize>,
    /// `SO_SNDBUF` in bytes, tried first with `SO_SNDBUFFORCE` like the receive buffer.
    pub send_buffer_bytes: Option<usize>,
    /// `SO_BUSY_POLL` in microseconds. Raising it needs `CAP_NET_ADMIN`; if refused the socket
    /// is still created and [`UdpBatchSocket::busy_poll_us`] returns `None`.
    pub busy_poll_us: Option<u32>,
}

impl Default for UdpSocketOptions {
    fn default() -> Self {
        Self {
            reuse_port: false,
            nonblocking: true,
            batch_max: BATCH_MAX_DEFAULT,
            recv_buffer_bytes: None,
            send_buffer_bytes: None,
            busy_poll_us: None,
        }
    }
}

/// One datagram to receive: where to put it, and (filled in) what arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvSlot {
    /// Start of this slot's bytes in the region.
    pub offset: usize,
    /// How many bytes the slot can hold.
    pub capacity: usize,
    /// Start of this slot's spill area in the spill region
    /// ([`UdpBatchSocket::recv_batch_spill`]).
    pub spill_offset: usize,
    /// How many bytes past `capacity` the spill area holds; 0 for none.
    pub spill_capacity: usize,
    /// Out: bytes written into the slot (at most `capacity`).
    pub len: usize,
    /// Out: bytes past `capacity` that went to the slot's spill area (at most
    /// `spill_capacity`); the datagram is `len + spill_len` bytes long.
    pub spill_len: usize,
    /// Out: the sender. `0.0.0.0:0` if the kernel reported a non-IPv4 address, which an
    /// `AF_INET` socket cannot receive.
    pub peer: SocketAddrV4,
    /// Out: the datagram was longer than `capacity` plus the spill area and the rest was
    /// discarded (`MSG_TRUNC`).
    pub truncated: bool,
}

impl RecvSlot {
    /// A slot for `region[offset..offset + capacity]` with the outputs zeroed.
    pub const fn new(offset: usize, capacity: usize) -> Self {
        Self {
            offset,
            capacity,
            spill_offset: 0,
            spill_capacity: 0,
            len: 0,
            spill_len: 0,
            peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            truncated: false,
        }
    }
}

/// One datagram to send: `region[offset..offset + len]` to `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendSlot {
    /// Start of the payload in the region.
    pub offset: usize,
    /// Payload length in bytes.
    pub len: usize,
    /// Destination.
    pub peer: SocketAddrV4,
}

/// One byte range of a gathered datagram: `region[offset..offset + len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Start of the range in the region.
    pub offset: usize,
    /// Length of the range in bytes.
    pub len: usize,
}

/// One datagram to send, gathered from the next `segments` entries of a [`Segment`] list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatherSlot {
    /// How many segments, in order, make up the datagram (at most [`SEND_SEGMENTS_MAX`]).
    pub segments: usize,
    /// Destination.
    pub peer: SocketAddrV4,
}

/// An IPv4 UDP socket that moves datagrams in batches with `recvmmsg`/`sendmmsg`.
///
/// Call order: [`bind`](Self::bind) once; then, whenever [`crate::poll::wait_readable`] says the
/// socket is readable, [`recv_batch`](Self::recv_batch) until it returns 0; and
/// [`send_batch`](Self::send_batch) with whatever is ready to go, re-offering what it did not
/// accept. Neither batch call blocks or allocates.
pub struct UdpBatchSocket {
    fd: OwnedFd,
    batch_max: usize,
    busy_poll_us: Option<u32>,
    /// `batch_max` message headers; their pointers are rewritten by each batch call.
    msgs: Box<[libc::mmsghdr]>,
    /// `RECV_IOVS_PER_SLOT * batch_max + SEND_SEGMENTS_MAX` iovecs: two per message on
    /// receive; on send as many as the gathered messages need, and always room for one message
    /// of the most segments.
    iovs: Box<[libc::iovec]>,
    /// `batch_max` addresses: destinations on send, sources on receive.
    addrs: Box<[libc::sockaddr_in]>,
}

// SAFETY: the only non-`Send` fields are the raw pointers inside `msgs` and `iovs`. They point
// into `addrs`, `iovs` (heap arrays owned by this struct, which move with it) and into the
// caller's region. They are rewritten at the start of every batch call, passed to the kernel
// during that call only, and never dereferenced by Rust code, so which thread owns the socket
// does not matter. The descriptor itself may be used from any thread.
unsafe impl Send for UdpBatchSocket {}

impl fmt::Debug for UdpBatchSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpBatchSocket")
            .field("fd", &self.fd)
            .field("local_addr", &self.local_addr().ok())
            .field("batch_max", &self.batch_max)
            .field("busy_poll_us", &self.busy_poll_us)
            .finish()
    }
}

impl UdpBatchSocket {
    /// Creates an `AF_INET` datagram socket (close-on-exec), applies `options` and binds it to
    /// `addr`. Port 0 picks an ephemeral port; see [`local_addr`](Self::local_addr).
    ///
    /// # Errors
    ///
    /// `InvalidInput` wrapping a [`UdpError`] for bad options; `AddrInUse` when the address is
    /// taken (and `reuse_port` is off on either socket); any `socket`/`setsockopt`/`bind` error.
    pub fn bind(addr: SocketAddrV4, options: UdpSocketOptions) -> io::Result<Self> {
        let batch_max = options.batch_max;
        if !(1..=BATCH_MAX_LIMIT).contains(&batch_max) {
            return Err(UdpError::BatchMax { batch_max }.into());
        }
        let (fd, busy_poll_us) = bind_socket(addr, &options)?;
        // The only allocations of the socket's life, sized by `batch_max`.
        let msgs = (0..batch_max).map(|_| zeroed_mmsghdr()).collect();
        let iov_empty = libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        };
        let iovs =
            vec![iov_empty; RECV_IOVS_PER_SLOT * batch_max + SEND_SEGMENTS_MAX].into_boxed_slice();
        let addrs = vec![sockaddr_from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); batch_max]
            .into_boxed_slice();
        Ok(Self {
            fd,
            batch_max,
            busy_poll_us,
            msgs,
            iovs,
            addrs,
        })
    }

    /// The address the socket is bound to, with the ephemeral port filled in.
    ///
    /// # Errors
    ///
    /// Only `getsockname` errors, which a bound socket does not produce.
    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        local_addr_of(self.fd.as_fd())
    }

    /// The most datagrams one batch call moves.
    pub fn batch_max(&self) -> usize {
        self.batch_max
    }

    /// The `SO_BUSY_POLL` value in effect, or `None` if none was asked for or it was refused.
    pub fn busy_poll_us(&self) -> Option<u32> {
        self.busy_poll_us
    }

    /// The receive buffer size the kernel reports (`SO_RCVBUF`, twice the size set).
    ///
    /// # Errors
    ///
    /// Only `getsockopt` errors, which a valid socket does not produce.
    pub fn recv_buffer_bytes(&self) -> io::Result<usize> {
        getsockopt_int(self.fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF).map(|n| n as usize)
    }

    /// The send buffer size the kernel reports (`SO_SNDBUF`, twice the size set).
    ///
    /// # Errors
    ///
    /// Only `getsockopt` errors, which a valid socket does not produce.
    pub fn send_buffer_bytes(&self) -> io::Result<usize> {
        getsockopt_int(self.fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF).map(|n| n as usize)
    }

    /// Switches `O_NONBLOCK` on or off. Affects [`send_to`](Self::send_to) and
    /// [`recv_from`](Self::recv_from); the batch calls never block.
    ///
    /// # Errors
    ///
    /// Only `fcntl` errors, which a valid descriptor does not produce.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: F_GETFL takes no argument and touches no caller memory; `fd` is open.
        let flags = syscall!(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
        let flags = if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: F_SETFL takes an integer argument and touches no caller memory.
        syscall!(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
        Ok(())
    }

    /// Receives up to `min(slots.len(), batch_max)` datagrams without blocking.
    ///
    /// Datagram `i` is written to `region[slots[i].offset..][..slots[i].capacity]`, and
    /// `slots[i].len`, `.peer` and `.truncated` are set. Returns how many slots were filled
    /// (always a prefix of `slots`); 0 when nothing is waiting. Slots past the returned count
    /// are left untouched.
    ///
    /// # Errors
    ///
    /// `InvalidInput` wrapping [`UdpError::SlotOutOfRegion`] if any slot's range is outside
    /// `region`; the kernel is not called and nothing is consumed. Otherwise the `recvmmsg`
    /// error, e.g. a pending ICMP error on a connected socket; the caller logs it and goes on.
    pub fn recv_batch(&mut self, region: &mut [u8], slots: &mut [RecvSlot]) -> io::Result<usize> {
        self.recv_batch_spill(region, &mut [], slots)
    }

    /// As [`recv_batch`](Self::recv_batch), and each slot with a `spill_capacity` also gets
    /// `spill[spill_offset..][..spill_capacity]` for the bytes past its `capacity`: a datagram
    /// of up to `capacity + spill_capacity` bytes arrives whole, its first `len` bytes in the
    /// region and the next `spill_len` in the spill.
    ///
    /// # Errors
    ///
    /// As [`recv_batch`](Self::recv_batch), and [`UdpError::SlotOutOfRegion`] when a slot's
    /// spill range is outside `spill`.
    pub fn recv_batch_spill(
        &mut self,
        region: &mut [u8],
        spill: &mut [u8],
        slots: &mut [RecvSlot],
    ) -> io::Result<usize> {
        for (index, slot) in slots.iter().enumerate() {
            check_range(region.len(), index, slot.offset, slot.capacity)?;
            check_range(spill.len(), index, slot.spill_offset, slot.spill_capacity)?;
        }
        let count = slots.len().min(self.batch_max);
        if count == 0 {
            return Ok(0);
        }
        // Every pointer below derives from these raw pointers, taken once, and no reference to
        // the arrays or the region is created again until the kernel call has returned.
        let region_ptr = region.as_mut_ptr();
        let iovs_ptr = self.iovs.as_mut_ptr();
        let addrs_ptr = self.addrs.as_mut_ptr();
        let spill_ptr = spill.as_mut_ptr();
        for (i, (slot, msg)) in slots[..count].iter().zip(self.msgs.iter_mut()).enumerate() {
            let iov = iovs_ptr.wrapping_add(RECV_IOVS_PER_SLOT * i);
            // SAFETY: `RECV_IOVS_PER_SLOT * i + 1 < RECV_IOVS_PER_SLOT * batch_max <=
            // iovs.len()`, so `iov` points to a live element of `iovs`, which no reference
            // aliases right now.
            unsafe {
                iov.write(libc::iovec {
                    iov_base: region_ptr.wrapping_add(slot.offset).cast(),
                    iov_len: slot.capacity,
                })
            };
            let spill_iov = iov.wrapping_add(1);
            // SAFETY: as above, `spill_iov` is the element after `iov`, inside `iovs`.
            unsafe {
                spill_iov.write(libc::iovec {
                    iov_base: spill_ptr.wrapping_add(slot.spill_offset).cast(),
                    iov_len: slot.spill_capacity,
                })
            };
            let iovs = if slot.spill_capacity > 0 { 2 } else { 1 };
            reset_msg(msg, addrs_ptr.wrapping_add(i), iov, iovs);
        }
        // SAFETY: `msgs[..count]` are initialised headers. Each points to one or two `iovec`s
        // in `iovs`: the first covers `region[offset..offset + capacity]`, the second (when
        // `spill_capacity > 0`) `spill[spill_offset..][..spill_capacity]`; both were checked
        // above to lie inside their regions, writable through our `&mut` borrows. Each also
        // points to one `sockaddr_in` in `addrs`
        // with `msg_namelen` set to its size. All of these live until we return. A null timeout
        // is allowed (and irrelevant with MSG_DONTWAIT).
        let ret = syscall!(unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        });
        let received = match ret {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        assert!(received <= count, "recvmmsg returned {received} > {count}");
        for (i, slot) in slots[..received].iter_mut().enumerate() {
            let msg = &self.msgs[i];
            let total = msg.msg_len as usize;
            assert!(
                total <= slot.capacity + slot.spill_capacity,
                "kernel wrote {total} into {} + {}",
                slot.capacity,
                slot.spill_capacity
            );
            slot.len = total.min(slot.capacity);
            slot.spill_len = total - slot.len;
            slot.truncated = msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            slot.peer = sockaddr_to(&self.addrs[i], msg.msg_hdr.msg_namelen)
                .unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        }
        Ok(received)
    }

    /// Sends up to `min(slots.len(), batch_max)` datagrams without blocking: datagram `i` is
    /// `region[slots[i].offset..][..slots[i].len]` to `slots[i].peer`.
    ///
    /// Returns how many the kernel accepted, always a prefix of `slots`; 0 when the socket
    /// buffer is full. The caller re-offers the rest later.
    ///
    /// # Errors
    ///
    /// `InvalidInput` wrapping [`UdpError::SlotOutOfRegion`] if any slot's range is outside
    /// `region`; the kernel is not called and nothing is sent.
    ///
    /// Otherwise an error means the kernel refused `slots[0]` (for example `EMSGSIZE`, or
    /// `EINVAL` for port 0) and sent nothing. The caller should drop that one datagram and call
    /// again with `&slots[1..]`. When a later message fails, the kernel instead returns the
    /// count before it, and the next call, starting at the failing message, reports its error.
    pub fn send_batch(&mut self, region: &[u8], slots: &[SendSlot]) -> io::Result<usize> {
        for (index, slot) in slots.iter().enumerate() {
            check_range(region.len(), index, slot.offset, slot.len)?;
        }
        let count = slots.len().min(self.batch_max);
        if count == 0 {
            return Ok(0);
        }
        for (addr, slot) in self.addrs.iter_mut().zip(&slots[..count]) {
            *addr = sockaddr_from(slot.peer);
        }
        // As in `recv_batch`: raw pointers taken once, after the last reference-based write to
        // `addrs`.
        let region_ptr = region.as_ptr();
        let iovs_ptr = self.iovs.as_mut_ptr();
        let addrs_ptr = self.addrs.as_mut_ptr();
        for (i, (slot, msg)) in slots[..count].iter().zip(self.msgs.iter_mut()).enumerate() {
            let iov = iovs_ptr.wrapping_add(i);
            // SAFETY: `i < count <= batch_max == iovs.len()`, so `iov` points to a live element
            // of `iovs`, which no reference aliases right now.
            unsafe {
                iov.write(libc::iovec {
                    // `iovec` has no const variant; `sendmmsg` only reads through it.
                    iov_base: region_ptr.wrapping_add(slot.offset).cast_mut().cast(),
                    iov_len: slot.len,
                })
            };
            reset_msg(msg, addrs_ptr.wrapping_add(i), iov, 1);
        }
        // SAFETY: `msgs[..count]` are initialised headers. Each points to one `iovec` in `iovs`
        // covering `region[offset..offset + len]`, checked above to lie inside `region`, which
        // we borrow and the kernel only reads; and to one initialised `sockaddr_in` in `addrs`
        // with `msg_namelen` set to its size. All of these live until we return.
        let ret = syscall!(unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        });
        match ret {
            Ok(n) => {
                let sent = n as usize;
                assert!(sent <= count, "sendmmsg returned {sent} > {count}");
                Ok(sent)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Sends datagrams gathered from several byte ranges each, without blocking: datagram `i`
    /// is the concatenation of the next `slots[i].segments` entries of `segments` (ranges of
    /// `region`), sent to `slots[i].peer`, with one iovec per range and no copy.
    ///
    /// One call moves at most `batch_max` datagrams and at most `2 * batch_max +`
    /// [`SEND_SEGMENTS_MAX`] segments; returns how many datagrams the kernel accepted, always a
    /// prefix of `slots`, 0 when the socket buffer is full. The caller re-offers the rest,
    /// with the segments that follow the sent ones.
    ///
    /// # Errors
    ///
    /// `InvalidInput` wrapping [`UdpError::Segments`] when a slot names more segments than
    /// remain or than [`SEND_SEGMENTS_MAX`], or [`UdpError::SlotOutOfRegion`] (indexing
    /// `segments`) when a range is outside `region`; the kernel is not called. Otherwise as
    /// [`send_batch`](Self::send_batch): the kernel refused `slots[0]` and sent nothing.
    pub fn send_gather(
        &mut self,
        region: &[u8],
        slots: &[GatherSlot],
        segments: &[Segment],
    ) -> io::Result<usize> {
        let mut next = 0;
        for (index, slot) in slots.iter().enumerate() {
            let available = segments.len() - next;
            if slot.segments > available || slot.segments > SEND_SEGMENTS_MAX {
                return Err(UdpError::Segments {
                    index,
                    segments: slot.segments,
                    available,
                }
                .into());
            }
            for (i, segment) in segments[next..next + slot.segments].iter().enumerate() {
                check_range(region.len(), next + i, segment.offset, segment.len)?;
            }
            next += slot.segments;
        }
        // Take as many whole datagrams as fit in one call's messages and iovecs.
        let iov_capacity = self.iovs.len();
        let mut count = 0;
        let mut iov_used = 0;
        for slot in slots.iter().take(self.batch_max) {
            if iov_used + slot.segments > iov_capacity {
                break;
            }
            iov_used += slot.segments;
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        for (addr, slot) in self.addrs.iter_mut().zip(&slots[..count]) {
            *addr = sockaddr_from(slot.peer);
        }
        // As in `recv_batch`: raw pointers taken once, after the last reference-based write to
        // `addrs`.
        let region_ptr = region.as_ptr();
        let iovs_ptr = self.iovs.as_mut_ptr();
        let addrs_ptr = self.addrs.as_mut_ptr();
        let mut iov_next = 0;
        let mut segment_next = 0;
        for (i, (slot, msg)) in slots[..count].iter().zip(self.msgs.iter_mut()).enumerate() {
            let first = iovs_ptr.wrapping_add(iov_next);
            for segment in &segments[segment_next..segment_next + slot.segments] {
                let iov = iovs_ptr.wrapping_add(iov_next);
                // SAFETY: `iov_next < iov_used <= iovs.len()` (counted above), so `iov` points
                // to a live element of `iovs`, which no reference aliases right now.
                unsafe {
                    iov.write(libc::iovec {
                        // `iovec` has no const variant; `sendmmsg` only reads through it.
                        iov_base: region_ptr.wrapping_add(segment.offset).cast_mut().cast(),
                        iov_len: segment.len,
                    })
                };
                iov_next += 1;
            }
            segment_next += slot.segments;
            reset_msg(msg, addrs_ptr.wrapping_add(i), first, slot.segments);
        }
        // SAFETY: `msgs[..count]` are initialised headers. Each points to `segments` iovecs in
        // `iovs` (a zero-length list for an empty datagram), each covering a range checked above
        // to lie inside `region`, which we borrow and the kernel only reads; and to one
        // initialised `sockaddr_in` in `addrs` with `msg_namelen` set to its size. All of these
        // live until we return.
        let ret = syscall!(unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        });
        match ret {
            Ok(n) => {
                let sent = n as usize;
                assert!(sent <= count, "sendmmsg returned {sent} > {count}");
                Ok(sent)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Sends one datagram (`sendto`). Blocks if the socket is blocking and the buffer is full.
    /// For tools and tests; the data path uses [`send_batch`](Self::send_batch).
    ///
    /// # Errors
    ///
    /// The `sendto` error; `WouldBlock` when non-blocking and the buffer is full.
    pub fn send_to(&self, buf: &[u8], peer: SocketAddrV4) -> io::Result<usize> {
        let sockaddr = sockaddr_from(peer);
        // SAFETY: `buf` is a live slice the kernel only reads, for exactly `buf.len()` bytes;
        // `sockaddr` is a live `sockaddr_in` passed with its exact size.
        let sent = syscall!(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&raw const sockaddr).cast(),
                SOCKADDR_IN_LEN,
            )
        })?;
        Ok(sent as usize)
    }

    /// Receives one datagram (`recvfrom`) into `buf`, returning the bytes written and the
    /// sender. A datagram longer than `buf` is truncated silently. Blocks if the socket is
    /// blocking. For tools and tests; the data path uses [`recv_batch`](Self::recv_batch).
    ///
    /// # Errors
    ///
    /// The `recvfrom` error; `WouldBlock` when non-blocking and nothing is waiting.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4)> {
        let mut sockaddr = sockaddr_from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        let mut len = SOCKADDR_IN_LEN;
        // SAFETY: `buf` is a live, writable slice and we pass its exact length; `sockaddr` and
        // `len` are live and writable and `len` holds the size of `sockaddr`.
        let received = syscall!(unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut sockaddr).cast(),
                &mut len,
            )
        })?;
        let peer =
            sockaddr_to(&sockaddr, len).unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        Ok((received as usize, peer))
    }
}

impl AsRawFd for UdpBatchSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for UdpBatchSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Creates an `AF_INET` datagram socket (close-on-exec), applies `options` and binds it to
/// `addr`; returns it and the `SO_BUSY_POLL` value in effect. Shared with the io_uring
/// backend ([`crate::uring`]), which binds its sockets the same way.
pub(crate) fn bind_socket(
    addr: SocketAddrV4,
    options: &UdpSocketOptions,
) -> io::Result<(OwnedFd, Option<u32>)> {
    let mut ty = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC;
    if options.nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: `socket` takes three integers and touches no caller memory.
    let raw = syscall!(unsafe { libc::socket(libc::AF_INET, ty, 0) })?;
    // SAFETY: `socket` succeeded, so `raw` is a new descriptor that nothing else owns. From
    // here on every error path closes it by dropping `fd`.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    if options.reuse_port {
        setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    if let Some(bytes) = options.recv_buffer_bytes {
        set_buffer(fd.as_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)?;
    }
    if let Some(bytes) = options.send_buffer_bytes {
        set_buffer(fd.as_fd(), libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes)?;
    }
    let mut busy_poll_us = None;
    if let Some(us) = options.busy_poll_us {
        let value = libc::c_int::try_from(us).unwrap_or(libc::c_int::MAX);
        match setsockopt_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_BUSY_POLL, value) {
            Ok(()) => busy_poll_us = Some(us),
            // Unprivileged: busy polling is an optimisation, run without it.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => return Err(e),
        }
    }

    let sockaddr = sockaddr_from(addr);
    // SAFETY: `sockaddr` is a live, initialised `sockaddr_in` and we pass its exact size;
    // the kernel only reads it.
    syscall!(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sockaddr).cast(),
            SOCKADDR_IN_LEN,
        )
    })?;
    Ok((fd, busy_poll_us))
}

/// The local address of a bound IPv4 socket.
pub(crate) fn local_addr_of(fd: BorrowedFd<'_>) -> io::Result<SocketAddrV4> {
    let mut sockaddr = sockaddr_from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let mut len = SOCKADDR_IN_LEN;
    // SAFETY: `sockaddr` and `len` are live and writable; `len` holds the size of
    // `sockaddr`, so the kernel writes at most that many bytes.
    syscall!(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut sockaddr).cast(), &mut len) })?;
    sockaddr_to(&sockaddr, len).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "getsockname returned a non-IPv4 address",
        )
    })
}

/// Checks that `offset..offset + len` lies inside a region of `region_len` bytes.
fn check_range(region_len: usize, index: usize, offset: usize, len: usize) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= region_len => Ok(()),
        _ => Err(UdpError::SlotOutOfRegion {
            index,
            offset,
            len,
            region_len,
        }
        .into()),
    }
}

/// Points `msg` at one address and `iovlen` iovecs from `iov` on, and clears what the last call
/// left behind.
fn reset_msg(
    msg: &mut libc::mmsghdr,
    addr: *mut libc::sockaddr_in,
    iov: *mut libc::iovec,
    iovlen: usize,
) {
    msg.msg_hdr.msg_name = addr.cast();
    msg.msg_hdr.msg_namelen = SOCKADDR_IN_LEN;
    msg.msg_hdr.msg_iov = iov;
    msg.msg_hdr.msg_iovlen = iovlen as _;
    msg.msg_hdr.msg_control = ptr::null_mut();
    msg.msg_hdr.msg_controllen = 0;
    msg.msg_hdr.msg_flags = 0;
    msg.msg_len = 0;
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: `mmsghdr` is a C struct of integers and raw pointers (plus, on some libcs, private
    // padding); all-zero is a valid value for every field (null pointers, zero lengths).
    unsafe { mem::zeroed() }
}

pub(crate) fn sockaddr_from(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        // `octets` is already in network order; keep the bytes as they are.
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Converts a kernel-filled address, or `None` if it is not a complete IPv4 address.
pub(crate) fn sockaddr_to(
    sockaddr: &libc::sockaddr_in,
    len: libc::socklen_t,
) -> Option<SocketAddrV4> {
    if len < SOCKADDR_IN_LEN || sockaddr.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let ip = Ipv4Addr::from(sockaddr.sin_addr.s_addr.to_ne_bytes());
    Some(SocketAddrV4::new(ip, u16::from_be(sockaddr.sin_port)))
}

pub(crate) fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is a live `c_int` passed with its exact size; the kernel only reads it.
    syscall!(unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const value).cast(), len)
    })?;
    Ok(())
}

fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and writable, and `len` holds the size of `value`.
    syscall!(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Sets a socket buffer with the `*FORCE` option, falling back to the capped one when we lack
/// `CAP_NET_ADMIN` (`EPERM`).
fn set_buffer(
    fd: BorrowedFd<'_>,
    force: libc::c_int,
    plain: libc::c_int,
    bytes: usize,
) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).map_err(|_| UdpError::BufferSize { bytes })?;
    match setsockopt_int(fd, libc::SOL_SOCKET, force, value) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            setsockopt_int(fd, libc::SOL_SOCKET, plain, value)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::wait_readable;

    const LOCALHOST_ANY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
    const FRAME_BYTES: usize = 2048;

    fn bind_default() -> UdpBatchSocket {
        UdpBatchSocket::bind(LOCALHOST_ANY, UdpSocketOptions::default()).unwrap()
    }

    /// Receives into `slots` until `want` datagrams arrived, waiting at most 5 s in total.
    fn recv_all(
        sock: &mut UdpBatchSocket,
        region: &mut [u8],
        slots: &mut [RecvSlot],
        want: usize,
    ) -> usize {
        let deadline = crate::monotonic_ns() + 5_000_000_000;
        let mut got = 0;
        while got < want && crate::monotonic_ns() < deadline {
            let n = sock.recv_batch(region, &mut slots[got..want]).unwrap();
            got += n;
            if n == 0 {
                wait_readable(&[sock.as_fd()], Some(100_000_000)).unwrap();
            }
        }
        got
    }

    #[test]
    fn loopback_batch_of_32() {
        const COUNT: usize = 32;
        let mut tx = bind_default();
        let mut rx = bind_default();
        let tx_addr = tx.local_addr().unwrap();
        let rx_addr = rx.local_addr().unwrap();
        assert_ne!(rx_addr.port(), 0);

        // Datagram i is 37 * i bytes (the first is empty), packed back to back in one region.
        let lens: Vec<usize> = (0..COUNT).map(|i| 37 * i).collect();
        let mut tx_region = vec![0_u8; lens.iter().sum()];
        let mut send_slots = Vec::new();
        let mut offset = 0;
        for (i, &len) in lens.iter().enumerate() {
            for (j, b) in tx_region[offset..offset + len].iter_mut().enumerate() {
                *b = (i * 7 + j) as u8;
            }
            send_slots.push(SendSlot {
                offset,
                len,
                peer: rx_addr,
            });
            offset += len;
        }
        let mut sent = 0;
        while sent < COUNT {
            sent += tx.send_batch(&tx_region, &send_slots[sent..]).unwrap();
        }

        let mut rx_region = vec![0_u8; COUNT * FRAME_BYTES];
        let mut slots: Vec<RecvSlot> = (0..COUNT)
            .map(|i| RecvSlot::new(i * FRAME_BYTES, FRAME_BYTES))
            .collect();
        assert_eq!(recv_all(&mut rx, &mut rx_region, &mut slots, COUNT), COUNT);

        for (i, (slot, sent)) in slots.iter().zip(&send_slots).enumerate() {
            assert_eq!(slot.len, lens[i], "datagram {i}");
            assert_eq!(slot.peer, tx_addr);
            assert!(!slot.truncated);
            let got = &rx_region[slot.offset..slot.offset + slot.len];
            assert_eq!(
                got,
                &tx_region[sent.offset..sent.offset + sent.len],
                "datagram {i}"
            );
        }
        assert_eq!(rx.recv_batch(&mut rx_region, &mut slots).unwrap(), 0);
    }

    #[test]
    fn batch_max_caps_one_call() {
        let options = UdpSocketOptions {
            batch_max: 4,
            ..Default::default()
        };
        let mut tx = UdpBatchSocket::bind(LOCALHOST_ANY, options).unwrap();
        let mut rx = UdpBatchSocket::bind(LOCALHOST_ANY, options).unwrap();
        assert_eq!(tx.batch_max(), 4);
        let peer = rx.local_addr().unwrap();
        let region = [1_u8; 10];
        let slots = [SendSlot {
            offset: 0,
            len: 10,
            peer,
        }; 10];
        assert_eq!(tx.send_batch(&region, &slots).unwrap(), 4);
        let mut rx_region = [0_u8; 100];
        let mut rx_slots: Vec<RecvSlot> = (0..10).map(|i| RecvSlot::new(i * 10, 10)).collect();
        wait_readable(&[rx.as_fd()], Some(1_000_000_000)).unwrap();
        assert_eq!(rx.recv_batch(&mut rx_region, &mut rx_slots).unwrap(), 4);
        assert_eq!(
            rx_slots[4],
            RecvSlot::new(40, 10),
            "slots past the count are untouched"
        );
    }

    #[test]
    fn invalid_ranges_are_rejected_before_the_kernel() {
        let mut tx = bind_default();
        let mut rx = bind_default();
        let peer = rx.local_addr().unwrap();
        let region = [0_u8; 100];
        let bad_sends = [
            SendSlot {
                offset: 0,
                len: 101,
                peer,
            },
            SendSlot {
                offset: 100,
                len: 1,
                peer,
            },
            SendSlot {
                offset: usize::MAX,
                len: 2,
                peer,
            },
        ];
        for bad in bad_sends {
            // The good slot comes first: it must not be sent either.
            let slots = [
                SendSlot {
                    offset: 0,
                    len: 10,
                    peer,
                },
                bad,
            ];
            let err = tx.send_batch(&region, &slots).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let inner = err.get_ref().and_then(|e| e.downcast_ref::<UdpError>());
            assert!(
                matches!(inner, Some(UdpError::SlotOutOfRegion { index: 1, .. })),
                "{err}"
            );
        }
        // Edge: an empty slot at the very end is inside.
        let edge = [SendSlot {
            offset: 100,
            len: 0,
            peer,
        }];
        assert_eq!(tx.send_batch(&region, &edge).unwrap(), 1);

        let mut rx_region = [0_u8; 100];
        for bad in [
            RecvSlot::new(50, 51),
            RecvSlot::new(usize::MAX, 1),
            RecvSlot::new(101, 0),
        ] {
            let mut slots = [RecvSlot::new(0, 100), bad];
            let err = rx.recv_batch(&mut rx_region, &mut slots).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        // Only the edge datagram was sent, and the rejected receives did not consume it.
        let mut slots = [RecvSlot::new(0, 100)];
        assert_eq!(recv_all(&mut rx, &mut rx_region, &mut slots, 1), 1);
        assert_eq!(slots[0].len, 0);
        assert_eq!(rx.recv_batch(&mut rx_region, &mut slots).unwrap(), 0);
    }

    #[test]
    fn truncation_is_reported() {
        let tx = bind_default();
        let mut rx = bind_default();
        let payload: Vec<u8> = (0..100).collect();
        tx.send_to(&payload, rx.local_addr().unwrap()).unwrap();
        let mut region = [0xFF_u8; 16];
        let mut slots = [RecvSlot::new(3, 10)];
        assert_eq!(recv_all(&mut rx, &mut region, &mut slots, 1), 1);
        assert!(slots[0].truncated);
        assert_eq!(slots[0].len, 10);
        assert_eq!(&region[3..13], &payload[..10]);
        assert_eq!(region[13], 0xFF, "nothing written past the capacity");
        assert_eq!(region[2], 0xFF);
    }

    #[test]
    fn empty_socket_returns_zero() {
        let mut rx = bind_default();
        let mut region = [0_u8; 64];
        let mut slots = [RecvSlot::new(0, 64)];
        assert_eq!(rx.recv_batch(&mut region, &mut slots).unwrap(), 0);
        assert_eq!(rx.recv_batch(&mut region, &mut []).unwrap(), 0);
        // Even a blocking socket: the batch calls pass MSG_DONTWAIT.
        let options = UdpSocketOptions {
            nonblocking: false,
            ..Default::default()
        };
        let mut blocking = UdpBatchSocket::bind(LOCALHOST_ANY, options).unwrap();
        assert_eq!(blocking.recv_batch(&mut region, &mut slots).unwrap(), 0);
        // And the plain call on a non-blocking socket says WouldBlock.
        assert_eq!(
            rx.recv_from(&mut region).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn reuse_port_shares_a_port() {
        let options = UdpSocketOptions {
            reuse_port: true,
            ..Default::default()
        };
        let a = UdpBatchSocket::bind(LOCALHOST_ANY, options).unwrap();
        let addr = a.local_addr().unwrap();
        let b = UdpBatchSocket::bind(addr, options).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        let err = UdpBatchSocket::bind(addr, UdpSocketOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn send_error_on_first_message_then_skip_it() {
        let mut tx = bind_default();
        let mut rx = bind_default();
        let good = rx.local_addr().unwrap();
        // Linux refuses UDP to port 0 with EINVAL.
        let bad = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let region = *b"hello";
        let slot = |peer| SendSlot {
            offset: 0,
            len: 5,
            peer,
        };
        let slots = [slot(bad), slot(good), slot(bad), slot(good)];
        let err = tx.send_batch(&region, &slots).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        // Skip the failed one; the kernel stops before the next failure.
        assert_eq!(tx.send_batch(&region, &slots[1..]).unwrap(), 1);
        assert!(tx.send_batch(&region, &slots[2..]).is_err());
        assert_eq!(tx.send_batch(&region, &slots[3..]).unwrap(), 1);
        let mut rx_region = [0_u8; 20];
        let mut rx_slots = [RecvSlot::new(0, 10), RecvSlot::new(10, 10)];
        assert_eq!(recv_all(&mut rx, &mut rx_region, &mut rx_slots, 2), 2);
        assert_eq!(&rx_region[10..15], b"hello");
    }

    #[test]
    fn plain_send_to_recv_from() {
        let tx = bind_default();
        let rx = bind_default();
        rx.set_nonblocking(false).unwrap();
        assert_eq!(tx.send_to(b"ping", rx.local_addr().unwrap()).unwrap(), 4);
        let mut buf = [0_u8; 16];
        let (n, peer) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(peer, tx.local_addr().unwrap());
        rx.set_nonblocking(true).unwrap();
        assert_eq!(
            rx.recv_from(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn options_are_applied_or_rejected() {
        let options = UdpSocketOptions {
            recv_buffer_bytes: Some(1 << 20),
            send_buffer_bytes: Some(1 << 20),
            busy_poll_us: Some(50),
            ..Default::default()
        };
        let sock = UdpBatchSocket::bind(LOCALHOST_ANY, options).unwrap();
        // With CAP_NET_ADMIN the FORCE variant gets the full size (doubled by the kernel);
        // without, the size is capped by net.core.[rw]mem_max but still set.
        assert!(sock.recv_buffer_bytes().unwrap() > 0);
        assert!(sock.send_buffer_bytes().unwrap() > 0);
        assert!(matches!(sock.busy_poll_us(), Some(50) | None));
        assert!(format!("{sock:?}").contains("batch_max: 64"));

        for batch_max in [0, BATCH_MAX_LIMIT + 1] {
            let bad = UdpSocketOptions {
                batch_max,
                ..Default::default()
            };
            let err = UdpBatchSocket::bind(LOCALHOST_ANY, bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        let bad = UdpSocketOptions {
            recv_buffer_bytes: Some(usize::MAX),
            ..Default::default()
        };
        assert_eq!(
            UdpBatchSocket::bind(LOCALHOST_ANY, bad).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn spill_receives_the_largest_datagram_and_gather_sends_it() {
        let options = UdpSocketOptions {
            batch_max: 4,
            ..Default::default()
        };
        let mut tx = bind_default();
        let mut rx = UdpBatchSocket::bind(LOCALHOST_ANY, options).unwrap();
        let peer = rx.local_addr().unwrap();
        let region: Vec<u8> = (0..UDP_PAYLOAD_MAX + 1).map(|i| (i % 253) as u8).collect();
        // Datagram 0: the largest, from three ranges. 1: one byte. 2: empty, no segment.
        // 3: exactly the slot's 1000 bytes.
        let segments = [
            Segment { offset: 0, len: 10 },
            Segment {
                offset: 10,
                len: 40_000,
            },
            Segment {
                offset: 40_010,
                len: UDP_PAYLOAD_MAX - 40_010,
            },
            Segment {
                offset: UDP_PAYLOAD_MAX,
                len: 1,
            },
            Segment {
                offset: 0,
                len: 1000,
            },
        ];
        let slots = [
            GatherSlot { segments: 3, peer },
            GatherSlot { segments: 1, peer },
            GatherSlot { segments: 0, peer },
            GatherSlot { segments: 1, peer },
        ];
        let mut sent = 0;
        let mut next_segment = 0;
        while sent < slots.len() {
            let n = tx
                .send_gather(&region, &slots[sent..], &segments[next_segment..])
                .unwrap();
            next_segment += slots[sent..sent + n]
                .iter()
                .map(|s| s.segments)
                .sum::<usize>();
            sent += n;
        }
        const SPILL: usize = UDP_PAYLOAD_MAX - 1000;
        let mut rx_region = vec![0_u8; 4 * 1000];
        let mut spill = vec![0_u8; 4 * SPILL];
        let mut rx_slots: Vec<RecvSlot> = (0..4)
            .map(|i| RecvSlot {
                spill_offset: i * SPILL,
                spill_capacity: SPILL,
                ..RecvSlot::new(i * 1000, 1000)
            })
            .collect();
        let deadline = crate::monotonic_ns() + 5_000_000_000;
        let mut got = 0;
        while got < 4 && crate::monotonic_ns() < deadline {
            let n = rx
                .recv_batch_spill(&mut rx_region, &mut spill, &mut rx_slots[got..])
                .unwrap();
            if n == 0 {
                wait_readable(&[rx.as_fd()], Some(100_000_000)).unwrap();
            }
            got += n;
        }
        assert_eq!(got, 4);
        let s = rx_slots[0];
        assert!(!s.truncated);
        assert_eq!((s.len, s.spill_len), (1000, SPILL));
        assert_eq!(&rx_region[..1000], &region[..1000]);
        assert_eq!(&spill[..SPILL], &region[1000..UDP_PAYLOAD_MAX]);
        assert_eq!((rx_slots[1].len, rx_slots[1].spill_len), (1, 0));
        assert_eq!(rx_region[1000], region[UDP_PAYLOAD_MAX]);
        assert_eq!((rx_slots[2].len, rx_slots[2].spill_len), (0, 0));
        assert_eq!((rx_slots[3].len, rx_slots[3].spill_len), (1000, 0));
        // One byte more than the slot and its spill hold is truncated, and says so.
        tx.send_to(&region[..21], peer).unwrap();
        let mut slots = [RecvSlot {
            spill_capacity: 10,
            ..RecvSlot::new(0, 10)
        }];
        let mut small_spill = [0_u8; 10];
        wait_readable(&[rx.as_fd()], Some(1_000_000_000)).unwrap();
        assert_eq!(
            rx.recv_batch_spill(&mut rx_region, &mut small_spill, &mut slots)
                .unwrap(),
            1
        );
        assert!(slots[0].truncated);
        assert_eq!((slots[0].len, slots[0].spill_len), (10, 10));
        assert_eq!(&small_spill, &region[10..20]);
        // A spill range outside the spill region is refused before the kernel.
        let mut bad = [RecvSlot {
            spill_offset: 5,
            spill_capacity: 6,
            ..RecvSlot::new(0, 10)
        }];
        let err = rx
            .recv_batch_spill(&mut rx_region, &mut small_spill, &mut bad)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn gather_checks_segments_before_the_kernel() {
        let mut tx = bind_default();
        let peer = tx.local_addr().unwrap();
        let region = [0_u8; 10];
        let one = [Segment { offset: 5, len: 5 }];
        let err = tx
            .send_gather(&region, &[GatherSlot { segments: 2, peer }], &one)
            .unwrap_err();
        assert!(err.to_string().contains("segments"), "{err}");
        let outside = [Segment { offset: 6, len: 5 }];
        let err = tx
            .send_gather(&region, &[GatherSlot { segments: 1, peer }], &outside)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn socket_moves_to_another_thread() {
        let mut rx = bind_default();
        let peer = rx.local_addr().unwrap();
        let mut tx = bind_default();
        let sender = std::thread::spawn(move || {
            let region = [9_u8; 3];
            tx.send_batch(
                &region,
                &[SendSlot {
                    offset: 0,
                    len: 3,
                    peer,
                }],
            )
            .unwrap()
        });
        assert_eq!(sender.join().unwrap(), 1);
        let mut region = [0_u8; 3];
        let mut slots = [RecvSlot::new(0, 3)];
        assert_eq!(recv_all(&mut rx, &mut region, &mut slots, 1), 1);
        assert_eq!(region, [9, 9, 9]);
    }

    #[test]
    fn sockaddr_round_trip_and_defensive_decode() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 4433);
        let raw = sockaddr_from(addr);
        assert_eq!(raw.sin_port.to_ne_bytes(), 4433_u16.to_be_bytes());
        assert_eq!(raw.sin_addr.s_addr.to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(sockaddr_to(&raw, SOCKADDR_IN_LEN), Some(addr));
        assert_eq!(sockaddr_to(&raw, SOCKADDR_IN_LEN - 1), None);
        let mut other = raw;
        other.sin_family = libc::AF_INET6 as libc::sa_family_t;
        assert_eq!(sockaddr_to(&other, SOCKADDR_IN_LEN), None);
    }
}
