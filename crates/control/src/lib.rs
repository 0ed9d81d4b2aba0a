//! `melange-control`: Melange's control plane, as a library a command or a daemon hosts.
//!
//! Arrakis splits the operating system into a control plane, which sets up protected access
//! to devices (virtual NICs with filters, storage areas), and dataplanes that then run with
//! no kernel on their path. This crate is that control plane on Linux. It owns the kernel
//! objects an engine must never touch itself: the one XDP program per interface and its
//! filter maps ([`filters`]), the AF_XDP sockets and UMEM pools it opens and registers before
//! handing each queue to an engine thread ([`engines`]), and the checks every operator
//! setting passes before anything is attached ([`options`]). Storage areas and policy join it
//! in later issues.
//!
//! It runs in the app's process today (the `melange` command calls it); nothing in its API
//! assumes so, which is what lets a daemon host it later (service mode).
//!
//! | module      | role |
//! |-------------|------|
//! | [`filters`] | [`XdpFilters`]: maps, program and link of one interface; Arrakis' `create_filter` |
//! | [`engines`] | attach, open AF_XDP queues, install the app's filter, start one engine per queue |
//! | [`options`] | operator settings: durations, backends, CPU lists, checked ranges |
//! | [`setups`]  | the AF_XDP setup of each role: a server on one port, a TCP client |
#![forbid(unsafe_code)]

pub mod engines;
pub mod filters;
pub mod options;
pub mod setups;

pub use filters::{
    ControlError, Direction, FilterHandle, FilterOptions, FilterSpec, FilterStats, FragmentHandle,
    FragmentRule, Interface, Ipv4Prefix, PortRange, XdpFilters,
};
pub use melange_bpf::RegistryError;
