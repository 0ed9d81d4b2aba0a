//! Fuzz target: a whole engine (stack, app contract, timers, pool, a faulty device) under an
//! arbitrary sequence of operations never panics, never returns a buffer twice, never leaks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_engine::fuzz::engine_ops(data));
