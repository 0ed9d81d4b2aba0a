//! The per-engine packet buffer pool.
//!
//! Every engine owns one pool, carved at start-up into `frame_count` frames of `frame_size`
//! bytes; nothing on the data path allocates. A frame is named by a [`PacketBuf`]: a small,
//! move-only handle (pool identity, frame index, and a window of `start..start+len`). Because
//! the handle is neither `Clone` nor `Copy`, ownership of a frame is ownership of its handle,
//! and the type system tracks who must give it back: the NIC, the stack, the app, or the pool.
//! A handle names its pool ([`PoolId`]), so a buffer handed to the wrong pool is refused
//! instead of silently naming some other frame.
//!
//! # Memory, and why slices are per frame
//!
//! The memory itself is abstract ([`PoolMemory`]) so that the AF_XDP backend can hand in its
//! UMEM, where frame `i` sits at byte `i * frame_size` exactly as the kernel addresses it, and
//! the io_uring backend its provided-buffer region. In such memory the kernel writes frames
//! that sit on a fill ring *while the engine runs*, from another CPU. A slice over the whole
//! region would then alias memory the kernel is writing: a data race, undefined behaviour.
//! So the trait hands out one frame at a time ([`PoolMemory::frame`]), and only ever for
//! frames the pool owns; a device memory implementation refuses (panics on) a frame it has
//! lent to the kernel, so a broken accounting shows up as a bug, never as a race. Heap memory
//! (the kernel-socket and simulated backends) can also offer itself whole
//! ([`PoolMemory::contiguous_mut`]) for a system call that fills several frames at once and
//! returns before anyone else looks.
//!
//! # Ownership states
//!
//! A frame is *free* (on the pool's free stack) or *allocated*; an allocated frame has exactly
//! one owner: the NIC (posted for receive), the stack (parsing, ARP-pending, reassembly,
//! transmit queue), the app (between an event and a send or free), or in flight (handed to the
//! device for transmit, not yet completed). Builds with debug assertions record the owner of
//! every frame ([`FrameOwner`]), and the engine checks it at every hand-over, so a handle in
//! the wrong state (an app sending a buffer the NIC holds, say) is refused at the boundary
//! where it crossed, not found later as corruption. Release builds keep only the allocation
//! bitmap, which still turns a double free into an abort.
//!
//! # Chains
//!
//! A datagram larger than a frame (IPv4 reassembly), or a stream request that spans segments,
//! is a [`BufChain`]: a head [`PacketBuf`] plus further frames linked through a table inside
//! the pool (`links`, one entry per frame, allocated at start-up). A chain of one frame never
//! touches the table, so the common single-frame case costs nothing extra.
//!
//! Alternative rejected: reference-counted buffers (`Rc<[u8]>`, `bytes::Bytes`). They allocate,
//! they hide who holds a frame, and they cannot name UMEM offsets the kernel understands.

use std::any::Any;
use std::sync::atomic::{AtomicU16, Ordering};
use thiserror::Error;

/// Memory that backs a pool: heap memory, or a region shared with the kernel (a UMEM, an
/// io_uring provided-buffer ring). See the module documentation for why access is per frame.
pub trait PoolMemory: Send + 'static {
    /// Bytes per frame this memory was laid out for.
    fn frame_size(&self) -> usize;
    /// Frames this memory holds.
    fn frame_count(&self) -> usize;
    /// The `frame_size` bytes of frame `index`. The pool calls this only for frames it has
    /// allocated and not lent to a device; an implementation over device memory panics on a
    /// frame the device holds (an accounting bug, never a race).
    fn frame(&self, index: u32) -> &[u8];
    /// Frame `index`, writable. The same rules as [`PoolMemory::frame`].
    fn frame_mut(&mut self, index: u32) -> &mut [u8];
    /// The whole memory as one slice, for a backend that lets one synchronous system call
    /// fill or read several frames (`recvmmsg`, `sendmmsg`). `None` for memory a device may
    /// write at any time (a UMEM): no slice over a frame the device holds may exist.
    fn contiguous_mut(&mut self) -> Option<&mut [u8]> {
        None
    }
    /// The memory as [`Any`], so the backend that provided it can reach its own type (the
    /// AF_XDP queue reaches its UMEM's record of lent frames) through
    /// [`PacketPool::memory_as_mut`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Ordinary heap memory for a pool: the kernel-socket and simulated backends.
#[derive(Debug)]
pub struct HeapMemory {
    bytes: Box<[u8]>,
    frame_size: usize,
}

impl HeapMemory {
    /// Zeroed memory for `frame_count` frames of `frame_size` bytes.
    pub fn new(frame_size: usize, frame_count: usize) -> Self {
        Self {
            bytes: vec![0u8; frame_size * frame_count].into_boxed_slice(),
            frame_size,
        }
    }
}

impl PoolMemory for HeapMemory {
    fn frame_size(&self) -> usize {
        self.frame_size
    }
    fn frame_count(&self) -> usize {
        self.bytes.len() / self.frame_size
    }
    fn frame(&self, index: u32) -> &[u8] {
        let base = index as usize * self.frame_size;
        &self.bytes[base..base + self.frame_size]
    }
    fn frame_mut(&mut self, index: u32) -> &mut [u8] {
        let base = index as usize * self.frame_size;
        &mut self.bytes[base..base + self.frame_size]
    }
    fn contiguous_mut(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.bytes)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Sizes of a pool, fixed at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Bytes per frame. 2048 holds a 1500-byte MTU frame plus headroom, and is a size
    /// AF_XDP accepts for UMEM chunks.
    pub frame_size: usize,
    /// Number of frames.
    pub frame_count: usize,
    /// Bytes reserved in front of the payload of a freshly allocated buffer, so that the
    /// stack can prepend Ethernet, IPv4 and UDP headers without moving the payload.
    pub headroom: usize,
}

/// The frames one engine needs, as a sum whose every term names its consumer. A backend
/// fills in its own ring sizes; [`PoolBudget::total`] is what the pool must hold at least,
/// and [`PoolBudget::check`] refuses a pool that is smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBudget {
    /// Frames the NIC keeps posted for receive (an AF_XDP fill ring, the kernel backend's
    /// posted receive buffers).
    pub nic_rx_posted: usize,
    /// Frames the NIC may hold for transmit until they complete (an AF_XDP TX plus
    /// completion ring).
    pub nic_tx_in_flight: usize,
    /// One receive batch and one transmit batch being worked on by the engine.
    pub engine_batches: usize,
    /// Frames the stack may park: packets waiting for ARP, IPv4 fragments being reassembled.
    pub stack_parked: usize,
    /// Buffers the app may hold across batches (its events' buffers plus its own).
    pub app_held: usize,
}

impl PoolBudget {
    /// The sum of every term.
    pub const fn total(&self) -> usize {
        self.nic_rx_posted
            + self.nic_tx_in_flight
            + self.engine_batches
            + self.stack_parked
            + self.app_held
    }
    /// Refuses a pool smaller than the budget, naming both numbers.
    pub fn check(&self, config: &PoolConfig) -> Result<(), PoolError> {
        if config.frame_count < self.total() {
            return Err(PoolError::BelowBudget {
                frames: config.frame_count,
                budget: *self,
            });
        }
        Ok(())
    }
}

impl PoolConfig {
    /// Largest frame size a [`PacketBuf`] window can describe (its fields are `u16`).
    pub const FRAME_SIZE_MAX: usize = 1 << 15;
    /// Smallest headroom that fits Ethernet (14) + IPv4 without options (20) + UDP (8).
    pub const HEADROOM_MIN: usize = 42;
    /// Most frames in one pool: a bound on start-up memory (`FRAME_COUNT_MAX` frames of
    /// 2 KiB is 2 GiB), and what lets frame indexes, chain links and owners fit their tables.
    pub const FRAME_COUNT_MAX: usize = 1 << 20;

    /// The default for one engine: 4096 frames of 2 KiB (8 MiB). See
    /// [`PoolConfig::DEFAULT_BUDGET`] for the sum it is sized by.
    pub const fn default_engine() -> Self {
        Self {
            frame_size: 2048,
            frame_count: 4096,
            headroom: 256,
        }
    }

    /// The sum the default pool is sized by: an AF_XDP fill ring of 2048 frames (the largest
    /// receive consumer), TX and completion rings of 1024 in flight, a receive and a transmit
    /// batch of 64, 64 packets parked for ARP plus 128 frames in reassembly (the stack's
    /// 256 KiB reassembly limit, charged a whole 2 KiB frame per fragment), and 192 buffers an
    /// app may hold (a load generator holds none, an echo server none across batches).
    pub const DEFAULT_BUDGET: PoolBudget = PoolBudget {
        nic_rx_posted: 2048,
        nic_tx_in_flight: 1024,
        engine_batches: 128,
        stack_parked: 64 + 128,
        app_held: 192,
    };

    /// Total bytes of memory the pool needs.
    pub const fn memory_len(&self) -> usize {
        self.frame_size * self.frame_count
    }

    /// Checks the sizes, so that every window computation afterwards fits its field.
    pub fn validate(&self) -> Result<(), PoolError> {
        if self.frame_size == 0 || self.frame_size > Self::FRAME_SIZE_MAX {
            return Err(PoolError::FrameSize(self.frame_size));
        }
        if self.frame_count == 0 || self.frame_count > Self::FRAME_COUNT_MAX {
            return Err(PoolError::FrameCount(self.frame_count));
        }
        if self.headroom < Self::HEADROOM_MIN || self.headroom >= self.frame_size {
            return Err(PoolError::Headroom(self.headroom));
        }
        Ok(())
    }
}

const _: () = assert!(
    PoolConfig::DEFAULT_BUDGET.total() <= PoolConfig::default_engine().frame_count,
    "the default pool must hold its own budget"
);
const _: () = assert!(PoolConfig::default_engine().frame_size <= PoolConfig::FRAME_SIZE_MAX);
const _: () = assert!(PoolConfig::default_engine().headroom >= PoolConfig::HEADROOM_MIN);

impl Default for PoolConfig {
    fn default() -> Self {
        Self::default_engine()
    }
}

/// Errors building a pool or changing a buffer's window.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PoolError {
    /// The frame size is zero or above [`PoolConfig::FRAME_SIZE_MAX`]; pick another.
    #[error("frame size {0} is out of range 1..=32768")]
    FrameSize(usize),
    /// The frame count is zero or above [`PoolConfig::FRAME_COUNT_MAX`].
    #[error("frame count {0} is out of range 1..=1048576")]
    FrameCount(usize),
    /// The headroom cannot hold the headers, or leaves no room for payload.
    #[error("headroom {0} must be at least 42 and below the frame size")]
    Headroom(usize),
    /// The memory handed in does not match the configuration.
    #[error(
        "pool memory holds {have_frames} frames of {have_size} bytes but the configuration \
         needs {need_frames} of {need_size}"
    )]
    MemoryMismatch {
        /// Frames the memory holds.
        have_frames: usize,
        /// Frame size of the memory.
        have_size: usize,
        /// Frames the configuration needs.
        need_frames: usize,
        /// Frame size of the configuration.
        need_size: usize,
    },
    /// The pool is smaller than the sum of what its consumers may hold; raise the frame
    /// count or shrink the rings and batches.
    #[error("a pool of {frames} frames is below its budget of {} ({budget:?})", budget.total())]
    BelowBudget {
        /// Frames in the pool.
        frames: usize,
        /// The budget.
        budget: PoolBudget,
    },
    /// The requested window does not fit inside the frame; the caller asked for too much
    /// payload or headroom and should drop or truncate.
    #[error("window {start}+{len} does not fit a {frame_size}-byte frame")]
    Window {
        /// Requested start.
        start: usize,
        /// Requested length.
        len: usize,
        /// The frame size.
        frame_size: usize,
    },
    /// A chain would exceed [`BufChain::LEN_MAX`] bytes.
    #[error("a buffer chain may hold at most {} bytes", BufChain::LEN_MAX)]
    ChainTooLong,
}

/// The identity of one pool, carried by every [`PacketBuf`] it hands out. Identities are
/// drawn from a process-wide counter that wraps after 65,535 pools; two pools alive at once
/// with one identity would need that many pools created in between, which no engine does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId(u16);

impl PoolId {
    fn next() -> Self {
        static NEXT: AtomicU16 = AtomicU16::new(1);
        // Relaxed: the counter only needs to hand out distinct values; nothing else is
        // ordered by it.
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(if id == 0 { 1 } else { id })
    }
    /// The raw value, for records that travel between processes.
    pub fn raw(self) -> u16 {
        self.0
    }
}

/// Who holds an allocated frame. Recorded per frame in builds with debug assertions; see the
/// module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameOwner {
    /// On the free stack.
    Free = 0,
    /// Posted to the NIC for receive.
    Nic = 1,
    /// Held by the network stack.
    Stack = 2,
    /// Lent to the app.
    App = 3,
    /// Handed to the device for transmit, not yet completed.
    InFlight = 4,
}

impl FrameOwner {
    #[cfg(debug_assertions)]
    fn from_u8(value: u8) -> Self {
        match value {
            0 => FrameOwner::Free,
            1 => FrameOwner::Nic,
            2 => FrameOwner::Stack,
            3 => FrameOwner::App,
            _ => FrameOwner::InFlight,
        }
    }
}

/// A move-only handle to one frame of a [`PacketPool`], with a window `start..start+len`
/// inside the frame. Dropping a handle without returning it to the pool leaks the frame;
/// the pool's [`PacketPool::available`] count makes such leaks visible in tests.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a PacketBuf must be sent, kept or returned to its pool"]
pub struct PacketBuf {
    index: u32,
    start: u16,
    len: u16,
    pool: PoolId,
}

const _: () = assert!(std::mem::size_of::<PacketBuf>() <= 12);

impl PacketBuf {
    /// The frame index inside the pool.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// The pool the frame belongs to.
    pub fn pool(&self) -> PoolId {
        self.pool
    }
    /// Offset of the window from the start of the frame.
    pub fn start(&self) -> usize {
        usize::from(self.start)
    }
    /// Length of the window.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
    /// True when the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Drops `n` bytes from the front of the window (e.g. after parsing a header).
    ///
    /// # Panics
    /// If `n > len`: callers advance only past headers they have parsed.
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.len(), "advance {n} past window of {}", self.len);
        // Both fit u16: n <= len <= u16::MAX, and start + len stays inside the frame.
        self.start += n as u16;
        self.len -= n as u16;
    }
    /// Grows the window `n` bytes to the front (e.g. to write a header).
    ///
    /// # Panics
    /// If `n > start`: callers check [`PacketBuf::start`] (the headroom) first.
    pub fn prepend(&mut self, n: usize) {
        assert!(
            n <= self.start(),
            "prepend {n} past headroom of {}",
            self.start
        );
        self.start -= n as u16;
        self.len += n as u16;
    }
    /// Shortens the window to `len` bytes.
    ///
    /// # Panics
    /// If `len` is larger than the current window.
    pub fn truncate(&mut self, len: usize) {
        assert!(
            len <= self.len(),
            "truncate to {len} beyond window of {}",
            self.len
        );
        self.len = len as u16;
    }
    /// Byte offset of the window's start from the start of the pool memory; the address an
    /// AF_XDP descriptor carries.
    pub fn offset_in(&self, frame_size: usize) -> usize {
        self.index as usize * frame_size + self.start()
    }
    /// Gives up the handle for raw parts, for a NIC that passes the frame to the kernel
    /// (an AF_XDP ring) or a peer process. The frame stays allocated;
    /// [`PacketPool::from_raw`] makes a handle again.
    pub fn into_raw(self) -> RawBuf {
        RawBuf {
            index: self.index,
            start: self.start,
            len: self.len,
        }
    }
}

/// The raw parts of a [`PacketBuf`], as they travel through a kernel ring or shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawBuf {
    /// Frame index.
    pub index: u32,
    /// Window start within the frame.
    pub start: u16,
    /// Window length.
    pub len: u16,
}

/// A chain of buffers: a head plus further frames linked inside the pool. See the module
/// documentation. The chain owns every frame in it; give it back whole with
/// [`PacketPool::free_chain`], or take it apart with [`PacketPool::chain_pop_front`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a BufChain must be sent, kept or returned to its pool"]
pub struct BufChain {
    head: PacketBuf,
    /// Index of the last frame (the head's when there is one frame).
    tail: u32,
    /// Frames in the chain, at least 1.
    frames: u32,
    /// Bytes in all windows.
    len: u32,
}

impl BufChain {
    /// The most bytes one chain holds: the largest IPv4 datagram. Bounds every length sum.
    pub const LEN_MAX: usize = 65_535;

    /// Bytes in all of the chain's windows.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// True when every window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Frames in the chain (at least one).
    pub fn frames(&self) -> usize {
        self.frames as usize
    }
    /// The first buffer.
    pub fn head(&self) -> &PacketBuf {
        &self.head
    }
    /// The only buffer of a one-frame chain; the chain itself when it has more.
    pub fn into_single(self) -> Result<PacketBuf, BufChain> {
        if self.frames == 1 {
            Ok(self.head)
        } else {
            Err(self)
        }
    }
    /// The raw parts, for a record that travels between processes: (head, tail index,
    /// frames, bytes). The links stay in the pool.
    pub fn into_raw(self) -> RawChain {
        RawChain {
            head: self.head.into_raw(),
            tail: self.tail,
            frames: self.frames,
            len: self.len,
        }
    }
}

impl From<PacketBuf> for BufChain {
    fn from(head: PacketBuf) -> Self {
        Self {
            tail: head.index,
            frames: 1,
            len: head.len as u32,
            head,
        }
    }
}

/// The raw parts of a [`BufChain`]; see [`BufChain::into_raw`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawChain {
    /// The head buffer.
    pub head: RawBuf,
    /// Index of the last frame.
    pub tail: u32,
    /// Frames in the chain.
    pub frames: u32,
    /// Bytes in all windows.
    pub len: u32,
}

/// Why a transmit ended without sending; see [`PacketPool::release_tx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxDropped {
    /// The device's transmit ring stayed full.
    RingFull,
    /// The device refused or failed the transmit (the interface went down, say).
    Device,
    /// The next hop never answered ARP.
    Unresolved,
}

/// A frame whose transmit ended, going back to the app that asked for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Returned {
    /// The token given with [`PacketPool::return_after_tx`].
    pub token: u64,
    /// The buffer, its payload window restored.
    pub buf: PacketBuf,
    /// Whether it was sent.
    pub result: Result<(), TxDropped>,
}

#[derive(Debug, Clone, Copy)]
struct ReturnTag {
    token: u64,
    start: u16,
    len: u16,
    armed: bool,
}

impl ReturnTag {
    const NONE: ReturnTag = ReturnTag {
        token: 0,
        start: 0,
        len: 0,
        armed: false,
    };
}

/// One entry of the chain table: the next frame after this one, and this frame's window
/// when it is not a chain's head (a head's window lives in its handle).
#[derive(Debug, Clone, Copy)]
struct Link {
    next: u32,
    start: u16,
    len: u16,
}

const NO_LINK: u32 = u32::MAX;
const _: () = assert!(PoolConfig::FRAME_COUNT_MAX < NO_LINK as usize);

/// A fixed pool of equal frames. See the module documentation.
pub struct PacketPool {
    memory: Box<dyn PoolMemory>,
    config: PoolConfig,
    id: PoolId,
    /// Stack of free frame indexes; capacity `frame_count`, never grows.
    free: Vec<u32>,
    /// One bit per frame: set while allocated.
    allocated: Vec<u64>,
    /// The chain table, one entry per frame.
    links: Vec<Link>,
    /// Per frame: who gets the frame back when a transmit ends (see
    /// [`PacketPool::return_after_tx`]).
    returns: Vec<ReturnTag>,
    /// Frames whose transmit ended and that go back to their app, oldest first. Bounded by
    /// the frame count: a frame is in it at most once.
    returned: std::collections::VecDeque<Returned>,
    /// The owner of every frame ([`FrameOwner`] as `u8`), in builds with debug assertions.
    #[cfg(debug_assertions)]
    owners: Vec<u8>,
    /// Failed allocations since start-up.
    exhausted: u64,
}

impl std::fmt::Debug for PacketPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketPool")
            .field("id", &self.id)
            .field("config", &self.config)
            .field("available", &self.free.len())
            .field("exhausted", &self.exhausted)
            .finish()
    }
}

impl PacketPool {
    /// A pool over fresh heap memory.
    pub fn new(config: PoolConfig) -> Result<Self, PoolError> {
        config.validate()?;
        Self::with_memory(
            config,
            Box::new(HeapMemory::new(config.frame_size, config.frame_count)),
        )
    }

    /// A pool over memory provided by a backend (an AF_XDP UMEM, say).
    pub fn with_memory(config: PoolConfig, memory: Box<dyn PoolMemory>) -> Result<Self, PoolError> {
        config.validate()?;
        if memory.frame_size() != config.frame_size || memory.frame_count() < config.frame_count {
            return Err(PoolError::MemoryMismatch {
                have_frames: memory.frame_count(),
                have_size: memory.frame_size(),
                need_frames: config.frame_count,
                need_size: config.frame_size,
            });
        }
        // Hand out low indexes first: they are the ones most recently touched. The count fits
        // u32 (validated against FRAME_COUNT_MAX).
        let free: Vec<u32> = (0..config.frame_count as u32).rev().collect();
        let allocated = vec![0u64; config.frame_count.div_ceil(64)];
        let links = vec![
            Link {
                next: NO_LINK,
                start: 0,
                len: 0
            };
            config.frame_count
        ];
        Ok(Self {
            memory,
            config,
            id: PoolId::next(),
            free,
            allocated,
            links,
            returns: vec![ReturnTag::NONE; config.frame_count],
            returned: std::collections::VecDeque::with_capacity(config.frame_count),
            #[cfg(debug_assertions)]
            owners: vec![FrameOwner::Free as u8; config.frame_count],
            exhausted: 0,
        })
    }

    /// The pool's identity.
    pub fn id(&self) -> PoolId {
        self.id
    }
    /// The pool's sizes.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }
    /// Frames free right now.
    pub fn available(&self) -> usize {
        self.free.len()
    }
    /// Total frames.
    pub fn capacity(&self) -> usize {
        self.config.frame_count
    }
    /// Allocation attempts that found the pool empty.
    pub fn exhausted_count(&self) -> u64 {
        self.exhausted
    }

    fn is_allocated(&self, index: u32) -> bool {
        self.allocated[index as usize / 64] & (1 << (index % 64)) != 0
    }
    fn mark(&mut self, index: u32, allocated: bool) {
        let word = &mut self.allocated[index as usize / 64];
        if allocated {
            *word |= 1 << (index % 64);
        } else {
            *word &= !(1 << (index % 64));
        }
    }

    /// Records who holds a frame now, checking that it is allocated. A no-op in builds
    /// without debug assertions.
    ///
    /// # Panics
    /// In builds with debug assertions, if the frame is free or not of this pool.
    #[inline]
    pub fn hand_over(&mut self, buf: &PacketBuf, to: FrameOwner) {
        debug_assert_eq!(buf.pool, self.id, "frame {} is of another pool", buf.index);
        #[cfg(debug_assertions)]
        {
            let owner = &mut self.owners[buf.index as usize];
            assert_ne!(
                *owner,
                FrameOwner::Free as u8,
                "hand-over of free frame {} to {to:?}",
                buf.index
            );
            *owner = to as u8;
        }
        #[cfg(not(debug_assertions))]
        let _ = to;
    }

    /// Records the owner of every frame of a chain; see [`PacketPool::hand_over`].
    #[inline]
    pub fn hand_over_chain(&mut self, chain: &BufChain, to: FrameOwner) {
        self.hand_over(&chain.head, to);
        #[cfg(debug_assertions)]
        {
            let mut index = self.links[chain.head.index as usize].next;
            for _ in 1..chain.frames {
                self.owners[index as usize] = to as u8;
                index = self.links[index as usize].next;
            }
        }
    }

    /// Whether `buf` is of this pool and (in builds with debug assertions) held by `owner`.
    /// The engine asks this at every boundary a buffer crosses and refuses a buffer in the
    /// wrong state. Release builds check only the pool identity.
    #[inline]
    pub fn is_held_by(&self, buf: &PacketBuf, owner: FrameOwner) -> bool {
        if buf.pool != self.id {
            return false;
        }
        #[cfg(debug_assertions)]
        {
            self.owners[buf.index as usize] == owner as u8
        }
        #[cfg(not(debug_assertions))]
        {
            let _ = owner;
            true
        }
    }

    /// The recorded owner of a frame, in builds with debug assertions; `None` otherwise or
    /// for an index out of range.
    pub fn owner_of(&self, index: u32) -> Option<FrameOwner> {
        #[cfg(debug_assertions)]
        {
            self.owners
                .get(index as usize)
                .map(|&o| FrameOwner::from_u8(o))
        }
        #[cfg(not(debug_assertions))]
        {
            let _ = index;
            None
        }
    }

    #[inline]
    fn take_free(&mut self, owner: FrameOwner) -> Option<u32> {
        let Some(index) = self.free.pop() else {
            self.exhausted += 1;
            return None;
        };
        debug_assert!(
            !self.is_allocated(index),
            "free frame {index} marked allocated"
        );
        self.mark(index, true);
        #[cfg(debug_assertions)]
        {
            self.owners[index as usize] = owner as u8;
        }
        #[cfg(not(debug_assertions))]
        let _ = owner;
        Some(index)
    }

    /// Takes a frame for `owner`, with an empty window starting after the configured
    /// headroom. `None` when the pool is exhausted (counted); the caller drops the work it
    /// had.
    #[inline]
    pub fn alloc_for(&mut self, owner: FrameOwner) -> Option<PacketBuf> {
        let index = self.take_free(owner)?;
        Some(PacketBuf {
            index,
            // The headroom is below the frame size, which fits u16 (validated).
            start: self.config.headroom as u16,
            len: 0,
            pool: self.id,
        })
    }

    /// Takes a frame for the stack; see [`PacketPool::alloc_for`].
    #[inline]
    pub fn alloc(&mut self) -> Option<PacketBuf> {
        self.alloc_for(FrameOwner::Stack)
    }

    /// Takes a frame for the NIC, its window covering the whole frame: what a NIC receives
    /// into. The window spans at most [`PoolConfig::FRAME_SIZE_MAX`] - 1 bytes, so a frame of
    /// exactly 32 KiB offers one byte less.
    #[inline]
    pub fn alloc_frame(&mut self) -> Option<PacketBuf> {
        let index = self.take_free(FrameOwner::Nic)?;
        Some(PacketBuf {
            index,
            start: 0,
            len: self.config.frame_size.min(usize::from(u16::MAX)) as u16,
            pool: self.id,
        })
    }

    /// Returns a frame to the pool.
    ///
    /// # Panics
    /// If the frame is already free or of another pool: a handle was forged, which is a bug.
    #[inline]
    pub fn free(&mut self, buf: PacketBuf) {
        let index = buf.index;
        assert_eq!(buf.pool, self.id, "frame {index} freed to another pool");
        assert!(self.is_allocated(index), "double free of frame {index}");
        self.mark(index, false);
        self.returns[index as usize].armed = false;
        #[cfg(debug_assertions)]
        {
            self.owners[index as usize] = FrameOwner::Free as u8;
        }
        debug_assert!(self.free.len() < self.capacity());
        self.free.push(index);
    }

    /// Makes a handle again from the raw parts of an allocated frame, after it comes back
    /// from a kernel ring. `None` if the parts do not name an allocated frame and a window
    /// inside it: the caller counts that as a backend error and drops the descriptor.
    pub fn from_raw(&self, raw: RawBuf) -> Option<PacketBuf> {
        let in_range = (raw.index as usize) < self.config.frame_count
            && usize::from(raw.start) + usize::from(raw.len) <= self.config.frame_size;
        if !in_range || !self.is_allocated(raw.index) {
            return None;
        }
        Some(PacketBuf {
            index: raw.index,
            start: raw.start,
            len: raw.len,
            pool: self.id,
        })
    }

    /// Sets a buffer's window, checked against the frame size.
    pub fn set_window(
        &self,
        buf: &mut PacketBuf,
        start: usize,
        len: usize,
    ) -> Result<(), PoolError> {
        let frame_size = self.config.frame_size;
        if start
            .checked_add(len)
            .is_none_or(|end| end > frame_size || end > usize::from(u16::MAX))
        {
            return Err(PoolError::Window {
                start,
                len,
                frame_size,
            });
        }
        buf.start = start as u16;
        buf.len = len as u16;
        Ok(())
    }

    /// Sets the window's length, keeping its start; fails if it would leave the frame.
    pub fn set_len(&self, buf: &mut PacketBuf, len: usize) -> Result<(), PoolError> {
        self.set_window(buf, buf.start(), len)
    }

    /// Bytes a window could grow to the back without leaving the frame.
    pub fn tailroom(&self, buf: &PacketBuf) -> usize {
        self.config.frame_size - buf.start() - buf.len()
    }

    /// The window's bytes.
    ///
    /// # Panics
    /// If `buf` is of another pool (a bug: handles cannot be forged across pools).
    #[inline]
    pub fn data(&self, buf: &PacketBuf) -> &[u8] {
        assert_eq!(buf.pool, self.id, "frame {} is of another pool", buf.index);
        &self.memory.frame(buf.index)[buf.start()..buf.start() + buf.len()]
    }
    /// The window's bytes, writable.
    ///
    /// # Panics
    /// If `buf` is of another pool.
    #[inline]
    pub fn data_mut(&mut self, buf: &PacketBuf) -> &mut [u8] {
        assert_eq!(buf.pool, self.id, "frame {} is of another pool", buf.index);
        let (start, len) = (buf.start(), buf.len());
        &mut self.memory.frame_mut(buf.index)[start..start + len]
    }
    /// The whole frame under a buffer, whatever its window, writable.
    ///
    /// # Panics
    /// If `buf` is of another pool.
    pub fn frame_mut(&mut self, buf: &PacketBuf) -> &mut [u8] {
        assert_eq!(buf.pool, self.id, "frame {} is of another pool", buf.index);
        self.memory.frame_mut(buf.index)
    }
    /// The whole pool memory, for a backend whose one system call fills or reads several
    /// frames; `None` for device memory (see [`PoolMemory::contiguous_mut`]).
    pub fn contiguous_mut(&mut self) -> Option<&mut [u8]> {
        self.memory.contiguous_mut()
    }
    /// The pool's memory as the backend's own type, for the backend that provided it.
    pub fn memory_as_mut<M: PoolMemory>(&mut self) -> Option<&mut M> {
        self.memory.as_any_mut().downcast_mut::<M>()
    }

    // Transmit completions.

    /// Asks that `buf` come back to its app, with `token`, when its transmit ends, instead of
    /// going back to the pool. The payload window as it is now is what the app gets back
    /// (the stack widens the window over the headers it writes).
    pub fn return_after_tx(&mut self, buf: &PacketBuf, token: u64) {
        debug_assert_eq!(buf.pool, self.id);
        self.returns[buf.index as usize] = ReturnTag {
            token,
            start: buf.start,
            len: buf.len,
            armed: true,
        };
    }

    /// Undoes [`PacketPool::return_after_tx`] for a send that was refused before it left.
    pub fn cancel_return(&mut self, buf: &PacketBuf) {
        debug_assert_eq!(buf.pool, self.id);
        self.returns[buf.index as usize].armed = false;
    }

    /// Where a device (or the stack, dropping a frame it was asked to send) hands a frame
    /// whose transmit ended: `result` says whether it was sent. A frame marked with
    /// [`PacketPool::return_after_tx`] goes to the returned queue for its app, with its
    /// payload window restored; any other frame goes back to the pool.
    #[inline]
    pub fn release_tx(&mut self, mut buf: PacketBuf, result: Result<(), TxDropped>) {
        let tag = &mut self.returns[buf.index as usize];
        if !tag.armed {
            self.free(buf);
            return;
        }
        tag.armed = false;
        buf.start = tag.start;
        buf.len = tag.len;
        let token = tag.token;
        self.hand_over(&buf, FrameOwner::Stack);
        self.returned.push_back(Returned { token, buf, result });
    }

    /// The next frame whose transmit ended and that goes back to its app.
    pub fn take_returned(&mut self) -> Option<Returned> {
        self.returned.pop_front()
    }

    /// Frames waiting in the returned queue.
    pub fn returned_len(&self) -> usize {
        self.returned.len()
    }

    // Chains.

    /// Appends `buf` at the end of `chain`. Fails, giving `buf` back, when the chain would
    /// exceed [`BufChain::LEN_MAX`] bytes.
    pub fn chain_push(
        &mut self,
        chain: &mut BufChain,
        buf: PacketBuf,
    ) -> Result<(), (PoolError, PacketBuf)> {
        debug_assert_eq!(chain.head.pool, self.id);
        if buf.pool != self.id {
            return Err((
                PoolError::Window {
                    start: buf.start(),
                    len: buf.len(),
                    frame_size: self.config.frame_size,
                },
                buf,
            ));
        }
        let len = chain.len as usize + buf.len();
        if len > BufChain::LEN_MAX {
            return Err((PoolError::ChainTooLong, buf));
        }
        let index = buf.index;
        self.links[index as usize] = Link {
            next: NO_LINK,
            start: buf.start,
            len: buf.len,
        };
        self.links[chain.tail as usize].next = index;
        chain.tail = index;
        chain.frames += 1;
        chain.len = len as u32;
        Ok(())
    }

    /// Takes the first buffer off a chain: the buffer, and the rest if any.
    pub fn chain_pop_front(&mut self, chain: BufChain) -> (PacketBuf, Option<BufChain>) {
        if chain.frames == 1 {
            return (chain.head, None);
        }
        let next = self.links[chain.head.index as usize].next;
        self.links[chain.head.index as usize].next = NO_LINK;
        let link = self.links[next as usize];
        let rest = BufChain {
            head: PacketBuf {
                index: next,
                start: link.start,
                len: link.len,
                pool: self.id,
            },
            tail: chain.tail,
            frames: chain.frames - 1,
            len: chain.len - u32::from(chain.head.len),
        };
        (chain.head, Some(rest))
    }

    /// Makes a chain handle again from its raw parts (a record from another process). `None`
    /// unless the head and every linked frame are allocated, the links lead from the head to
    /// `tail` in exactly `frames` frames, and the windows add up to `len`. The walk is
    /// bounded by the pool's frame count, so a forged chain costs bounded work.
    pub fn chain_from_raw(&self, raw: RawChain) -> Option<BufChain> {
        if raw.frames == 0 || raw.frames as usize > self.config.frame_count {
            return None;
        }
        let head = self.from_raw(raw.head)?;
        let mut len = u32::from(raw.head.len);
        let mut index = raw.head.index;
        for _ in 1..raw.frames {
            index = self.links[index as usize].next;
            if index as usize >= self.config.frame_count || !self.is_allocated(index) {
                return None;
            }
            let link = self.links[index as usize];
            if usize::from(link.start) + usize::from(link.len) > self.config.frame_size {
                return None;
            }
            len += u32::from(link.len);
        }
        if index != raw.tail || len != raw.len || len as usize > BufChain::LEN_MAX {
            return None;
        }
        Some(BufChain {
            head,
            tail: raw.tail,
            frames: raw.frames,
            len,
        })
    }

    /// Returns every frame of a chain to the pool.
    pub fn free_chain(&mut self, chain: BufChain) {
        let mut rest = Some(chain);
        while let Some(chain) = rest {
            let (buf, tail) = self.chain_pop_front(chain);
            self.free(buf);
            rest = tail;
        }
    }

    /// The chain's windows in order, as byte slices.
    pub fn chain_segments<'a>(&'a self, chain: &'a BufChain) -> ChainSegments<'a> {
        ChainSegments {
            pool: self,
            first: Some(&chain.head),
            next: self.links[chain.head.index as usize].next,
            left: chain.frames - 1,
        }
    }

    /// Copies the chain's bytes from `offset` into `out`; returns how many were copied.
    pub fn chain_read(&self, chain: &BufChain, mut offset: usize, out: &mut [u8]) -> usize {
        let mut copied = 0;
        for segment in self.chain_segments(chain) {
            if offset >= segment.len() {
                offset -= segment.len();
                continue;
            }
            let take = (segment.len() - offset).min(out.len() - copied);
            out[copied..copied + take].copy_from_slice(&segment[offset..offset + take]);
            copied += take;
            offset = 0;
            if copied == out.len() {
                break;
            }
        }
        copied
    }
}

/// The windows of a chain; see [`PacketPool::chain_segments`].
pub struct ChainSegments<'a> {
    pool: &'a PacketPool,
    first: Option<&'a PacketBuf>,
    next: u32,
    left: u32,
}

impl<'a> Iterator for ChainSegments<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if let Some(head) = self.first.take() {
            return Some(self.pool.data(head));
        }
        if self.left == 0 {
            return None;
        }
        let index = self.next;
        let link = self.pool.links[index as usize];
        self.next = link.next;
        self.left -= 1;
        let start = usize::from(link.start);
        Some(&self.pool.memory.frame(index)[start..start + usize::from(link.len)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PacketPool {
        PacketPool::new(PoolConfig {
            frame_size: 256,
            frame_count: 4,
            headroom: 64,
        })
        .unwrap()
    }

    #[test]
    fn alloc_free_round_trip_and_exhaustion() {
        let mut pool = small();
        let bufs: Vec<_> = (0..4).map(|_| pool.alloc().unwrap()).collect();
        assert_eq!(pool.available(), 0);
        assert!(pool.alloc().is_none());
        assert_eq!(pool.exhausted_count(), 1);
        for b in bufs {
            pool.free(b);
        }
        assert_eq!(pool.available(), 4);
    }

    #[test]
    fn windows_are_disjoint_frames() {
        let mut pool = small();
        let mut a = pool.alloc().unwrap();
        let mut b = pool.alloc().unwrap();
        pool.set_len(&mut a, 10).unwrap();
        pool.set_len(&mut b, 10).unwrap();
        pool.data_mut(&a).fill(0xaa);
        pool.data_mut(&b).fill(0xbb);
        assert!(pool.data(&a).iter().all(|&x| x == 0xaa));
        assert!(pool.data(&b).iter().all(|&x| x == 0xbb));
        a.prepend(14);
        assert_eq!(a.start(), 50);
        assert_eq!(a.len(), 24);
        a.advance(14);
        assert_eq!(a.len(), 10);
        assert!(pool.set_len(&mut a, 1000).is_err());
        assert_eq!(pool.tailroom(&a), 256 - 64 - 10);
        pool.free(a);
        pool.free(b);
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut pool = small();
        let a = pool.alloc().unwrap();
        let raw = a.into_raw();
        let a1 = pool.from_raw(raw).unwrap();
        let a2 = pool.from_raw(raw).unwrap();
        pool.free(a1);
        pool.free(a2);
    }

    #[test]
    #[should_panic(expected = "another pool")]
    fn a_buffer_of_another_pool_is_refused() {
        let mut one = small();
        let mut other = small();
        assert_ne!(one.id(), other.id());
        let a = one.alloc().unwrap();
        other.free(a);
    }

    #[test]
    fn pool_identity_is_checked_at_boundaries() {
        let mut one = small();
        let other = small();
        let a = one.alloc().unwrap();
        assert!(one.is_held_by(&a, FrameOwner::Stack));
        assert!(!other.is_held_by(&a, FrameOwner::Stack));
        one.free(a);
    }

    #[cfg(debug_assertions)]
    #[test]
    fn owners_follow_hand_overs() {
        let mut pool = small();
        let a = pool.alloc_for(FrameOwner::App).unwrap();
        assert_eq!(pool.owner_of(a.index()), Some(FrameOwner::App));
        assert!(pool.is_held_by(&a, FrameOwner::App));
        assert!(!pool.is_held_by(&a, FrameOwner::Nic));
        pool.hand_over(&a, FrameOwner::InFlight);
        assert!(pool.is_held_by(&a, FrameOwner::InFlight));
        let index = a.index();
        pool.free(a);
        assert_eq!(pool.owner_of(index), Some(FrameOwner::Free));
        let f = pool.alloc_frame().unwrap();
        assert_eq!(pool.owner_of(f.index()), Some(FrameOwner::Nic));
        pool.free(f);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "hand-over of free frame")]
    fn handing_over_a_free_frame_is_a_bug() {
        let mut pool = small();
        let a = pool.alloc().unwrap();
        let raw = a.into_raw();
        let a = pool.from_raw(raw).unwrap();
        let again = PacketBuf {
            index: a.index,
            start: a.start,
            len: a.len,
            pool: a.pool,
        };
        pool.free(a);
        pool.hand_over(&again, FrameOwner::App);
    }

    #[test]
    fn from_raw_rejects_free_and_out_of_range() {
        let mut pool = small();
        let a = pool.alloc().unwrap();
        let raw = a.into_raw();
        assert!(pool.from_raw(RawBuf { index: 9, ..raw }).is_none());
        assert!(pool
            .from_raw(RawBuf {
                start: 250,
                len: 10,
                ..raw
            })
            .is_none());
        let a = pool.from_raw(raw).unwrap();
        pool.free(a);
        assert!(pool.from_raw(raw).is_none());
    }

    #[test]
    fn bad_configs_are_rejected() {
        let config = |frame_size, frame_count, headroom| PoolConfig {
            frame_size,
            frame_count,
            headroom,
        };
        assert!(PacketPool::new(config(0, 1, 64)).is_err());
        assert!(PacketPool::new(config(256, 0, 64)).is_err());
        assert!(PacketPool::new(config(256, 1, 8)).is_err());
        assert_eq!(
            PacketPool::new(config(2048, PoolConfig::FRAME_COUNT_MAX + 1, 64)).unwrap_err(),
            PoolError::FrameCount(PoolConfig::FRAME_COUNT_MAX + 1)
        );
        let err = PacketPool::with_memory(config(256, 4, 64), Box::new(HeapMemory::new(256, 2)))
            .unwrap_err();
        assert_eq!(
            err,
            PoolError::MemoryMismatch {
                have_frames: 2,
                have_size: 256,
                need_frames: 4,
                need_size: 256
            }
        );
    }

    #[test]
    fn budget_is_a_checked_sum() {
        let budget = PoolBudget {
            nic_rx_posted: 2,
            nic_tx_in_flight: 1,
            engine_batches: 1,
            stack_parked: 0,
            app_held: 1,
        };
        assert_eq!(budget.total(), 5);
        assert!(budget.check(&small().config).is_err());
        let fits = PoolBudget {
            app_held: 0,
            ..budget
        };
        assert!(fits.check(&small().config).is_ok());
    }

    fn filled(pool: &mut PacketPool, byte: u8, len: usize) -> PacketBuf {
        let mut buf = pool.alloc().unwrap();
        pool.set_len(&mut buf, len).unwrap();
        pool.data_mut(&buf).fill(byte);
        buf
    }

    #[test]
    fn chains_link_frames_and_come_apart_in_order() {
        let mut pool = small();
        let a = filled(&mut pool, 1, 10);
        let b = filled(&mut pool, 2, 20);
        let c = filled(&mut pool, 3, 30);
        let mut chain = BufChain::from(a);
        assert_eq!((chain.frames(), chain.len()), (1, 10));
        pool.chain_push(&mut chain, b).unwrap();
        pool.chain_push(&mut chain, c).unwrap();
        assert_eq!((chain.frames(), chain.len()), (3, 60));
        let lens: Vec<_> = pool
            .chain_segments(&chain)
            .map(|s| (s[0], s.len()))
            .collect();
        assert_eq!(lens, vec![(1, 10), (2, 20), (3, 30)]);
        let mut out = [0u8; 25];
        assert_eq!(pool.chain_read(&chain, 5, &mut out), 25);
        assert_eq!(&out[..5], &[1; 5]);
        assert_eq!(&out[5..], &[2; 20]);
        let mut tail = [0u8; 100];
        assert_eq!(pool.chain_read(&chain, 50, &mut tail), 10);
        let chain = chain.into_single().unwrap_err();
        let (first, rest) = pool.chain_pop_front(chain);
        assert_eq!(pool.data(&first), &[1; 10]);
        let rest = rest.unwrap();
        assert_eq!((rest.frames(), rest.len()), (2, 50));
        assert_eq!(pool.data(rest.head()), &[2; 20]);
        pool.free(first);
        pool.free_chain(rest);
        assert_eq!(pool.available(), 4);
    }

    #[test]
    fn transmitted_frames_go_back_to_whoever_asked() {
        let mut pool = small();
        let mut a = filled(&mut pool, 7, 10);
        let b = filled(&mut pool, 8, 10);
        pool.return_after_tx(&a, 42);
        a.prepend(20);
        pool.release_tx(a, Ok(()));
        pool.release_tx(b, Err(TxDropped::RingFull));
        assert_eq!(
            pool.available(),
            3,
            "an unmarked frame goes back to the pool"
        );
        let returned = pool.take_returned().unwrap();
        assert_eq!(returned.token, 42);
        assert_eq!(returned.result, Ok(()));
        assert_eq!(
            pool.data(&returned.buf),
            &[7; 10],
            "the payload window is restored"
        );
        assert!(pool.take_returned().is_none());
        // A tag does not outlive its frame.
        pool.return_after_tx(&returned.buf, 1);
        pool.free(returned.buf);
        let c = pool.alloc().unwrap();
        pool.release_tx(c, Ok(()));
        assert!(pool.take_returned().is_none());
        assert_eq!(pool.available(), 4);
    }

    #[test]
    fn chains_are_bounded() {
        let mut pool = PacketPool::new(PoolConfig {
            frame_size: 32 * 1024,
            frame_count: 3,
            headroom: 64,
        })
        .unwrap();
        let big = |pool: &mut PacketPool| filled(pool, 0, 30_000);
        let mut chain = BufChain::from(big(&mut pool));
        let b = big(&mut pool);
        pool.chain_push(&mut chain, b).unwrap();
        let c = big(&mut pool);
        let (err, c) = pool.chain_push(&mut chain, c).unwrap_err();
        assert_eq!(err, PoolError::ChainTooLong);
        pool.free(c);
        pool.free_chain(chain);
        assert_eq!(pool.available(), 3);
    }
}
