//! UDP over io_uring: multishot receive into a provided-buffer ring, batched sends.
//!
//! # Design
//!
//! [`UringUdp`] serves any number (up to `sockets_max`) of bound UDP sockets with two rings.
//! The *receive ring* carries one multishot `IORING_OP_RECVMSG` (`IORING_RECV_MULTISHOT`) per
//! socket: armed once, it turns every datagram that arrives into a completion, and the kernel
//! picks where to put the datagram from a *provided-buffer ring* (`IORING_REGISTER_PBUF_RING`)
//! that this type owns. Reaping costs no system call when completions are already posted: the
//! completion queue is shared memory, read with an Acquire load of its tail. The ring is set up
//! with `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG`, so the kernel does not
//! interrupt us to run the receive work; it raises `IORING_SQ_TASKRUN` instead, and
//! [`UringUdp::receive`] enters the kernel only when that flag is up (or a multishot must be
//! re-armed). An idle poll is then one atomic load, where `recvmmsg` costs a system call.
//!
//! The *send ring* carries one `IORING_OP_SENDMSG` per datagram, gathered from the caller's
//! byte ranges with one iovec each, all submitted by one `io_uring_enter` that also waits for
//! their completions. Every send passes `MSG_DONTWAIT`, which io_uring honours by failing with
//! `EAGAIN` instead of parking the request, so the wait ends as soon as the kernel has tried
//! each one. A separate ring for sends keeps their completions apart from the receive stream,
//! so waiting for "all my sends" needs no bookkeeping of receive completions that arrive
//! meanwhile.
//!
//! # Why received bytes are copied once more
//!
//! A multishot `recvmsg` writes one datagram into one provided buffer (buffer bundles exist only
//! for plain `recv`, which loses the sender's address), so every buffer must hold the largest
//! datagram: [`RX_BUFFER_BYTES`], 64 KiB and a little. Pool frames are 2 KiB, so provided
//! buffers cannot be pool frames, and the caller copies each datagram out of the buffer it
//! arrived in (`receive` lends it as `&[u8]` for the length of a callback) into its own frames.
//! For the small datagrams that dominate, that copy is a few cache lines. The memory cost is
//! `rx_buffers * RX_BUFFER_BYTES` of address space (8.4 MiB for the default 128 buffers), of
//! which only the pages datagrams reach are ever committed: a buffer that only ever receives
//! 64-byte datagrams costs one page.
//!
//! # Safety contract
//!
//! Memory the kernel writes on its own schedule is the provided buffers and the buffer ring,
//! both [`Region`]s owned by this type and reached only through raw pointers: no Rust
//! reference to a buffer exists while it is lent. A buffer is lent from the moment its entry is
//! published (a Release store of the ring tail, which the kernel reads with an Acquire load)
//! until its completion is read (the Acquire load of the completion tail orders the kernel's
//! writes before our reads); `receive` then lends it to the caller as `&[u8]` and publishes it
//! again only after the callback returned. A ledger (`lent`) rejects a completion naming a
//! buffer that is not lent. Memory the kernel reads for sends (headers, addresses, iovecs, the
//! caller's region) is borrowed only for the `send` call, which returns only after every send
//! it submitted has completed. The message header a multishot receive was armed with lives in
//! this type and outlives the rings. Dropping the type cancels every receive synchronously
//! (`IORING_REGISTER_SYNC_CANCEL`) before the buffers are unmapped; if a cancel fails, the
//! buffers are leaked rather than unmapped under a live request.

use std::fmt;
use std::io;
use std::mem::{self, ManuallyDrop};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, types, IoUring};

use crate::mmap::{Region, RegionOptions};
use crate::udp::{
    bind_socket, local_addr_of, sockaddr_from, Segment, UdpSocketOptions, BATCH_MAX_LIMIT,
    SEND_SEGMENTS_MAX, SOCKADDR_IN_LEN, UDP_PAYLOAD_MAX,
};

/// Bytes of `struct io_uring_recvmsg_out` at the start of each received buffer.
const RECVMSG_OUT_BYTES: usize = 16;

/// Bytes of one provided buffer: the `io_uring_recvmsg_out` header, the sender's address and
/// the largest UDP payload, rounded up to a cache line.
pub const RX_BUFFER_BYTES: usize =
    (RECVMSG_OUT_BYTES + SOCKADDR_IN_LEN as usize + UDP_PAYLOAD_MAX).next_multiple_of(64);

/// The most provided buffers: the kernel's limit on a buffer ring (2^15 entries).
pub const RX_BUFFERS_LIMIT: usize = 1 << 15;

/// The default number of provided buffers: two receive batches of 64, so the kernel can keep
/// receiving while one batch is being handed to the app. 128 x 65,600 bytes is 8.4 MiB of
/// address space.
pub const RX_BUFFERS_DEFAULT: usize = 128;

/// The most sockets one [`UringUdp`] serves; the index must fit the low half of `user_data`.
pub const SOCKETS_LIMIT: usize = 1 << 16;

/// The buffer group of the provided-buffer ring (there is one per `UringUdp`).
const BUFFER_GROUP: u16 = 0;

/// One entry of a provided-buffer ring (`struct io_uring_buf`). Entry 0's `resv` field is the
/// ring's tail, which the kernel reads; so entries are written field by field through raw
/// pointers, never as a whole struct or through a reference.
#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<BufEntry>() == 16);
const _: () = assert!(RX_BUFFER_BYTES <= u32::MAX as usize);
const _: () =
    assert!(RX_BUFFER_BYTES.is_multiple_of(64) && RX_BUFFER_BYTES >= 16 + 16 + UDP_PAYLOAD_MAX);
const _: () = assert!(RX_BUFFERS_LIMIT <= 1 << 16, "buffer ids are u16");

/// Why a [`UringUdp`] could not be built or used. Carried inside an [`io::Error`].
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    /// `rx_buffers` is not a power of two in `1..=`[`RX_BUFFERS_LIMIT`]. Fix the
    /// configuration.
    #[error("rx_buffers {0} is not a power of two in 1..={RX_BUFFERS_LIMIT}")]
    RxBuffers(usize),
    /// `batch_max` is not in `1..=`[`BATCH_MAX_LIMIT`]. Fix the configuration.
    #[error("batch_max {0} is not in 1..={BATCH_MAX_LIMIT}")]
    BatchMax(usize),
    /// `sockets_max` is not in `1..=`[`SOCKETS_LIMIT`]. Fix the configuration.
    #[error("sockets_max {0} is not in 1..={SOCKETS_LIMIT}")]
    SocketsMax(usize),
    /// The kernel refused to set up the rings. io_uring needs Linux 6.0 or later and may be
    /// switched off (`sysctl kernel.io_uring_disabled`) or blocked by a seccomp profile (as in
    /// some container runtimes); use the `recvmmsg` backend there.
    #[error("io_uring is not available: {0} (needs Linux >= 6.0, kernel.io_uring_disabled=0, and no seccomp filter against it)")]
    Unavailable(io::Error),
    /// Every socket slot is in use. Close one, or raise `sockets_max`.
    #[error("all {0} socket slots are in use")]
    SocketsFull(usize),
    /// The socket id names no open socket (closed, or of another `UringUdp`).
    #[error("the socket id names no open socket")]
    StaleSocket,
    /// A send slot names more segments than remain, or more than [`SEND_SEGMENTS_MAX`], or a
    /// segment lies outside the region. A bug in the caller; nothing was sent.
    #[error(
        "send slot {index}: its segments are missing or outside the region of {region_len} bytes"
    )]
    BadSegments {
        /// The first bad slot.
        index: usize,
        /// The region's length.
        region_len: usize,
    },
}

impl From<UringError> for io::Error {
    fn from(e: UringError) -> Self {
        let kind = match e {
            UringError::Unavailable(ref inner) => inner.kind(),
            UringError::SocketsFull(_) => io::ErrorKind::OutOfMemory,
            UringError::StaleSocket => io::ErrorKind::NotFound,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// Options of a [`UringUdp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringOptions {
    /// Provided buffers of [`RX_BUFFER_BYTES`] each, shared by every socket; a power of two.
    /// Bounds the datagrams received but not yet reaped; when they run out, a socket's
    /// multishot receive stops (counted in [`UringCounters::rx_no_buffers`]) and is re-armed
    /// at the next [`UringUdp::receive`], the datagrams waiting in the socket buffer meanwhile.
    pub rx_buffers: usize,
    /// The most datagrams one [`UringUdp::send`] submits.
    pub batch_max: usize,
    /// The most sockets open at once.
    pub sockets_max: usize,
}

impl Default for UringOptions {
    fn default() -> Self {
        Self {
            rx_buffers: RX_BUFFERS_DEFAULT,
            batch_max: 64,
            sockets_max: 64,
        }
    }
}

/// Names one socket of a [`UringUdp`]; stale once the socket is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UringSocketId {
    index: u32,
    generation: u32,
}

impl UringSocketId {
    /// The socket's slot, below `sockets_max`; a closed socket's slot is reused by a later one
    /// (with another generation), so this indexes per-socket tables of the caller.
    pub fn index(self) -> usize {
        self.index as usize
    }

    fn user_data(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    fn from_user_data(user_data: u64) -> Self {
        Self {
            index: user_data as u32,
            generation: (user_data >> 32) as u32,
        }
    }
}

/// What [`UringUdp::receive`] hands its callback.
#[derive(Debug)]
pub enum Received<'a> {
    /// A datagram, lent for the length of the callback.
    Datagram {
        /// The socket it arrived on.
        socket: UringSocketId,
        /// The sender.
        peer: SocketAddrV4,
        /// The payload (all of it unless `truncated`).
        payload: &'a [u8],
        /// The datagram was longer than a buffer and the rest was discarded (`MSG_TRUNC`);
        /// with [`RX_BUFFER_BYTES`] buffers this cannot happen over IPv4.
        truncated: bool,
    },
    /// A socket's receive failed (a pending ICMP error, say); the receive is re-armed.
    Error {
        /// The socket.
        socket: UringSocketId,
        /// The kernel's error.
        error: io::Error,
    },
}

/// One datagram for [`UringUdp::send`]: the next `segments` entries of the segment list, to
/// `peer`, from `socket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringSendSlot {
    /// The socket to send from.
    pub socket: UringSocketId,
    /// Destination.
    pub peer: SocketAddrV4,
    /// How many segments, in order, make up the datagram (at most [`SEND_SEGMENTS_MAX`]).
    pub segments: usize,
    /// Out: the bytes sent, or a negative `errno` (`-EAGAIN` when the socket buffer was full,
    /// `-EBADF` for a stale socket id).
    pub result: i32,
}

impl UringSendSlot {
    /// A slot with its result cleared.
    pub const fn new(socket: UringSocketId, peer: SocketAddrV4, segments: usize) -> Self {
        Self {
            socket,
            peer,
            segments,
            result: 0,
        }
    }

    /// The result as an [`io::Result`]: the bytes sent, or the kernel's error.
    pub fn outcome(&self) -> io::Result<usize> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as usize)
        }
    }
}

/// Counters of a [`UringUdp`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UringCounters {
    /// `io_uring_enter` calls made by `receive` (to run deferred receive work or re-arm).
    pub rx_enters: u64,
    /// `receive` calls that found completions without entering the kernel.
    pub rx_reaped_without_enter: u64,
    /// Multishot receives armed (at bind, and again after one stopped).
    pub rx_arms: u64,
    /// Multishot receives stopped because every provided buffer was in use.
    pub rx_no_buffers: u64,
    /// Completions naming a buffer that was not lent, ignored (a kernel bug if ever seen).
    pub rx_bad_buffer: u64,
    /// `io_uring_enter` calls made by `send`.
    pub tx_enters: u64,
}

struct Slot {
    fd: Option<OwnedFd>,
    generation: u32,
    /// A multishot receive is submitted and has not posted its last completion.
    armed: bool,
}

/// UDP sockets served by io_uring. See the module documentation.
///
/// Call order: [`new`](Self::new); [`bind`](Self::bind) sockets; then, each pass,
/// [`receive`](Self::receive) (never blocks) and [`send`](Self::send) (returns once the kernel
/// has tried every datagram). Sleep on [`AsFd::as_fd`], which is readable when completions wait.
pub struct UringUdp {
    rx: IoUring,
    tx: IoUring,
    /// The provided buffers and their ring; declared after the rings, so dropped after them.
    buffers: Buffers,
    /// The header every multishot receive is armed with: only its name and control lengths
    /// matter. Boxed so that its address is stable while requests hold it.
    recv_msghdr: Box<libc::msghdr>,
    sockets: Box<[Slot]>,
    /// Some open socket's receive is not armed.
    rearm_pending: bool,
    /// A receive could not be cancelled at close: the buffers are leaked at drop.
    uncancelled: bool,
    batch_max: usize,
    /// `batch_max` message headers for sends, rewritten by each `send`.
    tx_msgs: Box<[libc::msghdr]>,
    /// `batch_max` destinations.
    tx_addrs: Box<[libc::sockaddr_in]>,
    /// `2 * batch_max + SEND_SEGMENTS_MAX` iovecs: room for any batch of ordinary datagrams
    /// and always for one of the most segments.
    tx_iovs: Box<[libc::iovec]>,
    counters: UringCounters,
}

// SAFETY: the non-`Send` fields are raw pointers inside the message headers and iovecs, which
// point into this struct's own heap arrays and regions (they move with it) or, during `send`,
// into the caller's region; they are rewritten before each use and never dereferenced by Rust.
// The rings and regions are owned memory and descriptors usable from any thread. A multishot
// receive's deferred work runs in the task that submitted it; after a move it still completes
// (the kernel runs it in that task or its fallback worker), and every re-arm is submitted by
// the thread that now owns the value.
unsafe impl Send for UringUdp {}

impl fmt::Debug for UringUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringUdp")
            .field("rx_fd", &self.rx.as_raw_fd())
            .field("rx_buffers", &self.buffers.count)
            .field("batch_max", &self.batch_max)
            .field("sockets_max", &self.sockets.len())
            .field("counters", &self.counters)
            .finish()
    }
}

/// The provided buffers, the ring that offers them to the kernel, and the ledger of lent ones.
struct Buffers {
    /// `count * RX_BUFFER_BYTES` bytes; buffer `bid` is at `bid * RX_BUFFER_BYTES`. Leaked
    /// instead of unmapped if a receive could not be cancelled (see `Drop for UringUdp`).
    bufs: ManuallyDrop<Region>,
    /// The buffer ring: `count` entries of 16 bytes, registered with the kernel.
    ring: Region,
    count: u16,
    /// Our copy of the ring tail (the count of entries ever published, mod 2^16).
    tail: u16,
    /// Per buffer: lent to the kernel.
    lent: Box<[bool]>,
}

impl Buffers {
    /// Whether `bid` names a buffer lent to the kernel.
    fn is_lent(&self, bid: u16) -> bool {
        self.lent.get(usize::from(bid)) == Some(&true)
    }

    /// Writes buffer `bid` into the next ring entry and marks it lent; visible to the kernel
    /// after [`publish`](Self::publish).
    fn provide(&mut self, bid: u16) {
        let mask = self.count - 1;
        let entry = self
            .ring
            .as_mut_ptr()
            .cast::<BufEntry>()
            .wrapping_add(usize::from(self.tail & mask));
        let addr = self
            .bufs
            .as_mut_ptr()
            .wrapping_add(usize::from(bid) * RX_BUFFER_BYTES) as u64;
        write_entry(entry, addr, bid);
        self.lent[usize::from(bid)] = true;
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the entries written since the last call.
    fn publish(&mut self) {
        let first = self.ring.as_mut_ptr().cast::<BufEntry>();
        // SAFETY: entry 0 is inside the mapping, and its `resv` field is the ring tail: a
        // 2-byte-aligned u16 that the kernel reads atomically (`smp_load_acquire`) and that
        // we only ever access through this atomic, for the life of the mapping.
        let tail = unsafe { AtomicU16::from_ptr(field(first, mem::offset_of!(BufEntry, resv))) };
        // Release: pairs with the kernel's Acquire load of the tail, so the entries written by
        // `provide` are visible before the kernel can pick them.
        tail.store(self.tail, Ordering::Release);
    }
}

fn ring(sq_entries: u32, cq_entries: u32) -> io::Result<IoUring> {
    IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_submit_all()
        .setup_cqsize(cq_entries)
        .build(sq_entries)
        .map_err(|e| UringError::Unavailable(e).into())
}

impl UringUdp {
    /// Sets up both rings and registers the provided buffers; no socket yet.
    ///
    /// # Errors
    ///
    /// `InvalidInput` wrapping [`UringError`] for bad options; [`UringError::Unavailable`] when
    /// the kernel refuses io_uring; the `mmap` error for the buffers.
    pub fn new(options: UringOptions) -> io::Result<Self> {
        let UringOptions {
            rx_buffers,
            batch_max,
            sockets_max,
        } = options;
        if !rx_buffers.is_power_of_two() || rx_buffers > RX_BUFFERS_LIMIT {
            return Err(UringError::RxBuffers(rx_buffers).into());
        }
        if !(1..=BATCH_MAX_LIMIT).contains(&batch_max) {
            return Err(UringError::BatchMax(batch_max).into());
        }
        if !(1..=SOCKETS_LIMIT).contains(&sockets_max) {
            return Err(UringError::SocketsMax(sockets_max).into());
        }
        // The receive queue holds at most one completion per buffer plus, per socket, the
        // last completion of a stopped receive and of a cancelled one; sized so that it never
        // overflows (an overflow makes the kernel allocate).
        let rx_sq = sockets_max.next_power_of_two() as u32;
        let rx_cq = (rx_buffers + 2 * sockets_max).next_power_of_two() as u32;
        let rx = ring(rx_sq, rx_cq)?;
        let tx_sq = batch_max.next_power_of_two() as u32;
        let tx = ring(tx_sq, 2 * tx_sq)?;

        let bufs = Region::new(rx_buffers * RX_BUFFER_BYTES, RegionOptions::default())?;
        let mut ring_mem = Region::new(
            rx_buffers * std::mem::size_of::<BufEntry>(),
            RegionOptions::default(),
        )?;
        let ring_ptr = ring_mem.as_mut_ptr();
        // SAFETY: `ring_mem` is a page-aligned mapping of `rx_buffers` entries, owned by the
        // value we return, which unregisters the ring (or drops the io_uring, which does) before
        // the mapping goes; `rx_buffers` is a power of two at most 2^15 (checked above).
        unsafe {
            rx.submitter().register_buf_ring_with_flags(
                ring_ptr as u64,
                rx_buffers as u16,
                BUFFER_GROUP,
                0,
            )
        }
        .map_err(UringError::Unavailable)?;

        let iov_empty = libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        };
        let mut this = Self {
            rx,
            tx,
            buffers: Buffers {
                bufs: ManuallyDrop::new(bufs),
                ring: ring_mem,
                count: rx_buffers as u16,
                tail: 0,
                lent: vec![false; rx_buffers].into_boxed_slice(),
            },
            recv_msghdr: Box::new(zeroed_msghdr()),
            sockets: (0..sockets_max)
                .map(|_| Slot {
                    fd: None,
                    generation: 0,
                    armed: false,
                })
                .collect(),
            rearm_pending: false,
            uncancelled: false,
            batch_max,
            tx_msgs: (0..batch_max).map(|_| zeroed_msghdr()).collect(),
            tx_addrs: vec![sockaddr_from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); batch_max]
                .into_boxed_slice(),
            tx_iovs: vec![iov_empty; 2 * batch_max + SEND_SEGMENTS_MAX].into_boxed_slice(),
            counters: UringCounters::default(),
        };
        this.recv_msghdr.msg_namelen = SOCKADDR_IN_LEN;
        for bid in 0..rx_buffers as u16 {
            this.buffers.provide(bid);
        }
        this.buffers.publish();
        Ok(this)
    }

    /// Creates a UDP socket with `options` (as [`crate::UdpBatchSocket::bind`]; `batch_max`
    /// and the spill are ignored), binds it to `addr` and arms its multishot receive.
    ///
    /// # Errors
    ///
    /// [`UringError::SocketsFull`]; any `socket`/`setsockopt`/`bind` error, as for the
    /// `recvmmsg` socket; an `io_uring_enter` error arming the receive.
    pub fn bind(
        &mut self,
        addr: SocketAddrV4,
        options: &UdpSocketOptions,
    ) -> io::Result<UringSocketId> {
        let Some(index) = self.sockets.iter().position(|slot| slot.fd.is_none()) else {
            return Err(UringError::SocketsFull(self.sockets.len()).into());
        };
        let (fd, _) = bind_socket(addr, options)?;
        let slot = &mut self.sockets[index];
        slot.fd = Some(fd);
        slot.armed = false;
        self.rearm_pending = true;
        let id = UringSocketId {
            index: index as u32,
            generation: slot.generation,
        };
        if let Err(error) = self.arm_pending() {
            self.close(id);
            return Err(error);
        }
        Ok(id)
    }

    /// The local address of an open socket.
    ///
    /// # Errors
    ///
    /// [`UringError::StaleSocket`] for a closed socket; `getsockname` errors otherwise.
    pub fn local_addr(&self, socket: UringSocketId) -> io::Result<SocketAddrV4> {
        local_addr_of(self.fd_of(socket).ok_or(UringError::StaleSocket)?)
    }

    fn fd_of(&self, socket: UringSocketId) -> Option<BorrowedFd<'_>> {
        let slot = self.sockets.get(socket.index as usize)?;
        if slot.generation != socket.generation {
            return None;
        }
        slot.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether `socket` names an open socket.
    pub fn is_open(&self, socket: UringSocketId) -> bool {
        self.fd_of(socket).is_some()
    }

    /// Cancels the socket's receive (synchronously) and closes it; its id becomes stale.
    /// Datagrams it received but that were not reaped are dropped. Returns whether the id named
    /// an open socket.
    pub fn close(&mut self, socket: UringSocketId) -> bool {
        if !self.is_open(socket) {
            return false;
        }
        if !self.cancel(socket) {
            // The receive may still be live: leak the buffers at drop rather than unmap them
            // under it. Its completions carry the old generation and are ignored (their
            // buffers go back to the ring).
            self.uncancelled = true;
        }
        let slot = &mut self.sockets[socket.index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.fd = None;
        slot.armed = false;
        true
    }

    /// Cancels `socket`'s multishot receive; true when none is live afterwards.
    fn cancel(&mut self, socket: UringSocketId) -> bool {
        let slot = &self.sockets[socket.index as usize];
        if !slot.armed {
            return true;
        }
        let builder = types::CancelBuilder::user_data(socket.user_data()).all();
        match self.rx.submitter().register_sync_cancel(None, builder) {
            Ok(()) => true,
            // Nothing matched: the request had already posted its last completion.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(_) => false,
        }
    }

    /// Submits a multishot receive for every open socket that has none.
    fn arm_pending(&mut self) -> io::Result<()> {
        if !self.rearm_pending {
            return Ok(());
        }
        let msghdr: *const libc::msghdr = &*self.recv_msghdr;
        let mut sq = self.rx.submission();
        for (index, slot) in self.sockets.iter_mut().enumerate() {
            let Some(fd) = &slot.fd else { continue };
            if slot.armed {
                continue;
            }
            let id = UringSocketId {
                index: index as u32,
                generation: slot.generation,
            };
            let entry = opcode::RecvMsgMulti::new(types::Fd(fd.as_raw_fd()), msghdr, BUFFER_GROUP)
                .build()
                .user_data(id.user_data());
            // SAFETY: the entry names `fd`, which stays open while the request is live (closing
            // cancels first), and `recv_msghdr`, which lives in a Box owned by `self` until
            // after the rings are dropped; the kernel reads only its name and control lengths
            // and writes data into provided buffers, never through the header's pointers (all
            // null). The submission queue has room for one entry per socket (`rx_sq`).
            if unsafe { sq.push(&entry) }.is_err() {
                break;
            }
            slot.armed = true;
            self.counters.rx_arms += 1;
        }
        drop(sq);
        self.rearm_pending = self
            .sockets
            .iter()
            .any(|slot| slot.fd.is_some() && !slot.armed);
        self.counters.rx_enters += 1;
        self.rx.submit()?;
        Ok(())
    }

    /// Hands up to `max` received datagrams (or receive errors) to `on`, without blocking;
    /// returns how many. Enters the kernel only to run receive work the kernel flagged as
    /// pending, or to re-arm a stopped receive.
    ///
    /// # Errors
    ///
    /// An `io_uring_enter` error; what was already reaped was handed to `on`.
    pub fn receive(&mut self, max: usize, mut on: impl FnMut(Received<'_>)) -> io::Result<usize> {
        self.arm_pending()?;
        let mut delivered = 0;
        let mut entered = false;
        let mut returned = false;
        loop {
            let (submitter, sq, mut cq) = self.rx.split();
            cq.sync();
            if cq.is_empty() {
                if entered || !(sq.taskrun() || sq.cq_overflow()) {
                    break;
                }
                drop(cq);
                // Runs the receive work the kernel deferred to us (COOP_TASKRUN), which posts
                // its completions.
                self.counters.rx_enters += 1;
                submitter.submit_and_wait(0)?;
                entered = true;
                continue;
            }
            if !entered {
                self.counters.rx_reaped_without_enter += 1;
            }
            while delivered < max {
                let Some(cqe) = cq.next() else { break };
                let id = UringSocketId::from_user_data(cqe.user_data());
                let flags = cqe.flags();
                let result = cqe.result();
                let current = self
                    .sockets
                    .get(id.index as usize)
                    .is_some_and(|slot| slot.generation == id.generation && slot.fd.is_some());
                if current && !cqueue::more(flags) {
                    self.sockets[id.index as usize].armed = false;
                    self.rearm_pending = true;
                }
                let named = cqueue::buffer_select(flags);
                let bid = named.filter(|&bid| self.buffers.is_lent(bid));
                if named.is_some() && bid.is_none() {
                    self.counters.rx_bad_buffer += 1;
                }
                if let Some(bid) = bid {
                    self.buffers.lent[usize::from(bid)] = false;
                }
                if result < 0 {
                    if result == -libc::ENOBUFS {
                        self.counters.rx_no_buffers += 1;
                    } else if current && result != -libc::ECANCELED {
                        on(Received::Error {
                            socket: id,
                            error: io::Error::from_raw_os_error(-result),
                        });
                        delivered += 1;
                    }
                } else if let (true, Some(bid)) = (current, bid) {
                    let base = self
                        .buffers
                        .bufs
                        .as_ptr()
                        .wrapping_add(usize::from(bid) * RX_BUFFER_BYTES);
                    let len = (result as usize).min(RX_BUFFER_BYTES);
                    // SAFETY: buffer `bid` was lent (ledger checked above) and its completion
                    // was just read, after the Acquire load of the completion tail in `sync`,
                    // so the kernel has finished writing it and will not touch it again until
                    // it is published below, after this slice is gone. It lies inside `bufs`
                    // (`bid < rx_buffers`, `len <= RX_BUFFER_BYTES`), which lives while `self`
                    // does.
                    let buffer = unsafe { std::slice::from_raw_parts(base, len) };
                    match types::RecvMsgOut::parse(buffer, &self.recv_msghdr) {
                        Ok(out) => {
                            on(Received::Datagram {
                                socket: id,
                                peer: peer_from(out.name_data()),
                                payload: out.payload_data(),
                                truncated: out.is_payload_truncated(),
                            });
                            delivered += 1;
                        }
                        Err(()) => self.counters.rx_bad_buffer += 1,
                    }
                }
                if let Some(bid) = bid {
                    // Back to the ring; published after the loop.
                    self.buffers.provide(bid);
                    returned = true;
                }
            }
            break;
        }
        if returned {
            self.buffers.publish();
        }
        self.arm_pending()?;
        Ok(delivered)
    }

    /// Sends up to `batch_max` datagrams, each gathered from the next `slots[i].segments`
    /// entries of `segments` (ranges of `region`), with one `io_uring_enter` that submits them
    /// and waits until the kernel has tried each. Sets every processed slot's `result`;
    /// returns how many slots were processed (a prefix: as many as fit in one batch's
    /// messages and iovecs). A full socket buffer shows as `-EAGAIN` in `result`: re-offer
    /// those later.
    ///
    /// # Errors
    ///
    /// `InvalidInput` wrapping [`UringError::BadSegments`]; nothing was sent.
    ///
    /// # Panics
    ///
    /// If `io_uring_enter` fails with an error other than `EINTR`, `EAGAIN` or `EBUSY` after
    /// the sends were queued: returning would leave the kernel holding pointers into memory
    /// the caller gets back, so that is treated as the kernel bug it would be.
    pub fn send(
        &mut self,
        region: &[u8],
        slots: &mut [UringSendSlot],
        segments: &[Segment],
    ) -> io::Result<usize> {
        let mut next = 0;
        for (index, slot) in slots.iter().enumerate() {
            let bad = UringError::BadSegments {
                index,
                region_len: region.len(),
            };
            if slot.segments > segments.len() - next || slot.segments > SEND_SEGMENTS_MAX {
                return Err(bad.into());
            }
            let inside = segments[next..next + slot.segments].iter().all(|s| {
                s.offset
                    .checked_add(s.len)
                    .is_some_and(|end| end <= region.len())
            });
            if !inside {
                return Err(bad.into());
            }
            next += slot.segments;
        }
        let mut count = 0;
        let mut iov_used = 0;
        for slot in slots.iter().take(self.batch_max) {
            if iov_used + slot.segments > self.tx_iovs.len() {
                break;
            }
            iov_used += slot.segments;
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        for (addr, slot) in self.tx_addrs.iter_mut().zip(&slots[..count]) {
            *addr = sockaddr_from(slot.peer);
        }
        // Raw pointers taken once, after the last reference-based write to the arrays; no
        // reference to them is made again until every send has completed.
        let region_ptr = region.as_ptr();
        let iovs_ptr = self.tx_iovs.as_mut_ptr();
        let addrs_ptr = self.tx_addrs.as_mut_ptr();
        let msgs_ptr = self.tx_msgs.as_mut_ptr();
        let mut iov_next = 0;
        let mut segment_next = 0;
        let mut submitted = 0;
        {
            let mut sq = self.tx.submission();
            for (i, slot) in slots[..count].iter_mut().enumerate() {
                let first = iovs_ptr.wrapping_add(iov_next);
                for segment in &segments[segment_next..segment_next + slot.segments] {
                    // SAFETY: `iov_next < iov_used <= tx_iovs.len()`, so this is a live element
                    // of `tx_iovs`, which no reference aliases right now.
                    unsafe {
                        iovs_ptr.wrapping_add(iov_next).write(libc::iovec {
                            // `iovec` has no const variant; the kernel only reads through it.
                            iov_base: region_ptr.wrapping_add(segment.offset).cast_mut().cast(),
                            iov_len: segment.len,
                        })
                    };
                    iov_next += 1;
                }
                segment_next += slot.segments;
                let Some(fd) = self
                    .sockets
                    .get(slot.socket.index as usize)
                    .filter(|s| s.generation == slot.socket.generation)
                    .and_then(|s| s.fd.as_ref())
                else {
                    slot.result = -libc::EBADF;
                    continue;
                };
                let msg = msgs_ptr.wrapping_add(i);
                let mut header = zeroed_msghdr();
                header.msg_name = addrs_ptr.wrapping_add(i).cast();
                header.msg_namelen = SOCKADDR_IN_LEN;
                header.msg_iov = first;
                header.msg_iovlen = slot.segments as _;
                // SAFETY: `i < count <= batch_max == tx_msgs.len()`, so `msg` is a live element
                // of `tx_msgs`, which no reference aliases right now.
                unsafe { msg.write(header) };
                let entry = opcode::SendMsg::new(types::Fd(fd.as_raw_fd()), msg.cast_const())
                    .flags(libc::MSG_DONTWAIT as u32)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the entry points to `tx_msgs[i]`, which points to `tx_addrs[i]` (an
                // initialised address of the size given) and to `slot.segments` iovecs in
                // `tx_iovs`, each over a range of `region` checked above. All of them, and the
                // socket, stay alive and unchanged until this call has reaped every completion
                // below. The queue has `batch_max` entries and is empty here (each call drains
                // what it submits).
                unsafe { sq.push(&entry) }.expect("the send queue holds batch_max entries");
                slot.result = 0;
                submitted += 1;
            }
        }
        let mut completed = 0;
        while completed < submitted {
            self.counters.tx_enters += 1;
            match self.tx.submit_and_wait(submitted - completed) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => panic!(
                    "io_uring_enter failed with sends in flight ({e}); the kernel may still read \
                     the caller's memory, so this cannot return"
                ),
            }
            for cqe in self.tx.completion() {
                let i = cqe.user_data() as usize;
                assert!(i < count, "a send completion names slot {i} of {count}");
                slots[i].result = cqe.result();
                completed += 1;
            }
        }
        Ok(count)
    }

    /// The counters.
    pub fn counters(&self) -> UringCounters {
        self.counters
    }

    /// Provided buffers, as configured.
    pub fn rx_buffers(&self) -> usize {
        usize::from(self.buffers.count)
    }

    /// The most datagrams one [`send`](Self::send) submits.
    pub fn batch_max(&self) -> usize {
        self.batch_max
    }
}

impl AsFd for UringUdp {
    /// The receive ring's descriptor: readable when completions wait to be reaped.
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.rx`, which lives as long as the borrow of
        // `self` that bounds the returned value.
        unsafe { BorrowedFd::borrow_raw(self.rx.as_raw_fd()) }
    }
}

impl Drop for UringUdp {
    fn drop(&mut self) {
        let mut all_cancelled = !self.uncancelled;
        for index in 0..self.sockets.len() {
            let slot = &self.sockets[index];
            if slot.fd.is_none() {
                continue;
            }
            let id = UringSocketId {
                index: index as u32,
                generation: slot.generation,
            };
            all_cancelled &= self.cancel(id);
            self.sockets[index].fd = None;
        }
        let _ = self.rx.submitter().unregister_buf_ring(BUFFER_GROUP);
        if all_cancelled {
            // SAFETY: every receive was cancelled synchronously, so no request can write a
            // provided buffer any more, and `bufs` is not used after this.
            unsafe { ManuallyDrop::drop(&mut self.buffers.bufs) };
        }
        // Otherwise the mapping is leaked: a live request might still write it.
    }
}

/// A pointer to the field at `offset` of the entry at `entry`, computed without dereferencing.
fn field<T>(entry: *mut BufEntry, offset: usize) -> *mut T {
    entry.cast::<u8>().wrapping_add(offset).cast::<T>()
}

/// Writes one buffer-ring entry field by field (see [`BufEntry`]).
fn write_entry(entry: *mut BufEntry, addr: u64, bid: u16) {
    // SAFETY: the only caller, `Buffers::provide`, passes an entry inside the ring mapping
    // (index masked below `rx_buffers`), aligned (the mapping is page-aligned, entries are 16
    // bytes), at our unpublished tail. The kernel reads only entries between its head and the
    // published tail, and at most `rx_buffers` buffers exist, so it is not reading this one.
    // The tail field (entry 0's `resv`) is not written.
    unsafe { field::<u64>(entry, mem::offset_of!(BufEntry, addr)).write(addr) };
    // SAFETY: as above.
    unsafe { field::<u32>(entry, mem::offset_of!(BufEntry, len)).write(RX_BUFFER_BYTES as u32) };
    // SAFETY: as above.
    unsafe { field::<u16>(entry, mem::offset_of!(BufEntry, bid)).write(bid) };
}

/// The sender from the name field of a received buffer: a `sockaddr_in` as bytes, or
/// `0.0.0.0:0` if it is not a complete IPv4 address.
fn peer_from(name: &[u8]) -> SocketAddrV4 {
    let unspecified = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    if name.len() < SOCKADDR_IN_LEN as usize {
        return unspecified;
    }
    let family = u16::from_ne_bytes([name[0], name[1]]);
    if family != libc::AF_INET as u16 {
        return unspecified;
    }
    let port = u16::from_be_bytes([name[2], name[3]]);
    SocketAddrV4::new(Ipv4Addr::new(name[4], name[5], name[6], name[7]), port)
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: `msghdr` is a C struct of integers and raw pointers (plus, on some libcs, private
    // padding); all-zero is a valid value for every field.
    unsafe { std::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::wait_readable;
    use crate::udp::UdpBatchSocket;

    const LOCALHOST_ANY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);

    fn uring() -> UringUdp {
        UringUdp::new(UringOptions {
            rx_buffers: 8,
            batch_max: 4,
            sockets_max: 2,
        })
        .unwrap()
    }

    /// Receives until `want` datagrams arrived (5 s at most), copying each out.
    fn receive_all(
        ring: &mut UringUdp,
        want: usize,
    ) -> Vec<(UringSocketId, SocketAddrV4, Vec<u8>, bool)> {
        let deadline = crate::monotonic_ns() + 5_000_000_000;
        let mut got = Vec::new();
        while got.len() < want && crate::monotonic_ns() < deadline {
            let n = ring
                .receive(want - got.len(), |r| match r {
                    Received::Datagram {
                        socket,
                        peer,
                        payload,
                        truncated,
                    } => got.push((socket, peer, payload.to_vec(), truncated)),
                    Received::Error { error, .. } => panic!("receive error {error}"),
                })
                .unwrap();
            if n == 0 {
                wait_readable(&[ring.as_fd()], Some(50_000_000)).unwrap();
            }
        }
        got
    }

    #[test]
    fn largest_datagram_round_trips_gathered_and_multishot() {
        let mut ring = uring();
        let a = ring
            .bind(LOCALHOST_ANY, &UdpSocketOptions::default())
            .unwrap();
        let b = ring
            .bind(LOCALHOST_ANY, &UdpSocketOptions::default())
            .unwrap();
        let a_addr = ring.local_addr(a).unwrap();
        let b_addr = ring.local_addr(b).unwrap();
        // One 65,507-byte datagram from three ranges, then a 1-byte one, a to b.
        let region: Vec<u8> = (0..UDP_PAYLOAD_MAX + 1).map(|i| (i % 251) as u8).collect();
        let segments = [
            Segment {
                offset: 0,
                len: 1000,
            },
            Segment {
                offset: 1000,
                len: 60_000,
            },
            Segment {
                offset: 61_000,
                len: UDP_PAYLOAD_MAX - 61_000,
            },
            Segment {
                offset: UDP_PAYLOAD_MAX,
                len: 1,
            },
        ];
        let mut slots = [
            UringSendSlot::new(a, b_addr, 3),
            UringSendSlot::new(a, b_addr, 1),
        ];
        assert_eq!(ring.send(&region, &mut slots, &segments).unwrap(), 2);
        assert_eq!(slots[0].outcome().unwrap(), UDP_PAYLOAD_MAX);
        assert_eq!(slots[1].outcome().unwrap(), 1);
        let got = receive_all(&mut ring, 2);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, b);
        assert_eq!(got[0].1, a_addr);
        assert_eq!(got[0].2, &region[..UDP_PAYLOAD_MAX]);
        assert!(!got[0].3);
        assert_eq!(got[1].2, &region[UDP_PAYLOAD_MAX..]);
        // One over the limit: the kernel refuses it.
        let big = vec![0_u8; UDP_PAYLOAD_MAX + 1];
        let mut slots = [UringSendSlot::new(a, b_addr, 1)];
        let segments = [Segment {
            offset: 0,
            len: big.len(),
        }];
        ring.send(&big, &mut slots, &segments).unwrap();
        assert_eq!(slots[0].result, -libc::EMSGSIZE);
        assert!(ring.counters().rx_arms >= 2);
    }

    #[test]
    fn more_datagrams_than_buffers_rearm_the_receive() {
        let mut ring = uring();
        let rx = ring
            .bind(LOCALHOST_ANY, &UdpSocketOptions::default())
            .unwrap();
        let to = ring.local_addr(rx).unwrap();
        let tx = UdpBatchSocket::bind(LOCALHOST_ANY, UdpSocketOptions::default()).unwrap();
        // 8 buffers, 40 datagrams: the multishot receive runs out of buffers at least once
        // (nothing is reaped while they arrive), stops, and is re-armed.
        for i in 0..40_u8 {
            tx.send_to(&[i; 3], to).unwrap();
        }
        let got = receive_all(&mut ring, 40);
        assert_eq!(got.len(), 40);
        for (i, (_, _, payload, _)) in got.iter().enumerate() {
            assert_eq!(payload, &[i as u8; 3], "in order");
        }
        let counters = ring.counters();
        assert!(counters.rx_no_buffers >= 1, "{counters:?}");
        assert!(counters.rx_arms >= 2, "{counters:?}");
        assert_eq!(counters.rx_bad_buffer, 0);
    }

    #[test]
    fn closed_socket_ids_are_stale_and_slots_are_bounded() {
        let mut ring = uring();
        let a = ring
            .bind(LOCALHOST_ANY, &UdpSocketOptions::default())
            .unwrap();
        let b = ring
            .bind(LOCALHOST_ANY, &UdpSocketOptions::default())
            .unwrap();
        let full = ring
            .bind(LOCALHOST_ANY, &UdpSocketOptions::default())
            .unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::OutOfMemory, "{full}");
        let b_addr = ring.local_addr(b).unwrap();
        assert!(ring.close(a));
        assert!(!ring.close(a), "closing twice does nothing");
        assert!(!ring.is_open(a));
        assert_eq!(
            ring.local_addr(a).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let c = ring
            .bind(LOCALHOST_ANY, &UdpSocketOptions::default())
            .unwrap();
        assert_ne!(a, c, "a reused slot gets a new generation");
        let mut slots = [
            UringSendSlot::new(a, b_addr, 1),
            UringSendSlot::new(c, b_addr, 1),
        ];
        let segments = [Segment { offset: 0, len: 2 }, Segment { offset: 0, len: 2 }];
        assert_eq!(ring.send(b"hi", &mut slots, &segments).unwrap(), 2);
        assert_eq!(slots[0].result, -libc::EBADF);
        assert_eq!(slots[1].outcome().unwrap(), 2);
        let got = receive_all(&mut ring, 1);
        assert_eq!(got[0].2, b"hi");
        // Bad segment lists are refused before the kernel.
        let bad = [Segment { offset: 1, len: 2 }];
        let mut slots = [UringSendSlot::new(c, b_addr, 1)];
        assert_eq!(
            ring.send(b"hi", &mut slots, &bad).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let mut slots = [UringSendSlot::new(c, b_addr, 2)];
        assert!(ring.send(b"hi", &mut slots, &bad).is_err());
    }

    #[test]
    fn options_are_checked() {
        for options in [
            UringOptions {
                rx_buffers: 3,
                ..Default::default()
            },
            UringOptions {
                rx_buffers: RX_BUFFERS_LIMIT * 2,
                ..Default::default()
            },
            UringOptions {
                batch_max: 0,
                ..Default::default()
            },
            UringOptions {
                sockets_max: 0,
                ..Default::default()
            },
        ] {
            let err = UringUdp::new(options).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        }
    }

    #[test]
    fn peer_decoding_is_defensive() {
        let raw = sockaddr_from(SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 4433));
        // SAFETY: `sockaddr_in` is plain old data; viewing its bytes is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const raw).cast::<u8>(), SOCKADDR_IN_LEN as usize)
        };
        assert_eq!(
            peer_from(bytes),
            SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 4433)
        );
        assert_eq!(
            peer_from(&bytes[..8]),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)
        );
        let mut other = bytes.to_vec();
        other[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        assert_eq!(
            peer_from(&other),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)
        );
    }
}
