//! `melange-sys`: the one crate of Melange that talks to the kernel.
//!
//! # Why one crate
//!
//! Every system call and every piece of raw memory in Melange goes through this crate, and the
//! crate exposes only safe functions. The rest of the workspace is `#![forbid(unsafe_code)]`, so
//! an auditor who wants to know where memory safety can be lost reads these few files and
//! nothing else. The alternative, letting each crate call `libc` where it needs to, spreads the
//! safety argument over the whole tree and makes it impossible to review as a unit.
//!
//! # How a system call is made
//!
//! All calls go through the `syscall!` macro, which takes an `unsafe { libc::f(..) }` block
//! written at the call site and turns the C convention ("-1 and `errno`", or `MAP_FAILED` for
//! `mmap`) into [`std::io::Result`]. The `unsafe` keyword stays at the call site on purpose:
//! clippy's `undocumented_unsafe_blocks` then checks that *each* call carries its own
//! `// SAFETY:` comment, and `multiple_unsafe_ops_per_block` checks that nothing else is hiding
//! in the block. A macro of the `syscall!(f(a, b))` shape, which wraps the arguments in an
//! `unsafe` block it writes itself, was rejected: the comment would live once in the macro, and
//! an argument such as `*ptr` would be evaluated in an unsafe context without anyone noticing.
//!
//! # Safety contract
//!
//! Each public function and type is sound for every input a safe caller can construct. Where a
//! kernel call takes pointers into caller memory (the batched UDP calls), the ranges are checked
//! against the borrowed buffers *before* the kernel is called, and the error is
//! [`std::io::ErrorKind::InvalidInput`]. Types that own kernel objects own them through
//! [`std::os::fd::OwnedFd`] or an equivalent RAII guard, so a descriptor or mapping is released
//! exactly once. Memory the kernel reads and writes on its own schedule (an AF_XDP UMEM) is a
//! [`FrameRegion`]: it hands out one frame at a time, only frames not lent to the kernel, and
//! only this crate's ring operations lend and reclaim frames; no safe function returns a slice
//! over the whole of it.
//!
//! # Modules
//!
//! | module     | what it wraps                                                        |
//! |------------|----------------------------------------------------------------------|
//! | [`alloc_count`] | a counting global allocator, for tests that prove a path allocates nothing |
//! | [`bpf`]    | bpf(2): maps, program load, XDP links, test runs                     |
//! | [`netdev`] | interface index, MAC, MTU, queues and IPv4 address; network namespaces |
//! | [`neigh`]  | the kernel's IPv4 neighbour table, watched through route netlink      |
//! | [`process`]| child processes that die with their parent                           |
//! | [`clock`]  | `clock_gettime(CLOCK_MONOTONIC)` through the vDSO                    |
//! | [`cpu`]    | affinity, current CPU, CPU time of threads and processes, RSS        |
//! | [`epoll`]  | one wakeup descriptor for many sockets                               |
//! | [`eventfd`]| a non-blocking `eventfd` used to wake a polling thread               |
//! | [`poll`]   | `ppoll` over a handful of descriptors with a nanosecond timeout      |
//! | [`udp`]    | batched datagram I/O with `recvmmsg`/`sendmmsg`, no per-call alloc   |
//! | [`uring`]  | datagram I/O on io_uring: multishot receive, provided buffers, batched sends |
//! | [`mmap`]   | anonymous mappings, optionally huge-page backed and locked           |
//! | [`ring`]   | single-producer single-consumer record ring in one shareable block   |
//! | [`socket`] | TCP set-up std lacks: SO_REUSEPORT listeners, non-blocking connect, RST close, keepalive |
//! | [`frames`] | a mapping in frames, and the ledger of frames lent to the kernel     |
//! | [`xsk`]    | AF_XDP sockets: UMEM registration, the four rings, kicks, statistics |
//! | [`testenv`]| for tests: may this test skip here (root, tools), never under CI      |
#![deny(unsafe_op_in_unsafe_fn)]

/// Turns the result of one libc call into an `std::io::Result`.
///
/// Usage: `syscall!(unsafe { libc::close(fd) })`, with a `// SAFETY:` comment above the
/// statement. The block must contain exactly that one call (clippy enforces one unsafe operation
/// per block). A return value equal to the error sentinel of its type (see [`SyscallRet`]) becomes
/// `Err(io::Error::last_os_error())`, which reads `errno` immediately after the call and before
/// anything else can overwrite it; anything else is returned unchanged as `Ok`.
macro_rules! syscall {
    ($call:expr) => {{
        let ret = $call;
        if $crate::SyscallRet::is_error(ret) {
            Err(::std::io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }};
}

pub mod alloc_count;
pub mod bpf;
pub mod clock;
pub mod cpu;
pub mod epoll;
pub mod eventfd;
pub mod frames;
pub mod mmap;
pub mod neigh;
pub mod netdev;
pub mod poll;
pub mod process;
pub mod random;
pub mod ring;
pub mod socket;
pub mod testenv;
pub mod udp;
pub mod uring;
pub mod xsk;

pub use clock::monotonic_ns;
pub use cpu::{
    current_cpu, online_cpus, pin_current_thread, process_cpu_time_ns, process_cpu_time_of,
    rss_bytes, rss_bytes_of, thread_cpu_time_ns,
};
pub use eventfd::EventFd;
pub use frames::{FrameRegion, FrameRegionError, Lease};
pub use mmap::{has_cap_ipc_lock, memlock_limit, Region, RegionOptions};
pub use netdev::{enter_netns, LinkInfo, NetnsGuard, PacketSocket};
pub use poll::{wait_readable, wait_readable_mask, POLL_FDS_MAX};
pub use udp::{
    GatherSlot, RecvSlot, Segment, SendSlot, UdpBatchSocket, UdpSocketOptions, BATCH_MAX_LIMIT,
    SEND_SEGMENTS_MAX, UDP_PAYLOAD_MAX,
};
pub use uring::{Received, UringCounters, UringOptions, UringSendSlot, UringSocketId, UringUdp};
pub use xsk::{
    BindMode, BoundMode, Reclaimed, SocketConfig, TxKick, Umem, UmemConfig, XdpDesc, XskCounters,
    XskError, XskSocket, XskStatistics,
};

/// The error convention of a libc return type, used by `syscall!`.
///
/// Integer returns signal failure with `-1`; `mmap` signals it with `MAP_FAILED`. Keeping the
/// sentinel in a trait lets one macro serve both instead of a second, `mmap`-only helper.
pub(crate) trait SyscallRet: Copy {
    /// Whether this return value means "failed, see `errno`".
    fn is_error(self) -> bool;
}

impl SyscallRet for i32 {
    fn is_error(self) -> bool {
        self == -1
    }
}

impl SyscallRet for i64 {
    fn is_error(self) -> bool {
        self == -1
    }
}

impl SyscallRet for isize {
    fn is_error(self) -> bool {
        self == -1
    }
}

impl SyscallRet for *mut libc::c_void {
    fn is_error(self) -> bool {
        self == libc::MAP_FAILED
    }
}
