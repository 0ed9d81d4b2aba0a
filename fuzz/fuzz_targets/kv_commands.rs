//! Fuzz target: any sequence of commands keeps the keyspace consistent and never panics.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_kv::fuzz::commands(data));
