//! Configuration of one interface, validated once by [`crate::Interface::new`].
//!
//! Design: every table and queue the interface owns has a named `*_max` here, and the
//! constructor allocates each of them to exactly that size, so the data path never
//! allocates and a misconfiguration fails at start-up rather than under load. Durations are
//! plain `u64` nanoseconds on the caller's clock (`*_ns`), because the core reads no clock.
//!
//! Alternative rejected: a builder with defaults filled at `build()`. Public fields plus
//! [`InterfaceConfig::new`] with documented defaults are simpler to read in a test, and
//! `validate` checks the same things either way.

use melange_wire::EthernetAddress;
use std::net::Ipv4Addr;
use thiserror::Error;

/// Nanoseconds per second, for readable defaults.
const NS_PER_S: u64 = 1_000_000_000;

/// Largest ARP cache the constructor accepts (the table holds twice as many slots).
pub const ARP_ENTRIES_MAX_LIMIT: usize = 1 << 16;
/// Largest ARP pending queue the constructor accepts.
pub const ARP_PENDING_MAX_LIMIT: usize = 1 << 16;
/// Largest transmit queue the constructor accepts.
pub const TX_QUEUE_MAX_LIMIT: usize = 1 << 20;
/// Smallest MTU: RFC 791 §3.2 requires every host to handle 68-byte datagrams.
pub const MTU_MIN: u16 = 68;
/// Largest MTU accepted: a 9000-byte jumbo frame.
pub const MTU_MAX: u16 = 9000;

/// ARP (RFC 826) resolution settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpConfig {
    /// Entries the cache holds; when full, the entry closest to expiry is evicted.
    pub entries_max: usize,
    /// Frames parked (over all destinations together) while their next hop resolves.
    pub pending_max: usize,
    /// How long a learned entry is used before it must be resolved again.
    pub entry_ttl_ns: u64,
    /// Interval between requests for a next hop that has not answered.
    pub request_retry_ns: u64,
    /// Requests sent again after the first before giving up on a next hop.
    pub request_retries_max: u32,
}

impl Default for ArpConfig {
    fn default() -> Self {
        ArpConfig {
            entries_max: 256,
            pending_max: 64,
            entry_ttl_ns: 60 * NS_PER_S,
            request_retry_ns: NS_PER_S,
            request_retries_max: 3,
        }
    }
}

/// Configuration of one Ethernet/IPv4 interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// Our MAC address; must be unicast.
    pub mac: EthernetAddress,
    /// Our IPv4 address; must be unicast.
    pub ipv4: Ipv4Addr,
    /// Length of the on-link prefix, `0..=32`.
    pub prefix_len: u8,
    /// Default gateway for off-link destinations; must be on-link.
    pub gateway: Option<Ipv4Addr>,
    /// ARP settings.
    pub arp: ArpConfig,
    /// Frames waiting in the transmit queue for [`crate::Interface::poll_transmit`].
    pub tx_queue_max: usize,
    /// Accept received UDP datagrams whose checksum was left partial by transmit offload
    /// (see the `iface` module documentation for the policy).
    pub accept_partial_udp_checksum: bool,
    /// Accept received TCP segments whose checksum was left partial by transmit offload, for
    /// the same reason as UDP (see the `iface` module documentation).
    pub accept_partial_tcp_checksum: bool,
    /// Largest IPv4 datagram we send in one frame, in bytes (Ethernet: 1500). Larger UDP
    /// datagrams are sent as fragments of at most this size.
    pub mtu: u16,
}

impl InterfaceConfig {
    /// A configuration with the defaults: no gateway, [`ArpConfig::default`], a transmit
    /// queue of 256, partial UDP and TCP checksums accepted, MTU 1500.
    pub fn new(mac: EthernetAddress, ipv4: Ipv4Addr, prefix_len: u8) -> Self {
        InterfaceConfig {
            mac,
            ipv4,
            prefix_len,
            gateway: None,
            arp: ArpConfig::default(),
            tx_queue_max: 256,
            accept_partial_udp_checksum: true,
            accept_partial_tcp_checksum: true,
            mtu: 1500,
        }
    }

    /// The network mask for `prefix_len` (callers have validated `prefix_len <= 32`).
    pub fn netmask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len.min(32)))
            .unwrap_or(0)
    }

    /// True when `addr` is on our link (same prefix).
    pub fn is_on_link(&self, addr: Ipv4Addr) -> bool {
        (u32::from(addr) ^ u32::from(self.ipv4)) & self.netmask() == 0
    }

    /// Why `addr` cannot be a unicast peer of this interface, or `None` when it can. The
    /// interface drops datagrams *from* such an address (RFC 1122 §3.2.1.3, RFC 1812 §5.3.7)
    /// and refuses to send *to* one. Our own address is [`Martian::Ours`].
    pub fn martian(&self, addr: Ipv4Addr) -> Option<Martian> {
        let a = u32::from(addr);
        let [first, ..] = addr.octets();
        // RFC 1122 §3.2.1.3 (a), (b): {0, 0} and {0, Host-number} are "this host on this
        // network", legal only as the source of a host that does not know its address yet
        // (BOOTP/DHCP), which this interface never serves.
        if first == 0 {
            return Some(Martian::ThisNetwork);
        }
        // RFC 1122 §3.2.1.3 (g): {127, any} is internal host loopback, never on a wire.
        if first == 127 {
            return Some(Martian::Loopback);
        }
        // RFC 1112 §4 / RFC 1812 §5.3.7: class D is multicast, never a source.
        if addr.is_multicast() {
            return Some(Martian::Multicast);
        }
        // RFC 1122 §3.2.1.3 (c): the limited broadcast.
        if addr.is_broadcast() {
            return Some(Martian::Broadcast);
        }
        // RFC 1812 §5.3.7: class E (240/4) is reserved.
        if first >= 240 {
            return Some(Martian::Reserved);
        }
        // RFC 1122 §3.2.1.3 (d), RFC 922: a subnet's all-ones and all-zeros host numbers are
        // its directed broadcast and its network. /31 and /32 have neither (RFC 3021).
        if self.prefix_len < 31 && self.is_on_link(addr) {
            let host_mask = !self.netmask();
            if a & host_mask == host_mask {
                return Some(Martian::Broadcast);
            }
            if a & host_mask == 0 {
                return Some(Martian::Network);
            }
        }
        if addr == self.ipv4 {
            return Some(Martian::Ours);
        }
        None
    }

    /// Checks every field; [`crate::Interface::new`] calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.mac.is_unicast() {
            return Err(ConfigError::Mac(self.mac));
        }
        let ip = self.ipv4;
        if self.prefix_len > 32 {
            return Err(ConfigError::PrefixLen(self.prefix_len));
        }
        // Our address must be a unicast host address of its own subnet (not its network or
        // broadcast address), or the martian checks would refuse everything.
        if self.martian(ip) != Some(Martian::Ours) {
            return Err(ConfigError::Address(ip));
        }
        if let Some(gateway) = self.gateway {
            if !self.is_on_link(gateway) || self.martian(gateway).is_some() {
                return Err(ConfigError::Gateway(gateway));
            }
        }
        let arp = &self.arp;
        if arp.entries_max == 0 || arp.entries_max > ARP_ENTRIES_MAX_LIMIT {
            return Err(ConfigError::ArpEntriesMax(arp.entries_max));
        }
        if arp.pending_max == 0 || arp.pending_max > ARP_PENDING_MAX_LIMIT {
            return Err(ConfigError::ArpPendingMax(arp.pending_max));
        }
        if arp.entry_ttl_ns == 0 {
            return Err(ConfigError::ZeroDuration("arp.entry_ttl_ns"));
        }
        if arp.request_retry_ns == 0 {
            return Err(ConfigError::ZeroDuration("arp.request_retry_ns"));
        }
        if self.tx_queue_max == 0 || self.tx_queue_max > TX_QUEUE_MAX_LIMIT {
            return Err(ConfigError::TxQueueMax(self.tx_queue_max));
        }
        if !(MTU_MIN..=MTU_MAX).contains(&self.mtu) {
            return Err(ConfigError::Mtu(self.mtu));
        }
        Ok(())
    }
}

/// Why an address cannot be a unicast peer; see [`InterfaceConfig::martian`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Martian {
    /// `0.0.0.0/8`: "this network" (RFC 1122 §3.2.1.3 (a), (b)).
    ThisNetwork,
    /// `127.0.0.0/8`: loopback (RFC 1122 §3.2.1.3 (g)).
    Loopback,
    /// `224.0.0.0/4`: multicast.
    Multicast,
    /// `240.0.0.0/4` other than the limited broadcast: reserved (RFC 1812 §5.3.7).
    Reserved,
    /// `255.255.255.255`, or the all-ones host of our subnet (RFC 922).
    Broadcast,
    /// The all-zeros host of our subnet: the network address.
    Network,
    /// Our own address.
    Ours,
}

impl std::fmt::Display for Martian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Martian::ThisNetwork => "a \"this network\" address (0.0.0.0/8)",
            Martian::Loopback => "a loopback address (127.0.0.0/8)",
            Martian::Multicast => "a multicast address (224.0.0.0/4)",
            Martian::Reserved => "a reserved address (240.0.0.0/4)",
            Martian::Broadcast => "a broadcast address",
            Martian::Network => "the subnet's network address",
            Martian::Ours => "our own address",
        })
    }
}

/// Why a configuration was refused. Fix the named field and build the interface again.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The MAC address is multicast, broadcast or zero; give the interface's unicast MAC.
    #[error("MAC address {0} is not unicast")]
    Mac(EthernetAddress),
    /// The IPv4 address is not a unicast host address of its subnet (it is in 0/8, 127/8,
    /// 224/4 or 240/4, or it is the subnet's network or broadcast address); give a unicast
    /// address or fix the prefix length.
    #[error("IPv4 address {0} is not a unicast host address of its subnet")]
    Address(Ipv4Addr),
    /// The prefix length is above 32.
    #[error("prefix length {0} is above 32")]
    PrefixLen(u8),
    /// The gateway is our own address, off-link, or not a unicast host address.
    #[error("gateway {0} is not a usable on-link address")]
    Gateway(Ipv4Addr),
    /// `arp.entries_max` is zero or above [`ARP_ENTRIES_MAX_LIMIT`].
    #[error("arp.entries_max {0} is out of range")]
    ArpEntriesMax(usize),
    /// `arp.pending_max` is zero or above [`ARP_PENDING_MAX_LIMIT`].
    #[error("arp.pending_max {0} is out of range")]
    ArpPendingMax(usize),
    /// A duration that must be positive is zero; the field is named.
    #[error("{0} must be positive")]
    ZeroDuration(&'static str),
    /// `tx_queue_max` is zero or above [`TX_QUEUE_MAX_LIMIT`].
    #[error("tx_queue_max {0} is out of range")]
    TxQueueMax(usize),
    /// The MTU is outside [`MTU_MIN`]`..=`[`MTU_MAX`].
    #[error("mtu {0} is out of range 68..=9000")]
    Mtu(u16),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> InterfaceConfig {
        InterfaceConfig::new(
            EthernetAddress([2, 0, 0, 0, 0, 1]),
            Ipv4Addr::new(10, 0, 0, 1),
            24,
        )
    }

    #[test]
    fn defaults_validate() {
        let c = good();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.arp.entries_max, 256);
        assert_eq!(c.arp.pending_max, 64);
        assert_eq!(c.arp.entry_ttl_ns, 60_000_000_000);
        assert_eq!(c.tx_queue_max, 256);
        assert!(c.accept_partial_udp_checksum);
        assert!(c.accept_partial_tcp_checksum);
        assert_eq!(c.netmask(), 0xffff_ff00);
        assert!(c.is_on_link(Ipv4Addr::new(10, 0, 0, 200)));
        assert!(!c.is_on_link(Ipv4Addr::new(10, 0, 1, 1)));
    }

    #[test]
    fn prefix_extremes() {
        let mut c = good();
        c.prefix_len = 0;
        assert_eq!(c.netmask(), 0);
        assert!(c.is_on_link(Ipv4Addr::new(8, 8, 8, 8)));
        c.prefix_len = 32;
        assert_eq!(c.netmask(), u32::MAX);
        assert!(!c.is_on_link(Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = good();
        c.mac = EthernetAddress::BROADCAST;
        assert!(matches!(c.validate(), Err(ConfigError::Mac(_))));
        let mut c = good();
        c.ipv4 = Ipv4Addr::BROADCAST;
        assert!(matches!(c.validate(), Err(ConfigError::Address(_))));
        let mut c = good();
        c.prefix_len = 33;
        assert_eq!(c.validate(), Err(ConfigError::PrefixLen(33)));
        let mut c = good();
        c.gateway = Some(Ipv4Addr::new(192, 168, 0, 1));
        assert!(matches!(c.validate(), Err(ConfigError::Gateway(_))));
        let mut c = good();
        c.arp.entries_max = 0;
        assert_eq!(c.validate(), Err(ConfigError::ArpEntriesMax(0)));
        let mut c = good();
        c.arp.pending_max = 0;
        assert_eq!(c.validate(), Err(ConfigError::ArpPendingMax(0)));
        let mut c = good();
        c.arp.request_retry_ns = 0;
        assert_eq!(
            c.validate(),
            Err(ConfigError::ZeroDuration("arp.request_retry_ns"))
        );
        let mut c = good();
        c.tx_queue_max = 0;
        assert_eq!(c.validate(), Err(ConfigError::TxQueueMax(0)));
        let mut c = good();
        c.mtu = 20;
        assert_eq!(c.validate(), Err(ConfigError::Mtu(20)));
        // Our address may not be martian, nor our subnet's network or broadcast address.
        for ip in [
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(0, 0, 0, 9),
            Ipv4Addr::new(240, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 0),
            Ipv4Addr::new(10, 0, 0, 255),
        ] {
            let mut c = good();
            c.ipv4 = ip;
            assert_eq!(c.validate(), Err(ConfigError::Address(ip)), "{ip}");
        }
        for gateway in [Ipv4Addr::new(10, 0, 0, 255), Ipv4Addr::new(10, 0, 0, 1)] {
            let mut c = good();
            c.gateway = Some(gateway);
            assert_eq!(c.validate(), Err(ConfigError::Gateway(gateway)));
        }
        // A /31 has no network or broadcast address (RFC 3021), so .0 is a host.
        let mut c = good();
        c.ipv4 = Ipv4Addr::new(10, 0, 0, 0);
        c.prefix_len = 31;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn martian_classes() {
        let c = good();
        let class = |a: [u8; 4]| c.martian(Ipv4Addr::from(a));
        assert_eq!(class([0, 0, 0, 0]), Some(Martian::ThisNetwork));
        assert_eq!(class([0, 1, 2, 3]), Some(Martian::ThisNetwork));
        assert_eq!(class([127, 0, 0, 1]), Some(Martian::Loopback));
        assert_eq!(class([127, 255, 255, 255]), Some(Martian::Loopback));
        assert_eq!(class([224, 0, 0, 1]), Some(Martian::Multicast));
        assert_eq!(class([239, 255, 255, 255]), Some(Martian::Multicast));
        assert_eq!(class([240, 0, 0, 1]), Some(Martian::Reserved));
        assert_eq!(class([255, 255, 255, 254]), Some(Martian::Reserved));
        assert_eq!(class([255, 255, 255, 255]), Some(Martian::Broadcast));
        assert_eq!(class([10, 0, 0, 255]), Some(Martian::Broadcast));
        assert_eq!(class([10, 0, 0, 0]), Some(Martian::Network));
        assert_eq!(class([10, 0, 0, 1]), Some(Martian::Ours));
        assert_eq!(class([10, 0, 0, 2]), None);
        assert_eq!(class([10, 0, 0, 254]), None);
        // Another subnet's broadcast and network addresses are hosts as far as we can tell.
        assert_eq!(class([10, 0, 1, 255]), None);
        assert_eq!(class([10, 0, 1, 0]), None);
        assert_eq!(class([8, 8, 8, 8]), None);
        assert_eq!(class([223, 255, 255, 255]), None);
        let mut p31 = good();
        p31.prefix_len = 31;
        assert_eq!(p31.martian(Ipv4Addr::new(10, 0, 0, 0)), None);
        let mut p30 = good();
        p30.prefix_len = 30;
        assert_eq!(
            p30.martian(Ipv4Addr::new(10, 0, 0, 3)),
            Some(Martian::Broadcast)
        );
        assert_eq!(
            p30.martian(Ipv4Addr::new(10, 0, 0, 0)),
            Some(Martian::Network)
        );
        assert_eq!(p30.martian(Ipv4Addr::new(10, 0, 0, 4)), None);
    }
}
