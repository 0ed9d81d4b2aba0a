//! Apps written against Melange's `run_io` contract.
//!
//! They are pure: no system calls, no clock. Time comes from the batch (`IoContext::now_ns`),
//! and the echo server's simulated work is a function the shell supplies (a spin on the real
//! clock in the runtime, nothing in the simulator). So the same app code runs over the kernel
//! backend, over AF_XDP, and in the deterministic simulator.
//!
//! UDP: the echo server and the load generator. TCP: the echo server, the load generator
//! (request/response, connection churn and bulk modes), and the sink and source pair that
//! moves a seeded byte stream and checks it end to end by its SHA-256 ([`stream`]).
//! The key-value service ([`kv`]): Redis and memcached clients served from one shared
//! keyspace; the TCP load generator speaks both protocols too ([`kv_load`]).
#![forbid(unsafe_code)]

pub mod echo;
pub mod kv;
pub mod kv_load;
pub mod loadgen;
pub mod stream;
pub mod tcp_echo;
pub mod tcp_loadgen;
pub mod tcp_sink;
pub mod tcp_source;
#[cfg(test)]
mod test_tcp;

pub use echo::{EchoApp, EchoConfig, EchoProtocol};
pub use kv::{KvApp, KvConfig, KvCounters, SharedServer};
pub use loadgen::{LatencySummary, LoadgenApp, LoadgenConfig, LoadgenReport};
pub use tcp_echo::{TcpEchoApp, TcpEchoConfig, TcpEchoCounters};
pub use tcp_loadgen::{TcpLoadMode, TcpLoadgenApp, TcpLoadgenConfig};
pub use tcp_sink::{SinkRecord, SinkReporter, TcpSinkApp, TcpSinkConfig, TcpSinkCounters};
pub use tcp_source::{SourceEnd, SourceReport, TcpSourceApp, TcpSourceConfig};
