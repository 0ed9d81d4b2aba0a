//! The AF_XDP backend: a [`NicQueue`] of raw Ethernet frames over one AF_XDP socket.
//!
//! This is where Melange becomes Arrakis and IX on Linux: frames go from the NIC queue to the
//! engine's stack and back with no kernel network stack on the path; the kernel only runs the
//! control plane's XDP program, which steers frames that match a filter into this queue's
//! socket and passes everything else to the kernel untouched.
//!
//! Memory. The engine's [`PacketPool`] *is* the UMEM: frame `i` of the pool is the UMEM chunk at
//! byte `i * frame_size`, exactly the address the kernel puts in ring descriptors. The pool owns
//! the memory ([`UmemMemory`]), the queue owns the socket (which only borrowed the UMEM to
//! register it; see `melange_sys::xsk`). A frame handed to the kernel leaves the engine as a
//! [`RawBuf`] (`PacketBuf::into_raw`) and comes back through `PacketPool::from_raw`, so the
//! pool's allocation bitmap keeps accounting for every frame, and a bitmap of frames the
//! kernel holds turns a duplicated or forged descriptor into a counted error, not a double use.
//!
//! Rings. Before each receive the queue reaps the completion ring (frames the kernel finished
//! sending go back to the pool) when it has frames out for sending, and tops the fill ring up to
//! `fill_target` frames once a batch's worth is missing. Both are skipped otherwise: the fill
//! ring's producer index is a cache line the receiving CPU (on veth, the *sender's* CPU) reads,
//! so writing it for every frame would bounce it between cores on the latency path. Transmit
//! publishes a batch on the TX ring and kicks with `sendto` (copy mode needs a kick per batch);
//! the kernel sends at most 32 frames per kick in copy mode and answers `EAGAIN`, so the queue
//! keeps kicking, and reaping, until the ring drains or a bound is hit. Nothing allocates
//! after start-up: descriptor and address scratch arrays are sized by `batch_max` once.
//!
//! Memory limits. A UMEM counts against `RLIMIT_MEMLOCK` unless the process has `CAP_IPC_LOCK`
//! (8 MiB here, and root does not hold the capability). [`umem_frames_for`] sizes the UMEMs of
//! all engines to fit, or fails with a message that says what to change.

use melange_core::pool::RawBuf;
use melange_core::PacketBuf;
use melange_core::{PacketPool, PoolConfig, PoolMemory};
use melange_engine::{NicCaps, NicError, NicErrorKind, NicQueue, TxOutcome};
use melange_sys::mmap::{Region, RegionOptions};
use melange_sys::xsk::{
    BindMode, BoundMode, SocketConfig, TxKick, Umem, UmemConfig, XdpDesc, XskSocket,
};
use std::os::fd::BorrowedFd;
use thiserror::Error;

/// Frames per UMEM when memory is not limited.
pub const UMEM_FRAMES_DEFAULT: u32 = 4096;
/// Fewest frames per UMEM worth running with: two full rings of a 64-frame batch plus room.
pub const UMEM_FRAMES_MIN: u32 = 512;
/// Bytes per UMEM frame.
pub const FRAME_SIZE: u32 = 2048;
/// Kicks (with reaping in between) before a transmit batch gives up on a full TX ring.
const TX_KICKS_MAX: u32 = 4096;

/// Errors opening an AF_XDP queue. Each says what to change.
#[derive(Debug, Error)]
pub enum AfXdpError {
    /// The locked-memory limit leaves too little room for the UMEMs.
    #[error(
        "RLIMIT_MEMLOCK is {limit_bytes} bytes and this process lacks CAP_IPC_LOCK: that leaves \
         {frames} frames of {frame_size} bytes per engine for {engines} engine(s), fewer than the \
         {min} needed. Raise the limit (`ulimit -l`, LimitMEMLOCK= in systemd), grant CAP_IPC_LOCK, \
         or run fewer engines."
    )]
    Memlock {
        /// The soft limit.
        limit_bytes: u64,
        /// Frames that would fit per engine.
        frames: u32,
        /// Frame size.
        frame_size: u32,
        /// Engines asked for.
        engines: usize,
        /// Minimum frames per engine.
        min: u32,
    },
    /// Mapping the UMEM failed.
    #[error("allocating a {bytes}-byte UMEM: {source}")]
    Region {
        /// Size asked for.
        bytes: usize,
        /// The error.
        source: std::io::Error,
    },
    /// The socket could not be created or bound; the message names the fix.
    #[error("AF_XDP socket on ifindex {ifindex} queue {queue}: {source}")]
    Socket {
        /// Interface.
        ifindex: u32,
        /// Queue.
        queue: u32,
        /// The error from melange-sys, which says what to change.
        source: std::io::Error,
    },
    /// The pool rejected the UMEM geometry (a bug in this module).
    #[error("pool over UMEM: {0}")]
    Pool(#[from] melange_core::pool::PoolError),
}

/// How many UMEM frames each of `engines` engines gets under the current locked-memory limit.
pub fn umem_frames_for(engines: usize) -> Result<u32, AfXdpError> {
    let engines = engines.max(1);
    if melange_sys::mmap::has_cap_ipc_lock() {
        return Ok(UMEM_FRAMES_DEFAULT);
    }
    let (soft, _hard) = melange_sys::mmap::memlock_limit().unwrap_or((8 << 20, 8 << 20));
    if soft == u64::MAX {
        return Ok(UMEM_FRAMES_DEFAULT);
    }
    // Keep a tenth back for whatever else the process locks.
    let per_engine = soft / 10 * 9 / engines as u64 / u64::from(FRAME_SIZE);
    let frames = (per_engine.min(u64::from(UMEM_FRAMES_DEFAULT)) as u32) & !63;
    if frames < UMEM_FRAMES_MIN {
        return Err(AfXdpError::Memlock {
            limit_bytes: soft,
            frames,
            frame_size: FRAME_SIZE,
            engines,
            min: UMEM_FRAMES_MIN,
        });
    }
    Ok(frames)
}

/// The UMEM as a pool's memory.
pub struct UmemMemory(Umem);

impl PoolMemory for UmemMemory {
    fn frame_size(&self) -> usize {
        FRAME_SIZE as usize
    }
    fn frame_count(&self) -> usize {
        self.0.as_slice().len() / FRAME_SIZE as usize
    }
    fn frame(&self, index: u32) -> &[u8] {
        let base = index as usize * FRAME_SIZE as usize;
        &self.0.as_slice()[base..base + FRAME_SIZE as usize]
    }
    fn frame_mut(&mut self, index: u32) -> &mut [u8] {
        let base = index as usize * FRAME_SIZE as usize;
        &mut self.0.as_mut_slice()[base..base + FRAME_SIZE as usize]
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// Options of one AF_XDP queue.
#[derive(Debug, Clone, Copy)]
pub struct AfXdpOptions {
    /// Interface index.
    pub ifindex: u32,
    /// Queue of the interface.
    pub queue: u32,
    /// UMEM frames (the pool's size); see [`umem_frames_for`].
    pub frames: u32,
    /// Most frames per ring operation.
    pub batch_max: usize,
    /// Zero-copy if the driver supports it, copy otherwise (or force one).
    pub bind: BindMode,
    /// Ask for 2 MiB pages for the UMEM (falls back to ordinary pages).
    pub hugepages: bool,
}

/// Counters of an AF_XDP queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AfXdpCounters {
    /// Frames placed on the fill ring.
    pub filled: u64,
    /// Frames received.
    pub received: u64,
    /// Frames published on the TX ring.
    pub transmitted: u64,
    /// Frames the kernel reported sent (completion ring).
    pub completed: u64,
    /// `sendto` kicks.
    pub kicks: u64,
    /// Kicks answered with "try again".
    pub kick_retries: u64,
    /// Frames dropped because the TX ring stayed full.
    pub tx_ring_full_drops: u64,
    /// Receives that found the pool empty when refilling.
    pub fill_pool_exhausted: u64,
    /// Descriptors naming a frame the kernel did not hold (never expected).
    pub bad_descriptors: u64,
    /// Fill-ring wakeups requested by the kernel.
    pub fill_wakeups: u64,
}

/// One AF_XDP socket as an engine's NIC queue. See the module documentation.
pub struct AfXdpQueue {
    socket: XskSocket,
    frame_size: u64,
    /// Frames to keep on the fill ring.
    fill_target: usize,
    /// Frames on the fill ring now (given, not yet received).
    fill_len: usize,
    /// Refill once this many frames are missing from the fill ring.
    refill_batch: usize,
    /// Frames published on the TX ring whose completion has not been reaped yet.
    tx_outstanding: usize,
    /// One bit per frame: set while the kernel holds it (fill or TX ring).
    kernel_owned: Vec<u64>,
    descs: Vec<XdpDesc>,
    addrs: Vec<u64>,
    counters: AfXdpCounters,
}

impl AfXdpQueue {
    /// Opens a queue and the pool over its UMEM, and primes the fill ring.
    pub fn open(
        options: AfXdpOptions,
        headroom: usize,
    ) -> Result<(AfXdpQueue, PacketPool), AfXdpError> {
        let frames = options.frames;
        let bytes = frames as usize * FRAME_SIZE as usize;
        let region = Region::new(
            bytes,
            RegionOptions {
                hugepages: options.hugepages,
                populate: false,
                lock: false,
            },
        )
        .map_err(|source| AfXdpError::Region { bytes, source })?;
        // Rings half the UMEM each way, so a full fill ring still leaves frames to send from.
        let ring = (frames / 2).next_power_of_two().min(frames / 2).max(64);
        let ring = if ring.is_power_of_two() {
            ring
        } else {
            ring.next_power_of_two() / 2
        };
        let umem_config = UmemConfig {
            frame_size: FRAME_SIZE,
            frame_count: frames,
            headroom: 0,
            fill_ring_size: ring,
            completion_ring_size: ring,
        };
        let socket_error = |source| AfXdpError::Socket {
            ifindex: options.ifindex,
            queue: options.queue,
            source,
        };
        let umem = Umem::new(region, umem_config).map_err(socket_error)?;
        let socket_config = SocketConfig {
            rx_ring_size: ring,
            tx_ring_size: ring,
            bind: options.bind,
            need_wakeup: true,
        };
        let socket = XskSocket::new(options.ifindex, options.queue, &umem, socket_config)
            .map_err(socket_error)?;
        let pool_config = PoolConfig {
            frame_size: FRAME_SIZE as usize,
            frame_count: frames as usize,
            headroom,
        };
        let mut pool = PacketPool::with_memory(pool_config, Box::new(UmemMemory(umem)))?;
        let batch = options.batch_max;
        let mut queue = AfXdpQueue {
            socket,
            frame_size: u64::from(FRAME_SIZE),
            fill_target: ring as usize,
            fill_len: 0,
            refill_batch: batch.clamp(1, ring as usize / 4),
            tx_outstanding: 0,
            kernel_owned: vec![0; (frames as usize).div_ceil(64)],
            descs: vec![XdpDesc::default(); batch.max(ring as usize)],
            addrs: vec![0; batch.max(ring as usize)],
            counters: AfXdpCounters::default(),
        };
        queue.refill(&mut pool, 1);
        Ok((queue, pool))
    }

    /// Whether the socket bound in zero-copy or copy mode.
    pub fn bound_mode(&self) -> BoundMode {
        self.socket.bound_mode()
    }
    /// The queue's counters.
    pub fn counters(&self) -> AfXdpCounters {
        self.counters
    }
    /// The socket, to register in the control plane's XSKMAP.
    pub fn socket_fd(&self) -> BorrowedFd<'_> {
        self.socket.fd()
    }
    /// The kernel's own statistics for the socket.
    pub fn kernel_statistics(&self) -> std::io::Result<melange_sys::xsk::XskStatistics> {
        self.socket.statistics()
    }

    fn owned(&self, index: u32) -> bool {
        self.kernel_owned[index as usize / 64] & (1 << (index % 64)) != 0
    }
    fn set_owned(&mut self, index: u32, owned: bool) {
        let word = &mut self.kernel_owned[index as usize / 64];
        if owned {
            *word |= 1 << (index % 64);
        } else {
            *word &= !(1 << (index % 64));
        }
    }

    /// Takes back a frame the kernel returned at `addr` (any offset inside the frame).
    fn reclaim(
        &mut self,
        pool: &PacketPool,
        addr: u64,
        len: u32,
    ) -> Option<melange_core::PacketBuf> {
        let index = (addr / self.frame_size) as u32;
        let start = (addr % self.frame_size) as u16;
        if (index as usize) >= pool.capacity() || !self.owned(index) {
            self.counters.bad_descriptors += 1;
            return None;
        }
        let buf = pool.from_raw(RawBuf {
            index,
            start,
            len: len as u16,
        });
        if buf.is_none() {
            self.counters.bad_descriptors += 1;
            return None;
        }
        self.set_owned(index, false);
        buf
    }

    /// Returns frames the kernel finished sending to the pool.
    fn reap_completions(&mut self, pool: &mut PacketPool) {
        if self.tx_outstanding == 0 {
            return;
        }
        loop {
            let n = self.socket.complete(&mut self.addrs);
            self.tx_outstanding = self.tx_outstanding.saturating_sub(n);
            for i in 0..n {
                let addr = self.addrs[i];
                if let Some(buf) = self.reclaim(pool, addr, 0) {
                    pool.release_tx(buf, Ok(()));
                    self.counters.completed += 1;
                }
            }
            if n < self.addrs.len() {
                break;
            }
        }
    }

    /// Tops the fill ring up to `fill_target` frames if at least `at_least` are missing.
    fn refill(&mut self, pool: &mut PacketPool, at_least: usize) {
        let missing = self.fill_target - self.fill_len;
        if missing == 0 || missing < at_least {
            return;
        }
        let want = missing.min(self.addrs.len());
        let mut n = 0;
        while n < want {
            let Some(buf) = pool.alloc_frame() else {
                self.counters.fill_pool_exhausted += 1;
                break;
            };
            let raw = buf.into_raw();
            self.addrs[n] = u64::from(raw.index) * self.frame_size;
            n += 1;
        }
        let placed = self.socket.fill(&self.addrs[..n]);
        for i in 0..n {
            let index = (self.addrs[i] / self.frame_size) as u32;
            if i < placed {
                self.set_owned(index, true);
            } else {
                let buf = pool
                    .from_raw(RawBuf {
                        index,
                        start: 0,
                        len: 0,
                    })
                    .expect("a frame just allocated is still allocated");
                pool.free(buf);
            }
        }
        self.fill_len += placed;
        self.counters.filled += placed as u64;
        if placed > 0 && self.socket.needs_fill_wakeup() {
            self.counters.fill_wakeups += 1;
            let _ = self.socket.wake_rx();
        }
    }

    /// Kicks the TX ring until the kernel has taken everything, reaping as it goes.
    fn drain_tx(&mut self, pool: &mut PacketPool) -> Result<(), NicError> {
        for _ in 0..TX_KICKS_MAX {
            self.counters.kicks += 1;
            match self.socket.kick_tx() {
                Ok(TxKick::Done) => return Ok(()),
                Ok(TxKick::Retry) => {
                    self.counters.kick_retries += 1;
                    self.reap_completions(pool);
                    std::hint::spin_loop();
                }
                Err(source) => {
                    return Err(NicError::os(
                        NicErrorKind::Transmit,
                        "sendto (AF_XDP tx kick)",
                        &source,
                    ))
                }
            }
        }
        Ok(())
    }
}

impl NicQueue for AfXdpQueue {
    fn caps(&self) -> NicCaps {
        NicCaps {
            tx_checksum_offload: false,
            multi_buffer: false,
            zero_copy: self.bound_mode() == BoundMode::ZeroCopy,
            frame_len_max: FRAME_SIZE as usize - melange_sys::xsk::XDP_PACKET_HEADROOM as usize,
        }
    }

    fn tx_room(&self) -> usize {
        self.socket.tx_free()
    }

    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<PacketBuf>,
        max: usize,
    ) -> Result<(), NicError> {
        self.reap_completions(pool);
        let max = max.min(self.descs.len());
        let n = self.socket.receive(&mut self.descs[..max]);
        for i in 0..n {
            let desc = self.descs[i];
            self.fill_len = self.fill_len.saturating_sub(1);
            if let Some(buf) = self.reclaim(pool, desc.addr, desc.len) {
                self.counters.received += 1;
                rx.push(buf);
            }
        }
        // An empty fill ring (the pool has no frames to receive into) is counted by `refill`
        // as `fill_pool_exhausted`; it is load, not a device error.
        self.refill(pool, self.refill_batch);
        Ok(())
    }

    fn send_batch(&mut self, pool: &mut PacketPool, tx: &mut Vec<PacketBuf>) -> TxOutcome {
        let total = tx.len();
        let mut published = 0;
        let mut kicks = 0;
        let mut failure = None;
        while published < total {
            // Publish what fits.
            let chunk = (total - published).min(self.descs.len());
            for (slot, buf) in self.descs.iter_mut().zip(&tx[published..published + chunk]) {
                *slot = XdpDesc {
                    addr: buf.offset_in(self.frame_size as usize) as u64,
                    len: buf.len() as u32,
                    options: 0,
                };
            }
            let placed = self.socket.transmit(&self.descs[..chunk]);
            for i in 0..placed {
                let index = (self.descs[i].addr / self.frame_size) as u32;
                self.set_owned(index, true);
            }
            published += placed;
            self.tx_outstanding += placed;
            self.counters.transmitted += placed as u64;
            if let Err(error) = self.drain_tx(pool) {
                failure = Some(error);
                break;
            }
            if placed == 0 {
                kicks += 1;
                if kicks > TX_KICKS_MAX {
                    break;
                }
            }
        }
        // Frames now on the ring belong to the kernel until completion; forget their handles.
        // Frames that never fit are dropped here.
        for (i, buf) in tx.drain(..).enumerate() {
            if i < published {
                let _raw = buf.into_raw();
            } else {
                self.counters.tx_ring_full_drops += 1;
                pool.release_tx(buf, Err(melange_core::TxDropped::RingFull));
            }
        }
        self.reap_completions(pool);
        TxOutcome {
            sent: published,
            error: failure,
        }
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.socket.fd())
    }

    fn release(&mut self, pool: &mut PacketPool) {
        self.reap_completions(pool);
        // Everything the kernel still holds (fill ring, unsent TX) comes back to the pool: the
        // engine is stopping and the socket closes with it.
        for index in 0..pool.capacity() as u32 {
            if self.owned(index) {
                self.set_owned(index, false);
                if let Some(buf) = pool.from_raw(RawBuf {
                    index,
                    start: 0,
                    len: 0,
                }) {
                    pool.free(buf);
                }
            }
        }
        self.fill_len = 0;
        self.tx_outstanding = 0;
    }
}
