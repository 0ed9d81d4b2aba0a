//! Fuzz target: memcached's UDP frame header and request checks, and a reply split into
//! datagrams and put back together, never panic and agree.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_memcache::fuzz::udp(data));
