//! Fuzz target: the tcp parser (checked view, options, parse, emit round trip) never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_wire::fuzz::tcp(data));
