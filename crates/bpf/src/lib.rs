//! `melange-bpf`: the XDP half of Melange's control plane.
//!
//! Arrakis guards each application's virtual NIC with hardware filters. Melange plays the NIC
//! with AF_XDP sockets, and the filters with one XDP program per interface whose BPF maps hold
//! every filter (see [`filter`] for why one program and not one per filter). This crate has
//! three layers:
//!
//! | module      | role                                                                  |
//! |-------------|-----------------------------------------------------------------------|
//! | [`asm`]     | an eBPF assembler: instruction encoding and a builder with labels      |
//! | [`filter`]  | the filter program, generated from a spec, and its map layouts         |
//! | [`control`] | [`control::XdpFilters`]: maps, program and link of one interface, and Arrakis' `create_filter` |
//!
//! The crate is pure Rust with `#![forbid(unsafe_code)]`: [`asm`] and [`filter`] only compute
//! numbers, and [`control`] reaches the kernel through `melange_sys::bpf`, whose API is safe.
//! No clang, libbpf or ELF is involved: the program is assembled in memory and handed to
//! `bpf(BPF_PROG_LOAD)`; the kernel's verifier checks it, and the tests load every variant.
#![forbid(unsafe_code)]

pub mod asm;
pub mod control;
pub mod filter;

pub use asm::{Asm, AsmError, Insn};
pub use control::{
    ControlError, Direction, FilterHandle, FilterOptions, FilterSpec, FilterStats, Interface,
    Ipv4Prefix, PortRange, XdpFilters,
};
pub use filter::{build, FilterMapFds, FilterProgramSpec, Protocol, Steer};
