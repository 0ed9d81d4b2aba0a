//! Fuzz target: the route-netlink neighbour parser (`melange_sys::neigh::parse_neigh_messages`)
//! never panics, yields at most one item per netlink header's worth of bytes, yields nothing
//! after an error, and never reports interface 0. Input: one datagram.
#![no_main]
use melange_sys::neigh::{parse_neigh_messages, NeighMessage};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut count = 0usize;
    let mut failed = false;
    for item in parse_neigh_messages(data) {
        assert!(!failed, "nothing follows an error");
        count += 1;
        match item {
            Ok(NeighMessage::Update(update)) => {
                assert_ne!(update.ifindex, 0, "interface 0 is refused");
                if let Some(mac) = update.usable_mac() {
                    assert_eq!(update.mac, Some(mac));
                }
            }
            Ok(NeighMessage::DumpDone) => {}
            Err(_) => failed = true,
        }
    }
    assert!(count <= data.len() / 16 + 1, "at most one item per nlmsghdr");
});
