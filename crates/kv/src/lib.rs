//! The keyspace of `melange kv`: Redis' data types, expiry, memory accounting and eviction,
//! and the commands over them, as a pure sans-IO crate.
//!
//! Commands come in as argument lists (`&[&[u8]]`, borrowed from the receive buffers by the
//! protocol front ends, `melange-resp` and `melange-memcache`), the time comes in as a
//! number, and replies go out through the protocol-neutral [`reply::Reply`] trait. Nothing
//! here reads a clock, makes a system call or knows about connections beyond the
//! per-client state a command needs ([`command::Client`]), so the engine, the simulator, the
//! differential tests against redis-server and the fuzzers drive the same code.
//!
//! - [`keyspace`]: numbered databases over a slab and a keyed hash table, TTLs with lazy and
//!   active expiry, byte accounting in O(1) per write, approximate-LRU eviction under
//!   `maxmemory`, version stamps for `WATCH`.
//! - [`value`]: strings, hashes, lists, sets and sorted sets, each keeping its byte count.
//! - [`slabmap`]: the map under hashes and sets: O(1) random elements and stable scan
//!   cursors.
//! - [`zset`]: the sorted set, an order-statistic treap with a member index and a stable
//!   `ZSCAN` cursor.
//! - [`number`]: integers and floats in strings, parsed and printed exactly as Redis does.
//! - [`glob`]: Redis' glob patterns (`KEYS`, `SCAN MATCH`, `CONFIG GET`).
//! - [`reply`]: the reply trait and a recorder for tests.
//! - [`command`]: the command table, arity and error words, transactions, and dispatch.
//! - [`memcached`]: memcached's text and meta commands over the same keyspace (database 0),
//!   driven per connection by a [`memcached::Session`] over `melange-memcache`'s parser.
#![forbid(unsafe_code)]

pub mod command;
mod commands;
pub use commands::{parse_memory, REDIS_VERSION};
pub mod fuzz;
pub mod glob;
pub mod keyspace;
pub mod memcached;
pub mod number;
pub mod reply;
pub mod slabmap;
pub mod value;
pub mod zset;

pub use command::{Client, Server};
pub use keyspace::Keyspace;
pub use reply::{Recorder, Reply, ReplyValue};
