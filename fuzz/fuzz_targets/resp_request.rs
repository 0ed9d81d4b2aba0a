//! Fuzz target: the Redis request parser, over arbitrary bytes cut into arbitrary pieces,
//! never panics and agrees with itself fed the stream whole.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_resp::fuzz::request(data));
