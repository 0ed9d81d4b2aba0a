//! Two NICs joined back to back, for measuring a connection-oriented stack's own cost.
//!
//! [`PipeNic::pair`] makes two ends: what one transmits, the other receives, in order, with
//! one frame-sized copy (the "DMA" into the receiver's pool, which an AF_XDP copy-mode socket
//! also pays). No clock, no loss, no delay beyond the next poll: a TCP client and server can
//! run in one thread, and a benchmark can time one side's passes alone. The queues are bounded
//! by [`PIPE_FRAMES_MAX`]; a full queue refuses transmits through `tx_room`.

use melange_core::{PacketBuf, PacketPool};
use melange_engine::{NicCaps, NicError, NicQueue, TxOutcome};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::rc::Rc;

/// Frames waiting in one direction at most.
pub const PIPE_FRAMES_MAX: usize = 4096;

type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// One end of a pipe. See the module documentation.
#[derive(Debug)]
pub struct PipeNic {
    rx: Queue,
    tx: Queue,
    /// Frame buffers received and emptied, reused by both ends: no allocation once warm.
    spare: Rc<RefCell<Vec<Vec<u8>>>>,
    /// Frames this end transmitted.
    pub tx_frames: u64,
    /// Frames this end received.
    pub rx_frames: u64,
}

impl PipeNic {
    /// Two ends joined to each other.
    pub fn pair() -> (PipeNic, PipeNic) {
        let a: Queue = Rc::new(RefCell::new(VecDeque::with_capacity(PIPE_FRAMES_MAX)));
        let b: Queue = Rc::new(RefCell::new(VecDeque::with_capacity(PIPE_FRAMES_MAX)));
        let spare = Rc::new(RefCell::new(Vec::with_capacity(2 * PIPE_FRAMES_MAX)));
        let end = |rx: &Queue, tx: &Queue| PipeNic {
            rx: Rc::clone(rx),
            tx: Rc::clone(tx),
            spare: Rc::clone(&spare),
            tx_frames: 0,
            rx_frames: 0,
        };
        (end(&a, &b), end(&b, &a))
    }
}

impl NicQueue for PipeNic {
    fn caps(&self) -> NicCaps {
        crate::SIM_NIC_CAPS
    }

    fn recv_batch(
        &mut self,
        pool: &mut PacketPool,
        rx: &mut Vec<PacketBuf>,
        max: usize,
    ) -> Result<(), NicError> {
        let mut queue = self.rx.borrow_mut();
        for _ in 0..max {
            let Some(frame) = queue.front() else {
                break;
            };
            let Some(mut buf) = pool.alloc_frame() else {
                break;
            };
            let len = frame.len().min(pool.data(&buf).len());
            pool.data_mut(&buf)[..len].copy_from_slice(&frame[..len]);
            buf.truncate(len);
            if let Some(frame) = queue.pop_front() {
                self.spare.borrow_mut().push(frame);
            }
            self.rx_frames += 1;
            rx.push(buf);
        }
        Ok(())
    }

    fn tx_room(&self) -> usize {
        PIPE_FRAMES_MAX.saturating_sub(self.tx.borrow().len())
    }

    fn send_batch(&mut self, pool: &mut PacketPool, tx: &mut Vec<PacketBuf>) -> TxOutcome {
        let sent = tx.len();
        let mut queue = self.tx.borrow_mut();
        for buf in tx.drain(..) {
            let mut frame = self.spare.borrow_mut().pop().unwrap_or_default();
            frame.clear();
            frame.extend_from_slice(pool.data(&buf));
            queue.push_back(frame);
            self.tx_frames += 1;
            pool.release_tx(buf, Ok(()));
        }
        TxOutcome::sent(sent)
    }

    fn wakeup_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn release(&mut self, _pool: &mut PacketPool) {}
}
