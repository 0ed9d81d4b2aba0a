//! Fuzz target: the memcached request parser never panics, consumes no more than it is
//! given, reports spans inside the bytes fed, and parses any cut of a stream as the whole.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_memcache::fuzz::request(data));
