//! Fuzz target: the icmpv4 parser (checked view, parse, emit round trip) never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_wire::fuzz::icmpv4(data));
