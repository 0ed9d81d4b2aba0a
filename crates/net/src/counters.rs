//! Counters of one interface: traffic totals and drops by reason.
//!
//! Design: every frame the interface consumes without delivering or transmitting it is
//! counted under exactly one [`DropReason`], so `rx_frames` can be reconciled against
//! deliveries, replies and drops, and a test can provoke each reason and see its counter
//! move. The one exception is reassembly: fragments held for a datagram that is then given
//! up (timed out, overlapped, too big) are counted once for the datagram, the unit an
//! operator cares about; each `Reasm*` reason says which unit it counts. Drops live in a fixed array indexed by the reason's discriminant: counting is one
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
    /// Source MAC is multicast, broadcast or all zeros (sources are individual addresses).
    EthBadSource,
    /// 802.1Q VLAN-tagged frame; this interface is untagged.
    Vlan,
    /// EtherType neither IPv4 nor ARP.
    UnknownEthertype,
    /// ARP packet truncated, not Ethernet/IPv4, unknown operation, or a non-unicast sender.
    ArpMalformed,
    /// ARP packet whose target is another host.
    ArpNotForUs,
    /// ARP packet whose sender protocol address is martian (loopback, multicast, reserved,
    /// broadcast, our subnet's network address) or our own: neither learned nor answered.
    ArpBadSender,
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
    /// IPv4 fragment of a protocol other than UDP and TCP (only UDP is reassembled; TCP
    /// fragments are [`DropReason::TcpFragment`]).
    IpFragment,
    /// IPv4 destination is not our address.
    IpNotForUs,
    /// IPv4 source in `0.0.0.0/8`, "this network" (RFC 1122 §3.2.1.3 (a), (b)).
    IpSrcThisNetwork,
    /// IPv4 source in `127.0.0.0/8`, loopback (RFC 1122 §3.2.1.3 (g)).
    IpSrcLoopback,
    /// IPv4 source in `224.0.0.0/4`, multicast (RFC 1812 §5.3.7).
    IpSrcMulticast,
    /// IPv4 source in `240.0.0.0/4`, reserved (RFC 1812 §5.3.7).
    IpSrcReserved,
    /// IPv4 source is the limited broadcast or our subnet's directed broadcast (RFC 1122
    /// §3.2.1.3 (c), (d)).
    IpSrcBroadcast,
    /// IPv4 source is our subnet's network address (all-zeros host number).
    IpSrcNetwork,
    /// IPv4 source is our own address (a reflection or a spoof).
    IpSrcOurs,
    /// IPv4 protocol neither ICMP, UDP nor TCP.
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
    /// TCP segment shorter than its fixed header, with a data offset below 5 words, or with
    /// a header longer than the segment (RFC 9293 §3.1 "Data Offset").
    TcpMalformed,
    /// TCP segment whose options region is malformed: an option length below 2, running
    /// past the header, or wrong for a known kind (RFC 9293 §3.2 MUST-7).
    TcpBadOption,
    /// TCP checksum invalid (or partial while partial checksums are refused).
    TcpBadChecksum,
    /// TCP segment from or to port 0, which names no connection.
    TcpPortZero,
    /// An IPv4 fragment of a TCP segment. TCP is never reassembled: we send with DF and an
    /// MSS that fits the MTU, and a peer's segments do the same.
    TcpFragment,
    /// A UDP fragment that cannot be part of any datagram: empty, or not the last and not a
    /// multiple of 8 bytes long (RFC 791 §3.2). One count per fragment.
    ReasmMalformed,
    /// A datagram not completed within the reassembly timeout; its fragments were freed.
    /// One count per datagram.
    ReasmTimeout,
    /// A datagram abandoned because two of its fragments overlapped with different contents
    /// or ends (RFC 5722's rule, applied to IPv4). One count per datagram.
    ReasmOverlap,
    /// A datagram refused or abandoned because the reassembly table had no free entry or its
    /// byte budget was spent. One count per datagram (or per refused first fragment).
    ReasmTableFull,
    /// A datagram abandoned because a fragment reached past 65,535 bytes of total length.
    /// One count per datagram (or per refused first fragment).
    ReasmTooBig,
    /// A datagram abandoned because it needed more fragments than a datagram may hold.
    /// One count per datagram.
    ReasmTooManyFragments,
    /// An exact copy (same offset, length and bytes) of a fragment already held, freed
    /// while the datagram stays (network duplication, RFC 8200 §4.5). One count per fragment.
    ReasmDuplicate,
    /// A fragment of a datagram already delivered or abandoned, freed (RFC 5722: fragments
    /// of an abandoned datagram "including those not yet received" are discarded). One count
    /// per fragment.
    ReasmStale,
    /// The transmit queue was full.
    TxQueueFull,
    /// The ARP pending queue was full, so the frame could not wait for resolution.
    ArpPendingFull,
    /// The next hop never answered ARP; parked frames were freed.
    ArpUnresolved,
    /// No route: the destination is off-link and there is no gateway.
    NoRoute,
    /// A send to a martian, broadcast or network address, or to our own address, refused.
    TxBadDestination,
    /// The pool had no buffer (for an ARP request, or for every fragment of a datagram).
    PoolExhausted,
    /// The payload is above 65,507 bytes, or needs more fragments than one send may build.
    PayloadTooLarge,
    /// The payload buffer had too little headroom for the headers (42 bytes for UDP, 54 to
    /// 94 for TCP).
    TxNoHeadroom,
    /// A TCP send whose header did not describe its segment (payload length or destination
    /// port): a bug in the transport above.
    TxTcpReprMismatch,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 53;

    /// Every reason, in declaration order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::EthTruncated,
        DropReason::EthNotForUs,
        DropReason::EthBadSource,
        DropReason::Vlan,
        DropReason::UnknownEthertype,
        DropReason::ArpMalformed,
        DropReason::ArpNotForUs,
        DropReason::ArpBadSender,
        DropReason::IpTruncated,
        DropReason::IpBadVersion,
        DropReason::IpBadHeaderLen,
        DropReason::IpBadChecksum,
        DropReason::IpBadTotalLen,
        DropReason::IpOptions,
        DropReason::IpFragment,
        DropReason::IpNotForUs,
        DropReason::IpSrcThisNetwork,
        DropReason::IpSrcLoopback,
        DropReason::IpSrcMulticast,
        DropReason::IpSrcReserved,
        DropReason::IpSrcBroadcast,
        DropReason::IpSrcNetwork,
        DropReason::IpSrcOurs,
        DropReason::IpUnknownProtocol,
        DropReason::IcmpMalformed,
        DropReason::IcmpBadChecksum,
        DropReason::IcmpUnsupported,
        DropReason::UdpTruncated,
        DropReason::UdpBadLength,
        DropReason::UdpBadChecksum,
        DropReason::UdpNoListener,
        DropReason::TcpMalformed,
        DropReason::TcpBadOption,
        DropReason::TcpBadChecksum,
        DropReason::TcpPortZero,
        DropReason::TcpFragment,
        DropReason::ReasmMalformed,
        DropReason::ReasmTimeout,
        DropReason::ReasmOverlap,
        DropReason::ReasmTableFull,
        DropReason::ReasmTooBig,
        DropReason::ReasmTooManyFragments,
        DropReason::ReasmDuplicate,
        DropReason::ReasmStale,
        DropReason::TxQueueFull,
        DropReason::ArpPendingFull,
        DropReason::ArpUnresolved,
        DropReason::NoRoute,
        DropReason::TxBadDestination,
        DropReason::PoolExhausted,
        DropReason::PayloadTooLarge,
        DropReason::TxNoHeadroom,
        DropReason::TxTcpReprMismatch,
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
            DropReason::ArpBadSender => "arp_bad_sender",
            DropReason::IpTruncated => "ip_truncated",
            DropReason::IpBadVersion => "ip_bad_version",
            DropReason::IpBadHeaderLen => "ip_bad_header_len",
            DropReason::IpBadChecksum => "ip_bad_checksum",
            DropReason::IpBadTotalLen => "ip_bad_total_len",
            DropReason::IpOptions => "ip_options",
            DropReason::IpFragment => "ip_fragment",
            DropReason::IpNotForUs => "ip_not_for_us",
            DropReason::IpSrcThisNetwork => "ip_src_this_network",
            DropReason::IpSrcLoopback => "ip_src_loopback",
            DropReason::IpSrcMulticast => "ip_src_multicast",
            DropReason::IpSrcReserved => "ip_src_reserved",
            DropReason::IpSrcBroadcast => "ip_src_broadcast",
            DropReason::IpSrcNetwork => "ip_src_network",
            DropReason::IpSrcOurs => "ip_src_ours",
            DropReason::IpUnknownProtocol => "ip_unknown_protocol",
            DropReason::IcmpMalformed => "icmp_malformed",
            DropReason::IcmpBadChecksum => "icmp_bad_checksum",
            DropReason::IcmpUnsupported => "icmp_unsupported",
            DropReason::UdpTruncated => "udp_truncated",
            DropReason::UdpBadLength => "udp_bad_length",
            DropReason::UdpBadChecksum => "udp_bad_checksum",
            DropReason::UdpNoListener => "udp_no_listener",
            DropReason::TcpMalformed => "tcp_malformed",
            DropReason::TcpBadOption => "tcp_bad_option",
            DropReason::TcpBadChecksum => "tcp_bad_checksum",
            DropReason::TcpPortZero => "tcp_port_zero",
            DropReason::TcpFragment => "tcp_fragment",
            DropReason::ReasmMalformed => "reasm_malformed",
            DropReason::ReasmTimeout => "reasm_timeout",
            DropReason::ReasmOverlap => "reasm_overlap",
            DropReason::ReasmTableFull => "reasm_table_full",
            DropReason::ReasmTooBig => "reasm_too_big",
            DropReason::ReasmTooManyFragments => "reasm_too_many_fragments",
            DropReason::ReasmDuplicate => "reasm_duplicate",
            DropReason::ReasmStale => "reasm_stale",
            DropReason::TxQueueFull => "tx_queue_full",
            DropReason::ArpPendingFull => "arp_pending_full",
            DropReason::ArpUnresolved => "arp_unresolved",
            DropReason::NoRoute => "no_route",
            DropReason::TxBadDestination => "tx_bad_destination",
            DropReason::PoolExhausted => "pool_exhausted",
            DropReason::PayloadTooLarge => "payload_too_large",
            DropReason::TxNoHeadroom => "tx_no_headroom",
            DropReason::TxTcpReprMismatch => "tx_tcp_repr_mismatch",
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// TCP segments delivered to the transport (every valid segment addressed to us).
    pub tcp_rx: u64,
    /// TCP segments queued for transmission (after ARP resolution, if it was needed).
    pub tcp_tx: u64,
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
    /// TCP segments accepted whose checksum field holds the folded pseudo-header sum, as
    /// transmit offload leaves it (a partial checksum). A valid segment whose checksum
    /// equals that sum by chance, about one in 65,536, is counted too: telling them apart
    /// would cost a second pass over every partial segment.
    pub tcp_checksum_partial: u64,
    /// ARP entries created: from a request for our address or a reply to it (RFC 826).
    pub arp_learned: u64,
    /// ARP entries rewritten because their sender was already in the cache (RFC 826 merge).
    pub arp_updated: u64,
    /// ARP entries evicted to make room for a new one (the least recently written).
    pub arp_evicted: u64,
    /// ARP packets from a sender not in the cache that neither asked for our address nor
    /// answered to it, or that is not on our subnet, so were not learned from.
    pub arp_ignored_unsolicited: u64,
    /// UDP fragments that entered reassembly.
    pub frag_received: u64,
    /// Datagrams reassembled from fragments and delivered.
    pub reassembled: u64,
    /// UDP datagrams sent as IPv4 fragments.
    pub fragmented: u64,
    /// Fragments queued for those datagrams.
    pub frag_sent: u64,
    drops: [u64; DropReason::COUNT],
}

// Written out because `Default` is derived only for arrays of up to 32 elements.
impl Default for NetCounters {
    fn default() -> Self {
        NetCounters {
            rx_frames: 0,
            rx_bytes: 0,
            tx_frames: 0,
            tx_bytes: 0,
            udp_rx: 0,
            udp_tx: 0,
            tcp_rx: 0,
            tcp_tx: 0,
            icmp_echo_replies: 0,
            arp_requests_sent: 0,
            arp_replies_sent: 0,
            udp_checksum_zero: 0,
            udp_checksum_partial: 0,
            tcp_checksum_partial: 0,
            arp_learned: 0,
            arp_updated: 0,
            arp_evicted: 0,
            arp_ignored_unsolicited: 0,
            frag_received: 0,
            reassembled: 0,
            fragmented: 0,
            frag_sent: 0,
            drops: [0; DropReason::COUNT],
        }
    }
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
