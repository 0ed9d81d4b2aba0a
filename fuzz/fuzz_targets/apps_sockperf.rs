//! Fuzz target: the echo server's sockperf header handling answers exactly the messages that
//! ask for it, changing only the client flag, and never leaks a buffer.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    melange_apps::echo::fuzz_sockperf(data);
});
