//! A global allocator that counts allocations, for tests that prove a data path allocates
//! nothing.
//!
//! Installing a global allocator takes an `unsafe impl`, and every crate but this one forbids
//! `unsafe`; so the counting allocator lives here, and a test binary installs it with one safe
//! line: `#[global_allocator] static A: CountingAllocator = CountingAllocator;`. Counting is
//! off until [`start_counting`]; [`allocations`] reads the count. [`bytes_held`] tracks the
//! heap bytes live at any moment (always on), for tests that check a memory account against
//! what the allocator really holds. Every call is forwarded to
//! the system allocator unchanged, so the only cost is one relaxed load per call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static HELD: AtomicIsize = AtomicIsize::new(0);

/// Heap bytes allocated and not yet freed through this allocator (requested sizes, without
/// the allocator's own headers).
pub fn bytes_held() -> isize {
    HELD.load(Ordering::SeqCst)
}

/// The counting allocator. See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

/// Starts counting allocations (and reallocations) from zero.
pub fn start_counting() {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
}

/// Stops counting; returns how many allocations were counted.
pub fn stop_counting() -> usize {
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// Allocations counted so far.
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::SeqCst)
}

fn count() {
    // Relaxed: the count is read only after counting stops, with SeqCst on both sides.
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds
// `GlobalAlloc`'s contract; counting touches only two atomics and never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract for `layout`; it is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was returned by this allocator, that is by `System`, for `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: `ptr` and `layout` came from `System` through this allocator; the caller
        // upholds `realloc`'s contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
