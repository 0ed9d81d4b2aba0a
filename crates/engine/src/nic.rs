//! The NIC queue trait: what Melange's stack needs from a device queue of raw Ethernet frames.
//!
//! A queue moves batches of frames from the pool to the device and back (AF_XDP, the
//! simulator, the fake NIC of the tests). Kernel sockets are not NIC queues: they serve the app
//! contract *above* the stack (see [`crate::transport`]), which is what lets the kernel
//! fallback carry TCP as well as UDP.
//!
//! # Ownership
//!
//! `recv_batch` appends frames the caller owns from then on. `send_batch` takes every frame
//! it is given, sent or not: frames the device transmits belong to it until they complete,
//! then go to [`PacketPool::release_tx`], which hands each back to its owner (the pool, or
//! the app that asked for its buffer back); frames it cannot take go there at once, marked as
//! dropped. So no frame is lost between the two, and `tx` is empty afterwards whatever happened.
//!
//! # Back-pressure
//!
//! [`NicQueue::tx_room`] says how many frames the device takes now. The stack builds packets
//! only when there is room (as quinn's `poll_transmit` and Pony Express do), so a full ring
//! refuses the app's send at once, with the buffer handed back, instead of building a frame
//! only to drop it.

use melange_core::{PacketBuf, PacketPool};
use std::fmt;
use std::os::fd::BorrowedFd;
use thiserror::Error;

/// What a device can do, so the stack knows what it may leave to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NicCaps {
    /// The device computes transmit checksums (never relied on yet: the stack always
    /// computes them, and a received checksum is never trusted).
    pub tx_checksum_offload: bool,
    /// Frames may span several buffers (AF_XDP multi-buffer); otherwise one frame, one buffer.
    pub multi_buffer: bool,
    /// The device reads and writes the pool's memory itself (zero-copy) rather than copying.
    pub zero_copy: bool,
    /// Largest frame, in bytes, the device sends or receives in one buffer.
    pub frame_len_max: usize,
}

/// The kind of a device error, for counting and rate-limited logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NicErrorKind {
    /// Receiving failed (a system call error).
    Receive,
    /// Transmitting failed (a system call error other than the device being down).
    Transmit,
    /// The device is down or gone (`ENETDOWN`, `ENXIO`, `ENODEV`): frames are dropped until
    /// it comes back.
    DeviceDown,
    /// The device handed back a descriptor that names no frame it holds: a backend bug or a
    /// misbehaving kernel ring. The descriptor is dropped.
    BadDescriptor,
    /// Waking the device (a kick or a wakeup call) failed.
    Wakeup,
}

impl NicErrorKind {
    /// Every kind, for reports.
    pub const ALL: [NicErrorKind; 5] = [
        NicErrorKind::Receive,
        NicErrorKind::Transmit,
        NicErrorKind::DeviceDown,
        NicErrorKind::BadDescriptor,
        NicErrorKind::Wakeup,
    ];
    /// A stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            NicErrorKind::Receive => "receive",
            NicErrorKind::Transmit => "transmit",
            NicErrorKind::DeviceDown => "device_down",
            NicErrorKind::BadDescriptor => "bad_descriptor",
            NicErrorKind::Wakeup => "wakeup",
        }
    }
}

/// An error a device reports; the engine counts it by kind and goes on. `Copy` and free of
/// allocation, so an error storm costs no memory.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub struct NicError {
    /// The kind.
    pub kind: NicErrorKind,
    /// The operation that failed, e.g. `"sendto (AF_XDP tx kick)"`.
    pub op: &'static str,
    /// The operating system's error number, if one caused it.
    pub errno: Option<i32>,
}

impl fmt::Display for NicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(errno) => write!(
                f,
                "{}: {} ({})",
                self.op,
                std::io::Error::from_raw_os_error(errno),
                self.kind.name()
            ),
            None => write!(f, "{} ({})", self.op, self.kind.name()),
        }
    }
}

impl NicError {
    /// An error from a system call; `ENETDOWN`, `ENXIO` and `ENODEV` count as
    /// [`NicErrorKind::DeviceDown`], others as `kind`.
    pub fn os(kind: NicErrorKind, op: &'static str, error: &std::io::Error) -> Self {
        let errno = error.raw_os_error();
        let kind = match errno {
            Some(errno) if is_device_down(errno) => NicErrorKind::DeviceDown,
            _ => kind,
        };
        Self { kind, op, errno }
    }
    /// An error with no system call behind it.
    pub fn new(kind: NicErrorKind, op: &'static str) -> Self {
        Self {
            kind,
            op,
            errno: None,
        }
    }
}

/// `ENETDOWN` (100), `ENXIO` (6) and `ENODEV` (19) on Linux.
fn is_device_down(errno: i32) -> bool {
    const ENXIO: i32 = 6;
    const ENODEV: i32 = 19;
    const ENETDOWN: i32 = 100;
    matches!(errno, ENETDOWN | ENXIO | ENODEV)
}

/// Device errors counted by kind, with the last one kept for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NicErrorCounts {
    counts: [u64; NicErrorKind::ALL.len()],
    last: Option<NicError>,
}

impl NicErrorCounts {
    /// Counts one error.
    pub fn record(&mut self, error: NicError) {
        self.counts[error.kind as usize] += 1;
        self.last = Some(error);
    }
    /// Errors of one kind.
    pub fn count(&self, kind: NicErrorKind) -> u64 {
        self.counts[kind as usize]
    }
    /// Errors of every kind.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    /// The most recent error.
    pub fn last(&self) -> Option<NicError> {
        self.last
    }
}

/// What a transmit came to: how many frames (a prefix of the batch) the device took, and the
/// error that stopped it, if one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// Frames the device took.
    pub sent: usize,
    /// The error that stopped the batch.
    pub error: Option<NicError>,
}

impl TxOutcome {
    /// Every one of `sent` frames taken, no error.
    pub fn sent(sent: usize) -> Self {
        Self { sent, error: None }
    }
}

/// One queue of a network device carrying raw Ethernet frames. See the module documentation
/// for the ownership rules.
pub trait NicQueue {
    /// What the device can do.
    fn caps(&self) -> NicCaps;
    /// Appends up to `max` received frames to `rx` (each window = the frame), without
    /// blocking.
    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<PacketBuf>,
        max: usize,
    ) -> Result<(), NicError>;
    /// Frames the device takes now without dropping any.
    fn tx_room(&self) -> usize;
    /// A hint for a spinning engine: false only when the device surely has nothing to
    /// receive right now (one load of a ring index, no system call), so the run loop can wait
    /// for input without a whole pass. The default, true, always runs the pass.
    fn rx_ready(&self) -> bool {
        true
    }
    /// Transmits and drains `tx`. The device takes a prefix of the batch (the first `sent`
    /// frames); the frames it did not take went to [`PacketPool::release_tx`] as dropped,
    /// counted by the backend. An error (the device went down mid-batch) comes with the count
    /// of frames taken before it.
    fn send_batch(&mut self, pool: &mut PacketPool, tx: &mut Vec<PacketBuf>) -> TxOutcome;
    /// A file descriptor that becomes readable when frames arrive, for engines that sleep
    /// when idle. `None` if the backend cannot wake a sleeper (the simulator).
    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Returns every frame the backend holds (posted receive buffers, frames in flight) to
    /// their owners, before the engine shuts down.
    fn release(&mut self, pool: &mut PacketPool);
}
