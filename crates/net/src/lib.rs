//! The sans-IO network core of one Melange interface.
//!
//! One [`Interface`] speaks Ethernet, ARP (RFC 826), IPv4 (RFC 791, with reassembly and
//! fragmentation of UDP datagrams), ICMP echo (RFC 792) and UDP (RFC 768) for a single MAC
//! and IPv4 address. It is a state machine in the quinn-proto
//! and smoltcp mould: frames and time go in through `handle_*`, frames come out through
//! `poll_*`, and it makes no system call and reads no clock, so the engine, the simulator
//! and the fuzzers drive the same code. Packets live in the engine's
//! [`melange_core::pool::PacketPool`] and are rewritten in place; nothing here allocates
//! after [`Interface::new`].
//!
//! The alternative rejected is a general socket stack (smoltcp's `Interface` plus socket
//! set): it buffers payloads per socket, which costs a copy per datagram, and its
//! generality (TCP, routing tables, IPv6) is weight the UDP dataplane does not carry.
//!
//! - [`config`]: [`InterfaceConfig`] and [`ArpConfig`], validated at construction.
//! - [`iface`]: [`Interface`] itself and its call order.
//! - [`counters`]: [`NetCounters`] and [`DropReason`].
//! - [`ports`]: UDP port binding ([`BindError`]).
//! - [`reasm`]: IPv4 reassembly of UDP datagrams and its limits.
//! - [`fuzz`]: the body of the frame fuzz target.
#![forbid(unsafe_code)]

mod arp_cache;
pub mod config;
pub mod counters;
pub mod fuzz;
pub mod iface;
pub mod ports;
pub mod reasm;

pub use config::{ArpConfig, ConfigError, InterfaceConfig, Martian};
pub use counters::{DropReason, NetCounters};
pub use iface::{Datagram, Interface, SendError, HEADERS_LEN, TX_FRAGMENTS_MAX, UDP_PAYLOAD_MAX};
pub use melange_wire::EthernetAddress;
pub use ports::BindError;
