//! The contract between an engine and its application: IX's `run_io`.
//!
//! An engine runs to completion: it takes a bounded batch from the NIC, pushes it through the
//! stack, and hands the application one batch of [`Event`]s. The application answers by
//! queueing [`Command`]s on the same [`IoContext`]; the engine carries them out after the
//! handler returns, and transmits the results as one batch. One call per batch, not one per
//! packet, is what amortises the cost of crossing into the application (IX §3).
//!
//! Buffers are lent zero-copy. A received datagram's [`PacketBuf`] belongs to the app until it
//! hands it back: by sending it (the stack writes headers into its headroom, so an echo reply
//! costs no copy), or by [`IoContext::free`]. An app may keep buffers across batches.
//!
//! Events and commands are plain data (frame indexes, addresses, tokens) on purpose: a later
//! service mode carries exactly these values over shared-memory rings between processes, where
//! pointers and closures could not travel.
//!
//! Timers have no cancel: an app that wants to forget a timer puts a generation number in its
//! token and ignores stale firings. That keeps the wheel free of lookup tables.

use crate::pool::{PacketBuf, PacketPool, PoolError};
use std::collections::VecDeque;
use std::net::SocketAddrV4;
use thiserror::Error;

/// Something that happened, handed to the app in a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A UDP datagram arrived. `buf`'s window is the payload; the app owns `buf` now.
    Datagram {
        /// The payload.
        buf: PacketBuf,
        /// Sender's address and port.
        from: SocketAddrV4,
        /// Our port it was sent to.
        local_port: u16,
    },
    /// A timer armed with [`IoContext::arm_timer`] reached its deadline.
    Timer {
        /// The token given when arming.
        token: u64,
    },
    /// A send that asked to be told ([`IoContext::send_to_notify`]) was handed to the NIC or
    /// failed.
    SendDone {
        /// The token given with the send.
        token: u64,
        /// `Ok` once the frame was queued to the NIC; the error otherwise.
        result: Result<(), SendError>,
    },
}

/// Something the app asks the engine to do, carried out after `run_io` returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Send `buf`'s window as one UDP datagram from `local_port` to `to`.
    SendTo {
        /// The payload; ownership passes to the engine.
        buf: PacketBuf,
        /// Our source port.
        local_port: u16,
        /// Destination.
        to: SocketAddrV4,
        /// When set, a [`Event::SendDone`] with this token reports the outcome.
        notify: Option<u64>,
    },
    /// Fire [`Event::Timer`] with `token` at or after `deadline_ns`.
    ArmTimer {
        /// Returned in the event.
        token: u64,
        /// Absolute deadline on the engine's clock.
        deadline_ns: u64,
    },
}

/// Why a send did not go out. The app decides whether to retry; the engine counts each.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The command queue of this batch is full; the buffer is returned with the error. Try
    /// again in the next batch.
    #[error("command queue full for this batch")]
    CommandQueueFull,
    /// No route to the destination (off-link and no gateway). Fix the configuration.
    #[error("no route to destination")]
    NoRoute,
    /// Too many packets already wait for address resolution; retry later.
    #[error("address resolution queue full")]
    ResolutionQueueFull,
    /// The next hop did not answer ARP; the peer is likely down.
    #[error("next hop unresolved")]
    Unresolved,
    /// The transmit queue was full; the datagram was dropped. Back off.
    #[error("transmit queue full")]
    TxQueueFull,
    /// The payload does not fit one frame.
    #[error("payload too large for one frame")]
    PayloadTooLarge,
    /// The backend refused the datagram (the kernel's error on the kernel backend).
    #[error("backend refused the datagram")]
    Backend,
}

/// The app side of an engine: one call per batch.
pub trait App {
    /// Handles one batch: drain events with [`IoContext::next_event`], queue commands.
    fn run_io(&mut self, io: &mut IoContext<'_>);

    /// Called once before the first batch, e.g. to arm timers or send first requests.
    fn start(&mut self, io: &mut IoContext<'_>) {
        let _ = io;
    }

    /// True when the app has finished its work and its engine may stop (a load generator
    /// that reached its duration). Servers never finish.
    fn is_done(&self) -> bool {
        false
    }
}

/// Bounds of the queues between an engine and its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContractLimits {
    /// Events handed over in one batch.
    pub events_max: usize,
    /// Commands accepted in one batch.
    pub commands_max: usize,
}

/// The queues that carry one batch each way, allocated once per engine.
#[derive(Debug)]
pub struct IoQueues {
    events: VecDeque<Event>,
    commands: Vec<Command>,
    limits: ContractLimits,
}

impl IoQueues {
    /// Allocates both queues at their bounds.
    pub fn new(limits: ContractLimits) -> Self {
        Self {
            events: VecDeque::with_capacity(limits.events_max),
            commands: Vec::with_capacity(limits.commands_max),
            limits,
        }
    }
    /// The bounds.
    pub fn limits(&self) -> ContractLimits {
        self.limits
    }
    /// Queues an event for the next `run_io`; gives it back when the batch is full.
    pub fn push_event(&mut self, event: Event) -> Result<(), Event> {
        if self.events.len() >= self.limits.events_max {
            return Err(event);
        }
        self.events.push_back(event);
        Ok(())
    }
    /// Room left for events in this batch.
    pub fn events_room(&self) -> usize {
        self.limits.events_max - self.events.len()
    }
    /// Events waiting.
    pub fn events_len(&self) -> usize {
        self.events.len()
    }
    /// Takes the next event the app left unread (the engine frees their buffers).
    pub fn pop_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
    /// Takes the commands of the batch, in order.
    pub fn drain_commands(&mut self) -> std::vec::Drain<'_, Command> {
        self.commands.drain(..)
    }
    /// Takes the command queue out whole, so the engine can queue events (send
    /// notifications) while it works through the commands. Give it back, empty, with
    /// [`IoQueues::restore_commands`]; its capacity is kept, so nothing allocates.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }
    /// Puts back the queue taken by [`IoQueues::take_commands`].
    ///
    /// # Panics
    /// If `commands` still holds commands: they would be lost.
    pub fn restore_commands(&mut self, commands: Vec<Command>) {
        assert!(
            commands.is_empty(),
            "restoring a command queue with commands left"
        );
        debug_assert!(self.commands.is_empty() && self.commands.capacity() == 0);
        self.commands = commands;
    }
    /// A context for one `run_io` call.
    pub fn context<'a>(&'a mut self, now_ns: u64, pool: &'a mut PacketPool) -> IoContext<'a> {
        IoContext {
            now_ns,
            queues: self,
            pool,
        }
    }
}

/// What an app sees during one `run_io` call.
pub struct IoContext<'a> {
    now_ns: u64,
    queues: &'a mut IoQueues,
    pool: &'a mut PacketPool,
}

impl IoContext<'_> {
    /// The engine's clock at the start of this batch.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }
    /// The next event of the batch.
    pub fn next_event(&mut self) -> Option<Event> {
        self.queues.events.pop_front()
    }
    /// Events still unread in this batch.
    pub fn events_len(&self) -> usize {
        self.queues.events.len()
    }
    /// A fresh buffer with an empty payload window and room for headers in front.
    /// `None` when the pool is exhausted: shed load.
    pub fn alloc(&mut self) -> Option<PacketBuf> {
        self.pool.alloc()
    }
    /// Returns a buffer the app no longer needs.
    pub fn free(&mut self, buf: PacketBuf) {
        self.pool.free(buf);
    }
    /// The payload bytes of a buffer.
    pub fn payload(&self, buf: &PacketBuf) -> &[u8] {
        self.pool.data(buf)
    }
    /// The payload bytes of a buffer, writable.
    pub fn payload_mut(&mut self, buf: &PacketBuf) -> &mut [u8] {
        self.pool.data_mut(buf)
    }
    /// Sets the payload length of a buffer (it grows into the frame's tailroom).
    pub fn set_payload_len(&mut self, buf: &mut PacketBuf, len: usize) -> Result<(), PoolError> {
        self.pool.set_len(buf, len)
    }
    /// Queues a datagram. On a full command queue the buffer comes back with the error.
    pub fn send_to(
        &mut self,
        buf: PacketBuf,
        local_port: u16,
        to: SocketAddrV4,
    ) -> Result<(), (SendError, PacketBuf)> {
        self.push_send(buf, local_port, to, None)
    }
    /// Like [`IoContext::send_to`], and a [`Event::SendDone`] with `token` reports the outcome.
    pub fn send_to_notify(
        &mut self,
        buf: PacketBuf,
        local_port: u16,
        to: SocketAddrV4,
        token: u64,
    ) -> Result<(), (SendError, PacketBuf)> {
        self.push_send(buf, local_port, to, Some(token))
    }
    fn push_send(
        &mut self,
        buf: PacketBuf,
        local_port: u16,
        to: SocketAddrV4,
        notify: Option<u64>,
    ) -> Result<(), (SendError, PacketBuf)> {
        if self.queues.commands.len() >= self.queues.limits.commands_max {
            return Err((SendError::CommandQueueFull, buf));
        }
        self.queues.commands.push(Command::SendTo {
            buf,
            local_port,
            to,
            notify,
        });
        Ok(())
    }
    /// Room left for commands in this batch.
    pub fn commands_room(&self) -> usize {
        self.queues.limits.commands_max - self.queues.commands.len()
    }
    /// Arms a timer; fails when this batch's command queue is full.
    pub fn arm_timer(&mut self, token: u64, deadline_ns: u64) -> Result<(), SendError> {
        if self.queues.commands.len() >= self.queues.limits.commands_max {
            return Err(SendError::CommandQueueFull);
        }
        self.queues
            .commands
            .push(Command::ArmTimer { token, deadline_ns });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolConfig;
    use std::net::Ipv4Addr;

    #[test]
    fn commands_are_bounded_and_buffers_come_back() {
        let mut pool = PacketPool::new(PoolConfig {
            frame_size: 256,
            frame_count: 8,
            headroom: 64,
        })
        .unwrap();
        let mut queues = IoQueues::new(ContractLimits {
            events_max: 2,
            commands_max: 2,
        });
        let to = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        let mut io = queues.context(5, &mut pool);
        assert_eq!(io.now_ns(), 5);
        let a = io.alloc().unwrap();
        let b = io.alloc().unwrap();
        let c = io.alloc().unwrap();
        io.send_to(a, 1, to).unwrap();
        io.arm_timer(7, 100).unwrap();
        let (err, c) = io.send_to(c, 1, to).unwrap_err();
        assert_eq!(err, SendError::CommandQueueFull);
        assert_eq!(io.arm_timer(8, 100), Err(SendError::CommandQueueFull));
        io.free(c);
        io.free(b);
        let cmds: Vec<_> = queues.drain_commands().collect();
        assert_eq!(cmds.len(), 2);
        for cmd in cmds {
            if let Command::SendTo { buf, .. } = cmd {
                pool.free(buf);
            }
        }
        assert_eq!(pool.available(), 8);
    }

    #[test]
    fn events_are_bounded() {
        let mut queues = IoQueues::new(ContractLimits {
            events_max: 1,
            commands_max: 1,
        });
        queues.push_event(Event::Timer { token: 1 }).unwrap();
        assert_eq!(
            queues.push_event(Event::Timer { token: 2 }),
            Err(Event::Timer { token: 2 })
        );
        assert_eq!(queues.events_room(), 0);
        assert_eq!(queues.pop_event(), Some(Event::Timer { token: 1 }));
    }
}
