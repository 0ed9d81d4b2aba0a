//! Melange's own stack as a [`Transport`]: the sans-IO [`Interface`] over a [`NicQueue`] of
//! raw Ethernet frames (AF_XDP, the simulator, the fake NIC).
//!
//! Receive: one `recv_batch` of at most the pass's budget, each frame through
//! [`Interface::handle_frame`]; a datagram for a bound port becomes [`Event::Datagram`] with
//! its buffer narrowed to the payload, lent to the app with no copy. ARP and ICMP answers the
//! stack builds in place wait in its transmit queue for [`Transport::flush`].
//!
//! Send: the app's buffer gets its UDP, IPv4 and Ethernet headers written into its headroom
//! during the call, and joins this pass's transmit batch. The batch never exceeds
//! `batch_max`: when it is full it goes to the device at once, mid-pass. A send the device
//! has no room for is refused before anything is built, with the buffer handed back
//! ([`NicQueue::tx_room`]), so a full ring slows the app down instead of dropping its frames.
//!
//! UDP sockets are a small table of bound ports (at most [`UDP_SOCKETS_MAX`]); a datagram
//! finds its socket by a scan of that table, which holds one or two ports for every app
//! there is, and stays bounded by the constant whatever the traffic.

use crate::nic::{NicCaps, NicErrorKind, NicQueue};
use crate::tcp::{TcpConfig, TcpConfigError, TcpCounters, TcpEndpoint};
use crate::transport::{Transport, TransportCounters};
use melange_core::contract::{
    Command, CommandError, Event, EventQueue, Outcome, Refused, SendError,
};
use melange_core::handle::{HandleError, HandleTable, SocketKind};
use melange_core::{BufChain, FrameOwner, PacketBuf, PacketPool, SocketId};
use melange_net::{BindError, EthernetAddress, Interface, InterfaceConfig, Received};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::BorrowedFd;

/// Most UDP ports one engine's app binds.
pub const UDP_SOCKETS_MAX: usize = 64;

/// The stack over a NIC queue. See the module documentation.
pub struct StackTransport<N> {
    nic: N,
    iface: Interface,
    batch_max: usize,
    /// Frames received in this pass; capacity `batch_max`.
    rx: Vec<PacketBuf>,
    /// This pass's transmit batch; capacity `batch_max`, never more.
    tx: Vec<PacketBuf>,
    /// Lengths of the frames in `tx`, for the bytes of a partly sent batch.
    tx_lens: Vec<u32>,
    sockets: HandleTable<SocketKind, u16>,
    /// (port, socket) of every bound socket, for the receive path's lookup.
    by_port: Vec<(u16, SocketId)>,
    /// Melange's TCP, once configured with [`StackTransport::with_tcp`].
    tcp: Option<TcpEndpoint>,
    counters: TransportCounters,
}

impl<N: NicQueue> StackTransport<N> {
    /// A stack for `config` over `nic`, with neighbours already resolved by the control plane
    /// (installed as ARP entries that never expire). Allocates every table now.
    pub fn new(
        nic: N,
        config: InterfaceConfig,
        static_arp: &[(Ipv4Addr, EthernetAddress)],
        pool: &mut PacketPool,
        batch_max: usize,
    ) -> Result<Self, melange_net::ConfigError> {
        let mut iface = Interface::new(config)?;
        for &(ip, mac) in static_arp {
            iface.add_static_arp(pool, ip, mac);
        }
        Ok(Self {
            nic,
            iface,
            batch_max,
            rx: Vec::with_capacity(batch_max),
            tx: Vec::with_capacity(batch_max),
            tx_lens: Vec::with_capacity(batch_max),
            sockets: HandleTable::new(UDP_SOCKETS_MAX),
            by_port: Vec::with_capacity(UDP_SOCKETS_MAX),
            tcp: None,
            counters: TransportCounters::default(),
        })
    }

    /// Serves the contract's TCP commands with Melange's own TCP (`crate::tcp`), its tables
    /// allocated now. Without it, TCP commands are refused as unsupported and segments are
    /// dropped.
    pub fn with_tcp(mut self, config: TcpConfig, now_ns: u64) -> Result<Self, TcpConfigError> {
        let ip = self.iface.config().ipv4;
        let mtu = self.iface.config().mtu;
        self.tcp = Some(TcpEndpoint::new(config, ip, mtu, now_ns)?);
        Ok(self)
    }

    /// The TCP endpoint, when configured.
    pub fn tcp(&self) -> Option<&TcpEndpoint> {
        self.tcp.as_ref()
    }

    /// TCP's counters, when configured.
    pub fn tcp_counters(&self) -> Option<TcpCounters> {
        self.tcp.as_ref().map(|t| *t.counters())
    }

    /// The NIC queue.
    pub fn nic(&self) -> &N {
        &self.nic
    }
    /// The NIC queue, writable (a test that scripts faults).
    pub fn nic_mut(&mut self) -> &mut N {
        &mut self.nic
    }
    /// What the device can do.
    pub fn caps(&self) -> NicCaps {
        self.nic.caps()
    }
    /// The stack.
    pub fn interface(&self) -> &Interface {
        &self.iface
    }
    /// Takes the transport apart, giving back the NIC queue.
    pub fn into_nic(self) -> N {
        self.nic
    }

    #[inline]
    fn socket_of(&self, port: u16) -> Option<SocketId> {
        self.by_port
            .iter()
            .find(|(p, _)| *p == port)
            .map(|&(_, socket)| socket)
    }

    /// Moves the stack's queued frames into the transmit batch, sending the batch each time
    /// it fills.
    fn move_stack_frames(&mut self, pool: &mut PacketPool) {
        while let Some(frame) = self.iface.poll_transmit() {
            if self.tx.len() == self.batch_max {
                self.transmit(pool);
            }
            self.tx_lens.push(frame.len() as u32);
            self.tx.push(frame);
        }
    }

    /// Hands the batch to the device.
    fn transmit(&mut self, pool: &mut PacketPool) {
        if self.tx.is_empty() {
            return;
        }
        let queued = self.tx.len();
        for frame in &self.tx {
            pool.hand_over(frame, FrameOwner::InFlight);
        }
        let outcome = self.nic.send_batch(pool, &mut self.tx);
        let sent = outcome.sent.min(queued);
        self.counters.tx_packets += sent as u64;
        self.counters.tx_bytes += self.tx_lens[..sent]
            .iter()
            .map(|&l| u64::from(l))
            .sum::<u64>();
        self.counters.tx_dropped += (queued - sent) as u64;
        if let Some(error) = outcome.error {
            self.counters.errors.record(error);
        }
        debug_assert!(self.tx.is_empty(), "send_batch must drain its frames");
        // A backend that breaks the rule must not make us hold frames twice.
        for frame in self.tx.drain(..) {
            pool.release_tx(frame, Err(melange_core::TxDropped::Device));
        }
        self.tx_lens.clear();
    }
}

fn map_send_error(error: melange_net::SendError) -> SendError {
    use melange_net::SendError as E;
    match error {
        E::NoRoute(_) => SendError::NoRoute,
        E::BadDestination { .. } => SendError::BadDestination,
        E::ArpPendingFull => SendError::ResolutionQueueFull,
        E::TxQueueFull | E::PoolExhausted { .. } => SendError::TxQueueFull,
        E::PayloadTooLarge { .. } => SendError::PayloadTooLarge,
        E::NoHeadroom { .. } => SendError::NoHeadroom,
        // Only `send_tcp` refuses so, and the stack does not call it yet.
        E::TcpReprMismatch { .. } => SendError::Backend,
    }
}

impl<N: NicQueue> Transport for StackTransport<N> {
    fn learn_neighbor(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        ip: Ipv4Addr,
        mac: EthernetAddress,
    ) {
        self.iface.learn_neighbor(now_ns, pool, ip, mac);
    }

    fn name(&self) -> &'static str {
        "melange stack"
    }

    fn poll_receive(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        events: &mut EventQueue,
        budget: usize,
    ) -> usize {
        // TCP's backlog first: events that found no room in the last pass (and those of
        // timers and commands since) go out before anything new arrives, so a busy
        // connection's events cannot be pushed back pass after pass by new segments.
        let backlog = match self.tcp.as_mut() {
            Some(tcp) => {
                let before = events.len();
                tcp.poll_events(pool, events);
                events.len() - before
            }
            None => 0,
        };
        // The room bounds the batch: a UDP frame yields at most one event, a TCP segment two
        // (its `Recv` and the `Sent` its ACK releases), and TCP leaves a reserve for the
        // engine's timers. A batch larger than the room would defer events, and with them
        // the replies that would carry the ACKs, until the delayed-ACK timers fire and send
        // the ACKs alone (seen at 1,000 connections in the lab: a pure ACK for most requests).
        let max = match self.tcp {
            Some(_) => {
                let reserve = crate::tcp::EVENTS_RESERVED_MAX.min(events.capacity() / 4);
                events.room().saturating_sub(reserve) / 2
            }
            None => events.room(),
        };
        let max = budget.min(max).min(self.batch_max);
        if max == 0 {
            return backlog;
        }
        if let Err(error) = self.nic.recv_batch(pool, &mut self.rx, max) {
            self.counters.errors.record(error);
        }
        let received = self.rx.len();
        for frame in self.rx.drain(..) {
            self.counters.rx_packets += 1;
            self.counters.rx_bytes += frame.len() as u64;
            pool.hand_over(&frame, FrameOwner::Stack);
            let datagram = match self.iface.handle_frame(now_ns, pool, frame) {
                Some(Received::Udp(datagram)) => datagram,
                Some(Received::Tcp(segment)) => {
                    match self.tcp.as_mut() {
                        Some(tcp) => tcp.handle_segment(now_ns, pool, &mut self.iface, segment),
                        None => pool.free(segment.data),
                    }
                    continue;
                }
                None => continue,
            };
            let Some(socket) = self.by_port.iter().find(|(p, _)| *p == datagram.local_port) else {
                // The stack delivers only bound ports, and every bound port has a socket.
                pool.free_chain(datagram.data);
                continue;
            };
            let data = datagram.data;
            pool.hand_over_chain(&data, FrameOwner::App);
            let event = Event::Datagram {
                socket: socket.1,
                data,
                from: datagram.from,
                local_port: datagram.local_port,
            };
            if let Err(event) = events.push(event) {
                self.counters.rx_event_queue_full += 1;
                if let Some(data) = event.into_data() {
                    pool.free_chain(data);
                }
            }
        }
        // TCP's events (from these segments, from timers, from the last pass's commands) go
        // out in per-connection order, as the queue has room.
        let tcp_work = match self.tcp.as_mut() {
            Some(tcp) => {
                let before = events.len();
                tcp.poll_events(pool, events);
                events.len() - before
            }
            None => 0,
        };
        received + tcp_work + backlog
    }

    fn poll_at(&self) -> Option<u64> {
        let tcp = self.tcp.as_ref().and_then(TcpEndpoint::poll_at);
        match (self.iface.poll_at(), tcp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn rx_ready(&self) -> bool {
        self.nic.rx_ready() || self.tcp.as_ref().is_some_and(TcpEndpoint::has_pending)
    }

    fn handle_timeout(&mut self, now_ns: u64, pool: &mut PacketPool) {
        if self.iface.poll_at().is_some_and(|at| at <= now_ns) {
            self.iface.handle_timeout(now_ns, pool);
        }
        if let Some(tcp) = self.tcp.as_mut() {
            if tcp.poll_at().is_some_and(|at| at <= now_ns) {
                tcp.handle_timeout(now_ns);
            }
        }
    }

    fn submit(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        command: Command,
    ) -> Result<Outcome, Refused> {
        match self.tcp.as_mut() {
            Some(tcp) => tcp.submit(now_ns, pool, command),
            None => {
                let error = CommandError::Unsupported {
                    command: command.name(),
                    transport: "melange stack without TCP",
                };
                Err(Refused {
                    error,
                    data: command.into_data(),
                })
            }
        }
    }

    fn bind_udp(&mut self, port: u16) -> Result<SocketId, CommandError> {
        let bind_error = |reason| CommandError::Bind { port, reason };
        if self.socket_of(port).is_some() {
            return Err(bind_error("already bound by this app"));
        }
        if self.by_port.len() >= UDP_SOCKETS_MAX {
            return Err(HandleError::Full {
                capacity: UDP_SOCKETS_MAX,
            }
            .into());
        }
        self.iface.bind_udp(port).map_err(|error| match error {
            BindError::PortZero => bind_error("port 0 means no port"),
            BindError::AlreadyBound(_) => bind_error("already bound"),
        })?;
        let socket = self
            .sockets
            .insert(port)
            .map_err(|(error, _)| CommandError::from(error))?;
        self.by_port.push((port, socket));
        Ok(socket)
    }

    fn close_udp(&mut self, socket: SocketId) -> Result<(), CommandError> {
        let port = self.sockets.remove(socket)?;
        self.by_port.retain(|&(p, _)| p != port);
        self.iface.unbind_udp(port);
        Ok(())
    }

    fn send_to(
        &mut self,
        now_ns: u64,
        pool: &mut PacketPool,
        socket: SocketId,
        to: SocketAddrV4,
        data: BufChain,
        notify: Option<u64>,
    ) -> Result<(), Refused> {
        let port = match self.sockets.get(socket) {
            Ok(&port) => port,
            Err(error) => {
                return Err(Refused {
                    error: error.into(),
                    data: Some(data),
                })
            }
        };
        if !pool.is_held_by(data.head(), FrameOwner::App) {
            return Err(Refused {
                error: CommandError::NotOwned,
                data: Some(data),
            });
        }
        // The frames this datagram becomes on the wire (one, or its IPv4 fragments).
        let Some(frames) = self.iface.tx_frames_for(pool, data.len()) else {
            return Err(Refused {
                error: SendError::PayloadTooLarge.into(),
                data: Some(data),
            });
        };
        // Back-pressure: build the frames only if the device can take them all (a datagram of
        // more frames than a batch leaves in several batches of this pass).
        if self.tx.len() + frames > self.batch_max {
            self.transmit(pool);
        }
        if self.nic.tx_room() < self.tx.len() + frames {
            self.counters.tx_no_room += 1;
            return Err(Refused {
                error: SendError::TxQueueFull.into(),
                data: Some(data),
            });
        }
        pool.hand_over_chain(&data, FrameOwner::Stack);
        if let Some(token) = notify {
            pool.return_after_tx(data.head(), token);
        }
        match self.iface.send_udp(now_ns, pool, data, port, to) {
            Ok(()) => {
                self.move_stack_frames(pool);
                Ok(())
            }
            Err((error, data)) => {
                pool.cancel_return(data.head());
                pool.hand_over_chain(&data, FrameOwner::App);
                Err(Refused {
                    error: map_send_error(error).into(),
                    data: Some(data),
                })
            }
        }
    }

    fn flush(&mut self, now_ns: u64, pool: &mut PacketPool) {
        self.move_stack_frames(pool);
        if self.tcp.is_some() {
            // Segments are built only while the device has room for them, a batch at a time;
            // a connection with more waits for the next pass.
            loop {
                let room = self
                    .nic
                    .tx_room()
                    .saturating_sub(self.tx.len())
                    .min(self.batch_max);
                let Some(tcp) = self.tcp.as_mut().filter(|_| room > 0) else {
                    break;
                };
                let built = tcp.poll_transmit(now_ns, pool, &mut self.iface, room);
                self.move_stack_frames(pool);
                if built < room {
                    break;
                }
            }
        }
        self.transmit(pool);
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        self.nic.wakeup_fd()
    }

    fn counters(&self) -> TransportCounters {
        self.counters
    }

    fn stack_counters(&self) -> Option<melange_net::NetCounters> {
        Some(self.iface.counters().clone())
    }

    fn shutdown(&mut self, pool: &mut PacketPool) {
        for frame in self.rx.drain(..) {
            pool.free(frame);
        }
        for frame in self.tx.drain(..) {
            pool.free(frame);
        }
        self.tx_lens.clear();
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.shutdown(pool);
        }
        self.iface.drain(pool);
        self.nic.release(pool);
    }
}

impl<N> StackTransport<N> {
    /// Device errors of one kind so far.
    pub fn errors_of(&self, kind: NicErrorKind) -> u64 {
        self.counters.errors.count(kind)
    }
}
