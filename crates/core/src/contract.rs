//! The contract between an engine and its application, v2: IX's `run_io`, with results the
//! app can act on in the same batch.
//!
//! # The pass
//!
//! An engine runs to completion: it takes a bounded batch from its transport (the NIC and
//! Melange's stack, or kernel sockets), turns it into [`Event`]s, and calls the app's
//! [`App::run_io`] once for the whole batch. One call per batch, not one per packet, is what
//! amortises the cost of crossing into the application (IX §3).
//!
//! # Commands run during `run_io`, and answer at once
//!
//! IX's `sendv` tells the app how many bytes the TCP window accepted, so the app keeps the
//! rest and waits for a `sent` event. The first contract queued commands and ran them after
//! `run_io` returned, so no command could answer anything. Two shapes were possible: give
//! every command an id and report each outcome as an event in the next batch, or let the
//! context reach the transport during `run_io` so that each call returns its outcome. We chose
//! the second: [`IoContext`] wraps the engine's [`Io`] implementation, which borrows the
//! stack, the pool, the timing wheel and the transmit batch for the duration of the call, so
//! `io.send_to(...)` has written the headers and queued the frame (or refused, handing the
//! buffer back) before it returns. Why: the common case (an echo, a request/response) needs
//! the outcome now, a deferred outcome forces every app to keep a table of commands in
//! flight, and the transmit batch still goes out as one batch at the end of the pass, so
//! nothing of IX's batching is lost. Service mode keeps the same semantics one ring hop away:
//! there the app's commands travel as fixed-layout records ([`crate::record`]) with a token,
//! the daemon executes them in order through this same [`Io`] interface, and each outcome
//! comes back as a completion record carrying that token. The results are the same; only the
//! moment the app sees them moves.
//!
//! # Buffers
//!
//! Buffers are lent zero-copy. A received datagram's [`BufChain`] belongs to the app until it
//! hands it back: by sending it (the stack writes headers into its headroom, so an echo reply
//! costs no copy), or by freeing it. A send whose command carries a `notify` token gives the
//! buffers *back to the app* when the device is done with them ([`Event::SendDone`] with
//! `data`), the shape TCP's zero-copy send uses too ([`Event::Sent`]): buffers can return to
//! their owner, not only to the pool. A received request spanning segments or fragments is a
//! chain.
//!
//! # Handles, timers, and what is reserved
//!
//! Sockets, connections, listeners, storage areas and timers are named by typed, generation
//! checked handles ([`crate::handle`]), so a stale handle is an error, never someone else's
//! object. Timers can be re-armed and cancelled in O(1), within a per-app quota.
//!
//! Events and commands are `#[non_exhaustive]`. The TCP shapes (listen, connect, send,
//! receive-done, close) and the storage shapes (read, write, flush and their completions) are
//! defined now so that the next transports plug into this contract without changing it; a
//! transport that does not serve one answers [`CommandError::Unsupported`] naming itself.

use crate::handle::{AreaId, ConnId, HandleError, ListenerId, SocketId, TimerId};
use crate::pool::{BufChain, PacketBuf, PoolError};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use thiserror::Error;

/// Something that happened, handed to the app in a batch.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A UDP datagram arrived on a socket the app bound. The app owns `data` now.
    Datagram {
        /// The socket it arrived on.
        socket: SocketId,
        /// The payload: one buffer, or a chain for a datagram larger than a frame.
        data: BufChain,
        /// Sender's address and port.
        from: SocketAddrV4,
        /// Our port it was sent to.
        local_port: u16,
    },
    /// A timer armed with [`IoContext::arm_timer`] reached its deadline. Its handle is stale
    /// from now on.
    Timer {
        /// The timer.
        timer: TimerId,
        /// The token given when arming.
        token: u64,
    },
    /// A send that asked to be told (its `notify` token) finished: the device is done with
    /// the buffers, which come back to the app in `data`, or the send failed after the
    /// command had been accepted (the next hop never answered ARP, say).
    SendDone {
        /// The token given with the send.
        token: u64,
        /// `Ok` once the device transmitted the datagram; the error otherwise.
        result: Result<(), SendError>,
        /// The buffers of the send, the app's again.
        data: Option<BufChain>,
    },
    /// A listener accepted a connection (TCP transport).
    Accepted {
        /// The listener.
        listener: ListenerId,
        /// The new connection.
        conn: ConnId,
        /// The peer.
        peer: SocketAddrV4,
    },
    /// A connection the app opened is established (TCP transport).
    Connected {
        /// The connection.
        conn: ConnId,
        /// The token given with [`Command::Connect`].
        token: u64,
    },
    /// A connection the app opened failed (TCP transport).
    ConnectFailed {
        /// The token given with [`Command::Connect`].
        token: u64,
        /// Why.
        reason: CloseReason,
    },
    /// Bytes arrived on a connection, lent zero-copy; give them back with
    /// [`Command::RecvDone`] to reopen the window (TCP transport).
    Recv {
        /// The connection.
        conn: ConnId,
        /// The segment payloads, in order.
        data: BufChain,
    },
    /// The peer acknowledged `bytes` more of what the app sent; the buffers that are fully
    /// acknowledged come back (TCP transport).
    Sent {
        /// The connection.
        conn: ConnId,
        /// Bytes newly acknowledged.
        bytes: u32,
        /// Buffers the stack no longer needs.
        data: Option<BufChain>,
    },
    /// The peer closed its sending side (TCP transport).
    PeerClosed {
        /// The connection.
        conn: ConnId,
    },
    /// A connection is gone; its handle is stale from now on (TCP transport).
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A storage operation completed (storage transport).
    StorageDone {
        /// The area.
        area: AreaId,
        /// The token given with the command.
        token: u64,
        /// Bytes read or written, or the error.
        result: Result<u32, StorageError>,
        /// The buffers: data read, or the app's buffers of a write, given back.
        data: Option<BufChain>,
    },
}

/// Why a connection ended or could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Both sides closed in order.
    Closed,
    /// The peer reset the connection.
    Reset,
    /// The peer stopped answering (retransmissions or keepalives ran out).
    TimedOut,
    /// The peer refused the connection.
    Refused,
    /// The app aborted the connection.
    Aborted,
}

/// Why a storage operation failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageError {
    /// The range lies outside the area; resize the area or fix the offset.
    #[error("range outside the storage area")]
    OutOfRange,
    /// The device reported an error (the errno); the data may not be durable.
    #[error("device error {0}")]
    Device(i32),
}

/// An option of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnOption {
    /// Disable Nagle's algorithm.
    NoDelay(bool),
    /// Keepalive probes after this much idle time; `None` disables them.
    KeepaliveNs(Option<u64>),
}

/// Something the app asks the engine to do; runs at once (see the module documentation).
/// Commands that carry buffers own them; a refused command gives them back in [`Refused`].
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Bind a UDP port; answers [`Outcome::Socket`].
    BindUdp {
        /// The port, 1..=65535.
        port: u16,
    },
    /// Unbind a UDP socket; its handle is stale afterwards.
    CloseUdp {
        /// The socket.
        socket: SocketId,
    },
    /// Send `data` as one UDP datagram from `socket` to `to`.
    SendTo {
        /// Our socket (its port is the source port).
        socket: SocketId,
        /// Destination.
        to: SocketAddrV4,
        /// The payload; ownership passes to the engine.
        data: BufChain,
        /// When set, an [`Event::SendDone`] with this token gives the buffers back once the
        /// device is done with them; when not, they go back to the pool.
        notify: Option<u64>,
    },
    /// Arm a timer firing [`Event::Timer`] with `token` at or after `deadline_ns`; answers
    /// [`Outcome::Timer`].
    ArmTimer {
        /// Absolute deadline on the engine's clock.
        deadline_ns: u64,
        /// Returned in the event.
        token: u64,
    },
    /// Move an armed timer to a new deadline.
    RearmTimer {
        /// The timer.
        timer: TimerId,
        /// The new deadline.
        deadline_ns: u64,
    },
    /// Disarm a timer; answers [`Outcome::Token`] with its token.
    CancelTimer {
        /// The timer.
        timer: TimerId,
    },
    /// Listen for TCP connections; answers [`Outcome::Listener`].
    Listen {
        /// The port.
        port: u16,
        /// Most connections accepted by the stack and not yet seen by the app.
        backlog: u32,
    },
    /// Open a TCP connection; answers [`Outcome::Conn`], then [`Event::Connected`] or
    /// [`Event::ConnectFailed`] with `token`.
    Connect {
        /// The peer.
        to: SocketAddrV4,
        /// Returned in the event.
        token: u64,
    },
    /// Send bytes on a connection; answers [`Outcome::Accepted`] with how many bytes the
    /// windows took and the buffers they did not.
    Send {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        data: BufChain,
    },
    /// Give back `bytes` of received data, reopening the receive window.
    RecvDone {
        /// The connection.
        conn: ConnId,
        /// Bytes consumed.
        bytes: u32,
    },
    /// Close a connection in order (FIN).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Abort a connection (RST).
    Abort {
        /// The connection.
        conn: ConnId,
    },
    /// Set an option of a connection.
    SetOption {
        /// The connection.
        conn: ConnId,
        /// The option.
        option: ConnOption,
    },
    /// Read `len` bytes at `offset` of a storage area.
    StorageRead {
        /// The area.
        area: AreaId,
        /// Byte offset.
        offset: u64,
        /// Bytes to read.
        len: u32,
        /// Returned in [`Event::StorageDone`].
        token: u64,
    },
    /// Write `data` at `offset` of a storage area.
    StorageWrite {
        /// The area.
        area: AreaId,
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: BufChain,
        /// Returned in [`Event::StorageDone`].
        token: u64,
    },
    /// Make every completed write to the area durable.
    StorageFlush {
        /// The area.
        area: AreaId,
        /// Returned in [`Event::StorageDone`].
        token: u64,
    },
}

impl Command {
    /// A stable name, for messages and counters.
    pub fn name(&self) -> &'static str {
        match self {
            Command::BindUdp { .. } => "bind_udp",
            Command::CloseUdp { .. } => "close_udp",
            Command::SendTo { .. } => "send_to",
            Command::ArmTimer { .. } => "arm_timer",
            Command::RearmTimer { .. } => "rearm_timer",
            Command::CancelTimer { .. } => "cancel_timer",
            Command::Listen { .. } => "listen",
            Command::Connect { .. } => "connect",
            Command::Send { .. } => "send",
            Command::RecvDone { .. } => "recv_done",
            Command::Close { .. } => "close",
            Command::Abort { .. } => "abort",
            Command::SetOption { .. } => "set_option",
            Command::StorageRead { .. } => "storage_read",
            Command::StorageWrite { .. } => "storage_write",
            Command::StorageFlush { .. } => "storage_flush",
        }
    }
    /// Takes the buffers a command carries, for a command that cannot run.
    pub fn into_data(self) -> Option<BufChain> {
        match self {
            Command::SendTo { data, .. }
            | Command::Send { data, .. }
            | Command::StorageWrite { data, .. } => Some(data),
            _ => None,
        }
    }
}

/// What a command that ran answered.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done; nothing to return.
    Done,
    /// A bound UDP socket.
    Socket(SocketId),
    /// An armed timer.
    Timer(TimerId),
    /// A cancelled timer's token.
    Token(u64),
    /// A TCP listener.
    Listener(ListenerId),
    /// A TCP connection being opened.
    Conn(ConnId),
    /// How many bytes of a TCP send the windows took; the buffers holding the rest come back.
    Accepted {
        /// Bytes taken.
        bytes: u32,
        /// Buffers not taken, the app's again.
        rest: Option<BufChain>,
    },
}

/// Why a send did not go out. The app decides whether to retry; the engine counts each.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No route to the destination (off-link and no gateway). Fix the configuration.
    #[error("no route to destination")]
    NoRoute,
    /// The destination is a broadcast, multicast or otherwise martian address, which this
    /// engine never sends to (an amplifier otherwise). Check where the address came from.
    #[error("destination address is not a unicast host")]
    BadDestination,
    /// Too many packets already wait for address resolution; retry later.
    #[error("address resolution queue full")]
    ResolutionQueueFull,
    /// The next hop did not answer ARP; the peer is likely down.
    #[error("next hop unresolved")]
    Unresolved,
    /// The transmit queue was full; the datagram was dropped. Back off.
    #[error("transmit queue full")]
    TxQueueFull,
    /// The payload is larger than the path can carry (65,507 bytes for UDP over IPv4, less
    /// where the engine cannot fragment); send less.
    #[error("payload too large")]
    PayloadTooLarge,
    /// The buffer lacks the headroom the headers need; allocate buffers with
    /// [`IoContext::alloc`], which leaves room.
    #[error("buffer has too little headroom for the headers")]
    NoHeadroom,
    /// The backend refused the datagram (the kernel's error on the kernel backend).
    #[error("backend refused the datagram")]
    Backend,
}

/// Why a command was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// The handle names nothing alive (closed, fired, cancelled): drop it.
    #[error("{0}")]
    Handle(#[from] HandleError),
    /// The send was refused; see the reason.
    #[error("send refused: {0}")]
    Send(#[from] SendError),
    /// The app has as many timers armed as its quota allows; cancel some first.
    #[error("timer quota of {quota} reached")]
    TimerQuota {
        /// The quota.
        quota: usize,
    },
    /// The engine's timing wheel is full.
    #[error("timing wheel full")]
    TimerWheelFull,
    /// The port is 0, or already bound by this app; pick another.
    #[error("port {port} cannot be bound: {reason}")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        reason: &'static str,
    },
    /// A buffer is not the app's to give (of another pool, or not lent to the app): an app
    /// bug. The buffer is returned untouched.
    #[error("buffer not owned by the app")]
    NotOwned,
    /// The connection cannot take this command now: it is still opening (wait for
    /// [`Event::Connected`]) or its sending side was closed with [`Command::Close`].
    #[error("connection cannot take {command}: {reason}")]
    ConnNotOpen {
        /// The command's name.
        command: &'static str,
        /// Which state refused it.
        reason: &'static str,
    },
    /// The kernel refused the command (kernel-socket transport), for the reason its error
    /// number names.
    #[error("the kernel refused {command}: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The command's name.
        command: &'static str,
        /// The kernel's error number.
        errno: i32,
    },
    /// This engine's transport does not serve the command (TCP commands before the TCP
    /// transport exists, storage commands on an engine without storage).
    #[error("{transport} does not serve {command}")]
    Unsupported {
        /// The command's name.
        command: &'static str,
        /// The transport's name.
        transport: &'static str,
    },
}

/// A refused command: why, and the buffers it carried, the app's again.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub error: CommandError,
    /// The command's buffers, if it carried any.
    pub data: Option<BufChain>,
}

impl Refused {
    /// A refusal of a command that carried no buffers.
    pub fn new(error: impl Into<CommandError>) -> Self {
        Self {
            error: error.into(),
            data: None,
        }
    }
}

/// What the engine offers an app during one `run_io` call. The engine implements it in
/// embedded mode; a service-mode client will implement it over shared-memory rings. Apps use
/// it through [`IoContext`]. Nothing here exposes the engine's pool: buffers are reached
/// through these calls, so the same app runs where the pool lives in another process.
pub trait Io {
    /// The engine's clock at the start of this batch.
    fn now_ns(&self) -> u64;
    /// The batch's events, oldest first. (The queue itself rather than one event per call:
    /// [`IoContext::next_event`] then pops inline, and an event is written once, where the
    /// app reads it, instead of being returned through a virtual call: measured at a third
    /// of the echo app's cost per request in `melange bench stack`.)
    fn events(&mut self) -> &mut EventQueue;
    /// The batch's events, to count them.
    fn events_ref(&self) -> &EventQueue;
    /// Runs a command; see the module documentation.
    fn submit(&mut self, command: Command) -> Result<Outcome, Refused>;
    /// Runs [`Command::SendTo`]: the same as submitting it, as a call with no command to
    /// build and no outcome to match (the hot path of every datagram app; an engine
    /// overrides it to go straight to its transport).
    fn send_datagram(
        &mut self,
        socket: SocketId,
        to: SocketAddrV4,
        data: BufChain,
        notify: Option<u64>,
    ) -> Result<(), Refused> {
        self.submit(Command::SendTo {
            socket,
            to,
            data,
            notify,
        })
        .map(|_| ())
    }

    /// A fresh buffer with an empty payload window and room for headers in front; `None`
    /// when the pool is exhausted (shed load).
    fn alloc(&mut self) -> Option<PacketBuf>;
    /// Returns a buffer the app no longer needs.
    fn free(&mut self, buf: PacketBuf);
    /// Returns every buffer of a chain.
    fn free_chain(&mut self, chain: BufChain);
    /// The payload bytes of a buffer.
    fn payload(&self, buf: &PacketBuf) -> &[u8];
    /// The payload bytes of a buffer, writable.
    fn payload_mut(&mut self, buf: &PacketBuf) -> &mut [u8];
    /// Sets the payload length of a buffer (it grows into the frame's tailroom).
    fn set_payload_len(&mut self, buf: &mut PacketBuf, len: usize) -> Result<(), PoolError>;
    /// Bytes a buffer's payload can grow by.
    fn tailroom(&self, buf: &PacketBuf) -> usize;
    /// Takes the first buffer off a chain.
    fn chain_pop_front(&mut self, chain: BufChain) -> (PacketBuf, Option<BufChain>);
    /// Appends a buffer to a chain; gives it back when the chain would be too long.
    fn chain_push(
        &mut self,
        chain: &mut BufChain,
        buf: PacketBuf,
    ) -> Result<(), (PoolError, PacketBuf)>;
    /// Copies a chain's bytes from `offset` into `out`; returns how many were copied.
    fn chain_read(&self, chain: &BufChain, offset: usize, out: &mut [u8]) -> usize;
}

/// The app's view of one `run_io` call: the engine's [`Io`], with typed helpers.
pub struct IoContext<'a> {
    io: &'a mut dyn Io,
}

impl<'a> IoContext<'a> {
    /// Wraps an [`Io`] implementation.
    pub fn new(io: &'a mut dyn Io) -> Self {
        Self { io }
    }
    /// The engine's clock at the start of this batch.
    pub fn now_ns(&self) -> u64 {
        self.io.now_ns()
    }
    /// The next event of the batch.
    #[inline]
    pub fn next_event(&mut self) -> Option<Event> {
        self.io.events().pop()
    }
    /// Events still unread in this batch.
    pub fn events_len(&self) -> usize {
        self.io.events_ref().len()
    }
    /// Runs any command.
    pub fn submit(&mut self, command: Command) -> Result<Outcome, Refused> {
        self.io.submit(command)
    }
    /// A fresh buffer; `None` when the pool is exhausted.
    pub fn alloc(&mut self) -> Option<PacketBuf> {
        self.io.alloc()
    }
    /// Returns a buffer.
    pub fn free(&mut self, buf: PacketBuf) {
        self.io.free(buf)
    }
    /// Returns every buffer of a chain.
    pub fn free_chain(&mut self, chain: BufChain) {
        self.io.free_chain(chain)
    }
    /// The payload bytes of a buffer.
    pub fn payload(&self, buf: &PacketBuf) -> &[u8] {
        self.io.payload(buf)
    }
    /// The payload bytes of a buffer, writable.
    pub fn payload_mut(&mut self, buf: &PacketBuf) -> &mut [u8] {
        self.io.payload_mut(buf)
    }
    /// Sets the payload length of a buffer.
    pub fn set_payload_len(&mut self, buf: &mut PacketBuf, len: usize) -> Result<(), PoolError> {
        self.io.set_payload_len(buf, len)
    }
    /// Bytes a buffer's payload can grow by.
    pub fn tailroom(&self, buf: &PacketBuf) -> usize {
        self.io.tailroom(buf)
    }
    /// Takes the first buffer off a chain.
    pub fn chain_pop_front(&mut self, chain: BufChain) -> (PacketBuf, Option<BufChain>) {
        self.io.chain_pop_front(chain)
    }
    /// Appends a buffer to a chain.
    pub fn chain_push(
        &mut self,
        chain: &mut BufChain,
        buf: PacketBuf,
    ) -> Result<(), (PoolError, PacketBuf)> {
        self.io.chain_push(chain, buf)
    }
    /// Copies a chain's bytes from `offset` into `out`.
    pub fn chain_read(&self, chain: &BufChain, offset: usize, out: &mut [u8]) -> usize {
        self.io.chain_read(chain, offset, out)
    }

    /// Binds a UDP port.
    pub fn bind_udp(&mut self, port: u16) -> Result<SocketId, CommandError> {
        match self.io.submit(Command::BindUdp { port }) {
            Ok(Outcome::Socket(socket)) => Ok(socket),
            Ok(other) => unreachable!("bind_udp answered {other:?}"),
            Err(refused) => Err(refused.error),
        }
    }
    /// Sends a datagram. The frame is built and queued for this batch's transmit before this
    /// returns; on refusal the buffers come back with the reason.
    pub fn send_to(
        &mut self,
        socket: SocketId,
        to: SocketAddrV4,
        data: impl Into<BufChain>,
    ) -> Result<(), (CommandError, BufChain)> {
        self.send(socket, to, data.into(), None)
    }
    /// Like [`IoContext::send_to`], and an [`Event::SendDone`] with `token` gives the buffers
    /// back once the device is done with them.
    pub fn send_to_notify(
        &mut self,
        socket: SocketId,
        to: SocketAddrV4,
        data: impl Into<BufChain>,
        token: u64,
    ) -> Result<(), (CommandError, BufChain)> {
        self.send(socket, to, data.into(), Some(token))
    }
    fn send(
        &mut self,
        socket: SocketId,
        to: SocketAddrV4,
        data: BufChain,
        notify: Option<u64>,
    ) -> Result<(), (CommandError, BufChain)> {
        match self.io.send_datagram(socket, to, data, notify) {
            Ok(()) => Ok(()),
            Err(Refused {
                error,
                data: Some(data),
            }) => Err((error, data)),
            Err(Refused { data: None, .. }) => {
                unreachable!("a refused send gives its buffers back")
            }
        }
    }
    /// Arms a timer.
    pub fn arm_timer(&mut self, deadline_ns: u64, token: u64) -> Result<TimerId, CommandError> {
        match self.io.submit(Command::ArmTimer { deadline_ns, token }) {
            Ok(Outcome::Timer(timer)) => Ok(timer),
            Ok(other) => unreachable!("arm_timer answered {other:?}"),
            Err(refused) => Err(refused.error),
        }
    }
    /// Moves an armed timer, in O(1).
    pub fn rearm_timer(&mut self, timer: TimerId, deadline_ns: u64) -> Result<(), CommandError> {
        self.io
            .submit(Command::RearmTimer { timer, deadline_ns })
            .map(drop)
            .map_err(|refused| refused.error)
    }
    /// Disarms a timer, in O(1); returns its token.
    pub fn cancel_timer(&mut self, timer: TimerId) -> Result<u64, CommandError> {
        match self.io.submit(Command::CancelTimer { timer }) {
            Ok(Outcome::Token(token)) => Ok(token),
            Ok(other) => unreachable!("cancel_timer answered {other:?}"),
            Err(refused) => Err(refused.error),
        }
    }
}

/// The app side of an engine: one call per batch.
pub trait App {
    /// Handles one batch: drain events with [`IoContext::next_event`], issue commands.
    fn run_io(&mut self, io: &mut IoContext<'_>);

    /// Called once before the first batch, e.g. to bind ports, arm timers or send first
    /// requests.
    fn start(&mut self, io: &mut IoContext<'_>) {
        let _ = io;
    }

    /// True when the app has finished its work and its engine may stop (a load generator
    /// that reached its duration). Servers never finish.
    fn is_done(&self) -> bool {
        false
    }
}

/// The bounded queue of events for the next `run_io`, allocated once per engine.
#[derive(Debug)]
pub struct EventQueue {
    events: VecDeque<Event>,
    events_max: usize,
}

impl EventQueue {
    /// A queue of at most `events_max` events.
    pub fn new(events_max: usize) -> Self {
        Self {
            events: VecDeque::with_capacity(events_max),
            events_max,
        }
    }
    /// Queues an event; gives it back when the queue is full.
    #[inline]
    pub fn push(&mut self, event: Event) -> Result<(), Event> {
        if self.events.len() >= self.events_max {
            return Err(event);
        }
        self.events.push_back(event);
        Ok(())
    }
    /// Room left.
    #[inline]
    pub fn room(&self) -> usize {
        self.events_max - self.events.len()
    }
    /// Events waiting.
    #[inline]
    pub fn len(&self) -> usize {
        self.events.len()
    }
    /// True when no event waits.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
    /// The bound.
    pub fn capacity(&self) -> usize {
        self.events_max
    }
    /// Takes the oldest event.
    #[inline]
    pub fn pop(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

impl Event {
    /// Takes the buffers an event carries, so that an engine shutting down (or dropping an
    /// event that found the queue full) can free them.
    pub fn into_data(self) -> Option<BufChain> {
        match self {
            Event::Datagram { data, .. } | Event::Recv { data, .. } => Some(data),
            Event::SendDone { data, .. }
            | Event::Sent { data, .. }
            | Event::StorageDone { data, .. } => data,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::Handle;

    #[test]
    fn events_are_bounded() {
        let mut queue = EventQueue::new(1);
        let timer = |token| Event::Timer {
            timer: Handle::from_raw(token),
            token,
        };
        queue.push(timer(1)).unwrap();
        assert_eq!(queue.push(timer(2)), Err(timer(2)));
        assert_eq!(queue.room(), 0);
        assert_eq!(queue.pop(), Some(timer(1)));
        assert!(queue.is_empty());
    }

    #[test]
    fn command_names_are_stable() {
        assert_eq!(Command::BindUdp { port: 1 }.name(), "bind_udp");
        assert_eq!(
            Command::StorageFlush {
                area: Handle::from_raw(1),
                token: 0
            }
            .name(),
            "storage_flush"
        );
    }
}
