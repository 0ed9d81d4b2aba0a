//! Apps written against Melange's `run_io` contract.
//!
//! They are pure: no system calls, no clock. Time comes from the batch (`IoContext::now_ns`),
//! and the echo server's simulated work is a function the shell supplies (a spin on the real
//! clock in the runtime, nothing in the simulator). So the same app code runs over the kernel
//! backend, over AF_XDP, and in the deterministic simulator.
#![forbid(unsafe_code)]

pub mod echo;
pub mod loadgen;
pub mod tcp_echo;
pub mod tcp_loadgen;

pub use echo::{EchoApp, EchoConfig, EchoProtocol};
pub use loadgen::{LatencySummary, LoadgenApp, LoadgenConfig, LoadgenReport};
pub use tcp_echo::{TcpEchoApp, TcpEchoConfig, TcpEchoCounters};
pub use tcp_loadgen::{TcpLoadgenApp, TcpLoadgenConfig};
