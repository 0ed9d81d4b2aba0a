//! The keyspace's byte count against what the allocator really holds.
//!
//! A counting global allocator measures the heap growth of storing many keys; the keyspace's
//! own count (`used_bytes`, what `INFO memory` reports and `maxmemory` is checked against)
//! must stay within a quarter of it, for small and large values. Hash tables grow by
//! doubling, so the measured heap jumps at resize points: the tolerance covers that.

use melange_kv::command::Config;
use melange_kv::{Recorder, Server};
use melange_sys::alloc_count::{bytes_held, CountingAllocator};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn fill(value_len: usize, keys: usize) -> (f64, f64) {
    let mut server = Server::new(Config::default(), 0, 1);
    let mut client = server.new_client();
    let value = vec![b'v'; value_len];
    let before = bytes_held();
    let mut out = Recorder::new();
    for i in 0..keys {
        let key = format!("key:{i:08}");
        server.execute(&mut client, &[b"SET", key.as_bytes(), &value], 0, &mut out);
        out.replies.clear();
    }
    let heap = (bytes_held() - before) as f64;
    let counted = server.keyspace.used_bytes() as f64;
    drop(server);
    (heap, counted)
}

#[test]
fn the_byte_count_tracks_the_heap_for_small_and_large_values() {
    for (value_len, keys) in [(10, 200_000), (100, 100_000), (1000, 20_000)] {
        let (heap, counted) = fill(value_len, keys);
        let ratio = counted / heap;
        eprintln!(
            "{keys} keys of {value_len} B: heap {heap} B, counted {counted} B, ratio {ratio:.3}"
        );
        assert!(
            (0.75..=1.25).contains(&ratio),
            "{value_len}-byte values: counted {counted} B for a heap of {heap} B"
        );
    }
}
