//! Fuzz target: the memcached reply parser never panics and parses any cut of a stream as
//! the whole.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_memcache::fuzz::reply(data));
