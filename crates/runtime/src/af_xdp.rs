//! The AF_XDP backend: a [`NicQueue`] of raw Ethernet frames over one AF_XDP socket.
//!
//! This is where Melange becomes Arrakis and IX on Linux: frames go from the NIC queue to the
//! engine's stack and back with no kernel network stack on the path; the kernel only runs the
//! control plane's XDP program, which steers frames that match a filter into this queue's
//! socket and passes everything else to the kernel untouched.
//!
//! Memory. The engine's [`PacketPool`] *is* the UMEM: frame `i` of the pool is the UMEM chunk at
//! byte `i * frame_size`, exactly the address the kernel puts in ring descriptors. The pool owns
//! the memory ([`UmemMemory`], a `melange_sys` [`FrameRegion`] underneath), the queue owns the
//! socket, and reaches the memory through `PacketPool::memory_as_mut` for each ring operation.
//! The region's ledger is the one record of which frames the kernel holds: the socket's ring
//! operations lend a frame as they publish it (fill, TX) and take it back as the kernel returns
//! it (RX, completion), a repeated or forged descriptor is counted and dropped by the socket,
//! and the pool's accessors refuse a lent frame. A frame handed to the kernel leaves the engine
//! as a [`RawBuf`] (`PacketBuf::into_raw`) and comes back through `PacketPool::from_raw`, so
//! the pool's allocation bitmap still accounts for every frame.
//!
//! Receive. Before each receive the queue reaps the completion ring (frames the kernel finished
//! sending go back to the pool) when frames are out for sending, and tops the fill ring up to
//! `fill_target` frames once a batch's worth is missing. Both are skipped otherwise: the fill
//! ring's producer index is a cache line the receiving CPU (on veth, the *sender's* CPU) reads,
//! so writing it for every frame would bounce it between cores on the latency path. An empty
//! pool is back-pressure from the engine, not a device error: it is counted
//! ([`AfXdpCounters::fill_pool_exhausted`]) and receive goes on with what the fill ring holds.
//!
//! Transmit. `send_batch` publishes what the TX ring takes and kicks with `sendto`, with one
//! budget of [`TX_KICKS_PER_SEND_MAX`] kicks per call. It kicks only when the kernel must be
//! asked: always in copy mode (the kernel transmits only inside a kick, at most 32 frames each,
//! answering `EAGAIN` while more wait), and in zero-copy mode only when the TX ring's
//! need-wakeup flag asks for it. Between kicks it reaps completions and publishes more. Frames
//! that could not be published within the budget are dropped and counted; frames published but
//! not yet sent stay on the ring and the next receive kicks once for them. On a kick error
//! (`ENETDOWN` when the link is down) the call still settles every buffer before it returns
//! the error: published frames belong to the kernel until their completion (or until
//! `release` closes the socket), the others go back to the pool, counted, and `tx` is empty.
//! The previous design kicked until the ring drained, up to 4096 kicks per round and 4096
//! rounds, and returned early on an error with handles still in `tx`. Nothing allocates after
//! start-up: descriptor and address scratch arrays are sized once.
//!
//! Shutdown. `release` reaps what has completed, then closes the socket with
//! `XskSocket::close_reclaiming`, which takes back every frame still lent once the kernel has
//! unbound the socket, and frees those frames to the pool. The queue is closed afterwards:
//! receive returns nothing, and transmit drops and counts.
//!
//! Memory limits. A UMEM counts against `RLIMIT_MEMLOCK` unless the process has `CAP_IPC_LOCK`
//! (8 MiB here, and root does not hold the capability). [`umem_frames_for`] sizes the UMEMs of
//! all engines to fit, or fails with a message that says what to change.

use melange_core::pool::RawBuf;
use melange_core::pool::TxDropped;
use melange_core::PacketBuf;
use melange_core::{PacketPool, PoolConfig, PoolId, PoolMemory};
use melange_engine::{NicCaps, NicError, NicErrorKind, NicQueue, TxOutcome};
use melange_sys::frames::{FrameRegion, Lease};
use melange_sys::mmap::{Region, RegionOptions};
use melange_sys::xsk::{
    BindMode, BoundMode, SocketConfig, TxKick, Umem, UmemConfig, XdpDesc, XskCounters, XskError,
    XskSocket, XskStatistics,
};
use std::os::fd::BorrowedFd;
use thiserror::Error;

/// Frames per UMEM when memory is not limited.
pub const UMEM_FRAMES_DEFAULT: u32 = 4096;
/// Fewest frames per UMEM worth running with: two full rings of a 64-frame batch plus room.
pub const UMEM_FRAMES_MIN: u32 = 512;
/// Bytes per UMEM frame.
pub const FRAME_SIZE: u32 = 2048;
/// Kicks one `send_batch` may make (and, in zero-copy mode without a wakeup request, rounds of
/// reaping while it waits for room). Copy mode sends at most 32 frames per kick
/// (`TX_BATCH_SIZE`, net/xdp/xsk.c), so 8 kicks drain 256 frames: four batches of the default
/// 64, or a full 256-entry TX ring. Frames still on the ring afterwards are kicked by the next
/// receive.
pub const TX_KICKS_PER_SEND_MAX: u32 = 8;

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
    #[error(
        "AF_XDP socket on {} queue {queue}: {source}",
        melange_sys::netdev::describe_ifindex(*ifindex)
    )]
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

/// The UMEM as a pool's memory. Frames are reached one at a time through the UMEM's
/// [`FrameRegion`], which refuses (panics on) a frame lent to the kernel; see the module
/// documentation. Only this module reaches the UMEM itself.
pub struct UmemMemory(Umem);

impl PoolMemory for UmemMemory {
    fn frame_size(&self) -> usize {
        self.0.frame_size() as usize
    }
    fn frame_count(&self) -> usize {
        self.0.frame_count() as usize
    }
    #[inline]
    fn frame(&self, index: u32) -> &[u8] {
        self.0.frames().frame(index)
    }
    #[inline]
    fn frame_mut(&mut self, index: u32) -> &mut [u8] {
        self.0.frames_mut().frame_mut(index)
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The UMEM frames of `pool`, for a ring operation.
///
/// # Panics
///
/// If the pool is not over a [`UmemMemory`]: every queue checks first that it was handed the
/// pool [`AfXdpQueue::open`] built with it.
fn umem_frames(pool: &mut PacketPool) -> &mut FrameRegion {
    pool.memory_as_mut::<UmemMemory>()
        .map(|memory| memory.0.frames_mut())
        .expect("an AF_XDP queue's pool is over its UMEM (checked by pool id)")
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
    /// `sendto` kicks, from `send_batch` and from the receive path's one kick for frames left
    /// on the TX ring.
    pub kicks: u64,
    /// Kicks answered with "try again" (`EAGAIN`, `EBUSY`, `ENOBUFS`).
    pub kick_retries: u64,
    /// Kicks that failed (`ENETDOWN`, `ENXIO`, ...). A failure in `send_batch` is also its
    /// error; one in the receive path is only counted.
    pub kick_errors: u64,
    /// `send_batch` calls that used their whole budget of [`TX_KICKS_PER_SEND_MAX`].
    pub kick_budget_exhausted: u64,
    /// The most kicks one `send_batch` call made; never above [`TX_KICKS_PER_SEND_MAX`].
    pub kicks_per_send_max: u64,
    /// Frames dropped because the TX ring had no room within the kick budget.
    pub tx_ring_full_drops: u64,
    /// Frames dropped unpublished because a kick failed in the same call.
    pub tx_error_drops: u64,
    /// Frames the socket refused to publish: empty, or a frame it already holds (a bug above).
    pub tx_rejected_drops: u64,
    /// Frames handed to `send_batch` after `release` closed the socket.
    pub tx_closed_drops: u64,
    /// Refills that found the pool empty: receive goes on with the frames already posted.
    pub fill_pool_exhausted: u64,
    /// Descriptors the socket dropped (outside the UMEM, crossing a frame, repeated or forged)
    /// plus returned frames the pool did not know; never expected.
    pub bad_descriptors: u64,
    /// Fill-ring wakeups requested by the kernel.
    pub fill_wakeups: u64,
    /// Frames still lent when the socket closed, which the kernel may still use (zero-copy
    /// mode): they never return to the pool.
    pub frames_left_lent: u64,
}

/// One AF_XDP socket as an engine's NIC queue. See the module documentation.
pub struct AfXdpQueue {
    /// The socket; `None` once `release` has closed it.
    socket: Option<XskSocket>,
    bound_mode: BoundMode,
    /// The pool built over this queue's UMEM; every call checks it is the one passed in.
    pool_id: PoolId,
    frame_size: u64,
    /// Frames to keep lent for receive (on the fill ring or in the kernel's hands).
    fill_target: usize,
    /// Refill once this many frames are missing from the fill ring.
    refill_batch: usize,
    /// [`AfXdpQueue::tx_room`] reads the shared ring index only when the cached one shows
    /// less room than this: the engine's batch, or the fragments of one UDP datagram
    /// ([`melange_net::TX_FRAGMENTS_MAX`]) if more, the most frames one send asks room for.
    room_cached_min: usize,
    /// Frames were published on the TX ring and no kick has been seen to send them all yet.
    tx_kick_pending: bool,
    descs: Vec<XdpDesc>,
    addrs: Vec<u64>,
    counters: AfXdpCounters,
    /// Bad descriptors counted here (the socket counts its own).
    bad_descriptors: u64,
    /// The socket's counters and the kernel's statistics when it closed.
    closed_counters: XskCounters,
    closed_statistics: Option<XskStatistics>,
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
        let socket = bind_waiting_for_release(options.ifindex, options.queue, &umem, socket_config)
            .map_err(socket_error)?;
        let pool_config = PoolConfig {
            frame_size: FRAME_SIZE as usize,
            frame_count: frames as usize,
            headroom,
        };
        let mut pool = PacketPool::with_memory(pool_config, Box::new(UmemMemory(umem)))?;
        let batch = options.batch_max;
        let mut queue = AfXdpQueue {
            bound_mode: socket.bound_mode(),
            socket: Some(socket),
            pool_id: pool.id(),
            frame_size: u64::from(FRAME_SIZE),
            fill_target: ring as usize,
            refill_batch: batch.clamp(1, ring as usize / 4),
            room_cached_min: batch.max(1).max(melange_net::TX_FRAGMENTS_MAX),
            tx_kick_pending: false,
            descs: vec![XdpDesc::default(); batch.max(ring as usize)],
            addrs: vec![0; batch.max(ring as usize)],
            counters: AfXdpCounters::default(),
            bad_descriptors: 0,
            closed_counters: XskCounters::default(),
            closed_statistics: None,
        };
        queue.refill(&mut pool, 1);
        Ok((queue, pool))
    }

    /// Whether the socket bound in zero-copy or copy mode.
    pub fn bound_mode(&self) -> BoundMode {
        self.bound_mode
    }

    /// The queue's counters.
    pub fn counters(&self) -> AfXdpCounters {
        let sys = self
            .socket
            .as_ref()
            .map_or(self.closed_counters, XskSocket::counters);
        AfXdpCounters {
            bad_descriptors: self.bad_descriptors
                + sys.rx_invalid
                + sys.rx_not_lent
                + sys.completion_invalid
                + sys.completion_not_lent,
            ..self.counters
        }
    }

    /// The socket, to register in the control plane's XSKMAP.
    ///
    /// # Panics
    ///
    /// After [`NicQueue::release`] closed the socket: registration belongs before the engine
    /// runs.
    pub fn socket_fd(&self) -> BorrowedFd<'_> {
        self.socket
            .as_ref()
            .expect("the socket is open until release, and registration happens before")
            .fd()
    }

    /// The kernel's own statistics for the socket; after `release`, as they were when it
    /// closed.
    pub fn kernel_statistics(&self) -> std::io::Result<XskStatistics> {
        match (&self.socket, self.closed_statistics) {
            (Some(socket), _) => socket.statistics(),
            (None, Some(statistics)) => Ok(statistics),
            (None, None) => Err(std::io::Error::other(
                "the AF_XDP socket is closed and its statistics could not be read",
            )),
        }
    }

    /// Descriptors the TX ring can take right now: how many frames are worth building for
    /// this queue. Computed from the ring indices, with no system call: from the cached
    /// consumer index when that already shows room for a full batch and for a whole
    /// fragmented datagram, otherwise from one load of the kernel's consumer index (a stale
    /// cache must not hide room forever). The second bound matters when the batch is smaller
    /// than a datagram's fragments: the stack asks for room for all of them at once (a 65,507
    /// byte datagram is 45 frames), and a cache that shows a batch but not that much would
    /// refuse the datagram while the ring is empty. 0 once closed.
    pub fn tx_room(&self) -> usize {
        let Some(socket) = &self.socket else {
            return 0;
        };
        let cached = socket.tx_free_cached();
        if cached >= self.room_cached_min {
            cached
        } else {
            socket.tx_free()
        }
    }

    /// Panics unless `pool` is the one [`AfXdpQueue::open`] returned with this queue.
    #[inline]
    fn check_pool(&self, pool: &PacketPool) {
        assert_eq!(
            pool.id(),
            self.pool_id,
            "an AF_XDP queue was handed a pool other than the one built over its UMEM"
        );
    }

    /// Returns a frame the kernel handed back (the socket has taken it back from its lease)
    /// to the pool, or makes a handle for it.
    fn returned(&mut self, pool: &PacketPool, raw: RawBuf) -> Option<melange_core::PacketBuf> {
        let buf = pool.from_raw(raw);
        if buf.is_none() {
            // The frame was allocated when it was lent and only the kernel held it since, so
            // this cannot happen; the frame is held by nobody now, not by two owners.
            self.bad_descriptors += 1;
        }
        buf
    }

    /// Returns frames the kernel finished sending to the pool.
    fn reap_completions(&mut self, pool: &mut PacketPool) {
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        loop {
            let frames = umem_frames(pool);
            if frames.lent_count(Lease::Transmit) == 0 {
                return;
            }
            // Terminates: each full round takes `addrs.len()` frames back from their lease.
            let n = socket.complete(frames, &mut self.addrs);
            for i in 0..n {
                let index = (self.addrs[i] / self.frame_size) as u32;
                let raw = RawBuf {
                    index,
                    start: 0,
                    len: 0,
                };
                match pool.from_raw(raw) {
                    Some(buf) => {
                        // Back to its owner: the pool, or the app that asked for it.
                        pool.release_tx(buf, Ok(()));
                        self.counters.completed += 1;
                    }
                    None => self.bad_descriptors += 1,
                }
            }
            if n < self.addrs.len() {
                return;
            }
        }
    }

    /// Tops the fill ring up to `fill_target` frames if at least `at_least` are missing.
    fn refill(&mut self, pool: &mut PacketPool, at_least: usize) {
        if self.socket.is_none() {
            return;
        }
        let lent = umem_frames(pool).lent_count(Lease::Receive) as usize;
        let missing = self.fill_target.saturating_sub(lent);
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
        let socket = self.socket.as_mut().expect("checked at the top");
        let placed = socket.fill(umem_frames(pool), &self.addrs[..n]);
        for i in placed..n {
            // Not placed, so not lent: the frame is still ours.
            let index = (self.addrs[i] / self.frame_size) as u32;
            let buf = pool
                .from_raw(RawBuf {
                    index,
                    start: 0,
                    len: 0,
                })
                .expect("a frame just allocated is still allocated");
            pool.free(buf);
        }
        self.counters.filled += placed as u64;
        if placed > 0 && socket.needs_fill_wakeup() {
            self.counters.fill_wakeups += 1;
            let _ = socket.wake_rx();
        }
    }

    /// One kick for frames an earlier `send_batch` left on the TX ring, if any. Errors are
    /// counted, and stop further flushes until the next `send_batch`, which reports them.
    fn flush_pending_tx(&mut self) {
        if !self.tx_kick_pending {
            return;
        }
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        if self.bound_mode == BoundMode::ZeroCopy && !socket.needs_tx_wakeup() {
            self.tx_kick_pending = false;
            return;
        }
        self.counters.kicks += 1;
        match socket.kick_tx() {
            Ok(TxKick::Done) => self.tx_kick_pending = false,
            Ok(TxKick::Retry) => self.counters.kick_retries += 1,
            Err(_) => {
                self.counters.kick_errors += 1;
                self.tx_kick_pending = false;
            }
        }
    }

    /// Publishes what the TX ring takes of `tx[from..]`, one scratch array at a time, and
    /// returns how many. A descriptor the socket refuses (an empty buffer, or a frame the
    /// kernel already holds: a bug above) is removed from `tx`, freed and counted, and the
    /// rest go on.
    fn publish(&mut self, pool: &mut PacketPool, tx: &mut Vec<PacketBuf>, from: usize) -> usize {
        let socket = self.socket.as_mut().expect("send_batch checked the socket");
        let frame_size = self.frame_size as usize;
        let mut published = 0;
        loop {
            let start = from + published;
            let chunk = (tx.len() - start).min(self.descs.len());
            if chunk == 0 {
                return published;
            }
            for (slot, buf) in self.descs.iter_mut().zip(&tx[start..start + chunk]) {
                *slot = XdpDesc {
                    addr: buf.offset_in(frame_size) as u64,
                    len: buf.len() as u32,
                    options: 0,
                };
            }
            let rejected = socket.counters().tx_rejected;
            let placed = socket.transmit(umem_frames(pool), &self.descs[..chunk]);
            published += placed;
            if socket.counters().tx_rejected != rejected {
                let refused = tx.remove(start + placed);
                pool.release_tx(refused, Err(TxDropped::Device));
                self.counters.tx_rejected_drops += 1;
            } else if placed < chunk {
                return published; // the ring is full
            }
        }
    }
}

impl NicQueue for AfXdpQueue {
    fn caps(&self) -> NicCaps {
        NicCaps {
            tx_checksum_offload: false,
            multi_buffer: false,
            zero_copy: self.bound_mode == BoundMode::ZeroCopy,
            frame_len_max: FRAME_SIZE as usize - melange_sys::xsk::XDP_PACKET_HEADROOM as usize,
        }
    }

    fn tx_room(&self) -> usize {
        AfXdpQueue::tx_room(self)
    }

    fn rx_ready(&self) -> bool {
        // One acquire load of the RX producer; frames left to kick also need a pass.
        self.tx_kick_pending
            || self
                .socket
                .as_ref()
                .is_none_or(|socket| socket.rx_available() > 0)
    }

    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<PacketBuf>,
        max: usize,
    ) -> Result<(), NicError> {
        self.check_pool(pool);
        self.reap_completions(pool);
        self.flush_pending_tx();
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let max = max.min(self.descs.len());
        let n = socket.receive(umem_frames(pool), &mut self.descs[..max]);
        for i in 0..n {
            let desc = self.descs[i];
            // The socket checked that the descriptor stays inside one frame.
            let raw = RawBuf {
                index: (desc.addr / self.frame_size) as u32,
                start: (desc.addr % self.frame_size) as u16,
                len: desc.len as u16,
            };
            if let Some(buf) = self.returned(pool, raw) {
                self.counters.received += 1;
                rx.push(buf);
            }
        }
        // An empty pool is not a device error: `refill` counts it in `fill_pool_exhausted`,
        // and receive resumes once the engine frees frames.
        self.refill(pool, self.refill_batch);
        Ok(())
    }

    fn send_batch(&mut self, pool: &mut PacketPool, tx: &mut Vec<PacketBuf>) -> TxOutcome {
        self.check_pool(pool);
        if self.socket.is_none() {
            self.counters.tx_closed_drops += tx.len() as u64;
            for buf in tx.drain(..) {
                pool.release_tx(buf, Err(TxDropped::Device));
            }
            return TxOutcome::sent(0);
        }
        self.reap_completions(pool);
        let copy_mode = self.bound_mode == BoundMode::Copy;
        let mut published = 0;
        let mut rounds = 0;
        let mut kicks = 0u64;
        let mut drained = false;
        let mut failure = None;
        loop {
            if published < tx.len() {
                published += self.publish(pool, tx, published);
            }
            let unpublished = published < tx.len();
            let socket = self.socket.as_mut().expect("checked at the top");
            let must_kick = copy_mode || socket.needs_tx_wakeup();
            if !must_kick && !unpublished {
                // Zero-copy without a wakeup request: the driver drains the ring by itself.
                drained = true;
                break;
            }
            if rounds == TX_KICKS_PER_SEND_MAX {
                self.counters.kick_budget_exhausted += 1;
                break;
            }
            rounds += 1;
            if must_kick {
                kicks += 1;
                self.counters.kicks += 1;
                match socket.kick_tx() {
                    // Copy mode: the ring is drained; zero-copy: the driver is awake.
                    Ok(TxKick::Done) if !unpublished => {
                        drained = true;
                        break;
                    }
                    Ok(TxKick::Done) => {}
                    // At most 32 frames per kick in copy mode, or the completion ring is full:
                    // reap and kick again.
                    Ok(TxKick::Retry) => self.counters.kick_retries += 1,
                    Err(source) => {
                        self.counters.kick_errors += 1;
                        failure = Some(source);
                        break;
                    }
                }
            }
            self.reap_completions(pool);
        }
        self.counters.kicks_per_send_max = self.counters.kicks_per_send_max.max(kicks);
        // Frames left on the ring get one kick from the next receive; after an error the next
        // send_batch retries (and reports) instead.
        self.tx_kick_pending =
            !drained && failure.is_none() && (published > 0 || self.tx_kick_pending);

        // Every buffer gets exactly one owner before returning, error or not. Published frames
        // are lent to the kernel until their completion is reaped (or `release` takes them
        // back): their handles are given up. The others go back to the pool.
        let dropped = (tx.len() - published) as u64;
        if failure.is_some() {
            self.counters.tx_error_drops += dropped;
        } else {
            self.counters.tx_ring_full_drops += dropped;
        }
        let why = if failure.is_some() {
            TxDropped::Device
        } else {
            TxDropped::RingFull
        };
        for (i, buf) in tx.drain(..).enumerate() {
            if i < published {
                let _in_flight = buf.into_raw();
            } else {
                pool.release_tx(buf, Err(why));
            }
        }
        self.counters.transmitted += published as u64;
        TxOutcome {
            sent: published,
            error: failure.map(|source| {
                NicError::os(NicErrorKind::Transmit, "sendto (AF_XDP tx kick)", &source)
            }),
        }
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        self.socket.as_ref().map(XskSocket::fd)
    }

    fn release(&mut self, pool: &mut PacketPool) {
        self.check_pool(pool);
        self.reap_completions(pool);
        let Some(socket) = self.socket.take() else {
            return;
        };
        self.closed_counters = socket.counters();
        self.closed_statistics = socket.statistics().ok();
        // Everything the kernel still holds (fill ring, unsent TX) comes back once the socket
        // is closed: the engine is stopping. Allocating here is off the data path.
        let frames = umem_frames(pool);
        let mut lent = Vec::with_capacity(frames.lent_total() as usize);
        let reclaimed = socket.close_reclaiming(frames, |index| lent.push(index));
        self.counters.frames_left_lent = u64::from(reclaimed.still_lent);
        for index in lent {
            let raw = RawBuf {
                index,
                start: 0,
                len: 0,
            };
            if let Some(buf) = self.returned(pool, raw) {
                pool.free(buf);
            }
        }
        self.tx_kick_pending = false;
    }
}

/// Attempts at binding a queue that is busy, [`QUEUE_BUSY_RETRY_INTERVAL`] apart.
pub const QUEUE_BUSY_RETRIES_MAX: u32 = 100;
/// Pause between two binds of a busy queue. The kernel frees a queue a moment after the
/// socket that held it closed (deferred work; `close_reclaiming`'s probe adds one more such
/// release), so an engine restarted at once would otherwise fail; 100 × 2 ms bounds the wait
/// for a queue that another program really holds to 0.2 s before the error is reported.
pub const QUEUE_BUSY_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

/// Binds an AF_XDP socket to `queue` of `ifindex`, retrying while the queue is busy.
fn bind_waiting_for_release(
    ifindex: u32,
    queue: u32,
    umem: &Umem,
    config: SocketConfig,
) -> std::io::Result<XskSocket> {
    let mut attempt = 0;
    loop {
        match XskSocket::new(ifindex, queue, umem, config) {
            Err(err)
                if attempt < QUEUE_BUSY_RETRIES_MAX
                    && matches!(XskError::of(&err), Some(XskError::QueueBusy { .. })) =>
            {
                attempt += 1;
                std::thread::sleep(QUEUE_BUSY_RETRY_INTERVAL);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use melange_core::PacketBuf;
    use melange_sys::bpf::{Map, MapKind, Program, ProgramType, XdpLink, XdpMode};
    use melange_sys::netdev;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// Whether the root-only tests can run. In CI (`CI=true`) lacking root is a failure, not a
    /// skip.
    fn root_or_skip(test: &str) -> bool {
        melange_sys::testenv::root_or_skip(test)
    }

    use melange_sys::testenv::TestNetns;

    /// A fresh network namespace holding the veth pair `va` <-> `vb`, deleted on drop.
    fn veth_netns() -> TestNetns {
        let ns = TestNetns::new("afxdp");
        ns.ip(&["link", "add", "va", "type", "veth", "peer", "vb"]);
        for dev in ["lo", "va", "vb"] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        ns
    }

    const TAG: [u8; 8] = *b"mlg-afxd";

    /// A 60-byte broadcast frame of the IEEE local experimental ethertype carrying `TAG`.
    fn test_frame(seq: u32) -> [u8; 60] {
        let mut frame = [0u8; 60];
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]);
        frame[14..22].copy_from_slice(&TAG);
        frame[22..26].copy_from_slice(&seq.to_be_bytes());
        frame
    }

    /// `count` test frames in buffers of `pool`, ready for `send_batch`.
    fn tx_batch(pool: &mut PacketPool, count: usize) -> Vec<PacketBuf> {
        (0..count)
            .map(|seq| {
                let mut buf = pool.alloc().expect("the test sizes the pool");
                pool.set_len(&mut buf, 60).unwrap();
                pool.data_mut(&buf).copy_from_slice(&test_frame(seq as u32));
                buf
            })
            .collect()
    }

    fn open(ns: &TestNetns, frames: u32) -> (AfXdpQueue, PacketPool) {
        open_with_batch(ns, frames, 64)
    }

    fn open_with_batch(ns: &TestNetns, frames: u32, batch_max: usize) -> (AfXdpQueue, PacketPool) {
        let _inside = netdev::enter_netns(ns.name()).unwrap();
        let options = AfXdpOptions {
            ifindex: netdev::ifindex("vb").unwrap(),
            queue: 0,
            frames,
            batch_max,
            bind: BindMode::Copy,
            hugepages: false,
        };
        AfXdpQueue::open(options, 64).unwrap()
    }

    /// Frames the kernel holds (fill ring, TX ring, in flight).
    fn in_kernel(pool: &mut PacketPool) -> usize {
        umem_frames(pool).lent_total() as usize
    }

    /// Receives (which also reaps completions and kicks for frames left on the TX ring) until
    /// `done` says so.
    fn poll_until(
        queue: &mut AfXdpQueue,
        pool: &mut PacketPool,
        rx: &mut Vec<PacketBuf>,
        mut done: impl FnMut(&AfXdpQueue, &mut PacketPool, &[PacketBuf]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !done(queue, pool, rx) {
            assert!(
                Instant::now() < deadline,
                "timed out: {:?}",
                queue.counters()
            );
            queue.recv_batch(pool, rx, 64).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    #[test]
    fn a_failed_kick_leaves_every_buffer_with_one_owner() {
        if !root_or_skip("a_failed_kick_leaves_every_buffer_with_one_owner") {
            return;
        }
        let ns = veth_netns();
        // 768 frames give 256-entry rings, so the pool holds more than the TX ring takes.
        let (mut queue, mut pool) = open(&ns, 768);
        let capacity = pool.capacity();
        assert_eq!(in_kernel(&mut pool), 256, "the fill ring is primed");
        assert_eq!(queue.tx_room(), 256);

        ns.ip(&["link", "set", "dev", "vb", "down"]);
        // 1. Everything fits the TX ring, then the kick fails: the frames are the kernel's now.
        let mut tx = tx_batch(&mut pool, 256);
        let outcome = queue.send_batch(&mut pool, &mut tx);
        let err = outcome.error.expect("the kick fails with the link down");
        assert_eq!(err.kind, NicErrorKind::DeviceDown, "{err}");
        assert_eq!(
            outcome.sent, 256,
            "the frames were published before the kick failed"
        );
        assert!(tx.is_empty(), "tx must be drained on error");
        let c = queue.counters();
        assert_eq!(
            (c.transmitted, c.kick_errors, c.tx_error_drops),
            (256, 1, 0)
        );
        assert_eq!(umem_frames(&mut pool).lent_count(Lease::Transmit), 256);
        assert_eq!(pool.available() + in_kernel(&mut pool), capacity);
        assert_eq!(queue.tx_room(), 0);

        // 2. The ring is full and the kick fails again: nothing is published, every buffer goes
        //    back to the pool, counted.
        let mut tx = tx_batch(&mut pool, 100);
        assert!(queue.send_batch(&mut pool, &mut tx).error.is_some());
        assert!(tx.is_empty());
        let c = queue.counters();
        assert_eq!(
            (c.transmitted, c.kick_errors, c.tx_error_drops),
            (256, 2, 100)
        );
        assert_eq!(pool.available() + in_kernel(&mut pool), capacity);
        assert_eq!(pool.available(), capacity - 512);

        // 3. Link up: one more batch; its kicks send the stranded frames, within the budget.
        ns.ip(&["link", "set", "dev", "vb", "up"]);
        let mut tx = tx_batch(&mut pool, 10);
        let outcome = queue.send_batch(&mut pool, &mut tx);
        assert!(outcome.error.is_none());
        let sent = outcome.sent;
        assert!(tx.is_empty());
        let c = queue.counters();
        assert!(
            c.kicks_per_send_max <= u64::from(TX_KICKS_PER_SEND_MAX),
            "{c:?}"
        );
        assert_eq!(c.transmitted, 256 + sent as u64);
        assert_eq!(c.tx_ring_full_drops, 10 - sent as u64);
        // The receive path reaps completions and kicks once per call for what is left.
        let mut rx = Vec::with_capacity(64);
        poll_until(&mut queue, &mut pool, &mut rx, |q, _, _| {
            q.counters().completed == q.counters().transmitted
        });
        for buf in rx.drain(..) {
            pool.free(buf);
        }
        assert_eq!(pool.available() + in_kernel(&mut pool), capacity);
        assert_eq!(umem_frames(&mut pool).lent_count(Lease::Transmit), 0);
        let c = queue.counters();
        eprintln!("ENETDOWN twice, then link up: {c:?}");
        assert!(
            c.kicks_per_send_max <= u64::from(TX_KICKS_PER_SEND_MAX),
            "{c:?}"
        );
        assert_eq!(c.bad_descriptors, 0);

        queue.release(&mut pool);
        assert_eq!(
            pool.available(),
            capacity,
            "release gives back the fill ring"
        );
        assert!(
            queue.kernel_statistics().is_ok(),
            "kept from before the close"
        );
    }

    /// With a batch smaller than a fragmented datagram, the room reported once the kernel has
    /// drained the ring is the whole ring, not a stale cached count between the two: the
    /// stack asks for a datagram's fragments at once and would refuse it otherwise.
    #[test]
    fn tx_room_is_fresh_below_a_datagrams_fragments() {
        if !root_or_skip("tx_room_is_fresh_below_a_datagrams_fragments") {
            return;
        }
        let ns = veth_netns();
        let (mut queue, mut pool) = open_with_batch(&ns, 768, 8);
        assert_eq!(queue.tx_room(), 256);
        // Leave the cache showing 20 free: more than a batch, fewer than 45 fragments.
        let mut tx = tx_batch(&mut pool, 236);
        let outcome = queue.send_batch(&mut pool, &mut tx);
        assert!(outcome.error.is_none());
        let mut rx = Vec::with_capacity(64);
        poll_until(&mut queue, &mut pool, &mut rx, |q, _, _| {
            q.counters().completed == q.counters().transmitted
        });
        assert_eq!(queue.counters().transmitted, 236);
        assert_eq!(queue.tx_room(), 256, "the ring is empty again");
        for buf in rx.drain(..) {
            pool.free(buf);
        }
        queue.release(&mut pool);
    }

    #[test]
    fn bursts_are_sent_within_the_kick_budget() {
        if !root_or_skip("bursts_are_sent_within_the_kick_budget") {
            return;
        }
        let ns = veth_netns();
        let (mut queue, mut pool) = open(&ns, 768);
        let capacity = pool.capacity();
        let mut rx = Vec::with_capacity(64);
        let mut offered = 0u64;
        for round in 0..8 {
            let count = if round % 2 == 0 { 256 } else { 64 };
            let count = count.min(pool.available());
            let mut tx = tx_batch(&mut pool, count);
            offered += count as u64;
            assert!(queue.send_batch(&mut pool, &mut tx).error.is_none());
            assert!(tx.is_empty());
            let c = queue.counters();
            assert!(
                c.kicks_per_send_max <= u64::from(TX_KICKS_PER_SEND_MAX),
                "round {round}: {c:?}"
            );
            assert_eq!(c.transmitted + c.tx_ring_full_drops, offered, "{c:?}");
            poll_until(&mut queue, &mut pool, &mut rx, |q, _, _| {
                q.counters().completed == q.counters().transmitted
            });
        }
        let c = queue.counters();
        eprintln!("8 bursts: {c:?}");
        assert!(c.kicks > 0 && c.kick_errors == 0);
        for buf in rx.drain(..) {
            pool.free(buf);
        }
        queue.release(&mut pool);
        assert_eq!(pool.available(), capacity);
    }

    /// An XDP program on `ifindex` redirecting everything to `fd` (an AF_XDP socket bound to
    /// queue 0) through an XSKMAP. Detached on drop.
    struct Redirect {
        _link: XdpLink,
        _program: Program,
        _map: Map,
    }

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
        let mut bytes = [0u8; 8];
        bytes[0] = code;
        bytes[1] = (src << 4) | dst;
        bytes[2..4].copy_from_slice(&off.to_le_bytes());
        bytes[4..8].copy_from_slice(&imm.to_le_bytes());
        u64::from_le_bytes(bytes)
    }

    impl Redirect {
        fn attach(ifindex: u32, fd: BorrowedFd<'_>) -> Self {
            let map = Map::create(MapKind::XskMap, 4, 4, 1, 0).unwrap();
            map.update_fd(&0u32.to_ne_bytes(), fd).unwrap();
            let insns = [
                insn(0x61, 2, 1, 16, 0),              // r2 = ctx->rx_queue_index
                insn(0x18, 1, 1, 0, map.as_raw_fd()), // r1 = the map (BPF_PSEUDO_MAP_FD)
                insn(0x00, 0, 0, 0, 0),               //      (upper half of the immediate)
                insn(0xb7, 3, 0, 0, 2),               // r3 = XDP_PASS, returned on a miss
                insn(0x85, 0, 0, 0, 51),              // call bpf_redirect_map
                insn(0x95, 0, 0, 0, 0),               // exit
            ];
            let program = Program::load(ProgramType::Xdp, &insns, "GPL").unwrap();
            let link = XdpLink::attach(&program, ifindex, XdpMode::Native).unwrap();
            Self {
                _link: link,
                _program: program,
                _map: map,
            }
        }
    }

    /// A raw AF_XDP sender on queue 0 of `va`: on veth its frames arrive on queue 0 of `vb`.
    struct Sender {
        socket: XskSocket,
        umem: Umem,
    }

    impl Sender {
        fn new(ns: &TestNetns) -> Self {
            let _inside = netdev::enter_netns(ns.name()).unwrap();
            let region = Region::new(64 * 2048, RegionOptions::default()).unwrap();
            let config = UmemConfig {
                frame_size: 2048,
                frame_count: 64,
                headroom: 0,
                fill_ring_size: 64,
                completion_ring_size: 64,
            };
            let umem = Umem::new(region, config).unwrap();
            let socket_config = SocketConfig {
                rx_ring_size: 64,
                tx_ring_size: 64,
                bind: BindMode::Copy,
                need_wakeup: true,
            };
            let va = netdev::ifindex("va").unwrap();
            let socket = XskSocket::new(va, 0, &umem, socket_config).unwrap();
            Self { socket, umem }
        }

        /// Sends 64 frames and waits until the kernel completed them.
        fn send_64(&mut self) {
            let mut descs = [XdpDesc::default(); 64];
            for (i, desc) in descs.iter_mut().enumerate() {
                let index = i as u32;
                self.umem.frames_mut().frame_mut(index)[..60].copy_from_slice(&test_frame(index));
                *desc = XdpDesc {
                    addr: self.umem.frame_addr(index).unwrap(),
                    len: 60,
                    options: 0,
                };
            }
            assert_eq!(self.socket.transmit(self.umem.frames_mut(), &descs), 64);
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut done = 0;
            let mut out = [0u64; 64];
            while done < 64 {
                assert!(Instant::now() < deadline, "sender: {done} of 64 completed");
                let _ = self.socket.kick_tx().unwrap();
                done += self.socket.complete(self.umem.frames_mut(), &mut out);
            }
        }
    }

    #[test]
    fn receiving_with_an_empty_pool_is_not_an_error() {
        if !root_or_skip("receiving_with_an_empty_pool_is_not_an_error") {
            return;
        }
        let ns = veth_netns();
        let (mut queue, mut pool) = open(&ns, 512);
        let capacity = pool.capacity();
        let vb = {
            let _inside = netdev::enter_netns(ns.name()).unwrap();
            netdev::ifindex("vb").unwrap()
        };
        let _redirect = {
            let _inside = netdev::enter_netns(ns.name()).unwrap();
            Redirect::attach(vb, queue.socket_fd())
        };
        let mut sender = Sender::new(&ns);
        // The engine holds every free frame: refills find the pool empty.
        let mut held: Vec<PacketBuf> = std::iter::from_fn(|| pool.alloc()).collect();
        assert_eq!(pool.available(), 0);

        // Receive until the fill ring is used up; every call succeeds.
        let mut rx = Vec::with_capacity(64);
        let mut received: Vec<PacketBuf> = Vec::new();
        let mut tagged = 0;
        for _ in 0..32 {
            if umem_frames(&mut pool).lent_count(Lease::Receive) == 0 {
                break;
            }
            sender.send_64();
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline {
                queue.recv_batch(&mut pool, &mut rx, 64).unwrap();
                for desc in rx.drain(..) {
                    // The program redirects everything: IPv6 neighbour discovery arrives too.
                    if pool.data(&desc).get(14..22) == Some(&TAG[..]) {
                        tagged += 1;
                    }
                    received.push(desc);
                }
            }
        }
        assert_eq!(umem_frames(&mut pool).lent_count(Lease::Receive), 0);
        queue.recv_batch(&mut pool, &mut rx, 64).unwrap();
        let c = queue.counters();
        assert_eq!(c.received as usize, received.len());
        assert!(c.received >= 256, "{c:?}");
        assert!(tagged > 0, "none of our frames arrived");
        assert!(c.fill_pool_exhausted > 0, "{c:?}");
        assert_eq!(c.bad_descriptors, 0, "{c:?}");

        // Frames come back: the next receive refills.
        for buf in held.drain(..).chain(received.drain(..)) {
            pool.free(buf);
        }
        queue.recv_batch(&mut pool, &mut rx, 64).unwrap();
        for buf in rx.drain(..) {
            pool.free(buf);
        }
        assert!(umem_frames(&mut pool).lent_count(Lease::Receive) > 0);
        queue.release(&mut pool);
        assert_eq!(pool.available(), capacity);
    }
}
