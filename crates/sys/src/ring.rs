//! A single-producer single-consumer ring of fixed-size records in one block of memory.
//!
//! # Why this shape
//!
//! In service mode an application process and the `melanged` daemon exchange commands and
//! events through shared-memory queues, as Snap's applications talk to their engines. Each
//! direction is one of these rings: the app produces commands and the daemon consumes them, the
//! daemon produces events and the app consumes them. The ring is therefore built now so that its
//! whole state is one block of bytes with a fixed layout, which later can be a `memfd` mapped by
//! both processes, while today it lives in process-private memory (a [`Region`] or an aligned
//! heap block) and carries records between two threads.
//!
//! ```text
//! offset 0                     producer index (u32), alone on its 64-byte cache line
//! offset 64                    consumer index (u32), alone on its 64-byte cache line
//! offset 128 + i * size_of::<T>()   slot i, for i in 0..capacity (a power of two)
//! ```
//!
//! The indices are free-running `u32`s: a record with sequence number `n` lives in slot
//! `n & (capacity - 1)`, the ring holds `producer - consumer` (wrapping) records, and because
//! the capacity is at most [`RING_CAPACITY_MAX`] (far below 2³¹) the difference is never
//! ambiguous. Each index sits on its own cache line so that the producer's stores do not evict
//! the line the consumer is writing, and vice versa.
//!
//! # The cached-index scheme
//!
//! Each side keeps a private copy of its own index (which it alone writes) and a cached copy of
//! the other side's index. The producer reads the consumer's index only when its cached copy
//! says the batch does not fit; the consumer reads the producer's index only when its cached
//! copy says fewer records are ready than it asked for. In the steady state each side touches
//! the other's cache line once per batch, not once per record. This is the scheme of the AF_XDP
//! rings (`xskq_prod_nb_free`, `xskq_cons_nb_entries`) and of [`crate::xsk`]. A lock-protected
//! `VecDeque` was rejected: a lock cannot live safely in memory shared with an untrusted
//! process, and a futex would add a system call per contended batch.
//!
//! # Memory orderings, in pairs
//!
//! - **(P)** [`Producer`] publishes records with a `Release` store of the producer index after
//!   writing their slots; it pairs with the consumer's `Acquire` load of the producer index
//!   (`Consumer::refresh`) before it reads those slots.
//! - **(C)** [`Consumer`] frees slots with a `Release` store of the consumer index after copying
//!   them out; it pairs with the producer's `Acquire` load of the consumer index
//!   (`Producer::refresh`, [`Producer::push_batch_notify`]) before it overwrites them.
//! - **(N)** [`Producer::push_batch_notify`] issues a `SeqCst` fence between its store of the
//!   producer index and its load of the consumer index; it pairs with the `SeqCst` fence in
//!   [`Consumer::is_empty_before_wait`] between the consumer's last store of its index and its
//!   load of the producer index. By the fence rule (C++ \[atomics.fences\], which Rust adopts),
//!   of two such fences the later one's load sees the other side's store, so either the
//!   consumer sees the new records and does not sleep, or the producer sees that the consumer
//!   had caught up and reports `was_empty`. That is the whole of the doorbell protocol a later
//!   `eventfd` needs: ring it only when `was_empty` is true, and let the consumer sleep only
//!   when `is_empty_before_wait` says so. Without the fences both loads may read stale values
//!   and a wakeup is lost (the store-buffering litmus test).
//!
//! # The other side is not trusted
//!
//! The ring is built as if the other side were another process that may write any byte of the
//! block at any time:
//!
//! - A side never reads its own index back from shared memory; it stores its private copy.
//!   Whatever a peer writes there is overwritten by the next publication and never believed.
//! - Every load of the other side's index is validated: it may only move forward, never past
//!   what is possible (the consumer never past the producer, the producer never more than
//!   `capacity` ahead of the consumer). An impossible index is [`RingError::Corrupted`]; the
//!   handle then refuses every further call. Nothing panics, and slots are always addressed as
//!   `index & mask`, so even a bug in the checks could not reach outside the block.
//! - Slots are written with `write_volatile` and read with `read_volatile` into private
//!   memory, and records are [`Record`]s, for which any bit pattern is a valid value: a record
//!   torn by a peer writing while we copy is a wrong record (for the layer above to validate),
//!   never undefined behaviour in this code.
//!
//! # What changes for a memfd shared with another process
//!
//! Nothing in the protocol; the construction and the trust boundary do. The block would be a
//! `MAP_SHARED` mapping of a `memfd` sealed with `F_SEAL_SHRINK | F_SEAL_GROW` (else the peer
//! can truncate the file and turn our next access into `SIGBUS`). Only the creating side (the
//! daemon) initialises the header; the attaching side starts from the indices it finds, after
//! validating them, and would check a descriptor line (magic, version, capacity, record size)
//! that the daemon writes and itself never trusts: each side keeps the capacity it was told
//! over the control socket in private memory and never reads it from the block. A peer that
//! writes slots or indices while we read is a data race that Rust's memory model does not
//! describe across processes; volatile copies of `Record`s plus validated atomic indices are
//! the accepted practice for such memory (virtio queues in Firecracker and vm-memory do the
//! same). A peer that stops consuming stalls the producer: the caller bounds how long it waits.
//!
//! # What is checked, and by what
//!
//! - **loom** (`RUSTFLAGS="--cfg loom" cargo test -p melange-sys --release ring::loom`) runs
//!   the same `Producer`/`Consumer` code under loom, which explores the interleavings of the
//!   two threads and the stale values each load may return under the C11 model, within loom's
//!   documented limits (it produces no load-buffering outcomes, and treats `SeqCst` accesses,
//!   which we do not use, as `AcqRel`; `SeqCst` fences it models). In this crate's test build
//!   under `cfg(loom)` the atomics come from loom (the `sync` shim below) and the block is
//!   replaced by a heap struct whose slots are loom `UnsafeCell`s, so loom reports a slot read
//!   that is not ordered after its write (a weak (P)), a slot overwrite not ordered after its
//!   read (a weak (C)), and a lost wakeup (a weak (N)); weakening any one of the three to
//!   `Relaxed` (or the fences to `AcqRel`) makes a model test fail. loom does not see the
//!   raw-memory backing (header offsets, pointer arithmetic, volatile copies), a hostile peer,
//!   or rings of more than a few slots and records. Other builds with `--cfg loom` (a
//!   downstream crate's tests) get the ordinary ring: loom is only a dev-dependency.
//! - **Miri** runs every test of this module (`scripts/miri.sh`) over the raw backings (Miri
//!   emulates the anonymous `mmap` behind a [`Region`]), which checks the pointer arithmetic,
//!   alignment, bounds and, in the two-thread test, data races of the very code loom does not
//!   see.
//! - Unit tests check the byte layout, the edges (full, empty, wrap of the `u32` indices) and
//!   the corruption errors; a property test compares the ring with a `VecDeque`; a stress
//!   test runs the two sides on two threads.

use std::marker::PhantomData;

#[cfg(not(all(loom, test)))]
use std::ptr::NonNull;

#[cfg(not(all(loom, test)))]
use crate::mmap::Region;

use sync::{fence, Arc, AtomicU32, Ordering};

/// The atomics and the `Arc` of the ring: loom's when model checking, std's otherwise.
///
/// With this shim and the two versions of `Shared`, the protocol code (`Producer`,
/// `Consumer`) is the same text in both builds, so loom checks the code that ships.
mod sync {
    #[cfg(all(loom, test))]
    pub(super) use ::loom::sync::{
        atomic::{fence, AtomicU32, Ordering},
        Arc,
    };
    #[cfg(not(all(loom, test)))]
    pub(super) use std::sync::{
        atomic::{fence, AtomicU32, Ordering},
        Arc,
    };
}

/// The largest number of slots a ring may have.
///
/// 65,536 records is far more than any command or event batch (the engine's batches are at
/// most a few thousand), and it keeps the largest ring, [`RING_CAPACITY_MAX`] ×
/// [`RING_RECORD_BYTES_MAX`] plus the header, at 64 MiB.
pub const RING_CAPACITY_MAX: u32 = 1 << 16;

/// The largest record a ring may carry, in bytes. Commands and events are small fixed-layout
/// records; anything large travels in a buffer that a record names.
pub const RING_RECORD_BYTES_MAX: usize = 1024;

/// The cache line size the header is laid out for (x86-64 and most arm64 parts).
pub const CACHE_LINE_BYTES: usize = 64;

/// The header: the producer index's cache line, then the consumer index's.
pub const RING_HEADER_BYTES: usize = 2 * CACHE_LINE_BYTES;

// A power of two, so that `index & (capacity - 1)` is the slot.
const _: () = assert!(RING_CAPACITY_MAX.is_power_of_two());
// Free-running u32 indices: `producer - consumer` is unambiguous only while it is below 2^31.
const _: () = assert!(RING_CAPACITY_MAX <= 1 << 31);
// `RingLayout::bytes` cannot overflow, and the largest ring is a sane allocation.
const _: () = assert!(
    RING_HEADER_BYTES + RING_CAPACITY_MAX as usize * RING_RECORD_BYTES_MAX
        <= (64 << 20) + RING_HEADER_BYTES
);
// The header keeps the slots aligned for any record we accept.
const _: () = assert!(RING_HEADER_BYTES.is_multiple_of(CACHE_LINE_BYTES));

/// A plain fixed-size record that may travel through a ring.
///
/// # Safety
///
/// Implementing `Record` for `T` promises that:
///
/// - every bit pattern of `size_of::<T>()` bytes is a valid `T` (so `T` contains no `bool`,
///   `char`, enum, reference, `NonZero*` or other type with invalid values), because a slot may
///   hold bytes that a peer wrote, or that were torn while we copied them;
/// - `T` has no padding bytes, because the bytes of a record become visible to the other side
///   (another process, later), and padding would carry uninitialised memory into them.
///
/// `T` should also hold no pointers (an address means nothing in another process), but that is
/// a matter of meaning, not of soundness. Integers and arrays of records qualify; a
/// `#[repr(C)]` struct of such fields qualifies when its fields leave no gaps.
pub unsafe trait Record: Copy + Send + 'static {}

// SAFETY: integers have no padding and every bit pattern is a valid integer.
unsafe impl Record for u8 {}
// SAFETY: as for `u8`.
unsafe impl Record for u16 {}
// SAFETY: as for `u8`.
unsafe impl Record for u32 {}
// SAFETY: as for `u8`.
unsafe impl Record for u64 {}
// SAFETY: as for `u8`.
unsafe impl Record for i8 {}
// SAFETY: as for `u8`.
unsafe impl Record for i16 {}
// SAFETY: as for `u8`.
unsafe impl Record for i32 {}
// SAFETY: as for `u8`.
unsafe impl Record for i64 {}
// SAFETY: an array has no padding between its elements (its stride is the element size) and
// is valid exactly when each element is, so an array of records is a record.
unsafe impl<R: Record, const N: usize> Record for [R; N] {}

/// Which index of a ring a [`RingError::Corrupted`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingIndex {
    /// The producer index, as the consumer read it.
    Producer,
    /// The consumer index, as the producer read it.
    Consumer,
}

/// Why a ring could not be built or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The capacity is not a power of two in `1..=RING_CAPACITY_MAX`. Fix the configuration.
    #[error("ring capacity {capacity} is not a power of two in 1..={RING_CAPACITY_MAX}")]
    BadCapacity {
        /// The capacity asked for.
        capacity: u32,
    },
    /// The record size is zero or above [`RING_RECORD_BYTES_MAX`]. Use a smaller record that
    /// names a buffer instead of carrying the bytes.
    #[error("ring record of {record_bytes} bytes is not in 1..={RING_RECORD_BYTES_MAX}")]
    BadRecordSize {
        /// The record size asked for.
        record_bytes: usize,
    },
    /// The memory is smaller than [`RingLayout::bytes`]. Allocate at least `needed` bytes.
    #[error("ring needs {needed} bytes but the region has {len}")]
    RegionTooSmall {
        /// The region's length.
        len: usize,
        /// The bytes the layout needs.
        needed: usize,
    },
    /// The memory does not start on a cache line. Use a page-aligned region.
    #[error("ring memory at {addr:#x} is not {CACHE_LINE_BYTES}-byte aligned")]
    Misaligned {
        /// The start address.
        addr: usize,
    },
    /// The other side's index is impossible: it moved backwards, or claims more records (or
    /// more free slots) than the ring can hold. The peer is broken or hostile: stop using the
    /// ring, drop both handles and end the session. The handle returns this error from every
    /// later call and touches the ring no more.
    #[error("ring corrupted: {index:?} index {seen} is outside the possible range {low}..={high}")]
    Corrupted {
        /// Which index was impossible.
        index: RingIndex,
        /// The value read from shared memory.
        seen: u32,
        /// The lowest value it could legitimately have had.
        low: u32,
        /// The highest value it could legitimately have had.
        high: u32,
    },
}

/// The byte layout of a ring: where the indices and slots are, and how many bytes it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    capacity: u32,
    record_bytes: usize,
}

impl RingLayout {
    /// Byte offset of the producer index (a `u32`, alone on its cache line).
    pub const PRODUCER_INDEX_OFFSET: usize = 0;
    /// Byte offset of the consumer index (a `u32`, alone on its cache line).
    pub const CONSUMER_INDEX_OFFSET: usize = CACHE_LINE_BYTES;
    /// Byte offset of slot 0; slot `i` is at `SLOTS_OFFSET + i * record_bytes`.
    pub const SLOTS_OFFSET: usize = RING_HEADER_BYTES;

    /// The layout of a ring of `capacity` records of `record_bytes` bytes each.
    ///
    /// # Errors
    ///
    /// [`RingError::BadCapacity`] or [`RingError::BadRecordSize`].
    pub const fn new(capacity: u32, record_bytes: usize) -> Result<Self, RingError> {
        if !capacity.is_power_of_two() || capacity > RING_CAPACITY_MAX {
            return Err(RingError::BadCapacity { capacity });
        }
        if record_bytes == 0 || record_bytes > RING_RECORD_BYTES_MAX {
            return Err(RingError::BadRecordSize { record_bytes });
        }
        Ok(Self {
            capacity,
            record_bytes,
        })
    }

    /// The layout of a ring of `capacity` records of type `T`.
    ///
    /// A `T` that is empty, larger than [`RING_RECORD_BYTES_MAX`] or aligned to more than a
    /// cache line is refused when the program is compiled.
    ///
    /// # Errors
    ///
    /// [`RingError::BadCapacity`].
    pub const fn of<T: Record>(capacity: u32) -> Result<Self, RingError> {
        const {
            assert!(size_of::<T>() > 0, "a ring record cannot be empty");
            assert!(
                size_of::<T>() <= RING_RECORD_BYTES_MAX,
                "ring record too large"
            );
            assert!(
                align_of::<T>() <= CACHE_LINE_BYTES,
                "ring record over-aligned"
            );
        }
        Self::new(capacity, size_of::<T>())
    }

    /// The bytes a ring of `capacity` records of `record_bytes` bytes needs.
    ///
    /// # Errors
    ///
    /// As for [`RingLayout::new`].
    pub const fn bytes_for(capacity: u32, record_bytes: usize) -> Result<usize, RingError> {
        match Self::new(capacity, record_bytes) {
            Ok(layout) => Ok(layout.bytes()),
            Err(e) => Err(e),
        }
    }

    /// The number of slots.
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The size of one record (and slot) in bytes.
    pub const fn record_bytes(&self) -> usize {
        self.record_bytes
    }

    /// The bytes the whole ring occupies: the header, then the slots.
    pub const fn bytes(&self) -> usize {
        // Cannot overflow: both factors are bounded (see the `const` assertions above).
        RING_HEADER_BYTES + self.capacity as usize * self.record_bytes
    }
}

/// A 64-byte-aligned, zero-filled heap block that stands in for a mapping in tests, under Miri
/// and wherever a ring does not need `mmap`.
#[cfg(not(all(loom, test)))]
#[derive(Debug)]
struct HeapBlock {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

#[cfg(not(all(loom, test)))]
impl HeapBlock {
    fn new_zeroed(bytes: usize) -> Self {
        // Cannot fail: `bytes` is at least the header and bounded by the layout limits, far
        // below `isize::MAX`, and 64 is a power of two.
        let layout = std::alloc::Layout::from_size_align(bytes, CACHE_LINE_BYTES)
            .expect("ring layout sizes are bounded and non-zero");
        // SAFETY: `layout` has a non-zero size (at least the header).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }
}

#[cfg(not(all(loom, test)))]
impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed(layout)` and is freed exactly once, here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// What owns the bytes of a ring; it is only kept alive, never read through.
#[cfg(not(all(loom, test)))]
#[derive(Debug)]
enum Backing {
    Region(#[allow(dead_code)] Region),
    Heap(#[allow(dead_code)] HeapBlock),
}

/// The state both handles share: the ring's memory as the protocol sees it.
///
/// The protocol code uses only `producer_index`, `consumer_index`, `write_slot` and
/// `read_slot`; the raw-memory version below and the loom version after it implement them.
#[cfg(not(all(loom, test)))]
#[derive(Debug)]
struct Shared<T> {
    /// The producer index inside the block.
    producer: NonNull<u32>,
    /// The consumer index inside the block.
    consumer: NonNull<u32>,
    /// Slot 0 inside the block; `capacity` slots follow.
    slots: NonNull<T>,
    /// `capacity - 1`.
    mask: u32,
    /// Keeps the block alive as long as the pointers above are used.
    _backing: Backing,
}

#[cfg(not(all(loom, test)))]
impl<T: Record> Shared<T> {
    /// Builds the view over `base`, which must be owned by `backing`.
    ///
    /// # Safety
    ///
    /// `base` is `CACHE_LINE_BYTES`-aligned, valid for reads and writes of `layout.bytes()`
    /// initialised bytes for as long as `backing` lives, accessed by nothing else while it
    /// does, and its header is zero.
    unsafe fn new(base: NonNull<u8>, layout: RingLayout, backing: Backing) -> Self {
        // The offsets are within `layout.bytes()` and suitably aligned (the header offsets are
        // multiples of 64, the slots start at 128 and `T` is at most 64-aligned), so these are
        // in-bounds pointers of the block; `wrapping_add` keeps the arithmetic safe.
        let at = |offset: usize| base.as_ptr().wrapping_add(offset);
        let nonnull = |p: *mut u8| NonNull::new(p).expect("an offset into a non-null block");
        Self {
            producer: nonnull(at(RingLayout::PRODUCER_INDEX_OFFSET)).cast(),
            consumer: nonnull(at(RingLayout::CONSUMER_INDEX_OFFSET)).cast(),
            slots: nonnull(at(RingLayout::SLOTS_OFFSET)).cast(),
            mask: layout.capacity - 1,
            _backing: backing,
        }
    }

    fn producer_index(&self) -> &AtomicU32 {
        // SAFETY: `producer` is 4-byte aligned (offset 0 of a 64-aligned block), initialised,
        // and valid while `self` (which owns the block) lives, which bounds the returned
        // borrow; every access to these bytes goes through this atomic.
        unsafe { AtomicU32::from_ptr(self.producer.as_ptr()) }
    }

    fn consumer_index(&self) -> &AtomicU32 {
        // SAFETY: as for `producer_index`, at offset 64.
        unsafe { AtomicU32::from_ptr(self.consumer.as_ptr()) }
    }

    /// Copies `record` into the slot of sequence number `index`.
    ///
    /// # Safety
    ///
    /// The caller is the producer and owns that slot by the index protocol: the consumer has
    /// released it (an `Acquire` load of the consumer index showed it free) and it is not yet
    /// published.
    unsafe fn write_slot(&self, index: u32, record: T) {
        // In bounds whatever `index` is: `index & mask < capacity`.
        let slot = self
            .slots
            .as_ptr()
            .wrapping_add((index & self.mask) as usize);
        // SAFETY: `slot` is in the block and aligned for `T` (slot 0 is, and the stride is
        // `size_of::<T>()`); the caller owns it, so no one else accesses it meanwhile.
        unsafe { slot.write_volatile(record) }
    }

    /// Copies out the record in the slot of sequence number `index`.
    ///
    /// # Safety
    ///
    /// The caller is the consumer and owns that slot by the index protocol: the producer has
    /// published it (an `Acquire` load of the producer index showed it) and it is not yet
    /// released.
    unsafe fn read_slot(&self, index: u32) -> T {
        let slot = self
            .slots
            .as_ptr()
            .wrapping_add((index & self.mask) as usize);
        // SAFETY: `slot` is in the block, aligned for `T` and initialised (the block is
        // zero-filled or written); any bit pattern is a valid `T` (`Record`); the caller owns
        // the slot, so no one writes it meanwhile.
        unsafe { slot.read_volatile() }
    }
}

/// Under loom the block is a heap struct of loom objects: loom cannot model raw memory.
#[cfg(all(loom, test))]
#[derive(Debug)]
struct Shared<T> {
    producer: AtomicU32,
    consumer: AtomicU32,
    slots: Box<[::loom::cell::UnsafeCell<T>]>,
    mask: u32,
}

#[cfg(all(loom, test))]
impl<T: Record> Shared<T> {
    fn new_model(layout: RingLayout) -> Self {
        let slots = (0..layout.capacity)
            .map(|_| {
                // SAFETY: every bit pattern, so all zeroes too, is a valid `T` (`Record`).
                ::loom::cell::UnsafeCell::new(unsafe { std::mem::zeroed::<T>() })
            })
            .collect();
        Self {
            producer: AtomicU32::new(0),
            consumer: AtomicU32::new(0),
            slots,
            mask: layout.capacity - 1,
        }
    }

    fn producer_index(&self) -> &AtomicU32 {
        &self.producer
    }

    fn consumer_index(&self) -> &AtomicU32 {
        &self.consumer
    }

    /// # Safety
    ///
    /// As for the raw-memory version; loom checks it.
    unsafe fn write_slot(&self, index: u32, record: T) {
        let slot = &self.slots[(index & self.mask) as usize];
        // SAFETY: the caller owns the slot; loom reports any access it is not ordered with.
        slot.with_mut(|p| unsafe { p.write(record) })
    }

    /// # Safety
    ///
    /// As for the raw-memory version; loom checks it.
    unsafe fn read_slot(&self, index: u32) -> T {
        let slot = &self.slots[(index & self.mask) as usize];
        // SAFETY: the caller owns the slot; loom reports any access it is not ordered with.
        slot.with(|p| unsafe { p.read() })
    }
}

// SAFETY: `Shared` is a view of memory it owns (through `Backing`, or directly under loom).
// Its safe methods give out only atomics; the slots are reached only through the `unsafe`
// `write_slot`/`read_slot`, whose callers (the one `Producer` and the one `Consumer`) own the
// slots they touch by the index protocol. The records are `Send`. So sharing and sending it
// between threads is sound.
unsafe impl<T: Record> Send for Shared<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Record> Sync for Shared<T> {}

/// A ring that is initialised but not yet split into its two handles.
#[derive(Debug)]
pub struct Ring<T: Record> {
    shared: Shared<T>,
    layout: RingLayout,
}

impl<T: Record> Ring<T> {
    /// Lays a ring of `capacity` records out in `region`, which it takes over. The header is
    /// zeroed; the slots keep whatever bytes they held (any bytes are valid records).
    ///
    /// # Errors
    ///
    /// [`RingError::BadCapacity`], [`RingError::RegionTooSmall`] or [`RingError::Misaligned`].
    #[cfg(not(all(loom, test)))]
    pub fn in_region(mut region: Region, capacity: u32) -> Result<Self, RingError> {
        let layout = RingLayout::of::<T>(capacity)?;
        let needed = layout.bytes();
        if region.len() < needed {
            return Err(RingError::RegionTooSmall {
                len: region.len(),
                needed,
            });
        }
        let addr = region.as_ptr() as usize;
        if !addr.is_multiple_of(CACHE_LINE_BYTES) {
            return Err(RingError::Misaligned { addr });
        }
        region.as_mut_slice()[..RING_HEADER_BYTES].fill(0);
        let base = NonNull::new(region.as_mut_ptr()).expect("a region is never at address 0");
        // SAFETY: `base` is the region's start, 64-aligned (checked), valid for `region.len()
        // >= needed` initialised bytes while the region lives; the region moves into the
        // backing, so nothing else reaches the bytes; the header was just zeroed.
        let shared = unsafe { Shared::new(base, layout, Backing::Region(region)) };
        Ok(Self { shared, layout })
    }

    /// A ring of `capacity` records in a zero-filled, 64-byte-aligned heap block.
    ///
    /// # Errors
    ///
    /// [`RingError::BadCapacity`].
    pub fn on_heap(capacity: u32) -> Result<Self, RingError> {
        let layout = RingLayout::of::<T>(capacity)?;
        #[cfg(not(all(loom, test)))]
        let shared = {
            let block = HeapBlock::new_zeroed(layout.bytes());
            let base = block.ptr;
            // SAFETY: `base` is the block's start, 64-aligned, valid for `layout.bytes()`
            // zeroed bytes while the block lives; the block moves into the backing and is
            // reached by nothing else.
            unsafe { Shared::new(base, layout, Backing::Heap(block)) }
        };
        #[cfg(all(loom, test))]
        let shared = Shared::new_model(layout);
        Ok(Self { shared, layout })
    }

    /// The ring's layout.
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// Splits the ring into its one producer and its one consumer. The ring is consumed, so
    /// no second pair can exist.
    pub fn split(self) -> (Producer<T>, Consumer<T>) {
        self.split_at(0)
    }

    /// Splits with both indices starting at `start`, to test the wrap of the `u32` indices.
    fn split_at(self, start: u32) -> (Producer<T>, Consumer<T>) {
        let capacity = self.layout.capacity;
        // Relaxed: no other thread can see the ring yet; the handles reach other threads
        // through `thread::spawn` or a channel, which order these stores before any use.
        self.shared.producer_index().store(start, Ordering::Relaxed);
        self.shared.consumer_index().store(start, Ordering::Relaxed);
        let shared = Arc::new(self.shared);
        let producer = Producer {
            shared: Arc::clone(&shared),
            tail: start,
            consumer_cached: start,
            capacity,
            fault: None,
            _record: PhantomData,
        };
        let consumer = Consumer {
            shared,
            head: start,
            producer_cached: start,
            capacity,
            fault: None,
            _record: PhantomData,
        };
        (producer, consumer)
    }
}

/// What [`Producer::push_batch_notify`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    /// How many records were pushed (a prefix of the batch).
    pub count: usize,
    /// Whether the consumer had taken every earlier record when this batch was published: the
    /// ring went from empty to non-empty. A doorbell is rung exactly when this is true. Always
    /// `false` when `count` is 0.
    pub was_empty: bool,
}

/// The producing end of a ring. There is exactly one per ring ([`Ring::split`]).
#[derive(Debug)]
pub struct Producer<T: Record> {
    shared: Arc<Shared<T>>,
    /// The next sequence number to write; the producer index we publish.
    tail: u32,
    /// The consumer index as last read (validated); a lower bound of the real one.
    consumer_cached: u32,
    capacity: u32,
    /// The first corruption seen; once set the handle touches the ring no more.
    fault: Option<RingError>,
    _record: PhantomData<T>,
}

impl<T: Record> Producer<T> {
    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Free slots as far as the cached consumer index knows: never more than the truth.
    fn free_cached(&self) -> u32 {
        self.capacity - self.tail.wrapping_sub(self.consumer_cached)
    }

    /// Reads the consumer index and validates it: it may only have moved forward, and never
    /// past `tail` (it cannot have taken records we did not publish).
    fn refresh(&mut self) -> Result<(), RingError> {
        // Acquire: pairs with the consumer's Release store in `Consumer::release` (C), so the
        // consumer's copies out of the slots it freed happen before we overwrite them.
        let seen = self.shared.consumer_index().load(Ordering::Acquire);
        self.accept(seen)
    }

    fn accept(&mut self, seen: u32) -> Result<(), RingError> {
        let high = self.tail;
        if seen.wrapping_sub(self.consumer_cached) > high.wrapping_sub(self.consumer_cached) {
            let err = RingError::Corrupted {
                index: RingIndex::Consumer,
                seen,
                low: self.consumer_cached,
                high,
            };
            self.fault = Some(err);
            return Err(err);
        }
        self.consumer_cached = seen;
        Ok(())
    }

    /// Pushes as many records of `records` as fit, in order, and returns how many.
    ///
    /// Reads the consumer index only when the cached copy says the batch does not fit.
    /// Use [`Producer::push_batch_notify`] instead when the consumer may sleep.
    ///
    /// # Errors
    ///
    /// [`RingError::Corrupted`] if the consumer index read is impossible; nothing is pushed.
    pub fn push_batch(&mut self, records: &[T]) -> Result<usize, RingError> {
        if let Some(err) = self.fault {
            return Err(err);
        }
        // A batch longer than u32::MAX is clamped; only `capacity` can fit anyway.
        let wanted = u32::try_from(records.len()).unwrap_or(u32::MAX);
        if self.free_cached() < wanted {
            self.refresh()?;
        }
        let count = self.free_cached().min(wanted);
        for (offset, record) in (0..count).zip(records) {
            // SAFETY: sequence numbers `tail..tail + count` are free (`count <= free_cached`,
            // and the consumer index behind `consumer_cached` was read with Acquire) and not
            // yet published, so the producer owns their slots.
            unsafe {
                self.shared
                    .write_slot(self.tail.wrapping_add(offset), *record)
            };
        }
        if count > 0 {
            self.tail = self.tail.wrapping_add(count);
            // Release: pairs with the consumer's Acquire load in `Consumer::refresh` (P), so
            // the slot writes above happen before the consumer reads them.
            self.shared
                .producer_index()
                .store(self.tail, Ordering::Release);
        }
        Ok(count as usize)
    }

    /// Pushes like [`Producer::push_batch`] and also says whether the ring went from empty to
    /// non-empty, which is when a doorbell must be rung.
    ///
    /// If the cached consumer index already equals the old tail, the ring was certainly
    /// empty (the consumer cannot pass the tail) and nothing more is read. Otherwise this
    /// costs a `SeqCst` fence and a load of the consumer index, once per batch.
    ///
    /// # Errors
    ///
    /// As for [`Producer::push_batch`]; if the error comes from the load after publishing, the
    /// records were pushed but the handle is now refusing further calls.
    pub fn push_batch_notify(&mut self, records: &[T]) -> Result<Pushed, RingError> {
        let old_tail = self.tail;
        let count = self.push_batch(records)?;
        if count == 0 {
            return Ok(Pushed {
                count,
                was_empty: false,
            });
        }
        if self.consumer_cached != old_tail {
            // SeqCst fence: pairs with the fence in `Consumer::is_empty_before_wait` (N). Our
            // store of the producer index precedes it, our load of the consumer index follows.
            fence(Ordering::SeqCst);
            self.refresh()?;
        }
        Ok(Pushed {
            count,
            was_empty: self.consumer_cached == old_tail,
        })
    }

    /// Pushes one record; returns whether it fit.
    ///
    /// # Errors
    ///
    /// As for [`Producer::push_batch`].
    pub fn push(&mut self, record: T) -> Result<bool, RingError> {
        Ok(self.push_batch(std::slice::from_ref(&record))? == 1)
    }
}

/// The consuming end of a ring. There is exactly one per ring ([`Ring::split`]).
#[derive(Debug)]
pub struct Consumer<T: Record> {
    shared: Arc<Shared<T>>,
    /// The next sequence number to read; the consumer index we publish.
    head: u32,
    /// The producer index as last read (validated); a lower bound of the real one.
    producer_cached: u32,
    capacity: u32,
    /// The first corruption seen; once set the handle touches the ring no more.
    fault: Option<RingError>,
    _record: PhantomData<T>,
}

impl<T: Record> Consumer<T> {
    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Records ready as far as the cached producer index knows: never more than the truth.
    fn ready_cached(&self) -> u32 {
        self.producer_cached.wrapping_sub(self.head)
    }

    /// Reads the producer index and validates it: it may only have moved forward, and never
    /// more than `capacity` ahead of `head` (the ring cannot hold more).
    fn refresh(&mut self) -> Result<(), RingError> {
        // Acquire: pairs with the producer's Release store in `Producer::push_batch` (P), so
        // the producer's slot writes happen before we read the slots.
        let seen = self.shared.producer_index().load(Ordering::Acquire);
        let low = self.producer_cached;
        let high = self.head.wrapping_add(self.capacity);
        if seen.wrapping_sub(low) > high.wrapping_sub(low) {
            let err = RingError::Corrupted {
                index: RingIndex::Producer,
                seen,
                low,
                high,
            };
            self.fault = Some(err);
            return Err(err);
        }
        self.producer_cached = seen;
        Ok(())
    }

    /// Pops up to `out.len()` records, in order, into the front of `out`; returns how many.
    ///
    /// Reads the producer index only when the cached copy says fewer records are ready than
    /// `out` can take.
    ///
    /// # Errors
    ///
    /// [`RingError::Corrupted`] if the producer index read is impossible; nothing is popped
    /// and `out` is untouched.
    pub fn pop_batch(&mut self, out: &mut [T]) -> Result<usize, RingError> {
        if let Some(err) = self.fault {
            return Err(err);
        }
        let wanted = u32::try_from(out.len()).unwrap_or(u32::MAX);
        if self.ready_cached() < wanted {
            self.refresh()?;
        }
        let count = self.ready_cached().min(wanted);
        for (offset, slot) in (0..count).zip(out.iter_mut()) {
            // SAFETY: sequence numbers `head..head + count` are published (`count <=
            // ready_cached`, and the producer index behind it was read with Acquire) and not
            // yet released, so the consumer owns their slots.
            *slot = unsafe { self.shared.read_slot(self.head.wrapping_add(offset)) };
        }
        self.release(count);
        Ok(count as usize)
    }

    fn release(&mut self, count: u32) {
        if count > 0 {
            self.head = self.head.wrapping_add(count);
            // Release: pairs with the producer's Acquire loads in `Producer::refresh` (C), so
            // our copies out of the freed slots happen before the producer overwrites them.
            self.shared
                .consumer_index()
                .store(self.head, Ordering::Release);
        }
    }

    /// Pops one record, if one is ready.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::pop_batch`].
    pub fn pop(&mut self) -> Result<Option<T>, RingError> {
        if let Some(err) = self.fault {
            return Err(err);
        }
        if self.ready_cached() == 0 {
            self.refresh()?;
            if self.ready_cached() == 0 {
                return Ok(None);
            }
        }
        // SAFETY: sequence number `head` is published and not released (as in `pop_batch`).
        let record = unsafe { self.shared.read_slot(self.head) };
        self.release(1);
        Ok(Some(record))
    }

    /// Whether the ring is empty, checked so that the consumer may go to sleep on it.
    ///
    /// If this returns `true`, the producer's next [`Producer::push_batch_notify`] that
    /// publishes records reports `was_empty` (and rings the doorbell): no wakeup is lost. It
    /// costs a `SeqCst` fence and a load of the producer index; call it only before sleeping,
    /// never on the fast path.
    ///
    /// # Errors
    ///
    /// As for [`Consumer::pop_batch`].
    pub fn is_empty_before_wait(&mut self) -> Result<bool, RingError> {
        if let Some(err) = self.fault {
            return Err(err);
        }
        // SeqCst fence: pairs with the fence in `Producer::push_batch_notify` (N). Our last
        // store of the consumer index precedes it, our load of the producer index follows.
        fence(Ordering::SeqCst);
        self.refresh()?;
        Ok(self.ready_cached() == 0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mmap::RegionOptions;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// A command-like record: a `#[repr(C)]` struct with no gaps.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    #[repr(C)]
    struct TestRecord {
        seq: u64,
        check: u32,
        tag: [u8; 4],
    }

    // SAFETY: `#[repr(C)]` with fields of 8, 4 and 4 bytes at offsets 0, 8 and 12: no padding
    // (asserted below), and every field accepts any bits.
    unsafe impl Record for TestRecord {}
    const _: () = assert!(size_of::<TestRecord>() == 16);

    impl TestRecord {
        fn new(seq: u64) -> Self {
            Self {
                seq,
                check: (seq as u32).wrapping_mul(0x9E37_79B9),
                tag: *b"melg",
            }
        }
    }

    /// The raw `u32` at `offset` of a heap- or region-backed ring, read as the peer would.
    fn raw_u32<T: Record>(shared: &Shared<T>, offset: usize) -> u32 {
        let base = shared.producer.as_ptr().cast::<u8>();
        let p = base.wrapping_add(offset).cast::<u32>();
        // SAFETY: `offset` is within the block and 4-aligned in every caller; the tests read
        // while no handle is using the ring on another thread.
        unsafe { AtomicU32::from_ptr(p) }.load(Ordering::Relaxed)
    }

    /// The raw bytes of slot `slot` of a ring of `T`.
    fn raw_slot<T: Record>(shared: &Shared<T>, slot: usize) -> Vec<u8> {
        let base = shared.producer.as_ptr().cast::<u8>();
        let start = RingLayout::SLOTS_OFFSET + slot * size_of::<T>();
        (start..start + size_of::<T>())
            .map(|i| {
                // SAFETY: within the block, initialised, no concurrent writer (as above).
                unsafe { base.wrapping_add(i).read_volatile() }
            })
            .collect()
    }

    /// Writes the shared index at `offset` as a hostile peer would.
    fn poke<T: Record>(shared: &Shared<T>, offset: usize, value: u32) {
        let base = shared.producer.as_ptr().cast::<u8>();
        let p = base.wrapping_add(offset).cast::<u32>();
        // SAFETY: as for `raw_u32`.
        unsafe { AtomicU32::from_ptr(p) }.store(value, Ordering::Relaxed);
    }

    #[test]
    fn layout_sizes_and_limits() {
        assert_eq!(RingLayout::bytes_for(8, 16), Ok(128 + 8 * 16));
        assert_eq!(RingLayout::bytes_for(1, 1), Ok(129));
        assert_eq!(
            RingLayout::bytes_for(RING_CAPACITY_MAX, RING_RECORD_BYTES_MAX),
            Ok(128 + (64 << 20))
        );
        for capacity in [0, 3, 6, RING_CAPACITY_MAX * 2, u32::MAX] {
            assert_eq!(
                RingLayout::bytes_for(capacity, 8),
                Err(RingError::BadCapacity { capacity })
            );
        }
        for record_bytes in [0, RING_RECORD_BYTES_MAX + 1, usize::MAX] {
            assert_eq!(
                RingLayout::bytes_for(8, record_bytes),
                Err(RingError::BadRecordSize { record_bytes })
            );
        }
        let layout = RingLayout::of::<TestRecord>(4).unwrap();
        assert_eq!((layout.capacity(), layout.record_bytes()), (4, 16));
        assert_eq!(layout.bytes(), 192);
        assert!(Ring::<u64>::on_heap(12).is_err());
    }

    #[test]
    fn byte_layout_matches_the_documented_offsets() {
        let ring = Ring::<[u8; 4]>::on_heap(4).unwrap();
        let (mut producer, mut consumer) = ring.split();
        let batch = [
            *b"\x01\x02\x03\x04",
            *b"\x05\x06\x07\x08",
            *b"\x09\x0a\x0b\x0c",
        ];
        assert_eq!(producer.push_batch(&batch), Ok(3));
        let shared = &*producer.shared;
        assert_eq!(raw_u32(shared, RingLayout::PRODUCER_INDEX_OFFSET), 3);
        assert_eq!(raw_u32(shared, RingLayout::CONSUMER_INDEX_OFFSET), 0);
        assert_eq!(raw_slot(shared, 0), [0x01, 0x02, 0x03, 0x04]);
        assert_eq!(raw_slot(shared, 2), [0x09, 0x0a, 0x0b, 0x0c]);
        assert_eq!(raw_slot(shared, 3), [0, 0, 0, 0]);
        let mut out = [[0u8; 4]; 2];
        assert_eq!(consumer.pop_batch(&mut out), Ok(2));
        assert_eq!(out, [batch[0], batch[1]]);
        assert_eq!(
            raw_u32(&consumer.shared, RingLayout::CONSUMER_INDEX_OFFSET),
            2
        );
        // The fourth and fifth records wrap: sequence 4 lands in slot 0.
        assert_eq!(producer.push_batch(&[[0xaa; 4], [0xbb; 4]]), Ok(2));
        assert_eq!(raw_slot(&producer.shared, 3), [0xaa; 4]);
        assert_eq!(raw_slot(&producer.shared, 0), [0xbb; 4]);
    }

    #[test]
    fn header_indices_sit_on_separate_cache_lines() {
        let ring = Ring::<u32>::on_heap(2).unwrap();
        let shared = &ring.shared;
        let producer = shared.producer.as_ptr() as usize;
        let consumer = shared.consumer.as_ptr() as usize;
        let slots = shared.slots.as_ptr() as usize;
        assert_eq!(producer % CACHE_LINE_BYTES, 0);
        assert_eq!(consumer - producer, CACHE_LINE_BYTES);
        assert_eq!(slots - producer, RING_HEADER_BYTES);
    }

    #[test]
    fn single_records_in_order_across_many_wraps() {
        let (mut producer, mut consumer) = Ring::<TestRecord>::on_heap(4).unwrap().split();
        for seq in 0..1000 {
            assert_eq!(producer.push(TestRecord::new(seq)), Ok(true));
            if seq % 3 == 2 {
                // Let the ring fill up a little before draining it.
                for expected in seq - 2..=seq {
                    assert_eq!(consumer.pop(), Ok(Some(TestRecord::new(expected))));
                }
            }
        }
        assert_eq!(consumer.pop(), Ok(Some(TestRecord::new(999))));
        assert_eq!(consumer.pop(), Ok(None));
    }

    #[test]
    fn full_and_empty_edges() {
        let (mut producer, mut consumer) = Ring::<u32>::on_heap(4).unwrap().split();
        let mut out = [0u32; 8];
        assert_eq!(consumer.pop_batch(&mut out), Ok(0));
        assert_eq!(consumer.pop(), Ok(None));
        assert_eq!(consumer.pop_batch(&mut []), Ok(0));
        // A batch longer than the ring is cut to the ring.
        assert_eq!(producer.push_batch(&[1, 2, 3, 4, 5, 6]), Ok(4));
        assert_eq!(producer.push(7), Ok(false));
        assert_eq!(producer.push_batch(&[7, 8]), Ok(0));
        assert_eq!(producer.push_batch(&[]), Ok(0));
        assert_eq!(consumer.pop_batch(&mut out[..1]), Ok(1));
        assert_eq!(out[0], 1);
        // One slot freed: exactly one more fits.
        assert_eq!(producer.push_batch(&[5, 6]), Ok(1));
        assert_eq!(consumer.pop_batch(&mut out), Ok(4));
        assert_eq!(out[..4], [2, 3, 4, 5]);
        assert_eq!(consumer.pop_batch(&mut out), Ok(0));
    }

    #[test]
    fn capacity_one_alternates() {
        let (mut producer, mut consumer) = Ring::<u64>::on_heap(1).unwrap().split();
        for value in 0..10u64 {
            assert_eq!(producer.push(value), Ok(true));
            assert_eq!(producer.push(value), Ok(false));
            assert_eq!(consumer.pop(), Ok(Some(value)));
            assert_eq!(consumer.pop(), Ok(None));
        }
    }

    #[test]
    fn u32_indices_wrap() {
        let ring = Ring::<u64>::on_heap(8).unwrap();
        let (mut producer, mut consumer) = ring.split_at(u32::MAX - 5);
        let mut next = 0u64;
        let mut expected = 0u64;
        let mut out = [0u64; 3];
        for _ in 0..10 {
            let batch: Vec<u64> = (next..next + 5).collect();
            next += producer.push_batch(&batch).unwrap() as u64;
            let popped = consumer.pop_batch(&mut out).unwrap();
            for &value in &out[..popped] {
                assert_eq!(value, expected);
                expected += 1;
            }
        }
        assert!(producer.tail < 100, "the producer index wrapped");
        assert!(expected > 20);
    }

    #[test]
    fn notify_reports_empty_to_non_empty() {
        let (mut producer, mut consumer) = Ring::<u32>::on_heap(8).unwrap().split();
        let pushed = producer.push_batch_notify(&[1, 2]).unwrap();
        assert_eq!((pushed.count, pushed.was_empty), (2, true));
        let pushed = producer.push_batch_notify(&[3]).unwrap();
        assert_eq!((pushed.count, pushed.was_empty), (1, false));
        let mut out = [0u32; 8];
        assert_eq!(consumer.pop_batch(&mut out), Ok(3));
        assert_eq!(consumer.is_empty_before_wait(), Ok(true));
        // The producer's cached consumer index is stale (0), so it must look to learn that
        // the consumer caught up.
        assert_eq!(producer.consumer_cached, 0);
        let pushed = producer.push_batch_notify(&[4]).unwrap();
        assert_eq!((pushed.count, pushed.was_empty), (1, true));
        assert_eq!(producer.consumer_cached, 3);
        assert_eq!(consumer.is_empty_before_wait(), Ok(false));
        assert_eq!(consumer.pop(), Ok(Some(4)));
        // A batch that does not fit at all is not a transition.
        assert_eq!(producer.push_batch(&[0; 8]), Ok(8));
        let pushed = producer.push_batch_notify(&[9]).unwrap();
        assert_eq!((pushed.count, pushed.was_empty), (0, false));
    }

    #[test]
    fn producer_reads_the_consumer_index_only_when_needed() {
        let (mut producer, mut consumer) = Ring::<u32>::on_heap(8).unwrap().split();
        assert_eq!(producer.push_batch(&[1, 2, 3, 4]), Ok(4));
        assert_eq!(consumer.pop_batch(&mut [0; 4]), Ok(4));
        // Garbage in the consumer index goes unnoticed while the cached copy says the batch
        // fits (4 free of 8): the producer does not look.
        poke(&producer.shared, RingLayout::CONSUMER_INDEX_OFFSET, 1000);
        assert_eq!(producer.push_batch(&[5, 6, 7, 8]), Ok(4));
        assert_eq!(producer.consumer_cached, 0);
        // The next batch does not fit the cached view, so the producer looks, and refuses.
        assert!(matches!(
            producer.push_batch(&[9]),
            Err(RingError::Corrupted {
                index: RingIndex::Consumer,
                seen: 1000,
                ..
            })
        ));
    }

    #[test]
    fn producer_far_ahead_is_a_clean_error() {
        let (mut producer, mut consumer) = Ring::<TestRecord>::on_heap(4).unwrap().split();
        assert_eq!(producer.push(TestRecord::new(1)), Ok(true));
        for seen in [6, 100, u32::MAX / 2, u32::MAX] {
            let (mut p, mut c) = Ring::<TestRecord>::on_heap(4).unwrap().split();
            assert_eq!(p.push(TestRecord::new(0)), Ok(true));
            poke(&c.shared, RingLayout::PRODUCER_INDEX_OFFSET, seen);
            let mut out = [TestRecord::default(); 4];
            let err = c.pop_batch(&mut out).unwrap_err();
            assert_eq!(
                err,
                RingError::Corrupted {
                    index: RingIndex::Producer,
                    seen,
                    low: 0,
                    high: 4,
                }
            );
            assert_eq!(out, [TestRecord::default(); 4], "nothing was copied out");
            // The handle stays refused even after the index is repaired.
            poke(&c.shared, RingLayout::PRODUCER_INDEX_OFFSET, 1);
            assert_eq!(c.pop(), Err(err));
            assert_eq!(c.is_empty_before_wait(), Err(err));
        }
        // Exactly `capacity` ahead is legal: a full ring (of stale but valid bytes).
        poke(&consumer.shared, RingLayout::PRODUCER_INDEX_OFFSET, 4);
        let mut out = [TestRecord::default(); 8];
        assert_eq!(consumer.pop_batch(&mut out), Ok(4));
        assert_eq!(out[0], TestRecord::new(1));
    }

    #[test]
    fn indices_moving_backwards_are_clean_errors() {
        let (mut producer, mut consumer) = Ring::<u32>::on_heap(4).unwrap().split();
        assert_eq!(producer.push_batch(&[1, 2, 3]), Ok(3));
        assert_eq!(consumer.pop_batch(&mut [0; 1]), Ok(1));
        assert_eq!(consumer.producer_cached, 3);
        // The producer index falls back from 3 to 2: refused on the next look.
        poke(&consumer.shared, RingLayout::PRODUCER_INDEX_OFFSET, 2);
        assert!(matches!(
            consumer.pop_batch(&mut [0; 4]),
            Err(RingError::Corrupted {
                index: RingIndex::Producer,
                seen: 2,
                low: 3,
                ..
            })
        ));
        // The producer read consumer index 1 when it refilled; a later 0 is a step back.
        let (mut producer, mut consumer) = Ring::<u32>::on_heap(4).unwrap().split();
        assert_eq!(producer.push_batch(&[1, 2, 3, 4]), Ok(4));
        assert_eq!(consumer.pop(), Ok(Some(1)));
        assert_eq!(producer.push_batch(&[5, 6]), Ok(1));
        assert_eq!(producer.consumer_cached, 1);
        poke(&producer.shared, RingLayout::CONSUMER_INDEX_OFFSET, 0);
        assert!(matches!(
            producer.push(7),
            Err(RingError::Corrupted {
                index: RingIndex::Consumer,
                seen: 0,
                low: 1,
                high: 5,
            })
        ));
    }

    #[test]
    fn consumer_past_producer_is_a_clean_error() {
        for seen in [3, 4, 1000, u32::MAX] {
            let (mut producer, _consumer) = Ring::<u32>::on_heap(2).unwrap().split();
            assert_eq!(producer.push_batch(&[1, 2]), Ok(2));
            poke(&producer.shared, RingLayout::CONSUMER_INDEX_OFFSET, seen);
            let err = producer.push_batch_notify(&[3]).unwrap_err();
            assert_eq!(
                err,
                RingError::Corrupted {
                    index: RingIndex::Consumer,
                    seen,
                    low: 0,
                    high: 2,
                }
            );
            assert_eq!(producer.push(3), Err(err));
            assert_eq!(
                raw_u32(&producer.shared, RingLayout::PRODUCER_INDEX_OFFSET),
                2
            );
        }
    }

    #[test]
    fn a_peer_overwriting_our_own_index_is_ignored() {
        let (mut producer, mut consumer) = Ring::<u32>::on_heap(4).unwrap().split();
        assert_eq!(producer.push_batch(&[1, 2]), Ok(2));
        // A peer scribbles over the consumer's own index; the consumer never reads it back.
        poke(&consumer.shared, RingLayout::CONSUMER_INDEX_OFFSET, 77);
        assert_eq!(consumer.pop(), Ok(Some(1)));
        assert_eq!(
            raw_u32(&consumer.shared, RingLayout::CONSUMER_INDEX_OFFSET),
            1
        );
        assert_eq!(consumer.pop(), Ok(Some(2)));
    }

    #[test]
    fn ring_in_a_region() {
        let region = Region::new(4096, RegionOptions::default()).unwrap();
        let (mut producer, mut consumer) =
            Ring::<TestRecord>::in_region(region, 64).unwrap().split();
        assert_eq!(producer.capacity(), 64);
        let batch: Vec<TestRecord> = (0..100).map(TestRecord::new).collect();
        assert_eq!(producer.push_batch(&batch), Ok(64));
        let mut out = [TestRecord::default(); 100];
        assert_eq!(consumer.pop_batch(&mut out), Ok(64));
        assert_eq!(out[..64], batch[..64]);
        assert_eq!(
            raw_u32(&producer.shared, RingLayout::CONSUMER_INDEX_OFFSET),
            64
        );

        let small = Region::new(100, RegionOptions::default()).unwrap();
        assert_eq!(
            Ring::<TestRecord>::in_region(small, 64).unwrap_err(),
            RingError::RegionTooSmall {
                len: 100,
                needed: 128 + 64 * 16,
            }
        );
    }

    #[test]
    fn a_reused_region_starts_empty() {
        let mut region = Region::new(4096, RegionOptions::default()).unwrap();
        region.as_mut_slice().fill(0xff);
        let (mut producer, mut consumer) = Ring::<u32>::in_region(region, 8).unwrap().split();
        assert_eq!(consumer.pop(), Ok(None));
        assert_eq!(producer.push_batch(&[0; 9]), Ok(8));
    }

    /// How many records the stress test moves: fewer under Miri, which runs far slower.
    const STRESS_RECORDS: u64 = if cfg!(miri) { 300 } else { 1_000_000 };

    #[test]
    fn two_threads_move_every_record_once_in_order() {
        let (mut producer, mut consumer) = Ring::<TestRecord>::on_heap(64).unwrap().split();
        let sender = std::thread::spawn(move || {
            let mut batch = Vec::with_capacity(48);
            let mut next = 0u64;
            let mut round = 0u64;
            while next < STRESS_RECORDS {
                // Batch lengths cycle through 1..=48 to cross the wrap at every offset.
                let len = (round % 48 + 1).min(STRESS_RECORDS - next);
                batch.clear();
                batch.extend((next..next + len).map(TestRecord::new));
                let mut sent = 0;
                while sent < batch.len() {
                    let pushed = producer.push_batch_notify(&batch[sent..]).unwrap();
                    sent += pushed.count;
                    if pushed.count == 0 {
                        std::thread::yield_now();
                    }
                }
                next += len;
                round += 1;
            }
        });
        let mut out = [TestRecord::default(); 37];
        let mut expected = 0u64;
        while expected < STRESS_RECORDS {
            let count = consumer.pop_batch(&mut out).unwrap();
            if count == 0 {
                std::thread::yield_now();
            }
            for record in &out[..count] {
                assert_eq!(*record, TestRecord::new(expected));
                expected += 1;
            }
        }
        sender.join().unwrap();
        assert_eq!(consumer.pop(), Ok(None));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(Vec<u32>),
        PushNotify(Vec<u32>),
        Pop(usize),
        PopOne,
        CheckEmpty,
    }

    fn op() -> impl Strategy<Value = Op> {
        let batch = prop::collection::vec(any::<u32>(), 0..20);
        prop_oneof![
            batch.clone().prop_map(Op::Push),
            batch.prop_map(Op::PushNotify),
            (0usize..20).prop_map(Op::Pop),
            Just(Op::PopOne),
            Just(Op::CheckEmpty),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_bounded_vecdeque(
            capacity_log2 in 0u32..5,
            start in any::<u32>(),
            ops in prop::collection::vec(op(), 0..60),
        ) {
            let capacity = 1u32 << capacity_log2;
            let ring = Ring::<u32>::on_heap(capacity).unwrap();
            let (mut producer, mut consumer) = ring.split_at(start);
            let mut model = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(batch) => {
                        let fits = batch.len().min(capacity as usize - model.len());
                        prop_assert_eq!(producer.push_batch(&batch), Ok(fits));
                        model.extend(&batch[..fits]);
                    }
                    Op::PushNotify(batch) => {
                        let was_empty = model.is_empty();
                        let fits = batch.len().min(capacity as usize - model.len());
                        let pushed = producer.push_batch_notify(&batch).unwrap();
                        prop_assert_eq!(pushed.count, fits);
                        prop_assert_eq!(pushed.was_empty, fits > 0 && was_empty);
                        model.extend(&batch[..fits]);
                    }
                    Op::Pop(len) => {
                        let mut out = vec![0u32; len];
                        let count = consumer.pop_batch(&mut out).unwrap();
                        prop_assert_eq!(count, len.min(model.len()));
                        let expected: Vec<u32> = model.drain(..count).collect();
                        prop_assert_eq!(&out[..count], &expected[..]);
                    }
                    Op::PopOne => prop_assert_eq!(consumer.pop(), Ok(model.pop_front())),
                    Op::CheckEmpty => {
                        prop_assert_eq!(consumer.is_empty_before_wait(), Ok(model.is_empty()));
                    }
                }
            }
        }
    }
}

/// Model checks of the index protocol; run with
/// `RUSTFLAGS="--cfg loom" cargo test -p melange-sys --release ring::loom`.
#[cfg(all(test, loom))]
mod loom {
    use super::*;
    use ::loom::thread;
    use std::sync::atomic::AtomicUsize;

    /// Runs `body` under loom, counting the executions explored, and prints the count.
    fn model<F: Fn() + Sync + Send + 'static>(name: &str, body: F) {
        // A std counter per model (the tests run in parallel), outside what loom models.
        let runs = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&runs);
        let started = std::time::Instant::now();
        ::loom::model(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            body();
        });
        let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "loom {name}: {runs} executions in {:.2?}",
            started.elapsed()
        );
    }

    /// Pushes every record of `records`, in batches of `batch`, yielding while the ring is full.
    fn push_all(producer: &mut Producer<u32>, records: &[u32], batch: usize) {
        let mut sent = 0;
        while sent < records.len() {
            let end = (sent + batch).min(records.len());
            let count = producer.push_batch(&records[sent..end]).unwrap();
            sent += count;
            if count == 0 {
                thread::yield_now();
            }
        }
    }

    /// Pops `total` records in batches of up to `batch`, yielding while the ring is empty.
    fn pop_all(consumer: &mut Consumer<u32>, total: usize, batch: usize) -> Vec<u32> {
        let mut got = Vec::new();
        let mut out = vec![0u32; batch];
        while got.len() < total {
            let count = consumer.pop_batch(&mut out).unwrap();
            got.extend_from_slice(&out[..count]);
            if count == 0 {
                thread::yield_now();
            }
        }
        got
    }

    #[test]
    fn single_records_wrap_in_order() {
        model("single_records_wrap_in_order", || {
            let (mut producer, mut consumer) = Ring::<u32>::on_heap(2).unwrap().split();
            let sender = thread::spawn(move || {
                for value in 1..=3 {
                    while !producer.push(value).unwrap() {
                        thread::yield_now();
                    }
                }
            });
            let mut got = Vec::new();
            while got.len() < 3 {
                match consumer.pop().unwrap() {
                    Some(value) => got.push(value),
                    None => thread::yield_now(),
                }
            }
            sender.join().unwrap();
            assert_eq!(got, [1, 2, 3]);
            assert_eq!(consumer.pop(), Ok(None));
        });
    }

    #[test]
    fn batches_wrap_in_order() {
        model("batches_wrap_in_order", || {
            let (mut producer, mut consumer) = Ring::<u32>::on_heap(4).unwrap().split();
            let sender = thread::spawn(move || push_all(&mut producer, &[1, 2, 3, 4, 5, 6], 3));
            let got = pop_all(&mut consumer, 6, 3);
            sender.join().unwrap();
            assert_eq!(got, [1, 2, 3, 4, 5, 6]);
        });
    }

    #[test]
    fn full_ring_edges() {
        model("full_ring_edges", || {
            let (mut producer, mut consumer) = Ring::<u32>::on_heap(2).unwrap().split();
            let sender = thread::spawn(move || {
                // The first batch always fits whole; the second only as the consumer frees.
                assert_eq!(producer.push_batch(&[1, 2]), Ok(2));
                let count = producer.push_batch(&[3, 4]).unwrap();
                assert!(count <= 2);
                push_all(&mut producer, &[3, 4][count..], 2);
            });
            let got = pop_all(&mut consumer, 4, 4);
            sender.join().unwrap();
            assert_eq!(got, [1, 2, 3, 4]);
        });
    }

    #[test]
    fn notify_never_loses_a_wakeup() {
        model("notify_never_loses_a_wakeup", || {
            let (mut producer, mut consumer) = Ring::<u32>::on_heap(2).unwrap().split();
            // Record 1 is in the ring; the consumer takes it while the producer pushes record
            // 2. The producer's cached consumer index (0) is then stale, so it takes the fence
            // path, and the consumer's store of its index races with the producer's load of
            // it: the store-buffering shape that loses wakeups without the (N) fences.
            assert!(producer.push(1).unwrap());
            let sender = thread::spawn(move || producer.push_batch_notify(&[2]).unwrap());
            assert_eq!(consumer.pop(), Ok(Some(1)));
            let second = consumer.pop().unwrap();
            let would_sleep = second.is_none() && consumer.is_empty_before_wait().unwrap();
            let pushed = sender.join().unwrap();
            assert_eq!(pushed.count, 1);
            // A lost wakeup: the consumer would sleep on a ring the producer did not ring.
            assert!(
                !would_sleep || pushed.was_empty,
                "lost wakeup: the consumer sleeps and the producer saw no empty ring"
            );
            if second.is_none() {
                assert_eq!(consumer.pop(), Ok(Some(2)));
            }
        });
    }
}
