//! Fuzz target: the netlink `RTM_GETLINK` reply parser (`melange_sys::netdev::parse_link_reply`)
//! never panics, and what it accepts describes the interface it was asked about. Input: the
//! asked-for interface index (4 bytes, little-endian), then the reply datagram.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((index, reply)) = data.split_first_chunk::<4>() else {
        return;
    };
    let ifindex = u32::from_le_bytes(*index);
    if let Ok(info) = melange_sys::netdev::parse_link_reply(reply, ifindex) {
        assert_eq!(
            info.ifindex, ifindex,
            "the reply describes the asked interface"
        );
    }
});
