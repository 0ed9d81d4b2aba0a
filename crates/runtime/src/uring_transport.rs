//! The io_uring side of the kernel-socket transport ([`crate::KernelTransport`] with
//! [`crate::SocketIo::Uring`]).
//!
//! The sockets, the events, the errors and the transmit queue are the kernel transport's; this
//! module only moves datagrams through a [`UringUdp`]. Receive: every bound socket has a
//! multishot `recvmsg` armed on one ring, the kernel puts datagrams into a shared ring of
//! provided buffers, and `UringIo::receive` reaps the completions, without a system call
//! when they are already posted, copying each datagram into pool frames (a chain when it is
//! longer than one frame). Transmit: all of a pass's datagrams, from any socket, leave in one
//! submission of `sendmsg` requests with one iovec per frame, no copy; the submission also
//! waits for their completions, so the frames go back to their owners before `flush` returns,
//! exactly as with `sendmmsg`.
//!
//! # The copy on receive, and what would remove it
//!
//! The provided buffers are not pool frames, so each datagram is copied once more, from the
//! buffer into frames. They cannot be: a multishot `recvmsg` puts a whole datagram into one
//! buffer, so a buffer must hold 65,507 bytes, and a pool frame is 2 KiB; and the pool's heap
//! memory has no ledger of frames lent to a kernel that writes them between our calls (the
//! AF_XDP UMEM has one, `melange_sys::FrameRegion`). Removing the copy would take pool memory
//! with such a ledger and 64 KiB frames for the receive side, or `recv` bundles (several
//! buffers per datagram), which do not report the sender. For small datagrams the copy is a
//! few cache lines; the echo benchmark (`examples/kernel_io_bench.rs`) measures the whole path.

use crate::kernel::{
    deliver, extend_chain, KernelCounters, KernelOptions, KernelSocket, SocketHandle, TxOutcome,
    TxQueue, TX_EAGAIN_RETRIES_MAX,
};
use melange_core::handle::{HandleTable, SocketKind};
use melange_core::pool::TxDropped;
use melange_core::{BufChain, EventQueue, FrameOwner, PacketPool, SocketId};
use melange_engine::{NicError, NicErrorKind, TransportCounters, UDP_SOCKETS_MAX};
use melange_sys::udp::{Segment, UdpSocketOptions};
use melange_sys::uring::{Received, UringOptions, UringSendSlot, UringSocketId, UringUdp};
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, BorrowedFd};

/// The io_uring backend of [`crate::KernelTransport`]. See the module documentation.
pub(crate) struct UringIo {
    ring: UringUdp,
    /// Per ring socket slot: the ring's id, the transport's id and the bound port.
    by_index: Vec<Option<(UringSocketId, SocketId, u16)>>,
    /// Scratch for one submission; capacity `batch_max`.
    slots: Vec<UringSendSlot>,
    /// Scratch: the segments of the datagrams in `slots`, in order.
    segments: Vec<Segment>,
    /// Indexes of queued datagrams still to send, and the next round's.
    pending: Vec<usize>,
    again: Vec<usize>,
}

impl UringIo {
    /// Sets up the rings for `options`.
    pub(crate) fn new(options: &KernelOptions) -> std::io::Result<Self> {
        let ring = UringUdp::new(UringOptions {
            rx_buffers: options.uring_rx_buffers,
            batch_max: options.batch_max,
            sockets_max: UDP_SOCKETS_MAX,
        })?;
        Ok(Self {
            ring,
            by_index: vec![None; UDP_SOCKETS_MAX],
            slots: Vec::with_capacity(options.batch_max),
            segments: Vec::with_capacity(crate::kernel::TX_FRAMES_MAX),
            pending: Vec::with_capacity(options.batch_max),
            again: Vec::with_capacity(options.batch_max),
        })
    }

    pub(crate) fn bind(
        &mut self,
        addr: SocketAddrV4,
        options: &UdpSocketOptions,
    ) -> std::io::Result<UringSocketId> {
        self.ring.bind(addr, options)
    }

    /// Records which transport socket a ring socket is, once the transport has its id.
    pub(crate) fn register(&mut self, id: UringSocketId, socket: SocketId, port: u16) {
        self.by_index[id.index()] = Some((id, socket, port));
    }

    pub(crate) fn close(&mut self, id: UringSocketId) {
        self.ring.close(id);
        if let Some(entry) = self.by_index.get_mut(id.index()) {
            *entry = None;
        }
    }

    pub(crate) fn local_addr(&self, id: UringSocketId) -> std::io::Result<SocketAddrV4> {
        self.ring.local_addr(id)
    }

    pub(crate) fn wakeup_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    /// Adds the ring's own counters.
    pub(crate) fn add_counters(&self, counters: &mut KernelCounters) {
        let ring = self.ring.counters();
        counters.recv_calls += ring.rx_enters;
        counters.send_calls += ring.tx_enters;
        counters.rx_reaped_without_syscall += ring.rx_reaped_without_enter;
        counters.rx_no_buffers += ring.rx_no_buffers;
    }

    /// Turns up to `max` completions into events; returns how many datagrams (and receive
    /// errors) were taken.
    pub(crate) fn receive(
        &mut self,
        pool: &mut PacketPool,
        events: &mut EventQueue,
        max: usize,
        counters: &mut TransportCounters,
        kernel: &mut KernelCounters,
    ) -> usize {
        if max == 0 {
            return 0;
        }
        let by_index = &self.by_index;
        let result = self.ring.receive(max, |received| match received {
            Received::Datagram {
                socket,
                peer,
                payload,
                truncated,
            } => {
                let Some((_, id, port)) = by_index
                    .get(socket.index())
                    .copied()
                    .flatten()
                    .filter(|(ring_id, ..)| *ring_id == socket)
                else {
                    return;
                };
                if truncated {
                    kernel.rx_truncated += 1;
                    return;
                }
                let Some(mut head) = pool.alloc_for(FrameOwner::Nic) else {
                    kernel.rx_pool_exhausted += 1;
                    return;
                };
                let first = payload.len().min(pool.tailroom(&head));
                pool.set_len(&mut head, first)
                    .expect("at most the tailroom fits the frame");
                pool.data_mut(&head).copy_from_slice(&payload[..first]);
                let mut data = BufChain::from(head);
                if first < payload.len() {
                    if !extend_chain(pool, &mut data, &payload[first..]) {
                        kernel.rx_pool_exhausted += 1;
                        pool.free_chain(data);
                        return;
                    }
                    kernel.rx_chained += 1;
                }
                deliver(pool, events, counters, id, port, peer, data);
            }
            Received::Error { error, .. } => counters.errors.record(NicError::os(
                NicErrorKind::Receive,
                "io_uring recvmsg",
                &error,
            )),
        });
        match result {
            Ok(n) => n,
            Err(error) => {
                counters.errors.record(NicError::os(
                    NicErrorKind::Receive,
                    "io_uring_enter",
                    &error,
                ));
                0
            }
        }
    }

    /// Sends every queued datagram, writing each one's outcome into `tx.outcomes`.
    pub(crate) fn transmit(
        &mut self,
        tx: &mut TxQueue,
        sockets: &HandleTable<SocketKind, KernelSocket>,
        pool: &mut PacketPool,
        counters: &mut TransportCounters,
        kernel: &mut KernelCounters,
    ) {
        let frame_size = pool.config().frame_size;
        let Some(memory) = pool.contiguous_mut() else {
            counters.errors.record(NicError::new(
                NicErrorKind::Transmit,
                "the kernel transport needs a heap-memory pool",
            ));
            return;
        };
        let memory: &[u8] = memory;
        self.pending.clear();
        for (index, entry) in tx.entries.iter().enumerate() {
            match sockets.get(entry.socket).map(|s| &s.handle) {
                Ok(SocketHandle::Uring(_)) => self.pending.push(index),
                // `close_udp` refuses while sends are queued, so this is a backend mismatch.
                _ => tx.outcomes[index] = TxOutcome::Dropped(TxDropped::Device),
            }
        }
        let mut retries = 0;
        let mut first_error = None;
        while !self.pending.is_empty() {
            self.slots.clear();
            self.segments.clear();
            for &index in &self.pending {
                let entry = &tx.entries[index];
                let Ok(KernelSocket {
                    handle: SocketHandle::Uring(id),
                    ..
                }) = sockets.get(entry.socket)
                else {
                    unreachable!("checked above");
                };
                self.slots
                    .push(UringSendSlot::new(*id, entry.to, entry.frames));
                self.segments.extend(
                    tx.frames[entry.first..entry.first + entry.frames]
                        .iter()
                        .map(|buf| Segment {
                            offset: buf.offset_in(frame_size),
                            len: buf.len(),
                        }),
                );
            }
            let done = match self.ring.send(memory, &mut self.slots, &self.segments) {
                Ok(done) => done,
                Err(error) => {
                    // Our own segment lists are always inside the pool: a bug, but not one
                    // worth more than dropping this pass's datagrams.
                    first_error.get_or_insert(NicError::os(
                        NicErrorKind::Transmit,
                        "io_uring sendmsg",
                        &error,
                    ));
                    break;
                }
            };
            self.again.clear();
            for (slot, &index) in self.slots[..done].iter().zip(&self.pending) {
                match slot.outcome() {
                    Ok(_) => tx.outcomes[index] = TxOutcome::Sent,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        self.again.push(index);
                    }
                    Err(error) => {
                        first_error.get_or_insert(NicError::os(
                            NicErrorKind::Transmit,
                            "io_uring sendmsg",
                            &error,
                        ));
                        tx.outcomes[index] = TxOutcome::Dropped(TxDropped::Device);
                    }
                }
            }
            if !self.again.is_empty() {
                kernel.tx_eagain += 1;
                retries += 1;
                if retries > TX_EAGAIN_RETRIES_MAX {
                    // The rest keep their default outcome: dropped, transmit queue full.
                    break;
                }
                std::hint::spin_loop();
            }
            self.again.extend_from_slice(&self.pending[done..]);
            std::mem::swap(&mut self.pending, &mut self.again);
        }
        if let Some(error) = first_error {
            counters.errors.record(error);
        }
    }
}
