//! Melange's own TCP, as a pure sans-IO crate: segments, app commands and clock readings in,
//! segments, events and timer deadlines out. Nothing here allocates on the per-segment path,
//! reads a clock, or makes a system call, so the engine, the simulator and the fuzzers drive
//! exactly the same code.
//!
//! Why our own and not smoltcp's or Demikernel's: smoltcp has no listen backlog, copies every
//! payload through per-socket rings and scans every socket per packet; Demikernel's TCP has no
//! SACK and copies. IX's design needs zero-copy send (the stack holds the app's buffers until
//! they are acknowledged) and O(1) demultiplexing over many connections, so the core is built
//! for run-to-completion from the start.
//!
//! The building blocks, each a module with its own tests:
//! - [`seq`]: 32-bit sequence-space arithmetic (RFC 9293 §3.4, comparisons modulo 2^32).
//! - [`rtt`]: the retransmission timer's estimator (RFC 6298) with a configurable minimum.
//! - [`sack`]: the sender's SACK scoreboard and loss recovery bookkeeping (RFC 2018, 6675).
//! - [`rack`]: RACK-TLP loss detection (RFC 8985): a bounded log of when each outstanding
//!   range was sent, losses by the clock, the reordering window and the tail loss probe.
//! - [`cc`]: congestion control behind a trait: NewReno (RFC 5681, 6582) and CUBIC (RFC 9438)
//!   with HyStart++ (RFC 9406) in its initial slow start.
//! - [`isn`]: initial sequence numbers (RFC 6528) from a keyed hash of the 4-tuple.
//! - [`cookie`]: SYN cookies (RFC 4987), encoding MSS in the sequence number and window
//!   scale, SACK-permitted and ECN in the timestamp, as Linux does.
//! - [`table`]: the per-engine connection table, O(1) by a keyed hash of the 4-tuple, with a
//!   named maximum and fixed-size entries; and the ephemeral port chooser (RFC 6056).
//! - [`listen`]: listeners with a bounded SYN queue and accept backlog, the stateful or
//!   cookie decision on each SYN, and the cookie SYN-ACK and final-ACK helpers.
//! - [`siphash`]: SipHash-2-4, the keyed hash behind [`isn`], [`cookie`] and the connection
//!   table, so a peer cannot aim collisions or predict sequence numbers.
//! - `testkit` (feature `testkit`): a deterministic, impaired network simulation of our TCP
//!   against our TCP, driven by seeds (`tests/sim.rs` runs it).
#![forbid(unsafe_code)]

pub mod cc;
pub mod conn;
pub mod cookie;
pub mod fuzz;
pub mod isn;
pub mod listen;
pub mod rack;
pub mod rtt;
pub mod sack;
pub mod seq;
pub mod siphash;
pub mod table;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
