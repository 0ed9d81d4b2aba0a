//! A fake NIC with scripted faults, for tests of the engine and the stack.
//!
//! [`FakeNic`] behaves like an AF_XDP queue in miniature: a fill ring of posted frames it
//! receives into, a transmit ring whose frames it holds until they "complete", and the
//! validation a real backend must do on what the device hands back (a descriptor for a frame
//! it does not hold is counted and dropped). A test queues frames on the "wire"
//! ([`FakeNic::deliver`]) and faults in a script ([`Fault`]): a full transmit ring, an
//! `EAGAIN` storm that takes only part of a batch, `ENETDOWN` in the middle of a batch,
//! bad and repeated descriptors, receive errors, completions held back. Each fault applies to
//! the next call it concerns (a receive, a transmit, the ring), in script order among the
//! faults of that kind.
//!
//! It allocates only in [`FakeNic::new`] and when the test adds frames or faults beyond the
//! capacities it gave, so a test with a counting allocator can check that an engine pass over
//! it allocates nothing.

use crate::nic::{NicCaps, NicError, NicErrorKind, NicQueue, TxOutcome};
use melange_core::pool::{RawBuf, TxDropped};
use melange_core::{PacketBuf, PacketPool};
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;

/// One scripted fault. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// For the next `passes` engine passes (counted by receive calls) the transmit ring is
    /// full: no room, and every frame given anyway is dropped.
    TxRingFull {
        /// How many passes.
        passes: u32,
    },
    /// The next transmit takes only `accepted` frames (the device kept answering `EAGAIN`);
    /// the rest are dropped.
    TxPartial {
        /// Frames taken.
        accepted: usize,
    },
    /// The next transmit takes `taken` frames, then the device goes down (`ENETDOWN`): the
    /// rest are dropped and the call fails.
    NetDownMidBatch {
        /// Frames taken before the failure.
        taken: usize,
    },
    /// The next receive also finds a descriptor for frame `index`, which the device does
    /// not hold (refused and counted). If the device does hold it (posted for receive), it
    /// is received out of fill-ring order instead, as a real device may.
    BadRxDescriptor {
        /// The frame index it names.
        index: u32,
    },
    /// The next receive finds its first descriptor twice.
    RepeatedRxDescriptor,
    /// The next receive fails with an operating-system error (`EIO`).
    RxError,
    /// Transmitted frames stay on the ring, not completed, until [`Fault::ReleaseCompletions`].
    HoldCompletions,
    /// Completes the frames held by [`Fault::HoldCompletions`] at the next call.
    ReleaseCompletions,
}

/// What the fake device saw and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeNicCounters {
    /// Frames received into pool frames.
    pub received: u64,
    /// Frames waiting on the wire that found no posted frame (the pool was empty).
    pub rx_no_buffer: u64,
    /// Descriptors that named a frame the device did not hold, dropped.
    pub bad_descriptors: u64,
    /// Frames the device took for transmit.
    pub transmitted: u64,
    /// Frames completed back to their owners.
    pub completed: u64,
    /// Frames dropped at transmit (ring full, partial batch, device down).
    pub tx_dropped: u64,
    /// Bytes of the frames taken for transmit.
    pub tx_bytes: u64,
}

/// A fake NIC queue. See the module documentation.
#[derive(Debug)]
pub struct FakeNic {
    caps: NicCaps,
    /// Frames waiting on the "wire", oldest first.
    wire: VecDeque<Vec<u8>>,
    /// Frames posted for receive, as a device's fill ring holds them.
    posted: VecDeque<RawBuf>,
    posted_max: usize,
    /// One bit per pool frame: posted (held by the device for receive).
    holds: Vec<u64>,
    /// Frames taken for transmit and not yet completed.
    tx_ring: VecDeque<PacketBuf>,
    tx_ring_size: usize,
    script: VecDeque<Fault>,
    ring_full_passes: u32,
    holding: bool,
    /// A copy of the last transmitted frame.
    last_tx: Vec<u8>,
    counters: FakeNicCounters,
}

impl FakeNic {
    /// A device for a pool of `pool_frames` frames, keeping `posted_max` frames posted for
    /// receive and a transmit ring of `tx_ring_size`.
    pub fn new(pool_frames: usize, posted_max: usize, tx_ring_size: usize) -> Self {
        Self {
            caps: NicCaps {
                tx_checksum_offload: false,
                multi_buffer: false,
                zero_copy: true,
                frame_len_max: 2048,
            },
            wire: VecDeque::with_capacity(1024),
            posted: VecDeque::with_capacity(posted_max),
            posted_max,
            holds: vec![0; pool_frames.div_ceil(64)],
            tx_ring: VecDeque::with_capacity(tx_ring_size),
            tx_ring_size,
            script: VecDeque::with_capacity(64),
            ring_full_passes: 0,
            holding: false,
            last_tx: Vec::with_capacity(2048),
            counters: FakeNicCounters::default(),
        }
    }

    /// Puts a frame on the wire, to be received by a later `recv_batch`.
    pub fn deliver(&mut self, frame: Vec<u8>) {
        self.wire.push_back(frame);
    }
    /// Frames still on the wire.
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }
    /// Adds a fault to the script.
    pub fn script(&mut self, fault: Fault) {
        self.script.push_back(fault);
    }
    /// Faults not yet applied.
    pub fn script_len(&self) -> usize {
        self.script.len()
    }
    /// The counters.
    pub fn counters(&self) -> FakeNicCounters {
        self.counters
    }
    /// The last frame transmitted.
    pub fn last_tx(&self) -> &[u8] {
        &self.last_tx
    }
    /// Frames on the transmit ring, not completed.
    pub fn tx_in_flight(&self) -> usize {
        self.tx_ring.len()
    }

    fn held(&self, index: u32) -> bool {
        self.holds
            .get(index as usize / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }
    fn set_held(&mut self, index: u32, held: bool) {
        let word = &mut self.holds[index as usize / 64];
        if held {
            *word |= 1 << (index % 64);
        } else {
            *word &= !(1 << (index % 64));
        }
    }

    /// Takes back a frame the "device" names, validating it as a real backend must.
    fn reclaim(&mut self, pool: &PacketPool, raw: RawBuf) -> Option<PacketBuf> {
        if !self.held(raw.index) {
            self.counters.bad_descriptors += 1;
            return None;
        }
        let buf = pool.from_raw(raw);
        if buf.is_none() {
            self.counters.bad_descriptors += 1;
            return None;
        }
        self.set_held(raw.index, false);
        buf
    }

    /// Completes every frame on the transmit ring, unless completions are held.
    fn complete(&mut self, pool: &mut PacketPool) {
        if self.holding {
            return;
        }
        while let Some(buf) = self.tx_ring.pop_front() {
            self.counters.completed += 1;
            pool.release_tx(buf, Ok(()));
        }
    }

    /// Takes the first scripted fault that `applies` to this call.
    fn take_fault(&mut self, applies: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let at = self.script.iter().position(applies)?;
        self.script.remove(at)
    }

    fn apply_ring_faults(&mut self) {
        while let Some(fault) = self.take_fault(|f| {
            matches!(
                f,
                Fault::HoldCompletions | Fault::ReleaseCompletions | Fault::TxRingFull { .. }
            )
        }) {
            match fault {
                Fault::HoldCompletions => self.holding = true,
                Fault::ReleaseCompletions => self.holding = false,
                Fault::TxRingFull { passes } => self.ring_full_passes = passes,
                _ => unreachable!("filtered above"),
            }
        }
    }
}

impl NicQueue for FakeNic {
    fn caps(&self) -> NicCaps {
        self.caps
    }

    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<PacketBuf>,
        max: usize,
    ) -> Result<(), NicError> {
        self.ring_full_passes = self.ring_full_passes.saturating_sub(1);
        self.apply_ring_faults();
        self.complete(pool);
        // Top up the fill ring.
        while self.posted.len() < self.posted_max {
            let Some(buf) = pool.alloc_frame() else {
                break;
            };
            let raw = buf.into_raw();
            self.set_held(raw.index, true);
            self.posted.push_back(raw);
        }
        if self.take_fault(|f| *f == Fault::RxError).is_some() {
            return Err(NicError::os(
                NicErrorKind::Receive,
                "fake receive",
                &std::io::Error::from_raw_os_error(5),
            ));
        }
        let bad = self.take_fault(|f| matches!(f, Fault::BadRxDescriptor { .. }));
        let repeat = self
            .take_fault(|f| *f == Fault::RepeatedRxDescriptor)
            .is_some();
        let mut first = None;
        while rx.len() < max {
            if self.wire.is_empty() {
                break;
            }
            let Some(raw) = self.posted.pop_front() else {
                self.counters.rx_no_buffer += 1;
                self.wire.pop_front();
                continue;
            };
            let Some(mut buf) = self.reclaim(pool, raw) else {
                continue;
            };
            let frame = self.wire.pop_front().expect("checked not empty above");
            let len = frame.len().min(buf.len());
            pool.data_mut(&buf)[..len].copy_from_slice(&frame[..len]);
            buf.truncate(len);
            self.counters.received += 1;
            first.get_or_insert(RawBuf {
                index: buf.index(),
                start: 0,
                len: len as u16,
            });
            rx.push(buf);
        }
        let mut bad_seen = false;
        if let (true, Some(raw)) = (repeat, first) {
            // The device names a frame it already handed over: refused, not used twice.
            bad_seen |= self.reclaim(pool, raw).is_none();
        }
        if let Some(Fault::BadRxDescriptor { index }) = bad {
            if let Some(at) = self.posted.iter().position(|p| p.index == index) {
                // The script named a frame the device holds on its fill ring: that is a
                // receive out of fill-ring order, which a real device may make (zero-copy
                // drivers complete out of order), not a bad descriptor. The frame goes up
                // with its first 64 bytes (stale contents) if the batch has room; otherwise
                // the device keeps it. (Reclaiming it and dropping the handle leaked it.)
                if rx.len() < max {
                    let raw = self.posted.remove(at).expect("the position was just found");
                    if let Some(mut buf) = self.reclaim(pool, raw) {
                        buf.truncate(buf.len().min(64));
                        self.counters.received += 1;
                        rx.push(buf);
                    }
                }
            } else {
                let raw = RawBuf {
                    index,
                    start: 0,
                    len: 64,
                };
                bad_seen |= self.reclaim(pool, raw).is_none();
            }
        }
        if bad_seen {
            return Err(NicError::new(
                NicErrorKind::BadDescriptor,
                "fake receive descriptor",
            ));
        }
        Ok(())
    }

    fn tx_room(&self) -> usize {
        if self.ring_full_passes > 0 {
            return 0;
        }
        self.tx_ring_size - self.tx_ring.len()
    }

    fn send_batch(&mut self, pool: &mut PacketPool, tx: &mut Vec<PacketBuf>) -> TxOutcome {
        self.apply_ring_faults();
        let mut limit = self.tx_room();
        let mut failure = None;
        if self.ring_full_passes > 0 {
            // No room: every frame is dropped below.
        } else if let Some(fault) = self
            .take_fault(|f| matches!(f, Fault::TxPartial { .. } | Fault::NetDownMidBatch { .. }))
        {
            match fault {
                Fault::TxPartial { accepted } => limit = limit.min(accepted),
                Fault::NetDownMidBatch { taken } => {
                    limit = limit.min(taken);
                    failure = Some(NicError::os(
                        NicErrorKind::Transmit,
                        "fake transmit",
                        &std::io::Error::from_raw_os_error(100),
                    ));
                }
                _ => unreachable!("filtered above"),
            }
        }
        let mut taken = 0;
        for buf in tx.drain(..) {
            if taken < limit {
                self.last_tx.clear();
                self.last_tx.extend_from_slice(pool.data(&buf));
                self.counters.transmitted += 1;
                self.counters.tx_bytes += buf.len() as u64;
                self.tx_ring.push_back(buf);
                taken += 1;
            } else {
                self.counters.tx_dropped += 1;
                let why = if failure.is_some() {
                    TxDropped::Device
                } else {
                    TxDropped::RingFull
                };
                pool.release_tx(buf, Err(why));
            }
        }
        self.complete(pool);
        TxOutcome {
            sent: taken,
            error: failure,
        }
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn release(&mut self, pool: &mut PacketPool) {
        self.holding = false;
        self.complete(pool);
        while let Some(raw) = self.posted.pop_front() {
            if let Some(buf) = self.reclaim(pool, raw) {
                pool.free(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use melange_core::PoolConfig;

    /// Regression (found by `engine_ops`): a "bad" descriptor that named a frame the device
    /// had posted was reclaimed and its handle dropped, so the frame never came back.
    #[test]
    fn a_descriptor_naming_a_posted_frame_is_an_out_of_order_receive() {
        let mut pool = PacketPool::new(PoolConfig {
            frame_size: 2048,
            frame_count: 8,
            headroom: 64,
        })
        .unwrap();
        let mut nic = FakeNic::new(8, 4, 4);
        let mut rx = Vec::new();
        // The first call posts frames 0..4; frame 0 is one of them.
        nic.recv_batch(&mut pool, &mut rx, 8).unwrap();
        assert!(rx.is_empty());
        nic.script(Fault::BadRxDescriptor { index: 0 });
        nic.recv_batch(&mut pool, &mut rx, 8).unwrap();
        assert_eq!(rx.len(), 1, "the posted frame came up");
        assert_eq!((rx[0].index(), rx[0].len()), (0, 64));
        assert_eq!(nic.counters().bad_descriptors, 0);
        // A frame the device does not hold is still refused and counted.
        nic.script(Fault::BadRxDescriptor { index: 7 });
        let error = nic.recv_batch(&mut pool, &mut rx, 8).unwrap_err();
        assert_eq!(error.kind, NicErrorKind::BadDescriptor);
        assert_eq!(nic.counters().bad_descriptors, 1);
        for buf in rx.drain(..) {
            pool.free(buf);
        }
        nic.release(&mut pool);
        assert_eq!(pool.available(), pool.capacity(), "every frame came back");
    }
}
