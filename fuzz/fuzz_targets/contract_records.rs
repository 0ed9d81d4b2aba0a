//! Fuzz target: command and event records from another process decode to a clean error or to
//! a value that re-encodes to the same record, and never name a frame the pool does not hold.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_core::record::fuzz_decode(data));
