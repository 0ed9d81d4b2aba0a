//! Fuzz target: one TCP connection under arbitrary segments, app commands and clock steps on
//! every state never panics, never loops in `poll_transmit`, and emits only well-formed
//! segments inside what the app queued (see `melange_tcp::fuzz::conn`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = melange_tcp::fuzz::conn(data);
});
