//! Starting engines on AF_XDP: the control plane's part of `echo --backend af_xdp` and
//! `loadgen --backend af_xdp`.
//!
//! The control plane runs in the app's process for now: it attaches the interface's one XDP
//! program ([`XdpFilters`], a BPF link, so it detaches when this process exits, even on a
//! crash), opens one AF_XDP socket per served queue with its UMEM-backed pool, registers each
//! socket in the program's socket map, installs the app's filter (UDP, its ports, any peer),
//! and hands each (socket, pool) pair to an engine thread. ARP and ICMP stay with the kernel,
//! which owns the same address: `ping` keeps working and the kernel answers ARP.
//!
//! A UDP setup also takes the IPv4 fragments of UDP to its address (a fragment rule): a
//! datagram larger than the MTU arrives as fragments, only the first of which names the port,
//! and the engines' stack reassembles them. Without the rule the kernel would reassemble them
//! and, having no socket on the port, drop them. The price, documented in
//! [`melange_bpf::filter`] ("Fragments"): the fragmented UDP of the kernel's own sockets on
//! that address reaches the engines too, which drop it as `udp_no_listener`. TCP setups take
//! no fragments: Melange's TCP never needs them.
//!
//! The engines never learn a neighbour from a datagram's source MAC (any host on the link
//! could then redirect replies), and ARP frames go to the kernel, so the control plane is
//! their ARP: a neighbour thread watches the kernel's neighbour table for the interface
//! through route netlink ([`melange_sys::neigh::NeighborWatch`]: one dump, then the kernel's
//! `RTM_NEWNEIGH`/`RTM_DELNEIGH` notifications) and sends each new or changed usable entry at
//! once, and every entry again each [`NEIGHBOR_REFRESH_INTERVAL`], to every engine's control
//! inbox. It sleeps in the kernel between changes, waking every [`NEIGHBOR_WAKE_INTERVAL`] to
//! check the stop signal. Polling `/proc/net/arp` every 5 ms was the first design and was
//! rejected: its 200 wakeups a second took time from the cores the engines spin on, and it
//! was up to 5 ms late; it stays only as the fallback when netlink cannot be opened (every
//! [`NEIGHBOR_POLL_INTERVAL`], with a warning saying why). The kernel learnt those
//! entries by ARP's own rules (a client resolves the server's address before it sends, so
//! the kernel knows it before its first datagram arrives). A client resolves its server the
//! same way, through [`kernel_neighbor`], before it starts.

use crate::filters::{
    Direction, FilterHandle, FilterOptions, FilterSpec, FragmentHandle, FragmentRule, PortRange,
    XdpFilters,
};
use crate::options::cpu_for;
use anyhow::{anyhow, bail, Context, Result};
use melange_bpf::Protocol;
use melange_core::App;
use melange_engine::{Engine, EngineConfig, StackTransport};
use melange_net::{EthernetAddress, InterfaceConfig};
use melange_runtime::{
    control_channel, spawn_engine_with_control, umem_frames_for, AfXdpOptions, AfXdpQueue,
    ControlMessage, ControlSender, EngineOutcome, IdlePolicy, ShellConfig, ShellError, StopSignal,
};
use melange_sys::bpf::XdpMode;
use melange_sys::xsk::{BindMode, BoundMode};
use std::net::Ipv4Addr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Headroom in front of received frames' payload when the app allocates a fresh buffer.
const HEADROOM: usize = 256;

/// Where and how to run AF_XDP engines.
#[derive(Debug, Clone)]
pub struct XdpSetup {
    /// Interface name.
    pub interface: String,
    /// Our IPv4 address on it.
    pub addr: Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix_len: u8,
    /// Queues to serve, one engine each (empty: every queue of the interface).
    pub queues: Vec<u32>,
    /// Ports the filter steers to us: UDP, or TCP when `tcp` is set (listening ports for a
    /// server, the ephemeral range for a client).
    pub ports: PortRange,
    /// UMEM frames per engine when more than the default are needed (TCP keeps the app's
    /// buffers until they are acknowledged, so many connections need many frames); needs the
    /// memory to be lockable (root, or `ulimit -l`).
    pub umem_frames: Option<u32>,
    /// Run Melange's TCP with these settings (keys are drawn per engine from the kernel's
    /// CSPRNG); `None` for UDP only.
    pub tcp: Option<XdpTcp>,
    /// Neighbours resolved ahead.
    pub static_arp: Vec<(Ipv4Addr, EthernetAddress)>,
    /// Engine batch size.
    pub batch: usize,
    /// Cores for the engines.
    pub cpus: Option<Vec<usize>>,
    /// Idle policy.
    pub idle: IdlePolicy,
    /// Native (driver) or generic XDP.
    pub mode: XdpMode,
}

/// The TCP settings of AF_XDP engines, without the secret keys (each engine gets its own).
#[derive(Debug, Clone, Copy)]
pub struct XdpTcp {
    /// Connection slots per engine.
    pub connections_max: usize,
    /// Per-connection settings.
    pub conn: melange_tcp::conn::ConnConfig,
    /// The local ports active opens choose from; they must lie in the filter's `ports`.
    pub ephemeral_ports: (u16, u16),
}

impl XdpTcp {
    /// The engine TCP configuration with fresh keys from `getrandom(2)`.
    pub fn with_fresh_keys(&self) -> Result<melange_engine::tcp::TcpConfig> {
        let bytes: [u8; 80] =
            melange_sys::random::bytes().context("reading TCP keys from getrandom(2)")?;
        let mut config =
            melange_engine::tcp::TcpConfig::new(melange_engine::tcp::TcpKeys::from_bytes(bytes));
        config.connections_max = self.connections_max;
        config.conn = self.conn;
        config.ephemeral_ports = self.ephemeral_ports;
        Ok(config)
    }
}

/// How often the neighbour thread reads `/proc/net/arp` when it cannot watch netlink (the
/// fallback; see the module documentation).
pub const NEIGHBOR_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The longest the netlink neighbour thread sleeps when nothing changes: how late it may
/// notice the stop signal.
pub const NEIGHBOR_WAKE_INTERVAL: Duration = Duration::from_millis(100);

/// How often the neighbour thread sends every entry again, so that engine entries (which
/// expire after the stack's ARP lifetime, 60 s by default) stay fresh while the kernel keeps
/// them.
pub const NEIGHBOR_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Most neighbours the thread tracks (the kernel's default `gc_thresh3` is 1024).
pub const NEIGHBORS_MAX: usize = 4096;

/// The transport of an AF_XDP engine: Melange's stack over one AF_XDP queue.
pub type XdpTransport = StackTransport<AfXdpQueue>;

/// Running AF_XDP engines and the control-plane objects that must outlive them.
pub struct XdpRun<A> {
    /// Engine threads, in queue order.
    pub handles: Vec<JoinHandle<Result<EngineOutcome<A, XdpTransport>, ShellError>>>,
    /// The queue each engine serves.
    pub queues: Vec<u32>,
    /// The filter; dropping it gives the ports back to the kernel.
    pub filter: FilterHandle,
    /// UDP: the rule that steers the address's UDP fragments to the engines (see the module
    /// documentation); dropping it gives them back to the kernel. `None` for TCP.
    pub fragments: Option<FragmentHandle>,
    /// The XDP program and its maps; dropping it detaches the program.
    pub filters: XdpFilters,
    /// The neighbour thread (see the module documentation); it ends with the stop signal.
    pub neighbors: JoinHandle<()>,
}

/// Steers one more port of `protocol` (TCP when `tcp`, else UDP) to the engines of a run,
/// for a server that serves several ports (`melange kv`'s Redis and memcached ports); the
/// app listens on or binds the port itself. Dropping the handle gives the port back to the
/// kernel.
pub fn steer_port(filters: &XdpFilters, tcp: bool, port: u16) -> Result<FilterHandle> {
    let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
    filters
        .create_filter(FilterSpec {
            direction: Direction::Receive,
            protocol,
            peers: Vec::new(),
            ports: PortRange::single(port),
            slot: 0,
        })
        .with_context(|| format!("installing the {protocol:?} filter for port {port}"))
}

/// Attaches the program, opens the sockets and starts one engine per queue.
/// `make_app(engine_index, queue)` returns the app (which binds its own ports when it starts;
/// the filter steers `setup.ports` to the engines).
pub fn start<A, F>(setup: &XdpSetup, stop: &StopSignal, make_app: F) -> Result<XdpRun<A>>
where
    A: App + Send + 'static,
    F: Fn(usize, u32) -> A,
{
    let name = setup.interface.as_str();
    let ifindex =
        melange_sys::netdev::ifindex(name).with_context(|| format!("interface {name}"))?;
    let mac =
        melange_sys::netdev::mac_address(name).with_context(|| format!("MAC address of {name}"))?;
    let queue_count =
        melange_sys::netdev::rx_queue_count(name).with_context(|| format!("queues of {name}"))?;
    let queues: Vec<u32> = if setup.queues.is_empty() {
        (0..queue_count as u32).collect()
    } else {
        setup.queues.clone()
    };
    if let Some(&q) = queues.iter().find(|&&q| q as usize >= queue_count) {
        bail!("{name} has {queue_count} queue(s); queue {q} does not exist");
    }
    let options = FilterOptions {
        queues_max: (queue_count as u32).max(1),
        ..FilterOptions::default()
    };
    let filters = XdpFilters::attach(name, setup.mode, options).map_err(|e| {
        let hint = match &e {
            crate::ControlError::Bpf(b) if b.is_permission() => {
                " (bpf(2) and AF_XDP need root, or CAP_BPF, CAP_NET_ADMIN and CAP_NET_RAW: run it with sudo)"
            }
            _ => "",
        };
        anyhow::Error::new(e).context(format!("attaching Melange's XDP program to {name}{hint}"))
    })?;
    let frames = match setup.umem_frames {
        Some(want) => {
            let want = want.div_ceil(64) * 64;
            if !melange_sys::mmap::has_cap_ipc_lock() && umem_frames_for(queues.len())? < want {
                bail!(
                    "{want} UMEM frames per engine need {} MiB of locked memory each, above this process's limit: run as root (CAP_IPC_LOCK) or raise `ulimit -l`",
                    (u64::from(want) * 2048) >> 20
                );
            }
            want
        }
        None => umem_frames_for(queues.len())?,
    };
    let mut opened = Vec::new();
    for &queue in &queues {
        let options = AfXdpOptions {
            ifindex,
            queue,
            frames,
            batch_max: setup.batch,
            bind: BindMode::ZeroCopyOrCopy,
            hugepages: true,
        };
        let (nic, pool) = open_queue(options)?;
        filters
            .register_socket(0, queue, nic.socket_fd())
            .with_context(|| format!("registering queue {queue}"))?;
        let mode = match nic.bound_mode() {
            BoundMode::ZeroCopy => "zero-copy",
            BoundMode::Copy => "copy mode (the driver has no zero-copy)",
        };
        tracing::info!("{name} queue {queue}: AF_XDP socket bound in {mode}, {frames} UMEM frames");
        opened.push((queue, nic, pool));
    }
    let protocol = if setup.tcp.is_some() {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let filter = filters
        .create_filter(FilterSpec {
            direction: Direction::Receive,
            protocol,
            peers: Vec::new(),
            ports: setup.ports,
            slot: 0,
        })
        .with_context(|| format!("installing the {protocol:?} filter"))?;
    let fragments = match protocol {
        Protocol::Udp => Some(
            filters
                .steer_fragments(FragmentRule {
                    protocol,
                    addr: setup.addr,
                    slot: 0,
                })
                .with_context(|| format!("steering the UDP fragments to {}", setup.addr))?,
        ),
        Protocol::Tcp => None,
    };
    let mut handles = Vec::new();
    let mut senders = Vec::new();
    for (index, (queue, nic, pool)) in opened.into_iter().enumerate() {
        let app = make_app(index, queue);
        let config = EngineConfig {
            batch_max: setup.batch,
            ..EngineConfig::new(index)
        };
        let interface = InterfaceConfig::new(EthernetAddress(mac), setup.addr, setup.prefix_len);
        let static_arp = setup.static_arp.clone();
        let shell = ShellConfig {
            name: format!("xdp-q{queue}"),
            cpu: cpu_for(&setup.cpus, index),
            idle: setup.idle,
        };
        let batch = setup.batch;
        let tcp = setup
            .tcp
            .as_ref()
            .map(XdpTcp::with_fresh_keys)
            .transpose()?;
        let (sender, inbox) = control_channel()?;
        senders.push(sender);
        let handle = spawn_engine_with_control(shell, stop.clone(), Some(inbox), move |now| {
            let mut pool = pool;
            let transport = StackTransport::new(nic, interface, &static_arp, &mut pool, batch)
                .map_err(|e| format!("interface configuration: {e}"))?;
            let transport = match tcp {
                Some(tcp) => transport
                    .with_tcp(tcp, now)
                    .map_err(|e| format!("TCP configuration: {e}"))?,
                None => transport,
            };
            Engine::new(config, transport, pool, app, now).map_err(|e| e.to_string())
        })?;
        handles.push(handle);
    }
    let neighbors = {
        let stop = stop.clone();
        let interface = setup.interface.clone();
        std::thread::Builder::new()
            .name("neighbors".into())
            .spawn(move || feed_neighbors(&interface, ifindex, &senders, &stop))?
    };
    Ok(XdpRun {
        handles,
        queues,
        filter,
        fragments,
        filters,
        neighbors,
    })
}

/// The neighbour thread: the kernel's neighbour table for `interface` (index `ifindex`), fed
/// to every engine. Watches netlink; polls `/proc/net/arp` if netlink cannot be opened.
fn feed_neighbors(interface: &str, ifindex: u32, senders: &[ControlSender], stop: &StopSignal) {
    let mut send = |ip, mac| {
        for sender in senders {
            // A full inbox gets the entry at the next refresh; an ended engine needs it no more.
            let _ = sender.send(ControlMessage::Neighbor { ip, mac });
        }
    };
    match melange_sys::neigh::NeighborWatch::open() {
        Ok(watch) => watch_neighbors(ifindex, watch, stop, &mut send),
        Err(err) => {
            tracing::warn!(
                "cannot watch the kernel's neighbour table through netlink ({err}); polling /proc/net/arp every {NEIGHBOR_POLL_INTERVAL:?} instead, which costs the engines' cores some time"
            );
            poll_neighbors(interface, stop, &mut send);
        }
    }
}

/// Records `ip` at `mac` in `known`; true if that is news (a new entry or a changed MAC).
/// Past [`NEIGHBORS_MAX`] entries a new address is dropped (and so never sent).
fn remember(
    known: &mut Vec<(Ipv4Addr, EthernetAddress)>,
    ip: Ipv4Addr,
    mac: EthernetAddress,
) -> bool {
    match known.iter().position(|(k, _)| *k == ip) {
        Some(at) if known[at].1 == mac => false,
        Some(at) => {
            known[at].1 = mac;
            true
        }
        None if known.len() < NEIGHBORS_MAX => {
            known.push((ip, mac));
            true
        }
        None => false,
    }
}

/// The netlink loop of the neighbour thread: usable entries on `ifindex` go to `send` when
/// they are new or change, and all known entries every [`NEIGHBOR_REFRESH_INTERVAL`]. An entry
/// deleted or no longer usable is forgotten here (so its return is news); engines keep theirs
/// until it expires, as they would have with the old polling.
fn watch_neighbors(
    ifindex: u32,
    mut watch: melange_sys::neigh::NeighborWatch,
    stop: &StopSignal,
    send: &mut dyn FnMut(Ipv4Addr, EthernetAddress),
) {
    use melange_sys::neigh::{NeighMessage, Received};
    let mut known: Vec<(Ipv4Addr, EthernetAddress)> = Vec::with_capacity(NEIGHBORS_MAX);
    let mut last_refresh = Instant::now();
    let mut warned = false;
    while !stop.is_stopped() {
        let until_refresh = NEIGHBOR_REFRESH_INTERVAL.saturating_sub(last_refresh.elapsed());
        if until_refresh.is_zero() {
            last_refresh = Instant::now();
            for &(ip, mac) in &known {
                send(ip, mac);
            }
            continue;
        }
        let timeout_ns = until_refresh.min(NEIGHBOR_WAKE_INTERVAL).as_nanos() as u64;
        let messages = match watch.recv(timeout_ns) {
            Ok(Received::Messages(messages)) => messages,
            Ok(Received::Timeout) => continue,
            Ok(Received::Overrun) => {
                tracing::warn!("the kernel dropped neighbour notifications (netlink receive buffer overran); asked it for the whole table again");
                continue;
            }
            Err(err) => {
                if !warned {
                    warned = true;
                    tracing::warn!("watching the kernel's neighbour table failed, engines may miss neighbours until it recovers: {err}");
                }
                std::thread::sleep(NEIGHBOR_WAKE_INTERVAL);
                continue;
            }
        };
        for message in messages {
            let update = match message {
                Ok(NeighMessage::Update(update)) if update.ifindex == ifindex => update,
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!("skipping a neighbour netlink datagram: {err}");
                    continue;
                }
            };
            match update.usable_mac() {
                Some(mac) => {
                    let mac = EthernetAddress(mac);
                    if remember(&mut known, update.ip, mac) {
                        send(update.ip, mac);
                    }
                }
                None => known.retain(|(k, _)| *k != update.ip),
            }
        }
    }
}

/// The fallback loop of the neighbour thread: reads `/proc/net/arp` every
/// [`NEIGHBOR_POLL_INTERVAL`].
fn poll_neighbors(
    interface: &str,
    stop: &StopSignal,
    send: &mut dyn FnMut(Ipv4Addr, EthernetAddress),
) {
    let mut known: Vec<(Ipv4Addr, EthernetAddress)> = Vec::new();
    let mut last_refresh = Instant::now();
    let mut warned = false;
    while !stop.is_stopped() {
        let refresh = last_refresh.elapsed() >= NEIGHBOR_REFRESH_INTERVAL;
        if refresh {
            last_refresh = Instant::now();
        }
        match read_neighbors(Some(interface)) {
            Ok(table) => {
                for (ip, mac) in table.into_iter().take(NEIGHBORS_MAX) {
                    if remember(&mut known, ip, mac) || refresh {
                        send(ip, mac);
                    }
                }
            }
            Err(err) if !warned => {
                warned = true;
                tracing::warn!("reading the kernel's neighbour table failed, engines learn no new neighbours: {err:#}");
            }
            Err(_) => {}
        }
        std::thread::sleep(NEIGHBOR_POLL_INTERVAL);
    }
}

/// The address engines on `interface` use: the interface's own IPv4 address and prefix, which
/// `asked` (the value of flag `flag`, if given) may only repeat. The XDP filter takes a port for
/// every address on the interface, so an engine with any other address would receive
/// datagrams it then drops: a silent black hole, refused here with the reason.
pub fn interface_address(
    interface: &str,
    asked: Option<Ipv4Addr>,
    flag: &str,
) -> Result<(Ipv4Addr, u8)> {
    let own = melange_sys::netdev::ipv4_address(interface).with_context(|| {
        format!("interface {interface} (does it exist in this namespace? `ip -br addr` lists them)")
    })?;
    match (own, asked) {
        (Some((addr, prefix)), None) => Ok((addr, prefix)),
        (Some((addr, prefix)), Some(asked)) if asked == addr || asked.is_unspecified() => {
            Ok((addr, prefix))
        }
        (Some((addr, _)), Some(asked)) => Err(anyhow!(
            "{flag} {asked} is not {interface}'s address ({addr}): the XDP filter takes the port for every address on {interface}, so an engine using {asked} would drop what arrives for {addr}; leave {flag} out to use {addr}"
        )),
        (None, _) => Err(anyhow!(
            "{interface} has no IPv4 address; give it one (e.g. `ip addr add 10.77.0.2/24 dev {interface}`) so the kernel answers ARP for it, then start again"
        )),
    }
}

/// Checks that `target` is on the subnet of `addr/prefix`: the af_xdp path has no router, so an
/// off-subnet target could never be resolved.
pub fn check_on_link(interface: &str, addr: Ipv4Addr, prefix: u8, target: Ipv4Addr) -> Result<()> {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    if u32::from(addr) & mask != u32::from(target) & mask {
        bail!(
            "{target} is not on {interface}'s subnet ({addr}/{prefix}): engines on AF_XDP reach only hosts on the link (there is no router on this path); use a target on that subnet, or --backend kernel"
        );
    }
    Ok(())
}

/// Opens an AF_XDP queue, retrying for up to 2 s while the queue is still held: the kernel
/// releases a queue a moment after the previous owner's socket closes, so a server started
/// right after another one would otherwise fail.
fn open_queue(options: AfXdpOptions) -> Result<(AfXdpQueue, melange_core::PacketPool)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match AfXdpQueue::open(options, HEADROOM) {
            Ok(opened) => return Ok(opened),
            Err(melange_runtime::AfXdpError::Socket { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// The MAC address of `target` from the kernel's neighbour table, prompting resolution with
/// a datagram to the discard port if needed. The control plane's ARP: the engines then start
/// with the entry installed.
pub fn kernel_neighbor(target: Ipv4Addr) -> Result<EthernetAddress> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Some(mac) = read_neighbor(target)? {
            return Ok(mac);
        }
        let _ = socket.send_to(b"melange: resolving", (target, 9));
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(anyhow!(
        "{target} did not answer ARP within 3 s: is the peer up (melange lab up)?"
    ))
}

fn read_neighbor(target: Ipv4Addr) -> Result<Option<EthernetAddress>> {
    Ok(read_neighbors(None)?
        .into_iter()
        .find_map(|(ip, mac)| (ip == target).then_some(mac)))
}

/// The complete entries of the kernel's neighbour table (`/proc/net/arp`, this namespace's),
/// on `device` if given.
fn read_neighbors(device: Option<&str>) -> Result<Vec<(Ipv4Addr, EthernetAddress)>> {
    let table = std::fs::read_to_string("/proc/net/arp").context("reading /proc/net/arp")?;
    Ok(parse_neighbors(&table, device))
}

/// Parses `/proc/net/arp`: a header line, then `IP HW-type Flags HW-address Mask Device`;
/// flag 0x2 marks a complete entry. Lines that do not parse are skipped.
fn parse_neighbors(table: &str, device: Option<&str>) -> Vec<(Ipv4Addr, EthernetAddress)> {
    let mut found = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || device.is_some_and(|d| fields[5] != d) {
            continue;
        }
        let Ok(ip) = fields[0].parse::<Ipv4Addr>() else {
            continue;
        };
        let complete =
            u32::from_str_radix(fields[2].trim_start_matches("0x"), 16).unwrap_or(0) & 0x2 != 0;
        let bytes: Vec<u8> = fields[3]
            .split(':')
            .filter_map(|b| u8::from_str_radix(b, 16).ok())
            .collect();
        if complete && bytes.len() == 6 {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&bytes);
            found.push((ip, EthernetAddress(mac)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbor_table_lines_parse() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device
10.77.0.1        0x1         0x2         66:ee:1c:4b:6b:50     *        mlg-vb
10.77.0.9        0x1         0x0         00:00:00:00:00:00     *        mlg-vb
10.1.0.1         0x1         0x2         02:00:00:00:00:01     *        eth0
garbage
";
        let mac = EthernetAddress([0x66, 0xee, 0x1c, 0x4b, 0x6b, 0x50]);
        assert_eq!(
            parse_neighbors(table, Some("mlg-vb")),
            vec![(Ipv4Addr::new(10, 77, 0, 1), mac)]
        );
        assert_eq!(parse_neighbors(table, None).len(), 2);
        assert!(parse_neighbors("", None).is_empty());
    }

    #[test]
    fn on_link_targets_only() {
        let me = Ipv4Addr::new(10, 77, 0, 1);
        assert!(check_on_link("mlg-va", me, 24, Ipv4Addr::new(10, 77, 0, 2)).is_ok());
        let err = check_on_link("mlg-va", me, 24, Ipv4Addr::new(10, 78, 0, 2)).unwrap_err();
        assert!(err.to_string().contains("not on mlg-va's subnet"), "{err}");
        assert!(check_on_link("x", me, 32, me).is_ok());
        assert!(check_on_link("x", me, 0, Ipv4Addr::new(1, 2, 3, 4)).is_ok());
    }

    use melange_sys::testenv::{ip, TestNetns};

    /// An entry added to the kernel's table on the engines' interface reaches the sink within
    /// a bound; one on another interface does not.
    #[test]
    fn kernel_neighbors_reach_the_engines() {
        if !melange_sys::testenv::root_or_skip("engines::kernel_neighbors_reach_the_engines") {
            return;
        }
        let netns = TestNetns::new("feed");
        let ns = netns.name().to_owned();
        ip(&["-n", &ns, "link", "add", "e0", "type", "veth", "peer", "e1"]);
        ip(&["-n", &ns, "link", "set", "e0", "up"]);
        ip(&["-n", &ns, "link", "set", "e1", "up"]);
        let (watch, e0) = {
            let _inside = melange_sys::netdev::enter_netns(&ns).unwrap();
            let e0 = melange_sys::netdev::ifindex("e0").unwrap();
            (melange_sys::neigh::NeighborWatch::open().unwrap(), e0)
        };
        let stop = StopSignal::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                watch_neighbors(e0, watch, &stop, &mut |ip, mac| {
                    let _ = tx.send((ip, mac));
                })
            })
        };
        ip(&[
            "-n",
            &ns,
            "neigh",
            "add",
            "10.98.0.9",
            "lladdr",
            "02:00:00:00:00:09",
            "dev",
            "e1",
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            &ns,
            "neigh",
            "add",
            "10.98.0.7",
            "lladdr",
            "02:00:00:00:00:07",
            "dev",
            "e0",
            "nud",
            "permanent",
        ]);
        let got = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("the entry within 2 s");
        assert_eq!(
            got,
            (
                Ipv4Addr::new(10, 98, 0, 7),
                EthernetAddress([2, 0, 0, 0, 0, 7])
            )
        );
        stop.stop();
        let stopped = Instant::now();
        thread.join().unwrap();
        assert!(
            stopped.elapsed() < NEIGHBOR_WAKE_INTERVAL * 3,
            "stopped late"
        );
        assert!(rx.try_recv().is_err(), "nothing from the other interface");
    }
}
