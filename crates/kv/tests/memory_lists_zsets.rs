//! The byte counts of lists and sorted sets against what the allocator really holds: a
//! counting global allocator measures the heap growth of one big list or sorted set, and the
//! keyspace's count must stay within a quarter of it. The allocator counts requested sizes;
//! every element is one allocation of its own, to which malloc adds its header and
//! alignment, [`ALLOCATION_OVERHEAD`] on average as the crate counts it, so the measured heap
//! gets that much per element added. (Vectors and hash tables grow by doubling; the counts
//! follow their capacity, so they jump with the heap.) Its own binary: the allocator counts
//! the whole process.

use melange_kv::command::Config;
use melange_kv::value::ALLOCATION_OVERHEAD;
use melange_kv::{Recorder, Server};
use melange_sys::alloc_count::{bytes_held, CountingAllocator};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `command(i)` for `0..n` on a fresh server, each adding one element; (heap growth
/// with malloc's overhead for the `n` elements, counted bytes).
fn fill(n: usize, command: impl Fn(usize) -> Vec<Vec<u8>>) -> (f64, f64) {
    let mut server = Server::new(Config::default(), 0, 1);
    let mut client = server.new_client();
    let mut out = Recorder::new();
    let before = bytes_held();
    for i in 0..n {
        let args = command(i);
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        server.execute(&mut client, &refs, 0, &mut out);
        out.replies.clear();
    }
    let heap = (bytes_held() - before) as f64 + (n * ALLOCATION_OVERHEAD) as f64;
    let counted = server.keyspace.used_bytes() as f64;
    drop(server);
    (heap, counted)
}

fn check(what: &str, (heap, counted): (f64, f64)) {
    let ratio = counted / heap;
    eprintln!("{what}: heap {heap} B, counted {counted} B, ratio {ratio:.3}");
    assert!(
        (0.75..=1.25).contains(&ratio),
        "{what}: counted {counted} B for a heap of {heap} B"
    );
}

#[test]
fn list_and_sorted_set_byte_counts_track_the_heap() {
    for (len, n) in [(10, 200_000), (100, 50_000)] {
        let element = vec![b'e'; len];
        check(
            &format!("list of {n} x {len} B"),
            fill(n, |_| {
                vec![b"RPUSH".to_vec(), b"l".to_vec(), element.clone()]
            }),
        );
        check(
            &format!("sorted set of {n} x {len} B"),
            fill(n, |i| {
                let mut member = format!("{i:010}").into_bytes();
                member.resize(len, b'm');
                vec![
                    b"ZADD".to_vec(),
                    b"z".to_vec(),
                    i.to_string().into_bytes(),
                    member,
                ]
            }),
        );
    }
}
