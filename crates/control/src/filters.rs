//! The control-plane API over the filter program: Arrakis' `create_filter` for one interface.
//!
//! # Design
//!
//! [`XdpFilters`] owns everything the kernel holds for one interface: the six maps of
//! [`melange_bpf::filter`], the verified program and the [`XdpLink`] that attaches it. Filters are
//! created with [`XdpFilters::create_filter`] and live as long as the returned
//! [`FilterHandle`]: dropping the handle removes the filter's map entries, the way dropping a
//! file closes it. Handles share the maps through an [`Arc`], so a handle may outlive the
//! `XdpFilters` (its entries are then removed from maps that no program uses any more, which is
//! harmless) and may be sent to the thread that serves the application.
//!
//! What a filter means, which filters may share a port, and which map writes add or remove
//! one, in which order, are decided by [`melange_bpf::registry`], which is pure and documents
//! the rules ("Filters that share a port", "Order of writes"). This module holds the
//! [`Registry`] under a lock, takes the [`MapOp`]s it computes and applies them to the kernel's
//! maps in the order given: stopping at the first failure of an install and rolling it back,
//! carrying on past failures of a removal. The types a caller names ([`FilterSpec`],
//! [`PortRange`], ...) are re-exported from there.
//!
//! Fragment rules ([`XdpFilters::steer_fragments`], "IPv4 fragments of UDP to this address go
//! to this slot") follow the same pattern with their own [`FragmentHandle`]: fragments past
//! the first carry no port, so a port's filter cannot take them (see
//! [`melange_bpf::filter`], "Fragments", for the design and what it means for the kernel's
//! own fragmented traffic on the address).
//!
//! The verdict counters live in a per-CPU array, which the program bumps without atomics;
//! [`XdpFilters::stats`] sums every CPU's copy.
//!
//! Safety contract: none needed; the crate forbids `unsafe`. The kernel objects are owned by
//! `melange_sys::bpf` types and released when the last owner drops them; the program is
//! detached when [`XdpFilters`] is dropped or the process dies.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use melange_sys::bpf::{
    interface_index, BpfError, Map, MapKind, Program, ProgramType, UpdateMode, XdpLink, XdpMode,
};

use melange_bpf::asm::AsmError;
use melange_bpf::filter::{
    self, Counter, FilterMapFds, FILTER_VALUE_SIZE, FRAGMENT_KEY_SIZE, FRAGMENT_VALUE_SIZE,
    PEER_KEY_SIZE, PEER_VALUE_SIZE, SERVICES_LEN, SERVICE_VALUE_SIZE, STATS_LEN, STAT_VALUE_SIZE,
    XSK_VALUE_SIZE,
};
use melange_bpf::registry::{MapOp, Registry, StagedFilter};

pub use melange_bpf::registry::{
    Direction, FilterOptions, FilterSpec, FragmentRule, Ipv4Prefix, PortRange, RegistryError,
    FILTERS_MAX_LIMIT, XSKS_LEN_MAX,
};

/// Errors of the control API. Each variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The kernel refused a map, program or link operation; see the inner error, whose
    /// variants say what to do (run as root, remove another XDP program, ...).
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// The program generator failed to assemble. A bug in `melange-bpf`: report it.
    #[error("assembling the filter program: {0}")]
    Assemble(#[from] AsmError),
    /// The filter or the options cannot be had (an overlap with another filter, no room, a
    /// slot or queue out of range, invalid options); nothing was changed. The inner error
    /// says which and what to do.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// How to name the interface to attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interface {
    /// By name, in the calling thread's network namespace.
    Name(String),
    /// By index.
    Index(u32),
}

impl From<&str> for Interface {
    fn from(name: &str) -> Self {
        Self::Name(name.to_owned())
    }
}

impl From<String> for Interface {
    fn from(name: String) -> Self {
        Self::Name(name)
    }
}

impl From<u32> for Interface {
    fn from(index: u32) -> Self {
        Self::Index(index)
    }
}

/// Packet counts of the filter program since its maps were created, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Redirected to an AF_XDP socket by a filter or a steering rule.
    pub redirected: u64,
    /// Matched, but no socket registered for the slot and queue: passed to the kernel.
    pub no_socket: u64,
    /// UDP/TCP to a port without a filter: passed.
    pub no_filter: u64,
    /// Source address not among the filter's peers: passed.
    pub peer_rejected: u64,
    /// Passed by policy (non-IPv4, ARP or other protocols steered to the kernel).
    pub kernel: u64,
    /// IPv4 fragments to an address and protocol without a fragment rule: passed.
    pub fragment: u64,
    /// Truncated or invalid headers: passed.
    pub malformed: u64,
    /// IPv4 fragments redirected to an AF_XDP socket by a fragment rule, for reassembly.
    pub fragment_redirected: u64,
}

impl FilterStats {
    fn set(&mut self, counter: Counter, value: u64) {
        let field = match counter {
            Counter::Redirected => &mut self.redirected,
            Counter::NoSocket => &mut self.no_socket,
            Counter::NoFilter => &mut self.no_filter,
            Counter::PeerRejected => &mut self.peer_rejected,
            Counter::Kernel => &mut self.kernel,
            Counter::Fragment => &mut self.fragment,
            Counter::Malformed => &mut self.malformed,
            Counter::FragmentRedirected => &mut self.fragment_redirected,
        };
        *field = value;
    }
}

/// The six maps of the filter program.
#[derive(Debug)]
struct FilterMaps {
    services: Map,
    filters: Map,
    peers: Map,
    xsks: Map,
    stats: Map,
    fragments: Map,
}

impl FilterMaps {
    fn create(options: &FilterOptions) -> Result<Self, BpfError> {
        Ok(Self {
            services: Map::create_named(
                MapKind::Array,
                4,
                SERVICE_VALUE_SIZE,
                SERVICES_LEN,
                0,
                "mlg_services",
            )?,
            filters: Map::create_named(
                MapKind::Array,
                4,
                FILTER_VALUE_SIZE,
                options.filters_max,
                0,
                "mlg_filters",
            )?,
            peers: Map::create_named(
                MapKind::LpmTrie,
                PEER_KEY_SIZE,
                PEER_VALUE_SIZE,
                options.peers_max.max(1),
                0,
                "mlg_peers",
            )?,
            xsks: Map::create_named(
                MapKind::XskMap,
                4,
                XSK_VALUE_SIZE,
                options.xsks_len(),
                0,
                "mlg_xsks",
            )?,
            stats: Map::create_named(
                MapKind::PerCpuArray,
                4,
                STAT_VALUE_SIZE,
                STATS_LEN,
                0,
                "mlg_stats",
            )?,
            fragments: Map::create_named(
                MapKind::Hash,
                FRAGMENT_KEY_SIZE,
                FRAGMENT_VALUE_SIZE,
                options.fragment_rules_max.max(1),
                0,
                "mlg_fragments",
            )?,
        })
    }

    fn fds(&self) -> FilterMapFds {
        FilterMapFds {
            services: self.services.as_raw_fd(),
            filters: self.filters.as_raw_fd(),
            peers: self.peers.as_raw_fd(),
            xsks: self.xsks.as_raw_fd(),
            stats: self.stats.as_raw_fd(),
            fragments: self.fragments.as_raw_fd(),
        }
    }

    /// Applies one write the registry computed, with the kernel semantics [`MapOp`] names.
    fn apply(&self, op: MapOp) -> Result<(), BpfError> {
        match op {
            MapOp::SetFilter { id, entry } => {
                self.filters
                    .update(&id.to_ne_bytes(), &entry.to_bytes(), UpdateMode::Any)
            }
            MapOp::InsertPeer { key, value } => {
                self.peers
                    .update(&key, &value.to_ne_bytes(), UpdateMode::NoExist)
            }
            MapOp::RemovePeer { key, value } => {
                let mut held = [0u8; PEER_VALUE_SIZE as usize];
                if self.peers.lookup(&key, &mut held)? && u32::from_ne_bytes(held) == value {
                    self.peers.delete(&key)?;
                }
                Ok(())
            }
            MapOp::SetService { index, value } => {
                self.services
                    .update(&index.to_ne_bytes(), &value.to_ne_bytes(), UpdateMode::Any)
            }
            MapOp::InsertFragmentRule { key, slot } => {
                self.fragments
                    .update(&key, &slot.to_ne_bytes(), UpdateMode::NoExist)
            }
            MapOp::RemoveFragmentRule { key } => self.fragments.delete(&key).map(|_| ()),
        }
    }

    /// Applies every write of `ops`, carrying on past failures, and returns the first.
    fn apply_all(&self, ops: impl Iterator<Item = MapOp>) -> Result<(), BpfError> {
        let mut first_error = None;
        for op in ops {
            if let Err(e) = self.apply(op) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Applies the writes of `ops` in order up to the first failure, which it returns.
    fn apply_until_error(&self, ops: impl Iterator<Item = MapOp>) -> Result<(), BpfError> {
        for op in ops {
            self.apply(op)?;
        }
        Ok(())
    }
}

/// State shared by [`XdpFilters`] and its [`FilterHandle`]s.
#[derive(Debug)]
struct Shared {
    maps: FilterMaps,
    registry: Mutex<Registry>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A poisoned lock means a panic while the registry was held, which only a failed
        // assertion (a bug) causes: map writes report errors. The registry is changed in one
        // step after a filter's map writes succeed, or before its removal's writes, so it
        // still describes every filter but at most the one being changed.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs `staged`, or rolls its writes back and frees its id if one fails.
    fn install(&self, registry: &mut Registry, staged: StagedFilter) -> Result<u32, BpfError> {
        if let Err(e) = self.maps.apply_until_error(registry.install_ops(&staged)) {
            // Best effort: the install error is the one worth reporting.
            let _ = self.maps.apply_all(registry.clear_ops(&staged));
            registry.release(staged);
            return Err(e);
        }
        Ok(registry.commit(staged))
    }

    /// Gives up one holder of `rule`, deleting its entry if that was the last. The lock is
    /// held across the delete, so a new holder cannot insert the key before it is gone.
    fn remove_fragment_rule(&self, rule: &FragmentRule) -> Result<(), BpfError> {
        let mut registry = self.registry();
        let op = registry.remove_fragment_rule(rule);
        self.maps.apply_all(op.into_iter())
    }

    fn remove(&self, id: u32) -> Result<(), BpfError> {
        let mut registry = self.registry();
        let Some(staged) = registry.remove(id) else {
            return Ok(());
        };
        let result = self.maps.apply_all(registry.clear_ops(&staged));
        registry.release(staged);
        result
    }
}

/// A live filter. Dropping it removes the filter from the maps and gives its ports back to
/// the filters that share them, exactly as they were before it was added.
#[derive(Debug)]
pub struct FilterHandle {
    shared: Arc<Shared>,
    id: u32,
}

impl FilterHandle {
    /// The filter's id (its index in the `filters` map).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Removes the filter now and reports whether every map write succeeded.
    ///
    /// # Errors
    ///
    /// [`BpfError`] from a map write; the filter is forgotten either way, and its id is
    /// reused, so report the error and carry on.
    pub fn remove(self) -> Result<(), ControlError> {
        let result = self.shared.remove(self.id);
        // `Drop` would remove it again; the registry no longer knows the id, so that is a
        // no-op, but skip the lock anyway.
        std::mem::forget(self);
        result.map_err(ControlError::from)
    }
}

impl Drop for FilterHandle {
    fn drop(&mut self) {
        // Writes to our own maps with correctly sized keys fail only on ENOMEM; the entries
        // then stay until the maps are freed, which is when the last handle goes.
        let _ = self.shared.remove(self.id);
    }
}

/// A live fragment rule. Dropping it removes the rule when it was the last holder of its
/// address and protocol; the fragments then go to the kernel again.
#[derive(Debug)]
pub struct FragmentHandle {
    shared: Arc<Shared>,
    /// The rule; `None` once [`FragmentHandle::remove`] gave it up, so that `Drop` does not
    /// give up a second holder, one this handle does not own.
    rule: Option<FragmentRule>,
}

impl FragmentHandle {
    /// The rule held.
    pub fn rule(&self) -> FragmentRule {
        self.rule
            .expect("a handle holds its rule until remove, which consumes it")
    }

    /// Gives the rule up now and reports whether the map write (if the entry went) succeeded.
    ///
    /// # Errors
    ///
    /// [`BpfError`] from the map write; the holder is forgotten either way.
    pub fn remove(mut self) -> Result<(), ControlError> {
        let rule = self.rule.take();
        rule.map_or(Ok(()), |rule| self.shared.remove_fragment_rule(&rule))
            .map_err(ControlError::from)
    }
}

impl Drop for FragmentHandle {
    fn drop(&mut self) {
        // As for `FilterHandle`: only ENOMEM can fail a delete, and the entry then goes with
        // the maps.
        if let Some(rule) = self.rule.take() {
            let _ = self.shared.remove_fragment_rule(&rule);
        }
    }
}

/// The filter program, its maps and (when attached) its link, for one interface.
///
/// Dropping it detaches the program; filters whose handles are still alive keep the maps.
#[derive(Debug)]
pub struct XdpFilters {
    // Field order is drop order: detach before the program and maps go.
    link: Option<XdpLink>,
    program: Program,
    shared: Arc<Shared>,
    options: FilterOptions,
}

impl XdpFilters {
    /// Creates the maps and loads the program without attaching it anywhere, for tests with
    /// [`Program::test_run`] or to attach later with [`XdpFilters::attach_to`].
    ///
    /// # Errors
    ///
    /// [`ControlError::Registry`] with [`RegistryError::InvalidOptions`]; [`ControlError::Bpf`]
    /// if the kernel refuses a map or the program (without privileges, for example).
    pub fn new(options: FilterOptions) -> Result<Self, ControlError> {
        let registry = Registry::new(&options)?;
        let maps = FilterMaps::create(&options)?;
        let insns = filter::build(&options.program_spec(), &maps.fds())?;
        let program = Program::load_named(ProgramType::Xdp, &insns, "GPL", "melange_filter")?;
        Ok(Self {
            link: None,
            program,
            shared: Arc::new(Shared {
                maps,
                registry: Mutex::new(registry),
            }),
            options,
        })
    }

    /// Creates the maps, loads the program and attaches it to `interface` in `mode`.
    ///
    /// # Errors
    ///
    /// As [`XdpFilters::new`] and [`XdpFilters::attach_to`].
    pub fn attach(
        interface: impl Into<Interface>,
        mode: XdpMode,
        options: FilterOptions,
    ) -> Result<Self, ControlError> {
        let mut filters = Self::new(options)?;
        filters.attach_to(interface, mode)?;
        Ok(filters)
    }

    /// Attaches the program to `interface` (replacing this object's previous attachment, if
    /// any, which is detached first).
    ///
    /// # Errors
    ///
    /// [`BpfError::UnknownInterface`]; [`BpfError::XdpBusy`] if another XDP program is
    /// attached (remove it with `ip link set dev <name> xdp off`); [`BpfError::NoDevice`] if
    /// the driver lacks native XDP (use [`XdpMode::Generic`]).
    pub fn attach_to(
        &mut self,
        interface: impl Into<Interface>,
        mode: XdpMode,
    ) -> Result<(), ControlError> {
        let ifindex = match interface.into() {
            Interface::Name(name) => interface_index(&name)?,
            Interface::Index(index) => index,
        };
        self.link = None;
        self.link = Some(XdpLink::attach(&self.program, ifindex, mode)?);
        Ok(())
    }

    /// Detaches the program, keeping maps and filters.
    pub fn detach(&mut self) {
        self.link = None;
    }

    /// The interface the program is attached to, if it is.
    pub fn ifindex(&self) -> Option<u32> {
        self.link.as_ref().map(XdpLink::ifindex)
    }

    /// The loaded program (for [`Program::test_run`]).
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The options the program and maps were built with.
    pub fn options(&self) -> &FilterOptions {
        &self.options
    }

    /// Makes `xsk_fd` (an AF_XDP socket bound to this interface's `queue`) the receiver of
    /// `slot`'s packets arriving on `queue`. Replaces any previous socket there.
    ///
    /// # Errors
    ///
    /// [`RegistryError::SlotOutOfRange`], [`RegistryError::QueueOutOfRange`] (no system call
    /// made); [`ControlError::Bpf`] if the descriptor is not a bound AF_XDP socket.
    pub fn register_socket(
        &self,
        slot: u32,
        queue: u32,
        xsk_fd: BorrowedFd<'_>,
    ) -> Result<(), ControlError> {
        let key = self.options.xsk_index(slot, queue)?;
        self.shared
            .maps
            .xsks
            .update_fd(&key.to_ne_bytes(), xsk_fd)?;
        Ok(())
    }

    /// Removes `slot`'s socket on `queue`, if any. Packets for it then go to the kernel.
    ///
    /// (An XSKMAP reports success for deleting an empty entry, so unlike other maps there is
    /// no "was it there" answer to give.)
    ///
    /// # Errors
    ///
    /// As [`XdpFilters::register_socket`].
    pub fn unregister_socket(&self, slot: u32, queue: u32) -> Result<(), ControlError> {
        let key = self.options.xsk_index(slot, queue)?;
        self.shared.maps.xsks.delete(&key.to_ne_bytes())?;
        Ok(())
    }

    /// Arrakis' `create_filter`: steers `spec.protocol` packets to `spec.ports` from
    /// `spec.peers` (any, if empty) to `spec.slot`'s sockets, until the handle is dropped.
    ///
    /// Filters may share ports when their peers tell them apart: on each port, a packet goes
    /// to the filter listing the longest prefix that contains its source, else to the port's
    /// one filter that accepts any peer, else to the kernel. The filter costs one `peers_max`
    /// trie entry per port and prefix. Dropping the handle restores every port to what the
    /// remaining filters make it.
    ///
    /// # Errors
    ///
    /// [`ControlError::Registry`], changing nothing, with [`RegistryError::SlotOutOfRange`];
    /// [`RegistryError::PeersExhausted`]; [`RegistryError::Overlap`] if this filter and
    /// another one on a shared port both accept any peer; [`RegistryError::PeerOverlap`] if
    /// both list the same prefix on a shared port; [`RegistryError::FiltersExhausted`].
    /// [`ControlError::Bpf`] if a map write fails (the filter is then rolled back).
    pub fn create_filter(&self, spec: FilterSpec) -> Result<FilterHandle, ControlError> {
        let shared = &self.shared;
        let mut registry = shared.registry();
        let staged = registry.stage(&spec)?;
        let id = shared.install(&mut registry, staged)?;
        Ok(FilterHandle {
            shared: Arc::clone(shared),
            id,
        })
    }

    /// Steers IPv4 fragments of `rule.protocol` to `rule.addr` to `rule.slot`'s sockets, until
    /// the handle is dropped: the fragments of datagrams larger than the MTU then reach the
    /// slot's engines, whose stack reassembles them, instead of the kernel. Fragments carry no
    /// port past the first, so the rule takes *every* fragment of that protocol to the address,
    /// the kernel's own sockets' included (see [`melange_bpf::filter`], "Fragments").
    /// Services of one slot on one address share the rule.
    ///
    /// # Errors
    ///
    /// [`ControlError::Registry`], changing nothing, with [`RegistryError::SlotOutOfRange`],
    /// [`RegistryError::FragmentRuleConflict`] (another slot has the address's fragments) or
    /// [`RegistryError::FragmentRulesExhausted`]; [`ControlError::Bpf`] if the map write
    /// fails (nothing is then held).
    pub fn steer_fragments(&self, rule: FragmentRule) -> Result<FragmentHandle, ControlError> {
        let shared = &self.shared;
        let mut registry = shared.registry();
        if let Some(op) = registry.fragment_rule_op(&rule)? {
            shared.maps.apply(op)?;
        }
        registry.commit_fragment_rule(&rule);
        Ok(FragmentHandle {
            shared: Arc::clone(shared),
            rule: Some(rule),
        })
    }

    /// Reads the packet counters, each the sum of every CPU's count.
    ///
    /// # Errors
    ///
    /// [`ControlError::Bpf`] if a map read fails.
    pub fn stats(&self) -> Result<FilterStats, ControlError> {
        let mut stats = FilterStats::default();
        for counter in Counter::ALL {
            let values = self
                .shared
                .maps
                .stats
                .lookup_per_cpu(&counter.index().to_ne_bytes())?;
            // Each CPU's count wraps at 2^64 on its own; wrapping the sum too keeps the
            // difference of two readings right.
            let total = values.map_or(0, |values| {
                values.iter().fold(0u64, |sum, cpu| {
                    let count = u64::from_ne_bytes(cpu.try_into().expect("stats values are u64"));
                    sum.wrapping_add(count)
                })
            });
            stats.set(counter, total);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use melange_bpf::filter::{Protocol, Steer};
    use melange_sys::bpf::XdpTestContext;
    use melange_sys::xsk::{BindMode, SocketConfig, Umem, UmemConfig, XskSocket};
    use melange_sys::{enter_netns, Region, RegionOptions};

    const ETH_ARP: u16 = 0x0806;
    const ETH_IPV4: u16 = 0x0800;
    const ETH_VLAN: u16 = 0x8100;
    const PEER: [u8; 4] = [10, 1, 2, 3];
    const US: [u8; 4] = [10, 0, 0, 1];

    /// Whether the kernel lets us use bpf(2). Without privileges the tests print SKIPPED,
    /// except under CI (`CI` set), which runs them as root and must not skip.
    fn privileged(test: &str) -> bool {
        match Map::create(MapKind::Array, 4, 4, 1, 0) {
            Ok(_) => true,
            Err(e) if e.is_permission() => melange_sys::testenv::root_or_skip(test),
            Err(e) => panic!("{test}: creating a map failed: {e}"),
        }
    }

    // Frame builders. Checksums are left zero: the program never reads them.

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4_full(
        proto: u8,
        src: [u8; 4],
        frag: u16,
        options_len: usize,
        payload: &[u8],
    ) -> Vec<u8> {
        assert_eq!(options_len % 4, 0);
        let hlen = 20 + options_len;
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&US);
        // Options: NOPs.
        h[20..].fill(1);
        h.extend_from_slice(payload);
        eth(ETH_IPV4, &h)
    }

    fn ipv4(proto: u8, src: [u8; 4], payload: &[u8]) -> Vec<u8> {
        ipv4_full(proto, src, 0x4000 /* DF */, 0, payload)
    }

    fn udp(dst_port: u16) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&40000u16.to_be_bytes());
        u[2..4].copy_from_slice(&dst_port.to_be_bytes());
        u[4..6].copy_from_slice(&12u16.to_be_bytes());
        u.extend_from_slice(b"ping");
        u
    }

    fn tcp_syn(dst_port: u16) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&dst_port.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x02;
        t
    }

    fn udp_frame(src: [u8; 4], dst_port: u16) -> Vec<u8> {
        ipv4(17, src, &udp(dst_port))
    }

    fn arp_request() -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        a.extend_from_slice(&PEER);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&US);
        eth(ETH_ARP, &a)
    }

    fn icmp_echo() -> Vec<u8> {
        ipv4(1, PEER, &[8, 0, 0, 0, 0, 1, 0, 1])
    }

    fn counts(s: FilterStats) -> [u64; 8] {
        [
            s.redirected,
            s.no_socket,
            s.no_filter,
            s.peer_rejected,
            s.kernel,
            s.fragment,
            s.malformed,
            s.fragment_redirected,
        ]
    }

    /// An IPv4 fragment of `proto` from PEER to `dst` with flags/offset field `frag` (MF is
    /// `0x2000`, the offset counts 8-byte units) carrying `payload`.
    fn fragment_to(proto: u8, dst: [u8; 4], frag: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = ipv4_full(proto, PEER, frag, 0, payload);
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f
    }

    /// The three kinds of fragment of one UDP datagram to `dst`, `port`: the first (offset 0,
    /// MF, with the UDP header), a middle one (MF, offset 1480) and the last (offset 2960, MF
    /// clear). Only the first carries the port.
    fn udp_fragments(dst: [u8; 4], port: u16) -> [(&'static str, Vec<u8>); 3] {
        let mut first = udp(port);
        first.resize(1480, 0xab);
        [
            ("first", fragment_to(17, dst, 0x2000, &first)),
            ("middle", fragment_to(17, dst, 0x2000 | 185, &[0xcd; 1480])),
            ("last", fragment_to(17, dst, 370, &[0xef; 100])),
        ]
    }

    fn udp_fragment_rule(slot: u32) -> FragmentRule {
        FragmentRule {
            protocol: Protocol::Udp,
            addr: Ipv4Addr::from(US),
            slot,
        }
    }

    /// Runs `frame` through the real program and returns its action and the one counter it
    /// incremented.
    fn verdict(f: &XdpFilters, frame: &[u8]) -> (u32, Counter) {
        let before = counts(f.stats().unwrap());
        let run = f.program().test_run(frame, &mut [], 1).unwrap();
        let after = counts(f.stats().unwrap());
        let changed: Vec<Counter> = Counter::ALL
            .into_iter()
            .filter(|c| after[c.index() as usize] != before[c.index() as usize])
            .collect();
        assert_eq!(changed.len(), 1, "counters {before:?} -> {after:?}");
        let c = changed[0];
        assert_eq!(after[c.index() as usize], before[c.index() as usize] + 1);
        (run.retval, c)
    }

    fn spec(protocol: Protocol, ports: PortRange, peers: Vec<Ipv4Prefix>) -> FilterSpec {
        FilterSpec {
            direction: Direction::Receive,
            protocol,
            peers,
            ports,
            slot: 1,
        }
    }

    fn prefix(a: [u8; 4], len: u8) -> Ipv4Prefix {
        Ipv4Prefix::new(Ipv4Addr::from(a), len).unwrap()
    }

    const PASS: u32 = filter::XDP_PASS;

    fn spec_to(
        slot: u32,
        protocol: Protocol,
        ports: PortRange,
        peers: Vec<Ipv4Prefix>,
    ) -> FilterSpec {
        FilterSpec {
            slot,
            ..spec(protocol, ports, peers)
        }
    }

    /// Installs a UDP filter on one port for `slot`, accepting `peers` (empty: any peer).
    fn udp_filter(f: &XdpFilters, slot: u32, port: u16, peers: Vec<Ipv4Prefix>) -> FilterHandle {
        f.create_filter(spec_to(slot, Protocol::Udp, PortRange::single(port), peers))
            .unwrap()
    }

    /// An AF_XDP socket on `lo` queue 0 of a network namespace of its own, to put in the
    /// `xsks` map: registered at one slot, it makes the program redirect exactly the packets
    /// steered to that slot, which tells slots apart in `BPF_PROG_TEST_RUN` (whose default
    /// context is queue 0).
    struct TestXsk {
        // Field order is drop order: the socket goes before its UMEM and namespace.
        socket: XskSocket,
        _umem: Umem,
        _netns: Netns,
    }

    impl TestXsk {
        /// The socket, or `None` (test skipped) without the `ip` command outside CI.
        fn new(test: &str) -> Option<Self> {
            if Command::new("ip").arg("-V").output().is_err() {
                melange_sys::testenv::skip_or_fail(test, "needs iproute2 (`ip`)");
                return None;
            }
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let netns = Netns::new(format!(
                "mlgbpf{}x{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
            let umem = Umem::new(
                Region::new(64 * 2048, RegionOptions::default()).unwrap(),
                UmemConfig {
                    frame_size: 2048,
                    frame_count: 64,
                    headroom: 0,
                    fill_ring_size: 64,
                    completion_ring_size: 64,
                },
            )
            .unwrap();
            let socket = {
                let _in_netns = enter_netns(&netns.name).unwrap();
                // `lo` is interface 1 in every namespace.
                XskSocket::new(
                    1,
                    0,
                    &umem,
                    SocketConfig {
                        rx_ring_size: 64,
                        tx_ring_size: 64,
                        bind: BindMode::Copy,
                        need_wakeup: false,
                    },
                )
                .unwrap()
            };
            Some(Self {
                socket,
                _umem: umem,
                _netns: netns,
            })
        }
    }

    /// Where the program sends `frame`: `Ok(slot)` when it redirects it to a slot's socket,
    /// `Err(counter)` when it passes it to the kernel without consulting a socket. Found by
    /// registering `xsk` at each slot in turn.
    fn steer(f: &XdpFilters, xsk: &TestXsk, frame: &[u8]) -> Result<u32, Counter> {
        for slot in 0..f.options().slots_max {
            f.register_socket(slot, 0, xsk.socket.fd()).unwrap();
            let v = verdict(f, frame);
            f.unregister_socket(slot, 0).unwrap();
            match v {
                (filter::XDP_REDIRECT, Counter::Redirected) => return Ok(slot),
                (PASS, Counter::NoSocket) => {}
                (PASS, counter) => return Err(counter),
                other => panic!("unexpected verdict {other:?}"),
            }
        }
        panic!("matched, yet no slot's socket received it");
    }

    /// `steer` for a UDP datagram from `src` to `port`.
    fn udp_to(f: &XdpFilters, xsk: &TestXsk, src: [u8; 4], port: u16) -> Result<u32, Counter> {
        steer(f, xsk, &udp_frame(src, port))
    }

    /// What filters write: the `services` values of every port, the whole `peers` trie and
    /// the whole `filters` array.
    #[derive(PartialEq, Eq)]
    struct Snapshot {
        services: Vec<u32>,
        peers: BTreeMap<Vec<u8>, u32>,
        filters: Vec<[u8; FILTER_VALUE_SIZE as usize]>,
    }

    /// Only the differences from an empty map are worth printing.
    impl std::fmt::Debug for Snapshot {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let services: BTreeMap<usize, String> = (self.services.iter().enumerate())
                .filter(|(_, &v)| v != 0)
                .map(|(i, v)| (i, format!("{v:#x}")))
                .collect();
            let filters: BTreeMap<usize, _> = (self.filters.iter().enumerate())
                .filter(|(_, e)| **e != [0; FILTER_VALUE_SIZE as usize])
                .collect();
            f.debug_struct("Snapshot")
                .field("services", &services)
                .field("peers", &self.peers)
                .field("filters", &filters)
                .finish()
        }
    }

    fn snapshot(f: &XdpFilters) -> Snapshot {
        let maps = &f.shared.maps;
        let mut value = [0u8; 4];
        let services = (0..SERVICES_LEN)
            .map(|i| {
                assert!(maps.services.lookup(&i.to_ne_bytes(), &mut value).unwrap());
                u32::from_ne_bytes(value)
            })
            .collect();
        let mut peers = BTreeMap::new();
        let mut key = [0u8; PEER_KEY_SIZE as usize];
        let mut previous: Option<[u8; PEER_KEY_SIZE as usize]> = None;
        while maps
            .peers
            .next_key(previous.as_ref().map(|k| &k[..]), &mut key)
            .unwrap()
        {
            assert!(maps.peers.lookup(&key, &mut value).unwrap());
            peers.insert(key.to_vec(), u32::from_ne_bytes(value));
            previous = Some(key);
        }
        let mut entry = [0u8; FILTER_VALUE_SIZE as usize];
        let filters = (0..f.options().filters_max)
            .map(|i| {
                assert!(maps.filters.lookup(&i.to_ne_bytes(), &mut entry).unwrap());
                entry
            })
            .collect();
        Snapshot {
            services,
            peers,
            filters,
        }
    }

    /// The registry's mirror of the maps holds nothing but what `f` has.
    fn assert_registry_empty(f: &XdpFilters) {
        let registry = f.shared.registry();
        assert!(registry.is_empty(), "{registry:?}");
        assert_eq!(registry.services_len(), 0, "{registry:?}");
        assert_eq!(registry.peer_entries(), 0, "{registry:?}");
    }

    #[test]
    fn filters_on_one_port_are_told_apart_by_peers() {
        let test = "filters_on_one_port_are_told_apart_by_peers";
        if !privileged(test) {
            return;
        }
        let Some(xsk) = TestXsk::new(test) else {
            return;
        };
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let empty = snapshot(&f);
        let port = 7000;
        let (ten, home, other) = ([10, 9, 8, 7], [192, 168, 1, 5], [172, 16, 0, 1]);

        // Two restricted filters, no any-peer filter: strangers go to the kernel.
        let a = udp_filter(&f, 1, port, vec![prefix([10, 0, 0, 0], 8)]);
        let only_a = snapshot(&f);
        let b = udp_filter(&f, 2, port, vec![prefix([192, 168, 1, 0], 24)]);
        let a_b = snapshot(&f);
        assert_eq!(udp_to(&f, &xsk, ten, port), Ok(1));
        assert_eq!(udp_to(&f, &xsk, home, port), Ok(2));
        let rejected = f.stats().unwrap().peer_rejected;
        assert_eq!(
            verdict(&f, &udp_frame(other, port)),
            (PASS, Counter::PeerRejected)
        );
        assert_eq!(
            verdict(&f, &udp_frame([192, 168, 2, 1], port)),
            (PASS, Counter::PeerRejected)
        );
        assert_eq!(f.stats().unwrap().peer_rejected, rejected + 2);
        // Neither leaks to the same port over TCP, nor to the next port.
        assert_eq!(
            verdict(&f, &ipv4(6, ten, &tcp_syn(port))),
            (PASS, Counter::NoFilter)
        );
        assert_eq!(udp_to(&f, &xsk, ten, port + 1), Err(Counter::NoFilter));

        // A third, any-peer filter catches the rest; the restricted ones keep theirs.
        let c = udp_filter(&f, 3, port, vec![]);
        let all = [(ten, Ok(1)), (home, Ok(2)), (other, Ok(3))];
        for (src, want) in all {
            assert_eq!(udp_to(&f, &xsk, src, port), want, "{src:?}");
        }
        assert_eq!(udp_to(&f, &xsk, [192, 168, 2, 1], port), Ok(3));

        // Removing each filter in turn leaves the others working and restores the maps.
        drop(c);
        assert_eq!(snapshot(&f), a_b);
        assert_eq!(udp_to(&f, &xsk, other, port), Err(Counter::PeerRejected));
        drop(b);
        assert_eq!(snapshot(&f), only_a);
        assert_eq!(udp_to(&f, &xsk, ten, port), Ok(1));
        assert_eq!(udp_to(&f, &xsk, home, port), Err(Counter::PeerRejected));
        drop(a);
        assert_eq!(snapshot(&f), empty);
        assert_eq!(udp_to(&f, &xsk, ten, port), Err(Counter::NoFilter));
        assert_registry_empty(&f);

        // The other order, any-peer filter first, and removals from the other end.
        let c = udp_filter(&f, 3, port, vec![]);
        let only_c = snapshot(&f);
        let a = udp_filter(&f, 1, port, vec![prefix([10, 0, 0, 0], 8)]);
        let c_a = snapshot(&f);
        let b = udp_filter(&f, 2, port, vec![prefix([192, 168, 1, 0], 24)]);
        for (src, want) in all {
            assert_eq!(udp_to(&f, &xsk, src, port), want, "{src:?}");
        }
        drop(b);
        assert_eq!(snapshot(&f), c_a);
        assert_eq!(udp_to(&f, &xsk, home, port), Ok(3));
        assert_eq!(udp_to(&f, &xsk, ten, port), Ok(1));
        drop(a);
        assert_eq!(snapshot(&f), only_c);
        assert_eq!(udp_to(&f, &xsk, ten, port), Ok(3));
        drop(c);
        assert_eq!(snapshot(&f), empty);
        assert_registry_empty(&f);

        // Removing the any-peer filter from the middle of three.
        let a = udp_filter(&f, 1, port, vec![prefix([10, 0, 0, 0], 8)]);
        let c = udp_filter(&f, 3, port, vec![]);
        let b = udp_filter(&f, 2, port, vec![prefix([192, 168, 1, 0], 24)]);
        c.remove().unwrap();
        // (The ids differ from the first round, so compare what does not depend on them.)
        let after = snapshot(&f);
        assert_eq!(after.services[usize::from(port)], filter::SERVICE_F_PEERS);
        assert_eq!(after.peers.len(), 2);
        assert_eq!(udp_to(&f, &xsk, ten, port), Ok(1));
        assert_eq!(udp_to(&f, &xsk, home, port), Ok(2));
        assert_eq!(udp_to(&f, &xsk, other, port), Err(Counter::PeerRejected));
        drop((a, b));
        assert_eq!(snapshot(&f), empty);
        assert_registry_empty(&f);
    }

    #[test]
    fn longest_prefix_wins() {
        let test = "longest_prefix_wins";
        if !privileged(test) {
            return;
        }
        let Some(xsk) = TestXsk::new(test) else {
            return;
        };
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let port = 53;
        let wide = udp_filter(&f, 1, port, vec![prefix([10, 0, 0, 0], 8)]);
        let narrow = f
            .create_filter(spec_to(
                2,
                Protocol::Udp,
                PortRange::single(port),
                // Host bits are cleared: this is 10.1.0.0/16.
                vec![prefix([10, 1, 99, 99], 16)],
            ))
            .unwrap();
        let host = udp_filter(
            &f,
            3,
            port,
            vec![prefix([10, 1, 2, 3], 32), prefix([172, 16, 0, 0], 12)],
        );
        let cases = [
            ([10, 1, 2, 3], Ok(3)),
            ([10, 1, 2, 4], Ok(2)),
            ([10, 1, 255, 255], Ok(2)),
            ([10, 2, 0, 1], Ok(1)),
            ([10, 0, 0, 0], Ok(1)),
            ([172, 31, 1, 1], Ok(3)),
            ([11, 0, 0, 1], Err(Counter::PeerRejected)),
        ];
        for (src, want) in cases {
            assert_eq!(udp_to(&f, &xsk, src, port), want, "{src:?}");
        }
        // Without the /16, its addresses fall back to the /8; without the /32, to the /16.
        drop(narrow);
        assert_eq!(udp_to(&f, &xsk, [10, 1, 2, 4], port), Ok(1));
        assert_eq!(udp_to(&f, &xsk, [10, 1, 2, 3], port), Ok(3));
        drop(host);
        assert_eq!(udp_to(&f, &xsk, [10, 1, 2, 3], port), Ok(1));
        assert_eq!(
            udp_to(&f, &xsk, [172, 31, 1, 1], port),
            Err(Counter::PeerRejected)
        );
        drop(wide);
        assert_registry_empty(&f);

        // An any-peer filter's own narrower prefixes still beat another filter's shorter one:
        // `0.0.0.0/0` is just the shortest prefix.
        let any = f
            .create_filter(spec_to(
                4,
                Protocol::Tcp,
                PortRange::single(port),
                vec![prefix([10, 1, 2, 0], 24), prefix([0, 0, 0, 0], 0)],
            ))
            .unwrap();
        let mid = f
            .create_filter(spec_to(
                5,
                Protocol::Tcp,
                PortRange::single(port),
                vec![prefix([10, 1, 0, 0], 16)],
            ))
            .unwrap();
        let tcp = |src| steer(&f, &xsk, &ipv4(6, src, &tcp_syn(port)));
        assert_eq!(tcp([10, 1, 2, 9]), Ok(4));
        assert_eq!(tcp([10, 1, 3, 9]), Ok(5));
        assert_eq!(tcp([9, 9, 9, 9]), Ok(4));
        drop(mid);
        assert_eq!(tcp([10, 1, 3, 9]), Ok(4));
        drop(any);
        assert_registry_empty(&f);
    }

    #[test]
    fn port_ranges_with_peers() {
        let test = "port_ranges_with_peers";
        if !privileged(test) {
            return;
        }
        let Some(xsk) = TestXsk::new(test) else {
            return;
        };
        let f = XdpFilters::new(FilterOptions {
            peers_max: 20,
            ..FilterOptions::default()
        })
        .unwrap();
        let empty = snapshot(&f);
        // a: 5000..=5009 from 10/8 (10 entries); b: 5005 from anyone; c: 5003..=5006 from
        // 10.1/16 and 192.168/16 (8 entries).
        let a = f
            .create_filter(spec_to(
                1,
                Protocol::Udp,
                PortRange::new(5000, 5009).unwrap(),
                vec![prefix([10, 0, 0, 0], 8)],
            ))
            .unwrap();
        let b = udp_filter(&f, 2, 5005, vec![]);
        let a_b = snapshot(&f);
        let c = f
            .create_filter(spec_to(
                3,
                Protocol::Udp,
                PortRange::new(5003, 5006).unwrap(),
                vec![prefix([10, 1, 0, 0], 16), prefix([192, 168, 0, 0], 16)],
            ))
            .unwrap();
        assert_eq!(snapshot(&f).peers.len(), 18);
        let (ten, ten_one, home, other) =
            ([10, 9, 9, 9], [10, 1, 1, 1], [192, 168, 3, 3], [8, 8, 8, 8]);
        for port in 4999..=5010 {
            let in_a = (5000..=5009).contains(&port);
            let in_c = (5003..=5006).contains(&port);
            let fallback = if port == 5005 {
                Ok(2)
            } else if in_a || in_c {
                Err(Counter::PeerRejected)
            } else {
                Err(Counter::NoFilter)
            };
            let want_ten = if in_a { Ok(1) } else { fallback };
            let want_ten_one = if in_c { Ok(3) } else { want_ten };
            let want_home = if in_c { Ok(3) } else { fallback };
            assert_eq!(udp_to(&f, &xsk, ten, port), want_ten, "{port}");
            assert_eq!(udp_to(&f, &xsk, ten_one, port), want_ten_one, "{port}");
            assert_eq!(udp_to(&f, &xsk, home, port), want_home, "{port}");
            assert_eq!(udp_to(&f, &xsk, other, port), fallback, "{port}");
        }
        // Ports × prefixes count against peers_max: 18 of 20 are used.
        match f.create_filter(spec_to(
            4,
            Protocol::Tcp,
            PortRange::new(1, 3).unwrap(),
            vec![prefix([10, 0, 0, 0], 8)],
        )) {
            Err(ControlError::Registry(
                e @ RegistryError::PeersExhausted {
                    needed: 3,
                    free: 2,
                    peers_max: 20,
                },
            )) => assert!(e.to_string().contains("raise peers_max"), "{e}"),
            other => panic!("expected PeersExhausted, got {other:?}"),
        }
        // An any-peer filter over the whole range now conflicts with b at 5005.
        assert!(matches!(
            f.create_filter(spec_to(
                4,
                Protocol::Udp,
                PortRange::new(5000, 5009).unwrap(),
                vec![]
            )),
            Err(ControlError::Registry(RegistryError::Overlap {
                port: 5005,
                existing,
                ..
            })) if existing == b.id()
        ));
        drop(c);
        assert_eq!(snapshot(&f), a_b);
        assert_eq!(udp_to(&f, &xsk, ten_one, 5004), Ok(1));
        assert_eq!(udp_to(&f, &xsk, home, 5005), Ok(2));
        drop(b);
        assert_eq!(udp_to(&f, &xsk, home, 5005), Err(Counter::PeerRejected));
        assert_eq!(udp_to(&f, &xsk, ten, 5005), Ok(1));
        drop(a);
        assert_eq!(snapshot(&f), empty);
        assert_registry_empty(&f);
    }

    #[test]
    fn ambiguous_filters_are_refused() {
        if !privileged("ambiguous_filters_are_refused") {
            return;
        }
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let any = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::new(100, 200).unwrap(),
                vec![],
            ))
            .unwrap();
        let ten = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::new(150, 250).unwrap(),
                vec![prefix([10, 0, 0, 0], 8), prefix([192, 168, 1, 1], 32)],
            ))
            .unwrap();
        let before = snapshot(&f);

        // A second any-peer filter, also spelled 0.0.0.0/0, on a shared port.
        for peers in [vec![], vec![prefix([0, 0, 0, 0], 0)]] {
            match f.create_filter(spec(
                Protocol::Udp,
                PortRange::new(190, 300).unwrap(),
                peers,
            )) {
                Err(ControlError::Registry(
                    e @ RegistryError::Overlap {
                        protocol: Protocol::Udp,
                        port: 190,
                        existing,
                    },
                )) => {
                    assert_eq!(existing, any.id());
                    assert!(
                        e.to_string().contains("give this filter peer prefixes"),
                        "{e}"
                    );
                }
                other => panic!("expected Overlap, got {other:?}"),
            }
        }
        // The same prefix (host bits do not matter) on a shared port, whatever else is listed.
        match f.create_filter(spec(
            Protocol::Udp,
            PortRange::new(240, 260).unwrap(),
            vec![prefix([172, 16, 0, 0], 12), prefix([10, 20, 30, 40], 8)],
        )) {
            Err(ControlError::Registry(
                e @ RegistryError::PeerOverlap {
                    protocol: Protocol::Udp,
                    port: 240,
                    peer,
                    existing,
                },
            )) => {
                assert_eq!(existing, ten.id());
                assert_eq!(peer, prefix([10, 0, 0, 0], 8));
                let message = e.to_string();
                assert!(message.contains("10.0.0.0/8"), "{message}");
                assert!(message.contains("list another prefix"), "{message}");
            }
            other => panic!("expected PeerOverlap, got {other:?}"),
        }
        // A refused filter changes nothing and uses no id.
        assert_eq!(snapshot(&f), before);
        assert_eq!(f.shared.registry().len(), 2);

        // Different lengths, other ports, or the other protocol are all fine.
        let nine = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::new(150, 250).unwrap(),
                vec![prefix([10, 0, 0, 0], 9), prefix([192, 168, 1, 0], 31)],
            ))
            .unwrap();
        let beyond = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::new(251, 300).unwrap(),
                vec![prefix([10, 0, 0, 0], 8)],
            ))
            .unwrap();
        let tcp = f
            .create_filter(spec(
                Protocol::Tcp,
                PortRange::new(100, 200).unwrap(),
                vec![prefix([10, 0, 0, 0], 8)],
            ))
            .unwrap();
        let tcp_any = f
            .create_filter(spec(
                Protocol::Tcp,
                PortRange::new(100, 200).unwrap(),
                vec![],
            ))
            .unwrap();
        // Once the owner is gone, its prefix and its any-peer role are free again.
        drop(ten);
        let again = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::single(150),
                vec![prefix([10, 0, 0, 0], 8)],
            ))
            .unwrap();
        drop(any);
        let any_again = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::new(190, 300).unwrap(),
                vec![],
            ))
            .unwrap();
        drop((nine, beyond, tcp, tcp_any, again, any_again));
        assert_registry_empty(&f);
    }

    /// One step of [`steering_matches_a_reference_model`].
    #[derive(Clone, Debug)]
    enum Op {
        /// Create a filter on `MODEL_PORT + first ..= + first + extra` with these indices
        /// into `MODEL_PREFIXES` (empty: any peer).
        Create {
            tcp: bool,
            first: u16,
            extra: u16,
            peers: Vec<usize>,
        },
        /// Drop the live filter at this index, modulo their number.
        Remove(usize),
    }

    const MODEL_PORT: u16 = 9000;
    const MODEL_PORTS: u16 = 5;
    /// Nested and disjoint prefixes, and `0.0.0.0/0`.
    const MODEL_PREFIXES: [([u8; 4], u8); 6] = [
        ([10, 0, 0, 0], 8),
        ([10, 1, 0, 0], 16),
        ([10, 1, 2, 0], 24),
        ([10, 1, 2, 3], 32),
        ([192, 168, 0, 0], 16),
        ([0, 0, 0, 0], 0),
    ];
    /// Sources inside each prefix and outside all but `/0`.
    const MODEL_SOURCES: [[u8; 4]; 6] = [
        [10, 1, 2, 3],
        [10, 1, 2, 4],
        [10, 1, 9, 9],
        [10, 9, 9, 9],
        [192, 168, 5, 5],
        [8, 8, 8, 8],
    ];

    /// A filter as the reference model sees it: a set of prefixes on some ports, "any peer"
    /// being `0.0.0.0/0`.
    struct ModelFilter {
        protocol: Protocol,
        ports: PortRange,
        prefixes: Vec<Ipv4Prefix>,
    }

    impl ModelFilter {
        fn new(protocol: Protocol, ports: PortRange, peers: &[Ipv4Prefix]) -> Self {
            let mut prefixes = peers.to_vec();
            if prefixes.is_empty() {
                prefixes.push(prefix([0; 4], 0));
            }
            prefixes.sort_unstable_by_key(|p| (u32::from(p.addr()), p.len()));
            prefixes.dedup();
            Self {
                protocol,
                ports,
                prefixes,
            }
        }

        fn covers(&self, protocol: Protocol, port: u16) -> bool {
            self.protocol == protocol && self.ports.ports().contains(&port)
        }
    }

    fn contains(p: Ipv4Prefix, addr: [u8; 4]) -> bool {
        prefix(addr, p.len()) == p
    }

    /// The rules of the module docs, written the slow and obvious way.
    fn model_steer(
        live: &[(FilterHandle, u32, ModelFilter)],
        protocol: Protocol,
        port: u16,
        src: [u8; 4],
    ) -> Result<u32, Counter> {
        let on_port: Vec<_> = live
            .iter()
            .filter(|(_, _, m)| m.covers(protocol, port))
            .collect();
        if on_port.is_empty() {
            return Err(Counter::NoFilter);
        }
        on_port
            .iter()
            .flat_map(|(_, slot, m)| m.prefixes.iter().map(move |&p| (p, *slot)))
            .filter(|&(p, _)| contains(p, src))
            .max_by_key(|&(p, _)| p.len())
            .map(|(_, slot)| slot)
            .ok_or(Counter::PeerRejected)
    }

    /// The first port where `candidate` would be ambiguous, and whether because both accept
    /// any peer (`true`) or because they list the same prefix (`false`).
    fn model_conflict(
        live: &[(FilterHandle, u32, ModelFilter)],
        candidate: &ModelFilter,
    ) -> Option<(u16, bool)> {
        for port in candidate.ports.ports() {
            let others = live
                .iter()
                .filter(|(_, _, m)| m.covers(candidate.protocol, port));
            let mut same_prefix = false;
            for (_, _, other) in others {
                for p in &candidate.prefixes {
                    if other.prefixes.contains(p) {
                        if p.is_empty() {
                            return Some((port, true));
                        }
                        same_prefix = true;
                    }
                }
            }
            if same_prefix {
                return Some((port, false));
            }
        }
        None
    }

    fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (any::<bool>(), 0..MODEL_PORTS, 0u16..3, proptest::collection::vec(0..MODEL_PREFIXES.len(), 0..3))
                .prop_map(|(tcp, first, extra, peers)| Op::Create { tcp, first, extra, peers }),
            1 => any::<usize>().prop_map(Op::Remove),
        ]
    }

    #[test]
    fn steering_matches_a_reference_model() {
        use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
        let test = "steering_matches_a_reference_model";
        if !privileged(test) {
            return;
        }
        let Some(xsk) = TestXsk::new(test) else {
            return;
        };
        // Deterministic, so that a failure replays; proptest shrinks it to a minimal sequence.
        let config = Config::with_cases(32);
        let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut runner = TestRunner::new_with_rng(config, rng);
        let ops = proptest::collection::vec(op_strategy(), 1..10);
        let result = runner.run(&ops, |ops| {
            let f = XdpFilters::new(FilterOptions::default()).unwrap();
            let mut live: Vec<(FilterHandle, u32, ModelFilter)> = Vec::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Create {
                        tcp,
                        first,
                        extra,
                        peers,
                    } => {
                        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
                        let first = MODEL_PORT + first;
                        let ports = PortRange::new(first, first + extra).unwrap();
                        let peers: Vec<Ipv4Prefix> = peers
                            .iter()
                            .map(|&i| prefix(MODEL_PREFIXES[i].0, MODEL_PREFIXES[i].1))
                            .collect();
                        // Slots 1..=15 in turn: live filters have distinct slots.
                        let slot = step as u32 % 15 + 1;
                        let result = f.create_filter(spec_to(slot, protocol, ports, peers.clone()));
                        let model = ModelFilter::new(protocol, ports, &peers);
                        match (result, model_conflict(&live, &model)) {
                            (Ok(handle), None) => live.push((handle, slot, model)),
                            (
                                Err(ControlError::Registry(RegistryError::Overlap {
                                    port, ..
                                })),
                                Some((want_port, true)),
                            )
                            | (
                                Err(ControlError::Registry(RegistryError::PeerOverlap {
                                    port,
                                    ..
                                })),
                                Some((want_port, false)),
                            ) => {
                                proptest::prop_assert_eq!(port, want_port);
                            }
                            (got, want) => {
                                return Err(TestCaseError::fail(format!(
                                    "step {step}: create gave {got:?}, the model {want:?}"
                                )))
                            }
                        }
                    }
                    Op::Remove(i) => {
                        if !live.is_empty() {
                            let (handle, _, _) = live.remove(i % live.len());
                            handle.remove().unwrap();
                        }
                    }
                }
                for protocol in [Protocol::Udp, Protocol::Tcp] {
                    for port in MODEL_PORT - 1..=MODEL_PORT + MODEL_PORTS + 2 {
                        for src in MODEL_SOURCES {
                            let frame = match protocol {
                                Protocol::Udp => udp_frame(src, port),
                                Protocol::Tcp => ipv4(6, src, &tcp_syn(port)),
                            };
                            let want = model_steer(&live, protocol, port, src);
                            let got = match want {
                                Ok(slot) => {
                                    f.register_socket(slot, 0, xsk.socket.fd()).unwrap();
                                    let v = verdict(&f, &frame);
                                    f.unregister_socket(slot, 0).unwrap();
                                    match v {
                                        (filter::XDP_REDIRECT, Counter::Redirected) => Ok(slot),
                                        (_, counter) => Err(counter),
                                    }
                                }
                                Err(_) => match verdict(&f, &frame) {
                                    (PASS, counter) => Err(counter),
                                    other => panic!("{other:?}"),
                                },
                            };
                            proptest::prop_assert_eq!(
                                got,
                                want,
                                "step {}: {:?} port {} from {:?}",
                                step,
                                protocol,
                                port,
                                src
                            );
                        }
                    }
                }
            }
            drop(live);
            assert_registry_empty(&f);
            let maps = &f.shared.maps;
            let mut key = [0u8; PEER_KEY_SIZE as usize];
            proptest::prop_assert!(!maps.peers.next_key(None, &mut key).unwrap());
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// Removal unlinks a filter from `services` before clearing its `filters` entry; a packet
    /// that read the `services` entry first must find the cleared entry inactive and go to the
    /// kernel, not to slot 0.
    #[test]
    fn a_cleared_filter_entry_is_not_followed() {
        if !privileged("a_cleared_filter_entry_is_not_followed") {
            return;
        }
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let h = f
            .create_filter(spec(Protocol::Udp, PortRange::single(7777), vec![]))
            .unwrap();
        // Installed: matched, and slot 0 has no socket.
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 7777)),
            (PASS, Counter::NoSocket)
        );
        // The moment inside a removal: services still names the filter, its entry is zero.
        f.shared
            .maps
            .filters
            .update(
                &h.id().to_ne_bytes(),
                &[0u8; FILTER_VALUE_SIZE as usize],
                UpdateMode::Any,
            )
            .unwrap();
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 7777)),
            (PASS, Counter::NoFilter)
        );
        drop(h);
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 7777)),
            (PASS, Counter::NoFilter)
        );
    }

    #[test]
    fn matched_port_without_socket_passes_and_counts_no_socket() {
        if !privileged("matched_port_without_socket_passes_and_counts_no_socket") {
            return;
        }
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 7777)),
            (PASS, Counter::NoFilter)
        );
        let h = f
            .create_filter(spec(Protocol::Udp, PortRange::single(7777), vec![]))
            .unwrap();
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 7777)),
            (PASS, Counter::NoSocket)
        );
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 7778)),
            (PASS, Counter::NoFilter)
        );
        // The same port over TCP is not covered.
        assert_eq!(
            verdict(&f, &ipv4(6, PEER, &tcp_syn(7777))),
            (PASS, Counter::NoFilter)
        );
        // With a context naming loopback queue 0, as a real receive would.
        let ctx = XdpTestContext {
            ingress_ifindex: 1,
            rx_queue_index: 0,
        };
        let run = f
            .program()
            .test_run_xdp(&udp_frame(PEER, 7777), &mut [], 1, ctx)
            .unwrap();
        assert_eq!(run.retval, PASS);
        drop(h);
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 7777)),
            (PASS, Counter::NoFilter)
        );
        let s = f.stats().unwrap();
        assert_eq!(s.no_socket, 2);
        assert_eq!(s.no_filter, 4);
        assert_eq!(s.redirected, 0);
    }

    /// The verdict counters are per CPU: runs on CPU 0 and on CPU 1 count in their own
    /// copies, and [`XdpFilters::stats`] reports the sum.
    #[test]
    fn counts_are_summed_across_cpus() {
        let test = "counts_are_summed_across_cpus";
        if !privileged(test) {
            return;
        }
        if melange_sys::online_cpus() < 2 {
            melange_sys::testenv::skip_or_fail(test, "needs two online CPUs");
            return;
        }
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let _h = f
            .create_filter(spec(Protocol::Udp, PortRange::single(7777), vec![]))
            .unwrap();
        // (CPU, frame, runs): matched without a socket, unfiltered, and ARP to the kernel.
        let runs = [
            (0, udp_frame(PEER, 7777), 3),
            (1, udp_frame(PEER, 7778), 5),
            (1, udp_frame(PEER, 7777), 2),
            (0, arp_request(), 4),
        ];
        for (cpu, frame, repeat) in &runs {
            std::thread::scope(|s| {
                s.spawn(|| {
                    melange_sys::pin_current_thread(*cpu).unwrap();
                    let run = f.program().test_run(frame, &mut [], *repeat).unwrap();
                    assert_eq!(run.retval, PASS);
                    assert_eq!(melange_sys::current_cpu(), Some(*cpu));
                });
            });
        }
        // Each CPU's copy holds its own runs (possible CPUs are numbered from 0 here)...
        let per_cpu = |counter: Counter| -> Vec<u64> {
            let values = f
                .shared
                .maps
                .stats
                .lookup_per_cpu(&counter.index().to_ne_bytes());
            let values = values
                .unwrap()
                .expect("every counter index is in the array");
            values
                .iter()
                .map(|v| u64::from_ne_bytes(v.try_into().unwrap()))
                .collect()
        };
        assert_eq!(per_cpu(Counter::NoSocket)[..2], [3, 2]);
        assert_eq!(per_cpu(Counter::NoFilter)[..2], [0, 5]);
        assert_eq!(per_cpu(Counter::Kernel)[..2], [4, 0]);
        assert!(per_cpu(Counter::Redirected).iter().all(|&n| n == 0));
        // ... and the stats are their sums.
        assert_eq!(counts(f.stats().unwrap()), [0, 5, 5, 0, 4, 0, 0, 0]);
    }

    #[test]
    fn tcp_filters_and_port_ranges() {
        if !privileged("tcp_filters_and_port_ranges") {
            return;
        }
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let _h = f
            .create_filter(spec(
                Protocol::Tcp,
                PortRange::new(8000, 8010).unwrap(),
                vec![],
            ))
            .unwrap();
        for (port, want) in [
            (7999, Counter::NoFilter),
            (8000, Counter::NoSocket),
            (8005, Counter::NoSocket),
            (8010, Counter::NoSocket),
            (8011, Counter::NoFilter),
        ] {
            assert_eq!(
                verdict(&f, &ipv4(6, PEER, &tcp_syn(port))),
                (PASS, want),
                "{port}"
            );
        }
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 8005)),
            (PASS, Counter::NoFilter)
        );
    }

    #[test]
    fn peers_are_checked_per_filter() {
        if !privileged("peers_are_checked_per_filter") {
            return;
        }
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let _a = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::single(53),
                vec![prefix([10, 1, 0, 0], 16), prefix([192, 168, 7, 7], 32)],
            ))
            .unwrap();
        let _b = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::single(54),
                vec![prefix([172, 16, 0, 0], 12)],
            ))
            .unwrap();
        assert_eq!(
            verdict(&f, &udp_frame([10, 1, 2, 3], 53)),
            (PASS, Counter::NoSocket)
        );
        assert_eq!(
            verdict(&f, &udp_frame([192, 168, 7, 7], 53)),
            (PASS, Counter::NoSocket)
        );
        assert_eq!(
            verdict(&f, &udp_frame([192, 168, 7, 8], 53)),
            (PASS, Counter::PeerRejected)
        );
        assert_eq!(
            verdict(&f, &udp_frame([10, 2, 0, 1], 53)),
            (PASS, Counter::PeerRejected)
        );
        // Filter b's prefix does not leak into filter a, nor a's into b.
        assert_eq!(
            verdict(&f, &udp_frame([172, 16, 9, 9], 53)),
            (PASS, Counter::PeerRejected)
        );
        assert_eq!(
            verdict(&f, &udp_frame([172, 31, 0, 1], 54)),
            (PASS, Counter::NoSocket)
        );
        assert_eq!(
            verdict(&f, &udp_frame([10, 1, 2, 3], 54)),
            (PASS, Counter::PeerRejected)
        );
    }

    #[test]
    fn dropping_a_restricted_filter_removes_its_peers() {
        if !privileged("dropping_a_restricted_filter_removes_its_peers") {
            return;
        }
        let f = XdpFilters::new(FilterOptions {
            peers_max: 2,
            filters_max: 2,
            ..FilterOptions::default()
        })
        .unwrap();
        let a = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::single(1),
                vec![prefix(PEER, 32)],
            ))
            .unwrap();
        let b = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::single(2),
                vec![prefix(PEER, 24)],
            ))
            .unwrap();
        assert!(matches!(
            f.create_filter(spec(Protocol::Udp, PortRange::single(3), vec![])),
            Err(ControlError::Registry(RegistryError::FiltersExhausted {
                filters_max: 2
            }))
        ));
        let id_a = a.id();
        a.remove().unwrap();
        assert!(matches!(
            f.create_filter(spec(
                Protocol::Udp,
                PortRange::single(3),
                vec![prefix([1, 0, 0, 0], 8), prefix([2, 0, 0, 0], 8)]
            )),
            Err(ControlError::Registry(RegistryError::PeersExhausted {
                needed: 2,
                free: 1,
                ..
            }))
        ));
        // The freed id is reused; the old filter's peer no longer admits anyone to it.
        let c = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::single(3),
                vec![prefix([9, 9, 9, 9], 32)],
            ))
            .unwrap();
        assert_eq!(c.id(), id_a);
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 3)),
            (PASS, Counter::PeerRejected)
        );
        assert_eq!(verdict(&f, &udp_frame(PEER, 1)), (PASS, Counter::NoFilter));
        assert_eq!(verdict(&f, &udp_frame(PEER, 2)), (PASS, Counter::NoSocket));
        drop(b);
        assert_eq!(verdict(&f, &udp_frame(PEER, 2)), (PASS, Counter::NoFilter));
    }

    #[test]
    fn overlapping_any_peer_filters_are_rejected() {
        if !privileged("overlapping_any_peer_filters_are_rejected") {
            return;
        }
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let h = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::new(100, 200).unwrap(),
                vec![],
            ))
            .unwrap();
        match f.create_filter(spec(
            Protocol::Udp,
            PortRange::new(150, 300).unwrap(),
            vec![],
        )) {
            Err(ControlError::Registry(RegistryError::Overlap {
                protocol: Protocol::Udp,
                port: 150,
                existing,
            })) => assert_eq!(existing, h.id()),
            other => panic!("expected an overlap, got {other:?}"),
        }
        // Different protocol or disjoint ports are fine, and so are peers on shared ports.
        let _t = f
            .create_filter(spec(
                Protocol::Tcp,
                PortRange::new(100, 200).unwrap(),
                vec![],
            ))
            .unwrap();
        let _u = f
            .create_filter(spec(Protocol::Udp, PortRange::single(201), vec![]))
            .unwrap();
        let p = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::new(150, 300).unwrap(),
                vec![prefix(PEER, 32)],
            ))
            .unwrap();
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 250)),
            (PASS, Counter::NoSocket)
        );
        assert_eq!(
            verdict(&f, &udp_frame([10, 9, 9, 9], 250)),
            (PASS, Counter::PeerRejected)
        );
        drop(h);
        let _again = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::new(150, 200).unwrap(),
                vec![],
            ))
            .unwrap();
        drop(p);
        assert!(matches!(
            f.create_filter(FilterSpec {
                slot: 16,
                ..spec(Protocol::Udp, PortRange::single(9), vec![])
            }),
            Err(ControlError::Registry(RegistryError::SlotOutOfRange {
                slot: 16,
                ..
            }))
        ));
    }

    #[test]
    fn fragments_truncated_and_odd_frames_pass() {
        if !privileged("fragments_truncated_and_odd_frames_pass") {
            return;
        }
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let _h = f
            .create_filter(spec(Protocol::Udp, PortRange::single(9), vec![]))
            .unwrap();
        // Options are skipped by IHL, so the port is still found.
        assert_eq!(
            verdict(&f, &ipv4_full(17, PEER, 0, 8, &udp(9))),
            (PASS, Counter::NoSocket)
        );
        // More-fragments, and a non-zero offset: without a fragment rule for the address,
        // fragments go to the kernel even when the first one names a filtered port.
        assert_eq!(
            verdict(&f, &ipv4_full(17, PEER, 0x2000, 0, &udp(9))),
            (PASS, Counter::Fragment)
        );
        assert_eq!(
            verdict(&f, &ipv4_full(17, PEER, 0x0010, 0, &udp(9))),
            (PASS, Counter::Fragment)
        );
        // DF alone is no fragment.
        assert_eq!(
            verdict(&f, &ipv4_full(17, PEER, 0x4000, 0, &udp(9))),
            (PASS, Counter::NoSocket)
        );
        // Ethernet only; IPv4 header cut short; L4 header cut short (behind options).
        assert_eq!(verdict(&f, &eth(ETH_IPV4, &[])), (PASS, Counter::Malformed));
        let full = udp_frame(PEER, 9);
        assert_eq!(verdict(&f, &full[..14 + 19]), (PASS, Counter::Malformed));
        assert_eq!(
            verdict(&f, &full[..14 + 20 + 3]),
            (PASS, Counter::Malformed)
        );
        assert_eq!(verdict(&f, &full[..14 + 20 + 4]), (PASS, Counter::NoSocket));
        let opts = ipv4_full(17, PEER, 0, 40, &udp(9));
        assert_eq!(
            verdict(&f, &opts[..14 + 60 + 3]),
            (PASS, Counter::Malformed)
        );
        assert_eq!(verdict(&f, &opts[..14 + 60 + 4]), (PASS, Counter::NoSocket));
        // Bad version, IHL below 5.
        let mut bad = full.clone();
        bad[14] = 0x65;
        assert_eq!(verdict(&f, &bad), (PASS, Counter::Malformed));
        bad[14] = 0x44;
        assert_eq!(verdict(&f, &bad), (PASS, Counter::Malformed));
        // VLAN-tagged and IPv6 frames go to the kernel.
        assert_eq!(
            verdict(&f, &eth(ETH_VLAN, &[0; 46])),
            (PASS, Counter::Kernel)
        );
        assert_eq!(
            verdict(&f, &eth(0x86dd, &[0x60; 46])),
            (PASS, Counter::Kernel)
        );
        // The kernel refuses test input shorter than an Ethernet header.
        assert!(f.program().test_run(&full[..13], &mut [], 1).is_err());
    }

    /// A fragment rule takes every fragment of UDP to its address (first, middle and last,
    /// whatever the first one's port) to its slot's socket on the queue, and nothing else:
    /// not fragments to another address, not TCP or ICMP fragments to the same one, not
    /// unfragmented datagrams. Holders of one slot share it; another slot is refused; the
    /// last holder's drop gives the fragments back to the kernel and empties the map.
    #[test]
    fn fragment_rules_steer_fragments_by_address() {
        let test = "fragment_rules_steer_fragments_by_address";
        if !privileged(test) {
            return;
        }
        let Some(xsk) = TestXsk::new(test) else {
            return;
        };
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let other_addr = [10, 0, 0, 9];
        let redirected = (filter::XDP_REDIRECT, Counter::FragmentRedirected);
        let to_kernel = (PASS, Counter::Fragment);

        // No rule: every fragment goes to the kernel, as it always did.
        for (kind, frame) in udp_fragments(US, 7777) {
            assert_eq!(verdict(&f, &frame), to_kernel, "{kind}");
        }
        let rule = f.steer_fragments(udp_fragment_rule(1)).unwrap();
        assert_eq!(rule.rule(), udp_fragment_rule(1));
        // The rule, but no socket at its slot on queue 0: counted as such, passed.
        for (kind, frame) in udp_fragments(US, 7777) {
            assert_eq!(verdict(&f, &frame), (PASS, Counter::NoSocket), "{kind}");
        }
        f.register_socket(1, 0, xsk.socket.fd()).unwrap();
        // Every fragment to our address, to a port with a filter or without one (the first
        // fragment's port is not looked at: the later ones have none).
        for port in [7777, 53] {
            for (kind, frame) in udp_fragments(US, port) {
                assert_eq!(verdict(&f, &frame), redirected, "{kind} to port {port}");
            }
        }
        // Not another address's fragments, nor other protocols' to ours.
        for (kind, frame) in udp_fragments(other_addr, 7777) {
            assert_eq!(verdict(&f, &frame), to_kernel, "{kind} to another address");
        }
        let mut syn = tcp_syn(7777);
        syn.resize(24, 0);
        assert_eq!(verdict(&f, &fragment_to(6, US, 0x2000, &syn)), to_kernel);
        assert_eq!(verdict(&f, &fragment_to(6, US, 3, &[0; 40])), to_kernel);
        assert_eq!(
            verdict(&f, &fragment_to(1, US, 0x2000, &[8, 0, 0, 0, 0, 1, 0, 1])),
            to_kernel,
            "a large ping's first fragment"
        );
        // Unfragmented datagrams follow the port table alone.
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 7777)),
            (PASS, Counter::NoFilter)
        );
        let h = udp_filter(&f, 1, 7777, vec![]);
        assert_eq!(
            verdict(&f, &udp_frame(PEER, 7777)),
            (filter::XDP_REDIRECT, Counter::Redirected)
        );
        drop(h);

        // A second service of slot 1 shares the rule; slot 2 cannot have it.
        let shared = f.steer_fragments(udp_fragment_rule(1)).unwrap();
        assert!(matches!(
            f.steer_fragments(udp_fragment_rule(2)),
            Err(ControlError::Registry(
                RegistryError::FragmentRuleConflict { existing: 1, .. }
            ))
        ));
        assert!(matches!(
            f.steer_fragments(udp_fragment_rule(16)),
            Err(ControlError::Registry(RegistryError::SlotOutOfRange { .. }))
        ));
        let (_, middle) = &udp_fragments(US, 7777)[1];
        drop(rule);
        assert_eq!(verdict(&f, middle), redirected, "the other holder keeps it");
        shared.remove().unwrap();
        assert_eq!(verdict(&f, middle), to_kernel);
        let mut key = [0u8; FRAGMENT_KEY_SIZE as usize];
        assert!(!f.shared.maps.fragments.next_key(None, &mut key).unwrap());
        assert_eq!(f.shared.registry().fragment_rules(), 0);
        // Slot 2 may have it now.
        f.register_socket(2, 0, xsk.socket.fd()).unwrap();
        let _two = f.steer_fragments(udp_fragment_rule(2)).unwrap();
        assert_eq!(verdict(&f, middle), redirected);
        f.unregister_socket(1, 0).unwrap();
        f.unregister_socket(2, 0).unwrap();
        assert_registry_empty(&f);
    }

    #[test]
    fn arp_and_icmp_follow_the_options() {
        if !privileged("arp_and_icmp_follow_the_options") {
            return;
        }
        let to_kernel = XdpFilters::new(FilterOptions::default()).unwrap();
        assert_eq!(verdict(&to_kernel, &arp_request()), (PASS, Counter::Kernel));
        assert_eq!(verdict(&to_kernel, &icmp_echo()), (PASS, Counter::Kernel));

        let to_slot = XdpFilters::new(FilterOptions {
            arp: Steer::Slot(2),
            other_ipv4: Steer::Slot(3),
            ..FilterOptions::default()
        })
        .unwrap();
        // Steered to the slot, which has no socket yet: the redirect falls back to the kernel.
        assert_eq!(verdict(&to_slot, &arp_request()), (PASS, Counter::NoSocket));
        assert_eq!(verdict(&to_slot, &icmp_echo()), (PASS, Counter::NoSocket));
        assert!(matches!(
            XdpFilters::new(FilterOptions {
                arp: Steer::Slot(99),
                ..FilterOptions::default()
            }),
            Err(ControlError::Registry(RegistryError::InvalidOptions(_)))
        ));
    }

    #[test]
    fn register_socket_checks_range_and_kind() {
        if !privileged("register_socket_checks_range_and_kind") {
            return;
        }
        let f = XdpFilters::new(FilterOptions::default()).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        assert!(matches!(
            f.register_socket(16, 0, file.as_fd()),
            Err(ControlError::Registry(RegistryError::SlotOutOfRange { .. }))
        ));
        assert!(matches!(
            f.register_socket(0, 16, file.as_fd()),
            Err(ControlError::Registry(
                RegistryError::QueueOutOfRange { .. }
            ))
        ));
        // Not an AF_XDP socket: the kernel refuses it.
        assert!(matches!(
            f.register_socket(0, 0, file.as_fd()),
            Err(ControlError::Bpf(_))
        ));
        f.unregister_socket(0, 0).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Garbage never makes the program do anything but pass (no socket is registered),
        /// and the kernel accepts every run.
        #[test]
        fn garbage_frames_pass(
            ethertype in proptest::prop_oneof![
                proptest::strategy::Just(ETH_IPV4),
                proptest::strategy::Just(ETH_ARP),
                proptest::prelude::any::<u16>()
            ],
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
        ) {
            if privileged("garbage_frames_pass") {
                thread_local! {
                    static FILTERS: XdpFilters = {
                        // One prefix over every UDP port: 65536 trie entries.
                        let f = XdpFilters::new(FilterOptions {
                            peers_max: 65536,
                            ..FilterOptions::default()
                        })
                        .unwrap();
                        std::mem::forget(f.create_filter(spec(
                            Protocol::Udp,
                            PortRange::new(0, 65535).unwrap(),
                            vec![prefix([0x80, 0, 0, 0], 1)],
                        )).unwrap());
                        f
                    };
                }
                FILTERS.with(|f| {
                    let (retval, _) = verdict(f, &eth(ethertype, &body));
                    assert_eq!(retval, PASS);
                });
            }
        }
    }

    // Attach and detach on a veth pair, in network namespaces of our own.

    /// The environment variable that tells the child test which interface to use.
    const CHILD_ENV: &str = "MELANGE_BPF_NETNS_CHILD";

    /// A network namespace deleted on drop (with its interfaces), even if the test fails.
    struct Netns {
        name: String,
    }

    impl Netns {
        fn new(name: String) -> Self {
            // A leftover from a killed run of this very test would make `add` fail.
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            ip(&["netns", "add", &name]);
            Self { name }
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether `ip -j link show` reports an XDP program on `dev` (in namespace `ns`, or ours).
    fn xdp_attached(ns: Option<&str>, dev: &str) -> bool {
        let json = match ns {
            Some(ns) => ip(&["-n", ns, "-j", "link", "show", "dev", dev]),
            None => ip(&["-j", "link", "show", "dev", dev]),
        };
        json.contains("\"xdp\"")
    }

    #[test]
    fn attach_and_detach_on_veth() {
        if !privileged("attach_and_detach_on_veth") {
            return;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            melange_sys::testenv::skip_or_fail("netns fixture", "needs iproute2 (`ip`)");
            return;
        }
        let pid = std::process::id();
        let ours = Netns::new(format!("mlgbpf{pid}a"));
        let peer = Netns::new(format!("mlgbpf{pid}b"));
        ip(&[
            "-n", &ours.name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
            "netns", &peer.name,
        ]);
        ip(&[
            "-n",
            &ours.name,
            "addr",
            "add",
            "10.199.0.1/24",
            "dev",
            "veth0",
        ]);
        ip(&[
            "-n",
            &peer.name,
            "addr",
            "add",
            "10.199.0.2/24",
            "dev",
            "veth1",
        ]);
        ip(&["-n", &ours.name, "link", "set", "veth0", "up"]);
        ip(&["-n", &peer.name, "link", "set", "veth1", "up"]);
        assert!(!xdp_attached(Some(&ours.name), "veth0"));

        // The child runs this test binary's `netns_child` inside our namespace: `bpf(2)` and
        // interface names are resolved in the caller's namespace.
        let exe = std::env::current_exe().unwrap();
        let module = module_path!().split_once("::").map_or("", |(_, m)| m);
        let test = format!("{module}::netns_child");
        let out = Command::new("ip")
            .args(["netns", "exec", &ours.name])
            .arg(&exe)
            .args([
                &test,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &peer.name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("CHILD OK"),
            "child failed:\n{stdout}\n{stderr}"
        );
        // The child exited holding a link: the kernel detached the program.
        assert!(!xdp_attached(Some(&ours.name), "veth0"));
    }

    /// The half of [`attach_and_detach_on_veth`] that runs inside the namespace.
    #[test]
    #[ignore = "run by attach_and_detach_on_veth inside a network namespace"]
    fn netns_child() {
        let Ok(peer_ns) = std::env::var(CHILD_ENV) else {
            return;
        };
        let send = |cmd: &str| {
            let out = Command::new("ip")
                .args(["netns", "exec", &peer_ns, "bash", "-c", cmd])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };

        let mut f = XdpFilters::attach("veth0", XdpMode::Native, FilterOptions::default()).unwrap();
        assert!(xdp_attached(None, "veth0"));
        assert_eq!(f.ifindex(), Some(interface_index("veth0").unwrap()));

        // A second program cannot take the interface while our link holds it.
        let other = XdpFilters::attach("veth0", XdpMode::Native, FilterOptions::default());
        match other {
            Err(ControlError::Bpf(e @ BpfError::XdpBusy { .. })) => {
                assert!(e.to_string().contains("xdp off"), "{e}");
            }
            other => panic!("expected XdpBusy, got {other:?}"),
        }

        // Real traffic through the attached program: ARP and ICMP reach the kernel (the ping
        // is answered), UDP to an unfiltered port counts as such, then as matched-no-socket.
        send("ping -c 1 -W 2 10.199.0.1 >/dev/null");
        let s = f.stats().unwrap();
        assert!(s.kernel >= 2, "{s:?}");
        send("echo hello > /dev/udp/10.199.0.1/9999");
        let _h = f
            .create_filter(spec(Protocol::Udp, PortRange::single(9999), vec![]))
            .unwrap();
        send("echo hello > /dev/udp/10.199.0.1/9999");
        let s = f.stats().unwrap();
        assert_eq!((s.no_filter, s.no_socket, s.redirected), (1, 1, 0), "{s:?}");

        f.detach();
        assert!(!xdp_attached(None, "veth0"));
        f.attach_to("veth0", XdpMode::Native).unwrap();
        assert!(xdp_attached(None, "veth0"));
        println!("CHILD OK");
        // Exit still attached: the parent checks that process exit detaches the program.
        std::mem::forget(f);
    }
}
