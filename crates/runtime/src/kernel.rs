//! The kernel-socket backend: a [`NicQueue`] of UDP payloads over an ordinary socket.
//!
//! Each engine owns one UDP socket bound with `SO_REUSEPORT`, so the kernel spreads flows over
//! the engines by hashing, much as RSS spreads them over NIC queues. Receive and transmit are
//! batched with `recvmmsg`/`sendmmsg` straight into and out of the engine's pool: the kernel
//! copies each datagram once, into a pool frame, and the app sees it zero-copy from there.
//!
//! Receive buffers are posted ahead (like a fill ring): the queue keeps up to `batch_max`
//! frames allocated between calls, so a receive that finds nothing costs one system call and
//! no pool traffic.
//!
//! Transmit copes with a full socket buffer (`EAGAIN`) by retrying a bounded number of times
//! and then dropping, counted; a per-datagram error (the kernel reports the first failing
//! message of a batch) skips that datagram, counted, and the rest go on.

use melange_core::{PacketBuf, PacketPool};
use melange_engine::{Medium, NicError, NicQueue, RxDesc, TxDesc};
use melange_sys::udp::{RecvSlot, SendSlot, UdpBatchSocket, UdpSocketOptions};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd};

/// Retries of a transmit batch that the kernel refuses with `EAGAIN` before the rest drops.
const TX_EAGAIN_RETRIES_MAX: u32 = 1024;

/// Options of a kernel queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelQueueOptions {
    /// Bind with `SO_REUSEPORT` so several engines share the port.
    pub reuse_port: bool,
    /// Most datagrams per system call.
    pub batch_max: usize,
    /// Socket receive buffer, if set.
    pub recv_buffer_bytes: Option<usize>,
    /// Socket send buffer, if set.
    pub send_buffer_bytes: Option<usize>,
}

impl Default for KernelQueueOptions {
    fn default() -> Self {
        Self {
            reuse_port: true,
            batch_max: 64,
            recv_buffer_bytes: Some(4 << 20),
            send_buffer_bytes: Some(4 << 20),
        }
    }
}

/// Counters of a kernel queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelQueueCounters {
    /// Receive system calls made.
    pub recv_calls: u64,
    /// Transmit system calls made.
    pub send_calls: u64,
    /// Datagrams larger than a frame, dropped.
    pub rx_truncated: u64,
    /// Receives that found the pool empty.
    pub rx_pool_exhausted: u64,
    /// Datagrams the kernel refused with an error, skipped.
    pub tx_errors: u64,
    /// Datagrams dropped after the socket stayed full.
    pub tx_full_drops: u64,
    /// `EAGAIN` answers to transmit batches.
    pub tx_eagain: u64,
    /// The last kernel error seen at transmit, for the log.
    pub last_tx_errno: i32,
}

/// A UDP socket as an engine's NIC queue. See the module documentation.
pub struct KernelUdpQueue {
    socket: UdpBatchSocket,
    local_port: u16,
    batch_max: usize,
    posted: Vec<PacketBuf>,
    recv_slots: Vec<RecvSlot>,
    send_slots: Vec<SendSlot>,
    counters: KernelQueueCounters,
}

impl KernelUdpQueue {
    /// Binds a socket at `addr` (port 0 picks one).
    pub fn bind(addr: SocketAddrV4, options: KernelQueueOptions) -> std::io::Result<Self> {
        let socket = UdpBatchSocket::bind(
            addr,
            UdpSocketOptions {
                reuse_port: options.reuse_port,
                nonblocking: true,
                batch_max: options.batch_max,
                recv_buffer_bytes: options.recv_buffer_bytes,
                send_buffer_bytes: options.send_buffer_bytes,
                busy_poll_us: None,
            },
        )?;
        let local_port = socket.local_addr()?.port();
        let empty_recv = RecvSlot {
            offset: 0,
            capacity: 0,
            len: 0,
            peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            truncated: false,
        };
        Ok(Self {
            socket,
            local_port,
            batch_max: options.batch_max,
            posted: Vec::with_capacity(options.batch_max),
            recv_slots: vec![empty_recv; options.batch_max],
            send_slots: Vec::with_capacity(options.batch_max),
            counters: KernelQueueCounters::default(),
        })
    }

    /// The port the socket is bound to.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }
    /// The counters.
    pub fn counters(&self) -> KernelQueueCounters {
        self.counters
    }
}

impl NicQueue for KernelUdpQueue {
    fn medium(&self) -> Medium {
        Medium::Udp
    }

    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<RxDesc>,
        max: usize,
    ) -> Result<(), NicError> {
        let want = max.min(self.batch_max);
        while self.posted.len() < want {
            match pool.alloc() {
                Some(buf) => self.posted.push(buf),
                None => {
                    self.counters.rx_pool_exhausted += 1;
                    break;
                }
            }
        }
        let n = want.min(self.posted.len());
        if n == 0 {
            return Ok(());
        }
        let frame_size = pool.config().frame_size;
        for (slot, buf) in self.recv_slots.iter_mut().zip(&self.posted[..n]) {
            slot.offset = buf.offset_in(frame_size);
            slot.capacity = pool.tailroom(buf) + buf.len();
        }
        self.counters.recv_calls += 1;
        let received = self
            .socket
            .recv_batch(
                pool.contiguous_mut().ok_or(NicError::BadDescriptor(
                    "the kernel backend needs a heap-memory pool",
                ))?,
                &mut self.recv_slots[..n],
            )
            .map_err(|source| NicError::Os {
                op: "recvmmsg",
                source,
            })?;
        for (slot, mut buf) in self.recv_slots[..received]
            .iter()
            .zip(self.posted.drain(..received))
        {
            if slot.truncated {
                self.counters.rx_truncated += 1;
                pool.free(buf);
                continue;
            }
            pool.set_len(&mut buf, slot.len)
                .expect("the kernel wrote within the slot's capacity");
            rx.push(RxDesc {
                buf,
                peer: slot.peer,
                local_port: self.local_port,
            });
        }
        Ok(())
    }

    fn send_batch(
        &mut self,
        pool: &mut PacketPool,
        tx: &mut Vec<TxDesc>,
    ) -> Result<usize, NicError> {
        let frame_size = pool.config().frame_size;
        self.send_slots.clear();
        self.send_slots.extend(tx.iter().map(|d| SendSlot {
            offset: d.buf.offset_in(frame_size),
            len: d.buf.len(),
            peer: d.peer,
        }));
        let total = self.send_slots.len();
        let Some(memory) = pool.contiguous_mut() else {
            for desc in tx.drain(..) {
                pool.free(desc.buf);
            }
            return Err(NicError::BadDescriptor(
                "the kernel backend needs a heap-memory pool",
            ));
        };
        let memory: &[u8] = memory;
        let mut done = 0;
        let mut sent = 0;
        let mut retries = 0;
        while done < total {
            self.counters.send_calls += 1;
            match self
                .socket
                .send_batch(memory, &self.send_slots[done..])
            {
                Ok(0) => {
                    self.counters.tx_eagain += 1;
                    retries += 1;
                    if retries > TX_EAGAIN_RETRIES_MAX {
                        self.counters.tx_full_drops += (total - done) as u64;
                        break;
                    }
                    std::hint::spin_loop();
                }
                Ok(k) => {
                    done += k;
                    sent += k;
                }
                Err(err) => {
                    // The first datagram of the remaining batch failed: skip it.
                    self.counters.tx_errors += 1;
                    self.counters.last_tx_errno = err.raw_os_error().unwrap_or(0);
                    done += 1;
                }
            }
        }
        for desc in tx.drain(..) {
            pool.free(desc.buf);
        }
        Ok(sent)
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.socket.as_fd())
    }

    fn release(&mut self, pool: &mut PacketPool) {
        for buf in self.posted.drain(..) {
            pool.free(buf);
        }
    }
}
