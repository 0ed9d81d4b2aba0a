//! Fuzz target: the network core's frame input never panics and never leaks a buffer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_net::fuzz::frame_input(data));
