//! The kernel-socket transport: the app contract served by ordinary sockets, above where
//! Melange's stack would be.
//!
//! This is the portable fallback: no privileges, no XDP, any interface. The kernel does
//! ARP, IPv4 and UDP; this transport only moves payloads between its sockets and the engine's
//! pool, and serves the same commands ([`Transport::bind_udp`], [`Transport::send_to`]) and
//! produces the same events ([`Event::Datagram`], [`Event::SendDone`]) as the stack does
//! over raw frames, so the same app runs on either. (The first engine put kernel sockets
//! *below* the stack, as a NIC of UDP payloads; that could never carry TCP, which the kernel
//! does not let anyone feed segments to. Above the stack, the next transport can map `Listen`
//! and `Connect` to kernel TCP sockets the same way.)
//!
//! Each bound port is one UDP socket, bound with `SO_REUSEPORT` so that every engine can
//! bind the same port and the kernel's flow hashing spreads clients over them, as RSS spreads
//! them over NIC queues. Receive and transmit are batched with `recvmmsg`/`sendmmsg` straight
//! into and out of the engine's pool: the kernel copies each datagram once, into a pool frame,
//! and the app sees it zero-copy from there. Receive buffers are posted ahead (like a fill
//! ring): the transport keeps `batch_max` frames allocated between calls, so a receive that
//! finds nothing costs one system call and no pool traffic. Sends queue per socket during the
//! pass and leave in one `sendmmsg` per socket at [`Transport::flush`] (or earlier when a
//! socket's batch fills); a full socket buffer (`EAGAIN`) is retried a bounded number of
//! times and then the rest drops, counted; a per-datagram error skips that datagram, counted.
//!
//! The sockets share one [`Epoll`] instance whose descriptor is the transport's wakeup
//! descriptor, so a sleeping engine waits on one descriptor however many ports it serves.

use melange_core::contract::{CommandError, Event, EventQueue, Refused, SendError};
use melange_core::handle::{HandleError, HandleTable, SocketKind};
use melange_core::pool::TxDropped;
use melange_core::{BufChain, FrameOwner, PacketBuf, PacketPool, SocketId};
use melange_engine::{NicError, NicErrorKind, Transport, TransportCounters, UDP_SOCKETS_MAX};
use melange_sys::epoll::Epoll;
use melange_sys::udp::{RecvSlot, SendSlot, UdpBatchSocket, UdpSocketOptions};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd};

/// Retries of a transmit batch that the kernel refuses with `EAGAIN` before the rest drops.
const TX_EAGAIN_RETRIES_MAX: u32 = 1024;

/// Options of a kernel transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelOptions {
    /// The local address sockets bind to (`0.0.0.0` for every address).
    pub addr: Ipv4Addr,
    /// Bind with `SO_REUSEPORT` so several engines share each port.
    pub reuse_port: bool,
    /// Most datagrams per system call.
    pub batch_max: usize,
    /// Socket receive buffer, if set.
    pub recv_buffer_bytes: Option<usize>,
    /// Socket send buffer, if set.
    pub send_buffer_bytes: Option<usize>,
}

impl KernelOptions {
    /// Defaults for `addr`: `SO_REUSEPORT`, batches of 64, 4 MiB socket buffers.
    pub fn new(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            reuse_port: true,
            batch_max: 64,
            recv_buffer_bytes: Some(4 << 20),
            send_buffer_bytes: Some(4 << 20),
        }
    }
}

/// Counters of a kernel transport, beyond the common ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Receive system calls made.
    pub recv_calls: u64,
    /// Transmit system calls made.
    pub send_calls: u64,
    /// Datagrams larger than a frame, dropped.
    pub rx_truncated: u64,
    /// Receives that found the pool empty.
    pub rx_pool_exhausted: u64,
    /// `EAGAIN` answers to transmit batches.
    pub tx_eagain: u64,
}

struct KernelSocket {
    socket: UdpBatchSocket,
    port: u16,
    /// This pass's sends on the socket: (buffer, destination); capacity `batch_max`.
    tx: Vec<(PacketBuf, SocketAddrV4)>,
}

/// The kernel-socket transport. See the module documentation.
pub struct KernelTransport {
    options: KernelOptions,
    sockets: HandleTable<SocketKind, KernelSocket>,
    /// Live sockets in bind order, for the receive round.
    order: Vec<SocketId>,
    /// Where the receive round starts next pass, so no socket starves another.
    next_rx: usize,
    epoll: Epoll,
    posted: Vec<PacketBuf>,
    recv_slots: Vec<RecvSlot>,
    send_slots: Vec<SendSlot>,
    counters: TransportCounters,
    kernel: KernelCounters,
}

impl KernelTransport {
    /// A transport with no socket yet; the app binds them.
    pub fn new(options: KernelOptions) -> std::io::Result<Self> {
        let batch_max = options.batch_max;
        let empty_recv = RecvSlot {
            offset: 0,
            capacity: 0,
            len: 0,
            peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            truncated: false,
        };
        Ok(Self {
            options,
            sockets: HandleTable::new(UDP_SOCKETS_MAX),
            order: Vec::with_capacity(UDP_SOCKETS_MAX),
            next_rx: 0,
            epoll: Epoll::new()?,
            posted: Vec::with_capacity(batch_max),
            recv_slots: vec![empty_recv; batch_max],
            send_slots: Vec::with_capacity(batch_max),
            counters: TransportCounters::default(),
            kernel: KernelCounters::default(),
        })
    }

    /// The kernel-specific counters.
    pub fn kernel_counters(&self) -> KernelCounters {
        self.kernel
    }

    /// The local address of a bound socket (its port, when it was bound to port 0).
    pub fn local_addr(&self, socket: SocketId) -> Result<SocketAddrV4, CommandError> {
        let entry = self.sockets.get(socket)?;
        entry
            .socket
            .local_addr()
            .map_err(|_| CommandError::Send(SendError::Backend))
    }

    /// Sends one socket's queued datagrams.
    fn transmit(
        socket: &mut KernelSocket,
        slots: &mut Vec<SendSlot>,
        pool: &mut PacketPool,
        counters: &mut TransportCounters,
        kernel: &mut KernelCounters,
    ) {
        if socket.tx.is_empty() {
            return;
        }
        let frame_size = pool.config().frame_size;
        slots.clear();
        slots.extend(socket.tx.iter().map(|(buf, peer)| SendSlot {
            offset: buf.offset_in(frame_size),
            len: buf.len(),
            peer: *peer,
        }));
        let total = slots.len();
        // Outcome of each datagram, in order: sent, or why not.
        let mut sent_upto = 0;
        let mut first_error = None;
        match pool.contiguous_mut() {
            None => {
                first_error = Some(NicError::new(
                    NicErrorKind::Transmit,
                    "the kernel transport needs a heap-memory pool",
                ));
            }
            Some(memory) => {
                let memory: &[u8] = memory;
                let mut retries = 0;
                let mut done = 0;
                while done < total {
                    kernel.send_calls += 1;
                    match socket.socket.send_batch(memory, &slots[done..]) {
                        Ok(0) => {
                            kernel.tx_eagain += 1;
                            retries += 1;
                            if retries > TX_EAGAIN_RETRIES_MAX {
                                break;
                            }
                            std::hint::spin_loop();
                        }
                        Ok(k) => done += k,
                        Err(error) => {
                            // The first datagram of the remaining batch failed: mark it and
                            // go on with the rest.
                            first_error.get_or_insert(NicError::os(
                                NicErrorKind::Transmit,
                                "sendmmsg",
                                &error,
                            ));
                            slots[done].len = usize::MAX;
                            done += 1;
                        }
                    }
                }
                sent_upto = done;
            }
        }
        if let Some(error) = first_error {
            counters.errors.record(error);
        }
        let mut sent = 0u64;
        for (i, (buf, _)) in socket.tx.drain(..).enumerate() {
            let ok = i < sent_upto && slots[i].len != usize::MAX;
            if ok {
                sent += 1;
                counters.tx_bytes += buf.len() as u64;
                pool.release_tx(buf, Ok(()));
            } else {
                let why = if i < sent_upto {
                    TxDropped::Device
                } else {
                    TxDropped::RingFull
                };
                pool.release_tx(buf, Err(why));
            }
        }
        counters.tx_packets += sent;
        counters.tx_dropped += total as u64 - sent;
    }
}

impl Transport for KernelTransport {
    fn name(&self) -> &'static str {
        "kernel sockets"
    }

    fn poll_receive(
        &mut self,
        _now_ns: u64,
        pool: &mut PacketPool,
        events: &mut EventQueue,
        budget: usize,
    ) -> usize {
        let mut received = 0;
        let sockets = self.order.len();
        for turn in 0..sockets {
            let want = (budget - received)
                .min(events.room())
                .min(self.options.batch_max);
            if want == 0 {
                break;
            }
            while self.posted.len() < want {
                match pool.alloc_for(FrameOwner::Nic) {
                    Some(buf) => self.posted.push(buf),
                    None => {
                        self.kernel.rx_pool_exhausted += 1;
                        break;
                    }
                }
            }
            let n = want.min(self.posted.len());
            if n == 0 {
                break;
            }
            let frame_size = pool.config().frame_size;
            for (slot, buf) in self.recv_slots.iter_mut().zip(&self.posted[..n]) {
                slot.offset = buf.offset_in(frame_size);
                slot.capacity = pool.tailroom(buf) + buf.len();
            }
            let id = self.order[(self.next_rx + turn) % sockets];
            let entry = self
                .sockets
                .get_mut(id)
                .expect("`order` holds only live sockets");
            let Some(memory) = pool.contiguous_mut() else {
                self.counters.errors.record(NicError::new(
                    NicErrorKind::Receive,
                    "the kernel transport needs a heap-memory pool",
                ));
                break;
            };
            self.kernel.recv_calls += 1;
            let got = match entry.socket.recv_batch(memory, &mut self.recv_slots[..n]) {
                Ok(got) => got,
                Err(error) => {
                    self.counters.errors.record(NicError::os(
                        NicErrorKind::Receive,
                        "recvmmsg",
                        &error,
                    ));
                    continue;
                }
            };
            let port = entry.port;
            for (slot, mut buf) in self.recv_slots[..got].iter().zip(self.posted.drain(..got)) {
                received += 1;
                if slot.truncated {
                    self.kernel.rx_truncated += 1;
                    pool.free(buf);
                    continue;
                }
                pool.set_len(&mut buf, slot.len)
                    .expect("the kernel wrote within the slot's capacity");
                self.counters.rx_packets += 1;
                self.counters.rx_bytes += slot.len as u64;
                let data = BufChain::from(buf);
                pool.hand_over_chain(&data, FrameOwner::App);
                let event = Event::Datagram {
                    socket: id,
                    data,
                    from: slot.peer,
                    local_port: port,
                };
                if let Err(event) = events.push(event) {
                    self.counters.rx_event_queue_full += 1;
                    if let Some(data) = event.into_data() {
                        pool.free_chain(data);
                    }
                }
            }
        }
        if sockets > 0 {
            self.next_rx = (self.next_rx + 1) % sockets;
        }
        received
    }

    fn poll_at(&self) -> Option<u64> {
        None
    }

    fn handle_timeout(&mut self, _now_ns: u64, _pool: &mut PacketPool) {}

    fn bind_udp(&mut self, port: u16) -> Result<SocketId, CommandError> {
        if self.order.len() >= UDP_SOCKETS_MAX {
            return Err(HandleError::Full {
                capacity: UDP_SOCKETS_MAX,
            }
            .into());
        }
        let addr = SocketAddrV4::new(self.options.addr, port);
        let socket = UdpBatchSocket::bind(
            addr,
            UdpSocketOptions {
                reuse_port: self.options.reuse_port,
                nonblocking: true,
                batch_max: self.options.batch_max,
                recv_buffer_bytes: self.options.recv_buffer_bytes,
                send_buffer_bytes: self.options.send_buffer_bytes,
                busy_poll_us: None,
            },
        )
        .map_err(|error| CommandError::Bind {
            port,
            reason: match error.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "the port is in use by a socket of another user or without SO_REUSEPORT"
                }
                std::io::ErrorKind::PermissionDenied => {
                    "binding below 1024 needs CAP_NET_BIND_SERVICE"
                }
                std::io::ErrorKind::AddrNotAvailable => "the address is not one of this host's",
                _ => "the kernel refused the bind",
            },
        })?;
        let bound_port = socket.local_addr().map(|a| a.port()).unwrap_or(port);
        if self.epoll.add_readable(socket.as_fd()).is_err() {
            return Err(CommandError::Bind {
                port,
                reason: "the kernel's limit on epoll watches is reached",
            });
        }
        let entry = KernelSocket {
            socket,
            port: bound_port,
            tx: Vec::with_capacity(self.options.batch_max),
        };
        let id = self
            .sockets
            .insert(entry)
            .map_err(|(error, _)| CommandError::from(error))?;
        self.order.push(id);
        Ok(id)
    }

    fn close_udp(&mut self, socket: SocketId) -> Result<(), CommandError> {
        let entry = self.sockets.get(socket)?;
        if !entry.tx.is_empty() {
            // Sends queued in this pass go out first.
            return Err(CommandError::Bind {
                port: entry.port,
                reason: "sends are still queued on the socket; close it in the next pass",
            });
        }
        let entry = self.sockets.remove(socket)?;
        let _ = self.epoll.remove(entry.socket.as_fd());
        self.order.retain(|&id| id != socket);
        self.next_rx = 0;
        Ok(())
    }

    fn send_to(
        &mut self,
        _now_ns: u64,
        pool: &mut PacketPool,
        socket: SocketId,
        to: SocketAddrV4,
        data: BufChain,
        notify: Option<u64>,
    ) -> Result<(), Refused> {
        let refuse = |error: CommandError, data: BufChain| Refused {
            error,
            data: Some(data),
        };
        if self.sockets.get(socket).is_err() {
            return Err(refuse(HandleError::Stale.into(), data));
        }
        let buf = match data.into_single() {
            Ok(buf) => buf,
            Err(chain) => return Err(refuse(SendError::PayloadTooLarge.into(), chain)),
        };
        if !pool.is_held_by(&buf, FrameOwner::App) {
            return Err(refuse(CommandError::NotOwned, BufChain::from(buf)));
        }
        if to.port() == 0 || to.ip().is_unspecified() || to.ip().is_broadcast() {
            return Err(refuse(
                SendError::BadDestination.into(),
                BufChain::from(buf),
            ));
        }
        let entry = self
            .sockets
            .get_mut(socket)
            .expect("checked live just above");
        if entry.tx.len() == self.options.batch_max {
            Self::transmit(
                entry,
                &mut self.send_slots,
                pool,
                &mut self.counters,
                &mut self.kernel,
            );
        }
        pool.hand_over(&buf, FrameOwner::InFlight);
        if let Some(token) = notify {
            pool.return_after_tx(&buf, token);
        }
        entry.tx.push((buf, to));
        Ok(())
    }

    fn flush(&mut self, _now_ns: u64, pool: &mut PacketPool) {
        for &id in &self.order {
            let entry = self
                .sockets
                .get_mut(id)
                .expect("`order` holds only live sockets");
            Self::transmit(
                entry,
                &mut self.send_slots,
                pool,
                &mut self.counters,
                &mut self.kernel,
            );
        }
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.epoll.as_fd())
    }

    fn counters(&self) -> TransportCounters {
        self.counters
    }

    fn shutdown(&mut self, pool: &mut PacketPool) {
        for buf in self.posted.drain(..) {
            pool.free(buf);
        }
        for &id in &self.order {
            let entry = self
                .sockets
                .get_mut(id)
                .expect("`order` holds only live sockets");
            for (buf, _) in entry.tx.drain(..) {
                pool.free(buf);
            }
        }
    }
}
