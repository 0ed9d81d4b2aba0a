//! Fuzz target: the network core's frame input never panics, never leaks a buffer and never
//! delivers a wrong datagram. The first byte selects one frame or, with
//! `melange_net::fuzz::FLAG_FRAGMENTS`, a fragment program that drives IPv4 reassembly and
//! fragmentation (see `crates/net/src/fuzz.rs`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_net::fuzz::frame_input(data));
