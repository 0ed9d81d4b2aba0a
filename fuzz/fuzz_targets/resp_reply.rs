//! Fuzz target: the RESP reply parser, over arbitrary bytes cut into arbitrary pieces, never
//! panics, agrees with itself fed the stream whole, and reads back what the writer writes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| melange_resp::fuzz::reply(data));
