//! The per-engine packet buffer pool.
//!
//! Every engine owns one pool, carved at start-up into `frame_count` frames of `frame_size`
//! bytes; nothing on the data path allocates. A frame is named by a [`PacketBuf`]: a small,
//! move-only handle (frame index plus a window of `start..start+len`). Because the handle is
//! neither `Clone` nor `Copy`, ownership of a frame is ownership of its handle, and the type
//! system tracks who must give it back: the NIC, the stack, the app, or the pool.
//!
//! The memory itself is abstract ([`PoolMemory`]) so that the AF_XDP backend can hand in its
//! UMEM, where frame `i` sits at byte `i * frame_size` exactly as the kernel addresses it. The
//! kernel and simulator backends use ordinary heap memory.
//!
//! Alternative rejected: reference-counted buffers (`Rc<[u8]>`, `bytes::Bytes`). They allocate,
//! they hide who holds a frame, and they cannot name UMEM offsets the kernel understands.
//!
//! Invariant, checked on every transition: a frame is either free (in the free stack) or
//! allocated (exactly one handle, or one raw index held by a NIC, exists). A double free or a
//! handle forged for a free frame is a bug and aborts.

use thiserror::Error;

/// Memory that backs a pool: heap memory, or a region shared with the kernel (UMEM).
pub trait PoolMemory: Send {
    /// The whole region, read-only.
    fn bytes(&self) -> &[u8];
    /// The whole region, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl PoolMemory for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl PoolMemory for Box<[u8]> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
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

impl PoolConfig {
    /// Largest frame size a [`PacketBuf`] window can describe (its fields are `u16`).
    pub const FRAME_SIZE_MAX: usize = 1 << 15;
    /// Smallest headroom that fits Ethernet (14) + IPv4 without options (20) + UDP (8).
    pub const HEADROOM_MIN: usize = 42;

    /// The default for one engine: 4096 frames of 2 KiB (8 MiB).
    ///
    /// Sized by a sum: an rx batch (64) + a tx batch (64) + the ARP pending queue (64) +
    /// buffers the app may hold across batches (the loadgen holds none; echo holds none),
    /// times a generous margin for the NIC's own rings (AF_XDP fill and completion rings of
    /// 2048 each are the largest consumer).
    pub const fn default_engine() -> Self {
        Self {
            frame_size: 2048,
            frame_count: 4096,
            headroom: 256,
        }
    }

    /// Total bytes of memory the pool needs.
    pub const fn memory_len(&self) -> usize {
        self.frame_size * self.frame_count
    }

    fn validate(&self) -> Result<(), PoolError> {
        if self.frame_size == 0 || self.frame_size > Self::FRAME_SIZE_MAX {
            return Err(PoolError::FrameSize(self.frame_size));
        }
        if self.frame_count == 0 || self.frame_count > u32::MAX as usize {
            return Err(PoolError::FrameCount(self.frame_count));
        }
        if self.headroom < Self::HEADROOM_MIN || self.headroom >= self.frame_size {
            return Err(PoolError::Headroom(self.headroom));
        }
        Ok(())
    }
}

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
    /// The frame count is zero or does not fit in `u32`.
    #[error("frame count {0} is out of range")]
    FrameCount(usize),
    /// The headroom cannot hold the headers, or leaves no room for payload.
    #[error("headroom {0} must be at least 42 and below the frame size")]
    Headroom(usize),
    /// The memory handed in is smaller than `frame_size * frame_count`.
    #[error("pool memory holds {have} bytes but the configuration needs {need}")]
    MemoryTooSmall {
        /// Bytes the memory holds.
        have: usize,
        /// Bytes the configuration needs.
        need: usize,
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
}

impl PacketBuf {
    /// The frame index inside the pool.
    pub fn index(&self) -> u32 {
        self.index
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

/// A fixed pool of equal frames. See the module documentation.
pub struct PacketPool {
    memory: Box<dyn PoolMemory>,
    config: PoolConfig,
    /// Stack of free frame indexes; capacity `frame_count`, never grows.
    free: Vec<u32>,
    /// One bit per frame: set while allocated.
    allocated: Vec<u64>,
    /// Failed allocations since start-up.
    exhausted: u64,
}

impl std::fmt::Debug for PacketPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketPool")
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
        Self::with_memory(config, Box::new(vec![0u8; config.memory_len()]))
    }

    /// A pool over memory provided by a backend (an AF_XDP UMEM, say).
    pub fn with_memory(config: PoolConfig, memory: Box<dyn PoolMemory>) -> Result<Self, PoolError> {
        config.validate()?;
        let have = memory.bytes().len();
        if have < config.memory_len() {
            return Err(PoolError::MemoryTooSmall {
                have,
                need: config.memory_len(),
            });
        }
        // Hand out low indexes first: they are the ones most recently touched.
        let free: Vec<u32> = (0..config.frame_count as u32).rev().collect();
        let allocated = vec![0u64; config.frame_count.div_ceil(64)];
        Ok(Self {
            memory,
            config,
            free,
            allocated,
            exhausted: 0,
        })
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

    /// Takes a frame, with an empty window starting after the configured headroom.
    /// `None` when the pool is exhausted (counted); the caller drops the work it had.
    pub fn alloc(&mut self) -> Option<PacketBuf> {
        let Some(index) = self.free.pop() else {
            self.exhausted += 1;
            return None;
        };
        debug_assert!(
            !self.is_allocated(index),
            "free frame {index} marked allocated"
        );
        self.mark(index, true);
        Some(PacketBuf {
            index,
            start: self.config.headroom as u16,
            len: 0,
        })
    }

    /// Takes a frame with its window covering the whole frame: what a NIC receives into.
    pub fn alloc_frame(&mut self) -> Option<PacketBuf> {
        let mut buf = self.alloc()?;
        buf.start = 0;
        buf.len = self.config.frame_size as u16;
        Some(buf)
    }

    /// Returns a frame to the pool.
    ///
    /// # Panics
    /// If the frame is already free: a handle was forged, which is a bug.
    pub fn free(&mut self, buf: PacketBuf) {
        let index = buf.index;
        assert!(self.is_allocated(index), "double free of frame {index}");
        self.mark(index, false);
        debug_assert!(self.free.len() < self.free.capacity() || self.free.len() < self.capacity());
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
        if start.checked_add(len).is_none_or(|end| end > frame_size) {
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

    fn frame_range(&self, index: u32) -> std::ops::Range<usize> {
        let base = index as usize * self.config.frame_size;
        base..base + self.config.frame_size
    }

    /// The window's bytes.
    pub fn data(&self, buf: &PacketBuf) -> &[u8] {
        let base = buf.index as usize * self.config.frame_size + buf.start();
        &self.memory.bytes()[base..base + buf.len()]
    }
    /// The window's bytes, writable.
    pub fn data_mut(&mut self, buf: &PacketBuf) -> &mut [u8] {
        let base = buf.index as usize * self.config.frame_size + buf.start();
        &mut self.memory.bytes_mut()[base..base + buf.len()]
    }
    /// The whole frame under a buffer, whatever its window, writable.
    pub fn frame_mut(&mut self, buf: &PacketBuf) -> &mut [u8] {
        let range = self.frame_range(buf.index);
        &mut self.memory.bytes_mut()[range]
    }
    /// The whole pool memory: for a backend that hands several frames to one system call.
    pub fn memory(&self) -> &[u8] {
        self.memory.bytes()
    }
    /// The whole pool memory, writable.
    pub fn memory_mut(&mut self) -> &mut [u8] {
        self.memory.bytes_mut()
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
        assert!(PacketPool::new(PoolConfig {
            frame_size: 0,
            frame_count: 1,
            headroom: 64
        })
        .is_err());
        assert!(PacketPool::new(PoolConfig {
            frame_size: 256,
            frame_count: 0,
            headroom: 64
        })
        .is_err());
        assert!(PacketPool::new(PoolConfig {
            frame_size: 256,
            frame_count: 1,
            headroom: 8
        })
        .is_err());
        let err = PacketPool::with_memory(
            PoolConfig {
                frame_size: 256,
                frame_count: 4,
                headroom: 64,
            },
            Box::new(vec![0u8; 100]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            PoolError::MemoryTooSmall {
                have: 100,
                need: 1024
            }
        );
    }
}
