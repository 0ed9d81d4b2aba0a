//! Pure building blocks shared by every Melange engine.
//!
//! Nothing in this crate makes a system call or reads a clock: time arrives as `now_ns`
//! arguments, memory arrives at start-up. That is what lets the same engine run over the
//! kernel, over AF_XDP and inside the deterministic simulator.
//!
//! - [`pool`]: the per-engine packet buffer pool and the move-only [`pool::PacketBuf`] handle.
//! - [`contract`]: IX's `run_io` contract between an engine and its application (v2: commands
//!   answer during the call, buffers come back to their owner, reserved TCP and storage shapes).
//! - [`handle`]: typed, generation-checked handles for sockets, connections, timers, areas.
//! - [`record`]: the fixed-layout records that carry commands and events between processes.
//! - [`timer`]: a hierarchical timing wheel with O(1) cancel and re-arm.
//! - [`rng`]: SplitMix64, the deterministic generator seeds replay with.
//! - [`stats`]: counters and a fixed-size power-of-two histogram.
//! - [`test_io`]: an [`Io`] for unit tests of apps, with no engine behind it.
#![forbid(unsafe_code)]

pub mod contract;
pub mod handle;
pub mod pool;
pub mod record;
pub mod rng;
pub mod stats;
pub mod test_io;
pub mod timer;

pub use contract::{
    App, Command, CommandError, Event, EventQueue, Io, IoContext, Outcome, Refused, SendError,
};
pub use handle::{AreaId, ConnId, Handle, HandleError, HandleTable, ListenerId, SocketId, TimerId};
pub use pool::{
    BufChain, FrameOwner, HeapMemory, PacketBuf, PacketPool, PoolBudget, PoolConfig, PoolId,
    PoolMemory, Returned, TxDropped,
};
