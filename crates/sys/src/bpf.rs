//! eBPF programs, maps and XDP links through the raw `bpf(2)` system call.
//!
//! # Why raw `bpf(2)`
//!
//! Melange's control plane owns one XDP program per interface and multiplexes Arrakis-style
//! filters through its maps. The program is assembled in Rust (`melange-bpf`), so all the
//! kernel has to do is verify it, hold its maps and attach it. That takes five commands of one
//! system call: `BPF_MAP_CREATE`, `BPF_MAP_{LOOKUP,UPDATE,DELETE}_ELEM`, `BPF_PROG_LOAD`,
//! `BPF_PROG_TEST_RUN` and `BPF_LINK_CREATE`. Linking libbpf (C, needs clang to build programs,
//! BTF and ELF loading we do not use) or pulling in aya (a large dependency tree built around
//! ELF objects) was rejected: each `bpf_attr` we need is a dozen fields, written out below as
//! `#[repr(C)]` prefixes of the kernel's `union bpf_attr` (include/uapi/linux/bpf.h). The kernel
//! accepts an attribute shorter than its own union and treats the missing tail as zero, so a
//! prefix is enough and stays valid on newer kernels.
//!
//! # Attachment by link
//!
//! [`XdpLink`] attaches with `BPF_LINK_CREATE`, not with the older netlink `IFLA_XDP` message.
//! A link is a file descriptor: when it is closed (the [`XdpLink`] is dropped, or the process
//! dies or is killed), the kernel detaches the program. A crashed control plane therefore never
//! leaves an interface steering packets into sockets that nobody drains, and a netlink-attached
//! program cannot silently replace ours (the kernel refuses with `EBUSY` while a link exists).
//!
//! # Safety contract
//!
//! Every call hands the kernel a pointer to one of the `#[repr(C)]` attribute structs below,
//! zero-initialised and then filled, together with its exact size. The structs have no
//! implicit padding (padding is a named field, and `const` assertions pin the sizes), because
//! Rust does not initialise padding and the kernel refuses attributes with stray non-zero
//! bytes after the last field it knows. Pointers inside an attribute
//! (keys, values, instructions, the license, log and test buffers) come from borrowed slices
//! whose lengths are checked *before* the call against what the kernel will read or write:
//! a map's key and value sizes are fixed at creation and recorded in [`Map`], and every
//! `lookup`/`update`/`delete` rejects a slice of the wrong length with
//! [`BpfError::KeySize`]/[`BpfError::ValueSize`] without entering the kernel. A per-CPU map
//! is the exception to "one value": the kernel copies `round_up(value_size, 8)` bytes for each
//! possible CPU, so [`Map::lookup`] and [`Map::update`] refuse such maps and
//! [`Map::lookup_per_cpu`] passes a buffer sized by the possible CPUs, counted once at the
//! map's creation from the list the kernel publishes in sysfs. Output buffers
//! (verifier log, test-run output) are passed with their real capacity, so the kernel never
//! writes past them. Descriptors returned by the kernel are wrapped in [`OwnedFd`] at once, so
//! each is closed exactly once; the kernel creates all of them close-on-exec.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

// `bpf(2)` commands (enum bpf_cmd).
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_MAP_GET_NEXT_KEY: u32 = 4;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_TEST_RUN: u32 = 10;
const BPF_LINK_CREATE: u32 = 28;

/// `enum bpf_attach_type`: `BPF_XDP`.
const BPF_XDP: u32 = 37;

/// `BPF_F_NO_PREALLOC`: LPM tries must be created with it.
pub const MAP_F_NO_PREALLOC: u32 = 1;

// XDP attach modes (include/uapi/linux/if_link.h).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The most instructions a program may have (`BPF_COMPLEXITY_LIMIT_INSNS`, for privileged
/// loaders).
pub const PROGRAM_INSNS_MAX: usize = 1_000_000;

/// Size of the verifier log buffer allocated when a load fails and is retried for diagnosis.
pub const VERIFIER_LOG_SIZE: usize = 1 << 20;

/// Length of the kernel's object names, including the terminating NUL (`BPF_OBJ_NAME_LEN`).
const OBJ_NAME_LEN: usize = 16;

/// `bpf_attr` for `BPF_MAP_CREATE` (a prefix of the kernel's struct).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; OBJ_NAME_LEN],
    map_ifindex: u32,
}

/// `bpf_attr` for `BPF_MAP_*_ELEM` and `BPF_MAP_GET_NEXT_KEY`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    /// The padding before `__aligned_u64 key`, spelt out so that it is zeroed: Rust leaves
    /// implicit padding uninitialised, and the kernel rejects non-zero bytes it does not know.
    _pad: u32,
    key: u64,
    /// `value`, or `next_key` for `BPF_MAP_GET_NEXT_KEY`.
    value: u64,
    flags: u64,
}

/// `bpf_attr` for `BPF_PROG_LOAD` (a prefix).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; OBJ_NAME_LEN],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// Tail padding, spelt out so that it is zeroed: the kernel's `CHECK_ATTR` fails the call
    /// with `EINVAL` if any byte after `batch_size` is non-zero, and Rust leaves implicit
    /// padding uninitialised.
    _pad: u32,
}

/// `bpf_attr` for `BPF_LINK_CREATE` (the common head plus a zeroed tail that covers the
/// per-attach-type union, which XDP does not use).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    tail: [u64; 4],
}

/// `struct xdp_md`, the context of an XDP program, as `BPF_PROG_TEST_RUN` takes it.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

// The layouts must match the kernel's byte for byte.
const _: () = assert!(std::mem::size_of::<MapElemAttr>() == 32);
const _: () = assert!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type) == 68);
const _: () = assert!(std::mem::offset_of!(TestRunAttr, batch_size) == 72);
const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);
const _: () = assert!(std::mem::size_of::<MapCreateAttr>() == 48);
const _: () = assert!(std::mem::size_of::<ProgLoadAttr>() == 72);
const _: () = assert!(std::mem::size_of::<LinkCreateAttr>() == 48);
const _: () = assert!(std::mem::offset_of!(MapCreateAttr, map_ifindex) == 44);
const _: () = assert!(std::mem::size_of::<XdpMd>() == 24);

/// Errors of the `bpf(2)` wrappers. Each variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The process lacks `CAP_BPF`/`CAP_SYS_ADMIN` (and `CAP_NET_ADMIN` for XDP). Run the
    /// control plane as root or grant it those capabilities.
    #[error(
        "{op}: permission denied; run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    )]
    Permission {
        /// The operation that was refused.
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The verifier rejected the program. The log says which instruction and why; fix the
    /// program (this is a bug in whoever generated it).
    #[error("the verifier rejected the program ({source}):\n{log}")]
    Verifier {
        /// The error `BPF_PROG_LOAD` returned.
        #[source]
        source: io::Error,
        /// The verifier log (`log_level` 1), possibly truncated to [`VERIFIER_LOG_SIZE`].
        log: String,
    },
    /// A key slice does not have the map's key size. A caller bug: pass exactly
    /// `key_size` bytes. No system call was made.
    #[error("key is {actual} bytes but the map's keys are {expected} bytes")]
    KeySize {
        /// The map's key size.
        expected: u32,
        /// The length passed.
        actual: usize,
    },
    /// A value slice does not have the map's value size. A caller bug: pass exactly
    /// `value_size` bytes. No system call was made.
    #[error("value is {actual} bytes but the map's values are {expected} bytes")]
    ValueSize {
        /// The map's value size.
        expected: u32,
        /// The length passed.
        actual: usize,
    },
    /// The map has no room for another key. Delete entries or create a larger map.
    #[error("the map is full ({max_entries} entries)")]
    MapFull {
        /// The map's capacity.
        max_entries: u32,
    },
    /// Another XDP program is already attached to the interface (by netlink, `ip link`, or
    /// another link). Remove it with `ip link set dev <name> xdp off` (or stop the process that
    /// holds its link), then attach again.
    #[error(
        "another XDP program is attached to {interface} ({source}); remove it with \
         `ip link set dev <name> xdp off` or stop the process that owns it"
    )]
    XdpBusy {
        /// The interface, by name and index.
        interface: String,
        /// `EBUSY` or `EEXIST` from the kernel.
        #[source]
        source: io::Error,
    },
    /// The interface (or the driver's native XDP support) does not exist. Check the name and
    /// namespace, or fall back to [`XdpMode::Generic`].
    #[error("{interface}: {source}; check the interface, or use generic XDP mode")]
    NoDevice {
        /// The interface, by name and index.
        interface: String,
        /// `ENODEV`, `EOPNOTSUPP` or `ENXIO` from the kernel.
        #[source]
        source: io::Error,
    },
    /// No interface has this name in the current network namespace.
    #[error("no interface named {name:?} in this network namespace")]
    UnknownInterface {
        /// The name looked up.
        name: String,
    },
    /// The test-run output buffer was too small for the packet the program produced. Pass a
    /// buffer of at least `needed` bytes.
    #[error("test-run output needs {needed} bytes, the buffer has {capacity}")]
    OutputTooSmall {
        /// Bytes the program's output packet has.
        needed: usize,
        /// Bytes the caller's buffer has.
        capacity: usize,
    },
    /// An argument is out of what the kernel accepts (empty or huge program, a NUL in the
    /// license, an oversized buffer). A caller bug; the message says which.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The number of possible CPUs, which sizes every per-CPU map lookup, could not be read
    /// from `/sys/devices/system/cpu/possible`. Mount sysfs (`mount -t sysfs sysfs /sys`), or
    /// use maps that are not per-CPU.
    #[error(
        "reading the possible CPUs from /sys/devices/system/cpu/possible: {detail}; mount \
         sysfs or use maps that are not per-CPU"
    )]
    PossibleCpus {
        /// What went wrong.
        detail: String,
    },
    /// Any other failure of a `bpf(2)` command; `op` names the command. Usually a resource
    /// limit (`ENOMEM`, `EMFILE`): report it and stop setting up.
    #[error("bpf {op}: {source}")]
    Syscall {
        /// The command that failed.
        op: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

impl BpfError {
    /// Classifies a kernel error of a command that has no more specific variant.
    fn from_io(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::Permission { op, source },
            _ => Self::Syscall { op, source },
        }
    }

    /// Whether this error means "not privileged enough", so that tests can skip cleanly.
    pub fn is_permission(&self) -> bool {
        matches!(self, Self::Permission { .. })
    }
}

/// Calls `bpf(cmd, attr, sizeof *attr)`.
///
/// # Safety
///
/// `A` must be the `bpf_attr` layout of `cmd`, and every pointer stored in `attr` must be
/// valid for the reads and writes the kernel makes through it for `cmd` (the lengths stored
/// next to each pointer). Descriptors stored in `attr` need only be integers: the kernel looks
/// them up and fails cleanly on a bad one.
unsafe fn bpf_call<A>(cmd: u32, attr: &mut A) -> io::Result<i64> {
    let size = std::mem::size_of::<A>() as libc::c_long;
    let ptr: *mut A = attr;
    // SAFETY: by this function's contract `attr` matches `cmd` and its embedded pointers are
    // valid; `ptr` and `size` describe exactly one live, writable `A`.
    syscall!(unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, ptr, size) })
}

/// Wraps a descriptor number the kernel just returned.
fn owned_fd(ret: i64) -> OwnedFd {
    let raw = RawFd::try_from(ret).expect("the kernel returns descriptors that fit in an int");
    // SAFETY: a successful `BPF_MAP_CREATE`, `BPF_PROG_LOAD` or `BPF_LINK_CREATE` returns a new
    // descriptor that nothing else in the process owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Copies `name` into a kernel object name: at most 15 bytes, NUL-terminated, and only the
/// characters the kernel accepts (alphanumerics, `_` and `.`); others become `_`.
fn obj_name(name: &str) -> [u8; OBJ_NAME_LEN] {
    let mut out = [0u8; OBJ_NAME_LEN];
    for (slot, b) in out.iter_mut().zip(name.bytes().take(OBJ_NAME_LEN - 1)) {
        *slot = if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' {
            b
        } else {
            b'_'
        };
    }
    out
}

/// Pointer-to-integer for attribute fields that carry a user-space address.
fn addr<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// The index of the interface `name` in the calling thread's network namespace.
///
/// # Errors
///
/// [`BpfError::UnknownInterface`] if there is none (or the name contains a NUL).
pub fn interface_index(name: &str) -> Result<u32, BpfError> {
    crate::netdev::ifindex(name).map_err(|_| BpfError::UnknownInterface {
        name: name.to_owned(),
    })
}

/// The kinds of program this crate loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgramType {
    /// `BPF_PROG_TYPE_XDP`, loaded with `expected_attach_type = BPF_XDP` so it can be attached
    /// to an interface by [`XdpLink::attach`].
    Xdp,
}

impl ProgramType {
    fn raw(self) -> u32 {
        match self {
            Self::Xdp => 6,
        }
    }

    fn expected_attach_type(self) -> u32 {
        match self {
            Self::Xdp => BPF_XDP,
        }
    }
}

/// A program the verifier accepted, owned through its descriptor.
///
/// Closing the descriptor (dropping the `Program`) does not detach it from anything it is
/// attached to: links and maps holding it keep their own references.
#[derive(Debug)]
pub struct Program {
    fd: OwnedFd,
    prog_type: ProgramType,
}

/// What one [`Program::test_run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (for XDP: `XDP_ABORTED` 0, `XDP_DROP` 1, `XDP_PASS` 2,
    /// `XDP_TX` 3, `XDP_REDIRECT` 4).
    pub retval: u32,
    /// Bytes of the output packet written to `data_out`.
    pub data_out_len: usize,
    /// Mean run time per repetition, as the kernel measured it.
    pub duration_ns: u32,
}

/// The parts of `struct xdp_md` a test run can set.
///
/// `rx_queue_index` is only accepted together with a real `ingress_ifindex` whose device has
/// that many receive queues; the loopback device (ifindex 1 in every namespace) has queue 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpTestContext {
    /// The interface the packet "arrived" on, or 0 for none.
    pub ingress_ifindex: u32,
    /// The receive queue it "arrived" on.
    pub rx_queue_index: u32,
}

impl Program {
    /// Loads `insns` (raw 8-byte instructions in the kernel's `struct bpf_insn` layout, as
    /// `melange-bpf`'s assembler produces them) into the verifier.
    ///
    /// The first attempt runs without a log, which is faster; if it fails, the load is retried
    /// once with a [`VERIFIER_LOG_SIZE`] log at `log_level` 1 and the log is returned in
    /// [`BpfError::Verifier`].
    ///
    /// # Errors
    ///
    /// [`BpfError::Verifier`] when the program is rejected, [`BpfError::Permission`] without
    /// privileges, [`BpfError::InvalidArgument`] for an empty or oversized program or a license
    /// containing NUL.
    pub fn load(prog_type: ProgramType, insns: &[u64], license: &str) -> Result<Self, BpfError> {
        Self::load_named(prog_type, insns, license, "melange")
    }

    /// [`Program::load`] with a name (at most 15 characters are kept) shown by `bpftool prog`
    /// and `ip link`.
    ///
    /// # Errors
    ///
    /// As [`Program::load`].
    pub fn load_named(
        prog_type: ProgramType,
        insns: &[u64],
        license: &str,
        name: &str,
    ) -> Result<Self, BpfError> {
        if insns.is_empty() || insns.len() > PROGRAM_INSNS_MAX {
            return Err(BpfError::InvalidArgument(
                "a program has 1 to PROGRAM_INSNS_MAX instructions",
            ));
        }
        let license = CString::new(license)
            .map_err(|_| BpfError::InvalidArgument("the license contains a NUL byte"))?;
        let mut attr = ProgLoadAttr {
            prog_type: prog_type.raw(),
            insn_cnt: insns.len() as u32,
            insns: addr(insns.as_ptr()),
            license: addr(license.as_ptr()),
            prog_name: obj_name(name),
            expected_attach_type: prog_type.expected_attach_type(),
            ..ProgLoadAttr::default()
        };
        // SAFETY: `attr` is the BPF_PROG_LOAD layout; `insns` points at `insn_cnt` live
        // 8-byte instructions and `license` at a NUL-terminated string, both borrowed for the
        // call and only read; there is no log buffer (`log_buf` 0, `log_size` 0).
        let first = unsafe { bpf_call(BPF_PROG_LOAD, &mut attr) };
        let first_err = match first {
            Ok(ret) => {
                return Ok(Self {
                    fd: owned_fd(ret),
                    prog_type,
                })
            }
            Err(e) => e,
        };
        if matches!(first_err.raw_os_error(), Some(libc::EPERM)) {
            return Err(BpfError::from_io("BPF_PROG_LOAD", first_err));
        }
        // Retry with a log. This allocation happens only on the error path, at set-up time.
        let mut log = vec![0u8; VERIFIER_LOG_SIZE];
        attr.log_level = 1;
        attr.log_size = log.len() as u32;
        attr.log_buf = addr(log.as_mut_ptr());
        // SAFETY: as above, and `log_buf` points at `log_size` writable bytes of `log`, which
        // lives until after the call; the kernel writes at most `log_size` bytes there.
        let second = unsafe { bpf_call(BPF_PROG_LOAD, &mut attr) };
        match second {
            // The program loaded the second time (a transient failure such as ENOMEM).
            Ok(ret) => Ok(Self {
                fd: owned_fd(ret),
                prog_type,
            }),
            Err(source) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let log = String::from_utf8_lossy(&log[..end]).into_owned();
                if log.is_empty() {
                    Err(BpfError::from_io("BPF_PROG_LOAD", source))
                } else {
                    Err(BpfError::Verifier { source, log })
                }
            }
        }
    }

    /// The program's type.
    pub fn prog_type(&self) -> ProgramType {
        self.prog_type
    }

    /// Runs the program once per repetition on a copy of `data_in` in the kernel
    /// (`BPF_PROG_TEST_RUN`) and copies the resulting packet to `data_out`.
    ///
    /// Nothing is transmitted or redirected: a program that returns `XDP_REDIRECT` just
    /// reports it in [`TestRun::retval`]. The kernel requires at least an Ethernet header
    /// (14 bytes) of input for XDP.
    ///
    /// # Errors
    ///
    /// [`BpfError::OutputTooSmall`] if `data_out` cannot hold the output (an empty `data_out`
    /// discards it instead); [`BpfError::Syscall`] with `EINVAL` for input the kernel refuses.
    pub fn test_run(
        &self,
        data_in: &[u8],
        data_out: &mut [u8],
        repeat: u32,
    ) -> Result<TestRun, BpfError> {
        self.run_test(data_in, data_out, repeat, None)
    }

    /// [`Program::test_run`] with an XDP context, to set the ingress interface and receive
    /// queue the program sees.
    ///
    /// # Errors
    ///
    /// As [`Program::test_run`]; also `ENODEV`/`EINVAL` (as [`BpfError::Syscall`]) if the
    /// interface does not exist or has no such queue.
    pub fn test_run_xdp(
        &self,
        data_in: &[u8],
        data_out: &mut [u8],
        repeat: u32,
        ctx: XdpTestContext,
    ) -> Result<TestRun, BpfError> {
        self.run_test(data_in, data_out, repeat, Some(ctx))
    }

    fn run_test(
        &self,
        data_in: &[u8],
        data_out: &mut [u8],
        repeat: u32,
        ctx: Option<XdpTestContext>,
    ) -> Result<TestRun, BpfError> {
        let size_in = u32::try_from(data_in.len())
            .map_err(|_| BpfError::InvalidArgument("test input larger than 4 GiB"))?;
        let size_out = u32::try_from(data_out.len())
            .map_err(|_| BpfError::InvalidArgument("test output larger than 4 GiB"))?;
        let md = ctx.map(|c| XdpMd {
            // The kernel insists that a supplied context describe the input exactly.
            data: 0,
            data_end: size_in,
            ingress_ifindex: c.ingress_ifindex,
            rx_queue_index: c.rx_queue_index,
            ..XdpMd::default()
        });
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: size_in,
            data_in: addr(data_in.as_ptr()),
            data_size_out: size_out,
            data_out: if data_out.is_empty() {
                0
            } else {
                addr(data_out.as_mut_ptr())
            },
            repeat,
            ..TestRunAttr::default()
        };
        if let Some(md) = &md {
            attr.ctx_size_in = std::mem::size_of::<XdpMd>() as u32;
            attr.ctx_in = addr(md);
        }
        // SAFETY: `attr` is the BPF_PROG_TEST_RUN layout; `data_in` (read only) and `data_out`
        // (written, at most `data_size_out` bytes, or not at all when the pointer is 0) are
        // live borrowed slices with exactly the lengths given; `ctx_in`, when set, points at
        // `md`, a live `xdp_md` of `ctx_size_in` bytes that the kernel only reads; `ctx_out`
        // is 0. The program descriptor is owned by `self`.
        let ret = unsafe { bpf_call(BPF_PROG_TEST_RUN, &mut attr) };
        match ret {
            Ok(_) => Ok(TestRun {
                retval: attr.retval,
                data_out_len: if data_out.is_empty() {
                    0
                } else {
                    attr.data_size_out as usize
                },
                duration_ns: attr.duration,
            }),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Err(BpfError::OutputTooSmall {
                needed: attr.data_size_out as usize,
                capacity: data_out.len(),
            }),
            Err(e) => Err(BpfError::from_io("BPF_PROG_TEST_RUN", e)),
        }
    }
}

impl AsFd for Program {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Program {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The kinds of map this crate creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_ARRAY`: keys are `u32` indices below `max_entries`, all present, zeroed
    /// at creation; entries cannot be deleted.
    Array,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`: a [`MapKind::Array`] with one value per possible CPU
    /// under each key. A program sees only its own CPU's value, so it can count with a plain
    /// add and no shared cache line; user space reads every CPU's value at once with
    /// [`Map::lookup_per_cpu`] ([`Map::lookup`] and [`Map::update`] refuse these maps, whose
    /// kernel buffers are larger than one value).
    PerCpuArray,
    /// `BPF_MAP_TYPE_LPM_TRIE`: keys are `{prefixlen: u32 (host order), data: [u8]}`, lookups
    /// find the longest matching prefix. Always created with [`MAP_F_NO_PREALLOC`].
    LpmTrie,
    /// `BPF_MAP_TYPE_DEVMAP`: `u32` index to interface index, for `bpf_redirect_map`.
    DevMap,
    /// `BPF_MAP_TYPE_XSKMAP`: `u32` index to AF_XDP socket (the value written is the socket's
    /// descriptor, see [`Map::update_fd`]; user space cannot read entries back).
    XskMap,
}

impl MapKind {
    fn raw(self) -> u32 {
        match self {
            Self::Hash => 1,
            Self::Array => 2,
            Self::PerCpuArray => 6,
            Self::LpmTrie => 11,
            Self::DevMap => 14,
            Self::XskMap => 17,
        }
    }

    /// Whether the kernel keeps one value per possible CPU under each key, so that a
    /// user-space lookup copies `round_up(value_size, 8) * possible CPUs` bytes.
    pub fn is_per_cpu(self) -> bool {
        matches!(self, Self::PerCpuArray)
    }
}

/// The file that lists the CPUs the kernel may ever bring online (`cpu_possible_mask`).
const CPU_POSSIBLE_PATH: &str = "/sys/devices/system/cpu/possible";

/// The number of CPUs in a kernel CPU list such as `0-3,6,8-9` (the format of
/// `/sys/devices/system/cpu/possible`, trailing newline allowed), or `None` if it is not one.
///
/// The kernel lays out a per-CPU lookup as one value for each CPU of `cpu_possible_mask`
/// (`for_each_possible_cpu`), so the count of CPUs listed is what sizes the buffer, whatever
/// the gaps between them. libbpf's `libbpf_num_possible_cpus` counts the same way.
fn parse_cpu_list(list: &str) -> Option<usize> {
    let mut count = 0usize;
    for range in list.trim_end_matches('\n').split(',') {
        let (first, last) = match range.split_once('-') {
            Some((first, last)) => (first.parse::<usize>().ok()?, last.parse::<usize>().ok()?),
            None => {
                let cpu = range.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if first > last {
            return None;
        }
        count = count.checked_add(last - first + 1)?;
    }
    Some(count)
}

/// The number of possible CPUs, as the kernel counts them for per-CPU maps: the CPUs listed
/// in `/sys/devices/system/cpu/possible`, which include offline and hot-pluggable ones.
///
/// # Errors
///
/// [`BpfError::PossibleCpus`] if the file cannot be read or parsed (no sysfs mounted).
pub fn possible_cpus() -> Result<usize, BpfError> {
    let list = std::fs::read_to_string(CPU_POSSIBLE_PATH).map_err(|e| BpfError::PossibleCpus {
        detail: e.to_string(),
    })?;
    match parse_cpu_list(&list) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(BpfError::PossibleCpus {
            detail: format!("not a CPU list: {list:?}"),
        }),
    }
}

/// Every CPU's value of one key of a per-CPU map, as [`Map::lookup_per_cpu`] read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerCpuValues {
    /// The kernel's buffer: `cpus` slots of `stride` bytes, each value at a slot's start.
    buf: Vec<u8>,
    /// `round_up(value_size, 8)`: the kernel copies each CPU's value into an 8-byte
    /// aligned slot (`bpf_map_value_size`).
    stride: usize,
    value_size: usize,
}

impl PerCpuValues {
    /// The number of values: one per possible CPU.
    pub fn len(&self) -> usize {
        self.buf.len() / self.stride
    }

    /// Whether there are no values (never, since a machine has a CPU).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The value of the `i`-th possible CPU (the `i`-th CPU listed in
    /// `/sys/devices/system/cpu/possible`, which is CPU `i` when the list has no gaps), of
    /// the map's value size; `None` past the last CPU.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let start = i.checked_mul(self.stride)?;
        self.buf.get(start..start.checked_add(self.value_size)?)
    }

    /// The values in CPU order, each of the map's value size.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.buf
            .chunks_exact(self.stride)
            .map(|slot| &slot[..self.value_size])
    }
}

/// How [`Map::update`] treats an existing or missing key (`BPF_ANY`, `BPF_NOEXIST`,
/// `BPF_EXIST`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateMode {
    /// Create or replace.
    #[default]
    Any,
    /// Create only; fail with `EEXIST` if present.
    NoExist,
    /// Replace only; fail with `ENOENT` if absent.
    Exist,
}

impl UpdateMode {
    fn raw(self) -> u64 {
        match self {
            Self::Any => 0,
            Self::NoExist => 1,
            Self::Exist => 2,
        }
    }
}

/// A BPF map owned through its descriptor, with its key and value sizes remembered so that
/// every access can be checked before the kernel sees the buffers.
#[derive(Debug)]
pub struct Map {
    fd: OwnedFd,
    kind: MapKind,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    /// Values under each key: the possible CPUs for a per-CPU kind, read once at creation
    /// (the kernel never changes `cpu_possible_mask` after boot), else 1.
    cpus: usize,
}

impl Map {
    /// Creates a map. `flags` are `BPF_F_*` creation flags; [`MAP_F_NO_PREALLOC`] is added
    /// for [`MapKind::LpmTrie`], which requires it.
    ///
    /// # Errors
    ///
    /// [`BpfError::InvalidArgument`] for zero sizes; [`BpfError::Syscall`] with `EINVAL` for a
    /// combination the kernel refuses (for example an LPM key shorter than 5 bytes, an array
    /// key that is not 4 bytes); [`BpfError::Permission`] without privileges.
    pub fn create(
        kind: MapKind,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
    ) -> Result<Self, BpfError> {
        Self::create_named(kind, key_size, value_size, max_entries, flags, "melange")
    }

    /// [`Map::create`] with a name (at most 15 characters are kept) shown by `bpftool map`.
    ///
    /// # Errors
    ///
    /// As [`Map::create`].
    pub fn create_named(
        kind: MapKind,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        flags: u32,
        name: &str,
    ) -> Result<Self, BpfError> {
        if key_size == 0 || value_size == 0 || max_entries == 0 {
            return Err(BpfError::InvalidArgument(
                "map key size, value size and entries must be non-zero",
            ));
        }
        let map_flags = match kind {
            MapKind::LpmTrie => flags | MAP_F_NO_PREALLOC,
            _ => flags,
        };
        let cpus = if kind.is_per_cpu() {
            possible_cpus()?
        } else {
            1
        };
        let mut attr = MapCreateAttr {
            map_type: kind.raw(),
            key_size,
            value_size,
            max_entries,
            map_flags,
            map_name: obj_name(name),
            ..MapCreateAttr::default()
        };
        // SAFETY: `attr` is the BPF_MAP_CREATE layout and holds no pointers.
        let ret = unsafe { bpf_call(BPF_MAP_CREATE, &mut attr) }
            .map_err(|e| BpfError::from_io("BPF_MAP_CREATE", e))?;
        Ok(Self {
            fd: owned_fd(ret),
            kind,
            key_size,
            value_size,
            max_entries,
            cpus,
        })
    }

    /// The map's kind.
    pub fn kind(&self) -> MapKind {
        self.kind
    }

    /// Bytes per key.
    pub fn key_size(&self) -> u32 {
        self.key_size
    }

    /// Bytes per value (per CPU's value, for a per-CPU map).
    pub fn value_size(&self) -> u32 {
        self.value_size
    }

    /// The map's capacity.
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn check_key(&self, key: &[u8]) -> Result<(), BpfError> {
        if key.len() != self.key_size as usize {
            return Err(BpfError::KeySize {
                expected: self.key_size,
                actual: key.len(),
            });
        }
        Ok(())
    }

    /// Checks a buffer for one value, refusing per-CPU maps, whose kernel buffer holds one
    /// value per CPU (see [`Map::lookup_per_cpu`]).
    fn check_value(&self, value: &[u8]) -> Result<(), BpfError> {
        if self.kind.is_per_cpu() {
            return Err(BpfError::InvalidArgument(
                "a per-CPU map holds one value per CPU: read it with lookup_per_cpu",
            ));
        }
        if value.len() != self.value_size as usize {
            return Err(BpfError::ValueSize {
                expected: self.value_size,
                actual: value.len(),
            });
        }
        Ok(())
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    ///
    /// [`BpfError::KeySize`]/[`BpfError::ValueSize`] (no system call made);
    /// [`BpfError::InvalidArgument`] for a per-CPU map, whose update would take one value per
    /// CPU (no system call made); [`BpfError::MapFull`]; [`BpfError::Syscall`] with
    /// `EEXIST`/`ENOENT` per `mode`, `E2BIG`
    /// for an array index out of range, `EINVAL` for an LPM prefix longer than the key, and
    /// for XSKMAP a descriptor that is not a bound AF_XDP socket.
    pub fn update(&self, key: &[u8], value: &[u8], mode: UpdateMode) -> Result<(), BpfError> {
        self.check_key(key)?;
        self.check_value(value)?;
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: addr(key.as_ptr()),
            value: addr(value.as_ptr()),
            flags: mode.raw(),
            ..MapElemAttr::default()
        };
        // SAFETY: `attr` is the BPF_MAP_UPDATE_ELEM layout; `key` and `value` are live slices
        // of exactly the map's key and value sizes (checked above), which the kernel reads.
        let ret = unsafe { bpf_call(BPF_MAP_UPDATE_ELEM, &mut attr) };
        match ret {
            Ok(_) => Ok(()),
            Err(e)
                if e.raw_os_error() == Some(libc::E2BIG)
                    && !matches!(self.kind, MapKind::Array) =>
            {
                Err(BpfError::MapFull {
                    max_entries: self.max_entries,
                })
            }
            Err(e) => Err(BpfError::from_io("BPF_MAP_UPDATE_ELEM", e)),
        }
    }

    /// Sets `key` to a descriptor, such as an AF_XDP socket in a [`MapKind::XskMap`]. (A
    /// [`MapKind::DevMap`] holds interface indices, not descriptors: use [`Map::update`].) The
    /// kernel takes its own reference to the object, so closing `fd` afterwards is fine.
    ///
    /// # Errors
    ///
    /// As [`Map::update`]; the map's values must be 4 bytes.
    pub fn update_fd(&self, key: &[u8], fd: BorrowedFd<'_>) -> Result<(), BpfError> {
        let raw = fd.as_raw_fd() as u32;
        self.update(key, &raw.to_ne_bytes(), UpdateMode::Any)
    }

    /// Copies the value of `key` into `value`. Returns `false` if the key is absent.
    ///
    /// # Errors
    ///
    /// [`BpfError::KeySize`]/[`BpfError::ValueSize`] (no system call made);
    /// [`BpfError::InvalidArgument`] for a per-CPU map (use [`Map::lookup_per_cpu`]; no system
    /// call made); [`BpfError::Syscall`] with `EOPNOTSUPP` for maps whose values user space
    /// cannot read (XSKMAP).
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool, BpfError> {
        self.check_key(key)?;
        self.check_value(value)?;
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: addr(key.as_ptr()),
            value: addr(value.as_mut_ptr()),
            ..MapElemAttr::default()
        };
        // SAFETY: `attr` is the BPF_MAP_LOOKUP_ELEM layout; `key` (read) and `value` (written)
        // are live slices of exactly the map's key and value sizes (checked above). The map is
        // not per-CPU (`check_value` refused those), so the kernel writes `value_size` bytes,
        // not one value per CPU.
        let ret = unsafe { bpf_call(BPF_MAP_LOOKUP_ELEM, &mut attr) };
        match ret {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(BpfError::from_io("BPF_MAP_LOOKUP_ELEM", e)),
        }
    }

    /// Every possible CPU's value of `key` in a per-CPU map ([`MapKind::PerCpuArray`]), or
    /// `None` if the key is absent (an index past `max_entries`). Sum or inspect them; the
    /// kernel copies them one CPU at a time while programs may still be writing, so the set
    /// is not one instant's snapshot.
    ///
    /// # Errors
    ///
    /// [`BpfError::InvalidArgument`] for a map that is not per-CPU (use [`Map::lookup`]);
    /// [`BpfError::KeySize`] (no system call made); [`BpfError::Syscall`] as for
    /// [`Map::lookup`].
    pub fn lookup_per_cpu(&self, key: &[u8]) -> Result<Option<PerCpuValues>, BpfError> {
        if !self.kind.is_per_cpu() {
            return Err(BpfError::InvalidArgument(
                "lookup_per_cpu needs a per-CPU map: use lookup",
            ));
        }
        self.check_key(key)?;
        // `bpf_map_value_size`: round_up(value_size, 8) * num_possible_cpus().
        let stride = (self.value_size as usize).next_multiple_of(8);
        let len = stride
            .checked_mul(self.cpus)
            .ok_or(BpfError::InvalidArgument(
                "a per-CPU value times the possible CPUs overflows the address space",
            ))?;
        let mut buf = vec![0u8; len];
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: addr(key.as_ptr()),
            value: addr(buf.as_mut_ptr()),
            ..MapElemAttr::default()
        };
        // SAFETY: `attr` is the BPF_MAP_LOOKUP_ELEM layout; `key` is a live slice of exactly
        // the map's key size (checked above), which the kernel reads. For a per-CPU map the
        // kernel writes `round_up(value_size, 8)` bytes for each CPU of `cpu_possible_mask`
        // (`bpf_map_value_size`, `bpf_percpu_array_copy`): `buf` is that long, since
        // `self.cpus` counts the CPUs of the same mask as sysfs lists it.
        let ret = unsafe { bpf_call(BPF_MAP_LOOKUP_ELEM, &mut attr) };
        match ret {
            Ok(_) => Ok(Some(PerCpuValues {
                buf,
                stride,
                value_size: self.value_size as usize,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(BpfError::from_io("BPF_MAP_LOOKUP_ELEM", e)),
        }
    }

    /// Removes `key`. Returns `false` if it was absent.
    ///
    /// # Errors
    ///
    /// [`BpfError::KeySize`] (no system call made); [`BpfError::Syscall`] with `EINVAL` for
    /// arrays, whose entries cannot be deleted (write zeroes instead).
    pub fn delete(&self, key: &[u8]) -> Result<bool, BpfError> {
        self.check_key(key)?;
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: addr(key.as_ptr()),
            ..MapElemAttr::default()
        };
        // SAFETY: `attr` is the BPF_MAP_DELETE_ELEM layout; `key` is a live slice of exactly
        // the map's key size (checked above), which the kernel reads.
        let ret = unsafe { bpf_call(BPF_MAP_DELETE_ELEM, &mut attr) };
        match ret {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(BpfError::from_io("BPF_MAP_DELETE_ELEM", e)),
        }
    }

    /// Writes the key after `key` (or the first key, for `None`) into `next_key`, for
    /// iterating a map. Returns `false` when there is no further key.
    ///
    /// # Errors
    ///
    /// [`BpfError::KeySize`] for either slice (no system call made).
    pub fn next_key(&self, key: Option<&[u8]>, next_key: &mut [u8]) -> Result<bool, BpfError> {
        if let Some(key) = key {
            self.check_key(key)?;
        }
        if next_key.len() != self.key_size as usize {
            return Err(BpfError::KeySize {
                expected: self.key_size,
                actual: next_key.len(),
            });
        }
        let mut attr = MapElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.map_or(0, |k| addr(k.as_ptr())),
            value: addr(next_key.as_mut_ptr()),
            ..MapElemAttr::default()
        };
        // SAFETY: `attr` is the BPF_MAP_GET_NEXT_KEY layout; `key` is 0 or a live slice of
        // the key size (read), `next_key` a live slice of the key size (written); both checked.
        let ret = unsafe { bpf_call(BPF_MAP_GET_NEXT_KEY, &mut attr) };
        match ret {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(BpfError::from_io("BPF_MAP_GET_NEXT_KEY", e)),
        }
    }
}

impl AsFd for Map {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Map {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Where an XDP program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before an `sk_buff` exists (`XDP_FLAGS_DRV_MODE`). veth supports it.
    Native,
    /// After the `sk_buff` is built (`XDP_FLAGS_SKB_MODE`): works on every device, slower.
    Generic,
}

impl XdpMode {
    fn flags(self) -> u32 {
        match self {
            Self::Native => XDP_FLAGS_DRV_MODE,
            Self::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// An XDP program attached to an interface through a BPF link.
///
/// The attachment lives exactly as long as the link's descriptor: dropping the `XdpLink`, or
/// the death of the process for any reason, detaches the program. No stale program is left
/// behind to steer traffic into sockets that no longer exist.
#[derive(Debug)]
pub struct XdpLink {
    fd: OwnedFd,
    ifindex: u32,
    mode: XdpMode,
}

impl XdpLink {
    /// Attaches `program` (of type [`ProgramType::Xdp`]) to interface `ifindex` of the calling
    /// thread's network namespace.
    ///
    /// # Errors
    ///
    /// [`BpfError::XdpBusy`] when another program is attached (`EBUSY`/`EEXIST`);
    /// [`BpfError::NoDevice`] when the interface does not exist or its driver lacks native XDP;
    /// [`BpfError::Permission`] without `CAP_NET_ADMIN`.
    pub fn attach(program: &Program, ifindex: u32, mode: XdpMode) -> Result<Self, BpfError> {
        if program.prog_type != ProgramType::Xdp {
            return Err(BpfError::InvalidArgument(
                "only XDP programs attach to interfaces",
            ));
        }
        let mut attr = LinkCreateAttr {
            prog_fd: program.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: mode.flags(),
            ..LinkCreateAttr::default()
        };
        // SAFETY: `attr` is the BPF_LINK_CREATE layout for XDP and holds no pointers; the
        // program descriptor is borrowed from `program` for the call.
        let ret = unsafe { bpf_call(BPF_LINK_CREATE, &mut attr) };
        match ret {
            Ok(ret) => Ok(Self {
                fd: owned_fd(ret),
                ifindex,
                mode,
            }),
            Err(source) => Err(match source.raw_os_error() {
                Some(libc::EBUSY) | Some(libc::EEXIST) => BpfError::XdpBusy {
                    interface: crate::netdev::describe_ifindex(ifindex),
                    source,
                },
                Some(libc::ENODEV) | Some(libc::EOPNOTSUPP) | Some(libc::ENXIO) => {
                    BpfError::NoDevice {
                        interface: crate::netdev::describe_ifindex(ifindex),
                        source,
                    }
                }
                _ => BpfError::from_io("BPF_LINK_CREATE", source),
            }),
        }
    }

    /// The interface the program is attached to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The mode it was attached in.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }
}

impl AsFd for XdpLink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `r0 = XDP_PASS; exit`.
    const PASS: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];

    /// Whether the kernel lets us use bpf(2). Without privileges, the tests print SKIPPED,
    /// except under CI (`CI` set), which runs as root and must not skip.
    fn privileged(test: &str) -> bool {
        match Map::create(MapKind::Array, 4, 4, 1, 0) {
            Ok(_) => true,
            Err(e) if e.is_permission() => crate::testenv::root_or_skip(test),
            Err(e) => panic!("{test}: creating a map failed: {e}"),
        }
    }

    fn frame() -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12] = 0x08;
        f
    }

    #[test]
    fn load_and_test_run_pass() {
        if !privileged("load_and_test_run_pass") {
            return;
        }
        let prog = Program::load(ProgramType::Xdp, &PASS, "GPL").unwrap();
        let input = frame();
        let mut out = vec![0u8; 128];
        let run = prog.test_run(&input, &mut out, 10).unwrap();
        assert_eq!(run.retval, 2);
        assert_eq!(run.data_out_len, input.len());
        assert_eq!(&out[..input.len()], &input[..]);
        let ctx = XdpTestContext {
            ingress_ifindex: 1,
            rx_queue_index: 0,
        };
        let run = prog.test_run_xdp(&input, &mut [], 1, ctx).unwrap();
        assert_eq!(run.retval, 2);
        assert_eq!(run.data_out_len, 0);
    }

    #[test]
    fn output_too_small_is_reported() {
        if !privileged("output_too_small_is_reported") {
            return;
        }
        let prog = Program::load(ProgramType::Xdp, &PASS, "GPL").unwrap();
        let mut out = [0u8; 20];
        match prog.test_run(&frame(), &mut out, 1) {
            Err(BpfError::OutputTooSmall { needed, capacity }) => {
                assert_eq!((needed, capacity), (60, 20));
            }
            other => panic!("expected OutputTooSmall, got {other:?}"),
        }
    }

    #[test]
    fn rejected_program_returns_the_log() {
        if !privileged("rejected_program_returns_the_log") {
            return;
        }
        // `exit` without setting r0: the verifier says "R0 !read_ok".
        let bad = [u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
        match Program::load(ProgramType::Xdp, &bad, "GPL") {
            Err(BpfError::Verifier { log, .. }) => {
                assert!(log.contains("R0"), "log: {log}");
            }
            other => panic!("expected a verifier error, got {other:?}"),
        }
    }

    #[test]
    fn empty_program_and_bad_license_are_rejected_early() {
        assert!(matches!(
            Program::load(ProgramType::Xdp, &[], "GPL"),
            Err(BpfError::InvalidArgument(_))
        ));
        assert!(matches!(
            Program::load(ProgramType::Xdp, &PASS, "G\0PL"),
            Err(BpfError::InvalidArgument(_))
        ));
    }

    #[test]
    fn hash_map_roundtrip() {
        if !privileged("hash_map_roundtrip") {
            return;
        }
        let map = Map::create(MapKind::Hash, 4, 8, 2, 0).unwrap();
        let mut value = [0u8; 8];
        assert!(!map.lookup(&7u32.to_ne_bytes(), &mut value).unwrap());
        map.update(&7u32.to_ne_bytes(), &42u64.to_ne_bytes(), UpdateMode::Any)
            .unwrap();
        assert!(map.lookup(&7u32.to_ne_bytes(), &mut value).unwrap());
        assert_eq!(u64::from_ne_bytes(value), 42);
        assert!(matches!(
            map.update(
                &7u32.to_ne_bytes(),
                &1u64.to_ne_bytes(),
                UpdateMode::NoExist
            ),
            Err(BpfError::Syscall { .. })
        ));
        map.update(&8u32.to_ne_bytes(), &1u64.to_ne_bytes(), UpdateMode::Any)
            .unwrap();
        assert!(matches!(
            map.update(&9u32.to_ne_bytes(), &1u64.to_ne_bytes(), UpdateMode::Any),
            Err(BpfError::MapFull { max_entries: 2 })
        ));
        let mut first = [0u8; 4];
        assert!(map.next_key(None, &mut first).unwrap());
        assert!(map.delete(&7u32.to_ne_bytes()).unwrap());
        assert!(!map.delete(&7u32.to_ne_bytes()).unwrap());
        assert!(!map.lookup(&7u32.to_ne_bytes(), &mut value).unwrap());
    }

    #[test]
    fn array_map_roundtrip() {
        if !privileged("array_map_roundtrip") {
            return;
        }
        let map = Map::create(MapKind::Array, 4, 4, 4, 0).unwrap();
        let mut value = [0xffu8; 4];
        // Array entries exist from the start, zeroed.
        assert!(map.lookup(&3u32.to_ne_bytes(), &mut value).unwrap());
        assert_eq!(value, [0; 4]);
        map.update(&3u32.to_ne_bytes(), &9u32.to_ne_bytes(), UpdateMode::Any)
            .unwrap();
        assert!(map.lookup(&3u32.to_ne_bytes(), &mut value).unwrap());
        assert_eq!(u32::from_ne_bytes(value), 9);
        // Out of range: absent on lookup, refused on update, and arrays refuse delete.
        assert!(!map.lookup(&4u32.to_ne_bytes(), &mut value).unwrap());
        assert!(map
            .update(&4u32.to_ne_bytes(), &9u32.to_ne_bytes(), UpdateMode::Any)
            .is_err());
        assert!(map.delete(&3u32.to_ne_bytes()).is_err());
    }

    #[test]
    fn lpm_trie_longest_prefix() {
        if !privileged("lpm_trie_longest_prefix") {
            return;
        }
        let map = Map::create(MapKind::LpmTrie, 8, 4, 16, 0).unwrap();
        let key = |len: u32, ip: [u8; 4]| {
            let mut k = [0u8; 8];
            k[..4].copy_from_slice(&len.to_ne_bytes());
            k[4..].copy_from_slice(&ip);
            k
        };
        map.update(&key(8, [10, 0, 0, 0]), &1u32.to_ne_bytes(), UpdateMode::Any)
            .unwrap();
        map.update(
            &key(24, [10, 1, 2, 0]),
            &2u32.to_ne_bytes(),
            UpdateMode::Any,
        )
        .unwrap();
        let mut value = [0u8; 4];
        assert!(map.lookup(&key(32, [10, 1, 2, 3]), &mut value).unwrap());
        assert_eq!(u32::from_ne_bytes(value), 2);
        assert!(map.lookup(&key(32, [10, 9, 9, 9]), &mut value).unwrap());
        assert_eq!(u32::from_ne_bytes(value), 1);
        assert!(!map.lookup(&key(32, [11, 0, 0, 1]), &mut value).unwrap());
        assert!(map.delete(&key(24, [10, 1, 2, 0])).unwrap());
        assert!(map.lookup(&key(32, [10, 1, 2, 3]), &mut value).unwrap());
        assert_eq!(u32::from_ne_bytes(value), 1);
    }

    #[test]
    fn size_mismatch_is_rejected_without_a_syscall() {
        // A `Map` around a descriptor that is not a map: had any of these calls reached the
        // kernel, it would have failed with EINVAL/EBADF (a `Syscall` error), not a size error.
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let map = Map {
            fd,
            kind: MapKind::Hash,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            cpus: 1,
        };
        let mut v8 = [0u8; 8];
        let mut v4 = [0u8; 4];
        assert!(matches!(
            map.lookup(&[0; 3], &mut v8),
            Err(BpfError::KeySize {
                expected: 4,
                actual: 3
            })
        ));
        assert!(matches!(
            map.lookup(&[0; 4], &mut v4),
            Err(BpfError::ValueSize {
                expected: 8,
                actual: 4
            })
        ));
        assert!(matches!(
            map.update(&[0; 5], &v8, UpdateMode::Any),
            Err(BpfError::KeySize { .. })
        ));
        assert!(matches!(
            map.update(&[0; 4], &[0; 9], UpdateMode::Any),
            Err(BpfError::ValueSize { .. })
        ));
        assert!(matches!(map.delete(&[]), Err(BpfError::KeySize { .. })));
        assert!(matches!(
            map.next_key(None, &mut v8),
            Err(BpfError::KeySize { .. })
        ));
        // And the control: a well-sized call does reach the kernel, which refuses the fd.
        assert!(matches!(
            map.lookup(&[0; 4], &mut v8),
            Err(BpfError::Syscall { .. } | BpfError::Permission { .. })
        ));
    }

    #[test]
    fn cpu_lists_count_every_listed_cpu() {
        assert_eq!(parse_cpu_list("0\n"), Some(1));
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list("0-127"), Some(128));
        for bad in ["", "\n", "a", "0-", "3-1", "0,,1", "-1", "0-1 "] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
        // This machine's list parses, and it has at least the CPUs that are online.
        assert!(possible_cpus().unwrap() >= crate::cpu::online_cpus());
    }

    /// One raw instruction, for the hand-assembled program below.
    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        u64::from(code)
            | u64::from(dst | (src << 4)) << 8
            | u64::from(off as u16) << 16
            | u64::from(imm as u32) << 32
    }

    /// An XDP program that adds 1 to the `u32` at key 1 of `map` (its own CPU's value, for
    /// a per-CPU map) and passes the packet.
    fn count_key_1(map: &Map) -> Vec<u64> {
        vec![
            insn(0x62, 10, 0, -4, 1),             // *(u32 *)(r10 - 4) = 1
            insn(0xbf, 2, 10, 0, 0),              // r2 = r10
            insn(0x07, 2, 0, 0, -4),              // r2 += -4
            insn(0x18, 1, 1, 0, map.as_raw_fd()), // r1 = map (ld_imm64, pseudo map fd)
            insn(0, 0, 0, 0, 0),                  //   (its second half)
            insn(0x85, 0, 0, 0, 1),               // call bpf_map_lookup_elem
            insn(0x15, 0, 0, 3, 0),               // if r0 == 0 goto +3
            insn(0x61, 1, 0, 0, 0),               // r1 = *(u32 *)(r0 + 0)
            insn(0x07, 1, 0, 0, 1),               // r1 += 1
            insn(0x63, 0, 1, 0, 0),               // *(u32 *)(r0 + 0) = r1
            insn(0xb7, 0, 0, 0, 2),               // r0 = XDP_PASS
            insn(0x95, 0, 0, 0, 0),               // exit
        ]
    }

    #[test]
    fn per_cpu_array_holds_one_value_per_cpu() {
        let test = "per_cpu_array_holds_one_value_per_cpu";
        if !privileged(test) {
            return;
        }
        // 4-byte values: the kernel pads each CPU's value to 8 bytes in the lookup buffer.
        let map = Map::create(MapKind::PerCpuArray, 4, 4, 2, 0).unwrap();
        let cpus = possible_cpus().unwrap();
        let values = map.lookup_per_cpu(&1u32.to_ne_bytes()).unwrap().unwrap();
        assert_eq!(values.len(), cpus);
        assert!(values.iter().all(|v| v == [0; 4]), "{values:?}");
        assert_eq!(map.lookup_per_cpu(&2u32.to_ne_bytes()).unwrap(), None);
        // One-value calls would hand the kernel too small a buffer: refused before the call.
        let mut v4 = [0u8; 4];
        for refused in [
            map.lookup(&1u32.to_ne_bytes(), &mut v4).map(drop),
            map.update(&1u32.to_ne_bytes(), &v4, UpdateMode::Any),
        ] {
            assert!(
                matches!(refused, Err(BpfError::InvalidArgument(m)) if m.contains("per-CPU")),
                "{refused:?}"
            );
        }
        assert!(matches!(
            Map::create(MapKind::Array, 4, 4, 1, 0)
                .unwrap()
                .lookup_per_cpu(&0u32.to_ne_bytes()),
            Err(BpfError::InvalidArgument(_))
        ));

        if crate::cpu::online_cpus() < 2 {
            crate::testenv::skip_or_fail(test, "needs two online CPUs");
            return;
        }
        let prog = Program::load(ProgramType::Xdp, &count_key_1(&map), "GPL").unwrap();
        // Runs on CPU 0, then on CPU 1: each run counts on the CPU it ran on.
        for (cpu, runs) in [(0, 3), (1, 5)] {
            std::thread::scope(|s| {
                s.spawn(|| {
                    crate::cpu::pin_current_thread(cpu).unwrap();
                    assert_eq!(prog.test_run(&frame(), &mut [], runs).unwrap().retval, 2);
                });
            });
        }
        let values = map.lookup_per_cpu(&1u32.to_ne_bytes()).unwrap().unwrap();
        let counts: Vec<u32> = values
            .iter()
            .map(|v| u32::from_ne_bytes(v.try_into().unwrap()))
            .collect();
        assert_eq!(&counts[..2], &[3, 5], "{counts:?}");
        assert!(counts[2..].iter().all(|&c| c == 0), "{counts:?}");
        assert_eq!(values.get(1), Some(&5u32.to_ne_bytes()[..]));
        assert_eq!(values.get(cpus), None);
        // Key 0 was never touched on any CPU.
        let zero = map.lookup_per_cpu(&0u32.to_ne_bytes()).unwrap().unwrap();
        assert!(zero.iter().all(|v| v == [0; 4]));
    }

    #[test]
    fn object_names_are_sanitised_and_truncated() {
        assert_eq!(&obj_name("melange")[..8], b"melange\0");
        let long = obj_name("a-very-long-name-indeed");
        assert_eq!(&long[..15], b"a_very_long_nam");
        assert_eq!(long[15], 0);
    }

    #[test]
    fn loopback_has_index_1() {
        assert_eq!(interface_index("lo").unwrap(), 1);
        assert!(matches!(
            interface_index("no-such-if0"),
            Err(BpfError::UnknownInterface { .. })
        ));
    }
}
