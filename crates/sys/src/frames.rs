//! Memory shared with the kernel, handed out one frame at a time.
//!
//! # Why per frame
//!
//! An AF_XDP UMEM (and, next, an io_uring provided-buffer ring) is memory the kernel writes
//! *while we run*: a frame placed on the fill ring receives the next packet from whichever CPU
//! runs the receive path (on veth, the sender's). A `&[u8]` or `&mut [u8]` over the whole area
//! would then alias bytes another agent is writing, which is a data race and undefined
//! behaviour whatever the program does with the slice. So a [`FrameRegion`] never hands out the
//! whole area from safe code: it hands out one frame at a time ([`FrameRegion::frame`],
//! [`FrameRegion::frame_mut`]), and only a frame the caller holds.
//!
//! # The ledger
//!
//! The region keeps one entry per frame saying whether it is *lent* to the kernel, and which
//! way ([`Lease::Receive`]: the kernel may write it; [`Lease::Transmit`]: the kernel may read
//! it). A lent frame is refused by the accessors: a panic, because asking for one is an
//! accounting bug in the caller, never something input from outside can cause; the race it
//! would otherwise be is ruled out either way. Lending and reclaiming are not public: only the
//! ring operations of this crate do them, at the moment they publish a frame to the kernel or
//! take one back from it (`XskSocket::fill`, `transmit`, `receive`, `complete`). A public safe
//! `reclaim` was rejected because calling it for a frame still on a fill ring would re-open
//! exactly the race this type exists to close; reclaiming is an `unsafe fn` inside the crate,
//! and each caller says why the kernel is done with the frame. Because the receive ring can
//! only take back frames lent for receive and the completion ring only frames lent for
//! transmit, a repeated or forged descriptor names a frame that is not lent that way and is
//! counted and dropped, never returned twice.
//!
//! # One lender at a time
//!
//! A region is *attached* to at most one kernel object at a time (one AF_XDP socket; later, one
//! io_uring buffer ring), named by a process-wide lender identity. The ring operations check
//! that the region they are given is attached to them, so one socket's ring can never lend or
//! reclaim another region's frames, and shutdown ([`crate::xsk::XskSocket::close_reclaiming`])
//! takes back exactly the frames of the object that was closed. Sharing one region between
//! several kernel objects (`XDP_SHARED_UMEM`) is left out: it would need a lender per frame,
//! and the engines run one socket per core with no sharing anyway.
//!
//! # Safety contract
//!
//! The invariant is: *every frame the kernel may access is marked lent.* It holds because a
//! frame is marked before the ring store that publishes it (the kernel cannot see a descriptor
//! before our Release store of the producer index), and unmarked only after the kernel handed
//! it back on a ring (our Acquire load of the kernel's producer index orders its writes to the
//! frame before our reads), or after the kernel object is gone. Every accessor checks the mark,
//! and every accessor that lends or reclaims needs `&mut self`, so no slice can be alive while
//! the ledger changes. The memory itself is a [`Region`] owned by the `FrameRegion`, so the
//! mapping outlives every slice. Dropping a region whose frames are still lent is sound: the
//! kernel reaches registered pages through its own mapping of the pinned pages (`vmap` in
//! `xdp_umem_addr_map`, net/xdp/xdp_umem.c), never through our virtual addresses, so unmapping
//! ours cannot make it write to memory we reuse.

use std::io;
use std::num::NonZeroU64;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::mmap::Region;

/// Which way a lent frame goes, and so which ring may give it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Lease {
    /// Lent for the kernel to write into (an AF_XDP fill ring, an io_uring provided buffer);
    /// comes back with a received packet.
    Receive = 1,
    /// Lent for the kernel to read from (an AF_XDP tx ring, an io_uring send); comes back as a
    /// completion.
    Transmit = 2,
}

/// Ledger entry of a frame the caller holds.
const HELD: u8 = 0;

impl Lease {
    fn slot(self) -> usize {
        self as usize - 1
    }
}

/// The identity of one kernel object frames are lent to (one AF_XDP socket, later one io_uring
/// ring). Drawn from a process-wide 64-bit counter: at one object per nanosecond it would take
/// 584 years to wrap, so two lenders never share an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lender(NonZeroU64);

impl Lender {
    /// A fresh identity.
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        // Relaxed: the counter only hands out distinct values; nothing else is ordered by it.
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(NonZeroU64::new(id).expect("the counter starts at 1 and cannot wrap (see Lender)"))
    }
}

/// Why a [`FrameRegion`] could not be built. Carried inside an [`io::Error`] of kind
/// `InvalidInput`; change the sizes.
#[derive(Debug, thiserror::Error)]
pub enum FrameRegionError {
    /// Zero frames, or frames of zero bytes. Ask for at least one frame of at least one byte.
    #[error("a frame region needs at least one frame of at least one byte ({frame_count} x {frame_size} asked)")]
    Empty {
        /// Bytes per frame asked for.
        frame_size: usize,
        /// Frames asked for.
        frame_count: u32,
    },
    /// The frames do not fit in the region. Map a larger region or ask for fewer frames.
    #[error(
        "{frame_count} frames of {frame_size} bytes do not fit in a region of {region_len} bytes"
    )]
    TooSmall {
        /// Bytes per frame.
        frame_size: usize,
        /// Frames asked for.
        frame_count: u32,
        /// Bytes in the region.
        region_len: usize,
    },
}

/// A [`Region`] carved into equal frames, with a ledger of the frames lent to the kernel. See
/// the module documentation.
#[derive(Debug)]
pub struct FrameRegion {
    region: Region,
    /// The region's first byte; frame `i` starts `i * frame_size` bytes further.
    base: NonNull<u8>,
    frame_size: usize,
    frame_count: u32,
    /// One entry per frame: [`HELD`], or the [`Lease`] it is lent under.
    ledger: Box<[u8]>,
    /// Frames lent per lease, indexed by `Lease::slot`.
    lent: [u32; 2],
    /// The [`Lender`] the region is attached to, 0 for none.
    lender: AtomicU64,
}

// SAFETY: `base` points into `region`, which the `FrameRegion` owns and which is itself `Send`
// (it owns its mapping like a `Box<[u8]>`); nothing here is tied to a thread.
unsafe impl Send for FrameRegion {}

// SAFETY: `&FrameRegion` gives out only shared slices of frames that are not lent, and reads of
// the ledger; every change to the ledger or to the bytes needs `&mut FrameRegion`. The attached
// lender is an atomic.
unsafe impl Sync for FrameRegion {}

impl FrameRegion {
    /// Carves the first `frame_count * frame_size` bytes of `region` into frames, all held by
    /// the caller.
    ///
    /// # Errors
    ///
    /// `InvalidInput` wrapping [`FrameRegionError`] if there are no frames or they do not fit.
    pub fn new(mut region: Region, frame_size: usize, frame_count: u32) -> io::Result<Self> {
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        if frame_size == 0 || frame_count == 0 {
            return Err(invalid(FrameRegionError::Empty {
                frame_size,
                frame_count,
            }));
        }
        let fits = frame_size
            .checked_mul(frame_count as usize)
            .is_some_and(|len| len <= region.len());
        if !fits {
            return Err(invalid(FrameRegionError::TooSmall {
                frame_size,
                frame_count,
                region_len: region.len(),
            }));
        }
        let base = NonNull::new(region.as_mut_ptr())
            .ok_or_else(|| io::Error::other("a mapped region has a null base"))?;
        Ok(Self {
            region,
            base,
            frame_size,
            frame_count,
            ledger: vec![HELD; frame_count as usize].into_boxed_slice(),
            lent: [0; 2],
            lender: AtomicU64::new(0),
        })
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// Bytes carved into frames, `frame_count * frame_size` (the region may be longer).
    pub fn len(&self) -> usize {
        self.frame_size * self.frame_count as usize
    }

    /// Always `false`: a region has at least one frame. Present because clippy pairs it with
    /// `len`.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the underlying mapping uses 2 MiB pages.
    pub fn is_hugepage(&self) -> bool {
        self.region.is_hugepage()
    }

    /// The first byte, for registering the region with the kernel. Valid for [`Self::len`]
    /// bytes while `self` lives; the pointer itself gives no right to access lent frames.
    pub fn as_ptr(&self) -> *const u8 {
        self.base.as_ptr()
    }

    /// How frame `index` is lent, or `None` when the caller holds it (or it does not exist).
    pub fn lease(&self, index: u32) -> Option<Lease> {
        match self.ledger.get(index as usize) {
            Some(1) => Some(Lease::Receive),
            Some(2) => Some(Lease::Transmit),
            _ => None,
        }
    }

    /// Whether frame `index` is lent to the kernel.
    pub fn is_lent(&self, index: u32) -> bool {
        self.lease(index).is_some()
    }

    /// Frames lent under `lease` right now.
    pub fn lent_count(&self, lease: Lease) -> u32 {
        self.lent[lease.slot()]
    }

    /// Frames lent under either lease right now.
    pub fn lent_total(&self) -> u32 {
        self.lent[0] + self.lent[1]
    }

    /// Frame `index`, or `None` if it does not exist or is lent to the kernel.
    #[inline]
    pub fn get(&self, index: u32) -> Option<&[u8]> {
        if self.ledger.get(index as usize) != Some(&HELD) {
            return None;
        }
        let start = self.frame_ptr(index);
        // SAFETY: `index < frame_count` (the ledger has one entry per frame) and the frames fit
        // the region (checked in `new`), so `[start, start + frame_size)` is inside the mapping
        // `self` owns, which is readable and initialised (zero-filled by the kernel). The frame
        // is held, so the kernel does not access it (module invariant), and it cannot become
        // lent while this shared borrow of `self` lives (lending needs `&mut self`).
        Some(unsafe { std::slice::from_raw_parts(start, self.frame_size) })
    }

    /// Frame `index`, writable, or `None` if it does not exist or is lent to the kernel.
    #[inline]
    pub fn get_mut(&mut self, index: u32) -> Option<&mut [u8]> {
        if self.ledger.get(index as usize) != Some(&HELD) {
            return None;
        }
        let start = self.frame_ptr(index);
        // SAFETY: as for `get`; the mapping is writable, and `&mut self` makes this the only
        // slice of any frame alive.
        Some(unsafe { std::slice::from_raw_parts_mut(start, self.frame_size) })
    }

    /// Frame `index`.
    ///
    /// # Panics
    ///
    /// If the frame does not exist or is lent to the kernel: the caller's accounting is broken.
    #[inline]
    pub fn frame(&self, index: u32) -> &[u8] {
        match self.get(index) {
            Some(frame) => frame,
            None => self.refused(index),
        }
    }

    /// Frame `index`, writable.
    ///
    /// # Panics
    ///
    /// As [`FrameRegion::frame`].
    #[inline]
    pub fn frame_mut(&mut self, index: u32) -> &mut [u8] {
        if self.ledger.get(index as usize) != Some(&HELD) {
            self.refused(index);
        }
        self.get_mut(index)
            .expect("the frame exists and is held: checked just above")
    }

    #[cold]
    #[inline(never)]
    fn refused(&self, index: u32) -> ! {
        match self.lease(index) {
            Some(lease) => {
                panic!("frame {index} is lent to the kernel ({lease:?}): a frame accounting bug")
            }
            None => panic!(
                "frame {index} does not exist (the region has {})",
                self.frame_count
            ),
        }
    }

    /// The whole carved area as bytes, lent frames included.
    ///
    /// # Safety
    ///
    /// For as long as the slice lives the kernel must write none of its bytes. That holds when
    /// no frame is lent for receive ([`FrameRegion::lent_count`] of [`Lease::Receive`] is 0;
    /// nothing can be lent while the shared borrow lives), or when the caller knows otherwise
    /// that the kernel object the frames are lent to no longer writes them.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the area is inside the mapping `self` owns and is initialised; the caller
        // guarantees that the kernel does not write it meanwhile.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len()) }
    }

    /// The whole carved area as writable bytes, lent frames included.
    ///
    /// # Safety
    ///
    /// For as long as the slice lives the kernel must neither write nor read any of its bytes:
    /// no frame may be lent ([`FrameRegion::lent_total`] is 0; nothing can be lent while the
    /// borrow lives), or the caller knows otherwise that the kernel object the frames are lent
    /// to no longer accesses them.
    pub unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`; the mapping is writable and `&mut self` makes this the only
        // slice alive.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len()) }
    }

    fn frame_ptr(&self, index: u32) -> *mut u8 {
        // In bounds for every existing frame; callers check `index` against the ledger first.
        self.base
            .as_ptr()
            .wrapping_add(index as usize * self.frame_size)
    }

    // ----- Crate-internal: attachment, lending, reclaiming. -----

    /// Attaches the region to `lender`; `false` if it is already attached to another one.
    pub(crate) fn attach(&self, lender: Lender) -> bool {
        // Relaxed: the word is a claim, not a publication; the read-modify-write alone decides
        // which of two racing attachers wins, and every ledger change needs `&mut self`.
        self.lender
            .compare_exchange(0, lender.0.get(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Detaches the region from `lender`, which must have nothing lent. Used when the kernel
    /// object could not be set up after all.
    pub(crate) fn detach_unused(&self, lender: Lender) {
        assert_eq!(self.lent_total(), 0, "detaching a lender that holds frames");
        // Relaxed: as in `attach`.
        let _ =
            self.lender
                .compare_exchange(lender.0.get(), 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the region is attached to `lender`.
    #[inline]
    pub(crate) fn is_attached_to(&self, lender: Lender) -> bool {
        // Relaxed: as in `attach`.
        self.lender.load(Ordering::Relaxed) == lender.0.get()
    }

    /// Marks frame `index` lent under `lease`, before it is published to the kernel. `false`
    /// (and no change) if the frame does not exist or is already lent.
    #[inline]
    pub(crate) fn lend(&mut self, index: u32, lease: Lease) -> bool {
        match self.ledger.get_mut(index as usize) {
            Some(entry) if *entry == HELD => {
                *entry = lease as u8;
                self.lent[lease.slot()] += 1;
                true
            }
            _ => false,
        }
    }

    /// Takes frame `index` back from the kernel if it is lent under `lease`; `false` (and no
    /// change) otherwise: the descriptor naming it is repeated or forged.
    ///
    /// # Safety
    ///
    /// The kernel must be done with the frame: it handed it back on the ring that matches
    /// `lease` (a received packet for [`Lease::Receive`], a completion for
    /// [`Lease::Transmit`]), and the caller read that descriptor after an Acquire load of the
    /// kernel's producer index, so the kernel's last access happens before ours.
    #[inline]
    pub(crate) unsafe fn reclaim(&mut self, index: u32, lease: Lease) -> bool {
        match self.ledger.get_mut(index as usize) {
            Some(entry) if *entry == lease as u8 => {
                *entry = HELD;
                self.lent[lease.slot()] -= 1;
                true
            }
            _ => false,
        }
    }

    /// Takes back every frame lent while the region was attached to `lender`, calls
    /// `reclaimed(index)` for each, detaches the region, and returns how many there were.
    ///
    /// # Safety
    ///
    /// The kernel object `lender` names must no longer access any frame of the region, and
    /// nothing else may: it is gone, and its last access happens before this call.
    pub(crate) unsafe fn reclaim_all(
        &mut self,
        lender: Lender,
        mut reclaimed: impl FnMut(u32),
    ) -> u32 {
        assert!(
            self.is_attached_to(lender),
            "reclaiming the frames of a lender the region is not attached to"
        );
        let mut count = 0;
        for (index, entry) in self.ledger.iter_mut().enumerate() {
            if *entry != HELD {
                *entry = HELD;
                count += 1;
                // The ledger has `frame_count` entries, so the index fits `u32`.
                reclaimed(index as u32);
            }
        }
        debug_assert_eq!(count, self.lent_total());
        self.lent = [0; 2];
        // Relaxed: as in `attach`.
        self.lender.store(0, Ordering::Relaxed);
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmap::RegionOptions;

    fn region(frames: u32) -> FrameRegion {
        let region = Region::new(frames as usize * 2048, RegionOptions::default()).unwrap();
        FrameRegion::new(region, 2048, frames).unwrap()
    }

    #[test]
    fn sizes_are_validated() {
        let map = || Region::new(4 * 2048, RegionOptions::default()).unwrap();
        assert_eq!(FrameRegion::new(map(), 2048, 4).unwrap().len(), 4 * 2048);
        for (size, count) in [(0, 4), (2048, 0), (2048, 5), (usize::MAX, 2)] {
            let err = FrameRegion::new(map(), size, count).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{size} x {count}: {err}"
            );
        }
    }

    #[test]
    fn frames_are_disjoint_and_writable() {
        let mut frames = region(4);
        for i in 0..4 {
            assert!(frames.frame(i).iter().all(|&b| b == 0));
            frames.frame_mut(i).fill(i as u8 + 1);
        }
        for i in 0..4 {
            assert!(
                frames.frame(i).iter().all(|&b| b == i as u8 + 1),
                "frame {i}"
            );
            assert_eq!(frames.frame(i).len(), 2048);
        }
        assert_eq!(frames.get(4), None);
        // SAFETY: nothing is lent and no kernel object is involved.
        let whole = unsafe { frames.as_slice() };
        assert_eq!((whole[0], whole[2048], whole[3 * 2048]), (1, 2, 4));
    }

    #[test]
    fn a_lent_frame_is_refused() {
        let mut frames = region(4);
        assert!(frames.lend(1, Lease::Receive));
        assert!(frames.is_lent(1));
        assert_eq!(frames.lease(1), Some(Lease::Receive));
        assert_eq!(frames.get(1), None);
        assert_eq!(frames.get_mut(1), None);
        assert!(frames.get(0).is_some() && frames.get(2).is_some());
        let caught = std::panic::catch_unwind(|| frames.frame(1).len());
        assert!(caught.is_err(), "a lent frame must be refused");
        // Lending twice, or lending what does not exist, changes nothing.
        assert!(!frames.lend(1, Lease::Transmit));
        assert!(!frames.lend(4, Lease::Receive));
        assert_eq!(frames.lease(1), Some(Lease::Receive));
        assert_eq!(frames.lent_count(Lease::Receive), 1);
        assert_eq!(frames.lent_count(Lease::Transmit), 0);
    }

    #[test]
    #[should_panic(expected = "lent to the kernel")]
    fn frame_mut_of_a_lent_frame_panics() {
        let mut frames = region(2);
        assert!(frames.lend(0, Lease::Transmit));
        frames.frame_mut(0)[0] = 1;
    }

    #[test]
    fn only_lent_frames_come_back_and_only_once() {
        let mut frames = region(4);
        assert!(frames.lend(0, Lease::Receive));
        assert!(frames.lend(1, Lease::Transmit));
        fn reclaim(frames: &mut FrameRegion, index: u32, lease: Lease) -> bool {
            // SAFETY: no kernel object is involved; the test plays the kernel.
            unsafe { frames.reclaim(index, lease) }
        }
        // A frame never lent, or lent the other way, is not taken back.
        assert!(!reclaim(&mut frames, 2, Lease::Receive));
        assert!(!reclaim(&mut frames, 0, Lease::Transmit));
        assert!(!reclaim(&mut frames, 1, Lease::Receive));
        assert!(!reclaim(&mut frames, 9, Lease::Receive));
        assert_eq!(frames.lent_total(), 2);
        // The matching lease takes it back once; a repeat is refused.
        assert!(reclaim(&mut frames, 0, Lease::Receive));
        assert!(!reclaim(&mut frames, 0, Lease::Receive));
        assert!(reclaim(&mut frames, 1, Lease::Transmit));
        assert!(!reclaim(&mut frames, 1, Lease::Transmit));
        assert_eq!(frames.lent_total(), 0);
        frames.frame_mut(0)[0] = 7;
        frames.frame_mut(1)[0] = 8;
        assert_eq!((frames.frame(0)[0], frames.frame(1)[0]), (7, 8));
    }

    #[test]
    fn one_lender_at_a_time_and_reclaim_all_returns_everything() {
        let mut frames = region(8);
        let (a, b) = (Lender::next(), Lender::next());
        assert_ne!(a, b);
        assert!(frames.attach(a));
        assert!(!frames.attach(b), "a second lender is refused");
        assert!(frames.is_attached_to(a) && !frames.is_attached_to(b));
        for i in 0..3 {
            assert!(frames.lend(i, Lease::Receive));
        }
        assert!(frames.lend(6, Lease::Transmit));
        let mut back = Vec::new();
        // SAFETY: no kernel object is involved.
        let n = unsafe { frames.reclaim_all(a, |i| back.push(i)) };
        assert_eq!(n, 4);
        assert_eq!(back, [0, 1, 2, 6]);
        assert_eq!(frames.lent_total(), 0);
        assert!((0..8).all(|i| frames.get(i).is_some()));
        // Detached: another lender may attach now.
        assert!(frames.attach(b));
        frames.detach_unused(b);
        assert!(frames.attach(a));
    }

    #[test]
    fn region_moves_between_threads() {
        let mut frames = region(2);
        frames.frame_mut(1)[5] = 42;
        let frames = std::thread::spawn(move || frames).join().unwrap();
        assert_eq!(frames.frame(1)[5], 42);
    }
}
