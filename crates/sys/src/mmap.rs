//! Anonymous memory regions for packet buffers.
//!
//! Packet buffers are allocated once, at start-up, as one large [`Region`] and carved into
//! frames by the pools above us (and later registered as AF_XDP UMEM, which wants a
//! page-aligned area it can pin). A region is a private anonymous `mmap`, not a `Vec<u8>`:
//! the allocator gives no page alignment, cannot use huge pages, and could not be `mlock`ed as
//! a unit.
//!
//! Huge pages (2 MiB, `MAP_HUGETLB`) cut TLB misses when the region is walked at line rate, but
//! they must be reserved by the administrator (`vm.nr_hugepages`), so asking for them is a
//! preference: if the huge mapping fails we fall back to normal pages and say so through
//! [`Region::is_hugepage`]. Transparent huge pages (`madvise(MADV_HUGEPAGE)`) were rejected as
//! the primary path because they give no guarantee and can stall on compaction. `populate`
//! pre-faults the pages so the data path never takes a page fault; `lock` pins them with
//! `mlock` so they are never swapped, which is required for AF_XDP and is a start-up error,
//! with a message naming the limit to raise, when it fails.
//!
//! Safety contract: a [`Region`] uniquely owns `[ptr, ptr + mapped_len)` from a successful
//! `mmap` until `munmap` in `Drop`, like a `Box<[u8]>`. The mapping is readable and writable
//! and zero-filled by the kernel, so viewing its first `len` bytes as `[u8]` is sound; borrows
//! of the slices are tied to `&self`/`&mut self` by the signatures.

use std::io;
use std::ptr::{self, NonNull};

/// The huge page size we ask for with `MAP_HUGE_2MB`.
pub const HUGEPAGE_BYTES: usize = 2 * 1024 * 1024;

/// The `CAP_IPC_LOCK` capability number (`linux/capability.h`).
const CAP_IPC_LOCK: u32 = 14;

/// How to back a [`Region`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionOptions {
    /// Try 2 MiB huge pages first, falling back to normal pages if none are available.
    pub hugepages: bool,
    /// Pre-fault every page now (`MAP_POPULATE`) instead of on first touch.
    pub populate: bool,
    /// Lock the pages in memory (`mlock`); failure is an error.
    pub lock: bool,
}

/// Why a [`Region`] could not be created. Carried inside an [`io::Error`] whose kind is that
/// of the underlying system error.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// `len` was zero. Fix the configuration.
    #[error("a region cannot be empty")]
    Empty,
    /// `len` rounded up to the page size overflowed. Fix the configuration.
    #[error("region length {len} is too large")]
    TooLarge {
        /// The requested length in bytes.
        len: usize,
    },
    /// `mlock` failed. Raise `RLIMIT_MEMLOCK` (`ulimit -l`, systemd `LimitMEMLOCK=`) to at
    /// least the region size, or grant the process `CAP_IPC_LOCK`; or run without locking.
    #[error(
        "mlock of {len} bytes failed: {source}; raise RLIMIT_MEMLOCK (now soft {soft}, hard \
         {hard} bytes) or grant CAP_IPC_LOCK (held: {cap_ipc_lock})"
    )]
    Lock {
        /// The number of bytes we tried to lock.
        len: usize,
        /// The `mlock` error (usually `ENOMEM` or `EPERM`).
        source: io::Error,
        /// The soft `RLIMIT_MEMLOCK` in bytes at the time of failure (`u64::MAX` = unlimited).
        soft: u64,
        /// The hard `RLIMIT_MEMLOCK` in bytes.
        hard: u64,
        /// Whether the process held `CAP_IPC_LOCK`.
        cap_ipc_lock: bool,
    },
}

/// A private anonymous memory mapping, zero-filled, unmapped on drop.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    /// The length the caller asked for; the slices are this long.
    len: usize,
    /// The length actually mapped (rounded up to the page size used); `munmap` needs it.
    mapped_len: usize,
    hugepage: bool,
    locked: bool,
}

// SAFETY: a `Region` uniquely owns its mapping, like a `Box<[u8]>`; nothing in it is tied to
// the creating thread, so moving it to another thread is sound.
unsafe impl Send for Region {}

// SAFETY: `&Region` only gives out `&[u8]` and a `*const u8`; all mutation needs `&mut Region`.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes of zeroed memory.
    ///
    /// With `hugepages`, the mapping is first tried with 2 MiB pages (and rounded up to a
    /// multiple of 2 MiB); if that fails for any reason it is retried with normal pages. Check
    /// [`Region::is_hugepage`] for the outcome.
    ///
    /// # Errors
    ///
    /// `InvalidInput` wrapping [`RegionError::Empty`] or [`RegionError::TooLarge`]; the `mmap`
    /// error (`ENOMEM`); or, with `lock`, an error wrapping [`RegionError::Lock`] whose message
    /// names `RLIMIT_MEMLOCK` and `CAP_IPC_LOCK`.
    pub fn new(len: usize, options: RegionOptions) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                RegionError::Empty,
            ));
        }
        let too_large =
            || io::Error::new(io::ErrorKind::InvalidInput, RegionError::TooLarge { len });
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        if options.populate {
            flags |= libc::MAP_POPULATE;
        }
        let mut mapped = None;
        if options.hugepages {
            let huge_len = len
                .checked_next_multiple_of(HUGEPAGE_BYTES)
                .ok_or_else(too_large)?;
            // Failure (usually ENOMEM: no huge pages reserved) falls back to normal pages below.
            mapped = map_anonymous(huge_len, flags | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB)
                .ok()
                .map(|ptr| (ptr, huge_len, true));
        }
        let (ptr, mapped_len, hugepage) = match mapped {
            Some(m) => m,
            None => {
                let page = crate::cpu::page_size_bytes()? as usize;
                let page_len = len.checked_next_multiple_of(page).ok_or_else(too_large)?;
                (map_anonymous(page_len, flags)?, page_len, false)
            }
        };
        // Owned from here on, so every error path below unmaps through `Drop`.
        let mut region = Self {
            ptr,
            len,
            mapped_len,
            hugepage,
            locked: false,
        };
        if options.lock {
            region.lock()?;
        }
        Ok(region)
    }

    fn lock(&mut self) -> io::Result<()> {
        // SAFETY: `[ptr, ptr + mapped_len)` is a mapping we own; `mlock` only changes its
        // residency, not its contents or validity.
        let ret = syscall!(unsafe { libc::mlock(self.ptr.as_ptr().cast(), self.mapped_len) });
        match ret {
            Ok(_) => {
                self.locked = true;
                Ok(())
            }
            Err(source) => {
                let (soft, hard) = memlock_limit().unwrap_or((0, 0));
                let kind = source.kind();
                let err = RegionError::Lock {
                    len: self.mapped_len,
                    source,
                    soft,
                    hard,
                    cap_ipc_lock: has_cap_ipc_lock(),
                };
                Err(io::Error::new(kind, err))
            }
        }
    }

    /// The length in bytes the caller asked for, which is the length of the slices.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: regions cannot be empty. Present because clippy pairs it with `len`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The length actually mapped: `len` rounded up to the page size in use.
    pub fn mapped_len(&self) -> usize {
        self.mapped_len
    }

    /// Whether the region is backed by 2 MiB huge pages.
    pub fn is_hugepage(&self) -> bool {
        self.hugepage
    }

    /// Whether the region is locked in memory.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// The region as bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is non-null and page-aligned, and the first `len <= mapped_len` bytes
        // are mapped readable, initialised (zero-filled by the kernel or written through
        // `as_mut_slice`) and owned by `self`; the `&self` borrow prevents mutation meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The region as mutable bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`, and the mapping is writable; `&mut self` makes this the only
        // live view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The start address, for registering the region with the kernel (AF_XDP UMEM).
    ///
    /// The pointer is valid for `mapped_len()` bytes while `self` lives. Writing through it is
    /// the caller's (unsafe) business.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The start address for writing, valid for `mapped_len()` bytes while `self` lives.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `[ptr, ptr + mapped_len)` is exactly the mapping `mmap` returned (for huge
        // pages, a multiple of 2 MiB as `munmap` requires); no borrow of it can outlive `self`.
        // Unmapping also drops any `mlock`.
        let ret = syscall!(unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped_len) });
        // munmap of a mapping we own cannot fail; if it did we would only leak address space.
        debug_assert!(ret.is_ok(), "munmap failed: {ret:?}");
    }
}

/// `mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0)`.
fn map_anonymous(len: usize, flags: libc::c_int) -> io::Result<NonNull<u8>> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a null hint with no MAP_FIXED lets the kernel pick an unused range, so no existing
    // memory is replaced; the mapping is anonymous, so fd -1 and offset 0.
    let addr = syscall!(unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, -1, 0) })?;
    // mmap never returns null for a null hint (page 0 is reserved by mmap_min_addr).
    NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// The `RLIMIT_MEMLOCK` limit in bytes as `(soft, hard)`; `u64::MAX` means unlimited.
///
/// # Errors
///
/// Only if `getrlimit` fails, which it cannot for a valid resource.
pub fn memlock_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live, writable `rlimit` on our stack.
    syscall!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) })?;
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Whether this process holds `CAP_IPC_LOCK` in its effective set (`CapEff` in
/// `/proc/self/status`), which lets it lock memory beyond `RLIMIT_MEMLOCK`.
///
/// `false` if the file cannot be read or parsed.
pub fn has_cap_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| cap_eff_has(&s, CAP_IPC_LOCK))
}

fn cap_eff_has(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hugepages_free() -> u64 {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix("HugePages_Free:"))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    #[test]
    fn alloc_write_read() {
        let mut region = Region::new(10_000, RegionOptions::default()).unwrap();
        assert_eq!(region.len(), 10_000);
        assert!(region.mapped_len() >= 10_000);
        assert_eq!(region.as_ptr() as usize % 4096, 0);
        assert!(region.as_slice().iter().all(|&b| b == 0));
        for (i, b) in region.as_mut_slice().iter_mut().enumerate() {
            *b = i as u8;
        }
        assert!(region
            .as_slice()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == i as u8));
        assert!(!region.is_hugepage());
        assert!(!region.is_locked());
    }

    #[test]
    fn region_moves_between_threads() {
        let mut region = Region::new(
            4096,
            RegionOptions {
                populate: true,
                ..Default::default()
            },
        )
        .unwrap();
        region.as_mut_slice()[0] = 7;
        let region = std::thread::spawn(move || region).join().unwrap();
        assert_eq!(region.as_slice()[0], 7);
    }

    #[test]
    fn hugepages_or_fallback() {
        let options = RegionOptions {
            hugepages: true,
            populate: true,
            lock: false,
        };
        let expect_fallback = hugepages_free() == 0;
        let mut region = Region::new(3 * 1024 * 1024, options).unwrap();
        if expect_fallback {
            assert!(
                !region.is_hugepage(),
                "no huge pages are free, yet we got one"
            );
        }
        if region.is_hugepage() {
            assert_eq!(region.mapped_len(), 4 * 1024 * 1024);
        }
        region.as_mut_slice()[3 * 1024 * 1024 - 1] = 0xAB;
        assert_eq!(region.as_slice()[3 * 1024 * 1024 - 1], 0xAB);
    }

    #[test]
    fn lock_works_or_names_the_limit() {
        let options = RegionOptions {
            lock: true,
            ..Default::default()
        };
        match Region::new(64 * 1024, options) {
            Ok(region) => assert!(region.is_locked()),
            Err(e) => {
                let message = e.to_string();
                assert!(message.contains("RLIMIT_MEMLOCK"), "{message}");
                assert!(message.contains("CAP_IPC_LOCK"), "{message}");
            }
        }
    }

    #[test]
    fn lock_error_message_names_the_remedies() {
        let err = RegionError::Lock {
            len: 4096,
            source: io::Error::from_raw_os_error(libc::ENOMEM),
            soft: 8192,
            hard: 8192,
            cap_ipc_lock: false,
        };
        let message = err.to_string();
        assert!(
            message.contains("RLIMIT_MEMLOCK (now soft 8192"),
            "{message}"
        );
        assert!(message.contains("CAP_IPC_LOCK (held: false)"), "{message}");
    }

    #[test]
    fn empty_region_is_invalid() {
        let err = Region::new(0, RegionOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = Region::new(
            usize::MAX,
            RegionOptions {
                hugepages: true,
                ..Default::default()
            },
        );
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn memlock_limit_and_capability() {
        let (soft, hard) = memlock_limit().unwrap();
        assert!(soft <= hard);
        // Consistent with /proc/self/status whatever the privileges of the test run.
        let _ = has_cap_ipc_lock();
        assert!(cap_eff_has("Name:\tx\nCapEff:\t0000000000004000\n", 14));
        assert!(!cap_eff_has("CapEff:\t000001fffeffbfff\n", 14));
        assert!(!cap_eff_has("CapEff:\tzz\n", 14));
        assert!(!cap_eff_has("", 14));
    }
}
