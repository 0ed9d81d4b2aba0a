//! What serves the app contract below the app: Melange's stack over a NIC queue, or kernel
//! sockets.
//!
//! The first engine had one trait, the NIC queue, with two media: raw frames for Melange's
//! stack, UDP payloads for kernel sockets. The kernel fallback then sat *below* the stack,
//! where it could never carry TCP (the kernel's TCP cannot be fed segments). Now the fallback
//! sits *above* it: a [`Transport`] serves the contract's commands (bind, send, later listen,
//! connect, ...) and produces its events, either with Melange's own stack over raw frames
//! ([`crate::StackTransport`] over any [`crate::NicQueue`]: AF_XDP, the simulator) or with
//! the kernel's sockets (`melange_runtime::KernelTransport`). The engine, the timers and the
//! apps are the same on both, and so are the events and commands an app sees.
//!
//! # Call order, each engine pass
//!
//! 1. [`Transport::poll_receive`]: take what arrived, at most `budget` units, as events.
//! 2. [`Transport::handle_timeout`] once `poll_at` has passed.
//! 3. The app runs; its commands reach [`Transport::bind_udp`], [`Transport::send_to`], ...
//!    at once, during `run_io`.
//! 4. [`Transport::flush`]: transmit what the pass queued, as one batch.
//!
//! A transport makes no assumption about time beyond the `now_ns` it is given.

use crate::nic::NicErrorCounts;
use melange_core::contract::{Command, CommandError, EventQueue, Outcome, Refused};
use melange_core::{BufChain, PacketPool, SocketId};
use melange_net::NetCounters;
use std::net::SocketAddrV4;
use std::os::fd::BorrowedFd;

/// Counters every transport keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// Frames (or datagrams, on kernel sockets; reads, on kernel TCP sockets) received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames (or datagrams; writes, on kernel TCP sockets) the device took for transmit.
    pub tx_packets: u64,
    /// Bytes the device took.
    pub tx_bytes: u64,
    /// Frames (or datagrams) handed to the device that it dropped.
    pub tx_dropped: u64,
    /// Sends refused at once because the device had no room (the app got its buffer back).
    pub tx_no_room: u64,
    /// Datagrams that arrived for the app while its event queue was full, dropped.
    pub rx_event_queue_full: u64,
    /// Device errors, by kind.
    pub errors: NicErrorCounts,
}

/// The part of an engine below the app. See the module documentation.
pub trait Transport {
    /// A short name for messages ("melange stack", "kernel sockets").
    fn name(&self) -> &'static str;

    /// Takes what arrived, turning it into events; at most `budget` frames or datagrams,
    /// and never more events than `events` has room for. Returns the frames or datagrams
    /// taken (the pass's work).
    fn poll_receive(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        events: &mut EventQueue,
        budget: usize,
    ) -> usize;

    /// The earliest time the transport has timer work (ARP retries), if any.
    fn poll_at(&self) -> Option<u64>;

    /// A hint for a spinning engine: false only when nothing surely arrived since the last
    /// pass (see [`crate::nic::NicQueue::rx_ready`]). The default, true, always runs the pass.
    fn rx_ready(&self) -> bool {
        true
    }

    /// Does the timer work due at `now_ns`.
    fn handle_timeout(&mut self, now_ns: u64, pool: &mut PacketPool);

    /// Binds a UDP port for the app.
    fn bind_udp(&mut self, port: u16) -> Result<SocketId, CommandError>;

    /// Unbinds a UDP socket.
    fn close_udp(&mut self, socket: SocketId) -> Result<(), CommandError>;

    /// Sends one datagram. The frame is built and queued for [`Transport::flush`] before
    /// this returns, or the send is refused with the buffers handed back. With `notify`, the
    /// buffers come back to the app when the device is done (the transport marks them with
    /// [`PacketPool::return_after_tx`]).
    fn send_to(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        socket: SocketId,
        to: SocketAddrV4,
        data: BufChain,
        notify: Option<u64>,
    ) -> Result<(), Refused>;

    /// Any other command (TCP, storage). The default refuses it as unsupported, giving its
    /// buffers back.
    fn submit(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        command: Command,
    ) -> Result<Outcome, Refused> {
        let _ = (now_ns, pool);
        let error = CommandError::Unsupported {
            command: command.name(),
            transport: self.name(),
        };
        Err(Refused {
            error,
            data: command.into_data(),
        })
    }

    /// Transmits everything queued in this pass.
    fn flush(&mut self, now_ns: u64, pool: &mut PacketPool);

    /// A file descriptor that becomes readable when something arrives, for engines that
    /// sleep when idle; `None` when the transport cannot wake a sleeper.
    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>>;

    /// The counters.
    fn counters(&self) -> TransportCounters;

    /// Takes a neighbour (`ip` is at `mac`) that the control plane learnt from a trusted
    /// source, such as the kernel's neighbour table for the address the engine shares with
    /// the kernel. Only a transport that runs its own ARP needs it; the default ignores it
    /// (on kernel sockets the kernel resolves neighbours itself).
    fn learn_neighbor(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        ip: std::net::Ipv4Addr,
        mac: melange_net::EthernetAddress,
    ) {
        let _ = (now_ns, pool, ip, mac);
    }

    /// The network stack's counters, for a transport that runs Melange's stack.
    fn stack_counters(&self) -> Option<NetCounters> {
        None
    }

    /// Returns every buffer the transport holds to its owner, before the engine shuts down.
    fn shutdown(&mut self, pool: &mut PacketPool);
}
