//! The NIC queue trait: what an engine needs from a backend, and nothing more.
//!
//! A queue moves batches of buffers from the pool to the device and back. Two media exist:
//! [`Medium::Ethernet`] queues carry raw frames and the engine runs Melange's own stack over
//! them (AF_XDP, the simulator); [`Medium::Udp`] queues carry UDP payloads because the kernel
//! already did IP and UDP (the portable kernel-socket backend). Descriptors carry the peer
//! address for the latter; Ethernet queues ignore it.
//!
//! Ownership: `recv_batch` appends descriptors whose buffers the engine now owns;
//! `send_batch` takes every descriptor it is given, sent or not, and returns the buffers to
//! the pool itself (at once, or when the device reports completion), so no buffer is ever
//! lost between the two.

use melange_core::{PacketBuf, PacketPool};
use std::net::SocketAddrV4;
use std::os::fd::BorrowedFd;
use thiserror::Error;

/// What a queue's buffers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    /// Whole Ethernet frames; the engine runs the ARP/IPv4/ICMP/UDP stack.
    Ethernet,
    /// UDP payloads; the kernel did the rest.
    Udp,
}

/// A received buffer.
#[derive(Debug)]
pub struct RxDesc {
    /// The frame or payload; window = the received bytes.
    pub buf: PacketBuf,
    /// Sender (UDP medium only).
    pub peer: SocketAddrV4,
    /// Our port it arrived on (UDP medium only).
    pub local_port: u16,
}

/// A buffer to transmit.
#[derive(Debug)]
pub struct TxDesc {
    /// The frame or payload; window = the bytes to send.
    pub buf: PacketBuf,
    /// Destination (UDP medium only).
    pub peer: SocketAddrV4,
}

/// Errors a backend reports; the engine counts them and goes on.
#[derive(Debug, Error)]
pub enum NicError {
    /// The operating system refused an operation; the message says which. Transient errors
    /// are retried by the backend itself; this one is worth logging.
    #[error("{op}: {source}")]
    Os {
        /// The operation that failed.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The device handed back a descriptor that names no buffer of ours: a backend bug or a
    /// misbehaving kernel ring. The descriptor is dropped.
    #[error("bad descriptor from device: {0}")]
    BadDescriptor(&'static str),
}

/// One queue of a network device. See the module documentation for the ownership rules.
pub trait NicQueue {
    /// What the queue's buffers hold.
    fn medium(&self) -> Medium;
    /// Appends up to `max` received descriptors to `rx`, without blocking.
    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<RxDesc>,
        max: usize,
    ) -> Result<(), NicError>;
    /// Transmits and drains `tx`. Returns how many went out; the rest were dropped (and
    /// their buffers freed) by the backend, which counts why.
    fn send_batch(
        &mut self,
        pool: &mut PacketPool,
        tx: &mut Vec<TxDesc>,
    ) -> Result<usize, NicError>;
    /// A file descriptor that becomes readable when frames arrive, for engines that sleep
    /// when idle. `None` if the backend cannot wake a sleeper (the simulator).
    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>>;
    /// Returns every buffer the backend holds (posted receive buffers, frames in flight)
    /// to the pool, before the engine shuts down.
    fn release(&mut self, pool: &mut PacketPool);
}
