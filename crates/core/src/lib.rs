//! Pure building blocks shared by every Melange engine.
//!
//! Nothing in this crate makes a system call or reads a clock: time arrives as `now_ns`
//! arguments, memory arrives at start-up. That is what lets the same engine run over the
//! kernel, over AF_XDP and inside the deterministic simulator.
//!
//! - [`pool`]: the per-engine packet buffer pool and the move-only [`pool::PacketBuf`] handle.
//! - [`contract`]: IX's `run_io` contract between an engine and its application.
//! - [`timer`]: a hierarchical timing wheel with injectable ticks.
//! - [`stats`]: counters and a fixed-size power-of-two histogram.
#![forbid(unsafe_code)]

pub mod contract;
pub mod pool;
pub mod stats;
pub mod timer;

pub use contract::{App, Command, Event, IoContext, SendError};
pub use pool::{
    BufChain, FrameOwner, HeapMemory, PacketBuf, PacketPool, PoolBudget, PoolConfig, PoolId,
    PoolMemory,
};
