//! The control-plane API over the filter program: Arrakis' `create_filter` for one interface.
//!
//! # Design
//!
//! [`XdpFilters`] owns everything the kernel holds for one interface: the five maps of
//! [`crate::filter`], the verified program and the [`XdpLink`] that attaches it. Filters are
//! created with [`XdpFilters::create_filter`] and live as long as the returned
//! [`FilterHandle`]: dropping the handle removes the filter's map entries, the way dropping a
//! file closes it. Handles share the maps through an [`Arc`], so a handle may outlive the
//! `XdpFilters` (its entries are then removed from maps that no program uses any more, which is
//! harmless) and may be sent to the thread that serves the application.
//!
//! A filter becomes visible to packets in one order and disappears in the reverse one: its
//! `filters` entry and its peer prefixes are written before any `services` entry points at it,
//! and on removal the `services` entries go first. So no packet ever sees a filter whose peers
//! are half written. (A port range is written one port at a time; while it is written, some of
//! its ports already match and others do not yet, which is the same as the filter arriving a
//! little later on those ports.)
//!
//! Two filters may not share a (protocol, port): the `services` array maps each to exactly one
//! filter. Arrakis allows several filters on one port told apart by peers; supporting that
//! would need a per-port list walked by the program, which the verifier makes costly, so the
//! control plane rejects the overlap with [`ControlError::Overlap`] instead.
//!
//! Safety contract: none needed; the crate forbids `unsafe`. The kernel objects are owned by
//! `melange_sys::bpf` types and released when the last owner drops them; the program is
//! detached when [`XdpFilters`] is dropped or the process dies.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use melange_sys::bpf::{
    interface_index, BpfError, Map, MapKind, Program, ProgramType, UpdateMode, XdpLink, XdpMode,
};

use crate::asm::AsmError;
use crate::filter::{
    self, peer_key, service_index, Counter, FilterEntry, FilterMapFds, FilterProgramSpec, Protocol,
    Steer, FILTER_F_RESTRICT_PEERS, FILTER_VALUE_SIZE, PEER_KEY_SIZE, PEER_VALUE_SIZE,
    SERVICES_LEN, SERVICE_VALUE_SIZE, STATS_LEN, STAT_VALUE_SIZE, XSK_VALUE_SIZE,
};

/// The most slots times queues the `xsks` map may have.
pub const XSKS_LEN_MAX: u32 = 1 << 16;
/// The most filters one interface may have.
pub const FILTERS_MAX_LIMIT: u32 = 1 << 16;

/// Errors of the control API. Each variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The kernel refused a map, program or link operation; see the inner error, whose
    /// variants say what to do (run as root, remove another XDP program, ...).
    #[error(transparent)]
    Bpf(#[from] BpfError),
    /// The program generator failed to assemble. A bug in this crate: report it.
    #[error("assembling the filter program: {0}")]
    Assemble(#[from] AsmError),
    /// Another filter already owns this protocol and port. Drop that filter's handle first, or
    /// choose other ports.
    #[error("{protocol:?} port {port} already belongs to filter {existing}")]
    Overlap {
        /// The protocol of both filters.
        protocol: Protocol,
        /// The first port the two filters share.
        port: u16,
        /// The id of the filter that owns it.
        existing: u32,
    },
    /// Every filter id is in use. Drop unused filters or raise [`FilterOptions::filters_max`].
    #[error("all {filters_max} filters are in use")]
    FiltersExhausted {
        /// The configured limit.
        filters_max: u32,
    },
    /// The peer trie has no room for this filter's prefixes. Use fewer or shorter prefixes, or
    /// raise [`FilterOptions::peers_max`].
    #[error("the filter needs {needed} peer prefixes but only {free} of {peers_max} are free")]
    PeersExhausted {
        /// Prefixes the filter needs.
        needed: usize,
        /// Prefixes still free.
        free: u32,
        /// The configured limit.
        peers_max: u32,
    },
    /// The slot is not below [`FilterOptions::slots_max`]. Use a smaller slot number.
    #[error("slot {slot} is out of range (slots_max {slots_max})")]
    SlotOutOfRange {
        /// The slot given.
        slot: u32,
        /// The configured limit.
        slots_max: u32,
    },
    /// The queue is not below [`FilterOptions::queues_max`]. Use a queue the interface has.
    #[error("queue {queue} is out of range (queues_max {queues_max})")]
    QueueOutOfRange {
        /// The queue given.
        queue: u32,
        /// The configured limit.
        queues_max: u32,
    },
    /// A prefix longer than 32 bits. Fix the prefix.
    #[error("IPv4 prefix length {len} is longer than 32")]
    InvalidPrefix {
        /// The length given.
        len: u8,
    },
    /// A port range whose first port is after its last. Fix the range.
    #[error("port range {first}..={last} is empty")]
    InvalidPortRange {
        /// The first port.
        first: u16,
        /// The last port.
        last: u16,
    },
    /// The options are inconsistent; the message says which. Fix the options.
    #[error("invalid filter options: {0}")]
    InvalidOptions(&'static str),
}

/// An IPv4 prefix `addr/len`, with the host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Prefix {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Prefix {
    /// The prefix `addr/len`; host bits of `addr` beyond `len` are cleared.
    ///
    /// # Errors
    ///
    /// [`ControlError::InvalidPrefix`] if `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, ControlError> {
        if len > 32 {
            return Err(ControlError::InvalidPrefix { len });
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    /// One host, `addr/32`.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, len: 32 }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is `0.0.0.0/0`, which matches every address.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// One port.
    pub fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// The ports `first..=last`.
    ///
    /// # Errors
    ///
    /// [`ControlError::InvalidPortRange`] if `first > last`.
    pub fn new(first: u16, last: u16) -> Result<Self, ControlError> {
        if first > last {
            return Err(ControlError::InvalidPortRange { first, last });
        }
        Ok(Self { first, last })
    }

    /// The first port.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// The last port.
    pub fn last(&self) -> u16 {
        self.last
    }

    fn ports(self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }

    /// The first port both ranges contain, if any.
    fn first_common(self, other: PortRange) -> Option<u16> {
        let first = self.first.max(other.first);
        (first <= self.last.min(other.last)).then_some(first)
    }
}

/// Which traffic a filter applies to. Only receive filters exist: on transmit, the dataplane
/// writes headers itself and validates them in user space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// Packets arriving on the interface.
    #[default]
    Receive,
}

/// Arrakis' `create_filter(flags, peers, services)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    /// Receive only, for now.
    pub direction: Direction,
    /// The transport protocol.
    pub protocol: Protocol,
    /// Accepted source prefixes; empty accepts any peer.
    pub peers: Vec<Ipv4Prefix>,
    /// Destination ports.
    pub ports: PortRange,
    /// The slot (application/socket group) whose socket on the packet's queue receives it.
    pub slot: u32,
}

/// Sizes and policy of one interface's filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterOptions {
    /// What to do with ARP (default: pass to the kernel).
    pub arp: Steer,
    /// What to do with IPv4 other than UDP and TCP (default: pass to the kernel).
    pub other_ipv4: Steer,
    /// Receive queues per slot in the socket map; at least the interface's queue count.
    pub queues_max: u32,
    /// Slots (applications/socket groups).
    pub slots_max: u32,
    /// Filters at once.
    pub filters_max: u32,
    /// Peer prefixes over all filters.
    pub peers_max: u32,
}

impl Default for FilterOptions {
    fn default() -> Self {
        Self {
            arp: Steer::Kernel,
            other_ipv4: Steer::Kernel,
            queues_max: 16,
            slots_max: 16,
            filters_max: 1024,
            peers_max: 4096,
        }
    }
}

impl FilterOptions {
    fn validate(&self) -> Result<(), ControlError> {
        if self.queues_max == 0 || self.slots_max == 0 || self.filters_max == 0 {
            return Err(ControlError::InvalidOptions(
                "queues_max, slots_max and filters_max must be positive",
            ));
        }
        if u64::from(self.queues_max) * u64::from(self.slots_max) > u64::from(XSKS_LEN_MAX) {
            return Err(ControlError::InvalidOptions(
                "queues_max * slots_max exceeds XSKS_LEN_MAX",
            ));
        }
        if self.filters_max > FILTERS_MAX_LIMIT {
            return Err(ControlError::InvalidOptions(
                "filters_max exceeds FILTERS_MAX_LIMIT",
            ));
        }
        for steer in [self.arp, self.other_ipv4] {
            if let Steer::Slot(slot) = steer {
                if slot >= self.slots_max {
                    return Err(ControlError::InvalidOptions(
                        "a steering slot is not below slots_max",
                    ));
                }
            }
        }
        Ok(())
    }
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

/// Packet counts of the filter program since its maps were created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Redirected to an AF_XDP socket.
    pub redirected: u64,
    /// Matched, but no socket registered for the slot and queue: passed to the kernel.
    pub no_socket: u64,
    /// UDP/TCP to a port without a filter: passed.
    pub no_filter: u64,
    /// Source address not among the filter's peers: passed.
    pub peer_rejected: u64,
    /// Passed by policy (non-IPv4, ARP or other protocols steered to the kernel).
    pub kernel: u64,
    /// IPv4 fragments: passed.
    pub fragment: u64,
    /// Truncated or invalid headers: passed.
    pub malformed: u64,
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
        };
        *field = value;
    }
}

/// The five maps of the filter program.
#[derive(Debug)]
struct FilterMaps {
    services: Map,
    filters: Map,
    peers: Map,
    xsks: Map,
    stats: Map,
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
                options.queues_max * options.slots_max,
                0,
                "mlg_xsks",
            )?,
            stats: Map::create_named(
                MapKind::Array,
                4,
                STAT_VALUE_SIZE,
                STATS_LEN,
                0,
                "mlg_stats",
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
        }
    }
}

/// What the control plane remembers of one filter, to check overlaps and to remove it.
#[derive(Debug)]
struct FilterRecord {
    protocol: Protocol,
    ports: PortRange,
    peers: Vec<Ipv4Prefix>,
}

/// Filter ids in use and free.
#[derive(Debug)]
struct Registry {
    filters: HashMap<u32, FilterRecord>,
    /// Free ids, popped from the end (lowest id first).
    free_ids: Vec<u32>,
    peers_used: u32,
}

/// State shared by [`XdpFilters`] and its [`FilterHandle`]s.
#[derive(Debug)]
struct Shared {
    maps: FilterMaps,
    registry: Mutex<Registry>,
    peers_max: u32,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A poisoned lock means a panic while the registry was held; the registry is updated
        // only after the maps are, so its contents are still a correct account of them.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a filter's entries: filter and peers first, services last.
    fn install(&self, id: u32, spec: &FilterSpec, peers: &[Ipv4Prefix]) -> Result<(), BpfError> {
        let flags = if peers.is_empty() {
            0
        } else {
            FILTER_F_RESTRICT_PEERS
        };
        let entry = FilterEntry {
            flags,
            slot: spec.slot,
        };
        self.maps
            .filters
            .update(&id.to_ne_bytes(), &entry.to_bytes(), UpdateMode::Any)?;
        for p in peers {
            let key = peer_key(id, p.addr.octets(), p.len);
            self.maps
                .peers
                .update(&key, &1u32.to_ne_bytes(), UpdateMode::Any)?;
        }
        let value = (id + 1).to_ne_bytes();
        for port in spec.ports.ports() {
            let index = service_index(spec.protocol, port);
            self.maps
                .services
                .update(&index.to_ne_bytes(), &value, UpdateMode::Any)?;
        }
        Ok(())
    }

    /// Removes a filter's entries in the reverse order of [`Shared::install`]. Tolerates
    /// entries that were never written (a failed install).
    fn uninstall(&self, id: u32, record: &FilterRecord) -> Result<(), BpfError> {
        let mut first_error = None;
        let mut note = |r: Result<(), BpfError>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        let mut value = [0u8; SERVICE_VALUE_SIZE as usize];
        for port in record.ports.ports() {
            let index = service_index(record.protocol, port).to_ne_bytes();
            // Only clear entries that still point at this filter.
            let ours = self
                .maps
                .services
                .lookup(&index, &mut value)
                .map(|found| found && u32::from_ne_bytes(value) == id + 1);
            match ours {
                Ok(true) => note(self.maps.services.update(
                    &index,
                    &0u32.to_ne_bytes(),
                    UpdateMode::Any,
                )),
                Ok(false) => {}
                Err(e) => note(Err(e)),
            }
        }
        for p in &record.peers {
            note(
                self.maps
                    .peers
                    .delete(&peer_key(id, p.addr.octets(), p.len))
                    .map(drop),
            );
        }
        note(self.maps.filters.update(
            &id.to_ne_bytes(),
            &FilterEntry::default().to_bytes(),
            UpdateMode::Any,
        ));
        first_error.map_or(Ok(()), Err)
    }

    fn remove(&self, id: u32) -> Result<(), BpfError> {
        let mut registry = self.registry();
        let Some(record) = registry.filters.remove(&id) else {
            return Ok(());
        };
        let result = self.uninstall(id, &record);
        registry.peers_used -= record.peers.len() as u32;
        registry.free_ids.push(id);
        result
    }
}

/// A live filter. Dropping it removes the filter from the maps.
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
    /// [`ControlError::InvalidOptions`]; [`ControlError::Bpf`] if the kernel refuses a map or
    /// the program (without privileges, for example).
    pub fn new(options: FilterOptions) -> Result<Self, ControlError> {
        options.validate()?;
        let maps = FilterMaps::create(&options)?;
        let spec = FilterProgramSpec {
            arp: options.arp,
            other_ipv4: options.other_ipv4,
            queues_max: options.queues_max,
        };
        let insns = filter::build(&spec, &maps.fds())?;
        let program = Program::load_named(ProgramType::Xdp, &insns, "GPL", "melange_filter")?;
        let registry = Registry {
            filters: HashMap::new(),
            free_ids: (0..options.filters_max).rev().collect(),
            peers_used: 0,
        };
        Ok(Self {
            link: None,
            program,
            shared: Arc::new(Shared {
                maps,
                registry: Mutex::new(registry),
                peers_max: options.peers_max,
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

    fn xsk_key(&self, slot: u32, queue: u32) -> Result<[u8; 4], ControlError> {
        if slot >= self.options.slots_max {
            return Err(ControlError::SlotOutOfRange {
                slot,
                slots_max: self.options.slots_max,
            });
        }
        if queue >= self.options.queues_max {
            return Err(ControlError::QueueOutOfRange {
                queue,
                queues_max: self.options.queues_max,
            });
        }
        Ok((slot * self.options.queues_max + queue).to_ne_bytes())
    }

    /// Makes `xsk_fd` (an AF_XDP socket bound to this interface's `queue`) the receiver of
    /// `slot`'s packets arriving on `queue`. Replaces any previous socket there.
    ///
    /// # Errors
    ///
    /// [`ControlError::SlotOutOfRange`], [`ControlError::QueueOutOfRange`] (no system call
    /// made); [`ControlError::Bpf`] if the descriptor is not a bound AF_XDP socket.
    pub fn register_socket(
        &self,
        slot: u32,
        queue: u32,
        xsk_fd: BorrowedFd<'_>,
    ) -> Result<(), ControlError> {
        let key = self.xsk_key(slot, queue)?;
        self.shared.maps.xsks.update_fd(&key, xsk_fd)?;
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
        let key = self.xsk_key(slot, queue)?;
        self.shared.maps.xsks.delete(&key)?;
        Ok(())
    }

    /// Arrakis' `create_filter`: steers `spec.protocol` packets to `spec.ports` from
    /// `spec.peers` (any, if empty) to `spec.slot`'s sockets, until the handle is dropped.
    ///
    /// # Errors
    ///
    /// [`ControlError::Overlap`] if another filter owns one of the ports;
    /// [`ControlError::SlotOutOfRange`]; [`ControlError::FiltersExhausted`];
    /// [`ControlError::PeersExhausted`]; [`ControlError::Bpf`] if a map write fails (the
    /// filter is then rolled back).
    pub fn create_filter(&self, spec: FilterSpec) -> Result<FilterHandle, ControlError> {
        let Direction::Receive = spec.direction;
        if spec.slot >= self.options.slots_max {
            return Err(ControlError::SlotOutOfRange {
                slot: spec.slot,
                slots_max: self.options.slots_max,
            });
        }
        let mut peers = spec.peers.clone();
        peers.sort_unstable_by_key(|p| (u32::from(p.addr), p.len));
        peers.dedup();
        // A /0 prefix accepts everyone: the filter is unrestricted.
        if peers.iter().any(Ipv4Prefix::is_empty) {
            peers.clear();
        }

        let shared = &self.shared;
        let mut registry = shared.registry();
        for (&id, record) in &registry.filters {
            if record.protocol == spec.protocol {
                if let Some(port) = record.ports.first_common(spec.ports) {
                    return Err(ControlError::Overlap {
                        protocol: spec.protocol,
                        port,
                        existing: id,
                    });
                }
            }
        }
        let free = shared.peers_max - registry.peers_used;
        if peers.len() > free as usize {
            return Err(ControlError::PeersExhausted {
                needed: peers.len(),
                free,
                peers_max: shared.peers_max,
            });
        }
        let Some(id) = registry.free_ids.pop() else {
            return Err(ControlError::FiltersExhausted {
                filters_max: self.options.filters_max,
            });
        };
        let record = FilterRecord {
            protocol: spec.protocol,
            ports: spec.ports,
            peers,
        };
        if let Err(e) = shared.install(id, &spec, &record.peers) {
            // Best effort: the install error is the one worth reporting.
            let _ = shared.uninstall(id, &record);
            registry.free_ids.push(id);
            return Err(e.into());
        }
        registry.peers_used += record.peers.len() as u32;
        registry.filters.insert(id, record);
        Ok(FilterHandle {
            shared: Arc::clone(shared),
            id,
        })
    }

    /// Reads the packet counters.
    ///
    /// # Errors
    ///
    /// [`ControlError::Bpf`] if a map read fails.
    pub fn stats(&self) -> Result<FilterStats, ControlError> {
        let mut stats = FilterStats::default();
        let mut value = [0u8; STAT_VALUE_SIZE as usize];
        for counter in Counter::ALL {
            let found = self
                .shared
                .maps
                .stats
                .lookup(&counter.index().to_ne_bytes(), &mut value)?;
            stats.set(counter, if found { u64::from_ne_bytes(value) } else { 0 });
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    use melange_sys::bpf::XdpTestContext;

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
            Err(e) if e.is_permission() => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{test}: bpf(2) not permitted under CI, which must run as root: {e}"
                );
                eprintln!("SKIPPED {test}: needs root or CAP_BPF + CAP_NET_ADMIN ({e})");
                false
            }
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

    fn counts(s: FilterStats) -> [u64; 7] {
        [
            s.redirected,
            s.no_socket,
            s.no_filter,
            s.peer_rejected,
            s.kernel,
            s.fragment,
            s.malformed,
        ]
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
            Err(ControlError::FiltersExhausted { filters_max: 2 })
        ));
        let id_a = a.id();
        a.remove().unwrap();
        assert!(matches!(
            f.create_filter(spec(
                Protocol::Udp,
                PortRange::single(3),
                vec![prefix([1, 0, 0, 0], 8), prefix([2, 0, 0, 0], 8)]
            )),
            Err(ControlError::PeersExhausted {
                needed: 2,
                free: 1,
                ..
            })
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
    fn overlapping_filters_are_rejected() {
        if !privileged("overlapping_filters_are_rejected") {
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
            Err(ControlError::Overlap {
                protocol: Protocol::Udp,
                port: 150,
                existing,
            }) => assert_eq!(existing, h.id()),
            other => panic!("expected an overlap, got {other:?}"),
        }
        // Different protocol or disjoint ports are fine.
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
        drop(h);
        let _again = f
            .create_filter(spec(
                Protocol::Udp,
                PortRange::new(150, 200).unwrap(),
                vec![],
            ))
            .unwrap();
        assert!(matches!(
            f.create_filter(FilterSpec {
                slot: 16,
                ..spec(Protocol::Udp, PortRange::single(9), vec![])
            }),
            Err(ControlError::SlotOutOfRange { slot: 16, .. })
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
        // More-fragments, and a non-zero offset.
        assert_eq!(
            verdict(&f, &ipv4_full(17, PEER, 0x2000, 0, &udp(9))),
            (PASS, Counter::Fragment)
        );
        assert_eq!(
            verdict(&f, &ipv4_full(17, PEER, 0x0010, 0, &udp(9))),
            (PASS, Counter::Fragment)
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
            Err(ControlError::InvalidOptions(_))
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
            Err(ControlError::SlotOutOfRange { .. })
        ));
        assert!(matches!(
            f.register_socket(0, 16, file.as_fd()),
            Err(ControlError::QueueOutOfRange { .. })
        ));
        // Not an AF_XDP socket: the kernel refuses it.
        assert!(matches!(
            f.register_socket(0, 0, file.as_fd()),
            Err(ControlError::Bpf(_))
        ));
        f.unregister_socket(0, 0).unwrap();
    }

    #[test]
    fn prefixes_and_ranges_validate() {
        assert_eq!(
            prefix([10, 1, 2, 3], 16),
            Ipv4Prefix::new(Ipv4Addr::new(10, 1, 0, 0), 16).unwrap()
        );
        assert_eq!(prefix([10, 1, 2, 3], 0).addr(), Ipv4Addr::UNSPECIFIED);
        assert!(matches!(
            Ipv4Prefix::new(Ipv4Addr::LOCALHOST, 33),
            Err(ControlError::InvalidPrefix { len: 33 })
        ));
        assert!(PortRange::new(5, 4).is_err());
        let r = PortRange::new(10, 20).unwrap();
        assert_eq!(r.first_common(PortRange::single(20)), Some(20));
        assert_eq!(r.first_common(PortRange::new(0, 9).unwrap()), None);
        assert_eq!(r.first_common(PortRange::new(0, 65535).unwrap()), Some(10));
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
                        let f = XdpFilters::new(FilterOptions::default()).unwrap();
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
            assert!(std::env::var_os("CI").is_none(), "CI must have iproute2");
            eprintln!("SKIPPED attach_and_detach_on_veth: no `ip` command");
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
