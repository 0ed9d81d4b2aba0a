//! Fuzz target: a memcached client's byte stream, cut into pieces, through a memcached
//! session over the keyspace: no panic, accounting never drifts, replies well-formed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_kv::fuzz::memcached(data));
