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
    /// Largest IPv4 datagram we send, in bytes (Ethernet: 1500).
    pub mtu: u16,
    /// Learn an on-link sender's MAC address from the IPv4 datagrams it sends us (as well as
    /// from ARP). With AF_XDP the kernel usually answers ARP for the shared address and each
    /// engine has its own cache, so a server engine could otherwise never learn where its
    /// clients are without an ARP round trip of its own. The source MAC of a frame from an
    /// on-link host is that host's address; off-link sources are not learned.
    pub learn_from_ip: bool,
}

impl InterfaceConfig {
    /// A configuration with the defaults: no gateway, [`ArpConfig::default`], a transmit
    /// queue of 256, partial UDP checksums accepted, MTU 1500, learning from IPv4 on.
    pub fn new(mac: EthernetAddress, ipv4: Ipv4Addr, prefix_len: u8) -> Self {
        InterfaceConfig {
            mac,
            ipv4,
            prefix_len,
            gateway: None,
            arp: ArpConfig::default(),
            tx_queue_max: 256,
            accept_partial_udp_checksum: true,
            mtu: 1500,
            learn_from_ip: true,
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

    /// Checks every field; [`crate::Interface::new`] calls this.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.mac.is_unicast() {
            return Err(ConfigError::Mac(self.mac));
        }
        let ip = self.ipv4;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(ConfigError::Address(ip));
        }
        if self.prefix_len > 32 {
            return Err(ConfigError::PrefixLen(self.prefix_len));
        }
        if let Some(gateway) = self.gateway {
            if gateway == ip
                || !self.is_on_link(gateway)
                || gateway.is_unspecified()
                || gateway.is_broadcast()
            {
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

/// Why a configuration was refused. Fix the named field and build the interface again.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    /// The MAC address is multicast, broadcast or zero; give the interface's unicast MAC.
    #[error("MAC address {0} is not unicast")]
    Mac(EthernetAddress),
    /// The IPv4 address is unspecified, broadcast or multicast; give a unicast address.
    #[error("IPv4 address {0} is not unicast")]
    Address(Ipv4Addr),
    /// The prefix length is above 32.
    #[error("prefix length {0} is above 32")]
    PrefixLen(u8),
    /// The gateway is our own address, off-link, unspecified or broadcast.
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
    }
}
