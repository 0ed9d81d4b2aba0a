//! An [`Io`] for unit tests of apps: no engine, no stack, just a pool and a record of what the
//! app did.
//!
//! An app's logic (matching replies, timers, protocol parsing) deserves tests that do not
//! need a network. [`TestIo`] plays the engine's side of the contract: the test queues events
//! (built from buffers of its pool), runs the app, and reads back what it sent, which timers
//! it armed and which ports it bound. Sends are accepted (their buffers kept in
//! [`TestIo::sent`] for the test to inspect and free) unless the test sets
//! [`TestIo::refuse_sends`]. It allocates freely: it is for tests, never for a data path.

use crate::contract::{Command, CommandError, Event, EventQueue, Io, Outcome, Refused, SendError};
use crate::handle::{Handle, SocketId, TimerId};
use crate::pool::{BufChain, FrameOwner, PacketBuf, PacketPool, PoolConfig, PoolError};
use std::net::SocketAddrV4;

/// A datagram an app sent through [`TestIo`].
#[derive(Debug)]
pub struct SentDatagram {
    /// The socket it was sent from.
    pub socket: SocketId,
    /// Its destination.
    pub to: SocketAddrV4,
    /// Its payload.
    pub data: BufChain,
    /// The notify token, if any.
    pub notify: Option<u64>,
}

/// A timer an app armed through [`TestIo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmedTimer {
    /// Its handle.
    pub timer: TimerId,
    /// Its deadline.
    pub deadline_ns: u64,
    /// Its token.
    pub token: u64,
}

/// The engine's side of the contract for app unit tests. See the module documentation.
#[derive(Debug)]
pub struct TestIo {
    /// The clock the app sees.
    pub now_ns: u64,
    /// The pool buffers come from.
    pub pool: PacketPool,
    /// Events for the next `run_io`.
    pub events: EventQueue,
    /// Datagrams sent, oldest first.
    pub sent: Vec<SentDatagram>,
    /// Timers armed and not cancelled, oldest first.
    pub timers: Vec<ArmedTimer>,
    /// Ports bound, with their sockets.
    pub bound: Vec<(u16, SocketId)>,
    /// When set, every send is refused with this error (its buffers handed back).
    pub refuse_sends: Option<SendError>,
    next_handle: u32,
}

impl TestIo {
    /// A test context over a pool of `frames` frames of 2 KiB.
    pub fn new(frames: usize) -> Self {
        Self {
            now_ns: 0,
            pool: PacketPool::new(PoolConfig {
                frame_size: 2048,
                frame_count: frames,
                headroom: 256,
            })
            .expect("a valid test pool configuration"),
            events: EventQueue::new(1024),
            sent: Vec::new(),
            timers: Vec::new(),
            bound: Vec::new(),
            refuse_sends: None,
            next_handle: 0,
        }
    }

    fn handle<K>(&mut self) -> Handle<K> {
        self.next_handle += 1;
        Handle::from_parts(self.next_handle, 1)
    }

    /// A buffer holding `bytes`, lent to the app, as an arriving datagram's payload would be.
    pub fn payload(&mut self, bytes: &[u8]) -> BufChain {
        let mut buf = self
            .pool
            .alloc_for(FrameOwner::App)
            .expect("the test pool has a free frame");
        self.pool
            .set_len(&mut buf, bytes.len())
            .expect("the payload fits a test frame");
        self.pool.data_mut(&buf).copy_from_slice(bytes);
        BufChain::from(buf)
    }

    /// Queues a datagram carrying `bytes` for the app, on the first bound socket.
    pub fn deliver(&mut self, bytes: &[u8], from: SocketAddrV4) {
        let (local_port, socket) = *self.bound.first().expect("the app bound a port");
        let data = self.payload(bytes);
        self.events
            .push(Event::Datagram {
                socket,
                data,
                from,
                local_port,
            })
            .expect("the test event queue has room");
    }

    /// Takes every datagram sent so far, as (destination, payload bytes), freeing the
    /// buffers.
    pub fn take_sent(&mut self) -> Vec<(SocketAddrV4, Vec<u8>)> {
        let sent = std::mem::take(&mut self.sent);
        sent.into_iter()
            .map(|d| {
                let mut bytes = vec![0; d.data.len()];
                self.pool.chain_read(&d.data, 0, &mut bytes);
                self.pool.free_chain(d.data);
                (d.to, bytes)
            })
            .collect()
    }

    /// Fires an armed timer: removes it and queues its event.
    pub fn fire(&mut self, timer: TimerId) {
        let at = self
            .timers
            .iter()
            .position(|t| t.timer == timer)
            .expect("the timer is armed");
        let t = self.timers.remove(at);
        self.events
            .push(Event::Timer {
                timer: t.timer,
                token: t.token,
            })
            .expect("the test event queue has room");
    }
}

impl Io for TestIo {
    fn now_ns(&self) -> u64 {
        self.now_ns
    }
    fn events(&mut self) -> &mut EventQueue {
        &mut self.events
    }
    fn events_ref(&self) -> &EventQueue {
        &self.events
    }
    fn submit(&mut self, command: Command) -> Result<Outcome, Refused> {
        match command {
            Command::BindUdp { port } => {
                if self.bound.iter().any(|&(p, _)| p == port) {
                    return Err(Refused::new(CommandError::Bind {
                        port,
                        reason: "already bound",
                    }));
                }
                let socket = self.handle();
                self.bound.push((port, socket));
                Ok(Outcome::Socket(socket))
            }
            Command::SendTo {
                socket,
                to,
                data,
                notify,
            } => {
                if let Some(error) = self.refuse_sends {
                    return Err(Refused {
                        error: error.into(),
                        data: Some(data),
                    });
                }
                self.sent.push(SentDatagram {
                    socket,
                    to,
                    data,
                    notify,
                });
                Ok(Outcome::Done)
            }
            Command::ArmTimer { deadline_ns, token } => {
                let timer = self.handle();
                self.timers.push(ArmedTimer {
                    timer,
                    deadline_ns,
                    token,
                });
                Ok(Outcome::Timer(timer))
            }
            Command::RearmTimer { timer, deadline_ns } => {
                match self.timers.iter_mut().find(|t| t.timer == timer) {
                    Some(t) => {
                        t.deadline_ns = deadline_ns;
                        Ok(Outcome::Done)
                    }
                    None => Err(Refused::new(crate::handle::HandleError::Stale)),
                }
            }
            Command::CancelTimer { timer } => {
                match self.timers.iter().position(|t| t.timer == timer) {
                    Some(at) => Ok(Outcome::Token(self.timers.remove(at).token)),
                    None => Err(Refused::new(crate::handle::HandleError::Stale)),
                }
            }
            other => Err(Refused {
                error: CommandError::Unsupported {
                    command: other.name(),
                    transport: "test io",
                },
                data: other.into_data(),
            }),
        }
    }
    fn alloc(&mut self) -> Option<PacketBuf> {
        self.pool.alloc_for(FrameOwner::App)
    }
    fn free(&mut self, buf: PacketBuf) {
        self.pool.free(buf)
    }
    fn free_chain(&mut self, chain: BufChain) {
        self.pool.free_chain(chain)
    }
    fn payload(&self, buf: &PacketBuf) -> &[u8] {
        self.pool.data(buf)
    }
    fn payload_mut(&mut self, buf: &PacketBuf) -> &mut [u8] {
        self.pool.data_mut(buf)
    }
    fn set_payload_len(&mut self, buf: &mut PacketBuf, len: usize) -> Result<(), PoolError> {
        self.pool.set_len(buf, len)
    }
    fn tailroom(&self, buf: &PacketBuf) -> usize {
        self.pool.tailroom(buf)
    }
    fn chain_pop_front(&mut self, chain: BufChain) -> (PacketBuf, Option<BufChain>) {
        self.pool.chain_pop_front(chain)
    }
    fn chain_push(
        &mut self,
        chain: &mut BufChain,
        buf: PacketBuf,
    ) -> Result<(), (PoolError, PacketBuf)> {
        self.pool.chain_push(chain, buf)
    }
    fn chain_read(&self, chain: &BufChain, offset: usize, out: &mut [u8]) -> usize {
        self.pool.chain_read(chain, offset, out)
    }
}
