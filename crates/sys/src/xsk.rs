//! AF_XDP sockets: a UMEM, four shared rings, and a safe batch API over them.
//!
//! # Design
//!
//! An AF_XDP socket moves frames between one queue of one interface and a user-space memory
//! area, the UMEM, through four single-producer single-consumer rings mapped from the kernel:
//!
//! | ring       | producer | consumer | entries       | meaning                              |
//! |------------|----------|----------|---------------|--------------------------------------|
//! | fill       | us       | kernel   | UMEM address  | "receive into this frame"            |
//! | rx         | kernel   | us       | [`XdpDesc`]   | "a frame arrived here, this long"    |
//! | tx         | us       | kernel   | [`XdpDesc`]   | "send these bytes"                   |
//! | completion | kernel   | us       | UMEM address  | "done sending this frame, reuse it"  |
//!
//! [`Umem`] owns the memory: a [`FrameRegion`], which hands out one frame at a time and keeps
//! the ledger of frames lent to the kernel (see [`crate::frames`]). [`XskSocket::new`] borrows
//! the `Umem` only to register it and attaches the socket to its region; the socket keeps the
//! geometry, not the memory. That lets the engine's packet pool own the UMEM as its memory while
//! the NIC queue owns the socket, and every ring operation takes the region as an argument
//! (`&mut FrameRegion`) and checks that it is the one the socket registered. The ring
//! operations are the only code that lends frames to the kernel (fill, tx) and takes them back
//! (rx, completion), so the ledger is always exactly the set of frames the kernel may touch.
//! One UMEM per socket: sharing a UMEM between sockets (`XDP_SHARED_UMEM`) was left out because
//! it makes the fill and completion rings shared state between sockets, and the engines are one
//! socket per core with no sharing anyway.
//!
//! The ring API moves batches through caller-provided slices ([`XskSocket::fill`],
//! [`XskSocket::receive`], [`XskSocket::transmit`], [`XskSocket::complete`]) and never
//! allocates. Each call reads the kernel's index at most once, and only when the cached copy
//! says the batch does not fit (the "cached producer/consumer" scheme of libxdp), so a batch costs
//! one shared cache line, not one per descriptor. Wrapping libxdp instead was rejected: it
//! needs a C toolchain and libbpf at build time, and its ring functions are inline C that Rust
//! cannot call anyway.
//!
//! Everything the kernel hands us is copied out of the shared ring with a volatile read and
//! validated before it is returned: an address past the end of the UMEM or a length that leaves
//! its frame, and a descriptor naming a frame that is not lent that way (a repeated or forged
//! one), are counted in [`XskCounters`] and dropped, never returned twice and never a panic.
//! Descriptors we publish are validated the same way first (inside the UMEM, and naming a frame
//! the caller holds), so the kernel's `tx_invalid_descs` should stay at zero; a rejected one
//! stops the batch (see [`XskSocket::transmit`]).
//!
//! # Memory ordering
//!
//! The rings follow the protocol in the kernel's `net/xdp/xsk_queue.h`:
//!
//! ```text
//! producer                          consumer
//! if (LOAD ->consumer) {  (A)       LOAD.acq ->producer  (C)
//!    STORE $data                    LOAD $data
//!    STORE.rel ->producer (B)       STORE.rel ->consumer (D)
//! }
//! ```
//!
//! When we produce (fill, tx), our Release store of the producer is (B) and pairs with the
//! kernel's `smp_load_acquire` (C) in `__xskq_cons_peek`; our Acquire load of the consumer is (A)
//! and pairs with the kernel's `smp_store_release` (D) in `__xskq_cons_release`. When we consume
//! (rx, completion), our Acquire load of the producer is (C), pairing with the kernel's
//! `smp_store_release` (B) in `__xskq_prod_submit`, and our Release store of the consumer is (D),
//! pairing with the kernel's `READ_ONCE` plus control dependency (A) in `xskq_prod_nb_free`.
//!
//! # Safety contract
//!
//! - Each ring mapping is owned by the socket from `mmap` to `munmap` in `Drop`; the offsets the
//!   kernel reports are checked to lie inside the mapping and to be aligned before any pointer
//!   is formed from them. Indexes are masked by `size - 1` before every slot access, so a
//!   hostile index cannot reach outside the ring.
//! - The producer and consumer words are only accessed atomically (`AtomicU32::from_ptr`); the
//!   slots are accessed with volatile reads and writes, and only the slots the protocol gives
//!   us at that moment.
//! - The socket itself never dereferences the UMEM. The kernel writes frames we put on the fill
//!   ring and reads frames we put on the tx ring, from another CPU and at any time; the
//!   [`FrameRegion`] refuses access to exactly those frames, because the ring operations mark a
//!   frame lent before the Release store that publishes it and unmark it only after the Acquire
//!   load that shows the kernel handed it back. No safe function hands out a slice over the
//!   whole UMEM ([`FrameRegion::as_slice`] is `unsafe`).
//! - A ring operation given a region other than the one this socket registered panics (a bug in
//!   the caller) before touching a ring: otherwise the kernel would write into frames of the
//!   registered region that its ledger says the caller holds.
//! - At shutdown, frames still lent come back only through [`XskSocket::close_reclaiming`],
//!   and only once a probe socket bound to the same queue has shown that the kernel destroyed
//!   the socket (a duplicated descriptor or a forked child keeps it alive, and then the frames
//!   stay lent; see there for the argument). A socket that is simply dropped leaves its frames
//!   lent for good, which is always sound.
//! - Dropping the UMEM before the socket is sound too: registration pins the pages
//!   (`pin_user_pages`) and the kernel reaches them through its own mapping (`vmap`), never
//!   through our virtual addresses, so unmapping the region leaves the kernel writing to pages
//!   it still holds, not to memory we reuse.

use std::io;
use std::marker::PhantomData;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{fence, AtomicU32, Ordering};

use crate::frames::{FrameRegion, Lease, Lender};
use crate::mmap::Region;

/// The largest ring size accepted, in entries. A 2048-entry ring already holds 4 MiB of 2 KiB
/// frames; 64 Ki entries is far above any batch the engines make and bounds the mapping.
pub const RING_SIZE_MAX: u32 = 1 << 16;

/// The kernel reserves this much headroom in every frame in front of the caller's headroom
/// (`XDP_PACKET_HEADROOM`), so received data starts at `frame + headroom + 256`.
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// One rx or tx ring entry, laid out as the kernel's `struct xdp_desc`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpDesc {
    /// The address of the first byte of the packet, as an offset into the UMEM.
    pub addr: u64,
    /// The packet length in bytes.
    pub len: u32,
    /// Option flags; 0 unless multi-buffer is in use (it is not).
    pub options: u32,
}

const _: () = assert!(mem::size_of::<XdpDesc>() == mem::size_of::<libc::xdp_desc>());
const _: () = assert!(mem::align_of::<XdpDesc>() == mem::align_of::<libc::xdp_desc>());

/// Why an AF_XDP operation failed. Carried inside an [`io::Error`]; each variant says what to
/// change.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// The frame size is not 2048 or 4096, or exceeds the page size. Use 2048 or 4096.
    #[error("frame size {frame_size} is not 2048 or 4096 (at most the page size)")]
    FrameSize {
        /// The requested frame size.
        frame_size: u32,
    },
    /// The frame count is zero. Ask for at least one frame.
    #[error("a UMEM needs at least one frame")]
    FrameCount,
    /// The headroom leaves no room for a packet. Use a headroom below `frame_size - 256`.
    #[error(
        "headroom {headroom} must be below frame size {frame_size} minus the kernel's \
         {XDP_PACKET_HEADROOM} bytes"
    )]
    Headroom {
        /// The requested headroom.
        headroom: u32,
        /// The frame size.
        frame_size: u32,
    },
    /// A ring size is not a power of two in `1..=RING_SIZE_MAX`. Fix the configuration.
    #[error("{ring} ring size {size} is not a power of two in 1..={RING_SIZE_MAX}")]
    RingSize {
        /// Which ring.
        ring: &'static str,
        /// The requested size.
        size: u32,
    },
    /// `frame_count * frame_size` does not fit in the region. Allocate a larger region or ask
    /// for fewer frames.
    #[error("{frame_count} frames of {frame_size} bytes need {needed} bytes; the region has {region_len}")]
    RegionTooSmall {
        /// The number of frames requested.
        frame_count: u32,
        /// The frame size.
        frame_size: u32,
        /// Bytes needed.
        needed: u64,
        /// Bytes in the region.
        region_len: usize,
    },
    /// The AF_XDP socket could not be created. `EAFNOSUPPORT`: the kernel lacks
    /// `CONFIG_XDP_SOCKETS`, use the kernel-socket backend; `EPERM`: grant `CAP_NET_RAW`.
    #[error("cannot create an AF_XDP socket: {source} (EAFNOSUPPORT: no CONFIG_XDP_SOCKETS; EPERM: needs CAP_NET_RAW)")]
    Socket {
        /// The `socket` error.
        source: io::Error,
    },
    /// The kernel could not pin the UMEM: it counts against `RLIMIT_MEMLOCK` unless the process
    /// holds `CAP_IPC_LOCK`. Raise the limit (`ulimit -l`, systemd `LimitMEMLOCK=`), grant
    /// `CAP_IPC_LOCK`, or use a smaller UMEM. Do not also `mlock` the region: both count.
    #[error(
        "registering a UMEM of {len} bytes failed: {source}; it counts against RLIMIT_MEMLOCK \
         (now soft {soft}, hard {hard} bytes): raise it, or grant CAP_IPC_LOCK (held: \
         {cap_ipc_lock}), or use fewer frames"
    )]
    UmemMemlock {
        /// The UMEM length in bytes.
        len: u64,
        /// The error (`ENOBUFS` over the limit, `ENOMEM`/`EPERM` when pinning fails).
        source: io::Error,
        /// The soft `RLIMIT_MEMLOCK` in bytes (`u64::MAX` = unlimited).
        soft: u64,
        /// The hard `RLIMIT_MEMLOCK` in bytes.
        hard: u64,
        /// Whether the process holds `CAP_IPC_LOCK`.
        cap_ipc_lock: bool,
    },
    /// A socket set-up step the kernel should not refuse failed. This is a bug here or a kernel
    /// ABI change; report it with the step and the error.
    #[error("AF_XDP set-up step {step} failed: {source}")]
    Setup {
        /// The step (`XDP_UMEM_REG`, `XDP_RX_RING`, `mmap rx`, ...).
        step: &'static str,
        /// The system error.
        source: io::Error,
    },
    /// The kernel reported ring offsets outside the mapping or misaligned. Kernel ABI change;
    /// report it.
    #[error("the kernel's XDP_MMAP_OFFSETS for the {ring} ring are unusable")]
    MmapOffsets {
        /// Which ring.
        ring: &'static str,
    },
    /// No interface has this index in the network namespace the socket was created in. Look the
    /// interface up again, from a thread in the right namespace.
    #[error("no interface with index {ifindex} in this socket's network namespace")]
    NoSuchDevice {
        /// The interface index.
        ifindex: u32,
    },
    /// Another AF_XDP socket is bound to this queue. Close it, or bind another queue.
    #[error(
        "queue {queue_id} of {} is already bound by another AF_XDP socket",
        crate::netdev::describe_ifindex(*ifindex)
    )]
    QueueBusy {
        /// The interface index.
        ifindex: u32,
        /// The queue.
        queue_id: u32,
    },
    /// The queue does not exist. Use a queue id below the count, or create the device with more
    /// queues (veth: `numrxqueues N numtxqueues N` on both ends).
    #[error(
        "queue {queue_id} does not exist on {}, which has {queue_count} \
         queues: use a queue id below {queue_count}",
        crate::netdev::describe_ifindex(*ifindex)
    )]
    QueueOutOfRange {
        /// The interface index.
        ifindex: u32,
        /// The queue requested.
        queue_id: u32,
        /// The device's queue count (the larger of its rx and tx counts).
        queue_count: u32,
    },
    /// The driver cannot do zero-copy on this device (veth never can). Bind with
    /// [`BindMode::ZeroCopyOrCopy`] or [`BindMode::Copy`].
    #[error(
        "{} does not support AF_XDP zero-copy: {source}; bind with \
         BindMode::ZeroCopyOrCopy or BindMode::Copy",
        crate::netdev::describe_ifindex(*ifindex)
    )]
    ZeroCopyUnsupported {
        /// The interface index.
        ifindex: u32,
        /// The bind error (`EOPNOTSUPP` or `EINVAL`).
        source: io::Error,
    },
    /// The UMEM is already registered with another socket, or was with one that was dropped
    /// without [`XskSocket::close_reclaiming`] (its frames may still be in the kernel's hands).
    /// Give each socket its own UMEM.
    #[error(
        "this UMEM is registered with another AF_XDP socket (or with one dropped without \
         close_reclaiming): give each socket its own UMEM"
    )]
    RegionInUse,
    /// `bind` failed for another reason. `ENETDOWN`: bring the link up.
    #[error(
        "binding queue {queue_id} of {} failed: {source}",
        crate::netdev::describe_ifindex(*ifindex)
    )]
    Bind {
        /// The interface index.
        ifindex: u32,
        /// The queue.
        queue_id: u32,
        /// The bind error.
        source: io::Error,
    },
}

impl XskError {
    /// The [`XskError`] inside an error this module returned, if it carries one.
    pub fn of(error: &io::Error) -> Option<&XskError> {
        error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<XskError>())
    }

    fn into_io(self) -> io::Error {
        let kind = match &self {
            Self::FrameSize { .. }
            | Self::FrameCount
            | Self::Headroom { .. }
            | Self::RingSize { .. }
            | Self::RegionTooSmall { .. } => io::ErrorKind::InvalidInput,
            Self::RegionInUse => io::ErrorKind::AddrInUse,
            Self::MmapOffsets { .. } => io::ErrorKind::InvalidData,
            Self::NoSuchDevice { .. } | Self::QueueOutOfRange { .. } => io::ErrorKind::NotFound,
            Self::QueueBusy { .. } => io::ErrorKind::AddrInUse,
            Self::ZeroCopyUnsupported { .. } => io::ErrorKind::Unsupported,
            Self::Socket { source }
            | Self::UmemMemlock { source, .. }
            | Self::Setup { source, .. }
            | Self::Bind { source, .. } => source.kind(),
        };
        io::Error::new(kind, self)
    }
}

fn setup_error(step: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |source| XskError::Setup { step, source }.into_io()
}

fn check_ring_size(ring: &'static str, size: u32) -> io::Result<()> {
    if size.is_power_of_two() && size <= RING_SIZE_MAX {
        Ok(())
    } else {
        Err(XskError::RingSize { ring, size }.into_io())
    }
}

/// The shape of a [`Umem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemConfig {
    /// Bytes per frame: 2048 or 4096. One frame holds one packet.
    pub frame_size: u32,
    /// Number of frames. `frame_count * frame_size` bytes of the region are registered.
    pub frame_count: u32,
    /// Extra headroom the kernel leaves in front of received data, in bytes (usually 0).
    pub headroom: u32,
    /// Fill ring entries, a power of two.
    pub fill_ring_size: u32,
    /// Completion ring entries, a power of two.
    pub completion_ring_size: u32,
}

impl Default for UmemConfig {
    /// 2048 frames of 2 KiB (4 MiB, half of an 8 MiB `RLIMIT_MEMLOCK`) and 2048-entry rings,
    /// libxdp's defaults.
    fn default() -> Self {
        Self {
            frame_size: 2048,
            frame_count: 2048,
            headroom: 0,
            fill_ring_size: 2048,
            completion_ring_size: 2048,
        }
    }
}

/// The memory an AF_XDP socket receives into and transmits from: a [`FrameRegion`] of equal
/// frames, and the ring sizes and headroom of its registration. Registered with the kernel when
/// passed to [`XskSocket::new`]. The frame geometry (size, count, length) is always read from
/// the [`FrameRegion`] itself, so a region swapped in through [`Umem::frames_mut`] is registered
/// as what it is, never with another region's length.
///
/// There is no need to `mlock` the region: registration pins the pages itself, and counts them
/// against `RLIMIT_MEMLOCK` (unless `CAP_IPC_LOCK`); locking as well would count them twice.
#[derive(Debug)]
pub struct Umem {
    frames: FrameRegion,
    config: UmemConfig,
}

impl Umem {
    /// Checks `config` against `region` and takes ownership of the region.
    ///
    /// # Errors
    ///
    /// `InvalidInput` wrapping [`XskError::FrameSize`], [`XskError::FrameCount`],
    /// [`XskError::Headroom`], [`XskError::RingSize`] or [`XskError::RegionTooSmall`]. The
    /// region is dropped.
    pub fn new(region: Region, config: UmemConfig) -> io::Result<Self> {
        let page = crate::cpu::page_size_bytes()?;
        let frame_size = config.frame_size;
        if !(frame_size == 2048 || frame_size == 4096) || u64::from(frame_size) > page {
            return Err(XskError::FrameSize { frame_size }.into_io());
        }
        if config.frame_count == 0 {
            return Err(XskError::FrameCount.into_io());
        }
        if config.headroom >= frame_size - XDP_PACKET_HEADROOM {
            return Err(XskError::Headroom {
                headroom: config.headroom,
                frame_size,
            }
            .into_io());
        }
        check_ring_size("fill", config.fill_ring_size)?;
        check_ring_size("completion", config.completion_ring_size)?;
        let len = u64::from(config.frame_count) * u64::from(frame_size);
        if len > region.len() as u64 {
            return Err(XskError::RegionTooSmall {
                frame_count: config.frame_count,
                frame_size,
                needed: len,
                region_len: region.len(),
            }
            .into_io());
        }
        let frames = FrameRegion::new(region, frame_size as usize, config.frame_count)?;
        Ok(Self { frames, config })
    }

    /// The configuration this UMEM was built with. Its frame size and count describe the
    /// region built here; [`Umem::frame_size`] and [`Umem::frame_count`] describe the region
    /// the UMEM holds now.
    pub fn config(&self) -> &UmemConfig {
        &self.config
    }

    /// The registered length in bytes, `frame_count * frame_size`. Valid addresses are below it.
    pub fn len(&self) -> u64 {
        self.frames.len() as u64
    }

    /// Always `false`: a UMEM has at least one frame. Present because clippy pairs it with `len`.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u32 {
        // A `u32` by construction: `Umem::new` builds frames of 2048 or 4096 bytes, and a
        // region swapped in with larger frames is refused by the kernel at registration.
        u32::try_from(self.frames.frame_size()).unwrap_or(u32::MAX)
    }

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        self.frames.frame_count()
    }

    /// The UMEM address of frame `index` (its first byte), or `None` past the last frame.
    pub fn frame_addr(&self, index: u32) -> Option<u64> {
        (index < self.frame_count()).then(|| u64::from(index) * u64::from(self.frame_size()))
    }

    /// The frame that UMEM address `addr` falls in, or `None` past the end.
    pub fn frame_index(&self, addr: u64) -> Option<u32> {
        (addr < self.len()).then(|| (addr / u64::from(self.frame_size())) as u32)
    }

    /// The frames, to read and write those the caller holds.
    pub fn frames(&self) -> &FrameRegion {
        &self.frames
    }

    /// The frames, mutably: what the ring operations of [`XskSocket`] take.
    pub fn frames_mut(&mut self) -> &mut FrameRegion {
        &mut self.frames
    }

    /// The bytes `desc` describes, or `None` if they are not inside one frame or the frame is
    /// lent to the kernel.
    pub fn packet(&self, desc: &XdpDesc) -> Option<&[u8]> {
        let (index, start, end) = self.window(desc)?;
        self.frames.get(index).map(|frame| &frame[start..end])
    }

    /// The bytes `desc` describes, mutably, with the same checks as [`Umem::packet`].
    pub fn packet_mut(&mut self, desc: &XdpDesc) -> Option<&mut [u8]> {
        let (index, start, end) = self.window(desc)?;
        self.frames
            .get_mut(index)
            .map(|frame| &mut frame[start..end])
    }

    /// Frame index and the byte range inside it that `desc` covers, if it stays in one frame.
    fn window(&self, desc: &XdpDesc) -> Option<(u32, usize, usize)> {
        let index = self.frame_index(desc.addr)?;
        let frame_size = u64::from(self.frame_size());
        let start = desc.addr % frame_size;
        let end = start.checked_add(u64::from(desc.len))?;
        (end <= frame_size).then_some((index, start as usize, end as usize))
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            len: self.len(),
            frame_size: self.frame_size(),
        }
    }
}

/// What descriptors may say, in the kernel's aligned-chunk mode.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    len: u64,
    frame_size: u32,
}

impl Geometry {
    /// The frame an address inside the UMEM falls in. Callers check `addr_ok` first, so the
    /// index is below the frame count, which is a `u32`.
    fn frame_of(self, addr: u64) -> u32 {
        (addr / u64::from(self.frame_size)) as u32
    }

    /// A fill or completion address: inside the UMEM (the kernel rounds it down to its frame).
    fn addr_ok(self, addr: u64) -> bool {
        addr < self.len
    }

    /// An rx or tx descriptor: non-empty, inside the UMEM, not crossing its frame's end, and
    /// without option bits (we never enable multi-buffer). Mirrors the kernel's
    /// `xp_aligned_validate_desc`.
    fn desc_ok(self, desc: &XdpDesc) -> bool {
        let frame_size = u64::from(self.frame_size);
        let offset = desc.addr % frame_size;
        desc.len != 0
            && desc.options == 0
            && desc.addr < self.len
            && offset + u64::from(desc.len) <= frame_size
    }
}

/// How to bind: the caller's preference between zero-copy and copy mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BindMode {
    /// Try zero-copy (`XDP_ZEROCOPY`); if the driver refuses (`EOPNOTSUPP`/`EINVAL`), bind in
    /// copy mode. The default.
    #[default]
    ZeroCopyOrCopy,
    /// Copy mode only (`XDP_COPY`): works on every device, including veth.
    Copy,
    /// Zero-copy only; fails with [`XskError::ZeroCopyUnsupported`] where the driver cannot.
    ZeroCopy,
}

/// The mode the socket actually bound in, from `getsockopt(XDP_OPTIONS)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoundMode {
    /// The driver DMAs straight into the UMEM.
    ZeroCopy,
    /// The kernel copies between its own buffers and the UMEM (generic path).
    Copy,
}

/// The socket's own rings and binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketConfig {
    /// Rx ring entries, a power of two.
    pub rx_ring_size: u32,
    /// Tx ring entries, a power of two.
    pub tx_ring_size: u32,
    /// Zero-copy, copy, or zero-copy with fallback.
    pub bind: BindMode,
    /// Bind with `XDP_USE_NEED_WAKEUP`: the kernel then says, through
    /// [`XskSocket::needs_tx_wakeup`] and [`XskSocket::needs_fill_wakeup`], when a system call is
    /// needed, and the caller can skip it otherwise.
    pub need_wakeup: bool,
}

impl Default for SocketConfig {
    /// 2048-entry rings, zero-copy with fallback, need-wakeup on.
    fn default() -> Self {
        Self {
            rx_ring_size: 2048,
            tx_ring_size: 2048,
            bind: BindMode::ZeroCopyOrCopy,
            need_wakeup: true,
        }
    }
}

/// What a transmit kick achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKick {
    /// The kernel took what it could; in copy mode the tx ring was drained.
    Done,
    /// The kernel stopped early (`EAGAIN`: batch limit of 32 in copy mode, or the completion
    /// ring is full; `EBUSY`: the device dropped a frame; `ENOBUFS`: no memory for an skb). Reap
    /// the completion ring and kick again.
    Retry,
}

/// The kernel's per-socket counters (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStatistics {
    /// Frames dropped for reasons other than invalid descriptors (e.g. too large for a frame).
    pub rx_dropped: u64,
    /// Invalid descriptors the kernel found on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors the kernel found on the tx ring.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the rx ring was full: consume faster or enlarge it.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived: refill sooner or enlarge it.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the tx ring was empty when the kernel looked.
    pub tx_ring_empty_descs: u64,
}

/// Descriptors this side refused, counted per socket. Nonzero values are bugs: in the caller's
/// frame accounting (`fill_rejected`, `tx_rejected`) or in the kernel (`rx_invalid`,
/// `rx_not_lent`, `completion_invalid`, `completion_not_lent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskCounters {
    /// Rx descriptors from the kernel outside the UMEM or crossing a frame; skipped. Their frames
    /// stay lent (the kernel may still hold them) and are lost to the caller until shutdown.
    pub rx_invalid: u64,
    /// Rx descriptors naming a frame that is not lent for receive: repeated or forged; dropped,
    /// never returned, so no frame is handed out twice.
    pub rx_not_lent: u64,
    /// Completion addresses from the kernel outside the UMEM; skipped.
    pub completion_invalid: u64,
    /// Completion addresses naming a frame that is not lent for transmit: repeated or forged;
    /// dropped.
    pub completion_not_lent: u64,
    /// Tx descriptors from the caller that failed validation (outside the UMEM, crossing a
    /// frame, option bits) or name a frame already lent; not published.
    pub tx_rejected: u64,
    /// Fill addresses from the caller outside the UMEM or naming a frame already lent; not
    /// published.
    pub fill_rejected: u64,
}

/// What [`XskSocket::close_reclaiming`] got back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Frames that were lent to the socket and are held by the caller again.
    pub frames: u32,
    /// Frames that stay lent because the kernel may still use them after the socket closed
    /// (zero-copy mode: the driver gives its posted buffers back only in deferred work; or the
    /// socket outlived the close, through a duplicated descriptor or a forked child). They
    /// never become usable again; drop the UMEM.
    pub still_lent: u32,
}

/// Kernel structures that `getsockopt` may overwrite with arbitrary bytes.
///
/// # Safety
///
/// Implementors must be `repr(C)` structs of integers (or integers), valid for every bit
/// pattern.
unsafe trait KernelPod: Copy {}

// SAFETY: an integer.
unsafe impl KernelPod for u32 {}
// SAFETY: `repr(C)` struct of `u64`/`u32` fields.
unsafe impl KernelPod for libc::xdp_umem_reg {}
// SAFETY: `repr(C)` struct of `xdp_ring_offset`, itself four `u64`.
unsafe impl KernelPod for libc::xdp_mmap_offsets {}
// SAFETY: `repr(C)` struct of six `u64`.
unsafe impl KernelPod for libc::xdp_statistics {}
// SAFETY: `repr(C)` struct of one `u32`.
unsafe impl KernelPod for libc::xdp_options {}

fn set_opt<T: KernelPod>(fd: BorrowedFd<'_>, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` whose exact size we pass; the kernel only reads it.
    syscall!(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            ptr::from_ref(value).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// `getsockopt(SOL_XDP, name)` into `value`; returns the number of bytes the kernel wrote.
fn get_opt<T: KernelPod>(
    fd: BorrowedFd<'_>,
    name: libc::c_int,
    value: &mut T,
) -> io::Result<usize> {
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, writable `T` of `len` bytes that is valid for any bytes the
    // kernel writes (`KernelPod`); `len` is a live `socklen_t` the kernel updates.
    syscall!(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            ptr::from_mut(value).cast(),
            &mut len,
        )
    })?;
    Ok(len as usize)
}

/// One mapped ring. Role-specific operations live in [`ProdRing`] and [`ConsRing`].
struct Ring<T> {
    base: NonNull<u8>,
    map_len: usize,
    producer: *mut u32,
    consumer: *mut u32,
    flags: *mut u32,
    slots: *mut T,
    size: u32,
    _slots: PhantomData<T>,
}

impl<T: Copy> Ring<T> {
    /// Maps a ring of `size` entries of the socket `fd` at page offset `pgoff`, with the layout
    /// the kernel reported in `off`.
    fn map(
        fd: BorrowedFd<'_>,
        name: &'static str,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: libc::off_t,
    ) -> io::Result<Self> {
        let bad = || XskError::MmapOffsets { ring: name }.into_io();
        let entry = mem::size_of::<T>() as u64;
        let map_len = off
            .desc
            .checked_add(u64::from(size) * entry)
            .and_then(|len| usize::try_from(len).ok())
            .ok_or_else(bad)?;
        // Every index word must be aligned and lie in front of the slots; the slots must be
        // aligned for `T`. The mapping is page-aligned, so offset alignment is address alignment.
        for word in [off.producer, off.consumer, off.flags] {
            if word % 4 != 0 || word.checked_add(4).is_none_or(|end| end > off.desc) {
                return Err(bad());
            }
        }
        if !off.desc.is_multiple_of(mem::align_of::<T>() as u64) {
            return Err(bad());
        }
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_SHARED | libc::MAP_POPULATE;
        // SAFETY: a null hint without MAP_FIXED replaces no existing mapping; `fd` is an open
        // AF_XDP socket whose ring at `pgoff` has been sized, which the kernel checks against
        // `map_len`.
        let addr = syscall!(unsafe {
            libc::mmap(ptr::null_mut(), map_len, prot, flags, fd.as_raw_fd(), pgoff)
        })
        .map_err(setup_error(name))?;
        let base = NonNull::new(addr.cast::<u8>()).ok_or_else(bad)?;
        let at = |offset: u64| base.as_ptr().wrapping_add(offset as usize);
        Ok(Self {
            base,
            map_len,
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            slots: at(off.desc).cast(),
            size,
            _slots: PhantomData,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: `producer` is 4-aligned and inside the mapping (checked in `map`), which lives
        // as long as `self`; the kernel accesses it only with READ_ONCE/WRITE_ONCE-class
        // operations, so every access is atomic.
        unsafe { AtomicU32::from_ptr(self.producer) }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { AtomicU32::from_ptr(self.consumer) }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { AtomicU32::from_ptr(self.flags) }
    }

    fn mask(&self) -> u32 {
        self.size - 1
    }

    /// Copies slot `index & mask` out of the shared ring.
    fn read_slot(&self, index: u32) -> T {
        let slot = self.slots.wrapping_add((index & self.mask()) as usize);
        // SAFETY: the index is masked below `size`, and the slots array of `size` `T`s is inside
        // the mapping and aligned (checked in `map`), so `slot` is a valid, aligned `T`; `T` is a
        // plain integer struct, valid for any bytes the kernel wrote.
        unsafe { ptr::read_volatile(slot) }
    }

    /// Writes slot `index & mask` of the shared ring.
    fn write_slot(&mut self, index: u32, value: T) {
        let slot = self.slots.wrapping_add((index & self.mask()) as usize);
        // SAFETY: as for `read_slot`; the mapping is writable and we hold `&mut self`.
        unsafe { ptr::write_volatile(slot, value) }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: `[base, base + map_len)` is exactly the mapping `mmap` returned, and no
        // reference derived from it outlives `self`.
        let ret = syscall!(unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) });
        debug_assert!(ret.is_ok(), "munmap of an AF_XDP ring failed: {ret:?}");
    }
}

/// A ring we produce into (fill, tx).
struct ProdRing<T> {
    ring: Ring<T>,
    /// Our producer index; published with `submit`.
    cached_prod: u32,
    /// The kernel's consumer index plus `size`, as last read: free = `cached_cons - cached_prod`.
    cached_cons: u32,
}

impl<T: Copy> ProdRing<T> {
    fn new(ring: Ring<T>) -> Self {
        // Only we write the producer, so a relaxed read of our own value suffices.
        let cached_prod = ring.producer().load(Ordering::Relaxed);
        // Acquire: pairs with the kernel's smp_store_release of the consumer in
        // __xskq_cons_release (D).
        let cached_cons = ring
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(ring.size);
        Self {
            ring,
            cached_prod,
            cached_cons,
        }
    }

    /// Free slots, re-reading the kernel's consumer only if fewer than `wanted` are known free.
    fn free(&mut self, wanted: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= wanted {
            return free;
        }
        // Acquire: pairs with the kernel's smp_store_release of the consumer in
        // __xskq_cons_release (D), so the kernel has finished reading the slots it released
        // before we overwrite them.
        let consumer = self.ring.consumer().load(Ordering::Acquire);
        self.cached_cons = consumer.wrapping_add(self.ring.size);
        // A consumer index ahead of our producer would claim more than `size` free slots; trust
        // the ring's size instead. Memory safety does not depend on it (slots are masked).
        self.cached_cons
            .wrapping_sub(self.cached_prod)
            .min(self.ring.size)
    }

    /// Free slots as last read, without touching the shared consumer index.
    fn free_cached(&self) -> u32 {
        self.cached_cons
            .wrapping_sub(self.cached_prod)
            .min(self.ring.size)
    }

    /// Free slots right now, without updating the cache.
    fn free_now(&self) -> u32 {
        // Acquire: pairs with the kernel's smp_store_release of the consumer in
        // __xskq_cons_release (D).
        let consumer = self.ring.consumer().load(Ordering::Acquire);
        consumer
            .wrapping_add(self.ring.size)
            .wrapping_sub(self.cached_prod)
            .min(self.ring.size)
    }

    /// Writes one entry at our producer index. The caller has checked `free` first.
    fn push(&mut self, value: T) {
        self.ring.write_slot(self.cached_prod, value);
        self.cached_prod = self.cached_prod.wrapping_add(1);
    }

    /// Publishes every pushed entry to the kernel.
    fn submit(&mut self) {
        // Release: pairs with the kernel's smp_load_acquire of the producer in
        // __xskq_cons_peek (C), so the slots written by `push` are visible before the index.
        self.ring
            .producer()
            .store(self.cached_prod, Ordering::Release);
    }

    fn needs_wakeup(&self) -> bool {
        // Full fence: our producer store must be visible before we read the flag, or the
        // kernel could set the flag after looking at a stale producer while we read a stale
        // clear flag, and nobody would wake it. Costs one fence per batch.
        fence(Ordering::SeqCst);
        self.ring.flags().load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// A ring we consume from (rx, completion).
struct ConsRing<T> {
    ring: Ring<T>,
    /// Our consumer index; published with `release`.
    cached_cons: u32,
    /// The kernel's producer index as last read.
    cached_prod: u32,
}

impl<T: Copy> ConsRing<T> {
    fn new(ring: Ring<T>) -> Self {
        // Only we write the consumer.
        let cached_cons = ring.consumer().load(Ordering::Relaxed);
        // Acquire: pairs with the kernel's smp_store_release of the producer in
        // __xskq_prod_submit (B).
        let cached_prod = ring.producer().load(Ordering::Acquire);
        Self {
            ring,
            cached_cons,
            cached_prod,
        }
    }

    /// Filled slots, re-reading the kernel's producer only if fewer than `wanted` are known.
    fn available(&mut self, wanted: u32) -> u32 {
        let available = self.cached_prod.wrapping_sub(self.cached_cons);
        if available >= wanted {
            return available;
        }
        // Acquire: pairs with the kernel's smp_store_release of the producer in
        // __xskq_prod_submit (B), so the slots it filled are visible before we read them.
        self.cached_prod = self.ring.producer().load(Ordering::Acquire);
        // A producer more than `size` ahead is a kernel bug; never read more than one lap.
        self.cached_prod
            .wrapping_sub(self.cached_cons)
            .min(self.ring.size)
    }

    fn available_now(&self) -> u32 {
        // Acquire: pairs with the kernel's smp_store_release of the producer in
        // __xskq_prod_submit (B).
        let producer = self.ring.producer().load(Ordering::Acquire);
        producer.wrapping_sub(self.cached_cons).min(self.ring.size)
    }

    /// Copies out the entry at our consumer index. The caller has checked `available` first.
    fn pop(&mut self) -> T {
        let value = self.ring.read_slot(self.cached_cons);
        self.cached_cons = self.cached_cons.wrapping_add(1);
        value
    }

    /// Gives every popped slot back to the kernel.
    fn release(&mut self) {
        // Release: pairs with the kernel's READ_ONCE of the consumer plus control dependency in
        // xskq_prod_nb_free (A): our copies out of the slots happen before the kernel reuses them.
        self.ring
            .consumer()
            .store(self.cached_cons, Ordering::Release);
    }
}

/// Pushes a prefix of `addrs` onto the fill ring, lending each frame for receive; stops at the
/// first address outside the UMEM or naming a frame already lent.
fn fill_ring(
    ring: &mut ProdRing<u64>,
    geometry: Geometry,
    frames: &mut FrameRegion,
    addrs: &[u64],
    counters: &mut XskCounters,
) -> usize {
    let wanted = u32::try_from(addrs.len()).unwrap_or(u32::MAX);
    let free = ring.free(wanted) as usize;
    let mut placed = 0;
    for &addr in addrs.iter().take(free) {
        // Lent before the Release store in `submit` publishes it: the kernel cannot write the
        // frame before the ledger says it may.
        if !geometry.addr_ok(addr) || !frames.lend(geometry.frame_of(addr), Lease::Receive) {
            counters.fill_rejected += 1;
            break;
        }
        ring.push(addr);
        placed += 1;
    }
    if placed > 0 {
        ring.submit();
    }
    debug_assert!(placed <= free && placed <= addrs.len());
    placed
}

/// Pops up to `out.len()` completion addresses, taking each frame back from its transmit
/// lease; invalid and unlent ones are counted and skipped.
fn complete_ring(
    ring: &mut ConsRing<u64>,
    geometry: Geometry,
    frames: &mut FrameRegion,
    out: &mut [u64],
    counters: &mut XskCounters,
) -> usize {
    let wanted = u32::try_from(out.len()).unwrap_or(u32::MAX);
    let available = ring.available(wanted).min(wanted);
    let mut written = 0;
    for _ in 0..available {
        let addr = ring.pop();
        if !geometry.addr_ok(addr) {
            counters.completion_invalid += 1;
            continue;
        }
        // SAFETY: the kernel published `addr` on the completion ring, and `available` read its
        // producer index with Acquire after that: the kernel has finished reading the frame
        // (copy mode submits the completion from the skb destructor, `xsk_destruct_skb`;
        // zero-copy drivers after the device's DMA completes).
        if unsafe { frames.reclaim(geometry.frame_of(addr), Lease::Transmit) } {
            out[written] = addr;
            written += 1;
        } else {
            counters.completion_not_lent += 1;
        }
    }
    if available > 0 {
        ring.release();
    }
    written
}

/// Pops up to `out.len()` rx descriptors, taking each frame back from its receive lease;
/// invalid and unlent ones are counted and skipped.
fn receive_ring(
    ring: &mut ConsRing<XdpDesc>,
    geometry: Geometry,
    frames: &mut FrameRegion,
    out: &mut [XdpDesc],
    counters: &mut XskCounters,
) -> usize {
    let wanted = u32::try_from(out.len()).unwrap_or(u32::MAX);
    let available = ring.available(wanted).min(wanted);
    let mut written = 0;
    for _ in 0..available {
        let desc = ring.pop();
        if !geometry.desc_ok(&desc) {
            counters.rx_invalid += 1;
            continue;
        }
        // SAFETY: the kernel published `desc` on the rx ring, and `available` read its producer
        // index with Acquire after that: the kernel has finished writing the frame (`xsk_flush`
        // submits the rx ring only after `__xsk_rcv` copied the packet in).
        if unsafe { frames.reclaim(geometry.frame_of(desc.addr), Lease::Receive) } {
            out[written] = desc;
            written += 1;
        } else {
            counters.rx_not_lent += 1;
        }
    }
    if available > 0 {
        ring.release();
    }
    written
}

/// Pushes a prefix of `descs` onto the tx ring, lending each frame for transmit; stops at the
/// first invalid descriptor or one naming a frame already lent.
fn transmit_ring(
    ring: &mut ProdRing<XdpDesc>,
    geometry: Geometry,
    frames: &mut FrameRegion,
    descs: &[XdpDesc],
    counters: &mut XskCounters,
) -> usize {
    let wanted = u32::try_from(descs.len()).unwrap_or(u32::MAX);
    let free = ring.free(wanted) as usize;
    let mut placed = 0;
    for desc in descs.iter().take(free) {
        // Lent before the Release store in `submit` publishes it.
        if !geometry.desc_ok(desc) || !frames.lend(geometry.frame_of(desc.addr), Lease::Transmit) {
            counters.tx_rejected += 1;
            break;
        }
        ring.push(*desc);
        placed += 1;
    }
    if placed > 0 {
        ring.submit();
    }
    debug_assert!(placed <= free && placed <= descs.len());
    placed
}

/// An AF_XDP socket bound to one queue of one interface, with its own [`Umem`].
///
/// Created in, and forever belonging to, the network namespace of the thread that calls
/// [`XskSocket::new`]. Insert [`XskSocket::fd`] into an `XSKMAP` to have an XDP program redirect
/// frames to it. Every ring operation takes the UMEM's frames (`umem.frames_mut()`); close with
/// [`XskSocket::close_reclaiming`] to get back the frames the kernel still holds.
pub struct XskSocket {
    // Field order is drop order: rings are unmapped, then the socket is closed (which unpins
    // the UMEM pages; see the module documentation for why the UMEM may go first).
    fill: ProdRing<u64>,
    completion: ConsRing<u64>,
    rx: ConsRing<XdpDesc>,
    tx: ProdRing<XdpDesc>,
    fd: OwnedFd,
    geometry: Geometry,
    /// The identity this socket's UMEM region is attached to; checked by every ring operation.
    lender: Lender,
    ifindex: u32,
    queue_id: u32,
    bound_mode: BoundMode,
    counters: XskCounters,
}

// SAFETY: the ring pointers point into mappings this socket owns exclusively; the only other
// party touching them is the kernel, which does not care which thread we run on, and nothing
// here is thread-local (the socket's namespace is fixed at creation). Moving the socket moves
// sole ownership, like a `Box`. It is not `Sync`: the ring operations need `&mut self`.
unsafe impl Send for XskSocket {}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd)
            .field("ifindex", &self.ifindex)
            .field("queue_id", &self.queue_id)
            .field("bound_mode", &self.bound_mode)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl XskSocket {
    /// Creates an AF_XDP socket, registers `umem`, sizes and maps the four rings, and binds to
    /// queue `queue_id` of interface `ifindex` as `config.bind` asks.
    ///
    /// # Errors
    ///
    /// An [`io::Error`] wrapping an [`XskError`] that says what to change: the configuration
    /// ([`XskError::RingSize`]), the memory limit ([`XskError::UmemMemlock`], naming
    /// `RLIMIT_MEMLOCK` and `CAP_IPC_LOCK`), the queue ([`XskError::QueueBusy`],
    /// [`XskError::QueueOutOfRange`] naming the count), the mode
    /// ([`XskError::ZeroCopyUnsupported`]), the device ([`XskError::NoSuchDevice`]), or the
    /// UMEM, already registered with another socket ([`XskError::RegionInUse`]).
    pub fn new(ifindex: u32, queue_id: u32, umem: &Umem, config: SocketConfig) -> io::Result<Self> {
        let lender = Lender::next();
        if !umem.frames.attach(lender) {
            return Err(XskError::RegionInUse.into_io());
        }
        let socket = Self::open(ifindex, queue_id, umem, config, lender);
        if socket.is_err() {
            // Nothing was lent: no ring existed to lend through. The descriptor, if any, is
            // closed already, so the region is free for another socket.
            umem.frames.detach_unused(lender);
        }
        socket
    }

    fn open(
        ifindex: u32,
        queue_id: u32,
        umem: &Umem,
        config: SocketConfig,
        lender: Lender,
    ) -> io::Result<Self> {
        check_ring_size("rx", config.rx_ring_size)?;
        check_ring_size("tx", config.tx_ring_size)?;
        let kind = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
        // SAFETY: plain socket creation, no pointers.
        let raw = syscall!(unsafe { libc::socket(libc::AF_XDP, kind, 0) });
        let raw = raw.map_err(|source| XskError::Socket { source }.into_io())?;
        // SAFETY: `raw` is a descriptor we just created and nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        register_umem(fd.as_fd(), umem)?;
        let ucfg = *umem.config();
        set_opt(fd.as_fd(), libc::XDP_UMEM_FILL_RING, &ucfg.fill_ring_size)
            .map_err(setup_error("XDP_UMEM_FILL_RING"))?;
        set_opt(
            fd.as_fd(),
            libc::XDP_UMEM_COMPLETION_RING,
            &ucfg.completion_ring_size,
        )
        .map_err(setup_error("XDP_UMEM_COMPLETION_RING"))?;
        set_opt(fd.as_fd(), libc::XDP_RX_RING, &config.rx_ring_size)
            .map_err(setup_error("XDP_RX_RING"))?;
        set_opt(fd.as_fd(), libc::XDP_TX_RING, &config.tx_ring_size)
            .map_err(setup_error("XDP_TX_RING"))?;

        // SAFETY: `zeroed` is a valid bit pattern for this struct of integers.
        let mut off: libc::xdp_mmap_offsets = unsafe { mem::zeroed() };
        let got = get_opt(fd.as_fd(), libc::XDP_MMAP_OFFSETS, &mut off)
            .map_err(setup_error("XDP_MMAP_OFFSETS"))?;
        if got != mem::size_of::<libc::xdp_mmap_offsets>() {
            // Only pre-5.4 kernels answer with the layout without `flags`.
            return Err(XskError::MmapOffsets { ring: "any" }.into_io());
        }
        let fill = Ring::map(
            fd.as_fd(),
            "fill",
            &off.fr,
            ucfg.fill_ring_size,
            libc::XDP_UMEM_PGOFF_FILL_RING as libc::off_t,
        )?;
        let completion = Ring::map(
            fd.as_fd(),
            "completion",
            &off.cr,
            ucfg.completion_ring_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as libc::off_t,
        )?;
        let rx = Ring::map(
            fd.as_fd(),
            "rx",
            &off.rx,
            config.rx_ring_size,
            libc::XDP_PGOFF_RX_RING,
        )?;
        let tx = Ring::map(
            fd.as_fd(),
            "tx",
            &off.tx,
            config.tx_ring_size,
            libc::XDP_PGOFF_TX_RING,
        )?;

        bind(fd.as_fd(), ifindex, queue_id, config)?;
        // SAFETY: `zeroed` is a valid bit pattern for this struct of integers.
        let mut options: libc::xdp_options = unsafe { mem::zeroed() };
        get_opt(fd.as_fd(), libc::XDP_OPTIONS, &mut options).map_err(setup_error("XDP_OPTIONS"))?;
        let bound_mode = if options.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 {
            BoundMode::ZeroCopy
        } else {
            BoundMode::Copy
        };

        let geometry = umem.geometry();
        Ok(Self {
            fill: ProdRing::new(fill),
            completion: ConsRing::new(completion),
            rx: ConsRing::new(rx),
            tx: ProdRing::new(tx),
            fd,
            geometry,
            lender,
            ifindex,
            queue_id,
            bound_mode,
            counters: XskCounters::default(),
        })
    }

    /// The mode the kernel bound the socket in.
    pub fn bound_mode(&self) -> BoundMode {
        self.bound_mode
    }

    /// The interface index this socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The queue this socket is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    /// The socket descriptor: insert it into an `XSKMAP`, or poll it for readability.
    ///
    /// A duplicate (`try_clone_to_owned`, `SCM_RIGHTS`) keeps the socket alive after
    /// [`XskSocket::close_reclaiming`], which then finds its queue busy and leaves every frame
    /// lent: sound, but the frames are lost to the caller.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Checks that `frames` is the region this socket registered.
    ///
    /// # Panics
    ///
    /// If it is not: a bug in the caller, who would otherwise let the kernel write into frames
    /// of the registered region that its ledger says the caller holds.
    #[inline]
    fn check_region(&self, frames: &FrameRegion) {
        assert!(
            frames.is_attached_to(self.lender),
            "AF_XDP ring operation on ifindex {} queue {} given a UMEM it did not register",
            self.ifindex,
            self.queue_id
        );
    }

    /// Places a prefix of `addrs` on the fill ring for the kernel to receive into, and returns
    /// its length: the frames of `addrs[..n]` are now lent to the kernel (`frames` refuses
    /// them) until they come back through [`XskSocket::receive`]. Stops early when the ring is
    /// full or at the first address outside the UMEM or naming a frame already lent (counted in
    /// [`XskCounters::fill_rejected`]).
    ///
    /// # Panics
    ///
    /// If `frames` is not the region of the UMEM this socket registered.
    pub fn fill(&mut self, frames: &mut FrameRegion, addrs: &[u64]) -> usize {
        self.check_region(frames);
        fill_ring(
            &mut self.fill,
            self.geometry,
            frames,
            addrs,
            &mut self.counters,
        )
    }

    /// Reaps up to `out.len()` transmitted frames from the completion ring into `out`, and
    /// returns how many: those frames are the caller's again. An address outside the UMEM or
    /// naming a frame not lent for transmit is counted ([`XskCounters::completion_invalid`],
    /// [`XskCounters::completion_not_lent`]) and skipped.
    ///
    /// # Panics
    ///
    /// If `frames` is not the region of the UMEM this socket registered.
    pub fn complete(&mut self, frames: &mut FrameRegion, out: &mut [u64]) -> usize {
        self.check_region(frames);
        complete_ring(
            &mut self.completion,
            self.geometry,
            frames,
            out,
            &mut self.counters,
        )
    }

    /// Takes up to `out.len()` received descriptors into `out` and returns how many. Each was
    /// validated (inside the UMEM, inside one frame, naming a frame lent for receive) and its
    /// frame is the caller's again; invalid ones are counted in [`XskCounters::rx_invalid`],
    /// repeated or forged ones in [`XskCounters::rx_not_lent`], and skipped.
    ///
    /// # Panics
    ///
    /// If `frames` is not the region of the UMEM this socket registered.
    pub fn receive(&mut self, frames: &mut FrameRegion, out: &mut [XdpDesc]) -> usize {
        self.check_region(frames);
        receive_ring(&mut self.rx, self.geometry, frames, out, &mut self.counters)
    }

    /// Places a prefix of `descs` on the tx ring and returns its length: the frames of
    /// `descs[..n]` are lent to the kernel until they come back through
    /// [`XskSocket::complete`]. Stops early when the ring is full or at the first descriptor
    /// that is empty, leaves the UMEM, crosses its frame's end, has option bits set or names a
    /// frame already lent (counted in [`XskCounters::tx_rejected`]), so the caller always knows
    /// exactly which frames it gave away.
    ///
    /// Then call [`XskSocket::kick_tx`] (needed in copy mode; with need-wakeup, only when
    /// [`XskSocket::needs_tx_wakeup`] says so).
    ///
    /// # Panics
    ///
    /// If `frames` is not the region of the UMEM this socket registered.
    pub fn transmit(&mut self, frames: &mut FrameRegion, descs: &[XdpDesc]) -> usize {
        self.check_region(frames);
        transmit_ring(
            &mut self.tx,
            self.geometry,
            frames,
            descs,
            &mut self.counters,
        )
    }

    /// Closes the socket, then takes back every frame still lent to it and calls
    /// `reclaimed(index)` for each, once the kernel has proven that it destroyed the socket, so
    /// the caller can return them to its own accounting.
    ///
    /// The proof is a probe: a throwaway socket with its own one-page UMEM binds the same queue
    /// of the same device. The kernel lets only one buffer pool own a queue
    /// (`xsk_reg_pool_at_qid` answers `EBUSY`), and it takes the old pool off the queue only in
    /// the deferred release that runs after the last reference to the socket is gone
    /// (`xsk_destruct` → `xp_put_pool` → `xp_release_deferred` → `xp_clear_dev`). So a probe
    /// that binds shows the socket is destroyed and can write nothing any more, whatever the
    /// caller did: a duplicate made from [`XskSocket::fd`] (`try_clone_to_owned`,
    /// `SCM_RIGHTS`), or a child forked by another thread that has not `exec`ed yet, keeps the
    /// socket alive and the queue busy, and then no frame is reclaimed. The probe retries for
    /// up to [`RELEASE_PROBE_ATTEMPTS`] × [`RELEASE_PROBE_INTERVAL`] while the deferred release
    /// runs; any other probe error (the thread is in another network namespace, the memory
    /// limit) proves nothing and also leaves the frames lent. The probe's own release is
    /// deferred too: a socket bound to this queue right after this returns may find it busy
    /// for a moment, as after any close.
    ///
    /// In zero-copy mode no frame comes back: the driver keeps the buffers it took from the
    /// fill ring until that same deferred release, whose ordering against the queue being
    /// freed is the driver's, so those frames stay lent (reported in
    /// [`Reclaimed::still_lent`]) and the UMEM can only be dropped. Frames that stay lent are
    /// always sound: they are never handed out again.
    ///
    /// # Panics
    ///
    /// If `frames` is not the region of the UMEM this socket registered.
    pub fn close_reclaiming(
        self,
        frames: &mut FrameRegion,
        reclaimed: impl FnMut(u32),
    ) -> Reclaimed {
        self.check_region(frames);
        let lender = self.lender;
        let bound_mode = self.bound_mode;
        let (ifindex, queue_id) = (self.ifindex, self.queue_id);
        // Unmaps the four rings, then closes the descriptor (field order).
        drop(self);
        let still_lent = Reclaimed {
            frames: 0,
            still_lent: frames.lent_total(),
        };
        if bound_mode == BoundMode::ZeroCopy || frames.lent_total() == 0 {
            return still_lent;
        }
        if !queue_released(ifindex, queue_id) {
            return still_lent;
        }
        // SAFETY: the kernel no longer touches any frame lent to `lender`.
        // - `queue_released` bound a probe to the queue this socket was bound to. The kernel
        //   frees the queue only when the socket's buffer pool is released, which happens only
        //   after the socket itself was destroyed (`xsk_destruct` drops the pool's last
        //   reference; `xp_release_deferred` calls `xp_clear_dev`, which clears the queue's
        //   pool and unregisters the UMEM). A socket kept alive by a duplicated descriptor or
        //   a forked child keeps its pool on the queue, and the probe then fails, so we never
        //   get here. Nothing else can hold the pool: each socket has its own UMEM (`new`
        //   refuses a region already attached) and this module never shares one.
        // - A destroyed socket is in no XSKMAP (`xsk_release` ran `xsk_delete_from_maps`) and
        //   unbound, and in copy mode the only kernel writes into the UMEM are receives into
        //   that socket (`__xsk_rcv`), so nothing writes a frame of this region any more.
        // - A frame lent for transmit can still be *read* by an skb built before the release on
        //   a device that sends straight from UMEM pages (`IFF_TX_SKB_NO_LINEAR`): at worst it
        //   sends bytes we have since rewritten, never a write into our memory.
        let count = unsafe { frames.reclaim_all(lender, reclaimed) };
        Reclaimed {
            frames: count,
            still_lent: 0,
        }
    }

    /// Asks the kernel to process the tx ring: `sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0)`.
    ///
    /// In copy mode the kernel sends at most 32 frames per call and says [`TxKick::Retry`]
    /// (`EAGAIN`) when more are waiting or when the completion ring is full: reap completions and
    /// kick again until the ring drains.
    ///
    /// # Errors
    ///
    /// `ENETDOWN` (bring the link up), `ENXIO` (not bound), or other send errors.
    pub fn kick_tx(&self) -> io::Result<TxKick> {
        // SAFETY: a zero-length send with null buffer and address; the kernel dereferences
        // neither. `MSG_DONTWAIT` is required: AF_XDP refuses blocking sends with EOPNOTSUPP.
        let ret = syscall!(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null(),
                0,
            )
        });
        match ret {
            Ok(_) => Ok(TxKick::Done),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS)
                ) =>
            {
                Ok(TxKick::Retry)
            }
            Err(e) => Err(e),
        }
    }

    /// Asks the kernel to process the fill and rx rings (`recvfrom` with `MSG_DONTWAIT`). Needed
    /// only in zero-copy mode with need-wakeup, when [`XskSocket::needs_fill_wakeup`] says so; a
    /// no-op in copy mode. To *wait* for frames, poll [`XskSocket::fd`] instead.
    ///
    /// # Errors
    ///
    /// `ENETDOWN` (bring the link up); `EAGAIN`/`EBUSY` are not errors.
    pub fn wake_rx(&self) -> io::Result<()> {
        // SAFETY: a zero-length receive with null buffer and address; the kernel dereferences
        // neither.
        let ret = syscall!(unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        });
        match ret {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the kernel asked for a [`XskSocket::wake_rx`] to look at the fill ring (only with
    /// need-wakeup; copy mode never asks).
    pub fn needs_fill_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Whether the kernel asked for a [`XskSocket::kick_tx`]: always true in copy mode. Without
    /// need-wakeup the flag is never set, so kick after every batch instead.
    pub fn needs_tx_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// Free tx slots right now (one load of the kernel's consumer index, no system call).
    pub fn tx_free(&self) -> usize {
        self.tx.free_now() as usize
    }

    /// Free tx slots as of the last time a transmit looked at the kernel's consumer index: a
    /// lower bound on [`XskSocket::tx_free`] that touches no shared memory.
    pub fn tx_free_cached(&self) -> usize {
        self.tx.free_cached() as usize
    }

    /// Entries in the tx ring: its size.
    pub fn tx_ring_size(&self) -> usize {
        self.tx.ring.size as usize
    }

    /// Free fill slots right now.
    pub fn fill_free(&self) -> usize {
        self.fill.free_now() as usize
    }

    /// Received descriptors waiting right now (before validation).
    pub fn rx_available(&self) -> usize {
        self.rx.available_now() as usize
    }

    /// Completions waiting right now (before validation).
    pub fn completions_available(&self) -> usize {
        self.completion.available_now() as usize
    }

    /// Descriptors this side refused so far.
    pub fn counters(&self) -> XskCounters {
        self.counters
    }

    /// The kernel's counters for this socket (`XDP_STATISTICS`).
    ///
    /// # Errors
    ///
    /// Only if `getsockopt` fails, which it cannot for a live socket.
    pub fn statistics(&self) -> io::Result<XskStatistics> {
        // SAFETY: `zeroed` is a valid bit pattern for this struct of integers.
        let mut stats: libc::xdp_statistics = unsafe { mem::zeroed() };
        get_opt(self.fd.as_fd(), libc::XDP_STATISTICS, &mut stats)?;
        Ok(XskStatistics {
            rx_dropped: stats.rx_dropped,
            rx_invalid_descs: stats.rx_invalid_descs,
            tx_invalid_descs: stats.tx_invalid_descs,
            rx_ring_full: stats.rx_ring_full,
            rx_fill_ring_empty_descs: stats.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: stats.tx_ring_empty_descs,
        })
    }
}

/// `setsockopt(XDP_UMEM_REG)`, with memory-limit failures explained.
fn register_umem(fd: BorrowedFd<'_>, umem: &Umem) -> io::Result<()> {
    // SAFETY: `zeroed` is a valid bit pattern for this struct of integers.
    let mut reg: libc::xdp_umem_reg = unsafe { mem::zeroed() };
    reg.addr = umem.frames.as_ptr() as u64;
    // The pointer, length and chunk size all come from the one region, which the kernel pins
    // as `[addr, addr + len)`: it lies inside the mapping the region owns.
    reg.len = umem.len();
    reg.chunk_size = umem.frame_size();
    reg.headroom = umem.config.headroom;
    // flags 0: aligned chunks, no tx metadata.
    set_opt(fd, libc::XDP_UMEM_REG, &reg).map_err(|source| {
        match source.raw_os_error() {
            // ENOBUFS: over RLIMIT_MEMLOCK (xdp_umem_account_pages); ENOMEM/EPERM: pinning failed.
            Some(libc::ENOBUFS | libc::ENOMEM | libc::EPERM) => {
                let (soft, hard) = crate::mmap::memlock_limit().unwrap_or((0, 0));
                XskError::UmemMemlock {
                    len: umem.len(),
                    source,
                    soft,
                    hard,
                    cap_ipc_lock: crate::mmap::has_cap_ipc_lock(),
                }
                .into_io()
            }
            _ => XskError::Setup {
                step: "XDP_UMEM_REG",
                source,
            }
            .into_io(),
        }
    })
}

/// Probe binds [`XskSocket::close_reclaiming`] tries before it concludes that a closed
/// socket may still be alive and leaves its frames lent.
pub const RELEASE_PROBE_ATTEMPTS: u32 = 200;
/// Pause between two probe binds: the kernel frees a queue in deferred work (the system
/// workqueue), usually within a millisecond of the close; 200 × 1 ms bounds the wait at
/// shutdown to 0.2 s.
pub const RELEASE_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// Whether queue `queue_id` of `ifindex` has no buffer pool any more: a throwaway copy-mode
/// socket with a one-page UMEM of its own binds to it (and is closed at once). `false` when
/// the queue stays busy for [`RELEASE_PROBE_ATTEMPTS`] or the probe fails for any other
/// reason (which proves nothing).
fn queue_released(ifindex: u32, queue_id: u32) -> bool {
    const PROBE_FRAME: u32 = 2048;
    let Ok(region) = Region::new(
        2 * PROBE_FRAME as usize,
        crate::mmap::RegionOptions::default(),
    ) else {
        return false;
    };
    let config = UmemConfig {
        frame_size: PROBE_FRAME,
        frame_count: 2,
        headroom: 0,
        fill_ring_size: 2,
        completion_ring_size: 2,
    };
    let Ok(umem) = Umem::new(region, config) else {
        return false;
    };
    let socket = SocketConfig {
        rx_ring_size: 2,
        tx_ring_size: 2,
        bind: BindMode::Copy,
        need_wakeup: false,
    };
    for attempt in 0..RELEASE_PROBE_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(RELEASE_PROBE_INTERVAL);
        }
        match XskSocket::new(ifindex, queue_id, &umem, socket) {
            // Dropped at once: it lent no frame (nothing was filled or sent).
            Ok(_probe) => return true,
            Err(err) if is_queue_busy(&err) => continue,
            Err(_) => return false,
        }
    }
    false
}

/// Whether `err` is [`XskError::QueueBusy`].
fn is_queue_busy(err: &io::Error) -> bool {
    matches!(XskError::of(err), Some(XskError::QueueBusy { .. }))
}

fn bind_once(fd: BorrowedFd<'_>, ifindex: u32, queue_id: u32, flags: u16) -> io::Result<()> {
    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue_id,
        sxdp_shared_umem_fd: 0,
    };
    // SAFETY: `addr` is a live `sockaddr_xdp` whose exact size we pass; the kernel reads it.
    syscall!(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            ptr::from_ref(&addr).cast(),
            mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Binds as `config.bind` asks, turning errors into what the caller should change.
fn bind(fd: BorrowedFd<'_>, ifindex: u32, queue_id: u32, config: SocketConfig) -> io::Result<()> {
    let wakeup = if config.need_wakeup {
        libc::XDP_USE_NEED_WAKEUP
    } else {
        0
    };
    let result = match config.bind {
        BindMode::Copy => bind_once(fd, ifindex, queue_id, libc::XDP_COPY | wakeup),
        BindMode::ZeroCopy => bind_once(fd, ifindex, queue_id, libc::XDP_ZEROCOPY | wakeup),
        BindMode::ZeroCopyOrCopy => {
            match bind_once(fd, ifindex, queue_id, libc::XDP_ZEROCOPY | wakeup) {
                // A failed bind leaves the socket unbound and reusable (xsk_bind undoes
                // xp_assign_dev), so retry in copy mode.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                    bind_once(fd, ifindex, queue_id, libc::XDP_COPY | wakeup)
                }
                other => other,
            }
        }
    };
    result.map_err(|source| bind_error(source, ifindex, queue_id, config.bind))
}

fn bind_error(source: io::Error, ifindex: u32, queue_id: u32, mode: BindMode) -> io::Error {
    let err = match source.raw_os_error() {
        Some(libc::EBUSY) => XskError::QueueBusy { ifindex, queue_id },
        Some(libc::ENODEV) => XskError::NoSuchDevice { ifindex },
        Some(libc::EINVAL) => {
            // The kernel refuses queue ids at or above the larger of the rx and tx counts
            // (xsk_reg_pool_at_qid). The socket and this thread may be in different namespaces,
            // in which case the lookup fails or finds another device; then report the raw error.
            match crate::netdev::link_info(ifindex) {
                Ok(info) if queue_id >= info.rx_queue_count.max(info.tx_queue_count) => {
                    XskError::QueueOutOfRange {
                        ifindex,
                        queue_id,
                        queue_count: info.rx_queue_count.max(info.tx_queue_count),
                    }
                }
                _ if mode == BindMode::ZeroCopy => {
                    XskError::ZeroCopyUnsupported { ifindex, source }
                }
                _ => XskError::Bind {
                    ifindex,
                    queue_id,
                    source,
                },
            }
        }
        Some(libc::EOPNOTSUPP) if mode == BindMode::ZeroCopy => {
            XskError::ZeroCopyUnsupported { ifindex, source }
        }
        _ => XskError::Bind {
            ifindex,
            queue_id,
            source,
        },
    };
    err.into_io()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::RegionOptions;
    use crate::netdev::{self, PacketSocket};
    use std::time::{Duration, Instant};

    const FRAME: u32 = 2048;

    // ----- Ring logic over anonymous memory, with the test playing the kernel. -----

    /// A ring laid out like the kernel's (indexes on separate cache lines, slots after), but in
    /// an anonymous mapping so the test can act as the other side.
    fn fake_ring<T: Copy>(size: u32) -> Ring<T> {
        let off = libc::xdp_ring_offset {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        let map_len = 192 + size as usize * mem::size_of::<T>();
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let hint = ptr::null_mut();
        // SAFETY: anonymous mapping with a null hint; replaces nothing.
        let addr = syscall!(unsafe { libc::mmap(hint, map_len, prot, flags, -1, 0) });
        let addr = addr.unwrap();
        let base = NonNull::new(addr.cast::<u8>()).unwrap();
        let at = |offset: u64| base.as_ptr().wrapping_add(offset as usize);
        Ring {
            base,
            map_len,
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            slots: at(off.desc).cast(),
            size,
            _slots: PhantomData,
        }
    }

    const GEOMETRY: Geometry = Geometry {
        len: 8 * FRAME as u64,
        frame_size: FRAME,
    };

    /// The eight frames [`GEOMETRY`] describes, all held.
    fn fake_frames() -> FrameRegion {
        let region = Region::new(8 * FRAME as usize, RegionOptions::default()).unwrap();
        FrameRegion::new(region, FRAME as usize, 8).unwrap()
    }

    #[test]
    fn fill_ring_respects_space_and_validates() {
        let mut ring = ProdRing::new(fake_ring::<u64>(4));
        let mut frames = fake_frames();
        let mut counters = XskCounters::default();
        let addrs = [0, 2048, 4096, 6144, 8192, 10240];
        assert_eq!(
            fill_ring(&mut ring, GEOMETRY, &mut frames, &addrs, &mut counters),
            4
        );
        assert_eq!(ring.ring.producer().load(Ordering::Relaxed), 4);
        assert_eq!(ring.free_now(), 0);
        assert_eq!(frames.lent_count(Lease::Receive), 4);
        assert!(
            (0..4).all(|i| frames.get(i).is_none()),
            "filled frames are refused"
        );
        assert_eq!(
            fill_ring(&mut ring, GEOMETRY, &mut frames, &addrs[4..], &mut counters),
            0
        );
        assert!(
            frames.get(4).is_some(),
            "a frame that did not fit stays held"
        );
        // The "kernel" consumes three.
        ring.ring.consumer().store(3, Ordering::Release);
        assert_eq!(ring.free_now(), 3);
        // An address past the end stops the batch after the valid prefix.
        let batch = [8192, 16 * 1024, 10240];
        assert_eq!(
            fill_ring(&mut ring, GEOMETRY, &mut frames, &batch, &mut counters),
            1
        );
        assert_eq!(counters.fill_rejected, 1);
        assert_eq!(ring.ring.read_slot(4), 8192);
        assert_eq!(ring.ring.producer().load(Ordering::Relaxed), 5);
        // So does a frame already lent, or named twice in one batch (any offset in the frame).
        assert_eq!(
            fill_ring(&mut ring, GEOMETRY, &mut frames, &[100], &mut counters),
            0
        );
        assert_eq!(
            fill_ring(
                &mut ring,
                GEOMETRY,
                &mut frames,
                &[10240, 10300],
                &mut counters
            ),
            1
        );
        assert_eq!(counters.fill_rejected, 3);
        assert_eq!(frames.lent_count(Lease::Receive), 6);
        assert_eq!(ring.ring.producer().load(Ordering::Relaxed), 6);
    }

    #[test]
    fn receive_takes_back_only_lent_frames_once() {
        let mut ring = ConsRing::new(fake_ring::<XdpDesc>(8));
        let mut frames = fake_frames();
        let mut counters = XskCounters::default();
        let mut out = [XdpDesc::default(); 8];
        assert_eq!(
            receive_ring(&mut ring, GEOMETRY, &mut frames, &mut out, &mut counters),
            0
        );
        // Frames 0 and 2 are on the "fill ring".
        assert!(frames.lend(0, Lease::Receive) && frames.lend(2, Lease::Receive));
        let desc = |addr, len| XdpDesc {
            addr,
            len,
            options: 0,
        };
        let kernel_writes = [
            desc(256, 60),
            desc(8 * 2048, 60),       // past the UMEM
            desc(2048 + 2000, 60),    // crosses the frame end
            desc(u64::MAX, u32::MAX), // nonsense
            desc(4096 + 256, 1792),   // exactly fills frame 2
            desc(256, 60),            // frame 0 again: repeated
            desc(5 * 2048 + 256, 60), // frame 5, never lent: forged
        ];
        for (i, d) in kernel_writes.iter().enumerate() {
            ring.ring.write_slot(i as u32, *d);
        }
        ring.ring.producer().store(7, Ordering::Release);
        // A short output slice takes only what fits.
        assert_eq!(
            receive_ring(
                &mut ring,
                GEOMETRY,
                &mut frames,
                &mut out[..1],
                &mut counters
            ),
            1
        );
        assert_eq!(out[0], kernel_writes[0]);
        assert_eq!(ring.ring.consumer().load(Ordering::Relaxed), 1);
        assert_eq!(
            receive_ring(&mut ring, GEOMETRY, &mut frames, &mut out, &mut counters),
            1
        );
        assert_eq!(out[0], kernel_writes[4]);
        assert_eq!(counters.rx_invalid, 3);
        assert_eq!(
            counters.rx_not_lent, 2,
            "the repeat and the forgery are dropped"
        );
        assert_eq!(ring.ring.consumer().load(Ordering::Relaxed), 7);
        assert_eq!(frames.lent_total(), 0);
        assert!(frames.get(0).is_some() && frames.get(2).is_some());
        // A producer far ahead (kernel bug) is clamped to one lap and never panics.
        ring.ring.producer().store(1_000_000, Ordering::Release);
        let n = receive_ring(&mut ring, GEOMETRY, &mut frames, &mut out, &mut counters);
        assert!(n <= 8);
    }

    #[test]
    fn completion_and_transmit_prefixes() {
        let mut cq = ConsRing::new(fake_ring::<u64>(4));
        let mut tx = ProdRing::new(fake_ring::<XdpDesc>(8));
        let mut frames = fake_frames();
        let mut counters = XskCounters::default();
        let desc = |frame: u64| XdpDesc {
            addr: frame * 2048 + 64,
            len: 64,
            options: 0,
        };
        let bad = [
            XdpDesc {
                addr: 2048,
                len: 0,
                options: 0,
            },
            XdpDesc {
                addr: 16 * 1024,
                len: 64,
                options: 0,
            },
            XdpDesc {
                addr: 2040,
                len: 64,
                options: 0,
            },
            XdpDesc {
                addr: 2048,
                len: 64,
                options: 1,
            },
        ];
        // Each bad descriptor stops the batch after the good one in front of it.
        for (i, b) in bad.into_iter().enumerate() {
            let batch = [desc(i as u64 + 1), b, desc(7)];
            assert_eq!(
                transmit_ring(&mut tx, GEOMETRY, &mut frames, &batch, &mut counters),
                1
            );
        }
        assert_eq!(counters.tx_rejected, 4);
        assert_eq!(tx.ring.producer().load(Ordering::Relaxed), 4);
        assert_eq!(frames.lent_count(Lease::Transmit), 4);
        // So does a frame already lent, or named twice in one batch.
        let batch = [desc(5), desc(5), desc(6)];
        assert_eq!(
            transmit_ring(&mut tx, GEOMETRY, &mut frames, &batch, &mut counters),
            1
        );
        assert_eq!(
            transmit_ring(&mut tx, GEOMETRY, &mut frames, &[desc(1)], &mut counters),
            0
        );
        assert_eq!(counters.tx_rejected, 6);
        // Three slots are left.
        let batch = [desc(6), desc(7), desc(0), desc(3)];
        assert_eq!(
            transmit_ring(&mut tx, GEOMETRY, &mut frames, &batch, &mut counters),
            3
        );
        assert_eq!(
            transmit_ring(&mut tx, GEOMETRY, &mut frames, &[desc(3)], &mut counters),
            0,
            "ring full"
        );
        assert_eq!(counters.tx_rejected, 6);
        assert_eq!(frames.lent_count(Lease::Transmit), 8);

        cq.ring.write_slot(0, desc(1).addr);
        cq.ring.write_slot(1, 1 << 40);
        cq.ring.write_slot(2, desc(2).addr);
        cq.ring.write_slot(3, desc(1).addr); // repeated
        cq.ring.producer().store(4, Ordering::Release);
        let mut out = [0u64; 4];
        assert_eq!(
            complete_ring(&mut cq, GEOMETRY, &mut frames, &mut out, &mut counters),
            2
        );
        assert_eq!(&out[..2], &[desc(1).addr, desc(2).addr]);
        assert_eq!(counters.completion_invalid, 1);
        assert_eq!(counters.completion_not_lent, 1);
        assert!(frames.get(1).is_some() && frames.get(2).is_some());
        assert_eq!(frames.lent_count(Lease::Transmit), 6);
    }

    #[test]
    fn umem_config_is_validated() {
        let region = || Region::new(64 * 1024, RegionOptions::default()).unwrap();
        let config = UmemConfig {
            frame_size: FRAME,
            frame_count: 32,
            headroom: 0,
            fill_ring_size: 32,
            completion_ring_size: 32,
        };
        let umem = Umem::new(region(), config).unwrap();
        assert_eq!(umem.len(), 64 * 1024);
        assert_eq!(umem.frame_addr(31), Some(31 * 2048));
        assert_eq!(umem.frame_addr(32), None);
        assert_eq!(umem.frame_index(31 * 2048 + 2047), Some(31));
        assert_eq!(umem.frame_index(64 * 1024), None);
        // The geometry is the region's own: a region swapped in is described as what it is.
        let mut umem = umem;
        let small = Region::new(4 * 2048, RegionOptions::default()).unwrap();
        *umem.frames_mut() = FrameRegion::new(small, 2048, 4).unwrap();
        assert_eq!((umem.len(), umem.frame_count()), (4 * 2048, 4));
        assert_eq!(umem.geometry().len, 4 * 2048);
        assert_eq!(umem.frame_addr(4), None);
        let bad = [
            UmemConfig {
                frame_size: 3000,
                ..config
            },
            UmemConfig {
                frame_count: 0,
                ..config
            },
            UmemConfig {
                frame_count: 33,
                ..config
            },
            UmemConfig {
                headroom: 2048 - 256,
                ..config
            },
            UmemConfig {
                fill_ring_size: 48,
                ..config
            },
            UmemConfig {
                completion_ring_size: 0,
                ..config
            },
            UmemConfig {
                fill_ring_size: RING_SIZE_MAX * 2,
                ..config
            },
        ];
        for config in bad {
            let err = Umem::new(region(), config).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{config:?}: {err}");
        }
    }

    #[test]
    fn memlock_error_names_the_remedies() {
        let err = XskError::UmemMemlock {
            len: 1 << 24,
            source: io::Error::from_raw_os_error(libc::ENOBUFS),
            soft: 8 << 20,
            hard: 8 << 20,
            cap_ipc_lock: false,
        };
        let message = err.to_string();
        assert!(
            message.contains("RLIMIT_MEMLOCK (now soft 8388608"),
            "{message}"
        );
        assert!(message.contains("CAP_IPC_LOCK (held: false)"), "{message}");
    }

    // ----- Against the kernel, in a private network namespace with a veth pair. -----

    /// Whether the kernel tests can run. In CI (`CI=true`) lacking root is a failure, not a skip.
    fn privileged(test: &str) -> bool {
        crate::testenv::root_or_skip(test)
    }

    use crate::testenv::{ip, TestNetns};

    /// A fresh network namespace holding the veth pair `va` (10.99.0.1) <-> `vb` (10.99.0.2),
    /// two queues each, deleted on drop (also when the test panics).
    fn veth_netns() -> TestNetns {
        let ns = TestNetns::new("xsk");
        let n = ns.name();
        ip(&[
            "-n",
            n,
            "link",
            "add",
            "va",
            "numrxqueues",
            "2",
            "numtxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "vb",
            "numrxqueues",
            "2",
            "numtxqueues",
            "2",
        ]);
        ip(&["-n", n, "addr", "add", "10.99.0.1/24", "dev", "va"]);
        ip(&["-n", n, "addr", "add", "10.99.0.2/24", "dev", "vb"]);
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "link", "set", "va", "up"]);
        ip(&["-n", n, "link", "set", "vb", "up"]);
        ns
    }

    fn small_umem(frame_count: u32, ring_size: u32) -> Umem {
        let len = (frame_count * FRAME) as usize;
        let region = Region::new(
            len,
            RegionOptions {
                populate: true,
                ..Default::default()
            },
        )
        .unwrap();
        Umem::new(
            region,
            UmemConfig {
                frame_size: FRAME,
                frame_count,
                headroom: 0,
                fill_ring_size: ring_size,
                completion_ring_size: ring_size,
            },
        )
        .unwrap()
    }

    fn socket_config(ring_size: u32, bind: BindMode) -> SocketConfig {
        SocketConfig {
            rx_ring_size: ring_size,
            tx_ring_size: ring_size,
            bind,
            need_wakeup: true,
        }
    }

    const ETHERTYPE_TEST: [u8; 2] = [0x88, 0xb5]; // IEEE 802 local experimental

    /// A 60-byte broadcast frame from `src` carrying `tag` and `seq`.
    fn test_frame(src: [u8; 6], tag: &[u8; 8], seq: u32) -> [u8; 60] {
        let mut frame = [0u8; 60];
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&src);
        frame[12..14].copy_from_slice(&ETHERTYPE_TEST);
        frame[14..22].copy_from_slice(tag);
        frame[22..26].copy_from_slice(&seq.to_be_bytes());
        frame
    }

    /// Kicks until `expected` completions are reaped; returns (completions, retries seen).
    fn drain_tx(xsk: &mut XskSocket, umem: &mut Umem, expected: usize) -> (Vec<u64>, usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut done = Vec::new();
        let mut retries = 0;
        let mut out = [0u64; 64];
        while done.len() < expected {
            assert!(
                Instant::now() < deadline,
                "only {} of {expected} completed",
                done.len()
            );
            if xsk.needs_tx_wakeup() && xsk.kick_tx().unwrap() == TxKick::Retry {
                retries += 1;
            }
            let n = xsk.complete(umem.frames_mut(), &mut out);
            done.extend_from_slice(&out[..n]);
        }
        (done, retries)
    }

    #[test]
    fn veth_binds_in_copy_mode_and_transmits() {
        if !privileged("veth_binds_in_copy_mode_and_transmits") {
            return;
        }
        let ns = veth_netns();
        let _inside = netdev::enter_netns(ns.name()).unwrap();
        let va = netdev::ifindex("va").unwrap();
        let vb = netdev::ifindex("vb").unwrap();
        assert_eq!(netdev::rx_queue_count("vb").unwrap(), 2);
        let vb_mac = netdev::mac_address("vb").unwrap();
        assert_eq!(netdev::mtu("vb").unwrap(), 1500);

        // 80 frames: 0..64 go to the 64-entry fill ring, 64..80 stay with us for transmit.
        let mut umem = small_umem(80, 64);
        let mut xsk =
            XskSocket::new(vb, 0, &umem, socket_config(64, BindMode::ZeroCopyOrCopy)).unwrap();
        assert_eq!(xsk.bound_mode(), BoundMode::Copy, "veth has no zero-copy");
        assert_eq!((xsk.ifindex(), xsk.queue_id()), (vb, 0));

        // Fill: 48 offered and taken, then the other 16 fill the ring; a 65th does not fit.
        let addrs: Vec<u64> = (0..64).map(|i| u64::from(i * FRAME)).collect();
        assert_eq!(xsk.fill_free(), 64);
        assert_eq!(xsk.fill(umem.frames_mut(), &addrs[..48]), 48);
        assert_eq!(xsk.fill(umem.frames_mut(), &addrs[48..]), 16);
        let extra = [u64::from(70 * FRAME)];
        assert_eq!(xsk.fill(umem.frames_mut(), &extra), 0, "fill ring full");
        assert_eq!(umem.frames().lent_count(Lease::Receive), 64);
        assert!(
            umem.frames().get(0).is_none(),
            "a frame on the fill ring is refused"
        );
        eprintln!("needs_fill_wakeup after fill: {}", xsk.needs_fill_wakeup());

        // Receive on an empty ring: nothing, and nothing invalid.
        let mut rx = [XdpDesc::default(); 16];
        assert_eq!(xsk.rx_available(), 0);
        assert_eq!(xsk.receive(umem.frames_mut(), &mut rx), 0);

        // Transmit one broadcast frame from frame 70, which the kernel does not hold.
        let sniffer = PacketSocket::bind(va).unwrap();
        let frame = test_frame(vb_mac, b"mlg-xsk1", 7);
        let addr = 70 * u64::from(FRAME) + 256;
        umem.frames_mut().frame_mut(70)[256..256 + frame.len()].copy_from_slice(&frame);
        let desc = XdpDesc {
            addr,
            len: frame.len() as u32,
            options: 0,
        };
        assert_eq!(umem.packet(&desc), Some(&frame[..]));
        assert_eq!(xsk.tx_free(), 64);
        assert!(xsk.needs_tx_wakeup(), "copy mode always wants a tx kick");
        assert_eq!(xsk.transmit(umem.frames_mut(), &[desc]), 1);
        assert_eq!(
            umem.packet(&desc),
            None,
            "a frame on the tx ring is refused"
        );
        assert_eq!(xsk.tx_free_cached(), 63);
        let (done, retries) = drain_tx(&mut xsk, &mut umem, 1);
        assert_eq!(done, [addr]);
        assert_eq!(
            umem.packet(&desc),
            Some(&frame[..]),
            "completed: the caller's again"
        );
        eprintln!("single-frame tx: {retries} EAGAIN-class retries");

        // The frame arrived on the peer.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 2048];
        loop {
            assert!(Instant::now() < deadline, "frame not seen on va");
            if let Some(len) = sniffer.recv(&mut buf, 100_000_000).unwrap() {
                if buf[..len.min(buf.len())] == frame[..] {
                    break;
                }
            }
        }

        // Out-of-UMEM and frame-crossing descriptors are rejected and counted.
        let umem_len = umem.len();
        let outside = XdpDesc {
            addr: umem_len,
            len: 60,
            options: 0,
        };
        assert_eq!(xsk.transmit(umem.frames_mut(), &[outside]), 0);
        let crossing = XdpDesc {
            addr: u64::from(FRAME) - 10,
            len: 60,
            options: 0,
        };
        assert_eq!(xsk.transmit(umem.frames_mut(), &[crossing]), 0);
        // A frame on the fill ring cannot be sent: the kernel may be writing it.
        let filled = XdpDesc {
            addr: 3 * u64::from(FRAME),
            len: 60,
            options: 0,
        };
        assert_eq!(xsk.transmit(umem.frames_mut(), &[filled]), 0);
        assert_eq!(xsk.counters().tx_rejected, 3);
        assert_eq!(xsk.tx_free(), 64);

        let stats = xsk.statistics().unwrap();
        assert_eq!(stats.tx_invalid_descs, 0, "{stats:?}");
        assert_eq!(xsk.counters().rx_invalid, 0);
        xsk.wake_rx().unwrap();
        assert_eq!(xsk.receive(umem.frames_mut(), &mut rx), 0);
    }

    #[test]
    fn tx_burst_drains_with_repeated_kicks() {
        if !privileged("tx_burst_drains_with_repeated_kicks") {
            return;
        }
        let ns = veth_netns();
        let _inside = netdev::enter_netns(ns.name()).unwrap();
        let vb = netdev::ifindex("vb").unwrap();
        let mac = netdev::mac_address("vb").unwrap();
        const FRAMES: u32 = 256;
        let mut umem = small_umem(FRAMES, 256);
        let mut xsk = XskSocket::new(vb, 1, &umem, socket_config(256, BindMode::Copy)).unwrap();
        assert_eq!(xsk.bound_mode(), BoundMode::Copy);
        let mut descs = Vec::new();
        for seq in 0..FRAMES {
            let frame = test_frame(mac, b"mlg-xsk2", seq);
            let addr = u64::from(seq * FRAME);
            umem.frames_mut().frame_mut(seq)[..60].copy_from_slice(&frame);
            descs.push(XdpDesc {
                addr,
                len: 60,
                options: 0,
            });
        }
        // Two rounds of a full ring: the second only fits after the first completes.
        let mut total_retries = 0;
        for round in 0..2 {
            assert_eq!(
                xsk.transmit(umem.frames_mut(), &descs),
                FRAMES as usize,
                "round {round}"
            );
            assert_eq!(xsk.tx_free(), 0);
            let (mut done, retries) = drain_tx(&mut xsk, &mut umem, FRAMES as usize);
            total_retries += retries;
            done.sort_unstable();
            let mut sent: Vec<u64> = descs.iter().map(|d| d.addr).collect();
            sent.sort_unstable();
            assert_eq!(done, sent);
        }
        eprintln!("2 x {FRAMES} frames: {total_retries} EAGAIN-class retries");
        // Copy mode sends at most 32 per kick, so 256 queued frames cannot drain in one kick.
        assert!(
            total_retries > 0,
            "expected EAGAIN with {FRAMES} frames queued"
        );
        let stats = xsk.statistics().unwrap();
        assert_eq!(stats.tx_invalid_descs, 0, "{stats:?}");
    }

    #[test]
    fn bind_errors_say_what_to_change() {
        if !privileged("bind_errors_say_what_to_change") {
            return;
        }
        let ns = veth_netns();
        let _inside = netdev::enter_netns(ns.name()).unwrap();
        let vb = netdev::ifindex("vb").unwrap();
        let config = socket_config(64, BindMode::ZeroCopyOrCopy);

        let err = XskSocket::new(vb, 5, &small_umem(64, 64), config).unwrap_err();
        let message = err.to_string();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{message}");
        assert!(message.contains("has 2 queues"), "{message}");

        let _first = XskSocket::new(vb, 0, &small_umem(64, 64), config).unwrap();
        let err = XskSocket::new(vb, 0, &small_umem(64, 64), config).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("already bound"), "{err}");

        let err = XskSocket::new(
            vb,
            1,
            &small_umem(64, 64),
            socket_config(64, BindMode::ZeroCopy),
        )
        .unwrap_err();
        eprintln!("forced zero-copy on veth: {err}");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
        assert!(
            err.to_string().contains("BindMode::ZeroCopyOrCopy"),
            "{err}"
        );

        // Queue 1 is still free after the refused zero-copy bind.
        let second = XskSocket::new(vb, 1, &small_umem(64, 64), config).unwrap();
        assert_eq!(second.bound_mode(), BoundMode::Copy);

        let err = XskSocket::new(999_999, 0, &small_umem(64, 64), config).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn large_umem_registers_or_names_memlock() {
        if !privileged("large_umem_registers_or_names_memlock") {
            return;
        }
        let ns = veth_netns();
        let _inside = netdev::enter_netns(ns.name()).unwrap();
        let vb = netdev::ifindex("vb").unwrap();
        // 16 MiB: twice the 8 MiB RLIMIT_MEMLOCK of the reference machine.
        let umem = small_umem(8192, 64);
        let (soft, _) = crate::mmap::memlock_limit().unwrap();
        match XskSocket::new(vb, 0, &umem, socket_config(64, BindMode::Copy)) {
            Ok(_) => assert!(crate::mmap::has_cap_ipc_lock() || soft >= 16 << 20),
            Err(err) => {
                let message = err.to_string();
                eprintln!("16 MiB UMEM without CAP_IPC_LOCK: {message}");
                assert!(message.contains("RLIMIT_MEMLOCK"), "{message}");
                assert!(message.contains("CAP_IPC_LOCK (held: false)"), "{message}");
            }
        }
    }

    #[test]
    fn sockets_move_between_threads() {
        if !privileged("sockets_move_between_threads") {
            return;
        }
        let ns = veth_netns();
        let umem = small_umem(64, 64);
        let xsk = {
            let _inside = netdev::enter_netns(ns.name()).unwrap();
            let vb = netdev::ifindex("vb").unwrap();
            XskSocket::new(vb, 0, &umem, socket_config(64, BindMode::Copy)).unwrap()
        };
        // The socket stays in its namespace after this thread left it, and can move threads
        // together with its UMEM.
        let (mut xsk, mut umem) = std::thread::spawn(move || (xsk, umem)).join().unwrap();
        assert_eq!(xsk.fill(umem.frames_mut(), &[0, 2048]), 2);
        assert!(xsk.statistics().is_ok());
    }

    /// One `struct bpf_insn`, as the little-endian `u64` [`crate::bpf::Program::load`] takes.
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        let mut bytes = [0u8; 8];
        bytes[0] = code;
        bytes[1] = (src << 4) | dst;
        bytes[2..4].copy_from_slice(&off.to_le_bytes());
        bytes[4..8].copy_from_slice(&imm.to_le_bytes());
        u64::from_le_bytes(bytes)
    }

    /// An XDP program on `ifindex` that redirects every frame to the AF_XDP socket of its
    /// receive queue, through an XSKMAP holding `xsk` at `xsk`'s queue. Detached on drop.
    struct Redirect {
        _link: crate::bpf::XdpLink,
        _program: crate::bpf::Program,
        _map: crate::bpf::Map,
    }

    impl Redirect {
        fn attach(ifindex: u32, xsk: &XskSocket) -> Self {
            use crate::bpf::{Map, MapKind, Program, ProgramType, XdpLink, XdpMode};
            use std::os::fd::AsRawFd as _;
            let map = Map::create(MapKind::XskMap, 4, 4, 2, 0).unwrap();
            map.update_fd(&xsk.queue_id().to_ne_bytes(), xsk.fd())
                .unwrap();
            let insns = [
                insn(0x61, 2, 1, 16, 0),              // r2 = ctx->rx_queue_index
                insn(0x18, 1, 1, 0, map.as_raw_fd()), // r1 = the map (BPF_PSEUDO_MAP_FD)
                insn(0x00, 0, 0, 0, 0),               //      (upper half of the immediate)
                insn(0xb7, 3, 0, 0, 2),               // r3 = XDP_PASS, returned on a miss
                insn(0x85, 0, 0, 0, 51),              // call bpf_redirect_map
                insn(0x95, 0, 0, 0, 0),               // exit
            ];
            let program = Program::load(ProgramType::Xdp, &insns, "GPL").unwrap();
            let link = XdpLink::attach(&program, ifindex, XdpMode::Native).unwrap();
            Self {
                _link: link,
                _program: program,
                _map: map,
            }
        }
    }

    /// Sends `frames` out of queue 0 of `ifindex` through an AF_XDP socket of its own, so that
    /// on veth they arrive on queue 0 of the peer.
    fn send_on_queue_0(ifindex: u32, frames: &[[u8; 60]]) {
        let count = frames.len() as u32;
        let mut umem = small_umem(count.max(64), 64);
        let mut xsk = XskSocket::new(ifindex, 0, &umem, socket_config(64, BindMode::Copy)).unwrap();
        let mut descs = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let index = i as u32;
            umem.frames_mut().frame_mut(index)[..60].copy_from_slice(frame);
            descs.push(XdpDesc {
                addr: umem.frame_addr(index).unwrap(),
                len: 60,
                options: 0,
            });
        }
        assert_eq!(xsk.transmit(umem.frames_mut(), &descs), frames.len());
        drain_tx(&mut xsk, &mut umem, frames.len());
    }

    /// Receives until a frame carrying `tag` arrived; returns every descriptor taken.
    fn receive_tagged(xsk: &mut XskSocket, umem: &mut Umem, tag: &[u8; 8]) -> Vec<XdpDesc> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut taken = Vec::new();
        let mut rx = [XdpDesc::default(); 16];
        loop {
            let n = xsk.receive(umem.frames_mut(), &mut rx);
            taken.extend_from_slice(&rx[..n]);
            let seen = taken.iter().any(|d| {
                umem.packet(d)
                    .is_some_and(|p| p.len() >= 22 && &p[14..22] == tag)
            });
            if seen {
                return taken;
            }
            assert!(Instant::now() < deadline, "no frame tagged {tag:?} arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_repeated_rx_descriptor_is_not_returned_twice() {
        if !privileged("a_repeated_rx_descriptor_is_not_returned_twice") {
            return;
        }
        let ns = veth_netns();
        let _inside = netdev::enter_netns(ns.name()).unwrap();
        let va = netdev::ifindex("va").unwrap();
        let vb = netdev::ifindex("vb").unwrap();
        let va_mac = netdev::mac_address("va").unwrap();
        let mut umem = small_umem(64, 32);
        let mut xsk = XskSocket::new(vb, 0, &umem, socket_config(32, BindMode::Copy)).unwrap();
        let addrs: Vec<u64> = (0..32).map(|i| u64::from(i * FRAME)).collect();
        assert_eq!(xsk.fill(umem.frames_mut(), &addrs), 32);
        let _redirect = Redirect::attach(vb, &xsk);

        send_on_queue_0(va, &[test_frame(va_mac, b"mlg-xsk3", 1)]);
        let taken = receive_tagged(&mut xsk, &mut umem, b"mlg-xsk3");
        let last = *taken.last().unwrap();
        let lent_before = umem.frames().lent_count(Lease::Receive);
        assert_eq!(lent_before as usize, 32 - taken.len());

        // Step our consumer index back by one: the next receive reads the last slot again,
        // exactly what a kernel that repeated a descriptor would hand us.
        xsk.rx.cached_cons = xsk.rx.cached_cons.wrapping_sub(1);
        let mut rx = [XdpDesc::default(); 16];
        let n = xsk.receive(umem.frames_mut(), &mut rx);
        assert!(
            !rx[..n].contains(&last),
            "the repeated descriptor came back: {:?}",
            &rx[..n]
        );
        assert_eq!(xsk.counters().rx_not_lent, 1);
        assert_eq!(xsk.counters().rx_invalid, 0);
        // Its frame is held once, by us, and not counted back into the fill accounting twice.
        assert!(umem.packet(&last).is_some());
        assert_eq!(
            umem.frames().lent_count(Lease::Receive) as usize,
            lent_before as usize - n
        );
    }

    #[test]
    fn close_reclaiming_gives_every_frame_back() {
        if !privileged("close_reclaiming_gives_every_frame_back") {
            return;
        }
        let ns = veth_netns();
        let _inside = netdev::enter_netns(ns.name()).unwrap();
        let vb = netdev::ifindex("vb").unwrap();
        let mut umem = small_umem(64, 32);
        let config = socket_config(32, BindMode::Copy);
        let mut xsk = XskSocket::new(vb, 0, &umem, config).unwrap();
        // 32 frames on the fill ring, 8 on the tx ring that nobody kicks.
        let addrs: Vec<u64> = (0..32).map(|i| u64::from(i * FRAME)).collect();
        assert_eq!(xsk.fill(umem.frames_mut(), &addrs), 32);
        let descs: Vec<XdpDesc> = (32..40)
            .map(|i| XdpDesc {
                addr: u64::from(i * FRAME),
                len: 60,
                options: 0,
            })
            .collect();
        assert_eq!(xsk.transmit(umem.frames_mut(), &descs), 8);
        assert_eq!(umem.frames().lent_total(), 40);

        // While the socket holds the UMEM no other socket may register it.
        let err = XskSocket::new(vb, 1, &umem, config).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("own UMEM"), "{err}");

        let mut back = Vec::new();
        let reclaimed = xsk.close_reclaiming(umem.frames_mut(), |index| back.push(index));
        assert_eq!(
            reclaimed,
            Reclaimed {
                frames: 40,
                still_lent: 0
            }
        );
        assert_eq!(back, (0..40).collect::<Vec<u32>>());
        assert_eq!(umem.frames().lent_total(), 0);
        for index in 0..64 {
            umem.frames_mut().frame_mut(index)[0] = index as u8;
        }
        assert!((0..64).all(|i| umem.frames().frame(i)[0] == i as u8));
        // The UMEM is free for a new socket (on queue 1: the kernel frees queue 0 a moment
        // after the close, in deferred work).
        let mut again = XskSocket::new(vb, 1, &umem, config).unwrap();
        assert_eq!(again.fill(umem.frames_mut(), &addrs[..4]), 4);
    }

    #[test]
    fn a_duplicated_descriptor_keeps_every_frame_lent_after_close() {
        if !privileged("a_duplicated_descriptor_keeps_every_frame_lent_after_close") {
            return;
        }
        let ns = veth_netns();
        let _inside = netdev::enter_netns(ns.name()).unwrap();
        let vb = netdev::ifindex("vb").unwrap();
        let mut umem = small_umem(64, 32);
        let config = socket_config(32, BindMode::Copy);
        let mut xsk = XskSocket::new(vb, 0, &umem, config).unwrap();
        let addrs: Vec<u64> = (0..32).map(|i| u64::from(i * FRAME)).collect();
        assert_eq!(xsk.fill(umem.frames_mut(), &addrs), 32);
        // Safe code can duplicate the descriptor: the socket then outlives the close, with 32
        // frames on its fill ring that the kernel may still receive into.
        let dup = xsk.fd().try_clone_to_owned().unwrap();
        let started = Instant::now();
        let reclaimed = xsk.close_reclaiming(umem.frames_mut(), |_| {
            panic!("no frame may come back while a duplicate keeps the socket alive")
        });
        assert_eq!(
            reclaimed,
            Reclaimed {
                frames: 0,
                still_lent: 32
            }
        );
        assert_eq!(umem.frames().lent_total(), 32);
        // The probe gave up after its bounded wait.
        let waited = started.elapsed();
        assert!(
            waited >= RELEASE_PROBE_INTERVAL * (RELEASE_PROBE_ATTEMPTS - 1),
            "{waited:?}"
        );
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // The lent frames stay refused; the others are the caller's.
        for index in 0..32 {
            assert!(umem.frames().get(index).is_none(), "frame {index}");
        }
        assert!(umem.frames().get(40).is_some());
        drop(dup);
    }

    #[test]
    fn ring_operations_refuse_another_umem() {
        if !privileged("ring_operations_refuse_another_umem") {
            return;
        }
        let ns = veth_netns();
        let _inside = netdev::enter_netns(ns.name()).unwrap();
        let vb = netdev::ifindex("vb").unwrap();
        let umem = small_umem(64, 32);
        let mut other = small_umem(64, 32);
        let mut xsk = XskSocket::new(vb, 0, &umem, socket_config(32, BindMode::Copy)).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            xsk.fill(other.frames_mut(), &[0])
        }));
        let message = outcome.unwrap_err();
        let message = message
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("");
        assert!(message.contains("did not register"), "{message}");
        assert_eq!(other.frames().lent_total(), 0, "nothing was lent");
        assert_eq!(xsk.fill_free(), 32, "nothing was published");
    }
}
