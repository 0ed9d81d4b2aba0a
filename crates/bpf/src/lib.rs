//! `melange-bpf`: the XDP half of Melange's control plane.
//!
//! Arrakis guards each application's virtual NIC with hardware filters. Melange plays the NIC
//! with AF_XDP sockets, and the filters with one XDP program per interface whose BPF maps hold
//! every filter (see [`filter`] for why one program and not one per filter). This crate has
//! these layers:
//!
//! | module      | role                                                                  |
//! |-------------|-----------------------------------------------------------------------|
//! | [`asm`]     | an eBPF assembler: instruction encoding and a builder with labels      |
//! | [`filter`]  | the filter program, generated from a spec, and its map layouts         |
//! | [`registry`]| the filters of one interface: conflicts, limits, and the map writes    |
//!
//! The crate is pure: it computes instructions, map layouts and the map writes that add or
//! remove a filter ([`registry::MapOp`]), and never calls the kernel, as aya splits `aya-obj`
//! from `aya`; its tests need no privileges. The part that loads the program, creates the
//! maps, applies the writes and attaches the program lives in the control plane,
//! `melange-control`, which reaches the kernel through `melange_sys::bpf`.
//! No clang, libbpf or ELF is involved: the program is assembled in memory and handed to
//! `bpf(BPF_PROG_LOAD)`; the kernel's verifier checks it, and the tests load every variant.
#![forbid(unsafe_code)]

pub mod asm;
pub mod filter;
pub mod registry;

pub use asm::{Asm, AsmError, Insn};
pub use filter::{build, FilterMapFds, FilterProgramSpec, Protocol, Steer};
pub use registry::{
    Direction, FilterOptions, FilterSpec, FragmentRule, Ipv4Prefix, MapOp, PortRange, Registry,
    RegistryError, StagedFilter,
};
