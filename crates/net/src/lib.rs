//! The sans-IO network core of one Melange interface.
//!
//! One [`Interface`] speaks Ethernet, ARP (RFC 826), IPv4 (RFC 791, with reassembly and
//! fragmentation of UDP datagrams), ICMP echo (RFC 792), UDP (RFC 768) and TCP segments
//! (RFC 9293: checked and handed to the transport above, which owns the connections; built
//! with full checksums on the way out) for a single MAC and IPv4 address. It is a state
//! machine in the quinn-proto and smoltcp mould: frames and time go in through `handle_*`, frames come out through
//! `poll_*`, and it makes no system call and reads no clock, so the engine, the simulator
//! and the fuzzers drive the same code. Packets live in the engine's
//! [`melange_core::pool::PacketPool`] and are rewritten in place; nothing here allocates
//! after [`Interface::new`].
//!
//! The alternative rejected is a general socket stack (smoltcp's `Interface` plus socket
//! set): it buffers payloads per socket, which costs a copy per datagram, and its
//! generality (routing tables, IPv6, a TCP of its own) is weight this dataplane does not
//! carry. TCP connections live one layer up; this crate only moves their segments.
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
pub use iface::{
    Datagram, Interface, Received, Segment, SendError, HEADERS_LEN, TCP_HEADERS_LEN_MAX,
    TX_FRAGMENTS_MAX, UDP_PAYLOAD_MAX,
};
pub use melange_wire::EthernetAddress;
pub use ports::BindError;
