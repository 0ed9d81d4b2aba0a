//! Fuzz target: the load generator's reply matching (header, sequence window, pattern check)
//! counts every reply exactly once, never matches one twice and never leaks a buffer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    melange_apps::loadgen::fuzz_reply(data);
});
