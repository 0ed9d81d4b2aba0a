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
//! them over NIC queues.
//!
//! # Two ways to talk to the sockets
//!
//! [`SocketIo::Mmsg`] batches with `recvmmsg`/`sendmmsg` straight into and out of the engine's
//! pool: the kernel copies each datagram once, into a pool frame, and the app sees it
//! zero-copy from there. Receive buffers are posted ahead (like a fill ring): the transport
//! keeps `batch_max` frames allocated between calls, so a receive that finds nothing costs one
//! system call and no pool traffic. The sockets share one [`Epoll`] instance whose descriptor
//! is the transport's wakeup descriptor, so a sleeping engine waits on one descriptor however
//! many ports it serves.
//!
//! [`SocketIo::Uring`] serves the same sockets through io_uring
//! ([`crate::uring_transport`]): a multishot receive per socket into a ring of provided
//! buffers, reaped from shared memory without a system call when completions are waiting, and
//! copied into pool frames (see there for why the copy), and all of a pass's sends in one
//! submission. Its wakeup descriptor is the ring's.
//!
//! Both produce the same events and refuse the same sends with the same errors; the tests run
//! every case on both. [`SocketIo::Mmsg`] is the default: in the echo benchmark
//! (`examples/kernel_io_bench.rs`, 64-byte datagrams, 5 repetitions of 2 s) neither won
//! consistently: the median ratio uring/mmsg was 0.99 (0.70 to 1.07) in a quiet run, and 0.77
//! and 1.31 in two runs on a loaded machine, so the repetitions cannot tell them apart; and
//! `recvmmsg` needs no io_uring, which the seccomp profiles of common container runtimes
//! forbid.
//!
//! # Datagrams larger than a frame
//!
//! UDP over IPv4 carries up to [`DATAGRAM_LEN_MAX`] (65,507) bytes; a pool frame holds about
//! 1,800. A received datagram becomes a [`BufChain`]: its first bytes in the posted frame, the
//! rest in further pool frames, each filled to the frame's end. With `recvmmsg` each slot's
//! second iovec is a spill area of the transport (`batch_max * DATAGRAM_LEN_MAX` bytes, 4 MiB
//! for a batch of 64, committed only where big datagrams land), copied into further frames only
//! for a datagram that reached it; see `melange_sys::udp` for why not further frames as iovecs.
//! A datagram the kernel still truncates (`MSG_TRUNC`, which IPv4 cannot produce at this size)
//! is dropped and counted in [`KernelCounters::rx_truncated`].
//!
//! A send takes a chain of up to [`DATAGRAM_LEN_MAX`] bytes in up to [`SEND_SEGMENTS_MAX`]
//! frames and gives the kernel one iovec per frame (no copy); a longer one is refused with
//! [`SendError::PayloadTooLarge`] and the buffers back. A notified chain comes back frame by
//! frame, one [`Event::SendDone`] per frame with the same token (the pool returns transmitted
//! frames one at a time).
//!
//! # Transmit
//!
//! Sends queue during the pass (at most `batch_max` datagrams and [`TX_FRAMES_MAX`] frames)
//! and leave at [`Transport::flush`], or earlier when the queue fills: with `sendmmsg`, one
//! call per run of datagrams from the same socket; with io_uring, one submission for all. A
//! full socket buffer (`EAGAIN`) is retried a bounded number of times and then the rest drops,
//! counted; a per-datagram error skips that datagram, counted.

use crate::kernel_tcp::KernelTcp;
use crate::uring_transport::UringIo;
use melange_core::contract::{
    Command, CommandError, Event, EventQueue, Outcome, Refused, SendError,
};
use melange_core::handle::{HandleError, HandleTable, SocketKind};
use melange_core::pool::TxDropped;
use melange_core::{BufChain, FrameOwner, PacketBuf, PacketPool, SocketId};
use melange_engine::{NicError, NicErrorKind, Transport, TransportCounters, UDP_SOCKETS_MAX};
use melange_sys::epoll::Epoll;
use melange_sys::udp::{
    GatherSlot, RecvSlot, Segment, UdpBatchSocket, UdpSocketOptions, SEND_SEGMENTS_MAX,
    UDP_PAYLOAD_MAX,
};
use melange_sys::uring::{UringSocketId, RX_BUFFERS_DEFAULT};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd};

/// Retries of a transmit batch that the kernel refuses with `EAGAIN` before the rest drops.
pub(crate) const TX_EAGAIN_RETRIES_MAX: u32 = 1024;

/// The largest datagram payload the transport receives whole and sends: UDP over IPv4.
pub const DATAGRAM_LEN_MAX: usize = UDP_PAYLOAD_MAX;

/// The most frames queued for transmit in one pass, over all queued datagrams: what one
/// `sendmmsg` can gather (two per datagram of a batch of 64, plus one datagram of the most
/// segments). The queue is flushed early when the next send would pass it.
pub const TX_FRAMES_MAX: usize = 2 * BATCH_MAX + SEND_SEGMENTS_MAX;

const _: () = assert!(DATAGRAM_LEN_MAX <= BufChain::LEN_MAX);

/// How the transport talks to its sockets. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketIo {
    /// `recvmmsg`/`sendmmsg` straight into and out of the pool.
    #[default]
    Mmsg,
    /// io_uring: multishot receive into provided buffers, batched `sendmsg` submissions.
    Uring,
}

/// Options of a kernel transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelOptions {
    /// The local address sockets bind to (`0.0.0.0` for every address).
    pub addr: Ipv4Addr,
    /// Bind with `SO_REUSEPORT` so several engines share each port.
    pub reuse_port: bool,
    /// Most datagrams per system call (receive and transmit), 1..=64.
    pub batch_max: usize,
    /// Socket receive buffer, if set.
    pub recv_buffer_bytes: Option<usize>,
    /// Socket send buffer, if set.
    pub send_buffer_bytes: Option<usize>,
    /// `recvmmsg`/`sendmmsg` or io_uring.
    pub io: SocketIo,
    /// With [`SocketIo::Uring`]: provided receive buffers of 64 KiB each, shared by all
    /// sockets (a power of two).
    pub uring_rx_buffers: usize,
}

impl KernelOptions {
    /// Defaults for `addr`: `SO_REUSEPORT`, batches of 64, 4 MiB socket buffers,
    /// `recvmmsg`/`sendmmsg`, 128 provided buffers if io_uring is chosen.
    pub fn new(addr: Ipv4Addr) -> Self {
        Self {
            addr,
            reuse_port: true,
            batch_max: BATCH_MAX,
            recv_buffer_bytes: Some(4 << 20),
            send_buffer_bytes: Some(4 << 20),
            io: SocketIo::default(),
            uring_rx_buffers: RX_BUFFERS_DEFAULT,
        }
    }

    /// The same options with another socket I/O.
    pub fn with_io(self, io: SocketIo) -> Self {
        Self { io, ..self }
    }
}

/// The default and largest `batch_max`; [`TX_FRAMES_MAX`] is sized by it.
const BATCH_MAX: usize = 64;

/// Counters of a kernel transport, beyond the common ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Receive system calls made (`recvmmsg`, or `io_uring_enter` on the receive ring).
    pub recv_calls: u64,
    /// Transmit system calls made (`sendmmsg`, or `io_uring_enter` on the send ring).
    pub send_calls: u64,
    /// Datagrams the kernel truncated (`MSG_TRUNC`), dropped. Cannot happen up to
    /// [`DATAGRAM_LEN_MAX`].
    pub rx_truncated: u64,
    /// Datagrams that arrived in more than one frame.
    pub rx_chained: u64,
    /// Receives that found the pool empty (the datagram, or the batch, dropped).
    pub rx_pool_exhausted: u64,
    /// `EAGAIN` answers to transmit batches.
    pub tx_eagain: u64,
    /// io_uring: receive polls that found completions without a system call.
    pub rx_reaped_without_syscall: u64,
    /// io_uring: multishot receives stopped for want of a provided buffer, then re-armed.
    pub rx_no_buffers: u64,
}

/// A socket's handle in its backend.
pub(crate) enum SocketHandle {
    Mmsg(UdpBatchSocket),
    Uring(UringSocketId),
}

pub(crate) struct KernelSocket {
    pub(crate) handle: SocketHandle,
    pub(crate) port: u16,
}

/// One queued datagram: its frames are `tx_frames[first..first + frames]`.
pub(crate) struct TxEntry {
    pub(crate) socket: SocketId,
    pub(crate) to: SocketAddrV4,
    pub(crate) first: usize,
    pub(crate) frames: usize,
    pub(crate) len: usize,
}

/// What became of one queued datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxOutcome {
    Sent,
    Dropped(TxDropped),
}

/// The transmit queue both backends send from.
pub(crate) struct TxQueue {
    pub(crate) entries: Vec<TxEntry>,
    pub(crate) frames: Vec<PacketBuf>,
    /// One per entry, written by the backend's transmit.
    pub(crate) outcomes: Vec<TxOutcome>,
    /// Scratch: the segments of a batch, one per frame.
    pub(crate) segments: Vec<Segment>,
}

struct MmsgIo {
    epoll: Epoll,
    posted: Vec<PacketBuf>,
    recv_slots: Vec<RecvSlot>,
    /// `batch_max * DATAGRAM_LEN_MAX` bytes; slot `i` spills into `[i * DATAGRAM_LEN_MAX..]`.
    spill: Box<[u8]>,
    gather: Vec<GatherSlot>,
}

enum Backend {
    Mmsg(MmsgIo),
    Uring(Box<UringIo>),
}

/// The kernel-socket transport. See the module documentation.
pub struct KernelTransport {
    options: KernelOptions,
    sockets: HandleTable<SocketKind, KernelSocket>,
    /// Live sockets in bind order, for the receive round.
    order: Vec<SocketId>,
    /// Where the receive round starts next pass, so no socket starves another.
    next_rx: usize,
    backend: Backend,
    tx: TxQueue,
    counters: TransportCounters,
    kernel: KernelCounters,
    /// TCP on kernel sockets (see [`crate::kernel_tcp`]).
    tcp: KernelTcp,
    /// With io_uring: one descriptor readable when the ring or a TCP socket has news (with
    /// `recvmmsg`, the sockets' epoll instance serves, the TCP part registered in it).
    wake: Option<Epoll>,
}

/// Why [`KernelTransport::new`] failed: the options, or the kernel.
fn bad_option(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, what)
}

impl KernelTransport {
    /// A transport with no socket yet; the app binds them.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a `batch_max` outside 1..=64; the `epoll_create` error; with
    /// [`SocketIo::Uring`], the io_uring setup error, whose message says what the kernel
    /// needs (choose [`SocketIo::Mmsg`] where io_uring is not available).
    pub fn new(options: KernelOptions) -> std::io::Result<Self> {
        let batch_max = options.batch_max;
        if !(1..=BATCH_MAX).contains(&batch_max) {
            return Err(bad_option("batch_max must be in 1..=64"));
        }
        let backend = match options.io {
            SocketIo::Mmsg => Backend::Mmsg(MmsgIo {
                epoll: Epoll::new()?,
                posted: Vec::with_capacity(batch_max),
                recv_slots: vec![RecvSlot::new(0, 0); batch_max],
                // Zeroed memory comes from `calloc`, which maps fresh pages at this size: the
                // spill costs address space now and memory only where big datagrams land.
                spill: vec![0u8; batch_max * DATAGRAM_LEN_MAX].into_boxed_slice(),
                gather: Vec::with_capacity(batch_max),
            }),
            SocketIo::Uring => Backend::Uring(Box::new(UringIo::new(&options)?)),
        };
        let tcp = KernelTcp::new(options.addr, options.reuse_port)?;
        let wake = match &backend {
            Backend::Mmsg(io) => {
                io.epoll.add_readable(tcp.wakeup_fd())?;
                None
            }
            Backend::Uring(io) => {
                let wake = Epoll::new()?;
                wake.add_readable(io.wakeup_fd())?;
                wake.add_readable(tcp.wakeup_fd())?;
                Some(wake)
            }
        };
        Ok(Self {
            options,
            sockets: HandleTable::new(UDP_SOCKETS_MAX),
            order: Vec::with_capacity(UDP_SOCKETS_MAX),
            next_rx: 0,
            backend,
            tx: TxQueue {
                entries: Vec::with_capacity(batch_max),
                frames: Vec::with_capacity(TX_FRAMES_MAX),
                outcomes: Vec::with_capacity(batch_max),
                segments: Vec::with_capacity(TX_FRAMES_MAX),
            },
            counters: TransportCounters::default(),
            kernel: KernelCounters::default(),
            tcp,
            wake,
        })
    }

    /// The TCP part's counters.
    pub fn tcp_counters(&self) -> crate::KernelTcpCounters {
        self.tcp.counters()
    }

    /// The local address of a listener (its port, when it listened on port 0).
    pub fn listener_addr(
        &self,
        listener: melange_core::ListenerId,
    ) -> Result<SocketAddrV4, CommandError> {
        self.tcp.listener_addr(listener)
    }

    /// The kernel-specific counters.
    pub fn kernel_counters(&self) -> KernelCounters {
        let mut counters = self.kernel;
        if let Backend::Uring(io) = &self.backend {
            io.add_counters(&mut counters);
        }
        counters
    }

    /// How this transport talks to its sockets.
    pub fn io(&self) -> SocketIo {
        self.options.io
    }

    /// The local address of a bound socket (its port, when it was bound to port 0).
    pub fn local_addr(&self, socket: SocketId) -> Result<SocketAddrV4, CommandError> {
        let entry = self.sockets.get(socket)?;
        let addr = match (&entry.handle, &self.backend) {
            (SocketHandle::Mmsg(socket), _) => socket.local_addr(),
            (SocketHandle::Uring(id), Backend::Uring(io)) => io.local_addr(*id),
            (SocketHandle::Uring(_), Backend::Mmsg(_)) => unreachable!("one backend per transport"),
        };
        addr.map_err(|_| CommandError::Send(SendError::Backend))
    }

    /// Sends everything queued, then hands every frame back to its owner.
    fn transmit(&mut self, pool: &mut PacketPool) {
        if self.tx.entries.is_empty() {
            return;
        }
        self.tx.outcomes.clear();
        self.tx.outcomes.resize(
            self.tx.entries.len(),
            TxOutcome::Dropped(TxDropped::RingFull),
        );
        match &mut self.backend {
            Backend::Mmsg(io) => transmit_mmsg(
                io,
                &mut self.tx,
                &mut self.sockets,
                pool,
                &mut self.counters,
                &mut self.kernel,
            ),
            Backend::Uring(io) => io.transmit(
                &mut self.tx,
                &self.sockets,
                pool,
                &mut self.counters,
                &mut self.kernel,
            ),
        }
        let mut frames = self.tx.frames.drain(..);
        for (entry, outcome) in self.tx.entries.drain(..).zip(&self.tx.outcomes) {
            let result = match *outcome {
                TxOutcome::Sent => {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += entry.len as u64;
                    Ok(())
                }
                TxOutcome::Dropped(why) => {
                    self.counters.tx_dropped += 1;
                    Err(why)
                }
            };
            for buf in frames.by_ref().take(entry.frames) {
                pool.release_tx(buf, result);
            }
        }
        debug_assert_eq!(frames.len(), 0, "every queued frame belongs to an entry");
    }
}

/// `sendmmsg` for each run of queued datagrams from one socket.
fn transmit_mmsg(
    io: &mut MmsgIo,
    tx: &mut TxQueue,
    sockets: &mut HandleTable<SocketKind, KernelSocket>,
    pool: &mut PacketPool,
    counters: &mut TransportCounters,
    kernel: &mut KernelCounters,
) {
    let frame_size = pool.config().frame_size;
    tx.segments.clear();
    tx.segments.extend(tx.frames.iter().map(|buf| Segment {
        offset: buf.offset_in(frame_size),
        len: buf.len(),
    }));
    let Some(memory) = pool.contiguous_mut() else {
        counters.errors.record(NicError::new(
            NicErrorKind::Transmit,
            "the kernel transport needs a heap-memory pool",
        ));
        return;
    };
    let memory: &[u8] = memory;
    let mut run_start = 0;
    while run_start < tx.entries.len() {
        let socket_id = tx.entries[run_start].socket;
        let run_end = tx.entries[run_start..]
            .iter()
            .position(|e| e.socket != socket_id)
            .map_or(tx.entries.len(), |n| run_start + n);
        let Ok(KernelSocket {
            handle: SocketHandle::Mmsg(socket),
            ..
        }) = sockets.get_mut(socket_id)
        else {
            // `close_udp` refuses while sends are queued, so this is a backend mismatch.
            for outcome in &mut tx.outcomes[run_start..run_end] {
                *outcome = TxOutcome::Dropped(TxDropped::Device);
            }
            run_start = run_end;
            continue;
        };
        io.gather.clear();
        io.gather
            .extend(tx.entries[run_start..run_end].iter().map(|e| GatherSlot {
                segments: e.frames,
                peer: e.to,
            }));
        let mut retries = 0;
        let mut done = 0;
        let mut first_error = None;
        while done < io.gather.len() {
            let segment_at = tx.entries[run_start + done].first;
            kernel.send_calls += 1;
            match socket.send_gather(memory, &io.gather[done..], &tx.segments[segment_at..]) {
                Ok(0) => {
                    kernel.tx_eagain += 1;
                    retries += 1;
                    if retries > TX_EAGAIN_RETRIES_MAX {
                        break;
                    }
                    std::hint::spin_loop();
                }
                Ok(k) => {
                    for outcome in &mut tx.outcomes[run_start + done..run_start + done + k] {
                        *outcome = TxOutcome::Sent;
                    }
                    done += k;
                }
                Err(error) => {
                    // The first datagram of the rest failed: drop it and go on.
                    first_error.get_or_insert(NicError::os(
                        NicErrorKind::Transmit,
                        "sendmmsg",
                        &error,
                    ));
                    tx.outcomes[run_start + done] = TxOutcome::Dropped(TxDropped::Device);
                    done += 1;
                }
            }
        }
        if let Some(error) = first_error {
            counters.errors.record(error);
        }
        run_start = run_end;
    }
}

/// Copies `bytes` to the end of `chain` in fresh pool frames, each filled from its start to
/// its end. False when the pool ran dry (the caller drops the chain); the frames taken so far
/// are in the chain.
pub(crate) fn extend_chain(pool: &mut PacketPool, chain: &mut BufChain, mut bytes: &[u8]) -> bool {
    let room = pool.config().frame_size.min(usize::from(u16::MAX));
    while !bytes.is_empty() {
        let Some(mut buf) = pool.alloc_for(FrameOwner::Nic) else {
            return false;
        };
        let take = bytes.len().min(room);
        pool.set_window(&mut buf, 0, take)
            .expect("a window of at most the frame size fits the frame");
        pool.data_mut(&buf).copy_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if let Err((_, buf)) = pool.chain_push(chain, buf) {
            // Only past `BufChain::LEN_MAX`, which no datagram reaches.
            pool.free(buf);
            return false;
        }
    }
    true
}

/// Hands a received datagram to the app as an event (or drops it, counted, when the queue is
/// full).
pub(crate) fn deliver(
    pool: &mut PacketPool,
    events: &mut EventQueue,
    counters: &mut TransportCounters,
    socket: SocketId,
    local_port: u16,
    from: SocketAddrV4,
    data: BufChain,
) {
    counters.rx_packets += 1;
    counters.rx_bytes += data.len() as u64;
    pool.hand_over_chain(&data, FrameOwner::App);
    let event = Event::Datagram {
        socket,
        data,
        from,
        local_port,
    };
    if let Err(event) = events.push(event) {
        counters.rx_event_queue_full += 1;
        if let Some(data) = event.into_data() {
            pool.free_chain(data);
        }
    }
}

/// The error of a refused bind, saying what to do.
pub(crate) fn bind_error(port: u16, error: &std::io::Error) -> CommandError {
    CommandError::Bind {
        port,
        reason: match error.kind() {
            std::io::ErrorKind::AddrInUse => {
                "the port is in use by a socket of another user or without SO_REUSEPORT"
            }
            std::io::ErrorKind::PermissionDenied => "binding below 1024 needs CAP_NET_BIND_SERVICE",
            std::io::ErrorKind::AddrNotAvailable => "the address is not one of this host's",
            _ => "the kernel refused the bind",
        },
    }
}

impl KernelTransport {
    fn poll_receive_mmsg(
        &mut self,
        pool: &mut PacketPool,
        events: &mut EventQueue,
        budget: usize,
    ) -> usize {
        let Backend::Mmsg(io) = &mut self.backend else {
            unreachable!("called for the mmsg backend only");
        };
        let mut received = 0;
        let sockets = self.order.len();
        for turn in 0..sockets {
            let want = (budget - received)
                .min(events.room())
                .min(self.options.batch_max);
            if want == 0 {
                break;
            }
            while io.posted.len() < want {
                match pool.alloc_for(FrameOwner::Nic) {
                    Some(buf) => io.posted.push(buf),
                    None => {
                        self.kernel.rx_pool_exhausted += 1;
                        break;
                    }
                }
            }
            let n = want.min(io.posted.len());
            if n == 0 {
                break;
            }
            let frame_size = pool.config().frame_size;
            for (i, (slot, buf)) in io.recv_slots.iter_mut().zip(&io.posted[..n]).enumerate() {
                let capacity = pool.tailroom(buf) + buf.len();
                *slot = RecvSlot {
                    spill_offset: i * DATAGRAM_LEN_MAX,
                    spill_capacity: DATAGRAM_LEN_MAX.saturating_sub(capacity),
                    ..RecvSlot::new(buf.offset_in(frame_size), capacity)
                };
            }
            let id = self.order[(self.next_rx + turn) % sockets];
            let entry = self
                .sockets
                .get_mut(id)
                .expect("`order` holds only live sockets");
            let SocketHandle::Mmsg(socket) = &mut entry.handle else {
                unreachable!("an mmsg transport has only mmsg sockets");
            };
            let Some(memory) = pool.contiguous_mut() else {
                self.counters.errors.record(NicError::new(
                    NicErrorKind::Receive,
                    "the kernel transport needs a heap-memory pool",
                ));
                break;
            };
            self.kernel.recv_calls += 1;
            let got = match socket.recv_batch_spill(memory, &mut io.spill, &mut io.recv_slots[..n])
            {
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
            for (slot, mut buf) in io.recv_slots[..got].iter().zip(io.posted.drain(..got)) {
                received += 1;
                if slot.truncated {
                    self.kernel.rx_truncated += 1;
                    pool.free(buf);
                    continue;
                }
                pool.set_len(&mut buf, slot.len)
                    .expect("the kernel wrote within the slot's capacity");
                let mut data = BufChain::from(buf);
                if slot.spill_len > 0 {
                    let rest = &io.spill[slot.spill_offset..][..slot.spill_len];
                    if !extend_chain(pool, &mut data, rest) {
                        self.kernel.rx_pool_exhausted += 1;
                        pool.free_chain(data);
                        continue;
                    }
                    self.kernel.rx_chained += 1;
                }
                deliver(pool, events, &mut self.counters, id, port, slot.peer, data);
            }
        }
        if sockets > 0 {
            self.next_rx = (self.next_rx + 1) % sockets;
        }
        received
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
        let udp = match &mut self.backend {
            Backend::Mmsg(_) => self.poll_receive_mmsg(pool, events, budget),
            Backend::Uring(io) => {
                let max = budget.min(events.room());
                io.receive(pool, events, max, &mut self.counters, &mut self.kernel)
            }
        };
        udp + self
            .tcp
            .poll_receive(pool, events, budget.saturating_sub(udp))
    }

    fn submit(
        &mut self,
        _now_ns: u64,
        pool: &mut PacketPool,
        command: Command,
    ) -> Result<Outcome, Refused> {
        self.tcp.submit(pool, command, "kernel sockets")
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
        let socket_options = UdpSocketOptions {
            reuse_port: self.options.reuse_port,
            nonblocking: true,
            batch_max: self.options.batch_max,
            recv_buffer_bytes: self.options.recv_buffer_bytes,
            send_buffer_bytes: self.options.send_buffer_bytes,
            busy_poll_us: None,
        };
        let (handle, bound_port) = match &mut self.backend {
            Backend::Mmsg(io) => {
                let socket = UdpBatchSocket::bind(addr, socket_options)
                    .map_err(|error| bind_error(port, &error))?;
                let bound_port = socket.local_addr().map(|a| a.port()).unwrap_or(port);
                if io.epoll.add_readable(socket.as_fd()).is_err() {
                    return Err(CommandError::Bind {
                        port,
                        reason: "the kernel's limit on epoll watches is reached",
                    });
                }
                (SocketHandle::Mmsg(socket), bound_port)
            }
            Backend::Uring(io) => {
                let id = io
                    .bind(addr, &socket_options)
                    .map_err(|error| bind_error(port, &error))?;
                let bound_port = io.local_addr(id).map(|a| a.port()).unwrap_or(port);
                (SocketHandle::Uring(id), bound_port)
            }
        };
        let entry = KernelSocket {
            handle,
            port: bound_port,
        };
        let id = match self.sockets.insert(entry) {
            Ok(id) => id,
            Err((error, entry)) => {
                if let (SocketHandle::Uring(uring_id), Backend::Uring(io)) =
                    (&entry.handle, &mut self.backend)
                {
                    io.close(*uring_id);
                }
                return Err(error.into());
            }
        };
        if let (
            Ok(KernelSocket {
                handle: SocketHandle::Uring(uring_id),
                port,
            }),
            Backend::Uring(io),
        ) = (self.sockets.get(id), &mut self.backend)
        {
            io.register(*uring_id, id, *port);
        }
        self.order.push(id);
        Ok(id)
    }

    fn close_udp(&mut self, socket: SocketId) -> Result<(), CommandError> {
        let entry = self.sockets.get(socket)?;
        if self.tx.entries.iter().any(|e| e.socket == socket) {
            // Sends queued in this pass go out first.
            return Err(CommandError::Bind {
                port: entry.port,
                reason: "sends are still queued on the socket; close it in the next pass",
            });
        }
        let entry = self.sockets.remove(socket)?;
        match (&entry.handle, &mut self.backend) {
            (SocketHandle::Mmsg(udp), Backend::Mmsg(io)) => {
                let _ = io.epoll.remove(udp.as_fd());
            }
            (SocketHandle::Uring(id), Backend::Uring(io)) => io.close(*id),
            _ => unreachable!("one backend per transport"),
        }
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
        if data.len() > DATAGRAM_LEN_MAX || data.frames() > SEND_SEGMENTS_MAX {
            return Err(refuse(SendError::PayloadTooLarge.into(), data));
        }
        if !pool.is_held_by(data.head(), FrameOwner::App) {
            return Err(refuse(CommandError::NotOwned, data));
        }
        if to.port() == 0 || to.ip().is_unspecified() || to.ip().is_broadcast() {
            return Err(refuse(SendError::BadDestination.into(), data));
        }
        if self.tx.entries.len() == self.options.batch_max
            || self.tx.frames.len() + data.frames() > TX_FRAMES_MAX
        {
            self.transmit(pool);
        }
        pool.hand_over_chain(&data, FrameOwner::InFlight);
        let entry = TxEntry {
            socket,
            to,
            first: self.tx.frames.len(),
            frames: data.frames(),
            len: data.len(),
        };
        let mut rest = Some(data);
        while let Some(chain) = rest {
            let (buf, tail) = pool.chain_pop_front(chain);
            if let Some(token) = notify {
                pool.return_after_tx(&buf, token);
            }
            self.tx.frames.push(buf);
            rest = tail;
        }
        self.tx.entries.push(entry);
        Ok(())
    }

    fn flush(&mut self, _now_ns: u64, pool: &mut PacketPool) {
        self.transmit(pool);
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        match (&self.backend, &self.wake) {
            (_, Some(wake)) => Some(wake.as_fd()),
            (Backend::Mmsg(io), None) => Some(io.epoll.as_fd()),
            (Backend::Uring(io), None) => Some(io.wakeup_fd()),
        }
    }

    fn counters(&self) -> TransportCounters {
        // TCP's reads and writes count as packets here: on kernel sockets a read is what
        // one receive unit is.
        let tcp = self.tcp.counters();
        let mut counters = self.counters;
        counters.rx_packets += tcp.reads;
        counters.rx_bytes += tcp.read_bytes;
        counters.tx_packets += tcp.writes;
        counters.tx_bytes += tcp.written_bytes;
        counters
    }

    fn shutdown(&mut self, pool: &mut PacketPool) {
        self.tcp.shutdown(pool);
        if let Backend::Mmsg(io) = &mut self.backend {
            for buf in io.posted.drain(..) {
                pool.free(buf);
            }
        }
        self.tx.entries.clear();
        for buf in self.tx.frames.drain(..) {
            pool.free(buf);
        }
    }
}
