//! Melange's OS shell around the pure engine.
//!
//! The engine ([`melange_engine::Engine`]) makes no system calls; this crate gives it a thread
//! pinned to a core, a clock, an idle policy, a way to stop, and backends that talk to the
//! kernel through `melange-sys` (the only crate with `unsafe`). The simulator is the other
//! shell; the two drive the same engine.
//!
//! - [`shell`]: engine threads, idle policies (busy-poll, or sleep on the queue's wakeup fd
//!   after a configurable spin), stop signals.
//! - [`af_xdp`]: the kernel-bypass backend: raw frames over AF_XDP, the pool over the UMEM.
//! - [`kernel`]: the portable transport: the app contract over ordinary UDP sockets with
//!   batched `recvmmsg` and `sendmmsg`, one socket per bound port and engine with
//!   `SO_REUSEPORT`. It needs no privileges. [`uring_transport`] is its io_uring side,
//!   chosen with [`SocketIo::Uring`].
#![forbid(unsafe_code)]

pub mod af_xdp;
pub mod kernel;
pub mod kernel_tcp;
pub mod shell;
pub mod uring_transport;

pub use af_xdp::{umem_frames_for, AfXdpCounters, AfXdpError, AfXdpOptions, AfXdpQueue};
pub use kernel::{KernelCounters, KernelOptions, KernelTransport, SocketIo, DATAGRAM_LEN_MAX};
pub use kernel_tcp::{KernelTcp, KernelTcpCounters};
pub use shell::{
    control_channel, run_with_control, spawn_engine, spawn_engine_with_control,
    spawn_kernel_engine, spin_ns, ControlInbox, ControlMessage, ControlSendError, ControlSender,
    EngineOutcome, IdlePolicy, ShellConfig, ShellError, StopSignal, CONTROL_INTERVAL_NS,
    CONTROL_QUEUE_MAX,
};
