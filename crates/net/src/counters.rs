//! Counters of one interface: traffic totals and drops by reason.
//!
//! Design: every frame the interface consumes without delivering or transmitting it is
//! counted under exactly one [`DropReason`], so `rx_frames` can be reconciled against
//! deliveries, replies and drops, and a test can provoke each reason and see its counter
//! move. Drops live in a fixed array indexed by the reason's discriminant: counting is one
//! increment with no branch, and adding a reason is one line in the enum plus one in `ALL`
//! (a compile-time assertion keeps the two in step).
//!
//! Alternative rejected: one named field per reason. It makes `drops_total` and reporting
//! loops hand-written lists that drift out of date.

/// Why a frame (or a datagram we were asked to send) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Frame shorter than the Ethernet header.
    EthTruncated,
    /// Destination MAC is neither ours nor broadcast.
    EthNotForUs,
    /// Source MAC is multicast or broadcast (sources are individual addresses).
    EthBadSource,
    /// 802.1Q VLAN-tagged frame; this interface is untagged.
    Vlan,
    /// EtherType neither IPv4 nor ARP.
    UnknownEthertype,
    /// ARP packet truncated, not Ethernet/IPv4, unknown operation, or a non-unicast sender.
    ArpMalformed,
    /// ARP packet whose target is another host.
    ArpNotForUs,
    /// IPv4 packet shorter than 20 bytes.
    IpTruncated,
    /// IP version is not 4.
    IpBadVersion,
    /// IHL below 5 or beyond the frame.
    IpBadHeaderLen,
    /// IPv4 header checksum does not verify.
    IpBadChecksum,
    /// IPv4 total length below the header or beyond the frame.
    IpBadTotalLen,
    /// IPv4 header with options (not processed).
    IpOptions,
    /// IPv4 fragment (not reassembled).
    IpFragment,
    /// IPv4 destination is not our address.
    IpNotForUs,
    /// IPv4 source is unspecified, broadcast or multicast (RFC 1122 §3.2.1.3).
    IpBadSource,
    /// IPv4 protocol neither ICMP nor UDP.
    IpUnknownProtocol,
    /// ICMP message shorter than its header.
    IcmpMalformed,
    /// ICMP checksum does not verify.
    IcmpBadChecksum,
    /// ICMP message other than echo request.
    IcmpUnsupported,
    /// UDP datagram shorter than its header.
    UdpTruncated,
    /// UDP length field below 8 or beyond the IPv4 payload.
    UdpBadLength,
    /// UDP checksum invalid (or partial while partial checksums are refused).
    UdpBadChecksum,
    /// No socket bound to the destination port.
    UdpNoListener,
    /// The transmit queue was full.
    TxQueueFull,
    /// The ARP pending queue was full, so the frame could not wait for resolution.
    ArpPendingFull,
    /// The next hop never answered ARP; parked frames were freed.
    ArpUnresolved,
    /// No route: the destination is off-link and there is no gateway, or unspecified.
    NoRoute,
    /// The pool had no buffer (for an ARP request).
    PoolExhausted,
    /// The payload does not fit the MTU.
    PayloadTooLarge,
    /// The payload buffer had less than 42 bytes of headroom for the headers.
    TxNoHeadroom,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 31;

    /// Every reason, in declaration order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::EthTruncated,
        DropReason::EthNotForUs,
        DropReason::EthBadSource,
        DropReason::Vlan,
        DropReason::UnknownEthertype,
        DropReason::ArpMalformed,
        DropReason::ArpNotForUs,
        DropReason::IpTruncated,
        DropReason::IpBadVersion,
        DropReason::IpBadHeaderLen,
        DropReason::IpBadChecksum,
        DropReason::IpBadTotalLen,
        DropReason::IpOptions,
        DropReason::IpFragment,
        DropReason::IpNotForUs,
        DropReason::IpBadSource,
        DropReason::IpUnknownProtocol,
        DropReason::IcmpMalformed,
        DropReason::IcmpBadChecksum,
        DropReason::IcmpUnsupported,
        DropReason::UdpTruncated,
        DropReason::UdpBadLength,
        DropReason::UdpBadChecksum,
        DropReason::UdpNoListener,
        DropReason::TxQueueFull,
        DropReason::ArpPendingFull,
        DropReason::ArpUnresolved,
        DropReason::NoRoute,
        DropReason::PoolExhausted,
        DropReason::PayloadTooLarge,
        DropReason::TxNoHeadroom,
    ];

    /// The reason's snake_case name, for metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::EthTruncated => "eth_truncated",
            DropReason::EthNotForUs => "eth_not_for_us",
            DropReason::EthBadSource => "eth_bad_source",
            DropReason::Vlan => "vlan",
            DropReason::UnknownEthertype => "unknown_ethertype",
            DropReason::ArpMalformed => "arp_malformed",
            DropReason::ArpNotForUs => "arp_not_for_us",
            DropReason::IpTruncated => "ip_truncated",
            DropReason::IpBadVersion => "ip_bad_version",
            DropReason::IpBadHeaderLen => "ip_bad_header_len",
            DropReason::IpBadChecksum => "ip_bad_checksum",
            DropReason::IpBadTotalLen => "ip_bad_total_len",
            DropReason::IpOptions => "ip_options",
            DropReason::IpFragment => "ip_fragment",
            DropReason::IpNotForUs => "ip_not_for_us",
            DropReason::IpBadSource => "ip_bad_source",
            DropReason::IpUnknownProtocol => "ip_unknown_protocol",
            DropReason::IcmpMalformed => "icmp_malformed",
            DropReason::IcmpBadChecksum => "icmp_bad_checksum",
            DropReason::IcmpUnsupported => "icmp_unsupported",
            DropReason::UdpTruncated => "udp_truncated",
            DropReason::UdpBadLength => "udp_bad_length",
            DropReason::UdpBadChecksum => "udp_bad_checksum",
            DropReason::UdpNoListener => "udp_no_listener",
            DropReason::TxQueueFull => "tx_queue_full",
            DropReason::ArpPendingFull => "arp_pending_full",
            DropReason::ArpUnresolved => "arp_unresolved",
            DropReason::NoRoute => "no_route",
            DropReason::PoolExhausted => "pool_exhausted",
            DropReason::PayloadTooLarge => "payload_too_large",
            DropReason::TxNoHeadroom => "tx_no_headroom",
        }
    }
}

// `ALL` lists each reason at its own discriminant, so `drops[reason as usize]` is in range
// and `ALL[i] as usize == i`.
const _: () = {
    let mut i = 0;
    while i < DropReason::COUNT {
        assert!(DropReason::ALL[i] as usize == i);
        i += 1;
    }
};

/// Traffic and drop counters of one interface. Counts only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames handed to `handle_frame`.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames returned by `poll_transmit`.
    pub tx_frames: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// UDP datagrams delivered to a bound port.
    pub udp_rx: u64,
    /// UDP datagrams queued for transmission (after ARP resolution, if it was needed).
    pub udp_tx: u64,
    /// ICMP echo replies queued.
    pub icmp_echo_replies: u64,
    /// ARP requests queued (first tries and retries).
    pub arp_requests_sent: u64,
    /// ARP replies queued.
    pub arp_replies_sent: u64,
    /// UDP datagrams accepted without a checksum (field zero, RFC 768).
    pub udp_checksum_zero: u64,
    /// UDP datagrams accepted with a partial (offload) checksum.
    pub udp_checksum_partial: u64,
    drops: [u64; DropReason::COUNT],
}

impl NetCounters {
    /// Drops counted for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }
    /// Drops over all reasons.
    pub fn drops_total(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// Counts one drop.
    #[inline]
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
    /// Counts `n` drops.
    pub(crate) fn count_drops(&mut self, reason: DropReason, n: u64) {
        self.drops[reason as usize] += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert!(names
            .iter()
            .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
    }

    #[test]
    fn drops_count_by_reason() {
        let mut c = NetCounters::default();
        c.count_drop(DropReason::Vlan);
        c.count_drops(DropReason::ArpUnresolved, 3);
        assert_eq!(c.drops(DropReason::Vlan), 1);
        assert_eq!(c.drops(DropReason::ArpUnresolved), 3);
        assert_eq!(c.drops(DropReason::EthTruncated), 0);
        assert_eq!(c.drops_total(), 4);
    }
}
