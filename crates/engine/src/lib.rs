//! Melange's run-to-completion engine.
//!
//! One engine per core owns one transport (Melange's stack over a NIC queue, or kernel
//! sockets), one packet pool, one app and one timing wheel, and shares none of them (IX's
//! "no sharing between cores"). Its [`Engine::poll`] is a single run-to-completion pass:
//!
//! 1. take whatever the transport has ready, up to `batch_max` (never wait to fill a batch:
//!    under light load a batch of one goes straight through, which keeps latency low; under
//!    heavy load batches grow and amortise per-batch costs, IX's adaptive batching), as
//!    events for the app;
//! 2. do the transport's due timer work (ARP retries);
//! 3. turn buffers whose transmit ended into [`melange_core::Event::SendDone`] for the app
//!    that asked for them back, and due app timers into timer events;
//! 4. hand the app one batch of events ([`melange_core::App::run_io`]); each command it
//!    issues runs at once and answers (the contract's module documentation says why);
//! 5. transmit everything the pass queued as one batch.
//!
//! The engine makes no system call and reads no clock: the shell (the runtime, or the
//! simulator) passes `now_ns` and decides how to idle. The transport is behind
//! [`Transport`] so the kernel-socket, simulated and AF_XDP backends all run the same engine
//! and the same apps; raw-frame devices are behind [`NicQueue`] under [`StackTransport`].
#![forbid(unsafe_code)]

mod engine;
pub mod fake_nic;
pub mod fuzz;
mod nic;
mod stack;
pub mod tcp;
mod transport;

pub use engine::{Engine, EngineConfig, EngineCounters, EngineDrop, EngineError};
pub use nic::{NicCaps, NicError, NicErrorCounts, NicErrorKind, NicQueue, TxOutcome};
pub use stack::{StackTransport, UDP_SOCKETS_MAX};
pub use transport::{Transport, TransportCounters};
