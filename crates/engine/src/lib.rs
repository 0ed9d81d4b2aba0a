//! Melange's run-to-completion engine.
//!
//! One engine per core owns one NIC queue, one packet pool, one network stack, one app and
//! one timing wheel, and shares none of them (IX's "no sharing between cores"). Its
//! [`Engine::poll`] is a single run-to-completion pass:
//!
//! 1. take whatever the NIC has ready, up to `batch_max` (never wait to fill a batch: under
//!    light load a batch of one goes straight through, which keeps latency low; under heavy
//!    load batches grow and amortise per-batch costs, IX's adaptive batching);
//! 2. push each frame through the stack (Ethernet medium) to get datagrams;
//! 3. fire due timers;
//! 4. hand the app one batch of events ([`melange_core::App::run_io`]);
//! 5. carry out its commands: the stack writes headers into each buffer's headroom;
//! 6. transmit everything as one batch.
//!
//! The engine makes no system call and reads no clock: the shell (the runtime, or the
//! simulator) passes `now_ns` and decides how to idle. The NIC is behind [`NicQueue`] so the
//! kernel-socket, simulated and AF_XDP backends all run the same engine and the same apps.
#![forbid(unsafe_code)]

mod engine;
mod nic;

pub use engine::{Engine, EngineConfig, EngineCounters, EngineDrop, EngineError};
pub use nic::{Medium, NicError, NicQueue, RxDesc, TxDesc};
