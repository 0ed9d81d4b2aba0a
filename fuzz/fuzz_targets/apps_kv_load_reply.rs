//! Fuzz target: the key-value load generator's reply reader. Whatever bytes a server sends,
//! in whatever pieces, it never panics, always makes progress, reads the same replies however
//! the bytes are split, and once it calls the stream malformed it reports nothing more.
#![no_main]
use melange_apps::kv_load::{KvProtocol, Reply, ReplyScanner};

/// The replies `bytes` come to, fed in pieces whose lengths cycle through `steps`.
fn scan(protocol: KvProtocol, bytes: &[u8], steps: &[u8], key: u64) -> Vec<Reply> {
    let mut scanner = ReplyScanner::new(protocol);
    let mut replies = Vec::new();
    let mut at = 0;
    let mut k = 0;
    while at < bytes.len() {
        let step = usize::from(steps.get(k % steps.len().max(1)).copied().unwrap_or(255)).max(1);
        k += 1;
        let piece = &bytes[at..(at + step).min(bytes.len())];
        let mut used_total = 0;
        while used_total < piece.len() {
            let (used, reply) = scanner.feed(&piece[used_total..], key);
            assert!(used <= piece.len() - used_total, "consumed more than it was given");
            assert!(used > 0 || reply.is_some(), "no progress");
            used_total += used;
            if let Some(reply) = reply {
                assert!(!replies.contains(&Reply::Malformed), "a reply after the stream was lost");
                replies.push(reply);
            }
        }
        at += piece.len();
    }
    if replies.contains(&Reply::Malformed) {
        assert!(scanner.is_lost());
    }
    replies
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let protocol = if head & 1 == 0 { KvProtocol::Resp } else { KvProtocol::Memcache };
    let split = usize::from(head >> 1).min(rest.len());
    let (steps, bytes) = rest.split_at(split.min(16));
    let key = u64::from(head);
    let whole = scan(protocol, bytes, &[255], key);
    let pieces = scan(protocol, bytes, steps, key);
    assert_eq!(whole, pieces, "the replies depend on how the bytes were split");
});
