//! A NIC that replays prebuilt frames, for measuring the engine's own cost.
//!
//! It hands the engine `prelude` frames once (an ARP request that teaches the stack the
//! client's MAC, say), then the same request frame `count` times, as fast as the engine asks,
//! and counts what the engine transmits. No kernel, no clock, no other process: what is left
//! is the stack, the app and the engine loop, plus one frame-sized copy per request (the
//! "DMA" into the pool, which an AF_XDP copy-mode socket also pays).

use melange_core::{PacketBuf, PacketPool};
use melange_engine::{NicCaps, NicError, NicQueue, TxOutcome};
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;

/// A replaying NIC. See the module documentation.
#[derive(Debug)]
pub struct ReplayNic {
    prelude: VecDeque<Vec<u8>>,
    request: Vec<u8>,
    remaining: u64,
    /// Frames the engine transmitted.
    pub tx_frames: u64,
    /// Bytes the engine transmitted.
    pub tx_bytes: u64,
    /// The last frame transmitted, kept when `capture` is set.
    pub last_tx: Vec<u8>,
    capture: bool,
}

impl ReplayNic {
    /// A NIC that yields `prelude`, then `request` `count` times.
    pub fn new(prelude: Vec<Vec<u8>>, request: Vec<u8>, count: u64, capture: bool) -> Self {
        Self {
            prelude: prelude.into(),
            request,
            remaining: count,
            tx_frames: 0,
            tx_bytes: 0,
            last_tx: Vec::with_capacity(2048),
            capture,
        }
    }
    /// Requests not yet handed to the engine.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl NicQueue for ReplayNic {
    fn caps(&self) -> NicCaps {
        crate::SIM_NIC_CAPS
    }

    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<PacketBuf>,
        max: usize,
    ) -> Result<(), NicError> {
        for _ in 0..max {
            let from_prelude = !self.prelude.is_empty();
            if !from_prelude && self.remaining == 0 {
                break;
            }
            let Some(mut buf) = pool.alloc_frame() else {
                break;
            };
            let frame = match self.prelude.front() {
                Some(frame) => frame,
                None => &self.request,
            };
            pool.data_mut(&buf)[..frame.len()].copy_from_slice(frame);
            buf.truncate(frame.len());
            if from_prelude {
                self.prelude.pop_front();
            } else {
                self.remaining -= 1;
            }
            rx.push(buf);
        }
        Ok(())
    }

    fn tx_room(&self) -> usize {
        usize::MAX
    }

    fn send_batch(&mut self, pool: &mut PacketPool, tx: &mut Vec<PacketBuf>) -> TxOutcome {
        let sent = tx.len();
        for buf in tx.drain(..) {
            self.tx_frames += 1;
            self.tx_bytes += buf.len() as u64;
            if self.capture {
                self.last_tx.clear();
                self.last_tx.extend_from_slice(pool.data(&buf));
            }
            pool.release_tx(buf, Ok(()));
        }
        TxOutcome::sent(sent)
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn release(&mut self, _pool: &mut PacketPool) {}
}
